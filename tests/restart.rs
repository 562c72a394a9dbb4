//! Workload restarts (`keysmith::controller::restart`) against the local kube-apiserver: the pod
//! template annotation lands on the named workload only, a missing workload is reported, and a
//! burst of Secret changes across ApiKeys restarts a workload once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::api::PostParams;
use kube::Client;

use keysmith_testkit::control_plane;
use serde_json::json;

use keysmith::api::{RestartKind, RestartTarget, RESTARTED_AT_ANNOTATION};
use keysmith::controller::restart::{restart, Debouncer, Outcome};

fn workload(kind: &str, name: &str, ns: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"team": "a"}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}
            }
        }
    })
}

/// A client of the local control plane and a fresh namespace holding a Deployment `chat` and a
/// StatefulSet `worker`.
async fn client() -> (Client, String) {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared().unwrap_or_else(|e| {
        panic!("the restart tests need a Kubernetes API server (see docs/e2e.md): {e}")
    });
    let c = cp.client().await;
    let ns = format!("restart-{}", keysmith::ids::random_hex(6));
    Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .expect("namespace created");
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(workload("Deployment", "chat", &ns)).unwrap(),
        )
        .await
        .expect("Deployment created");
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), &ns);
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(workload("StatefulSet", "worker", &ns)).unwrap(),
    )
    .await
    .expect("StatefulSet created");
    (c, ns)
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn target(kind: RestartKind, name: &str) -> RestartTarget {
    RestartTarget {
        kind,
        name: name.into(),
    }
}

fn annotation(
    template_annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<String> {
    template_annotations.and_then(|a| a.get(RESTARTED_AT_ANNOTATION).cloned())
}

#[tokio::test]
async fn restart_patches_the_pod_template_like_kubectl_rollout_restart() {
    let (c, ns) = client().await;
    let d = Debouncer::new(Duration::ZERO);
    let now = t("2026-03-01T00:00:00Z");
    let out = restart(
        &c,
        &d,
        &format!("{ns}/chat-key"),
        &target(RestartKind::Deployment, "chat"),
        now,
        now,
    )
    .await;
    match out {
        Outcome::Restarted(r) => {
            assert_eq!(r.kind, RestartKind::Deployment);
            assert_eq!(r.name, "chat");
            assert!(r.generation.is_some());
            assert!(!r.rolled_out);
        }
        other => panic!("{other:?}"),
    }
    let dep = Api::<Deployment>::namespaced(c.clone(), &ns)
        .get("chat")
        .await
        .unwrap();
    let tpl = dep.spec.unwrap().template.metadata.unwrap();
    assert_eq!(
        annotation(tpl.annotations.as_ref()).as_deref(),
        Some("2026-03-01T00:00:00.000Z")
    );
    // The merge patch keeps the template's other annotations.
    assert_eq!(
        tpl.annotations.unwrap().get("team").map(String::as_str),
        Some("a")
    );
    // The StatefulSet of the namespace was not touched.
    let sts = Api::<StatefulSet>::namespaced(c.clone(), &ns)
        .get("worker")
        .await
        .unwrap();
    assert_eq!(
        annotation(
            sts.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .as_ref()
        ),
        None
    );
}

#[tokio::test]
async fn a_missing_workload_is_reported_and_retried_later() {
    let (c, ns) = client().await;
    let d = Debouncer::new(Duration::ZERO);
    let now = t("2026-03-01T00:00:00Z");
    let gone = target(RestartKind::DaemonSet, "chat");
    assert_eq!(
        restart(&c, &d, &ns, &gone, now, now).await,
        Outcome::Missing
    );
    // Another namespace is another workload: nothing named chat there.
    let elsewhere = target(RestartKind::Deployment, "chat");
    assert_eq!(
        restart(&c, &d, "team-b", &elsewhere, now, now).await,
        Outcome::Missing
    );
    // A missing workload is not recorded as restarted: it is tried again.
    assert_eq!(
        restart(&c, &d, &ns, &gone, now, now).await,
        Outcome::Missing
    );
}

#[tokio::test]
async fn a_burst_of_rotations_restarts_a_workload_once() {
    let (c, ns) = client().await;
    let d = Debouncer::new(Duration::from_secs(5));
    let chat = target(RestartKind::Deployment, "chat");
    let t0 = t("2026-03-01T00:00:00Z");
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    // Three ApiKeys' Secrets change within two seconds.
    for s in 0..3 {
        assert!(matches!(
            restart(&c, &d, &ns, &chat, at(s), at(s)).await,
            Outcome::Wait(_)
        ));
    }
    let mut restarted = 0;
    let mut generations = Vec::new();
    for s in 0..3 {
        match restart(&c, &d, &ns, &chat, at(s), at(6)).await {
            Outcome::Restarted(r) => {
                restarted += 1;
                generations.push(r.generation);
            }
            Outcome::Covered(r) => generations.push(r.generation),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(restarted, 1);
    // The covered ones wait for the generation the restart made (never 0, which any status
    // has passed before the Deployment controller saw the restart).
    assert_eq!(generations, vec![Some(2); 3], "{generations:?}");
    let dep = Api::<Deployment>::namespaced(c.clone(), &ns)
        .get("chat")
        .await
        .unwrap();
    let tpl = dep.spec.unwrap().template.metadata.unwrap();
    assert_eq!(
        annotation(tpl.annotations.as_ref()).as_deref(),
        Some("2026-03-01T00:00:06.000Z")
    );
}
