//! Bifrost's newer key features and a gateway's own writes (issue 20): the server-written
//! provider-key `description`/`status`, virtual-key expiry, and a virtual key rotated outside
//! keysmith.

use keysmith::api::{ApiKey, ApiKeySpec, BifrostProvider, KeyProviderSpec};
use keysmith::emulators::{self, bifrost as emu};
use serde_json::{json, Value};

use crate::bifrost::{provider_keys, upstream_secret, virtual_keys, UPSTREAM_V1};
use crate::harness::*;

async fn env_args(args: emu::Args, extra: Vec<Value>) -> Env {
    let (router, faults) = emu::build(&args);
    let e = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let spec = KeyProviderSpec {
        bifrost: Some(BifrostProvider {
            base_url: e.url(),
            auth_secret_ref: None,
        }),
        ..Default::default()
    };
    env_for(e, "bifrost", spec, vec![], extra).await
}

/// An ApiKeySpec from its JSON (the provider reference is `apikey`'s).
fn spec(mut v: Value) -> ApiKeySpec {
    v["providerRef"] = json!({"name": "placeholder"});
    serde_json::from_value(v).expect("ApiKeySpec")
}

fn condition(ak: &ApiKey, type_: &str) -> Option<(String, String, String)> {
    ak.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// `GET /v1/models` with a virtual key: the status code.
async fn works(env: &Env, value: &str) -> u16 {
    env.http
        .get(format!("{}/v1/models", env.emulator.url()))
        .bearer_auth(value)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn rotate_behind_keysmiths_back(env: &Env, id: &str) {
    let (code, body) = env
        .emulator_post("/_emulator/rotate", json!({ "vkId": id }))
        .await;
    assert_eq!(code, 200, "{body}");
}

/// A gateway whose model listing with the key fails writes its error text into the provider
/// key's `description` (the published schema's server-written field). Before: keysmith wrote
/// `spec.bifrost.description` there and compared it, so every refresh PUT the key again. Now:
/// nothing is written on refresh, and the gateway's `list_models_failed` is a condition.
#[tokio::test]
async fn a_gateway_writing_provider_key_descriptions_gets_no_put_on_refresh() {
    let env = env_args(
        emu::Args {
            list_models_fails: true,
            ..Default::default()
        },
        vec![serde_json::to_value(upstream_secret(UPSTREAM_V1)).unwrap()],
    )
    .await;
    let s = spec(json!({
        "displayName": "openai-prod",
        "source": {"secretRef": {"name": "openai-upstream", "key": "api-key"}},
        "bifrost": {"provider": "openai", "description": "team a's upstream key"},
    }));
    env.create(&apikey("described", "bifrost", s)).await;
    let ak = env.converge("described", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let pks = provider_keys(&env).await;
    assert_eq!(pks.len(), 1, "{pks:?}");
    assert!(
        !pks[0]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("team a"),
        "the user's text is not written into the gateway's field: {}",
        pks[0]["description"]
    );

    // Refreshes: a fresh read (the spec touched), then the shared listing.
    for label in ["one", "two"] {
        env.touch("described", label).await;
        env.reset_provider_calls().await;
        env.reconcile("described").await.unwrap();
        let calls = env.provider_calls().await;
        assert_eq!(
            route_count(&calls, "PUT /api/providers/{provider}/keys/{key_id}"),
            0,
            "no PUT on refresh: {calls}"
        );
        assert_eq!(
            route_count(&calls, "POST /api/providers/{provider}/keys"),
            0,
            "no push on refresh: {calls}"
        );
    }
    env.assert_quiet("described").await;

    // What the gateway says of the key is a condition (Ready stays True: it is registered).
    let ak = env.get("described").await;
    assert_eq!(ready(&ak).0, "True");
    let (status, reason, message) = condition(&ak, "Degraded").expect("Degraded condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ProviderReportedProblem")
    );
    assert!(message.contains("list_models_failed"), "{message}");
    assert!(!message.contains(UPSTREAM_V1));
}

/// `spec.ttl` on a Bifrost virtual key (newer Bifrost's `expires_at`): created with it,
/// reported in `status.expiresAt`, `ExpiringSoon` raised, and `renewBefore` rotates to a new
/// key ahead of the expiry. Before: `spec.ttl` was an unsupported field at Bifrost.
#[tokio::test]
async fn a_virtual_key_expiry_is_set_reported_and_rotated_ahead_of() {
    let env = env_args(emu::Args::default(), vec![]).await;
    let s = spec(json!({"models": ["openai/gpt-4o"], "ttl": "48h"}));
    env.create(&apikey("expiring", "bifrost", s)).await;
    let ak = env.converge("expiring", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let st = ak.status.clone().unwrap();
    let expires = st.expires_at.clone().expect("status.expiresAt");
    let e = chrono::DateTime::parse_from_rfc3339(&expires).unwrap();
    let left = e.signed_duration_since(chrono::Utc::now());
    assert!(
        left > chrono::Duration::hours(47) && left <= chrono::Duration::hours(48),
        "{expires}"
    );
    let vks = virtual_keys(&env).await;
    assert_eq!(vks.len(), 1);
    assert_eq!(vks[0]["expiresAt"].as_str(), Some(expires.as_str()));
    let (status, _, _) = condition(&ak, "ExpiringSoon").expect("ExpiringSoon");
    assert_eq!(status, "True", "expires within the default 7-day window");
    env.assert_quiet("expiring").await;

    // A fixed expiry inside renewBefore: updated in place, then one rotation to a new key
    // with the same expiry (and no second one: the rotation happened inside the window).
    let first = st.key_id.clone().unwrap();
    let fixed = (chrono::Utc::now() + chrono::Duration::hours(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    env.patch_spec(
        "expiring",
        json!({"ttl": null, "expiresAt": fixed, "rotation": {"renewBefore": "40h"}}),
    )
    .await;
    for _ in 0..3 {
        env.reconcile("expiring").await.unwrap();
    }
    let ak = env.get("expiring").await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let st = ak.status.clone().unwrap();
    assert_ne!(st.key_id.as_deref(), Some(first.as_str()), "rotated");
    assert!(st.last_rotated_at.is_some());
    assert_eq!(
        st.previous_keys.first().map(|p| p.key_id.as_str()),
        Some(first.as_str()),
        "the old key lives out its grace period"
    );
    let value = env.secret_value("expiring", "api-key").await.unwrap();
    assert_eq!(works(&env, &value).await, 200);
    let vks = virtual_keys(&env).await;
    let new = vks
        .iter()
        .find(|v| Some(v["id"].as_str().unwrap_or_default()) == st.key_id.as_deref())
        .expect("the new key at the gateway");
    assert_eq!(new["expiresAt"].as_str(), Some(fixed.as_str()), "{new}");
    assert_eq!(st.expires_at.as_deref(), Some(fixed.as_str()));
    // One rotation per expiry, not a loop.
    env.assert_quiet("expiring").await;
    assert_eq!(env.get("expiring").await.status.unwrap().key_id, st.key_id);
}

/// A virtual key rotated at the gateway (its scheduled rotation, or by hand) while list/get
/// return values: the next refresh puts the gateway's new value in the Secret and says so.
/// Before: the Secret kept the dead value, Ready=True.
#[tokio::test]
async fn a_virtual_key_rotated_at_the_gateway_gets_its_new_value() {
    let env = env_args(emu::Args::default(), vec![]).await;
    env.create(&apikey(
        "rotated",
        "bifrost",
        spec(json!({"models": ["openai/gpt-4o"]})),
    ))
    .await;
    let ak = env.converge("rotated", 4).await;
    let id = ak.status.clone().unwrap().key_id.unwrap();
    let old = env.secret_value("rotated", "api-key").await.unwrap();
    rotate_behind_keysmiths_back(&env, &id).await;
    assert_eq!(works(&env, &old).await, 401, "the old value is dead");

    env.touch("rotated", "refresh").await;
    env.reconcile("rotated").await.unwrap();
    let ak = env.get("rotated").await;
    let (status, _, message) = ready(&ak);
    assert_eq!(status, "True", "{message}");
    let st = ak.status.clone().unwrap();
    assert_eq!(st.key_id.as_deref(), Some(id.as_str()), "the same key");
    assert!(st.last_rotated_at.is_some(), "the rotation is recorded");
    let new = env.secret_value("rotated", "api-key").await.unwrap();
    assert_ne!(new, old);
    assert_eq!(
        works(&env, &new).await,
        200,
        "the Secret holds the live value"
    );
    let events: Vec<_> = env
        .events()
        .into_iter()
        .filter(|(_, r, _)| r == "RotatedOutside")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(!events[0].2.contains(&new) && !events[0].2.contains(&old));
    env.assert_quiet("rotated").await;
}

/// Values hidden (newer builds): the gateway's `rotated_at` tells. keysmith reports
/// `Ready=False, RotatedOutside` with an Event; once `spec.rotation` manages the key, it
/// rotates to a new one. Before: Ready=True with a dead value in the Secret.
#[tokio::test]
async fn a_hidden_virtual_key_rotated_at_the_gateway_is_reported_then_replaced() {
    let env = env_args(
        emu::Args {
            hide_vk_values: true,
            ..Default::default()
        },
        vec![],
    )
    .await;
    env.create(&apikey(
        "hidden",
        "bifrost",
        spec(json!({"models": ["openai/gpt-4o"]})),
    ))
    .await;
    let ak = env.converge("hidden", 4).await;
    assert_eq!(ready(&ak).0, "True");
    let id = ak.status.clone().unwrap().key_id.unwrap();
    let old = env.secret_value("hidden", "api-key").await.unwrap();
    env.assert_quiet("hidden").await;
    // rotated_at has whole seconds: a rotation right after the create is not told apart.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    rotate_behind_keysmiths_back(&env, &id).await;

    env.touch("hidden", "refresh").await;
    let _ = env.reconcile("hidden").await;
    let ak = env.get("hidden").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RotatedOutside"),
        "{message}"
    );
    assert!(message.contains("keysmith.dev/rotate"), "{message}");
    assert!(
        env.events()
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "RotatedOutside"),
        "{:?}",
        env.events()
    );

    // The user lets keysmith manage the key's rotation: a new key at once.
    env.patch_spec("hidden", json!({"rotation": {"every": "720h"}}))
        .await;
    let ak = env.converge("hidden", 4).await;
    let (status, _, message) = ready(&ak);
    assert_eq!(status, "True", "{message}");
    let st = ak.status.clone().unwrap();
    assert_ne!(st.key_id.as_deref(), Some(id.as_str()), "a new key");
    let new = env.secret_value("hidden", "api-key").await.unwrap();
    assert_ne!(new, old);
    assert_eq!(works(&env, &new).await, 200);
    env.assert_quiet("hidden").await;
}
