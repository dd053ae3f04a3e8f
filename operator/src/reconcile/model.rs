//! What the reconciler knows about one cluster, as plain data: the committed
//! membership (from the membership ConfigMap), the change in flight, the key
//! Secrets, the pods and what each replica reports through its admin API.
//! Parsing from API objects lives here; deciding lives in [`super::plan`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::build::secret::{KEY_USED_ANNOTATION, PUBLIC_KEY_ANNOTATION};
use crate::build::{key_fingerprint, MEMBERSHIP_KEY, MEMBER_ID_LABEL, SPEC_HASH_ANNOTATION};
use pbft::server::membership_file::MembershipFile;

/// Key of the ConfigMap entry keeping recent epochs (to verify old evidence).
pub const HISTORY_KEY: &str = "history.json";
/// Annotation of the membership ConfigMap holding the change in flight.
pub const PENDING_ANNOTATION: &str = "consensus.pbft.dev/pending-change";
/// Annotation on the ConsensusCluster approving quarantines in Manual mode:
/// comma-separated member ids.
pub const APPROVE_ANNOTATION: &str = "consensus.pbft.dev/approve-quarantine";
/// How long past its deletion deadline (deletionTimestamp, which already
/// includes the grace period) a pod must still exist to count as stranded. A
/// live kubelet kills the containers at the deadline and confirms within
/// seconds.
pub const STRANDED_AFTER_SECONDS: i64 = 60;
/// Epochs kept in [`HISTORY_KEY`].
pub const HISTORY_LEN: usize = 16;

/// Why a committed-state document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("membership ConfigMap {name}: {what}: {msg}")]
    ConfigMap { name: String, what: &'static str, msg: String },
}

/// A member of a committed membership.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: u32,
    /// ed25519 public key, 64 lowercase hex digits.
    pub public_key: String,
}

/// A membership the cluster agreed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    pub epoch: u64,
    /// Admin public key, 64 lowercase hex digits.
    pub admin_key: String,
    /// Sorted by id.
    pub members: Vec<Member>,
}

impl Committed {
    /// n.
    pub fn n(&self) -> usize {
        self.members.len()
    }
    /// f = floor((n-1)/3).
    pub fn f(&self) -> usize {
        self.n().saturating_sub(1) / 3
    }
    /// The key of member `id`.
    pub fn key_of(&self, id: u32) -> Option<&str> {
        self.members.iter().find(|m| m.id == id).map(|m| m.public_key.as_str())
    }
    /// Whether `id` is a member.
    pub fn contains(&self, id: u32) -> bool {
        self.key_of(id).is_some()
    }
}

/// Quorum of a membership of `n` replicas: the smallest q with 2q - n >= f+1
/// (2f+1 when n = 3f+1), as `pbft::membership::Membership::quorum`.
pub fn quorum(n: usize) -> usize {
    (n + n.saturating_sub(1) / 3 + 2) / 2
}

/// Why a membership change is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeReason {
    /// Verified evidence against the member's key.
    Quarantine,
    /// The member's pod and its ephemeral data are gone: its key must not sign again.
    DataLost,
    /// The member's key Secret is gone.
    KeyLost,
    /// The member's pod is stranded on a node that stopped answering: its key
    /// is retired so the old process, should the node come back, cannot sign
    /// for the membership any more.
    NodeLost,
    /// A rolling update of an ephemeral member (new pod, new key).
    Upgrade,
    /// Adding a member (f grows).
    ScaleUp,
    /// Removing a member (f shrinks).
    ScaleDown,
}

/// A membership change submitted to the cluster and not yet in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingChange {
    /// The epoch the change applies to.
    pub from_epoch: u64,
    /// The members of the next epoch.
    pub members: Vec<Member>,
    pub reason: ChangeReason,
    /// The member added, removed or given a new key.
    pub subject: u32,
}

/// A key Secret of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySecret {
    pub name: String,
    pub id: u32,
    pub public_key: String,
    /// A pod was created with this key.
    pub used: bool,
    /// Fault-injection `PBFT_FAULTS` bound to this key (test clusters only).
    pub faults: Option<String>,
}

/// A replica pod.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodView {
    pub id: u32,
    pub name: String,
    pub key_secret: Option<String>,
    pub spec_hash: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// Still there [`STRANDED_AFTER_SECONDS`] after its deletion deadline: no
    /// kubelet confirms it stopped (its node is unreachable or gone).
    pub stranded: bool,
    pub ip: Option<String>,
    /// Restarts of the replica container, and whether the last one was an OOM kill.
    pub restarts: i32,
    pub oom_killed: bool,
}

