//! The crypto ceiling: what ed25519 costs on this machine (signing and
//! single checks through `pbft::crypto` as the replica calls them, batches
//! through `ed25519_dalek::verify_batch` on one thread), how many
//! signatures our protocol signs and verifies per request (counted from the
//! code), and from both the most requests per second it could reach.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use pbft::crypto::{verify, Keypair, REQUEST_DOMAIN};

/// Measured costs in microseconds of CPU per operation (one core).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CryptoCosts {
    /// Message size the costs were measured at.
    pub message_bytes: usize,
    pub sign_us: f64,
    pub verify_us: f64,
    /// Per signature, by batch size (`ed25519_dalek::verify_batch`, one thread).
    pub verify_batch_us: Vec<(usize, f64)>,
    /// min/median/max of the rounds, for sign and verify: the noise.
    pub sign_rounds_us: Vec<f64>,
    pub verify_rounds_us: Vec<f64>,
}

impl CryptoCosts {
    /// Per-signature batch cost at the largest measured batch size not above `n` (single verify below 4).
    pub fn batch_us(&self, n: usize) -> f64 {
        self.verify_batch_us.iter().filter(|(b, _)| *b <= n).map(|(_, c)| *c).last().unwrap_or(self.verify_us)
    }
}

/// CPU time this thread has run, in ns (/proc/thread-self/schedstat), if the kernel reports it.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Times `f` (which does `per_call` operations) for about `secs` of wall time, in `rounds` rounds;
/// µs per op of each round, from this thread's CPU time (so that other processes
/// taking the core do not inflate it; wall time when the kernel does not say).
fn rounds(secs: f64, rounds: usize, per_call: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut out = vec![];
    for _ in 0..rounds {
        let t = Instant::now();
        let cpu0 = thread_cpu_ns();
        let mut calls = 0usize;
        while t.elapsed().as_secs_f64() < secs / rounds as f64 || calls == 0 {
            f();
            calls += 1;
        }
        let ops = (calls * per_call) as f64;
        let us = match (cpu0, thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
            _ => t.elapsed().as_secs_f64() * 1e6,
        };
        out.push(us / ops);
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// Measures sign, verify and batched verify on `message_bytes`-byte messages for about `secs` each.
pub fn measure(message_bytes: usize, secs: f64) -> CryptoCosts {
    let keys: Vec<Keypair> =
        (0..256u32).map(|i| Keypair::from_secret(pbft::crypto::sha256(&[&i.to_le_bytes()]))).collect();
    let pubs: Vec<_> = keys.iter().map(|k| k.public()).collect();
    let body = vec![0x5a; message_bytes];
    let signed: Vec<_> = keys.iter().map(|k| k.sign_request(body.clone())).collect();
    let sign_rounds = rounds(secs, 5, 1, || {
        std::hint::black_box(keys[0].sign_request(std::hint::black_box(body.clone())));
    });
    let verify_rounds = rounds(secs, 5, 1, || {
        let ok = verify(&pubs[1], REQUEST_DOMAIN, &signed[1].body, &signed[1].signature).is_ok();
        std::hint::black_box(ok);
    });
    // Batches straight through ed25519-dalek on this thread: the replica's verifier may spread a
    // batch over threads, which this thread's CPU time would not see.
    let tagged: Vec<Vec<u8>> = signed.iter().map(|r| [REQUEST_DOMAIN, r.body.as_ref()].concat()).collect();
    let sigs: Vec<ed25519_dalek::Signature> = signed
        .iter()
        .filter_map(|r| {
            <[u8; 64]>::try_from(r.signature.as_ref()).ok().map(|b| ed25519_dalek::Signature::from_bytes(&b))
        })
        .collect();
    let mut batches = vec![];
    for n in [4usize, 16, 64, 256] {
        let msgs: Vec<&[u8]> = tagged[..n].iter().map(|m| m.as_slice()).collect();
        let r = rounds(secs / 2.0, 3, n, || {
            let ok = ed25519_dalek::verify_batch(&msgs, &sigs[..n], &pubs[..n]).is_ok();
            std::hint::black_box(ok);
        });
        batches.push((n, median(&r)));
    }
    CryptoCosts {
        message_bytes,
        sign_us: median(&sign_rounds),
        verify_us: median(&verify_rounds),
        verify_batch_us: batches,
        sign_rounds_us: sign_rounds,
        verify_rounds_us: verify_rounds,
    }
}

/// Signatures per client request, counted from the code (see `docs/benchmarks.md` for the list).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignatureCount {
    pub n: usize,
    pub batch: usize,
    pub checkpoint_interval: usize,
    /// Signs per request over the whole cluster and its client.
    pub signs: f64,
    /// Single verifications per request.
    pub verifies: f64,
    /// Verifications done in batches (backups re-check a batch's client signatures).
    pub batched_verifies: f64,
}

/// Counts for `n` replicas, `b` requests per batch, a checkpoint every `k` sequence numbers:
/// - client: signs its request (1), verifies replies until f+1 match (f+1);
/// - every replica verifies the request when it arrives (n; `core/requests.rs`);
/// - backups verify the batch's client signatures again on PRE-PREPARE (n-1, batched; `batch_is_valid`);
/// - every replica signs a reply (n);
/// - per batch: PRE-PREPARE 1 sign, n-1 verifies; PREPARE n-1 signs, (n-1)^2 verifies
///   (the primary gets n-1, each backup n-2); COMMIT n signs, n(n-1) verifies;
/// - per checkpoint: n signs, n(n-1) verifies.
pub fn count(n: usize, b: usize, k: usize) -> SignatureCount {
    let f = (n - 1) / 3;
    let (nf, bf, kf) = (n as f64, b.max(1) as f64, k.max(1) as f64);
    let per_batch_signs = 1.0 + (nf - 1.0) + nf;
    let per_batch_verifies = (nf - 1.0) + (nf - 1.0).powi(2) + nf * (nf - 1.0);
    SignatureCount {
        n,
        batch: b,
        checkpoint_interval: k,
        signs: 1.0 + nf + per_batch_signs / bf + nf / (kf * bf),
        verifies: (f as f64 + 1.0) + nf + per_batch_verifies / bf + nf * (nf - 1.0) / (kf * bf),
        batched_verifies: nf - 1.0,
    }
}

/// The most requests/s the protocol could reach on `cores` cores if signatures were the only cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ceiling {
    pub count: SignatureCount,
    /// Crypto CPU µs per request, all processes (replicas and client) together.
    pub cpu_us_per_request: f64,
    /// Every replica and the client sharing this machine's cores (the comparison for this run).
    pub machine_rps: f64,
    /// Each replica on a core of its own: the busiest replica (a backup) bounds it.
    pub per_replica_core_rps: f64,
}

