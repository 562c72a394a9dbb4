//! UCloud ModelVerse ("UMInfer") API keys, reached with UCloud's signed `Action` API.
//!
//! One URL serves every action. The Go SDK's shape is followed exactly: `POST` to the base URL
//! with an `application/x-www-form-urlencoded` body holding every parameter (including
//! `PublicKey` and `Signature`) and `Action` repeated in the query string. The signature is
//! `hex(sha1(name1 value1 name2 value2 … privateKey))` over all parameters but `Signature`,
//! sorted by name in byte order (see [`signature`]).
//!
//! | operation | action | retried |
//! |---|---|---|
//! | create | `CreateUMInferAPIKey` | no (the SDK marks it non-retryable) |
//! | list | `ListUMInferAPIKey` (`Offset`/`Limit`, max 100) | yes |
//! | update | `UpdateUMInferAPIKey` (partial) | yes |
//! | delete | `DeleteUMInferAPIKey` | yes |
//!
//! There is no get: the trait's default filters the listing. The listing returns the secret
//! (`Key`), so a lost Secret is restored from it without minting a new key.
//!
//! Errors come back as HTTP 200 with `RetCode != 0`; see [`retcode_error`] for the mapping and
//! `docs/providers/ucloud.md` for the codes keysmith assumes where UCloud documents none.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeZone;
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::Value;
use sha1::{Digest, Sha1};

use super::http::{retry_after, snippet, HttpClient, HttpResponse, Idempotency};
use super::*;
use keysmith_api::{LastUsedSource, UCloudProvider};

/// The management API of UCloud's China site (the Go SDK's default).
pub const DEFAULT_BASE_URL: &str = UCloudProvider::DEFAULT_BASE_URL;
/// Largest page `ListUMInferAPIKey` serves.
pub const PAGE_SIZE: usize = 100;
/// Most entries `IPWhitelist` takes.
pub const MAX_WHITELIST: usize = 100;

/// Business error codes (HTTP 200, `RetCode != 0`). 171 and 172 are documented by UCloud; the
/// others follow UCloud's common codes where they exist and are keysmith's assumption otherwise
/// (the emulator uses the same ones; `docs/providers/ucloud.md` lists them).
pub mod retcode {
    /// `Missing Action`.
    pub const MISSING_ACTION: i64 = 160;
    /// `Action [X] not available`: the action does not exist.
    pub const ACTION_NOT_AVAILABLE: i64 = 161;
    /// `Missing signature`.
    pub const MISSING_SIGNATURE: i64 = 170;
    /// `Signature VerifyAC Error` (documented).
    pub const SIGNATURE_ERROR: i64 = 171;
    /// `User Not Exists`: unknown public key (documented).
    pub const USER_NOT_EXISTS: i64 = 172;
    /// `Missing params [X]`.
    pub const MISSING_PARAMS: i64 = 220;
    /// `Params [X] not available`: a value UCloud does not accept.
    pub const PARAMS_NOT_AVAILABLE: i64 = 230;
    /// `Params [X] too large`.
    pub const PARAMS_TOO_LARGE: i64 = 240;
    /// The key does not exist (keysmith's assumption; below 2000 because UCloud's SDKs retry
    /// every code from 2000 up as a server error, and a missing key is final).
    pub const KEY_NOT_FOUND: i64 = 1404;
    /// Too many requests (keysmith's assumption).
    pub const THROTTLED: i64 = 1429;
    /// From here up: server-side errors, retryable per UCloud's SDKs.
    pub const SERVER_ERROR_FLOOR: i64 = 2000;
}

/// Parameters of one request, sorted by name in byte order (the signature's order).
pub type Params = BTreeMap<String, String>;

/// UCloud's request signature: every parameter but `Signature` (raw, un-URL-encoded values),
/// sorted by name in byte order, concatenated as `name value name value …`, the private key
/// appended, then lowercase hex SHA-1.
pub fn signature(params: &Params, private_key: &str) -> String {
    let mut h = Sha1::new();
    for (name, value) in params {
        if name == "Signature" {
            continue;
        }
        h.update(name.as_bytes());
        h.update(value.as_bytes());
    }
    h.update(private_key.as_bytes());
    hex::encode(h.finalize())
}

/// A boolean as UCloud signs and sends it.
pub fn encode_bool(b: bool) -> String {
    if b { "true" } else { "false" }.to_string()
}

/// The typed error for a business error (`RetCode != 0` in an HTTP 200 answer).
pub fn retcode_error(code: i64, message: &str, retry_after: Option<Duration>) -> ProviderError {
    use retcode::*;
    let msg = snippet(&format!("RetCode {code}: {message}"));
    let lower = message.to_ascii_lowercase();
    match code {
        MISSING_SIGNATURE | SIGNATURE_ERROR | USER_NOT_EXISTS => ProviderError::Auth(msg),
        ACTION_NOT_AVAILABLE => ProviderError::Unsupported(msg),
        // UCloud's usual answer to an id that does not resolve is "Params [X] not available";
        // for KeyId that means the key does not exist (a malformed id names no key either).
        PARAMS_NOT_AVAILABLE if message.contains("[KeyId]") => ProviderError::NotFound(msg),
        MISSING_ACTION | MISSING_PARAMS | PARAMS_NOT_AVAILABLE | PARAMS_TOO_LARGE => {
            ProviderError::Rejected(msg)
        }
        KEY_NOT_FOUND => ProviderError::NotFound(msg),
        THROTTLED => ProviderError::RateLimited { retry_after },
        c if c >= SERVER_ERROR_FLOOR => ProviderError::Unavailable(msg),
        // Codes keysmith does not know: read the message before calling it a rejection, so a
        // real throttling or key-not-found code with another number still lands right. Only a
        // message about a *key* counts as not found: NotFound on a delete means "already gone",
        // and reading e.g. a missing project that way would orphan the key.
        _ if lower.contains("too frequent")
            || lower.contains("too many request")
            || lower.contains("rate limit")
            || lower.contains("throttl") =>
        {
            ProviderError::RateLimited { retry_after }
        }
        _ if lower.contains("key")
            && (lower.contains("not found") || lower.contains("not exist")) =>
        {
            ProviderError::NotFound(msg)
        }
        _ => ProviderError::Rejected(msg),
    }
}

