//! Provider fidelity (issue 20): what keysmith reports of a key matches what the provider can
//! tell, for every provider.

use keysmith::api::{
    ApiKey, ApiKeySpec, DigitalOceanKeySpec, LastUsed, LastUsedSource, SpendLimit,
};
use serde_json::json;

use crate::harness::*;

fn last_used(ak: &ApiKey) -> (Option<LastUsed>, Option<String>) {
    let st = ak.status.clone().unwrap_or_default();
    (st.last_used, st.last_used_at)
}

/// Converge `name` and check it reports `source` with no use yet, quietly.
async fn shows_use(env: &Env, name: &str, source: LastUsedSource) {
    let ak = env.converge(name, 4).await;
    let (lu, at) = last_used(&ak);
    let lu = lu.expect("status.lastUsed");
    assert_eq!(lu.source, source);
    assert_eq!(lu.at, None, "not used yet: {lu:?}");
    assert_eq!(at, None, "LAST USED column blank before any use");
    // Nothing changed at the provider: a reconcile reports the same (no write).
    env.assert_quiet(name).await;
}

/// After a use at the emulator, the next reconcile (a fresh read: the spec is touched) fills
/// the column, and the one after keeps it.
async fn column_filled(env: &Env, name: &str, source: LastUsedSource, precision: Option<&str>) {
    env.touch(name, "used").await;
    env.reconcile(name).await.unwrap();
    let ak = env.get(name).await;
    let (lu, at) = last_used(&ak);
    let lu = lu.expect("status.lastUsed");
    assert_eq!(lu.source, source, "{lu:?}");
    assert!(lu.at.is_some(), "the use is seen: {lu:?}");
    assert_eq!(at, lu.at, "lastUsedAt (the column) mirrors lastUsed.at");
    assert_eq!(lu.precision.as_deref(), precision);
    let at = chrono::DateTime::parse_from_rfc3339(lu.at.as_deref().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(at);
    assert!(
        age < chrono::Duration::minutes(5) && age > chrono::Duration::seconds(-5),
        "a recent use: {at}"
    );
    // Seen once: the next reconcile keeps it, writes nothing.
    env.reconcile(name).await.unwrap();
    assert_eq!(last_used(&env.get(name).await).0, Some(lu));
}

#[tokio::test]
async fn last_use_of_an_openrouter_key_is_a_usage_delta() {
    let env = crate::openrouter::env().await;
    env.create(&apikey("or", "openrouter", ApiKeySpec::default()))
        .await;
    shows_use(&env, "or", LastUsedSource::UsageDelta).await;
    let id = env.get("or").await.status.unwrap().key_id.unwrap();
    let (code, _) = env
        .emulator_post("/_emulator/usage", json!({"hash": id, "amount": 0.25}))
        .await;
    assert_eq!(code, 200);
    column_filled(&env, "or", LastUsedSource::UsageDelta, Some("5m")).await;
}

#[tokio::test]
async fn last_use_of_a_ucloud_key_is_a_usage_delta() {
    let env = crate::ucloud::env().await;
    env.create(&apikey("uc", "ucloud", ApiKeySpec::default()))
        .await;
    shows_use(&env, "uc", LastUsedSource::UsageDelta).await;
    let id = env.get("uc").await.status.unwrap().key_id.unwrap();
    let (code, _) = env
        .emulator_post("/_emulator/usage", json!({"keyId": id, "amount": "1.5"}))
        .await;
    assert_eq!(code, 200);
    column_filled(&env, "uc", LastUsedSource::UsageDelta, Some("5m")).await;
}

#[tokio::test]
async fn last_use_of_a_bifrost_virtual_key_with_a_budget_is_a_usage_delta() {
    let env = crate::bifrost::env_with(vec![]).await;
    let spec = ApiKeySpec {
        limit: Some(Box::new(SpendLimit {
            amount: "25".into(),
            reset: None,
        })),
        ..Default::default()
    };
    env.create(&apikey("vk", "bifrost", spec)).await;
    shows_use(&env, "vk", LastUsedSource::UsageDelta).await;
    let id = env.get("vk").await.status.unwrap().key_id.unwrap();
    let (code, _) = env
        .emulator_post("/_emulator/usage", json!({"vkId": id, "amount": 2.0}))
        .await;
    assert_eq!(code, 200);
    column_filled(&env, "vk", LastUsedSource::UsageDelta, Some("5m")).await;
}

#[tokio::test]
async fn last_use_of_a_boltz_key_is_the_providers_own() {
    let env = crate::boltz::env().await;
    env.create(&apikey("bz", "boltz", ApiKeySpec::default()))
        .await;
    shows_use(&env, "bz", LastUsedSource::Provider).await;
    let value = env.secret_value("bz", "api-key").await.expect("Secret");
    // Any authenticated call with the key is a use (the emulator bumps `last_used_at`).
    let r = env
        .http
        .get(format!("{}/compute/v1/auth/me", env.emulator.url()))
        .header("x-api-key", value)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    column_filled(&env, "bz", LastUsedSource::Provider, None).await;
}

#[tokio::test]
async fn last_use_of_a_digitalocean_key_is_not_reported() {
    let env = crate::digitalocean::env().await;
    let spec = ApiKeySpec {
        digitalocean: Some(Box::new(DigitalOceanKeySpec {
            agent_uuid: Some(crate::digitalocean::AGENT.into()),
        })),
        ..Default::default()
    };
    env.create(&apikey("agent", "digitalocean", spec)).await;
    let ak = env.converge("agent", 4).await;
    let (lu, at) = last_used(&ak);
    assert_eq!(
        lu,
        Some(LastUsed {
            at: None,
            source: LastUsedSource::NotReported,
            precision: None,
        }),
        "DigitalOcean reports nothing that tells a key's use"
    );
    assert_eq!(at, None);
}
