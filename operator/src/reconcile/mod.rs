//! The reconcile loop: read → validate → build → apply → observe → plan →
//! act → status. Only this module (and [`replicas`]) does I/O; [`model`],
//! [`plan`], [`status`] and [`evidence`] are pure and unit-tested.
//!
//! Each ConsensusCluster is reconciled on its own (the controller runs them
//! concurrently), so one broken cluster cannot stall the others; an invalid
//! spec is reported once (status and an Event) and waits for a change.

pub mod evidence;
pub mod evidence_watch;
pub mod model;
pub mod plan;
pub mod replicas;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use crate::build::secret::{
    admin_key_secret_name, build_admin_key_secret, build_member_key_secret, KEY_FILE, KEY_USED_ANNOTATION,
};
use crate::build::{
    self, build_all, config_map::build_membership_config_map, membership_config_map_name_of, peer_address, pod_name,
    pvc_name, MembershipInput, ObservedMember, MANAGED_BY,
};
use crate::crd::{ConsensusCluster, ConsensusClusterSpec};
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::validate::{validate, OperatorDefaults, ValidatedCluster};
use model::{ChangeReason, Committed, Member, Observed, PendingChange, Report, HISTORY_KEY, PENDING_ANNOTATION};
use pbft::crypto::Keypair;
use plan::{ChangeKind, Step};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "pbft-operator";
/// Annotation of the membership ConfigMap with the last spec that passed
/// validation (the transition rules compare against it).
pub const ACCEPTED_SPEC_ANNOTATION: &str = "consensus.pbft.dev/accepted-spec";

/// Why a reconcile failed (it is retried with backoff; each becomes an Event).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error("the ConsensusCluster has no namespace")]
    NoNamespace,
    #[error("admin key Secret {name}: {msg}")]
    AdminKey { name: String, msg: String },
    #[error("membership change: {0}")]
    Submit(String),
    #[error("serializing {what}: {msg}")]
    Serialize { what: &'static str, msg: String },
}

