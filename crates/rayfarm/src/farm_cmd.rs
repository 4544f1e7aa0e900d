//! `rayfarm manager`, `submit`, `jobs`, `job`, `merge` and the manager half of `nodes`: the
//! job-manager commands, over the manager's HTTP JSON API.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use rayfarm_farm::api::{
    DeletedJson, ErrorJson, JobDetailJson, JobListJson, NodeListJson, PriorityRequest,
    RegisterRequest, RegisteredJson, SubmitRequest, SubmittedJson,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A manager's base URL from `HOST[:PORT]` (port 3234 when left out; plain http) or
/// `https://HOST[:PORT]` (a manager started with --tls-cert).
pub fn manager_base(addr: &str) -> String {
    let a = addr.trim();
    let (scheme, a) = match a.strip_prefix("https://") {
        Some(rest) => ("https", rest),
        None => ("http", a.trim_start_matches("http://")),
    };
    let a = a.trim_end_matches('/');
    if a.rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        format!("{scheme}://{a}")
    } else {
        format!(
            "{scheme}://{a}:{}",
            rayfarm_farm::manager::DEFAULT_HTTP_PORT
        )
    }
}

/// A manager's address as `HOST:PORT` (port 3234 when left out), as job.desc records it.
pub fn manager_addr(addr: &str) -> String {
    let base = manager_base(addr);
    base.split_once("://")
        .map_or(base.clone(), |(_, a)| a.to_string())
}

/// The environment variable naming a PEM file of certificates to trust for an https manager
/// (its self-signed certificate, or the CA that signed it) instead of the public web roots.
pub const MANAGER_CA_ENV: &str = "RAYFARM_MANAGER_CA";

/// A small client of the manager's API. Every request carries the farm's API token (derived
/// from the farm key) as `Authorization: Bearer`; every answer is read into its type in
/// `rayfarm_farm::api`. Errors name the manager and say what to do.
pub struct FarmClient {
    pub addr: String,
    base: String,
    agent: ureq::Agent,
    authorization: String,
}

