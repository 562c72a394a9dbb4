//! Reconciling KeyProviders and ClusterKeyProviders: verify the credentials against the provider
//! and report it in `status.conditions[Ready]`; where the provider tells when the credentials
//! expire (OpenRouter's `GET /key`), report it too (`CredentialsExpiring`, with an Event once
//! per expiry) from the same call, and when they were last verified
//! (`status.credentialsVerifiedAt`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::backends::ProviderObject;
use super::conditions::{set_ready, Readiness};
use super::context::Context;
use super::reasons::Reason;
use crate::api::{ClusterKeyProvider, KeyProvider, KeyProviderSpec, KeyProviderStatus};
use crate::providers::CredentialsExpiry;

/// Re-verify credentials this often even when nothing changes.
const REVERIFY: Duration = Duration::from_secs(600);
/// `status.credentialsVerifiedAt` is rewritten at most this often (each write is a watch event
/// that reconciles the object again; several shards verify every ClusterKeyProvider).
const VERIFIED_AT_EVERY: chrono::Duration = chrono::Duration::minutes(30);
/// `CredentialsExpiring` turns True this long before the credentials expire.
pub const CREDENTIALS_EXPIRING_WITHIN: chrono::Duration = chrono::Duration::days(7);

/// What a verify that succeeded tells about the credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub provider_type: String,
    pub expiry: CredentialsExpiry,
}

/// Resolve the provider object's backend and ask the provider to accept its credentials (one
/// call, which also tells their expiry where the provider exposes it).
async fn verify(ctx: &Context, obj: ProviderObject<'_>) -> (Readiness, Option<Verified>) {
    let id = obj.id.clone();
    if let Err(message) = check_selectors(obj.spec) {
        let r = Readiness {
            ready: false,
            reason: Reason::InvalidSpec,
            message,
        };
        return (r, None);
    }
    match super::resolve::resolve_object(ctx, obj).await {
        Err(e) => {
            let r = Readiness {
                ready: false,
                reason: e.reason(),
                message: e.to_string(),
            };
            (r, None)
        }
        Ok(p) => match p.backend.verify_credentials().await {
            Ok(expiry) => (
                Readiness {
                    ready: true,
                    reason: Reason::CredentialsVerified,
                    message: format!("{} accepted the credentials", p.provider_type),
                },
                Some(Verified {
                    provider_type: p.provider_type.to_string(),
                    expiry,
                }),
            ),
            Err(e) => {
                let reason = Reason::from(&e);
                if reason == Reason::ProviderAuthFailed {
                    ctx.backends.forget(&id);
                }
                let r = Readiness {
                    ready: false,
                    reason,
                    message: e.to_string(),
                };
                (r, None)
            }
        },
    }
}

