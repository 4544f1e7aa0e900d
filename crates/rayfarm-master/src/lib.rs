//! The master: finds daemons, leases their nodes, schedules work units over workers and its own
//! cores, and merges the results.
//!
//! Scheduling is dynamic: every node keeps a few units in flight and asks for more as it
//! returns results, so faster nodes take more, a node that appears mid-render helps at once, and
//! a lost node's units go back to the queue. A unit is counted once: only the node it is
//! assigned to may complete it, and a late result from a node already given up is ignored.
//! Results are fixed-point integer sums, so the merged film is bit-identical to a local render
//! whatever node rendered what (see rayfarm-render's `film`). Each result is decoded and merged
//! on the thread that received it (a worker's session on the runtime, a local core's thread),
//! many at once: the scheduler's lock is held only to accept and to count it, and the film has
//! a lock per band of rows (see [`scheduler`]).
//!
//! Long-lived tasks and how they stop: the listener, the discovery loop, each lease holder and
//! each worker session watch one `watch` channel that flips to `true` when the render is done
//! or aborted; lease holders then send `Release`, worker sessions `Goodbye`.

pub mod discovery;
pub mod distribution;
pub mod live;
pub mod scheduler;

use distribution::{Distribution, PeerId, Source};
use rayfarm_bake::Workload;
use rayfarm_proto::scene_chunks::ChunkList;
use rayfarm_proto::{
    connect, FarmKey, ListenLimits, Msg, Role, SecureListener, WireUnit, WireWork,
};
use rayfarm_render::{Film, RenderScene, RenderSettings, WorkUnit};
use scheduler::{NodeId, Scheduler};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A worker silent for this long is considered lost.
pub const WORKER_SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lease timeout asked of daemons: they stop the worker when no heartbeat arrives this long.
pub const DEFAULT_LEASE_TIMEOUT_MS: u64 = 5000;

#[derive(Clone, Debug)]
pub struct NetworkOptions {
    /// First master port to try; the next free one is used when it is taken.
    pub master_port: u16,
    pub bind: String,
    /// CIDR ranges to scan for daemons.
    pub scan: Vec<String>,
    /// Daemons named directly, `HOST[:PORT]`.
    pub daemons: Vec<String>,
    pub scan_interval: Duration,
    /// Use only daemons with these aliases.
    pub nodes: Option<Vec<String>>,
    pub no_local: bool,
    pub local_threads: usize,
    pub key: FarmKey,
    pub lease_timeout_ms: u64,
    /// Open the master port for workers; `false` for a job on this machine's cores alone
    /// (a local render with a live view).
    pub listen: bool,
    /// How many workers each node (the master included) relays the scene to; 0: the master
    /// sends it to every worker itself (see [`distribution`]).
    pub scene_fanout: u32,
    /// Hand out no work (the master's own cores included) until this many workers have
    /// joined; 0 starts at once.
    pub wait_for_nodes: usize,
    /// How long to hold the work for `wait_for_nodes` at most, from the master's start; then
    /// the render goes on with the nodes that joined. `None`: as long as it takes.
    pub wait_timeout: Option<Duration>,
}

impl NetworkOptions {
    /// A job on this machine's `threads` cores only: no port, no daemons.
    pub fn local(threads: usize) -> NetworkOptions {
        NetworkOptions {
            master_port: 0,
            bind: "127.0.0.1".into(),
            scan: Vec::new(),
            daemons: Vec::new(),
            scan_interval: Duration::from_secs(3600),
            nodes: None,
            no_local: false,
            local_threads: threads,
            // Never used: nothing listens or connects.
            key: FarmKey::from_secret(&FarmKey::generate_secret())
                .expect("a generated secret is long enough"),
            lease_timeout_ms: DEFAULT_LEASE_TIMEOUT_MS,
            listen: false,
            scene_fanout: distribution::DEFAULT_SCENE_FANOUT,
            wait_for_nodes: 0,
            wait_timeout: None,
        }
    }
}

/// The master's own copy of the scene for its local cores: ready, or still to be built (the
/// BVH). A scene still to be built is built on the local cores' thread after the master port
/// listens, so workers connect and load the scene while the master builds its own.
pub enum LocalScene {
    Ready(Arc<RenderScene>),
    Build(Box<dyn FnOnce() -> RenderScene + Send>),
}

