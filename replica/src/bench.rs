//! Measuring tools shared by `pbftctl bench` and the cross-system harness
//! (`bench/loadgen`, binary `pbft-bench`): a load driver for any system's
//! client (closed loop with C clients, or open loop at a fixed rate with
//! latency measured from each operation's intended start, so a slow server
//! cannot hide its queueing delay by slowing the generator down: no
//! coordinated omission), an ed25519 micro-benchmark with the "crypto
//! ceiling" of the protocol, and CPU and peak-memory readings of processes
//! from `/proc`.
//!
//! Everything here prints or returns figures; nothing asserts timings.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::kvclient::{ClientError, Endpoints, KvClient};
use crate::proto::op_result::Status as OpStatus;
use crate::proto::{operation::Kind, Get, Put};

// ---------------------------------------------------------------- load driver

/// A failed operation: its kind (a short label, counted) and what went wrong.
#[derive(Clone, Debug)]
pub struct OpFailure {
    pub kind: &'static str,
    pub message: String,
}

/// One client of a load run, of any system: does its `seq`-th operation and
/// returns once the system says it is done.
pub trait LoadClient: Send + 'static {
    fn call(&mut self, seq: u64) -> impl Future<Output = Result<(), OpFailure>> + Send;
}

/// When a load run starts, when its measured window opens and ends, and its shape.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Time zero of the samples.
    pub start: Instant,
    pub window_start: Instant,
    pub end: Instant,
    /// Open loop: operations per second, the i-th due at `start + i/rate`,
    /// taken by whichever client is free. `None`: closed loop.
    pub rate: Option<f64>,
}

/// Open-loop operations whose slot is this far in the past when the window ends are not sent (missed).
pub const OPEN_LOOP_GRACE: Duration = Duration::from_secs(5);

/// One completed operation, in µs from the schedule's start: when it was due
/// (open loop) or sent (closed loop), when it was actually sent, when it completed.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub due_us: u64,
    pub sent_us: u64,
    pub done_us: u64,
}

