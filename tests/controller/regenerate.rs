//! A regenerate kills the old value at once (DigitalOcean adoption, `allowDowntime` rotation):
//! it is only called once a dry run showed that the API server takes the Secret write (issue 17
//! item 8). Each case makes the real API server refuse the write and checks that no regenerate
//! reached the emulator and the old value still works.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use keysmith::api::{ApiKeySpec, KeyRef, RotationSpec, ROTATE_ANNOTATION};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::digitalocean;
use crate::harness::*;

/// How often the emulator regenerated key `uuid`.
async fn regenerations(env: &Env, uuid: &str) -> u64 {
    let keys = env.emulator_keys().await;
    let k = keys
        .iter()
        .find(|k| k["id"] == uuid)
        .unwrap_or_else(|| panic!("key {uuid}: {keys:?}"));
    k["regenerations"].as_u64().expect("regenerations")
}

fn adopting(uuid: &str) -> ApiKeySpec {
    ApiKeySpec {
        key_ref: Some(Box::new(KeyRef { id: uuid.into() })),
        rotation: Some(Box::new(RotationSpec {
            allow_downtime: true,
            grace_period: Some("0s".into()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn adoption_by_regenerate_waits_for_a_secret_the_api_server_takes() {
    let env = digitalocean::env().await;
    let (uuid, original) = digitalocean::seed_model_key(&env, "prod").await;
    // No room for another Secret in the namespace.
    let secrets: Api<Secret> = env.secrets();
    let n = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-more-secrets"},
        "spec": {"hard": {"secrets": n.to_string()}},
    }))
    .unwrap();
    Api::<ResourceQuota>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &quota)
        .await
        .unwrap();
    // The quota applies once admission sees it: a dry-run create is refused.
    let probe = secret(&env.ns, "probe", "k", "v");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while secrets.create(&dry, &probe).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "quota never applied");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    env.create(&apikey("m", "digitalocean", adopting(&uuid)))
        .await;
    for _ in 0..3 {
        let _ = env.reconcile("m").await;
    }
    let ak = env.get("m").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretWriteRefused"),
        "{message}"
    );
    assert_eq!(regenerations(&env, &uuid).await, 0);
    assert_eq!(
        digitalocean::inference(&env, &original).await,
        200,
        "the key's value still works"
    );
    assert!(ak.status.unwrap().key_id.is_none());

    // Room again: adopted, by regenerate.
    Api::<ResourceQuota>::namespaced(env.client.clone(), &env.ns)
        .delete("no-more-secrets", &Default::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let _ = env.reconcile("m").await;
        if ready(&env.get("m").await).0 == "True" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            ready(&env.get("m").await)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(regenerations(&env, &uuid).await, 1, "one regenerate");
    let value = env.secret_value("m", "api-key").await.unwrap();
    assert_eq!(digitalocean::inference(&env, &value).await, 200);
}

#[tokio::test]
async fn an_allow_downtime_rotation_waits_for_a_secret_the_api_server_takes() {
    let env = digitalocean::env().await;
    let (uuid, _) = digitalocean::seed_model_key(&env, "prod").await;
    env.create(&apikey("m", "digitalocean", adopting(&uuid)))
        .await;
    let ak = env.converge("m", 6).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ready(&ak));
    let value = env.secret_value("m", "api-key").await.unwrap();
    // The Secret cannot take the next value: its type is immutable on the API server, and the
    // spec now asks for another one.
    env.patch_spec(
        "m",
        json!({"secret": {"template": {"type": "example.com/other"}}}),
    )
    .await;
    env.apikeys()
        .patch(
            "m",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "r1"}}})),
        )
        .await
        .unwrap();
    let adopted = regenerations(&env, &uuid).await;
    for _ in 0..3 {
        let _ = env.reconcile("m").await;
    }
    let ak = env.get("m").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(status, "False", "{reason}: {message}");
    assert!(message.contains("type"), "{reason}: {message}");
    assert_eq!(
        regenerations(&env, &uuid).await,
        adopted,
        "no regenerate since the adoption"
    );
    assert_eq!(
        env.secret_value("m", "api-key").await.as_ref(),
        Some(&value)
    );
    assert_eq!(
        digitalocean::inference(&env, &value).await,
        200,
        "the value workloads hold still works"
    );
}
