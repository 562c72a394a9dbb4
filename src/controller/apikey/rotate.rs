//! Rotating a key (issue 12): the decisions come from [`crate::controller::rotation`] (pure);
//! this step performs them.
//!
//! - [`rotate`] runs before the sync of an existing key: when a trigger is due it mints a new
//!   key (a create with the `pendingCreate` marker, written together with
//!   `status.rotation.inProgress`), or regenerates in place where that is the provider's only
//!   way; the replaced key goes to `previousKeys` with its grace period.
//! - [`recovered`] finishes a rotation a crash interrupted after the Secret received the new key.
//! - [`repush_settings`] / [`replaced_by_push`]: a pushed key whose source Secret changed.
//! - [`finish`] runs after every successful reconcile: the first key records the pending
//!   on-demand request as handled, a new value restarts `rolloutRestartTargets` (debounced),
//!   the rollout is followed until the grace period may start, `nextRotationAt` is written and
//!   the reconcile requeues at the next moment anything is due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::limits;
use super::super::reasons::Reason;
use super::super::restart::{self, Outcome};
use super::super::rotation::{
    self, due, in_progress, previous_key, record_done, retire_on_recovery, revocations_due,
    settle_after_rollout, strategy, Clock, Due, GraceStart, KeyKind, NativeRotate, Plan, State,
    Strategy, Trigger, ROLLOUT_BOUND,
};
use super::deliver::{dry_run, ensure_secret, Delivery};
use super::status::{fill_from_key, key_scope, location, write_status, Ready};
use super::validate::ValidatedApiKey;
use super::{create, Failure, LocatedKey, Reconciler};
use crate::api::{
    ApiKey, ApiKeyStatus, PreviousKey, RolloutStatus, RolloutTarget, ROTATE_ANNOTATION,
};
use crate::controller::fairness::{budget_spent_until, record_create};
use crate::metrics::RotationTrack;
use crate::providers::KeySettings;

/// A restart the API server refused: the grace period waits for the bound, and the restart
/// is not tried again for this value (recorded as this generation in `rotation.rollout`).
const REFUSED: i64 = -1;
/// How often a reconcile looks at restarted workloads while the grace period waits for them.
const ROLLOUT_POLL: Duration = Duration::from_secs(5);

/// The rotation plan of the ApiKey; a malformed `spec.rotation` is an InvalidSpec.
pub fn plan(ak: &ApiKey) -> Result<Plan, Failure> {
    Plan::of(&ak.spec).map_err(|m| Failure::permanent(Reason::InvalidSpec, m))
}

