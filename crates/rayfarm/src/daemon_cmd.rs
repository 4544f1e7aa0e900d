//! `rayfarm daemon`, `rayfarm daemon install` and `rayfarm key generate`.
//!
//! `daemon` merges flags over the config file's `[daemon]` section and runs
//! [`rayfarm_node::daemon`] on its own tokio runtime until SIGTERM or Ctrl-C. `daemon install`
//! only writes files (the config and a systemd unit), so it works where systemd is absent; its
//! questions are asked by [`ask`], which reads any `BufRead` so tests can script the answers.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rayfarm_node::config::{self, Config, CONFIG_VERSION};
use rayfarm_node::daemon::{self, DaemonOptions};
use rayfarm_proto::{FarmKey, DAEMON_PORT};
use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Run this machine's render-node daemon, or install it as a service.
///
/// The daemon answers discovery from masters on the LAN and, when a master holding the farm key
/// asks, starts a worker (`rayfarm worker`) that renders for it; it watches the worker's health
/// and stops it when the master releases the node or goes away. Flags override the config
/// file's [daemon] section. The farm key comes from RAYFARM_KEY, else the config file's `key`.
///
/// Examples:
///   rayfarm daemon
///   rayfarm daemon --threads 8 --alias render-07 --max-memory 16000
///   sudo rayfarm daemon install --port 48000 --threads all --yes
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct DaemonArgs {
    #[command(subcommand)]
    pub action: Option<DaemonAction>,
    #[command(flatten)]
    pub run: DaemonRunArgs,
}

#[derive(Subcommand, Debug)]
pub enum DaemonAction {
    Install(InstallArgs),
}

#[derive(Args, Debug)]
pub struct DaemonRunArgs {
    /// Port to listen on (default: the config's daemon.port, else 48000)
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Address to listen on (default: the config's daemon.bind, else 0.0.0.0, every interface,
    /// so that masters on the LAN can find this node)
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// Name shown to masters (default: the config's daemon.alias, else the host name)
    #[arg(long)]
    pub alias: Option<String>,
    /// Threads the worker renders with (default: the config's daemon.threads, else all)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,
    /// Kill the worker when its resident memory exceeds this many MB (default: the config's
    /// daemon.max_memory_mb, else no limit)
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_memory: Option<u64>,
    /// Largest scene the node's worker accepts, in MiB (default: a quarter of this machine's
    /// memory); a master offering a larger one is refused before anything is allocated
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_scene_mb: Option<u64>,
    /// Config file (default: $RAYFARM_CONFIG, ~/.config/rayfarm/config.toml, /etc/rayfarm/config.toml)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Register with this job manager (HOST[:PORT]) so it finds this node without a scan
    #[arg(long, value_name = "HOST:PORT")]
    pub manager: Option<String>,
    /// Where this node mounts the network folder when the path differs from the manager's,
    /// as MANAGER_PATH=LOCAL_PATH (repeatable; passed to the workers)
    #[arg(long, value_name = "FROM=TO")]
    pub path_map: Vec<String>,
    /// A network folder (as this node mounts it) the node's workers may write job parts into
    /// (repeatable; default: the config file's `netdirs`; passed to the workers)
    #[arg(long, value_name = "NETWORK_FOLDER")]
    pub netdir: Vec<PathBuf>,
    /// Serve Prometheus metrics (state, leases, workers started and failed) at
    /// http://ADDR:PORT/metrics; beyond loopback scrapers must send the farm's API token
    /// (`rayfarm key api-token`)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
}

/// Write the config file and a systemd unit that runs the daemon at boot.
///
/// Asks for what the flags leave open when standard input is a terminal; otherwise the
/// defaults are used. Keeps the existing config file's other settings and farm key, and
/// generates a key if it has none. Only writes files: enabling the service is up to you
/// (the command to do so is printed).
///
/// Examples:
///   sudo rayfarm daemon install
///   rayfarm daemon install --port 48000 --threads 8 --yes
#[derive(Args, Debug, Clone, Default)]
#[command(verbatim_doc_comment)]
pub struct InstallArgs {
    /// Port the daemon listens on, 1024-65535
    #[arg(long, value_parser = parse_port)]
    pub port: Option<u16>,
    /// Threads the worker renders with: `all` or a number
    #[arg(long, value_name = "N|all", value_parser = parse_threads)]
    pub threads: Option<Threads>,
    /// Write without asking for confirmation
    #[arg(long, short)]
    pub yes: bool,
    /// Config file to write (default: /etc/rayfarm/config.toml as root, else
    /// ~/.config/rayfarm/config.toml)
    #[arg(long, value_name = "PATH")]
    pub config_out: Option<PathBuf>,
    /// systemd unit to write (default: /etc/systemd/system/rayfarm-daemon.service as root, else
    /// ~/.config/systemd/user/rayfarm-daemon.service)
    #[arg(long, value_name = "PATH")]
    pub unit_out: Option<PathBuf>,
    /// A network folder (as this node mounts it) the node's worker writes farm job parts into;
    /// the system service may write there and nowhere else but its cache (repeatable)
    #[arg(long, value_name = "PATH")]
    pub netdir: Vec<PathBuf>,
}

/// Write a systemd unit that runs the job manager at boot, sandboxed.
///
/// As root: a system unit (/etc/systemd/system/rayfarm-manager.service) that runs as a
/// transient unprivileged user with systemd's hardening, reads the farm key from the config
/// file through LoadCredential, keeps its job database under StateDirectory
/// (/var/lib/rayfarm-manager) and may read only the network folders it serves. Otherwise a
/// user unit. The config file (with the farm key) must exist: `rayfarm daemon install` writes
/// one, or copy the farm's.
///
/// Example:
///   sudo rayfarm manager install --netdir /mnt/farm --daemon 10.0.0.11 --daemon 10.0.0.12
#[derive(Args, Debug, Default)]
#[command(verbatim_doc_comment)]
pub struct ManagerInstallArgs {
    /// A network folder the manager serves job folders from (repeatable; at least one)
    #[arg(long, value_name = "NETWORK_FOLDER", required = true)]
    pub netdir: Vec<PathBuf>,
    /// HTTP port of the API and monitor
    #[arg(long, default_value_t = rayfarm_farm::manager::DEFAULT_HTTP_PORT)]
    pub port: u16,
    /// Address the manager listens on
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,
    /// A daemon the manager uses without scanning, HOST[:PORT] (repeatable)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub daemon: Vec<String>,
    /// The config file holding the farm key (default: /etc/rayfarm/config.toml as root, else
    /// ~/.config/rayfarm/config.toml)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// systemd unit to write (default: /etc/systemd/system/rayfarm-manager.service as root,
    /// else ~/.config/systemd/user/rayfarm-manager.service)
    #[arg(long, value_name = "PATH")]
    pub unit_out: Option<PathBuf>,
}

/// Manage the farm key.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Print a new random farm key (every master and daemon of a farm needs the same one)
    Generate,
    /// Print the job manager's HTTP API token for the farm key in use (RAYFARM_KEY or the
    /// config file). Give it to the web monitor and to scripts: it is derived from the farm key
    /// but cannot be used to join the farm, read its traffic or forge job-folder files
    #[command(name = "api-token")]
    ApiToken {
        /// Configuration file (default: the user's rayfarm config)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// How many threads the daemon's worker uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    All,
    Count(u32),
}

impl std::fmt::Display for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threads::All => f.write_str("all"),
            Threads::Count(n) => write!(f, "{n}"),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number; enter a port from 1024 to 65535"))?;
    if !(1024..=65535).contains(&n) {
        return Err(format!(
            "port {n} is out of range; enter a port from 1024 to 65535"
        ));
    }
    Ok(n as u16)
}

