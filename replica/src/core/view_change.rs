//! Choosing what the new view re-proposes (the O set of NEW-VIEW).
//!
//! A pure function of the view-change messages, so that the new primary and
//! every backup compute it identically and a backup can check the primary.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::crypto::{sha256, Digest};
use crate::membership::ReplicaId;
use crate::proto::Envelope;

/// The digest of a batch: SHA-256 over each request's SHA-256.
pub fn batch_digest(requests: &[Bytes]) -> Digest {
    let mut parts: Vec<Digest> = Vec::with_capacity(requests.len());
    for r in requests {
        parts.push(sha256(&[r]));
    }
    let refs: Vec<&[u8]> =
        std::iter::once(b"pbft/batch/v1".as_slice()).chain(parts.iter().map(|d| d.as_slice())).collect();
    sha256(&refs)
}

/// A prepared certificate as carried in a view change (already validated).
#[derive(Clone, Debug)]
pub struct PreparedInfo {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub requests: Vec<Bytes>,
}

/// A validated view-change message.
#[derive(Clone, Debug)]
pub struct ViewChangeInfo {
    pub sender: ReplicaId,
    pub stable_seq: u64,
    pub stable_digest: Option<Digest>,
    pub checkpoint_proof: Vec<Envelope>,
    pub prepared: Vec<PreparedInfo>,
}

/// One sequence number the new view re-proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSlot {
    pub seq: u64,
    pub digest: Digest,
    /// Empty for a null request.
    pub requests: Vec<Bytes>,
}

/// The outcome of a view change.
#[derive(Clone, Debug)]
pub struct NewViewPlan {
    /// The latest stable checkpoint any view change proves (min-s).
    pub min_s: u64,
    pub stable_digest: Option<Digest>,
    pub checkpoint_proof: Vec<Envelope>,
    /// The highest prepared sequence number (max-s), at least `min_s`.
    pub max_s: u64,
    /// One entry per sequence number in (min_s, max_s].
    pub slots: Vec<PlannedSlot>,
}

/// Computes min-s, max-s and the O set: for each sequence number between
/// them, the request prepared in the highest view, or a null request.
pub fn plan_new_view(vcs: &[ViewChangeInfo]) -> NewViewPlan {
    let best = vcs.iter().max_by_key(|v| v.stable_seq);
    let min_s = best.map_or(0, |v| v.stable_seq);
    let mut chosen: BTreeMap<u64, &PreparedInfo> = BTreeMap::new();
    for vc in vcs {
        for p in &vc.prepared {
            if p.seq <= min_s {
                continue;
            }
            match chosen.get(&p.seq) {
                Some(c) if c.view >= p.view => {}
                _ => {
                    chosen.insert(p.seq, p);
                }
            }
        }
    }
    let max_s = chosen.keys().next_back().copied().unwrap_or(min_s).max(min_s);
    let null = batch_digest(&[]);
    let slots = (min_s + 1..=max_s)
        .map(|seq| match chosen.get(&seq) {
            Some(p) => PlannedSlot { seq, digest: p.digest, requests: p.requests.clone() },
            None => PlannedSlot { seq, digest: null, requests: vec![] },
        })
        .collect();
    NewViewPlan {
        min_s,
        stable_digest: best.and_then(|v| v.stable_digest),
        checkpoint_proof: best.map(|v| v.checkpoint_proof.clone()).unwrap_or_default(),
        max_s,
        slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(view: u64, seq: u64, tag: u8) -> PreparedInfo {
        let requests = vec![Bytes::from(vec![tag; 8])];
        PreparedInfo { view, seq, digest: batch_digest(&requests), requests }
    }

    fn vc(sender: u32, stable: u64, prepared: Vec<PreparedInfo>) -> ViewChangeInfo {
        ViewChangeInfo { sender, stable_seq: stable, stable_digest: None, checkpoint_proof: vec![], prepared }
    }

    #[test]
    fn o_set_takes_highest_view_and_fills_gaps_with_null() {
        let vcs = vec![
            vc(0, 10, vec![p(1, 11, 1), p(1, 13, 3)]),
            vc(1, 10, vec![p(2, 11, 9)]),
            vc(2, 8, vec![p(0, 9, 7), p(0, 12, 5)]),
        ];
        let plan = plan_new_view(&vcs);
        assert_eq!((plan.min_s, plan.max_s), (10, 13));
        let seqs: Vec<u64> = plan.slots.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![11, 12, 13]);
        assert_eq!(plan.slots[0].digest, p(2, 11, 9).digest, "view 2 beats view 1");
        assert_eq!(plan.slots[1].digest, p(0, 12, 5).digest);
        assert_eq!(plan.slots[2].digest, p(1, 13, 3).digest);
        // Below min-s nothing is re-proposed even if prepared.
        assert!(plan.slots.iter().all(|s| s.seq > 10));
    }

    #[test]
    fn no_prepared_requests_means_empty_o_set() {
        let plan = plan_new_view(&[vc(0, 4, vec![]), vc(1, 0, vec![]), vc(3, 4, vec![])]);
        assert_eq!((plan.min_s, plan.max_s, plan.slots.len()), (4, 4, 0));
    }

    #[test]
    fn gaps_become_null_requests() {
        let plan = plan_new_view(&[vc(0, 0, vec![p(3, 3, 1)])]);
        assert_eq!(plan.slots.len(), 3);
        assert!(plan.slots[0].requests.is_empty() && plan.slots[1].requests.is_empty());
        assert_eq!(plan.slots[0].digest, batch_digest(&[]));
    }
}
