//! Invariants checked during and after a simulated run.
//!
//! - agreement: no two honest replicas execute different batches at one
//!   sequence number, and stable checkpoint digests agree;
//! - exactly once: no request executes at two sequence numbers;
//! - linearizability: the agreed execution order, replayed on a reference
//!   model, gives every result a client accepted, and respects real time;
//! - evidence: every evidence an honest replica reports verifies and accuses
//!   a Byzantine replica; forged evidence never verifies;
//! - memory: every honest replica's accounted bytes match a recount and stay
//!   within its budget.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::core::ExecutedRequest;
use crate::crypto::Digest;
use crate::membership::ReplicaId;
use crate::proto::{op_result::Status, operation::Kind, OpResult, Operation};

/// One client operation as the client saw it.
#[derive(Clone, Debug)]
pub struct ClientOp {
    pub client: Bytes,
    pub timestamp: u64,
    pub operation: Operation,
    pub invoked_at: u64,
    pub completed: Option<(u64, OpResult)>,
}

/// Collects observations and reports violations.
#[derive(Default)]
pub struct Checker {
    /// seq -> (digest, requests executed, first honest executor).
    executions: BTreeMap<u64, (Digest, Vec<ExecutedRequest>, ReplicaId)>,
    executed_at: HashMap<(Bytes, u64), u64>,
    stable: BTreeMap<(u64, u64), Digest>,
    pub history: Vec<ClientOp>,
    pub violations: Vec<String>,
    pub peak_ratio: f64,
    pub peak_bytes: usize,
    pub peak_budget: usize,
}

impl Checker {
    fn violation(&mut self, v: String) {
        if self.violations.len() < 20 {
            self.violations.push(v);
        }
    }

    /// An honest replica executed a batch.
    pub fn on_executed(&mut self, replica: ReplicaId, seq: u64, digest: Digest, requests: &[ExecutedRequest]) {
        match self.executions.get(&seq) {
            Some((d, _, first)) if *d != digest => {
                let first = *first;
                self.violation(format!(
                    "agreement: replica {replica} executed digest {} at seq {seq}, replica {first} executed {}",
                    hex::encode(&digest[..6]),
                    hex::encode(&d[..6])
                ));
            }
            Some(_) => {}
            None => {
                for r in requests {
                    if let Some(prev) = self.executed_at.insert((r.client.clone(), r.timestamp), seq) {
                        if prev != seq {
                            self.violation(format!(
                                "exactly-once: request ts {} of client {} executed at seq {prev} and {seq}",
                                r.timestamp,
                                hex::encode(&r.client[..4])
                            ));
                        }
                    }
                }
                self.executions.insert(seq, (digest, requests.to_vec(), replica));
            }
        }
    }

    /// An honest replica's checkpoint became stable.
    pub fn on_stable(&mut self, replica: ReplicaId, epoch: u64, seq: u64, digest: Digest) {
        if let Some(d) = self.stable.insert((epoch, seq), digest) {
            if d != digest {
                self.violation(format!(
                    "checkpoint agreement: replica {replica} has another stable digest at seq {seq}"
                ));
            }
        }
    }

    /// Memory accounting of one honest replica after a step.
    pub fn on_memory(&mut self, replica: ReplicaId, accounted: usize, recounted: usize, budget: usize) {
        if accounted != recounted {
            self.violation(format!("memory: replica {replica} ledger says {accounted} bytes but holds {recounted}"));
        }
        if accounted > budget {
            self.violation(format!("memory: replica {replica} holds {accounted} bytes over its budget of {budget}"));
        }
        let ratio = accounted as f64 / budget as f64;
        if ratio > self.peak_ratio {
            self.peak_ratio = ratio;
            self.peak_bytes = accounted;
            self.peak_budget = budget;
        }
    }

    /// Evidence from an honest replica, already checked by the harness.
    pub fn on_evidence_result(
        &mut self,
        reporter: ReplicaId,
        offender: ReplicaId,
        valid: Result<(), String>,
        offender_byzantine: bool,
    ) {
        if let Err(e) = valid {
            self.violation(format!("evidence: replica {reporter} reported evidence that does not verify: {e}"));
        }
        if !offender_byzantine {
            self.violation(format!("evidence: replica {reporter} accused honest replica {offender}"));
        }
    }

