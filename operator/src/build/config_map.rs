//! The membership ConfigMap `<name>-membership`, mounted read-only by every
//! replica at `/etc/pbft/membership.yaml`, in the format the replica server
//! reads (`replica/src/server/membership_file.rs`; unknown fields refused):
//!
//! ```yaml
//! epoch: 0
//! admin_key: <64 hex digits>      # the operator's admin ed25519 public key
//! members:
//! - id: 0
//!   public_key: <64 hex digits>
//!   address: ledger-0.ledger-peers.prod.svc:7000
//! ```
//!
//! A replica starts consensus once the file names its key, taking the file
//! as its genesis membership. So the members are written only when the admin
//! key and every member's key are known: a partial list would let a replica
//! start with a smaller genesis than 3f+1. Until then the file has
//! `members: []` (replicas wait and report their key through the admin
//! Identity call) and a comment naming the missing keys.
//!
//! After the first membership is in force, changes go through admin-signed
//! operations ordered by PBFT itself; the operator then rewrites this file to
//! the membership the replicas report (new members start from it; running
//! ones only take address changes from it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use super::{membership_config_map_name, object_meta, peer_address, BuildError, MembershipInput, MEMBERSHIP_KEY};
use crate::validate::ValidatedCluster;

/// The document in the ConfigMap.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MembershipFile {
    pub epoch: u64,
    /// Empty until the operator's admin key is known.
    pub admin_key: String,
    /// Empty until every member's key is known.
    pub members: Vec<MemberEntry>,
}

/// One member in [`MembershipFile`].
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MemberEntry {
    pub id: u32,
    pub public_key: String,
    pub address: String,
}

/// The membership document, and the ids whose keys are still missing (when
/// not empty, the document lists no members).
pub fn membership_file(
    cluster: &ValidatedCluster,
    membership: &MembershipInput,
) -> Result<(MembershipFile, Vec<u32>), BuildError> {
    let ids = membership.member_ids(cluster)?;
    let key_of = |id: u32| {
        membership
            .members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.public_key.as_ref())
            .map(|k| k.to_ascii_lowercase())
    };
    let missing: Vec<u32> = ids.iter().copied().filter(|&id| key_of(id).is_none()).collect();
    let admin_key = membership.admin_key.as_ref().map(|k| k.to_ascii_lowercase()).unwrap_or_default();
    let members = if missing.is_empty() && !admin_key.is_empty() {
        ids.iter()
            .filter_map(|&id| {
                key_of(id).map(|public_key| MemberEntry { id, public_key, address: peer_address(cluster, id) })
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok((MembershipFile { epoch: membership.epoch, admin_key, members }, missing))
}

/// The ConfigMap `<name>-membership`.
pub fn build_membership_config_map(
    cluster: &ValidatedCluster,
    membership: &MembershipInput,
) -> Result<ConfigMap, BuildError> {
    let (file, missing) = membership_file(cluster, membership)?;
    let mut text = String::new();
    if file.admin_key.is_empty() {
        text.push_str("# waiting for the operator's admin key\n");
    }
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(u32::to_string).collect();
        text.push_str(&format!("# waiting for the public keys of members {}\n", ids.join(", ")));
    }
    text.push_str(&serde_yaml::to_string(&file).map_err(|source| BuildError::Yaml { what: "membership", source })?);
    Ok(ConfigMap {
        metadata: object_meta(cluster, membership_config_map_name(cluster), "membership"),
        data: Some(BTreeMap::from([(MEMBERSHIP_KEY.to_string(), text)])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster;
    use crate::build::ObservedMember;

    fn complete(n: u32) -> MembershipInput {
        MembershipInput {
            epoch: 2,
            admin_key: Some("AB".repeat(32)),
            members: (0..n)
                .map(|id| ObservedMember { id, public_key: Some(format!("{id:02X}").repeat(32)), key_secret: None })
                .collect(),
        }
    }

    #[test]
    fn nothing_known_lists_no_members() {
        let c = cluster("faultTolerance: 1");
        let (f, missing) = membership_file(&c, &MembershipInput::default()).expect("file");
        assert_eq!(missing, vec![0, 1, 2, 3]);
        assert!(f.members.is_empty());
        assert_eq!(f.admin_key, "");
    }

    #[test]
    fn a_partial_membership_is_never_written() {
        let c = cluster("faultTolerance: 1");
        let mut m = complete(4);
        m.members[2].public_key = None;
        let (f, missing) = membership_file(&c, &m).expect("file");
        assert_eq!(missing, vec![2]);
        assert!(f.members.is_empty(), "a replica must never start from a partial genesis");
        let text = &build_membership_config_map(&c, &m).expect("cm").data.expect("data")[MEMBERSHIP_KEY];
        assert!(text.starts_with("# waiting for the public keys of members 2\n"), "{text}");
        // Without the admin key, no members either.
        let mut m = complete(4);
        m.admin_key = None;
        assert!(membership_file(&c, &m).expect("file").0.members.is_empty());
    }

    #[test]
    fn complete_membership_in_the_replica_format() {
        let c = cluster("faultTolerance: 1");
        let cm = build_membership_config_map(&c, &complete(4)).expect("configmap");
        let text = &cm.data.expect("data")[MEMBERSHIP_KEY];
        let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
        assert_eq!(doc["epoch"], serde_yaml::Value::from(2));
        assert_eq!(doc["admin_key"], serde_yaml::Value::from("ab".repeat(32)));
        assert_eq!(doc["members"][3]["public_key"], serde_yaml::Value::from("03".repeat(32)));
        assert_eq!(doc["members"][2]["address"], serde_yaml::Value::from("ledger-2.ledger-peers.prod.svc:7000"));
        let keys: Vec<&str> = doc["members"][0].as_mapping().expect("map").keys().filter_map(|k| k.as_str()).collect();
        assert_eq!(keys, ["id", "public_key", "address"]);
    }
}
