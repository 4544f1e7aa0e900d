//! `rayfarm worker`, `rayfarm nodes` and the network half of `rayfarm render`.

use anyhow::{anyhow, Context, Result};
use clap::Args;
use rayfarm_node::{config, worker};
use std::path::PathBuf;
use std::time::Duration;

/// Render work units for a master.
///
/// Started by a daemon on a master's request, or by hand:
///
///     RAYFARM_KEY=... rayfarm worker --master 192.168.1.10:21000
///
/// Ctrl-C stops it gracefully: it gives its unfinished units back to the master and exits 0.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct WorkerArgs {
    /// The master to render for, HOST:PORT
    #[arg(long, required_unless_present = "probe")]
    pub master: Option<String>,
    /// Render threads (default: all cores)
    #[arg(long)]
    pub threads: Option<u32>,
    /// Name shown on the master (default: the host name)
    #[arg(long)]
    pub alias: Option<String>,
    /// Scene cache folder (default: ~/.cache/rayfarm/scenes)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Scene cache size limit in MiB
    #[arg(long, default_value_t = 4096)]
    pub cache_max_mb: u64,
    /// Largest scene this worker accepts, in MiB, compressed or decompressed; checked before
    /// anything is allocated for it (default: a quarter of this machine's memory)
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_scene_mb: Option<u64>,
    /// Print `heartbeat` on stdout every second (used by the daemon's watchdog)
    #[arg(long, hide = true)]
    pub heartbeat_stdout: bool,
    /// Do not relay scenes to other workers. By default a worker opens a port (any free one,
    /// on the address it reaches the master from; farm key required) and passes the scene on
    /// to the workers the master names, so the master's uplink carries each scene only about
    /// twice however many nodes join
    #[arg(long)]
    pub no_relay: bool,
    /// Print version and devices as one JSON line and exit (used by the daemon)
    #[arg(long)]
    pub probe: bool,
    /// Where this node mounts the network folder when the path differs from the manager's,
    /// as MANAGER_PATH=LOCAL_PATH (repeatable; also RAYFARM_PATH_MAP="A=B;C=D")
    #[arg(long, value_name = "FROM=TO")]
    pub path_map: Vec<String>,
    /// A network folder (as this node mounts it) the worker may write job parts into
    /// (repeatable; default: the config file's `netdirs`). With none, any job folder whose
    /// job.desc the farm key authenticates
    #[arg(long, value_name = "NETWORK_FOLDER")]
    pub netdir: Vec<PathBuf>,
    /// Configuration file (for the farm key)
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Options shared by commands that find daemons.
#[derive(Args, Debug, Clone, Default)]
pub struct DiscoveryArgs {
    /// Scan this IPv4 range for daemons, e.g. 192.168.1.0/24 (repeatable); nothing is scanned
    /// unless asked
    #[arg(long, value_name = "CIDR")]
    pub scan: Vec<String>,
    /// Use this daemon, HOST[:PORT] (repeatable)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub daemon: Vec<String>,
    /// Configuration file (farm key, daemons, scan ranges)
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// List the daemons found, with their state.
#[derive(Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// Ask this job manager (HOST[:PORT]) for the nodes it knows and what they do
    #[arg(long, visible_alias = "farm", value_name = "HOST:PORT")]
    pub manager: Option<String>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// The runtime of commands whose async side only does IO (a worker renders on rayon threads,
/// `nodes` only asks): two threads are plenty.
fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(2)
}

/// The runtime of a master (`render --network`, `bake --network`, a local render with a live
/// view): each worker's session decodes and merges its results on the runtime's threads, so
/// it has one per core; with a fixed two, two cores would merge for every worker at once.
fn master_runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(std::thread::available_parallelism().map_or(2, |n| n.get().max(2)))
}

