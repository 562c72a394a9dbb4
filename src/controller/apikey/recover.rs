//! Finishing a create that was interrupted (see the module doc of `apikey`): the key whose
//! value reached the Secret is kept, every other key of the attempt revoked.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;

use super::super::reasons::Reason;
use super::super::secret::{self, SecretOwnership};
use super::super::time;
use super::others::{held_by, provably_mine, proves_delivery, tie, Others, Tie};
use super::revoke::revoke_quietly;
use super::scope::{key_scope, location, scope_at};
use super::step::Step;
use crate::api::{ApiKey, ApiKeyStatus, PendingCreate};
use crate::controller::error::Failure;
use crate::providers::ProviderKey;

/// Keys of an attempt are looked for from this long before it started (clock skew).
const SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// When the attempt started; now if the recorded time cannot be read.
fn started(pending: &PendingCreate) -> DateTime<Utc> {
    time::parse(&pending.started_at).unwrap_or_else(Utc::now)
}

/// The earliest creation time, in the provider's clock, of a key the attempt may have made:
/// its start less `SKEW`, moved by the provider's clock offset where the HTTP layer measured
/// one (its `Date` headers): a provider clock minutes off no longer hides the attempt's key.
pub fn created_since(pending: &PendingCreate, offset: Option<chrono::Duration>) -> DateTime<Utc> {
    started(pending) - SKEW + offset.unwrap_or_else(chrono::Duration::zero)
}

/// The listed keys that the interrupted attempt created and nobody holds: active, of the
/// attempt's name, of its attempt id where the provider records one, neither the current key
/// nor the one the Secret holds, and created since `since` unless provably the attempt's (its
/// provisional name or its attempt id prove it whatever the clocks say).
pub fn orphans_of_attempt<'a>(
    keys: impl IntoIterator<Item = &'a ProviderKey>,
    pending: &PendingCreate,
    since: DateTime<Utc>,
    keep: &[Option<&String>],
) -> Vec<String> {
    let provisional = super::attempt::is_provisional(pending);
    keys.into_iter()
        .filter(|k| k.active && k.name == pending.name)
        .filter(|k| !keep.contains(&Some(&k.id)))
        .filter(|k| k.attempt.as_ref().is_none_or(|a| a == &pending.attempt))
        .filter(|k| provisional || k.attempt.is_some() || k.created_at.is_none_or(|c| c >= since))
        .map(|k| k.id.clone())
        .collect()
}

/// The key id a Secret of ours claims to hold a value for, if it is not the current key (the
/// create answered and the value was delivered, but the status never recorded it).
///
/// A claim only: every mark on the Secret (the managed-by label, the owner annotation, the
/// key-id annotation) can be written by anyone who can write Secrets in the namespace. Recovery
/// keeps the claimed key only once the provider's listing proves the attempt created it
/// ([`proves_delivery`]); otherwise a tenant could write another tenant's key id there and
/// have keysmith take that key over (issue 17).
pub fn claimed_key(ak: &ApiKey, existing: Option<&Secret>, st: &ApiKeyStatus) -> Option<String> {
    existing
        .filter(|s| secret::ownership(ak, s) == SecretOwnership::Ours)
        .filter(|s| secret::value_of(ak, s).is_some())
        .and_then(secret::key_id_of)
        .filter(|id| Some(id) != st.key_id.as_ref())
        .filter(|id| !st.previous_keys.iter().any(|p| &p.key_id == id))
}

/// When an interrupted create can no longer reach the provider: a request sent just before the
/// process died can be handled after a listing; only once the client timeout (plus a margin)
/// has passed is the attempt concluded.
pub fn settles_at(pending: &PendingCreate, client_timeout: Duration) -> DateTime<Utc> {
    started(pending)
        + chrono::Duration::from_std(client_timeout + Duration::from_secs(5)).unwrap_or_default()
}

