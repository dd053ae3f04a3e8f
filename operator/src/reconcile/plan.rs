//! The planner: a pure function from what was observed to the next steps.
//!
//! Invariants it keeps:
//! - one membership change at a time, ordered by the cluster itself (the
//!   operator records it as pending, submits it signed by the admin key, and
//!   adopts the new epoch once f+1 members report it);
//! - a change never leaves the new membership with fewer healthy members than
//!   its quorum, and never takes a healthy member out while f are already out;
//! - rolling changes (upgrade, scaling) wait until every member is healthy, so
//!   a joining member catches up before the next one goes; the primary goes last;
//! - a key whose pod lost its ephemeral data is never used again: the member
//!   gets a new key through a membership change before a new pod starts;
//! - a pod stranded on a node that stopped answering is force-deleted only
//!   once its key is out of the membership (an ephemeral member gets a new key
//!   first), so the old process cannot sign for the cluster should the node
//!   come back.

use std::collections::BTreeSet;

use super::model::{quorum, ChangeReason, Committed, Member, Observed, PendingChange, PodView};
use crate::build::{key_fingerprint, pod, BuildError};
use crate::crd::QuarantineMode;
use crate::validate::ValidatedCluster;

/// A membership change to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Give member `id` a new key (the operator generates it).
    Replace(u32),
    /// Add member `id` with a new key.
    Add(u32),
    /// Remove member `id`.
    Remove(u32),
}

impl ChangeKind {
    /// The member the change is about.
    pub fn subject(self) -> u32 {
        match self {
            ChangeKind::Replace(id) | ChangeKind::Add(id) | ChangeKind::Remove(id) => id,
        }
    }
    /// Whether the change needs a new key.
    pub fn needs_key(self) -> bool {
        !matches!(self, ChangeKind::Remove(_))
    }
}

/// One thing the reconciler does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Generate the admin key (if missing) and a key per member, and write the first membership (epoch 0).
    Bootstrap { ids: Vec<u32> },
    /// f+1 members report a newer epoch: record it and clear the change in flight.
    Adopt(Committed),
    /// Drop a change in flight that no longer applies.
    ClearPending,
    /// (Re)submit the change in flight.
    Submit(PendingChange),
    /// Start a membership change.
    Begin { kind: ChangeKind, reason: ChangeReason },
    /// Create the pod of member `id` with the key in `key_secret` (and mark the key used).
    CreatePod { id: u32, key_secret: String },
    /// Delete a pod (retired key, removed member, or a rolling restart with persistent data).
    DeletePod { name: String, why: String },
    /// Delete a stranded pod at once, without its kubelet's confirmation (its
    /// key is retired or it is not a member).
    ForceDeletePod { name: String, why: String },
    /// Delete a removed member's PersistentVolumeClaim.
    DeletePvc { id: u32 },
    /// Delete a key Secret no member uses any more.
    DeleteSecret { name: String },
}

/// The steps, and why nothing more happens now (for status and logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub waiting: Vec<String>,
    /// Members whose quarantine waits for approval (Manual mode) or for room (at most f out).
    pub quarantine_held: Vec<u32>,
}

/// The members of the next epoch for `kind`, given the new key when one is needed.
pub fn next_members(committed: &Committed, kind: ChangeKind, new_key: Option<&str>) -> Vec<Member> {
    let mut members: Vec<Member> = committed.members.iter().filter(|m| m.id != kind.subject()).cloned().collect();
    if let (true, Some(key)) = (kind.needs_key(), new_key) {
        members.push(Member { id: kind.subject(), public_key: key.to_ascii_lowercase() });
    }
    members.sort();
    members
}

