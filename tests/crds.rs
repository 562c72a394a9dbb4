//! The CRDs' schemas and CEL rules (`x-kubernetes-validations`), evaluated client-side with
//! kube's CEL validator, plus the structural facts `kubectl` relies on (printer columns,
//! status subresource, descriptions).

use kube::core::cel;
use serde_json::{json, Value};

fn schema_of(kind: &str) -> Value {
    let crd = keysmith::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("CRD exists");
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn check(kind: &str, obj: Value, old: Option<Value>) -> Result<(), Vec<String>> {
    cel::Validator::new()
        .validate(&schema_of(kind), &obj, old.as_ref())
        .map_err(|e| e.into_vec().into_iter().map(|e| e.message).collect())
}

fn apikey(spec: Value) -> Value {
    json!({"apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey", "metadata": {"name": "k", "namespace": "a"}, "spec": spec})
}

fn provider(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "keysmith.dev/v1alpha1", "kind": kind, "metadata": {"name": "p"}, "spec": spec})
}

fn openrouter() -> Value {
    json!({"managementKeySecretRef": {"name": "m", "key": "token"}})
}

#[test]
fn a_provider_needs_exactly_one_provider_block() {
    for kind in ["KeyProvider", "ClusterKeyProvider"] {
        assert!(check(
            kind,
            provider(kind, json!({"openrouter": openrouter()})),
            None
        )
        .is_ok());
        let none = check(kind, provider(kind, json!({})), None).unwrap_err();
        assert!(
            none.iter()
                .any(|m| m.contains("exactly one provider block")),
            "{none:?}"
        );
        let two = json!({"openrouter": openrouter(), "digitalocean": {"tokenSecretRef": {"name": "t", "key": "token"}}});
        assert!(check(kind, provider(kind, two), None)
            .unwrap_err()
            .iter()
            .any(|m| m.contains("exactly one")));
    }
}

#[test]
fn only_a_cluster_provider_takes_a_namespace_selector() {
    let spec =
        json!({"openrouter": openrouter(), "namespaceSelector": {"matchLabels": {"team": "ai"}}});
    assert!(check(
        "ClusterKeyProvider",
        provider("ClusterKeyProvider", spec.clone()),
        None
    )
    .is_ok());
    let err = check("KeyProvider", provider("KeyProvider", spec), None).unwrap_err();
    assert!(
        err.iter()
            .any(|m| m.contains("namespaceSelector is for ClusterKeyProvider")),
        "{err:?}"
    );
}

#[test]
fn only_a_cluster_provider_limits_adoption_to_namespaces() {
    let spec = json!({"openrouter": openrouter(), "adoption": {"allowed": true,
        "namespaceSelector": {"matchLabels": {"team": "ai"}}}});
    assert!(check(
        "ClusterKeyProvider",
        provider("ClusterKeyProvider", spec.clone()),
        None
    )
    .is_ok());
    let err = check("KeyProvider", provider("KeyProvider", spec), None).unwrap_err();
    assert!(
        err.iter()
            .any(|m| m.contains("adoption.namespaceSelector is for ClusterKeyProvider")),
        "{err:?}"
    );
    let off = json!({"openrouter": openrouter(), "adoption": {"allowed": false}});
    assert!(check("KeyProvider", provider("KeyProvider", off), None).is_ok());
}

#[test]
fn refresh_interval_and_rate_limit_are_checked() {
    let spec = json!({"openrouter": openrouter(), "refreshInterval": "1s"});
    assert!(check("KeyProvider", provider("KeyProvider", spec), None)
        .unwrap_err()
        .iter()
        .any(|m| m.contains("at least 10s")));
    let spec = json!({"openrouter": openrouter(), "refreshInterval": "5m", "rateLimit": {"requestsPerSecond": 0.0}});
    assert!(check("KeyProvider", provider("KeyProvider", spec), None)
        .unwrap_err()
        .iter()
        .any(|m| m.contains("positive")));
    let spec = json!({"openrouter": openrouter(), "refreshInterval": "5m", "rateLimit": {"requestsPerSecond": 0.5, "burst": 2}});
    assert!(check("KeyProvider", provider("KeyProvider", spec), None).is_ok());
}

