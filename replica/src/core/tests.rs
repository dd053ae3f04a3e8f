//! Unit tests of the core on a tiny synchronous network.

use super::*;
use crate::core::client::ClientCore;
use crate::crypto::{Ed25519Verifier, Keypair};
use crate::proto::{Get, Member, Operation, Put};

const N: u32 = 4;

fn key(i: u32) -> Keypair {
    Keypair::from_secret([i as u8 + 1; 32])
}

fn admin() -> Keypair {
    Keypair::from_secret([99; 32])
}

fn membership() -> Membership {
    Membership::new(MembershipConfig {
        epoch: 1,
        members: (0..N)
            .map(|i| Member {
                id: i,
                public_key: Bytes::copy_from_slice(&key(i).public_bytes()),
                address: String::new(),
            })
            .collect(),
        admin_key: Bytes::copy_from_slice(&admin().public_bytes()),
    })
    .unwrap()
}

fn config(id: ReplicaId) -> Config {
    let mut c = Config::with_budget(id, N as usize, 8 * 1024 * 1024);
    c.checkpoint_interval = 4;
    c.watermark_window = 8;
    c.derive_limits(N as usize, 8 * 1024 * 1024);
    c
}

/// Replicas connected by an in-order, lossless network that can cut links.
struct Net {
    replicas: Vec<Replica>,
    inbox: VecDeque<(ReplicaId, Bytes)>,
    replies: Vec<(ReplicaId, Bytes)>,
    rejects: Vec<Rejection>,
    evidence: Vec<Evidence>,
    executed: Vec<(ReplicaId, u64)>,
    records: Vec<Vec<PersistRecord>>,
    down: BTreeSet<ReplicaId>,
    /// Messages to these replicas are held back (in order) instead of delivered.
    parked: BTreeMap<ReplicaId, Vec<Bytes>>,
}

impl Net {
    fn new() -> Net {
        Net::with_config(config)
    }

    fn with_config(config: impl Fn(ReplicaId) -> Config) -> Net {
        let replicas = (0..N)
            .map(|i| Replica::new(config(i), key(i), membership(), Box::new(Ed25519Verifier::default())).unwrap().0)
            .collect();
        Net {
            replicas,
            inbox: VecDeque::new(),
            replies: vec![],
            rejects: vec![],
            evidence: vec![],
            executed: vec![],
            records: vec![vec![]; N as usize],
            down: BTreeSet::new(),
            parked: BTreeMap::new(),
        }
    }

    fn absorb(&mut self, from: ReplicaId, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, envelope } => self.inbox.push_back((to, envelope)),
                Action::Broadcast { envelope } => {
                    for to in 0..N {
                        if to != from {
                            self.inbox.push_back((to, envelope.clone()));
                        }
                    }
                }
                Action::Reply { reply, .. } => self.replies.push((from, reply)),
                Action::Reject { reason, .. } => self.rejects.push(reason),
                Action::Evidence(e) => self.evidence.push(e),
                Action::Executed { seq, .. } => self.executed.push((from, seq)),
                Action::Persist(r) => self.records[from as usize].push(r),
                _ => {}
            }
        }
    }

    fn step(&mut self, id: ReplicaId, e: Event) {
        if self.down.contains(&id) {
            return;
        }
        let actions = self.replicas[id as usize].step(e);
        self.absorb(id, actions);
    }

    fn run(&mut self) {
        let mut budget = 100_000;
        while let Some((to, m)) = self.inbox.pop_front() {
            if let Some(held) = self.parked.get_mut(&to) {
                held.push(m);
                continue;
            }
            self.step(to, Event::Peer(m));
            budget -= 1;
            assert!(budget > 0, "message storm");
        }
    }

    fn client_request(&mut self, req: &Bytes) {
        for i in 0..N {
            self.step(i, Event::Client(req.clone()));
        }
        self.run();
    }

    fn fire(&mut self, id: ReplicaId, kind: TimerKind) {
        let generation = match kind {
            TimerKind::ViewChange => self.replicas[id as usize].vc_timer_generation,
            TimerKind::Retransmit => self.replicas[id as usize].retransmit_generation,
        };
        self.step(id, Event::Timer { kind, generation });
        self.run();
    }
}

