//! Rotation (issue 12) through the reconciler, on the real API server against each provider's
//! emulator: every trigger where the provider supports it, the grace period (the old key lives
//! until `deleteAfter`, not a moment less, then is revoked), crashes in the middle of a
//! rotation, in-place regenerate, pushed keys, and restarts of a real Deployment.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use keysmith::api::{
    ApiKey, ApiKeySpec, KeyRef, RestartKind, RestartTarget, RotationSpec, KEY_HASH_ANNOTATION,
    RESTARTED_AT_ANNOTATION, ROTATE_ANNOTATION,
};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::fixtures::{ALL, P};
use crate::harness::*;
use crate::{bifrost, digitalocean};

fn grace(g: &str) -> RotationSpec {
    RotationSpec {
        grace_period: Some(g.into()),
        ..Default::default()
    }
}

async fn annotate(env: &Env, name: &str, value: &str) {
    env.apikeys()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})),
        )
        .await
        .expect("annotated");
}

async fn patch_status(env: &Env, name: &str, status: Value) {
    env.apikeys()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("status patched");
}

fn st(ak: &ApiKey) -> keysmith::api::ApiKeyStatus {
    ak.status.clone().unwrap_or_default()
}

fn count(env: &Env, reason: &str) -> usize {
    env.events().iter().filter(|(_, r, _)| r == reason).count()
}

async fn key_hash(env: &Env, name: &str) -> String {
    env.secrets()
        .get(name)
        .await
        .unwrap()
        .annotations()
        .get(KEY_HASH_ANNOTATION)
        .cloned()
        .expect("key-hash annotation")
}

/// Create `name`, converge, and return (key id, value).
async fn created(env: &Env, p: P, name: &str, spec: ApiKeySpec) -> (String, String) {
    env.create(&apikey(name, p.provider(), spec)).await;
    let ak = env.converge(name, 6).await;
    assert_eq!(ready(&ak).0, "True", "{p:?}: {:?}", ak.status);
    let id = st(&ak).key_id.expect("keyID");
    let value = env.secret_value(name, "api-key").await.expect("Secret");
    (id, value)
}

/// After a rotation of `name` away from `old`: a new key in the Secret, the old one in
/// previousKeys (still live), both counted at the provider.
async fn assert_rotated(env: &Env, p: P, name: &str, old: &str, old_value: &str) -> String {
    let ak = env.get(name).await;
    assert_eq!(ready(&ak).0, "True", "{p:?}: {:?}", ak.status);
    let s = st(&ak);
    let new = s.key_id.clone().expect("keyID");
    assert_ne!(new, old, "{p:?}: a new key");
    let value = env.secret_value(name, "api-key").await.unwrap();
    assert_ne!(value, old_value, "{p:?}: the Secret holds the new value");
    assert_eq!(s.previous_keys.len(), 1, "{p:?}: {:?}", s.previous_keys);
    assert_eq!(s.previous_keys[0].key_id, old);
    assert!(s.last_rotated_at.is_some());
    assert!(s.rotation.as_ref().is_none_or(|r| r.in_progress.is_none()));
    assert!(s.pending_create.is_none());
    assert_eq!(p.live(env).await, 2, "{p:?}: new key + old key in grace");
    new
}

/// The grace period: not revoked before deleteAfter, revoked after it with PreviousKeyRevoked.
async fn assert_grace_ends(env: &Env, p: P, name: &str) {
    env.reconcile(name).await.unwrap();
    assert_eq!(
        p.live(env).await,
        2,
        "{p:?}: not revoked before deleteAfter"
    );
    assert_eq!(st(&env.get(name).await).previous_keys.len(), 1);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    env.reconcile(name).await.unwrap();
    let ak = env.get(name).await;
    assert!(st(&ak).previous_keys.is_empty(), "{p:?}: {:?}", ak.status);
    assert_eq!(p.live(env).await, 1, "{p:?}: the old key was revoked");
    assert_eq!(count(env, "PreviousKeyRevoked"), 1, "{p:?}");
}