#[test]
fn apikey_field_rules() {
    let base = json!({"providerRef": {"name": "openrouter"}});
    assert!(check("ApiKey", apikey(base.clone()), None).is_ok());

    let both =
        json!({"providerRef": {"name": "o"}, "expiresAt": "2027-01-01T00:00:00Z", "ttl": "720h"});
    assert!(check("ApiKey", apikey(both), None)
        .unwrap_err()
        .iter()
        .any(|m| m.contains("expiresAt or ttl")));

    let bad_ttl = json!({"providerRef": {"name": "o"}, "ttl": "-5m"});
    assert!(check("ApiKey", apikey(bad_ttl), None)
        .unwrap_err()
        .iter()
        .any(|m| m.contains("ttl must be a positive")));

    let adopt_and_push = json!({"providerRef": {"name": "o"}, "keyRef": {"id": "x"}, "source": {"secretRef": {"name": "s", "key": "k"}}});
    assert!(check("ApiKey", apikey(adopt_and_push), None)
        .unwrap_err()
        .iter()
        .any(|m| m.contains("exclude each other")));

    let two_blocks = json!({"providerRef": {"name": "o"}, "openrouter": {}, "boltz": {}});
    assert!(check("ApiKey", apikey(two_blocks), None)
        .unwrap_err()
        .iter()
        .any(|m| m.contains("at most one provider-specific block")));

    let provisional =
        json!({"providerRef": {"name": "o"}, "displayName": "keysmith-attempt-0123456789abcdef"});
    assert!(check("ApiKey", apikey(provisional), None)
        .unwrap_err()
        .iter()
        .any(|m| m.contains("provisional key names")));
    let named = json!({"providerRef": {"name": "o"}, "displayName": "team-a keysmith-attempt-1"});
    assert!(check("ApiKey", apikey(named), None).is_ok());

    for amount in ["75", "12.50", "0.05"] {
        let ok = json!({"providerRef": {"name": "o"}, "limit": {"amount": amount}});
        assert!(check("ApiKey", apikey(ok), None).is_ok(), "{amount}");
    }
    for amount in ["-1", "1e3", "ten", "1."] {
        let bad = json!({"providerRef": {"name": "o"}, "limit": {"amount": amount}});
        assert!(
            check("ApiKey", apikey(bad), None)
                .unwrap_err()
                .iter()
                .any(|m| m.contains("non-negative decimal")),
            "{amount}"
        );
    }
}

#[test]
fn apikey_transition_rules() {
    let old = apikey(
        json!({"providerRef": {"name": "openrouter"}, "keyRef": {"id": "a"}, "secret": {"name": "s"}}),
    );
    let same = old.clone();
    assert!(check("ApiKey", same, Some(old.clone())).is_ok());

    let moved = apikey(
        json!({"providerRef": {"name": "other"}, "keyRef": {"id": "a"}, "secret": {"name": "s"}}),
    );
    assert!(check("ApiKey", moved, Some(old.clone()))
        .unwrap_err()
        .iter()
        .any(|m| m.contains("providerRef is immutable")));

    let rekeyed = apikey(
        json!({"providerRef": {"name": "openrouter"}, "keyRef": {"id": "b"}, "secret": {"name": "s"}}),
    );
    assert!(check("ApiKey", rekeyed, Some(old.clone()))
        .unwrap_err()
        .iter()
        .any(|m| m.contains("keyRef is immutable")));

    let unadopted = apikey(json!({"providerRef": {"name": "openrouter"}, "secret": {"name": "s"}}));
    assert!(check("ApiKey", unadopted, Some(old.clone()))
        .unwrap_err()
        .iter()
        .any(|m| m.contains("keyRef is immutable")));

    let renamed = apikey(
        json!({"providerRef": {"name": "openrouter"}, "keyRef": {"id": "a"}, "secret": {"name": "t"}}),
    );
    assert!(check("ApiKey", renamed, Some(old))
        .unwrap_err()
        .iter()
        .any(|m| m.contains("secret.name is immutable")));
}

