//! Emulator of OpenRouter's key management API, served under `/api/v1` like the real one (a
//! client's base URL is `http://ADDR/api/v1`).
//!
//! | endpoint | who may call | what it does |
//! |---|---|---|
//! | `GET /api/v1/key` | any live key | the calling key (`is_management_key`) |
//! | `GET /api/v1/keys?offset=&include_disabled=&workspace_id=` | management keys | 100 keys a page (`--page-size`), newest first |
//! | `POST /api/v1/keys` | management keys | **201** `{data, key}`: the only time the plaintext is shown |
//! | `GET/PATCH/DELETE /api/v1/keys/{hash}` | management keys | one key; partial update; delete |
//! | `GET /_emulator/keys` | anyone | every key ever created (deleted ones with `active: false`), no plaintext |
//! | `POST /_emulator/usage` | anyone | `{"hash": "…", "amount": 1.25, "byok": false}` adds spend to a key; with `"asRequest": true` as a request made with the key would: 401 when the key is disabled or expired, 402 when it costs more than the key's limit has left |
//!
//! Errors use OpenRouter's envelope `{"error": {"code": <status>, "message": "…"}, "user_id":
//! null, "openrouter_metadata": null}`. Management keys are given on the command line; keys minted
//! here are stored as SHA-256 digests only. A minted key on `/keys*` gets 403; a disabled,
//! expired or deleted key gets 401 everywhere, including `GET /key`.
//!
//! Not emulated: daily/weekly/monthly usage resets by the clock (a test resets a period with
//! `POST /_emulator/reset-period`), BYOK spend except through
//! `POST /_emulator/usage`, `creator_user_id` other than the emulator's one user, and workspaces
//! other than "any UUID names a workspace".

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header::AUTHORIZATION, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::normalise::{Field, Rewrite};
use super::{json_response, random_hex, FaultArgs, Faults};

/// Workspace of keys created or listed without `workspace_id` (the example id of OpenRouter's
/// API description).
pub const DEFAULT_WORKSPACE: &str = "0df9e665-d932-5740-b2c7-b52af166bc11";

/// The one user of the emulated account.
pub const CREATOR_USER_ID: &str = "user_2keysmithEmulator000000000";

/// OpenRouter's page size for `GET /keys`.
pub const PAGE_SIZE: usize = 100;

/// Flags of `keysmith emulate openrouter`.
#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Management key accepted by the emulator (repeatable, or several separated by commas).
    /// Any string without a comma works; real ones look like `sk-or-v1-<64 hex>`.
    #[arg(
        long = "management-key",
        env = "KEYSMITH_EMULATOR_MANAGEMENT_KEY",
        hide_env_values = true,
        required = true,
        value_delimiter = ','
    )]
    pub management_keys: Vec<String>,
    /// The account's default workspace (UUID): where keys go when a request names none.
    #[arg(long, default_value = DEFAULT_WORKSPACE, value_parser = parse_workspace)]
    pub workspace: String,
    /// Keys per `GET /keys` page. OpenRouter does not document its page size (100 observed);
    /// a test can pick another to show a client loses nothing.
    #[arg(long, default_value_t = PAGE_SIZE, value_parser = clap::value_parser!(usize))]
    pub page_size: usize,
    /// When the management keys expire (RFC 3339, UTC): `GET /key` reports it as
    /// `expires_at`, and from then on they answer 401. Default: never. Settable at run time with
    /// `POST /_emulator/management-key`.
    #[arg(long, value_parser = parse_expiry)]
    pub management_key_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("faults", &self.faults)
            .field(
                "management_keys",
                &format!("[{} redacted]", self.management_keys.len()),
            )
            .field("workspace", &self.workspace)
            .field("page_size", &self.page_size)
            .field("management_key_expires_at", &self.management_key_expires_at)
            .finish()
    }
}

impl Args {
    /// Flags for tests: these management keys, the default workspace, no faults.
    pub fn with_management_keys(keys: &[&str]) -> Self {
        Args {
            faults: FaultArgs::default(),
            management_keys: keys.iter().map(|k| k.to_string()).collect(),
            workspace: DEFAULT_WORKSPACE.to_string(),
            page_size: PAGE_SIZE,
            management_key_expires_at: None,
        }
    }
}

