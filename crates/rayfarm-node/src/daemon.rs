//! The daemon: one per render node; answers discovery and, for one master at a time, runs a
//! worker process and watches it.
//!
//! What it owns: the listening socket on the daemon port, the node's lease state (idle, or
//! occupied by one master: [`Shared::slot`], behind a tokio mutex), the result of the start-up
//! probe (version and devices, or why the node is unhealthy), and at most one worker child.
//!
//! The lease: a master that authenticates and sends `Acquire` gets a worker started for it
//! (`rayfarm worker --master ADDR --heartbeat-stdout`) and holds the node for as long as that
//! connection lives and keeps sending messages (normally `Heartbeat` every second). While the
//! worker runs, the daemon checks that the process is alive, that it prints `heartbeat` on its
//! stdout at least every [`WORKER_HEARTBEAT_TIMEOUT`], and (with a memory limit) that its
//! resident memory stays under the limit. See PROTOCOL.md, "Daemon port".
//!
//! Long-lived tasks and how each one ends:
//! - The accept loop ([`Daemon::serve`]) runs until its `shutdown` future completes (the CLI
//!   passes SIGTERM / Ctrl-C). It then closes the listener, tells every connection task to stop
//!   through a watch channel and waits up to [`SHUTDOWN_WAIT`] for them; tasks still running
//!   after that are aborted (their worker child is killed on drop).
//! - One task per connection. A discovery connection ends after its answer. A lease connection
//!   ends when the master releases, the connection closes, the lease expires, the worker ends
//!   (after waiting up to one lease timeout for the master's `Release`), or on shutdown; in
//!   every case the worker has been stopped first and the node set back to idle.
//! - The worker child is stopped by its lease task: SIGTERM, then SIGKILL after
//!   [`WORKER_STOP_GRACE`]. As a backstop it is killed when its handle is dropped, and on Linux
//!   it receives SIGTERM if the daemon itself dies (parent-death signal).

use rayfarm_proto::{
    Conn, DaemonInfo, DaemonState, Devices, ErrorCode, FarmKey, ListenLimits, Msg, ProtoError,
    Role, SecureListener, PROTOCOL_VERSION,
};
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Lease timeout used when `Acquire` asks for 0 ms.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_millis(5000);
/// Shortest lease timeout granted (shorter requests are raised to this).
pub const MIN_LEASE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest lease timeout granted (longer requests are lowered to this).
pub const MAX_LEASE_TIMEOUT: Duration = Duration::from_millis(60_000);
/// A worker that prints no `heartbeat` line for this long is killed.
pub const WORKER_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a worker gets to exit after SIGTERM before it is killed.
pub const WORKER_STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the worker's resident memory is read.
pub const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Time an authenticated peer has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the start-up probe (`rayfarm worker --probe`) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Authenticated connections served at once (strangers' connections are bounded separately,
/// by the listener's pending limits, and can never take these).
pub const MAX_CONNECTIONS: usize = 64;
/// Longest `master_addr` accepted in `Acquire`.
pub const MAX_MASTER_ADDR_LEN: usize = 300;
/// The least time between two worker starts: a keyholding master whose `Acquire`s name a port
/// that is not a master made a daemon start (and reap) about 20 workers a second.
pub const MIN_WORKER_START_INTERVAL: Duration = Duration::from_secs(1);
/// Time connection tasks get to stop their worker when the daemon shuts down.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How the daemon runs; the CLI fills it from flags and the config file.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Name shown to masters.
    pub alias: String,
    /// Threads the worker renders with (`None`: all).
    pub threads: Option<u32>,
    /// Largest resident memory of the worker, in MB (`None`: no limit).
    pub max_memory_mb: Option<u64>,
    /// Largest scene the worker accepts, in MiB (`None`: the worker's default, a quarter of
    /// the machine's memory).
    pub max_scene_mb: Option<u64>,
    /// The farm secret as text: the daemon's key, and passed to the worker as `RAYFARM_KEY`.
    pub key_secret: String,
    /// The `rayfarm` executable to run as `rayfarm worker` (normally the daemon's own).
    pub worker_exe: PathBuf,
    /// See [`WORKER_HEARTBEAT_TIMEOUT`] (configurable for tests).
    pub worker_heartbeat_timeout: Duration,
    /// The network folders the worker may write job parts into (`rayfarm worker --netdir`);
    /// empty: the worker's own default (the config file's `netdirs`).
    pub netdirs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the farm key is unusable: {0}")]
    Key(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What `rayfarm worker --probe` prints, as one JSON line.
#[derive(Deserialize)]
struct ProbeReport {
    version: String,
    protocol_version: u32,
    devices: Devices,
}

/// Whether a master holds the node. `lease` tells leases apart, so a lease that ended early
/// (its worker died) cannot free the node a later master has taken since.
#[derive(Clone, Debug)]
enum Slot {
    Idle,
    Occupied {
        master: String,
        since_unix_ms: u64,
        lease: u64,
    },
}

/// What a daemon counts for `rayfarm daemon --metrics` (Prometheus text from [`render`]).
///
/// [`render`]: DaemonMetrics::render
#[derive(Debug, Default)]
pub struct DaemonMetrics {
    /// 0 idle, 1 occupied, 2 unhealthy.
    state: std::sync::atomic::AtomicU8,
    leases: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    workers_started: std::sync::atomic::AtomicU64,
    workers_failed: std::sync::atomic::AtomicU64,
    threads: std::sync::atomic::AtomicU64,
}

impl DaemonMetrics {
    fn add(c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_state(&self, state: u8) {
        self.state
            .store(state, std::sync::atomic::Ordering::Relaxed);
    }

    /// The Prometheus text format (0.0.4) of these counters and gauges.
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.state.load(Relaxed);
        let mut out = String::new();
        out.push_str("# HELP rayfarm_daemon_state 1 for the daemon's state, 0 for the others.\n");
        out.push_str("# TYPE rayfarm_daemon_state gauge\n");
        for (i, name) in ["idle", "occupied", "unhealthy"].iter().enumerate() {
            out.push_str(&format!(
                "rayfarm_daemon_state{{state=\"{name}\"}} {}\n",
                u8::from(state == i as u8)
            ));
        }
        for (name, kind, help, v) in [
            ("rayfarm_daemon_threads", "gauge", "Threads the worker renders with.", &self.threads),
            ("rayfarm_daemon_leases_total", "counter", "Leases granted to masters and managers.", &self.leases),
            ("rayfarm_daemon_leases_refused_total", "counter", "Acquire requests refused (occupied, unhealthy, bad address).", &self.refused),
            ("rayfarm_daemon_workers_started_total", "counter", "Workers started.", &self.workers_started),
            ("rayfarm_daemon_workers_failed_total", "counter", "Workers that exited, were killed for silence or memory, or could not start, while their lease held.", &self.workers_failed),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                v.load(Relaxed)
            ));
        }
        out
    }
}

