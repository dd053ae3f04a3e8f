//! Measuring tools: a load generator for a running cluster (closed loop with
//! C clients, or open loop at a fixed rate with latency measured from each
//! operation's intended start, so a slow server cannot hide its queueing
//! delay by slowing the generator down: no coordinated omission), an
//! ed25519 micro-benchmark with the "crypto ceiling" of the protocol, and
//! CPU and peak-memory readings of processes from `/proc`.
//!
//! Everything here prints or returns figures; nothing asserts timings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use crate::kvclient::{ClientError, Endpoints, KvClient};
use crate::proto::op_result::Status as OpStatus;
use crate::proto::{operation::Kind, Get, Put};

// ---------------------------------------------------------------- load

/// The operation a load run issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Get,
}

/// What a load run does.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSpec {
    /// Concurrent clients (closed loop), or most operations in flight (open loop).
    pub clients: usize,
    /// Open loop: operations per second offered, evenly spaced. `None`: closed loop.
    pub rate: Option<f64>,
    pub op: Op,
    pub value_size: usize,
    /// Keys are drawn uniformly from this many.
    pub keys: u64,
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// An operation that has not completed after this long counts as a timeout error.
    #[serde(serialize_with = "secs")]
    pub op_timeout: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From latencies in seconds (sorted here).
    pub fn of(mut secs: Vec<f64>) -> Latency {
        if secs.is_empty() {
            return Latency::default();
        }
        secs.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| secs[((secs.len() - 1) as f64 * p).round() as usize] * 1000.0;
        Latency {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
            mean: secs.iter().sum::<f64>() / secs.len() as f64 * 1000.0,
        }
    }
}

/// What a load run measured (operations whose (intended) start fell in the
/// measured window, after the warm-up).
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub mode: &'static str,
    pub spec: LoadSpec,
    /// Operations completed successfully.
    pub ops: u64,
    /// Successful operations per second over the window.
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
    /// Failed operations by kind (`timeout`, `refused`, `rejected`, `membership`, `endpoint`).
    pub errors: BTreeMap<String, u64>,
    /// Open loop: operations that started more than 1 ms after their intended time
    /// (all clients were busy: the offered rate exceeded what the cluster served).
    pub late_starts: u64,
}

impl LoadReport {
    /// One line for humans.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        let errors: u64 = self.errors.values().sum();
        format!(
            "{} c={} {}: {} ops in {:.1} s: {:.0} ops/s, {errors} errors {:?}; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            self.mode,
            self.spec.clients,
            self.spec.rate.map_or(String::new(), |r| format!("rate={r:.0}/s")),
            self.ops,
            self.spec.duration.as_secs_f64(),
            self.ops_per_sec,
            self.errors,
            l.p50,
            l.p90,
            l.p99,
            l.max
        )
    }
}

fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Timeout { .. } => "timeout",
        ClientError::Refused(_) => "refused",
        ClientError::Membership(_) => "membership",
        ClientError::Endpoint { .. } => "endpoint",
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    errors: BTreeMap<String, u64>,
    late: u64,
}

