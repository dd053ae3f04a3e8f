//! The status of a cluster, computed from what was observed and planned
//! (pure; the reconciler patches it on the status subresource).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::model::{quorum, ChangeReason, Observed};
use super::plan::{healthy, primary, Plan, Step};
use crate::build::{key_fingerprint, pod_name};
use crate::crd::{ConsensusClusterStatus, EvidenceRecord, MemberState, MemberStatus, Phase};
use crate::validate::ValidatedCluster;

/// Condition types.
pub const AVAILABLE: &str = "Available";
/// See [`AVAILABLE`].
pub const PROGRESSING: &str = "Progressing";
/// See [`AVAILABLE`].
pub const DEGRADED: &str = "Degraded";
/// See [`AVAILABLE`].
pub const QUARANTINING: &str = "Quarantining";

/// `conds` with `c` set; the transition time moves only when the status flips.
pub fn set_condition(conds: &mut Vec<Condition>, mut c: Condition) {
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(old) => {
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
            }
            *old = c;
        }
        None => conds.push(c),
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The status of a valid cluster.
pub fn compute(
    cluster: &ValidatedCluster,
    generation: Option<i64>,
    o: &Observed,
    plan: &Plan,
    previous: &ConsensusClusterStatus,
    evidence: Vec<EvidenceRecord>,
    now: &Time,
) -> ConsensusClusterStatus {
    let mut s = ConsensusClusterStatus {
        conditions: previous.conditions.clone(),
        observed_generation: generation,
        evidence,
        ..Default::default()
    };
    let Some(committed) = &o.committed else {
        s.phase = Some(Phase::Creating);
        set_condition(
            &mut s.conditions,
            condition(AVAILABLE, false, "Creating", "generating keys and the first membership".into(), generation, now),
        );
        set_condition(
            &mut s.conditions,
            condition(PROGRESSING, true, "Creating", "creating the cluster".into(), generation, now),
        );
        return s;
    };
    let healthy = healthy(committed, o);
    let n = committed.n();
    let q = quorum(n);
    let pending = o.pending.as_ref().filter(|c| c.from_epoch == committed.epoch);
    let quarantining: Vec<u32> = plan
        .quarantine_held
        .iter()
        .copied()
        .chain(pending.filter(|c| c.reason == ChangeReason::Quarantine).map(|c| c.subject))
        .chain(plan.steps.iter().filter_map(|st| match st {
            Step::Begin { kind, reason: ChangeReason::Quarantine } => Some(kind.subject()),
            _ => None,
        }))
        .collect();

    for m in &committed.members {
        let state = if quarantining.contains(&m.id) {
            MemberState::Quarantined
        } else if healthy.contains(&m.id) {
            MemberState::Active
        } else {
            MemberState::Joining
        };
        s.members.push(MemberStatus {
            id: m.id as i32,
            pod: pod_name(cluster, m.id),
            key_fingerprint: key_fingerprint(&m.public_key),
            last_executed: o.reports.get(&m.id).filter(|r| r.public_key == m.public_key).map(|r| r.executed as i64),
            state,
        });
    }
    for pod in o.pods.values().filter(|p| !committed.contains(p.id)) {
        s.members.push(MemberStatus {
            id: pod.id as i32,
            pod: pod.name.clone(),
            key_fingerprint: None,
            last_executed: o.reports.get(&pod.id).map(|r| r.executed as i64),
            state: MemberState::Removed,
        });
    }
    s.members.sort_by_key(|m| m.id);
    s.replicas = n as i32;
    s.ready_replicas = healthy.len() as i32;
    s.quarantined_replicas = quarantining.len() as i32;
    s.epoch = Some(committed.epoch as i64);
    if let Some((view, id)) = primary(committed, o) {
        s.view = Some(view as i64);
        s.primary = Some(pod_name(cluster, id));
    }

    let available = healthy.len() >= q;
    let scaling = cluster.replicas as usize != n
        || pending.is_some_and(|c| matches!(c.reason, ChangeReason::ScaleUp | ChangeReason::ScaleDown));
    let working = !plan.steps.is_empty() || pending.is_some();
    let why = plan.waiting.first().cloned();
    set_condition(
        &mut s.conditions,
        condition(
            AVAILABLE,
            available,
            if available { "QuorumHealthy" } else { "QuorumLost" },
            format!("{} of {n} members healthy; a quorum is {q}", healthy.len()),
            generation,
            now,
        ),
    );
    let progress_reason = match (pending.map(|c| c.reason), scaling) {
        (Some(ChangeReason::Quarantine), _) => "Quarantining",
        (Some(ChangeReason::Upgrade), _) => "RollingUpdate",
        (_, true) => "Scaling",
        (Some(_), _) => "ReplacingMember",
        (None, false) if working => "Reconciling",
        _ => "Stable",
    };
    set_condition(
        &mut s.conditions,
        condition(
            PROGRESSING,
            working || scaling,
            progress_reason,
            why.clone().unwrap_or_else(|| if working { "applying changes".into() } else { "nothing to do".into() }),
            generation,
            now,
        ),
    );
    set_condition(
        &mut s.conditions,
        condition(
            DEGRADED,
            healthy.len() < n,
            if healthy.len() < n { "MembersUnhealthy" } else { "AllMembersHealthy" },
            format!("{} of {n} members healthy", healthy.len()),
            generation,
            now,
        ),
    );
    set_condition(
        &mut s.conditions,
        condition(
            QUARANTINING,
            !quarantining.is_empty(),
            if quarantining.is_empty() { "NoOffender" } else { "OffenderProven" },
            if quarantining.is_empty() {
                "no member is convicted".into()
            } else {
                format!(
                    "members {quarantining:?} are proven faulty{}",
                    why.map(|w| format!("; {w}")).unwrap_or_default()
                )
            },
            generation,
            now,
        ),
    );
    s.phase = Some(if !quarantining.is_empty() {
        Phase::Quarantining
    } else if !available {
        Phase::Degraded
    } else if scaling {
        Phase::Scaling
    } else if committed.epoch == 0 && healthy.len() < n && previous.phase != Some(Phase::Running) {
        Phase::Creating
    } else if healthy.len() < n {
        Phase::Degraded
    } else {
        Phase::Running
    });
    s
}

/// The status of a cluster whose spec failed validation: Degraded with the
/// reason, everything else as it was.
pub fn invalid(
    previous: &ConsensusClusterStatus,
    generation: Option<i64>,
    reason: &str,
    message: String,
    now: &Time,
) -> ConsensusClusterStatus {
    let mut s = previous.clone();
    s.phase = Some(Phase::Invalid);
    s.observed_generation = generation;
    set_condition(&mut s.conditions, condition(DEGRADED, true, reason, message.clone(), generation, now));
    set_condition(
        &mut s.conditions,
        condition(PROGRESSING, false, reason, format!("waiting for a valid spec: {message}"), generation, now),
    );
    s
}
