//! A linearizability checker for key-value histories: Wing & Gong's search
//! with Lowe's memoisation (the algorithm of Knossos and Porcupine), one
//! register per key (linearizability is compositional, so keys are checked
//! apart).
//!
//! Written here rather than taken from `stateright`: its tester follows
//! threads step by step inside a model checker, while a recorded history has
//! real invoke/return times and operations whose outcome is unknown (a
//! timeout: it may or may not have taken effect). Such an operation is given
//! a return time after everything else, which lets the search place it
//! anywhere after its invocation, including after every observation (the same
//! as never).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// What one operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A put acknowledged by f+1 replicas.
    Written,
    /// A get that returned this value (`None`: the key was absent).
    Read(Option<u64>),
    /// No answer (timeout, error): may or may not have taken effect.
    Unknown,
}

/// One operation on a key. Values are ids (the caller maps the bytes it wrote
/// to distinct numbers); `put: None` is a get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub put: Option<u64>,
    /// Invocation and return, measured from one origin.
    pub invoke: Duration,
    pub ret: Duration,
    pub outcome: Outcome,
}

/// Result of checking one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history; the operations of the key, for the report.
    Violation(Vec<Op>),
    /// The search gave up after this many steps (neither proven nor refuted).
    Undecided(u64),
}

/// The checked history's summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub keys: usize,
    pub ops: usize,
    pub unknown: usize,
    pub steps: u64,
    pub violations: Vec<(String, Vec<Op>)>,
    pub undecided: Vec<String>,
}

impl Summary {
    /// True when every key was proven linearizable.
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.undecided.is_empty()
    }
}

/// Steps after which one key's search gives up.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks every key of `ops`.
pub fn check(ops: &[Op], budget_per_key: u64) -> Summary {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        // A get without an answer observed nothing: drop it.
        if op.put.is_none() && op.outcome == Outcome::Unknown {
            continue;
        }
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    let mut s = Summary { keys: by_key.len(), ..Default::default() };
    for (key, ops) in by_key {
        s.ops += ops.len();
        s.unknown += ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        let (verdict, steps) = check_register(&ops, budget_per_key);
        s.steps += steps;
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Violation(v) => s.violations.push((key.to_string(), v)),
            Verdict::Undecided(_) => s.undecided.push(key.to_string()),
        }
    }
    s
}

