//! End-to-end tests on a real node (issue 18): the operator runs as a pod from its image
//! (`scripts/build-image.sh`), installed with `helm install charts/keysmith` under the chart's
//! ServiceAccount, securityContext and probes; workloads are busybox pods that mount the Secrets
//! it writes; the OpenRouter emulator is a pod of the same image behind a Service.
//!
//! The node (`../shared/k8s/node/up.sh`) is started once for the test binary and torn down when
//! it exits (`keysmith_testkit::node`). The tests are `#[ignore]`d: `scripts/test.sh` installs the
//! node's packages and runs them with `--ignored` where the node can run; run so without root or
//! the packages, a test fails and says why (docs/testing.md). See docs/e2e.md ("A real node").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use keysmith_testkit::node;

use node::{eventually, eventually_or_logs, pod_ready, ready_since, Stage, BUSYBOX, TAG_A, TAG_B};

const MINUTE: Duration = Duration::from_secs(60);

/// Pods of the release that are not being deleted, with their IPs.
async fn operator_pods(s: &Stage) -> Vec<Pod> {
    s.operator_pods()
        .list(&ListParams::default().labels(&s.operator_selector()))
        .await
        .expect("list operator pods")
        .items
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// The image (by id: `e2e-a` and `e2e-b` have different digests) the pod's container runs.
fn image_id(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.image_id.clone())
        .unwrap_or_default()
}

