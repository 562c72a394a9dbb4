//! Issue 10, items 2, 4, 5 and 9 on the real API server: no create/revoke loop for a Secret that
//! cannot be written, no adoption of another tenant's key, no recovery that revokes another
//! ApiKey's key, and the Secret compared and written only where keysmith owns it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use k8s_openapi::ByteString;
use keysmith::api::{
    AdoptionPolicy, ApiKey, ApiKeySpec, ClusterKeyProvider, DeletionPolicy, KeyRef,
};
use keysmith::controller::apikey;
use keysmith::emulators::ScriptedFault;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::harness::*;
use crate::openrouter;
use crate::ucloud;

const CREATE: &str = "POST /api/v1/keys";

fn with_template(name: &str, template: Value) -> ApiKey {
    let spec: ApiKeySpec = serde_json::from_value(
        json!({ "providerRef": { "name": "openrouter" }, "secret": { "template": template } }),
    )
    .unwrap();
    apikey(name, "openrouter", spec)
}

/// Reconcile `name` `n` times in a row, as status writes retrigger it.
async fn hammer(env: &Env, name: &str, n: usize) {
    for _ in 0..n {
        let _ = env.reconcile(name).await;
    }
}

#[tokio::test]
async fn an_unwritable_template_is_invalid_spec_before_any_create() {
    let env = openrouter::env().await;
    let cases = [
        (
            "badkey",
            json!({ "data": { "not a valid key!": "{{ .key }}" } }),
        ),
        ("badtype", json!({ "type": "not a type!" })),
        ("tls", json!({ "type": "kubernetes.io/tls" })),
        // Within the CRD's bounds (8192 characters per entry), but 1024 key values rendered
        // pass the 1 MiB a Secret may hold.
        (
            "huge",
            json!({ "data": { "BLOB": "{{.key}}".repeat(1024) } }),
        ),
    ];
    for (name, template) in &cases {
        env.create(&with_template(name, template.clone())).await;
    }
    // A Secret name that is not DNS-1123 never gets this far: the CRD's pattern refuses it.
    let mut bad_name = apikey("badname", "openrouter", ApiKeySpec::default());
    bad_name.spec.secret = Some(serde_json::from_value(json!({ "name": "Not_A_Name" })).unwrap());
    bad_name.metadata.namespace = None; // the test's own namespace, from the Api
    let refused = env
        .apikeys()
        .create(&Default::default(), &bad_name)
        .await
        .expect_err("the API server refuses a Secret name that is not DNS-1123");
    assert!(
        refused.to_string().contains("spec.secret.name"),
        "{refused}"
    );
    env.reset_provider_calls().await;
    for name in cases.iter().map(|c| c.0) {
        hammer(&env, name, 5).await;
        let (status, reason, message) = ready(&env.get(name).await);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "InvalidSpec"),
            "{name}: {message}"
        );
    }
    let calls = env.provider_calls().await;
    assert_eq!(route_count(&calls, CREATE), 0, "{calls}");
    assert!(env.emulator_keys().await.is_empty());
}

#[tokio::test]
async fn a_secret_the_api_server_refuses_costs_a_bounded_number_of_creates() {
    let env = openrouter::env().await;
    // No Secret may be created in the namespace.
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": { "name": "no-secrets" },
        "spec": { "hard": { "count/secrets": "0" } }
    }))
    .unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), &env.ns);
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    env.create(&apikey("quota", "openrouter", ApiKeySpec::default()))
        .await;
    env.reset_provider_calls().await;
    // Each status write retriggers the reconcile at once: thirty in a row.
    hammer(&env, "quota", 30).await;
    let calls = env.provider_calls().await;
    assert_eq!(
        route_count(&calls, CREATE),
        0,
        "the dry run finds the refusal before a key is minted: {calls}"
    );
    let ak = env.get("quota").await;
    let (_, reason, message) = ready(&ak);
    assert!(
        reason == "SecretWriteRefused" || reason == "CreateBackoff",
        "{reason}: {message}"
    );
    assert!(message.contains("quota"), "{message}");
    let b = ak.status.unwrap().create_backoff.expect("backoff recorded");
    assert!(b.failures >= 1);
    assert!(env.emulator_keys().await.is_empty());
}

