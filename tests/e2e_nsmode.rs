//! Namespace mode end to end (issue 17 item 3): the chart installed with
//! `watchNamespaces: [<ns>]` and `clusterProviders.enabled: true`, the `keysmith` binary
//! running with **that ServiceAccount's token** (so a request the chart does not grant is
//! refused, as in a real install), an ApiKey on a ClusterKeyProvider: created, Ready, deleted
//! (its deletion finishes and the key is revoked), and `kubectl delete namespace` of a
//! namespace holding a Ready ApiKey finishes. Before the fix the deletion never finished:
//! `cannot list resource "apikeys" … at the cluster scope` every 5 s.
//!
//! Needs the local control plane (see docs/e2e.md) and helm (scripts/install-tools.sh).

use keysmith_testkit::cluster;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use cluster::{Cluster, EmulatorOptions, ProviderOptions};
use keysmith::api::ClusterKeyProvider;

const MINUTE: Duration = Duration::from_secs(60);

fn helm_binary() -> Option<std::path::PathBuf> {
    if let Ok(h) = std::env::var("HELM") {
        return Some(h.into());
    }
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/helm");
    if local.exists() {
        return Some(local);
    }
    std::process::Command::new("helm")
        .arg("version")
        .output()
        .ok()
        .map(|_| "helm".into())
}

struct HelmRelease {
    helm: std::path::PathBuf,
    name: String,
    namespace: String,
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.helm)
            .env("KUBECONFIG", cluster::kubeconfig())
            .args([
                "uninstall",
                &self.name,
                "--namespace",
                &self.namespace,
                "--wait",
            ])
            .status();
    }
}

#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_mode_with_cluster_providers_finishes_every_deletion() {
    cluster::require("namespace_mode_with_cluster_providers_finishes_every_deletion");
    let Some(helm) = helm_binary() else {
        keysmith_testkit::skip::missing(
            "helm",
            "the e2e namespace mode",
            "run scripts/install-tools.sh or set HELM",
        );
    };
    let cluster = Cluster::start(
        "nsmode",
        EmulatorOptions::default(),
        ProviderOptions::default(),
    )
    .await;
    let c = &cluster;
    let release = format!("keysmith-e2e-{}", c.run);
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/keysmith");
    let watch = format!("watchNamespaces={{{}}}", c.ns);
    let out = std::process::Command::new(&helm)
        .env("KUBECONFIG", cluster::kubeconfig())
        .args(["install", &release])
        .arg(&chart)
        .args(["--namespace", &c.operator_ns, "--skip-crds", "--wait"])
        .args(["--timeout", "2m"])
        .args([
            "--set",
            "replicas=0",
            "--set",
            "leaderElection.enabled=true",
        ])
        .args(["--set", &watch, "--set", "clusterProviders.enabled=true"])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm install failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _release = HelmRelease {
        helm: helm.clone(),
        name: release.clone(),
        namespace: c.operator_ns.clone(),
    };
    // fullname == release name (it contains "keysmith").
    let kubeconfig = c.service_account_kubeconfig(&c.operator_ns, &release).await;
    let lease = format!("{release}-leader");
    let op = c
        .start_operator_env(
            "nsmode",
            &[
                "--leader-elect",
                "--lease-name",
                &lease,
                "--watch-namespaces",
                &c.ns,
                // What the chart passes in namespace mode: the finalizer on this RoleBinding
                // keeps keysmith's access while the namespace is deleted.
                "--namespace-rolebinding",
                &release,
            ],
            &[("KUBECONFIG", &kubeconfig)],
        )
        .await;

    // Create → Ready → delete: the deletion finishes and the key is revoked.
    c.create_apikey("one", json!({})).await;
    let ak = c.wait_ready("one", MINUTE).await;
    let id = ak.status.and_then(|s| s.key_id).expect("keyID");
    let ckps: Api<ClusterKeyProvider> = Api::all(c.client.clone());
    let in_use = |p: &ClusterKeyProvider| {
        p.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == "keysmith.dev/in-use"))
    };
    assert!(in_use(&ckps.get(&c.provider).await.unwrap()));
    c.apikeys()
        .delete("one", &DeleteParams::default())
        .await
        .expect("delete accepted");
    c.wait_gone("one", MINUTE).await;
    let live = c.live_keys_named("one").await;
    assert!(live.is_empty(), "key {id} revoked: {live:?}");
    c.eventually(
        "the ClusterKeyProvider's in-use finalizer released",
        MINUTE,
        || async {
            let p = ckps.get(&c.provider).await.map_err(|e| e.to_string())?;
            if in_use(&p) {
                Err(format!("{:?}", p.metadata.finalizers))
            } else {
                Ok(())
            }
        },
    )
    .await;

    // A namespace holding a Ready ApiKey: `kubectl delete namespace` finishes, the key revoked.
    c.create_apikey("two", json!({})).await;
    c.wait_ready("two", MINUTE).await;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    namespaces
        .delete(&c.ns, &DeleteParams::default())
        .await
        .expect("namespace delete accepted");
    c.eventually("the namespace is gone", 2 * MINUTE, || async {
        match namespaces.get_opt(&c.ns).await {
            Ok(None) => Ok(()),
            Ok(Some(n)) => Err(format!("{:?}", n.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let live = c.live_keys_named("two").await;
    assert!(live.is_empty(), "revoked with its namespace: {live:?}");

    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(
        !log.contains("at the cluster scope"),
        "the operator made a cluster-scope request the namespace-mode RBAC refuses; {}:\n{}",
        op.log.display(),
        cluster::tail(&op.log, 20)
    );
    drop(op);
}
