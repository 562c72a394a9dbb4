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
//! `POST /_emulator/provider-key-check {"provider", "id", "value"}` → `{"matches": bool}`.

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
    description: String,
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
}

// ---- helpers -------------------------------------------------------------------------------

/// `xxxx************************yyyy` (4 + 24 `*` + 4); 8 characters or fewer: all `*`.
pub fn redact(v: &str) -> String {
    let chars: Vec<char> = v.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let first: String = chars[..4].iter().collect();
    let last: String = chars[chars.len() - 4..].iter().collect();
    format!("{first}{}{last}", "*".repeat(24))
}

/// Whether a value sent back is a redacted placeholder (then the stored value is kept).
pub fn is_redacted(v: &str) -> bool {
    let chars: Vec<char> = v.chars().collect();
    if chars.is_empty() {
        return false;
    }
    if chars.iter().all(|c| *c == '*') {
        return true;
    }
    chars.len() == 32 && chars[4..28].iter().all(|c| *c == '*')
}

/// A Bifrost duration (`30s`, `5m`, `1h`, `1d`, `1w`, `1M`, `1Y`) in seconds.
fn duration_secs(w: &str) -> Option<i64> {
    let unit = w.chars().last()?;
    let num: i64 = w[..w.len() - unit.len_utf8()].parse().ok()?;
    if num <= 0 || w.starts_with('+') {
        return None;
    }
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'M' => 30 * 86_400,
        'Y' => 365 * 86_400,
        _ => return None,
    };
    num.checked_mul(per)
}

fn new_vk_value() -> String {
    format!("sk-bf-{}", uuid::Uuid::new_v4())
}

fn strings(v: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{field} must be a list of strings"))
            })
            .collect(),
        Some(_) => Err(format!("{field} must be a list of strings")),
    }
}

fn opt_str(v: Option<&Value>, field: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn opt_f64(v: Option<&Value>, field: &str) -> Result<Option<f64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{field} must be a number")),
    }
}

fn opt_i64(v: Option<&Value>, field: &str) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{field} must be an integer")),
    }
}

fn opt_bool(v: Option<&Value>, field: &str) -> Result<Option<bool>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{field} must be a boolean")),
    }
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("Invalid request payload: expected a JSON object".into()),
        Err(e) => Err(format!("Invalid JSON: {e}")),
    }
}

fn parse_envvar(v: Option<&Value>) -> Result<EnvVar, String> {
    match v {
        None | Some(Value::Null) => Ok(EnvVar {
            value: String::new(),
            env_var: String::new(),
            from_env: false,
        }),
        Some(Value::String(s)) => Ok(match s.strip_prefix("env.") {
            Some(name) => EnvVar {
                value: std::env::var(name).unwrap_or_default(),
                env_var: s.clone(),
                from_env: true,
            },
            None => EnvVar {
                value: s.clone(),
                env_var: String::new(),
                from_env: false,
            },
        }),
        Some(Value::Object(o)) => {
            let from_env = opt_bool(o.get("from_env"), "value.from_env")?.unwrap_or(false);
            let env_var = opt_str(o.get("env_var"), "value.env_var")?.unwrap_or_default();
            let value = opt_str(o.get("value"), "value.value")?.unwrap_or_default();
            if from_env {
                let name = env_var.strip_prefix("env.").unwrap_or(&env_var).to_string();
                Ok(EnvVar {
                    value: std::env::var(name).unwrap_or_default(),
                    env_var,
                    from_env: true,
                })
            } else {
                Ok(EnvVar {
                    value,
                    env_var,
                    from_env: false,
                })
            }
        }
        Some(_) => Err("value must be a string or an object".into()),
    }
}

/// Redact the secret fields of a provider config (at any depth).
fn redact_config(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let x = if CONFIG_SECRETS.contains(&k.as_str()) {
                        match x {
                            Value::String(s) => Value::String(redact(s)),
                            Value::Object(inner) => {
                                let mut inner = inner.clone();
                                if let Some(Value::String(s)) = inner.get("value") {
                                    let r = redact(s);
                                    inner.insert("value".into(), Value::String(r));
                                }
                                Value::Object(inner)
                            }
                            other => other.clone(),
                        }
                    } else {
                        redact_config(x)
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact_config).collect()),
        other => other.clone(),
    }
}

/// Keep stored secrets where an update echoes their redacted form.
fn merge_config(new: &Value, old: Option<&Value>) -> Value {
    let (Value::Object(n), Some(Value::Object(o))) = (new, old) else {
        return new.clone();
    };
    Value::Object(
        n.iter()
            .map(|(k, x)| {
                let kept = if CONFIG_SECRETS.contains(&k.as_str()) {
                    let echoed = match x {
                        Value::String(s) => is_redacted(s),
                        Value::Object(i) => i
                            .get("value")
                            .and_then(Value::as_str)
                            .is_some_and(is_redacted),
                        _ => false,
                    };
                    if echoed {
                        o.get(k).cloned().unwrap_or_else(|| x.clone())
                    } else {
                        x.clone()
                    }
                } else {
                    merge_config(x, o.get(k))
                };
                (k.clone(), kept)
            })
            .collect(),
    )
}

fn config_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

// ---- JSON renderings -----------------------------------------------------------------------

