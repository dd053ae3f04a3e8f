//! The `ConsensusCluster` custom resource (`consensus.pbft.dev/v1alpha1`).
//!
//! Every doc comment on a spec or status field becomes its description in the
//! CRD schema, which is what `kubectl explain consensuscluster.spec...` shows:
//! write them for users.
//!
//! Admission-time validation lives here as schema bounds, patterns and CEL
//! `x-kubernetes-validations` rules (with messages meant for users). The same
//! rules are checked again in [`crate::validate`] (defense in depth, and clear
//! Events when an object got in some other way, e.g. an older CRD version).
//!
//! Why there is no `scale` subresource: the size of a cluster is not a free
//! replica count but `3f+1`; `kubectl scale --replicas=5` could only be
//! rejected. Change `spec.faultTolerance` instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the CRD.
pub const GROUP: &str = "consensus.pbft.dev";
/// API version of the CRD.
pub const VERSION: &str = "v1alpha1";
/// Smallest and largest fault tolerance f accepted (n = 3f+1 = 4 .. 22 replicas).
pub const MIN_FAULT_TOLERANCE: i32 = 1;
/// See [`MIN_FAULT_TOLERANCE`].
pub const MAX_FAULT_TOLERANCE: i32 = 7;
/// The memory limit below which a replica cannot hold its message log, view
/// changes and state transfer buffers (its budgets derive from this limit).
pub const MEMORY_FLOOR: &str = "64Mi";
/// [`MEMORY_FLOOR`] in bytes.
pub const MEMORY_FLOOR_BYTES: u128 = 64 * 1024 * 1024;
/// Memory limit used when the spec gives none.
pub const DEFAULT_MEMORY: &str = "256Mi";
/// Smallest persistent volume a replica can use.
pub const STORAGE_FLOOR: &str = "64Mi";
/// [`STORAGE_FLOOR`] in bytes.
pub const STORAGE_FLOOR_BYTES: u128 = 64 * 1024 * 1024;
/// Bounds of the view-change timeout.
pub const MIN_VIEW_CHANGE_TIMEOUT: &str = "100ms";
/// See [`MIN_VIEW_CHANGE_TIMEOUT`].
pub const MAX_VIEW_CHANGE_TIMEOUT: &str = "5m";

