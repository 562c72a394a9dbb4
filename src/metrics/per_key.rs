//! Opt-in per-ApiKey metrics (`keysmith run --per-key-metrics`): spend ratio, limit, expiry,
//! last use and creation of each key, labelled `namespace`/`apikey`/`provider` only (never a key
//! value or id). The number of ApiKeys with series is capped (`--per-key-metrics-max-series`):
//! updates of ApiKeys beyond the cap are dropped and counted; a deleted ApiKey's series go
//! with it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Default of `--per-key-metrics-max-series`: ApiKeys with series.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The labels of a per-key series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub namespace: String,
    pub apikey: String,
    pub provider: String,
}

/// What is exported of one ApiKey (absent values have no series).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeySample {
    /// Spend of the limit's period / the limit.
    pub spend_ratio: Option<f64>,
    /// `spec.limit.amount`.
    pub limit: Option<f64>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub created_at: Option<i64>,
}

type FGauge = Gauge<f64, AtomicU64>;

/// The per-key families; empty and unregistered unless enabled.
pub struct PerKeyMetrics {
    max_keys: usize,
    /// `namespace/name` → the labels its series carry.
    keys: Mutex<HashMap<String, KeyLabels>>,
    pub spend_ratio: Family<KeyLabels, FGauge>,
    pub limit: Family<KeyLabels, FGauge>,
    pub expiry: Family<KeyLabels, Gauge>,
    pub last_used: Family<KeyLabels, Gauge>,
    pub created: Family<KeyLabels, Gauge>,
    /// Updates of ApiKeys beyond the cap, not exported.
    pub dropped: Counter,
    /// ApiKeys with series now.
    pub tracked: Gauge,
}

impl PerKeyMetrics {
    /// Per-key metrics for at most `max_keys` ApiKeys, registered in `registry`.
    pub fn new(max_keys: usize, registry: &mut Registry) -> Self {
        let m = PerKeyMetrics {
            max_keys,
            keys: Mutex::default(),
            spend_ratio: Family::default(),
            limit: Family::default(),
            expiry: Family::default(),
            last_used: Family::default(),
            created: Family::default(),
            dropped: Counter::default(),
            tracked: Gauge::default(),
        };
        registry.register(
            "keysmith_apikey_spend_ratio",
            "Spend of the limit's period divided by the ApiKey's limit (per-key metrics)",
            m.spend_ratio.clone(),
        );
        registry.register(
            "keysmith_apikey_limit",
            "The ApiKey's spend limit in the provider's unit (per-key metrics)",
            m.limit.clone(),
        );
        registry.register(
            "keysmith_apikey_expiry_timestamp_seconds",
            "When the ApiKey's current key expires (Unix seconds; per-key metrics)",
            m.expiry.clone(),
        );
        registry.register(
            "keysmith_apikey_last_used_timestamp_seconds",
            "When the provider last saw the ApiKey's key used (Unix seconds; per-key metrics)",
            m.last_used.clone(),
        );
        registry.register(
            "keysmith_apikey_created_timestamp_seconds",
            "When the ApiKey's current key was created; its age is time() minus this (per-key metrics)",
            m.created.clone(),
        );
        registry.register(
            "keysmith_per_key_metrics_dropped",
            "Per-key metric updates dropped because --per-key-metrics-max-series ApiKeys already have series",
            m.dropped.clone(),
        );
        registry.register(
            "keysmith_per_key_metrics_apikeys",
            "ApiKeys with per-key series",
            m.tracked.clone(),
        );
        m
    }

    fn remove_series(&self, l: &KeyLabels) {
        self.spend_ratio.remove(l);
        self.limit.remove(l);
        self.expiry.remove(l);
        self.last_used.remove(l);
        self.created.remove(l);
    }

    /// Remove the series of the ApiKey `namespace/name` (it was deleted).
    pub fn forget(&self, key: &str) {
        let mut keys = self.keys.lock().unwrap();
        if let Some(l) = keys.remove(key) {
            self.remove_series(&l);
        }
        self.tracked.set(keys.len() as i64);
    }

    /// Export `sample` for the ApiKey `namespace/name` (None: it was deleted, its series go).
    pub fn observe(&self, namespace: &str, name: &str, provider: &str, sample: Option<&KeySample>) {
        let key = format!("{namespace}/{name}");
        let mut keys = self.keys.lock().unwrap();
        let Some(s) = sample else {
            drop(keys);
            self.forget(&key);
            return;
        };
        let labels = KeyLabels {
            namespace: namespace.into(),
            apikey: name.into(),
            provider: provider.into(),
        };
        match keys.get(&key) {
            Some(old) if *old != labels => self.remove_series(old),
            Some(_) => {}
            None if keys.len() >= self.max_keys => {
                self.dropped.inc();
                return;
            }
            None => {}
        }
        keys.insert(key, labels.clone());
        self.tracked.set(keys.len() as i64);
        drop(keys);
        match s.spend_ratio {
            Some(v) => {
                self.spend_ratio.get_or_create(&labels).set(v);
            }
            None => {
                self.spend_ratio.remove(&labels);
            }
        }
        match s.limit {
            Some(v) => {
                self.limit.get_or_create(&labels).set(v);
            }
            None => {
                self.limit.remove(&labels);
            }
        }
        super::set_or_remove(&self.expiry, &labels, s.expires_at);
        super::set_or_remove(&self.last_used, &labels, s.last_used_at);
        super::set_or_remove(&self.created, &labels, s.created_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeySample {
        KeySample {
            spend_ratio: Some(0.5),
            limit: Some(10.0),
            expires_at: Some(1_800_000_000),
            last_used_at: None,
            created_at: Some(1_700_000_000),
        }
    }

    fn text(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn series_are_capped_counted_and_removed_with_the_apikey() {
        let mut r = Registry::default();
        let m = PerKeyMetrics::new(2, &mut r);
        for name in ["a", "b", "c", "d"] {
            m.observe("team-a", name, "openrouter", Some(&sample()));
        }
        assert_eq!(m.dropped.get(), 2);
        assert_eq!(m.tracked.get(), 2);
        let t = text(&r);
        assert!(t.contains(
            "keysmith_apikey_spend_ratio{namespace=\"team-a\",apikey=\"a\",provider=\"openrouter\"} 0.5"
        ), "{t}");
        assert!(!t.contains("apikey=\"c\""), "{t}");
        assert!(
            !t.contains("last_used_timestamp_seconds{"),
            "absent: no series"
        );
        m.observe("team-a", "a", "openrouter", None);
        assert!(!text(&r).contains("apikey=\"a\""));
        // The freed place goes to the next ApiKey that reports.
        m.observe("team-a", "c", "openrouter", Some(&sample()));
        assert!(text(&r).contains("apikey=\"c\""));
        assert_eq!(m.dropped.get(), 2);
    }

    #[test]
    fn a_provider_change_leaves_no_stale_series() {
        let mut r = Registry::default();
        let m = PerKeyMetrics::new(10, &mut r);
        m.observe("ns", "k", "openrouter", Some(&sample()));
        m.observe("ns", "k", "bifrost", Some(&sample()));
        let t = text(&r);
        assert!(!t.contains("openrouter"), "{t}");
        assert!(t.contains("provider=\"bifrost\""));
    }
}
