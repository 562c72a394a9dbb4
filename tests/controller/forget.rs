//! Issue 19 item 3: whatever the context keeps for an ApiKey or a provider object goes when it
//! is deleted (one `forget` per deletion reaching every part). Before, a deleted ApiKey's
//! workload restart stayed in the debouncer for a day, and a deleted provider object's in-use
//! marking and fair share stayed for good.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use keysmith::api::{
    ApiKeySpec, ClusterKeyProvider, KeyProvider, KeyProviderSpec, OpenRouterProvider, ProviderKind,
    RestartKind, RestartTarget, RotationSpec, SecretKeySelector, ROTATE_ANNOTATION,
};
use keysmith::controller::{supervise, Kept};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::*;
use crate::openrouter;

/// A finalizer of someone else's: deleting an object that carries it leaves it Terminating, as
/// the controllers see an object being deleted.
const HOLD: &str = "example.com/hold";

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    }))
    .unwrap()
}

/// Reconcile the ApiKey `name` (being deleted) until it is gone (an interrupted create is
/// waited for: up to the client timeout and 5 s, see `Env::converge`).
async fn reconcile_until_gone(env: &Env, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Some(ak) = env.apikeys().get_opt(name).await.unwrap() else {
            return;
        };
        if let Err(e) = keysmith::controller::apikey::reconcile(Arc::new(ak), env.ctx.clone()).await
        {
            eprintln!("reconcile {name}: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        env.apikeys().get_opt(name).await.unwrap().is_none(),
        "ApiKey {name} is still there"
    );
}

async fn drop_hold<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn deleted_apikeys_and_provider_objects_leave_nothing_in_the_context() {
    let env = openrouter::env().await;
    assert!(env.ctx.kept().is_empty(), "{:?}", env.ctx.kept());
    let pp = PostParams::default();
    Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .create(&pp, &deployment("web"))
        .await
        .unwrap();
    // A KeyProvider whose API refuses connections (a transient failure: a failure counter).
    env.secrets()
        .create(
            &pp,
            &secret(&env.ns, "down-mgmt", "token", openrouter::MGMT),
        )
        .await
        .unwrap();
    let mut down = KeyProvider::new(
        "down",
        KeyProviderSpec {
            openrouter: Some(OpenRouterProvider {
                base_url: Some("http://127.0.0.1:1/api/v1".into()),
                management_key_secret_ref: SecretKeySelector {
                    name: "down-mgmt".into(),
                    key: "token".into(),
                    namespace: None,
                },
                workspace_id: None,
            }),
            ..Default::default()
        },
    );
    down.metadata.finalizers = Some(vec![HOLD.into()]);
    let kps: Api<KeyProvider> = Api::namespaced(env.client.clone(), &env.ns);
    kps.create(&pp, &down).await.unwrap();

    // "web-key" restarts a Deployment when it gets a new value; "failing" cannot be created.
    let restarting = ApiKeySpec {
        rotation: Some(Box::new(RotationSpec {
            grace_period: Some("1s".into()),
            ..Default::default()
        })),
        rollout_restart_targets: vec![RestartTarget {
            kind: RestartKind::Deployment,
            name: "web".into(),
        }],
        ..Default::default()
    };
    env.create(&apikey("web-key", "openrouter", restarting))
        .await;
    assert_eq!(ready(&env.converge("web-key", 6).await).0, "True");
    env.apikeys()
        .patch(
            "web-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "r1"}}})),
        )
        .await
        .unwrap();
    env.reconcile("web-key").await.unwrap();
    let mut failing = apikey("failing", "down", ApiKeySpec::default());
    failing.spec.provider_ref.kind = ProviderKind::KeyProvider;
    env.create(&failing).await;
    for _ in 0..3 {
        let _ = env.reconcile("failing").await;
    }
    let (status, reason, _) = ready(&env.get("failing").await);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ProviderUnavailable")
    );

    let kept = env.ctx.kept();
    println!("kept while both ApiKeys exist: {kept:?}");
    assert_eq!(kept.backoff, 1, "the failing ApiKey's counter: {kept:?}");
    assert_eq!(kept.debouncer, 1, "the restart of web: {kept:?}");
    assert_eq!(kept.gauges, 2, "{kept:?}");
    assert_eq!(kept.backends, 2, "both provider objects: {kept:?}");
    assert_eq!(kept.in_use, 1, "the ClusterKeyProvider is in use: {kept:?}");
    assert!(kept.fair_shares >= 1, "{kept:?}");

    // The KeyProvider's API comes back (the failing create may have happened: deleting the
    // ApiKey lists the keys to find out).
    kps.patch(
        "down",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"openrouter": {
            "baseURL": format!("{}/api/v1", env.emulator.url())
        }}})),
    )
    .await
    .unwrap();
    // The ClusterKeyProvider is deleted first (in use, it stays Terminating), then the ApiKeys.
    let ckp_name = env.cluster_provider_name("openrouter");
    let ckps: Api<ClusterKeyProvider> = Api::all(env.client.clone());
    ckps.delete(&ckp_name, &DeleteParams::default())
        .await
        .unwrap();
    for name in ["web-key", "failing"] {
        env.delete(name).await;
        reconcile_until_gone(&env, name).await;
    }
    let kept = env.ctx.kept();
    assert_eq!(
        (kept.backoff, kept.write_log, kept.gauges, kept.debouncer),
        (0, 0, 0, 0),
        "the ApiKeys are gone: {kept:?}"
    );
    // The ClusterKeyProvider waited for web-key's keys to be revoked, then went with it: its
    // client, listings, fair share and marking went too.
    assert!(ckps.get_opt(&ckp_name).await.unwrap().is_none());
    assert_eq!((kept.backends, kept.in_use), (1, 0), "{kept:?}");
    assert!(
        env.ctx
            .backends
            .contains(&format!("KeyProvider/{}/down", env.ns)),
        "the KeyProvider's client is the one left"
    );
    // Its listing (the deletion of `failing` listed its keys) and fair share at most.
    assert!(kept.listings <= 1 && kept.fair_shares <= 1, "{kept:?}");
    // The KeyProvider is deleted (another finalizer keeps it Terminating); its controller sees
    // it being deleted.
    kps.delete("down", &DeleteParams::default()).await.unwrap();
    let kp = kps.get("down").await.unwrap();
    assert!(kp.metadata.deletion_timestamp.is_some());
    supervise::reconcile_key_provider(Arc::new(kp), env.ctx.clone())
        .await
        .unwrap();
    assert_eq!(env.ctx.kept(), Kept::default());
    drop_hold(&kps, "down").await;
}
