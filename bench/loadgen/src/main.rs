//! `pbft-bench`: the benchmark harness of issue 7 (see `bench/README.md`).
//!
//! - `run`: every system, sweep, saturation, half load, faults, view change,
//!   JSON and report;
//! - `crypto`: the ed25519 costs and the ceiling alone;
//! - `report`: regenerates `docs/benchmarks.md` and its plot from a JSON;
//! - `point`: one load point against one freshly started system (for profiling).

mod clients;
mod crypto_table;
mod error;
mod http;
mod load;
mod procstat;
mod report;
mod results;
mod run;
mod svg;
mod systems;

/// etcd's KV service (client side), generated from `proto/etcd_kv.proto`.
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::error::BenchError;

#[derive(Parser)]
#[command(name = "pbft-bench", version, about = "Benchmarks ours (PBFT) against CometBFT and etcd on this machine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole comparison (bench/run.sh calls this).
    Run(Box<run::RunArgs>),
    /// ed25519 costs on this machine and the ceiling they put on our protocol.
    Crypto(crypto_table::CryptoArgs),
    /// Regenerates the report and plot from a run's JSON.
    Report {
        #[arg(long)]
        from: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.md")]
        report: PathBuf,
    },
    /// One load point (timing from --duration/--warmup) against a freshly started system; prints the point as JSON.
    Point(Box<PointArgs>),
}

#[derive(clap::Args)]
struct PointArgs {
    /// ours-n4, ours-n7, etcd or cometbft.
    #[arg(long)]
    system: String,
    /// Closed loop with this many clients (default 64), or the open loop's pool (default 256) ...
    #[arg(long)]
    concurrency: Option<usize>,
    /// ... or open loop at this rate per second.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 100)]
    value: usize,
    #[arg(long, default_value = "1s")]
    comet_timeout: String,
    #[command(flatten)]
    run: run::RunArgs,
}

async fn main_async(cli: Cli) -> Result<(), BenchError> {
    match cli.cmd {
        Cmd::Run(args) => run::run(*args).await.map(|_| ()),
        Cmd::Crypto(args) => crypto_table::print(&args).map_err(|e| BenchError::Setup(e.to_string())),
        Cmd::Report { from, report } => {
            let r = results::RunResults::load(&from)?;
            report::write(&r, &from, &report)?;
            println!("wrote {}", report.display());
            Ok(())
        }
        Cmd::Point(p) => run::one_point(&p.run, &p.system, p.value, p.concurrency, p.rate, &p.comet_timeout)
            .await
            .and_then(|point| {
                println!("{}", serde_json::to_string(&point).map_err(|e| BenchError::Setup(e.to_string()))?);
                Ok(())
            }),
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pbft-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(main_async(cli)) {
        eprintln!("pbft-bench: {e}");
        std::process::exit(1);
    }
}
