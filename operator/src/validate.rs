//! Semantic validation of a `ConsensusCluster`, beyond what the schema can say.
//!
//! The CRD enforces the same rules at admission (schema bounds and CEL, see
//! [`crate::crd`]). They are checked again here because an object can reach
//! the operator without them (a CRD installed from an older release, an
//! apiserver without CEL, a status patch), and because each violation becomes
//! an Event with a stable reason. [`validate`] also resolves the defaults the
//! CRD leaves to the operator (the replica image) and parses quantities once,
//! so the builders work on a [`ValidatedCluster`] only.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::crd::{
    ConsensusCluster, ConsensusClusterSpec, MAX_FAULT_TOLERANCE, MEMORY_FLOOR, MEMORY_FLOOR_BYTES, MIN_FAULT_TOLERANCE,
    STORAGE_FLOOR, STORAGE_FLOOR_BYTES,
};
use crate::quantity::{parse_bytes, parse_duration_nanos, parse_millicores};

/// One rule a spec breaks. `reason()` is the Event reason; `Display` the
/// message (the same wording as the CRD's CEL messages where one exists).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("faultTolerance (f) must be between 1 and 7: the cluster runs 3f+1 replicas (4 to 22) and commits with 2f+1; got {0}")]
    FaultTolerance(i32),
    #[error("image must not be empty")]
    EmptyImage,
    #[error("resources.limits.memory: {0}")]
    MemoryUnparsable(String),
    #[error("resources.limits.memory must be at least {MEMORY_FLOOR}: below that a replica cannot hold its message log, view changes and state transfer; got {0}")]
    MemoryBelowFloor(String),
    #[error("{field}: {message}")]
    Cpu { field: &'static str, message: String },
    #[error("resources.requests.cpu ({request}) must not exceed resources.limits.cpu ({limit})")]
    CpuRequestAboveLimit { request: String, limit: String },
    #[error("storage.size: {0}")]
    StorageUnparsable(String),
    #[error("storage.size must be at least {STORAGE_FLOOR}; got {0}")]
    StorageBelowFloor(String),
    #[error("storage.storageClassName {0:?} is not a valid object name (lower-case letters, digits, '-' and '.')")]
    StorageClassName(String),
    #[error("protocol.batchSize must be between 1 and 4096; got {0}")]
    BatchSize(i32),
    #[error("protocol.checkpointInterval must be between 1 and 65536; got {0}")]
    CheckpointInterval(i32),
    #[error("protocol.watermarkWindow ({window}) must be a multiple of protocol.checkpointInterval ({interval}) (e.g. 2 x checkpointInterval)")]
    WatermarkNotMultiple { window: i32, interval: i32 },
    #[error("protocol.watermarkWindow ({window}) must be at least 2 x protocol.checkpointInterval ({interval}), so that ordering continues while a checkpoint becomes stable")]
    WatermarkTooSmall { window: i32, interval: i32 },
    #[error("protocol.viewChangeTimeout: {0}")]
    ViewChangeTimeoutUnparsable(String),
    #[error("protocol.viewChangeTimeout must be between 100ms and 5m; got {0}")]
    ViewChangeTimeoutRange(String),
    #[error("memorySoftLimitPercent must be between 50 and 95; got {0}")]
    SoftLimit(i32),
    #[error("spec.storage cannot be added or removed after creation: a replica's data would move between an emptyDir and a volume; create a new ConsensusCluster instead")]
    StorageModeChanged,
    #[error("storage.size may not shrink: a PersistentVolumeClaim can only grow (from {old} to {new})")]
    StorageShrunk { old: String, new: String },
    #[error("storage.storageClassName is immutable: existing volumes cannot move to another class (from {old:?} to {new:?})")]
    StorageClassChanged { old: Option<String>, new: Option<String> },
    #[error("metadata.name {0:?} is too long: pod names <name>-<id> and the Service <name>-peers must stay within 63 characters (at most 50)")]
    NameTooLong(String),
}

