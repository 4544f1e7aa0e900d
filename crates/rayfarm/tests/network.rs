//! End-to-end tests of network rendering: real `rayfarm` masters, daemons and workers talking
//! over loopback, each image compared byte for byte with a one-machine `rayfarm render` of the
//! same scene and settings.
//!
//! Isolation, so that the tests run in parallel: every daemon has its own loopback address
//! (all on port 48000; test 1 scans 127.0.0.0/29, the others use 127.0.0.10 and up), every
//! test its own master ports (21100 + 10 per test) and temporary folders (config, scene caches,
//! images). Every process is started in its own process group, and [`Proc`]'s `Drop` kills
//! the whole group, so a failing test leaves no master, daemon or worker behind (daemon-started
//! workers included).

mod common;

use common::net::*;
use common::proc::Proc;
use rayfarm_proto::{DaemonState, FarmKey, Role, PREAMBLE_MAGIC, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls a daemon until its state matches; returns the time that took.
fn wait_state(
    d: &Proc,
    addr: &str,
    within: Duration,
    pred: impl Fn(&DaemonState) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let state = discover(addr).map(|i| i.state);
        if let Ok(s) = &state {
            if pred(s) {
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < within,
            "{addr}: state is still {state:?} after {within:?}:\n{}",
            d.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The line of the master's "share of the work" for `node` (an alias, or `local`).
fn share_line(stdout: &str, node: &str) -> Option<String> {
    let shares = &stdout[stdout.find("share of the work:")?..];
    shares
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .find(|l| {
            let name = l.trim_start();
            name.starts_with(&format!("{node} (")) || name.starts_with(&format!("{node} "))
        })
        .map(str::to_string)
}

/// The samples a share line credits.
fn share_samples(line: &str) -> u64 {
    let i = line.rfind('(').unwrap();
    line[i + 1..].split(' ').next().unwrap().parse().unwrap()
}

// -- 1 ----------------------------------------------------------------------------------------

#[test]
fn three_daemons_found_by_scan_render_the_same_image() {
    let farm = Farm::new();
    let daemons = [
        ("127.0.0.2", "d2"),
        ("127.0.0.3", "d3"),
        ("127.0.0.4", "d4"),
    ]
    .map(|(ip, alias)| farm.daemon(ip, alias, &[]));

    let listing = farm.nodes(&["--scan", "127.0.0.0/29"]);
    for (ip, alias) in [
        ("127.0.0.2", "d2"),
        ("127.0.0.3", "d3"),
        ("127.0.0.4", "d4"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.starts_with(&format!("{ip}:48000 ")))
            .unwrap_or_else(|| panic!("`rayfarm nodes` does not list {ip}:\n{listing}"));
        assert!(
            line.contains(alias) && line.trim_end().ends_with("idle"),
            "{line}"
        );
    }
    assert_eq!(
        listing.lines().count(),
        4,
        "a header and three daemons:\n{listing}"
    );

    let reference = farm.local_render("local.exr", SMALL);
    let scan = ["--scan", "127.0.0.0/29", "--scan-interval", "0.5"];

    // Daemons only.
    let mut m = farm.master(
        "net-nolocal.exr",
        21100,
        SMALL,
        &[&scan[..], &["--no-local"][..]].concat(),
    );
    farm.finish(&mut m, "net-nolocal.exr", &reference);
    let out = m.stdout();
    for alias in ["d2", "d3", "d4"] {
        assert!(
            share_line(&out, alias).is_some(),
            "{alias} not in the shares:\n{}",
            m.describe()
        );
    }
    assert!(share_line(&out, "local").is_none(), "{out}");
    let credited: u64 = ["d2", "d3", "d4"]
        .iter()
        .map(|a| share_samples(&share_line(&out, a).unwrap()))
        .sum();
    assert_eq!(credited, 96 * 96 * 64, "{out}");
    for alias in ["d2", "d3", "d4"] {
        let line = share_line(&out, alias).unwrap();
        assert!(!line.contains("left"), "{alias} stayed to the end: {line}");
    }

    // Daemons and this machine's cores (one thread, so the daemons get a share). The work waits
    // for one worker to join: the local thread alone rendered the whole image in half a second,
    // before the daemons' workers had the scene, often enough to fail this test.
    let mut m = farm.master(
        "net-local.exr",
        21101,
        SMALL,
        &[&scan[..], &["--threads", "1", "--wait-for-nodes", "1"][..]].concat(),
    );
    farm.finish(&mut m, "net-local.exr", &reference);
    let out = m.stdout();
    assert!(share_line(&out, "local").is_some(), "{}", m.describe());
    let remote = ["d2", "d3", "d4"]
        .iter()
        .filter(|a| share_line(&out, a).is_some())
        .count();
    assert!(remote >= 1, "no daemon took part:\n{}", m.describe());

    // After the masters: every daemon idle again.
    for (d, ip) in daemons.iter().zip(["127.0.0.2", "127.0.0.3", "127.0.0.4"]) {
        wait_state(d, &format!("{ip}:48000"), Duration::from_secs(5), |s| {
            *s == DaemonState::Idle
        });
        let log = d.stderr();
        assert!(!log.contains("panicked"), "{}", d.describe());
        // Taken once per master: none is taken again once the render is done.
        assert_eq!(
            log.matches("acquired by 127.0.0.1:21100 ").count(),
            1,
            "{}",
            d.describe()
        );
        assert!(
            log.matches("acquired by 127.0.0.1:21101 ").count() <= 1,
            "{}",
            d.describe()
        );
    }
}

// -- 2 ----------------------------------------------------------------------------------------

#[test]
fn a_worker_killed_mid_render_loses_nothing() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", LONG);
    let mut m = farm.master("net.exr", 21110, LONG, &["--no-local"]);
    let port = farm.master_port(&mut m);
    let mut victim = farm.worker("victim", port, "cache-victim");
    let mut other = farm.worker("other", port, "cache-other");
    m.wait_stderr("node joined: victim", Duration::from_secs(30));
    m.wait_stderr("node joined: other", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        m.running(),
        "the render ended before the kill; make it longer"
    );
    victim.signal("KILL");
    let st = victim.wait(Duration::from_secs(5));
    assert!(!st.success());
    m.wait_stderr("node lost: victim", Duration::from_secs(15));
    farm.finish(&mut m, "net.exr", &reference);
    other.wait_ok(Duration::from_secs(10));
    let out = m.stdout();
    let line = share_line(&out, "victim").unwrap_or_else(|| panic!("{}", m.describe()));
    assert!(line.contains(", left)"), "{line}");
    assert!(
        share_samples(&line) > 0,
        "the victim returned nothing before it died: {line}"
    );
}

/// `--wait-for-nodes` for a worker that never comes: after `--wait-timeout` the master renders
/// with what it has (its own cores here), says so, and the image is the one-machine image.
#[test]
fn a_wait_for_missing_workers_times_out_and_renders_anyway() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", SMALL);
    let started = std::time::Instant::now();
    let mut m = farm.master(
        "net.exr",
        21990,
        SMALL,
        &["--wait-for-nodes", "2", "--wait-timeout", "2"],
    );
    m.wait_stderr(
        "holding the render until 2 worker(s)",
        Duration::from_secs(30),
    );
    farm.finish(&mut m, "net.exr", &reference);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it did not wait"
    );
    assert!(
        m.stderr()
            .contains("only 0 of 2 worker(s) joined within 2 s (--wait-timeout)"),
        "{}",
        m.describe()
    );
}

// -- 3 ----------------------------------------------------------------------------------------

#[test]
fn the_daemon_kills_a_hung_worker_and_the_render_completes() {
    let farm = Farm::new();
    let d = farm.daemon(
        "127.0.0.11",
        "hangs",
        &[("RAYFARM_TEST_HANG_AFTER_UNITS", "2".to_string())],
    );
    let reference = farm.local_render("local.exr", SMALL);
    let t0 = Instant::now();
    let mut m = farm.master(
        "net.exr",
        21120,
        SMALL,
        &[
            "--daemon",
            "127.0.0.11",
            "--scan-interval",
            "0.5",
            "--threads",
            "1",
        ],
    );
    m.wait_stderr("node joined: hangs", Duration::from_secs(30));
    farm.finish(&mut m, "net.exr", &reference);
    let took = t0.elapsed();
    let log = d.stderr();
    assert!(
        log.contains("worker stopped responding for 5 s; killed"),
        "the daemon did not kill the hung worker:\n{}\n{}",
        d.describe(),
        m.describe()
    );
    assert!(
        took < Duration::from_secs(30),
        "the render took {took:?}:\n{}",
        m.describe()
    );
    assert!(
        m.stderr()
            .contains("node hangs: worker ended: worker stopped responding"),
        "{}",
        m.describe()
    );
    wait_state(&d, "127.0.0.11:48000", Duration::from_secs(5), |s| {
        *s == DaemonState::Idle
    });
}

// -- 4 ----------------------------------------------------------------------------------------

#[test]
fn two_masters_on_one_computer() {
    let farm = Farm::new();
    let addr = "127.0.0.12:48000";
    let d = farm.daemon("127.0.0.12", "shared", &[]);
    let mut a = farm.master(
        "a.exr",
        21130,
        LONG,
        &[
            "--no-local",
            "--daemon",
            "127.0.0.12",
            "--scan-interval",
            "0.5",
        ],
    );
    assert_eq!(farm.master_port(&mut a), 21130);
    wait_state(
        &d,
        addr,
        Duration::from_secs(15),
        |s| matches!(s, DaemonState::Occupied { master, .. } if master == "127.0.0.1:21130"),
    );

    // Master B asks for the same port, takes the next and says so.
    let reference = farm.local_render("local.exr", SMALL);
    let mut b = farm.master(
        "b.exr",
        21130,
        SMALL,
        &["--daemon", "127.0.0.12", "--scan-interval", "0.5"],
    );
    assert_eq!(farm.master_port(&mut b), 21131);
    farm.finish(&mut b, "b.exr", &reference);
    let e = b.stderr();
    assert!(
        e.contains("master port 21130 is taken; using port 21131"),
        "{e}"
    );
    // B says why it could not use the daemon it was told to use, on stderr and in its
    // share table, instead of an INFO log line nobody sees.
    assert!(
        e.contains("note: shared (127.0.0.12:48000) is not used: occupied by 127.0.0.1:21130"),
        "{e}"
    );
    let line = share_line(&b.stdout(), "shared").unwrap_or_default();
    assert!(
        line.contains("not used: occupied by 127.0.0.1:21130"),
        "{}",
        b.describe()
    );

    let listing = farm.nodes(&["--daemon", "127.0.0.12"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(addr) && l.contains("occupied by 127.0.0.1:21130")),
        "{listing}"
    );

    // Master A dies: the node is free again within the lease timeout.
    assert!(a.running(), "{}", a.describe());
    a.signal("KILL");
    a.wait(Duration::from_secs(5));
    let took = wait_state(&d, addr, Duration::from_secs(5), |s| {
        *s == DaemonState::Idle
    });
    eprintln!("the daemon was idle {took:?} after master A died");
    let listing = farm.nodes(&["--daemon", "127.0.0.12"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(addr) && l.trim_end().ends_with("idle")),
        "{listing}"
    );
    let log = d.stderr();
    assert!(
        log.contains("lease of 127.0.0.1:21130 ended")
            || log.contains("of 127.0.0.1:21130: worker"),
        "{}",
        d.describe()
    );
}

// -- 5 ----------------------------------------------------------------------------------------

fn preamble(version: u32, role: Role) -> Vec<u8> {
    let mut p = PREAMBLE_MAGIC.to_vec();
    p.extend_from_slice(&version.to_le_bytes());
    p.extend_from_slice(&[role as u8, 0, 0, 0]);
    p
}

/// Sends `bytes` to `addr` and waits for the server to close the connection.
fn send_and_expect_close(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.write_all(bytes).unwrap();
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{addr} did not close the connection after {bytes:?}: {e}"),
    }
}

