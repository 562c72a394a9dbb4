//! Keeping a key's settings in sync: what the provider knows of the key, which drift can be
//! updated in place and which needs a new key.

use kube::runtime::events::EventType;

use super::super::backends::ResolvedProvider;
use super::super::context::Context;
use super::super::limits;
use super::super::reasons::Reason;
use super::deliver::{ensure_secret, Delivery};
use super::outside::{self, Outside};
use super::scope::{key_scope, location, LocatedKey};
use super::status::{fill_from_key, Ready};
use super::step::Step;
use super::{create, restore};
use crate::api::{ApiKeyStatus, ImmutableChangePolicy};
use crate::controller::error::Failure;
use crate::providers::{self, Capabilities, Field, KeyScope, ProviderError, ProviderKey};

/// The key as the provider reports it; `None` when it does not exist. `fresh`: ask the provider
/// (after a spec change) instead of the shared listing.
pub async fn observe(
    ctx: &Context,
    p: &ResolvedProvider,
    scope: &KeyScope,
    id: &str,
    fresh: bool,
) -> Result<Option<ProviderKey>, ProviderError> {
    if !fresh {
        let slot = ctx.listings.get(p, scope, p.refresh_interval).await?;
        let found = slot.lock().await.keys.get(id).map(|k| (**k).clone());
        if found.is_some() {
            return Ok(found);
        }
        // Not in the listing: it may postdate it. Ask once before concluding it is gone.
    }
    match p.backend.get(scope, id).await {
        Ok(mut k) => {
            k.secret = None;
            ctx.listings.remember(p, scope, &k).await;
            Ok(Some(k))
        }
        Err(ProviderError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Drifted fields split into those the provider updates in place and those that need a new key.
pub fn split_drift(drifted: Vec<Field>, caps: &Capabilities) -> (Vec<Field>, Vec<Field>) {
    drifted.into_iter().partition(|f| caps.can_update(*f))
}

/// A field as a person finds it in the manifest (`spec.digitalocean`, not `spec.<provider block>`).
pub fn field_path(f: Field, p: &ResolvedProvider) -> String {
    match f {
        Field::Extras => format!("spec.{}", p.provider_type),
        Field::Workspace => format!(
            "{} spec.{}.workspaceID",
            p.id.split('/').next().unwrap_or("provider object"),
            p.provider_type
        ),
        other => other.path().to_string(),
    }
}

/// Update what can be updated in place on `key` (as `current` reports it); returns the drifted
/// fields that need a new key.
pub async fn update_in_place(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    current: &ProviderKey,
    key: &LocatedKey,
) -> Result<Vec<Field>, Failure> {
    let (r, v) = (&s.r, &s.v);
    // The spec, narrowed by the budgets that hold this key (Throttle, Disable).
    let desired = limits::wanted(r.ctx, r.ak, st, &v.settings);
    let drifted = providers::drift(r.p.backend.as_ref(), current, &desired);
    let (mut mutable, immutable) = split_drift(drifted, r.p.backend.capabilities());
    if !r.ctx.budgets.settled() {
        // Just started: a budget's throttle or disable is not undone before the budgets were
        // added up again.
        mutable.retain(|f| !limits::BUDGET_FIELDS.contains(f));
    }
    if !mutable.is_empty() {
        let updated =
            r.p.backend
                .update(&key.at, &key.id, &desired, &mutable)
                .await?;
        fill_from_key(st, &updated, r.p);
        r.ctx.listings.remember(r.p, &key.at, &updated).await;
        let fields: Vec<String> = mutable.iter().map(|f| field_path(*f, r.p)).collect();
        let note = format!("updated {} at {}", fields.join(", "), r.p.provider_type);
        r.event(EventType::Normal, Reason::KeyUpdated, "Update", note)
            .await;
    }
    Ok(immutable)
}

/// The ApiKey has key `id`: check it still exists, that the Secret holds its value, and that
/// its settings match the spec; report it.
pub async fn sync_existing(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    id: String,
) -> Result<Ready, Failure> {
    let (r, v, existing) = (&s.r, &s.v, s.existing.as_ref());
    // The key is read, updated and revoked where it lives, which a spec edit (another agent,
    // workspace…) does not change: that is a difference only a new key resolves.
    let key = LocatedKey {
        at: key_scope(st, &v.scope),
        id,
    };
    // What the provider knows about the key: a fresh GET after a spec change, otherwise the
    // shared listing (one paged listing per provider object and refresh interval).
    let spec_changed = st.observed_generation != r.ak.metadata.generation;
    let current = match observe(r.ctx, r.p, &key.at, &key.id, spec_changed).await? {
        Some(k) if k.active => k,
        _ => return restore::key_missing(s, st, &key.id).await,
    };
    fill_from_key(st, &current, r.p);
    st.key_scope = location(&key.at);

    // The Secret must hold this key's value.
    let Some(value) = restore::value_to_deliver(s, &key).await? else {
        return restore::replace_or_readopt(s, st, key).await;
    };
    // ... the value the provider has now: the key may have been rotated outside keysmith.
    let value = match outside::check(s, st, &current, &key, value).await? {
        Outside::Same(v) | Outside::NewValue(v) => v,
        Outside::Lost(why) if outside::rotates_on_loss(s) && v.settings.key_ref.is_none() => {
            let note = format!(
                "key {} was rotated outside keysmith ({why}); rotating to a new key (spec.rotation manages this key)",
                key.id
            );
            r.event(EventType::Warning, Reason::RotatedOutside, "Rotate", note)
                .await;
            return create::create(s, st, Some(key)).await;
        }
        Outside::Lost(why) => return Err(outside::lost(s, &key, &why)),
    };

    let immutable = update_in_place(s, st, &current, &key).await?;
    if !immutable.is_empty()
        && r.ak.spec.on_immutable_change == ImmutableChangePolicy::Replace
        && v.settings.key_ref.is_none()
    {
        // The replacement gets what is left of spec.limit after the old key's spend.
        let for_new = super::carry::count_replaced(r, v, st, &key).await?;
        let s = Step {
            r: *r,
            v: for_new,
            existing: s.existing.clone(),
        };
        return create::create(&s, st, Some(key)).await;
    }
    st.fields_needing_new_key = immutable.iter().map(|f| field_path(*f, r.p)).collect();
    let delivery = Delivery {
        value: &value,
        key_id: &key.id,
        hint: st.key_hint.as_deref().unwrap_or(""),
    };
    ensure_secret(r.ctx, r.ak, existing, &delivery).await?;
    Ok(after_sync(r.p, st, &r.ak.secret_name()))
}

/// What a reconcile of an existing key reports: active, or active but needing a new key.
pub fn after_sync(p: &ResolvedProvider, st: &ApiKeyStatus, secret_name: &str) -> Ready {
    if st.fields_needing_new_key.is_empty() {
        return Ready::active(p, st, secret_name);
    }
    Ready {
        reason: Reason::NewKeyNeeded,
        message: format!(
            "{} cannot change {} on an existing key; the current key stays active. Set spec.onImmutableChange: Replace to get a new key automatically, or rotate it",
            p.provider_type,
            st.fields_needing_new_key.join(", ")
        ),
        requeue: p.refresh_interval,
        rename: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::AdoptMode;

    #[test]
    fn drift_splits_by_what_the_provider_can_update() {
        let caps = Capabilities {
            mint: true,
            adopt: AdoptMode::No,
            push: false,
            supported: &[Field::DisplayName, Field::LimitAmount, Field::ExpiresAt],
            mutable: &[Field::DisplayName, Field::LimitAmount],
            secret_readable: false,
            rotation: crate::providers::RotationStrategy::MINT,
        };
        let (m, i) = split_drift(
            vec![Field::DisplayName, Field::ExpiresAt, Field::LimitAmount],
            &caps,
        );
        assert_eq!(m, [Field::DisplayName, Field::LimitAmount]);
        assert_eq!(i, [Field::ExpiresAt]);
        assert_eq!(split_drift(vec![], &caps), (vec![], vec![]));
    }
}
