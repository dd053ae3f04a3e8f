//! The client side of the protocol as a state machine: it signs requests
//! with strictly increasing timestamps and accepts a result once f+1
//! replicas sent matching signed replies (so at least one is honest).

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message as _;

use crate::crypto::{verify, Keypair, MESSAGE_DOMAIN};
use crate::membership::{Membership, ReplicaId};
use crate::merkle;
use crate::proto::{message::Body, Message, OpResult, Operation, Reply, RequestBody, SignedReply};

/// A request that completed with f+1 matching replies.
#[derive(Clone, Debug, PartialEq)]
pub struct Completed {
    pub timestamp: u64,
    pub result: OpResult,
    /// The highest view any matching reply reported (a hint for who is primary).
    pub view: u64,
}

/// Why a reply was ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("reply does not decode")]
    Malformed,
    #[error("reply is from an unknown replica or epoch")]
    UnknownSender,
    #[error("reply signature does not verify")]
    BadSignature,
    #[error("reply is not for the outstanding request")]
    NotOutstanding,
    #[error("reply does not belong to the signed batch of replies")]
    NotInBatch,
}

/// Opens a replica's reply (an encoded [`SignedReply`]) against `membership`:
/// decodes it, asks `wanted(sender, reply)` whether to go on (an error
/// refuses the reply, `false` skips it; both before any signature work),
/// checks that the reply is a leaf of the signed root and that the root's
/// signature verifies. Returns the sender and the reply, or `None` when skipped.
pub fn open_reply(
    membership: &Membership,
    signed: &[u8],
    wanted: impl FnOnce(ReplicaId, &Reply) -> Result<bool, ReplyError>,
) -> Result<Option<(ReplicaId, Reply)>, ReplyError> {
    let signed = SignedReply::decode(signed).map_err(|_| ReplyError::Malformed)?;
    let root_env = signed.root.ok_or(ReplyError::Malformed)?;
    let msg = Message::decode(root_env.payload.as_ref()).map_err(|_| ReplyError::Malformed)?;
    let Some(Body::ReplyRoot(root)) = msg.body else { return Err(ReplyError::Malformed) };
    let reply = Reply::decode(signed.reply.as_ref()).map_err(|_| ReplyError::Malformed)?;
    if msg.epoch != membership.epoch() {
        return Err(ReplyError::UnknownSender);
    }
    let key = membership.key(msg.sender).ok_or(ReplyError::UnknownSender)?;
    if !wanted(msg.sender, &reply)? {
        return Ok(None);
    }
    let leaf = merkle::leaf_hash(&signed.reply);
    let reached = merkle::root_from_path(&leaf, signed.index, root.leaves, &signed.path);
    if reached.is_none_or(|r| r.as_slice() != root.root.as_ref()) {
        return Err(ReplyError::NotInBatch);
    }
    verify(key, MESSAGE_DOMAIN, &root_env.payload, &root_env.signature).map_err(|_| ReplyError::BadSignature)?;
    Ok(Some((msg.sender, reply)))
}

struct Outstanding {
    timestamp: u64,
    request: Bytes,
    replies: BTreeMap<ReplicaId, (OpResult, u64)>,
}

/// One client identity with at most one outstanding request.
pub struct ClientCore {
    key: Keypair,
    membership: Membership,
    last_timestamp: u64,
    outstanding: Option<Outstanding>,
}

impl ClientCore {
    /// A client; `start_timestamp` must exceed any timestamp this key used
    /// before (real clients start from the wall clock in microseconds).
    pub fn new(key: Keypair, membership: Membership, start_timestamp: u64) -> Self {
        ClientCore { key, membership, last_timestamp: start_timestamp, outstanding: None }
    }

    /// The client's public key bytes.
    pub fn id(&self) -> Bytes {
        Bytes::copy_from_slice(&self.key.public_bytes())
    }

    /// The membership used to check replies.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Adopts a newer membership (for example after a replacement).
    pub fn set_membership(&mut self, m: Membership) {
        self.membership = m;
        if let Some(o) = &mut self.outstanding {
            o.replies.clear();
        }
    }

    /// Signs a new request, replacing any outstanding one, and returns its encoding.
    pub fn submit(&mut self, operation: Operation) -> Bytes {
        self.last_timestamp += 1;
        let body = RequestBody { client: self.id(), timestamp: self.last_timestamp, operation: Some(operation) };
        let signed = self.key.sign_request(body.encode_to_vec());
        let request: Bytes = signed.encode_to_vec().into();
        self.outstanding =
            Some(Outstanding { timestamp: self.last_timestamp, request: request.clone(), replies: BTreeMap::new() });
        request
    }

    /// The outstanding request, for retransmission.
    pub fn outstanding(&self) -> Option<(u64, Bytes)> {
        self.outstanding.as_ref().map(|o| (o.timestamp, o.request.clone()))
    }

    /// How many replicas sent a valid reply to the outstanding request.
    pub fn answered(&self) -> usize {
        self.outstanding.as_ref().map_or(0, |o| o.replies.len())
    }

    /// Gives up on the outstanding request.
    pub fn abandon(&mut self) {
        self.outstanding = None;
    }

    /// Takes one reply (an encoded [`SignedReply`]); returns the result once f+1 replicas agree.
    pub fn on_reply(&mut self, signed: &[u8]) -> Result<Option<Completed>, ReplyError> {
        let Some(o) = &mut self.outstanding else { return Err(ReplyError::NotOutstanding) };
        let opened = open_reply(&self.membership, signed, |sender, reply| {
            if reply.timestamp != o.timestamp || reply.client.as_ref() != self.key.public_bytes() {
                return Err(ReplyError::NotOutstanding);
            }
            // A replica that already answered (verified) adds nothing by resending.
            Ok(!o.replies.contains_key(&sender))
        })?;
        let Some((sender, reply)) = opened else { return Ok(None) };
        let result = reply.result.unwrap_or_default();
        o.replies.insert(sender, (result.clone(), reply.view));
        let matching: Vec<u64> = o.replies.values().filter(|(r, _)| *r == result).map(|(_, v)| *v).collect();
        if matching.len() >= self.membership.weak_quorum() {
            let view = matching.into_iter().max().unwrap_or(0);
            let timestamp = o.timestamp;
            self.outstanding = None;
            return Ok(Some(Completed { timestamp, result, view }));
        }
        Ok(None)
    }
}
