//! The one check of a `HOST:PORT` address that comes from outside (a job.desc's manager, a
//! daemon's registration, an `Acquire`'s master address): the daemon, the manager and the
//! job folder all go through [`check_host_port`].

/// Why an address is not `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{addr:?} is longer than {max} bytes")]
    TooLong { addr: String, max: usize },
    #[error("{addr:?} has no port (expected HOST:PORT)")]
    NoPort { addr: String },
    #[error("{addr:?}: port {port:?} is not 1 to 65535 (expected HOST:PORT)")]
    BadPort { addr: String, port: String },
    #[error("{addr:?}: {host:?} is not a host name or address (expected HOST:PORT)")]
    BadHost { addr: String, host: String },
}

/// Checks `HOST:PORT`: at most `max_len` bytes; the host a name or IPv4 address (letters,
/// digits, `.`, `-`, `_`, not starting with `-`, no empty label, and a numeric host only as a
/// plain dotted quad) or a bracketed IPv6 address; the port 1-65535.
/// Nothing is resolved.
pub fn check_host_port(addr: &str, max_len: usize) -> Result<(), AddrError> {
    // Errors quote at most this much of what was sent.
    let shown = || addr.chars().take(80).collect::<String>();
    if addr.len() > max_len {
        return Err(AddrError::TooLong {
            addr: shown(),
            max: max_len,
        });
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(AddrError::NoPort { addr: shown() });
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) || port.starts_with('+') {
        return Err(AddrError::BadPort {
            addr: shown(),
            port: port.to_string(),
        });
    }
    let name_ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    // A host that reads as a number (every label digits, or `0x` and hex digits) must be a
    // dotted-quad IPv4 address written the one usual way: the resolver also takes `0177.0.0.2`,
    // `0x7f000002`, `2130706434` and `127.2` for 127.0.0.2, so one node could be registered
    // under a thousand spellings and every scan would hit it a thousand times.
    let numeric = host.split('.').all(|label| {
        let hex = label
            .strip_prefix("0x")
            .or_else(|| label.strip_prefix("0X"));
        match hex {
            Some(h) => h.chars().all(|c| c.is_ascii_hexdigit()),
            None => !label.is_empty() && label.chars().all(|c| c.is_ascii_digit()),
        }
    });
    // No empty label either: `127.0.0.1.` is 127.0.0.1 again, to a resolver.
    let name_ok = name_ok
        && !host.split('.').any(str::is_empty)
        && (!numeric
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.to_string() == host));
    let v6_ok = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    if !(name_ok || v6_ok) {
        return Err(AddrError::BadHost {
            addr: shown(),
            host: host.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_addresses() {
        for good in [
            "127.0.0.1:48000",
            "render-07.studio.lan:3234",
            "node_3:1",
            "[::1]:21000",
            "[fe80::1]:65535",
            "3dnode:48000",
            "10.0.0.255:48000",
        ] {
            assert_eq!(check_host_port(good, 256), Ok(()), "{good}");
        }
        let bad = [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:0", "not 1 to 65535"),
            ("127.0.0.1:65536", "not 1 to 65535"),
            ("127.0.0.1:+80", "not 1 to 65535"),
            (":80", "not a host"),
            ("-oProxy=x:80", "not a host"),
            ("a b:80", "not a host"),
            ("::1:80", "not a host"),
            ("0177.0.0.2:48000", "not a host"),
            ("000177.0.0.02:48000", "not a host"),
            ("0x7f000002:48000", "not a host"),
            ("2130706434:48000", "not a host"),
            ("127.2:48000", "not a host"),
            ("127.0.0.1.:48000", "not a host"),
            ("[nope]:80", "not a host"),
            ("host\n:80", "not a host"),
        ];
        for (addr, why) in bad {
            let e = check_host_port(addr, 256).unwrap_err().to_string();
            assert!(e.contains(why), "{addr}: {e}");
        }
        let long = format!("{}:80", "a".repeat(300));
        assert!(check_host_port(&long, 256)
            .unwrap_err()
            .to_string()
            .contains("longer than 256"));
    }
}
