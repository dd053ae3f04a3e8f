//! `pbft-sim`: runs the deterministic simulator over many seeds, n = 4 and
//! n = 7, every fault mix, and checks the invariants. Any violation prints
//! the seed and the command that replays it with a readable trace.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use pbft::sim::{run, Report, SimConfig};

#[derive(Parser, Debug)]
#[command(name = "pbft-sim", about = "Deterministic simulation of PBFT replicas under faults")]
struct Args {
    /// How many seeds to run (each at every replica count).
    #[arg(long, default_value_t = 2000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replica counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,7")]
    replicas: Vec<usize>,
    /// Replay one seed (with --replicas N) and print its trace.
    #[arg(long)]
    replay: Option<u64>,
    /// Print the event trace (with --replay).
    #[arg(long)]
    trace: bool,
    /// Clients per run.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Operations per client.
    #[arg(long, default_value_t = 6)]
    ops: usize,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn print_failure(r: &Report, args: &Args) {
    eprintln!("VIOLATION seed {} n={} mix {}:", r.seed, r.n, r.mix);
    for v in &r.violations {
        eprintln!("  - {v}");
    }
    eprintln!(
        "  replay: cargo run --release -p replica --bin pbft-sim -- --replay {} --replicas {} --clients {} --ops {} --trace",
        r.seed, r.n, args.clients, args.ops
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.replicas.iter().any(|n| *n < 4) {
        eprintln!("error: --replicas values must be at least 4");
        return ExitCode::from(2);
    }
    if let Some(seed) = args.replay {
        let mut failed = false;
        for &n in &args.replicas {
            let r = run(SimConfig { n, seed, clients: args.clients, ops_per_client: args.ops, trace: args.trace });
            print!("{}", r.trace);
            println!(
                "seed {seed} n={n} mix {}: executed {} seqs, {} ops completed, {} view changes, {} state transfers, {} evidence, {}ms virtual",
                r.mix, r.executed_seqs, r.completed_ops, r.view_changes, r.state_transfers, r.evidence, r.virtual_ms
            );
            if !r.violations.is_empty() {
                print_failure(&r, &args);
                failed = true;
            }
        }
        return if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }

    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let jobs: Vec<(u64, usize)> =
        (args.start..args.start + args.seeds).flat_map(|s| args.replicas.iter().map(move |n| (s, *n))).collect();
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<Report>> = Mutex::new(vec![]);
    let totals = Mutex::new((0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0f64, 0usize, 0usize));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&(seed, n)) = jobs.get(i) else { break };
                let r = run(SimConfig { n, seed, clients: args.clients, ops_per_client: args.ops, trace: false });
                {
                    let mut t = totals.lock().expect("no panics while holding the lock");
                    t.0 += 1;
                    t.1 += r.executed_seqs as u64;
                    t.2 += r.completed_ops as u64;
                    t.3 += r.view_changes;
                    t.4 += r.evidence as u64;
                    t.5 += r.forged_evidence_rejected as u64;
                    if r.peak_memory_ratio > t.6 {
                        t.6 = r.peak_memory_ratio;
                        t.7 = r.peak_memory_bytes;
                        t.8 = r.peak_memory_budget;
                    }
                    if t.0 % 1000 == 0 {
                        eprintln!("  {} runs, {:.0}s", t.0, started.elapsed().as_secs_f64());
                    }
                }
                if !r.violations.is_empty() {
                    print_failure(&r, &args);
                    failures.lock().expect("no panics while holding the lock").push(r);
                }
            });
        }
    });
    let t = totals.into_inner().expect("threads joined");
    let failures = failures.into_inner().expect("threads joined");
    println!(
        "executed seqs: {}, client ops completed: {}, view changes: {}, evidence reported: {}, forged evidence rejected: {}",
        t.1, t.2, t.3, t.4, t.5
    );
    println!(
        "largest accounted memory: {} of {} bytes ({:.1}% of budget); {:.1}s wall",
        t.7,
        t.8,
        t.6 * 100.0,
        started.elapsed().as_secs_f64()
    );
    println!("seeds: {}, runs: {}, violations: {}", args.seeds, t.0, failures.len());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
