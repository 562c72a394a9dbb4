//! Boltz compute API emulator: admin API keys (`/compute/v1/admin/api-keys`) and the current
//! credential (`/compute/v1/auth/me`).
//!
//! Faithful to `docs/providers/boltz.md` (and the reference it is built from): `x-api-key` auth,
//! admin keys given by flag, workspace keys minted with a one-time `key`, cursor pagination with
//! `first_id`/`last_id`/`has_more`, revoke, `allowed_ips` enforced on use, `livemode` on
//! everything. Where Boltz is silent the emulator's choices are documented there too: the error
//! body `{"error": {"type", "message"}}`, newest-first listing order, and a repeated revoke
//! answering 409 (the reference allows "idempotent or 409"; `--idempotent-revoke` gives 200).
//!
//! Control endpoints (no credentials): `GET /_emulator/keys` (every key, never the plaintext),
//! `POST /_emulator/keys/{id}/expire` (make a key expired now) and `POST /_emulator/errors
//! [{"status": 503, "shouldRetry": false}]` (the next requests to the API answer these errors,
//! each with `x-should-retry` as given, absent for `null`: Boltz's SDK honours the header both
//! ways, so a server may mark a 5xx final or a 408/409 worth retrying).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::normalise::{Field, Rewrite};
use super::{json_response, random_hex, FaultArgs, Faults};

const ADMIN_PREFIXES: [&str; 2] = ["sk_bc_admin_live_", "sk_bc_admin_test_"];
const ORGANIZATION: &str = "org_emulator";

fn parse_admin_key(s: &str) -> Result<String, String> {
    if ADMIN_PREFIXES
        .iter()
        .any(|p| s.starts_with(p) && s.len() > p.len())
    {
        Ok(s.to_string())
    } else {
        Err(
            "an admin key starts with sk_bc_admin_live_ or sk_bc_admin_test_ followed by more \
             characters"
                .into(),
        )
    }
}

/// Flags of `keysmith emulate boltz`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub faults: FaultArgs,
    /// An admin API key the emulator accepts (repeatable). Must start with `sk_bc_admin_live_`
    /// or `sk_bc_admin_test_`; the prefix sets its mode.
    #[arg(long = "admin-key", required = true, value_parser = parse_admin_key)]
    pub admin_keys: Vec<String>,
    /// A workspace id (repeatable). The first is the default workspace. Default: `ws_default`.
    #[arg(long = "workspace")]
    pub workspaces: Vec<String>,
    /// Answer a repeated revoke with 200 and the key (default: 409 Conflict).
    #[arg(long)]
    pub idempotent_revoke: bool,
    /// Serve at most this many keys per list page, whatever `limit` asks (default: `limit`),
    /// so a client's pagination is exercised with a handful of keys.
    #[arg(long)]
    pub max_page_size: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    Admin,
    Workspace,
}

impl KeyType {
    fn as_str(self) -> &'static str {
        match self {
            KeyType::Admin => "admin",
            KeyType::Workspace => "workspace",
        }
    }
}

/// A stored key. The plaintext is not kept: only its SHA-256.
#[derive(Clone, Debug)]
struct Key {
    id: String,
    seq: u64,
    name: String,
    hash: String,
    key_prefix: String,
    key_type: KeyType,
    workspace_id: Option<String>,
    allowed_ips: Vec<String>,
    livemode: bool,
    is_active: bool,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Key {
    /// The API's key object (list items, revoke answer, create `key_details`).
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "allowed_ips": self.allowed_ips,
            "created_at": ts(&self.created_at),
            "expires_at": self.expires_at.as_ref().map(ts),
            "is_active": self.is_active,
            "key_prefix": self.key_prefix,
            "key_type": self.key_type.as_str(),
            "last_used_at": self.last_used_at.as_ref().map(ts),
            "livemode": self.livemode,
            "workspace_id": self.workspace_id,
        })
    }

    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

#[derive(Default)]
struct Store {
    keys: Vec<Key>,
    next_seq: u64,
    workspaces: Vec<String>,
    idempotent_revoke: bool,
    max_page_size: Option<usize>,
    /// Errors the next requests get (`POST /_emulator/errors`).
    next_errors: VecDeque<ScriptedError>,
}

/// One error of `POST /_emulator/errors`.
#[derive(serde::Deserialize, Clone, Copy, Debug)]
#[serde(rename_all = "camelCase")]
struct ScriptedError {
    status: u16,
    #[serde(default)]
    should_retry: Option<bool>,
}

type Shared = Arc<Mutex<Store>>;

/// The TCP peer, when the server was started with connect info.
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// Boltz errors (the body shape is the emulator's choice; Boltz does not document one).
fn render_error(status: StatusCode, message: &str) -> Response {
    let mut resp = json_response(
        status,
        json!({ "error": { "type": error_type(status), "message": message } }),
    );
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        resp.headers_mut()
            .insert("x-should-retry", "true".parse().expect("static header"));
    }
    resp
}