/// What a replica reported through its admin Status call.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Report {
    pub id: u32,
    pub public_key: String,
    pub member: bool,
    pub active: bool,
    pub ready: bool,
    pub view: u64,
    pub primary: u32,
    pub epoch: u64,
    pub executed: u64,
    pub stable: u64,
    /// Evidence records this replica has made so far (a counter).
    pub evidence_count: u64,
    /// The membership the replica has in force.
    pub membership: Option<Committed>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub committed: Option<Committed>,
    /// Recent epochs, oldest first (includes `committed`).
    pub history: Vec<Committed>,
    pub pending: Option<PendingChange>,
    pub keys: Vec<KeySecret>,
    pub pods: BTreeMap<u32, PodView>,
    pub reports: BTreeMap<u32, Report>,
    /// Member ids that have a PersistentVolumeClaim.
    pub pvcs: Vec<u32>,
    /// Member ids whose quarantine the user approved (Manual mode).
    pub approvals: Vec<u32>,
    /// Offenders: member id -> fingerprint of the key the verified evidence
    /// convicts (from the status' evidence records).
    pub convicted: Vec<(u32, String)>,
}

impl Observed {
    /// The key Secret holding `public_key`.
    pub fn secret_of_key(&self, public_key: &str) -> Option<&KeySecret> {
        self.keys.iter().find(|k| k.public_key == public_key)
    }
}

fn lower(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// Reads the committed membership, the history and the change in flight from
/// the membership ConfigMap. A ConfigMap without members (before bootstrap)
/// gives `None`.
pub fn read_config_map(
    cm: &ConfigMap,
) -> Result<(Option<Committed>, Vec<Committed>, Option<PendingChange>), ModelError> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    let err = |what: &'static str, msg: String| ModelError::ConfigMap { name: name.clone(), what, msg };
    let data = cm.data.clone().unwrap_or_default();
    let committed = match data.get(MEMBERSHIP_KEY) {
        None => None,
        Some(text) => {
            let file: MembershipFile = serde_yaml::from_str(text).map_err(|e| err("membership.yaml", e.to_string()))?;
            if file.members.is_empty() || file.admin_key.trim().is_empty() {
                None
            } else {
                let mut members: Vec<Member> =
                    file.members.iter().map(|m| Member { id: m.id, public_key: lower(&m.public_key) }).collect();
                members.sort();
                Some(Committed { epoch: file.epoch, admin_key: lower(&file.admin_key), members })
            }
        }
    };
    let history = match data.get(HISTORY_KEY) {
        None => committed.iter().cloned().collect(),
        Some(text) => serde_json::from_str(text).map_err(|e| err(HISTORY_KEY, e.to_string()))?,
    };
    let pending = match cm.metadata.annotations.as_ref().and_then(|a| a.get(PENDING_ANNOTATION)) {
        None => None,
        Some(text) => Some(serde_json::from_str(text).map_err(|e| err(PENDING_ANNOTATION, e.to_string()))?),
    };
    Ok((committed, history, pending))
}

/// `history` with `next` appended (replacing an entry of the same epoch),
/// keeping the last [`HISTORY_LEN`].
pub fn push_history(history: &[Committed], next: &Committed) -> Vec<Committed> {
    let mut h: Vec<Committed> = history.iter().filter(|c| c.epoch != next.epoch).cloned().collect();
    h.push(next.clone());
    h.sort_by_key(|c| c.epoch);
    let drop = h.len().saturating_sub(HISTORY_LEN);
    h.drain(..drop);
    h
}

fn member_id(labels: Option<&BTreeMap<String, String>>) -> Option<u32> {
    labels?.get(MEMBER_ID_LABEL)?.parse().ok()
}

/// A member key Secret, or `None` for any other Secret.
pub fn read_key_secret(s: &Secret) -> Option<KeySecret> {
    let id = member_id(s.metadata.labels.as_ref())?;
    let ann = s.metadata.annotations.as_ref()?;
    let public_key = lower(ann.get(PUBLIC_KEY_ANNOTATION)?);
    key_fingerprint(&public_key)?;
    Some(KeySecret {
        name: s.metadata.name.clone()?,
        id,
        public_key,
        used: ann.contains_key(KEY_USED_ANNOTATION),
        faults: ann.get(crate::fault_injection::KEY_FAULTS_ANNOTATION).cloned(),
    })
}

/// A replica pod as seen at `now`, or `None` for a pod without a member id.
pub fn read_pod(p: &Pod, now: &Time) -> Option<PodView> {
    let id = member_id(p.metadata.labels.as_ref())?;
    let spec = p.spec.as_ref();
    let key_secret = spec
        .and_then(|s| s.volumes.as_ref())
        .and_then(|vs| vs.iter().find(|v| v.name == "key"))
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone());
    let status = p.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let container = status.and_then(|s| s.container_statuses.as_ref()).and_then(|cs| cs.first());
    let oom_killed = container
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
    Some(PodView {
        id,
        name: p.metadata.name.clone()?,
        key_secret,
        spec_hash: p.metadata.annotations.as_ref().and_then(|a| a.get(SPEC_HASH_ANNOTATION)).cloned(),
        ready,
        terminating: p.metadata.deletion_timestamp.is_some(),
        stranded: p
            .metadata
            .deletion_timestamp
            .as_ref()
            .is_some_and(|deadline| now.0.as_second() - deadline.0.as_second() >= STRANDED_AFTER_SECONDS),
        ip: status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()),
        restarts: container.map_or(0, |c| c.restart_count),
        oom_killed,
    })
}