impl LocalScene {
    /// The scene, built now if it was still to be built.
    pub fn get(self) -> Arc<RenderScene> {
        match self {
            LocalScene::Ready(s) => s,
            LocalScene::Build(build) => {
                let t = Instant::now();
                let s = Arc::new(build());
                tracing::info!(
                    "master's own scene built in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
                s
            }
        }
    }
}

impl From<Arc<RenderScene>> for LocalScene {
    fn from(s: Arc<RenderScene>) -> Self {
        LocalScene::Ready(s)
    }
}

/// How a job ended.
#[derive(Debug)]
pub struct JobEnd {
    /// Each node's share (and why daemons named for the job did no work).
    pub shares: Vec<NodeShare>,
    /// Stopped early (a live view's stop button): the layers that did not finish, with each
    /// pixel's sample count. Empty when every sample is in.
    pub unfinished: Vec<(usize, Film, Vec<u32>)>,
    pub stopped: bool,
}

/// A render's result.
#[derive(Debug)]
pub struct Rendered {
    pub film: Film,
    pub shares: Vec<NodeShare>,
    /// Each pixel's sample count when the render was stopped early; `None` when complete.
    pub counts: Option<Vec<u32>>,
}

impl Rendered {
    /// Linear RGB: the sums over `spp` samples, or over each pixel's own count when stopped.
    pub fn to_rgb(&self, spp: u32) -> Vec<[f32; 3]> {
        match &self.counts {
            None => self.film.to_rgb(spp),
            Some(c) => {
                let r = self.film.region;
                scheduler::preview_of(&self.film, c, r.width().max(r.height()).max(1)).rgb
            }
        }
    }

    /// Samples in the image (all of them unless stopped).
    pub fn samples(&self) -> Option<u64> {
        self.counts
            .as_ref()
            .map(|c| c.iter().map(|&n| u64::from(n)).sum())
    }
}

/// One node's part of the render.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeShare {
    pub name: String,
    pub threads: u32,
    pub samples: u64,
    pub connected: bool,
    /// Why a daemon this render was told about did no work (occupied, unhealthy, no answer,
    /// another farm key, a refused lease); `None` for nodes that worked.
    pub problem: Option<String>,
}