impl Replica {
    /// Makes this replica suspect its primary now, as a timeout would.
    fn step_suspect(&mut self, view: u64) -> Vec<Action> {
        self.suspect(view);
        std::mem::take(&mut self.out)
    }
}

fn put(k: &str, v: &str) -> Operation {
    Operation { kind: Some(OpKind::Put(Put { key: Bytes::from(k.to_string()), value: Bytes::from(v.to_string()) })) }
}

fn client() -> ClientCore {
    ClientCore::new(Keypair::from_secret([50; 32]), membership(), 0)
}

fn complete(c: &mut ClientCore, net: &Net) -> Option<crate::core::client::Completed> {
    for (_, r) in &net.replies {
        if let Ok(Some(done)) = c.on_reply(r) {
            return Some(done);
        }
    }
    None
}

#[test]
fn a_request_executes_everywhere_and_the_client_gets_f_plus_one_replies() {
    let mut net = Net::new();
    let mut c = client();
    let req = c.submit(put("k", "v"));
    net.client_request(&req);
    for r in &net.replicas {
        assert_eq!(r.last_executed(), 1);
        assert_eq!(r.state().kv.get(b"k").map(|v| v.as_ref()), Some(b"v".as_ref()));
    }
    assert_eq!(complete(&mut c, &net).expect("f+1 matching replies").result.status, 0);
    // The same request again is answered from the client table, not re-executed.
    net.replies.clear();
    net.client_request(&req);
    assert!(net.replicas.iter().all(|r| r.last_executed() == 1));
    assert_eq!(net.replies.len(), N as usize);
}

#[test]
fn a_batch_s_replies_share_one_signed_root_and_a_tampered_reply_is_refused() {
    use crate::core::client::ReplyError;
    use crate::proto::SignedReply;
    let mut net = Net::new();
    let mut clients: Vec<ClientCore> =
        (0..5).map(|i| ClientCore::new(Keypair::from_secret([60 + i; 32]), membership(), 0)).collect();
    let reqs: Vec<Bytes> = clients.iter_mut().enumerate().map(|(i, c)| c.submit(put(&format!("k{i}"), "v"))).collect();
    for i in 0..N {
        net.step(i, Event::Clients(reqs.clone()));
    }
    net.run();
    assert!(net.replicas.iter().all(|r| r.last_executed() == 1), "the five requests are one batch");
    let of_replica_0: Vec<SignedReply> = net
        .replies
        .iter()
        .filter(|(from, _)| *from == 0)
        .map(|(_, r)| SignedReply::decode(r.as_ref()).unwrap())
        .collect();
    assert_eq!(of_replica_0.len(), 5);
    assert!(of_replica_0.iter().all(|r| r.root == of_replica_0[0].root), "one signature for the batch");
    for c in &mut clients {
        assert_eq!(complete(c, &net).expect("f+1 matching replies").result.status, 0);
    }
    // Another client's reply, a changed result, a wrong place in the tree: refused before counting.
    let mut c = ClientCore::new(Keypair::from_secret([70; 32]), membership(), 0);
    let _ = c.submit(put("x", "y"));
    assert_eq!(c.on_reply(&net.replies[0].1), Err(ReplyError::NotOutstanding));
    let mut clients: Vec<ClientCore> =
        (0..5).map(|i| ClientCore::new(Keypair::from_secret([60 + i; 32]), membership(), 0)).collect();
    let _ = clients[1].submit(put("k1", "v"));
    let genuine = of_replica_0
        .iter()
        .find(|r| Reply::decode(r.reply.as_ref()).unwrap().client.as_ref() == clients[1].id())
        .unwrap();
    let mut changed = genuine.clone();
    let mut reply = Reply::decode(changed.reply.as_ref()).unwrap();
    reply.result = Some(crate::state::ok(Some(Bytes::from_static(b"forged"))));
    changed.reply = reply.encode_to_vec().into();
    assert_eq!(clients[1].on_reply(&changed.encode_to_vec()), Err(ReplyError::NotInBatch));
    let mut moved = genuine.clone();
    moved.index = (moved.index + 1) % 5;
    assert_eq!(clients[1].on_reply(&moved.encode_to_vec()), Err(ReplyError::NotInBatch));
    let mut resigned = genuine.clone();
    let mut sig = resigned.root.clone().unwrap();
    sig.signature = Bytes::from(vec![7u8; 64]);
    resigned.root = Some(sig);
    assert_eq!(clients[1].on_reply(&resigned.encode_to_vec()), Err(ReplyError::BadSignature));
    assert_eq!(clients[1].on_reply(b"garbage"), Err(ReplyError::Malformed));
    assert_eq!(clients[1].on_reply(&genuine.encode_to_vec()), Ok(None), "one genuine reply is not f+1");
}