    /// Forged evidence produced by a Byzantine replica verified: a violation.
    pub fn on_forged_evidence_verified(&mut self, against: ReplicaId) {
        self.violation(format!("evidence: forged evidence against honest replica {against} verified"));
    }

    /// Final checks on the execution log and the client history.
    pub fn finish(&mut self) {
        // The agreed order, without gaps.
        let mut position: HashMap<(Bytes, u64), usize> = HashMap::new();
        let mut order: Vec<&ExecutedRequest> = vec![];
        let mut expected_seq = 1;
        let mut gaps = vec![];
        for (seq, (_, reqs, _)) in &self.executions {
            if *seq != expected_seq {
                gaps.push((expected_seq, *seq));
            }
            expected_seq = seq + 1;
            for r in reqs {
                position.insert((r.client.clone(), r.timestamp), order.len());
                order.push(r);
            }
        }
        let mut violations = vec![];
        for (from, to) in gaps {
            violations.push(format!("log: no honest replica executed seqs {from}..{to}"));
        }
        // Replay on the reference model: every executed result must match it.
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut model_results: Vec<Option<OpResult>> = Vec::with_capacity(order.len());
        for r in &order {
            let expected = r.operation.as_ref().and_then(|op| model_apply(&mut model, op));
            if let Some(e) = &expected {
                if !same_result(e, &r.result) {
                    violations.push(format!(
                        "linearizability: execution of ts {} gave {:?}, the model gives {:?}",
                        r.timestamp, r.result, e
                    ));
                }
            }
            model_results.push(expected.or_else(|| Some(r.result.clone())));
        }
        // Every accepted result is the executed one; real-time order holds.
        let mut completed_at_pos: Vec<Option<u64>> = vec![None; order.len()];
        let mut invoked: Vec<(usize, u64)> = vec![];
        for op in &self.history {
            let Some((done_at, result)) = &op.completed else { continue };
            match position.get(&(op.client.clone(), op.timestamp)) {
                None => violations.push(format!(
                    "linearizability: client {} accepted ts {} that no honest replica executed",
                    hex::encode(&op.client[..4]),
                    op.timestamp
                )),
                Some(&p) => {
                    if let Some(m) = &model_results[p] {
                        if !same_result(m, result) {
                            violations.push(format!(
                                "linearizability: client {} accepted {:?} for ts {}, but the agreed order gives {:?}",
                                hex::encode(&op.client[..4]),
                                result,
                                op.timestamp,
                                m
                            ));
                        }
                    }
                    completed_at_pos[p] = Some(*done_at);
                    invoked.push((p, op.invoked_at));
                }
            }
        }
        // For each op B at position p, every op ordered after it must not have
        // completed before B was invoked.
        let mut suffix_min = vec![u64::MAX; order.len() + 1];
        for i in (0..order.len()).rev() {
            suffix_min[i] = suffix_min[i + 1].min(completed_at_pos[i].unwrap_or(u64::MAX));
        }
        for (p, inv) in invoked {
            if suffix_min[p + 1] < inv {
                violations.push(format!(
                    "linearizability: an operation ordered after position {p} completed at {} before it was invoked at {inv}",
                    suffix_min[p + 1]
                ));
            }
        }
        for v in violations {
            self.violation(v);
        }
    }

    /// Sequence numbers executed by some honest replica.
    pub fn executed_seqs(&self) -> usize {
        self.executions.len()
    }
}

fn same_result(a: &OpResult, b: &OpResult) -> bool {
    a.status == b.status && a.value == b.value
}

