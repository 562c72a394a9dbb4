//! The reconciler end to end on DigitalOcean Gradient: model keys can only be adopted (create is
//! 410 Gone) and adoption regenerates the key; agent keys are minted.

use keysmith::api::{
    AdoptionPolicy, ApiKeySpec, DigitalOceanKeySpec, DigitalOceanProvider, KeyProviderSpec, KeyRef,
    SecretKeySelector,
};
use keysmith::emulators::{self, build_digitalocean, DigitalOceanArgs};
use serde_json::{json, Value};

use crate::harness::*;

const TOKEN: &str = "dop_v1_controller_test_token";
pub(crate) const AGENT: &str = "1b418231-b7d6-11ef-bf8f-4e013e2ddde4";

pub(crate) async fn env() -> Env {
    let args = DigitalOceanArgs {
        tokens: vec![TOKEN.into()],
        agents: vec![AGENT.into()],
        ..Default::default()
    };
    let (router, faults) = build_digitalocean(&args);
    let e = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let spec = KeyProviderSpec {
        digitalocean: Some(DigitalOceanProvider {
            base_url: Some(e.url()),
            token_secret_ref: SecretKeySelector {
                name: "do-token".into(),
                key: "token".into(),
                namespace: None,
            },
        }),
        // Model keys can only be adopted: the shared provider's owner allows it.
        adoption: Some(AdoptionPolicy {
            allowed: true,
            namespace_selector: None,
        }),
        ..Default::default()
    };
    let creds = vec![secret(OPERATOR_NS, "do-token", "token", TOKEN)];
    env_for(e, "digitalocean", spec, creds, vec![]).await
}

/// A model key "created in the control panel": (uuid, its original value).
pub(crate) async fn seed_model_key(env: &Env, name: &str) -> (String, String) {
    let (code, body) = env
        .emulator_post("/_emulator/model-keys", json!({ "name": name }))
        .await;
    assert_eq!(code, 201, "{body}");
    (
        body["uuid"].as_str().unwrap().to_string(),
        body["secret_key"].as_str().unwrap().to_string(),
    )
}

/// Serverless inference's `GET /v1/models` with a model key: the status code.
pub(crate) async fn inference(env: &Env, value: &str) -> u16 {
    env.http
        .get(format!("{}/v1/models", env.emulator.url()))
        .bearer_auth(value)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The agent's endpoint with an agent key: the status code.
async fn agent_check(env: &Env, agent: &str, value: &str) -> u16 {
    env.http
        .post(format!(
            "{}/_emulator/agents/{agent}/check",
            env.emulator.url()
        ))
        .bearer_auth(value)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn key_by_id(env: &Env, id: &str) -> Value {
    env.emulator_keys()
        .await
        .into_iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("key {id} at the emulator"))
}

#[tokio::test]
async fn a_model_key_without_key_ref_is_refused_before_any_call() {
    let env = env().await;
    env.create(&apikey("model", "digitalocean", ApiKeySpec::default()))
        .await;
    env.reset_provider_calls().await;
    env.reconcile("model").await.unwrap();
    env.reconcile("model").await.unwrap();
    let ak = env.get("model").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidSpec"),
        "{message}"
    );
    assert!(
        message.contains("410") && message.contains("spec.keyRef"),
        "{message}"
    );
    assert_eq!(env.provider_calls().await["requests"], 0);
    assert!(env.emulator_keys().await.is_empty());
    assert!(env.secrets().get_opt("model").await.unwrap().is_none());
}