impl PKey {
    fn json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "value": self.value.redacted_json(),
            "models": self.models,
            "blacklisted_models": self.blacklisted_models,
            "weight": self.weight,
            "enabled": self.enabled,
            "use_for_batch_api": self.use_for_batch_api,
            "description": self.description,
            "status": "success",
            "config_hash": config_hash(&[&self.id, &self.name, &self.models.join(","), &self.weight.to_string()]),
        });
        if let Some(a) = &self.aliases {
            v["aliases"] = a.clone();
        }
        for (k, c) in &self.configs {
            v[k] = redact_config(c);
        }
        v
    }

    /// A `TableKey` row as a virtual key's provider config lists it (no value).
    fn table_row(&self) -> Value {
        json!({
            "key_id": self.id,
            "name": self.name,
            "provider": self.provider,
            "models": self.models,
            "weight": self.weight,
            "enabled": self.enabled,
            "use_for_batch_api": self.use_for_batch_api,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "config_hash": config_hash(&[&self.id, &self.name, &self.models.join(","), &self.weight.to_string()]),
        })
    }

    fn flat_row(&self) -> Value {
        json!({
            "key_id": self.id,
            "name": self.name,
            "value": "",
            "models": self.models,
            "weight": self.weight,
            "enabled": self.enabled,
            "provider": self.provider,
            "config_hash": config_hash(&[&self.id, &self.name, &self.models.join(","), &self.weight.to_string()]),
        })
    }
}

impl Budget {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "max_limit": self.max_limit,
            "reset_duration": self.reset_duration,
            "current_usage": self.current_usage,
            "last_reset": self.last_reset.to_rfc3339_opts(SecondsFormat::Nanos, true),
            "calendar_aligned": false,
            "config_hash": config_hash(&[&self.id, &self.max_limit.to_string(), &self.reset_duration]),
            "created_at": self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
            "updated_at": self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
        })
    }

    /// Reset the counter once its window has passed.
    fn refresh(&mut self, at: DateTime<Utc>) {
        if let Some(secs) = duration_secs(&self.reset_duration) {
            if (at - self.last_reset).num_seconds() >= secs {
                self.current_usage = 0.0;
                self.last_reset = at;
            }
        }
    }
}

impl RateLimit {
    /// As Bifrost's `RateLimit` schema has it: the token limit and window are integer and
    /// string when set and left out otherwise (not null); the request ones may be null; the
    /// last-reset times are always times (the creation time before the first reset).
    fn json(&self) -> Value {
        let t = |d: &Option<DateTime<Utc>>| {
            d.unwrap_or(self.created_at)
                .to_rfc3339_opts(SecondsFormat::Nanos, true)
        };
        let created = self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut v = json!({
            "id": self.id,
            "token_current_usage": self.token_current_usage,
            "token_last_reset": t(&self.token_last_reset),
            "request_max_limit": self.request_max_limit,
            "request_reset_duration": self.request_reset_duration,
            "request_current_usage": self.request_current_usage,
            "request_last_reset": t(&self.request_last_reset),
            "config_hash": config_hash(&[
                &self.id,
                &format!("{:?}", self.token_max_limit),
                self.token_reset_duration.as_deref().unwrap_or(""),
                &format!("{:?}", self.request_max_limit),
                self.request_reset_duration.as_deref().unwrap_or(""),
            ]),
            "created_at": created,
            "updated_at": created,
        });
        if let Some(m) = self.token_max_limit {
            v["token_max_limit"] = json!(m);
        }
        if let Some(d) = &self.token_reset_duration {
            v["token_reset_duration"] = json!(d);
        }
        v
    }

    fn refresh(&mut self, at: DateTime<Utc>) {
        let due = |w: &Option<String>, last: &Option<DateTime<Utc>>| match (
            w.as_deref().and_then(duration_secs),
            last,
        ) {
            (Some(s), Some(l)) => (at - *l).num_seconds() >= s,
            _ => false,
        };
        if due(&self.token_reset_duration, &self.token_last_reset) {
            self.token_current_usage = 0;
            self.token_last_reset = Some(at);
        }
        if due(&self.request_reset_duration, &self.request_last_reset) {
            self.request_current_usage = 0;
            self.request_last_reset = Some(at);
        }
    }
}

impl Vk {
    /// The `VirtualKey` object. Provider configs name their keys as Bifrost does: `key_ids` is
    /// request-only; answers carry `allow_all_keys` and `keys` (the provider keys' table rows).
    fn json(&self, with_value: bool, pkeys: &[PKey]) -> Value {
        let pcs: Vec<Value> = self
            .provider_configs
            .iter()
            .map(|c| {
                let all = c.key_ids.iter().any(|k| k == "*");
                let keys: Vec<Value> = if all {
                    Vec::new()
                } else {
                    pkeys
                        .iter()
                        .filter(|k| k.provider == c.provider && c.key_ids.contains(&k.id))
                        .map(PKey::table_row)
                        .collect()
                };
                let mut v = json!({
                    "id": c.id,
                    "virtual_key_id": self.id,
                    "provider": c.provider,
                    "weight": c.weight,
                    "allowed_models": c.allowed_models,
                    "blacklisted_models": c.blacklisted_models,
                    "allow_all_keys": all,
                    "keys": keys,
                    "budgets": c.budgets.iter().map(Budget::json).collect::<Vec<_>>(),
                });
                if let Some(rl) = &c.rate_limit {
                    v["rate_limit"] = rl.json();
                }
                v
            })
            .collect();
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "is_active": self.is_active,
            "provider_configs": pcs,
            "mcp_configs": [],
            "budgets": self.budgets.iter().map(Budget::json).collect::<Vec<_>>(),
            "calendar_aligned": self.calendar_aligned,
            "config_hash": config_hash(&[&self.id, &self.name, &self.description, &self.is_active.to_string()]),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if let Some(rl) = &self.rate_limit {
            v["rate_limit"] = rl.json();
        }
        // Strings when set, left out otherwise (the schema has no null here).
        if let Some(t) = &self.team_id {
            v["team_id"] = json!(t);
        }
        if let Some(c) = &self.customer_id {
            v["customer_id"] = json!(c);
        }
        if with_value {
            v["value"] = json!(self.value);
        }
        v
    }

