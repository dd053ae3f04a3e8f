//! Fault injection for tests (only with the `fault-injection` feature),
//! configured from `PBFT_FAULTS`, a comma-separated list of:
//! `silent`, `drop-to=<id>`, `equivocate` (as primary, a second pre-prepare
//! for the same slot with another batch), `conflicting-votes` (a second
//! prepare/commit with another digest), `flood` (far-future prepares with
//! every broadcast), `forge-evidence=<id>` (the admin API also serves a
//! forged evidence blaming member `<id>`: two conflicting prepares claiming
//! to be from `<id>` but signed with this replica's own key, which is what a
//! Byzantine replica can make up; it must convict nobody).

use bytes::Bytes;
use prost::Message as _;

use crate::core::view_change::batch_digest;
use crate::crypto::Keypair;
use crate::proto::{evidence::Kind, message::Body, Batch, Commit, Envelope, Evidence, Message, Prepare};

/// The faults this replica commits.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub silent: bool,
    pub drop_to: Vec<u32>,
    pub equivocate: bool,
    pub conflicting_votes: bool,
    pub flood: bool,
    /// Members this replica serves forged evidence against.
    pub forge_evidence: Vec<u32>,
    /// This replica's key (signs the forgeries; set by [`Faults::signing_with`]).
    forger: Option<Keypair>,
}

impl Faults {
    pub fn from_env() -> Faults {
        let mut f = Faults::default();
        let spec = std::env::var("PBFT_FAULTS").unwrap_or_default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some(("drop-to", id)) => f.drop_to.extend(id.parse::<u32>().ok()),
                Some(("forge-evidence", id)) => f.forge_evidence.extend(id.parse::<u32>().ok()),
                _ => match item {
                    "silent" => f.silent = true,
                    "equivocate" => f.equivocate = true,
                    "conflicting-votes" => f.conflicting_votes = true,
                    "flood" => f.flood = true,
                    other => tracing::warn!("unknown fault {other:?} ignored"),
                },
            }
        }
        if !spec.is_empty() {
            tracing::warn!(faults = ?f, "FAULT INJECTION ACTIVE");
        }
        f
    }

    /// The faults, with this replica's key for the forgeries.
    pub fn signing_with(mut self, key: &Keypair) -> Faults {
        self.forger = Some(key.clone());
        self
    }

    /// Forged evidence (encoded `pbft.v1.Evidence`) against each member of
    /// `forge_evidence` in `epoch`: deterministic (the same bytes on every
    /// call), so the operator sees one record per target, not a stream.
    pub fn forged_evidence(&self, epoch: u64) -> Vec<Bytes> {
        let Some(key) = &self.forger else { return vec![] };
        self.forge_evidence
            .iter()
            .map(|&target| {
                let prepare = |digest: u8| {
                    key.seal(&Message {
                        epoch,
                        sender: target,
                        body: Some(Body::Prepare(Prepare { view: 0, seq: 1, digest: Bytes::from(vec![digest; 32]) })),
                    })
                };
                let e = Evidence {
                    kind: Kind::ConflictingPrepare as i32,
                    offender: target,
                    epoch,
                    first: Some(prepare(1)),
                    second: Some(prepare(2)),
                };
                Bytes::from(e.encode_to_vec())
            })
            .collect()
    }

    /// Extra envelopes to broadcast after `envelope`.
    pub fn extra_for(&self, key: &Keypair, envelope: &Bytes) -> Vec<Bytes> {
        let Ok(env) = Envelope::decode(envelope.as_ref()) else { return vec![] };
        let Ok(msg) = Message::decode(env.payload.as_ref()) else { return vec![] };
        let mut out = vec![];
        let seal = |m: &Message| -> Bytes { key.seal(m).encode_to_vec().into() };
        match &msg.body {
            Some(Body::PrePrepare(p)) if self.equivocate && p.batch.is_some() => {
                let batch = Batch { requests: vec![] };
                let mut q = p.clone();
                q.digest = Bytes::copy_from_slice(&batch_digest(&batch.requests));
                q.batch = Some(batch);
                out.push(seal(&Message { body: Some(Body::PrePrepare(q)), ..msg.clone() }));
            }
            Some(Body::Prepare(p)) if self.conflicting_votes => {
                let q = Prepare { digest: Bytes::from(vec![0xee; 32]), ..p.clone() };
                out.push(seal(&Message { body: Some(Body::Prepare(q)), ..msg.clone() }));
            }
            Some(Body::Commit(p)) if self.conflicting_votes => {
                let q = Commit { digest: Bytes::from(vec![0xee; 32]), ..p.clone() };
                out.push(seal(&Message { body: Some(Body::Commit(q)), ..msg.clone() }));
            }
            _ => {}
        }
        if self.flood {
            for i in 0..16u64 {
                let q = Prepare { view: 0, seq: 1_000_000_000 + i, digest: Bytes::from(vec![i as u8; 32]) };
                out.push(seal(&Message { body: Some(Body::Prepare(q)), ..msg.clone() }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::evidence::verify_evidence;
    use crate::membership::Membership;
    use crate::proto::{Member, MembershipConfig};

    #[test]
    fn forged_evidence_is_stable_and_never_verifies() {
        let keys: Vec<Keypair> = (0..4u8).map(|i| Keypair::from_secret([i + 1; 32])).collect();
        let membership = Membership::new(MembershipConfig {
            epoch: 3,
            members: keys
                .iter()
                .enumerate()
                .map(|(i, k)| Member {
                    id: i as u32,
                    public_key: Bytes::copy_from_slice(&k.public_bytes()),
                    address: String::new(),
                })
                .collect(),
            admin_key: Bytes::copy_from_slice(&Keypair::from_secret([9; 32]).public_bytes()),
        })
        .expect("membership");
        let f = Faults { forge_evidence: vec![2], ..Faults::default() }.signing_with(&keys[1]);
        let forged = f.forged_evidence(3);
        assert_eq!(forged.len(), 1);
        assert_eq!(forged, f.forged_evidence(3), "the same bytes every time");
        let e = Evidence::decode(forged[0].as_ref()).expect("decodes");
        assert_eq!(e.offender, 2);
        assert!(verify_evidence(&e, &membership).is_err(), "signed by 1, blaming 2: must not verify");
    }
}
