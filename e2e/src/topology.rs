//! Where a ConsensusCluster's replicas are and which membership is in force,
//! as a client sees it: the membership the operator published (its
//! ConfigMap), or a newer one that f+1 of its members report (a membership
//! change takes effect in the replicas before the operator records it), and
//! each member's pod reached through [`Reach`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use pbft::core::client::{open_reply, ClientCore};
use pbft::crypto::Keypair;
use pbft::kvclient::{Endpoints, KvClient};
use pbft::membership::Membership;
use pbft::proto::{operation::Kind, Get, Operation};
use pbft::server::membership_file::MembershipFile;
use pbft::server::rpc::{
    admin_client::AdminClient, client_client::ClientClient, StatusReply, StatusRequest, SubmitRequest,
};

use crate::reach::Reach;
use crate::report::{kube_err, Error, Result};

/// Replica ports (as the operator's builders name them).
pub const CLIENT_PORT: u16 = 7001;
pub const ADMIN_PORT: u16 = 7002;
pub const METRICS_PORT: u16 = 9100;
pub const PEER_PORT: u16 = 7000;

/// One member's pod.
#[derive(Clone, Debug)]
pub struct Replica {
    pub id: u32,
    pub pod: String,
    pub ip: Option<String>,
    /// host:port of its client, admin and metrics ports from here, when its pod exists.
    pub client: Option<String>,
    pub admin: Option<String>,
    pub metrics: Option<String>,
    pub peer: Option<String>,
}

/// A cluster as a client sees it at one moment.
#[derive(Clone, Debug)]
pub struct Topology {
    pub namespace: String,
    pub name: String,
    pub membership: Membership,
    pub replicas: Vec<Replica>,
}

fn lazy_channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Other(format!("bad address {addr}: {e}")))?
        .connect_timeout(Duration::from_millis(1500))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Status of the replica at `addr` (admin port).
pub async fn admin_status(addr: &str) -> Result<StatusReply> {
    let mut c = AdminClient::new(lazy_channel(addr)?);
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(3));
    c.status(req).await.map(|r| r.into_inner()).map_err(|s| Error::Other(format!("status of {addr}: {}", s.message())))
}

/// The membership in the cluster's ConfigMap (None before bootstrap).
pub async fn published_membership(client: &kube::Client, ns: &str, name: &str) -> Result<Option<Membership>> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm_name = format!("{name}-membership");
    let Some(cm) = cms.get_opt(&cm_name).await.map_err(kube_err(format!("reading ConfigMap {cm_name}")))? else {
        return Ok(None);
    };
    let Some(text) = cm.data.as_ref().and_then(|d| d.get("membership.yaml")) else { return Ok(None) };
    let file: MembershipFile = serde_yaml::from_str(text).map_err(|e| Error::Other(format!("{cm_name}: {e}")))?;
    if file.members.is_empty() {
        return Ok(None);
    }
    file.to_membership(std::path::Path::new(&cm_name)).map(Some).map_err(|e| Error::Other(e.to_string()))
}

