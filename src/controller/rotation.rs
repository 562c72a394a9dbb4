//! Rotation decisions, without IO: the rotation plan of an ApiKey (`spec.rotation`), the next
//! scheduled moment, which trigger is due now, how each provider rotates, when the grace period
//! of a replaced key starts and which replaced keys are due for revocation.
//!
//! The reconcile driver asks these functions and performs the calls; every decision here is a
//! function of the spec, the status, the annotations and `now`, so the same inputs after an
//! operator restart give the same answer (a handled `keysmith.dev/rotate` value is recorded in
//! `status.rotation.handledRequest` and never rotates twice).
//!
//! Crash safety of a rotation (invariant 1): a rotation is a create with a `pendingCreate`
//! marker. The same status write that records the marker records `status.rotation.inProgress`
//! (the key being replaced and the trigger). A crash before the Secret holds the new value is an
//! ordinary interrupted create: the orphan is revoked and, the trigger still being due (nothing
//! recorded it as handled), the rotation runs again. A crash after the Secret was written leaves a
//! Secret naming the new key: recovery keeps it and, because `inProgress` names the replaced key,
//! moves that key to `previousKeys` with its grace period ([`retire_on_recovery`]) instead of
//! revoking it at once.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::{
    ApiKeySpec, ApiKeyStatus, KeyLocation, PreviousKey, ProviderType, RolloutStatus,
    RotationInProgress,
};
use crate::providers::{parse_duration, RotationStrategy};

/// Grace period when `spec.rotation.gracePeriod` is not set.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Longest wait for restarted workloads to roll out before the grace period starts anyway
/// (Pods that never become ready must not keep an old key alive forever).
pub const ROLLOUT_BOUND: Duration = Duration::from_secs(600);
/// Replaced keys an ApiKey may hold in their grace period; more on-demand requests wait until
/// the oldest is revoked (a loop annotating the ApiKey cannot pile up keys at the provider).
pub const MAX_PREVIOUS_KEYS: usize = 5;

/// The rotation settings of an ApiKey, parsed. On-demand rotation works without
/// `spec.rotation` (defaults: no schedule, the default grace period).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub every: Option<Duration>,
    pub renew_before: Option<Duration>,
    pub grace: Duration,
    pub allow_downtime: bool,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            every: None,
            renew_before: None,
            grace: DEFAULT_GRACE,
            allow_downtime: false,
        }
    }
}

fn field(name: &str, v: &Option<String>) -> Result<Option<Duration>, String> {
    v.as_deref()
        .map(|s| parse_duration(s).map_err(|e| format!("spec.rotation.{name}: {e}")))
        .transpose()
}

impl Plan {
    /// Parse and check `spec.rotation` (the CRD's CEL rules say the same; this also serves
    /// `keysmith render` and objects admitted before the rules existed).
    pub fn of(spec: &ApiKeySpec) -> Result<Plan, String> {
        let Some(r) = &spec.rotation else {
            return Ok(Plan::default());
        };
        let every = field("every", &r.every)?;
        let renew_before = field("renewBefore", &r.renew_before)?;
        let grace = field("gracePeriod", &r.grace_period)?.unwrap_or(DEFAULT_GRACE);
        let min = Duration::from_secs(60);
        if every.is_some_and(|e| e < min) {
            return Err("spec.rotation.every must be at least 1m".into());
        }
        if renew_before.is_some_and(|e| e < min) {
            return Err("spec.rotation.renewBefore must be at least 1m".into());
        }
        if let Some(e) = every {
            if grace >= e {
                return Err(format!(
                    "spec.rotation.gracePeriod ({}) must be shorter than spec.rotation.every ({})",
                    human(grace),
                    human(e)
                ));
            }
            if renew_before.is_some_and(|r| r >= e) {
                return Err(
                    "spec.rotation.renewBefore must be shorter than spec.rotation.every".into(),
                );
            }
        }
        if spec.source.is_some() && (every.is_some() || renew_before.is_some()) {
            return Err("a pushed key (spec.source) rotates when its source Secret changes: spec.rotation takes only gracePeriod here".into());
        }
        Ok(Plan {
            every,
            renew_before,
            grace,
            allow_downtime: r.allow_downtime,
        })
    }
}

