//! The network-rendering test farm: one folder per test, and the masters, workers and daemons
//! it starts (shared by network.rs and attacks.rs).

use super::proc::Proc;
use rayfarm_proto::{DaemonInfo, DaemonState, FarmKey};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const KEY: &str = "e2e-network-test-key";
/// A small render: 9 tiles x 4 sample chunks.
pub const SMALL: &[&str] = &[
    "--width",
    "96",
    "--height",
    "96",
    "--spp",
    "64",
    "--max-bounces",
    "4",
];
/// A render that takes a few seconds on two single-threaded workers.
pub const LONG: &[&str] = &[
    "--width",
    "128",
    "--height",
    "128",
    "--spp",
    "256",
    "--max-bounces",
    "4",
];

/// One test's folder: config file (no key: the key comes from RAYFARM_KEY), caches, images.
pub struct Farm {
    dir: tempfile::TempDir,
}

impl Farm {
    pub fn new() -> Farm {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "version = 1\n").unwrap();
        Farm { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The environment of every process: the farm key, this test's config and cache.
    pub fn env(&self, log: &str) -> Vec<(&'static str, String)> {
        vec![
            ("RAYFARM_KEY", KEY.to_string()),
            (
                "RAYFARM_CONFIG",
                self.path("config.toml").display().to_string(),
            ),
            ("XDG_CACHE_HOME", self.path("cache").display().to_string()),
            ("RUST_LOG", log.to_string()),
        ]
    }

    /// A one-machine render; returns the EXR bytes.
    pub fn local_render(&self, name: &str, settings: &[&str]) -> Vec<u8> {
        let out = self.path(name);
        let mut args = strings(&["render", "-q", "-o"]);
        args.push(out.display().to_string());
        args.extend(strings(settings));
        let mut p = Proc::start("local render", &args, &self.env("warn"));
        p.wait_ok(Duration::from_secs(60));
        std::fs::read(&out).unwrap()
    }

    /// Starts `rayfarm render --network` writing `name`; `extra` holds discovery options etc.
    pub fn master(&self, name: &str, port: u16, settings: &[&str], extra: &[&str]) -> Proc {
        self.master_with_env(name, port, settings, extra, &[])
    }

    /// [`Farm::master`] with `extra_env` (test switches) in its environment.
    pub fn master_with_env(
        &self,
        name: &str,
        port: u16,
        settings: &[&str],
        extra: &[&str],
        extra_env: &[(&'static str, String)],
    ) -> Proc {
        let mut args = strings(&["render", "-o"]);
        args.push(self.path(name).display().to_string());
        args.extend(strings(settings));
        args.extend(strings(&[
            "--network",
            "--master-port",
            &port.to_string(),
            "--master-bind",
            "127.0.0.1",
        ]));
        args.extend(strings(extra));
        let mut env = self.env("info");
        env.extend_from_slice(extra_env);
        Proc::start(&format!("master {name}"), &args, &env)
    }

    /// Waits for the master to listen; returns the port it took.
    pub fn master_port(&self, m: &mut Proc) -> u16 {
        let e = m.wait_stderr("master listening on 127.0.0.1:", Duration::from_secs(30));
        let rest = &e[e.find("master listening on 127.0.0.1:").unwrap() + 30..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits for the master to finish and checks its image against `reference`.
    pub fn finish(&self, m: &mut Proc, name: &str, reference: &[u8]) {
        m.wait_ok(Duration::from_secs(120));
        let got = std::fs::read(self.path(name)).unwrap();
        assert!(
            got == reference,
            "{name} differs from the one-machine render ({} vs {} bytes):\n{}",
            got.len(),
            reference.len(),
            m.describe()
        );
    }

    /// A hand-started worker (one thread) with its own scene cache folder `cache`.
    pub fn worker(&self, alias: &str, port: u16, cache: &str) -> Proc {
        self.worker_at(alias, &format!("127.0.0.1:{port}"), cache)
    }

    /// [`Farm::worker`] for a master at `master` (HOST:PORT), e.g. behind a proxy.
    pub fn worker_at(&self, alias: &str, master: &str, cache: &str) -> Proc {
        self.worker_with_env(alias, master, cache, &[])
    }

    /// [`Farm::worker_at`] with `extra_env` (test switches) in its environment.
    pub fn worker_with_env(
        &self,
        alias: &str,
        master: &str,
        cache: &str,
        extra_env: &[(&'static str, String)],
    ) -> Proc {
        let args = strings(&[
            "worker",
            "--master",
            master,
            "--threads",
            "1",
            "--alias",
            alias,
            "--cache-dir",
            &self.path(cache).display().to_string(),
        ]);
        let mut env = self.env("info");
        env.extend_from_slice(extra_env);
        Proc::start(&format!("worker {alias}"), &args, &env)
    }

    /// A daemon on `ip`:48000 with one worker thread; waits until it answers discovery.
    pub fn daemon(&self, ip: &str, alias: &str, extra_env: &[(&'static str, String)]) -> Proc {
        let args = strings(&[
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
        let mut env = self.env("info");
        // Its workers' scene cache (the default one under XDG_CACHE_HOME), one per daemon.
        env.retain(|(k, _)| *k != "XDG_CACHE_HOME");
        env.push((
            "XDG_CACHE_HOME",
            self.path(&format!("cache-{alias}")).display().to_string(),
        ));
        env.extend(extra_env.iter().cloned());
        let mut d = Proc::start(&format!("daemon {alias}"), &args, &env);
        let addr = format!("{ip}:48000");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(info) = discover(&addr) {
                assert_eq!(info.alias, alias);
                assert_eq!(info.state, DaemonState::Idle, "{}", d.describe());
                return d;
            }
            assert!(d.running(), "daemon {alias} exited:\n{}", d.describe());
            assert!(
                Instant::now() < until,
                "daemon {alias} never answered:\n{}",
                d.describe()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `rayfarm nodes` with `args`; returns its stdout.
    pub fn nodes(&self, args: &[&str]) -> String {
        let mut a = strings(&["nodes"]);
        a.extend(strings(args));
        let mut p = Proc::start("nodes", &a, &self.env("warn"));
        p.wait_ok(Duration::from_secs(30));
        p.stdout()
    }
}

pub fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Asks a daemon who it is, as a master's scan does.
pub fn discover(addr: &str) -> Result<DaemonInfo, String> {
    runtime()
        .block_on(rayfarm_master::query_daemon(
            addr,
            &FarmKey::from_secret(KEY).unwrap(),
            Duration::from_secs(2),
        ))
        .map_err(|e| e.to_string())
}
