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

fn run_spec(spec: &str, provider: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let file = std::env::temp_dir().join(format!(
        "keysmith-render-rotation-{}-{n}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, spec).unwrap();
    let out = render(&RenderArgs {
        file: file.clone(),
        provider: Some(ex(provider)),
        provider_type: None,
    });
    let _ = std::fs::remove_file(&file);
    out.unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn the_rotation_plan_is_shown() {
    let out = run_spec(
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: chat, namespace: team-a}\nspec:\n  providerRef: {name: openrouter}\n  rotation: {every: 720h, renewBefore: 72h, gracePeriod: 30m}\n  rolloutRestartTargets: [{kind: Deployment, name: chat}, {kind: StatefulSet, name: worker}]\n",
        "openrouter/provider.yaml",
    );
    for want in [
        "# rotation:",
        "strategy: mint a new key, then revoke the old one",
        "every 720h after creation, or 72h before expiry",
        "kubectl annotate apikey chat keysmith.dev/rotate=$(date +%s) --overwrite",
        "grace: the old key stays live for 30m once the restarted workloads have rolled out (at most 10m after the restart)",
        "restart after each new value: Deployment/chat, StatefulSet/worker",
    ] {
        assert!(out.contains(want), "expected {want:?} in\n{out}");
    }
}

#[test]
fn a_digitalocean_rotation_needs_allow_downtime() {
    let model = |rotation: &str| {
        format!("apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {{name: m, namespace: team-a}}\nspec:\n  providerRef: {{name: digitalocean}}\n  keyRef: {{id: 6c1f2b0e-0000-4000-8000-000000000001}}\n  rotation: {rotation}\n")
    };
    let out = run_spec(&model("{every: 720h}"), "digitalocean/01-keyprovider.yaml");
    assert!(
        out.contains("Ready=False reason=UnsupportedField") && out.contains("allowDowntime: true"),
        "{out}"
    );
    let out = run_spec(
        &model("{every: 720h, allowDowntime: true}"),
        "digitalocean/01-keyprovider.yaml",
    );
    assert!(out.contains("strategy: regenerate in place"), "{out}");
    assert!(out.contains("grace: none"), "{out}");
}

#[test]
fn render_creates_under_the_provisional_name_as_the_controller_does() {
    let out = run_spec(
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: chat, namespace: team-a}\nspec:\n  providerRef: {name: openrouter}\n  displayName: team-a-chat\n",
        "openrouter/provider.yaml",
    );
    assert!(
        out.contains("create key \"keysmith-attempt-<attempt id>\""),
        "{out}"
    );
    assert!(
        out.contains("name it \"team-a-chat\""),
        "expected the rename to the display name in\n{out}"
    );
    // Boltz keys keep their name from the start: created under the display name.
    let out = run_spec(
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: chat, namespace: team-a}\nspec:\n  providerRef: {name: boltz}\n  displayName: team-a-chat\n",
        "boltz/keyprovider.yaml",
    );
    assert!(out.contains("create key \"team-a-chat\""), "{out}");
    assert!(!out.contains("keysmith-attempt-"), "{out}");
}

#[test]
fn render_refuses_a_provisional_display_name_as_the_controller_does() {
    let out = run_spec(
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: chat, namespace: team-a}\nspec:\n  providerRef: {name: openrouter}\n  displayName: keysmith-attempt-0123456789abcdef\n",
        "openrouter/provider.yaml",
    );
    assert!(
        out.contains("Ready=False reason=InvalidSpec") && out.contains("keysmith-attempt-"),
        "{out}"
    );
    assert!(out.contains("no provider call would be made"), "{out}");
    assert!(!out.contains("create key"), "{out}");
}

#[test]
fn render_reports_a_malformed_ttl_as_the_controller_does() {
    let out = run_spec(
        "apiVersion: keysmith.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: chat, namespace: team-a}\nspec:\n  providerRef: {name: openrouter}\n  ttl: soon\n",
        "openrouter/provider.yaml",
    );
    assert!(
        out.contains("Ready=False reason=InvalidSpec: spec.ttl"),
        "{out}"
    );
}
