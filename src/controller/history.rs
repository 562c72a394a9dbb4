//! `status.history` (issue 21 §4): every key generation of an ApiKey, newest first, bounded by
//! `spec.historyLimit` (default 10, at most 50). Pure functions over the status.
//!
//! Rotations are recorded where they happen ([`rotated`], which knows the trigger); everything
//! else (a first key, an adopted key, a replacement after a spec change, a key recreated after
//! it vanished, a rotation finished by crash recovery, revocations) is found by comparing the
//! status a reconcile started from with the one it ends with ([`observe`]).
//!
//! "Who asked" comes from `metadata.managedFields`, the only record of writers Kubernetes keeps
//! on the object: the field manager that owns the field which asked (the rotate annotation, or
//! `spec`). A field manager is a name the *client* chooses (kubectl sends `kubectl-annotate`,
//! `kubectl-edit`, …; any client may send any name), not the authenticated user: the user is in
//! the API server's audit log, not on the object. So it is recorded as `fieldManager`, never as
//! a user, and it is a hint, not proof.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde_json::Value;

use crate::api::{ApiKey, ApiKeyStatus, KeyGeneration, RequestedBy, ROTATE_ANNOTATION};

/// Generations kept when the spec does not say.
pub const DEFAULT_LIMIT: usize = 10;
/// The most `spec.historyLimit` may ask for (also the schema's bound on `status.history`).
pub const MAX_LIMIT: usize = 50;
/// Longest field manager name recorded.
const MANAGER_LEN: usize = 128;

/// How many generations this ApiKey keeps.
pub fn limit(ak: &ApiKey) -> usize {
    ak.spec
        .history_limit
        .map_or(DEFAULT_LIMIT, |n| n as usize)
        .clamp(1, MAX_LIMIT)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The managedFields entries of the object itself (not its status), with their fields.
fn entries(ak: &ApiKey) -> impl Iterator<Item = (&ManagedFieldsEntry, &Value)> {
    ak.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.subresource.as_deref().unwrap_or("").is_empty())
        .filter_map(|e| e.fields_v1.as_ref().map(|f| (e, &f.0)))
}

fn requested(e: &ManagedFieldsEntry, field: &str) -> RequestedBy {
    let manager = e.manager.as_deref().unwrap_or("");
    let manager: String = manager.chars().take(MANAGER_LEN).collect();
    RequestedBy {
        field_manager: manager,
        operation: e.operation.clone().unwrap_or_default(),
        time: e.time.as_ref().map(|t| t.0.to_string()),
        field: field.to_string(),
    }
}

/// The field manager that set the `keysmith.dev/rotate` annotation.
pub fn rotate_requester(ak: &ApiKey) -> Option<RequestedBy> {
    let key = format!("f:{ROTATE_ANNOTATION}");
    entries(ak)
        .filter(|(_, f)| f["f:metadata"]["f:annotations"].get(&key).is_some())
        .max_by_key(|(e, _)| e.time.as_ref().map(|t| t.0))
        .map(|(e, _)| requested(e, &format!("metadata.annotations[{ROTATE_ANNOTATION}]")))
}

/// The field manager that last changed `spec` (the latest of those owning spec fields).
pub fn spec_author(ak: &ApiKey) -> Option<RequestedBy> {
    entries(ak)
        .filter(|(_, f)| f.get("f:spec").is_some())
        .max_by_key(|(e, _)| e.time.as_ref().map(|t| t.0))
        .map(|(e, _)| requested(e, "spec"))
}

/// Put `g` first and keep the newest `limit` generations.
fn push(st: &mut ApiKeyStatus, g: KeyGeneration, limit: usize) {
    st.history.insert(0, g);
    st.history.truncate(limit);
}

/// Mark the newest live generation of `id` revoked.
fn revoked(st: &mut ApiKeyStatus, id: &str, reason: &str, now: DateTime<Utc>) {
    if let Some(g) = st
        .history
        .iter_mut()
        .find(|g| g.key_id == id && g.revoked_at.is_none())
    {
        g.revoked_at = Some(ts(now));
        g.revoked_reason = Some(reason.to_string());
    }
}