/// Runs one load point against `endpoints` and reports it.
pub async fn run_load(endpoints: &Endpoints, spec: &LoadSpec) -> LoadReport {
    let start = Instant::now();
    let window_start = start + spec.warmup;
    let end = window_start + spec.duration;
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = vec![];
    for _ in 0..spec.clients.max(1) {
        let mut client = KvClient::new(endpoints.clone());
        client.timeout = spec.op_timeout;
        let (spec, next, tally) = (spec.clone(), next.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut value = vec![0u8; spec.value_size];
            OsRng.fill_bytes(&mut value);
            let value = Bytes::from(value);
            let mut mine = Tally::default();
            loop {
                // Closed loop: start now. Open loop: the next slot of the schedule.
                let intended = match spec.rate {
                    None => Instant::now(),
                    Some(rate) => {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        start + Duration::from_secs_f64(k as f64 / rate)
                    }
                };
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
                let late = intended.elapsed() > Duration::from_millis(1);
                let key = format!("k{:09}", OsRng.next_u64() % spec.keys.max(1));
                let kind = match spec.op {
                    Op::Put => Kind::Put(Put { key: key.into(), value: value.clone() }),
                    Op::Get => Kind::Get(Get { key: key.into() }),
                };
                let r = client.execute(kind).await;
                if intended < window_start {
                    continue;
                }
                match r {
                    Ok(res) if res.status == OpStatus::Rejected as i32 => {
                        *mine.errors.entry("rejected".into()).or_default() += 1
                    }
                    Ok(_) => mine.latencies.push(intended.elapsed().as_secs_f64()),
                    Err(e) => *mine.errors.entry(error_kind(&e).into()).or_default() += 1,
                }
                mine.late += u64::from(late && spec.rate.is_some());
            }
            if let Ok(mut t) = tally.lock() {
                t.latencies.append(&mut mine.latencies);
                for (k, v) in mine.errors {
                    *t.errors.entry(k).or_default() += v;
                }
                t.late += mine.late;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let ops = t.latencies.len() as u64;
    LoadReport {
        mode: if spec.rate.is_some() { "open" } else { "closed" },
        spec: spec.clone(),
        ops,
        ops_per_sec: ops as f64 / spec.duration.as_secs_f64(),
        latency_ms: Latency::of(t.latencies),
        errors: t.errors,
        late_starts: t.late,
    }
}

// ---------------------------------------------------------------- processes

/// CPU time (user + system) and peak resident memory of a process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    /// VmHWM: the peak resident set size.
    pub peak_rss_bytes: u64,
}

fn clock_ticks() -> f64 {
    extern "C" {
        fn sysconf(name: std::os::raw::c_int) -> std::os::raw::c_long;
    }
    const SC_CLK_TCK: std::os::raw::c_int = 2;
    // SAFETY: sysconf reads a constant of the C library; it takes no pointers.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` when the process is gone.
pub fn sample_process(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state field.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { cpu_seconds: ticks as f64 / clock_ticks(), peak_rss_bytes: hwm_kib * 1024 })
}

// ---------------------------------------------------------------- crypto

/// Costs of ed25519 on this machine, in microseconds per operation.
#[derive(Clone, Debug, Serialize)]
pub struct CryptoCosts {
    pub message_bytes: usize,
    pub sign_us: f64,
    pub verify_us: f64,
    /// Per signature, in a batch of 8.
    pub verify_batch8_us: f64,
    /// Per signature, in a batch of 64.
    pub verify_batch64_us: f64,
    pub sha256_1kib_us: f64,
    /// Decompressing a public key (done once per key thanks to a cache).
    pub parse_key_us: f64,
}

/// Signatures one request costs, by who does the work, at batch size `batch`.
#[derive(Clone, Debug, Serialize)]
pub struct SignatureCounts {
    pub n: usize,
    pub batch: f64,
    pub checkpoint_interval: u64,
    /// The client signs its request.
    pub client_signs: f64,
    /// The client checks f+1 matching replies.
    pub client_verifies: f64,
    /// Replicas sign a reply each, plus their share of the per-batch messages.
    pub replica_signs: f64,
    /// Replicas check the client's signature once each (the verified-signature
    /// cache spares backups a second check when the request comes again in a batch).
    pub request_verifies: f64,
    /// Replicas check protocol messages (batched per drain).
    pub message_verifies: f64,
}

impl SignatureCounts {
    /// The protocol's signature work per request, for `n` replicas at batch size `batch`.
    pub fn per_request(n: usize, batch: f64, checkpoint_interval: u64) -> SignatureCounts {
        let nf = n as f64;
        let f = ((n.max(1) - 1) / 3) as f64;
        let b = batch.max(1.0);
        let k = checkpoint_interval.max(1) as f64;
        // Per batch: one pre-prepare, n-1 prepares, n commits; per K batches n checkpoint votes.
        let per_batch_signs = 1.0 + (nf - 1.0) + nf + nf / k;
        // Each is checked by every replica that receives it: the pre-prepare by n-1
        // backups, each backup's prepare and everyone's commit by the n-1 others.
        let per_batch_verifies = (nf - 1.0) + (nf - 1.0) * (nf - 1.0) + nf * (nf - 1.0) + nf * (nf - 1.0) / k;
        SignatureCounts {
            n,
            batch: b,
            checkpoint_interval,
            client_signs: 1.0,
            client_verifies: f + 1.0,
            replica_signs: nf + per_batch_signs / b,
            request_verifies: nf,
            message_verifies: per_batch_verifies / b,
        }
    }

    /// CPU seconds of the replicas' signature work per request (single checks
    /// of requests, batched checks of protocol messages).
    pub fn replica_cpu_seconds(&self, c: &CryptoCosts) -> f64 {
        let batched = if self.message_verifies * self.batch >= 64.0 { c.verify_batch64_us } else { c.verify_batch8_us };
        (self.replica_signs * c.sign_us + self.request_verifies * c.verify_us + self.message_verifies * batched) / 1e6
    }

    /// CPU seconds of the clients' signature work per request.
    pub fn client_cpu_seconds(&self, c: &CryptoCosts) -> f64 {
        (self.client_signs * c.sign_us + self.client_verifies * c.verify_us) / 1e6
    }
}

/// The crypto ceiling at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    pub counts: SignatureCounts,
    /// CPU microseconds of the replicas' signature work per request.
    pub replica_cpu_us: f64,
    /// The same for the clients.
    pub client_cpu_us: f64,
    /// Requests per second if `cores` cores did nothing but the replicas' signature work.
    pub replicas_only_per_sec: f64,
    /// The same with the clients' signature work on the same cores (a one-machine benchmark).
    pub with_clients_per_sec: f64,
}

/// CPU seconds this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: std::os::raw::c_int, tp: *mut Timespec) -> std::os::raw::c_int;
    }
    const CLOCK_THREAD_CPUTIME_ID: std::os::raw::c_int = 3;
    let mut t = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `t`.
    let r = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if r != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Measures sign/verify costs on this machine (each figure the best of `rounds`).
