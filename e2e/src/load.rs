//! Client load while a scenario disturbs the cluster, recorded as a history:
//! writers put distinct values to a few shared keys, readers get them (both
//! feed the linearizability check), and one writer puts each value to a key of
//! its own (acknowledged ⇒ must read back afterwards). Each client follows the
//! [`Watcher`]'s topology: a new pod address is picked up after the call in
//! flight (the other replicas answer it meanwhile); a new membership abandons
//! the call in flight (replies of the new epoch would not count; its outcome
//! becomes unknown) and a client for the new topology continues.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbft::proto::op_result::Status as OpStatus;
use tokio::sync::watch;

use crate::linearizability::{self, Op, Outcome};
use crate::topology::{Topology, Watcher};

/// What the load does.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Clients putting to the shared keys.
    pub writers: usize,
    /// Clients reading the shared keys.
    pub readers: usize,
    /// Number of shared keys.
    pub keys: usize,
    /// One more client writing each value to a key of its own.
    pub unique_writer: bool,
    /// Bytes per value (at least the digits of its id).
    pub value_size: usize,
    /// Pause between a client's operations.
    pub pause: Duration,
    /// A client gives up on one operation after this long.
    pub op_timeout: Duration,
    /// Prefix of every key (one per scenario).
    pub prefix: String,
}

impl LoadSpec {
    /// A light load: 3 writers, 2 readers over 4 keys, a unique-key writer.
    pub fn light(prefix: &str) -> LoadSpec {
        LoadSpec {
            writers: 3,
            readers: 2,
            keys: 4,
            unique_writer: true,
            value_size: 32,
            pause: Duration::from_millis(20),
            op_timeout: Duration::from_secs(15),
            prefix: prefix.into(),
        }
    }
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Record {
    pub client: usize,
    pub key: String,
    pub put: Option<u64>,
    pub invoke: Duration,
    pub ret: Duration,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// A running load.
pub struct Load {
    spec: LoadSpec,
    t0: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Record>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    watcher: Arc<Watcher>,
}

/// What a finished load saw.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub history: Vec<Record>,
    pub duration: Duration,
    /// When the clients were told to stop (before the final reads).
    pub stopped_at: Duration,
    /// Acknowledged puts to the unique keys, (key, value id).
    pub unique_acked: Vec<(String, u64)>,
}

fn encode(id: u64, size: usize) -> Vec<u8> {
    format!("{id:0>width$}", width = size.max(20)).into_bytes()
}

fn decode(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|s| s.trim_start_matches('0').parse().ok()).unwrap_or(0)
}

/// The value id of client `c`'s `seq`-th value (never 0).
fn value_id(c: usize, seq: u64) -> u64 {
    ((c as u64 + 1) << 40) | seq
}

impl Load {
    /// Starts the load against the cluster `watcher` follows.
    pub fn start(watcher: Arc<Watcher>, spec: LoadSpec) -> Load {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        let roles: Vec<Role> = (0..spec.writers)
            .map(|_| Role::Writer)
            .chain((0..spec.readers).map(|_| Role::Reader))
            .chain(spec.unique_writer.then_some(Role::Unique))
            .collect();
        for (c, role) in roles.into_iter().enumerate() {
            let ctx = ClientTask {
                c,
                role,
                spec: spec.clone(),
                t0,
                stop: stop.clone(),
                history: history.clone(),
                watcher: watcher.clone(),
            };
            tasks.push(tokio::spawn(ctx.run()));
        }
        Load { spec, t0, stop, history, tasks, watcher }
    }

    /// Time since the load started.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Acknowledged operations so far.
    pub fn acked(&self) -> usize {
        self.history.lock().map(|h| h.iter().filter(|r| r.outcome != Outcome::Unknown).count()).unwrap_or(0)
    }

