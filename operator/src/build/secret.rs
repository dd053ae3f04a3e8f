//! Key Secrets. Each member's ed25519 private key lives in its own immutable
//! Secret, mounted by that member's pod alone (replica pods have no API
//! token, so no replica can read another's Secret). A new key is a new
//! Secret with a new name, so a pod always runs the key its spec names and a
//! key is never swapped under a running write-ahead log. The cluster's admin
//! key, which signs membership changes, is read by the operator only.
//!
//! The operator generates keys (randomness is I/O: these builders take them).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{key_fingerprint, object_meta, BuildError, MEMBER_ID_LABEL};
use crate::validate::ValidatedCluster;

/// Key of the private key (64 hex digits) inside a key Secret, and the file
/// name the replica reads.
pub const KEY_FILE: &str = "replica.key";
/// Where a replica's key Secret is mounted.
pub const KEY_DIR: &str = "/etc/pbft-key";
/// Annotation holding the public key (64 hex digits) of a key Secret.
pub const PUBLIC_KEY_ANNOTATION: &str = "consensus.pbft.dev/public-key";
/// Annotation set once a pod was created with a member key: with an emptyDir
/// data volume, a key whose pod disappeared must never be used again (the new
/// pod would not remember what the old one signed).
pub const KEY_USED_ANNOTATION: &str = "consensus.pbft.dev/used-by-pod";
/// Component label of member key Secrets.
pub const COMPONENT_KEY: &str = "member-key";
/// Component label of the admin key Secret.
pub const COMPONENT_ADMIN_KEY: &str = "admin-key";

/// Name of the Secret of member `id`'s key `public_hex`: `<name>-key-<id>-<8 hex of its fingerprint>`.
pub fn member_key_secret_name(cluster: &ValidatedCluster, id: u32, public_hex: &str) -> Result<String, BuildError> {
    let fp = key_fingerprint(public_hex).ok_or_else(|| BuildError::BadPublicKey { id, key: public_hex.into() })?;
    Ok(format!("{}-key-{id}-{}", cluster.name, &fp[..8]))
}

/// Name of the cluster's admin key Secret.
pub fn admin_key_secret_name(cluster: &ValidatedCluster) -> String {
    format!("{}-admin-key", cluster.name)
}

fn key_secret(cluster: &ValidatedCluster, name: String, component: &str, secret_hex: &str, public_hex: &str) -> Secret {
    let mut meta = object_meta(cluster, name, component);
    meta.annotations = Some(BTreeMap::from([(PUBLIC_KEY_ANNOTATION.to_string(), public_hex.to_ascii_lowercase())]));
    Secret {
        metadata: meta,
        immutable: Some(true),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(KEY_FILE.to_string(), ByteString(secret_hex.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

/// The Secret holding member `id`'s private key; `faults` binds a
/// fault-injection `PBFT_FAULTS` value to this key (test clusters only, see
/// [`crate::fault_injection`]).
pub fn build_member_key_secret(
    cluster: &ValidatedCluster,
    id: u32,
    secret_hex: &str,
    public_hex: &str,
    faults: Option<&str>,
) -> Result<Secret, BuildError> {
    let name = member_key_secret_name(cluster, id, public_hex)?;
    let mut s = key_secret(cluster, name, COMPONENT_KEY, secret_hex, public_hex);
    if let Some(labels) = s.metadata.labels.as_mut() {
        labels.insert(MEMBER_ID_LABEL.into(), id.to_string());
    }
    if let (Some(f), Some(ann)) = (faults, s.metadata.annotations.as_mut()) {
        ann.insert(crate::fault_injection::KEY_FAULTS_ANNOTATION.into(), f.to_string());
    }
    Ok(s)
}

/// The Secret holding the cluster's admin key.
pub fn build_admin_key_secret(cluster: &ValidatedCluster, secret_hex: &str, public_hex: &str) -> Secret {
    key_secret(cluster, admin_key_secret_name(cluster), COMPONENT_ADMIN_KEY, secret_hex, public_hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster;

    #[test]
    fn member_key_secrets_are_immutable_named_by_key_and_labelled() {
        let c = cluster("faultTolerance: 1");
        let public = "ab".repeat(32);
        let s = build_member_key_secret(&c, 2, &"01".repeat(32), &public, None).expect("secret");
        let name = s.metadata.name.clone().expect("name");
        assert!(name.starts_with("ledger-key-2-") && name.len() == "ledger-key-2-".len() + 8, "{name}");
        assert_eq!(s.immutable, Some(true));
        assert_eq!(s.data.as_ref().map(|d| d[KEY_FILE].0.clone()), Some("01".repeat(32).into_bytes()));
        assert_eq!(s.metadata.annotations.as_ref().map(|a| a[PUBLIC_KEY_ANNOTATION].clone()), Some(public.clone()));
        assert_eq!(s.metadata.labels.as_ref().map(|l| l[MEMBER_ID_LABEL].clone()), Some("2".into()));
        let other = build_member_key_secret(&c, 2, &"02".repeat(32), &"cd".repeat(32), Some("flood")).expect("secret");
        assert_ne!(other.metadata.name, s.metadata.name, "a new key is a new Secret");
        let faults = |s: &Secret| {
            s.metadata.annotations.as_ref().and_then(|a| a.get(crate::fault_injection::KEY_FAULTS_ANNOTATION).cloned())
        };
        assert_eq!(faults(&other).as_deref(), Some("flood"));
        assert_eq!(faults(&s), None);
        assert!(build_member_key_secret(&c, 2, "00", "zz", None).is_err());
    }

    #[test]
    fn admin_key_secret() {
        let c = cluster("faultTolerance: 1");
        let s = build_admin_key_secret(&c, &"03".repeat(32), &"ef".repeat(32));
        assert_eq!(s.metadata.name.as_deref(), Some("ledger-admin-key"));
        assert_eq!(
            s.metadata.labels.as_ref().map(|l| l["app.kubernetes.io/component"].clone()),
            Some("admin-key".into())
        );
    }
}