pub fn measure_crypto(message_bytes: usize, iterations: usize, rounds: usize) -> CryptoCosts {
    let keys: Vec<SigningKey> = (0..64)
        .map(|_| {
            let mut s = [0u8; 32];
            OsRng.fill_bytes(&mut s);
            SigningKey::from_bytes(&s)
        })
        .collect();
    let pubs: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    let msgs: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let mut m = vec![0u8; message_bytes];
            OsRng.fill_bytes(&mut m);
            m
        })
        .collect();
    let sigs: Vec<Signature> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
    // CPU time of this thread, so that other load on the machine does not inflate the figures.
    let best = |f: &mut dyn FnMut() -> usize| -> f64 {
        (0..rounds.max(1))
            .map(|_| {
                let t = thread_cpu_seconds();
                let ops = f();
                (thread_cpu_seconds() - t) * 1e6 / ops.max(1) as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let iters = iterations.max(1);
    let sign_us = best(&mut || {
        for i in 0..iters {
            std::hint::black_box(keys[i % 64].sign(&msgs[i % 64]));
        }
        iters
    });
    let verify_us = best(&mut || {
        for i in 0..iters {
            std::hint::black_box(pubs[i % 64].verify(&msgs[i % 64], &sigs[i % 64]).is_ok());
        }
        iters
    });
    let batch = |size: usize| {
        best(&mut || {
            let rounds = (iters / size).max(1);
            for r in 0..rounds {
                let at = (r * size) % (64 - size + 1);
                let m: Vec<&[u8]> = msgs[at..at + size].iter().map(|m| m.as_slice()).collect();
                std::hint::black_box(
                    ed25519_dalek::verify_batch(&m, &sigs[at..at + size], &pubs[at..at + size]).is_ok(),
                );
            }
            rounds * size
        })
    };
    let verify_batch8_us = batch(8);
    let verify_batch64_us = batch(64);
    let kib = vec![7u8; 1024];
    let sha256_1kib_us = best(&mut || {
        for _ in 0..iters {
            std::hint::black_box(crate::crypto::sha256(&[&kib]));
        }
        iters
    });
    let key_bytes: Vec<[u8; 32]> = pubs.iter().map(|k| k.to_bytes()).collect();
    let parse_key_us = best(&mut || {
        for i in 0..iters {
            std::hint::black_box(VerifyingKey::from_bytes(&key_bytes[i % 64]).is_ok());
        }
        iters
    });
    CryptoCosts { message_bytes, sign_us, verify_us, verify_batch8_us, verify_batch64_us, sha256_1kib_us, parse_key_us }
}

/// The ceiling for `n` replicas on `cores` cores at each batch size.
pub fn ceilings(c: &CryptoCosts, n: usize, checkpoint_interval: u64, cores: f64, batches: &[f64]) -> Vec<Ceiling> {
    batches
        .iter()
        .map(|b| {
            let counts = SignatureCounts::per_request(n, *b, checkpoint_interval);
            let (r, cl) = (counts.replica_cpu_seconds(c), counts.client_cpu_seconds(c));
            Ceiling {
                counts,
                replica_cpu_us: r * 1e6,
                client_cpu_us: cl * 1e6,
                replicas_only_per_sec: cores / r,
                with_clients_per_sec: cores / (r + cl),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_counts_at_n4() {
        // n=4, one request per batch, no checkpoints counted (K huge): signs = client 1 +
        // replies 4 + pre-prepare 1 + prepares 3 + commits 4.
        let c = SignatureCounts::per_request(4, 1.0, u64::MAX);
        assert!((c.client_signs + c.replica_signs - 13.0).abs() < 1e-6, "{c:?}");
        // Verifies: pre-prepare 3, prepares 3*3, commits 4*3.
        assert!((c.message_verifies - 24.0).abs() < 1e-6, "{c:?}");
        assert_eq!((c.client_verifies, c.request_verifies), (2.0, 4.0));
        // Large batches leave the per-request part: client 1 + 4 replies signed.
        let big = SignatureCounts::per_request(4, 1e9, u64::MAX);
        assert!((big.client_signs + big.replica_signs - 5.0).abs() < 1e-6);
    }

    #[test]
    fn latency_percentiles() {
        let l = Latency::of((1..=1000).map(|i| i as f64 / 1000.0).collect());
        assert_eq!((l.p50.round(), l.p99.round(), l.max.round()), (501.0, 990.0, 1000.0));
        assert_eq!(Latency::of(vec![]).max, 0.0);
    }

    #[test]
    fn own_process_sample() {
        let s = sample_process(std::process::id()).expect("own /proc entry");
        assert!(s.peak_rss_bytes > 0);
        assert!(sample_process(u32::MAX).is_none());
    }
}
