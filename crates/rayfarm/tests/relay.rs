//! End-to-end tests of scene distribution between workers (issue "from a few machines to a few
//! hundred"): hand-started workers relay the compiled scene to each other as the master plans,
//! the master's uplink carries it only a few times, and the image stays byte-identical to a
//! one-machine render.
//!
//! Master ports 21950-21969; everything on 127.0.0.1.

mod common;

use common::net::*;
use common::proc::Proc;
use std::time::Duration;

/// The figures of the master's `scene distribution:` line: workers that fetched the scene,
/// how many through relays, and how many copies of it the master sent.
fn distribution(stderr: &str) -> Option<(u32, u32, f64)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("scene distribution: "))?;
    let rest = &line[line.find("scene distribution: ")? + 20..];
    let fetched = rest.split(' ').next()?.parse().ok()?;
    let relayed = rest[rest.find("scene (")? + 7..]
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let copies = rest[rest.find("bytes (")? + 7..]
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((fetched, relayed, copies))
}

#[test]
fn workers_relay_the_scene_and_the_image_is_unchanged() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", SMALL);
    // A chain: the master sends the scene to one worker, each worker to the next.
    let mut m = farm.master(
        "relayed.exr",
        21950,
        SMALL,
        &["--no-local", "--scene-fanout", "1"],
    );
    let port = farm.master_port(&mut m);
    let mut workers: Vec<Proc> = (0..5)
        .map(|i| farm.worker(&format!("w{i}"), port, &format!("cache-{i}")))
        .collect();
    farm.finish(&mut m, "relayed.exr", &reference);
    for w in &mut workers {
        w.wait_ok(Duration::from_secs(20));
    }
    let (fetched, relayed, copies) = distribution(&m.stderr())
        .unwrap_or_else(|| panic!("no distribution line:\n{}", m.describe()));
    assert_eq!(fetched, 5, "{}", m.describe());
    assert_eq!(relayed, 4, "{}", m.describe());
    assert!(
        copies < 1.01,
        "the master sent {copies} copies:\n{}",
        m.describe()
    );
    let via_relay = workers
        .iter()
        .filter(|w| w.stderr().contains("fetching the scene from the relay"))
        .count();
    assert_eq!(via_relay, 4);
}

/// A glTF whose one image is `side` x `side` RGBA noise (incompressible: the compiled scene is
/// about 4 x side² bytes) on a triangle behind the camera, plus the Cornell box's look-alike
/// in view: a lit quad.
fn big_texture_scene(dir: &std::path::Path, side: u32) -> std::path::PathBuf {
    let mut rgba = vec![0u8; side as usize * side as usize * 4];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for c in rgba.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    let png = dir.join("noise.png");
    image::save_buffer_with_format(
        &png,
        &rgba,
        side,
        side,
        image::ExtendedColorType::Rgba8,
        image::ImageFormat::Png,
    )
    .unwrap();
    // Two triangles: a floor in view (untextured, lit by the emissive one above it) and one
    // behind the camera that carries the big texture.
    let pos: [[f32; 3]; 9] = [
        [-1.0, -1.0, -1.0],
        [1.0, -1.0, -1.0],
        [0.0, -1.0, -3.0],
        [-1.0, 1.0, -1.0],
        [0.0, 1.0, -3.0],
        [1.0, 1.0, -1.0],
        [-1.0, 0.0, 5.0],
        [1.0, 0.0, 5.0],
        [0.0, 1.0, 5.0],
    ];
    let uv: [[f32; 2]; 9] = [[0.0, 0.0]; 9];
    let mut bin = Vec::new();
    for p in pos {
        for v in p {
            bin.extend_from_slice(&v.to_le_bytes());
        }
    }
    for t in uv {
        for v in t {
            bin.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(dir.join("big.bin"), &bin).unwrap();
    let gltf = serde_json::json!({
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0, 1, 2, 3]}],
        "nodes": [
            {"mesh": 0}, {"mesh": 1}, {"mesh": 2},
            {"camera": 0, "translation": [0.0, 0.0, 1.5]}
        ],
        "cameras": [{"type": "perspective", "perspective": {"yfov": 1.0, "znear": 0.01}}],
        "buffers": [{"uri": "big.bin", "byteLength": bin.len()}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 36},
            {"buffer": 0, "byteOffset": 36, "byteLength": 36},
            {"buffer": 0, "byteOffset": 72, "byteLength": 36},
            {"buffer": 0, "byteOffset": 108, "byteLength": 24}
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
             "min": [-1.0, -1.0, -3.0], "max": [1.0, -1.0, -1.0]},
            {"bufferView": 1, "componentType": 5126, "count": 3, "type": "VEC3",
             "min": [-1.0, 1.0, -3.0], "max": [1.0, 1.0, -1.0]},
            {"bufferView": 2, "componentType": 5126, "count": 3, "type": "VEC3",
             "min": [-1.0, 0.0, 5.0], "max": [1.0, 1.0, 5.0]},
            {"bufferView": 3, "componentType": 5126, "count": 3, "type": "VEC2"}
        ],
        "materials": [
            {"pbrMetallicRoughness": {"baseColorFactor": [0.8, 0.8, 0.8, 1.0], "metallicFactor": 0.0}},
            {"emissiveFactor": [1.0, 1.0, 1.0],
             "extensions": {"KHR_materials_emissive_strength": {"emissiveStrength": 4.0}}},
            {"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0}}
        ],
        "extensionsUsed": ["KHR_materials_emissive_strength"],
        "textures": [{"source": 0}],
        "images": [{"uri": "noise.png"}],
        "meshes": [
            {"primitives": [{"attributes": {"POSITION": 0}, "material": 0}]},
            {"primitives": [{"attributes": {"POSITION": 1}, "material": 1}]},
            {"primitives": [{"attributes": {"POSITION": 2, "TEXCOORD_0": 3}, "material": 2}]}
        ]
    });
    let path = dir.join("big.gltf");
    std::fs::write(&path, serde_json::to_vec_pretty(&gltf).unwrap()).unwrap();
    path
}

