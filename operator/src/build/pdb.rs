//! The PodDisruptionBudget: voluntary disruptions (drains) may take at most f
//! replicas at once, so 2f+1 stay to commit. Pods that are not ready may be
//! evicted regardless (`unhealthyPodEvictionPolicy: AlwaysAllow`): they do
//! not count towards the quorum, and keeping them would block node drains.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{object_meta, replica_selector, COMPONENT_REPLICA};
use crate::validate::ValidatedCluster;

/// The PodDisruptionBudget `<name>` with `maxUnavailable: f`.
pub fn build_pdb(cluster: &ValidatedCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(cluster, cluster.name.clone(), COMPONENT_REPLICA),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(cluster.f as i32)),
            selector: Some(LabelSelector { match_labels: Some(replica_selector(cluster)), ..Default::default() }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster;

    #[test]
    fn max_unavailable_is_f() {
        for f in 1..=7 {
            let pdb = build_pdb(&cluster(&format!("faultTolerance: {f}")));
            assert_eq!(pdb.spec.and_then(|s| s.max_unavailable), Some(IntOrString::Int(f)));
        }
    }
}
