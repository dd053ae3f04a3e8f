//! The Kubernetes side of the scenarios: namespaces, ConsensusClusters and
//! their status, replica pods, Events, and what objects a cluster left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::ResourceExt;

use pbft_operator::crd::{ConsensusCluster, MemberState};

use crate::report::{kube_err, Error, Result};

/// Label on every namespace the suite creates.
pub const E2E_LABEL: &str = "pbft.dev/e2e";

/// Creates namespace `ns` (labelled) unless it exists.
pub async fn ensure_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await.map_err(kube_err(format!("reading namespace {ns}")))?.is_some() {
        return Ok(());
    }
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.into());
    n.metadata.labels = Some(BTreeMap::from([(E2E_LABEL.to_string(), "true".to_string())]));
    api.create(&PostParams::default(), &n).await.map_err(kube_err(format!("creating namespace {ns}")))?;
    Ok(())
}

/// Deletes namespace `ns` and waits (up to `timeout`) until it is gone.
pub async fn delete_namespace(client: &kube::Client, ns: &str, timeout: Duration) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.delete(ns, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(kube_err(format!("deleting namespace {ns}"))(e)),
    }
    wait_for(&format!("namespace {ns} to be deleted"), timeout, Duration::from_secs(1), || async {
        Ok(api.get_opt(ns).await.map_err(kube_err("reading namespace"))?.is_none().then_some(()))
    })
    .await
    .map(|_| ())
}

/// Polls `probe` every `every` until it gives `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut probe: F) -> Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let t0 = Instant::now();
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok((v, t0.elapsed())),
            Ok(None) => {}
            // Transient API errors do not end a wait.
            Err(Error::Kube { .. }) => {}
            Err(e) => return Err(e),
        }
        if t0.elapsed() >= timeout {
            return Err(Error::Timeout { what: what.into(), secs: t0.elapsed().as_secs_f64() });
        }
        tokio::time::sleep(every).await;
    }
}

fn cc_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("consensus.pbft.dev", "v1alpha1", "ConsensusCluster");
    ApiResource::from_gvk_with_plural(&gvk, "consensusclusters")
}

/// The dynamic API of ConsensusClusters (for CRs the typed struct cannot express: invalid ones).
pub fn cc_dynamic(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &cc_resource())
}

/// Every ConsensusCluster, in any namespace.
pub async fn all_clusters(client: &kube::Client) -> Result<Vec<String>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &cc_resource());
    let list = api.list(&ListParams::default()).await.map_err(kube_err("listing ConsensusClusters"))?;
    Ok(list.items.iter().map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())).collect())
}

/// Submits a ConsensusCluster from YAML (a full manifest) as `kubectl apply`
/// would (server-side apply, strict field validation), as a dry run: the
/// apiserver checks everything, nothing is created. Its refusal comes back as
/// `Err(message)`.
pub async fn dry_run_cc_yaml(client: &kube::Client, ns: &str, yaml: &str) -> Result<std::result::Result<(), String>> {
    let obj: DynamicObject = serde_yaml::from_str(yaml).map_err(|e| Error::Other(format!("test manifest: {e}")))?;
    let name = obj.metadata.name.clone().unwrap_or_default();
    let mut pp = PatchParams::apply("pbft-e2e").validation_strict();
    pp.dry_run = true;
    match cc_dynamic(client, ns).patch(&name, &pp, &Patch::Apply(&obj)).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(s)) => Ok(Err(s.message.clone())),
        Err(e) => Err(kube_err("creating a ConsensusCluster")(e)),
    }
}

/// Merge-patches a ConsensusCluster; the apiserver's refusal comes back as `Err(message)`.
pub async fn patch_cc(
    client: &kube::Client,
    ns: &str,
    name: &str,
    patch: serde_json::Value,
) -> Result<std::result::Result<(), String>> {
    let api: Api<ConsensusCluster> = Api::namespaced(client.clone(), ns);
    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(s)) => Ok(Err(s.message.clone())),
        Err(e) => Err(kube_err(format!("patching {ns}/{name}"))(e)),
    }
}

/// The ConsensusCluster `ns/name`.
pub async fn get_cc(client: &kube::Client, ns: &str, name: &str) -> Result<ConsensusCluster> {
    let api: Api<ConsensusCluster> = Api::namespaced(client.clone(), ns);
    api.get(name).await.map_err(kube_err(format!("reading {ns}/{name}")))
}

