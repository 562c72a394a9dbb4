//! Packaging checks: the generated CRDs, the Helm chart (lint, rendering with default and
//! non-default values, values.schema.json) and the rendered `deploy/` manifest.
//!
//! Needs `.tools/bin/helm` (`scripts/install-tools.sh`); the helm tests print a SKIPPED line and
//! pass without it, unless `KEYSMITH_REQUIRE_HELM=1` makes a missing helm a failure. `HELM`
//! overrides the binary. The CRD drift test needs nothing.
//!
//! `chart_installs_on_a_cluster` runs only when both `KUBECONFIG` and `KEYSMITH_E2E_IMAGE`
//! (an image of keysmith the cluster can pull, e.g. loaded with `kind load docker-image`) are
//! set; it installs the chart into a fresh namespace, waits for the rollout and a Lease holder,
//! and uninstalls.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_json::{json, Value};

const CHART: &str = "charts/keysmith";
const RELEASE_NAMESPACE: &str = "keysmith-system";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The helm binary, or `None` (after printing why) when the helm tests must be skipped.
fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/helm"));
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "{} not found: run scripts/install-tools.sh to install helm",
        path.display()
    );
    if std::env::var("KEYSMITH_REQUIRE_HELM").is_ok_and(|v| v == "1") {
        panic!("{msg} (KEYSMITH_REQUIRE_HELM=1)");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Runs helm in the repository root with `values` (YAML) on stdin as `-f -`.
fn run_helm(helm: &Path, args: &[&str], values: &str) -> Output {
    let mut child = Command::new(helm)
        .args(args)
        .args(["-f", "-"])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("helm starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(values.as_bytes())
        .unwrap();
    child.wait_with_output().expect("helm runs")
}

/// `helm template` of the chart with `values`; Err(stderr) when helm refuses.
fn try_render(helm: &Path, values: &str) -> Result<Vec<Value>, String> {
    let out = run_helm(
        helm,
        &[
            "template",
            "keysmith",
            CHART,
            "--namespace",
            RELEASE_NAMESPACE,
        ],
        values,
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse_stream(&String::from_utf8(out.stdout).unwrap()))
}

fn render(helm: &Path, values: &str) -> Vec<Value> {
    try_render(helm, values).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

/// Every non-empty document of a YAML stream, as JSON values.
fn parse_stream(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_of(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter().map(|o| kind_of(o).to_string()).collect()
}

fn all<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| kind_of(o) == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    match all(objs, kind).as_slice() {
        [o] => o,
        other => panic!("expected one {kind}, found {}", other.len()),
    }
}

fn named<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind_of(o) == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

fn container(objs: &[Value]) -> &Value {
    let containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn args(objs: &[Value]) -> Vec<String> {
    container(objs)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// (apiGroup, resource) -> verbs, flattened over the rules of a Role or ClusterRole.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

fn grants(role: &Value) -> Grants {
    let mut g = Grants::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(
            rule.get("resourceNames").is_none()
                || kind_of(role) == "Role"
                || rule["resources"] == json!(["rolebindings"]),
            "resourceNames only expected on the leader-election Role and keysmith's own RoleBinding"
        );
        for group in rule["apiGroups"].as_array().unwrap() {
            for res in rule["resources"].as_array().unwrap() {
                let verbs = g
                    .entry((group.as_str().unwrap().into(), res.as_str().unwrap().into()))
                    .or_default();
                for v in rule["verbs"].as_array().unwrap() {
                    verbs.insert(v.as_str().unwrap().into());
                }
            }
        }
    }
    g
}

fn verbs(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What the controller needs on namespaced resources (the ClusterRole in cluster mode, the
/// Role of each watched namespace in namespace mode).
fn expected_namespaced_grants(rollout_restart: bool) -> Grants {
    let mut g = Grants::new();
    let mut add = |group: &str, res: &str, v: &[&str]| {
        g.insert((group.into(), res.into()), verbs(v));
    };
    add(
        "keysmith.dev",
        "apikeys",
        &["get", "list", "watch", "patch"],
    );
    add("keysmith.dev", "apikeys/status", &["patch"]);
    add("keysmith.dev", "apikeys/finalizers", &["update"]);
    add(
        "keysmith.dev",
        "keyproviders",
        &["get", "list", "watch", "patch"],
    );
    add("keysmith.dev", "keyproviders/status", &["patch"]);
    add("keysmith.dev", "keybudgets", &["list"]);
    add("keysmith.dev", "keybudgets/status", &["patch"]);
    add("", "secrets", &["get", "list", "watch", "create", "patch"]);
    add("", "configmaps", &["get"]);
    add("events.k8s.io", "events", &["create", "patch"]);
    if rollout_restart {
        for r in ["deployments", "statefulsets", "daemonsets"] {
            add("apps", r, &["get", "patch"]);
        }
    }
    g
}

fn expected_cluster_grants() -> Grants {
    let mut g = Grants::new();
    g.insert(
        ("keysmith.dev".into(), "clusterkeyproviders".into()),
        verbs(&["get", "list", "watch", "patch"]),
    );
    g.insert(
        ("keysmith.dev".into(), "clusterkeyproviders/status".into()),
        verbs(&["patch"]),
    );
    g.insert(
        ("".into(), "namespaces".into()),
        verbs(&["get", "list", "watch"]),
    );
    g.insert(
        ("keysmith.dev".into(), "clusterkeybudgets".into()),
        verbs(&["list"]),
    );
    g.insert(
        ("keysmith.dev".into(), "clusterkeybudgets/status".into()),
        verbs(&["patch"]),
    );
    g
}

/// The ClusterRoles and Roles bound to the operator's ServiceAccount (not the aggregated
/// user-facing ClusterRoles).
fn operator_roles<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    let binding_kind = format!("{kind}Binding");
    let bound: BTreeSet<(String, String)> = all(objs, &binding_kind)
        .into_iter()
        .filter(|b| {
            b["subjects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == "keysmith")
        })
        .filter(|b| b["roleRef"]["kind"] == kind)
        .map(|b| {
            (
                b["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                b["roleRef"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all(objs, kind)
        .into_iter()
        .filter(|r| {
            bound.contains(&(
                r["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                r["metadata"]["name"].as_str().unwrap().to_string(),
            ))
        })
        .collect()
}

/// What the operator's ServiceAccount may do in each namespace through RoleBindings (to a Role
/// there, or to a ClusterRole: namespace mode binds one ClusterRole in every watched namespace).
fn namespaced_grants(objs: &[Value]) -> BTreeMap<String, Grants> {
    let mut out: BTreeMap<String, Grants> = BTreeMap::new();
    for b in all(objs, "RoleBinding") {
        if !b["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == "keysmith")
        {
            continue;
        }
        let ns = b["metadata"]["namespace"].as_str().unwrap().to_string();
        let role = match b["roleRef"]["kind"].as_str().unwrap() {
            "Role" => all(objs, "Role").into_iter().find(|r| {
                r["metadata"]["name"] == b["roleRef"]["name"] && r["metadata"]["namespace"] == ns
            }),
            _ => all(objs, "ClusterRole")
                .into_iter()
                .find(|r| r["metadata"]["name"] == b["roleRef"]["name"]),
        }
        .unwrap_or_else(|| panic!("RoleBinding {b} refers to a role the chart does not render"));
        for (k, v) in grants(role) {
            out.entry(ns.clone())
                .or_default()
                .entry(k)
                .or_default()
                .extend(v);
        }
    }
    out
}

/// Namespace mode: the namespaced grants plus keysmith's own RoleBinding (the finalizer that
/// keeps its access while a namespace being deleted still has ApiKeys holding keys).
fn expected_namespace_mode_grants(rollout_restart: bool) -> Grants {
    let mut g = expected_namespaced_grants(rollout_restart);
    g.insert(
        ("rbac.authorization.k8s.io".into(), "rolebindings".into()),
        verbs(&["get", "patch"]),
    );
    g
}

fn chart_app_version() -> String {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    chart["appVersion"].as_str().unwrap().to_string()
}

/// Round-trips each object through its typed k8s-openapi struct: a field the type does not
/// know (a typo in a template) is dropped on the way and shows up as a difference.
fn assert_valid_kubernetes_objects(objs: &[Value]) {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(o: &Value) -> Value {
        let typed: T = serde_json::from_value(o.clone())
            .unwrap_or_else(|e| panic!("{} {}: {e}", kind_of(o), o["metadata"]["name"]));
        serde_json::to_value(typed).unwrap()
    }
    for o in objs {
        let back = match kind_of(o) {
            "Deployment" => round_trip::<Deployment>(o),
            "Service" => round_trip::<Service>(o),
            "ServiceAccount" => round_trip::<ServiceAccount>(o),
            "Namespace" => round_trip::<Namespace>(o),
            "NetworkPolicy" => round_trip::<NetworkPolicy>(o),
            "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(o),
            "ClusterRole" => round_trip::<ClusterRole>(o),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(o),
            "Role" => round_trip::<Role>(o),
            "RoleBinding" => round_trip::<RoleBinding>(o),
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(o),
            "Pod" => round_trip::<Pod>(o),
            "ConfigMap" => round_trip::<ConfigMap>(o),
            // monitoring.coreos.com types are not in k8s-openapi; checked by hand in the tests
            "ServiceMonitor" | "PrometheusRule" => continue,
            other => panic!("unexpected kind {other} rendered"),
        };
        assert_eq!(
            &back,
            o,
            "{} {} has fields Kubernetes does not know",
            kind_of(o),
            o["metadata"]["name"]
        );
    }
}

// ---------------------------------------------------------------------------------------------

/// `crds/` and `charts/keysmith/crds/` hold exactly what `keysmith crds --output-dir` writes.
#[test]
fn crds_match_rust_types() {
    let expected = keysmith::api::crd_files();
    assert_eq!(expected.len(), 5);
    for dir in ["crds", "charts/keysmith/crds"] {
        let dir_path = root().join(dir);
        let mut on_disk: BTreeSet<String> = std::fs::read_dir(&dir_path)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        for (file, yaml) in &expected {
            let actual = std::fs::read_to_string(dir_path.join(file)).unwrap_or_default();
            assert!(
                actual == *yaml,
                "{dir}/{file} is out of date with the Rust types: run scripts/gen-crds.sh"
            );
            on_disk.remove(file);
        }
        assert!(
            on_disk.is_empty(),
            "{dir} holds files `keysmith crds` does not produce: {on_disk:?}"
        );
    }
    // the stream printed by `keysmith crds` is the same documents
    let joined: Vec<String> = expected.into_iter().map(|(_, y)| y).collect();
    assert_eq!(keysmith::api::crds_yaml(), joined.join("---\n"));
}

/// Every value in values.yaml has a row in docs/values.md, and values.yaml and
/// values.schema.json know the same top-level keys.
#[test]
fn values_are_documented() {
    // objects passed through to Kubernetes as a whole: documented as one row
    const WHOLE: &[&str] = &[
        "resources",
        "podSecurityContext",
        "securityContext",
        "livenessProbe",
        "readinessProbe",
    ];
    fn walk(prefix: &str, v: &serde_yaml::Value, out: &mut Vec<String>) {
        let serde_yaml::Value::Mapping(map) = v else {
            return;
        };
        for (k, v) in map {
            let key = k.as_str().unwrap();
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            match v {
                serde_yaml::Value::Mapping(m) if !m.is_empty() && !WHOLE.contains(&key) => {
                    walk(&path, v, out)
                }
                _ => out.push(path),
            }
        }
    }
    let chart = root().join(CHART);
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/values.md")).unwrap();
    let mut paths = Vec::new();
    walk("", &values, &mut paths);
    assert!(paths.len() > 50, "{paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| {
            !docs.contains(&format!("| `{p}` |")) && !docs.contains(&format!("| `{p}.*` |"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from docs/values.md: {missing:?}"
    );

    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap())
            .unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let mut in_schema: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(in_schema.remove("global"));
    let in_values: BTreeSet<String> = values
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_schema, in_values);
}

#[test]
fn helm_lint_passes() {
    let Some(helm) = helm() else { return };
    for values in [
        "{}",
        "watchNamespaces: [team-a, team-b]\nclusterProviders: {enabled: true}\nreplicas: 1\n",
    ] {
        let out = run_helm(&helm, &["lint", "--strict", CHART], values);
        assert!(
            out.status.success(),
            "helm lint with {values:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn default_values_render_cluster_mode_ha() {
    let Some(helm) = helm() else { return };
    let objs = render(&helm, "{}");
    assert_valid_kubernetes_objects(&objs);
    assert_eq!(
        kinds(&objs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            // the `helm test` hook
            "Pod",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    for o in &objs {
        if !kind_of(o).starts_with("Cluster") {
            assert_eq!(o["metadata"]["namespace"], RELEASE_NAMESPACE, "{o}");
        }
    }

    // Deployment: two replicas under leader election
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = container(&objs);
    assert_eq!(
        c["image"],
        format!("ghcr.io/keysmith/keysmith:{}", chart_app_version())
    );
    assert_eq!(
        args(&objs),
        [
            "run",
            "--log-format=json",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-elect",
            "--lease-name=keysmith-leader",
            "--lease-duration=15",
            "--concurrency=64",
        ]
    );
    assert!(c["env"].as_array().unwrap().contains(&json!({
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}
    })));
    assert!(c["env"].as_array().unwrap().contains(&json!({
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}
    })));
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // restricted Pod Security Standard
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
    assert_eq!(pod["serviceAccountName"], "keysmith");

    // RBAC: one ClusterRole with exactly what the controller does, leases namespaced
    let cluster_roles = operator_roles(&objs, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    let mut want = expected_namespaced_grants(false);
    want.extend(expected_cluster_grants());
    assert_eq!(grants(cluster_roles[0]), want);
    let roles = operator_roles(&objs, "Role");
    assert_eq!(roles.len(), 1);
    let lease_role = roles[0];
    assert_eq!(lease_role["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(
        lease_role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": ["keysmith-leader"], "verbs": ["get", "patch"]},
        ])
    );
    // nothing anywhere grants wildcards or rollout-restart access
    for role in all(&objs, "ClusterRole")
        .into_iter()
        .chain(all(&objs, "Role"))
    {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !rule[field].as_array().unwrap().contains(&json!("*")),
                    "{rule}"
                );
            }
            assert!(!rule["apiGroups"]
                .as_array()
                .unwrap()
                .contains(&json!("apps")));
        }
    }
    // the aggregated user-facing roles never touch Secrets
    for name in ["keysmith-view", "keysmith-edit"] {
        let role = named(&objs, "ClusterRole", name);
        assert!(grants(role).keys().all(|(g, _)| g == "keysmith.dev"));
    }

    // metrics Service, PDB for HA
    let svc = one(&objs, "Service");
    assert_eq!(svc["metadata"]["name"], "keysmith-metrics");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let pdb = one(&objs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deploy["spec"]["selector"]);
}

#[test]
fn namespace_mode_sharding_monitoring_and_network_policy() {
    let Some(helm) = helm() else { return };
    let objs = render(
        &helm,
        r#"
replicas: 1
watchNamespaces: [team-a, team-b]
labelSelector: "keysmith.dev/shard in (a,b)"
serviceMonitor: {enabled: true, labels: {release: prometheus}}
networkPolicy: {enabled: true}
logFormat: text
concurrency: 4
"#,
    );
    assert_valid_kubernetes_objects(&objs);

    let a = args(&objs);
    assert!(
        a.contains(&"--watch-namespaces=team-a,team-b".to_string()),
        "{a:?}"
    );
    assert!(
        a.contains(&"--label-selector=keysmith.dev/shard in (a,b)".to_string()),
        "{a:?}"
    );
    assert!(
        a.contains(&"--cluster-providers=false".to_string()),
        "namespace mode without the cluster grant must not watch ClusterKeyProviders: {a:?}"
    );
    assert!(a.contains(&"--leader-elect".to_string()));
    assert!(a.contains(&"--log-format=text".to_string()));
    assert!(a.contains(&"--concurrency=4".to_string()));
    assert_eq!(one(&objs, "Deployment")["spec"]["replicas"], 1);

    // no cluster-wide grant for the operator at all: ClusterKeyProviders are off in this mode
    assert!(operator_roles(&objs, "ClusterRole").is_empty());
    let rendered = serde_json::to_string(&objs).unwrap();
    assert!(!rendered.contains("clusterkeyproviders"));
    assert!(!rendered.contains("\"namespaces\""));
    // the namespaced rules in each watched namespace (a RoleBinding there to one ClusterRole,
    // which a namespace deletion does not delete), plus the Lease Role
    assert!(
        a.contains(&"--namespace-rolebinding=keysmith".to_string()),
        "{a:?}"
    );
    let by_ns = namespaced_grants(&objs);
    for ns in ["team-a", "team-b"] {
        assert_eq!(by_ns[ns], expected_namespace_mode_grants(false), "in {ns}");
    }
    assert_eq!(
        by_ns.keys().cloned().collect::<BTreeSet<_>>(),
        verbs(&["team-a", "team-b", RELEASE_NAMESPACE])
    );
    let roles = operator_roles(&objs, "Role");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["metadata"]["name"], "keysmith-leader-election");

    // ServiceMonitor scrapes the metrics Service
    let sm = one(&objs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}])
    );
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        one(&objs, "Service")["spec"]["selector"]
    );

    // NetworkPolicy: ingress to the metrics port only, egress left open
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "metrics", "protocol": "TCP"}])
    );
    assert!(!ingress[0]["from"].as_array().unwrap().is_empty());
    assert!(np["spec"].get("egress").is_none());

    // one replica: no PodDisruptionBudget (it would block every node drain)
    assert!(all(&objs, "PodDisruptionBudget").is_empty());
}

#[test]
fn namespace_mode_with_cluster_providers() {
    let Some(helm) = helm() else { return };
    let objs = render(
        &helm,
        "watchNamespaces: [team-a]\nclusterProviders: {enabled: true}\n",
    );
    assert_valid_kubernetes_objects(&objs);
    assert!(!args(&objs).contains(&"--cluster-providers=false".to_string()));
    let cluster_roles = operator_roles(&objs, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(grants(cluster_roles[0]), expected_cluster_grants());
    // Secrets in the release namespace for ClusterKeyProvider credentials: read, and patch for
    // the in-use finalizer
    let creds = named(&objs, "Role", "keysmith-provider-credentials");
    assert_eq!(creds["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(
        grants(creds),
        Grants::from([
            (
                ("".into(), "secrets".into()),
                verbs(&["get", "list", "watch", "patch"])
            ),
            (("".into(), "configmaps".into()), verbs(&["get"])),
        ])
    );
    // not needed when the release namespace is itself watched
    let objs = render(
        &helm,
        "watchNamespaces: [team-a, keysmith-system]\nclusterProviders: {enabled: true}\n",
    );
    assert!(!all(&objs, "Role")
        .iter()
        .any(|r| r["metadata"]["name"] == "keysmith-provider-credentials"));
}

#[test]
fn rollout_restart_access_only_when_enabled() {
    let Some(helm) = helm() else { return };
    for values in [
        "rolloutRestart: {enabled: true}",
        "rolloutRestart: {enabled: true}\nwatchNamespaces: [team-a]",
    ] {
        let objs = render(&helm, values);
        let g = if values.contains("watchNamespaces") {
            namespaced_grants(&objs)["team-a"].clone()
        } else {
            let role = operator_roles(&objs, "ClusterRole")
                .into_iter()
                .find(|r| r["metadata"]["name"] == "keysmith")
                .unwrap();
            grants(role)
        };
        for r in ["deployments", "statefulsets", "daemonsets"] {
            assert_eq!(
                g[&("apps".to_string(), r.to_string())],
                verbs(&["get", "patch"])
            );
        }
    }
}

/// issue 17 item 10: `rolloutRestart.namespaces` confines workload restarts to the listed
/// namespaces (a Role + RoleBinding in each), in cluster mode and in namespace mode; no
/// ClusterRole of the operator grants anything on workloads then. Secrets are never deleted
/// by keysmith, and no rendering grants it.
#[test]
fn rollout_restart_confined_to_listed_namespaces_and_no_secret_delete() {
    let Some(helm) = helm() else { return };
    for values in [
        "rolloutRestart: {enabled: true, namespaces: [team-a, team-b]}",
        "rolloutRestart: {enabled: true, namespaces: [team-a, team-b]}\nwatchNamespaces: [team-a, team-b, team-c]",
    ] {
        let objs = render(&helm, values);
        for role in operator_roles(&objs, "ClusterRole") {
            let g = grants(role);
            assert!(
                !g.keys().any(|(group, _)| group == "apps"),
                "{values}: ClusterRole {} grants workloads: {g:?}",
                role["metadata"]["name"]
            );
        }
        let mut restart_ns: Vec<String> = Vec::new();
        for role in operator_roles(&objs, "Role") {
            let g = grants(role);
            let ns = role["metadata"]["namespace"].as_str().unwrap().to_string();
            if g.keys().any(|(group, _)| group == "apps") {
                for r in ["deployments", "statefulsets", "daemonsets"] {
                    assert_eq!(
                        g[&("apps".to_string(), r.to_string())],
                        verbs(&["get", "patch"])
                    );
                }
                restart_ns.push(ns);
            }
        }
        restart_ns.sort();
        assert_eq!(restart_ns, ["team-a", "team-b"], "{values}");
    }
    // Without the list: the served namespaces (cluster-wide in cluster mode, documented).
    let objs = render(&helm, "rolloutRestart: {enabled: true}");
    assert!(operator_roles(&objs, "ClusterRole")
        .iter()
        .any(|r| grants(r).contains_key(&("apps".to_string(), "deployments".to_string()))));
    assert!(try_render(
        &helm,
        "rolloutRestart: {enabled: true, namespaces: [team-a, team-a]}"
    )
    .is_err());
    for values in [
        "{}",
        "watchNamespaces: [team-a]\nclusterProviders: {enabled: true}",
        "rolloutRestart: {enabled: true, namespaces: [team-a]}",
    ] {
        let objs = render(&helm, values);
        for kind in ["ClusterRole", "Role"] {
            for role in operator_roles(&objs, kind) {
                if let Some(v) = grants(role).get(&("".to_string(), "secrets".to_string())) {
                    assert!(
                        !v.contains("delete"),
                        "{values}: {kind} grants Secret delete"
                    );
                }
            }
        }
    }
}

/// issue 17 item 5: the chart passes the network-policy flags for KeyProviders only when set.
#[test]
fn keyprovider_network_flags_only_when_allowed() {
    let Some(helm) = helm() else { return };
    let a = args(&render(&helm, "{}"));
    assert!(
        !a.iter()
            .any(|x| x.starts_with("--allow-private-provider-networks")
                || x.starts_with("--allow-insecure-http")),
        "{a:?}"
    );
    let a = args(&render(
        &helm,
        "namespacedProviders: {allowPrivateNetworks: true, allowInsecureHTTP: true}",
    ));
    assert!(
        a.contains(&"--allow-private-provider-networks".to_string()),
        "{a:?}"
    );
    assert!(a.contains(&"--allow-insecure-http".to_string()), "{a:?}");
}

#[test]
fn optional_values_reach_the_pod() {
    let Some(helm) = helm() else { return };
    let objs = render(
        &helm,
        r#"
image: {repository: registry.example/keysmith, tag: dev, pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
extraEnv: [{name: HTTPS_PROXY, value: "http://proxy:3128"}]
extraVolumes: [{name: ca, configMap: {name: corp-ca}}]
extraVolumeMounts: [{name: ca, mountPath: /etc/ssl/corp, readOnly: true}]
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]}]}}}
topologySpreadConstraints: [{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway}]
podAnnotations: {example.com/a: "1"}
podLabels: {team: platform}
commonLabels: {cost-center: "42"}
leaderElection: {leaseName: shard-a, leaseDuration: 30}
metrics: {port: 9090}
extraArgs: ["--some-flag"]
"#,
    );
    assert_valid_kubernetes_objects(&objs);
    let deploy = one(&objs, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = container(&objs);
    assert_eq!(c["image"], "registry.example/keysmith:dev");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "HTTPS_PROXY"));
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "ca"));
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["mountPath"] == "/etc/ssl/corp"));
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let meta = &deploy["spec"]["template"]["metadata"];
    assert_eq!(meta["annotations"]["example.com/a"], "1");
    assert_eq!(meta["labels"]["team"], "platform");
    for o in &objs {
        assert_eq!(
            o["metadata"]["labels"]["cost-center"],
            "42",
            "{}",
            kind_of(o)
        );
    }
    let a = args(&objs);
    assert!(a.contains(&"--lease-name=shard-a".to_string()));
    assert!(a.contains(&"--lease-duration=30".to_string()));
    assert!(a.contains(&"--metrics-addr=0.0.0.0:9090".to_string()));
    assert_eq!(a.last().unwrap(), "--some-flag");
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    let lease_role = named(&objs, "Role", "keysmith-leader-election");
    assert_eq!(lease_role["rules"][1]["resourceNames"], json!(["shard-a"]));
    // image digest wins over the tag
    let objs = render(
        &helm,
        &format!("image: {{digest: \"sha256:{}\"}}", "a".repeat(64)),
    );
    assert_eq!(
        container(&objs)["image"],
        format!("ghcr.io/keysmith/keysmith@sha256:{}", "a".repeat(64))
    );
}

