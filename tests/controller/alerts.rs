//! Alerts before money or time runs out (issue 21 §3): `UsageHigh` per threshold and period,
//! `ExpiringSoon` per expiry, each announced by one Event, never again after a restart.

use std::sync::Arc;

use keysmith::api::{AlertsSpec, ApiKeySpec, LimitReset, SpendLimit};
use keysmith::controller;
use keysmith::controller::Context;
use serde_json::json;

use crate::harness::*;
use crate::openrouter::env;

fn count(env: &Env, reason: &str) -> usize {
    env.events().iter().filter(|e| e.1 == reason).count()
}

fn condition(ak: &keysmith::api::ApiKey, ty: &str) -> Option<(String, String)> {
    ak.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn reconcile_with(env: &Env, ctx: &Arc<Context>, name: &str) {
    let ak = env.get(name).await;
    controller::reconcile(Arc::new(ak), ctx.clone())
        .await
        .expect("reconcile");
}

/// Spend on the key at the emulator, then make the next reconcile read the key fresh.
async fn spend(env: &Env, name: &str, id: &str, amount: f64, step: &str) {
    let (code, _) = env
        .emulator_post("/_emulator/usage", json!({"hash": id, "amount": amount}))
        .await;
    assert_eq!(code, 200);
    env.touch(name, step).await;
}

#[tokio::test]
async fn usage_high_announces_each_threshold_once_per_period() {
    let env = env().await;
    let spec = ApiKeySpec {
        limit: Some(Box::new(SpendLimit {
            amount: "10".into(),
            reset: Some(LimitReset::Monthly),
        })),
        alerts: Some(Box::new(AlertsSpec {
            usage_thresholds: vec![0.5, 0.9],
        })),
        ..Default::default()
    };
    env.create(&apikey("spender", "openrouter", spec)).await;
    let ak = env.converge("spender", 4).await;
    let id = ak.status.clone().unwrap().key_id.unwrap();
    env.reconcile("spender").await.unwrap();
    let ak = env.get("spender").await;
    assert_eq!(
        condition(&ak, "UsageHigh"),
        Some(("False".into(), "BelowThresholds".into())),
        "{:?}",
        ak.status
    );
    assert_eq!(count(&env, "UsageHigh"), 0);

    spend(&env, "spender", &id, 6.0, "a").await;
    env.reconcile("spender").await.unwrap();
    let ak = env.get("spender").await;
    assert_eq!(
        condition(&ak, "UsageHigh"),
        Some(("True".into(), "ThresholdReached".into())),
        "{:?}",
        ak.status
    );
    assert_eq!(count(&env, "UsageHigh"), 1, "50% crossed: one Event");
    for _ in 0..2 {
        env.reconcile("spender").await.unwrap();
    }
    let restarted = env.restarted_context().await;
    reconcile_with(&env, &restarted, "spender").await;
    assert_eq!(
        count(&env, "UsageHigh"),
        1,
        "not again, not after a restart"
    );

    spend(&env, "spender", &id, 3.5, "b").await;
    reconcile_with(&env, &restarted, "spender").await;
    assert_eq!(count(&env, "UsageHigh"), 2, "90% crossed: a second Event");
    for _ in 0..2 {
        reconcile_with(&env, &restarted, "spender").await;
    }
    assert_eq!(count(&env, "UsageHigh"), 2);
    let alerts = env.get("spender").await.status.unwrap().alerts.unwrap();
    assert_eq!(alerts.usage_thresholds_crossed, vec![0.5, 0.9]);
    assert!(alerts
        .usage_period
        .as_deref()
        .is_some_and(|p| p.starts_with("monthly:")));
    let events = env.events();
    assert!(
        events
            .iter()
            .filter(|e| e.1 == "UsageHigh")
            .all(|e| !e.2.contains("sk-or-v1-") && !e.2.contains(&id)),
        "no key value or id in an Event: {events:?}"
    );
}

#[tokio::test]
async fn expiring_soon_fires_once_and_not_again_after_a_restart() {
    let env = env().await;
    let soon = chrono::Utc::now() + chrono::Duration::days(2);
    let later = chrono::Utc::now() + chrono::Duration::days(30);
    for (name, at) in [("soon", soon), ("later", later)] {
        let spec = ApiKeySpec {
            expires_at: Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            ..Default::default()
        };
        env.create(&apikey(name, "openrouter", spec)).await;
        env.converge(name, 4).await;
    }
    for _ in 0..2 {
        env.reconcile("soon").await.unwrap();
        env.reconcile("later").await.unwrap();
    }
    let ak = env.get("soon").await;
    assert_eq!(
        condition(&ak, "ExpiringSoon"),
        Some(("True".into(), "ExpiresWithinWindow".into())),
        "{:?}",
        ak.status
    );
    assert_eq!(
        condition(&env.get("later").await, "ExpiringSoon"),
        Some(("False".into(), "NotDueYet".into()))
    );
    assert_eq!(count(&env, "ExpiringSoon"), 1, "one Event, for `soon` only");

    let restarted = env.restarted_context().await;
    for _ in 0..3 {
        reconcile_with(&env, &restarted, "soon").await;
        reconcile_with(&env, &restarted, "later").await;
    }
    assert_eq!(count(&env, "ExpiringSoon"), 1, "not again after a restart");
    let expires = ak.status.as_ref().unwrap().expires_at.clone();
    assert_eq!(
        env.get("soon")
            .await
            .status
            .unwrap()
            .alerts
            .unwrap()
            .expiring_soon_announced,
        expires
    );
}
