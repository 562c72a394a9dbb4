//! Rotating a key (issue 12): the decisions come from [`crate::controller::rotation`] (pure);
//! this step performs them.
//!
//! - [`rotate`] runs before the sync of an existing key: when a trigger is due it mints a new
//!   key (a create with the `pendingCreate` marker, written together with
//!   `status.rotation.inProgress`), or regenerates in place where that is the provider's only
//!   way; the replaced key goes to `previousKeys` with its grace period.
//! - [`recovered`] finishes a rotation a crash interrupted after the Secret received the new key.
//! - [`repush_settings`] / [`replaced_by_push`]: a pushed key whose source Secret changed.
//!
//! What follows a new value (restarts, the rollout, the grace period's start, `nextRotationAt`)
//! is `rollout`'s, which runs after every successful reconcile.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::reasons::Reason;
use super::super::rotation::{
    due, in_progress, previous_key, record_done, retire_on_recovery, revocations_due, strategy,
    Clock, Due, KeyKind, Plan, State, Strategy, Trigger,
};
use super::create;
use super::deliver::{dry_run, ensure_secret, Delivery};
use super::scope::{key_scope, location, LocatedKey};
use super::status::{fill_from_key, write_status, Ready};
use super::step::{Reconciler, Step};
use crate::api::{ApiKey, ApiKeyStatus, PreviousKey, ROTATE_ANNOTATION};
use crate::controller::error::Failure;
use crate::controller::fairness::{budget_spent_until, record_create};
use crate::providers::KeySettings;

/// The rotation plan of the ApiKey; a malformed `spec.rotation` is an InvalidSpec.
pub fn plan(ak: &ApiKey) -> Result<Plan, Failure> {
    Plan::of(&ak.spec).map_err(|m| Failure::permanent(Reason::InvalidSpec, m))
}

/// The ApiKey's creation, for providers that do not say when the key was created.
pub(super) fn fallback_created(ak: &ApiKey) -> Option<DateTime<Utc>> {
    let t = ak.metadata.creation_timestamp.as_ref()?;
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

pub(super) fn request(ak: &ApiKey) -> Option<&str> {
    ak.annotations().get(ROTATE_ANNOTATION).map(String::as_str)
}

pub(super) fn has_targets(ak: &ApiKey) -> bool {
    !ak.spec.rollout_restart_targets.is_empty()
}

/// The replaced key stays live for its grace period (`previousKeys[].deleteAfter`).
fn keep_in_grace(
    st: &mut ApiKeyStatus,
    ak: &ApiKey,
    old: &LocatedKey,
    plan: &Plan,
    now: DateTime<Utc>,
) {
    st.previous_keys.push(previous_key(
        &old.id,
        location(&old.at),
        plan,
        has_targets(ak),
        now,
    ));
}

pub(super) fn state<'a>(
    r: &Reconciler<'a>,
    st: &'a ApiKeyStatus,
    pushed: bool,
    now: DateTime<Utc>,
) -> State<'a> {
    let ak = r.ak;
    let earliest = revocations_due(&st.previous_keys, DateTime::<Utc>::MIN_UTC).1;
    State {
        budget_spent_until: budget_spent_until(
            &st.recent_creates,
            r.p.create_limits.per_api_key_per_hour,
            now,
        ),
        has_key: st.key_id.is_some(),
        pushed,
        request: request(ak),
        handled_request: st
            .rotation
            .as_ref()
            .and_then(|r| r.handled_request.as_deref()),
        in_progress: st.rotation.as_ref().and_then(|r| r.in_progress.as_ref()),
        previous_keys: st.previous_keys.len(),
        earliest_delete_after: earliest,
    }
}

/// Record a finished rotation in `status.history` (`st`: the status holding the new key).
fn remember(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    trigger: &Trigger,
    how: Strategy,
    old: &str,
    new: &str,
) {
    let leak = plan(r.ak).is_ok_and(|p| p.grace.is_zero());
    let in_place = matches!(how, Strategy::Regenerate) && old == new;
    crate::controller::history::rotated(
        st,
        r.ak,
        trigger.as_str(),
        leak,
        old,
        new,
        in_place,
        Utc::now(),
    );
}

/// Count a finished rotation and say so.
async fn rotated(r: &Reconciler<'_>, trigger: &Trigger, how: Strategy, old: &str, new: &str) {
    r.ctx
        .metrics
        .rotated(&r.p.provider_type.to_string(), trigger.as_str());
    let note = if old == new {
        format!(
            "rotated key {new} at {} {} ({})",
            r.p.provider_type,
            trigger.describe(),
            how.as_str()
        )
    } else {
        format!(
            "rotated key {old} to {new} at {} {} ({}); the new value is in Secret {}",
            r.p.provider_type,
            trigger.describe(),
            how.as_str(),
            r.ak.secret_name()
        )
    };
    r.event(EventType::Normal, Reason::KeyRotated, "Rotate", note)
        .await;
}

