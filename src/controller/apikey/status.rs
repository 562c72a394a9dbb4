//! The status of an ApiKey: what a reconcile concludes (pure builders) and the one status write,
//! conditional on the resourceVersion the reconcile read (see [`ServerCopy`]).

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::Value;

use super::super::backends::ResolvedProvider;
use super::super::conditions::{is_ready, set_ready, Readiness};
use super::super::context::{Context, Tracked};
use super::super::reasons::Reason;
use super::super::time::{self, ts};
use super::Failure;
use crate::api::{ApiKey, ApiKeyStatus};
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
pub fn fill_from_key(st: &mut ApiKeyStatus, k: &ProviderKey) {
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
    if k.last_used_at.is_some() {
        st.last_used_at = k.last_used_at.map(ts);
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

/// What one reconcile knows of the server's copy of its ApiKey: the resourceVersion it read or
/// last wrote, and the status it last wrote.
///
/// The controller hands `reconcile` the object from its watch cache, which can lag behind the
/// API server: a reconcile triggered by the Secret watch may run before the ApiKey watch has
/// delivered the status written by the previous reconcile. Writing from such a stale copy would
/// overwrite a newer `keyID` or `pendingCreate` (losing track of a live key), and creating from
/// it would mint a second key for the same ApiKey (invariant 1). So every status write of a
/// reconcile is conditional on this version (409 Conflict otherwise) and advances it.
///
/// The status last written is what the final write of the reconcile must be compared with: a
/// reconcile that wrote the pendingCreate marker and then cleared it again (a refused create)
/// ends with the status it read, yet the server holds the marker.
pub struct ServerCopy(std::sync::Mutex<(Option<String>, Option<ApiKeyStatus>)>);

impl ServerCopy {
    pub fn of(ak: &ApiKey) -> Self {
        ServerCopy(std::sync::Mutex::new((ak.resource_version(), None)))
    }

    fn resource_version(&self) -> Option<String> {
        self.0.lock().unwrap().0.clone()
    }

    fn wrote(&self, resource_version: Option<String>, status: &ApiKeyStatus) {
        *self.0.lock().unwrap() = (resource_version, Some(status.clone()));
    }

    /// Whether the server's status differs from `st`; `read` is the status the reconcile began with.
    pub fn differs(&self, st: &ApiKeyStatus, read: &ApiKeyStatus) -> bool {
        self.0.lock().unwrap().1.as_ref().unwrap_or(read) != st
    }
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
    ctx.wrote_apikey(&super::object_key(ak), written.resource_version());
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
}
