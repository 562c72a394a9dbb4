//! The controller's runtime guarantees on the real API server: a panicking reconcile is
//! contained and reported, no create starts when the leader Lease runs out first, in-flight work
//! is cancelled at the renew deadline, and deleting an ApiKey that never created a key does not
//! wait for its provider.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keysmith::api::{
    ApiKeySpec, KeyProviderSpec, OpenRouterProvider, ProviderKind, SecretKeySelector,
};
use keysmith::controller;
use keysmith::emulators::{self, ScriptedFault};

use crate::harness::*;

const MGMT: &str = "sk-or-v1-mgmt-runtime-0000";

#[derive(Parser)]
struct EmuArgs {
    #[command(flatten)]
    args: emulators::OpenRouterArgs,
}

async fn env() -> Env {
    let a = EmuArgs::try_parse_from(["emulate", "--management-key", MGMT])
        .expect("emulator flags parse")
        .args;
    let (router, faults) = emulators::build_openrouter(&a);
    let emu = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let spec = KeyProviderSpec {
        openrouter: Some(OpenRouterProvider {
            base_url: Some(format!("{}/api/v1", emu.url())),
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
    env_for(emu, "openrouter", spec, creds, vec![]).await
}

fn creates(stats: &serde_json::Value) -> u64 {
    route_count(stats, "POST /api/v1/keys")
}

#[tokio::test]
async fn a_panicking_reconcile_is_contained_and_reported_on_the_apikey() {
    let env = env().await;
    env.create(&apikey("boom", "openrouter", ApiKeySpec::default()))
        .await;
    env.ctx.panic_in_reconcile.store(true, Ordering::SeqCst);
    let ak = Arc::new(env.get("boom").await);
    let err = controller::reconcile_apikey(ak.clone(), env.ctx.clone())
        .await
        .expect_err("a panic is an error, not the end of the task");
    assert!(matches!(err, controller::Error::Panicked), "{err}");
    let (status, reason, message) = ready(&env.get("boom").await);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InternalError")
    );
    assert!(
        !message.contains("test hook"),
        "the panic text stays in the log: {message}"
    );
    // The error policy counts it.
    controller::error_policy(ak, &err, env.ctx.clone());
    let metrics = env.ctx.metrics.encode();
    assert!(
        metrics.contains(
            "controller_runtime_reconcile_errors_total{controller=\"apikey\",reason=\"InternalError\"} 1"
        ),
        "{metrics}"
    );
    // The bug gone, the same ApiKey is reconciled to Ready.
    env.ctx.panic_in_reconcile.store(false, Ordering::SeqCst);
    for _ in 0..6 {
        let ak = Arc::new(env.get("boom").await);
        let _ = controller::reconcile_apikey(ak, env.ctx.clone()).await;
        if ready(&env.get("boom").await).0 == "True" {
            return;
        }
    }
    panic!(
        "not Ready after the panic stopped: {:?}",
        env.get("boom").await.status
    );
}

#[tokio::test]
async fn no_create_starts_when_the_leader_lease_runs_out_first() {
    let env = env().await;
    env.create(&apikey("late", "openrouter", ApiKeySpec::default()))
        .await;
    env.reconcile("late").await.unwrap(); // finalizer
    env.reset_provider_calls().await;
    // One second of lease left; a create may take the client timeout (2 s in tests).
    env.ctx
        .lease
        .renewed(tokio::time::Instant::now(), Duration::from_secs(2));
    env.reconcile("late").await.unwrap();
    let ak = env.get("late").await;
    let (status, reason, _) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "LeaseExpiring")
    );
    assert!(
        ak.status.as_ref().unwrap().pending_create.is_none(),
        "no marker: nothing was attempted"
    );
    assert_eq!(creates(&env.provider_calls().await), 0);
    // Renewed with a full lease: the create goes ahead.
    env.ctx
        .lease
        .renewed(tokio::time::Instant::now(), Duration::from_secs(60));
    let ak = env.converge("late", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
}

#[tokio::test]
async fn in_flight_reconciles_are_cancelled_at_the_renew_deadline() {
    let env = env().await;
    env.create(&apikey("slow", "openrouter", ApiKeySpec::default()))
        .await;
    let ak = env.converge("slow", 4).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    // The revoke of a deletion is retried on timeouts (3 attempts of 2 s): longer than the
    // 4.8 s this leader has before its renew deadline (6 s lease − 1.2 s margin), and the
    // renewals stop.
    env.delete("slow").await;
    env.emulator.faults.push((0..4).map(|_| ScriptedFault {
        status: None,
        retry_after: None,
        malformed: false,
        delay_ms: Some(30_000),
    }));
    env.ctx
        .lease
        .renewed(tokio::time::Instant::now(), Duration::from_secs(6));
    let ak = Arc::new(env.get("slow").await);
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        controller::reconcile_apikey(ak, env.ctx.clone()),
    )
    .await
    .expect("the reconcile ended");
    let took = started.elapsed();
    assert!(
        matches!(result, Err(controller::Error::LeaseLost)),
        "cancelled at the deadline: {result:?} after {took:?}"
    );
    // Stopped before a standby may acquire (6 s after the renew).
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        env.apikeys().get_opt("slow").await.unwrap().is_some(),
        "the finalizer stays: the new leader revokes"
    );
}

