//! The load generator: the same settings for every system, driven by
//! `pbft::bench::drive` (the loop `pbftctl bench` uses too).
//!
//! - closed loop: C clients, each with one outstanding put, sending the next
//!   as soon as the previous one is committed; throughput counts puts
//!   completed in the measured window, latency is send-to-commit;
//! - open loop: puts scheduled at a fixed rate R (the i-th at start + i/R)
//!   and taken by a pool of clients; latency runs from the *intended* send
//!   time, so a stalled system is charged for the queue it causes (no
//!   coordinated omission); a put whose slot passed more than `GRACE` before
//!   the end is counted as missed.
//!
//! Both have a warm-up (not counted) then a measured window. Keys: each
//! client cycles over its own share of a fixed key space (so state size does
//! not grow with the run); values: `value_size` bytes, unique per put (the
//! CometBFT mempool refuses a tx it has seen).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use pbft::bench::{clock_ticks, drive, ClientRun, LoadClient, OpFailure, Schedule, WindowStats, OPEN_LOOP_GRACE};

use crate::clients::{Client, Target, REQUEST_TIMEOUT};
use crate::error::BenchError;
use crate::procstat::{CpuSnapshot, CpuUse};
use crate::systems::ours::{scrape, Counters};

pub use pbft::bench::Latency;

/// Key space and value size.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Workload {
    pub value_size: usize,
    /// Distinct keys over all clients.
    pub keyspace: u64,
}

/// A number no earlier point of this process used (puts stay unique across points).
fn point_nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Workload {
    /// The key of client `c`'s `seq`-th put among `clients`.
    pub fn key(&self, c: usize, clients: usize, seq: u64) -> Vec<u8> {
        let share = (self.keyspace / clients.max(1) as u64).max(1);
        format!("bench-{c:05}-{:06}", seq % share).into_bytes()
    }

    /// A value of exactly `value_size` bytes (letters and digits only: a valid kvstore tx part),
    /// unique per (process, point, c, seq).
    pub fn value(&self, nonce: u64, c: usize, seq: u64) -> Vec<u8> {
        let mut v = format!("{}p{nonce}c{c}n{seq}v", std::process::id()).into_bytes();
        v.resize(self.value_size.max(v.len()), b'x');
        v.truncate(self.value_size);
        v
    }
}

/// Warm-up and measured window.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Timing {
    pub warmup_s: f64,
    pub measure_s: f64,
}

/// Closed loop (`clients` concurrent) or open loop (`rate` per second).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Shape {
    Closed { clients: usize },
    Open { rate: f64, workers: usize },
}

/// What one load point measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub shape: Shape,
    pub value_size: usize,
    pub timing: Timing,
    /// Puts committed in the window (closed: completed in it; open: due in it).
    pub completed: u64,
    pub errors: u64,
    /// Open loop: puts due in the window that were never sent (the system fell too far behind).
    pub missed: u64,
    pub throughput: f64,
    pub latency_ms: Latency,
    pub cpu: CpuUse,
    /// System CPU seconds per 1,000 committed puts.
    pub cpu_per_1k: f64,
    /// Load-generator CPU seconds per 1,000 committed puts.
    pub loadgen_cpu_per_1k: f64,
    /// First error message seen, if any.
    pub first_error: Option<String>,
    /// Completions per 100 ms over the whole run, warm-up included (only when asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline_100ms: Vec<u32>,
    /// Longest time without any completion inside the window, in ms.
    pub longest_gap_ms: f64,
    /// With an event (a kill): the longest time between two completions, the second after
    /// the event (completions after the window count), in ms; None: nothing completed after it.
    #[serde(default)]
    pub gap_after_event_ms: Option<f64>,
    /// Our replicas' counters over the window (None for the other systems).
    #[serde(default)]
    pub replica_counters: Option<ReplicaCounters>,
    /// The key and value of client 0's last committed put (read back afterwards).
    #[serde(skip)]
    pub last_write: Option<(Vec<u8>, Vec<u8>)>,
}

