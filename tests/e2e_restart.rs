//! Workload restarts on a real API server with kube-controller-manager: the restart annotation
//! lands on a real Deployment, which rolls out a new ReplicaSet; without a kubelet the rollout
//! never completes (why the grace period also starts after a bound); a missing workload is
//! reported. Runs on the local control plane (`keysmith_testkit::control_plane`, see docs/e2e.md).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use keysmith::api::{RestartKind, RestartTarget, RESTARTED_AT_ANNOTATION};
use keysmith::controller::restart::{restart, rolled_out, Debouncer, Outcome};

use keysmith_testkit::control_plane;

async fn replicasets(api: &Api<ReplicaSet>) -> Vec<ReplicaSet> {
    api.list(&ListParams::default().labels("app=chat"))
        .await
        .expect("list ReplicaSets")
        .items
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..120 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_restart_rolls_out_a_new_replicaset() {
    control_plane::install_crypto_provider();
    let client = control_plane::shared()
        .unwrap_or_else(|e| panic!("restarts need a Kubernetes API server (see docs/e2e.md): {e}"))
        .client()
        .await;
    let ns = format!("e2e-restart-{}", uuid::Uuid::new_v4().simple());
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .expect("create namespace");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "chat"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {
                "metadata": {"labels": {"app": "chat"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &dep)
        .await
        .expect("create Deployment");
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    eventually("the first ReplicaSet", || async {
        replicasets(&rs_api).await.len() == 1
    })
    .await;

    let debouncer = Debouncer::new(Duration::ZERO);
    let now = chrono::Utc::now();
    let target = RestartTarget {
        kind: RestartKind::Deployment,
        name: "chat".into(),
    };
    let restarted = match restart(&client, &debouncer, &ns, &target, now, now).await {
        Outcome::Restarted(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(restarted.generation, Some(2));
    // A second ApiKey whose Secret changed before that restart is covered by it: it waits
    // for the rollout of the generation that restart made.
    assert_eq!(
        restart(&client, &debouncer, &ns, &target, now, now).await,
        Outcome::Covered(restarted.clone())
    );
    let value = keysmith::controller::restart::restarted_at(now);
    eventually(
        "a second ReplicaSet with the restarted template",
        || async {
            let rs = replicasets(&rs_api).await;
            rs.len() == 2
                && rs.iter().any(|r| {
                    r.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .and_then(|t| t.metadata.as_ref())
                        .and_then(|m| m.annotations.as_ref())
                        .and_then(|a| a.get(RESTARTED_AT_ANNOTATION))
                        == Some(&value)
                })
        },
    )
    .await;
    // No kubelet: the new Pods never become available, so the rollout never completes.
    assert_eq!(
        rolled_out(&client, &ns, &restarted).await.unwrap(),
        Some(false)
    );

    let missing = RestartTarget {
        kind: RestartKind::StatefulSet,
        name: "chat".into(),
    };
    assert_eq!(
        restart(&client, &debouncer, &ns, &missing, now, now).await,
        Outcome::Missing
    );
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}