/// A snapshot for progress display.
#[derive(Clone, Debug)]
pub struct Status {
    pub samples_done: u64,
    pub samples_total: u64,
    pub nodes: Vec<NodeShare>,
    pub master_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot open a master port in {first}..{last}: {why}")]
    NoPort { first: u16, last: u16, why: String },
    #[error(transparent)]
    BadUnit(#[from] rayfarm_bake::WorkloadError),
    #[error("{0}")]
    Other(String),
}

/// Why a session with a worker or a daemon ended; each variant keeps the peer (inside the
/// channel's error) or names the message at fault.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Channel(#[from] rayfarm_proto::ProtoError),
    #[error("expected {expected}, got {got}")]
    Expected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("silent for {0} s")]
    Silent(u64),
    #[error(transparent)]
    BadResult(#[from] rayfarm_proto::WireError),
    #[error("left: {0}")]
    Left(String),
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    #[error("{addr}: unexpected {got}")]
    DaemonAnswer { addr: String, got: &'static str },
}

impl SessionError {
    /// Whether the channel handshake failed because the peer holds another farm key.
    pub fn is_wrong_farm_key(&self) -> bool {
        // The channel's error says so only in its text (see rayfarm_proto::connect).
        matches!(self, SessionError::Channel(e) if e.to_string().contains("wrong farm key"))
    }
}

struct Job {
    job_id: u64,
    scene_hash: [u8; 32],
    blob: Arc<Vec<u8>>,
    chunks: ChunkList,
    work: WireWork,
    /// When the master started, for the "joined after" figure.
    started: Instant,
    /// Who sends the scene to whom.
    plan: Mutex<Distribution>,
    shipping: Mutex<ShippingStats>,
    /// Unit results received from workers, and their bytes of sums.
    results: std::sync::atomic::AtomicU64,
    result_bytes: std::sync::atomic::AtomicU64,
    /// The most pixels any unit of the job has (bounds what a worker may send).
    max_unit_pixels: usize,
}

/// How the scene reached the workers that needed it, for the end-of-job line.
#[derive(Debug, Default)]
struct ShippingStats {
    fetched: u32,
    through_relays: u32,
    master_bytes: u64,
    last_ready_s: f64,
}

/// Binds the first free port from `first` on; returns the listener and the port.
pub async fn bind_master_port(bind: &str, first: u16) -> Result<(TcpListener, u16), MasterError> {
    let last = first.saturating_add(100);
    let mut why = String::new();
    for port in first..=last {
        match TcpListener::bind((bind, port)).await {
            Ok(l) => return Ok((l, port)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                why = e.to_string();
                break;
            }
        }
    }
    Err(MasterError::NoPort {
        first,
        last,
        why: if why.is_empty() {
            "all ports are taken".into()
        } else {
            why
        },
    })
}

/// Renders `units` with the local cores and every worker that joins, returning the film (or
/// what was done, when a live view stopped it) and each node's share. `on_status` is called
/// about twice a second.
pub async fn render(
    scene: LocalScene,
    blob: Arc<Vec<u8>>,
    settings: RenderSettings,
    units: Vec<WorkUnit>,
    opts: NetworkOptions,
    live: Option<Arc<live::LiveView>>,
    on_status: impl Fn(&Status) + Send + 'static,
) -> Result<Rendered, MasterError> {
    let (w, h) = (settings.width, settings.height);
    let work = Arc::new(Workload::Render(settings));
    let mut film = None;
    let end = run_job(scene, blob, work, units, opts, live, on_status, |_, f| {
        film = Some(f)
    })
    .await?;
    if let Some((_, f, counts)) = end.unfinished.into_iter().next() {
        return Ok(Rendered {
            film: f,
            shares: end.shares,
            counts: Some(counts),
        });
    }
    let film = match film {
        Some(f) => f,
        // Stopped before any result: an empty (black) image.
        None if end.stopped => {
            return Ok(Rendered {
                film: Film::new(w, h),
                shares: end.shares,
                counts: Some(vec![0; w as usize * h as usize]),
            });
        }
        None => {
            return Err(MasterError::Other(
                "the render finished without a film".into(),
            ))
        }
    };
    Ok(Rendered {
        film,
        shares: end.shares,
        counts: None,
    })
}

/// How long a stopped job waits for the units in flight before it ends without them.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs a job's `units` (a render or a bake) with the local cores and every worker that
/// joins; `on_layer(layer, film)` receives each layer's film as soon as it is complete.
/// A `live` view sees the job converge and may stop it early.
#[allow(clippy::too_many_arguments)]
pub async fn run_job(
    scene: LocalScene,
    blob: Arc<Vec<u8>>,
    work: Arc<Workload>,
    units: Vec<WorkUnit>,
    opts: NetworkOptions,
    live: Option<Arc<live::LiveView>>,
    on_status: impl Fn(&Status) + Send + 'static,
    mut on_layer: impl FnMut(usize, Film),
) -> Result<JobEnd, MasterError> {
    for u in &units {
        work.check_unit(u)?;
    }
    // A job without a port ships its scene to nobody (a local render with a live view).
    let scene_hash = if opts.listen {
        rayfarm_scene::blob::content_hash(&blob).map_err(|e| MasterError::Other(e.to_string()))?
    } else {
        [0; 32]
    };
    let (listener, port) = if opts.listen {
        let (listener, port) = bind_master_port(&opts.bind, opts.master_port).await?;
        if port != opts.master_port {
            tracing::warn!("master port {} is taken; using {port}", opts.master_port);
            eprintln!(
                "note: master port {} is taken; using port {port}",
                opts.master_port
            );
        }
        tracing::info!("master listening on {}:{port}", opts.bind);
        (Some(listener), port)
    } else {
        (None, 0)
    };
    let wire = WireWork::from_workload(&work);
    let chunks = if opts.listen {
        let b = blob.clone();
        tokio::task::spawn_blocking(move || {
            ChunkList::of(&b, rayfarm_proto::SCENE_CHUNK_BYTES as u32)
        })
        .await
        .map_err(|e| MasterError::Other(e.to_string()))?
    } else {
        ChunkList::of(&[], rayfarm_proto::SCENE_CHUNK_BYTES as u32)
    };
    let job = Arc::new(Job {
        // Tells a worker's stale results (from an earlier job of a reused connection) apart.
        job_id: rayfarm_render::sampler::mix64(
            u64::from_le_bytes(scene_hash[..8].try_into().unwrap_or_default())
                ^ u64::from_le_bytes(wire.digest()[..8].try_into().unwrap_or_default()),
        ),
        scene_hash,
        blob,
        chunks,
        work: wire,
        started: Instant::now(),
        plan: Mutex::new(Distribution::new(opts.scene_fanout)),
        shipping: Mutex::new(ShippingStats::default()),
        results: Default::default(),
        result_bytes: Default::default(),
        max_unit_pixels: units.iter().map(|u| u.pixels()).max().unwrap_or(0),
    });
    let layers = (0..work.layer_count())
        .map(|l| {
            work.layer(l)
                .map(|(r, _)| r)
                .unwrap_or(rayfarm_render::film::Region::full(0, 0))
        })
        .collect();
    let mut scheduler = Scheduler::new(layers, units);
    // Test-only switch (builds with the `test-switches` feature): the least time before a unit
    // is stale, in seconds.
    if let Some(secs) = std::env::var("RAYFARM_TEST_STALE_SECS")
        .ok()
        .filter(|_| cfg!(feature = "test-switches"))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
    {
        scheduler.set_min_stale(Duration::from_secs_f64(secs));
    }
    let sched = Arc::new(Mutex::new(scheduler));
    if opts.wait_for_nodes > 0 {
        sched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait_for_nodes(
                opts.wait_for_nodes,
                opts.wait_timeout.map(|t| job.started + t),
            );
        eprintln!(
            "holding the render until {} worker(s) have joined",
            opts.wait_for_nodes
        );
    }
    let mut waiting = opts.wait_for_nodes > 0;
    let (stop_tx, stop_rx) = watch::channel(false);

    if let Some(live) = &live {
        sched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .track_progress();
        live.attach(sched.clone());
    }
    // Workers connecting to the master port.
    if let Some(listener) = listener {
        let (sched, job, key, stop) = (
            sched.clone(),
            job.clone(),
            opts.key.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move { listen(listener, sched, job, key, stop).await });
    }
    // Daemons: discovery and leases.
    let unavailable = discovery::Unavailable::default();
    if !opts.scan.is_empty() || !opts.daemons.is_empty() {
        let (opts, stop, u) = (opts.clone(), stop_rx.clone(), unavailable.clone());
        tokio::spawn(async move { discovery::lease_loop(opts, port, stop, u).await });
    }
    // Local cores.
    let local = if opts.no_local {
        None
    } else {
        let (sched, stop) = (sched.clone(), stop_rx.clone());
        let threads = opts.local_threads.max(1);
        let work = work.clone();
        Some(tokio::task::spawn_blocking(move || {
            // Built here, after the port listens (workers need only the blob).
            let scene = scene.get();
            local_render(sched, scene, work, threads, stop)
        }))
    };

    // Check for completion often (the render's end should not wait for a display tick);
    // report status about twice a second.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last_report = Instant::now() - Duration::from_secs(1);
    let stop_asked = live.as_ref().map(|l| l.stop_requested());
    let mut stopped_at: Option<Instant> = None;
    let mut last_reclaim = Instant::now();
    let shares = loop {
        tick.tick().await;
        if stopped_at.is_none() && stop_asked.as_ref().is_some_and(|r| *r.borrow()) {
            sched.lock().unwrap_or_else(|p| p.into_inner()).stop();
            if let Some(l) = &live {
                l.stopping();
            }
            eprintln!("stopping: no more work goes out; waiting for the units in flight");
            stopped_at = Some(Instant::now());
        }
        let (status, finished, layers_done) = {
            let mut s = sched.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((joined, wanted)) = s.wait_expired(Instant::now()) {
                waiting = false;
                eprintln!(
                    "warning: only {joined} of {wanted} worker(s) joined within {:.0} s \
                     (--wait-timeout); rendering with them",
                    opts.wait_timeout.unwrap_or_default().as_secs_f64()
                );
            }
            if waiting && s.waiting_for_nodes().is_none() {
                waiting = false;
                eprintln!(
                    "{} worker(s) joined; rendering {:.2} s after the master started",
                    opts.wait_for_nodes,
                    job.started.elapsed().as_secs_f64()
                );
            }
            let now = Instant::now();
            if now.duration_since(last_reclaim) >= Duration::from_secs(1) {
                last_reclaim = now;
                let n = s.reclaim_stale(now);
                if n > 0 {
                    eprintln!(
                        "note: {n} unit(s) out for more than {:.0} s go to other nodes too \
                         (the first result counts)",
                        s.stale_after().as_secs_f64()
                    );
                }
            }
            let layers_done = s.take_finished();
            (s.status(port), s.finished(), layers_done)
        };
        for (l, f) in layers_done {
            if let Some(live) = &live {
                let r = f.region;
                let full = vec![work.layer(l).map_or(1, |(_, spp)| spp); r.pixels()];
                live.layer_finished(
                    l as u32,
                    scheduler::preview_of(&f, &full, live::PREVIEW_MAX_EDGE),
                );
            }
            on_layer(l, f);
        }
        let grace_over = stopped_at.is_some_and(|t| t.elapsed() >= STOP_GRACE);
        if finished || grace_over || last_report.elapsed() >= Duration::from_millis(500) {
            on_status(&status);
            if let Some(l) = &live {
                l.update(&status);
            }
            last_report = Instant::now();
        }
        if finished || grace_over {
            // The shares as the render ends: a node counts as having left only if it left
            // before the end, not because the sessions below are closed.
            break status.nodes;
        }
    };
    let _ = stop_tx.send(true);
    if let Some(l) = local {
        let _ = l.await;
    }
    // Give sessions a moment to say goodbye and leases to be released.
    tokio::time::sleep(Duration::from_millis(100)).await;
    report_traffic(&job);
    let mut shares = shares;
    for (addr, (name, why)) in unavailable.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        shares.push(NodeShare {
            name: format!("{name} ({addr})"),
            threads: 0,
            samples: 0,
            connected: false,
            problem: Some(why.clone()),
        });
    }
    let (unfinished, stopped) = {
        let mut s = sched.lock().unwrap_or_else(|p| p.into_inner());
        (s.take_unfinished(), s.is_stopped())
    };
    if let Some(l) = &live {
        let last = unfinished.first().map(|(layer, f, c)| {
            (
                *layer as u32,
                scheduler::preview_of(f, c, live::PREVIEW_MAX_EDGE),
            )
        });
        l.finish(stopped, last, &shares);
    }
    Ok(JobEnd {
        shares,
        unfinished: if stopped { unfinished } else { Vec::new() },
        stopped,
    })
}

