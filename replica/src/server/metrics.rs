//! Prometheus metrics (`pbft_` prefix, base units) and their registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// All metrics of one replica.
pub struct Metrics {
    pub registry: Registry,
    pub view: Gauge,
    pub primary: Gauge,
    pub epoch: Gauge,
    pub executed_seq: Gauge,
    pub stable_seq: Gauge,
    pub ready: Gauge,
    pub commit_latency: Histogram,
    pub batch_requests: Histogram,
    pub messages_received: Family<TypeLabel, Counter>,
    pub messages_dropped: Family<ReasonLabel, Counter>,
    pub core_dropped: Family<ReasonLabel, Counter>,
    pub forwarded_requests: Counter,
    pub signature_verifications: Counter,
    pub evidence: Family<KindLabel, Counter>,
    pub memory_used: Gauge,
    pub memory_limit: Gauge,
    pub memory_budget: Gauge,
    pub ledger_bytes: Gauge,
    pub inbound_bytes: Gauge,
    pub shed_requests: Family<ReasonLabel, Counter>,
    pub peer_connected: Family<PeerLabel, Gauge>,
    pub peer_dropped_frames: Family<PeerLabel, Counter>,
    pub wal_fsyncs: Counter,
    pub wal_sync_seconds: Histogram,
    pub wal_group_records: Histogram,
    pub wal_bytes: Gauge,
    pub view_changes: Counter,
    pub suspicions: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pbft");
        let m = Metrics {
            view: Gauge::default(),
            primary: Gauge::default(),
            epoch: Gauge::default(),
            executed_seq: Gauge::default(),
            stable_seq: Gauge::default(),
            ready: Gauge::default(),
            commit_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            messages_received: Family::default(),
            messages_dropped: Family::default(),
            core_dropped: Family::default(),
            forwarded_requests: Counter::default(),
            signature_verifications: Counter::default(),
            evidence: Family::default(),
            memory_used: Gauge::default(),
            memory_limit: Gauge::default(),
            memory_budget: Gauge::default(),
            ledger_bytes: Gauge::default(),
            inbound_bytes: Gauge::default(),
            shed_requests: Family::default(),
            peer_connected: Family::default(),
            peer_dropped_frames: Family::default(),
            wal_fsyncs: Counter::default(),
            wal_sync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            wal_group_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            wal_bytes: Gauge::default(),
            view_changes: Counter::default(),
            suspicions: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("view", "Current view", m.view.clone());
        registry.register("primary", "Primary replica id of the current view", m.primary.clone());
        registry.register("epoch", "Membership epoch in force", m.epoch.clone());
        registry.register("executed_seq", "Last executed sequence number", m.executed_seq.clone());
        registry.register("stable_seq", "Last stable checkpoint sequence number", m.stable_seq.clone());
        registry.register("ready", "1 when a member in normal operation with a quorum of peers", m.ready.clone());
        registry.register_with_unit(
            "commit_latency",
            "Time from a client request's arrival to this replica's reply",
            prometheus_client::registry::Unit::Seconds,
            m.commit_latency.clone(),
        );
        registry.register("batch_requests", "Requests per executed batch", m.batch_requests.clone());
        registry.register("messages_received", "Peer messages received, by type", m.messages_received.clone());
        registry.register(
            "messages_dropped",
            "Peer frames dropped before the core, by reason",
            m.messages_dropped.clone(),
        );
        registry.register(
            "core_dropped",
            "Messages and requests the protocol core set aside, by reason (a batch or vote it cannot hold, \
             outside the watermarks, duplicate, bad signature, malformed, oversized)",
            m.core_dropped.clone(),
        );
        registry.register(
            "forwarded_requests",
            "Client requests this backup relayed to the primary after they waited a view-change timeout",
            m.forwarded_requests.clone(),
        );
        registry.register("signature_verifications", "ed25519 verifications", m.signature_verifications.clone());
        registry.register("evidence", "Evidence of misbehaviour found, by kind", m.evidence.clone());
        registry.register_with_unit(
            "memory_used",
            "Memory used: cgroup usage without clean page cache, or RSS",
            prometheus_client::registry::Unit::Bytes,
            m.memory_used.clone(),
        );
        registry.register_with_unit(
            "memory_limit",
            "Memory limit (cgroup, or configured default)",
            prometheus_client::registry::Unit::Bytes,
            m.memory_limit.clone(),
        );
        registry.register_with_unit(
            "memory_budget",
            "Buffer budget given to the protocol core",
            prometheus_client::registry::Unit::Bytes,
            m.memory_budget.clone(),
        );
        registry.register_with_unit(
            "ledger",
            "Bytes held in the core's accounted buffers",
            prometheus_client::registry::Unit::Bytes,
            m.ledger_bytes.clone(),
        );
        registry.register_with_unit(
            "peer_inbound_queue",
            "Peer frames received and not yet processed (bounded in total and per peer)",
            prometheus_client::registry::Unit::Bytes,
            m.inbound_bytes.clone(),
        );
        registry.register("shed_requests", "Client requests refused, by reason", m.shed_requests.clone());
        registry.register("peer_connected", "1 while the outbound stream to a peer is up", m.peer_connected.clone());
        registry.register(
            "peer_dropped_frames",
            "Outbound frames dropped because a peer's queue was full",
            m.peer_dropped_frames.clone(),
        );
        registry.register("wal_fsyncs", "Write-ahead log fsyncs", m.wal_fsyncs.clone());
        registry.register_with_unit(
            "wal_sync",
            "Time to write and fsync one group of write-ahead log records",
            prometheus_client::registry::Unit::Seconds,
            m.wal_sync_seconds.clone(),
        );
        registry.register("wal_group_records", "Records made durable by one fsync", m.wal_group_records.clone());
        registry.register_with_unit(
            "wal",
            "Size of the write-ahead log",
            prometheus_client::registry::Unit::Bytes,
            m.wal_bytes.clone(),
        );
        registry.register(
            "view_changes",
            "View changes started (a quorum suspected the primary)",
            m.view_changes.clone(),
        );
        registry.register(
            "primary_suspicions",
            "Times this replica suspected its primary (a view change needs a quorum of suspicions)",
            m.suspicions.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
