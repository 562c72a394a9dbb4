//! The status of an ApiKey: what a reconcile concludes (pure builders) and the one status write,
//! conditional on the resourceVersion the reconcile read (see [`ServerCopy`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::Value;

use super::super::backends::ResolvedProvider;
use super::super::conditions::{is_ready, remove_condition, set_condition, set_ready, Readiness};
use super::super::context::Context;
use super::super::gauges::Tracked;
use super::super::reasons::Reason;
use super::super::time::{self, ts};
use super::step::{object_key, ServerCopy};
use crate::api::{ApiKey, ApiKeyStatus, LastUsed, LastUsedSource, Usage, UsageAmounts};
use crate::controller::error::Failure;
use crate::controller::rotation::human;
use crate::providers::ProviderKey;

/// What a successful reconcile reports.
#[derive(Debug)]
pub struct Ready {
    pub reason: Reason,
    pub message: String,
    pub requeue: Duration,
    /// A key created under its provisional name, to be given its display name once the status
    /// recording it is written (never before: until then its provisional name is what proves
    /// it the attempt's own to crash recovery, see `attempt::rename_after_write`).
    pub rename: Option<Box<super::attempt::Rename>>,
}

impl Ready {
    /// The key is live and the Secret holds its value.
    pub fn active(p: &ResolvedProvider, st: &ApiKeyStatus, secret_name: &str) -> Ready {
        Ready {
            reason: Reason::KeyActive,
            message: active_message(p, st, secret_name),
            requeue: p.refresh_interval,
            rename: None,
        }
    }
}

/// Record the outcome of a reconcile in `st` (the Ready condition and the observed generation).
/// Returns whether the condition a person sees changed.
pub fn conclude(
    st: &mut ApiKeyStatus,
    generation: Option<i64>,
    outcome: &Result<Ready, Failure>,
) -> bool {
    let changed = set_ready(&mut st.conditions, generation, &readiness(outcome));
    st.observed_generation = generation;
    changed
}

/// The Ready condition an outcome sets.
pub fn readiness(outcome: &Result<Ready, Failure>) -> Readiness {
    match outcome {
        Ok(r) => Readiness {
            ready: true,
            reason: r.reason,
            message: r.message.clone(),
        },
        Err(f) => Readiness {
            ready: false,
            reason: f.reason,
            message: f.message.clone(),
        },
    }
}

/// Say that the ApiKey is not ready, the one way every path does (a failed reconcile, a revoke
/// refused on deletion, a contained panic): `not_ready` as the Ready condition of `after`, a
/// Warning Event (`action`) only when the condition a person sees changed, and `after` written
/// when the server holds something else (`read`: the status the work began with; see
/// [`ServerCopy::differs`]). Returns whether the condition changed, and the write's outcome.
pub async fn report_not_ready(
    ctx: &Context,
    ak: &ApiKey,
    seen: &ServerCopy,
    read: &ApiKeyStatus,
    after: &mut ApiKeyStatus,
    not_ready: Readiness,
    action: &str,
) -> (bool, Result<(), kube::Error>) {
    let changed = set_ready(&mut after.conditions, ak.metadata.generation, &not_ready);
    if changed {
        ctx.event(
            ak,
            EventType::Warning,
            not_ready.reason,
            action,
            not_ready.message,
        )
        .await;
    }
    let written = match seen.differs(after, read) {
        true => write_status(ctx, ak, after, seen).await,
        false => Ok(()),
    };
    (changed, written)
}

/// What the gauges know of an ApiKey with this status.
pub fn tracked(st: &ApiKeyStatus) -> Tracked {
    let expiry = st
        .expires_at
        .as_deref()
        .and_then(time::parse)
        .map(|e| e.timestamp());
    (
        st.provider_type.clone().unwrap_or_else(|| "unknown".into()),
        is_ready(&st.conditions),
        expiry,
    )
}