impl FarmClient {
    pub fn new(addr: &str, key: &rayfarm_proto::FarmKey) -> Result<FarmClient> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)));
        if let Some(path) = std::env::var_os(MANAGER_CA_ENV) {
            let path = PathBuf::from(path);
            let pem = std::fs::read(&path).with_context(|| {
                format!(
                    "{}: cannot read the certificates {MANAGER_CA_ENV} names",
                    path.display()
                )
            })?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
            if certs.is_empty() {
                bail!(
                    "{}: no certificate in the file {MANAGER_CA_ENV} names",
                    path.display()
                );
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(FarmClient {
            addr: addr.to_string(),
            base: manager_base(addr),
            agent: config.build().into(),
            authorization: format!("Bearer {}", key.api_token()),
        })
    }

    /// A client with the farm key of the configuration (`config`, else `$RAYFARM_CONFIG` or the
    /// default files; `$RAYFARM_KEY` first).
    pub fn from_config(addr: &str, config: Option<&Path>) -> Result<FarmClient> {
        let (cfg, _) = rayfarm_node::config::load(config).map_err(|e| anyhow!(e))?;
        let key = rayfarm_node::config::farm_key(&cfg)
            .map_err(|e| anyhow!("{e} (the manager at {addr} answers only with the farm key)"))?;
        FarmClient::new(addr, &key)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        path: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut r = r.map_err(|e| {
            let hint = if e.to_string().contains("certificate") {
                format!(
                    "; for a self-signed manager certificate set {MANAGER_CA_ENV} to its PEM file"
                )
            } else {
                String::new()
            };
            anyhow!(
                "cannot reach the manager at {}: {e}{hint}; is `rayfarm manager` running there?",
                self.addr
            )
        })?;
        let status = r.status();
        if status == ureq::http::StatusCode::UNAUTHORIZED {
            bail!(
                "manager {}: refused our API token (HTTP 401): the farm keys differ; use the \
                 manager's farm key here (RAYFARM_KEY or `key` in the config file)",
                self.addr
            );
        }
        let body = r.body_mut().read_to_string();
        if !status.is_success() {
            let msg = match body.as_deref().map(serde_json::from_str::<ErrorJson>) {
                Ok(Ok(e)) => e.error,
                // JSON, but not an error body.
                Ok(Err(_)) if is_json(body.as_deref().unwrap_or("")) => "unknown error".into(),
                _ => format!("HTTP {status}"),
            };
            bail!("manager {}: {msg}", self.addr);
        }
        let body = body.map_err(|e| {
            anyhow!(
                "manager {}: cannot read its answer to {path}: {e}",
                self.addr
            )
        })?;
        serde_json::from_str(&body).map_err(|e| {
            anyhow!(
                "manager {}: unexpected answer to {path} ({e}); is it another rayfarm version?",
                self.addr
            )
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.finish(
            path,
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Authorization", &self.authorization)
                .call(),
        )
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.finish(
            path,
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Authorization", &self.authorization)
                .send_json(body),
        )
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.finish(
            path,
            self.agent
                .delete(format!("{}{path}", self.base))
                .header("Authorization", &self.authorization)
                .call(),
        )
    }
}

/// Whether `text` is JSON at all (an error answer that is JSON but no `{"error": ...}` is told
/// apart from one that is not JSON).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Runs the job manager: a persistent job queue, the render nodes it leases, the HTTP API
/// and the web monitor.
///
/// The queue lives in an SQLite file (--db); a restarted manager carries on where it stopped.
/// Daemons are found from --daemon / --scan (or the config file) and by registering themselves
/// (`rayfarm daemon --manager HOST:PORT`). Open http://HOST:PORT/ for the monitor.
///
/// Example:
///   rayfarm manager --netdir /mnt/farm --daemon 10.0.0.11 --daemon 10.0.0.12
///   sudo rayfarm manager install --netdir /mnt/farm --daemon 10.0.0.11
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct ManagerCmd {
    #[command(subcommand)]
    pub action: Option<ManagerAction>,
    #[command(flatten)]
    pub run: ManagerArgs,
}

#[derive(Subcommand, Debug)]
pub enum ManagerAction {
    Install(crate::daemon_cmd::ManagerInstallArgs),
}

/// `rayfarm manager [install]`.
pub fn manager_cmd(c: ManagerCmd) -> Result<()> {
    match c.action {
        Some(ManagerAction::Install(a)) => crate::daemon_cmd::manager_install(a),
        None => manager(c.run),
    }
}

#[derive(Args, Debug)]
pub struct ManagerArgs {
    /// HTTP port (API and web monitor)
    #[arg(long, default_value_t = rayfarm_farm::manager::DEFAULT_HTTP_PORT)]
    pub port: u16,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,
    /// Port workers connect to (default: the first free one after --port)
    #[arg(long, default_value_t = 0)]
    pub worker_port: u16,
    /// Job database (default: ~/.local/share/rayfarm/manager.db)
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub discovery: crate::network_cmd::DiscoveryArgs,
    /// Seconds between looks at the daemons
    #[arg(long, default_value_t = 2.0)]
    pub scan_interval: f64,
    /// Seconds a running task may go without news from its node before it is requeued
    #[arg(long, default_value_t = 30)]
    pub task_lease: u64,
    /// Serve the API and monitor over https with this PEM certificate chain (with --tls-key).
    /// Clients then use --manager https://HOST:PORT and, for a self-signed certificate,
    /// RAYFARM_MANAGER_CA=CERT.pem
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A network folder the manager serves job folders from (repeatable; default: the config
    /// file's `netdirs`). A submitted job folder must lie inside one of them; with none, the
    /// manager takes no jobs
    #[arg(long, value_name = "NETWORK_FOLDER")]
    pub netdir: Vec<PathBuf>,
}

/// The farm key of the configuration (`$RAYFARM_KEY` first, then `$RAYFARM_CONFIG` or the
/// default files): it writes and checks the MACs of job folders.
pub fn farm_key() -> Result<rayfarm_proto::FarmKey> {
    let (cfg, _) = rayfarm_node::config::load(None).map_err(|e| anyhow!(e))?;
    rayfarm_node::config::farm_key(&cfg)
        .map_err(|e| anyhow!("{e} (job folders are authenticated with the farm key)"))
}

fn default_db() -> PathBuf {
    let base = std::env::var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|_| std::env::temp_dir());
    base.join("rayfarm/manager.db")
}

pub fn manager(a: ManagerArgs) -> Result<()> {
    let (cfg, _) =
        rayfarm_node::config::load(a.discovery.config.as_deref()).map_err(|e| anyhow!(e))?;
    let key = rayfarm_node::config::farm_key(&cfg).map_err(|e| anyhow!(e))?;
    let (scan, daemons) = crate::network_cmd::discovery_targets(&a.discovery, &cfg);
    rayfarm_master::discovery::candidates(&scan, &daemons).map_err(|e| anyhow!(e))?;
    if !(0.2..=3600.0).contains(&a.scan_interval) {
        bail!("--scan-interval must be between 0.2 and 3600 seconds");
    }
    if a.task_lease < 5 {
        bail!("--task-lease must be at least 5 seconds");
    }
    let db = a.db.clone().unwrap_or_else(default_db);
    if let Some(parent) = db.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create the database folder", parent.display()))?;
    }
    let mcfg = rayfarm_farm::manager::ManagerConfig {
        bind: a.bind.clone(),
        http_port: a.port,
        worker_port: a.worker_port,
        db,
        scan,
        daemons,
        scan_interval: Duration::from_secs_f64(a.scan_interval),
        key,
        task_lease_ms: a.task_lease as i64 * 1000,
        tls: a.tls_cert.clone().zip(a.tls_key.clone()),
        netdirs: if a.netdir.is_empty() {
            cfg.netdirs.clone()
        } else {
            a.netdir.clone()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            eprintln!("manager: shutting down (jobs stay queued)");
            let _ = tx.send(true);
        });
        rayfarm_farm::service::run(mcfg, rayfarm_web::routes(), rx)
            .await
            .map_err(|e| anyhow!(e))
    })
}

