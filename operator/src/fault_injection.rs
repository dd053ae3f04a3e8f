//! Fault injection for end-to-end tests: chosen members of a new cluster run
//! the replica built with the `fault-injection` feature, with `PBFT_FAULTS`.
//!
//! Production-safe by construction:
//! - the operator honours it only when started with `--allow-fault-injection`
//!   (chart value `faultInjection.enabled`, off by default, test-only);
//!   otherwise the annotation is refused with a Warning Event and ignored;
//! - it is read once, when the cluster's first membership is created: the
//!   faults are bound to those members' first keys (an annotation on their
//!   key Secrets), so a member replaced after its quarantine, a scale-up or a
//!   rolling update always gets an honest pod with a fresh key.
//!
//! The CR annotation [`REQUEST_ANNOTATION`] is a JSON object from member id to
//! a `PBFT_FAULTS` value (`replica/src/server/faults.rs`), for example
//! `{"0": "equivocate", "1": "conflicting-votes,forge-evidence=3"}`.

use std::collections::BTreeMap;

/// Annotation on a ConsensusCluster asking for faulty members (test-only).
pub const REQUEST_ANNOTATION: &str = "consensus.pbft.dev/fault-injection";
/// Annotation on a member key Secret: the faults the pod running that key commits.
pub const KEY_FAULTS_ANNOTATION: &str = "consensus.pbft.dev/faults";
/// Label on a pod that runs the fault-injection image.
pub const POD_LABEL: &str = "consensus.pbft.dev/fault-injection";
/// Longest `PBFT_FAULTS` value accepted for one member.
pub const MAX_SPEC_LEN: usize = 200;

/// Why a fault-injection request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultRequestError {
    #[error("annotation {REQUEST_ANNOTATION} is not a JSON object of member id to faults: {0}")]
    NotJson(String),
    #[error("annotation {REQUEST_ANNOTATION}: {0:?} is not a member id")]
    BadId(String),
    #[error("annotation {REQUEST_ANNOTATION}: member {id} does not exist (the cluster has {replicas} members)")]
    NoSuchMember { id: u32, replicas: u32 },
    #[error("annotation {REQUEST_ANNOTATION}: faults of member {id}: {msg}")]
    BadFaults { id: u32, msg: String },
}

fn check_item(item: &str, replicas: u32) -> Result<(), String> {
    let id_arg = |v: &str| match v.parse::<u32>() {
        Ok(id) if id < replicas => Ok(()),
        _ => Err(format!("{item:?}: {v:?} is not a member id below {replicas}")),
    };
    match item.split_once('=') {
        Some(("drop-to" | "forge-evidence", v)) => id_arg(v),
        None if matches!(item, "silent" | "equivocate" | "conflicting-votes" | "flood") => Ok(()),
        _ => Err(format!(
            "unknown fault {item:?} (known: silent, equivocate, conflicting-votes, flood, drop-to=<id>, forge-evidence=<id>)"
        )),
    }
}

/// Parses and checks the request annotation of a cluster of `replicas`
/// members: member id -> `PBFT_FAULTS` value (normalised: items trimmed, joined by commas).
pub fn parse_request(annotation: &str, replicas: u32) -> Result<BTreeMap<u32, String>, FaultRequestError> {
    let raw: BTreeMap<String, String> =
        serde_json::from_str(annotation).map_err(|e| FaultRequestError::NotJson(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (k, spec) in raw {
        let id: u32 = k.trim().parse().map_err(|_| FaultRequestError::BadId(k.clone()))?;
        if id >= replicas {
            return Err(FaultRequestError::NoSuchMember { id, replicas });
        }
        let bad = |msg: String| FaultRequestError::BadFaults { id, msg };
        if spec.len() > MAX_SPEC_LEN {
            return Err(bad(format!("longer than {MAX_SPEC_LEN} characters")));
        }
        let items: Vec<&str> = spec.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if items.is_empty() {
            return Err(bad("empty".into()));
        }
        for item in &items {
            check_item(item, replicas).map_err(bad)?;
        }
        out.insert(id, items.join(","));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_members_and_known_faults() {
        let r =
            parse_request(r#"{"0": "equivocate", "1": " conflicting-votes , forge-evidence=3 "}"#, 7).expect("valid");
        assert_eq!(r[&0], "equivocate");
        assert_eq!(r[&1], "conflicting-votes,forge-evidence=3");
        assert_eq!(parse_request("{}", 4).expect("empty is valid"), BTreeMap::new());
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(matches!(parse_request("0=equivocate", 4), Err(FaultRequestError::NotJson(_))));
        assert!(matches!(parse_request(r#"{"x": "flood"}"#, 4), Err(FaultRequestError::BadId(_))));
        assert_eq!(parse_request(r#"{"4": "flood"}"#, 4), Err(FaultRequestError::NoSuchMember { id: 4, replicas: 4 }));
        let e = parse_request(r#"{"1": "flood,rm -rf"}"#, 4).expect_err("unknown fault");
        assert!(e.to_string().contains("unknown fault \"rm -rf\""), "{e}");
        assert!(parse_request(r#"{"1": "forge-evidence=9"}"#, 4).is_err(), "target must be a member");
        assert!(parse_request(r#"{"1": ""}"#, 4).is_err());
        assert!(parse_request(&format!(r#"{{"1": "{}"}}"#, "flood,".repeat(50)), 4).is_err());
    }
}