impl ReconcileError {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "ApiError",
            ReconcileError::Build(_) => "BuildFailed",
            ReconcileError::Model(_) => "BadMembershipRecord",
            ReconcileError::NoNamespace => "NoNamespace",
            ReconcileError::AdminKey { .. } => "AdminKeyUnusable",
            ReconcileError::Submit(_) => "MembershipChangeFailed",
            ReconcileError::Serialize { .. } => "InternalError",
        }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Kube { what, source }
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub defaults: OperatorDefaults,
    pub events: EventPublisher,
    pub metrics: Arc<Metrics>,
    /// Polls replicas for new evidence between reconciles.
    pub evidence_watch: Arc<evidence_watch::EvidenceWatch>,
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn new_key() -> Keypair {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    Keypair::from_secret(secret)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The reconciler's view of one cluster's API objects.
struct Apis {
    pods: Api<Pod>,
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
    pvcs: Api<PersistentVolumeClaim>,
    ccs: Api<ConsensusCluster>,
}

impl Apis {
    fn new(client: &kube::Client, ns: &str) -> Apis {
        Apis {
            pods: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
            config_maps: Api::namespaced(client.clone(), ns),
            pvcs: Api::namespaced(client.clone(), ns),
            ccs: Api::namespaced(client.clone(), ns),
        }
    }
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, ReconcileError>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(kube_err(format!("applying {} {name}", K::kind(&Default::default()))))
}

async fn publish(ctx: &Context, cc: &ConsensusCluster, type_: EventType, reason: &str, action: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.events.publish(&ev, &cc.object_ref(&())).await {
        tracing::warn!(cluster = %cc.name_any(), "publishing event {reason}: {e}");
    }
}

/// Reconciles one ConsensusCluster.
pub async fn reconcile(cc: Arc<ConsensusCluster>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_inner(&cc, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed(), result.as_ref().err().map(ReconcileError::reason));
    result
}

/// Retry policy: back off, and say why in an Event.
pub fn error_policy(cc: Arc<ConsensusCluster>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    tracing::warn!(cluster = %cc.name_any(), namespace = ?cc.namespace(), reason = err.reason(), "reconcile failed: {err}");
    let (ctx2, cc2, reason, note) = (ctx.clone(), cc.clone(), err.reason(), err.to_string());
    tokio::spawn(async move { publish(&ctx2, &cc2, EventType::Warning, reason, "Reconcile", note).await });
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile_inner(cc: &ConsensusCluster, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = cc.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = cc.name_any();
    let apis = Apis::new(&ctx.client, &ns);
    let previous_status = cc.status.clone().unwrap_or_default();
    let generation = cc.metadata.generation;
    let cm_name = membership_config_map_name_of(&name);
    let cm = apis.config_maps.get_opt(&cm_name).await.map_err(kube_err(format!("reading ConfigMap {cm_name}")))?;
    let accepted: Option<ConsensusClusterSpec> = cm
        .as_ref()
        .and_then(|c| c.metadata.annotations.as_ref())
        .and_then(|a| a.get(ACCEPTED_SPEC_ANNOTATION))
        .and_then(|s| serde_json::from_str(s).ok());

    // Validate.
    let cluster = match validate(cc, accepted.as_ref(), &ctx.defaults) {
        Ok(c) => c,
        Err(e) => {
            let reason = e.reason();
            let message = e.to_string();
            let already = previous_status.phase == Some(crate::crd::Phase::Invalid)
                && previous_status.observed_generation == generation;
            let st = status::invalid(&previous_status, generation, reason, message.clone(), &now());
            patch_status(&apis.ccs, &name, &st).await?;
            if !already {
                publish(ctx, cc, EventType::Warning, reason, "Validate", message).await;
            }
            return Ok(Action::await_change());
        }
    };

    // The objects that do not depend on the membership.
    let (committed, history, pending) = match &cm {
        Some(c) => model::read_config_map(c)?,
        None => (None, vec![], None),
    };
    let objects = build_all(&cluster, &membership_input(committed.as_ref(), &BTreeMap::new()))?;
    let client = &ctx.client;
    apply(&Api::namespaced(client.clone(), &ns), &objects.service_account).await?;
    apply(&Api::namespaced(client.clone(), &ns), &objects.peer_service).await?;
    apply(&Api::namespaced(client.clone(), &ns), &objects.client_service).await?;
    apply(&Api::namespaced(client.clone(), &ns), &objects.pdb).await?;
    if let Some(np) = &objects.network_policy {
        apply(&Api::namespaced(client.clone(), &ns), np).await?;
    }
    for pvc in &objects.pvcs {
        if apis
            .pvcs
            .get_opt(pvc.metadata.name.as_deref().unwrap_or_default())
            .await
            .map_err(kube_err("reading PVC"))?
            .is_none()
        {
            apis.pvcs.create(&PostParams::default(), pvc).await.map_err(kube_err("creating PVC"))?;
        }
    }

    // Observe.
    let mut observed = observe(&apis, &name, committed, history, pending, cc).await?;
    let mut records = previous_status.evidence.clone();
    // Evidence against a key already convicted of the same is not verified
    // again; evidence of the epoch being put in force waits for it.
    let reported = observe_replicas(&mut observed).await;
    ctx.evidence_watch.observed(
        ObjectRef::from_obj(cc),
        observed.pods.values().filter(|p| !p.terminating).filter_map(|p| p.ip.clone()).collect(),
        observed.reports.values().map(|r| r.evidence_count).sum(),
    );
    let raw: Vec<(u32, Vec<u8>)> = reported
        .into_iter()
        .filter(|(_, bytes)| !evidence::already_convicted(&records, bytes, &observed.history))
        .filter(|(reporter, bytes)| {
            let wait = evidence::awaits_next_epoch(bytes, &observed.history);
            if wait {
                tracing::debug!(cluster = %name, reporter, "evidence of the next epoch: examined once the operator records it");
            }
            !wait
        })
        .collect();
    let findings: Vec<evidence::Finding> =
        raw.iter().map(|(reporter, bytes)| evidence::examine(*reporter, bytes, &observed.history)).collect();
    let new = evidence::merge(&mut records, &findings, |id| (id != u32::MAX).then(|| pod_name(&cluster, id)), now());
    for f in &new {
        let encoded = findings.iter().position(|x| x.digest == f.digest).map(|i| raw[i].1.as_slice());
        record_finding(ctx, cc, f, encoded).await;
    }
    observed.convicted = evidence::convicted(&records);

    // Plan, report, act.
    let plan = plan::plan(&cluster, &observed)?;
    let st = status::compute(&cluster, generation, &observed, &plan, &previous_status, records, &now());
    patch_status(&apis.ccs, &name, &st).await?;
    ctx.metrics.observe_cluster(&ns, &name, &st);
    for w in &plan.waiting {
        tracing::info!(cluster = %name, namespace = %ns, "waiting: {w}");
    }
    let busy = !plan.steps.is_empty() || observed.pending.is_some();
    let writes_membership = plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::Bootstrap { .. } | Step::Adopt(_) | Step::ClearPending | Step::Begin { .. }));
    for step in plan.steps {
        act(ctx, cc, &cluster, &apis, &observed, step).await?;
    }
    // Keep the last accepted spec next to the membership (transition rules);
    // the steps above already wrote it when they wrote the membership.
    if accepted.as_ref() != Some(&cc.spec) && observed.committed.is_some() && !writes_membership {
        write_membership(&apis, &cluster, observed.committed.as_ref(), &observed.history, observed.pending.as_ref())
            .await?;
    }
    let healthy = st.ready_replicas == st.replicas && st.replicas > 0;
    Ok(Action::requeue(Duration::from_secs(if busy || !healthy { 3 } else { 15 })))
}

