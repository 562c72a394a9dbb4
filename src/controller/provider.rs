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
    if let Err(message) = check_selectors(obj.spec) {
        return Readiness {
            ready: false,
            reason: Reason::InvalidSpec,
            message,
        };
    }
    match super::resolve::resolve_object(ctx, obj).await {
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
                let reason = Reason::from(&e);
                if reason == Reason::ProviderAuthFailed {
                    ctx.backends.forget(&id);
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

/// The provider object's label selectors, checked as the API server checks selectors (the CRD
/// schema of a LabelSelector does not).
fn check_selectors(spec: &KeyProviderSpec) -> Result<(), String> {
    use super::backends::check_selector;
    if let Some(sel) = &spec.namespace_selector {
        check_selector(sel, "spec.namespaceSelector")?;
    }
    if let Some(sel) = spec
        .adoption
        .as_ref()
        .and_then(|a| a.namespace_selector.as_ref())
    {
        check_selector(sel, "spec.adoption.namespaceSelector")?;
    }
    Ok(())
}

/// The status a provider object gets for `readiness` (pure): only the Ready condition, built by
/// the one condition builder. Quiet and deterministic, because with `--label-selector` every
/// shard verifies every ClusterKeyProvider and they must not flap its status:
/// - a transient failure (429, outage, API error) does not take back a Ready=True verified at
///   this generation (the next verify decides);
/// - the same status and reason keep the message already written (messages of one reason may
///   differ in detail between shards), so only a change of conclusion is a write.
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
    let prev = conditions.first().cloned();
    let transient = matches!(
        readiness.reason,
        Reason::RateLimited | Reason::ProviderUnavailable | Reason::KubernetesError
    );
    let mut readiness = readiness.clone();
    if let Some(p) = &prev {
        let verified_now = p.status == "True" && p.observed_generation == generation;
        if !readiness.ready && transient && verified_now {
            if let Some(old) = old {
                return old.clone();
            }
        }
        let status = if readiness.ready { "True" } else { "False" };
        if p.status == status && p.reason == readiness.reason.as_str() {
            readiness.message = p.message.clone();
        }
    }
    set_ready(&mut conditions, generation, &readiness);
    KeyProviderStatus {
        observed_generation: generation,
        provider_type: spec.provider_type().map(|p| p.to_string()),
        conditions,
    }
}

/// A provider object being deleted: it goes (with its credentials' in-use finalizer) once no
/// ApiKey holds a key through it; until then it is looked at again every few seconds.
async fn being_deleted(
    ctx: &Context,
    finalizers: &[String],
    id: &super::inuse::ProviderId,
) -> Result<Action, super::error::Error> {
    if !finalizers
        .iter()
        .any(|f| f == super::inuse::IN_USE_FINALIZER)
    {
        ctx.forget_provider(&id.key());
        return Ok(Action::await_change());
    }
    if ctx.in_use.release_if_unused(id, None).await? != super::inuse::Release::InUse {
        ctx.forget_provider(&id.key());
        Ok(Action::await_change())
    } else {
        Ok(Action::requeue(Duration::from_secs(5)))
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
) -> Result<Action, super::error::Error> {
    let ns = p.namespace().unwrap_or_default();
    if p.metadata.deletion_timestamp.is_some() {
        let id = super::inuse::ProviderId {
            kind: crate::api::ProviderKind::KeyProvider,
            namespace: ns,
            name: p.name_any(),
        };
        return being_deleted(&ctx, p.finalizers(), &id).await;
    }
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
) -> Result<Action, super::error::Error> {
    if p.metadata.deletion_timestamp.is_some() {
        let id = super::inuse::ProviderId {
            kind: crate::api::ProviderKind::ClusterKeyProvider,
            namespace: String::new(),
            name: p.name_any(),
        };
        return being_deleted(&ctx, p.finalizers(), &id).await;
    }
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
        // Another shard's wording of the same conclusion is not a write.
        let reworded = Readiness {
            message: "no (request 42)".into(),
            ..bad.clone()
        };
        assert_eq!(
            next_status(Some(&second), &spec, Some(1), &reworded),
            second
        );
        // A transient failure does not take back a verification of this generation…
        let flaky = Readiness {
            ready: false,
            reason: Reason::ProviderUnavailable,
            message: "timeout".into(),
        };
        assert_eq!(next_status(Some(&first), &spec, Some(1), &flaky), first);
        // …but is reported when nothing was verified yet, or for a new generation.
        assert_eq!(
            next_status(None, &spec, Some(1), &flaky).conditions[0].reason,
            "ProviderUnavailable"
        );
        assert_eq!(
            next_status(Some(&first), &spec, Some(2), &flaky).conditions[0].reason,
            "ProviderUnavailable"
        );
        let third = next_status(Some(&second), &spec, Some(2), &bad);
        assert_eq!(third.observed_generation, Some(2));
    }
}
