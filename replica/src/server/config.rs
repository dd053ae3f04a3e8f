//! Server configuration: a YAML or TOML file, overridden by flags and
//! environment variables (flags > env > file > defaults), validated into
//! [`Settings`] with one-line errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{field}: {value:?} is not a socket address (host:port): {source}")]
    Address { field: &'static str, value: String, source: std::net::AddrParseError },
    #[error("{0} is required (flag, environment variable or config file)")]
    Missing(&'static str),
    #[error(
        "watermark_window ({window}) must be a multiple of checkpoint_interval ({interval}) and at least twice it"
    )]
    Window { window: u64, interval: u64 },
    #[error("{field} must be between {min} and {max}, got {value}")]
    Range { field: &'static str, value: u64, min: u64, max: u64 },
}

/// Everything that can be set from the file, flags or environment.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Overrides {
    /// Config file (YAML, or TOML when it ends in .toml).
    #[arg(long, env = "PBFT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Replica id; when omitted it is taken from the membership entry with this key.
    #[arg(long, env = "PBFT_ID")]
    pub id: Option<u32>,
    /// Data directory (key, write-ahead log, evidence log).
    #[arg(long, env = "PBFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Membership file (YAML or JSON: epoch, admin_key, members [{id, public_key, address}]).
    #[arg(long, env = "PBFT_MEMBERSHIP_FILE")]
    pub membership_file: Option<PathBuf>,
    /// Private key file (32 raw bytes or 64 hex digits); default: `<data-dir>/replica.key`, generated at first start.
    #[arg(long, env = "PBFT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Listen address for peer streams (also serves the client and admin services).
    #[arg(long, env = "PBFT_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Listen address for clients (also serves the admin service).
    #[arg(long, env = "PBFT_CLIENT_LISTEN")]
    pub client_listen: Option<String>,
    /// Listen address for the admin service.
    #[arg(long, env = "PBFT_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "PBFT_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Memory limit assumed when the cgroup has none, in bytes.
    #[arg(long, env = "PBFT_DEFAULT_MEMORY_LIMIT")]
    pub default_memory_limit: Option<u64>,
    /// Percentage of the memory limit given to the protocol's buffers.
    #[arg(long, env = "PBFT_BUDGET_PERCENT")]
    pub budget_percent: Option<u64>,
    /// Percentage of the memory limit above which new client work is shed.
    #[arg(long, env = "PBFT_SHED_PERCENT")]
    pub shed_percent: Option<u64>,
    /// Checkpoint interval K (sequence numbers).
    #[arg(long, env = "PBFT_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<u64>,
    /// Watermark window L: sequence numbers accepted above the last stable checkpoint
    /// (a multiple of the checkpoint interval, at least twice it; default twice it).
    #[arg(long, env = "PBFT_WATERMARK_WINDOW")]
    pub watermark_window: Option<u64>,
    /// Base view-change timeout in milliseconds.
    #[arg(long, env = "PBFT_VIEW_CHANGE_TIMEOUT_MS")]
    pub view_change_timeout_ms: Option<u64>,
    /// Most requests per batch.
    #[arg(long, env = "PBFT_BATCH_SIZE")]
    pub batch_size: Option<u64>,
    /// Most batches the primary has ordered but not executed (pipelining depth; default 2).
    #[arg(long, env = "PBFT_MAX_INFLIGHT_BATCHES")]
    pub max_inflight_batches: Option<u64>,
    /// Bytes of peer messages queued per peer before the oldest are dropped.
    #[arg(long, env = "PBFT_PEER_QUEUE_BYTES")]
    pub peer_queue_bytes: Option<u64>,
    /// Most client calls served at once (more get RESOURCE_EXHAUSTED); the replica
    /// allows fewer when the largest requests would not fit its client byte budget.
    #[arg(long, env = "PBFT_MAX_CLIENT_CALLS")]
    pub max_client_calls: Option<u64>,
    /// Log format: text or json.
    #[arg(long, env = "PBFT_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub id: Option<u32>,
    pub data_dir: PathBuf,
    pub membership_file: PathBuf,
    pub key_file: Option<PathBuf>,
    pub peer_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub default_memory_limit: u64,
    pub budget_percent: u64,
    pub shed_percent: u64,
    pub checkpoint_interval: Option<u64>,
    pub watermark_window: Option<u64>,
    pub view_change_timeout_ms: Option<u64>,
    pub batch_size: Option<u64>,
    pub max_inflight_batches: Option<u64>,
    pub peer_queue_bytes: u64,
    pub max_client_calls: u64,
    pub json_logs: bool,
    /// Replicas that share this process and its memory (`pbft-replica dev`
    /// runs n of them): each counts this share of the measured usage against
    /// its own limit. 1 for a replica on its own.
    pub memory_sharers: u64,
}

fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
    a.clone().or_else(|| b.clone())
}

fn addr(field: &'static str, v: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let value = v.unwrap_or_else(|| default.to_string());
    value.parse().map_err(|source| ConfigError::Address { field, value, source })
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Range { field, value, min, max });
    }
    Ok(value)
}

/// Reads a YAML or TOML config file.
pub fn read_file(path: &Path) -> Result<Overrides, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let parsed = if path.extension().is_some_and(|e| e == "toml") {
        toml_like(&text)
    } else {
        serde_yaml::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|msg| ConfigError::Parse { path: path.into(), msg })
}