fn local_render(
    sched: Arc<Mutex<Scheduler>>,
    scene: Arc<RenderScene>,
    work: Arc<Workload>,
    threads: usize,
    stop: watch::Receiver<bool>,
) {
    let node = sched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add_node(scheduler::LOCAL_NODE.into(), threads as u32);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if *stop.borrow() {
                    return;
                }
                let unit = {
                    let mut g = sched.lock().unwrap_or_else(|p| p.into_inner());
                    if g.finished() {
                        return;
                    }
                    let limit = g.join_limit();
                    g.take_joined(node, limit)
                };
                match unit {
                    Some(u) => {
                        let r = work.run_unit(&scene, &u);
                        scheduler::merge(&sched, node, &r);
                    }
                    // Everything is handed out; wait in case a remote node is lost.
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            });
        }
    });
    sched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .node_lost(node);
}

async fn listen(
    listener: TcpListener,
    sched: Arc<Mutex<Scheduler>>,
    job: Arc<Job>,
    key: FarmKey,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener =
        match SecureListener::new(listener, Role::Master, key, ListenLimits::default()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("master port: {e}");
                return;
            }
        };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            conn = listener.accept() => {
                let peer = conn.peer;
                let (sched, job, stop) = (sched.clone(), job.clone(), stop.clone());
                tokio::spawn(async move {
                    if let Err(e) = worker_session(conn, sched, job, stop).await {
                        tracing::warn!("worker {peer}: {e}");
                    }
                });
            }
        }
    }
}