    fn refresh(&mut self, at: DateTime<Utc>) {
        for b in &mut self.budgets {
            b.refresh(at);
        }
        if let Some(rl) = &mut self.rate_limit {
            rl.refresh(at);
        }
    }

    fn hint(&self) -> String {
        let head: String = self.value.chars().take(10).collect();
        format!("{head}…")
    }
}

// ---- parsing of governance objects ---------------------------------------------------------

fn parse_budget(v: &Value, field: &str, next_id: &mut u64) -> Result<Budget, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{field} must be an object"))?;
    let max_limit = opt_f64(o.get("max_limit"), &format!("{field}.max_limit"))?
        .ok_or_else(|| format!("{field}.max_limit is required"))?;
    if max_limit < 0.0 {
        return Err(format!("{field}.max_limit must be non-negative"));
    }
    let reset = opt_str(o.get("reset_duration"), &format!("{field}.reset_duration"))?
        .ok_or_else(|| format!("{field}.reset_duration is required"))?;
    if duration_secs(&reset).is_none() {
        return Err(format!(
            "{field}.reset_duration {reset:?} is not a valid duration (e.g. 30s, 5m, 1h, 1d, 1w, 1M, 1Y)"
        ));
    }
    *next_id += 1;
    Ok(Budget {
        id: format!("budget-{}", uuid::Uuid::new_v4()),
        max_limit,
        reset_duration: reset,
        current_usage: 0.0,
        last_reset: Utc::now(),
        created_at: Utc::now(),
    })
}

/// `budgets` (list) or the legacy single `budget`. `None` when neither is present.
fn parse_budgets(
    o: &Map<String, Value>,
    field: &str,
    next_id: &mut u64,
) -> Result<Option<Vec<Budget>>, String> {
    let list = match (o.get("budgets"), o.get("budget")) {
        (Some(Value::Array(a)), _) => a
            .iter()
            .enumerate()
            .map(|(i, b)| parse_budget(b, &format!("{field}budgets[{i}]"), next_id))
            .collect::<Result<Vec<_>, _>>()?,
        (Some(Value::Null) | None, Some(Value::Null) | None) => return Ok(None),
        (Some(Value::Null) | None, Some(b)) => {
            vec![parse_budget(b, &format!("{field}budget"), next_id)?]
        }
        (Some(_), _) => return Err(format!("{field}budgets must be a list")),
    };
    let mut seen = BTreeSet::new();
    for b in &list {
        if !seen.insert(b.reset_duration.clone()) {
            return Err(format!(
                "{field}budgets: reset_duration {:?} appears more than once",
                b.reset_duration
            ));
        }
    }
    Ok(Some(list))
}

/// `Some(None)`: remove the rate limit (an object with no field set).
fn parse_rate_limit(v: Option<&Value>, field: &str) -> Result<Option<Option<RateLimit>>, String> {
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(format!("{field} must be an object")),
    };
    let tm = opt_i64(
        o.get("token_max_limit"),
        &format!("{field}.token_max_limit"),
    )?;
    let td = opt_str(
        o.get("token_reset_duration"),
        &format!("{field}.token_reset_duration"),
    )?;
    let rm = opt_i64(
        o.get("request_max_limit"),
        &format!("{field}.request_max_limit"),
    )?;
    let rd = opt_str(
        o.get("request_reset_duration"),
        &format!("{field}.request_reset_duration"),
    )?;
    if tm.is_none() && td.is_none() && rm.is_none() && rd.is_none() {
        return Ok(Some(None));
    }
    for (what, max, dur) in [("token", tm, &td), ("request", rm, &rd)] {
        if max.is_some_and(|m| m < 0) {
            return Err(format!("{field}.{what}_max_limit must be non-negative"));
        }
        if let Some(d) = dur {
            if duration_secs(d).is_none() {
                return Err(format!(
                    "{field}.{what}_reset_duration {d:?} is not a valid duration"
                ));
            }
        }
        if max.is_some() != dur.is_some() {
            return Err(format!(
                "{field}: {what}_max_limit and {what}_reset_duration must be set together"
            ));
        }
    }
    let at = Utc::now();
    Ok(Some(Some(RateLimit {
        id: format!("rl-{}", uuid::Uuid::new_v4()),
        token_max_limit: tm,
        token_last_reset: td.as_ref().map(|_| at),
        token_reset_duration: td,
        request_max_limit: rm,
        request_last_reset: rd.as_ref().map(|_| at),
        request_reset_duration: rd,
        created_at: at,
        ..Default::default()
    })))
}