/// Completes the channel handshake by hand (as a compatible peer written from PROTOCOL.md
/// would), then sends one record whose ciphertext has a flipped bit: the master must close.
fn tampered_record_after_auth(addr: &str) {
    use rayfarm_proto::channel;
    let key = FarmKey::from_secret(KEY).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let ours: [u8; 16] = preamble(PROTOCOL_VERSION, Role::Worker).try_into().unwrap();
    s.write_all(&ours).unwrap();
    let mut theirs = [0u8; 16];
    s.read_exact(&mut theirs).unwrap();
    assert_eq!(theirs[..8], PREAMBLE_MAGIC);
    let (init, m1) = channel::Initiator::start(key.channel_psk(), &ours, &theirs).unwrap();
    s.write_all(&m1).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut m2 = vec![0u8; u16::from_le_bytes(len) as usize];
    s.read_exact(&mut m2).unwrap();
    let mut t = init.finish(&m2).unwrap();
    // The key confirmation (an empty message), then a message with a flipped bit.
    let mut confirm = Vec::new();
    t.seal(&[], &mut confirm).unwrap();
    s.write_all(&confirm).unwrap();
    let mut record = Vec::new();
    t.seal(b"\x00a message the master will never read", &mut record)
        .unwrap();
    let last = record.len() - 1;
    record[last] ^= 1;
    s.write_all(&record).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn the_master_refuses_bad_peers_and_keeps_serving() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", SMALL);
    let mut m = farm.master("net.exr", 21140, SMALL, &["--no-local"]);
    let port = farm.master_port(&mut m);
    let addr = format!("127.0.0.1:{port}");

    // A wrong secret.
    let wrong = FarmKey::from_secret("not-the-farm-key").unwrap();
    match runtime().block_on(rayfarm_proto::connect(
        &addr,
        Role::Worker,
        &wrong,
        Duration::from_secs(5),
    )) {
        Err(rayfarm_proto::ProtoError::AuthFailed { reason, .. }) => {
            assert!(reason.contains("wrong farm key"), "{reason}")
        }
        Err(e) => panic!("expected an authentication error, got {e}"),
        Ok(_) => panic!("a wrong key was accepted"),
    }
    // Another protocol version, garbage, a huge handshake length, a tampered record.
    send_and_expect_close(&addr, &preamble(PROTOCOL_VERSION + 1, Role::Worker));
    send_and_expect_close(&addr, b"GET / HTTP/1.1\r\nHost: rayfarm\r\n\r\n");
    send_and_expect_close(
        &addr,
        &[
            preamble(PROTOCOL_VERSION, Role::Worker),
            u32::MAX.to_le_bytes().to_vec(),
        ]
        .concat(),
    );
    tampered_record_after_auth(&addr);

    // A worker with the wrong key says so and exits non-zero.
    let mut args = strings(&["worker", "--master", &addr, "--threads", "1", "--cache-dir"]);
    args.push(farm.path("cache-wrong").display().to_string());
    let mut env = farm.env("warn");
    env.retain(|(k, _)| *k != "RAYFARM_KEY");
    env.push(("RAYFARM_KEY", "not-the-farm-key".into()));
    let mut bad = Proc::start("worker with the wrong key", &args, &env);
    let st = bad.wait(Duration::from_secs(20));
    assert!(!st.success(), "{}", bad.describe());
    assert!(
        bad.stderr().contains("wrong farm key") && bad.stderr().starts_with("error:"),
        "{}",
        bad.describe()
    );
    assert!(!bad.stderr().contains("panicked"), "{}", bad.describe());

    // Every refusal is logged, and the master still serves a good worker.
    std::thread::sleep(Duration::from_millis(300));
    let log = m.stderr();
    assert!(m.running(), "{}", m.describe());
    for needle in [
        "authentication failed: the client's farm key does not match ours",
        "protocol version mismatch",
        "not a rayfarm peer",
        "bad handshake",
    ] {
        assert!(
            log.contains(needle),
            "the master's log lacks {needle:?}:\n{log}"
        );
    }
    assert!(
        log.lines().any(
            |l| l.contains("worker 127.0.0.1:") && l.contains("record 1 failed authentication")
        ),
        "no warning about the tampered record after authentication:\n{log}"
    );
    assert!(
        log.matches("authentication failed").count() >= 2,
        "both wrong keys are logged:\n{log}"
    );
    let mut good = farm.worker("good", port, "cache-good");
    farm.finish(&mut m, "net.exr", &reference);
    good.wait_ok(Duration::from_secs(10));
    assert!(
        share_line(&m.stdout(), "good").is_some(),
        "{}",
        m.describe()
    );
}

