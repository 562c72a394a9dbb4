//! The reconciler end to end on OpenRouter: fake Kubernetes API, real emulator over HTTP.

use std::sync::atomic::Ordering;

use clap::Parser;
use keysmith::api::{
    ApiKeySpec, DeletionPolicy, KeyProviderSpec, OpenRouterProvider, SecretKeySelector, SpendLimit,
};
use keysmith::emulators::{self, ScriptedFault};
use serde_json::{json, Value};

use crate::harness::*;

pub(crate) const MGMT: &str = "sk-or-v1-mgmt-test-0000";

#[derive(Parser)]
struct EmuArgs {
    #[command(flatten)]
    args: emulators::OpenRouterArgs,
}

async fn emulator() -> emulators::RunningEmulator {
    let a = EmuArgs::try_parse_from(["emulate", "--management-key", MGMT])
        .expect("emulator flags parse")
        .args;
    let (router, faults) = emulators::build_openrouter(&a);
    emulators::spawn(router, faults)
        .await
        .expect("emulator starts")
}

fn provider_spec(base: &str, secret_key: &str) -> KeyProviderSpec {
    KeyProviderSpec {
        openrouter: Some(OpenRouterProvider {
            base_url: Some(format!("{base}/api/v1")),
            management_key_secret_ref: SecretKeySelector {
                name: "openrouter-mgmt".into(),
                key: secret_key.into(),
                namespace: None,
            },
            workspace_id: None,
        }),
        ..Default::default()
    }
}

/// An env with the credentials Secret and a ClusterKeyProvider `openrouter`.
pub(crate) async fn env_with(
    spec_mut: impl FnOnce(&mut KeyProviderSpec),
    extra: Vec<Value>,
) -> Env {
    let emu = emulator().await;
    let mut spec = provider_spec(&emu.url(), "token");
    spec_mut(&mut spec);
    let creds = vec![secret(OPERATOR_NS, "openrouter-mgmt", "token", MGMT)];
    env_for(emu, "openrouter", spec, creds, extra).await
}

pub(crate) async fn env() -> Env {
    env_with(|_| {}, vec![]).await
}

/// Does the emulator accept `value` on `GET /key` (i.e. is it a live key)?
pub(crate) async fn key_works(env: &Env, value: &str) -> bool {
    env.control.openrouter_key_works(value).await
}

pub(crate) fn live_keys(keys: &[Value]) -> usize {
    keys.iter().filter(|k| k["active"] == true).count()
}

#[tokio::test]
async fn creates_the_key_writes_the_secret_and_reports_status() {
    let env = env().await;
    let spec = ApiKeySpec {
        limit: Some(Box::new(SpendLimit {
            amount: "75".into(),
            reset: None,
        })),
        ..Default::default()
    };
    env.create(&apikey("chat", "openrouter", spec)).await;
    let ak = env.converge("chat", 4).await;
    let (status, reason, _) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{:?}",
        ak.status
    );
    let st = ak.status.clone().unwrap();
    let id = st.key_id.clone().expect("keyID recorded");
    assert_eq!(id.len(), 64, "OpenRouter hashes are 64 hex characters");
    assert!(
        st.key_hint
            .as_deref()
            .is_some_and(|h| h.starts_with("sk-or-v1-")),
        "{:?}",
        st.key_hint
    );
    assert_eq!(st.secret_name.as_deref(), Some("chat"));
    assert!(st.pending_create.is_none());
    assert!(st.created_at.is_some());
    assert!(ak
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.contains(&"keysmith.dev/revoke".to_string())));

    let value = env
        .secret_value("chat", "api-key")
        .await
        .expect("Secret holds the value");
    assert!(value.starts_with("sk-or-v1-"));
    assert!(
        key_works(&env, &value).await,
        "the Secret's value is a live key at the emulator"
    );
    let s = env.secrets().get("chat").await.unwrap();
    assert_eq!(
        s.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "keysmith"
    );
    assert_eq!(s.metadata.owner_references.unwrap()[0].name, "chat");
    assert_eq!(s.metadata.annotations.unwrap()["keysmith.dev/key-id"], id);

    let keys = env.emulator_keys().await;
    assert_eq!(live_keys(&keys), 1);
    assert_eq!(keys[0]["name"], format!("{}/chat", env.ns));
    assert_eq!(keys[0]["settings"]["limit"].as_f64(), Some(75.0));
}

