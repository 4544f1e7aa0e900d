//! The job manager service: hands the tasks of queued jobs to render nodes.
//!
//! It knows daemons from its config, a scan, or their own registration, and takes an idle
//! daemon's lease the way a master does (a daemon held by an interactive master is left
//! alone), so the daemon starts a worker that connects to the manager's *worker port*. Each
//! worker session takes one task at a time from the [`Store`]: the manager sends the job's
//! compiled scene (read from the job folder) and the task's units, the worker renders them
//! and writes the part file into the job folder itself, then reports its checksum, which the
//! manager verifies by reading the part back before marking the task done.
//!
//! Crash safety: the queue is SQLite ([`Store`]). A restarted manager looks at every task the
//! queue says is running: a task whose part is in the job folder and intact is done; the
//! others go back to the queue. Parts are written atomically and are a pure function of the
//! job and the part, so a part written twice (by a node the manager lost track of and by the
//! node that redid it) is the same bytes either way.
//!
//! Long-lived tasks and how they stop: the listener, the daemon loop, the lease expiry loop,
//! each lease holder and each worker session watch one `watch` channel that flips to `true`
//! on shutdown; sessions then say `Goodbye`, lease holders `Release`.

use crate::store::{JobStatus, Store, TaskAssignment};
use rayfarm_bake::{BakeWork, Workload};
use rayfarm_job::jobdesc::{PartDesc, SceneRef};
use rayfarm_job::renderjob::AnyJobDesc;
use rayfarm_proto::{
    FarmKey, ListenLimits, Msg, Role, SecureListener, WirePart, WireUnit, WireWork,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The manager's HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 3234;
/// A worker silent this long is lost.
pub const WORKER_SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session with nothing to do ends after this, freeing the node for masters.
pub const IDLE_RELEASE: Duration = Duration::from_secs(3);
/// Events kept for the monitor.
pub const MAX_EVENTS: usize = 200;

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub bind: String,
    pub http_port: u16,
    /// Port workers connect to (0: the first free one from `http_port + 1`).
    pub worker_port: u16,
    pub db: PathBuf,
    pub scan: Vec<String>,
    pub daemons: Vec<String>,
    pub scan_interval: Duration,
    pub key: FarmKey,
    /// Task lease: a running task whose node says nothing this long goes back to the queue.
    pub task_lease_ms: i64,
    /// PEM certificate chain and private key: the HTTP port speaks TLS (https) with them.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The network folders job folders must lie in (`--netdir`). None: no job is taken.
    pub netdirs: Vec<PathBuf>,
}

/// A node as the API shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
// The API calls it NodeJson (`api::NodeJson` is this type).
#[schema(as = NodeJson)]
pub struct NodeView {
    /// `HOST:PORT` of its daemon.
    pub addr: String,
    pub alias: String,
    pub threads: u32,
    /// The CPU its daemon reports (`""` when unknown: a worker started by hand).
    #[serde(default)]
    pub cpu_model: String,
    /// Threads its machine has (0 when unknown); `threads` is what it offers.
    #[serde(default)]
    pub cpu_threads: u32,
    /// GPUs its daemon found (listed only: rendering is on the CPU).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// idle, working, occupied, lost or unreachable.
    pub state: String,
    /// While working: the job.
    pub job: Option<String>,
    /// While working: the task.
    pub task: Option<String>,
    /// While occupied: the master holding it.
    pub master: Option<String>,
    pub last_seen_ms: i64,
}

/// Why a job cannot run now, if it cannot: it waits for tasks, none runs, and every node the
/// manager knows is excluded from it (or it knows none). Pure, so it is unit-tested; the API
/// shows such a job as `blocked` with this reason, and it runs again as soon as a node that
/// may take it appears.
pub fn blocked_reason(
    job: &crate::store::JobInfo,
    known_nodes: &[String],
    excluded: &[String],
) -> Option<String> {
    let waiting = matches!(job.status, JobStatus::Queued | JobStatus::Active)
        && job.tasks.queued > 0
        && job.tasks.running == 0;
    if !waiting {
        return None;
    }
    if known_nodes.is_empty() {
        return Some(
            "no node is known to the manager: start `rayfarm daemon --manager HOST` on a render node, or give the manager --daemon/--scan".into(),
        );
    }
    if known_nodes.iter().all(|n| excluded.contains(n)) {
        return Some(format!(
            "every known node failed this job twice and gets no more of its tasks ({}); see `rayfarm job show` for their errors; it runs again when another node joins",
            known_nodes.join(", ")
        ));
    }
    None
}

/// Samples per unit of a task: small enough that a canceled task stops within a fraction of a
/// second (the worker checks between units), large enough that per-unit costs stay small. The
/// part's sums do not depend on it (integer addition).
pub const TASK_SAMPLES_PER_UNIT: u32 = 64;

/// [`TASK_SAMPLES_PER_UNIT`], raised for very high sample counts so a tile never has more than
/// 64 units (a `Task` message lists every unit).
pub fn task_samples_per_unit(spp: u32) -> u32 {
    spp.min(TASK_SAMPLES_PER_UNIT.max(spp.div_ceil(64)))
}

/// Something the monitor shows under "recent events".
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub time_ms: i64,
    pub level: &'static str,
    pub message: String,
    pub job: Option<String>,
    pub node: Option<String>,
}

#[derive(Default)]
struct SessionEntry {
    threads: u32,
    job: Option<String>,
    task: Option<String>,
    last_seen_ms: i64,
}

