//! `docs/benchmarks.md` and its plot, generated from one run's JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pbft::bench::{ceilings, Ceiling, CryptoCosts};

use crate::error::{io, BenchError};
use crate::load::{Point, Shape};
use crate::results::{RunResults, Spread, SystemResult};
use crate::svg::{plot, Series, PALETTE};

fn sat(s: &SystemResult) -> Spread {
    Spread::of(s.saturation.iter().map(|p| p.throughput))
}

fn half(s: &SystemResult, f: fn(&Point) -> f64) -> Spread {
    Spread::of(s.half.iter().map(f))
}

fn median_of(points: &[Point], f: fn(&Point) -> f64) -> f64 {
    Spread::of(points.iter().map(f)).median
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn spread(s: Spread, digits: usize) -> String {
    if (s.max - s.min).abs() < f64::EPSILON {
        format!("{:.*}", digits, s.median)
    } else {
        format!("{:.*} ({:.*}–{:.*})", digits, s.median, digits, s.min, digits, s.max)
    }
}

fn find<'a>(r: &'a RunResults, system: &str, value: usize) -> Option<&'a SystemResult> {
    r.systems.iter().find(|s| s.system == system && s.value_size == value)
}

/// The crypto costs measured nearest to a request of `value` bytes.
fn costs_for(r: &RunResults, value: usize) -> Option<&CryptoCosts> {
    r.crypto.iter().min_by_key(|c| c.message_bytes.abs_diff(value + 100))
}

/// The crypto ceiling of `n` replicas at batch size `b` on the run's cores (checkpoint every 64).
fn ceiling(c: &CryptoCosts, n: usize, b: f64, cores: usize) -> Option<Ceiling> {
    ceilings(c, n, 64, cores as f64, &[b]).into_iter().next()
}