#[tokio::test]
async fn on_demand_rotation_for_each_provider_keeps_the_old_key_for_the_grace_period() {
    for p in ALL {
        let env = p.env().await;
        let (old, old_value) = created(&env, p, "k", p.spec(grace("2s"))).await;
        let hash = key_hash(&env, "k").await;
        annotate(&env, "k", "r1").await;
        env.reconcile("k").await.unwrap();
        let new = assert_rotated(&env, p, "k", &old, &old_value).await;
        let s = st(&env.get("k").await);
        assert_eq!(
            s.rotation
                .as_ref()
                .and_then(|r| r.handled_request.as_deref()),
            Some("r1")
        );
        assert_ne!(key_hash(&env, "k").await, hash, "{p:?}: key-hash changed");
        assert_eq!(count(&env, "KeyRotated"), 1, "{p:?}");
        let metrics = env.ctx.metrics.encode();
        let line = format!(
            "keysmith_rotations_total{{provider=\"{}\",trigger=\"OnDemand\"}} 1",
            p.provider()
        );
        assert!(metrics.contains(&line), "{p:?}: {metrics}");
        // The same value never rotates again.
        assert_grace_ends(&env, p, "k").await;
        env.reconcile("k").await.unwrap();
        assert_eq!(
            st(&env.get("k").await).key_id.as_deref(),
            Some(new.as_str())
        );
        // No secret value in Events.
        for (_, _, note) in env.events() {
            assert!(!note.contains(&old_value), "{p:?}: a value in an Event");
        }
    }
}

#[tokio::test]
async fn scheduled_rotation_for_each_provider_follows_every() {
    for p in ALL {
        let env = p.env().await;
        let spec = p.spec(RotationSpec {
            every: Some("1h".into()),
            grace_period: Some("2s".into()),
            ..Default::default()
        });
        let (old, old_value) = created(&env, p, "k", spec).await;
        let s = st(&env.get("k").await);
        let next = s
            .next_rotation_at
            .as_deref()
            .and_then(keysmith::controller::parse_time)
            .expect("nextRotationAt");
        let in_an_hour = Utc::now() + chrono::Duration::hours(1);
        assert!(
            (next - in_an_hour).num_seconds().abs() < 120,
            "{p:?}: next rotation an hour after creation: {next}"
        );
        // The reconcile requeues no later than the next rotation.
        let action = env.reconcile("k").await.unwrap();
        assert!(
            format!("{action:?}").contains("requeue_after: Some"),
            "{action:?}"
        );
        // An hour has passed since the last rotation.
        let past = keysmith::controller::ts(Utc::now() - chrono::Duration::minutes(61));
        patch_status(&env, "k", json!({"lastRotatedAt": past})).await;
        env.reconcile("k").await.unwrap();
        assert_rotated(&env, p, "k", &old, &old_value).await;
        let s = st(&env.get("k").await);
        let next = s
            .next_rotation_at
            .as_deref()
            .and_then(keysmith::controller::parse_time)
            .unwrap();
        assert!(next > Utc::now() + chrono::Duration::minutes(55), "{p:?}");
        let line = format!(
            "keysmith_rotations_total{{provider=\"{}\",trigger=\"Schedule\"}} 1",
            p.provider()
        );
        assert!(env.ctx.metrics.encode().contains(&line), "{p:?}");
        assert_grace_ends(&env, p, "k").await;
    }
}

/// Providers whose keys carry an expiry set from the spec (OpenRouter expires_at, Boltz expiry
/// in days): the key rotates renewBefore ahead of it, once per expiry.
#[tokio::test]
async fn renewal_before_expiry_rotates_once_per_expiry() {
    for p in [P::OpenRouter, P::Boltz] {
        let env = p.env().await;
        let expires = Utc::now() + chrono::Duration::days(2);
        let mut spec = p.spec(RotationSpec {
            renew_before: Some("72h".into()),
            grace_period: Some("2s".into()),
            ..Default::default()
        });
        spec.expires_at = Some(keysmith::controller::ts(expires));
        let (old, old_value) = created(&env, p, "k", spec).await;
        assert!(st(&env.get("k").await).expires_at.is_some(), "{p:?}");
        // Inside the renewal window as soon as the key exists.
        env.reconcile("k").await.unwrap();
        assert_rotated(&env, p, "k", &old, &old_value).await;
        let line = format!(
            "keysmith_rotations_total{{provider=\"{}\",trigger=\"BeforeExpiry\"}} 1",
            p.provider()
        );
        assert!(env.ctx.metrics.encode().contains(&line), "{p:?}");
        assert_grace_ends(&env, p, "k").await;
        // The same (fixed) expiry: no second rotation.
        env.reconcile("k").await.unwrap();
        assert_eq!(count(&env, "KeyRotated"), 1, "{p:?}");
    }
}

