//! Byzantine replicas for the simulator.
//!
//! A Byzantine replica runs an honest core (so it can act as a convincing
//! primary or voter) and corrupts what comes out of it, or adds attacks of
//! its own on a timer. Everything it signs is signed with its own key, as a
//! real attacker's would be; it can forge other replicas' messages only
//! without their signatures.

use bytes::Bytes;
use prost::Message as _;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use crate::core::evidence::vote_of;
use crate::core::Action;
use crate::crypto::Keypair;
use crate::membership::ReplicaId;
use crate::proto::{
    evidence::Kind as EvKind, message::Body, Batch, Checkpoint, Commit, Envelope, Evidence, Forward, Message, NewView,
    PrePrepare, Prepare, StateRequest, Suspect, ViewChange,
};

/// What a Byzantine replica does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Sends nothing at all.
    Silent,
    /// As primary, sends one batch to some replicas and another to the rest.
    EquivocatingPrimary,
    /// Sends prepares and commits for a different digest to half of the replicas.
    ConflictingVotes,
    /// Signs wrong checkpoint digests, different ones to different replicas.
    LyingCheckpoints,
    /// Re-sends old messages it has seen, from anyone, at random.
    Replay,
    /// Floods far-future sequence numbers, huge views and checkpoint claims (validly signed).
    FutureFlood,
    /// Sends oversized frames, garbage bytes, truncated and malformed messages, to peers and as a client.
    Garbage,
    /// Forges messages "from" honest replicas (without their keys) and forges evidence against them.
    Forger,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 8] = [
        Strategy::Silent,
        Strategy::EquivocatingPrimary,
        Strategy::ConflictingVotes,
        Strategy::LyingCheckpoints,
        Strategy::Replay,
        Strategy::FutureFlood,
        Strategy::Garbage,
        Strategy::Forger,
    ];
}

/// An output of a Byzantine replica.
pub enum ByzOut {
    /// To one replica.
    To(ReplicaId, Bytes),
    /// As a client request to one replica.
    ClientTo(ReplicaId, Bytes),
    /// Evidence it hopes the operator would believe.
    ForgedEvidence { against: ReplicaId, evidence: Evidence },
}

/// The attacker's state.
pub struct Byzantine {
    pub id: ReplicaId,
    pub strategy: Strategy,
    key: Keypair,
    seen: Vec<Bytes>,
    /// Messages of honest replicas it captured, to build bogus evidence from.
    honest_votes: Vec<(ReplicaId, Envelope)>,
}

fn random_digest(rng: &mut ChaCha8Rng) -> Bytes {
    let mut d = [0u8; 32];
    rng.fill_bytes(&mut d);
    Bytes::copy_from_slice(&d)
}

impl Byzantine {
    pub fn new(id: ReplicaId, strategy: Strategy, key: Keypair) -> Self {
        Byzantine { id, strategy, key, seen: vec![], honest_votes: vec![] }
    }

    /// Remembers traffic it received (for replay and forgery).
    pub fn observe(&mut self, bytes: &Bytes, honest: impl Fn(ReplicaId) -> bool) {
        if self.seen.len() < 512 {
            self.seen.push(bytes.clone());
        }
        if self.strategy == Strategy::Forger && self.honest_votes.len() < 256 {
            if let Ok(env) = Envelope::decode(bytes.as_ref()) {
                if let Ok(msg) = Message::decode(env.payload.as_ref()) {
                    if honest(msg.sender) && vote_of(&msg).is_some() {
                        self.honest_votes.push((msg.sender, env));
                    }
                }
            }
        }
    }