/// State shared by the accept loop and every connection task.
struct Shared {
    opts: DaemonOptions,
    key: FarmKey,
    /// The probe's devices, or why this node cannot render.
    health: Result<Devices, String>,
    slot: Mutex<Slot>,
    next_lease: std::sync::atomic::AtomicU64,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<DaemonMetrics>,
    /// When the last worker was started ([`MIN_WORKER_START_INTERVAL`]).
    last_start: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A bound, probed daemon, ready to [`serve`](Daemon::serve).
pub struct Daemon {
    listener: TcpListener,
    local: SocketAddr,
    opts: DaemonOptions,
    key: FarmKey,
    health: Result<Devices, String>,
    metrics: Arc<DaemonMetrics>,
}

impl Daemon {
    /// Binds the port and probes the worker. A failed probe is not an error: the daemon then
    /// serves discovery as unhealthy and refuses `Acquire`.
    pub async fn bind(opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let key =
            FarmKey::from_secret(&opts.key_secret).map_err(|e| DaemonError::Key(e.to_string()))?;
        let listener =
            TcpListener::bind(opts.listen)
                .await
                .map_err(|source| DaemonError::Bind {
                    addr: opts.listen,
                    source,
                })?;
        let local = listener.local_addr().unwrap_or(opts.listen);
        let health = probe_worker(&opts.worker_exe, opts.threads).await;
        log_identity(&opts.alias, local, &health);
        let metrics = Arc::new(DaemonMetrics::default());
        match &health {
            Ok(d) => metrics
                .threads
                .store(u64::from(d.threads), std::sync::atomic::Ordering::Relaxed),
            Err(_) => metrics.set_state(2),
        }
        Ok(Daemon {
            listener,
            local,
            opts,
            key,
            health,
            metrics,
        })
    }