/// Members that are healthy: pod ready with the member's current key, and the
/// replica reports itself active in the committed epoch with that key.
pub fn healthy(committed: &Committed, o: &Observed) -> BTreeSet<u32> {
    committed
        .members
        .iter()
        .filter(|m| {
            let Some(secret) = o.secret_of_key(&m.public_key) else { return false };
            let pod_ok = o
                .pods
                .get(&m.id)
                .is_some_and(|p| p.ready && !p.terminating && p.key_secret.as_deref() == Some(secret.name.as_str()));
            let report_ok = o
                .reports
                .get(&m.id)
                .is_some_and(|r| r.active && r.epoch == committed.epoch && r.public_key == m.public_key);
            pod_ok && report_ok
        })
        .map(|m| m.id)
        .collect()
}

/// The membership f+1 members of `committed` report in force at a newer epoch, if any.
fn reported_newer(committed: &Committed, o: &Observed) -> Option<Committed> {
    let mut votes: Vec<(Committed, usize)> = vec![];
    for r in o.reports.values() {
        if committed.key_of(r.id) != Some(r.public_key.as_str()) {
            continue; // only members of the epoch we know vouch for the next one
        }
        let Some(m) = &r.membership else { continue };
        if m.epoch <= committed.epoch || m.admin_key != committed.admin_key {
            continue;
        }
        match votes.iter_mut().find(|(c, _)| c == m) {
            Some((_, n)) => *n += 1,
            None => votes.push((m.clone(), 1)),
        }
    }
    votes.into_iter().filter(|(_, n)| *n > committed.f()).max_by_key(|(c, _)| c.epoch).map(|(c, _)| c)
}

/// The primary of the view most active members are in.
pub fn primary(committed: &Committed, o: &Observed) -> Option<(u64, u32)> {
    let mut views: Vec<((u64, u32), usize)> = vec![];
    for r in o.reports.values().filter(|r| r.active && r.epoch == committed.epoch && committed.contains(r.id)) {
        match views.iter_mut().find(|(v, _)| *v == (r.view, r.primary)) {
            Some((_, n)) => *n += 1,
            None => views.push(((r.view, r.primary), 1)),
        }
    }
    views.into_iter().max_by_key(|((view, _), n)| (*n, *view)).map(|(v, _)| v)
}

/// How a pod that must go is removed: deleted (once), or force-deleted when it
/// is stranded; `why` and `why_stranded` say why for each.
fn retire_pod(pod: &PodView, why: &str, why_stranded: &str) -> Option<Step> {
    if pod.stranded {
        Some(Step::ForceDeletePod {
            name: pod.name.clone(),
            why: format!("stranded on an unreachable node; {why_stranded}"),
        })
    } else if !pod.terminating {
        Some(Step::DeletePod { name: pod.name.clone(), why: why.into() })
    } else {
        None
    }
}