#[tokio::test]
async fn an_apikey_created_with_the_annotation_does_not_rotate_its_new_key() {
    let p = P::OpenRouter;
    let env = p.env().await;
    let mut ak = apikey("k", p.provider(), p.spec(grace("2s")));
    ak.metadata.annotations = Some([(ROTATE_ANNOTATION.to_string(), "x".to_string())].into());
    env.create(&ak).await;
    let ak = env.converge("k", 6).await;
    let id = st(&ak).key_id.unwrap();
    env.reconcile("k").await.unwrap();
    let s = st(&env.get("k").await);
    assert_eq!(s.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        s.rotation
            .as_ref()
            .and_then(|r| r.handled_request.as_deref()),
        Some("x")
    );
    assert_eq!(count(&env, "KeyRotated"), 0);
}

/// Killed after the create answered, before the Secret was written: the orphan is revoked and
/// the rotation runs again; the old key is never revoked early.
#[tokio::test]
async fn a_crash_before_the_secret_write_reruns_the_rotation_and_leaks_nothing() {
    for p in [P::OpenRouter, P::UCloud] {
        let env = p.env().await;
        let (old, old_value) = created(&env, p, "k", p.spec(grace("2s"))).await;
        annotate(&env, "k", "r1").await;
        env.ctx.crash_after_create.store(true, Ordering::SeqCst);
        let _ = env.reconcile("k").await;
        env.ctx.crash_after_create.store(false, Ordering::SeqCst);
        let s = st(&env.get("k").await);
        assert!(s.pending_create.is_some(), "{p:?}");
        let flight = s.rotation.as_ref().and_then(|r| r.in_progress.clone());
        assert_eq!(flight.expect("inProgress").key_id, old, "{p:?}");
        assert_eq!(env.secret_value("k", "api-key").await.unwrap(), old_value);
        assert_eq!(p.live(&env).await, 2, "{p:?}: old key + orphan");
        let ak = env.converge("k", 6).await;
        assert_eq!(ready(&ak).0, "True", "{p:?}: {:?}", ak.status);
        assert_rotated(&env, p, "k", &old, &old_value).await;
        assert_grace_ends(&env, p, "k").await;
    }
}

/// The requeue of a reconcile in seconds (`Action` shows it only in its Debug form).
fn requeue_secs(action: &kube::runtime::controller::Action) -> Option<f64> {
    let text = format!("{action:?}");
    let d = text.split("Some(").nth(1)?.split(')').next()?;
    let (n, unit) = [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)]
        .into_iter()
        .find_map(|(suffix, unit)| d.strip_suffix(suffix).map(|n| (n, unit)))?;
    n.parse::<f64>().ok().map(|n| n * unit)
}

/// A replaced key whose deleteAfter passes while a reconcile is under way (after its revoke step
/// looked, before its requeue was computed) is not left for the next refresh: the requeue brings
/// the reconcile that revokes it at once. Found by the e2e SIGKILL mid-rotation test, where a
/// jittered requeue came a moment before the deadline and the provider calls carried the
/// reconcile past it; the key then lived until the refresh, 5 minutes later.
#[tokio::test]
async fn a_deadline_passing_during_a_reconcile_still_gets_its_requeue() {
    let p = P::OpenRouter;
    let env = p.env().await;
    let (old, old_value) = created(&env, p, "k", p.spec(grace("1h"))).await;
    annotate(&env, "k", "r1").await;
    env.reconcile("k").await.unwrap();
    assert_rotated(&env, p, "k", &old, &old_value).await;
    // The replaced key's grace ends on the next whole second at least 2 s away; the reconcile
    // looks at it before then and reads its Secret only after.
    let due = chrono::DateTime::from_timestamp(
        (Utc::now() + chrono::Duration::seconds(3)).timestamp(),
        0,
    )
    .unwrap();
    patch_status(
        &env,
        "k",
        json!({"previousKeys": [{"keyID": old, "deleteAfter": keysmith::controller::ts(due)}]}),
    )
    .await;
    let hold = (due - Utc::now()).to_std().unwrap() + Duration::from_millis(500);
    let secret = env.get("k").await.secret_name();
    *env.kube_faults.delay_secret_get.lock().unwrap() = Some((secret, hold));
    let action = env.reconcile("k").await.unwrap();
    assert!(Utc::now() > due, "the reconcile ended after the deadline");
    assert_eq!(
        st(&env.get("k").await).previous_keys.len(),
        1,
        "the revoke step looked before the deadline: the key is still listed"
    );
    assert_eq!(p.live(&env).await, 2);
    let requeue = requeue_secs(&action).expect("a requeue");
    assert!(
        requeue < 2.0,
        "the key is due: the next reconcile comes at once, not at the refresh ({action:?})"
    );
    env.reconcile("k").await.unwrap();
    assert!(st(&env.get("k").await).previous_keys.is_empty());
    assert_eq!(p.live(&env).await, 1, "the replaced key was revoked");
}