/// A duration as Go prints it (`1h0m0s` style is noisy; this gives `1h`, `90m`, `45s`).
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn sub(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(chrono(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub use super::time::ts;

/// An RFC 3339 moment from the status, if there is one (see [`super::time::parse`]).
fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(super::time::parse)
}

/// Why a key rotates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `spec.rotation.every` has passed since the key was created or last rotated.
    Schedule,
    /// The key expires within `spec.rotation.renewBefore`.
    BeforeExpiry,
    /// A new value of the `keysmith.dev/rotate` annotation (the value).
    OnDemand(String),
    /// A pushed key's source Secret changed.
    SourceChanged,
}

impl Trigger {
    /// The metric label and the `status.rotation.inProgress.trigger` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Schedule => "Schedule",
            Trigger::BeforeExpiry => "BeforeExpiry",
            Trigger::OnDemand(_) => "OnDemand",
            Trigger::SourceChanged => "SourceChanged",
        }
    }

    /// The trigger of a rotation recorded in flight (a crash interrupted it).
    pub fn of_in_progress(p: &RotationInProgress) -> Trigger {
        match p.trigger.as_str() {
            "OnDemand" => Trigger::OnDemand(p.request.clone().unwrap_or_default()),
            "BeforeExpiry" => Trigger::BeforeExpiry,
            "SourceChanged" => Trigger::SourceChanged,
            _ => Trigger::Schedule,
        }
    }

    /// A sentence for Events and conditions.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Schedule => "on schedule (spec.rotation.every)".into(),
            Trigger::BeforeExpiry => "ahead of its expiry (spec.rotation.renewBefore)".into(),
            Trigger::OnDemand(v) => format!("on demand (keysmith.dev/rotate={v})"),
            Trigger::SourceChanged => "after its source Secret changed".into(),
        }
    }
}

/// What the schedule is measured from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// When the current key was created (status.createdAt; the driver falls back to the
    /// ApiKey's creationTimestamp when the provider does not say).
    pub created_at: Option<DateTime<Utc>>,
    /// status.lastRotatedAt.
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// When the current key expires (status.expiresAt).
    pub expires_at: Option<DateTime<Utc>>,
}

impl Clock {
    /// From the status, with `fallback_created` for a provider that reports no creation time.
    pub fn of(st: &ApiKeyStatus, fallback_created: Option<DateTime<Utc>>) -> Clock {
        Clock {
            created_at: parse_time(st.created_at.as_deref()).or(fallback_created),
            last_rotated_at: parse_time(st.last_rotated_at.as_deref()),
            expires_at: parse_time(st.expires_at.as_deref()),
        }
    }

    /// The start of the renewal window of the current expiry, unless the key was already
    /// rotated inside it. With a fixed `spec.expiresAt` every new key gets the same expiry:
    /// one rotation inside the window is all a rotation can do, and another would loop.
    fn renewal(&self, plan: &Plan) -> Option<DateTime<Utc>> {
        let window = sub(self.expires_at?, plan.renew_before?);
        match self.last_rotated_at {
            Some(r) if r >= window => None,
            _ => Some(window),
        }
    }

    fn schedule(&self, plan: &Plan) -> Option<DateTime<Utc>> {
        let base = self.last_rotated_at.or(self.created_at)?;
        Some(add(base, plan.every?))
    }