fn err(status: StatusCode, message: impl AsRef<str>) -> Response {
    render_error(status, message.as_ref())
}

/// The caller's address: the first `X-Forwarded-For` entry (so tests and proxies can stand in
/// for other callers), else the TCP peer.
fn caller_ip(headers: &HeaderMap, peer: Option<&ConnectInfo<SocketAddr>>) -> Option<IpAddr> {
    if let Some(ip) = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return Some(ip);
    }
    peer.map(|c| c.0.ip())
}

fn ip_allowed(allowed: &[String], ip: Option<IpAddr>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    // An IPv4 caller seen as an IPv4-mapped IPv6 address still matches IPv4 rules.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    allowed.iter().any(|a| {
        if let Ok(one) = a.parse::<IpAddr>() {
            one == ip
        } else if let Ok(net) = a.parse::<ipnet::IpNet>() {
            net.contains(&ip)
        } else {
            false
        }
    })
}

/// Authenticate the `x-api-key` of a request; on success bump the key's `last_used_at` and
/// return a copy of it.
fn authenticate(
    store: &Shared,
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    admin: bool,
) -> Result<Key, (StatusCode, String)> {
    let Some(presented) = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "Missing API key. Send your key in the x-api-key header.".to_string(),
        ));
    };
    let h = hash(presented);
    let now = Utc::now();
    let mut s = store.lock().unwrap();
    let Some(key) = s.keys.iter_mut().find(|k| k.hash == h) else {
        return Err((StatusCode::UNAUTHORIZED, "Invalid API key.".to_string()));
    };
    if !key.is_active {
        return Err((
            StatusCode::UNAUTHORIZED,
            "This API key has been revoked.".to_string(),
        ));
    }
    if key.expired(now) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "This API key has expired.".to_string(),
        ));
    }
    let ip = caller_ip(headers, peer);
    if !ip_allowed(&key.allowed_ips, ip) {
        let who = ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into());
        return Err((
            StatusCode::FORBIDDEN,
            format!("Requests from IP address {who} are not allowed for this API key."),
        ));
    }
    if admin && key.key_type != KeyType::Admin {
        return Err((
            StatusCode::FORBIDDEN,
            "Workspace API keys cannot access admin endpoints. Use an admin API key \
             (sk_bc_admin_...)."
                .to_string(),
        ));
    }
    key.last_used_at = Some(now);
    Ok(key.clone())
}

async fn me(State(store): State<Shared>, peer: Peer, headers: HeaderMap) -> Response {
    let key = match authenticate(&store, &headers, peer.as_ref().map(|Extension(c)| c), false) {
        Ok(k) => k,
        Err((st, m)) => return err(st, m),
    };
    Json(json!({
        "principal_type": "api_key",
        "api_key_id": key.id,
        "key_type": key.key_type.as_str(),
        "mode": if key.livemode { "live" } else { "test" },
        "livemode": key.livemode,
        "organization_id": ORGANIZATION,
        "selected_organization_id": ORGANIZATION,
        "workspace_id": key.workspace_id,
    }))
    .into_response()
}

fn bad(message: impl AsRef<str>) -> Response {
    err(StatusCode::BAD_REQUEST, message)
}

