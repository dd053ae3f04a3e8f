//! `pbft-bench`: measures this PBFT implementation on one machine.
//!
//! - `crypto`: ed25519 sign / verify / batch-verify costs here, and the
//!   "crypto ceiling" (most requests per second the protocol's signature
//!   work allows on this machine's cores).
//! - `load`: one load point (closed or open loop) against a running cluster.
//! - `cluster`: starts n local `pbft-replica` processes (release build,
//!   durable log) per point and repeat, runs load points against them, and
//!   reports throughput, latency, CPU seconds per 1,000 requests and peak RSS
//!   per replica, with min/median/max over the repeats.
//!
//! Figures only: nothing here passes or fails on a timing.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use pbft::bench::{self, LoadReport, LoadSpec, Op, ProcSample};
use pbft::crypto::Keypair;
use pbft::kvclient::Endpoints;
use pbft::server::membership_file::{MemberEntry, MembershipFile};

#[derive(Parser)]
#[command(name = "pbft-bench", version, about = "Benchmarks of the PBFT key-value replica")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// ed25519 costs on this machine and the protocol's crypto ceiling.
    Crypto {
        /// Replica counts to compute the ceiling for.
        #[arg(long, value_delimiter = ',', default_value = "4,7")]
        replicas: Vec<usize>,
        /// Batch sizes (requests per batch) to compute the ceiling for.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        batch: Vec<f64>,
        /// Checkpoint interval K (sequence numbers).
        #[arg(long, default_value_t = 64)]
        checkpoint_interval: u64,
        /// Cores the ceiling assumes (default: this machine's).
        #[arg(long)]
        cores: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// One load point against a running cluster.
    Load {
        /// Membership file of the cluster.
        #[arg(long)]
        membership: PathBuf,
        /// Address overrides, id=host:port (comma-separated).
        #[arg(long, value_delimiter = ',')]
        endpoint: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
        /// Concurrent clients (closed loop) or most operations in flight (open loop).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Open loop at this many operations per second (absent: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Local clusters of n processes, fresh for each point and repeat.
    Cluster(ClusterArgs),
}

/// Settings of a load point shared by `load` and `cluster`.
#[derive(Args, Clone)]
struct LoadArgs {
    #[arg(long, value_enum, default_value = "put")]
    op: Op,
    /// Value size in bytes (puts).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Size of the key space (keys drawn uniformly).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Warm-up before measuring, e.g. 3s.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured duration, e.g. 10s or 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// An operation not completed within this long counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    op_timeout: Duration,
}

#[derive(Args)]
struct ClusterArgs {
    /// Replicas (3f+1).
    #[arg(long, default_value_t = 4)]
    replicas: u32,
    /// Working directory (data dirs, keys, logs); emptied first.
    #[arg(long, default_value = "/tmp/pbft-bench")]
    dir: PathBuf,
    /// Closed-loop points: concurrent clients.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Open-loop points: offered operations per second (run with --max-in-flight clients).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Clients of the open-loop points (most operations in flight).
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    #[command(flatten)]
    load: LoadArgs,
    /// Repeats of every point (each on a fresh cluster).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The replica binary (default: `pbft-replica` next to this one).
    #[arg(long)]
    replica_bin: Option<PathBuf>,
    /// Extra argument for every replica (repeatable), e.g. --replica-arg=--batch-size=256.
    #[arg(long = "replica-arg", allow_hyphen_values = true)]
    replica_args: Vec<String>,
    /// Environment variable for every replica (repeatable), e.g. --replica-env=TOKIO_WORKER_THREADS=1.
    #[arg(long = "replica-env")]
    replica_env: Vec<String>,
    /// Write all results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("bad duration {s:?}: expected e.g. 10s or 500ms");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| err());
    }
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<f64>().ok().filter(|v| *v > 0.0).map(Duration::from_secs_f64).ok_or_else(err)
}

