//! The configuration file and the farm key.
//!
//! The file is TOML, versioned, and rejects unknown fields so a typo is an error, not a silently
//! ignored setting. Where it is: `--config PATH`, else `$RAYFARM_CONFIG`, else
//! `$XDG_CONFIG_HOME/rayfarm/config.toml` (or `~/.config/rayfarm/config.toml`), else
//! `/etc/rayfarm/config.toml`. The farm key comes from `$RAYFARM_KEY` first, then the file.

use rayfarm_proto::FarmKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG_VERSION: u32 = 1;

/// Why the configuration or the farm key could not be had; messages name the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {reason}", path.display())]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        reason: toml::de::Error,
    },
    #[error("{}: config version {found} is not supported (this rayfarm reads version {CONFIG_VERSION})", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("no farm key: set RAYFARM_KEY or `key = \"...\"` in the config file (make one with `rayfarm key generate`)")]
    NoKey,
    #[error("{0}")]
    BadKey(rayfarm_proto::auth::KeyError),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of this file.
    pub version: u32,
    /// The farm secret shared by masters, daemons and workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Daemon settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonSection>,
    /// Daemons a master uses without scanning, `HOST[:PORT]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<String>,
    /// Address ranges a master scans for daemons, CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scan: Vec<String>,
    /// The network folders (as this machine mounts them) job folders may lie in: the manager
    /// serves only job folders inside them, and a worker writes parts only inside them. The
    /// `--netdir` flags replace this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub netdirs: Vec<std::path::PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
}

/// Where the configuration file is looked for, in order.
pub fn default_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("RAYFARM_CONFIG") {
        v.push(PathBuf::from(p));
        return v;
    }
    if let Ok(x) = std::env::var("XDG_CONFIG_HOME") {
        v.push(Path::new(&x).join("rayfarm/config.toml"));
    } else if let Ok(h) = std::env::var("HOME") {
        v.push(Path::new(&h).join(".config/rayfarm/config.toml"));
    }
    v.push(PathBuf::from("/etc/rayfarm/config.toml"));
    v
}

/// Loads the configuration: `explicit` must exist; otherwise the first default path that
/// exists, or an empty configuration.
pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => default_paths().into_iter().find(|p| p.exists()),
    };
    let Some(path) = path else {
        return Ok((
            Config {
                version: CONFIG_VERSION,
                ..Default::default()
            },
            None,
        ));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(reason) => return Err(ConfigError::Read { path, reason }),
    };
    let cfg: Config = match toml::from_str(&text) {
        Ok(c) => c,
        Err(reason) => return Err(ConfigError::Parse { path, reason }),
    };
    if cfg.version != CONFIG_VERSION {
        return Err(ConfigError::Version {
            path,
            found: cfg.version,
        });
    }
    Ok((cfg, Some(path)))
}

/// The farm key from `$RAYFARM_KEY`, else the configuration file.
pub fn farm_key(cfg: &Config) -> Result<FarmKey, ConfigError> {
    let secret = std::env::var("RAYFARM_KEY")
        .ok()
        .or_else(|| cfg.key.clone());
    match secret {
        Some(s) => FarmKey::from_secret(&s).map_err(ConfigError::BadKey),
        None => Err(ConfigError::NoKey),
    }
}
