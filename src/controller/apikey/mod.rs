//! Reconciling one ApiKey: resolve its provider, validate, recover an interrupted create, create
//! (or adopt, or push) the key, write the Secret, keep the key's settings in sync, report what
//! the provider knows, and revoke the key when the ApiKey is deleted.
//!
//! Ordering that keeps invariant 1 (a one-time secret is never lost, a key never leaked):
//! 0. the Secret write is checked (locally, then a server-side dry run) and failed creates back
//!    off in status.createBackoff; 1. status.pendingCreate = {name, startedAt, attempt, scope}
//!    is written BEFORE the create call; 2. the key is created; 3. the Secret is written
//!    (annotated with the key id); 4. status.keyID is written and pendingCreate cleared;
//!    5. a key created under its provisional name gets its display name.
//!
//! A crash between 2 and 3 leaves pendingCreate set and no Secret for the key: the next reconcile
//! lists the provider's keys where the marker says, revokes the keys of that attempt no other
//! ApiKey holds (docs/crash-safety.md), and creates again. A crash between 3 and 4 leaves a
//! Secret naming the new key: the next reconcile keeps that key, but only once the provider's
//! listing proves the attempt made it (the Secret's annotation is tenant-writable, so it is a
//! claim, never a proof: `others::proves_delivery`), and revokes any other.
//!
//! The ApiKey a reconcile receives comes from the watch cache and may be older than the server's
//! copy; every status write is therefore conditional on the resourceVersion the reconcile started
//! from (see [`ServerCopy`]), so a stale copy can neither clobber a recorded keyID nor lead to a
//! second create.
//!
//! The steps, one module each, in the order a reconcile runs them (their imports run one way:
//! no module here imports one that imports it back):
//!
//! 1. resolve the provider object (`Context::resolve`);
//! 2. [`validate`] (pure): the spec against the provider, giving the settings and the scope;
//! 3. [`revoke`]: replaced keys whose grace period ended;
//! 4. [`dereference`]: the target Secret (the [`Step`] of this reconcile is built here, once);
//! 5. [`push`] for `spec.source`, and nothing below but [`rollout`];
//! 6. [`recover`] an interrupted create (`status.pendingCreate`), the status written at once;
//! 7. without a key: [`adopt`] (`spec.keyRef`) or [`create`];
//! 8. with one: [`rotate`] when a rotation is due, else [`sync`] (which may [`restore`] a lost
//!    value, re-adopt, take a value rotated [`outside`] keysmith, or [`create`] a replacement);
//! 9. [`rollout`] after every success: restarts, the grace period's start, `nextRotationAt`;
//! 10. [`status`]: the Ready condition (pure) and the one guarded write; then a key created under
//!     its provisional name gets its display name ([`attempt::rename_after_write`]).
//!
//! Shared by the steps, importing no step: [`step`] (the [`Reconciler`] handles, the [`Step`],
//! the [`ServerCopy`]), [`scope`] (where a key lives), [`attempt`] (provisional name, marker), [`others`]
//! (what other ApiKeys hold: the guard against takeover), [`deliver`] (the Secret write).
//! [`carry`] holds `spec.limit` across key generations for the steps that replace a key (its
//! arithmetic is pure, in `controller::limits`). [`delete`] is the finalizer's cleanup, all of it: it recovers an interrupted create and revokes
//! with the steps above, and releases the provider object (`inuse`).

pub mod adopt;
pub mod alerts;
pub mod attempt;
#[cfg(test)]
mod branches;
pub mod carry;
pub mod create;
pub mod delete;
pub mod deliver;
pub mod dereference;
pub mod others;
pub mod outside;
pub mod push;
pub mod recover;
pub mod restore;
pub mod revoke;
pub mod rollout;
pub mod rotate;
pub mod scope;
pub mod status;
pub mod step;
pub mod sync;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::ResourceExt;
use rand::Rng;
use tracing::Instrument;

use super::context::Context;
use super::reasons::Reason;
use crate::api::{ApiKey, ApiKeyStatus, FINALIZER};
use crate::metrics::{ControllerLabels, ErrorLabels, ReconcileLabels};