fn parse_expiry(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{s:?} is not an RFC 3339 time"))
}

fn parse_workspace(s: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(s)
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?} is not a UUID"))
}

/// OpenRouter's error envelope.
pub fn render_error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        json!({
            "error": { "code": status.as_u16(), "message": message },
            "user_id": null,
            "openrouter_metadata": null,
        }),
    )
}

/// An error answer, rendered in OpenRouter's envelope.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        render_error(self.0, &self.1)
    }
}

type Answer = Result<Response, ApiError>;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "Resource not found".into())
}

struct StoredKey {
    hash: String,
    /// SHA-256 of the plaintext; the plaintext itself is never kept.
    digest: [u8; 32],
    label: String,
    name: String,
    disabled: bool,
    limit: Option<f64>,
    limit_reset: Option<String>,
    include_byok_in_limit: bool,
    /// total, daily, weekly, monthly
    usage: [f64; 4],
    byok_usage: [f64; 4],
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    workspace_id: String,
    seq: u64,
    deleted_at: Option<DateTime<Utc>>,
}

impl StoredKey {
    fn live(&self) -> bool {
        self.deleted_at.is_none()
    }

    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// `limit - spend` over the limit's period (BYOK spend counted when the key says so),
    /// never below zero; null without a limit.
    fn limit_remaining(&self) -> Option<f64> {
        let period = match self.limit_reset.as_deref() {
            Some("daily") => 1,
            Some("weekly") => 2,
            Some("monthly") => 3,
            _ => 0,
        };
        let mut spent = self.usage[period];
        if self.include_byok_in_limit {
            spent += self.byok_usage[period];
        }
        self.limit.map(|l| (l - spent).max(0.0))
    }

    /// The fields the key object and `GET /key` share: label, limit and spend.
    fn limit_and_usage(&self) -> serde_json::Map<String, Value> {
        let v = json!({
            "label": self.label,
            "limit": self.limit,
            "limit_remaining": self.limit_remaining(),
            "limit_reset": self.limit_reset,
            "include_byok_in_limit": self.include_byok_in_limit,
            "usage": self.usage[0],
            "usage_daily": self.usage[1],
            "usage_weekly": self.usage[2],
            "usage_monthly": self.usage[3],
            "byok_usage": self.byok_usage[0],
            "byok_usage_daily": self.byok_usage[1],
            "byok_usage_weekly": self.byok_usage[2],
            "byok_usage_monthly": self.byok_usage[3],
            "creator_user_id": CREATOR_USER_ID,
            "expires_at": self.expires_at.map(ts),
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("a json! object literal"),
        }
    }

    fn to_json(&self) -> Value {
        let mut m = self.limit_and_usage();
        m.extend([
            ("hash".to_string(), json!(self.hash)),
            ("name".to_string(), json!(self.name)),
            ("disabled".to_string(), json!(self.disabled)),
            ("created_at".to_string(), json!(ts(self.created_at))),
            ("updated_at".to_string(), json!(self.updated_at.map(ts))),
            ("workspace_id".to_string(), json!(self.workspace_id)),
        ]);
        Value::Object(m)
    }

    /// `GET /key` for this key.
    fn current_json(&self) -> Value {
        let mut m = self.limit_and_usage();
        m.extend([
            ("is_free_tier".to_string(), json!(false)),
            ("is_management_key".to_string(), json!(false)),
            ("is_provisioning_key".to_string(), json!(false)),
            ("rate_limit".to_string(), legacy_rate_limit()),
        ]);
        Value::Object(m)
    }
}

/// Deprecated in OpenRouter's API ("will always return -1"), still a required field.
fn legacy_rate_limit() -> Value {
    json!({"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."})
}

struct Store {
    management: Vec<([u8; 32], String)>,
    /// When the management keys expire (`None`: never).
    management_expires_at: Option<DateTime<Utc>>,
    default_workspace: String,
    page_size: usize,
    keys: Vec<StoredKey>,
    seq: u64,
}

type Shared = Arc<Mutex<Store>>;

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// `sk-or-v1-0e6...1c96`: the first 12 and last 4 characters.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 20 {
        return "sk-or-v1-...".to_string();
    }
    let head: String = chars[..12].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

