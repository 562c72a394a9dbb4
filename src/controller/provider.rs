//! Reconciling KeyProviders and ClusterKeyProviders: verify the credentials against the provider
//! and report it in `status.conditions[Ready]`.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::backends::ProviderObject;
use super::conditions::{set_ready, Readiness};
use super::context::Context;
use super::reasons::Reason;
use crate::api::{ClusterKeyProvider, KeyProvider, KeyProviderSpec, KeyProviderStatus};

/// Re-verify credentials this often even when nothing changes.
const REVERIFY: Duration = Duration::from_secs(600);

/// Resolve the provider object's backend and ask the provider to accept its credentials.
async fn verify(ctx: &Context, obj: ProviderObject<'_>) -> Readiness {
    let id = obj.id.clone();
    match ctx.resolve_object(obj).await {
        Err(e) => Readiness {
            ready: false,
            reason: e.reason(),
            message: e.to_string(),
        },
        Ok(p) => match p.backend.verify().await {
            Ok(()) => Readiness {
                ready: true,
                reason: Reason::CredentialsVerified,
                message: format!("{} accepted the credentials", p.provider_type),
            },
            Err(e) => {
                let reason = Reason::of_provider(&e);
                if reason == Reason::ProviderAuthFailed {
                    ctx.forget_backend(&id);
                }
                Readiness {
                    ready: false,
                    reason,
                    message: e.to_string(),
                }
            }
        },
    }
}

/// The status a provider object gets for `readiness` (pure): only the Ready condition, built by
/// the one condition builder.
fn next_status(
    old: Option<&KeyProviderStatus>,
    spec: &KeyProviderSpec,
    generation: Option<i64>,
    readiness: &Readiness,
) -> KeyProviderStatus {
    let mut conditions: Vec<_> = old
        .into_iter()
        .flat_map(|s| s.conditions.iter())
        .filter(|c| c.type_ == "Ready")
        .cloned()
        .collect();
    set_ready(&mut conditions, generation, readiness);
    KeyProviderStatus {
        observed_generation: generation,
        provider_type: spec.provider_type().map(|p| p.to_string()),
        conditions,
    }
}

fn requeue(readiness: &Readiness) -> Action {
    Action::requeue(if readiness.ready {
        REVERIFY
    } else {
        Duration::from_secs(60)
    })
}

/// Reconcile a namespaced KeyProvider.
pub async fn reconcile_key_provider(
    p: Arc<KeyProvider>,
    ctx: Arc<Context>,
) -> Result<Action, kube::Error> {
    let ns = p.namespace().unwrap_or_default();
    let obj = ProviderObject {
        id: format!("KeyProvider/{ns}/{}", p.name_any()),
        spec: &p.spec,
        generation: p.metadata.generation,
        namespace: Some(&ns),
    };
    let readiness = verify(&ctx, obj).await;
    let st = next_status(
        p.status.as_ref(),
        &p.spec,
        p.metadata.generation,
        &readiness,
    );
    if p.status.as_ref() != Some(&st) {
        let api: Api<KeyProvider> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": st })),
        )
        .await?;
        ctx.metrics.kube_write("keyproviders/status", "patch");
    }
    Ok(requeue(&readiness))
}

/// Reconcile a ClusterKeyProvider.
pub async fn reconcile_cluster_key_provider(
    p: Arc<ClusterKeyProvider>,
    ctx: Arc<Context>,
) -> Result<Action, kube::Error> {
    let obj = ProviderObject {
        id: format!("ClusterKeyProvider/{}", p.name_any()),
        spec: &p.spec.inner,
        generation: p.metadata.generation,
        namespace: None,
    };
    let readiness = verify(&ctx, obj).await;
    let st = next_status(
        p.status.as_ref(),
        &p.spec.inner,
        p.metadata.generation,
        &readiness,
    );
    if p.status.as_ref() != Some(&st) {
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
    Ok(requeue(&readiness))
}

pub fn error_policy<K>(_: Arc<K>, err: &kube::Error, _: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "provider reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BoltzProvider;

    #[test]
    fn status_is_rewritten_only_when_the_conclusion_changes() {
        let spec = KeyProviderSpec {
            boltz: Some(BoltzProvider::default()),
            ..Default::default()
        };
        let ok = Readiness {
            ready: true,
            reason: Reason::CredentialsVerified,
            message: "boltz accepted the credentials".into(),
        };
        let first = next_status(None, &spec, Some(1), &ok);
        assert_eq!(first.provider_type.as_deref(), Some("boltz"));
        assert_eq!(first.conditions.len(), 1);
        assert_eq!(next_status(Some(&first), &spec, Some(1), &ok), first);
        let bad = Readiness {
            ready: false,
            reason: Reason::ProviderAuthFailed,
            message: "no".into(),
        };
        let second = next_status(Some(&first), &spec, Some(1), &bad);
        assert_ne!(second, first);
        assert_eq!(second.conditions[0].reason, "ProviderAuthFailed");
        let third = next_status(Some(&second), &spec, Some(2), &bad);
        assert_eq!(third.observed_generation, Some(2));
    }
}
