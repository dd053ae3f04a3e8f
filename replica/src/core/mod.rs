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
//! all persists of one step into one fsync (group commit). The exception are
//! records for which [`PersistRecord::must_precede_sends`] is false
//! (committed batches, stable checkpoints): they must be written in order
//! with the others, but later actions need not wait for them, so a crash may
//! lose a suffix of them after the last record of another kind.
//!
//! Where each protocol step lives:
//! - client requests, batching, pre-prepare: `requests.rs` (`on_client_request`, `propose`);
//! - admission of peer messages, prepare / commit, evidence, execution: `ordering.rs`
//!   (`prefilter`, `on_pre_prepare`, `on_vote`, `check_slot`, `record_evidence`, `try_execute`);
//! - checkpoints, garbage collection, membership epochs: `checkpoint.rs`
//!   (`make_checkpoint`, `check_stable`, `make_stable`, `switch_epoch`);
//! - view change: `view_change.rs` (`start_view_change`, `validate_view_change`,
//!   `on_new_view`, and the pure [`view_change::plan_new_view`]);
//! - state transfer and retransmission: `catch_up.rs`;
//! - timers, signing, recovery: this file; evidence checking: [`evidence::verify_evidence`];
//! - memory: [`ledger::Ledger`].

mod catch_up;
mod checkpoint;
pub mod client;
pub mod evidence;
pub mod ledger;
mod ordering;
mod replies;
mod requests;
mod suspicion;
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
    message::Body, operation::Kind as OpKind, Batch, Checkpoint, Commit, Envelope, Evidence, Forward, MembershipConfig,
    Message, NewView, OpResult, PrePrepare, Prepare, PreparedCertificate, Reply, RequestBody, SignedRequest,
    StateRequest, StateResponse, Suspect, ViewChange,
};
use crate::state::{rejected, snapshot_digest, ClientRecord, ReplicatedState};
use evidence::{make_evidence, vote_of, VoteSlot};
use ledger::{Caps, Category, Charge, Ledger};
use view_change::{batch_digest, ViewChangeInfo};

/// Bytes one request adds to an encoded batch (`Batch.requests` is field 1:
/// a one-byte key, the length as a varint, then the request). The primary
/// counts these, not bare request sizes, so that a batch of many small
/// requests stays within the limit its backups check.
pub fn batch_entry_bytes(request_len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(request_len as u64) + request_len
}

/// Checkpoint interval K when none is configured.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 64;

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
    /// Most bytes of one encoded batch (its requests and their framing).
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
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            watermark_window: 2 * DEFAULT_CHECKPOINT_INTERVAL,
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

    /// Largest encoded batch this replica accepts from a primary: twice its
    /// own limit. Replicas derive `max_batch_bytes` from their own memory
    /// budget, so during a rolling resize a primary may legitimately batch
    /// more than a backup would; the log ledger still bounds what the backup
    /// holds from it.
    pub fn max_followed_batch_bytes(&self) -> usize {
        self.max_batch_bytes.saturating_mul(2)
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
    /// Several client requests, taken in order before the primary batches
    /// (the same as one `Client` event each, except that the primary proposes
    /// once, after all of them, instead of after each).
    Clients(Vec<Bytes>),
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
    /// A NEW-VIEW this replica entered (sent or accepted), so that after a
    /// restart it can rebuild the view's log and hand the NEW-VIEW to others.
    NewView(Envelope),
    /// A committed batch (before it is executed).
    Committed { seq: u64, view: u64, batch: Batch },
    /// A stable checkpoint: the state snapshot and its proof. Records before
    /// it may be discarded.
    Checkpoint { seq: u64, snapshot: Bytes, proof: Vec<Envelope> },
}

