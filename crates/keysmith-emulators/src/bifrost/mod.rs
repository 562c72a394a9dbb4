//! Bifrost gateway emulator: the admin API for provider keys and virtual keys, plus a small
//! inference check (`GET /v1/models`) that accepts live virtual keys.
//!
//! | endpoint | notes |
//! |---|---|
//! | `GET/POST /api/providers`, `GET/PUT/DELETE /api/providers/{provider}` | providers; a non-empty `keys` array → 400 (keys have their own API since v1.5.0) |
//! | `GET/POST /api/providers/{provider}/keys` | provider keys: auto-UUID `id`, `enabled` defaults to true, 409 on a duplicate id or a name used by any provider's key, 400 on an empty value |
//! | `GET/PUT/DELETE /api/providers/{provider}/keys/{key_id}` | full-object PUT; a redacted value echoed back keeps the stored one |
//! | `GET /api/keys` | read-only flat list, values blank (POST/PUT/DELETE → 405) |
//! | `GET/POST /api/governance/virtual-keys` | list (paginated only when `limit`/`offset`/`search`/… is given; 400 on a bad limit/offset), create (server-made `sk-bf-` value) |
//! | `GET/PUT/DELETE /api/governance/virtual-keys/{vk_id}` | partial PUT; 404 `Virtual key not found` |
//! | `POST /api/governance/virtual-keys/{vk_id}/rotate`, `POST /api/governance/virtual-keys/rotate` | new value, the old stops working (absent with `--no-rotate`) |
//! | `GET /api/governance/virtual-keys/quota` | the calling virtual key's budgets and rate limit (authenticated by the VK) |
//! | `POST /api/session/login` | `{username, password}` → a session token usable as Bearer |
//! | `GET /v1/models` | inference check: 200 for an active VK (`Authorization: Bearer sk-bf-…`, `x-bf-vk`, `x-api-key`), 401 otherwise, 429 once a budget or the request limit is used up; counts a request |
//!
//! Admin auth is off unless `--username/--password` (HTTP Basic) and/or `--token` (Bearer) are
//! given; `--viewer-token` is a Bearer token allowed to read only (403 on changes).
//!
//! Test control (no auth, no faults, not counted): `GET /_emulator/keys` (both families, no
//! values), `POST /_emulator/usage {"vkId", "amount", "tokens", "requests", "asRequest"?}` (with
//! `asRequest: true` refused as inference would be: 401 inactive, 429 a budget used up) and
//! `POST /_emulator/provider-key-check {"provider", "id", "value"}` → `{"matches": bool}`;
//! `POST /_emulator/rotate {"vkId"}` rotates a virtual key behind its manager's back (as the
//! gateway's scheduled rotation or an admin would): a new value and `rotated_at`.
//!
//! Virtual keys take `expires_at` (RFC 3339, in the future; `""` on update clears it) and are
//! refused at inference (403) once it passed; `--no-vk-expiry` behaves like older builds.
//! Provider keys answer `status` and `description`, which the schema makes the gateway's
//! error/status text: `--list-models-fails` makes every provider key's model listing fail, and
//! the gateway writes its error text over whatever `description` the request carried.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::normalise::{Field, Rewrite};
use super::{json_response, FaultArgs, Faults};

mod control;
mod inference;
mod provider_keys;
mod virtual_keys;
mod wire;

use control::*;
use inference::*;
use provider_keys::*;
use virtual_keys::*;
use wire::*;
pub use wire::{is_redacted, redact};

