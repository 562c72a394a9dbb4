//! No silent death: every reconcile runs contained (a panic becomes an `InternalError` on the
//! object and a counted error, never the end of the controller) and is cancelled at the leader
//! Lease's renew deadline; a controller stream that ends while nobody asked it to turns
//! `/healthz` bad so Kubernetes restarts the pod.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::admin::Health;
use super::apikey::status::report_not_ready;
use super::apikey::{self, ServerCopy};
use super::conditions::Readiness;
use super::context::Context;
use super::error::Error;
use super::reasons::Reason;
use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider};
use crate::metrics::ErrorLabels;

/// What a contained reconcile ended with.
enum Contained<T> {
    Done(T),
    Panicked,
    LeaseLost,
}

/// Run `work` until it ends, panics, or the Lease's renew deadline passes (then it is dropped:
/// its in-flight requests are cancelled).
async fn contain<T>(ctx: &Context, work: impl Future<Output = T>) -> Contained<T> {
    tokio::select! {
        r = AssertUnwindSafe(work).catch_unwind() => match r {
            Ok(t) => Contained::Done(t),
            Err(_) => Contained::Panicked,
        },
        _ = ctx.lease.expired() => Contained::LeaseLost,
    }
}

/// The ApiKey controller's reconcile, contained. A panic is counted by the error policy as
/// `controller_runtime_reconcile_errors_total{reason="InternalError"}`.
pub async fn reconcile_apikey(ak: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let work = {
        let (ak, ctx) = (ak.clone(), ctx.clone());
        async move {
            #[cfg(feature = "test-hooks")]
            if ctx.panic_in_reconcile.load(Ordering::SeqCst) {
                panic!("test hook: reconcile panics");
            }
            apikey::reconcile(ak, ctx).await
        }
    };
    match contain(&ctx, work).await {
        Contained::Done(r) => r,
        Contained::LeaseLost => {
            tracing::warn!(apikey = %format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any()),
                "leader Lease ran out: reconcile cancelled");
            Err(Error::LeaseLost)
        }
        Contained::Panicked => {
            report_panic(&ak, &ctx).await;
            Err(Error::Panicked)
        }
    }
}

/// Say on the ApiKey (condition and Event) that its reconcile hit a bug. The panic's own text
/// goes to the log only (the panic hook printed it): it could hold anything.
async fn report_panic(ak: &ApiKey, ctx: &Context) {
    let key = format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any());
    tracing::error!(apikey = %key, "reconcile panicked (a bug); contained, retrying with backoff");
    let readiness = Readiness {
        ready: false,
        reason: Reason::InternalError,
        message: "internal error: the reconcile panicked (a bug in keysmith); it is retried with backoff, the operator log has the details".into(),
    };
    let read = ak.status.clone().unwrap_or_default();
    let mut after = read.clone();
    let seen = ServerCopy::of(ak);
    let (_, written) =
        report_not_ready(ctx, ak, &seen, &read, &mut after, readiness, "Reconcile").await;
    if let Err(e) = written {
        tracing::warn!(apikey = %key, error = %e, "cannot report the internal error in status");
    }
}

/// The KeyProvider controller's reconcile, contained.
pub async fn reconcile_key_provider(
    p: Arc<KeyProvider>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.settings.namespaced_providers && p.metadata.deletion_timestamp.is_none() {
        // `--namespaced-providers=false`: KeyProviders are not served (no verification, no
        // provider call), but one that was in use before is still let go once no ApiKey needs
        // it, instead of staying Terminating.
        return Ok(Action::await_change());
    }
    match contain(
        &ctx,
        super::provider::reconcile_key_provider(p, ctx.clone()),
    )
    .await
    {
        Contained::Done(r) => r,
        Contained::LeaseLost => Err(Error::LeaseLost),
        Contained::Panicked => {
            tracing::error!("KeyProvider reconcile panicked (a bug); contained");
            Err(Error::Panicked)
        }
    }
}

/// The ClusterKeyProvider controller's reconcile, contained.
pub async fn reconcile_cluster_key_provider(
    p: Arc<ClusterKeyProvider>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match contain(
        &ctx,
        super::provider::reconcile_cluster_key_provider(p, ctx.clone()),
    )
    .await
    {
        Contained::Done(r) => r,
        Contained::LeaseLost => Err(Error::LeaseLost),
        Contained::Panicked => {
            tracing::error!("ClusterKeyProvider reconcile panicked (a bug); contained");
            Err(Error::Panicked)
        }
    }
}

/// The provider objects' error policy: counted by category, retried.
pub fn provider_error_policy<K>(_: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "provider reconcile failed");
    count_category(&ctx, "keyprovider", err.category());
    Action::requeue(std::time::Duration::from_secs(10))
}

fn count_category(ctx: &Context, controller: &str, category: &str) {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: controller.into(),
            reason: category.into(),
        })
        .inc();
}

/// Wait for every controller task; one that ends before `stopping` was set (its stream ended,
/// or it panicked) marks `/healthz` bad, so that Kubernetes restarts the pod.
pub async fn supervise(
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    stopping: Arc<AtomicBool>,
    health: Arc<Health>,
) {
    let mut pending: Vec<_> = tasks
        .into_iter()
        .map(|(name, t)| t.map(move |r| (name, r)).boxed())
        .collect();
    while !pending.is_empty() {
        let ((name, result), _, rest) = futures::future::select_all(pending).await;
        pending = rest;
        if !stopping.load(Ordering::SeqCst) {
            let how = match result {
                Ok(()) => "its watch stream ended",
                Err(e) if e.is_panic() => "it panicked",
                Err(_) => "it was cancelled",
            };
            tracing::error!(controller = name, "controller stopped unexpectedly ({how}); /healthz now fails so the pod is restarted");
            health.controller_died(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_controller_that_ends_unexpectedly_makes_healthz_fail() {
        let health = Arc::new(Health::default());
        assert_eq!(health.healthz().0, 200);
        let stopping = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            ("apikey", tokio::spawn(async { panic!("stream panicked") })),
            ("keyprovider", tokio::spawn(async {})),
        ];
        supervise(tasks, stopping, health.clone()).await;
        let (code, text) = health.healthz();
        assert_eq!(code, 503);
        assert!(
            text.contains("apikey") && text.contains("keyprovider"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn controllers_that_end_on_request_leave_healthz_good() {
        let health = Arc::new(Health::default());
        let stopping = Arc::new(AtomicBool::new(true));
        let tasks = vec![("apikey", tokio::spawn(async {}))];
        supervise(tasks, stopping, health.clone()).await;
        assert_eq!(health.healthz().0, 200);
    }
}