/// A job's data the sessions need, loaded from its folder once.
pub struct JobCtx {
    job_dir: PathBuf,
    pub desc: AnyJobDesc,
    /// What authenticates the job's parts (its job.desc's hash and the farm key).
    seal: rayfarm_job::folder::JobSeal,
    /// A bake's work, the same for every part.
    bake_wire: Option<WireWork>,
    /// Compiled scenes read so far, by file name, most recent last (at most
    /// [`SCENES_KEPT`]: a long animation's frames are read one after another).
    scenes: Mutex<Vec<(String, Arc<SceneBlob>)>>,
}

/// A compiled scene blob of a job, checked against its job.desc.
pub struct SceneBlob {
    bytes: Vec<u8>,
    hash: [u8; 32],
    /// Its chunks' hashes, for workers that fetch it (from this manager or a relay).
    chunks: rayfarm_proto::scene_chunks::ChunkList,
}

/// Scene blobs a job keeps in memory at once.
const SCENES_KEPT: usize = 4;

/// What a worker needs for one part: the scene and work to load (`variant` says which of the
/// job's scene and settings combinations it is, so a session reloads only when it changes),
/// the units and where the part goes.
struct PartWork {
    variant: usize,
    scene: SceneRef,
    wire: WireWork,
    units: Vec<WireUnit>,
    part: WirePart,
    desc: PartDesc,
}

impl JobCtx {
    /// The scene blob `scene` names, read from the job folder (and checked) when not in memory.
    fn scene(&self, scene: &SceneRef) -> Result<Arc<SceneBlob>, JobLoadError> {
        if let Some((_, b)) = lock(&self.scenes).iter().find(|(f, _)| *f == scene.file) {
            return Ok(b.clone());
        }
        let blob = Arc::new(read_scene(&self.job_dir, scene)?);
        let mut cache = lock(&self.scenes);
        if cache.len() >= SCENES_KEPT {
            cache.remove(0);
        }
        cache.push((scene.file.clone(), blob.clone()));
        Ok(blob)
    }

    /// The wire job id of a variant: the same job and variant always get the same id.
    fn wire_job_id(&self, variant: usize) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(self.desc.job_id().as_bytes());
        h.update(&(variant as u64).to_le_bytes());
        u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or_default())
    }
}

/// Why a job folder cannot be served ([`load_job`]); messages name the file or job at fault.
///
/// Wrapped errors are printed, not chained as sources, so a message reads the same whether
/// it is shown alone or through `anyhow`'s `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum JobLoadError {
    /// The job.desc (or a file name in it) is unreadable, unauthenticated or invalid.
    #[error("{0}")]
    Desc(rayfarm_job::jobdesc::DescError),
    #[error("{}: job.desc names job '{found}', not '{job_id}'", job_dir.display())]
    WrongJob {
        job_dir: PathBuf,
        found: String,
        job_id: String,
    },
    #[error("job {job_id}: bad job spec: {reason}")]
    BadSpec {
        job_id: String,
        reason: serde_json::Error,
    },
    /// The job folder is no longer inside the manager's network folders.
    #[error("{0}")]
    Outside(rayfarm_job::folder::RootError),
    #[error("job {job_id}: loading its folder failed: {reason}")]
    Aborted {
        job_id: String,
        reason: tokio::task::JoinError,
    },
    #[error("{}: cannot read the job's scene: {reason}", path.display())]
    SceneUnreadable {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{}: the scene is larger than job.desc says", path.display())]
    SceneTooLarge { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    SceneBlob {
        path: PathBuf,
        reason: rayfarm_scene::SceneError,
    },
    #[error("{}: the scene does not match the size and hash in job.desc", path.display())]
    SceneMismatch { path: PathBuf },
}

/// Why the manager did not start ([`start`], [`crate::service::run`]).
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{0}")]
    Tls(crate::http::TlsError),
    #[error("{0}")]
    Roots(rayfarm_job::folder::RootError),
    #[error("{}: cannot open the job database: {reason}", db.display())]
    Database {
        db: PathBuf,
        reason: crate::store::StoreError,
    },
    #[error("cannot listen on {bind}:{port}: {reason}")]
    Listen {
        bind: String,
        port: u16,
        reason: std::io::Error,
    },
    #[error("{0}")]
    WorkerPort(rayfarm_master::MasterError),
    #[error("cannot start the job store's thread: {0}")]
    StoreThread(std::io::Error),
}

/// Reads a job's compiled scene and checks its size and hash against the job.desc.
fn read_scene(job_dir: &Path, scene: &SceneRef) -> Result<SceneBlob, JobLoadError> {
    let path = rayfarm_job::jobdesc::safe_join(job_dir, &scene.file).map_err(JobLoadError::Desc)?;
    let bytes = rayfarm_job::folder::read_nofollow(&path, scene.bytes)
        .map_err(|reason| JobLoadError::SceneUnreadable {
            path: path.clone(),
            reason,
        })?
        .ok_or_else(|| JobLoadError::SceneTooLarge { path: path.clone() })?;
    let hash =
        rayfarm_scene::blob::content_hash(&bytes).map_err(|reason| JobLoadError::SceneBlob {
            path: path.clone(),
            reason,
        })?;
    if bytes.len() as u64 != scene.bytes || rayfarm_scene::blob::hash_hex(&hash) != scene.blake3 {
        return Err(JobLoadError::SceneMismatch { path });
    }
    // The header's hash is the file's word only: the body must match it (checked in constant
    // memory) before the blob goes to any worker.
    rayfarm_scene::blob::verify(&bytes).map_err(|reason| JobLoadError::SceneBlob {
        path: path.clone(),
        reason,
    })?;
    let chunks =
        rayfarm_proto::scene_chunks::ChunkList::of(&bytes, rayfarm_proto::SCENE_CHUNK_BYTES as u32);
    Ok(SceneBlob {
        bytes,
        hash,
        chunks,
    })
}

