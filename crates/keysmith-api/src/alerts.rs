//! Alerts of one ApiKey (`spec.alerts`) and what keysmith remembers of the alerts it raised
//! (`status.alerts`), so that a reconcile, or an operator restart, never raises one twice.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Most thresholds an ApiKey may list.
pub const MAX_USAGE_THRESHOLDS: usize = 8;

/// When keysmith warns about this key (conditions `UsageHigh` and `ExpiringSoon`, and Events).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// Fractions of `spec.limit` (0 < x ≤ 1), e.g. `[0.8, 0.95]`: when the spend of the limit's
    /// period reaches one, the `UsageHigh` condition turns True and an Event says so, once per
    /// threshold and period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(x, x > 0.0 && x <= 1.0)").message("alerts.usageThresholds are fractions of the limit: 0 < x <= 1"))]
    pub usage_thresholds: Vec<f64>,
}

/// The alerts raised, recorded so that each is raised once.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsStatus {
    /// The limit period the thresholds below were crossed in (`daily:2026-12-06`,
    /// `weekly:2026-W49`, `monthly:2026-12`, `never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub usage_period: Option<String>,
    /// The usage thresholds already announced in `usagePeriod`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub usage_thresholds_crossed: Vec<f64>,
    /// The expiry (`status.expiresAt`) an `ExpiringSoon` Event was published for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub expiring_soon_announced: Option<String>,
}