#[test]
fn restricted_egress_allows_dns_api_server_and_extra_rules_only() {
    let Some(helm) = helm() else { return };
    let objs = render(
        &helm,
        r#"
networkPolicy:
  enabled: true
  metrics: {from: []}
  egress:
    restrict: true
    kubeAPIServer: {cidrs: [10.96.0.1/32]}
    extraRules: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: 443, protocol: TCP}]}]
"#,
    );
    assert_valid_kubernetes_objects(&objs);
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["spec"]["ingress"], json!([]));
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 3);
    assert_eq!(egress[0]["ports"][0]["port"], 53);
    assert_eq!(
        egress[1]["to"],
        json!([{"ipBlock": {"cidr": "10.96.0.1/32"}}])
    );
    assert_eq!(egress[2]["to"][0]["ipBlock"]["cidr"], "192.0.2.0/24");
}

#[test]
fn schema_rejects_typos_and_wrong_types() {
    let Some(helm) = helm() else { return };
    for (values, expect) in [
        ("replicaCount: 3", "replicaCount"),
        ("image: {tga: v1}", "tga"),
        ("leaderElection: {enable: false}", "enable"),
        ("networkPolicy: {enabled: true, egres: {}}", "egres"),
        ("replicas: two", "replicas"),
        ("watchNamespaces: team-a", "watchNamespaces"),
        ("watchNamespaces: [Team_A]", "watchNamespaces"),
        ("logFormat: yaml", "logFormat"),
        ("serviceMonitor: {enabled: \"yes\"}", "enabled"),
        ("image: {pullPolicy: Sometimes}", "pullPolicy"),
    ] {
        let err = try_render(&helm, values)
            .err()
            .unwrap_or_else(|| panic!("values {values:?} were accepted"));
        assert!(
            err.contains("schema") && err.contains(expect),
            "values {values:?}: unexpected error {err}"
        );
    }
}