    /// Stops the clients (each finishes its operation in flight), then reads
    /// every shared key once more (part of the history) and returns it all.
    pub async fn stop(self) -> LoadResult {
        let stopped_at = self.t0.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let topo = self.watcher.current();
        let final_reader = usize::MAX;
        for k in 0..self.spec.keys {
            let key = format!("{}-k{k}", self.spec.prefix);
            let rec = read_once(&topo, final_reader, &key, self.t0, self.spec.op_timeout).await;
            if let Ok(mut h) = self.history.lock() {
                h.push(rec);
            }
        }
        let history = self.history.lock().map(|h| h.clone()).unwrap_or_default();
        let unique_acked = history
            .iter()
            .filter(|r| r.key.contains("-u-") && r.outcome == Outcome::Written)
            .filter_map(|r| Some((r.key.clone(), r.put?)))
            .collect();
        LoadResult { history, duration: self.t0.elapsed(), stopped_at, unique_acked }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
    Unique,
}

struct ClientTask {
    c: usize,
    role: Role,
    spec: LoadSpec,
    t0: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Record>>>,
    watcher: Arc<Watcher>,
}

async fn read_once(topo: &Topology, c: usize, key: &str, t0: Instant, timeout: Duration) -> Record {
    let invoke = t0.elapsed();
    let (outcome, error) = match topo.client(timeout) {
        Err(e) => (Outcome::Unknown, Some(e.to_string())),
        Ok(mut client) => match client.get(key.as_bytes()).await {
            Ok(r) if r.status == OpStatus::Ok as i32 => (Outcome::Read(r.value.as_deref().map(decode)), None),
            Ok(r) if r.status == OpStatus::NotFound as i32 => (Outcome::Read(None), None),
            Ok(r) => (Outcome::Unknown, Some(format!("refused: {}", r.error))),
            Err(e) => (Outcome::Unknown, Some(e.to_string())),
        },
    };
    Record { client: c, key: key.into(), put: None, invoke, ret: t0.elapsed(), outcome, error }
}

/// Resolves once the watched topology has another membership than `topo`'s.
async fn membership_changed(rx: &mut watch::Receiver<Arc<Topology>>, topo: &Topology) {
    loop {
        if rx.changed().await.is_err() {
            futures::future::pending::<()>().await;
        }
        if rx.borrow().membership.config() != topo.membership.config() {
            return;
        }
    }
}

impl ClientTask {
    async fn run(self) {
        let mut rx = self.watcher.subscribe();
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let topo = rx.borrow_and_update().clone();
            let mut client = match topo.client(self.spec.op_timeout) {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Operations with this client until the topology changes.
            while !self.stop.load(Ordering::Relaxed) && Arc::ptr_eq(&topo, &rx.borrow()) {
                seq += 1;
                let (key, put) = match self.role {
                    Role::Writer => (
                        format!("{}-k{}", self.spec.prefix, (seq as usize + self.c) % self.spec.keys.max(1)),
                        Some(value_id(self.c, seq)),
                    ),
                    Role::Reader => {
                        (format!("{}-k{}", self.spec.prefix, (seq as usize + self.c) % self.spec.keys.max(1)), None)
                    }
                    Role::Unique => (format!("{}-u-{seq}", self.spec.prefix), Some(value_id(self.c, seq))),
                };
                let invoke = self.t0.elapsed();
                let call = async {
                    match put {
                        Some(v) => client.put(key.as_bytes(), &encode(v, self.spec.value_size)).await,
                        None => client.get(key.as_bytes()).await,
                    }
                };
                let (outcome, error, changed) = tokio::select! {
                    r = call => {
                        let (o, e) = match (r, put) {
                            (Ok(r), Some(_)) if r.status == OpStatus::Ok as i32 => (Outcome::Written, None),
                            (Ok(r), None) if r.status == OpStatus::Ok as i32 => (Outcome::Read(r.value.as_deref().map(decode)), None),
                            (Ok(r), None) if r.status == OpStatus::NotFound as i32 => (Outcome::Read(None), None),
                            (Ok(r), _) => (Outcome::Unknown, Some(format!("refused: {}", r.error))),
                            (Err(e), _) => (Outcome::Unknown, Some(e.to_string())),
                        };
                        (o, e, false)
                    }
                    _ = membership_changed(&mut rx, &topo) => (Outcome::Unknown, Some("abandoned: the membership changed".to_string()), true),
                };
                let rec = Record { client: self.c, key, put, invoke, ret: self.t0.elapsed(), outcome, error };
                if let Ok(mut h) = self.history.lock() {
                    h.push(rec);
                }
                if changed {
                    break;
                }
                tokio::time::sleep(self.spec.pause).await;
            }
        }
    }
}

impl LoadResult {
    /// The history for the linearizability checker (unique keys included: one write, then reads).
    pub fn ops(&self) -> Vec<Op> {
        self.history
            .iter()
            .map(|r| Op { key: r.key.clone(), put: r.put, invoke: r.invoke, ret: r.ret, outcome: r.outcome.clone() })
            .collect()
    }

