//! One Pod (and, with `spec.storage`, one PersistentVolumeClaim) per member.
//!
//! The member's ed25519 private key comes from its own key Secret (see
//! [`super::secret`]), mounted by this pod alone at `/etc/pbft-key`. The
//! container runs as nobody with a read-only root filesystem, no privilege
//! escalation, no capabilities and no service-account token. Its memory
//! request equals its limit: the limit is the replica's budget (it reads its
//! cgroup), and a smaller request would let the kubelet evict it first under
//! node memory pressure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::secret::{KEY_DIR, KEY_FILE};
use super::{
    membership_config_map_name, object_meta, peer_service_name, pod_name, pvc_name, replica_selector,
    service_account_name, short_hash, BuildError, ADMIN_PORT, CLIENT_PORT, COMPONENT_REPLICA, DATA_DIR, MEMBERSHIP_DIR,
    MEMBERSHIP_KEY, MEMBER_ID_LABEL, METRICS_PORT, PEER_PORT, SPEC_HASH_ANNOTATION,
};
use crate::crd::AntiAffinity;
use crate::validate::ValidatedCluster;

/// The user (and group) the replica runs as: nobody, as in our images.
pub const REPLICA_UID: i64 = 65534;
/// Name of the replica container.
pub const CONTAINER_NAME: &str = "replica";

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port: port, protocol: Some("TCP".into()), ..Default::default() }
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The replica's command-line arguments (after the `pbft-replica` command),
/// as `replica/src/server/config.rs` defines them. `protocol.watermarkWindow`
/// has no flag yet: the replica server derives L = 2 x checkpointInterval.
pub fn replica_args(cluster: &ValidatedCluster, id: u32) -> Vec<String> {
    let p = &cluster.spec.protocol;
    [
        ("--id", id.to_string()),
        ("--data-dir", DATA_DIR.to_string()),
        ("--membership-file", format!("{MEMBERSHIP_DIR}/{MEMBERSHIP_KEY}")),
        ("--key-file", format!("{KEY_DIR}/{KEY_FILE}")),
        ("--peer-listen", format!("0.0.0.0:{PEER_PORT}")),
        ("--client-listen", format!("0.0.0.0:{CLIENT_PORT}")),
        ("--admin-listen", format!("0.0.0.0:{ADMIN_PORT}")),
        ("--metrics-listen", format!("0.0.0.0:{METRICS_PORT}")),
        ("--batch-size", p.batch_size.to_string()),
        ("--checkpoint-interval", p.checkpoint_interval.to_string()),
        ("--view-change-timeout-ms", cluster.view_change_timeout_ms.to_string()),
        ("--shed-percent", cluster.spec.memory_soft_limit_percent.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect()
}

fn resources(cluster: &ValidatedCluster) -> ResourceRequirements {
    let r = &cluster.spec.resources;
    let memory = Quantity(r.limits.memory.clone());
    let mut limits = BTreeMap::from([("memory".to_string(), memory.clone())]);
    let mut requests = BTreeMap::from([("memory".to_string(), memory)]);
    if let Some(cpu) = &r.limits.cpu {
        limits.insert("cpu".into(), Quantity(cpu.as_str().to_string()));
    }
    if let Some(cpu) = r.requests.cpu.as_ref().or(r.limits.cpu.as_ref()) {
        requests.insert("cpu".into(), Quantity(cpu.as_str().to_string()));
    }
    ResourceRequirements { limits: Some(limits), requests: Some(requests), ..Default::default() }
}

fn affinity(cluster: &ValidatedCluster) -> Option<Affinity> {
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector { match_labels: Some(replica_selector(cluster)), ..Default::default() }),
        topology_key: "kubernetes.io/hostname".into(),
        ..Default::default()
    };
    let anti = match cluster.spec.placement.pod_anti_affinity {
        AntiAffinity::Disabled => return None,
        AntiAffinity::Preferred => PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: term,
            }]),
            ..Default::default()
        },
        AntiAffinity::Required => PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..Default::default()
        },
    };
    Some(Affinity { pod_anti_affinity: Some(anti), ..Default::default() })
}

fn data_volume(cluster: &ValidatedCluster, id: u32) -> Volume {
    match &cluster.spec.storage {
        Some(_) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(cluster, id),
                read_only: Some(false),
            }),
            ..Default::default()
        },
        None => Volume { name: "data".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    }
}

