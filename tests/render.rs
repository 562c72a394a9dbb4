//! `keysmith render` on every example: each one must validate against its provider and render
//! a Secret whose values are redacted.

use std::path::PathBuf;

use keysmith::render::{render, RenderArgs};

fn ex(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(p)
}

fn run(apikey: &str, provider: &str) -> String {
    render(&RenderArgs {
        file: ex(apikey),
        provider: Some(ex(provider)),
        provider_type: None,
    })
    .unwrap_or_else(|e| panic!("{apikey}: {e:#}"))
}

#[test]
fn every_example_apikey_renders_without_validation_errors() {
    let cases = [
        (
            "openrouter/apikey.yaml",
            "openrouter/provider.yaml",
            "create key",
        ),
        ("boltz/apikey.yaml", "boltz/keyprovider.yaml", "create key"),
        (
            "boltz/apikey-test-mode.yaml",
            "boltz/keyprovider.yaml",
            "create key",
        ),
        ("ucloud/apikey.yaml", "ucloud/provider.yaml", "create key"),
        (
            "digitalocean/02-apikey-model-adopted.yaml",
            "digitalocean/01-keyprovider.yaml",
            "regenerate it",
        ),
        (
            "digitalocean/03-apikey-agent.yaml",
            "digitalocean/01-keyprovider.yaml",
            "create key",
        ),
        (
            "bifrost/02-virtual-key.yaml",
            "bifrost/01-keyprovider.yaml",
            "create key",
        ),
        (
            "bifrost/04-provider-key.yaml",
            "bifrost/01-keyprovider.yaml",
            "push the value of Secret",
        ),
    ];
    for (apikey, provider, call) in cases {
        let out = run(apikey, provider);
        assert!(
            !out.contains("Ready=False"),
            "{apikey} does not validate:\n{out}"
        );
        assert!(out.contains(call), "{apikey}: expected {call:?} in\n{out}");
        assert!(out.contains("one paged listing"), "{apikey}:\n{out}");
        if !out.contains("push the value") {
            assert!(
                out.contains("api-key: <redacted>") || out.contains(": <redacted>"),
                "{apikey}:\n{out}"
            );
            assert!(out.contains("app.kubernetes.io/managed-by: keysmith"));
        }
    }
}

#[test]
fn an_unsupported_field_is_reported_and_no_call_planned() {
    let out = render(&RenderArgs {
        file: ex("boltz/apikey.yaml"),
        provider: None,
        provider_type: Some(keysmith::api::ProviderType::OpenRouter),
    })
    .unwrap();
    assert!(out.contains("Ready=False reason=UnsupportedField"), "{out}");
    assert!(out.contains("no provider call would be made"));
}

#[test]
fn a_model_key_without_key_ref_is_explained() {
    let dir = std::env::temp_dir().join(format!("keysmith-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("ak.yaml");
    std::fs::write(
        &f,
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: m, namespace: a}\nspec:\n  providerRef: {name: do}\n",
    )
    .unwrap();
    let out = render(&RenderArgs {
        file: f,
        provider: None,
        provider_type: Some(keysmith::api::ProviderType::DigitalOcean),
    })
    .unwrap();
    assert!(
        out.contains("Ready=False reason=InvalidSpec") && out.contains("410"),
        "{out}"
    );
}
