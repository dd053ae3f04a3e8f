//! The load generator: the same settings for every system.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clients::{Client, Target, REQUEST_TIMEOUT};
use crate::error::BenchError;
use crate::procstat::{clock_ticks, CpuSnapshot, CpuUse};
use crate::systems::ours::{scrape, Counters};

/// Open-loop puts whose slot is this far in the past when the window ends are not sent.
const GRACE: Duration = Duration::from_secs(5);

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

/// One put: when it was due (open loop) or sent (closed loop), and when it was committed, in µs from the start.
#[derive(Clone, Copy, Debug)]
struct Sample {
    start_us: u64,
    done_us: u64,
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
    pub fn of(mut us: Vec<u64>) -> Latency {
        if us.is_empty() {
            return Latency::default();
        }
        us.sort_unstable();
        let pick = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
        let mean = us.iter().sum::<u64>() as f64 / us.len() as f64 / 1000.0;
        Latency { p50: pick(0.5), p90: pick(0.9), p99: pick(0.99), p999: pick(0.999), max: pick(1.0), mean }
    }
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

struct TaskOut {
    samples: Vec<Sample>,
    errors: Vec<u64>,
    first_error: Option<String>,
    last_write: Option<(Vec<u8>, Vec<u8>)>,
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
    let mut clients = Vec::with_capacity(n_clients);
    for i in 0..n_clients {
        clients.push(target.client(i).await?);
    }
    let warmup = Duration::from_secs_f64(timing.warmup_s);
    let measure = Duration::from_secs_f64(timing.measure_s);
    let start = Instant::now() + Duration::from_millis(100);
    let window_start = start + warmup;
    let end = window_start + measure;
    let ticket = Arc::new(AtomicU64::new(0));
    let nonce = point_nonce();
    let mut tasks = Vec::with_capacity(n_clients);
    for (c, client) in clients.into_iter().enumerate() {
        let ticket = ticket.clone();
        tasks.push(tokio::spawn(drive(client, c, n_clients, shape, workload, nonce, start, end, ticket)));
    }
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
    let mut outs = vec![];
    let hard_stop = end + REQUEST_TIMEOUT + GRACE + Duration::from_secs(5);
    for t in tasks {
        let remaining = hard_stop.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, t).await {
            Ok(Ok(o)) => outs.push(o),
            Ok(Err(e)) => return Err(BenchError::Setup(format!("load task failed: {e}"))),
            Err(_) => {} // stuck past every timeout: its samples are lost, counted as missing below
        }
    }
    let event_us = opts.event_at.map(|at| ((timing.warmup_s + timing.measure_s * at.clamp(0.0, 1.0)) * 1e6) as u64);
    let mut p = summarize(shape, workload, timing, outs, CpuUse::between(&a, &b, clock_ticks()), timeline, event_us);
    p.replica_counters = ReplicaCounters::between(&ma, &mb, p.completed);
    Ok(p)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut client: Client,
    c: usize,
    clients: usize,
    shape: Shape,
    w: Workload,
    nonce: u64,
    start: Instant,
    end: Instant,
    ticket: Arc<AtomicU64>,
) -> TaskOut {
    let mut out = TaskOut { samples: Vec::with_capacity(4096), errors: vec![], first_error: None, last_write: None };
    let us = |t: Instant| t.saturating_duration_since(start).as_micros() as u64;
    tokio::time::sleep_until(start.into()).await;
    let mut seq = 0u64;
    loop {
        let due = match shape {
            Shape::Closed { .. } => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
            Shape::Open { rate, .. } => {
                let i = ticket.fetch_add(1, Ordering::Relaxed);
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if due >= end {
                    break;
                }
                if Instant::now() > end + GRACE {
                    break; // hopelessly behind: the rest are missed
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
        };
        let (key, value) = (w.key(c, clients, seq), w.value(nonce, c, seq));
        seq += 1;
        match client.put(&key, &value).await {
            Ok(()) => {
                out.samples.push(Sample { start_us: us(due), done_us: us(Instant::now()) });
                if c == 0 {
                    out.last_write = Some((key, value));
                }
            }
            Err(e) => {
                out.errors.push(us(due));
                if out.first_error.is_none() {
                    out.first_error = Some(e.to_string());
                }
                // Do not spin on a refusing system.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

fn summarize(
    shape: Shape,
    workload: Workload,
    timing: Timing,
    outs: Vec<TaskOut>,
    cpu: CpuUse,
    want_timeline: bool,
    event_us: Option<u64>,
) -> Point {
    let w0 = (timing.warmup_s * 1e6) as u64;
    let w1 = ((timing.warmup_s + timing.measure_s) * 1e6) as u64;
    // Closed loop: completions inside the window; open loop: puts due inside it.
    let open = matches!(shape, Shape::Open { .. });
    let in_window = |s: &Sample| {
        let t = if open { s.start_us } else { s.done_us };
        t >= w0 && t < w1
    };
    let mut lat = vec![];
    let mut done_times = vec![];
    let mut all_done = vec![];
    let mut errors = 0;
    let mut first_error = None;
    let mut last_write = None;
    let mut timeline = vec![];
    for o in &outs {
        for s in o.samples.iter().filter(|s| in_window(s)) {
            lat.push(s.done_us.saturating_sub(s.start_us));
        }
        done_times.extend(o.samples.iter().map(|s| s.done_us).filter(|t| *t >= w0 && *t < w1));
        if event_us.is_some() {
            all_done.extend(o.samples.iter().map(|s| s.done_us));
        }
        errors += o.errors.iter().filter(|t| **t >= w0 && **t < w1).count() as u64;
        if first_error.is_none() {
            first_error.clone_from(&o.first_error);
        }
        if o.last_write.is_some() {
            last_write.clone_from(&o.last_write);
        }
        if want_timeline {
            for s in &o.samples {
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
    let completed = lat.len() as u64;
    let missed = match shape {
        Shape::Open { rate, .. } => {
            // Tickets i with due time i/rate in [w0, w1).
            let due = (timing.warmup_s + timing.measure_s) * rate;
            let first = timing.warmup_s * rate;
            ((due.ceil() - first.ceil()).max(0.0) as u64).saturating_sub(completed + errors)
        }
        Shape::Closed { .. } => 0,
    };
    let per_1k = |s: f64| if completed == 0 { 0.0 } else { s * 1000.0 / completed as f64 };
    Point {
        shape,
        value_size: workload.value_size,
        timing,
        completed,
        errors,
        missed,
        throughput: completed as f64 / timing.measure_s,
        latency_ms: Latency::of(lat),
        cpu,
        cpu_per_1k: per_1k(cpu.system_s),
        loadgen_cpu_per_1k: per_1k(cpu.loadgen_s),
        first_error,
        timeline_100ms: timeline,
        longest_gap_ms: gap as f64 / 1000.0,
        gap_after_event_ms,
        replica_counters: None,
        last_write,
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

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=1000).map(|x| x * 1000).collect());
        assert_eq!((l.p50, l.p99, l.max), (501.0, 990.0, 1000.0));
        assert_eq!(Latency::of(vec![]).p50, 0.0);
    }

    fn out(samples: &[(u64, u64)], errors: &[u64]) -> TaskOut {
        TaskOut {
            samples: samples.iter().map(|&(start_us, done_us)| Sample { start_us, done_us }).collect(),
            errors: errors.to_vec(),
            first_error: None,
            last_write: None,
        }
    }

    #[test]
    fn window_missed_and_gap() {
        let timing = Timing { warmup_s: 1.0, measure_s: 2.0 };
        let w = Workload { value_size: 1, keyspace: 1 };
        let s = [(500_000, 900_000), (1_000_000, 1_100_000), (1_100_000, 1_200_000), (2_500_000, 2_600_000)];
        let o = || vec![out(&s, &[1_500_000, 3_500_000])];
        let closed = summarize(Shape::Closed { clients: 1 }, w, timing, o(), CpuUse::default(), true, Some(2_000_000));
        // After the event at 2 s: from 1.2 s to 2.6 s.
        assert_eq!(closed.gap_after_event_ms, Some(1400.0));
        let late = summarize(Shape::Closed { clients: 1 }, w, timing, o(), CpuUse::default(), false, Some(2_700_000));
        assert_eq!(late.gap_after_event_ms, None, "nothing completed after the event");
        assert_eq!((closed.completed, closed.errors, closed.missed), (3, 1, 0));
        assert_eq!(closed.throughput, 1.5);
        // Gap: from 1.2 s to 2.6 s.
        assert!((closed.longest_gap_ms - 1400.0).abs() < 1e-9, "{}", closed.longest_gap_ms);
        assert_eq!(closed.timeline_100ms.iter().sum::<u32>(), 4);
        let open = summarize(Shape::Open { rate: 5.0, workers: 1 }, w, timing, o(), CpuUse::default(), false, None);
        // 10 due in the window: 3 completed, 1 error, 6 missed.
        assert_eq!((open.completed, open.errors, open.missed), (3, 1, 6));
        assert!((open.latency_ms.p50 - 100.0).abs() < 1e-9);
    }
}
