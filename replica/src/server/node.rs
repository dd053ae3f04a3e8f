//! One replica process: gRPC services, the driver task that owns the
//! [`Replica`], the membership-file watcher, the memory sampler and the HTTP
//! endpoints.
//!
//! The driver drains up to [`DRAIN`] inputs at a time and steps the core
//! (peer frames of one drain go in as one `Event::Peers`, so their
//! signatures are verified as a batch). It hands every `Persist` to the log
//! thread ([`wal::spawn`]), which writes and fsyncs them in groups while the
//! driver keeps stepping. Sends and replies are held, in order, until the
//! newest record they depend on is durable ([`wal::must_precede_sends`]; the
//! module docs of `wal` give the safety argument); other actions (timers,
//! metrics, evidence) are carried out at once. Delaying sends is always
//! allowed by the core's contract, and one fsync covers many steps.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use crate::core::{Action, Config, Event, Rejection, Replica, TimerKind};
use crate::crypto::{Ed25519Verifier, Keypair, SignatureCheck, SignatureVerifier as _, REQUEST_DOMAIN};
use crate::membership::Membership;
use crate::proto::{evidence::Kind as EvidenceKind, Envelope, Evidence};
use crate::server::admission::{self, Admitted, Gate};
use crate::server::cgroup::{self, CgroupFiles};
use crate::server::config::Settings;
use crate::server::membership_file::{MembershipFile, MembershipFileError};
use crate::server::metrics::{KindLabel, Metrics, PeerLabel, ReasonLabel, TypeLabel};
use crate::server::rpc::{
    admin_server::{Admin, AdminServer},
    client_server::{Client, ClientServer},
    peer_server::{Peer, PeerServer},
    EvidenceReply, EvidenceRequest, Frame, IdentityReply, IdentityRequest, PeerState, StatusReply, StatusRequest,
    StreamClosed, SubmitReply, SubmitRequest,
};
use crate::server::transport::{run_peer, PeerQueue};
use crate::server::wal::{self, LogHandle, Progress, SyncObserver, Wal, WalError};
use crate::server::{keys, ServerError};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

/// Inputs drained per driver iteration.
const DRAIN: usize = 512;
/// Capacity of the driver's input channel.
const INPUT_CAPACITY: usize = 8192;
/// How long a client call waits for this replica's reply.
const CLIENT_WAIT: Duration = Duration::from_secs(10);
/// Memory usage sampling period (shedding acts on the last sample).
const SAMPLE_EVERY: Duration = Duration::from_millis(25);
/// Retry hint sent with RESOURCE_EXHAUSTED.
const RETRY_AFTER_MS: u64 = 200;
/// Batches the primary keeps ordered but not executed, unless configured.
pub const DEFAULT_INFLIGHT_BATCHES: u64 = 2;
/// Status and gauges are refreshed at most this often (and once after the last change).
const PUBLISH_EVERY: Duration = Duration::from_millis(10);

enum Input {
    /// A peer frame and the inbound account (of the claimed sender) it is charged to.
    Peer(Bytes, Arc<AtomicUsize>),
    Client {
        request: Bytes,
        reply: oneshot::Sender<Result<Bytes, Status>>,
        arrived: Instant,
    },
    Timer {
        kind: TimerKind,
        generation: u64,
    },
}

/// State shared by the services, the driver and the watchers.
pub struct Shared {
    pub settings: Settings,
    pub public_key: [u8; 32],
    id: OnceLock<u32>,
    input: OnceLock<mpsc::Sender<Input>>,
    /// Peer frames received but not yet taken by the driver, in bytes (all peers).
    inbound_bytes: AtomicUsize,
    inbound_cap: usize,
    /// The same per claimed sender (`pbft-from`; unknown senders share one account), each
    /// bounded by `peer_inbound_cap`, so one flooding peer cannot take the whole inbound budget.
    inbound_by_peer: Mutex<HashMap<Option<u32>, Arc<AtomicUsize>>>,
    peer_inbound_cap: AtomicUsize,
    /// Largest peer frame accepted or sent: the core's largest message of any
    /// kind (a NEW-VIEW embeds a quorum of view changes; a state response
    /// carries a snapshot), bounded by the inbound byte cap.
    max_frame_bytes: AtomicUsize,
    /// Client request bytes inside calls in flight (bounded by `client_bytes_cap`).
    client_bytes: Arc<AtomicUsize>,
    client_bytes_cap: usize,
    max_request_bytes: AtomicUsize,
    pub status: Mutex<StatusReply>,
    evidence: Mutex<Vec<Bytes>>,
    peers: Mutex<HashMap<u32, Arc<PeerQueue>>>,
    pub metrics: Metrics,
    memory_used: AtomicU64,
    /// Size of the last stable snapshot: each checkpoint briefly holds a few
    /// more copies of the state (the new snapshot, its log record), which
    /// usage sampled before the checkpoint does not show.
    snapshot_bytes: AtomicU64,
    memory_limit: AtomicU64,
    shutting_down: AtomicBool,
    /// Client calls in flight, taken before a call's body is read ([`admission`]);
    /// sized once the core's largest request is known (when consensus starts).
    client_calls: OnceLock<Arc<Semaphore>>,
    ready: AtomicBool,
    shutdown: watch::Receiver<bool>,
    /// Set when the driver has flushed and stopped.
    driver_done: watch::Sender<bool>,
    #[cfg(feature = "fault-injection")]
    faults: crate::server::faults::Faults,
}

impl Shared {
    fn shed_threshold(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed) / 100 * self.settings.shed_percent
    }

    /// Usage plus the burst the next checkpoint brings (two more copies of the state).
    /// Known limit: a state so large that this stays above the soft limit gets
    /// every client call shed, deletes included (the call is refused before its
    /// operation is read); the memory limit must leave room for three copies of the state.
    fn projected_usage(&self) -> u64 {
        self.memory_used.load(Ordering::Relaxed) + 2 * self.snapshot_bytes.load(Ordering::Relaxed)
    }

    fn shed(&self, reason: &str) {
        self.metrics.shed_requests.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }
}

impl Gate for Shared {
    /// Refuses a client call before consensus runs, while memory is above the
    /// soft limit, or when every permit is taken.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        let Some(calls) = self.client_calls.get() else {
            return Err(Status::unavailable("replica is not (yet) a member of the membership file"));
        };
        if self.projected_usage() > self.shed_threshold() {
            self.shed("memory");
            return Err(exhausted("memory above the soft limit"));
        }
        calls.clone().try_acquire_owned().map_err(|_| {
            self.shed("concurrency");
            exhausted("too many client calls in flight")
        })
    }
}

