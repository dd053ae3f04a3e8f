//! Fault injection for tests (only with the `fault-injection` feature),
//! configured from `PBFT_FAULTS`, a comma-separated list of:
//! `silent`, `drop-to=<id>`, `equivocate` (as primary, a second pre-prepare
//! for the same slot with another batch), `conflicting-votes` (a second
//! prepare/commit with another digest), `flood` (far-future prepares with
//! every broadcast).

use bytes::Bytes;
use prost::Message as _;

use crate::core::view_change::batch_digest;
use crate::crypto::Keypair;
use crate::proto::{message::Body, Batch, Commit, Envelope, Message, Prepare};

/// The faults this replica commits.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub silent: bool,
    pub drop_to: Vec<u32>,
    pub equivocate: bool,
    pub conflicting_votes: bool,
    pub flood: bool,
}

impl Faults {
    pub fn from_env() -> Faults {
        let mut f = Faults::default();
        let spec = std::env::var("PBFT_FAULTS").unwrap_or_default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some(("drop-to", id)) => f.drop_to.extend(id.parse::<u32>().ok()),
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
