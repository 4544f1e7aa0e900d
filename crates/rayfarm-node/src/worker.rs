//! The worker: renders work units for one master.
//!
//! It connects to the master, authenticates, receives the compiled scene once (or finds it in
//! its on-disk cache by content hash), renders the units it is assigned on a rayon pool of
//! `threads`, and streams each unit's result back as soon as it is done.
//!
//! Shutdown: on Ctrl-C / SIGTERM it takes no new units, sends `GiveBack` with every unit it has
//! not returned, then `Goodbye`, and exits 0. When the master says `Goodbye` or the connection
//! closes it exits as well. Rendering threads are not interrupted: their results are dropped.

use crate::relay::{self, Fetched, Shelf};
use rayfarm_bake::Workload;
use rayfarm_proto::scene_chunks::ChunkList;
use rayfarm_proto::{connect, encode_sums, FarmKey, Msg, Role, WireUnit};
use rayfarm_render::RenderScene;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a worker waits for a master that refuses connections (not started yet).
pub const MASTER_WAIT: Duration = Duration::from_secs(30);

/// Largest scene a worker ever accepts (the blob format's own limit).
pub const MAX_SCENE_BYTES: u64 = rayfarm_scene::blob::MAX_DECOMPRESSED_BYTES;
/// Smallest default scene limit, for machines whose memory cannot be read.
const MIN_DEFAULT_SCENE_BYTES: u64 = 512 << 20;

/// The default scene limit: a quarter of this machine's memory (from /proc/meminfo), at least
/// 512 MiB and at most [`MAX_SCENE_BYTES`]. The decoded scene, its BVH and the render threads'
/// buffers all need memory too, so a scene much larger than this would not render anyway.
pub fn default_max_scene_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb.saturating_mul(1024));
    total
        .map(|t| t / 4)
        .unwrap_or(MIN_DEFAULT_SCENE_BYTES)
        .clamp(MIN_DEFAULT_SCENE_BYTES, MAX_SCENE_BYTES)
}

/// Checks a scene size announced by a master (compressed) or a blob header (decompressed)
/// against this node's limit, before anything is allocated for it.
pub fn check_scene_size(what: &str, bytes: u64, limit: u64) -> Result<(), String> {
    if bytes > limit {
        return Err(format!(
            "{what} is {} MiB, over this node's scene limit of {} MiB (raise it with --max-scene-mb)",
            bytes.div_ceil(1 << 20),
            limit >> 20
        ));
    }
    Ok(())
}

pub struct WorkerConfig {
    pub master: String,
    pub threads: usize,
    pub alias: String,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// Largest scene accepted, compressed or decompressed (see [`default_max_scene_bytes`]).
    pub max_scene_bytes: u64,
    /// Print `heartbeat` on stdout every second (for the supervising daemon).
    pub heartbeat_stdout: bool,
    pub key: FarmKey,
    /// Path prefixes to rewrite in job folders a manager names, `(as the manager sees it,
    /// as this node sees it)`, for nodes that mount the network folder elsewhere.
    pub path_map: Vec<(String, String)>,
    /// The network folders this node writes parts into (after `path_map`); empty: any job
    /// folder whose job.desc the farm key authenticates.
    pub netdirs: rayfarm_job::folder::Roots,
    /// Relay scenes to other workers the master sends here (see [`crate::relay`]).
    pub relay: bool,
}

/// Rewrites `path` with the first matching prefix of `map` (whole path components only).
pub fn map_path(map: &[(String, String)], path: &str) -> PathBuf {
    for (from, to) in map {
        let from = from.trim_end_matches('/');
        if let Some(rest) = path.strip_prefix(from) {
            if rest.is_empty() || rest.starts_with('/') {
                return PathBuf::from(format!("{}{rest}", to.trim_end_matches('/')));
            }
        }
    }
    PathBuf::from(path)
}

/// Renders every unit of a manager's task and writes its part file; returns the part's MAC.
/// The job.desc in `job_dir` is read and authenticated with the farm key first, and the part
/// the manager asked for must be in it as the manager described it: a worker writes only parts
/// of jobs a key holder created, whatever the manager or the network folder say.
/// What renders a task's units: the render threads, the loaded scene and its work.
struct Renderer<'a> {
    pool: &'a rayon::ThreadPool,
    scene: &'a RenderScene,
    work: &'a Workload,
}

