//! The headless peer Service `<name>-peers` (stable DNS names
//! `<pod>.<name>-peers.<ns>.svc` for every member, published before the pods
//! are ready, since replicas must reach each other to become ready) and the
//! client Service `<name>`.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    object_meta, peer_service_name, replica_selector, ADMIN_PORT, CLIENT_PORT, COMPONENT_REPLICA, METRICS_PORT,
    PEER_PORT,
};
use crate::validate::ValidatedCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The headless Service that gives every member its DNS name.
pub fn build_peer_service(cluster: &ValidatedCluster) -> Service {
    Service {
        metadata: object_meta(cluster, peer_service_name(cluster), COMPONENT_REPLICA),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(replica_selector(cluster)),
            ports: Some(vec![
                port("peer", PEER_PORT),
                port("client", CLIENT_PORT),
                port("admin", ADMIN_PORT),
                port("metrics", METRICS_PORT),
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The client Service (ready replicas only). Clients that want f+1 matching
/// replies address members through the peer Service's names; this one is the
/// single entry point for tools and simple clients.
pub fn build_client_service(cluster: &ValidatedCluster) -> Service {
    Service {
        metadata: object_meta(cluster, cluster.name.clone(), COMPONENT_REPLICA),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(replica_selector(cluster)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
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
    fn peer_service_is_headless_and_publishes_not_ready() {
        let s = build_peer_service(&cluster("faultTolerance: 1"));
        assert_eq!(s.metadata.name.as_deref(), Some("ledger-peers"));
        let spec = s.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.ports.expect("ports").len(), 4);
    }

    #[test]
    fn client_service_exposes_the_client_port() {
        let s = build_client_service(&cluster("faultTolerance: 1"));
        assert_eq!(s.metadata.name.as_deref(), Some("ledger"));
        let ports = s.spec.expect("spec").ports.expect("ports");
        assert_eq!((ports[0].port, ports[0].name.as_deref()), (CLIENT_PORT, Some("client")));
    }
}