/// The sequential specification of the key-value store.
fn model_apply(m: &mut BTreeMap<Bytes, Bytes>, op: &Operation) -> Option<OpResult> {
    let r = |s: Status, v: Option<Bytes>| OpResult { status: s as i32, value: v, error: String::new() };
    Some(match op.kind.as_ref()? {
        Kind::Put(p) => {
            m.insert(p.key.clone(), p.value.clone());
            r(Status::Ok, None)
        }
        Kind::Get(g) => match m.get(&g.key) {
            Some(v) => r(Status::Ok, Some(v.clone())),
            None => r(Status::NotFound, None),
        },
        Kind::Delete(d) => match m.remove(&d.key) {
            Some(_) => r(Status::Ok, None),
            None => r(Status::NotFound, None),
        },
        Kind::Cas(c) => {
            let cur = m.get(&c.key).cloned();
            if cur != c.expected {
                r(Status::CasMismatch, cur)
            } else {
                match &c.new_value {
                    Some(v) => m.insert(c.key.clone(), v.clone()),
                    None => m.remove(&c.key),
                };
                r(Status::Ok, None)
            }
        }
        Kind::Membership(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Get, Put};
    use crate::state::{ok, status};

    fn put(k: &str, v: &str) -> Operation {
        Operation { kind: Some(Kind::Put(Put { key: Bytes::from(k.to_string()), value: Bytes::from(v.to_string()) })) }
    }
    fn get(k: &str) -> Operation {
        Operation { kind: Some(Kind::Get(Get { key: Bytes::from(k.to_string()) })) }
    }
    fn exec(client: u8, ts: u64, op: Operation, result: OpResult) -> ExecutedRequest {
        ExecutedRequest { client: Bytes::from(vec![client; 32]), timestamp: ts, operation: Some(op), result }
    }

    #[test]
    fn stale_read_accepted_by_a_client_is_caught() {
        let mut c = Checker::default();
        c.on_executed(0, 1, [1; 32], &[exec(1, 1, put("a", "1"), ok(None))]);
        c.on_executed(0, 2, [2; 32], &[exec(2, 1, get("a"), ok(Some(Bytes::from("1"))))]);
        c.history.push(ClientOp {
            client: Bytes::from(vec![2; 32]),
            timestamp: 1,
            operation: get("a"),
            invoked_at: 5,
            completed: Some((9, status(Status::NotFound, None))),
        });
        c.finish();
        assert!(c.violations.iter().any(|v| v.contains("accepted")), "{:?}", c.violations);
    }

    #[test]
    fn real_time_order_violation_is_caught() {
        let mut c = Checker::default();
        // Client 2's put completed at t=10, client 1's put was invoked at t=20
        // but ordered before it.
        c.on_executed(0, 1, [1; 32], &[exec(1, 1, put("a", "1"), ok(None))]);
        c.on_executed(0, 2, [2; 32], &[exec(2, 1, put("a", "2"), ok(None))]);
        c.history.push(ClientOp {
            client: Bytes::from(vec![1; 32]),
            timestamp: 1,
            operation: put("a", "1"),
            invoked_at: 20,
            completed: Some((30, ok(None))),
        });
        c.history.push(ClientOp {
            client: Bytes::from(vec![2; 32]),
            timestamp: 1,
            operation: put("a", "2"),
            invoked_at: 1,
            completed: Some((10, ok(None))),
        });
        c.finish();
        assert!(c.violations.iter().any(|v| v.contains("before it was invoked")), "{:?}", c.violations);
    }

    #[test]
    fn disagreement_and_double_execution_are_caught() {
        let mut c = Checker::default();
        c.on_executed(0, 1, [1; 32], &[exec(1, 1, put("a", "1"), ok(None))]);
        c.on_executed(1, 1, [9; 32], &[]);
        c.on_executed(0, 2, [2; 32], &[exec(1, 1, put("a", "1"), ok(None))]);
        assert!(c.violations.iter().any(|v| v.starts_with("agreement")));
        assert!(c.violations.iter().any(|v| v.starts_with("exactly-once")));
    }

    #[test]
    fn a_correct_history_passes() {
        let mut c = Checker::default();
        c.on_executed(
            0,
            1,
            [1; 32],
            &[exec(1, 1, put("a", "1"), ok(None)), exec(2, 1, get("a"), ok(Some(Bytes::from("1"))))],
        );
        c.on_executed(3, 1, [1; 32], &[]);
        c.history.push(ClientOp {
            client: Bytes::from(vec![1; 32]),
            timestamp: 1,
            operation: put("a", "1"),
            invoked_at: 0,
            completed: Some((10, ok(None))),
        });
        c.history.push(ClientOp {
            client: Bytes::from(vec![2; 32]),
            timestamp: 1,
            operation: get("a"),
            invoked_at: 2,
            completed: Some((12, ok(Some(Bytes::from("1"))))),
        });
        c.finish();
        assert!(c.violations.is_empty(), "{:?}", c.violations);
    }
}
