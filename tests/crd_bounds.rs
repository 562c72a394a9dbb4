//! Issue 17 item 2: everything a tenant writes in an ApiKey, KeyProvider or ClusterKeyProvider
//! spec is bounded in the CRD, so the API server refuses an object too large for the
//! operator's watch cache before the operator sees it: every string has a `maxLength` (or an
//! `enum`), every list a `maxItems`, every map a `maxProperties`.

use serde_json::Value;

fn spec_schema(kind: &str) -> Value {
    let crd = keysmith::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("CRD exists");
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    schema["properties"]["spec"].clone()
}

/// Paths of the unbounded strings, lists and maps under `s`.
fn unbounded(path: &str, s: &Value, out: &mut Vec<String>) {
    let has = |k: &str| s.get(k).is_some();
    match s.get("type").and_then(Value::as_str) {
        Some("string") if !has("maxLength") && !has("enum") => out.push(path.to_string()),
        Some("array") if !has("maxItems") => out.push(format!("{path}[]")),
        Some("object") | None
            if (has("additionalProperties")
                || s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)))
                && !has("maxProperties") =>
        {
            out.push(format!("{path}{{}}"))
        }
        _ => {}
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            unbounded(&format!("{path}.{k}"), v, out);
        }
    }
    if let Some(items) = s.get("items") {
        unbounded(&format!("{path}[]"), items, out);
    }
    if let Some(ap) = s.get("additionalProperties").filter(|v| v.is_object()) {
        unbounded(&format!("{path}{{}}"), ap, out);
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        if let Some(alts) = s.get(k).and_then(Value::as_array) {
            for a in alts {
                unbounded(path, a, out);
            }
        }
    }
}

#[test]
fn every_string_list_and_map_of_a_spec_is_bounded() {
    let mut missing = Vec::new();
    for kind in ["ApiKey", "KeyProvider", "ClusterKeyProvider"] {
        unbounded(&format!("{kind}.spec"), &spec_schema(kind), &mut missing);
    }
    assert!(missing.is_empty(), "unbounded: {missing:#?}");
}
