//! A deterministic simulator: n replicas, clients and an administrator over
//! a virtual network, all driven by one seed.
//!
//! Until the "global stabilisation time" (GST) the network delays, drops,
//! duplicates and reorders messages, partitions replicas, and crashes and
//! restarts them (with their disk, or replaced by a fresh key through a
//! membership change when the disk is lost), while up to f Byzantine
//! replicas attack. After GST the network is reliable and every crashed
//! replica is back; every client must then finish within a bounded virtual
//! time. The [`checker`] watches safety after every step and at the end.
//! The same seed always replays the same run.

pub mod byzantine;
pub mod checker;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt::Write as _;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::core::client::ClientCore;
use crate::core::evidence::{verify_evidence, vote_of, VoteSlot};
use crate::core::{Action, Config, Event, PersistRecord, Replica, TimerKind};
use crate::crypto::{Keypair, MemoVerifier};
use crate::membership::{Membership, ReplicaId};
use crate::proto::{
    operation::Kind as OpKind, CompareAndSwap, Delete, Get, Member, MembershipChange, MembershipConfig, Operation, Put,
};
use byzantine::{ByzOut, Byzantine, Strategy};
use checker::{Checker, ClientOp};

/// Which faults a run injects.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultMix {
    pub name: &'static str,
    /// Probability (per mille) that a message is dropped before GST.
    pub drop_permille: u32,
    /// Probability (per mille) that a message is delivered twice.
    pub duplicate_permille: u32,
    /// Largest extra delay (ms) before GST; also reorders.
    pub max_jitter_ms: u64,
    pub partitions: bool,
    pub crashes: bool,
    /// Honest replicas lose their disk and are replaced by a fresh key.
    pub replacements: bool,
    /// Byzantine replicas and their strategies (at most f).
    pub byzantine: Vec<Strategy>,
    /// A tight memory budget.
    pub tight_budget: bool,
}

/// The fault mixes, cycled through by seed.
pub fn fault_mix(seed: u64, f: usize, rng: &mut ChaCha8Rng) -> FaultMix {
    let base = FaultMix {
        name: "clean",
        drop_permille: 0,
        duplicate_permille: 0,
        max_jitter_ms: 5,
        partitions: false,
        crashes: false,
        replacements: false,
        byzantine: vec![],
        tight_budget: false,
    };
    let lossy = FaultMix {
        drop_permille: rng.gen_range(10..150),
        duplicate_permille: rng.gen_range(0..100),
        max_jitter_ms: rng.gen_range(10..300),
        ..base.clone()
    };
    let one_strategy = Strategy::ALL[rng.gen_range(0..Strategy::ALL.len())];
    let strategies: Vec<Strategy> = (0..f).map(|_| Strategy::ALL[rng.gen_range(0..Strategy::ALL.len())]).collect();
    match seed % 10 {
        0 => base,
        1 => FaultMix { name: "lossy", ..lossy },
        2 => FaultMix { name: "partitions", partitions: true, ..lossy },
        3 => FaultMix { name: "crashes", crashes: true, ..lossy },
        4 => FaultMix { name: "byzantine", byzantine: vec![one_strategy; f], ..lossy },
        5 => FaultMix {
            name: "byzantine+crashes+partitions",
            byzantine: vec![one_strategy; f],
            crashes: true,
            partitions: true,
            ..lossy
        },
        6 => FaultMix { name: "replacement", replacements: true, ..lossy },
        7 => FaultMix { name: "mixed-byzantine", byzantine: strategies, partitions: true, ..lossy },
        8 => FaultMix { name: "byzantine+tight-budget", byzantine: vec![one_strategy; f], tight_budget: true, ..lossy },
        _ => FaultMix {
            name: "everything",
            byzantine: strategies,
            crashes: true,
            partitions: true,
            replacements: true,
            tight_budget: true,
            ..lossy
        },
    }
}

/// Parameters of one run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub n: usize,
    pub seed: u64,
    pub clients: usize,
    pub ops_per_client: usize,
    /// Print a readable trace of every event.
    pub trace: bool,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub n: usize,
    pub mix: String,
    pub violations: Vec<String>,
    pub executed_seqs: usize,
    pub completed_ops: usize,
    pub evidence: usize,
    pub forged_evidence_rejected: usize,
    pub view_changes: u64,
    pub state_transfers: u64,
    pub replacements: usize,
    pub peak_memory_ratio: f64,
    pub peak_memory_bytes: usize,
    pub peak_memory_budget: usize,
    pub virtual_ms: u64,
    pub trace: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    Replica(ReplicaId),
    Client(usize),
}

#[derive(Debug)]
enum Payload {
    Peer(Bytes),
    ClientRequest(Bytes),
    Reply(Bytes),
    Rejected,
    Timer(TimerKind, u64),
    ClientTimer(u64),
    ByzTick,
    Crash,
    Restart,
    Replace,
}

