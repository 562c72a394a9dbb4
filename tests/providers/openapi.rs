//! Conformance checks against a provider's own OpenAPI description (`tests/specs/*.yaml`).
//!
//! [`validate_response`] and [`validate_request`] find an operation by path template and method,
//! take its JSON schema (following local `$ref`s into the document) and validate a body with the
//! `jsonschema` crate (draft 2020-12, formats checked). OpenAPI 3.1 schemas are JSON Schema
//! 2020-12 already; 3.0 ones are converted first: `nullable: true` becomes a type union with
//! `"null"` (or an `anyOf` with `{"type": "null"}` when there is no `type`), and boolean
//! `exclusiveMinimum`/`exclusiveMaximum` become their numeric form.
//!
//! Response lookup order: the exact status (`"201"`), its class (`"2XX"`), then `default`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

/// Validate a response body of `method path_template` with `status` against the spec.
pub fn validate_response(
    spec_yaml_path: &str,
    path_template: &str,
    method: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), String> {
    let spec = load(spec_yaml_path)?;
    let what = format!("{} {path_template} → {status}", method.to_uppercase());
    let op = operation(&spec, path_template, method).map_err(|e| format!("{what}: {e}"))?;
    let responses = op
        .get("responses")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{what}: the operation declares no responses"))?;
    let class = format!("{}XX", status / 100);
    let response = [status.to_string(), class.clone(), class.to_lowercase()]
        .iter()
        .chain(std::iter::once(&"default".to_string()))
        .find_map(|k| responses.get(k.as_str()))
        .ok_or_else(|| {
            format!(
                "{what}: status {status} is not declared (declared: {})",
                responses.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
    let response = resolve(&spec, response).map_err(|e| format!("{what}: {e}"))?;
    match json_schema(&spec, response).map_err(|e| format!("{what}: {e}"))? {
        Some(schema) => validate(&spec, schema, body).map_err(|e| format!("{what}: {e}")),
        None if body.is_null() => Ok(()),
        None => Err(format!(
            "{what}: the spec declares no JSON body for this response, got {body}"
        )),
    }
}

/// Validate a request body of `method path_template` against the spec.
pub fn validate_request(
    spec_yaml_path: &str,
    path_template: &str,
    method: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let spec = load(spec_yaml_path)?;
    let what = format!("{} {path_template} request", method.to_uppercase());
    let op = operation(&spec, path_template, method).map_err(|e| format!("{what}: {e}"))?;
    let Some(request_body) = op.get("requestBody") else {
        return if body.is_null() {
            Ok(())
        } else {
            Err(format!("{what}: the operation takes no request body"))
        };
    };
    let request_body = resolve(&spec, request_body).map_err(|e| format!("{what}: {e}"))?;
    let required = request_body
        .get("required")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if body.is_null() {
        return if required {
            Err(format!("{what}: a body is required"))
        } else {
            Ok(())
        };
    }
    match json_schema(&spec, request_body).map_err(|e| format!("{what}: {e}"))? {
        Some(schema) => validate(&spec, schema, body).map_err(|e| format!("{what}: {e}")),
        None => Err(format!("{what}: the spec declares no JSON request body")),
    }
}

/// Parsed (and, for 3.0, converted) specs by path, parsed once per test binary.
fn load(spec_yaml_path: &str) -> Result<Arc<Value>, String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Value>>>> = OnceLock::new();
    let mut path = PathBuf::from(spec_yaml_path);
    if path.is_relative() && !path.exists() {
        path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    }
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().unwrap().get(&path) {
        return Ok(s.clone());
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{} is not YAML: {e}", path.display()))?;
    let mut spec = yaml_to_json(yaml);
    let version = spec
        .get("openapi")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if version.starts_with("3.0") {
        openapi30_to_json_schema(&mut spec);
    } else if !version.starts_with("3.1") {
        return Err(format!(
            "{}: unsupported OpenAPI version {version:?}",
            path.display()
        ));
    }
    let spec = Arc::new(spec);
    cache.lock().unwrap().insert(path, spec.clone());
    Ok(spec)
}

/// YAML to JSON, with non-string keys (`200:`) turned into strings.
fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                n.as_f64().map(|f| json!(f)).unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(s) => Value::Array(s.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Y::String(s) => s,
                        other => match yaml_to_json(other) {
                            Value::String(s) => s,
                            v => v.to_string(),
                        },
                    };
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

/// OpenAPI 3.0 schema dialect → JSON Schema 2020-12, in place, everywhere in the document.
fn openapi30_to_json_schema(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(openapi30_to_json_schema),
        Value::Object(map) => {
            map.values_mut().for_each(openapi30_to_json_schema);
            for (excl, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if let Some(Value::Bool(b)) = map.get(excl).cloned() {
                    map.remove(excl);
                    if b {
                        if let Some(n) = map.remove(bound) {
                            map.insert(excl.into(), n);
                        }
                    }
                }
            }
            match map.get("nullable") {
                Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => {
                    map.remove("nullable");
                    return;
                }
                _ => return,
            }
            map.remove("nullable");
            if let Some(Value::Array(e)) = map.get_mut("enum") {
                if !e.contains(&Value::Null) {
                    e.push(Value::Null);
                }
            }
            match map.get_mut("type") {
                Some(Value::String(t)) => {
                    let t = t.clone();
                    map.insert("type".into(), json!([t, "null"]));
                }
                Some(Value::Array(ts)) => {
                    if !ts.contains(&json!("null")) {
                        ts.push(json!("null"));
                    }
                }
                _ => {
                    let inner = std::mem::take(map);
                    map.insert(
                        "anyOf".into(),
                        json!([Value::Object(inner), {"type": "null"}]),
                    );
                }
            }
        }
        _ => {}
    }
}

fn operation<'a>(spec: &'a Value, path_template: &str, method: &str) -> Result<&'a Value, String> {
    let paths = spec
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the spec has no paths")?;
    let item = paths.get(path_template).ok_or_else(|| {
        format!(
            "path {path_template:?} is not in the spec (paths: {})",
            paths.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let item = resolve(spec, item)?;
    item.get(method.to_lowercase().as_str())
        .ok_or_else(|| format!("no {} operation on {path_template}", method.to_uppercase()))
}

/// Follow `$ref`s (local ones: `#/…`) until an object without one.
fn resolve<'a>(spec: &'a Value, mut v: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..32 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        v = pointer(spec, r)?;
    }
    Err("$ref chain too long (a cycle?)".into())
}

fn pointer<'a>(spec: &'a Value, r: &str) -> Result<&'a Value, String> {
    let p = r
        .strip_prefix('#')
        .ok_or_else(|| format!("$ref {r:?} is not local to the document"))?;
    spec.pointer(p)
        .ok_or_else(|| format!("$ref {r:?} points at nothing"))
}