#[tokio::test]
async fn failed_creates_back_off_across_reconciles() {
    let env = openrouter::env().await;
    env.create(&apikey("refused", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("refused").await.unwrap(); // finalizer
    env.reset_provider_calls().await;
    // The provider refuses every create (a definite refusal: nothing to recover).
    env.emulator.faults.push((0..50).map(|_| ScriptedFault {
        status: Some(400),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    }));
    hammer(&env, "refused", 30).await;
    let calls = env.provider_calls().await;
    assert!(route_count(&calls, CREATE) <= 1, "{calls}");
    let ak = env.get("refused").await;
    let (_, reason, message) = ready(&ak);
    assert_eq!(reason, "CreateBackoff", "{message}");
    let b = ak.status.unwrap().create_backoff.unwrap();
    assert_eq!(b.failures, 1);
    // A restarted operator (a fresh context) honours the recorded backoff too.
    let fresh = Arc::new(keysmith::controller::Context::new(
        env.client.clone(),
        Arc::new(keysmith::metrics::Metrics::new()),
        keysmith::controller::Settings {
            operator_namespace: env.operator_ns.clone(),
            reporter: "keysmith-test".into(),
            ..Default::default()
        },
    ));
    let ak = env.get("refused").await;
    let _ = apikey::reconcile(Arc::new(ak), fresh).await;
    assert_eq!(
        route_count(&env.provider_calls().await, CREATE),
        1,
        "no create before notBefore"
    );
}

#[tokio::test]
async fn a_type_change_never_deletes_the_live_secret() {
    let env = openrouter::env().await;
    env.create(&apikey("typed", "openrouter", ApiKeySpec::default()))
        .await;
    env.converge("typed", 4).await;
    let value = env.secret_value("typed", "api-key").await.unwrap();
    let uid = env.secrets().get("typed").await.unwrap().metadata.uid;
    env.patch_spec(
        "typed",
        json!({ "secret": { "template": { "type": "example.com/api-key" } } }),
    )
    .await;
    hammer(&env, "typed", 3).await;
    let (_, reason, message) = ready(&env.get("typed").await);
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(message.contains("type"), "{message}");
    let s = env.secrets().get("typed").await.unwrap();
    assert_eq!(s.metadata.uid, uid, "the live Secret is the same object");
    assert_eq!(
        env.secret_value("typed", "api-key").await,
        Some(value.clone())
    );
    assert!(openrouter::key_works(&env, &value).await);
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 1);
}

#[tokio::test]
async fn an_extra_data_key_someone_added_is_left_alone() {
    let env = openrouter::env().await;
    env.create(&apikey("extra", "openrouter", ApiKeySpec::default()))
        .await;
    env.converge("extra", 4).await;
    env.secrets()
        .patch(
            "extra",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "NOTE": "aGVsbG8=" } })),
        )
        .await
        .unwrap();
    env.take_writes();
    env.reconcile("extra").await.unwrap();
    env.reconcile("extra").await.unwrap();
    let writes = env.take_writes();
    assert!(
        !writes.iter().any(|w| w.contains("Secret")),
        "no Secret write: {writes:?}"
    );
    let s = env.secrets().get("extra").await.unwrap();
    assert_eq!(
        s.data.unwrap().get("NOTE"),
        Some(&ByteString(b"hello".to_vec()))
    );
}

#[tokio::test]
async fn a_missing_secret_is_created_not_applied() {
    let env = openrouter::env().await;
    env.create(&apikey("fresh", "openrouter", ApiKeySpec::default()))
        .await;
    env.converge("fresh", 4).await;
    let writes = env.take_writes();
    assert!(
        writes.iter().any(|w| w.starts_with("create Secret")),
        "{writes:?}"
    );
    // The only patch of a Secret is the in-use finalizer on the provider's credentials Secret
    // (issue 10 item 8), never a write of the ApiKey's Secret.
    assert!(
        !writes
            .iter()
            .any(|w| w.starts_with("patch Secret") && !w.contains("keysmith.dev/in-use")),
        "{writes:?}"
    );
}