struct Scheduled {
    at: u64,
    order: u64,
    to: Node,
    payload: Payload,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

struct SimClient {
    core: ClientCore,
    ops_left: usize,
    current: Option<usize>,
    admin: bool,
    timer_gen: u64,
    retry_ms: u64,
}

enum Slot {
    Honest(Box<Replica>),
    Byzantine(Box<Replica>, Byzantine),
    Down,
}

const LIVENESS_MS: u64 = 120_000;
/// After the last operation, how long the run goes on before every honest
/// replica must be back in a working view (a few maximal view-change timeouts).
const SETTLE_MS: u64 = 60_000;
const KEYS: [&str; 4] = ["a", "b", "c", "d"];

struct Sim {
    cfg: SimConfig,
    mix: FaultMix,
    rng: ChaCha8Rng,
    now: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    replicas: BTreeMap<ReplicaId, Slot>,
    keys: BTreeMap<ReplicaId, Keypair>,
    disks: BTreeMap<ReplicaId, Vec<PersistRecord>>,
    byzantine_ids: Vec<ReplicaId>,
    memberships: BTreeMap<u64, Membership>,
    genesis: Membership,
    admin_key: Keypair,
    clients: Vec<SimClient>,
    client_index: HashMap<Bytes, usize>,
    partitioned: Vec<ReplicaId>,
    checker: Checker,
    evidence: usize,
    forged_rejected: usize,
    replacements: usize,
    replacing: Option<ReplicaId>,
    key_counter: u8,
    verifier: MemoVerifier,
    /// Global stabilisation time of this run (ms): faults happen before it.
    gst: u64,
    trace: String,
}

fn replica_config(id: ReplicaId, n: usize, tight: bool) -> Config {
    let budget = if tight { 1024 * 1024 } else { 4 * 1024 * 1024 };
    let mut c = Config::with_budget(id, n, budget);
    c.checkpoint_interval = 8;
    c.watermark_window = 16;
    c.derive_limits(n, budget);
    c.max_batch_requests = 4;
    c.max_inflight_batches = 4;
    c.view_change_timeout_ms = 500;
    c.max_view_change_timeout_ms = 8_000;
    c.retransmit_interval_ms = 250;
    c.view_window = 8;
    c.max_pending_per_client = 2;
    c
}

fn secret(seed: u64, tag: u8, i: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = tag;
    s[9] = i;
    crate::crypto::sha256(&[&s])
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ cfg.n as u64);
        let f = (cfg.n - 1) / 3;
        let mix = fault_mix(cfg.seed, f, &mut rng);
        let gst = rng.gen_range(4_000..12_000);
        let keys: BTreeMap<ReplicaId, Keypair> =
            (0..cfg.n as u32).map(|i| (i, Keypair::from_secret(secret(cfg.seed, 1, i as u8)))).collect();
        let admin_key = Keypair::from_secret(secret(cfg.seed, 2, 0));
        let genesis = Membership::new(MembershipConfig {
            epoch: 1,
            members: keys
                .iter()
                .map(|(id, k)| Member {
                    id: *id,
                    public_key: Bytes::copy_from_slice(&k.public_bytes()),
                    address: format!("replica-{id}"),
                })
                .collect(),
            admin_key: Bytes::copy_from_slice(&admin_key.public_bytes()),
        })
        .expect("generated membership is valid");
        // Byzantine replicas: random distinct ids.
        let mut ids: Vec<ReplicaId> = (0..cfg.n as u32).collect();
        let mut byzantine_ids = vec![];
        for _ in 0..mix.byzantine.len() {
            let i = rng.gen_range(0..ids.len());
            byzantine_ids.push(ids.remove(i));
        }
        byzantine_ids.sort_unstable();
        let mut sim = Sim {
            mix,
            rng,
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            replicas: BTreeMap::new(),
            keys,
            disks: BTreeMap::new(),
            byzantine_ids,
            memberships: BTreeMap::from([(1, genesis.clone())]),
            genesis,
            admin_key,
            clients: vec![],
            client_index: HashMap::new(),
            partitioned: vec![],
            checker: Checker::default(),
            evidence: 0,
            forged_rejected: 0,
            replacements: 0,
            replacing: None,
            key_counter: 0,
            verifier: MemoVerifier::default(),
            gst,
            trace: String::new(),
            cfg,
        };
        sim.boot();
        sim
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let _ = writeln!(self.trace, "{:>7}ms {}", self.now, line());
        }
    }

    fn schedule(&mut self, after: u64, to: Node, payload: Payload) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled { at: self.now + after, order: self.order, to, payload }));
    }

    fn boot(&mut self) {
        let strategies = self.mix.byzantine.clone();
        for id in 0..self.cfg.n as u32 {
            let cfg = replica_config(id, self.cfg.n, self.mix.tight_budget);
            let key = self.keys[&id].clone();
            let (r, actions) = Replica::new(cfg, key.clone(), self.genesis.clone(), Box::new(self.verifier.sharing()))
                .expect("simulator configuration is valid");
            let slot = match self.byzantine_ids.iter().position(|b| *b == id) {
                Some(i) => {
                    self.schedule(50, Node::Replica(id), Payload::ByzTick);
                    Slot::Byzantine(Box::new(r), Byzantine::new(id, strategies[i], key))
                }
                None => Slot::Honest(Box::new(r)),
            };
            self.replicas.insert(id, slot);
            self.disks.insert(id, vec![]);
            self.apply_actions(id, actions);
        }
        for c in 0..self.cfg.clients {
            let key = Keypair::from_secret(secret(self.cfg.seed, 3, c as u8));
            self.add_client(key, self.cfg.ops_per_client, false);
        }
        // Faults before GST.
        let honest: Vec<ReplicaId> = (0..self.cfg.n as u32).filter(|i| !self.byzantine_ids.contains(i)).collect();
        if self.mix.crashes {
            for _ in 0..self.rng.gen_range(1..4) {
                let victim = honest[self.rng.gen_range(0..honest.len())];
                let at = self.rng.gen_range(500..self.gst.saturating_sub(1_000).max(600));
                let down = self.rng.gen_range(200..4_000);
                self.schedule(at, Node::Replica(victim), Payload::Crash);
                self.schedule(at + down, Node::Replica(victim), Payload::Restart);
            }
        }
        if self.mix.partitions {
            let at = self.rng.gen_range(500..5_000);
            self.schedule(at, Node::Client(usize::MAX), Payload::Crash);
        }
        if self.mix.replacements && self.byzantine_ids.len() < (self.cfg.n - 1) / 3 {
            let victim = honest[self.rng.gen_range(0..honest.len())];
            let at = self.rng.gen_range(500..self.gst);
            self.schedule(at, Node::Replica(victim), Payload::Replace);
        }
    }

    fn add_client(&mut self, key: Keypair, ops: usize, admin: bool) -> usize {
        let idx = self.clients.len();
        let core = ClientCore::new(key, self.current_membership(), 0);
        self.client_index.insert(core.id(), idx);
        self.clients.push(SimClient { core, ops_left: ops, current: None, admin, timer_gen: 0, retry_ms: 400 });
        if !admin {
            let start = self.rng.gen_range(0..200);
            self.schedule(start, Node::Client(idx), Payload::ClientTimer(0));
        }
        idx
    }

    fn current_membership(&self) -> Membership {
        self.memberships.values().next_back().expect("genesis exists").clone()
    }

    fn is_honest(&self, id: ReplicaId) -> bool {
        !self.byzantine_ids.contains(&id)
    }

    // ------------------------------------------------------------------ network

    fn deliver(&mut self, from: Node, to: Node, payload: Payload) {
        let before_gst = self.now < self.gst;
        if before_gst {
            if let (Node::Replica(a), Node::Replica(b)) = (from, to) {
                if self.partitioned.contains(&a) != self.partitioned.contains(&b) {
                    return;
                }
            }
            if self.rng.gen_range(0..1000) < self.mix.drop_permille {
                return;
            }
        }
        let jitter = if before_gst { self.mix.max_jitter_ms } else { 5 };
        let delay = 1 + self.rng.gen_range(0..=jitter);
        if before_gst && self.rng.gen_range(0..1000) < self.mix.duplicate_permille {
            let dup = match &payload {
                Payload::Peer(b) => Some(Payload::Peer(b.clone())),
                Payload::ClientRequest(b) => Some(Payload::ClientRequest(b.clone())),
                Payload::Reply(b) => Some(Payload::Reply(b.clone())),
                _ => None,
            };
            if let Some(d) = dup {
                let extra = self.rng.gen_range(0..=jitter);
                self.schedule(delay + extra, to, d);
            }
        }
        self.schedule(delay, to, payload);
    }

    fn peers_of(&self, id: ReplicaId) -> Vec<ReplicaId> {
        let m = match self.replicas.get(&id) {
            Some(Slot::Honest(r)) | Some(Slot::Byzantine(r, _)) => r.membership().clone(),
            _ => self.current_membership(),
        };
        m.ids().filter(|p| *p != id).collect()
    }

    // ------------------------------------------------------------------ replicas

    fn apply_actions(&mut self, id: ReplicaId, actions: Vec<Action>) {
        if matches!(self.replicas.get(&id), Some(Slot::Byzantine(..))) {
            let peers = self.peers_of(id);
            let Some(Slot::Byzantine(r, byz)) = self.replicas.get_mut(&id) else { return };
            let epoch = r.membership().epoch();
            let _ = epoch;
            // Timers still drive the inner core.
            let timers: Vec<Action> =
                actions.iter().filter(|a| matches!(a, Action::SetTimer { .. })).cloned().collect();
            let outs = byz.corrupt(actions, &peers, &mut self.rng);
            for t in timers {
                if let Action::SetTimer { kind, generation, after_ms } = t {
                    self.schedule(after_ms, Node::Replica(id), Payload::Timer(kind, generation));
                }
            }
            self.apply_byzantine(id, outs);
            return;
        }
        for a in actions {
            match a {
                Action::Send { to, envelope } => {
                    self.deliver(Node::Replica(id), Node::Replica(to), Payload::Peer(envelope))
                }
                Action::Broadcast { envelope } => {
                    for p in self.peers_of(id) {
                        self.deliver(Node::Replica(id), Node::Replica(p), Payload::Peer(envelope.clone()));
                    }
                }
                Action::Reply { client, reply, .. } => {
                    if let Some(c) = self.client_index.get(&client).copied() {
                        self.deliver(Node::Replica(id), Node::Client(c), Payload::Reply(reply));
                    }
                }
                Action::Reject { client, .. } => {
                    if let Some(c) = self.client_index.get(&client).copied() {
                        self.deliver(Node::Replica(id), Node::Client(c), Payload::Rejected);
                    }
                }
                Action::Persist(rec) => self.disks.entry(id).or_default().push(rec),
                Action::SetTimer { kind, generation, after_ms } => {
                    self.schedule(after_ms, Node::Replica(id), Payload::Timer(kind, generation))
                }
                Action::Executed { seq, digest, requests, view } => {
                    self.log(|| format!("r{id} executed seq {seq} view {view} ({} requests)", requests.len()));
                    self.checker.on_executed(id, seq, digest, &requests);
                }
                Action::StableCheckpoint { seq, digest } => {
                    let epoch = self.replica(id).map_or(0, |r| r.membership().epoch());
                    self.log(|| format!("r{id} stable checkpoint {seq}"));
                    self.checker.on_stable(id, epoch, seq, digest);
                }
                Action::Evidence(e) => {
                    self.evidence += 1;
                    let valid = match self.memberships.get(&e.epoch) {
                        Some(m) => verify_evidence(&e, m).map_err(|x| x.to_string()),
                        None => Err(format!("unknown epoch {}", e.epoch)),
                    };
                    let byz = self.byzantine_ids.contains(&e.offender);
                    self.log(|| format!("r{id} EVIDENCE kind {} against r{} ({valid:?})", e.kind, e.offender));
                    self.checker.on_evidence_result(id, e.offender, valid, byz);
                }
                Action::NewView { view, primary } => {
                    self.log(|| format!("r{id} entered view {view} (primary r{primary})"))
                }
                Action::PrimarySuspected { view } => {
                    self.log(|| format!("r{id} suspects its primary, asks for view {view}"))
                }
                Action::ViewChangeStarted { view } => self.log(|| format!("r{id} starts view change to {view}")),
                Action::MembershipChanged { epoch } => {
                    let m = self.replica(id).map(|r| r.membership().clone());
                    if let Some(m) = m {
                        self.memberships.entry(epoch).or_insert(m.clone());
                        for c in &mut self.clients {
                            if c.core.membership().epoch() < epoch {
                                c.core.set_membership(m.clone());
                            }
                        }
                    }
                    self.log(|| format!("r{id} membership epoch {epoch}"));
                }
                Action::StateTransferred { seq } => self.log(|| format!("r{id} state transfer to seq {seq}")),
                Action::Retired => self.log(|| format!("r{id} retired")),
                Action::Warning(w) => self.log(|| format!("r{id} warning {w:?}")),
            }
        }
        self.check_memory(id);
    }

    fn replica(&self, id: ReplicaId) -> Option<&Replica> {
        match self.replicas.get(&id) {
            Some(Slot::Honest(r)) => Some(r),
            _ => None,
        }
    }

    fn check_memory(&mut self, id: ReplicaId) {
        if let Some(r) = self.replica(id) {
            let (acc, rec, budget) = (r.ledger().total(), r.recount(), r.ledger().budget());
            self.checker.on_memory(id, acc, rec, budget);
        }
    }

    fn apply_byzantine(&mut self, id: ReplicaId, outs: Vec<ByzOut>) {
        for o in outs {
            match o {
                ByzOut::To(t, b) => self.deliver(Node::Replica(id), Node::Replica(t), Payload::Peer(b)),
                ByzOut::ClientTo(t, b) => self.deliver(Node::Replica(id), Node::Replica(t), Payload::ClientRequest(b)),
                ByzOut::ForgedEvidence { against, evidence } => {
                    let m = self.memberships.get(&evidence.epoch).cloned().unwrap_or_else(|| self.current_membership());
                    if self.is_honest(against) && verify_evidence(&evidence, &m).is_ok() {
                        self.checker.on_forged_evidence_verified(against);
                    } else {
                        self.forged_rejected += 1;
                    }
                }
            }
        }
    }

    /// If `bytes` is a validly signed vote that conflicts with a vote the
    /// honest replica `id` holds from the same sender, the slot and sender:
    /// the replica must report evidence when it receives it.
    fn expected_evidence(&self, id: ReplicaId, bytes: &Bytes) -> Option<(VoteSlot, ReplicaId)> {
        use crate::proto::{Envelope, Message};
        use prost::Message as _;
        let r = self.replica(id)?;
        let env = Envelope::decode(bytes.as_ref()).ok()?;
        let msg = Message::decode(env.payload.as_ref()).ok()?;
        if msg.epoch != r.membership().epoch() {
            return None;
        }
        let (slot, digest) = vote_of(&msg)?;
        let held = r.held_vote(msg.sender, slot)?;
        if held == digest {
            return None;
        }
        let key = r.membership().key(msg.sender)?;
        crate::crypto::verify(key, crate::crypto::MESSAGE_DOMAIN, &env.payload, &env.signature).ok()?;
        Some((slot, msg.sender))
    }

    fn step_replica(&mut self, id: ReplicaId, event: Event) {
        let expect: Vec<(VoteSlot, ReplicaId)> = match &event {
            Event::Peer(b) => self.expected_evidence(id, b).into_iter().collect(),
            Event::Peers(bs) => bs.iter().filter_map(|b| self.expected_evidence(id, b)).collect(),
            _ => vec![],
        };
        let position = |r: &Replica| (r.membership().epoch(), r.view(), r.stable_checkpoint());
        let before = self.replica(id).map(position);
        let actions = match self.replicas.get_mut(&id) {
            Some(Slot::Honest(r)) => r.step(event),
            Some(Slot::Byzantine(r, byz)) => {
                let byz_ids = self.byzantine_ids.clone();
                match &event {
                    Event::Peer(b) => byz.observe(b, |s| !byz_ids.contains(&s)),
                    Event::Peers(bs) => bs.iter().for_each(|b| byz.observe(b, |s| !byz_ids.contains(&s))),
                    _ => {}
                }
                r.step(event)
            }
            _ => return,
        };
        self.apply_actions(id, actions);
        // A batch may move the epoch, view or window under its later
        // messages, which then no longer count: evidence is expected only
        // when none of them moved.
        if self.replica(id).map(position) != before {
            return;
        }
        for (slot, offender) in expect {
            let reported = self.replica(id).is_some_and(|r| r.has_evidence_against(offender, slot));
            if !reported {
                self.checker.violations.push(format!(
                    "evidence: replica {id} received conflicting {slot:?} votes from replica {offender} and reported nothing (at {} ms)",
                    self.now
                ));
            }
        }
    }

    fn crash(&mut self, id: ReplicaId) {
        if matches!(self.replicas.get(&id), Some(Slot::Honest(_))) {
            // Records nothing waited for (`PersistRecord::must_precede_sends`) may not
            // have reached the disk: drop a random part of the suffix they form. A
            // separate generator keeps the run's own random sequence as it was.
            let disk = self.disks.entry(id).or_default();
            let tail = disk.iter().rev().take_while(|r| !r.must_precede_sends()).count();
            let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ self.now.rotate_left(17) ^ u64::from(id) << 56);
            let lost = if tail == 0 { 0 } else { rng.gen_range(0..=tail) };
            disk.truncate(disk.len() - lost);
            self.log(|| format!("r{id} CRASH (lost {lost} of {tail} unsynced records)"));
            self.replicas.insert(id, Slot::Down);
        }
    }

    fn restart(&mut self, id: ReplicaId) {
        if !matches!(self.replicas.get(&id), Some(Slot::Down)) || self.replacing == Some(id) {
            return;
        }
        let cfg = replica_config(id, self.cfg.n, self.mix.tight_budget);
        let key = self.keys[&id].clone();
        let records = self.disks.get(&id).cloned().unwrap_or_default();
        match Replica::recover(cfg, key, self.genesis.clone(), Box::new(self.verifier.sharing()), &records) {
            Ok((r, actions)) => {
                self.log(|| format!("r{id} RESTART from {} records at seq {}", records.len(), r.last_executed()));
                self.replicas.insert(id, Slot::Honest(Box::new(r)));
                self.apply_actions(id, actions);
            }
            Err(e) => self.checker.violations.push(format!("recovery: replica {id} failed to recover: {e}")),
        }
    }

    /// The disk of an honest replica is lost: the administrator replaces its
    /// key through a membership change, and a fresh replica joins.
    fn replace(&mut self, id: ReplicaId) {
        if self.replacing.is_some() || !matches!(self.replicas.get(&id), Some(Slot::Honest(_))) {
            return;
        }
        self.log(|| format!("r{id} DISK LOST: replacing its key"));
        self.replicas.insert(id, Slot::Down);
        self.disks.insert(id, vec![]);
        self.replacing = Some(id);
        self.key_counter += 1;
        let new_key = Keypair::from_secret(secret(self.cfg.seed, 4, self.key_counter));
        let current = self.current_membership();
        let members: Vec<Member> = current
            .members()
            .iter()
            .map(|m| {
                if m.id == id {
                    Member { public_key: Bytes::copy_from_slice(&new_key.public_bytes()), ..m.clone() }
                } else {
                    m.clone()
                }
            })
            .collect();
        self.keys.insert(id, new_key);
        let op =
            Operation { kind: Some(OpKind::Membership(MembershipChange { from_epoch: current.epoch(), members })) };
        let admin = self.add_client(self.admin_key.clone(), 0, true);
        let req = self.clients[admin].core.submit(op.clone());
        self.record_invocation(admin, op);
        self.broadcast_request(admin, req);
        self.arm_client_timer(admin);
    }

    /// Starts the replacement replica once the new epoch is in force somewhere.
    fn maybe_start_replacement(&mut self) {
        let Some(id) = self.replacing else { return };
        let newest = self.current_membership();
        if newest.key(id).is_some_and(|k| *k == self.keys[&id].public()) {
            let cfg = replica_config(id, self.cfg.n, self.mix.tight_budget);
            let (r, actions) = Replica::join(cfg, self.keys[&id].clone(), newest, Box::new(self.verifier.sharing()))
                .expect("replacement configuration is valid");
            self.log(|| format!("r{id} REPLACEMENT started with a fresh key"));
            self.replicas.insert(id, Slot::Honest(Box::new(r)));
            self.replacing = None;
            self.replacements += 1;
            self.apply_actions(id, actions);
        }
    }

    // ------------------------------------------------------------------ clients

    fn random_op(&mut self) -> Operation {
        let key = Bytes::from(KEYS[self.rng.gen_range(0..KEYS.len())]);
        let value = Bytes::from(format!("v{}", self.rng.gen_range(0..1000)));
        let kind = match self.rng.gen_range(0..10) {
            0..=3 => OpKind::Put(Put { key, value }),
            4..=6 => OpKind::Get(Get { key }),
            7 => OpKind::Delete(Delete { key }),
            _ => {
                let expected = if self.rng.gen_bool(0.5) {
                    None
                } else {
                    Some(Bytes::from(format!("v{}", self.rng.gen_range(0..1000))))
                };
                OpKind::Cas(CompareAndSwap { key, expected, new_value: Some(value) })
            }
        };
        Operation { kind: Some(kind) }
    }

    fn record_invocation(&mut self, c: usize, op: Operation) {
        let (ts, _) = self.clients[c].core.outstanding().expect("just submitted");
        self.clients[c].current = Some(self.checker.history.len());
        self.checker.history.push(ClientOp {
            client: self.clients[c].core.id(),
            timestamp: ts,
            operation: op,
            invoked_at: self.now,
            completed: None,
        });
    }

    fn broadcast_request(&mut self, c: usize, req: Bytes) {
        let ids: Vec<ReplicaId> = self.clients[c].core.membership().ids().collect();
        for r in ids {
            self.deliver(Node::Client(c), Node::Replica(r), Payload::ClientRequest(req.clone()));
        }
    }

    fn arm_client_timer(&mut self, c: usize) {
        self.clients[c].timer_gen += 1;
        let g = self.clients[c].timer_gen;
        let after = self.clients[c].retry_ms;
        self.schedule(after, Node::Client(c), Payload::ClientTimer(g));
    }

    fn on_client_timer(&mut self, c: usize, generation: u64) {
        if generation != 0 && generation != self.clients[c].timer_gen {
            return;
        }
        if let Some((_, req)) = self.clients[c].core.outstanding() {
            // Retransmit with backoff.
            self.clients[c].retry_ms = (self.clients[c].retry_ms * 2).min(3_000);
            self.broadcast_request(c, req);
            self.arm_client_timer(c);
            return;
        }
        if self.clients[c].ops_left == 0 {
            return;
        }
        self.clients[c].ops_left -= 1;
        self.clients[c].retry_ms = 400;
        let op = self.random_op();
        let req = self.clients[c].core.submit(op.clone());
        self.record_invocation(c, op);
        self.broadcast_request(c, req);
        self.arm_client_timer(c);
    }

    fn on_reply(&mut self, c: usize, envelope: Bytes) {
        let Ok(Some(done)) = self.clients[c].core.on_reply(&envelope) else { return };
        if let Some(i) = self.clients[c].current.take() {
            self.checker.history[i].completed = Some((self.now, done.result.clone()));
        }
        if self.clients[c].admin {
            self.log(|| format!("admin: membership change completed: {:?}", done.result));
            return;
        }
        self.clients[c].timer_gen += 1;
        // Spread the operations over the fault period so faults meet traffic.
        let spread = self.gst / (self.cfg.ops_per_client as u64 + 1);
        let think = self.rng.gen_range(0..spread.max(50));
        self.schedule(think, Node::Client(c), Payload::ClientTimer(0));
    }

    /// Liveness of the replicas themselves: once the faults are over and the
    /// clients are done, every honest member must be back in a working view
    /// with state, not waiting alone in a view change nobody else joined.
    fn check_settled(&mut self) {
        let stuck: Vec<String> = self
            .replicas
            .iter()
            .filter_map(|(id, s)| match s {
                Slot::Honest(r) if !r.is_retired() && (!r.is_active() || r.is_catching_up()) => {
                    Some(format!("r{id}: {}", r.describe_log()))
                }
                _ => None,
            })
            .collect();
        if !stuck.is_empty() {
            let views: Vec<String> = self
                .replicas
                .iter()
                .filter_map(|(id, s)| match s {
                    Slot::Honest(r) => Some(format!("r{id} view {} active {}", r.view(), r.is_active())),
                    _ => None,
                })
                .collect();
            self.checker.violations.push(format!(
                "liveness: {SETTLE_MS}ms after the last operation, honest replicas are still outside a working view: {}; honest views: {}",
                stuck.join("; "),
                views.join(", ")
            ));
        }
    }

    fn all_done(&self) -> bool {
        self.clients.iter().all(|c| c.admin || (c.ops_left == 0 && c.core.outstanding().is_none()))
            && self.replacing.is_none()
    }

    // ------------------------------------------------------------------ main loop

    fn run(mut self) -> Report {
        let deadline = self.gst + LIVENESS_MS;
        let mut settle_until: Option<u64> = None;
        while let Some(Reverse(ev)) = self.queue.pop() {
            self.now = ev.at;
            if self.now >= self.gst && !self.partitioned.is_empty() {
                self.partitioned.clear();
            }
            if settle_until.is_none() && self.now > deadline {
                break;
            }
            if self.all_done() && self.now >= self.gst {
                // Done: let the cluster run idle for a while, then check it settled.
                let until = *settle_until.get_or_insert(self.now + SETTLE_MS);
                if self.now >= until {
                    break;
                }
            }
            match (ev.to, ev.payload) {
                (Node::Client(usize::MAX), Payload::Crash) => {
                    // Toggle a partition: isolate a random minority, later heal.
                    if self.partitioned.is_empty() && self.now < self.gst {
                        let k = self.rng.gen_range(1..=(self.cfg.n - 1) / 3 + 1).min(self.cfg.n / 2);
                        let mut ids: Vec<ReplicaId> = (0..self.cfg.n as u32).collect();
                        while self.partitioned.len() < k {
                            let i = self.rng.gen_range(0..ids.len());
                            self.partitioned.push(ids.remove(i));
                        }
                        let p = self.partitioned.clone();
                        self.log(|| format!("PARTITION {p:?}"));
                    } else {
                        self.partitioned.clear();
                        self.log(|| "HEAL".to_string());
                    }
                    if self.now < self.gst {
                        let next = self.rng.gen_range(1_000..5_000);
                        self.schedule(next, Node::Client(usize::MAX), Payload::Crash);
                    }
                }
                (Node::Replica(id), Payload::Peer(b)) => {
                    // Messages that reach a replica in the same millisecond
                    // come as one batch, as the server drains its inbox (an
                    // early one may switch the view or epoch under the rest).
                    let mut batch = vec![b];
                    while let Some(Reverse(next)) = self.queue.peek() {
                        if next.at != self.now
                            || next.to != Node::Replica(id)
                            || !matches!(next.payload, Payload::Peer(_))
                        {
                            break;
                        }
                        if let Some(Reverse(Scheduled { payload: Payload::Peer(b), .. })) = self.queue.pop() {
                            batch.push(b);
                        }
                    }
                    if self.cfg.trace {
                        for b in &batch {
                            let d = describe_message(b);
                            self.log(|| format!("r{id} <- {d}"));
                        }
                    }
                    if batch.len() == 1 {
                        let b = batch.pop().expect("one message");
                        self.step_replica(id, Event::Peer(b))
                    } else {
                        self.step_replica(id, Event::Peers(batch))
                    }
                }
                (Node::Replica(id), Payload::ClientRequest(b)) => self.step_replica(id, Event::Client(b)),
                (Node::Replica(id), Payload::Timer(kind, generation)) => {
                    self.step_replica(id, Event::Timer { kind, generation })
                }
                (Node::Replica(id), Payload::ByzTick) => {
                    let peers = self.peers_of(id);
                    let honest: Vec<ReplicaId> = peers.iter().copied().filter(|p| self.is_honest(*p)).collect();
                    if let Some(Slot::Byzantine(r, byz)) = self.replicas.get_mut(&id) {
                        let (epoch, view, stable, max) =
                            (r.membership().epoch(), r.view(), r.stable_checkpoint(), r.config().max_message_bytes);
                        let outs = byz.tick(&peers, &honest, epoch, view, stable, max, &mut self.rng);
                        self.apply_byzantine(id, outs);
                        self.schedule(150, Node::Replica(id), Payload::ByzTick);
                    }
                }
                (Node::Replica(id), Payload::Crash) => self.crash(id),
                (Node::Replica(id), Payload::Restart) => self.restart(id),
                (Node::Replica(id), Payload::Replace) => self.replace(id),
                (Node::Client(c), Payload::ClientTimer(g)) => self.on_client_timer(c, g),
                (Node::Client(c), Payload::Reply(b)) => self.on_reply(c, b),
                (Node::Client(c), Payload::Rejected) => {
                    let _ = c;
                }
                _ => {}
            }
            if self.now >= self.gst {
                // After GST every crashed replica is back.
                let down: Vec<ReplicaId> =
                    self.replicas.iter().filter(|(_, s)| matches!(s, Slot::Down)).map(|(id, _)| *id).collect();
                for id in down {
                    self.restart(id);
                }
            }
            self.maybe_start_replacement();
        }
        if !self.all_done() {
            let unfinished: Vec<String> = self
                .clients
                .iter()
                .enumerate()
                .filter(|(_, c)| c.ops_left > 0 || c.core.outstanding().is_some())
                .map(|(i, c)| {
                    format!(
                        "client {i} ({} left{})",
                        c.ops_left + c.core.outstanding().is_some() as usize,
                        if c.admin { ", admin" } else { "" }
                    )
                })
                .collect();
            let status: Vec<String> = self
                .replicas
                .iter()
                .map(|(id, s)| match s {
                    Slot::Honest(r) => format!("r{id}: {}", r.describe_log()),
                    Slot::Byzantine(r, b) => format!("r{id}: byzantine {:?} {r:?}", b.strategy),
                    Slot::Down => format!("r{id}: down"),
                })
                .collect();
            let replacing = if self.replacing.is_some() { " (a replacement never joined)" } else { "" };
            self.checker.violations.push(format!(
                "liveness: not finished {}ms after GST{replacing}: {}; replicas: {}",
                LIVENESS_MS,
                unfinished.join(", "),
                status.join("; ")
            ));
        }
        if settle_until.is_some() {
            self.check_settled();
        }
        self.checker.finish();
        let (view_changes, state_transfers) = self
            .replicas
            .values()
            .filter_map(|s| if let Slot::Honest(r) = s { Some(r) } else { None })
            .fold((0, 0), |(v, t), r| (v + r.counters().view_changes, t + r.counters().state_transfers));
        Report {
            seed: self.cfg.seed,
            n: self.cfg.n,
            mix: format!("{} {:?}", self.mix.name, self.mix.byzantine),
            violations: self.checker.violations.clone(),
            executed_seqs: self.checker.executed_seqs(),
            completed_ops: self.checker.history.iter().filter(|o| o.completed.is_some()).count(),
            evidence: self.evidence,
            forged_evidence_rejected: self.forged_rejected,
            view_changes,
            state_transfers,
            replacements: self.replacements,
            peak_memory_ratio: self.checker.peak_ratio,
            peak_memory_bytes: self.checker.peak_bytes,
            peak_memory_budget: self.checker.peak_budget,
            virtual_ms: self.now,
            trace: self.trace,
        }
    }
}