fn parse_provider_configs(
    v: Option<&Value>,
    db: &mut Db,
) -> Result<Option<Vec<ProviderConfig>>, String> {
    let a = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("provider_configs must be a list".into()),
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, c) in a.iter().enumerate() {
        let f = format!("provider_configs[{i}]");
        let o = c
            .as_object()
            .ok_or_else(|| format!("{f} must be an object"))?;
        let provider = opt_str(o.get("provider"), &format!("{f}.provider"))?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("{f}.provider is required"))?;
        if !seen.insert(provider.clone()) {
            return Err(format!(
                "provider {provider:?} appears more than once in provider_configs"
            ));
        }
        let weight = opt_f64(o.get("weight"), &format!("{f}.weight"))?.unwrap_or(1.0);
        if weight < 0.0 {
            return Err(format!("{f}.weight must be non-negative"));
        }
        let key_ids = strings(o.get("key_ids"), &format!("{f}.key_ids"))?;
        for k in &key_ids {
            if k != "*"
                && !db
                    .pkeys
                    .iter()
                    .any(|p| &p.id == k && p.provider == provider)
            {
                return Err(format!(
                    "{f}.key_ids: key {k:?} is not a key of provider {provider}"
                ));
            }
        }
        let budgets = parse_budgets(o, &format!("{f}."), &mut db.next_id)?.unwrap_or_default();
        let rate_limit =
            parse_rate_limit(o.get("rate_limit"), &format!("{f}.rate_limit"))?.flatten();
        db.next_id += 1;
        out.push(ProviderConfig {
            id: db.next_id,
            provider,
            weight,
            allowed_models: strings(o.get("allowed_models"), &format!("{f}.allowed_models"))?,
            blacklisted_models: strings(
                o.get("blacklisted_models"),
                &format!("{f}.blacklisted_models"),
            )?,
            key_ids,
            budgets,
            rate_limit,
        });
    }
    Ok(Some(out))
}

/// Carry usage counters over to replacement budgets with the same window.
fn keep_usage(new: &mut [Budget], old: &[Budget]) {
    for b in new {
        if let Some(o) = old.iter().find(|o| o.reset_duration == b.reset_duration) {
            b.current_usage = o.current_usage;
            b.last_reset = o.last_reset;
            b.id = o.id.clone();
        }
    }
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

// ---- providers -----------------------------------------------------------------------------

fn no_provider(p: &str) -> Response {
    render_error(StatusCode::NOT_FOUND, &format!("Provider not found: {p}"))
}

fn keys_in_payload(o: &Map<String, Value>) -> bool {
    o.get("keys")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

const KEYS_REJECTED: &str = "keys are not accepted on this endpoint; use POST/PUT /api/providers/{provider}/keys to manage provider keys";

async fn list_providers(State(emu): State<Arc<Emu>>) -> Response {
    let db = emu.db.lock().unwrap();
    let list: Vec<Value> = db.providers.iter().map(|p| json!({ "name": p })).collect();
    ok(json!({ "providers": list, "total": list.len() }))
}

async fn add_provider(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    if keys_in_payload(&o) {
        return bad(KEYS_REJECTED);
    }
    let Some(name) = o
        .get("provider")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return bad("provider is required");
    };
    let mut db = emu.db.lock().unwrap();
    if !db.providers.insert(name.to_string()) {
        return render_error(
            StatusCode::CONFLICT,
            &format!("Provider {name} already exists"),
        );
    }
    ok(json!({ "name": name }))
}

async fn get_provider(State(emu): State<Arc<Emu>>, Path(p): Path<String>) -> Response {
    if !emu.db.lock().unwrap().providers.contains(&p) {
        return no_provider(&p);
    }
    ok(json!({ "name": p }))
}

async fn update_provider(
    State(emu): State<Arc<Emu>>,
    Path(p): Path<String>,
    body: Bytes,
) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    if !emu.db.lock().unwrap().providers.contains(&p) {
        return no_provider(&p);
    }
    if keys_in_payload(&o) {
        return bad(KEYS_REJECTED);
    }
    ok(json!({ "name": p }))
}

async fn delete_provider(State(emu): State<Arc<Emu>>, Path(p): Path<String>) -> Response {
    let mut db = emu.db.lock().unwrap();
    if !db.providers.remove(&p) {
        return no_provider(&p);
    }
    db.pkeys.retain(|k| k.provider != p);
    ok(json!({ "message": format!("Provider {p} deleted successfully") }))
}

// ---- provider keys -------------------------------------------------------------------------