/// Finish an interrupted create. `s.v.scope`: where the attempt created its key, if the marker
/// does not say (a marker written before keysmith recorded it); `s.existing`: the Secret, which
/// may claim the attempt's key (a claim only, see [`claimed_key`]).
///
/// Only keys this attempt provably created are revoked: of its provisional name (the attempt id,
/// see `attempt::provisional_name`) or of its attempt id where the provider stores one;
/// otherwise (Boltz, whose keys cannot be renamed, and markers written before provisional
/// names) of its name, created since it started, and neither held by another ApiKey nor
/// possibly the key of another ApiKey's create in flight under the same name.
pub async fn recover(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    pending: &PendingCreate,
) -> Result<(), Failure> {
    let r = &s.r;
    // Where the attempt created its key: the marker says, whatever the spec says now.
    let scope = &scope_at(pending.scope.as_ref(), &s.v.scope);
    let claimed = claimed_key(r.ak, s.existing.as_ref(), st);
    // The name the attempt's key has once renamed (provisional creates): the display name.
    let final_name = s.v.settings.name.clone();
    let created_since = created_since(pending, r.p.backend.clock_offset());
    // A listing begun after the interrupted create: once the attempt settled, one listing
    // serves every recovery of that time (issue 11); before that, a fresh one.
    let since = settles_at(pending, r.ctx.settings.client_options.timeout).min(Utc::now());
    let slot = r.ctx.listings.since(r.p, scope, since).await?;
    // What the listing says, read under its lock once (no copy of the listing is made).
    let (candidates, claim_tie, attempts) = {
        let snap = slot.lock().await;
        let claim_tie = claimed
            .as_ref()
            .and_then(|id| snap.keys.get(id))
            .map_or(Tie::None, |k| tie(k, pending, &final_name, created_since));
        let mut keep: Vec<String> = held_by(st).cloned().collect();
        keep.extend(claimed.clone().filter(|_| claim_tie != Tie::None));
        let keep: Vec<Option<&String>> = keep.iter().map(Some).collect();
        let candidates = orphans_of_attempt(
            snap.keys.values().map(|k| &**k),
            pending,
            created_since,
            &keep,
        );
        let attempts: Vec<(String, Option<String>)> = candidates
            .iter()
            .map(|id| {
                let a = snap.keys.get(id).and_then(|k| k.attempt.clone());
                (id.clone(), a)
            })
            .collect();
        (candidates, claim_tie, attempts)
    };
    // The other ApiKeys' view, read only when a key is tied to the attempt by its name alone.
    let provable_by_name = !candidates.is_empty() && !super::attempt::is_provisional(pending);
    let others = if provable_by_name || claim_tie == Tie::ByName {
        Some(Others::read(r.ctx, r.ak, r.p.provider_type.as_str()).await?)
    } else {
        None
    };
    let delivered = claimed
        .clone()
        .filter(|id| proves_delivery(id, claim_tie, pending, others.as_ref()));
    if claimed.is_some() && delivered.is_none() {
        r.event(EventType::Warning, Reason::RecoveringCreate, "Recover", "the Secret names a key (annotation keysmith.dev/key-id) that the provider's listing does not show this ApiKey's interrupted create made: the annotation is ignored, and no key is taken on the Secret's word".to_string()).await;
    }
    let candidates = match &others {
        // A key of the attempt's provisional name or attempt id can only be the attempt's own:
        // no ApiKey can be named so (validate), and the attempt id is random.
        Some(others) if provable_by_name => {
            let (mine, spared) = provably_mine(candidates, pending, others, |id| {
                attempts
                    .iter()
                    .find(|(k, _)| k == id)
                    .and_then(|(_, a)| a.clone())
            });
            for id in spared {
                r.event(EventType::Warning, Reason::RecoveringCreate, "Recover", format!("left key {id} alone: it has the interrupted attempt's name, but another ApiKey holds it or is creating a key under that name")).await;
            }
            mine
        }
        _ => candidates,
    };
    for id in candidates {
        revoke_quietly(r.ctx, r.p, scope, &id).await?;
        r.ctx
            .metrics
            .orphans_revoked
            .get_or_create(&r.label())
            .inc();
        r.event(EventType::Warning, Reason::OrphanRevoked, "Recover", format!("revoked key {id}: created by an interrupted attempt whose value never reached the Secret")).await;
    }
    if let Some(new) = delivered {
        // The Secret already holds the new key: keep it; a key it superseded is revoked.
        if super::attempt::in_flight(st) {
            // An interrupted rotation: the replaced key keeps its grace period.
            let prev = super::rotate::recovered(r, st, &new)?;
            st.previous_keys.extend(prev);
            st.key_id = None;
        } else if let Some(old) = st.key_id.take() {
            let old_scope = key_scope(st, scope);
            if let Err(e) = revoke_quietly(r.ctx, r.p, &old_scope, &old).await {
                st.key_id = Some(old);
                return Err(e.into());
            }
        }
        st.key_id = Some(new);
        st.key_scope = location(scope);
    } else {
        let settle = settles_at(pending, r.ctx.settings.client_options.timeout);
        if let Ok(wait) = (settle - Utc::now()).to_std() {
            if !wait.is_zero() {
                return Err(Failure::transient(
                    Reason::RecoveringCreate,
                    format!(
                        "an interrupted create may still reach {}; keysmith looks for its key again at {} before creating a new one",
                        r.p.provider_type,
                        time::ts(settle)
                    ),
                    Some(wait),
                ));
            }
        }
    }
    st.pending_create = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn key(id: &str, name: &str, created: &str, attempt: Option<&str>) -> ProviderKey {
        ProviderKey {
            id: id.into(),
            name: name.into(),
            active: true,
            created_at: Some(at(created)),
            attempt: attempt.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn orphans_are_the_attempts_keys_nobody_holds() {
        let pending = PendingCreate {
            name: "team-a/chat".into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: "a1".into(),
            scope: None,
        };
        let mut revoked = key("gone", "team-a/chat", "2026-06-01T12:00:01Z", None);
        revoked.active = false;
        let keys = [
            key("orphan", "team-a/chat", "2026-06-01T12:00:01Z", None),
            key("skewed", "team-a/chat", "2026-06-01T11:56:00Z", Some("a1")),
            key("older", "team-a/chat", "2026-06-01T11:50:00Z", None),
            key("other-name", "team-a/web", "2026-06-01T12:00:01Z", None),
            key(
                "other-attempt",
                "team-a/chat",
                "2026-06-01T12:00:01Z",
                Some("a2"),
            ),
            key("current", "team-a/chat", "2026-06-01T12:00:01Z", None),
            key(
                "delivered",
                "team-a/chat",
                "2026-06-01T12:00:01Z",
                Some("a1"),
            ),
            revoked,
        ];
        let current = "current".to_string();
        let delivered = "delivered".to_string();
        let since = created_since(&pending, None);
        let mut got =
            orphans_of_attempt(&keys, &pending, since, &[Some(&current), Some(&delivered)]);
        got.sort();
        assert_eq!(got, ["orphan", "skewed"]);
    }

    fn pending(name: &str, attempt: &str) -> PendingCreate {
        PendingCreate {
            name: name.into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: attempt.into(),
            scope: None,
        }
    }

    #[test]
    fn a_claimed_key_is_tied_to_the_attempt_only_by_the_providers_listing() {
        let provisional = pending("keysmith-attempt-a1", "a1");
        let since = created_since(&provisional, None);
        let at_start = "2026-06-01T12:00:01Z";
        // Its provisional name or its attempt id prove it, whatever its creation time says.
        let k = key("k", "keysmith-attempt-a1", "2026-06-01T11:00:00Z", None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::Proven);
        let k = key("k", "chat", "2026-06-01T11:00:00Z", Some("a1"));
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::Proven);
        // Another attempt's id, another attempt's provisional name, another name: not ours.
        let k = key("k", "chat", at_start, Some("a2"));
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        let k = key("k", "keysmith-attempt-a2", at_start, None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        let k = key("k", "victim", at_start, None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        // Renamed to the display name: by name only, and only if made since the attempt began.
        let k = key("k", "chat", at_start, None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::ByName);
        let k = key("k", "chat", "2026-06-01T11:00:00Z", None);
        assert_eq!(tie(&k, &provisional, "chat", since), Tie::None);
        let mut revoked = key("k", "keysmith-attempt-a1", at_start, None);
        revoked.active = false;
        assert_eq!(tie(&revoked, &provisional, "chat", since), Tie::None);
        // A provider that renames nothing (Boltz): the display name is the attempt's name.
        let named = pending("chat", "a1");
        let k = key("k", "chat", at_start, None);
        assert_eq!(tie(&k, &named, "chat", since), Tie::ByName);

        // A tie by name proves delivery only with the other ApiKeys' view, and only for a key
        // none of them holds while none of them creates under that name.
        let mut others = Others::default();
        assert!(!proves_delivery("k", Tie::ByName, &named, None));
        assert!(proves_delivery("k", Tie::ByName, &named, Some(&others)));
        others.keys.insert("k".into());
        assert!(!proves_delivery("k", Tie::ByName, &named, Some(&others)));
        assert!(!proves_delivery("k", Tie::Proven, &named, Some(&others)));
        let mut busy = Others::default();
        busy.pending_names.insert("chat".into());
        assert!(!proves_delivery("k", Tie::ByName, &named, Some(&busy)));
        let partial = Others {
            partial: true,
            ..Default::default()
        };
        assert!(!proves_delivery("k", Tie::ByName, &named, Some(&partial)));
        assert!(proves_delivery("k", Tie::Proven, &named, None));
        assert!(!proves_delivery("k", Tie::None, &named, None));
    }

    #[test]
    fn a_provider_clock_minutes_behind_does_not_hide_the_attempts_key() {
        // The provider's clock is 10 minutes behind ours: its key of the attempt (by name, at a
        // provider that records no attempt and renames nothing) says 11:50:01.
        let named = pending("chat", "a1");
        let k = key("k", "chat", "2026-06-01T11:50:01Z", None);
        let no_offset = created_since(&named, None);
        assert_eq!(tie(&k, &named, "chat", no_offset), Tie::None);
        let behind = created_since(&named, Some(chrono::Duration::minutes(-10)));
        assert_eq!(tie(&k, &named, "chat", behind), Tie::ByName);
        let got = orphans_of_attempt([&k], &named, behind, &[]);
        assert_eq!(got, ["k"]);
        assert!(orphans_of_attempt([&k], &named, no_offset, &[]).is_empty());
    }

    #[test]
    fn an_attempt_settles_after_the_client_timeout_and_a_margin() {
        let pending = PendingCreate {
            name: "n".into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: "a".into(),
            scope: None,
        };
        assert_eq!(
            settles_at(&pending, Duration::from_secs(15)),
            at("2026-06-01T12:00:20Z")
        );
    }
}
