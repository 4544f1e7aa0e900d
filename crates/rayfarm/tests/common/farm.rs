//! The job-manager end-to-end harness shared by farm.rs and farm_nodes.rs: a temporary farm
//! folder (config, network folder, caches), `rayfarm manager` and `rayfarm daemon` processes
//! on loopback addresses, and bake clients. Each test file picks its own addresses and ports.

use super::proc::Proc;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "e2e-farm-test-key";

/// The manager API's bearer token of the test farms' key.
/// The farm key every process of a test farm holds.
#[allow(dead_code)]
pub fn farm_key() -> rayfarm_proto::FarmKey {
    rayfarm_proto::FarmKey::from_secret(KEY).unwrap()
}

pub fn api_token() -> String {
    rayfarm_proto::FarmKey::from_secret(KEY)
        .unwrap()
        .api_token()
}

/// An HTTP client for the tests' API calls: every status is an answer, not an error.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(20)))
        .build()
        .into()
}

pub fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

pub fn scene() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/two-charts.obj")
}

/// Every file of a folder, by name.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

pub fn assert_same(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: other files"
    );
    for (name, bytes) in want {
        assert!(&got[name] == bytes, "{what}: {name} differs");
    }
}

pub struct Farm {
    pub dir: tempfile::TempDir,
}

impl Farm {
    pub fn new() -> Farm {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "version = 1\n").unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        Farm { dir }
    }

    /// The manager API's bearer token of this farm's key.
    pub fn api_token(&self) -> String {
        api_token()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The network folder as the client names it in job.desc (canonical).
    pub fn net(&self) -> PathBuf {
        std::fs::canonicalize(self.path("net")).unwrap()
    }

    /// A `--path-map` that sends the network folder below a regular file: writing a part
    /// there fails with "Not a directory", even as root.
    pub fn bad_path_map(&self) -> (String, PathBuf) {
        let file = self.path("not-a-dir");
        std::fs::write(&file, b"a file, not a folder").unwrap();
        let target = std::fs::canonicalize(&file).unwrap().join("net");
        (
            format!("{}={}", self.net().display(), target.display()),
            target,
        )
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RAYFARM_KEY", KEY.to_string()),
            (
                "RAYFARM_CONFIG",
                self.path("config.toml").display().to_string(),
            ),
            ("XDG_CACHE_HOME", self.path("cache").display().to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
    }

    pub fn daemon(&self, ip: &str, alias: &str, extra: &[&str]) -> Proc {
        let mut args = strings(&[
            "daemon",
            "--bind",
            ip,
            "--port",
            "48000",
            "--threads",
            "1",
            "--alias",
            alias,
        ]);
        args.extend(strings(extra));
        let mut env = self.env();
        env.retain(|(k, _)| *k != "XDG_CACHE_HOME");
        env.push((
            "XDG_CACHE_HOME",
            self.path(&format!("cache-{alias}")).display().to_string(),
        ));
        let mut d = Proc::start(&format!("daemon {alias}"), &args, &env);
        d.wait_stderr("listening", Duration::from_secs(30));
        d
    }

    pub fn manager(&self, port: u16, daemons: &[&str]) -> Proc {
        self.manager_at("127.0.0.1", port, daemons)
    }

    /// A manager listening on `ip` (a loopback address of the test file's own).
    pub fn manager_at(&self, ip: &str, port: u16, daemons: &[&str]) -> Proc {
        self.manager_with(ip, port, daemons, "0.3")
    }

    /// [`Farm::manager_at`] looking at its daemons every `scan_interval` seconds.
    pub fn manager_with(&self, ip: &str, port: u16, daemons: &[&str], scan_interval: &str) -> Proc {
        self.manager_extra(ip, port, daemons, scan_interval, &[])
    }

    /// [`Farm::manager_with`] with more `rayfarm manager` options.
    pub fn manager_extra(
        &self,
        ip: &str,
        port: u16,
        daemons: &[&str],
        scan_interval: &str,
        extra: &[&str],
    ) -> Proc {
        let mut args = strings(&[
            "manager",
            "--bind",
            ip,
            "--port",
            &port.to_string(),
            "--db",
            &self.path("manager.db").display().to_string(),
            "--scan-interval",
            scan_interval,
            "--task-lease",
            "5",
            // The manager serves job folders from the farm's network folder only.
            "--netdir",
            &self.net().display().to_string(),
        ]);
        for d in daemons {
            args.push("--daemon".into());
            args.push(d.to_string());
        }
        args.extend(strings(extra));
        let mut m = Proc::start("manager", &args, &self.env());
        m.wait_stderr("manager listening", Duration::from_secs(30));
        m
    }

    pub fn bake_args(&self, out: &str, extra: &[&str]) -> Vec<String> {
        let mut a = strings(&["bake"]);
        a.push(scene().display().to_string());
        a.push("--out".into());
        a.push(self.path(out).display().to_string());
        a.extend(strings(&["--size", "64", "--max-bounces", "3"]));
        a.extend(strings(extra));
        a
    }

    /// A one-machine bake; returns its files.
    pub fn local(&self, out: &str, extra: &[&str]) -> BTreeMap<String, Vec<u8>> {
        let mut args = self.bake_args(out, extra);
        args.push("-q".into());
        let mut p = Proc::start("local bake", &args, &self.env());
        p.wait_ok(Duration::from_secs(120));
        files(&self.path(out))
    }

    pub fn client(&self, out: &str, port: u16, extra: &[&str]) -> Proc {
        let mut args = self.bake_args(out, extra);
        args.extend(strings(&[
            "--farm",
            &format!("127.0.0.1:{port}"),
            "--netdir",
            &self.path("net").display().to_string(),
        ]));
        Proc::start(&format!("client {out}"), &args, &self.env())
    }

    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut p = Proc::start(&args.join(" "), &strings(args), &self.env());
        let st = p.wait(Duration::from_secs(120));
        (st.success(), p.stdout(), p.stderr())
    }

    /// The job id and task count a client printed.
    pub fn job_id(c: &mut Proc) -> (String, usize) {
        let e = c.wait_stderr("submitted job ", Duration::from_secs(120));
        let rest = &e[e.find("submitted job ").unwrap() + 14..];
        let mut words = rest.split_whitespace();
        let id = words.next().unwrap().to_string();
        let tasks = words
            .next()
            .and_then(|w| w.strip_prefix('('))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no task count in {rest:?}"));
        (id, tasks)
    }

    /// Submits a small bake to the manager at `manager` (`HOST:PORT`) without waiting for it;
    /// its job id.
    pub fn submit_bake(&self, manager: &str) -> String {
        let mut args = self.bake_args("maps", &["--spp", "4", "--no-wait"]);
        args.extend(strings(&[
            "--farm",
            manager,
            "--netdir",
            &self.path("net").display().to_string(),
        ]));
        let mut c = Proc::start("client", &args, &self.env());
        let (id, _) = Farm::job_id(&mut c);
        c.wait_ok(Duration::from_secs(60));
        id
    }

    pub fn net_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.path("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}