fn parse_threads(s: &str) -> Result<Threads, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok(Threads::All);
    }
    match s.parse::<u64>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(Threads::Count(n as u32)),
        _ => Err(format!(
            "{s:?} is not `all` or a number of threads from 1 to 4096"
        )),
    }
}

pub fn run(args: DaemonArgs) -> Result<()> {
    match args.action {
        Some(DaemonAction::Install(a)) => install(a),
        None => run_daemon(args.run),
    }
}

pub fn key(args: KeyArgs) -> Result<()> {
    match args.action {
        KeyAction::Generate => {
            println!("{}", FarmKey::generate_secret());
            eprintln!(
                "Use this same key on every master and daemon of the farm: set RAYFARM_KEY to it, or put \
                 `key = \"...\"` in the config file (`rayfarm daemon install` writes one). Keep it secret."
            );
            Ok(())
        }
        KeyAction::ApiToken { config: path } => {
            let (cfg, _) = config::load(path.as_deref()).map_err(anyhow::Error::msg)?;
            let key = config::farm_key(&cfg).map_err(anyhow::Error::msg)?;
            println!("{}", key.api_token());
            Ok(())
        }
    }
}

/// The farm secret as text, in the order `config::farm_key` reads it.
fn farm_secret(cfg: &Config) -> Result<String> {
    match std::env::var("RAYFARM_KEY").ok().or_else(|| cfg.key.clone()) {
        Some(s) => {
            FarmKey::from_secret(&s)?;
            Ok(s.trim().to_string())
        }
        None => bail!(
            "no farm key: set RAYFARM_KEY or `key = \"...\"` in the config file (make one with `rayfarm key generate`)"
        ),
    }
}

