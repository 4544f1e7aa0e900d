//! The one accept loop of every rayfarm TCP port (daemon, master, the manager's worker port).
//!
//! It owns what a hostile peer on the LAN could exhaust: file descriptors, tasks and log
//! space. A connection is first *pending* (preamble and channel handshake, under a deadline);
//! pending connections are bounded in total and per peer address, and when the bound is hit
//! the oldest pending connection of the address holding the most is closed, so a flood of idle
//! connections keeps being recycled while a real peer, whose handshake takes a round trip,
//! gets through. Only a peer that completed the handshake (it holds the farm key) becomes a
//! *session* and is handed to the server; sessions have their own bound, which strangers can
//! never take. Accept errors (e.g. out of file descriptors) pause the loop briefly; refusals
//! are logged at a bounded rate.
//!
//! Shutdown: dropping the [`SecureListener`] stops the accept loop and closes the port;
//! handshakes in flight end at their deadline at the latest, and their connections are dropped.

use crate::{accept_within, Conn, FarmKey, ProtoError, Role, HANDSHAKE_TIMEOUT};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::warn;

/// Bounds of one port. The defaults suit a daemon, a master and a manager alike.
#[derive(Clone, Debug)]
pub struct ListenLimits {
    /// Connections in the preamble or handshake, all addresses together.
    pub max_pending: usize,
    /// Connections in the preamble or handshake from one address.
    pub max_pending_per_ip: usize,
    /// Authenticated connections served at once.
    pub max_sessions: usize,
    /// Time a connection has to complete the preamble and handshake.
    pub handshake_timeout: Duration,
    /// Pause after a failed accept (e.g. EMFILE), so the loop does not spin.
    pub accept_error_pause: Duration,
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits {
            max_pending: 64,
            max_pending_per_ip: 16,
            max_sessions: 512,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            accept_error_pause: Duration::from_millis(100),
        }
    }
}

/// The pending connections, oldest first (ids grow with time).
#[derive(Default)]
struct Pending {
    entries: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
}

impl Pending {
    /// Which pending connection to close so that one from `ip` can be admitted, if any must.
    /// Pure: the decision is unit-tested.
    fn victim(&self, ip: IpAddr, limits: &ListenLimits) -> Option<u64> {
        let from_ip = self.entries.values().filter(|(a, _)| *a == ip).count();
        let target = if from_ip >= limits.max_pending_per_ip {
            ip
        } else if self.entries.len() >= limits.max_pending {
            // The address holding the most pending connections pays (the earliest such
            // address on a tie, by its oldest connection).
            let mut counts: Vec<(IpAddr, usize, u64)> = Vec::new();
            for (&id, (a, _)) in &self.entries {
                match counts.iter_mut().find(|(x, _, _)| x == a) {
                    Some(c) => c.1 += 1,
                    None => counts.push((*a, 1, id)),
                }
            }
            counts
                .iter()
                .max_by(|x, y| x.1.cmp(&y.1).then(y.2.cmp(&x.2)))?
                .0
        } else {
            return None;
        };
        self.entries
            .iter()
            .find(|(_, (a, _))| *a == target)
            .map(|(&id, _)| id)
    }
}