/// Rotate the current key `id` when a trigger is due. `Some(ready)` when this reconcile
/// rotated (the Secret holds the new value); `None` to go on with the sync.
pub async fn rotate(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    id: &str,
) -> Result<Option<Ready>, Failure> {
    let (r, v, existing) = (&s.r, &s.v, s.existing.as_ref());
    let plan = plan(r.ak)?;
    let now = Utc::now();
    let clock = Clock::of(st, fallback_created(r.ak));
    let trigger = match due(&plan, &clock, &state(r, st, false, now), now) {
        Due::Now(t) => t,
        Due::No(_) | Due::Held(..) | Due::Ignored(..) => return Ok(None),
    };
    let kind = KeyKind {
        adopted: v.settings.key_ref.is_some(),
        pushed: false,
    };
    let rotation = &r.p.backend.capabilities().rotation;
    let how = strategy(r.p.provider_type, rotation, &kind, &plan)
        .map_err(|m| Failure::permanent(Reason::UnsupportedField, m))?;
    let old = LocatedKey {
        at: key_scope(st, &v.scope),
        id: id.to_string(),
    };
    let flight = in_progress(&trigger, &old.id, location(&old.at), now);
    let not_started = st.rotation.clone();
    st.rotation.get_or_insert_with(Default::default).in_progress = Some(flight);
    match how {
        Strategy::MintNewThenRevoke => {
            // The new key gets what is left of spec.limit after the old key's spend (issue 21);
            // that count goes into the status with the create's marker.
            let for_new = super::carry::count_replaced(r, v, st, &old).await?;
            // The marker write of the create carries `inProgress` (invariant 1).
            let with_left = Step {
                r: *r,
                v: for_new,
                existing: s.existing.clone(),
            };
            let ready = match create::create(&with_left, st, None).await {
                Ok(ready) => ready,
                Err(f) if waits_its_turn(&f) && st.pending_create.is_none() => {
                    // Nothing was written or sent: the current key stays Ready and the
                    // rotation runs when the namespace's share or the budget allows.
                    st.rotation = not_started;
                    return Ok(Some(deferred(r, st, &trigger, &f)));
                }
                Err(f) => return Err(f),
            };
            let new = st.key_id.clone().unwrap_or_default();
            if new != old.id {
                keep_in_grace(st, r.ak, &old, &plan, now);
            }
            record_done(st, &plan, &trigger, fallback_created(r.ak), now);
            remember(r, st, &trigger, how, &old.id, &new);
            rotated(r, &trigger, how, &old.id, &new).await;
            // The old key may spend no more than it has (both keys together stay within
            // spec.limit); a failure here is retried by the next reconcile's steps.
            if let Err(f) = super::carry::hold_replaced(r, v, st).await {
                tracing::debug!(
                    reason = f.reason.as_str(),
                    "replaced key's limit not lowered yet"
                );
            }
            Ok(Some(ready))
        }
        Strategy::Regenerate => {
            // The old value dies with the regenerate: first make sure the Secret can take the
            // new one (quota, admission, a type it cannot change to), as create does.
            dry_run(r.ctx, r.ak, existing).await?;
            // A regenerate mints a value like a create: same budget, same fair share.
            if let Err(f) = create::budget_gate(r, st, now).and_then(|()| create::take_share(r)) {
                st.rotation = not_started;
                return Ok(Some(deferred(r, st, &trigger, &f)));
            }
            record_create(&mut st.recent_creates, now);
            // Recorded first: a crash after the provider answered leaves `inProgress`, and the
            // next reconcile regenerates again (the value the crash lost is dead either way).
            write_status(r.ctx, r.ak, st, r.seen).await?;
            let created = r.p.backend.regenerate(&old.at, &old.id).await?;
            let mut next = st.clone();
            fill_from_key(&mut next, &created.key, r.p);
            record_done(&mut next, &plan, &trigger, fallback_created(r.ak), now);
            let delivery = Delivery {
                value: &created.secret,
                key_id: &created.key.id,
                hint: next.key_hint.as_deref().unwrap_or(""),
            };
            // The Secret is rendered from the status after the rotation (its key-hash).
            let mut rotated_ak = r.ak.clone();
            rotated_ak.status = Some(next.clone());
            ensure_secret(r.ctx, &rotated_ak, existing, &delivery).await?;
            *st = next;
            let new = created.key.id.clone();
            if new != old.id {
                // A rotate that answered with a new id: the old id still names a key.
                keep_in_grace(st, r.ak, &old, &plan, now);
            }
            remember(r, st, &trigger, how, &old.id, &new);
            rotated(r, &trigger, how, &old.id, &new).await;
            Ok(Some(Ready::active(r.p, st, &r.ak.secret_name())))
        }
        Strategy::RepushWithGrace => Err(Failure::permanent(
            Reason::UnsupportedField,
            "a pushed key rotates when its source Secret changes",
        )),
    }
}

