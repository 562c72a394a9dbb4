//! `status.history` (issue 21 §4) on the real API server: a rotation by annotation is recorded
//! with the field manager the API server recorded for the annotation (managedFields), the
//! replaced key gets its revocation when its grace period ends, and no value is ever in it.

use std::time::Duration;

use keysmith::api::{ApiKeySpec, RotationSpec, ROTATE_ANNOTATION};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::harness::*;
use crate::openrouter;

#[tokio::test]
async fn a_rotation_by_annotation_is_recorded_with_the_annotating_field_manager() {
    let env = openrouter::env().await;
    let spec = ApiKeySpec {
        rotation: Some(Box::new(RotationSpec {
            grace_period: Some("2s".into()),
            ..Default::default()
        })),
        ..Default::default()
    };
    env.create(&apikey("k", "openrouter", spec)).await;
    let ak = env.converge("k", 6).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let first = ak.status.clone().unwrap();
    let old = first.key_id.clone().unwrap();
    let old_value = env.secret_value("k", "api-key").await.unwrap();
    assert_eq!(first.history.len(), 1, "{:?}", first.history);
    assert_eq!(first.history[0].key_id, old);
    assert_eq!(first.history[0].reason, "Created");
    assert_eq!(
        first.history[0]
            .requested_by
            .as_ref()
            .map(|r| r.field.as_str()),
        Some("spec"),
        "the creator is the field manager of spec"
    );

    // Alice's client annotates under its own field manager name.
    let pp = PatchParams {
        field_manager: Some("alice-rotates".into()),
        ..Default::default()
    };
    env.apikeys()
        .patch(
            "k",
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "r1"}}})),
        )
        .await
        .expect("annotated");
    env.reconcile("k").await.unwrap();
    let s = env.get("k").await.status.unwrap();
    let new = s.key_id.clone().unwrap();
    assert_ne!(new, old);
    assert_eq!(s.history.len(), 2, "{:?}", s.history);
    let g = &s.history[0];
    assert_eq!(g.key_id, new, "newest first");
    assert_eq!(g.reason, "Rotated");
    assert_eq!(g.trigger.as_deref(), Some("OnDemand"));
    assert_eq!(g.key_hint, s.key_hint);
    let by = g.requested_by.as_ref().expect("requestedBy");
    assert_eq!(by.field_manager, "alice-rotates");
    assert_eq!(by.operation, "Update");
    assert_eq!(by.field, "metadata.annotations[keysmith.dev/rotate]");
    assert!(by.time.is_some());
    assert_eq!(s.history[1].key_id, old);
    assert!(
        s.history[1].revoked_at.is_none(),
        "live in its grace period"
    );

    // The grace period ends: the old generation records its revocation.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    env.reconcile("k").await.unwrap();
    let s = env.get("k").await.status.unwrap();
    assert!(s.previous_keys.is_empty());
    assert_eq!(s.history[1].key_id, old);
    assert_eq!(
        s.history[1].revoked_reason.as_deref(),
        Some("GracePeriodEnded")
    );
    assert!(s.history[1].revoked_at.is_some());
    assert!(s.history[0].revoked_at.is_none());

    // Never a value: neither key's plaintext appears anywhere in the history.
    let text = serde_json::to_string(&s.history).unwrap();
    let new_value = env.secret_value("k", "api-key").await.unwrap();
    assert!(!text.contains(&old_value) && !text.contains(&new_value));

    // A quiet reconcile changes nothing in it.
    env.reconcile("k").await.unwrap();
    assert_eq!(env.get("k").await.status.unwrap().history, s.history);
}
