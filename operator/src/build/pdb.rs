//! The PodDisruptionBudget: voluntary disruptions (drains) must leave 2f+1
//! replicas, a quorum, so at most f go at once. It says `minAvailable: 2f+1`
//! rather than `maxUnavailable: f`: the disruption controller can count the
//! pods of a minAvailable budget without the owner's scale subresource, which
//! a ConsensusCluster has not (its size is 3f+1, not a free replica count).
//! Pods that are not ready may be evicted regardless
//! (`unhealthyPodEvictionPolicy: AlwaysAllow`): they do not count towards the
//! quorum, and keeping them would block node drains.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{object_meta, replica_selector, COMPONENT_REPLICA};
use crate::validate::ValidatedCluster;

/// The PodDisruptionBudget `<name>` with `minAvailable: 2f+1`.
pub fn build_pdb(cluster: &ValidatedCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(cluster, cluster.name.clone(), COMPONENT_REPLICA),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(2 * cluster.f as i32 + 1)),
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
    fn a_quorum_stays_available() {
        for f in 1..=7 {
            let pdb = build_pdb(&cluster(&format!("faultTolerance: {f}")));
            let spec = pdb.spec.expect("spec");
            assert_eq!(spec.min_available, Some(IntOrString::Int(2 * f + 1)));
            assert_eq!(spec.max_unavailable, None);
        }
    }
}
