//! Reconciling one ApiKey: resolve its provider, validate, recover an interrupted create, create
//! (or adopt, or push) the key, write the Secret, keep the key's settings in sync, report what
//! the provider knows, and revoke the key when the ApiKey is deleted.
//!
//! Ordering that keeps invariant 1 (a one-time secret is never lost, a key never leaked):
//! 1. status.pendingCreate = {name, startedAt, attempt} is written BEFORE the create call;
//! 2. the key is created; 3. the Secret is written (annotated with the key id);
//! 4. status.keyID is written and pendingCreate cleared.
//!
//! A crash between 2 and 3 leaves pendingCreate set and no Secret for the key: the next reconcile
//! lists the provider's keys, revokes every key of that name created since startedAt, and
//! creates again. A crash between 3 and 4 leaves a Secret naming the new key: the next reconcile
//! keeps that key and revokes any other.
//!
//! The ApiKey a reconcile receives comes from the watch cache and may be older than the server's
//! copy; every status write is therefore conditional on the resourceVersion the reconcile started
//! from (see [`ServerCopy`]), so a stale copy can neither clobber a recorded keyID nor lead to a
//! second create.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::ResourceExt;
use rand::Rng;
use secrecy::SecretString;
use serde_json::Value;
use tracing::Instrument;

use super::context::{Context, ResolveError, ResolvedProvider};
use super::secret::{self, SecretOwnership};
use super::validate::unsupported_fields;
use crate::api::{
    ApiKey, ApiKeyStatus, DeletionPolicy, ImmutableChangePolicy, KeyLocation, PendingCreate,
    PreviousKey, FIELD_MANAGER, FINALIZER,
};
use crate::providers::{self, AdoptMode, Field, KeyScope, KeySettings, ProviderError, ProviderKey};

/// Errors that end a reconcile early (everything a person can act on goes into conditions
/// instead and the reconcile returns Ok).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer error: {0}")]
    Finalizer(String),
}

/// Why a reconcile could not reach Ready.
#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    pub transient: bool,
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
            transient: false,
            retry_after: None,
        }
    }
    fn provider(e: ProviderError) -> Self {
        let retry_after = match &e {
            ProviderError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        Failure {
            reason: e.reason(),
            transient: e.is_transient(),
            message: e.to_string(),
            retry_after,
        }
    }
    fn kube(e: kube::Error) -> Self {
        Failure {
            reason: if is_conflict(&e) {
                STALE
            } else {
                "KubernetesError"
            },
            message: format!("Kubernetes API error: {e}"),
            transient: true,
            retry_after: None,
        }
    }
}

/// Reason of a [`Failure`] caused by a conditional write that found a newer ApiKey (see
/// [`ServerCopy`]): not a condition anyone needs to see.
const STALE: &str = "Conflict";

/// A write refused because the object changed since it was read (not a create that found the
/// object existing, which is also a 409).
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict")
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        Failure::provider(e)
    }
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        Failure::kube(e)
    }
}

impl From<ResolveError> for Failure {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Kube(k) => Failure::kube(k),
            other => Failure::permanent(other.reason(), other.to_string()),
        }
    }
}

