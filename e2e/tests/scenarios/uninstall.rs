//! Uninstalling leaves nothing behind, and the plain-manifest install path.
//!
//! Policy (documented in charts/pbft-operator/README.md): deleting a
//! ConsensusCluster deletes every object it owned (owner references), its
//! PersistentVolumeClaims and key Secrets included; `helm uninstall` removes
//! every object of the release except the CRD (`crds.keep`, so an uninstall
//! cannot delete every cluster's data) and the leader Lease the operator
//! created at run time (it lives in the release namespace and goes with it);
//! `kubectl delete -f deploy/pbft-operator.yaml` removes everything,
//! namespace and CRD included.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use pbft_e2e::k8s;
use pbft_e2e::report::{kube_err, Result, Scenario};
use pbft_e2e::Ctx;

use super::cluster::write_through_service_read_everywhere;
use super::install::RELEASE;
use super::{spec, BASIC, BASIC_NS};

const CRD: &str = "consensusclusters.consensus.pbft.dev";

/// Deletes `ns/name` and waits until nothing it owned is left.
async fn delete_cluster(ctx: &Ctx, s: &mut Scenario, ns: &str, name: &str) -> Result<()> {
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by=pbft-operator");
    let before = k8s::leftovers(&ctx.client, ns, &selector).await?;
    let t = Instant::now();
    k8s::cc_dynamic(&ctx.client, ns)
        .delete(name, &Default::default())
        .await
        .map_err(kube_err(format!("deleting {ns}/{name}")))?;
    let r = k8s::wait_for(
        &format!("{ns}/{name} and its objects to be gone"),
        Duration::from_secs(180),
        Duration::from_secs(1),
        || {
            let selector = selector.clone();
            async move {
                let left = k8s::leftovers(&ctx.client, ns, &selector).await?;
                let cc =
                    k8s::cc_dynamic(&ctx.client, ns).get_opt(name).await.map_err(kube_err("reading the cluster"))?;
                Ok((left.is_empty() && cc.is_none()).then_some(()))
            }
        },
    )
    .await;
    let left = k8s::leftovers(&ctx.client, ns, &selector).await?;
    s.check(r.is_ok(), &format!("deleting {ns}/{name} removed all {} objects it owned", before.len()), || {
        format!("left: {left:?}")
    })?;
    s.measure_secs(&format!("{name}_deleted_with_its_objects"), t.elapsed());
    Ok(())
}

/// Objects labelled `app.kubernetes.io/instance=<release>` still present: in
/// namespace `ns` and cluster-wide; plus every Lease in `ns`.
async fn release_leftovers(ctx: &Ctx, ns: &str) -> Result<(Vec<String>, Vec<String>)> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    let mut left = vec![];
    macro_rules! ns_list {
        ($t:ty, $kind:literal) => {{
            let api: Api<$t> = Api::namespaced(ctx.client.clone(), ns);
            for o in api.list(&lp).await.map_err(kube_err(concat!("listing ", $kind)))?.items {
                left.push(format!("{}/{}", $kind, o.name_any()));
            }
        }};
    }
    macro_rules! cluster_list {
        ($t:ty, $kind:literal) => {{
            let api: Api<$t> = Api::all(ctx.client.clone());
            for o in api.list(&lp).await.map_err(kube_err(concat!("listing ", $kind)))?.items {
                left.push(format!("{}/{}", $kind, o.name_any()));
            }
        }};
    }
    ns_list!(Deployment, "Deployment");
    ns_list!(k8s_openapi::api::core::v1::Pod, "Pod");
    ns_list!(Service, "Service");
    ns_list!(ServiceAccount, "ServiceAccount");
    ns_list!(Role, "Role");
    ns_list!(RoleBinding, "RoleBinding");
    ns_list!(k8s_openapi::api::core::v1::ConfigMap, "ConfigMap");
    ns_list!(k8s_openapi::api::core::v1::Secret, "Secret");
    cluster_list!(ClusterRole, "ClusterRole");
    cluster_list!(ClusterRoleBinding, "ClusterRoleBinding");
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), ns);
    let leases = leases
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing leases"))?
        .items
        .iter()
        .map(|l| format!("Lease/{}", l.name_any()))
        .collect();
    Ok((left, leases))
}

