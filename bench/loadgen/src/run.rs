//! `pbft-bench run`: the whole comparison in one process, one system at a
//! time on a fresh cluster, writing the JSON after each step and the report
//! at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::clients::Target;
use crate::error::{io, BenchError};
use crate::load::{run_point, Point, PointOptions, Shape, Timing, Workload};
use crate::procstat::{Machine, MachineSample, RunNoise};
use crate::results::{utc_now, FaultResult, RunResults, Spread, SystemResult, TimeoutProbe, ViewChangeResult, SCHEMA};
use crate::systems::comet::{self, CometConfig};
use crate::systems::ours::{self, Faulty, OursConfig};
use crate::systems::{etcd, Cluster};

/// Message sizes the crypto costs are measured at: a protocol vote, and a request with a 1 KiB value.
pub const CRYPTO_MESSAGE_BYTES: [usize; 2] = [150, 1100];

/// ed25519 costs at `bytes` for about `seconds` in all (5 rounds, best kept, all recorded).
pub fn measure_crypto(bytes: usize, seconds: f64) -> pbft::bench::CryptoCosts {
    // One sign+verify pair is ~100 µs: size the rounds so that the six figures take `seconds`.
    let iterations = ((seconds / 5.0 / 6.0) / 100e-6).max(50.0) as usize;
    pbft::bench::measure_crypto(bytes, iterations, 5)
}

/// Flags of `pbft-bench run`; unset ones take the full-run or (`--quick`) smoke-run default.
#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct RunArgs {
    /// Smoke run: 3 s points, 1 repeat, a short client list (the figures mean little).
    #[arg(long)]
    pub quick: bool,
    /// Measured seconds of each reported point (saturation, half load, faults, view change) [60; quick 3].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Warm-up seconds before each reported point [10; quick 1].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Measured seconds of each sweep point [20; quick 2].
    #[arg(long)]
    pub sweep_duration: Option<f64>,
    /// Warm-up seconds of each sweep point [5; quick 1].
    #[arg(long)]
    pub sweep_warmup: Option<f64>,
    /// Repeats of the reported points (min/median/max) [3; quick 1].
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Closed-loop client counts of the sweep, ascending [1,2,4,...,2048; quick 1,4,16,64,256].
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Value sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1024])]
    pub values: Vec<usize>,
    /// Systems to run: ours-n4, ours-n7, etcd, cometbft.
    #[arg(long, value_delimiter = ',', default_values_t = ["ours-n4".to_string(), "ours-n7".into(), "etcd".into(), "cometbft".into()])]
    pub systems: Vec<String>,
    /// Distinct keys over all clients.
    #[arg(long, default_value_t = 10_000)]
    pub keyspace: u64,
    /// CometBFT timeout_commit candidates, each probed at one closed-loop point; the best is used [0s,10ms,100ms,1s].
    #[arg(long, value_delimiter = ',')]
    pub comet_timeouts: Vec<String>,
    /// CometBFT p2p.flush_throttle_timeout (its default is 100ms).
    #[arg(long, default_value = "10ms")]
    pub comet_flush_throttle: String,
    /// CometBFT consensus.peer_gossip_sleep_duration (its default is 100ms).
    #[arg(long, default_value = "10ms")]
    pub comet_gossip_sleep: String,
    /// CometBFT app: kvstore (in memory) or persistent_kvstore.
    #[arg(long, default_value = "kvstore")]
    pub comet_app: String,
    /// Byzantine runs of ours at n=4 (PBFT_FAULTS values; empty: none).
    #[arg(long, value_delimiter = ',', default_values_t = ["flood".to_string(), "equivocate".into()])]
    pub byzantine: Vec<String>,
    /// Extra argument for every one of our replicas (repeatable), e.g. --replica-arg=--max-inflight-batches=4.
    #[arg(long = "replica-arg", allow_hyphen_values = true)]
    pub replica_args: Vec<String>,
    /// Skip the Byzantine runs (then bench/run.sh does not build the fault-injection replica).
    #[arg(long)]
    pub no_byzantine: bool,
    /// Skip the view-change run.
    #[arg(long)]
    pub no_view_change: bool,
    /// Seconds of crypto measurement per message size [2; quick 0.3].
    #[arg(long)]
    pub crypto_seconds: Option<f64>,
    #[arg(long, env = "PBFT_BENCH_REPLICA")]
    pub replica_bin: PathBuf,
    /// The fault-injection build of pbft-replica (without it the Byzantine runs are skipped).
    #[arg(long, env = "PBFT_BENCH_FI_REPLICA")]
    pub fi_replica_bin: Option<PathBuf>,
    #[arg(long, env = "PBFT_BENCH_ETCD")]
    pub etcd_bin: Option<PathBuf>,
    #[arg(long, env = "PBFT_BENCH_COMETBFT")]
    pub cometbft_bin: Option<PathBuf>,
    /// Data dirs and logs of the clusters (on disk: every system fsyncs here).
    #[arg(long, default_value = "/var/tmp/pbft-bench")]
    pub work_dir: PathBuf,
    /// Keep data dirs and logs.
    #[arg(long)]
    pub keep: bool,
    #[arg(long, default_value = "bench/results")]
    pub results_dir: PathBuf,
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub report: PathBuf,
    /// Git commit of the code under test (recorded in the JSON).
    #[arg(long, env = "PBFT_BENCH_GIT", default_value = "unknown")]
    pub git_commit: String,
}

