//! Bifrost's own OpenAPI description (`tests/specs/bifrost-keys.openapi.yaml`) held against both
//! sides: every request the client sends and every answer the emulator gives pass through a
//! recording proxy and are validated afterwards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keysmith::api::{BifrostKeySpec, BifrostProvider, BifrostRateLimit, LimitReset};
use keysmith::emulators::{build_bifrost, spawn, BifrostArgs};
use keysmith::providers::{BifrostClient, FAMILY_VIRTUAL};
use keysmith::providers::{
    ClientOptions, Credentials, Field, KeyBackend, KeyScope, KeySettings, Limit,
};
use secrecy::SecretString;
use serde_json::Value;

use crate::openapi::{validate_request, validate_response};

const SPEC: &str = "tests/specs/bifrost-keys.openapi.yaml";

/// One request and its answer, as they crossed the proxy.
#[derive(Clone, Debug)]
struct Exchange {
    method: String,
    path: String,
    request: Value,
    status: u16,
    response: Value,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    log: Arc<Mutex<Vec<Exchange>>>,
}

fn json_or_null(b: &[u8]) -> Value {
    if b.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
    }
}

async fn forward(
    State(p): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_q = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let mut req = p
        .http
        .request(method.clone(), format!("{}{path_q}", p.upstream))
        .body(body.clone());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let resp = req.send().await.expect("the emulator answers");
    let status = resp.status();
    let rh = resp.headers().clone();
    let rb = resp.bytes().await.expect("the emulator's body");
    p.log.lock().unwrap().push(Exchange {
        method: method.as_str().to_ascii_lowercase(),
        path: uri.path().to_string(),
        request: json_or_null(&body),
        status: status.as_u16(),
        response: json_or_null(&rb),
    });
    let mut out = (StatusCode::from_u16(status.as_u16()).unwrap(), rb).into_response();
    if let Some(ct) = rh.get("content-type") {
        out.headers_mut().insert("content-type", ct.clone());
    }
    out
}

/// The spec's path template a concrete path matches; literal segments win over parameters.
fn template(path: &str) -> Option<&'static str> {
    const TEMPLATES: &[&str] = &[
        "/api/keys",
        "/api/providers",
        "/api/providers/{provider}",
        "/api/providers/{provider}/keys",
        "/api/providers/{provider}/keys/{key_id}",
        "/api/governance/virtual-keys",
        "/api/governance/virtual-keys/quota",
        "/api/governance/virtual-keys/rotate",
        "/api/governance/virtual-keys/{vk_id}",
        "/api/governance/virtual-keys/{vk_id}/rotate",
    ];
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut best: Option<(&'static str, usize)> = None;
    for t in TEMPLATES {
        let ts: Vec<&str> = t.split('/').collect();
        if ts.len() != segs.len() {
            continue;
        }
        let ok = ts
            .iter()
            .zip(&segs)
            .all(|(t, s)| t.starts_with('{') || t == s);
        let params = ts.iter().filter(|t| t.starts_with('{')).count();
        if ok && best.is_none_or(|(_, p)| params < p) {
            best = Some((t, params));
        }
    }
    best.map(|(t, _)| t)
}