impl PersistRecord {
    /// Whether actions after this record must wait until it is durable.
    /// Committed batches and stable checkpoints need not: they can be
    /// rebuilt from the records of the other kinds (prepared certificates,
    /// what this replica signed, checkpoint proofs of others) and from other
    /// replicas, so a driver may let them reach the disk later, in order,
    /// and a crash may lose a suffix of them that follows the last record of
    /// another kind.
    pub fn must_precede_sends(&self) -> bool {
        !matches!(self, PersistRecord::Committed { .. } | PersistRecord::Checkpoint { .. })
    }
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
    /// Deliver a reply to a client: an encoded [`crate::proto::SignedReply`]
    /// (the reply, its path in the batch's reply tree, the signed root).
    Reply { client: Bytes, timestamp: u64, reply: Bytes },
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
    /// The replica's primary did not order a request in time: it asks the
    /// others for view `view` and keeps working in its view meanwhile.
    PrimarySuspected { view: u64 },
    /// A quorum suspects the primary: the replica left its view for `view`.
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
    /// Times this replica suspected its primary (most never became a view change).
    pub suspicions: u64,
    /// Client requests relayed to the primary after a timeout.
    pub forwarded_requests: u64,
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

/// What a replica keeps from the epoch it left, to bring laggards across:
/// kept until the next epoch, so a member that was away during the switch
/// (down, cut off) still finds its way into the new one.
#[derive(Clone, Debug)]
struct Transition {
    membership: Membership,
    checkpoint: StableCheckpoint,
    /// This replica's own old-epoch checkpoint vote at the boundary, re-sent
    /// for the first `resend_ticks` retransmission periods.
    own_vote: Option<Envelope>,
    resend_ticks: u32,
}

/// A peer's suspicion of the primary as held here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeldSuspicion {
    view: u64,
    /// Retransmission periods since it arrived (a suspecting replica resends
    /// every period; one that stopped is forgotten after [`SUSPICION_TTL_TICKS`]).
    age: u32,
}

