//! `kubectl-keysmith` (src/plugin/, docs/kubectl-plugin.md) against the real API server of the
//! local control plane (`keysmith_testkit::control_plane`, with kube-controller-manager: Deployments
//! get ReplicaSets and Pending pods).
//!
//! - `status_tree_and_read_commands`: ApiKeys, provider and Secret written by the test as an admin
//!   (status included; no operator needed), workloads of every kind; checks the text of `status`,
//!   `who-uses`, `expiring`, `top`, JSON/YAML output, exit codes, not-found and forbidden errors,
//!   and `rotate` setting the annotation. The Secret's value never appears in any output.
//! - `revoke_now_and_rotate_wait_with_the_operator`: the operator binary and the OpenRouter
//!   emulator (`keysmith_testkit::cluster`): `revoke-now` rotates with zero grace, the restart target
//!   rolls out, the old key is revoked at the emulator, the grace period is restored; then
//!   `rotate --wait --grace 2s` follows a rotation to the end.

use keysmith_testkit::cluster;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use keysmith::api::{ApiKey, ClusterKeyProvider};
use keysmith_testkit::control_plane;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-keysmith");

/// The two tests run one after the other: the operator of the second reconciles every
/// ClusterKeyProvider, including the first's, whose status that test writes by hand.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SECRET_VALUE: &str = "sk-or-v1-PLUGIN-TEST-VALUE-never-printed";

fn run(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let out: Output = std::process::Command::new(BIN)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("NO_COLOR")
        .output()
        .expect("run kubectl-keysmith");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!(
        "$ kubectl keysmith {}\n{stdout}{stderr}[exit {}]\n",
        args.join(" "),
        out.status.code().unwrap_or(-1)
    );
    for s in [&stdout, &stderr] {
        assert!(!s.contains(SECRET_VALUE), "the Secret's value was printed");
        assert!(!s.contains("\x1b["), "colour on a pipe");
    }
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn ts(offset: chrono::Duration) -> String {
    (chrono::Utc::now() + offset)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn create<K>(client: &Client, ns: Option<&str>, v: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns.unwrap_or("default"));
    let obj: K = serde_json::from_value(v).expect("manifest");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"))
}

fn pod_spec(env: Value, volumes: Value) -> Value {
    json!({
        "containers": [{"name": "app", "image": "registry.example/app:1", "env": env}],
        "volumes": volumes,
    })
}

fn deployment(name: &str, replicas: i32, spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    })
}

fn ready(status: &str, reason: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "lastTransitionTime": ts(chrono::Duration::minutes(-5)), "observedGeneration": 1})
}

async fn apikey_with_status(client: &Client, ns: &str, name: &str, spec: Value, status: Value) {
    let api: Api<ApiKey> = Api::namespaced(client.clone(), ns);
    let ak: ApiKey = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &ak).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap_or_else(|e| panic!("status of {name}: {e}"));
}