/// The acceptance test: 32 hand-started workers and a 100 MB-class scene. All of them
/// render, the master's uplink carries the scene well under 32 times, and the image is
/// byte-identical to a one-machine render.
#[test]
fn thirty_two_workers_share_a_100_mb_scene() {
    const WORKERS: usize = 32;
    let farm = Farm::new();
    // 5120² x 4 bytes: a 105 MB compiled scene.
    let scene = big_texture_scene(&farm.path(""), 5120);
    let scene = scene.display().to_string();
    let settings = [
        scene.as_str(),
        "--width",
        "256",
        "--height",
        "256",
        "--spp",
        // 64 tiles x 8 sample ranges: enough units that every worker gets some.
        "128",
        "--max-bounces",
        "2",
    ];
    let t = std::time::Instant::now();
    let reference = farm.local_render("local.exr", &settings);
    eprintln!("local render: {:.1} s", t.elapsed().as_secs_f64());
    // On two cores, 32 workers loading a 100 MB scene take longer than the render: the master
    // holds the work until all have joined, so that every one of them renders.
    let mut m = farm.master(
        "swarm.exr",
        21960,
        &settings,
        &[
            "--no-local",
            "--wait-for-nodes",
            "32",
            "--wait-timeout",
            "0",
        ],
    );
    let port = farm.master_port(&mut m);
    let mut workers: Vec<Proc> = (0..WORKERS)
        .map(|i| farm.worker(&format!("w{i:02}"), port, &format!("cache-{i}")))
        .collect();
    // The master waits for all 32: a worker that fails would keep it waiting, so watch them.
    let until = std::time::Instant::now() + Duration::from_secs(600);
    while m.running() {
        for w in &mut workers {
            if !w.running() {
                let st = w.wait(Duration::from_secs(1));
                assert!(st.success(), "a worker failed:\n{}", w.describe());
            }
        }
        assert!(std::time::Instant::now() < until, "{}", m.describe());
        std::thread::sleep(Duration::from_millis(200));
    }
    m.wait_ok(Duration::from_secs(10));
    for l in m.stderr().lines() {
        if !l.contains("INFO") {
            eprintln!("{l}");
        }
    }
    let got = std::fs::read(farm.path("swarm.exr")).unwrap();
    assert!(got == reference, "the image differs:\n{}", m.describe());
    for w in &mut workers {
        w.wait_ok(Duration::from_secs(30));
    }
    let (fetched, relayed, copies) = distribution(&m.stderr())
        .unwrap_or_else(|| panic!("no distribution line:\n{}", m.describe()));
    assert_eq!(fetched as usize, WORKERS, "{}", m.describe());
    assert!(
        relayed as usize >= WORKERS - 4,
        "{relayed} workers fetched through relays:\n{}",
        m.describe()
    );
    assert!(
        copies <= 4.0,
        "the master sent the scene {copies} times to {WORKERS} workers:\n{}",
        m.describe()
    );
    for l in m.stderr().lines() {
        if l.contains("scene distribution")
            || l.starts_with("rendered")
            || l.contains("node joined")
        {
            eprintln!("{l}");
        }
    }
    eprintln!("{}", m.stdout());
    let joined = m.stderr().matches("node joined: w").count();
    assert_eq!(joined, WORKERS, "{}", m.describe());
    // Every worker rendered a share (the end-of-render table lists each with its samples).
    let rendering = m
        .stdout()
        .lines()
        .filter(|l| {
            l.trim_start().starts_with('w') && l.contains("threads") && !l.contains("(0 samples)")
        })
        .count();
    assert_eq!(rendering, WORKERS, "{}", m.describe());
}

