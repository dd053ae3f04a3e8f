//! The replica server: configuration, keys, the membership file, the
//! write-ahead log, the cgroup memory budget, gRPC transport, metrics, and
//! the driver that runs the sans-io [`crate::core::Replica`].

pub mod admission;
pub mod cgroup;
pub mod config;
pub mod dev;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod keys;
pub mod membership_file;
pub mod metrics;
pub mod node;
pub mod rpc;
pub mod transport;
pub mod wal;

use std::path::PathBuf;

/// Why the server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Membership(#[from] membership_file::MembershipFileError),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{path}: the write-ahead log in this data dir was written by key {owner}, but this replica's key is {key}; a replica with a new key needs a fresh data dir")]
    WalOwner { path: PathBuf, owner: String, key: String },
    #[error("this replica's key is not in the membership")]
    NotMember,
    #[error("configured id {configured} differs from id {file} that the membership file gives this key")]
    IdMismatch { configured: u32, file: u32 },
    #[error("genesis membership: {0}")]
    Genesis(String),
    #[error("protocol core: {0}")]
    Core(String),
}
