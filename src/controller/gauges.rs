//! The gauges' view of each ApiKey (`namespace/name`): its provider, readiness and expiry, added
//! up per provider into `keysmith_apikeys` and `keysmith_key_expiry_timestamp_seconds` (only
//! the providers an ApiKey counted under change: O(log N), issue 11). Dropped with the ApiKey
//! ([`Gauges::forget`]), with its per-key and rotation series.

use std::sync::{Arc, Mutex};

use crate::metrics::{
    set_or_remove, Contribution, Metrics, ProviderLabel, ReadyLabels, Tally, Tracker,
};

/// What the gauges know of one ApiKey: provider type, ready, expiry (Unix seconds).
pub type Tracked = (String, bool, Option<i64>);

/// The `keysmith_apikeys` part an ApiKey counts under.
fn ready_part(ready: bool) -> &'static str {
    if ready {
        "ready"
    } else {
        "not-ready"
    }
}

impl Contribution for Tracked {
    fn provider(&self) -> &str {
        &self.0
    }

    fn add_to(&self, tally: &mut Tally, sign: i64) {
        tally.apply(&self.0, ready_part(self.1), 1, self.2, sign);
    }
}

/// Per ApiKey: what it adds to the gauges.
pub struct Gauges {
    metrics: Arc<Metrics>,
    tracked: Mutex<Tracker<Tracked>>,
}

impl Gauges {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Gauges {
            metrics,
            tracked: Mutex::default(),
        }
    }

    /// Record an ApiKey's provider, readiness and expiry and refresh the gauges it counts in.
    pub fn track(&self, key: &str, state: Tracked) {
        self.update(key, Some(state));
    }

    /// The ApiKey `key` is gone: it leaves the gauges, and its per-key and rotation series go.
    pub fn forget(&self, key: &str) {
        self.update(key, None);
        if let Some(pk) = &self.metrics.per_key {
            pk.forget(key);
        }
        self.metrics.track_rotation(key, None);
    }

    fn update(&self, key: &str, state: Option<Tracked>) {
        let mut t = self.tracked.lock().unwrap();
        for provider in t.update(key, state) {
            for ready in [true, false] {
                let n = t.tally.sum(&provider, ready_part(ready));
                let labels = ReadyLabels {
                    provider: provider.clone(),
                    ready: ready.to_string(),
                };
                set_or_remove(&self.metrics.apikeys, &labels, (n != 0).then_some(n));
            }
            let min = t.tally.min(&provider);
            set_or_remove(&self.metrics.key_expiry, &ProviderLabel { provider }, min);
        }
    }

    /// ApiKeys tracked.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.tracked.lock().unwrap().len()
    }
}

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauges").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apikey_counts_until_it_is_forgotten() {
        let metrics = Arc::new(Metrics::new());
        let g = Gauges::new(metrics.clone());
        g.track("team-a/one", ("openrouter".into(), true, Some(2000)));
        g.track("team-a/two", ("openrouter".into(), false, Some(1000)));
        let out = metrics.encode();
        for want in [
            "keysmith_apikeys{provider=\"openrouter\",ready=\"true\"} 1",
            "keysmith_apikeys{provider=\"openrouter\",ready=\"false\"} 1",
            "keysmith_key_expiry_timestamp_seconds{provider=\"openrouter\"} 1000",
        ] {
            assert!(out.contains(want), "{want} missing in\n{out}");
        }
        g.forget("team-a/two");
        g.forget("team-a/never-tracked");
        assert_eq!(g.len(), 1);
        let out = metrics.encode();
        assert!(!out.contains("ready=\"false\""), "{out}");
        assert!(out.contains("keysmith_key_expiry_timestamp_seconds{provider=\"openrouter\"} 2000"));
        g.forget("team-a/one");
        assert_eq!(g.len(), 0);
        assert!(!metrics.encode().contains("keysmith_apikeys{"));
    }
}
