//! Byte accounting for everything the core keeps in memory.
//!
//! Each kind of buffer has a cap in bytes; message-log entries are also
//! charged to the replica that sent them, against a per-peer cap, so that one
//! Byzantine peer can fill only its own share. A charge that would cross a cap
//! is refused and the caller drops the item: nothing is ever kept uncharged.

use std::collections::BTreeMap;

use crate::membership::ReplicaId;

/// Bytes charged per stored item on top of its payload (map nodes, headers).
pub const ITEM_OVERHEAD: usize = 96;

/// What a charge is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Pre-prepares, prepares and commits inside the watermark window.
    Log,
    /// Prepared certificates kept for view changes.
    Certificates,
    /// Client requests waiting to be ordered.
    Pending,
    /// View-change and new-view messages.
    ViewChange,
    /// Checkpoint votes and proofs.
    Checkpoint,
    /// Evidence records.
    Evidence,
}

impl Category {
    /// All categories.
    pub const ALL: [Category; 6] = [
        Category::Log,
        Category::Certificates,
        Category::Pending,
        Category::ViewChange,
        Category::Checkpoint,
        Category::Evidence,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// A metric-friendly name.
    pub fn name(self) -> &'static str {
        match self {
            Category::Log => "log",
            Category::Certificates => "certificates",
            Category::Pending => "pending",
            Category::ViewChange => "view_change",
            Category::Checkpoint => "checkpoint",
            Category::Evidence => "evidence",
        }
    }
}

/// Caps in bytes for each category. Their sum is the replica's buffer budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    pub log: usize,
    pub certificates: usize,
    pub pending: usize,
    pub view_change: usize,
    pub checkpoint: usize,
    pub evidence: usize,
}

impl Caps {
    /// Splits a total budget between the categories.
    pub fn split(total: usize) -> Caps {
        Caps {
            log: total / 100 * 35,
            certificates: total / 100 * 20,
            pending: total / 100 * 20,
            view_change: total / 100 * 15,
            checkpoint: total / 100 * 5,
            evidence: total / 100 * 5,
        }
    }

    fn get(&self, c: Category) -> usize {
        match c {
            Category::Log => self.log,
            Category::Certificates => self.certificates,
            Category::Pending => self.pending,
            Category::ViewChange => self.view_change,
            Category::Checkpoint => self.checkpoint,
            Category::Evidence => self.evidence,
        }
    }

    /// The sum of all caps.
    pub fn total(&self) -> usize {
        Category::ALL.iter().map(|c| self.get(*c)).sum()
    }
}

/// A charge that was accepted; give it back with [`Ledger::refund`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    pub category: Category,
    pub peer: Option<ReplicaId>,
    pub bytes: usize,
}

/// Running totals per category and per peer.
#[derive(Clone, Debug)]
pub struct Ledger {
    caps: Caps,
    per_peer_log: usize,
    used: [usize; 6],
    peer_used: BTreeMap<ReplicaId, usize>,
    peak: usize,
    refused: u64,
}

impl Ledger {
    /// A ledger for `n` replicas: each peer may use `caps.log / n` of the log.
    pub fn new(caps: Caps, n: usize) -> Self {
        let per_peer_log = caps.log / n.max(1);
        Ledger { caps, per_peer_log, used: [0; 6], peer_used: BTreeMap::new(), peak: 0, refused: 0 }
    }

    /// Re-derives the per-peer share after a membership change.
    pub fn set_members(&mut self, n: usize) {
        self.per_peer_log = self.caps.log / n.max(1);
    }

    /// Charges `bytes` (plus overhead) to a category and, for log entries, to `peer`.
    pub fn charge(&mut self, category: Category, peer: Option<ReplicaId>, payload: usize) -> Option<Charge> {
        let bytes = payload + ITEM_OVERHEAD;
        let i = category.index();
        if self.used[i] + bytes > self.caps.get(category) {
            self.refused += 1;
            return None;
        }
        if let (Category::Log, Some(p)) = (category, peer) {
            let pu = self.peer_used.get(&p).copied().unwrap_or(0);
            if pu + bytes > self.per_peer_log {
                self.refused += 1;
                return None;
            }
            self.peer_used.insert(p, pu + bytes);
        }
        self.used[i] += bytes;
        self.peak = self.peak.max(self.total());
        Some(Charge { category, peer, bytes })
    }

    /// Returns a charge.
    pub fn refund(&mut self, c: Charge) {
        let i = c.category.index();
        debug_assert!(self.used[i] >= c.bytes, "refund of {:?} exceeds usage", c);
        self.used[i] = self.used[i].saturating_sub(c.bytes);
        if let (Category::Log, Some(p)) = (c.category, c.peer) {
            if let Some(u) = self.peer_used.get_mut(&p) {
                *u = u.saturating_sub(c.bytes);
                if *u == 0 {
                    self.peer_used.remove(&p);
                }
            }
        }
    }

    /// Bytes in use now.
    pub fn total(&self) -> usize {
        self.used.iter().sum()
    }

    /// Bytes in use by a category.
    pub fn used(&self, c: Category) -> usize {
        self.used[c.index()]
    }

    /// The budget (sum of caps).
    pub fn budget(&self) -> usize {
        self.caps.total()
    }

    /// Highest total seen.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Charges refused because a cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The caps.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_per_peer_shares_hold() {
        let mut l = Ledger::new(Caps::split(100_000), 4);
        // The log cap is 35_000, so each of 4 peers gets 8_750.
        let mut charges = vec![];
        while let Some(c) = l.charge(Category::Log, Some(1), 1000) {
            charges.push(c);
        }
        assert_eq!(charges.len(), 7, "8 * 1096 > 8750");
        assert!(l.charge(Category::Log, Some(2), 1000).is_some(), "another peer still has its share");
        assert_eq!(l.refused(), 1);
        for c in charges {
            l.refund(c);
        }
        assert_eq!(l.used(Category::Log), 1096);
        assert!(l.total() <= l.budget());
    }
}