fn exhausted(msg: &str) -> Status {
    let mut s = Status::resource_exhausted(format!("{msg}; retry after {RETRY_AFTER_MS} ms"));
    if let Ok(v) = RETRY_AFTER_MS.to_string().parse() {
        s.metadata_mut().insert("retry-after-ms", v);
    }
    s
}

// ---------------------------------------------------------------- services

#[derive(Clone)]
struct PeerSvc(Arc<Shared>);

#[tonic::async_trait]
impl Peer for PeerSvc {
    async fn stream(&self, req: Request<tonic::Streaming<Frame>>) -> Result<Response<StreamClosed>, Status> {
        let s = &self.0;
        // The claim is unauthenticated (every envelope is checked by the core): it only picks the account.
        let claimed: Option<u32> = req
            .metadata()
            .get("pbft-from")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .filter(|id| s.peers.lock().is_ok_and(|p| p.contains_key(id)));
        let account = s
            .inbound_by_peer
            .lock()
            .map(|mut m| m.entry(claimed).or_default().clone())
            .unwrap_or_else(|_| Arc::new(AtomicUsize::new(0)));
        let mut stream = req.into_inner();
        let mut shutdown = s.shutdown.clone();
        loop {
            let frame = tokio::select! {
                f = stream.message() => f?,
                _ = shutdown.changed() => return Err(Status::unavailable("shutting down")),
            };
            let Some(frame) = frame else { return Ok(Response::new(StreamClosed {})) };
            let len = frame.envelope.len();
            let drop_reason = if len > s.max_frame_bytes.load(Ordering::Relaxed) + 64 {
                Some("oversized")
            } else if s.inbound_bytes.load(Ordering::Relaxed) + len > s.inbound_cap {
                Some("inbound_full")
            } else if account.load(Ordering::Relaxed) + len > s.peer_inbound_cap.load(Ordering::Relaxed) {
                Some("peer_inbound_full")
            } else {
                None
            };
            if let Some(reason) = drop_reason {
                s.metrics.messages_dropped.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
                continue;
            }
            let Some(tx) = s.input.get() else { continue };
            s.inbound_bytes.fetch_add(len, Ordering::Relaxed);
            account.fetch_add(len, Ordering::Relaxed);
            if tx.try_send(Input::Peer(frame.envelope, account.clone())).is_err() {
                s.inbound_bytes.fetch_sub(len, Ordering::Relaxed);
                account.fetch_sub(len, Ordering::Relaxed);
                s.metrics.messages_dropped.get_or_create(&ReasonLabel { reason: "driver_full".into() }).inc();
            }
        }
    }
}

/// Bytes of one client call in flight, released when the call ends.
struct ClientBytes(Arc<AtomicUsize>, usize);

impl ClientBytes {
    fn take(account: &Arc<AtomicUsize>, n: usize, cap: usize) -> Option<ClientBytes> {
        let before = account.fetch_add(n, Ordering::Relaxed);
        if before + n > cap {
            account.fetch_sub(n, Ordering::Relaxed);
            return None;
        }
        Some(ClientBytes(account.clone(), n))
    }
}

impl Drop for ClientBytes {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct ClientSvc(Arc<Shared>);

#[tonic::async_trait]
impl Client for ClientSvc {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        let s = &self.0;
        if s.shutting_down.load(Ordering::Relaxed) {
            return Err(Status::unavailable("replica is shutting down"));
        }
        let Some(tx) = s.input.get() else {
            return Err(Status::unavailable("replica is not (yet) a member of the membership file"));
        };
        let request = req.into_inner().request;
        let limit = s.max_request_bytes.load(Ordering::Relaxed);
        if request.len() > limit {
            return Err(Status::invalid_argument(format!("request of {} bytes exceeds {limit}", request.len())));
        }
        // Memory and the number of calls were checked before the body was read (`Gate::admit`).
        let Some(_bytes) = ClientBytes::take(&s.client_bytes, request.len(), s.client_bytes_cap) else {
            s.shed("client_bytes");
            return Err(exhausted("too many client request bytes in flight"));
        };
        let (otx, orx) = oneshot::channel();
        if tx.try_send(Input::Client { request, reply: otx, arrived: Instant::now() }).is_err() {
            s.shed("queue");
            return Err(exhausted("replica input queue full"));
        }
        match tokio::time::timeout(CLIENT_WAIT, orx).await {
            Ok(Ok(Ok(reply))) => Ok(Response::new(SubmitReply { reply })),
            Ok(Ok(Err(status))) => Err(status),
            Ok(Err(_)) => Err(Status::unavailable("replica stopped")),
            Err(_) => Err(Status::deadline_exceeded("no reply within 10 s (view change or overload); retry")),
        }
    }
}

#[derive(Clone)]
struct AdminSvc(Arc<Shared>);

