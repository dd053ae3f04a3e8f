//! The optional NetworkPolicy `<name>` (`spec.networkPolicy.enabled`): ingress
//! to replica pods only on the peer port from the cluster's own replicas, the
//! client port from `clientFrom` (default: anyone), the admin port from
//! `adminFrom` (default: pbft-operator pods in any namespace) and the metrics
//! port from `metricsFrom` (default: anyone; kubelet probes come from the
//! node and are not subject to NetworkPolicy on common CNIs). Egress is not
//! restricted (DNS, peers).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{object_meta, replica_selector, ADMIN_PORT, CLIENT_PORT, COMPONENT_REPLICA, METRICS_PORT, PEER_PORT};
use crate::validate::ValidatedCluster;

fn rule(port: i32, from: Vec<NetworkPolicyPeer>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // No `from`: every source.
        from: (!from.is_empty()).then_some(from),
    }
}

/// The NetworkPolicy, or `None` when disabled.
pub fn build_network_policy(cluster: &ValidatedCluster) -> Option<NetworkPolicy> {
    let np = &cluster.spec.network_policy;
    if !np.enabled {
        return None;
    }
    let selector = LabelSelector { match_labels: Some(replica_selector(cluster)), ..Default::default() };
    let peers = vec![NetworkPolicyPeer { pod_selector: Some(selector.clone()), ..Default::default() }];
    let admin = if np.admin_from.is_empty() {
        vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_string(),
                    "pbft-operator".to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }]
    } else {
        np.admin_from.clone()
    };
    Some(NetworkPolicy {
        metadata: object_meta(cluster, cluster.name.clone(), COMPONENT_REPLICA),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                rule(PEER_PORT, peers),
                rule(CLIENT_PORT, np.client_from.clone()),
                rule(ADMIN_PORT, admin),
                rule(METRICS_PORT, np.metrics_from.clone()),
            ]),
            ..Default::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster;

    #[test]
    fn disabled_by_default() {
        assert!(build_network_policy(&cluster("faultTolerance: 1")).is_none());
    }

    #[test]
    fn peers_only_from_replicas_admin_only_from_operator() {
        let np = build_network_policy(&cluster("{faultTolerance: 1, networkPolicy: {enabled: true}}")).expect("policy");
        let ingress = np.spec.expect("spec").ingress.expect("ingress");
        assert_eq!(ingress.len(), 4);
        let peer_from = ingress[0].from.as_ref().expect("peer sources");
        assert_eq!(
            peer_from[0]
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .map(|l| l["app.kubernetes.io/instance"].as_str()),
            Some("ledger")
        );
        assert!(ingress[1].from.is_none(), "clients from anywhere by default");
        assert!(ingress[2].from.as_ref().expect("admin sources")[0].namespace_selector.is_some());
    }
}