#[test]
fn every_field_is_described_for_kubectl_explain() {
    fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                let structural = matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                if !structural
                    && p.get("description").is_none()
                    && !path.contains("conditions")
                    && !path.contains("Selector")
                {
                    missing.push(here.clone());
                }
                walk(&here, p, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    for kind in ["ApiKey", "KeyProvider", "ClusterKeyProvider"] {
        let mut missing = Vec::new();
        walk(kind, &schema_of(kind)["properties"]["spec"], &mut missing);
        assert!(
            missing.is_empty(),
            "{kind} fields without a description: {missing:?}"
        );
    }
}

#[test]
fn kubectl_get_shows_provider_ready_key_last_used_and_age() {
    let crd = keysmith::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "ApiKey")
        .unwrap();
    let v = &crd.spec.versions[0];
    let cols: Vec<String> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    for want in [
        "Provider",
        "Ready",
        "Key",
        "Last Used",
        "Next Rotation",
        "Age",
    ] {
        assert!(cols.contains(&want.to_string()), "{cols:?}");
    }
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
    for c in keysmith::api::crds() {
        assert_eq!(c.spec.group, "keysmith.dev");
        assert_eq!(c.spec.versions[0].name, "v1alpha1");
    }
}

fn rotation_errors(spec: Value) -> Vec<String> {
    check("ApiKey", apikey(spec), None)
        .err()
        .unwrap_or_default()
}

fn rejects(spec: Value, message: &str) {
    let errs = rotation_errors(spec.clone());
    assert!(
        errs.iter().any(|m| m.contains(message)),
        "{spec}: expected {message:?}, got {errs:?}"
    );
}

#[test]
fn rotation_rules() {
    let ok = [
        json!({"providerRef": {"name": "o"}, "rotation": {}}),
        json!({"providerRef": {"name": "o"}, "rotation": {"every": "720h", "renewBefore": "72h", "gracePeriod": "1h"}}),
        json!({"providerRef": {"name": "o"}, "rotation": {"every": "2h"}}),
        json!({"providerRef": {"name": "o"}, "ttl": "720h", "rotation": {"renewBefore": "72h", "gracePeriod": "0s"}}),
        json!({"providerRef": {"name": "d"}, "keyRef": {"id": "x"}, "rotation": {"allowDowntime": true}}),
        json!({"providerRef": {"name": "b"}, "source": {"secretRef": {"name": "s", "key": "k"}}, "rotation": {"gracePeriod": "10m"}}),
    ];
    for spec in ok {
        assert!(
            rotation_errors(spec.clone()).is_empty(),
            "{spec}: {:?}",
            rotation_errors(spec.clone())
        );
    }
    let o = |rotation: Value| json!({"providerRef": {"name": "o"}, "rotation": rotation});
    rejects(
        o(json!({"every": "30m"})),
        "gracePeriod (default 1h) must be shorter than rotation.every",
    );
    rejects(
        o(json!({"every": "2h", "gracePeriod": "2h"})),
        "must be shorter than rotation.every",
    );
    rejects(
        o(json!({"every": "2h", "renewBefore": "3h", "gracePeriod": "1m"})),
        "renewBefore must be shorter than rotation.every",
    );
    rejects(
        o(json!({"every": "30s", "gracePeriod": "0s"})),
        "between 1m and 8760h",
    );
    rejects(o(json!({"every": "9000h"})), "between 1m and 8760h");
    rejects(o(json!({"renewBefore": "10s"})), "between 1m and 8760h");
    rejects(o(json!({"gracePeriod": "-1m"})), "between 0s and 720h");
    rejects(o(json!({"gracePeriod": "721h"})), "between 0s and 720h");
    rejects(
        json!({"providerRef": {"name": "o"}, "ttl": "24h", "rotation": {"renewBefore": "48h"}}),
        "renewBefore must be shorter than ttl",
    );
    rejects(
        json!({"providerRef": {"name": "b"}, "source": {"secretRef": {"name": "s", "key": "k"}}, "rotation": {"every": "720h"}}),
        "rotates when its source Secret changes",
    );
}

