//! DigitalOcean Gradient emulator: model access keys and agent API keys under `/v2/gen-ai/`, plus
//! the places the keys are used, on one listener.
//!
//! Key API (Bearer API token, `--token`; `--read-only-token` has only `genai:read` and gets 403 on
//! writes):
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v2/gen-ai/models/api_keys?page=&per_page=` | `{api_key_infos, links, meta}`; default 20 per page, max 200; `secret_key` empty |
//! | `POST /v2/gen-ai/models/api_keys` | **410 Gone** whatever the body (`--allow-model-key-create`: the historical 200) |
//! | `PUT /v2/gen-ai/models/api_keys/{uuid}` | rename (only `name`), `{api_key_info}` |
//! | `PUT /v2/gen-ai/models/api_keys/{uuid}/regenerate` | new `secret_key`; the old one stops working at once |
//! | `DELETE /v2/gen-ai/models/api_keys/{uuid}` | 200 `{api_key_info}` with `deleted_at`; then 404 |
//! | `GET/POST /v2/gen-ai/agents/{agent}/api_keys`, `PUT/DELETE …/{uuid}`, `PUT …/{uuid}/regenerate` | the same for agent keys (unknown agent: 404) |
//!
//! Every key API answer (errors included) carries `ratelimit-limit`, `ratelimit-remaining` and
//! `ratelimit-reset`; per token, `--minute-limit` (250) requests a minute answer 429 with
//! `retry-after`, and `--hourly-limit` (5000) an hour 429 without it (0 switches a limit off).
//! Errors are `{"id", "message", "request_id"}`.
//!
//! Where keys are used (not fault-injected, not counted: another host at DigitalOcean):
//! - `GET /v1/models` with `Bearer <model key>`: serverless inference (`inference.do-ai.run`),
//!   200 with a model list or 401.
//! - `POST /_emulator/agents/{agent_uuid}/check` with `Bearer <agent key>`: stands for the agent's
//!   own endpoint, 200 `{agent_uuid, api_key_uuid, name}` or 401.
//!
//! Control (no credentials): `GET /_emulator/keys` (both families, never a secret),
//! `POST /_emulator/model-keys {"name", "uuid"?}` → `{"uuid", "secret_key"}` (a key created in the
//! control panel, which shows its secret once), `POST /_emulator/agents {"uuid"?}` → `{"uuid"}`.

// Helpers return the axum `Response` to send as their error, as handlers do.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::normalise::{Field, Rewrite};
use super::{json_response, random_hex, FaultArgs, Faults};

const MODEL_KEYS: &str = "/v2/gen-ai/models/api_keys";
const DEFAULT_TOKEN: &str = "dop_v1_emulator";
const GONE_MESSAGE: &str = "resource retired: Creating model API keys through this endpoint is retired. Go to manage page in the control panel to create a model access key.";
const NOT_FOUND_MESSAGE: &str = "The resource you requested could not be found.";

/// Flags of `keysmith emulate digitalocean`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub faults: FaultArgs,
    /// API token accepted with every genai scope (repeatable). Without any --token or
    /// --read-only-token, `dop_v1_emulator` is accepted.
    #[arg(long = "token")]
    pub tokens: Vec<String>,
    /// API token with only `genai:read` (repeatable): writes answer 403 forbidden.
    #[arg(long = "read-only-token")]
    pub read_only_tokens: Vec<String>,
    /// An agent that exists (repeatable), by uuid. Keys of any other agent answer 404.
    #[arg(long = "agent", value_parser = parse_uuid)]
    pub agents: Vec<String>,
    /// A model key created in the control panel (repeatable): `NAME` or `NAME=UUID`. Its secret
    /// is not printed; adopt it (keysmith regenerates it) to get a value.
    #[arg(long = "model-key")]
    pub model_keys: Vec<String>,
    /// Answer model-key create with the historical 200 instead of 410 Gone.
    #[arg(long)]
    pub allow_model_key_create: bool,
    /// Requests per token per hour (DigitalOcean: 5000); 0: not enforced.
    #[arg(long, default_value_t = 5000)]
    pub hourly_limit: u32,
    /// Requests per token per minute (DigitalOcean: 250); 0: not enforced.
    #[arg(long, default_value_t = 250)]
    pub minute_limit: u32,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            faults: FaultArgs::default(),
            tokens: Vec::new(),
            read_only_tokens: Vec::new(),
            agents: Vec::new(),
            model_keys: Vec::new(),
            allow_model_key_create: false,
            hourly_limit: 5000,
            minute_limit: 250,
        }
    }
}

/// A UUID in its 8-4-4-4-12 hex form, any case (the emulator's own check: DigitalOcean's API
/// documents its ids as `format: uuid`).
fn looks_like_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn parse_uuid(s: &str) -> Result<String, String> {
    if looks_like_uuid(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is not a uuid like 1b418231-b7d6-11ef-bf8f-4e013e2ddde4"
        ))
    }
}

// ---- state ------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Family {
    Model,
    Agent(String),
}

struct Key {
    uuid: String,
    name: String,
    secret: String,
    family: Family,
    created_at: DateTime<Utc>,
    created_by: String,
    deleted_at: Option<DateTime<Utc>>,
    regenerations: u32,
}

impl Key {
    fn live(&self) -> bool {
        self.deleted_at.is_none()
    }

    /// `apiModelAPIKeyInfo` / `apiAgentAPIKeyInfo`; the secret only where DigitalOcean shows it.
    fn info(&self, with_secret: bool) -> Value {
        let mut v = json!({
            "uuid": self.uuid,
            "name": self.name,
            "secret_key": if with_secret { self.secret.as_str() } else { "" },
            "created_at": ts(self.created_at),
            "created_by": self.created_by,
        });
        if let Some(d) = self.deleted_at {
            v["deleted_at"] = json!(ts(d));
        }
        v
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Clone, Copy, PartialEq)]
enum Need {
    Read,
    Write,
}

struct Token {
    user_id: String,
    read_only: bool,
}

struct Inner {
    keys: Vec<Key>,
    agents: BTreeSet<String>,
    /// Request times per token (the last hour), for the ratelimit headers.
    windows: HashMap<String, VecDeque<Instant>>,
}

struct Emulator {
    tokens: HashMap<String, Token>,
    allow_model_key_create: bool,
    hourly_limit: u32,
    minute_limit: u32,
    inner: Mutex<Inner>,
}

type St = Arc<Emulator>;

fn model_secret() -> String {
    format!("sk-do-{}", random_hex(48))
}

fn agent_secret() -> String {
    random_hex(40)
}

impl Emulator {
    fn new(args: &Args) -> Self {
        let mut tokens = HashMap::new();
        let plain: Vec<&String> = args.tokens.iter().collect();
        let default = DEFAULT_TOKEN.to_string();
        let plain = if plain.is_empty() && args.read_only_tokens.is_empty() {
            vec![&default]
        } else {
            plain
        };
        let mut uid = 1_000_000u64;
        for (t, ro) in plain
            .into_iter()
            .map(|t| (t, false))
            .chain(args.read_only_tokens.iter().map(|t| (t, true)))
        {
            uid += 1;
            tokens.entry(t.clone()).or_insert(Token {
                user_id: uid.to_string(),
                read_only: ro,
            });
        }
        let now = Utc::now();
        let keys = args
            .model_keys
            .iter()
            .map(|spec| {
                let (name, uuid) = match spec.rsplit_once('=') {
                    Some((n, u)) if looks_like_uuid(u) => (n.to_string(), u.to_ascii_lowercase()),
                    _ => (spec.clone(), uuid::Uuid::new_v4().to_string()),
                };
                tracing::info!(uuid = %uuid, name = %name, "seeded model key");
                Key {
                    uuid,
                    name,
                    secret: model_secret(),
                    family: Family::Model,
                    created_at: now,
                    created_by: "1000001".into(),
                    deleted_at: None,
                    regenerations: 0,
                }
            })
            .collect();
        Emulator {
            tokens,
            allow_model_key_create: args.allow_model_key_create,
            hourly_limit: args.hourly_limit,
            minute_limit: args.minute_limit,
            inner: Mutex::new(Inner {
                keys,
                agents: args.agents.iter().cloned().collect(),
                windows: HashMap::new(),
            }),
        }
    }

    /// The user id behind the request's token, or the error to answer.
    fn auth(&self, headers: &HeaderMap, need: Need) -> Result<String, Response> {
        let token = bearer(headers).ok_or_else(unauthorized)?;
        let t = self.tokens.get(token).ok_or_else(unauthorized)?;
        if t.read_only && need == Need::Write {
            return Err(err(
                StatusCode::FORBIDDEN,
                "You are not authorized to perform this operation.",
            ));
        }
        Ok(t.user_id.clone())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

// ---- errors -----------------------------------------------------------------------------------

fn error_id(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        410 => "gone",
        422 => "unprocessable_entity",
        429 => "too_many_requests",
        500 => "server_error",
        503 => "service_unavailable",
        _ => "error",
    }
}

/// DigitalOcean's error envelope.
fn err(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        json!({
            "id": error_id(status),
            "message": message,
            "request_id": uuid::Uuid::new_v4().to_string(),
        }),
    )
}

fn unauthorized() -> Response {
    err(StatusCode::UNAUTHORIZED, "Unable to authenticate you.")
}

fn not_found() -> Response {
    err(StatusCode::NOT_FOUND, NOT_FOUND_MESSAGE)
}

fn bad_request(message: &str) -> Response {
    err(StatusCode::BAD_REQUEST, message)
}

/// The renderer for injected faults: the envelope plus nominal ratelimit headers (faults are
/// answered before the emulator's own accounting).
fn render_error(status: StatusCode, message: &str) -> Response {
    let message = match status.as_u16() {
        429 => "API rate limit exceeded.",
        500 => "Unexpected server-side error",
        _ => message,
    };
    let mut resp = err(status, message);
    let remaining = if status == StatusCode::TOO_MANY_REQUESTS {
        0
    } else {
        4999
    };
    set_ratelimit(&mut resp, 5000, remaining, Utc::now().timestamp() + 60);
    resp
}

fn set_ratelimit(resp: &mut Response, limit: u32, remaining: u32, reset: i64) {
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(limit));
    h.insert("ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("ratelimit-reset", HeaderValue::from(reset));
}

/// Per-token accounting: a sliding hour for the headers and the hourly limit, the last minute
/// for the burst limit (429 with `retry-after`).
async fn ratelimit(State(emu): State<St>, req: Request, next: Next) -> Response {
    let token = bearer(req.headers())
        .filter(|t| emu.tokens.contains_key(*t))
        .unwrap_or("")
        .to_string();
    let now = Instant::now();
    let now_epoch = Utc::now().timestamp();
    let hour = Duration::from_secs(3600);
    let minute = Duration::from_secs(60);
    let (refusal, remaining, reset) = {
        let mut inner = emu.inner.lock().unwrap();
        let window = inner.windows.entry(token).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= hour)
        {
            window.pop_front();
        }
        let in_minute: Vec<&Instant> = window
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < minute)
            .collect();
        let refusal = if emu.minute_limit > 0 && in_minute.len() >= emu.minute_limit as usize {
            let oldest = in_minute.last().expect("non-empty");
            let left = minute.saturating_sub(now.duration_since(**oldest));
            Some(Some(left.as_secs_f64().ceil().max(1.0) as u64))
        } else if emu.hourly_limit > 0 && window.len() >= emu.hourly_limit as usize {
            Some(None)
        } else {
            None
        };
        if refusal.is_none() {
            window.push_back(now);
        }
        let limit = if emu.hourly_limit > 0 {
            emu.hourly_limit
        } else {
            5000
        };
        let remaining = limit.saturating_sub(window.len() as u32);
        let reset = match window.front() {
            Some(t) => now_epoch - now.duration_since(*t).as_secs() as i64 + 3600,
            None => now_epoch,
        };
        (refusal, remaining, reset)
    };
    let limit = if emu.hourly_limit > 0 {
        emu.hourly_limit
    } else {
        5000
    };
    let mut resp = match refusal {
        Some(retry_after) => {
            let mut r = err(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded.");
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(s));
            }
            r
        }
        None => next.run(req).await,
    };
    set_ratelimit(&mut resp, limit, remaining, reset);
    resp
}

// ---- helpers ----------------------------------------------------------------------------------

/// A JSON object body (absent body: empty object), or the 400 to answer.
fn object_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, Response> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("request body must be a JSON object")),
        Err(_) => Err(bad_request("request body is not valid JSON")),
    }
}

/// An optional string field; a non-string value is a 400.
fn string_field(
    m: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, Response> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(&format!("{field} must be a string"))),
    }
}

/// A required, non-empty name of at most 255 characters.
fn name_field(m: &serde_json::Map<String, Value>) -> Result<String, Response> {
    let name = string_field(m, "name")?.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(bad_request("name is required"));
    }
    if name.chars().count() > 255 {
        return Err(bad_request("name must be at most 255 characters"));
    }
    Ok(name)
}

fn info_envelope(k: &Key, with_secret: bool) -> Response {
    Json(json!({ "api_key_info": k.info(with_secret) })).into_response()
}

fn parse_positive(q: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, Response> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad_request(&format!("{name} must be a positive integer"))),
    }
}

// ---- key API ----------------------------------------------------------------------------------

fn list(
    emu: &Emulator,
    family: &Family,
    headers: &HeaderMap,
    path: &str,
    q: &HashMap<String, String>,
) -> Response {
    let page = match parse_positive(q, "page", 1) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let per_page = match parse_positive(q, "per_page", 20) {
        Ok(p) => p.min(200),
        Err(r) => return r,
    };
    let inner = emu.inner.lock().unwrap();
    let keys: Vec<&Key> = inner
        .keys
        .iter()
        .filter(|k| k.live() && k.family == *family)
        .collect();
    let total = keys.len() as u64;
    let pages = total.div_ceil(per_page);
    let start = ((page - 1) * per_page).min(total) as usize;
    let end = (page * per_page).min(total) as usize;
    let infos: Vec<Value> = keys[start..end].iter().map(|k| k.info(false)).collect();
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("api.digitalocean.com");
    let link = |p: u64| format!("http://{host}{path}?page={p}&per_page={per_page}");
    let mut pages_links = serde_json::Map::new();
    if page > 1 && pages >= 1 {
        pages_links.insert("first".into(), json!(link(1)));
        pages_links.insert("previous".into(), json!(link((page - 1).min(pages))));
    }
    if page < pages {
        pages_links.insert("next".into(), json!(link(page + 1)));
        pages_links.insert("last".into(), json!(link(pages)));
    }
    let mut body = json!({
        "api_key_infos": infos,
        "meta": { "page": page, "pages": pages, "total": total },
    });
    // Only links that make sense; none at all when everything fits on one page.
    if !pages_links.is_empty() {
        body["links"] = json!({ "pages": pages_links });
    }
    Json(body).into_response()
}

async fn list_models(
    State(emu): State<St>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = emu.auth(&headers, Need::Read) {
        return r;
    }
    list(&emu, &Family::Model, &headers, MODEL_KEYS, &q)
}

async fn list_agent(
    State(emu): State<St>,
    Path(agent): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = emu.auth(&headers, Need::Read) {
        return r;
    }
    if !emu.inner.lock().unwrap().agents.contains(&agent) {
        return not_found();
    }
    let path = format!("/v2/gen-ai/agents/{agent}/api_keys");
    list(&emu, &Family::Agent(agent), &headers, &path, &q)
}

async fn create_model(State(emu): State<St>, headers: HeaderMap, body: Bytes) -> Response {
    let user = match emu.auth(&headers, Need::Write) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !emu.allow_model_key_create {
        // Retired: 410 whatever the body says.
        return err(StatusCode::GONE, GONE_MESSAGE);
    }
    let name = match object_body(&body).and_then(|m| name_field(&m)) {
        Ok(n) => n,
        Err(r) => return r,
    };
    insert(&emu, Family::Model, name, user)
}

async fn create_agent(
    State(emu): State<St>,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = match emu.auth(&headers, Need::Write) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !emu.inner.lock().unwrap().agents.contains(&agent) {
        return not_found();
    }
    let m = match object_body(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match string_field(&m, "agent_uuid") {
        Err(r) => return r,
        Ok(Some(a)) if !a.is_empty() && a != agent => {
            return bad_request("agent_uuid in the body does not match the agent in the path")
        }
        Ok(_) => {}
    }
    let name = match name_field(&m) {
        Ok(n) => n,
        Err(r) => return r,
    };
    insert(&emu, Family::Agent(agent), name, user)
}

fn insert(emu: &Emulator, family: Family, name: String, created_by: String) -> Response {
    let secret = match family {
        Family::Model => model_secret(),
        Family::Agent(_) => agent_secret(),
    };
    let key = Key {
        uuid: uuid::Uuid::new_v4().to_string(),
        name,
        secret,
        family,
        created_at: Utc::now(),
        created_by,
        deleted_at: None,
        regenerations: 0,
    };
    let resp = info_envelope(&key, true);
    emu.inner.lock().unwrap().keys.push(key);
    resp
}

/// Find a live key of a family; an unknown agent is a 404 too.
fn with_key(
    emu: &Emulator,
    family: &Family,
    uuid: &str,
    f: impl FnOnce(&mut Key) -> Response,
) -> Response {
    let mut inner = emu.inner.lock().unwrap();
    if let Family::Agent(a) = family {
        if !inner.agents.contains(a) {
            return not_found();
        }
    }
    match inner
        .keys
        .iter_mut()
        .find(|k| k.live() && k.uuid == uuid && k.family == *family)
    {
        Some(k) => f(k),
        None => not_found(),
    }
}

fn rename(
    emu: &Emulator,
    family: Family,
    uuid: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    if let Err(r) = emu.auth(headers, Need::Write) {
        return r;
    }
    let m = match object_body(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match string_field(&m, "api_key_uuid") {
        Err(r) => return r,
        Ok(Some(u)) if !u.is_empty() && u != uuid => {
            return bad_request("api_key_uuid in the body does not match the key in the path")
        }
        Ok(_) => {}
    }
    if let Family::Agent(a) = &family {
        match string_field(&m, "agent_uuid") {
            Err(r) => return r,
            Ok(Some(b)) if !b.is_empty() && b != *a => {
                return bad_request("agent_uuid in the body does not match the agent in the path")
            }
            Ok(_) => {}
        }
    }
    let name = match name_field(&m) {
        Ok(n) => n,
        Err(r) => return r,
    };
    with_key(emu, &family, uuid, |k| {
        k.name = name;
        info_envelope(k, false)
    })
}

fn regenerate(emu: &Emulator, family: Family, uuid: &str, headers: &HeaderMap) -> Response {
    if let Err(r) = emu.auth(headers, Need::Write) {
        return r;
    }
    with_key(emu, &family, uuid, |k| {
        k.secret = match k.family {
            Family::Model => model_secret(),
            Family::Agent(_) => agent_secret(),
        };
        k.regenerations += 1;
        info_envelope(k, true)
    })
}

fn delete(emu: &Emulator, family: Family, uuid: &str, headers: &HeaderMap) -> Response {
    if let Err(r) = emu.auth(headers, Need::Write) {
        return r;
    }
    with_key(emu, &family, uuid, |k| {
        k.deleted_at = Some(Utc::now());
        info_envelope(k, false)
    })
}

async fn update_model(
    State(emu): State<St>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rename(&emu, Family::Model, &uuid, &headers, &body)
}

async fn update_agent(
    State(emu): State<St>,
    Path((agent, uuid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rename(&emu, Family::Agent(agent), &uuid, &headers, &body)
}

async fn regenerate_model(
    State(emu): State<St>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    regenerate(&emu, Family::Model, &uuid, &headers)
}

async fn regenerate_agent(
    State(emu): State<St>,
    Path((agent, uuid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    regenerate(&emu, Family::Agent(agent), &uuid, &headers)
}

async fn delete_model(
    State(emu): State<St>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    delete(&emu, Family::Model, &uuid, &headers)
}

async fn delete_agent(
    State(emu): State<St>,
    Path((agent, uuid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(&emu, Family::Agent(agent), &uuid, &headers)
}

// ---- where keys are used ----------------------------------------------------------------------

fn live_key<'a>(inner: &'a Inner, headers: &HeaderMap, family: &Family) -> Option<&'a Key> {
    let secret = bearer(headers)?;
    inner
        .keys
        .iter()
        .find(|k| k.live() && k.family == *family && k.secret == secret)
}

/// Serverless inference's model list (`https://inference.do-ai.run/v1/models`).
async fn inference_models(State(emu): State<St>, headers: HeaderMap) -> Response {
    let inner = emu.inner.lock().unwrap();
    if live_key(&inner, &headers, &Family::Model).is_none() {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({ "error": { "message": "Invalid API key", "type": "authentication_error", "code": "invalid_api_key" } }),
        );
    }
    let created = Utc::now().timestamp();
    let models: Vec<Value> = [
        "llama3.3-70b-instruct",
        "openai-gpt-oss-120b",
        "anthropic-claude-3.7-sonnet",
    ]
    .iter()
    .map(
        |id| json!({ "id": id, "object": "model", "created": created, "owned_by": "digitalocean" }),
    )
    .collect();
    Json(json!({ "object": "list", "data": models })).into_response()
}