/// Whether `cc` is Available with every member of its spec healthy and its
/// latest generation observed.
pub fn fully_available(cc: &ConsensusCluster) -> bool {
    let Some(s) = &cc.status else { return false };
    let n = 3 * cc.spec.fault_tolerance + 1;
    s.observed_generation == cc.metadata.generation
        && s.replicas == n
        && s.ready_replicas == n
        && s.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True")
        && s.members.iter().filter(|m| m.state == MemberState::Active).count() == n as usize
}

/// A one-line summary of a cluster's status, for progress and failure messages.
pub fn describe(cc: &ConsensusCluster) -> String {
    let Some(s) = &cc.status else { return "no status".into() };
    let conds: Vec<String> = s.conditions.iter().map(|c| format!("{}={}({})", c.type_, c.status, c.reason)).collect();
    let members: Vec<String> = s.members.iter().map(|m| format!("{}:{:?}", m.id, m.state)).collect();
    format!(
        "phase={:?} epoch={:?} view={:?} ready={}/{} members=[{}] conditions=[{}]",
        s.phase,
        s.epoch,
        s.view,
        s.ready_replicas,
        s.replicas,
        members.join(" "),
        conds.join(" ")
    )
}

/// Waits until `ns/name` satisfies `pred`; returns it and the time it took.
pub async fn wait_cc(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&ConsensusCluster) -> bool,
) -> Result<(ConsensusCluster, Duration)> {
    let t0 = Instant::now();
    let mut last: String;
    loop {
        match get_cc(client, ns, name).await {
            Ok(cc) if pred(&cc) => return Ok((cc, t0.elapsed())),
            Ok(cc) => last = describe(&cc),
            Err(e) => last = e.to_string(),
        }
        if t0.elapsed() >= timeout {
            return Err(Error::Timeout { what: format!("{what} (last: {last})"), secs: t0.elapsed().as_secs_f64() });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The replica pods of cluster `name` (terminating ones included).
pub async fn replica_pods(client: &kube::Client, ns: &str, name: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp =
        ListParams::default().labels(&format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=replica"));
    Ok(api.list(&lp).await.map_err(kube_err("listing replica pods"))?.items)
}

/// A pod's member id label.
pub fn member_id(p: &Pod) -> Option<u32> {
    p.labels().get("consensus.pbft.dev/member-id")?.parse().ok()
}

/// Whether a pod is Ready and not terminating.
pub fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Restarts of the replica container and whether any ended in an OOM kill.
pub fn restarts(p: &Pod) -> (i32, bool) {
    let Some(cs) = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()) else { return (0, false) };
    let restarts = cs.iter().map(|c| c.restart_count).sum();
    let oom = cs.iter().any(|c| {
        let t = |s: Option<&k8s_openapi::api::core::v1::ContainerState>| {
            s.and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
        };
        t(c.last_state.as_ref()) || t(c.state.as_ref())
    });
    (restarts, oom)
}

/// Deletes a pod (no grace beyond the default, not waiting).
pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str, grace: Option<u32>) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams { grace_period_seconds: grace, ..Default::default() };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err(format!("deleting pod {name}"))(e)),
    }
}

/// Events about ConsensusCluster `name`: (type, reason, message).
pub async fn cc_events(client: &kube::Client, ns: &str, name: &str) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name},involvedObject.kind=ConsensusCluster"));
    let mut evs = api.list(&lp).await.map_err(kube_err("listing events"))?.items;
    evs.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    Ok(evs
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Namespaced objects left in `ns` by label selector `selector`, by kind:
/// Pods, Services, Secrets, ConfigMaps, PVCs, PDBs, ServiceAccounts, NetworkPolicies.
pub async fn leftovers(client: &kube::Client, ns: &str, selector: &str) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let lp = ListParams::default().labels(selector);
    let mut out = vec![];
    macro_rules! list {
        ($t:ty, $kind:literal) => {{
            let api: Api<$t> = Api::namespaced(client.clone(), ns);
            for o in api.list(&lp).await.map_err(kube_err(concat!("listing ", $kind)))?.items {
                out.push(format!("{}/{}", $kind, o.name_any()));
            }
        }};
    }
    list!(Pod, "Pod");
    list!(Service, "Service");
    list!(Secret, "Secret");
    list!(ConfigMap, "ConfigMap");
    list!(PersistentVolumeClaim, "PersistentVolumeClaim");
    list!(PodDisruptionBudget, "PodDisruptionBudget");
    list!(ServiceAccount, "ServiceAccount");
    list!(NetworkPolicy, "NetworkPolicy");
    Ok(out)
}