    /// `status.nextRotationAt`: the next scheduled moment (every, or renewBefore ahead of
    /// expiry, whichever comes first), `None` without a schedule.
    pub fn next(&self, plan: &Plan) -> Option<DateTime<Utc>> {
        match (self.schedule(plan), self.renewal(plan)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the driver should do about rotation now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing; the next scheduled moment, if any (requeue then).
    No(Option<DateTime<Utc>>),
    /// Rotate now.
    Now(Trigger),
    /// A rotation is due but must wait (a message for the condition, and when to look again).
    Held(Trigger, String, Option<DateTime<Utc>>),
    /// An on-demand request that cannot be honoured (a pushed key: its value is the user's).
    /// The driver records it in `handledRequest` and says why in a Warning Event, once.
    Ignored(String, String),
}

/// Inputs of [`due`] beyond the plan and the clock.
#[derive(Clone, Debug, Default)]
pub struct State<'a> {
    /// A current key exists (nothing to rotate before the first create).
    pub has_key: bool,
    /// The key's value comes from a Secret of the user (push).
    pub pushed: bool,
    /// The `keysmith.dev/rotate` annotation of the ApiKey.
    pub request: Option<&'a str>,
    /// `status.rotation.handledRequest`.
    pub handled_request: Option<&'a str>,
    /// `status.rotation.inProgress`: a rotation a crash interrupted resumes first.
    pub in_progress: Option<&'a RotationInProgress>,
    /// `status.previousKeys.len()`.
    pub previous_keys: usize,
    /// The earliest `deleteAfter` of the previous keys (when a held request may go).
    pub earliest_delete_after: Option<DateTime<Utc>>,
    /// The ApiKey spent its create budget until then (`status.recentCreates` against the
    /// provider object's `createLimit.perApiKeyPerHour`): a rotation that mints waits.
    pub budget_spent_until: Option<DateTime<Utc>>,
}

/// An on-demand request not handled yet.
pub fn new_request<'a>(request: Option<&'a str>, handled: Option<&str>) -> Option<&'a str> {
    request
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .filter(|v| Some(*v) != handled.map(str::trim))
}

/// Which trigger is due at `now`, in this order: an interrupted rotation, an on-demand request,
/// renewal before expiry, the schedule (a pushed key follows its source in `apikey/push.rs`).
pub fn due(plan: &Plan, clock: &Clock, s: &State<'_>, now: DateTime<Utc>) -> Due {
    if let Some(p) = s.in_progress {
        return Due::Now(Trigger::of_in_progress(p));
    }
    if !s.has_key {
        return Due::No(None);
    }
    if s.pushed {
        // A changed source is the push step's (`apikey/push.rs`), not a rotation that is due.
        return if let Some(v) = new_request(s.request, s.handled_request) {
            Due::Ignored(
                v.to_string(),
                "this key's value comes from spec.source: change that Secret to rotate it (keysmith pushes the new value and keeps the old one for the grace period)".into(),
            )
        } else {
            Due::No(None)
        };
    }
    let next = clock.next(plan);
    let trigger = if let Some(v) = new_request(s.request, s.handled_request) {
        Trigger::OnDemand(v.to_string())
    } else if clock.renewal(plan).is_some_and(|t| t <= now) {
        Trigger::BeforeExpiry
    } else if clock.schedule(plan).is_some_and(|t| t <= now) {
        Trigger::Schedule
    } else {
        return Due::No(next);
    };
    if s.previous_keys >= MAX_PREVIOUS_KEYS {
        let when = s.earliest_delete_after;
        return Due::Held(
            trigger,
            format!(
                "{} replaced keys are still in their grace period; the rotation waits until the oldest is revoked{}",
                s.previous_keys,
                when.map(|t| format!(" at {}", ts(t))).unwrap_or_default()
            ),
            when,
        );
    }
    if let Some(when) = s.budget_spent_until {
        return Due::Held(
            trigger,
            format!(
                "{BUDGET_HELD} (spec.createLimit.perApiKeyPerHour of its provider object); it runs at {}",
                ts(when)
            ),
            Some(when),
        );
    }
    Due::Now(trigger)
}

/// How a rotation held by the create budget starts its message.
pub const BUDGET_HELD: &str = "this ApiKey spent its create budget for the hour";