pub fn ceiling(c: &CryptoCosts, n: usize, b: usize, k: usize, cores: usize) -> Ceiling {
    let count = count(n, b, k);
    let batch_cost = if b >= 4 { c.batch_us(b) } else { c.verify_us };
    let cpu = count.signs * c.sign_us + count.verifies * c.verify_us + count.batched_verifies * batch_cost;
    // A backup per request: verify on arrival, batched re-check, reply sign; per batch:
    // PRE-PREPARE verify, PREPARE and COMMIT sign, n-2 PREPARE and n-1 COMMIT verifies.
    let nf = n as f64;
    let bf = b.max(1) as f64;
    let backup =
        c.verify_us + batch_cost + c.sign_us + (2.0 * c.sign_us + (1.0 + (nf - 2.0) + (nf - 1.0)) * c.verify_us) / bf;
    Ceiling {
        count,
        cpu_us_per_request: cpu,
        machine_rps: cores as f64 * 1e6 / cpu,
        per_replica_core_rps: 1e6 / backup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_for_n4() {
        let c = count(4, 1, 1);
        // client 1 + replies 4 + batch (1+3+4) + checkpoint 4
        assert_eq!(c.signs, 1.0 + 4.0 + 8.0 + 4.0);
        // client 2 + arrival 4 + batch (3+9+12) + checkpoint 12
        assert_eq!(c.verifies, 2.0 + 4.0 + 24.0 + 12.0);
        assert_eq!(c.batched_verifies, 3.0);
        let big = count(4, 1000, 64);
        assert!((big.signs - 5.0).abs() < 0.01 && (big.verifies - 6.0).abs() < 0.03);
        assert_eq!(count(7, 1, 1).verifies, 3.0 + 7.0 + (6.0 + 36.0 + 42.0) + 42.0);
    }

    #[test]
    fn ceiling_scales_with_cores_and_costs() {
        let c = CryptoCosts {
            sign_us: 10.0,
            verify_us: 30.0,
            verify_batch_us: vec![(4, 20.0), (64, 12.0)],
            ..Default::default()
        };
        assert_eq!(c.batch_us(3), 30.0);
        assert_eq!(c.batch_us(100), 12.0);
        let one = ceiling(&c, 4, 64, 64, 1);
        let two = ceiling(&c, 4, 64, 64, 2);
        assert!((two.machine_rps / one.machine_rps - 2.0).abs() < 1e-9);
        assert!(one.per_replica_core_rps > one.machine_rps);
    }
}