/// A read answered with a RetCode UCloud does not document (throttling has no documented
/// code, and its message may say anything) is retried with backoff rather than reported as a
/// rejection: a read changes nothing, and a permanent cause shows again on every retry.
pub fn unknown_code_on_a_read(code: i64, e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Rejected(msg) if !retcode_is_documented(code) => {
            ProviderError::Unavailable(msg)
        }
        other => other,
    }
}

/// Whether UCloud documents `code` (the common codes of its API reference and the server-error
/// range). The key-specific codes ([`retcode::KEY_NOT_FOUND`], [`retcode::THROTTLED`]) are
/// keysmith's assumptions and do not count.
pub fn retcode_is_documented(code: i64) -> bool {
    use retcode::*;
    matches!(
        code,
        MISSING_ACTION
            | ACTION_NOT_AVAILABLE
            | MISSING_SIGNATURE
            | SIGNATURE_ERROR
            | USER_NOT_EXISTS
            | MISSING_PARAMS
            | PARAMS_NOT_AVAILABLE
            | PARAMS_TOO_LARGE
    ) || code >= SERVER_ERROR_FLOOR
}

/// The typed error for an HTTP error status (UCloud answers HTTP >= 400 only for
/// transport-level failures; the body may still be the usual envelope).
fn http_error(resp: &HttpResponse) -> ProviderError {
    let message = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| {
            let m = v.get("Message").and_then(Value::as_str)?.to_string();
            Some(match v.get("RetCode").and_then(Value::as_i64) {
                Some(c) => format!("RetCode {c}: {m}"),
                None => m,
            })
        })
        .map(|m| snippet(&m))
        .unwrap_or_else(|| resp.text_snippet());
    let status = resp.status.as_u16();
    let msg = format!("HTTP {status}: {message}");
    match status {
        401 | 403 => ProviderError::Auth(msg),
        404 => ProviderError::NotFound(msg),
        410 => ProviderError::Unsupported(msg),
        429 => ProviderError::RateLimited {
            retry_after: super::http::rate_limit_wait(&resp.headers),
        },
        500..=599 => ProviderError::Unavailable(msg),
        _ => ProviderError::Rejected(msg),
    }
}

/// Whether `entry` is what `IPWhitelist` takes: an IPv4 address, an IPv4 range `a-b` (a <= b)
/// or an IPv4 CIDR block (host bits allowed, as in UCloud's own example `192.168.1.10/24`).
pub fn valid_whitelist_entry(entry: &str) -> bool {
    let e = entry.trim();
    if e.is_empty() || e != entry {
        return false;
    }
    if let Some((a, b)) = e.split_once('-') {
        return match (a.trim().parse::<Ipv4Addr>(), b.trim().parse::<Ipv4Addr>()) {
            (Ok(a), Ok(b)) => a <= b,
            _ => false,
        };
    }
    if e.contains('/') {
        return e.parse::<ipnet::Ipv4Net>().is_ok();
    }
    e.parse::<Ipv4Addr>().is_ok()
}

