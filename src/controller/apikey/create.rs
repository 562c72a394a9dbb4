//! Creating a key: mark the attempt in the status, create, deliver the value, and retire the
//! key it replaces (see the ordering in the module doc of `apikey`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::reasons::Reason;
use super::attempt::{self, creates_under_provisional_name, provisional_name, Rename};
use super::deliver::{dry_run, ensure_secret, Delivery};
use super::revoke::revoke_quietly;
use super::scope::{location, LocatedKey};
use super::status::{fill_from_key, write_status, Ready};
use super::step::{Reconciler, Step};
use crate::api::{ApiKey, ApiKeyStatus, CreateBackoff, Expiry, PreviousKey};
use crate::controller::context::Context;
use crate::controller::error::Failure;
use crate::controller::fairness::{budget_spent_until, record_create, MAX_CREATE_HOLD};
use crate::controller::time::{self, ts};
use crate::providers::{CreatedKey, KeySettings, ProviderError};

/// The first wait after a failed create; it doubles with every further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait between two failed creates.
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// How long to wait after `failures` failed creates in a row: 10 s, 20 s, 40 s, … up to 1 h.
pub fn create_backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(BACKOFF_MAX)
}

/// Whether a failure counts as a failed create (a reconcile from a stale copy and the crash
/// test hook do not: nothing was refused; a 429 with a Retry-After holds every create of the
/// provider object already, see `CreateHolds::hold`).
fn counts_as_failed_create(f: &Failure) -> bool {
    let held = f.reason == Reason::RateLimited && f.retry_after.is_some_and(|w| !w.is_zero());
    // Waits of keysmith's own (backoff, budget, fair share) refused nothing either.
    let waiting = matches!(
        f.reason,
        Reason::CreateBackoff | Reason::CreateBudgetExhausted | Reason::CreateThrottled
    );
    // A simulated crash (test hook) stands for a process that died, not a refused create.
    #[cfg(feature = "test-hooks")]
    if f.reason == Reason::Crashed {
        return false;
    }
    !f.is_stale() && !held && !waiting
}

/// Whether a failed create was the spec's fault, so that an edit of the spec may fix it: the
/// provider refused the request, a value is invalid or unsupported, or the Secret it renders
/// cannot be written. Anything else (the provider down, rate limits, a full quota) does not
/// change with an edit, and an edit must not buy another create.
pub fn spec_caused(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::ProviderRejected
            | Reason::InvalidSpec
            | Reason::UnsupportedField
            | Reason::SecretWriteRefused
    )
}

/// Record a failed create in the status: the backoff survives status-write-triggered
/// reconciles and restarts.
pub fn record_failed_create(
    st: &mut ApiKeyStatus,
    generation: Option<i64>,
    f: &Failure,
    now: DateTime<Utc>,
) {
    let failures = st
        .create_backoff
        .as_ref()
        .map_or(0, |b| b.failures)
        .saturating_add(1);
    let mut wait = create_backoff(failures);
    if let Some(after) = f.retry_after {
        wait = wait.max(after.min(BACKOFF_MAX));
    }
    let not_before = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
    st.create_backoff = Some(Box::new(CreateBackoff {
        failures,
        not_before: ts(not_before),
        generation,
        last_failure: format!("{}: {}", f.reason.as_str(), f.message),
    }));
}