async fn patch_status(
    api: &Api<ConsensusCluster>,
    name: &str,
    st: &crate::crd::ConsensusClusterStatus,
) -> Result<(), ReconcileError> {
    let patch = serde_json::json!({ "status": st });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err(format!("patching status of {name}")))?;
    Ok(())
}

/// Reads pods, key Secrets, PVCs and the approval annotation.
async fn observe(
    apis: &Apis,
    name: &str,
    committed: Option<Committed>,
    history: Vec<Committed>,
    pending: Option<PendingChange>,
    cc: &ConsensusCluster,
) -> Result<Observed, ReconcileError> {
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGED_BY}");
    let lp = ListParams::default().labels(&selector);
    let pods = apis.pods.list(&lp).await.map_err(kube_err("listing pods"))?;
    let secrets = apis.secrets.list(&lp).await.map_err(kube_err("listing secrets"))?;
    let pvcs = apis.pvcs.list(&lp).await.map_err(kube_err("listing PVCs"))?;
    let seen_at = now();
    let owned = |o: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        o.iter().any(|r| Some(&r.uid) == cc.metadata.uid.as_ref())
    };
    Ok(Observed {
        committed,
        history,
        pending,
        keys: secrets.items.iter().filter(|s| owned(s.owner_references())).filter_map(model::read_key_secret).collect(),
        pods: pods
            .items
            .iter()
            .filter(|p| owned(p.owner_references()))
            .filter_map(|p| model::read_pod(p, &seen_at))
            .map(|p| (p.id, p))
            .collect(),
        reports: BTreeMap::new(),
        pvcs: pvcs
            .items
            .iter()
            .filter(|p| owned(p.owner_references()))
            .filter_map(|p| p.labels().get(build::MEMBER_ID_LABEL)?.parse().ok())
            .collect(),
        approvals: model::read_approvals(cc.metadata.annotations.as_ref()),
        convicted: vec![],
    })
}

/// Asks every running replica for its status and evidence; returns the evidence with its reporter.
async fn observe_replicas(o: &mut Observed) -> Vec<(u32, Vec<u8>)> {
    let targets: Vec<(u32, String)> =
        o.pods.values().filter(|p| !p.terminating).filter_map(|p| Some((p.id, p.ip.clone()?))).collect();
    let results = join_all(targets.iter().map(|(id, ip)| async move { (*id, replicas::observe(ip).await) })).await;
    let mut raw = vec![];
    for (pod_id, r) in results {
        match r {
            Ok((report, ev)) => {
                // A replica answers for the id in its membership; the pod label must agree.
                if report.member && report.id != pod_id {
                    tracing::warn!(pod_id, reported = report.id, "replica reports another id than its pod; ignored");
                    continue;
                }
                raw.extend(ev.into_iter().map(|b| (pod_id, b)));
                o.reports.insert(pod_id, Report { id: pod_id, ..report });
            }
            Err(e) => tracing::debug!(pod_id, "replica not reachable: {e}"),
        }
    }
    raw
}