#[test]
fn a_batch_of_many_small_requests_stays_within_the_limit_backups_check() {
    // Room for several hundred small requests per batch, so their framing
    // (3 bytes each) adds up to more than a kilobyte: the primary must count
    // it, or its backups refuse the batch and the view changes forever (seen
    // at n=7 under 512 clients).
    let budget = 256 * 1024 * 1024;
    let mut net = Net::with_config(|id| {
        let mut c = Config::with_budget(id, N as usize, budget);
        c.max_batch_requests = 4096;
        c
    });
    let limit = net.replicas[0].config().max_batch_bytes;
    // Backups held back: the primary's pipeline fills and the rest queues.
    for b in 1..N {
        net.parked.insert(b, vec![]);
    }
    let count = 1500u32;
    for i in 0..count {
        let mut c = ClientCore::new(Keypair::from_secret(crate::crypto::sha256(&[&i.to_le_bytes()])), membership(), 0);
        let req = c.submit(put(&format!("k{i}"), &"v".repeat(100)));
        net.step(0, Event::Client(req));
    }
    for b in 1..N {
        for m in net.parked.remove(&b).expect("parked") {
            net.inbox.push_back((b, m));
        }
    }
    net.run();
    for r in &net.replicas {
        assert_eq!(r.state().kv.len(), count as usize, "replica {} executed every request", r.config().id);
    }
    let batches: Vec<&Batch> = net.records[0]
        .iter()
        .filter_map(|r| match r {
            PersistRecord::Committed { batch, .. } => Some(batch),
            _ => None,
        })
        .collect();
    let largest = batches.iter().map(|b| b.requests.len()).max().unwrap_or(0);
    assert!(largest > 400, "a batch was limited by bytes with hundreds of requests (largest: {largest})");
    assert!(batches.iter().all(|b| b.encoded_len() <= limit), "every encoded batch within {limit} bytes");
}

#[test]
fn checkpoints_become_stable_and_truncate_the_log() {
    let mut net = Net::new();
    let mut c = client();
    for i in 0..4 {
        let req = c.submit(put("k", &i.to_string()));
        net.client_request(&req);
    }
    for r in &net.replicas {
        assert_eq!(r.stable_checkpoint(), 4, "{r:?}");
        assert!(r.slots.is_empty(), "log below the stable checkpoint is gone");
        assert_eq!(r.ledger().total(), r.recount());
    }
    // Every replica has the same checkpoint digest.
    let digests: BTreeSet<Digest> = net.replicas.iter().map(|r| r.stable.digest).collect();
    assert_eq!(digests.len(), 1);
}