/// A short description of an encoded envelope, for traces.
fn describe_message(b: &Bytes) -> String {
    use crate::proto::{message::Body, Envelope, Message};
    use prost::Message as _;
    let Ok(env) = Envelope::decode(b.as_ref()) else { return format!("garbage ({} bytes)", b.len()) };
    let Ok(m) = Message::decode(env.payload.as_ref()) else {
        return format!("undecodable payload ({} bytes)", b.len());
    };
    let d = |x: &Bytes| hex::encode(&x[..x.len().min(3)]);
    let body = match &m.body {
        Some(Body::PrePrepare(p)) => format!(
            "pre-prepare v{} s{} {}{}",
            p.view,
            p.seq,
            d(&p.digest),
            if p.batch.is_some() { "" } else { " (no batch)" }
        ),
        Some(Body::Prepare(p)) => format!("prepare v{} s{} {}", p.view, p.seq, d(&p.digest)),
        Some(Body::Commit(p)) => format!("commit v{} s{} {}", p.view, p.seq, d(&p.digest)),
        Some(Body::Checkpoint(c)) => format!("checkpoint s{} {}", c.seq, d(&c.state_digest)),
        Some(Body::ViewChange(v)) => {
            format!("view-change to v{} stable {} prepared {}", v.new_view, v.stable_seq, v.prepared.len())
        }
        Some(Body::NewView(n)) => format!(
            "new-view v{} ({} view changes, {} pre-prepares)",
            n.view,
            n.view_changes.len(),
            n.pre_prepares.len()
        ),
        Some(Body::StateRequest(r)) => format!("state-request from s{}", r.min_seq),
        Some(Body::StateResponse(r)) => format!("state-response ({} bytes)", r.snapshot.len()),
        Some(Body::ReplyRoot(r)) => format!("reply-root s{} ({} replies)", r.seq, r.leaves),
        Some(Body::Suspect(s)) => format!("suspect v{}", s.view),
        Some(Body::Forward(f)) => format!("forward ({} requests)", f.requests.len()),
        None => "empty".into(),
    };
    format!("e{} r{} {body}", m.epoch, m.sender)
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Report {
    Sim::new(cfg).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize, seed: u64) -> SimConfig {
        SimConfig { n, seed, clients: 3, ops_per_client: 6, trace: false }
    }

    #[test]
    fn same_seed_same_run() {
        let a = run(cfg(4, 7));
        let b = run(cfg(4, 7));
        assert_eq!(
            (a.executed_seqs, a.completed_ops, a.virtual_ms, a.evidence),
            (b.executed_seqs, b.completed_ops, b.virtual_ms, b.evidence)
        );
    }

    /// Seeds that once found a violation (kept as regressions): a primary
    /// whose own batch never committed had no view-change timer (10467,
    /// 11097, 16684: liveness lost under conflicting voters).
    #[test]
    fn seeds_that_found_bugs_stay_clean() {
        for (seed, n) in [(10467, 7), (11097, 4), (16684, 7)] {
            let r = run(cfg(n, seed));
            assert!(r.violations.is_empty(), "seed {seed} n={n} {}: {:?}", r.mix, r.violations);
        }
    }

    #[test]
    fn every_fault_mix_passes_a_few_seeds() {
        for seed in 0..20 {
            for n in [4, 7] {
                let r = run(cfg(n, seed));
                assert!(r.violations.is_empty(), "seed {seed} n={n} {}: {:?}", r.mix, r.violations);
                assert_eq!(r.completed_ops, 18 + r.replacements, "seed {seed} n={n}");
            }
        }
    }
}