/// State shared by the HTTP API and the loops.
/// Counters since the manager started, for `/metrics` (Prometheus counters: a scraper takes
/// their rate, so samples/s is `rate(rayfarm_samples_total[1m])`).
#[derive(Default)]
pub struct Stats {
    /// Samples rendered into parts the manager verified (pixels or texels x samples each).
    pub samples: std::sync::atomic::AtomicU64,
    /// Bytes of the parts the manager verified.
    pub part_bytes: std::sync::atomic::AtomicU64,
    /// API answers with a 4xx status (401 included).
    pub api_client_errors: std::sync::atomic::AtomicU64,
    /// API answers with a 5xx status.
    pub api_server_errors: std::sync::atomic::AtomicU64,
}

pub struct Manager {
    /// The job store, on its own thread ([`crate::db`]).
    pub store: crate::db::StoreHandle,
    cfg: ManagerConfig,
    pub worker_port: u16,
    started: Instant,
    nodes: Mutex<crate::core::NodeTable>,
    registered: Mutex<crate::registry::Registry>,
    sessions: Mutex<BTreeMap<String, SessionEntry>>,
    events: Mutex<VecDeque<Event>>,
    /// Job folders loaded so far, by job id. Evicted when a job is deleted or ends
    /// ([`Manager::forget_job`]), so a job id submitted again from another folder is read anew.
    jobs: Mutex<HashMap<String, Arc<JobCtx>>>,
    /// The canonical `netdirs`: the only folders job folders are served from.
    pub roots: rayfarm_job::folder::Roots,
    /// The monitor's job previews, built once per change of a job.
    pub previews: crate::preview::PreviewCache,
    /// Counters for `/metrics`.
    pub stats: Stats,
    /// Which worker relays which job scene to which (see `rayfarm_master::distribution`).
    scene_plan: Mutex<rayfarm_master::distribution::Distribution>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The job spec stored with each job: where its folder is.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    pub job_dir: String,
}

/// The task spec stored with each task: which part of the job.desc it makes.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct TaskSpec {
    pub part: usize,
}

impl Manager {
    pub fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn event(
        &self,
        level: &'static str,
        message: String,
        job: Option<&str>,
        node: Option<&str>,
    ) {
        match level {
            "error" => tracing::error!("{message}"),
            "warn" => tracing::warn!("{message}"),
            _ => tracing::info!("{message}"),
        }
        let mut ev = lock(&self.events);
        if ev.len() >= MAX_EVENTS {
            ev.pop_front();
        }
        ev.push_back(Event {
            time_ms: now_ms(),
            level,
            message,
            job: job.map(str::to_string),
            node: node.map(str::to_string),
        });
    }

    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).iter().rev().cloned().collect()
    }

    /// A daemon announcing itself (`rayfarm daemon --manager`).
    pub fn register(&self, addr: &str) -> crate::registry::Registered {
        lock(&self.registered).register(addr, now_ms())
    }

    /// Daemons registered and not expired.
    pub fn registered_count(&self) -> usize {
        lock(&self.registered).len()
    }

    pub fn registered_limit(&self) -> usize {
        lock(&self.registered).capacity()
    }

    /// The farm key: the API's token and the worker channel derive from it.
    pub fn key(&self) -> &FarmKey {
        &self.cfg.key
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        let nodes = lock(&self.nodes);
        let sessions = lock(&self.sessions);
        let mut out = Vec::new();
        let mut shown = BTreeSet::new();
        for (addr, n) in nodes.iter() {
            let s = sessions.get(&n.alias).filter(|_| n.held);
            shown.insert(n.alias.clone());
            let (state, job, task) = match s {
                Some(s) if s.task.is_some() => {
                    ("working".to_string(), s.job.clone(), s.task.clone())
                }
                Some(_) => ("idle".to_string(), None, None),
                None => (n.daemon_state.clone(), None, None),
            };
            out.push(NodeView {
                addr: addr.clone(),
                alias: n.alias.clone(),
                threads: n.threads,
                cpu_model: n.hardware.cpu_model.clone(),
                cpu_threads: n.hardware.cpu_threads,
                gpus: n.hardware.gpus.clone(),
                state,
                job,
                task,
                master: n.master.clone(),
                last_seen_ms: n.last_seen_ms.max(s.map_or(0, |s| s.last_seen_ms)),
            });
        }
        // Workers started by hand (no daemon).
        for (alias, s) in sessions.iter() {
            if shown.contains(alias) {
                continue;
            }
            out.push(NodeView {
                addr: "(worker)".into(),
                alias: alias.clone(),
                threads: s.threads,
                cpu_model: String::new(),
                cpu_threads: 0,
                gpus: Vec::new(),
                state: if s.task.is_some() { "working" } else { "idle" }.into(),
                job: s.job.clone(),
                task: s.task.clone(),
                master: None,
                last_seen_ms: s.last_seen_ms,
            });
        }
        out
    }

    /// Loads (once) a job's folder: its job.desc and compiled scene. The folder must still lie
    /// in one of the roots (a manager restarted with other `--netdir`s serves only those).
    /// The folder is read and checked (the job.desc, and a bake's scene: hashed, possibly
    /// gigabytes) on a blocking thread.
    async fn job_ctx(&self, job_id: &str, spec: &str) -> Result<Arc<JobCtx>, JobLoadError> {
        if let Some(c) = lock(&self.jobs).get(job_id) {
            return Ok(c.clone());
        }
        let spec: JobSpec = serde_json::from_str(spec).map_err(|reason| JobLoadError::BadSpec {
            job_id: job_id.to_string(),
            reason,
        })?;
        let dir = self
            .roots
            .resolve(Path::new(&spec.job_dir))
            .map_err(JobLoadError::Outside)?;
        let (id, key) = (job_id.to_string(), self.cfg.key.clone());
        let ctx = tokio::task::spawn_blocking(move || load_job(&id, &dir, &key))
            .await
            .map_err(|reason| JobLoadError::Aborted {
                job_id: job_id.to_string(),
                reason,
            })??;
        let ctx = Arc::new(ctx);
        lock(&self.jobs).insert(job_id.to_string(), ctx.clone());
        Ok(ctx)
    }

    /// Drops what is cached of job `job_id` (its job.desc, seal and scenes): called when the
    /// job is deleted or ends, so that the same id submitted again (perhaps from another
    /// folder) is read from its new folder.
    pub fn forget_job(&self, job_id: &str) {
        lock(&self.jobs).remove(job_id);
    }
}