async fn create(
    State(store): State<Shared>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authenticate(&store, &headers, peer.as_ref().map(|Extension(c)| c), true) {
        Ok(k) => k,
        Err((st, m)) => return err(st, m),
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad("Request body must be a JSON object."),
        Err(e) => return bad(format!("Request body is not valid JSON: {e}")),
    };
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
        Some(Value::String(_)) => return bad("name: must not be empty."),
        None | Some(Value::Null) => return bad("name: field required."),
        Some(_) => return bad("name: must be a string."),
    };
    let allowed_ips = match body.get("allowed_ips") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if ip_or_network(s.trim()) => out.push(s.trim().to_string()),
                    _ => {
                        return bad(format!(
                        "allowed_ips[{i}]: {item} is not a valid IPv4/IPv6 address or CIDR range."
                    ))
                    }
                }
            }
            out
        }
        Some(_) => return bad("allowed_ips: must be an array of strings."),
    };
    let expires_in_days = match body.get("expires_in_days") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(d) if d >= 1 => Some(d),
            _ => return bad("expires_in_days: must be a positive integer."),
        },
        Some(_) => return bad("expires_in_days: must be a positive integer."),
    };
    let livemode = match body.get("mode") {
        // Omitted: the mode of the admin key making the call.
        None | Some(Value::Null) => caller.livemode,
        Some(Value::String(m)) if m == "live" => true,
        Some(Value::String(m)) if m == "test" => false,
        Some(other) => return bad(format!("mode: {other} is not one of 'live', 'test'.")),
    };
    let now = Utc::now();
    let expires_at = match expires_in_days {
        None => None,
        Some(d) => match chrono::Duration::try_days(d).and_then(|d| now.checked_add_signed(d)) {
            Some(t) => Some(t),
            None => return bad("expires_in_days: too large."),
        },
    };
    let mut s = store.lock().unwrap();
    let workspace_id = match body.get("workspace_id") {
        None | Some(Value::Null) => s.workspaces[0].clone(),
        Some(Value::String(w)) => {
            if !s.workspaces.iter().any(|x| x == w) {
                return err(StatusCode::NOT_FOUND, format!("Workspace {w} not found."));
            }
            w.clone()
        }
        Some(_) => return bad("workspace_id: must be a string."),
    };
    let secret = format!(
        "sk_bc_ws_{}_{}",
        if livemode { "live" } else { "test" },
        random_hex(40)
    );
    s.next_seq += 1;
    let key = Key {
        id: format!("key_{}", random_hex(24)),
        seq: s.next_seq,
        name,
        hash: hash(&secret),
        key_prefix: secret.chars().take(12).collect(),
        key_type: KeyType::Workspace,
        workspace_id: Some(workspace_id),
        allowed_ips,
        livemode,
        is_active: true,
        created_at: now,
        expires_at,
        last_used_at: None,
    };
    let details = key.to_json();
    s.keys.push(key);
    (
        StatusCode::CREATED,
        Json(json!({ "key": secret, "key_details": details })),
    )
        .into_response()
}

async fn list(
    State(store): State<Shared>,
    peer: Peer,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err((st, m)) = authenticate(&store, &headers, peer.as_ref().map(|Extension(c)| c), true)
    {
        return err(st, m);
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return bad("limit: must be an integer between 1 and 100."),
        },
    };
    let after = q.get("after_id").filter(|v| !v.is_empty());
    let before = q.get("before_id").filter(|v| !v.is_empty());
    if after.is_some() && before.is_some() {
        return bad("Pass after_id or before_id, not both.");
    }
    let s = store.lock().unwrap();
    let limit = s.max_page_size.map_or(limit, |m| limit.min(m.max(1)));
    let seq_of = |id: &String| s.keys.iter().find(|k| &k.id == id).map(|k| k.seq);
    // Newest first. A workspace filter leaves out admin keys (they belong to no workspace).
    let mut all: Vec<&Key> = s
        .keys
        .iter()
        .filter(|k| match q.get("workspace_id").filter(|w| !w.is_empty()) {
            Some(w) => k.workspace_id.as_ref() == Some(w),
            None => true,
        })
        .collect();
    all.sort_by_key(|k| std::cmp::Reverse(k.seq));
    let (data, has_more): (Vec<&Key>, bool) = if let Some(a) = after {
        let Some(cut) = seq_of(a) else {
            return bad(format!("after_id: API key {a} not found."));
        };
        let rest: Vec<&Key> = all.into_iter().filter(|k| k.seq < cut).collect();
        let more = rest.len() > limit;
        (rest.into_iter().take(limit).collect(), more)
    } else if let Some(b) = before {
        let Some(cut) = seq_of(b) else {
            return bad(format!("before_id: API key {b} not found."));
        };
        let rest: Vec<&Key> = all.into_iter().filter(|k| k.seq > cut).collect();
        let more = rest.len() > limit;
        let skip = rest.len().saturating_sub(limit);
        (rest.into_iter().skip(skip).collect(), more)
    } else {
        let more = all.len() > limit;
        (all.into_iter().take(limit).collect(), more)
    };
    Json(json!({
        "data": data.iter().map(|k| k.to_json()).collect::<Vec<_>>(),
        "first_id": data.first().map(|k| k.id.clone()),
        "last_id": data.last().map(|k| k.id.clone()),
        "has_more": has_more,
    }))
    .into_response()
}

async fn revoke(
    State(store): State<Shared>,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err((st, m)) = authenticate(&store, &headers, peer.as_ref().map(|Extension(c)| c), true)
    {
        return err(st, m);
    }
    let mut s = store.lock().unwrap();
    let idempotent = s.idempotent_revoke;
    match s.keys.iter_mut().find(|k| k.id == id) {
        None => err(StatusCode::NOT_FOUND, format!("API key {id} not found.")),
        Some(k) if !k.is_active && !idempotent => err(
            StatusCode::CONFLICT,
            format!("API key {id} is already revoked."),
        ),
        Some(k) => {
            k.is_active = false;
            Json(k.to_json()).into_response()
        }
    }
}

