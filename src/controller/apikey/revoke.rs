//! Revoking keys at the provider: one key ("already gone" counts as done), and the replaced keys
//! of `status.previousKeys` that are due.

use chrono::Utc;
use kube::runtime::events::EventType;

use super::super::backends::ResolvedProvider;
use super::super::context::Context;
use super::super::reasons::Reason;
use super::scope::scope_at;
use super::step::Reconciler;
use crate::api::ApiKeyStatus;
use crate::controller::error::Failure;
use crate::metrics::ProviderLabel;
use crate::providers::{KeyScope, ProviderError};

/// Revoke a key, treating "already gone" as done.
pub async fn revoke_quietly(
    ctx: &Context,
    p: &ResolvedProvider,
    scope: &KeyScope,
    id: &str,
) -> Result<(), ProviderError> {
    match p.backend.revoke(scope, id).await {
        Ok(()) => {
            let label = ProviderLabel {
                provider: p.provider_type.to_string(),
            };
            ctx.metrics.keys_revoked.get_or_create(&label).inc();
        }
        Err(ProviderError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    ctx.listings.forget_key(p, scope, id).await;
    Ok(())
}

/// Revoke the replaced keys that are due (`status.previousKeys`); those the provider refuses now
/// stay listed and the reconcile fails with the provider's error, to be retried. `scope`: where
/// a key without a recorded location lives.
pub async fn retire_previous(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    scope: &KeyScope,
) -> Result<(), Failure> {
    if st.previous_keys.is_empty() {
        return Ok(());
    }
    let (due, _) = crate::controller::rotation::revocations_due(&st.previous_keys, Utc::now());
    let mut keep = Vec::new();
    let mut failed = None;
    for (i, prev) in std::mem::take(&mut st.previous_keys)
        .into_iter()
        .enumerate()
    {
        if !due.contains(&i) || failed.is_some() {
            keep.push(prev);
            continue;
        }
        let at = scope_at(prev.scope.as_ref(), scope);
        match revoke_quietly(r.ctx, r.p, &at, &prev.key_id).await {
            Ok(()) => {
                let note = format!(
                    "revoked replaced key {} at {} (its grace period ended {})",
                    prev.key_id, r.p.provider_type, prev.delete_after
                );
                r.event(
                    EventType::Normal,
                    Reason::PreviousKeyRevoked,
                    "Revoke",
                    note,
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
