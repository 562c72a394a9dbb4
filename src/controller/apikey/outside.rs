//! A key rotated outside keysmith (a gateway's scheduled rotation, an admin by hand), found on
//! refresh: the provider's report of the key (its value or the hint of it, or a rotation time
//! after keysmith got the value) no longer matches the value the Secret holds. Never a silently
//! stale Secret:
//!
//! - the provider returns the new value (Bifrost list/get return virtual-key values): the
//!   Secret gets it, `status.lastRotatedAt` records the rotation (restarting
//!   `rolloutRestartTargets` like any new value) and a `RotatedOutside` Event says so. Safe: the
//!   value comes from the provider keysmith holds the credentials of, for the key id keysmith
//!   recorded in the status, and goes where the old value was, the ApiKey's own Secret (as a
//!   lost Secret is restored from the provider's copy);
//! - it does not: with `spec.rotation.every` or `renewBefore` (keysmith manages the key's
//!   rotation) keysmith rotates to a new key at once; otherwise `Ready=False`, reason
//!   `RotatedOutside`, and a Warning Event, until the user rotates (`keysmith.dev/rotate`).

use chrono::{DateTime, Utc};
use kube::runtime::events::EventType;
use secrecy::{ExposeSecret, SecretString};

use super::super::reasons::Reason;
use super::super::rotation::Plan;
use super::super::time;
use super::scope::LocatedKey;
use super::step::Step;
use crate::api::ApiKeyStatus;
use crate::controller::error::Failure;
use crate::providers::{KeyBackend, ProviderKey};

/// What a refresh found about the value the Secret holds.
pub enum Outside {
    /// The Secret holds the key's value, as far as the provider can tell.
    Same(SecretString),
    /// Rotated outside keysmith; the provider's new value, for the Secret.
    NewValue(SecretString),
    /// Rotated outside keysmith and the new value cannot be read back: why, for the condition.
    Lost(String),
}

/// When keysmith got the value the Secret holds, in the provider's clock: the key's creation
/// (the provider's time) or keysmith's last rotation of it (shifted by the provider's clock
/// offset, where known).
pub fn since(st: &ApiKeyStatus, offset: Option<chrono::Duration>) -> Option<DateTime<Utc>> {
    let created = st.created_at.as_deref().and_then(time::parse);
    let rotated = st
        .last_rotated_at
        .as_deref()
        .and_then(time::parse)
        .map(|t| t + offset.unwrap_or_default());
    created.max(rotated)
}

/// A key keysmith takes over (`spec.keyRef`) with `value`: a rotation the provider reports
/// before now is not one keysmith missed, since the value keysmith takes is the key's value as
/// of now. When the provider would say otherwise (`rotated_at` after the key's creation, values
/// hidden), `lastRotatedAt` records the adoption as when keysmith got the value, so no refresh
/// takes the earlier rotation for one made outside keysmith. Returns whether it did.
pub fn adopted(
    backend: &dyn KeyBackend,
    st: &mut ApiKeyStatus,
    key: &ProviderKey,
    value: &SecretString,
) -> bool {
    if backend
        .rotated_outside(key, value, since(st, backend.clock_offset()))
        .is_none()
    {
        return false;
    }
    st.last_rotated_at = Some(time::now());
    true
}

/// Whether the key keysmith manages with `since`'s clock was rotated outside keysmith; for a
/// new value the provider returns, the Event is published and the status updated here (the
/// caller writes the Secret).
pub async fn check(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    current: &ProviderKey,
    key: &LocatedKey,
    held: SecretString,
) -> Result<Outside, Failure> {
    let r = &s.r;
    let backend = r.p.backend.as_ref();
    let Some(why) = backend.rotated_outside(current, &held, since(st, backend.clock_offset()))
    else {
        return Ok(Outside::Same(held));
    };
    if backend.capabilities().secret_readable {
        let mut fresh = backend.get(&key.at, &key.id).await?;
        if let Some(v) = fresh
            .secret
            .take()
            .filter(|v| !v.expose_secret().is_empty())
        {
            if v.expose_secret() == held.expose_secret() {
                return Ok(Outside::Same(held));
            }
            st.last_rotated_at = Some(time::now());
            if fresh.hint.is_some() {
                st.key_hint = fresh.hint.clone();
            }
            r.ctx.listings.remember(r.p, &key.at, &fresh).await;
            let note = format!(
                "key {} was rotated outside keysmith ({why}); Secret {} now holds the value {} returns for it",
                key.id,
                r.ak.secret_name(),
                r.p.provider_type
            );
            r.event(EventType::Warning, Reason::RotatedOutside, "Refresh", note)
                .await;
            return Ok(Outside::NewValue(v));
        }
    }
    Ok(Outside::Lost(why))
}

/// Whether keysmith rotates a key whose new value it cannot read (the user opted in by letting
/// keysmith manage the key's rotation: `spec.rotation.every` or `renewBefore`).
pub fn rotates_on_loss(s: &Step<'_>) -> bool {
    Plan::of(&s.r.ak.spec).is_ok_and(|p| p.every.is_some() || p.renew_before.is_some())
}

/// The Ready=False of a key rotated outside keysmith whose new value cannot be read.
pub fn lost(s: &Step<'_>, key: &LocatedKey, why: &str) -> Failure {
    Failure::permanent(
        Reason::RotatedOutside,
        format!(
            "key {} was rotated outside keysmith ({why}): Secret {} holds a value {} no longer accepts, and it does not return the new one. Rotate it with the keysmith.dev/rotate annotation, or set spec.rotation.every or renewBefore to have keysmith rotate to a new key when this happens",
            key.id,
            s.r.ak.secret_name(),
            s.r.p.provider_type
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_the_later_of_creation_and_keysmiths_rotation() {
        let st = ApiKeyStatus {
            created_at: Some("2026-01-01T00:00:00Z".into()),
            last_rotated_at: Some("2026-01-02T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            since(&st, None).map(time::ts).as_deref(),
            Some("2026-01-02T00:00:00Z")
        );
        // keysmith's clock, moved to the provider's.
        assert_eq!(
            since(&st, Some(chrono::Duration::seconds(30)))
                .map(time::ts)
                .as_deref(),
            Some("2026-01-02T00:00:30Z")
        );
        let created_only = ApiKeyStatus {
            created_at: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            since(&created_only, None).map(time::ts).as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(since(&ApiKeyStatus::default(), None), None);
    }
}
