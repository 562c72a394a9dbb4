//! Validation of bodies against a provider's OpenAPI 3.0 description (`tests/specs/`).
//!
//! The operation's schema is converted to JSON Schema (draft 4, which OpenAPI 3.0's schema object
//! follows): `nullable: true` becomes a `null` alternative, and the spec's `components` ride along
//! in the document so that local `$ref`s (`#/components/schemas/X`) resolve. Formats
//! (`date-time`, …) are checked; unknown ones (`uint64`) are ignored.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

/// Parsed specs by path (each file is read once per test run).
fn spec(path: &str) -> Result<Arc<Value>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Value>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(path) {
        return Ok(v.clone());
    }
    let full = if std::path::Path::new(path).is_absolute() {
        std::path::PathBuf::from(path)
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    };
    let text = std::fs::read_to_string(&full)
        .map_err(|e| format!("cannot read {}: {e}", full.display()))?;
    let v: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{} is not YAML: {e}", full.display()))?;
    let v = Arc::new(v);
    cache.lock().unwrap().insert(path.to_string(), v.clone());
    Ok(v)
}

/// OpenAPI 3.0 schema → JSON Schema draft 4: `nullable`, and the OpenAPI-only keywords dropped.
fn convert(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match k.as_str() {
                    "nullable" | "example" | "deprecated" | "discriminator" | "xml"
                    | "externalDocs" | "readOnly" | "writeOnly" => {}
                    k if k.starts_with("x-") => {}
                    "properties" | "patternProperties" | "definitions" => {
                        let props = v
                            .as_object()
                            .map(|p| p.iter().map(|(n, s)| (n.clone(), convert(s))).collect())
                            .unwrap_or_default();
                        out.insert(k.to_string(), Value::Object(props));
                    }
                    "items" | "additionalProperties" | "not" => {
                        out.insert(k.to_string(), convert(v));
                    }
                    "allOf" | "anyOf" | "oneOf" => {
                        let list = v
                            .as_array()
                            .map(|a| a.iter().map(convert).collect())
                            .unwrap_or_default();
                        out.insert(k.to_string(), Value::Array(list));
                    }
                    _ => {
                        out.insert(k.to_string(), v.clone());
                    }
                }
            }
            if m.get("nullable") == Some(&Value::Bool(true)) {
                return nullable(out);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn nullable(mut s: Map<String, Value>) -> Value {
    if let Some(e) = s.get_mut("enum").and_then(Value::as_array_mut) {
        if !e.contains(&Value::Null) {
            e.push(Value::Null);
        }
    }
    match s.get("type").cloned() {
        Some(Value::String(t)) => {
            s.insert("type".into(), json!([t, "null"]));
            Value::Object(s)
        }
        Some(Value::Array(mut ts)) => {
            if !ts.contains(&json!("null")) {
                ts.push(json!("null"));
            }
            s.insert("type".into(), Value::Array(ts));
            Value::Object(s)
        }
        _ => json!({ "anyOf": [Value::Object(s), { "type": "null" }] }),
    }
}

/// The spec's components with its schemas converted, so `#/components/schemas/X` pointers
/// resolve inside the validated document. (Responses, parameters and request bodies are
/// dereferenced before validation, so only schemas are reached through `$ref` there.)
fn components(spec: &Value) -> Value {
    let mut out = spec
        .get("components")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(schemas) = out.get("schemas").and_then(Value::as_object) {
        let converted: Map<String, Value> = schemas
            .iter()
            .map(|(n, s)| (n.clone(), convert(s)))
            .collect();
        out.insert("schemas".into(), Value::Object(converted));
    }
    Value::Object(out)
}

/// Follow a local `$ref` (`#/components/...`) in the spec.
fn deref<'a>(spec: &'a Value, v: &'a Value) -> Result<&'a Value, String> {
    let mut cur = v;
    for _ in 0..16 {
        match cur.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .ok_or_else(|| format!("only local $refs are supported: {r}"))?;
                cur = spec
                    .pointer(pointer)
                    .ok_or_else(|| format!("$ref {r} does not resolve"))?;
            }
            None => return Ok(cur),
        }
    }
    Err("$ref chain too long".into())
}

fn operation<'a>(spec: &'a Value, path_template: &str, method: &str) -> Result<&'a Value, String> {
    let item = spec
        .get("paths")
        .and_then(|p| p.get(path_template))
        .ok_or_else(|| format!("the spec has no path {path_template}"))?;
    let item = deref(spec, item)?;
    item.get(method.to_ascii_lowercase())
        .ok_or_else(|| format!("the spec has no {method} {path_template}"))
}

