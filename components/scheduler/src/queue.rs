//! The scheduling queue: pods waiting for a decision, with kube-scheduler's back-off (1 s doubling
//! to 10 s per failed attempt) and its "unschedulable" parking: a pod that fit no node waits for
//! a cluster change (node added/changed, pod removed) or a periodic flush before it is retried.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// First back-off after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long an unschedulable pod waits for a cluster change before it is retried anyway.
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the active FIFO.
    Active,
    /// Popped; a decision or binding is in progress.
    InFlight,
    /// Retry once `until` has passed.
    Backoff { until: Instant },
    /// Fit no node: retry after a cluster change (once back-off passed) or after the flush time.
    Unschedulable {
        backoff_until: Instant,
        since: Instant,
    },
}

#[derive(Debug)]
struct Entry {
    state: State,
    attempts: u32,
}

/// Pods (by `namespace/name`) waiting to be scheduled.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: VecDeque<String>,
}

/// Back-off after `attempts` failed attempts: 1 s, 2 s, 4 s, 8 s, then 10 s.
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF)
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new() -> SchedulingQueue {
        SchedulingQueue::default()
    }

    /// Pods known to the queue in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is known to the queue.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// A pod needs scheduling (new, or updated). New pods go to the active FIFO; an updated
    /// unschedulable pod is retried once its back-off has passed.
    pub fn add(&mut self, key: &str) {
        match self.entries.get_mut(key) {
            None => {
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        state: State::Active,
                        attempts: 0,
                    },
                );
                self.active.push_back(key.to_string());
            }
            Some(e) => {
                if let State::Unschedulable { backoff_until, .. } = e.state {
                    e.state = State::Backoff {
                        until: backoff_until,
                    };
                }
            }
        }
    }

    /// The pod no longer needs this scheduler (bound, deleted, scheduled elsewhere).
    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Takes the next pod to decide on and marks it in flight.
    pub fn pop(&mut self) -> Option<String> {
        while let Some(key) = self.active.pop_front() {
            if let Some(e) = self.entries.get_mut(&key) {
                if e.state == State::Active {
                    e.state = State::InFlight;
                    return Some(key);
                }
            }
        }
        None
    }

    /// The pod fit no node.
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.attempts += 1;
            e.state = State::Unschedulable {
                backoff_until: now + backoff(e.attempts),
                since: now,
            };
        }
    }

    /// An attempt failed for another reason (API error while binding): retry after back-off.
    pub fn failed(&mut self, key: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.attempts += 1;
            e.state = State::Backoff {
                until: now + backoff(e.attempts),
            };
        }
    }

    /// Something changed in the cluster that may let unschedulable pods fit: retry each once its
    /// back-off has passed.
    pub fn cluster_changed(&mut self) {
        for e in self.entries.values_mut() {
            if let State::Unschedulable { backoff_until, .. } = e.state {
                e.state = State::Backoff {
                    until: backoff_until,
                };
            }
        }
    }

    /// Moves pods whose wait is over into the active FIFO.
    pub fn flush(&mut self, now: Instant) {
        let mut ready: Vec<(&String, &mut Entry)> = self
            .entries
            .iter_mut()
            .filter(|(_, e)| match e.state {
                State::Backoff { until } => until <= now,
                State::Unschedulable { since, .. } => since + UNSCHEDULABLE_FLUSH <= now,
                _ => false,
            })
            .collect();
        ready.sort_by(|a, b| a.0.cmp(b.0));
        for (key, e) in ready {
            e.state = State::Active;
            self.active.push_back(key.clone());
        }
    }

    /// When the next waiting pod becomes ready, if any waits.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.state {
                State::Backoff { until } => Some(until),
                State::Unschedulable { since, .. } => Some(since + UNSCHEDULABLE_FLUSH),
                _ => None,
            })
            .min()
    }

    /// Drops every pod not in `keep` (after a relist).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }

    #[test]
    fn fifo_and_in_flight() {
        let mut q = SchedulingQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.add("a"); // update while in flight: no duplicate
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
        q.remove("a");
        assert!(!q.contains("a"));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_and_backoff() {
        let mut q = SchedulingQueue::new();
        let t0 = Instant::now();
        q.add("a");
        q.pop();
        q.unschedulable("a", t0);
        q.flush(t0 + Duration::from_secs(5));
        assert_eq!(q.pop(), None, "no change yet: stays parked");
        q.cluster_changed();
        q.flush(t0 + Duration::from_millis(500));
        assert_eq!(q.pop(), None, "back-off not over");
        assert_eq!(q.next_wakeup(), Some(t0 + INITIAL_BACKOFF));
        q.flush(t0 + INITIAL_BACKOFF);
        assert_eq!(q.pop().as_deref(), Some("a"));
        // second failure: 2 s back-off, periodic flush without a change
        q.unschedulable("a", t0);
        assert_eq!(q.next_wakeup(), Some(t0 + UNSCHEDULABLE_FLUSH));
        q.flush(t0 + UNSCHEDULABLE_FLUSH);
        assert_eq!(q.pop().as_deref(), Some("a"));
    }

    #[test]
    fn updates_and_errors_retry_after_backoff() {
        let mut q = SchedulingQueue::new();
        let t0 = Instant::now();
        q.add("a");
        q.pop();
        q.unschedulable("a", t0);
        q.add("a"); // the pod was updated
        q.flush(t0 + INITIAL_BACKOFF);
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.failed("a", t0);
        q.flush(t0 + Duration::from_secs(1));
        assert_eq!(q.pop(), None);
        q.flush(t0 + Duration::from_secs(2));
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.retain(|k| k != "a");
        assert!(q.is_empty());
    }
}