fn run_task(
    key: &rayfarm_proto::FarmKey,
    r: Renderer<'_>,
    units: &[rayfarm_render::WorkUnit],
    job_dir: &Path,
    part: &rayfarm_proto::WirePart,
    canceled: &std::sync::atomic::AtomicBool,
) -> Result<[u8; 32], String> {
    use rayon::prelude::*;
    let Renderer { pool, scene, work } = r;
    let desc_path = job_dir.join(rayfarm_job::jobdesc::FILE_NAME);
    let (job, seal) =
        rayfarm_job::renderjob::AnyJobDesc::read(&desc_path, key).map_err(|e| e.to_string())?;
    let listed = (0..job.part_count())
        .filter_map(|i| job.part(i))
        .find(|(p, _)| p.name == part.name);
    match listed {
        Some((p, spp))
            if p.layer == part.layer as usize && p.region == part.region && spp == part.spp => {}
        _ => {
            return Err(format!(
                "{}: part '{}' (layer {}, region {:?}, {} spp) is not in the job.desc as the manager describes it",
                desc_path.display(),
                part.name,
                part.layer,
                part.region,
                part.spp
            ))
        }
    }
    let region = rayfarm_render::film::Region {
        x0: part.region[0],
        y0: part.region[1],
        x1: part.region[2],
        y1: part.region[3],
    };
    use std::sync::atomic::Ordering;
    let mut film = rayfarm_render::Film::new_region(region);
    // Batches of a few units per thread: memory stays bounded however many units the part has
    // (results are added as each batch ends; integer sums make the order irrelevant), and a
    // canceled task stops at the next batch and writes nothing.
    let batch = pool.current_num_threads().max(1) * 4;
    for units in units.chunks(batch) {
        if canceled.load(Ordering::Relaxed) {
            return Err("canceled by the manager".into());
        }
        let results: Vec<rayfarm_render::UnitResult> =
            pool.install(|| units.par_iter().map(|u| work.run_unit(scene, u)).collect());
        for r in &results {
            film.add(r).map_err(|e| e.to_string())?;
        }
    }
    let desc = rayfarm_job::jobdesc::PartDesc {
        name: part.name.clone(),
        layer: part.layer as usize,
        region: part.region,
        mesh: None,
    };
    // The error names the part's path (on this node, after --path-map).
    rayfarm_job::parts::write_part(job_dir, &desc, &film, part.spp, &seal)
        .map_err(|e| e.to_string())
}

/// What `rayfarm worker --probe` prints (one JSON line).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub version: String,
    pub protocol_version: u32,
    pub devices: rayfarm_proto::Devices,
}

/// Reads the CPU model and thread count of this machine.
pub fn probe(threads: Option<u32>) -> ProbeReport {
    let cpu_threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    ProbeReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: rayfarm_proto::PROTOCOL_VERSION,
        devices: rayfarm_proto::Devices {
            cpu_model,
            threads: threads.unwrap_or(cpu_threads).clamp(1, cpu_threads.max(1)),
            cpu_threads,
            gpus: Vec::new(),
        },
    }
}

/// Default scene cache folder.
pub fn default_cache_dir() -> PathBuf {
    if let Ok(x) = std::env::var("XDG_CACHE_HOME") {
        return Path::new(&x).join("rayfarm/scenes");
    }
    if let Ok(h) = std::env::var("HOME") {
        return Path::new(&h).join(".cache/rayfarm/scenes");
    }
    std::env::temp_dir().join("rayfarm-scenes")
}

/// Test-only switch: after this many units, stop heartbeating and hang (to test the daemon's
/// watchdog). Read from `RAYFARM_TEST_HANG_AFTER_UNITS`, in builds with the `test-switches`
/// feature only.
fn hang_after_units() -> Option<u64> {
    if !cfg!(feature = "test-switches") {
        return None;
    }
    std::env::var("RAYFARM_TEST_HANG_AFTER_UNITS")
        .ok()?
        .parse()
        .ok()
}

/// Test-only switch: after this many units, keep answering heartbeats but never send another
/// result (a worker that holds its units, to test the master's reissue of stale units). Read
/// from `RAYFARM_TEST_HOLD_AFTER_UNITS`, in builds with the `test-switches` feature only.
fn hold_after_units() -> Option<u64> {
    if !cfg!(feature = "test-switches") {
        return None;
    }
    std::env::var("RAYFARM_TEST_HOLD_AFTER_UNITS")
        .ok()?
        .parse()
        .ok()
}

fn cache_path(dir: &Path, hash: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.rfscene", hex::encode(hash)))
}

