//! The farm channel played by an attacker on the LAN who does not hold the farm key: a byte
//! level man in the middle between a worker and its master (reads the capture, flips a byte of
//! the results), a relay that forwards a real master's handshake to a daemon and then speaks
//! for itself, idle-connection floods against the daemon and master ports while real peers
//! must still be served, and a decompression bomb offered to a worker.
//!
//! Loopback only: daemons on 127.0.0.40-41, masters on ports 21180-21199. Every flood is
//! bounded (hundreds of connections, seconds).

mod common;

use common::net::*;
use common::proc::Proc;
use rayfarm_proto::{DaemonState, FarmKey, Msg, Role, WireSettings, WireWork};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A byte-level proxy: every connection to `listen` is forwarded to `upstream`. Bytes from the
/// client are counted across the connection; the one at `flip_at` (if any) is flipped, once.
/// Everything the upstream sends is recorded.
struct Proxy {
    addr: String,
    from_upstream: Arc<Mutex<Vec<u8>>>,
    flipped: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: String, flip_at: Option<usize>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let from_upstream = Arc::new(Mutex::new(Vec::new()));
        let flipped = Arc::new(AtomicBool::new(false));
        let (rec, fl) = (from_upstream.clone(), flipped.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                let fl = fl.clone();
                std::thread::spawn(move || {
                    let seen = AtomicUsize::new(0);
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let at = seen.fetch_add(n, Ordering::Relaxed);
                        if let Some(f) = flip_at {
                            if f >= at && f < at + n && !fl.swap(true, Ordering::SeqCst) {
                                buf[f - at] ^= 0x20;
                            }
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy {
            addr,
            from_upstream,
            flipped,
        }
    }
}

/// Whether any of 64 windows of 32 bytes spread over `needle` occurs in `hay`.
fn shares_a_window(hay: &[u8], needle: &[u8]) -> bool {
    let w = 32;
    (0..64).any(|i| {
        let at = (needle.len() - w) * i / 63;
        hay.windows(w).any(|x| x == &needle[at..at + w])
    })
}

#[test]
fn a_man_in_the_middle_learns_nothing_and_cannot_change_a_result() {
    let farm = Farm::new();
    let reference = farm.local_render("local.exr", SMALL);
    let mut m = farm.master("net.exr", 21180, SMALL, &["--no-local"]);
    let port = farm.master_port(&mut m);

    // Past the handshake and the worker's first messages: inside its unit results.
    let proxy = Proxy::start(format!("127.0.0.1:{port}"), Some(20_000));
    let mut tapped = farm.worker_at("tapped", &proxy.addr, "cache-tapped");
    let log = m.wait_stderr("failed authentication", Duration::from_secs(60));
    assert!(proxy.flipped.load(Ordering::SeqCst));
    assert!(
        log.lines()
            .any(|l| l.contains("record") && l.contains("failed authentication (tampered")),
        "the master should name the bad record:\n{log}"
    );
    // The tampered connection is gone; its units are rendered by an honest worker.
    let _ = tapped.wait(Duration::from_secs(20));
    let mut honest = farm.worker("honest", port, "cache-honest");
    farm.finish(&mut m, "net.exr", &reference);
    honest.wait_ok(Duration::from_secs(20));

    // The capture of everything the master sent through the proxy holds none of the scene.
    let cached: Vec<_> = std::fs::read_dir(farm.path("cache-tapped"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.metadata().map(|m| m.is_file()).unwrap_or(false))
        .collect();
    assert_eq!(cached.len(), 1, "the tapped worker cached its scene");
    let blob = std::fs::read(cached[0].path()).unwrap();
    let capture = proxy.from_upstream.lock().unwrap().clone();
    assert!(
        capture.len() > blob.len(),
        "the capture ({} bytes) should hold the whole scene transfer ({} bytes)",
        capture.len(),
        blob.len()
    );
    assert!(
        !shares_a_window(&capture, &blob),
        "scene bytes appear in the capture"
    );
}

#[test]
fn a_relay_cannot_take_over_a_session_with_a_daemon() {
    let farm = Farm::new();
    let mut d = farm.daemon("127.0.0.40", "relayed", &[]);
    let addr = "127.0.0.40:48000";
    // The relay forwards a real master's preamble and handshake (16 + 2 + 48 bytes), then
    // changes the first byte of ciphertext of the master's first message (its Acquire).
    let proxy = Proxy::start(addr.to_string(), Some(16 + 2 + 48 + 2 + 3));
    let key = FarmKey::from_secret(KEY).unwrap();
    let rt = runtime();
    let result = rt.block_on(async {
        let mut c =
            rayfarm_proto::connect(&proxy.addr, Role::Master, &key, Duration::from_secs(5)).await?;
        c.send(&Msg::Acquire {
            master_addr: "127.0.0.66:21000".into(),
            lease_timeout_ms: 10_000,
        })
        .await?;
        c.recv_timeout(Duration::from_secs(10), "waiting for the daemon")
            .await
    });
    assert!(result.is_err(), "the daemon answered a tampered Acquire");
    let log = d.wait_stderr("failed authentication", Duration::from_secs(10));
    assert!(log.contains("record 0 failed authentication"), "{log}");
    assert_eq!(discover(addr).unwrap().state, DaemonState::Idle);
    assert!(!log.contains("127.0.0.66"), "{log}");
}

#[test]
fn idle_floods_keep_neither_masters_nor_workers_out() {
    let farm = Farm::new();
    let mut d = farm.daemon("127.0.0.41", "flooded", &[]);
    let daemon = "127.0.0.41:48000";
    let reference = farm.local_render("local.exr", SMALL);
    let mut m = farm.master("net.exr", 21190, SMALL, &["--no-local"]);
    let port = farm.master_port(&mut m);
    let master = format!("127.0.0.1:{port}");

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(daemon).unwrap());
        idle.push(TcpStream::connect(&master).unwrap());
    }
    // A real client still gets the daemon's answer within seconds...
    let t = Instant::now();
    let out = farm.nodes(&["--daemon", "127.0.0.41"]);
    assert!(out.contains("flooded") && out.contains("idle"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // ... and a worker still joins the master and the render completes, bit-identical.
    let mut w = farm.worker("w", port, "cache-w");
    farm.finish(&mut m, "net.exr", &reference);
    w.wait_ok(Duration::from_secs(20));
    drop(idle);
    // Refusals are logged at a bounded rate, not a line per connection.
    assert!(
        d.stderr().len() < 64 << 10,
        "{} bytes of daemon log",
        d.stderr().len()
    );
    assert!(m.stderr().lines().count() < 200, "{}", m.stderr());
    assert!(d.running());
}

/// Peak resident memory of a process, in KiB, from /proc (0 once it has exited).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A blob whose header claims a 3 GiB body and whose 100-odd KB payload really decompresses
/// to 3 GiB of zeros.
fn decompression_bomb() -> Vec<u8> {
    let body_len: u64 = 3 << 30;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(body_len >> 20) {
        enc.write_all(&zeros).unwrap();
    }
    let payload = enc.finish().unwrap();
    // The header as PROTOCOL.md and blob.rs lay it out: magic, version, flags, body length,
    // payload length, the body's BLAKE3 hash (a made-up one: the bomb must not need it).
    let mut blob = rayfarm_scene::blob::BLOB_MAGIC.to_vec();
    blob.extend_from_slice(&rayfarm_scene::blob::BLOB_VERSION.to_le_bytes());
    blob.extend_from_slice(&0u32.to_le_bytes());
    blob.extend_from_slice(&body_len.to_le_bytes());
    blob.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    blob.extend_from_slice(&[0xb0; 32]);
    assert_eq!(blob.len(), rayfarm_scene::blob::HEADER_LEN);
    blob.extend_from_slice(&payload);
    blob
}

#[test]
fn a_decompression_bomb_is_refused_before_it_is_decompressed() {
    let farm = Farm::new();
    let bomb = decompression_bomb();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let hash = rayfarm_scene::blob::content_hash(&bomb).unwrap();
    let rt = runtime();
    let (mut listener, mut w) = fake_master_with_worker(&rt, &farm, &["--max-scene-mb", "64"]);
    let pid = w.pid();
    let work = render_work(64, 1, 1);
    let peak = PeakWatch::start(pid);
    rt.block_on(async {
        let mut c = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .expect("the worker connects");
        assert!(matches!(c.recv().await.unwrap(), Msg::WorkerHello { .. }));
        ship_scene(&mut c, hash, &bomb, work).await;
        // The worker gives up on the job: it closes the connection.
        loop {
            match c
                .recv_timeout(Duration::from_secs(20), "the worker's answer")
                .await
            {
                Ok(Msg::Heartbeat) => continue,
                Ok(other) => panic!("the worker accepted the bomb: {other:?}"),
                Err(_) => break,
            }
        }
    });
    let st = w.wait(Duration::from_secs(20));
    let peak_mib = peak.stop() >> 10;
    assert!(!st.success(), "{}", w.describe());
    assert!(
        w.stderr().contains("scene limit is 64 MiB"),
        "the worker should name its limit:\n{}",
        w.describe()
    );
    assert!(peak_mib < 256, "the worker grew to {peak_mib} MiB");
}

/// A master's listener made by the test, and a one-thread worker (`extra` arguments added)
/// started against it, with its own scene cache.
fn fake_master_with_worker(
    rt: &tokio::runtime::Runtime,
    farm: &Farm,
    extra: &[&str],
) -> (rayfarm_proto::SecureListener, Proc) {
    let key = FarmKey::from_secret(KEY).unwrap();
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = l.local_addr().unwrap().port();
    let listener = rt
        .block_on(async {
            rayfarm_proto::SecureListener::new(l, Role::Master, key, Default::default())
        })
        .unwrap();
    let master = format!("127.0.0.1:{port}");
    let cache = farm.path("cache-fake-master").display().to_string();
    let mut args = strings(&["worker", "--master", &master, "--threads", "1"]);
    args.extend(strings(extra));
    args.extend(strings(&["--cache-dir", &cache]));
    (listener, Proc::start("worker", &args, &farm.env("info")))
}

/// A square render of `side` pixels a side from a fixed camera.
fn render_work(side: u32, spp: u32, max_bounces: u32) -> WireWork {
    WireWork::Render(WireSettings {
        width: side,
        height: side,
        spp,
        max_bounces,
        seed: 0,
        camera_name: String::new(),
        projection: 0,
        proj_a: 0.7,
        proj_b: 0.0,
        position: [0.0, 1.0, 3.0],
        right: [1.0, 0.0, 0.0],
        up: [0.0, 1.0, 0.0],
        forward: [0.0, 0.0, -1.0],
    })
}

/// Follows a process's peak resident memory from a thread of its own.
struct PeakWatch {
    peak: Arc<AtomicUsize>,
    watching: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakWatch {
    fn start(pid: u32) -> PeakWatch {
        let peak = Arc::new(AtomicUsize::new(0));
        let watching = Arc::new(AtomicBool::new(true));
        let (p2, w2) = (peak.clone(), watching.clone());
        let thread = std::thread::spawn(move || {
            while w2.load(Ordering::Relaxed) {
                p2.fetch_max(peak_rss_kib(pid) as usize, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PeakWatch {
            peak,
            watching,
            thread,
        }
    }

    /// Stops watching; the peak in KiB.
    fn stop(self) -> usize {
        self.watching.store(false, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// As a master: offers `blob` (whose content hash is `hash`) with `work`, and sends it when
/// the worker asks for it.
async fn ship_scene(c: &mut rayfarm_proto::Conn, hash: [u8; 32], blob: &[u8], work: WireWork) {
    c.send(&Msg::Job {
        job_id: 1,
        scene_hash: hash,
        scene_bytes: blob.len() as u64,
        work,
    })
    .await
    .unwrap();
    loop {
        match c.recv_timeout(Duration::from_secs(10), "NeedScene").await {
            Ok(Msg::NeedScene) => break,
            Ok(Msg::Heartbeat) => continue,
            other => panic!("expected NeedScene, got {other:?}"),
        }
    }
    let chunks =
        rayfarm_proto::scene_chunks::ChunkList::of(blob, rayfarm_proto::SCENE_CHUNK_BYTES as u32);
    c.send(&Msg::SceneSource {
        chunk_bytes: chunks.chunk_bytes,
        chunk_hashes: chunks.hashes.clone(),
        peer: None,
    })
    .await
    .unwrap();
    for i in 0..chunks.count() {
        let o = chunks.offset(i) as usize;
        c.send(&Msg::SceneChunk {
            offset: o as u64,
            data: blob[o..o + chunks.len_of(i)].to_vec(),
        })
        .await
        .unwrap();
    }
}

/// The attack (a master holding the key): assign a worker many large units, then never read
/// its results. Each finished 1024 x 1024 unit is 48 MiB of sums; before, they piled up in
/// the worker until it ran out of memory (2.7 GB after 39 s, still growing). Now only two
/// units per thread render at once, so at most that many results wait to be sent.
#[test]
fn a_master_that_stops_reading_cannot_fill_a_workers_memory() {
    let farm = Farm::new();
    let (scene, _) = rayfarm_scene::load(&common::example("cornell_box.gltf")).unwrap();
    let blob = rayfarm_scene::blob::encode(&scene);
    let hash = rayfarm_scene::blob::content_hash(&blob).unwrap();
    let rt = runtime();
    let (mut listener, mut w) = fake_master_with_worker(&rt, &farm, &["--no-relay"]);
    let side = 1024u32;
    let work = render_work(side, 1 << 20, 0);
    let peak = PeakWatch::start(w.pid());
    let done_before = rt.block_on(async {
        let mut c = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .expect("the worker connects");
        assert!(matches!(c.recv().await.unwrap(), Msg::WorkerHello { .. }));
        ship_scene(&mut c, hash, &blob, work).await;
        loop {
            match c.recv_timeout(Duration::from_secs(30), "Ready").await {
                Ok(Msg::Ready) => break,
                Ok(Msg::Heartbeat) => continue,
                other => panic!("expected Ready, got {other:?}"),
            }
        }
        // 40 whole-image units (each sample range its own), about 1.9 GiB of results in all.
        let units: Vec<rayfarm_proto::WireUnit> = (0..40)
            .map(|i| {
                rayfarm_proto::WireUnit::from(rayfarm_render::WorkUnit {
                    layer: 0,
                    sample_start: i,
                    sample_end: i + 1,
                    y0: 0,
                    x0: 0,
                    y1: side,
                    x1: side,
                })
            })
            .collect();
        c.send(&Msg::Assign { units }).await.unwrap();
        // Never read again; keep the connection open while the worker renders.
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c
    });
    let peak_mib = peak.stop() >> 10;
    eprintln!("the worker's peak: {peak_mib} MiB");
    drop(done_before);
    w.signal("KILL");
    let _ = w.wait(Duration::from_secs(10));
    assert!(
        peak_mib < 600,
        "the worker grew to {peak_mib} MiB while its master did not read:\n{}",
        w.describe()
    );
}

/// The attack (a keyholder posing as a daemon): answer a scan with a million empty GPU names,
/// 1 MiB on the wire and 24 MB as Rust strings (the 32 MiB a frame allows: about 800 MB, and
/// a manager scans up to 1024 registered addresses at once). A daemon's answer is a control
/// message: one announced longer than 64 KiB is refused before anything of it is kept.
#[test]
fn a_fake_daemons_huge_answer_is_refused_before_it_is_decoded() {
    let key = FarmKey::from_secret(KEY).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut listener =
            rayfarm_proto::SecureListener::new(l, Role::Daemon, key.clone(), Default::default())
                .unwrap();
        let fake = tokio::spawn(async move {
            let mut c = listener.accept().await;
            assert_eq!(c.recv().await.unwrap(), Msg::Discover);
            let answer = Msg::DaemonInfo(rayfarm_proto::DaemonInfo {
                alias: "fake".into(),
                version: "0".into(),
                protocol_version: rayfarm_proto::PROTOCOL_VERSION,
                devices: rayfarm_proto::Devices {
                    threads: 1,
                    gpus: vec![String::new(); 1 << 20],
                    ..Default::default()
                },
                state: DaemonState::Idle,
            });
            let _ = c.send(&answer).await;
        });
        let e = rayfarm_master::query_daemon(&addr, &key, Duration::from_secs(5))
            .await
            .expect_err("the answer is refused");
        assert!(
            e.to_string()
                .contains(&rayfarm_proto::MAX_CONTROL_MESSAGE_BYTES.to_string()),
            "the error names the limit: {e}"
        );
        fake.await.unwrap();
    });
}
