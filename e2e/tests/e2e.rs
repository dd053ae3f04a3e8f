//! The e2e suite: every scenario in order, in one process, against the
//! cluster `KUBECONFIG` points at. Skipped unless `PBFT_E2E=1` (see
//! e2e/README.md). Prints `MEASURE` lines as it goes and a summary at the end;
//! exits non-zero when a scenario failed.

mod scenarios;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pbft_e2e::report::{log, Scenario};
use pbft_e2e::settings::Settings;
use pbft_e2e::Ctx;

fn main() -> ExitCode {
    // libtest arguments (--test-threads=1, a filter) are accepted and ignored:
    // the scenarios are chosen with PBFT_E2E_SCENARIOS.
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("e2e: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !settings.enabled {
        println!("e2e: SKIPPED: set PBFT_E2E=1 (and KUBECONFIG) to run the end-to-end suite against a cluster; see e2e/README.md");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if rt.block_on(run(settings)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Outcome {
    name: &'static str,
    took: Duration,
    result: Result<(), String>,
    figures: Vec<pbft_e2e::report::Figure>,
}

async fn run(settings: Settings) -> bool {
    let t0 = Instant::now();
    let ctx = match Ctx::new(settings).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("e2e: {e}");
            return false;
        }
    };
    let mut outcomes: Vec<Outcome> = vec![];
    for &name in scenarios::ORDER {
        if !ctx.settings.wants(name) {
            continue;
        }
        let mut s = Scenario::new(name);
        let limit = scenarios::time_limit(name);
        let result = match tokio::time::timeout(limit, scenarios::run(name, &ctx, &mut s)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("did not finish within {} s", limit.as_secs())),
        };
        if let Err(e) = &result {
            log(name, format!("FAIL {e}"));
            scenarios::diagnose(&ctx, name).await;
            // What a failed scenario left behind must not fail the next ones
            // (the uninstall expects no ConsensusCluster; the shared `basic`
            // cluster is created again by the scenarios that need it).
            scenarios::cleanup(&ctx).await;
        } else {
            log(name, format!("---- passed in {:.1} s", s.started.elapsed().as_secs_f64()));
        }
        let failed_install = name == "install" && result.is_err();
        outcomes.push(Outcome { name, took: s.started.elapsed(), result, figures: s.figures });
        if failed_install {
            log("suite", "the operator is not installed: the other scenarios cannot run");
            break;
        }
    }
    scenarios::cleanup(&ctx).await;

    println!("\n==================== e2e summary ({:?} reach) ====================", ctx.reach.mode());
    for o in &outcomes {
        let verdict = match &o.result {
            Ok(()) => "PASS".to_string(),
            Err(e) => format!("FAIL: {e}"),
        };
        println!("{:<18} {:>7.1}s  {verdict}", o.name, o.took.as_secs_f64());
        for f in &o.figures {
            println!("    {:<40} {} {}", f.name, f.value, f.unit);
        }
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    println!("MEASURE suite wall_time={:.1} s", t0.elapsed().as_secs_f64());
    println!("e2e: {} scenarios, {failed} failed, {:.1} s", outcomes.len(), t0.elapsed().as_secs_f64());
    failed == 0 && !outcomes.is_empty()
}
