//! The replicated state machine: a key-value store, the per-client
//! exactly-once table, and the membership, with a deterministic snapshot
//! whose SHA-256 is the checkpoint digest.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message as _;

use crate::crypto::{sha256, Digest};
use crate::membership::{Membership, MembershipError};
use crate::proto::{
    op_result::Status, operation::Kind, ClientEntry, KvEntry, MembershipConfig, OpResult, Operation, Snapshot,
};

/// Why a snapshot cannot be installed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("snapshot has no membership")]
    NoMembership,
    #[error("snapshot membership is invalid: {0}")]
    Membership(#[from] MembershipError),
    #[error("snapshot entries are not strictly sorted")]
    Unsorted,
}

/// What a client's last executed request returned.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRecord {
    pub timestamp: u64,
    pub result: OpResult,
}

/// The key-value store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvStore {
    map: BTreeMap<Bytes, Bytes>,
    bytes: usize,
}

impl KvStore {
    /// Applies a key-value operation. Membership operations are not handled here.
    pub fn apply(&mut self, op: &Operation) -> OpResult {
        match &op.kind {
            Some(Kind::Put(p)) => {
                self.insert(p.key.clone(), p.value.clone());
                ok(None)
            }
            Some(Kind::Get(g)) => match self.map.get(&g.key) {
                Some(v) => ok(Some(v.clone())),
                None => status(Status::NotFound, None),
            },
            Some(Kind::Delete(d)) => match self.remove(&d.key) {
                Some(_) => ok(None),
                None => status(Status::NotFound, None),
            },
            Some(Kind::Cas(c)) => {
                let current = self.map.get(&c.key).cloned();
                if current.as_ref() != c.expected.as_ref() {
                    return status(Status::CasMismatch, current);
                }
                match &c.new_value {
                    Some(v) => self.insert(c.key.clone(), v.clone()),
                    None => {
                        self.remove(&c.key);
                    }
                }
                ok(None)
            }
            Some(Kind::Membership(_)) | None => rejected("not a key-value operation"),
        }
    }

    fn insert(&mut self, k: Bytes, v: Bytes) {
        let add = k.len() + v.len();
        if let Some(old) = self.map.insert(k.clone(), v) {
            self.bytes -= k.len() + old.len();
        }
        self.bytes += add;
    }

    fn remove(&mut self, k: &Bytes) -> Option<Bytes> {
        let old = self.map.remove(k)?;
        self.bytes -= k.len() + old.len();
        Some(old)
    }

    /// Reads a key (local, unordered: for tests and diagnostics).
    pub fn get(&self, k: &[u8]) -> Option<&Bytes> {
        self.map.get(k)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A successful result.
pub fn ok(value: Option<Bytes>) -> OpResult {
    status(Status::Ok, value)
}

/// A result with a status.
pub fn status(s: Status, value: Option<Bytes>) -> OpResult {
    OpResult { status: s as i32, value, error: String::new() }
}

/// A rejected operation with a reason.
pub fn rejected(why: &str) -> OpResult {
    OpResult { status: Status::Rejected as i32, value: None, error: why.to_string() }
}

/// The whole replicated state at some sequence number.
#[derive(Clone, Debug)]
pub struct ReplicatedState {
    /// Last sequence number executed into this state.
    pub seq: u64,
    pub membership: Membership,
    /// A change executed but not yet in force (it applies when the checkpoint
    /// at the next boundary becomes stable).
    pub next_membership: Option<MembershipConfig>,
    pub kv: KvStore,
    pub clients: BTreeMap<Bytes, ClientRecord>,
}

impl ReplicatedState {
    /// The initial state for a membership.
    pub fn new(membership: Membership) -> Self {
        ReplicatedState { seq: 0, membership, next_membership: None, kv: KvStore::default(), clients: BTreeMap::new() }
    }

    /// The canonical snapshot (entries sorted).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            seq: self.seq,
            membership: Some(self.membership.config().clone()),
            next_membership: self.next_membership.clone(),
            kv: self.kv.map.iter().map(|(k, v)| KvEntry { key: k.clone(), value: v.clone() }).collect(),
            clients: self
                .clients
                .iter()
                .map(|(c, r)| ClientEntry { client: c.clone(), timestamp: r.timestamp, result: Some(r.result.clone()) })
                .collect(),
        }
    }

