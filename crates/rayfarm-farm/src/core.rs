//! The manager's decisions about nodes and worker sessions, without IO: they take what
//! happened (a scan's answers, a registration expiring, a lease ending, a worker asking for
//! work, a lease-renewal tick) and the time, and say what to do (take a daemon's lease, forget a
//! node, run a task, wait, release or drop the worker, tell it to stop a task). `manager.rs`
//! only translates between these and sockets; the unit tests below drive them with a fake
//! clock.
//!
//! The job queue's own state machine (task assignment by priority, leases and their expiry,
//! requeue on node loss, the retry limit, per-job node exclusion, pause, cancel, delete) is the
//! [`crate::store::Store`]'s: every transition is one SQLite transaction taking `now` as an
//! argument, and its tests drive it with a fake clock on an in-memory database.

use std::collections::BTreeMap;
use std::time::Duration;

/// What a daemon said when scanned (or that it did not answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanAnswer {
    /// It answered: its alias, thread count, machine and state.
    Answered {
        alias: String,
        threads: u32,
        hardware: Hardware,
        state: DaemonSeen,
    },
    /// No answer (refused, timed out, another farm key).
    NoAnswer,
}

/// What a daemon reports of its machine besides the threads it offers (shown by the monitor's
/// node page; rendering is on the CPU, GPUs are only listed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hardware {
    pub cpu_model: String,
    /// Threads the machine has (the node may offer fewer: `--threads`).
    pub cpu_threads: u32,
    pub gpus: Vec<String>,
}

/// A daemon's state as a scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonSeen {
    Idle,
    Occupied { master: String },
    Unhealthy { reason: String },
}

/// One node as the manager knows it (by daemon address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeEntry {
    pub alias: String,
    pub threads: u32,
    /// As its daemon last reported it.
    pub hardware: Hardware,
    /// Daemon state as last seen: idle, occupied, `unhealthy: ...`, unreachable, lost.
    pub daemon_state: String,
    /// The master holding it, when occupied by someone else.
    pub master: Option<String>,
    pub last_seen_ms: i64,
    /// We hold its lease (our worker runs there).
    pub held: bool,
    pub ever_seen: bool,
}

/// The nodes found by configuration, scans and registrations.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: BTreeMap<String, NodeEntry>,
}

impl NodeTable {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &NodeEntry)> {
        self.nodes.iter()
    }

    pub fn get(&self, addr: &str) -> Option<&NodeEntry> {
        self.nodes.get(addr)
    }

    /// Records one scan answer. `registered`: the address registered itself (so a silent one
    /// is still listed, as unreachable). `wanted`: some queued job may run on this alias (it is
    /// not excluded from all of them). Returns the alias whose lease to take: an idle daemon
    /// we do not hold, while there is work for it.
    pub fn on_scan(
        &mut self,
        addr: &str,
        answer: ScanAnswer,
        now_ms: i64,
        registered: bool,
        wanted: impl FnOnce(&str) -> bool,
    ) -> Option<String> {
        match answer {
            ScanAnswer::NoAnswer => {
                if let Some(n) = self.nodes.get_mut(addr) {
                    n.daemon_state = if n.held { "lost" } else { "unreachable" }.into();
                } else if registered {
                    self.nodes.insert(
                        addr.to_string(),
                        NodeEntry {
                            daemon_state: "unreachable".into(),
                            ..Default::default()
                        },
                    );
                }
                None
            }
            ScanAnswer::Answered {
                alias,
                threads,
                hardware,
                state,
            } => {
                let n = self.nodes.entry(addr.to_string()).or_default();
                n.alias = alias;
                n.threads = threads;
                n.hardware = hardware;
                n.last_seen_ms = now_ms;
                n.ever_seen = true;
                match state {
                    DaemonSeen::Idle => {
                        n.daemon_state = "idle".into();
                        n.master = None;
                        if !n.held && wanted(&n.alias) {
                            n.held = true;
                            return Some(n.alias.clone());
                        }
                    }
                    DaemonSeen::Occupied { master } => {
                        // Occupied by us (our worker runs there) is not "occupied".
                        if !n.held {
                            n.daemon_state = "occupied".into();
                            n.master = Some(master);
                        }
                    }
                    DaemonSeen::Unhealthy { reason } => {
                        n.daemon_state = format!("unhealthy: {reason}");
                    }
                }
                None
            }
        }
    }

    /// Our lease on `addr` ended (the worker left, the daemon went away, or we released it).
    pub fn lease_ended(&mut self, addr: &str) {
        if let Some(n) = self.nodes.get_mut(addr) {
            n.held = false;
        }
    }

    /// Registrations that expired: their node entries go, unless configured or held.
    pub fn forget_expired(&mut self, expired: &[String], configured: &[String]) -> Vec<String> {
        let mut gone = Vec::new();
        for a in expired {
            if !configured.contains(a) && self.nodes.get(a).is_some_and(|n| !n.held) {
                self.nodes.remove(a);
                gone.push(a.clone());
            }
        }
        gone
    }
}

