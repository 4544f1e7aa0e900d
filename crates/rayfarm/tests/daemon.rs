//! End-to-end tests of `rayfarm daemon`: the real binary, its real worker, and a test client
//! speaking the protocol. Loopback only: the daemons listen on 127.0.0.2 and 127.0.0.3, the
//! stand-in "masters" on 127.0.0.1.

use rayfarm_proto::{
    connect, Conn, DaemonInfo, DaemonState, FarmKey, Msg, ProtoError, Role, HANDSHAKE_TIMEOUT,
};
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "e2e-daemon-test-key";

/// A running `rayfarm daemon`; killed on drop so a failing test leaks no process (its worker
/// gets SIGTERM from the parent-death signal).
struct DaemonProc {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    addr: String,
    _config: tempfile::TempDir,
}

impl DaemonProc {
    fn start(ip: &str, extra: &[&str], alias: &str) -> DaemonProc {
        let config = tempfile::tempdir().unwrap();
        let config_path = config.path().join("config.toml");
        std::fs::write(&config_path, "version = 1\n").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rayfarm"))
            .args([
                "daemon", "--bind", ip, "--port", "48000", "--alias", alias, "--config",
            ])
            .arg(&config_path)
            .args(extra)
            .env("RAYFARM_KEY", KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rayfarm starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        DaemonProc {
            child: Some(child),
            stderr,
            addr: format!("{ip}:48000"),
            _config: config,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the daemon answers discovery.
    async fn wait_ready(&mut self) -> DaemonInfo {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(info) = try_discover(&self.addr).await {
                return info;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited ({st}) before answering:\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "the daemon never answered:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("the daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100)); // let the log reader finish
        (status, self.log())
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn try_discover(addr: &str) -> Result<DaemonInfo, ProtoError> {
    let mut c = connect(
        addr,
        Role::Cli,
        &rayfarm_proto::FarmKey::from_secret(KEY).unwrap(),
        Duration::from_secs(2),
    )
    .await?;
    c.send(&Msg::Discover).await?;
    match c
        .recv_timeout(Duration::from_secs(5), "waiting for DaemonInfo")
        .await?
    {
        Msg::DaemonInfo(i) => Ok(i),
        other => panic!("expected DaemonInfo, got {other:?}"),
    }
}

async fn wait_state(
    d: &DaemonProc,
    within: Duration,
    pred: impl Fn(&DaemonState) -> bool,
) -> DaemonInfo {
    let until = Instant::now() + within;
    loop {
        let info = try_discover(&d.addr).await.unwrap();
        if pred(&info.state) {
            return info;
        }
        assert!(
            Instant::now() < until,
            "state is still {:?}:\n{}",
            info.state,
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn acquire(addr: &str, master: &str, lease_timeout_ms: u64) -> (Conn, Msg) {
    let key = FarmKey::from_secret(KEY).unwrap();
    let mut c = connect(addr, Role::Master, &key, HANDSHAKE_TIMEOUT)
        .await
        .unwrap();
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

/// The next message other than `Heartbeat` within `within`, heartbeating meanwhile; `None` on
/// timeout.
async fn recv_heartbeating(c: &mut Conn, within: Duration) -> Option<Msg> {
    let until = tokio::time::Instant::now() + within;
    let mut beat = tokio::time::interval(Duration::from_millis(400));
    loop {
        tokio::select! {
            m = c.recv() => match m.unwrap() {
                Msg::Heartbeat => {}
                m => return Some(m),
            },
            _ = beat.tick() => c.send(&Msg::Heartbeat).await.unwrap(),
            _ = tokio::time::sleep_until(until) => return None,
        }
    }
}

/// A stand-in master that accepts connections and never answers (a worker's handshake then
/// times out after 5 s, so the worker stays up until then).
async fn silent_master() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A 127.0.0.1 port nobody listens on.
async fn unused_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

fn pid_of(m: &Msg) -> u32 {
    match m {
        Msg::Acquired { pid } => *pid,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn process_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_discovery_garbage_auth_and_leases() {
    let mut d = DaemonProc::start("127.0.0.2", &[], "d2");
    let info = d.wait_ready().await;
    assert_eq!(info.alias, "d2");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.protocol_version, rayfarm_proto::PROTOCOL_VERSION);
    assert_eq!(info.state, DaemonState::Idle, "{}", d.log());
    assert!(info.devices.threads >= 1 && info.devices.cpu_threads >= info.devices.threads);

    // Garbage, a huge handshake length and a handshake message that does not decrypt: each
    // connection is closed, the daemon keeps serving.
    let mut preamble = [0u8; 16];
    preamble[..8].copy_from_slice(&rayfarm_proto::PREAMBLE_MAGIC);
    preamble[8..12].copy_from_slice(&rayfarm_proto::PROTOCOL_VERSION.to_le_bytes());
    preamble[12] = Role::Master as u8;
    let huge = [preamble.as_slice(), &u16::MAX.to_le_bytes()].concat();
    let undecodable = [preamble.as_slice(), &48u16.to_le_bytes(), &[0xee; 48]].concat();
    for input in [
        b"\x16\x03\x01garbage garbage garbage".as_slice(),
        &huge,
        &undecodable,
    ] {
        let mut s = TcpStream::connect(&d.addr).await.unwrap();
        s.write_all(input).await.unwrap();
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(7), s.read_to_end(&mut sink))
            .await
            .expect("the daemon closes a bad connection")
            .ok();
    }
    assert_eq!(
        try_discover(&d.addr).await.unwrap().state,
        DaemonState::Idle
    );
    // The daemon logs as it closes each connection; on a loaded machine the last line may
    // come a moment after our reads ended.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = d.log();
    let seen = |log: &str| {
        log.contains("not a rayfarm peer")
            && log.contains("bad handshake")
            && log.contains("wrong farm key")
    };
    while !seen(&log) && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = d.log();
    }
    assert!(seen(&log), "{log}");

    // A wrong key is refused.
    let wrong = FarmKey::from_secret("not-the-farm-key-at-all").unwrap();
    match connect(&d.addr, Role::Master, &wrong, HANDSHAKE_TIMEOUT).await {
        Err(ProtoError::AuthFailed { reason, .. }) => {
            assert!(reason.contains("wrong farm key"), "{reason}")
        }
        Err(e) => panic!("expected an authentication error, got {e}"),
        Ok(_) => panic!("a wrong key was accepted"),
    }

    // Acquire: a worker starts; a second master is refused; dropping the lease frees the node.
    let master = silent_master().await;
    let (a, m) = acquire(&d.addr, &master, 1500).await;
    let pid = pid_of(&m);
    let (_b, m) = acquire(&d.addr, "127.0.0.1:21999", 1500).await;
    match m {
        Msg::Refused { reason } => assert!(
            reason.contains(&format!("occupied by {master}")),
            "{reason}"
        ),
        other => panic!("expected Refused, got {other:?}"),
    }
    let info = try_discover(&d.addr).await.unwrap();
    assert!(
        matches!(&info.state, DaemonState::Occupied { master: m, .. } if *m == master),
        "{:?}",
        info.state
    );
    drop(a);
    wait_state(&d, Duration::from_secs(3), |s| *s == DaemonState::Idle).await;
    assert!(process_gone(pid), "worker {pid} was stopped");

    // A lease without heartbeats expires.
    let (mut a, m) = acquire(&d.addr, &master, 1500).await;
    let pid = pid_of(&m);
    match a
        .recv_timeout(Duration::from_secs(5), "the lease to expire")
        .await
    {
        Ok(Msg::Goodbye { reason }) => assert!(
            reason.contains("expired after 1.5 s without a heartbeat"),
            "{reason}"
        ),
        other => panic!("expected Goodbye, got {other:?}"),
    }
    wait_state(&d, Duration::from_secs(3), |s| *s == DaemonState::Idle).await;
    assert!(process_gone(pid));

    // A worker whose master does not exist ends; the daemon says so and frees the node. (A
    // worker that retried instead would be released below all the same.)
    let (mut a, m) = acquire(&d.addr, &unused_port().await, 1500).await;
    pid_of(&m);
    match recv_heartbeating(&mut a, Duration::from_secs(8)).await {
        Some(Msg::WorkerExited { reason }) => {
            assert!(reason.starts_with("worker "), "{reason}");
            assert_eq!(
                try_discover(&d.addr).await.unwrap().state,
                DaemonState::Idle
            );
        }
        None => {}
        Some(other) => panic!("expected WorkerExited, got {other:?}"),
    }
    a.send(&Msg::Release).await.unwrap();
    assert_eq!(
        recv_heartbeating(&mut a, Duration::from_secs(5)).await,
        Some(Msg::Released)
    );
    wait_state(&d, Duration::from_secs(1), |s| *s == DaemonState::Idle).await;

    let (status, log) = d.stop();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    for line in [
        "node d2: rayfarm",
        &format!("acquired by {master}"),
        &format!("lease of {master} expired after 1.5 s without a heartbeat; stopping the worker"),
        "released by",
        "shutting down",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kills_a_worker_over_its_memory_limit() {
    let mut d = DaemonProc::start("127.0.0.3", &["--max-memory", "1"], "d3");
    assert_eq!(d.wait_ready().await.state, DaemonState::Idle, "{}", d.log());
    let master = silent_master().await;
    let (mut a, m) = acquire(&d.addr, &master, 5000).await;
    let pid = pid_of(&m);
    match recv_heartbeating(&mut a, Duration::from_secs(4)).await {
        Some(Msg::WorkerExited { reason }) => {
            assert!(
                reason.ends_with(" MB, over the limit of 1 MB; killed"),
                "{reason}"
            )
        }
        other => panic!("expected WorkerExited, got {other:?}:\n{}", d.log()),
    }
    assert!(process_gone(pid));
    assert_eq!(
        try_discover(&d.addr).await.unwrap().state,
        DaemonState::Idle
    );
    let (status, log) = d.stop();
    assert!(
        status.success() && !log.contains("panicked"),
        "exit {status}:\n{log}"
    );
}
