//! Pure builders: from a [`ValidatedCluster`] (and the observed membership)
//! to the Kubernetes objects it owns. Nothing here touches the API; the
//! reconciler server-side-applies what these functions return. Every object
//! carries the cluster's controller owner reference and the common labels.
//!
//! Names, for a cluster `<name>` in `<ns>`:
//! - Pod `<name>-<id>` per member (no StatefulSet: each pod mounts its own key
//!   Secret, so no key is ever in a Secret that several pods mount, and members
//!   are replaced one by one by id);
//! - PVC `data-<name>-<id>` per member when `spec.storage` is set;
//! - Services `<name>-peers` (headless) and `<name>` (clients);
//! - Secret `<name>-key-<id>-<key fingerprint>` per member key and
//!   `<name>-admin-key` (the admin key, read by the operator only);
//! - ConfigMap `<name>-membership`; PodDisruptionBudget `<name>`;
//!   ServiceAccount `<name>-replica`; NetworkPolicy `<name>` (optional).

pub mod config_map;
pub mod network_policy;
pub mod pdb;
pub mod pod;
pub mod secret;
pub mod service;
pub mod service_account;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::validate::ValidatedCluster;

/// Peer-to-peer consensus traffic.
pub const PEER_PORT: i32 = 7000;
/// Client requests (KV service).
pub const CLIENT_PORT: i32 = 7001;
/// Admin service (status, evidence, signed membership changes).
pub const ADMIN_PORT: i32 = 7002;
/// Prometheus metrics, `/healthz` and `/readyz`.
pub const METRICS_PORT: i32 = 9100;
/// Where a replica keeps its key, log and snapshots.
pub const DATA_DIR: &str = "/data";
/// Where the membership ConfigMap is mounted.
pub const MEMBERSHIP_DIR: &str = "/etc/pbft";
/// Key of the membership document in the ConfigMap (and file name in [`MEMBERSHIP_DIR`]).
pub const MEMBERSHIP_KEY: &str = "membership.yaml";
/// Value of `app.kubernetes.io/name` on every object.
pub const APP_NAME: &str = "pbft";
/// Value of `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "pbft-operator";
/// Label carrying a member's id.
pub const MEMBER_ID_LABEL: &str = "consensus.pbft.dev/member-id";
/// Annotation with a hash of a pod's spec, so the reconciler can tell a pod
/// that must be replaced (pods are immutable) from one that is current.
pub const SPEC_HASH_ANNOTATION: &str = "consensus.pbft.dev/spec-hash";
/// Component label of replica pods and what selects them.
pub const COMPONENT_REPLICA: &str = "replica";

/// Why objects cannot be built from a validated cluster and a membership.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("membership: member id {0} appears twice")]
    DuplicateMember(u32),
    #[error("membership: public key of member {id} is not 32 bytes of hex: {key:?}")]
    BadPublicKey { id: u32, key: String },
    #[error("membership: the admin public key is not 32 bytes of hex: {0:?}")]
    BadAdminKey(String),
    #[error("serializing {what}: {source}")]
    Serialize { what: &'static str, source: serde_json::Error },
    #[error("serializing {what} to YAML: {source}")]
    Yaml { what: &'static str, source: serde_yaml::Error },
}

/// What the operator knows of the membership: the epoch in force, the admin
/// public key, and each member's id with its public key once the replica has
/// reported it. Empty before the cluster's first start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipInput {
    /// Membership epoch (0 before the first membership is formed).
    #[serde(default)]
    pub epoch: u64,
    /// The operator's admin ed25519 public key, 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    /// Members by id; empty means ids `0..3f+1`, none with a known key yet.
    #[serde(default)]
    pub members: Vec<ObservedMember>,
}

/// One member as the operator knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedMember {
    /// Replica id.
    pub id: u32,
    /// ed25519 public key, 64 hex digits; absent until the member's key exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The Secret holding the member's private key (default `<name>-key-<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
}

