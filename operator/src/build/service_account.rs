//! The replicas' ServiceAccount: replicas never talk to the Kubernetes API,
//! so no token is mounted (here and in the pod spec), and no Role is bound.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::{object_meta, service_account_name, COMPONENT_REPLICA};
use crate::validate::ValidatedCluster;

/// The ServiceAccount `<name>-replica`.
pub fn build_service_account(cluster: &ValidatedCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(cluster, service_account_name(cluster), COMPONENT_REPLICA),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster;

    #[test]
    fn no_token() {
        let sa = build_service_account(&cluster("faultTolerance: 1"));
        assert_eq!(sa.metadata.name.as_deref(), Some("ledger-replica"));
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert!(sa.secrets.is_none());
    }
}