// -- 6 ----------------------------------------------------------------------------------------

#[test]
fn a_worker_ships_the_scene_once_then_uses_its_cache() {
    let farm = Farm::new();
    let cache = farm.path("cache-w");

    let reference = farm.local_render("local.exr", SMALL);
    let mut m = farm.master("cold.exr", 21150, SMALL, &["--no-local"]);
    let port = farm.master_port(&mut m);
    let mut w = farm.worker("w", port, "cache-w");
    farm.finish(&mut m, "cold.exr", &reference);
    w.wait_ok(Duration::from_secs(10));
    assert!(
        m.stderr().contains("w (127.0.0.1:") && m.stderr().contains("scene sent ("),
        "{}",
        m.describe()
    );
    assert!(
        !w.stderr().contains("found in the cache"),
        "{}",
        w.describe()
    );
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        cached.len() == 1 && cached[0].ends_with(".rfscene"),
        "{cached:?}"
    );

    // The same scene, other settings: nothing is shipped.
    let settings = [
        "--width",
        "64",
        "--height",
        "64",
        "--spp",
        "32",
        "--max-bounces",
        "4",
    ];
    let reference = farm.local_render("local2.exr", &settings);
    let mut m = farm.master("cached.exr", 21155, &settings, &["--no-local"]);
    let port = farm.master_port(&mut m);
    let mut w = farm.worker("w", port, "cache-w");
    farm.finish(&mut m, "cached.exr", &reference);
    w.wait_ok(Duration::from_secs(10));
    assert!(
        w.stderr().contains("found in the cache"),
        "{}",
        w.describe()
    );
    assert!(
        m.stderr().contains("scene cached, ready after"),
        "{}",
        m.describe()
    );
    assert!(!m.stderr().contains("scene sent ("), "{}", m.describe());
}