fn run_daemon(a: DaemonRunArgs) -> Result<()> {
    let (cfg, cfg_path) = config::load(a.config.as_deref()).map_err(anyhow::Error::msg)?;
    let section = cfg.daemon.clone().unwrap_or_default();
    let where_ = || {
        cfg_path.as_ref().map_or_else(
            || "the config file".to_string(),
            |p| p.display().to_string(),
        )
    };
    let bind = match (a.bind, &section.bind) {
        (Some(b), _) => b,
        (None, Some(b)) => b.parse().map_err(|e| {
            anyhow::anyhow!("{}: daemon.bind {b:?} is not an IP address: {e}", where_())
        })?,
        (None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let port = a.port.or(section.port).unwrap_or(DAEMON_PORT);
    if port == 0 {
        bail!("{}: daemon.port must not be 0", where_());
    }
    let alias = a
        .alias
        .or(section.alias)
        .unwrap_or_else(daemon::default_alias);
    daemon::check_alias(&alias).map_err(anyhow::Error::msg)?;
    let threads = a.threads.or(section.threads);
    if threads == Some(0) {
        bail!(
            "{}: daemon.threads must be at least 1 (leave it out for all)",
            where_()
        );
    }
    let opts = DaemonOptions {
        listen: SocketAddr::new(bind, port),
        alias,
        threads,
        max_memory_mb: a.max_memory.or(section.max_memory_mb),
        max_scene_mb: a.max_scene_mb,
        key_secret: farm_secret(&cfg)?,
        worker_exe: std::env::current_exe()
            .context("cannot find the rayfarm executable to run workers")?,
        worker_heartbeat_timeout: daemon::WORKER_HEARTBEAT_TIMEOUT,
        netdirs: a.netdir.clone(),
    };
    if !a.path_map.is_empty() {
        let maps = crate::network_cmd::parse_path_maps(&a.path_map)?;
        let joined: Vec<String> = maps.iter().map(|(f, t)| format!("{f}={t}")).collect();
        // Workers inherit the environment; set before any thread starts.
        std::env::set_var("RAYFARM_PATH_MAP", joined.join(";"));
    }
    if let Some(m) = &a.manager {
        // The address the manager should use: the bound one, or this host's name.
        let host = if bind.is_unspecified() {
            crate::network_cmd::hostname()
        } else {
            bind.to_string()
        };
        let key = FarmKey::from_secret(&opts.key_secret)?;
        crate::farm_cmd::spawn_registration(m.clone(), format!("{host}:{port}"), key);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let metrics_key = FarmKey::from_secret(&opts.key_secret)?;
    rt.block_on(async {
        let d = daemon::Daemon::bind(opts).await?;
        // Kept until the daemon stops: dropping it stops the metrics server.
        let mut _metrics_stop = None;
        if let Some(addr) = &a.metrics {
            let m = d.metrics();
            let (tx, rx) = tokio::sync::watch::channel(false);
            let render: rayfarm_farm::live::MetricsFn = std::sync::Arc::new(move || m.render());
            let (server, serving) =
                rayfarm_farm::live::serve_metrics(addr, Some(metrics_key), render, rx)
                    .await
                    .map_err(|e| anyhow::anyhow!("--metrics {e}"))?;
            eprintln!("metrics: {}metrics", server.url());
            tokio::spawn(serving);
            _metrics_stop = Some(tx);
        }
        d.serve(shutdown_signal()).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

/// Completes on SIGTERM (systemd's stop) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(
                "cannot install the SIGTERM handler ({e}); only Ctrl-C stops the daemon"
            );
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Where `daemon install` writes.
#[derive(Debug, Clone)]
struct InstallPaths {
    config: PathBuf,
    unit: PathBuf,
    /// A system unit (root) rather than a user unit.
    system: bool,
}

fn install_paths(args: &InstallArgs, root: bool) -> Result<InstallPaths> {
    let user_config_home = || -> Result<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x));
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => Ok(Path::new(&h).join(".config")),
            None => bail!("cannot tell where your home folder is (HOME is not set); pass --config-out and --unit-out"),
        }
    };
    let config = match &args.config_out {
        Some(p) => p.clone(),
        None if root => PathBuf::from("/etc/rayfarm/config.toml"),
        None => user_config_home()?.join("rayfarm/config.toml"),
    };
    let unit = match &args.unit_out {
        Some(p) => p.clone(),
        None if root => PathBuf::from("/etc/systemd/system/rayfarm-daemon.service"),
        None => user_config_home()?.join("systemd/user/rayfarm-daemon.service"),
    };
    Ok(InstallPaths {
        config: std::path::absolute(&config).unwrap_or(config),
        unit: std::path::absolute(&unit).unwrap_or(unit),
        system: root,
    })
}

/// The answers to `daemon install`'s questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answers {
    port: u16,
    threads: Threads,
}

