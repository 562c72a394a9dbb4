//! The reconciler end to end on Boltz: workspace keys minted with an admin key, immutable after
//! creation (every change needs a new key), revoked (not deleted) at the end.

use clap::Parser;
use keysmith::api::{ApiKeySpec, BoltzProvider, KeyProviderSpec, SecretKeySelector, SpendLimit};
use keysmith::emulators;
use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "sk_bc_admin_live_controller0123456789";

#[derive(Parser)]
struct EmuArgs {
    #[command(flatten)]
    args: emulators::BoltzArgs,
}

pub(crate) async fn env() -> Env {
    env_with(&[]).await
}

/// With extra emulator flags (e.g. workspaces).
async fn env_with(flags: &[&str]) -> Env {
    let mut argv = vec!["emulate", "--admin-key", ADMIN];
    argv.extend_from_slice(flags);
    let a = EmuArgs::try_parse_from(argv)
        .expect("emulator flags parse")
        .args;
    let (router, faults) = emulators::build_boltz(&a);
    let emu = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let spec = KeyProviderSpec {
        boltz: Some(BoltzProvider {
            base_url: Some(emu.url()),
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
    env_for(emu, "boltz", spec, creds, vec![]).await
}

/// `GET /compute/v1/auth/me` with `value`, as if called from `from` (X-Forwarded-For).
async fn me(env: &Env, value: &str, from: Option<&str>) -> (u16, Value) {
    let mut req = env
        .http
        .get(format!("{}/compute/v1/auth/me", env.emulator.url()))
        .header("x-api-key", value);
    if let Some(ip) = from {
        req = req.header("x-forwarded-for", ip);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The workspace keys the emulator holds (admin keys left out).
async fn workspace_keys(env: &Env) -> Vec<Value> {
    env.emulator_keys()
        .await
        .into_iter()
        .filter(|k| k["key_type"] == "workspace")
        .collect()
}

async fn key_by_id(env: &Env, id: &str) -> Value {
    workspace_keys(env)
        .await
        .into_iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("key {id} at the emulator"))
}

#[tokio::test]
async fn creates_a_workspace_key_and_reports_prefix_and_last_use() {
    let env = env().await;
    env.create(&apikey("jobs", "boltz", ApiKeySpec::default()))
        .await;
    let ak = env.converge("jobs", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let st = ak.status.clone().unwrap();
    let id = st.key_id.clone().expect("keyID recorded");
    assert!(id.starts_with("key_"), "{id}");
    assert_eq!(st.provider_type.as_deref(), Some("boltz"));
    assert!(st.created_at.is_some());
    assert!(
        st.last_used_at.is_none(),
        "a fresh key has not been used: {:?}",
        st.last_used_at
    );

    let value = env.secret_value("jobs", "api-key").await.expect("Secret");
    assert!(value.starts_with("sk_bc_ws_live_"), "a live workspace key");
    let prefix: String = value.chars().take(12).collect();
    assert_eq!(
        st.key_hint.as_deref(),
        Some(format!("{prefix}…").as_str()),
        "keyHint is Boltz's key_prefix"
    );
    assert!(!st.key_hint.as_deref().unwrap().contains(&value));

    env.assert_quiet("jobs").await;
    assert!(env.get("jobs").await.status.unwrap().last_used_at.is_none());

    let (code, body) = me(&env, &value, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["api_key_id"], id.as_str());
    assert_eq!(body["key_type"], "workspace");

    let keys = workspace_keys(&env).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], format!("{}/jobs", env.ns));
    assert_eq!(keys[0]["is_active"], true);
    assert_eq!(keys[0]["key_prefix"], prefix.as_str());
    let used_at = keys[0]["last_used_at"]
        .as_str()
        .expect("the emulator saw the key used")
        .to_string();

    // A spec edit makes the next reconcile read the key fresh: lastUsedAt reaches the status.
    env.touch("jobs", "1").await;
    env.reconcile("jobs").await.unwrap();
    let ak = env.get("jobs").await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let st = ak.status.unwrap();
    assert_eq!(st.key_id.as_deref(), Some(id.as_str()), "same key");
    let reported = st.last_used_at.expect("lastUsedAt reported");
    let emu_t = chrono::DateTime::parse_from_rfc3339(&used_at).unwrap();
    let st_t = chrono::DateTime::parse_from_rfc3339(&reported).unwrap();
    assert!(
        (emu_t - st_t).num_seconds().abs() <= 1,
        "status {reported} vs emulator {used_at}"
    );
    let s = env.secrets().get("jobs").await.unwrap();
    assert_eq!(s.metadata.labels.unwrap()["keysmith-test/touched"], "1");
}

#[tokio::test]
async fn limit_and_models_are_unsupported_and_cost_no_provider_call() {
    let env = env().await;
    let spec = ApiKeySpec {
        limit: Some(Box::new(SpendLimit {
            amount: "5".into(),
            reset: Some(keysmith::api::LimitReset::Daily),
        })),
        ..Default::default()
    };
    env.create(&apikey("capped", "boltz", spec)).await;
    env.reset_provider_calls().await;
    env.reconcile("capped").await.unwrap();
    env.reconcile("capped").await.unwrap();
    let ak = env.get("capped").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "UnsupportedField"),
        "{message}"
    );
    assert!(
        message.contains("spec.limit.amount") && message.contains("spec.limit.reset"),
        "{message}"
    );
    let calls = env.provider_calls().await;
    assert_eq!(calls["requests"], 0, "{calls}");
    assert!(workspace_keys(&env).await.is_empty());
    assert!(env.secrets().get_opt("capped").await.unwrap().is_none());
    assert!(
        env.events()
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "UnsupportedField"),
        "{:?}",
        env.events()
    );
}

