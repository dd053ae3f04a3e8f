//! The PBFT replica as a deterministic state machine (Castro & Liskov).
//!
//! [`Replica::step`] takes one [`Event`] and returns the [`Action`]s to carry
//! out, in order. There is no I/O, clock or randomness inside: the server
//! and the simulator drive the same code.
//!
//! Contract for drivers: execute actions in the order given. A
//! [`Action::Persist`] must be durable before any later action of the same
//! step is carried out (the replica never sends what it has not logged, so a
//! restart can never make it sign a conflicting message). Drivers may group
//! all persists of one step into one fsync (group commit).
//!
//! Where each protocol step lives:
//! - client requests, batching, pre-prepare: [`Replica::on_client_request`], `propose`;
//! - prepare / commit / execution: `on_pre_prepare`, `on_prepare`, `on_commit`, `try_execute`;
//! - checkpoints and garbage collection: `make_checkpoint`, `on_checkpoint`, `make_stable`;
//! - view change: `start_view_change`, `on_view_change`, `on_new_view`, [`view_change::plan_new_view`];
//! - state transfer and retransmission: `on_state_request`, `on_state_response`, `on_retransmit_timer`;
//! - membership epochs: `execute_request` (admin change), `switch_epoch`;
//! - evidence: `store_vote`, [`evidence::verify_evidence`];
//! - memory: [`ledger::Ledger`].

pub mod client;
pub mod evidence;
pub mod ledger;
pub mod view_change;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use prost::Message as _;

use crate::crypto::{
    parse_public_key, sha256, Digest, Keypair, SignatureCheck, SignatureVerifier, MESSAGE_DOMAIN, REQUEST_DOMAIN,
};
use crate::membership::{Membership, ReplicaId};
use crate::proto::{
    message::Body, operation::Kind as OpKind, Batch, Checkpoint, Commit, Envelope, Evidence, MembershipConfig, Message,
    NewView, OpResult, PrePrepare, Prepare, PreparedCertificate, Reply, RequestBody, SignedRequest, StateRequest,
    StateResponse, ViewChange,
};
use crate::state::{rejected, snapshot_digest, ClientRecord, ReplicatedState};
use evidence::{make_evidence, vote_of, VoteSlot};
use ledger::{Caps, Category, Charge, Ledger};
use view_change::{batch_digest, plan_new_view, NewViewPlan, PreparedInfo, ViewChangeInfo};

/// Protocol parameters and limits of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id.
    pub id: ReplicaId,
    /// K: a checkpoint every K sequence numbers.
    pub checkpoint_interval: u64,
    /// L: sequence numbers accepted above the last stable checkpoint (a multiple of K).
    pub watermark_window: u64,
    /// Most requests in one batch.
    pub max_batch_requests: usize,
    /// Most bytes of requests in one batch.
    pub max_batch_bytes: usize,
    /// Most batches the primary keeps ordered but not yet executed (pipelining depth).
    pub max_inflight_batches: u64,
    /// Base view-change timeout; doubles per failed view, decays on progress.
    pub view_change_timeout_ms: u64,
    /// Ceiling of the adaptive view-change timeout.
    pub max_view_change_timeout_ms: u64,
    /// Period of the retransmission / status timer.
    pub retransmit_interval_ms: u64,
    /// How many past views of its own view-change messages a replica remembers
    /// (to resend them unchanged after a restart). Received view changes are
    /// bounded differently: only the highest one per sender is kept.
    pub view_window: u64,
    /// Largest protocol message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest client request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest state-transfer message accepted, in bytes.
    pub max_snapshot_bytes: usize,
    /// Requests one client may have waiting at once.
    pub max_pending_per_client: usize,
    /// Byte caps of the buffers; their sum is the buffer budget.
    pub caps: Caps,
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("checkpointInterval must be at least 1")]
    CheckpointInterval,
    #[error("watermarkWindow ({window}) must be a positive multiple of checkpointInterval ({interval})")]
    Window { window: u64, interval: u64 },
    #[error("batch limits must be positive and maxBatchBytes ({batch}) must be at least maxRequestBytes ({request}), itself at least 256; raise the memory budget")]
    Batch { batch: usize, request: usize },
    #[error("the log budget per peer ({per_peer} bytes) cannot hold a checkpoint interval plus the pipeline of full batches ({batch} bytes each); raise the memory budget or lower maxBatchBytes")]
    LogBudget { per_peer: usize, batch: usize },
    #[error("the view-change budget ({cap} bytes) cannot hold one view change per replica plus a new view, of up to {msg} bytes each")]
    ViewChangeBudget { cap: usize, msg: usize },
    #[error("timeouts must be positive and maxViewChangeTimeout >= viewChangeTimeout")]
    Timeouts,
    #[error("replica {0} is not in the membership")]
    NotMember(ReplicaId),
}

impl Config {
    /// A configuration with default protocol parameters whose caps and
    /// message limits are derived from one buffer budget in bytes, for `n`
    /// replicas.
    pub fn with_budget(id: ReplicaId, n: usize, budget: usize) -> Config {
        let mut c = Config {
            id,
            checkpoint_interval: 64,
            watermark_window: 128,
            max_batch_requests: 512,
            max_batch_bytes: 0,
            max_inflight_batches: 8,
            view_change_timeout_ms: 1_000,
            max_view_change_timeout_ms: 30_000,
            retransmit_interval_ms: 500,
            view_window: 16,
            max_message_bytes: 0,
            max_request_bytes: 0,
            max_snapshot_bytes: 256 * 1024 * 1024,
            max_pending_per_client: 8,
            caps: Caps::split(budget),
        };
        c.derive_limits(n, budget);
        c
    }

    /// Re-derives caps and message limits from a budget for the current
    /// watermark window (call after changing the protocol parameters).
    ///
    /// The derivation keeps the protocol live within the budget: a view
    /// change carries at most one primary's window of batches (its log share)
    /// plus prepare signatures and must fit in one message; the view-change
    /// buffer holds one such message per replica plus a NEW-VIEW that embeds
    /// a quorum of them.
    pub fn derive_limits(&mut self, n: usize, budget: usize) {
        let n = n.max(4);
        let f = (n - 1) / 3;
        let q = (n + f + 2) / 2;
        let view_change = budget / 100 * 40;
        let pending = budget / 100 * 12;
        let checkpoint = budget / 100 * 3;
        let evidence = budget / 100 * 2;
        let max_message_bytes = view_change / (n + q + 1);
        // Prepares of a full window of certificates, plus checkpoint proof and framing.
        let signatures = self.watermark_window as usize * (q * 128 + 64) + q * 160 + 1024;
        // What is left for log and certificates: n log shares plus two shares of certificates.
        let rest = budget - view_change - pending - checkpoint - evidence;
        let per_peer_log = max_message_bytes.saturating_sub(signatures).min(rest / (n + 2)).max(1);
        let certificates = rest - per_peer_log * n;
        self.max_message_bytes = max_message_bytes;
        // The primary must be able to hold a full checkpoint interval of
        // batches (plus its pipeline) before a checkpoint frees its share.
        let slots = (self.checkpoint_interval + self.max_inflight_batches) as usize;
        self.max_batch_bytes = (per_peer_log / slots).min(1024 * 1024);
        self.max_request_bytes = (self.max_batch_bytes / 2).min(128 * 1024);
        self.caps = Caps { log: per_peer_log * n, certificates, pending, view_change, checkpoint, evidence };
    }

    /// Checks that the parameters are coherent for `membership`.
    pub fn validate(&self, membership: &Membership) -> Result<(), ConfigError> {
        if self.checkpoint_interval == 0 {
            return Err(ConfigError::CheckpointInterval);
        }
        if self.watermark_window == 0 || self.watermark_window % self.checkpoint_interval != 0 {
            return Err(ConfigError::Window { window: self.watermark_window, interval: self.checkpoint_interval });
        }
        if self.max_batch_requests == 0 || self.max_batch_bytes < self.max_request_bytes || self.max_request_bytes < 256
        {
            return Err(ConfigError::Batch { batch: self.max_batch_bytes, request: self.max_request_bytes });
        }
        let per_peer = self.caps.log / membership.n();
        let slots = (self.checkpoint_interval + self.max_inflight_batches) as usize;
        if per_peer < self.max_batch_bytes * slots {
            return Err(ConfigError::LogBudget { per_peer, batch: self.max_batch_bytes });
        }
        if self.caps.view_change < self.max_message_bytes * (membership.n() + membership.quorum() + 1) {
            return Err(ConfigError::ViewChangeBudget { cap: self.caps.view_change, msg: self.max_message_bytes });
        }
        if self.view_change_timeout_ms == 0
            || self.retransmit_interval_ms == 0
            || self.max_view_change_timeout_ms < self.view_change_timeout_ms
        {
            return Err(ConfigError::Timeouts);
        }
        if !membership.contains(self.id) {
            return Err(ConfigError::NotMember(self.id));
        }
        Ok(())
    }
}

/// View changes and new views more than this many views ahead are dropped
/// unread. Honest replicas advance at most one view per timeout (or jump to a
/// view another replica already asked for), so they never drift this far
/// apart (2^20 views at one per 500 ms is six days); a Byzantine replica
/// cannot push views toward the end of the number range.
pub const MAX_VIEW_AHEAD: u64 = 1 << 20;

/// Timers the core asks the driver for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Suspects the primary when a request waits too long, or a view change stalls.
    ViewChange,
    /// Periodic retransmission and status.
    Retransmit,
}

/// An input to the state machine.
#[derive(Clone, Debug)]
pub enum Event {
    /// One encoded [`Envelope`] from the network.
    Peer(Bytes),
    /// Several envelopes; their signatures are verified as one batch.
    Peers(Vec<Bytes>),
    /// One encoded [`SignedRequest`] from a client.
    Client(Bytes),
    /// A timer set earlier fired.
    Timer { kind: TimerKind, generation: u64 },
}

/// Why a client request was refused before ordering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Buffers are full: retry later (maps to RESOURCE_EXHAUSTED).
    ResourceExhausted { retry_after_ms: u64 },
    /// The request is larger than the limit.
    TooLarge { bytes: usize, limit: usize },
    /// The request does not decode or is incomplete.
    Malformed(String),
    /// The client signature does not verify.
    BadSignature,
    /// This replica left the membership.
    Retired,
}

/// What the driver must make durable.
#[derive(Clone, Debug, PartialEq)]
pub enum PersistRecord {
    /// An envelope this replica signed (before it is sent).
    Signed(Envelope),
    /// A prepared certificate (before the commit vote is sent), so that a
    /// restarted replica still carries it into view changes: a request that
    /// committed can then never be replaced by another in a later view.
    Prepared { view: u64, seq: u64, pre_prepare: Envelope, requests: Vec<Bytes>, prepares: Vec<Envelope> },
    /// A committed batch (before it is executed).
    Committed { seq: u64, view: u64, batch: Batch },
    /// A stable checkpoint: the state snapshot and its proof. Records before
    /// it may be discarded.
    Checkpoint { seq: u64, snapshot: Bytes, proof: Vec<Envelope> },
}

/// One executed client request.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutedRequest {
    pub client: Bytes,
    pub timestamp: u64,
    pub operation: Option<crate::proto::Operation>,
    pub result: OpResult,
}

/// Something that deserves a log line but is not evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// A quorum certified a checkpoint digest different from ours.
    StateDiverged { seq: u64 },
    /// A state transfer response did not verify.
    BadStateTransfer(String),
    /// The core refused to sign something conflicting with what it signed before a restart.
    RefusedToResign { seq: u64 },
    /// A view change (ours or a peer's) did not validate.
    InvalidViewChange { from: ReplicaId, why: String },
}

/// An output of the state machine.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send an encoded envelope to one replica.
    Send { to: ReplicaId, envelope: Bytes },
    /// Send an encoded envelope to every other member.
    Broadcast { envelope: Bytes },
    /// Deliver a signed reply (an encoded envelope carrying a [`Reply`]) to a client.
    Reply { client: Bytes, timestamp: u64, envelope: Bytes },
    /// Tell a client its request was refused.
    Reject { client: Bytes, timestamp: u64, reason: Rejection },
    /// Make a record durable before carrying out later actions.
    Persist(PersistRecord),
    /// (Re)arm a timer; a fire with an older generation is ignored.
    SetTimer { kind: TimerKind, generation: u64, after_ms: u64 },
    /// A batch was executed at `seq` (for observers, metrics and checkers).
    Executed { seq: u64, view: u64, digest: Digest, requests: Vec<ExecutedRequest> },
    /// A replica was caught signing two conflicting messages.
    Evidence(Evidence),
    /// A checkpoint became stable; the log below it was discarded.
    StableCheckpoint { seq: u64, digest: Digest },
    /// The replica entered a new view.
    NewView { view: u64, primary: ReplicaId },
    /// The replica suspects the primary and asks for view `view`.
    ViewChangeStarted { view: u64 },
    /// A new membership epoch is in force.
    MembershipChanged { epoch: u64 },
    /// The state was replaced by a verified snapshot.
    StateTransferred { seq: u64 },
    /// This replica is not in the membership any more and stopped.
    Retired,
    /// Worth a log line.
    Warning(Warning),
}

