//! `pbftctl`: talk to a PBFT cluster (put/get/delete/cas, status, evidence, bench).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use prost::Message as _;

use pbft::kvclient::{ClientError, Endpoints, KvClient};
use pbft::proto::{op_result::Status as OpStatus, Evidence, OpResult};
use pbft::server::rpc::{admin_client::AdminClient, EvidenceRequest};

#[derive(Parser)]
#[command(name = "pbftctl", version, about = "Client for PBFT key-value clusters")]
struct Cli {
    /// Membership file (YAML or JSON) naming the replicas, their keys and addresses.
    #[arg(long, env = "PBFT_MEMBERSHIP_FILE")]
    membership: PathBuf,
    /// Address overrides, id=host:port (comma-separated).
    #[arg(long, value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Send every request through this host:port instead (a client Service that
    /// balances connections over the replicas), over --connections connections.
    #[arg(long, conflicts_with = "endpoint")]
    service: Option<String>,
    /// Connections to --service (default: 3 per member, so f+1 replicas answer).
    #[arg(long)]
    connections: Option<usize>,
    /// Give up on one operation after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
        /// Fail (exit 1) unless the value is exactly this (for scripts and `helm test`).
        #[arg(long)]
        expect: Option<String>,
    },
    Delete {
        key: String,
    },
    /// Compare-and-swap: set KEY to NEW if it equals EXPECTED (--expected absent: must not exist; --new absent: delete).
    Cas {
        key: String,
        #[arg(long)]
        expected: Option<String>,
        #[arg(long)]
        new: Option<String>,
    },
    /// A table of the replicas.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Evidence each replica holds.
    Evidence {
        #[arg(long)]
        json: bool,
    },
    /// Submit an admin-signed membership change: the members of TO (a membership file
    /// of epoch E+1, as the operator writes it) replace those of epoch E in force.
    MembershipChange {
        /// The membership file to put in force (its epoch is the current one plus 1).
        #[arg(long)]
        to: PathBuf,
        /// The admin's private key (32 raw bytes or 64 hex digits).
        #[arg(long)]
        admin_key_file: PathBuf,
        /// Wait until f+1 replicas of the current membership report the new epoch.
        #[arg(long)]
        wait: bool,
    },
    /// Load: closed loop (N clients, one outstanding operation each) or open loop
    /// (--rate: evenly spaced operations, latency from each one's intended start).
    Bench {
        /// Concurrent clients (closed loop), or most operations in flight (open loop).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Open loop at this many operations per second (absent: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, value_enum, default_value = "put")]
        op: pbft::bench::Op,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Size of the key space (keys drawn uniformly).
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Warm-up before measuring, e.g. 2s.
        #[arg(long, default_value = "2s")]
        warmup: String,
        /// Measured duration, e.g. 10s or 500ms.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// JSON: throughput, latency percentiles (ms), errors by kind.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("bad --endpoint {0:?}: expected id=host:port")]
    Endpoint(String),
    #[error("bad duration {0:?}: expected e.g. 10s or 500ms")]
    Duration(String),
    #[error("{0}")]
    Op(String),
    #[error(transparent)]
    MembershipFile(#[from] pbft::server::membership_file::MembershipFileError),
    #[error(transparent)]
    Key(#[from] pbft::server::keys::KeyError),
}

fn parse_duration(s: &str) -> Result<Duration, CtlError> {
    let err = || CtlError::Duration(s.to_string());
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| err());
    }
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<f64>().ok().filter(|v| *v > 0.0).map(Duration::from_secs_f64).ok_or_else(err)
}

