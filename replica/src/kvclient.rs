//! The Rust client library: signs a request, sends it to every replica and
//! returns once f+1 replicas sent matching signed replies (so at least one
//! honest replica vouches for the result). It retries with backoff through
//! view changes and on RESOURCE_EXHAUSTED.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_core::{OsRng, RngCore};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::core::client::ClientCore;
use crate::crypto::Keypair;
use crate::membership::Membership;
use crate::proto::{operation::Kind, CompareAndSwap, Delete, Get, OpResult, Operation, Put};
use crate::server::membership_file::{MembershipFile, MembershipFileError};
use crate::server::rpc::{
    admin_client::AdminClient, client_client::ClientClient, StatusReply, StatusRequest, SubmitRequest,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Membership(#[from] MembershipFileError),
    #[error("endpoint {addr:?}: {msg}")]
    Endpoint { addr: String, msg: String },
    #[error("no f+1 matching replies within {secs:.1} s: replies from {answered} replica(s), {needed} must agree (last error: {last})")]
    Timeout { secs: f64, answered: usize, needed: usize, last: String },
    #[error("request refused by f+1 replicas: {0}")]
    Refused(String),
}

/// A channel to `addr` (host:port) that connects on first use.
fn lazy_channel(addr: &str) -> Result<Channel, ClientError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::Endpoint { addr: addr.to_string(), msg: e.to_string() })?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A connection to every replica.
#[derive(Clone)]
pub struct Endpoints {
    pub membership: Membership,
    pub replicas: Vec<(u32, String, Channel)>,
    /// Whether each entry is one member (its id is the member id), so that a
    /// request can go to the likely primary and the next f members first;
    /// false for connections through one balanced address ([`Endpoints::through`]).
    pub by_member: bool,
}

impl Endpoints {
    /// One entry per member: (member id, address, channel).
    pub fn members(membership: Membership, replicas: Vec<(u32, String, Channel)>) -> Endpoints {
        Endpoints { membership, replicas, by_member: true }
    }

    /// From a membership file; `overrides` (id -> host:port) replace the file's addresses.
    pub fn from_file(path: &std::path::Path, overrides: &[(u32, String)]) -> Result<Endpoints, ClientError> {
        let file = MembershipFile::read(path)?;
        let membership = file.to_membership(path)?;
        let mut replicas = vec![];
        for m in &file.members {
            let addr = overrides.iter().find(|(id, _)| *id == m.id).map_or(m.address.clone(), |(_, a)| a.clone());
            let ch = lazy_channel(&addr)?;
            replicas.push((m.id, addr, ch));
        }
        Ok(Endpoints::members(membership, replicas))
    }

    /// Every request through one address that load-balances connections
    /// over the replicas (a Kubernetes client Service): `connections`
    /// separate connections, so that f+1 different replicas answer with high
    /// probability (each connection lands on a replica chosen by the
    /// balancer; replies are told apart by their signatures, not by the
    /// connection). Entries are numbered 0.. and name no replica. A replica
    /// refusing a request is counted once per connection that reached it.
    pub fn through(membership: Membership, addr: &str, connections: usize) -> Result<Endpoints, ClientError> {
        let mut replicas = vec![];
        for i in 0..connections.max(1) {
            replicas.push((i as u32, addr.to_string(), lazy_channel(addr)?));
        }
        Ok(Endpoints { membership, replicas, by_member: false })
    }

    /// Opens new connections in place of those through a balanced address
    /// ([`Endpoints::through`]), so that the balancer chooses replicas
    /// again. A connection stays on the replica it reached first: when the
    /// balancer knew fewer than f+1 replicas at that moment (a client
    /// Service whose endpoints were still being published), or those it
    /// chose do not agree, retries over the same connections could never
    /// gather f+1 matching replies. Entries that name members keep theirs.
    pub fn redial(&mut self) -> Result<(), ClientError> {
        if self.by_member {
            return Ok(());
        }
        for (_, addr, ch) in &mut self.replicas {
            *ch = lazy_channel(addr)?;
        }
        Ok(())
    }

    /// Every replica's status (or the error reaching it).
    pub async fn status(&self) -> Vec<(u32, String, Result<StatusReply, String>)> {
        let mut set = JoinSet::new();
        for (id, addr, ch) in self.replicas.clone() {
            set.spawn(async move {
                let mut c = AdminClient::new(ch);
                let mut req = tonic::Request::new(StatusRequest {});
                req.set_timeout(Duration::from_secs(2));
                let r = c.status(req).await.map(|r| r.into_inner()).map_err(|s| s.message().to_string());
                (id, addr, r)
            });
        }
        let mut out = vec![];
        while let Some(Ok(x)) = set.join_next().await {
            out.push(x);
        }
        out.sort_by_key(|x| x.0);
        out
    }
}

