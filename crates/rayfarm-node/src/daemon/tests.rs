//! Daemon tests against fake workers: small shell scripts that answer `worker --probe` and
//! then heartbeat, stay silent, exit or grow, so every health rule is exercised without a
//! master. Everything listens on 127.0.0.1.

use super::*;
use rayfarm_proto::{connect, HANDSHAKE_TIMEOUT};
use std::os::unix::fs::PermissionsExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const SECRET: &str = "daemon-test-secret";

const PROBE_OK: &str = r#"echo '{"version":"VERSION","protocol_version":PROTO,"devices":{"cpu_model":"Fake CPU","threads":2,"cpu_threads":4,"gpus":["Fake GPU"]}}'; exit 0"#;
const BEAT: &str = "while :; do echo heartbeat; sleep 0.2; done";

/// A fake `rayfarm` executable in its own folder; the worker run records its arguments and
/// `RAYFARM_KEY` there.
struct Fake {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

fn fake_worker(probe: &str, body: &str) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("rayfarm");
    let probe = probe
        .replace("VERSION", env!("CARGO_PKG_VERSION"))
        .replace("PROTO", &PROTOCOL_VERSION.to_string());
    let script = format!(
        "#!/bin/sh\nout=\"$(dirname \"$0\")\"\nif [ \"$2\" = \"--probe\" ]; then\n{probe}\nfi\n\
         printf '%s\\n' \"$@\" > \"$out/args\"\nprintf '%s' \"$RAYFARM_KEY\" > \"$out/key\"\n{body}\n"
    );
    std::fs::write(&exe, script).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A child forked by another test thread while the file was open for writing keeps it
    // "busy" until that child execs; wait until it runs once, after which it cannot recur.
    for _ in 0..500 {
        match std::process::Command::new(&exe)
            .args(["worker", "--probe"])
            .output()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => break,
        }
    }
    Fake { dir, exe }
}

struct Running {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    fake: Fake,
}

async fn start(
    probe: &str,
    body: &str,
    alias: &str,
    tweak: impl FnOnce(&mut DaemonOptions),
) -> Running {
    let fake = fake_worker(probe, body);
    let mut opts = DaemonOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        alias: alias.into(),
        threads: Some(2),
        max_memory_mb: None,
        max_scene_mb: None,
        key_secret: SECRET.into(),
        worker_exe: fake.exe.clone(),
        worker_heartbeat_timeout: WORKER_HEARTBEAT_TIMEOUT,
        netdirs: Vec::new(),
    };
    tweak(&mut opts);
    let daemon = Daemon::bind(opts).await.unwrap();
    let addr = daemon.local_addr().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.serve(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
        fake,
    }
}

