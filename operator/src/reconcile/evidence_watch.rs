//! Wakes the reconciler soon after a replica reports new evidence.
//!
//! A healthy, idle cluster is reconciled every 15 s, and evidence waiting
//! that long delays its quarantine. Between reconciles this watch asks every
//! replica's admin API for its evidence count every [`POLL_EVERY`]; when a
//! cluster's total grows past what the last reconcile (or poll) saw, it asks
//! the controller to reconcile that cluster now. It decides nothing itself:
//! the reconcile reads, verifies and acts on the evidence as always.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::runtime::reflector::ObjectRef;
use pbft::server::rpc::{admin_client::AdminClient, StatusRequest};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::replicas::{admin_url, ADMIN_TIMEOUT};
use crate::ConsensusCluster;

/// How often each watched replica is asked for its evidence count.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// A cluster no reconcile has reported for this long is forgotten (deleted,
/// or its namespace is no longer watched); reconciles come at least every 15 s.
const FORGET_AFTER: Duration = Duration::from_secs(120);

type Key = ObjectRef<ConsensusCluster>;

struct Watched {
    /// Admin channels of the cluster's replica pods, by pod IP.
    channels: Vec<(String, Channel)>,
    /// The highest evidence total seen (by a reconcile or a poll).
    seen: u64,
    reported: Instant,
}

/// The clusters to watch and the trigger the controller listens to.
pub struct EvidenceWatch {
    clusters: Mutex<HashMap<Key, Watched>>,
    trigger: mpsc::Sender<Key>,
}

impl EvidenceWatch {
    /// A watch and the stream of clusters to reconcile (for `Controller::reconcile_on`).
    pub fn new() -> (Arc<EvidenceWatch>, mpsc::Receiver<Key>) {
        let (trigger, rx) = mpsc::channel(64);
        (Arc::new(EvidenceWatch { clusters: Mutex::new(HashMap::new()), trigger }), rx)
    }

    /// What a reconcile observed: the replica pods' IPs and the evidence
    /// records their replicas hold in all.
    pub fn observed(&self, cluster: Key, ips: Vec<String>, evidence: u64) {
        let Ok(mut clusters) = self.clusters.lock() else { return };
        let w =
            clusters.entry(cluster).or_insert_with(|| Watched { channels: vec![], seen: 0, reported: Instant::now() });
        if w.channels.iter().map(|(ip, _)| ip).ne(ips.iter()) {
            w.channels = ips
                .into_iter()
                .filter_map(|ip| {
                    let ch = Endpoint::from_shared(admin_url(&ip))
                        .ok()?
                        .connect_timeout(ADMIN_TIMEOUT)
                        .timeout(ADMIN_TIMEOUT);
                    Some((ip, ch.connect_lazy()))
                })
                .collect();
        }
        w.seen = evidence;
        w.reported = Instant::now();
    }

    /// Polls until the controller stops listening.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let snapshot: Vec<(Key, Vec<Channel>, u64)> = match self.clusters.lock() {
                Ok(mut clusters) => {
                    clusters.retain(|_, w| w.reported.elapsed() < FORGET_AFTER);
                    clusters
                        .iter()
                        .map(|(k, w)| (k.clone(), w.channels.iter().map(|(_, c)| c.clone()).collect(), w.seen))
                        .collect()
                }
                Err(_) => return,
            };
            for (cluster, channels, seen) in snapshot {
                let total: u64 = join_all(channels.into_iter().map(evidence_count)).await.into_iter().sum();
                if total <= seen {
                    continue;
                }
                if let Ok(mut clusters) = self.clusters.lock() {
                    if let Some(w) = clusters.get_mut(&cluster) {
                        w.seen = w.seen.max(total);
                    }
                }
                tracing::info!(cluster = %cluster.name, namespace = ?cluster.namespace, evidence = total, "replicas report new evidence: reconciling now");
                if self.trigger.send(cluster).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The evidence count a replica reports (0 when it does not answer).
async fn evidence_count(channel: Channel) -> u64 {
    let mut admin = AdminClient::new(channel);
    admin.status(StatusRequest {}).await.map(|r| r.into_inner().evidence_count).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use pbft::server::rpc::admin_server::{Admin, AdminServer};
    use pbft::server::rpc::{
        EvidenceReply, EvidenceRequest, IdentityReply, IdentityRequest, StatusReply, StatusRequest,
    };
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::build::ADMIN_PORT;

    /// A replica's admin API that reports a settable evidence counter.
    #[derive(Clone, Default)]
    struct FakeAdmin(Arc<AtomicU64>);

    #[tonic::async_trait]
    impl Admin for FakeAdmin {
        async fn identity(&self, _: Request<IdentityRequest>) -> Result<Response<IdentityReply>, Status> {
            Ok(Response::new(IdentityReply::default()))
        }
        async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
            Ok(Response::new(StatusReply { evidence_count: self.0.load(Ordering::Relaxed), ..Default::default() }))
        }
        async fn evidence(&self, _: Request<EvidenceRequest>) -> Result<Response<EvidenceReply>, Status> {
            Ok(Response::new(EvidenceReply::default()))
        }
    }

    #[tokio::test]
    async fn new_evidence_at_a_replica_triggers_one_reconcile_of_its_cluster() {
        // A loopback address of its own, as the admin port is fixed.
        let ip = "127.0.0.77";
        let admin = FakeAdmin::default();
        let listener = tokio::net::TcpListener::bind((ip, ADMIN_PORT as u16)).await.expect("bind the fake admin API");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(admin.clone()))
                .serve_with_incoming(incoming),
        );

        let (watch, mut triggers) = EvidenceWatch::new();
        let cluster = ObjectRef::<ConsensusCluster>::new("ledger").within("ns");
        admin.0.store(2, Ordering::Relaxed);
        watch.observed(cluster.clone(), vec![ip.to_string()], 2);
        tokio::spawn(watch.clone().run());
        // What the reconcile saw already is no news.
        let quiet = tokio::time::timeout(POLL_EVERY * 2 + Duration::from_millis(500), triggers.recv()).await;
        assert!(quiet.is_err(), "a reconcile was triggered without new evidence");
        // A new record is.
        admin.0.store(3, Ordering::Relaxed);
        let woke =
            tokio::time::timeout(POLL_EVERY * 3, triggers.recv()).await.expect("no reconcile after new evidence");
        assert_eq!(woke, Some(cluster.clone()));
        // Once: the count it saw is remembered until it grows again.
        let again = tokio::time::timeout(POLL_EVERY * 2 + Duration::from_millis(500), triggers.recv()).await;
        assert!(again.is_err(), "the same evidence triggered twice");
    }
}
