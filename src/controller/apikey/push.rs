//! Pushing a user-owned value (`spec.source`) to the provider, again whenever the value or the
//! settings change.

use kube::runtime::events::EventType;

use super::super::reasons::Reason;
use super::super::time;
use super::dereference::source_value;
use super::revoke::retire_previous;
use super::scope::{key_scope, location, LocatedKey};
use super::status::{fill_from_key, Ready};
use super::step::Step;
use super::sync::observe;
use crate::api::{ApiKeyStatus, PreviousKey};
use crate::controller::error::Failure;
use crate::providers::{self, KeyScope};

/// Whether the pushed key must move: the spec names another place (e.g. another upstream
/// provider), so a new key is pushed there and the old one revoked.
pub fn moved(before: Option<&LocatedKey>, scope: &KeyScope) -> bool {
    before.is_some_and(|k| &k.at != scope)
}

/// Push the value of `spec.source` to the provider.
pub async fn push(s: &Step<'_>, st: &mut ApiKeyStatus) -> Result<Ready, Failure> {
    let (r, v) = (&s.r, &s.v);
    let src = source_value(r.ak, r.ctx).await?;
    let scope = &v.scope;
    let before = st.key_id.clone().map(|id| LocatedKey {
        at: key_scope(st, scope),
        id,
    });
    let moved = moved(before.as_ref(), scope);
    let mut needs_push = st.key_id.is_none() || st.source_version != src.version || moved;
    if let Some(id) = st.key_id.clone().filter(|_| !moved) {
        let spec_changed = st.observed_generation != r.ak.metadata.generation;
        match observe(r.ctx, r.p, scope, &id, spec_changed).await? {
            Some(current) => {
                fill_from_key(st, &current, r.p);
                let made_with = super::rotate::pushed_settings(&v.settings, st);
                if !providers::drift(r.p.backend.as_ref(), &current, &made_with).is_empty() {
                    needs_push = true;
                }
            }
            None => needs_push = true,
        }
    }
    st.secret_name = None;
    if needs_push {
        // A new source value on a key that stays where it is: a rotation with a grace period
        // (the new value goes to a new key, the old one lives on until its deleteAfter).
        let rotating = !moved && st.key_id.is_some() && st.source_version != src.version;
        let existing = st.key_id.as_deref().filter(|_| !moved && !rotating);
        let settings = if rotating {
            super::rotate::repush_settings(&v.settings, src.version.as_deref())
        } else {
            super::rotate::pushed_settings(&v.settings, st)
        };
        let key = r.p.backend.push(&settings, &src.value, existing).await?;
        let first = st.key_id.is_none();
        fill_from_key(st, &key, r.p);
        st.source_version = src.version.clone();
        st.key_scope = location(scope);
        r.ctx.listings.remember(r.p, scope, &key).await;
        let replaced = before.filter(|old| old.id != key.id || &old.at != scope);
        if let Some(old) = replaced.clone().filter(|_| rotating) {
            super::rotate::replaced_by_push(r, st, old).await?;
        } else if let Some(old) = replaced {
            // The value now lives in another key (e.g. another upstream provider): the old one
            // is revoked, now or by a later reconcile.
            st.previous_keys.push(PreviousKey {
                key_id: old.id,
                delete_after: time::now(),
                scope: location(&old.at),
            });
        }
        let what = if first { "registered" } else { "updated" };
        let note = format!(
            "{what} key {} at {} from Secret {}",
            key.id, r.p.provider_type, src.name
        );
        r.event(EventType::Normal, Reason::KeyPushed, "Push", note)
            .await;
        retire_previous(r, st, scope).await?;
    }
    Ok(Ready {
        reason: Reason::KeyActive,
        message: format!(
            "key {} at {} holds the value of Secret {}",
            st.key_id.as_deref().unwrap_or("?"),
            r.p.provider_type,
            src.name
        ),
        requeue: r.p.refresh_interval,
        rename: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_moves_when_the_spec_names_another_place() {
        let here = KeyScope {
            family: "provider".into(),
            parent: "openai".into(),
        };
        let there = KeyScope {
            family: "provider".into(),
            parent: "anthropic".into(),
        };
        let key = LocatedKey {
            id: "k".into(),
            at: here.clone(),
        };
        assert!(!moved(None, &here));
        assert!(!moved(Some(&key), &here));
        assert!(moved(Some(&key), &there));
    }
}