/// The resolved settings (recorded in the JSON).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub point: Timing,
    pub sweep: Timing,
    pub repeats: usize,
    pub clients: Vec<usize>,
    pub values: Vec<usize>,
    pub systems: Vec<String>,
    pub keyspace: u64,
    pub comet_timeouts: Vec<String>,
    pub comet_app: String,
    pub comet_mempool_size: u64,
    pub byzantine: Vec<String>,
    pub view_change: bool,
    pub crypto_seconds: f64,
}

impl RunArgs {
    pub fn plan(&self) -> Result<Plan, BenchError> {
        let q = self.quick;
        let pick = |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
        let clients = if !self.clients.is_empty() {
            self.clients.clone()
        } else if q {
            vec![1, 4, 16, 64, 256]
        } else {
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
        };
        if clients.windows(2).any(|w| w[0] >= w[1]) || clients.first().is_none_or(|c| *c == 0) {
            return Err(BenchError::Arg(format!("--clients must be ascending and positive, got {clients:?}")));
        }
        for s in &self.systems {
            if !["ours-n4", "ours-n7", "etcd", "cometbft"].contains(&s.as_str()) {
                return Err(BenchError::Arg(format!("unknown system {s:?} (ours-n4, ours-n7, etcd, cometbft)")));
            }
        }
        if self.values.iter().any(|v| *v < 16 || *v > 65536) {
            return Err(BenchError::Arg("value sizes must be 16..=65536 bytes".into()));
        }
        let comet_timeouts = if !self.comet_timeouts.is_empty() {
            self.comet_timeouts.clone()
        } else if q {
            vec!["10ms".into(), "1s".into()]
        } else {
            vec!["0s".into(), "10ms".into(), "100ms".into(), "1s".into()]
        };
        let max_clients = clients.last().copied().unwrap_or(1);
        let plan = Plan {
            point: Timing { warmup_s: pick(self.warmup, 10.0, 1.0), measure_s: pick(self.duration, 60.0, 3.0) },
            sweep: Timing {
                warmup_s: pick(self.sweep_warmup, 5.0, 1.0),
                measure_s: pick(self.sweep_duration, 20.0, 2.0),
            },
            repeats: self.repeats.unwrap_or(if q { 1 } else { 3 }).max(1),
            clients,
            values: self.values.clone(),
            systems: self.systems.clone(),
            keyspace: self.keyspace.max(1),
            comet_timeouts,
            comet_app: self.comet_app.clone(),
            comet_mempool_size: (4 * max_clients as u64).max(10_000),
            byzantine: if self.no_byzantine {
                vec![]
            } else {
                self.byzantine.iter().filter(|s| !s.is_empty()).cloned().collect()
            },
            view_change: !self.no_view_change,
            crypto_seconds: pick(self.crypto_seconds, 2.0, 0.3),
        };
        if plan.point.measure_s <= 0.0 || plan.sweep.measure_s <= 0.0 {
            return Err(BenchError::Arg("durations must be positive".into()));
        }
        Ok(plan)
    }
}

