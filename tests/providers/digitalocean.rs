//! DigitalOcean client ⇄ emulator tests, over real HTTP on loopback, with the emulator's answers
//! and the client's request bodies checked against DigitalOcean's OpenAPI description.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use clap::Parser;
use keysmith::api::{DigitalOceanKeySpec, DigitalOceanProvider};
use keysmith::emulators::digitalocean::{build, Args};
use keysmith::emulators::{spawn, RunningEmulator, ScriptedFault};
use keysmith::providers::digitalocean::{DigitalOceanClient, MODEL_CREATE_RETIRED};
use keysmith::providers::{
    ClientOptions, Credentials, Field, KeyBackend, KeyScope, KeySettings, ProviderError,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::openapi::{validate_request, validate_response};

const SPEC: &str = "tests/specs/digitalocean-genai-keys.openapi.yaml";
const TOKEN: &str = "dop_v1_4f1e2d3c4b5a69788796a5b4c3d2e1f0";
const READ_ONLY: &str = "dop_v1_readonly0000000000000000000000";
const AGENT: &str = "1b418231-b7d6-11ef-bf8f-4e013e2ddde4";
const OTHER_AGENT: &str = "2c529342-c8e7-11ef-bf8f-4e013e2ddde4";
const CONSOLE_KEY: &str = "11efb7d6-cdb5-6388-bf8f-4e013e2ddde4";

const MODEL_LIST: &str = "/v2/gen-ai/models/api_keys";
const MODEL_ONE: &str = "/v2/gen-ai/models/api_keys/{api_key_uuid}";
const MODEL_REGEN: &str = "/v2/gen-ai/models/api_keys/{api_key_uuid}/regenerate";
const AGENT_LIST: &str = "/v2/gen-ai/agents/{agent_uuid}/api_keys";
const AGENT_ONE: &str = "/v2/gen-ai/agents/{agent_uuid}/api_keys/{api_key_uuid}";
const AGENT_REGEN: &str = "/v2/gen-ai/agents/{agent_uuid}/api_keys/{api_key_uuid}/regenerate";

/// Requests the key API received: (method, route template, JSON body or null).
type Captured = Arc<Mutex<Vec<(String, String, Value)>>>;

struct Emu {
    run: RunningEmulator,
    captured: Captured,
}

impl Emu {
    fn url(&self) -> String {
        self.run.url()
    }
    fn count(&self, route: &str) -> u64 {
        self.run
            .faults
            .by_route()
            .get(route)
            .copied()
            .unwrap_or_default()
    }
    fn bodies(&self, method: &str, route: &str) -> Vec<Value> {
        self.captured
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, r, _)| m == method && r == route)
            .map(|(_, _, b)| b.clone())
            .collect()
    }
    fn fault(&self, f: ScriptedFault) {
        self.run.faults.push([f]);
    }
}

fn base_args() -> Args {
    Args {
        tokens: vec![TOKEN.into()],
        read_only_tokens: vec![READ_ONLY.into()],
        agents: vec![AGENT.into(), OTHER_AGENT.into()],
        model_keys: vec![format!("console-key={CONSOLE_KEY}")],
        ..Args::default()
    }
}

async fn start(args: Args) -> Emu {
    let (router, faults) = build(&args);
    let captured: Captured = Arc::default();
    let sink = captured.clone();
    let router = router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let sink = sink.clone();
        async move {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| req.uri().path().to_string());
            let method = req.method().to_string();
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::String("<not JSON>".into()))
            };
            sink.lock().unwrap().push((method, route, value));
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }));
    Emu {
        run: spawn(router, faults).await.unwrap(),
        captured,
    }
}

fn fault(
    status: Option<u16>,
    retry_after: Option<u64>,
    malformed: bool,
    delay_ms: Option<u64>,
) -> ScriptedFault {
    ScriptedFault {
        status,
        retry_after,
        malformed,
        delay_ms,
    }
}

fn status(code: u16) -> ScriptedFault {
    fault(Some(code), None, false, None)
}

fn status_ra(code: u16, retry_after: u64) -> ScriptedFault {
    fault(Some(code), Some(retry_after), false, None)
}

fn malformed() -> ScriptedFault {
    fault(None, None, true, None)
}

