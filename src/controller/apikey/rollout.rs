//! What follows a new value, after every successful reconcile ([`finish`]): the first key
//! records the pending on-demand request as handled, a held or ignored rotation request is
//! reported, a new value restarts `rolloutRestartTargets` (debounced), the rollout is followed
//! until the grace period of the replaced key may start, `nextRotationAt` is written and the
//! reconcile requeues at the next moment anything is due. The decisions are
//! [`crate::controller::rotation`]'s (pure); this step performs them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::reasons::Reason;
use super::super::restart::{self, Outcome};
use super::super::rotation::{
    self, due, settle_after_rollout, Clock, Due, GraceStart, Plan, ROLLOUT_BOUND,
};
use super::super::time;
use super::rotate::{fallback_created, has_targets, request, state};
use super::status::Ready;
use super::step::Reconciler;
use crate::api::{ApiKeyStatus, RolloutStatus, RolloutTarget};
use crate::metrics::RotationTrack;

/// A restart the API server refused: the grace period waits for the bound, and the restart
/// is not tried again for this value (recorded as this generation in `rotation.rollout`).
const REFUSED: i64 = -1;
/// How often a reconcile looks at restarted workloads while the grace period waits for them.
const ROLLOUT_POLL: Duration = Duration::from_secs(5);

/// How long until `t`, at least a second (a moment already past is due in a second).
fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (t - now)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
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
            restarted_at: time::ts_millis(now),
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
            grace_starts_by: time::ts(
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
    st.next_rotation_at = next.map(time::ts);
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
    let Some(t) = time::parse(restarted_at) else {
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
            &format!("{ns}/{}", r.ak.name_any()),
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
                time::ts(by)
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
