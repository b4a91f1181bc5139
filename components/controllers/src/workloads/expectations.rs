//! Controller expectations, as in Kubernetes' `controller_utils.go`.
//!
//! A controller reads pods from a cache that lags behind its own writes. Before it creates N
//! pods it records "expect N additions"; each pod the watch reports as added for that owner
//! lowers the count. Deletions are tracked by pod name so a pod seen first as terminating and
//! then as deleted counts once. While anything is outstanding the controller does not act on
//! counts (it would create or delete twice); after [`EXPECTATION_TTL`] it trusts the cache
//! again, in case an event was missed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long unobserved expectations hold a controller back (Kubernetes: 5 minutes).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Record {
    adds: i64,
    deletes: HashSet<String>,
    since: Instant,
}

/// Outstanding creations and deletions per owner key (`namespace/name`).
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    inner: Arc<Mutex<HashMap<String, Record>>>,
    ttl: Option<Duration>,
}

impl Expectations {
    /// Expectations with the default time-to-live.
    pub fn new() -> Expectations {
        Expectations::default()
    }

    /// Expectations that expire after `ttl` (tests).
    pub fn with_ttl(ttl: Duration) -> Expectations {
        Expectations {
            inner: Default::default(),
            ttl: Some(ttl),
        }
    }

    fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(EXPECTATION_TTL)
    }

    /// True when `key` may act on the cache: nothing outstanding, or it expired.
    pub fn satisfied(&self, key: &str) -> bool {
        let map = self.inner.lock().unwrap();
        match map.get(key) {
            None => true,
            Some(r) => (r.adds <= 0 && r.deletes.is_empty()) || r.since.elapsed() > self.ttl(),
        }
    }

    /// Records that `adds` creations are about to be issued for `key` (replacing any record).
    pub fn expect_creations(&self, key: &str, adds: usize) {
        self.inner.lock().unwrap().insert(
            key.to_string(),
            Record {
                adds: adds as i64,
                deletes: HashSet::new(),
                since: Instant::now(),
            },
        );
    }

    /// Records that the pods `names` are about to be deleted for `key` (replacing any record).
    pub fn expect_deletions(&self, key: &str, names: impl IntoIterator<Item = String>) {
        self.inner.lock().unwrap().insert(
            key.to_string(),
            Record {
                adds: 0,
                deletes: names.into_iter().collect(),
                since: Instant::now(),
            },
        );
    }

    /// One creation for `key` was observed (or will never happen because it failed).
    pub fn creation_observed(&self, key: &str) {
        if let Some(r) = self.inner.lock().unwrap().get_mut(key) {
            r.adds -= 1;
        }
    }

    /// The pod `name` of `key` was seen terminating or gone (or its delete failed).
    pub fn deletion_observed(&self, key: &str, name: &str) {
        if let Some(r) = self.inner.lock().unwrap().get_mut(key) {
            r.deletes.remove(name);
        }
    }

    /// Forgets `key` (its owner was deleted).
    pub fn forget(&self, key: &str) {
        self.inner.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_hold_until_observed() {
        let e = Expectations::new();
        assert!(e.satisfied("ns/a"));
        e.expect_creations("ns/a", 2);
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(e.satisfied("ns/a"));
        assert!(e.satisfied("ns/b"), "other keys are independent");
    }

    #[test]
    fn deletions_count_each_pod_once() {
        let e = Expectations::new();
        e.expect_deletions("ns/a", ["p1".to_string(), "p2".to_string()]);
        e.deletion_observed("ns/a", "p1");
        e.deletion_observed("ns/a", "p1");
        assert!(!e.satisfied("ns/a"));
        e.deletion_observed("ns/a", "p2");
        assert!(e.satisfied("ns/a"));
    }

    #[test]
    fn expired_expectations_are_satisfied() {
        let e = Expectations::with_ttl(Duration::from_millis(1));
        e.expect_creations("ns/a", 5);
        std::thread::sleep(Duration::from_millis(5));
        assert!(e.satisfied("ns/a"));
        e.forget("ns/a");
        assert!(e.satisfied("ns/a"));
    }
}