/// Memory quantities: a plain number of bytes or a number with a binary
/// (Ki, Mi, Gi, Ti, Pi, Ei) or decimal (k, M, G, T, P, E) suffix. Exponent
/// forms (`1e9`) and milli-bytes are not accepted.
pub const MEMORY_QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// Go-style durations as the apiserver's CEL `duration()` reads them: `1s`, `1500ms`, `1m30s`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// A Byzantine-fault-tolerant key-value cluster: `3f+1` PBFT replicas that keep
/// committing while up to `f` of them crash, lie or misbehave.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "consensus.pbft.dev",
    version = "v1alpha1",
    kind = "ConsensusCluster",
    plural = "consensusclusters",
    singular = "consensuscluster",
    shortname = "cc",
    category = "pbft",
    namespaced,
    status = "ConsensusClusterStatus",
    doc = "A Byzantine-fault-tolerant key-value cluster of 3f+1 PBFT replicas managed by the pbft-operator.",
    printcolumn = r#"{"name":"F","type":"integer","description":"Faults tolerated (f)","jsonPath":".spec.faultTolerance"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","description":"Members in the current membership","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","description":"Members healthy and committing","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"View","type":"integer","description":"Current PBFT view","jsonPath":".status.view"}"#,
    printcolumn = r#"{"name":"Primary","type":"string","description":"Pod of the primary of the current view","jsonPath":".status.primary"}"#,
    printcolumn = r#"{"name":"Quarantined","type":"integer","description":"Members quarantined or being replaced","jsonPath":".status.quarantinedReplicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","priority":1,"description":"Lifecycle phase","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","priority":1,"description":"Membership epoch","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("has(self.storage) == has(oldSelf.storage)")
        .message("spec.storage cannot be added or removed after creation: a replica's data would move between an emptyDir and a volume; create a new ConsensusCluster instead")
        .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct ConsensusClusterSpec {
    /// Number of faulty (crashed or Byzantine) replicas the cluster tolerates, f.
    /// The cluster runs 3f+1 replicas and needs 2f+1 of them healthy to commit.
    /// From 1 (4 replicas) to 7 (22 replicas). Changing it scales the cluster one
    /// member at a time through membership changes ordered by the cluster itself.
    // Bounds as a CEL rule only (not also minimum/maximum), so a user gets
    // one message that explains them.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 7").message("faultTolerance (f) must be between 1 and 7: the cluster runs 3f+1 replicas (4 to 22) and commits with 2f+1"))]
    pub fault_tolerance: i32,

    /// Container image of the replica (runs `pbft-replica`). When omitted the
    /// operator uses the replica image of its own release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the replica image: Always, IfNotPresent (default) or Never.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Compute resources of every replica. The memory limit is also the
    /// replica's memory budget: it reads its cgroup limit and sizes its logs,
    /// queues and buffers from it.
    #[serde(default)]
    pub resources: ReplicaResources,

    /// Persistent storage of every replica (one PersistentVolumeClaim per
    /// member). When omitted, replicas keep their data in an emptyDir: a
    /// restarted pod comes back with a fresh key and catches up by state
    /// transfer. Cannot be added or removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// PBFT protocol parameters.
    #[serde(default)]
    pub protocol: ProtocolSpec,

    /// What happens when a replica is proven to misbehave.
    #[serde(default)]
    pub quarantine: QuarantineSpec,

    /// Percentage of the memory limit above which a replica sheds new client
    /// requests (RESOURCE_EXHAUSTED with a retry hint) to protect committed
    /// work. From 50 to 95; default 80.
    #[serde(default = "default_soft_limit")]
    #[schemars(range(min = 50, max = 95))]
    pub memory_soft_limit_percent: i32,

    /// Where replica pods may run.
    #[serde(default)]
    pub placement: PlacementSpec,

    /// An optional NetworkPolicy that admits only peer, client, admin and
    /// metrics traffic to the replicas.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

fn default_soft_limit() -> i32 {
    80
}

/// Image pull policy of the replica container.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node lacks the image.
    #[default]
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Compute resources of a replica.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaResources {
    /// Limits of the replica container.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Requests of the replica container. The memory request always equals the
    /// memory limit (a replica's budget is its limit; a smaller request would
    /// let the node evict it under memory pressure).
    #[serde(default)]
    pub requests: ResourceRequests,
}

/// Limits of the replica container.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    /// Memory limit, e.g. 256Mi (default). At least 64Mi. The replica reads it
    /// from its cgroup and derives every buffer budget from it.
    #[serde(default = "default_memory")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || quantity(self).compareTo(quantity('64Mi')) >= 0").message("resources.limits.memory must be at least 64Mi: below that a replica cannot hold its message log, view changes and state transfer"))]
    pub memory: String,
    /// CPU limit, e.g. 1, "0.5" or 500m. Omitted: no CPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!isQuantity(string(self)) || quantity(string(self)).isGreaterThan(quantity('0'))").message("resources.limits.cpu must be a positive CPU quantity such as 1, \"0.5\" or 500m"))]
    pub cpu: Option<CpuQuantity>,
}

fn default_memory() -> String {
    DEFAULT_MEMORY.to_string()
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits { memory: default_memory(), cpu: None }
    }
}

/// Requests of the replica container.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequests {
    /// CPU request, e.g. 100m or "0.5". Omitted: the CPU limit if set, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!isQuantity(string(self)) || quantity(string(self)).isGreaterThan(quantity('0'))").message("resources.requests.cpu must be a positive CPU quantity such as 100m or \"0.5\""))]
    pub cpu: Option<CpuQuantity>,
}

/// A CPU quantity written as a string ("500m", "0.5", "1") or an integer (1).
/// (The apiserver rejects fractional numbers for int-or-string fields, so
/// 0.5 must be quoted.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuQuantity(pub String);

impl CpuQuantity {
    /// The quantity as Kubernetes writes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for CpuQuantity {
    fn from(s: &str) -> Self {
        CpuQuantity(s.to_string())
    }
}

impl Serialize for CpuQuantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CpuQuantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(u64),
            F(f64),
        }
        Ok(CpuQuantity(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
        }))
    }
}