#[test]
fn messages_beyond_the_high_watermark_are_dropped_before_verification() {
    let mut net = Net::new();
    let primary = key(0);
    let far = Message {
        epoch: 1,
        sender: 0,
        body: Some(Body::PrePrepare(PrePrepare {
            view: 0,
            seq: 9, // h = 0, L = 8
            digest: Bytes::copy_from_slice(&batch_digest(&[])),
            batch: Some(Batch { requests: vec![] }),
        })),
    };
    let before = net.replicas[1].verifications();
    net.step(1, Event::Peer(primary.seal(&far).encode_to_vec().into()));
    assert_eq!(net.replicas[1].verifications(), before);
    assert_eq!(net.replicas[1].counters().dropped_out_of_window, 1);
    assert!(net.replicas[1].slots.is_empty());
}

#[test]
fn exact_duplicates_are_dropped_before_verification() {
    let mut net = Net::new();
    let msg = Message {
        epoch: 1,
        sender: 2,
        body: Some(Body::Prepare(Prepare { view: 0, seq: 1, digest: Bytes::from(vec![1; 32]) })),
    };
    let bytes: Bytes = key(2).seal(&msg).encode_to_vec().into();
    net.step(1, Event::Peer(bytes.clone()));
    let after_first = net.replicas[1].verifications();
    net.step(1, Event::Peer(bytes));
    assert_eq!(net.replicas[1].verifications(), after_first);
    assert_eq!(net.replicas[1].counters().dropped_duplicate + net.replicas[1].counters().dropped_out_of_window, 1);
}

#[test]
fn an_equivocating_primary_is_caught_with_verifiable_evidence() {
    let mut net = Net::new();
    let mut c = client();
    let req = c.submit(put("k", "v"));
    let requests = vec![req.clone()];
    let pp = |requests: Vec<Bytes>| Message {
        epoch: 1,
        sender: 0,
        body: Some(Body::PrePrepare(PrePrepare {
            view: 0,
            seq: 1,
            digest: Bytes::copy_from_slice(&batch_digest(&requests)),
            batch: Some(Batch { requests }),
        })),
    };
    let a: Bytes = key(0).seal(&pp(requests)).encode_to_vec().into();
    let b: Bytes = key(0).seal(&pp(vec![])).encode_to_vec().into();
    net.down.insert(0);
    net.step(1, Event::Peer(a.clone()));
    net.step(2, Event::Peer(b.clone()));
    net.step(3, Event::Peer(a));
    net.run();
    assert!(!net.evidence.is_empty(), "the conflicting prepares expose the two pre-prepares");
    for e in &net.evidence {
        assert_eq!(e.offender, 0);
        assert_eq!(e.kind, crate::proto::evidence::Kind::EquivocatingPrePrepare as i32);
        assert_eq!(evidence::verify_evidence(e, &membership()), Ok(()));
    }
}

#[test]
fn bad_client_input_gets_a_clear_rejection() {
    let mut net = Net::new();
    net.step(1, Event::Client(Bytes::from_static(b"\xff\xff garbage")));
    assert!(matches!(net.rejects.pop(), Some(Rejection::Malformed(_))));
    let big = Bytes::from(vec![0u8; net.replicas[1].config().max_request_bytes + 1]);
    net.step(1, Event::Client(big));
    assert!(matches!(net.rejects.pop(), Some(Rejection::TooLarge { .. })));
    let mut c = client();
    let req = c.submit(put("k", "v"));
    let mut signed = SignedRequest::decode(req.as_ref()).unwrap();
    let mut sig = signed.signature.to_vec();
    sig[5] ^= 1;
    signed.signature = sig.into();
    net.step(1, Event::Client(signed.encode_to_vec().into()));
    assert_eq!(net.rejects.pop(), Some(Rejection::BadSignature));
    assert_eq!(net.replicas[1].pending_requests(), 0, "nothing was queued");
}