impl Violation {
    /// A stable, CamelCase reason for Events and the Degraded condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::FaultTolerance(_) => "InvalidFaultTolerance",
            Violation::EmptyImage => "InvalidImage",
            Violation::MemoryUnparsable(_) | Violation::MemoryBelowFloor(_) => "InvalidMemory",
            Violation::Cpu { .. } | Violation::CpuRequestAboveLimit { .. } => "InvalidCpu",
            Violation::StorageUnparsable(_) | Violation::StorageBelowFloor(_) | Violation::StorageClassName(_) => {
                "InvalidStorage"
            }
            Violation::BatchSize(_)
            | Violation::CheckpointInterval(_)
            | Violation::WatermarkNotMultiple { .. }
            | Violation::WatermarkTooSmall { .. }
            | Violation::ViewChangeTimeoutUnparsable(_)
            | Violation::ViewChangeTimeoutRange(_) => "InvalidProtocol",
            Violation::SoftLimit(_) => "InvalidMemorySoftLimit",
            Violation::StorageModeChanged | Violation::StorageShrunk { .. } | Violation::StorageClassChanged { .. } => {
                "ForbiddenStorageChange"
            }
            Violation::NameTooLong(_) => "InvalidName",
        }
    }
}

/// Every violation of one spec (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpec(pub Vec<Violation>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid ConsensusCluster spec: ")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidSpec {}

impl InvalidSpec {
    /// The reason of the first violation (for one Event per reconcile).
    pub fn reason(&self) -> &'static str {
        self.0.first().map(Violation::reason).unwrap_or("InvalidSpec")
    }
}

/// Why a cluster object cannot be built at all (not the user's spec but the
/// object itself: missing metadata that the apiserver always sets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Invalid(#[from] InvalidSpec),
    #[error("ConsensusCluster {0} has no namespace")]
    NoNamespace(String),
    #[error("ConsensusCluster {0} has no uid (not read from the apiserver?)")]
    NoUid(String),
}

impl ValidateError {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidateError::Invalid(i) => i.reason(),
            ValidateError::NoNamespace(_) => "NoNamespace",
            ValidateError::NoUid(_) => "NoUid",
        }
    }
}

/// Settings of the operator that fill what the spec leaves open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorDefaults {
    /// Replica image used when `spec.image` is omitted.
    pub replica_image: String,
    /// The fault-injection replica image, set only when the operator runs
    /// with `--allow-fault-injection` (test-only; see [`crate::fault_injection`]).
    pub fault_injection_image: Option<String>,
}

/// The replica image of this release.
pub const DEFAULT_REPLICA_IMAGE: &str = concat!("pbft-replica:", env!("CARGO_PKG_VERSION"));
/// The fault-injection replica image of this release (e2e tests only).
pub const DEFAULT_FAULT_INJECTION_IMAGE: &str = concat!("pbft-replica-faulty:", env!("CARGO_PKG_VERSION"));

impl Default for OperatorDefaults {
    fn default() -> Self {
        OperatorDefaults { replica_image: DEFAULT_REPLICA_IMAGE.to_string(), fault_injection_image: None }
    }
}

/// A spec that passed [`validate`], with its values parsed and defaults resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedCluster {
    /// Name of the ConsensusCluster.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Owner reference every built object carries (controller: true).
    pub owner: OwnerReference,
    /// The spec as written (defaults of the schema applied by serde).
    pub spec: ConsensusClusterSpec,
    /// f.
    pub f: u32,
    /// n = 3f+1.
    pub replicas: u32,
    /// The replica image (spec or operator default).
    pub image: String,
    /// Memory limit in bytes.
    pub memory_bytes: u128,
    /// View-change timeout in milliseconds.
    pub view_change_timeout_ms: u64,
    /// The fault-injection image, when the operator allows fault injection.
    pub fault_injection_image: Option<String>,
}

