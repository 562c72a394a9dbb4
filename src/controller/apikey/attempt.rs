//! A create attempt: its provisional name and the `status.pendingCreate` marker written before
//! the provider is asked (invariant 1, see the module doc of `apikey`), and the rename that
//! gives a provisionally named key its display name once the status records it.
//!
//! Read by `validate` (a display name may not look provisional), `adopt` (a provisionally
//! named key is never another's to take), `create` and `recover`; imports no step.

use std::time::Duration;

use kube::runtime::events::EventType;

use super::super::backends::ResolvedProvider;
use super::super::context::Context;
use super::super::reasons::Reason;
use super::super::time;
use super::scope::location;
use crate::api::{ApiKey, ApiKeyStatus, PendingCreate};
use crate::providers::{Field, KeyBackend, KeyScope, KeySettings};

/// What the provisional name of a key starts with (`spec.displayName` may not).
pub const PROVISIONAL_PREFIX: &str = "keysmith-attempt-";

/// The name a key is created under at a provider that keeps nothing of a key but its name and
/// can rename it: the attempt id, which no tenant can choose or foresee. Crash recovery
/// revokes a key of this name knowing it is the attempt's own (issue 10, item 5); the key gets
/// its `spec.displayName` right after its value reached the Secret.
pub fn provisional_name(attempt: &str) -> String {
    format!("{PROVISIONAL_PREFIX}{attempt}")
}

/// Whether keys of `backend` are created under a provisional name: the provider records no
/// attempt id with the key, and names can be changed (Boltz's cannot: its keys keep their name
/// from the start, and recovery relies on the checks of `others::provably_mine`).
pub fn creates_under_provisional_name(backend: &dyn KeyBackend) -> bool {
    !backend.records_attempt() && backend.capabilities().can_update(Field::DisplayName)
}

/// Whether `pending` is an attempt made under its provisional name (a key of that name can
/// only be the attempt's).
pub fn is_provisional(pending: &PendingCreate) -> bool {
    pending.name == provisional_name(&pending.attempt)
}

/// The marker written before a create call: the name, the attempt, and where the key goes.
pub fn marker(settings: &KeySettings, attempt: &str, scope: &KeyScope) -> PendingCreate {
    PendingCreate {
        name: settings.name.clone(),
        started_at: time::now(),
        attempt: attempt.to_string(),
        scope: location(scope),
    }
}

/// Whether the attempt is a rotation's: `status.rotation.inProgress` is recorded before its
/// create (the rotate step, not the create, announces the new key).
pub fn in_flight(st: &ApiKeyStatus) -> bool {
    st.rotation
        .as_ref()
        .is_some_and(|r| r.in_progress.is_some())
}

/// How soon a reconcile tries again to give a key its name after the rename failed.
pub const RENAME_RETRY: Duration = Duration::from_secs(10);

/// A key created under its provisional name that is to get its display name.
pub struct Rename {
    pub p: ResolvedProvider,
    pub scope: KeyScope,
    pub id: String,
    pub settings: KeySettings,
}

impl std::fmt::Debug for Rename {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rename").field("id", &self.id).finish()
    }
}

/// Give a key created under its provisional name the name the spec asks for, once the status
/// recording the key is written. Renaming before that write would leave a crash (or a write
/// that conflicts) with a key that only its name ties to the attempt: a name any tenant can
/// copy, so recovery could not tell it from another's (issue 17). A failure here is reported
/// and left to the next sync, which sees the name differ from `spec.displayName` and renames
/// it; returns whether the key has its name.
pub async fn rename_after_write(ctx: &Context, ak: &ApiKey, rn: &Rename) -> bool {
    match rn
        .p
        .backend
        .update(&rn.scope, &rn.id, &rn.settings, &[Field::DisplayName])
        .await
    {
        Ok(key) => {
            ctx.listings.remember(&rn.p, &rn.scope, &key).await;
            true
        }
        Err(e) => {
            let note = format!(
                "created key {} at {} under its provisional name; naming it {:?} failed ({}), keysmith tries again",
                rn.id,
                rn.p.provider_type,
                rn.settings.name,
                e.category()
            );
            ctx.event(
                ak,
                EventType::Warning,
                Reason::KeyRenameFailed,
                "Create",
                note,
            )
            .await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provisional_name_is_the_attempts_own() {
        let name = provisional_name("5f2c0a9e1b3d4c6f");
        assert_eq!(name, "keysmith-attempt-5f2c0a9e1b3d4c6f");
        let mut pending = PendingCreate {
            name,
            started_at: time::now(),
            attempt: "5f2c0a9e1b3d4c6f".into(),
            scope: None,
        };
        assert!(is_provisional(&pending));
        // Another attempt's provisional name, or a display name, proves nothing.
        pending.attempt = "0000000000000000".into();
        assert!(!is_provisional(&pending));
        pending.name = "team-a/chat".into();
        assert!(!is_provisional(&pending));
    }
}