/// The failure to report while creates back off, if they do. An edit of the spec (a new
/// generation) may try once at once, but only when the last failure was the spec's fault
/// ([`spec_caused`]): a tenant editing its spec in a loop does not reset the backoff of a
/// provider that is down or limits the account. The try after an edit counts as a failure in
/// the same row (the next wait doubles), and the create budget applies to it.
pub fn backoff_gate(
    st: &ApiKeyStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Option<Failure> {
    let b = st.create_backoff.as_ref()?;
    let last_reason = b
        .last_failure
        .split_once(':')
        .and_then(|(r, _)| Reason::parse(r.trim()));
    if b.generation != generation && last_reason.is_some_and(spec_caused) {
        return None;
    }
    let until = time::parse(&b.not_before)?;
    let wait = (until - now).to_std().ok().filter(|w| !w.is_zero())?;
    Some(Failure::transient(
        Reason::CreateBackoff,
        format!(
            "{} create(s) in a row failed, the last with {}; keysmith tries again at {}{}",
            b.failures,
            b.last_failure,
            ts(until),
            if last_reason.is_some_and(spec_caused) {
                " (or once at once after an edit of the spec)"
            } else {
                ""
            }
        ),
        Some(wait),
    ))
}

/// The settings a create sends: the attempt id, and an expiry counted from now for a ttl.
pub fn settings_for_attempt(
    ak: &ApiKey,
    settings: &KeySettings,
    attempt: String,
) -> Result<KeySettings, Failure> {
    let mut settings = settings.clone();
    settings.attempt = Some(attempt);
    let expiry = ak
        .spec
        .expiry()
        .map_err(|m| Failure::permanent(Reason::InvalidSpec, m))?;
    if let Some(ttl @ Expiry::After(_)) = expiry {
        settings.expires_at = Some(ttl.for_key_created(Utc::now()));
    }
    Ok(settings)
}

/// Whether a failed create may still have created a key (so the marker must stay for recovery).
/// A definite refusal, or a 429 (the provider did not act on it), created nothing.
pub fn may_have_created(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Unavailable(_) | ProviderError::Malformed(_)
    )
}

/// What a create the provider answered with `e` leaves behind, and the failure to report: a 429
/// with a Retry-After holds every create through the provider object `provider`; the marker
/// (`st.pending_create`) stays only if a key may have been created ([`may_have_created`]).
pub fn after_failed_create(
    ctx: &Context,
    provider: &str,
    st: &mut ApiKeyStatus,
    e: ProviderError,
) -> Failure {
    if let ProviderError::RateLimited {
        retry_after: Some(wait),
    } = &e
    {
        ctx.create_holds.hold(provider, *wait, e.to_string());
    }
    if !may_have_created(&e) {
        // Nothing was created, so nothing to recover. Leaving the marker would make the next
        // reconcile list every key of the provider, for each rate-limited create.
        st.pending_create = None;
    }
    let mut f: Failure = e.into();
    // The ApiKey that got the 429 waits no longer than the hold of every other one.
    f.retry_after = f.retry_after.map(|w| w.min(MAX_CREATE_HOLD));
    f
}

/// Create a key where `v` says (a replacement of `replacing`, if given) and deliver its value.
/// Failed creates back off across reconciles (`status.createBackoff`).
pub async fn create(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    replacing: Option<LocatedKey>,
) -> Result<Ready, Failure> {
    let r = &s.r;
    let generation = r.ak.metadata.generation;
    if let Some(f) = backoff_gate(st, generation, Utc::now()) {
        return Err(f);
    }
    budget_gate(r, st, Utc::now())?;
    let result = create_once(s, st, replacing).await;
    match &result {
        Ok(_) => st.create_backoff = None,
        Err(f) if counts_as_failed_create(f) => record_failed_create(st, generation, f, Utc::now()),
        Err(_) => {}
    }
    result
}

/// `Err(CreateBudgetExhausted)` when the ApiKey sent the creates its provider object allows in
/// an hour (`createLimit.perApiKeyPerHour`, counted in `status.recentCreates`).
pub fn budget_gate(
    r: &Reconciler<'_>,
    st: &ApiKeyStatus,
    now: DateTime<Utc>,
) -> Result<(), Failure> {
    let per_hour = r.p.create_limits.per_api_key_per_hour;
    match budget_spent_until(&st.recent_creates, per_hour, now) {
        None => Ok(()),
        Some(until) => Err(Failure::transient(
            Reason::CreateBudgetExhausted,
            budget_message(r, per_hour, until),
            Some(
                (until - now)
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_secs(1)),
            ),
        )),
    }
}