/// Options naming the manager.
#[derive(Args, Debug, Clone)]
pub struct ManagerAddr {
    /// The job manager, HOST[:PORT] (port 3234 by default)
    #[arg(long, visible_alias = "farm", value_name = "HOST:PORT")]
    pub manager: String,
    /// Config file with the farm key the manager's API needs (default: $RAYFARM_CONFIG, else
    /// the usual places; $RAYFARM_KEY wins)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl ManagerAddr {
    fn client(&self) -> Result<FarmClient> {
        FarmClient::from_config(&self.manager, self.config.as_deref())
    }
}

/// Lists the manager's jobs.
#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    pub manager: ManagerAddr,
    /// Print the API's JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn jobs(a: JobsArgs) -> Result<()> {
    let c = a.manager.client()?;
    let list: JobListJson = c.get("/api/v1/jobs")?;
    if a.json {
        // Through a `Value`, whose keys are sorted: the output --json always had.
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(&list)?)?
        );
        return Ok(());
    }
    println!(
        "{:<15} {:<7} {:<10} {:>4} {:>6}  {:<24} NAME",
        "ID", "KIND", "STATUS", "PRIO", "DONE", "TASKS (q/r/c/f)"
    );
    for j in &list.jobs {
        let t = &j.tasks;
        // The priority is printed unpadded, as it always was (the JSON value ignored `{:>4}`).
        println!(
            "{:<15} {:<7} {:<10} {} {:>5.1}%  {:<24} {}",
            j.id,
            j.kind,
            j.status,
            j.priority,
            100.0 * j.progress,
            format!("{}/{}/{}/{}", t.queued, t.running, t.completed, t.failed),
            j.name
        );
    }
    Ok(())
}

/// Shows or changes one job.
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    pub action: JobAction,
}