/// Entry point for the controller.
pub async fn reconcile(ak: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ak.namespace().unwrap_or_default();
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ns);
    let started = std::time::Instant::now();
    if ak.metadata.deletion_timestamp.is_none() && ak.finalizers().is_empty() {
        // First sight: add the finalizer with a merge patch guarded by resourceVersion (a
        // concurrent writer makes it fail with 409 and the object is reconciled again).
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": ak.resource_version(), "finalizers": [FINALIZER] }
        });
        api.patch(
            &ak.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        ctx.metrics.kube_write("apikeys", "patch");
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let result = finalizer(&api, FINALIZER, ak, |event| async {
        match event {
            FinalizerEvent::Apply(ak) => apply(ak, ctx.clone()).await,
            FinalizerEvent::Cleanup(ak) => cleanup(ak, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .reconcile_time
        .get_or_create(&crate::metrics::ControllerLabels {
            controller: "apikey".into(),
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The error policy: Kubernetes API errors are retried with jittered backoff.
pub fn error_policy(ak: Arc<ApiKey>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(apikey = %format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any()), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            controller: "apikey".into(),
            reason: "KubernetesError".into(),
        })
        .inc();
    Action::requeue(jitter(Duration::from_secs(5)))
}

fn jitter(d: Duration) -> Duration {
    let f = rand::rng().random_range(0.9..1.1);
    d.mul_f64(f)
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How a scope is recorded in the status (`{}` for the provider's only family).
fn location(scope: &KeyScope) -> Option<KeyLocation> {
    Some(KeyLocation {
        family: scope.family.clone(),
        parent: scope.parent.clone(),
    })
}

/// The scope a recorded location names; `fallback` when none was recorded (a status written
/// before keysmith recorded locations: the key lives where the spec says).
fn scope_at(loc: Option<&KeyLocation>, fallback: &KeyScope) -> KeyScope {
    match loc {
        Some(l) => KeyScope {
            family: l.family.clone(),
            parent: l.parent.clone(),
        },
        None => fallback.clone(),
    }
}

/// Where the current key lives.
fn key_scope(st: &ApiKeyStatus, desired: &KeyScope) -> KeyScope {
    scope_at(st.key_scope.as_ref(), desired)
}

/// Create, sync and report.
async fn apply(ak: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any());
    let span = tracing::info_span!("reconcile", apikey = %key);
    let mut st = ak.status.clone().unwrap_or_default();
    let before = st.clone();
    let seen = ServerCopy::of(&ak);
    let outcome = drive(&ak, &ctx, &mut st, &seen).instrument(span).await;
    let (requeue, result_label) = match outcome {
        Ok(ready) => {
            ctx.clear_failures(&key);
            set_ready(
                &mut st,
                ak.metadata.generation,
                true,
                ready.reason,
                ready.message,
            );
            (jitter(ready.requeue), "success")
        }
        Err(f) if f.reason == STALE => {
            // This reconcile worked from a copy older than the server's (nothing was created):
            // the watch delivers the newer object, which is reconciled instead.
            tracing::debug!(apikey = %key, "ApiKey changed since it was read; reconciling the newer version");
            return Ok(Action::requeue(jitter(Duration::from_secs(1))));
        }
        Err(f) => {
            let changed = set_ready(
                &mut st,
                ak.metadata.generation,
                false,
                f.reason,
                f.message.clone(),
            );
            ctx.metrics
                .reconcile_errors
                .get_or_create(&crate::metrics::ErrorLabels {
                    controller: "apikey".into(),
                    reason: f.reason.into(),
                })
                .inc();
            if changed {
                tracing::warn!(apikey = %key, reason = f.reason, message = %f.message, "ApiKey not ready");
                ctx.event(ak.as_ref(), true, f.reason, "Reconcile", f.message.clone())
                    .await;
            }
            let wait = if f.transient {
                let n = ctx.record_failure(&key);
                f.retry_after.unwrap_or_else(|| backoff(n))
            } else {
                // Fixed by an edit (which triggers a reconcile) or by the provider object changing.
                Duration::from_secs(300)
            };
            (jitter(wait), "error")
        }
    };
    st.observed_generation = ak.metadata.generation;
    let expiry = st
        .expires_at
        .as_deref()
        .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
        .map(|e| e.timestamp());
    let ready_now = st
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ctx.track(
        &key,
        Some((
            st.provider_type.clone().unwrap_or_else(|| "unknown".into()),
            ready_now,
            expiry,
        )),
    );
    if seen.differs(&st, &before) {
        match write_status(&ctx, &ak, &st, &seen).await {
            Ok(()) => {}
            Err(e) if is_conflict(&e) => {
                // As above: what this reconcile concluded from a stale copy is dropped.
                tracing::debug!(apikey = %key, "ApiKey changed since it was read; reconciling the newer version");
                return Ok(Action::requeue(jitter(Duration::from_secs(1))));
            }
            Err(e) => return Err(e.into()),
        }
    }
    ctx.metrics
        .reconcile_total
        .get_or_create(&crate::metrics::ReconcileLabels {
            controller: "apikey".into(),
            result: result_label.into(),
        })
        .inc();
    Ok(Action::requeue(requeue))
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
}

/// What a successful reconcile reports.
struct Ready {
    reason: &'static str,
    message: String,
    requeue: Duration,
}

/// Set the Ready condition; returns whether it changed (status, reason or message).
fn set_ready(
    st: &mut ApiKeyStatus,
    generation: Option<i64>,
    ok: bool,
    reason: &str,
    message: String,
) -> bool {
    let status = if ok { "True" } else { "False" };
    let prev = st.conditions.iter().find(|c| c.type_ == "Ready").cloned();
    if let Some(p) = &prev {
        if p.status == status
            && p.reason == reason
            && p.message == message
            && p.observed_generation == generation
        {
            return false;
        }
    }
    let changed = prev
        .as_ref()
        .is_none_or(|p| p.status != status || p.reason != reason || p.message != message);
    let transition = match &prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    st.conditions.retain(|c| c.type_ != "Ready");
    st.conditions.push(Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    });
    changed
}

/// Every field of ApiKeyStatus, from its schema (so a new field is never forgotten).
fn status_fields() -> &'static [String] {
    static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        let schema =
            serde_json::to_value(schemars::schema_for!(ApiKeyStatus)).expect("schema serializes");
        schema["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
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
    fn differs(&self, st: &ApiKeyStatus, read: &ApiKeyStatus) -> bool {
        self.0.lock().unwrap().1.as_ref().unwrap_or(read) != st
    }
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
    let mut new = serde_json::to_value(after).expect("status serializes");
    if let Value::Object(m) = &mut new {
        for k in status_fields() {
            m.entry(k.clone()).or_insert(Value::Null);
        }
    }
    let mut patch = serde_json::json!({ "status": new });
    if let Some(rv) = seen.resource_version() {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    let written = api
        .patch_status(
            &ak.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    seen.wrote(written.resource_version(), after);
    ctx.metrics.kube_write("apikeys/status", "patch");
    Ok(())
}

/// The desired settings of the key.
fn settings_for(ak: &ApiKey, st: &ApiKeyStatus) -> Result<KeySettings, Failure> {
    let anchor = st
        .created_at
        .as_deref()
        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
        .map(|c| c.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let mut s = KeySettings::from_spec(&ak.spec, ak.display_name(), anchor)
        .map_err(|m| Failure::permanent("InvalidSpec", m))?;
    s.uid = ak.uid().unwrap_or_default();
    Ok(s)
}

/// Everything between "resolve the provider" and "the Secret holds a live key".
async fn drive(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    seen: &ServerCopy,
) -> Result<Ready, Failure> {
    let p = ctx.resolve(ak).await?;
    st.provider_type = Some(p.provider_type.to_string());
    let result = drive_with(ak, ctx, st, &p, seen).await;
    if let Err(f) = &result {
        if f.reason == "ProviderAuthFailed" {
            // Credentials may have been rotated: read them again next time.
            ctx.forget_backend(&p.id);
        }
    }
    result
}

async fn drive_with(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    p: &ResolvedProvider,
    seen: &ServerCopy,
) -> Result<Ready, Failure> {
    let caps = p.backend.capabilities().clone();
    let bad = unsupported_fields(ak, p.provider_type, &caps);
    if !bad.is_empty() {
        return Err(Failure::permanent(
            "UnsupportedField",
            format!(
                "{} cannot honour {}; remove or change them",
                p.provider_type,
                bad.join(", ")
            ),
        ));
    }
    secret::check_template(ak).map_err(|m| Failure::permanent("InvalidSpec", m))?;
    let settings = settings_for(ak, st)?;
    let problems = p.backend.validate(&settings);
    if !problems.is_empty() {
        return Err(Failure::permanent("InvalidSpec", problems.join("; ")));
    }
    let scope = p.backend.scope(&settings);
    let ns = ak.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    retire_previous(ak, ctx, st, p, &scope).await?;

    if ak.spec.source.is_some() {
        return push(ak, ctx, st, p, &settings).await;
    }

    let secret_name = ak.secret_name();
    let existing = secrets.get_opt(&secret_name).await?;
    if let Some(s) = &existing {
        if let SecretOwnership::Foreign(who) = secret::ownership(ak, s) {
            return Err(Failure::permanent(
                "SecretConflict",
                format!(
                    "Secret {ns}/{secret_name} exists and {who}; keysmith will not overwrite it. Delete it, set spec.secret.name to another name, or annotate it keysmith.dev/allow-overwrite=true"
                ),
            ));
        }
    }
    st.secret_name = Some(secret_name.clone());

    if let Some(pending) = st.pending_create.clone() {
        recover(ak, ctx, st, p, &scope, &pending, existing.as_ref()).await?;
        write_status(ctx, ak, st, seen).await?;
    }

    let Some(id) = st.key_id.clone() else {
        if let Some(id) = &settings.key_ref {
            return adopt(ak, ctx, st, p, &scope, id, existing.as_ref()).await;
        }
        return create_key(
            ak,
            ctx,
            st,
            p,
            &scope,
            &settings,
            existing.as_ref(),
            None,
            seen,
        )
        .await;
    };
    // The key is read, updated and revoked where it lives, which a spec edit (another agent,
    // workspace…) does not change: that is a difference only a new key resolves.
    let at = key_scope(st, &scope);

    // What the provider knows about the key: a fresh GET after a spec change, otherwise the
    // shared listing (one paged listing per provider object and refresh interval).
    let spec_changed = st.observed_generation != ak.metadata.generation;
    let current = observe(ctx, p, &at, &id, spec_changed).await?;
    let current = match current {
        Some(k) if k.active => k,
        _ => {
            ctx.event(
                ak,
                true,
                "KeyMissing",
                "Recreate",
                format!(
                    "key {id} no longer exists (or was revoked) at {}",
                    p.provider_type
                ),
            )
            .await;
            if settings.key_ref.is_some() {
                return Err(Failure::permanent(
                    "ProviderNotFound",
                    format!(
                        "the adopted key {id} no longer exists at {}",
                        p.provider_type
                    ),
                ));
            }
            st.key_id = None;
            return create_key(
                ak,
                ctx,
                st,
                p,
                &scope,
                &settings,
                existing.as_ref(),
                None,
                seen,
            )
            .await;
        }
    };
    fill_from_key(st, &current);
    st.key_scope = location(&at);

    // The Secret must hold this key's value.
    let held = existing
        .as_ref()
        .filter(|s| secret::key_id_of(s).as_deref() == Some(id.as_str()))
        .and_then(|s| secret::value_of(ak, s));
    let value = match held {
        Some(v) => v,
        None => {
            // Providers that return the plaintext give it back; otherwise the value is lost.
            let restored = if caps.secret_readable {
                p.backend.get(&at, &id).await?.secret
            } else {
                None
            };
            match restored {
                Some(v) => {
                    ctx.event(
                        ak,
                        false,
                        "SecretRestored",
                        "Restore",
                        format!(
                            "Secret {secret_name} restored from the provider's copy of key {id}"
                        ),
                    )
                    .await;
                    v
                }
                None => {
                    return replace_or_readopt(
                        ak,
                        ctx,
                        st,
                        p,
                        &scope,
                        &at,
                        &settings,
                        existing.as_ref(),
                        &id,
                        seen,
                    )
                    .await
                }
            }
        }
    };

    // Keep the key's settings in sync.
    let drifted = providers::drift(p.backend.as_ref(), &current, &settings);
    let (mutable, immutable): (Vec<Field>, Vec<Field>) =
        drifted.into_iter().partition(|f| caps.can_update(*f));
    if !mutable.is_empty() {
        let updated = p.backend.update(&at, &id, &settings, &mutable).await?;
        fill_from_key(st, &updated);
        ctx.remember(p, &at, &updated).await;
        let fields: Vec<String> = mutable.iter().map(|f| field_path(*f, p)).collect();
        ctx.event(
            ak,
            false,
            "KeyUpdated",
            "Update",
            format!("updated {} at {}", fields.join(", "), p.provider_type),
        )
        .await;
    }
    if !immutable.is_empty()
        && ak.spec.on_immutable_change == ImmutableChangePolicy::Replace
        && settings.key_ref.is_none()
    {
        return create_key(
            ak,
            ctx,
            st,
            p,
            &scope,
            &settings,
            existing.as_ref(),
            Some((id, at)),
            seen,
        )
        .await;
    }
    st.fields_needing_new_key = immutable.iter().map(|f| field_path(*f, p)).collect();

    ensure_secret(
        ctx,
        ak,
        existing.as_ref(),
        &value,
        &id,
        st.key_hint.as_deref().unwrap_or(""),
    )
    .await?;

    if st.fields_needing_new_key.is_empty() {
        Ok(Ready {
            reason: "KeyActive",
            message: active_message(p, st, &secret_name),
            requeue: p.refresh_interval,
        })
    } else {
        Ok(Ready {
            reason: "NewKeyNeeded",
            message: format!(
                "{} cannot change {} on an existing key; the current key stays active. Set spec.onImmutableChange: Replace to get a new key automatically, or rotate it",
                p.provider_type,
                st.fields_needing_new_key.join(", ")
            ),
            requeue: p.refresh_interval,
        })
    }
}

/// A field as a person finds it in the manifest (`spec.digitalocean`, not `spec.<provider block>`).
fn field_path(f: Field, p: &ResolvedProvider) -> String {
    match f {
        Field::Extras => format!("spec.{}", p.provider_type),
        other => other.path().to_string(),
    }
}

fn active_message(p: &ResolvedProvider, st: &ApiKeyStatus, secret_name: &str) -> String {
    format!(
        "key {} is live at {}; its value is in Secret {secret_name}",
        st.key_hint
            .as_deref()
            .or(st.key_id.as_deref())
            .unwrap_or("?"),
        p.provider_type
    )
}

/// The key as the provider reports it; `None` when it does not exist.
async fn observe(
    ctx: &Context,
    p: &ResolvedProvider,
    scope: &KeyScope,
    id: &str,
    fresh: bool,
) -> Result<Option<ProviderKey>, ProviderError> {
    if !fresh {
        let slot = ctx.listing(p, scope, p.refresh_interval).await?;
        let found = slot.lock().await.keys.get(id).cloned();
        if found.is_some() {
            return Ok(found);
        }
        // Not in the listing: it may postdate it. Ask once before concluding it is gone.
    }
    match p.backend.get(scope, id).await {
        Ok(mut k) => {
            k.secret = None;
            ctx.remember(p, scope, &k).await;
            Ok(Some(k))
        }
        Err(ProviderError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copy what the provider reports into the status.
fn fill_from_key(st: &mut ApiKeyStatus, k: &ProviderKey) {
    st.key_id = Some(k.id.clone());
    if k.hint.is_some() {
        st.key_hint = k.hint.clone();
    }
    if let Some(c) = &k.created_at {
        st.created_at = Some(ts(c));
    }
    if let Some(e) = &k.observed.expires_at {
        st.expires_at = e.as_ref().map(ts);
    }
    if let Some(e) = &k.expires_at {
        st.expires_at = Some(ts(e));
    }
    if k.last_used_at.is_some() {
        st.last_used_at = k.last_used_at.as_ref().map(ts);
    }
    if k.usage.is_some() {
        st.usage = k.usage.clone();
    }
}

/// Create a key in `scope` (a replacement of `replacing`, a key id and where it lives, if given)
/// and deliver its value.
#[allow(clippy::too_many_arguments)]
async fn create_key(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    p: &ResolvedProvider,
    scope: &KeyScope,
    settings: &KeySettings,
    existing: Option<&Secret>,
    replacing: Option<(String, KeyScope)>,
    seen: &ServerCopy,
) -> Result<Ready, Failure> {
    if let Some((wait, message)) = ctx.creates_held(&p.id) {
        // The provider asked to wait (429 + Retry-After). Writing the marker anyway would be a
        // watch event that reconciles this ApiKey again at once, ignoring the requeue: a loop of
        // creates and status writes for as long as the provider keeps answering 429.
        return Err(Failure {
            reason: "RateLimited",
            message,
            transient: true,
            retry_after: Some(wait),
        });
    }
    let attempt = crate::emulators::random_hex(16);
    let mut marked = st.clone();
    marked.pending_create = Some(PendingCreate {
        name: settings.name.clone(),
        started_at: now_rfc3339(),
        attempt: attempt.clone(),
    });
    // Invariant 1: the marker is durable before the provider is asked to create anything. The
    // write is conditional (ServerCopy): a reconcile working from a stale copy, which may not
    // show a key created moments ago, stops here instead of creating a second one.
    write_status(ctx, ak, &marked, seen).await?;
    *st = marked;

    let mut settings = settings.clone();
    settings.attempt = Some(attempt);
    settings.expires_at = match (&ak.spec.ttl, &ak.spec.expires_at) {
        (Some(ttl), None) => {
            let d =
                providers::parse_duration(ttl).map_err(|m| Failure::permanent("InvalidSpec", m))?;
            Some(Utc::now() + chrono::Duration::from_std(d).unwrap_or_default())
        }
        _ => settings.expires_at,
    };
    let created = match p.backend.create(&settings).await {
        Ok(c) => c,
        Err(e) => {
            if let ProviderError::RateLimited {
                retry_after: Some(wait),
            } = &e
            {
                ctx.hold_creates(&p.id, *wait, e.to_string());
            }
            let may_have_created = matches!(
                e,
                ProviderError::Unavailable(_) | ProviderError::Malformed(_)
            );
            if !may_have_created {
                // A definite refusal, or a 429 (the provider did not act on it): nothing was
                // created, so nothing to recover. Leaving the marker would make the next
                // reconcile list every key of the provider, for each rate-limited create.
                st.pending_create = None;
            }
            return Err(e.into());
        }
    };
    ctx.metrics.keys_created.get_or_create(&label(p)).inc();
    if ctx.fault_crash_after_create() {
        // Test hook: behave as if the process died right here.
        return Err(Failure::permanent(
            "Crashed",
            "simulated crash after create",
        ));
    }
    let id = created.key.id.clone();
    let mut hinted = st.clone();
    fill_from_key(&mut hinted, &created.key);
    if let Err(e) = ensure_secret(
        ctx,
        ak,
        existing,
        &created.secret,
        &id,
        hinted.key_hint.as_deref().unwrap_or(""),
    )
    .await
    {
        // The value cannot be delivered: revoke the key rather than leave it unaccounted for.
        // If even that fails, pendingCreate stays set and the next reconcile recovers.
        if matches!(
            p.backend.revoke(scope, &id).await,
            Ok(()) | Err(ProviderError::NotFound(_))
        ) {
            st.pending_create = None;
        }
        return Err(Failure::kube(e));
    }
    *st = hinted;
    st.pending_create = None;
    st.fields_needing_new_key.clear();
    st.key_scope = location(scope);
    ctx.remember(p, scope, &created.key).await;
    let secret_name = ak.secret_name();
    match replacing {
        Some((old, old_scope)) => {
            // The Secret holds the new key: the old one must go. If the provider refuses now,
            // the status keeps it in previousKeys and later reconciles (or deletion) revoke it.
            if let Err(e) = revoke_quietly(ctx, p, &old_scope, &old).await {
                st.previous_keys.push(PreviousKey {
                    key_id: old.clone(),
                    delete_after: now_rfc3339(),
                    scope: location(&old_scope),
                });
                return Err(e.into());
            }
            ctx.event(
                ak,
                false,
                "KeyReplaced",
                "Create",
                format!("created key {id} at {} and revoked {old}", p.provider_type),
            )
            .await;
        }
        None => {
            ctx.event(
                ak,
                false,
                "KeyCreated",
                "Create",
                format!(
                    "created key {id} at {}; value written to Secret {secret_name}",
                    p.provider_type
                ),
            )
            .await;
        }
    }
    Ok(Ready {
        reason: "KeyActive",
        message: active_message(p, st, &secret_name),
        requeue: p.refresh_interval,
    })
}

/// The Secret lost the value of key `id`: adopted keys are re-adopted, minted ones replaced.
/// `scope`: where a new key goes; `at`: where key `id` lives.
#[allow(clippy::too_many_arguments)]
async fn replace_or_readopt(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    p: &ResolvedProvider,
    scope: &KeyScope,
    at: &KeyScope,
    settings: &KeySettings,
    existing: Option<&Secret>,
    id: &str,
    seen: &ServerCopy,
) -> Result<Ready, Failure> {
    ctx.event(ak, true, "SecretLost", "Recreate", format!("Secret {} no longer holds the value of key {id}; the value cannot be read back from {}", ak.secret_name(), p.provider_type)).await;
    if settings.key_ref.is_some() {
        st.key_id = None;
        return adopt(ak, ctx, st, p, at, id, existing).await;
    }
    create_key(
        ak,
        ctx,
        st,
        p,
        scope,
        settings,
        existing,
        Some((id.to_string(), at.clone())),
        seen,
    )
    .await
}

fn label(p: &ResolvedProvider) -> crate::metrics::ProviderLabel {
    crate::metrics::ProviderLabel {
        provider: p.provider_type.to_string(),
    }
}

/// Revoke a key, treating "already gone" as done.
async fn revoke_quietly(
    ctx: &Context,
    p: &ResolvedProvider,
    scope: &KeyScope,
    id: &str,
) -> Result<(), ProviderError> {
    match p.backend.revoke(scope, id).await {
        Ok(()) => {
            ctx.metrics.keys_revoked.get_or_create(&label(p)).inc();
        }
        Err(ProviderError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    ctx.forget_key(p, scope, id).await;
    Ok(())
}

/// Revoke the replaced keys that are due (`status.previousKeys`); those the provider refuses now
/// stay listed and the reconcile fails with the provider's error, to be retried.
async fn retire_previous(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    p: &ResolvedProvider,
    scope: &KeyScope,
) -> Result<(), Failure> {
    if st.previous_keys.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let mut keep = Vec::new();
    let mut failed = None;
    for prev in std::mem::take(&mut st.previous_keys) {
        let due = DateTime::parse_from_rfc3339(&prev.delete_after).map_or(true, |t| t <= now);
        if !due || failed.is_some() {
            keep.push(prev);
            continue;
        }
        let at = scope_at(prev.scope.as_ref(), scope);
        match revoke_quietly(ctx, p, &at, &prev.key_id).await {
            Ok(()) => {
                ctx.event(
                    ak,
                    false,
                    "KeyRevoked",
                    "Replace",
                    format!(
                        "revoked replaced key {} at {}",
                        prev.key_id, p.provider_type
                    ),
                )
                .await
            }
            Err(e) => {
                failed = Some(e);
                keep.push(prev);
            }
        }
    }
    st.previous_keys = keep;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Finish an interrupted create (see the module doc).
#[allow(clippy::too_many_arguments)]
async fn recover(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    p: &ResolvedProvider,
    scope: &KeyScope,
    pending: &PendingCreate,
    existing: Option<&Secret>,
) -> Result<(), Failure> {
    let delivered = existing
        .filter(|s| secret::ownership(ak, s) == SecretOwnership::Ours)
        .filter(|s| secret::value_of(ak, s).is_some())
        .and_then(secret::key_id_of)
        .filter(|id| Some(id) != st.key_id.as_ref());
    let since = DateTime::parse_from_rfc3339(&pending.started_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
        - chrono::Duration::minutes(5);
    // A fresh listing: the snapshot may predate the interrupted create.
    let slot = ctx.listing(p, scope, Duration::ZERO).await?;
    let candidates: Vec<String> = slot
        .lock()
        .await
        .keys
        .values()
        .filter(|k| k.active && k.name == pending.name)
        .filter(|k| Some(&k.id) != st.key_id.as_ref() && Some(&k.id) != delivered.as_ref())
        .filter(|k| k.created_at.is_none_or(|c| c >= since))
        .filter(|k| k.attempt.as_ref().is_none_or(|a| a == &pending.attempt))
        .map(|k| k.id.clone())
        .collect();
    for id in candidates {
        revoke_quietly(ctx, p, scope, &id).await?;
        ctx.metrics.orphans_revoked.get_or_create(&label(p)).inc();
        ctx.event(ak, true, "OrphanRevoked", "Recover", format!("revoked key {id}: created by an interrupted attempt whose value never reached the Secret")).await;
    }
    if let Some(new) = delivered {
        // The Secret already holds the new key: keep it; a key it superseded is revoked.
        if let Some(old) = st.key_id.take() {
            let old_scope = key_scope(st, scope);
            if let Err(e) = revoke_quietly(ctx, p, &old_scope, &old).await {
                st.key_id = Some(old);
                return Err(e.into());
            }
        }
        st.key_id = Some(new);
        st.key_scope = location(scope);
    } else {
        // The interrupted create may still be on its way: a request sent just before the
        // process died can be handled by the provider after the listing above. Only once it can
        // no longer arrive (the client timeout, plus a margin) is the attempt concluded.
        let started = DateTime::parse_from_rfc3339(&pending.started_at)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        let settle = started
            + chrono::Duration::from_std(ctx.client_options.timeout + Duration::from_secs(5))
                .unwrap_or_default();
        if let Ok(wait) = (settle - Utc::now()).to_std() {
            if !wait.is_zero() {
                return Err(Failure {
                    reason: "RecoveringCreate",
                    message: format!(
                        "an interrupted create may still reach {}; keysmith looks for its key again at {} before creating a new one",
                        p.provider_type,
                        ts(&settle)
                    ),
                    transient: true,
                    retry_after: Some(wait),
                });
            }
        }
    }
    st.pending_create = None;
    Ok(())
}

/// Take over an existing key (`spec.keyRef`).
async fn adopt(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    p: &ResolvedProvider,
    scope: &KeyScope,
    id: &str,
    existing: Option<&Secret>,
) -> Result<Ready, Failure> {
    let caps = p.backend.capabilities().clone();
    let key = match p.backend.get(scope, id).await {
        Ok(k) => k,
        Err(ProviderError::NotFound(_)) => {
            return Err(Failure::permanent(
                "ProviderNotFound",
                format!("spec.keyRef.id {id} does not exist at {}", p.provider_type),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let held = existing
        .filter(|s| secret::key_id_of(s).as_deref() == Some(id))
        .and_then(|s| secret::value_of(ak, s));
    let (value, key) = match (held, caps.adopt) {
        (Some(v), _) => (v, key),
        (None, AdoptMode::ReadBack) => match key.secret.clone() {
            Some(v) => (v, key),
            None => {
                return Err(Failure::permanent(
                    "ProviderRejected",
                    format!("{} did not return a value for key {id}", p.provider_type),
                ))
            }
        },
        (None, AdoptMode::Regenerate) => {
            let created = p.backend.regenerate(scope, id).await?;
            ctx.event(
                ak,
                true,
                "KeyRegenerated",
                "Adopt",
                format!("regenerated key {id} at {} to obtain its value: the previous value stopped working", p.provider_type),
            )
            .await;
            (created.secret, created.key)
        }
        (None, AdoptMode::No) => {
            return Err(Failure::permanent(
                "UnsupportedField",
                format!("{} cannot adopt existing keys", p.provider_type),
            ))
        }
    };
    fill_from_key(st, &key);
    st.key_id = Some(id.to_string());
    st.key_scope = location(scope);
    ensure_secret(
        ctx,
        ak,
        existing,
        &value,
        id,
        st.key_hint.as_deref().unwrap_or(""),
    )
    .await?;
    ctx.event(
        ak,
        false,
        "KeyAdopted",
        "Adopt",
        format!("adopted key {id} at {}", p.provider_type),
    )
    .await;
    let secret_name = ak.secret_name();
    Ok(Ready {
        reason: "KeyActive",
        message: active_message(p, st, &secret_name),
        requeue: p.refresh_interval,
    })
}

/// Push a user-owned value (`spec.source`) to the provider.
async fn push(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    p: &ResolvedProvider,
    settings: &KeySettings,
) -> Result<Ready, Failure> {
    let src = &ak
        .spec
        .source
        .as_ref()
        .expect("push is called with a source")
        .secret_ref;
    let ns = ak.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&src.name)
        .await?
        .ok_or_else(|| {
            Failure::permanent(
                "SourceNotFound",
                format!(
                    "spec.source.secretRef: Secret {ns}/{} does not exist",
                    src.name
                ),
            )
        })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&src.key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
        .ok_or_else(|| {
            Failure::permanent(
                "SourceNotFound",
                format!(
                    "Secret {ns}/{} has no non-empty key {:?}",
                    src.name, src.key
                ),
            )
        })?;
    let version = secret.resource_version();
    let scope = p.backend.scope(settings);
    let before = st.key_id.clone().map(|id| (id, key_scope(st, &scope)));
    // The spec names another place (e.g. another upstream provider): a new key is pushed there
    // and the old one revoked.
    let moved = before.as_ref().is_some_and(|(_, at)| at != &scope);
    let mut needs_push = st.key_id.is_none() || st.source_version != version || moved;
    if let Some(id) = st.key_id.clone().filter(|_| !moved) {
        let spec_changed = st.observed_generation != ak.metadata.generation;
        match observe(ctx, p, &scope, &id, spec_changed).await? {
            Some(current) => {
                fill_from_key(st, &current);
                if !providers::drift(p.backend.as_ref(), &current, settings).is_empty() {
                    needs_push = true;
                }
            }
            None => needs_push = true,
        }
    }
    st.secret_name = None;
    if needs_push {
        let existing = st.key_id.as_deref().filter(|_| !moved);
        let key = p.backend.push(settings, &value, existing).await?;
        let first = st.key_id.is_none();
        fill_from_key(st, &key);
        st.source_version = version;
        st.key_scope = location(&scope);
        ctx.remember(p, &scope, &key).await;
        if let Some((old, old_scope)) = before.filter(|(old, at)| old != &key.id || at != &scope) {
            // The value now lives in another key (e.g. another upstream provider): the old one
            // is revoked, now or by a later reconcile.
            st.previous_keys.push(PreviousKey {
                key_id: old,
                delete_after: now_rfc3339(),
                scope: location(&old_scope),
            });
        }
        let what = if first { "registered" } else { "updated" };
        ctx.event(
            ak,
            false,
            "KeyPushed",
            "Push",
            format!(
                "{what} key {} at {} from Secret {}",
                key.id, p.provider_type, src.name
            ),
        )
        .await;
        retire_previous(ak, ctx, st, p, &scope).await?;
    }
    Ok(Ready {
        reason: "KeyActive",
        message: format!(
            "key {} at {} holds the value of Secret {}",
            st.key_id.as_deref().unwrap_or("?"),
            p.provider_type,
            src.name
        ),
        requeue: p.refresh_interval,
    })
}

/// Write the Secret unless it already holds exactly this.
async fn ensure_secret(
    ctx: &Context,
    ak: &ApiKey,
    existing: Option<&Secret>,
    value: &SecretString,
    key_id: &str,
    hint: &str,
) -> Result<(), kube::Error> {
    let desired = match secret::render_secret(ak, value, key_id, hint) {
        Ok(s) => s,
        // Templates were checked before any call; a failure here is a bug, not user input.
        Err(m) => panic!("secret template failed after validation: {m}"),
    };
    if existing.is_some_and(|e| secret::is_up_to_date(e, &desired)) {
        return Ok(());
    }
    let ns = ak.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = ak.secret_name();
    if let Some(e) = existing {
        if e.type_ != desired.type_ {
            // A Secret's type is immutable: replace the object.
            api.delete(&name, &DeleteParams::default()).await?;
            ctx.metrics.kube_write("secrets", "delete");
            api.create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &desired,
            )
            .await?;
            ctx.metrics.kube_write("secrets", "create");
            return Ok(());
        }
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let res = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await;
        match res {
            Ok(_) => {
                ctx.metrics.kube_write("secrets", "apply");
                return Ok(());
            }
            Err(e) if attempts < 3 => {
                tracing::debug!(error = %e, "secret write failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Deletion: revoke at the provider (or orphan), then let the finalizer go.
async fn cleanup(ak: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let st = ak.status.clone().unwrap_or_default();
    let ns = ak.namespace().unwrap_or_default();
    if ak.spec.deletion_policy == DeletionPolicy::Orphan {
        // Keep the Secret: drop its owner reference so garbage collection leaves it.
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(s) = secrets.get_opt(&ak.secret_name()).await? {
            if secret::ownership(&ak, &s) == SecretOwnership::Ours
                && !s.owner_references().is_empty()
            {
                let keep: Vec<_> = s
                    .owner_references()
                    .iter()
                    .filter(|o| Some(&o.uid) != ak.uid().as_ref())
                    .cloned()
                    .collect();
                secrets
                    .patch(
                        &ak.secret_name(),
                        &PatchParams::default(),
                        &Patch::Merge(
                            serde_json::json!({ "metadata": { "ownerReferences": keep } }),
                        ),
                    )
                    .await?;
                ctx.metrics.kube_write("secrets", "patch");
            }
        }
        if let Some(id) = &st.key_id {
            ctx.event(
                ak.as_ref(),
                false,
                "KeyOrphaned",
                "Delete",
                format!("left key {id} at the provider (deletionPolicy: Orphan)"),
            )
            .await;
        }
        ctx.track(&format!("{ns}/{}", ak.name_any()), None);
        return Ok(Action::await_change());
    }
    let mut st2 = st.clone();
    let result: Result<(), Failure> = async {
        let p = ctx.resolve(&ak).await?;
        let settings = settings_for(&ak, &st)?;
        let scope = p.backend.scope(&settings);
        if let Some(pending) = &st.pending_create {
            let existing = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&ak.secret_name())
                .await?;
            recover(&ak, &ctx, &mut st2, &p, &scope, pending, existing.as_ref()).await?;
        }
        // Replaced keys still waiting for their revoke go now, whatever their grace period.
        let now = now_rfc3339();
        for prev in &mut st2.previous_keys {
            prev.delete_after = now.clone();
        }
        retire_previous(&ak, &ctx, &mut st2, &p, &scope).await?;
        if let Some(id) = &st2.key_id {
            revoke_quietly(&ctx, &p, &key_scope(&st2, &scope), id).await?;
            ctx.event(
                ak.as_ref(),
                false,
                "KeyRevoked",
                "Delete",
                format!("revoked key {id} at {}", p.provider_type),
            )
            .await;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            ctx.track(&format!("{ns}/{}", ak.name_any()), None);
            Ok(Action::await_change())
        }
        Err(f) => {
            let mut after = st2.clone();
            let msg = format!(
                "cannot revoke the key, so the ApiKey stays until it can: {}. To delete it without revoking, set spec.deletionPolicy: Orphan",
                f.message
            );
            if set_ready(
                &mut after,
                ak.metadata.generation,
                false,
                f.reason,
                msg.clone(),
            ) {
                ctx.event(ak.as_ref(), true, f.reason, "Delete", msg).await;
            }
            if after != st {
                write_status(&ctx, &ak, &after, &ServerCopy::of(&ak)).await?;
            }
            // Err keeps the finalizer; the error policy retries.
            Err(Error::Finalizer(format!("revoke failed: {}", f.reason)))
        }
    }
}