// -- 7 ----------------------------------------------------------------------------------------

#[test]
fn interrupted_workers_give_their_units_back() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", LONG);
    let mut m = farm.master("net.exr", 21160, LONG, &["--no-local"]);
    let port = farm.master_port(&mut m);
    let mut int = farm.worker("wint", port, "cache-int");
    let mut term = farm.worker("wterm", port, "cache-term");
    let mut stays = farm.worker("wstays", port, "cache-stays");
    for alias in ["wint", "wterm", "wstays"] {
        m.wait_stderr(&format!("node joined: {alias}"), Duration::from_secs(30));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        m.running(),
        "the render ended before the signals; make it longer"
    );
    int.signal("INT");
    term.signal("TERM");
    for (w, why) in [
        (&mut int, "interrupted (Ctrl-C)"),
        (&mut term, "terminated (SIGTERM)"),
    ] {
        w.wait_ok(Duration::from_secs(10));
        assert!(
            w.stderr().contains(&format!("{why}: giving back")),
            "{}",
            w.describe()
        );
    }
    m.wait_stderr("node wint (127.0.0.1:", Duration::from_secs(10));
    let log = m.wait_stderr("node wterm (127.0.0.1:", Duration::from_secs(10));
    for alias in ["wint", "wterm"] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("node {alias} (")) && l.contains(" gave back ")),
            "the master does not say {alias} gave units back:\n{log}"
        );
    }
    farm.finish(&mut m, "net.exr", &reference);
    stays.wait_ok(Duration::from_secs(10));
    let out = m.stdout();
    for alias in ["wint", "wterm"] {
        let line = share_line(&out, alias).unwrap_or_else(|| panic!("{}", m.describe()));
        assert!(line.contains(", left)"), "{line}");
    }
    let line = share_line(&out, "wstays").unwrap_or_else(|| panic!("{}", m.describe()));
    assert!(!line.contains("left"), "{line}");
}

