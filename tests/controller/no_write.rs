//! Issue 20 item 6, for every provider: a reconcile that finds the provider's answer equal in
//! meaning to the spec makes no write, whatever the provider's formatting.
//!
//! Each emulator runs with `--normalise` (lists in another order, IPs as canonical CIDR blocks,
//! padded decimals, other time formats, fields no client knows). An ApiKey with every field the
//! provider takes is converged, then refreshed [`REFRESHES`] times, half of them fresh reads
//! (a touched spec) and half from the shared listing: the emulator's request log must show no
//! PATCH, PUT, POST or DELETE (for UCloud, no action but a read), the key must stay the same and
//! Ready.

use clap::Parser;
use keysmith::api::{
    ApiKey, ApiKeySpec, BifrostProvider, BoltzProvider, DigitalOceanProvider, KeyProviderSpec,
    OpenRouterProvider, SecretKeySelector,
};
use keysmith::emulators::{self, RunningEmulator};
use serde_json::{json, Value};

use crate::harness::*;

const REFRESHES: usize = 6;

/// Parse `argv` (with `--normalise`, as `keysmith emulate <provider>` takes it) into `A`.
fn emulator_args<A: clap::Args>(argv: &[&str]) -> A {
    #[derive(Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    let mut all = vec!["emulate", "--normalise"];
    all.extend_from_slice(argv);
    Cli::<A>::try_parse_from(all)
        .expect("emulator flags parse")
        .args
}

async fn spawn(built: (axum::Router, std::sync::Arc<emulators::Faults>)) -> RunningEmulator {
    emulators::spawn(built.0, built.1)
        .await
        .expect("emulator starts")
}

fn spec(v: Value) -> ApiKeySpec {
    serde_json::from_value(v).expect("ApiKey spec")
}

/// Whether a route of the emulator's request log (`"METHOD /path"`, or UCloud's
/// `"POST /?Action=X"`) changes anything at the provider. UCloud's bare `POST /` carries every
/// action and is judged by its `?Action=` entry instead.
fn is_write(route: &str, routes: &serde_json::Map<String, Value>) -> bool {
    if let Some((_, action)) = route.split_once("?Action=") {
        return !["List", "Get", "Describe"]
            .iter()
            .any(|p| action.starts_with(p));
    }
    let action_counted = routes
        .keys()
        .any(|r| r.starts_with(route) && r.contains("?Action="));
    if action_counted {
        return false;
    }
    !route.starts_with("GET ") && !route.starts_with("HEAD ")
}

fn writes_in(stats: &Value) -> Vec<String> {
    let routes = stats["byRoute"].as_object().cloned().unwrap_or_default();
    routes
        .iter()
        .filter(|(r, n)| n.as_u64().unwrap_or(0) > 0 && is_write(r, &routes))
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect()
}

fn normalised(stats: &Value) -> u64 {
    stats["injected"]["normalised"].as_u64().unwrap_or(0)
}

/// Converge `ak`, then refresh it [`REFRESHES`] times against the normalising emulator and
/// check that nothing was written to the provider.
async fn no_write_after_converging(env: &Env, ak: ApiKey) {
    let name = ak.metadata.name.clone().unwrap();
    env.create(&ak).await;
    let first = env.converge(&name, 6).await;
    let (status, reason, message) = ready(&first);
    assert_eq!(status, "True", "{name} converges: {reason}: {message}");
    let id = first.status.as_ref().and_then(|s| s.key_id.clone());
    assert!(id.is_some(), "{name} has a key");

    env.reset_provider_calls().await;
    for i in 0..REFRESHES {
        if i % 2 == 0 {
            // A fresh read of the key (the generation moved).
            env.touch(&name, &format!("r{i}")).await;
        }
        env.reconcile(&name).await.expect("reconcile");
    }
    let stats = env.provider_calls().await;
    // The refreshes read the provider, and what they read was normalised.
    assert!(
        stats["requests"].as_u64().unwrap_or(0) > 0,
        "{name}: the refreshes read the provider: {stats}"
    );
    assert!(
        normalised(&stats) > 0,
        "{name}: the emulator normalised its answers: {stats}"
    );
    assert_eq!(
        writes_in(&stats),
        Vec::<String>::new(),
        "{name}: an answer equal in meaning draws no write: {stats}"
    );
    let after = env.get(&name).await;
    let (status, reason, message) = ready(&after);
    assert_eq!(status, "True", "{name} stays Ready: {reason}: {message}");
    assert_eq!(
        after.status.as_ref().and_then(|s| s.key_id.clone()),
        id,
        "{name} keeps its key"
    );
}