/// The member ids in the approval annotation.
pub fn read_approvals(annotations: Option<&BTreeMap<String, String>>) -> Vec<u32> {
    annotations
        .and_then(|a| a.get(APPROVE_ANNOTATION))
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(yaml: &str, pending: Option<&str>) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some("ledger-membership".into());
        c.data = Some(BTreeMap::from([(MEMBERSHIP_KEY.to_string(), yaml.to_string())]));
        if let Some(p) = pending {
            c.metadata.annotations = Some(BTreeMap::from([(PENDING_ANNOTATION.to_string(), p.to_string())]));
        }
        c
    }

    #[test]
    fn reads_the_committed_membership_and_the_pending_change() {
        let key = "AB".repeat(32);
        let yaml = format!("epoch: 3\nadmin_key: {}\nmembers:\n- {{id: 1, public_key: {key}, address: a:1}}\n- {{id: 0, public_key: {key}, address: b:1}}\n", "cd".repeat(32));
        let pending = r#"{"fromEpoch":3,"members":[],"reason":"ScaleDown","subject":1}"#;
        let (c, h, p) = read_config_map(&cm(&yaml, Some(pending))).expect("reads");
        let c = c.expect("committed");
        assert_eq!(c.epoch, 3);
        assert_eq!(c.members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![0, 1], "sorted");
        assert_eq!(c.members[0].public_key, "ab".repeat(32), "lower-cased");
        assert_eq!(h, vec![c]);
        assert_eq!(p.map(|p| p.reason), Some(ChangeReason::ScaleDown));
    }

    #[test]
    fn before_bootstrap_there_is_no_membership_and_garbage_is_an_error() {
        let (c, _, _) = read_config_map(&cm("# waiting\nepoch: 0\nadmin_key: ''\nmembers: []\n", None)).expect("reads");
        assert!(c.is_none());
        let e = read_config_map(&cm("epoch: [", None)).expect_err("garbage");
        assert!(e.to_string().contains("membership.yaml"), "{e}");
        let e = read_config_map(&cm("epoch: 0\nadmin_key: ''\nmembers: []\n", Some("{"))).expect_err("bad annotation");
        assert!(e.to_string().contains(PENDING_ANNOTATION), "{e}");
    }

    #[test]
    fn history_keeps_the_last_epochs() {
        let c = |epoch| Committed { epoch, admin_key: String::new(), members: vec![] };
        let mut h = vec![];
        for e in 0..40 {
            h = push_history(&h, &c(e));
        }
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.first().map(|c| c.epoch), Some(40 - HISTORY_LEN as u64));
        assert_eq!(push_history(&h, &c(39)).len(), HISTORY_LEN, "same epoch replaced");
    }

    #[test]
    fn quorum_matches_the_replica() {
        for (n, q) in [(4, 3), (5, 4), (6, 4), (7, 5), (10, 7), (22, 15)] {
            assert_eq!(quorum(n), q, "n={n}");
        }
    }

    #[test]
    fn a_pod_past_its_deletion_deadline_is_stranded() {
        let at = |s: i64| Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + s).expect("in range"));
        let mut p = Pod::default();
        p.metadata.name = Some("ledger-2".into());
        p.metadata.labels = Some(BTreeMap::from([(MEMBER_ID_LABEL.to_string(), "2".to_string())]));
        let view = read_pod(&p, &at(0)).expect("a replica pod");
        assert!(!view.terminating && !view.stranded);
        p.metadata.deletion_timestamp = Some(at(0));
        let view = read_pod(&p, &at(STRANDED_AFTER_SECONDS - 1)).expect("a replica pod");
        assert!(view.terminating && !view.stranded, "still within the kubelet's time to confirm");
        let view = read_pod(&p, &at(STRANDED_AFTER_SECONDS)).expect("a replica pod");
        assert!(view.stranded);
        let view = read_pod(&p, &at(-30)).expect("a replica pod");
        assert!(view.terminating && !view.stranded, "grace period still running");
    }

    #[test]
    fn approvals() {
        let a = BTreeMap::from([(APPROVE_ANNOTATION.to_string(), "2, 5,x".to_string())]);
        assert_eq!(read_approvals(Some(&a)), vec![2, 5]);
        assert!(read_approvals(None).is_empty());
    }
}
