//! Finding daemons and holding their nodes.
//!
//! `lease_loop` scans the configured ranges and named daemons every `scan_interval`; for each
//! idle daemon (matching `--nodes` if given) it spawns a lease holder that asks the daemon to
//! start a worker pointed at this master, heartbeats every second, and sends `Release` when the
//! render ends. Nothing is scanned unless the user names ranges or daemons.

use crate::{query_daemon, NetworkOptions, SessionError};
use rayfarm_proto::{connect, DaemonState, FarmKey, Msg, Role, DAEMON_PORT};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Most addresses one `--scan` range may hold (a /16).
pub const MAX_SCAN_ADDRESSES: u64 = 1 << 16;
/// Time allowed to connect to one address while scanning.
pub const SCAN_CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// Why a scan range is refused, or a lease ended; each variant names the range or the message
/// at fault (a channel error names the daemon).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("'{0}': bad prefix length")]
    PrefixLength(String),
    #[error("'{0}': not an IPv4 address")]
    NotIpv4(String),
    #[error("'{0}': prefix length must be 0-32")]
    PrefixRange(String),
    #[error("'{range}' holds {count} addresses; scan at most a /16")]
    RangeTooLarge { range: String, count: u64 },
    #[error(transparent)]
    Channel(#[from] rayfarm_proto::ProtoError),
    #[error(transparent)]
    LocalAddr(#[from] std::io::Error),
    #[error("refused: {0}")]
    Refused(String),
    #[error("worker ended: {0}")]
    WorkerEnded(String),
    #[error("unexpected {0}")]
    Unexpected(&'static str),
}

/// Every address of an IPv4 CIDR range (`10.0.0.0/24`; a bare address is a /32).
pub fn expand_cidr(cidr: &str) -> Result<Vec<Ipv4Addr>, DiscoveryError> {
    let (ip, bits) = match cidr.split_once('/') {
        Some((ip, b)) => (
            ip,
            b.parse::<u32>()
                .map_err(|_| DiscoveryError::PrefixLength(cidr.to_string()))?,
        ),
        None => (cidr, 32),
    };
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| DiscoveryError::NotIpv4(cidr.to_string()))?;
    if bits > 32 {
        return Err(DiscoveryError::PrefixRange(cidr.to_string()));
    }
    let count = 1u64 << (32 - bits);
    if count > MAX_SCAN_ADDRESSES {
        return Err(DiscoveryError::RangeTooLarge {
            range: cidr.to_string(),
            count,
        });
    }
    let base = u32::from(ip)
        & if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
    Ok((0..count)
        .map(|i| Ipv4Addr::from(base + i as u32))
        .collect())
}

/// `HOST[:PORT]` with the daemon port as default.
pub fn daemon_addr(s: &str) -> String {
    if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{DAEMON_PORT}")
    }
}

/// All daemon addresses the options name.
pub fn candidates(scan: &[String], daemons: &[String]) -> Result<Vec<String>, DiscoveryError> {
    let mut out: Vec<String> = daemons.iter().map(|d| daemon_addr(d)).collect();
    for r in scan {
        out.extend(
            expand_cidr(r)?
                .into_iter()
                .map(|ip| format!("{ip}:{DAEMON_PORT}")),
        );
    }
    let mut seen = HashSet::new();
    out.retain(|a| seen.insert(a.clone()));
    Ok(out)
}

/// Queries every candidate at once; returns the ones that answered.
pub async fn scan(
    addrs: &[String],
    key: &FarmKey,
) -> Vec<(String, Result<rayfarm_proto::DaemonInfo, SessionError>)> {
    let mut set = tokio::task::JoinSet::new();
    for a in addrs {
        let (a, key) = (a.clone(), key.clone());
        set.spawn(async move {
            let r = query_daemon(&a, &key, SCAN_CONNECT_TIMEOUT).await;
            (a, r)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Daemons this render could not use, by address: `(name, why)`. Named daemons (`--daemon`)
/// that do not answer are listed; of scanned ranges only daemons that answered (occupied,
/// unhealthy, another farm key, a refused lease), since most addresses of a range are empty.
pub type Unavailable = Arc<Mutex<std::collections::BTreeMap<String, (String, String)>>>;

/// Records (and says on stderr, once per change) why the daemon at `addr` is not used.
fn note_unavailable(unavailable: &Unavailable, addr: &str, name: &str, why: String) {
    let mut u = unavailable.lock().unwrap_or_else(|p| p.into_inner());
    let changed = u.get(addr).is_none_or(|(_, w)| *w != why);
    if changed {
        tracing::info!("{name} ({addr}) is not used: {why}");
        eprintln!("note: {name} ({addr}) is not used: {why}");
        u.insert(addr.to_string(), (name.to_string(), why));
    }
}

pub async fn lease_loop(
    opts: NetworkOptions,
    master_port: u16,
    mut stop: watch::Receiver<bool>,
    unavailable: Unavailable,
) {
    let named: HashSet<String> = candidates(&[], &opts.daemons)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let addrs = match candidates(&opts.scan, &opts.daemons) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            return;
        }
    };
    let held: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    loop {
        for (addr, info) in scan(&addrs, &opts.key).await {
            // The render may have ended during the scan: take no node for it.
            if *stop.borrow() {
                return;
            }
            let info = match info {
                Ok(i) => i,
                Err(e) => {
                    if named.contains(&addr) || e.is_wrong_farm_key() {
                        let why = if e.is_wrong_farm_key() {
                            "it holds another farm key".to_string()
                        } else {
                            format!("no answer ({e})")
                        };
                        note_unavailable(&unavailable, &addr, &addr, why);
                    }
                    continue;
                }
            };
            if held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&addr)
            {
                continue;
            }
            if let Some(only) = &opts.nodes {
                if !only.iter().any(|n| n == &info.alias) {
                    continue;
                }
            }
            match &info.state {
                DaemonState::Idle => {}
                DaemonState::Occupied { master, .. } => {
                    let why = format!("occupied by {master}");
                    note_unavailable(&unavailable, &addr, &info.alias, why);
                    continue;
                }
                DaemonState::Unhealthy { reason } => {
                    let why = format!("unhealthy: {reason}");
                    note_unavailable(&unavailable, &addr, &info.alias, why);
                    continue;
                }
            }
            unavailable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&addr);
            held.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(addr.clone());
            let (opts, held, stop, unavailable) = (
                opts.clone(),
                held.clone(),
                stop.clone(),
                unavailable.clone(),
            );
            tokio::spawn(async move {
                let ended = stop.clone();
                if let Err(e) = hold_lease(
                    &addr,
                    &info.alias,
                    &opts.key,
                    opts.lease_timeout_ms,
                    &opts.bind,
                    master_port,
                    stop,
                )
                .await
                {
                    tracing::warn!("{} ({addr}): {e}", info.alias);
                    // Errors as the render ends (leases being given back) are not news.
                    if !*ended.borrow() {
                        note_unavailable(&unavailable, &addr, &info.alias, e.to_string());
                    }
                }
                held.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
            });
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(opts.scan_interval) => {}
        }
    }
}