/// Reads a cached blob if present and intact.
fn cache_get(dir: &Path, hash: &[u8; 32]) -> Option<Vec<u8>> {
    let p = cache_path(dir, hash);
    let bytes = std::fs::read(&p).ok()?;
    match rayfarm_scene::blob::content_hash(&bytes) {
        Ok(h) if &h == hash => {
            // Touch for LRU eviction.
            let _ = std::fs::File::options()
                .append(true)
                .open(&p)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            Some(bytes)
        }
        _ => {
            tracing::warn!("cached scene {} is damaged; fetching it again", p.display());
            let _ = std::fs::remove_file(&p);
            None
        }
    }
}

/// Stores a blob atomically and evicts the least recently used entries over `max_bytes`.
fn cache_put(dir: &Path, hash: &[u8; 32], blob: &[u8], max_bytes: u64) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!("cannot create scene cache {}: {e}", dir.display());
        return;
    }
    let p = cache_path(dir, hash);
    if let Err(e) = rayfarm_job::fsutil::write_atomic(&p, blob) {
        tracing::warn!("scene cache: {e}");
        return;
    }
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rfscene"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    entries.sort();
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    for (_, len, path) in entries {
        if total <= max_bytes || path == p {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        total -= len;
    }
}

/// A scene being received (its bytes go onto the relay shelf): its hash, announced size, the
/// chunk list once the master sent it, the next chunk expected and the job's work.
struct Incoming {
    hash: [u8; 32],
    total: u64,
    chunks: Option<Arc<ChunkList>>,
    next: u32,
    work: Workload,
}

/// Ends the relay port's task when the worker ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the relay port on the address this worker reaches its master from; its port, or 0
/// when relaying is off or the port cannot be opened (the master then never names this node
/// as a source).
async fn open_relay(
    cfg: &WorkerConfig,
    conn: &rayfarm_proto::Conn,
    shelf: &Arc<Shelf>,
) -> (u16, Option<AbortOnDrop>) {
    if !cfg.relay {
        return (0, None);
    }
    let ip = match conn.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => {
            tracing::warn!("not relaying scenes: {e}");
            return (0, None);
        }
    };
    match tokio::net::TcpListener::bind((ip, 0)).await {
        Ok(l) => {
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            tracing::info!("relaying scenes to other workers on {ip}:{port}");
            let task = tokio::spawn(relay::serve(l, cfg.key.clone(), shelf.clone()));
            (port, Some(AbortOnDrop(task)))
        }
        Err(e) => {
            tracing::warn!("not relaying scenes: cannot open a port on {ip}: {e}");
            (0, None)
        }
    }
}

/// Takes chunk `index` of the scene being received (already checked against its hash); once
/// the last is in, checks the whole scene, caches and loads it.
async fn take_chunk(
    pending: &mut Option<Incoming>,
    shelf: &Shelf,
    cfg: &WorkerConfig,
    index: u32,
    data: &[u8],
    pool: &Arc<rayon::ThreadPool>,
) -> Result<Option<Loaded>, String> {
    let Some(inc) = pending.as_mut() else {
        return Err("scene data without a job".into());
    };
    if index != inc.next {
        return Err(format!(
            "scene chunk {index} out of order (expected {})",
            inc.next
        ));
    }
    shelf.append(&inc.hash, data)?;
    inc.next += 1;
    let count = inc.chunks.as_ref().map_or(0, |c| c.count());
    if inc.next < count {
        return Ok(None);
    }
    let Some(Incoming { hash, work, .. }) = pending.take() else {
        return Err("scene state lost".into());
    };
    let blob = shelf
        .finish(&hash)
        .ok_or("the scene received is shorter than announced")?;
    // Every chunk matched the hash the master sent, so the scene is the master's: it loads at
    // once. The whole-blob content hash is checked (and the scene cached under it) in the
    // background, off the path to `Ready`: a scene whose content hash disagrees with the
    // master's announcement is never cached (and a cached scene is checked again when read).
    let (dir, max) = (cfg.cache_dir.clone(), cfg.cache_max_bytes);
    let checked = blob.clone();
    tokio::task::spawn_blocking(move || match rayfarm_scene::blob::content_hash(&checked) {
        Ok(got) if got == hash => cache_put(&dir, &hash, &checked, max),
        _ => tracing::warn!(
            "the scene received does not match its announced content hash; not caching it"
        ),
    });
    Ok(Some(
        load_scene(blob, work, cfg.max_scene_bytes, pool).await?,
    ))
}