// -- 9 ----------------------------------------------------------------------------------------

/// Every file of a bake's output folder, by name.
fn bake_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

#[test]
fn a_network_bake_is_bit_identical_to_a_local_one() {
    let farm = Farm::new();
    let _daemons = [("127.0.0.13", "b13"), ("127.0.0.14", "b14")]
        .map(|(ip, alias)| farm.daemon(ip, alias, &[]));
    let scene = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/two-charts.obj");
    let bake = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut a = strings(&["bake"]);
        a.push(scene.display().to_string());
        a.push("--out".into());
        a.push(farm.path(out).display().to_string());
        a.extend(strings(&[
            "--size",
            "48",
            "--spp",
            "32",
            "--max-bounces",
            "3",
        ]));
        a.extend(strings(extra));
        a
    };
    let mut local = Proc::start("local bake", &bake("local", &["-q"]), &farm.env("warn"));
    local.wait_ok(Duration::from_secs(60));
    let reference = bake_files(&farm.path("local"));
    assert_eq!(reference.len(), 10, "{:?}", reference.keys());

    for (i, mode) in ["single", "multi"].into_iter().enumerate() {
        let port = (21170 + i).to_string();
        let out = format!("net-{mode}");
        let args = bake(
            &out,
            &[
                "--mode",
                mode,
                "--network",
                "--no-local",
                "--daemon",
                "127.0.0.13",
                "--daemon",
                "127.0.0.14",
                "--scan-interval",
                "0.5",
                "--master-port",
                &port,
                "--master-bind",
                "127.0.0.1",
            ],
        );
        let mut m = Proc::start(&format!("bake master {mode}"), &args, &farm.env("info"));
        m.wait_ok(Duration::from_secs(120));
        let got = bake_files(&farm.path(&out));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>()
        );
        for (name, bytes) in &reference {
            assert!(
                &got[name] == bytes,
                "{mode}: {name} differs from the local bake:\n{}",
                m.describe()
            );
        }
        let stdout = m.stdout();
        assert!(
            share_line(&stdout, "b13").is_some() || share_line(&stdout, "b14").is_some(),
            "no daemon took part:\n{}",
            m.describe()
        );
        assert!(share_line(&stdout, "local").is_none(), "{stdout}");
    }
}