/// Decides the next steps for `cluster` from `o`.
pub fn plan(cluster: &ValidatedCluster, o: &Observed) -> Result<Plan, BuildError> {
    let mut p = Plan::default();
    let Some(committed) = &o.committed else {
        p.steps.push(Step::Bootstrap { ids: (0..cluster.replicas).collect() });
        return Ok(p);
    };
    if let Some(next) = reported_newer(committed, o) {
        p.steps.push(Step::Adopt(next));
        return Ok(p);
    }
    let pending = match &o.pending {
        Some(c) if c.from_epoch == committed.epoch => Some(c),
        Some(_) => {
            p.steps.push(Step::ClearPending);
            None
        }
        None => None,
    };
    let storage = cluster.spec.storage.is_some();
    let mut lost: Vec<(u32, ChangeReason)> = vec![];
    let mut outdated: Vec<(u32, String)> = vec![];

    // Pods of the committed members.
    for m in &committed.members {
        let secret = o.secret_of_key(&m.public_key);
        match (o.pods.get(&m.id), secret) {
            (Some(pod), Some(s)) if pod.key_secret.as_deref() != Some(s.name.as_str()) => {
                p.steps.extend(retire_pod(pod, "runs a retired key", "its key is retired"))
            }
            (Some(pod), _) if pod.stranded && !storage => lost.push((m.id, ChangeReason::NodeLost)),
            (Some(pod), _) if pod.stranded => p.waiting.push(format!(
                "pod {} of member {} is stranded on an unreachable node and holds its data on a volume: \
                 it is left to Kubernetes (delete it with --force once the node is gone for good)",
                pod.name, m.id
            )),
            (Some(pod), _) => {
                let key_secret = pod.key_secret.clone().unwrap_or_default();
                let faults = o.keys.iter().find(|k| k.name == key_secret).and_then(|k| k.faults.as_deref());
                let want = pod::build_pod(cluster, m.id, &key_secret, faults)?;
                let want_hash =
                    want.metadata.annotations.and_then(|a| a.get(crate::build::SPEC_HASH_ANNOTATION).cloned());
                if !pod.terminating && pod.spec_hash != want_hash {
                    outdated.push((m.id, pod.name.clone()));
                }
            }
            (None, None) => lost.push((m.id, ChangeReason::KeyLost)),
            (None, Some(s)) if s.used && !storage => lost.push((m.id, ChangeReason::DataLost)),
            (None, Some(s)) => p.steps.push(Step::CreatePod { id: m.id, key_secret: s.name.clone() }),
        }
    }
    // Pods and volumes of members no longer in the membership.
    for pod in o.pods.values() {
        if !committed.contains(pod.id) {
            p.steps.extend(retire_pod(pod, "not a member", "not a member"));
        }
    }
    // Key Secrets nobody needs: not a committed member's key nor the pending change's.
    let wanted: BTreeSet<&str> = committed
        .members
        .iter()
        .chain(pending.iter().flat_map(|c| c.members.iter()))
        .map(|m| m.public_key.as_str())
        .collect();
    for k in o.keys.iter().filter(|k| !wanted.contains(k.public_key.as_str())) {
        p.steps.push(Step::DeleteSecret { name: k.name.clone() });
    }
    // Volumes of members neither in the membership nor being added.
    let adding = pending.map(|c| c.subject);
    for &id in o.pvcs.iter().filter(|&&id| !committed.contains(id) && Some(id) != adding) {
        p.steps.push(Step::DeletePvc { id });
    }

    if let Some(change) = pending {
        p.steps.push(Step::Submit(change.clone()));
        p.waiting.push(format!(
            "membership change for member {} ({:?}) submitted in epoch {}; waiting for f+1 members to switch",
            change.subject, change.reason, change.from_epoch
        ));
        return Ok(p);
    }

    let healthy = healthy(committed, o);
    let n = committed.n();
    let out = n - healthy.len();
    let primary = primary(committed, o).map(|(_, id)| id);
    // Can `kind` start now? The new membership must keep a quorum of healthy
    // members without the subject, and a healthy member may go only while
    // fewer than f are out.
    let admissible = |kind: ChangeKind, reason: ChangeReason| -> Result<(), String> {
        let subject = kind.subject();
        let n_after = match kind {
            ChangeKind::Replace(_) => n,
            ChangeKind::Add(_) => n + 1,
            ChangeKind::Remove(_) => n - 1,
        };
        let healthy_after = healthy.iter().filter(|&&id| id != subject).count();
        if healthy_after < quorum(n_after) {
            return Err(format!(
                "{healthy_after} healthy members would remain, the membership of {n_after} needs {}",
                quorum(n_after)
            ));
        }
        if healthy.contains(&subject) && out + 1 > committed.f() {
            return Err(format!("{out} of {n} members are out and f is {}", committed.f()));
        }
        let urgent = matches!(
            reason,
            ChangeReason::Quarantine | ChangeReason::DataLost | ChangeReason::KeyLost | ChangeReason::NodeLost
        );
        if !urgent && out > 0 {
            return Err(format!("waiting until all {n} members are healthy ({out} not yet)"));
        }
        Ok(())
    };

    // 1. Quarantine members convicted by verified evidence against their current key.
    let mut candidates: Vec<(ChangeKind, ChangeReason)> = vec![];
    for m in &committed.members {
        let fp = key_fingerprint(&m.public_key);
        if !o.convicted.iter().any(|(id, k)| *id == m.id && Some(k) == fp.as_ref()) {
            continue;
        }
        if cluster.spec.quarantine.mode == QuarantineMode::Manual && !o.approvals.contains(&m.id) {
            p.quarantine_held.push(m.id);
            p.waiting.push(format!(
                "member {} is proven faulty; Manual mode: approve with annotation consensus.pbft.dev/approve-quarantine={}",
                m.id, m.id
            ));
            continue;
        }
        candidates.push((ChangeKind::Replace(m.id), ChangeReason::Quarantine));
    }
    // 2. Members whose key can no longer be used.
    candidates.extend(lost.iter().map(|&(id, why)| (ChangeKind::Replace(id), why)));
    for (kind, reason) in candidates {
        match admissible(kind, reason) {
            Ok(()) => {
                p.steps.push(Step::Begin { kind, reason });
                return Ok(p);
            }
            Err(why) => {
                if reason == ChangeReason::Quarantine {
                    p.quarantine_held.push(kind.subject());
                }
                p.waiting.push(format!("replacing member {} ({reason:?}) waits: {why}", kind.subject()));
            }
        }
    }
    // 3. Rolling update of outdated pods, the primary last.
    outdated.sort_by_key(|(id, _)| (Some(*id) == primary, *id));
    if let Some((id, name)) = outdated.first() {
        let kind = ChangeKind::Replace(*id);
        match admissible(kind, ChangeReason::Upgrade) {
            Ok(()) if storage => {
                p.steps.push(Step::DeletePod { name: name.clone(), why: "rolling update (data kept)".into() })
            }
            Ok(()) => p.steps.push(Step::Begin { kind, reason: ChangeReason::Upgrade }),
            Err(why) => p.waiting.push(format!("rolling update of member {id} waits: {why}")),
        }
        return Ok(p);
    }
    // 4. Scaling, one member at a time.
    let want = cluster.replicas as usize;
    if want > n {
        let id = (0..).find(|id| !committed.contains(*id)).unwrap_or(u32::MAX);
        match admissible(ChangeKind::Add(id), ChangeReason::ScaleUp) {
            Ok(()) => p.steps.push(Step::Begin { kind: ChangeKind::Add(id), reason: ChangeReason::ScaleUp }),
            Err(why) => p.waiting.push(format!("adding member {id} waits: {why}")),
        }
    } else if want < n {
        // Remove the highest id that is not the primary (the primary goes last).
        let mut ids: Vec<u32> = committed.members.iter().map(|m| m.id).collect();
        ids.sort_by_key(|id| (Some(*id) != primary, *id));
        if let Some(&id) = ids.last() {
            match admissible(ChangeKind::Remove(id), ChangeReason::ScaleDown) {
                Ok(()) => p.steps.push(Step::Begin { kind: ChangeKind::Remove(id), reason: ChangeReason::ScaleDown }),
                Err(why) => p.waiting.push(format!("removing member {id} waits: {why}")),
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster;
    use crate::reconcile::model::{KeySecret, Report};

    fn key(id: u32, generation: u8) -> String {
        format!("{:02x}", id as u8 * 16 + generation).repeat(32)
    }

    fn secret_name(id: u32, generation: u8) -> String {
        format!("ledger-key-{id}-{generation}")
    }

    /// A healthy cluster of `n` members at `epoch`, member keys of generation 0, view 0.
    fn healthy_cluster(c: &ValidatedCluster, n: u32, epoch: u64) -> Observed {
        let committed = Committed {
            epoch,
            admin_key: "ad".repeat(32),
            members: (0..n).map(|id| Member { id, public_key: key(id, 0) }).collect(),
        };
        let mut o =
            Observed { committed: Some(committed.clone()), history: vec![committed.clone()], ..Default::default() };
        for id in 0..n {
            o.keys.push(KeySecret { name: secret_name(id, 0), id, public_key: key(id, 0), used: true, faults: None });
            let pod = pod::build_pod(c, id, &secret_name(id, 0), None).expect("pod");
            o.pods.insert(
                id,
                PodView {
                    id,
                    name: format!("ledger-{id}"),
                    key_secret: Some(secret_name(id, 0)),
                    spec_hash: pod
                        .metadata
                        .annotations
                        .and_then(|a| a.get(crate::build::SPEC_HASH_ANNOTATION).cloned()),
                    ready: true,
                    ip: Some(format!("10.0.0.{id}")),
                    ..Default::default()
                },
            );
            o.reports.insert(
                id,
                Report {
                    id,
                    public_key: key(id, 0),
                    member: true,
                    active: true,
                    ready: true,
                    view: 0,
                    primary: 0,
                    epoch,
                    membership: Some(committed.clone()),
                    ..Default::default()
                },
            );
        }
        o
    }

    fn begins(p: &Plan) -> Vec<(ChangeKind, ChangeReason)> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Begin { kind, reason } => Some((*kind, *reason)),
                _ => None,
            })
            .collect()
    }

    fn convict(o: &mut Observed, id: u32) {
        o.convicted.push((id, key_fingerprint(&key(id, 0)).expect("fp")));
    }

    #[test]
    fn a_new_cluster_is_bootstrapped_then_its_pods_created() {
        let c = cluster("faultTolerance: 1");
        let p = plan(&c, &Observed::default()).expect("plan");
        assert_eq!(p.steps, vec![Step::Bootstrap { ids: vec![0, 1, 2, 3] }]);
        let mut o = healthy_cluster(&c, 4, 0);
        o.pods.clear();
        o.reports.clear();
        for k in &mut o.keys {
            k.used = false;
        }
        let p = plan(&c, &o).expect("plan");
        let creates: Vec<u32> =
            p.steps.iter().filter_map(|s| if let Step::CreatePod { id, .. } = s { Some(*id) } else { None }).collect();
        assert_eq!(creates, vec![0, 1, 2, 3]);
        assert!(begins(&p).is_empty());
    }

    #[test]
    fn a_healthy_cluster_needs_nothing() {
        let c = cluster("faultTolerance: 1");
        let p = plan(&c, &healthy_cluster(&c, 4, 2)).expect("plan");
        assert!(p.steps.is_empty(), "{p:?}");
    }

    #[test]
    fn a_newer_epoch_is_adopted_only_on_f_plus_1_members_word() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        let mut next = o.committed.clone().expect("committed");
        next.epoch = 3;
        next.members[3].public_key = key(3, 1);
        o.reports.get_mut(&0).expect("r0").membership = Some(next.clone());
        let p = plan(&c, &o).expect("plan");
        assert!(!p.steps.contains(&Step::Adopt(next.clone())), "one report (f) is not enough");
        // A pod reporting with a key that is not the member's does not count.
        let r1 = o.reports.get_mut(&1).expect("r1");
        r1.membership = Some(next.clone());
        r1.public_key = key(1, 9);
        assert!(!plan(&c, &o).expect("plan").steps.contains(&Step::Adopt(next.clone())));
        o.reports.get_mut(&1).expect("r1").public_key = key(1, 0);
        assert_eq!(plan(&c, &o).expect("plan").steps, vec![Step::Adopt(next)]);
    }

    #[test]
    fn a_convicted_member_is_replaced_with_a_new_key() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        convict(&mut o, 2);
        assert_eq!(begins(&plan(&c, &o).expect("plan")), vec![(ChangeKind::Replace(2), ChangeReason::Quarantine)]);
        // Evidence against an older key of the member convicts nobody now.
        let mut o = healthy_cluster(&c, 4, 2);
        o.convicted.push((2, key_fingerprint(&key(2, 7)).expect("fp")));
        assert!(begins(&plan(&c, &o).expect("plan")).is_empty());
        let m = next_members(o.committed.as_ref().expect("c"), ChangeKind::Replace(2), Some(&key(2, 1)));
        assert_eq!(
            m.iter().map(|m| m.public_key.clone()).collect::<Vec<_>>(),
            vec![key(0, 0), key(1, 0), key(2, 1), key(3, 0)]
        );
    }

    #[test]
    fn manual_mode_waits_for_approval() {
        let c = cluster("{faultTolerance: 1, quarantine: {mode: Manual}}");
        let mut o = healthy_cluster(&c, 4, 2);
        convict(&mut o, 1);
        let p = plan(&c, &o).expect("plan");
        assert!(begins(&p).is_empty());
        assert_eq!(p.quarantine_held, vec![1]);
        o.approvals = vec![1];
        assert_eq!(begins(&plan(&c, &o).expect("plan")), vec![(ChangeKind::Replace(1), ChangeReason::Quarantine)]);
    }

    #[test]
    fn never_more_than_f_out() {
        // f=1: member 3 is down, member 1 is convicted but healthy: taking 1 out too would leave 2 of 4.
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        o.pods.get_mut(&3).expect("pod").ready = false;
        convict(&mut o, 1);
        let p = plan(&c, &o).expect("plan");
        assert!(begins(&p).is_empty(), "{p:?}");
        assert!(p.quarantine_held.contains(&1));
        // f=2: one down, one convicted: allowed (2 out).
        let c = cluster("faultTolerance: 2");
        let mut o = healthy_cluster(&c, 7, 2);
        o.pods.get_mut(&6).expect("pod").ready = false;
        convict(&mut o, 1);
        convict(&mut o, 2);
        let p = plan(&c, &o).expect("plan");
        assert_eq!(begins(&p), vec![(ChangeKind::Replace(1), ChangeReason::Quarantine)], "one change at a time");
    }

    #[test]
    fn an_ephemeral_member_whose_pod_vanished_gets_a_new_key() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        o.pods.remove(&2);
        o.reports.remove(&2);
        let p = plan(&c, &o).expect("plan");
        assert_eq!(begins(&p), vec![(ChangeKind::Replace(2), ChangeReason::DataLost)]);
        assert!(!p.steps.iter().any(|s| matches!(s, Step::CreatePod { .. })), "the used key is never started again");
        // With persistent storage the data survives: the same key comes back.
        let c = cluster("{faultTolerance: 1, storage: {size: 1Gi}}");
        let mut o = healthy_cluster(&c, 4, 2);
        o.pods.remove(&2);
        o.reports.remove(&2);
        let p = plan(&c, &o).expect("plan");
        assert_eq!(p.steps, vec![Step::CreatePod { id: 2, key_secret: secret_name(2, 0) }]);
    }

    #[test]
    fn a_pod_stranded_on_a_lost_node_is_replaced_key_first() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        let strand = |o: &mut Observed| {
            let pod = o.pods.get_mut(&2).expect("pod");
            (pod.ready, pod.terminating, pod.stranded) = (false, true, true);
            o.reports.remove(&2);
        };
        // Terminating but not yet stranded: the kubelet may still confirm.
        let pod = o.pods.get_mut(&2).expect("pod");
        (pod.ready, pod.terminating) = (false, true);
        o.reports.remove(&2);
        let p = plan(&c, &o).expect("plan");
        assert!(p.steps.is_empty(), "{p:?}");
        // Stranded: the member gets a new key through the membership first; the pod stays.
        strand(&mut o);
        let p = plan(&c, &o).expect("plan");
        assert_eq!(begins(&p), vec![(ChangeKind::Replace(2), ChangeReason::NodeLost)]);
        assert!(!p.steps.iter().any(|s| matches!(s, Step::ForceDeletePod { .. } | Step::DeletePod { .. })), "{p:?}");
        // Not while f members are already out: member 1 is down too.
        let mut both = o.clone();
        both.pods.get_mut(&1).expect("pod").ready = false;
        let p = plan(&c, &both).expect("plan");
        assert!(begins(&p).is_empty(), "{p:?}");
        assert!(p.waiting.iter().any(|w| w.contains("NodeLost")), "{:?}", p.waiting);
        // The new key is in force: now the stranded pod, holding a retired key, is force-deleted.
        let mut next = o.committed.clone().expect("committed");
        next.epoch = 3;
        next.members[2].public_key = key(2, 1);
        o.committed = Some(next.clone());
        o.keys.push(KeySecret { name: secret_name(2, 1), id: 2, public_key: key(2, 1), used: false, faults: None });
        for r in o.reports.values_mut() {
            (r.epoch, r.membership) = (3, Some(next.clone()));
        }
        let p = plan(&c, &o).expect("plan");
        assert!(p.steps.contains(&Step::ForceDeletePod {
            name: "ledger-2".into(),
            why: "stranded on an unreachable node; its key is retired".into()
        }));
        assert!(!p.steps.iter().any(|s| matches!(s, Step::CreatePod { .. })), "{p:?}");
        assert!(p.steps.contains(&Step::DeleteSecret { name: secret_name(2, 0) }), "the retired key goes");
        // Once it is gone, the member's pod starts on the new key.
        o.pods.remove(&2);
        let p = plan(&c, &o).expect("plan");
        assert!(p.steps.contains(&Step::CreatePod { id: 2, key_secret: secret_name(2, 1) }), "{p:?}");
    }

    #[test]
    fn a_stranded_pod_with_a_volume_is_left_to_kubernetes() {
        let c = cluster("{faultTolerance: 1, storage: {size: 1Gi}}");
        let mut o = healthy_cluster(&c, 4, 2);
        let pod = o.pods.get_mut(&2).expect("pod");
        (pod.ready, pod.terminating, pod.stranded) = (false, true, true);
        o.reports.remove(&2);
        let p = plan(&c, &o).expect("plan");
        assert!(p.steps.is_empty(), "{p:?}");
        assert!(p.waiting.iter().any(|w| w.contains("stranded")), "{:?}", p.waiting);
    }

    #[test]
    fn a_stranded_pod_of_a_removed_member_is_force_deleted() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        o.pods.insert(9, PodView { id: 9, name: "ledger-9".into(), terminating: true, ..Default::default() });
        assert!(!plan(&c, &o).expect("plan").steps.iter().any(|s| matches!(s, Step::ForceDeletePod { .. })));
        o.pods.get_mut(&9).expect("pod").stranded = true;
        let p = plan(&c, &o).expect("plan");
        assert!(p.steps.contains(&Step::ForceDeletePod {
            name: "ledger-9".into(),
            why: "stranded on an unreachable node; not a member".into()
        }));
    }

    #[test]
    fn a_change_in_flight_is_resubmitted_and_blocks_others() {
        let c = cluster("faultTolerance: 2");
        let mut o = healthy_cluster(&c, 4, 2);
        let change = PendingChange {
            from_epoch: 2,
            members: next_members(o.committed.as_ref().expect("c"), ChangeKind::Add(4), Some(&key(4, 0))),
            reason: ChangeReason::ScaleUp,
            subject: 4,
        };
        o.pending = Some(change.clone());
        o.keys.push(KeySecret { name: secret_name(4, 0), id: 4, public_key: key(4, 0), used: false, faults: None });
        let p = plan(&c, &o).expect("plan");
        assert_eq!(p.steps, vec![Step::Submit(change.clone())], "the new key is kept, nothing else starts");
        // Once the cluster moved past it, the record is dropped.
        o.committed.as_mut().expect("c").epoch = 3;
        for r in o.reports.values_mut() {
            r.epoch = 3;
            r.membership.as_mut().expect("m").epoch = 3;
        }
        let p = plan(&c, &o).expect("plan");
        assert_eq!(p.steps.first(), Some(&Step::ClearPending));
    }

    #[test]
    fn scaling_goes_one_member_at_a_time_when_all_are_healthy() {
        let c = cluster("faultTolerance: 2");
        let o = healthy_cluster(&c, 4, 2);
        assert_eq!(begins(&plan(&c, &o).expect("plan")), vec![(ChangeKind::Add(4), ChangeReason::ScaleUp)]);
        let mut o = healthy_cluster(&c, 5, 3);
        o.reports.get_mut(&4).expect("r").active = false; // the last one still catching up
        assert!(begins(&plan(&c, &o).expect("plan")).is_empty());
        // Down: the highest id that is not the primary.
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 7, 4);
        for r in o.reports.values_mut() {
            r.view = 6;
            r.primary = 6;
        }
        assert_eq!(begins(&plan(&c, &o).expect("plan")), vec![(ChangeKind::Remove(5), ChangeReason::ScaleDown)]);
    }

    #[test]
    fn rolling_updates_leave_the_primary_last() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        for p in o.pods.values_mut() {
            p.spec_hash = Some("old".into());
        }
        for r in o.reports.values_mut() {
            r.view = 1;
            r.primary = 1;
        }
        assert_eq!(begins(&plan(&c, &o).expect("plan")), vec![(ChangeKind::Replace(0), ChangeReason::Upgrade)]);
        for id in [0, 2, 3] {
            o.pods.get_mut(&id).expect("pod").spec_hash = healthy_cluster(&c, 4, 2).pods[&id].spec_hash.clone();
        }
        assert_eq!(begins(&plan(&c, &o).expect("plan")), vec![(ChangeKind::Replace(1), ChangeReason::Upgrade)]);
        // With storage, the pod is just recreated with its key and data.
        let c = cluster("{faultTolerance: 1, storage: {size: 1Gi}}");
        let mut o = healthy_cluster(&c, 4, 2);
        o.pods.get_mut(&3).expect("pod").spec_hash = Some("old".into());
        let p = plan(&c, &o).expect("plan");
        assert!(matches!(&p.steps[..], [Step::DeletePod { name, .. }] if name == "ledger-3"), "{p:?}");
    }

    #[test]
    fn a_faulty_member_keeps_its_pod_until_convicted_then_gets_an_honest_one() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 2);
        // Member 1's key carries faults and its pod was built with them: it is current, not outdated.
        o.keys[1].faults = Some("conflicting-votes".into());
        let faulty = pod::build_pod(&c, 1, &secret_name(1, 0), Some("conflicting-votes")).expect("pod");
        o.pods.get_mut(&1).expect("pod").spec_hash =
            faulty.metadata.annotations.and_then(|a| a.get(crate::build::SPEC_HASH_ANNOTATION).cloned());
        assert!(plan(&c, &o).expect("plan").steps.is_empty(), "no rolling update of a faulty member's pod");
        // Convicted, it is replaced with a new key (the new key Secret carries no faults).
        convict(&mut o, 1);
        assert_eq!(begins(&plan(&c, &o).expect("plan")), vec![(ChangeKind::Replace(1), ChangeReason::Quarantine)]);
    }

    #[test]
    fn retired_pods_and_keys_are_cleaned_up() {
        let c = cluster("faultTolerance: 1");
        let mut o = healthy_cluster(&c, 4, 3);
        // Member 2 got a new key in epoch 3; its old pod still runs the old key.
        let committed = o.committed.as_mut().expect("c");
        committed.members[2].public_key = key(2, 1);
        o.keys.push(KeySecret { name: secret_name(2, 1), id: 2, public_key: key(2, 1), used: false, faults: None });
        o.pods.insert(9, PodView { id: 9, name: "ledger-9".into(), ..Default::default() });
        o.pvcs = vec![9];
        let p = plan(&c, &o).expect("plan");
        assert!(p.steps.contains(&Step::DeletePod { name: "ledger-2".into(), why: "runs a retired key".into() }));
        assert!(p.steps.contains(&Step::DeletePod { name: "ledger-9".into(), why: "not a member".into() }));
        assert!(p.steps.contains(&Step::DeleteSecret { name: secret_name(2, 0) }));
        assert!(p.steps.contains(&Step::DeletePvc { id: 9 }));
        assert!(!p.steps.contains(&Step::DeleteSecret { name: secret_name(2, 1) }));
    }
}