/// Longest cluster name: `<name>-peers` (a Service, DNS label) and
/// `<name>-<id>` pods must fit 63 characters, with room for the PVC prefix.
pub const MAX_NAME_LEN: usize = 50;

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Checks a spec on its own (no previous version).
pub fn check_spec(spec: &ConsensusClusterSpec) -> Vec<Violation> {
    let mut v = Vec::new();
    if !(MIN_FAULT_TOLERANCE..=MAX_FAULT_TOLERANCE).contains(&spec.fault_tolerance) {
        v.push(Violation::FaultTolerance(spec.fault_tolerance));
    }
    if spec.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
        v.push(Violation::EmptyImage);
    }
    let memory = &spec.resources.limits.memory;
    match parse_bytes(memory) {
        Ok(b) if b < MEMORY_FLOOR_BYTES => v.push(Violation::MemoryBelowFloor(memory.clone())),
        Ok(_) => {}
        Err(e) => v.push(Violation::MemoryUnparsable(e.to_string())),
    }
    let limit_cpu = spec.resources.limits.cpu.as_ref().map(|c| c.as_str());
    let request_cpu = spec.resources.requests.cpu.as_ref().map(|c| c.as_str());
    let mut cpu = |field: &'static str, s: Option<&str>| -> Option<u128> {
        let s = s?;
        match parse_millicores(s) {
            Ok(0) => {
                v.push(Violation::Cpu { field, message: format!("must be positive; got {s:?}") });
                None
            }
            Ok(m) => Some(m),
            Err(e) => {
                v.push(Violation::Cpu { field, message: e.to_string() });
                None
            }
        }
    };
    let limit_m = cpu("resources.limits.cpu", limit_cpu);
    let request_m = cpu("resources.requests.cpu", request_cpu);
    if let (Some(l), Some(r), Some(ls), Some(rs)) = (limit_m, request_m, limit_cpu, request_cpu) {
        if r > l {
            v.push(Violation::CpuRequestAboveLimit { request: rs.to_string(), limit: ls.to_string() });
        }
    }
    if let Some(storage) = &spec.storage {
        match parse_bytes(&storage.size) {
            Ok(b) if b < STORAGE_FLOOR_BYTES => v.push(Violation::StorageBelowFloor(storage.size.clone())),
            Ok(_) => {}
            Err(e) => v.push(Violation::StorageUnparsable(e.to_string())),
        }
        if let Some(class) = &storage.storage_class_name {
            if !is_dns_subdomain(class) {
                v.push(Violation::StorageClassName(class.clone()));
            }
        }
    }
    let p = &spec.protocol;
    if !(1..=4096).contains(&p.batch_size) {
        v.push(Violation::BatchSize(p.batch_size));
    }
    if !(1..=65536).contains(&p.checkpoint_interval) {
        v.push(Violation::CheckpointInterval(p.checkpoint_interval));
    } else if p.watermark_window % p.checkpoint_interval != 0 {
        v.push(Violation::WatermarkNotMultiple { window: p.watermark_window, interval: p.checkpoint_interval });
    } else if p.watermark_window < 2 * p.checkpoint_interval {
        v.push(Violation::WatermarkTooSmall { window: p.watermark_window, interval: p.checkpoint_interval });
    }
    match parse_duration_nanos(&p.view_change_timeout) {
        Ok(ns) if !(100_000_000..=300_000_000_000).contains(&ns) => {
            v.push(Violation::ViewChangeTimeoutRange(p.view_change_timeout.clone()))
        }
        Ok(_) => {}
        Err(e) => v.push(Violation::ViewChangeTimeoutUnparsable(e.to_string())),
    }
    if !(50..=95).contains(&spec.memory_soft_limit_percent) {
        v.push(Violation::SoftLimit(spec.memory_soft_limit_percent));
    }
    v
}

/// Checks a change from `old` to `new` (the CRD's transition rules).
pub fn check_transition(old: &ConsensusClusterSpec, new: &ConsensusClusterSpec) -> Vec<Violation> {
    let mut v = Vec::new();
    match (&old.storage, &new.storage) {
        (Some(o), Some(n)) => {
            if let (Ok(ob), Ok(nb)) = (parse_bytes(&o.size), parse_bytes(&n.size)) {
                if nb < ob {
                    v.push(Violation::StorageShrunk { old: o.size.clone(), new: n.size.clone() });
                }
            }
            if o.storage_class_name != n.storage_class_name {
                v.push(Violation::StorageClassChanged {
                    old: o.storage_class_name.clone(),
                    new: n.storage_class_name.clone(),
                });
            }
        }
        (None, None) => {}
        _ => v.push(Violation::StorageModeChanged),
    }
    v
}