#[test]
fn contradictory_values_fail_with_a_message() {
    let Some(helm) = helm() else { return };
    for (values, expect) in [
        (
            "replicas: 3\nleaderElection: {enabled: false}",
            "needs leaderElection.enabled",
        ),
        (
            "networkPolicy: {enabled: true, egress: {restrict: true}}",
            "kubeAPIServer.cidrs",
        ),
        (
            "serviceMonitor: {enabled: true}\nmetrics: {service: {enabled: false}}",
            "metrics.service.enabled",
        ),
    ] {
        let err = try_render(&helm, values)
            .err()
            .unwrap_or_else(|| panic!("values {values:?} were accepted"));
        assert!(err.contains(expect), "values {values:?}: {err}");
    }
    // a single replica without leader election is fine
    let objs = render(&helm, "replicas: 1\nleaderElection: {enabled: false}");
    assert!(!args(&objs)
        .iter()
        .any(|a| a.starts_with("--lease") || a == "--leader-elect"));
    assert!(all(&objs, "Role").is_empty());
}

/// `deploy/keysmith.yaml` is what `scripts/render-deploy.sh` produces from the chart.
#[test]
fn deploy_manifest_matches_chart() {
    let Some(helm) = helm() else { return };
    let out = Command::new("bash")
        .args(["scripts/render-deploy.sh", "-"])
        .env("HELM", &helm)
        .current_dir(root())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "render-deploy.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(root().join("deploy/keysmith.yaml")).unwrap_or_default();
    assert!(
        fresh == committed,
        "deploy/keysmith.yaml is out of date with the chart: run scripts/render-deploy.sh"
    );

    let objs = parse_stream(&committed);
    assert_valid_kubernetes_objects(&objs);
    assert_eq!(kind_of(&objs[0]), "Namespace");
    assert_eq!(objs[0]["metadata"]["name"], RELEASE_NAMESPACE);
    assert_eq!(
        objs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // CRDs come before anything that could use them, and are the generated ones
    let rendered: BTreeMap<String, &Value> = all(&objs, "CustomResourceDefinition")
        .into_iter()
        .map(|c| (c["metadata"]["name"].as_str().unwrap().to_string(), c))
        .collect();
    let generated = keysmith::api::crd_files();
    assert_eq!(rendered.len(), generated.len());
    for (file, yaml) in generated {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert!(
            rendered.get(name) == Some(&&crd),
            "deploy/keysmith.yaml: CRD {name} differs from {file}"
        );
    }
    assert!(objs[1..=3]
        .iter()
        .all(|o| kind_of(o) == "CustomResourceDefinition"));
    for o in &objs[1..] {
        if kind_of(o) != "CustomResourceDefinition" && !kind_of(o).starts_with("Cluster") {
            assert_eq!(o["metadata"]["namespace"], RELEASE_NAMESPACE);
        }
    }
}

/// End to end on a real cluster, opt-in (`--ignored`): `KUBECONFIG` and `KEYSMITH_E2E_IMAGE`
/// must be set.
#[test]
#[ignore = "needs a cluster that can pull an image of keysmith: KUBECONFIG, KEYSMITH_E2E_IMAGE, --ignored"]
fn chart_installs_on_a_cluster() {
    let (Ok(_), Ok(image)) = (
        std::env::var("KUBECONFIG"),
        std::env::var("KEYSMITH_E2E_IMAGE"),
    ) else {
        keysmith_testkit::skip::missing(
            "cluster",
            "chart_installs_on_a_cluster",
            "set KUBECONFIG and KEYSMITH_E2E_IMAGE (an image of keysmith the cluster can pull)",
        );
    };
    let Some(helm) = helm() else { return };
    let kubectl = root().join(".tools/bin/kubectl");
    let (repo, tag) = image
        .rsplit_once(':')
        .expect("KEYSMITH_E2E_IMAGE is repo:tag");
    let ns = format!("keysmith-e2e-{}", std::process::id());
    let release = "keysmith-e2e";
    let run = |cmd: &Path, args: &[&str]| {
        let out = Command::new(cmd)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let values = format!(
        "image: {{repository: {repo:?}, tag: {tag:?}, pullPolicy: IfNotPresent}}\nlogFormat: text\n"
    );
    let values_file = std::env::temp_dir().join(format!("{ns}-values.yaml"));
    std::fs::write(&values_file, values).unwrap();
    let (ok, log) = run(
        &helm,
        &[
            "upgrade",
            "--install",
            release,
            CHART,
            "--namespace",
            &ns,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
            "-f",
            values_file.to_str().unwrap(),
        ],
    );
    let result = (|| {
        if !ok {
            return Err(format!("helm install: {log}"));
        }
        // the CRDs are served and the leader holds the Lease
        let (ok, log) = run(&kubectl, &["get", "apikeys", "--all-namespaces"]);
        if !ok {
            return Err(format!("kubectl get apikeys: {log}"));
        }
        for _ in 0..30 {
            let (ok, holder) = run(
                &kubectl,
                &[
                    "-n",
                    &ns,
                    "get",
                    "lease",
                    &format!("{release}-keysmith-leader"),
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ],
            );
            if ok && !holder.trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        Err("no replica took the leader Lease within 60s".to_string())
    })();
    let _ = run(&helm, &["uninstall", release, "--namespace", &ns, "--wait"]);
    let _ = run(&kubectl, &["delete", "namespace", &ns, "--wait=false"]);
    let _ = std::fs::remove_file(&values_file);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The operator's grants are exactly the permissions the controller uses
/// (`keysmith::controller::rbac`, which the controller tests hold the controller's real requests
/// against), in cluster mode and in namespace mode with ClusterKeyProviders: every listed
/// permission is granted **at the scope the controller uses it** (issue 17: merging Role and
/// ClusterRole rules hid that namespace mode could not list ApiKeys cluster-wide), and nothing
/// beyond the list is. Cluster-scoped resources come from a ClusterRole; namespaced ones from
/// the ClusterRole in cluster mode and from a Role in every watched namespace in namespace mode
/// (where a ClusterRole must grant nothing namespaced); leases from the release namespace.
#[test]
fn rendered_rbac_covers_what_the_controller_uses() {
    let Some(helm) = helm() else { return };
    let cluster_scoped = |resource: &str| {
        resource.starts_with("clusterkeyproviders")
            || resource.starts_with("clusterkeybudgets")
            || resource == "namespaces"
    };
    for (values, watched) in [
        ("{}", vec![]),
        (
            "watchNamespaces: [team-a, team-b]\nclusterProviders: {enabled: true}\n",
            vec!["team-a", "team-b"],
        ),
        ("rolloutRestart: {enabled: true}\n", vec![]),
        (
            "rolloutRestart: {enabled: true}\nwatchNamespaces: [team-a]\nclusterProviders: {enabled: true}\n",
            vec!["team-a"],
        ),
    ] {
        let objs = render(&helm, values);
        let mut cluster = Grants::new();
        for role in operator_roles(&objs, "ClusterRole") {
            for (k, v) in grants(role) {
                cluster.entry(k).or_default().extend(v);
            }
        }
        let by_ns = namespaced_grants(&objs);
        let has = |g: Option<&Grants>, group: &str, resource: &str, verb: &str| {
            g.and_then(|g| g.get(&(group.to_string(), resource.to_string())))
                .is_some_and(|v| v.contains(verb))
        };
        let restarts = values.contains("rolloutRestart: {enabled: true}");
        let mut optional: Vec<keysmith::controller::rbac::Permission> = Vec::new();
        if restarts {
            optional.extend(keysmith::controller::rbac::ROLLOUT_RESTART_PERMISSIONS);
        }
        if !watched.is_empty() {
            optional.extend(keysmith::controller::rbac::NAMESPACE_MODE_PERMISSIONS);
        }
        for p in keysmith::controller::rbac::PERMISSIONS.iter().chain(&optional) {
            for verb in p.verbs {
                let what = format!("{verb} on {}/{}", p.group, p.resource);
                if cluster_scoped(p.resource) {
                    assert!(
                        has(Some(&cluster), p.group, p.resource, verb),
                        "values {values:?}: no ClusterRole grants {what} (cluster-scoped)"
                    );
                } else if p.resource == "leases" {
                    assert!(
                        has(by_ns.get(RELEASE_NAMESPACE), p.group, p.resource, verb),
                        "values {values:?}: no Role in the release namespace grants {what}"
                    );
                } else if watched.is_empty() {
                    assert!(
                        has(Some(&cluster), p.group, p.resource, verb),
                        "values {values:?}: cluster mode: the ClusterRole does not grant {what} in every namespace"
                    );
                } else {
                    for ns in &watched {
                        assert!(
                            has(by_ns.get(*ns), p.group, p.resource, verb),
                            "values {values:?}: namespace mode: no Role in {ns} grants {what}"
                        );
                    }
                }
            }
        }
        let listed = |group: &str, resource: &str, verb: &str| {
            keysmith::controller::rbac::PERMISSIONS
                .iter()
                .chain(&optional)
                .any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
        };
        for ((group, resource), granted) in &cluster {
            for verb in granted {
                assert!(
                    listed(group, resource, verb),
                    "values {values:?}: the chart grants {verb} on {group}/{resource}, which src/controller/rbac.rs does not list (the controller does not use it)"
                );
                assert!(
                    watched.is_empty() || cluster_scoped(resource),
                    "values {values:?}: namespace mode, yet a ClusterRole grants {verb} on {group}/{resource} in every namespace"
                );
            }
        }
        for (ns, grants) in &by_ns {
            for ((group, resource), granted) in grants {
                for verb in granted {
                    assert!(
                        listed(group, resource, verb),
                        "values {values:?}: a Role in {ns} grants {verb} on {group}/{resource}, which src/controller/rbac.rs does not list"
                    );
                    assert!(
                        !cluster_scoped(resource),
                        "values {values:?}: a Role cannot grant the cluster-scoped {resource}"
                    );
                }
            }
        }
    }
}

#[path = "chart/ops.rs"]
mod ops;

/// Issue 22: the release publishes a krew manifest for `kubectl keysmith`, one platform per
/// plugin archive with its sha256 (scripts/krew-manifest.sh, called by release.yml).
#[test]
fn the_krew_manifest_names_each_plugin_archive_with_its_checksum() {
    use sha2::Digest;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dist = std::env::temp_dir().join(format!("krew-{}", std::process::id()));
    std::fs::create_dir_all(&dist).unwrap();
    let mut sums = std::collections::BTreeMap::new();
    for (target, arch) in [
        ("x86_64-unknown-linux-gnu", "amd64"),
        ("aarch64-unknown-linux-gnu", "arm64"),
    ] {
        let file = format!("kubectl-keysmith-9.8.7-{target}.tar.gz");
        let bytes = format!("archive for {target}").into_bytes();
        std::fs::write(dist.join(&file), &bytes).unwrap();
        sums.insert(arch, (file, hex::encode(sha2::Sha256::digest(&bytes))));
    }
    let out = std::process::Command::new(root.join("scripts/krew-manifest.sh"))
        .args(["9.8.7", dist.to_str().unwrap(), "keysmith/keysmith"])
        .output()
        .expect("the script runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("YAML");
    assert_eq!(m["kind"], "Plugin");
    assert_eq!(m["metadata"]["name"], "keysmith");
    assert_eq!(m["spec"]["version"], "v9.8.7");
    let platforms = m["spec"]["platforms"].as_sequence().unwrap();
    assert_eq!(platforms.len(), 2);
    for p in platforms {
        let arch = p["selector"]["matchLabels"]["arch"].as_str().unwrap();
        let (file, sum) = &sums[arch];
        assert_eq!(p["sha256"].as_str(), Some(sum.as_str()), "{arch}");
        assert_eq!(
            p["uri"].as_str().unwrap(),
            format!("https://github.com/keysmith/keysmith/releases/download/v9.8.7/{file}")
        );
        assert_eq!(p["bin"], "kubectl-keysmith");
    }
    // The release workflow builds the plugin and publishes the manifest.
    let release = std::fs::read_to_string(root.join(".github/workflows/release.yml")).unwrap();
    assert!(release.contains("--bin kubectl-keysmith"));
    assert!(release.contains("scripts/krew-manifest.sh"));
    let _ = std::fs::remove_dir_all(&dist);
}