/// The credentials part of a provider object's status after a verify that succeeded at `now`
/// (pure): `credentialsVerifiedAt` (moved at most every [`VERIFIED_AT_EVERY`]),
/// `credentialsExpiresAt`, and the `CredentialsExpiring` condition. The Event is the caller's:
/// due when `credentialsExpiryAnnounced` changed.
pub fn credentials_status(
    st: &mut KeyProviderStatus,
    old: Option<&KeyProviderStatus>,
    generation: Option<i64>,
    v: &Verified,
    now: DateTime<Utc>,
) {
    let last = old.and_then(|o| o.credentials_verified_at.clone());
    let fresh = last
        .as_deref()
        .and_then(super::time::parse)
        .is_some_and(|t| t <= now && now - t < VERIFIED_AT_EVERY);
    st.credentials_verified_at = if fresh {
        last
    } else {
        Some(super::time::ts(now))
    };
    st.credentials_expires_at = match v.expiry {
        CredentialsExpiry::At(t) => Some(super::time::ts(t)),
        _ => None,
    };
    st.credentials_expiry_announced = old.and_then(|o| o.credentials_expiry_announced.clone());
    let (expiring, reason, message) = match v.expiry {
        CredentialsExpiry::At(t) if t - now <= CREDENTIALS_EXPIRING_WITHIN => {
            let at = super::time::ts(t);
            st.credentials_expiry_announced = Some(at.clone());
            (
                true,
                Reason::CredentialsExpiring,
                format!(
                    "the {} credentials in this provider object's Secret expire at {at}: replace them before then",
                    v.provider_type
                ),
            )
        }
        CredentialsExpiry::At(t) => (
            false,
            Reason::CredentialsNotExpiring,
            format!(
                "the {} credentials expire at {}",
                v.provider_type,
                super::time::ts(t)
            ),
        ),
        CredentialsExpiry::Never => (
            false,
            Reason::CredentialsNotExpiring,
            format!("the {} credentials do not expire", v.provider_type),
        ),
        CredentialsExpiry::NotExposed => (
            false,
            Reason::CredentialsExpiryNotExposed,
            format!(
                "{} does not tell when its credentials expire",
                v.provider_type
            ),
        ),
    };
    super::conditions::set_condition(
        &mut st.conditions,
        "CredentialsExpiring",
        expiring,
        reason.as_str(),
        message,
        generation,
    );
}

/// Write the status if it changed; then the `CredentialsExpiring` Event, once per expiry (after
/// the write, so a crash in between announces it at most not at all, never twice).
async fn write_status<K>(
    ctx: &Context,
    api: Api<K>,
    obj: &K,
    old: Option<&KeyProviderStatus>,
    st: &KeyProviderStatus,
    resource: &str,
) -> Result<(), super::error::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if old == Some(st) {
        return Ok(());
    }
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": st })),
    )
    .await?;
    ctx.metrics.kube_write(resource, "patch");
    let announced = old.and_then(|o| o.credentials_expiry_announced.as_deref());
    if let Some(at) = st.credentials_expiry_announced.as_deref() {
        if announced != Some(at) {
            let message = st
                .conditions
                .iter()
                .find(|c| c.type_ == "CredentialsExpiring")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ctx.event(
                obj,
                EventType::Warning,
                Reason::CredentialsExpiring,
                "Verify",
                message,
            )
            .await;
        }
    }
    Ok(())
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
    // The credentials' expiry stays as last verified until a verify succeeds again.
    conditions.extend(
        old.into_iter()
            .flat_map(|s| s.conditions.iter())
            .filter(|c| c.type_ == "CredentialsExpiring")
            .cloned(),
    );
    KeyProviderStatus {
        observed_generation: generation,
        provider_type: spec.provider_type().map(|p| p.to_string()),
        conditions,
        credentials_verified_at: old.and_then(|o| o.credentials_verified_at.clone()),
        credentials_expires_at: old.and_then(|o| o.credentials_expires_at.clone()),
        credentials_expiry_announced: old.and_then(|o| o.credentials_expiry_announced.clone()),
    }
}