/// Reads and checks a job folder: job.desc (its id must be the folder's name and `job_id`)
/// and, for a bake, the compiled scene it names (its hash must match); a render's scenes
/// are checked as they are read.
pub fn load_job(job_id: &str, job_dir: &Path, key: &FarmKey) -> Result<JobCtx, JobLoadError> {
    let (desc, seal) = AnyJobDesc::read(&job_dir.join(rayfarm_job::jobdesc::FILE_NAME), key)
        .map_err(JobLoadError::Desc)?;
    if desc.job_id() != job_id {
        return Err(JobLoadError::WrongJob {
            job_dir: job_dir.to_path_buf(),
            found: desc.job_id().to_string(),
            job_id: job_id.to_string(),
        });
    }
    let mut ctx = JobCtx {
        job_dir: job_dir.to_path_buf(),
        bake_wire: None,
        scenes: Mutex::new(Vec::new()),
        desc,
        seal,
    };
    match &ctx.desc {
        AnyJobDesc::Bake(d) => {
            let scene = d.scene.clone();
            let work = Workload::Bake(BakeWork::new(d.bake.to_bake_spec()));
            ctx.bake_wire = Some(WireWork::from_workload(&work));
            ctx.scene(&scene)?;
        }
        AnyJobDesc::Render(d) => {
            let first = d.frames[0].scene.clone();
            ctx.scene(&first)?;
        }
    }
    Ok(ctx)
}

/// The work of a part: every sample of its region of its layer (a bake) or frame (a render).
fn part_work(ctx: &JobCtx, part: usize) -> Result<PartWork, String> {
    let (desc, spp) = ctx
        .desc
        .part(part)
        .ok_or_else(|| format!("part {part} is not in job.desc, or its layer does not exist"))?;
    let (variant, scene, wire) = match &ctx.desc {
        AnyJobDesc::Bake(d) => (
            0,
            d.scene.clone(),
            ctx.bake_wire
                .clone()
                .ok_or("the bake's work is not loaded")?,
        ),
        AnyJobDesc::Render(d) => {
            let fi = d.parts[part].frame;
            let settings = d
                .settings(fi)
                .ok_or_else(|| format!("part {}: frame {fi} does not exist", desc.name))?;
            (
                fi,
                d.frames[fi].scene.clone(),
                WireWork::from_workload(&Workload::Render(settings)),
            )
        }
    };
    let units = rayfarm_render::film::plan_region(
        desc.layer as u32,
        desc.region(),
        spp,
        32,
        task_samples_per_unit(spp),
    )
    .into_iter()
    .map(WireUnit::from)
    .collect();
    let part = WirePart {
        job_dir: ctx.job_dir.display().to_string(),
        name: desc.name.clone(),
        layer: desc.layer as u32,
        region: desc.region,
        spp,
    };
    Ok(PartWork {
        variant,
        scene,
        wire,
        units,
        part,
        desc,
    })
}

/// A started manager: its state, and the HTTP listener (and TLS) the service serves on.
pub struct Started {
    pub mgr: Arc<Manager>,
    pub http: TcpListener,
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// Opens the queue, recovers from a previous run, binds the ports and starts the worker
/// listener, the daemon scans and the lease expiry (until `stop` flips). The HTTP side is
/// [`crate::service::run`]'s.
pub async fn start(
    cfg: ManagerConfig,
    stop: watch::Receiver<bool>,
) -> Result<Started, ManagerError> {
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(crate::http::load_tls(cert, key).map_err(ManagerError::Tls)?),
        None => None,
    };
    let roots = rayfarm_job::folder::Roots::new(&cfg.netdirs).map_err(ManagerError::Roots)?;
    if roots.is_empty() {
        eprintln!(
            "warning: no --netdir given: the manager takes no job folders until it is restarted with --netdir NETWORK_FOLDER"
        );
    }
    let store = Store::open(&cfg.db)
        .map_err(|reason| ManagerError::Database {
            db: cfg.db.clone(),
            reason,
        })?
        .with_lease_ms(cfg.task_lease_ms);
    let http = TcpListener::bind((cfg.bind.as_str(), cfg.http_port))
        .await
        .map_err(|reason| ManagerError::Listen {
            bind: cfg.bind.clone(),
            port: cfg.http_port,
            reason,
        })?;
    let first = if cfg.worker_port == 0 {
        cfg.http_port.saturating_add(1)
    } else {
        cfg.worker_port
    };
    let (workers, worker_port) = rayfarm_master::bind_master_port(&cfg.bind, first)
        .await
        .map_err(ManagerError::WorkerPort)?;
    let mgr = Arc::new(Manager {
        store: crate::db::StoreHandle::spawn(store).map_err(ManagerError::StoreThread)?,
        cfg: cfg.clone(),
        worker_port,
        started: Instant::now(),
        nodes: Default::default(),
        registered: Default::default(),
        sessions: Default::default(),
        events: Default::default(),
        jobs: Default::default(),
        roots,
        previews: Default::default(),
        scene_plan: Mutex::new(rayfarm_master::distribution::Distribution::new(
            rayfarm_master::distribution::DEFAULT_SCENE_FANOUT,
        )),
        stats: Default::default(),
    });
    recover(&mgr).await;
    tracing::info!(
        "manager listening on {}:{} (HTTP) and {}:{worker_port} (workers)",
        cfg.bind,
        cfg.http_port,
        cfg.bind
    );
    eprintln!(
        "manager listening on {}:{} (web monitor and API, {}), workers connect to port {worker_port}",
        cfg.bind,
        cfg.http_port,
        if tls.is_some() { "https" } else { "plain http" }
    );
    eprintln!(
        "the API and the monitor answer only the farm's API token (`rayfarm key api-token` prints it)"
    );
    {
        let (m, s) = (mgr.clone(), stop.clone());
        tokio::spawn(async move { listen_workers(m, workers, s).await });
    }
    {
        let (m, s) = (mgr.clone(), stop.clone());
        tokio::spawn(async move { daemon_loop(m, s).await });
    }
    {
        let (m, s) = (mgr.clone(), stop.clone());
        tokio::spawn(async move { expiry_loop(m, s).await });
    }
    Ok(Started { mgr, http, tls })
}