#[tokio::test]
async fn an_ip_change_is_reported_then_replaced_on_request() {
    let env = env().await;
    let spec = ApiKeySpec {
        allowed_ips: vec!["10.0.0.0/8".into()],
        ..Default::default()
    };
    env.create(&apikey("ips", "boltz", spec)).await;
    let ak = env.converge("ips", 4).await;
    let old_id = ak.status.unwrap().key_id.unwrap();
    let old_value = env.secret_value("ips", "api-key").await.unwrap();
    assert_eq!(
        key_by_id(&env, &old_id).await["allowed_ips"],
        json!(["10.0.0.0/8"])
    );
    assert_eq!(me(&env, &old_value, Some("10.1.2.3")).await.0, 200);
    assert_eq!(
        me(&env, &old_value, Some("192.168.1.1")).await.0,
        403,
        "the emulator enforces allowed_ips"
    );

    // Report (default): the key stays, the status says what needs a new key.
    env.patch_spec("ips", json!({"allowedIPs": ["192.168.0.0/16"]}))
        .await;
    env.reset_provider_calls().await;
    env.reconcile("ips").await.unwrap();
    let ak = env.get("ips").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "NewKeyNeeded"),
        "{message}"
    );
    assert!(message.contains("spec.allowedIPs"), "{message}");
    let st = ak.status.unwrap();
    assert_eq!(
        st.fields_needing_new_key,
        vec!["spec.allowedIPs".to_string()]
    );
    assert_eq!(st.key_id.as_deref(), Some(old_id.as_str()), "key unchanged");
    assert_eq!(
        env.secret_value("ips", "api-key").await.as_deref(),
        Some(old_value.as_str())
    );
    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(&calls, "POST /compute/v1/admin/api-keys"),
        0,
        "no new key under Report: {calls}"
    );
    assert_eq!(workspace_keys(&env).await.len(), 1);
    assert_eq!(key_by_id(&env, &old_id).await["is_active"], true);

    // Replace: a new key with the new IPs in the Secret, the old one revoked.
    env.patch_spec("ips", json!({"onImmutableChange": "Replace"}))
        .await;
    env.reconcile("ips").await.unwrap();
    let ak = env.get("ips").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let st = ak.status.unwrap();
    let new_id = st.key_id.clone().unwrap();
    assert_ne!(new_id, old_id, "a new key");
    assert!(st.fields_needing_new_key.is_empty());
    assert!(st.pending_create.is_none());
    let new_value = env.secret_value("ips", "api-key").await.unwrap();
    assert_ne!(new_value, old_value);
    let s = env.secrets().get("ips").await.unwrap();
    assert_eq!(
        s.metadata.annotations.unwrap()["keysmith.dev/key-id"],
        new_id
    );
    let new_key = key_by_id(&env, &new_id).await;
    assert_eq!(new_key["is_active"], true);
    assert_eq!(new_key["allowed_ips"], json!(["192.168.0.0/16"]));
    let old_key = key_by_id(&env, &old_id).await;
    assert_eq!(old_key["is_active"], false, "the old key is revoked");
    assert_eq!(old_key["revoked"], true);
    assert_eq!(me(&env, &new_value, Some("192.168.7.7")).await.0, 200);
    assert_eq!(
        me(&env, &old_value, Some("10.1.2.3")).await.0,
        401,
        "the old value no longer works"
    );
    assert!(env
        .events()
        .iter()
        .any(|(_, r, note)| r == "KeyReplaced" && note.contains(&old_id)));

    // Settled: another pass changes nothing.
    env.reconcile("ips").await.unwrap();
    let ak = env.get("ips").await;
    assert_eq!(ready(&ak).1, "KeyActive");
    assert_eq!(ak.status.unwrap().key_id.as_deref(), Some(new_id.as_str()));
    assert_eq!(
        workspace_keys(&env)
            .await
            .iter()
            .filter(|k| k["is_active"] == true)
            .count(),
        1
    );
}