fn runtime_with(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn worker(a: WorkerArgs) -> Result<()> {
    if a.probe {
        let report = worker::probe(a.threads);
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let (cfg, _) = config::load(a.config.as_deref()).map_err(|e| anyhow!(e))?;
    let key = config::farm_key(&cfg).map_err(|e| anyhow!(e))?;
    let report = worker::probe(a.threads);
    let wc = worker::WorkerConfig {
        master: a.master.clone().unwrap_or_default(),
        threads: report.devices.threads as usize,
        alias: a.alias.clone().unwrap_or_else(hostname),
        cache_dir: a
            .cache_dir
            .clone()
            .unwrap_or_else(worker::default_cache_dir),
        cache_max_bytes: a.cache_max_mb.saturating_mul(1 << 20),
        max_scene_bytes: a
            .max_scene_mb
            .map(|mb| mb.saturating_mul(1 << 20).min(worker::MAX_SCENE_BYTES))
            .unwrap_or_else(worker::default_max_scene_bytes),
        heartbeat_stdout: a.heartbeat_stdout,
        relay: !a.no_relay,
        key,
        path_map: parse_path_maps(&a.path_map)?,
        netdirs: rayfarm_job::folder::Roots::for_node(if a.netdir.is_empty() {
            &cfg.netdirs
        } else {
            &a.netdir
        })
        .map_err(|e| anyhow!("{e} (from --netdir or the config file's netdirs)"))?,
    };
    let r = runtime()?.block_on(worker::run(wc)).map_err(|e| anyhow!(e));
    // Render threads may still be busy with units that were given back: exit without waiting.
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => Err(e),
    }
}

/// Merges command-line discovery options with the configuration file.
pub fn discovery_targets(d: &DiscoveryArgs, cfg: &config::Config) -> (Vec<String>, Vec<String>) {
    let mut scan = d.scan.clone();
    let mut daemons = d.daemon.clone();
    if scan.is_empty() && daemons.is_empty() {
        scan = cfg.scan.clone();
        daemons = cfg.daemons.clone();
    }
    (scan, daemons)
}

/// `rayfarm nodes` without `--manager`: the daemons found by the given discovery (with
/// `--manager`, main.rs asks the manager instead: [`crate::farm_cmd::manager_nodes`]).
pub fn nodes(a: NodesArgs) -> Result<()> {
    let (cfg, _) = config::load(a.discovery.config.as_deref()).map_err(|e| anyhow!(e))?;
    let (scan, daemons) = discovery_targets(&a.discovery, &cfg);
    if scan.is_empty() && daemons.is_empty() {
        anyhow::bail!("nothing to look at: give --scan CIDR or --daemon HOST[:PORT] (or put `scan`/`daemons` in the config file)");
    }
    let addrs = rayfarm_master::discovery::candidates(&scan, &daemons).map_err(|e| anyhow!(e))?;
    let key = config::farm_key(&cfg).map_err(|e| anyhow!(e))?;
    let found = runtime()?.block_on(rayfarm_master::discovery::scan(&addrs, &key));
    let mut any = false;
    let mut other_keys = Vec::new();
    println!(
        "{:<22} {:<16} {:<9} {:>7}  STATE",
        "ADDRESS", "ALIAS", "VERSION", "THREADS"
    );
    for (addr, r) in found {
        let i = match r {
            Ok(i) => i,
            Err(e) if e.is_wrong_farm_key() => {
                other_keys.push(addr);
                continue;
            }
            Err(_) => continue,
        };
        any = true;
        let state = match &i.state {
            rayfarm_proto::DaemonState::Idle => "idle".to_string(),
            rayfarm_proto::DaemonState::Occupied {
                master,
                since_unix_ms,
            } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                format!(
                    "occupied by {master} for {} s",
                    now.saturating_sub(*since_unix_ms) / 1000
                )
            }
            rayfarm_proto::DaemonState::Unhealthy { reason } => format!("unhealthy: {reason}"),
        };
        println!(
            "{:<22} {:<16} {:<9} {:>7}  {}",
            addr, i.alias, i.version, i.devices.threads, state
        );
    }
    if !any {
        println!("(no daemons answered)");
    }
    for addr in other_keys {
        eprintln!("note: {addr} is a rayfarm daemon with a different farm key (set the same RAYFARM_KEY or config `key` on both machines)");
    }
    Ok(())
}