/// Counters for metrics.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub messages_in: u64,
    pub dropped_malformed: u64,
    pub dropped_oversized: u64,
    pub dropped_out_of_window: u64,
    pub dropped_duplicate: u64,
    pub dropped_bad_signature: u64,
    pub dropped_over_budget: u64,
    pub requests_rejected: u64,
    pub view_changes: u64,
    pub state_transfers: u64,
    pub evidence: u64,
}

/// Why recovery from the persisted records failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("stable checkpoint at seq {seq} does not decode: {source}")]
    Snapshot { seq: u64, source: crate::state::StateError },
    #[error("committed batch at seq {found} follows seq {expected_after}: the log has a gap")]
    Gap { expected_after: u64, found: u64 },
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
}

#[derive(Clone, Debug)]
struct Stored {
    env: Envelope,
    digest: Vec<u8>,
    charge: Option<Charge>,
}

#[derive(Clone, Debug)]
struct SlotPrePrepare {
    env: Envelope,
    digest: Digest,
    requests: Vec<Bytes>,
    charge: Option<Charge>,
}

#[derive(Debug, Default)]
struct Slot {
    pre_prepare: Option<SlotPrePrepare>,
    prepares: BTreeMap<ReplicaId, Stored>,
    commits: BTreeMap<ReplicaId, Stored>,
    sent_prepare: bool,
    sent_commit: bool,
    prepared: bool,
    committed: bool,
}

#[derive(Clone, Debug)]
struct Certificate {
    view: u64,
    /// Requests, kept apart because a pre-prepare from NEW-VIEW has no batch.
    requests: Vec<Bytes>,
    pre_prepare: Envelope,
    prepares: Vec<Envelope>,
    charge: Charge,
}

#[derive(Clone, Debug)]
struct PendingRequest {
    bytes: Bytes,
    client: Bytes,
    timestamp: u64,
    charge: Charge,
}

#[derive(Clone, Debug)]
struct StoredViewChange {
    view: u64,
    env: Envelope,
    info: ViewChangeInfo,
    charge: Charge,
}

#[derive(Clone, Debug)]
struct OwnCheckpoint {
    digest: Digest,
    snapshot: Bytes,
}

#[derive(Clone, Debug)]
struct StableCheckpoint {
    seq: u64,
    /// The epoch whose members signed `proof`.
    epoch: u64,
    digest: Digest,
    snapshot: Bytes,
    proof: Vec<Envelope>,
}

/// What a replica keeps from the epoch it left, to bring laggards across.
#[derive(Clone, Debug)]
struct Transition {
    membership: Membership,
    checkpoint: StableCheckpoint,
    /// This replica's own old-epoch checkpoint vote at the boundary, re-sent while laggards may exist.
    own_vote: Option<Envelope>,
    ticks_left: u32,
}

/// What the view-change timer is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    Request(Digest),
    Seq(u64),
    /// A membership boundary checkpoint that must become stable.
    Stable(u64),
}

/// A decoded, pre-filtered message waiting for its signature check.
struct Candidate {
    env: Envelope,
    msg: Message,
    key: VerifyingKey,
}

/// Keys of votes that already produced evidence (one per slot and sender).
type EvidenceKey = (VoteSlot, ReplicaId);

/// A PBFT replica.
pub struct Replica {
    cfg: Config,
    key: Keypair,
    verifier: Box<dyn SignatureVerifier>,
    membership: Membership,
    state: ReplicatedState,
    view: u64,
    active: bool,
    retired: bool,
    /// A new member without state: it neither proposes nor votes until a
    /// state transfer brings it the current checkpoint.
    catching_up: bool,
    last_state_request: Option<(u64, u64, Envelope)>,
    // ----- log
    stable: StableCheckpoint,
    slots: BTreeMap<u64, Slot>,
    certificates: BTreeMap<u64, Certificate>,
    next_seq: u64,
    membership_boundary: Option<u64>,
    // ----- checkpoints
    own_checkpoints: BTreeMap<u64, OwnCheckpoint>,
    checkpoint_votes: BTreeMap<u64, BTreeMap<ReplicaId, Stored>>,
    checkpoint_claims: BTreeMap<ReplicaId, u64>,
    transition: Option<Transition>,
    // ----- view change
    view_changes: BTreeMap<ReplicaId, StoredViewChange>,
    new_view: Option<(u64, Envelope, Charge)>,
    failed_views: u32,
    vc_timer_generation: u64,
    vc_timer_armed: bool,
    /// What the view-change timer waits for: the oldest pending request (so a
    /// primary that censors one request is caught even while others run), or
    /// else the lowest accepted but unexecuted sequence number.
    vc_watch: Option<Watch>,
    /// Retransmission ticks without progress (retransmission backs off).
    idle_ticks: u32,
    /// Votes for a view we have not entered yet (unverified, byte-accounted to
    /// their sender), replayed when the NEW-VIEW arrives.
    future_votes: Vec<(u64, Digest, Bytes, Charge)>,
    /// Requests inside pre-prepares of the window: digest -> sequence number.
    in_flight: HashMap<Digest, u64>,
    retransmit_generation: u64,
    // ----- clients
    pending: BTreeMap<Digest, PendingRequest>,
    pending_order: VecDeque<Digest>,
    /// Per client: timestamp -> request digest of what it has waiting.
    pending_by_client: HashMap<Bytes, BTreeMap<u64, Digest>>,
    // ----- evidence and self-protection
    evidence_seen: BTreeSet<EvidenceKey>,
    evidence: VecDeque<(Evidence, Charge)>,
    signed: BTreeMap<(u64, VoteSlot), Envelope>,
    // ----- progress tracking
    executed_at_last_tick: u64,
    answered_status: BTreeSet<ReplicaId>,
    ledger: Ledger,
    counters: Counters,
    out: Vec<Action>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.cfg.id)
            .field("epoch", &self.membership.epoch())
            .field("view", &self.view)
            .field("active", &self.active)
            .field("executed", &self.state.seq)
            .field("stable", &self.stable.seq)
            .finish()
    }
}

fn digest_of(b: &[u8]) -> Option<Digest> {
    b.try_into().ok()
}

fn encode_env(env: &Envelope) -> Bytes {
    env.encode_to_vec().into()
}

fn env_size(env: &Envelope) -> usize {
    env.payload.len() + env.signature.len()
}

impl Replica {
    /// A fresh replica at sequence number 0.
    pub fn new(
        cfg: Config,
        key: Keypair,
        membership: Membership,
        verifier: Box<dyn SignatureVerifier>,
    ) -> Result<(Self, Vec<Action>), ConfigError> {
        cfg.validate(&membership)?;
        let state = ReplicatedState::new(membership.clone());
        let (snapshot, digest) = state.encoded_snapshot();
        let ledger = Ledger::new(cfg.caps.clone(), membership.n());
        let mut r = Replica {
            key,
            verifier,
            state,
            view: 0,
            active: true,
            retired: false,
            catching_up: false,
            last_state_request: None,
            stable: StableCheckpoint { seq: 0, epoch: membership.epoch(), digest, snapshot, proof: vec![] },
            slots: BTreeMap::new(),
            certificates: BTreeMap::new(),
            next_seq: 1,
            membership_boundary: None,
            own_checkpoints: BTreeMap::new(),
            checkpoint_votes: BTreeMap::new(),
            checkpoint_claims: BTreeMap::new(),
            transition: None,
            view_changes: BTreeMap::new(),
            new_view: None,
            failed_views: 0,
            vc_timer_generation: 0,
            vc_timer_armed: false,
            vc_watch: None,
            idle_ticks: 0,
            in_flight: HashMap::new(),
            future_votes: Vec::new(),
            retransmit_generation: 0,
            pending: BTreeMap::new(),
            pending_order: VecDeque::new(),
            pending_by_client: HashMap::new(),
            evidence_seen: BTreeSet::new(),
            evidence: VecDeque::new(),
            signed: BTreeMap::new(),
            executed_at_last_tick: 0,
            answered_status: BTreeSet::new(),
            ledger,
            counters: Counters::default(),
            out: vec![],
            membership,
            cfg,
        };
        r.arm_retransmit();
        let out = std::mem::take(&mut r.out);
        Ok((r, out))
    }

    /// A new member (for example a replacement with a fresh key) joining a
    /// running cluster: it fetches the current checkpoint by state transfer
    /// before it proposes or votes.
    pub fn join(
        cfg: Config,
        key: Keypair,
        membership: Membership,
        verifier: Box<dyn SignatureVerifier>,
    ) -> Result<(Self, Vec<Action>), ConfigError> {
        let (mut r, mut out) = Replica::new(cfg, key, membership, verifier)?;
        r.catching_up = true;
        r.request_state(1);
        out.append(&mut r.out);
        Ok((r, out))
    }

    /// Rebuilds a replica after a restart from the records it persisted, in
    /// the order they were written. It resumes in the highest view it signed
    /// anything for and never signs anything conflicting with those records.
    pub fn recover(
        cfg: Config,
        key: Keypair,
        genesis: Membership,
        verifier: Box<dyn SignatureVerifier>,
        records: &[PersistRecord],
    ) -> Result<(Self, Vec<Action>), RecoveryError> {
        let (mut r, _) = Replica::new(cfg, key, genesis, verifier)?;
        r.out.clear();
        // 1. The latest stable checkpoint.
        let last_ckpt = records.iter().rposition(|rec| matches!(rec, PersistRecord::Checkpoint { .. }));
        if let Some(i) = last_ckpt {
            if let PersistRecord::Checkpoint { seq, snapshot, proof } = &records[i] {
                let state = ReplicatedState::from_snapshot(snapshot)
                    .map_err(|source| RecoveryError::Snapshot { seq: *seq, source })?;
                r.install_state(state, snapshot.clone(), proof.clone());
            }
        }
        // 2. Committed batches after it, re-executed in order.
        for rec in records {
            if let PersistRecord::Committed { seq, view, batch } = rec {
                if *seq <= r.state.seq {
                    continue;
                }
                if *seq != r.state.seq + 1 {
                    return Err(RecoveryError::Gap { expected_after: r.state.seq, found: *seq });
                }
                let digest = batch_digest(&batch.requests);
                r.execute_batch(*seq, *view, digest, &batch.requests, false);
            }
        }
        // Replayed executions are not news; retransmission re-sends what matters.
        r.out.clear();
        // Prepared certificates above the stable checkpoint, highest view per seq.
        for rec in records {
            if let PersistRecord::Prepared { view, seq, pre_prepare, requests, prepares } = rec {
                if *seq <= r.stable.seq || r.certificates.get(seq).is_some_and(|c| c.view >= *view) {
                    continue;
                }
                let size = env_size(pre_prepare)
                    + requests.iter().map(|x| x.len()).sum::<usize>()
                    + prepares.iter().map(env_size).sum::<usize>();
                if let Some(charge) = r.ledger.charge(Category::Certificates, None, size) {
                    let cert = Certificate {
                        view: *view,
                        requests: requests.clone(),
                        pre_prepare: pre_prepare.clone(),
                        prepares: prepares.clone(),
                        charge,
                    };
                    if let Some(old) = r.certificates.insert(*seq, cert) {
                        r.ledger.refund(old.charge);
                    }
                }
            }
        }
        // 3. What it signed: never sign differently; resume its view.
        let mut max_view = 0;
        let mut in_view_change_for: Option<u64> = None;
        let mut normal_in: BTreeSet<u64> = BTreeSet::new();
        for rec in records {
            let PersistRecord::Signed(env) = rec else { continue };
            let Ok(msg) = Message::decode(env.payload.as_ref()) else { continue };
            if msg.epoch != r.membership.epoch() {
                continue;
            }
            if let Some((slot, _)) = vote_of(&msg) {
                r.signed.insert((msg.epoch, slot), env.clone());
            }
            match &msg.body {
                Some(Body::ViewChange(vc)) => {
                    max_view = max_view.max(vc.new_view);
                    in_view_change_for = Some(in_view_change_for.map_or(vc.new_view, |v: u64| v.max(vc.new_view)));
                }
                Some(Body::PrePrepare(p)) => {
                    max_view = max_view.max(p.view);
                    normal_in.insert(p.view);
                    if p.view == max_view {
                        r.next_seq = r.next_seq.max(p.seq + 1);
                    }
                }
                Some(Body::Prepare(Prepare { view, .. })) | Some(Body::Commit(Commit { view, .. })) => {
                    max_view = max_view.max(*view);
                    normal_in.insert(*view);
                }
                Some(Body::NewView(nv)) => {
                    max_view = max_view.max(nv.view);
                    normal_in.insert(nv.view);
                }
                _ => {}
            }
        }
        r.view = max_view;
        r.next_seq = r.next_seq.max(r.state.seq + 1);
        r.active = !(in_view_change_for == Some(max_view) && !normal_in.contains(&max_view));
        if !r.active {
            // Re-enter the view change: the guard hands back the very message signed before.
            r.start_view_change(max_view);
        }
        r.prune_signed();
        r.arm_retransmit();
        let out = std::mem::take(&mut r.out);
        Ok((r, out))
    }