async fn lease_holder(s: &Stage) -> Option<String> {
    Api::<Lease>::namespaced(s.client.clone(), &s.sys_ns)
        .get_opt(&format!("{}-leader", s.release))
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// The chart installs; the operator pods run from the image under the chart's ServiceAccount,
/// securityContext and probes and become Ready; with 2 replicas exactly one is leader (its
/// /readyz and the Lease agree); `helm upgrade` to a new image (another tag and digest) rolls both
/// pods while a
/// sampler polls every pod's /readyz: never two leaders at once.
#[ignore = "needs a node (root, ../shared/k8s/node): runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_one_leader_and_upgrade_rolls_without_a_second_leader() {
    let n = node::require("chart_installs_one_leader_and_upgrade_rolls_without_a_second_leader");
    let _serial = node::serial().await;
    let s = Stage::new(n, "chart", &["replicas=2"]).await;

    let pods = operator_pods(&s).await;
    assert_eq!(pods.len(), 2, "2 replicas");
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(s.release.as_str())
        );
        let c = &spec.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some(format!("{}:{TAG_A}", node::IMAGE_REPO).as_str())
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert!(c
            .liveness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .is_some());
        assert!(c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .is_some());
        assert!(pod_ready(p), "{} Ready through its probes", p.name_any());
        let st = &p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        assert_eq!(st.restart_count, 0, "{} never restarted", p.name_any());
    }

    // One leader: the Lease holder is the pod whose /readyz says "leader", the other stands by.
    let (leader, standby) = eventually("one leader and one standby", MINUTE, || async {
        let pods = operator_pods(&s).await;
        let mut roles = BTreeMap::new();
        for p in &pods {
            let ip = p
                .status
                .as_ref()
                .and_then(|st| st.pod_ip.clone())
                .unwrap_or_default();
            roles.insert(p.name_any(), s.role(&ip).await.unwrap_or_default());
        }
        let leaders: Vec<_> = roles
            .iter()
            .filter(|(_, r)| *r == "leader")
            .map(|(n, _)| n.clone())
            .collect();
        let standbys: Vec<_> = roles
            .iter()
            .filter(|(_, r)| *r == "standby")
            .map(|(n, _)| n.clone())
            .collect();
        let holder = lease_holder(&s).await;
        match (&leaders[..], &standbys[..]) {
            ([l], [sb]) if holder.as_deref() == Some(l) => Ok((l.clone(), sb.clone())),
            _ => Err(format!("roles {roles:?}, Lease holder {holder:?}")),
        }
    })
    .await;
    eprintln!("e2e_node[chart]: leader {leader}, standby {standby}");

    // Sample every operator pod's /readyz (and the Lease) during `helm upgrade`.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let http = s.http.clone();
        let pods_api = s.operator_pods();
        let selector = s.operator_selector();
        tokio::spawn(async move {
            let mut samples = 0u32;
            let mut max_leaders = 0usize;
            let mut double: Vec<BTreeSet<String>> = Vec::new();
            let mut prev: BTreeSet<String> = BTreeSet::new();
            let mut leaders_seen: Vec<String> = Vec::new();
            let mut without_leader = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(list) = pods_api
                    .list(&ListParams::default().labels(&selector))
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut now = BTreeSet::new();
                let asks = list.items.iter().filter_map(|p| {
                    let ip = p.status.as_ref()?.pod_ip.clone()?;
                    let http = http.clone();
                    let name = p.name_any();
                    Some(async move {
                        let r = http
                            .get(format!("http://{ip}:8080/readyz"))
                            .timeout(Duration::from_millis(500))
                            .send()
                            .await;
                        let role = match r {
                            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                            _ => String::new(),
                        };
                        (name, role)
                    })
                });
                for (name, role) in futures::future::join_all(asks).await {
                    if role == "leader" {
                        now.insert(name);
                    }
                }
                samples += 1;
                max_leaders = max_leaders.max(now.len());
                if now.is_empty() {
                    without_leader += 1;
                }
                for l in &now {
                    if !leaders_seen.contains(l) {
                        leaders_seen.push(l.clone());
                    }
                }
                // Two pods saying "leader" in two samples in a row (≥ 200 ms apart): a second
                // leader. (A leader that released the Lease on SIGTERM answers "leader" for the
                // few milliseconds until its process exits; one sample may catch that.)
                if now.len() > 1 && now == prev {
                    double.push(now.clone());
                }
                prev = now;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (samples, max_leaders, double, leaders_seen, without_leader)
        })
    };
    let t = Instant::now();
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/keysmith");
    let up = n.helm(&[
        "upgrade",
        &s.release,
        chart.to_str().unwrap(),
        "--namespace",
        &s.sys_ns,
        "--reuse-values",
        "--set",
        &format!("image.tag={TAG_B}"),
        "--wait",
        "--timeout",
        "3m",
    ]);
    if let Err(e) = up {
        panic!("helm upgrade failed: {e}\n{}", s.operator_logs());
    }
    let rolled = t.elapsed();
    let old_image_ids: BTreeSet<String> = pods.iter().map(image_id).collect();
    // Both new pods Ready, the old ones gone, and a leader among the new ones.
    let new_leader =
        eventually_or_logs(&s, "the rollout done and a new leader", MINUTE, || async {
            let pods = operator_pods(&s).await;
            let all_new = pods.len() == 2
                && pods.iter().all(|p| {
                    image_of(p).ends_with(TAG_B)
                        && pod_ready(p)
                        && p.metadata.deletion_timestamp.is_none()
                });
            let holder = lease_holder(&s).await;
            match holder {
                Some(h) if all_new && pods.iter().any(|p| p.name_any() == h) => Ok(h),
                h => Err(format!(
                    "pods {:?}, holder {h:?}",
                    pods.iter()
                        .map(|p| (p.name_any(), image_of(p), pod_ready(p)))
                        .collect::<Vec<_>>()
                )),
            }
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (samples, max_leaders, double, leaders_seen, without_leader) = sampler.await.unwrap();
    eprintln!(
        "e2e_node[chart]: helm upgrade to {TAG_B} rolled in {:.1} s; {samples} samples of every pod's /readyz: \
         at most {max_leaders} pod(s) saying leader in one sample, {} samples with two leaders in a row, \
         {without_leader} samples without a leader; leaders in order: {leaders_seen:?}; new Lease holder {new_leader}",
        rolled.as_secs_f64(),
        double.len()
    );
    assert!(double.is_empty(), "two leaders at once: {double:?}");
    assert!(
        samples >= 10,
        "the sampler ran during the rollout ({samples} samples)"
    );
    assert!(
        !leaders_seen.is_empty(),
        "a leader was seen during the rollout"
    );
    assert!(
        !pods.iter().any(|p| p.name_any() == new_leader),
        "the new leader is a new pod"
    );
    let new_image_ids: BTreeSet<String> = operator_pods(&s).await.iter().map(image_id).collect();
    assert!(
        new_image_ids.len() == 1 && new_image_ids.is_disjoint(&old_image_ids),
        "the new pods run the new image: {old_image_ids:?} -> {new_image_ids:?}"
    );
    let roles: Vec<_> = {
        let mut v = Vec::new();
        for p in operator_pods(&s).await {
            let ip = p
                .status
                .as_ref()
                .and_then(|st| st.pod_ip.clone())
                .unwrap_or_default();
            v.push(s.role(&ip).await.unwrap_or_default());
        }
        v
    };
    assert_eq!(
        roles.iter().filter(|r| *r == "leader").count(),
        1,
        "one leader after the upgrade: {roles:?}"
    );
}

/// A busybox pod that mounts `secret` as a file and as env, checks that both hold the same
/// value, and calls the emulator's key-in-use endpoint through its Service's ClusterIP with it.
/// `env_override` replaces the env value (the negative control).
fn consumer_pod(s: &Stage, name: &str, secret: &str, env_override: Option<&str>) -> Value {
    let env = match env_override {
        Some(v) => json!({ "name": "KEY", "value": v }),
        None => {
            json!({ "name": "KEY", "valueFrom": { "secretKeyRef": { "name": secret, "key": "api-key" } } })
        }
    };
    let script = format!(
        "f=$(cat /etc/keysmith/api-key); [ -n \"$KEY\" ] || {{ echo no-env-value; exit 2; }}; \
         [ \"$f\" = \"$KEY\" ] || {{ echo file-and-env-differ; exit 3; }}; \
         wget -q -O /tmp/out --header \"Authorization: Bearer $KEY\" {}/api/v1/key 2>/tmp/err || {{ echo key-refused; exit 4; }}; \
         grep -q '\"is_management_key\":false' /tmp/out || {{ echo unexpected-answer; exit 5; }}; echo consumer-ok",
        s.emulator_service_url
    );
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": s.app_ns },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "consumer", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "env": [env],
                "volumeMounts": [{ "name": "key", "mountPath": "/etc/keysmith", "readOnly": true }]
            }],
            "volumes": [{ "name": "key", "secret": { "secretName": secret } }]
        }
    })
}

