//! `KeyBudget` (namespaced) and `ClusterKeyBudget` (cluster-scoped): spend across the ApiKeys
//! they select, added up from what the providers report, per period. Both share
//! [`KeyBudgetSpec`]; the cluster one adds a `namespaceSelector`.
#![allow(clippy::duplicated_attributes)] // kube printcolumn(...) repeats `type_ =` by design

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Thresholds when `spec.thresholds` is absent.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [0.5, 0.8, 0.95];
/// Most thresholds a budget may name.
pub const MAX_THRESHOLDS: usize = 8;
/// Most entries of `status.byProvider` / `status.byNamespace` / `status.notMeasured` (the rest
/// are summed into the totals and counted, never listed).
pub const MAX_STATUS_ENTRIES: usize = 32;

/// A budget over the ApiKeys of this namespace that `spec.selector` picks.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keysmith.dev",
    version = "v1alpha1",
    kind = "KeyBudget",
    namespaced,
    status = "KeyBudgetStatus",
    shortname = "kb",
    category = "keysmith",
    doc = "A spend budget over the ApiKeys of this namespace that spec.selector picks, added up from the usage their providers report, per period.",
    printcolumn(
        name = "Spent",
        type_ = "string",
        json_path = ".status.spent",
        description = "Spent in the current period, in status.unit"
    ),
    printcolumn(
        name = "Limit",
        type_ = "string",
        json_path = ".spec.amount",
        description = "The budget per period"
    ),
    printcolumn(
        name = "%",
        type_ = "string",
        json_path = ".status.percent",
        description = "Spent as a percentage of the limit"
    ),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.period"),
    printcolumn(
        name = "Keys",
        type_ = "integer",
        json_path = ".status.keysCounted",
        description = "Keys whose spend is counted",
        priority = 1
    ),
    printcolumn(
        name = "Not Measured",
        type_ = "integer",
        json_path = ".status.keysNotMeasured",
        description = "Selected keys whose provider reports no spend for the period",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct KeyBudgetSpec {
    /// Which ApiKeys of the namespace count. Absent: every ApiKey of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::provider::bounded_label_selector")]
    pub selector: Option<LabelSelector>,
    /// The budget per period, a decimal in `currency` (e.g. `"500"` or `"12.50"`).
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?$')").message("amount must be a non-negative decimal such as 500 or 12.50"))]
    pub amount: String,
    /// The unit of `amount` and of the spend counted (default `USD`). Keys whose provider
    /// reports spend in another unit are listed as not measured, never converted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), regex(pattern = r"^[A-Za-z]+$"))]
    pub currency: Option<String>,
    /// The period the budget resets on: `daily`, `weekly` (Monday to Sunday) or `monthly`,
    /// in UTC as OpenRouter counts them.
    pub period: BudgetPeriod,
    /// Fractions of `amount` (0 < x ≤ 1) at which a condition, an Event and a metric tell that
    /// the budget is being used up, once per period each. Default `[0.5, 0.8, 0.95]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(t, t > 0.0 && t <= 1.0)").message("thresholds are fractions of the amount: 0 < x <= 1"))]
    pub thresholds: Option<Vec<f64>>,
    /// What keysmith does about the selected keys: `Report` (default: status, Events and
    /// metrics only), `Throttle` (each key's provider limit is kept at its spend plus its share
    /// of what is left of the budget, so that together they cannot pass it; restored when the
    /// period resets), `Disable` (at the cap the keys are disabled at the provider, re-enabled
    /// when the period resets).
    #[serde(default)]
    pub on_exceeded: OnExceeded,
}

/// A budget over the ApiKeys of the namespaces `spec.namespaceSelector` admits that
/// `spec.selector` picks.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keysmith.dev",
    version = "v1alpha1",
    kind = "ClusterKeyBudget",
    status = "KeyBudgetStatus",
    shortname = "ckb",
    category = "keysmith",
    doc = "A spend budget over the ApiKeys that spec.selector picks in the namespaces spec.namespaceSelector admits, added up from the usage their providers report, per period.",
    printcolumn(
        name = "Spent",
        type_ = "string",
        json_path = ".status.spent",
        description = "Spent in the current period, in status.unit"
    ),
    printcolumn(
        name = "Limit",
        type_ = "string",
        json_path = ".spec.amount",
        description = "The budget per period"
    ),
    printcolumn(
        name = "%",
        type_ = "string",
        json_path = ".status.percent",
        description = "Spent as a percentage of the limit"
    ),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.period"),
    printcolumn(
        name = "Keys",
        type_ = "integer",
        json_path = ".status.keysCounted",
        description = "Keys whose spend is counted",
        priority = 1
    ),
    printcolumn(
        name = "Not Measured",
        type_ = "integer",
        json_path = ".status.keysNotMeasured",
        description = "Selected keys whose provider reports no spend for the period",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterKeyBudgetSpec {
    /// Which namespaces count. Absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::provider::bounded_label_selector")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(flatten)]
    pub inner: KeyBudgetSpec,
}

/// The period a budget resets on (UTC).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Weekly,
    #[default]
    Monthly,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
        }
    }
}