/// What a spent create budget says (condition and Event).
pub fn budget_message(r: &Reconciler<'_>, per_hour: u32, until: DateTime<Utc>) -> String {
    format!(
        "this ApiKey sent {per_hour} create(s) in the last hour, all that {} allows (spec.createLimit.perApiKeyPerHour); the next create may go at {}",
        r.p.id,
        ts(until)
    )
}

/// Take a create from the namespace's share of the provider object's create rate, or
/// `Err(CreateThrottled)` saying when the next is due. Never waits.
pub fn take_share(r: &Reconciler<'_>) -> Result<(), Failure> {
    let ns = r.ak.namespace().unwrap_or_default();
    let limits = &r.p.create_limits;
    r.ctx
        .fair_shares
        .take(&r.p.id, &ns, limits)
        .map_err(|t| {
            Failure::transient(
                Reason::CreateThrottled,
                format!(
                    "namespace {ns} used its share of the create rate of {} ({:.3} of {} per second while {} namespace(s) create; spec.createLimit); keysmith creates when its next turn is due",
                    r.p.id,
                    t.share,
                    limits.per_second,
                    t.sharing,
                ),
                Some(t.wait),
            )
        })
}

async fn create_once(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    replacing: Option<LocatedKey>,
) -> Result<Ready, Failure> {
    let (r, v, existing) = (&s.r, &s.v, s.existing.as_ref());
    if let Some((wait, message)) = r.ctx.create_holds.held(&r.p.id) {
        // The provider asked to wait (429 + Retry-After). Writing the marker anyway would be a
        // watch event that reconciles this ApiKey again at once, ignoring the requeue: a loop of
        // creates and status writes for as long as the provider keeps answering 429.
        return Err(Failure::transient(Reason::RateLimited, message, Some(wait)));
    }
    // A Secret that cannot be written (quota, admission webhook, type change) is found before
    // a key is minted for it.
    dry_run(r.ctx, r.ak, existing).await?;
    r.ctx.lease_allows(r.ctx.settings.client_options.timeout)?;
    take_share(r)?;
    let attempt = crate::ids::random_hex(16);
    // A key created while a budget throttles or disables its group is created so, as the sync
    // would set it (not only from the next budget pass on).
    let wanted = crate::controller::limits::for_new_key(r.ctx, r.ak, &v.settings).await;
    let mut settings = settings_for_attempt(r.ak, &wanted, attempt.clone())?;
    let provisional = creates_under_provisional_name(r.p.backend.as_ref());
    if provisional {
        settings.name = provisional_name(&attempt);
    }
    let mut marked = st.clone();
    marked.pending_create = Some(Box::new(attempt::marker(&settings, &attempt, &v.scope)));
    // The budget counts the create with the marker, durable before the provider is asked.
    record_create(&mut marked.recent_creates, Utc::now());
    // Invariant 1: the marker is durable before the provider is asked to create anything. The
    // write is conditional (ServerCopy): a reconcile working from a stale copy, which may not
    // show a key created moments ago, stops here instead of creating a second one.
    write_status(r.ctx, r.ak, &marked, r.seen).await?;
    *st = marked;

    let created = match r.p.backend.create(&settings).await {
        Ok(c) => c,
        Err(e) => return Err(after_failed_create(r.ctx, &r.p.id, st, e)),
    };
    r.ctx.metrics.keys_created.get_or_create(&r.label()).inc();
    #[cfg(feature = "test-hooks")]
    if r.ctx.fault_crash_after_create() {
        // Test hook: behave as if the process died right here.
        return Err(Failure::permanent(
            Reason::Crashed,
            "simulated crash after create",
        ));
    }
    deliver_created(s, st, &created).await?;
    let secret_name = r.ak.secret_name();
    let id = created.key.id;
    match replacing {
        Some(old) => retire_replaced(r, st, old, &id).await?,
        // A rotation: the rotate step records it and says so (KeyRotated).
        None if attempt::in_flight(st) => {}
        None => {
            let note = format!(
                "created key {id} at {}; value written to Secret {secret_name}",
                r.p.provider_type
            );
            r.event(EventType::Normal, Reason::KeyCreated, "Create", note)
                .await;
        }
    }
    let mut ready = Ready::active(r.p, st, &secret_name);
    if provisional {
        ready.rename = Some(Box::new(Rename {
            p: r.p.clone(),
            scope: v.scope.clone(),
            id,
            settings: v.settings.clone(),
        }));
    }
    Ok(ready)
}