#[tonic::async_trait]
impl Admin for AdminSvc {
    async fn identity(&self, _: Request<IdentityRequest>) -> Result<Response<IdentityReply>, Status> {
        let s = &self.0;
        Ok(Response::new(IdentityReply {
            public_key: Bytes::copy_from_slice(&s.public_key),
            member: s.id.get().is_some(),
            id: s.id.get().copied().unwrap_or(0),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let s = &self.0;
        let mut st = s.status.lock().map(|g| g.clone()).unwrap_or_default();
        st.public_key = Bytes::copy_from_slice(&s.public_key);
        st.memory_used_bytes = s.memory_used.load(Ordering::Relaxed);
        st.memory_limit_bytes = s.memory_limit.load(Ordering::Relaxed);
        st.ready = s.ready.load(Ordering::Relaxed);
        #[cfg(feature = "fault-injection")]
        {
            st.evidence_count += s.faults.forged_evidence(st.epoch).len() as u64;
        }
        if let Ok(peers) = s.peers.lock() {
            let mut v: Vec<PeerState> = peers
                .values()
                .map(|q| PeerState {
                    id: q.id,
                    address: q.address.lock().map(|a| a.clone()).unwrap_or_default(),
                    connected: q.connected.load(Ordering::Relaxed),
                    dropped_frames: q.dropped.load(Ordering::Relaxed),
                })
                .collect();
            v.sort_by_key(|p| p.id);
            st.peers = v;
        }
        Ok(Response::new(st))
    }

    async fn evidence(&self, _: Request<EvidenceRequest>) -> Result<Response<EvidenceReply>, Status> {
        #[allow(unused_mut)]
        let mut evidence = self.0.evidence.lock().map(|e| e.clone()).unwrap_or_default();
        #[cfg(feature = "fault-injection")]
        {
            let epoch = self.0.status.lock().map(|s| s.epoch).unwrap_or_default();
            evidence.extend(self.0.faults.forged_evidence(epoch));
        }
        Ok(Response::new(EvidenceReply { evidence }))
    }
}

// ---------------------------------------------------------------- driver

struct Waiter {
    tx: oneshot::Sender<Result<Bytes, Status>>,
    arrived: Instant,
}

struct Driver {
    shared: Arc<Shared>,
    replica: Replica,
    log: LogHandle,
    /// Sends and replies waiting for the log: (LSN that must be durable, action), in order.
    held: VecDeque<(u64, Action)>,
    /// LSN of the newest record that later sends depend on.
    barrier: u64,
    /// LSN of the newest durable record.
    durable: u64,
    tx: mpsc::Sender<Input>,
    /// Checks a drain's client request signatures as one batch ahead of the core.
    pre_verifier: Ed25519Verifier,
    waiters: HashMap<(Bytes, u64), Vec<Waiter>>,
    evidence_log: PathBuf,
    verifications: u64,
    /// `messages_received` by type, indexed as [`MESSAGE_TYPES`].
    received: Vec<Counter>,
    last_publish: Instant,
    publish_pending: bool,
    wal_bytes: u64,
    #[cfg(feature = "fault-injection")]
    key: Keypair,
}

/// Labels of peer message types: the `Message.body` fields 3..=13, then "malformed".
const MESSAGE_TYPES: [&str; 12] = [
    "pre_prepare",
    "prepare",
    "commit",
    "checkpoint",
    "view_change",
    "new_view",
    "state_request",
    "state_response",
    "reply",
    "suspect",
    "forward",
    "malformed",
];

/// Finds the first length-delimited field whose number satisfies `want`: (number, contents).
fn find_bytes_field(mut b: &[u8], want: impl Fn(u32) -> bool) -> Option<(u32, &[u8])> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    while !b.is_empty() {
        let (field, wire) = decode_key(&mut b).ok()?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut b).ok()?;
            }
            WireType::SixtyFourBit => b = b.get(8..)?,
            WireType::ThirtyTwoBit => b = b.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut b).ok()?).ok()?;
                let (contents, rest) = (b.get(..len)?, b.get(len..)?);
                if want(field) {
                    return Some((field, contents));
                }
                b = rest;
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
    }
    None
}

/// Index into [`MESSAGE_TYPES`] of a peer frame, read from the wire without
/// decoding it (the core decodes and checks it; this is for the metric only).
fn message_type(frame: &[u8]) -> usize {
    let malformed = MESSAGE_TYPES.len() - 1;
    let Some((_, payload)) = find_bytes_field(frame, |f| f == 1) else { return malformed };
    match find_bytes_field(payload, |f| (3..=13).contains(&f)) {
        Some((field, _)) => (field - 3) as usize,
        None => malformed,
    }
}

/// The log thread's metrics.
struct WalMetrics {
    fsyncs: Counter,
    seconds: Histogram,
    records: Histogram,
}

impl SyncObserver for WalMetrics {
    fn synced(&self, records: usize, seconds: f64) {
        self.fsyncs.inc();
        self.seconds.observe(seconds);
        self.records.observe(records as f64);
    }
}

