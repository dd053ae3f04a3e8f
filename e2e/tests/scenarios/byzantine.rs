//! Byzantine members on Kubernetes: the operator runs chosen members from the
//! fault-injection image (annotation `consensus.pbft.dev/fault-injection`,
//! honoured only with `--allow-fault-injection`), detects them from the
//! evidence honest replicas collect, and replaces them with fresh keys.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pbft_operator::crd::{ConsensusCluster, MemberState};

use pbft_e2e::k8s;
use pbft_e2e::load::{Load, LoadSpec};
use pbft_e2e::report::{Error, Result, Scenario};
use pbft_e2e::Ctx;

use super::{check_load, spec};

fn fingerprint(cc: &ConsensusCluster, id: i32) -> Option<String> {
    cc.status.as_ref()?.members.iter().find(|m| m.id == id)?.key_fingerprint.clone()
}

fn state(cc: &ConsensusCluster, id: i32) -> Option<MemberState> {
    cc.status.as_ref()?.members.iter().find(|m| m.id == id).map(|m| m.state)
}

/// A verified evidence record against member `id` with its key `fp`.
fn convicted(cc: &ConsensusCluster, id: i32, fp: &str) -> Option<String> {
    cc.status
        .as_ref()?
        .evidence
        .iter()
        .find(|e| e.offender == id && e.verified && e.key_fingerprint.as_deref() == Some(fp))
        .map(|e| e.kind.clone())
}

fn annotations(faults: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(pbft_operator::fault_injection::REQUEST_ANNOTATION.to_string(), faults.to_string())])
}

/// Which members run the fault-injection image.
async fn faulty_pods(ctx: &Ctx, ns: &str, name: &str) -> Result<Vec<u32>> {
    let pods = k8s::replica_pods(&ctx.client, ns, name).await?;
    let mut ids: Vec<u32> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(pbft_operator::fault_injection::POD_LABEL)).is_some())
        .filter_map(k8s::member_id)
        .collect();
    ids.sort();
    Ok(ids)
}

