//! End-to-end tests of a job folder under attack by someone on the LAN who can write to the
//! network folder but does not hold the farm key: job folders outside the manager's
//! `--netdir`, symlinks planted in a job folder, forged, swapped and edited files, and a job id
//! deleted and submitted again from another folder.
//!
//! A real `rayfarm manager` (ports 23700, 23710 and 23720 on 127.0.0.1) and, where parts are
//! baked, one daemon (127.0.0.71, 127.0.0.72), so this file runs alongside the other test files.

mod common;

use common::farm::{agent, api_token, Farm};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// POSTs a submit of `job_dir` with the farm's token; status and body.
fn submit_raw(port: u16, job_dir: &str) -> (u16, String) {
    let body = serde_json::json!({ "job_dir": job_dir }).to_string();
    let req = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}/api/v1/jobs"))
        .header("Authorization", format!("Bearer {}", api_token()))
        .header("Content-Type", "application/json")
        .body(body)
        .unwrap();
    let mut r = agent().run(req).unwrap();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// The manager's view of job `id` (`GET /api/v1/jobs/ID`).
fn job(port: u16, id: &str) -> Value {
    let req = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("http://127.0.0.1:{port}/api/v1/jobs/{id}"))
        .header("Authorization", format!("Bearer {}", api_token()))
        .body(String::new())
        .unwrap();
    let mut r = agent().run(req).unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Waits until job `id` has status `want`; its JSON.