/// The attacker holds the farm key (a compromised node): it joins as a worker, is named as
/// the relay of the next worker, and sends it a forged chunk. The worker checks every chunk
/// against the hash the master sent, refuses it, fetches the scene from the master instead,
/// and the image is unchanged.
#[test]
fn a_relay_that_forges_scene_bytes_is_caught_and_bypassed() {
    use rayfarm_proto::{FarmKey, Msg, Role, SecureListener};
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", SMALL);
    let mut m = farm.master(
        "forged.exr",
        21965,
        SMALL,
        &["--no-local", "--scene-fanout", "1"],
    );
    let port = farm.master_port(&mut m);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let forger = std::thread::spawn(move || {
        runtime().block_on(async move {
            let key = FarmKey::from_secret(KEY).unwrap();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let relay_port = l.local_addr().unwrap().port();
            let mut relay =
                SecureListener::new(l, Role::Worker, key.clone(), Default::default()).unwrap();
            let mut c = rayfarm_proto::connect(
                &format!("127.0.0.1:{port}"),
                Role::Worker,
                &key,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            c.send(&Msg::WorkerHello {
                alias: "forger".into(),
                threads: 1,
                version: env!("CARGO_PKG_VERSION").into(),
                peer_port: relay_port,
            })
            .await
            .unwrap();
            let total = loop {
                match c
                    .recv_timeout(Duration::from_secs(20), "the job")
                    .await
                    .unwrap()
                {
                    Msg::Heartbeat => continue,
                    Msg::Job { scene_bytes, .. } => break scene_bytes,
                    other => panic!("expected Job, got {other:?}"),
                }
            };
            c.send(&Msg::NeedScene).await.unwrap();
            let mut blob = Vec::new();
            while (blob.len() as u64) < total {
                match c
                    .recv_timeout(Duration::from_secs(20), "the scene")
                    .await
                    .unwrap()
                {
                    Msg::SceneSource { peer, .. } => assert_eq!(peer, None, "fed by the master"),
                    Msg::SceneChunk { data, .. } => blob.extend_from_slice(&data),
                    Msg::Heartbeat => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            c.send(&Msg::Ready).await.unwrap();
            ready_tx.send(()).unwrap();
            // The next worker fetches from here: forge one byte of its first chunk.
            let mut child = tokio::time::timeout(Duration::from_secs(30), relay.accept())
                .await
                .expect("the next worker fetches from this relay");
            match child.recv().await.unwrap() {
                Msg::FetchScene { from_chunk: 0, .. } => {}
                other => panic!("expected FetchScene, got {other:?}"),
            }
            let len = blob.len().min(rayfarm_proto::SCENE_CHUNK_BYTES);
            let mut forged = blob[..len].to_vec();
            forged[len / 2] ^= 0x40;
            child
                .send(&Msg::SceneChunk {
                    offset: 0,
                    data: forged,
                })
                .await
                .unwrap();
            // The worker hangs up on the forger; the forger leaves the farm (its units go back).
            let _ = child
                .recv_timeout(Duration::from_secs(20), "the hang-up")
                .await;
            let _ = c
                .send(&Msg::Goodbye {
                    reason: "forger leaving".into(),
                })
                .await;
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the forger got the scene");
    let mut w = farm.worker("honest", port, "cache-honest");
    forger.join().unwrap();
    farm.finish(&mut m, "forged.exr", &reference);
    w.wait_ok(Duration::from_secs(20));
    assert!(
        w.stderr().contains("does not match its hash")
            && w.stderr()
                .contains("fetching the rest of the scene from the master"),
        "{}",
        w.describe()
    );
}