/// Deletes the shared cluster, then the Helm release: nothing of either is left.
pub async fn uninstall(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let ns = ctx.settings.operator_namespace.clone();
    // A cluster to delete: the shared one if an earlier scenario left it,
    // else a fresh one; serving (Available) is enough, every member need
    // not be Active.
    if k8s::cc_dynamic(&ctx.client, BASIC_NS).get_opt(BASIC).await.map_err(kube_err("reading basic"))?.is_none() {
        ctx.create_cluster(BASIC_NS, BASIC, spec(1, "128Mi"), BTreeMap::new()).await?;
    }
    k8s::wait_cc(&ctx.client, BASIC_NS, BASIC, "basic Available", Duration::from_secs(300), |cc| {
        cc.status.as_ref().is_some_and(|st| st.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True"))
    })
    .await?;
    delete_cluster(ctx, s, BASIC_NS, BASIC).await?;
    k8s::delete_namespace(&ctx.client, BASIC_NS, Duration::from_secs(120)).await?;
    let remaining = k8s::all_clusters(&ctx.client).await?;
    s.check(remaining.is_empty(), "no ConsensusCluster is left before the uninstall", || format!("{remaining:?}"))?;

    let t = Instant::now();
    ctx.helm(&["uninstall", RELEASE, "--namespace", &ns, "--wait", "--timeout", "120s"], Duration::from_secs(180))
        .await?;
    s.measure_secs("helm_uninstall", t.elapsed());
    let r =
        k8s::wait_for("the release's objects to be gone", Duration::from_secs(120), Duration::from_secs(1), || async {
            let (left, _) = release_leftovers(ctx, &ns).await?;
            Ok(left.is_empty().then_some(()))
        })
        .await;
    let (left, leases) = release_leftovers(ctx, &ns).await?;
    s.check(r.is_ok(), "helm uninstall removed every object of the release", || format!("left: {left:?}"))?;
    s.measure("left_in_release_namespace_by_design", format!("{leases:?} (the operator's leader Lease)"), "");
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let crd = crds.get_opt(CRD).await.map_err(kube_err("reading the CRD"))?;
    let keep = crd.as_ref().and_then(|c| c.annotations().get("helm.sh/resource-policy").cloned());
    s.check(keep.as_deref() == Some("keep"), "the CRD is kept (helm.sh/resource-policy: keep)", || {
        format!("{keep:?}")
    })?;
    // The release namespace (made by --create-namespace) goes too.
    k8s::delete_namespace(&ctx.client, &ns, Duration::from_secs(120)).await
}

/// `kubectl apply -f deploy/pbft-operator.yaml`, a cluster in a fresh
/// namespace, then `kubectl delete -f`: nothing left, CRD and namespace included.
pub async fn manifest_install(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let manifest = ctx.settings.repo.join("deploy/pbft-operator.yaml").to_string_lossy().to_string();
    let ns = "pbft-system";
    let t = Instant::now();
    ctx.kubectl(&["apply", "-f", &manifest], None, Duration::from_secs(120)).await?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    k8s::wait_for(
        "the operator Deployment to be available",
        Duration::from_secs(180),
        Duration::from_secs(1),
        || async {
            let d = deployments.get_opt(RELEASE).await.map_err(kube_err("reading the Deployment"))?;
            Ok(d.and_then(|d| d.status).is_some_and(|st| st.available_replicas.unwrap_or(0) >= 1).then_some(()))
        },
    )
    .await?;
    k8s::wait_for("the operator to lead", Duration::from_secs(120), Duration::from_millis(500), || async {
        Ok(ctx.operator_metrics(ns).await.ok())
    })
    .await?;
    s.measure_secs("kubectl_apply_to_leader", t.elapsed());
    let pods = ctx.operator_pods(ns).await?;
    let args: Vec<String> = pods
        .iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()).flat_map(|c| c.args.clone().unwrap_or_default()))
        .collect();
    s.check(
        !args.iter().any(|a| a.starts_with("--allow-fault-injection")),
        "the plain manifest does not allow fault injection",
        || format!("{args:?}"),
    )?;

    let (cns, name) = ("e2e-plain", "plain");
    let t = Instant::now();
    ctx.create_cluster(cns, name, spec(1, "128Mi"), BTreeMap::new()).await?;
    ctx.wait_available(cns, name, Duration::from_secs(300)).await?;
    s.measure_secs("f1_available_after_create", t.elapsed());
    write_through_service_read_everywhere(ctx, s, cns, name, "plain-manifest").await?;
    delete_cluster(ctx, s, cns, name).await?;
    k8s::delete_namespace(&ctx.client, cns, Duration::from_secs(120)).await?;

    let t = Instant::now();
    ctx.kubectl(&["delete", "-f", &manifest, "--wait=true", "--timeout=180s"], None, Duration::from_secs(240)).await?;
    s.measure_secs("kubectl_delete", t.elapsed());
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let r = k8s::wait_for(
        "the namespace and the CRD to be gone",
        Duration::from_secs(180),
        Duration::from_secs(1),
        || async {
            let n = namespaces.get_opt(ns).await.map_err(kube_err("reading the namespace"))?;
            let c = crds.get_opt(CRD).await.map_err(kube_err("reading the CRD"))?;
            Ok((n.is_none() && c.is_none()).then_some(()))
        },
    )
    .await;
    let (left, _) = release_leftovers(ctx, ns).await?;
    s.check(r.is_ok() && left.is_empty(), "kubectl delete -f removed everything (namespace, CRD, RBAC)", || {
        format!("left: {left:?}")
    })
}
