//! Holding `spec.limit` across key generations (issue 21 §1), the steps' side of it: before a
//! key is replaced its spend in the period is counted ([`count_replaced`]), once replaced its
//! limit is lowered to that spend ([`hold_replaced`]), and every step that creates or updates a
//! key takes the limit left from [`apply`]. The arithmetic (what is left, the carry-over, the
//! budgets' narrowing) is pure and lives in [`crate::controller::limits`], which imports no step.

use chrono::{DateTime, Utc};

use super::scope::{key_scope, scope_at, LocatedKey};
use super::status::fill_from_key;
use super::step::Reconciler;
use super::validate::ValidatedApiKey;
use crate::api::{ApiKeyStatus, ProviderBlock};
use crate::controller::error::Failure;
use crate::controller::limits::{active, carry, decimal, left, own_limit, period_end, spend_of};
use crate::providers::{Field, Limit};

/// The validated settings with the limit [`left`] for the current key now; an expired
/// carry-over is dropped from the status. Every step that creates or updates a key takes its
/// limit from here.
pub fn apply(v: ValidatedApiKey, st: &mut ApiKeyStatus, now: DateTime<Utc>) -> ValidatedApiKey {
    let carry = st.limit_carry_over.as_deref();
    if carry.is_some() && active(v.settings.limit.as_ref(), carry, now).is_none() {
        st.limit_carry_over = None;
    }
    let mut v = v;
    v.settings.limit = left(
        v.settings.limit.as_ref(),
        st.limit_carry_over.as_deref(),
        st.key_id.as_deref(),
        now,
    );
    v
}

/// Whether the provider can hold a limit across keys: it takes `spec.limit` and changes it on
/// an existing key.
fn can_hold(r: &Reconciler<'_>) -> bool {
    let caps = r.p.backend.capabilities();
    caps.supports(Field::LimitAmount) && caps.can_update(Field::LimitAmount)
}

/// The current key `old` is about to be replaced: count what it has spent in the period, so
/// that the new key is created with what is left. Returns the settings for the new key. Call
/// before the create: the carry-over goes into the status with the create's marker, before the
/// provider is asked. The old key's own limit is lowered by [`hold_replaced`] once it is
/// replaced (until then it is the current key and keeps its limit: a rotation that waits for
/// its turn must not starve the key in use).
pub async fn count_replaced(
    r: &Reconciler<'_>,
    v: &ValidatedApiKey,
    st: &mut ApiKeyStatus,
    old: &LocatedKey,
) -> Result<ValidatedApiKey, Failure> {
    let now = Utc::now();
    let mut next = clone(v);
    let Some(spec) = spec_limit(r).filter(|_| can_hold(r)) else {
        return Ok(next);
    };
    let current = match r.p.backend.get(&old.at, &old.id).await {
        Ok(k) => k,
        Err(crate::providers::ProviderError::NotFound(_)) => return Ok(next),
        Err(e) => return Err(e.into()),
    };
    if let Some(spent) = spend_of(&current, spec.reset) {
        carry(
            st,
            &spec,
            &old.id,
            spent,
            period_end(&spec, &current, now),
            now,
        );
    }
    next.settings.limit = left(Some(&spec), st.limit_carry_over.as_deref(), None, now);
    Ok(next)
}