/// What the per-key metrics export of an ApiKey with this spec and status.
pub fn per_key_sample(
    spec: &crate::api::ApiKeySpec,
    st: &ApiKeyStatus,
) -> crate::metrics::per_key::KeySample {
    let unix = |s: &Option<String>| {
        s.as_deref()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .map(|e| e.timestamp())
    };
    crate::metrics::per_key::KeySample {
        spend_ratio: super::alerts::spend_ratio(spec, st).map(|(_, r)| r),
        limit: spec
            .limit
            .as_ref()
            .and_then(|l| l.amount.parse::<f64>().ok())
            .filter(|v| v.is_finite()),
        expires_at: unix(&st.expires_at),
        last_used_at: unix(&st.last_used_at),
        created_at: unix(&st.created_at),
    }
}

pub fn active_message(p: &ResolvedProvider, st: &ApiKeyStatus, secret_name: &str) -> String {
    format!(
        "key {} is live at {}; its value is in Secret {secret_name}",
        st.key_hint
            .as_deref()
            .or(st.key_id.as_deref())
            .unwrap_or("?"),
        p.provider_type
    )
}

/// Copy what the provider reports into the status.
pub fn fill_from_key(st: &mut ApiKeyStatus, k: &ProviderKey, p: &ResolvedProvider) {
    fill(st, k, p.backend.last_use(k), p.refresh_interval, Utc::now());
    note_problem(st, p.backend.key_problem(k));
}

/// Condition type: the provider reports a problem with the key itself.
pub const DEGRADED: &str = "Degraded";
/// The reason of [`DEGRADED`].
pub const PROVIDER_REPORTED_PROBLEM: &str = "ProviderReportedProblem";

/// Set the [`DEGRADED`] condition to what the provider reports of the key (`problem`), or
/// remove it when it reports none. It carries no generation: it is about the key, whatever
/// the spec says.
pub fn note_problem(st: &mut ApiKeyStatus, problem: Option<String>) {
    match problem {
        Some(m) => {
            set_condition(
                &mut st.conditions,
                DEGRADED,
                true,
                PROVIDER_REPORTED_PROBLEM,
                m,
                None,
            );
        }
        None => {
            remove_condition(&mut st.conditions, DEGRADED);
        }
    }
}

/// [`fill_from_key`] with the provider's way of telling last use, its refresh interval and the
/// time of the observation given.
pub fn fill(
    st: &mut ApiKeyStatus,
    k: &ProviderKey,
    source: LastUsedSource,
    interval: Duration,
    now: DateTime<Utc>,
) {
    // Before the key id and the usage are overwritten: the last use compares with them.
    note_last_use(st, k, source, interval, now);
    st.key_id = Some(k.id.clone());
    if k.hint.is_some() {
        st.key_hint = k.hint.clone();
    }
    if let Some(c) = &k.created_at {
        st.created_at = Some(ts(*c));
    }
    if let Some(e) = &k.observed.expires_at {
        st.expires_at = e.map(ts);
    }
    if let Some(e) = &k.expires_at {
        st.expires_at = Some(ts(*e));
    }
    if k.usage.is_some() {
        // The limit's period counts the spend of the keys this one replaced (issue 21).
        st.usage = crate::controller::limits::across_generations(
            k.usage.clone(),
            st.limit_carry_over.as_deref(),
            chrono::Utc::now(),
        );
    }
}

/// Record in `st.lastUsed` (and `st.lastUsedAt`, its printer column) when key `k` was last
/// used, as far as `source` can tell. `st` still describes the previous observation: a
/// `UsageDelta` compares the usage recorded then with `k`'s (of the same key only), and dates a
/// rise at `now`, within `interval` (the refresh interval) of the use. Deterministic: the time
/// changes only when a counter rose, which changes `status.usage` anyway.
fn note_last_use(
    st: &mut ApiKeyStatus,
    k: &ProviderKey,
    source: LastUsedSource,
    interval: Duration,
    now: DateTime<Utc>,
) {
    let same_key = st.key_id.as_deref() == Some(k.id.as_str());
    let before = st
        .last_used
        .clone()
        .filter(|l| same_key && l.source == source);
    let next = match source {
        LastUsedSource::Provider => match (&k.last_used_at, before) {
            (Some(at), _) => LastUsed {
                at: Some(ts(*at)),
                source,
                precision: None,
            },
            // An answer without the field (a create or update answer) does not unsay a use
            // the listing reported.
            (None, Some(b)) => b,
            (None, None) => LastUsed {
                source,
                ..Default::default()
            },
        },
        LastUsedSource::UsageDelta => {
            let rose = match (&st.usage, &k.usage) {
                (Some(was), Some(is)) => same_key && usage_rose(was, is),
                _ => false,
            };
            match before {
                _ if rose => LastUsed {
                    at: Some(ts(now)),
                    source,
                    precision: Some(human(interval)),
                },
                Some(b) => b,
                None => LastUsed {
                    source,
                    ..Default::default()
                },
            }
        }
        LastUsedSource::NotReported => LastUsed {
            source,
            ..Default::default()
        },
    };
    st.last_used_at = next.at.clone();
    st.last_used = Some(next);
}