/// Retransmission periods a peer's suspicion counts without being resent.
const SUSPICION_TTL_TICKS: u32 = 4;

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
    /// The highest view each member (this one included) asked for with a
    /// SUSPECT above the current view, and how many retransmission periods
    /// ago it came: at most one entry per member.
    suspicions: BTreeMap<ReplicaId, HeldSuspicion>,
    /// Our own latest SUSPECT, resent until the view changes.
    own_suspicion: Option<(u64, Envelope)>,
    /// The pending request last relayed to the primary (its next timeout
    /// raises a suspicion instead).
    forwarded: Option<Digest>,
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
            suspicions: BTreeMap::new(),
            own_suspicion: None,
            forwarded: None,
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
            // What it signed, and the NEW-VIEWs it entered (its own included).
            let (PersistRecord::Signed(env) | PersistRecord::NewView(env)) = rec else { continue };
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
        } else if max_view > 0 {
            // Rebuild the view from the NEW-VIEW it entered (the guard makes
            // every vote it re-signs identical to the one before).
            let nv = records.iter().rev().find_map(|rec| match rec {
                PersistRecord::NewView(env) => Message::decode(env.payload.as_ref()).ok().and_then(|m| match m.body {
                    Some(Body::NewView(nv)) if nv.view == max_view && m.epoch == r.membership.epoch() => {
                        Some((env.clone(), m.sender, nv))
                    }
                    _ => None,
                }),
                _ => None,
            });
            if let Some((env, sender, nv)) = nv {
                r.view = max_view.saturating_sub(1);
                r.active = false;
                r.on_new_view(env, sender, nv);
            }
        }
        // The primary's own pre-prepares of its view, with their batches.
        if r.active && r.membership.primary(r.view) == r.cfg.id {
            for rec in records {
                let PersistRecord::Signed(env) = rec else { continue };
                let Ok(msg) = Message::decode(env.payload.as_ref()) else { continue };
                let Some(Body::PrePrepare(pp)) = msg.body else { continue };
                let Some(batch) = pp.batch else { continue };
                let in_window = pp.seq > r.stable.seq && pp.seq <= r.stable.seq + r.cfg.watermark_window;
                if msg.epoch != r.membership.epoch() || pp.view != r.view || !in_window || r.slots.contains_key(&pp.seq)
                {
                    continue;
                }
                let Some(digest) = digest_of(&pp.digest) else { continue };
                let size = env_size(env) + batch.requests.iter().map(|x| x.len()).sum::<usize>();
                let charge = r.ledger.charge(Category::Log, Some(r.cfg.id), size);
                r.set_pre_prepare(
                    pp.seq,
                    SlotPrePrepare { env: env.clone(), digest, requests: batch.requests, charge },
                );
            }
            let seqs: Vec<u64> = r.slots.keys().copied().collect();
            for s in seqs {
                r.check_slot(s);
            }
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
    /// Whether a new member still waits for its first state transfer.
    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }
    /// Digest of the snapshot at the last stable checkpoint.
    pub fn stable_digest(&self) -> Digest {
        self.stable.digest
    }
    /// The highest checkpoint that f+1 other replicas of this epoch claim to
    /// have reached (so at least one honest replica did), 0 when unknown.
    pub fn claimed_checkpoint(&self) -> u64 {
        let mut claims: Vec<u64> =
            self.checkpoint_claims.iter().filter(|(r, _)| **r != self.cfg.id).map(|(_, s)| *s).collect();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        claims.get(self.membership.weak_quorum() - 1).copied().unwrap_or(0)
    }
    /// Caught up: has state (no pending first state transfer), is not
    /// retired, and is at most one checkpoint interval behind what f+1 others claim.
    pub fn is_caught_up(&self) -> bool {
        !self.catching_up && !self.retired && self.state.seq + self.cfg.checkpoint_interval >= self.claimed_checkpoint()
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
            let requests = match event {
                Event::Client(bytes) => vec![bytes],
                Event::Clients(all) => all,
                _ => vec![],
            };
            for bytes in requests {
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
            Event::Clients(bs) => {
                for b in bs {
                    self.on_client_request(b);
                }
            }
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
        // A NEW-VIEW is persisted by `install_new_view`, before it is sent.
        Some(self.key.seal(&msg))
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

    pub(super) fn watch_satisfied(&self) -> bool {
        match self.vc_watch {
            None => true,
            Some(Watch::Request(d)) => !self.pending.contains_key(&d),
            Some(Watch::Seq(s)) => self.state.seq >= s,
            Some(Watch::Stable(s)) => self.stable.seq >= s,
        }
    }

    fn on_view_change_timer(&mut self) {
        if self.active && self.watch_satisfied() {
            // What we waited for arrived: we no longer suspect anyone.
            self.withdraw_suspicion();
            self.arm_request_timer();
            return;
        }
        if self.active {
            let is_primary = self.membership.primary(self.view) == self.cfg.id;
            match self.vc_watch {
                // First timeout of a request: the client may have reached
                // only us, so relay what waits to the primary and give it
                // another timeout.
                Some(Watch::Request(d)) if !is_primary && self.forwarded != Some(d) => {
                    self.forwarded = Some(d);
                    self.forward_pending();
                    self.arm_vc_timer();
                }
                _ => {
                    self.suspect(self.view.saturating_add(1));
                    self.arm_vc_timer();
                }
            }
            return;
        }
        // In a view change: a replica gives up on the new view only once a
        // quorum reached it (its primary had its chance); otherwise it waits
        // there, so the others catch up instead of chasing it. Byzantine
        // replicas alone (f of them) cannot make it move on. Even then it
        // only suspects the new primary and keeps waiting for its NEW-VIEW
        // (the others may have it): it moves on once a quorum suspects too.
        let here = self.view_changes.values().filter(|v| v.view >= self.view).count();
        if here >= self.membership.quorum() {
            self.suspect(self.view.saturating_add(1));
        } else if let Some(vc) = self.view_changes.get(&self.cfg.id).map(|v| v.env.clone()) {
            self.broadcast(&vc);
        }
        if !self.active {
            self.arm_vc_timer();
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