/// Build a provider key from a request body (`old`: the stored key on update).
fn parse_pkey(
    o: &Map<String, Value>,
    provider: &str,
    id: String,
    old: Option<&PKey>,
) -> Result<PKey, String> {
    let name = opt_str(o.get("name"), "name")?.unwrap_or_default();
    if name.trim().is_empty() {
        return Err("Key name is required".into());
    }
    let mut value = parse_envvar(o.get("value"))?;
    if !value.from_env && is_redacted(&value.value) {
        if let Some(old) = old {
            value = old.value.clone();
        }
    }
    if !value.from_env && value.value.trim().is_empty() {
        return Err("Key value must not be empty".into());
    }
    let weight = opt_f64(o.get("weight"), "weight")?.unwrap_or(1.0);
    if weight < 0.0 {
        return Err("Key weight must be non-negative".into());
    }
    let mut configs = Map::new();
    for k in CONFIG_KEYS {
        match o.get(*k) {
            None | Some(Value::Null) => {}
            Some(c @ Value::Object(_)) => {
                let merged = merge_config(c, old.and_then(|p| p.configs.get(*k)));
                configs.insert(k.to_string(), merged);
            }
            Some(_) => return Err(format!("{k} must be an object")),
        }
    }
    let aliases = match o.get("aliases") {
        None | Some(Value::Null) => None,
        Some(a @ Value::Object(m)) => {
            if m.values().any(|v| !v.is_string()) {
                return Err("aliases must map model names to strings".into());
            }
            Some(a.clone())
        }
        Some(_) => return Err("aliases must be an object".into()),
    };
    let at = now();
    Ok(PKey {
        provider: provider.to_string(),
        id,
        name,
        value,
        models: strings(o.get("models"), "models")?,
        blacklisted_models: strings(o.get("blacklisted_models"), "blacklisted_models")?,
        weight,
        enabled: opt_bool(o.get("enabled"), "enabled")?.unwrap_or(true),
        description: opt_str(o.get("description"), "description")?.unwrap_or_default(),
        use_for_batch_api: opt_bool(o.get("use_for_batch_api"), "use_for_batch_api")?
            .unwrap_or(false),
        aliases,
        configs,
        created_at: old
            .map(|p| p.created_at.clone())
            .unwrap_or_else(|| at.clone()),
        updated_at: at,
    })
}

fn name_taken(db: &Db, name: &str, except_id: &str) -> Option<Response> {
    db.pkeys
        .iter()
        .find(|k| k.name == name && k.id != except_id)
        .map(|k| {
            render_error(
                StatusCode::CONFLICT,
                &format!(
                    "API key names must be unique across providers: '{name}' is already used by a key of provider {}",
                    k.provider
                ),
            )
        })
}

async fn list_pkeys(State(emu): State<Arc<Emu>>, Path(p): Path<String>) -> Response {
    let db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    let keys: Vec<Value> = db
        .pkeys
        .iter()
        .filter(|k| k.provider == p)
        .map(PKey::json)
        .collect();
    ok(json!({ "keys": keys, "total": keys.len() }))
}

async fn get_pkey(State(emu): State<Arc<Emu>>, Path((p, id)): Path<(String, String)>) -> Response {
    let db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    match db.pkeys.iter().find(|k| k.provider == p && k.id == id) {
        Some(k) => ok(k.json()),
        None => render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {id}"),
        ),
    }
}

async fn create_pkey(State(emu): State<Arc<Emu>>, Path(p): Path<String>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    let id = match opt_str(o.get("id"), "id") {
        Ok(Some(id)) if !id.trim().is_empty() => id,
        Ok(_) => uuid::Uuid::new_v4().to_string(),
        Err(e) => return bad(e),
    };
    let key = match parse_pkey(&o, &p, id.clone(), None) {
        Ok(k) => k,
        Err(e) => return bad(e),
    };
    if db.pkeys.iter().any(|k| k.id == id) {
        return render_error(
            StatusCode::CONFLICT,
            &format!("A key with id '{id}' already exists"),
        );
    }
    if let Some(r) = name_taken(&db, &key.name, &id) {
        return r;
    }
    let out = key.json();
    db.pkeys.push(key);
    ok(out)
}

async fn update_pkey(
    State(emu): State<Arc<Emu>>,
    Path((p, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    let Some(pos) = db.pkeys.iter().position(|k| k.provider == p && k.id == id) else {
        return render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {id}"),
        );
    };
    match opt_str(o.get("id"), "id") {
        Ok(Some(body_id)) if !body_id.is_empty() && body_id != id => {
            return bad("the key id in the body does not match the path")
        }
        Err(e) => return bad(e),
        _ => {}
    }
    let key = match parse_pkey(&o, &p, id.clone(), Some(&db.pkeys[pos])) {
        Ok(k) => k,
        Err(e) => return bad(e),
    };
    if let Some(r) = name_taken(&db, &key.name, &id) {
        return r;
    }
    let out = key.json();
    db.pkeys[pos] = key;
    ok(out)
}

async fn delete_pkey(
    State(emu): State<Arc<Emu>>,
    Path((p, id)): Path<(String, String)>,
) -> Response {
    let mut db = emu.db.lock().unwrap();
    if !db.providers.contains(&p) {
        return no_provider(&p);
    }
    match db.pkeys.iter().position(|k| k.provider == p && k.id == id) {
        Some(pos) => ok(db.pkeys.remove(pos).json()),
        None => render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {id}"),
        ),
    }
}

async fn flat_keys(State(emu): State<Arc<Emu>>) -> Response {
    let db = emu.db.lock().unwrap();
    ok(Value::Array(db.pkeys.iter().map(PKey::flat_row).collect()))
}

async fn flat_keys_read_only() -> Response {
    render_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed: /api/keys is read-only; manage keys under /api/providers/{provider}/keys",
    )
}

// ---- virtual keys --------------------------------------------------------------------------

fn no_vk() -> Response {
    render_error(StatusCode::NOT_FOUND, "Virtual key not found")
}