/// A create that waits for keysmith's own limits (the namespace's share of the create rate,
/// the ApiKey's budget), not for the provider.
fn waits_its_turn(f: &Failure) -> bool {
    matches!(
        f.reason,
        Reason::CreateThrottled | Reason::CreateBudgetExhausted
    )
}

/// The current key stays Ready while its rotation waits for `f` (a wait of keysmith's own).
fn deferred(r: &Reconciler<'_>, st: &ApiKeyStatus, trigger: &Trigger, f: &Failure) -> Ready {
    let mut ready = Ready::active(r.p, st, &r.ak.secret_name());
    ready.message = format!(
        "{}; rotation {} waits: {}",
        ready.message,
        trigger.describe(),
        f.message
    );
    ready.requeue = f
        .retry_after
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(100));
    ready
}

/// Recovery found the Secret holding `new_id`, the key of an interrupted rotation: the
/// replaced key gets its grace period (it is not revoked at once) and the rotation is recorded.
/// Returns the entry for `previousKeys`. The rotation is announced by [`announce_recovered`]
/// once the status holding it is written (a reconcile from a stale copy recovers too, and its
/// conclusions are dropped).
pub fn recovered(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    new_id: &str,
) -> Result<Option<PreviousKey>, Failure> {
    let plan = plan(r.ak)?;
    Ok(retire_on_recovery(
        st,
        &plan,
        has_targets(r.ak),
        new_id,
        fallback_created(r.ak),
        Utc::now(),
    ))
}

/// The rotation in flight, if any (before recovery).
pub fn flight(st: &ApiKeyStatus) -> Option<crate::api::RotationInProgress> {
    st.rotation.as_ref().and_then(|r| r.in_progress.clone())
}

/// After the recovered status was written: count and announce the rotation it finished.
pub async fn announce_recovered(
    r: &Reconciler<'_>,
    flight: Option<crate::api::RotationInProgress>,
    st: &ApiKeyStatus,
) {
    let Some(f) = flight.filter(|_| !super::attempt::in_flight(st)) else {
        return;
    };
    let Some(new) = st.key_id.as_deref().filter(|id| *id != f.key_id) else {
        return;
    };
    if st.last_rotated_at.is_none() {
        return;
    }
    rotated(
        r,
        &Trigger::of_in_progress(&f),
        Strategy::MintNewThenRevoke,
        &f.key_id,
        new,
    )
    .await;
}

/// The settings of a pushed key that a rotation created: the new value goes to a new key whose
/// id and name derive from the source version (a repeated push of the same version finds the
/// same key; gateways such as Bifrost want names unique across keys, and the old key keeps its
/// name until its grace period ends).
pub fn repush_settings(settings: &KeySettings, source_version: Option<&str>) -> KeySettings {
    let v = source_version.unwrap_or("0");
    let mut s = settings.clone();
    s.uid = format!("{}/{v}", s.uid);
    s.name = format!("{}-v{v}", s.name);
    s
}

/// The settings the current pushed key was made with: plain before its first rotation, those
/// of [`repush_settings`] for its source version after.
pub fn pushed_settings(settings: &KeySettings, st: &ApiKeyStatus) -> KeySettings {
    if st.last_rotated_at.is_some() {
        repush_settings(settings, st.source_version.as_deref())
    } else {
        settings.clone()
    }
}

/// A pushed key was replaced by a new one after its source Secret changed: the old key stays
/// for the grace period; the rotation is recorded.
pub async fn replaced_by_push(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    old: LocatedKey,
) -> Result<(), Failure> {
    let plan = plan(r.ak)?;
    let now = Utc::now();
    let new = st.key_id.clone().unwrap_or_default();
    keep_in_grace(st, r.ak, &old, &plan, now);
    let trigger = Trigger::SourceChanged;
    record_done(st, &plan, &trigger, fallback_created(r.ak), now);
    remember(r, st, &trigger, Strategy::RepushWithGrace, &old.id, &new);
    rotated(r, &trigger, Strategy::RepushWithGrace, &old.id, &new).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repush_derives_a_new_key_per_source_version() {
        let s = KeySettings {
            uid: "u".into(),
            ..Default::default()
        };
        assert_eq!(repush_settings(&s, Some("42")).uid, "u/42");
        assert_ne!(
            repush_settings(&s, Some("42")).uid,
            repush_settings(&s, Some("43")).uid
        );
    }
}