/// The JSON schema of a response or request body object (`content.application/json.schema`).
fn json_schema<'a>(spec: &'a Value, holder: &'a Value) -> Result<Option<&'a Value>, String> {
    let Some(content) = holder.get("content").and_then(Value::as_object) else {
        return Ok(None);
    };
    let media = content
        .get("application/json")
        .or_else(|| {
            content
                .iter()
                .find(|(k, _)| k.contains("json"))
                .map(|(_, v)| v)
        })
        .ok_or_else(|| {
            format!(
                "no JSON content (content types: {})",
                content.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
    let media = resolve(spec, media)?;
    Ok(media.get("schema"))
}

/// Validate with the document's `components` (and `paths`, for `$ref`s into them) embedded next
/// to the schema, so `#/components/...` references resolve as in the spec, cycles included.
fn validate(spec: &Value, schema: &Value, body: &Value) -> Result<(), String> {
    let mut root = Map::new();
    root.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    root.insert("allOf".into(), json!([schema]));
    for k in ["components", "paths"] {
        if let Some(v) = spec.get(k) {
            root.insert(k.into(), v.clone());
        }
    }
    let root = Value::Object(root);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("the spec's schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENROUTER: &str = "tests/specs/openrouter-keys.openapi.yaml";

    #[test]
    fn finds_operations_and_follows_refs() {
        let err = json!({"error": {"code": 404, "message": "Resource not found"}});
        validate_response(OPENROUTER, "/keys/{hash}", "GET", 404, &err).unwrap();
        // The referenced ErrorData requires a message.
        let bad = json!({"error": {"code": 404}});
        let e = validate_response(OPENROUTER, "/keys/{hash}", "GET", 404, &bad).unwrap_err();
        assert!(e.contains("message"), "{e}");
        let e = validate_response(OPENROUTER, "/keys/{hash}", "GET", 418, &err).unwrap_err();
        assert!(e.contains("not declared"), "{e}");
        let e = validate_response(OPENROUTER, "/nope", "GET", 200, &err).unwrap_err();
        assert!(e.contains("not in the spec"), "{e}");
        validate_response(
            OPENROUTER,
            "/keys/{hash}",
            "delete",
            200,
            &json!({"deleted": true}),
        )
        .unwrap();
        assert!(validate_response(
            OPENROUTER,
            "/keys/{hash}",
            "DELETE",
            200,
            &json!({"deleted": false})
        )
        .is_err());
    }

    #[test]
    fn required_fields_of_inline_schemas_are_enforced() {
        let mut created = json!({
            "data": {
                "hash": "f01d52606dc8f0a8303a7b5cc3fa07109c2e346cec7c0a16b40de462992ce943",
                "name": "k", "label": "sk-or-v1-0e6...1c96", "disabled": false,
                "limit": null, "limit_remaining": null, "limit_reset": null,
                "include_byok_in_limit": false, "usage": 0, "usage_daily": 0,
                "usage_weekly": 0, "usage_monthly": 0, "byok_usage": 0,
                "byok_usage_daily": 0, "byok_usage_weekly": 0, "byok_usage_monthly": 0,
                "created_at": "2025-08-24T10:30:00Z", "updated_at": null,
                "expires_at": null, "creator_user_id": null,
                "workspace_id": "0df9e665-d932-5740-b2c7-b52af166bc11"
            },
            "key": "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"
        });
        validate_response(OPENROUTER, "/keys", "POST", 201, &created).unwrap();
        created["data"].as_object_mut().unwrap().remove("label");
        let e = validate_response(OPENROUTER, "/keys", "POST", 201, &created).unwrap_err();
        assert!(e.contains("label"), "{e}");
        created["data"]["label"] = json!("x");
        created["data"]["expires_at"] = json!("next year");
        let e = validate_response(OPENROUTER, "/keys", "POST", 201, &created).unwrap_err();
        assert!(e.contains("date-time"), "{e}");
    }

    /// Every declared response of both vendored specs compiles to a validator (refs resolve,
    /// the 3.0 dialect converts).
    #[test]
    fn every_operation_of_the_vendored_specs_compiles() {
        for path in [
            OPENROUTER,
            "tests/specs/digitalocean-genai-keys.openapi.yaml",
        ] {
            let spec = load(path).unwrap();
            let mut checked = 0;
            for (template, item) in spec["paths"].as_object().unwrap() {
                for (method, op) in item.as_object().unwrap() {
                    let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                        continue;
                    };
                    for status in responses.keys().filter_map(|s| s.parse::<u16>().ok()) {
                        if let Err(e) =
                            validate_response(path, template, method, status, &json!({}))
                        {
                            assert!(!e.contains("does not compile"), "{e}");
                            assert!(!e.contains("$ref"), "{e}");
                        }
                        checked += 1;
                    }
                }
            }
            assert!(checked > 10, "{path}: only {checked} responses");
        }
    }

    #[test]
    fn requests_are_checked() {
        validate_request(OPENROUTER, "/keys", "POST", &json!({"name": "a"})).unwrap();
        for bad in [
            json!({}),
            json!({"name": ""}),
            json!({"name": "a", "limit_reset": "yearly"}),
            json!({"name": "a", "expires_at": "tomorrow"}),
            json!({"name": "a", "workspace_id": "default"}),
            Value::Null,
        ] {
            assert!(
                validate_request(OPENROUTER, "/keys", "POST", &bad).is_err(),
                "{bad}"
            );
        }
        validate_request(
            OPENROUTER,
            "/keys/{hash}",
            "PATCH",
            &json!({"limit": null, "limit_reset": null}),
        )
        .unwrap();
        assert!(validate_request(OPENROUTER, "/keys", "GET", &json!({"a": 1})).is_err());
        validate_request(OPENROUTER, "/keys", "GET", &Value::Null).unwrap();
    }

    #[test]
    fn openapi_30_nullable_becomes_a_type_union() {
        let dir = std::env::temp_dir().join(format!("keysmith-openapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spec30.yaml");
        std::fs::write(
            &path,
            r#"
openapi: 3.0.0
paths:
  /things/{id}:
    get:
      responses:
        200:
          content:
            application/json:
              schema:
                $ref: '#/components/schemas/Thing'
        default:
          description: error
components:
  schemas:
    Thing:
      type: object
      required: [name, size, kind, parent]
      properties:
        name: { type: string, nullable: true }
        size: { type: integer, minimum: 0, exclusiveMinimum: true }
        kind: { type: string, enum: [a, b], nullable: true }
        parent:
          nullable: true
          allOf: [ { $ref: '#/components/schemas/Ref' } ]
    Ref:
      type: object
      required: [id]
      properties: { id: { type: string } }
"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let ok = json!({"name": null, "size": 1, "kind": null, "parent": null});
        validate_response(p, "/things/{id}", "GET", 200, &ok).unwrap();
        let ok = json!({"name": "x", "size": 1, "kind": "a", "parent": {"id": "p"}});
        validate_response(p, "/things/{id}", "GET", 200, &ok).unwrap();
        for bad in [
            json!({"name": 1, "size": 1, "kind": null, "parent": null}),
            json!({"name": null, "size": 0, "kind": null, "parent": null}),
            json!({"name": null, "size": 1, "kind": "c", "parent": null}),
            json!({"name": null, "size": 1, "kind": null, "parent": {}}),
        ] {
            assert!(
                validate_response(p, "/things/{id}", "GET", 200, &bad).is_err(),
                "{bad}"
            );
        }
        // `default` without content: only an empty body fits.
        validate_response(p, "/things/{id}", "GET", 500, &Value::Null).unwrap();
        assert!(validate_response(p, "/things/{id}", "GET", 500, &json!({})).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
