//! End-to-end tests of the job manager: a real `rayfarm manager`, daemons on their own
//! loopback addresses (127.0.0.20 and up, port 48000) and `rayfarm bake --farm` clients, with
//! every map compared byte for byte with a one-machine bake of the same settings.
//!
//! Each test has its own daemons, manager port (23400 + 10 per test) and folders; every
//! process is killed with its process group when the test ends.

mod common;

use common::farm::{assert_same, files, strings, Farm};
use common::proc::Proc;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[test]
fn farm_bakes_match_local_ones_and_outlive_their_client() {
    let farm = Farm::new();
    let _daemons = [
        ("127.0.0.20", "f20"),
        ("127.0.0.21", "f21"),
        ("127.0.0.22", "f22"),
    ]
    .map(|(ip, alias)| farm.daemon(ip, alias, &[]));
    let port = 23400;
    let _m = farm.manager(port, &["127.0.0.20", "127.0.0.21", "127.0.0.22"]);

    // 1. A client that stays: single and multi mode, two jobs at once.
    let reference = farm.local("local", &["--spp", "32"]);
    let mut a = farm.client("farm-a", port, &["--spp", "32"]);
    let mut b = farm.client("farm-b", port, &["--spp", "32", "--mode", "multi"]);
    a.wait_ok(Duration::from_secs(120));
    b.wait_ok(Duration::from_secs(120));
    assert_same(
        &files(&farm.path("farm-a")),
        &reference,
        "single-pass farm bake",
    );
    assert_same(
        &files(&farm.path("farm-b")),
        &reference,
        "multi-pass farm bake",
    );
    assert!(
        farm.net_entries().is_empty(),
        "job folders left: {:?}",
        farm.net_entries()
    );

    // 2. A client killed at once: the job goes on; merge refuses until it is complete.
    let reference = farm.local("local-long", &["--spp", "512"]);
    let mut c = farm.client("farm-c", port, &["--spp", "512"]);
    let (id, _) = Farm::job_id(&mut c);
    c.signal("KILL");
    c.wait(Duration::from_secs(10));
    // Placeholders are there at once.
    let placeholders = files(&farm.path("farm-c"));
    assert_eq!(placeholders.len(), 10, "{:?}", placeholders.keys());
    let desc = farm.path("net").join(&id).join("job.desc");
    let desc = desc.display().to_string();
    let (ok, _, err) = farm.run(&["merge", &desc]);
    assert!(!ok, "merge of an unfinished job succeeded");
    assert!(
        err.contains("not finished") && err.contains("missing"),
        "the refusal should name the missing parts: {err}"
    );
    let (ok, out, err) = farm.run(&["merge", &desc, "--wait", "-q"]);
    assert!(ok, "merge --wait failed:\n{out}\n{err}");
    assert_same(
        &files(&farm.path("farm-c")),
        &reference,
        "merged after the client died",
    );
    assert!(
        !farm.path("net").join(&id).exists(),
        "job folder not removed"
    );
    // Merging twice is harmless... once the folder is gone there is nothing to merge.
    let (ok, _, err) = farm.run(&["merge", &desc]);
    assert!(!ok && err.contains("job.desc"), "{err}");
    assert_same(
        &files(&farm.path("farm-c")),
        &reference,
        "after a second merge",
    );

    // The manager's views.
    let (ok, out, _) = farm.run(&["jobs", "--manager", &format!("127.0.0.1:{port}")]);
    assert!(ok && out.matches("completed").count() >= 3, "{out}");
    let (ok, out, _) = farm.run(&["nodes", "--manager", &format!("127.0.0.1:{port}")]);
    assert!(
        ok && out.contains("f20") && out.contains("f21") && out.contains("f22"),
        "{out}"
    );
}

