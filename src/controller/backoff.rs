//! Failures in a row per ApiKey (`namespace/name`), and the backoff they earn: 2 s after the
//! first, doubled per failure up to 256 s (and never over [`MAX_BACKOFF`]). Reset by a reconcile that worked; dropped with the ApiKey
//! ([`Backoff::forget`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Longest backoff after transient failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait after `failures` transient failures in a row.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(MAX_BACKOFF)
}

/// Failure counters, per ApiKey.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Count a transient failure of `key`; returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap();
        let n = f.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// `key` reconciled fine: its backoff starts over.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }

    /// The ApiKey `key` is gone.
    pub fn forget(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }

    /// Forget every ApiKey `gone` says is gone; returns how many went.
    pub fn forget_where(&self, gone: impl Fn(&str) -> bool) -> usize {
        let mut f = self.failures.lock().unwrap();
        let before = f.len();
        f.retain(|k, _| !gone(k));
        before - f.len()
    }

    /// ApiKeys with a counter.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.failures.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(256));
    }

    #[test]
    fn failures_double_the_wait_until_a_success_or_the_apikey_goes() {
        let b = Backoff::default();
        assert_eq!(b.failed("team-a/k"), Duration::from_secs(2));
        assert_eq!(b.failed("team-a/k"), Duration::from_secs(4));
        for _ in 0..20 {
            b.failed("team-a/k");
        }
        assert_eq!(b.failed("team-a/k"), Duration::from_secs(256));
        b.succeeded("team-a/k");
        assert_eq!(b.failed("team-a/k"), Duration::from_secs(2));
        b.failed("team-a/other");
        assert_eq!(b.len(), 2);
        b.forget("team-a/k");
        assert_eq!(b.len(), 1);
        assert_eq!(b.forget_where(|k| k == "team-a/other"), 1);
        assert_eq!(b.len(), 0);
    }
}