#[derive(Subcommand, Debug)]
pub enum JobAction {
    /// The job and its tasks
    Show(JobId),
    /// Hand out no more of its tasks (running ones finish)
    Pause(JobId),
    /// Hand out its tasks again
    Resume(JobId),
    /// Stop the job for good (its folder stays; delete it with `job delete`)
    Cancel(JobId),
    /// Change the job's priority: higher runs first (tasks already running are not stopped)
    Priority {
        #[command(flatten)]
        id: JobId,
        /// The new priority (-1000 to 1000; new jobs get 0 unless `--priority` said otherwise)
        #[arg(allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
        priority: i32,
    },
    /// Remove the job from the queue
    Delete {
        #[command(flatten)]
        id: JobId,
        /// Delete even while tasks run
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct JobId {
    /// Job id (see `rayfarm jobs`)
    pub id: String,
    #[command(flatten)]
    pub manager: ManagerAddr,
}

fn check_id(id: &str) -> Result<()> {
    rayfarm_farm::store::validate_job_id(id).map_err(|e| anyhow!("{e}"))
}

fn print_job(v: &JobDetailJson) {
    let j = &v.job;
    println!("job {}  {}  ({})", j.id, j.name, j.kind);
    println!(
        "status {}, priority {}, {:.1}% done",
        j.status,
        j.priority,
        100.0 * j.progress
    );
    if let Some(b) = &j.blocked {
        println!("blocked: {b}");
    }
    if let Some(e) = &j.error {
        println!("error: {e}");
    }
    for t in &v.tasks {
        // The index is printed unpadded, as it always was (the JSON value ignored `{:>5}`).
        println!(
            "  {}  {:<10} {:<32} attempts {}  {}{}",
            t.index,
            t.status,
            t.name,
            t.attempts,
            t.node.as_deref().unwrap_or("-"),
            t.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
}

pub fn job(a: JobArgs) -> Result<()> {
    let (id, action) = match &a.action {
        JobAction::Show(j) => (j, "show"),
        JobAction::Pause(j) => (j, "pause"),
        JobAction::Resume(j) => (j, "resume"),
        JobAction::Cancel(j) => (j, "cancel"),
        JobAction::Delete { id, .. } => (id, "delete"),
        JobAction::Priority { id, .. } => (id, "priority"),
    };
    check_id(&id.id)?;
    let c = id.manager.client()?;
    let path = format!("/api/v1/jobs/{}", id.id);
    match &a.action {
        JobAction::Show(_) => print_job(&c.get(&path)?),
        JobAction::Delete { force, .. } => {
            let _: DeletedJson = c.delete(&format!("{path}?force={force}"))?;
            println!("job {} deleted", id.id);
        }
        JobAction::Priority { priority, .. } => {
            let v: JobDetailJson = c.post(
                &format!("{path}/priority"),
                &PriorityRequest {
                    priority: *priority,
                },
            )?;
            println!("job {}: priority {}", id.id, v.job.priority);
        }
        _ => {
            // These actions take no body; `{}` is sent as before.
            let v: JobDetailJson = c.post(&format!("{path}/{action}"), &serde_json::Map::new())?;
            println!("job {}: {}", id.id, v.job.status);
        }
    }
    Ok(())
}

/// Submits a prepared job folder (NETWORK_FOLDER/<job-id>, holding job.desc) to a manager.
/// `rayfarm bake --farm` does this itself; use it to submit a job folder again, e.g. after
/// `rayfarm job delete`, or to another manager.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job folder or its job.desc
    pub job: PathBuf,
    #[command(flatten)]
    pub manager: ManagerAddr,
    /// Higher runs first
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
}

pub fn submit(a: SubmitArgs) -> Result<()> {
    let dir = if a.job.file_name().is_some_and(|n| n == "job.desc") {
        a.job.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        a.job.clone()
    };
    let dir = std::fs::canonicalize(&dir)
        .with_context(|| format!("{}: no such job folder", dir.display()))?;
    let c = a.manager.client()?;
    let v: SubmittedJson = c.post(
        "/api/v1/jobs",
        &SubmitRequest {
            job_dir: dir.display().to_string(),
            priority: a.priority,
        },
    )?;
    println!("submitted job {}", v.id);
    Ok(())
}

/// Finishes a network bake from its job folder: checks every part, merges them into the
/// final maps (replacing the placeholders) and removes the job folder.
///
/// Refuses, listing the missing or damaged parts, while the job is unfinished (or waits for it
/// with --wait). Merging twice is harmless.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct MergeArgs {
    /// NETWORK_FOLDER/<job-id>/job.desc
    pub job_desc: PathBuf,
    /// Wait until the job is complete instead of refusing
    #[arg(long)]
    pub wait: bool,
    /// The manager to ask whether the job is complete (default: the one in job.desc)
    #[arg(long, visible_alias = "farm", value_name = "HOST:PORT")]
    pub manager: Option<String>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

/// Asks the manager about a job: Ok(Some(status)), Ok(None) when the manager can't be reached.
fn manager_status(addr: &str, id: &str) -> Result<Option<(String, f64)>> {
    let c = FarmClient::from_config(addr, None)?;
    match c.get::<JobDetailJson>(&format!("/api/v1/jobs/{id}")) {
        Ok(v) => Ok(Some((v.job.status, v.job.progress))),
        Err(e) if e.to_string().contains("cannot reach") => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn merge(a: MergeArgs) -> Result<()> {
    if !a.job_desc.exists() && a.job_desc.parent().is_some_and(|d| !d.exists()) {
        bail!(
            "{}: nothing to merge, the job folder is gone (a merge already finished this job, or the path is wrong)",
            a.job_desc.display()
        );
    }
    let key = farm_key()?;
    let (desc, seal) =
        rayfarm_job::renderjob::AnyJobDesc::read(&a.job_desc, &key).map_err(|e| anyhow!("{e}"))?;
    let manager = a.manager.clone().or(desc.manager().map(str::to_string));
    let bar = crate::output::progress_bar(1000, a.quiet || !a.wait);
    loop {
        let status = match &manager {
            Some(m) => manager_status(m, desc.job_id())?,
            None => None,
        };
        let job_dir = a.job_desc.parent().unwrap_or(Path::new("."));
        let problems = rayfarm_job::merge::check_any(job_dir, &desc, &seal);
        let done_on_farm = status.as_ref().is_none_or(|(s, _)| s == "completed");
        if problems.is_empty() && done_on_farm {
            break;
        }
        if let Some((s, _)) = &status {
            if s == "failed" || s == "canceled" {
                bail!(
                    "job {} is {s} on the manager; its outputs cannot be finished (see `rayfarm job show {}`)",
                    desc.job_id(),
                    desc.job_id()
                );
            }
        }
        if !a.wait {
            let list: Vec<String> = problems
                .iter()
                .map(|p| match p {
                    rayfarm_job::merge::PartProblem::Missing { part } => format!("{part} missing"),
                    rayfarm_job::merge::PartProblem::Corrupt { part, reason } => {
                        format!("{part} damaged ({reason})")
                    }
                })
                .collect();
            let shown = list.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
            let more = if list.len() > 20 {
                format!(" and {} more", list.len() - 20)
            } else {
                String::new()
            };
            let farm = match &status {
                Some((s, p)) => format!("the manager reports it {s} ({:.1}% done)", 100.0 * p),
                None if manager.is_some() => "the manager cannot be reached".to_string(),
                None => "no manager is named".to_string(),
            };
            bail!(
                "job {} is not finished: {} of {} parts missing or damaged ({shown}{more}); {farm}; run again later or with --wait",
                desc.job_id(),
                problems.len(),
                desc.part_count()
            );
        }
        let done = desc.part_count() - problems.len().min(desc.part_count());
        bar.set_position((1000 * done / desc.part_count().max(1)) as u64);
        bar.set_message(format!("{done}/{} parts", desc.part_count()));
        std::thread::sleep(Duration::from_millis(500));
    }
    bar.finish_and_clear();
    let report = rayfarm_job::merge::merge(
        &a.job_desc,
        &key,
        &rayfarm_job::merge::MergeOptions::default(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    if !a.quiet {
        println!(
            "merged job {}: {} file(s) -> {}",
            desc.job_id(),
            report.written.len(),
            desc.out_dir()
        );
    }
    Ok(())
}

/// `rayfarm nodes --manager`: the manager's view of its nodes.
pub fn manager_nodes(addr: &str, config: Option<&Path>) -> Result<()> {
    let c = FarmClient::from_config(addr, config)?;
    let NodeListJson { nodes } = c.get("/api/v1/nodes")?;
    println!("{:<22} {:<16} {:>7}  STATE", "ADDRESS", "ALIAS", "THREADS");
    for n in &nodes {
        let detail = match n.state.as_str() {
            "working" => format!(
                "working on job {} ({})",
                n.job.as_deref().unwrap_or("?"),
                n.task.as_deref().unwrap_or("?")
            ),
            "occupied" => format!("occupied by master {}", n.master.as_deref().unwrap_or("?")),
            s => s.to_string(),
        };
        // The thread count is printed unpadded, as it always was (the JSON value ignored `{:>7}`).
        println!("{:<22} {:<16} {}  {}", n.addr, n.alias, n.threads, detail);
    }
    if nodes.is_empty() {
        println!("(the manager knows no nodes yet)");
    }
    Ok(())
}

/// Registers a daemon with a manager every few seconds (so a restarted manager learns it
/// again); runs until the process ends.
pub fn spawn_registration(manager: String, daemon_addr: String, key: rayfarm_proto::FarmKey) {
    std::thread::spawn(move || {
        let c = match FarmClient::new(&manager, &key) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot register with manager {manager}: {e:#}");
                return;
            }
        };
        let mut warned = false;
        loop {
            let request = RegisterRequest {
                addr: daemon_addr.clone(),
            };
            match c.post::<RegisteredJson>("/api/v1/nodes/register", &request) {
                Ok(_) => warned = false,
                Err(e) if !warned => {
                    tracing::warn!("cannot register with manager {manager}: {e}");
                    warned = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    });
}

/// Checks a network folder: it exists, is a folder and takes files. Returns its absolute path.
pub fn check_netdir(dir: &Path, quiet: bool) -> Result<PathBuf> {
    let abs = std::fs::canonicalize(dir).with_context(|| {
        format!(
            "{}: the network folder does not exist (create it, or mount the share there)",
            dir.display()
        )
    })?;
    if !abs.is_dir() {
        bail!("{}: the network folder is not a folder", abs.display());
    }
    // A new file of a random name, created only if nothing is there: the folder is shared,
    // and a write by a predictable name followed a symlink someone planted there and
    // truncated the file it pointed to (any file this user may write).
    let probe = abs.join(format!(".rayfarm-write-test.{}", new_job_id()?));
    write_probe(&probe)
        .with_context(|| format!("{}: cannot write into the network folder", abs.display()))?;
    let _ = std::fs::remove_file(&probe);
    if !quiet {
        eprintln!(
            "note: every node must reach the network folder at this same path, {} (nodes that mount it elsewhere: `rayfarm daemon --path-map {}=THEIR_PATH`)",
            abs.display(),
            abs.display()
        );
    }
    Ok(abs)
}

/// Creates the file `path`, which must not exist yet (not even as a symlink), and writes a
/// few bytes into it.
fn write_probe(path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    std::io::Write::write_all(&mut f, b"rayfarm")
}

/// A fresh job id: `j` and 12 random hexadecimal digits.
pub fn new_job_id() -> Result<String> {
    rayfarm_job::plan::new_job_id().map_err(|e| anyhow!("no randomness for a job id: {e}"))
}

/// Submits a prepared job folder to the manager `farm`, then (unless `no_wait`) follows the
/// job with a progress bar and merges it once it is complete. Ctrl-C stops following and
/// leaves the job running; a manager that is unreachable for a while (a restart) is waited
/// for up to five minutes. `verb` says what the farm did ("baked", "rendered").
#[allow(clippy::too_many_arguments)]
pub fn submit_follow_merge(
    farm: &str,
    job_dir: &Path,
    desc_path: &Path,
    tasks: usize,
    placeholders: usize,
    priority: i32,
    no_wait: bool,
    quiet: bool,
    verb: &str,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    let job_id = job_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let client = FarmClient::from_config(farm, None)?;
    let _: SubmittedJson = client.post(
        "/api/v1/jobs",
        &SubmitRequest {
            job_dir: job_dir.display().to_string(),
            priority,
        },
    )?;
    if !quiet {
        eprintln!(
            "submitted job {job_id} ({tasks} tasks) to {farm}; placeholders at {placeholders} output(s); job folder {}",
            job_dir.display()
        );
    }
    let later = format!("rayfarm merge {}", desc_path.display());
    if no_wait {
        println!("job {job_id} submitted; when it is done: {later}");
        return Ok(());
    }
    // Follow the job; Ctrl-C leaves it running on the farm.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    ctrlc_flag(interrupted.clone());
    let bar = crate::output::progress_bar(1000, quiet);
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            bar.finish_and_clear();
            eprintln!("stopped following job {job_id}; it goes on on the farm. Finish it later with: {later}");
            std::process::exit(130);
        }
        // A manager that restarts (or a network hiccup) is waited for, a while.
        let v: JobDetailJson = match client.get(&format!("/api/v1/jobs/{job_id}")) {
            Ok(v) => {
                unreachable_since = None;
                v
            }
            Err(e) if e.to_string().contains("cannot reach") => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(300) {
                    bar.finish_and_clear();
                    bail!("{e}; the job stays in its folder: finish it later with {later}");
                }
                bar.set_message(format!("job {job_id}: manager unreachable, retrying"));
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => return Err(e),
        };
        let job = v.job;
        let status = job.status;
        bar.set_position((job.progress * 1000.0) as u64);
        let t = job.tasks;
        match &job.blocked {
            Some(why) => bar.set_message(format!("job {job_id} blocked: {why}")),
            None => bar.set_message(format!(
                "job {job_id} {status}: {}/{tasks} tasks done, {} running",
                t.completed, t.running
            )),
        }
        match status.as_str() {
            "completed" => break,
            "failed" | "canceled" => {
                bar.finish_and_clear();
                bail!(
                    "job {job_id} {status} on the farm: {} (see `rayfarm job show {job_id} --manager {farm}`); the placeholders stay",
                    job.error.as_deref().unwrap_or("no reason given")
                );
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bar.finish_and_clear();
    let report = rayfarm_job::merge::merge(
        desc_path,
        &farm_key()?,
        &rayfarm_job::merge::MergeOptions::default(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    if !quiet {
        let out = report
            .written
            .first()
            .and_then(|p| p.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!(
            "{verb} on the farm: job {job_id}, {} file(s) -> {out}",
            report.written.len()
        );
    }
    Ok(())
}

/// Sets `flag` on Ctrl-C (the first one; a second ends the process as usual).
fn ctrlc_flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {

    /// The attack (anyone who may write into the shared network folder, no key): plant a
    /// symlink where the client probes the folder. The probe never writes through it.
    #[test]
    fn the_write_probe_never_follows_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("authorized_keys");
        std::fs::write(&victim, b"ssh-ed25519 AAAA... user").unwrap();
        let probe = dir.path().join(".rayfarm-write-test.x");
        std::os::unix::fs::symlink(&victim, &probe).unwrap();
        let e = write_probe(&probe).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"ssh-ed25519 AAAA... user");
        let net = dir.path().join("net");
        std::fs::create_dir(&net).unwrap();
        assert_eq!(
            check_netdir(&net, true).unwrap(),
            net.canonicalize().unwrap()
        );
        assert_eq!(
            std::fs::read_dir(&net).unwrap().count(),
            0,
            "the probe is gone"
        );
    }
    use super::*;

    #[test]
    fn manager_addresses_keep_their_scheme_and_get_the_default_port() {
        let port = rayfarm_farm::manager::DEFAULT_HTTP_PORT;
        assert_eq!(manager_base("m1"), format!("http://m1:{port}"));
        assert_eq!(manager_base("http://m1:80/"), "http://m1:80");
        assert_eq!(manager_base("https://m1"), format!("https://m1:{port}"));
        assert_eq!(
            manager_base(" https://10.0.0.5:9000 "),
            "https://10.0.0.5:9000"
        );
        assert_eq!(manager_addr("https://m1:9000"), "m1:9000");
        assert_eq!(manager_addr("m1"), format!("m1:{port}"));
    }

    #[test]
    fn every_request_carries_the_farms_token() {
        let key = rayfarm_proto::FarmKey::from_secret("farm-cmd-unit-test-key").unwrap();
        let c = FarmClient::new("m1", &key).unwrap();
        assert_eq!(c.authorization, format!("Bearer {}", key.api_token()));
    }
}