/// What our replicas' /metrics say about the window.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ReplicaCounters {
    /// Requests per executed batch.
    pub mean_batch: f64,
    /// Signature verifications (all replicas) per committed put.
    pub verifications_per_put: f64,
    /// WAL fsyncs (all replicas) per committed put.
    pub fsyncs_per_put: f64,
}

impl ReplicaCounters {
    fn between(a: &[Option<Counters>], b: &[Option<Counters>], completed: u64) -> Option<ReplicaCounters> {
        let pairs: Vec<(Counters, Counters)> = a.iter().zip(b).filter_map(|(x, y)| Some(((*x)?, (*y)?))).collect();
        if pairs.is_empty() || completed == 0 {
            return None;
        }
        let sum = |f: fn(&Counters) -> f64| pairs.iter().map(|(x, y)| f(y) - f(x)).sum::<f64>();
        let batches = sum(|c| c.batches);
        let per_put = |v: f64| v / completed as f64;
        Some(ReplicaCounters {
            mean_batch: if batches > 0.0 { sum(|c| c.batched_requests) / batches } else { 0.0 },
            verifications_per_put: per_put(sum(|c| c.verifications)),
            fsyncs_per_put: per_put(sum(|c| c.fsyncs)),
        })
    }
}

async fn scrape_all(addrs: &[SocketAddr]) -> Vec<Option<Counters>> {
    let mut out = vec![];
    for a in addrs {
        out.push(scrape(*a).await);
    }
    out
}

/// Options of a point beyond its shape.
#[derive(Clone, Debug, Default)]
pub struct PointOptions {
    /// Record the per-100 ms completion timeline.
    pub timeline: bool,
    /// Called once, this far into the measured window (e.g. to kill a replica).
    pub event_at: Option<f64>,
}

/// One client of a point: its `seq`-th put writes its own key (see [`Workload`]) with a unique value.
struct PutClient {
    client: Client,
    c: usize,
    clients: usize,
    workload: Workload,
    nonce: u64,
    /// Client 0 remembers its last committed put (read back afterwards).
    last_write: Option<(Vec<u8>, Vec<u8>)>,
}

impl LoadClient for PutClient {
    async fn call(&mut self, seq: u64) -> Result<(), OpFailure> {
        let key = self.workload.key(self.c, self.clients, seq);
        let value = self.workload.value(self.nonce, self.c, seq);
        match self.client.put(&key, &value).await {
            Ok(()) => {
                if self.c == 0 {
                    self.last_write = Some((key, value));
                }
                Ok(())
            }
            Err(e) => Err(OpFailure { kind: "put", message: e.to_string() }),
        }
    }
}