/// The message that ended the connection phase, then the connection's next ones.
async fn next_message(
    conn: &mut rayfarm_proto::Conn,
    first: &mut Option<Msg>,
) -> Result<Msg, rayfarm_proto::ProtoError> {
    match first.take() {
        Some(m) => Ok(m),
        None => conn.recv().await,
    }
}

/// The next chunk from the relay, if a relay is fetching.
async fn next_fetched(rx: &mut Option<mpsc::Receiver<Fetched>>) -> Option<Fetched> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

struct Loaded {
    scene: Arc<RenderScene>,
    work: Arc<Workload>,
}

/// The most units a master may have assigned to this worker and not yet had back (an honest
/// master keeps two per thread).
pub const MAX_OUTSTANDING_UNITS: usize = 4096;
/// How long a result may take to go out before the master counts as gone: one that stops
/// reading would otherwise hold this worker for ever.
pub const RESULT_SEND_TIMEOUT: Duration = Duration::from_secs(120);
/// The most tasks whose threads run at once (the manager sends one at a time; a canceled one
/// may still be winding down when the next arrives).
pub const MAX_RUNNING_TASKS: usize = 4;
/// The longest reason a `TaskFailed` gives, in characters.
const MAX_TASK_ERROR_CHARS: usize = 4096;

/// The units a master assigned and not yet had back, and which of them the render threads
/// have. IO-free. Only a few more units than there are threads render at once, so at most
/// that many results wait to be sent: a master that assigns many large units and stops
/// reading cannot fill this worker's memory with finished results.
struct UnitQueue {
    /// Assigned and not yet returned (or given back).
    outstanding: BTreeSet<WireUnit>,
    /// Assigned, not yet handed to the render threads, in the order assigned.
    waiting: std::collections::VecDeque<WireUnit>,
    /// Handed to the render threads (for any job) and their result not yet taken.
    rendering: usize,
    max_rendering: usize,
}

impl UnitQueue {
    fn new(threads: usize) -> UnitQueue {
        UnitQueue {
            outstanding: BTreeSet::new(),
            waiting: std::collections::VecDeque::new(),
            rendering: 0,
            max_rendering: 2 * threads.max(1),
        }
    }

    /// A unit the master assigned: queued, unless it is already (a duplicate is ignored). Too
    /// many outstanding units is the master's error.
    fn assign(&mut self, u: WireUnit) -> Result<(), String> {
        if self.outstanding.contains(&u) {
            return Ok(());
        }
        if self.outstanding.len() >= MAX_OUTSTANDING_UNITS {
            return Err(format!(
                "more than {MAX_OUTSTANDING_UNITS} units assigned and not yet returned"
            ));
        }
        self.outstanding.insert(u);
        self.waiting.push_back(u);
        Ok(())
    }

    /// The next unit for the render threads, while fewer than the limit render.
    fn next_to_render(&mut self) -> Option<WireUnit> {
        if self.rendering >= self.max_rendering {
            return None;
        }
        let u = self.waiting.pop_front()?;
        self.rendering += 1;
        Some(u)
    }

    /// The render threads finished a unit; whether its result is still wanted (it is
    /// outstanding in the current job) and now taken off the list.
    fn rendered(&mut self, u: &WireUnit, current_job: bool) -> bool {
        self.rendering = self.rendering.saturating_sub(1);
        current_job && self.outstanding.remove(u)
    }

    /// A new job: nothing of the old one is wanted (units still rendering finish, and their
    /// results are dropped).
    fn new_job(&mut self) {
        self.outstanding.clear();
        self.waiting.clear();
    }
}

