//! Proof of misbehaviour: two messages signed by one replica that an honest
//! replica never signs together. Anyone holding the membership of the
//! evidence's epoch can check it with [`verify_evidence`]; the operator uses
//! that to decide a quarantine, so a forgery must never pass.

use prost::Message as _;

use crate::crypto::{verify_strict, MESSAGE_DOMAIN};
use crate::membership::{Membership, ReplicaId};
use crate::proto::{evidence::Kind, message::Body, Envelope, Evidence, Message};

/// Why evidence was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvidenceError {
    #[error("evidence is missing one of its two messages")]
    Incomplete,
    #[error("message {0} of the evidence does not decode")]
    Malformed(u8),
    #[error("evidence is for epoch {evidence} but the membership given is epoch {membership}")]
    WrongEpoch { evidence: u64, membership: u64 },
    #[error("the messages were not both sent by the accused replica {0}")]
    SenderMismatch(ReplicaId),
    #[error("replica {0} is not a member of the epoch")]
    NotMember(ReplicaId),
    #[error("signature of message {0} does not verify against the accused replica's key")]
    BadSignature(u8),
    #[error("the two messages do not conflict as {0:?}")]
    NoConflict(Kind),
}

/// The identity of a protocol vote: two different votes with the same slot
/// from one sender are a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VoteSlot {
    pub kind: i32,
    pub view: u64,
    pub seq: u64,
}

/// The slot a message votes in and the digest it votes for, if it is a vote.
pub fn vote_of(msg: &Message) -> Option<(VoteSlot, Vec<u8>)> {
    let slot = |kind: Kind, view, seq| VoteSlot { kind: kind as i32, view, seq };
    match msg.body.as_ref()? {
        Body::PrePrepare(p) => Some((slot(Kind::EquivocatingPrePrepare, p.view, p.seq), p.digest.to_vec())),
        Body::Prepare(p) => Some((slot(Kind::ConflictingPrepare, p.view, p.seq), p.digest.to_vec())),
        Body::Commit(c) => Some((slot(Kind::ConflictingCommit, c.view, c.seq), c.digest.to_vec())),
        Body::Checkpoint(c) => Some((slot(Kind::ConflictingCheckpoint, 0, c.seq), c.state_digest.to_vec())),
        Body::ViewChange(v) => Some((
            slot(Kind::ConflictingViewChange, v.new_view, 0),
            crate::crypto::sha256(&[&v.encode_to_vec()]).to_vec(),
        )),
        _ => None,
    }
}

/// Builds evidence from two envelopes already known to be validly signed by
/// the same sender for the same vote slot with different digests.
pub fn make_evidence(slot: VoteSlot, offender: ReplicaId, epoch: u64, first: Envelope, second: Envelope) -> Evidence {
    Evidence { kind: slot.kind, offender, epoch, first: Some(first), second: Some(second) }
}