/// Runs one load point against `target`, sampling the CPU of `pids` over the window.
pub async fn run_point(
    target: &Target,
    shape: Shape,
    workload: Workload,
    timing: Timing,
    pids: &[u32],
    metrics: &[SocketAddr],
    opts: PointOptions,
    event: Option<Box<dyn FnOnce() + Send>>,
) -> Result<Point, BenchError> {
    let n_clients = match shape {
        Shape::Closed { clients } => clients.max(1),
        Shape::Open { workers, .. } => workers.max(1),
    };
    let nonce = point_nonce();
    let mut clients = Vec::with_capacity(n_clients);
    for c in 0..n_clients {
        let client = target.client(c).await?;
        clients.push(PutClient { client, c, clients: n_clients, workload, nonce, last_write: None });
    }
    let warmup = Duration::from_secs_f64(timing.warmup_s);
    let measure = Duration::from_secs_f64(timing.measure_s);
    let start = Instant::now() + Duration::from_millis(100);
    let window_start = start + warmup;
    let end = window_start + measure;
    let rate = match shape {
        Shape::Closed { .. } => None,
        Shape::Open { rate, .. } => Some(rate),
    };
    let schedule = Schedule { start, window_start, end, rate };
    let load = tokio::spawn(drive(clients, schedule, end + REQUEST_TIMEOUT + OPEN_LOOP_GRACE + Duration::from_secs(5)));
    // CPU over exactly the measured window; the optional event inside it.
    let pids_owned = pids.to_vec();
    let metrics = metrics.to_vec();
    let timeline = opts.timeline;
    let event_at = opts.event_at;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(window_start.into()).await;
        let a = CpuSnapshot::take(&pids_owned);
        let ma = scrape_all(&metrics).await;
        if let (Some(at), Some(ev)) = (event_at, event) {
            tokio::time::sleep_until((window_start + measure.mul_f64(at.clamp(0.0, 1.0))).into()).await;
            ev();
        }
        tokio::time::sleep_until(end.into()).await;
        let b = CpuSnapshot::take(&pids_owned);
        (a, b, ma, scrape_all(&metrics).await)
    });
    let (a, b, ma, mb) = sampler.await.map_err(|e| BenchError::Setup(format!("CPU sampler: {e}")))?;
    let runs = load.await.map_err(|e| BenchError::Setup(format!("load task failed: {e}")))?;
    let event_us = opts.event_at.map(|at| ((timing.warmup_s + timing.measure_s * at.clamp(0.0, 1.0)) * 1e6) as u64);
    let mut p = summarize(shape, workload, timing, &runs, CpuUse::between(&a, &b, clock_ticks()), timeline, event_us);
    p.replica_counters = ReplicaCounters::between(&ma, &mb, p.completed);
    Ok(p)
}

/// The shared window figures (`WindowStats`) plus what only this harness reports:
/// the timeline, the longest gap, the gap after an event, the last write.
fn summarize<C: HasLastWrite>(
    shape: Shape,
    workload: Workload,
    timing: Timing,
    runs: &[ClientRun<C>],
    cpu: CpuUse,
    want_timeline: bool,
    event_us: Option<u64>,
) -> Point {
    let w0 = (timing.warmup_s * 1e6) as u64;
    let w1 = ((timing.warmup_s + timing.measure_s) * 1e6) as u64;
    let rate = match shape {
        Shape::Open { rate, .. } => Some(rate),
        Shape::Closed { .. } => None,
    };
    let st = WindowStats::of(runs, w0, w1, rate);
    let mut done_times = vec![];
    let mut all_done = vec![];
    let mut timeline = vec![];
    for r in runs {
        done_times.extend(r.samples.iter().map(|s| s.done_us).filter(|t| *t >= w0 && *t < w1));
        if event_us.is_some() {
            all_done.extend(r.samples.iter().map(|s| s.done_us));
        }
        if want_timeline {
            for s in &r.samples {
                let b = (s.done_us / 100_000) as usize;
                if timeline.len() <= b {
                    timeline.resize(b + 1, 0u32);
                }
                timeline[b] += 1;
            }
        }
    }
    done_times.sort_unstable();
    let mut gap = 0u64;
    let mut prev = w0;
    for t in done_times.iter().copied().chain(std::iter::once(w1)) {
        gap = gap.max(t.saturating_sub(prev));
        prev = t;
    }
    all_done.sort_unstable();
    let gap_after_event_ms = event_us.and_then(|ev| {
        let first_after = all_done.iter().position(|t| *t > ev)?;
        let mut gap = 0u64;
        for i in first_after.max(1)..all_done.len() {
            gap = gap.max(all_done[i] - all_done[i - 1]);
        }
        if first_after == 0 {
            gap = gap.max(all_done[0].saturating_sub(ev));
        }
        Some(gap as f64 / 1000.0)
    });
    let completed = st.ops;
    let per_1k = |s: f64| if completed == 0 { 0.0 } else { s * 1000.0 / completed as f64 };
    Point {
        shape,
        value_size: workload.value_size,
        timing,
        completed,
        errors: st.errors.values().sum(),
        missed: st.missed,
        throughput: completed as f64 / timing.measure_s,
        latency_ms: st.latency_ms,
        cpu,
        cpu_per_1k: per_1k(cpu.system_s),
        loadgen_cpu_per_1k: per_1k(cpu.loadgen_s),
        first_error: runs.iter().find_map(|r| r.first_error.clone()),
        timeline_100ms: timeline,
        longest_gap_ms: gap as f64 / 1000.0,
        gap_after_event_ms,
        replica_counters: None,
        last_write: runs.iter().find_map(|r| r.client.last_write()),
    }
}