#[tokio::test]
async fn deleting_the_apikey_revokes_the_key() {
    let env = env().await;
    env.create(&apikey("bye", "boltz", ApiKeySpec::default()))
        .await;
    let id = env.converge("bye", 4).await.status.unwrap().key_id.unwrap();
    let value = env.secret_value("bye", "api-key").await.unwrap();
    env.reset_provider_calls().await;
    env.delete("bye").await;
    env.reconcile("bye").await.unwrap();
    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(
            &calls,
            "POST /compute/v1/admin/api-keys/{api_key_id}/revoke"
        ),
        1,
        "{calls}"
    );
    let k = key_by_id(&env, &id).await;
    assert_eq!(k["is_active"], false, "revoked at Boltz: {k}");
    assert_eq!(me(&env, &value, None).await.0, 401);
    assert!(
        env.apikeys().get_opt("bye").await.unwrap().is_none(),
        "the finalizer was released and the ApiKey is gone"
    );
}

#[tokio::test]
async fn a_crash_after_create_is_recovered_by_name_and_time() {
    // Boltz keys have no free-text field: the orphan is found by name and creation time only.
    let env = env().await;
    env.create(&apikey("crash", "boltz", ApiKeySpec::default()))
        .await;
    env.reconcile("crash").await.unwrap(); // finalizer
    env.ctx
        .crash_after_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = env.reconcile("crash").await;
    env.ctx
        .crash_after_create
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let keys = workspace_keys(&env).await;
    assert_eq!(
        keys.len(),
        1,
        "the provider created a key whose value was lost"
    );
    let orphan = keys[0]["id"].as_str().unwrap().to_string();
    assert!(env.secrets().get_opt("crash").await.unwrap().is_none());

    let ak = env.converge("crash", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let st = ak.status.unwrap();
    assert!(st.pending_create.is_none());
    assert_ne!(st.key_id.as_deref(), Some(orphan.as_str()));
    assert_eq!(
        key_by_id(&env, &orphan).await["is_active"],
        false,
        "orphan revoked"
    );
    let live: Vec<Value> = workspace_keys(&env)
        .await
        .into_iter()
        .filter(|k| k["is_active"] == true)
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["id"], st.key_id.unwrap().as_str());
    let value = env.secret_value("crash", "api-key").await.unwrap();
    assert_eq!(me(&env, &value, None).await.0, 200);
    // The admin key keysmith runs on is never taken for an orphan.
    assert_eq!(me(&env, ADMIN, None).await.0, 200);
}