    /// Turns the honest core's actions into what this attacker sends.
    pub fn corrupt(&mut self, actions: Vec<Action>, peers: &[ReplicaId], rng: &mut ChaCha8Rng) -> Vec<ByzOut> {
        let mut out = vec![];
        for a in actions {
            let (targets, envelope): (Vec<ReplicaId>, Bytes) = match a {
                Action::Broadcast { envelope } => (peers.to_vec(), envelope),
                Action::Send { to, envelope } => (vec![to], envelope),
                _ => continue,
            };
            if self.strategy == Strategy::Silent {
                continue;
            }
            let Some((env, msg)) = open(&envelope) else { continue };
            let alt = match (self.strategy, &msg.body) {
                (Strategy::EquivocatingPrimary, Some(Body::PrePrepare(p))) if p.batch.is_some() => {
                    let mut reqs = p.batch.as_ref().map(|b| b.requests.clone()).unwrap_or_default();
                    reqs.pop();
                    let digest = crate::core::view_change::batch_digest(&reqs);
                    Some(self.reseal(
                        &msg,
                        Body::PrePrepare(PrePrepare {
                            view: p.view,
                            seq: p.seq,
                            digest: Bytes::copy_from_slice(&digest),
                            batch: Some(Batch { requests: reqs }),
                        }),
                    ))
                }
                (Strategy::ConflictingVotes, Some(Body::Prepare(p))) => Some(
                    self.reseal(&msg, Body::Prepare(Prepare { view: p.view, seq: p.seq, digest: random_digest(rng) })),
                ),
                (Strategy::ConflictingVotes, Some(Body::Commit(c))) => Some(
                    self.reseal(&msg, Body::Commit(Commit { view: c.view, seq: c.seq, digest: random_digest(rng) })),
                ),
                (Strategy::LyingCheckpoints, Some(Body::Checkpoint(c))) => Some(
                    self.reseal(&msg, Body::Checkpoint(Checkpoint { seq: c.seq, state_digest: random_digest(rng) })),
                ),
                _ => None,
            };
            let _ = env;
            for (i, t) in targets.into_iter().enumerate() {
                match &alt {
                    Some(alt) if i % 2 == 1 => out.push(ByzOut::To(t, alt.clone())),
                    _ => out.push(ByzOut::To(t, envelope.clone())),
                }
            }
        }
        out
    }

