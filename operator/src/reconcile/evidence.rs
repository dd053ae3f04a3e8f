//! Evidence collected from replicas: decoded, verified against the membership
//! of its epoch with the replica crate's own strict check, and turned into
//! status records. Evidence that does not verify convicts nobody.
//!
//! A record stands for a claim, not for one message pair: a faulty member
//! that conflicts in every slot leaves hundreds of distinct evidence items on
//! every honest replica (each keeps up to 1024), and all of them say the same
//! thing. One verified record per (offender key, kind) is enough to convict,
//! and one unverified record per (reporter, offender, epoch, kind) is enough
//! to warn; further evidence of a recorded claim is neither verified again
//! ([`already_convicted`]) nor recorded, so the status stays small and stable
//! and each claim gives one Event.

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

/// Whether `encoded` is evidence from the epoch right after the newest one in
/// `history`: the membership change the operator is ordering can be in force
/// at the replicas before the operator has recorded it. Such evidence is
/// examined on a later reconcile, once that epoch is known, rather than
/// rejected for good (a rejected claim is not examined again).
pub fn awaits_next_epoch(encoded: &[u8], history: &[Committed]) -> bool {
    let Ok(e) = Evidence::decode(encoded) else { return false };
    history.iter().map(|c| c.epoch).max().is_some_and(|newest| newest.checked_add(1) == Some(e.epoch))
}

/// Whether `encoded` accuses a key that a verified record already convicts
/// of the same kind (a cheap decode, no signature check): such evidence adds
/// nothing, whoever reports it.
pub fn already_convicted(records: &[EvidenceRecord], encoded: &[u8], history: &[Committed]) -> bool {
    let Ok(e) = Evidence::decode(encoded) else { return false };
    let Some(fp) =
        history.iter().find(|c| c.epoch == e.epoch).and_then(|c| c.key_of(e.offender)).and_then(key_fingerprint)
    else {
        return false;
    };
    let kind = kind_name(e.kind);
    records.iter().any(|r| {
        r.verified && r.offender == e.offender as i32 && r.kind == kind && r.key_fingerprint.as_deref() == Some(&fp)
    })
}

/// Whether record `r` already makes the claim of finding `f` (see the module doc).
fn same_claim(r: &EvidenceRecord, f: &Finding) -> bool {
    if r.digest.as_deref() == Some(f.digest.as_str()) {
        return true;
    }
    r.kind == f.kind
        && r.offender == f.offender as i32
        && match &f.verdict {
            Ok(fp) => r.verified && r.key_fingerprint.as_deref() == Some(fp.as_str()),
            Err(_) => !r.verified && r.reporter == Some(f.reporter as i32) && r.epoch == Some(f.epoch as i64),
        }
}

/// Merges new findings into the status records (one per claim, the most
/// recent [`MAX_RECORDS`] kept, verified ones preferred when trimming) and
/// returns the findings that were new.
pub fn merge(
    records: &mut Vec<EvidenceRecord>,
    findings: &[Finding],
    pod_of: impl Fn(u32) -> Option<String>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Vec<Finding> {
    let mut new = vec![];
    for f in findings {
        if records.iter().any(|r| same_claim(r, f)) {
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
    // (New findings were pushed to `records`, so a second finding of the same claim matched above.)
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
    fn evidence_of_the_next_epoch_waits_and_any_later_one_is_rejected() {
        let k = keys();
        let history = [committed(4), committed(5)];
        assert!(awaits_next_epoch(&conflicting(&k[2], 2, 6), &history));
        for epoch in [3, 4, 5, 7, u64::MAX] {
            assert!(!awaits_next_epoch(&conflicting(&k[2], 2, epoch), &history), "epoch {epoch}");
        }
        assert!(!awaits_next_epoch(b"\xff\xff\xff", &history));
        assert!(!awaits_next_epoch(&conflicting(&k[2], 2, 1), &[]), "no history: nothing to wait for");
        let far = examine(0, &conflicting(&k[2], 2, 7), &history);
        assert!(far.verdict.as_ref().is_err_and(|e| e.contains("epoch 7")), "{far:?}");
    }

    fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }

    /// Evidence of conflicting prepares by `signer` (as `accused`) in slot `seq`.
    fn conflicting_at(signer: &Keypair, accused: u32, epoch: u64, seq: u64) -> Vec<u8> {
        let p = |d: u8| {
            signer.seal(&Message {
                epoch,
                sender: accused,
                body: Some(Body::Prepare(Prepare { view: 0, seq, digest: Bytes::from(vec![d; 32]) })),
            })
        };
        let slot = VoteSlot { kind: Kind::ConflictingPrepare as i32, view: 0, seq };
        make_evidence(slot, accused, epoch, p(1), p(2)).encode_to_vec()
    }

    #[test]
    fn records_are_deduplicated_and_bounded() {
        let k = keys();
        let real = examine(0, &conflicting(&k[2], 2, 5), &[committed(5)]);
        let mut records = vec![];
        assert_eq!(merge(&mut records, &[real.clone(), real.clone()], |_| None, now()).len(), 1);
        assert_eq!(merge(&mut records, std::slice::from_ref(&real), |_| None, now()).len(), 0);
        for i in 0..40u8 {
            // Garbage from 40 different (made-up) reporters: 40 claims.
            let junk = examine(100 + i as u32, &[i, 0xff, 0xff], &[committed(5)]);
            merge(&mut records, &[junk], |_| None, now());
        }
        assert_eq!(records.len(), MAX_RECORDS);
        assert!(records.iter().any(|r| r.verified), "verified evidence is kept over unverified");
        assert_eq!(convicted(&records), vec![(2, real.verdict.expect("verified"))]);
    }

    #[test]
    fn a_member_conflicting_in_every_slot_is_one_record_and_stays_one() {
        let k = keys();
        let history = [committed(5)];
        let mut records = vec![];
        // 300 slots, reported by 3 honest replicas: one claim.
        let raw: Vec<(u32, Vec<u8>)> =
            (0..300).flat_map(|seq| [0, 1, 3].map(|r| (r, conflicting_at(&k[2], 2, 5, seq)))).collect();
        let first = examine(raw[0].0, &raw[0].1, &history);
        assert_eq!(merge(&mut records, std::slice::from_ref(&first), |_| None, now()).len(), 1);
        // The rest is recognised without verifying a signature, every reconcile.
        assert!(raw.iter().all(|(_, b)| already_convicted(&records, b, &history)));
        let findings: Vec<Finding> = raw.iter().map(|(r, b)| examine(*r, b, &history)).collect();
        assert!(merge(&mut records, &findings, |_| None, now()).is_empty(), "nothing new, no Event");
        assert_eq!(records.len(), 1);
        // Forgeries by one reporter against one member, in many slots: one warning record.
        let forged: Vec<Finding> = (0..50).map(|seq| examine(1, &conflicting_at(&k[1], 3, 5, seq), &history)).collect();
        assert!(forged.iter().all(|f| f.verdict.is_err()));
        assert!(!already_convicted(&records, &conflicting_at(&k[1], 3, 5, 0), &history), "member 3 is not convicted");
        assert_eq!(merge(&mut records, &forged, |_| None, now()).len(), 1);
        assert_eq!(merge(&mut records, &forged, |_| None, now()).len(), 0);
        assert_eq!(records.len(), 2);
        assert_eq!(convicted(&records).len(), 1, "the forgery convicts nobody");
    }
}