#[tokio::test]
async fn openrouter_answers_equal_in_meaning_draw_no_write() {
    const MGMT: &str = "sk-or-v1-mgmt-no-write-0000";
    let e = spawn(emulators::openrouter::build(&emulator_args(&[
        "--management-key",
        MGMT,
    ])))
    .await;
    let provider = KeyProviderSpec {
        openrouter: Some(OpenRouterProvider {
            base_url: Some(format!("{}/api/v1", e.url())),
            management_key_secret_ref: SecretKeySelector {
                name: "openrouter-mgmt".into(),
                key: "token".into(),
                namespace: None,
            },
            workspace_id: None,
        }),
        ..Default::default()
    };
    let creds = vec![secret(OPERATOR_NS, "openrouter-mgmt", "token", MGMT)];
    let env = env_for(e, "openrouter", provider, creds, vec![]).await;
    let expires = (chrono::Utc::now() + chrono::Duration::days(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let ak = apikey(
        "or-every-field",
        "openrouter",
        spec(json!({
            "providerRef": {"name": "openrouter"},
            "displayName": "No Write / OpenRouter",
            "disabled": true,
            "expiresAt": expires,
            "limit": {"amount": "12.5", "reset": "monthly"},
            "openrouter": {"includeByokInLimit": true},
        })),
    );
    no_write_after_converging(&env, ak).await;
}

#[tokio::test]
async fn boltz_answers_equal_in_meaning_draw_no_write() {
    const ADMIN: &str = "sk_bc_admin_live_nowrite0123456789";
    let e = spawn(emulators::boltz::build(&emulator_args(&[
        "--admin-key",
        ADMIN,
    ])))
    .await;
    let provider = KeyProviderSpec {
        boltz: Some(BoltzProvider {
            base_url: Some(e.url()),
            api_key_secret_ref: SecretKeySelector {
                name: "boltz-admin".into(),
                key: "token".into(),
                namespace: None,
            },
            workspace_id: None,
        }),
        ..Default::default()
    };
    let creds = vec![secret(OPERATOR_NS, "boltz-admin", "token", ADMIN)];
    let env = env_for(e, "boltz", provider, creds, vec![]).await;
    let expires = (chrono::Utc::now() + chrono::Duration::days(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    // Boltz keys change only by a new key: with Replace, any drift would be a POST.
    let ak = apikey(
        "bz-every-field",
        "boltz",
        spec(json!({
            "providerRef": {"name": "boltz"},
            "displayName": "No Write / Boltz",
            "expiresAt": expires,
            "allowedIPs": ["10.0.0.1", "192.168.1.10/24", "2001:DB8::1"],
            "boltz": {"mode": "test"},
            "onImmutableChange": "Replace",
        })),
    );
    no_write_after_converging(&env, ak).await;
}

#[tokio::test]
async fn ucloud_answers_equal_in_meaning_draw_no_write() {
    const PUBLIC: &str = "no-write-public-key";
    const PRIVATE: &str = "no-write-private-key-0123456789";
    let e = spawn(emulators::ucloud::build(&emulator_args(&[
        "--public-key",
        PUBLIC,
        "--private-key",
        PRIVATE,
    ])))
    .await;
    let mut provider = crate::ucloud::provider_spec(&e.url());
    if let Some(u) = provider.ucloud.as_mut() {
        u.public_key = PUBLIC.into();
    }
    let creds = vec![secret(
        OPERATOR_NS,
        "ucloud-credentials",
        "privateKey",
        PRIVATE,
    )];
    let env = env_for(e, "ucloud", provider, creds, vec![]).await;
    let ak = apikey(
        "uc-every-field",
        "ucloud",
        spec(json!({
            "providerRef": {"name": "ucloud"},
            "displayName": "No Write / UCloud",
            "disabled": true,
            "limit": {"amount": "10", "reset": "daily"},
            "allowedIPs": ["10.0.0.1", "192.168.1.10/24", "10.0.0.1-10.0.0.9"],
            "models": ["deepseek-ai/DeepSeek-R1", "Qwen/Qwen3-235B-A22B"],
            "ucloud": {
                "modelverseDisabled": true,
                "sandboxDisabled": true,
                "monthlyLimitAmount": "12.5",
            },
        })),
    );
    no_write_after_converging(&env, ak).await;
}

#[tokio::test]
async fn digitalocean_answers_equal_in_meaning_draw_no_write() {
    const TOKEN: &str = "dop_v1_no_write_test_token";
    let e = spawn(emulators::digitalocean::build(&emulator_args(&[
        "--token",
        TOKEN,
        "--agent",
        crate::digitalocean::AGENT,
    ])))
    .await;
    let provider = KeyProviderSpec {
        digitalocean: Some(DigitalOceanProvider {
            base_url: Some(e.url()),
            token_secret_ref: SecretKeySelector {
                name: "do-token".into(),
                key: "token".into(),
                namespace: None,
            },
        }),
        ..Default::default()
    };
    let creds = vec![secret(OPERATOR_NS, "do-token", "token", TOKEN)];
    let env = env_for(e, "digitalocean", provider, creds, vec![]).await;
    let ak = apikey(
        "do-every-field",
        "digitalocean",
        spec(json!({
            "providerRef": {"name": "digitalocean"},
            "displayName": "No Write / DigitalOcean",
            "digitalocean": {"agentUUID": crate::digitalocean::AGENT},
        })),
    );
    no_write_after_converging(&env, ak).await;
}

#[tokio::test]
async fn bifrost_answers_equal_in_meaning_draw_no_write() {
    let e = spawn(emulators::bifrost::build(&emulator_args(&[]))).await;
    let provider = KeyProviderSpec {
        bifrost: Some(BifrostProvider {
            base_url: e.url(),
            auth_secret_ref: None,
        }),
        ..Default::default()
    };
    let env = env_for(e, "bifrost", provider, vec![], vec![]).await;
    let ak = apikey(
        "vk-every-field",
        "bifrost",
        spec(json!({
            "providerRef": {"name": "bifrost"},
            "displayName": "no-write-bifrost",
            "disabled": true,
            "limit": {"amount": "25", "reset": "monthly"},
            "bifrost": {
                "description": "no write",
                "providerConfigs": [
                    {"provider": "openai", "weight": 0.5,
                     "allowedModels": ["gpt-4o-mini", "gpt-4o"]},
                    {"provider": "anthropic", "weight": 0.5,
                     "allowedModels": ["claude-3-5-sonnet", "claude-3-5-haiku"]},
                ],
                "rateLimit": {
                    "tokenMaxLimit": 10000, "tokenResetDuration": "1h",
                    "requestMaxLimit": 100, "requestResetDuration": "1m",
                },
            },
        })),
    );
    no_write_after_converging(&env, ak).await;
}

/// A UCloud that keeps a cap sent empty (`--empty-keeps`: the reference does not say an empty
/// value clears): removing the cap from the spec sends one update, then the ApiKey reports the
/// kept cap and later reconciles send nothing more (issue 20 item 3: no loop).
#[tokio::test]
async fn a_cap_ucloud_keeps_is_reported_not_sent_on_every_reconcile() {
    const PUBLIC: &str = "no-write-public-key";
    const PRIVATE: &str = "no-write-private-key-0123456789";
    let e = spawn(emulators::ucloud::build(&emulator_args(&[
        "--public-key",
        PUBLIC,
        "--private-key",
        PRIVATE,
        "--empty-keeps",
    ])))
    .await;
    let mut provider = crate::ucloud::provider_spec(&e.url());
    if let Some(u) = provider.ucloud.as_mut() {
        u.public_key = PUBLIC.into();
    }
    let creds = vec![secret(
        OPERATOR_NS,
        "ucloud-credentials",
        "privateKey",
        PRIVATE,
    )];
    let env = env_for(e, "ucloud", provider, creds, vec![]).await;
    let ak = apikey(
        "uc-kept-cap",
        "ucloud",
        spec(json!({
            "providerRef": {"name": "ucloud"},
            "limit": {"amount": "10", "reset": "daily"},
        })),
    );
    env.create(&ak).await;
    let (status, reason, message) = ready(&env.converge("uc-kept-cap", 6).await);
    assert_eq!(status, "True", "{reason}: {message}");
    env.reset_provider_calls().await;
    env.apikeys()
        .patch(
            "uc-kept-cap",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/spec/limit"}])).unwrap(),
            ),
        )
        .await
        .expect("limit removed");
    for i in 0..REFRESHES {
        if i % 2 == 1 {
            env.touch("uc-kept-cap", &format!("r{i}")).await;
        }
        let _ = env.reconcile("uc-kept-cap").await;
    }
    let stats = env.provider_calls().await;
    assert_eq!(
        route_count(&stats, "POST /?Action=UpdateUMInferAPIKey"),
        1,
        "one attempt to remove the cap, not one per reconcile: {stats}"
    );
    assert_eq!(writes_in(&stats).len(), 1, "{stats}");
    let (status, reason, message) = ready(&env.get("uc-kept-cap").await);
    assert_eq!(status, "False");
    assert!(
        message.contains("DailyLimitAmount") && message.contains("UCloud kept"),
        "{reason}: {message}"
    );
}

#[tokio::test]
async fn bifrost_provider_key_answers_equal_in_meaning_draw_no_write() {
    let e = spawn(emulators::bifrost::build(&emulator_args(&[]))).await;
    let provider = KeyProviderSpec {
        bifrost: Some(BifrostProvider {
            base_url: e.url(),
            auth_secret_ref: None,
        }),
        ..Default::default()
    };
    let upstream = crate::bifrost::upstream_secret(crate::bifrost::UPSTREAM_V1);
    let env = env_for(
        e,
        "bifrost",
        provider,
        vec![],
        vec![serde_json::to_value(upstream).unwrap()],
    )
    .await;
    let ak = apikey(
        "pk-every-field",
        "bifrost",
        spec(json!({
            "providerRef": {"name": "bifrost"},
            "displayName": "no-write-provider-key",
            "models": ["gpt-4o-mini", "gpt-4o", "o3"],
            "source": {"secretRef": {"name": "openai-upstream", "key": "api-key"}},
            "bifrost": {"provider": "openai", "weight": 0.5},
        })),
    );
    no_write_after_converging(&env, ak).await;
}