#[test]
fn a_full_pending_queue_sheds_with_resource_exhausted() {
    let mut net = Net::new();
    net.down.insert(0); // no primary: requests stay pending at backups
    let cap = net.replicas[1].config().caps.pending;
    let mut shed = false;
    for i in 0..10_000u32 {
        let mut c = ClientCore::new(Keypair::from_secret(crate::crypto::sha256(&[&i.to_le_bytes()])), membership(), 0);
        let req = c.submit(put(&format!("key{i}"), &"x".repeat(200)));
        net.step(1, Event::Client(req));
        if matches!(net.rejects.last(), Some(Rejection::ResourceExhausted { .. })) {
            shed = true;
            break;
        }
    }
    assert!(shed, "a replica sheds before its pending buffer exceeds {cap} bytes");
    let r = &net.replicas[1];
    assert!(r.ledger().used(Category::Pending) <= cap);
    assert_eq!(r.ledger().total(), r.recount());
}

#[test]
fn a_silent_primary_is_replaced_by_a_view_change() {
    let mut net = Net::new();
    net.down.insert(0);
    let mut c = client();
    let req = c.submit(put("k", "v"));
    net.client_request(&req);
    assert!(net.replicas[1..].iter().all(|r| r.last_executed() == 0));
    // The first timeout relays the request to the primary; the second suspects it.
    for i in 1..N {
        net.fire(i, TimerKind::ViewChange);
    }
    assert!(net.replicas[1..].iter().all(|r| r.view() == 0 && r.is_active()));
    assert!(net.replicas[1..].iter().all(|r| r.counters().forwarded_requests == 1));
    for i in 1..N {
        net.fire(i, TimerKind::ViewChange);
    }
    for r in &net.replicas[1..] {
        assert_eq!((r.view(), r.is_active()), (1, true), "{r:?}");
    }
    // The new primary orders the pending request.
    net.client_request(&req);
    assert!(net.replicas[1..].iter().all(|r| r.last_executed() == 1));
    assert!(complete(&mut c, &net).is_some());
}

#[test]
fn a_request_that_reached_one_backup_only_is_relayed_to_the_primary() {
    let mut net = Net::new();
    let mut c = client();
    let req = c.submit(put("k", "v"));
    net.step(2, Event::Client(req));
    net.run();
    assert!(net.replicas.iter().all(|r| r.last_executed() == 0), "the primary never saw it");
    net.fire(2, TimerKind::ViewChange);
    assert!(net.replicas.iter().all(|r| r.last_executed() == 1 && r.view() == 0), "ordered without a view change");
    assert!(complete(&mut c, &net).is_some());
}

#[test]
fn a_lone_suspicion_leaves_the_replica_working_in_its_view() {
    let mut net = Net::new();
    let actions = net.replicas[3].step_suspect(1);
    net.absorb(3, actions);
    net.run();
    assert_eq!(net.replicas[3].counters().suspicions, 1);
    for r in &net.replicas {
        assert_eq!((r.view(), r.is_active()), (0, true), "{r:?}");
    }
    // It still votes: with the primary's own vote and the suspecting
    // replica's, a request commits even with one other replica down.
    net.down.insert(2);
    let mut c = client();
    let req = c.submit(put("k", "v"));
    net.client_request(&req);
    for i in [0, 1, 3] {
        assert_eq!(net.replicas[i].last_executed(), 1, "{:?}", net.replicas[i]);
    }
}

#[test]
fn f_plus_one_suspicions_bring_every_honest_replica_into_the_view_change() {
    let mut net = Net::new();
    for i in [1, 2] {
        let actions = net.replicas[i].step_suspect(1);
        net.absorb(i as u32, actions);
    }
    net.run();
    for r in &net.replicas {
        assert_eq!((r.view(), r.is_active()), (1, true), "{r:?}");
        assert_eq!(r.counters().suspicions, 1);
    }
}