impl JsonSchema for CpuQuantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CpuQuantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "maxLength": 32, "pattern": "^[0-9]+(\\.[0-9]+)?m?$" }
            ],
        })
    }
}

// The CEL rules on quantities and durations pass values that are not
// quantities or durations at all: the schema pattern reports those, so a user
// sees one message, not a pattern error plus a CEL runtime error.

/// Persistent storage of the replicas.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(oldSelf.size) || !has(self.size) || quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0")
        .message("storage.size may not shrink: a PersistentVolumeClaim can only grow")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("storage.storageClassName is immutable: existing volumes cannot move to another class")
        .reason(Reason::FieldValueForbidden),
)]
pub struct StorageSpec {
    /// Size of each replica's volume, e.g. 1Gi. At least 64Mi; may grow (if the
    /// storage class allows expansion) but never shrink.
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || quantity(self).compareTo(quantity('64Mi')) >= 0").message("storage.size must be at least 64Mi"))]
    pub size: String,
    /// StorageClass of the volumes. Omitted: the cluster's default class.
    /// Immutable once set (and may not be set later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// PBFT protocol parameters.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.checkpointInterval <= 0 || self.watermarkWindow % self.checkpointInterval == 0")
        .message("protocol.watermarkWindow must be a multiple of protocol.checkpointInterval (e.g. 2 x checkpointInterval)")
        .field_path(".watermarkWindow"),
    validation = Rule::new("self.checkpointInterval <= 0 || self.watermarkWindow % self.checkpointInterval != 0 || self.watermarkWindow >= 2 * self.checkpointInterval")
        .message("protocol.watermarkWindow must be at least 2 x protocol.checkpointInterval, so that ordering continues while a checkpoint becomes stable")
        .field_path(".watermarkWindow"),
)]
pub struct ProtocolSpec {
    /// Most client requests ordered in one batch (one pre-prepare). From 1 to 4096; default 512.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: i32,
    /// K: a checkpoint every K sequence numbers; the log is truncated below the
    /// last stable checkpoint. From 1 to 65536; default 64.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(range(min = 1, max = 65536))]
    pub checkpoint_interval: i32,
    /// L: how far above the last stable checkpoint sequence numbers are
    /// accepted. A multiple of checkpointInterval, at least twice it. Default 128.
    /// (The replica server currently always uses 2 x checkpointInterval; other
    /// values take effect once it accepts a watermark-window setting.)
    #[serde(default = "default_watermark_window")]
    #[schemars(range(min = 2, max = 1048576))]
    pub watermark_window: i32,
    /// Base view-change timeout (doubles per failed view, decays on progress),
    /// as a duration such as 1s or 1500ms. From 100ms to 5m; default 1s.
    #[serde(default = "default_view_change_timeout")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('100ms') && duration(self) <= duration('5m'))").message("protocol.viewChangeTimeout must be between 100ms and 5m"))]
    pub view_change_timeout: String,
}

fn default_batch_size() -> i32 {
    512
}
fn default_checkpoint_interval() -> i32 {
    64
}
fn default_watermark_window() -> i32 {
    128
}
fn default_view_change_timeout() -> String {
    "1s".to_string()
}

impl Default for ProtocolSpec {
    fn default() -> Self {
        ProtocolSpec {
            batch_size: default_batch_size(),
            checkpoint_interval: default_checkpoint_interval(),
            watermark_window: default_watermark_window(),
            view_change_timeout: default_view_change_timeout(),
        }
    }
}

/// What happens when a replica is proven to misbehave.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineSpec {
    /// Automatic (default): verified evidence replaces the offender at once
    /// (membership change removing its key, new pod with a fresh key).
    /// Manual: the evidence is recorded and the replacement waits for the
    /// annotation `consensus.pbft.dev/approve-quarantine: "<member id>"`.
    #[serde(default)]
    pub mode: QuarantineMode,
}

/// How quarantines are carried out.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QuarantineMode {
    /// Replace a proven offender without asking.
    #[default]
    Automatic,
    /// Record the evidence and wait for the user's approval.
    Manual,
}

