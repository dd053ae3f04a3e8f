//! Why a benchmark step failed.

use std::path::PathBuf;

/// Errors of the harness, each with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot start {what} ({binary}): {source}")]
    Spawn { what: String, binary: PathBuf, source: std::io::Error },
    #[error("{what} exited early with {status}; its log: {log}")]
    Exited { what: String, status: String, log: PathBuf },
    #[error("{what} did not become ready within {secs} s: {last}")]
    NotReady { what: String, secs: u64, last: String },
    #[error("{0}")]
    Setup(String),
    #[error("pbft client: {0}")]
    Pbft(#[from] pbft::kvclient::ClientError),
    #[error("request failed: {0}")]
    Request(String),
    #[error("{path}: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("bad argument: {0}")]
    Arg(String),
}

/// `map_err` helper for I/O on a path.
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |source| BenchError::Io { path, source }
}
