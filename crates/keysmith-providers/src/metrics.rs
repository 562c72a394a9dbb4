//! Provider request metrics: a counter and a latency histogram per provider and operation,
//! recorded by [`crate::http`] for every request. The operator registers them next to its own
//! (`keysmith::metrics`); every label is a static category, never an object name or error text.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
