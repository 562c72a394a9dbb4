//! The reconciler end to end on UCloud ModelVerse: signed Action calls, keys whose value the
//! listing returns (so a lost Secret is restored and keys are adopted by reading back).

use keysmith::api::{
    AdoptionPolicy, ApiKeySpec, KeyProviderSpec, KeyRef, LimitReset, SecretKeySelector, SpendLimit,
    UCloudProvider,
};
use keysmith::emulators::{self, build_ucloud, UCloudArgs};
use keysmith::providers::{self, Credentials, KeySettings};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::harness::*;

const PUBLIC: &str = "controller-public-key";
const PRIVATE: &str = "controller-private-key-0123456789";

pub(crate) fn provider_spec(base: &str) -> KeyProviderSpec {
    KeyProviderSpec {
        ucloud: Some(UCloudProvider {
            base_url: Some(base.to_string()),
            public_key: PUBLIC.into(),
            private_key_secret_ref: SecretKeySelector {
                name: "ucloud-credentials".into(),
                key: "privateKey".into(),
                namespace: None,
            },
            project_id: None,
            region: None,
        }),
        ..Default::default()
    }
}

/// The shared ClusterKeyProvider `ucloud`, allowing adoption (its tests adopt keys).
pub(crate) async fn env() -> Env {
    env_with_adoption(Some(AdoptionPolicy {
        allowed: true,
        namespace_selector: None,
    }))
    .await
}

pub(crate) async fn env_with_adoption(adoption: Option<AdoptionPolicy>) -> Env {
    let args = UCloudArgs {
        public_key: PUBLIC.into(),
        private_key: PRIVATE.into(),
        ..Default::default()
    };
    let (router, faults) = build_ucloud(&args);
    let e = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let mut spec = provider_spec(&e.url());
    spec.adoption = adoption;
    let creds = vec![secret(
        OPERATOR_NS,
        "ucloud-credentials",
        "privateKey",
        PRIVATE,
    )];
    env_for(e, "ucloud", spec, creds, vec![]).await
}

/// `GET /v1/models` with `value`: (status, model ids).
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

pub(crate) fn live(keys: &[Value]) -> Vec<&Value> {
    keys.iter().filter(|k| k["active"] == true).collect()
}

fn key_by_id<'a>(keys: &'a [Value], id: &str) -> &'a Value {
    keys.iter()
        .find(|k| k["keyId"] == id)
        .unwrap_or_else(|| panic!("key {id} at the emulator: {keys:?}"))
}

#[tokio::test]
async fn creates_the_key_and_pushes_updates() {
    let env = env().await;
    env.create(&apikey("chat", "ucloud", ApiKeySpec::default()))
        .await;
    let ak = env.converge("chat", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let st = ak.status.unwrap();
    let id = st.key_id.clone().expect("keyID");
    assert!(id.starts_with("uminferapikey-"), "{id}");
    let value = env.secret_value("chat", "api-key").await.expect("Secret");
    assert_eq!(value.len(), 48);
    let hint = st.key_hint.clone().expect("keyHint");
    assert!(!hint.contains(&value));
    assert!(
        hint.starts_with(&value[..4]) && hint.ends_with(&value[44..]),
        "first and last four: {hint}"
    );
    let (code, all_models) = models(&env, &value).await;
    assert_eq!(code, 200, "the Secret's value is a live key");
    assert!(all_models.len() > 1, "GrantAllModels by default");

    let keys = env.emulator_keys().await;
    assert_eq!(live(&keys).len(), 1);
    let k = key_by_id(&keys, &id);
    assert_eq!(k["name"], format!("{}/chat", env.ns));
    assert_eq!(k["settings"]["grantAllModels"], true);
    assert_eq!(k["settings"]["dailyLimitAmount"], "");

    // Models and a daily cap, changed in place.
    env.patch_spec(
        "chat",
        json!({
            "models": ["deepseek-ai/DeepSeek-R1"],
            "limit": {"amount": "12.50", "reset": "daily"},
            "allowedIPs": ["10.0.0.0/8"],
        }),
    )
    .await;
    env.reset_provider_calls().await;
    env.reconcile("chat").await.unwrap();
    let ak = env.get("chat").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    assert_eq!(
        ak.status.unwrap().key_id.as_deref(),
        Some(id.as_str()),
        "an update keeps the key"
    );
    let keys = env.emulator_keys().await;
    assert_eq!(keys.len(), 1, "no new key: {keys:?}");
    let s = &key_by_id(&keys, &id)["settings"];
    assert_eq!(s["grantAllModels"], false);
    assert_eq!(s["grantedModels"], json!(["deepseek-ai/DeepSeek-R1"]));
    assert_eq!(s["dailyLimitAmount"], "12.5");
    assert_eq!(s["monthlyLimitAmount"], "");
    assert_eq!(s["ipWhitelist"], json!(["10.0.0.0/8"]));
    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(&calls, "POST /"),
        3,
        "a fresh read, the update, the read-back of the updated key: {calls}"
    );
    assert_eq!(
        models(&env, &value).await,
        (200, vec!["deepseek-ai/DeepSeek-R1".to_string()]),
        "the same value now sees the granted model only"
    );
    assert!(env
        .events()
        .iter()
        .any(|(t, r, _)| t == "Normal" && r == "KeyUpdated"));

    // Converged: after one pass that takes the shared listing, nothing is called or written.
    env.reconcile("chat").await.unwrap();
    env.reset_provider_calls().await;
    env.take_writes();
    env.reconcile("chat").await.unwrap();
    assert_eq!(env.provider_calls().await["requests"], 0);
    assert_eq!(env.take_writes(), Vec::<String>::new());
}