/// What keysmith does about the selected keys of a budget.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum OnExceeded {
    #[default]
    Report,
    Throttle,
    Disable,
}

/// What keysmith last added up for a budget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyBudgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Start of the current period (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub period_start: Option<String>,
    /// End of the current period: thresholds, throttles and disables reset then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub period_end: Option<String>,
    /// The unit of every amount below (the budget's `currency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub unit: Option<String>,
    /// Spent in the current period by the keys counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub spent: Option<String>,
    /// `amount - spent`, never below 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub remaining: Option<String>,
    /// Spent as a percentage of the amount (e.g. `"81%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub percent: Option<String>,
    /// Spent per provider type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub by_provider: Vec<SpendPart>,
    /// Spent per namespace (the largest first; at most 32 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub by_namespace: Vec<SpendPart>,
    /// Keys whose spend is counted.
    #[serde(default)]
    pub keys_counted: i64,
    /// Selected keys whose spend is not known for the period (not added, not counted as 0).
    #[serde(default)]
    pub keys_not_measured: i64,
    /// The first of them, each with why (at most 32 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub not_measured: Vec<NotMeasured>,
    /// Thresholds reached in the current period (each told once per period).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub thresholds_reached: Vec<f64>,
    /// What `onExceeded` is doing now (e.g. `Throttle: 4 keys limited`), and keys it cannot act
    /// on with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub enforcement: Option<String>,
    /// When the figures were last added up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_refresh: Option<String>,
    /// `Ready` (the figures are current), `Threshold<percent>` per threshold reached this
    /// period, and `Exceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
}

/// Spend of one provider type or namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendPart {
    /// Provider type or namespace.
    #[schemars(length(max = 63))]
    pub name: String,
    #[schemars(length(max = 32))]
    pub spent: String,
    /// Keys counted.
    pub keys: i64,
}

/// A selected ApiKey whose spend is not counted, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotMeasured {
    #[schemars(length(max = 63))]
    pub namespace: String,
    #[schemars(length(max = 253))]
    pub name: String,
    #[schemars(length(max = 256))]
    pub reason: String,
}

impl KeyBudgetSpec {
    /// The thresholds, defaults applied, sorted, without repeats.
    pub fn thresholds(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .thresholds
            .clone()
            .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec())
            .into_iter()
            .filter(|t| t.is_finite() && *t > 0.0 && *t <= 1.0)
            .take(MAX_THRESHOLDS)
            .collect();
        t.sort_by(f64::total_cmp);
        t.dedup();
        t
    }

    /// The unit of the budget (default USD).
    pub fn currency(&self) -> String {
        self.currency
            .clone()
            .unwrap_or_else(|| "USD".into())
            .to_ascii_uppercase()
    }
}