impl Plan {
    /// A rough upper bound of the run's length in seconds (every sweep point run).
    pub fn estimate_s(&self) -> f64 {
        let startup = 15.0;
        let sweep = self.clients.len() as f64 * (self.sweep.warmup_s + self.sweep.measure_s + 1.0);
        let points = 2.0 * self.repeats as f64 * (self.point.warmup_s + self.point.measure_s + 1.0);
        let per_system = 2.0 * startup + sweep + points;
        let comet_probe = if self.systems.iter().any(|s| s == "cometbft") {
            self.comet_timeouts.len() as f64 * (startup + self.sweep.warmup_s + self.sweep.measure_s)
        } else {
            0.0
        };
        let faults =
            (self.byzantine.len() * self.repeats) as f64 * (startup + self.point.warmup_s + self.point.measure_s);
        let vc = if self.view_change { startup + self.point.warmup_s + self.point.measure_s } else { 0.0 };
        self.values.len() as f64 * self.systems.len() as f64 * per_system
            + comet_probe
            + faults
            + vc
            + 2.0 * self.crypto_seconds
    }
}

struct Runner {
    args: RunArgs,
    plan: Plan,
    results: RunResults,
    json: PathBuf,
}

fn log(msg: &str) {
    eprintln!("[pbft-bench {}] {msg}", utc_now().0);
}

fn point_line(p: &Point) -> String {
    let shape = match p.shape {
        Shape::Closed { clients } => format!("closed C={clients}"),
        Shape::Open { rate, .. } => format!("open R={rate:.0}/s"),
    };
    format!(
        "{shape:<16} {:>9.0} req/s  p50 {:>8.2} ms  p99 {:>8.2} ms  errors {}  missed {}  cpu {:.3} s/1k (loadgen {:.3})  others {:.2} cores{}",
        p.throughput,
        p.latency_ms.p50,
        p.latency_ms.p99,
        p.errors,
        p.missed,
        p.cpu_per_1k,
        p.loadgen_cpu_per_1k,
        if p.cpu.wall_s > 0.0 { p.cpu.foreign_s / p.cpu.wall_s } else { 0.0 },
        p.first_error.as_ref().map(|e| format!("  first error: {e}")).unwrap_or_default()
    )
}

impl Runner {
    fn save(&self) -> Result<(), BenchError> {
        self.results.save(&self.json)
    }

    fn note(&mut self, msg: String) {
        log(&format!("NOTE: {msg}"));
        self.results.notes.push(msg);
    }

    async fn point(
        &mut self,
        cluster: &mut Cluster,
        shape: Shape,
        value_size: usize,
        timing: Timing,
    ) -> Result<Point, BenchError> {
        cluster.check_alive()?;
        let w = Workload { value_size, keyspace: self.plan.keyspace };
        let p = run_point(
            &cluster.target,
            shape,
            w,
            timing,
            &cluster.pids(),
            &cluster.metrics,
            PointOptions::default(),
            None,
        )
        .await?;
        log(&format!("  {:<10} {:>5} B  {}", cluster.name, value_size, point_line(&p)));
        if p.errors > 0 || p.completed == 0 {
            // What our replicas say right after a troubled point (view, progress, readiness).
            let st = ours::status_summary(cluster).await;
            if !st.is_empty() {
                let brief: Vec<String> = st
                    .iter()
                    .map(|s| match s.get("error") {
                        Some(e) => format!("r{}: {e}", s["id"]),
                        None => {
                            format!("r{} view {} exec {} ready {}", s["id"], s["view"], s["executed_seq"], s["ready"])
                        }
                    })
                    .collect();
                let what = point_line(&p).split("  ").next().unwrap_or("").to_string();
                self.note(format!(
                    "{} {what}: {} errors, {} committed; replicas then: {}",
                    cluster.name,
                    p.errors,
                    p.completed,
                    brief.join("; ")
                ));
            }
        }
        Ok(p)
    }