/// Killed after the Secret received the new key, before the status recorded it: recovery keeps
/// the new key and gives the old one its grace period instead of revoking it at once.
#[tokio::test]
async fn a_crash_after_the_secret_write_keeps_the_old_key_for_its_grace_period() {
    for p in [P::OpenRouter, P::Boltz, P::DigitalOceanAgent] {
        let env = p.env().await;
        let (old, old_value) = created(&env, p, "k", p.spec(grace("2s"))).await;
        annotate(&env, "k", "r1").await;
        env.kube_faults
            .fail_unmarked_status_writes
            .store(1, Ordering::SeqCst);
        assert!(
            env.reconcile("k").await.is_err(),
            "{p:?}: the final write failed"
        );
        let s = st(&env.get("k").await);
        assert!(s.pending_create.is_some(), "{p:?}");
        assert_eq!(s.key_id.as_deref(), Some(old.as_str()), "{p:?}");
        assert_ne!(env.secret_value("k", "api-key").await.unwrap(), old_value);
        env.reconcile("k").await.unwrap();
        assert_rotated(&env, p, "k", &old, &old_value).await;
        let s = st(&env.get("k").await);
        assert_eq!(
            s.rotation
                .as_ref()
                .and_then(|r| r.handled_request.as_deref()),
            Some("r1"),
            "{p:?}: the rotation is recorded as handled"
        );
        // Not rotated again (the interrupted reconcile had already announced KeyRotated; the
        // recovery announces it once more, as it cannot know the Event went out).
        let new = st(&env.get("k").await).key_id;
        env.reconcile("k").await.unwrap();
        assert_eq!(
            st(&env.get("k").await).key_id,
            new,
            "{p:?}: not rotated twice"
        );
        assert!(count(&env, "KeyRotated") <= 2, "{p:?}");
        assert_grace_ends(&env, p, "k").await;
    }
}

#[tokio::test]
async fn a_digitalocean_model_key_regenerates_only_with_allow_downtime() {
    let env = digitalocean::env().await;
    let (uuid, original) = digitalocean::seed_model_key(&env, "prod").await;
    let spec = ApiKeySpec {
        key_ref: Some(Box::new(KeyRef { id: uuid.clone() })),
        rotation: Some(Box::new(grace("0s"))),
        ..Default::default()
    };
    env.create(&apikey("m", "digitalocean", spec)).await;
    let ak = env.converge("m", 6).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let value = env.secret_value("m", "api-key").await.unwrap();
    assert_ne!(value, original);
    let hash = key_hash(&env, "m").await;
    annotate(&env, "m", "now").await;
    let _ = env.reconcile("m").await;
    let ak = env.get("m").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "UnsupportedField")
    );
    assert!(message.contains("allowDowntime"), "{message}");
    assert_eq!(env.secret_value("m", "api-key").await.unwrap(), value);
    assert_eq!(digitalocean::inference(&env, &value).await, 200);

    env.patch_spec("m", json!({"rotation": {"allowDowntime": true}}))
        .await;
    env.reconcile("m").await.unwrap();
    let ak = env.get("m").await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let s = st(&ak);
    assert_eq!(
        s.key_id.as_deref(),
        Some(uuid.as_str()),
        "same key, in place"
    );
    assert!(s.previous_keys.is_empty(), "no grace for a regenerate");
    let new_value = env.secret_value("m", "api-key").await.unwrap();
    assert_ne!(new_value, value);
    assert_eq!(digitalocean::inference(&env, &new_value).await, 200);
    assert_eq!(
        digitalocean::inference(&env, &value).await,
        401,
        "old value dead"
    );
    assert_ne!(
        key_hash(&env, "m").await,
        hash,
        "key-hash changed with the value"
    );
    assert_eq!(count(&env, "KeyRotated"), 1);
}