/// One client identity with one outstanding request at a time.
pub struct KvClient {
    core: ClientCore,
    endpoints: Endpoints,
    /// Give up after this long.
    pub timeout: Duration,
    /// The newest view f+1 replies reported: its primary is asked first.
    view: u64,
    /// Smoothed time to f+1 matching replies, which paces the first try.
    latency: Option<Duration>,
}

/// The first try waits this many smoothed latencies for f+1 replies before
/// sending the request to the other members too, ...
const FIRST_TRY_LATENCIES: u32 = 4;
/// ... but at least and at most this long.
const FIRST_TRY_BOUNDS: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

impl KvClient {
    /// A client with a fresh random identity.
    pub fn new(endpoints: Endpoints) -> KvClient {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        KvClient::with_key(endpoints, Keypair::from_secret(secret))
    }

    /// A client with a given identity (timestamps continue from the wall clock in microseconds).
    pub fn with_key(endpoints: Endpoints, key: Keypair) -> KvClient {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        KvClient {
            core: ClientCore::new(key, endpoints.membership.clone(), now),
            endpoints,
            timeout: Duration::from_secs(30),
            view: 0,
            latency: None,
        }
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<OpResult, ClientError> {
        self.execute(Kind::Put(Put { key: Bytes::copy_from_slice(key), value: Bytes::copy_from_slice(value) })).await
    }

    pub async fn get(&mut self, key: &[u8]) -> Result<OpResult, ClientError> {
        self.execute(Kind::Get(Get { key: Bytes::copy_from_slice(key) })).await
    }

    pub async fn delete(&mut self, key: &[u8]) -> Result<OpResult, ClientError> {
        self.execute(Kind::Delete(Delete { key: Bytes::copy_from_slice(key) })).await
    }

    pub async fn cas(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<OpResult, ClientError> {
        self.execute(Kind::Cas(CompareAndSwap {
            key: Bytes::copy_from_slice(key),
            expected: expected.map(Bytes::copy_from_slice),
            new_value: new.map(Bytes::copy_from_slice),
        }))
        .await
    }

    /// The entries a request goes to first: as Castro and Liskov's client
    /// sends to the primary alone, this one sends to the primary of the
    /// newest view it knows and the next f members in primary order (f+1
    /// replies are needed, and if the primary is gone its successor has the
    /// request). Each other replica learns the request from the PRE-PREPARE.
    /// Everyone when the entries name no members or a chosen one has no entry.
    fn first_targets(&self) -> Vec<usize> {
        let all: Vec<usize> = (0..self.endpoints.replicas.len()).collect();
        let m = &self.endpoints.membership;
        if !self.endpoints.by_member || m.weak_quorum() >= m.n() {
            return all;
        }
        let chosen: Option<Vec<usize>> = (0..m.weak_quorum() as u64)
            .map(|i| {
                let id = m.primary(self.view + i);
                self.endpoints.replicas.iter().position(|(e, _, _)| *e == id)
            })
            .collect();
        chosen.unwrap_or(all)
    }

    fn first_try_wait(&self) -> Duration {
        let (lo, hi) = FIRST_TRY_BOUNDS;
        self.latency.map_or(hi, |l| (l * FIRST_TRY_LATENCIES).clamp(lo, hi))
    }

    /// Orders one operation and returns its result once f+1 replicas agree.
    /// The first try goes to f+1 members ([`Self::first_targets`]); when they
    /// do not answer alike within a few usual latencies, or one fails, the
    /// request goes to every replica, and tries repeat with backoff.
    pub async fn execute(&mut self, kind: Kind) -> Result<OpResult, ClientError> {
        let request = self.core.submit(Operation { kind: Some(kind) });
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut last = String::from("none");
        let f1 = self.endpoints.membership.weak_quorum();
        let mut targets = self.first_targets();
        loop {
            let per_call = Duration::from_secs(3)
                .min(self.timeout.saturating_sub(started.elapsed()))
                .max(Duration::from_millis(100));
            let mut set = JoinSet::new();
            let call = |set: &mut JoinSet<_>, i: usize| {
                let (id, _, ch) = self.endpoints.replicas[i].clone();
                let request = request.clone();
                set.spawn(async move {
                    let mut c = ClientClient::new(ch).max_decoding_message_size(1 << 20);
                    let mut req = tonic::Request::new(SubmitRequest { request });
                    req.set_timeout(per_call);
                    (id, c.submit(req).await)
                });
            };
            for &i in &targets {
                call(&mut set, i);
            }
            let mut others: Vec<usize> = (0..self.endpoints.replicas.len()).filter(|i| !targets.contains(i)).collect();
            let widen = tokio::time::sleep(self.first_try_wait());
            tokio::pin!(widen);
            let mut invalid = vec![];
            let mut exhausted_hint = None;
            loop {
                let joined = tokio::select! {
                    j = set.join_next() => j,
                    _ = &mut widen, if !others.is_empty() => None,
                };
                let Some(joined) = joined else {
                    if others.is_empty() {
                        break;
                    }
                    // The first try's wait is over, or all of its calls answered without f+1 alike.
                    for i in others.drain(..) {
                        call(&mut set, i);
                    }
                    continue;
                };
                let Ok((id, res)) = joined else { continue };
                match res {
                    Ok(reply) => match self.core.on_reply(&reply.into_inner().reply) {
                        Ok(Some(done)) => {
                            set.abort_all();
                            self.view = self.view.max(done.view);
                            let took = started.elapsed();
                            self.latency = Some(self.latency.map_or(took, |l| (l * 7 + took) / 8));
                            return Ok(done.result);
                        }
                        Ok(None) => continue, // counted; wait for the next
                        Err(e) => last = format!("r{id}: reply refused: {e}"),
                    },
                    Err(s) => {
                        last = format!("r{id}: {:?}: {}", s.code(), s.message());
                        match s.code() {
                            tonic::Code::InvalidArgument | tonic::Code::Unauthenticated => {
                                invalid.push(s.message().to_string())
                            }
                            tonic::Code::ResourceExhausted => {
                                let hint = s
                                    .metadata()
                                    .get("retry-after-ms")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .unwrap_or(100);
                                exhausted_hint = Some(Duration::from_millis(hint));
                            }
                            _ => {}
                        }
                    }
                }
                // A call of the first try failed or its reply was refused: ask everyone now.
                for i in others.drain(..) {
                    call(&mut set, i);
                }
            }
            if invalid.len() >= f1 {
                self.core.abandon();
                return Err(ClientError::Refused(invalid[0].clone()));
            }
            if started.elapsed() >= self.timeout {
                let answered = self.core.answered();
                self.core.abandon();
                return Err(ClientError::Timeout { secs: started.elapsed().as_secs_f64(), answered, needed: f1, last });
            }
            // Through a balancer, the replicas behind our connections did not
            // give f+1 matching replies: let it choose again.
            self.endpoints.redial()?;
            targets = (0..self.endpoints.replicas.len()).collect();
            tokio::time::sleep(exhausted_hint.unwrap_or(backoff).max(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Member, MembershipConfig};

    fn membership(n: u32) -> Membership {
        let key = |i: u32| Bytes::copy_from_slice(&Keypair::from_secret([i as u8 + 1; 32]).public_bytes());
        Membership::new(MembershipConfig {
            epoch: 0,
            members: (0..n).map(|id| Member { id, public_key: key(id), address: String::new() }).collect(),
            admin_key: key(99),
        })
        .unwrap()
    }

    fn entries(ids: &[u32]) -> Vec<(u32, String, Channel)> {
        ids.iter()
            .map(|&id| (id, format!("r{id}"), Endpoint::from_static("http://127.0.0.1:1").connect_lazy()))
            .collect()
    }

    #[tokio::test]
    async fn the_first_try_goes_to_the_primary_and_its_f_successors() {
        let mut c = KvClient::new(Endpoints::members(membership(7), entries(&[0, 1, 2, 3, 4, 5, 6])));
        assert_eq!(c.first_targets(), vec![0, 1, 2], "view 0, f=2: members 0, 1, 2");
        c.view = 5;
        assert_eq!(c.first_targets(), vec![5, 6, 0], "view 5 wraps around the members");
        // Entries in another order are found by member id.
        let mut c = KvClient::new(Endpoints::members(membership(4), entries(&[3, 2, 1, 0])));
        c.view = 1;
        assert_eq!(c.first_targets(), vec![2, 1], "members 1 and 2 sit at entries 2 and 1");
    }

    #[tokio::test]
    async fn everyone_at_once_when_entries_name_no_members_or_a_chosen_one_is_missing() {
        let c = KvClient::new(Endpoints::members(membership(4), entries(&[0, 2, 3])));
        assert_eq!(c.first_targets(), vec![0, 1, 2], "member 1 has no entry");
        let through = Endpoints { by_member: false, ..Endpoints::members(membership(4), entries(&[0, 1, 2, 3])) };
        assert_eq!(KvClient::new(through).first_targets(), vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn the_first_try_waits_a_few_smoothed_latencies_within_bounds() {
        let mut c = KvClient::new(Endpoints::members(membership(4), entries(&[0, 1, 2, 3])));
        assert_eq!(c.first_try_wait(), FIRST_TRY_BOUNDS.1, "no latency known yet");
        c.latency = Some(Duration::from_millis(1));
        assert_eq!(c.first_try_wait(), FIRST_TRY_BOUNDS.0);
        c.latency = Some(Duration::from_millis(30));
        assert_eq!(c.first_try_wait(), Duration::from_millis(120));
        c.latency = Some(Duration::from_secs(2));
        assert_eq!(c.first_try_wait(), FIRST_TRY_BOUNDS.1);
    }
}