/// A rotation just gave the ApiKey the key `new` (in `st`) in place of `old`. `trigger` is the
/// rotation trigger (`OnDemand`, `Schedule`, …); `leak`: on demand with a zero grace period.
/// `in_place`: the key kept its id and got a new value (the old value died).
#[allow(clippy::too_many_arguments)]
pub fn rotated(
    st: &mut ApiKeyStatus,
    ak: &ApiKey,
    trigger: &str,
    leak: bool,
    old: &str,
    new: &str,
    in_place: bool,
    now: DateTime<Utc>,
) {
    if in_place || old == new {
        revoked(st, old, "ValueRegenerated", now);
    }
    let trigger = if leak && trigger == "OnDemand" {
        "Leak"
    } else {
        trigger
    };
    let requested_by = match trigger {
        "OnDemand" | "Leak" => rotate_requester(ak),
        _ => None,
    };
    let g = KeyGeneration {
        key_id: new.to_string(),
        key_hint: st.key_hint.clone(),
        created_at: ts(now),
        reason: if in_place || old == new {
            "Regenerated"
        } else {
            "Rotated"
        }
        .into(),
        trigger: Some(trigger.to_string()),
        requested_by,
        revoked_at: None,
        revoked_reason: None,
    };
    push(st, g, limit(ak));
}