/// How a key is rotated; which one a provider uses is its data
/// ([`crate::providers::Capabilities::rotation`]).
pub use crate::providers::Rotation as Strategy;

/// How the key came to be, for [`strategy`].
#[derive(Clone, Debug, Default)]
pub struct KeyKind {
    /// Adopted with `spec.keyRef`: a rotation must keep the key id the spec names.
    pub adopted: bool,
    /// Pushed from `spec.source`.
    pub pushed: bool,
}

/// How `provider` rotates this key, by its [`RotationStrategy`], or the message of a
/// `Ready=False, reason=UnsupportedField` condition saying why it cannot.
pub fn strategy(
    provider: ProviderType,
    rotation: &RotationStrategy,
    key: &KeyKind,
    plan: &Plan,
) -> Result<Strategy, String> {
    let how = if key.pushed {
        rotation.pushed.ok_or_else(|| {
            format!("{provider} keys do not take a pushed value, so they cannot rotate from one")
        })?
    } else if key.adopted {
        rotation.adopted.ok_or_else(|| {
            format!(
                "rotating an adopted key at {provider} would create a new key that spec.keyRef does not name: create an ApiKey without keyRef to have keysmith rotate it"
            )
        })?
    } else {
        rotation.minted
    };
    if how == Strategy::Regenerate && !plan.allow_downtime {
        return Err(format!("{provider} can only rotate this key with regenerate, which stops the old value at once (no grace period): set spec.rotation.allowDowntime: true to rotate it anyway; rolloutRestartTargets restart right after"));
    }
    Ok(how)
}

/// The status record written with `pendingCreate` before the new key is asked for.
pub fn in_progress(
    trigger: &Trigger,
    key_id: &str,
    scope: Option<KeyLocation>,
    now: DateTime<Utc>,
) -> RotationInProgress {
    RotationInProgress {
        trigger: trigger.as_str().to_string(),
        request: match trigger {
            Trigger::OnDemand(v) => Some(v.clone()),
            _ => None,
        },
        key_id: key_id.to_string(),
        scope,
        started_at: ts(now),
    }
}

/// When the grace period of a key replaced at `now` may end, before any rollout is seen: with
/// restart targets the grace starts after the rollout, at the latest [`ROLLOUT_BOUND`] after
/// the restart, so this is the upper bound ([`settle_after_rollout`] brings it forward).
pub fn delete_after(plan: &Plan, restarts: bool, now: DateTime<Utc>) -> DateTime<Utc> {
    let start = if restarts {
        add(now, ROLLOUT_BOUND)
    } else {
        now
    };
    add(start, plan.grace)
}

/// The previous-key entry for a key replaced at `now`.
pub fn previous_key(
    key_id: &str,
    scope: Option<KeyLocation>,
    plan: &Plan,
    restarts: bool,
    now: DateTime<Utc>,
) -> PreviousKey {
    PreviousKey {
        key_id: key_id.to_string(),
        delete_after: ts(delete_after(plan, restarts, now)),
        scope,
    }
}

/// Everything a finished rotation writes into the status (the caller has already set the new
/// key's id and pushed the replaced key to `previousKeys` where the strategy keeps one).
pub fn record_done(
    st: &mut ApiKeyStatus,
    plan: &Plan,
    trigger: &Trigger,
    fallback_created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    st.last_rotated_at = Some(ts(now));
    let r = st.rotation.get_or_insert_with(Default::default);
    r.in_progress = None;
    if let Trigger::OnDemand(v) = trigger {
        r.handled_request = Some(v.clone());
    }
    st.next_rotation_at = Clock::of(st, fallback_created).next(plan).map(ts);
}