/// Stands for an agent's own endpoint: is this a live key of that agent?
async fn agent_check(
    State(emu): State<St>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Response {
    let inner = emu.inner.lock().unwrap();
    match live_key(&inner, &headers, &Family::Agent(agent.clone())) {
        Some(k) => Json(json!({ "agent_uuid": agent, "api_key_uuid": k.uuid, "name": k.name }))
            .into_response(),
        None => unauthorized(),
    }
}

// ---- control ----------------------------------------------------------------------------------

async fn control_keys(State(emu): State<St>) -> Response {
    let inner = emu.inner.lock().unwrap();
    let keys: Vec<Value> = inner
        .keys
        .iter()
        .map(|k| {
            let (family, agent) = match &k.family {
                Family::Model => ("model", Value::Null),
                Family::Agent(a) => ("agent", json!(a)),
            };
            json!({
                "id": k.uuid,
                "name": k.name,
                "family": family,
                "agentUUID": agent,
                "active": k.live(),
                "revoked": !k.live(),
                "createdAt": ts(k.created_at),
                "createdBy": k.created_by,
                "deletedAt": k.deleted_at.map(ts),
                "regenerations": k.regenerations,
            })
        })
        .collect();
    Json(json!({ "keys": keys, "agents": inner.agents })).into_response()
}

/// A model key created in the control panel; the panel shows its secret once, and so does this.
async fn control_model_key(State(emu): State<St>, body: Bytes) -> Response {
    let m = match object_body(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let name = match name_field(&m) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let uuid = match string_field(&m, "uuid") {
        Err(r) => return r,
        Ok(None) => uuid::Uuid::new_v4().to_string(),
        Ok(Some(u)) => match parse_uuid(&u) {
            Ok(u) => u,
            Err(e) => return bad_request(&e),
        },
    };
    let mut inner = emu.inner.lock().unwrap();
    if inner.keys.iter().any(|k| k.uuid == uuid) {
        return err(StatusCode::CONFLICT, "a key with this uuid exists");
    }
    let secret = model_secret();
    inner.keys.push(Key {
        uuid: uuid.clone(),
        name,
        secret: secret.clone(),
        family: Family::Model,
        created_at: Utc::now(),
        created_by: "1000001".into(),
        deleted_at: None,
        regenerations: 0,
    });
    (
        StatusCode::CREATED,
        Json(json!({ "uuid": uuid, "secret_key": secret })),
    )
        .into_response()
}

/// Make an agent exist.
async fn control_agent(State(emu): State<St>, body: Bytes) -> Response {
    let m = match object_body(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let uuid = match string_field(&m, "uuid") {
        Err(r) => return r,
        Ok(None) => uuid::Uuid::new_v4().to_string(),
        Ok(Some(u)) => match parse_uuid(&u) {
            Ok(u) => u,
            Err(e) => return bad_request(&e),
        },
    };
    emu.inner.lock().unwrap().agents.insert(uuid.clone());
    (StatusCode::CREATED, Json(json!({ "uuid": uuid }))).into_response()
}

async fn fallback() -> Response {
    not_found()
}

/// What `--normalise` rewrites in DigitalOcean's answers (a key has a name and times only).
const NORMALISE: &[Field] = &[
    ("created_at", Rewrite::Time),
    ("updated_at", Rewrite::Time),
    ("deleted_at", Rewrite::Time),
];

/// The router and its fault state. The key API routes get fault injection and request counting
/// (the framework's `route_layer`); inference, the agent check and the control endpoints are the
/// router's fallback service, which `route_layer` leaves alone.
pub fn build(args: &Args) -> (Router, Arc<Faults>) {
    let emu: St = Arc::new(Emulator::new(args));
    let api = Router::new()
        .route(MODEL_KEYS, get(list_models).post(create_model))
        .route(
            "/v2/gen-ai/models/api_keys/{api_key_uuid}",
            put(update_model).delete(delete_model),
        )
        .route(
            "/v2/gen-ai/models/api_keys/{api_key_uuid}/regenerate",
            put(regenerate_model),
        )
        .route(
            "/v2/gen-ai/agents/{agent_uuid}/api_keys",
            get(list_agent).post(create_agent),
        )
        .route(
            "/v2/gen-ai/agents/{agent_uuid}/api_keys/{api_key_uuid}",
            put(update_agent).delete(delete_agent),
        )
        .route(
            "/v2/gen-ai/agents/{agent_uuid}/api_keys/{api_key_uuid}/regenerate",
            put(regenerate_agent),
        )
        .route_layer(middleware::from_fn_with_state(emu.clone(), ratelimit))
        .with_state(emu.clone());
    let side = Router::new()
        .route("/v1/models", get(inference_models))
        .route("/_emulator/agents/{agent_uuid}/check", post(agent_check))
        .route("/_emulator/keys", get(control_keys))
        .route("/_emulator/model-keys", post(control_model_key))
        .route("/_emulator/agents", post(control_agent))
        .fallback(fallback)
        .with_state(emu);
    let faults = Faults::new(args.faults.clone(), render_error);
    (
        super::normalised(api.fallback_service(side), &faults, NORMALISE),
        faults,
    )
}