/// A client that may remember its last committed put.
trait HasLastWrite {
    fn last_write(&self) -> Option<(Vec<u8>, Vec<u8>)>;
}

impl HasLastWrite for PutClient {
    fn last_write(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.last_write.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_in_each_clients_share_and_values_are_unique() {
        let w = Workload { value_size: 100, keyspace: 1000 };
        assert_eq!(w.key(3, 10, 0), w.key(3, 10, 100), "client 3 cycles over 100 keys");
        assert_ne!(w.key(3, 10, 0), w.key(4, 10, 0));
        assert_eq!(w.value(0, 1, 7).len(), 100);
        assert_ne!(w.value(0, 1, 7), w.value(0, 1, 8));
        assert_ne!(w.value(0, 1, 7), w.value(0, 2, 7));
        assert_ne!(w.value(0, 1, 7), w.value(1, 1, 7), "another point, another value");
        assert!(w.value(0, 1, 7).iter().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(Workload { value_size: 1024, keyspace: 1 }.value(0, 0, 0).len(), 1024);
        assert_ne!(point_nonce(), point_nonce());
    }

    impl HasLastWrite for () {
        fn last_write(&self) -> Option<(Vec<u8>, Vec<u8>)> {
            None
        }
    }

    fn out(samples: &[(u64, u64)], errors: &[u64]) -> ClientRun<()> {
        ClientRun {
            client: (),
            samples: samples
                .iter()
                .map(|&(due_us, done_us)| pbft::bench::Sample { due_us, sent_us: due_us, done_us })
                .collect(),
            failures: errors.iter().map(|at| (*at, "put")).collect(),
            first_error: None,
        }
    }

    #[test]
    fn window_missed_and_gap() {
        let timing = Timing { warmup_s: 1.0, measure_s: 2.0 };
        let w = Workload { value_size: 1, keyspace: 1 };
        let s = [(500_000, 900_000), (1_000_000, 1_100_000), (1_100_000, 1_200_000), (2_500_000, 2_600_000)];
        let o = || vec![out(&s, &[1_500_000, 3_500_000])];
        let closed = summarize(Shape::Closed { clients: 1 }, w, timing, &o(), CpuUse::default(), true, Some(2_000_000));
        // After the event at 2 s: from 1.2 s to 2.6 s.
        assert_eq!(closed.gap_after_event_ms, Some(1400.0));
        let late = summarize(Shape::Closed { clients: 1 }, w, timing, &o(), CpuUse::default(), false, Some(2_700_000));
        assert_eq!(late.gap_after_event_ms, None, "nothing completed after the event");
        assert_eq!((closed.completed, closed.errors, closed.missed), (3, 1, 0));
        assert_eq!(closed.throughput, 1.5);
        // Gap: from 1.2 s to 2.6 s.
        assert!((closed.longest_gap_ms - 1400.0).abs() < 1e-9, "{}", closed.longest_gap_ms);
        assert_eq!(closed.timeline_100ms.iter().sum::<u32>(), 4);
        let open = summarize(Shape::Open { rate: 5.0, workers: 1 }, w, timing, &o(), CpuUse::default(), false, None);
        // 10 due in the window: 3 completed, 1 error, 6 missed.
        assert_eq!((open.completed, open.errors, open.missed), (3, 1, 6));
        assert!((open.latency_ms.p50 - 100.0).abs() < 1e-9);
    }
}