pub use super::error::{Error, Failure};
pub use scope::{key_scope, location, scope_at, LocatedKey};
pub(crate) use status::{write_status, Ready};
pub(crate) use step::object_key;
pub use step::ServerCopy;
pub use step::{Reconciler, Step};
pub use validate::ValidatedApiKey;

/// Entry point for the controller.
pub async fn reconcile(ak: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ak.namespace().unwrap_or_default();
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ns);
    let started = std::time::Instant::now();
    // The watch cache may be behind this process's own last write (issue 11).
    let Some(ak) = ctx.write_log.current_copy(&ctx.client, ak).await? else {
        return Ok(Action::await_change());
    };
    if ak.metadata.deletion_timestamp.is_none() && ak.finalizers().is_empty() {
        // First sight: add the finalizer with a merge patch guarded by resourceVersion (a
        // concurrent writer makes it fail with 409 and the object is reconciled again).
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": ak.resource_version(), "finalizers": [FINALIZER] }
        });
        let written = api
            .patch(
                &ak.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        ctx.write_log
            .wrote(&object_key(&ak), written.resource_version());
        ctx.metrics.kube_write("apikeys", "patch");
        count_reconcile(&ctx, "requeue");
        // The watch event of this patch reconciles the ApiKey next (the predicate passes a
        // finalizer change); a short requeue would add a reconcile whenever the event comes
        // later than it. This one is only the fallback.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if ak.metadata.deletion_timestamp.is_some() {
        ctx.metrics.track_rotation(&object_key(&ak), None);
    }
    let result = finalizer(&api, FINALIZER, ak, |event| async {
        match event {
            FinalizerEvent::Apply(ak) => apply(ak, ctx.clone()).await,
            FinalizerEvent::Cleanup(ak) => delete::cleanup(ak, ctx.clone()).await,
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
        .get_or_create(&ControllerLabels {
            controller: "apikey".into(),
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The error policy: errors are counted by category and retried with jittered backoff.
pub fn error_policy(ak: Arc<ApiKey>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(apikey = %object_key(&ak), category = err.category(), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: "apikey".into(),
            reason: err.category().into(),
        })
        .inc();
    Action::requeue(jitter(Duration::from_secs(5)))
}

fn jitter(d: Duration) -> Duration {
    let f = rand::rng().random_range(0.9..1.1);
    d.mul_f64(f)
}

/// The requeue of a reconcile that worked from a copy older than the server's: the watch
/// delivers the newer object, which is reconciled instead.
fn stale(key: &str) -> Action {
    tracing::debug!(apikey = %key, "ApiKey changed since it was read; reconciling the newer version");
    Action::requeue(jitter(Duration::from_secs(1)))
}

/// Create, sync and report.
async fn apply(ak: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = object_key(&ak);
    let span = tracing::info_span!("reconcile", apikey = %key);
    let before = ak.status.clone().unwrap_or_default();
    let mut st = before.clone();
    let seen = ServerCopy::of(&ak);
    let outcome = drive(&ak, &ctx, &mut st, &seen).instrument(span).await;
    if matches!(&outcome, Err(f) if f.is_stale()) {
        // Nothing was created from the stale copy; what it concluded is dropped.
        count_reconcile(&ctx, "requeue");
        return Ok(stale(&key));
    }
    // Alerts are judged on what a successful reconcile read; announced after the status that
    // records them is written (never twice, see `alerts`).
    let mut announce = Vec::new();
    // status.history: the keys this reconcile made, and those it revoked.
    super::history::observe(&before, &mut st, &ak, chrono::Utc::now());
    let (requeue, result_label, written) = match &outcome {
        Ok(ready) => {
            status::conclude(&mut st, ak.metadata.generation, &outcome);
            announce = alerts::evaluate(
                &ak.spec,
                &mut st,
                ak.metadata.generation,
                chrono::Utc::now(),
            );
            ctx.backoff.succeeded(&key);
            if st.key_id.is_some() {
                // Deleting this ApiKey will need the provider object and its credentials.
                ctx.in_use.protect(&ak).await?;
            }
            ctx.gauges.track(&key, status::tracked(&st));
            if let Some(pk) = &ctx.metrics.per_key {
                let provider = st.provider_type.as_deref().unwrap_or("unknown");
                let sample = status::per_key_sample(&ak.spec, &st);
                pk.observe(
                    &ak.namespace().unwrap_or_default(),
                    &ak.name_any(),
                    provider,
                    Some(&sample),
                );
            }
            let written = match seen.differs(&st, &before) {
                true => write_status(&ctx, &ak, &st, &seen).await,
                false => Ok(()),
            };
            (jitter(ready.requeue), "success", written)
        }
        Err(f) => {
            st.observed_generation = ak.metadata.generation;
            let not_ready = status::readiness(&outcome);
            let (changed, written) = status::report_not_ready(
                &ctx,
                &ak,
                &seen,
                &before,
                &mut st,
                not_ready,
                "Reconcile",
            )
            .await;
            let wait = count_failure(&ak, &ctx, f, changed);
            ctx.gauges.track(&key, status::tracked(&st));
            (jitter(wait), "error", written)
        }
    };
    match written {
        Ok(()) => {}
        Err(e) if super::error::is_conflict(&e) => {
            count_reconcile(&ctx, "requeue");
            return Ok(stale(&key));
        }
        Err(e) => return Err(e.into()),
    }
    for a in &announce {
        let reason = match a {
            alerts::Announce::UsageHigh { .. } => Reason::UsageHigh,
            alerts::Announce::ExpiringSoon { .. } => Reason::ExpiringSoon,
        };
        tracing::info!(apikey = %key, reason = reason.as_str(), "alert raised");
        ctx.event(
            ak.as_ref(),
            EventType::Warning,
            reason,
            "Alert",
            a.note(&ak.spec),
        )
        .await;
    }
    let mut requeue = requeue;
    if let Ok(Ready {
        rename: Some(rn), ..
    }) = &outcome
    {
        // The status records the key now: it may lose its provisional name.
        if !attempt::rename_after_write(&ctx, &ak, rn).await {
            // The next sync renames it (drift on spec.displayName); soon, not at the refresh.
            requeue = requeue.min(attempt::RENAME_RETRY);
        }
    }
    count_reconcile(&ctx, result_label);
    Ok(Action::requeue(requeue))
}

/// Count a reconcile of an ApiKey (`requeue`: it only added the finalizer, or found its copy
/// stale and asked to run again).
fn count_reconcile(ctx: &Context, result: &str) {
    ctx.metrics
        .reconcile_total
        .get_or_create(&ReconcileLabels {
            controller: "apikey".into(),
            result: result.into(),
        })
        .inc();
}

/// Count and log a failure (the log only when the condition changed; the condition and the
/// Event are `status::report_not_ready`'s); returns how long to wait before the next attempt.
fn count_failure(ak: &ApiKey, ctx: &Context, f: &Failure, changed: bool) -> Duration {
    let key = object_key(ak);
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: "apikey".into(),
            reason: f.reason.as_str().into(),
        })
        .inc();
    if changed {
        tracing::warn!(apikey = %key, reason = f.reason.as_str(), message = %f.message, "ApiKey not ready");
    }
    if f.transient {
        let wait = ctx.backoff.failed(&key);
        f.retry_after.unwrap_or(wait)
    } else {
        // Fixed by an edit (which triggers a reconcile) or by the provider object changing.
        Duration::from_secs(300)
    }
}

/// Everything between "resolve the provider" and "the Secret holds a live key".
async fn drive(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    seen: &ServerCopy,
) -> Result<Ready, Failure> {
    let p = match super::resolve::resolve(ctx, ak).await {
        Ok(p) => p,
        Err(e @ super::backends::ResolveError::ProviderNotAllowed(_))
            if !st.previous_keys.is_empty() =>
        {
            retire_when_not_admitted(ak, ctx, st, seen).await;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    st.provider_type = Some(p.provider_type.to_string());
    let r = Reconciler {
        ak,
        ctx,
        p: &p,
        seen,
    };
    let result = drive_with(&r, st).await;
    if let Err(f) = &result {
        if f.reason == Reason::ProviderAuthFailed {
            // Credentials may have been rotated: read them again next time.
            ctx.backends.forget(&p.id);
        }
    }
    result
}

/// The provider object no longer admits creating through it (`--namespaced-providers=false`,
/// `--cluster-providers=false`, a `namespaceSelector`): replaced keys made through it still end
/// with their grace period (revocation is never an admission question). Failures are left to
/// the next reconcile.
async fn retire_when_not_admitted(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    seen: &ServerCopy,
) {
    let Ok(p) = super::resolve::resolve_for_revoke(ctx, ak).await else {
        return;
    };
    let r = Reconciler {
        ak,
        ctx,
        p: &p,
        seen,
    };
    if let Ok(v) = validate::validate(ak, st, &p) {
        if let Err(f) = revoke::retire_previous(&r, st, &v.scope).await {
            tracing::debug!(reason = f.reason.as_str(), "replaced keys not revoked yet");
        }
    }
}

/// The steps, then what follows any new value (restarts, grace period, next rotation).
async fn drive_with(r: &Reconciler<'_>, st: &mut ApiKeyStatus) -> Result<Ready, Failure> {
    let ready = steps(r, st).await?;
    Ok(rollout::finish(r, st, ready).await)
}

/// The steps, in the order of the module doc.
async fn steps(r: &Reconciler<'_>, st: &mut ApiKeyStatus) -> Result<Ready, Failure> {
    let v = validate::validate(r.ak, st, r.p)?;
    revoke::retire_previous(r, st, &v.scope).await?;
    // Replaced keys still live spend no more than they have; the current key gets what is left
    // of spec.limit (issue 21, controller/limits.rs).
    let not_held = carry::hold_replaced(r, &v, st).await?;
    let v = carry::apply(v, st, chrono::Utc::now());
    let mut ready = steps_after(r, st, v).await?;
    if let Some(note) = not_held {
        ready.message = format!("{}; {note}", ready.message);
    }
    Ok(ready)
}

/// The steps after the replaced keys are settled.
async fn steps_after(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    v: ValidatedApiKey,
) -> Result<Ready, Failure> {
    let pushed = r.ak.spec.source.is_some();
    let existing = match pushed {
        true => None,
        false => dereference::target_secret(r.ak, r.ctx).await?,
    };
    let s = Step { r: *r, v, existing };
    if pushed {
        return push::push(&s, st).await;
    }
    st.secret_name = Some(r.ak.secret_name());
    if let Some(pending) = st.pending_create.clone() {
        let flight = rotate::flight(st);
        recover::recover(&s, st, &pending).await?;
        write_status(r.ctx, r.ak, st, r.seen).await?;
        rotate::announce_recovered(r, flight, st).await;
    }
    let Some(id) = st.key_id.clone() else {
        if let Some(id) = &s.v.settings.key_ref {
            return adopt::adopt(&s, st, &s.v.scope, id).await;
        }
        return create::create(&s, st, None).await;
    };
    if let Some(ready) = rotate::rotate(&s, st, &id).await? {
        return Ok(ready);
    }
    sync::sync_existing(&s, st, id).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// A client whose every request fails: error_policy never calls the API.
    fn offline_client() -> kube::Client {
        let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other(
                "no API server in unit tests",
            ))
        });
        kube::Client::new(svc, "default")
    }

    #[tokio::test]
    async fn error_policy_counts_errors_by_category() {
        let metrics = Arc::new(Metrics::new());
        let ctx = Arc::new(Context::new(
            offline_client(),
            metrics.clone(),
            Default::default(),
        ));
        let mut ak = ApiKey::new("k", Default::default());
        ak.metadata.namespace = Some("team-a".into());
        let ak = Arc::new(ak);
        error_policy(
            ak.clone(),
            &Error::RevokeFailed(Reason::ProviderUnavailable),
            ctx.clone(),
        );
        let kube_err = kube::Error::Api(
            kube::core::Status::failure("boom", "InternalError")
                .with_code(500)
                .boxed(),
        );
        error_policy(ak.clone(), &Error::Kube(kube_err), ctx.clone());
        let text = metrics.encode();
        assert!(
            text.contains(
                "controller_runtime_reconcile_errors_total{controller=\"apikey\",reason=\"ProviderUnavailable\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "controller_runtime_reconcile_errors_total{controller=\"apikey\",reason=\"KubernetesError\"} 1"
        ));
    }
}
