//! Installing the operator with Helm, `helm test`, and the operator's own figures.

use std::time::{Duration, Instant};

use pbft_e2e::k8s;
use pbft_e2e::prom;
use pbft_e2e::report::{Error, Result, Scenario};
use pbft_e2e::Ctx;

/// The Helm release the suite installs.
pub const RELEASE: &str = "pbft-operator";

/// `helm upgrade --install` of the chart (fault injection allowed: the
/// Byzantine scenarios need it; test-only), then waits for a leader.
pub async fn helm_install(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let chart = ctx.settings.repo.join("charts/pbft-operator");
    let chart = chart.to_string_lossy().to_string();
    let ns = ctx.settings.operator_namespace.clone();
    let v = ctx.settings.image_version.clone();
    let t0 = Instant::now();
    let sets = [
        "logFormat=text".to_string(),
        "faultInjection.enabled=true".to_string(),
        format!("image.tag={v}"),
        format!("replicaImage.tag={v}"),
        format!("faultInjection.image.tag={v}"),
    ];
    let mut args: Vec<&str> = vec![
        "upgrade",
        "--install",
        RELEASE,
        &chart,
        "--namespace",
        &ns,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    ];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    ctx.helm(&args, Duration::from_secs(240)).await?;
    s.measure_secs("helm_install_wait", t0.elapsed());
    let (_, took) =
        k8s::wait_for("the operator to lead", Duration::from_secs(120), Duration::from_millis(500), || async {
            Ok(ctx.operator_metrics(&ns).await.ok())
        })
        .await?;
    s.measure_secs("operator_leader_after_install", t0.elapsed());
    let _ = took;
    let pods = ctx.operator_pods(&ns).await?;
    let args: Vec<String> = pods
        .iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()).flat_map(|c| c.args.clone().unwrap_or_default()))
        .collect();
    s.check(
        args.iter().any(|a| a == "--allow-fault-injection=true"),
        "the test install allows fault injection",
        || format!("operator args: {args:?}"),
    )?;
    s.log(format!("reaching pods: {:?} (PBFT_E2E_REACH)", ctx.reach.mode()));
    Ok(())
}

/// `helm test`: the chart's own test creates a cluster, writes and reads a key
/// through its client Service with pbftctl (`get --expect`: the pod fails on
/// a mismatch), and deletes it. No `--logs`: the hook pods are deleted when
/// they succeed (so `helm uninstall` leaves nothing), and Helm then fails to
/// fetch their logs.
pub async fn helm_test(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let ns = ctx.settings.operator_namespace.clone();
    let t0 = Instant::now();
    let out = pbft_e2e::cmd::run(
        &ctx.settings.helm,
        &["test", RELEASE, "--namespace", &ns, "--timeout", "420s"],
        None,
        Duration::from_secs(480),
    )
    .await?;
    s.measure_secs("helm_test", t0.elapsed());
    s.check(out.ok, "helm test passes", || format!("{}{}", out.stdout, out.stderr))?;
    // Each suite's name line is followed by its times and phase.
    let phase_of = |suite: &str| {
        let lines: Vec<&str> = out.stdout.lines().collect();
        lines
            .iter()
            .position(|l| l.trim_start().starts_with("TEST SUITE:") && l.trim_end().ends_with(suite))
            .and_then(|i| lines[i..].iter().take(4).find_map(|l| l.trim().strip_prefix("Phase:").map(str::trim)))
            .map(str::to_string)
    };
    for suite in ["create", "write", "delete"] {
        let phase = phase_of(&format!("{RELEASE}-test-{suite}"));
        s.check(
            phase.as_deref() == Some("Succeeded"),
            &format!(
                "helm test step {suite} succeeded (write: pbftctl put, then get --expect through the client Service)"
            ),
            || format!("phase {phase:?} in:\n{}", out.stdout),
        )?;
    }
    let gone = k8s::cc_dynamic(&ctx.client, &ns)
        .get_opt("helm-test")
        .await
        .map_err(pbft_e2e::report::kube_err("helm-test"))?;
    s.check(gone.is_none(), "the helm-test cluster is gone afterwards", || "still there".into())
}

/// The operator's reconcile figures from its `/metrics`.
pub async fn operator_metrics(ctx: &Ctx, s: &mut Scenario) -> Result<()> {
    let m = ctx.operator_metrics(&ctx.settings.operator_namespace).await?;
    let total = prom::sum(&m, "pbft_operator_reconciliations_total", &[]);
    let ok = prom::sum(&m, "pbft_operator_reconciliations_total", &["result=\"ok\""]);
    let errors = prom::sum(&m, "pbft_operator_reconcile_errors_total", &[]);
    let count = prom::sum(&m, "pbft_operator_reconcile_duration_seconds_count", &[]);
    let sum = prom::sum(&m, "pbft_operator_reconcile_duration_seconds_sum", &[]);
    s.measure("reconciliations", total, "");
    s.measure("reconciliations_ok", ok, "");
    s.measure("reconcile_errors", errors, "");
    for sample in m.iter().filter(|x| x.name == "pbft_operator_reconciliations_total" && !x.labels.contains("\"ok\"")) {
        s.measure(&format!("reconcile_errors_by[{}]", sample.labels), sample.value, "");
    }
    if count > 0.0 {
        s.measure("reconcile_duration_mean", format!("{:.1}", 1000.0 * sum / count), "ms");
    }
    for q in [0.5, 0.9, 0.99] {
        if let Some(v) = prom::histogram_quantile(&m, "pbft_operator_reconcile_duration_seconds", q) {
            s.measure(&format!("reconcile_duration_p{}", (q * 100.0) as u32), format!("{:.1}", v * 1000.0), "ms");
        }
    }
    for sample in m.iter().filter(|x| x.name == "pbft_operator_membership_changes_total") {
        s.measure(&format!("membership_changes[{}]", sample.labels), sample.value, "");
    }
    for sample in m.iter().filter(|x| x.name == "pbft_operator_evidence_total") {
        s.measure(&format!("evidence[{}]", sample.labels), sample.value, "");
    }
    s.check(total > 0.0 && count == total, "the operator counts its reconciles and their durations", || {
        format!("{total} reconciles, {count} durations")
    })?;
    if ok <= 0.0 {
        return Err(Error::Check("no successful reconcile counted".into()));
    }
    Ok(())
}
