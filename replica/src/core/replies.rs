//! Replies to clients: one signature per executed batch. The replies of a
//! batch are the leaves of a Merkle tree ([`crate::merkle`]); the replica
//! signs its root once and each client gets its reply with the path to it.

use super::*;
use crate::merkle;
use crate::proto::{ReplyRoot, SignedReply};

/// A reply owed to a client: (client, timestamp, result).
pub(super) type OwedReply = (Bytes, u64, OpResult);

impl Replica {
    /// Signs the replies of the batch executed at `seq` (0: a reply sent
    /// again) under one root and hands each to its client.
    pub(super) fn send_replies(&mut self, seq: u64, replies: Vec<OwedReply>) {
        let encoded: Vec<Vec<u8>> = replies
            .iter()
            .map(|(client, timestamp, result)| {
                Reply { view: self.view, client: client.clone(), timestamp: *timestamp, result: Some(result.clone()) }
                    .encode_to_vec()
            })
            .collect();
        let leaves: Vec<Digest> = encoded.iter().map(|r| merkle::leaf_hash(r)).collect();
        let Some((root, paths)) = merkle::root_and_paths(&leaves) else { return };
        let msg = Message {
            epoch: self.membership.epoch(),
            sender: self.cfg.id,
            body: Some(Body::ReplyRoot(ReplyRoot {
                view: self.view,
                seq,
                root: Bytes::copy_from_slice(&root),
                leaves: leaves.len() as u32,
            })),
        };
        let root = self.key.seal(&msg);
        for (index, (((client, timestamp, _), reply), path)) in replies.into_iter().zip(encoded).zip(paths).enumerate()
        {
            let signed = SignedReply {
                reply: reply.into(),
                index: index as u32,
                path: path.iter().map(|h| Bytes::copy_from_slice(h)).collect(),
                root: Some(root.clone()),
            };
            self.out.push(Action::Reply { client, timestamp, reply: signed.encode_to_vec().into() });
        }
    }
}