#[test]
fn suspicions_that_are_not_resent_expire_and_do_not_add_up() {
    let mut net = Net::new();
    let actions = net.replicas[1].step_suspect(1);
    net.absorb(1, actions);
    net.run();
    // r1 stops resending (it is down); the others forget its suspicion.
    net.down.insert(1);
    for _ in 0..=SUSPICION_TTL_TICKS {
        for i in [0, 2, 3] {
            net.fire(i, TimerKind::Retransmit);
        }
    }
    let actions = net.replicas[2].step_suspect(1);
    net.absorb(2, actions);
    net.run();
    for i in [0, 2, 3] {
        let r = &net.replicas[i];
        assert_eq!((r.view(), r.is_active()), (0, true), "{r:?}");
    }
    assert_eq!(net.replicas[0].counters().suspicions, 0, "one live suspicion is not f+1");
}

/// The admin's signed request that gives member 3 a new key (epoch 1 -> 2).
fn replace_member_3_key() -> Bytes {
    let new_key = Keypair::from_secret([77; 32]);
    let mut members = membership().members().to_vec();
    members[3].public_key = Bytes::copy_from_slice(&new_key.public_bytes());
    let mut admin_client = ClientCore::new(admin(), membership(), 0);
    admin_client
        .submit(Operation { kind: Some(OpKind::Membership(crate::proto::MembershipChange { from_epoch: 1, members })) })
}

/// Sender, epoch and whether it is a checkpoint, of an encoded envelope.
fn header(b: &Bytes) -> (ReplicaId, u64, bool) {
    let env = Envelope::decode(b.as_ref()).expect("envelope");
    let m = Message::decode(env.payload.as_ref()).expect("message");
    (m.sender, m.epoch, matches!(m.body, Some(Body::Checkpoint(_))))
}

#[test]
fn an_epoch_switch_inside_a_batch_leaves_a_proof_of_one_epoch() {
    let mut net = Net::new();
    net.parked.insert(2, vec![]);
    let req = replace_member_3_key();
    net.client_request(&req);
    assert!(net.replicas[..2].iter().all(|r| r.membership().epoch() == 2), "r0 and r1 switched without r2");
    // r2 gets everything at once, r0's old-epoch checkpoint vote after the
    // others' (so the boundary is already stable, and the epoch switched,
    // when it comes), and then the new epoch's votes.
    let mut batch = net.parked.remove(&2).expect("parked");
    let late = batch.iter().position(|b| header(b) == (0, 1, true)).expect("r0's old-epoch checkpoint vote");
    let late = batch.remove(late);
    let first_new = batch.iter().position(|b| header(b).1 == 2).unwrap_or(batch.len());
    batch.insert(first_new, late);
    let actions = net.replicas[2].step(Event::Peers(batch));
    net.absorb(2, actions);
    let r = &net.replicas[2];
    assert_eq!((r.membership().epoch(), r.stable_checkpoint()), (2, 4), "{r:?}");
    let epochs: BTreeSet<u64> =
        r.stable.proof.iter().map(|e| Message::decode(e.payload.as_ref()).expect("proof entry").epoch).collect();
    assert_eq!(epochs.len(), 1, "the stable proof mixes epochs {epochs:?}");
    assert!(r
        .checkpoint_votes
        .values()
        .flat_map(|m| m.values())
        .all(|v| { Message::decode(v.env.payload.as_ref()).is_ok_and(|m| m.epoch == 2) }));
}