fn rejection_status(r: Rejection) -> Status {
    match r {
        Rejection::ResourceExhausted { retry_after_ms } => {
            let mut s = Status::resource_exhausted(format!("replica buffers full; retry after {retry_after_ms} ms"));
            if let Ok(v) = retry_after_ms.to_string().parse() {
                s.metadata_mut().insert("retry-after-ms", v);
            }
            s
        }
        Rejection::TooLarge { bytes, limit } => {
            Status::invalid_argument(format!("request of {bytes} bytes exceeds the limit of {limit}"))
        }
        Rejection::Malformed(why) => Status::invalid_argument(format!("malformed request: {why}")),
        Rejection::BadSignature => Status::unauthenticated("request signature does not verify"),
        Rejection::Retired => Status::failed_precondition("replica left the membership"),
    }
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, initial: Vec<Action>) -> Result<(), WalError> {
        let mut shutdown = self.shared.shutdown.clone();
        let mut progress = self.log.progress();
        self.carry_out(initial)?;
        let mut buf = Vec::with_capacity(DRAIN);
        loop {
            buf.clear();
            let publish_at = tokio::time::Instant::from_std(self.last_publish + PUBLISH_EVERY);
            tokio::select! {
                biased;
                changed = progress.changed() => {
                    if changed.is_err() {
                        return Err(WalError::Stopped("the log thread exited".into()));
                    }
                    let p = progress.borrow_and_update().clone();
                    self.on_progress(p)?;
                    continue;
                }
                n = rx.recv_many(&mut buf, DRAIN) => if n == 0 { break },
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep_until(publish_at), if self.publish_pending => {
                    self.publish();
                    continue;
                }
            }
            let mut actions = vec![];
            let mut peers = vec![];
            let mut clients = vec![];
            let mut to_check = vec![];
            for input in buf.drain(..) {
                match input {
                    Input::Peer(b, account) => {
                        self.shared.inbound_bytes.fetch_sub(b.len(), Ordering::Relaxed);
                        account.fetch_sub(b.len(), Ordering::Relaxed);
                        self.received[message_type(&b)].inc();
                        if self.fault_drop_inbound() {
                            continue;
                        }
                        peers.push(b);
                    }
                    Input::Client { request, reply, arrived } => match crate::core::decode_request(&request) {
                        Ok((req, body)) => {
                            if let Ok(key) = crate::crypto::parse_public_key(&body.client) {
                                to_check.push((req, key));
                            }
                            self.waiters
                                .entry((body.client.clone(), body.timestamp))
                                .or_default()
                                .push(Waiter { tx: reply, arrived });
                            clients.push(request);
                        }
                        Err(why) => {
                            let _ = reply.send(Err(Status::invalid_argument(format!("malformed request: {why}"))));
                        }
                    },
                    Input::Timer { kind, generation } => {
                        if kind == TimerKind::Retransmit {
                            self.waiters.retain(|_, w| {
                                w.retain(|x| !x.tx.is_closed());
                                !w.is_empty()
                            });
                        }
                        actions.extend(self.replica.step(Event::Timer { kind, generation }));
                    }
                }
            }
            // Peer messages first (executed batches free pipeline slots), then the
            // drain's client requests as one event, so the primary batches them together.
            if !peers.is_empty() {
                let ev = if peers.len() == 1 { Event::Peer(peers.remove(0)) } else { Event::Peers(peers) };
                actions.extend(self.replica.step(ev));
            }
            if to_check.len() > 1 {
                // One batch for the drain's request signatures; the core's own
                // check of each is then a lookup in the shared cache.
                let checks: Vec<SignatureCheck> = to_check
                    .iter()
                    .map(|(r, k)| SignatureCheck {
                        key: k,
                        domain: REQUEST_DOMAIN,
                        body: &r.body,
                        signature: &r.signature,
                    })
                    .collect();
                self.pre_verifier.verify_all(&checks);
            }
            if !clients.is_empty() {
                let ev = if clients.len() == 1 { Event::Client(clients.remove(0)) } else { Event::Clients(clients) };
                actions.extend(self.replica.step(ev));
            }
            self.carry_out(actions)?;
        }
        // Flush: wait until everything appended is durable (held sends are dropped).
        for (_, ws) in self.waiters.drain() {
            for w in ws {
                let _ = w.tx.send(Err(Status::unavailable("replica is shutting down")));
            }
        }
        self.log.close().await
    }

    /// Appends the records to the log and carries out the other actions in
    /// order: sends and replies once what they depend on is durable, the rest now.
    fn carry_out(&mut self, actions: Vec<Action>) -> Result<(), WalError> {
        for a in actions {
            match a {
                Action::Persist(rec) => {
                    if let crate::core::PersistRecord::Checkpoint { snapshot, .. } = &rec {
                        self.shared.snapshot_bytes.store(snapshot.len() as u64, Ordering::Relaxed);
                    }
                    let precedes = wal::must_precede_sends(&rec);
                    let lsn = self.log.append(rec);
                    if precedes {
                        self.barrier = lsn;
                    }
                }
                a @ (Action::Send { .. } | Action::Broadcast { .. } | Action::Reply { .. }) => {
                    if self.held.is_empty() && self.barrier <= self.durable {
                        self.act(a);
                    } else {
                        self.held.push_back((self.barrier, a));
                    }
                }
                other => self.act(other),
            }
        }
        self.log.submit()?;
        self.maybe_publish();
        Ok(())
    }

    /// The log made records durable: release what waited for them, in order.
    fn on_progress(&mut self, p: Progress) -> Result<(), WalError> {
        if let Some(e) = p.failed {
            return Err(WalError::Stopped(e.to_string()));
        }
        self.durable = p.durable;
        self.wal_bytes = p.bytes;
        while self.held.front().is_some_and(|(lsn, _)| *lsn <= self.durable) {
            if let Some((_, a)) = self.held.pop_front() {
                self.act(a);
            }
        }
        self.maybe_publish();
        Ok(())
    }

    fn maybe_publish(&mut self) {
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.publish();
        } else {
            self.publish_pending = true;
        }
    }

    fn send_to(&self, to: u32, envelope: Bytes) {
        if self.fault_drop_outbound(to) {
            return;
        }
        if let Some(q) = self.shared.peers.lock().ok().and_then(|p| p.get(&to).cloned()) {
            q.push(envelope);
        }
    }

    fn broadcast(&self, envelope: Bytes) {
        let ids: Vec<u32> = self.shared.peers.lock().map(|p| p.keys().copied().collect()).unwrap_or_default();
        for id in ids {
            self.send_to(id, envelope.clone());
        }
    }

    fn act(&mut self, a: Action) {
        let m = &self.shared.metrics;
        match a {
            Action::Send { to, envelope } => self.send_to(to, envelope),
            Action::Broadcast { envelope } => {
                self.fault_extra(&envelope);
                self.broadcast(envelope)
            }
            Action::Reply { client, timestamp, reply } => {
                if let Some(ws) = self.waiters.remove(&(client, timestamp)) {
                    for w in ws {
                        m.commit_latency.observe(w.arrived.elapsed().as_secs_f64());
                        let _ = w.tx.send(Ok(reply.clone()));
                    }
                }
            }
            Action::Reject { client, timestamp, reason } => {
                let reason_label = match &reason {
                    Rejection::ResourceExhausted { .. } => "core_budget",
                    Rejection::TooLarge { .. } => "too_large",
                    Rejection::Malformed(_) => "malformed",
                    Rejection::BadSignature => "bad_signature",
                    Rejection::Retired => "retired",
                };
                self.shared.shed(reason_label);
                if let Some(ws) = self.waiters.remove(&(client, timestamp)) {
                    for w in ws {
                        let _ = w.tx.send(Err(rejection_status(reason.clone())));
                    }
                }
            }
            Action::Persist(_) => {} // handled in carry_out
            Action::SetTimer { kind, generation, after_ms } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    let _ = tx.send(Input::Timer { kind, generation }).await;
                });
            }
            Action::Executed { requests, .. } => m.batch_requests.observe(requests.len() as f64),
            Action::Evidence(e) => self.on_evidence(e),
            Action::StableCheckpoint { seq, .. } => tracing::debug!(seq, "stable checkpoint"),
            Action::NewView { view, primary } => tracing::info!(view, primary, "entered view"),
            Action::PrimarySuspected { view } => {
                m.suspicions.inc();
                tracing::info!(view, "suspecting the primary: asked the others for a new view");
            }
            Action::ViewChangeStarted { view } => {
                m.view_changes.inc();
                tracing::info!(view, "a quorum suspects the primary: view change started");
            }
            Action::MembershipChanged { epoch } => {
                tracing::info!(epoch, "membership epoch in force");
                let members = self.replica.membership().members().to_vec();
                let me = self.replica.id();
                start_peers(&self.shared, me, &members);
            }
            Action::StateTransferred { seq } => tracing::info!(seq, "state transferred"),
            Action::Retired => tracing::warn!("this replica left the membership and stopped"),
            Action::Warning(w) => tracing::warn!(warning = ?w, "core warning"),
        }
    }

    fn on_evidence(&mut self, e: Evidence) {
        let kind = EvidenceKind::try_from(e.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN");
        tracing::warn!(offender = e.offender, epoch = e.epoch, kind, "EVIDENCE of misbehaviour");
        self.shared.metrics.evidence.get_or_create(&KindLabel { kind: kind.to_lowercase() }).inc();
        let env_json = |env: &Option<Envelope>| {
            env.as_ref().map_or(
                serde_json::Value::Null,
                |x| serde_json::json!({"payload": hex::encode(&x.payload), "signature": hex::encode(&x.signature)}),
            )
        };
        let line = serde_json::json!({
            "time_unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            "reporter": self.replica.id(),
            "kind": kind,
            "offender": e.offender,
            "epoch": e.epoch,
            "first": env_json(&e.first),
            "second": env_json(&e.second),
        });
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.evidence_log)
            .and_then(|mut f| writeln!(f, "{line}").and_then(|_| f.sync_data()));
        if let Err(err) = written {
            tracing::error!(path = %self.evidence_log.display(), "cannot write the forensic evidence log: {err}");
        }
        if let Ok(mut v) = self.shared.evidence.lock() {
            if v.len() >= 1024 {
                v.remove(0);
            }
            v.push(e.encode_to_vec().into());
        }
    }

    /// Updates the status snapshot and gauges.
    fn publish(&mut self) {
        self.last_publish = Instant::now();
        self.publish_pending = false;
        let r = &self.replica;
        let m = &self.shared.metrics;
        m.view.set(r.view() as i64);
        m.primary.set(r.primary() as i64);
        m.epoch.set(r.membership().epoch() as i64);
        m.executed_seq.set(r.last_executed() as i64);
        m.stable_seq.set(r.stable_checkpoint() as i64);
        m.ledger_bytes.set(r.ledger().total() as i64);
        m.inbound_bytes.set(self.shared.inbound_bytes.load(Ordering::Relaxed) as i64);
        let v = r.verifications() + self.pre_verifier.verifications();
        m.signature_verifications.inc_by(v.saturating_sub(self.verifications));
        self.verifications = v;
        m.wal_bytes.set(self.wal_bytes as i64);
        let c = r.counters();
        for (reason, total) in [
            ("over_budget", c.dropped_over_budget),
            ("out_of_window", c.dropped_out_of_window),
            ("duplicate", c.dropped_duplicate),
            ("bad_signature", c.dropped_bad_signature),
            ("malformed", c.dropped_malformed),
            ("oversized", c.dropped_oversized),
        ] {
            let d = m.core_dropped.get_or_create(&ReasonLabel { reason: reason.into() });
            d.inc_by(total.saturating_sub(d.get()));
        }
        m.forwarded_requests.inc_by(c.forwarded_requests.saturating_sub(m.forwarded_requests.get()));
        let (connected, peer_count) = self
            .shared
            .peers
            .lock()
            .map(|p| {
                for q in p.values() {
                    let up = q.connected.load(Ordering::Relaxed);
                    m.peer_connected.get_or_create(&PeerLabel { peer: q.id.to_string() }).set(up as i64);
                    let d = m.peer_dropped_frames.get_or_create(&PeerLabel { peer: q.id.to_string() });
                    d.inc_by(q.dropped.load(Ordering::Relaxed).saturating_sub(d.get()));
                }
                (p.values().filter(|q| q.connected.load(Ordering::Relaxed)).count(), p.len())
            })
            .unwrap_or((0, 0));
        let _ = peer_count;
        let caught_up = r.is_caught_up();
        let ready = caught_up && r.is_active() && connected + 1 >= r.membership().quorum();
        self.shared.ready.store(ready, Ordering::Relaxed);
        m.ready.set(ready as i64);
        if let Ok(mut st) = self.shared.status.lock() {
            st.id = r.id();
            st.member = true;
            st.view = r.view();
            st.primary = r.primary();
            st.active = r.is_active();
            st.executed_seq = r.last_executed();
            st.stable_seq = r.stable_checkpoint();
            st.epoch = r.membership().epoch();
            st.membership = Some(r.membership().config().clone());
            st.evidence_count = r.counters().evidence;
            st.state_digest = Bytes::copy_from_slice(&r.stable_digest());
            st.retired = r.is_retired();
            st.caught_up = caught_up;
            st.watermark_window = r.config().watermark_window;
            st.checkpoint_interval = r.config().checkpoint_interval;
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn fault_drop_outbound(&self, _to: u32) -> bool {
        false
    }
    #[cfg(not(feature = "fault-injection"))]
    fn fault_drop_inbound(&self) -> bool {
        false
    }
    #[cfg(not(feature = "fault-injection"))]
    fn fault_extra(&self, _envelope: &Bytes) {}

    #[cfg(feature = "fault-injection")]
    fn fault_drop_outbound(&self, to: u32) -> bool {
        self.shared.faults.silent || self.shared.faults.drop_to.contains(&to)
    }
    #[cfg(feature = "fault-injection")]
    fn fault_drop_inbound(&self) -> bool {
        self.shared.faults.silent
    }
    #[cfg(feature = "fault-injection")]
    fn fault_extra(&self, envelope: &Bytes) {
        for extra in self.shared.faults.extra_for(&self.key, envelope) {
            let ids: Vec<u32> = self.shared.peers.lock().map(|p| p.keys().copied().collect()).unwrap_or_default();
            for id in ids {
                if let Some(q) = self.shared.peers.lock().ok().and_then(|p| p.get(&id).cloned()) {
                    q.push(extra.clone());
                }
            }
        }
    }
}

/// Bytes queued for one peer: its share of 10% of the memory limit, at most
/// `--peer-queue-bytes`, never less than one largest frame.
fn outbound_cap(shared: &Shared, n: usize) -> usize {
    let share = (shared.memory_limit.load(Ordering::Relaxed) / 100 * 10) as usize / n.max(2).saturating_sub(1);
    share.min(shared.settings.peer_queue_bytes as usize).max(shared.max_frame_bytes.load(Ordering::Relaxed) + 1024)
}

/// Creates (or re-addresses) the outbound queue and stream of every other member.
fn start_peers(shared: &Arc<Shared>, me: u32, members: &[crate::proto::Member]) {
    let Ok(mut peers) = shared.peers.lock() else { return };
    let max = shared.max_frame_bytes.load(Ordering::Relaxed);
    for m in members.iter().filter(|m| m.id != me) {
        match peers.get(&m.id) {
            Some(q) => {
                if let Ok(mut a) = q.address.lock() {
                    if *a != m.address {
                        *a = m.address.clone();
                    }
                }
            }
            None => {
                let q = PeerQueue::new(m.id, m.address.clone(), outbound_cap(shared, members.len()));
                peers.insert(m.id, q.clone());
                tokio::spawn(run_peer(me, q, max, shared.shutdown.clone()));
            }
        }
    }
}

// ---------------------------------------------------------------- startup

/// Memory limit (cgroup or default) and the sampler's source of usage.
fn memory_limit(settings: &Settings) -> (u64, Option<CgroupFiles>, bool) {
    let files = CgroupFiles::detect();
    match files.as_ref().and_then(|f| f.limit()) {
        Some(l) => (l, files, true),
        None => (settings.default_memory_limit, files, false),
    }
}

/// This replica's memory usage: the cgroup's (or else the process's) divided
/// among the replicas sharing the process.
fn usage(files: &Option<CgroupFiles>, from_cgroup: bool, sharers: u64) -> u64 {
    let whole = if from_cgroup { files.as_ref().and_then(|f| f.usage()) } else { None };
    whole.or_else(cgroup::process_rss).unwrap_or(0) / sharers.max(1)
}

/// The core's configuration from the settings and the memory budget.
pub fn core_config(settings: &Settings, id: u32, n: usize, budget: usize) -> Config {
    let mut cfg = Config::with_budget(id, n, budget);
    if let Some(k) = settings.checkpoint_interval {
        cfg.checkpoint_interval = k;
    }
    // Validated in `config` as a multiple of K of at least 2K.
    cfg.watermark_window = settings.watermark_window.unwrap_or(2 * cfg.checkpoint_interval);
    if let Some(t) = settings.view_change_timeout_ms {
        cfg.view_change_timeout_ms = t;
        cfg.max_view_change_timeout_ms = cfg.max_view_change_timeout_ms.max(t * 16);
    }
    if let Some(b) = settings.batch_size {
        cfg.max_batch_requests = b as usize;
    }
    // Two batches in flight: deeper pipelines made batches smaller (more
    // signatures and messages per request) without more throughput on the
    // benchmark machine (pbft-bench cluster, 16-256 clients).
    cfg.max_inflight_batches = settings.max_inflight_batches.unwrap_or(DEFAULT_INFLIGHT_BATCHES);
    cfg.derive_limits(n, budget);
    cfg
}

fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// File in the data dir naming (hex) the public key whose replica writes the WAL there.
pub const WAL_OWNER_FILE: &str = "wal.owner";

/// Refuses a data dir whose write-ahead log another key wrote: its records
/// (signed votes, view) belong to that identity, and a new key starts fresh.
fn check_wal_owner(path: &std::path::Path, key_hex: &str) -> Result<(), ServerError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().eq_ignore_ascii_case(key_hex) => Ok(()),
        Ok(text) => Err(ServerError::WalOwner {
            path: path.into(),
            owner: text.trim().chars().take(64).collect(),
            key: key_hex.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServerError::Io { path: path.into(), source }),
    }
}