/// What a worker session does next when it has nothing running.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionStep<T> {
    /// Send it this task.
    Run(T),
    /// Nothing for it now: wait for news (a heartbeat, a new job) and ask again.
    Wait,
    /// Nothing for it for [`crate::manager::IDLE_RELEASE`]: say goodbye, so its daemon is free
    /// for other masters.
    Release { reason: &'static str },
    /// The manager is stopping.
    Shutdown { reason: &'static str },
}

/// The next step of an idle session: `next` is the task the queue gave it (if any), `idle`
/// how long it has had none.
pub fn session_step<T>(
    next: Option<T>,
    idle: Duration,
    release_after: Duration,
    stopping: bool,
) -> SessionStep<T> {
    if stopping {
        return SessionStep::Shutdown {
            reason: "manager shutting down",
        };
    }
    match next {
        Some(t) => SessionStep::Run(t),
        None if idle > release_after => SessionStep::Release {
            reason: "no more work",
        },
        None => SessionStep::Wait,
    }
}

/// What a running task's once-a-second tick decides.
#[derive(Debug, PartialEq, Eq)]
pub enum TickStep {
    /// Renewed: keep going.
    Continue,
    /// The worker has said nothing for longer than the limit: the session is lost.
    Silent { seconds: u64 },
    /// The lease could not be renewed (the task was canceled, deleted or given to another node):
    /// tell the worker to drop it.
    StopTask,
}

/// The tick of a running task: `silent` is how long since the worker last said anything,
/// `renewed` whether the store renewed the task's lease.
pub fn task_tick(silent: Duration, limit: Duration, renewed: bool) -> TickStep {
    if silent > limit {
        TickStep::Silent {
            seconds: limit.as_secs(),
        }
    } else if !renewed {
        TickStep::StopTask
    } else {
        TickStep::Continue
    }
}

/// After a restart, for a task the store says was running: done if its part is in the folder
/// and intact, else back to the queue (as if its node was lost).
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    Done,
    Requeue,
}