/// Write the new key's value to the Secret and record the key. If the value cannot be delivered,
/// the key is revoked rather than left unaccounted for; if even that fails, pendingCreate stays
/// set and the next reconcile recovers.
async fn deliver_created(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    created: &CreatedKey,
) -> Result<(), Failure> {
    let (r, v, existing) = (&s.r, &s.v, s.existing.as_ref());
    let id = &created.key.id;
    let mut hinted = st.clone();
    fill_from_key(&mut hinted, &created.key, r.p);
    let delivery = Delivery {
        value: &created.secret,
        key_id: id,
        hint: hinted.key_hint.as_deref().unwrap_or(""),
    };
    if let Err(f) = ensure_secret(r.ctx, r.ak, existing, &delivery).await {
        if matches!(
            r.p.backend.revoke(&v.scope, id).await,
            Ok(()) | Err(ProviderError::NotFound(_))
        ) {
            st.pending_create = None;
        }
        return Err(f);
    }
    *st = hinted;
    st.pending_create = None;
    st.fields_needing_new_key.clear();
    st.key_scope = location(&v.scope);
    r.ctx.listings.remember(r.p, &v.scope, &created.key).await;
    Ok(())
}

/// The Secret holds the new key `new`: the old one must go. If the provider refuses now, the
/// status keeps it in previousKeys and later reconciles (or deletion) revoke it.
async fn retire_replaced(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    old: LocatedKey,
    new: &str,
) -> Result<(), Failure> {
    if let Err(e) = revoke_quietly(r.ctx, r.p, &old.at, &old.id).await {
        st.previous_keys.push(PreviousKey {
            key_id: old.id,
            delete_after: time::now(),
            scope: location(&old.at),
        });
        return Err(e.into());
    }
    let note = format!(
        "created key {new} at {} and revoked {}",
        r.p.provider_type, old.id
    );
    r.event(EventType::Normal, Reason::KeyReplaced, "Create", note)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiKeySpec;
    use crate::providers::KeyScope;

    #[test]
    fn only_an_unanswered_create_may_have_created_a_key() {
        assert!(may_have_created(&ProviderError::Unavailable(
            "timeout".into()
        )));
        assert!(may_have_created(&ProviderError::Malformed("body".into())));
        assert!(!may_have_created(&ProviderError::Rejected("no".into())));
        assert!(!may_have_created(&ProviderError::RateLimited {
            retry_after: None
        }));
        assert!(!may_have_created(&ProviderError::Auth("no".into())));
    }

    #[test]
    fn a_ttl_counts_from_the_attempt() {
        let ak = ApiKey::new(
            "k",
            ApiKeySpec {
                ttl: Some("1h".into()),
                ..Default::default()
            },
        );
        let base =
            KeySettings::from_spec(&ak.spec, "n".into(), Utc::now() - chrono::Duration::days(1))
                .unwrap();
        let s = settings_for_attempt(&ak, &base, "a1".into()).unwrap();
        assert_eq!(s.attempt.as_deref(), Some("a1"));
        let left = s.expires_at.unwrap() - Utc::now();
        assert!(left > chrono::Duration::minutes(59) && left <= chrono::Duration::hours(1));
        let scope = KeyScope {
            family: "agent".into(),
            parent: "ag-1".into(),
        };
        let m = attempt::marker(&s, "a1", &scope);
        assert_eq!((m.name.as_str(), m.attempt.as_str()), ("n", "a1"));
        assert_eq!(m.scope.unwrap().parent, "ag-1");
    }

    #[test]
    fn an_edit_skips_the_backoff_only_after_a_failure_the_spec_caused() {
        let now = Utc::now();
        for (reason, edit_helps) in [
            (Reason::ProviderRejected, true),
            (Reason::InvalidSpec, true),
            (Reason::SecretWriteRefused, true),
            (Reason::ProviderUnavailable, false),
            (Reason::RateLimited, false),
            (Reason::ProviderAuthFailed, false),
        ] {
            let mut st = ApiKeyStatus::default();
            let f = Failure::transient(reason, "no", None);
            record_failed_create(&mut st, Some(2), &f, now);
            assert!(backoff_gate(&st, Some(2), now).is_some(), "{reason}");
            let after_edit = backoff_gate(&st, Some(3), now);
            assert_eq!(after_edit.is_none(), edit_helps, "{reason}");
            if let Some(gate) = after_edit {
                assert!(!gate.message.contains("edit"), "{}", gate.message);
            }
            // The try after an edit fails again: the row goes on (20 s, not 10 s), and a second
            // edit of a spec-caused failure gets one try more, no reset.
            if edit_helps {
                record_failed_create(&mut st, Some(3), &f, now);
                let b = st.create_backoff.as_ref().unwrap();
                assert_eq!(b.failures, 2);
                let wait = backoff_gate(&st, Some(3), now)
                    .unwrap()
                    .retry_after
                    .unwrap();
                assert!(wait > Duration::from_secs(19), "{wait:?}");
            }
        }
        // A status written before reasons were recorded, or garbage: no free try.
        let mut st = ApiKeyStatus::default();
        let f = Failure::transient(Reason::ProviderUnavailable, "down", None);
        record_failed_create(&mut st, Some(2), &f, now);
        st.create_backoff.as_mut().unwrap().last_failure = "something odd".into();
        assert!(backoff_gate(&st, Some(3), now).is_some());
    }

    #[test]
    fn waits_of_keysmith_own_are_not_failed_creates() {
        for reason in [
            Reason::CreateBackoff,
            Reason::CreateBudgetExhausted,
            Reason::CreateThrottled,
        ] {
            let f = Failure::transient(reason, "wait", Some(Duration::from_secs(1)));
            assert!(!counts_as_failed_create(&f), "{reason}");
        }
        let f = Failure::transient(Reason::ProviderUnavailable, "down", None);
        assert!(counts_as_failed_create(&f));
    }

    #[test]
    fn create_backoff_doubles_to_an_hour_and_is_kept_in_the_status() {
        assert_eq!(create_backoff(1), Duration::from_secs(10));
        assert_eq!(create_backoff(3), Duration::from_secs(40));
        assert_eq!(create_backoff(u32::MAX), BACKOFF_MAX);
        // Failed creates in the first hour, then one an hour.
        let mut spent = Duration::ZERO;
        let mut n = 0;
        while spent < Duration::from_secs(3600) {
            n += 1;
            spent += create_backoff(n);
        }
        assert!(n <= 9, "{n} creates in the first hour");

        let now = Utc::now();
        let mut st = ApiKeyStatus::default();
        let f = Failure::transient(Reason::SecretWriteRefused, "quota", None);
        record_failed_create(&mut st, Some(2), &f, now);
        record_failed_create(&mut st, Some(2), &f, now);
        let b = st.create_backoff.clone().unwrap();
        assert_eq!(b.failures, 2);
        assert!(b.last_failure.starts_with("SecretWriteRefused"));
        let gate = backoff_gate(&st, Some(2), now).unwrap();
        assert_eq!(gate.reason, Reason::CreateBackoff);
        let wait = gate.retry_after.unwrap();
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20));
        // An edit may try at once; time passing lifts the gate.
        assert!(backoff_gate(&st, Some(3), now).is_none());
        assert!(backoff_gate(&st, Some(2), now + chrono::Duration::seconds(21)).is_none());
        // A Retry-After longer than the backoff is honoured (up to the cap).
        let slow = Failure::transient(Reason::RateLimited, "429", Some(Duration::from_secs(900)));
        record_failed_create(&mut st, Some(2), &slow, now);
        let w = backoff_gate(&st, Some(2), now)
            .unwrap()
            .retry_after
            .unwrap();
        assert!(w > Duration::from_secs(899));
    }
}
