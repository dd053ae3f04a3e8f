//! The set of replicas in force for one epoch: ids, keys, quorum sizes and
//! the primary of each view.

use ed25519_dalek::VerifyingKey;

use crate::crypto::{parse_public_key, CryptoError};
use crate::proto::{Member, MembershipConfig};

/// A replica's id inside a membership (stable across key replacements).
pub type ReplicaId = u32;

/// Why a membership is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("a membership needs at least 4 members (3f+1 with f >= 1), got {0}")]
    TooSmall(usize),
    #[error("member id {0} appears twice")]
    DuplicateId(ReplicaId),
    #[error("public key of member {id} appears twice")]
    DuplicateKey { id: ReplicaId },
    #[error("member {id}: {source}")]
    BadKey { id: ReplicaId, source: CryptoError },
    #[error("admin key: {0}")]
    BadAdminKey(CryptoError),
}

/// A validated membership.
#[derive(Clone, Debug, PartialEq)]
pub struct Membership {
    epoch: u64,
    /// Sorted by id.
    members: Vec<(ReplicaId, VerifyingKey)>,
    admin: VerifyingKey,
    config: MembershipConfig,
}

impl Membership {
    /// Validates a membership: at least four members, unique ids and keys, no weak keys.
    pub fn new(config: MembershipConfig) -> Result<Self, MembershipError> {
        let mut config = config;
        config.members.sort_by_key(|m| m.id);
        if config.members.len() < 4 {
            return Err(MembershipError::TooSmall(config.members.len()));
        }
        let mut members = Vec::with_capacity(config.members.len());
        for m in &config.members {
            if members.iter().any(|(id, _)| *id == m.id) {
                return Err(MembershipError::DuplicateId(m.id));
            }
            let key = parse_public_key(&m.public_key).map_err(|source| MembershipError::BadKey { id: m.id, source })?;
            if members.iter().any(|(_, k)| *k == key) {
                return Err(MembershipError::DuplicateKey { id: m.id });
            }
            members.push((m.id, key));
        }
        let admin = parse_public_key(&config.admin_key).map_err(MembershipError::BadAdminKey)?;
        Ok(Membership { epoch: config.epoch, members, admin, config })
    }

    /// The epoch number.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of replicas n.
    pub fn n(&self) -> usize {
        self.members.len()
    }

    /// Faults tolerated: f = floor((n-1)/3).
    pub fn f(&self) -> usize {
        (self.members.len() - 1) / 3
    }

    /// Size of a quorum: the smallest q with 2q - n >= f + 1, so any two
    /// quorums share an honest replica. For n = 3f+1 this is 2f+1.
    pub fn quorum(&self) -> usize {
        (self.n() + self.f() + 2) / 2
    }

    /// Replies or reports needed to be sure one comes from an honest replica.
    pub fn weak_quorum(&self) -> usize {
        self.f() + 1
    }

    /// The primary of `view`.
    pub fn primary(&self, view: u64) -> ReplicaId {
        self.members[(view % self.members.len() as u64) as usize].0
    }

    /// The key of replica `id`, if it is a member.
    pub fn key(&self, id: ReplicaId) -> Option<&VerifyingKey> {
        self.members.iter().find(|(m, _)| *m == id).map(|(_, k)| k)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.key(id).is_some()
    }

    /// Member ids in order.
    pub fn ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.members.iter().map(|(id, _)| *id)
    }

    /// The admin key allowed to change the membership.
    pub fn admin(&self) -> &VerifyingKey {
        &self.admin
    }

    /// The wire form (members sorted by id).
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Member records (sorted by id).
    pub fn members(&self) -> &[Member] {
        &self.config.members
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::Keypair;

    pub(crate) fn config(n: u32, epoch: u64) -> MembershipConfig {
        MembershipConfig {
            epoch,
            members: (0..n)
                .map(|i| Member {
                    id: i,
                    public_key: Keypair::from_secret([i as u8 + 1; 32]).public_bytes().to_vec().into(),
                    address: format!("r{i}"),
                })
                .collect(),
            admin_key: Keypair::from_secret([200; 32]).public_bytes().to_vec().into(),
        }
    }

    #[test]
    fn quorum_sizes_intersect_in_an_honest_replica() {
        for n in 4..=13u32 {
            let m = Membership::new(config(n, 1)).unwrap();
            let (n, f, q) = (m.n(), m.f(), m.quorum());
            assert!(2 * q >= n + f + 1, "n={n} f={f} q={q}");
            assert!(q <= n - f, "a quorum must be reachable with f faulty: n={n} f={f} q={q}");
        }
        let m = Membership::new(config(7, 1)).unwrap();
        assert_eq!((m.f(), m.quorum(), m.weak_quorum()), (2, 5, 3));
    }

    #[test]
    fn primary_rotates_over_sorted_ids() {
        let mut c = config(4, 1);
        c.members.reverse();
        let m = Membership::new(c).unwrap();
        assert_eq!((0..6).map(|v| m.primary(v)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 0, 1]);
    }

    #[test]
    fn bad_memberships_are_refused_with_a_reason() {
        assert_eq!(Membership::new(config(3, 1)), Err(MembershipError::TooSmall(3)));
        let mut c = config(4, 1);
        c.members[2].id = 1;
        assert_eq!(Membership::new(c), Err(MembershipError::DuplicateId(1)));
        let mut c = config(4, 1);
        c.members[3].public_key = c.members[0].public_key.clone();
        assert!(matches!(Membership::new(c), Err(MembershipError::DuplicateKey { .. })));
        let mut c = config(4, 1);
        c.members[1].public_key = vec![0u8; 5].into();
        assert!(matches!(Membership::new(c), Err(MembershipError::BadKey { id: 1, .. })));
    }
}