/// How one worker's session takes part in scene distribution.
pub struct Shipping<'a> {
    /// The plan shared by every session of this master or manager.
    pub plan: &'a Mutex<Distribution>,
    /// This session's id in the plan.
    pub id: PeerId,
    /// Where the worker relays scenes to others (its address and `WorkerHello::peer_port`).
    pub serve: Option<std::net::SocketAddr>,
}

impl Shipping<'_> {
    fn plan(&self) -> std::sync::MutexGuard<'_, Distribution> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The relay address a worker announced: the address it connected from, at its peer port.
pub fn relay_addr(conn: &rayfarm_proto::Conn, peer_port: u16) -> Option<std::net::SocketAddr> {
    (peer_port != 0).then(|| std::net::SocketAddr::new(conn.peer.ip(), peer_port))
}

/// How a worker got its scene.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shipped {
    /// From its own cache.
    Cached,
    /// Fetched: `master_bytes` of it from the master, the rest from `relay`.
    Fetched {
        master_bytes: u64,
        relay: Option<std::net::SocketAddr>,
    },
}

/// Sends a worker its job and, when its cache lacks the scene, where to fetch it (the plan's
/// choice: this master, or a relaying worker) and the chunk hashes; the master sends chunks
/// itself to workers it feeds and to any whose relay fails (`NeedChunks`). Returns once the
/// worker is `Ready`.
#[allow(clippy::too_many_arguments)]
pub async fn send_job(
    conn: &mut rayfarm_proto::Conn,
    job_id: u64,
    scene_hash: [u8; 32],
    blob: &[u8],
    chunks: &ChunkList,
    work: &WireWork,
    ship: &Shipping<'_>,
) -> Result<Shipped, SessionError> {
    conn.send(&Msg::Job {
        job_id,
        scene_hash,
        scene_bytes: blob.len() as u64,
        work: work.clone(),
    })
    .await?;
    let loading = "waiting for the worker to load the scene";
    match recv_skip_heartbeats(conn, Duration::from_secs(120), loading).await? {
        Msg::Ready => {
            ship.plan().join_complete(scene_hash, ship.id, ship.serve);
            Ok(Shipped::Cached)
        }
        Msg::NeedScene => {
            let source = ship.plan().join(scene_hash, ship.id, ship.serve);
            let relay = match source {
                Source::Master => None,
                Source::Peer { addr, .. } => Some(addr),
            };
            conn.send(&Msg::SceneSource {
                chunk_bytes: chunks.chunk_bytes,
                chunk_hashes: chunks.hashes.clone(),
                peer: relay.map(|a| a.to_string()),
            })
            .await?;
            let mut master_bytes = 0;
            if relay.is_none() {
                master_bytes += send_chunks(conn, blob, chunks, 0).await?;
            }
            loop {
                match recv_skip_heartbeats(conn, Duration::from_secs(600), loading).await? {
                    Msg::Ready => {
                        return Ok(Shipped::Fetched {
                            master_bytes,
                            relay,
                        })
                    }
                    Msg::NeedChunks { from_chunk } if from_chunk < chunks.count() => {
                        tracing::info!(
                            "worker {}: its relay failed; sending the scene from chunk {from_chunk} on",
                            conn.peer
                        );
                        ship.plan().fell_back(scene_hash, ship.id);
                        master_bytes += send_chunks(conn, blob, chunks, from_chunk).await?;
                    }
                    other => {
                        return Err(SessionError::Expected {
                            expected: "Ready or NeedChunks (for a chunk of the scene)",
                            got: other.name(),
                        })
                    }
                }
            }
        }
        other => Err(SessionError::Expected {
            expected: "Ready or NeedScene",
            got: other.name(),
        }),
    }
}

