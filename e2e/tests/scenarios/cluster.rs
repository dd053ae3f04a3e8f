//! Clusters becoming Available and serving, losing their primary, bad input,
//! scaling and rolling upgrades.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbft_e2e::garbage;
use pbft_e2e::k8s;
use pbft_e2e::load::{Load, LoadSpec};
use pbft_e2e::prom;
use pbft_e2e::report::{Error, Result, Scenario};
use pbft_e2e::Ctx;

use super::{check_load, ensure_basic, spec, BASIC, BASIC_NS};

/// Writes `key` through the client Service (pbftctl in a pod, in-cluster,
/// as an application would), then reads it from every replica alone (each
/// replica's own signed reply) and through f+1 matching replies.
pub async fn write_through_service_read_everywhere(
    ctx: &Ctx,
    s: &mut Scenario,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<()> {
    let value = format!("{key}-written-through-the-service");
    let service = format!("{name}.{ns}.svc:7001");
    let t0 = Instant::now();
    let (ok, logs) = ctx
        .pbftctl_pod(
            ns,
            name,
            &format!("{name}-put"),
            &["--service".into(), service, "--timeout".into(), "60".into(), "put".into(), key.into(), value.clone()],
        )
        .await?;
    s.check(ok, &format!("{ns}/{name}: pbftctl put through the client Service"), || logs.clone())?;
    s.measure_secs(&format!("{name}_service_put_pod"), t0.elapsed());
    let topo = ctx.topology(ns, name).await?;
    let seen: Vec<_> = topo
        .read_from_each(key.as_bytes())
        .await
        .into_iter()
        .map(|(id, got)| {
            (id, got.map(|v| v.map(|b| String::from_utf8_lossy(&b).to_string())).map_err(|e| e.to_string()))
        })
        .collect();
    let all = seen.iter().all(|(_, r)| matches!(r, Ok(Some(v)) if *v == value));
    s.check(
        all && seen.len() == topo.membership.n(),
        &format!("{ns}/{name}: every replica returns the value in its own signed reply"),
        || format!("{seen:?}"),
    )?;
    let mut c = topo.client(Duration::from_secs(30))?;
    let got = c.get(key.as_bytes()).await.map_err(|e| Error::Other(e.to_string()))?;
    s.check(got.value.as_deref() == Some(value.as_bytes()), "and through f+1 matching replies", || format!("{got:?}"))
}

/// f=1 and f=2 clusters reach Available and serve; deleting a cluster
/// removes everything it owned.
pub async fn available(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let t0 = Instant::now();
    ctx.create_cluster(BASIC_NS, BASIC, spec(1, "128Mi"), BTreeMap::new()).await?;
    ctx.create_cluster("e2e-ledger", "ledger", spec(2, "128Mi"), BTreeMap::new()).await?;
    let (_, t1) = ctx.wait_available(BASIC_NS, BASIC, Duration::from_secs(300)).await?;
    s.measure_secs("f1_available_after_create", t1);
    let (cc2, _) = ctx.wait_available("e2e-ledger", "ledger", Duration::from_secs(400)).await?;
    s.measure_secs("f2_available_after_create", t0.elapsed());
    s.measure("f2_members", cc2.status.as_ref().map_or(0, |x| x.replicas), "");
    write_through_service_read_everywhere(ctx, s, BASIC_NS, BASIC, "hello-f1").await?;
    write_through_service_read_everywhere(ctx, s, "e2e-ledger", "ledger", "hello-f2").await?;

    // Deleting the ConsensusCluster removes what it owned (owner references).
    let selector = "app.kubernetes.io/instance=ledger";
    let before = k8s::leftovers(&ctx.client, "e2e-ledger", selector).await?;
    s.measure("f2_owned_objects", before.len(), "");
    let t = Instant::now();
    k8s::cc_dynamic(&ctx.client, "e2e-ledger")
        .delete("ledger", &Default::default())
        .await
        .map_err(pbft_e2e::report::kube_err("deleting ledger"))?;
    let r = k8s::wait_for("ledger's objects to be gone", Duration::from_secs(180), Duration::from_secs(1), || async {
        let left = k8s::leftovers(&ctx.client, "e2e-ledger", selector).await?;
        Ok(left.is_empty().then_some(()))
    })
    .await;
    let left = k8s::leftovers(&ctx.client, "e2e-ledger", selector).await?;
    s.check(r.is_ok(), "deleting the CR removes every object it owned", || format!("left: {left:?} (of {before:?})"))?;
    s.measure_secs("f2_cleanup_after_delete", t.elapsed());
    k8s::delete_namespace(&ctx.client, "e2e-ledger", Duration::from_secs(120)).await
}

/// Deletes the primary's pod under load: a new view commits and writes
/// resume; the member comes back (with a new key: its data was ephemeral).
pub async fn primary_loss(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    ensure_basic(ctx, s).await?;
    let before = k8s::get_cc(&ctx.client, BASIC_NS, BASIC).await?;
    let st = before.status.clone().unwrap_or_default();
    let (view0, epoch0) = (st.view.unwrap_or(0), st.epoch.unwrap_or(0));
    let primary = st.primary.clone().ok_or_else(|| Error::Check("no primary in the status".into()))?;
    let watcher = ctx.watcher(BASIC_NS, BASIC).await?;
    let load = Load::start(watcher.clone(), LoadSpec::light("primary"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at = load.now();
    s.log(format!("deleting the primary's pod {primary} (view {view0}) under load"));
    k8s::delete_pod(&ctx.client, BASIC_NS, &primary, None).await?;
    let t = Instant::now();
    // A new view: f+1 replicas in a higher view, active.
    let (view, took) = k8s::wait_for("a new view", Duration::from_secs(60), Duration::from_millis(100), || async {
        let topo = watcher.current();
        let views: Vec<u64> = topo
            .statuses()
            .await
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .filter(|x| x.active && x.view as i64 > view0)
            .map(|x| x.view)
            .collect();
        Ok((views.len() >= topo.membership.weak_quorum()).then(|| views.into_iter().max().unwrap_or(0)))
    })
    .await?;
    s.measure("view_before", view0, "");
    s.measure("view_after", view, "");
    s.measure_secs("new_view_active_after_delete", took);
    let (cc, _) = ctx.wait_available(BASIC_NS, BASIC, Duration::from_secs(240)).await?;
    s.measure_secs("available_again_after_delete", t.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = load.stop().await;
    let first =
        r.first_write_after(at).ok_or_else(|| Error::Check("no write committed after the primary's loss".into()))?;
    s.measure_secs("first_write_committed_after_delete", first);
    s.measure_secs(
        "write_gap_around_primary_loss",
        r.max_gap(at.saturating_sub(Duration::from_secs(1)), at + Duration::from_secs(60)),
    );
    s.check(first < Duration::from_secs(60), "writes resume after the primary's loss", || format!("{first:?}"))?;
    let epoch = cc.status.as_ref().and_then(|x| x.epoch).unwrap_or(0);
    s.measure("epoch_before", epoch0, "");
    s.measure("epoch_after", epoch, "");
    s.check(epoch > epoch0, "the lost member was replaced with a new key (ephemeral data)", || {
        format!("epoch {epoch0} -> {epoch}")
    })?;
    check_load(ctx, s, BASIC_NS, BASIC, &r, "load").await
}

/// Invalid ConsensusClusters are refused with clear messages; noise to every
/// port of every replica changes nothing.
pub async fn bad_input(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    ensure_basic(ctx, s).await?;
    let cases: &[(&str, &str, &str)] = &[
        ("f=9", "{faultTolerance: 9}", "faultTolerance (f) must be between 1 and 7"),
        ("memory below the floor", "{faultTolerance: 1, resources: {limits: {memory: 32Mi}}}", "must be at least 64Mi"),
        (
            "watermark window",
            "{faultTolerance: 1, protocol: {checkpointInterval: 64, watermarkWindow: 100}}",
            "multiple of protocol.checkpointInterval",
        ),
        // Server-side apply names the field ("field not declared in schema"),
        // a strict create says "unknown field"; both give its path.
        ("unknown field", "{faultTolerance: 1, replicas: 4}", ".spec.replicas"),
        ("bad quarantine mode", "{faultTolerance: 1, quarantine: {mode: Sometimes}}", "Unsupported value"),
        ("view-change timeout", "{faultTolerance: 1, protocol: {viewChangeTimeout: 10m}}", "between 100ms and 5m"),
    ];
    for (i, (what, spec_yaml, expect)) in cases.iter().enumerate() {
        let yaml = format!(
            "apiVersion: consensus.pbft.dev/v1alpha1\nkind: ConsensusCluster\nmetadata: {{name: bad-{i}}}\nspec: {spec_yaml}\n"
        );
        let r = k8s::dry_run_cc_yaml(&ctx.client, BASIC_NS, &yaml).await?;
        match r {
            Err(msg) if msg.contains(expect) => s.pass(format!("rejected ({what}): {msg}")),
            Err(msg) => return Err(Error::Check(format!("{what}: rejected, but the message lacks {expect:?}: {msg}"))),
            Ok(()) => return Err(Error::Check(format!("{what}: accepted: {spec_yaml}"))),
        }
    }
    let r =
        k8s::patch_cc(&ctx.client, BASIC_NS, BASIC, serde_json::json!({"spec": {"storage": {"size": "1Gi"}}})).await?;
    match r {
        Err(msg) if msg.contains("cannot be added or removed") => {
            s.pass(format!("rejected (adding storage later): {msg}"))
        }
        other => return Err(Error::Check(format!("adding storage to a running cluster: {other:?}"))),
    }

    // Noise to every port.
    let cc0 = k8s::get_cc(&ctx.client, BASIC_NS, BASIC).await?;
    let st0 = cc0.status.clone().unwrap_or_default();
    let topo = ctx.topology(BASIC_NS, BASIC).await?;
    let restarts0: Vec<(String, i32)> = k8s::replica_pods(&ctx.client, BASIC_NS, BASIC)
        .await?
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), k8s::restarts(p).0))
        .collect();
    let dropped = |samples: &[prom::Sample]| prom::sum(samples, "pbft_messages_dropped_total", &[]);
    let mut dropped0 = 0.0;
    for r in &topo.replicas {
        if let Some(m) = &r.metrics {
            dropped0 += dropped(&prom::parse(&prom::http_get(m, "/metrics").await.unwrap_or_default()));
        }
    }
    let mut attacks = 0;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in topo.replicas.iter().enumerate() {
        let seed = 1000 + i as u64;
        let mut results = vec![];
        for addr in [&r.peer, &r.client, &r.admin, &r.metrics].into_iter().flatten() {
            results.extend(garbage::raw_attacks(addr, seed).await);
        }
        if let Some(a) = &r.client {
            results.extend(garbage::client_attacks(a, seed).await);
        }
        if let Some(a) = &r.admin {
            results.extend(garbage::admin_attacks(a).await);
        }
        if let Some(a) = &r.peer {
            let other = topo.membership.ids().find(|id| *id != r.id).unwrap_or(0);
            results.extend(garbage::peer_attacks(a, other, st0.epoch.unwrap_or(0) as u64, seed).await);
        }
        attacks += results.len();
        for (what, got) in results {
            *outcomes.entry(format!("{what} -> {}", got.split(':').next().unwrap_or(&got))).or_default() += 1;
        }
    }
    for (o, n) in &outcomes {
        s.log(format!("  {n} x {o}"));
    }
    s.measure("garbage_attacks_sent", attacks, "");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut dropped1 = 0.0;
    for r in &topo.replicas {
        if let Some(m) = &r.metrics {
            dropped1 += dropped(&prom::parse(&prom::http_get(m, "/metrics").await.unwrap_or_default()));
        }
    }
    s.measure("peer_frames_dropped_during_attack", dropped1 - dropped0, "");
    let pods = k8s::replica_pods(&ctx.client, BASIC_NS, BASIC).await?;
    let restarts1: Vec<(String, i32)> =
        pods.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), k8s::restarts(p).0)).collect();
    s.check(restarts0 == restarts1, "no replica restarted", || format!("{restarts0:?} -> {restarts1:?}"))?;
    let (cc1, _) = ctx.wait_available(BASIC_NS, BASIC, Duration::from_secs(60)).await?;
    let st1 = cc1.status.clone().unwrap_or_default();
    s.check(
        st1.epoch == st0.epoch && st1.evidence.len() == st0.evidence.len(),
        "no membership change and no evidence",
        || {
            format!(
                "epoch {:?} -> {:?}, evidence {} -> {}",
                st0.epoch,
                st1.epoch,
                st0.evidence.len(),
                st1.evidence.len()
            )
        },
    )?;
    let counts: Vec<u64> =
        topo.statuses().await.into_iter().filter_map(|(_, r)| r.ok()).map(|x| x.evidence_count).collect();
    s.check(counts.iter().all(|c| *c == 0), "no replica holds evidence (noise convicts nobody)", || {
        format!("{counts:?}")
    })?;
    write_through_service_read_everywhere(ctx, s, BASIC_NS, BASIC, "after-garbage").await
}