impl Topology {
    /// Reads the cluster now (membership, pods, and a newer membership f+1 members report).
    pub async fn fetch(client: &kube::Client, reach: &Reach, ns: &str, name: &str) -> Result<Topology> {
        let published = published_membership(client, ns, name)
            .await?
            .ok_or_else(|| Error::Other(format!("{ns}/{name} has no membership yet")))?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let lp = ListParams::default()
            .labels(&format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=replica"));
        let pods = pods.list(&lp).await.map_err(kube_err("listing replica pods"))?;
        let mut replicas = vec![];
        for p in &pods.items {
            let Some(id) = p.metadata.labels.as_ref().and_then(|l| l.get("consensus.pbft.dev/member-id")) else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else { continue };
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let pod = p.metadata.name.clone().unwrap_or_default();
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            let addr = |port| {
                let (pod, ip) = (pod.clone(), ip.clone());
                async move { reach.addr(ns, &pod, ip.as_deref(), port).await.ok() }
            };
            replicas.push(Replica {
                id,
                client: addr(CLIENT_PORT).await,
                admin: addr(ADMIN_PORT).await,
                metrics: addr(METRICS_PORT).await,
                peer: addr(PEER_PORT).await,
                pod,
                ip,
            });
        }
        replicas.sort_by_key(|r| r.id);
        let mut t = Topology { namespace: ns.into(), name: name.into(), membership: published, replicas };
        if let Some(newer) = t.newer_membership().await {
            t.membership = newer;
        }
        Ok(t)
    }

    /// A membership newer than ours that f+1 of our members report (each
    /// answering with its member key), as a client follows a reconfiguration.
    async fn newer_membership(&self) -> Option<Membership> {
        let statuses = self.statuses().await;
        let mut votes: Vec<(pbft::proto::MembershipConfig, usize)> = vec![];
        for (id, s) in statuses {
            let Ok(s) = s else { continue };
            let ours = self.membership.key(id).map(|k| k.to_bytes().to_vec());
            if ours.as_deref() != Some(s.public_key.as_ref()) {
                continue;
            }
            let Some(m) = s.membership else { continue };
            if m.epoch <= self.membership.epoch() {
                continue;
            }
            match votes.iter_mut().find(|(c, _)| *c == m) {
                Some((_, n)) => *n += 1,
                None => votes.push((m, 1)),
            }
        }
        let f1 = self.membership.weak_quorum();
        votes
            .into_iter()
            .filter(|(_, n)| *n >= f1)
            .max_by_key(|(c, _)| c.epoch)
            .and_then(|(c, _)| Membership::new(c).ok())
    }

    /// Every replica's admin status (by member id).
    pub async fn statuses(&self) -> Vec<(u32, Result<StatusReply>)> {
        let calls = self.replicas.iter().map(|r| async move {
            let s = match &r.admin {
                Some(a) => admin_status(a).await,
                None => Err(Error::Other(format!("{} has no address", r.pod))),
            };
            (r.id, s)
        });
        futures::future::join_all(calls).await
    }

    /// The replica of member `id`.
    pub fn replica(&self, id: u32) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.id == id)
    }

    /// Client endpoints: every member of the membership that has a pod.
    pub fn endpoints(&self) -> Result<Endpoints> {
        let mut replicas = vec![];
        for id in self.membership.ids() {
            if let Some(addr) = self.replica(id).and_then(|r| r.client.clone()) {
                replicas.push((id, addr.clone(), lazy_channel(&addr)?));
            }
        }
        Ok(Endpoints::members(self.membership.clone(), replicas))
    }

    /// A client with a fresh identity that gives up on one operation after `timeout`.
    pub fn client(&self, timeout: Duration) -> Result<KvClient> {
        let mut c = KvClient::new(self.endpoints()?);
        c.timeout = timeout;
        Ok(c)
    }

    /// Reads `key` from every member: one signed request submitted to all of
    /// them at once (as a PBFT client does, so the request is ordered even
    /// when the primary is not the first to see it), and each member's own
    /// signed reply checked against its key in the membership (not a quorum:
    /// this shows what each replica holds). Per member: `Ok(None)` when the
    /// key is absent there.
    pub async fn read_from_each(&self, key: &[u8]) -> Vec<(u32, Result<Option<Vec<u8>>>)> {
        let mut secret = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
        let mut core = ClientCore::new(Keypair::from_secret(secret), self.membership.clone(), now);
        let request = core.submit(Operation { kind: Some(Kind::Get(Get { key: Bytes::copy_from_slice(key) })) });
        let calls = self.membership.ids().map(|id| {
            let request = request.clone();
            async move { (id, self.reply_of(id, request).await) }
        });
        futures::future::join_all(calls).await
    }

    /// Submits `request` to member `id` and checks its signed reply to a read.
    async fn reply_of(&self, id: u32, request: Bytes) -> Result<Option<Vec<u8>>> {
        let r = self.replica(id).ok_or_else(|| Error::Other(format!("member {id} has no pod")))?;
        let addr = r.client.clone().ok_or_else(|| Error::Other(format!("{} has no address", r.pod)))?;
        let mut c = ClientClient::new(lazy_channel(&addr)?);
        let mut req = tonic::Request::new(SubmitRequest { request });
        req.set_timeout(Duration::from_secs(10));
        let reply = c
            .submit(req)
            .await
            .map_err(|s| Error::Other(format!("{}: {:?}: {}", r.pod, s.code(), s.message())))?
            .into_inner();
        let bad = |why: &str| Error::Check(format!("{}: reply {why}", r.pod));
        let reply = match open_reply(&self.membership, &reply.reply, |sender, _| Ok(sender == id)) {
            Ok(Some((_, reply))) => reply,
            Ok(None) => return Err(bad(&format!("is not signed by member {id}"))),
            Err(e) => return Err(bad(&e.to_string())),
        };
        let result = reply.result.unwrap_or_default();
        match pbft::proto::op_result::Status::try_from(result.status) {
            Ok(pbft::proto::op_result::Status::Ok) => Ok(result.value.map(|v| v.to_vec())),
            Ok(pbft::proto::op_result::Status::NotFound) => Ok(None),
            _ => Err(bad(&format!("refuses: {}", result.error))),
        }
    }
}

/// Keeps a [`Topology`] current (every `period`) for workloads running
/// through membership changes and pod replacements.
pub struct Watcher {
    rx: watch::Receiver<Arc<Topology>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    pub async fn start(
        client: kube::Client,
        reach: Arc<Reach>,
        ns: &str,
        name: &str,
        period: Duration,
    ) -> Result<Watcher> {
        let first = Topology::fetch(&client, &reach, ns, name).await?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let (ns, name) = (ns.to_string(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if let Ok(t) = Topology::fetch(&client, &reach, &ns, &name).await {
                    let changed = {
                        let old = tx.borrow();
                        old.membership.config() != t.membership.config()
                            || old
                                .replicas
                                .iter()
                                .map(|r| (&r.pod, &r.ip))
                                .ne(t.replicas.iter().map(|r| (&r.pod, &r.ip)))
                    };
                    if changed && tx.send(Arc::new(t)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Watcher { rx, task })
    }

    /// A receiver of the current topology.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.rx.clone()
    }

    /// The topology now.
    pub fn current(&self) -> Arc<Topology> {
        self.rx.borrow().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