/// After a restart: running tasks whose part is intact are done, the rest are requeued.
async fn recover(mgr: &Manager) {
    let running = match mgr.store.call(|s| s.running_tasks()).await {
        Ok(r) => r,
        Err(e) => {
            mgr.event(
                "error",
                format!("cannot list running tasks: {e}"),
                None,
                None,
            );
            return;
        }
    };
    for t in running {
        let Some(node) = t.node.clone() else { continue };
        let intact = async {
            let id = t.job_id.clone();
            let spec = mgr
                .store
                .call(move |s| s.job_spec(&id))
                .await
                .map_err(|e| e.to_string())?;
            let ctx = mgr
                .job_ctx(&t.job_id, &spec)
                .await
                .map_err(|e| e.to_string())?;
            let ts: TaskSpec = serde_json::from_str(&t.spec).map_err(|e| e.to_string())?;
            let (p, spp) = ctx.desc.part(ts.part).ok_or("no such part")?;
            // Reading a part decompresses and hashes it: not on the runtime.
            tokio::task::spawn_blocking(move || {
                rayfarm_job::parts::read_part(&ctx.job_dir, &p, spp, &ctx.seal).is_ok()
            })
            .await
            .map_err(|e| e.to_string())
        }
        .await
        .unwrap_or(false);
        let (task_id, n) = (t.id, node.clone());
        if crate::core::recover_task(intact) == crate::core::Recovery::Done {
            let _ = mgr.store.call(move |s| s.task_done(task_id, &n)).await;
            mgr.event(
                "info",
                format!("task '{}' finished while the manager was down", t.name),
                Some(&t.job_id),
                Some(&node),
            );
        } else {
            let _ = mgr.store.call(move |s| s.node_lost(&n)).await;
        }
    }
}

async fn expiry_loop(mgr: Arc<Manager>, mut stop: watch::Receiver<bool>) {
    let mut t = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = t.tick() => {}
        }
        let now = now_ms();
        let (r, jobs) = mgr
            .store
            .call(move |s| (s.expire_leases(now), s.list_jobs()))
            .await;
        // Previews of jobs that are gone are dropped (deletes through the API drop theirs at once).
        if let Ok(jobs) = jobs {
            let ids: BTreeSet<String> = jobs.into_iter().map(|j| j.id).collect();
            mgr.previews.retain(|id| ids.contains(id));
        }
        if let Ok(r) = r {
            for id in r.requeued {
                mgr.event(
                    "warn",
                    format!("task {id}: its node stopped answering; requeued"),
                    None,
                    None,
                );
            }
        }
    }
}

/// Drops registrations not renewed for [`crate::registry::REGISTRATION_TTL_MS`], and the node
/// entries they made (unless configured, or their lease is held).
fn forget_expired_registrations(mgr: &Manager, configured: &[String]) {
    let expired = lock(&mgr.registered).expire(now_ms());
    if expired.is_empty() {
        return;
    }
    lock(&mgr.nodes).forget_expired(&expired, configured);
    let shown: Vec<&str> = expired.iter().take(5).map(String::as_str).collect();
    mgr.event(
        "info",
        format!(
            "{} registered daemon(s) expired after {} min without news ({}{})",
            expired.len(),
            crate::registry::REGISTRATION_TTL_MS / 60_000,
            shown.join(", "),
            if expired.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        ),
        None,
        None,
    );
}