/// Network options of `rayfarm render`.
#[derive(Args, Debug, Clone, Default)]
pub struct RenderNetworkArgs {
    /// Render over the network with the daemons found by --scan / --daemon and workers started
    /// by hand, plus this machine's cores (unless --no-local)
    #[arg(long)]
    pub network: bool,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// Seconds between scans for daemons
    #[arg(long, default_value_t = 5.0)]
    pub scan_interval: f64,
    /// Use only the daemons with these aliases
    #[arg(long, value_delimiter = ',', value_name = "ALIAS,...")]
    pub nodes: Option<Vec<String>>,
    /// Do not render on this machine's cores
    #[arg(long)]
    pub no_local: bool,
    /// Master port; the next free port is used when it is taken
    #[arg(long, default_value_t = rayfarm_proto::MASTER_PORT)]
    pub master_port: u16,
    /// Address the master port listens on
    #[arg(long, default_value = "0.0.0.0")]
    pub master_bind: String,
    /// How many workers each node, this master included, passes the scene on to. Workers
    /// relay it to each other, so the master's uplink carries it about this many times
    /// however many nodes join; 0 makes the master send it to every worker itself
    #[arg(long, default_value_t = rayfarm_master::distribution::DEFAULT_SCENE_FANOUT,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub scene_fanout: u32,
    /// Hand out no work, this machine's cores included, until N workers have joined (have
    /// the scene and are ready): for a render, or a benchmark, that should start with its
    /// whole farm rather than with the first nodes to be ready
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub wait_for_nodes: usize,
    /// How long --wait-for-nodes holds the work at most, in seconds from the start; then the
    /// render goes on with the workers that joined, and says how many did. 0 waits as long
    /// as it takes
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300,
        requires = "wait_for_nodes"
    )]
    pub wait_timeout: u64,
}

pub struct NetworkRender {
    pub options: rayfarm_master::NetworkOptions,
}

pub fn network_options(a: &RenderNetworkArgs, local_threads: usize) -> Result<NetworkRender> {
    let (cfg, _) = config::load(a.discovery.config.as_deref()).map_err(|e| anyhow!(e))?;
    let key = config::farm_key(&cfg).map_err(|e| anyhow!(e))?;
    let (scan, daemons) = discovery_targets(&a.discovery, &cfg);
    rayfarm_master::discovery::candidates(&scan, &daemons).map_err(|e| anyhow!(e))?;
    if !(0.2..=3600.0).contains(&a.scan_interval) {
        anyhow::bail!("--scan-interval must be between 0.2 and 3600 seconds");
    }
    Ok(NetworkRender {
        options: rayfarm_master::NetworkOptions {
            master_port: a.master_port,
            bind: a.master_bind.clone(),
            scan,
            daemons,
            scan_interval: Duration::from_secs_f64(a.scan_interval),
            nodes: a.nodes.clone(),
            no_local: a.no_local,
            local_threads,
            key,
            lease_timeout_ms: rayfarm_master::DEFAULT_LEASE_TIMEOUT_MS,
            listen: true,
            scene_fanout: a.scene_fanout,
            wait_for_nodes: a.wait_for_nodes,
            wait_timeout: (a.wait_timeout > 0).then(|| Duration::from_secs(a.wait_timeout)),
        },
    })
}

