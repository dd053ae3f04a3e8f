//! The membership ConfigMap `<name>-membership`, mounted read-only by every
//! replica at `/etc/pbft/membership.yaml`:
//!
//! ```yaml
//! epoch: 3                      # membership epoch
//! adminKey: <64 hex digits>     # the operator's admin ed25519 public key (absent until known)
//! members:
//! - id: 0
//!   publicKey: <64 hex digits>  # absent until the replica has reported its key
//!   address: ledger-0.ledger-peers.prod.svc:7000
//! ```
//!
//! It is the bootstrap and the recovery hint only: once a membership is in
//! force, changes go through admin-signed operations ordered by PBFT itself,
//! and the operator rewrites this file to the membership the replicas report.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use super::{membership_config_map_name, object_meta, peer_address, BuildError, MembershipInput, MEMBERSHIP_KEY};
use crate::validate::ValidatedCluster;

/// The document in the ConfigMap.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipFile {
    pub epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    pub members: Vec<MemberEntry>,
}

/// One member in [`MembershipFile`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberEntry {
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub address: String,
}

/// The membership document for `membership` (ids `0..3f+1` when empty).
pub fn membership_file(cluster: &ValidatedCluster, membership: &MembershipInput) -> Result<MembershipFile, BuildError> {
    let ids = membership.member_ids(cluster)?;
    let members = ids
        .into_iter()
        .map(|id| MemberEntry {
            id,
            public_key: membership
                .members
                .iter()
                .find(|m| m.id == id)
                .and_then(|m| m.public_key.as_ref())
                .map(|k| k.to_ascii_lowercase()),
            address: peer_address(cluster, id),
        })
        .collect();
    Ok(MembershipFile {
        epoch: membership.epoch,
        admin_key: membership.admin_key.as_ref().map(|k| k.to_ascii_lowercase()),
        members,
    })
}

/// The ConfigMap `<name>-membership`.
pub fn build_membership_config_map(
    cluster: &ValidatedCluster,
    membership: &MembershipInput,
) -> Result<ConfigMap, BuildError> {
    let file = membership_file(cluster, membership)?;
    let text = serde_yaml::to_string(&file).map_err(|source| BuildError::Yaml { what: "membership", source })?;
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

    #[test]
    fn bootstrap_lists_addresses_without_keys() {
        let c = cluster("faultTolerance: 1");
        let f = membership_file(&c, &MembershipInput::default()).expect("file");
        assert_eq!(f.members.len(), 4);
        assert_eq!(f.members[2].address, "ledger-2.ledger-peers.prod.svc:7000");
        assert!(f.members.iter().all(|m| m.public_key.is_none()));
    }

    #[test]
    fn known_keys_are_written_lowercase() {
        let c = cluster("faultTolerance: 1");
        let m = MembershipInput {
            epoch: 2,
            admin_key: Some("AB".repeat(32)),
            members: (0..4).map(|id| ObservedMember { id, public_key: Some(format!("{id:02X}").repeat(32)) }).collect(),
        };
        let cm = build_membership_config_map(&c, &m).expect("configmap");
        let text = &cm.data.expect("data")[MEMBERSHIP_KEY];
        let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
        assert_eq!(doc["epoch"], serde_yaml::Value::from(2));
        assert_eq!(doc["adminKey"], serde_yaml::Value::from("ab".repeat(32)));
        assert_eq!(doc["members"][3]["publicKey"], serde_yaml::Value::from("03".repeat(32)));
    }
}