/// Reads one line; `None` at end of input.
fn read_answer<R: BufRead>(input: &mut R) -> Result<Option<String>> {
    let mut line = String::new();
    if input
        .read_line(&mut line)
        .context("cannot read the answer")?
        == 0
    {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}

/// Asks `question` until `parse` accepts the answer; an empty answer takes `default`.
fn ask_value<R: BufRead, W: Write, T: Copy>(
    input: &mut R,
    out: &mut W,
    question: &str,
    default: T,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T> {
    loop {
        write!(out, "{question}")?;
        out.flush()?;
        let Some(answer) = read_answer(input)? else {
            bail!(
                "input ended before the question {:?} was answered; nothing written",
                question.trim()
            );
        };
        if answer.is_empty() {
            return Ok(default);
        }
        match parse(&answer) {
            Ok(v) => return Ok(v),
            Err(e) => writeln!(out, "{e}")?,
        }
    }
}

/// Asks for what the flags leave open (only when `interactive`), shows the summary and asks for
/// confirmation (unless `--yes` or not interactive). `None`: the user declined.
fn ask<R: BufRead, W: Write>(
    input: &mut R,
    out: &mut W,
    args: &InstallArgs,
    interactive: bool,
    defaults: Answers,
    summary: &dyn Fn(&Answers) -> String,
) -> Result<Option<Answers>> {
    let port = match args.port {
        Some(p) => p,
        None if interactive => ask_value(
            input,
            out,
            &format!("Port [{}]: ", defaults.port),
            defaults.port,
            parse_port,
        )?,
        None => defaults.port,
    };
    let threads = match args.threads {
        Some(t) => t,
        None if interactive => ask_value(
            input,
            out,
            &format!("Threads to use (all or a number) [{}]: ", defaults.threads),
            defaults.threads,
            parse_threads,
        )?,
        None => defaults.threads,
    };
    let answers = Answers { port, threads };
    write!(out, "{}", summary(&answers))?;
    if args.yes || !interactive {
        return Ok(Some(answers));
    }
    loop {
        write!(out, "Write these files? (y/n) [y]: ")?;
        out.flush()?;
        match read_answer(input)?
            .map(|a| a.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("n" | "no") => return Ok(None),
            Some("" | "y" | "yes") => return Ok(Some(answers)),
            Some(_) => writeln!(out, "answer y or n")?,
        }
    }
}

/// Reads the config file at `path` if it exists.
fn read_existing_config(path: &Path) -> Result<Option<Config>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let cfg: Config =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if cfg.version != CONFIG_VERSION {
        bail!(
            "{}: config version {} is not supported (this rayfarm writes version {CONFIG_VERSION}); move it aside first",
            path.display(),
            cfg.version
        );
    }
    Ok(Some(cfg))
}

/// The config to write: `existing` (or a new one) with the answers applied and a key generated
/// if it has none. Returns whether a key was generated.
fn updated_config(existing: Option<Config>, answers: &Answers) -> (Config, bool) {
    let mut cfg = existing.unwrap_or(Config {
        version: CONFIG_VERSION,
        ..Default::default()
    });
    cfg.version = CONFIG_VERSION;
    let mut section = cfg.daemon.take().unwrap_or_default();
    section.port = Some(answers.port);
    section.threads = match answers.threads {
        Threads::All => None,
        Threads::Count(n) => Some(n),
    };
    cfg.daemon = Some(section);
    let new_key = cfg.key.as_deref().is_none_or(|k| k.trim().is_empty());
    if new_key {
        cfg.key = Some(FarmKey::generate_secret());
    }
    (cfg, new_key)
}

/// Quotes one word of a systemd `ExecStart=` line.
fn systemd_quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// Sandboxing of the system service: it runs as a transient unprivileged user (never root),
/// sees the file system read-only except its cache and the network folders it was given, and
/// cannot gain privileges, load modules, change the kernel's settings or use raw sockets.
const SYSTEM_HARDENING: &str = "\
# Never root: a transient unprivileged user, which cannot read the root-only config file;
# systemd hands the service a private copy of it instead (LoadCredential).
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
";

/// The systemd unit that runs `exe daemon --config config`.
fn unit_text(exe: &Path, config: &Path, system: bool, netdirs: &[PathBuf]) -> String {
    let mut s = String::from(
        "# Written by `rayfarm daemon install`.\n\
         [Unit]\n\
         Description=rayfarm render node daemon\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n",
    );
    if system {
        s += SYSTEM_HARDENING;
        s += &format!(
            "LoadCredential=rayfarm-config:{}\nExecStart={} daemon --config \"${{CREDENTIALS_DIRECTORY}}/rayfarm-config\"\n",
            config.display(),
            systemd_quote(&exe.display().to_string()),
        );
        for d in netdirs {
            s += &format!(
                "ReadWritePaths={}\n",
                systemd_quote(&d.display().to_string())
            );
        }
    } else {
        s += &format!(
            "ExecStart={} daemon --config {}\n",
            systemd_quote(&exe.display().to_string()),
            systemd_quote(&config.display().to_string())
        );
    }
    s += "Restart=on-failure\nRestartSec=5\n";
    s += "# Time for a running worker to hand its units back to the master.\nTimeoutStopSec=15\n";
    if system {
        s += "# The worker's scene cache: /var/cache/rayfarm/scenes.\nCacheDirectory=rayfarm\nEnvironment=XDG_CACHE_HOME=/var/cache\n";
    }
    s += &format!(
        "\n[Install]\nWantedBy={}\n",
        if system {
            "multi-user.target"
        } else {
            "default.target"
        }
    );
    s
}

/// The systemd unit that runs `exe manager` with the job database under StateDirectory (system)
/// or the default one (user).
fn manager_unit_text(exe: &Path, config: &Path, system: bool, a: &ManagerInstallArgs) -> String {
    let mut s = String::from(
        "# Written by `rayfarm manager install`.\n\
         [Unit]\n\
         Description=rayfarm job manager\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n",
    );
    let mut args = vec![
        "manager".to_string(),
        "--bind".into(),
        a.bind.clone(),
        "--port".into(),
        a.port.to_string(),
    ];
    for d in &a.netdir {
        args.push("--netdir".into());
        args.push(d.display().to_string());
    }
    for d in &a.daemon {
        args.push("--daemon".into());
        args.push(d.clone());
    }
    let quoted: Vec<String> = args.iter().map(|w| systemd_quote(w)).collect();
    if system {
        s += SYSTEM_HARDENING;
        s += "# The job database: /var/lib/rayfarm-manager/manager.db, owned by the service's user.\nStateDirectory=rayfarm-manager\nUMask=0077\n";
        s += &format!(
            "LoadCredential=rayfarm-config:{}\nExecStart={} {} --config \"${{CREDENTIALS_DIRECTORY}}/rayfarm-config\" --db /var/lib/rayfarm-manager/manager.db\n",
            config.display(),
            systemd_quote(&exe.display().to_string()),
            quoted.join(" "),
        );
        for d in &a.netdir {
            // Read only: the manager reads job folders; clients and workers write them.
            s += &format!(
                "ReadOnlyPaths={}\n",
                systemd_quote(&d.display().to_string())
            );
        }
    } else {
        s += &format!(
            "ExecStart={} {} --config {}\n",
            systemd_quote(&exe.display().to_string()),
            quoted.join(" "),
            systemd_quote(&config.display().to_string())
        );
    }
    s += "Restart=on-failure\nRestartSec=5\n";
    s += &format!(
        "\n[Install]\nWantedBy={}\n",
        if system {
            "multi-user.target"
        } else {
            "default.target"
        }
    );
    s
}

/// `rayfarm manager install`.
pub fn manager_install(a: ManagerInstallArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the rayfarm executable")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    manager_install_with(
        &a,
        &mut std::io::stdout().lock(),
        &exe,
        daemon::running_as_root(),
    )
}