#[test]
fn a_killed_manager_and_a_killed_worker_lose_nothing() {
    let farm = Farm::new();
    let _daemons = [
        ("127.0.0.23", "g23"),
        ("127.0.0.24", "g24"),
        ("127.0.0.25", "g25"),
    ]
    .map(|(ip, alias)| farm.daemon(ip, alias, &[]));
    let port = 23410;
    let list = ["127.0.0.23", "127.0.0.24", "127.0.0.25"];
    let reference = farm.local("local", &["--spp", "512"]);
    let mut m = farm.manager(port, &list);
    let mut c = farm.client("farm", port, &["--spp", "512"]);
    let (id, _) = Farm::job_id(&mut c);
    // Let the nodes start, then kill one node's worker and the manager.
    let until = Instant::now() + Duration::from_secs(30);
    while !m.stderr().contains("worker 'g24' connected") {
        assert!(Instant::now() < until, "{}", m.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", "worker --master=127.0.0.1:.* --alias=g24"])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        c.running(),
        "the job ended before the kills; make it longer"
    );
    m.signal("KILL");
    m.wait(Duration::from_secs(10));
    assert!(
        m.stderr().contains("worker 'g24' lost"),
        "the manager did not see g24's worker die:\n{}",
        m.describe()
    );
    let parts = farm.path("net").join(&id).join("parts");
    let written = std::fs::read_dir(&parts).map(|d| d.count()).unwrap_or(0);
    eprintln!("manager killed with {written} part(s) written");
    std::thread::sleep(Duration::from_millis(500));
    let _m2 = farm.manager(port, &list);
    c.wait_ok(Duration::from_secs(180));
    assert_same(&files(&farm.path("farm")), &reference, "after kills");
    assert!(!farm.path("net").join(&id).exists());
}

#[test]
fn unsafe_job_folders_and_descs_are_refused() {
    let farm = Farm::new();
    let port = 23420;
    let _m = farm.manager(port, &[]);
    // A job folder outside any sane path, or with `..`.
    let c = common::rayfarm([
        "submit",
        "/tmp/../etc",
        "--manager",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(!c.success);
    // A tampered job.desc: parts named with `..`, an output outside the output folder.
    let job = farm.path("net").join("jbad");
    std::fs::create_dir_all(&job).unwrap();
    std::fs::write(
        job.join("job.desc"),
        r#"{"format":"rayfarm-job","version":1,"job_id":"jbad","parts":[{"name":"../../evil"}]}"#,
    )
    .unwrap();
    let (ok, _, err) = farm.run(&["merge", &job.join("job.desc").display().to_string()]);
    assert!(!ok && err.contains("job.desc"), "{err}");
    let (ok, _, err) = farm.run(&[
        "submit",
        &job.display().to_string(),
        "--manager",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(!ok, "{err}");
    // Nothing was written anywhere but where we wrote.
    let mut names: Vec<String> = std::fs::read_dir(farm.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.iter().all(|n| [
            "config.toml",
            "net",
            "manager.db",
            "manager.db-wal",
            "manager.db-shm",
            "cache"
        ]
        .contains(&n.as_str())),
        "{names:?}"
    );
    assert_eq!(std::fs::read_dir(&job).unwrap().count(), 1);
}

/// The DOM of `url` in headless Chromium after its scripts ran, or None (with a notice) when
/// Chromium is not installed and RAYFARM_REQUIRE_SHARED is not set.
fn chromium_dom(url: &str) -> Option<String> {
    const CHROMIUM: &str = "/usr/bin/chromium";
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("RAYFARM_REQUIRE_SHARED").as_deref() != Ok("1"),
            "{CHROMIUM} is missing; install it with `apt-get install -y chromium`"
        );
        eprintln!("skipping the browser check: {CHROMIUM} is missing");
        return None;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut p = std::process::Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--run-all-compositor-stages-before-draw",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    let pid = p.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let mut dom = String::new();
    use std::io::Read;
    p.stdout.take().unwrap().read_to_string(&mut dom).unwrap();
    let _ = p.wait();
    drop(killer);
    Some(dom)
}

#[test]
fn the_monitor_shows_the_real_managers_jobs_and_nodes_in_chromium() {
    let farm = Farm::new();
    let _d = farm.daemon("127.0.0.26", "h26", &[]);
    let port = 23430;
    let _m = farm.manager(port, &["127.0.0.26"]);
    let mut c = farm.client("maps", port, &["--spp", "8", "--no-wait"]);
    let (id, _) = Farm::job_id(&mut c);
    c.wait_ok(Duration::from_secs(60));
    // Wait for the job to complete on the farm (the folder stays: nobody merged yet).
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, _) = farm.run(&["jobs", "--manager", &format!("127.0.0.1:{port}")]);
        if ok && out.contains("completed") {
            break;
        }
        assert!(Instant::now() < until, "job never completed: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The page takes the API token from the URL's fragment (never sent to the server).
    let Some(dom) = chromium_dom(&format!(
        "http://127.0.0.1:{port}/#token={}",
        farm.api_token()
    )) else {
        return;
    };
    assert!(dom.contains(&id), "the job is not on the page:\n{dom}");
    assert!(
        dom.contains("two-charts.obj"),
        "the job's name is not on the page"
    );
    assert!(dom.contains("100%"), "progress is not shown");
    assert!(dom.contains("h26"), "the node is not on the page");
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the job's preview did not load:\n{dom}"
    );
}

#[test]
fn a_node_held_by_an_interactive_master_is_left_alone() {
    let farm = Farm::new();
    let _d = farm.daemon("127.0.0.27", "i27", &[]);
    let master_port = "23445";
    // An interactive network render that holds the node for a while.
    let args = strings(&[
        "render",
        "-o",
        &farm.path("img.exr").display().to_string(),
        "--width",
        "128",
        "--height",
        "128",
        "--spp",
        "4096",
        "--network",
        "--no-local",
        "--daemon",
        "127.0.0.27",
        "--scan-interval",
        "0.3",
        "--master-port",
        master_port,
        "--master-bind",
        "127.0.0.1",
    ]);
    let mut master = Proc::start("master", &args, &farm.env());
    master.wait_stderr("node joined", Duration::from_secs(60));
    let port = 23440;
    let _m = farm.manager(port, &["127.0.0.27"]);
    let mut c = farm.client("maps", port, &["--spp", "8", "--no-wait"]);
    Farm::job_id(&mut c);
    c.wait_ok(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let (ok, out, _) = farm.run(&["nodes", "--manager", &format!("127.0.0.1:{port}")]);
    assert!(
        ok && out.contains("occupied by master") && out.contains(master_port),
        "{out}"
    );
    let (ok, out, _) = farm.run(&["jobs", "--manager", &format!("127.0.0.1:{port}")]);
    assert!(
        ok && out.contains("queued"),
        "the job ran on a held node: {out}"
    );
    assert!(master.running(), "{}", master.describe());
    master.signal("KILL");
    // Once the master is gone the daemon frees the node and the manager takes it.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, out, _) = farm.run(&["jobs", "--manager", &format!("127.0.0.1:{port}")]);
        if out.contains("completed") {
            break;
        }
        assert!(Instant::now() < until, "the job never ran: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn animated_cube() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rayfarm-scene/tests/data/animated_cube.gltf")
}

#[test]
fn farm_renders_match_local_ones_still_and_animated() {
    let farm = Farm::new();
    let _d: Vec<Proc> = [("127.0.0.28", "k28"), ("127.0.0.29", "k29")]
        .iter()
        .map(|(ip, a)| farm.daemon(ip, a, &[]))
        .collect();
    let port = 23450;
    let _m = farm.manager(port, &["127.0.0.28", "127.0.0.29"]);
    let manager = format!("127.0.0.1:{port}");
    let net = farm.path("net").display().to_string();
    let render = |out: &str, scene: Option<&Path>, extra: &[&str]| -> Vec<String> {
        std::fs::create_dir_all(farm.path(out).parent().unwrap()).unwrap();
        let mut a = strings(&["render"]);
        if let Some(s) = scene {
            a.push(s.display().to_string());
        }
        a.extend(strings(&["-o", &farm.path(out).display().to_string()]));
        a.extend(strings(&[
            "--spp",
            "4",
            "--max-bounces",
            "3",
            "--width",
            "48",
        ]));
        a.extend(strings(extra));
        a
    };
    let run_ok = |what: &str, args: Vec<String>| -> (String, String) {
        let mut p = Proc::start(what, &args, &farm.env());
        p.wait_ok(Duration::from_secs(180));
        (p.stdout(), p.stderr())
    };

    // A still of the embedded Cornell box, cut into tiles, as linear EXR.
    let mut args = render("still/box.exr", None, &["--tasks", "tile"]);
    args.extend(strings(&[
        "--task-tile",
        "16",
        "--farm",
        &manager,
        "--netdir",
        &net,
    ]));
    let (out, _) = run_ok("farm still", args);
    assert!(out.contains("rendered on the farm"), "{out}");
    run_ok("local still", render("still-local/box.exr", None, &["-q"]));
    assert_same(
        &files(&farm.path("still")),
        &files(&farm.path("still-local")),
        "still",
    );

    // Frames of an animation, one task per frame; the client leaves at once and
    // `rayfarm merge --wait` finishes the job.
    let cube = animated_cube();
    let mut args = render("anim/shot_##.png", Some(&cube), &["--frames", "0-40:10"]);
    args.extend(strings(&[
        "--farm",
        &manager,
        "--netdir",
        &net,
        "--no-wait",
    ]));
    let (out, _) = run_ok("farm frames", args);
    let desc = out
        .split_whitespace()
        .find(|w| w.ends_with("job.desc"))
        .unwrap_or_else(|| panic!("no job.desc named in {out:?}"))
        .to_string();
    // Placeholders are at the outputs at once.
    assert_eq!(files(&farm.path("anim")).len(), 5);
    let (ok, out, err) = farm.run(&["merge", &desc, "--wait", "--manager", &manager]);
    assert!(ok, "merge failed: {out}\n{err}");
    run_ok(
        "local frames",
        render(
            "anim-local/shot_##.png",
            Some(&cube),
            &["--frames", "0-40:10", "-q"],
        ),
    );
    let got = files(&farm.path("anim"));
    assert_same(&got, &files(&farm.path("anim-local")), "frames");
    let names: Vec<&String> = got.keys().collect();
    assert_eq!(
        names,
        [
            "shot_00.png",
            "shot_10.png",
            "shot_20.png",
            "shot_30.png",
            "shot_40.png"
        ]
    );
    // The cube moves: no two frames alike.
    let distinct: std::collections::BTreeSet<&Vec<u8>> = got.values().collect();
    assert_eq!(distinct.len(), 5, "frames of the animation should differ");
    assert!(farm.net_entries().is_empty(), "{:?}", farm.net_entries());
    let (ok, out, _) = farm.run(&["jobs", "--manager", &manager]);
    assert!(ok && out.contains("render"), "{out}");
}

#[test]
fn unsafe_render_jobs_are_refused() {
    let farm = Farm::new();
    let port = 23460;
    let _m = farm.manager(port, &[]);
    let manager = format!("127.0.0.1:{port}");
    let net = farm.path("net");
    std::fs::create_dir(farm.path("out")).unwrap();
    let render = |out: &str, extra: &[&str]| {
        let mut a = strings(&["render", "-o", out, "--spp", "1", "--width", "16", "-q"]);
        a.extend(strings(&[
            "--farm",
            &manager,
            "--netdir",
            &net.display().to_string(),
        ]));
        a.extend(strings(extra));
        let mut p = Proc::start("render client", &a, &farm.env());
        let st = p.wait(Duration::from_secs(120));
        (st.success(), p.stdout(), p.stderr())
    };
    // An output name that is not a plain file name: refused before anything is made.
    let bad = farm.path("out").join("bad name.png");
    let (ok, _, err) = render(&bad.display().to_string(), &[]);
    assert!(!ok && err.contains("plain"), "{err}");
    assert!(farm.net_entries().is_empty(), "{:?}", farm.net_entries());
    // A real job (no nodes, so it waits in the queue) as the model for tampered copies.
    let good = farm.path("out").join("ok.png");
    let (ok, out, err) = render(&good.display().to_string(), &["--no-wait"]);
    assert!(ok, "{out}\n{err}");
    let id = &farm.net_entries()[0];
    let text = std::fs::read_to_string(net.join(id).join("job.desc")).unwrap();
    assert!(text.contains("\"kind\": \"render\""), "{text}");
    let tampered = [
        (
            "jevil1",
            "\"output\": \"ok.png\"",
            "\"output\": \"../evil.png\"",
        ),
        (
            "jevil2",
            "\"output\": \"ok.png\"",
            "\"output\": \"/tmp/evil.png\"",
        ),
        (
            "jevil3",
            "\"name\": \"f000000-t00000\"",
            "\"name\": \"../../evil\"",
        ),
        ("jevil4", "\".rfscene\"", "\"/etc/passwd\""),
    ];
    for (jid, from, to) in tampered {
        let dir = net.join(jid);
        std::fs::create_dir(&dir).unwrap();
        let t = text.replace(id.as_str(), jid);
        let t2 = if to == "\"/etc/passwd\"" {
            // The scene file name: "scene-<hash>.rfscene" -> "/etc/passwd".
            let start = t.find("\"file\": \"").unwrap() + 8;
            let end = start + t[start..].find(".rfscene\"").unwrap() + 9;
            format!("{}\"/etc/passwd\"{}", &t[..start], &t[end..])
        } else {
            assert!(t.contains(from), "{from} not in {t}");
            t.replace(from, to)
        };
        std::fs::write(dir.join("job.desc"), t2).unwrap();
        let (ok, _, err) = farm.run(&["submit", &dir.display().to_string(), "--manager", &manager]);
        assert!(!ok, "{jid}: submitted: {err}");
        let (ok, _, err) = farm.run(&["merge", &dir.join("job.desc").display().to_string()]);
        assert!(!ok && err.contains("job.desc"), "{jid}: {err}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "{jid}");
    }
    // Only the placeholder of the real job is in the output folder; nothing escaped.
    assert_eq!(
        std::fs::read_dir(farm.path("out")).unwrap().count(),
        1,
        "{:?}",
        files(&farm.path("out")).keys()
    );
    assert!(!farm.path("evil.png").exists() && !Path::new("/tmp/evil.png").exists());
}