/// What the readiness sampler saw (during scaling and the upgrade, or crashes).
#[derive(Default, Debug)]
pub(super) struct OutSamples {
    pub(super) samples: usize,
    /// Largest number of members of the membership in force without a ready pod, and f then.
    pub(super) worst: (usize, usize),
    /// The samples with more than f members without a ready pod.
    pub(super) violations: Vec<String>,
}

/// Samples every 250 ms: members of the published membership whose pod is not ready.
pub(super) fn sample_out(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<OutSamples>>, tokio::task::JoinHandle<()>) {
    let out = Arc::new(Mutex::new(OutSamples::default()));
    let (client, ns, name, o) = (ctx.client.clone(), ns.to_string(), name.to_string(), out.clone());
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let (Ok(Some(m)), Ok(pods)) = (
                pbft_e2e::topology::published_membership(&client, &ns, &name).await,
                k8s::replica_pods(&client, &ns, &name).await,
            ) {
                let ready: Vec<u32> = pods.iter().filter(|p| k8s::pod_ready(p)).filter_map(k8s::member_id).collect();
                let missing: Vec<u32> = m.ids().filter(|id| !ready.contains(id)).collect();
                if let Ok(mut s) = o.lock() {
                    s.samples += 1;
                    if missing.len() > s.worst.0 {
                        s.worst = (missing.len(), m.f());
                    }
                    if missing.len() > m.f() {
                        s.violations.push(format!("epoch {}: members {missing:?} not ready, f = {}", m.epoch(), m.f()));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (out, task)
}

/// Scaling f=1 → 2 → 1 and a rolling image upgrade, under load: no
/// acknowledged write lost, at most f members out at any time.
pub async fn scale_upgrade(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    ensure_basic(ctx, s).await?;
    let watcher = ctx.watcher(BASIC_NS, BASIC).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (out, sampler) = sample_out(ctx, BASIC_NS, BASIC, stop.clone());
    let load = Load::start(watcher.clone(), LoadSpec::light("scale"));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut phases = vec![];
    for (what, patch, members) in [
        ("scale_up_f1_to_f2", serde_json::json!({"spec": {"faultTolerance": 2}}), 7),
        ("scale_down_f2_to_f1", serde_json::json!({"spec": {"faultTolerance": 1}}), 4),
        ("rolling_upgrade", serde_json::json!({"spec": {"image": ctx.settings.upgrade_image()}}), 4),
    ] {
        let from = load.now();
        let t = Instant::now();
        s.log(format!("{what}: patch {patch}"));
        k8s::patch_cc(&ctx.client, BASIC_NS, BASIC, patch).await?.map_err(Error::Check)?;
        let image = ctx.settings.upgrade_image();
        let upgrade = what == "rolling_upgrade";
        // Settled: Available with every member healthy, and (upgrade) every pod on the new image.
        k8s::wait_for(&format!("{what} to finish"), Duration::from_secs(420), Duration::from_secs(1), || {
            let image = image.clone();
            async move {
                let cc = k8s::get_cc(&ctx.client, BASIC_NS, BASIC).await?;
                if !k8s::fully_available(&cc) || cc.status.as_ref().map_or(0, |x| x.replicas) != members {
                    return Ok(None);
                }
                if upgrade {
                    let pods = k8s::replica_pods(&ctx.client, BASIC_NS, BASIC).await?;
                    let all_new = pods.len() == members as usize
                        && pods.iter().all(|p| {
                            p.spec.as_ref().is_some_and(|sp| sp.containers[0].image.as_deref() == Some(image.as_str()))
                        });
                    return Ok(all_new.then_some(()));
                }
                Ok(Some(()))
            }
        })
        .await?;
        s.measure_secs(what, t.elapsed());
        phases.push((what, from, load.now()));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let r = load.stop().await;
    for (what, from, to) in &phases {
        s.measure_secs(&format!("{what}_max_write_gap"), r.max_gap(*from, *to));
    }
    let o = out.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
    s.measure("readiness_samples", o.samples, "");
    s.measure("most_members_out", format!("{} (f={})", o.worst.0, o.worst.1), "");
    s.check(o.violations.is_empty() && o.samples > 0, "never more than f members out", || {
        format!("{:?}", o.violations)
    })?;
    check_load(ctx, s, BASIC_NS, BASIC, &r, "load").await
}