    /// Starts a system, retrying twice with new ports when a process exits at once (a port
    /// picked free was taken by someone else before the process bound it).
    async fn start(
        &self,
        system: &str,
        value_size: usize,
        comet_timeout: &str,
    ) -> Result<(Cluster, String, serde_json::Value), BenchError> {
        let mut attempt = 0;
        loop {
            match self.start_once(system, value_size, comet_timeout).await {
                Err(BenchError::Exited { what, status, log: path }) if attempt < 2 => {
                    let tail = std::fs::read_to_string(&path).unwrap_or_default();
                    log(&format!(
                        "{system}: {what} exited ({status}): {}; retrying",
                        tail.lines().last().unwrap_or("")
                    ));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        &self,
        system: &str,
        value_size: usize,
        comet_timeout: &str,
    ) -> Result<(Cluster, String, serde_json::Value), BenchError> {
        let name = format!("{system}-{value_size}");
        let base = &self.args.work_dir;
        let keep = self.args.keep;
        match system {
            "ours-n4" | "ours-n7" => {
                let n = if system == "ours-n4" { 4 } else { 7 };
                let cfg = OursConfig {
                    n,
                    binary: self.args.replica_bin.clone(),
                    faulty: None,
                    extra_args: self.args.replica_args.clone(),
                };
                let c = ours::start(&cfg, base, &name, keep).await?;
                Ok((
                    c,
                    format!("pbft-replica {}", self.args.git_commit),
                    serde_json::json!({"n": n, "durable_log": "always (fsync per group commit)", "flags": if self.args.replica_args.is_empty() { "defaults".to_string() } else { self.args.replica_args.join(" ") }, "PBFT_LOG": "warn"}),
                ))
            }
            "etcd" => {
                let bin = self
                    .args
                    .etcd_bin
                    .clone()
                    .ok_or_else(|| BenchError::Arg("--etcd-bin is required for etcd".into()))?;
                let c = etcd::start(&bin, base, &name, keep).await?;
                Ok((
                    c,
                    etcd::version(&bin),
                    serde_json::json!({"members": etcd::MEMBERS, "settings": "etcd defaults (fsync on, snapshot-count 10000, no auto-compaction), --log-level warn", "client": "gRPC KV.Put, clients spread over the 3 members, one HTTP/2 connection per member"}),
                ))
            }
            "cometbft" => {
                let bin = self
                    .args
                    .cometbft_bin
                    .clone()
                    .ok_or_else(|| BenchError::Arg("--cometbft-bin is required for cometbft".into()))?;
                let cfg = self.comet_config(comet_timeout);
                let c = comet::start(&bin, &cfg, base, &name, keep).await?;
                Ok((c, comet::version(&bin), serde_json::to_value(&cfg).unwrap_or_default()))
            }
            other => Err(BenchError::Arg(format!("unknown system {other}"))),
        }
    }

    fn comet_config(&self, timeout_commit: &str) -> CometConfig {
        CometConfig {
            validators: 4,
            timeout_commit: timeout_commit.to_string(),
            app: self.plan.comet_app.clone(),
            mempool_size: self.plan.comet_mempool_size,
            max_clients: 2 * self.plan.clients.last().copied().unwrap_or(1) + 64,
            flush_throttle: self.args.comet_flush_throttle.clone(),
            gossip_sleep: self.args.comet_gossip_sleep.clone(),
        }
    }

    /// Probes each timeout_commit candidate at one closed-loop point; returns the fastest.
    async fn choose_comet_timeout(&mut self) -> Result<String, BenchError> {
        if let Some(t) = &self.results.comet_timeout_commit {
            return Ok(t.clone());
        }
        let value = self.plan.values.first().copied().unwrap_or(100);
        let clients = self.plan.clients.iter().copied().filter(|c| *c <= 256).last().unwrap_or(1);
        let mut best: Option<(f64, String)> = None;
        for t in self.plan.comet_timeouts.clone() {
            log(&format!("cometbft: probing timeout_commit={t} at C={clients}"));
            let (mut c, _, _) = self.start("cometbft", value, &t).await?;
            let p = self.point(&mut c, Shape::Closed { clients }, value, self.plan.sweep).await?;
            c.stop();
            if best.as_ref().is_none_or(|(b, _)| p.throughput > *b) {
                best = Some((p.throughput, t.clone()));
            }
            self.results.comet_timeout_probe.push(TimeoutProbe { timeout_commit: t, point: p });
            self.save()?;
        }
        let chosen = best.map(|(_, t)| t).unwrap_or_else(|| "1s".into());
        log(&format!("cometbft: timeout_commit={chosen} chosen (highest probe throughput)"));
        self.results.comet_timeout_commit = Some(chosen.clone());
        Ok(chosen)
    }

    async fn system(&mut self, system: &str, value_size: usize) -> Result<(), BenchError> {
        let comet_timeout = if system == "cometbft" { self.choose_comet_timeout().await? } else { String::new() };
        log(&format!("{system} {value_size} B: starting"));
        let (mut cluster, version, config) = self.start(system, value_size, &comet_timeout).await?;
        // Sweep C until throughput stops rising (two points without +5%), errors pass 20% or p50 passes 10 s.
        let mut sweep: Vec<Point> = vec![];
        let mut best = 0.0f64;
        let mut stale = 0;
        let mut saturated = false;
        for c in self.plan.clients.clone() {
            let p = self.point(&mut cluster, Shape::Closed { clients: c }, value_size, self.plan.sweep).await?;
            let bad = p.errors as f64 > 0.2 * (p.completed + p.errors) as f64 || p.latency_ms.p50 > 10_000.0;
            if p.throughput > best * 1.05 {
                best = p.throughput;
                stale = 0;
            } else {
                stale += 1;
            }
            sweep.push(p);
            if stale >= 2 || bad {
                saturated = true;
                break;
            }
        }
        // The list ran out: saturated if the last point did not raise the best.
        saturated |= stale >= 1;
        let sat = sweep
            .iter()
            .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
            .ok_or_else(|| BenchError::Setup("empty sweep".into()))?;
        let sat_clients = match sat.shape {
            Shape::Closed { clients } => clients,
            Shape::Open { .. } => 1,
        };
        if !saturated {
            self.note(format!(
                "{system} {value_size} B: throughput still rising at C={sat_clients}, the end of --clients: saturation not reached"
            ));
        }
        // The reported points on a fresh cluster: the sweep's overload (past saturation) leaves no trace.
        let sweep_rss = cluster.peak_rss();
        cluster.stop();
        let (mut cluster, _, _) = self.start(system, value_size, &comet_timeout).await?;
        let mut saturation = vec![];
        for _ in 0..self.plan.repeats {
            saturation.push(
                self.point(&mut cluster, Shape::Closed { clients: sat_clients }, value_size, self.plan.point).await?,
            );
        }
        let half_rate = 0.5 * Spread::of(saturation.iter().map(|p| p.throughput)).median;
        let mut half = vec![];
        if half_rate > 0.0 {
            let workers = (2 * sat_clients).max(64);
            for _ in 0..self.plan.repeats {
                half.push(
                    self.point(&mut cluster, Shape::Open { rate: half_rate, workers }, value_size, self.plan.point)
                        .await?,
                );
            }
        } else {
            self.note(format!("{system} {value_size} B: nothing committed at saturation; no half-load point"));
        }
        let (read_back, read_back_note) = read_back(&cluster.target, half.last().or(saturation.last())).await;
        if read_back == Some(false) {
            self.note(format!("{system} {value_size} B: read-back check failed: {read_back_note}"));
        }
        // Per process, the larger of the sweep's and the reported points' peaks.
        let peak_rss: Vec<(String, u64)> = cluster
            .peak_rss()
            .into_iter()
            .map(|(name, b)| {
                let sweep = sweep_rss.iter().find(|(n, _)| *n == name).map_or(0, |(_, x)| *x);
                (name, b.max(sweep))
            })
            .collect();
        let processes = cluster.procs.len();
        cluster.stop();
        let label = match system {
            "ours-n4" => "ours (PBFT) n=4".to_string(),
            "ours-n7" => "ours (PBFT) n=7".to_string(),
            "etcd" => "etcd 3 members".to_string(),
            _ => format!("CometBFT 4 validators (timeout_commit {comet_timeout})"),
        };
        self.results.systems.push(SystemResult {
            system: system.to_string(),
            label,
            version,
            config,
            value_size,
            processes,
            sweep,
            saturation_clients: sat_clients,
            saturated,
            saturation,
            half_rate,
            half,
            peak_rss,
            read_back,
            read_back_note,
        });
        self.save()
    }

    fn sat_clients_of_ours4(&self, value_size: usize) -> usize {
        self.results
            .systems
            .iter()
            .find(|s| s.system == "ours-n4" && s.value_size == value_size)
            .map_or(64, |s| s.saturation_clients)
    }

    async fn byzantine(&mut self, faults: &str) -> Result<(), BenchError> {
        let Some(fi) = self.args.fi_replica_bin.clone() else {
            self.note(format!("Byzantine run {faults:?} skipped: no --fi-replica-bin (fault-injection build)"));
            return Ok(());
        };
        let value = self.plan.values.first().copied().unwrap_or(100);
        let clients = self.sat_clients_of_ours4(value);
        // An equivocating replica must be the primary (replica 0 in view 0); a flooding one is a backup.
        let id = if faults.contains("equivocate") { 0 } else { 3 };
        let cfg = OursConfig {
            n: 4,
            binary: self.args.replica_bin.clone(),
            faulty: Some(Faulty { id, binary: fi, faults: faults.to_string() }),
            extra_args: self.args.replica_args.clone(),
        };
        log(&format!("byzantine {faults}: replica {id} faulty, C={clients}"));
        let mut cluster =
            ours::start(&cfg, &self.args.work_dir, &format!("byzantine-{faults}"), self.args.keep).await?;
        let mut points = vec![];
        for _ in 0..self.plan.repeats {
            points.push(self.point(&mut cluster, Shape::Closed { clients }, value, self.plan.point).await?);
        }
        let status = ours::status_summary(&cluster).await;
        let peak_rss = cluster.peak_rss();
        cluster.stop();
        self.results.byzantine.push(FaultResult {
            faults: faults.to_string(),
            faulty_replica: id,
            value_size: value,
            clients,
            points,
            peak_rss,
            status,
        });
        self.save()
    }

    async fn view_change(&mut self) -> Result<(), BenchError> {
        let value = self.plan.values.first().copied().unwrap_or(100);
        let clients = self.sat_clients_of_ours4(value);
        log(&format!("view change: n=4, C={clients}, the primary killed half-way through the window"));
        let cfg = OursConfig {
            n: 4,
            binary: self.args.replica_bin.clone(),
            faulty: None,
            extra_args: self.args.replica_args.clone(),
        };
        let mut cluster = ours::start(&cfg, &self.args.work_dir, "view-change", self.args.keep).await?;
        let (primary, view_before) = ours::primary(&cluster).await.unwrap_or((0, 0));
        let pid =
            cluster.procs.get(primary).map(|p| p.pid).ok_or_else(|| BenchError::Setup("no primary process".into()))?;
        let timing = self.plan.point;
        let kill_at_s = timing.warmup_s + timing.measure_s / 2.0;
        let event: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        });
        let w = Workload { value_size: value, keyspace: self.plan.keyspace };
        let pids = cluster.pids();
        let opts = PointOptions { timeline: true, event_at: Some(0.5) };
        let p = run_point(
            &cluster.target,
            Shape::Closed { clients },
            w,
            timing,
            &pids,
            &cluster.metrics,
            opts,
            Some(event),
        )
        .await?;
        log(&format!("  view-change {value:>5} B  {}", point_line(&p)));
        cluster.kill(primary);
        let view_after = ours::primary(&cluster).await.map(|(_, v)| v);
        let status = ours::status_summary(&cluster).await;
        cluster.stop();
        // Throughput before the kill and after recovery, from the 100 ms timeline.
        let bucket = |s: f64| (s * 10.0).floor() as usize;
        let rate = |from: f64, to: f64| {
            let (a, b) = (bucket(from), bucket(to).min(p.timeline_100ms.len()));
            if b <= a {
                return 0.0;
            }
            p.timeline_100ms[a..b].iter().map(|x| *x as f64).sum::<f64>() / ((b - a) as f64 / 10.0)
        };
        let window_start = timing.warmup_s;
        let window_end = window_start + timing.measure_s;
        let gap_ms = p.gap_after_event_ms;
        let throughput_before = rate(window_start, kill_at_s);
        let recovered_from = kill_at_s + gap_ms.unwrap_or(f64::INFINITY) / 1000.0 + 1.0;
        let throughput_after = (recovered_from < window_end).then(|| rate(recovered_from, window_end));
        if gap_ms.is_none() {
            self.note("view change: no put committed after the primary was killed".into());
        }
        self.results.view_change = Some(ViewChangeResult {
            value_size: value,
            clients,
            killed_replica: primary,
            view_before,
            view_after,
            kill_at_s,
            point: p,
            gap_ms,
            throughput_before,
            throughput_after,
            status,
        });
        self.save()
    }
}

/// Reads back client 0's last committed put (retrying for 5 s: a CometBFT node applies a block's txs at Commit).
async fn read_back(target: &Target, last: Option<&Point>) -> (Option<bool>, String) {
    let Some((key, value)) = last.and_then(|p| p.last_write.clone()) else {
        return (None, "no committed put to read back".into());
    };
    let Ok(mut c) = target.client(0).await else { return (Some(false), "cannot connect".into()) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last_seen = String::new();
    while Instant::now() < deadline {
        match c.get(&key).await {
            Ok(Some(v)) if v == value => return (Some(true), format!("{} read back", String::from_utf8_lossy(&key))),
            Ok(Some(v)) => {
                last_seen = format!("{} has {} bytes of another value", String::from_utf8_lossy(&key), v.len())
            }
            Ok(None) => last_seen = format!("{} not found", String::from_utf8_lossy(&key)),
            Err(e) => last_seen = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (Some(false), last_seen)
}

/// Runs everything the plan asks for; returns the JSON's path.
pub async fn run(args: RunArgs) -> Result<PathBuf, BenchError> {
    let plan = args.plan()?;
    std::fs::create_dir_all(&args.results_dir).map_err(io(&args.results_dir))?;
    std::fs::create_dir_all(&args.work_dir).map_err(io(&args.work_dir))?;
    let (started, stamp) = utc_now();
    let json = args.results_dir.join(format!("{stamp}{}.json", if args.quick { "-quick" } else { "" }));
    let machine = Machine::describe();
    log(&format!(
        "{} cores ({}), kernel {}, load average {:.2}; plan: about {:.0} min; results in {}",
        machine.cores,
        machine.model,
        machine.kernel,
        machine.loadavg_at_start,
        plan.estimate_s() / 60.0,
        json.display()
    ));
    let results = RunResults {
        schema: SCHEMA,
        started_utc: started,
        git_commit: args.git_commit.clone(),
        mode: if args.quick { "quick".into() } else { "full".into() },
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        settings: serde_json::to_value(&plan).unwrap_or_default(),
        ..Default::default()
    };
    let mut r = Runner { args, plan, results, json };
    let noise_start = MachineSample::take();
    log("crypto: ed25519 sign / verify / batch verify");
    for bytes in CRYPTO_MESSAGE_BYTES {
        r.results.crypto.push(measure_crypto(bytes, r.plan.crypto_seconds));
    }
    r.save()?;
    for value in r.plan.values.clone() {
        for system in r.plan.systems.clone() {
            if let Err(e) = r.system(&system, value).await {
                r.note(format!("{system} {value} B failed: {e}"));
                r.save()?;
            }
        }
    }
    if r.plan.systems.iter().any(|s| s == "ours-n4") {
        for faults in r.plan.byzantine.clone() {
            if let Err(e) = r.byzantine(&faults).await {
                r.note(format!("Byzantine run {faults} failed: {e}"));
            }
        }
        if r.plan.view_change {
            if let Err(e) = r.view_change().await {
                r.note(format!("view-change run failed: {e}"));
            }
        }
    }
    r.results.finished_utc = Some(utc_now().0);
    let noise = RunNoise::between(noise_start, MachineSample::take());
    log(&format!(
        "machine over the run: {:.2} cores busy, {:.2} stolen; load average {:?} -> {:?}",
        noise.busy_cores, noise.steal_cores, noise.start.loadavg, noise.end.loadavg
    ));
    r.results.noise = Some(noise);
    r.save()?;
    crate::report::write(&r.results, &r.json, &r.args.report)?;
    log(&format!("done: {} and {}", r.json.display(), r.args.report.display()));
    Ok(r.json)
}

/// `pbft-bench point`: starts `system`, runs one point, stops it.
pub async fn one_point(
    args: &RunArgs,
    system: &str,
    value: usize,
    clients: Option<usize>,
    rate: Option<f64>,
    comet_timeout: &str,
) -> Result<Point, BenchError> {
    let plan = args.plan()?;
    let timing = plan.point;
    std::fs::create_dir_all(&args.work_dir).map_err(io(&args.work_dir))?;
    let mut r = Runner { args: args.clone(), plan, results: RunResults::default(), json: PathBuf::new() };
    let (mut cluster, _, _) = r.start(system, value, comet_timeout).await?;
    let shape = match rate {
        Some(rate) => Shape::Open { rate, workers: clients.unwrap_or(256) },
        None => Shape::Closed { clients: clients.unwrap_or(64) },
    };
    let p = r.point(&mut cluster, shape, value, timing).await;
    let rss = cluster.peak_rss();
    cluster.stop();
    log(&format!("peak RSS: {rss:?}"));
    p
}
