//! Kubernetes Events about ConsensusClusters.
//!
//! kube's `Recorder` folds every event with the same type, reason and action
//! about one object into one series for six minutes and keeps the first
//! event's note: a second piece of evidence, or a second member quarantined,
//! would only raise the first event's count, and its own text would be lost.
//! [`EventPublisher`] repeats an event as a series only when its note is the
//! same as well, so every distinct finding is an Event of its own.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// How long a series stays open without a repeat (kube's own cache keeps six minutes).
const SERIES_WINDOW: Duration = Duration::from_secs(300);
/// Most series open at once; beyond it the least recently repeated one is closed.
const MAX_SERIES: usize = 1024;

/// Publishes Events, one series per object, type, reason, action and note.
pub struct EventPublisher {
    client: kube::Client,
    reporter: Reporter,
    series: Mutex<OpenSeries<SeriesKey, Recorder>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    object: (Option<String>, Option<String>, Option<String>, Option<String>),
    type_: EventType,
    reason: String,
    action: String,
    note: Option<String>,
}

impl EventPublisher {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        EventPublisher { client, reporter, series: Mutex::new(OpenSeries::new(SERIES_WINDOW, MAX_SERIES)) }
    }

    /// Publishes `ev` about `regarding`: a new Event, or the next of its series
    /// when the very same event was published within the last five minutes.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = SeriesKey {
            object: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            type_: ev.type_,
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
        };
        // A recorder per series: its clones share the cache that makes repeats a series.
        let recorder =
            self.series
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(key, Instant::now(), || Recorder::new(self.client.clone(), self.reporter.clone()));
        recorder.publish(ev, regarding).await
    }
}

/// Values by key that expire `window` after their last use, at most `cap` of them.
struct OpenSeries<K, V> {
    window: Duration,
    cap: usize,
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Hash + Eq + Clone, V: Clone> OpenSeries<K, V> {
    fn new(window: Duration, cap: usize) -> Self {
        OpenSeries { window, cap: cap.max(1), entries: HashMap::new() }
    }

    /// The value of `key` (made by `make` when absent or expired), marked used at `now`.
    fn get_or_insert(&mut self, key: K, now: Instant, make: impl FnOnce() -> V) -> V {
        let window = self.window;
        self.entries.retain(|_, (_, used)| now.saturating_duration_since(*used) < window);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.cap {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        let entry = self.entries.entry(key).or_insert_with(|| (make(), now));
        entry.1 = now;
        entry.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_reuses_its_value_and_another_key_gets_its_own() {
        let mut s = OpenSeries::new(Duration::from_secs(300), 8);
        let t = Instant::now();
        let mut made = 0;
        let mut get = |s: &mut OpenSeries<&str, u32>, k, at| {
            s.get_or_insert(k, at, || {
                made += 1;
                made
            })
        };
        assert_eq!(get(&mut s, "evidence against 0", t), 1);
        assert_eq!(get(&mut s, "evidence against 1", t), 2, "another note is another series");
        assert_eq!(get(&mut s, "evidence against 0", t + Duration::from_secs(60)), 1, "a repeat joins its series");
    }

    #[test]
    fn a_series_expires_a_window_after_its_last_repeat() {
        let mut s = OpenSeries::new(Duration::from_secs(300), 8);
        let t = Instant::now();
        assert_eq!(s.get_or_insert("a", t, || 1), 1);
        assert_eq!(s.get_or_insert("a", t + Duration::from_secs(299), || 2), 1);
        assert_eq!(s.get_or_insert("a", t + Duration::from_secs(598), || 3), 1, "kept open by the repeat at 299 s");
        assert_eq!(s.get_or_insert("a", t + Duration::from_secs(898), || 4), 4, "300 s without a repeat");
    }

    #[test]
    fn at_the_cap_the_least_recently_used_series_is_closed() {
        let mut s = OpenSeries::new(Duration::from_secs(300), 2);
        let t = Instant::now();
        s.get_or_insert("a", t, || 1);
        s.get_or_insert("b", t + Duration::from_secs(1), || 2);
        s.get_or_insert("a", t + Duration::from_secs(2), || 9);
        s.get_or_insert("c", t + Duration::from_secs(3), || 3);
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.get_or_insert("a", t + Duration::from_secs(4), || 9), 1, "a was used last, b was closed");
        assert_eq!(s.get_or_insert("b", t + Duration::from_secs(5), || 5), 5);
    }
}