/// The JSON schema of a media-type map (`content`), preferring `application/json`.
fn json_schema<'a>(spec: &'a Value, holder: &'a Value) -> Result<Option<&'a Value>, String> {
    let holder = deref(spec, holder)?;
    let Some(content) = holder.get("content").and_then(Value::as_object) else {
        return Ok(None);
    };
    let media = content.get("application/json").or_else(|| {
        content
            .iter()
            .find(|(k, _)| k.contains("json"))
            .map(|(_, v)| v)
    });
    Ok(media.and_then(|m| m.get("schema")))
}

fn check(spec: &Value, schema: &Value, body: &Value, what: &str) -> Result<(), String> {
    let mut doc = Map::new();
    doc.insert("allOf".into(), json!([convert(schema)]));
    doc.insert("components".into(), components(spec));
    let doc = Value::Object(doc);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&doc)
        .map_err(|e| format!("{what}: the schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", errors.join("; ")))
    }
}

/// Check a response body against the spec's schema for `method path_template` and `status`
/// (falling back to `4XX`-style ranges, then `default`, as OpenAPI does).
pub fn validate_response(
    spec_yaml_path: &str,
    path_template: &str,
    method: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    let spec = spec(spec_yaml_path)?;
    let op = operation(&spec, path_template, method)?;
    let responses = op
        .get("responses")
        .ok_or_else(|| format!("{method} {path_template} declares no responses"))?;
    let range = format!("{}XX", status / 100);
    let response = responses
        .get(status.to_string())
        .or_else(|| responses.get(&range))
        .or_else(|| responses.get(range.to_ascii_lowercase()))
        .or_else(|| responses.get("default"))
        .ok_or_else(|| format!("{method} {path_template} declares no response {status}"))?;
    let what = format!("{method} {path_template} → {status}");
    match json_schema(&spec, response)? {
        Some(schema) => check(&spec, schema, body, &what),
        None if body.is_null() => Ok(()),
        None => Err(format!("{what}: the spec declares no JSON body")),
    }
}

/// Check a request body against the spec's `requestBody` of `method path_template`; `null` for
/// an operation that takes no body.
pub fn validate_request(
    spec_yaml_path: &str,
    path_template: &str,
    method: &str,
    body: &Value,
) -> Result<(), String> {
    let spec = spec(spec_yaml_path)?;
    let op = operation(&spec, path_template, method)?;
    let what = format!("{method} {path_template} request");
    match op.get("requestBody") {
        None if body.is_null() => Ok(()),
        None => Err(format!("{what}: the operation takes no body")),
        Some(rb) => {
            let rb = deref(&spec, rb)?;
            if body.is_null() {
                return if rb.get("required") == Some(&Value::Bool(true)) {
                    Err(format!("{what}: a body is required"))
                } else {
                    Ok(())
                };
            }
            match json_schema(&spec, rb)? {
                Some(schema) => check(&spec, schema, body, &what),
                None => Err(format!("{what}: the spec declares no JSON request body")),
            }
        }
    }
}

#[test]
fn nullable_and_refs_are_understood() {
    let dir = std::env::temp_dir().join(format!("keysmith-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spec.yaml");
    std::fs::write(
        &path,
        r#"
openapi: 3.0.0
paths:
  /things/{id}:
    put:
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/Thing' }
      responses:
        '200':
          content:
            application/json:
              schema:
                type: object
                properties:
                  thing: { $ref: '#/components/schemas/Thing' }
        default:
          content:
            application/json:
              schema: { type: object, required: [id], properties: { id: { type: string } } }
components:
  schemas:
    Thing:
      type: object
      required: [name]
      properties:
        name: { type: string, example: x }
        note: { type: string, nullable: true }
        at: { type: string, format: date-time }
"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    assert!(validate_request(
        p,
        "/things/{id}",
        "PUT",
        &json!({"name": "a", "note": null})
    )
    .is_ok());
    assert!(validate_request(p, "/things/{id}", "PUT", &json!({"note": "n"})).is_err());
    assert!(validate_request(p, "/things/{id}", "PUT", &Value::Null).is_err());
    assert!(validate_response(
        p,
        "/things/{id}",
        "put",
        200,
        &json!({"thing": {"name": "a"}})
    )
    .is_ok());
    let e = validate_response(
        p,
        "/things/{id}",
        "put",
        200,
        &json!({"thing": {"name": 1}}),
    )
    .unwrap_err();
    assert!(e.contains("/thing/name"), "{e}");
    assert!(validate_response(
        p,
        "/things/{id}",
        "put",
        200,
        &json!({"thing": {"name": "a", "at": "yesterday"}})
    )
    .is_err());
    assert!(validate_response(p, "/things/{id}", "put", 404, &json!({"id": "not_found"})).is_ok());
    assert!(validate_response(p, "/things/{id}", "put", 404, &json!({})).is_err());
    assert!(validate_response(p, "/nope", "get", 200, &json!({})).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