/// f=2: member 0 (the primary of view 0) equivocates, member 1 votes both
/// ways and serves forged evidence against honest member 3.
pub async fn byzantine(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let (ns, name) = ("e2e-byzantine", "byz");
    let faults = r#"{"0": "equivocate", "1": "conflicting-votes,forge-evidence=3"}"#;
    ctx.create_cluster(ns, name, spec(2, "128Mi"), annotations(faults)).await?;
    let (cc0, took) = ctx.wait_available(ns, name, Duration::from_secs(400)).await?;
    s.measure_secs("available_with_two_byzantine_members", took);
    let faulty = faulty_pods(ctx, ns, name).await?;
    s.check(faulty == vec![0, 1], "members 0 and 1 run the fault-injection image", || format!("{faulty:?}"))?;
    let events = k8s::cc_events(&ctx.client, ns, name).await?;
    s.check(
        events.iter().any(|(t, r, _)| t == "Warning" && r == "FaultInjection"),
        "the operator says so in a Warning Event",
        || format!("{events:?}"),
    )?;
    let fp = |id| fingerprint(&cc0, id).ok_or_else(|| Error::Check(format!("member {id} has no key fingerprint")));
    let (fp0, fp1, fp3) = (fp(0)?, fp(1)?, fp(3)?);
    let epoch0 = cc0.status.as_ref().and_then(|x| x.epoch).unwrap_or(0);

    let watcher = ctx.watcher(ns, name).await?;
    let t0 = Instant::now();
    let load = Load::start(watcher.clone(), LoadSpec::light("byz"));
    let inject = load.now();
    s.log("client load started: the equivocating primary now equivocates on every batch");

    // Member 3 must never be touched: sampled while everything else happens.
    let mut member3_states = vec![];
    let mut detected: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut replaced: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut forged_seen = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let cc = k8s::get_cc(&ctx.client, ns, name).await?;
        member3_states.push((state(&cc, 3), fingerprint(&cc, 3)));
        for (id, fp) in [(0, &fp0), (1, &fp1)] {
            if !detected.contains_key(&id) {
                if let Some(kind) = convicted(&cc, id, fp) {
                    detected.insert(id, t0.elapsed());
                    s.log(format!("member {id} convicted ({kind}) after {:.1} s", t0.elapsed().as_secs_f64()));
                }
            }
            let new_key = fingerprint(&cc, id).is_some_and(|f| f != *fp);
            if !replaced.contains_key(&id) && new_key && state(&cc, id) == Some(MemberState::Active) {
                replaced.insert(id, t0.elapsed());
                s.log(format!("member {id} Active with a new key after {:.1} s", t0.elapsed().as_secs_f64()));
            }
        }
        if forged_seen.is_none() {
            forged_seen =
                cc.status.as_ref().and_then(|st| st.evidence.iter().find(|e| e.offender == 3 && !e.verified).cloned());
        }
        if replaced.len() == 2 && k8s::fully_available(&cc) && forged_seen.is_some() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("both Byzantine members replaced (detected {detected:?}, replaced {replaced:?}, forged record {}; {})", forged_seen.is_some(), k8s::describe(&cc)),
                secs: 600.0,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let end = load.now();
    for (id, what) in [(0, "equivocating_primary"), (1, "conflicting_voter")] {
        if let Some(d) = detected.get(&id) {
            s.measure_secs(&format!("{what}_detected_after_injection"), *d);
        }
        s.measure_secs(&format!("{what}_replacement_active_after_injection"), replaced[&id]);
    }
    let cc = k8s::get_cc(&ctx.client, ns, name).await?;
    let st = cc.status.clone().unwrap_or_default();
    s.measure("epoch_before_after", format!("{epoch0} -> {}", st.epoch.unwrap_or(0)), "");
    let kinds: Vec<String> = st
        .evidence
        .iter()
        .map(|e| format!("{}:{}:{}", e.offender, e.kind, if e.verified { "verified" } else { "rejected" }))
        .collect();
    s.measure("evidence_records", format!("{} {kinds:?}", st.evidence.len()), "");
    s.check(detected.len() == 2, "both offenders convicted by verified evidence in the status", || {
        format!("{kinds:?}")
    })?;
    let events = k8s::cc_events(&ctx.client, ns, name).await?;
    let verified_events = events.iter().filter(|(_, r, _)| r == "EvidenceVerified").count();
    let rejected_events: Vec<&String> =
        events.iter().filter(|(_, r, _)| r == "EvidenceRejected").map(|(_, _, m)| m).collect();
    s.measure("events_evidence_verified", verified_events, "");
    s.measure("events_evidence_rejected", rejected_events.len(), "");
    // One Event per offender and step, each with its own text (not folded into
    // the first one's series).
    let has =
        |reason: &str, id: u32| events.iter().any(|(_, r, m)| r == reason && m.starts_with(&format!("member {id} (")));
    s.check(
        [0, 1].iter().all(|&id| has("EvidenceVerified", id) && has("Quarantining", id)),
        "Warning Events EvidenceVerified and Quarantining for each offender",
        || format!("{events:?}"),
    )?;
    let faulty = faulty_pods(ctx, ns, name).await?;
    s.check(faulty.is_empty(), "the replacements run the normal image", || format!("faulty pods still: {faulty:?}"))?;

    // Forged evidence against member 3 changed nothing.
    let forged = forged_seen.ok_or_else(|| Error::Check("no record of the forged evidence".into()))?;
    s.log(format!("forged evidence record: {forged:?}"));
    s.check(
        forged.reporter == Some(1) && forged.reason.as_deref().is_some_and(|r| r.contains("signature")),
        "the forged evidence is recorded as not verifying (bad signature), reported by member 1",
        || format!("{forged:?}"),
    )?;
    let rejected_records = st.evidence.iter().filter(|e| !e.verified).count();
    s.check(
        !rejected_events.is_empty() && rejected_events.len() <= rejected_records,
        "an EvidenceRejected Event per rejected finding (not one per reconcile)",
        || format!("{} Events for {rejected_records} rejected records: {rejected_events:?}", rejected_events.len()),
    )?;
    // Joining (not ready) is expected while the cluster changes view for the
    // primary's replacement; only a quarantine, a removal or a new key would
    // mean the forged evidence counted.
    let touched = |(st, f): &&(Option<MemberState>, Option<String>)| {
        matches!(st, Some(MemberState::Quarantined | MemberState::Removed) | None) || f.as_deref() != Some(fp3.as_str())
    };
    let not_active = member3_states.iter().filter(|(st, _)| *st != Some(MemberState::Active)).count();
    s.measure("member_3_samples_not_active", format!("{not_active}/{}", member3_states.len()), "");
    s.check(
        !member3_states.iter().any(|x| touched(&x)),
        "honest member 3 kept its key and was never quarantined or removed",
        || format!("{:?}", member3_states.iter().filter(touched).take(3).collect::<Vec<_>>()),
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = load.stop().await;
    s.measure_secs("write_gap_during_quarantines", r.max_gap(inject, end));
    let acked =
        r.history.iter().filter(|x| x.ret <= end && x.outcome == pbft_e2e::linearizability::Outcome::Written).count();
    s.check(acked > 0, "writes committed while the Byzantine members were in the cluster and being replaced", || {
        "none".into()
    })?;
    check_load(ctx, s, ns, name, &r, "load").await?;
    k8s::delete_namespace(&ctx.client, ns, Duration::from_secs(180)).await
}

/// Manual quarantine mode: the offender is recorded and kept until the user
/// approves with the annotation `consensus.pbft.dev/approve-quarantine`.
pub async fn manual(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let (ns, name) = ("e2e-manual", "manual");
    let mut sp = spec(1, "128Mi");
    sp["quarantine"] = serde_json::json!({ "mode": "Manual" });
    ctx.create_cluster(ns, name, sp, annotations(r#"{"2": "conflicting-votes"}"#)).await?;
    let (cc0, _) = ctx.wait_available(ns, name, Duration::from_secs(300)).await?;
    let fp2 = fingerprint(&cc0, 2).ok_or_else(|| Error::Check("member 2 has no key".into()))?;
    let epoch0 = cc0.status.as_ref().and_then(|x| x.epoch).unwrap_or(0);
    let watcher = ctx.watcher(ns, name).await?;
    let load = Load::start(watcher.clone(), LoadSpec::light("manual"));
    let (_, detect) = k8s::wait_cc(&ctx.client, ns, name, "member 2 convicted", Duration::from_secs(180), |cc| {
        convicted(cc, 2, &fp2).is_some()
    })
    .await?;
    s.measure_secs("conflicting_voter_detected", detect);
    // Held: 20 s without approval, member 2 keeps its key, shown Quarantined.
    let hold = Instant::now();
    let mut states = vec![];
    while hold.elapsed() < Duration::from_secs(20) {
        let cc = k8s::get_cc(&ctx.client, ns, name).await?;
        states.push((state(&cc, 2), fingerprint(&cc, 2), cc.status.as_ref().and_then(|x| x.epoch)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let held = states.iter().all(|(st, f, e)| {
        *st == Some(MemberState::Quarantined) && f.as_deref() == Some(fp2.as_str()) && *e == Some(epoch0)
    });
    s.check(
        held,
        "Manual mode: the offender is shown Quarantined and kept (same key, same epoch) for 20 s without approval",
        || format!("{:?}", states.last()),
    )?;
    let cc = k8s::get_cc(&ctx.client, ns, name).await?;
    let cond = cc.status.as_ref().and_then(|st| st.conditions.iter().find(|c| c.type_ == "Quarantining").cloned());
    s.log(format!("Quarantining condition: {cond:?}"));
    let t = Instant::now();
    let approve =
        serde_json::json!({ "metadata": { "annotations": { "consensus.pbft.dev/approve-quarantine": "2" } } });
    k8s::patch_cc(&ctx.client, ns, name, approve).await?.map_err(Error::Check)?;
    let (_, took) =
        k8s::wait_cc(&ctx.client, ns, name, "member 2 replaced after approval", Duration::from_secs(300), |cc| {
            fingerprint(cc, 2).is_some_and(|f| f != fp2) && k8s::fully_available(cc)
        })
        .await?;
    s.measure_secs("replacement_active_after_approval", took);
    let _ = t;
    let r = load.stop().await;
    check_load(ctx, s, ns, name, &r, "load").await?;
    k8s::delete_namespace(&ctx.client, ns, Duration::from_secs(180)).await
}