async fn control_keys(State(store): State<Shared>) -> Response {
    let s = store.lock().unwrap();
    let now = Utc::now();
    let keys: Vec<Value> = s
        .keys
        .iter()
        .map(|k| {
            let mut v = k.to_json();
            v["mode"] = json!(if k.livemode { "live" } else { "test" });
            v["revoked"] = json!(!k.is_active);
            v["expired"] = json!(k.expired(now));
            v
        })
        .collect();
    Json(json!({ "keys": keys, "workspaces": s.workspaces })).into_response()
}

async fn control_expire(State(store): State<Shared>, Path(id): Path<String>) -> Response {
    let mut s = store.lock().unwrap();
    match s.keys.iter_mut().find(|k| k.id == id) {
        None => err(StatusCode::NOT_FOUND, format!("API key {id} not found.")),
        Some(k) => {
            k.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
            Json(k.to_json()).into_response()
        }
    }
}

async fn control_errors(
    State(store): State<Shared>,
    Json(list): Json<Vec<ScriptedError>>,
) -> Response {
    if let Some(bad) = list.iter().find(|e| !(400..=599).contains(&e.status)) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("status {} is not an error status", bad.status),
        );
    }
    store.lock().unwrap().next_errors.extend(list);
    StatusCode::NO_CONTENT.into_response()
}

/// Answer the next scripted error, if one is queued, instead of the API.
async fn scripted_errors(
    State(store): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let Some(e) = store.lock().unwrap().next_errors.pop_front() else {
        return next.run(req).await;
    };
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = err(status, status.canonical_reason().unwrap_or("Error"));
    match e.should_retry {
        Some(v) => {
            resp.headers_mut().insert(
                "x-should-retry",
                axum::http::HeaderValue::from_static(if v { "true" } else { "false" }),
            );
        }
        None => {
            resp.headers_mut().remove("x-should-retry");
        }
    }
    resp
}

async fn not_found() -> Response {
    err(StatusCode::NOT_FOUND, "Not found.")
}

/// What `--normalise` rewrites in Boltz's answers.
const NORMALISE: &[Field] = &[
    ("allowed_ips", Rewrite::Cidrs),
    ("expires_at", Rewrite::Time),
    ("created_at", Rewrite::Time),
    ("last_used_at", Rewrite::Time),
];

pub fn build(args: &Args) -> (Router, Arc<Faults>) {
    let mut store = Store {
        workspaces: if args.workspaces.is_empty() {
            vec!["ws_default".to_string()]
        } else {
            args.workspaces.clone()
        },
        idempotent_revoke: args.idempotent_revoke,
        max_page_size: args.max_page_size,
        next_errors: VecDeque::new(),
        ..Default::default()
    };
    let started = Utc::now();
    for (i, k) in args.admin_keys.iter().enumerate() {
        store.next_seq += 1;
        store.keys.push(Key {
            id: format!("key_{}", random_hex(24)),
            seq: store.next_seq,
            name: format!("admin key {}", i + 1),
            hash: hash(k),
            key_prefix: k.chars().take(12).collect(),
            key_type: KeyType::Admin,
            workspace_id: None,
            allowed_ips: Vec::new(),
            livemode: k.starts_with("sk_bc_admin_live_"),
            is_active: true,
            created_at: started,
            expires_at: None,
            last_used_at: None,
        });
    }
    let store: Shared = Arc::new(Mutex::new(store));
    let router = Router::new()
        .route("/compute/v1/auth/me", get(me))
        .route("/compute/v1/admin/api-keys", post(create).get(list))
        .route(
            "/compute/v1/admin/api-keys/{api_key_id}/revoke",
            post(revoke),
        )
        .route("/_emulator/keys", get(control_keys))
        .route("/_emulator/keys/{id}/expire", post(control_expire))
        .route("/_emulator/errors", post(control_errors))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            store.clone(),
            scripted_errors,
        ))
        .with_state(store);
    let faults = Faults::new(args.faults.clone(), render_error);
    (super::normalised(router, &faults, NORMALISE), faults)
}

/// An IPv4/IPv6 address or CIDR range, as Boltz's validation message describes them (the
/// emulator's own check).
fn ip_or_network(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_key_flags_are_checked() {
        assert!(parse_admin_key("sk_bc_admin_live_abc").is_ok());
        assert!(parse_admin_key("sk_bc_admin_test_abc").is_ok());
        assert!(parse_admin_key("sk_bc_admin_live_").is_err());
        assert!(parse_admin_key("sk_bc_ws_live_abc").is_err());
    }

    #[test]
    fn ip_rules() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(ip_allowed(&[], None));
        assert!(ip_allowed(&["10.0.0.0/8".into()], Some(v4)));
        assert!(ip_allowed(&["10.1.2.3".into()], Some(v4)));
        assert!(!ip_allowed(&["192.168.0.0/16".into()], Some(v4)));
        assert!(!ip_allowed(&["10.0.0.0/8".into()], None));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(ip_allowed(&["10.0.0.0/8".into()], Some(mapped)));
    }
}