    /// The daemon's counters, live while it serves.
    pub fn metrics(&self) -> Arc<DaemonMetrics> {
        self.metrics.clone()
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `shutdown` completes, then stops the worker (if any) and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            opts: self.opts,
            key: self.key,
            health: self.health,
            slot: Mutex::new(Slot::Idle),
            next_lease: std::sync::atomic::AtomicU64::new(1),
            shutdown: stop_rx,
            metrics: self.metrics,
            last_start: std::sync::Mutex::new(None),
        });
        let local = self.local;
        let mut listener = match SecureListener::new(
            self.listener,
            Role::Daemon,
            shared.key.clone(),
            ListenLimits {
                max_sessions: MAX_CONNECTIONS,
                ..ListenLimits::default()
            },
        ) {
            Ok(l) => l,
            Err(e) => {
                warn!("node {}: cannot serve {local}: {e}", shared.opts.alias);
                return;
            }
        };
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        warn!("a connection task failed: {e}");
                    }
                }
                conn = listener.accept() => {
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        if let Err(e) = serve_authenticated(&shared, conn).await {
                            warn!("closing connection: {e}");
                        }
                    });
                }
            }
        }
        info!("node {}: shutting down", shared.opts.alias);
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_WAIT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                "connections did not end within {} s of shutdown; aborting them",
                SHUTDOWN_WAIT.as_secs()
            );
            tasks.shutdown().await;
        }
    }
}

/// Binds, probes and serves until `shutdown` completes.
pub async fn run(
    opts: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    Daemon::bind(opts).await?.serve(shutdown).await;
    Ok(())
}

fn log_identity(alias: &str, local: SocketAddr, health: &Result<Devices, String>) {
    info!(
        "node {alias}: rayfarm {} (protocol {PROTOCOL_VERSION}), listening on {local}",
        env!("CARGO_PKG_VERSION")
    );
    match health {
        Ok(d) => {
            info!(
                "node {alias}: CPU: {}, {} threads offered of {}",
                d.cpu_model, d.threads, d.cpu_threads
            );
            if d.gpus.is_empty() {
                info!("node {alias}: GPUs: none");
            }
            for g in &d.gpus {
                info!("node {alias}: GPU: {g} (listed only; rendering is on the CPU)");
            }
        }
        Err(reason) => warn!("node {alias} is unhealthy and will refuse work: {reason}"),
    }
}

/// The node's name when none is configured: the host name, else `node`.
pub fn default_alias() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control))
        .unwrap_or_else(|| "node".to_string())
}

/// Why an alias given by the user is refused ([`check_alias`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AliasError {
    #[error("the alias is empty")]
    Empty,
    #[error("the alias {0:?} is longer than 64 characters")]
    TooLong(String),
    #[error("the alias {0:?} contains control characters")]
    Control(String),
}

/// Checks an alias given by the user.
pub fn check_alias(alias: &str) -> Result<(), AliasError> {
    if alias.trim().is_empty() {
        return Err(AliasError::Empty);
    }
    if alias.chars().count() > 64 {
        return Err(AliasError::TooLong(alias.to_string()));
    }
    if alias.chars().any(char::is_control) {
        return Err(AliasError::Control(alias.to_string()));
    }
    Ok(())
}

/// Whether this process runs as root (decides where `daemon install` writes by default).
pub fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Runs `EXE worker --probe [--threads N]` and reads its report.
pub async fn probe_worker(exe: &Path, threads: Option<u32>) -> Result<Devices, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("worker").arg("--probe");
    if let Some(t) = threads {
        cmd.arg(format!("--threads={t}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("`{} worker --probe`", exe.display());
    let out = match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "{what} did not finish within {} s",
                PROBE_TIMEOUT.as_secs()
            ))
        }
        Ok(Err(e)) => return Err(format!("cannot run {what}: {e}")),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "{what} failed ({}){}",
            describe_status(out.status),
            if last.is_empty() {
                String::new()
            } else {
                format!(": {}", clip(last.trim(), 300))
            }
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| format!("{what} printed nothing"))?;
    let report: ProbeReport = serde_json::from_str(line.trim()).map_err(|e| {
        format!(
            "{what} printed an unreadable report ({e}): {}",
            clip(line, 300)
        )
    })?;
    if report.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "the worker speaks protocol version {} but this daemon speaks version {PROTOCOL_VERSION}; reinstall rayfarm",
            report.protocol_version
        ));
    }
    if report.version != env!("CARGO_PKG_VERSION") {
        return Err(format!(
            "the worker is rayfarm {} but this daemon is rayfarm {}; reinstall rayfarm",
            clip(&report.version, 40),
            env!("CARGO_PKG_VERSION")
        ));
    }
    if report.devices.threads == 0 {
        return Err(format!("{what} reports 0 threads"));
    }
    Ok(report.devices)
}