#[tokio::test]
async fn adopting_a_model_key_regenerates_it_then_renames_follow_the_spec() {
    let env = env().await;
    let (uuid, original) = seed_model_key(&env, "console-inference-key").await;
    assert_eq!(inference(&env, &original).await, 200);
    let spec = ApiKeySpec {
        key_ref: Some(Box::new(KeyRef { id: uuid.clone() })),
        ..Default::default()
    };
    env.create(&apikey("inference", "digitalocean", spec)).await;
    let ak = env.converge("inference", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let st = ak.status.unwrap();
    assert_eq!(st.key_id.as_deref(), Some(uuid.as_str()));
    assert!(st.created_at.is_some());
    let value = env
        .secret_value("inference", "api-key")
        .await
        .expect("Secret");
    assert_ne!(value, original, "a fresh value from regenerate");
    assert_eq!(
        inference(&env, &value).await,
        200,
        "the Secret's value works"
    );
    assert_eq!(
        inference(&env, &original).await,
        401,
        "regenerate killed the console value"
    );
    let k = key_by_id(&env, &uuid).await;
    assert_eq!(k["regenerations"], 1);
    assert_eq!(k["family"], "model");
    assert_eq!(k["active"], true);

    let events = env.events();
    let regenerated = events
        .iter()
        .find(|(_, r, _)| r == "KeyRegenerated")
        .unwrap_or_else(|| panic!("a KeyRegenerated event: {events:?}"));
    assert_eq!(regenerated.0, "Warning");
    assert!(regenerated.2.contains(&uuid), "{}", regenerated.2);
    assert!(
        !regenerated.2.contains(&value) && !regenerated.2.contains(&original),
        "no value in an event"
    );
    for w in env.take_writes() {
        if !w.starts_with("patch Secret") {
            assert!(!w.contains(&value), "the value appeared in a write");
        }
    }

    // The adopted key takes the ApiKey's name (default <namespace>/<name>).
    env.converge("inference", 2).await;
    assert_eq!(
        key_by_id(&env, &uuid).await["name"],
        format!("{}/inference", env.ns)
    );

    env.assert_quiet("inference").await;

    // A displayName change is a rename, in place.
    env.patch_spec("inference", json!({"displayName": "chat-inference"}))
        .await;
    env.reset_provider_calls().await;
    env.reconcile("inference").await.unwrap();
    let ak = env.get("inference").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    let k = key_by_id(&env, &uuid).await;
    assert_eq!(k["name"], "chat-inference");
    assert_eq!(k["regenerations"], 1, "a rename does not regenerate");
    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(&calls, "PUT /v2/gen-ai/models/api_keys/{api_key_uuid}"),
        1,
        "{calls}"
    );
    assert_eq!(
        env.secret_value("inference", "api-key").await.as_deref(),
        Some(value.as_str())
    );
    assert_eq!(inference(&env, &value).await, 200);
}