/// Record what a reconcile changed that [`rotated`] did not: a new current key (first,
/// adopted, replaced after a spec change, recreated, or a rotation crash recovery finished)
/// and keys gone from the status (revoked after their grace period, replaced, or vanished).
/// `before`: the status the reconcile started from.
pub fn observe(before: &ApiKeyStatus, st: &mut ApiKeyStatus, ak: &ApiKey, now: DateTime<Utc>) {
    let spec_changed = ak.metadata.generation != before.observed_generation;
    if let Some(id) = st.key_id.clone() {
        let known = st
            .history
            .iter()
            .any(|g| g.key_id == id && g.revoked_at.is_none());
        if before.key_id.as_deref() != Some(id.as_str()) && !known {
            let flight = before
                .rotation
                .as_ref()
                .and_then(|r| r.in_progress.as_ref());
            let (reason, trigger, requested_by) = if let Some(f) = flight {
                let by = (f.trigger == "OnDemand")
                    .then(|| rotate_requester(ak))
                    .flatten();
                ("Rotated", Some(f.trigger.clone()), by)
            } else if before.key_id.is_none() && ak.spec.key_ref.is_some() {
                ("Adopted", None, spec_author(ak))
            } else if before.key_id.is_none() {
                ("Created", None, spec_author(ak))
            } else if spec_changed {
                ("Replaced", Some("SpecChanged".into()), spec_author(ak))
            } else {
                ("Recreated", None, None)
            };
            let g = KeyGeneration {
                key_id: id.clone(),
                key_hint: st.key_hint.clone(),
                created_at: ts(now),
                reason: reason.into(),
                trigger,
                requested_by,
                revoked_at: None,
                revoked_reason: None,
            };
            push(st, g, limit(ak));
        }
    }
    // Keys the status no longer lists were revoked (or found gone).
    let listed = |s: &ApiKeyStatus, id: &str| {
        s.key_id.as_deref() == Some(id) || s.previous_keys.iter().any(|p| p.key_id == id)
    };
    for p in &before.previous_keys {
        if !listed(st, &p.key_id) {
            revoked(st, &p.key_id, "GracePeriodEnded", now);
        }
    }
    if let Some(old) = before.key_id.as_deref() {
        if !listed(st, old) {
            let reason = if spec_changed {
                "Replaced"
            } else {
                "GoneAtProvider"
            };
            revoked(st, old, reason, now);
        }
    }
    if st.history.len() > limit(ak) {
        st.history.truncate(limit(ak));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiKeySpec, PreviousKey, RotationInProgress, RotationStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-06T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn entry(manager: &str, at: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            time: Some(Time(at.parse().unwrap())),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    fn ak(managed: Vec<ManagedFieldsEntry>) -> ApiKey {
        let mut ak = ApiKey::new("k", ApiKeySpec::default());
        ak.metadata.managed_fields = Some(managed);
        ak.metadata.generation = Some(1);
        ak
    }

    #[test]
    fn the_rotate_annotation_names_its_field_manager_and_spec_its_latest_writer() {
        let a = ak(vec![
            entry(
                "kubectl-client-side-apply",
                "2026-12-06T04:00:00Z",
                json!({"f:spec": {"f:limit": {}}}),
            ),
            entry(
                "alice-cli",
                "2026-12-06T04:30:00Z",
                json!({"f:metadata": {"f:annotations": {"f:keysmith.dev/rotate": {}}}}),
            ),
            entry(
                "kubectl-edit",
                "2026-12-06T04:10:00Z",
                json!({"f:spec": {"f:models": {}}}),
            ),
            ManagedFieldsEntry {
                subresource: Some("status".into()),
                ..entry(
                    "keysmith",
                    "2026-12-06T04:59:00Z",
                    json!({"f:metadata": {"f:annotations": {"f:keysmith.dev/rotate": {}}}, "f:spec": {}}),
                )
            },
        ]);
        let r = rotate_requester(&a).unwrap();
        assert_eq!(r.field_manager, "alice-cli");
        assert_eq!(r.operation, "Update");
        assert_eq!(r.field, "metadata.annotations[keysmith.dev/rotate]");
        assert_eq!(spec_author(&a).unwrap().field_manager, "kubectl-edit");
        assert!(rotate_requester(&ak(vec![])).is_none());
        let long = ak(vec![entry(
            &"m".repeat(500),
            "2026-12-06T04:00:00Z",
            json!({"f:spec": {}}),
        )]);
        assert_eq!(spec_author(&long).unwrap().field_manager.len(), MANAGER_LEN);
    }

    #[test]
    fn generations_are_recorded_newest_first_and_bounded() {
        let mut a = ak(vec![]);
        a.spec.history_limit = Some(3);
        let mut st = ApiKeyStatus::default();
        let before = st.clone();
        st.key_id = Some("k0".into());
        st.key_hint = Some("sk-0…".into());
        observe(&before, &mut st, &a, now());
        assert_eq!(st.history[0].reason, "Created");
        assert_eq!(st.history[0].key_hint.as_deref(), Some("sk-0…"));
        for i in 1..6 {
            let old = format!("k{}", i - 1);
            let new = format!("k{i}");
            let before = st.clone();
            st.key_id = Some(new.clone());
            st.previous_keys = vec![PreviousKey {
                key_id: old.clone(),
                delete_after: "2026-12-06T06:00:00Z".into(),
                scope: None,
            }];
            rotated(&mut st, &a, "Schedule", false, &old, &new, false, now());
            observe(&before, &mut st, &a, now());
        }
        assert_eq!(st.history.len(), 3);
        let ids: Vec<&str> = st.history.iter().map(|g| g.key_id.as_str()).collect();
        assert_eq!(ids, ["k5", "k4", "k3"]);
        // k3 was revoked when its grace period ended (it left previousKeys).
        assert_eq!(
            st.history[2].revoked_reason.as_deref(),
            Some("GracePeriodEnded")
        );
        assert!(st.history[0].revoked_at.is_none());
        assert_eq!(st.history[0].trigger.as_deref(), Some("Schedule"));
    }

    #[test]
    fn recovery_replacement_leaks_and_vanished_keys_say_why() {
        let mut a = ak(vec![entry(
            "bob",
            "2026-12-06T04:30:00Z",
            json!({"f:metadata": {"f:annotations": {"f:keysmith.dev/rotate": {}}}}),
        )]);
        // A rotation a crash interrupted, finished by recovery.
        let before = ApiKeyStatus {
            key_id: Some("a".into()),
            observed_generation: Some(1),
            rotation: Some(Box::new(RotationStatus {
                in_progress: Some(RotationInProgress {
                    trigger: "OnDemand".into(),
                    key_id: "a".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut st = before.clone();
        st.key_id = Some("b".into());
        st.previous_keys = vec![PreviousKey {
            key_id: "a".into(),
            delete_after: "x".into(),
            scope: None,
        }];
        observe(&before, &mut st, &a, now());
        assert_eq!(st.history[0].reason, "Rotated");
        assert_eq!(
            st.history[0].requested_by.as_ref().unwrap().field_manager,
            "bob"
        );
        // The key vanished at the provider and was made again (same generation).
        let before = ApiKeyStatus {
            history: st.history.clone(),
            key_id: Some("b".into()),
            observed_generation: Some(1),
            ..Default::default()
        };
        let mut st = before.clone();
        st.key_id = Some("c".into());
        observe(&before, &mut st, &a, now());
        assert_eq!(st.history[0].reason, "Recreated");
        assert_eq!(
            st.history[1].revoked_reason.as_deref(),
            Some("GoneAtProvider")
        );
        // A spec change that needs a new key.
        a.metadata.generation = Some(2);
        let before = st.clone();
        st.key_id = Some("d".into());
        observe(&before, &mut st, &a, now());
        assert_eq!(st.history[0].reason, "Replaced");
        assert_eq!(st.history[0].trigger.as_deref(), Some("SpecChanged"));
        assert_eq!(st.history[1].revoked_reason.as_deref(), Some("Replaced"));
        // A leak: on demand with zero grace; an in-place regenerate kills the old value.
        rotated(&mut st, &a, "OnDemand", true, "d", "d", true, now());
        assert_eq!(st.history[0].trigger.as_deref(), Some("Leak"));
        assert_eq!(st.history[0].reason, "Regenerated");
        assert_eq!(
            st.history[1].revoked_reason.as_deref(),
            Some("ValueRegenerated")
        );
    }
}