#[tokio::test]
async fn a_deleted_secret_is_restored_with_the_same_key() {
    let env = env().await;
    env.create(&apikey("keep", "ucloud", ApiKeySpec::default()))
        .await;
    let id = env
        .converge("keep", 4)
        .await
        .status
        .unwrap()
        .key_id
        .unwrap();
    let value = env.secret_value("keep", "api-key").await.unwrap();
    env.secrets()
        .delete("keep", &Default::default())
        .await
        .unwrap();
    env.reset_provider_calls().await;
    let ak = env.converge("keep", 3).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    assert_eq!(
        ak.status.unwrap().key_id.as_deref(),
        Some(id.as_str()),
        "same keyID"
    );
    assert_eq!(
        env.secret_value("keep", "api-key").await.as_deref(),
        Some(value.as_str()),
        "same value: workloads keep working"
    );
    let keys = env.emulator_keys().await;
    assert_eq!(keys.len(), 1, "no key was created: {keys:?}");
    assert_eq!(live(&keys).len(), 1);
    assert_eq!(models(&env, &value).await.0, 200);
    let s = env.secrets().get("keep").await.unwrap();
    assert_eq!(s.metadata.annotations.unwrap()["keysmith.dev/key-id"], id);
    assert_eq!(s.metadata.owner_references.unwrap()[0].name, "keep");
    assert!(env.events().iter().any(|(_, r, _)| r == "SecretRestored"));
}

#[tokio::test]
async fn adopts_an_existing_key_by_reading_its_value_back() {
    let env = env().await;
    // A key made outside keysmith (the console, another tool).
    let mut creds = Credentials::default();
    creds
        .0
        .insert("privateKey".into(), SecretString::from(PRIVATE.to_string()));
    let backend = providers::build_backend(
        &provider_spec(&env.emulator.url()),
        creds,
        test_client_options(),
    )
    .unwrap();
    let made = backend
        .create(&KeySettings {
            name: "console-key".into(),
            limit: Some(providers::Limit {
                amount: "30".into(),
                reset: Some(LimitReset::Monthly),
            }),
            ..Default::default()
        })
        .await
        .expect("key created at the emulator");
    let id = made.key.id.clone();
    let original = made.secret.expose_secret().to_string();

    let spec = ApiKeySpec {
        key_ref: Some(Box::new(KeyRef { id: id.clone() })),
        display_name: Some("console-key".into()),
        limit: Some(Box::new(SpendLimit {
            amount: "30".into(),
            reset: Some(LimitReset::Monthly),
        })),
        ..Default::default()
    };
    env.create(&apikey("adopted", "ucloud", spec)).await;
    let ak = env.converge("adopted", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    assert_eq!(ak.status.unwrap().key_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        env.secret_value("adopted", "api-key").await.as_deref(),
        Some(original.as_str()),
        "the value in use is read back, not replaced"
    );
    assert_eq!(models(&env, &original).await.0, 200, "and keeps working");
    let keys = env.emulator_keys().await;
    assert_eq!(keys.len(), 1, "adoption creates nothing: {keys:?}");
    assert_eq!(
        key_by_id(&keys, &id)["settings"]["monthlyLimitAmount"],
        "30"
    );
    assert!(env.events().iter().any(|(_, r, _)| r == "KeyAdopted"));

    // Steady: nothing to update.
    env.reconcile("adopted").await.unwrap();
    assert_eq!(ready(&env.get("adopted").await).1, "KeyActive");
    assert_eq!(env.emulator_keys().await.len(), 1);
}

#[tokio::test]
async fn deleting_the_apikey_deletes_the_key() {
    let env = env().await;
    env.create(&apikey("bye", "ucloud", ApiKeySpec::default()))
        .await;
    let id = env.converge("bye", 4).await.status.unwrap().key_id.unwrap();
    let value = env.secret_value("bye", "api-key").await.unwrap();
    env.delete("bye").await;
    env.reconcile("bye").await.unwrap();
    let keys = env.emulator_keys().await;
    let k = key_by_id(&keys, &id);
    assert_eq!(k["revoked"], true, "deleted at UCloud: {k}");
    assert!(live(&keys).is_empty());
    assert_eq!(models(&env, &value).await.0, 401);
    assert!(env.apikeys().get_opt("bye").await.unwrap().is_none());
}

#[tokio::test]
async fn disabling_the_key_stops_it_without_a_new_key() {
    let env = env().await;
    env.create(&apikey("off", "ucloud", ApiKeySpec::default()))
        .await;
    let id = env.converge("off", 4).await.status.unwrap().key_id.unwrap();
    let value = env.secret_value("off", "api-key").await.unwrap();
    env.patch_spec("off", json!({"disabled": true})).await;
    env.reconcile("off").await.unwrap();
    let ak = env.get("off").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    let keys = env.emulator_keys().await;
    assert_eq!(keys.len(), 1);
    assert_eq!(key_by_id(&keys, &id)["settings"]["modelverseDisabled"], 1);
    assert_eq!(models(&env, &value).await.0, 403);
    env.patch_spec("off", json!({"disabled": false})).await;
    env.reconcile("off").await.unwrap();
    assert_eq!(models(&env, &value).await.0, 200);
}