    /// Attacks it makes on its own schedule.
    pub fn tick(
        &mut self,
        peers: &[ReplicaId],
        honest: &[ReplicaId],
        epoch: u64,
        view: u64,
        stable: u64,
        max_message: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<ByzOut> {
        let mut out = vec![];
        let pick = |rng: &mut ChaCha8Rng| peers[rng.gen_range(0..peers.len())];
        match self.strategy {
            Strategy::Replay => {
                for _ in 0..4 {
                    if self.seen.is_empty() {
                        break;
                    }
                    let m = self.seen[rng.gen_range(0..self.seen.len())].clone();
                    out.push(ByzOut::To(pick(rng), m));
                }
            }
            Strategy::FutureFlood => {
                for _ in 0..5 {
                    let body = match rng.gen_range(0..7) {
                        0 => Body::PrePrepare(PrePrepare {
                            view,
                            seq: stable + rng.gen_range(1_000..u64::MAX / 4),
                            digest: random_digest(rng),
                            batch: Some(Batch { requests: vec![] }),
                        }),
                        1 => Body::Prepare(Prepare {
                            view: view.saturating_add(rng.gen_range(1..u64::MAX / 4)),
                            seq: stable + 1,
                            digest: random_digest(rng),
                        }),
                        2 => Body::ViewChange(ViewChange {
                            new_view: view.saturating_add(if rng.gen_bool(0.5) {
                                rng.gen_range(1_000..u64::MAX / 4)
                            } else {
                                rng.gen_range(2..crate::core::MAX_VIEW_AHEAD)
                            }),
                            stable_seq: 0,
                            checkpoint_proof: vec![],
                            prepared: vec![],
                        }),
                        3 => Body::Checkpoint(Checkpoint {
                            seq: stable + rng.gen_range(1..1_000_000) * 8,
                            state_digest: random_digest(rng),
                        }),
                        // Suspicions of the next view (to tip honest ones into a
                        // view change) and of far views.
                        4 => Body::Suspect(Suspect {
                            view: view.saturating_add(if rng.gen_bool(0.5) {
                                1
                            } else {
                                rng.gen_range(2..u64::MAX / 4)
                            }),
                        }),
                        // Requests "relayed" to the primary that no client signed.
                        5 => Body::Forward(Forward {
                            requests: (0..rng.gen_range(1..8)).map(|_| random_digest(rng)).collect(),
                        }),
                        _ => Body::StateRequest(StateRequest { min_seq: 0 }),
                    };
                    let msg = Message { epoch, sender: self.id, body: Some(body) };
                    out.push(ByzOut::To(pick(rng), self.sealed(&msg)));
                }
                // A view change for the next view with a bogus prepared certificate.
                let bogus = Message {
                    epoch,
                    sender: self.id,
                    body: Some(Body::ViewChange(ViewChange {
                        new_view: view.saturating_add(1),
                        stable_seq: stable,
                        checkpoint_proof: vec![],
                        prepared: vec![crate::proto::PreparedCertificate {
                            pre_prepare: None,
                            prepares: vec![],
                            batch: None,
                        }],
                    })),
                };
                out.push(ByzOut::To(pick(rng), self.sealed(&bogus)));
                let nv = Message {
                    epoch,
                    sender: self.id,
                    body: Some(Body::NewView(NewView {
                        view: view.saturating_add(1),
                        view_changes: vec![],
                        pre_prepares: vec![],
                    })),
                };
                out.push(ByzOut::To(pick(rng), self.sealed(&nv)));
            }
            Strategy::Garbage => {
                let mut junk = vec![0u8; rng.gen_range(0..512)];
                rng.fill_bytes(&mut junk);
                out.push(ByzOut::To(pick(rng), junk.clone().into()));
                out.push(ByzOut::ClientTo(pick(rng), junk.into()));
                let mut huge = vec![0u8; max_message * 2 + 10];
                rng.fill_bytes(&mut huge[..64]);
                out.push(ByzOut::To(pick(rng), huge.clone().into()));
                out.push(ByzOut::ClientTo(pick(rng), huge.into()));
                // A valid envelope around an undecodable payload, and one with a short signature.
                let env = Envelope {
                    payload: Bytes::from_static(&[0xff, 0xff, 0x01]),
                    signature: Bytes::from(vec![0u8; 64]),
                };
                out.push(ByzOut::To(pick(rng), env.encode_to_vec().into()));
                let msg = Message {
                    epoch,
                    sender: self.id,
                    body: Some(Body::Prepare(Prepare { view, seq: stable + 1, digest: Bytes::from_static(&[1, 2]) })),
                };
                let mut env = self.key.seal(&msg);
                env.signature = Bytes::from_static(&[7; 10]);
                out.push(ByzOut::To(pick(rng), env.encode_to_vec().into()));
                // A truncated real message.
                if let Some(m) = self.seen.last() {
                    let cut = m.slice(..m.len() / 2);
                    out.push(ByzOut::To(pick(rng), cut));
                }
            }
            Strategy::Forger => {
                if honest.is_empty() {
                    return out;
                }
                let victim = honest[rng.gen_range(0..honest.len())];
                // Conflicting votes "from" the victim, signed with our own key.
                let d1 = random_digest(rng);
                let d2 = random_digest(rng);
                let seq = stable + 1;
                let a = self.key.seal(&Message {
                    epoch,
                    sender: victim,
                    body: Some(Body::Prepare(Prepare { view, seq, digest: d1 })),
                });
                let b = self.key.seal(&Message {
                    epoch,
                    sender: victim,
                    body: Some(Body::Prepare(Prepare { view, seq, digest: d2 })),
                });
                for t in peers {
                    out.push(ByzOut::To(*t, a.encode_to_vec().into()));
                    out.push(ByzOut::To(*t, b.encode_to_vec().into()));
                }
                out.push(ByzOut::ForgedEvidence {
                    against: victim,
                    evidence: Evidence {
                        kind: EvKind::ConflictingPrepare as i32,
                        offender: victim,
                        epoch,
                        first: Some(a),
                        second: Some(b),
                    },
                });
                // Two real messages of the victim that do not conflict, passed off as a conflict.
                let theirs: Vec<&Envelope> =
                    self.honest_votes.iter().filter(|(s, _)| *s == victim).map(|(_, e)| e).collect();
                if theirs.len() >= 2 {
                    let i = rng.gen_range(0..theirs.len());
                    let j = (i + 1 + rng.gen_range(0..theirs.len() - 1)) % theirs.len();
                    let (x, y) = (theirs[i].clone(), theirs[j].clone());
                    for kind in [
                        EvKind::ConflictingPrepare,
                        EvKind::ConflictingCommit,
                        EvKind::EquivocatingPrePrepare,
                        EvKind::ConflictingCheckpoint,
                    ] {
                        out.push(ByzOut::ForgedEvidence {
                            against: victim,
                            evidence: Evidence {
                                kind: kind as i32,
                                offender: victim,
                                epoch,
                                first: Some(x.clone()),
                                second: Some(y.clone()),
                            },
                        });
                    }
                    // The same message twice.
                    out.push(ByzOut::ForgedEvidence {
                        against: victim,
                        evidence: Evidence {
                            kind: EvKind::ConflictingPrepare as i32,
                            offender: victim,
                            epoch,
                            first: Some(x.clone()),
                            second: Some(x),
                        },
                    });
                }
            }
            _ => {}
        }
        out
    }

    fn reseal(&self, msg: &Message, body: Body) -> Bytes {
        let m = Message { epoch: msg.epoch, sender: msg.sender, body: Some(body) };
        self.sealed(&m)
    }

    /// Signs a message with this replica's own key and encodes the envelope.
    fn sealed(&self, m: &Message) -> Bytes {
        self.key.seal(m).encode_to_vec().into()
    }
}

fn open(bytes: &Bytes) -> Option<(Envelope, Message)> {
    let env = Envelope::decode(bytes.as_ref()).ok()?;
    let msg = Message::decode(env.payload.as_ref()).ok()?;
    Some((env, msg))
}
