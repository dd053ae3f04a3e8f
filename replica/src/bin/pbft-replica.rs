//! `pbft-replica`: one PBFT replica server, or (`dev`) a local cluster.

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use pbft::server::config::Overrides;
use pbft::server::dev::DevArgs;
use pbft::server::{node, ServerError};

#[derive(Parser)]
#[command(name = "pbft-replica", version, about = "A PBFT key-value replica")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: Overrides,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run n replicas on 127.0.0.1 with a generated membership.
    Dev(DevArgs),
    /// Print this replica's public key (generating the key if needed) and exit.
    PublicKey,
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PBFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn signals(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    let _ = tx.send(true);
}

async fn main_async(cli: Cli) -> Result<(), ServerError> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(signals(tx));
    match cli.cmd {
        Some(Cmd::Dev(args)) => {
            init_logs(false);
            pbft::server::dev::run(args, rx).await
        }
        Some(Cmd::PublicKey) => {
            let s = cli.run.resolve()?;
            let path = s.key_file.clone().unwrap_or_else(|| s.data_dir.join("replica.key"));
            let key = if s.key_file.is_some() {
                pbft::server::keys::load(&path)?
            } else {
                pbft::server::keys::load_or_generate(&path)?.0
            };
            println!("{}", hex::encode(key.public_bytes()));
            Ok(())
        }
        None => {
            let s = cli.run.resolve()?;
            init_logs(s.json_logs);
            node::run(s, rx, None).await
        }
    }
}

fn main() {
    pbft::server::cgroup::limit_malloc_arenas();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pbft-replica: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(main_async(cli));
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(e) = r {
        eprintln!("pbft-replica: {e}");
        std::process::exit(1);
    }
}