/// Shortens untrusted text for a log line.
fn clip(s: &str, max_chars: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max_chars)
        .filter(|c| !c.is_control())
        .collect();
    if s.chars().count() > max_chars {
        out.push('…');
    }
    out
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The lease timeout granted for a requested one: 0 means the default, others are clamped.
pub fn lease_timeout(requested_ms: u64) -> Duration {
    if requested_ms == 0 {
        DEFAULT_LEASE_TIMEOUT
    } else {
        Duration::from_millis(requested_ms).clamp(MIN_LEASE_TIMEOUT, MAX_LEASE_TIMEOUT)
    }
}

/// Checks `Acquire`'s `master_addr`: `HOST:PORT`, no spaces or control characters.
fn check_master_addr(addr: &str) -> Result<(), String> {
    rayfarm_proto::addr::check_host_port(addr, MAX_MASTER_ADDR_LEN)
        .map_err(|e| format!("master_addr {e}"))
}

fn describe_status(st: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = st.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match st.code() {
        Some(0) => "exited with status 0".into(),
        Some(c) => format!("exited with status {c}"),
        None => "ended".into(),
    }
}

impl Shared {
    async fn info(&self) -> DaemonInfo {
        let state = match &self.health {
            Err(reason) => DaemonState::Unhealthy {
                reason: reason.clone(),
            },
            Ok(_) => match &*self.slot.lock().await {
                Slot::Idle => DaemonState::Idle,
                Slot::Occupied {
                    master,
                    since_unix_ms,
                    ..
                } => DaemonState::Occupied {
                    master: master.clone(),
                    since_unix_ms: *since_unix_ms,
                },
            },
        };
        DaemonInfo {
            alias: self.opts.alias.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            devices: self.health.clone().unwrap_or_default(),
            state,
        }
    }

    /// Takes the node for `master`, or says why not.
    async fn claim(&self, master: &str) -> Result<u64, String> {
        if let Err(reason) = &self.health {
            return Err(format!("node {} is unhealthy: {reason}", self.opts.alias));
        }
        let mut slot = self.slot.lock().await;
        if let Slot::Occupied {
            master: holder,
            since_unix_ms,
            ..
        } = &*slot
        {
            let secs = now_unix_ms().saturating_sub(*since_unix_ms) / 1000;
            return Err(format!(
                "occupied by {holder} since {secs} s ago (unix time {since_unix_ms} ms)"
            ));
        }
        let lease = self
            .next_lease
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot = Slot::Occupied {
            master: master.to_string(),
            since_unix_ms: now_unix_ms(),
            lease,
        };
        DaemonMetrics::add(&self.metrics.leases);
        self.metrics.set_state(1);
        Ok(lease)
    }

    /// Frees the node if `lease` still holds it; returns whether it did.
    async fn free(&self, lease: u64) -> bool {
        let mut slot = self.slot.lock().await;
        match &*slot {
            Slot::Occupied { lease: l, .. } if *l == lease => {
                *slot = Slot::Idle;
                self.metrics.set_state(0);
                info!("node {} is idle again", self.opts.alias);
                true
            }
            _ => false,
        }
    }
}

async fn serve_authenticated(shared: &Shared, mut conn: Conn) -> Result<(), ProtoError> {
    let peer = conn.peer;
    let request = conn
        .recv_timeout(REQUEST_TIMEOUT, "waiting for a request")
        .await?;
    let (master, lease_ms) = match request {
        Msg::Acquire {
            master_addr,
            lease_timeout_ms,
        } => (master_addr, lease_timeout_ms),
        Msg::Discover => return conn.send(&Msg::DaemonInfo(shared.info().await)).await,
        other => {
            let what = format!("expected Acquire, got {}", other.name());
            let _ = conn
                .send(&Msg::Error {
                    code: ErrorCode::BadRequest,
                    message: what.clone(),
                })
                .await;
            return Err(ProtoError::Protocol {
                peer: peer.to_string(),
                what,
            });
        }
    };
    if let Err(reason) = check_master_addr(&master) {
        warn!("{peer}: refusing Acquire: {reason}");
        DaemonMetrics::add(&shared.metrics.refused);
        return conn.send(&Msg::Refused { reason }).await;
    }
    let lease = match shared.claim(&master).await {
        Ok(l) => l,
        Err(reason) => {
            DaemonMetrics::add(&shared.metrics.refused);
            info!("refused {master} (connection from {peer}): {reason}");
            return conn.send(&Msg::Refused { reason }).await;
        }
    };
    let result = hold_lease(shared, &mut conn, &master, lease, lease_timeout(lease_ms)).await;
    shared.free(lease).await;
    result
}