/// At most `burst` lines per `window`; the next line allowed says how many were suppressed.
struct RateLimitedLog {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(window: Duration, burst: u32) -> Self {
        RateLimitedLog {
            window,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be written now (`n` lines were suppressed before it).
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(s) if now.duration_since(s) < self.window => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[derive(Clone)]
struct Logger(Arc<Mutex<RateLimitedLog>>, SocketAddr);

impl Logger {
    fn warn(&self, line: impl FnOnce() -> String) {
        let allowed = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now());
        if let Some(n) = allowed {
            if n > 0 {
                warn!("port {}: {} ({n} similar lines suppressed)", self.1, line());
            } else {
                warn!("port {}: {}", self.1, line());
            }
        }
    }
}

/// A bound, listening rayfarm port that yields only authenticated connections.
pub struct SecureListener {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SecureListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SecureListener {
    /// Serves `listener` as `role`, admitting only holders of `key`. Must be called inside a
    /// tokio runtime.
    pub fn new(
        listener: TcpListener,
        role: Role,
        key: FarmKey,
        limits: ListenLimits,
    ) -> std::io::Result<SecureListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(accept_loop(listener, local, role, key, limits, tx));
        Ok(SecureListener { rx, local, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next authenticated connection. Cancellation-safe.
    pub async fn accept(&mut self) -> Conn {
        match self.rx.recv().await {
            Some(c) => c,
            // The loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    role: Role,
    key: FarmKey,
    limits: ListenLimits,
    tx: mpsc::Sender<Conn>,
) {
    let pending = Arc::new(Mutex::new(Pending::default()));
    let sessions = Arc::new(Semaphore::new(limits.max_sessions));
    let log = Logger(
        Arc::new(Mutex::new(RateLimitedLog::new(Duration::from_secs(10), 10))),
        local,
    );
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log.warn(|| format!("accepting a connection failed: {e}; pausing"));
                tokio::time::sleep(limits.accept_error_pause).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        next_id += 1;
        let id = next_id;
        let (evict_tx, evict_rx) = oneshot::channel();
        {
            let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = p.victim(peer.ip(), &limits) {
                if let Some((ip, _sender)) = p.entries.remove(&v) {
                    // Dropping the sender wakes the victim's task, which closes it.
                    log.warn(|| {
                        format!(
                            "closing a pending connection from {ip}: {} handshakes in progress ({} from that address)",
                            p.entries.len() + 1,
                            p.entries.values().filter(|(a, _)| *a == ip).count() + 1
                        )
                    });
                }
            }
            p.entries.insert(id, (peer.ip(), evict_tx));
        }
        let (pending, sessions, key, tx, log) = (
            pending.clone(),
            sessions.clone(),
            key.clone(),
            tx.clone(),
            log.clone(),
        );
        let timeout = limits.handshake_timeout;
        let max_sessions = limits.max_sessions;
        tokio::spawn(async move {
            let r = tokio::select! {
                r = accept_within(stream, role, &key, timeout) => Some(r),
                _ = evict_rx => None,
            };
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entries
                .remove(&id);
            match r {
                None => {}
                Some(Err(e)) => log.warn(|| refusal(peer, &e)),
                Some(Ok(mut conn)) => match sessions.try_acquire_owned() {
                    Ok(permit) => {
                        conn.hold_session(permit);
                        let _ = tx.send(conn).await;
                    }
                    Err(_) => log.warn(|| {
                        format!("refused {peer}: {max_sessions} sessions are already open")
                    }),
                },
            }
        });
    }
}

fn refusal(peer: SocketAddr, e: &ProtoError) -> String {
    match e {
        ProtoError::AuthFailed { reason, .. } => {
            format!("refused {peer}: authentication failed: {reason}")
        }
        other => format!("refused {peer}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn with(entries: &[(u64, u8)]) -> Pending {
        let mut p = Pending::default();
        for &(id, n) in entries {
            p.entries.insert(id, (ip(n), oneshot::channel().0));
        }
        p
    }

    fn limits(total: usize, per_ip: usize) -> ListenLimits {
        ListenLimits {
            max_pending: total,
            max_pending_per_ip: per_ip,
            ..ListenLimits::default()
        }
    }

    #[test]
    fn below_the_limits_nobody_is_closed() {
        let p = with(&[(1, 1), (2, 2)]);
        assert_eq!(p.victim(ip(3), &limits(3, 2)), None);
    }

    #[test]
    fn an_address_at_its_limit_loses_its_own_oldest() {
        let p = with(&[(1, 2), (2, 1), (3, 1)]);
        assert_eq!(p.victim(ip(1), &limits(10, 2)), Some(2));
    }

    #[test]
    fn when_full_the_address_holding_most_loses_its_oldest() {
        // A flood from .9 and one real peer from .5 arriving: the flood pays.
        let p = with(&[(1, 5), (2, 9), (3, 9), (4, 9)]);
        assert_eq!(p.victim(ip(5), &limits(4, 16)), Some(2));
        // A tie goes to the address whose oldest connection is oldest.
        let p = with(&[(1, 5), (2, 9), (3, 5), (4, 9)]);
        assert_eq!(p.victim(ip(7), &limits(4, 16)), Some(1));
    }

    #[test]
    fn refusal_lines_are_bounded_and_count_what_they_dropped() {
        let mut l = RateLimitedLog::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        for _ in 0..500 {
            assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), Some(500));
    }

    #[tokio::test]
    async fn an_idle_flood_does_not_keep_a_keyholder_out() {
        let key = FarmKey::from_secret("listener test farm key").unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut sl = SecureListener::new(
            l,
            Role::Daemon,
            key.clone(),
            ListenLimits {
                max_pending: 8,
                max_pending_per_ip: 8,
                ..ListenLimits::default()
            },
        )
        .unwrap();
        let addr = sl.local_addr().to_string();
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        let t = Instant::now();
        let client = tokio::spawn(async move {
            crate::connect(&addr, Role::Master, &key, Duration::from_secs(2)).await
        });
        let mut served = tokio::time::timeout(Duration::from_secs(5), sl.accept())
            .await
            .expect("the keyholder was kept out by idle connections");
        let mut c = client.await.unwrap().unwrap();
        c.send(&crate::Msg::Heartbeat).await.unwrap();
        assert_eq!(served.recv().await.unwrap(), crate::Msg::Heartbeat);
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(idle);
    }
}