/// Mean batch size our replicas reported at saturation (1 when unknown).
fn observed_batch(s: &SystemResult) -> f64 {
    let b = Spread::of(s.saturation.iter().filter_map(|p| p.replica_counters.map(|c| c.mean_batch))).median;
    if b >= 1.0 {
        b
    } else {
        1.0
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

fn shape(p: &Point) -> String {
    match p.shape {
        Shape::Closed { clients } => format!("closed C={clients}"),
        Shape::Open { rate, workers } => format!("open {rate:.0}/s ({workers} clients)"),
    }
}

fn foreign(p: &Point) -> f64 {
    if p.cpu.wall_s > 0.0 {
        p.cpu.foreign_s / p.cpu.wall_s
    } else {
        0.0
    }
}

fn all_points(r: &RunResults) -> Vec<&Point> {
    let mut v: Vec<&Point> = vec![];
    for s in &r.systems {
        v.extend(s.sweep.iter().chain(&s.saturation).chain(&s.half));
    }
    for f in &r.byzantine {
        v.extend(&f.points);
    }
    v.extend(r.view_change.iter().map(|x| &x.point));
    v
}

/// Writes the report and, beside it, `<stem>-latency.svg`.
pub fn write(r: &RunResults, json: &Path, report: &Path) -> Result<(), BenchError> {
    let stem = report.file_stem().and_then(|s| s.to_str()).unwrap_or("benchmarks");
    let svg_name = format!("{stem}-latency.svg");
    let svg_path: PathBuf = report.with_file_name(&svg_name);
    if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(&svg_path, latency_plot(r)).map_err(io(&svg_path))?;
    std::fs::write(report, markdown(r, json, &svg_name)).map_err(io(report))
}

/// "Where ours is slower, and why": this run's own figures side by side
/// (CPU per put, the share of it the signatures explain, fsyncs, batches, noise).
fn where_ours_loses(w: &mut String, r: &RunResults, values: &[usize]) {
    let _ = writeln!(w, "\n## Where ours is slower, and why (this run's figures)\n");
    let _ = writeln!(
        w,
        "On one 2-core machine every system, its processes and the load generator share the same cores, so throughput at \
         saturation is roughly the cores left by other processes divided by the CPU one put costs (system + load generator). \
         CPU per put at saturation, medians over the repeats:\n"
    );
    let _ = writeln!(w, "| system | value | puts/s | system CPU ms / put | load generator CPU ms / put | total | others' cores during the points | ours' total / this total |");
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for v in values {
        let total = |s: &SystemResult| median_of(&s.saturation, |p| p.cpu_per_1k + p.loadgen_cpu_per_1k);
        let ours_total = find(r, "ours-n4", *v).map(total);
        for s in r.systems.iter().filter(|s| s.value_size == *v) {
            let t = total(s);
            let _ = writeln!(
                w,
                "| {} | {v} B | {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {} |",
                s.label,
                sat(s).median,
                median_of(&s.saturation, |p| p.cpu_per_1k),
                median_of(&s.saturation, |p| p.loadgen_cpu_per_1k),
                t,
                median_of(&s.saturation, foreign),
                ours_total.map_or("–".into(), |o| ratio(o, t))
            );
        }
    }
    for v in values {
        for (sys, n) in [("ours-n4", 4usize), ("ours-n7", 7)] {
            let (Some(s), Some(c)) = (find(r, sys, *v), costs_for(r, *v)) else { continue };
            if sat(s).median < 1.0 {
                let _ = writeln!(
                    w,
                    "\n- **{} at {v} B**: committed (almost) nothing at saturation on a fresh cluster (see the notes for the replicas' \
                     state afterwards); no CPU split to give.",
                    s.label
                );
                continue;
            }
            let b = observed_batch(s);
            let Some(ce) = ceiling(c, n, b, r.machine.cores) else { continue };
            let replica_ms = median_of(&s.saturation, |p| p.cpu_per_1k);
            let loadgen_ms = median_of(&s.saturation, |p| p.loadgen_cpu_per_1k);
            let fsyncs =
                Spread::of(s.saturation.iter().filter_map(|p| p.replica_counters.map(|c| c.fsyncs_per_put))).median;
            let verifs =
                Spread::of(s.saturation.iter().filter_map(|p| p.replica_counters.map(|c| c.verifications_per_put)))
                    .median;
            let share =
                |part_us: f64, whole_ms: f64| if whole_ms > 0.0 { 100.0 * part_us / 1000.0 / whole_ms } else { 0.0 };
            let _ = writeln!(
                w,
                "\n- **{} at {v} B**: mean batch {b:.1} requests. Signatures as counted explain {:.3} ms of the replicas' {replica_ms:.3} ms CPU \
                 per put ({:.0}%) and {:.3} ms of the load generator's {loadgen_ms:.3} ms ({:.0}%: the client signs every request and checks f+1 signed replies, \
                 which etcd's and CometBFT's clients do not). The replicas counted {verifs:.2} signature verifications and {fsyncs:.2} WAL fsyncs per put. \
                 The rest of the CPU is the rest of the stack (gRPC/HTTP/2, tokio wake-ups, copies, the log).",
                s.label,
                ce.replica_cpu_us / 1000.0,
                share(ce.replica_cpu_us, replica_ms),
                ce.client_cpu_us / 1000.0,
                share(ce.client_cpu_us, loadgen_ms),
            );
        }
    }
    let _ = writeln!(
        w,
        "\nA profile of the whole machine during a saturation point (`perf record -a -F 499`, 12 s, flat; n=4, 256 clients, 100 B, \
         3870 puts/s; commit e6d0acb, not from this run; replicas and load generator together, since they share the cores): ed25519 \
         (curve arithmetic and its SHA-512) 37% of all samples (the replicas' checks and signatures, the client's request signatures \
         and reply checks), the kernel 14% (loopback TCP, wake-ups and context switches, fsync), malloc/free 12% and memcpy 4%, \
         gRPC/HTTP/2/protobuf 9%, tokio 5%, SHA-256 2%, idle 8%.\n"
    );
}

pub fn latency_plot(r: &RunResults) -> String {
    let mut series = vec![];
    let values: Vec<usize> = {
        let mut v: Vec<usize> = r.systems.iter().map(|s| s.value_size).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let systems = ["ours-n4", "ours-n7", "etcd", "cometbft"];
    for (si, sys) in systems.iter().enumerate() {
        for (vi, v) in values.iter().enumerate() {
            let Some(s) = find(r, sys, *v) else { continue };
            series.push(Series {
                label: format!("{} {} B", short(&s.system), v),
                color: PALETTE[si % PALETTE.len()],
                dashed: vi > 0,
                line: s.sweep.iter().filter(|p| p.completed > 0).map(|p| (p.throughput, p.latency_ms.p50)).collect(),
                marks: s.half.iter().filter(|p| p.completed > 0).map(|p| (p.throughput, p.latency_ms.p50)).collect(),
            });
        }
    }
    plot(
        &format!("p50 latency vs throughput (closed-loop sweep; {} run {})", r.mode, r.started_utc),
        "throughput (committed puts/s, log)",
        "p50 latency (ms, log)",
        &series,
    )
}

fn short(system: &str) -> &str {
    match system {
        "ours-n4" => "ours n=4",
        "ours-n7" => "ours n=7",
        "etcd" => "etcd",
        "cometbft" => "CometBFT",
        other => other,
    }
}

pub fn markdown(r: &RunResults, json: &Path, svg: &str) -> String {
    let mut m = String::new();
    let w = &mut m;
    let _ = writeln!(w, "# Benchmarks: ours (PBFT) against CometBFT and etcd\n");
    let _ = writeln!(
        w,
        "Generated by `bench/run.sh` (`pbft-bench`) from `{}`; do not edit by hand (`pbft-bench report --from <json>` regenerates it). \
         Issue 7 asks for these figures; `bench/README.md` says how to reproduce them.\n",
        json.display()
    );
    if r.mode == "quick" {
        let _ = writeln!(
            w,
            "> **Quick (smoke) run.** Points of a few seconds, one repeat, a short client list: this shows that every \
             part of the harness works, not what the systems can do. A full run (`bench/run.sh`, 60 s points, 3 repeats) \
             on a quiet machine is what to quote.\n"
        );
    }
    let _ = writeln!(
        w,
        "- Run: {} → {} (UTC), code `{}`, mode **{}**",
        r.started_utc,
        r.finished_utc.as_deref().unwrap_or("unfinished"),
        r.git_commit,
        r.mode
    );
    let _ = writeln!(
        w,
        "- Machine: {} cores, {}, kernel {}, {:.1} GiB; load average {:.2} at the start. Nothing is pinned: every system, \
         its processes and the load generator share all {} cores (as the other helpers' builds may).",
        r.machine.cores, r.machine.model, r.machine.kernel, r.machine.memory_gib, r.machine.loadavg_at_start, r.machine.cores
    );
    let pts = all_points(r);
    let noise = Spread::of(pts.iter().map(|p| foreign(p)));
    let _ = writeln!(
        w,
        "- Noise: CPU used by everything else on the machine during the measured windows: median {:.2}, max {:.2} cores (of {}) over {} points. \
         Repeats below are shown as median (min–max).",
        noise.median, noise.max, r.machine.cores, pts.len()
    );
    let steal = Spread::of(pts.iter().map(|p| if p.cpu.wall_s > 0.0 { p.cpu.steal_s / p.cpu.wall_s } else { 0.0 }));
    let _ = writeln!(
        w,
        "- CPU stolen by the hypervisor during the windows: median {:.2}, max {:.2} cores.",
        steal.median, steal.max
    );
    if let Some(n) = &r.noise {
        let pressure = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.0}%"));
        let _ = writeln!(
            w,
            "- Around the whole run: load average (1/5/15 min) {:.2} / {:.2} / {:.2} at the start, {:.2} / {:.2} / {:.2} at the end; \
             /proc/pressure/cpu \"some\" avg60 {} → {} (share of time some runnable task waited for a core); \
             mean busy cores {:.2} of {} (everything, the benchmark included), stolen {:.2}.",
            n.start.loadavg[0], n.start.loadavg[1], n.start.loadavg[2],
            n.end.loadavg[0], n.end.loadavg[1], n.end.loadavg[2],
            pressure(n.start.cpu_pressure_some_avg60),
            pressure(n.end.cpu_pressure_some_avg60),
            n.busy_cores,
            r.machine.cores,
            n.steal_cores
        );
    }
    let _ = writeln!(w, "- Command: `{}`\n", r.command);

    let values: Vec<usize> = {
        let mut v: Vec<usize> = r.systems.iter().map(|s| s.value_size).collect();
        v.sort_unstable();
        v.dedup();
        v
    };

    let _ = writeln!(w, "## Main table\n");
    let _ = writeln!(
        w,
        "Throughput at saturation: closed loop at the client count C where the sweep stopped rising. Latency: open loop at \
         50% of that throughput, measured from each put's intended send time. CPU: seconds over all of the system's \
         processes (utime+stime) per 1,000 committed puts at saturation; the load generator's own CPU apart (ours: it \
         signs each request and verifies f+1 signed replies). Peak RSS: the largest VmHWM among the system's processes, over the \
         sweep (which goes past saturation) and the reported points (run on a fresh cluster after the sweep).\n"
    );
    let _ = writeln!(w, "| system | value | puts/s at saturation | C | p50 ms at 50% | p99 ms at 50% | CPU s / 1k puts | loadgen CPU s / 1k | peak RSS MiB (max process) | errors | read back |");
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for v in &values {
        for s in r.systems.iter().filter(|s| s.value_size == *v) {
            let errors: u64 = s.saturation.iter().chain(&s.half).map(|p| p.errors + p.missed).sum();
            let rss = s.peak_rss.iter().map(|(_, b)| *b).max().unwrap_or(0);
            let _ = writeln!(
                w,
                "| {} | {} B | {} | {}{} | {} | {} | {:.3} | {:.3} | {:.1} | {} | {} |",
                s.label,
                v,
                spread(sat(s), 0),
                s.saturation_clients,
                if s.saturated { "" } else { " (not saturated)" },
                spread(half(s, |p| p.latency_ms.p50), 2),
                spread(half(s, |p| p.latency_ms.p99), 2),
                median_of(&s.saturation, |p| p.cpu_per_1k),
                median_of(&s.saturation, |p| p.loadgen_cpu_per_1k),
                mib(rss),
                errors,
                match s.read_back {
                    Some(true) => "ok",
                    Some(false) => "FAILED",
                    None => "–",
                }
            );
        }
    }

    let _ = writeln!(w, "\n## Ratios\n");
    let _ = writeln!(w, "| value | ours n=4 / CometBFT | ours n=4 / etcd | ours n=4 / crypto ceiling | ours n=7 / CometBFT | ours n=7 / etcd | ours n=7 / crypto ceiling |");
    let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|");
    for v in &values {
        let t = |sys: &str| find(r, sys, *v).map_or(0.0, |s| sat(s).median);
        let ceil = |sys: &str, n: usize| {
            let (Some(s), Some(c)) = (find(r, sys, *v), costs_for(r, *v)) else { return 0.0 };
            ceiling(c, n, observed_batch(s), r.machine.cores).map_or(0.0, |c| c.with_clients_per_sec)
        };
        let _ = writeln!(
            w,
            "| {v} B | {} | {} | {} | {} | {} | {} |",
            ratio(t("ours-n4"), t("cometbft")),
            ratio(t("ours-n4"), t("etcd")),
            ratio(t("ours-n4"), ceil("ours-n4", 4)),
            ratio(t("ours-n7"), t("cometbft")),
            ratio(t("ours-n7"), t("etcd")),
            ratio(t("ours-n7"), ceil("ours-n7", 7)),
        );
    }

    let _ = writeln!(w, "\n## Ratios per sweep point (same C, same value size)\n");
    let _ = writeln!(
        w,
        "Closed loop, the same client count C against each system in the same run: the ratio of throughputs \
         (ours / peer; above 1: ours is faster) and of p50 latencies (ours / peer; above 1: ours is slower). \
         A sweep stops two points past its best, so a system may lack the larger C.\n"
    );
    for v in &values {
        let get = |sys: &str, c: usize| {
            find(r, sys, *v)?
                .sweep
                .iter()
                .find(|p| p.shape == Shape::Closed { clients: c })
                .map(|p| (p.throughput, p.latency_ms.p50))
        };
        let mut cs: Vec<usize> = r
            .systems
            .iter()
            .filter(|s| s.value_size == *v)
            .flat_map(|s| {
                s.sweep.iter().filter_map(|p| match p.shape {
                    Shape::Closed { clients } => Some(clients),
                    Shape::Open { .. } => None,
                })
            })
            .collect();
        cs.sort_unstable();
        cs.dedup();
        let _ = writeln!(w, "{v} B:\n");
        let _ = writeln!(w, "| C | ours n=4 puts/s | ours n=7 | etcd | CometBFT | n=4 / etcd | n=4 / CometBFT | n=7 / etcd | n=7 / CometBFT | p50 ms n=4 / etcd / CometBFT | p50 n=4 / etcd | p50 n=4 / CometBFT |");
        let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
        let num = |x: Option<(f64, f64)>| x.map_or("–".to_string(), |(t, _)| format!("{t:.0}"));
        let rat = |a: Option<(f64, f64)>, b: Option<(f64, f64)>, lat: bool| match (a, b) {
            (Some(a), Some(b)) if lat => ratio(a.1, b.1),
            (Some(a), Some(b)) => ratio(a.0, b.0),
            _ => "–".into(),
        };
        let ms = |x: Option<(f64, f64)>| x.map_or("–".to_string(), |(_, l)| format!("{l:.1}"));
        for c in cs {
            let (o4, o7, e, cb) = (get("ours-n4", c), get("ours-n7", c), get("etcd", c), get("cometbft", c));
            let _ = writeln!(
                w,
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |",
                num(o4),
                num(o7),
                num(e),
                num(cb),
                rat(o4, e, false),
                rat(o4, cb, false),
                rat(o7, e, false),
                rat(o7, cb, false),
                ms(o4),
                ms(e),
                ms(cb),
                rat(o4, e, true),
                rat(o4, cb, true),
            );
        }
        let _ = writeln!(w);
    }

    where_ours_loses(w, r, &values);

    let _ = writeln!(w, "\n## Issue 7's targets\n");
    if let Some(v) = values.first() {
        let t = |sys: &str| find(r, sys, *v).map_or(0.0, |s| sat(s).median);
        let ours = t("ours-n4");
        if ours > 0.0 {
            if t("cometbft") > 0.0 {
                let _ = writeln!(
                    w,
                    "- Throughput at n=4 ≥ 10× CometBFT's ({v} B): {} ({})",
                    verdict(ours >= 10.0 * t("cometbft")),
                    ratio(ours, t("cometbft"))
                );
            }
            if t("etcd") > 0.0 {
                let _ = writeln!(
                    w,
                    "- Throughput at n=4 ≥ etcd's 3-member throughput ({v} B): {} ({})",
                    verdict(ours >= t("etcd")),
                    ratio(ours, t("etcd"))
                );
            }
            if let (Some(s), Some(c)) = (find(r, "ours-n4", *v), costs_for(r, *v)) {
                let ce = ceiling(c, 4, observed_batch(s), r.machine.cores).map_or(0.0, |c| c.with_clients_per_sec);
                let _ = writeln!(
                    w,
                    "- Throughput at n=4 ≥ 50% of the crypto ceiling ({v} B): {} ({:.0}%)",
                    verdict(ours >= 0.5 * ce),
                    100.0 * ours / ce
                );
                let p50 = half(s, |p| p.latency_ms.p50).median;
                let _ = writeln!(
                    w,
                    "- p50 latency at half of saturation < 5 ms at n=4 ({v} B): {} ({p50:.2} ms)",
                    verdict(p50 > 0.0 && p50 < 5.0)
                );
            }
            for f in r.byzantine.iter().filter(|f| f.faults == "flood") {
                let ft = median_of(&f.points, |p| p.throughput);
                let _ = writeln!(
                    w,
                    "- One flooding replica costs < 20% of throughput: {} ({:.0}% of the honest n=4 throughput)",
                    verdict(ft >= 0.8 * ours),
                    100.0 * ft / ours
                );
            }
        } else {
            let _ = writeln!(w, "- ours n=4 did not run at {v} B: no verdicts.");
        }
    }

    let _ = writeln!(w, "\n## Latency against throughput\n");
    let _ = writeln!(w, "![p50 latency against throughput]({svg})\n");
    let _ = writeln!(w, "Lines: the closed-loop sweep (C = 1, 2, 4, …), solid for the first value size, dashed for the second; hollow circles: the open-loop points at 50% of saturation.\n");

    let _ = writeln!(w, "## The crypto ceiling\n");
    let _ = writeln!(w, "ed25519-dalek on one core, in CPU time of the measuring thread (so other processes taking the core do not inflate it), measured by `pbft::bench::measure_crypto`: best of 5 rounds (all rounds' range in brackets), batches through `ed25519_dalek::verify_batch` on one thread.\n");
    let _ = writeln!(
        w,
        "| message | sign µs | verify µs | batch of 8, µs/sig | batch of 64, µs/sig | SHA-256 of 1 KiB µs |"
    );
    let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|");
    for c in &r.crypto {
        let range = |v: &[f64]| {
            let s = Spread::of(v.iter().copied());
            if v.is_empty() {
                String::new()
            } else {
                format!(" ({:.1}–{:.1})", s.min, s.max)
            }
        };
        let _ = writeln!(
            w,
            "| {} B | {:.1}{} | {:.1}{} | {:.1} | {:.1} | {:.2} |",
            c.message_bytes,
            c.sign_us,
            range(&c.sign_rounds_us),
            c.verify_us,
            range(&c.verify_rounds_us),
            c.verify_batch8_us,
            c.verify_batch64_us,
            c.sha256_1kib_us
        );
    }
    let _ = writeln!(
        w,
        "\nSignatures per request, as `pbft::bench::SignatureCounts` counts them (n replicas, f = (n-1)/3, b requests per batch, a checkpoint every 64 sequence numbers):\n\n\
         - the client signs its request (1) and verifies replies until f+1 match (f+1);\n\
         - every replica verifies the request once (n; the verified-signature cache spares a backup a second check when the request comes again inside a PRE-PREPARE);\n\
         - per batch: PRE-PREPARE 1 sign + (n-1) verifies, PREPARE (n-1) signs + (n-1)² verifies, COMMIT n signs + n(n-1) verifies, replies n signs (each replica signs the root of a Merkle tree over the batch's replies once) (protocol messages are batch-verified, priced at the batch-of-8 or batch-of-64 cost);\n\
         - per checkpoint: n signs + n(n-1) verifies.\n\n\
         Ceiling = cores × 10⁶ / (crypto µs per request): the most puts/s this machine could commit if signatures were the only cost, \
         with the replicas' work alone and with the client's signing and reply checks on the same cores (as in this run; the ratios use this one). \
         `verifications/put` is what the replicas' own `pbft_signature_verifications_total` counted at saturation (replicas only).\n"
    );
    let _ = writeln!(w, "| n | value | b (batch) | replica signs / req | replica verifies / req | replica crypto µs / req | client crypto µs / req | ceiling, replicas only, puts/s | ceiling with clients, puts/s | measured verifications/put |");
    let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (sys, n) in [("ours-n4", 4usize), ("ours-n7", 7)] {
        for v in &values {
            let Some(c) = costs_for(r, *v) else { continue };
            // No observed batch where nothing committed at saturation (the counters would mean nothing).
            let observed = find(r, sys, *v).filter(|s| sat(s).median >= 1.0).map(observed_batch);
            let measured = find(r, sys, *v).map(|s| {
                Spread::of(s.saturation.iter().filter_map(|p| p.replica_counters.map(|c| c.verifications_per_put)))
                    .median
            });
            let mut bs: Vec<(String, f64)> = vec![("1".into(), 1.0), ("16".into(), 16.0), ("512".into(), 512.0)];
            if let Some(b) = observed {
                bs.insert(0, (format!("{b:.1} (observed)"), b.max(1.0)));
            }
            for (label, b) in bs {
                let Some(ce) = ceiling(c, n, b, r.machine.cores) else { continue };
                let _ = writeln!(
                    w,
                    "| {n} | {v} B | {label} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    ce.counts.replica_signs,
                    ce.counts.request_verifies + ce.counts.message_verifies,
                    ce.replica_cpu_us,
                    ce.client_cpu_us,
                    ce.replicas_only_per_sec,
                    ce.with_clients_per_sec,
                    if label.contains("observed") {
                        measured.map_or("–".into(), |x| format!("{x:.2}"))
                    } else {
                        "".into()
                    }
                );
            }
        }
    }

    let _ = writeln!(w, "\n## One Byzantine replica (ours, n=4)\n");
    if r.byzantine.is_empty() {
        let _ = writeln!(w, "Not run (see the notes).");
    } else {
        let _ = writeln!(w, "The same closed-loop C as the honest n=4 saturation point; the faulty replica runs the fault-injection build (`PBFT_FAULTS`, `replica/src/server/faults.rs`): `flood` sends 16 far-future PREPAREs with every broadcast, `equivocate` (as the primary of view 0) a second, conflicting PRE-PREPARE for every slot.\n");
        let _ = writeln!(w, "| faults | faulty replica | C | puts/s | vs honest n=4 | p50 ms | p99 ms | errors | peak RSS MiB (max) | memory limit MiB | views after | evidence records |");
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
        for f in &r.byzantine {
            let honest = find(r, "ours-n4", f.value_size).map_or(0.0, |s| sat(s).median);
            let t = Spread::of(f.points.iter().map(|p| p.throughput));
            let rss = f.peak_rss.iter().map(|(_, b)| *b).max().unwrap_or(0);
            let limit =
                f.status.iter().filter_map(|s| s.get("memory_limit_bytes").and_then(|x| x.as_u64())).max().unwrap_or(0);
            let views: Vec<String> = f.status.iter().filter_map(|s| s.get("view").map(|v| v.to_string())).collect();
            let ev: Vec<String> = f.status.iter().filter_map(|s| s.get("evidence").map(|v| v.to_string())).collect();
            let _ = writeln!(
                w,
                "| {} | r{} | {} | {} | {} | {:.2} | {:.2} | {} | {:.1} | {:.0} | {} | {} |",
                f.faults,
                f.faulty_replica,
                f.clients,
                spread(t, 0),
                if honest > 0.0 { format!("{:.0}%", 100.0 * t.median / honest) } else { "n/a".into() },
                median_of(&f.points, |p| p.latency_ms.p50),
                median_of(&f.points, |p| p.latency_ms.p99),
                f.points.iter().map(|p| p.errors).sum::<u64>(),
                mib(rss),
                mib(limit),
                views.join(","),
                ev.join(",")
            );
        }
    }

    let _ = writeln!(w, "\n## View change (ours, n=4)\n");
    match &r.view_change {
        None => {
            let _ = writeln!(w, "Not run (see the notes).");
        }
        Some(v) => {
            let _ = writeln!(
                w,
                "Closed loop at C={}, {} B; the primary (r{}, view {}) is killed with SIGKILL {:.1} s into the run (half-way through the measured window). \
                 Longest stretch without a committed put, ending after the kill: **{}**. Throughput before the kill {:.0} puts/s, from 1 s after the gap to the end of the window {}; \
                 view afterwards: {}. Errors in the window: {}. The replicas' view-change timeout is the default 1000 ms.\n",
                v.clients,
                v.value_size,
                v.killed_replica,
                v.view_before,
                v.kill_at_s,
                v.gap_ms.map_or("none committed after the kill".into(), |g| format!("{g:.0} ms")),
                v.throughput_before,
                v.throughput_after.map_or("n/a (the window ended first)".into(), |t| format!("{t:.0} puts/s")),
                v.view_after.map_or("unknown".into(), |x| x.to_string()),
                v.point.errors
            );
            let tl: Vec<String> =
                v.point.timeline_100ms.chunks(5).map(|c| (c.iter().sum::<u32>() * 2).to_string()).collect();
            let _ = writeln!(
                w,
                "Committed puts per second in 500 ms steps from the start (warm-up included): {}\n",
                tl.join(" ")
            );
        }
    }

    if !r.comet_timeout_probe.is_empty() {
        let _ = writeln!(w, "## CometBFT `timeout_commit`\n");
        let _ = writeln!(
            w,
            "Each candidate on a fresh 4-validator network at one closed-loop point; the highest throughput was used for every CometBFT figure above: **{}**. \
             `timeout_commit` is how long a validator waits after committing a block before the next height (default 1 s); 0 s still waits for \
             +2/3 of the precommits, it only stops waiting for the remaining ones.\n",
            r.comet_timeout_commit.as_deref().unwrap_or("?")
        );
        let _ = writeln!(w, "| timeout_commit | shape | puts/s | p50 ms | p99 ms | errors |");
        let _ = writeln!(w, "|---|---|---:|---:|---:|---:|");
        for t in &r.comet_timeout_probe {
            let _ = writeln!(
                w,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
                t.timeout_commit,
                shape(&t.point),
                t.point.throughput,
                t.point.latency_ms.p50,
                t.point.latency_ms.p99,
                t.point.errors
            );
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Sweeps\n");
    for s in &r.systems {
        let _ = writeln!(w, "**{}, {} B** ({}; {} processes)\n", s.label, s.value_size, s.version, s.processes);
        let _ = writeln!(w, "| shape | puts/s | p50 ms | p90 ms | p99 ms | max ms | errors | CPU s / 1k | loadgen s / 1k | others' cores | batch | fsyncs/put |");
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for p in s.sweep.iter().chain(&s.saturation).chain(&s.half) {
            let (b, fs) = p.replica_counters.map_or(("".into(), "".into()), |c| {
                (format!("{:.1}", c.mean_batch), format!("{:.2}", c.fsyncs_per_put))
            });
            let _ = writeln!(
                w,
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {}{} | {:.3} | {:.3} | {:.2} | {b} | {fs} |",
                shape(p),
                p.throughput,
                p.latency_ms.p50,
                p.latency_ms.p90,
                p.latency_ms.p99,
                p.latency_ms.max,
                p.errors,
                if p.missed > 0 { format!(" (+{} missed)", p.missed) } else { "".into() },
                p.cpu_per_1k,
                p.loadgen_cpu_per_1k,
                foreign(p),
            );
        }
        let errs: Vec<&String> =
            s.sweep.iter().chain(&s.saturation).chain(&s.half).filter_map(|p| p.first_error.as_ref()).collect();
        if let Some(e) = errs.first() {
            let _ = writeln!(w, "\nFirst error seen: `{}`", e.replace('`', "'"));
        }
        let rss: Vec<String> = s.peak_rss.iter().map(|(n, b)| format!("{n} {:.1}", mib(*b))).collect();
        let _ = writeln!(w, "\nPeak RSS per process (MiB): {}. Settings: `{}`\n", rss.join(", "), s.config);
    }

    let _ = writeln!(w, "## How each system was run, and what is not equal\n");
    let _ = writeln!(w, "{}", FAIRNESS);
    if !r.notes.is_empty() {
        let _ = writeln!(w, "\n## Notes from this run\n");
        for n in &r.notes {
            let _ = writeln!(w, "- {n}");
        }
    }
    let _ = writeln!(w, "\n## Reproduce\n\n```sh\nbench/run.sh            # full run (see bench/README.md for time and flags)\nbench/run.sh --quick    # smoke run of every part\n```");
    m
}

const FAIRNESS: &str = "\
- One load generator (`bench/loadgen`, `pbft-bench`) for all three, same settings: the same client counts, rates, warm-up and \
  window, the same key space (10,000 keys, each client cycling over its own share) and value sizes; each put is unique (a \
  counter in the value). It runs on the same cores as the system under test and its CPU is reported apart.
- **Ours**: `pbft-replica` release build, n processes, each with its own data dir and write-ahead log (fsynced per group \
  commit, always on), default protocol settings. The client is `pbft::kvclient::KvClient`: it signs each request, sends it to \
  f+1 members (the primary it knows and the next f; to everyone after a few usual latencies without f+1 matching replies) \
  and waits for f+1 matching signed replies; each replica signs one Merkle root over a batch's replies.
- **etcd**: 3 members, etcd's defaults (fsync on, no auto-compaction), data under the work dir on the same disk. Puts through \
  gRPC `KV.Put`, clients spread over the members (followers forward to the leader). A put is acknowledged once the leader \
  has it committed by a majority — a crash-fault-tolerant baseline that signs nothing.
- **CometBFT**: 4 validators, the built-in kvstore app in the node's process, one HTTP/1.1 connection per client to one \
  validator (client i to validator i mod 4). `broadcast_tx_commit` is used because it returns only once the tx is in a \
  committed block, which is what our client's reply and etcd's Put acknowledgement mean; `broadcast_tx_sync` returns after \
  CheckTx only and would need a second round trip (polling the tx index) to learn the commit, adding latency of its own. \
  Changed from the defaults: `timeout_commit` (probed, see above), `mempool.size` / `cache_size` raised (so a wide sweep is \
  not refused as full), `rpc.max_subscription_clients` raised and `max_open_connections` unlimited (every \
  `broadcast_tx_commit` holds a subscription), `p2p.send_rate` / `recv_rate` 50 MB/s instead of 5 MB/s, `p2p.flush_throttle_timeout` 10 ms instead of 100 ms (the \
  value of CometBFT's own test configuration; 100 ms delays every consensus message), \
  `consensus.peer_gossip_sleep_duration` 10 ms instead of 100 ms (its test configuration has 5 ms), `tx_index = null`, \
  `log_level = error`.
- **Not equal, and not removable here**: (1) everything shares one small machine, so a system with more processes (ours \
  n=7) or a heavier client (ours: ed25519 per request and per reply) pays for it in the same cores; (2) the default kvstore \
  keeps its state in memory (its blocks and consensus WAL are on disk, so it is durable by replay), whereas our state machine \
  and etcd's bbolt are checkpointed/written to disk; (3) CometBFT's client talks to one validator and trusts it, ours talks to \
  f+1 and trusts f+1 matching replies — BFT at the client as well; (4) etcd is crash-tolerant only: it needs 3 members where BFT needs 4 for one \
  fault; (5) logging was lowered to warn/error on all three; (6) loopback has no network latency, which flatters the \
  protocols with more message rounds (PBFT: three phases; CometBFT: propose/prevote/precommit) less than a real network would.";