#[tokio::test]
async fn steady_state_makes_no_writes_and_no_provider_calls() {
    let env = env().await;
    env.create(&apikey("quiet", "openrouter", ApiKeySpec::default()))
        .await;
    env.converge("quiet", 4).await;
    // One more pass fills the shared listing used by the periodic refresh.
    env.reconcile("quiet").await.unwrap();
    env.take_writes();
    env.reset_provider_calls().await;
    for _ in 0..3 {
        env.reconcile("quiet").await.unwrap();
    }
    assert_eq!(
        env.take_writes(),
        Vec::<String>::new(),
        "a reconcile with nothing to change writes nothing"
    );
    let calls = env.provider_calls().await;
    assert_eq!(
        calls["requests"], 0,
        "within the refresh interval no provider call is made: {calls}"
    );
}

#[tokio::test]
async fn usage_refresh_is_one_listing_for_all_keys_of_a_provider() {
    let env = env_with(|s| s.refresh_interval = Some("10s".into()), vec![]).await;
    for i in 0..5 {
        env.create(&apikey(
            &format!("k{i}"),
            "openrouter",
            ApiKeySpec::default(),
        ))
        .await;
        env.converge(&format!("k{i}"), 4).await;
    }
    // Force the snapshot to be stale, then refresh all five.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    env.reset_provider_calls().await;
    env.take_writes();
    for i in 0..5 {
        env.reconcile(&format!("k{i}")).await.unwrap();
    }
    let calls = env.provider_calls().await;
    // One listing: a page of five and the empty page that ends it (OpenRouter's page size is
    // not documented, so a short page is not taken for the last).
    assert_eq!(calls["requests"], 2, "five keys, one listing: {calls}");
    assert_eq!(route_count(&calls, "GET /api/v1/keys"), 2);
    assert_eq!(
        env.take_writes(),
        Vec::<String>::new(),
        "usage unchanged: no status write"
    );
}

#[tokio::test]
async fn usage_reported_by_the_provider_reaches_the_status() {
    let env = env_with(|s| s.refresh_interval = Some("10s".into()), vec![]).await;
    env.create(&apikey("spender", "openrouter", ApiKeySpec::default()))
        .await;
    let ak = env.converge("spender", 4).await;
    let id = ak.status.unwrap().key_id.unwrap();
    let r = env
        .http
        .post(format!("{}/_emulator/usage", env.emulator.url()))
        .json(&json!({"hash": id, "amount": 1.25}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    env.reconcile("spender").await.unwrap();
    let usage = env
        .get("spender")
        .await
        .status
        .unwrap()
        .usage
        .expect("usage reported");
    assert_eq!(usage.total.as_deref(), Some("1.25"));
    assert_eq!(usage.daily.as_deref(), Some("1.25"));
    assert_eq!(usage.unit.as_deref(), Some("USD"));
}

#[tokio::test]
async fn a_limit_change_is_patched_at_the_provider() {
    let env = env().await;
    let spec = ApiKeySpec {
        limit: Some(Box::new(SpendLimit {
            amount: "10".into(),
            reset: None,
        })),
        ..Default::default()
    };
    env.create(&apikey("lim", "openrouter", spec)).await;
    let before = env.converge("lim", 4).await.status.unwrap().key_id;
    env.patch_spec(
        "lim",
        json!({"limit": {"amount": "20.5", "reset": "weekly"}, "disabled": true}),
    )
    .await;
    env.reset_provider_calls().await;
    env.reconcile("lim").await.unwrap();
    let ak = env.get("lim").await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    assert_eq!(ak.status.unwrap().key_id, before, "an update keeps the key");
    let keys = env.emulator_keys().await;
    assert_eq!(keys[0]["settings"]["limit"].as_f64(), Some(20.5));
    assert_eq!(keys[0]["settings"]["limitReset"], "weekly");
    assert_eq!(keys[0]["settings"]["disabled"], true);
    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(&calls, "PATCH /api/v1/keys/{hash}"),
        1,
        "{calls}"
    );
    assert_eq!(route_count(&calls, "POST /api/v1/keys"), 0, "{calls}");
}

#[tokio::test]
async fn an_unsupported_field_is_rejected_before_any_provider_call() {
    let env = env().await;
    let spec = ApiKeySpec {
        allowed_ips: vec!["10.0.0.0/8".into()],
        models: vec!["openai/gpt-4o".into()],
        ..Default::default()
    };
    env.create(&apikey("ips", "openrouter", spec)).await;
    env.reset_provider_calls().await;
    env.reconcile("ips").await.unwrap();
    env.reconcile("ips").await.unwrap();
    let ak = env.get("ips").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "UnsupportedField")
    );
    assert!(
        message.contains("spec.allowedIPs") && message.contains("spec.models"),
        "{message}"
    );
    assert_eq!(env.provider_calls().await["requests"], 0);
    assert!(env.secrets().get_opt("ips").await.unwrap().is_none());
}