async fn list_vks(State(emu): State<Arc<Emu>>, RawQuery(q): RawQuery) -> Response {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let paginated = [
        "limit", "offset", "search", "org_id", "sort_by", "order", "export",
    ]
    .iter()
    .any(|k| param(k).is_some());
    let mut db = emu.db.lock().unwrap();
    let at = Utc::now();
    for vk in &mut db.vks {
        vk.refresh(at);
    }
    let with_value = !emu.hide_vk_values;
    if !paginated {
        let all: Vec<Value> = db
            .vks
            .iter()
            .map(|v| v.json(with_value, &db.pkeys))
            .collect();
        // Unpaginated: the whole list is one page.
        return ok(json!({
            "virtual_keys": all,
            "count": all.len(),
            "total_count": all.len(),
            "limit": all.len(),
            "offset": 0,
        }));
    }
    let num = |k: &str| -> Result<Option<usize>, String> {
        match param(k) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v
                .parse::<usize>()
                .map(Some)
                .map_err(|_| format!("Invalid {k} parameter: must be a non-negative integer")),
        }
    };
    let limit = match num("limit") {
        Ok(l) => l
            .filter(|l| *l > 0)
            .unwrap_or(DEFAULT_PAGE)
            .min(emu.max_page.max(1)),
        Err(e) => return bad(e),
    };
    let offset = match num("offset") {
        Ok(o) => o.unwrap_or(0),
        Err(e) => return bad(e),
    };
    let mut matching: Vec<&Vk> = match param("search").filter(|s| !s.is_empty()) {
        Some(s) => {
            let s = s.to_lowercase();
            db.vks
                .iter()
                .filter(|v| {
                    v.name.to_lowercase().contains(&s) || v.description.to_lowercase().contains(&s)
                })
                .collect()
        }
        None => db.vks.iter().collect(),
    };
    match param("sort_by").as_deref() {
        None | Some("") | Some("created_at") => {}
        Some("name") => matching.sort_by(|a, b| a.name.cmp(&b.name)),
        Some("updated_at") => matching.sort_by(|a, b| a.updated_at.cmp(&b.updated_at)),
        Some(other) => return bad(format!("Invalid sort_by parameter: {other}")),
    }
    match param("order").as_deref() {
        None | Some("") | Some("asc") => {}
        Some("desc") => matching.reverse(),
        Some(other) => return bad(format!("Invalid order parameter: {other}")),
    }
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|v| v.json(with_value, &db.pkeys))
        .collect();
    ok(json!({
        "virtual_keys": page,
        "count": page.len(),
        "total_count": total,
        "limit": limit,
        "offset": offset,
    }))
}

async fn create_vk(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    let vk = match (|| -> Result<Vk, String> {
        let name = opt_str(o.get("name"), "name")?.unwrap_or_default();
        if name.trim().is_empty() {
            return Err("Virtual key name is required".into());
        }
        let team_id = opt_str(o.get("team_id"), "team_id")?;
        let customer_id = opt_str(o.get("customer_id"), "customer_id")?;
        if team_id.is_some() && customer_id.is_some() {
            return Err("team_id and customer_id are mutually exclusive".into());
        }
        let budgets = parse_budgets(&o, "", &mut db.next_id)?.unwrap_or_default();
        let rate_limit = parse_rate_limit(o.get("rate_limit"), "rate_limit")?.flatten();
        let provider_configs =
            parse_provider_configs(o.get("provider_configs"), &mut db)?.unwrap_or_default();
        let at = now();
        Ok(Vk {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            value: new_vk_value(),
            description: opt_str(o.get("description"), "description")?.unwrap_or_default(),
            is_active: opt_bool(o.get("is_active"), "is_active")?.unwrap_or(true),
            provider_configs,
            budgets,
            rate_limit,
            team_id,
            customer_id,
            calendar_aligned: opt_bool(o.get("calendar_aligned"), "calendar_aligned")?
                .unwrap_or(false),
            created_at: at.clone(),
            updated_at: at,
        })
    })() {
        Ok(vk) => vk,
        Err(e) => return bad(e),
    };
    let out = vk.json(true, &db.pkeys);
    db.vks.push(vk);
    ok(json!({ "message": "Virtual key created successfully", "virtual_key": out }))
}

async fn get_vk(State(emu): State<Arc<Emu>>, Path(id): Path<String>) -> Response {
    let mut guard = emu.db.lock().unwrap();
    let db = &mut *guard;
    let Some(vk) = db.vks.iter_mut().find(|v| v.id == id) else {
        return no_vk();
    };
    vk.refresh(Utc::now());
    ok(json!({ "virtual_key": vk.json(!emu.hide_vk_values, &db.pkeys) }))
}

async fn update_vk(State(emu): State<Arc<Emu>>, Path(id): Path<String>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    let Some(pos) = db.vks.iter().position(|v| v.id == id) else {
        return no_vk();
    };
    let mut vk = db.vks[pos].clone();
    let result = (|| -> Result<(), String> {
        if let Some(name) = opt_str(o.get("name"), "name")? {
            if name.trim().is_empty() {
                return Err("Virtual key name must not be empty".into());
            }
            vk.name = name;
        }
        if let Some(d) = opt_str(o.get("description"), "description")? {
            vk.description = d;
        }
        if let Some(a) = opt_bool(o.get("is_active"), "is_active")? {
            vk.is_active = a;
        }
        if let Some(t) = opt_str(o.get("team_id"), "team_id")? {
            vk.team_id = Some(t);
            vk.customer_id = None;
        }
        if let Some(c) = opt_str(o.get("customer_id"), "customer_id")? {
            if o.get("team_id").is_some_and(|t| !t.is_null()) {
                return Err("team_id and customer_id are mutually exclusive".into());
            }
            vk.customer_id = Some(c);
            vk.team_id = None;
        }
        if let Some(mut b) = parse_budgets(&o, "", &mut db.next_id)? {
            keep_usage(&mut b, &vk.budgets);
            vk.budgets = b;
        }
        match parse_rate_limit(o.get("rate_limit"), "rate_limit")? {
            None => {}
            Some(None) => vk.rate_limit = None,
            Some(Some(mut rl)) => {
                if let Some(old) = &vk.rate_limit {
                    rl.id = old.id.clone();
                    rl.token_current_usage = old.token_current_usage;
                    rl.request_current_usage = old.request_current_usage;
                }
                vk.rate_limit = Some(rl);
            }
        }
        if let Some(pcs) = parse_provider_configs(o.get("provider_configs"), &mut db)? {
            vk.provider_configs = pcs;
        }
        if let Some(c) = opt_bool(o.get("calendar_aligned"), "calendar_aligned")? {
            vk.calendar_aligned = c;
        }
        Ok(())
    })();
    if let Err(e) = result {
        return bad(e);
    }
    vk.updated_at = now();
    let out = vk.json(true, &db.pkeys);
    db.vks[pos] = vk;
    ok(json!({ "message": "Virtual key updated successfully", "virtual_key": out }))
}

