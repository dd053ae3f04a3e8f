//! The membership file the operator writes (YAML or JSON):
//! `{epoch, admin_key: hex, members: [{id, public_key: hex, address: host:port}]}`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::{Membership, MembershipError};
use crate::proto::{Member, MembershipChange, MembershipConfig};

/// Why the membership file is refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipFileError {
    #[error("membership file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("membership file {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("membership file {path}: {field} is not hex: {source}")]
    Hex { path: PathBuf, field: String, source: hex::FromHexError },
    #[error("membership file {path}: {source}")]
    Invalid { path: PathBuf, source: MembershipError },
    #[error("membership file {path}: epoch 0 is the genesis; a change produces epoch 1 or later")]
    GenesisChange { path: PathBuf },
}

/// One member as written in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    pub id: u32,
    pub public_key: String,
    pub address: String,
}

/// The file's content.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MembershipFile {
    #[serde(default)]
    pub epoch: u64,
    pub admin_key: String,
    pub members: Vec<MemberEntry>,
}

impl MembershipFile {
    /// Reads and parses `path` (JSON is valid YAML).
    pub fn read(path: &Path) -> Result<MembershipFile, MembershipFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| MembershipFileError::Read { path: path.into(), source })?;
        serde_yaml::from_str(&text).map_err(|e| MembershipFileError::Parse { path: path.into(), msg: e.to_string() })
    }

    /// The wire form, validated.
    pub fn to_membership(&self, path: &Path) -> Result<Membership, MembershipFileError> {
        let hexed = |field: String, v: &str| {
            hex::decode(v.trim()).map(Bytes::from).map_err(|source| MembershipFileError::Hex {
                path: path.into(),
                field,
                source,
            })
        };
        let mut members = vec![];
        for m in &self.members {
            members.push(Member {
                id: m.id,
                public_key: hexed(format!("members[id={}].public_key", m.id), &m.public_key)?,
                address: m.address.clone(),
            });
        }
        let config =
            MembershipConfig { epoch: self.epoch, members, admin_key: hexed("admin_key".into(), &self.admin_key)? };
        Membership::new(config).map_err(|source| MembershipFileError::Invalid { path: path.into(), source })
    }

    /// The admin-signed operation that produces this file's membership: it
    /// applies to epoch `epoch - 1` and, once ordered, puts these members in
    /// force as epoch `epoch` at the next checkpoint boundary.
    pub fn to_change(&self, path: &Path) -> Result<MembershipChange, MembershipFileError> {
        if self.epoch == 0 {
            return Err(MembershipFileError::GenesisChange { path: path.into() });
        }
        let members = self.to_membership(path)?.config().members.clone();
        Ok(MembershipChange { from_epoch: self.epoch - 1, members })
    }

    /// The id of the member with `public_key`, if any.
    pub fn id_of(&self, public_key: &[u8]) -> Option<u32> {
        let hex_key = hex::encode(public_key);
        self.members.iter().find(|m| m.public_key.trim().eq_ignore_ascii_case(&hex_key)).map(|m| m.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    #[test]
    fn yaml_and_json() {
        let keys: Vec<Keypair> = (1..=5u8).map(|i| Keypair::from_secret([i; 32])).collect();
        let file = MembershipFile {
            epoch: 0,
            admin_key: hex::encode(keys[4].public_bytes()),
            members: (0..4)
                .map(|i| MemberEntry {
                    id: i,
                    public_key: hex::encode(keys[i as usize].public_bytes()),
                    address: format!("r{i}:7000"),
                })
                .collect(),
        };
        let d = std::env::temp_dir().join(format!("pbft-mf-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let y = d.join("m.yaml");
        std::fs::write(&y, serde_yaml::to_string(&file).unwrap()).unwrap();
        let j = d.join("m.json");
        std::fs::write(&j, serde_json::to_string(&file).unwrap()).unwrap();
        for p in [&y, &j] {
            let f = MembershipFile::read(p).unwrap();
            assert_eq!(f, file);
            assert_eq!(f.to_membership(p).unwrap().n(), 4);
            assert_eq!(f.id_of(&keys[2].public_bytes()), Some(2));
        }
        assert!(file.to_change(&y).unwrap_err().to_string().contains("epoch 0"));
        let next = MembershipFile { epoch: 3, ..file.clone() };
        let change = next.to_change(&y).unwrap();
        assert_eq!((change.from_epoch, change.members.len()), (2, 4));
        assert_eq!(change.members[1].public_key.as_ref(), keys[1].public_bytes());
        std::fs::write(&y, "epoch: 0\nadmin_key: zz\nmembers: []\n").unwrap();
        let e = MembershipFile::read(&y).unwrap().to_membership(&y).unwrap_err();
        assert!(e.to_string().contains("admin_key is not hex"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