fn manager_install_with<W: Write>(
    a: &ManagerInstallArgs,
    out: &mut W,
    exe: &Path,
    root: bool,
) -> Result<()> {
    let defaults = install_paths(&InstallArgs::default(), root)?;
    let config = a.config.clone().unwrap_or(defaults.config);
    let config = std::path::absolute(&config).unwrap_or(config);
    // The key must be there: a manager without it refuses to start, which systemd would only
    // show as a restart loop.
    let cfg = read_existing_config(&config)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no config file with the farm key; run `rayfarm daemon install` first or copy the farm's config there (or pass --config)",
            config.display()
        )
    })?;
    farm_secret(&cfg)
        .with_context(|| format!("{}: the manager needs the farm key", config.display()))?;
    for d in &a.netdir {
        if !d.is_absolute() || !d.is_dir() {
            bail!(
                "--netdir {}: not an absolute path to an existing folder",
                d.display()
            );
        }
    }
    for d in &a.daemon {
        rayfarm_master::discovery::candidates(&[], std::slice::from_ref(d))
            .map_err(|e| anyhow::anyhow!("--daemon {d}: {e}"))?;
    }
    let unit = match &a.unit_out {
        Some(p) => p.clone(),
        None => defaults.unit.with_file_name("rayfarm-manager.service"),
    };
    let unit = std::path::absolute(&unit).unwrap_or(unit);
    write_file(&unit, &manager_unit_text(exe, &config, root, a), false)?;
    writeln!(out, "Wrote {}", unit.display())?;
    let user = if root { "" } else { " --user" };
    writeln!(out, "\nTo start the manager now and at every boot:")?;
    writeln!(out, "  systemctl{user} daemon-reload")?;
    writeln!(out, "  systemctl{user} enable --now rayfarm-manager")?;
    writeln!(
        out,
        "Then open http://{}:{}/ (the monitor asks for `rayfarm key api-token`).",
        if a.bind == "0.0.0.0" { "HOST" } else { &a.bind },
        a.port
    )?;
    Ok(())
}

