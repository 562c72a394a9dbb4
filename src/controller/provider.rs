//! Reconciling KeyProviders and ClusterKeyProviders: verify the credentials against the provider
//! and report it in `status.conditions[Ready]`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::context::Context;
use crate::api::{ClusterKeyProvider, KeyProvider, KeyProviderSpec, KeyProviderStatus};

/// Re-verify credentials this often even when nothing changes.
const REVERIFY: Duration = Duration::from_secs(600);

async fn verify(
    ctx: &Context,
    id: String,
    spec: &KeyProviderSpec,
    generation: Option<i64>,
    ns: Option<&str>,
) -> (bool, String, String) {
    match ctx.resolve_spec(id.clone(), spec, generation, ns).await {
        Err(e) => (false, e.reason().to_string(), e.to_string()),
        Ok(p) => match p.backend.verify().await {
            Ok(()) => (
                true,
                "CredentialsVerified".into(),
                format!("{} accepted the credentials", p.provider_type),
            ),
            Err(e) => {
                if e.reason() == "ProviderAuthFailed" {
                    ctx.forget_backend(&id);
                }
                (false, e.reason().to_string(), e.to_string())
            }
        },
    }
}

fn next_status(
    old: Option<&KeyProviderStatus>,
    spec: &KeyProviderSpec,
    generation: Option<i64>,
    ok: bool,
    reason: String,
    message: String,
) -> KeyProviderStatus {
    let status = if ok { "True" } else { "False" };
    let prev = old.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let transition = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    KeyProviderStatus {
        observed_generation: generation,
        provider_type: spec.provider_type().map(|p| p.to_string()),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time: transition,
        }],
    }
}

fn same(a: Option<&KeyProviderStatus>, b: &KeyProviderStatus) -> bool {
    let Some(a) = a else { return false };
    a.observed_generation == b.observed_generation
        && a.provider_type == b.provider_type
        && a.conditions.len() == b.conditions.len()
        && a.conditions.iter().zip(&b.conditions).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
        })
}

/// Reconcile a namespaced KeyProvider.
pub async fn reconcile_key_provider(
    p: Arc<KeyProvider>,
    ctx: Arc<Context>,
) -> Result<Action, kube::Error> {
    let ns = p.namespace().unwrap_or_default();
    let id = format!("KeyProvider/{ns}/{}", p.name_any());
    let (ok, reason, message) = verify(&ctx, id, &p.spec, p.metadata.generation, Some(&ns)).await;
    let st = next_status(
        p.status.as_ref(),
        &p.spec,
        p.metadata.generation,
        ok,
        reason,
        message,
    );
    if !same(p.status.as_ref(), &st) {
        let api: Api<KeyProvider> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": st })),
        )
        .await?;
        ctx.metrics.kube_write("keyproviders/status", "patch");
    }
    Ok(Action::requeue(if ok {
        REVERIFY
    } else {
        Duration::from_secs(60)
    }))
}

/// Reconcile a ClusterKeyProvider.
pub async fn reconcile_cluster_key_provider(
    p: Arc<ClusterKeyProvider>,
    ctx: Arc<Context>,
) -> Result<Action, kube::Error> {
    let id = format!("ClusterKeyProvider/{}", p.name_any());
    let (ok, reason, message) = verify(&ctx, id, &p.spec.inner, p.metadata.generation, None).await;
    let st = next_status(
        p.status.as_ref(),
        &p.spec.inner,
        p.metadata.generation,
        ok,
        reason,
        message,
    );
    if !same(p.status.as_ref(), &st) {
        let api: Api<ClusterKeyProvider> = Api::all(ctx.client.clone());
        api.patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": st })),
        )
        .await?;
        ctx.metrics
            .kube_write("clusterkeyproviders/status", "patch");
    }
    Ok(Action::requeue(if ok {
        REVERIFY
    } else {
        Duration::from_secs(60)
    }))
}

pub fn error_policy<K>(_: Arc<K>, err: &kube::Error, _: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "provider reconcile failed");
    Action::requeue(Duration::from_secs(10))
}