/// Whether usage counters show use between two observations of one key: a counter that rose,
/// or a period counter (daily, weekly, monthly) that fell to a non-zero amount (it was reset
/// after the first observation, and spent again since).
pub fn usage_rose(was: &Usage, is: &Usage) -> bool {
    fn amount(s: &Option<String>) -> Option<f64> {
        s.as_deref()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    }
    let rose = |a: &Option<String>, b: &Option<String>, period: bool| match (amount(a), amount(b)) {
        (Some(a), Some(b)) => b > a || (period && b < a && b > 0.0),
        (None, Some(b)) => b > 0.0,
        _ => false,
    };
    let none = UsageAmounts::default();
    let (byok_was, byok_is) = (
        was.byok.as_deref().unwrap_or(&none),
        is.byok.as_deref().unwrap_or(&none),
    );
    rose(&was.total, &is.total, false)
        || rose(&was.daily, &is.daily, true)
        || rose(&was.weekly, &is.weekly, true)
        || rose(&was.monthly, &is.monthly, true)
        // Spend through the user's own upstream keys is use too (OpenRouter BYOK).
        || rose(&byok_was.total, &byok_is.total, false)
        || rose(&byok_was.daily, &byok_is.daily, true)
        || rose(&byok_was.weekly, &byok_is.weekly, true)
        || rose(&byok_was.monthly, &byok_is.monthly, true)
}

/// Every field of ApiKeyStatus, from its schema (so a new field is never forgotten).
fn status_fields() -> &'static [String] {
    static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(ApiKeyStatus))
            .ok()
            .and_then(|schema| {
                schema["properties"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
            })
            .unwrap_or_default()
    })
}

/// A merge patch merges nested objects: the rotation bookkeeping's optional fields are sent as
/// null when absent, so a finished rotation clears `inProgress` (and a settled rollout).
fn null_absent_rotation(status: &mut Value) {
    fn fill(v: Option<&mut Value>, keys: &[&str]) {
        if let Some(Value::Object(m)) = v {
            for k in keys {
                m.entry(k.to_string()).or_insert(Value::Null);
            }
        }
    }
    let rotation = status.get_mut("rotation");
    fill(rotation, &["handledRequest", "inProgress", "rollout"]);
    if let Some(r) = status.get_mut("rotation") {
        fill(r.get_mut("inProgress"), &["request", "scope"]);
        fill(r.get_mut("rollout"), &["targets"]);
    }
}

/// The merge patch that makes the server hold exactly `after` (absent fields sent as null),
/// conditional on `resource_version` when known.
fn status_patch(after: &ApiKeyStatus, resource_version: Option<String>) -> Value {
    let mut new = serde_json::to_value(after).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut new {
        for k in status_fields() {
            m.entry(k.clone()).or_insert(Value::Null);
        }
    }
    null_absent_rotation(&mut new);
    let mut patch = serde_json::json!({ "status": new });
    if let Some(rv) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    patch
}