#[tokio::test]
async fn deleting_an_apikey_that_never_created_a_key_does_not_wait_for_its_provider() {
    let env = env().await;
    let mut ak = apikey("typo", "no-such-provider", ApiKeySpec::default());
    ak.spec.provider_ref.kind = ProviderKind::KeyProvider;
    env.create(&ak).await;
    env.reconcile("typo").await.unwrap(); // finalizer
    env.reconcile("typo").await.unwrap();
    let (_, reason, _) = ready(&env.get("typo").await);
    assert_eq!(reason, "ProviderRefNotFound");
    env.delete("typo").await;
    let _ = env.reconcile("typo").await;
    assert!(
        env.apikeys().get_opt("typo").await.unwrap().is_none(),
        "the finalizer was released at once: {:?}",
        env.apikeys()
            .get_opt("typo")
            .await
            .unwrap()
            .map(|a| a.status)
    );
}

/// Every user-supplied name is the DNS-1123 name (or data key) Kubernetes needs, checked by the
/// API server from the CRD schema before keysmith sees the object.
#[tokio::test]
async fn names_that_are_not_dns_1123_are_refused_by_the_api_server() {
    let env = env().await;
    let create = |spec: serde_json::Value| {
        let env = &env;
        async move {
            let ak: keysmith::api::ApiKey = serde_json::from_value(serde_json::json!({
                "apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey",
                "metadata": { "name": "names", "namespace": env.ns },
                "spec": spec,
            }))
            .unwrap();
            env.apikeys().create(&Default::default(), &ak).await
        }
    };
    for bad in [
        serde_json::json!({ "providerRef": { "kind": "KeyProvider", "name": "Not_A_Name" } }),
        serde_json::json!({ "providerRef": { "name": "p" }, "secret": { "name": "UPPER" } }),
        serde_json::json!({ "providerRef": { "name": "p" }, "secret": { "key": "not a key!" } }),
        serde_json::json!({ "providerRef": { "name": "p" }, "source": { "secretRef": { "name": "a/b", "key": "k" } } }),
    ] {
        match create(bad.clone()).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{bad}: {e:?}"),
            other => panic!("{bad} was accepted: {other:?}"),
        }
    }
    create(serde_json::json!({ "providerRef": { "name": "p.example" }, "secret": { "name": "ok-name", "key": "api_key.v1" } }))
        .await
        .expect("valid names are accepted");
    let kp: keysmith::api::KeyProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "KeyProvider",
        "metadata": { "name": "kp", "namespace": env.ns },
        "spec": { "openrouter": { "managementKeySecretRef": { "name": "Bad Secret", "key": "token" } } },
    }))
    .unwrap();
    let kps: kube::Api<keysmith::api::KeyProvider> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    match kps.create(&Default::default(), &kp).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("a credentials ref that is no Secret name was accepted: {other:?}"),
    }
}