/// Finds daemons (config, scan, registrations), records their state, and takes the lease of
/// idle ones while there is work.
async fn daemon_loop(mgr: Arc<Manager>, mut stop: watch::Receiver<bool>) {
    let configured = match rayfarm_master::discovery::candidates(&mgr.cfg.scan, &mgr.cfg.daemons) {
        Ok(c) => c,
        Err(e) => {
            mgr.event("error", format!("bad daemon list: {e}"), None, None);
            Vec::new()
        }
    };
    loop {
        forget_expired_registrations(&mgr, &configured);
        let mut addrs = configured.clone();
        addrs.extend(lock(&mgr.registered).addrs().cloned());
        addrs.sort();
        addrs.dedup();
        let found = rayfarm_master::discovery::scan(&addrs, &mgr.cfg.key).await;
        let work = mgr
            .store
            .call(|s| s.has_queued_tasks())
            .await
            .unwrap_or(false);
        // Which idle daemons' aliases still have a job they may run (not excluded everywhere).
        let mut wanted = BTreeSet::new();
        if work {
            let aliases: Vec<String> = found
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .filter(|i| matches!(i.state, rayfarm_proto::DaemonState::Idle))
                .map(|i| i.alias.clone())
                .collect();
            wanted = mgr
                .store
                .call(move |s| {
                    aliases
                        .into_iter()
                        .filter(|a| s.has_queued_tasks_for(a).unwrap_or(false))
                        .collect::<BTreeSet<String>>()
                })
                .await;
        }
        for (addr, r) in found {
            let answer = match r {
                Err(_) => crate::core::ScanAnswer::NoAnswer,
                Ok(info) => {
                    lock(&mgr.registered).contacted(&addr, now_ms());
                    crate::core::ScanAnswer::Answered {
                        alias: info.alias,
                        threads: info.devices.threads,
                        hardware: crate::core::Hardware {
                            cpu_model: info.devices.cpu_model,
                            cpu_threads: info.devices.cpu_threads,
                            gpus: info.devices.gpus,
                        },
                        state: match info.state {
                            rayfarm_proto::DaemonState::Idle => crate::core::DaemonSeen::Idle,
                            rayfarm_proto::DaemonState::Occupied { master, .. } => {
                                crate::core::DaemonSeen::Occupied { master }
                            }
                            rayfarm_proto::DaemonState::Unhealthy { reason } => {
                                crate::core::DaemonSeen::Unhealthy { reason }
                            }
                        },
                    }
                }
            };
            let registered = lock(&mgr.registered).contains(&addr);
            let take = lock(&mgr.nodes).on_scan(&addr, answer, now_ms(), registered, |alias| {
                wanted.contains(alias)
            });
            if let Some(alias) = take {
                let (m, s) = (mgr.clone(), stop.clone());
                tokio::spawn(async move {
                    let r = rayfarm_master::discovery::hold_lease(
                        &addr,
                        &alias,
                        &m.cfg.key,
                        rayfarm_master::DEFAULT_LEASE_TIMEOUT_MS,
                        &m.cfg.bind,
                        m.worker_port,
                        s,
                    )
                    .await;
                    if let Err(e) = r {
                        tracing::info!("{alias} ({addr}): lease ended: {e}");
                    }
                    lock(&m.nodes).lease_ended(&addr);
                });
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(mgr.cfg.scan_interval) => {}
        }
    }
}

async fn listen_workers(mgr: Arc<Manager>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let key = mgr.cfg.key.clone();
    let mut listener =
        match SecureListener::new(listener, Role::Master, key, ListenLimits::default()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("manager worker port: {e}");
                return;
            }
        };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            conn = listener.accept() => {
                let peer = conn.peer;
                let (mgr, stop) = (mgr.clone(), stop.clone());
                tokio::spawn(async move {
                    if let Err(e) = worker_session(&mgr, conn, stop).await {
                        tracing::warn!("worker {peer}: {e}");
                    }
                });
            }
        }
    }
}

async fn worker_session(
    mgr: &Arc<Manager>,
    mut conn: rayfarm_proto::Conn,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let (alias, threads, peer_port) = match rayfarm_master::recv_skip_heartbeats(
        &mut conn,
        Duration::from_secs(10),
        "waiting for WorkerHello",
    )
    .await
    .map_err(|e| e.to_string())?
    {
        Msg::WorkerHello {
            alias,
            threads,
            peer_port,
            ..
        } => (alias, threads.clamp(1, 4096), peer_port),
        other => return Err(format!("expected WorkerHello, got {}", other.name())),
    };
    let ship = ShipId {
        id: rayfarm_master::distribution::next_peer_id(),
        serve: rayfarm_master::relay_addr(&conn, peer_port),
    };
    let duplicate = {
        let mut s = lock(&mgr.sessions);
        if s.contains_key(&alias) {
            true
        } else {
            s.insert(
                alias.clone(),
                SessionEntry {
                    threads,
                    last_seen_ms: now_ms(),
                    ..Default::default()
                },
            );
            false
        }
    };
    if duplicate {
        let _ = conn
            .send(&Msg::Goodbye {
                reason: format!(
                    "a worker named '{alias}' is already connected; give each node its own alias"
                ),
            })
            .await;
        return Err(format!("duplicate worker alias '{alias}'"));
    }
    mgr.event(
        "info",
        format!("worker '{alias}' connected ({threads} threads)"),
        None,
        Some(&alias),
    );
    let r = session_loop(mgr, &mut conn, &alias, &ship, stop).await;
    lock(&mgr.scene_plan).leave(ship.id);
    lock(&mgr.sessions).remove(&alias);
    // Whatever it held goes back to the queue.
    let lost = {
        let a = alias.clone();
        mgr.store.call(move |s| s.node_lost(&a)).await
    };
    if let Ok(l) = &lost {
        if !l.requeued.is_empty() {
            mgr.event(
                "warn",
                format!(
                    "worker '{alias}' left with {} task(s); requeued",
                    l.requeued.len()
                ),
                None,
                Some(&alias),
            );
        }
    }
    if let Err(e) = &r {
        mgr.event(
            "warn",
            format!("worker '{alias}' lost: {e}"),
            None,
            Some(&alias),
        );
    }
    r
}

/// A worker session's place in the scene distribution plan.
struct ShipId {
    id: rayfarm_master::distribution::PeerId,
    serve: Option<std::net::SocketAddr>,
}

