//! Review of this session's changes against the ground rules (W16): false positives of the
//! rotated-outside detection (`apikey/outside.rs`).

use keysmith::api::{AdoptionPolicy, ApiKeySpec, BifrostProvider, KeyProviderSpec};
use keysmith::emulators::{self, bifrost as emu};
use serde_json::json;

use crate::harness::*;

/// A Bifrost gateway that hides virtual-key values (newer builds) behind a ClusterKeyProvider
/// that allows adoption.
async fn hidden_values_env() -> Env {
    let args = emu::Args {
        hide_vk_values: true,
        ..Default::default()
    };
    let (router, faults) = emu::build(&args);
    let e = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let spec = KeyProviderSpec {
        bifrost: Some(BifrostProvider {
            base_url: e.url(),
            auth_secret_ref: None,
        }),
        adoption: Some(AdoptionPolicy {
            allowed: true,
            namespace_selector: None,
        }),
        ..Default::default()
    };
    env_for(e, "bifrost", spec, vec![], vec![]).await
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

/// A virtual key adopted (spec.keyRef) after the gateway rotated it, the Secret holding the
/// value it has now, on a gateway that hides values: `rotated_at` is after the key's creation,
/// but before keysmith took the value. Before: since() was the key's creation (an adopted key
/// has no lastRotatedAt), so every refresh said Ready=False RotatedOutside for a value that
/// works (and adoption never rotates on loss: no way out but a needless rotation). Now: the
/// adoption records when keysmith got the value, and the key stays Ready.
#[tokio::test]
async fn a_key_rotated_at_the_gateway_before_its_adoption_is_not_rotated_outside() {
    let env = hidden_values_env().await;
    // Made at the gateway by hand, then rotated there (the rotate route answers the value).
    let (code, body) = env
        .emulator_post(
            "/api/governance/virtual-keys",
            json!({"name": "made-by-hand", "is_active": true}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let id = body["virtual_key"]["id"].as_str().unwrap().to_string();
    // rotated_at has whole seconds: well after the creation.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (code, body) = env
        .emulator_post(
            &format!("/api/governance/virtual-keys/{id}/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let value = body["virtual_key"]["value"].as_str().unwrap().to_string();
    assert_eq!(
        works(&env, &value).await,
        200,
        "the value the user hands over works"
    );

    // The user's Secret with the live value, which keysmith may take over.
    let mut s = secret(NS, "adopted", "api-key", &value);
    s.metadata.namespace = None;
    s.metadata.annotations = Some(
        [
            (keysmith::api::KEY_ID_ANNOTATION.to_string(), id.clone()),
            (
                keysmith::api::ALLOW_ADOPT_ANNOTATION.to_string(),
                "true".to_string(),
            ),
        ]
        .into(),
    );
    env.secrets()
        .create(&Default::default(), &s)
        .await
        .expect("the user's Secret");
    let spec: ApiKeySpec = serde_json::from_value(json!({
        "providerRef": {"name": "placeholder"},
        "keyRef": {"id": id},
    }))
    .expect("ApiKeySpec");
    env.create(&apikey("adopted", "bifrost", spec)).await;
    let ak = env.converge("adopted", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(status, "True", "{reason}: {message}");
    assert_eq!(
        ak.status.as_ref().unwrap().key_id.as_deref(),
        Some(id.as_str())
    );

    // A refresh: the rotation before the adoption is not one keysmith missed.
    env.touch("adopted", "refresh").await;
    let _ = env.reconcile("adopted").await;
    let ak = env.get("adopted").await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(status, "True", "{reason}: {message}");
    assert!(
        !env.events().iter().any(|(_, r, _)| r == "RotatedOutside"),
        "{:?}",
        env.events()
    );
    assert_eq!(
        env.secret_value("adopted", "api-key").await.as_deref(),
        Some(value.as_str())
    );
    env.assert_quiet("adopted").await;
}