/// A crash interrupted a rotation after the Secret received the new key `new_id`: the
/// replaced key (named by `inProgress`) gets its grace period from `now`, and the rotation is
/// recorded as done. Returns the entry for `previousKeys` (none when the key kept its id).
pub fn retire_on_recovery(
    st: &mut ApiKeyStatus,
    plan: &Plan,
    restarts: bool,
    new_id: &str,
    fallback_created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<PreviousKey> {
    let p = st.rotation.as_ref()?.in_progress.clone()?;
    let prev =
        (p.key_id != new_id).then(|| previous_key(&p.key_id, p.scope.clone(), plan, restarts, now));
    record_done(
        st,
        plan,
        &Trigger::of_in_progress(&p),
        fallback_created,
        now,
    );
    prev
}

/// Where the grace period of the last rotation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraceStart {
    /// No restart to wait for.
    NoRollout,
    /// The grace period runs from this moment.
    At(DateTime<Utc>),
    /// Still waiting for these workloads (kind/name) until the bound.
    Waiting {
        pending: Vec<String>,
        until: DateTime<Utc>,
    },
}

/// When the grace period starts after restarts: when every target has rolled out (observed at
/// `now`), or at `graceStartsBy`, whichever comes first.
pub fn grace_start(rollout: Option<&RolloutStatus>, now: DateTime<Utc>) -> GraceStart {
    let Some(r) = rollout else {
        return GraceStart::NoRollout;
    };
    let bound = parse_time(Some(&r.grace_starts_by)).unwrap_or(now);
    let pending: Vec<String> = r
        .targets
        .iter()
        .filter(|t| !t.rolled_out)
        .map(|t| format!("{}/{}", t.kind, t.name))
        .collect();
    if pending.is_empty() {
        GraceStart::At(now.min(bound))
    } else if now >= bound {
        GraceStart::At(bound)
    } else {
        GraceStart::Waiting {
            pending,
            until: bound,
        }
    }
}

/// The rollout finished (or its bound passed) at `start`: previous keys whose `deleteAfter`
/// was the upper bound now end their grace period at `start + grace`. Keys already due earlier
/// keep their moment. Returns whether anything changed.
pub fn settle_after_rollout(prev: &mut [PreviousKey], plan: &Plan, start: DateTime<Utc>) -> bool {
    let end = add(start, plan.grace);
    let mut changed = false;
    for p in prev {
        if parse_time(Some(&p.delete_after)).is_none_or(|t| t > end) {
            p.delete_after = ts(end);
            changed = true;
        }
    }
    changed
}

/// When the reconcile that revokes the next replaced key must run: the earliest `deleteAfter` of
/// the keys still listed, **including one already past** (an unreadable one counts as past).
///
/// The requeue of a reconcile is computed at its end, while its revoke step
/// ([`revocations_due`] at its start) looked earlier: a deadline that passed in between (the
/// provider and API calls take time, and a jittered requeue can come a moment early) left the
/// key listed and not yet revoked. Counting only future deadlines, as the next moment of
/// [`revocations_due`] does, dropped that key from the requeue, and nothing revoked it until the
/// next refresh (status writes trigger no reconcile).
pub fn next_revocation(prev: &[PreviousKey]) -> Option<DateTime<Utc>> {
    prev.iter()
        .map(|p| parse_time(Some(&p.delete_after)).unwrap_or(DateTime::<Utc>::MIN_UTC))
        .min()
}

/// The previous keys due for revocation at `now` (indices into `prev`), and the next moment one
/// becomes due (to requeue then). A `deleteAfter` that does not parse is due (it cannot be
/// honoured, and a key must not live forever because of it).
pub fn revocations_due(
    prev: &[PreviousKey],
    now: DateTime<Utc>,
) -> (Vec<usize>, Option<DateTime<Utc>>) {
    let mut due = Vec::new();
    let mut next: Option<DateTime<Utc>> = None;
    for (i, p) in prev.iter().enumerate() {
        match parse_time(Some(&p.delete_after)) {
            Some(t) if t > now => next = Some(next.map_or(t, |n| n.min(t))),
            _ => due.push(i),
        }
    }
    (due, next)
}

#[cfg(test)]
mod tests;