fn show(r: &OpResult) -> Result<String, CtlError> {
    let value = r.value.as_ref().map(|v| String::from_utf8_lossy(v).to_string());
    match OpStatus::try_from(r.status) {
        Ok(OpStatus::Ok) => Ok(value.unwrap_or_else(|| "OK".into())),
        Ok(OpStatus::NotFound) => Err(CtlError::Op("not found".into())),
        Ok(OpStatus::CasMismatch) => Err(CtlError::Op(format!(
            "compare-and-swap mismatch (current: {})",
            value.unwrap_or_else(|| "<absent>".into())
        ))),
        _ => Err(CtlError::Op(format!("rejected: {}", r.error))),
    }
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let mut overrides = vec![];
    for e in &cli.endpoint {
        let (id, addr) = e.split_once('=').ok_or_else(|| CtlError::Endpoint(e.clone()))?;
        overrides.push((id.parse().map_err(|_| CtlError::Endpoint(e.clone()))?, addr.to_string()));
    }
    let endpoints = match &cli.service {
        None => Endpoints::from_file(&cli.membership, &overrides)?,
        Some(addr) => {
            let file = pbft::server::membership_file::MembershipFile::read(&cli.membership)?;
            let membership = file.to_membership(&cli.membership)?;
            let n = cli.connections.unwrap_or(3 * file.members.len());
            Endpoints::through(membership, addr, n)?
        }
    };
    let timeout = Duration::from_secs_f64(cli.timeout.max(0.1));
    let client = || {
        let mut c = KvClient::new(endpoints.clone());
        c.timeout = timeout;
        c
    };
    match cli.cmd {
        Cmd::Put { key, value } => println!("{}", show(&client().put(key.as_bytes(), value.as_bytes()).await?)?),
        Cmd::Get { key, expect } => {
            let value = show(&client().get(key.as_bytes()).await?)?;
            println!("{value}");
            if let Some(want) = expect {
                if value != want {
                    return Err(CtlError::Op(format!("{key}: expected {want:?}, read {value:?}")));
                }
            }
        }
        Cmd::Delete { key } => println!("{}", show(&client().delete(key.as_bytes()).await?)?),
        Cmd::Cas { key, expected, new } => {
            let r = client()
                .cas(key.as_bytes(), expected.as_deref().map(str::as_bytes), new.as_deref().map(str::as_bytes))
                .await?;
            println!("{}", show(&r)?)
        }
        Cmd::MembershipChange { to, admin_key_file, wait } => {
            let next = pbft::server::membership_file::MembershipFile::read(&to)?;
            let change = next.to_change(&to)?;
            let current = endpoints.membership.epoch();
            if change.from_epoch != current {
                return Err(CtlError::Op(format!(
                    "{} is epoch {}, but epoch {current} is in force here ({}): the new file's epoch must be {}",
                    to.display(),
                    next.epoch,
                    cli.membership.display(),
                    current + 1
                )));
            }
            let admin = pbft::server::keys::load(&admin_key_file)?;
            if admin.public_bytes().as_slice() != endpoints.membership.config().admin_key.as_ref() {
                return Err(CtlError::Op(format!(
                    "{} is not the admin key of {}",
                    admin_key_file.display(),
                    cli.membership.display()
                )));
            }
            let mut c = KvClient::with_key(endpoints.clone(), admin);
            c.timeout = timeout;
            let r = c.execute(pbft::proto::operation::Kind::Membership(change)).await?;
            show(&r)?;
            println!("membership change to epoch {} ordered; it takes effect at the next checkpoint", next.epoch);
            if wait {
                let deadline = Instant::now() + timeout;
                loop {
                    let switched = endpoints
                        .status()
                        .await
                        .iter()
                        .filter(|(_, _, r)| r.as_ref().is_ok_and(|s| s.epoch >= next.epoch))
                        .count();
                    if switched >= endpoints.membership.weak_quorum() {
                        println!("epoch {} in force ({switched} replicas report it)", next.epoch);
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(CtlError::Op(format!(
                            "epoch {} not reported by f+1 replicas within {:.0} s",
                            next.epoch,
                            timeout.as_secs_f64()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Cmd::Status { json } => {
            let rows = endpoints.status().await;
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(id, addr, r)| match r {
                        Ok(s) => serde_json::json!({"id": id, "address": addr, "view": s.view, "primary": s.primary,
                            "active": s.active, "ready": s.ready, "executed_seq": s.executed_seq, "stable_seq": s.stable_seq,
                            "epoch": s.epoch, "caught_up": s.caught_up, "retired": s.retired,
                            "state_digest": hex::encode(&s.state_digest), "memory_used_bytes": s.memory_used_bytes, "memory_limit_bytes": s.memory_limit_bytes,
                            "peers_connected": s.peers.iter().filter(|p| p.connected).count(), "evidence": s.evidence_count}),
                        Err(e) => serde_json::json!({"id": id, "address": addr, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<4} {:<22} {:>6} {:>7} {:>6} {:>10} {:>10} {:>5} {:>6} {:>12} {:>6}",
                    "ID",
                    "ADDRESS",
                    "VIEW",
                    "PRIMARY",
                    "READY",
                    "EXECUTED",
                    "STABLE",
                    "EPOCH",
                    "PEERS",
                    "MEM(MiB)",
                    "EVID"
                );
                for (id, addr, r) in rows {
                    match r {
                        Ok(s) => println!(
                            "{:<4} {:<22} {:>6} {:>7} {:>6} {:>10} {:>10} {:>5} {:>6} {:>12} {:>6}",
                            id,
                            addr,
                            s.view,
                            s.primary,
                            s.ready,
                            s.executed_seq,
                            s.stable_seq,
                            s.epoch,
                            format!("{}/{}", s.peers.iter().filter(|p| p.connected).count(), s.peers.len()),
                            format!("{}/{}", s.memory_used_bytes >> 20, s.memory_limit_bytes >> 20),
                            s.evidence_count
                        ),
                        Err(e) => println!("{id:<4} {addr:<22} unreachable: {e}"),
                    }
                }
            }
        }
        Cmd::Evidence { json } => {
            for (id, addr, ch) in endpoints.replicas.clone() {
                let mut c = AdminClient::new(ch).max_decoding_message_size(64 << 20);
                match c.evidence(EvidenceRequest {}).await {
                    Ok(r) => {
                        for b in r.into_inner().evidence {
                            let Ok(e) = Evidence::decode(b.as_ref()) else { continue };
                            let valid = pbft::core::evidence::verify_evidence(&e, &endpoints.membership)
                                .map_err(|x| x.to_string());
                            let kind = pbft::proto::evidence::Kind::try_from(e.kind)
                                .map(|k| k.as_str_name())
                                .unwrap_or("UNKNOWN");
                            if json {
                                println!(
                                    "{}",
                                    serde_json::json!({"reporter": id, "kind": kind, "offender": e.offender, "epoch": e.epoch, "verifies": valid.is_ok()})
                                );
                            } else {
                                println!(
                                    "reported by r{id}: {kind} against r{} (epoch {}): {}",
                                    e.offender,
                                    e.epoch,
                                    match valid {
                                        Ok(()) => "verifies".to_string(),
                                        Err(x) => format!("does NOT verify: {x}"),
                                    }
                                );
                            }
                        }
                    }
                    Err(s) => eprintln!("r{id} ({addr}): {}", s.message()),
                }
            }
        }
        Cmd::Bench { clients, rate, op, value_size, keys, warmup, duration, json } => {
            let spec = pbft::bench::LoadSpec {
                clients,
                rate,
                op,
                value_size,
                keys,
                warmup: parse_duration(&warmup)?,
                duration: parse_duration(&duration)?,
                op_timeout: timeout,
            };
            let r = pbft::bench::run_load(&endpoints, &spec).await;
            if json {
                println!("{}", serde_json::to_string(&r).map_err(|e| CtlError::Op(e.to_string()))?);
            } else {
                println!("{}", r.summary());
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pbftctl: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("pbftctl: {e}");
        std::process::exit(1);
    }
}