/// What one client did over a run (the client is handed back, e.g. to read its last write).
pub struct ClientRun<C> {
    pub client: C,
    pub samples: Vec<Sample>,
    /// Failed operations: when they were due, and their kind.
    pub failures: Vec<(u64, &'static str)>,
    pub first_error: Option<String>,
}

/// Runs `clients` on `schedule` until its end, one task each; a client still
/// stuck at `hard_stop` is given up (its figures are lost).
pub async fn drive<C: LoadClient>(clients: Vec<C>, schedule: Schedule, hard_stop: Instant) -> Vec<ClientRun<C>> {
    let ticket = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> =
        clients.into_iter().map(|client| tokio::spawn(drive_one(client, schedule, ticket.clone()))).collect();
    let mut runs = Vec::with_capacity(tasks.len());
    for t in tasks {
        let remaining = hard_stop.saturating_duration_since(Instant::now());
        if let Ok(Ok(run)) = tokio::time::timeout(remaining, t).await {
            runs.push(run);
        }
    }
    runs
}

async fn drive_one<C: LoadClient>(client: C, s: Schedule, ticket: Arc<AtomicU64>) -> ClientRun<C> {
    let mut run = ClientRun { client, samples: Vec::with_capacity(4096), failures: vec![], first_error: None };
    let us = |t: Instant| t.saturating_duration_since(s.start).as_micros() as u64;
    tokio::time::sleep_until(s.start.into()).await;
    let mut seq = 0u64;
    loop {
        let due = match s.rate {
            None => {
                let now = Instant::now();
                if now >= s.end {
                    break;
                }
                now
            }
            Some(rate) => {
                let i = ticket.fetch_add(1, Ordering::Relaxed);
                let due = s.start + Duration::from_secs_f64(i as f64 / rate);
                if due >= s.end || Instant::now() > s.end + OPEN_LOOP_GRACE {
                    break; // past the window, or hopelessly behind: the rest are missed
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
        };
        let sent = Instant::now();
        let r = run.client.call(seq).await;
        seq += 1;
        match r {
            Ok(()) => run.samples.push(Sample { due_us: us(due), sent_us: us(sent), done_us: us(Instant::now()) }),
            Err(e) => {
                run.failures.push((us(due), e.kind));
                if run.first_error.is_none() {
                    run.first_error = Some(e.message);
                }
                // Do not spin on a refusing system.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    run
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From latencies in microseconds (sorted here). Percentiles are
    /// nearest-rank: the smallest sample with at least `p` of all samples at
    /// or below it (so p50 of [100, 200] is 100).
    pub fn of(mut us: Vec<u64>) -> Latency {
        if us.is_empty() {
            return Latency::default();
        }
        us.sort_unstable();
        let n = us.len();
        let at = |p: f64| {
            let rank = ((n as f64 * p).ceil() as usize).clamp(1, n);
            us[rank - 1] as f64 / 1000.0
        };
        let mean = us.iter().sum::<u64>() as f64 / us.len() as f64 / 1000.0;
        Latency { p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: at(1.0), mean }
    }
}

/// The measured window of a run: closed loop, operations completed in it;
/// open loop, operations due in it (latency from the due time).
#[derive(Clone, Debug, Default)]
pub struct WindowStats {
    pub ops: u64,
    pub latency_ms: Latency,
    /// Failures due in the window, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: operations due in the window that were never sent.
    pub missed: u64,
    /// Open loop: operations sent more than 1 ms after they were due (every client was busy).
    pub late_starts: u64,
}

impl WindowStats {
    /// `w0_us..w1_us`: the window in µs from the schedule's start.
    pub fn of<C>(runs: &[ClientRun<C>], w0_us: u64, w1_us: u64, rate: Option<f64>) -> WindowStats {
        let open = rate.is_some();
        let inside = |t: u64| t >= w0_us && t < w1_us;
        let mut latencies = vec![];
        let mut st = WindowStats::default();
        for r in runs {
            for s in r.samples.iter().filter(|s| inside(if open { s.due_us } else { s.done_us })) {
                latencies.push(s.done_us.saturating_sub(s.due_us));
                st.late_starts += u64::from(open && s.sent_us > s.due_us + 1000);
            }
            for (_, kind) in r.failures.iter().filter(|(at, _)| inside(*at)) {
                *st.errors.entry((*kind).to_string()).or_default() += 1;
            }
        }
        st.ops = latencies.len() as u64;
        if let Some(rate) = rate {
            // Tickets i with due time i/rate inside the window.
            let due = (w1_us as f64 / 1e6 * rate).ceil() - (w0_us as f64 / 1e6 * rate).ceil();
            let failed: u64 = st.errors.values().sum();
            st.missed = (due.max(0.0) as u64).saturating_sub(st.ops + failed);
        }
        st.latency_ms = Latency::of(latencies);
        st
    }
}

// ---------------------------------------------------------------- load on ours

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

/// What a load run measured (see [`WindowStats`]).
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
    /// Open loop: operations due in the window that were never sent (the cluster fell too far behind).
    pub missed: u64,
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
            "{} c={} {}: {} ops in {:.1} s: {:.0} ops/s, {errors} errors {:?}, {} missed; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            self.mode,
            self.spec.clients,
            self.spec.rate.map_or(String::new(), |r| format!("rate={r:.0}/s")),
            self.ops,
            self.spec.duration.as_secs_f64(),
            self.ops_per_sec,
            self.errors,
            self.missed,
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

/// A [`KvClient`] issuing the operations of a [`LoadSpec`] (random keys, one random value per client).
struct SpecClient {
    client: KvClient,
    op: Op,
    keys: u64,
    value: Bytes,
}

impl LoadClient for SpecClient {
    async fn call(&mut self, _seq: u64) -> Result<(), OpFailure> {
        let key = format!("k{:09}", OsRng.next_u64() % self.keys.max(1));
        let kind = match self.op {
            Op::Put => Kind::Put(Put { key: key.into(), value: self.value.clone() }),
            Op::Get => Kind::Get(Get { key: key.into() }),
        };
        match self.client.execute(kind).await {
            Ok(res) if res.status == OpStatus::Rejected as i32 => {
                Err(OpFailure { kind: "rejected", message: res.error })
            }
            Ok(_) => Ok(()),
            Err(e) => Err(OpFailure { kind: error_kind(&e), message: e.to_string() }),
        }
    }
}

/// Runs one load point against `endpoints` and reports it.
pub async fn run_load(endpoints: &Endpoints, spec: &LoadSpec) -> LoadReport {
    let clients = (0..spec.clients.max(1))
        .map(|_| {
            let mut client = KvClient::new(endpoints.clone());
            client.timeout = spec.op_timeout;
            let mut value = vec![0u8; spec.value_size];
            OsRng.fill_bytes(&mut value);
            SpecClient { client, op: spec.op, keys: spec.keys, value: value.into() }
        })
        .collect();
    let start = Instant::now();
    let schedule = Schedule {
        start,
        window_start: start + spec.warmup,
        end: start + spec.warmup + spec.duration,
        rate: spec.rate,
    };
    let runs = drive(clients, schedule, schedule.end + spec.op_timeout + OPEN_LOOP_GRACE).await;
    let w0 = spec.warmup.as_micros() as u64;
    let st = WindowStats::of(&runs, w0, w0 + spec.duration.as_micros() as u64, spec.rate);
    LoadReport {
        mode: if spec.rate.is_some() { "open" } else { "closed" },
        spec: spec.clone(),
        ops: st.ops,
        ops_per_sec: st.ops as f64 / spec.duration.as_secs_f64(),
        latency_ms: st.latency_ms,
        errors: st.errors,
        missed: st.missed,
        late_starts: st.late_starts,
    }
}

// ---------------------------------------------------------------- processes

/// CPU time (user + system) and peak resident memory of a process.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    /// VmHWM: the peak resident set size.
    pub peak_rss_bytes: u64,
}

/// Clock ticks per second of /proc's CPU times (USER_HZ).
pub fn clock_ticks() -> f64 {
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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
    /// Every round of sign and of verify (the figures above are the best): the noise.
    #[serde(default)]
    pub sign_rounds_us: Vec<f64>,
    #[serde(default)]
    pub verify_rounds_us: Vec<f64>,
}

/// Signatures one request costs, by who does the work, at batch size `batch`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignatureCounts {
    pub n: usize,
    pub batch: f64,
    pub checkpoint_interval: u64,
    /// The client signs its request.
    pub client_signs: f64,
    /// The client checks f+1 matching replies.
    pub client_verifies: f64,
    /// Replicas' share of the per-batch messages (replies included: one
    /// signed reply root per replica and batch).
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
        // Per batch: one pre-prepare, n-1 prepares, n commits, n reply roots;
        // per K batches n checkpoint votes.
        let per_batch_signs = 1.0 + (nf - 1.0) + nf + nf + nf / k;
        // Each is checked by every replica that receives it: the pre-prepare by n-1
        // backups, each backup's prepare and everyone's commit by the n-1 others.
        let per_batch_verifies = (nf - 1.0) + (nf - 1.0) * (nf - 1.0) + nf * (nf - 1.0) + nf * (nf - 1.0) / k;
        SignatureCounts {
            n,
            batch: b,
            checkpoint_interval,
            client_signs: 1.0,
            client_verifies: f + 1.0,
            replica_signs: per_batch_signs / b,
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    let rounds_of = |f: &mut dyn FnMut() -> usize| -> Vec<f64> {
        (0..rounds.max(1))
            .map(|_| {
                let t = thread_cpu_seconds();
                let ops = f();
                (thread_cpu_seconds() - t) * 1e6 / ops.max(1) as f64
            })
            .collect()
    };
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let iters = iterations.max(1);
    let sign_rounds_us = rounds_of(&mut || {
        for i in 0..iters {
            std::hint::black_box(keys[i % 64].sign(&msgs[i % 64]));
        }
        iters
    });
    let verify_rounds_us = rounds_of(&mut || {
        for i in 0..iters {
            std::hint::black_box(pubs[i % 64].verify(&msgs[i % 64], &sigs[i % 64]).is_ok());
        }
        iters
    });
    let batch = |size: usize| {
        best(&rounds_of(&mut || {
            let rounds = (iters / size).max(1);
            for r in 0..rounds {
                let at = (r * size) % (64 - size + 1);
                let m: Vec<&[u8]> = msgs[at..at + size].iter().map(|m| m.as_slice()).collect();
                std::hint::black_box(
                    ed25519_dalek::verify_batch(&m, &sigs[at..at + size], &pubs[at..at + size]).is_ok(),
                );
            }
            rounds * size
        }))
    };
    let verify_batch8_us = batch(8);
    let verify_batch64_us = batch(64);
    let kib = vec![7u8; 1024];
    let sha256_1kib_us = best(&rounds_of(&mut || {
        for _ in 0..iters {
            std::hint::black_box(crate::crypto::sha256(&[&kib]));
        }
        iters
    }));
    let key_bytes: Vec<[u8; 32]> = pubs.iter().map(|k| k.to_bytes()).collect();
    let parse_key_us = best(&rounds_of(&mut || {
        for i in 0..iters {
            std::hint::black_box(VerifyingKey::from_bytes(&key_bytes[i % 64]).is_ok());
        }
        iters
    }));
    CryptoCosts {
        message_bytes,
        sign_us: best(&sign_rounds_us),
        verify_us: best(&verify_rounds_us),
        verify_batch8_us,
        verify_batch64_us,
        sha256_1kib_us,
        parse_key_us,
        sign_rounds_us,
        verify_rounds_us,
    }
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
        // reply roots 4 + pre-prepare 1 + prepares 3 + commits 4.
        let c = SignatureCounts::per_request(4, 1.0, u64::MAX);
        assert!((c.client_signs + c.replica_signs - 13.0).abs() < 1e-6, "{c:?}");
        // Verifies: pre-prepare 3, prepares 3*3, commits 4*3.
        assert!((c.message_verifies - 24.0).abs() < 1e-6, "{c:?}");
        assert_eq!((c.client_verifies, c.request_verifies), (2.0, 4.0));
        // Large batches leave the per-request part: the client's signature alone
        // (replies are signed once per batch).
        let big = SignatureCounts::per_request(4, 1e9, u64::MAX);
        assert!((big.client_signs + big.replica_signs - 1.0).abs() < 1e-6);
    }

    #[test]
    fn latency_percentiles() {
        let l = Latency::of((1..=1000).map(|i| i * 1000).collect());
        assert_eq!((l.p50.round(), l.p99.round(), l.max.round()), (500.0, 990.0, 1000.0));
        assert_eq!(Latency::of(vec![]).max, 0.0);
    }

    fn run(samples: &[(u64, u64)], failures: &[u64]) -> ClientRun<()> {
        ClientRun {
            client: (),
            samples: samples.iter().map(|&(due_us, done_us)| Sample { due_us, sent_us: due_us, done_us }).collect(),
            failures: failures.iter().map(|at| (*at, "timeout")).collect(),
            first_error: None,
        }
    }

    #[test]
    fn window_counts_completions_closed_and_due_times_open() {
        // Window 1 s .. 3 s.
        let s = [(500_000, 900_000), (900_000, 1_100_000), (1_100_000, 1_200_000), (2_900_000, 3_100_000)];
        let runs = [run(&s, &[1_500_000, 3_500_000])];
        let closed = WindowStats::of(&runs, 1_000_000, 3_000_000, None);
        // Completed at 1.1 s and 1.2 s; one failure due inside.
        assert_eq!((closed.ops, closed.errors.get("timeout"), closed.missed), (2, Some(&1), 0));
        let open = WindowStats::of(&runs, 1_000_000, 3_000_000, Some(5.0));
        // Due at 1.1 s and 2.9 s; 10 tickets due in the window: 2 done, 1 failed, 7 missed.
        assert_eq!((open.ops, open.missed), (2, 7));
        assert_eq!((open.latency_ms.p50.round(), open.latency_ms.max.round()), (100.0, 200.0));
    }

    #[test]
    fn own_process_sample() {
        let s = sample_process(std::process::id()).expect("own /proc entry");
        assert!(s.peak_rss_bytes > 0);
        assert!(sample_process(u32::MAX).is_none());
    }
}