    /// The encoded snapshot and its digest.
    pub fn encoded_snapshot(&self) -> (Bytes, Digest) {
        let bytes = self.snapshot().encode_to_vec();
        let digest = snapshot_digest(&bytes);
        (bytes.into(), digest)
    }

    /// Rebuilds a state from an encoded snapshot, validating it.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, StateError> {
        let s = Snapshot::decode(bytes)?;
        let membership = Membership::new(s.membership.ok_or(StateError::NoMembership)?)?;
        if let Some(next) = &s.next_membership {
            Membership::new(next.clone())?;
        }
        let mut kv = KvStore::default();
        let mut last: Option<Bytes> = None;
        for e in s.kv {
            if last.as_ref().is_some_and(|l| *l >= e.key) {
                return Err(StateError::Unsorted);
            }
            last = Some(e.key.clone());
            kv.insert(e.key, e.value);
        }
        let mut clients = BTreeMap::new();
        let mut last: Option<Bytes> = None;
        for c in s.clients {
            if last.as_ref().is_some_and(|l| *l >= c.client) {
                return Err(StateError::Unsorted);
            }
            last = Some(c.client.clone());
            clients.insert(c.client, ClientRecord { timestamp: c.timestamp, result: c.result.unwrap_or_default() });
        }
        Ok(ReplicatedState { seq: s.seq, membership, next_membership: s.next_membership, kv, clients })
    }

    /// Approximate bytes held by the state (keys, values, client table).
    pub fn bytes(&self) -> usize {
        self.kv.bytes()
            + self
                .clients
                .iter()
                .map(|(c, r)| c.len() + 64 + r.result.value.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>()
    }
}

/// The checkpoint digest of an encoded snapshot.
pub fn snapshot_digest(bytes: &[u8]) -> Digest {
    sha256(&[b"pbft/snapshot/v1", bytes])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CompareAndSwap, Delete, Get, Put};

    fn op(kind: Kind) -> Operation {
        Operation { kind: Some(kind) }
    }
    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn kv_semantics() {
        let mut kv = KvStore::default();
        assert_eq!(kv.apply(&op(Kind::Get(Get { key: b("a") }))).status, Status::NotFound as i32);
        kv.apply(&op(Kind::Put(Put { key: b("a"), value: b("1") })));
        assert_eq!(kv.apply(&op(Kind::Get(Get { key: b("a") }))).value, Some(b("1")));
        let miss =
            kv.apply(&op(Kind::Cas(CompareAndSwap { key: b("a"), expected: Some(b("0")), new_value: Some(b("2")) })));
        assert_eq!((miss.status, miss.value), (Status::CasMismatch as i32, Some(b("1"))));
        let hit =
            kv.apply(&op(Kind::Cas(CompareAndSwap { key: b("a"), expected: Some(b("1")), new_value: Some(b("2")) })));
        assert_eq!(hit.status, Status::Ok as i32);
        let create = kv.apply(&op(Kind::Cas(CompareAndSwap { key: b("n"), expected: None, new_value: Some(b("x")) })));
        assert_eq!(create.status, Status::Ok as i32);
        assert_eq!(kv.apply(&op(Kind::Delete(Delete { key: b("a") }))).status, Status::Ok as i32);
        assert_eq!(kv.apply(&op(Kind::Delete(Delete { key: b("a") }))).status, Status::NotFound as i32);
        assert_eq!(kv.bytes(), 2);
    }

    #[test]
    fn snapshot_round_trip_is_deterministic() {
        let m = Membership::new(crate::membership::tests::config(4, 3)).unwrap();
        let mut s = ReplicatedState::new(m);
        s.seq = 9;
        for k in ["z", "a", "m"] {
            s.kv.apply(&op(Kind::Put(Put { key: b(k), value: b("v") })));
        }
        s.clients.insert(b("c1"), ClientRecord { timestamp: 4, result: ok(None) });
        let (bytes, d) = s.encoded_snapshot();
        let back = ReplicatedState::from_snapshot(&bytes).unwrap();
        assert_eq!(back.encoded_snapshot().1, d);
        assert_eq!(back.kv, s.kv);
        assert!(ReplicatedState::from_snapshot(&[0xff, 0xff, 0xff]).is_err(), "garbage is refused");
    }
}
