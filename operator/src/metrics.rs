//! The operator's own Prometheus metrics (prefix `pbft_operator_`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::crd::ConsensusClusterStatus;
use crate::reconcile::model::ChangeReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvidenceLabels {
    namespace: String,
    cluster: String,
    kind: String,
    verified: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    cluster: String,
    r#type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    namespace: String,
    cluster: String,
}

/// Every metric of the operator.
pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Counter,
    reconcile_seconds: Histogram,
    membership_changes: Family<ReasonLabels, Counter>,
    evidence: Family<EvidenceLabels, Counter>,
    ready_members: Family<ClusterLabels, Gauge>,
    members: Family<ClusterLabels, Gauge>,
    conditions: Family<ConditionLabels, Gauge>,
    quarantined: Family<ClusterLabels, Gauge>,
    leader: Gauge,
    is_leader: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("pbft_operator");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            reconciles: Family::default(),
            reconcile_errors: Counter::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            membership_changes: Family::default(),
            evidence: Family::default(),
            ready_members: Family::default(),
            members: Family::default(),
            conditions: Family::default(),
            quarantined: Family::default(),
            leader: Gauge::default(),
            is_leader: AtomicBool::new(false),
        };
        r.register("reconciliations", "Reconciles by result (ok or the error's reason)", m.reconciles.clone());
        r.register("reconcile_errors", "Reconciles that failed", m.reconcile_errors.clone());
        r.register("reconcile_duration_seconds", "Time one reconcile took", m.reconcile_seconds.clone());
        r.register("membership_changes", "Membership changes ordered, by reason", m.membership_changes.clone());
        r.register("evidence", "New evidence examined, by kind and whether it verified", m.evidence.clone());
        r.register("cluster_ready_replicas", "Healthy members per cluster", m.ready_members.clone());
        r.register("cluster_replicas", "Members of the membership in force per cluster", m.members.clone());
        r.register("cluster_condition", "1 for each condition's current status", m.conditions.clone());
        r.register("cluster_quarantined_replicas", "Members proven faulty and being replaced", m.quarantined.clone());
        r.register("leader", "1 while this instance holds the leader lease", m.leader.clone());
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = r;
        m
    }

    /// Counts one reconcile.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&str>) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        if error.is_some() {
            self.reconcile_errors.inc();
        }
        self.reconciles.get_or_create(&ResultLabels { result: error.unwrap_or("ok").to_string() }).inc();
    }

    /// Counts one ordered membership change.
    pub fn membership_change(&self, reason: ChangeReason) {
        self.membership_changes.get_or_create(&ReasonLabels { reason: format!("{reason:?}") }).inc();
    }

    /// Counts one new evidence.
    pub fn evidence(&self, namespace: &str, cluster: &str, kind: &str, verified: bool) {
        let l = EvidenceLabels {
            namespace: namespace.into(),
            cluster: cluster.into(),
            kind: kind.into(),
            verified: verified.to_string(),
        };
        self.evidence.get_or_create(&l).inc();
    }

    /// Records a cluster's status.
    pub fn observe_cluster(&self, namespace: &str, cluster: &str, s: &ConsensusClusterStatus) {
        let l = ClusterLabels { namespace: namespace.into(), cluster: cluster.into() };
        self.ready_members.get_or_create(&l).set(s.ready_replicas as i64);
        self.members.get_or_create(&l).set(s.replicas as i64);
        for c in &s.conditions {
            for status in ["True", "False", "Unknown"] {
                let cl = ConditionLabels {
                    namespace: namespace.into(),
                    cluster: cluster.into(),
                    r#type: c.type_.clone(),
                    status: status.into(),
                };
                self.conditions.get_or_create(&cl).set((c.status == status) as i64);
            }
        }
        self.quarantined.get_or_create(&l).set(s.quarantined_replicas as i64);
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(leader as i64);
        self.is_leader.store(leader, Ordering::Relaxed);
    }

    /// Whether this instance leads.
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = encode(&mut out, &r) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}