/// Runs the worker until the master ends the job, the connection drops, or a signal arrives.
pub async fn run(cfg: WorkerConfig) -> Result<(), String> {
    let hung = Arc::new(AtomicBool::new(false));
    if cfg.heartbeat_stdout {
        let hung = hung.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                if hung.load(Ordering::Relaxed) {
                    continue;
                }
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "heartbeat");
                let _ = out.flush();
            }
        });
    }
    // A master that is not listening yet (started after its worker) is waited for; any other
    // failure (wrong key, wrong version, not a rayfarm peer) ends the worker at once.
    let deadline = std::time::Instant::now() + MASTER_WAIT;
    let shelf = Arc::new(Shelf::default());
    // Connected, introduced, and the master's first message (a job, a heartbeat or goodbye).
    // A master that many workers reach at once sheds the oldest pending handshakes from one
    // address (its listener's limit), which this side may see as a close during or just after
    // its handshake: such a worker comes back a little later, at a time of its own so that
    // the retries do not arrive together again.
    let retry = |e: &dyn std::fmt::Display| {
        tracing::info!("master {}: {e}; trying again", cfg.master);
        Duration::from_millis(200 + u64::from(std::process::id() % 400))
    };
    let (mut conn, mut first, _relay) = loop {
        let mut conn =
            match connect(&cfg.master, Role::Worker, &cfg.key, Duration::from_secs(10)).await {
                Ok(c) => c,
                Err(rayfarm_proto::ProtoError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e)
                    if (e.is_closed()
                        || matches!(e, rayfarm_proto::ProtoError::HandshakeClosed { .. }))
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(retry(&e)).await;
                    continue;
                }
                Err(e) => return Err(format!("cannot connect to master {}: {e}", cfg.master)),
            };
        let (peer_port, relay) = open_relay(&cfg, &conn, &shelf).await;
        let hello = conn
            .send(&Msg::WorkerHello {
                alias: cfg.alias.clone(),
                threads: cfg.threads as u32,
                version: env!("CARGO_PKG_VERSION").to_string(),
                peer_port,
            })
            .await;
        let first = match hello {
            Ok(()) => {
                conn.recv_timeout(Duration::from_secs(30), "the master's first message")
                    .await
            }
            Err(e) => Err(e),
        };
        match first {
            Ok(m) => break (conn, Some(m), relay),
            Err(e) if e.is_closed() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(retry(&e)).await;
            }
            Err(e) => return Err(format!("master {}: {e}", cfg.master)),
        }
    };
    tracing::info!("connected to master {}", cfg.master);
    eprintln!("connected to master {}", cfg.master);

    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build()
            .map_err(|e| format!("cannot start render threads: {e}"))?,
    );
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<(u64, rayfarm_render::UnitResult)>();
    let (task_tx, mut task_rx) = mpsc::unbounded_channel::<(i64, Result<[u8; 32], String>)>();
    let mut loaded: Option<Loaded> = None;
    let mut job_id = 0u64;
    // Units assigned and not yet returned, and those rendering.
    let mut queue = UnitQueue::new(cfg.threads);
    let task_threads = Arc::new(AtomicU64::new(0));
    let mut pending_scene: Option<Incoming> = None;
    // Chunks from the relay the master named, while it sends them.
    let mut fetching: Option<mpsc::Receiver<Fetched>> = None;
    // Tasks running, with the flag that cancels each (`CancelTask`).
    let mut running_tasks: std::collections::HashMap<i64, Arc<std::sync::atomic::AtomicBool>> =
        std::collections::HashMap::new();
    let units_done = Arc::new(AtomicU64::new(0));
    let hang_after = hang_after_units();
    let hold_after = hold_after_units();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    // A stream, not `tokio::signal::ctrl_c()` in the loop: a Ctrl-C arriving while the loop body
    // runs (no `ctrl_c` future alive) would otherwise be missed.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;

    loop {
        tokio::select! {
            _ = sigint.recv() => {
                return give_back(&mut conn, &queue.outstanding, "interrupted (Ctrl-C)").await;
            }
            _ = sigterm.recv() => {
                return give_back(&mut conn, &queue.outstanding, "terminated (SIGTERM)").await;
            }
            _ = heartbeat.tick() => {
                if !hung.load(Ordering::Relaxed) {
                    match conn.send(&Msg::Heartbeat).await {
                        Ok(()) => {}
                        // The master ended (its `Goodbye` may be unread behind the reset):
                        // an ordinary end, as when a read finds the connection closed.
                        Err(e) if e.is_closed() => {
                            tracing::info!("master {} closed the connection", cfg.master);
                            return Ok(());
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            Some((jid, r)) = result_rx.recv() => {
                let unit = WireUnit::from(r.unit);
                let wanted = queue.rendered(&unit, jid == job_id);
                if let Some(l) = loaded.as_ref() {
                    spawn_units(&mut queue, &pool, l, &result_tx, job_id);
                }
                if !wanted {
                    continue;
                }
                let done = units_done.fetch_add(1, Ordering::Relaxed) + 1;
                if hang_after.is_some_and(|n| done >= n) {
                    tracing::warn!("test switch RAYFARM_TEST_HANG_AFTER_UNITS: hanging now");
                    hung.store(true, Ordering::Relaxed);
                    std::future::pending::<()>().await;
                }
                if let Some(n) = hold_after.filter(|&n| done > n) {
                    if done == n + 1 {
                        tracing::warn!("test switch RAYFARM_TEST_HOLD_AFTER_UNITS: holding results now");
                    }
                    continue;
                }
                let (sums, r_nonfinite) = (encode_sums(&r), r.nonfinite_samples);
                drop(r);
                let done = Msg::UnitDone { unit, sums, nonfinite: r_nonfinite };
                match tokio::time::timeout(RESULT_SEND_TIMEOUT, conn.send(&done)).await {
                    Ok(sent) => sent.map_err(|e| e.to_string())?,
                    Err(_) => {
                        return Err(format!(
                            "master {} took no result for {} s: giving up on it",
                            cfg.master,
                            RESULT_SEND_TIMEOUT.as_secs()
                        ))
                    }
                }
            }
            Some((task_id, r)) = task_rx.recv() => {
                if running_tasks.remove(&task_id).is_none() {
                    // Canceled: the manager wants nothing back.
                    tracing::info!("task {task_id} stopped after its cancellation");
                    continue;
                }
                let msg = match r {
                    Ok(checksum) => Msg::TaskDone { task_id, checksum },
                    Err(error) => {
                        tracing::warn!("task {task_id} failed: {error}");
                        // Well within the manager's 64 KiB limit on what a worker sends.
                        let error = rayfarm_proto::printable(&error, MAX_TASK_ERROR_CHARS);
                        Msg::TaskFailed { task_id, error }
                    }
                };
                conn.send(&msg).await.map_err(|e| e.to_string())?;
            }
            Some(f) = next_fetched(&mut fetching) => match f {
                Fetched::Chunk { index, data } => {
                    if let Some(l) = take_chunk(&mut pending_scene, &shelf, &cfg, index, &data, &pool).await? {
                        fetching = None;
                        loaded = Some(l);
                        conn.send(&Msg::Ready).await.map_err(|e| e.to_string())?;
                    }
                }
                Fetched::Failed { next, why } => {
                    fetching = None;
                    tracing::warn!("{why}; fetching the rest of the scene from the master");
                    eprintln!("{why}; fetching the rest of the scene from the master");
                    conn.send(&Msg::NeedChunks { from_chunk: next }).await.map_err(|e| e.to_string())?;
                }
            },
            msg = next_message(&mut conn, &mut first) => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(rayfarm_proto::ProtoError::Closed { .. }) => {
                        tracing::info!("master {} closed the connection", cfg.master);
                        return Ok(());
                    }
                    Err(e) => return Err(format!("master {}: {e}", cfg.master)),
                };
                match msg {
                    Msg::Heartbeat => {}
                    Msg::Job { job_id: jid, scene_hash, scene_bytes, work } => {
                        let work = work.to_workload().map_err(|e| format!("master sent a bad job: {e}"))?;
                        check_scene_size(&format!("the scene master {} offers", cfg.master), scene_bytes, cfg.max_scene_bytes)?;
                        job_id = jid;
                        queue.new_job();
                        loaded = None;
                        // Reading and hashing a cached scene (possibly gigabytes) off the event loop.
                        let cached = {
                            let dir = cfg.cache_dir.clone();
                            tokio::task::spawn_blocking(move || cache_get(&dir, &scene_hash))
                                .await
                                .map_err(|e| format!("scene cache lookup failed: {e}"))?
                        };
                        fetching = None;
                        pending_scene = None;
                        if let Some(blob) = cached {
                            tracing::info!("scene {} found in the cache", &hex::encode(scene_hash)[..12]);
                            let blob = Arc::new(blob);
                            shelf.hold(scene_hash, blob.clone());
                            loaded = Some(load_scene(blob, work, cfg.max_scene_bytes, &pool).await?);
                            conn.send(&Msg::Ready).await.map_err(|e| e.to_string())?;
                        } else {
                            shelf.start(scene_hash, scene_bytes);
                            pending_scene = Some(Incoming {
                                hash: scene_hash,
                                total: scene_bytes,
                                chunks: None,
                                next: 0,
                                work,
                            });
                            conn.send(&Msg::NeedScene).await.map_err(|e| e.to_string())?;
                        }
                    }
                    Msg::SceneSource { chunk_bytes, chunk_hashes, peer } => {
                        let Some(inc) = pending_scene.as_mut() else {
                            return Err(format!("master {} sent a scene source without a job", cfg.master));
                        };
                        let chunks = Arc::new(
                            ChunkList::new(inc.total, chunk_bytes, chunk_hashes)
                                .map_err(|e| format!("master {} sent a bad chunk list: {e}", cfg.master))?,
                        );
                        inc.chunks = Some(chunks.clone());
                        if let Some(addr) = peer {
                            let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
                                format!("master {} named a relay that is not an address: {addr:?}", cfg.master)
                            })?;
                            tracing::info!("fetching the scene from the relay {addr}");
                            let (tx, rx) = mpsc::channel(4);
                            fetching = Some(rx);
                            tokio::spawn(relay::fetch(addr.to_string(), cfg.key.clone(), inc.hash, chunks, 0, tx));
                        }
                    }
                    Msg::SceneChunk { offset, data } => {
                        let index = pending_scene
                            .as_ref()
                            .and_then(|p| p.chunks.as_ref())
                            .and_then(|c| c.index_at(offset).map(|i| (i, c.verify(i, &data))));
                        let index = match index {
                            Some((i, Ok(()))) => i,
                            Some((_, Err(e))) => return Err(format!("master {}: {e}", cfg.master)),
                            None => return Err(format!("master {} sent scene data without a chunk list, or at a bad offset", cfg.master)),
                        };
                        if let Some(l) = take_chunk(&mut pending_scene, &shelf, &cfg, index, &data, &pool).await? {
                            loaded = Some(l);
                            conn.send(&Msg::Ready).await.map_err(|e| e.to_string())?;
                        }
                    }
                    Msg::Assign { units } => {
                        let Some(l) = loaded.as_ref() else {
                            return Err("master assigned units before the scene was ready".into());
                        };
                        for u in units {
                            let wu: rayfarm_render::WorkUnit = u.into();
                            l.work.check_unit(&wu).map_err(|e| format!("master assigned a bad unit: {e}"))?;
                            queue.assign(u).map_err(|e| format!("master {}: {e}", cfg.master))?;
                        }
                        spawn_units(&mut queue, &pool, l, &result_tx, job_id);
                    }
                    Msg::Task { task_id, units, part } => {
                        let Some(l) = loaded.as_ref() else {
                            return Err("manager sent a task before the scene was ready".into());
                        };
                        let mut wus = Vec::with_capacity(units.len());
                        for u in units {
                            let wu: rayfarm_render::WorkUnit = u.into();
                            l.work.check_unit(&wu).map_err(|e| format!("manager sent a bad task: {e}"))?;
                            let inside = wu.layer == part.layer
                                && wu.x0 >= part.region[0] && wu.y0 >= part.region[1]
                                && wu.x1 <= part.region[2] && wu.y1 <= part.region[3];
                            if !inside {
                                return Err(format!("manager sent a unit outside its task's part: {wu:?}"));
                            }
                            wus.push(wu);
                        }
                        let mapped_dir = map_path(&cfg.path_map, &part.job_dir);
                        let mapped = (mapped_dir.as_os_str() != part.job_dir.as_str())
                            .then(|| format!(" (the manager's {} after --path-map)", part.job_dir));
                        // Confined to this node's network folders, when it names any.
                        let job_dir = if cfg.netdirs.is_empty() {
                            Ok(mapped_dir)
                        } else {
                            cfg.netdirs.resolve(&mapped_dir).map_err(|e| e.to_string())
                        };
                        if task_threads.load(Ordering::Relaxed) >= MAX_RUNNING_TASKS as u64 {
                            return Err(format!("manager sent more than {MAX_RUNNING_TASKS} tasks at once"));
                        }
                        let (scene, work, tx, pool, key) = (l.scene.clone(), l.work.clone(), task_tx.clone(), pool.clone(), cfg.key.clone());
                        let canceled = Arc::new(std::sync::atomic::AtomicBool::new(false));
                        running_tasks.insert(task_id, canceled.clone());
                        let alive = task_threads.clone();
                        alive.fetch_add(1, Ordering::Relaxed);
                        std::thread::spawn(move || {
                            let r = job_dir
                                .and_then(|job_dir| run_task(&key, Renderer { pool: &pool, scene: &scene, work: &work }, &wus, &job_dir, &part, &canceled))
                                .map_err(|e| format!("{e}{}", mapped.unwrap_or_default()));
                            alive.fetch_sub(1, Ordering::Relaxed);
                            let _ = tx.send((task_id, r));
                        });
                    }
                    Msg::CancelTask { task_id } => {
                        if let Some(flag) = running_tasks.remove(&task_id) {
                            flag.store(true, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!("task {task_id} canceled by the manager: stopping it");
                        }
                    }
                    Msg::Goodbye { reason } => {
                        tracing::info!("master says goodbye: {reason}");
                        return Ok(());
                    }
                    other => {
                        return Err(format!("unexpected {} from master", other.name()));
                    }
                }
            }
        }
    }
}