#[test]
fn rollout_restart_target_rules() {
    let with =
        |targets: Value| json!({"providerRef": {"name": "o"}, "rolloutRestartTargets": targets});
    assert!(rotation_errors(with(json!([
        {"kind": "Deployment", "name": "chat"},
        {"kind": "StatefulSet", "name": "chat"},
        {"kind": "DaemonSet", "name": "agent.v2"}
    ])))
    .is_empty());
    rejects(
        with(
            json!([{"kind": "Deployment", "name": "chat"}, {"kind": "Deployment", "name": "chat"}]),
        ),
        "must not list a workload twice",
    );
    for bad in ["Chat", "-chat", "chat_1", "chat.", "a..b"] {
        rejects(
            with(json!([{"kind": "Deployment", "name": bad}])),
            "DNS-1123 subdomain",
        );
    }
    // The schema limits the kind to the three workloads and the list to 16 entries.
    let schema = schema_of("ApiKey");
    let targets = &schema["properties"]["spec"]["properties"]["rolloutRestartTargets"];
    assert_eq!(targets["maxItems"], json!(16));
    let kinds = &targets["items"]["properties"]["kind"]["enum"];
    assert_eq!(kinds, &json!(["Deployment", "StatefulSet", "DaemonSet"]));
    assert_eq!(
        targets["items"]["properties"]["name"]["maxLength"],
        json!(253)
    );
}

/// Every `format` in the CRDs is one the API server knows (k8s.io/apiextensions-apiserver
/// `validation/formats.go`): an unknown one (e.g. schemars' `uint32`) makes every
/// `kubectl apply` / `helm install` print `Warning: unrecognized format`. Integers carry an
/// explicit int32/int64 and, when the Rust type is unsigned, a `minimum`.
#[test]
fn crds_use_only_formats_kubernetes_knows() {
    const KNOWN: &[&str] = &[
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "byte",
        "password",
        "date",
        "duration",
        "datetime",
        "date-time",
        "int32",
        "int64",
        "float",
        "double",
    ];
    fn walk(path: &str, v: &Value, bad: &mut Vec<String>, ints: &mut usize) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(f)) = m.get("format") {
                    if !KNOWN.contains(&f.as_str()) {
                        bad.push(format!("{path}: format {f:?}"));
                    }
                    if f == "int32" || f == "int64" {
                        *ints += 1;
                    }
                }
                for (k, c) in m {
                    walk(&format!("{path}.{k}"), c, bad, ints);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(path, c, bad, ints)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    let mut ints = 0;
    for crd in keysmith::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        walk(
            &name,
            &serde_json::to_value(&crd).unwrap(),
            &mut bad,
            &mut ints,
        );
    }
    assert!(ints > 0, "the walk reached the schemas");
    assert!(bad.is_empty(), "formats Kubernetes does not know: {bad:#?}");

    // the two fields that used to be `uint32` keep their bounds
    let burst = &schema_of("KeyProvider")["properties"]["spec"]["properties"]["rateLimit"]
        ["properties"]["burst"];
    assert_eq!(burst["format"], "int32");
    assert_eq!(burst["minimum"].as_f64(), Some(1.0));
    assert_eq!(burst["maximum"].as_f64(), Some(10000.0));
    let failures = &schema_of("ApiKey")["properties"]["status"]["properties"]["createBackoff"]
        ["properties"]["failures"];
    assert_eq!(failures["format"], "int64");
    assert_eq!(failures["minimum"].as_f64(), Some(0.0));
    assert_eq!(failures["maximum"].as_f64(), Some(u32::MAX as f64));
}

#[test]
fn a_ca_bundle_names_exactly_one_source() {
    let with = |bundle: Value| {
        let spec = json!({"openrouter": openrouter(), "caBundle": bundle});
        check("KeyProvider", provider("KeyProvider", spec), None)
    };
    assert!(with(json!({"configMapRef": {"name": "ca", "key": "ca.crt"}})).is_ok());
    assert!(with(json!({"secretRef": {"name": "ca", "key": "ca.crt"}})).is_ok());
    for bad in [
        json!({}),
        json!({"configMapRef": {"name": "ca", "key": "ca.crt"}, "secretRef": {"name": "ca", "key": "ca.crt"}}),
    ] {
        assert!(
            with(bad.clone())
                .unwrap_err()
                .iter()
                .any(|m| m.contains("exactly one of secretRef and configMapRef")),
            "{bad}"
        );
    }
}
