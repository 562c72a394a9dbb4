//! Finishing a create that was interrupted (see the module doc of `apikey`): the key whose
//! value reached the Secret is kept, every other key of the attempt revoked.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;

use super::super::reasons::Reason;
use super::super::secret::{self, SecretOwnership};
use super::revoke::revoke_quietly;
use super::status::{key_scope, location, ts};
use super::{Failure, Reconciler};
use crate::api::{ApiKey, ApiKeyStatus, PendingCreate};
use crate::providers::{KeyScope, ProviderKey};

/// Keys of an attempt are looked for from this long before it started (clock skew).
const SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// When the attempt started; now if the recorded time cannot be read.
fn started(pending: &PendingCreate) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&pending.started_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}

/// The listed keys that the interrupted attempt created and nobody holds: active, of the
/// attempt's name, created since it started (less clock skew), of its attempt id where the
/// provider records one, and neither the current key nor the one the Secret holds.
pub fn orphans_of_attempt<'a>(
    keys: impl IntoIterator<Item = &'a ProviderKey>,
    pending: &PendingCreate,
    keep: &[Option<&String>],
) -> Vec<String> {
    let since = started(pending) - SKEW;
    keys.into_iter()
        .filter(|k| k.active && k.name == pending.name)
        .filter(|k| !keep.contains(&Some(&k.id)))
        .filter(|k| k.created_at.is_none_or(|c| c >= since))
        .filter(|k| k.attempt.as_ref().is_none_or(|a| a == &pending.attempt))
        .map(|k| k.id.clone())
        .collect()
}

/// The key id a Secret of ours holds a value for, if it is not the current key (the create
/// answered and the value was delivered, but the status never recorded it).
pub fn delivered_key(ak: &ApiKey, existing: Option<&Secret>, st: &ApiKeyStatus) -> Option<String> {
    existing
        .filter(|s| secret::ownership(ak, s) == SecretOwnership::Ours)
        .filter(|s| secret::value_of(ak, s).is_some())
        .and_then(secret::key_id_of)
        .filter(|id| Some(id) != st.key_id.as_ref())
}

/// When an interrupted create can no longer reach the provider: a request sent just before the
/// process died can be handled after a listing; only once the client timeout (plus a margin)
/// has passed is the attempt concluded.
pub fn settles_at(pending: &PendingCreate, client_timeout: Duration) -> DateTime<Utc> {
    started(pending)
        + chrono::Duration::from_std(client_timeout + Duration::from_secs(5)).unwrap_or_default()
}

/// Finish an interrupted create. `scope`: where the attempt created its key.
pub async fn recover(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    scope: &KeyScope,
    pending: &PendingCreate,
    existing: Option<&Secret>,
) -> Result<(), Failure> {
    let delivered = delivered_key(r.ak, existing, st);
    // A listing begun after the interrupted create: once the attempt settled, one listing
    // serves every recovery of that time (issue 11); before that, a fresh one.
    let since = settles_at(pending, r.ctx.client_options.timeout).min(Utc::now());
    let slot = r.ctx.listing_since(r.p, scope, since).await?;
    let candidates = orphans_of_attempt(
        slot.lock().await.keys.values(),
        pending,
        &[st.key_id.as_ref(), delivered.as_ref()],
    );
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
        if let Some(old) = st.key_id.take() {
            let old_scope = key_scope(st, scope);
            if let Err(e) = revoke_quietly(r.ctx, r.p, &old_scope, &old).await {
                st.key_id = Some(old);
                return Err(e.into());
            }
        }
        st.key_id = Some(new);
        st.key_scope = location(scope);
    } else {
        let settle = settles_at(pending, r.ctx.client_options.timeout);
        if let Ok(wait) = (settle - Utc::now()).to_std() {
            if !wait.is_zero() {
                return Err(Failure::transient(
                    Reason::RecoveringCreate,
                    format!(
                        "an interrupted create may still reach {}; keysmith looks for its key again at {} before creating a new one",
                        r.p.provider_type,
                        ts(&settle)
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
        let mut got = orphans_of_attempt(&keys, &pending, &[Some(&current), Some(&delivered)]);
        got.sort();
        assert_eq!(got, ["orphan", "skewed"]);
    }

    #[test]
    fn an_attempt_settles_after_the_client_timeout_and_a_margin() {
        let pending = PendingCreate {
            name: "n".into(),
            started_at: "2026-06-01T12:00:00Z".into(),
            attempt: "a".into(),
        };
        assert_eq!(
            settles_at(&pending, Duration::from_secs(15)),
            at("2026-06-01T12:00:20Z")
        );
    }
}
