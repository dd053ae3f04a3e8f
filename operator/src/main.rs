//! `pbft-operator`: `run` (the controller), `crd` (prints the CRD) and
//! `render` (prints the objects a ConsensusCluster owns, for review and debugging).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pbft_operator::build::{build_all, MembershipInput};
use pbft_operator::validate::{validate, OperatorDefaults};
use pbft_operator::ConsensusCluster;

#[derive(Parser)]
#[command(
    name = "pbft-operator",
    version,
    about = "Kubernetes operator for Byzantine-fault-tolerant key-value clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run {
        #[command(flatten)]
        settings: pbft_operator::run::RunSettings,
        /// Log format: text or json.
        #[arg(long, env = "PBFT_LOG_FORMAT", default_value = "text")]
        log_format: String,
    },
    /// Print the ConsensusCluster CustomResourceDefinition as YAML (what crds/ holds).
    Crd,
    /// Validate a ConsensusCluster from a YAML file and print the objects the operator would create.
    Render {
        /// The ConsensusCluster manifest.
        #[arg(short, long)]
        file: PathBuf,
        /// Observed membership (YAML: epoch, adminKey, members: [{id, publicKey}]); default: none observed yet.
        #[arg(long)]
        membership: Option<PathBuf>,
        /// Namespace when the manifest has none.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Replica image used when the spec has none.
        #[arg(long, env = "PBFT_REPLICA_IMAGE")]
        replica_image: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Crd(#[from] pbft_operator::CrdError),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: serde_yaml::Error },
    #[error(transparent)]
    Validate(#[from] pbft_operator::validate::ValidateError),
    #[error(transparent)]
    Build(#[from] pbft_operator::build::BuildError),
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error(transparent)]
    Run(#[from] pbft_operator::run::RunError),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--log-format must be text or json, not {0:?}")]
    LogFormat(String),
}

fn init_tracing(format: &str) -> Result<(), CliError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => return Err(CliError::LogFormat(other.into())),
    }
    Ok(())
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read { path: path.clone(), source })?;
    serde_yaml::from_str(&text).map_err(|source| CliError::Parse { path: path.clone(), source })
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run { settings, log_format } => {
            init_tracing(&log_format)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(CliError::Runtime)?;
            rt.block_on(pbft_operator::run::run(settings))?;
        }
        Command::Crd => {
            let mut out = std::io::stdout().lock();
            out.write_all(pbft_operator::crd_yaml()?.as_bytes())?;
            out.flush()?;
        }
        Command::Render { file, membership, namespace, replica_image } => {
            let mut cc: ConsensusCluster = read_yaml(&file)?;
            cc.metadata.namespace.get_or_insert(namespace);
            // Rendering offline: the apiserver would assign the uid.
            cc.metadata.uid.get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".to_string());
            let membership: MembershipInput = match membership {
                Some(p) => read_yaml(&p)?,
                None => MembershipInput::default(),
            };
            let mut defaults = OperatorDefaults::default();
            if let Some(image) = replica_image {
                defaults.replica_image = image;
            }
            let cluster = validate(&cc, None, &defaults)?;
            let objects = build_all(&cluster, &membership)?;
            let mut out = std::io::stdout().lock();
            out.write_all(objects.to_yaml()?.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pbft-operator: {e}");
            ExitCode::FAILURE
        }
    }
}