/// Renders over the network (or, with [`rayfarm_master::NetworkOptions::local`], on this
/// machine alone), shown by `live` when given; returns the image or what a stop left.
pub fn run_network(
    nr: NetworkRender,
    scene: rayfarm_master::LocalScene,
    blob: Vec<u8>,
    settings: rayfarm_render::RenderSettings,
    units: Vec<rayfarm_render::WorkUnit>,
    bar: indicatif::ProgressBar,
    live: Option<std::sync::Arc<rayfarm_master::live::LiveView>>,
) -> Result<rayfarm_master::Rendered> {
    let rt = master_runtime()?;
    let start = std::time::Instant::now();
    rt.block_on(async {
        let fut = rayfarm_master::render(
            scene,
            std::sync::Arc::new(blob),
            settings,
            units,
            nr.options,
            live,
            progress_updater(bar, start, "samples"),
        );
        tokio::select! {
            r = fut => r.map_err(|e| anyhow!(e)),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; the daemons are released")),
        }
    })
}

/// The status callback that drives a network job's progress bar, counting `what`.
fn progress_updater(
    bar: indicatif::ProgressBar,
    start: std::time::Instant,
    what: &'static str,
) -> impl Fn(&rayfarm_master::Status) + Send + 'static {
    move |s| {
        bar.set_length(s.samples_total);
        bar.set_position(s.samples_done);
        let live: Vec<_> = s.nodes.iter().filter(|n| n.connected).collect();
        let threads: u32 = live.iter().map(|n| n.threads).sum();
        let secs = start.elapsed().as_secs_f64().max(1e-6);
        bar.set_message(format!(
            "{} nodes, {} threads, {:.1}/{:.1} M {what}, {:.2} M {what}/s",
            live.len(),
            threads,
            s.samples_done as f64 / 1e6,
            s.samples_total as f64 / 1e6,
            s.samples_done as f64 / secs / 1e6
        ));
    }
}

/// Runs a job (render or bake) over the network with a progress bar counting `what`
/// (samples or texel samples); `on_layer` gets each finished layer and may fail the job.
#[allow(clippy::too_many_arguments)]
pub fn run_network_job(
    nr: NetworkRender,
    scene: std::sync::Arc<rayfarm_render::RenderScene>,
    blob: Vec<u8>,
    work: std::sync::Arc<rayfarm_bake::Workload>,
    units: Vec<rayfarm_render::WorkUnit>,
    bar: indicatif::ProgressBar,
    what: &'static str,
    live: Option<std::sync::Arc<rayfarm_master::live::LiveView>>,
    mut on_layer: impl FnMut(usize, rayfarm_render::Film) -> Result<()>,
) -> Result<rayfarm_master::JobEnd> {
    let rt = master_runtime()?;
    let start = std::time::Instant::now();
    let mut failed: Option<anyhow::Error> = None;
    let end = rt.block_on(async {
        let fut = rayfarm_master::run_job(
            scene.into(),
            std::sync::Arc::new(blob),
            work,
            units,
            nr.options,
            live,
            progress_updater(bar, start, what),
            |l, f| {
                if failed.is_none() {
                    if let Err(e) = on_layer(l, f) {
                        failed = Some(e);
                    }
                }
            },
        );
        tokio::select! {
            r = fut => r.map_err(|e| anyhow!(e)),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; the daemons are released")),
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(end),
    }
}

/// Parses `FROM=TO` path maps from flags and from `RAYFARM_PATH_MAP` (`;`-separated).
pub fn parse_path_maps(flags: &[String]) -> Result<Vec<(String, String)>> {
    let env = std::env::var("RAYFARM_PATH_MAP").unwrap_or_default();
    let mut out = Vec::new();
    for m in flags
        .iter()
        .map(String::as_str)
        .chain(env.split(';').filter(|s| !s.trim().is_empty()))
    {
        let Some((from, to)) = m.split_once('=') else {
            anyhow::bail!("path map '{m}' is not FROM=TO (e.g. /mnt/farm=/Volumes/farm)");
        };
        if !from.starts_with('/') || !to.starts_with('/') {
            anyhow::bail!("path map '{m}': both paths must be absolute");
        }
        out.push((from.to_string(), to.to_string()));
    }
    Ok(out)
}
