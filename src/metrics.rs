//! Prometheus metrics. Reconcile metrics use controller-runtime's names and labels so existing
//! dashboards work; every label is a static category, never an object name or error text.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderRequestLabels {
    pub provider: String,
    pub operation: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderOpLabels {
    pub provider: String,
    pub operation: String,
}

/// Provider request counters and latency.
pub struct ProviderMetrics {
    pub requests: Family<ProviderRequestLabels, Counter>,
    pub duration: Family<ProviderOpLabels, Histogram>,
}

impl std::fmt::Debug for ProviderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderMetrics")
    }
}

impl Default for ProviderMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderMetrics {
    pub fn new() -> Self {
        ProviderMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
        }
    }

    pub fn observe(&self, provider: &str, operation: &str, result: &str, elapsed: Duration) {
        self.requests
            .get_or_create(&ProviderRequestLabels {
                provider: provider.into(),
                operation: operation.into(),
                result: result.into(),
            })
            .inc();
        self.duration
            .get_or_create(&ProviderOpLabels {
                provider: provider.into(),
                operation: operation.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "keysmith_provider_requests",
            "Requests keysmith sent to providers, by provider, operation and result",
            self.requests.clone(),
        );
        registry.register(
            "keysmith_provider_request_duration_seconds",
            "Latency of requests to providers",
            self.duration.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub provider: String,
    pub ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeWriteLabels {
    pub resource: String,
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub provider: String,
    /// `Schedule`, `BeforeExpiry`, `OnDemand` or `SourceChanged`.
    pub trigger: String,
}

/// The rotation state of one ApiKey, as the rotation gauges aggregate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationTrack {
    pub provider: String,
    /// status.nextRotationAt (Unix seconds).
    pub next_rotation: Option<i64>,
    /// Replaced keys in their grace period (status.previousKeys).
    pub previous_keys: i64,
}

/// Everything keysmith exports.
pub struct Metrics {
    pub registry: Registry,
    pub provider: Arc<ProviderMetrics>,
    pub reconcile_total: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_time: Family<ControllerLabels, Histogram>,
    pub apikeys: Family<ReadyLabels, Gauge>,
    /// Soonest expiry among the keys of each provider type (object names are not labels).
    pub key_expiry: Family<ProviderLabel, Gauge>,
    pub orphans_revoked: Family<ProviderLabel, Counter>,
    pub keys_created: Family<ProviderLabel, Counter>,
    pub keys_revoked: Family<ProviderLabel, Counter>,
    pub kube_writes: Family<KubeWriteLabels, Counter>,
    /// Rotations completed, by provider type and trigger.
    pub rotations: Family<RotationLabels, Counter>,
    /// Replaced keys still live in their grace period, per provider type.
    pub previous_keys: Family<ProviderLabel, Gauge>,
    /// Soonest scheduled rotation among the keys of each provider type.
    pub next_rotation: Family<ProviderLabel, Gauge>,
    rotation_tracked: Mutex<BTreeMap<String, RotationTrack>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let provider = Arc::new(ProviderMetrics::new());
        let mut m = Metrics {
            provider,
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_time: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            apikeys: Family::default(),
            key_expiry: Family::default(),
            orphans_revoked: Family::default(),
            keys_created: Family::default(),
            keys_revoked: Family::default(),
            kube_writes: Family::default(),
            rotations: Family::default(),
            previous_keys: Family::default(),
            next_rotation: Family::default(),
            rotation_tracked: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        m.provider.register(&mut m.registry);
        m.registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            m.reconcile_total.clone(),
        );
        m.registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller, by condition reason",
            m.reconcile_errors.clone(),
        );
        m.registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            m.reconcile_time.clone(),
        );
        m.registry.register(
            "keysmith_apikeys",
            "ApiKeys by provider and readiness",
            m.apikeys.clone(),
        );
        m.registry.register(
            "keysmith_key_expiry_timestamp_seconds",
            "Soonest expiry among the managed keys of each provider (Unix seconds)",
            m.key_expiry.clone(),
        );
        m.registry.register(
            "keysmith_orphans_revoked",
            "Keys found at a provider after an interrupted create and revoked",
            m.orphans_revoked.clone(),
        );
        m.registry.register(
            "keysmith_keys_created",
            "Keys created at providers",
            m.keys_created.clone(),
        );
        m.registry.register(
            "keysmith_keys_revoked",
            "Keys revoked at providers",
            m.keys_revoked.clone(),
        );
        m.registry.register(
            "keysmith_kubernetes_writes",
            "Writes keysmith made to the Kubernetes API, by resource and verb",
            m.kube_writes.clone(),
        );
        m.registry.register(
            "keysmith_rotations",
            "Key rotations completed, by provider and trigger (Schedule, BeforeExpiry, OnDemand, SourceChanged)",
            m.rotations.clone(),
        );
        m.registry.register(
            "keysmith_previous_keys",
            "Replaced keys still live in their grace period, waiting to be revoked",
            m.previous_keys.clone(),
        );
        m.registry.register(
            "keysmith_next_rotation_timestamp_seconds",
            "Soonest scheduled rotation among the managed keys of each provider (Unix seconds)",
            m.next_rotation.clone(),
        );
        m
    }

    /// Count one completed rotation.
    pub fn rotated(&self, provider: &str, trigger: &str) {
        self.rotations
            .get_or_create(&RotationLabels {
                provider: provider.into(),
                trigger: trigger.into(),
            })
            .inc();
    }

    /// Record an ApiKey's rotation state (`key`: namespace/name; None: it was deleted) and
    /// refresh `keysmith_previous_keys` and `keysmith_next_rotation_timestamp_seconds`.
    pub fn track_rotation(&self, key: &str, state: Option<RotationTrack>) {
        let mut t = self
            .rotation_tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let changed = match state {
            Some(s) => t.insert(key.to_string(), s.clone()) != Some(s),
            None => t.remove(key).is_some(),
        };
        if !changed {
            return;
        }
        let mut previous: BTreeMap<&str, i64> = BTreeMap::new();
        let mut soonest: BTreeMap<&str, i64> = BTreeMap::new();
        for s in t.values() {
            *previous.entry(&s.provider).or_default() += s.previous_keys;
            if let Some(n) = s.next_rotation {
                let e = soonest.entry(&s.provider).or_insert(n);
                *e = (*e).min(n);
            }
        }
        self.previous_keys.clear();
        for (provider, n) in previous {
            self.previous_keys
                .get_or_create(&ProviderLabel {
                    provider: provider.into(),
                })
                .set(n);
        }
        self.next_rotation.clear();
        for (provider, n) in soonest {
            self.next_rotation
                .get_or_create(&ProviderLabel {
                    provider: provider.into(),
                })
                .set(n);
        }
    }

    /// Count one write to the Kubernetes API (`resource` e.g. `secrets`, `operation` e.g. `apply`).
    pub fn kube_write(&self, resource: &str, operation: &str) {
        self.kube_writes
            .get_or_create(&KubeWriteLabels {
                resource: resource.into(),
                verb: operation.into(),
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_metrics_aggregate_per_provider() {
        let m = Metrics::new();
        m.rotated("openrouter", "OnDemand");
        m.rotated("openrouter", "OnDemand");
        m.rotated("boltz", "Schedule");
        let track = |p: &str, next, prev| {
            Some(RotationTrack {
                provider: p.into(),
                next_rotation: next,
                previous_keys: prev,
            })
        };
        m.track_rotation("a/one", track("openrouter", Some(2000), 1));
        m.track_rotation("a/two", track("openrouter", Some(1000), 2));
        m.track_rotation("b/three", track("boltz", None, 0));
        let out = m.encode();
        for want in [
            "keysmith_rotations_total{provider=\"openrouter\",trigger=\"OnDemand\"} 2",
            "keysmith_rotations_total{provider=\"boltz\",trigger=\"Schedule\"} 1",
            "keysmith_previous_keys{provider=\"openrouter\"} 3",
            "keysmith_previous_keys{provider=\"boltz\"} 0",
            "keysmith_next_rotation_timestamp_seconds{provider=\"openrouter\"} 1000",
        ] {
            assert!(out.contains(want), "{want} missing in\n{out}");
        }
        assert!(!out.contains("keysmith_next_rotation_timestamp_seconds{provider=\"boltz\"}"));
        // A deleted ApiKey leaves the aggregates.
        m.track_rotation("a/two", None);
        let out = m.encode();
        assert!(
            out.contains("keysmith_previous_keys{provider=\"openrouter\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("keysmith_next_rotation_timestamp_seconds{provider=\"openrouter\"} 2000"),
            "{out}"
        );
    }
}
