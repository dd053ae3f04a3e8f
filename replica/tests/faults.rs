//! Byzantine replicas end to end, with a `fault-injection` build of
//! `pbft-replica` named by `PBFT_FI_REPLICA` (a release build never has the
//! faults). Without it these tests print why and pass vacuously; `make test`
//! runs them with:
//!
//! ```sh
//! CARGO_TARGET_DIR=target-fi cargo build --release -p replica --features fault-injection --bin pbft-replica
//! PBFT_FI_REPLICA=$PWD/target-fi/release/pbft-replica cargo test --release -p replica --test faults
//! ```

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;

use common::*;
use pbft::core::evidence::verify_evidence;
use pbft::membership::Membership;
use pbft::proto::{evidence::Kind, Envelope, Evidence};
use pbft::server::rpc::{admin_client::AdminClient, EvidenceRequest};

fn faulty_binary() -> Option<PathBuf> {
    match std::env::var_os("PBFT_FI_REPLICA") {
        Some(p) if PathBuf::from(&p).is_file() => Some(p.into()),
        Some(p) => panic!("PBFT_FI_REPLICA={} is not a file", PathBuf::from(p).display()),
        None => {
            eprintln!(
                "SKIPPED: set PBFT_FI_REPLICA to a `--features fault-injection` build of pbft-replica to run this test"
            );
            None
        }
    }
}

/// Evidence reported over the admin API by replica `i`.
async fn reported(cluster: &Cluster, i: u32) -> Vec<Evidence> {
    let addr = format!("http://127.0.0.1:{}", cluster.slots[i as usize].ports[2]);
    let Ok(ch) = tonic::transport::Endpoint::from_shared(addr).unwrap().connect().await else { return vec![] };
    let Ok(r) = AdminClient::new(ch).evidence(EvidenceRequest {}).await else { return vec![] };
    r.into_inner().evidence.iter().filter_map(|b| Evidence::decode(b.as_ref()).ok()).collect()
}

/// The evidence lines of replica `i`'s forensic JSON-lines log, rebuilt as `Evidence`.
fn forensic(cluster: &Cluster, i: u32) -> Vec<Evidence> {
    let path = cluster.slots[i as usize].data_dir.join("evidence.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let env = |v: &serde_json::Value| -> Option<Envelope> {
        Some(Envelope {
            payload: Bytes::from(hex::decode(v.get("payload")?.as_str()?).ok()?),
            signature: Bytes::from(hex::decode(v.get("signature")?.as_str()?).ok()?),
        })
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Evidence {
            kind: Kind::from_str_name(v["kind"].as_str().unwrap_or("")).map_or(0, |k| k as i32),
            offender: v["offender"].as_u64().unwrap_or(u64::MAX) as u32,
            epoch: v["epoch"].as_u64().unwrap_or(0),
            first: env(&v["first"]),
            second: env(&v["second"]),
        })
        .collect()
}

/// Runs 4 replicas with replica `faulty` misbehaving as `faults`; checks that every honest
/// replica reports valid evidence of one of `kinds` against it (admin API and forensic log)
/// and that the honest ones keep committing.
async fn byzantine(tag: &str, faulty: u32, faults: &str, kinds: &[Kind]) {
    let Some(bin) = faulty_binary() else { return };
    let mut cluster = Cluster::prepare(tag, 4, &[]);
    cluster.slots[faulty as usize].binary = Some(bin);
    cluster.slots[faulty as usize].env = vec![("PBFT_FAULTS".into(), faults.into())];
    for i in 0..4 {
        cluster.start(i);
    }
    let honest: Vec<u32> = (0..4).filter(|i| *i != faulty).collect();
    cluster.wait_ready(&honest, Duration::from_secs(20)).await;
    let membership = Membership::new(cluster.endpoints().membership.config().clone()).unwrap();
    let mut acked = vec![];
    let t = Instant::now();
    let mut round = 0;
    loop {
        // Writes go on while the evidence comes in (each put is one batch).
        acked.extend(put_keys(&cluster, &format!("w{round}"), 5).await);
        round += 1;
        let mut all = true;
        for &i in &honest {
            let ev = reported(&cluster, i).await;
            let valid = ev.iter().filter(|e| e.offender == faulty && kinds.iter().any(|k| *k as i32 == e.kind));
            let valid: Vec<_> = valid.filter(|e| verify_evidence(e, &membership).is_ok()).collect();
            let logged = forensic(&cluster, i)
                .into_iter()
                .filter(|e| e.offender == faulty && verify_evidence(e, &membership).is_ok())
                .count();
            all &= !valid.is_empty() && logged > 0;
            for e in &ev {
                // Whatever an honest replica reports must verify and accuse the faulty one.
                assert_eq!(e.offender, faulty, "r{i} accused an honest replica: {e:?}");
                verify_evidence(e, &membership).unwrap_or_else(|x| panic!("r{i} reported evidence that fails: {x}"));
            }
        }
        if all {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "not every honest replica reported valid evidence in 60 s");
    }
    eprintln!("MEASURE {tag}: every honest replica holds valid evidence after {:.1} s", t.elapsed().as_secs_f64());
    // The honest replicas keep committing, with or without the faulty one.
    acked.extend(put_keys(&cluster, "after", 10).await);
    cluster.kill9(faulty);
    acked.extend(put_keys(&cluster, "without", 10).await);
    check_all(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_primary_is_reported_with_valid_evidence() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    byzantine("fi-equivocate", 0, "equivocate", &[Kind::EquivocatingPrePrepare]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_voter_is_reported_with_valid_evidence() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    byzantine("fi-conflicting", 3, "conflicting-votes", &[Kind::ConflictingPrepare, Kind::ConflictingCommit]).await;
}