/// Validates a ConsensusCluster read from the apiserver and resolves its
/// defaults. `previous` is the last spec the operator acted on (from its own
/// record), for the transition rules; `None` on first sight.
pub fn validate(
    cc: &ConsensusCluster,
    previous: Option<&ConsensusClusterSpec>,
    defaults: &OperatorDefaults,
) -> Result<ValidatedCluster, ValidateError> {
    let name = cc.name_any();
    let namespace = cc.namespace().ok_or_else(|| ValidateError::NoNamespace(name.clone()))?;
    let owner = cc.controller_owner_ref(&()).ok_or_else(|| ValidateError::NoUid(name.clone()))?;
    let mut violations = Vec::new();
    if name.len() > MAX_NAME_LEN {
        violations.push(Violation::NameTooLong(name.clone()));
    }
    violations.extend(check_spec(&cc.spec));
    if let Some(old) = previous {
        violations.extend(check_transition(old, &cc.spec));
    }
    if !violations.is_empty() {
        return Err(InvalidSpec(violations).into());
    }
    let spec = cc.spec.clone();
    // Both parses succeeded in check_spec; errors here would be a bug, still reported as invalid.
    let memory_bytes = parse_bytes(&spec.resources.limits.memory)
        .map_err(|e| InvalidSpec(vec![Violation::MemoryUnparsable(e.to_string())]))?;
    let vct = parse_duration_nanos(&spec.protocol.view_change_timeout)
        .map_err(|e| InvalidSpec(vec![Violation::ViewChangeTimeoutUnparsable(e.to_string())]))?;
    let f = spec.fault_tolerance as u32;
    Ok(ValidatedCluster {
        name,
        namespace,
        owner,
        image: spec.image.clone().unwrap_or_else(|| defaults.replica_image.clone()),
        f,
        replicas: 3 * f + 1,
        memory_bytes,
        view_change_timeout_ms: (vct / 1_000_000) as u64,
        fault_injection_image: defaults.fault_injection_image.clone(),
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::StorageSpec;

    fn spec(yaml: &str) -> ConsensusClusterSpec {
        serde_yaml::from_str(yaml).expect("test spec parses")
    }

    fn cluster(yaml: &str) -> ConsensusCluster {
        let mut cc = ConsensusCluster::new("ledger", spec(yaml));
        cc.metadata.namespace = Some("default".into());
        cc.metadata.uid = Some("0b9e6a2e-0000-4000-8000-000000000001".into());
        cc
    }

    #[test]
    fn minimal_spec_is_valid_with_defaults() {
        let v = validate(&cluster("faultTolerance: 1"), None, &OperatorDefaults::default()).expect("valid");
        assert_eq!(v.f, 1);
        assert_eq!(v.replicas, 4);
        assert_eq!(v.memory_bytes, 256 << 20);
        assert_eq!(v.view_change_timeout_ms, 1000);
        assert_eq!(v.image, format!("pbft-replica:{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(v.owner.kind, "ConsensusCluster");
        assert_eq!(v.owner.controller, Some(true));
        assert_eq!(v.spec.protocol.watermark_window, 128);
    }

    #[test]
    fn full_spec_is_valid() {
        let s = spec(
            r#"
faultTolerance: 7
image: registry.example/pbft-replica:1.2.3
imagePullPolicy: Always
resources: { limits: { memory: 1Gi, cpu: "2" }, requests: { cpu: 500m } }
storage: { size: 10Gi, storageClassName: fast-ssd }
protocol: { batchSize: 4096, checkpointInterval: 128, watermarkWindow: 384, viewChangeTimeout: 1m30s }
quarantine: { mode: Manual }
memorySoftLimitPercent: 95
"#,
        );
        assert_eq!(check_spec(&s), vec![]);
    }

    fn violations(yaml: &str) -> Vec<Violation> {
        check_spec(&spec(yaml))
    }

    #[test]
    fn bad_specs_are_rejected_with_their_reason() {
        let cases: &[(&str, &str)] = &[
            ("faultTolerance: 0", "InvalidFaultTolerance"),
            ("faultTolerance: 8", "InvalidFaultTolerance"),
            ("faultTolerance: -1", "InvalidFaultTolerance"),
            ("{faultTolerance: 1, image: ' '}", "InvalidImage"),
            ("{faultTolerance: 1, resources: {limits: {memory: 63Mi}}}", "InvalidMemory"),
            ("{faultTolerance: 1, resources: {limits: {memory: 64M}}}", "InvalidMemory"),
            ("{faultTolerance: 1, resources: {limits: {memory: lots}}}", "InvalidMemory"),
            ("{faultTolerance: 1, resources: {limits: {cpu: 0m}}}", "InvalidCpu"),
            ("{faultTolerance: 1, resources: {limits: {cpu: 1}, requests: {cpu: 1500m}}}", "InvalidCpu"),
            ("{faultTolerance: 1, storage: {size: 1Mi}}", "InvalidStorage"),
            ("{faultTolerance: 1, storage: {size: 1Gi, storageClassName: Fast_SSD}}", "InvalidStorage"),
            ("{faultTolerance: 1, protocol: {batchSize: 0}}", "InvalidProtocol"),
            ("{faultTolerance: 1, protocol: {checkpointInterval: 0}}", "InvalidProtocol"),
            ("{faultTolerance: 1, protocol: {checkpointInterval: 64, watermarkWindow: 100}}", "InvalidProtocol"),
            ("{faultTolerance: 1, protocol: {checkpointInterval: 64, watermarkWindow: 64}}", "InvalidProtocol"),
            ("{faultTolerance: 1, protocol: {viewChangeTimeout: 50ms}}", "InvalidProtocol"),
            ("{faultTolerance: 1, protocol: {viewChangeTimeout: 6m}}", "InvalidProtocol"),
            ("{faultTolerance: 1, protocol: {viewChangeTimeout: soon}}", "InvalidProtocol"),
            ("{faultTolerance: 1, memorySoftLimitPercent: 49}", "InvalidMemorySoftLimit"),
            ("{faultTolerance: 1, memorySoftLimitPercent: 96}", "InvalidMemorySoftLimit"),
        ];
        for (yaml, reason) in cases {
            let v = violations(yaml);
            assert_eq!(v.len(), 1, "{yaml}: expected one violation, got {v:?}");
            assert_eq!(v[0].reason(), *reason, "{yaml}: {}", v[0]);
        }
    }

    #[test]
    fn messages_name_the_field_and_the_bound() {
        let v = violations("{faultTolerance: 1, resources: {limits: {memory: 32Mi}}}");
        assert_eq!(
            v[0].to_string(),
            "resources.limits.memory must be at least 64Mi: below that a replica cannot hold its message log, \
             view changes and state transfer; got 32Mi"
        );
        let v = violations("{faultTolerance: 1, protocol: {checkpointInterval: 64, watermarkWindow: 100}}");
        assert!(v[0].to_string().contains("multiple of protocol.checkpointInterval (64)"), "{}", v[0]);
    }

    #[test]
    fn several_violations_are_all_reported() {
        let err = validate(
            &cluster("{faultTolerance: 9, resources: {limits: {memory: 1Mi}}, memorySoftLimitPercent: 10}"),
            None,
            &OperatorDefaults::default(),
        )
        .expect_err("invalid");
        let ValidateError::Invalid(InvalidSpec(v)) = &err else { panic!("{err:?}") };
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(err.reason(), "InvalidFaultTolerance");
        assert!(err.to_string().starts_with("invalid ConsensusCluster spec: faultTolerance (f) must be"));
    }

    #[test]
    fn storage_transitions() {
        let with = |size: &str, class: Option<&str>| {
            let mut s = spec("faultTolerance: 1");
            s.storage = Some(StorageSpec { size: size.into(), storage_class_name: class.map(Into::into) });
            s
        };
        let none = spec("faultTolerance: 1");
        assert_eq!(check_transition(&with("1Gi", None), &with("2Gi", None)), vec![]);
        assert_eq!(check_transition(&with("1Gi", None), &with("1024Mi", None)), vec![]);
        assert_eq!(check_transition(&none, &none), vec![]);
        assert_eq!(check_transition(&with("1Gi", None), &with("512Mi", None))[0].reason(), "ForbiddenStorageChange");
        assert_eq!(
            check_transition(&with("1Gi", Some("a")), &with("1Gi", Some("b")))[0],
            Violation::StorageClassChanged { old: Some("a".into()), new: Some("b".into()) }
        );
        assert_eq!(check_transition(&with("1Gi", None), &with("1Gi", Some("b"))).len(), 1);
        assert_eq!(check_transition(&none, &with("1Gi", None)), vec![Violation::StorageModeChanged]);
        assert_eq!(check_transition(&with("1Gi", None), &none), vec![Violation::StorageModeChanged]);
        // validate() applies them when given the previous spec.
        let mut cc = cluster("faultTolerance: 1");
        cc.spec = with("512Mi", None);
        let err = validate(&cc, Some(&with("1Gi", None)), &OperatorDefaults::default()).expect_err("shrink");
        assert_eq!(err.reason(), "ForbiddenStorageChange");
    }

    #[test]
    fn object_metadata_is_required() {
        let mut cc = cluster("faultTolerance: 1");
        cc.metadata.uid = None;
        assert!(matches!(validate(&cc, None, &OperatorDefaults::default()), Err(ValidateError::NoUid(_))));
        let mut cc = cluster("faultTolerance: 1");
        cc.metadata.namespace = None;
        assert!(matches!(validate(&cc, None, &OperatorDefaults::default()), Err(ValidateError::NoNamespace(_))));
        let mut cc = cluster("faultTolerance: 1");
        cc.metadata.name = Some("x".repeat(51));
        assert_eq!(validate(&cc, None, &OperatorDefaults::default()).expect_err("long").reason(), "InvalidName");
    }
}
