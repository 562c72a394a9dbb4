//! Management credentials (issue 21 §3): a provider object reports when its own credentials
//! expire where the provider tells it (OpenRouter's `GET /key`), with `CredentialsExpiring`
//! (within 7 days) announced by one Event per expiry, and when they were last verified; from
//! the one call that verifies them, never a call per ApiKey.

use std::sync::Arc;

use keysmith::api::{ApiKeySpec, ClusterKeyProvider, KeyProviderStatus};
use keysmith::controller::{self, Context};
use kube::api::Api;
use serde_json::json;

use crate::harness::*;
use crate::openrouter::env;

async fn provider(env: &Env) -> ClusterKeyProvider {
    Api::<ClusterKeyProvider>::all(env.client.clone())
        .get(&env.cluster_provider_name("openrouter"))
        .await
        .expect("the ClusterKeyProvider")
}

async fn verify_with(env: &Env, ctx: &Arc<Context>) -> KeyProviderStatus {
    let p = provider(env).await;
    controller::reconcile_cluster_key_provider(Arc::new(p), ctx.clone())
        .await
        .expect("provider reconcile");
    provider(env).await.status.expect("a status")
}

fn expiring(st: &KeyProviderStatus) -> (String, String) {
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "CredentialsExpiring")
        .expect("a CredentialsExpiring condition");
    (c.status.clone(), c.reason.clone())
}

fn announced(env: &Env) -> Vec<String> {
    env.events()
        .into_iter()
        .filter(|(_, reason, _)| reason == "CredentialsExpiring")
        .map(|(_, _, note)| note)
        .collect()
}

async fn expire_management_key_at(env: &Env, at: Option<String>) {
    let (code, _) = env
        .emulator_post("/_emulator/management-key", json!({ "expiresAt": at }))
        .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn credentials_expiring_within_seven_days_are_announced_once() {
    let env = env().await;
    // Never expires: False, verified now, no expiry.
    env.reset_provider_calls().await;
    let st = verify_with(&env, &env.ctx).await;
    assert_eq!(
        expiring(&st),
        ("False".into(), "CredentialsNotExpiring".into())
    );
    assert!(st.credentials_verified_at.is_some(), "{st:?}");
    assert_eq!(st.credentials_expires_at, None);
    let calls = env.provider_calls().await;
    assert_eq!(
        calls["byRoute"],
        json!({"GET /api/v1/key": 1}),
        "one call verifies and tells the expiry: {calls}"
    );

    // Expires in 30 days: reported, not expiring yet.
    let far = (chrono::Utc::now() + chrono::Duration::days(30)).format("%Y-%m-%dT%H:%M:%SZ");
    expire_management_key_at(&env, Some(far.to_string())).await;
    let st = verify_with(&env, &env.ctx).await;
    assert_eq!(
        st.credentials_expires_at.as_deref(),
        Some(&*far.to_string())
    );
    assert_eq!(expiring(&st).0, "False");
    assert!(announced(&env).is_empty());

    // Expires in 3 days: True and one Warning Event, not repeated by further verifies nor by an
    // operator restart (a context that remembers nothing).
    let soon = (chrono::Utc::now() + chrono::Duration::days(3)).format("%Y-%m-%dT%H:%M:%SZ");
    expire_management_key_at(&env, Some(soon.to_string())).await;
    let st = verify_with(&env, &env.ctx).await;
    assert_eq!(expiring(&st), ("True".into(), "CredentialsExpiring".into()));
    assert_eq!(
        st.credentials_expiry_announced.as_deref(),
        Some(&*soon.to_string())
    );
    verify_with(&env, &env.ctx).await;
    let restarted = env.restarted_context().await;
    verify_with(&env, &restarted).await;
    let events = announced(&env);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains(&soon.to_string()), "{events:?}");
    assert!(
        !events[0].contains(crate::openrouter::MGMT),
        "no secret in an Event"
    );
    assert_eq!(
        env.events()
            .iter()
            .find(|e| e.1 == "CredentialsExpiring")
            .unwrap()
            .0,
        "Warning"
    );

    // New credentials with another expiry within the window: announced again, once.
    let sooner = (chrono::Utc::now() + chrono::Duration::days(2)).format("%Y-%m-%dT%H:%M:%SZ");
    expire_management_key_at(&env, Some(sooner.to_string())).await;
    verify_with(&env, &env.ctx).await;
    verify_with(&env, &env.ctx).await;
    assert_eq!(announced(&env).len(), 2, "{:?}", announced(&env));

    // ApiKeys add no call for the credentials: their reconciles never ask GET /key.
    env.create(&apikey("a", "openrouter", ApiKeySpec::default()))
        .await;
    env.create(&apikey("b", "openrouter", ApiKeySpec::default()))
        .await;
    env.reset_provider_calls().await;
    env.converge("a", 4).await;
    env.converge("b", 4).await;
    let calls = env.provider_calls().await;
    assert!(
        calls["byRoute"].get("GET /api/v1/key").is_none(),
        "no credentials call per ApiKey: {calls}"
    );
}

/// A failed verify (the credentials expired and are refused) keeps the last successful
/// verification's time, and takes Ready down.
#[tokio::test]
async fn expired_credentials_keep_the_last_verified_time() {
    let env = env().await;
    let st = verify_with(&env, &env.ctx).await;
    let verified = st.credentials_verified_at.clone().expect("verified");
    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).format("%Y-%m-%dT%H:%M:%SZ");
    expire_management_key_at(&env, Some(past.to_string())).await;
    let st = verify_with(&env, &env.ctx).await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ProviderAuthFailed")
    );
    assert_eq!(
        st.credentials_verified_at.as_deref(),
        Some(verified.as_str())
    );
}
