//! The scenarios, in the order one run takes them (they share the operator
//! install and the `basic` cluster), and what they have in common.

mod byzantine;
mod cluster;
mod crash;
mod install;
mod memory;
mod uninstall;

use std::collections::BTreeMap;
use std::time::Duration;

use pbft_e2e::k8s;
use pbft_e2e::load::LoadResult;
use pbft_e2e::report::{log, Error, Result, Scenario};
use pbft_e2e::Ctx;

/// Every scenario, in running order.
pub const ORDER: &[&str] = &[
    "install",
    "helm-test",
    "available",
    "primary-loss",
    "bad-input",
    "scale-upgrade",
    "crash",
    "byzantine",
    "manual-quarantine",
    "memory",
    "operator-metrics",
    "uninstall",
    "manifest-install",
];

/// Longest a scenario may take before it counts as failed.
pub fn time_limit(name: &str) -> Duration {
    Duration::from_secs(match name {
        "install" | "helm-test" | "operator-metrics" => 420,
        "byzantine" | "scale-upgrade" => 900,
        _ => 600,
    })
}

/// Runs scenario `name`.
pub async fn run(name: &str, ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    match name {
        "install" => install::helm_install(ctx, s).await,
        "helm-test" => install::helm_test(ctx, s).await,
        "available" => cluster::available(ctx, s).await,
        "primary-loss" => cluster::primary_loss(ctx, s).await,
        "bad-input" => cluster::bad_input(ctx, s).await,
        "scale-upgrade" => cluster::scale_upgrade(ctx, s).await,
        "crash" => crash::crash(ctx, s).await,
        "byzantine" => byzantine::byzantine(ctx, s).await,
        "manual-quarantine" => byzantine::manual(ctx, s).await,
        "memory" => memory::memory(ctx, s).await,
        "operator-metrics" => install::operator_metrics(ctx, s).await,
        "uninstall" => uninstall::uninstall(ctx, s).await,
        "manifest-install" => uninstall::manifest_install(ctx, s).await,
        other => Err(Error::Other(format!("unknown scenario {other}"))),
    }
}

/// The namespace of the shared f=1 cluster `basic`.
pub const BASIC_NS: &str = "e2e-basic";
pub const BASIC: &str = "basic";

/// The spec of a small test cluster.
pub fn spec(f: i32, memory: &str) -> serde_json::Value {
    serde_json::json!({ "faultTolerance": f, "resources": { "limits": { "memory": memory } } })
}

/// Makes sure the shared cluster `basic` (f=1) exists and is fully Available.
pub async fn ensure_basic(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    if k8s::cc_dynamic(&ctx.client, BASIC_NS)
        .get_opt(BASIC)
        .await
        .map_err(pbft_e2e::report::kube_err("reading basic"))?
        .is_none()
    {
        s.log("creating the shared f=1 cluster e2e-basic/basic");
        ctx.create_cluster(BASIC_NS, BASIC, spec(1, "128Mi"), BTreeMap::new()).await?;
    }
    ctx.wait_available(BASIC_NS, BASIC, Duration::from_secs(300)).await?;
    Ok(())
}

