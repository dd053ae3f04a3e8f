//! Evidence collected from replicas: decoded, verified against the membership
//! of its epoch with the replica crate's own strict check, and turned into
//! status records. Evidence that does not verify convicts nobody.

use prost::Message as _;
use sha2::{Digest, Sha256};

use super::model::Committed;
use crate::build::key_fingerprint;
use crate::crd::EvidenceRecord;
use pbft::core::evidence::verify_evidence;
use pbft::membership::Membership;
use pbft::proto::{evidence::Kind, Evidence, Member as WireMember, MembershipConfig};

/// Most recent evidence records kept in the status.
pub const MAX_RECORDS: usize = 32;

/// One piece of evidence as examined by the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// First 16 hex digits of the SHA-256 of the encoded evidence (its identity).
    pub digest: String,
    pub kind: String,
    pub offender: u32,
    pub epoch: u64,
    pub reporter: u32,
    /// Fingerprint of the convicted key, or why the evidence does not verify.
    pub verdict: Result<String, String>,
}

/// The wire membership of a committed epoch.
pub fn wire_membership(c: &Committed) -> Result<Membership, String> {
    let hexed = |s: &str| hex::decode(s).map(bytes::Bytes::from).map_err(|e| format!("bad key {s:?}: {e}"));
    let members = c
        .members
        .iter()
        .map(|m| Ok(WireMember { id: m.id, public_key: hexed(&m.public_key)?, address: String::new() }))
        .collect::<Result<Vec<_>, String>>()?;
    Membership::new(MembershipConfig { epoch: c.epoch, members, admin_key: hexed(&c.admin_key)? })
        .map_err(|e| e.to_string())
}

fn kind_name(kind: i32) -> String {
    match Kind::try_from(kind) {
        Ok(Kind::EquivocatingPrePrepare) => "EquivocatingPrePrepare",
        Ok(Kind::ConflictingPrepare) => "ConflictingPrepare",
        Ok(Kind::ConflictingCommit) => "ConflictingCommit",
        Ok(Kind::ConflictingCheckpoint) => "ConflictingCheckpoint",
        Ok(Kind::ConflictingViewChange) => "ConflictingViewChange",
        _ => "Unknown",
    }
    .to_string()
}

/// Examines one encoded evidence reported by `reporter`, against the epochs in `history`.
pub fn examine(reporter: u32, encoded: &[u8], history: &[Committed]) -> Finding {
    let digest = hex::encode(&Sha256::digest(encoded)[..8]);
    let Ok(e) = Evidence::decode(encoded) else {
        return Finding {
            digest,
            kind: "Unknown".into(),
            offender: u32::MAX,
            epoch: 0,
            reporter,
            verdict: Err("does not decode as pbft.v1.Evidence".into()),
        };
    };
    let verdict = match history.iter().find(|c| c.epoch == e.epoch) {
        None => Err(format!("epoch {} is not among the epochs the operator keeps", e.epoch)),
        Some(c) => wire_membership(c).and_then(|m| {
            verify_evidence(&e, &m).map_err(|err| err.to_string())?;
            c.key_of(e.offender)
                .and_then(key_fingerprint)
                .ok_or_else(|| format!("member {} has no key in epoch {}", e.offender, e.epoch))
        }),
    };
    Finding { digest, kind: kind_name(e.kind), offender: e.offender, epoch: e.epoch, reporter, verdict }
}