fn spec(load: &LoadArgs, clients: usize, rate: Option<f64>) -> LoadSpec {
    LoadSpec {
        clients,
        rate,
        op: load.op,
        value_size: load.value_size,
        keys: load.keys,
        warmup: load.warmup,
        duration: load.duration,
        op_timeout: load.op_timeout,
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- crypto

fn crypto(replicas: &[usize], batches: &[f64], k: u64, cores_opt: Option<f64>, json: bool) {
    let cores = cores_opt.unwrap_or_else(cores);
    let vote = bench::measure_crypto(150, 2000, 5);
    let request = bench::measure_crypto(1100, 2000, 5);
    let mut ceilings = vec![];
    for &n in replicas {
        ceilings.push((n, bench::ceilings(&vote, n, k, cores, batches)));
    }
    if json {
        let v = serde_json::json!({
            "machine": {"cores": cores, "cpu": cpu_model()},
            "costs": [vote, request],
            "ceilings": ceilings.iter().map(|(n, c)| serde_json::json!({"n": n, "points": c})).collect::<Vec<_>>(),
        });
        println!("{v}");
        return;
    }
    println!("ed25519 on {} ({cores} cores), best of 5 rounds, microseconds per operation:", cpu_model());
    println!(
        "{:>10} {:>8} {:>8} {:>12} {:>12} {:>11} {:>10}",
        "msg bytes", "sign", "verify", "batch8/sig", "batch64/sig", "sha256/KiB", "parse key"
    );
    for c in [&vote, &request] {
        println!(
            "{:>10} {:>8.1} {:>8.1} {:>12.1} {:>12.1} {:>11.2} {:>10.1}",
            c.message_bytes,
            c.sign_us,
            c.verify_us,
            c.verify_batch8_us,
            c.verify_batch64_us,
            c.sha256_1kib_us,
            c.parse_key_us
        );
    }
    println!(
        "batch verification per signature: {:.2}x (8), {:.2}x (64) of a single check",
        vote.verify_batch8_us / vote.verify_us,
        vote.verify_batch64_us / vote.verify_us
    );
    println!("\ncrypto ceiling (K={k}; signature work per request of the whole system, costs of 150-byte messages):");
    println!(
        "{:>3} {:>7} {:>11} {:>11} {:>12} {:>12} {:>16} {:>16}",
        "n", "batch", "rep.signs", "rep.verif", "rep.cpu us", "cli.cpu us", "replicas-only/s", "with clients/s"
    );
    for (n, cs) in &ceilings {
        for c in cs {
            let k = &c.counts;
            println!(
                "{:>3} {:>7.0} {:>11.2} {:>11.2} {:>12.1} {:>12.1} {:>16.0} {:>16.0}",
                n,
                k.batch,
                k.replica_signs,
                k.request_verifies + k.message_verifies,
                c.replica_cpu_us,
                c.client_cpu_us,
                c.replicas_only_per_sec,
                c.with_clients_per_sec
            );
        }
    }
}

// ---------------------------------------------------------------- cluster

struct Proc {
    child: Child,
    pid: u32,
}

struct LocalCluster {
    procs: Vec<Proc>,
    endpoints: Endpoints,
    metrics_ports: Vec<u16>,
}

/// A few figures from one replica's /metrics (whole run, warm-up included).
#[derive(Clone, Debug, Default, Serialize)]
struct ReplicaFigures {
    /// Requests per executed batch.
    mean_batch: f64,
    executed_batches: f64,
    /// Write-ahead log fsyncs and their mean duration.
    fsyncs: f64,
    mean_fsync_ms: f64,
    /// Records per fsync.
    mean_group: f64,
    signature_verifications: f64,
    /// Arrival of a client request to this replica's reply.
    mean_commit_ms: f64,
}

/// Reads /metrics over plain HTTP/1.0.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn figures(text: &str) -> ReplicaFigures {
    let v = |name: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|x| x.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    ReplicaFigures {
        mean_batch: ratio(v("pbft_batch_requests_sum"), v("pbft_batch_requests_count")),
        executed_batches: v("pbft_batch_requests_count"),
        fsyncs: v("pbft_wal_fsyncs_total"),
        mean_fsync_ms: ratio(v("pbft_wal_sync_seconds_sum"), v("pbft_wal_sync_seconds_count")) * 1000.0,
        mean_group: ratio(v("pbft_wal_group_records_sum"), v("pbft_wal_group_records_count")),
        signature_verifications: v("pbft_signature_verifications_total"),
        mean_commit_ms: ratio(v("pbft_commit_latency_seconds_sum"), v("pbft_commit_latency_seconds_count")) * 1000.0,
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn start_cluster(args: &ClusterArgs, dir: &Path, bin: &Path) -> Result<LocalCluster, String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let admin = Keypair::from_secret(rand_secret());
    let mut members = vec![];
    let mut slots = vec![];
    for i in 0..args.replicas {
        let key = Keypair::from_secret(rand_secret());
        let key_file = dir.join(format!("r{i}.key"));
        std::fs::write(&key_file, hex::encode(key.secret_bytes())).map_err(io_err(&key_file))?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).map_err(io_err(&key_file))?;
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let ports: Vec<u16> = ports.into_iter().collect::<Result<_, _>>().map_err(|e| format!("free port: {e}"))?;
        members.push(MemberEntry {
            id: i,
            public_key: hex::encode(key.public_bytes()),
            address: format!("127.0.0.1:{}", ports[0]),
        });
        slots.push((key_file, ports));
    }
    let file = MembershipFile { epoch: 0, admin_key: hex::encode(admin.public_bytes()), members };
    let mpath = dir.join("membership.yaml");
    let yaml = serde_yaml::to_string(&file).map_err(|e| e.to_string())?;
    std::fs::write(&mpath, yaml).map_err(io_err(&mpath))?;
    let mut procs = vec![];
    for (i, (key_file, p)) in slots.iter().enumerate() {
        let log_path = dir.join(format!("r{i}.log"));
        let log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir.join(format!("r{i}")))
            .arg("--key-file")
            .arg(key_file)
            .arg("--membership-file")
            .arg(&mpath)
            .args(["--peer-listen", &format!("127.0.0.1:{}", p[0])])
            .args(["--client-listen", &format!("127.0.0.1:{}", p[1])])
            .args(["--admin-listen", &format!("127.0.0.1:{}", p[2])])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", p[3])])
            .args(&args.replica_args)
            .envs(args.replica_env.iter().filter_map(|kv| kv.split_once('=')))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        procs.push(Proc { child, pid });
    }
    let overrides: Vec<(u32, String)> =
        slots.iter().enumerate().map(|(i, (_, p))| (i as u32, format!("127.0.0.1:{}", p[1]))).collect();
    let endpoints = Endpoints::from_file(&mpath, &overrides).map_err(|e| e.to_string())?;
    let metrics_ports = slots.iter().map(|(_, p)| p[3]).collect();
    Ok(LocalCluster { procs, endpoints, metrics_ports })
}