/// The Pod of member `id`, running the key held in Secret `key_secret`.
/// `faults` (the `PBFT_FAULTS` bound to that key, see
/// [`crate::fault_injection`]) selects the fault-injection image, only when
/// the operator allows fault injection; otherwise the pod is a normal replica.
pub fn build_pod(
    cluster: &ValidatedCluster,
    id: u32,
    key_secret: &str,
    faults: Option<&str>,
) -> Result<Pod, BuildError> {
    let placement = &cluster.spec.placement;
    let faulty = faults.zip(cluster.fault_injection_image.as_deref());
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        EnvVar { name: "RUST_LOG".into(), value: Some("info".into()), ..Default::default() },
    ];
    if let Some((spec, _)) = faulty {
        env.push(EnvVar { name: "PBFT_FAULTS".into(), value: Some(spec.to_string()), ..Default::default() });
    }
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(faulty.map_or_else(|| cluster.image.clone(), |(_, image)| image.to_string())),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().into()),
        command: Some(vec!["pbft-replica".into()]),
        args: Some(replica_args(cluster, id)),
        env: Some(env),
        ports: Some(vec![
            port("peer", PEER_PORT),
            port("client", CLIENT_PORT),
            port("admin", ADMIN_PORT),
            port("metrics", METRICS_PORT),
        ]),
        resources: Some(resources(cluster)),
        // A replica recovering a long log may take a while before it answers.
        startup_probe: Some(http_probe("/healthz", 2, 150)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 2, 2)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(REPLICA_UID),
            run_as_group: Some(REPLICA_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..Default::default() },
            VolumeMount {
                name: "membership".into(),
                mount_path: MEMBERSHIP_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "key".into(), mount_path: KEY_DIR.into(), read_only: Some(true), ..Default::default() },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let spec = PodSpec {
        hostname: Some(pod_name(cluster, id)),
        subdomain: Some(peer_service_name(cluster)),
        service_account_name: Some(service_account_name(cluster)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        restart_policy: Some("Always".into()),
        // The replica flushes and exits in well under a second on SIGTERM.
        termination_grace_period_seconds: Some(10),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(REPLICA_UID),
            run_as_group: Some(REPLICA_UID),
            fs_group: Some(REPLICA_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            data_volume(cluster, id),
            Volume {
                name: "membership".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: membership_config_map_name(cluster),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "key".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(key_secret.to_string()),
                    items: Some(vec![KeyToPath { key: KEY_FILE.into(), path: KEY_FILE.into(), mode: None }]),
                    // Owner and group (fsGroup 65534) read; nobody else.
                    default_mode: Some(0o440),
                    optional: Some(false),
                }),
                ..Default::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("16Mi".into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        node_selector: (!placement.node_selector.is_empty()).then(|| placement.node_selector.clone()),
        tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
        affinity: affinity(cluster),
        ..Default::default()
    };
    let mut meta = object_meta(cluster, pod_name(cluster, id), COMPONENT_REPLICA);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(MEMBER_ID_LABEL.into(), id.to_string());
        if faulty.is_some() {
            labels.insert(crate::fault_injection::POD_LABEL.into(), "true".into());
        }
    }
    meta.annotations = Some(BTreeMap::from([(SPEC_HASH_ANNOTATION.to_string(), short_hash("PodSpec", &spec)?)]));
    Ok(Pod { metadata: meta, spec: Some(spec), status: None })
}