impl Running {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the daemon shuts down")
            .unwrap();
    }

    /// Waits for the worker run to record its arguments.
    async fn worker_args(&self) -> Vec<String> {
        let path = self.fake.dir.path().join("args");
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(&path) {
                if !s.is_empty() {
                    return s.lines().map(str::to_string).collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the worker never started");
    }
}

async fn discover(addr: &str) -> DaemonInfo {
    let mut c = connect(
        addr,
        Role::Cli,
        &rayfarm_proto::FarmKey::from_secret(SECRET).unwrap(),
        HANDSHAKE_TIMEOUT,
    )
    .await
    .unwrap();
    c.send(&Msg::Discover).await.unwrap();
    match c
        .recv_timeout(Duration::from_secs(5), "discovery")
        .await
        .unwrap()
    {
        Msg::DaemonInfo(i) => i,
        other => panic!("expected DaemonInfo, got {other:?}"),
    }
}

/// Polls discovery until `pred` holds.
async fn wait_state(
    addr: &str,
    within: Duration,
    pred: impl Fn(&DaemonState) -> bool,
) -> DaemonInfo {
    let until = Instant::now() + within;
    loop {
        let info = discover(addr).await;
        if pred(&info.state) {
            return info;
        }
        assert!(Instant::now() < until, "state is still {:?}", info.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn authed(addr: &str) -> Conn {
    let key = FarmKey::from_secret(SECRET).unwrap();
    connect(addr, Role::Master, &key, HANDSHAKE_TIMEOUT)
        .await
        .unwrap()
}

async fn acquire(addr: &str, master: &str, lease_timeout_ms: u64) -> (Conn, Msg) {
    let mut c = authed(addr).await;
    c.send(&Msg::Acquire {
        master_addr: master.into(),
        lease_timeout_ms,
    })
    .await
    .unwrap();
    let m = c
        .recv_timeout(Duration::from_secs(5), "the answer to Acquire")
        .await
        .unwrap();
    (c, m)
}

/// Receives the next message other than `Heartbeat`, heartbeating every 300 ms meanwhile.
async fn recv_heartbeating(c: &mut Conn, within: Duration) -> Result<Msg, ProtoError> {
    let until = Instant::now() + within;
    let mut beat = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            m = c.recv() => match m? {
                Msg::Heartbeat => {}
                m => return Ok(m),
            },
            _ = beat.tick() => c.send(&Msg::Heartbeat).await?,
            _ = tokio::time::sleep_until(until) => panic!("nothing from the daemon within {within:?}"),
        }
    }
}

fn pid_of(m: &Msg) -> u32 {
    match m {
        Msg::Acquired { pid } => *pid,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn discovery_acquire_refuse_release() {
    let d = start(PROBE_OK, BEAT, "t-beat", |_| {}).await;
    let info = discover(&d.addr).await;
    assert_eq!(info.alias, "t-beat");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert_eq!(info.state, DaemonState::Idle);
    assert_eq!(info.devices.cpu_model, "Fake CPU");
    assert_eq!((info.devices.threads, info.devices.cpu_threads), (2, 4));
    assert_eq!(info.devices.gpus, vec!["Fake GPU".to_string()]);

    let (mut a, m) = acquire(&d.addr, "127.0.0.1:21001", 5000).await;
    let pid = pid_of(&m);
    assert!(pid > 0);
    let args = d.worker_args().await;
    for want in [
        "worker",
        "--master=127.0.0.1:21001",
        "--threads=2",
        "--alias=t-beat",
        "--heartbeat-stdout",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "{want} missing from {args:?}"
        );
    }
    let key = std::fs::read_to_string(d.fake.dir.path().join("key")).unwrap();
    assert_eq!(
        key, SECRET,
        "the worker gets the farm secret in RAYFARM_KEY"
    );

    let (_b, m) = acquire(&d.addr, "127.0.0.1:21002", 5000).await;
    match m {
        Msg::Refused { reason } => {
            assert!(reason.contains("occupied by 127.0.0.1:21001"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let info = discover(&d.addr).await;
    assert!(
        matches!(&info.state, DaemonState::Occupied { master, since_unix_ms } if master == "127.0.0.1:21001" && *since_unix_ms > 0),
        "{:?}",
        info.state
    );

    a.send(&Msg::Heartbeat).await.unwrap();
    a.send(&Msg::Release).await.unwrap();
    assert_eq!(
        recv_heartbeating(&mut a, Duration::from_secs(5))
            .await
            .unwrap(),
        Msg::Released
    );
    assert!(
        process_gone(pid),
        "the worker was stopped and reaped before Released"
    );
    assert_eq!(discover(&d.addr).await.state, DaemonState::Idle);
    d.shutdown().await;
}

#[tokio::test]
async fn lease_expires_without_heartbeats() {
    let d = start(PROBE_OK, BEAT, "t-lease", |_| {}).await;
    let (mut a, m) = acquire(&d.addr, "127.0.0.1:21001", 10).await; // raised to 1000 ms
    let pid = pid_of(&m);
    let started = Instant::now();
    match a
        .recv_timeout(Duration::from_secs(5), "the lease to expire")
        .await
        .unwrap()
    {
        Msg::Goodbye { reason } => assert!(
            reason.contains("expired after 1 s without a heartbeat"),
            "{reason}"
        ),
        other => panic!("expected Goodbye, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    wait_state(&d.addr, Duration::from_secs(2), |s| *s == DaemonState::Idle).await;
    assert!(process_gone(pid));
    d.shutdown().await;
}

#[tokio::test]
async fn dropped_connection_frees_the_node() {
    let d = start(PROBE_OK, BEAT, "t-drop", |_| {}).await;
    let (a, m) = acquire(&d.addr, "127.0.0.1:21001", 30_000).await;
    let pid = pid_of(&m);
    d.worker_args().await;
    drop(a);
    wait_state(&d.addr, Duration::from_secs(3), |s| *s == DaemonState::Idle).await;
    assert!(process_gone(pid));
    // The node can be taken again.
    let (_a, m) = acquire(&d.addr, "127.0.0.1:21003", 5000).await;
    pid_of(&m);
    d.shutdown().await;
}

#[tokio::test]
async fn silent_worker_is_killed() {
    let d = start(PROBE_OK, "exec sleep 60", "t-silent", |o| {
        o.worker_heartbeat_timeout = Duration::from_secs(1);
    })
    .await;
    let (mut a, m) = acquire(&d.addr, "127.0.0.1:21001", 5000).await;
    let pid = pid_of(&m);
    match recv_heartbeating(&mut a, Duration::from_secs(5))
        .await
        .unwrap()
    {
        Msg::WorkerExited { reason } => {
            assert_eq!(reason, "worker stopped responding for 1 s; killed")
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert!(process_gone(pid));
    assert_eq!(discover(&d.addr).await.state, DaemonState::Idle);
    a.send(&Msg::Release).await.unwrap();
    assert_eq!(
        recv_heartbeating(&mut a, Duration::from_secs(5))
            .await
            .unwrap(),
        Msg::Released
    );
    d.shutdown().await;
}

#[tokio::test]
async fn exiting_worker_is_reported() {
    let d = start(
        PROBE_OK,
        "echo hello from the worker; exit 3",
        "t-exit",
        |_| {},
    )
    .await;
    let (mut a, m) = acquire(&d.addr, "127.0.0.1:21001", 5000).await;
    pid_of(&m);
    match recv_heartbeating(&mut a, Duration::from_secs(5))
        .await
        .unwrap()
    {
        Msg::WorkerExited { reason } => assert_eq!(reason, "worker exited with status 3"),
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    // Idle at once, even before the master releases.
    assert_eq!(discover(&d.addr).await.state, DaemonState::Idle);
    drop(a);
    d.shutdown().await;
}

/// The attack (a keyholding master): `Acquire` again and again with an address where no
/// master listens, so each worker exits at once. The daemon used to start about 20 workers a
/// second; now at most one per [`MIN_WORKER_START_INTERVAL`].
#[tokio::test]
async fn workers_start_at_most_once_per_interval() {
    let d = start(PROBE_OK, "exit 3", "t-churn", |_| {}).await;
    let t0 = Instant::now();
    for _ in 0..3 {
        let (mut a, m) = acquire(&d.addr, "127.0.0.1:21001", 5000).await;
        pid_of(&m);
        match recv_heartbeating(&mut a, Duration::from_secs(5))
            .await
            .unwrap()
        {
            Msg::WorkerExited { .. } => {}
            other => panic!("expected WorkerExited, got {other:?}"),
        }
    }
    assert!(
        t0.elapsed() >= MIN_WORKER_START_INTERVAL * 2,
        "three starts in {:?}",
        t0.elapsed()
    );
    d.shutdown().await;
}

#[tokio::test]
async fn memory_limit_kills_the_worker() {
    let body = format!("x=$(head -c 20000000 /dev/zero | tr '\\0' a)\n{BEAT}");
    let d = start(PROBE_OK, &body, "t-mem", |o| o.max_memory_mb = Some(2)).await;
    let (mut a, m) = acquire(&d.addr, "127.0.0.1:21001", 5000).await;
    let pid = pid_of(&m);
    match recv_heartbeating(&mut a, Duration::from_secs(10))
        .await
        .unwrap()
    {
        Msg::WorkerExited { reason } => {
            assert!(
                reason.starts_with("worker used ")
                    && reason.ends_with(" MB, over the limit of 2 MB; killed"),
                "{reason}"
            )
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert!(process_gone(pid));
    d.shutdown().await;
}

#[tokio::test]
async fn failed_probe_makes_the_node_unhealthy() {
    let d = start(
        "echo 'error: unrecognized subcommand worker' >&2; exit 2",
        BEAT,
        "t-sick",
        |_| {},
    )
    .await;
    let info = discover(&d.addr).await;
    match &info.state {
        DaemonState::Unhealthy { reason } => {
            assert!(
                reason.contains("exited with status 2")
                    && reason.contains("unrecognized subcommand"),
                "{reason}"
            )
        }
        other => panic!("expected Unhealthy, got {other:?}"),
    }
    assert_eq!(info.devices.threads, 0);
    let (_a, m) = acquire(&d.addr, "127.0.0.1:21001", 5000).await;
    match m {
        Msg::Refused { reason } => assert!(reason.contains("unhealthy"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    d.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_survived() {
    let d = start(PROBE_OK, BEAT, "t-bad", |_| {}).await;
    let mut preamble = [0u8; 16];
    preamble[..8].copy_from_slice(&rayfarm_proto::PREAMBLE_MAGIC);
    preamble[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    preamble[12] = Role::Master as u8;
    let huge_frame = [preamble.as_slice(), &u32::MAX.to_le_bytes()].concat();
    let garbage_frame = [preamble.as_slice(), &5u32.to_le_bytes(), &[0xff; 5]].concat();
    let inputs: [&[u8]; 4] = [
        b"GET / HTTP/1.0\r\n\r\n",
        &huge_frame,
        &garbage_frame,
        &preamble[..7],
    ];
    for input in inputs {
        let mut s = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
        s.write_all(input).await.unwrap();
        if input.len() < 16 {
            s.shutdown().await.unwrap();
        }
        // The daemon closes the connection (it sends its preamble first).
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(7), s.read_to_end(&mut sink))
            .await
            .expect("the daemon closes a bad connection")
            .ok();
    }
    let wrong = FarmKey::from_secret("not the farm key at all").unwrap();
    let e = connect(&d.addr, Role::Master, &wrong, HANDSHAKE_TIMEOUT)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ProtoError::AuthFailed { .. }), "{e}");

    // Authenticated but wrong requests.
    let mut c = authed(&d.addr).await;
    c.send(&Msg::Heartbeat).await.unwrap();
    match c.recv().await.unwrap() {
        Msg::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(
                message.contains("expected Acquire, got Heartbeat"),
                "{message}"
            );
        }
        other => panic!("expected Error, got {other:?}"),
    }
    for bad in [
        "",
        "nohost",
        "host:0",
        "host:99999",
        "-x:1",
        "a b:1",
        &"h".repeat(400),
    ] {
        let (_c, m) = acquire(&d.addr, bad, 5000).await;
        assert!(
            matches!(m, Msg::Refused { ref reason } if reason.contains("master_addr")),
            "{bad:?}: {m:?}"
        );
    }
    assert_eq!(discover(&d.addr).await.state, DaemonState::Idle);
    d.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_the_worker() {
    let d = start(PROBE_OK, BEAT, "t-stop", |_| {}).await;
    let (mut a, m) = acquire(&d.addr, "127.0.0.1:21001", 5000).await;
    let pid = pid_of(&m);
    d.worker_args().await;
    d.shutdown().await;
    assert!(process_gone(pid));
    match a.recv().await.unwrap() {
        Msg::Goodbye { reason } => assert_eq!(reason, "daemon t-stop is shutting down"),
        other => panic!("expected Goodbye, got {other:?}"),
    }
}

#[test]
fn lease_timeouts_are_clamped() {
    assert_eq!(lease_timeout(0), DEFAULT_LEASE_TIMEOUT);
    assert_eq!(lease_timeout(10), MIN_LEASE_TIMEOUT);
    assert_eq!(lease_timeout(1500), Duration::from_millis(1500));
    assert_eq!(lease_timeout(u64::MAX), MAX_LEASE_TIMEOUT);
}

#[test]
fn master_addresses() {
    for ok in ["127.0.0.1:21000", "render-master.lan:21000", "[::1]:21000"] {
        assert!(check_master_addr(ok).is_ok(), "{ok}");
    }
    assert!(check_master_addr("127.0.0.1")
        .unwrap_err()
        .contains("no port"));
}

#[test]
fn aliases() {
    assert!(check_alias("node-7").is_ok());
    assert!(check_alias(" ").is_err());
    assert!(check_alias("a\nb").is_err());
    assert!(check_alias(&"x".repeat(65)).is_err());
    assert!(check_alias(&default_alias()).is_ok());
}

#[test]
fn metrics_render_the_state_and_counters_in_prometheus_text() {
    let m = DaemonMetrics::default();
    DaemonMetrics::add(&m.leases);
    DaemonMetrics::add(&m.workers_started);
    m.set_state(1);
    let text = m.render();
    assert!(
        text.contains("rayfarm_daemon_state{state=\"occupied\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("rayfarm_daemon_state{state=\"idle\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("rayfarm_daemon_leases_total 1\n"), "{text}");
    assert!(
        text.contains("rayfarm_daemon_workers_failed_total 0\n"),
        "{text}"
    );
    // Every sample line is preceded by its TYPE line.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE"
        );
    }
}
