//! A self-hosted gateway behind a private CA (issue 18 item 5): the emulator served over HTTPS
//! with a certificate no public root trusts. Without `caBundle` the handshake is refused (the
//! certificate really is verified); with it, the ApiKey becomes Ready. The bundle is read from
//! the provider object's namespace only.

use k8s_openapi::api::core::v1::ConfigMap;
use keysmith::api::{
    ApiKeySpec, BifrostProvider, CaBundle, ClusterKeyProvider, ConfigMapKeySelector,
    KeyProviderSpec, SecretKeySelector,
};
use keysmith::emulators::{self, bifrost as emu};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::harness::*;

use keysmith_testkit::private_ca as pki;

/// Reconcile (up to 3 passes: the first may only add the finalizer) until a Ready condition is
/// written; returns (status, reason, message).
async fn settle(env: &Env, name: &str) -> (String, String, String) {
    for _ in 0..3 {
        let _ = env.reconcile(name).await;
        let r = ready(&env.get(name).await);
        if !r.0.is_empty() {
            return r;
        }
    }
    ready(&env.get(name).await)
}

fn config_map(ns: &str, name: &str, key: &str, value: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.namespace = Some(ns.into());
    c.data = Some([(key.to_string(), value.to_string())].into());
    c
}

#[tokio::test]
async fn a_gateway_behind_a_private_ca_is_reached_only_with_its_ca_bundle() {
    let pki = pki::private_ca("corp-root-ca");
    let (router, faults) = emu::build(&emu::Args::default());
    let e = emulators::spawn_tls(router, faults, pki.server_config())
        .await
        .expect("emulator starts");
    let base_url = e.url();
    assert!(base_url.starts_with("https://"));
    let spec = KeyProviderSpec {
        bifrost: Some(BifrostProvider {
            base_url: base_url.clone(),
            auth_secret_ref: None,
        }),
        ..Default::default()
    };
    let env = env_for(
        e,
        "bifrost",
        spec,
        vec![secret(OPERATOR_NS, "corp-ca-secret", "ca.crt", &pki.ca_pem)],
        vec![
            serde_json::to_value(config_map(OPERATOR_NS, "corp-ca", "ca.crt", &pki.ca_pem))
                .unwrap(),
        ],
    )
    .await;
    let providers: Api<ClusterKeyProvider> = Api::all(env.client.clone());
    let provider = env.cluster_provider_name("bifrost");
    let set_bundle = |bundle: serde_json::Value| {
        let providers = providers.clone();
        let provider = provider.clone();
        async move {
            providers
                .patch(
                    &provider,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"caBundle": bundle}})),
                )
                .await
                .expect("provider patched");
        }
    };

    // 1. No caBundle: the private CA is in no root store, the handshake fails and says why.
    env.create(&apikey("gw", "bifrost", ApiKeySpec::default()))
        .await;
    let (status, reason, message) = settle(&env, "gw").await;
    assert_eq!(status, "False", "{reason}: {message}");
    assert!(
        message.to_lowercase().contains("certificate") || message.contains("UnknownIssuer"),
        "the refusal names the certificate: {reason}: {message}"
    );

    // 2. A caBundle that does not exist (in the operator's namespace, where a
    //    ClusterKeyProvider reads by default) is reported by name.
    set_bundle(json!({"configMapRef": {"name": "no-such-ca", "key": "ca.crt"}})).await;
    let (status, reason, message) = settle(&env, "gw").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CredentialsNotFound"),
        "{message}"
    );
    assert!(message.contains("no-such-ca"), "{message}");

    // 3. The CA from a ConfigMap of the operator's namespace: Ready, the key exists.
    set_bundle(json!({"configMapRef": {"name": "corp-ca", "key": "ca.crt"}})).await;
    let ak = env.converge("gw", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
    let value = env.secret_value("gw", "api-key").await.expect("Secret");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let models = trusting
        .get(format!("{base_url}/v1/models"))
        .bearer_auth(&value)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200, "the minted key works at the gateway");

    // 4. The same CA from a Secret works too (secretRef), and the typed spec round-trips.
    let typed = CaBundle {
        secret_ref: Some(SecretKeySelector {
            name: "corp-ca-secret".into(),
            key: "ca.crt".into(),
            namespace: None,
        }),
        config_map_ref: None,
    };
    set_bundle(json!({"configMapRef": null, "secretRef": serde_json::to_value(&typed.secret_ref).unwrap()})).await;
    env.reconcile("gw")
        .await
        .expect("reconciles with the Secret's CA");
    let (status, _, message) = ready(&env.get("gw").await);
    assert_eq!(status, "True", "{message}");
}

/// A namespaced KeyProvider reads its caBundle only from its own namespace: naming another
/// namespace is refused, whatever that namespace holds.
#[tokio::test]
async fn a_key_provider_reads_its_ca_bundle_only_from_its_namespace() {
    let pki = pki::private_ca("tenant-ca");
    let (router, faults) = emu::build(&emu::Args::default());
    let e = emulators::spawn_tls(router, faults, pki.server_config())
        .await
        .expect("emulator starts");
    let spec = KeyProviderSpec {
        bifrost: Some(BifrostProvider {
            base_url: e.url(),
            auth_secret_ref: None,
        }),
        ca_bundle: Some(CaBundle {
            secret_ref: None,
            config_map_ref: Some(ConfigMapKeySelector {
                name: "ca".into(),
                key: "ca.crt".into(),
                namespace: Some(OTHER_NS.into()),
            }),
        }),
        ..Default::default()
    };
    let mut kp = keysmith::api::KeyProvider::new("gw", spec.clone());
    kp.metadata.namespace = Some(NS.into());
    let env = Env::new(
        e,
        vec![
            serde_json::to_value(config_map(OTHER_NS, "ca", "ca.crt", &pki.ca_pem)).unwrap(),
            serde_json::to_value(config_map(NS, "ca", "ca.crt", &pki.ca_pem)).unwrap(),
        ],
    )
    .await;
    // the namespace is mapped to the test's own before the object is created
    let mut kp_value = serde_json::to_value(&kp).unwrap();
    kp_value["spec"]["caBundle"]["configMapRef"]["namespace"] = json!(env.map_ns(OTHER_NS));
    kp_value["metadata"]["namespace"] = json!(env.ns);
    let kp: keysmith::api::KeyProvider = serde_json::from_value(kp_value).unwrap();
    let kps: Api<keysmith::api::KeyProvider> = Api::namespaced(env.client.clone(), &env.ns);
    kps.create(&Default::default(), &kp).await.expect("created");
    let mut ak = apikey("gw", "gw", ApiKeySpec::default());
    ak.spec.provider_ref.kind = keysmith::api::ProviderKind::KeyProvider;
    env.create(&ak).await;
    let (status, reason, message) = settle(&env, "gw").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidProvider"),
        "{message}"
    );
    assert!(message.contains("own namespace"), "{message}");

    // its own namespace's ConfigMap: Ready
    kps.patch(
        "gw",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"caBundle": {"configMapRef": {"namespace": null}}}})),
    )
    .await
    .unwrap();
    let ak = env.converge("gw", 4).await;
    let (status, reason, message) = ready(&ak);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KeyActive"),
        "{message}"
    );
}