/// Sends the scene's chunks from `first` on; returns the bytes sent.
async fn send_chunks(
    conn: &mut rayfarm_proto::Conn,
    blob: &[u8],
    chunks: &ChunkList,
    first: u32,
) -> Result<u64, SessionError> {
    let mut sent = 0;
    for i in first..chunks.count() {
        let offset = chunks.offset(i);
        let data = blob[offset as usize..offset as usize + chunks.len_of(i)].to_vec();
        sent += data.len() as u64;
        conn.send(&Msg::SceneChunk { offset, data }).await?;
    }
    Ok(sent)
}

/// Logs how the scene reached the workers and what their results cost on the wire.
fn report_traffic(job: &Job) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = job.shipping.lock().unwrap_or_else(|p| p.into_inner());
    if s.fetched > 0 {
        let line = format!(
            "scene distribution: {} worker(s) fetched the scene ({} through relays); the master sent {} bytes ({:.2} copies); the last was ready {:.2} s after the master started",
            s.fetched,
            s.through_relays,
            s.master_bytes,
            s.master_bytes as f64 / job.blob.len().max(1) as f64,
            s.last_ready_s
        );
        eprintln!("{line}");
    }
    let (n, bytes) = (job.results.load(Relaxed), job.result_bytes.load(Relaxed));
    if n > 0 {
        tracing::info!(
            "results: {n} unit results from workers, {bytes} bytes of sums ({:.0} bytes per result)",
            bytes as f64 / n as f64
        );
    }
}

/// Receives the next message that is not a heartbeat, within `t` overall.
pub async fn recv_skip_heartbeats(
    conn: &mut rayfarm_proto::Conn,
    t: Duration,
    what: &str,
) -> Result<Msg, SessionError> {
    let deadline = Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left, what).await? {
            Msg::Heartbeat => continue,
            m => return Ok(m),
        }
    }
}