/// Hands waiting units to the render threads while fewer than [`UnitQueue`]'s limit render.
fn spawn_units(
    queue: &mut UnitQueue,
    pool: &Arc<rayon::ThreadPool>,
    l: &Loaded,
    tx: &mpsc::UnboundedSender<(u64, rayfarm_render::UnitResult)>,
    job_id: u64,
) {
    while let Some(u) = queue.next_to_render() {
        let wu: rayfarm_render::WorkUnit = u.into();
        let (scene, work, tx) = (l.scene.clone(), l.work.clone(), tx.clone());
        pool.spawn(move || {
            let r = work.run_unit(&scene, &wu);
            let _ = tx.send((job_id, r));
        });
    }
}

async fn load_scene(
    blob: Arc<Vec<u8>>,
    work: Workload,
    max_bytes: u64,
    pool: &Arc<rayon::ThreadPool>,
) -> Result<Loaded, String> {
    // On the render threads: building a scene (pyramids, light weights) runs in parallel, and
    // no wider than the node's `--threads`.
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || {
        // The header's uncompressed length is checked against the limit before decompressing.
        let scene = rayfarm_scene::blob::decode_with_limit(&blob, max_bytes).map_err(|e| {
            format!(
                "{e} (this node's scene limit is {} MiB; raise it with --max-scene-mb)",
                max_bytes >> 20
            )
        })?;
        if let Workload::Bake(b) = &work {
            b.spec
                .check(&scene)
                .map_err(|e| format!("master sent a bake that does not fit its scene: {e}"))?;
        }
        let scene = pool.install(|| {
            if matches!(work, Workload::Bake(_)) {
                RenderScene::new(scene)
            } else {
                RenderScene::for_images(scene)
            }
        });
        Ok(Loaded {
            scene: Arc::new(scene),
            work: Arc::new(work),
        })
    })
    .await
    .map_err(|e| format!("scene loading failed: {e}"))?
}