enum Caller {
    Management { label: String },
    Minted { hash: String },
}

fn authenticate(store: &Store, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.into());
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthorized("Missing Authentication header"));
    };
    let value = value.to_str().unwrap_or_default().trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(unauthorized("Missing Authentication header")),
    };
    if token.is_empty() {
        return Err(unauthorized("Missing Authentication header"));
    }
    let d = digest(token);
    if let Some((_, label)) = store.management.iter().find(|(m, _)| *m == d) {
        if store.management_expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(unauthorized("API key has expired"));
        }
        return Ok(Caller::Management {
            label: label.clone(),
        });
    }
    match store.keys.iter().find(|k| k.digest == d && k.live()) {
        Some(k) if k.disabled => Err(unauthorized("API key is disabled")),
        Some(k) if k.expired(Utc::now()) => Err(unauthorized("API key has expired")),
        Some(k) => Ok(Caller::Minted {
            hash: k.hash.clone(),
        }),
        None => Err(unauthorized("User not found.")),
    }
}

/// `/keys*` take management keys only.
fn management(store: &Store, headers: &HeaderMap) -> Result<(), ApiError> {
    match authenticate(store, headers)? {
        Caller::Management { .. } => Ok(()),
        Caller::Minted { .. } => Err(ApiError(
            StatusCode::FORBIDDEN,
            "Only management keys can perform this operation".into(),
        )),
    }
}

fn json_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("Request body must be a JSON object")),
        Err(_) => Err(bad_request("Request body is not valid JSON")),
    }
}

fn opt_limit(v: &Value) -> Result<Option<f64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
            _ => Err(bad_request("limit must be a non-negative number or null")),
        },
        _ => Err(bad_request("limit must be a number or null")),
    }
}

fn opt_limit_reset(v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if matches!(s.as_str(), "daily" | "weekly" | "monthly") => {
            Ok(Some(s.clone()))
        }
        _ => Err(bad_request(
            "limit_reset must be one of daily, weekly, monthly or null",
        )),
    }
}

fn boolean(field: &str, v: &Value) -> Result<bool, ApiError> {
    v.as_bool()
        .ok_or_else(|| bad_request(format!("{field} must be a boolean")))
}

fn name(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(bad_request("name must be a non-empty string")),
    }
}

/// `expires_at`: ISO 8601 in UTC; other offsets are rejected like OpenRouter does.
fn opt_expires_at(v: &Value) -> Result<Option<DateTime<Utc>>, ApiError> {
    let s = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s,
        _ => return Err(bad_request("expires_at must be an ISO 8601 UTC timestamp")),
    };
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|_| bad_request("expires_at must be an ISO 8601 UTC timestamp"))?;
    if t.offset().local_minus_utc() != 0 {
        return Err(bad_request(
            "expires_at must be in UTC (e.g. 2027-12-31T23:59:59Z); other timezones are rejected",
        ));
    }
    Ok(Some(t.with_timezone(&Utc)))
}

fn workspace(v: &str) -> Result<String, ApiError> {
    parse_workspace(v).map_err(|_| bad_request("workspace_id must be a UUID"))
}

async fn create_key(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    let mut store = s.lock().unwrap();
    management(&store, &headers)?;
    let body = json_body(&body)?;
    let field = |k: &str| body.get(k).unwrap_or(&Value::Null);
    let name = name(field("name"))?;
    let limit = opt_limit(field("limit"))?;
    let limit_reset = opt_limit_reset(field("limit_reset"))?;
    let include_byok_in_limit = match body.get("include_byok_in_limit") {
        None => false,
        Some(v) => boolean("include_byok_in_limit", v)?,
    };
    let expires_at = opt_expires_at(field("expires_at"))?;
    let workspace_id = match field("workspace_id") {
        Value::Null => store.default_workspace.clone(),
        Value::String(w) => workspace(w)?,
        _ => return Err(bad_request("workspace_id must be a UUID")),
    };
    match field("creator_user_id") {
        Value::Null => {}
        Value::String(u) if !u.is_empty() => {}
        _ => {
            return Err(bad_request(
                "creator_user_id must be a non-empty string or null",
            ))
        }
    }
    let plaintext = format!("sk-or-v1-{}", random_hex(64));
    store.seq += 1;
    let key = StoredKey {
        hash: random_hex(64),
        digest: digest(&plaintext),
        label: mask(&plaintext),
        name,
        disabled: false,
        limit,
        limit_reset,
        include_byok_in_limit,
        usage: [0.0; 4],
        byok_usage: [0.0; 4],
        created_at: Utc::now(),
        updated_at: None,
        expires_at,
        workspace_id,
        seq: store.seq,
        deleted_at: None,
    };
    let data = key.to_json();
    store.keys.push(key);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "data": data, "key": plaintext })),
    )
        .into_response())
}