#[tokio::test]
async fn a_pushed_bifrost_key_rotates_with_grace_when_its_source_changes() {
    let env = bifrost::env_with(vec![serde_json::to_value(bifrost::upstream_secret(
        bifrost::UPSTREAM_V1,
    ))
    .unwrap()])
    .await;
    let mut spec = bifrost::provider_key_spec();
    spec.rotation = Some(Box::new(grace("2s")));
    env.create(&apikey("pk", "bifrost", spec)).await;
    let ak = env.converge("pk", 6).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let old = st(&ak).key_id.unwrap();
    // An on-demand request cannot rotate a value the user owns: recorded, and a Warning.
    annotate(&env, "pk", "r1").await;
    env.reconcile("pk").await.unwrap();
    let s = st(&env.get("pk").await);
    assert_eq!(s.key_id.as_deref(), Some(old.as_str()));
    assert_eq!(
        s.rotation
            .as_ref()
            .and_then(|r| r.handled_request.as_deref()),
        Some("r1")
    );
    assert_eq!(count(&env, "RotationIgnored"), 1);

    env.secrets()
        .patch(
            "openai-upstream",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {
                "api-key": k8s_openapi::ByteString(bifrost::UPSTREAM_V2.as_bytes().to_vec())
            }})),
        )
        .await
        .unwrap();
    env.reconcile("pk").await.unwrap();
    let s = st(&env.get("pk").await);
    let new = s.key_id.clone().unwrap();
    assert_ne!(new, old);
    assert!(bifrost::holds(&env, "openai", &new, bifrost::UPSTREAM_V2).await);
    assert!(bifrost::holds(&env, "openai", &old, bifrost::UPSTREAM_V1).await);
    assert_eq!(s.previous_keys.len(), 1);
    assert!(env
        .ctx
        .metrics
        .encode()
        .contains("keysmith_rotations_total{provider=\"bifrost\",trigger=\"SourceChanged\"} 1"));
    env.reconcile("pk").await.unwrap();
    assert_eq!(
        bifrost::provider_keys(&env).await.len(),
        2,
        "old key in grace"
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    env.reconcile("pk").await.unwrap();
    assert_eq!(
        bifrost::provider_keys(&env).await.len(),
        1,
        "old key deleted"
    );
    assert!(st(&env.get("pk").await).previous_keys.is_empty());
    assert_eq!(count(&env, "PreviousKeyRevoked"), 1);
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    }))
    .unwrap()
}

/// A rotation restarts the Deployment (kube-controller-manager makes a new ReplicaSet); the
/// grace period starts once it rolled out; a missing target is a Warning, not a failure.
#[tokio::test]
async fn a_rotation_restarts_a_real_deployment_and_the_grace_waits_for_its_rollout() {
    let p = P::OpenRouter;
    let env = p.env().await;
    let deploys: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deploys
        .create(&PostParams::default(), &deployment("web", 0))
        .await
        .unwrap();
    let mut spec = p.spec(grace("2s"));
    spec.rollout_restart_targets = vec![
        RestartTarget {
            kind: RestartKind::Deployment,
            name: "web".into(),
        },
        RestartTarget {
            kind: RestartKind::StatefulSet,
            name: "absent".into(),
        },
    ];
    let (old, old_value) = created(&env, p, "k", spec).await;
    assert!(
        deploys
            .get("web")
            .await
            .unwrap()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .is_none(),
        "a first key restarts nothing"
    );
    annotate(&env, "k", "r1").await;
    env.reconcile("k").await.unwrap();
    assert_rotated(&env, p, "k", &old, &old_value).await;
    let s = st(&env.get("k").await);
    let rollout = s
        .rotation
        .as_ref()
        .and_then(|r| r.rollout.clone())
        .expect("rollout");
    assert_eq!(rollout.targets.len(), 2);
    // Before the rollout: the old key's grace ends at the bound (10m) + grace at the latest.
    let delete_after = keysmith::controller::parse_time(&s.previous_keys[0].delete_after).unwrap();
    assert!(delete_after > Utc::now() + chrono::Duration::minutes(9));

    // The debounce window (5 s) passes; the restart goes out.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        env.reconcile("k").await.unwrap();
        let d = deploys.get("web").await.unwrap();
        let restarted = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .is_some_and(|a| a.contains_key(RESTARTED_AT_ANNOTATION));
        if restarted
            && st(&env.get("k").await)
                .rotation
                .and_then(|r| r.rollout)
                .is_none()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restart / rollout: {:?}",
            env.get("k").await.status
        );
    }
    assert_eq!(count(&env, "RestartTriggered"), 1);
    assert!(count(&env, "RestartTargetMissing") >= 1);
    // kube-controller-manager rolled out a new ReplicaSet for the restarted template.
    let rs: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = rs
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .len();
        if n >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} ReplicaSets");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Rolled out: the grace period runs from then (2 s), and the old key goes.
    let s = st(&env.get("k").await);
    let delete_after = keysmith::controller::parse_time(&s.previous_keys[0].delete_after).unwrap();
    assert!(
        delete_after < Utc::now() + chrono::Duration::seconds(5),
        "{delete_after}"
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    env.reconcile("k").await.unwrap();
    assert!(st(&env.get("k").await).previous_keys.is_empty());
    assert_eq!(p.live(&env).await, 1);
    // No further restart for the same value.
    env.reconcile("k").await.unwrap();
    assert_eq!(count(&env, "RestartTriggered"), 1);
}