fn wait_status(port: u16, id: &str, want: &str, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let v = job(port, id);
        if v["job"]["status"] == want {
            return v;
        }
        assert!(t.elapsed() < within, "job {id} is not {want}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file under `dir`, by relative path, with the BLAKE3 hash of its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_symlink() {
                out.push((p.strip_prefix(root).unwrap().into(), "symlink".into()));
            } else {
                let h = blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string();
                out.push((p.strip_prefix(root).unwrap().into(), h));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The message of a refused submit, with the requested path taken out.
fn without(msg: &str, path: &str) -> String {
    msg.replace(path, "PATH")
}

#[test]
fn job_folders_outside_the_roots_and_unauthenticated_descs_are_refused() {
    let farm = Farm::new();
    let port = 23700;
    let _m = farm.manager(port, &[]);
    let net = farm.net();

    // Outside the roots: an existing folder, a missing one, a file inside the root, a symlink
    // from inside the root to a folder outside, a sibling whose name has the root's as prefix.
    let outside = farm.path("outside/jx");
    std::fs::create_dir_all(&outside).unwrap();
    let sibling = PathBuf::from(format!("{}2/jx", net.display()));
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(net.join("jfile"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, net.join("jlink")).unwrap();
    let mut messages = Vec::new();
    for p in [
        outside.clone(),
        farm.path("outside/jmissing"),
        net.join("jmissing"),
        net.join("jfile"),
        net.join("jlink"),
        sibling,
        net.join("jx/../../outside/jx"),
    ] {
        let p = p.display().to_string();
        let (status, body) = submit_raw(port, &p);
        assert_eq!(status, 400, "{p}: {body}");
        assert!(body.contains(&net.display().to_string()), "{p}: {body}");
        messages.push(without(&body, &p.replace('\\', "\\\\")));
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "the refusals differ: {messages:#?}"
    );

    // A job.desc symlinked to another JSON file: refused, and the file's contents are not told.
    let secret = farm.path("secret.json");
    std::fs::write(
        &secret,
        r#"{"format": "TOP-SECRET-FORMAT", "version": 1, "password": "TOP-SECRET"}"#,
    )
    .unwrap();
    let jsym = net.join("jsym");
    std::fs::create_dir(&jsym).unwrap();
    std::os::unix::fs::symlink(&secret, jsym.join("job.desc")).unwrap();
    let (status, body) = submit_raw(port, &jsym.display().to_string());
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("symbolic link") && !body.contains("TOP-SECRET"),
        "{body}"
    );
    let (ok, out, err) = farm.run(&["merge", &jsym.join("job.desc").display().to_string()]);
    assert!(
        !ok && !err.contains("TOP-SECRET") && !out.contains("TOP-SECRET"),
        "{err}"
    );
    // ... and a plain job.desc without a MAC, naming the file: refused the same way.
    std::fs::remove_file(jsym.join("job.desc")).unwrap();
    std::fs::copy(&secret, jsym.join("job.desc")).unwrap();
    let (status, body) = submit_raw(port, &jsym.display().to_string());
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("job.desc.mac") && !body.contains("TOP-SECRET"),
        "{body}"
    );

    // An edited job.desc (out_dir moved): refused by submit and by merge, nothing written.
    let mut c = farm.client("out-e", port, &["--spp", "4", "--no-wait"]);
    let (id, _) = Farm::job_id(&mut c);
    c.wait_ok(Duration::from_secs(60));
    let (ok, _, err) = farm.run(&[
        "job",
        "delete",
        &id,
        "--manager",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(ok, "{err}");
    let desc = net.join(&id).join("job.desc");
    let text = std::fs::read_to_string(&desc).unwrap();
    let moved = farm.path("moved");
    std::fs::create_dir(&moved).unwrap();
    let edited = text.replace(
        &farm.path("out-e").display().to_string(),
        &moved.display().to_string(),
    );
    assert_ne!(edited, text);
    std::fs::write(&desc, &edited).unwrap();
    let (status, body) = submit_raw(port, &net.join(&id).display().to_string());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("job.desc.mac does not match"), "{body}");
    let before = (tree(&net), tree(&farm.path("out-e")));
    let (ok, _, err) = farm.run(&["merge", &desc.display().to_string()]);
    assert!(
        !ok && err.contains("job.desc.mac does not match") && err.contains("job.desc"),
        "{err}"
    );
    assert_eq!((tree(&net), tree(&farm.path("out-e"))), before);
    assert!(tree(&moved).is_empty());
}

#[test]
fn forged_swapped_and_symlinked_parts_are_refused_and_a_resubmit_uses_its_new_folder() {
    let farm = Farm::new();
    let port = 23710;
    let net2 = farm.path("net2");
    std::fs::create_dir(&net2).unwrap();
    let net2 = std::fs::canonicalize(net2).unwrap();
    let _m = farm.manager_extra(
        "127.0.0.1",
        port,
        &["127.0.0.71"],
        "0.3",
        &["--netdir", &net2.display().to_string()],
    );
    let net = farm.net();
    // Three jobs queued before any node is there: A and B (another seed) are baked, C has its
    // `parts` planted as a symlink to a folder outside the job.
    let mut ids = Vec::new();
    for (out, seed) in [("out-a", "1"), ("out-b", "2"), ("out-c", "3")] {
        let mut c = farm.client(out, port, &["--spp", "4", "--seed", seed, "--no-wait"]);
        ids.push(Farm::job_id(&mut c).0);
        c.wait_ok(Duration::from_secs(60));
    }
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let elsewhere = farm.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let _ = std::fs::remove_dir(net.join(&c).join("parts"));
    std::os::unix::fs::symlink(&elsewhere, net.join(&c).join("parts")).unwrap();
    let _d = farm.daemon("127.0.0.71", "a71", &[]);
    wait_status(port, &a, "completed", Duration::from_secs(60));
    wait_status(port, &b, "completed", Duration::from_secs(60));
    // Job C's task fails on the node with a clear error (and is retried later, in vain).
    let t = Instant::now();
    loop {
        let v = job(port, &c);
        if v.to_string().contains("symbolic link") {
            assert!(v.to_string().contains("parts"), "{v}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tree(&elsewhere).is_empty(), "{:?}", tree(&elsewhere));

    // A forged part: its sums changed and a plain BLAKE3 trailer recomputed.
    let parts_a = net.join(&a).join("parts");
    let mut names: Vec<String> = std::fs::read_dir(&parts_a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let name = names[0].clone();
    let part_a = parts_a.join(&name);
    let good = std::fs::read(&part_a).unwrap();
    let body = &good[..good.len() - 32];
    let mut sums = zstd::decode_all(&body[44..]).unwrap();
    sums[0] ^= 0x40;
    let mut forged = body[..44].to_vec();
    forged.extend(zstd::encode_all(&sums[..], 3).unwrap());
    let h = blake3_of(&forged);
    forged.extend_from_slice(&h);
    std::fs::write(&part_a, &forged).unwrap();
    let desc_a = net.join(&a).join("job.desc").display().to_string();
    let out_a = tree(&farm.path("out-a"));
    let (ok, _, err) = farm.run(&["merge", &desc_a]);
    let stem = name.trim_end_matches(".rfpart");
    assert!(!ok && err.contains(stem) && err.contains("MAC"), "{err}");
    assert_eq!(tree(&farm.path("out-a")), out_a);

    // A part swapped in from job B (same part name, other job and seed).
    std::fs::copy(net.join(&b).join("parts").join(&name), &part_a).unwrap();
    let (ok, _, err) = farm.run(&["merge", &desc_a]);
    assert!(!ok && err.contains(stem) && err.contains("MAC"), "{err}");
    assert_eq!(tree(&farm.path("out-a")), out_a);
    // The real part back: the merge goes through.
    std::fs::write(&part_a, &good).unwrap();
    let (ok, _, err) = farm.run(&["merge", &desc_a]);
    assert!(ok, "{err}");

    // Job C deleted, and the same id submitted again from a clean folder in the other root:
    // the manager reads the new folder (not what it cached of the old one), the parts land
    // there and the merge succeeds.
    let (ok, _, err) = farm.run(&[
        "job",
        "delete",
        "--force",
        &c,
        "--manager",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(ok, "{err}");
    let new_c = net2.join(&c);
    std::fs::create_dir(&new_c).unwrap();
    for f in ["job.desc", "job.desc.mac", "scene.rfscene"] {
        std::fs::copy(net.join(&c).join(f), new_c.join(f)).unwrap();
    }
    let (ok, _, err) = farm.run(&[
        "submit",
        &new_c.display().to_string(),
        "--manager",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(ok, "{err}");
    wait_status(port, &c, "completed", Duration::from_secs(60));
    assert!(tree(&elsewhere).is_empty(), "{:?}", tree(&elsewhere));
    assert!(!tree(&new_c.join("parts")).is_empty());
    let (ok, _, err) = farm.run(&["merge", &new_c.join("job.desc").display().to_string()]);
    assert!(ok, "{err}");
    assert!(!new_c.exists());
}

/// A node confined to its own network folders (`daemon --netdir`, passed to its worker) writes no
/// part into a job folder outside them, even one the manager serves and the key authenticates:
/// the task fails naming the node's folders, and the node ends up excluded from the job.
#[test]
fn a_node_writes_parts_only_inside_its_own_network_folders() {
    let farm = Farm::new();
    let port = 23720;
    let _m = farm.manager(port, &["127.0.0.72"]);
    let own = farm.path("node-own-folder");
    std::fs::create_dir(&own).unwrap();
    let mut c = farm.client("out", port, &["--spp", "4", "--no-wait"]);
    let id = Farm::job_id(&mut c).0;
    c.wait_ok(Duration::from_secs(60));
    let _d = farm.daemon(
        "127.0.0.72",
        "a72",
        &["--netdir", &own.display().to_string()],
    );
    let t = Instant::now();
    let v = loop {
        let v = job(port, &id);
        if v.to_string().contains("this node's network folders") {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let own_canon = std::fs::canonicalize(&own).unwrap();
    assert!(
        v.to_string().contains(&own_canon.display().to_string()),
        "{v}"
    );
    let written: Vec<_> = tree(&farm.net().join(&id))
        .into_iter()
        .filter(|(p, _)| p.starts_with("parts"))
        .collect();
    assert!(written.is_empty(), "a part was written: {written:?}");
    assert!(tree(&own).is_empty(), "{:?}", tree(&own));
}

/// BLAKE3 of `bytes`, as the part format version 1 trailer was.
fn blake3_of(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}