async fn session_loop(
    mgr: &Arc<Manager>,
    conn: &mut rayfarm_proto::Conn,
    alias: &str,
    ship: &ShipId,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut current_job: Option<(String, usize)> = None;
    let mut idle_since = Instant::now();
    loop {
        let next = if *stop.borrow() {
            None
        } else {
            let (a, now) = (alias.to_string(), now_ms());
            mgr.store
                .call(move |s| s.next_task(&a, now))
                .await
                .map_err(|e| e.to_string())?
        };
        let stopping = *stop.borrow();
        let task = match crate::core::session_step(
            next,
            idle_since.elapsed(),
            IDLE_RELEASE,
            stopping,
        ) {
            crate::core::SessionStep::Run(task) => task,
            crate::core::SessionStep::Release { reason }
            | crate::core::SessionStep::Shutdown { reason } => {
                let _ = conn
                    .send(&Msg::Goodbye {
                        reason: reason.into(),
                    })
                    .await;
                return Ok(());
            }
            crate::core::SessionStep::Wait => {
                tokio::select! {
                    _ = stop.changed() => {}
                    m = conn.recv_timeout(Duration::from_millis(500), "idle") => {
                        match m {
                            Ok(Msg::Heartbeat) => touch(mgr, alias, None, None),
                            Ok(Msg::TaskDone { task_id, .. } | Msg::TaskFailed { task_id, .. }) => {
                                tracing::debug!("ignoring a late answer for task {task_id} from {alias}");
                            }
                            Ok(Msg::Goodbye { reason }) => return Err(format!("left: {reason}")),
                            Ok(other) => return Err(format!("unexpected {}", other.name())),
                            Err(rayfarm_proto::ProtoError::Timeout { .. }) => {}
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                }
                continue;
            }
        };
        match run_task(mgr, conn, alias, ship, &task, &mut current_job, &mut stop).await {
            Ok(()) => {}
            Err(TaskErr::Session(e)) => return Err(e),
            Err(TaskErr::Task(e)) => {
                let f = {
                    let (id, a, err) = (task.task_id, alias.to_string(), e.clone());
                    mgr.store.call(move |s| s.task_failed(id, &a, &err)).await
                };
                mgr.event(
                    "error",
                    format!("task '{}' failed on {alias}: {e}", task.name),
                    Some(&task.job_id),
                    Some(alias),
                );
                if let Ok(f) = f {
                    if f.job_status == JobStatus::Failed {
                        mgr.forget_job(&f.job_id);
                        mgr.event(
                            "error",
                            format!("job {} failed", f.job_id),
                            Some(&f.job_id),
                            None,
                        );
                    }
                }
            }
        }
        touch(mgr, alias, None, None);
        idle_since = Instant::now();
    }
}

/// Checks a part a worker reported done: readable, intact (its MAC), and its trailer the
/// checksum the worker reported.
/// Returns the part's size in bytes.
fn verify_part(ctx: &JobCtx, p: &PartDesc, spp: u32, checksum: &[u8]) -> Result<u64, String> {
    // One read: the MAC compared is that of the bytes checked (a part swapped for a 1 TiB
    // sparse file after a first read made a second, unbounded one abort the manager).
    let part = rayfarm_job::parts::read_part_checked(&ctx.job_dir, p, spp, &ctx.seal)
        .map_err(|e| e.to_string())?;
    if part.mac.as_slice() == checksum {
        Ok(part.bytes)
    } else {
        Err("the part's checksum differs from the one the worker reported".to_string())
    }
}

enum TaskErr {
    /// The session is broken: the node is lost.
    Session(String),
    /// This task failed on this node.
    Task(String),
}

fn touch(mgr: &Manager, alias: &str, job: Option<&str>, task: Option<&str>) {
    if let Some(s) = lock(&mgr.sessions).get_mut(alias) {
        s.last_seen_ms = now_ms();
        s.job = job.map(str::to_string);
        s.task = task.map(str::to_string);
    }
}

async fn run_task(
    mgr: &Arc<Manager>,
    conn: &mut rayfarm_proto::Conn,
    alias: &str,
    ship: &ShipId,
    task: &TaskAssignment,
    current_job: &mut Option<(String, usize)>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), TaskErr> {
    let ctx = mgr
        .job_ctx(&task.job_id, &task.job_spec)
        .await
        .map_err(|e| TaskErr::Task(e.to_string()))?;
    let ts: TaskSpec = serde_json::from_str(&task.spec)
        .map_err(|e| TaskErr::Task(format!("bad task spec: {e}")))?;
    let work = part_work(&ctx, ts.part).map_err(TaskErr::Task)?;
    touch(mgr, alias, Some(&task.job_id), Some(&task.name));
    let se = |e: rayfarm_proto::ProtoError| TaskErr::Session(e.to_string());
    let key = (task.job_id.clone(), work.variant);
    if current_job.as_ref() != Some(&key) {
        let blob = {
            let ctx = ctx.clone();
            let scene = work.scene.clone();
            tokio::task::spawn_blocking(move || ctx.scene(&scene))
                .await
                .map_err(|e| TaskErr::Task(e.to_string()))?
                .map_err(|e| TaskErr::Task(e.to_string()))?
        };
        // Whatever the worker had loaded is replaced, even if this fails half way.
        *current_job = None;
        let shipping = rayfarm_master::Shipping {
            plan: &mgr.scene_plan,
            id: ship.id,
            serve: ship.serve,
        };
        rayfarm_master::send_job(
            conn,
            ctx.wire_job_id(work.variant),
            blob.hash,
            &blob.bytes,
            &blob.chunks,
            &work.wire,
            &shipping,
        )
        .await
        .map_err(|e| TaskErr::Session(e.to_string()))?;
        *current_job = Some(key);
    }
    let part = work.part.clone();
    conn.send(&Msg::Task {
        task_id: task.task_id,
        units: work.units,
        part: part.clone(),
    })
    .await
    .map_err(se)?;
    let mut last_seen = Instant::now();
    // Also how soon a cancel or delete reaches the worker.
    let mut renew = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = conn.send(&Msg::Goodbye { reason: "manager shutting down".into() }).await;
                return Err(TaskErr::Session("manager shutting down".into()));
            }
            _ = renew.tick() => {
                let (id, a, now) = (task.task_id, alias.to_string(), now_ms());
                let renewed = mgr.store.call(move |s| s.renew_lease(id, &a, now)).await.is_ok();
                match crate::core::task_tick(last_seen.elapsed(), WORKER_SILENCE_TIMEOUT, renewed) {
                    crate::core::TickStep::Continue => {}
                    crate::core::TickStep::Silent { seconds } => {
                        return Err(TaskErr::Session(format!("silent for {seconds} s")));
                    }
                    crate::core::TickStep::StopTask => {
                    // Canceled, deleted or given to another node: the worker stops it and
                    // writes nothing; any result already on its way is ignored.
                    tracing::info!("task {} is no longer {alias}'s: telling it to stop", task.task_id);
                    conn.send(&Msg::CancelTask { task_id: task.task_id }).await.map_err(se)?;
                    mgr.event("info", format!("task '{}' stopped on {alias}", task.name), Some(&task.job_id), Some(alias));
                    return Ok(());
                    }
                }
            }
            m = conn.recv() => {
                last_seen = Instant::now();
                match m.map_err(se)? {
                    Msg::Heartbeat => touch(mgr, alias, Some(&task.job_id), Some(&task.name)),
                    Msg::TaskDone { task_id, checksum } if task_id == task.task_id => {
                        // Trust, but verify: the part must be readable and intact from here too
                        // (read, decompressed and hashed on a blocking thread).
                        let (c, p, spp) = (ctx.clone(), work.desc.clone(), part.spp);
                        let check = tokio::task::spawn_blocking(move || verify_part(&c, &p, spp, &checksum))
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()));
                        let p = &work.desc;
                        let bytes = match check {
                            Ok(b) => b,
                            Err(e) => return Err(TaskErr::Task(format!("part {}: {e}", p.name))),
                        };
                        {
                            use std::sync::atomic::Ordering::Relaxed;
                            let samples = p.region().pixels() as u64 * part.spp as u64;
                            mgr.stats.samples.fetch_add(samples, Relaxed);
                            mgr.stats.part_bytes.fetch_add(bytes, Relaxed);
                        }
                        let (id, a) = (task.task_id, alias.to_string());
                        match mgr.store.call(move |s| s.task_done(id, &a)).await {
                            Ok(d) if d.job_status == JobStatus::Completed => {
                                drop(d);
                                mgr.forget_job(&task.job_id);
                                mgr.event("info", format!("job {} completed: ready to merge", task.job_id), Some(&task.job_id), None);
                            }
                            Ok(_) => {}
                            Err(e) => tracing::info!("result of task {} not recorded: {e}", task.task_id),
                        }
                        return Ok(());
                    }
                    Msg::TaskFailed { task_id, error } if task_id == task.task_id => {
                        // The worker's words, kept in the database and shown to users.
                        return Err(TaskErr::Task(rayfarm_proto::printable(&error, 4096)));
                    }
                    // The answer to a task that was canceled after the worker finished it.
                    Msg::TaskDone { task_id, .. } | Msg::TaskFailed { task_id, .. } => {
                        tracing::debug!("ignoring a late answer for task {task_id} from {alias}");
                    }
                    Msg::Goodbye { reason } => return Err(TaskErr::Session(format!("left: {reason}"))),
                    other => return Err(TaskErr::Session(format!("unexpected {}", other.name()))),
                }
            }
        }
    }
}

