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
    #[error("no f+1 matching replies within {secs:.1} s (last errors: {last})")]
    Timeout { secs: f64, last: String },
    #[error("request refused by f+1 replicas: {0}")]
    Refused(String),
}

/// A connection to every replica.
#[derive(Clone)]
pub struct Endpoints {
    pub membership: Membership,
    pub replicas: Vec<(u32, String, Channel)>,
}

impl Endpoints {
    /// From a membership file; `overrides` (id -> host:port) replace the file's addresses.
    pub fn from_file(path: &std::path::Path, overrides: &[(u32, String)]) -> Result<Endpoints, ClientError> {
        let file = MembershipFile::read(path)?;
        let membership = file.to_membership(path)?;
        let mut replicas = vec![];
        for m in &file.members {
            let addr = overrides.iter().find(|(id, _)| *id == m.id).map_or(m.address.clone(), |(_, a)| a.clone());
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ClientError::Endpoint { addr: addr.clone(), msg: e.to_string() })?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy();
            replicas.push((m.id, addr, ch));
        }
        Ok(Endpoints { membership, replicas })
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
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ClientError::Endpoint { addr: addr.to_string(), msg: e.to_string() })?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy();
            replicas.push((i as u32, addr.to_string(), ch));
        }
        Ok(Endpoints { membership, replicas })
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
}

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

    /// Orders one operation and returns its result once f+1 replicas agree.
    pub async fn execute(&mut self, kind: Kind) -> Result<OpResult, ClientError> {
        let request = self.core.submit(Operation { kind: Some(kind) });
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut last = String::from("none");
        let f1 = self.endpoints.membership.weak_quorum();
        loop {
            let per_call = Duration::from_secs(3)
                .min(self.timeout.saturating_sub(started.elapsed()))
                .max(Duration::from_millis(100));
            let mut set = JoinSet::new();
            for (id, _, ch) in self.endpoints.replicas.clone() {
                let request = request.clone();
                set.spawn(async move {
                    let mut c = ClientClient::new(ch).max_decoding_message_size(1 << 20);
                    let mut req = tonic::Request::new(SubmitRequest { request });
                    req.set_timeout(per_call);
                    (id, c.submit(req).await)
                });
            }
            let mut invalid = vec![];
            let mut exhausted_hint = None;
            while let Some(joined) = set.join_next().await {
                let Ok((id, res)) = joined else { continue };
                match res {
                    Ok(reply) => {
                        if let Ok(Some(done)) = self.core.on_reply(&reply.into_inner().reply) {
                            set.abort_all();
                            return Ok(done.result);
                        }
                    }
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
            }
            if invalid.len() >= f1 {
                self.core.abandon();
                return Err(ClientError::Refused(invalid[0].clone()));
            }
            if started.elapsed() >= self.timeout {
                self.core.abandon();
                return Err(ClientError::Timeout { secs: started.elapsed().as_secs_f64(), last });
            }
            tokio::time::sleep(exhausted_hint.unwrap_or(backoff).max(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