/// Logs (forensic record, with both signed messages) and publishes an Event for new evidence.
async fn record_finding(ctx: &Context, cc: &ConsensusCluster, f: &evidence::Finding, raw: Option<&[u8]>) {
    let encoded = raw.map(hex::encode).unwrap_or_default();
    match &f.verdict {
        Ok(key) => {
            ctx.metrics.evidence(&cc.namespace().unwrap_or_default(), &cc.name_any(), &f.kind, true);
            tracing::warn!(target: "forensics", cluster = %cc.name_any(), kind = %f.kind, offender = f.offender, epoch = f.epoch,
                reporter = f.reporter, digest = %f.digest, offender_key = %key, evidence = %encoded, "verified evidence");
            publish(
                ctx,
                cc,
                EventType::Warning,
                "EvidenceVerified",
                "VerifyEvidence",
                format!(
                    "member {} ({}) proven faulty: {} in epoch {}, reported by member {}, key {key}, evidence {}",
                    f.offender,
                    cc.name_any(),
                    f.kind,
                    f.epoch,
                    f.reporter,
                    f.digest
                ),
            )
            .await;
        }
        Err(why) => {
            ctx.metrics.evidence(&cc.namespace().unwrap_or_default(), &cc.name_any(), &f.kind, false);
            tracing::warn!(target: "forensics", cluster = %cc.name_any(), kind = %f.kind, offender = f.offender, epoch = f.epoch,
                reporter = f.reporter, digest = %f.digest, evidence = %encoded, "evidence does not verify: {why}");
            publish(
                ctx,
                cc,
                EventType::Warning,
                "EvidenceRejected",
                "VerifyEvidence",
                format!(
                "evidence {} against member {} reported by member {} does not verify ({why}); nobody is quarantined",
                f.digest, f.offender, f.reporter),
            )
            .await;
        }
    }
}

/// The faults the cluster's fault-injection annotation asks for, when the
/// operator allows fault injection and the request is valid; each case
/// that is not honoured is a Warning Event (read once, at bootstrap).
async fn requested_faults(ctx: &Context, cc: &ConsensusCluster, cluster: &ValidatedCluster) -> BTreeMap<u32, String> {
    let Some(request) = cc.annotations().get(crate::fault_injection::REQUEST_ANNOTATION) else {
        return BTreeMap::new();
    };
    let (reason, note, faults) =
        match (&cluster.fault_injection_image, crate::fault_injection::parse_request(request, cluster.replicas)) {
            (None, _) => (
                "FaultInjectionRefused",
                format!(
                    "annotation {} ignored: the operator runs without --allow-fault-injection; every member is honest",
                    crate::fault_injection::REQUEST_ANNOTATION
                ),
                BTreeMap::new(),
            ),
            (Some(_), Err(e)) => ("FaultInjectionInvalid", format!("{e}; every member is honest"), BTreeMap::new()),
            (Some(image), Ok(faults)) => (
                "FaultInjection",
                format!(
                    "TEST ONLY: members {} run {image} with PBFT_FAULTS {} (their first keys only)",
                    faults.keys().map(u32::to_string).collect::<Vec<_>>().join(", "),
                    serde_json::to_string(&faults).unwrap_or_default()
                ),
                faults,
            ),
        };
    tracing::warn!(cluster = %cluster.name, namespace = %cluster.namespace, reason, "{note}");
    publish(ctx, cc, EventType::Warning, reason, "Bootstrap", note).await;
    faults
}

/// The builder's membership input for `committed` (and the key Secret of each member).
fn membership_input(committed: Option<&Committed>, secrets: &BTreeMap<String, String>) -> MembershipInput {
    match committed {
        None => MembershipInput::default(),
        Some(c) => MembershipInput {
            epoch: c.epoch,
            admin_key: Some(c.admin_key.clone()),
            members: c
                .members
                .iter()
                .map(|m| ObservedMember {
                    id: m.id,
                    public_key: Some(m.public_key.clone()),
                    key_secret: secrets.get(&m.public_key).cloned(),
                })
                .collect(),
        },
    }
}