/// Checks evidence against the membership of its epoch, strictly: both
/// signatures verify under the offender's key (strict ed25519), both messages
/// come from the offender in that epoch, and they vote differently in the
/// same slot of the kind claimed.
pub fn verify_evidence(e: &Evidence, membership: &Membership) -> Result<(), EvidenceError> {
    if e.epoch != membership.epoch() {
        return Err(EvidenceError::WrongEpoch { evidence: e.epoch, membership: membership.epoch() });
    }
    let kind = Kind::try_from(e.kind).unwrap_or(Kind::Unknown);
    let (Some(a), Some(b)) = (&e.first, &e.second) else { return Err(EvidenceError::Incomplete) };
    let key = membership.key(e.offender).ok_or(EvidenceError::NotMember(e.offender))?;
    let ma = Message::decode(a.payload.as_ref()).map_err(|_| EvidenceError::Malformed(1))?;
    let mb = Message::decode(b.payload.as_ref()).map_err(|_| EvidenceError::Malformed(2))?;
    for m in [&ma, &mb] {
        if m.sender != e.offender {
            return Err(EvidenceError::SenderMismatch(e.offender));
        }
        if m.epoch != e.epoch {
            return Err(EvidenceError::WrongEpoch { evidence: m.epoch, membership: membership.epoch() });
        }
    }
    verify_strict(key, MESSAGE_DOMAIN, &a.payload, &a.signature).map_err(|_| EvidenceError::BadSignature(1))?;
    verify_strict(key, MESSAGE_DOMAIN, &b.payload, &b.signature).map_err(|_| EvidenceError::BadSignature(2))?;
    match (vote_of(&ma), vote_of(&mb)) {
        (Some((sa, da)), Some((sb, db))) if sa == sb && sa.kind == kind as i32 && da != db => Ok(()),
        _ => Err(EvidenceError::NoConflict(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::membership::tests::config;
    use crate::proto::{Commit, Prepare};
    use bytes::Bytes;

    fn prepare(sender: u32, view: u64, seq: u64, d: u8) -> Message {
        Message { epoch: 1, sender, body: Some(Body::Prepare(Prepare { view, seq, digest: Bytes::from(vec![d; 32]) })) }
    }

    fn key(id: u32) -> Keypair {
        Keypair::from_secret([id as u8 + 1; 32])
    }

    #[test]
    fn real_conflict_verifies_and_forgeries_do_not() {
        let m = Membership::new(config(4, 1)).unwrap();
        let k2 = key(2);
        let a = k2.seal(&prepare(2, 3, 10, 1));
        let b = k2.seal(&prepare(2, 3, 10, 2));
        let good = Evidence {
            kind: Kind::ConflictingPrepare as i32,
            offender: 2,
            epoch: 1,
            first: Some(a.clone()),
            second: Some(b.clone()),
        };
        assert_eq!(verify_evidence(&good, &m), Ok(()));

        // Same digest twice: no conflict.
        let same = Evidence { second: Some(a.clone()), ..good.clone() };
        assert_eq!(verify_evidence(&same, &m), Err(EvidenceError::NoConflict(Kind::ConflictingPrepare)));
        // Different sequence numbers: no conflict.
        let other_seq = Evidence { second: Some(k2.seal(&prepare(2, 3, 11, 2))), ..good.clone() };
        assert!(verify_evidence(&other_seq, &m).is_err());
        // Prepare vs commit for the same slot: not the same vote.
        let commit = Message {
            epoch: 1,
            sender: 2,
            body: Some(Body::Commit(Commit { view: 3, seq: 10, digest: Bytes::from(vec![2; 32]) })),
        };
        let mixed = Evidence { second: Some(k2.seal(&commit)), ..good.clone() };
        assert!(verify_evidence(&mixed, &m).is_err());
        // A Byzantine replica 3 forges messages "from" honest replica 1 with its own key.
        let k3 = key(3);
        let forged = Evidence {
            offender: 1,
            first: Some(k3.seal(&prepare(1, 3, 10, 1))),
            second: Some(k3.seal(&prepare(1, 3, 10, 2))),
            ..good.clone()
        };
        assert_eq!(verify_evidence(&forged, &m), Err(EvidenceError::BadSignature(1)));
        // Accusing someone else with replica 2's real messages.
        let wrong_offender = Evidence { offender: 1, ..good.clone() };
        assert_eq!(verify_evidence(&wrong_offender, &m), Err(EvidenceError::SenderMismatch(1)));
        // Claimed under another epoch's membership.
        let m2 = Membership::new(config(4, 2)).unwrap();
        assert!(matches!(verify_evidence(&good, &m2), Err(EvidenceError::WrongEpoch { .. })));
        // Wrong kind label.
        let relabelled = Evidence { kind: Kind::ConflictingCommit as i32, ..good.clone() };
        assert!(verify_evidence(&relabelled, &m).is_err());
        // Truncated signature.
        let mut short = good.clone();
        short.first.as_mut().unwrap().signature = Bytes::from_static(&[1, 2, 3]);
        assert_eq!(verify_evidence(&short, &m), Err(EvidenceError::BadSignature(1)));
    }
}