/// Writes `text` to `path` through a temporary file, readable by the owner only when `private`.
fn write_file(path: &Path, text: &str, private: bool) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    rayfarm_job::fsutil::write_atomic_mode(
        path,
        text.as_bytes(),
        if private { 0o600 } else { 0o644 },
    )?;
    Ok(())
}

fn install(args: InstallArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the rayfarm executable")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let interactive = std::io::stdin().is_terminal();
    let root = daemon::running_as_root();
    install_with(
        &args,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        interactive,
        &exe,
        root,
    )
}

fn install_with<R: BufRead, W: Write>(
    args: &InstallArgs,
    input: &mut R,
    out: &mut W,
    interactive: bool,
    exe: &Path,
    root: bool,
) -> Result<()> {
    let paths = install_paths(args, root)?;
    let existing = read_existing_config(&paths.config)?;
    let has_key = existing
        .as_ref()
        .and_then(|c| c.key.as_deref())
        .is_some_and(|k| !k.trim().is_empty());
    let section = existing
        .as_ref()
        .and_then(|c| c.daemon.clone())
        .unwrap_or_default();
    let defaults = Answers {
        port: section.port.filter(|p| *p >= 1024).unwrap_or(DAEMON_PORT),
        threads: section
            .threads
            .filter(|t| *t > 0)
            .map_or(Threads::All, Threads::Count),
    };
    let summary = |a: &Answers| {
        format!(
            "\nrayfarm daemon install will write:\n  {}  ({}: port {}, threads {}, {})\n  {}  (systemd {} unit)\n\n",
            paths.config.display(),
            if existing.is_some() { "updated" } else { "new" },
            a.port,
            a.threads,
            if has_key { "keeps its farm key" } else { "a new farm key" },
            paths.unit.display(),
            if paths.system { "system" } else { "user" },
        )
    };
    let Some(answers) = ask(input, out, args, interactive, defaults, &summary)? else {
        writeln!(out, "Nothing written.")?;
        return Ok(());
    };
    let (mut cfg, new_key) = updated_config(existing, &answers);
    if !args.netdir.is_empty() {
        // The daemon's workers write parts only inside these (see `rayfarm worker --netdir`).
        cfg.netdirs = args.netdir.clone();
    }
    let text = toml::to_string_pretty(&cfg).context("cannot encode the config file")?;
    write_file(&paths.config, &text, true)?;
    writeln!(out, "Wrote {}", paths.config.display())?;
    if new_key {
        writeln!(
            out,
            "Generated a new farm key in it. Every machine of the farm (each daemon and master) needs this same key: \
             copy the `key = \"...\"` line into their config files, or set RAYFARM_KEY to it."
        )?;
    }
    write_file(
        &paths.unit,
        &unit_text(exe, &paths.config, paths.system, &args.netdir),
        false,
    )?;
    writeln!(out, "Wrote {}", paths.unit.display())?;

    let user = if paths.system { "" } else { " --user" };
    let name = paths.unit.file_stem().map_or_else(
        || "rayfarm-daemon".into(),
        |s| s.to_string_lossy().into_owned(),
    );
    let standard_dir = if paths.system {
        Path::new("/etc/systemd/system").to_path_buf()
    } else {
        install_paths(&InstallArgs::default(), false)
            .map(|p| p.unit.parent().map(Path::to_path_buf).unwrap_or_default())
            .unwrap_or_default()
    };
    writeln!(out, "\nTo start the daemon now and at every boot:")?;
    if paths.unit.parent() != Some(standard_dir.as_path()) {
        writeln!(out, "  systemctl{user} link {}", paths.unit.display())?;
    }
    writeln!(out, "  systemctl{user} daemon-reload")?;
    writeln!(out, "  systemctl{user} enable --now {name}")?;
    if !paths.system {
        writeln!(
            out,
            "(a user service runs while you are logged in; `loginctl enable-linger $USER` keeps it running after logout)"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `manager install` as root: a hardened system unit that systemd accepts
    /// (`systemd-analyze verify`, where systemd is installed); refusals name what is wrong.
    #[test]
    fn manager_install_writes_a_hardened_unit_systemd_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        std::fs::create_dir(&net).unwrap();
        let config = dir.path().join("config.toml");
        let unit = dir.path().join("rayfarm-manager.service");
        let args = |netdir: PathBuf| ManagerInstallArgs {
            netdir: vec![netdir],
            port: 3234,
            bind: "0.0.0.0".into(),
            daemon: vec!["127.0.0.5".into()],
            config: Some(config.clone()),
            unit_out: Some(unit.clone()),
        };
        let exe = std::env::current_exe().unwrap();
        let mut out = Vec::new();
        // No config file with the key yet.
        let e = manager_install_with(&args(net.clone()), &mut out, &exe, true).unwrap_err();
        assert!(format!("{e:#}").contains("farm key"), "{e:#}");
        std::fs::write(
            &config,
            "version = 1\nkey = \"a test farm secret, long enough\"\n",
        )
        .unwrap();
        let e = manager_install_with(&args("relative".into()), &mut out, &exe, true).unwrap_err();
        assert!(format!("{e:#}").contains("--netdir relative"), "{e:#}");
        assert!(!unit.exists());
        manager_install_with(&args(net.clone()), &mut out, &exe, true).unwrap();
        let text = std::fs::read_to_string(&unit).unwrap();
        for want in [
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "StateDirectory=rayfarm-manager",
            "--db /var/lib/rayfarm-manager/manager.db",
            "LoadCredential=rayfarm-config:",
            "\"--netdir\" ",
            "ReadOnlyPaths=",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        if Path::new("/usr/bin/systemd-analyze").exists() {
            let o = std::process::Command::new("/usr/bin/systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "systemd-analyze verify: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        } else {
            eprintln!("notice: systemd-analyze is not installed; the unit was not verified");
        }
    }

    fn defaults() -> Answers {
        Answers {
            port: DAEMON_PORT,
            threads: Threads::All,
        }
    }

    fn run_ask(
        script: &str,
        args: &InstallArgs,
        interactive: bool,
    ) -> (Result<Option<Answers>>, String) {
        let mut input = script.as_bytes();
        let mut out = Vec::new();
        let r = ask(&mut input, &mut out, args, interactive, defaults(), &|a| {
            format!("SUMMARY {} {}\n", a.port, a.threads)
        });
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn bad_ports_are_asked_again_and_declining_writes_nothing() {
        let (r, out) = run_ask("70000\n8000\n\nn\n", &InstallArgs::default(), true);
        assert_eq!(r.unwrap(), None);
        assert!(
            out.contains("port 70000 is out of range; enter a port from 1024 to 65535"),
            "{out}"
        );
        assert!(
            out.contains("Threads to use (all or a number) [all]: "),
            "{out}"
        );
        assert!(out.contains("SUMMARY 8000 all"), "{out}");
        assert!(out.ends_with("Write these files? (y/n) [y]: "), "{out}");
    }

    #[test]
    fn answers_and_defaults() {
        let (r, out) = run_ask(
            "abc\n80\n\nzero\n0\n12\nmaybe\n\n",
            &InstallArgs::default(),
            true,
        );
        assert_eq!(
            r.unwrap(),
            Some(Answers {
                port: DAEMON_PORT,
                threads: Threads::Count(12)
            })
        );
        assert!(out.contains("\"abc\" is not a number"), "{out}");
        assert!(out.contains("port 80 is out of range"), "{out}");
        assert!(out.contains("\"zero\" is not `all` or a number"), "{out}");
        assert!(out.contains("\"0\" is not `all` or a number"), "{out}");
        assert!(out.contains("answer y or n"), "{out}");
        let (r, _) = run_ask("49000\nALL\ny\n", &InstallArgs::default(), true);
        assert_eq!(
            r.unwrap(),
            Some(Answers {
                port: 49000,
                threads: Threads::All
            })
        );
    }

    #[test]
    fn flags_answer_every_question() {
        let args = InstallArgs {
            port: Some(50000),
            threads: Some(Threads::Count(4)),
            yes: true,
            ..Default::default()
        };
        let (r, out) = run_ask("", &args, true);
        assert_eq!(
            r.unwrap(),
            Some(Answers {
                port: 50000,
                threads: Threads::Count(4)
            })
        );
        assert!(!out.contains('?') && !out.contains("Port"), "{out}");
        // Without --yes only the confirmation is asked.
        let args = InstallArgs { yes: false, ..args };
        let (r, out) = run_ask("n\n", &args, true);
        assert_eq!(r.unwrap(), None);
        assert!(
            !out.contains("Port") && out.contains("Write these files?"),
            "{out}"
        );
    }

    #[test]
    fn not_a_terminal_takes_defaults() {
        let (r, out) = run_ask("", &InstallArgs::default(), false);
        assert_eq!(r.unwrap(), Some(defaults()));
        assert!(!out.contains("Port ["), "{out}");
    }

    #[test]
    fn input_ending_early_is_an_error() {
        let (r, _) = run_ask("70000\n", &InstallArgs::default(), true);
        assert!(r.unwrap_err().to_string().contains("input ended"));
        let (r, _) = run_ask("\n\n", &InstallArgs::default(), true);
        assert_eq!(r.unwrap(), None, "no confirmation means no");
    }

    #[test]
    fn flag_parsers() {
        assert_eq!(parse_port("48000"), Ok(48000));
        assert!(
            parse_port("1023").is_err()
                && parse_port("65536").is_err()
                && parse_port("-1").is_err()
        );
        assert_eq!(parse_threads("all"), Ok(Threads::All));
        assert_eq!(parse_threads("8"), Ok(Threads::Count(8)));
        assert!(parse_threads("4097").is_err());
    }

    #[test]
    fn the_system_unit_may_write_only_its_cache_and_the_network_folders() {
        let t = unit_text(
            Path::new("/usr/bin/rayfarm"),
            Path::new("/etc/rayfarm/config.toml"),
            true,
            &[PathBuf::from("/mnt/farm net")],
        );
        assert!(t.contains("ProtectSystem=strict\n"), "{t}");
        assert!(t.contains("ReadWritePaths=\"/mnt/farm net\"\n"), "{t}");
        assert!(t.contains("CapabilityBoundingSet=\n"), "{t}");
        // A user unit runs as that user already; it keeps the plain form.
        let u = unit_text(
            Path::new("/usr/bin/rayfarm"),
            Path::new("/home/a/.config/rayfarm/config.toml"),
            false,
            &[],
        );
        assert!(
            !u.contains("DynamicUser") && u.contains("--config \"/home/a/"),
            "{u}"
        );
    }

    #[test]
    fn install_writes_config_and_unit_and_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("etc/rayfarm/config.toml");
        let unit = dir.path().join("units/rayfarm-daemon.service");
        let args = InstallArgs {
            config_out: Some(config.clone()),
            unit_out: Some(unit.clone()),
            ..Default::default()
        };
        let exe = Path::new("/opt/ray farm/rayfarm");
        let mut out = Vec::new();
        install_with(
            &args,
            &mut "49000\n8\n\n".as_bytes(),
            &mut out,
            true,
            exe,
            true,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("Generated a new farm key"), "{out}");
        assert!(
            out.contains("systemctl enable --now rayfarm-daemon"),
            "{out}"
        );
        assert!(
            out.contains("systemctl link "),
            "non-standard unit folder: {out}"
        );

        let cfg = read_existing_config(&config).unwrap().unwrap();
        assert_eq!(cfg.version, CONFIG_VERSION);
        let d = cfg.daemon.clone().unwrap();
        assert_eq!((d.port, d.threads), (Some(49000), Some(8)));
        let key = cfg.key.clone().unwrap();
        assert!(key.starts_with("rfk1-") && FarmKey::from_secret(&key).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the config holds the secret");

        let unit_text = std::fs::read_to_string(&unit).unwrap();
        // A system service: never root, sandboxed, the config handed over as a credential.
        assert!(
            unit_text.contains(&format!(
                "LoadCredential=rayfarm-config:{}\nExecStart=\"/opt/ray farm/rayfarm\" daemon --config \"${{CREDENTIALS_DIRECTORY}}/rayfarm-config\"",
                config.display()
            )),
            "{unit_text}"
        );
        for line in [
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CacheDirectory=rayfarm",
        ] {
            assert!(unit_text.lines().any(|l| l == line), "{line}: {unit_text}");
        }
        assert!(!unit_text.contains("User=root"), "{unit_text}");
        assert!(
            unit_text.contains("WantedBy=multi-user.target"),
            "{unit_text}"
        );

        // Running again keeps the key and other settings, and takes "all" threads.
        // (a top-level setting, so it goes before the [daemon] table)
        let text = "daemons = [\"10.0.0.5:48000\"]\n".to_string()
            + &std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text).unwrap();
        let args = InstallArgs {
            threads: Some(Threads::All),
            yes: true,
            ..args
        };
        let mut out = Vec::new();
        install_with(&args, &mut "".as_bytes(), &mut out, false, exe, false).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("Generated a new farm key"), "{out}");
        assert!(
            out.contains("systemctl --user enable --now rayfarm-daemon"),
            "{out}"
        );
        let cfg2 = read_existing_config(&config).unwrap().unwrap();
        assert_eq!(cfg2.key.as_deref(), Some(key.as_str()));
        assert_eq!(cfg2.daemons, vec!["10.0.0.5:48000".to_string()]);
        let d = cfg2.daemon.unwrap();
        assert_eq!((d.port, d.threads), (Some(49000), None));
        assert!(std::fs::read_to_string(&unit)
            .unwrap()
            .contains("WantedBy=default.target"));
    }

    #[test]
    fn broken_existing_config_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "version = 1\nprot = 3\n").unwrap();
        let args = InstallArgs {
            config_out: Some(config.clone()),
            unit_out: Some(dir.path().join("u.service")),
            yes: true,
            ..Default::default()
        };
        let e = install_with(
            &args,
            &mut "".as_bytes(),
            &mut Vec::new(),
            false,
            Path::new("/x"),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("config.toml"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "version = 1\nprot = 3\n"
        );
        assert!(!dir.path().join("u.service").exists());
    }

    #[test]
    fn systemd_quoting() {
        assert_eq!(systemd_quote("/a b/%h$x\"\\"), "\"/a b/%%h$$x\\\"\\\\\"");
    }
}