/// Writes the membership ConfigMap: the committed membership (the replicas'
/// file), the recent epochs, the change in flight and the accepted spec.
async fn write_membership(
    apis: &Apis,
    cluster: &ValidatedCluster,
    committed: Option<&Committed>,
    history: &[Committed],
    pending: Option<&PendingChange>,
) -> Result<(), ReconcileError> {
    let mut cm = build_membership_config_map(cluster, &membership_input(committed, &BTreeMap::new()))?;
    let ser = |what: &'static str, e: serde_json::Error| ReconcileError::Serialize { what, msg: e.to_string() };
    let history = match committed {
        Some(c) => model::push_history(history, c),
        None => history.to_vec(),
    };
    cm.data
        .get_or_insert_with(BTreeMap::new)
        .insert(HISTORY_KEY.into(), serde_json::to_string(&history).map_err(|e| ser("history", e))?);
    let ann = cm.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(ACCEPTED_SPEC_ANNOTATION.into(), serde_json::to_string(&cluster.spec).map_err(|e| ser("spec", e))?);
    if let Some(p) = pending {
        ann.insert(PENDING_ANNOTATION.into(), serde_json::to_string(p).map_err(|e| ser("pending change", e))?);
    }
    apply(&apis.config_maps, &cm).await?;
    Ok(())
}

/// The admin key, created on first use.
async fn admin_key(apis: &Apis, cluster: &ValidatedCluster) -> Result<Keypair, ReconcileError> {
    let name = admin_key_secret_name(cluster);
    let bad = |msg: &str| ReconcileError::AdminKey { name: name.clone(), msg: msg.into() };
    if let Some(s) = apis.secrets.get_opt(&name).await.map_err(kube_err(format!("reading Secret {name}")))? {
        let data = s.data.and_then(|mut d| d.remove(KEY_FILE)).ok_or_else(|| bad("has no replica.key"))?;
        return pbft::server::keys::parse_key(&data.0).ok_or_else(|| bad("replica.key is not 64 hex digits"));
    }
    let key = new_key();
    let secret = build_admin_key_secret(cluster, &hex::encode(key.secret_bytes()), &hex::encode(key.public_bytes()));
    match apis.secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(key),
        Err(e) if is_conflict(&e) => Err(bad("created concurrently; retrying")),
        Err(e) => Err(kube_err(format!("creating Secret {name}"))(e)),
    }
}

/// A new member key, stored in its Secret (with the fault-injection faults
/// bound to it, if any); returns its public key (hex).
async fn create_member_key(
    apis: &Apis,
    cluster: &ValidatedCluster,
    id: u32,
    faults: Option<&str>,
) -> Result<String, ReconcileError> {
    let key = new_key();
    let public = hex::encode(key.public_bytes());
    let secret = build_member_key_secret(cluster, id, &hex::encode(key.secret_bytes()), &public, faults)?;
    apis.secrets
        .create(&PostParams::default(), &secret)
        .await
        .map_err(kube_err(format!("creating key Secret of member {id}")))?;
    Ok(public)
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    delete_with(api, name, &DeleteParams::default()).await
}

/// Deletes `name` with `params`; an object already gone is no error.
async fn delete_with<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(kube_err(format!("deleting {name}"))(e)),
    }
}

async fn submit(
    ctx: &Context,
    apis: &Apis,
    cluster: &ValidatedCluster,
    o: &Observed,
    committed: &Committed,
    change: &PendingChange,
) -> Result<(), ReconcileError> {
    let admin = admin_key(apis, cluster).await?;
    let ips: Vec<(u32, String)> = committed
        .members
        .iter()
        .filter_map(|m| Some((m.id, o.pods.get(&m.id).filter(|p| !p.terminating)?.ip.clone()?)))
        .collect();
    let t0 = Instant::now();
    replicas::submit_change(committed, &ips, &admin, change, |id| peer_address(cluster, id))
        .await
        .map_err(ReconcileError::Submit)?;
    tracing::info!(cluster = %cluster.name, subject = change.subject, reason = ?change.reason, from_epoch = change.from_epoch,
        ms = t0.elapsed().as_millis() as u64, "membership change ordered");
    ctx.metrics.membership_change(change.reason);
    Ok(())
}