/// Merges new findings into the status records (deduplicated by digest, the
/// most recent [`MAX_RECORDS`] kept, verified ones preferred when trimming)
/// and returns the findings that were new.
pub fn merge(
    records: &mut Vec<EvidenceRecord>,
    findings: &[Finding],
    pod_of: impl Fn(u32) -> Option<String>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Vec<Finding> {
    let mut new = vec![];
    for f in findings {
        let seen = |d: &str| {
            records.iter().any(|r| r.digest.as_deref() == Some(d)) || new.iter().any(|n: &Finding| n.digest == d)
        };
        if seen(&f.digest) {
            continue;
        }
        records.push(EvidenceRecord {
            kind: f.kind.clone(),
            offender: f.offender as i32,
            offender_pod: pod_of(f.offender),
            epoch: Some(f.epoch as i64),
            time: now.clone(),
            verified: f.verdict.is_ok(),
            reporter: Some(f.reporter as i32),
            digest: Some(f.digest.clone()),
            key_fingerprint: f.verdict.clone().ok(),
            reason: f.verdict.clone().err(),
        });
        new.push(f.clone());
    }
    while records.len() > MAX_RECORDS {
        let drop = records.iter().position(|r| !r.verified).unwrap_or(0);
        records.remove(drop);
    }
    new
}

/// Member id and key fingerprint of every verified record (who is convicted).
pub fn convicted(records: &[EvidenceRecord]) -> Vec<(u32, String)> {
    records
        .iter()
        .filter(|r| r.verified)
        .filter_map(|r| Some((u32::try_from(r.offender).ok()?, r.key_fingerprint.clone()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::model::Member;
    use bytes::Bytes;
    use pbft::core::evidence::make_evidence;
    use pbft::core::evidence::VoteSlot;
    use pbft::crypto::Keypair;
    use pbft::proto::{message::Body, Message, Prepare};

    fn keys() -> Vec<Keypair> {
        (0..4u8).map(|i| Keypair::from_secret([i + 11; 32])).collect()
    }

    fn committed(epoch: u64) -> Committed {
        Committed {
            epoch,
            admin_key: hex::encode(Keypair::from_secret([99; 32]).public_bytes()),
            members: keys()
                .iter()
                .enumerate()
                .map(|(i, k)| Member { id: i as u32, public_key: hex::encode(k.public_bytes()) })
                .collect(),
        }
    }

    fn prepare(key: &Keypair, sender: u32, epoch: u64, digest: u8) -> pbft::proto::Envelope {
        key.seal(&Message {
            epoch,
            sender,
            body: Some(Body::Prepare(Prepare { view: 0, seq: 7, digest: Bytes::from(vec![digest; 32]) })),
        })
    }

    fn conflicting(signer: &Keypair, accused: u32, epoch: u64) -> Vec<u8> {
        let slot = VoteSlot { kind: Kind::ConflictingPrepare as i32, view: 0, seq: 7 };
        make_evidence(slot, accused, epoch, prepare(signer, accused, epoch, 1), prepare(signer, accused, epoch, 2))
            .encode_to_vec()
    }

    #[test]
    fn real_evidence_convicts_the_signer_key() {
        let k = keys();
        let f = examine(0, &conflicting(&k[2], 2, 5), &[committed(4), committed(5)]);
        assert_eq!(f.kind, "ConflictingPrepare");
        assert_eq!(f.offender, 2);
        assert_eq!(f.verdict, Ok(key_fingerprint(&hex::encode(k[2].public_bytes())).expect("fp")));
    }

    #[test]
    fn forged_or_unknown_evidence_convicts_nobody() {
        let k = keys();
        // Signed by replica 1, blaming honest replica 2.
        let forged = examine(1, &conflicting(&k[1], 2, 5), &[committed(5)]);
        assert!(forged.verdict.as_ref().is_err_and(|e| e.contains("signature")), "{forged:?}");
        let old = examine(0, &conflicting(&k[2], 2, 3), &[committed(5)]);
        assert!(old.verdict.as_ref().is_err_and(|e| e.contains("epoch 3")), "{old:?}");
        let garbage = examine(0, b"\xff\xff\xff", &[committed(5)]);
        assert!(garbage.verdict.is_err());
    }

    #[test]
    fn records_are_deduplicated_and_bounded() {
        let k = keys();
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let real = examine(0, &conflicting(&k[2], 2, 5), &[committed(5)]);
        let mut records = vec![];
        assert_eq!(merge(&mut records, &[real.clone(), real.clone()], |_| None, now.clone()).len(), 1);
        assert_eq!(merge(&mut records, std::slice::from_ref(&real), |_| None, now.clone()).len(), 0);
        for i in 0..40u8 {
            let junk = examine(1, &[i, 0xff, 0xff], &[committed(5)]);
            merge(&mut records, &[junk], |_| None, now.clone());
        }
        assert_eq!(records.len(), MAX_RECORDS);
        assert!(records.iter().any(|r| r.verified), "verified evidence is kept over unverified");
        assert_eq!(convicted(&records), vec![(2, real.verdict.expect("verified"))]);
    }
}