async fn list_keys(
    State(s): State<Shared>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Answer {
    let store = s.lock().unwrap();
    management(&store, &headers)?;
    let mut offset = 0usize;
    let mut include_disabled = false;
    let mut workspace_id = store.default_workspace.clone();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "offset" if v.is_empty() || v == "null" => offset = 0,
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| bad_request("offset must be a non-negative integer"))?
            }
            "include_disabled" => {
                include_disabled = match v.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" | "" => false,
                    _ => return Err(bad_request("include_disabled must be true or false")),
                }
            }
            "workspace_id" => workspace_id = workspace(&v)?,
            _ => {}
        }
    }
    let mut keys: Vec<&StoredKey> = store
        .keys
        .iter()
        .filter(|k| k.live() && k.workspace_id == workspace_id)
        .filter(|k| include_disabled || !k.disabled)
        .collect();
    // Newest first.
    keys.sort_by_key(|k| std::cmp::Reverse(k.seq));
    let page: Vec<Value> = keys
        .into_iter()
        .skip(offset)
        .take(store.page_size)
        .map(StoredKey::to_json)
        .collect();
    Ok(Json(json!({ "data": page })).into_response())
}

async fn get_key(State(s): State<Shared>, headers: HeaderMap, Path(hash): Path<String>) -> Answer {
    let store = s.lock().unwrap();
    management(&store, &headers)?;
    let k = store
        .keys
        .iter()
        .find(|k| k.hash == hash && k.live())
        .ok_or_else(not_found)?;
    Ok(Json(json!({ "data": k.to_json() })).into_response())
}

async fn update_key(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    body: Bytes,
) -> Answer {
    let mut store = s.lock().unwrap();
    management(&store, &headers)?;
    let idx = store
        .keys
        .iter()
        .position(|k| k.hash == hash && k.live())
        .ok_or_else(not_found)?;
    let body = json_body(&body)?;
    // Validate everything before changing anything.
    let new_name = body.get("name").map(name).transpose()?;
    let disabled = body
        .get("disabled")
        .map(|v| boolean("disabled", v))
        .transpose()?;
    let limit = body.get("limit").map(opt_limit).transpose()?;
    let limit_reset = body.get("limit_reset").map(opt_limit_reset).transpose()?;
    let byok = body
        .get("include_byok_in_limit")
        .map(|v| boolean("include_byok_in_limit", v))
        .transpose()?;
    let k = &mut store.keys[idx];
    if let Some(v) = new_name {
        k.name = v;
    }
    if let Some(v) = disabled {
        k.disabled = v;
    }
    if let Some(v) = limit {
        k.limit = v;
    }
    if let Some(v) = limit_reset {
        k.limit_reset = v;
    }
    if let Some(v) = byok {
        k.include_byok_in_limit = v;
    }
    k.updated_at = Some(Utc::now());
    Ok(Json(json!({ "data": k.to_json() })).into_response())
}