    // ------------------------------------------------------------------ accessors

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.cfg.id
    }
    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }
    /// Whether the replica is in normal operation (not changing view).
    pub fn is_active(&self) -> bool {
        self.active && !self.retired
    }
    /// The primary of the current view.
    pub fn primary(&self) -> ReplicaId {
        self.membership.primary(self.view)
    }
    /// Last executed sequence number.
    pub fn last_executed(&self) -> u64 {
        self.state.seq
    }
    /// Last stable checkpoint.
    pub fn stable_checkpoint(&self) -> u64 {
        self.stable.seq
    }
    /// The membership in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// The executed state.
    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }
    /// Whether the replica left the membership.
    pub fn is_retired(&self) -> bool {
        self.retired
    }
    /// Byte accounting of the buffers.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Signature verifications performed.
    pub fn verifications(&self) -> u64 {
        self.verifier.verifications()
    }
    /// Evidence this replica found (bounded, most recent last).
    pub fn evidence(&self) -> impl Iterator<Item = &Evidence> {
        self.evidence.iter().map(|(e, _)| e)
    }
    /// Requests waiting to be ordered.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The digest of the vote `sender` cast in `slot` that this replica holds
    /// in its current epoch, if any (for checkers: a conflicting vote arriving
    /// now must produce evidence).
    pub fn held_vote(&self, sender: ReplicaId, slot: VoteSlot) -> Option<Vec<u8>> {
        use crate::proto::evidence::Kind;
        let kind = Kind::try_from(slot.kind).ok()?;
        let env = match kind {
            Kind::EquivocatingPrePrepare if slot.view == self.view => {
                self.slots.get(&slot.seq)?.pre_prepare.as_ref().map(|p| &p.env)
            }
            Kind::ConflictingPrepare if slot.view == self.view => {
                self.slots.get(&slot.seq)?.prepares.get(&sender).map(|m| &m.env)
            }
            Kind::ConflictingCommit if slot.view == self.view => {
                self.slots.get(&slot.seq)?.commits.get(&sender).map(|m| &m.env)
            }
            Kind::ConflictingCheckpoint => self.checkpoint_votes.get(&slot.seq)?.get(&sender).map(|m| &m.env),
            Kind::ConflictingViewChange => {
                self.view_changes.get(&sender).filter(|v| v.view == slot.view).map(|v| &v.env)
            }
            _ => None,
        }?;
        let msg = Message::decode(env.payload.as_ref()).ok()?;
        (msg.sender == sender).then(|| vote_of(&msg).map(|(_, d)| d)).flatten()
    }

    /// Whether this replica recorded evidence against `sender` for `slot`.
    pub fn has_evidence_against(&self, sender: ReplicaId, slot: VoteSlot) -> bool {
        self.evidence_seen.contains(&(slot, sender))
    }

    /// A one-line summary of the log above the last executed request, for diagnostics.
    pub fn describe_log(&self) -> String {
        let q = self.membership.quorum();
        let mut parts = vec![];
        for (seq, slot) in self.slots.range(self.state.seq + 1..).take(6) {
            let d = slot.pre_prepare.as_ref().map(|p| p.digest);
            let prep = slot
                .prepares
                .values()
                .filter(|m| Some(m.digest.as_slice()) == d.as_ref().map(|x| x.as_slice()))
                .count();
            let com: Vec<String> = slot
                .commits
                .iter()
                .filter(|(_, m)| Some(m.digest.as_slice()) == d.as_ref().map(|x| x.as_slice()))
                .map(|(r, _)| r.to_string())
                .collect();
            let com = com.join("/");
            parts.push(format!(
                "{seq}:{}{}p{prep}c{com}{}",
                if d.is_some() { "PP," } else { "-," },
                if slot.prepared { "P," } else { "" },
                if slot.committed { ",C" } else { "" }
            ));
        }
        format!(
            "view {} active {} exec {} stable {} next {} q {q} pending {} boundary {:?} next_membership {} slots [{}]",
            self.view,
            self.active,
            self.state.seq,
            self.stable.seq,
            self.next_seq,
            self.pending.len(),
            self.membership_boundary,
            self.state.next_membership.is_some(),
            parts.join(" ")
        )
    }

    /// Recomputes the accounted bytes from what is actually stored. The
    /// simulator checks that it equals the ledger's running total, which
    /// catches any charge that was forgotten or refunded twice.
    pub fn recount(&self) -> usize {
        let slots: usize = self
            .slots
            .values()
            .map(|s| {
                s.pre_prepare.iter().filter_map(|p| p.charge).map(|c| c.bytes).sum::<usize>()
                    + s.prepares
                        .values()
                        .chain(s.commits.values())
                        .filter_map(|m| m.charge)
                        .map(|c| c.bytes)
                        .sum::<usize>()
            })
            .sum();
        let certs: usize = self.certificates.values().map(|c| c.charge.bytes).sum();
        let pending: usize = self.pending.values().map(|p| p.charge.bytes).sum();
        let vcs: usize = self.view_changes.values().map(|v| v.charge.bytes).sum::<usize>()
            + self.new_view.as_ref().map_or(0, |(_, _, c)| c.bytes);
        let votes: usize =
            self.checkpoint_votes.values().flat_map(|m| m.values()).filter_map(|v| v.charge).map(|c| c.bytes).sum();
        let evidence: usize = self.evidence.iter().map(|(_, c)| c.bytes).sum();
        let future: usize = self.future_votes.iter().map(|(_, _, _, c)| c.bytes).sum();
        slots + certs + pending + vcs + votes + evidence + future
    }

    // ------------------------------------------------------------------ entry point

    /// Feeds one event and returns the actions to carry out, in order.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        if self.retired {
            if let Event::Client(bytes) = event {
                if let Ok(req) = SignedRequest::decode(bytes.as_ref()) {
                    if let Ok(body) = RequestBody::decode(req.body.as_ref()) {
                        self.out.push(Action::Reject {
                            client: body.client,
                            timestamp: body.timestamp,
                            reason: Rejection::Retired,
                        });
                    }
                }
            }
            return std::mem::take(&mut self.out);
        }
        match event {
            Event::Peer(b) => self.on_peer_messages(vec![b]),
            Event::Peers(bs) => self.on_peer_messages(bs),
            Event::Client(b) => self.on_client_request(b),
            Event::Timer { kind: TimerKind::ViewChange, generation } => {
                if generation == self.vc_timer_generation && self.vc_timer_armed {
                    self.vc_timer_armed = false;
                    self.on_view_change_timer();
                }
            }
            Event::Timer { kind: TimerKind::Retransmit, generation } => {
                if generation == self.retransmit_generation {
                    self.on_retransmit_timer();
                }
            }
        }
        if !self.retired {
            self.propose();
        }
        std::mem::take(&mut self.out)
    }

    // ------------------------------------------------------------------ signing

    /// Signs, persists and returns a message; refuses (None) to sign a vote
    /// that conflicts with one signed before (possible only after a restart).
    fn sign(&mut self, body: Body) -> Option<Envelope> {
        let msg = Message { epoch: self.membership.epoch(), sender: self.cfg.id, body: Some(body) };
        if let Some((slot, digest)) = vote_of(&msg) {
            if let Some(prev) = self.signed.get(&(msg.epoch, slot)) {
                let prev_digest = Message::decode(prev.payload.as_ref()).ok().and_then(|m| vote_of(&m)).map(|(_, d)| d);
                if prev_digest.as_deref() == Some(digest.as_slice()) {
                    return Some(prev.clone());
                }
                if slot.kind == crate::proto::evidence::Kind::ConflictingViewChange as i32 {
                    // Resend the very view change signed before the restart.
                    return Some(prev.clone());
                }
                self.out.push(Action::Warning(Warning::RefusedToResign { seq: slot.seq }));
                return None;
            }
            let env = self.key.seal(&msg);
            self.signed.insert((msg.epoch, slot), env.clone());
            self.out.push(Action::Persist(PersistRecord::Signed(env.clone())));
            return Some(env);
        }
        let env = self.key.seal(&msg);
        if matches!(msg.body, Some(Body::NewView(_))) {
            self.out.push(Action::Persist(PersistRecord::Signed(env.clone())));
        }
        Some(env)
    }

    fn broadcast(&mut self, env: &Envelope) {
        self.out.push(Action::Broadcast { envelope: encode_env(env) });
    }

    fn send(&mut self, to: ReplicaId, env: &Envelope) {
        if to != self.cfg.id {
            self.out.push(Action::Send { to, envelope: encode_env(env) });
        }
    }

    // ------------------------------------------------------------------ timers

    fn vc_timeout(&self) -> u64 {
        let t = self.cfg.view_change_timeout_ms.saturating_mul(1u64 << self.failed_views.min(16));
        t.min(self.cfg.max_view_change_timeout_ms)
    }

    fn arm_vc_timer(&mut self) {
        self.vc_timer_generation += 1;
        self.vc_timer_armed = true;
        self.out.push(Action::SetTimer {
            kind: TimerKind::ViewChange,
            generation: self.vc_timer_generation,
            after_ms: self.vc_timeout(),
        });
    }

    fn disarm_vc_timer(&mut self) {
        self.vc_timer_generation += 1;
        self.vc_timer_armed = false;
    }

    fn arm_retransmit(&mut self) {
        self.retransmit_generation += 1;
        self.out.push(Action::SetTimer {
            kind: TimerKind::Retransmit,
            generation: self.retransmit_generation,
            after_ms: self.cfg.retransmit_interval_ms,
        });
    }

    /// Points the view-change timer at the oldest pending request (backups
    /// only: the primary orders its own), or else at the lowest accepted but
    /// unexecuted sequence number; stops it when nothing waits.
    fn arm_request_timer(&mut self) {
        while let Some(d) = self.pending_order.front() {
            if self.pending.contains_key(d) {
                break;
            }
            self.pending_order.pop_front();
        }
        let is_primary = self.membership.primary(self.view) == self.cfg.id;
        let request = if is_primary { None } else { self.pending_order.front().copied().map(Watch::Request) };
        let seq = || {
            self.slots
                .iter()
                .find(|(s, slot)| **s > self.state.seq && slot.pre_prepare.is_some())
                .map(|(s, _)| Watch::Seq(*s))
        };
        // A pending membership change must reach its boundary checkpoint even
        // when no client is waiting.
        let boundary = || {
            let b = self.state.seq.div_ceil(self.cfg.checkpoint_interval) * self.cfg.checkpoint_interval;
            (self.state.next_membership.is_some() && b > self.stable.seq).then_some(Watch::Stable(b))
        };
        match request.or_else(seq).or_else(boundary) {
            Some(w) => {
                self.vc_watch = Some(w);
                self.arm_vc_timer();
            }
            None => {
                self.vc_watch = None;
                self.disarm_vc_timer();
            }
        }
    }

    fn watch_satisfied(&self) -> bool {
        match self.vc_watch {
            None => true,
            Some(Watch::Request(d)) => !self.pending.contains_key(&d),
            Some(Watch::Seq(s)) => self.state.seq >= s,
            Some(Watch::Stable(s)) => self.stable.seq >= s,
        }
    }

    fn on_view_change_timer(&mut self) {
        if self.active && self.watch_satisfied() {
            self.arm_request_timer();
            return;
        }
        // Move to the lowest higher view another replica already asked for,
        // so replicas whose views drifted apart meet again instead of chasing
        // each other. With nobody ahead, a replica gives up on its view only
        // once a quorum reached it (its primary had its chance); otherwise it
        // waits there for the others.
        let higher = self
            .view_changes
            .iter()
            .filter(|(r, v)| **r != self.cfg.id && v.view > self.view)
            .map(|(_, v)| v.view)
            .min();
        if !self.active && higher.is_none() {
            let here = self.view_changes.values().filter(|v| v.view >= self.view).count();
            if here < self.membership.quorum() {
                if let Some(vc) = self.view_changes.get(&self.cfg.id).map(|v| v.env.clone()) {
                    self.broadcast(&vc);
                }
                self.arm_vc_timer();
                return;
            }
        }
        self.failed_views = self.failed_views.saturating_add(1);
        let next = higher.unwrap_or(self.view.saturating_add(1));
        self.start_view_change(next);
    }

    // ------------------------------------------------------------------ client requests

    fn reject(&mut self, client: Bytes, timestamp: u64, reason: Rejection) {
        self.counters.requests_rejected += 1;
        self.out.push(Action::Reject { client, timestamp, reason });
    }

    /// A request from a client: validated, deduplicated and queued for ordering.
    fn on_client_request(&mut self, bytes: Bytes) {
        if bytes.len() > self.cfg.max_request_bytes {
            // Identify the client if possible so the refusal reaches it.
            let (client, ts) = SignedRequest::decode(bytes.as_ref())
                .ok()
                .and_then(|r| RequestBody::decode(r.body.as_ref()).ok())
                .map(|b| (b.client, b.timestamp))
                .unwrap_or_default();
            self.reject(client, ts, Rejection::TooLarge { bytes: bytes.len(), limit: self.cfg.max_request_bytes });
            return;
        }
        let (req, body) = match decode_request(&bytes) {
            Ok(x) => x,
            Err(why) => {
                self.reject(Bytes::new(), 0, Rejection::Malformed(why));
                return;
            }
        };
        if let Some(rec) = self.state.clients.get(&body.client) {
            if body.timestamp < rec.timestamp {
                return;
            }
            if body.timestamp == rec.timestamp {
                // Already executed: send the same reply again.
                let envelope = self.reply_envelope(&body.client, rec.timestamp, rec.result.clone());
                self.out.push(Action::Reply { client: body.client.clone(), timestamp: body.timestamp, envelope });
                return;
            }
        }
        let digest = sha256(&[&bytes]);
        let is_primary = self.membership.primary(self.view) == self.cfg.id;
        // The primary does not order a request twice; backups keep it to time the primary.
        if self.pending.contains_key(&digest) || (is_primary && self.in_flight.contains_key(&digest)) {
            self.counters.dropped_duplicate += 1;
            return;
        }
        let Ok(client_key) = parse_public_key(&body.client) else {
            self.reject(
                body.client,
                body.timestamp,
                Rejection::Malformed("client key is not a valid ed25519 key".into()),
            );
            return;
        };
        let ok = self.verifier.verify_all(&[SignatureCheck {
            key: &client_key,
            domain: REQUEST_DOMAIN,
            body: &req.body,
            signature: &req.signature,
        }]);
        if !ok[0] {
            self.reject(body.client, body.timestamp, Rejection::BadSignature);
            return;
        }
        let per_client = self.pending_by_client.get(&body.client).map_or(0, |m| m.len());
        if per_client >= self.cfg.max_pending_per_client {
            self.reject(
                body.client,
                body.timestamp,
                Rejection::ResourceExhausted { retry_after_ms: self.cfg.retransmit_interval_ms },
            );
            return;
        }
        let Some(charge) = self.ledger.charge(Category::Pending, None, bytes.len() + body.client.len()) else {
            self.reject(
                body.client,
                body.timestamp,
                Rejection::ResourceExhausted { retry_after_ms: self.cfg.retransmit_interval_ms },
            );
            return;
        };
        self.pending_by_client.entry(body.client.clone()).or_default().insert(body.timestamp, digest);
        self.pending.insert(digest, PendingRequest { bytes, client: body.client, timestamp: body.timestamp, charge });
        self.pending_order.push_back(digest);
        if self.pending_order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.pending_order.retain(|d| pending.contains_key(d));
        }
        if self.active && !self.vc_timer_armed {
            self.arm_request_timer();
        }
    }

    fn remove_pending(&mut self, digest: &Digest) {
        if let Some(p) = self.pending.remove(digest) {
            self.ledger.refund(p.charge);
            if let Some(m) = self.pending_by_client.get_mut(&p.client) {
                m.remove(&p.timestamp);
                if m.is_empty() {
                    self.pending_by_client.remove(&p.client);
                }
            }
        }
    }

    // ------------------------------------------------------------------ primary: batching

    fn propose(&mut self) {
        if !self.active || self.catching_up || self.membership.primary(self.view) != self.cfg.id {
            return;
        }
        loop {
            let limit = self.stable.seq + self.cfg.watermark_window;
            let limit = match self.membership_boundary {
                Some(b) => limit.min(b),
                None => limit,
            };
            if self.next_seq > limit
                || self.next_seq > self.state.seq.max(self.stable.seq) + self.cfg.max_inflight_batches
            {
                return;
            }
            let mut requests = vec![];
            let mut bytes = 0;
            let mut has_membership = false;
            while let Some(d) = self.pending_order.front().copied() {
                let Some(p) = self.pending.get(&d) else {
                    self.pending_order.pop_front();
                    continue;
                };
                if requests.len() >= self.cfg.max_batch_requests || bytes + p.bytes.len() > self.cfg.max_batch_bytes {
                    break;
                }
                if self.state.clients.get(&p.client).is_some_and(|r| r.timestamp >= p.timestamp) {
                    self.pending_order.pop_front();
                    self.remove_pending(&d);
                    continue;
                }
                bytes += p.bytes.len();
                has_membership |= is_membership_request(&p.bytes);
                requests.push((d, p.bytes.clone()));
                self.pending_order.pop_front();
            }
            // A pending membership change takes effect at the next checkpoint:
            // fill the way there with null batches when clients are idle.
            let pad =
                self.state.next_membership.is_some() && self.membership_boundary.is_some_and(|b| self.next_seq <= b);
            if requests.is_empty() && !pad {
                return;
            }
            let seq = self.next_seq;
            let reqs: Vec<Bytes> = requests.iter().map(|(_, b)| b.clone()).collect();
            let digest = batch_digest(&reqs);
            let Some(charge) = self.ledger.charge(Category::Log, Some(self.cfg.id), bytes + 200) else {
                // Out of log budget: put the requests back and wait for a checkpoint.
                for (d, _) in requests.into_iter().rev() {
                    self.pending_order.push_front(d);
                }
                self.counters.dropped_over_budget += 1;
                return;
            };
            let body = Body::PrePrepare(PrePrepare {
                view: self.view,
                seq,
                digest: Bytes::copy_from_slice(&digest),
                batch: Some(Batch { requests: reqs.clone() }),
            });
            let Some(env) = self.sign(body) else {
                self.ledger.refund(charge);
                self.next_seq += 1;
                continue;
            };
            for (d, _) in &requests {
                self.remove_pending(d);
            }
            self.next_seq += 1;
            if has_membership {
                let k = self.cfg.checkpoint_interval;
                self.membership_boundary = Some(seq.div_ceil(k) * k);
            }
            self.broadcast(&env);
            self.set_pre_prepare(seq, SlotPrePrepare { env, digest, requests: reqs, charge: Some(charge) });
            self.check_slot(seq);
        }
    }

    // ------------------------------------------------------------------ peer messages

    fn on_peer_messages(&mut self, raw: Vec<Bytes>) {
        let mut candidates = Vec::with_capacity(raw.len());
        for b in raw {
            self.counters.messages_in += 1;
            if let Some(c) = self.prefilter(b) {
                candidates.push(c);
            }
        }
        if candidates.is_empty() {
            return;
        }
        let checks: Vec<SignatureCheck> = candidates
            .iter()
            .map(|c| SignatureCheck {
                key: &c.key,
                domain: MESSAGE_DOMAIN,
                body: &c.env.payload,
                signature: &c.env.signature,
            })
            .collect();
        let ok = self.verifier.verify_all(&checks);
        drop(checks);
        for (c, ok) in candidates.into_iter().zip(ok) {
            if !ok {
                self.counters.dropped_bad_signature += 1;
                continue;
            }
            if self.retired {
                return;
            }
            self.dispatch(c.env, c.msg);
        }
    }

    /// Cheap checks before any signature is verified: size, decoding, epoch,
    /// membership, windows, and exact duplicates.
    fn prefilter(&mut self, bytes: Bytes) -> Option<Candidate> {
        let limit = self.cfg.max_snapshot_bytes.max(self.cfg.max_message_bytes * (self.membership.quorum() + 1));
        if bytes.len() > limit {
            self.counters.dropped_oversized += 1;
            return None;
        }
        let Ok(env) = Envelope::decode(bytes.as_ref()) else {
            self.counters.dropped_malformed += 1;
            return None;
        };
        let Ok(msg) = Message::decode(env.payload.as_ref()) else {
            self.counters.dropped_malformed += 1;
            return None;
        };
        let type_limit = match msg.body {
            Some(Body::StateResponse(_)) => self.cfg.max_snapshot_bytes,
            Some(Body::NewView(_)) => self.cfg.max_message_bytes * (self.membership.quorum() + 1),
            _ => self.cfg.max_message_bytes,
        };
        if bytes.len() > type_limit {
            self.counters.dropped_oversized += 1;
            return None;
        }
        if msg.sender == self.cfg.id || msg.body.is_none() {
            self.counters.dropped_malformed += 1;
            return None;
        }
        // Epoch: the current one; a state request may come from the previous one.
        let key = if msg.epoch == self.membership.epoch() {
            self.membership.key(msg.sender).copied()
        } else if matches!(msg.body, Some(Body::StateRequest(_)))
            && self.transition.as_ref().is_some_and(|t| t.membership.epoch() == msg.epoch)
        {
            self.transition.as_ref().and_then(|t| t.membership.key(msg.sender).copied())
        } else {
            None
        };
        let Some(key) = key else {
            self.counters.dropped_out_of_window += 1;
            return None;
        };
        let in_window = |seq: u64| seq > self.stable.seq && seq <= self.stable.seq + self.cfg.watermark_window;
        let vote_view_seq = match msg.body.as_ref()? {
            Body::PrePrepare(p) => Some((p.view, p.seq)),
            Body::Prepare(p) => Some((p.view, p.seq)),
            Body::Commit(c) => Some((c.view, c.seq)),
            _ => None,
        };
        if let Some((view, seq)) = vote_view_seq {
            let ahead = view > self.view || (view == self.view && !self.active);
            if ahead && view <= self.view.saturating_add(2) && in_window(seq) {
                self.buffer_future_vote(view, msg.sender, bytes);
                return None;
            }
        }
        let fresh = match msg.body.as_ref()? {
            Body::PrePrepare(p) => {
                in_window(p.seq)
                    && p.view == self.view
                    && self.active
                    && self.is_new_vote(&msg, &env, p.seq, |s| s.pre_prepare.as_ref().map(|x| &x.env))
            }
            Body::Prepare(p) => {
                in_window(p.seq)
                    && p.view == self.view
                    && self.active
                    && self.is_new_vote(&msg, &env, p.seq, |s| s.prepares.get(&msg.sender).map(|x| &x.env))
            }
            Body::Commit(c) => {
                in_window(c.seq)
                    && c.view == self.view
                    && self.active
                    && self.is_new_vote(&msg, &env, c.seq, |s| s.commits.get(&msg.sender).map(|x| &x.env))
            }
            Body::Checkpoint(c) => {
                let slot = vote_of(&msg).map(|x| x.0);
                let refreshing = c.seq == self.stable.seq && self.stable.epoch != self.membership.epoch();
                (c.seq > self.stable.seq || refreshing)
                    && c.seq % self.cfg.checkpoint_interval == 0
                    && !self.checkpoint_votes.get(&c.seq).and_then(|m| m.get(&msg.sender)).is_some_and(|v| {
                        v.env == env || slot.is_some_and(|s| self.evidence_seen.contains(&(s, msg.sender)))
                    })
                    && (c.seq <= self.stable.seq + self.cfg.watermark_window
                        || self.checkpoint_claims.get(&msg.sender).is_none_or(|s| *s < c.seq))
            }
            Body::ViewChange(v) => {
                let stored = self.view_changes.get(&msg.sender);
                // A second, different view change for the view we hold from this
                // sender is checked whatever our view: it may be evidence.
                let conflict = stored.is_some_and(|s| s.view == v.new_view && s.env != env);
                v.new_view <= self.view.saturating_add(MAX_VIEW_AHEAD)
                    && (conflict
                        || (v.new_view > self.view.saturating_sub(if self.active { 0 } else { 1 })
                            && !stored.is_some_and(|s| s.view > v.new_view || s.env == env)))
            }
            Body::NewView(n) => {
                n.view <= self.view.saturating_add(MAX_VIEW_AHEAD)
                    && (n.view > self.view || (n.view == self.view && !self.active))
                    && self.membership.primary(n.view) == msg.sender
            }
            Body::StateRequest(_) | Body::StateResponse(_) => true,
            Body::Reply(_) => false,
        };
        if !fresh {
            self.counters.dropped_out_of_window += 1;
            return None;
        }
        Some(Candidate { env, msg, key })
    }

    /// Keeps a vote for a view we are about to enter.
    fn buffer_future_vote(&mut self, view: u64, sender: ReplicaId, bytes: Bytes) {
        let digest = sha256(&[&bytes]);
        if self.future_votes.iter().any(|(_, d, _, _)| *d == digest) {
            self.counters.dropped_duplicate += 1;
            return;
        }
        match self.ledger.charge(Category::Log, Some(sender), bytes.len()) {
            Some(charge) => self.future_votes.push((view, digest, bytes, charge)),
            None => self.counters.dropped_over_budget += 1,
        }
    }

    /// Whether a vote is worth verifying: not an exact duplicate of what is
    /// stored, and not a further conflict once evidence for that slot exists.
    fn is_new_vote(&self, msg: &Message, env: &Envelope, seq: u64, get: impl Fn(&Slot) -> Option<&Envelope>) -> bool {
        let Some(slot) = self.slots.get(&seq) else { return true };
        match get(slot) {
            None => true,
            Some(stored) if stored == env => false,
            Some(_) => vote_of(msg).is_some_and(|(s, _)| !self.evidence_seen.contains(&(s, msg.sender))),
        }
    }

    fn dispatch(&mut self, env: Envelope, msg: Message) {
        let sender = msg.sender;
        match msg.body {
            Some(Body::PrePrepare(p)) => self.on_pre_prepare(env, sender, p),
            Some(Body::Prepare(p)) => self.on_vote(env, sender, p.view, p.seq, p.digest, false),
            Some(Body::Commit(c)) => self.on_vote(env, sender, c.view, c.seq, c.digest, true),
            Some(Body::Checkpoint(c)) => self.on_checkpoint(env, sender, c),
            Some(Body::ViewChange(v)) => self.on_view_change(env, sender, v),
            Some(Body::NewView(n)) => self.on_new_view(env, sender, n),
            Some(Body::StateRequest(s)) => self.on_state_request(sender, msg.epoch, s),
            Some(Body::StateResponse(s)) => self.on_state_response(sender, s),
            Some(Body::Reply(_)) | None => {}
        }
    }

    /// Records evidence once per (slot, sender).
    fn record_evidence(&mut self, slot: VoteSlot, offender: ReplicaId, first: Envelope, second: Envelope) {
        if !self.evidence_seen.insert((slot, offender)) {
            return;
        }
        let e = make_evidence(slot, offender, self.membership.epoch(), first, second);
        self.counters.evidence += 1;
        self.out.push(Action::Evidence(e.clone()));
        let size = e.encoded_len();
        while self.ledger.caps().evidence < size + ledger::ITEM_OVERHEAD + self.ledger.used(Category::Evidence) {
            match self.evidence.pop_front() {
                Some((_, c)) => self.ledger.refund(c),
                None => return,
            }
        }
        if let Some(c) = self.ledger.charge(Category::Evidence, None, size) {
            self.evidence.push_back((e, c));
        }
    }

    /// Verifies the client signatures of a batch (batched) and their size.
    fn batch_is_valid(&mut self, requests: &[Bytes]) -> bool {
        let mut decoded = Vec::with_capacity(requests.len());
        for r in requests {
            if r.len() > self.cfg.max_request_bytes {
                return false;
            }
            let Ok((req, body)) = decode_request(r) else { return false };
            let Ok(key) = parse_public_key(&body.client) else { return false };
            decoded.push((req, key));
        }
        let checks: Vec<SignatureCheck> = decoded
            .iter()
            .map(|(req, key)| SignatureCheck {
                key,
                domain: REQUEST_DOMAIN,
                body: &req.body,
                signature: &req.signature,
            })
            .collect();
        self.verifier.verify_all(&checks).into_iter().all(|x| x)
    }

    fn on_pre_prepare(&mut self, env: Envelope, sender: ReplicaId, p: PrePrepare) {
        if sender != self.membership.primary(p.view) {
            return;
        }
        let Some(digest) = digest_of(&p.digest) else { return };
        let vote =
            VoteSlot { kind: crate::proto::evidence::Kind::EquivocatingPrePrepare as i32, view: p.view, seq: p.seq };
        if let Some(existing) = self.slots.get(&p.seq).and_then(|s| s.pre_prepare.as_ref()) {
            if existing.digest != digest {
                let first = existing.env.clone();
                self.record_evidence(vote, sender, first, env);
            }
            return;
        }
        let Some(batch) = p.batch else { return };
        if batch_digest(&batch.requests) != digest || batch.encoded_len() > self.cfg.max_batch_bytes + 1024 {
            return;
        }
        if !self.batch_is_valid(&batch.requests) {
            return;
        }
        let size = env_size(&env);
        let Some(charge) = self.ledger.charge(Category::Log, Some(sender), size) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        if batch.requests.iter().any(is_membership_request) {
            let k = self.cfg.checkpoint_interval;
            self.membership_boundary = Some(self.membership_boundary.unwrap_or(u64::MAX).min(p.seq.div_ceil(k) * k));
        }
        self.set_pre_prepare(p.seq, SlotPrePrepare { env, digest, requests: batch.requests, charge: Some(charge) });
        if !self.vc_timer_armed {
            self.arm_request_timer();
        }
        // Votes that arrived earlier with another digest show the primary equivocated
        // to someone: hand them our copy so the equivocation can be proven.
        self.expose_conflicting_votes(p.seq);
        self.check_slot(p.seq);
    }

    /// Sends our signed pre-prepare to replicas that voted for another digest in
    /// this slot, so each holds both of the primary's messages.
    fn expose_conflicting_votes(&mut self, seq: u64) {
        let Some(slot) = self.slots.get(&seq) else { return };
        let Some(pp) = &slot.pre_prepare else { return };
        let others: BTreeSet<ReplicaId> = slot
            .prepares
            .iter()
            .chain(slot.commits.iter())
            .filter(|(_, m)| m.digest.as_slice() != pp.digest.as_slice())
            .map(|(r, _)| *r)
            .collect();
        let env = pp.env.clone();
        for r in others {
            self.send(r, &env);
        }
    }

    fn on_vote(&mut self, env: Envelope, sender: ReplicaId, view: u64, seq: u64, digest: Bytes, commit: bool) {
        use crate::proto::evidence::Kind;
        if !commit && sender == self.membership.primary(view) {
            return; // the primary does not prepare
        }
        let kind = if commit { Kind::ConflictingCommit } else { Kind::ConflictingPrepare };
        let vote = VoteSlot { kind: kind as i32, view, seq };
        let existing =
            self.slots.get(&seq).and_then(|s| if commit { s.commits.get(&sender) } else { s.prepares.get(&sender) });
        if let Some(existing) = existing {
            if existing.digest != digest {
                let first = existing.env.clone();
                self.record_evidence(vote, sender, first, env);
            }
            return;
        }
        let Some(charge) = self.ledger.charge(Category::Log, Some(sender), env_size(&env)) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        let pp_digest = self.slots.get(&seq).and_then(|s| s.pre_prepare.as_ref()).map(|p| p.digest);
        let slot = self.slots.entry(seq).or_default();
        let stored = Stored { env, digest: digest.to_vec(), charge: Some(charge) };
        if commit {
            slot.commits.insert(sender, stored);
        } else {
            slot.prepares.insert(sender, stored);
        }
        if let Some(d) = pp_digest {
            if d.as_slice() != digest.as_ref() {
                let env = self.slots[&seq].pre_prepare.as_ref().map(|p| p.env.clone());
                if let Some(env) = env {
                    self.send(sender, &env);
                }
            }
        }
        self.check_slot(seq);
    }

    /// Advances one slot through prepared and committed, sending our votes.
    fn check_slot(&mut self, seq: u64) {
        let q = self.membership.quorum();
        let primary = self.membership.primary(self.view);
        let me = self.cfg.id;
        let view = self.view;
        if self.catching_up {
            return;
        }
        let Some(slot) = self.slots.get(&seq) else { return };
        let Some(pp) = &slot.pre_prepare else { return };
        let digest = pp.digest;
        // Backups send a prepare for an accepted pre-prepare.
        if me != primary && !slot.sent_prepare {
            if let Some(env) = self.sign(Body::Prepare(Prepare { view, seq, digest: Bytes::copy_from_slice(&digest) }))
            {
                self.broadcast(&env);
                let charge = self.ledger.charge(Category::Log, Some(me), env_size(&env));
                let slot = self.slots.get_mut(&seq).expect("slot exists");
                slot.sent_prepare = true;
                slot.prepares.insert(me, Stored { env, digest: digest.to_vec(), charge });
            } else {
                return;
            }
        }
        let slot = self.slots.get(&seq).expect("slot exists");
        if !slot.prepared {
            let matching =
                slot.prepares.iter().filter(|(r, m)| **r != primary && m.digest.as_slice() == digest).count();
            if matching + 1 >= q {
                self.on_prepared(seq);
            } else {
                return;
            }
        }
        let slot = self.slots.get(&seq).expect("slot exists");
        if !slot.sent_commit {
            if let Some(env) = self.sign(Body::Commit(Commit { view, seq, digest: Bytes::copy_from_slice(&digest) })) {
                self.broadcast(&env);
                let charge = self.ledger.charge(Category::Log, Some(me), env_size(&env));
                let slot = self.slots.get_mut(&seq).expect("slot exists");
                slot.sent_commit = true;
                slot.commits.insert(me, Stored { env, digest: digest.to_vec(), charge });
            } else {
                return;
            }
        }
        let slot = self.slots.get(&seq).expect("slot exists");
        if !slot.committed {
            let matching = slot.commits.values().filter(|m| m.digest.as_slice() == digest).count();
            if matching >= q {
                self.slots.get_mut(&seq).expect("slot exists").committed = true;
                self.try_execute();
            }
        }
    }

    /// A slot prepared: keep its certificate for view changes.
    fn on_prepared(&mut self, seq: u64) {
        let primary = self.membership.primary(self.view);
        let q = self.membership.quorum();
        let slot = self.slots.get_mut(&seq).expect("slot exists");
        slot.prepared = true;
        let pp = slot.pre_prepare.as_ref().expect("prepared implies pre-prepare");
        let prepares: Vec<Envelope> = slot
            .prepares
            .iter()
            .filter(|(r, m)| **r != primary && m.digest.as_slice() == pp.digest)
            .take(q - 1)
            .map(|(_, m)| m.env.clone())
            .collect();
        // A certificate carries the full pre-prepare (with its batch).
        let pre_prepare = pp.env.clone();
        let requests = pp.requests.clone();
        let size = env_size(&pre_prepare)
            + requests.iter().map(|r| r.len()).sum::<usize>()
            + prepares.iter().map(env_size).sum::<usize>();
        if self.certificates.get(&seq).is_some_and(|c| c.view >= self.view) {
            return;
        }
        let Some(charge) = self.ledger.charge(Category::Certificates, None, size) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        self.out.push(Action::Persist(PersistRecord::Prepared {
            view: self.view,
            seq,
            pre_prepare: pre_prepare.clone(),
            requests: requests.clone(),
            prepares: prepares.clone(),
        }));
        if let Some(old) =
            self.certificates.insert(seq, Certificate { view: self.view, requests, pre_prepare, prepares, charge })
        {
            self.ledger.refund(old.charge);
        }
    }

    // ------------------------------------------------------------------ execution

    fn try_execute(&mut self) {
        loop {
            let k = self.cfg.checkpoint_interval;
            if self.state.next_membership.is_some() && self.state.seq > 0 && self.state.seq % k == 0 {
                return; // wait until the boundary checkpoint is stable, then switch epochs
            }
            let seq = self.state.seq + 1;
            let Some(slot) = self.slots.get(&seq) else { return };
            if !slot.committed {
                return;
            }
            let pp = slot.pre_prepare.as_ref().expect("committed implies pre-prepare");
            let (digest, requests) = (pp.digest, pp.requests.clone());
            self.out.push(Action::Persist(PersistRecord::Committed {
                seq,
                view: self.view,
                batch: Batch { requests: requests.clone() },
            }));
            self.execute_batch(seq, self.view, digest, &requests, true);
            self.failed_views = self.failed_views.saturating_sub(1);
            // Once what the timer watched is done, watch the next thing (or stop).
            if self.active && self.watch_satisfied() {
                self.arm_request_timer();
            }
        }
    }

    /// Executes one batch in order; `live` is false while replaying the log
    /// after a restart (no replies, no messages).
    fn execute_batch(&mut self, seq: u64, view: u64, digest: Digest, requests: &[Bytes], live: bool) {
        let mut executed = Vec::with_capacity(requests.len());
        for r in requests {
            let Ok((_, body)) = decode_request(r) else { continue };
            if live {
                // This request and anything older from the same client is done.
                let done: Vec<Digest> = self
                    .pending_by_client
                    .get(&body.client)
                    .map(|m| m.range(..=body.timestamp).map(|(_, d)| *d).collect())
                    .unwrap_or_default();
                for d in done {
                    self.remove_pending(&d);
                }
            }
            if self.state.clients.get(&body.client).is_some_and(|c| c.timestamp >= body.timestamp) {
                continue; // executed before: exactly once
            }
            let result = self.execute_request(seq, &body);
            self.state
                .clients
                .insert(body.client.clone(), ClientRecord { timestamp: body.timestamp, result: result.clone() });
            if live {
                let envelope = self.reply_envelope(&body.client, body.timestamp, result.clone());
                self.out.push(Action::Reply { client: body.client.clone(), timestamp: body.timestamp, envelope });
            }
            executed.push(ExecutedRequest {
                client: body.client,
                timestamp: body.timestamp,
                operation: body.operation,
                result,
            });
        }
        self.state.seq = seq;
        self.out.push(Action::Executed { seq, view, digest, requests: executed });
        if seq % self.cfg.checkpoint_interval == 0 {
            self.make_checkpoint(seq, live);
        }
    }

    fn execute_request(&mut self, seq: u64, body: &RequestBody) -> OpResult {
        let Some(op) = &body.operation else { return rejected("request has no operation") };
        match &op.kind {
            Some(OpKind::Membership(change)) => {
                if body.client.as_ref() != self.membership.admin().as_bytes() {
                    return rejected("membership changes must be signed by the admin key");
                }
                if self.state.next_membership.is_some() {
                    return rejected("a membership change is already pending");
                }
                if change.from_epoch != self.membership.epoch() {
                    return rejected(&format!(
                        "membership change is for epoch {} but epoch {} is in force",
                        change.from_epoch,
                        self.membership.epoch()
                    ));
                }
                let next = MembershipConfig {
                    epoch: self.membership.epoch() + 1,
                    members: change.members.clone(),
                    admin_key: self.membership.config().admin_key.clone(),
                };
                match Membership::new(next) {
                    Ok(m) => {
                        self.state.next_membership = Some(m.config().clone());
                        let k = self.cfg.checkpoint_interval;
                        self.membership_boundary = Some(seq.div_ceil(k) * k);
                        crate::state::ok(None)
                    }
                    Err(e) => rejected(&format!("invalid membership: {e}")),
                }
            }
            _ => self.state.kv.apply(op),
        }
    }

    fn reply_envelope(&self, client: &Bytes, timestamp: u64, result: OpResult) -> Bytes {
        let msg = Message {
            epoch: self.membership.epoch(),
            sender: self.cfg.id,
            body: Some(Body::Reply(Reply { view: self.view, client: client.clone(), timestamp, result: Some(result) })),
        };
        encode_env(&self.key.seal(&msg))
    }

    // ------------------------------------------------------------------ checkpoints

    fn make_checkpoint(&mut self, seq: u64, live: bool) {
        let (snapshot, digest) = self.state.encoded_snapshot();
        self.own_checkpoints.insert(seq, OwnCheckpoint { digest, snapshot });
        if !live {
            return;
        }
        if let Some(env) =
            self.sign(Body::Checkpoint(Checkpoint { seq, state_digest: Bytes::copy_from_slice(&digest) }))
        {
            self.broadcast(&env);
            self.store_checkpoint_vote(self.cfg.id, seq, env, digest.to_vec());
        }
        self.check_stable(seq);
    }

    fn store_checkpoint_vote(&mut self, sender: ReplicaId, seq: u64, env: Envelope, digest: Vec<u8>) {
        let charge = self.ledger.charge(Category::Checkpoint, None, env_size(&env));
        if charge.is_none() && sender != self.cfg.id {
            self.counters.dropped_over_budget += 1;
            return;
        }
        self.checkpoint_votes.entry(seq).or_default().insert(sender, Stored { env, digest, charge });
    }

    fn on_checkpoint(&mut self, env: Envelope, sender: ReplicaId, c: Checkpoint) {
        let claim = self.checkpoint_claims.entry(sender).or_insert(0);
        *claim = (*claim).max(c.seq);
        if c.seq > self.stable.seq + self.cfg.watermark_window {
            self.maybe_fetch_state();
            return;
        }
        if let Some(existing) = self.checkpoint_votes.get(&c.seq).and_then(|m| m.get(&sender)) {
            if existing.digest.as_slice() != c.state_digest.as_ref() {
                let first = existing.env.clone();
                let slot =
                    VoteSlot { kind: crate::proto::evidence::Kind::ConflictingCheckpoint as i32, view: 0, seq: c.seq };
                self.record_evidence(slot, sender, first, env);
            }
            return;
        }
        self.store_checkpoint_vote(sender, c.seq, env, c.state_digest.to_vec());
        self.check_stable(c.seq);
        self.maybe_fetch_state();
    }

    /// A checkpoint is stable when a quorum signed the same digest.
    fn check_stable(&mut self, seq: u64) {
        if seq == self.stable.seq && self.stable.epoch != self.membership.epoch() {
            self.refresh_stable_proof();
            return;
        }
        if seq <= self.stable.seq {
            return;
        }
        let q = self.membership.quorum();
        let Some(votes) = self.checkpoint_votes.get(&seq) else { return };
        let mut by_digest: BTreeMap<&[u8], Vec<&Envelope>> = BTreeMap::new();
        for v in votes.values() {
            by_digest.entry(v.digest.as_slice()).or_default().push(&v.env);
        }
        let Some((digest, proof)) = by_digest.into_iter().find(|(_, v)| v.len() >= q) else { return };
        let digest: Digest = match digest.try_into() {
            Ok(d) => d,
            Err(_) => return,
        };
        let proof: Vec<Envelope> = proof.into_iter().take(q).cloned().collect();
        match self.own_checkpoints.get(&seq) {
            Some(own) if own.digest == digest => {
                let snapshot = own.snapshot.clone();
                let epoch = self.membership.epoch();
                self.make_stable(StableCheckpoint { seq, epoch, digest, snapshot, proof });
            }
            Some(_) => {
                self.out.push(Action::Warning(Warning::StateDiverged { seq }));
                self.request_state(seq);
            }
            None if self.state.seq < seq => self.request_state(seq),
            None => {}
        }
    }

    /// After an epoch switch, replaces the old epoch's proof of the stable
    /// checkpoint with one signed by the new members, which new members can check.
    fn refresh_stable_proof(&mut self) {
        let seq = self.stable.seq;
        let q = self.membership.quorum();
        let Some(votes) = self.checkpoint_votes.get(&seq) else { return };
        let proof: Vec<Envelope> = votes
            .values()
            .filter(|v| v.digest.as_slice() == self.stable.digest)
            .map(|v| v.env.clone())
            .take(q)
            .collect();
        if proof.len() < q {
            return;
        }
        self.stable.proof = proof.clone();
        self.stable.epoch = self.membership.epoch();
        self.out.push(Action::Persist(PersistRecord::Checkpoint {
            seq,
            snapshot: self.stable.snapshot.clone(),
            proof,
        }));
        if let Some(votes) = self.checkpoint_votes.remove(&seq) {
            for v in votes.into_values() {
                if let Some(c) = v.charge {
                    self.ledger.refund(c);
                }
            }
        }
    }

    /// Moves the low watermark to a stable checkpoint and discards the log below it.
    fn make_stable(&mut self, ckpt: StableCheckpoint) {
        let seq = ckpt.seq;
        self.out.push(Action::Persist(PersistRecord::Checkpoint {
            seq,
            snapshot: ckpt.snapshot.clone(),
            proof: ckpt.proof.clone(),
        }));
        self.out.push(Action::StableCheckpoint { seq, digest: ckpt.digest });
        self.stable = ckpt;
        self.collect_garbage();
        let boundary_reached = self.state.seq == seq && self.state.next_membership.is_some();
        if boundary_reached {
            self.switch_epoch();
        }
        self.try_execute();
    }

    fn collect_garbage(&mut self) {
        let h = self.stable.seq;
        let keep = self.slots.split_off(&(h + 1));
        for (_, slot) in std::mem::replace(&mut self.slots, keep) {
            self.refund_slot(slot);
        }
        let keep = self.certificates.split_off(&(h + 1));
        for (_, c) in std::mem::replace(&mut self.certificates, keep) {
            self.ledger.refund(c.charge);
        }
        let keep = self.checkpoint_votes.split_off(&h);
        for (_, votes) in std::mem::replace(&mut self.checkpoint_votes, keep) {
            for v in votes.into_values() {
                if let Some(c) = v.charge {
                    self.ledger.refund(c);
                }
            }
        }
        if self.stable.epoch == self.membership.epoch() {
            if let Some(votes) = self.checkpoint_votes.remove(&h) {
                for v in votes.into_values() {
                    if let Some(c) = v.charge {
                        self.ledger.refund(c);
                    }
                }
            }
        }
        self.own_checkpoints = self.own_checkpoints.split_off(&(h + 1));
        self.evidence_seen.retain(|(s, _)| s.seq == 0 || s.seq > h);
        self.prune_signed();
        if self.next_seq <= h {
            self.next_seq = h + 1;
        }
        if self.membership_boundary.is_some_and(|b| b <= h) && self.state.next_membership.is_none() {
            self.membership_boundary = None;
        }
    }

    fn prune_signed(&mut self) {
        let h = self.stable.seq;
        let view = self.view;
        let window = self.cfg.view_window;
        let epoch = self.membership.epoch();
        // Entries of a later epoch (seen while installing a snapshot) are kept.
        self.signed.retain(|(e, s), _| {
            *e > epoch || (*e == epoch && (if s.seq == 0 { s.view.saturating_add(window) >= view } else { s.seq > h }))
        });
    }

    /// Puts an accepted pre-prepare into its slot and indexes its requests.
    fn set_pre_prepare(&mut self, seq: u64, pp: SlotPrePrepare) {
        for r in &pp.requests {
            self.in_flight.insert(sha256(&[r]), seq);
        }
        self.slots.entry(seq).or_default().pre_prepare = Some(pp);
    }

    fn refund_slot(&mut self, slot: Slot) {
        if let Some(pp) = slot.pre_prepare {
            for r in &pp.requests {
                self.in_flight.remove(&sha256(&[r]));
            }
            if let Some(c) = pp.charge {
                self.ledger.refund(c);
            }
        }
        for m in slot.prepares.into_values().chain(slot.commits.into_values()) {
            if let Some(c) = m.charge {
                self.ledger.refund(c);
            }
        }
    }

    // ------------------------------------------------------------------ membership epochs

    /// Puts the pending membership in force at the stable boundary checkpoint.
    fn switch_epoch(&mut self) {
        let Some(next) = self.state.next_membership.take() else { return };
        let Ok(next) = Membership::new(next) else { return };
        let old = std::mem::replace(&mut self.membership, next.clone());
        self.state.membership = next;
        let own_vote = self
            .checkpoint_votes
            .get(&self.stable.seq)
            .and_then(|m| m.get(&self.cfg.id))
            .map(|v| v.env.clone())
            .or_else(|| self.stable.proof.iter().find(|e| open_sender(e) == Some(self.cfg.id)).cloned());
        self.transition =
            Some(Transition { membership: old, checkpoint: self.stable.clone(), own_vote, ticks_left: 64 });
        // Everything above the boundary was signed in the old epoch: drop it.
        for (_, slot) in std::mem::take(&mut self.slots) {
            self.refund_slot(slot);
        }
        for (_, c) in std::mem::take(&mut self.certificates) {
            self.ledger.refund(c.charge);
        }
        for (_, vc) in std::mem::take(&mut self.view_changes) {
            self.ledger.refund(vc.charge);
        }
        if let Some((_, _, c)) = self.new_view.take() {
            self.ledger.refund(c);
        }
        for (_, votes) in std::mem::take(&mut self.checkpoint_votes) {
            for v in votes.into_values() {
                if let Some(c) = v.charge {
                    self.ledger.refund(c);
                }
            }
        }
        for (_, _, _, c) in std::mem::take(&mut self.future_votes) {
            self.ledger.refund(c);
        }
        self.checkpoint_claims.clear();
        self.evidence_seen.clear();
        self.membership_boundary = None;
        self.next_seq = self.stable.seq + 1;
        self.ledger.set_members(self.membership.n());
        self.out.push(Action::MembershipChanged { epoch: self.membership.epoch() });
        let me_in_new = self.membership.key(self.cfg.id).is_some_and(|k| *k == self.key.public());
        if !me_in_new {
            self.retired = true;
            self.disarm_vc_timer();
            self.out.push(Action::Retired);
            return;
        }
        // The stable checkpoint is re-signed in the new epoch so that new
        // members can verify a state transfer with the keys they know.
        let seq = self.stable.seq;
        let digest = self.stable.digest;
        if let Some(env) =
            self.sign(Body::Checkpoint(Checkpoint { seq, state_digest: Bytes::copy_from_slice(&digest) }))
        {
            self.broadcast(&env);
            self.store_checkpoint_vote(self.cfg.id, seq, env, digest.to_vec());
        }
        // A new epoch is a fresh instance of the protocol from the boundary
        // checkpoint: every replica starts it in view 0, in normal operation,
        // which a new member knows without being told.
        self.view = 0;
        self.active = true;
        self.failed_views = 0;
        self.out.push(Action::NewView { view: 0, primary: self.membership.primary(0) });
        self.arm_request_timer();
    }

    // ------------------------------------------------------------------ view change

    fn start_view_change(&mut self, new_view: u64) {
        self.counters.view_changes += 1;
        self.view = new_view;
        self.active = false;
        self.out.push(Action::ViewChangeStarted { view: new_view });
        for (_, slot) in std::mem::take(&mut self.slots) {
            self.refund_slot(slot);
        }
        if let Some((_, _, c)) = self.new_view.take() {
            self.ledger.refund(c);
        }
        let prepared: Vec<PreparedCertificate> = self
            .certificates
            .iter()
            .filter(|(s, _)| **s > self.stable.seq)
            .map(|(_, c)| PreparedCertificate {
                pre_prepare: Some(c.pre_prepare.clone()),
                prepares: c.prepares.clone(),
                batch: Some(Batch { requests: c.requests.clone() }),
            })
            .collect();
        let body = Body::ViewChange(ViewChange {
            new_view,
            stable_seq: self.stable.seq,
            checkpoint_proof: self.stable.proof.clone(),
            prepared,
        });
        if let Some(env) = self.sign(body) {
            self.broadcast(&env);
            if let Ok(msg) = Message::decode(env.payload.as_ref()) {
                if let Some(Body::ViewChange(vc)) = msg.body {
                    match self.validate_view_change(self.cfg.id, &vc) {
                        Ok(info) => self.store_view_change(self.cfg.id, new_view, env, info),
                        Err(why) => {
                            self.out.push(Action::Warning(Warning::InvalidViewChange { from: self.cfg.id, why }))
                        }
                    }
                }
            }
        }
        self.arm_vc_timer();
        self.try_new_view();
    }

    fn store_view_change(&mut self, sender: ReplicaId, view: u64, env: Envelope, info: ViewChangeInfo) {
        if let Some(old) = self.view_changes.remove(&sender) {
            self.ledger.refund(old.charge);
        }
        let Some(charge) = self.ledger.charge(Category::ViewChange, None, env_size(&env)) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        self.view_changes.insert(sender, StoredViewChange { view, env, info, charge });
    }

    /// Checks a view change's proofs: the checkpoint proof (a quorum of
    /// matching signed checkpoints) and each prepared certificate (a
    /// pre-prepare from that view's primary plus a quorum-minus-one of
    /// matching prepares from other replicas), all signatures in one batch.
    fn validate_view_change(&mut self, sender: ReplicaId, vc: &ViewChange) -> Result<ViewChangeInfo, String> {
        let m = self.membership.clone();
        let q = m.quorum();
        let mut checks: Vec<(VerifyingKey, Envelope)> = vec![];
        // Checkpoint proof.
        let mut stable_digest = None;
        let mut proof_epoch: Option<u64> = None;
        let mut proof_quorum = q;
        if vc.stable_seq > 0 {
            let mut signers = BTreeSet::new();
            for env in &vc.checkpoint_proof {
                let msg = Message::decode(env.payload.as_ref()).map_err(|_| "checkpoint proof does not decode")?;
                let Some(Body::Checkpoint(c)) = &msg.body else {
                    return Err("checkpoint proof holds another message".into());
                };
                let signers_of = if msg.epoch == m.epoch() {
                    &m
                } else {
                    // Right after an epoch switch the proof may still be the old epoch's.
                    match self.transition.as_ref() {
                        Some(t) if t.membership.epoch() == msg.epoch && t.checkpoint.seq == vc.stable_seq => {
                            &t.membership
                        }
                        _ => return Err(format!("checkpoint proof from epoch {}", msg.epoch)),
                    }
                };
                if c.seq != vc.stable_seq || *proof_epoch.get_or_insert(msg.epoch) != msg.epoch {
                    return Err("checkpoint proof for another seq or mixed epochs".into());
                }
                let d = digest_of(&c.state_digest).ok_or("checkpoint digest is not 32 bytes")?;
                if *stable_digest.get_or_insert(d) != d || !signers.insert(msg.sender) {
                    return Err("checkpoint proof has differing digests or repeated signers".into());
                }
                proof_quorum = signers_of.quorum();
                checks.push((*signers_of.key(msg.sender).ok_or("checkpoint signer is not a member")?, env.clone()));
            }
            if signers.len() < proof_quorum {
                return Err(format!("checkpoint proof has {} signers, {proof_quorum} needed", signers.len()));
            }
        }
        // Prepared certificates.
        let mut prepared = vec![];
        let mut seqs = BTreeSet::new();
        for cert in &vc.prepared {
            let pp_env = cert.pre_prepare.as_ref().ok_or("certificate without pre-prepare")?;
            let pp_msg =
                Message::decode(pp_env.payload.as_ref()).map_err(|_| "certificate pre-prepare does not decode")?;
            let Some(Body::PrePrepare(pp)) = &pp_msg.body else {
                return Err("certificate holds no pre-prepare".into());
            };
            if pp_msg.epoch != m.epoch()
                || pp.view >= vc.new_view
                || pp.seq <= vc.stable_seq
                || pp.seq > vc.stable_seq + self.cfg.watermark_window
                || pp_msg.sender != m.primary(pp.view)
                || !seqs.insert(pp.seq)
            {
                return Err(format!("certificate for seq {} view {} is out of place", pp.seq, pp.view));
            }
            let digest = digest_of(&pp.digest).ok_or("certificate digest is not 32 bytes")?;
            let requests =
                pp.batch.as_ref().or(cert.batch.as_ref()).ok_or("certificate without requests")?.requests.clone();
            if batch_digest(&requests) != digest {
                return Err(format!("certificate for seq {}: requests do not match the digest", pp.seq));
            }
            checks.push((*m.key(pp_msg.sender).ok_or("primary is not a member")?, pp_env.clone()));
            let mut signers = BTreeSet::new();
            for p_env in &cert.prepares {
                let msg = Message::decode(p_env.payload.as_ref()).map_err(|_| "certificate prepare does not decode")?;
                let Some(Body::Prepare(p)) = &msg.body else { return Err("certificate holds a non-prepare".into()) };
                if msg.epoch != m.epoch()
                    || p.view != pp.view
                    || p.seq != pp.seq
                    || p.digest != pp.digest
                    || msg.sender == pp_msg.sender
                    || !signers.insert(msg.sender)
                {
                    return Err(format!("certificate for seq {}: a prepare does not match", pp.seq));
                }
                checks.push((*m.key(msg.sender).ok_or("prepare signer is not a member")?, p_env.clone()));
            }
            if signers.len() + 1 < q {
                return Err(format!("certificate for seq {} has {} prepares", pp.seq, signers.len()));
            }
            prepared.push(PreparedInfo { view: pp.view, seq: pp.seq, digest, requests });
        }
        if sender != self.cfg.id {
            let sig_checks: Vec<SignatureCheck> = checks
                .iter()
                .map(|(k, e)| SignatureCheck {
                    key: k,
                    domain: MESSAGE_DOMAIN,
                    body: &e.payload,
                    signature: &e.signature,
                })
                .collect();
            if !self.verifier.verify_all(&sig_checks).into_iter().all(|x| x) {
                return Err("a signature inside the view change does not verify".into());
            }
            for p in &prepared {
                if !self.batch_is_valid(&p.requests) {
                    return Err(format!("certificate for seq {} holds an invalid request", p.seq));
                }
            }
        }
        Ok(ViewChangeInfo {
            sender,
            stable_seq: vc.stable_seq,
            stable_digest,
            checkpoint_proof: vc.checkpoint_proof.clone(),
            prepared,
        })
    }

    fn on_view_change(&mut self, env: Envelope, sender: ReplicaId, vc: ViewChange) {
        use crate::proto::evidence::Kind;
        if let Some(existing) = self.view_changes.get(&sender) {
            if existing.view == vc.new_view && existing.env.payload != env.payload {
                let slot = VoteSlot { kind: Kind::ConflictingViewChange as i32, view: vc.new_view, seq: 0 };
                let first = existing.env.clone();
                self.record_evidence(slot, sender, first, env);
                return;
            }
            if existing.view >= vc.new_view {
                return;
            }
        }
        let info = match self.validate_view_change(sender, &vc) {
            Ok(info) => info,
            Err(why) => {
                self.out.push(Action::Warning(Warning::InvalidViewChange { from: sender, why }));
                return;
            }
        };
        self.store_view_change(sender, vc.new_view, env, info);
        // Liveness: f+1 replicas asking for views above ours means at least
        // one honest replica does; join the smallest such view.
        let above: Vec<u64> = self
            .view_changes
            .iter()
            .filter(|(r, v)| **r != self.cfg.id && v.view > self.view)
            .map(|(_, v)| v.view)
            .collect();
        if above.len() >= self.membership.weak_quorum() {
            let target = *above.iter().min().expect("non-empty");
            self.start_view_change(target);
            return;
        }
        self.try_new_view();
    }

    /// As the new view's primary, sends NEW-VIEW once a quorum asked for it.
    fn try_new_view(&mut self) {
        if self.active || self.membership.primary(self.view) != self.cfg.id {
            return;
        }
        if self.new_view.as_ref().is_some_and(|(v, _, _)| *v == self.view) {
            return;
        }
        let view = self.view;
        let vcs: Vec<(Envelope, ViewChangeInfo)> =
            self.view_changes.values().filter(|v| v.view == view).map(|v| (v.env.clone(), v.info.clone())).collect();
        if vcs.len() < self.membership.quorum() {
            return;
        }
        let vcs: Vec<(Envelope, ViewChangeInfo)> = vcs.into_iter().take(self.membership.quorum()).collect();
        let infos: Vec<ViewChangeInfo> = vcs.iter().map(|(_, i)| i.clone()).collect();
        let plan = plan_new_view(&infos);
        let mut pre_prepares = vec![];
        for s in &plan.slots {
            let body = Body::PrePrepare(PrePrepare {
                view,
                seq: s.seq,
                digest: Bytes::copy_from_slice(&s.digest),
                batch: None,
            });
            match self.sign(body) {
                Some(env) => pre_prepares.push(env),
                None => return,
            }
        }
        let nv = NewView {
            view,
            view_changes: vcs.into_iter().map(|(e, _)| e).collect(),
            pre_prepares: pre_prepares.clone(),
        };
        let Some(env) = self.sign(Body::NewView(nv)) else { return };
        self.broadcast(&env);
        self.install_new_view(view, env, plan, pre_prepares);
    }

    fn on_new_view(&mut self, env: Envelope, sender: ReplicaId, nv: NewView) {
        let m = self.membership.clone();
        if sender != m.primary(nv.view) {
            return;
        }
        // Validate V: a quorum of valid view changes for this view from distinct replicas.
        let mut infos = vec![];
        let mut senders = BTreeSet::new();
        for vc_env in &nv.view_changes {
            let Ok(msg) = Message::decode(vc_env.payload.as_ref()) else { return };
            let Some(Body::ViewChange(vc)) = &msg.body else { return };
            if msg.epoch != m.epoch() || vc.new_view != nv.view || !senders.insert(msg.sender) {
                return;
            }
            let Some(key) = m.key(msg.sender).copied() else { return };
            if msg.sender != self.cfg.id {
                let ok = self.verifier.verify_all(&[SignatureCheck {
                    key: &key,
                    domain: MESSAGE_DOMAIN,
                    body: &vc_env.payload,
                    signature: &vc_env.signature,
                }]);
                if !ok[0] {
                    return;
                }
            }
            match self.validate_view_change(msg.sender, vc) {
                Ok(info) => infos.push(info),
                Err(why) => {
                    self.out.push(Action::Warning(Warning::InvalidViewChange { from: msg.sender, why }));
                    return;
                }
            }
        }
        if senders.len() < m.quorum() {
            return;
        }
        // Recompute O and compare with what the primary sent.
        let plan = plan_new_view(&infos);
        if plan.slots.len() != nv.pre_prepares.len() {
            return;
        }
        let key = *m.key(sender).expect("primary is a member");
        let mut checks = vec![];
        for (s, pp_env) in plan.slots.iter().zip(&nv.pre_prepares) {
            let Ok(msg) = Message::decode(pp_env.payload.as_ref()) else { return };
            let Some(Body::PrePrepare(pp)) = &msg.body else { return };
            if msg.sender != sender
                || msg.epoch != m.epoch()
                || pp.view != nv.view
                || pp.seq != s.seq
                || pp.digest.as_ref() != s.digest
            {
                return;
            }
            checks.push(pp_env);
        }
        let sig_checks: Vec<SignatureCheck> = checks
            .iter()
            .map(|e| SignatureCheck { key: &key, domain: MESSAGE_DOMAIN, body: &e.payload, signature: &e.signature })
            .collect();
        if !self.verifier.verify_all(&sig_checks).into_iter().all(|x| x) {
            return;
        }
        let pre_prepares = nv.pre_prepares.clone();
        self.install_new_view(nv.view, env, plan, pre_prepares);
    }

    /// Enters `view` with the O set of the NEW-VIEW.
    fn install_new_view(&mut self, view: u64, env: Envelope, plan: NewViewPlan, pre_prepares: Vec<Envelope>) {
        let primary = self.membership.primary(view);
        self.view = view;
        self.active = true;
        for (_, slot) in std::mem::take(&mut self.slots) {
            self.refund_slot(slot);
        }
        if let Some((_, _, c)) = self.new_view.take() {
            self.ledger.refund(c);
        }
        let charge = self.ledger.charge(Category::ViewChange, None, env_size(&env));
        match charge {
            Some(c) => self.new_view = Some((view, env, c)),
            None => self.counters.dropped_over_budget += 1,
        }
        // View changes for this view or older are done.
        let done: Vec<ReplicaId> = self.view_changes.iter().filter(|(_, v)| v.view <= view).map(|(r, _)| *r).collect();
        for r in done {
            if let Some(v) = self.view_changes.remove(&r) {
                self.ledger.refund(v.charge);
            }
        }
        self.disarm_vc_timer();
        self.out.push(Action::NewView { view, primary });
        // Catch up to min-s if we are behind it.
        if plan.min_s > self.stable.seq {
            match (self.own_checkpoints.get(&plan.min_s), plan.stable_digest) {
                (Some(own), Some(d)) if own.digest == d => {
                    let snapshot = own.snapshot.clone();
                    let epoch = self.membership.epoch();
                    self.make_stable(StableCheckpoint {
                        seq: plan.min_s,
                        epoch,
                        digest: d,
                        snapshot,
                        proof: plan.checkpoint_proof.clone(),
                    });
                }
                _ => {
                    if self.state.seq < plan.min_s {
                        self.request_state(plan.min_s);
                    }
                }
            }
        }
        let low = self.stable.seq.max(plan.min_s);
        for (s, env) in plan.slots.into_iter().zip(pre_prepares) {
            if s.seq <= low || s.seq > self.stable.seq + self.cfg.watermark_window {
                continue;
            }
            let size = s.requests.iter().map(|r| r.len()).sum::<usize>() + env_size(&env);
            let charge = self.ledger.charge(Category::Log, Some(primary), size);
            if s.requests.iter().any(is_membership_request) {
                let k = self.cfg.checkpoint_interval;
                self.membership_boundary = Some(s.seq.div_ceil(k) * k);
            }
            self.set_pre_prepare(s.seq, SlotPrePrepare { env, digest: s.digest, requests: s.requests, charge });
        }
        self.next_seq = plan.max_s.max(low) + 1;
        let seqs: Vec<u64> = self.slots.keys().copied().collect();
        for s in seqs {
            self.check_slot(s);
        }
        self.arm_request_timer();
        // Votes that arrived before the NEW-VIEW.
        let mut replay = vec![];
        for (v, _, bytes, charge) in std::mem::take(&mut self.future_votes) {
            if v > view {
                self.future_votes.push((v, sha256(&[&bytes]), bytes, charge));
                continue;
            }
            self.ledger.refund(charge);
            if v == view {
                replay.push(bytes);
            }
        }
        if !replay.is_empty() {
            self.on_peer_messages(replay);
        }
    }

    // ------------------------------------------------------------------ state transfer

    fn request_state(&mut self, min_seq: u64) {
        let epoch = self.membership.epoch();
        let env = match &self.last_state_request {
            // ed25519 is deterministic: re-sending the same request needs no new signature.
            Some((e, m, env)) if *e == epoch && *m == min_seq => Some(env.clone()),
            _ => self.sign(Body::StateRequest(StateRequest { min_seq })),
        };
        if let Some(env) = env {
            self.last_state_request = Some((epoch, min_seq, env.clone()));
            self.broadcast(&env);
        }
    }

    /// Fetches state when f+1 replicas claim checkpoints we have not reached
    /// and cannot reach with the log we hold.
    fn maybe_fetch_state(&mut self) {
        let f1 = self.membership.weak_quorum();
        let mut claims: Vec<u64> = self.checkpoint_claims.values().copied().collect();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        let Some(target) = claims.get(f1 - 1).copied() else { return };
        if target >= self.stable.seq + self.cfg.watermark_window && target > self.state.seq {
            self.request_state(self.state.seq + 1);
        }
    }

    fn on_state_request(&mut self, sender: ReplicaId, epoch: u64, req: StateRequest) {
        // At most one answer per requester per retransmission period.
        if !self.answered_status.insert(sender) {
            return;
        }
        if epoch != self.membership.epoch() {
            // A laggard from the previous epoch: bring it to the boundary.
            if let Some(t) = &self.transition {
                if t.checkpoint.seq >= req.min_seq {
                    let resp = StateResponse {
                        snapshot: t.checkpoint.snapshot.clone(),
                        checkpoint_proof: t.checkpoint.proof.clone(),
                    };
                    if let Some(env) = self.sign(Body::StateResponse(resp)) {
                        self.send(sender, &env);
                    }
                }
            }
            return;
        }
        if self.stable.seq >= req.min_seq && self.stable.seq > 0 && !self.stable.proof.is_empty() {
            let resp =
                StateResponse { snapshot: self.stable.snapshot.clone(), checkpoint_proof: self.stable.proof.clone() };
            if let Some(env) = self.sign(Body::StateResponse(resp)) {
                self.send(sender, &env);
            }
        }
        // Relay the log above what it asked for: the primary's pre-prepares and every vote we hold.
        let mut relay = vec![];
        if let Some((_, nv, _)) = &self.new_view {
            relay.push(nv.clone());
        }
        for (_, slot) in self.slots.range(req.min_seq.max(self.stable.seq + 1)..) {
            if let Some(pp) = &slot.pre_prepare {
                if Message::decode(pp.env.payload.as_ref())
                    .ok()
                    .and_then(|m| m.body)
                    .is_some_and(|b| matches!(b, Body::PrePrepare(PrePrepare { batch: Some(_), .. })))
                {
                    relay.push(pp.env.clone());
                }
            }
            relay.extend(slot.prepares.values().map(|m| m.env.clone()));
            relay.extend(slot.commits.values().map(|m| m.env.clone()));
        }
        for votes in self.checkpoint_votes.values() {
            relay.extend(votes.values().map(|v| v.env.clone()));
        }
        for env in relay {
            self.send(sender, &env);
        }
    }

    fn on_state_response(&mut self, sender: ReplicaId, resp: StateResponse) {
        let _ = sender;
        let Ok(snapshot) = crate::proto::Snapshot::decode(resp.snapshot.as_ref()) else {
            self.out.push(Action::Warning(Warning::BadStateTransfer("snapshot does not decode".into())));
            return;
        };
        if snapshot.seq <= self.state.seq {
            return;
        }
        let digest = snapshot_digest(&resp.snapshot);
        let m = self.membership.clone();
        let mut signers = BTreeSet::new();
        let mut checks = vec![];
        for env in &resp.checkpoint_proof {
            let Ok(msg) = Message::decode(env.payload.as_ref()) else { continue };
            let Some(Body::Checkpoint(c)) = &msg.body else { continue };
            if msg.epoch != m.epoch() || c.seq != snapshot.seq || c.state_digest.as_ref() != digest {
                continue;
            }
            let Some(key) = m.key(msg.sender) else { continue };
            if signers.insert(msg.sender) {
                checks.push((*key, env));
            }
        }
        let sig_checks: Vec<SignatureCheck> = checks
            .iter()
            .map(|(k, e)| SignatureCheck { key: k, domain: MESSAGE_DOMAIN, body: &e.payload, signature: &e.signature })
            .collect();
        let valid = self.verifier.verify_all(&sig_checks).into_iter().filter(|x| *x).count();
        if valid < m.quorum() {
            self.out.push(Action::Warning(Warning::BadStateTransfer(format!(
                "checkpoint proof for seq {} has {valid} valid signatures, {} needed",
                snapshot.seq,
                m.quorum()
            ))));
            return;
        }
        let state = match ReplicatedState::from_snapshot(&resp.snapshot) {
            Ok(s) => s,
            Err(e) => {
                self.out.push(Action::Warning(Warning::BadStateTransfer(e.to_string())));
                return;
            }
        };
        let seq = state.seq;
        self.counters.state_transfers += 1;
        self.out.push(Action::Persist(PersistRecord::Checkpoint {
            seq,
            snapshot: resp.snapshot.clone(),
            proof: resp.checkpoint_proof.clone(),
        }));
        self.install_state(state, resp.snapshot, resp.checkpoint_proof);
        self.out.push(Action::StateTransferred { seq });
        self.try_execute();
    }

    /// Replaces the executed state with a verified stable checkpoint.
    fn install_state(&mut self, state: ReplicatedState, snapshot: Bytes, proof: Vec<Envelope>) {
        let seq = state.seq;
        let digest = snapshot_digest(&snapshot);
        let executed: Vec<Digest> = self
            .pending
            .iter()
            .filter(|(_, p)| state.clients.get(&p.client).is_some_and(|c| c.timestamp >= p.timestamp))
            .map(|(d, _)| *d)
            .collect();
        for d in executed {
            self.remove_pending(&d);
        }
        let pending_change = state.next_membership.is_some();
        if state.membership != self.membership {
            self.membership = state.membership.clone();
            self.ledger.set_members(self.membership.n());
        }
        self.state = state;
        self.catching_up = false;
        let epoch = proof
            .first()
            .and_then(|e| Message::decode(e.payload.as_ref()).ok())
            .map_or(self.membership.epoch(), |m| m.epoch);
        self.stable = StableCheckpoint { seq, epoch, digest, snapshot, proof };
        self.own_checkpoints.clear();
        self.collect_garbage();
        if pending_change && seq % self.cfg.checkpoint_interval == 0 {
            self.switch_epoch();
        }
    }

    // ------------------------------------------------------------------ retransmission

    /// Periodic work: retransmit what may have been lost, ask for state when
    /// stuck, and let laggards from the last epoch find their way.
    fn on_retransmit_timer(&mut self) {
        self.arm_retransmit();
        self.answered_status.clear();
        if self.catching_up {
            self.request_state(1);
            return;
        }
        let stuck = self.state.seq == self.executed_at_last_tick;
        self.executed_at_last_tick = self.state.seq;
        if let Some(t) = &mut self.transition {
            if t.ticks_left == 0 {
                self.transition = None;
            } else {
                t.ticks_left -= 1;
                if let Some(v) = t.own_vote.clone() {
                    self.broadcast(&v);
                }
            }
        }
        // Our latest checkpoint vote lets laggards notice they are behind.
        let own_latest = self
            .checkpoint_votes
            .values()
            .rev()
            .find_map(|m| m.get(&self.cfg.id))
            .map(|v| v.env.clone())
            .or_else(|| self.stable.proof.iter().find(|e| open_sender(e) == Some(self.cfg.id)).cloned());
        if let Some(v) = own_latest {
            self.broadcast(&v);
        }
        if !self.active {
            if let Some(vc) = self.view_changes.get(&self.cfg.id).map(|v| v.env.clone()) {
                self.broadcast(&vc);
            }
            return;
        }
        if !stuck {
            self.idle_ticks = 0;
            return;
        }
        self.idle_ticks = self.idle_ticks.saturating_add(1);
        // Without progress, resend our votes for every slot not yet stable
        // (others may have lost them), backing off: ticks 1, 2, 4, ... 64, then every 64.
        let backoff_due = self.idle_ticks.is_power_of_two() || self.idle_ticks % 64 == 0;
        let primary = self.membership.primary(self.view) == self.cfg.id;
        if backoff_due && !self.slots.is_empty() {
            if primary {
                if let Some((_, nv, _)) = self.new_view.clone() {
                    self.broadcast(&nv);
                }
            }
            let mut resend = vec![];
            for slot in self.slots.values() {
                if let Some(pp) = &slot.pre_prepare {
                    if primary
                        && Message::decode(pp.env.payload.as_ref()).ok().is_some_and(|m| {
                            matches!(m.body, Some(Body::PrePrepare(PrePrepare { batch: Some(_), .. })))
                        })
                    {
                        resend.push(pp.env.clone());
                    }
                }
                resend.extend(slot.prepares.get(&self.cfg.id).map(|m| m.env.clone()));
                resend.extend(slot.commits.get(&self.cfg.id).map(|m| m.env.clone()));
            }
            for env in resend {
                self.broadcast(&env);
            }
        }
        // Ask the others for what we miss: they answer with state and their log.
        let has_work = !self.pending.is_empty() || self.slots.keys().any(|s| *s > self.state.seq);
        if has_work || self.state.seq < self.checkpoint_claims.values().copied().max().unwrap_or(0) {
            let from = self.state.seq + 1;
            self.request_state(from);
        }
    }
}

fn open_sender(env: &Envelope) -> Option<ReplicaId> {
    Message::decode(env.payload.as_ref()).ok().map(|m| m.sender)
}

/// Decodes a signed request and its body, checking the fields the core needs.
pub fn decode_request(bytes: &[u8]) -> Result<(SignedRequest, RequestBody), String> {
    let req = SignedRequest::decode(bytes).map_err(|e| format!("request does not decode: {e}"))?;
    let body = RequestBody::decode(req.body.as_ref()).map_err(|e| format!("request body does not decode: {e}"))?;
    if body.client.len() != 32 {
        return Err(format!("client key must be 32 bytes, got {}", body.client.len()));
    }
    if body.operation.as_ref().and_then(|o| o.kind.as_ref()).is_none() {
        return Err("request has no operation".into());
    }
    if req.signature.len() != 64 {
        return Err(format!("signature must be 64 bytes, got {}", req.signature.len()));
    }
    Ok((req, body))
}

fn is_membership_request(bytes: &Bytes) -> bool {
    decode_request(bytes)
        .ok()
        .and_then(|(_, b)| b.operation)
        .is_some_and(|o| matches!(o.kind, Some(OpKind::Membership(_))))
}

#[cfg(test)]
mod tests;