#[test]
fn a_restarted_replica_recovers_its_state_and_never_signs_differently() {
    let mut net = Net::new();
    let mut c = client();
    for i in 0..6 {
        let req = c.submit(put(&format!("k{i}"), "v"));
        net.client_request(&req);
    }
    let records = net.records[2].clone();
    let (r, _) =
        Replica::recover(config(2), key(2), membership(), Box::new(Ed25519Verifier::default()), &records).unwrap();
    assert_eq!(r.last_executed(), 6);
    assert_eq!(r.stable_checkpoint(), 4);
    assert_eq!(r.state().encoded_snapshot().1, net.replicas[2].state().encoded_snapshot().1);
    // It refuses to sign a prepare for seq 6 with another digest.
    let mut r = r;
    let before = r.signed.len();
    assert!(r.sign(Body::Prepare(Prepare { view: 0, seq: 6, digest: Bytes::from(vec![3; 32]) })).is_none());
    assert_eq!(r.signed.len(), before);
    // A log with a gap is refused with a clear error.
    let gap: Vec<PersistRecord> =
        records.iter().filter(|x| !matches!(x, PersistRecord::Committed { seq: 5, .. })).cloned().collect();
    let err =
        Replica::recover(config(2), key(2), membership(), Box::new(Ed25519Verifier::default()), &gap).unwrap_err();
    assert!(err.to_string().contains("gap"), "{err}");
}

#[test]
fn a_lagging_replica_catches_up_by_state_transfer() {
    let mut net = Net::new();
    net.down.insert(3);
    let mut c = client();
    for i in 0..12 {
        let req = c.submit(put(&format!("k{i}"), "v"));
        net.client_request(&req);
    }
    assert_eq!(net.replicas[0].stable_checkpoint(), 12);
    net.down.remove(&3);
    net.fire(3, TimerKind::Retransmit); // it has seen nothing: asks when a checkpoint shows it is behind
    for i in 0..3 {
        net.fire(i, TimerKind::Retransmit);
    }
    net.fire(3, TimerKind::Retransmit);
    assert_eq!(net.replicas[3].last_executed(), 12, "{:?}", net.replicas[3]);
    assert_eq!(net.replicas[3].state().encoded_snapshot().1, net.replicas[0].state().encoded_snapshot().1);
    let get = Operation { kind: Some(OpKind::Get(Get { key: Bytes::from("k3") })) };
    let req = c.submit(get);
    net.client_request(&req);
    assert_eq!(net.replicas[3].last_executed(), 13);
}

#[test]
fn a_membership_change_replaces_a_key_at_the_checkpoint_boundary() {
    let mut net = Net::new();
    let req = replace_member_3_key();
    net.client_request(&req);
    // The change executed at seq 1 and took effect at the boundary (seq 4), padded with null batches.
    for r in &net.replicas[..3] {
        assert_eq!(r.membership().epoch(), 2, "{r:?}");
        assert_eq!(r.stable_checkpoint(), 4);
    }
    assert!(net.replicas[3].is_retired(), "the old key retires");
    // A forged change (not the admin key) is rejected at execution.
    let mut forger = client();
    let req = forger.submit(Operation {
        kind: Some(OpKind::Membership(crate::proto::MembershipChange { from_epoch: 2, members: vec![] })),
    });
    net.replies.clear();
    for i in 0..3 {
        net.step(i, Event::Client(req.clone()));
    }
    net.run();
    assert!(net.replicas[..3].iter().all(|r| r.membership().epoch() == 2));
}

#[test]
fn invalid_configurations_are_refused_with_reasons() {
    let m = membership();
    let mut c = config(0);
    c.watermark_window = 6;
    assert!(matches!(c.validate(&m), Err(ConfigError::Window { .. })));
    let mut c = config(0);
    c.caps.log = 10;
    assert!(matches!(c.validate(&m), Err(ConfigError::LogBudget { .. })));
    let c = config(9);
    assert_eq!(c.validate(&m), Err(ConfigError::NotMember(9)));
    let tiny = Config::with_budget(0, 4, 64 * 1024);
    assert!(tiny.validate(&m).is_err(), "64 KiB is too small a budget");
    assert!(Config::with_budget(0, 4, 32 * 1024 * 1024).validate(&m).is_ok());
    assert!(Config::with_budget(0, 7, 32 * 1024 * 1024)
        .validate(&Membership::new(crate::membership::tests::config(7, 1)).unwrap())
        .is_ok());
}