async fn delete_key(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Answer {
    let mut store = s.lock().unwrap();
    management(&store, &headers)?;
    let k = store
        .keys
        .iter_mut()
        .find(|k| k.hash == hash && k.live())
        .ok_or_else(not_found)?;
    k.deleted_at = Some(Utc::now());
    Ok(Json(json!({ "deleted": true })).into_response())
}

async fn current_key(State(s): State<Shared>, headers: HeaderMap) -> Answer {
    let store = s.lock().unwrap();
    let data = match authenticate(&store, &headers)? {
        Caller::Management { label } => json!({
            "label": label,
            "limit": null,
            "limit_remaining": null,
            "limit_reset": null,
            "include_byok_in_limit": false,
            "usage": 0.0, "usage_daily": 0.0, "usage_weekly": 0.0, "usage_monthly": 0.0,
            "byok_usage": 0.0, "byok_usage_daily": 0.0, "byok_usage_weekly": 0.0,
            "byok_usage_monthly": 0.0,
            "is_free_tier": false,
            "is_management_key": true,
            "is_provisioning_key": true,
            "creator_user_id": CREATOR_USER_ID,
            "expires_at": store.management_expires_at.map(ts),
            "rate_limit": legacy_rate_limit(),
        }),
        Caller::Minted { hash } => store
            .keys
            .iter()
            .find(|k| k.hash == hash)
            .map(StoredKey::current_json)
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "User not found.".into()))?,
    };
    Ok(Json(json!({ "data": data })).into_response())
}

/// `GET /_emulator/keys`: every key, deleted ones included, without plaintext.
async fn control_keys(State(s): State<Shared>) -> Response {
    let store = s.lock().unwrap();
    let now = Utc::now();
    let keys: Vec<Value> = store
        .keys
        .iter()
        .map(|k| {
            json!({
                "id": k.hash,
                "hash": k.hash,
                "name": k.name,
                "label": k.label,
                "active": k.live(),
                "createdAt": ts(k.created_at),
                "updatedAt": k.updated_at.map(ts),
                "deletedAt": k.deleted_at.map(ts),
                "workspaceId": k.workspace_id,
                "settings": {
                    "disabled": k.disabled,
                    "expired": k.expired(now),
                    "expiresAt": k.expires_at.map(ts),
                    "limit": k.limit,
                    "limitReset": k.limit_reset,
                    "includeByokInLimit": k.include_byok_in_limit,
                },
                "usage": {
                    "total": k.usage[0], "daily": k.usage[1],
                    "weekly": k.usage[2], "monthly": k.usage[3],
                    "byokTotal": k.byok_usage[0],
                    "limitRemaining": k.limit_remaining(),
                },
            })
        })
        .collect();
    Json(json!({ "keys": keys })).into_response()
}

/// `POST /_emulator/usage {"hash", "amount", "byok"?}`: spend on a key (all four periods).
async fn control_usage(State(s): State<Shared>, body: Bytes) -> Answer {
    let body = json_body(&body)?;
    let hash = body
        .get("hash")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("hash is required"))?;
    let amount = body
        .get("amount")
        .and_then(Value::as_f64)
        .filter(|a| a.is_finite() && *a >= 0.0)
        .ok_or_else(|| bad_request("amount must be a non-negative number"))?;
    let byok = body.get("byok").and_then(Value::as_bool).unwrap_or(false);
    let as_request = body
        .get("asRequest")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut store = s.lock().unwrap();
    let k = store
        .keys
        .iter_mut()
        .find(|k| k.hash == hash && k.live())
        .ok_or_else(not_found)?;
    if as_request {
        // As inference with the key: a disabled or expired key is refused, and so is a request
        // that would cost more than the key's limit has left (OpenRouter checks a request's
        // cost against the limit before serving it).
        if k.disabled || k.expired(Utc::now()) {
            return Err(ApiError(StatusCode::UNAUTHORIZED, "User not found.".into()));
        }
        let counted = !byok || k.include_byok_in_limit;
        if counted && k.limit_remaining().is_some_and(|left| amount > left + 1e-9) {
            return Err(ApiError(
                StatusCode::PAYMENT_REQUIRED,
                "Key limit exceeded: this request needs more than the key's limit has left".into(),
            ));
        }
    }
    let counters = if byok {
        &mut k.byok_usage
    } else {
        &mut k.usage
    };
    for c in counters.iter_mut() {
        *c += amount;
    }
    Ok(Json(json!({ "data": k.to_json() })).into_response())
}