fn settings(name: &str) -> KeySettings {
    KeySettings {
        name: name.into(),
        uid: uuid::Uuid::new_v4().to_string(),
        attempt: Some(format!("att-{name}")),
        models: vec!["openai/gpt-4o".into(), "anthropic/*".into()],
        limit: Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Monthly),
        }),
        bifrost: Some(BifrostKeySpec {
            rate_limit: Some(BifrostRateLimit {
                token_max_limit: Some(100_000),
                token_reset_duration: Some("1h".into()),
                request_max_limit: Some(100),
                request_reset_duration: Some("1m".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn client_requests_and_emulator_answers_follow_bifrost_openapi() {
    let (router, faults) = build_bifrost(&BifrostArgs {
        max_page_size: 2,
        ..Default::default()
    });
    let emu = spawn(router, faults).await.expect("emulator starts");
    let proxy = Proxy {
        upstream: emu.url(),
        http: reqwest::Client::new(),
        log: Arc::default(),
    };
    let log = proxy.log.clone();
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let spec = BifrostProvider {
        base_url: url.clone(),
        auth_secret_ref: None,
    };
    let opts = ClientOptions {
        timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        ..Default::default()
    };
    let c = BifrostClient::new(&spec, Credentials::default(), opts).expect("client");
    let vk = KeyScope {
        family: FAMILY_VIRTUAL.into(),
        parent: String::new(),
    };

    // Virtual keys: create (with budgets and rate limits), list across pages, get, update,
    // rotate, revoke, and the 404 of a second revoke.
    c.verify().await.expect("verify");
    let mut ids = Vec::new();
    let mut values = Vec::new();
    for i in 0..3 {
        let created = c.create(&settings(&format!("vk-{i}"))).await.unwrap();
        ids.push(created.key.id);
        values.push(created.secret);
    }
    // The self-service quota answer, asked with a key's own value.
    let quota = reqwest::Client::new()
        .get(format!("{url}/api/governance/virtual-keys/quota"))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&values[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(quota.status(), 200);
    let first = c.list_page(&vk, None).await.unwrap();
    assert!(first.next.is_some());
    c.get(&vk, &ids[2]).await.unwrap();
    let mut changed = settings("vk-0-renamed");
    changed.disabled = true;
    c.update(
        &vk,
        &ids[0],
        &changed,
        &[Field::DisplayName, Field::Disabled],
    )
    .await
    .unwrap();
    let _ = c.regenerate(&vk, &ids[1]).await;
    c.revoke(&vk, &ids[1]).await.unwrap();
    assert!(c.revoke(&vk, &ids[1]).await.is_err());

    // Provider keys: push, read back, update, delete.
    let uid = uuid::Uuid::new_v4().to_string();
    let pushed = KeySettings {
        name: "openai-prod".into(),
        uid: uid.clone(),
        pushed: true,
        models: vec!["gpt-4o".into()],
        bifrost: Some(BifrostKeySpec {
            provider: Some("openai".into()),
            weight: Some(2.0),
            description: Some("pushed".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ps = c.scope(&pushed);
    let value = SecretString::from("sk-proj-upstream-value-0001");
    let k = c.push(&pushed, &value, None).await.unwrap();
    c.list_page(&ps, None).await.unwrap();
    c.get(&ps, &k.id).await.unwrap();
    let mut everything = pushed.clone();
    everything.models.clear();
    c.update(
        &ps,
        &k.id,
        &everything,
        &[Field::Models, Field::DisplayName],
    )
    .await
    .unwrap();
    c.revoke(&ps, &k.id).await.unwrap();

    let log = log.lock().unwrap().clone();
    assert!(log.len() >= 12, "{} exchanges", log.len());
    let mut failures = BTreeMap::new();
    for x in &log {
        let Some(t) = template(&x.path) else {
            failures.insert(
                format!("{} {}", x.method, x.path),
                "not in the spec".to_string(),
            );
            continue;
        };
        if !x.request.is_null() {
            if let Err(e) = validate_request(SPEC, t, &x.method, &x.request) {
                failures.insert(format!("request {} {t}", x.method), e);
            }
        }
        if let Err(e) = validate_response(SPEC, t, &x.method, x.status, &x.response) {
            failures.insert(format!("answer {} {t} {}", x.method, x.status), e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} exchanges break the spec:\n{}",
        failures.len(),
        log.len(),
        failures
            .iter()
            .map(|(k, v)| format!("- {k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The answers were read, not just checked: an update to "every model" is sent as ["*"].
    let put = log
        .iter()
        .rfind(|x| x.method == "put" && x.path.starts_with("/api/providers/"))
        .expect("a provider-key update");
    assert_eq!(put.request["models"], serde_json::json!(["*"]));
}