/// [`next_status`], with what a verify that succeeded tells about the credentials.
fn status_after(
    old: Option<&KeyProviderStatus>,
    spec: &KeyProviderSpec,
    generation: Option<i64>,
    readiness: &Readiness,
    verified: Option<&Verified>,
) -> KeyProviderStatus {
    let mut st = next_status(old, spec, generation, readiness);
    if let Some(v) = verified {
        credentials_status(&mut st, old, generation, v, Utc::now());
    }
    st
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
    let (readiness, verified) = verify(&ctx, obj).await;
    let st = status_after(
        p.status.as_ref(),
        &p.spec,
        p.metadata.generation,
        &readiness,
        verified.as_ref(),
    );
    let api: Api<KeyProvider> = Api::namespaced(ctx.client.clone(), &ns);
    write_status(
        &ctx,
        api,
        p.as_ref(),
        p.status.as_ref(),
        &st,
        "keyproviders/status",
    )
    .await?;
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
    let (readiness, verified) = verify(&ctx, obj).await;
    let st = status_after(
        p.status.as_ref(),
        &p.spec.inner,
        p.metadata.generation,
        &readiness,
        verified.as_ref(),
    );
    let api: Api<ClusterKeyProvider> = Api::all(ctx.client.clone());
    write_status(
        &ctx,
        api,
        p.as_ref(),
        p.status.as_ref(),
        &st,
        "clusterkeyproviders/status",
    )
    .await?;
    Ok(requeue(&readiness))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BoltzProvider;

    #[test]
    fn credentials_expiring_within_seven_days_is_announced_once_per_expiry() {
        let t = |s: &str| super::super::time::parse(s).unwrap();
        let now = t("2026-12-06T08:00:00Z");
        let v = |expiry| Verified {
            provider_type: "openrouter".into(),
            expiry,
        };
        let cond = |st: &KeyProviderStatus| {
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == "CredentialsExpiring")
                .unwrap();
            (c.status.clone(), c.reason.clone())
        };
        // Far away: False, nothing to announce.
        let mut far = KeyProviderStatus::default();
        let later = CredentialsExpiry::At(t("2027-01-01T00:00:00Z"));
        credentials_status(&mut far, None, Some(1), &v(later), now);
        assert_eq!(
            cond(&far),
            ("False".into(), "CredentialsNotExpiring".into())
        );
        assert_eq!(
            far.credentials_expires_at.as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            far.credentials_verified_at.as_deref(),
            Some("2026-12-06T08:00:00Z")
        );
        assert_eq!(far.credentials_expiry_announced, None);
        // Within 7 days: True, announced for this expiry.
        let soon = CredentialsExpiry::At(t("2026-12-10T00:00:00Z"));
        let mut st = far.clone();
        credentials_status(&mut st, Some(&far), Some(1), &v(soon), now);
        assert_eq!(cond(&st), ("True".into(), "CredentialsExpiring".into()));
        assert_eq!(
            st.credentials_expiry_announced.as_deref(),
            Some("2026-12-10T00:00:00Z")
        );
        // Verified again 10 minutes later: the same status (no write, no second Event).
        let mut again = st.clone();
        let ten = now + chrono::Duration::minutes(10);
        credentials_status(&mut again, Some(&st), Some(1), &v(soon), ten);
        assert_eq!(again, st);
        // 40 minutes later: only credentialsVerifiedAt moves.
        let forty = now + chrono::Duration::minutes(40);
        let mut moved = st.clone();
        credentials_status(&mut moved, Some(&st), Some(1), &v(soon), forty);
        assert_eq!(
            moved.credentials_verified_at.as_deref(),
            Some("2026-12-06T08:40:00Z")
        );
        assert_eq!(
            moved.credentials_expiry_announced,
            st.credentials_expiry_announced
        );
        // Not exposed, or never: False with its reason, no expiry.
        for (e, reason) in [
            (CredentialsExpiry::NotExposed, "CredentialsExpiryNotExposed"),
            (CredentialsExpiry::Never, "CredentialsNotExpiring"),
        ] {
            let mut x = KeyProviderStatus::default();
            credentials_status(&mut x, None, Some(1), &v(e), now);
            assert_eq!(cond(&x), ("False".into(), reason.into()));
            assert_eq!(x.credentials_expires_at, None);
        }
        // A failed verify keeps what the last successful one said.
        let spec = KeyProviderSpec {
            openrouter: Some(Default::default()),
            ..Default::default()
        };
        let bad = Readiness {
            ready: false,
            reason: Reason::ProviderAuthFailed,
            message: "no".into(),
        };
        let failed = status_after(Some(&st), &spec, Some(1), &bad, None);
        assert_eq!(cond(&failed), cond(&st));
        assert_eq!(failed.credentials_verified_at, st.credentials_verified_at);
    }

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
