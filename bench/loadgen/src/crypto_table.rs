//! `pbft-bench crypto`: the ed25519 costs on this machine and the crypto
//! ceiling of our protocol, as a table or JSON (the measuring and the
//! signature counts are `pbft::bench`'s).

use pbft::bench::{ceilings, CryptoCosts};

use crate::run::{measure_crypto, CRYPTO_MESSAGE_BYTES};

#[derive(clap::Args)]
pub struct CryptoArgs {
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
    /// About this many seconds of measuring per message size.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long)]
    json: bool,
}

pub fn print(args: &CryptoArgs) -> Result<(), serde_json::Error> {
    let machine = crate::procstat::Machine::describe();
    let cores = args.cores.unwrap_or(machine.cores as f64);
    let costs: Vec<CryptoCosts> = CRYPTO_MESSAGE_BYTES.iter().map(|b| measure_crypto(*b, args.seconds)).collect();
    let Some(vote) = costs.first() else { return Ok(()) };
    let table: Vec<_> =
        args.replicas.iter().map(|n| (*n, ceilings(vote, *n, args.checkpoint_interval, cores, &args.batch))).collect();
    if args.json {
        let v = serde_json::json!({
            "machine": machine,
            "cores": cores,
            "costs": costs,
            "ceilings": table.iter().map(|(n, c)| serde_json::json!({"n": n, "points": c})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("ed25519 on {} ({cores} cores), best of 5 rounds in thread CPU time, µs per operation:", machine.model);
    println!(
        "{:>10} {:>8} {:>8} {:>12} {:>12} {:>11} {:>10}",
        "msg bytes", "sign", "verify", "batch8/sig", "batch64/sig", "sha256/KiB", "parse key"
    );
    for c in &costs {
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
        "\ncrypto ceiling (K={}; signature work per request, costs of {}-byte messages):",
        args.checkpoint_interval, vote.message_bytes
    );
    println!(
        "{:>3} {:>7} {:>11} {:>11} {:>12} {:>12} {:>16} {:>16}",
        "n", "batch", "rep.signs", "rep.verif", "rep.cpu us", "cli.cpu us", "replicas-only/s", "with clients/s"
    );
    for (n, cs) in &table {
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
    Ok(())
}