#[cfg(test)]
mod blocked_tests {
    use super::*;
    use crate::store::{JobInfo, JobKind, TaskCounts};

    fn job(status: JobStatus, queued: u64, running: u64) -> JobInfo {
        JobInfo {
            id: "j".into(),
            name: "j".into(),
            kind: JobKind::Bake,
            priority: 0,
            status,
            created_at_ms: 0,
            updated_at_ms: 0,
            error: None,
            tasks: TaskCounts {
                queued,
                running,
                ..TaskCounts::default()
            },
            progress: 0.0,
        }
    }

    fn names(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_job_every_known_node_is_excluded_from_is_blocked() {
        let j = job(JobStatus::Queued, 3, 0);
        let r = blocked_reason(&j, &names(&["a", "b"]), &names(&["a", "b"])).unwrap();
        assert!(
            r.contains("a, b") && r.contains("another node joins"),
            "{r}"
        );
        // One node left that may take it: not blocked.
        assert_eq!(
            blocked_reason(&j, &names(&["a", "b", "c"]), &names(&["a", "b"])),
            None
        );
        // No node at all: blocked, with what to do.
        assert!(blocked_reason(&j, &[], &[])
            .unwrap()
            .contains("rayfarm daemon --manager"));
    }

    #[test]
    fn running_paused_or_finished_jobs_are_not_blocked() {
        let all = names(&["a"]);
        assert_eq!(
            blocked_reason(&job(JobStatus::Active, 2, 1), &all, &all),
            None
        );
        assert_eq!(
            blocked_reason(&job(JobStatus::Paused, 2, 0), &all, &all),
            None
        );
        assert_eq!(
            blocked_reason(&job(JobStatus::Completed, 0, 0), &all, &all),
            None
        );
        assert_eq!(
            blocked_reason(&job(JobStatus::Active, 0, 0), &all, &all),
            None
        );
    }
}