fn rand_secret() -> [u8; 32] {
    use rand_core::RngCore as _;
    let mut s = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut s);
    s
}

async fn wait_ready(c: &LocalCluster, within: Duration) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let st = c.endpoints.status().await;
        if st.iter().all(|(_, _, r)| r.as_ref().is_ok_and(|s| s.ready)) && st.len() == c.procs.len() {
            return Ok(());
        }
        if t.elapsed() > within {
            return Err(format!("cluster not ready within {within:?}: {st:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop_cluster(c: &mut LocalCluster) {
    for p in &c.procs {
        let _ = Command::new("kill").args(["-TERM", &p.pid.to_string()]).status();
    }
    for p in &mut c.procs {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

/// One measured point on one fresh cluster.
#[derive(Serialize)]
struct PointResult {
    repeat: usize,
    replicas: u32,
    load: LoadReport,
    /// CPU seconds of all replicas over the measured window, per 1,000 successful operations.
    replica_cpu_s_per_1000: f64,
    /// The same for this load generator (its clients sign requests and check replies).
    client_cpu_s_per_1000: f64,
    /// Replica CPU over the window, in cores (CPU seconds per second).
    replica_cores: f64,
    /// Peak RSS (VmHWM) of each replica.
    peak_rss_bytes: Vec<u64>,
    /// Each replica's own figures (from /metrics, whole run).
    replica_figures: Vec<ReplicaFigures>,
}

fn cpu_of(samples: &[Option<ProcSample>]) -> f64 {
    samples.iter().flatten().map(|s| s.cpu_seconds).sum()
}

async fn one_point(args: &ClusterArgs, bin: &Path, spec: &LoadSpec, repeat: usize) -> Result<PointResult, String> {
    let dir = args.dir.join("cluster");
    let mut c = start_cluster(args, &dir, bin)?;
    let r = async {
        wait_ready(&c, Duration::from_secs(30)).await?;
        let pids: Vec<u32> = c.procs.iter().map(|p| p.pid).collect();
        let me = std::process::id();
        // Sample CPU at the start and end of the measured window while the load runs.
        let (warmup, duration) = (spec.warmup, spec.duration);
        let sampler = tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let before: Vec<_> = pids.iter().map(|p| bench::sample_process(*p)).collect();
            let client_before = bench::sample_process(me);
            let t = Instant::now();
            tokio::time::sleep(duration).await;
            let after: Vec<_> = pids.iter().map(|p| bench::sample_process(*p)).collect();
            let client_after = bench::sample_process(me);
            (before, after, client_before, client_after, t.elapsed().as_secs_f64())
        });
        let load = bench::run_load(&c.endpoints, spec).await;
        let (before, after, cb, ca, secs) = sampler.await.map_err(|e| e.to_string())?;
        let replica_cpu = cpu_of(&after) - cpu_of(&before);
        let client_cpu = ca.map_or(0.0, |s| s.cpu_seconds) - cb.map_or(0.0, |s| s.cpu_seconds);
        let per_1000 = |cpu: f64| if load.ops > 0 { cpu / load.ops as f64 * 1000.0 } else { 0.0 };
        let peak_rss_bytes =
            c.procs.iter().map(|p| bench::sample_process(p.pid).map_or(0, |s| s.peak_rss_bytes)).collect();
        let replica_figures =
            c.metrics_ports.iter().map(|p| scrape(*p).map(|t| figures(&t)).unwrap_or_default()).collect();
        Ok::<_, String>(PointResult {
            repeat,
            replicas: args.replicas,
            replica_cpu_s_per_1000: per_1000(replica_cpu),
            client_cpu_s_per_1000: per_1000(client_cpu),
            replica_cores: replica_cpu / secs.max(1e-9),
            peak_rss_bytes,
            replica_figures,
            load,
        })
    }
    .await;
    stop_cluster(&mut c);
    r
}

fn min_med_max(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    [v[0], v[v.len() / 2], v[v.len() - 1]]
}

async fn cluster(args: ClusterArgs) -> Result<(), String> {
    let bin = match &args.replica_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("pbft-replica"),
    };
    let mut points: Vec<LoadSpec> = args.clients.iter().map(|c| spec(&args.load, *c, None)).collect();
    points.extend(args.rate.iter().map(|r| spec(&args.load, args.max_in_flight, Some(*r))));
    let mut results: Vec<PointResult> = vec![];
    for repeat in 1..=args.repeat.max(1) {
        for p in &points {
            match one_point(&args, &bin, p, repeat).await {
                Ok(r) => {
                    let f0 = r.replica_figures.first().cloned().unwrap_or_default();
                    eprintln!(
                        "[{repeat}/{}] {}; replica CPU {:.3} s/1000 ops ({:.2} cores), client CPU {:.3} s/1000, peak RSS MiB {:?}; \
                         r0: batch {:.1}, fsync {:.2} ms x{:.0} ({:.1} records), commit {:.1} ms",
                        args.repeat,
                        r.load.summary(),
                        r.replica_cpu_s_per_1000,
                        r.replica_cores,
                        r.client_cpu_s_per_1000,
                        r.peak_rss_bytes.iter().map(|b| b >> 20).collect::<Vec<_>>(),
                        f0.mean_batch,
                        f0.mean_fsync_ms,
                        f0.fsyncs,
                        f0.mean_group,
                        f0.mean_commit_ms,
                    );
                    results.push(r);
                }
                Err(e) => eprintln!("[{repeat}/{}] point failed: {e}", args.repeat),
            }
        }
    }
    // min / median / max per point over the repeats.
    println!(
        "\nn={} {:?} value={} B keys={} warmup={:?} duration={:?}, {} repeats, {} cores ({})",
        args.replicas,
        args.load.op,
        args.load.value_size,
        args.load.keys,
        args.load.warmup,
        args.load.duration,
        args.repeat,
        cores(),
        cpu_model()
    );
    println!(
        "{:<14} {:>26} {:>24} {:>24} {:>20} {:>12}",
        "point", "ops/s min/med/max", "p50 ms min/med/max", "p99 ms min/med/max", "cpu s/1000 (med)", "rss MiB max"
    );
    let mut summary = vec![];
    for p in &points {
        let rs: Vec<&PointResult> =
            results.iter().filter(|r| r.load.spec.clients == p.clients && r.load.spec.rate == p.rate).collect();
        let ops = min_med_max(rs.iter().map(|r| r.load.ops_per_sec).collect());
        let p50 = min_med_max(rs.iter().map(|r| r.load.latency_ms.p50).collect());
        let p99 = min_med_max(rs.iter().map(|r| r.load.latency_ms.p99).collect());
        let cpu = min_med_max(rs.iter().map(|r| r.replica_cpu_s_per_1000).collect());
        let rss = rs.iter().flat_map(|r| r.peak_rss_bytes.iter().copied()).max().unwrap_or(0);
        let name = match p.rate {
            Some(r) => format!("open {r:.0}/s"),
            None => format!("closed c={}", p.clients),
        };
        println!(
            "{:<14} {:>8.0}/{:>8.0}/{:>8.0} {:>7.2}/{:>7.2}/{:>7.2} {:>7.2}/{:>7.2}/{:>7.2} {:>20.3} {:>12}",
            name,
            ops[0],
            ops[1],
            ops[2],
            p50[0],
            p50[1],
            p50[2],
            p99[0],
            p99[1],
            p99[2],
            cpu[1],
            rss >> 20
        );
        summary.push(serde_json::json!({"point": name, "clients": p.clients, "rate": p.rate, "runs": rs.len(),
            "ops_per_sec": ops, "p50_ms": p50, "p99_ms": p99, "replica_cpu_s_per_1000": cpu, "peak_rss_bytes_max": rss}));
    }
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "system": "pbft",
            "machine": {"cores": cores(), "cpu": cpu_model()},
            "replicas": args.replicas,
            "replica_args": args.replica_args,
            "replica_env": args.replica_env,
            "repeats": args.repeat,
            "summary": summary,
            "results": results,
        });
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(io_err(path))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Crypto { replicas, batch, checkpoint_interval, cores, json } => {
            crypto(&replicas, &batch, checkpoint_interval, cores, json);
            Ok(())
        }
        Cmd::Load { membership, endpoint, load, clients, rate, json } => {
            let mut overrides = vec![];
            for e in &endpoint {
                let (id, addr) =
                    e.split_once('=').ok_or_else(|| format!("bad --endpoint {e:?}: expected id=host:port"))?;
                overrides.push((id.parse().map_err(|_| format!("bad --endpoint {e:?}"))?, addr.to_string()));
            }
            let endpoints = Endpoints::from_file(&membership, &overrides).map_err(|e| e.to_string())?;
            let r = bench::run_load(&endpoints, &spec(&load, clients, rate)).await;
            if json {
                println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
            } else {
                println!("{}", r.summary());
            }
            Ok(())
        }
        Cmd::Cluster(args) => cluster(args).await,
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pbft-bench: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("pbft-bench: {e}");
        std::process::exit(1);
    }
}