async fn give_back(
    conn: &mut rayfarm_proto::Conn,
    outstanding: &BTreeSet<WireUnit>,
    why: &str,
) -> Result<(), String> {
    let units: Vec<WireUnit> = outstanding.iter().copied().collect();
    tracing::info!("{why}: giving back {} units and disconnecting", units.len());
    eprintln!(
        "{why}: giving back {} unit(s) to the master and disconnecting",
        units.len()
    );
    let _ = conn.send(&Msg::GiveBack { units }).await;
    let _ = conn
        .send(&Msg::Goodbye {
            reason: why.to_string(),
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    fn unit(i: u32) -> WireUnit {
        WireUnit::from(rayfarm_render::WorkUnit {
            layer: 0,
            sample_start: i,
            sample_end: i + 1,
            y0: 0,
            x0: 0,
            y1: 1,
            x1: 1,
        })
    }

    /// The attack (a keyholding master): assign many units and stop reading results. Only
    /// twice as many units as threads render at once, so only that many results can wait;
    /// the rest wait as units, and a flood of assignments is refused past the limit.
    #[test]
    fn only_a_few_units_render_at_once_and_assignments_are_bounded() {
        let mut q = UnitQueue::new(2);
        for i in 0..10 {
            q.assign(unit(i)).unwrap();
        }
        q.assign(unit(3)).unwrap();
        assert_eq!(q.outstanding.len(), 10, "a duplicate is ignored");
        let first: Vec<_> = std::iter::from_fn(|| q.next_to_render()).collect();
        assert_eq!(
            first,
            (0..4).map(unit).collect::<Vec<_>>(),
            "in order, 2 per thread"
        );
        // Until a result is taken, nothing more renders.
        assert_eq!(q.next_to_render(), None);
        assert!(q.rendered(&unit(0), true));
        assert_eq!(q.next_to_render(), Some(unit(4)));
        // A new job: the old units are not wanted, and those still rendering count until
        // their results come back.
        q.new_job();
        q.assign(unit(100)).unwrap();
        assert_eq!(q.next_to_render(), None, "four still render");
        assert!(
            !q.rendered(&unit(1), false),
            "an old job's result is dropped"
        );
        assert_eq!(q.next_to_render(), Some(unit(100)));
        for i in 0..MAX_OUTSTANDING_UNITS as u32 - 1 {
            q.assign(unit(1000 + i)).unwrap();
        }
        let e = q.assign(unit(999_999)).unwrap_err();
        assert!(e.contains("more than 4096 units"), "{e}");
    }
}
