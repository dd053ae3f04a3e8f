//! The client side of the protocol as a state machine: it signs requests
//! with strictly increasing timestamps and accepts a result once f+1
//! replicas sent matching signed replies (so at least one is honest).

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message as _;

use crate::crypto::{verify, Keypair, MESSAGE_DOMAIN};
use crate::membership::{Membership, ReplicaId};
use crate::proto::{message::Body, Envelope, Message, OpResult, Operation, RequestBody};

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

    /// Gives up on the outstanding request.
    pub fn abandon(&mut self) {
        self.outstanding = None;
    }

    /// Takes one reply; returns the result once f+1 replicas agree.
    pub fn on_reply(&mut self, envelope: &[u8]) -> Result<Option<Completed>, ReplyError> {
        let env = Envelope::decode(envelope).map_err(|_| ReplyError::Malformed)?;
        let msg = Message::decode(env.payload.as_ref()).map_err(|_| ReplyError::Malformed)?;
        let Some(Body::Reply(reply)) = msg.body else { return Err(ReplyError::Malformed) };
        if msg.epoch != self.membership.epoch() {
            return Err(ReplyError::UnknownSender);
        }
        let key = self.membership.key(msg.sender).ok_or(ReplyError::UnknownSender)?;
        let Some(o) = &mut self.outstanding else { return Err(ReplyError::NotOutstanding) };
        if reply.timestamp != o.timestamp || reply.client.as_ref() != self.key.public_bytes() {
            return Err(ReplyError::NotOutstanding);
        }
        if o.replies.contains_key(&msg.sender) {
            return Ok(None); // this replica already answered (verified); a resend adds nothing
        }
        verify(key, MESSAGE_DOMAIN, &env.payload, &env.signature).map_err(|_| ReplyError::BadSignature)?;
        let result = reply.result.unwrap_or_default();
        o.replies.insert(msg.sender, (result.clone(), reply.view));
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