/// `POST /_emulator/reset-period {"period": "daily"|"weekly"|"monthly"}`: what OpenRouter does
/// at midnight UTC (Monday, the 1st): that period's spend of every key starts again at 0.
async fn control_reset_period(State(s): State<Shared>, body: Bytes) -> Answer {
    let body = json_body(&body)?;
    let slot = match body.get("period").and_then(Value::as_str) {
        Some("daily") => 1,
        Some("weekly") => 2,
        Some("monthly") => 3,
        _ => return Err(bad_request("period must be daily, weekly or monthly")),
    };
    let mut store = s.lock().unwrap();
    for k in store.keys.iter_mut() {
        k.usage[slot] = 0.0;
        k.byok_usage[slot] = 0.0;
    }
    Ok(Json(json!({ "reset": slot })).into_response())
}

/// `POST /_emulator/management-key {"expiresAt": "<RFC 3339>" | null}`: when the management
/// keys expire (null: never).
async fn control_management_key(State(s): State<Shared>, body: Bytes) -> Answer {
    let body = json_body(&body)?;
    let at = match body.get("expiresAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(parse_expiry(t).map_err(bad_request)?),
        Some(_) => return Err(bad_request("expiresAt must be an RFC 3339 time or null")),
    };
    s.lock().unwrap().management_expires_at = at;
    Ok(Json(json!({ "expiresAt": at.map(ts) })).into_response())
}

/// What `--normalise` rewrites in OpenRouter's answers.
const NORMALISE: &[Field] = &[
    ("limit", Rewrite::Decimal),
    ("limit_remaining", Rewrite::Decimal),
    ("expires_at", Rewrite::Time),
    ("created_at", Rewrite::Time),
    ("updated_at", Rewrite::Time),
];

pub fn build(args: &Args) -> (Router, Arc<Faults>) {
    let store: Shared = Arc::new(Mutex::new(Store {
        management: args
            .management_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| (digest(k), mask(k)))
            .collect(),
        management_expires_at: args.management_key_expires_at,
        default_workspace: args.workspace.clone(),
        page_size: args.page_size.max(1),
        keys: Vec::new(),
        seq: 0,
    }));
    let router = Router::new()
        .route("/api/v1/key", get(current_key))
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route(
            "/api/v1/keys/{hash}",
            get(get_key).patch(update_key).delete(delete_key),
        )
        .route("/_emulator/keys", get(control_keys))
        .route("/_emulator/usage", axum::routing::post(control_usage))
        .route(
            "/_emulator/management-key",
            axum::routing::post(control_management_key),
        )
        .route(
            "/_emulator/reset-period",
            axum::routing::post(control_reset_period),
        )
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "Not Found".into()) })
        .with_state(store);
    let faults = Faults::new(args.faults.clone(), render_error);
    (super::normalised(router, &faults, NORMALISE), faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_openrouter() {
        let key = format!("sk-or-v1-0e6{}1c96", "a".repeat(57));
        assert_eq!(mask(&key), "sk-or-v1-0e6...1c96");
        assert_eq!(mask("short"), "sk-or-v1-...");
    }

    #[test]
    fn limit_remaining_counts_the_period() {
        let mut k = StoredKey {
            hash: "h".into(),
            digest: [0; 32],
            label: String::new(),
            name: "n".into(),
            disabled: false,
            limit: Some(10.0),
            limit_reset: None,
            include_byok_in_limit: false,
            usage: [3.0, 1.0, 2.0, 2.5],
            byok_usage: [1.0; 4],
            created_at: Utc::now(),
            updated_at: None,
            expires_at: None,
            workspace_id: DEFAULT_WORKSPACE.into(),
            seq: 1,
            deleted_at: None,
        };
        assert_eq!(k.limit_remaining(), Some(7.0));
        k.limit_reset = Some("daily".into());
        assert_eq!(k.limit_remaining(), Some(9.0));
        k.include_byok_in_limit = true;
        assert_eq!(k.limit_remaining(), Some(8.0));
        k.limit = Some(0.5);
        assert_eq!(k.limit_remaining(), Some(0.0));
        k.limit = None;
        assert_eq!(k.limit_remaining(), None);
    }
}