/// Wait for a run-once pod to finish: (phase, its log).
async fn finished(s: &Stage, name: &str) -> (String, String) {
    let pods = s.app_pods();
    let phase = eventually(
        &format!("pod {name} finished"),
        Duration::from_secs(120),
        || async {
            let p = pods.get(name).await.map_err(|e| e.to_string())?;
            match p.status.as_ref().and_then(|st| st.phase.clone()).as_deref() {
                Some(ph @ ("Succeeded" | "Failed")) => Ok(ph.to_string()),
                ph => Err(format!("phase {ph:?}")),
            }
        },
    )
    .await;
    let log = s
        .node
        .kubectl(&["-n", &s.app_ns, "logs", name], None)
        .unwrap_or_else(|e| e);
    (phase, log.trim().to_string())
}

/// An ApiKey becomes Ready with the operator in a pod; a workload pod mounts its Secret as a file
/// and as env and calls the emulator (a pod behind a Service) with the key: accepted. The same
/// pod with another value in the env is refused (the check is not vacuous).
#[ignore = "needs a node (root, ../shared/k8s/node): runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_pod_mounts_the_secret_and_calls_the_provider() {
    let n = node::require("workload_pod_mounts_the_secret_and_calls_the_provider");
    let _serial = node::serial().await;
    let s = Stage::new(n, "mount", &["replicas=1"]).await;
    s.create_apikey("chat", json!({}));
    s.wait_apikey_ready("chat").await;

    n.apply(&consumer_pod(&s, "consumer", "chat", None));
    let (phase, log) = finished(&s, "consumer").await;
    assert_eq!(
        (phase.as_str(), log.as_str()),
        ("Succeeded", "consumer-ok"),
        "the workload pod used the key"
    );

    // Negative control: a value the provider never issued (same length and prefix, so only the
    // emulator's check can tell). The pod's file still holds the real key: the file/env check
    // fires first unless the values match, so the control sets the file aside.
    let bogus = format!("sk-or-v1-{}", keysmith::emulators::random_hex(32));
    let mut control = consumer_pod(&s, "consumer-bogus", "chat", Some(&bogus));
    let script = control["spec"]["containers"][0]["command"][2]
        .as_str()
        .unwrap()
        .replace(
            "[ \"$f\" = \"$KEY\" ] || { echo file-and-env-differ; exit 3; }; ",
            "",
        );
    control["spec"]["containers"][0]["command"][2] = json!(script);
    n.apply(&control);
    let (phase, log) = finished(&s, "consumer-bogus").await;
    assert_eq!(
        (phase.as_str(), log.as_str()),
        ("Failed", "key-refused"),
        "a key the provider did not issue is refused"
    );
}