/// The ApiKey's creation, for providers that do not say when the key was created.
fn fallback_created(ak: &ApiKey) -> Option<DateTime<Utc>> {
    let t = ak.metadata.creation_timestamp.as_ref()?;
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

fn request(ak: &ApiKey) -> Option<&str> {
    ak.annotations().get(ROTATE_ANNOTATION).map(String::as_str)
}

fn has_targets(ak: &ApiKey) -> bool {
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

fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (t - now)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}

fn state<'a>(
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
        source_changed: false,
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
    let in_place = matches!(how, Strategy::Regenerate | Strategy::NativeRotate) && old == new;
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
    r: &Reconciler<'_>,
    v: &ValidatedApiKey,
    st: &mut ApiKeyStatus,
    existing: Option<&Secret>,
    id: &str,
) -> Result<Option<Ready>, Failure> {
    let plan = plan(r.ak)?;
    let now = Utc::now();
    let clock = Clock::of(st, fallback_created(r.ak));
    let trigger = match due(&plan, &clock, &state(r, st, false, now), now) {
        Due::Now(t) => t,
        Due::No(_) | Due::Held(..) | Due::Ignored(..) => return Ok(None),
    };
    let kind = KeyKind {
        family: st
            .key_scope
            .as_ref()
            .map_or(v.scope.family.as_str(), |l| l.family.as_str()),
        adopted: v.settings.key_ref.is_some(),
        pushed: false,
    };
    let how = strategy(r.p.provider_type, &kind, &plan, NativeRotate::Unavailable)
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
            let for_new = limits::count_replaced(r, v, st, &old).await?;
            // The marker write of the create carries `inProgress` (invariant 1).
            let ready = match create::create(r, &for_new, st, existing, None).await {
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
            if let Err(f) = limits::hold_replaced(r, v, st).await {
                tracing::debug!(
                    reason = f.reason.as_str(),
                    "replaced key's limit not lowered yet"
                );
            }
            Ok(Some(ready))
        }
        Strategy::Regenerate | Strategy::NativeRotate => {
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
            fill_from_key(&mut next, &created.key);
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

/// Whether a rotation is in flight (recorded before its create).
pub fn in_flight(st: &ApiKeyStatus) -> bool {
    st.rotation
        .as_ref()
        .is_some_and(|r| r.in_progress.is_some())
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
    let Some(f) = flight.filter(|_| !in_flight(st)) else {
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

/// Whether this reconcile gave the ApiKey a new value (not its first one).
fn new_value(before: &ApiKeyStatus, st: &ApiKeyStatus) -> bool {
    before.key_id.is_some()
        && (st.key_id != before.key_id
            || st.last_rotated_at != before.last_rotated_at
            || (st.source_version.is_some() && st.source_version != before.source_version))
}

/// After a successful reconcile: record a first key's request, restart workloads after a new
/// value, follow their rollout, settle the grace period, write `nextRotationAt`, and requeue
/// at the next moment something is due.
pub async fn finish(r: &Reconciler<'_>, st: &mut ApiKeyStatus, mut ready: Ready) -> Ready {
    let Ok(plan) = Plan::of(&r.ak.spec) else {
        return ready;
    };
    let before = r.ak.status.clone().unwrap_or_default();
    let now = Utc::now();
    let pushed = r.ak.spec.source.is_some();
    if before.key_id.is_none() && st.key_id.is_some() {
        // A brand-new key is as new as a rotation would make it.
        if let Some(v) = rotation::new_request(request(r.ak), None) {
            st.rotation
                .get_or_insert_with(Default::default)
                .handled_request = Some(v.to_string());
        }
    }
    let mut notes = Vec::new();
    match due(
        &plan,
        &Clock::of(st, fallback_created(r.ak)),
        &state(r, st, pushed, now),
        now,
    ) {
        Due::Ignored(value, why) => {
            st.rotation
                .get_or_insert_with(Default::default)
                .handled_request = Some(value.clone());
            let note = format!("keysmith.dev/rotate={value} ignored: {why}");
            r.event(EventType::Warning, Reason::RotationIgnored, "Rotate", note)
                .await;
        }
        Due::Held(trigger, message, when) => {
            let note = format!("rotation {} waits: {message}", trigger.describe());
            if message.starts_with(rotation::BUDGET_HELD)
                && !said_before(&before, rotation::BUDGET_HELD)
            {
                // Once per deferral, not once per request: the Ready message says it from now
                // on, whatever requests come while the budget is spent.
                r.event(
                    EventType::Warning,
                    Reason::RotationDeferred,
                    "Rotate",
                    note.clone(),
                )
                .await;
            }
            notes.push(note);
            ready.requeue = ready
                .requeue
                .min(when.map_or(ROLLOUT_POLL * 12, |t| until(t, now)));
        }
        Due::Now(_) | Due::No(_) => {}
    }
    if new_value(&before, st) && has_targets(r.ak) {
        st.rotation.get_or_insert_with(Default::default).rollout = Some(RolloutStatus {
            restarted_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            targets: r
                .ak
                .spec
                .rollout_restart_targets
                .iter()
                .map(|t| RolloutTarget {
                    kind: t.kind,
                    name: t.name.clone(),
                    generation: None,
                    rolled_out: false,
                })
                .collect(),
            grace_starts_by: rotation::ts(
                now + chrono::Duration::from_std(ROLLOUT_BOUND).unwrap_or_default(),
            ),
        });
    }
    if let Some(wait) = follow_rollout(r, st, &plan, now, &mut notes).await {
        ready.requeue = ready.requeue.min(wait);
    }
    if st
        .rotation
        .as_ref()
        .is_some_and(|x| *x == Default::default())
    {
        st.rotation = None;
    }
    let next = Clock::of(st, fallback_created(r.ak)).next(&plan);
    st.next_rotation_at = next.map(rotation::ts);
    if let Some(t) = next {
        ready.requeue = ready.requeue.min(until(t, now));
    }
    // Every replaced key still listed, also one whose deleteAfter passed during this reconcile
    // (after retire_previous looked): that one is due now, and `until` makes it 1 s, not the
    // refresh interval (see `next_revocation`).
    if let Some(t) = rotation::next_revocation(&st.previous_keys) {
        ready.requeue = ready.requeue.min(until(t, now));
    }
    if !notes.is_empty() {
        ready.message = format!("{}; {}", ready.message, notes.join("; "));
    }
    r.ctx.metrics.track_rotation(
        &format!(
            "{}/{}",
            r.ak.namespace().unwrap_or_default(),
            r.ak.name_any()
        ),
        Some(RotationTrack {
            provider: r.p.provider_type.to_string(),
            next_rotation: next.map(|t| t.timestamp()),
            previous_keys: st.previous_keys.len() as i64,
        }),
    );
    ready
}

/// Whether the Ready condition of `before` already says `note`.
fn said_before(before: &ApiKeyStatus, note: &str) -> bool {
    before
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.message.contains(note))
}

/// When the Secret changed, for the debouncer: `restartedAt` rounded **up** to its precision
/// (it is written in milliseconds, formerly in seconds): a restart claimed in the same second
/// (or millisecond) but before the change must not count as covering it.
fn changed_at(restarted_at: &str, now: DateTime<Utc>) -> DateTime<Utc> {
    let Some(t) = rotation::parse_time(Some(restarted_at)) else {
        return now;
    };
    let precision = if restarted_at.contains('.') {
        chrono::Duration::milliseconds(1)
    } else {
        chrono::Duration::seconds(1)
    };
    t + precision
}

/// Restart what waits for a restart, look at what was restarted, and start the grace period
/// once every workload rolled out (or the bound passed). Returns when to look again.
async fn follow_rollout(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    plan: &Plan,
    now: DateTime<Utc>,
    notes: &mut Vec<String>,
) -> Option<Duration> {
    let mut rollout = st.rotation.as_ref()?.rollout.clone()?;
    let ns = r.ak.namespace().unwrap_or_default();
    let changed_at = changed_at(&rollout.restarted_at, now);
    let mut wait: Option<Duration> = None;
    let (mut restarted, mut missing) = (Vec::new(), Vec::new());
    for t in &mut rollout.targets {
        if t.generation.is_some() || t.rolled_out {
            continue;
        }
        let target = crate::api::RestartTarget {
            kind: t.kind,
            name: t.name.clone(),
        };
        let name = format!("{}/{}", t.kind, t.name);
        match restart::restart(
            &r.ctx.client,
            &r.ctx.debouncer,
            &ns,
            &target,
            changed_at,
            now,
        )
        .await
        {
            Outcome::Restarted(done) => {
                r.ctx.metrics.kube_write(t.kind.resource(), "patch");
                t.generation = done.generation;
                restarted.push(name);
            }
            // Another ApiKey's restart after this change covers it: wait for the rollout of
            // the generation that restart made.
            Outcome::Covered(by) => t.generation = by.generation,
            Outcome::Wait(d) => wait = Some(wait.map_or(d, |w| w.min(d))),
            Outcome::Missing => {
                t.rolled_out = true;
                missing.push(format!("{name} does not exist in namespace {ns}"));
            }
            Outcome::Refused(m) => {
                t.generation = Some(REFUSED);
                missing.push(format!("{name} could not be restarted: {m}"));
            }
        }
    }
    if !restarted.is_empty() {
        let note = format!(
            "restarted {} after Secret {} received a new value",
            restarted.join(", "),
            r.ak.secret_name()
        );
        r.event(EventType::Normal, Reason::RestartTriggered, "Restart", note)
            .await;
    }
    for m in &missing {
        r.event(
            EventType::Warning,
            Reason::RestartTargetMissing,
            "Restart",
            m.clone(),
        )
        .await;
    }
    for t in &mut rollout.targets {
        let Some(generation) = t.generation.filter(|g| *g >= 0) else {
            continue;
        };
        if t.rolled_out {
            continue;
        }
        let probe = RolloutTarget {
            generation: Some(generation),
            ..t.clone()
        };
        match restart::rolled_out(&r.ctx.client, &ns, &probe).await {
            Ok(Some(done)) => t.rolled_out = done,
            Ok(None) => t.rolled_out = true,
            Err(e) => {
                tracing::debug!(error = %e, workload = %t.name, "rollout status unreadable")
            }
        }
    }
    let refused_or_missing: Vec<String> = rollout
        .targets
        .iter()
        .filter(|t| t.generation == Some(REFUSED))
        .map(|t| format!("{}/{}", t.kind, t.name))
        .collect();
    match rotation::grace_start(Some(&rollout), now) {
        GraceStart::At(start) => {
            settle_after_rollout(&mut st.previous_keys, plan, start);
            if let Some(x) = st.rotation.as_mut() {
                x.rollout = None;
            }
            if !missing.is_empty() {
                notes.push(format!("restart: {}", missing.join("; ")));
            }
            None
        }
        GraceStart::Waiting { pending, until: by } => {
            notes.push(format!(
                "the grace period of the replaced key starts when {} rolled out, at the latest {}",
                pending.join(", "),
                rotation::ts(by)
            ));
            if !refused_or_missing.is_empty() || !missing.is_empty() {
                notes.push(format!("restart: {}", missing.join("; ")));
            }
            if let Some(x) = st.rotation.as_mut() {
                x.rollout = Some(rollout);
            }
            let poll = wait.unwrap_or(ROLLOUT_POLL).min(until(by, now));
            Some(poll)
        }
        GraceStart::NoRollout => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_value_is_a_changed_key_rotation_or_source() {
        let before = ApiKeyStatus {
            key_id: Some("a".into()),
            source_version: Some("1".into()),
            ..Default::default()
        };
        assert!(!new_value(&before, &before));
        let first = ApiKeyStatus::default();
        assert!(!new_value(&first, &before), "a first key restarts nothing");
        let mut other = before.clone();
        other.key_id = Some("b".into());
        assert!(new_value(&before, &other));
        let mut regenerated = before.clone();
        regenerated.last_rotated_at = Some("2026-06-01T12:00:00Z".into());
        assert!(new_value(&before, &regenerated));
        let mut pushed = before.clone();
        pushed.source_version = Some("2".into());
        assert!(new_value(&before, &pushed));
    }

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

    #[test]
    fn a_change_time_is_rounded_up_to_its_precision() {
        let now = Utc::now();
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // A restart claimed at 12:00:00.700 was before a change recorded as 12:00:00 (which
        // may have been 12:00:00.900): it must not cover it.
        let c = changed_at("2026-06-01T12:00:00Z", now);
        assert!(t("2026-06-01T12:00:00.700Z") < c);
        assert_eq!(c, t("2026-06-01T12:00:01Z"));
        let c = changed_at("2026-06-01T12:00:00.250Z", now);
        assert_eq!(c, t("2026-06-01T12:00:00.251Z"));
        assert_eq!(changed_at("garbage", now), now);
    }

    #[test]
    fn waits_are_at_least_a_second() {
        let now = Utc::now();
        assert_eq!(
            until(now - chrono::Duration::hours(1), now),
            Duration::from_secs(1)
        );
        assert_eq!(
            until(now + chrono::Duration::seconds(30), now),
            Duration::from_secs(30)
        );
    }
}