#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test]
async fn status_tree_and_read_commands() {
    cluster::require("plugin status");
    let _serial = SERIAL.lock().await;
    let kc = cluster::kubeconfig();
    let client = control_plane::client_from(&kc).await;
    cluster::install_crds(&client).await;
    let id = keysmith::emulators::random_hex(6);
    let ns = format!("ks-plugin-{id}");
    let nsapi: Api<Namespace> = Api::all(client.clone());
    nsapi
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let ckp_name = format!("ks-plugin-{id}");
    let ckps: Api<ClusterKeyProvider> = Api::all(client.clone());
    let ckp: ClusterKeyProvider = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "ClusterKeyProvider",
        "metadata": {"name": ckp_name},
        "spec": {"openrouter": {"managementKeySecretRef": {"name": "mgmt", "key": "key", "namespace": "default"}}},
    }))
    .unwrap();
    ckps.create(&PostParams::default(), &ckp).await.unwrap();
    ckps.patch_status(
        &ckp_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"providerType": "openrouter",
            "conditions": [ready("True", "CredentialsVerified", "the provider accepted the credentials")]}})),
    )
    .await
    .unwrap();

    // The Secret of `chat` (its data is never read by the plugin) and of `healthy`.
    for (name, id) in [("chat-key", "k-123"), ("healthy", "k-777")] {
        let _: Secret = create(
            &client,
            Some(&ns),
            json!({"metadata": {"name": name, "annotations": {
                "keysmith.dev/key-id": id, "keysmith.dev/apikey": format!("{ns}/{name}")}},
                "stringData": {"api-key": SECRET_VALUE}}),
        )
        .await;
    }
    // Workloads: every way of using a Secret, and every kind.
    let env_ref = json!([{"name": "OPENROUTER_API_KEY", "valueFrom": {"secretKeyRef": {"name": "chat-key", "key": "api-key"}}}]);
    let vol = json!([{"name": "key", "secret": {"secretName": "chat-key"}}]);
    let _: Deployment = create(
        &client,
        Some(&ns),
        deployment("api", 2, pod_spec(env_ref, json!([]))),
    )
    .await;
    let _: Deployment = create(
        &client,
        Some(&ns),
        deployment("idle", 0, pod_spec(json!([]), vol)),
    )
    .await;
    let _: Deployment = create(
        &client,
        Some(&ns),
        deployment("unrelated", 1, pod_spec(json!([]), json!([]))),
    )
    .await;
    let mut reloaded = deployment(
        "reloaded",
        0,
        pod_spec(
            json!([]),
            json!([{"name": "key", "secret": {"secretName": "chat-key"}}]),
        ),
    );
    reloaded["metadata"]["annotations"] =
        json!({"secret.reloader.stakater.com/reload": "other, chat-key"});
    let _: Deployment = create(&client, Some(&ns), reloaded).await;
    let _: CronJob = create(
        &client,
        Some(&ns),
        json!({"metadata": {"name": "nightly"}, "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "job", "image": "registry.example/job:1", "envFrom": [{"secretRef": {"name": "chat-key"}}]}]}}}}}}),
    )
    .await;
    let _: Pod = create(
        &client,
        Some(&ns),
        json!({"metadata": {"name": "debug"}, "spec": {
            "containers": [{"name": "sh", "image": "registry.example/sh:1"}],
            "volumes": [{"name": "k", "projected": {"sources": [{"secret": {"name": "chat-key"}}]}}]}}),
    )
    .await;

    apikey_with_status(
        &client,
        &ns,
        "chat",
        json!({"providerRef": {"kind": "ClusterKeyProvider", "name": ckp_name},
               "secret": {"name": "chat-key"},
               "limit": {"amount": "75", "reset": "monthly"},
               "rotation": {"gracePeriod": "30m"},
               "rolloutRestartTargets": [{"kind": "Deployment", "name": "api"}, {"kind": "Deployment", "name": "unrelated"}]}),
        json!({"keyID": "k-123", "keyHint": "sk-or-v1-3f9…a1c", "secretName": "chat-key",
               "createdAt": ts(chrono::Duration::days(-20)), "expiresAt": ts(chrono::Duration::days(3)),
               "lastUsedAt": ts(chrono::Duration::hours(-2)),
               "usage": {"total": "12.5", "monthly": "4.25", "unit": "USD"},
               "previousKeys": [{"keyID": "k-old", "deleteAfter": ts(chrono::Duration::hours(1))}],
               "conditions": [ready("True", "KeyActive", "the key is live")], "observedGeneration": 1}),
    )
    .await;
    apikey_with_status(
        &client,
        &ns,
        "healthy",
        json!({"providerRef": {"kind": "ClusterKeyProvider", "name": ckp_name}}),
        json!({"keyID": "k-777", "keyHint": "sk-or-v1-777…", "secretName": "healthy",
               "expiresAt": ts(chrono::Duration::days(30)), "usage": {"total": "3", "unit": "USD"},
               "conditions": [ready("True", "KeyActive", "the key is live")], "observedGeneration": 1}),
    )
    .await;
    apikey_with_status(
        &client,
        &ns,
        "broken",
        json!({"providerRef": {"kind": "ClusterKeyProvider", "name": "nope"}}),
        // A terminal escape in a message (a provider's text can carry anything): never printed raw.
        json!({"conditions": [ready("False", "ProviderRefNotFound", "ClusterKeyProvider nope does not exist\u{1b}[2J")]}),
    )
    .await;

    // The Deployment controller creates the pods (Pending: no node).
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut tries = 0;
    loop {
        let api = deps.get("api").await.unwrap();
        let unrelated = deps.get("unrelated").await.unwrap();
        let replicas = |d: &Deployment| d.status.as_ref().and_then(|s| s.replicas);
        let api_pods = pods
            .list(&kube::api::ListParams::default().labels("app=api"))
            .await
            .unwrap()
            .items
            .len();
        if replicas(&api) == Some(2) && replicas(&unrelated) == Some(1) && api_pods == 2 {
            break;
        }
        tries += 1;
        assert!(tries < 120, "the Deployment controller created no pods");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // status: the tree of `chat`.
    let (code, out, _) = run(&kc, &["status", "chat", "-n", &ns]);
    assert_eq!(code, 1, "problems found: exit 1");
    assert!(out.contains(&format!("ApiKey {ns}/chat")), "{out}");
    assert!(out.contains(&format!("├─ provider  ClusterKeyProvider/{ckp_name} [openrouter]  Ready (CredentialsVerified), credentials verified 20")), "{out}");
    assert!(
        out.contains("├─ secret    chat-key  key id k-123, written 20"),
        "{out}"
    );
    assert!(
        out.contains(
            "Deployment/api  0/2 ready, 2 pods  (env OPENROUTER_API_KEY)  [restart target]"
        ),
        "{out}"
    );
    assert!(
        out.contains("Deployment/idle  0/0 ready, 0 pods  (volume key)  ! not a restart target"),
        "scaled to 0 still uses it: {out}"
    );
    assert!(
        out.contains(
            "Deployment/reloaded  0/0 ready, 0 pods  (volume key)  [restarted by Reloader]"
        ) && out
            .contains("i Deployment/reloaded uses Secret chat-key and is restarted by Reloader"),
        "a Reloader-managed user is not a problem: {out}"
    );
    assert!(
        out.contains(
            "Deployment/unrelated  0/1 ready, 1 pod  [restart target]  ✗ does not use Secret chat-key"
        ),
        "{out}"
    );
    assert!(
        out.contains("CronJob/nightly  0/0 ready, 0 pods  (envFrom)"),
        "{out}"
    );
    assert!(
        out.contains("Pod/debug  0/1 ready, 1 pod  (volume k (projected))"),
        "bare pod: {out}"
    );
    assert!(
        out.contains("├─ key       k-123 live  hint sk-or-v1-3f9…a1c"),
        "{out}"
    );
    assert!(out.contains("limit 75 (reset monthly)"), "{out}");
    assert!(out.contains("usage total 12.5, monthly 4.25 USD"), "{out}");
    assert!(out.contains("└─ previous key k-old live until 20"), "{out}");
    assert!(
        out.contains("✗ restart target Deployment/unrelated does not use Secret chat-key"),
        "{out}"
    );
    assert!(
        out.contains(
            "✗ Deployment/idle uses Secret chat-key but is not in spec.rolloutRestartTargets"
        ),
        "{out}"
    );
    assert!(
        !out.contains("Deployment/api uses"),
        "a restart target that uses it is fine: {out}"
    );
    assert!(out.contains("✗ 2 problem(s)"), "{out}");

    // A healthy key: exit 0.
    let (code, out, _) = run(&kc, &["status", "healthy", "-n", &ns]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("✓ OK")
            && out.contains("└─ conditions  all True")
            && out.contains("(no workload uses it)"),
        "{out}"
    );

    // A broken one: the non-True condition, its reason and what to do.
    let (code, out, _) = run(&kc, &["status", "broken", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(
        out.contains("├─ provider  ClusterKeyProvider/nope  ✗ not found"),
        "{out}"
    );
    assert!(
        out.contains("├─ secret    broken  ✗ does not exist"),
        "{out}"
    );
    assert!(
        out.contains("✗ Ready=False ProviderRefNotFound (since 20"),
        "{out}"
    );
    assert!(
        out.contains("nope does not exist?[2J"),
        "control characters replaced: {out}"
    );
    assert!(
        out.contains("→ create the provider object, or fix spec.providerRef"),
        "{out}"
    );
    assert!(out.contains("not live"), "{out}");

    // JSON and YAML: every ApiKey of the namespace.
    let (code, out, _) = run(&kc, &["status", "-n", &ns, "-o", "json"]);
    assert_eq!(code, 1);
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "chat", "healthy"]);
    let chat = &doc[1];
    assert_eq!(chat["secret"]["keyId"], "k-123");
    assert_eq!(chat["key"]["previousKeys"][0]["keyId"], "k-old");
    let idle = chat["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "idle")
        .unwrap();
    assert_eq!(
        (idle["desired"].as_i64(), idle["restartTarget"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(doc[0]["conditions"][0]["reason"], "ProviderRefNotFound");
    assert!(doc[2]["problems"].as_array().unwrap().is_empty());
    let (_, out, _) = run(&kc, &["status", "healthy", "-n", &ns, "-o", "yaml"]);
    let y: Value = serde_yaml::from_str(&out).expect("YAML");
    assert_eq!(y[0]["key"]["keyId"], "k-777");

    // Not found, and forbidden (an impersonated user without RBAC).
    let (code, _, err) = run(&kc, &["status", "missing", "-n", &ns]);
    assert_eq!(code, 3);
    assert!(
        err.contains(&format!("not found: apikey \"missing\" in namespace {ns}")),
        "{err}"
    );
    let mut kcv: Value = serde_yaml::from_str(&std::fs::read_to_string(&kc).unwrap()).unwrap();
    kcv["users"][0]["user"]["as"] = json!("plugin-nobody");
    let nobody = std::env::temp_dir().join(format!("ks-plugin-{id}-nobody.kubeconfig"));
    std::fs::write(&nobody, serde_yaml::to_string(&kcv).unwrap()).unwrap();
    let (code, _, err) = run(&nobody, &["status", "-n", &ns]);
    assert_eq!(code, 3);
    assert!(
        err.contains(&format!(
            "forbidden: you may not list apikeys.keysmith.dev in namespace {ns}"
        )),
        "{err}"
    );

    // who-uses, by ApiKey and by Secret.
    for target in ["chat", "secret/chat-key"] {
        let (code, out, _) = run(&kc, &["who-uses", target, "-n", &ns]);
        assert_eq!(code, 0);
        assert!(
            out.contains(&format!("Secret {ns}/chat-key (written by ApiKey chat)")),
            "{out}"
        );
        for w in [
            "Deployment   api",
            "Deployment   idle",
            "CronJob      nightly",
            "Pod          debug",
        ] {
            assert!(out.contains(w), "{w}: {out}");
        }
        assert!(!out.contains("unrelated"), "{out}");
    }

    // expiring: chat (3 days) within 7d, healthy (30 days) only within 60d.
    let (code, out, _) = run(&kc, &["expiring", "-n", &ns]);
    assert_eq!(code, 0);
    assert!(
        out.contains("chat") && out.contains("2d23h") && !out.contains("healthy"),
        "{out}"
    );
    assert!(out.contains("no (set spec.rotation.renewBefore)"), "{out}");
    let (_, out, _) = run(
        &kc,
        &["expiring", "-n", &ns, "--within", "60d", "-o", "json"],
    );
    let rows: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat", "healthy"]);

    // top: spend from status.usage.
    let (_, out, _) = run(&kc, &["top", "-n", &ns]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("APIKEY")
            && lines[1].contains(&format!("{ns}/chat"))
            && lines[1].contains("12.50"),
        "{out}"
    );
    let (_, out, _) = run(&kc, &["top", "-n", &ns, "--by", "namespace"]);
    assert!(
        out.contains(&ns) && out.contains("15.50   USD    3"),
        "{out}"
    );
    let (_, out, _) = run(&kc, &["top", "-n", &ns, "--by", "provider"]);
    assert!(
        out.contains(&format!("ClusterKeyProvider/{ckp_name}   15.50")),
        "{out}"
    );

    // Across namespaces, by provider object.
    let (_, out, _) = run(
        &kc,
        &["status", "-A", "--provider", &ckp_name, "-o", "json"],
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat", "healthy"]);

    // rotate by label selector: only the labelled ApiKey gets the annotation.
    let aks: Api<ApiKey> = Api::namespaced(client.clone(), &ns);
    aks.patch(
        "broken",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"team": "pay"}}})),
    )
    .await
    .unwrap();
    let (code, out, _) = run(&kc, &["rotate", "-n", &ns, "-l", "team=pay"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "apikey {ns}/broken annotated keysmith.dev/rotate="
        )) && !out.contains("chat"),
        "{out}"
    );
    let rotated = |ak: &ApiKey| ak.annotations().contains_key("keysmith.dev/rotate");
    assert!(rotated(&aks.get("broken").await.unwrap()));
    assert!(!rotated(&aks.get("chat").await.unwrap()));

    // rotate: refuses without a selection; sets the annotation (and --grace the grace period).
    let (code, _, err) = run(&kc, &["rotate", "-n", &ns]);
    assert_eq!(code, 2);
    assert!(err.contains("say which keys"), "{err}");
    let (code, out, _) = run(&kc, &["rotate", "healthy", "-n", &ns, "--grace", "5m"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "apikey {ns}/healthy annotated keysmith.dev/rotate=kubectl-keysmith-"
        )) && out.contains("spec.rotation.gracePeriod=5m"),
        "{out}"
    );
    let ak = Api::<ApiKey>::namespaced(client.clone(), &ns)
        .get("healthy")
        .await
        .unwrap();
    let value = ak.metadata.annotations.unwrap()["keysmith.dev/rotate"].clone();
    assert!(out.contains(&value));
    assert_eq!(
        ak.spec.rotation.unwrap().grace_period.as_deref(),
        Some("5m")
    );
    let (code, _, err) = run(&kc, &["rotate", "healthy", "-n", &ns, "--grace", "soon"]);
    assert_eq!(code, 2, "the API server refuses a bad duration: {err}");

    // revoke-now without an operator: nothing happens, it times out (exit 1), says so, and
    // leaves the grace period at 0s (restoring it would give the leaked key its old grace).
    let (code, out, _) = run(&kc, &["revoke-now", "chat", "-n", &ns, "--timeout", "2s"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "apikey {ns}/chat: key k-123 — rotating with gracePeriod 0s (was 30m)"
        )),
        "{out}"
    );
    assert!(
        out.contains("old key k-123 NOT revoked (still at \"requested\")"),
        "{out}"
    );
    assert!(
        out.contains("spec.rotation.gracePeriod left at 0s (the rotation is not through)"),
        "{out}"
    );
    let chat = aks.get("chat").await.unwrap();
    assert_eq!(
        chat.spec.rotation.unwrap().grace_period.as_deref(),
        Some("0s")
    );

    // Cleanup (namespace deletion removes the rest).
    let _ = nsapi.delete(&ns, &DeleteParams::default()).await;
    let _ = ckps.delete(&ckp_name, &DeleteParams::default()).await;
    let _ = std::fs::remove_file(&nobody);
}