/// A Deployment of 2 busybox pods reads the key from env; its readiness probe calls the emulator
/// with it. Rotation on demand with rolloutRestartTargets: the pods are really replaced (new
/// UIDs), the grace period starts when the new pods are Ready (deleteAfter − gracePeriod ≈ the
/// rollout's end, not the 10-minute bound), the old key works until after the new pods run and
/// stops at deleteAfter, and the new pods stay Ready once it is gone (their env holds the new
/// key).
#[ignore = "needs a node (root, ../shared/k8s/node): runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_restarts_the_workload_and_retires_the_old_key_after_new_pods_run() {
    let n =
        node::require("rotation_restarts_the_workload_and_retires_the_old_key_after_new_pods_run");
    let _serial = node::serial().await;
    let s = Stage::new(n, "rotate", &["replicas=1", "rolloutRestart.enabled=true"]).await;
    let grace = Duration::from_secs(20);
    s.create_apikey(
        "chat",
        json!({
            "rotation": { "gracePeriod": "20s" },
            "rolloutRestartTargets": [{ "kind": "Deployment", "name": "consumer" }]
        }),
    );
    s.wait_apikey_ready("chat").await;
    let old_key = s.secret_value("chat").await;
    assert!(s.key_works(&old_key).await.unwrap(), "the first key works");

    let probe = format!(
        "wget -q -O /dev/null --header \"Authorization: Bearer $KEY\" {}/api/v1/key",
        s.emulator_service_url
    );
    n.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "consumer", "namespace": s.app_ns },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "consumer" } },
            "strategy": { "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
            "template": {
                "metadata": { "labels": { "app": "consumer" } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "consumer", "image": BUSYBOX, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                        "env": [{ "name": "KEY", "valueFrom": { "secretKeyRef": { "name": "chat", "key": "api-key" } } }],
                        "readinessProbe": { "exec": { "command": ["sh", "-c", probe] }, "periodSeconds": 1, "failureThreshold": 1 }
                    }]
                }
            }
        }
    }));
    let deploys = s.deployments(&s.app_ns);
    let pods = s.app_pods();
    let sel = ListParams::default().labels("app=consumer");
    let old_uids: BTreeSet<String> = eventually(
        "the consumer Deployment available",
        Duration::from_secs(120),
        || async {
            let d = deploys.get("consumer").await.map_err(|e| e.to_string())?;
            let st = d.status.unwrap_or_default();
            let ps = pods.list(&sel).await.map_err(|e| e.to_string())?.items;
            if st.available_replicas == Some(2) && ps.len() == 2 && ps.iter().all(pod_ready) {
                Ok(ps.iter().filter_map(|p| p.metadata.uid.clone()).collect())
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .await;

    // Rotate now, and watch.
    let t0 = Instant::now();
    let t0_wall = chrono::Utc::now();
    node::annotate_apikey(
        &s.apikeys(),
        "chat",
        "keysmith.dev/rotate",
        &t0_wall.timestamp().to_string(),
    )
    .await;
    let mut new_key: Option<String> = None;
    let mut secret_changed_at = None;
    let mut new_pods_ready: Option<(Instant, chrono::DateTime<chrono::Utc>)> = None;
    let mut old_ok_after_new_ready = false;
    let mut old_dead_at: Option<(Instant, chrono::DateTime<chrono::Utc>)> = None;
    let mut delete_after: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut first_delete_after: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut new_uids = BTreeSet::new();
    let deadline = t0 + Duration::from_secs(180);
    while old_dead_at.is_none() {
        assert!(
            Instant::now() < deadline,
            "rotation did not finish in 3 minutes\n{}",
            s.operator_logs()
        );
        if new_key.is_none() {
            let v = s.secret_value("chat").await;
            if v != old_key {
                new_key = Some(v);
                secret_changed_at = Some(t0.elapsed());
            }
        }
        // deleteAfter is first the 10-minute bound after the restart, then moved to the end of
        // the rollout + gracePeriod: keep the last value seen before the old key is revoked.
        let ak = s.apikeys().get("chat").await.expect("ApiKey");
        if let Some(t) = ak
            .status
            .as_ref()
            .and_then(|st| st.previous_keys.first())
            .and_then(|p| chrono::DateTime::parse_from_rfc3339(&p.delete_after).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
        {
            first_delete_after.get_or_insert(t);
            delete_after = Some(t);
        }
        let ps = pods.list(&sel).await.expect("list pods").items;
        let fresh: Vec<&Pod> = ps
            .iter()
            .filter(|p| {
                !old_uids.contains(p.metadata.uid.as_deref().unwrap_or_default())
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if new_pods_ready.is_none() && fresh.len() == 2 && fresh.iter().all(|p| pod_ready(p)) {
            let since = fresh
                .iter()
                .filter_map(|p| ready_since(p))
                .max()
                .expect("Ready since");
            new_pods_ready = Some((Instant::now(), since));
            new_uids = fresh
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
        }
        let works = s.key_works(&old_key).await.expect("emulator reachable");
        if works && new_pods_ready.is_some() {
            old_ok_after_new_ready = true;
        }
        if !works {
            old_dead_at = Some((Instant::now(), chrono::Utc::now()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let new_key = new_key.expect("a new key in the Secret");
    let (old_dead_instant, old_dead_wall) = old_dead_at.unwrap();
    let (ready_instant, ready_wall) = new_pods_ready.unwrap_or_else(|| {
        panic!(
            "the old key died before 2 new pods were Ready\n{}",
            s.operator_logs()
        )
    });
    let delete_after = delete_after.expect("status.previousKeys[0].deleteAfter was seen");
    let grace_start = delete_after - chrono::Duration::from_std(grace).unwrap();
    eprintln!(
        "e2e_node[rotate]: new value in the Secret {:.1} s after the request; 2 new pods Ready at +{:.1} s \
         (Ready since {ready_wall}); grace started {grace_start} ({:+.1} s from the new pods' Ready); \
         old key refused at +{:.1} s ({:+.1} s from deleteAfter {delete_after}; first deleteAfter seen {first_delete_after:?})",
        secret_changed_at.unwrap().as_secs_f64(),
        (ready_instant - t0).as_secs_f64(),
        (grace_start - ready_wall).num_milliseconds() as f64 / 1000.0,
        (old_dead_instant - t0).as_secs_f64(),
        (old_dead_wall - delete_after).num_milliseconds() as f64 / 1000.0,
    );
    assert!(
        new_uids.is_disjoint(&old_uids) && new_uids.len() == 2,
        "the pods were replaced"
    );
    assert!(
        old_ok_after_new_ready,
        "the old key still worked when the new pods ran"
    );
    assert!(
        old_dead_instant > ready_instant,
        "the old key stopped only after the new pods were Ready"
    );
    // The grace period starts when the rollout is done: not before the new pods were Ready
    // (1 s: Ready times have second resolution), and not at the 10-minute bound either.
    assert!(
        grace_start >= ready_wall - chrono::Duration::seconds(1),
        "the grace period started ({grace_start}) before the new pods were Ready ({ready_wall})"
    );
    assert!(
        grace_start <= ready_wall + chrono::Duration::seconds(20),
        "the grace period started ({grace_start}) long after the rollout ({ready_wall})"
    );
    assert!(
        old_dead_wall >= delete_after - chrono::Duration::seconds(1),
        "the old key died ({old_dead_wall}) before deleteAfter ({delete_after})"
    );
    assert!(s.key_works(&new_key).await.unwrap(), "the new key works");
    // The new pods' env holds the new key: with the old key gone, their probe still passes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ps = pods.list(&sel).await.expect("list pods").items;
    let live: Vec<&Pod> = ps
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), 2);
    for p in live {
        assert!(
            new_uids.contains(p.metadata.uid.as_deref().unwrap()),
            "only the new pods run"
        );
        assert!(
            pod_ready(p),
            "new pod {} still Ready with the old key revoked",
            p.name_any()
        );
    }
}

/// Deleting the ApiKeys first, then `helm uninstall`: no key is left at the provider, and the
/// operator's pods and Deployment are gone.
#[ignore = "needs a node (root, ../shared/k8s/node): runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_uninstall_after_deleting_apikeys_leaves_no_keys() {
    let n = node::require("helm_uninstall_after_deleting_apikeys_leaves_no_keys");
    let _serial = node::serial().await;
    let mut s = Stage::new(n, "uninstall", &["replicas=1"]).await;
    for name in ["a", "b", "c"] {
        s.create_apikey(name, json!({}));
    }
    for name in ["a", "b", "c"] {
        s.wait_apikey_ready(name).await;
    }
    assert_eq!(
        s.emulator_keys().await.0,
        3,
        "three live keys at the provider"
    );

    for name in ["a", "b", "c"] {
        s.apikeys()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete ApiKey");
    }
    let api = s.apikeys();
    eventually_or_logs(
        &s,
        "the ApiKeys gone (finalizers released)",
        MINUTE,
        || async {
            let left = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left"))
            }
        },
    )
    .await;
    let out = s
        .uninstall()
        .unwrap_or_else(|e| panic!("helm uninstall failed: {e}"));
    eprintln!("e2e_node[uninstall]: {}", out.trim());
    eventually("the operator pods gone", MINUTE, || async {
        let pods = operator_pods(&s).await;
        if pods.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
            ))
        }
    })
    .await;
    assert!(s
        .deployments(&s.sys_ns)
        .get_opt(&s.release)
        .await
        .unwrap()
        .is_none());
    let (live, all) = s.emulator_keys().await;
    assert_eq!(
        (live, all),
        (0, 3),
        "no live key left at the provider (3 created, all revoked)"
    );
}