/// Flags of `keysmith emulate bifrost`.
#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Admin username; with --password the admin API requires HTTP Basic.
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// Admin password (with --username).
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// A Bearer token accepted on the admin API (like a session token or `bfst-` key).
    #[arg(long)]
    pub token: Option<String>,
    /// A Bearer token allowed to read only: changes answer 403 (a scoped management key).
    #[arg(long)]
    pub viewer_token: Option<String>,
    /// Upstream providers configured at the gateway (repeatable).
    #[arg(long = "provider", default_values = ["openai", "anthropic", "azure"])]
    pub providers: Vec<String>,
    /// Largest page of virtual keys served; larger `limit`s are clamped.
    #[arg(long, default_value_t = 100)]
    pub max_page_size: usize,
    /// Behave like a build without the virtual-key rotate routes.
    #[arg(long)]
    pub no_rotate: bool,
    /// Behave like newer builds that do not return virtual-key values from list/get.
    #[arg(long)]
    pub hide_vk_values: bool,
    /// Behave like builds before virtual-key expiry (Bifrost PR #4887): `expires_at` is
    /// ignored on create/update and never answered.
    #[arg(long)]
    pub no_vk_expiry: bool,
    /// Every provider key fails its model listing: the gateway answers `status:
    /// list_models_failed` and writes its error text into `description` (server-written, per
    /// the published schema).
    #[arg(long)]
    pub list_models_fails: bool,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("faults", &self.faults)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[REDACTED]"))
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field(
                "viewer_token",
                &self.viewer_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("providers", &self.providers)
            .field("max_page_size", &self.max_page_size)
            .field("no_rotate", &self.no_rotate)
            .field("hide_vk_values", &self.hide_vk_values)
            .field("no_vk_expiry", &self.no_vk_expiry)
            .field("list_models_fails", &self.list_models_fails)
            .finish()
    }
}

impl Default for Args {
    fn default() -> Self {
        Args {
            faults: FaultArgs::default(),
            username: None,
            password: None,
            token: None,
            viewer_token: None,
            providers: vec!["openai".into(), "anthropic".into(), "azure".into()],
            max_page_size: 100,
            no_rotate: false,
            hide_vk_values: false,
            no_vk_expiry: false,
            list_models_fails: false,
        }
    }
}

/// Bifrost's error envelope.
fn render_error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        json!({
            "is_bifrost_error": false,
            "status_code": status.as_u16(),
            "error": { "message": message },
        }),
    )
}

fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn bad(msg: impl AsRef<str>) -> Response {
    render_error(StatusCode::BAD_REQUEST, msg.as_ref())
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

const DEFAULT_PAGE: usize = 25;
/// Fields of provider configs (Azure, Vertex, Bedrock…) that hold secrets.
const CONFIG_SECRETS: &[&str] = &[
    "client_secret",
    "auth_credentials",
    "access_key",
    "secret_key",
    "session_token",
    "api_key",
];
const CONFIG_KEYS: &[&str] = &[
    "azure_key_config",
    "vertex_key_config",
    "bedrock_key_config",
    "vllm_key_config",
    "ollama_key_config",
    "sgl_key_config",
    "replicate_key_config",
    "huggingface_key_config",
];

// ---- state ---------------------------------------------------------------------------------

struct Emu {
    basic: Option<(String, String)>,
    token: Option<String>,
    viewer_token: Option<String>,
    max_page: usize,
    hide_vk_values: bool,
    no_vk_expiry: bool,
    list_models_fails: bool,
    db: Mutex<Db>,
}

#[derive(Default)]
struct Db {
    providers: BTreeSet<String>,
    pkeys: Vec<PKey>,
    vks: Vec<Vk>,
    sessions: HashSet<String>,
    next_id: u64,
}

/// An EnvVar: a literal value or a reference to an environment variable.
#[derive(Clone)]
struct EnvVar {
    value: String,
    env_var: String,
    from_env: bool,
}

impl EnvVar {
    fn redacted_json(&self) -> Value {
        json!({
            "value": if self.from_env { String::new() } else { redact(&self.value) },
            "env_var": self.env_var,
            "from_env": self.from_env,
        })
    }
}

#[derive(Clone)]
struct PKey {
    provider: String,
    id: String,
    name: String,
    value: EnvVar,
    models: Vec<String>,
    blacklisted_models: Vec<String>,
    weight: f64,
    enabled: bool,
    /// Server-written error or status text (a request's `description` is kept until the
    /// gateway writes its own).
    description: String,
    /// `success` or `list_models_failed`.
    status: String,
    use_for_batch_api: bool,
    aliases: Option<Value>,
    configs: Map<String, Value>,
    created_at: String,
    updated_at: String,
}

#[derive(Clone)]
struct Budget {
    id: String,
    max_limit: f64,
    reset_duration: String,
    current_usage: f64,
    last_reset: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

#[derive(Clone, Default)]
struct RateLimit {
    id: String,
    token_max_limit: Option<i64>,
    token_reset_duration: Option<String>,
    token_current_usage: i64,
    token_last_reset: Option<DateTime<Utc>>,
    request_max_limit: Option<i64>,
    request_reset_duration: Option<String>,
    request_current_usage: i64,
    request_last_reset: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

#[derive(Clone)]
struct ProviderConfig {
    id: u64,
    provider: String,
    weight: f64,
    allowed_models: Vec<String>,
    blacklisted_models: Vec<String>,
    key_ids: Vec<String>,
    budgets: Vec<Budget>,
    rate_limit: Option<RateLimit>,
}

#[derive(Clone)]
struct Vk {
    id: String,
    name: String,
    value: String,
    description: String,
    is_active: bool,
    provider_configs: Vec<ProviderConfig>,
    budgets: Vec<Budget>,
    rate_limit: Option<RateLimit>,
    team_id: Option<String>,
    customer_id: Option<String>,
    calendar_aligned: bool,
    created_at: String,
    updated_at: String,
    /// Requests with this key are refused from then on (`None`: never expires).
    expires_at: Option<DateTime<Utc>>,
    /// When the value was last rotated (the rotate route or a scheduled rotation).
    rotated_at: Option<DateTime<Utc>>,
}

// ---- auth ----------------------------------------------------------------------------------

enum Caller {
    Admin,
    Viewer,
    Nobody,
}

impl Emu {
    fn auth_enabled(&self) -> bool {
        self.basic.is_some() || self.token.is_some() || self.viewer_token.is_some()
    }

    fn caller(&self, headers: &HeaderMap) -> Caller {
        let Some(h) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Caller::Nobody;
        };
        if let Some(b64) = h.strip_prefix("Basic ") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            if let (Some(d), Some((u, p))) = (decoded, &self.basic) {
                if d.split_once(':') == Some((u.as_str(), p.as_str())) {
                    return Caller::Admin;
                }
            }
            return Caller::Nobody;
        }
        if let Some(t) = h.strip_prefix("Bearer ") {
            let t = t.trim();
            if self.token.as_deref() == Some(t) || self.db.lock().unwrap().sessions.contains(t) {
                return Caller::Admin;
            }
            if self.viewer_token.as_deref() == Some(t) {
                return Caller::Viewer;
            }
        }
        Caller::Nobody
    }
}

async fn admin_auth(State(emu): State<Arc<Emu>>, req: Request, next: Next) -> Response {
    if !emu.auth_enabled() {
        return next.run(req).await;
    }
    match emu.caller(req.headers()) {
        Caller::Admin => next.run(req).await,
        Caller::Viewer if req.method() == Method::GET => next.run(req).await,
        Caller::Viewer => render_error(
            StatusCode::FORBIDDEN,
            "Forbidden: this management key lacks the permission for this operation",
        ),
        Caller::Nobody => render_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
    }
}

async fn login(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let Some((u, p)) = &emu.basic else {
        return bad("authentication is not enabled on this gateway");
    };
    let given = (
        o.get("username").and_then(Value::as_str),
        o.get("password").and_then(Value::as_str),
    );
    if given != (Some(u.as_str()), Some(p.as_str())) {
        return render_error(StatusCode::UNAUTHORIZED, "Invalid username or password");
    }
    let token = super::random_hex(48);
    emu.db.lock().unwrap().sessions.insert(token.clone());
    ok(json!({ "message": "Login successful", "token": token }))
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> Response {
    render_error(
        StatusCode::NOT_FOUND,
        &format!("Not found: {method} {}", uri.path()),
    )
}

/// What `--normalise` rewrites in Bifrost's answers.
const NORMALISE: &[Field] = &[
    ("provider_configs", Rewrite::Unordered),
    ("allowed_models", Rewrite::Unordered),
    ("models", Rewrite::Unordered),
    ("blacklisted_models", Rewrite::Unordered),
    ("budgets", Rewrite::Unordered),
    ("max_limit", Rewrite::Decimal),
    ("weight", Rewrite::Decimal),
    ("token_max_limit", Rewrite::Decimal),
    ("request_max_limit", Rewrite::Decimal),
    ("created_at", Rewrite::Time),
    ("updated_at", Rewrite::Time),
];

/// Build the emulator's router and fault state.
pub fn build(args: &Args) -> (Router, Arc<Faults>) {
    let emu = Arc::new(Emu {
        basic: args.username.clone().zip(args.password.clone()),
        token: args.token.clone(),
        viewer_token: args.viewer_token.clone(),
        max_page: args.max_page_size,
        hide_vk_values: args.hide_vk_values,
        no_vk_expiry: args.no_vk_expiry,
        list_models_fails: args.list_models_fails,
        db: Mutex::new(Db {
            providers: args.providers.iter().cloned().collect(),
            ..Default::default()
        }),
    });

    let mut admin = Router::new()
        .route("/api/providers", get(list_providers).post(add_provider))
        .route(
            "/api/providers/{provider}",
            get(get_provider)
                .put(update_provider)
                .delete(delete_provider),
        )
        .route(
            "/api/providers/{provider}/keys",
            get(list_pkeys).post(create_pkey),
        )
        .route(
            "/api/providers/{provider}/keys/{key_id}",
            get(get_pkey).put(update_pkey).delete(delete_pkey),
        )
        .route(
            "/api/keys",
            get(flat_keys)
                .post(flat_keys_read_only)
                .put(flat_keys_read_only)
                .delete(flat_keys_read_only)
                .patch(flat_keys_read_only),
        )
        .route(
            "/api/governance/virtual-keys",
            get(list_vks).post(create_vk),
        )
        .route(
            "/api/governance/virtual-keys/{vk_id}",
            get(get_vk).put(update_vk).delete(delete_vk),
        );
    if !args.no_rotate {
        admin = admin
            .route(
                "/api/governance/virtual-keys/{vk_id}/rotate",
                post(rotate_vk),
            )
            .route("/api/governance/virtual-keys/rotate", post(rotate_vks));
    }
    let admin = admin.route_layer(middleware::from_fn_with_state(emu.clone(), admin_auth));

    let open = Router::new()
        .route("/api/session/login", post(login))
        .route("/api/governance/virtual-keys/quota", get(quota))
        .route("/v1/models", get(models));

    // Test control lives in the fallback: the shared fault layer applies to routes only, so
    // these calls are never delayed, failed or counted.
    let control = Router::new()
        .route("/_emulator/keys", get(control_keys))
        .route("/_emulator/usage", post(control_usage))
        .route("/_emulator/provider-key-check", post(control_check))
        .route("/_emulator/rotate", post(control_rotate))
        .fallback(unknown_route)
        .with_state(emu.clone());

    let router = admin.merge(open).with_state(emu).fallback_service(control);
    let faults = Faults::new(args.faults.clone(), render_error);
    (super::normalised(router, &faults, NORMALISE), faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_matches_bifrost() {
        assert_eq!(
            redact("sk-proj-abcdefghijklmnop1234"),
            "sk-p************************1234"
        );
        assert_eq!(redact("short"), "*****");
        assert_eq!(redact("12345678"), "********");
        assert!(is_redacted(&redact("sk-proj-abcdefghijklmnop1234")));
        assert!(is_redacted("****"));
        assert!(!is_redacted("sk-proj-abcdefghijklmnop1234"));
        assert!(!is_redacted(""));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(duration_secs("30s"), Some(30));
        assert_eq!(duration_secs("1M"), Some(30 * 86_400));
        assert_eq!(duration_secs("1Y"), Some(365 * 86_400));
        assert_eq!(duration_secs("0d"), None);
        assert_eq!(duration_secs("1x"), None);
        assert_eq!(duration_secs("d"), None);
        assert_eq!(duration_secs("-1d"), None);
    }

    #[test]
    fn config_secrets_are_redacted_and_merged() {
        let stored = json!({"endpoint": "https://x.openai.azure.com", "client_secret": {"value": "very-secret-value-123", "env_var": "", "from_env": false}});
        let shown = redact_config(&stored);
        assert_eq!(shown["endpoint"], "https://x.openai.azure.com");
        assert_eq!(
            shown["client_secret"]["value"],
            "very************************-123"
        );
        let merged = merge_config(&shown, Some(&stored));
        assert_eq!(merged, stored);
    }
}