// -- --master-bind ----------------------------------------------------------------------------

/// Regression: with `--master-bind ADDR` the master told daemons' workers the address its
/// connection to the daemon left from (127.0.0.1 here), where it does not listen: the workers
/// could not connect and the render hung. Daemon on 127.0.0.42, master bound to 127.0.0.7.
#[test]
fn workers_are_told_the_master_bind_address() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", SMALL);
    let d = farm.daemon("127.0.0.42", "bound", &[]);
    let mut args = strings(&["render", "-o"]);
    args.push(farm.path("net.exr").display().to_string());
    args.extend(strings(SMALL));
    args.extend(strings(&[
        "--network",
        "--no-local",
        "--master-port",
        "21195",
        "--master-bind",
        "127.0.0.7",
        "--daemon",
        "127.0.0.42",
    ]));
    let mut m = Proc::start("master bound to 127.0.0.7", &args, &farm.env("info"));
    farm.finish(&mut m, "net.exr", &reference);
    assert!(
        d.stderr().contains("127.0.0.7:"),
        "the daemon should start its worker for 127.0.0.7:\n{}",
        d.describe()
    );
}

/// A worker that takes units and never returns them while it keeps answering heartbeats (a
/// malicious key holder, or an honest worker whose render thread hangs) used to stall the
/// render for good: the master gave a unit back only when its worker left or went silent. Once
/// nothing else is left to hand out, units out too long now go to another node too (here after
/// 2 s, `RAYFARM_TEST_STALE_SECS`; 60 s or 8 x the median unit time by default), and the
/// image is the one-machine image.
#[test]
fn a_worker_that_holds_its_units_does_not_stall_the_render() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", SMALL);
    let mut m = farm.master_with_env(
        "net.exr",
        21970,
        SMALL,
        &["--no-local", "--wait-for-nodes", "2"],
        &[("RAYFARM_TEST_STALE_SECS", "2".to_string())],
    );
    let master = format!("127.0.0.1:{}", farm.master_port(&mut m));
    let _holder = farm.worker_with_env(
        "holder",
        &master,
        "cache-holder",
        &[("RAYFARM_TEST_HOLD_AFTER_UNITS", "1".to_string())],
    );
    let _honest = farm.worker_at("honest", &master, "cache-honest");
    farm.finish(&mut m, "net.exr", &reference);
    assert!(
        m.stderr().contains("go to other nodes too"),
        "{}",
        m.describe()
    );
}