async fn act(
    ctx: &Context,
    cc: &ConsensusCluster,
    cluster: &ValidatedCluster,
    apis: &Apis,
    o: &Observed,
    step: Step,
) -> Result<(), ReconcileError> {
    tracing::info!(cluster = %cluster.name, namespace = %cluster.namespace, ?step, "step");
    match step {
        Step::Bootstrap { ids } => {
            let admin = admin_key(apis, cluster).await?;
            let faults = requested_faults(ctx, cc, cluster).await;
            let mut members = vec![];
            for id in ids {
                // Reuse a key left by an interrupted bootstrap (never used: no pod exists before the membership).
                let public = match o.keys.iter().find(|k| k.id == id && !k.used) {
                    Some(k) => k.public_key.clone(),
                    None => create_member_key(apis, cluster, id, faults.get(&id).map(String::as_str)).await?,
                };
                members.push(Member { id, public_key: public });
            }
            members.sort();
            let first = Committed { epoch: 0, admin_key: hex::encode(admin.public_bytes()), members };
            write_membership(apis, cluster, Some(&first), &[], None).await?;
            publish(
                ctx,
                cc,
                EventType::Normal,
                "MembershipCreated",
                "Bootstrap",
                format!("generated {} member keys and the admin key; epoch 0", first.n()),
            )
            .await;
        }
        Step::Adopt(next) => {
            write_membership(apis, cluster, Some(&next), &o.history, None).await?;
            publish(
                ctx,
                cc,
                EventType::Normal,
                "EpochChanged",
                "AdoptMembership",
                format!("membership epoch {} is in force with {} members", next.epoch, next.n()),
            )
            .await;
        }
        Step::ClearPending => write_membership(apis, cluster, o.committed.as_ref(), &o.history, None).await?,
        Step::Submit(change) => {
            if let Some(c) = &o.committed {
                submit(ctx, apis, cluster, o, c, &change).await?;
            }
        }
        Step::Begin { kind, reason } => {
            let Some(committed) = &o.committed else { return Ok(()) };
            let new_key = if kind.needs_key() {
                Some(create_member_key(apis, cluster, kind.subject(), None).await?)
            } else {
                None
            };
            let change = PendingChange {
                from_epoch: committed.epoch,
                members: plan::next_members(committed, kind, new_key.as_deref()),
                reason,
                subject: kind.subject(),
            };
            write_membership(apis, cluster, Some(committed), &o.history, Some(&change)).await?;
            let (type_, what) = match (kind, reason) {
                (_, ChangeReason::Quarantine) => (EventType::Warning, "Quarantining"),
                (ChangeKind::Add(_), _) => (EventType::Normal, "AddingMember"),
                (ChangeKind::Remove(_), _) => (EventType::Normal, "RemovingMember"),
                (ChangeKind::Replace(_), _) => (EventType::Normal, "ReplacingMember"),
            };
            publish(
                ctx,
                cc,
                type_,
                what,
                "MembershipChange",
                format!(
                    "member {} ({reason:?}): membership change from epoch {} to {} members{}",
                    kind.subject(),
                    committed.epoch,
                    change.members.len(),
                    new_key
                        .as_deref()
                        .and_then(build::key_fingerprint)
                        .map(|fp| format!(", new key {fp}"))
                        .unwrap_or_default()
                ),
            )
            .await;
            submit(ctx, apis, cluster, o, committed, &change).await?;
        }
        Step::CreatePod { id, key_secret } => {
            // Mark the key used before the pod exists: a key is never handed to two pods.
            let mark =
                serde_json::json!({ "metadata": { "annotations": { KEY_USED_ANNOTATION: pod_name(cluster, id) } } });
            apis.secrets
                .patch(&key_secret, &PatchParams::default(), &Patch::Merge(&mark))
                .await
                .map_err(kube_err(format!("marking key Secret {key_secret} used")))?;
            let faults = o.keys.iter().find(|k| k.name == key_secret).and_then(|k| k.faults.as_deref());
            let pod = build::pod::build_pod(cluster, id, &key_secret, faults)?;
            match apis.pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(kube_err(format!("creating pod {}", pod_name(cluster, id)))(e)),
            }
        }
        Step::DeletePod { name, why } => {
            delete(&apis.pods, &name).await?;
            publish(ctx, cc, EventType::Normal, "PodDeleted", "DeletePod", format!("pod {name}: {why}")).await;
        }
        Step::ForceDeletePod { name, why } => {
            // Grace period 0 removes the object without the kubelet's word; the
            // process, if its node still runs it, holds a key no member accepts.
            delete_with(&apis.pods, &name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                .await?;
            publish(ctx, cc, EventType::Warning, "PodForceDeleted", "ForceDeletePod", format!("pod {name}: {why}"))
                .await;
        }
        Step::DeletePvc { id } => delete(&apis.pvcs, &pvc_name(cluster, id)).await?,
        Step::DeleteSecret { name } => delete(&apis.secrets, &name).await?,
    }
    Ok(())
}