async fn delete_vk(State(emu): State<Arc<Emu>>, Path(id): Path<String>) -> Response {
    let mut db = emu.db.lock().unwrap();
    let Some(pos) = db.vks.iter().position(|v| v.id == id) else {
        return no_vk();
    };
    db.vks.remove(pos);
    ok(json!({ "message": "Virtual key deleted successfully" }))
}

async fn rotate_vk(State(emu): State<Arc<Emu>>, Path(id): Path<String>) -> Response {
    let mut guard = emu.db.lock().unwrap();
    let db = &mut *guard;
    let Some(vk) = db.vks.iter_mut().find(|v| v.id == id) else {
        return no_vk();
    };
    vk.value = new_vk_value();
    vk.updated_at = now();
    ok(
        json!({ "message": "Virtual key rotated successfully", "virtual_key": vk.json(true, &db.pkeys) }),
    )
}

async fn rotate_vks(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let ids = match strings(o.get("ids"), "ids") {
        Ok(ids) if !ids.is_empty() => ids,
        Ok(_) => return bad("ids must not be empty"),
        Err(e) => return bad(e),
    };
    let mut db = emu.db.lock().unwrap();
    if let Some(missing) = ids.iter().find(|id| !db.vks.iter().any(|v| &v.id == *id)) {
        return render_error(
            StatusCode::NOT_FOUND,
            &format!("Virtual key not found: {missing}"),
        );
    }
    let db = &mut *db;
    let mut out = Vec::new();
    for vk in db.vks.iter_mut().filter(|v| ids.contains(&v.id)) {
        vk.value = new_vk_value();
        vk.updated_at = now();
        out.push(vk.json(true, &db.pkeys));
    }
    ok(json!({ "message": "Virtual keys rotated successfully", "virtual_keys": out }))
}

// ---- inference -----------------------------------------------------------------------------

/// The virtual key a request presents (`x-bf-vk`, Bearer, `x-api-key`, `x-goog-api-key`).
fn presented_vk(headers: &HeaderMap) -> Option<String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = h("x-bf-vk") {
        return Some(v.to_string());
    }
    let bearer = h("authorization").and_then(|a| a.strip_prefix("Bearer "));
    [bearer, h("x-api-key"), h("x-goog-api-key")]
        .into_iter()
        .flatten()
        .find(|v| v.starts_with("sk-bf-"))
        .map(str::to_string)
}

async fn models(State(emu): State<Arc<Emu>>, headers: HeaderMap) -> Response {
    let Some(value) = presented_vk(&headers) else {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is required");
    };
    let mut db = emu.db.lock().unwrap();
    let Some(vk) = db.vks.iter_mut().find(|v| v.value == value) else {
        return render_error(StatusCode::UNAUTHORIZED, "invalid virtual key");
    };
    if !vk.is_active {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is inactive");
    }
    vk.refresh(Utc::now());
    if vk.budgets.iter().any(|b| b.current_usage >= b.max_limit) {
        return render_error(StatusCode::TOO_MANY_REQUESTS, "virtual key budget exceeded");
    }
    if let Some(rl) = &mut vk.rate_limit {
        if rl
            .request_max_limit
            .is_some_and(|m| rl.request_current_usage >= m)
        {
            return render_error(
                StatusCode::TOO_MANY_REQUESTS,
                "virtual key request rate limit exceeded",
            );
        }
        rl.request_current_usage += 1;
    }
    let data: Vec<Value> = vk
        .provider_configs
        .iter()
        .flat_map(|c| {
            c.allowed_models.iter().map(move |m| {
                json!({ "id": format!("{}/{m}", c.provider), "object": "model", "owned_by": c.provider })
            })
        })
        .collect();
    ok(json!({ "object": "list", "data": data }))
}

