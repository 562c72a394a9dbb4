//! Prometheus metrics. Reconcile metrics use controller-runtime's names and labels so existing
//! dashboards work; every label is a static category, never an object name or error text.

use std::sync::Arc;
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
        m
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
