//! Crashes under load: a cluster with persistent storage loses a random
//! replica pod every few seconds for a minute while clients write and read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use pbft_e2e::k8s;
use pbft_e2e::load::{Load, LoadSpec};
use pbft_e2e::report::{Error, Result, Scenario};
use pbft_e2e::Ctx;

use super::check_load;
use super::cluster::sample_out;

const NS: &str = "e2e-crash";
const NAME: &str = "crash";
/// How long pods keep being deleted, and how often.
const CHAOS: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(5);

/// With storage a deleted pod comes back with its key and its log (same
/// member, same epoch); the history must stay linearizable, no acknowledged
/// write may be lost, and the cluster must return to Available.
pub async fn crash(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let mut storage = serde_json::json!({ "size": "256Mi" });
    if let Some(class) = &ctx.settings.storage_class {
        storage["storageClassName"] = class.clone().into();
    }
    let spec = serde_json::json!({
        "faultTolerance": 1,
        "resources": { "limits": { "memory": "128Mi" } },
        "storage": storage,
    });
    let t0 = Instant::now();
    ctx.create_cluster(NS, NAME, spec, BTreeMap::new()).await?;
    let (cc, _) = ctx.wait_available(NS, NAME, Duration::from_secs(300)).await?;
    s.measure_secs("available_with_storage", t0.elapsed());
    let epoch0 = cc.status.as_ref().and_then(|x| x.epoch).unwrap_or(0);

    let watcher = ctx.watcher(NS, NAME).await?;
    let load = Load::start(watcher.clone(), LoadSpec::light("crash"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let chaos_start = load.now();
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let (out, sampler) = sample_out(ctx, NS, NAME, stop_sampler.clone());
    let t = Instant::now();
    let mut deleted = vec![];
    while t.elapsed() < CHAOS {
        let pods = k8s::replica_pods(&ctx.client, NS, NAME).await?;
        let candidates: Vec<String> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if let Some(victim) = candidates.choose(&mut rand::thread_rng()) {
            k8s::delete_pod(&ctx.client, NS, victim, None).await?;
            deleted.push((format!("{:.1}", t.elapsed().as_secs_f64()), victim.clone()));
        }
        tokio::time::sleep(EVERY).await;
    }
    let chaos_end = load.now();
    stop_sampler.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    s.log(format!("deleted (s since start, pod): {deleted:?}"));
    s.measure("pods_deleted", deleted.len(), "");
    // Writes stop while more than f members are down (a pod deleted before the
    // previous one is back): this is what explains a long write gap.
    if let Ok(o) = out.lock() {
        s.measure("samples_with_more_than_f_members_not_ready", format!("{}/{}", o.violations.len(), o.samples), "");
        s.measure("most_members_not_ready", format!("{} (f={})", o.worst.0, o.worst.1), "");
    }
    let (cc, back) = ctx.wait_available(NS, NAME, Duration::from_secs(300)).await?;
    s.measure_secs("available_again_after_chaos", back);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = load.stop().await;
    s.measure_secs("longest_write_gap_during_chaos", r.max_gap(chaos_start, chaos_end));
    let acked_during = r
        .history
        .iter()
        .filter(|x| {
            x.ret >= chaos_start && x.ret <= chaos_end && x.outcome != pbft_e2e::linearizability::Outcome::Unknown
        })
        .count();
    s.measure("ops_acked_during_chaos", acked_during, "");
    let epoch = cc.status.as_ref().and_then(|x| x.epoch).unwrap_or(0);
    s.measure("epoch_before_after", format!("{epoch0} -> {epoch}"), "");
    s.check(epoch == epoch0, "with storage every member came back with its own key (no membership change)", || {
        format!("epoch {epoch0} -> {epoch}")
    })?;
    if acked_during == 0 {
        return Err(Error::Check("no operation acknowledged during the minute of crashes".into()));
    }
    check_load(ctx, s, NS, NAME, &r, "load").await?;
    k8s::delete_namespace(&ctx.client, NS, Duration::from_secs(180)).await
}