/// Where replica pods may run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Node labels a node must have to run a replica.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the replica pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Spreading replicas over nodes: Preferred (default; spread when possible),
    /// Required (never two replicas of this cluster on one node) or Disabled.
    #[serde(default)]
    pub pod_anti_affinity: AntiAffinity,
}

/// Pod anti-affinity between the replicas of one cluster (topology: node).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AntiAffinity {
    /// Spread replicas over nodes when possible.
    #[default]
    Preferred,
    /// Never schedule two replicas of this cluster on one node.
    Required,
    /// No anti-affinity.
    Disabled,
}

/// The NetworkPolicy of the replicas.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create a NetworkPolicy admitting only: peer traffic (port 7000) from the
    /// cluster's own replicas, client traffic (7001) from `clientFrom`, admin
    /// traffic (7002) from `adminFrom` and metrics (9100) from `metricsFrom`.
    /// Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Who may reach the client port. Empty: everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_from: Vec<NetworkPolicyPeer>,
    /// Who may reach the admin port. Empty: pods labelled
    /// `app.kubernetes.io/name: pbft-operator` in any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_from: Vec<NetworkPolicyPeer>,
    /// Who may reach the metrics port. Empty: everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

/// Observed state of a ConsensusCluster, written by the operator.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsensusClusterStatus {
    /// Lifecycle phase: Pending, Creating, Running, Scaling, Quarantining, Degraded or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Available (2f+1 members healthy and committing), Progressing (a
    /// creation, scaling, rollout or replacement is under way), Degraded (fewer
    /// than 3f+1 healthy members, or the spec is invalid), Quarantining (a
    /// proven offender is being replaced or awaits approval).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members in the current membership epoch.
    #[serde(default)]
    pub replicas: i32,
    /// Members that are ready (healthy and caught up).
    #[serde(default)]
    pub ready_replicas: i32,
    /// Members quarantined or being replaced.
    #[serde(default)]
    pub quarantined_replicas: i32,
    /// Current PBFT view, as reported by a quorum of replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<i64>,
    /// Pod of the primary of the current view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Membership epoch in force (increases with every membership change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Every member of the current membership, and members being added or removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub members: Vec<MemberStatus>,
    /// Evidence of misbehaviour collected from the replicas (the most recent 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<EvidenceRecord>,
}

/// Lifecycle phase of a cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, nothing created yet.
    Pending,
    /// Creating the first membership.
    Creating,
    /// All members active.
    Running,
    /// Changing f.
    Scaling,
    /// Replacing a proven offender (or waiting for approval).
    Quarantining,
    /// Fewer than 3f+1 healthy members.
    Degraded,
    /// The spec failed validation; waiting for a change.
    Invalid,
}

/// One member of the cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Replica id inside the membership (stable across key replacements).
    pub id: i32,
    /// Pod running this member.
    pub pod: String,
    /// First 16 hex digits of the SHA-256 of the member's ed25519 public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Highest sequence number this member executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_executed: Option<i64>,
    /// Joining, Active, Quarantined or Removed.
    pub state: MemberState,
}

/// State of one member.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Added to the membership, catching up.
    Joining,
    /// Caught up and voting.
    Active,
    /// Proven to misbehave; being replaced or awaiting approval.
    Quarantined,
    /// Removed from the membership; its pod is being deleted.
    Removed,
}

/// A piece of evidence of misbehaviour.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceRecord {
    /// EquivocatingPrePrepare, ConflictingPrepare, ConflictingCommit,
    /// ConflictingCheckpoint or ConflictingViewChange.
    pub kind: String,
    /// Member id of the accused replica.
    pub offender: i32,
    /// Pod of the accused replica when the evidence was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offender_pod: Option<String>,
    /// Membership epoch whose keys the signatures were checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// When the operator recorded it.
    pub time: Time,
    /// Whether both signatures verified against the membership of that epoch.
    /// Evidence that does not verify changes nothing and is kept as a warning.
    pub verified: bool,
    /// Member id of the replica that reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporter: Option<i32>,
    /// First 16 hex digits of the SHA-256 of the encoded evidence: its identity
    /// (the full evidence, with both signed messages, is in the operator's log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Fingerprint of the offender's key the evidence convicts (verified evidence only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Why the evidence does not verify (unverified evidence only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