#[tokio::test]
async fn a_secret_keysmith_did_not_create_is_never_overwritten() {
    let foreign = secret(NS, "taken", "api-key", "someone-elses-value");
    let env = env_with(|_| {}, vec![serde_json::to_value(foreign).unwrap()]).await;
    env.create(&apikey("taken", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("taken").await.unwrap();
    env.reconcile("taken").await.unwrap();
    let (status, reason, message) = ready(&env.get("taken").await);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretConflict")
    );
    assert!(message.contains("team-a/taken"), "{message}");
    assert_eq!(
        env.secret_value("taken", "api-key").await.as_deref(),
        Some("someone-elses-value")
    );
    assert_eq!(
        live_keys(&env.emulator_keys().await),
        0,
        "no key is created for a conflicting Secret"
    );
}

#[tokio::test]
async fn bad_credentials_surface_as_provider_auth_failed() {
    let emu = emulator().await;
    let objects = vec![
        serde_json::to_value(secret(
            OPERATOR_NS,
            "openrouter-mgmt",
            "token",
            "sk-or-v1-wrong",
        ))
        .unwrap(),
        serde_json::to_value(cluster_provider(
            "openrouter",
            provider_spec(&emu.url(), "token"),
        ))
        .unwrap(),
    ];
    let env = Env::new(emu, objects).await;
    env.create(&apikey("auth", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("auth").await.unwrap();
    env.reconcile("auth").await.unwrap();
    let ak = env.get("auth").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ProviderAuthFailed"),
        "{message}"
    );
    assert!(
        !message.contains("sk-or-v1-wrong"),
        "the credential never appears in a condition"
    );
    assert!(
        ak.status.unwrap().pending_create.is_none(),
        "a refused create leaves nothing to recover"
    );
}

#[tokio::test]
async fn missing_provider_and_credentials_have_their_own_reasons() {
    let emu = emulator().await;
    let env = Env::new(emu, vec![]).await;
    env.create(&apikey("nop", "does-not-exist", ApiKeySpec::default()))
        .await;
    env.reconcile("nop").await.unwrap();
    env.reconcile("nop").await.unwrap();
    assert_eq!(ready(&env.get("nop").await).1, "ProviderRefNotFound");

    let env = env_with(
        |s| {
            s.openrouter
                .as_mut()
                .unwrap()
                .management_key_secret_ref
                .name = "absent".into()
        },
        vec![],
    )
    .await;
    env.create(&apikey("nocreds", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("nocreds").await.unwrap();
    env.reconcile("nocreds").await.unwrap();
    let (_, reason, message) = ready(&env.get("nocreds").await);
    assert_eq!(reason, "CredentialsNotFound");
    assert!(message.contains("keysmith-system/absent"), "{message}");
}

#[tokio::test]
async fn a_namespace_outside_the_selector_may_not_use_a_cluster_provider() {
    let env = env_with(
        |s| {
            s.namespace_selector = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([("team".to_string(), "web".to_string())].into()),
                    match_expressions: None,
                },
            )
        },
        vec![],
    )
    .await;
    env.create(&apikey("tenant", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("tenant").await.unwrap();
    env.reconcile("tenant").await.unwrap();
    let (status, reason, _) = ready(&env.get("tenant").await);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ProviderNotAllowed")
    );
    assert_eq!(live_keys(&env.emulator_keys().await), 0);
}

#[tokio::test]
async fn a_provider_outage_is_transient_and_recovers() {
    let env = env().await;
    env.create(&apikey("down", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("down").await.unwrap(); // finalizer
                                          // The create is not retried on a 5xx (it may have created a key); recovery handles it.
    env.emulator.faults.push((0..6).map(|_| ScriptedFault {
        status: Some(503),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    }));
    env.reconcile("down").await.unwrap();
    let (status, reason, _) = ready(&env.get("down").await);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ProviderUnavailable")
    );
    let ak = env.converge("down", 6).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    assert_eq!(
        live_keys(&env.emulator_keys().await),
        1,
        "exactly one key after the outage"
    );
}

#[tokio::test]
async fn a_crash_between_create_and_secret_write_leaves_no_orphan() {
    let env = env().await;
    env.create(&apikey("crash", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("crash").await.unwrap(); // finalizer
    env.ctx.crash_after_create.store(true, Ordering::SeqCst);
    let _ = env.reconcile("crash").await;
    env.ctx.crash_after_create.store(false, Ordering::SeqCst);
    let ak = env.get("crash").await;
    let pending = ak
        .status
        .as_ref()
        .and_then(|s| s.pending_create.clone())
        .expect("marker recorded before create");
    // Created under its provisional name (the attempt id), renamed once delivered.
    assert_eq!(
        pending.name,
        format!("keysmith-attempt-{}", pending.attempt)
    );
    let keys = env.emulator_keys().await;
    assert_eq!(keys[0]["name"], pending.name.as_str());
    assert_eq!(
        live_keys(&keys),
        1,
        "the provider created a key whose value was lost"
    );
    let orphan = keys[0]["hash"].as_str().unwrap().to_string();
    assert!(env.secrets().get_opt("crash").await.unwrap().is_none());

    // Right after the crash the orphan is revoked, but no new key is created while the
    // interrupted create could still reach the provider (client timeout + 5 s).
    env.reconcile("crash").await.unwrap();
    let ak = env.get("crash").await;
    assert_eq!(ready(&ak).1, "RecoveringCreate", "{:?}", ak.status);
    assert!(ak.status.as_ref().unwrap().pending_create.is_some());
    assert_eq!(
        live_keys(&env.emulator_keys().await),
        0,
        "the orphan is revoked at once"
    );

    let ak = env.converge("crash", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let st = ak.status.unwrap();
    assert!(st.pending_create.is_none());
    assert_ne!(
        st.key_id.as_deref(),
        Some(orphan.as_str()),
        "the orphan was not reused (its value is lost)"
    );
    let keys = env.emulator_keys().await;
    assert_eq!(
        live_keys(&keys),
        1,
        "exactly one live key: the orphan was revoked: {keys:?}"
    );
    let live: Vec<&Value> = keys.iter().filter(|k| k["active"] == true).collect();
    assert_eq!(
        live[0]["name"],
        format!("{}/crash", env.ns),
        "renamed to its display name"
    );
    let value = env.secret_value("crash", "api-key").await.unwrap();
    assert!(key_works(&env, &value).await);
    let metrics = env.ctx.metrics.encode();
    assert!(
        metrics.contains("keysmith_orphans_revoked_total{provider=\"openrouter\"} 1"),
        "{metrics}"
    );
}

/// The rename after a create (from the provisional name to spec.displayName) fails: the key is
/// delivered and recorded all the same, a Warning says so, and the next reconcile renames it.
#[tokio::test]
async fn a_failed_rename_after_create_is_retried_and_loses_nothing() {
    let env = env().await;
    env.create(&apikey("named", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("named").await.unwrap(); // finalizer
    let pass = ScriptedFault {
        status: None,
        retry_after: None,
        malformed: false,
        delay_ms: None,
    };
    // The create passes; the rename is refused.
    env.emulator.faults.push([
        pass,
        ScriptedFault {
            status: Some(400),
            retry_after: None,
            malformed: false,
            delay_ms: None,
        },
    ]);
    env.reconcile("named").await.unwrap();
    let ak = env.get("named").await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let st = ak.status.unwrap();
    let id = st.key_id.clone().expect("keyID recorded");
    assert!(st.pending_create.is_none());
    let value = env
        .secret_value("named", "api-key")
        .await
        .expect("value delivered");
    let name_of = |keys: Vec<Value>| {
        keys.into_iter()
            .find(|k| k["hash"] == id.as_str())
            .map(|k| k["name"].as_str().unwrap_or_default().to_string())
            .unwrap()
    };
    assert!(name_of(env.emulator_keys().await).starts_with("keysmith-attempt-"));
    let events = env.events();
    assert!(
        events
            .iter()
            .any(|(t, reason, _)| t == "Warning" && reason == "KeyRenameFailed"),
        "{events:?}"
    );
    env.reconcile("named").await.unwrap();
    assert_eq!(
        name_of(env.emulator_keys().await),
        format!("{}/named", env.ns)
    );
    assert_eq!(live_keys(&env.emulator_keys().await), 1);
    assert_eq!(env.secret_value("named", "api-key").await, Some(value));
}

#[tokio::test]
async fn a_rate_limited_create_leaves_nothing_to_recover() {
    let env = env().await;
    env.create(&apikey("busy", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("busy").await.unwrap(); // finalizer
                                          // Twice: the second time the Ready condition does not change, so only the pendingCreate
                                          // marker written before the create distinguishes the server's status from the one read.
    for round in 0..2 {
        if round == 1 {
            // A 429 without a usable Retry-After counts as a failed create: the next create
            // waits for status.createBackoff.notBefore (10 s after the first failure).
            let again = env.reconcile("busy").await;
            assert!(again.is_ok());
            assert_eq!(ready(&env.get("busy").await).1, "CreateBackoff");
            tokio::time::sleep(std::time::Duration::from_millis(10_500)).await;
        }
        env.emulator.faults.push((0..3).map(|_| ScriptedFault {
            status: Some(429),
            retry_after: Some(0),
            malformed: false,
            delay_ms: None,
        }));
        env.reconcile("busy").await.unwrap();
        let ak = env.get("busy").await;
        assert_eq!(ready(&ak).1, "RateLimited", "round {round}");
        assert!(
            ak.status.unwrap().pending_create.is_none(),
            "round {round}: a 429 means nothing was created, yet pendingCreate is still set"
        );
    }
    env.reset_provider_calls().await;
    let ak = env.converge("busy", 3).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(&calls, "GET /api/v1/keys"),
        0,
        "no recovery listing after a refused create: {calls}"
    );
    assert_eq!(live_keys(&env.emulator_keys().await), 1);
}

/// Invariant 5: 429 honours Retry-After, also when it is longer than the client waits inside a
/// call. Each reconcile's status write is a watch event that reconciles the ApiKey again at once;
/// the requeue delay alone would not hold the next create back.
#[tokio::test]
async fn a_long_retry_after_holds_every_create_of_the_provider_until_it_has_passed() {
    let env = env().await;
    for name in ["later", "also"] {
        env.create(&apikey(name, "openrouter", ApiKeySpec::default()))
            .await;
        env.reconcile(name).await.unwrap(); // finalizer
    }
    // 3 s: more than the test client waits inside a call (max_retry_after 2 s).
    env.emulator.faults.push([ScriptedFault {
        status: Some(429),
        retry_after: Some(3),
        malformed: false,
        delay_ms: None,
    }]);
    env.reconcile("later").await.unwrap();
    assert_eq!(ready(&env.get("later").await).1, "RateLimited");
    env.reset_provider_calls().await;
    env.take_writes();
    for _ in 0..3 {
        env.reconcile("later").await.unwrap(); // as the watch event of its own write would
    }
    env.reconcile("also").await.unwrap(); // the limit is the account's
    assert_eq!(
        env.provider_calls().await["requests"],
        0,
        "no create before Retry-After has passed"
    );
    let writes = env.take_writes();
    assert!(
        !writes.iter().any(|w| w.starts_with("patch status later")),
        "waiting writes nothing: {writes:?}"
    );
    assert_eq!(ready(&env.get("also").await).1, "RateLimited");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for name in ["later", "also"] {
        let ak = env.converge(name, 3).await;
        assert_eq!(ready(&ak).0, "True", "{name}: {:?}", ak.status);
    }
    assert_eq!(live_keys(&env.emulator_keys().await), 2);
}

/// The controller hands reconcile the ApiKey from its watch cache, which can lag: a reconcile
/// triggered by the Secret watch may see the object as it was before the key was recorded.
#[tokio::test]
async fn a_reconcile_from_a_stale_copy_neither_creates_a_second_key_nor_forgets_the_first() {
    let env = env().await;
    env.create(&apikey("lagging", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("lagging").await.unwrap(); // finalizer
    let stale = env.get("lagging").await; // what a lagging cache still holds: no status yet
    let ak = env.converge("lagging", 4).await;
    let id = ak.status.unwrap().key_id.expect("key recorded");
    let value = env.secret_value("lagging", "api-key").await.unwrap();

    let _ = keysmith::controller::reconcile(std::sync::Arc::new(stale), env.ctx.clone()).await;

    let ak = env.get("lagging").await;
    assert_eq!(
        ak.status.as_ref().and_then(|s| s.key_id.as_deref()),
        Some(id.as_str()),
        "the recorded keyID survives: {:?}",
        ak.status
    );
    assert_eq!(
        live_keys(&env.emulator_keys().await),
        1,
        "no second key was created"
    );
    assert_eq!(
        env.secret_value("lagging", "api-key").await.as_deref(),
        Some(value.as_str())
    );
    let ak = env.converge("lagging", 2).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
}

/// Issue 11: a lagging cache still shows the pendingCreate marker that the reconcile which
/// created the key has since cleared. That is no interrupted create: no recovery (no listing,
/// no revoke), no create, no write.
#[tokio::test]
async fn a_stale_copy_with_a_cleared_marker_does_not_start_recovery() {
    let env = env().await;
    env.create(&apikey("marked", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("marked").await.unwrap(); // finalizer
    let mut stale = env.get("marked").await;
    let ak = env.converge("marked", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    // What the cache held between the marker write and the final status write.
    stale.status = Some(keysmith::api::ApiKeyStatus {
        pending_create: Some(Box::new(keysmith::api::PendingCreate {
            name: "marked".into(),
            started_at: chrono::Utc::now().to_rfc3339(),
            attempt: "a-cleared-attempt".into(),
            scope: None,
        })),
        ..Default::default()
    });
    // A quiet reconcile takes the shared listing of the refresh interval.
    env.reconcile("marked").await.unwrap();
    env.reset_provider_calls().await;
    env.take_writes();

    let _ = keysmith::controller::reconcile(std::sync::Arc::new(stale), env.ctx.clone()).await;

    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(&calls, "GET /api/v1/keys"),
        0,
        "no recovery listing: {calls}"
    );
    assert_eq!(
        route_count(&calls, "POST /api/v1/keys"),
        0,
        "no create: {calls}"
    );
    assert_eq!(
        route_count(&calls, "DELETE /api/v1/keys/{hash}"),
        0,
        "no revoke: {calls}"
    );
    assert_eq!(
        env.take_writes(),
        Vec::<String>::new(),
        "no Kubernetes write"
    );
    assert_eq!(live_keys(&env.emulator_keys().await), 1);
    let now = env.get("marked").await;
    assert_eq!(now.status, ak.status, "the status is untouched");
}

#[tokio::test]
async fn a_failed_secret_write_revokes_the_new_key() {
    let env = env().await;
    env.create(&apikey("nowrite", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("nowrite").await.unwrap(); // finalizer
    env.kube_faults
        .fail_secret_writes
        .store(1, Ordering::SeqCst);
    env.reconcile("nowrite").await.unwrap();
    let ak = env.get("nowrite").await;
    assert_eq!(ready(&ak).1, "KubernetesError");
    assert_eq!(
        live_keys(&env.emulator_keys().await),
        0,
        "the undeliverable key was revoked"
    );
    let ak = env.converge("nowrite", 4).await;
    assert_eq!(ready(&ak).0, "True");
    assert_eq!(live_keys(&env.emulator_keys().await), 1);
}

#[tokio::test]
async fn a_lost_secret_gets_a_new_key_and_the_old_one_is_revoked() {
    let env = env().await;
    env.create(&apikey("lost", "openrouter", ApiKeySpec::default()))
        .await;
    let old = env
        .converge("lost", 4)
        .await
        .status
        .unwrap()
        .key_id
        .unwrap();
    env.secrets()
        .delete("lost", &Default::default())
        .await
        .unwrap();
    let ak = env.converge("lost", 4).await;
    let new = ak.status.unwrap().key_id.unwrap();
    assert_ne!(old, new);
    let keys = env.emulator_keys().await;
    assert_eq!(live_keys(&keys), 1, "{keys:?}");
    assert!(key_works(&env, &env.secret_value("lost", "api-key").await.unwrap()).await);
}

#[tokio::test]
async fn deleting_the_apikey_revokes_the_key() {
    let env = env().await;
    env.create(&apikey("bye", "openrouter", ApiKeySpec::default()))
        .await;
    env.converge("bye", 4).await;
    let value = env.secret_value("bye", "api-key").await.unwrap();
    env.delete("bye").await;
    let _ = env.reconcile("bye").await;
    assert_eq!(live_keys(&env.emulator_keys().await), 0);
    assert!(
        !key_works(&env, &value).await,
        "the revoked key no longer authenticates"
    );
    assert!(env.apikeys().get_opt("bye").await.unwrap().is_none_or(|a| a
        .metadata
        .finalizers
        .unwrap_or_default()
        .is_empty()));
}

#[tokio::test]
async fn orphan_policy_leaves_the_key_and_the_secret() {
    let env = env().await;
    let spec = ApiKeySpec {
        deletion_policy: DeletionPolicy::Orphan,
        ..Default::default()
    };
    env.create(&apikey("keep", "openrouter", spec)).await;
    env.converge("keep", 4).await;
    let value = env.secret_value("keep", "api-key").await.unwrap();
    env.delete("keep").await;
    let _ = env.reconcile("keep").await;
    assert_eq!(live_keys(&env.emulator_keys().await), 1);
    assert!(key_works(&env, &value).await);
    let s = env.secrets().get("keep").await.unwrap();
    assert!(
        s.metadata.owner_references.unwrap_or_default().is_empty(),
        "the Secret outlives the ApiKey"
    );
}

#[tokio::test]
async fn secret_template_shapes_the_secret() {
    let env = env().await;
    let spec: ApiKeySpec = serde_json::from_value(json!({
        "providerRef": {"name": "openrouter"},
        "secret": {"name": "chat-env", "key": "token", "template": {
            "labels": {"app": "chat"},
            "data": {"OPENROUTER_API_KEY": "{{ .key }}", "OPENROUTER_BASE_URL": "https://openrouter.ai/api/v1"}
        }}
    }))
    .unwrap();
    env.create(&apikey("tpl", "openrouter", spec)).await;
    env.converge("tpl", 4).await;
    let token = env.secret_value("chat-env", "token").await.unwrap();
    assert_eq!(
        env.secret_value("chat-env", "OPENROUTER_API_KEY")
            .await
            .unwrap(),
        token
    );
    assert_eq!(
        env.secret_value("chat-env", "OPENROUTER_BASE_URL")
            .await
            .unwrap(),
        "https://openrouter.ai/api/v1"
    );
    assert_eq!(
        env.secrets()
            .get("chat-env")
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap()["app"],
        "chat"
    );
}

/// Invariant 2: a full scenario with the minted value never in logs, events, status or errors.
#[tokio::test]
#[tracing_test::traced_test]
async fn the_minted_secret_never_leaves_the_secret() {
    let env = env().await;
    env.create(&apikey(
        "quiet-secret",
        "openrouter",
        ApiKeySpec {
            limit: Some(Box::new(SpendLimit {
                amount: "5".into(),
                reset: None,
            })),
            ..Default::default()
        },
    ))
    .await;
    env.ctx.crash_after_create.store(true, Ordering::SeqCst);
    let _ = env.reconcile("quiet-secret").await;
    let _ = env.reconcile("quiet-secret").await;
    env.ctx.crash_after_create.store(false, Ordering::SeqCst);
    env.converge("quiet-secret", 4).await;
    env.patch_spec("quiet-secret", json!({"limit": {"amount": "6"}}))
        .await;
    env.reconcile("quiet-secret").await.unwrap();
    let value = env.secret_value("quiet-secret", "api-key").await.unwrap();
    env.delete("quiet-secret").await;
    let _ = env.reconcile("quiet-secret").await;

    assert!(
        !logs_contain(&value),
        "the minted value appeared in a log line"
    );
    assert!(
        !logs_contain(MGMT),
        "the management key appeared in a log line"
    );
    for w in env.take_writes() {
        if w.starts_with("patch Secret") {
            continue; // the one place the value belongs
        }
        assert!(
            !w.contains(&value),
            "the minted value appeared in a write: {}",
            w.split(' ').take(3).collect::<Vec<_>>().join(" ")
        );
        assert!(!w.contains(MGMT), "the management key appeared in a write");
    }
    let metrics = env.ctx.metrics.encode();
    assert!(!metrics.contains(&value));
}

/// After a scenario, `/metrics` serves every documented series (docs/operations.md), `/healthz`
/// and `/readyz` answer, and no label carries an object name or a value.
#[tokio::test]
async fn metrics_endpoint_serves_the_documented_series() {
    let env = env().await;
    env.create(&apikey(
        "metered",
        "openrouter",
        ApiKeySpec {
            ttl: Some("720h".into()),
            ..Default::default()
        },
    ))
    .await;
    env.converge("metered", 4).await;
    env.create(&apikey(
        "rejected",
        "openrouter",
        ApiKeySpec {
            allowed_ips: vec!["10.0.0.0/8".into()],
            ..Default::default()
        },
    ))
    .await;
    env.reconcile("rejected").await.unwrap();
    env.reconcile("rejected").await.unwrap();
    let value = env.secret_value("metered", "api-key").await.unwrap();
    env.create(&apikey("gone", "openrouter", ApiKeySpec::default()))
        .await;
    env.converge("gone", 4).await;
    env.delete("gone").await;
    let _ = env.reconcile("gone").await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let health = std::sync::Arc::new(keysmith::controller::Health::default());
    health.started.store(true, Ordering::SeqCst);
    health.leader.store(true, Ordering::SeqCst);
    let server = tokio::spawn(keysmith::controller::serve_http(
        addr,
        env.ctx.metrics.clone(),
        health,
    ));
    let base = format!("http://{addr}");
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(r) = env.http.get(format!("{base}/metrics")).send().await {
            body = r.text().await.unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for series in [
        "controller_runtime_reconcile_total{controller=\"apikey\",result=\"success\"}",
        "controller_runtime_reconcile_errors_total{controller=\"apikey\",reason=\"UnsupportedField\"}",
        "controller_runtime_reconcile_time_seconds_bucket",
        "keysmith_provider_requests_total{provider=\"openrouter\",operation=",
        "keysmith_provider_request_duration_seconds_bucket",
        "keysmith_apikeys{provider=\"openrouter\",ready=\"true\"} 1",
        "keysmith_apikeys{provider=\"openrouter\",ready=\"false\"} 1",
        "keysmith_key_expiry_timestamp_seconds{provider=\"openrouter\"}",
        "keysmith_keys_created_total{provider=\"openrouter\"} 2",
        // A Secret that does not exist is created (never applied over one made in between).
        "keysmith_kubernetes_writes_total{resource=\"secrets\",verb=\"create\"} 2",
        "keysmith_keys_revoked_total{provider=\"openrouter\"} 1",
    ] {
        assert!(body.contains(series), "missing {series} in\n{body}");
    }
    assert!(
        !body.contains("metered") && !body.contains("team-a"),
        "object names are not labels"
    );
    assert!(!body.contains(&value));
    assert_eq!(
        env.http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = env.http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "leader");
    server.abort();
}

/// Issue 20: the provider object's `workspaceID` changes: the key, fixed in its workspace at
/// OpenRouter, needs a new key (`NewKeyNeeded`), and with `onImmutableChange: Replace` gets one
/// in the new workspace while the old one is revoked.
#[tokio::test]
async fn a_workspace_change_of_the_provider_object_needs_a_new_key() {
    const WS_A: &str = "6f1c1f0e-3d7b-4c1e-9a55-2b8f4e0d9a10";
    const WS_B: &str = "0df9e665-d932-5740-b2c7-b52af166bc11";
    let env = env_with(
        |s| s.openrouter.as_mut().unwrap().workspace_id = Some(WS_A.into()),
        vec![],
    )
    .await;
    env.create(&apikey("ws", "openrouter", ApiKeySpec::default()))
        .await;
    let old = env.converge("ws", 4).await.status.unwrap().key_id.unwrap();
    let workspace = |keys: &[Value], id: &str| {
        keys.iter().find(|k| k["hash"] == id).unwrap()["workspaceId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(workspace(&env.emulator_keys().await, &old), WS_A);

    let providers: kube::Api<keysmith::api::ClusterKeyProvider> =
        kube::Api::all(env.client.clone());
    providers
        .patch(
            &env.cluster_provider_name("openrouter"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"openrouter": {"workspaceID": WS_B}}})),
        )
        .await
        .unwrap();
    env.touch("ws", "moved").await;
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
    assert_eq!(
        st.fields_needing_new_key,
        vec!["ClusterKeyProvider spec.openrouter.workspaceID".to_string()]
    );
    assert_eq!(live_keys(&env.emulator_keys().await), 1, "nothing minted");

    env.patch_spec("ws", json!({"onImmutableChange": "Replace"}))
        .await;
    env.reconcile("ws").await.unwrap();
    let ak = env.get("ws").await;
    assert_eq!(ready(&ak).1, "KeyActive", "{:?}", ak.status);
    let new = ak.status.unwrap().key_id.unwrap();
    assert_ne!(new, old);
    let keys = env.emulator_keys().await;
    assert_eq!(workspace(&keys, &new), WS_B);
    assert_eq!(
        keys.iter().find(|k| k["hash"] == old.as_str()).unwrap()["active"],
        false,
        "the old key is revoked"
    );
}