impl MembershipInput {
    /// The member ids pods are built for, sorted; checks the keys.
    pub fn member_ids(&self, cluster: &ValidatedCluster) -> Result<Vec<u32>, BuildError> {
        if let Some(k) = &self.admin_key {
            if !is_key_hex(k) {
                return Err(BuildError::BadAdminKey(k.clone()));
            }
        }
        if self.members.is_empty() {
            return Ok((0..cluster.replicas).collect());
        }
        let mut ids: Vec<u32> = Vec::with_capacity(self.members.len());
        for m in &self.members {
            if ids.contains(&m.id) {
                return Err(BuildError::DuplicateMember(m.id));
            }
            if let Some(k) = &m.public_key {
                if !is_key_hex(k) {
                    return Err(BuildError::BadPublicKey { id: m.id, key: k.clone() });
                }
            }
            ids.push(m.id);
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

fn is_key_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A short fingerprint of a public key for status and logs: the first 16 hex
/// digits of SHA-256 over the 32 key bytes. `None` when `key_hex` is not a key.
pub fn key_fingerprint(key_hex: &str) -> Option<String> {
    if !is_key_hex(key_hex) {
        return None;
    }
    let bytes = hex::decode(key_hex).ok()?;
    let digest = Sha256::digest(bytes);
    Some(hex::encode(&digest[..8]))
}

/// Labels shared by every object of a cluster.
pub fn labels(cluster: &ValidatedCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name.clone()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

/// The labels that select a cluster's replica pods (a subset of their labels).
pub fn replica_selector(cluster: &ValidatedCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name.clone()),
        ("app.kubernetes.io/component".to_string(), COMPONENT_REPLICA.to_string()),
    ])
}

/// Metadata of an owned object: name, namespace, labels, owner reference.
pub fn object_meta(cluster: &ValidatedCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(cluster.namespace.clone()),
        labels: Some(labels(cluster, component)),
        owner_references: Some(vec![cluster.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Name of the pod of member `id`.
pub fn pod_name(cluster: &ValidatedCluster, id: u32) -> String {
    format!("{}-{id}", cluster.name)
}

/// Name of the headless peer Service.
pub fn peer_service_name(cluster: &ValidatedCluster) -> String {
    format!("{}-peers", cluster.name)
}

/// Name of the membership ConfigMap.
pub fn membership_config_map_name(cluster: &ValidatedCluster) -> String {
    membership_config_map_name_of(&cluster.name)
}

/// Name of the membership ConfigMap of the cluster named `name` (before validation).
pub fn membership_config_map_name_of(name: &str) -> String {
    format!("{name}-membership")
}

/// Name of the replicas' ServiceAccount.
pub fn service_account_name(cluster: &ValidatedCluster) -> String {
    format!("{}-replica", cluster.name)
}

/// Name of member `id`'s PersistentVolumeClaim.
pub fn pvc_name(cluster: &ValidatedCluster, id: u32) -> String {
    format!("data-{}-{id}", cluster.name)
}

/// The address peers dial to reach member `id`: its stable DNS name through
/// the headless Service (the pod sets `hostname` and `subdomain`).
pub fn peer_address(cluster: &ValidatedCluster, id: u32) -> String {
    format!("{}.{}.{}.svc:{PEER_PORT}", pod_name(cluster, id), peer_service_name(cluster), cluster.namespace)
}

/// Every object a cluster owns, for one membership.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterObjects {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub peer_service: Service,
    pub client_service: Service,
    pub pdb: PodDisruptionBudget,
    pub network_policy: Option<NetworkPolicy>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub pods: Vec<Pod>,
}

/// Builds every object of `cluster` for `membership`.
pub fn build_all(cluster: &ValidatedCluster, membership: &MembershipInput) -> Result<ClusterObjects, BuildError> {
    let ids = membership.member_ids(cluster)?;
    let mut pods = Vec::with_capacity(ids.len());
    let mut pvcs = Vec::new();
    for &id in &ids {
        let key_secret = membership
            .members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.key_secret.clone())
            .unwrap_or_else(|| format!("{}-key-{id}", cluster.name));
        pods.push(pod::build_pod(cluster, id, &key_secret, None)?);
        if let Some(pvc) = pod::build_pvc(cluster, id) {
            pvcs.push(pvc);
        }
    }
    Ok(ClusterObjects {
        service_account: service_account::build_service_account(cluster),
        config_map: config_map::build_membership_config_map(cluster, membership)?,
        peer_service: service::build_peer_service(cluster),
        client_service: service::build_client_service(cluster),
        pdb: pdb::build_pdb(cluster),
        network_policy: network_policy::build_network_policy(cluster),
        pvcs,
        pods,
    })
}

impl ClusterObjects {
    /// The objects as JSON values in a stable order (the order they are applied in).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, BuildError> {
        fn v<T: Serialize>(what: &'static str, t: &T) -> Result<serde_json::Value, BuildError> {
            serde_json::to_value(t).map_err(|source| BuildError::Serialize { what, source })
        }
        let mut out = vec![
            v("ServiceAccount", &self.service_account)?,
            v("ConfigMap", &self.config_map)?,
            v("Service", &self.peer_service)?,
            v("Service", &self.client_service)?,
            v("PodDisruptionBudget", &self.pdb)?,
        ];
        if let Some(np) = &self.network_policy {
            out.push(v("NetworkPolicy", np)?);
        }
        for pvc in &self.pvcs {
            out.push(v("PersistentVolumeClaim", pvc)?);
        }
        for p in &self.pods {
            out.push(v("Pod", p)?);
        }
        Ok(out)
    }

    /// The objects as one multi-document YAML stream.
    pub fn to_yaml(&self) -> Result<String, BuildError> {
        let mut s = String::new();
        for value in self.to_values()? {
            s.push_str("---\n");
            s.push_str(&serde_yaml::to_string(&value).map_err(|source| BuildError::Yaml { what: "objects", source })?);
        }
        Ok(s)
    }
}

/// A short hash of a serializable value (first 16 hex digits of SHA-256 of its JSON).
pub(crate) fn short_hash<T: Serialize>(what: &'static str, t: &T) -> Result<String, BuildError> {
    let json = serde_json::to_vec(t).map_err(|source| BuildError::Serialize { what, source })?;
    Ok(hex::encode(&Sha256::digest(json)[..8]))
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::validate::{validate, OperatorDefaults, ValidatedCluster};
    use crate::ConsensusCluster;

    /// A validated cluster from a spec in YAML, named `ledger` in `prod`.
    pub fn cluster(spec_yaml: &str) -> ValidatedCluster {
        let spec = serde_yaml::from_str(spec_yaml).expect("test spec parses");
        let mut cc = ConsensusCluster::new("ledger", spec);
        cc.metadata.namespace = Some("prod".into());
        cc.metadata.uid = Some("0b9e6a2e-0000-4000-8000-000000000001".into());
        validate(
            &cc,
            None,
            &OperatorDefaults {
                replica_image: "pbft-replica:test".into(),
                fault_injection_image: Some("pbft-replica-faulty:test".into()),
            },
        )
        .expect("valid")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::cluster;
    use super::*;

    #[test]
    fn member_ids_default_to_zero_to_n() {
        let c = cluster("faultTolerance: 2");
        assert_eq!(MembershipInput::default().member_ids(&c).expect("ids"), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn membership_errors() {
        let c = cluster("faultTolerance: 1");
        let m = |yaml: &str| -> MembershipInput { serde_yaml::from_str(yaml).expect("parses") };
        assert!(matches!(m("members: [{id: 1}, {id: 1}]").member_ids(&c), Err(BuildError::DuplicateMember(1))));
        assert!(matches!(
            m("members: [{id: 1, publicKey: abc}]").member_ids(&c),
            Err(BuildError::BadPublicKey { id: 1, .. })
        ));
        assert!(matches!(m("adminKey: zz").member_ids(&c), Err(BuildError::BadAdminKey(_))));
        assert_eq!(m("members: [{id: 5}, {id: 2}]").member_ids(&c).expect("ids"), vec![2, 5]);
    }

    #[test]
    fn fingerprints() {
        let key = "11".repeat(32);
        let fp = key_fingerprint(&key).expect("fingerprint");
        assert_eq!(fp.len(), 16);
        assert_eq!(key_fingerprint(&key), Some(fp));
        assert_eq!(key_fingerprint("11"), None);
        assert_ne!(key_fingerprint(&"22".repeat(32)), key_fingerprint(&key));
    }

    #[test]
    fn every_object_is_owned_and_labelled() {
        let c = cluster("{faultTolerance: 1, storage: {size: 1Gi}, networkPolicy: {enabled: true}}");
        let objects = build_all(&c, &MembershipInput::default()).expect("built");
        let values = objects.to_values().expect("values");
        assert_eq!(values.len(), 6 + 4 + 4);
        for v in &values {
            let meta = &v["metadata"];
            assert_eq!(meta["namespace"], "prod", "{v}");
            assert_eq!(meta["ownerReferences"][0]["kind"], "ConsensusCluster", "{v}");
            assert_eq!(meta["ownerReferences"][0]["controller"], true, "{v}");
            assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "ledger", "{v}");
            assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "pbft-operator", "{v}");
            assert!(v["apiVersion"].is_string() && v["kind"].is_string(), "{v}");
        }
    }
}