pub fn recover_task(part_intact: bool) -> Recovery {
    if part_intact {
        Recovery::Done
    } else {
        Recovery::Requeue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(alias: &str) -> ScanAnswer {
        ScanAnswer::Answered {
            alias: alias.into(),
            threads: 8,
            hardware: Hardware {
                cpu_model: "Test CPU 9000".into(),
                cpu_threads: 16,
                gpus: vec!["Test GPU".into()],
            },
            state: DaemonSeen::Idle,
        }
    }

    #[test]
    fn an_idle_daemon_with_work_is_taken_once() {
        let mut t = NodeTable::default();
        assert_eq!(
            t.on_scan("10.0.0.1:48000", idle("a"), 1000, false, |_| true),
            Some("a".to_string())
        );
        let n = t.get("10.0.0.1:48000").unwrap();
        assert!(n.held && n.ever_seen && n.last_seen_ms == 1000 && n.threads == 8);
        assert_eq!(
            (n.hardware.cpu_model.as_str(), n.hardware.cpu_threads),
            ("Test CPU 9000", 16)
        );
        assert_eq!(n.hardware.gpus, ["Test GPU"]);
        // Held: the next scan (its daemon may still say idle while the worker starts) takes
        // nothing more.
        assert_eq!(
            t.on_scan("10.0.0.1:48000", idle("a"), 2000, false, |_| true),
            None
        );
        // The lease ends; with work left it is taken again.
        t.lease_ended("10.0.0.1:48000");
        assert_eq!(
            t.on_scan("10.0.0.1:48000", idle("a"), 3000, false, |_| true),
            Some("a".to_string())
        );
    }

    #[test]
    fn no_work_or_an_excluded_node_or_another_masters_node_is_left_alone() {
        let mut t = NodeTable::default();
        assert_eq!(t.on_scan("h:1", idle("a"), 0, false, |_| false), None);
        assert_eq!(t.get("h:1").unwrap().daemon_state, "idle");
        let occupied = ScanAnswer::Answered {
            alias: "b".into(),
            threads: 4,
            hardware: Hardware::default(),
            state: DaemonSeen::Occupied {
                master: "10.0.0.9:21000".into(),
            },
        };
        assert_eq!(t.on_scan("h:2", occupied, 0, false, |_| true), None);
        let n = t.get("h:2").unwrap();
        assert_eq!(n.daemon_state, "occupied");
        assert_eq!(n.master.as_deref(), Some("10.0.0.9:21000"));
        let sick = ScanAnswer::Answered {
            alias: "c".into(),
            threads: 4,
            hardware: Hardware::default(),
            state: DaemonSeen::Unhealthy {
                reason: "worker probe failed".into(),
            },
        };
        assert_eq!(t.on_scan("h:3", sick, 0, false, |_| true), None);
        assert_eq!(
            t.get("h:3").unwrap().daemon_state,
            "unhealthy: worker probe failed"
        );
    }

    #[test]
    fn silent_daemons_are_lost_when_held_and_unreachable_otherwise() {
        let mut t = NodeTable::default();
        t.on_scan("h:1", idle("a"), 0, false, |_| true);
        t.on_scan("h:2", idle("b"), 0, false, |_| false);
        t.on_scan("h:1", ScanAnswer::NoAnswer, 10, false, |_| true);
        t.on_scan("h:2", ScanAnswer::NoAnswer, 10, false, |_| true);
        assert_eq!(t.get("h:1").unwrap().daemon_state, "lost");
        assert_eq!(t.get("h:2").unwrap().daemon_state, "unreachable");
        // Unknown and silent: listed only when it registered itself.
        t.on_scan("h:3", ScanAnswer::NoAnswer, 10, true, |_| true);
        t.on_scan("h:4", ScanAnswer::NoAnswer, 10, false, |_| true);
        assert_eq!(t.get("h:3").unwrap().daemon_state, "unreachable");
        assert!(t.get("h:4").is_none());
    }

    #[test]
    fn expired_registrations_forget_only_unheld_unconfigured_nodes() {
        let mut t = NodeTable::default();
        t.on_scan("h:1", idle("a"), 0, true, |_| false);
        t.on_scan("h:2", idle("b"), 0, true, |_| true); // held
        t.on_scan("h:3", idle("c"), 0, true, |_| false);
        let gone = t.forget_expired(&["h:1".into(), "h:2".into(), "h:3".into()], &["h:3".into()]);
        assert_eq!(gone, vec!["h:1".to_string()]);
        assert!(t.get("h:1").is_none() && t.get("h:2").is_some() && t.get("h:3").is_some());
    }

    #[test]
    fn an_idle_session_waits_then_is_released_and_stops_with_the_manager() {
        let release = Duration::from_secs(3);
        assert_eq!(
            session_step(Some(7), Duration::from_secs(100), release, false),
            SessionStep::Run(7)
        );
        assert_eq!(
            session_step::<u32>(None, Duration::from_secs(1), release, false),
            SessionStep::Wait
        );
        assert_eq!(
            session_step::<u32>(None, Duration::from_secs(4), release, false),
            SessionStep::Release {
                reason: "no more work"
            }
        );
        assert!(matches!(
            session_step(Some(7), Duration::ZERO, release, true),
            SessionStep::Shutdown { .. }
        ));
    }

    #[test]
    fn a_running_task_continues_stops_when_its_lease_is_gone_and_fails_when_silent() {
        let limit = Duration::from_secs(10);
        assert_eq!(
            task_tick(Duration::from_secs(1), limit, true),
            TickStep::Continue
        );
        assert_eq!(
            task_tick(Duration::from_secs(1), limit, false),
            TickStep::StopTask
        );
        assert_eq!(
            task_tick(Duration::from_secs(11), limit, true),
            TickStep::Silent { seconds: 10 }
        );
    }

    #[test]
    fn recovery_keeps_intact_parts_and_requeues_the_rest() {
        assert_eq!(recover_task(true), Recovery::Done);
        assert_eq!(recover_task(false), Recovery::Requeue);
    }
}