#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test]
async fn revoke_now_and_rotate_wait_with_the_operator() {
    cluster::require("plugin revoke-now");
    let _serial = SERIAL.lock().await;
    let kc = cluster::kubeconfig();
    let c = cluster::Cluster::start(
        "plugin",
        cluster::EmulatorOptions::default(),
        cluster::ProviderOptions::default(),
    )
    .await;
    let _op = c.start_operator("plugin", &[]).await;
    // A restart target scaled to 0: it rolls out without a kubelet.
    let deps: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    let env_ref = json!([{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "leaky", "key": "api-key"}}}]);
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("web", 0, pod_spec(env_ref, json!([])))).unwrap(),
    )
    .await
    .unwrap();
    c.create_apikey(
        "leaky",
        json!({"rotation": {"gracePeriod": "1h"},
               "rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}]}),
    )
    .await;
    let ak = c.wait_ready("leaky", Duration::from_secs(120)).await;
    let st = ak.status.unwrap();
    let old = st.key_id.clone().unwrap();
    let old_value = c.secret_value("leaky", "api-key").await.unwrap();
    assert!(c.key_works(&old_value).await);

    let (code, out, _) = run(&kc, &["status", "leaky", "-n", &c.ns]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Deployment/web  0/0 ready, 0 pods  (env KEY)  [restart target]"),
        "{out}"
    );

    // The leak runbook, found by the key's hint.
    let hint = st.key_hint.clone().expect("a key hint");
    let (code, out, _) = run(
        &kc,
        &[
            "revoke-now",
            "--key-hint",
            &hint,
            "-n",
            &c.ns,
            "--timeout",
            "3m",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "apikey {}/leaky: key {old} — rotating with gracePeriod 0s (was 1h)",
            c.ns
        )),
        "{out}"
    );
    for stage in [
        "new key written (+",
        "restarts rolled out (+",
        "old key revoked (+",
    ] {
        assert!(out.contains(stage), "{stage}: {out}");
    }
    assert!(out.contains(&format!("old key {old} revoked")), "{out}");
    assert!(
        out.contains("restarted: Deployment/web")
            && out.contains("spec.rotation.gracePeriod restored to 1h"),
        "{out}"
    );
    assert!(
        !c.key_works(&old_value).await,
        "the leaked value is revoked at the provider"
    );
    let ak = c.apikeys().get("leaky").await.unwrap();
    assert_eq!(
        ak.spec.rotation.as_ref().unwrap().grace_period.as_deref(),
        Some("1h")
    );
    let st = ak.status.unwrap();
    assert_ne!(st.key_id.as_deref(), Some(old.as_str()));
    assert!(st.previous_keys.is_empty());
    let web = deps.get("web").await.unwrap();
    assert!(web
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()
        .contains_key("keysmith.dev/restartedAt"));

    // rotate --wait with a short grace: followed to the revocation.
    let second = st.key_id.clone().unwrap();
    let (code, out, _) = run(
        &kc,
        &[
            "rotate",
            "leaky",
            "-n",
            &c.ns,
            "--grace",
            "2s",
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("old key revoked (+"), "{out}");
    let ak = c.apikeys().get("leaky").await.unwrap();
    let st = ak.status.unwrap();
    assert_ne!(st.key_id.as_deref(), Some(second.as_str()));
    assert!(st.previous_keys.is_empty());
    assert_eq!(
        ak.spec.rotation.unwrap().grace_period.as_deref(),
        Some("2s")
    );

    // A grace period that ends after --timeout: --wait stops after the rollout and says until
    // when the old key stays live.
    let third = st.key_id.clone().unwrap();
    let (code, out, _) = run(
        &kc,
        &[
            "rotate",
            "leaky",
            "-n",
            &c.ns,
            "--grace",
            "1h",
            "--wait",
            "--timeout",
            "2m",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restarts rolled out (+"), "{out}");
    assert!(
        out.contains(&format!("old key {third} stays live until "))
            && out.contains("(its grace period); not waiting for that"),
        "{out}"
    );
    assert!(!out.contains("old key revoked"), "{out}");
    let ak = c.apikeys().get("leaky").await.unwrap();
    assert!(ak
        .status
        .unwrap()
        .previous_keys
        .iter()
        .any(|k| k.key_id == third));

    // A name that does not exist.
    let (code, _, err) = run(&kc, &["revoke-now", "nope", "-n", &c.ns]);
    assert_eq!(code, 3);
    assert!(err.contains("not found: apikey \"nope\""), "{err}");
}