/// A ucloud env with the adoption policy `adoption`; returns it and a key made outside keysmith.
async fn ucloud_with_console_key(adoption: Option<AdoptionPolicy>) -> (Env, String) {
    let env = ucloud::env_with_adoption(adoption).await;
    env.create(&apikey("maker", "ucloud", ApiKeySpec::default()))
        .await;
    let id = env
        .converge("maker", 4)
        .await
        .status
        .unwrap()
        .key_id
        .unwrap();
    // Orphan it: keysmith lets go, the key stays (a key nobody manages).
    env.patch_spec("maker", json!({ "deletionPolicy": "Orphan" }))
        .await;
    env.delete("maker").await;
    env.reconcile("maker").await.unwrap();
    (env, id)
}

fn adopter(id: &str) -> ApiKey {
    apikey(
        "adopter",
        "ucloud",
        ApiKeySpec {
            key_ref: Some(Box::new(KeyRef { id: id.into() })),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn a_cluster_provider_allows_adoption_only_if_its_owner_opted_in() {
    let (env, id) = ucloud_with_console_key(None).await;
    env.create(&adopter(&id)).await;
    hammer(&env, "adopter", 3).await;
    let (_, reason, message) = ready(&env.get("adopter").await);
    assert_eq!(reason, "AdoptionRefused", "{message}");
    assert!(env.secrets().get_opt("adopter").await.unwrap().is_none());

    // Allowed, but for other namespaces only.
    let ckps: Api<ClusterKeyProvider> = Api::all(env.client.clone());
    let name = env.cluster_provider_name("ucloud");
    let allow = |team: &str| {
        json!({ "spec": { "adoption": { "allowed": true,
            "namespaceSelector": { "matchLabels": { "team": team } } } } })
    };
    ckps.patch(&name, &PatchParams::default(), &Patch::Merge(allow("web")))
        .await
        .unwrap();
    env.touch("adopter", "b").await;
    env.reconcile("adopter").await.unwrap();
    let (_, reason, message) = ready(&env.get("adopter").await);
    assert_eq!(reason, "AdoptionRefused", "{message}");
    assert!(message.contains("namespaceSelector"), "{message}");

    ckps.patch(&name, &PatchParams::default(), &Patch::Merge(allow("ai")))
        .await
        .unwrap();
    env.touch("adopter", "c").await;
    let ak = env.converge("adopter", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ready(&ak));
    assert_eq!(ak.status.unwrap().key_id, Some(id));
}

/// A key still under its provisional name is another ApiKey's create in flight (here: one
/// whose process died right after the provider answered): it is never adopted, so that the
/// owner's recovery can revoke it and nobody is left holding a revoked key.
#[tokio::test]
async fn a_key_under_a_provisional_name_is_never_adopted() {
    let env = ucloud::env().await;
    env.create(&apikey("owner", "ucloud", ApiKeySpec::default()))
        .await;
    env.reconcile("owner").await.unwrap(); // finalizer
    env.ctx.crash_after_create.store(true, Ordering::SeqCst);
    let _ = env.reconcile("owner").await;
    env.ctx.crash_after_create.store(false, Ordering::SeqCst);
    let keys = env.emulator_keys().await;
    let stray = keys
        .iter()
        .find(|k| {
            k["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("keysmith-attempt-")
        })
        .unwrap_or_else(|| panic!("the interrupted create's key: {keys:?}"));
    let id = stray["keyId"].as_str().unwrap().to_string();
    let message = adoption_from_another_namespace_is_refused(&env, &id).await;
    assert!(message.contains("provisional"), "{message}");
    // The owner recovers: its stray key revoked, a new one named as it says.
    let owner = env.converge("owner", 6).await;
    assert_eq!(ready(&owner).0, "True", "{:?}", ready(&owner));
    let keys = env.emulator_keys().await;
    let live = ucloud::live(&keys);
    assert_eq!(live.len(), 1, "{keys:?}");
    assert_ne!(live[0]["keyId"], id.as_str());
}

/// A tenant in another namespace, admitted to the same ClusterKeyProvider, names key `id` in
/// `spec.keyRef`: three reconciles end in AdoptionRefused, no keyID and no Secret. Returns the
/// condition's message. (The ApiKey's finalizer is released again.)
async fn adoption_from_another_namespace_is_refused(env: &Env, id: &str) -> String {
    let mut thief = adopter(id);
    thief.metadata.namespace = Some(OTHER_NS.into());
    env.create(&thief).await;
    let api: Api<ApiKey> = Api::namespaced(env.client.clone(), &env.other_ns);
    for _ in 0..3 {
        let ak = api.get("adopter").await.unwrap();
        let _ = apikey::reconcile(Arc::new(ak), env.ctx.clone()).await;
    }
    let ak = api.get("adopter").await.unwrap();
    let (_, reason, message) = ready(&ak);
    assert_eq!(reason, "AdoptionRefused", "{message}");
    assert!(ak.status.unwrap().key_id.is_none());
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.other_ns);
    assert!(secrets.get_opt("adopter").await.unwrap().is_none());
    api.patch(
        "adopter",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    message
}

#[tokio::test]
async fn a_key_another_apikey_manages_is_never_adopted() {
    let env = ucloud::env().await;
    env.create(&apikey("owner", "ucloud", ApiKeySpec::default()))
        .await;
    let owner = env.converge("owner", 4).await;
    let id = owner.status.unwrap().key_id.unwrap();
    let value = env.secret_value("owner", "api-key").await.unwrap();
    // A tenant in another namespace, admitted to the same ClusterKeyProvider, names the key.
    adoption_from_another_namespace_is_refused(&env, &id).await;
    // The owner's key is untouched and still works.
    assert_eq!(env.secret_value("owner", "api-key").await, Some(value));
    assert_eq!(ucloud::live(&env.emulator_keys().await).len(), 1);
}

#[tokio::test]
async fn a_copied_display_name_does_not_make_recovery_revoke_anothers_key() {
    let env = openrouter::env().await;
    let named = |name: &str| {
        apikey(
            name,
            "openrouter",
            ApiKeySpec {
                display_name: Some("shared".into()),
                ..Default::default()
            },
        )
    };
    env.create(&named("victim")).await;
    env.converge("victim", 4).await;
    let value = env.secret_value("victim", "api-key").await.unwrap();
    env.create(&named("copycat")).await;
    env.reconcile("copycat").await.unwrap(); // finalizer
    env.ctx.crash_after_create.store(true, Ordering::SeqCst);
    let _ = env.reconcile("copycat").await;
    env.ctx.crash_after_create.store(false, Ordering::SeqCst);
    assert!(env
        .get("copycat")
        .await
        .status
        .unwrap()
        .pending_create
        .is_some());
    let ak = env.converge("copycat", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ready(&ak));
    assert!(
        openrouter::key_works(&env, &value).await,
        "the victim's key survives the copycat's recovery"
    );
    assert_eq!(
        env.secret_value("victim", "api-key").await,
        Some(value),
        "and stays in its Secret"
    );
    // The copycat's own stray key was revoked: one live key each.
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 2);
}

/// Issue 10, item 5: an OpenRouter key is created under a provisional name made of the attempt
/// id, which no tenant can choose; recovery revokes that key only, never a key made outside
/// keysmith under the ApiKey's display name at the same moment (no ApiKey holds that one, so
/// before provisional names recovery took it for the attempt's).
#[tokio::test]
async fn recovery_revokes_only_the_attempts_provisionally_named_key() {
    let env = openrouter::env().await;
    let spec = ApiKeySpec {
        display_name: Some("shared".into()),
        ..Default::default()
    };
    env.create(&apikey("mine", "openrouter", spec)).await;
    env.reconcile("mine").await.unwrap(); // finalizer
                                          // Someone makes a key of the same name by hand, just before keysmith's create.
    let by_hand: Value = env
        .http
        .post(format!("{}/api/v1/keys", env.emulator.url()))
        .bearer_auth(openrouter::MGMT)
        .json(&json!({ "name": "shared" }))
        .send()
        .await
        .expect("the emulator answers")
        .json()
        .await
        .expect("JSON");
    let by_hand = by_hand["data"]["hash"].as_str().expect("hash").to_string();
    env.ctx.crash_after_create.store(true, Ordering::SeqCst);
    let _ = env.reconcile("mine").await;
    env.ctx.crash_after_create.store(false, Ordering::SeqCst);
    let pending = env
        .get("mine")
        .await
        .status
        .unwrap()
        .pending_create
        .expect("the marker of the interrupted create");
    assert_eq!(
        pending.name,
        format!("keysmith-attempt-{}", pending.attempt)
    );
    let stray: Vec<Value> = env
        .emulator_keys()
        .await
        .into_iter()
        .filter(|k| k["name"] == pending.name.as_str())
        .collect();
    assert_eq!(
        stray.len(),
        1,
        "the interrupted create made its key under the provisional name"
    );

    let ak = env.converge("mine", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ready(&ak));
    let keys = env.emulator_keys().await;
    let find = |id: &str| keys.iter().find(|k| k["hash"] == id).cloned().unwrap();
    assert_eq!(
        find(&by_hand)["active"],
        true,
        "the key made by hand survives recovery"
    );
    assert_eq!(
        find(stray[0]["hash"].as_str().unwrap())["active"],
        false,
        "the attempt's own key was revoked"
    );
    let id = ak.status.unwrap().key_id.expect("keyID");
    assert_eq!(
        find(&id)["name"],
        "shared",
        "the new key was given its display name"
    );
    assert!(
        keys.iter().all(|k| k["active"] == false
            || !k["name"].as_str().unwrap().starts_with("keysmith-attempt-")),
        "no live key keeps a provisional name: {keys:?}"
    );
}

#[tokio::test]
async fn orphan_policy_revokes_an_interrupted_creates_key() {
    let env = openrouter::env().await;
    let spec = ApiKeySpec {
        deletion_policy: DeletionPolicy::Orphan,
        ..Default::default()
    };
    env.create(&apikey("leaving", "openrouter", spec)).await;
    env.reconcile("leaving").await.unwrap(); // finalizer
    env.ctx.crash_after_create.store(true, Ordering::SeqCst);
    let _ = env.reconcile("leaving").await;
    env.ctx.crash_after_create.store(false, Ordering::SeqCst);
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 1);
    env.delete("leaving").await;
    // The interrupted create settles after the client timeout plus 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.apikeys().get_opt("leaving").await.unwrap().is_some()
        && std::time::Instant::now() < deadline
    {
        let _ = env.reconcile("leaving").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        env.apikeys().get_opt("leaving").await.unwrap().is_none(),
        "the finalizer was released"
    );
    assert_eq!(
        openrouter::live_keys(&env.emulator_keys().await),
        0,
        "the stray key of the interrupted create did not leak"
    );
}

/// The first reconciles of a burst all protect the same provider object (the in-use finalizer):
/// one marks it, the others wait and find it marked. Before, each patched it at once guarded by
/// the resourceVersion it had read, and all but one failed with 409.
#[tokio::test]
async fn a_burst_of_first_reconciles_marks_the_provider_object_once_without_conflicts() {
    let env = openrouter::env().await;
    let mut apikeys = Vec::new();
    for i in 0..16 {
        apikeys.push(
            env.create(&apikey(
                &format!("burst-{i}"),
                "openrouter",
                ApiKeySpec::default(),
            ))
            .await,
        );
    }
    let results =
        futures::future::join_all(apikeys.iter().map(|ak| env.ctx.in_use.protect(ak))).await;
    for r in &results {
        assert!(r.is_ok(), "a concurrent protect failed: {r:?}");
    }
    let ckp = Api::<keysmith::api::ClusterKeyProvider>::all(env.client.clone())
        .get(&env.cluster_provider_name("openrouter"))
        .await
        .unwrap();
    let marks = ckp
        .metadata
        .finalizers
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f == "keysmith.dev/in-use")
        .count();
    assert_eq!(
        marks, 1,
        "the provider object carries the in-use finalizer once"
    );
}

/// Issue 17 (critical): crash recovery took the key id a Secret *claims* (its
/// `keysmith.dev/key-id` annotation) for the interrupted attempt's key. Every mark on the Secret
/// is the tenant's to write: a tenant whose create was interrupted wrote another ApiKey's key id
/// there and its ApiKey took that key over (sync then pushes its settings onto it, deletion
/// revokes it). Now a claim is believed only where the provider's listing ties the key to the
/// attempt, and a key another ApiKey holds is never taken. Both a plain copy of the id and one
/// with a copied display name (the key's name then matches the attempt's final name) fail.
#[tokio::test]
async fn a_secret_claiming_anothers_key_id_does_not_take_it_over() {
    for copy_name in [false, true] {
        let env = openrouter::env().await;
        let victim_spec = ApiKeySpec {
            display_name: Some("victim-key".into()),
            ..Default::default()
        };
        env.create(&apikey("victim", "openrouter", victim_spec))
            .await;
        let victim = env.converge("victim", 4).await;
        let victim_id = victim.status.unwrap().key_id.expect("victim keyID");
        let victim_value = env.secret_value("victim", "api-key").await.unwrap();

        let attacker_spec = ApiKeySpec {
            display_name: Some(if copy_name { "victim-key" } else { "mallory" }.into()),
            ..Default::default()
        };
        env.create(&apikey("mallory", "openrouter", attacker_spec))
            .await;
        env.reconcile("mallory").await.unwrap(); // finalizer
        env.ctx.crash_after_create.store(true, Ordering::SeqCst);
        let _ = env.reconcile("mallory").await;
        env.ctx.crash_after_create.store(false, Ordering::SeqCst);
        assert!(env
            .get("mallory")
            .await
            .status
            .unwrap()
            .pending_create
            .is_some());
        // The tenant writes a Secret with every mark keysmith puts on its own, naming the
        // victim's key.
        let forged: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": "mallory",
                "labels": { keysmith::api::MANAGED_BY_LABEL: keysmith::api::MANAGED_BY },
                "annotations": {
                    keysmith::api::OWNER_ANNOTATION: format!("{}/mallory", env.ns),
                    keysmith::api::KEY_ID_ANNOTATION: victim_id,
                },
            },
            "stringData": { "api-key": "sk-or-v1-forged" },
        }))
        .unwrap();
        env.secrets()
            .create(&PostParams::default(), &forged)
            .await
            .expect("the tenant may write Secrets in its namespace");

        let ak = env.converge("mallory", 6).await;
        let st = ak.status.clone().unwrap();
        assert_ne!(
            st.key_id.as_deref(),
            Some(victim_id.as_str()),
            "copy_name={copy_name}: the attacker's ApiKey took the victim's key"
        );
        assert!(st.pending_create.is_none(), "{st:?}");
        assert!(
            env.events()
                .iter()
                .any(|(_, reason, msg)| reason == "RecoveringCreate"
                    && msg.contains("no key is taken on the Secret's word")),
            "the ignored claim is reported: {:?}",
            env.events()
        );
        // Deleting the attacker's ApiKey revokes its own keys, never the victim's.
        env.delete("mallory").await;
        for _ in 0..4 {
            if env.apikeys().get_opt("mallory").await.unwrap().is_none() {
                break;
            }
            let _ = env.reconcile("mallory").await;
        }
        assert!(
            env.apikeys().get_opt("mallory").await.unwrap().is_none(),
            "the attacker's ApiKey is gone"
        );
        assert!(
            openrouter::key_works(&env, &victim_value).await,
            "copy_name={copy_name}: the victim's key still works"
        );
        assert_eq!(
            env.secret_value("victim", "api-key").await,
            Some(victim_value)
        );
        let keys = env.emulator_keys().await;
        let victim_key = keys
            .iter()
            .find(|k| k["hash"] == victim_id.as_str())
            .unwrap();
        assert_eq!(
            victim_key["name"], "victim-key",
            "its settings are untouched"
        );
    }
}