/// Write the whole status as a JSON merge patch; absent fields are sent as null so that what
/// the server holds is exactly `after`. Fails with 409 Conflict if the ApiKey is no longer at
/// the version `seen` holds (see [`ServerCopy`]).
pub async fn write_status(
    ctx: &Context,
    ak: &ApiKey,
    after: &ApiKeyStatus,
    seen: &ServerCopy,
) -> Result<(), kube::Error> {
    let patch = status_patch(after, seen.resource_version());
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    let written = api
        .patch_status(
            &ak.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    seen.wrote(written.resource_version(), after);
    ctx.write_log
        .wrote(&object_key(ak), written.resource_version());
    ctx.metrics.kube_write("apikeys/status", "patch");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Ready {
        Ready {
            reason: Reason::KeyActive,
            message: "live".into(),
            requeue: Duration::from_secs(300),
            rename: None,
        }
    }

    #[test]
    fn conclusions_set_ready_and_the_generation() {
        let mut st = ApiKeyStatus::default();
        assert!(conclude(&mut st, Some(3), &Ok(ready())));
        assert_eq!(st.observed_generation, Some(3));
        assert!(is_ready(&st.conditions));
        let same = st.clone();
        assert!(!conclude(&mut st, Some(3), &Ok(ready())));
        assert_eq!(st, same);
        let f = Failure::permanent(Reason::InvalidSpec, "bad ttl");
        assert!(conclude(&mut st, Some(4), &Err(f)));
        assert!(!is_ready(&st.conditions));
        assert_eq!(st.conditions[0].reason, "InvalidSpec");
        assert_eq!(st.conditions[0].message, "bad ttl");
        assert!(!tracked(&st).1);
    }

    #[test]
    fn the_patch_nulls_every_absent_field_and_carries_the_version() {
        let st = ApiKeyStatus {
            key_id: Some("k1".into()),
            ..Default::default()
        };
        let p = status_patch(&st, Some("42".into()));
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["status"]["keyID"], "k1");
        assert!(p["status"]["pendingCreate"].is_null());
        assert!(p["status"]
            .as_object()
            .unwrap()
            .contains_key("pendingCreate"));
        assert!(status_patch(&st, None).get("metadata").is_none());
    }

    fn key(id: &str, total: Option<&str>, daily: Option<&str>) -> ProviderKey {
        ProviderKey {
            id: id.into(),
            usage: Some(Usage {
                total: total.map(Into::into),
                daily: daily.map(Into::into),
                ..Default::default()
            }),
            active: true,
            ..Default::default()
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn a_usage_counter_that_rose_dates_a_use_within_the_refresh_interval() {
        let d = LastUsedSource::UsageDelta;
        let mut st = ApiKeyStatus::default();
        // First sight of a key: nothing to compare with, no use claimed.
        fill(
            &mut st,
            &key("k1", Some("0"), Some("0")),
            d,
            FIVE_MIN,
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(st.last_used.as_ref().unwrap().source, d);
        assert_eq!(st.last_used.as_ref().unwrap().at, None);
        assert_eq!(st.last_used_at, None);
        // Unchanged: still nothing.
        fill(
            &mut st,
            &key("k1", Some("0"), Some("0")),
            d,
            FIVE_MIN,
            at("2026-01-01T00:05:00Z"),
        );
        assert_eq!(st.last_used_at, None);
        // Spent: used within the interval before this observation.
        fill(
            &mut st,
            &key("k1", Some("1.5"), Some("1.5")),
            d,
            FIVE_MIN,
            at("2026-01-01T00:10:00Z"),
        );
        let lu = st.last_used.clone().unwrap();
        assert_eq!(lu.at.as_deref(), Some("2026-01-01T00:10:00Z"));
        assert_eq!(lu.precision.as_deref(), Some("5m"));
        assert_eq!(st.last_used_at.as_deref(), Some("2026-01-01T00:10:00Z"));
        // The same counters later: the last use stays where it was (no status churn).
        let before = st.clone();
        fill(
            &mut st,
            &key("k1", Some("1.5"), Some("1.5")),
            d,
            FIVE_MIN,
            at("2026-01-01T00:15:00Z"),
        );
        assert_eq!(st, before);
        // The daily counter reset: no use.
        fill(
            &mut st,
            &key("k1", Some("1.5"), Some("0")),
            d,
            FIVE_MIN,
            at("2026-01-02T00:01:00Z"),
        );
        assert_eq!(st.last_used_at.as_deref(), Some("2026-01-01T00:10:00Z"));
    }

    #[test]
    fn a_period_counter_reset_and_spent_again_is_a_use() {
        let was = Usage {
            daily: Some("3".into()),
            ..Default::default()
        };
        let spent_again = Usage {
            daily: Some("0.5".into()),
            ..Default::default()
        };
        let reset = Usage {
            daily: Some("0".into()),
            ..Default::default()
        };
        assert!(usage_rose(&was, &spent_again));
        assert!(!usage_rose(&was, &reset));
        assert!(!usage_rose(&was, &was));
        // A total that fell is not a use (nor a reset: totals do not reset).
        let t = |v: &str| Usage {
            total: Some(v.into()),
            ..Default::default()
        };
        assert!(!usage_rose(&t("2"), &t("1")));
        assert!(usage_rose(&t("1"), &t("1.01")));
        assert!(!usage_rose(&t("x"), &t("NaN")));
    }

    #[test]
    fn byok_spend_is_use_too() {
        let byok = |v: &str| Usage {
            total: Some("1".into()),
            byok: Some(Box::new(UsageAmounts {
                total: Some(v.into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(usage_rose(&byok("0"), &byok("0.5")));
        assert!(!usage_rose(&byok("0.5"), &byok("0.5")));
        let without = Usage {
            total: Some("1".into()),
            ..Default::default()
        };
        assert!(usage_rose(&without, &byok("0.5")));
        assert!(!usage_rose(&without, &byok("0")));
    }

    #[test]
    fn another_key_is_not_compared_with_the_previous_one() {
        let d = LastUsedSource::UsageDelta;
        let mut st = ApiKeyStatus::default();
        fill(
            &mut st,
            &key("old", Some("1"), None),
            d,
            FIVE_MIN,
            at("2026-01-01T00:00:00Z"),
        );
        fill(
            &mut st,
            &key("old", Some("2"), None),
            d,
            FIVE_MIN,
            at("2026-01-01T00:05:00Z"),
        );
        assert!(st.last_used_at.is_some());
        // Rotated: the new key's usage is its own, and it has not been seen used.
        fill(
            &mut st,
            &key("new", Some("5"), None),
            d,
            FIVE_MIN,
            at("2026-01-01T00:10:00Z"),
        );
        assert_eq!(st.last_used_at, None);
        assert_eq!(st.last_used.unwrap().at, None);
    }

    #[test]
    fn provider_reported_last_use_is_taken_as_is() {
        let p = LastUsedSource::Provider;
        let mut st = ApiKeyStatus::default();
        let mut k = key("b1", None, None);
        k.usage = None;
        fill(&mut st, &k, p, FIVE_MIN, at("2026-01-01T00:00:00Z"));
        assert_eq!(
            st.last_used,
            Some(LastUsed {
                at: None,
                source: p,
                precision: None
            })
        );
        k.last_used_at = Some(at("2025-12-31T23:59:00Z"));
        fill(&mut st, &k, p, FIVE_MIN, at("2026-01-01T00:05:00Z"));
        assert_eq!(st.last_used_at.as_deref(), Some("2025-12-31T23:59:00Z"));
        assert_eq!(st.last_used.as_ref().unwrap().precision, None);
        // An answer without the field keeps what the listing said.
        k.last_used_at = None;
        fill(&mut st, &k, p, FIVE_MIN, at("2026-01-01T00:10:00Z"));
        assert_eq!(st.last_used_at.as_deref(), Some("2025-12-31T23:59:00Z"));
    }

    #[test]
    fn not_reported_says_so() {
        let mut st = ApiKeyStatus::default();
        let k = key("d1", Some("1"), None);
        fill(
            &mut st,
            &k,
            LastUsedSource::NotReported,
            FIVE_MIN,
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(st.last_used.unwrap().source, LastUsedSource::NotReported);
        assert_eq!(st.last_used_at, None);
    }
}