/// Builds the replica from the write-ahead log (or fresh) and starts the driver.
async fn start_replica(shared: Arc<Shared>, key: Keypair, file: MembershipFile) -> Result<(), ServerError> {
    let s = &shared.settings;
    let path = &s.membership_file;
    let id = file.id_of(&key.public_bytes()).ok_or(ServerError::NotMember)?;
    if let Some(want) = s.id {
        if want != id {
            return Err(ServerError::IdMismatch { configured: want, file: id });
        }
    }
    let wal_dir = s.data_dir.join("wal");
    let genesis_path = s.data_dir.join("genesis.json");
    let t0 = Instant::now();
    let owner_path = s.data_dir.join(WAL_OWNER_FILE);
    let key_hex = hex::encode(key.public_bytes());
    check_wal_owner(&owner_path, &key_hex)?;
    let opened = Wal::open(&wal_dir)?;
    if !owner_path.exists() {
        write_atomically(&owner_path, format!("{key_hex}\n").as_bytes())
            .map_err(|source| ServerError::Io { path: owner_path.clone(), source })?;
    }
    let (limit, _, _) = memory_limit(s);
    let budget = (limit / 100 * s.budget_percent) as usize;
    let current = file.to_membership(path)?;
    let (genesis, fresh): (Membership, bool) = if opened.records.is_empty() || !genesis_path.exists() {
        let json = serde_json::to_vec_pretty(&file).map_err(|e| ServerError::Genesis(e.to_string()))?;
        write_atomically(&genesis_path, &json)
            .map_err(|source| ServerError::Io { path: genesis_path.clone(), source })?;
        (current, true)
    } else {
        let g = MembershipFile::read(&genesis_path)?;
        (g.to_membership(&genesis_path)?, false)
    };
    let cfg = core_config(s, id, genesis.n(), budget);
    cfg.validate(&genesis).map_err(|e| ServerError::Core(e.to_string()))?;
    // The core accepts a NEW-VIEW of up to q+1 messages and a state response up to
    // max_snapshot_bytes: frames that large must pass the transport, or a view
    // with many prepared batches can never be installed by the backups.
    let q = genesis.quorum();
    let max_frame = (cfg.max_message_bytes * (q + 1)).max(cfg.max_snapshot_bytes.min(shared.inbound_cap));
    shared.max_frame_bytes.store(max_frame, Ordering::Relaxed);
    let max_request = cfg.max_request_bytes + 1024;
    shared.max_request_bytes.store(max_request, Ordering::Relaxed);
    let calls = admission::calls_for(shared.client_bytes_cap, max_request, s.max_client_calls as usize);
    let _ = shared.client_calls.set(Arc::new(Semaphore::new(calls)));
    tracing::info!(client_calls = calls, max_request_bytes = cfg.max_request_bytes, "client admission");
    shared.metrics.memory_budget.set(budget as i64);
    // Each peer's share of the inbound bytes, never below one largest message.
    let per_peer = (shared.inbound_cap / (genesis.n().max(2) - 1)).min(s.peer_queue_bytes as usize);
    shared.peer_inbound_cap.store(per_peer.max(max_frame + 1024), Ordering::Relaxed);
    let core_verifier = Ed25519Verifier::default();
    let pre_verifier = core_verifier.sharing_cache();
    let verifier = Box::new(core_verifier);
    let members = genesis.members().to_vec();
    let n_records = opened.records.len();
    let (replica, initial) = if fresh && n_records == 0 {
        if genesis.epoch() > 0 {
            tracing::info!(id, epoch = genesis.epoch(), "joining a running cluster (state transfer)");
            Replica::join(cfg, key.clone(), genesis, verifier).map_err(|e| ServerError::Core(e.to_string()))?
        } else {
            Replica::new(cfg, key.clone(), genesis, verifier).map_err(|e| ServerError::Core(e.to_string()))?
        }
    } else {
        Replica::recover(cfg, key.clone(), genesis, verifier, &opened.records)
            .map_err(|e| ServerError::Core(e.to_string()))?
    };
    tracing::info!(
        id,
        records = n_records,
        truncated_bytes = opened.truncated_bytes,
        executed = replica.last_executed(),
        view = replica.view(),
        recovery_ms = t0.elapsed().as_millis() as u64,
        budget_bytes = budget,
        "replica started"
    );
    let _ = shared.id.set(id);
    let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
    let members_now = replica.membership().members().to_vec();
    let m = &shared.metrics;
    let observer = WalMetrics {
        fsyncs: m.wal_fsyncs.clone(),
        seconds: m.wal_sync_seconds.clone(),
        records: m.wal_group_records.clone(),
    };
    let wal_bytes = opened.wal.bytes();
    let log = wal::spawn(opened.wal, observer)?;
    let received = MESSAGE_TYPES
        .iter()
        .map(|t| m.messages_received.get_or_create(&TypeLabel { r#type: (*t).into() }).clone())
        .collect();
    let driver = Driver {
        shared: shared.clone(),
        replica,
        log,
        held: VecDeque::new(),
        barrier: 0,
        durable: 0,
        tx: tx.clone(),
        pre_verifier,
        waiters: HashMap::new(),
        evidence_log: s.data_dir.join("evidence.jsonl"),
        verifications: 0,
        received,
        last_publish: Instant::now(),
        publish_pending: true,
        wal_bytes,
        #[cfg(feature = "fault-injection")]
        key: key.clone(),
    };
    let _ = shared.input.set(tx);
    start_peers(&shared, id, if members_now.is_empty() { &members } else { &members_now });
    let sh = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = driver.run(rx, initial).await {
            tracing::error!("write-ahead log failed, stopping: {e}");
            eprintln!("pbft-replica: write-ahead log failed: {e}");
            std::process::exit(3);
        }
        let _ = sh.driver_done.send(true);
    });
    Ok(())
}

/// Re-reads the membership file every second; starts the replica once it names this key,
/// and keeps peer addresses current.
async fn watch_membership(shared: Arc<Shared>, key: Keypair) {
    let mut last_err = String::new();
    let mut started = false;
    let mut shutdown = shared.shutdown.clone();
    loop {
        let path = shared.settings.membership_file.clone();
        let read: Result<MembershipFile, MembershipFileError> = MembershipFile::read(&path);
        match read {
            Ok(file) => {
                if !started && file.id_of(&key.public_bytes()).is_some() {
                    match start_replica(shared.clone(), key.clone(), file.clone()).await {
                        Ok(()) => started = true,
                        Err(e) => {
                            let msg = e.to_string();
                            if msg != last_err {
                                tracing::error!("cannot start consensus yet: {msg}");
                                last_err = msg;
                            }
                        }
                    }
                } else if !started {
                    let msg = format!("membership file {} does not name this replica's key yet", path.display());
                    if msg != last_err {
                        tracing::info!("{msg}; waiting");
                        last_err = msg;
                    }
                } else if let Some(id) = shared.id.get() {
                    // Addresses may move (new pod IPs); keys and epochs change only through consensus.
                    let members: Vec<crate::proto::Member> = file
                        .members
                        .iter()
                        .map(|m| crate::proto::Member {
                            id: m.id,
                            public_key: Bytes::new(),
                            address: m.address.clone(),
                        })
                        .collect();
                    let known: Vec<u32> = shared.peers.lock().map(|p| p.keys().copied().collect()).unwrap_or_default();
                    let moved: Vec<_> = members.into_iter().filter(|m| known.contains(&m.id)).collect();
                    start_peers(&shared, *id, &moved);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_err {
                    tracing::info!("waiting for the membership: {msg}");
                    last_err = msg;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn http(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    use axum::{extract::State, http::StatusCode, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<Shared>>| async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    s.metrics.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<Shared>>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(shared.clone());
    let mut shutdown = shared.shutdown.clone();
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}

/// Bound listeners' actual addresses (port 0 resolved).
#[derive(Clone, Debug)]
pub struct Bound {
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub public_key: [u8; 32],
}

/// Runs one replica until `shutdown` turns true; returns once flushed.
pub async fn run(
    settings: Settings,
    shutdown: watch::Receiver<bool>,
    on_bound: Option<oneshot::Sender<Bound>>,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|source| ServerError::Io { path: settings.data_dir.clone(), source })?;
    let key_path = settings.key_file.clone().unwrap_or_else(|| settings.data_dir.join("replica.key"));
    let (key, generated) =
        if settings.key_file.is_some() { (keys::load(&key_path)?, false) } else { keys::load_or_generate(&key_path)? };
    let public_hex = hex::encode(key.public_bytes());
    check_wal_owner(&settings.data_dir.join(WAL_OWNER_FILE), &public_hex)?;
    let pub_path = settings.data_dir.join("replica.pub");
    write_atomically(&pub_path, format!("{public_hex}\n").as_bytes())
        .map_err(|source| ServerError::Io { path: pub_path, source })?;
    tracing::info!(public_key = %public_hex, generated, key_file = %key_path.display(), "replica identity");

    let (limit, files, from_cgroup) = memory_limit(&settings);
    let listeners = (
        bind(settings.peer_listen).await?,
        bind(settings.client_listen).await?,
        bind(settings.admin_listen).await?,
        bind(settings.metrics_listen).await?,
    );
    let local = |l: &tokio::net::TcpListener, a: SocketAddr| l.local_addr().unwrap_or(a);
    let bound = Bound {
        peer: local(&listeners.0, settings.peer_listen),
        client: local(&listeners.1, settings.client_listen),
        admin: local(&listeners.2, settings.admin_listen),
        metrics: local(&listeners.3, settings.metrics_listen),
        public_key: key.public_bytes(),
    };
    let (driver_done, mut driver_done_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        public_key: key.public_bytes(),
        id: OnceLock::new(),
        input: OnceLock::new(),
        inbound_bytes: AtomicUsize::new(0),
        inbound_cap: (limit / 100 * 10) as usize,
        inbound_by_peer: Mutex::new(HashMap::new()),
        peer_inbound_cap: AtomicUsize::new(((limit / 100 * 10) as usize / 3).min(settings.peer_queue_bytes as usize)),
        max_frame_bytes: AtomicUsize::new(4 << 20),
        client_bytes: Arc::new(AtomicUsize::new(0)),
        client_bytes_cap: (limit / 100 * 5) as usize,
        max_request_bytes: AtomicUsize::new(128 << 10),
        status: Mutex::new(StatusReply::default()),
        evidence: Mutex::new(vec![]),
        peers: Mutex::new(HashMap::new()),
        metrics: Metrics::new(),
        memory_used: AtomicU64::new(0),
        snapshot_bytes: AtomicU64::new(0),
        memory_limit: AtomicU64::new(limit),
        shutting_down: AtomicBool::new(false),
        client_calls: OnceLock::new(),
        ready: AtomicBool::new(false),
        shutdown: shutdown.clone(),
        driver_done,
        #[cfg(feature = "fault-injection")]
        faults: crate::server::faults::Faults::from_env().signing_with(&key),
        settings,
    });
    shared.metrics.memory_limit.set(limit as i64);
    tracing::info!(limit_bytes = limit, from_cgroup, shed_percent = shared.settings.shed_percent, "memory limit");

    // Memory sampler.
    {
        let s = shared.clone();
        let mut sd = shutdown.clone();
        tokio::spawn(async move {
            let mut last_trim = Instant::now();
            loop {
                let mut u = usage(&files, from_cgroup, s.settings.memory_sharers);
                if u > s.shed_threshold() && last_trim.elapsed() >= Duration::from_millis(500) {
                    cgroup::release_free_heap();
                    last_trim = Instant::now();
                    u = usage(&files, from_cgroup, s.settings.memory_sharers);
                }
                s.memory_used.store(u, Ordering::Relaxed);
                s.metrics.memory_used.set(u as i64);
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = sd.changed() => return,
                }
            }
        });
    }

    // gRPC: peers port serves all services; client port client+admin; admin port admin.
    // Decoding limit of peer frames: the inbound byte cap (the driver's frame limit is at most that).
    let max_in = (shared.inbound_cap).max(8 << 20);
    let peer_svc = || PeerServer::new(PeerSvc(shared.clone())).max_decoding_message_size(max_in);
    let client_svc = || {
        let svc = ClientServer::new(ClientSvc(shared.clone()))
            .max_decoding_message_size(1 << 20)
            .max_encoding_message_size(1 << 20);
        Admitted::new(svc, shared.clone() as Arc<dyn Gate>)
    };
    let admin_svc = || AdminServer::new(AdminSvc(shared.clone())).max_encoding_message_size(64 << 20);
    let serve = |router: tonic::transport::server::Router, l: tokio::net::TcpListener| {
        let mut sd = shutdown.clone();
        tokio::spawn(async move {
            use tokio_stream::StreamExt as _;
            // Server::tcp_nodelay applies only to listeners tonic binds itself.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l).map(|s| {
                if let Ok(s) = &s {
                    let _ = s.set_nodelay(true);
                }
                s
            });
            let r = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = sd.changed().await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!("gRPC server stopped: {e}");
            }
        })
    };
    let builder = || {
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(1024)
            .max_concurrent_streams(Some(1024))
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(3600))
    };
    let (lp, lc, la, lm) = listeners;
    let servers = [
        serve(builder().add_service(peer_svc()).add_service(client_svc()).add_service(admin_svc()), lp),
        serve(builder().add_service(client_svc()).add_service(admin_svc()), lc),
        serve(builder().add_service(admin_svc()), la),
        tokio::spawn(http(shared.clone(), lm)),
    ];
    tracing::info!(peer = %bound.peer, client = %bound.client, admin = %bound.admin, metrics = %bound.metrics, "listening");
    if let Some(tx) = on_bound {
        let _ = tx.send(bound);
    }
    tokio::spawn(watch_membership(shared.clone(), key));

    let mut sd = shutdown.clone();
    let _ = sd.wait_for(|v| *v).await;
    let t0 = Instant::now();
    shared.shutting_down.store(true, Ordering::Relaxed);
    if shared.input.get().is_some() {
        let _ = tokio::time::timeout(Duration::from_secs(2), driver_done_rx.wait_for(|v| *v)).await;
    }
    // Servers get a short grace period; open peer streams end on the shutdown signal.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        for s in servers {
            let _ = s.await;
        }
    })
    .await;
    tracing::info!(shutdown_ms = t0.elapsed().as_secs_f64() * 1000.0, "stopped: log flushed, streams closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::proto::{message::Body, Checkpoint, Commit, Message, Suspect};

    #[test]
    fn message_type_is_read_from_the_wire() {
        let k = Keypair::from_secret([5; 32]);
        let seal = |body| Bytes::from(k.seal(&Message { epoch: 3, sender: 2, body: Some(body) }).encode_to_vec());
        let commit = seal(Body::Commit(Commit { view: 1, seq: 9, digest: Bytes::from_static(&[1; 32]) }));
        assert_eq!(MESSAGE_TYPES[message_type(&commit)], "commit");
        let ckpt = seal(Body::Checkpoint(Checkpoint { seq: 64, state_digest: Bytes::from_static(&[2; 32]) }));
        assert_eq!(MESSAGE_TYPES[message_type(&ckpt)], "checkpoint");
        let suspect = seal(Body::Suspect(Suspect { view: 4 }));
        assert_eq!(MESSAGE_TYPES[message_type(&suspect)], "suspect");
        // Cut inside the payload, or not a frame at all (a cut signature still names the type).
        for bad in [&b""[..], &b"\xff\xff\xff"[..], &commit[..20], &[0x0a, 0x05, 0x10][..]] {
            assert_eq!(MESSAGE_TYPES[message_type(bad)], "malformed", "{bad:?}");
        }
    }
}
