//! What every client gets from the shared layer rather than its own code: the base URL the
//! provider object decides (`ProviderConfig::base_url`) and the provider's clock offset
//! (`KeyBackend::clock_offset`, read from the `Date` headers of the HTTP layer).

use std::collections::BTreeMap;

use keysmith::api::{KeyProviderSpec, OpenRouterProvider, SecretKeySelector, UCloudProvider};
use keysmith::emulators::{self, openrouter, ucloud, RunningEmulator};
use keysmith::providers::{build_backend, ClientOptions, Credentials, KeyBackend};
use secrecy::SecretString;

const MGMT: &str = "sk-or-v1-0000000000000000000000000000000000000000000000000000000000000002";
const UC_PUBLIC: &str = "clock-public-key";
const UC_PRIVATE: &str = "clock-private-key-0123456789";

fn creds(role: &str, value: &str) -> Credentials {
    let mut m = BTreeMap::new();
    m.insert(role.to_string(), SecretString::from(value.to_string()));
    Credentials(m)
}

fn sel() -> SecretKeySelector {
    SecretKeySelector {
        name: "s".into(),
        key: "k".into(),
        namespace: None,
    }
}

fn openrouter_spec(base_url: Option<String>) -> KeyProviderSpec {
    KeyProviderSpec {
        openrouter: Some(OpenRouterProvider {
            base_url,
            management_key_secret_ref: sel(),
            workspace_id: None,
        }),
        ..Default::default()
    }
}

fn ucloud_spec(base_url: Option<String>) -> KeyProviderSpec {
    KeyProviderSpec {
        ucloud: Some(UCloudProvider {
            base_url,
            public_key: UC_PUBLIC.into(),
            private_key_secret_ref: sel(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn openrouter_emulator() -> RunningEmulator {
    let (router, faults) = openrouter::build(&openrouter::Args::with_management_keys(&[MGMT]));
    emulators::spawn(router, faults).await.unwrap()
}

async fn ucloud_emulator() -> RunningEmulator {
    let (router, faults) = ucloud::build(&ucloud::Args {
        public_key: UC_PUBLIC.into(),
        private_key: UC_PRIVATE.into(),
        ..Default::default()
    });
    emulators::spawn(router, faults).await.unwrap()
}

/// Checks the offset a client reports: none before an answer, then the emulator's clock (this
/// machine's) within a second or two of ours.
async fn offset_follows_the_date_header(backend: &dyn KeyBackend) {
    assert_eq!(backend.clock_offset(), None, "no answer yet");
    backend
        .verify()
        .await
        .expect("the emulator accepts the credentials");
    let off = backend
        .clock_offset()
        .expect("the answer's Date header gives the provider's clock");
    assert!(off.num_seconds().abs() <= 2, "same machine, offset {off}");
}

#[tokio::test]
async fn openrouter_and_ucloud_report_the_providers_clock_offset() {
    let or = openrouter_emulator().await;
    let spec = openrouter_spec(Some(format!("{}/api/v1", or.url())));
    let backend = build_backend(&spec, creds("token", MGMT), ClientOptions::default()).unwrap();
    offset_follows_the_date_header(&*backend).await;

    let uc = ucloud_emulator().await;
    let spec = ucloud_spec(Some(uc.url()));
    let backend = build_backend(
        &spec,
        creds("privateKey", UC_PRIVATE),
        ClientOptions::default(),
    )
    .unwrap();
    offset_follows_the_date_header(&*backend).await;
}

#[test]
fn every_client_reads_its_clock_through_the_shared_http_layer() {
    use keysmith::api::ProviderType;
    for t in ProviderType::ALL {
        let block = match t {
            ProviderType::OpenRouter => "{managementKeySecretRef: {name: x, key: x}}",
            ProviderType::Boltz => "{apiKeySecretRef: {name: x, key: x}}",
            ProviderType::UCloud => "{publicKey: x, privateKeySecretRef: {name: x, key: x}}",
            ProviderType::DigitalOcean => "{tokenSecretRef: {name: x, key: x}}",
            ProviderType::Bifrost => "{baseURL: 'http://bifrost:8080'}",
        };
        let spec: KeyProviderSpec = serde_yaml::from_str(&format!("{t}: {block}")).unwrap();
        let mut c = Credentials::default();
        for r in spec.provider().unwrap().credential_refs() {
            c.0.insert(r.role.to_string(), SecretString::from("placeholder"));
        }
        let backend = build_backend(&spec, c, ClientOptions::default()).unwrap();
        // `KeyBackend::clock_offset` is the HTTP layer's (tested in http.rs) for every client.
        let http = backend
            .http()
            .unwrap_or_else(|| panic!("{t}: no HTTP layer"));
        assert_eq!(http.base_url(), spec.provider().unwrap().base_url(), "{t}");
        assert_eq!(backend.clock_offset(), None, "{t}: no answer yet");
    }
}

#[test]
fn the_client_talks_to_the_url_the_provider_object_decides() {
    // No baseURL: the provider's default, as the CRD type names it.
    let backend = build_backend(
        &openrouter_spec(None),
        creds("token", MGMT),
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(
        backend.http().map(|h| h.base_url()),
        Some(OpenRouterProvider::DEFAULT_BASE_URL)
    );
    let spec = ucloud_spec(None);
    assert_eq!(
        spec.provider().map(|p| p.base_url()),
        Some(UCloudProvider::DEFAULT_BASE_URL)
    );
    let backend = build_backend(
        &spec,
        creds("privateKey", UC_PRIVATE),
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(
        backend.http().map(|h| h.base_url()),
        Some(UCloudProvider::DEFAULT_BASE_URL)
    );
    // A baseURL wins (the trailing slash is the HTTP layer's to drop).
    let spec = openrouter_spec(Some("http://proxy.example:8080/v1/".into()));
    assert_eq!(
        spec.provider().map(|p| p.base_url()),
        Some("http://proxy.example:8080/v1/")
    );
    let backend = build_backend(&spec, creds("token", MGMT), ClientOptions::default()).unwrap();
    assert_eq!(
        backend.http().map(|h| h.base_url()),
        Some("http://proxy.example:8080/v1")
    );
}
