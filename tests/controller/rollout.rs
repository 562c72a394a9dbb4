//! When a restart counts as rolled out (issue 17 item 9), against the real API server, whose
//! kube-controller-manager runs the Deployment controller (without a node, Pods stay Pending):
//! a restart made for another ApiKey covers a change only with the generation it made, never
//! "generation 0" (which every status has passed before the Deployment controller saw the
//! restart); a change a moment after a restart was claimed gets a restart of its own; and with
//! Pods that never become available the grace period waits for the bound.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use keysmith::api::{
    ApiKey, ApiKeySpec, RestartKind, RestartTarget, RolloutTarget, RotationSpec, ROTATE_ANNOTATION,
};
use keysmith::controller::{apikey, Context, Settings};
use keysmith::metrics::Metrics;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::*;
use crate::openrouter;

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

fn restarting(target: &str) -> ApiKeySpec {
    ApiKeySpec {
        rotation: Some(Box::new(RotationSpec {
            grace_period: Some("1s".into()),
            ..Default::default()
        })),
        rollout_restart_targets: vec![RestartTarget {
            kind: RestartKind::Deployment,
            name: target.into(),
        }],
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
        .unwrap();
}

async fn reconcile_with(env: &Env, ctx: &Arc<Context>, name: &str) {
    let ak = env.get(name).await;
    apikey::reconcile(Arc::new(ak), ctx.clone())
        .await
        .unwrap_or_else(|e| panic!("reconcile {name}: {e}"));
}

/// The restart target `web` as `name`'s status follows it.
fn followed(ak: &ApiKey) -> Option<RolloutTarget> {
    ak.status
        .as_ref()?
        .rotation
        .as_ref()?
        .rollout
        .as_ref()?
        .targets
        .first()
        .cloned()
}

fn delete_after(ak: &ApiKey) -> chrono::DateTime<Utc> {
    let s = ak.status.as_ref().unwrap();
    keysmith::controller::time::parse(&s.previous_keys[0].delete_after).unwrap()
}

async fn generation(deploys: &Api<Deployment>, name: &str) -> i64 {
    deploys
        .get(name)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap()
}

#[tokio::test]
async fn a_covered_restart_waits_for_the_generation_that_covers_it() {
    let env = openrouter::env().await;
    let deploys: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deploys
        .create(&PostParams::default(), &deployment("web", 1))
        .await
        .unwrap();
    for name in ["a", "b"] {
        env.create(&apikey(name, "openrouter", restarting("web")))
            .await;
        assert_eq!(ready(&env.converge(name, 6).await).0, "True");
    }
    let before = generation(&deploys, "web").await;
    // Both rotate within the debounce window: one restart for both.
    for name in ["a", "b"] {
        annotate(&env, name, "r1").await;
        env.reconcile(name).await.unwrap();
        assert_eq!(followed(&env.get(name).await).unwrap().generation, None);
    }
    tokio::time::sleep(keysmith::controller::restart::DEBOUNCE_WINDOW + Duration::from_millis(300))
        .await;
    env.reconcile("a").await.unwrap();
    let restarted = generation(&deploys, "web").await;
    assert!(restarted > before, "a restarted web");
    assert_eq!(
        followed(&env.get("a").await).unwrap().generation,
        Some(restarted)
    );
    env.reconcile("b").await.unwrap();
    let b = followed(&env.get("b").await).expect("b still follows the rollout");
    assert_eq!(
        b.generation,
        Some(restarted),
        "b is covered by a's restart: it waits for the generation that restart made"
    );
    assert_eq!(
        generation(&deploys, "web").await,
        restarted,
        "restarted once"
    );

    // The Deployment controller sees the new template; its Pods never become available (no
    // node): not rolled out, so the replaced keys keep their grace until the bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = deploys.get("web").await.unwrap();
        let s = d.status.unwrap_or_default();
        if s.observed_generation.unwrap_or(0) >= restarted && s.updated_replicas.unwrap_or(0) >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for name in ["a", "b"] {
        env.reconcile(name).await.unwrap();
        let ak = env.get(name).await;
        let t = followed(&ak).expect("still following");
        assert!(!t.rolled_out, "{name}: Pods Pending is not rolled out");
        assert!(
            delete_after(&ak) > Utc::now() + chrono::Duration::minutes(9),
            "{name}: the old key lives until the bound"
        );
    }
    assert_eq!(
        openrouter::live_keys(&env.emulator_keys().await),
        4,
        "two new keys, two old ones in their grace"
    );
}

#[tokio::test]
async fn a_change_just_after_a_restart_gets_a_restart_of_its_own() {
    let env = openrouter::env().await;
    let deploys: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deploys
        .create(&PostParams::default(), &deployment("web", 1))
        .await
        .unwrap();
    // No debounce window: each new value restarts at once.
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        env.client.clone(),
        metrics,
        Settings {
            reporter: "keysmith-nowindow".into(),
            client_options: test_client_options(),
            restart_debounce: Duration::ZERO,
            operator_namespace: env.operator_ns.clone(),
            ..Settings::default()
        },
    ));
    for name in ["a", "b"] {
        env.create(&apikey(name, "openrouter", restarting("web")))
            .await;
        for _ in 0..4 {
            reconcile_with(&env, &ctx, name).await;
        }
        assert_eq!(ready(&env.get(name).await).0, "True");
    }
    // a rotates and restarts web; b's Secret changes right after (within the same second,
    // as a rule): the restart a claimed before b's change cannot carry b's new value.
    annotate(&env, "a", "r1").await;
    annotate(&env, "b", "r1").await;
    reconcile_with(&env, &ctx, "a").await;
    let for_a = generation(&deploys, "web").await;
    assert_eq!(
        followed(&env.get("a").await).unwrap().generation,
        Some(for_a)
    );
    reconcile_with(&env, &ctx, "b").await;
    let for_b = followed(&env.get("b").await).unwrap().generation;
    assert!(
        for_b.is_some_and(|g| g > for_a),
        "b needs a restart after its own change: {for_b:?} (a's restart made {for_a})"
    );
    assert_eq!(generation(&deploys, "web").await, for_b.unwrap());
}