fn delayed(ms: u64) -> ScriptedFault {
    fault(None, None, false, Some(ms))
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(400),
        max_attempts: 3,
        backoff_base: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

fn client_with(emu: &Emu, token: &str) -> DigitalOceanClient {
    let mut creds = BTreeMap::new();
    creds.insert("token".to_string(), SecretString::from(token.to_string()));
    DigitalOceanClient::new(
        &DigitalOceanProvider {
            base_url: Some(emu.url()),
            ..Default::default()
        },
        Credentials(creds),
        opts(),
    )
    .unwrap()
}

fn client(emu: &Emu) -> DigitalOceanClient {
    client_with(emu, TOKEN)
}

fn agent_settings(name: &str, agent: &str) -> KeySettings {
    KeySettings {
        name: name.into(),
        digitalocean: Some(DigitalOceanKeySpec {
            agent_uuid: Some(agent.into()),
        }),
        ..Default::default()
    }
}

fn model_settings(name: &str, key_ref: Option<&str>) -> KeySettings {
    KeySettings {
        name: name.into(),
        key_ref: key_ref.map(String::from),
        ..Default::default()
    }
}

fn model_scope() -> KeyScope {
    KeyScope {
        family: "model".into(),
        parent: String::new(),
    }
}

fn agent_scope(agent: &str) -> KeyScope {
    KeyScope {
        family: "agent".into(),
        parent: agent.into(),
    }
}

/// Raw HTTP to the emulator: status, headers, JSON body (null when empty or not JSON).
async fn raw(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut b = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    if let Some(body) = body {
        b = b
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = b.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Does `secret` authenticate serverless inference (`GET /v1/models`)?
async fn model_key_works(emu: &Emu, secret: &str) -> bool {
    let (s, _, body) = raw(
        reqwest::Method::GET,
        format!("{}/v1/models", emu.url()),
        Some(secret),
        None,
    )
    .await;
    assert!(s == 200 || s == 401, "{s} {body}");
    if s == 200 {
        assert_eq!(body["object"], "list");
        assert!(!body["data"].as_array().unwrap().is_empty());
    }
    s == 200
}

/// Does `secret` authenticate the agent's endpoint?
async fn agent_key_works(emu: &Emu, agent: &str, secret: &str) -> bool {
    let (s, _, body) = raw(
        reqwest::Method::POST,
        format!("{}/_emulator/agents/{agent}/check", emu.url()),
        Some(secret),
        None,
    )
    .await;
    assert!(s == 200 || s == 401, "{s} {body}");
    if s == 200 {
        assert_eq!(body["agent_uuid"], agent);
    }
    s == 200
}

async fn control_keys(emu: &Emu) -> (String, Value) {
    let resp = reqwest::get(format!("{}/_emulator/keys", emu.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap();
    (text, v)
}

// ---- lifecycles -------------------------------------------------------------------------------

#[tokio::test]
async fn agent_key_lifecycle() {
    let emu = start(base_args()).await;
    let c = client(&emu);
    let s = agent_settings("team-a/chat", AGENT);
    assert!(c.validate(&s).is_empty());
    let scope = c.scope(&s);
    assert_eq!(scope, agent_scope(AGENT));
    c.verify().await.unwrap();

    // Create: the plaintext works at the agent, and only there.
    let created = c.create(&s).await.unwrap();
    let id = created.key.id.clone();
    let secret = created.secret.expose_secret().to_string();
    assert_eq!(created.key.name, "team-a/chat");
    assert!(created.key.active);
    let age = chrono::Utc::now() - created.key.created_at.expect("created_at");
    assert!(age.num_seconds().abs() <= 2, "{age}");
    assert!(agent_key_works(&emu, AGENT, &secret).await);
    assert!(!agent_key_works(&emu, OTHER_AGENT, &secret).await);
    assert!(!model_key_works(&emu, &secret).await);
    assert!(!format!("{created:?}").contains(&secret));

    // Listed under its agent only, without the secret; get filters the listing.
    c.create(&agent_settings("team-a/other", AGENT))
        .await
        .unwrap();
    let page = c.list_page(&scope, None).await.unwrap();
    assert_eq!(page.keys.len(), 2);
    assert!(page.next.is_none());
    assert!(page.keys.iter().all(|k| k.secret.is_none() && k.active));
    assert!(c
        .list_page(&agent_scope(OTHER_AGENT), None)
        .await
        .unwrap()
        .keys
        .is_empty());
    let got = c.get(&scope, &id).await.unwrap();
    assert_eq!(got.name, "team-a/chat");
    assert_eq!(got.created_at, created.key.created_at);
    assert_eq!(got.extras.get("agentUUID").map(String::as_str), Some(AGENT));
    assert!(keysmith::providers::drift(&c, &got, &s).is_empty());

    // Rename.
    let renamed = agent_settings("team-a/chat-v2", AGENT);
    assert_eq!(
        keysmith::providers::drift(&c, &got, &renamed),
        vec![Field::DisplayName]
    );
    let updated = c
        .update(&scope, &id, &renamed, &[Field::DisplayName])
        .await
        .unwrap();
    assert_eq!(updated.name, "team-a/chat-v2");
    assert_eq!(c.get(&scope, &id).await.unwrap().name, "team-a/chat-v2");
    assert!(agent_key_works(&emu, AGENT, &secret).await);

    // Regenerate: the old value dies at once.
    let regen = c.regenerate(&scope, &id).await.unwrap();
    let new_secret = regen.secret.expose_secret().to_string();
    assert_eq!(regen.key.id, id);
    assert_ne!(new_secret, secret);
    assert!(!agent_key_works(&emu, AGENT, &secret).await);
    assert!(agent_key_works(&emu, AGENT, &new_secret).await);

    // Revoke: gone, value dead, a second revoke is NotFound.
    c.revoke(&scope, &id).await.unwrap();
    assert!(matches!(
        c.get(&scope, &id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.revoke(&scope, &id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(!agent_key_works(&emu, AGENT, &new_secret).await);

    // The control listing counts live keys and never shows a value.
    let (text, keys) = control_keys(&emu).await;
    assert!(!text.contains(&secret) && !text.contains(&new_secret));
    let keys = keys["keys"].as_array().unwrap();
    let mine = keys.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(mine["active"], false);
    assert_eq!(mine["family"], "agent");
    assert_eq!(mine["agentUUID"], AGENT);
    assert_eq!(mine["regenerations"], 1);
    let live_agent_keys = keys
        .iter()
        .filter(|k| k["family"] == "agent" && k["active"] == true)
        .count();
    assert_eq!(live_agent_keys, 1);
}

#[tokio::test]
async fn model_key_is_adopted_by_regenerate() {
    let emu = start(base_args()).await;
    let c = client(&emu);

    // No keyRef: refused before any call, with what to do.
    let bare = model_settings("team-a/inference", None);
    assert_eq!(c.validate(&bare), vec![MODEL_CREATE_RETIRED.to_string()]);
    // create() anyway: DigitalOcean's 410 becomes Unsupported with the same explanation.
    match c.create(&bare).await {
        Err(ProviderError::Unsupported(m)) => {
            assert!(m.starts_with(MODEL_CREATE_RETIRED), "{m}");
            assert!(m.contains("resource retired"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.count(&format!("POST {MODEL_LIST}")), 1);

    // Adopt the console-created key: regenerate gives a value that works for inference.
    let s = model_settings("team-a/inference", Some(CONSOLE_KEY));
    assert!(c.validate(&s).is_empty());
    let scope = c.scope(&s);
    assert_eq!(scope, model_scope());
    let before = c.get(&scope, CONSOLE_KEY).await.unwrap();
    assert_eq!(before.name, "console-key");
    let first = c.regenerate(&scope, CONSOLE_KEY).await.unwrap();
    let v1 = first.secret.expose_secret().to_string();
    assert!(model_key_works(&emu, &v1).await);
    assert!(!agent_key_works(&emu, AGENT, &v1).await);

    // A second regenerate (a rotation) kills the first value at once.
    let second = c.regenerate(&scope, CONSOLE_KEY).await.unwrap();
    let v2 = second.secret.expose_secret().to_string();
    assert!(!model_key_works(&emu, &v1).await);
    assert!(model_key_works(&emu, &v2).await);

    // Rename to the ApiKey's display name, then delete.
    let updated = c
        .update(&scope, CONSOLE_KEY, &s, &[Field::DisplayName])
        .await
        .unwrap();
    assert_eq!(updated.name, "team-a/inference");
    // Nothing to change: no write, the key as it is.
    let same = c.update(&scope, CONSOLE_KEY, &s, &[]).await.unwrap();
    assert_eq!(same.name, "team-a/inference");
    assert!(matches!(
        c.update(&scope, CONSOLE_KEY, &s, &[Field::ExpiresAt]).await,
        Err(ProviderError::Unsupported(_))
    ));
    c.revoke(&scope, CONSOLE_KEY).await.unwrap();
    assert!(!model_key_works(&emu, &v2).await);
    assert!(matches!(
        c.get(&scope, CONSOLE_KEY).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.regenerate(&scope, CONSOLE_KEY).await,
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn historical_model_key_create_still_parses() {
    let emu = start(Args {
        allow_model_key_create: true,
        ..base_args()
    })
    .await;
    let c = client(&emu);
    let created = c
        .create(&model_settings("legacy", Some("ignored")))
        .await
        .unwrap();
    assert!(model_key_works(&emu, created.secret.expose_secret()).await);
    assert_eq!(created.key.name, "legacy");
    let body = emu.bodies("POST", MODEL_LIST);
    assert_eq!(body, vec![json!({ "name": "legacy" })]);
    validate_request(SPEC, MODEL_LIST, "post", &body[0]).unwrap();
}

#[tokio::test]
async fn listing_spans_pages() {
    let mut args = base_args();
    args.model_keys = (0..205).map(|i| format!("console-{i:03}")).collect();
    let emu = start(args).await;
    let c = client(&emu);
    let scope = model_scope();
    let first = c.list_page(&scope, None).await.unwrap();
    assert_eq!(first.keys.len(), 200);
    assert_eq!(first.next.as_deref(), Some("2"));
    let second = c.list_page(&scope, first.next.as_deref()).await.unwrap();
    assert_eq!(second.keys.len(), 5);
    assert!(second.next.is_none());
    let names: Vec<String> = first
        .keys
        .iter()
        .chain(second.keys.iter())
        .map(|k| k.name.clone())
        .collect();
    let ids: std::collections::BTreeSet<&str> = first
        .keys
        .iter()
        .chain(second.keys.iter())
        .map(|k| k.id.as_str())
        .collect();
    assert_eq!(ids.len(), 205);
    assert!(first
        .keys
        .iter()
        .all(|k| k.created_at.is_some() && k.active));
    assert_eq!(names.len(), 205);
    assert_eq!(names[204], "console-204");
    // get walks the pages.
    let last = &second.keys[4];
    assert_eq!(c.get(&scope, &last.id).await.unwrap().name, "console-204");
    assert_eq!(emu.count(&format!("GET {MODEL_LIST}")), 4);
    // The client asks for DigitalOcean's largest page.
    let (_, _, body) = raw(
        reqwest::Method::GET,
        format!("{}{MODEL_LIST}?page=2&per_page=200", emu.url()),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(body["meta"], json!({ "page": 2, "pages": 2, "total": 205 }));
}

// ---- the emulator against DigitalOcean's description ------------------------------------------

#[tokio::test]
async fn emulator_pages_like_digitalocean() {
    let mut args = base_args();
    args.model_keys = (0..45).map(|i| format!("k{i}")).collect();
    let emu = start(args).await;
    let get = |q: &str| {
        raw(
            reqwest::Method::GET,
            format!("{}{MODEL_LIST}{q}", emu.url()),
            Some(TOKEN),
            None,
        )
    };

    // Default 20 per page; page 1 links only forward.
    let (s, _, p1) = get("").await;
    assert_eq!(s, 200);
    validate_response(SPEC, MODEL_LIST, "get", 200, &p1).unwrap();
    assert_eq!(p1["api_key_infos"].as_array().unwrap().len(), 20);
    assert_eq!(p1["meta"], json!({ "page": 1, "pages": 3, "total": 45 }));
    let links = p1["links"]["pages"].as_object().unwrap();
    let mut names: Vec<&str> = links.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["last", "next"]);
    assert!(links["next"]
        .as_str()
        .unwrap()
        .ends_with(&format!("{MODEL_LIST}?page=2&per_page=20")));
    // Secrets are never listed.
    assert!(p1["api_key_infos"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["secret_key"] == "" && k["created_by"].is_string()));
    // Timestamps are RFC 3339.
    let at = p1["api_key_infos"][0]["created_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(at).unwrap();

    // The middle page links every way, naming `previous` (not `prev`).
    let (_, _, p2) = get("?page=2").await;
    let mut names: Vec<String> = p2["links"]["pages"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    assert_eq!(names, ["first", "last", "next", "previous"]);
    // The last page links only back.
    let (_, _, p3) = get("?page=3").await;
    assert_eq!(p3["api_key_infos"].as_array().unwrap().len(), 5);
    assert!(p3["links"]["pages"].get("next").is_none());
    assert!(p3["links"]["pages"].get("previous").is_some());
    validate_response(SPEC, MODEL_LIST, "get", 200, &p3).unwrap();
    // Beyond the end: empty.
    let (_, _, p9) = get("?page=9").await;
    assert!(p9["api_key_infos"].as_array().unwrap().is_empty());

    // per_page is capped at 200; everything on one page: no links at all.
    let (_, _, all) = get("?per_page=1000").await;
    assert_eq!(all["api_key_infos"].as_array().unwrap().len(), 45);
    assert!(all.get("links").is_none());
    assert_eq!(all["meta"]["pages"], 1);

    // Bad paging parameters are a 400 in DigitalOcean's envelope.
    for q in ["?per_page=0", "?page=0", "?page=abc", "?per_page=-5"] {
        let (s, _, e) = get(q).await;
        assert_eq!(s, 400, "{q}");
        assert_eq!(e["id"], "bad_request");
        validate_response(SPEC, MODEL_LIST, "get", 400, &e).unwrap();
    }
}

#[tokio::test]
async fn emulator_answers_match_the_spec() {
    let emu = start(base_args()).await;
    let url = emu.url();
    let m = |p: &str| p.replace("{agent_uuid}", AGENT);
    use reqwest::Method as M;

    // Agent key create, list, rename, regenerate, delete.
    let (s, _, created) = raw(
        M::POST,
        format!("{url}{}", m(AGENT_LIST)),
        Some(TOKEN),
        Some(&json!({ "agent_uuid": AGENT, "name": "spec" }).to_string()),
    )
    .await;
    assert_eq!(s, 200);
    validate_response(SPEC, AGENT_LIST, "post", 200, &created).unwrap();
    let key = created["api_key_info"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!created["api_key_info"]["secret_key"]
        .as_str()
        .unwrap()
        .is_empty());
    let one = m(AGENT_ONE).replace("{api_key_uuid}", &key);

    let (s, _, listed) = raw(M::GET, format!("{url}{}", m(AGENT_LIST)), Some(TOKEN), None).await;
    assert_eq!(s, 200);
    validate_response(SPEC, AGENT_LIST, "get", 200, &listed).unwrap();

    let (s, _, renamed) = raw(
        M::PUT,
        format!("{url}{one}"),
        Some(TOKEN),
        Some(&json!({ "agent_uuid": AGENT, "api_key_uuid": key, "name": "spec-2" }).to_string()),
    )
    .await;
    assert_eq!(s, 200);
    validate_response(SPEC, AGENT_ONE, "put", 200, &renamed).unwrap();
    assert_eq!(renamed["api_key_info"]["name"], "spec-2");
    assert_eq!(renamed["api_key_info"]["secret_key"], "");

    let (s, _, regen) = raw(M::PUT, format!("{url}{one}/regenerate"), Some(TOKEN), None).await;
    assert_eq!(s, 200);
    validate_response(SPEC, AGENT_REGEN, "put", 200, &regen).unwrap();
    assert_ne!(
        regen["api_key_info"]["secret_key"],
        created["api_key_info"]["secret_key"]
    );

    let (s, _, deleted) = raw(M::DELETE, format!("{url}{one}"), Some(TOKEN), None).await;
    assert_eq!(s, 200);
    validate_response(SPEC, AGENT_ONE, "delete", 200, &deleted).unwrap();
    chrono::DateTime::parse_from_rfc3339(deleted["api_key_info"]["deleted_at"].as_str().unwrap())
        .unwrap();
    let (s, _, gone) = raw(M::DELETE, format!("{url}{one}"), Some(TOKEN), None).await;
    assert_eq!(s, 404);
    assert_eq!(
        gone,
        json!({ "id": "not_found", "message": "The resource you requested could not be found.", "request_id": gone["request_id"] })
    );
    validate_response(SPEC, AGENT_ONE, "delete", 404, &gone).unwrap();

    // Model keys: list, rename, regenerate, delete of the console key.
    let model_one = MODEL_ONE.replace("{api_key_uuid}", CONSOLE_KEY);
    let (_, _, listed) = raw(M::GET, format!("{url}{MODEL_LIST}"), Some(TOKEN), None).await;
    validate_response(SPEC, MODEL_LIST, "get", 200, &listed).unwrap();
    let (s, _, renamed) = raw(
        M::PUT,
        format!("{url}{model_one}"),
        Some(TOKEN),
        Some(&json!({ "api_key_uuid": CONSOLE_KEY, "name": "renamed" }).to_string()),
    )
    .await;
    assert_eq!(s, 200);
    validate_response(SPEC, MODEL_ONE, "put", 200, &renamed).unwrap();
    let (s, _, regen) = raw(
        M::PUT,
        format!("{url}{model_one}/regenerate"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200);
    validate_response(SPEC, MODEL_REGEN, "put", 200, &regen).unwrap();
    let (s, _, deleted) = raw(M::DELETE, format!("{url}{model_one}"), Some(TOKEN), None).await;
    assert_eq!(s, 200);
    validate_response(SPEC, MODEL_ONE, "delete", 200, &deleted).unwrap();

    // Errors: 401, 410, 404, injected 429 and 500, all in the envelope the spec declares.
    let (s, _, e401) = raw(
        M::GET,
        format!("{url}{MODEL_LIST}"),
        Some("dop_v1_wrong"),
        None,
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(e401["id"], "unauthorized");
    assert_eq!(e401["message"], "Unable to authenticate you.");
    validate_response(SPEC, MODEL_LIST, "get", 401, &e401).unwrap();
    let (s, _, e410) = raw(
        M::POST,
        format!("{url}{MODEL_LIST}"),
        Some(TOKEN),
        Some("{}"),
    )
    .await;
    assert_eq!(s, 410);
    validate_response(SPEC, MODEL_LIST, "post", 410, &e410).unwrap();
    let (s, _, e404) = raw(
        M::GET,
        format!(
            "{url}/v2/gen-ai/agents/{}/api_keys",
            "3d63a453-d9f8-11ef-bf8f-4e013e2ddde4"
        ),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 404);
    validate_response(SPEC, AGENT_LIST, "get", 404, &e404).unwrap();
    emu.fault(status_ra(429, 3));
    let (s, h, e429) = raw(M::GET, format!("{url}{MODEL_LIST}"), Some(TOKEN), None).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "3");
    assert_eq!(
        (e429["id"].as_str(), e429["message"].as_str()),
        (Some("too_many_requests"), Some("API rate limit exceeded."))
    );
    validate_response(SPEC, MODEL_LIST, "get", 429, &e429).unwrap();
    emu.fault(status(500));
    let (s, _, e500) = raw(M::DELETE, format!("{url}{one}"), Some(TOKEN), None).await;
    assert_eq!(s, 500);
    assert_eq!(e500["id"], "server_error");
    validate_response(SPEC, AGENT_ONE, "delete", 500, &e500).unwrap();
}

#[tokio::test]
async fn client_requests_match_the_spec() {
    let emu = start(base_args()).await;
    let c = client(&emu);
    let scope = agent_scope(AGENT);
    let created = c.create(&agent_settings("team-a/x", AGENT)).await.unwrap();
    c.update(
        &scope,
        &created.key.id,
        &agent_settings("team-a/y", AGENT),
        &[Field::DisplayName],
    )
    .await
    .unwrap();
    c.regenerate(&scope, &created.key.id).await.unwrap();
    c.revoke(&scope, &created.key.id).await.unwrap();
    c.update(
        &model_scope(),
        CONSOLE_KEY,
        &model_settings("team-a/z", Some(CONSOLE_KEY)),
        &[Field::DisplayName],
    )
    .await
    .unwrap();
    c.regenerate(&model_scope(), CONSOLE_KEY).await.unwrap();
    c.revoke(&model_scope(), CONSOLE_KEY).await.unwrap();
    let _ = c.create(&model_settings("retired", None)).await;

    let create = emu.bodies("POST", AGENT_LIST);
    assert_eq!(
        create,
        vec![json!({ "agent_uuid": AGENT, "name": "team-a/x" })]
    );
    let checks = [
        ("post", AGENT_LIST, create[0].clone()),
        ("put", AGENT_ONE, emu.bodies("PUT", AGENT_ONE)[0].clone()),
        (
            "put",
            AGENT_REGEN,
            emu.bodies("PUT", AGENT_REGEN)[0].clone(),
        ),
        (
            "delete",
            AGENT_ONE,
            emu.bodies("DELETE", AGENT_ONE)[0].clone(),
        ),
        ("put", MODEL_ONE, emu.bodies("PUT", MODEL_ONE)[0].clone()),
        (
            "put",
            MODEL_REGEN,
            emu.bodies("PUT", MODEL_REGEN)[0].clone(),
        ),
        (
            "delete",
            MODEL_ONE,
            emu.bodies("DELETE", MODEL_ONE)[0].clone(),
        ),
        (
            "post",
            MODEL_LIST,
            emu.bodies("POST", MODEL_LIST)[0].clone(),
        ),
    ];
    for (method, path, body) in &checks {
        validate_request(SPEC, path, method, body).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(
        emu.bodies("PUT", AGENT_ONE)[0],
        json!({ "agent_uuid": AGENT, "api_key_uuid": created.key.id, "name": "team-a/y" })
    );
    assert_eq!(
        emu.bodies("PUT", MODEL_ONE)[0],
        json!({ "api_key_uuid": CONSOLE_KEY, "name": "team-a/z" })
    );
    // Regenerate and delete carry no body.
    assert!(emu.bodies("PUT", MODEL_REGEN)[0].is_null());
    assert!(emu.bodies("DELETE", AGENT_ONE)[0].is_null());
    // A body the spec does not allow is caught.
    assert!(validate_request(SPEC, AGENT_LIST, "post", &json!({ "name": 5 })).is_err());
}

// ---- errors -----------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_or_weak_credentials_are_auth_errors() {
    let emu = start(base_args()).await;
    let bad = client_with(&emu, "dop_v1_not_a_real_token_000000000");
    for err in [
        bad.verify().await.unwrap_err(),
        bad.list_page(&model_scope(), None).await.unwrap_err(),
        bad.create(&agent_settings("x", AGENT)).await.unwrap_err(),
        bad.regenerate(&model_scope(), CONSOLE_KEY)
            .await
            .unwrap_err(),
    ] {
        match &err {
            ProviderError::Auth(m) => assert!(m.contains("Unable to authenticate you."), "{m}"),
            e => panic!("{e:?}"),
        }
    }
    // A read-only token lists (verify passes) but cannot write: 403 forbidden.
    let ro = client_with(&emu, READ_ONLY);
    ro.verify().await.unwrap();
    match ro.create(&agent_settings("x", AGENT)).await {
        Err(ProviderError::Auth(m)) => assert!(m.contains("forbidden"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ro.revoke(&model_scope(), CONSOLE_KEY).await,
        Err(ProviderError::Auth(_))
    ));
    // Auth is checked before the retired create answers 410.
    let (s, _, _) = raw(
        reqwest::Method::POST,
        format!("{}{MODEL_LIST}", emu.url()),
        None,
        Some("{}"),
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn unknown_agents_and_keys_are_not_found() {
    let emu = start(base_args()).await;
    let c = client(&emu);
    let nowhere = "3d63a453-d9f8-11ef-bf8f-4e013e2ddde4";
    assert!(matches!(
        c.create(&agent_settings("x", nowhere)).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.list_page(&agent_scope(nowhere), None).await,
        Err(ProviderError::NotFound(_))
    ));
    for scope in [model_scope(), agent_scope(AGENT)] {
        assert!(matches!(
            c.update(
                &scope,
                nowhere,
                &model_settings("n", None),
                &[Field::DisplayName]
            )
            .await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            c.regenerate(&scope, nowhere).await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            c.revoke(&scope, nowhere).await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            c.get(&scope, nowhere).await,
            Err(ProviderError::NotFound(_))
        ));
    }
    // A model key is not found under an agent, nor an agent key under another agent.
    assert!(matches!(
        c.regenerate(&agent_scope(AGENT), CONSOLE_KEY).await,
        Err(ProviderError::NotFound(_))
    ));
    let k = c.create(&agent_settings("x", AGENT)).await.unwrap();
    assert!(matches!(
        c.revoke(&agent_scope(OTHER_AGENT), &k.key.id).await,
        Err(ProviderError::NotFound(_))
    ));
    // Ids that would change the path never leave the client.
    let before = emu.run.faults.requests();
    assert!(matches!(
        c.revoke(&model_scope(), "../../account").await,
        Err(ProviderError::Rejected(_))
    ));
    assert_eq!(emu.run.faults.requests(), before);
}

#[tokio::test]
async fn validation_errors_are_rejected() {
    let emu = start(base_args()).await;
    let c = client(&emu);
    use reqwest::Method as M;
    let url = format!("{}/v2/gen-ai/agents/{AGENT}/api_keys", emu.url());
    for (body, why) in [
        (json!({ "name": "" }).to_string(), "name is required"),
        (
            json!({ "agent_uuid": AGENT }).to_string(),
            "name is required",
        ),
        (json!({ "name": 42 }).to_string(), "name must be a string"),
        (
            json!({ "agent_uuid": OTHER_AGENT, "name": "x" }).to_string(),
            "does not match",
        ),
        ("{not json".to_string(), "not valid JSON"),
        (
            json!({ "name": "x".repeat(300) }).to_string(),
            "at most 255",
        ),
    ] {
        let (s, _, e) = raw(M::POST, url.clone(), Some(TOKEN), Some(&body)).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(e["id"], "bad_request");
        assert!(e["message"].as_str().unwrap().contains(why), "{e}");
        validate_response(SPEC, AGENT_LIST, "post", 400, &e).unwrap();
    }
    // The retired create answers 410 whatever the body.
    for body in [None, Some("{not json"), Some(r#"{"name":"ok"}"#)] {
        let (s, _, e) = raw(
            M::POST,
            format!("{}{MODEL_LIST}", emu.url()),
            Some(TOKEN),
            body,
        )
        .await;
        assert_eq!(s, 410);
        assert_eq!(e["id"], "gone");
        assert!(e["message"]
            .as_str()
            .unwrap()
            .starts_with("resource retired"));
    }
    // Through the client: an empty name is Rejected with DigitalOcean's words.
    match c.create(&agent_settings("", AGENT)).await {
        Err(ProviderError::Rejected(m)) => assert!(m.contains("name is required"), "{m}"),
        other => panic!("{other:?}"),
    }
    match c
        .update(
            &model_scope(),
            CONSOLE_KEY,
            &model_settings("", None),
            &[Field::DisplayName],
        )
        .await
    {
        Err(ProviderError::Rejected(m)) => assert!(m.contains("name is required"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A rename body naming another key is refused.
    let (s, _, _) = raw(
        M::PUT,
        format!("{}{MODEL_LIST}/{CONSOLE_KEY}", emu.url()),
        Some(TOKEN),
        Some(&json!({ "api_key_uuid": AGENT, "name": "x" }).to_string()),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let emu = start(base_args()).await;
    let c = client(&emu);
    let route = format!("GET {MODEL_LIST}");

    // A short Retry-After is waited out, then the call succeeds.
    emu.fault(status_ra(429, 1));
    let t = Instant::now();
    c.list_page(&model_scope(), None).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(emu.count(&route), 2);

    // A long one comes back as RateLimited with the delay, without waiting.
    emu.fault(status_ra(429, 30));
    let t = Instant::now();
    assert_eq!(
        c.list_page(&model_scope(), None).await.unwrap_err(),
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(emu.count(&route), 3);

    // That client now holds its requests for the 30 s the 429 asked (nothing is sent).
    assert!(matches!(
        c.list_page(&model_scope(), None).await.unwrap_err(),
        ProviderError::RateLimited { retry_after: Some(w) } if w <= Duration::from_secs(30)
    ));
    assert_eq!(emu.count(&route), 3, "a paced call sends nothing");

    // A 429 on create is retried too (DigitalOcean did not act on it); a fresh client.
    let c = client(&emu);
    emu.fault(status_ra(429, 0));
    c.create(&agent_settings("after-429", AGENT)).await.unwrap();
    assert_eq!(emu.count(&format!("POST {AGENT_LIST}")), 2);
}

#[tokio::test]
async fn emulator_enforces_digitalocean_limits() {
    // Per-minute burst: 429 with retry-after.
    let emu = start(Args {
        minute_limit: 3,
        ..base_args()
    })
    .await;
    let url = format!("{}{MODEL_LIST}", emu.url());
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let (s, h, _) = raw(reqwest::Method::GET, url.clone(), Some(TOKEN), None).await;
        assert_eq!(s, 200);
        assert_eq!(h["ratelimit-limit"], "5000");
        remaining.push(
            h["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
        let reset: i64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!(reset > now + 3500 && reset <= now + 3601, "{reset} {now}");
    }
    assert_eq!(remaining, [4999, 4998, 4997]);
    let (s, h, e) = raw(reqwest::Method::GET, url.clone(), Some(TOKEN), None).await;
    assert_eq!(s, 429);
    assert_eq!(e["id"], "too_many_requests");
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(h.contains_key("ratelimit-remaining"));
    // Another token has its own budget.
    let (s, _, _) = raw(reqwest::Method::GET, url.clone(), Some(READ_ONLY), None).await;
    assert_eq!(s, 200);
    // The client gives up at once on a Retry-After above its patience.
    match client(&emu).list_page(&model_scope(), None).await {
        Err(ProviderError::RateLimited { retry_after }) => assert!(retry_after.is_some()),
        other => panic!("{other:?}"),
    }

    // Hourly quota: 429 without retry-after.
    let emu = start(Args {
        minute_limit: 0,
        hourly_limit: 2,
        ..base_args()
    })
    .await;
    let url = format!("{}{MODEL_LIST}", emu.url());
    for _ in 0..2 {
        assert_eq!(
            raw(reqwest::Method::GET, url.clone(), Some(TOKEN), None)
                .await
                .0,
            200
        );
    }
    let (s, h, _) = raw(reqwest::Method::GET, url, Some(TOKEN), None).await;
    assert_eq!(s, 429);
    assert!(!h.contains_key("retry-after"));
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-limit"], "2");
}

#[tokio::test]
async fn a_used_up_hourly_limit_is_paced_not_hit() {
    // DigitalOcean's sliding hour: the answer that takes the last request of the hour says
    // `ratelimit-remaining: 0` and when the oldest counted request expires.
    let emu = start(Args {
        minute_limit: 0,
        hourly_limit: 3,
        ..base_args()
    })
    .await;
    let c = client(&emu);
    for _ in 0..3 {
        c.list_page(&model_scope(), None).await.unwrap();
    }
    let list = format!("GET {MODEL_LIST}");
    assert_eq!(emu.count(&list), 3);
    // The next call is not sent only to draw a 429: the caller is told when to come back.
    match c.list_page(&model_scope(), None).await {
        Err(ProviderError::RateLimited {
            retry_after: Some(w),
        }) => assert!(
            w > Duration::from_secs(3500) && w <= Duration::from_secs(3600),
            "{w:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        emu.count(&list),
        3,
        "nothing sent while the limit is used up"
    );
    assert_eq!(emu.run.faults.requests(), 3, "no 429 drawn");
    // Another token (another provider object) has its own budget and its own pacing.
    client_with(&emu, READ_ONLY)
        .list_page(&model_scope(), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn ratelimit_headers_on_every_answer() {
    let emu = start(base_args()).await;
    let url = emu.url();
    use reqwest::Method as M;
    let answers = [
        raw(M::GET, format!("{url}{MODEL_LIST}"), Some(TOKEN), None).await,
        raw(M::GET, format!("{url}{MODEL_LIST}"), None, None).await,
        raw(M::POST, format!("{url}{MODEL_LIST}"), Some(TOKEN), None).await,
        raw(
            M::DELETE,
            format!("{url}{MODEL_LIST}/{AGENT}"),
            Some(TOKEN),
            None,
        )
        .await,
        {
            emu.fault(status(500));
            raw(M::GET, format!("{url}{MODEL_LIST}"), Some(TOKEN), None).await
        },
        {
            emu.fault(status_ra(429, 1));
            raw(M::GET, format!("{url}{MODEL_LIST}"), Some(TOKEN), None).await
        },
    ];
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 401, 410, 404, 500, 429]);
    for (status, h, _) in &answers {
        for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
            let v = h
                .get(name)
                .unwrap_or_else(|| panic!("{status} lacks {name}"));
            v.to_str().unwrap().parse::<i64>().unwrap();
        }
    }
}

#[tokio::test]
async fn server_errors_retry_safe_calls_only() {
    let emu = start(base_args()).await;
    let c = client(&emu);

    // A 500 on a list, a 503 on a rename and a regenerate: retried, then fine.
    emu.fault(status(500));
    c.list_page(&model_scope(), None).await.unwrap();
    assert_eq!(emu.count(&format!("GET {MODEL_LIST}")), 2);
    emu.fault(status(503));
    c.update(
        &model_scope(),
        CONSOLE_KEY,
        &model_settings("renamed", None),
        &[Field::DisplayName],
    )
    .await
    .unwrap();
    assert_eq!(emu.count(&format!("PUT {MODEL_ONE}")), 2);
    emu.fault(status(502));
    c.regenerate(&model_scope(), CONSOLE_KEY).await.unwrap();
    assert_eq!(emu.count(&format!("PUT {MODEL_REGEN}")), 2);

    // Persistent 500s: Unavailable after the configured attempts.
    emu.run.faults.push((0..3).map(|_| status(500)));
    match c.revoke(&model_scope(), CONSOLE_KEY).await {
        Err(ProviderError::Unavailable(m)) => {
            assert!(m.contains("Unexpected server-side error"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.count(&format!("DELETE {MODEL_ONE}")), 3);

    // A 500 on create is not retried: DigitalOcean may have made the key.
    emu.fault(status(500));
    assert!(matches!(
        c.create(&agent_settings("once", AGENT)).await,
        Err(ProviderError::Unavailable(_))
    ));
    assert_eq!(emu.count(&format!("POST {AGENT_LIST}")), 1);
}

#[tokio::test]
async fn timeouts_are_unavailable_and_create_is_sent_once() {
    let emu = start(base_args()).await;
    let c = client(&emu);
    // One slow answer on a safe call: retried, fine.
    emu.fault(delayed(1_000));
    c.list_page(&model_scope(), None).await.unwrap();
    assert_eq!(emu.count(&format!("GET {MODEL_LIST}")), 2);
    // Always slow: Unavailable.
    emu.run
        .faults
        .push([delayed(1_000), delayed(1_000), delayed(1_000)]);
    match c.verify().await {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A create that times out is not sent again.
    emu.fault(delayed(1_000));
    assert!(matches!(
        c.create(&agent_settings("slow", AGENT)).await,
        Err(ProviderError::Unavailable(_))
    ));
    assert_eq!(emu.count(&format!("POST {AGENT_LIST}")), 1);
}

#[tokio::test]
async fn malformed_answers_are_malformed() {
    let emu = start(base_args()).await;
    let c = client(&emu);
    emu.fault(malformed());
    assert!(matches!(
        c.list_page(&model_scope(), None).await,
        Err(ProviderError::Malformed(_))
    ));
    emu.fault(malformed());
    assert!(matches!(
        c.create(&agent_settings("m", AGENT)).await,
        Err(ProviderError::Malformed(_))
    ));
    emu.fault(malformed());
    let err = c.regenerate(&model_scope(), CONSOLE_KEY).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
    emu.fault(malformed());
    assert!(matches!(
        c.update(
            &model_scope(),
            CONSOLE_KEY,
            &model_settings("n", None),
            &[Field::DisplayName]
        )
        .await,
        Err(ProviderError::Malformed(_))
    ));
    // Nothing was queued behind: the next call is fine.
    c.list_page(&model_scope(), None).await.unwrap();
}

#[tokio::test]
async fn no_secret_in_errors_or_debug() {
    let emu = start(base_args()).await;
    let wrong_token = "dop_v1_wrongwrongwrongwrong0123456789";
    let c = client(&emu);
    let created = c.create(&agent_settings("s", AGENT)).await.unwrap();
    let secret = created.secret.expose_secret().to_string();
    let regen = c
        .regenerate(&agent_scope(AGENT), &created.key.id)
        .await
        .unwrap();
    let regen_secret = regen.secret.expose_secret().to_string();

    let mut errors = vec![
        client_with(&emu, wrong_token).verify().await.unwrap_err(),
        client_with(&emu, &secret).verify().await.unwrap_err(),
        c.create(&model_settings("m", None)).await.unwrap_err(),
    ];
    emu.fault(malformed());
    errors.push(
        c.regenerate(&agent_scope(AGENT), &created.key.id)
            .await
            .unwrap_err(),
    );
    let mut texts: Vec<String> = errors
        .iter()
        .flat_map(|e| [e.to_string(), format!("{e:?}")])
        .collect();
    texts.push(format!("{created:?} {regen:?}"));
    texts.push(format!("{:?}", client_with(&emu, wrong_token)));
    for t in &texts {
        for s in [wrong_token, TOKEN, secret.as_str(), regen_secret.as_str()] {
            assert!(!t.contains(s), "{t}");
        }
    }
}

// ---- emulator control and flags ---------------------------------------------------------------

#[tokio::test]
async fn control_endpoints_seed_and_list_keys() {
    let emu = start(Args {
        agents: vec![],
        model_keys: vec![],
        ..base_args()
    })
    .await;
    let url = emu.url();
    use reqwest::Method as M;

    // Faults and counters leave the control endpoints alone.
    emu.fault(status(500));
    let (s, _, seeded) = raw(
        M::POST,
        format!("{url}/_emulator/model-keys"),
        None,
        Some(r#"{"name":"from-console"}"#),
    )
    .await;
    assert_eq!(s, 201);
    let uuid = seeded["uuid"].as_str().unwrap().to_string();
    let secret = seeded["secret_key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-do-"));
    assert!(model_key_works(&emu, &secret).await);
    let (s, _, agent) = raw(M::POST, format!("{url}/_emulator/agents"), None, Some("{}")).await;
    assert_eq!(s, 201);
    let agent = agent["uuid"].as_str().unwrap().to_string();
    let (s, _, _) = raw(
        M::POST,
        format!("{url}/_emulator/model-keys"),
        None,
        Some(r#"{"name":""}"#),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(emu.run.faults.requests(), 0);
    // The queued 500 is still there for the key API.
    let c = client(&emu);
    c.list_page(&model_scope(), None).await.unwrap();
    assert_eq!(emu.count(&format!("GET {MODEL_LIST}")), 2);

    // The new agent takes keys; the listing shows both families without values.
    let k = c.create(&agent_settings("a", &agent)).await.unwrap();
    let (text, keys) = control_keys(&emu).await;
    assert!(!text.contains(&secret) && !text.contains(k.secret.expose_secret()));
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["id"], uuid.as_str());
    assert_eq!(keys[0]["family"], "model");
    assert_eq!(keys[0]["active"], true);
    assert_eq!(keys[1]["family"], "agent");
    assert_eq!(keys[1]["agentUUID"], agent.as_str());
    chrono::DateTime::parse_from_rfc3339(keys[1]["createdAt"].as_str().unwrap()).unwrap();
}

#[test]
fn flags_parse() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    let cli = Cli::try_parse_from([
        "emulate",
        "--token",
        "a",
        "--token",
        "b",
        "--agent",
        AGENT,
        "--model-key",
        "console",
        "--model-key",
        &format!("named={CONSOLE_KEY}"),
        "--allow-model-key-create",
        "--rate-limit",
        "5",
    ])
    .unwrap();
    assert_eq!(cli.args.tokens, ["a", "b"]);
    assert_eq!(cli.args.agents, [AGENT]);
    assert_eq!(cli.args.model_keys.len(), 2);
    assert!(cli.args.allow_model_key_create);
    assert_eq!(cli.args.minute_limit, 250);
    assert_eq!(cli.args.hourly_limit, 5000);
    assert!(Cli::try_parse_from(["emulate", "--agent", "not-a-uuid"]).is_err());
}

#[tokio::test]
async fn default_token_and_seeded_uuid() {
    let emu = start(Args {
        tokens: vec![],
        read_only_tokens: vec![],
        ..base_args()
    })
    .await;
    let c = client_with(&emu, "dop_v1_emulator");
    c.verify().await.unwrap();
    let k = c.get(&model_scope(), CONSOLE_KEY).await.unwrap();
    assert_eq!(k.name, "console-key");
}

#[test]
fn the_spec_check_catches_wrong_shapes() {
    // What the emulator must not do (and would be caught doing): numeric created_by, a bad
    // timestamp, `deleted_at: null` (the spec declares a non-nullable string), an error without id.
    let cases = [
        (
            200,
            json!({ "api_key_infos": [{ "uuid": "u", "created_by": 12345 }] }),
            "created_by",
        ),
        (
            200,
            json!({ "api_key_infos": [{ "uuid": "u", "created_at": "yesterday" }] }),
            "created_at",
        ),
        (
            200,
            json!({ "api_key_infos": [{ "uuid": "u", "deleted_at": null }] }),
            "deleted_at",
        ),
        (200, json!({ "meta": { "page": "1" } }), "/meta/page"),
        (401, json!({ "message": "x" }), "\"id\""),
    ];
    for (status, body, needle) in cases {
        let e = validate_response(SPEC, MODEL_LIST, "get", status, &body).unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
}

/// The manifests in examples/digitalocean work against the emulator started as their comment
/// says: the flags parse, the ApiKeys pass validation, and the keys they name exist.
#[tokio::test]
async fn examples_work_as_written() {
    #[derive(Parser)]
    struct Cli {
        #[arg(long)]
        listen: String,
        #[command(flatten)]
        args: Args,
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digitalocean");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();

    // The emulator command in the provider manifest's comment.
    let provider_yaml = read("01-keyprovider.yaml");
    let command: String = provider_yaml
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| l.trim_end_matches('\\').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .collect();
    assert_eq!(words[..3], ["keysmith", "emulate", "digitalocean"]);
    let cli = Cli::try_parse_from(
        std::iter::once("emulate".to_string()).chain(words[3..].iter().cloned()),
    )
    .unwrap();
    let emu = start(cli.args).await;

    // The provider points at the emulator's address and reads the token from the Secret.
    let provider: keysmith::api::KeyProvider = serde_yaml::from_str(&provider_yaml).unwrap();
    let spec = provider.spec.digitalocean.clone().unwrap();
    assert_eq!(
        spec.base_url.as_deref(),
        Some(format!("http://{}", cli.listen).as_str())
    );
    // The file creates the namespace first; the Secret is its last document.
    let credentials = read("00-credentials.yaml");
    let secret: Value =
        serde_yaml::from_str(credentials.rsplit("\n---\n").next().unwrap()).unwrap();
    let token = secret["stringData"][spec.token_secret_ref.key.as_str()]
        .as_str()
        .unwrap()
        .to_string();
    let mut creds = BTreeMap::new();
    creds.insert("token".to_string(), SecretString::from(token));
    let c = DigitalOceanClient::new(
        &DigitalOceanProvider {
            base_url: Some(emu.url()),
            ..spec
        },
        Credentials(creds),
        opts(),
    )
    .unwrap();
    c.verify().await.unwrap();

    // The adopted model key exists and regenerates; the agent key mints.
    for (file, adopt) in [
        ("02-apikey-model-adopted.yaml", true),
        ("03-apikey-agent.yaml", false),
    ] {
        let ak: keysmith::api::ApiKey = serde_yaml::from_str(&read(file)).unwrap();
        let name = ak.spec.display_name.clone().unwrap();
        let settings = KeySettings::from_spec(&ak.spec, name, chrono::Utc::now()).unwrap();
        assert!(c.validate(&settings).is_empty(), "{file}");
        let scope = c.scope(&settings);
        let value = if adopt {
            let id = settings.key_ref.clone().unwrap();
            assert_eq!(scope, model_scope());
            c.get(&scope, &id).await.unwrap();
            let v = c.regenerate(&scope, &id).await.unwrap();
            assert!(model_key_works(&emu, v.secret.expose_secret()).await);
            v
        } else {
            let v = c.create(&settings).await.unwrap();
            assert!(agent_key_works(&emu, &scope.parent, v.secret.expose_secret()).await);
            v
        };
        assert_eq!(
            c.get(&scope, &value.key.id).await.unwrap().id,
            value.key.id,
            "{file}"
        );
    }
}