/// The PersistentVolumeClaim of member `id`, when the cluster has storage.
pub fn build_pvc(cluster: &ValidatedCluster, id: u32) -> Option<PersistentVolumeClaim> {
    let storage = cluster.spec.storage.as_ref()?;
    let mut meta = object_meta(cluster, pvc_name(cluster, id), COMPONENT_REPLICA);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(MEMBER_ID_LABEL.into(), id.to_string());
    }
    Some(PersistentVolumeClaim {
        metadata: meta,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(storage.size.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster;

    fn container(p: &Pod) -> &Container {
        &p.spec.as_ref().expect("spec").containers[0]
    }

    #[test]
    fn pod_is_hardened_and_named() {
        let c = cluster("faultTolerance: 1");
        let p = build_pod(&c, 3, "k", None).expect("pod");
        assert_eq!(p.metadata.name.as_deref(), Some("ledger-3"));
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.hostname.as_deref(), Some("ledger-3"));
        assert_eq!(spec.subdomain.as_deref(), Some("ledger-peers"));
        let sc = container(&p).security_context.as_ref().expect("securityContext");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
        assert_eq!(p.metadata.labels.as_ref().and_then(|l| l.get(MEMBER_ID_LABEL)).map(String::as_str), Some("3"));
        let args = container(&p).args.clone().expect("args");
        assert_eq!(&args[..6], ["--id", "3", "--data-dir", "/data", "--membership-file", "/etc/pbft/membership.yaml"]);
    }

    #[test]
    fn memory_request_equals_limit() {
        let c = cluster("{faultTolerance: 1, resources: {limits: {memory: 512Mi, cpu: 2}, requests: {cpu: 250m}}}");
        let r = container(&build_pod(&c, 0, "k", None).expect("pod")).resources.clone().expect("resources");
        let (limits, requests) = (r.limits.expect("limits"), r.requests.expect("requests"));
        assert_eq!(limits["memory"].0, "512Mi");
        assert_eq!(requests["memory"].0, "512Mi");
        assert_eq!(limits["cpu"].0, "2");
        assert_eq!(requests["cpu"].0, "250m");
    }

    #[test]
    fn storage_selects_pvc_or_empty_dir() {
        let eph = cluster("faultTolerance: 1");
        assert!(build_pvc(&eph, 0).is_none());
        let vols = build_pod(&eph, 0, "k", None).expect("pod").spec.expect("spec").volumes.expect("volumes");
        assert!(vols[0].empty_dir.is_some());
        let per = cluster("{faultTolerance: 1, storage: {size: 2Gi, storageClassName: standard}}");
        let pvc = build_pvc(&per, 2).expect("pvc");
        assert_eq!(pvc.metadata.name.as_deref(), Some("data-ledger-2"));
        let vols = build_pod(&per, 2, "k", None).expect("pod").spec.expect("spec").volumes.expect("volumes");
        assert_eq!(vols[0].persistent_volume_claim.as_ref().map(|p| p.claim_name.as_str()), Some("data-ledger-2"));
    }

    #[test]
    fn spec_hash_follows_the_spec() {
        let a = build_pod(&cluster("faultTolerance: 1"), 0, "k", None).expect("pod");
        let b = build_pod(&cluster("faultTolerance: 1"), 0, "k", None).expect("pod");
        let c = build_pod(&cluster("{faultTolerance: 1, image: other:1}"), 0, "k", None).expect("pod");
        let hash = |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get(SPEC_HASH_ANNOTATION)).cloned();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
    }

    #[test]
    fn faults_select_the_fault_injection_image_only_when_allowed() {
        let c = cluster("faultTolerance: 1");
        let p = build_pod(&c, 1, "k", Some("equivocate")).expect("pod");
        let ct = container(&p);
        assert_eq!(ct.image.as_deref(), Some("pbft-replica-faulty:test"));
        let env = ct.env.clone().expect("env");
        assert!(env.iter().any(|e| e.name == "PBFT_FAULTS" && e.value.as_deref() == Some("equivocate")));
        let label = p.metadata.labels.as_ref().and_then(|l| l.get(crate::fault_injection::POD_LABEL).cloned());
        assert_eq!(label.as_deref(), Some("true"));
        let honest = build_pod(&c, 1, "k", None).expect("pod");
        let hash = |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get(SPEC_HASH_ANNOTATION)).cloned();
        assert_ne!(hash(&p), hash(&honest));
        // An operator without --allow-fault-injection builds a normal replica whatever the key says.
        let mut refused = c.clone();
        refused.fault_injection_image = None;
        let p = build_pod(&refused, 1, "k", Some("equivocate")).expect("pod");
        assert_eq!(container(&p).image.as_deref(), Some("pbft-replica:test"));
        assert!(!container(&p).env.clone().expect("env").iter().any(|e| e.name == "PBFT_FAULTS"));
        assert_eq!(hash(&p), hash(&honest));
    }

    #[test]
    fn anti_affinity_modes() {
        let aff = |mode: &str| {
            build_pod(&cluster(&format!("{{faultTolerance: 1, placement: {{podAntiAffinity: {mode}}}}}")), 0, "k", None)
                .expect("pod")
                .spec
                .expect("spec")
                .affinity
        };
        let preferred = aff("Preferred").and_then(|a| a.pod_anti_affinity).expect("anti-affinity");
        assert!(preferred.preferred_during_scheduling_ignored_during_execution.is_some());
        let required = aff("Required").and_then(|a| a.pod_anti_affinity).expect("anti-affinity");
        assert!(required.required_during_scheduling_ignored_during_execution.is_some());
        assert!(aff("Disabled").is_none());
    }
}