/// A minimal TOML reader for flat `key = value` files (what this config is):
/// converted to YAML and parsed with the same schema.
fn toml_like(text: &str) -> Result<Overrides, String> {
    let mut yaml = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
        yaml.push_str(&format!("{}: {}\n", k.trim(), v.trim()));
    }
    serde_yaml::from_str(&yaml).map_err(|e| e.to_string())
}

impl Overrides {
    /// Merges flags/env (`self`) over the file and applies defaults.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => Overrides::default(),
        };
        let f = &file;
        let data_dir = pick(&self.data_dir, &f.data_dir).ok_or(ConfigError::Missing("data_dir"))?;
        let membership_file =
            pick(&self.membership_file, &f.membership_file).unwrap_or_else(|| data_dir.join("membership.yaml"));
        let checkpoint_interval = pick(&self.checkpoint_interval, &f.checkpoint_interval)
            .map(|v| range("checkpoint_interval", v, 1, 1 << 20))
            .transpose()?;
        let interval = checkpoint_interval.unwrap_or(crate::core::DEFAULT_CHECKPOINT_INTERVAL);
        let watermark_window = pick(&self.watermark_window, &f.watermark_window);
        if let Some(window) = watermark_window {
            if window < 2 * interval || window % interval != 0 {
                return Err(ConfigError::Window { window, interval });
            }
        }
        Ok(Settings {
            id: pick(&self.id, &f.id),
            membership_file,
            key_file: pick(&self.key_file, &f.key_file),
            peer_listen: addr("peer_listen", pick(&self.peer_listen, &f.peer_listen), "0.0.0.0:7000")?,
            client_listen: addr("client_listen", pick(&self.client_listen, &f.client_listen), "0.0.0.0:7001")?,
            admin_listen: addr("admin_listen", pick(&self.admin_listen, &f.admin_listen), "0.0.0.0:7002")?,
            metrics_listen: addr("metrics_listen", pick(&self.metrics_listen, &f.metrics_listen), "0.0.0.0:9100")?,
            default_memory_limit: range(
                "default_memory_limit",
                pick(&self.default_memory_limit, &f.default_memory_limit).unwrap_or(512 << 20),
                16 << 20,
                1 << 44,
            )?,
            budget_percent: range(
                "budget_percent",
                pick(&self.budget_percent, &f.budget_percent).unwrap_or(40),
                5,
                90,
            )?,
            shed_percent: range("shed_percent", pick(&self.shed_percent, &f.shed_percent).unwrap_or(80), 10, 99)?,
            checkpoint_interval,
            watermark_window,
            view_change_timeout_ms: pick(&self.view_change_timeout_ms, &f.view_change_timeout_ms)
                .map(|v| range("view_change_timeout_ms", v, 10, 600_000))
                .transpose()?,
            batch_size: pick(&self.batch_size, &f.batch_size).map(|v| range("batch_size", v, 1, 65536)).transpose()?,
            max_inflight_batches: pick(&self.max_inflight_batches, &f.max_inflight_batches)
                .map(|v| range("max_inflight_batches", v, 1, 64))
                .transpose()?,
            peer_queue_bytes: range(
                "peer_queue_bytes",
                pick(&self.peer_queue_bytes, &f.peer_queue_bytes).unwrap_or(16 << 20),
                64 << 10,
                1 << 34,
            )?,
            max_client_calls: range(
                "max_client_calls",
                pick(&self.max_client_calls, &f.max_client_calls).unwrap_or(4096),
                1,
                1 << 20,
            )?,
            json_logs: pick(&self.log_format, &f.log_format).is_some_and(|v| v == "json"),
            memory_sharers: 1,
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let d = std::env::temp_dir().join(format!("pbft-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let y = d.join("c.yaml");
        std::fs::write(&y, "data_dir: /x\npeer_listen: 127.0.0.1:1\nshed_percent: 70\n").unwrap();
        let o = Overrides { config: Some(y.clone()), shed_percent: Some(75), ..Default::default() };
        let s = o.resolve().unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/x"));
        assert_eq!(s.shed_percent, 75);
        assert_eq!(s.peer_listen.port(), 1);
        let t = d.join("c.toml");
        std::fs::write(&t, "data_dir = \"/y\"  # comment\nbudget_percent = 30\n").unwrap();
        let s = Overrides { config: Some(t), ..Default::default() }.resolve().unwrap();
        assert_eq!((s.data_dir, s.budget_percent), (PathBuf::from("/y"), 30));
        std::fs::write(&y, "data_dir: /x\nbogus: 1\n").unwrap();
        let e = Overrides { config: Some(y.clone()), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Overrides { data_dir: Some("/z".into()), peer_listen: Some("nope".into()), ..Default::default() }
            .resolve()
            .unwrap_err();
        assert!(e.to_string().starts_with("peer_listen"), "{e}");
        let w = |k: Option<u64>, l: u64| {
            Overrides {
                data_dir: Some("/z".into()),
                checkpoint_interval: k,
                watermark_window: Some(l),
                ..Default::default()
            }
            .resolve()
        };
        assert_eq!(w(Some(16), 64).unwrap().watermark_window, Some(64));
        assert!(w(Some(16), 16).unwrap_err().to_string().contains("at least twice"));
        assert!(w(Some(16), 40).is_err());
        assert!(w(None, 64).is_err(), "default interval 64 needs a window of 128 or more");
        assert!(w(None, 256).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
