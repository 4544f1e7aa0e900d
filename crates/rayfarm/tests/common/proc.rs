//! A running `rayfarm` process for end-to-end tests: output collected, killed with its whole
//! process group when dropped.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Collects everything `r` yields into a shared string, on a thread.
pub fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// A running `rayfarm` process with its output collected. Dropping it kills its whole process
/// group (a daemon's workers too).
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Whether `child` has been reaped (then its process group may be gone and is left alone).
    reaped: bool,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    pub fn start(name: &str, args: &[String], env: &[(&str, String)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rayfarm"))
            .args(args)
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("rayfarm starts");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Proc {
            name: name.to_string(),
            child,
            reaped: false,
            out,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub fn describe(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// Sends a signal (`INT`, `TERM`, `KILL`) to this process only.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill -{sig} {} failed", self.name);
    }

    pub fn running(&mut self) -> bool {
        !self.reaped && self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (panics after `within`), then for its output.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.reaped = true;
                // Let the output readers catch up.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            assert!(
                Instant::now() < until,
                "{} did not exit within {within:?}:\n{}",
                self.name,
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a successful exit.
    pub fn wait_ok(&mut self, within: Duration) {
        let st = self.wait(within);
        assert!(
            st.success(),
            "{} failed ({st}):\n{}",
            self.name,
            self.describe()
        );
        assert!(
            !self.stderr().contains("panicked"),
            "{} panicked:\n{}",
            self.name,
            self.describe()
        );
    }

    /// Waits until stderr contains `needle`; returns the stderr.
    pub fn wait_stderr(&mut self, needle: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let e = self.stderr();
            if e.contains(needle) {
                return e;
            }
            assert!(
                self.running(),
                "{} exited before printing {needle:?}:\n{}",
                self.name,
                self.describe()
            );
            assert!(
                Instant::now() < until,
                "{} did not print {needle:?} within {within:?}:\n{}",
                self.name,
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // The whole group: the process and everything it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pid())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