/// The address a daemon's worker is told to connect to: the master's bind address when it names
/// one host (`--master-bind 10.0.0.5`: the master listens only there, so the address this side's
/// connection to the daemon leaves from may not reach it), else that connection's own local
/// address, which the daemon could reach us from.
pub fn advertised_master_addr(bind: &str, local_ip: std::net::IpAddr, port: u16) -> String {
    let bind = bind.trim();
    match bind.parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => std::net::SocketAddr::new(ip, port).to_string(),
        Ok(_) => std::net::SocketAddr::new(local_ip, port).to_string(),
        Err(_) if bind.is_empty() => std::net::SocketAddr::new(local_ip, port).to_string(),
        Err(_) => format!("{bind}:{port}"),
    }
}

/// Takes a daemon's lease for the master (or manager) listening on `master_port` of the
/// address this side connects from, and heartbeats it until `stop` flips (then `Release`) or
/// the daemon reports its worker gone.
pub async fn hold_lease(
    addr: &str,
    alias: &str,
    key: &rayfarm_proto::FarmKey,
    lease_timeout_ms: u64,
    master_bind: &str,
    master_port: u16,
    mut stop: watch::Receiver<bool>,
) -> Result<(), DiscoveryError> {
    let mut conn = connect(addr, Role::Master, key, Duration::from_secs(3)).await?;
    // A daemon's answers are a few bytes.
    conn.set_max_message_bytes(rayfarm_proto::MAX_CONTROL_MESSAGE_BYTES);
    let local_ip = conn.local_addr()?.ip();
    let master_addr = advertised_master_addr(master_bind, local_ip, master_port);
    conn.send(&Msg::Acquire {
        master_addr: master_addr.clone(),
        lease_timeout_ms,
    })
    .await?;
    match conn
        .recv_timeout(
            Duration::from_secs(10),
            "waiting for the daemon to start a worker",
        )
        .await?
    {
        Msg::Acquired { pid } => {
            tracing::info!("{alias} ({addr}) started worker pid {pid} for {master_addr}")
        }
        Msg::Refused { reason } => return Err(DiscoveryError::Refused(reason)),
        other => return Err(DiscoveryError::Unexpected(other.name())),
    }
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = conn.send(&Msg::Release).await;
                let _ = conn.recv_timeout(Duration::from_secs(3), "waiting for Released").await;
                return Ok(());
            }
            _ = beat.tick() => {
                conn.send(&Msg::Heartbeat).await?;
            }
            m = conn.recv() => match m? {
                Msg::WorkerExited { reason } => {
                    let reason = rayfarm_proto::printable(&reason, rayfarm_proto::MAX_PRINTED_REASON);
                    eprintln!("node {alias}: worker ended: {reason}");
                    return Err(DiscoveryError::WorkerEnded(reason));
                }
                Msg::Heartbeat => {}
                other => return Err(DiscoveryError::Unexpected(other.name())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_expansion() {
        let a = expand_cidr("127.0.0.0/29").unwrap();
        assert_eq!(a.len(), 8);
        assert_eq!(a[2], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            expand_cidr("127.0.0.5").unwrap(),
            vec![Ipv4Addr::new(127, 0, 0, 5)]
        );
        assert!(expand_cidr("10.0.0.0/8").is_err());
        assert!(expand_cidr("nonsense/24").is_err());
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::advertised_master_addr;
    use std::net::IpAddr;

    #[test]
    fn a_named_bind_address_is_what_workers_are_told() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        // Regression: `--master-bind 127.0.0.7` told workers 127.0.0.1 and the render hung.
        assert_eq!(
            advertised_master_addr("127.0.0.7", local, 21000),
            "127.0.0.7:21000"
        );
        assert_eq!(
            advertised_master_addr("render-host", local, 21000),
            "render-host:21000"
        );
        assert_eq!(advertised_master_addr("::1", local, 21000), "[::1]:21000");
        assert_eq!(
            advertised_master_addr("0.0.0.0", local, 21001),
            "127.0.0.1:21001"
        );
        assert_eq!(advertised_master_addr("", local, 21001), "127.0.0.1:21001");
    }
}