/// Split `IPWhitelist` (newline separated) into entries.
pub fn split_whitelist(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The settings of a key in UCloud's terms, derived from an ApiKey's settings.
#[derive(Clone, Debug, Default, PartialEq)]
struct UCloudSettings {
    name: String,
    modelverse_disabled: bool,
    sandbox_disabled: Option<bool>,
    /// Normalised decimal; `None`: no cap.
    daily_limit: Option<String>,
    monthly_limit: Option<String>,
    grant_all_models: bool,
    granted_models: Vec<String>,
    ip_whitelist: Vec<String>,
}

impl UCloudSettings {
    /// Assumes [`UCloudClient::validate`] found nothing (bad values are dropped here).
    fn from_settings(s: &KeySettings) -> Self {
        let block = s.ucloud.clone().unwrap_or_default();
        let neutral = |reset: LimitReset| {
            s.limit
                .as_ref()
                .filter(|l| l.reset == Some(reset))
                .map(|l| l.amount.clone())
        };
        let block_amount = |v: &Option<String>| v.as_deref().and_then(normalize_decimal);
        UCloudSettings {
            name: s.name.clone(),
            modelverse_disabled: s.disabled || block.modelverse_disabled == Some(true),
            sandbox_disabled: block.sandbox_disabled,
            daily_limit: neutral(LimitReset::Daily)
                .or_else(|| block_amount(&block.daily_limit_amount)),
            monthly_limit: neutral(LimitReset::Monthly)
                .or_else(|| block_amount(&block.monthly_limit_amount)),
            grant_all_models: s.models.is_empty(),
            granted_models: s.models.clone(),
            ip_whitelist: s.allowed_ips.clone(),
        }
    }

    fn put_name(&self, p: &mut Params) {
        p.insert("Name".into(), self.name.clone());
    }
    fn put_disabled(&self, p: &mut Params) {
        p.insert(
            "ModelverseDisabled".into(),
            flag(self.modelverse_disabled).into(),
        );
    }
    fn put_sandbox(&self, p: &mut Params) {
        if let Some(sb) = self.sandbox_disabled {
            p.insert("SandBoxDisabled".into(), flag(sb).into());
        }
    }
    /// An empty value removes a cap (keysmith's assumption, see the docs).
    fn put_limits(&self, p: &mut Params, clear: bool) {
        for (name, v) in [
            ("DailyLimitAmount", &self.daily_limit),
            ("MonthlyLimitAmount", &self.monthly_limit),
        ] {
            match v {
                Some(a) => {
                    p.insert(name.into(), a.clone());
                }
                None if clear => {
                    p.insert(name.into(), String::new());
                }
                None => {}
            }
        }
    }
    fn put_models(&self, p: &mut Params) {
        p.insert("GrantAllModels".into(), encode_bool(self.grant_all_models));
        if !self.grant_all_models {
            p.insert(
                "GrantedModels".into(),
                serde_json::to_string(&self.granted_models).expect("strings serialise"),
            );
        }
    }
    fn put_whitelist(&self, p: &mut Params, clear: bool) {
        if !self.ip_whitelist.is_empty() || clear {
            p.insert("IPWhitelist".into(), self.ip_whitelist.join("\n"));
        }
    }
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// Keys of [`ProviderKey::extras`] this client fills (what the listing reports of the settings
/// that have no neutral field, or whose neutral form is ambiguous).
mod extra {
    pub const DAILY_LIMIT: &str = "dailyLimitAmount";
    pub const MONTHLY_LIMIT: &str = "monthlyLimitAmount";
    pub const SANDBOX_DISABLED: &str = "sandboxDisabled";
    pub const GRANT_ALL_MODELS: &str = "grantAllModels";
    pub const STATUS: &str = "status";
    pub const CHANNEL_ID: &str = "channelId";
}

/// A JSON value as a string, whether UCloud sent a string or a number.
fn json_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn json_int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn json_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A cap as reported: `None` for no cap. An empty string and zero both read as "no cap"
/// (keysmith's assumption; a cap of 0 is refused by `validate()` for that reason).
fn cap(v: Option<&Value>) -> Option<String> {
    let s = json_text(v)?;
    let d = normalize_decimal(&s)?;
    (d != "0").then_some(d)
}

/// `GrantedModels`: an array of strings (current API), or the older comma-separated string
/// (`all` meaning every model), or JSON-array text.
fn granted_models(v: Option<&Value>) -> (Vec<String>, bool) {
    let clean = |items: Vec<String>| -> Vec<String> {
        items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let items = match v {
        Some(Value::Array(a)) => clean(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        ),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.starts_with('[') {
                clean(serde_json::from_str::<Vec<String>>(t).unwrap_or_default())
            } else {
                clean(t.split(',').map(str::to_string).collect())
            }
        }
        _ => Vec::new(),
    };
    let all = items.iter().any(|m| m.eq_ignore_ascii_case("all"));
    (items, all)
}

fn unix_time(secs: Option<i64>) -> Option<DateTime<Utc>> {
    match secs? {
        s if s > 0 => Utc.timestamp_opt(s, 0).single(),
        _ => None,
    }
}

/// A masked form of the key for status: first and last four characters.
fn hint(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 16 {
        return None;
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    Some(format!("{head}…{tail}"))
}

fn sub(a: &str, b: Option<&str>) -> Option<f64> {
    let a: f64 = a.parse().ok()?;
    let b: f64 = b.unwrap_or("0").parse().ok()?;
    Some((a - b).max(0.0))
}

/// A listed (or created) `APIKey` object as a [`ProviderKey`]. The secret goes straight into a
/// `SecretString`; nothing here formats the JSON object.
fn provider_key(v: &Value) -> Result<ProviderKey, ProviderError> {
    let id = v
        .get("KeyId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ProviderError::Malformed("an APIKey object has no KeyId".into()))?
        .to_string();
    let name = json_text(v.get("Name")).unwrap_or_default();
    let secret = v
        .get("Key")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let status = json_int(v.get("Status"));
    let expire = json_int(v.get("ExpireTime"));
    let expires_at = unix_time(expire);
    let expired = expires_at.is_some_and(|t| t <= Utc::now());
    let modelverse_disabled = json_int(v.get("ModelverseDisabled")).map(|d| d != 0);
    let sandbox_disabled = json_int(v.get("SandBoxDisabled")).map(|d| d != 0);
    let daily_limit = cap(v.get("DailyLimitAmount"));
    let monthly_limit = cap(v.get("MonthlyLimitAmount"));
    let daily_used = json_text(v.get("DailyUsedAmount")).and_then(|s| normalize_decimal(&s));
    let monthly_used = json_text(v.get("MonthlyUsedAmount")).and_then(|s| normalize_decimal(&s));
    let (granted, legacy_all) = granted_models(v.get("GrantedModels"));
    let grant_all = json_bool(v.get("GrantAllModels")).unwrap_or(legacy_all) || legacy_all;
    let whitelist = json_text(v.get("IPWhitelist")).map(|s| split_whitelist(&s));
    let channel = json_int(v.get("ChannelId"));

    // Limit minus spend: the tighter of the daily and monthly headroom.
    let remaining = [
        daily_limit
            .as_deref()
            .and_then(|l| sub(l, daily_used.as_deref())),
        monthly_limit
            .as_deref()
            .and_then(|l| sub(l, monthly_used.as_deref())),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::min);
    let usage =
        (daily_used.is_some() || monthly_used.is_some() || remaining.is_some()).then(|| {
            Usage {
                total: None,
                daily: daily_used.clone(),
                weekly: None,
                monthly: monthly_used.clone(),
                limit_remaining: remaining.map(decimal_from_f64),
                // UCloud: "the unit depends on the user's channel; for channel 126 it is USD".
                unit: (channel == Some(126)).then(|| "USD".to_string()),
                byok: None,
                resets_at: None,
            }
        });

    let mut extras = Extras::new();
    extras.insert(
        extra::DAILY_LIMIT.to_string(),
        daily_limit.clone().unwrap_or_default(),
    );
    extras.insert(
        extra::MONTHLY_LIMIT.to_string(),
        monthly_limit.clone().unwrap_or_default(),
    );
    if let Some(sb) = sandbox_disabled {
        extras.insert(extra::SANDBOX_DISABLED.to_string(), sb.to_string());
    }
    extras.insert(extra::GRANT_ALL_MODELS.to_string(), grant_all.to_string());
    if let Some(s) = status {
        extras.insert(extra::STATUS.to_string(), s.to_string());
    }
    if let Some(c) = channel {
        extras.insert(extra::CHANNEL_ID.to_string(), c.to_string());
    }

    Ok(ProviderKey {
        // Reported for the status (and expiry alerts), never compared: the spec cannot set a
        // UCloud key's expiry (ExpireTime is read-only; -1: never), so a provider-side default
        // expiry compared with "none" would be permanent drift on a field no update can change
        // (NewKeyNeeded forever, or a new key every reconcile with onImmutableChange: Replace).
        expires_at,
        id,
        name,
        hint: secret.and_then(hint),
        created_at: unix_time(json_int(v.get("CreateTime"))),
        // UCloud reports no last use.
        last_used_at: None,
        usage,
        // A deleted key is not listed, so a listed key exists. `Status` is documented only as
        // "1 = normal"; a disabled key may report another value, and reading that as "gone"
        // would make `disabled: true` recreate the key. So Status does not decide liveness (it
        // is kept in the extras for the status); an expired key is no longer live.
        active: !expired,
        observed: ObservedSettings {
            disabled: modelverse_disabled,
            // Not compared (see `expires_at` above).
            expires_at: None,
            // Daily and monthly caps do not fit one neutral limit unambiguously (the neutral
            // limit and the ucloud block both feed them): they are compared in extras_drift.
            limit: None,
            allowed_ips: whitelist,
            models: Some(if grant_all { Vec::new() } else { granted }),
        },
        // No free-text field at UCloud: crash recovery goes by name and creation time.
        attempt: None,
        secret: secret.map(|s| SecretString::from(s.to_string())),
        extras,
    })
}

/// The UCloud ModelVerse key backend.
pub struct UCloudClient {
    http: HttpClient,
    public_key: String,
    private_key: SecretString,
    project_id: Option<String>,
    caps: Capabilities,
}

impl std::fmt::Debug for UCloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UCloudClient")
            .field("http", &self.http)
            .field("public_key", &self.public_key)
            .field("private_key", &"[REDACTED]")
            .field("project_id", &self.project_id)
            .finish()
    }
}

const CAPABILITIES: Capabilities = Capabilities {
    mint: true,
    adopt: AdoptMode::ReadBack,
    push: false,
    supported: &[
        Field::DisplayName,
        Field::Disabled,
        Field::LimitAmount,
        Field::LimitReset,
        Field::AllowedIps,
        Field::Models,
        Field::Extras,
        Field::KeyRef,
    ],
    mutable: &[
        Field::DisplayName,
        Field::Disabled,
        Field::LimitAmount,
        Field::LimitReset,
        Field::AllowedIps,
        Field::Models,
        Field::Extras,
    ],
    secret_readable: true,
    rotation: RotationStrategy::MINT,
};

impl UCloudClient {
    pub fn new(
        spec: &UCloudProvider,
        creds: Credentials,
        opts: ClientOptions,
    ) -> Result<Self, String> {
        let public_key = spec.public_key.trim().to_string();
        if public_key.is_empty() {
            return Err("ucloud.publicKey must not be empty".into());
        }
        let private_key = creds.get("privateKey")?.clone();
        if private_key.expose_secret().trim().is_empty() {
            return Err("the ucloud private key Secret value is empty".into());
        }
        Ok(UCloudClient {
            http: HttpClient::new(ProviderType::UCloud, DEFAULT_BASE_URL, opts)?,
            public_key,
            private_key,
            project_id: spec
                .project_id
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string),
            caps: CAPABILITIES,
        })
    }

    /// The full, signed parameter set of one action.
    fn signed(&self, action: &str, mut params: Params) -> Params {
        params.insert("Action".into(), action.into());
        params.insert("PublicKey".into(), self.public_key.clone());
        if let Some(p) = &self.project_id {
            params.insert("ProjectId".into(), p.clone());
        }
        let sig = signature(&params, self.private_key.expose_secret());
        params.insert("Signature".into(), sig);
        params
    }

    /// Call one action and return the answer's JSON object (RetCode 0).
    async fn call(
        &self,
        operation: &'static str,
        idempotency: Idempotency,
        action: &'static str,
        params: Params,
    ) -> Result<Value, ProviderError> {
        self.call_coded(operation, idempotency, action, params)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`Self::call`], with the RetCode of a business error alongside the typed error.
    async fn call_coded(
        &self,
        operation: &'static str,
        idempotency: Idempotency,
        action: &'static str,
        params: Params,
    ) -> Result<Value, (ProviderError, Option<i64>)> {
        let params = self.signed(action, params);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let url = self
            .http
            .url(&format!("/?Action={action}"))
            .map_err(|e| (e, None))?;
        let resp = self
            .http
            .send(operation, idempotency, || {
                self.http
                    .request(Method::POST, &url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body.clone())
            })
            .await
            .map_err(|e| (e, None))?;
        if !resp.status.is_success() {
            return Err((http_error(&resp), None));
        }
        let v: Value = resp.json().map_err(|e| (e, None))?;
        let code = v.get("RetCode").and_then(Value::as_i64).ok_or_else(|| {
            (
                ProviderError::Malformed(format!("{action} answer has no numeric RetCode")),
                None,
            )
        })?;
        if code != 0 {
            let message = v.get("Message").and_then(Value::as_str).unwrap_or("");
            let mut e = retcode_error(code, message, retry_after(&resp.headers));
            if action.starts_with("List")
                || action.starts_with("Get")
                || action.starts_with("Describe")
            {
                e = unknown_code_on_a_read(code, e);
            }
            return Err((e, Some(code)));
        }
        Ok(v)
    }

    /// Problems with the settings, each naming the field (what [`KeyBackend::validate`] reports).
    fn problems(settings: &KeySettings) -> Vec<String> {
        let mut out = Vec::new();
        let block = settings.ucloud.clone().unwrap_or_default();
        if let Some(l) = &settings.limit {
            match l.reset {
                Some(LimitReset::Daily) | Some(LimitReset::Monthly) => {}
                Some(LimitReset::Weekly) => out.push(
                    "spec.limit.reset: UCloud caps spend per day or per month, not per week; \
                     use reset: daily or reset: monthly"
                        .into(),
                ),
                Some(LimitReset::Never) | None => out.push(
                    "spec.limit: UCloud has no lifetime cap; set reset: daily or reset: monthly"
                        .into(),
                ),
            }
            if l.amount == "0" {
                out.push(
                    "spec.limit.amount: UCloud reports an unset cap as 0, so a cap of 0 cannot be \
                     kept in sync; use spec.disabled: true to stop the key"
                        .into(),
                );
            }
        }
        for (field, value, reset) in [
            (
                "spec.ucloud.dailyLimitAmount",
                &block.daily_limit_amount,
                LimitReset::Daily,
            ),
            (
                "spec.ucloud.monthlyLimitAmount",
                &block.monthly_limit_amount,
                LimitReset::Monthly,
            ),
        ] {
            let Some(raw) = value else { continue };
            match normalize_decimal(raw) {
                None => out.push(format!(
                    "{field}: {raw:?} is not a non-negative decimal such as 10 or 12.50"
                )),
                Some(d) if d == "0" => out.push(format!(
                    "{field}: UCloud reports an unset cap as 0, so a cap of 0 cannot be kept in \
                     sync; use spec.disabled: true to stop the key"
                )),
                Some(d) => {
                    if let Some(l) = settings.limit.as_ref().filter(|l| l.reset == Some(reset)) {
                        if l.amount != d {
                            out.push(format!(
                                "{field} ({d}) and spec.limit ({} {}) set the same UCloud cap to \
                                 different amounts; keep one of them",
                                l.amount,
                                reset.as_str()
                            ));
                        }
                    }
                }
            }
        }
        if let Some(mv) = block.modelverse_disabled {
            if mv != settings.disabled {
                out.push(format!(
                    "spec.ucloud.modelverseDisabled ({mv}) contradicts spec.disabled ({}): both \
                     set UCloud's ModelverseDisabled; use spec.disabled alone",
                    settings.disabled
                ));
            }
        }
        if settings.allowed_ips.len() > MAX_WHITELIST {
            out.push(format!(
                "spec.allowedIPs: UCloud takes at most {MAX_WHITELIST} entries, got {}",
                settings.allowed_ips.len()
            ));
        }
        for ip in &settings.allowed_ips {
            if !valid_whitelist_entry(ip) {
                out.push(format!(
                    "spec.allowedIPs: {ip:?} is not an IPv4 address, range (a.b.c.d-e.f.g.h) or \
                     IPv4 CIDR block; UCloud's IP whitelist takes only those"
                ));
            }
        }
        for m in &settings.models {
            if m.trim().is_empty() {
                out.push("spec.models: model names must not be empty".into());
            } else if m.eq_ignore_ascii_case("all") {
                out.push(
                    "spec.models: \"all\" is not a model; leave spec.models empty to allow every \
                     model"
                        .into(),
                );
            }
        }
        out
    }
}

#[async_trait]
impl KeyBackend for UCloudClient {
    fn http(&self) -> Option<&HttpClient> {
        Some(&self.http)
    }
    fn last_use(&self, _key: &ProviderKey) -> LastUsedSource {
        // No last-use time; every key reports DailyUsedAmount/MonthlyUsedAmount. The request
        // logs (ListUMInferRequestLogs) would tell more but need a Region and a call of their own.
        LastUsedSource::UsageDelta
    }
    fn provider(&self) -> ProviderType {
        ProviderType::UCloud
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn validate(&self, settings: &KeySettings) -> Vec<String> {
        Self::problems(settings)
    }

    async fn verify(&self) -> Result<(), ProviderError> {
        let mut p = Params::new();
        p.insert("Offset".into(), "0".into());
        p.insert("Limit".into(), "1".into());
        self.call("verify", Idempotency::Safe, "ListUMInferAPIKey", p)
            .await
            .map(|_| ())
    }

    async fn create(&self, settings: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let u = UCloudSettings::from_settings(settings);
        let mut p = Params::new();
        u.put_name(&mut p);
        u.put_disabled(&mut p);
        u.put_sandbox(&mut p);
        u.put_limits(&mut p, false);
        u.put_models(&mut p);
        u.put_whitelist(&mut p, false);
        let v = self
            .call("create", Idempotency::Unsafe, "CreateUMInferAPIKey", p)
            .await?;
        let data = v.get("Data").filter(|d| d.is_object()).ok_or_else(|| {
            ProviderError::Malformed("CreateUMInferAPIKey answer has no Data object".into())
        })?;
        let mut key = provider_key(data)?;
        let secret = key.secret.take().ok_or_else(|| {
            ProviderError::Malformed("CreateUMInferAPIKey answer holds no Key".into())
        })?;
        key.secret = Some(secret.clone());
        Ok(CreatedKey { key, secret })
    }

    async fn list_page(
        &self,
        _scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        let offset: usize = match cursor {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| ProviderError::Rejected(format!("bad list cursor {c:?}")))?,
        };
        let mut p = Params::new();
        p.insert("Offset".into(), offset.to_string());
        p.insert("Limit".into(), PAGE_SIZE.to_string());
        let v = self
            .call("list", Idempotency::Safe, "ListUMInferAPIKey", p)
            .await?;
        let items = match v.get("Data") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            // The published example answers an empty listing with `"Data": {}`.
            Some(Value::Object(o)) if o.is_empty() => Vec::new(),
            Some(_) => {
                return Err(ProviderError::Malformed(
                    "ListUMInferAPIKey Data is not an array".into(),
                ))
            }
        };
        let keys = items
            .iter()
            .map(provider_key)
            .collect::<Result<Vec<_>, _>>()?;
        let seen = offset + items.len();
        // The SDK declares no TotalCount for this action: page until a short page, but use a
        // total if the server sends one.
        let more = match v.get("TotalCount").and_then(Value::as_u64) {
            Some(total) => (seen as u64) < total && !items.is_empty(),
            None => items.len() >= PAGE_SIZE,
        };
        Ok(KeyPage {
            keys,
            next: more.then(|| seen.to_string()),
        })
    }

    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        let u = UCloudSettings::from_settings(desired);
        let mut p = Params::new();
        p.insert("KeyId".into(), id.to_string());
        let has = |f: Field| fields.contains(&f);
        if has(Field::DisplayName) {
            u.put_name(&mut p);
        }
        if has(Field::Disabled) || has(Field::Extras) {
            u.put_disabled(&mut p);
        }
        if has(Field::Extras) {
            u.put_sandbox(&mut p);
        }
        if has(Field::LimitAmount) || has(Field::LimitReset) || has(Field::Extras) {
            u.put_limits(&mut p, true);
        }
        if has(Field::Models) || has(Field::Extras) {
            u.put_models(&mut p);
        }
        if has(Field::AllowedIps) {
            u.put_whitelist(&mut p, true);
        }
        if p.len() > 1 {
            self.call("update", Idempotency::Safe, "UpdateUMInferAPIKey", p)
                .await?;
        }
        // The answer holds only the id: read the key back from the listing.
        self.get(scope, id).await
    }

    /// A delete answered with a RetCode keysmith cannot be sure of (anything but the documented
    /// codes, [`retcode::KEY_NOT_FOUND`] included: that number is an assumption) is confirmed
    /// against a listing: the key gone is success, the key still listed is
    /// [`ProviderError::Unconfirmed`]. Throttling and server errors stay what they are.
    async fn revoke(&self, scope: &KeyScope, id: &str) -> Result<(), ProviderError> {
        let mut p = Params::new();
        p.insert("KeyId".into(), id.to_string());
        match self
            .call_coded("revoke", Idempotency::Safe, "DeleteUMInferAPIKey", p)
            .await
        {
            Ok(_) => Ok(()),
            // Server-side codes (from 2000) are confirmed too: a key that is gone is gone
            // whatever the code says, and a listing that fails reports its own error.
            Err((e, Some(code)))
                if !retcode_is_documented(code) || code >= retcode::SERVER_ERROR_FLOOR =>
            {
                if matches!(
                    e,
                    ProviderError::RateLimited { .. } | ProviderError::Auth(_)
                ) {
                    return Err(e);
                }
                tracing::debug!(
                    retcode = code,
                    "delete answered with an unconfirmed RetCode; checking the listing"
                );
                super::confirm_revoked(self, scope, id, &e.to_string()).await
            }
            Err((e, _)) => Err(e),
        }
    }

    fn extras_drift(&self, current: &ProviderKey, desired: &KeySettings) -> bool {
        let u = UCloudSettings::from_settings(desired);
        let e = &current.extras;
        let differs = |key: &str, want: &str| e.get(key).is_some_and(|have| have != want);
        differs(
            extra::DAILY_LIMIT,
            u.daily_limit.as_deref().unwrap_or_default(),
        ) || differs(
            extra::MONTHLY_LIMIT,
            u.monthly_limit.as_deref().unwrap_or_default(),
        ) || u
            .sandbox_disabled
            .is_some_and(|sb| differs(extra::SANDBOX_DISABLED, &sb.to_string()))
            || differs(extra::GRANT_ALL_MODELS, &u.grant_all_models.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keysmith_api::UCloudKeySpec;
    use serde_json::json;

    const DOC_PUBLIC: &str = "ucloudsomeone@example.com1296235120854146120";
    const DOC_PRIVATE: &str = "46f09bb9fab4f12dfc160dae12273d5332b5debe";

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signature_matches_the_official_example() {
        let p = params(&[
            ("Action", "CreateUHostInstance"),
            ("Region", "cn-bj2"),
            ("Zone", "cn-bj2-04"),
            ("ImageId", "f43736e1-65a5-4bea-ad2e-8a46e18883c2"),
            ("CPU", "2"),
            ("Memory", "2048"),
            ("DiskSpace", "10"),
            ("LoginMode", "Password"),
            ("Password", "VUNsb3VkLmNu"),
            ("Name", "Host01"),
            ("ChargeType", "Month"),
            ("Quantity", "1"),
            ("PublicKey", DOC_PUBLIC),
        ]);
        // Byte order: CPU before ChargeType (uppercase sorts first).
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(&names[..3], ["Action", "CPU", "ChargeType"]);
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "4f9ef5df2abab2c6fccd1e9515cb7e2df8c6bb65"
        );
    }

    #[test]
    fn signature_matches_the_second_published_example() {
        let p = params(&[
            ("Action", "DescribeUHostInstance"),
            ("Region", "cn-bj2"),
            ("Limit", "10"),
            ("PublicKey", "someone@example.com1296235120854146120"),
        ]);
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "4201919d267504385deb93af19e0197870fed36b"
        );
    }

    #[test]
    fn signature_matches_the_illustrative_list_example() {
        let mut p = params(&[
            ("Action", "ListUMInferAPIKey"),
            ("ProjectId", "org-abc123"),
            ("Offset", "0"),
            ("Limit", "20"),
            ("PublicKey", DOC_PUBLIC),
        ]);
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "86ccbbc62fe4c95e465f6dfa1fe17b82d1451fbb"
        );
        // A Signature already in the map is not signed.
        p.insert("Signature".into(), "whatever".into());
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "86ccbbc62fe4c95e465f6dfa1fe17b82d1451fbb"
        );
    }

    #[test]
    fn client_signs_every_parameter_including_project() {
        let spec = UCloudProvider {
            public_key: DOC_PUBLIC.into(),
            project_id: Some("org-abc123".into()),
            ..Default::default()
        };
        let mut creds = Credentials::default();
        creds
            .0
            .insert("privateKey".into(), SecretString::from(DOC_PRIVATE));
        let c = UCloudClient::new(&spec, creds, ClientOptions::default()).unwrap();
        let signed = c.signed(
            "ListUMInferAPIKey",
            params(&[("Offset", "0"), ("Limit", "20")]),
        );
        assert_eq!(
            signed["Signature"],
            "86ccbbc62fe4c95e465f6dfa1fe17b82d1451fbb"
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(DOC_PRIVATE), "{dbg}");
    }

    #[test]
    fn values_are_encoded_like_the_sdk() {
        assert_eq!(encode_bool(true), "true");
        assert_eq!(encode_bool(false), "false");
    }

    #[test]
    fn retcodes_map_to_typed_errors() {
        let e = |c, m| retcode_error(c, m, None);
        assert!(matches!(
            e(171, "Signature VerifyAC Error"),
            ProviderError::Auth(_)
        ));
        assert!(matches!(e(172, "User Not Exists"), ProviderError::Auth(_)));
        assert!(matches!(
            e(170, "Missing signature"),
            ProviderError::Auth(_)
        ));
        assert!(matches!(
            e(220, "Missing params [Name]"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            e(230, "Params [X] not available"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            e(240, "Params [X] too large"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(e(1404, "gone"), ProviderError::NotFound(_)));
        assert!(matches!(
            retcode_error(1429, "slow down", Some(Duration::from_secs(3))),
            ProviderError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            e(161, "Action [X] not available"),
            ProviderError::Unsupported(_)
        ));
        assert!(matches!(e(2000, "busy"), ProviderError::Unavailable(_)));
        assert!(matches!(e(5001, "db"), ProviderError::Unavailable(_)));
        // Unknown codes: the message decides, else a rejection.
        assert!(matches!(
            e(8001, "Request too frequent"),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            e(401, "Request too frequent"),
            ProviderError::RateLimited { .. }
        ));
        assert!(matches!(
            e(402, "APIKey [x] does not exist"),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            e(402, "Project not exists"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            e(230, "Params [KeyId] not available"),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(e(403, "quota"), ProviderError::Rejected(_)));
        assert!(e(220, "Missing params [Name]")
            .to_string()
            .contains("RetCode 220"));
    }

    #[test]
    fn whitelist_entries() {
        for ok in [
            "10.0.0.1",
            "192.168.1.10-192.168.1.100",
            "192.168.1.10/24",
            "0.0.0.0/0",
        ] {
            assert!(valid_whitelist_entry(ok), "{ok}");
        }
        for bad in [
            "",
            " 10.0.0.1",
            "10.0.0.300",
            "10.0.0.9-10.0.0.1",
            "10.0.0.0/33",
            "::1",
            "2001:db8::/32",
            "example.com",
            "10.0.0.1\n10.0.0.2",
        ] {
            assert!(!valid_whitelist_entry(bad), "{bad:?}");
        }
        assert_eq!(
            split_whitelist("10.0.0.1\r\n\n 10.0.0.0/8 \n"),
            vec!["10.0.0.1", "10.0.0.0/8"]
        );
    }

    fn settings() -> KeySettings {
        KeySettings {
            name: "team-a/chat".into(),
            ..Default::default()
        }
    }

    #[test]
    fn validate_reports_limits_and_conflicts() {
        let mut s = settings();
        assert!(UCloudClient::problems(&s).is_empty());

        s.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Weekly),
        });
        let p = UCloudClient::problems(&s);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("spec.limit.reset") && p[0].contains("daily"),
            "{p:?}"
        );

        s.limit = Some(Limit {
            amount: "10".into(),
            reset: None,
        });
        assert!(UCloudClient::problems(&s)[0].contains("no lifetime cap"));

        s.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Daily),
        });
        s.ucloud = Some(UCloudKeySpec {
            daily_limit_amount: Some("10.00".into()),
            monthly_limit_amount: Some("200".into()),
            ..Default::default()
        });
        assert!(UCloudClient::problems(&s).is_empty());
        s.ucloud.as_mut().unwrap().daily_limit_amount = Some("12".into());
        let p = UCloudClient::problems(&s);
        assert!(
            p[0].contains("spec.ucloud.dailyLimitAmount") && p[0].contains("different"),
            "{p:?}"
        );

        s.ucloud = Some(UCloudKeySpec {
            monthly_limit_amount: Some("lots".into()),
            modelverse_disabled: Some(true),
            ..Default::default()
        });
        let p = UCloudClient::problems(&s);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("monthlyLimitAmount"));
        assert!(p[1].contains("modelverseDisabled") && p[1].contains("spec.disabled"));
        s.disabled = true;
        s.ucloud.as_mut().unwrap().monthly_limit_amount = None;
        assert!(UCloudClient::problems(&s).is_empty());

        s.limit = Some(Limit {
            amount: "0".into(),
            reset: Some(LimitReset::Monthly),
        });
        assert!(UCloudClient::problems(&s)[0].contains("cap of 0"));
    }

    #[test]
    fn validate_reports_ips_and_models() {
        let mut s = settings();
        s.allowed_ips = vec!["10.0.0.0/8".into(), "2001:db8::1".into()];
        s.models = vec!["deepseek-ai/DeepSeek-V3.2-Think".into(), "all".into()];
        let p = UCloudClient::problems(&s);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("2001:db8::1"));
        assert!(p[1].contains("\"all\""));
        s.allowed_ips = (0..101).map(|i| format!("10.0.0.{}", i % 250)).collect();
        s.models.clear();
        assert!(UCloudClient::problems(&s)[0].contains("at most 100"));
    }

    #[test]
    fn settings_become_parameters() {
        let mut s = settings();
        s.disabled = true;
        s.limit = Some(Limit {
            amount: "7.5".into(),
            reset: Some(LimitReset::Monthly),
        });
        s.ucloud = Some(UCloudKeySpec {
            daily_limit_amount: Some("1.50".into()),
            sandbox_disabled: Some(true),
            ..Default::default()
        });
        s.models = vec!["a/b".into(), "c".into()];
        s.allowed_ips = vec!["10.0.0.1".into(), "10.0.1.0/24".into()];
        let u = UCloudSettings::from_settings(&s);
        let mut p = Params::new();
        u.put_name(&mut p);
        u.put_disabled(&mut p);
        u.put_sandbox(&mut p);
        u.put_limits(&mut p, false);
        u.put_models(&mut p);
        u.put_whitelist(&mut p, false);
        assert_eq!(
            p,
            params(&[
                ("Name", "team-a/chat"),
                ("ModelverseDisabled", "1"),
                ("SandBoxDisabled", "1"),
                ("DailyLimitAmount", "1.5"),
                ("MonthlyLimitAmount", "7.5"),
                ("GrantAllModels", "false"),
                ("GrantedModels", r#"["a/b","c"]"#),
                ("IPWhitelist", "10.0.0.1\n10.0.1.0/24"),
            ])
        );

        // Clearing (update): empty values remove caps and the whitelist; no models = all.
        let u = UCloudSettings::from_settings(&settings());
        let mut p = Params::new();
        u.put_limits(&mut p, true);
        u.put_models(&mut p);
        u.put_whitelist(&mut p, true);
        assert_eq!(
            p,
            params(&[
                ("DailyLimitAmount", ""),
                ("MonthlyLimitAmount", ""),
                ("GrantAllModels", "true"),
                ("IPWhitelist", ""),
            ])
        );
    }

    fn listed() -> Value {
        json!({
            "KeyId": "uminferapikey-abcdef123456",
            "Name": "team-a/chat",
            "Key": "SECRETSECRETSECRETSECRET0123456789",
            "Status": 1,
            "CreateTime": 1_760_000_000,
            "ExpireTime": -1,
            "ModelverseDisabled": 0,
            "SandBoxDisabled": 1,
            "DailyLimitAmount": "10",
            "MonthlyLimitAmount": "0",
            "DailyUsedAmount": "2.5",
            "MonthlyUsedAmount": "40.25",
            "GrantAllModels": false,
            "GrantedModels": ["a/b"],
            "IPWhitelist": "10.0.0.1\n10.0.0.0/8",
            "ChannelId": 126,
            "TopOrganizationId": 1,
            "OrganizationId": 2
        })
    }

    #[test]
    fn a_listed_key_is_observed() {
        let k = provider_key(&listed()).unwrap();
        assert_eq!(k.id, "uminferapikey-abcdef123456");
        assert_eq!(k.name, "team-a/chat");
        assert_eq!(k.hint.as_deref(), Some("SECR…6789"));
        assert_eq!(k.created_at.unwrap().timestamp(), 1_760_000_000);
        assert!(k.active);
        assert_eq!(
            k.secret.as_ref().unwrap().expose_secret(),
            "SECRETSECRETSECRETSECRET0123456789"
        );
        assert_eq!(k.observed.disabled, Some(false));
        assert_eq!(k.observed.expires_at, None);
        assert_eq!(k.expires_at, None, "-1: never");
        assert_eq!(k.observed.limit, None);
        assert_eq!(
            k.observed.allowed_ips,
            Some(vec!["10.0.0.1".to_string(), "10.0.0.0/8".to_string()])
        );
        assert_eq!(k.observed.models, Some(vec!["a/b".to_string()]));
        let u = k.usage.clone().unwrap();
        assert_eq!(u.daily.as_deref(), Some("2.5"));
        assert_eq!(u.monthly.as_deref(), Some("40.25"));
        assert_eq!(u.limit_remaining.as_deref(), Some("7.5"));
        assert_eq!(u.unit.as_deref(), Some("USD"));
        assert_eq!(k.extras.get("dailyLimitAmount").unwrap(), "10");
        assert_eq!(k.extras.get("monthlyLimitAmount").unwrap(), "");
        // Never the secret in Debug output.
        assert!(!format!("{k:?}").contains("SECRETSECRET"));
    }

    #[test]
    fn older_and_odd_shapes_are_read() {
        let mut v = listed();
        v["GrantedModels"] = json!("all");
        v["GrantAllModels"] = Value::Null;
        v["ExpireTime"] = json!(4_102_444_800i64);
        v["DailyUsedAmount"] = json!(1.5);
        v["Status"] = json!(2);
        v["ChannelId"] = json!(1);
        let k = provider_key(&v).unwrap();
        assert_eq!(k.observed.models, Some(vec![]));
        assert_eq!(
            k.expires_at,
            Some(Utc.timestamp_opt(4_102_444_800, 0).unwrap())
        );
        // Reported, never compared (issue 20, item 1): no spec field sets it.
        assert_eq!(k.observed.expires_at, None);
        assert_eq!(k.usage.as_ref().unwrap().daily.as_deref(), Some("1.5"));
        assert_eq!(k.usage.as_ref().unwrap().unit, None);
        // A Status other than 1 (e.g. a disabled key) is not "gone": the key is still listed.
        assert!(k.active);
        assert_eq!(k.extras.get(extra::STATUS).map(String::as_str), Some("2"));
        // An expired key is no longer live.
        let mut expired = v.clone();
        expired["ExpireTime"] = json!(1_000_000_000i64);
        assert!(!provider_key(&expired).unwrap().active);
        v["GrantedModels"] = json!("a/b, c/d");
        v["GrantAllModels"] = json!(0);
        assert_eq!(
            provider_key(&v).unwrap().observed.models,
            Some(vec!["a/b".to_string(), "c/d".to_string()])
        );
        v["ExpireTime"] = json!(1);
        v["Status"] = json!(1);
        assert!(!provider_key(&v).unwrap().active, "expired");
        assert!(matches!(
            provider_key(&json!({"Name": "x"})),
            Err(ProviderError::Malformed(_))
        ));
    }

    #[test]
    fn drift_covers_caps_models_and_the_block() {
        let spec = UCloudProvider {
            public_key: "pk".into(),
            ..Default::default()
        };
        let mut creds = Credentials::default();
        creds
            .0
            .insert("privateKey".into(), SecretString::from("sk"));
        let c = UCloudClient::new(&spec, creds, ClientOptions::default()).unwrap();
        let k = provider_key(&listed()).unwrap();
        let mut d = settings();
        d.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Daily),
        });
        d.models = vec!["a/b".into()];
        d.allowed_ips = vec!["10.0.0.0/8".into(), "10.0.0.1".into()];
        d.ucloud = Some(UCloudKeySpec {
            sandbox_disabled: Some(true),
            ..Default::default()
        });
        assert!(drift(&c, &k, &d).is_empty(), "{:?}", drift(&c, &k, &d));
        // A key with an expiry of UCloud's own (no spec field sets one) is no drift: before,
        // it was a permanent NewKeyNeeded (issue 20, item 1).
        let mut expiring = listed();
        expiring["ExpireTime"] = json!(4_102_444_800i64);
        let ek = provider_key(&expiring).unwrap();
        assert!(ek.expires_at.is_some());
        assert!(drift(&c, &ek, &d).is_empty(), "{:?}", drift(&c, &ek, &d));

        let mut d2 = d.clone();
        d2.limit.as_mut().unwrap().amount = "11".into();
        assert_eq!(drift(&c, &k, &d2), vec![Field::Extras]);
        let mut d2 = d.clone();
        d2.ucloud.as_mut().unwrap().monthly_limit_amount = Some("50".into());
        assert_eq!(drift(&c, &k, &d2), vec![Field::Extras]);
        let mut d2 = d.clone();
        d2.ucloud.as_mut().unwrap().sandbox_disabled = Some(false);
        assert_eq!(drift(&c, &k, &d2), vec![Field::Extras]);
        let mut d2 = d.clone();
        d2.models.clear();
        assert_eq!(drift(&c, &k, &d2), vec![Field::Models, Field::Extras]);
        let mut d2 = d.clone();
        d2.disabled = true;
        d2.name = "renamed".into();
        d2.allowed_ips.pop();
        assert_eq!(
            drift(&c, &k, &d2),
            vec![Field::DisplayName, Field::Disabled, Field::AllowedIps]
        );
    }
}