/// Completes once `stop` says the render ended (or its sender is gone).
async fn render_ended(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Serves one worker for the whole render; on any error its units are requeued.
async fn worker_session(
    mut conn: rayfarm_proto::Conn,
    sched: Arc<Mutex<Scheduler>>,
    job: Arc<Job>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let peer = conn.peer;
    let (alias, threads, peer_port) = match recv_skip_heartbeats(
        &mut conn,
        Duration::from_secs(10),
        "waiting for WorkerHello",
    )
    .await?
    {
        Msg::WorkerHello {
            alias,
            threads,
            peer_port,
            ..
        } => (alias, threads.clamp(1, 4096), peer_port),
        other => {
            return Err(SessionError::Expected {
                expected: "WorkerHello",
                got: other.name(),
            })
        }
    };
    // The alias is the worker's to choose: printed safely, and short (the scheduler keeps it
    // for the whole render and copies it into every status).
    let name = format!(
        "{} ({peer})",
        rayfarm_proto::printable(&alias, rayfarm_proto::MAX_PRINTED_ALIAS)
    );
    let t0 = Instant::now();
    // The render may end while this worker still receives or loads the scene (at scale,
    // shipping can take longer than rendering): then it is told so, instead of finding a
    // broken pipe (regression: such a worker exited 1).
    let ship = Shipping {
        plan: &job.plan,
        id: distribution::next_peer_id(),
        serve: relay_addr(&conn, peer_port),
    };
    let shipped = tokio::select! {
        r = send_job(&mut conn, job.job_id, job.scene_hash, &job.blob, &job.chunks, &job.work, &ship) => Some(r),
        _ = render_ended(&mut stop) => None,
    };
    let result = serve_worker(
        &mut conn, shipped, &sched, &job, &name, threads, t0, &mut stop,
    )
    .await;
    ship.plan().leave(ship.id);
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve_worker(
    conn: &mut rayfarm_proto::Conn,
    shipped: Option<Result<Shipped, SessionError>>,
    sched: &Arc<Mutex<Scheduler>>,
    job: &Job,
    name: &str,
    threads: u32,
    t0: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let Some(sent) = shipped else {
        let _ = conn
            .send(&Msg::Goodbye {
                reason: "the render is complete".into(),
            })
            .await;
        return Ok(());
    };
    match sent? {
        Shipped::Fetched {
            master_bytes,
            relay,
        } => {
            let via = match relay {
                Some(r) => format!("relayed by {r}; {master_bytes} bytes from the master"),
                None => format!("{master_bytes} bytes from the master"),
            };
            tracing::info!(
                "{name}: scene sent ({} bytes, {via}), ready after {:.2} s",
                job.blob.len(),
                t0.elapsed().as_secs_f64()
            );
            let mut s = job.shipping.lock().unwrap_or_else(|p| p.into_inner());
            s.fetched += 1;
            s.through_relays += u32::from(relay.is_some());
            s.master_bytes += master_bytes;
            s.last_ready_s = s.last_ready_s.max(job.started.elapsed().as_secs_f64());
        }
        Shipped::Cached => tracing::info!(
            "{name}: scene cached, ready after {:.2} s",
            t0.elapsed().as_secs_f64()
        ),
    }
    let node = sched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add_node(name.to_string(), threads);
    eprintln!(
        "node joined: {name}, {threads} threads, rendering {:.3} s after the master started",
        job.started.elapsed().as_secs_f64()
    );
    // Ready: from now on it sends results, as large as the job's largest unit needs (until
    // now its messages were control messages, [`rayfarm_proto::MAX_CONTROL_MESSAGE_BYTES`]).
    conn.set_max_message_bytes(rayfarm_proto::max_worker_message_bytes(
        job.max_unit_pixels,
        threads,
    ));
    let result = session_loop(conn, sched, job, node, name, threads, stop).await;
    sched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .node_lost(node);
    if let Err(e) = &result {
        eprintln!("node lost: {name}: {e}; its units go to other nodes");
    }
    result
}

async fn session_loop(
    conn: &mut rayfarm_proto::Conn,
    sched: &Arc<Mutex<Scheduler>>,
    job: &Job,
    node: NodeId,
    name: &str,
    threads: u32,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let target = (threads as usize * 2).max(2);
    let mut mine: HashSet<WireUnit> = HashSet::new();
    let mut last_seen = Instant::now();
    // Results for units this node was not given (a duplicate, or a misbehaving worker).
    let mut ignored = 0u64;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        // Top up this node's units.
        let mut fresh = Vec::new();
        {
            let mut s = sched.lock().unwrap_or_else(|p| p.into_inner());
            while mine.len() + fresh.len() < target {
                let limit = s.join_limit();
                match s.take_joined(node, limit) {
                    Some(u) => fresh.push(WireUnit::from(u)),
                    None => break,
                }
            }
        }
        if !fresh.is_empty() {
            mine.extend(fresh.iter().copied());
            conn.send(&Msg::Assign { units: fresh }).await?;
        }
        tokio::select! {
            _ = stop.changed() => {
                let _ = conn.send(&Msg::Goodbye { reason: "render complete".into() }).await;
                return Ok(());
            }
            _ = check.tick() => {
                if last_seen.elapsed() > WORKER_SILENCE_TIMEOUT {
                    return Err(SessionError::Silent(WORKER_SILENCE_TIMEOUT.as_secs()));
                }
            }
            msg = conn.recv() => {
                let msg = msg?;
                last_seen = Instant::now();
                match msg {
                    Msg::Heartbeat => {}
                    Msg::UnitDone { unit, sums, nonfinite } => {
                        if !mine.remove(&unit) {
                            // At most one line per doubling of the count: a worker sending such
                            // results in a loop cannot flood the log.
                            ignored += 1;
                            if ignored.is_power_of_two() {
                                tracing::warn!(
                                    "{name}: ignoring a result for a unit not assigned to this node ({ignored} so far): {unit:?}"
                                );
                            }
                            continue;
                        }
                        job.results.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        job.result_bytes.fetch_add(sums.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let r = rayfarm_proto::decode_sums(&unit, &sums, nonfinite)?;
                        scheduler::merge(sched, node, &r);
                    }
                    Msg::GiveBack { units } => {
                        let mut given = 0;
                        let mut s = sched.lock().unwrap_or_else(|p| p.into_inner());
                        for u in units {
                            if mine.remove(&u) {
                                s.give_back(node, u.into());
                                given += 1;
                            }
                        }
                        if given > 0 {
                            eprintln!("node {name} gave back {given} unit(s); they go to other nodes");
                        }
                    }
                    Msg::Goodbye { reason } => return Err(SessionError::Left(reason)),
                    other => return Err(SessionError::Unexpected(other.name())),
                }
            }
        }
    }
}

/// Asks one daemon who it is (over the farm channel: a daemon answers only holders of its key).
pub async fn query_daemon(
    addr: &str,
    key: &FarmKey,
    timeout: Duration,
) -> Result<rayfarm_proto::DaemonInfo, SessionError> {
    let mut c = connect(addr, Role::Master, key, timeout).await?;
    // A daemon's answer is a few hundred bytes: a fake one holding the key must not make this
    // side decode 32 MiB of one-byte strings (about 800 MB as Rust strings).
    c.set_max_message_bytes(rayfarm_proto::MAX_CONTROL_MESSAGE_BYTES);
    c.send(&Msg::Discover).await?;
    match c
        .recv_timeout(
            timeout.max(Duration::from_secs(2)),
            "waiting for the daemon's answer",
        )
        .await?
    {
        Msg::DaemonInfo(i) => Ok(i.printable()),
        other => Err(SessionError::DaemonAnswer {
            addr: addr.to_string(),
            got: other.name(),
        }),
    }
}

#[cfg(test)]
mod listen_first_tests {
    use super::*;
    use rayfarm_render::film::plan_units;

    /// Issue "From a few machines to a few hundred": the master port listens before the
    /// master has built its own scene (the BVH), so workers can start loading at once. The
    /// build here waits until a connection to the port succeeded; if the port opened only
    /// after the build, the connection would never come and the test would fail after 10 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_master_listens_before_its_own_scene_is_built() {
        let mut scene = rayfarm_scene::CompiledScene::default();
        let m = scene.add_material(Default::default());
        scene.add_sphere("ball", glam::Vec3::ZERO, 1.0, 8, 16, m);
        scene.environment = rayfarm_scene::Environment::Color([1.0; 3]);
        let camera = rayfarm_scene::camera::auto_camera(&scene, 1.0);
        let blob = Arc::new(rayfarm_scene::blob::encode(&scene));
        let settings = RenderSettings {
            width: 8,
            height: 8,
            spp: 2,
            max_bounces: 1,
            seed: 1,
            camera,
        };
        let units = plan_units(8, 8, 2, 8, 2);
        let mut opts = NetworkOptions::local(1);
        opts.listen = true;
        opts.bind = "127.0.0.93".into();
        opts.master_port = 21900;
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let build = move || {
            wait.recv_timeout(Duration::from_secs(10))
                .expect("nothing connected to the master port while its scene was not built");
            RenderScene::new(scene)
        };
        let job = tokio::spawn(render(
            LocalScene::Build(Box::new(build)),
            blob,
            settings,
            units,
            opts,
            None,
            |_| {},
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect("127.0.0.93:21900")
                .await
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "the master port never opened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        go.send(()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(30), job)
            .await
            .expect("the render did not end")
            .unwrap()
            .unwrap();
        assert_eq!(r.film.region.width(), 8);
        assert!(r.counts.is_none());
    }
}