/// The checks every load ends with: each acknowledged unique-key write reads
/// back (through f+1 matching replies), and the whole history is linearizable.
/// Prints the load's figures under `prefix`.
pub async fn check_load(ctx: &Ctx, s: &mut Scenario, ns: &str, name: &str, r: &LoadResult, prefix: &str) -> Result<()> {
    s.measure(&format!("{prefix}_ops_acked"), r.acked(), "");
    s.measure(&format!("{prefix}_writes_acked"), r.acked_writes(), "");
    s.measure(&format!("{prefix}_ops_unknown_outcome"), r.unknown(), "");
    s.measure(&format!("{prefix}_latency_p50"), format!("{:.1}", r.latency_ms(0.5)), "ms");
    s.measure(&format!("{prefix}_latency_p99"), format!("{:.1}", r.latency_ms(0.99)), "ms");
    s.measure(
        &format!("{prefix}_throughput"),
        format!("{:.1}", r.acked() as f64 / r.duration.as_secs_f64().max(0.001)),
        "ops/s",
    );
    let topo = ctx.topology(ns, name).await?;
    // Read back with 8 clients in parallel (f+1 matching replies each).
    let chunks: Vec<Vec<(String, u64)>> =
        r.unique_acked.chunks(r.unique_acked.len().div_ceil(8).max(1)).map(|c| c.to_vec()).collect();
    let reads = chunks.into_iter().map(|chunk| {
        let topo = &topo;
        async move {
            let mut client = topo.client(Duration::from_secs(30))?;
            let mut lost = vec![];
            for (key, id) in chunk {
                let got =
                    client.get(key.as_bytes()).await.map_err(|e| Error::Other(format!("reading back {key}: {e}")))?;
                if got.value.as_deref().map(LoadResult::decode) != Some(id) {
                    lost.push(key);
                }
            }
            Ok::<_, Error>(lost)
        }
    });
    let mut lost = vec![];
    for l in futures::future::join_all(reads).await {
        lost.extend(l?);
    }
    s.measure(&format!("{prefix}_acked_unique_writes_lost"), format!("{}/{}", lost.len(), r.unique_acked.len()), "");
    s.check(lost.is_empty() && !r.unique_acked.is_empty(), "every acknowledged write reads back", || {
        format!("{} of {} lost (first: {:?})", lost.len(), r.unique_acked.len(), lost.first())
    })?;
    let t = std::time::Instant::now();
    let lin = r.linearizability();
    s.measure(&format!("{prefix}_history_ops_checked"), lin.ops, "");
    s.measure(&format!("{prefix}_linearizability_check"), format!("{:.2}", t.elapsed().as_secs_f64()), "s");
    s.check(lin.ok(), "the history is linearizable (per-key register, WGL search)", || {
        let v = lin
            .violations
            .first()
            .map(|(k, ops)| format!("key {k}: {} ops, e.g. {:?}", ops.len(), &ops[..ops.len().min(6)]));
        format!("violations: {:?}; undecided keys: {:?}", v, lin.undecided)
    })
}

/// Prints what helps to understand a failure: clusters, pods, recent Events.
pub async fn diagnose(ctx: &Ctx, scenario: &str) {
    let out = pbft_e2e::cmd::run(
        &ctx.settings.kubectl,
        &["get", "cc,pods", "-A", "-o", "wide", "-l", "app.kubernetes.io/managed-by!=Helm"],
        None,
        Duration::from_secs(20),
    )
    .await;
    if let Ok(o) = out {
        log(scenario, format!("diagnostics: kubectl get cc,pods -A\n{}{}", o.stdout, o.stderr));
    }
    let ev = pbft_e2e::cmd::run(
        &ctx.settings.kubectl,
        &[
            "get",
            "events",
            "-A",
            "--field-selector",
            "involvedObject.kind=ConsensusCluster",
            "--sort-by=.lastTimestamp",
        ],
        None,
        Duration::from_secs(20),
    )
    .await;
    if let Ok(o) = ev {
        let tail: Vec<&str> = o.stdout.lines().rev().take(25).collect();
        log(
            scenario,
            format!(
                "diagnostics: last ConsensusCluster Events\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        );
    }
}

/// Removes every namespace the suite created, after a failed scenario and at
/// the end (unless PBFT_E2E_KEEP=1 and something failed).
pub async fn cleanup(ctx: &Ctx) {
    if ctx.settings.keep_on_failure {
        log("suite", "PBFT_E2E_KEEP=1: namespaces kept");
        return;
    }
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(ctx.client.clone());
    let lp = kube::api::ListParams::default().labels(&format!("{}=true", k8s::E2E_LABEL));
    if let Ok(list) = api.list(&lp).await {
        for n in list.items {
            if let Some(name) = n.metadata.name {
                let _ = k8s::delete_namespace(&ctx.client, &name, Duration::from_secs(120)).await;
            }
        }
    }
}
