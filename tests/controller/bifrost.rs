//! The reconciler end to end on a Bifrost gateway: virtual keys are minted (and kept in sync),
//! provider keys are pushed from a Secret the user owns.

use k8s_openapi::api::core::v1::Secret;
use keysmith::api::{
    ApiKeySpec, BifrostKeySpec, BifrostProvider, KeyProviderSpec, KeySource, LocalSecretKeyRef,
};
use keysmith::emulators::{self, build_bifrost, BifrostArgs};
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

use crate::harness::*;

pub(crate) const UPSTREAM_V1: &str = "sk-proj-upstream-value-one-0123456789";
pub(crate) const UPSTREAM_V2: &str = "sk-proj-upstream-value-two-9876543210";

pub(crate) async fn env_with(extra: Vec<Value>) -> Env {
    let (router, faults) = build_bifrost(&BifrostArgs::default());
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

/// `GET /v1/models` with a virtual key: (status, allowed `provider/model`s).
async fn models(env: &Env, value: &str) -> (u16, Vec<String>) {
    let r = env
        .http
        .get(format!("{}/v1/models", env.emulator.url()))
        .bearer_auth(value)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let ids = body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (status, ids)
}

pub(crate) async fn virtual_keys(env: &Env) -> Vec<Value> {
    env.emulator_get("/_emulator/keys").await["virtualKeys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub(crate) async fn provider_keys(env: &Env) -> Vec<Value> {
    env.emulator_get("/_emulator/keys").await["providerKeys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Does the gateway hold `value` for provider key `id` of `provider`?
pub(crate) async fn holds(env: &Env, provider: &str, id: &str, value: &str) -> bool {
    let (code, body) = env
        .emulator_post(
            "/_emulator/provider-key-check",
            json!({"provider": provider, "id": id, "value": value}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body["matches"] == true
}

#[tokio::test]
async fn a_virtual_key_is_minted_and_kept_in_sync() {
    let env = env_with(vec![]).await;
    let spec = ApiKeySpec {
        models: vec!["openai/gpt-4o".into()],
        ..Default::default()
    };
    env.create(&apikey("vk", "bifrost", spec)).await;
    let ak = env.converge("vk", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let id = ak.status.unwrap().key_id.expect("keyID");
    let value = env.secret_value("vk", "api-key").await.expect("Secret");
    assert!(value.starts_with("sk-bf-"), "a virtual key");
    assert_eq!(
        models(&env, &value).await,
        (200, vec!["openai/gpt-4o".to_string()]),
        "the Secret's value works at the gateway"
    );
    let vks = virtual_keys(&env).await;
    assert_eq!(vks.len(), 1);
    assert_eq!(vks[0]["id"], id.as_str());
    assert_eq!(vks[0]["name"], format!("{}/vk", env.ns));
    assert_eq!(vks[0]["active"], true);
    assert!(vks[0]["budgets"].as_array().unwrap().is_empty());

    env.assert_quiet("vk").await;

    // A limit becomes a budget; disabled turns the key off; both in place.
    env.patch_spec(
        "vk",
        json!({"limit": {"amount": "25", "reset": "monthly"}, "disabled": true}),
    )
    .await;
    env.reconcile("vk").await.unwrap();
    let ak = env.get("vk").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    assert_eq!(ak.status.unwrap().key_id.as_deref(), Some(id.as_str()));
    let vks = virtual_keys(&env).await;
    assert_eq!(vks.len(), 1, "updated, not replaced");
    assert_eq!(vks[0]["active"], false, "disabled → is_active false");
    let budgets = vks[0]["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 1, "{budgets:?}");
    assert_eq!(budgets[0]["maxLimit"].as_f64(), Some(25.0));
    assert_eq!(budgets[0]["resetDuration"], "1M");
    assert_eq!(
        models(&env, &value).await.0,
        401,
        "a disabled virtual key is refused"
    );
    assert_eq!(
        env.secret_value("vk", "api-key").await.as_deref(),
        Some(value.as_str())
    );

    // Enabled again, with spend reported back as usage.
    env.patch_spec("vk", json!({"disabled": false})).await;
    env.reconcile("vk").await.unwrap();
    assert_eq!(virtual_keys(&env).await[0]["active"], true);
    assert_eq!(models(&env, &value).await.0, 200);
    let (code, _) = env
        .emulator_post("/_emulator/usage", json!({"vkId": id, "amount": 5.5}))
        .await;
    assert_eq!(code, 200);
    env.touch("vk", "usage").await;
    env.reconcile("vk").await.unwrap();
    let usage = env
        .get("vk")
        .await
        .status
        .unwrap()
        .usage
        .expect("usage from the budget");
    assert_eq!(usage.monthly.as_deref(), Some("5.5"));
    assert_eq!(usage.limit_remaining.as_deref(), Some("19.5"));

    env.delete("vk").await;
    env.reconcile("vk").await.unwrap();
    assert!(
        virtual_keys(&env).await.is_empty(),
        "deleted at the gateway"
    );
    assert_eq!(models(&env, &value).await.0, 401);
}

/// The user's upstream Secret, labelled `keysmith.dev/source` (the opt-in a push needs).
pub(crate) fn upstream_secret(value: &str) -> Secret {
    let mut s = secret(NS, "openai-upstream", "api-key", value);
    s.metadata.labels = Some([("keysmith.dev/source".to_string(), "true".to_string())].into());
    s
}

/// issue 17 item 12: `spec.source` may name any Secret of the namespace; one its owner did not
/// label `keysmith.dev/source` is not read and nothing is pushed (before: pushed to the gateway).
#[tokio::test]
async fn an_unlabelled_source_secret_is_not_pushed() {
    let env = env_with(vec![serde_json::to_value(secret(
        NS,
        "openai-upstream",
        "api-key",
        UPSTREAM_V1,
    ))
    .unwrap()])
    .await;
    env.create(&apikey("openai", "bifrost", provider_key_spec()))
        .await;
    env.reset_provider_calls().await;
    let ak = env.converge("openai", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SourceNotFound"),
        "{message}"
    );
    assert!(message.contains("keysmith.dev/source"), "{message}");
    assert!(provider_keys(&env).await.is_empty());
    let calls = env.provider_calls().await;
    assert_eq!(
        calls["byRoute"]["POST /api/providers/openai/keys"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{calls}"
    );
}

pub(crate) fn provider_key_spec() -> ApiKeySpec {
    ApiKeySpec {
        display_name: Some("openai-prod".into()),
        models: vec!["gpt-4o".into(), "gpt-4o-mini".into()],
        source: Some(Box::new(KeySource {
            secret_ref: LocalSecretKeyRef {
                name: "openai-upstream".into(),
                key: "api-key".into(),
            },
        })),
        bifrost: Some(Box::new(BifrostKeySpec {
            provider: Some("openai".into()),
            weight: Some(2.0),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_provider_key_is_pushed_from_the_users_secret() {
    let env = env_with(vec![
        serde_json::to_value(upstream_secret(UPSTREAM_V1)).unwrap()
    ])
    .await;
    env.create(&apikey("openai", "bifrost", provider_key_spec()))
        .await;
    let ak = env.converge("openai", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    assert!(!message.contains(UPSTREAM_V1));
    let st = ak.status.unwrap();
    let id = st.key_id.clone().expect("keyID");
    assert!(st.secret_name.is_none(), "a pushed key writes no Secret");
    let hint = st.key_hint.clone().unwrap_or_default();
    assert!(!hint.contains(UPSTREAM_V1), "{hint}");

    let pks = provider_keys(&env).await;
    assert_eq!(pks.len(), 1, "{pks:?}");
    assert_eq!(pks[0]["id"], id.as_str());
    assert_eq!(pks[0]["provider"], "openai");
    assert_eq!(pks[0]["name"], "openai-prod");
    assert_eq!(pks[0]["active"], true);
    assert_eq!(pks[0]["weight"].as_f64(), Some(2.0));
    assert_eq!(pks[0]["models"], json!(["gpt-4o", "gpt-4o-mini"]));
    assert!(holds(&env, "openai", &id, UPSTREAM_V1).await);

    // keysmith wrote no Secret: the only one is the user's, untouched.
    assert!(env.secrets().get_opt("openai").await.unwrap().is_none());
    let writes = env.take_writes();
    assert!(
        !writes.iter().any(|w| w.starts_with("patch Secret")),
        "{:?}",
        writes
            .iter()
            .map(|w| w.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    );
    for w in &writes {
        assert!(
            !w.contains(UPSTREAM_V1),
            "the pushed value appeared in a write"
        );
    }
    assert_eq!(
        env.secret_value("openai-upstream", "api-key")
            .await
            .as_deref(),
        Some(UPSTREAM_V1)
    );

    // Steady: no push while the Secret and the spec are unchanged.
    env.reconcile("openai").await.unwrap();
    env.reset_provider_calls().await;
    env.reconcile("openai").await.unwrap();
    let calls = env.provider_calls().await;
    assert_eq!(calls["requests"], 0, "{calls}");

    // The user rotates the upstream value: the new value goes to a new provider key, the old
    // key stays for the grace period (tests/controller/rotation.rs follows it to its end).
    env.secrets()
        .patch(
            "openai-upstream",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {
                "api-key": k8s_openapi::ByteString(UPSTREAM_V2.as_bytes().to_vec())
            }})),
        )
        .await
        .unwrap();
    env.reconcile("openai").await.unwrap();
    let ak = env.get("openai").await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let st = ak.status.unwrap();
    let new_id = st.key_id.clone().expect("keyID");
    assert_ne!(new_id, id, "a new provider key");
    assert!(
        holds(&env, "openai", &new_id, UPSTREAM_V2).await,
        "re-pushed"
    );
    assert!(
        holds(&env, "openai", &id, UPSTREAM_V1).await,
        "old key in grace"
    );
    assert_eq!(st.previous_keys.len(), 1, "{:?}", st.previous_keys);
    assert_eq!(st.previous_keys[0].key_id, id);
    assert_eq!(provider_keys(&env).await.len(), 2, "new key + old in grace");
    // The re-push is reported (writes were cleared after the first push; a repeated Event
    // reason is a patch of the first Event, whose note kube's Recorder keeps).
    let pushed: Vec<_> = env
        .events()
        .into_iter()
        .filter(|(_, r, _)| r == "KeyPushed")
        .collect();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    for (_, _, note) in &pushed {
        assert!(!note.contains(UPSTREAM_V1) && !note.contains(UPSTREAM_V2));
    }

    // Deleting the ApiKey removes the key from the gateway; the user's Secret stays.
    env.delete("openai").await;
    env.reconcile("openai").await.unwrap();
    assert!(
        provider_keys(&env).await.is_empty(),
        "removed at the gateway"
    );
    assert!(env.apikeys().get_opt("openai").await.unwrap().is_none());
    assert_eq!(
        env.secret_value("openai-upstream", "api-key")
            .await
            .as_deref(),
        Some(UPSTREAM_V2),
        "the user's Secret is never touched"
    );
}

#[tokio::test]
async fn a_virtual_key_secret_is_restored_and_a_crash_leaves_no_orphan() {
    let env = env_with(vec![]).await;
    env.create(&apikey("vk", "bifrost", ApiKeySpec::default()))
        .await;
    env.reconcile("vk").await.unwrap(); // finalizer
    env.ctx
        .crash_after_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = env.reconcile("vk").await;
    env.ctx
        .crash_after_create
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let vks = virtual_keys(&env).await;
    assert_eq!(vks.len(), 1);
    let orphan = vks[0]["id"].as_str().unwrap().to_string();
    assert!(
        vks[0]["description"]
            .as_str()
            .is_some_and(|d| d.contains("managed by keysmith (attempt ")),
        "{}",
        vks[0]
    );

    let ak = env.converge("vk", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let id = ak.status.unwrap().key_id.unwrap();
    assert_ne!(id, orphan, "the orphan's value was lost: it is not reused");
    let vks = virtual_keys(&env).await;
    assert_eq!(vks.len(), 1, "the orphan was deleted: {vks:?}");
    assert_eq!(vks[0]["id"], id.as_str());
    let value = env.secret_value("vk", "api-key").await.unwrap();
    assert_eq!(models(&env, &value).await.0, 200);

    // The gateway returns virtual-key values: a deleted Secret gets the same value back.
    env.secrets()
        .delete("vk", &Default::default())
        .await
        .unwrap();
    let ak = env.converge("vk", 3).await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    assert_eq!(ak.status.unwrap().key_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        env.secret_value("vk", "api-key").await.as_deref(),
        Some(value.as_str())
    );
    assert_eq!(virtual_keys(&env).await.len(), 1);
}

#[tokio::test]
async fn a_provider_key_deleted_at_the_gateway_is_registered_again() {
    let env = env_with(vec![
        serde_json::to_value(upstream_secret(UPSTREAM_V1)).unwrap()
    ])
    .await;
    env.create(&apikey("openai", "bifrost", provider_key_spec()))
        .await;
    let id = env
        .converge("openai", 4)
        .await
        .status
        .unwrap()
        .key_id
        .unwrap();
    let r = env
        .http
        .delete(format!(
            "{}/api/providers/openai/keys/{id}",
            env.emulator.url()
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(provider_keys(&env).await.is_empty());

    env.touch("openai", "1").await;
    env.reconcile("openai").await.unwrap();
    let ak = env.get("openai").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    assert_eq!(ak.status.unwrap().key_id.as_deref(), Some(id.as_str()));
    let pks = provider_keys(&env).await;
    assert_eq!(pks.len(), 1, "{pks:?}");
    assert_eq!(pks[0]["id"], id.as_str(), "under the same id");
    assert!(holds(&env, "openai", &id, UPSTREAM_V1).await);
}

#[tokio::test]
async fn moving_a_provider_key_to_another_upstream_removes_the_old_one() {
    let env = env_with(vec![
        serde_json::to_value(upstream_secret(UPSTREAM_V1)).unwrap()
    ])
    .await;
    env.create(&apikey("mover", "bifrost", provider_key_spec()))
        .await;
    let old = env
        .converge("mover", 4)
        .await
        .status
        .unwrap()
        .key_id
        .unwrap();
    // Another upstream and another name (names are unique across a gateway's providers).
    env.patch_spec(
        "mover",
        json!({"displayName": "anthropic-prod", "models": [], "bifrost": {"provider": "anthropic"}}),
    )
    .await;
    env.reconcile("mover").await.unwrap();
    let ak = env.get("mover").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    let st = ak.status.unwrap();
    let new = st.key_id.clone().unwrap();
    assert_ne!(new, old, "a key of the other upstream provider");
    assert!(st.previous_keys.is_empty(), "{:?}", st.previous_keys);
    let pks = provider_keys(&env).await;
    assert_eq!(pks.len(), 1, "the openai key was removed: {pks:?}");
    assert_eq!(pks[0]["provider"], "anthropic");
    assert_eq!(pks[0]["name"], "anthropic-prod");
    assert!(holds(&env, "anthropic", &new, UPSTREAM_V1).await);

    env.delete("mover").await;
    env.reconcile("mover").await.unwrap();
    assert!(provider_keys(&env).await.is_empty());
}
