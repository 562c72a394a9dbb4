//! Deletion, all of it (the finalizer's cleanup): finish an interrupted create, revoke the
//! replaced keys whatever their grace period, then revoke the current key
//! (`deletionPolicy: Delete`) or leave it and its Secret (`Orphan`), release the provider object
//! and credentials (the in-use finalizer, `inuse::release_if_unused`), and let the finalizer
//! go. A revoke the provider refuses keeps the ApiKey, reported in its status.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::conditions::Readiness;
use super::super::context::Context;
use super::super::inuse::{holds_keys, ProviderId, Release};
use super::super::reasons::Reason;
use super::super::secret::{self, SecretOwnership};
use super::recover::recover;
use super::revoke::{retire_previous, revoke_quietly};
use super::scope::key_scope;
use super::status::report_not_ready;
use super::step::ServerCopy;
use super::step::{object_key, Reconciler, Step};
use super::validate::settings_for;
use super::validate::ValidatedApiKey;
use crate::api::{ApiKey, ApiKeyStatus, DeletionPolicy};
use crate::controller::error::{Error, Failure};

/// Deletion: revoke at the provider (or orphan), then let the finalizer go.
pub async fn cleanup(ak: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let orphan_it = ak.spec.deletion_policy == DeletionPolicy::Orphan;
    if !orphan_it && nothing_created(&ak, &ctx).await? {
        // Nothing to revoke: the finalizer goes at once, even if the provider object or its
        // credentials are gone (or never existed).
        ctx.forget(&object_key(&ak));
        return Ok(Action::await_change());
    }
    let read = ak.status.clone().unwrap_or_default();
    let mut after = read.clone();
    let revoked = if orphan_it {
        // The current key stays; an interrupted create's and replaced keys must not leak.
        revoke_leftovers(&ak, &ctx, &mut after).await
    } else {
        revoke_accounted(&ak, &ctx, &mut after, true).await
    };
    if let Err(f) = revoked {
        report_refused_revoke(&ak, &ctx, &read, after, &f).await?;
        // Err keeps the finalizer; the error policy retries.
        return Err(Error::RevokeFailed(f.reason));
    }
    if orphan_it {
        orphan(&ak, &ctx).await?;
    }
    // Its keys are revoked (or, orphaned, no longer accounted for here): the provider object
    // and credentials are free unless another ApiKey still needs them (without this a provider
    // object deleted first stayed Terminating).
    let p = ProviderId::of(&ak);
    if ctx
        .in_use
        .release_if_unused(&p, ak.uid().as_deref())
        .await?
        == Release::Gone
    {
        // The provider object was deleted first and waited for this ApiKey: it goes now.
        ctx.forget_provider(&p.key());
    }
    ctx.forget(&object_key(&ak));
    Ok(Action::await_change())
}

/// Whether the ApiKey never got as far as a provider call: no keyID, no pendingCreate (written
/// before every create), no previousKeys. Read from the server, not the watch cache, so a
/// status written moments ago is seen.
async fn nothing_created(ak: &ApiKey, ctx: &Context) -> Result<bool, kube::Error> {
    if holds_keys(ak) {
        return Ok(false);
    }
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    Ok(match api.get_opt(&ak.name_any()).await? {
        None => true,
        Some(fresh) => !holds_keys(&fresh),
    })
}

/// Keep the key and the Secret: drop the Secret's owner reference so garbage collection leaves it.
async fn orphan(ak: &ApiKey, ctx: &Context) -> Result<(), kube::Error> {
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    if let Some(s) = secrets.get_opt(&ak.secret_name()).await? {
        if secret::ownership(ak, &s) == SecretOwnership::Ours && !s.owner_references().is_empty() {
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
                    &Patch::Merge(serde_json::json!({ "metadata": { "ownerReferences": keep } })),
                )
                .await?;
            ctx.metrics.kube_write("secrets", "patch");
        }
    }
    if let Some(id) = ak.status.as_ref().and_then(|s| s.key_id.as_ref()) {
        let note = format!("left key {id} at the provider (deletionPolicy: Orphan)");
        ctx.event(ak, EventType::Normal, Reason::KeyOrphaned, "Delete", note)
            .await;
    }
    Ok(())
}

/// Deletion with `deletionPolicy: Orphan` leaves the current key (the one the Secret holds) at
/// the provider, but not the keys the ApiKey still had to get rid of: an interrupted create's
/// stray key and replaced keys (`previousKeys`) are revoked first; the provider is only asked
/// when there are such keys.
pub async fn revoke_leftovers(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
) -> Result<(), Failure> {
    if st.pending_create.is_none() && st.previous_keys.is_empty() {
        return Ok(());
    }
    revoke_accounted(ak, ctx, st, false).await
}

/// Revoke the keys the ApiKey accounts for before it goes: an interrupted create's stray key,
/// the replaced keys (whatever their grace period) and, with `and_current`
/// (`deletionPolicy: Delete`), the current one.
pub async fn revoke_accounted(
    ak: &ApiKey,
    ctx: &Context,
    st: &mut ApiKeyStatus,
    and_current: bool,
) -> Result<(), Failure> {
    let p = super::super::resolve::resolve(ctx, ak).await?;
    let seen = ServerCopy::of(ak);
    let r = Reconciler {
        ak,
        ctx,
        p: &p,
        seen: &seen,
    };
    let settings = settings_for(ak, st)?;
    let scope = p.backend.scope(&settings);
    if let Some(pending) = st.pending_create.clone() {
        let existing =
            Api::<Secret>::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default())
                .get_opt(&ak.secret_name())
                .await?;
        let s = Step {
            r,
            v: ValidatedApiKey {
                settings,
                scope: scope.clone(),
            },
            existing,
        };
        recover(&s, st, &pending).await?;
    }
    let now = super::super::time::now();
    for prev in &mut st.previous_keys {
        prev.delete_after = now.clone();
    }
    retire_previous(&r, st, &scope).await?;
    if let Some(id) = st.key_id.clone().filter(|_| and_current) {
        revoke_quietly(ctx, &p, &key_scope(st, &scope), &id).await?;
        let note = format!("revoked key {id} at {}", p.provider_type);
        r.event(EventType::Normal, Reason::KeyRevoked, "Delete", note)
            .await;
    }
    Ok(())
}

/// Say in the status (and an Event) why the ApiKey stays: `read` is the status the cleanup
/// began with, `after` what the attempt left.
async fn report_refused_revoke(
    ak: &ApiKey,
    ctx: &Context,
    read: &ApiKeyStatus,
    mut after: ApiKeyStatus,
    f: &Failure,
) -> Result<(), kube::Error> {
    let not_ready = Readiness {
        ready: false,
        reason: f.reason,
        message: format!(
            "cannot revoke the key, so the ApiKey stays until it can: {}. To delete it without revoking, set spec.deletionPolicy: Orphan",
            f.message
        ),
    };
    let seen = ServerCopy::of(ak);
    report_not_ready(ctx, ak, &seen, read, &mut after, not_ready, "Delete")
        .await
        .1
}