#[tokio::test]
async fn a_ttl_becomes_whole_days_and_the_expiry_is_reported() {
    let env = env().await;
    let spec = ApiKeySpec {
        ttl: Some("25h".into()),
        ..Default::default()
    };
    env.create(&apikey("short", "boltz", spec)).await;
    let ak = env.converge("short", 4).await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    let st = ak.status.unwrap();
    let k = key_by_id(&env, st.key_id.as_deref().unwrap()).await;
    let at_boltz = chrono::DateTime::parse_from_rfc3339(k["expires_at"].as_str().unwrap()).unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(k["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        (at_boltz - created).num_hours(),
        48,
        "25h rounds up to 2 days"
    );
    let reported =
        chrono::DateTime::parse_from_rfc3339(st.expires_at.as_deref().expect("expiresAt")).unwrap();
    assert!((reported - at_boltz).num_seconds().abs() <= 1);

    // Expiry is not compared (days vs instant): the next passes keep the key.
    env.touch("short", "1").await;
    env.reconcile("short").await.unwrap();
    let ak = env.get("short").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    assert_eq!(ak.status.unwrap().key_id, st.key_id);
}

#[tokio::test]
async fn a_failed_revoke_of_the_replaced_key_is_retried_not_forgotten() {
    let env = env().await;
    env.create(&apikey("swap", "boltz", ApiKeySpec::default()))
        .await;
    let old = env
        .converge("swap", 4)
        .await
        .status
        .unwrap()
        .key_id
        .unwrap();
    env.patch_spec(
        "swap",
        json!({"allowedIPs": ["10.0.0.0/8"], "onImmutableChange": "Replace"}),
    )
    .await;
    // The fresh read and the create go through; every attempt at revoking the old key fails.
    let pass = emulators::ScriptedFault {
        status: None,
        retry_after: None,
        malformed: false,
        delay_ms: None,
    };
    let down = emulators::ScriptedFault {
        status: Some(503),
        ..pass.clone()
    };
    env.emulator
        .faults
        .push([pass.clone(), pass, down.clone(), down.clone(), down]);
    let _ = env.reconcile("swap").await;
    let ak = env.get("swap").await;
    assert_eq!(ready(&ak).1, "ProviderUnavailable", "{:?}", ak.status);
    let st = ak.status.clone().unwrap();
    let new = st.key_id.clone().unwrap();
    assert_ne!(new, old, "the new key is in place: {:?}", ak.status);
    assert_eq!(
        st.previous_keys
            .iter()
            .map(|k| k.key_id.as_str())
            .collect::<Vec<_>>(),
        vec![old.as_str()],
        "the old key is remembered for revocation"
    );
    assert_eq!(
        key_by_id(&env, &old).await["is_active"],
        true,
        "not revoked yet"
    );
    let value = env.secret_value("swap", "api-key").await.unwrap();
    assert_eq!(me(&env, &value, Some("10.9.9.9")).await.0, 200);

    // The provider is back: the old key is revoked on a later pass, not leaked.
    let ak = env.converge("swap", 4).await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    env.reconcile("swap").await.unwrap();
    assert_eq!(
        key_by_id(&env, &old).await["is_active"],
        false,
        "the replaced key must not outlive the replacement"
    );
    let live = workspace_keys(&env)
        .await
        .into_iter()
        .filter(|k| k["is_active"] == true)
        .count();
    assert_eq!(live, 1);
    let st = env.get("swap").await.status.unwrap();
    assert_eq!(st.key_id.as_deref(), Some(new.as_str()));
    assert!(st.previous_keys.is_empty());
}

#[tokio::test]
async fn a_workspace_change_needs_a_new_key_in_the_new_workspace() {
    let env = env_with(&["--workspace", "ws_a", "--workspace", "ws_b"]).await;
    let spec = ApiKeySpec {
        boltz: Some(Box::new(keysmith::api::BoltzKeySpec {
            workspace_id: Some("ws_a".into()),
            mode: None,
        })),
        ..Default::default()
    };
    env.create(&apikey("ws", "boltz", spec)).await;
    let old = env.converge("ws", 4).await.status.unwrap().key_id.unwrap();
    assert_eq!(key_by_id(&env, &old).await["workspace_id"], "ws_a");

    env.patch_spec("ws", json!({"boltz": {"workspaceID": "ws_b"}}))
        .await;
    env.reconcile("ws").await.unwrap();
    let ak = env.get("ws").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "NewKeyNeeded"),
        "{message}"
    );
    let st = ak.status.unwrap();
    assert_eq!(st.key_id.as_deref(), Some(old.as_str()), "the key stays");
    assert_eq!(st.fields_needing_new_key, vec!["spec.boltz".to_string()]);
    assert_eq!(workspace_keys(&env).await.len(), 1, "nothing minted");

    env.patch_spec("ws", json!({"onImmutableChange": "Replace"}))
        .await;
    env.reconcile("ws").await.unwrap();
    let ak = env.get("ws").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    let new = ak.status.unwrap().key_id.unwrap();
    assert_ne!(new, old);
    assert_eq!(key_by_id(&env, &new).await["workspace_id"], "ws_b");
    assert_eq!(key_by_id(&env, &old).await["is_active"], false);
    let value = env.secret_value("ws", "api-key").await.unwrap();
    assert_eq!(me(&env, &value, None).await.1["workspace_id"], "ws_b");
    env.assert_quiet("ws").await;
}