/// Lower the limit of every replaced key still live (`previousKeys`) to what it has spent in
/// the period, once, and count that spend (so a key replaced before a crash, by a spec change or
/// before this feature existed is held too). When the count grew, the current key gets the
/// smaller limit left at once. Quiet when every replaced key is held already. Returns a note
/// for the Ready message when the provider cannot hold the limit.
pub async fn hold_replaced(
    r: &Reconciler<'_>,
    v: &ValidatedApiKey,
    st: &mut ApiKeyStatus,
) -> Result<Option<String>, Failure> {
    let Some(spec) = spec_limit(r) else {
        // UCloud's caps live in its own block and are per key: say so while two keys are live.
        let capped = matches!(
            r.ak.spec.provider_block(),
            Some(ProviderBlock::UCloud(u))
                if u.daily_limit_amount.is_some() || u.monthly_limit_amount.is_some()
        );
        return Ok((capped && !st.previous_keys.is_empty()).then(|| {
            not_held(
                r,
                "caps spend per key (spec.ucloud.dailyLimitAmount, monthlyLimitAmount)",
            )
        }));
    };
    if st.previous_keys.is_empty() {
        return Ok(None);
    }
    if !can_hold(r) {
        return Ok(Some(not_held(
            r,
            "cannot change the limit of an existing key",
        )));
    }
    let now = Utc::now();
    let before = left(
        Some(&spec),
        active(Some(&spec), st.limit_carry_over.as_deref(), now),
        st.key_id.as_deref(),
        now,
    );
    let mut note = None;
    for prev in st.previous_keys.clone() {
        let held = active(Some(&spec), st.limit_carry_over.as_deref(), now).is_some_and(|c| {
            c.keys
                .iter()
                .any(|k| k.key_id == prev.key_id && k.limit_lowered)
        });
        if held {
            continue;
        }
        let at = scope_at(prev.scope.as_ref(), &v.scope);
        let key = match r.p.backend.get(&at, &prev.key_id).await {
            Ok(k) => k,
            Err(crate::providers::ProviderError::NotFound(_)) => {
                // Gone: it spends nothing more. Counted at what it was last seen spending.
                carry(st, &spec, &prev.key_id, 0, None, now);
                mark_lowered(st, &prev.key_id);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(spent) = spend_of(&key, spec.reset) else {
            note = Some(not_held(r, "reports no spend for the limit's period"));
            continue;
        };
        let mut frozen = v.settings.clone();
        frozen.limit = Some(Limit {
            amount: decimal(spent),
            reset: spec.reset,
        });
        let updated =
            r.p.backend
                .update(&at, &prev.key_id, &frozen, &[Field::LimitAmount])
                .await?;
        // Spend that landed between the read and the update counts too.
        let spent = spend_of(&updated, spec.reset).map_or(spent, |s| s.max(spent));
        carry(
            st,
            &spec,
            &prev.key_id,
            spent,
            period_end(&spec, &key, now),
            now,
        );
        mark_lowered(st, &prev.key_id);
        tracing::debug!(key = %prev.key_id, spent = %decimal(spent), "replaced key's limit lowered to its spend");
    }
    let after = left(
        Some(&spec),
        st.limit_carry_over.as_deref(),
        st.key_id.as_deref(),
        now,
    );
    if after != before {
        if let (Some(id), Some(limit)) = (st.key_id.clone(), after) {
            let at = key_scope(st, &v.scope);
            let mut s = v.settings.clone();
            s.limit = Some(limit);
            let updated =
                r.p.backend
                    .update(&at, &id, &s, &[Field::LimitAmount])
                    .await?;
            fill_from_key(st, &updated, r.p);
            r.ctx.listings.remember(r.p, &at, &updated).await;
        }
    }
    Ok(note)
}

fn mark_lowered(st: &mut ApiKeyStatus, key: &str) {
    if let Some(c) = st.limit_carry_over.as_mut() {
        if let Some(k) = c.keys.iter_mut().find(|k| k.key_id == key) {
            k.limit_lowered = true;
        }
    }
}

/// `spec.limit` of the ApiKey, normalised as the settings carry it.
pub fn spec_limit(r: &Reconciler<'_>) -> Option<Limit> {
    own_limit(r.ak)
}

fn clone(v: &ValidatedApiKey) -> ValidatedApiKey {
    ValidatedApiKey {
        settings: v.settings.clone(),
        scope: v.scope.clone(),
    }
}

fn not_held(r: &Reconciler<'_>, why: &str) -> String {
    format!(
        "the spend limit is not held across keys: {} {why}, so the replaced key keeps its own limit during its grace period",
        r.p.provider_type
    )
}