async fn quota(State(emu): State<Arc<Emu>>, headers: HeaderMap) -> Response {
    let Some(value) = presented_vk(&headers) else {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is required");
    };
    let mut guard = emu.db.lock().unwrap();
    let db = &mut *guard;
    let Some(vk) = db.vks.iter_mut().find(|v| v.value == value) else {
        return render_error(StatusCode::UNAUTHORIZED, "invalid virtual key");
    };
    vk.refresh(Utc::now());
    // As the published `VirtualKeyQuotaResponse`: budgets with their per-model spend (none
    // here: no logging plugin), provider configs with `keys` always null, model configs [].
    let budgets: Vec<Value> = vk
        .budgets
        .iter()
        .map(|b| {
            let mut v = b.json();
            v["per_model_usage"] = json!([]);
            v
        })
        .collect();
    let mut pcs = vk.json(false, &db.pkeys)["provider_configs"].take();
    if let Some(list) = pcs.as_array_mut() {
        for c in list {
            c["keys"] = Value::Null;
        }
    }
    ok(json!({
        "virtual_key_id": vk.id,
        "virtual_key_name": vk.name,
        "is_active": vk.is_active,
        "budgets": budgets,
        "rate_limit": vk.rate_limit.as_ref().map(RateLimit::json),
        "provider_configs": pcs,
        "model_configs": [],
    }))
}

// ---- test control --------------------------------------------------------------------------

async fn control_keys(State(emu): State<Arc<Emu>>) -> Response {
    let mut db = emu.db.lock().unwrap();
    let at = Utc::now();
    for vk in &mut db.vks {
        vk.refresh(at);
    }
    let vks: Vec<Value> = db
        .vks
        .iter()
        .map(|v| {
            json!({
                "id": v.id,
                "name": v.name,
                "active": v.is_active,
                "revoked": false,
                "hint": v.hint(),
                "description": v.description,
                "budgets": v.budgets.iter().map(|b| json!({
                    "maxLimit": b.max_limit, "resetDuration": b.reset_duration, "currentUsage": b.current_usage,
                })).collect::<Vec<_>>(),
                "rateLimit": v.rate_limit.as_ref().map(|r| json!({
                    "tokenMaxLimit": r.token_max_limit, "tokenResetDuration": r.token_reset_duration,
                    "tokenCurrentUsage": r.token_current_usage,
                    "requestMaxLimit": r.request_max_limit, "requestResetDuration": r.request_reset_duration,
                    "requestCurrentUsage": r.request_current_usage,
                })),
                "providerConfigs": v.provider_configs.iter().map(|c| json!({
                    "provider": c.provider, "weight": c.weight,
                    "allowedModels": c.allowed_models, "keyIds": c.key_ids,
                })).collect::<Vec<_>>(),
                "createdAt": v.created_at,
                "updatedAt": v.updated_at,
            })
        })
        .collect();
    let pks: Vec<Value> = db
        .pkeys
        .iter()
        .map(|k| {
            json!({
                "provider": k.provider,
                "id": k.id,
                "name": k.name,
                "active": k.enabled,
                "revoked": false,
                "fromEnv": k.value.from_env,
                "models": k.models,
                "weight": k.weight,
                "description": k.description,
                "configs": k.configs.keys().collect::<Vec<_>>(),
                "createdAt": k.created_at,
                "updatedAt": k.updated_at,
            })
        })
        .collect();
    ok(json!({ "virtualKeys": vks, "providerKeys": pks }))
}

async fn control_usage(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let Some(id) = o.get("vkId").and_then(Value::as_str) else {
        return bad("vkId is required");
    };
    let amount = o.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
    let tokens = o.get("tokens").and_then(Value::as_i64).unwrap_or(0);
    let requests = o.get("requests").and_then(Value::as_i64).unwrap_or(0);
    let as_request = o.get("asRequest").and_then(Value::as_bool).unwrap_or(false);
    let mut db = emu.db.lock().unwrap();
    let Some(vk) = db.vks.iter_mut().find(|v| v.id == id) else {
        return no_vk();
    };
    vk.refresh(Utc::now());
    // As inference with the VK (`GET /v1/models`): refused when inactive or when a budget is
    // used up; a request admitted under its budget is counted in full.
    if as_request && !vk.is_active {
        return render_error(StatusCode::UNAUTHORIZED, "virtual key is inactive");
    }
    if as_request && vk.budgets.iter().any(|b| b.current_usage >= b.max_limit) {
        return render_error(StatusCode::TOO_MANY_REQUESTS, "virtual key budget exceeded");
    }
    for b in &mut vk.budgets {
        b.current_usage += amount;
    }
    if let Some(rl) = &mut vk.rate_limit {
        rl.token_current_usage += tokens;
        rl.request_current_usage += requests;
    }
    ok(json!({
        "budgets": vk.budgets.iter().map(Budget::json).collect::<Vec<_>>(),
        "rate_limit": vk.rate_limit.as_ref().map(RateLimit::json),
    }))
}

async fn control_check(State(emu): State<Arc<Emu>>, body: Bytes) -> Response {
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    let field = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
    let db = emu.db.lock().unwrap();
    match db
        .pkeys
        .iter()
        .find(|k| k.provider == field("provider") && k.id == field("id"))
    {
        Some(k) => ok(json!({ "matches": k.value.value == field("value") })),
        None => render_error(
            StatusCode::NOT_FOUND,
            &format!("Provider key not found: {}", field("id")),
        ),
    }
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> Response {
    render_error(
        StatusCode::NOT_FOUND,
        &format!("Not found: {method} {}", uri.path()),
    )
}

/// Build the emulator's router and fault state.
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

pub fn build(args: &Args) -> (Router, Arc<Faults>) {
    let emu = Arc::new(Emu {
        basic: args.username.clone().zip(args.password.clone()),
        token: args.token.clone(),
        viewer_token: args.viewer_token.clone(),
        max_page: args.max_page_size,
        hide_vk_values: args.hide_vk_values,
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
