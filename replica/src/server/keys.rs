//! The replica's ed25519 key: generated from OS randomness at first start
//! into the data dir (mode 0600), or loaded from a given file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use crate::crypto::Keypair;

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: expected 32 raw bytes or 64 hex digits, got {len} bytes")]
    Format { path: PathBuf, len: usize },
}

/// Parses 32 raw bytes or 64 hex digits (surrounding whitespace allowed).
pub fn parse_key(data: &[u8]) -> Option<Keypair> {
    if let Ok(arr) = <[u8; 32]>::try_from(data) {
        return Some(Keypair::from_secret(arr));
    }
    let text = std::str::from_utf8(data).ok()?.trim();
    let v = hex::decode(text).ok()?;
    Some(Keypair::from_secret(v.try_into().ok()?))
}

/// Loads `path`.
pub fn load(path: &Path) -> Result<Keypair, KeyError> {
    let data = std::fs::read(path).map_err(|source| KeyError::Io { path: path.into(), source })?;
    parse_key(&data).ok_or(KeyError::Format { path: path.into(), len: data.len() })
}

/// Writes a new random key to `path` (hex, mode 0600, never overwriting).
pub fn generate(path: &Path) -> Result<Keypair, KeyError> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let key = Keypair::from_secret(secret);
    let err = |source| KeyError::Io { path: path.into(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
    f.write_all(hex::encode(secret).as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(key)
}

/// Loads `path`, or generates it when it does not exist.
pub fn load_or_generate(path: &Path) -> Result<(Keypair, bool), KeyError> {
    if path.exists() {
        return load(path).map(|k| (k, false));
    }
    generate(path).map(|k| (k, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_private_and_reloaded() {
        let d = std::env::temp_dir().join(format!("pbft-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let p = d.join("replica.key");
        let (k1, new1) = load_or_generate(&p).unwrap();
        let (k2, new2) = load_or_generate(&p).unwrap();
        assert!(new1 && !new2);
        assert_eq!(k1.public_bytes(), k2.public_bytes());
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, b"short").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("64 hex digits"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