#[tokio::test]
async fn an_agent_key_is_minted_and_deleted_with_the_apikey() {
    let env = env().await;
    let spec = ApiKeySpec {
        digitalocean: Some(Box::new(DigitalOceanKeySpec {
            agent_uuid: Some(AGENT.into()),
        })),
        ..Default::default()
    };
    env.create(&apikey("agent", "digitalocean", spec)).await;
    let ak = env.converge("agent", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let id = ak.status.unwrap().key_id.unwrap();
    let value = env.secret_value("agent", "api-key").await.expect("Secret");
    assert_eq!(agent_check(&env, AGENT, &value).await, 200);
    assert_eq!(
        inference(&env, &value).await,
        401,
        "an agent key is not a model key"
    );
    let k = key_by_id(&env, &id).await;
    assert_eq!(k["family"], "agent");
    assert_eq!(k["agentUUID"], AGENT);
    assert_eq!(k["name"], format!("{}/agent", env.ns));

    env.assert_quiet("agent").await;

    env.delete("agent").await;
    env.reconcile("agent").await.unwrap();
    let k = key_by_id(&env, &id).await;
    assert_eq!(k["active"], false, "deleted at DigitalOcean: {k}");
    assert!(k["deletedAt"].is_string());
    assert_eq!(agent_check(&env, AGENT, &value).await, 401);
    assert!(env.apikeys().get_opt("agent").await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_an_adopted_model_key_deletes_it_at_digitalocean() {
    let env = env().await;
    let (uuid, _) = seed_model_key(&env, "to-delete").await;
    let spec = ApiKeySpec {
        key_ref: Some(Box::new(KeyRef { id: uuid.clone() })),
        display_name: Some("to-delete".into()),
        ..Default::default()
    };
    env.create(&apikey("gone", "digitalocean", spec)).await;
    assert_eq!(ready(&env.converge("gone", 4).await).0, "True");
    let value = env.secret_value("gone", "api-key").await.unwrap();
    env.delete("gone").await;
    env.reconcile("gone").await.unwrap();
    let k = key_by_id(&env, &uuid).await;
    assert_eq!(k["active"], false, "{k}");
    assert_eq!(inference(&env, &value).await, 401);
    assert!(env.apikeys().get_opt("gone").await.unwrap().is_none());
}

#[tokio::test]
async fn a_lost_secret_of_an_adopted_key_is_refilled_by_regenerating_the_same_key() {
    let env = env().await;
    let (uuid, _) = seed_model_key(&env, &format!("{}/refill", env.ns)).await;
    let spec = ApiKeySpec {
        key_ref: Some(Box::new(KeyRef { id: uuid.clone() })),
        ..Default::default()
    };
    env.create(&apikey("refill", "digitalocean", spec)).await;
    env.converge("refill", 4).await;
    let first = env.secret_value("refill", "api-key").await.unwrap();
    env.secrets()
        .delete("refill", &Default::default())
        .await
        .unwrap();
    let ak = env.converge("refill", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    assert_eq!(
        ak.status.unwrap().key_id.as_deref(),
        Some(uuid.as_str()),
        "the adopted key stays"
    );
    let second = env.secret_value("refill", "api-key").await.unwrap();
    assert_ne!(second, first);
    assert_eq!(inference(&env, &second).await, 200);
    assert_eq!(inference(&env, &first).await, 401);
    let keys = env.emulator_keys().await;
    assert_eq!(keys.len(), 1, "no other key: {keys:?}");
    assert_eq!(keys[0]["regenerations"], 2);
    assert_eq!(keys[0]["active"], true);
}

const AGENT_B: &str = "2c529342-c8e7-11ef-bf8f-4e013e2ddde4";

fn live(keys: &[Value]) -> Vec<&Value> {
    keys.iter().filter(|k| k["active"] == true).collect()
}

/// A key lives under one agent for good: a new agentUUID needs a new key, and the key under the
/// old agent is never lost track of (it is still read there, then revoked).
#[tokio::test]
async fn moving_an_agent_key_to_another_agent_needs_a_new_key_and_leaks_nothing() {
    let env = env().await;
    let (code, _) = env
        .emulator_post("/_emulator/agents", json!({"uuid": AGENT_B}))
        .await;
    assert_eq!(code, 201);
    let spec = ApiKeySpec {
        digitalocean: Some(Box::new(DigitalOceanKeySpec {
            agent_uuid: Some(AGENT.into()),
        })),
        ..Default::default()
    };
    env.create(&apikey("mover", "digitalocean", spec)).await;
    let old = env
        .converge("mover", 4)
        .await
        .status
        .unwrap()
        .key_id
        .unwrap();
    let old_value = env.secret_value("mover", "api-key").await.unwrap();

    // Report (default): the key under the old agent stays; the status says why.
    env.patch_spec("mover", json!({"digitalocean": {"agentUUID": AGENT_B}}))
        .await;
    env.reconcile("mover").await.unwrap();
    let ak = env.get("mover").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "NewKeyNeeded"),
        "{message}"
    );
    let st = ak.status.unwrap();
    assert_eq!(st.key_id.as_deref(), Some(old.as_str()));
    assert_eq!(
        st.fields_needing_new_key,
        vec!["spec.digitalocean".to_string()]
    );
    let keys = env.emulator_keys().await;
    assert_eq!(live(&keys).len(), 1, "no key minted under Report: {keys:?}");
    assert_eq!(agent_check(&env, AGENT, &old_value).await, 200);

    // Replace: a key under the new agent, the old agent's key deleted.
    env.patch_spec("mover", json!({"onImmutableChange": "Replace"}))
        .await;
    env.reconcile("mover").await.unwrap();
    let ak = env.get("mover").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    let new = ak.status.unwrap().key_id.unwrap();
    assert_ne!(new, old);
    let keys = env.emulator_keys().await;
    let live_keys = live(&keys);
    assert_eq!(live_keys.len(), 1, "{keys:?}");
    assert_eq!(live_keys[0]["id"], new.as_str());
    assert_eq!(live_keys[0]["agentUUID"], AGENT_B);
    let value = env.secret_value("mover", "api-key").await.unwrap();
    assert_eq!(agent_check(&env, AGENT_B, &value).await, 200);
    assert_eq!(agent_check(&env, AGENT, &old_value).await, 401);
    env.assert_quiet("mover").await;

    env.delete("mover").await;
    env.reconcile("mover").await.unwrap();
    assert!(
        live(&env.emulator_keys().await).is_empty(),
        "deleting the ApiKey leaves no key behind"
    );
}