/// Starts the worker for `master`.
fn spawn_worker(opts: &DaemonOptions, master: &str) -> std::io::Result<Child> {
    let mut cmd = Command::new(&opts.worker_exe);
    // `--flag=value` so that no value can be taken for a flag.
    cmd.arg("worker").arg(format!("--master={master}"));
    if let Some(t) = opts.threads {
        cmd.arg(format!("--threads={t}"));
    }
    if let Some(mb) = opts.max_scene_mb {
        cmd.arg(format!("--max-scene-mb={mb}"));
    }
    for d in &opts.netdirs {
        let mut flag = std::ffi::OsString::from("--netdir=");
        flag.push(d);
        cmd.arg(flag);
    }
    cmd.arg(format!("--alias={}", opts.alias))
        .arg("--heartbeat-stdout")
        .env("RAYFARM_KEY", &opts.key_secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // The worker gets SIGTERM when the daemon dies, so it never outlives it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Stops a worker: SIGTERM, then SIGKILL after [`WORKER_STOP_GRACE`]. Returns how it ended.
async fn stop_worker(child: &mut Child) -> String {
    if let Ok(Some(st)) = child.try_wait() {
        return describe_status(st);
    }
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall; `pid` is our unreaped child, so it cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(WORKER_STOP_GRACE, child.wait()).await {
        Ok(Ok(st)) => describe_status(st),
        Ok(Err(e)) => format!("cannot wait for it: {e}"),
        Err(_) => {
            kill_worker(child).await;
            format!(
                "did not exit within {} s of SIGTERM; killed",
                WORKER_STOP_GRACE.as_secs()
            )
        }
    }
}

/// SIGKILL and reap.
async fn kill_worker(child: &mut Child) {
    let _ = child.start_kill();
    if tokio::time::timeout(WORKER_STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        warn!(
            "worker {} did not die after SIGKILL",
            child.id().unwrap_or(0)
        );
    }
}

/// The worker's resident memory in MB, from `/proc/PID/status`.
async fn resident_mb(pid: u32) -> Option<u64> {
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024)
}

/// The next line of the worker's stdout; never completes once stdout has closed.
async fn next_line(lines: &mut Option<Lines<BufReader<ChildStdout>>>) -> Option<String> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Why the lease loop ended while the worker was running (or just after it ended).
enum End {
    Released,
    Closed(String),
    LeaseExpired,
    Shutdown,
    WorkerEnded(String),
}

/// Runs the worker for `master` and holds the lease on `conn` until it ends.
async fn hold_lease(
    shared: &Shared,
    conn: &mut Conn,
    master: &str,
    lease: u64,
    lease_timeout: Duration,
) -> Result<(), ProtoError> {
    let opts = &shared.opts;
    let peer = conn.peer;
    // At most one start per interval (the slot is held, so no other start races this one).
    let wait = {
        let mut last = shared.last_start.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let wait = last.map_or(Duration::ZERO, |t| {
            MIN_WORKER_START_INTERVAL.saturating_sub(now.saturating_duration_since(t))
        });
        *last = Some(now + wait);
        wait
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let mut child = match spawn_worker(opts, master) {
        Ok(c) => c,
        Err(e) => {
            let reason = format!(
                "cannot start the worker ({}): {e}",
                opts.worker_exe.display()
            );
            warn!("{reason}");
            DaemonMetrics::add(&shared.metrics.workers_failed);
            shared.free(lease).await;
            return conn.send(&Msg::Refused { reason }).await;
        }
    };
    DaemonMetrics::add(&shared.metrics.workers_started);
    let pid = child.id().unwrap_or(0);
    let mut lines = child.stdout.take().map(|s| BufReader::new(s).lines());
    if let Err(e) = conn.send(&Msg::Acquired { pid }).await {
        stop_worker(&mut child).await;
        return Err(e);
    }
    info!(
        "acquired by {master} (connection from {peer}); worker {pid} started, lease timeout {:.1} s",
        lease_timeout.as_secs_f64()
    );

    let hb_timeout = opts.worker_heartbeat_timeout;
    let mut lease_deadline = Instant::now() + lease_timeout;
    let mut heartbeat_deadline = Instant::now() + hb_timeout;
    let mut memory_tick = tokio::time::interval(MEMORY_CHECK_INTERVAL);
    memory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shutdown = shared.shutdown.clone();
    let end = loop {
        tokio::select! {
            msg = conn.recv() => match msg {
                Ok(Msg::Release) => break End::Released,
                Ok(Msg::Heartbeat) => lease_deadline = Instant::now() + lease_timeout,
                Ok(other) => {
                    // Any message shows the master is alive; nothing else is expected here.
                    debug!("{master}: ignoring {} during the lease", other.name());
                    lease_deadline = Instant::now() + lease_timeout;
                }
                Err(ProtoError::Closed { .. }) => break End::Closed("the connection closed".into()),
                Err(e) => break End::Closed(e.to_string()),
            },
            _ = tokio::time::sleep_until(lease_deadline) => break End::LeaseExpired,
            line = next_line(&mut lines) => match line {
                Some(l) if l.trim() == "heartbeat" => heartbeat_deadline = Instant::now() + hb_timeout,
                Some(l) => info!("worker {pid}: {}", clip(&l, 300)),
                None => lines = None,
            },
            _ = tokio::time::sleep_until(heartbeat_deadline) => {
                kill_worker(&mut child).await;
                break End::WorkerEnded(format!(
                    "worker stopped responding for {} s; killed",
                    hb_timeout.as_secs_f64()
                ));
            }
            status = child.wait() => break End::WorkerEnded(match status {
                Ok(st) => format!("worker {}", describe_status(st)),
                Err(e) => format!("cannot wait for the worker: {e}"),
            }),
            _ = memory_tick.tick(), if opts.max_memory_mb.is_some() => {
                let limit = opts.max_memory_mb.unwrap_or(u64::MAX);
                if let Some(used) = resident_mb(pid).await.filter(|&mb| mb > limit) {
                    kill_worker(&mut child).await;
                    break End::WorkerEnded(format!(
                        "worker used {used} MB, over the limit of {limit} MB; killed"
                    ));
                }
            }
            _ = shutdown.changed() => break End::Shutdown,
        }
    };
    // A worker that exits 0 finished its work (its master said goodbye before the release).
    if matches!(&end, End::WorkerEnded(why) if !why.ends_with("exited with status 0")) {
        DaemonMetrics::add(&shared.metrics.workers_failed);
    }

    match end {
        End::Released => {
            let how = stop_worker(&mut child).await;
            shared.free(lease).await;
            info!("released by {master}; worker {pid} stopped ({how})");
            conn.send(&Msg::Released).await
        }
        End::Closed(why) => {
            info!("lease of {master} ended: {why}; stopping the worker");
            let how = stop_worker(&mut child).await;
            info!("worker {pid} stopped ({how})");
            Ok(())
        }
        End::LeaseExpired => {
            let reason = format!(
                "lease of {master} expired after {} s without a heartbeat; stopping the worker",
                lease_timeout.as_secs_f64()
            );
            warn!("{reason}");
            let how = stop_worker(&mut child).await;
            info!("worker {pid} stopped ({how})");
            let _ = conn.send(&Msg::Goodbye { reason }).await;
            Ok(())
        }
        End::Shutdown => {
            let how = stop_worker(&mut child).await;
            info!("worker {pid} of {master} stopped for shutdown ({how})");
            let reason = format!("daemon {} is shutting down", opts.alias);
            let _ = conn.send(&Msg::Goodbye { reason }).await;
            Ok(())
        }
        End::WorkerEnded(reason) => {
            warn!("worker {pid} of {master}: {reason}");
            shared.free(lease).await;
            conn.send(&Msg::WorkerExited { reason }).await?;
            await_release(shared, conn, master, lease_timeout).await
        }
    }
}

/// After the worker ended: waits up to one lease timeout for the master's `Release`.
async fn await_release(
    shared: &Shared,
    conn: &mut Conn,
    master: &str,
    lease_timeout: Duration,
) -> Result<(), ProtoError> {
    let mut shutdown = shared.shutdown.clone();
    let deadline = Instant::now() + lease_timeout;
    loop {
        tokio::select! {
            msg = conn.recv() => match msg {
                Ok(Msg::Release) => {
                    info!("released by {master}");
                    return conn.send(&Msg::Released).await;
                }
                Ok(_) => {}
                Err(ProtoError::Closed { .. }) => return Ok(()),
                Err(e) => return Err(e),
            },
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