    /// Checks the history (shared keys and final reads).
    pub fn linearizability(&self) -> linearizability::Summary {
        linearizability::check(&self.ops(), linearizability::DEFAULT_BUDGET)
    }

    /// Acknowledged operations.
    pub fn acked(&self) -> usize {
        self.history.iter().filter(|r| r.outcome != Outcome::Unknown).count()
    }

    /// Acknowledged puts.
    pub fn acked_writes(&self) -> usize {
        self.history.iter().filter(|r| r.outcome == Outcome::Written).count()
    }

    /// Operations that got no answer.
    pub fn unknown(&self) -> usize {
        self.history.iter().filter(|r| r.outcome == Outcome::Unknown).count()
    }

    /// Errors containing `needle` (e.g. `ResourceExhausted`).
    pub fn errors_with(&self, needle: &str) -> usize {
        self.history.iter().filter(|r| r.error.as_deref().is_some_and(|e| e.contains(needle))).count()
    }

    /// Times at which acknowledged operations returned, sorted.
    fn ack_times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> =
            self.history.iter().filter(|r| r.outcome != Outcome::Unknown).map(|r| r.ret).collect();
        t.sort();
        t
    }

    /// The longest time without any acknowledged operation within `[from, to]`;
    /// a window reaching past the moment the clients stopped ends there (the
    /// idle time after the load is no gap).
    pub fn max_gap(&self, from: Duration, to: Duration) -> Duration {
        let to = to.min(self.stopped_at);
        let mut last = from;
        let mut gap = Duration::ZERO;
        for t in self.ack_times().into_iter().filter(|t| *t >= from && *t <= to) {
            gap = gap.max(t - last);
            last = t;
        }
        gap.max(to.saturating_sub(last))
    }

    /// Time from `at` to the first acknowledged write invoked after `at` returning.
    pub fn first_write_after(&self, at: Duration) -> Option<Duration> {
        self.history.iter().filter(|r| r.outcome == Outcome::Written && r.invoke >= at).map(|r| r.ret - at).min()
    }

    /// Latency percentiles (ms) of acknowledged operations.
    pub fn latency_ms(&self, p: f64) -> f64 {
        let mut l: Vec<f64> = self
            .history
            .iter()
            .filter(|r| r.outcome != Outcome::Unknown)
            .map(|r| (r.ret - r.invoke).as_secs_f64() * 1000.0)
            .collect();
        if l.is_empty() {
            return 0.0;
        }
        l.sort_by(|a, b| a.total_cmp(b));
        l[((l.len() - 1) as f64 * p).round() as usize]
    }

    /// The value id a unique key's value decodes to, for checking read-backs.
    pub fn decode(bytes: &[u8]) -> u64 {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked_at(secs: &[u64], outcome: Outcome) -> Vec<Record> {
        secs.iter()
            .map(|&s| Record {
                client: 0,
                key: "k".into(),
                put: Some(1),
                invoke: Duration::from_secs(s),
                ret: Duration::from_secs(s),
                outcome: outcome.clone(),
                error: None,
            })
            .collect()
    }

    #[test]
    fn the_longest_gap_ends_where_the_clients_stopped() {
        let mut history = acked_at(&[1, 2, 10, 11, 20], Outcome::Written);
        // The final reads after the stop, and an unanswered call, are not acknowledgements inside the load.
        history.extend(acked_at(&[50], Outcome::Read(Some(1))));
        history.extend(acked_at(&[15], Outcome::Unknown));
        let r = LoadResult {
            history,
            duration: Duration::from_secs(51),
            stopped_at: Duration::from_secs(21),
            unique_acked: vec![],
        };
        assert_eq!(r.max_gap(Duration::ZERO, Duration::from_secs(60)), Duration::from_secs(9), "2 -> 10 and 11 -> 20");
        assert_eq!(r.max_gap(Duration::from_secs(10), Duration::from_secs(12)), Duration::from_secs(1));
        assert_eq!(
            r.max_gap(Duration::from_secs(12), Duration::from_secs(14)),
            Duration::from_secs(2),
            "no ack inside"
        );
    }
}