/// Entry of the doubly linked event list: the call or the return of op `op`.
#[derive(Clone, Copy, Debug)]
struct Node {
    op: usize,
    call: bool,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// A bit set over the ops of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The register's step: whether `op` can take effect in `state`, and the state after it.
fn step(state: Option<u64>, op: &Op) -> Option<Option<u64>> {
    match (op.put, &op.outcome) {
        (Some(v), _) => Some(Some(v)),
        (None, Outcome::Read(seen)) => (*seen == state).then_some(state),
        (None, _) => Some(state),
    }
}

/// Checks one key's operations against a register that starts absent.
pub fn check_register(ops: &[Op], budget: u64) -> (Verdict, u64) {
    if ops.is_empty() {
        return (Verdict::Linearizable, 0);
    }
    let never = ops.iter().map(|o| o.ret.max(o.invoke)).max().unwrap_or_default() + Duration::from_secs(1);
    // Events: (time, is_return, op). Calls sort before returns at equal times
    // (an operation that returns when another is invoked overlaps it: the lenient choice).
    let mut events: Vec<(Duration, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        let ret = if o.outcome == Outcome::Unknown { never } else { o.ret.max(o.invoke) };
        events.push((o.invoke, false, i));
        events.push((ret, true, i));
    }
    events.sort();
    // Node 0 is the head sentinel; node k+1 is events[k].
    let mut nodes: Vec<Node> = Vec::with_capacity(events.len() + 1);
    nodes.push(Node { op: NIL, call: false, prev: NIL, next: 1 });
    let mut ret_node = vec![0usize; ops.len()];
    for (k, &(_, is_ret, op)) in events.iter().enumerate() {
        let idx = k + 1;
        nodes.push(Node { op, call: !is_ret, prev: idx - 1, next: if k + 1 < events.len() { idx + 1 } else { NIL } });
        if is_ret {
            ret_node[op] = idx;
        }
    }
    let lift = |nodes: &mut Vec<Node>, call: usize, ret: usize| {
        for n in [call, ret] {
            let (p, x) = (nodes[n].prev, nodes[n].next);
            nodes[p].next = x;
            if x != NIL {
                nodes[x].prev = p;
            }
        }
    };
    let unlift = |nodes: &mut Vec<Node>, call: usize, ret: usize| {
        for n in [ret, call] {
            let (p, x) = (nodes[n].prev, nodes[n].next);
            nodes[p].next = n;
            if x != NIL {
                nodes[x].prev = n;
            }
        }
    };

    let mut state: Option<u64> = None;
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, Option<u64>)> = HashSet::new();
    let mut calls: Vec<(usize, Option<u64>)> = vec![]; // (call node, state before)
    let mut entry = nodes[0].next;
    let mut steps = 0u64;
    while nodes[0].next != NIL {
        steps += 1;
        if steps > budget {
            return (Verdict::Undecided(steps), steps);
        }
        if entry == NIL {
            // Nothing more can be tried at this level: backtrack.
            let Some((call, before)) = calls.pop() else { return (Verdict::Violation(ops.to_vec()), steps) };
            let op = nodes[call].op;
            linearized.clear(op);
            state = before;
            unlift(&mut nodes, call, ret_node[op]);
            entry = nodes[call].next;
            continue;
        }
        let n = nodes[entry];
        if n.call {
            if let Some(next_state) = step(state, &ops[n.op]) {
                let mut next_lin = linearized.clone();
                next_lin.set(n.op);
                if cache.insert((next_lin.clone(), next_state)) {
                    calls.push((entry, state));
                    state = next_state;
                    linearized = next_lin;
                    lift(&mut nodes, entry, ret_node[n.op]);
                    entry = nodes[0].next;
                    continue;
                }
            }
            entry = n.next;
        } else {
            // A return whose call is not linearized yet: every order tried at this level fails.
            let Some((call, before)) = calls.pop() else { return (Verdict::Violation(ops.to_vec()), steps) };
            let op = nodes[call].op;
            linearized.clear(op);
            state = before;
            unlift(&mut nodes, call, ret_node[op]);
            entry = nodes[call].next;
        }
    }
    (Verdict::Linearizable, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn put(v: u64, a: u64, b: u64) -> Op {
        Op { key: "k".into(), put: Some(v), invoke: ms(a), ret: ms(b), outcome: Outcome::Written }
    }

    fn get(v: Option<u64>, a: u64, b: u64) -> Op {
        Op { key: "k".into(), put: None, invoke: ms(a), ret: ms(b), outcome: Outcome::Read(v) }
    }

    fn lost(v: u64, a: u64) -> Op {
        Op { key: "k".into(), put: Some(v), invoke: ms(a), ret: ms(a), outcome: Outcome::Unknown }
    }

    fn ok(ops: &[Op]) -> bool {
        check_register(ops, DEFAULT_BUDGET).0 == Verdict::Linearizable
    }

    #[test]
    fn sequential_histories() {
        assert!(ok(&[get(None, 0, 1), put(1, 2, 3), get(Some(1), 4, 5), put(2, 6, 7), get(Some(2), 8, 9)]));
        assert!(!ok(&[put(1, 0, 1), get(None, 2, 3)]), "a read after an acknowledged write must see it");
        assert!(!ok(&[put(1, 0, 1), put(2, 2, 3), get(Some(1), 4, 5)]), "a stale read");
        assert!(!ok(&[get(Some(7), 0, 1)]), "a value nobody wrote");
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // put 1 and put 2 overlap; reads after both may see either, but all later reads the same.
        assert!(ok(&[put(1, 0, 10), put(2, 5, 15), get(Some(1), 20, 21), get(Some(1), 22, 23)]));
        assert!(ok(&[put(1, 0, 10), put(2, 5, 15), get(Some(2), 20, 21)]));
        assert!(!ok(&[put(1, 0, 10), put(2, 5, 15), get(Some(1), 20, 21), get(Some(2), 22, 23)]), "flip-flop");
        // A read overlapping a write may see the old or the new value.
        assert!(ok(&[put(1, 0, 1), put(2, 10, 20), get(Some(1), 12, 13), get(Some(2), 14, 15), get(Some(2), 21, 22)]));
        assert!(!ok(&[put(1, 0, 1), put(2, 10, 20), get(Some(2), 12, 13), get(Some(1), 14, 15)]), "new then old");
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // A timed-out put may show up later...
        assert!(ok(&[put(1, 0, 1), lost(2, 2), get(Some(1), 5, 6), get(Some(2), 7, 8), get(Some(2), 9, 10)]));
        // ...or never.
        assert!(ok(&[put(1, 0, 1), lost(2, 2), get(Some(1), 50, 60)]));
        // But not before it was invoked, and not undone once seen.
        assert!(!ok(&[get(Some(2), 0, 1), lost(2, 2)]));
        assert!(!ok(&[put(1, 0, 1), lost(2, 2), get(Some(2), 5, 6), get(Some(1), 7, 8)]));
    }

    #[test]
    fn keys_are_checked_apart_and_unknown_reads_dropped() {
        let mut ops = vec![put(1, 0, 1), get(Some(1), 2, 3)];
        ops.push(Op { key: "other".into(), put: None, invoke: ms(0), ret: ms(1), outcome: Outcome::Read(Some(1)) });
        ops.push(Op { key: "k".into(), put: None, invoke: ms(4), ret: ms(5), outcome: Outcome::Unknown });
        let s = check(&ops, DEFAULT_BUDGET);
        assert_eq!(s.keys, 2);
        assert_eq!(s.ops, 3);
        assert_eq!(s.violations.len(), 1);
        assert_eq!(s.violations[0].0, "other");
    }

    #[test]
    fn a_long_concurrent_history_is_decided_quickly() {
        // 4 writers and 2 readers on one key, 3000 operations, each read returning the
        // value of the write that precedes it in a sequential execution.
        let mut ops = vec![];
        let mut t = 0u64;
        let mut last = None;
        let mut v = 0;
        for i in 0..3000u64 {
            let start = t;
            t += 3;
            if i % 3 == 0 {
                ops.push(get(last, start, start + 7));
            } else {
                v += 1;
                ops.push(put(v, start, start + 7));
                last = Some(v);
            }
        }
        let (verdict, steps) = check_register(&ops, DEFAULT_BUDGET);
        assert_eq!(verdict, Verdict::Linearizable, "after {steps} steps");
        assert!(steps < 1_000_000, "{steps} steps");
    }

    #[test]
    fn a_budget_gives_undecided_not_a_pass() {
        let ops = vec![put(1, 0, 10), put(2, 0, 10), put(3, 0, 10), get(Some(9), 20, 21)];
        assert!(matches!(check_register(&ops, 3).0, Verdict::Undecided(_)));
    }
}
