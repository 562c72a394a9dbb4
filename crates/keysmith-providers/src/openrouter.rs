//! OpenRouter key management API (`/api/v1/keys`, `/api/v1/key`).
//!
//! Reference: `providers/openrouter.md` (the OpenAPI description vendored in
//! `OpenRouterTeam/go-sdk`). In short:
//!
//! | operation | call | answer |
//! |---|---|---|
//! | verify | `GET /key` (the management key itself) | `data.is_management_key` must be true |
//! | create | `POST /keys` | **201** `{data: <key>, key: "sk-or-v1-…"}`, the only time the plaintext is shown |
//! | list | `GET /keys?offset=N&include_disabled=true[&workspace_id=]` | `{data: [<key>…]}`, newest first, 100 a page, no cursor |
//! | get | `GET /keys/{hash}` | `{data: <key>}` |
//! | update | `PATCH /keys/{hash}` with the changed fields only | `{data: <key>}` |
//! | revoke | `DELETE /keys/{hash}` | `{"deleted": true}` |
//!
//! Every call carries the management key as `Authorization: Bearer`. Errors come as
//! `{"error": {"code": <status>, "message": "…"}}`. There is no regenerate call, no last-used time
//! and no free-text field, so crash recovery recognises a key by its name and `created_at` only.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::http::{self, HttpClient, HttpResponse, Idempotency};
use super::*;
use keysmith_api::{LastUsedSource, OpenRouterProvider, UsageAmounts};

/// The only server in OpenRouter's API description.
pub const DEFAULT_BASE_URL: &str = OpenRouterProvider::DEFAULT_BASE_URL;

/// `ProviderKey.extras` key of the `include_byok_in_limit` flag.
pub const EXTRA_INCLUDE_BYOK: &str = "includeByokInLimit";
/// `ProviderKey.extras` key of the key's `workspace_id` (fixed at creation).
pub const EXTRA_WORKSPACE: &str = "workspaceID";

const SUPPORTED: &[Field] = &[
    Field::DisplayName,
    Field::Disabled,
    Field::ExpiresAt,
    Field::Ttl,
    Field::LimitAmount,
    Field::LimitReset,
    Field::Extras,
];

/// `PATCH /keys/{hash}` takes `name`, `disabled`, `limit`, `limit_reset` and
/// `include_byok_in_limit`; `expires_at` and the workspace are fixed at creation.
const MUTABLE: &[Field] = &[
    Field::DisplayName,
    Field::Disabled,
    Field::LimitAmount,
    Field::LimitReset,
    Field::Extras,
];

/// Client of one OpenRouter account (one management key, optionally one workspace).
pub struct OpenRouterClient {
    caps: Capabilities,
    http: HttpClient,
    management_key: SecretString,
    workspace_id: Option<String>,
}

impl std::fmt::Debug for OpenRouterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRouterClient")
            .field("base_url", &self.http.base_url())
            .field("workspace_id", &self.workspace_id)
            .field("management_key", &"[REDACTED]")
            .finish()
    }
}

impl OpenRouterClient {
    pub fn new(
        spec: &OpenRouterProvider,
        creds: Credentials,
        opts: ClientOptions,
    ) -> Result<Self, String> {
        let management_key = creds.get("token")?.clone();
        if management_key.expose_secret().trim().is_empty() {
            return Err("the OpenRouter management key is empty".into());
        }
        let workspace_id = match spec.workspace_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(w) => {
                uuid::Uuid::parse_str(w).map_err(|_| {
                    format!("openrouter.workspaceID {w:?} is not a UUID (OpenRouter workspace ids look like 0df9e665-d932-5740-b2c7-b52af166bc11)")
                })?;
                Some(w.to_string())
            }
        };
        let http = HttpClient::new(ProviderType::OpenRouter, DEFAULT_BASE_URL, opts)?;
        Ok(OpenRouterClient {
            caps: Capabilities {
                mint: true,
                // The plaintext is shown once, at creation, and there is no regenerate call.
                adopt: AdoptMode::No,
                push: false,
                supported: SUPPORTED,
                mutable: MUTABLE,
                secret_readable: false,
                rotation: RotationStrategy::MINT,
            },
            http,
            management_key,
            workspace_id,
        })
    }

    /// The body of `POST /keys` for these settings. `disabled` is not part of it: OpenRouter
    /// creates every key enabled (see [`KeyBackend::create`]).
    pub fn create_body(&self, settings: &KeySettings) -> Result<Value, ProviderError> {
        let mut body = Map::new();
        body.insert("name".into(), json!(settings.name));
        if let Some(limit) = &settings.limit {
            body.insert("limit".into(), json!(limit_to_f64(&limit.amount)?));
            if let Some(reset) = limit_reset_value(limit.reset) {
                body.insert("limit_reset".into(), json!(reset));
            }
        }
        if let Some(b) = include_byok(settings) {
            body.insert("include_byok_in_limit".into(), json!(b));
        }
        if let Some(at) = settings.expires_at {
            body.insert("expires_at".into(), json!(format_utc(at)));
        }
        if let Some(w) = &self.workspace_id {
            body.insert("workspace_id".into(), json!(w));
        }
        Ok(Value::Object(body))
    }

    /// OpenRouter's side of [`HttpClient::call_json`]: the management key as
    /// `Authorization: Bearer`, errors from its `{"error": {…}}` envelope.
    async fn call(
        &self,
        operation: &'static str,
        idempotency: Idempotency,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<HttpResponse, ProviderError> {
        let api = http::Api {
            headers: vec![(
                AUTHORIZATION,
                http::sensitive_header(&format!(
                    "Bearer {}",
                    self.management_key.expose_secret().trim()
                ))?,
            )],
            error: &error_from_response,
        };
        let call = http::Call::new(operation, idempotency, &method, path)
            .query(query)
            .json(body);
        self.http.call_json(call, &api).await
    }

    async fn patch(&self, id: &str, body: &Value) -> Result<ProviderKey, ProviderError> {
        let path = key_path(id)?;
        let resp = self
            .call(
                "update",
                Idempotency::Safe,
                Method::PATCH,
                &path,
                &[],
                Some(body),
            )
            .await?;
        let env: DataEnvelope<KeyObject> = decode(&resp)?;
        Ok(env.data.into_provider_key())
    }
}

#[async_trait]
impl KeyBackend for OpenRouterClient {
    fn http(&self) -> Option<&HttpClient> {
        Some(&self.http)
    }
    fn last_use(&self, _key: &ProviderKey) -> LastUsedSource {
        // No `last_used_at`; every key reports its usage (credits, total and per period).
        LastUsedSource::UsageDelta
    }
    fn provider(&self) -> ProviderType {
        ProviderType::OpenRouter
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn validate(&self, settings: &KeySettings) -> Vec<String> {
        let mut problems = Vec::new();
        if settings.name.trim().is_empty() {
            problems.push("spec.displayName: OpenRouter needs a non-empty key name".to_string());
        }
        if let Some(limit) = &settings.limit {
            if let Err(e) = check_limit_amount(&limit.amount) {
                problems.push(e);
            }
        }
        problems
    }

    async fn verify(&self) -> Result<(), ProviderError> {
        self.verify_credentials().await.map(|_| ())
    }

    /// `GET /key` answers for the management key itself: whether it is one, and its
    /// `expires_at` (null: never; absent or unreadable: not exposed).
    async fn verify_credentials(&self) -> Result<CredentialsExpiry, ProviderError> {
        let resp = self
            .call("verify", Idempotency::Safe, Method::GET, "/key", &[], None)
            .await?;
        let env: DataEnvelope<CurrentKey> = decode(&resp)?;
        let expiry = match &env.data.expires_at {
            None => CredentialsExpiry::NotExposed,
            Some(None) => CredentialsExpiry::Never,
            Some(Some(t)) => {
                parse_time(t).map_or(CredentialsExpiry::NotExposed, CredentialsExpiry::At)
            }
        };
        match env.data.is_management_key.or(env.data.is_provisioning_key) {
            Some(true) => Ok(expiry),
            Some(false) => Err(ProviderError::Auth(
                "the configured key is a normal OpenRouter API key, not a management key: create a management key in the OpenRouter settings (Management Keys) and put it in the Secret".into(),
            )),
            None => Err(ProviderError::Malformed(
                "GET /key did not say whether the key is a management key".into(),
            )),
        }
    }

    /// `POST /keys`. OpenRouter creates every key enabled; when `disabled` is desired the key is
    /// disabled with a `PATCH` right after. If that `PATCH` fails, the key is returned anyway
    /// (its plaintext must reach the Secret) with `observed.disabled = Some(false)`, so the
    /// controller's drift check disables it on the next reconcile.
    async fn create(&self, settings: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let body = self.create_body(settings)?;
        let resp = self
            .call(
                "create",
                Idempotency::Unsafe,
                Method::POST,
                "/keys",
                &[],
                Some(&body),
            )
            .await?;
        let created: CreatedEnvelope = decode(&resp)?;
        let secret = SecretString::from(created.key);
        let mut key = created.data.into_provider_key();
        if settings.disabled && key.observed.disabled != Some(true) {
            match self.patch(&key.id, &json!({ "disabled": true })).await {
                Ok(k) => key = k,
                Err(e) => {
                    tracing::warn!(key_id = %key.id, error = %e, "created the OpenRouter key but could not disable it yet; the next sync retries");
                }
            }
        }
        Ok(CreatedKey { key, secret })
    }

    async fn list_page(
        &self,
        _scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        let offset: usize = match cursor {
            None => 0,
            Some(c) => c.parse().map_err(|_| {
                ProviderError::Rejected(format!(
                    "{c:?} is not an OpenRouter list offset (a page cursor is a number)"
                ))
            })?,
        };
        // Disabled keys are hidden unless asked for; the controller must see every key it owns.
        let mut query = vec![
            ("include_disabled", "true".to_string()),
            ("offset", offset.to_string()),
        ];
        if let Some(w) = &self.workspace_id {
            query.push(("workspace_id", w.clone()));
        }
        let resp = self
            .call(
                "list",
                Idempotency::Safe,
                Method::GET,
                "/keys",
                &query,
                None,
            )
            .await?;
        let env: DataEnvelope<Vec<KeyObject>> = decode(&resp)?;
        let n = env.data.len();
        Ok(KeyPage {
            keys: env
                .data
                .into_iter()
                .map(KeyObject::into_provider_key)
                .collect(),
            // OpenRouter does not document its page size: a short page is not the last, an
            // empty one is (crash recovery reads this listing; a key missed is a key leaked).
            next: (n > 0).then(|| (offset + n).to_string()),
        })
    }

    async fn get(&self, _scope: &KeyScope, id: &str) -> Result<ProviderKey, ProviderError> {
        let path = key_path(id)?;
        let resp = self
            .call("get", Idempotency::Safe, Method::GET, &path, &[], None)
            .await?;
        let env: DataEnvelope<KeyObject> = decode(&resp)?;
        Ok(env.data.into_provider_key())
    }

    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        let body = update_body(desired, fields)?;
        if body.as_object().is_some_and(Map::is_empty) {
            return self.get(scope, id).await;
        }
        self.patch(id, &body).await
    }

    async fn revoke(&self, _scope: &KeyScope, id: &str) -> Result<(), ProviderError> {
        let path = key_path(id)?;
        self.call(
            "revoke",
            Idempotency::Safe,
            Method::DELETE,
            &path,
            &[],
            None,
        )
        .await?;
        Ok(())
    }

    /// The key's `workspace_id` is not the provider object's `workspaceID` (OpenRouter cannot
    /// move a key: a new key is needed). Without a `workspaceID` keys go to the account's
    /// default workspace, whose id the API does not tell: nothing to compare.
    fn workspace_drift(&self, current: &ProviderKey) -> bool {
        match (&self.workspace_id, current.extras.get(EXTRA_WORKSPACE)) {
            (Some(want), Some(have)) => !want.eq_ignore_ascii_case(have.trim()),
            _ => false,
        }
    }

    /// `include_byok_in_limit` differs from the ApiKey's `openrouter.includeByokInLimit` (when
    /// the ApiKey sets it; unset means "whatever the key has").
    fn extras_drift(&self, current: &ProviderKey, desired: &KeySettings) -> bool {
        match include_byok(desired) {
            None => false,
            Some(want) => current
                .extras
                .get(EXTRA_INCLUDE_BYOK)
                .is_some_and(|have| have != if want { "true" } else { "false" }),
        }
    }
}

/// The body of `PATCH /keys/{hash}` that sets `fields` to their desired values, and nothing else.
pub fn update_body(desired: &KeySettings, fields: &[Field]) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    for f in fields {
        match f {
            Field::DisplayName => {
                body.insert("name".into(), json!(desired.name));
            }
            Field::Disabled => {
                body.insert("disabled".into(), json!(desired.disabled));
            }
            Field::LimitAmount => {
                let v = match &desired.limit {
                    Some(l) => json!(limit_to_f64(&l.amount)?),
                    None => Value::Null,
                };
                body.insert("limit".into(), v);
            }
            Field::LimitReset => {
                let v = limit_reset_value(desired.limit.as_ref().and_then(|l| l.reset));
                body.insert("limit_reset".into(), json!(v));
            }
            Field::Extras => {
                // Unset in the ApiKey: leave the key's current setting alone.
                if let Some(b) = include_byok(desired) {
                    body.insert("include_byok_in_limit".into(), json!(b));
                }
            }
            other => {
                return Err(ProviderError::Unsupported(format!(
                    "{} cannot be changed on an existing OpenRouter key",
                    other.path()
                )))
            }
        }
    }
    Ok(Value::Object(body))
}

fn include_byok(settings: &KeySettings) -> Option<bool> {
    settings
        .openrouter
        .as_ref()
        .and_then(|o| o.include_byok_in_limit)
}

/// OpenRouter's `limit_reset`: `daily|weekly|monthly`, or null for a limit that never resets.
fn limit_reset_value(reset: Option<LimitReset>) -> Option<&'static str> {
    match reset {
        Some(LimitReset::Daily) => Some("daily"),
        Some(LimitReset::Weekly) => Some("weekly"),
        Some(LimitReset::Monthly) => Some("monthly"),
        Some(LimitReset::Never) | None => None,
    }
}

fn parse_limit_reset(s: Option<&str>) -> Option<LimitReset> {
    match s? {
        "daily" => Some(LimitReset::Daily),
        "weekly" => Some(LimitReset::Weekly),
        "monthly" => Some(LimitReset::Monthly),
        _ => None,
    }
}

/// OpenRouter stores limits as JSON doubles and keysmith reads them back with
/// [`decimal_from_f64`] (6 decimal places): an amount that does not survive that round trip
/// would look changed on every sync.
fn check_limit_amount(amount: &str) -> Result<f64, String> {
    let v: f64 = amount
        .parse()
        .map_err(|_| format!("spec.limit.amount {amount:?} is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "spec.limit.amount {amount:?} must be a non-negative number"
        ));
    }
    if decimal_from_f64(v) != normalize_decimal(amount).unwrap_or_default() {
        return Err(format!(
            "spec.limit.amount {amount:?} cannot be stored exactly by OpenRouter (USD as a double): use at most 6 decimal places and 15 significant digits"
        ));
    }
    Ok(v)
}

fn limit_to_f64(amount: &str) -> Result<f64, ProviderError> {
    check_limit_amount(amount).map_err(ProviderError::Rejected)
}

/// `expires_at` must be UTC: OpenRouter rejects other offsets.
pub fn format_utc(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `/keys/{hash}`. A hash is hex; anything that could change the path is refused before a call.
fn key_path(id: &str) -> Result<String, ProviderError> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ProviderError::Rejected(format!(
            "{:?} is not an OpenRouter key hash",
            http::snippet(id)
        )));
    }
    Ok(format!("/keys/{id}"))
}

/// Decode a 2xx body. Serde's own message is left out: it can quote values from the body, and a
/// create answer holds the plaintext.
fn decode<T: serde::de::DeserializeOwned>(resp: &HttpResponse) -> Result<T, ProviderError> {
    serde_json::from_slice(&resp.body).map_err(|e| {
        ProviderError::Malformed(format!(
            "HTTP {} body is not the expected JSON ({:?} error at line {} column {})",
            resp.status.as_u16(),
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// Map a non-2xx answer to a typed error, with OpenRouter's own message.
pub fn error_from_response(resp: &HttpResponse) -> ProviderError {
    #[derive(Deserialize)]
    struct Envelope {
        error: ErrorBody,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    let status = resp.status.as_u16();
    let message = match serde_json::from_slice::<Envelope>(&resp.body) {
        Ok(Envelope {
            error: ErrorBody { message: Some(m) },
        }) => format!("HTTP {status}: {}", http::snippet(&m)),
        _ => {
            let text = resp.text_snippet();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }
        }
    };
    match status {
        401 | 403 => ProviderError::Auth(message),
        404 => ProviderError::NotFound(message),
        410 => ProviderError::Unsupported(message),
        429 => ProviderError::RateLimited {
            retry_after: http::rate_limit_wait(&resp.headers),
        },
        500..=599 => ProviderError::Unavailable(message),
        _ => ProviderError::Rejected(message),
    }
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct CreatedEnvelope {
    data: KeyObject,
    key: String,
}

/// `GET /key`: the calling key.
#[derive(Deserialize)]
struct CurrentKey {
    #[serde(default)]
    is_management_key: Option<bool>,
    #[serde(default)]
    is_provisioning_key: Option<bool>,
    /// Null: never expires; absent: not reported.
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
}

/// A key as OpenRouter describes it (list, get, create, update). Only what keysmith reads;
/// lenient where a missing value only means "not reported".
#[derive(Deserialize, Debug, Clone, Default)]
pub struct KeyObject {
    pub hash: String,
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub limit: Option<f64>,
    #[serde(default)]
    pub limit_remaining: Option<f64>,
    #[serde(default)]
    pub limit_reset: Option<String>,
    #[serde(default)]
    pub include_byok_in_limit: Option<bool>,
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default)]
    pub usage: Option<f64>,
    #[serde(default)]
    pub usage_daily: Option<f64>,
    #[serde(default)]
    pub usage_weekly: Option<f64>,
    #[serde(default)]
    pub usage_monthly: Option<f64>,
    #[serde(default)]
    pub byok_usage: Option<f64>,
    #[serde(default)]
    pub byok_usage_daily: Option<f64>,
    #[serde(default)]
    pub byok_usage_weekly: Option<f64>,
    #[serde(default)]
    pub byok_usage_monthly: Option<f64>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Present and null for "never expires"; absent in older answers (then: not reported).
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
}

/// Tell an absent field (`None`) from an explicit null (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl KeyObject {
    pub fn into_provider_key(self) -> ProviderKey {
        let expires_at = match &self.expires_at {
            None => None,
            Some(None) => Some(None),
            // An unreadable time is "not reported", not "never expires".
            Some(Some(s)) => parse_time(s).map(Some),
        };
        let limit = Some(self.limit.map(|amount| Limit {
            amount: decimal_from_f64(amount),
            reset: parse_limit_reset(self.limit_reset.as_deref()),
        }));
        let usage = Usage {
            total: self.usage.map(decimal_from_f64),
            daily: self.usage_daily.map(decimal_from_f64),
            weekly: self.usage_weekly.map(decimal_from_f64),
            monthly: self.usage_monthly.map(decimal_from_f64),
            limit_remaining: self.limit_remaining.map(decimal_from_f64),
            unit: Some("USD".into()),
            byok: {
                let byok = UsageAmounts {
                    total: self.byok_usage.map(decimal_from_f64),
                    daily: self.byok_usage_daily.map(decimal_from_f64),
                    weekly: self.byok_usage_weekly.map(decimal_from_f64),
                    monthly: self.byok_usage_monthly.map(decimal_from_f64),
                };
                (byok != UsageAmounts::default()).then(|| Box::new(byok))
            },
            // Calendar periods (UTC), as documented; nothing to report per key.
            resets_at: None,
        };
        let mut extras = Extras::new();
        if let Some(b) = self.include_byok_in_limit {
            extras.insert(EXTRA_INCLUDE_BYOK.to_string(), b.to_string());
        }
        // A UUID (36 characters); anything longer is not one and is not kept.
        if let Some(w) = self.workspace_id.as_deref().filter(|w| w.len() <= 64) {
            extras.insert(EXTRA_WORKSPACE.to_string(), w.to_string());
        }
        ProviderKey {
            hint: self.label.as_deref().and_then(hint_from_label),
            expires_at: expires_at.flatten(),
            created_at: self.created_at.as_deref().and_then(parse_time),
            last_used_at: None,
            usage: Some(usage),
            // OpenRouter deletes keys outright: a listed key is a live key (maybe disabled).
            active: true,
            observed: ObservedSettings {
                disabled: self.disabled,
                expires_at,
                limit,
                allowed_ips: None,
                models: None,
            },
            attempt: None,
            secret: None,
            extras,
            id: self.hash,
            name: self.name,
        }
    }
}

/// OpenRouter's `label` is either the masked key (`sk-or-v1-0e6...1c96`) or a plain label. Only
/// the masked form is a useful hint, and only a string with an ellipsis is surely not the key.
fn hint_from_label(label: &str) -> Option<String> {
    (label.contains("...") || label.contains('…')).then(|| label.to_string())
}

/// OpenRouter's timestamps are ISO 8601; accept RFC 3339 and the common variants without an
/// offset (UTC) or with a space for the `T`.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let t = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&t) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(&t, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keysmith_api::{OpenRouterKeySpec, SecretKeySelector};

    fn client(workspace: Option<&str>) -> Result<OpenRouterClient, String> {
        let spec = OpenRouterProvider {
            base_url: Some("http://127.0.0.1:1/api/v1".into()),
            management_key_secret_ref: SecretKeySelector {
                name: "m".into(),
                key: "token".into(),
                namespace: None,
            },
            workspace_id: workspace.map(String::from),
        };
        let mut creds = BTreeMap::new();
        creds.insert("token".to_string(), SecretString::from("sk-or-v1-mgmt"));
        OpenRouterClient::new(&spec, Credentials(creds), ClientOptions::default())
    }

    fn settings() -> KeySettings {
        KeySettings {
            name: "team-a/chat".into(),
            ..Default::default()
        }
    }

    #[test]
    fn new_checks_credentials_and_workspace() {
        assert!(client(None).is_ok());
        assert!(client(Some("0df9e665-d932-5740-b2c7-b52af166bc11")).is_ok());
        let err = client(Some("default")).unwrap_err();
        assert!(err.contains("workspaceID"), "{err}");
        let spec = OpenRouterProvider::default();
        let err = OpenRouterClient::new(&spec, Credentials::default(), ClientOptions::default())
            .unwrap_err();
        assert!(err.contains("token"), "{err}");
        let c = client(None).unwrap();
        assert!(!format!("{c:?}").contains("sk-or-v1-mgmt"));
    }

    #[test]
    fn create_body_maps_settings() {
        let c = client(Some("0df9e665-d932-5740-b2c7-b52af166bc11")).unwrap();
        assert_eq!(
            c.create_body(&settings()).unwrap(),
            json!({"name": "team-a/chat", "workspace_id": "0df9e665-d932-5740-b2c7-b52af166bc11"})
        );
        let mut s = settings();
        s.disabled = true;
        s.expires_at = Some(
            DateTime::parse_from_rfc3339("2027-01-01T01:00:00+01:00")
                .unwrap()
                .with_timezone(&Utc),
        );
        s.limit = Some(Limit {
            amount: "12.5".into(),
            reset: Some(LimitReset::Monthly),
        });
        s.openrouter = Some(OpenRouterKeySpec {
            include_byok_in_limit: Some(true),
        });
        let c = client(None).unwrap();
        assert_eq!(
            c.create_body(&s).unwrap(),
            json!({
                "name": "team-a/chat",
                "limit": 12.5,
                "limit_reset": "monthly",
                "include_byok_in_limit": true,
                "expires_at": "2027-01-01T00:00:00Z",
            })
        );
        s.limit = Some(Limit {
            amount: "5".into(),
            reset: Some(LimitReset::Never),
        });
        let body = c.create_body(&s).unwrap();
        assert_eq!(body["limit"], json!(5.0));
        assert!(body.get("limit_reset").is_none());
    }

    #[test]
    fn update_body_sends_only_requested_fields() {
        let mut s = settings();
        s.disabled = true;
        s.limit = Some(Limit {
            amount: "75".into(),
            reset: Some(LimitReset::Daily),
        });
        assert_eq!(
            update_body(&s, &[Field::Disabled]).unwrap(),
            json!({"disabled": true})
        );
        assert_eq!(
            update_body(
                &s,
                &[Field::DisplayName, Field::LimitAmount, Field::LimitReset]
            )
            .unwrap(),
            json!({"name": "team-a/chat", "limit": 75.0, "limit_reset": "daily"})
        );
        s.limit = None;
        assert_eq!(
            update_body(&s, &[Field::LimitAmount, Field::LimitReset]).unwrap(),
            json!({"limit": null, "limit_reset": null})
        );
        assert_eq!(update_body(&s, &[Field::Extras]).unwrap(), json!({}));
        s.openrouter = Some(OpenRouterKeySpec {
            include_byok_in_limit: Some(false),
        });
        assert_eq!(
            update_body(&s, &[Field::Extras]).unwrap(),
            json!({"include_byok_in_limit": false})
        );
        for f in [Field::ExpiresAt, Field::AllowedIps, Field::Models] {
            assert!(matches!(
                update_body(&s, &[f]),
                Err(ProviderError::Unsupported(_))
            ));
        }
    }

    #[test]
    fn key_object_maps_to_observed_settings() {
        let obj: KeyObject = serde_json::from_value(json!({
            "hash": "f01d", "name": "n", "label": "sk-or-v1-0e6...1c96", "disabled": true,
            "limit": 100, "limit_remaining": 74.5, "limit_reset": "monthly",
            "include_byok_in_limit": false, "usage": 25.5, "usage_daily": 0.1,
            "usage_weekly": 1, "usage_monthly": 25.5, "created_at": "2025-08-24T10:30:00Z",
            "updated_at": null, "expires_at": "2027-12-31T23:59:59Z"
        }))
        .unwrap();
        let k = obj.into_provider_key();
        assert_eq!(k.id, "f01d");
        assert_eq!(k.hint.as_deref(), Some("sk-or-v1-0e6...1c96"));
        assert_eq!(k.observed.disabled, Some(true));
        assert_eq!(
            k.observed.limit,
            Some(Some(Limit {
                amount: "100".into(),
                reset: Some(LimitReset::Monthly)
            }))
        );
        assert_eq!(
            k.observed.expires_at,
            Some(Some(
                DateTime::parse_from_rfc3339("2027-12-31T23:59:59Z")
                    .unwrap()
                    .with_timezone(&Utc)
            ))
        );
        let u = k.usage.unwrap();
        assert_eq!(u.total.as_deref(), Some("25.5"));
        assert_eq!(u.daily.as_deref(), Some("0.1"));
        assert_eq!(u.weekly.as_deref(), Some("1"));
        assert_eq!(u.limit_remaining.as_deref(), Some("74.5"));
        assert_eq!(u.unit.as_deref(), Some("USD"));
        assert_eq!(
            k.extras.get(EXTRA_INCLUDE_BYOK).map(String::as_str),
            Some("false")
        );
        assert!(k.created_at.is_some());
        assert!(k.last_used_at.is_none());

        // A plain label is no hint; a null expiry is "never"; no limit is Some(None).
        let k: KeyObject = serde_json::from_value(json!({
            "hash": "a", "name": "n", "label": "My Key", "limit": null, "limit_reset": null,
            "expires_at": null
        }))
        .unwrap();
        let k = k.into_provider_key();
        assert_eq!(k.hint, None);
        assert_eq!(k.observed.expires_at, Some(None));
        assert_eq!(k.observed.limit, Some(None));
        // An absent expiry is not reported.
        let k: KeyObject = serde_json::from_value(json!({"hash": "a", "name": "n"})).unwrap();
        assert_eq!(k.into_provider_key().observed.expires_at, None);
    }

    #[test]
    fn drift_covers_extras_and_limits() {
        let c = client(None).unwrap();
        let obj: KeyObject = serde_json::from_value(json!({
            "hash": "a", "name": "team-a/chat", "disabled": false, "limit": 10,
            "limit_reset": null, "include_byok_in_limit": true, "expires_at": null
        }))
        .unwrap();
        let key = obj.into_provider_key();
        let mut s = settings();
        s.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Never),
        });
        assert!(drift(&c, &key, &s).is_empty());
        s.openrouter = Some(OpenRouterKeySpec {
            include_byok_in_limit: Some(false),
        });
        assert_eq!(drift(&c, &key, &s), vec![Field::Extras]);
        s.openrouter = None;
        s.limit = Some(Limit {
            amount: "10.5".into(),
            reset: Some(LimitReset::Weekly),
        });
        assert_eq!(
            drift(&c, &key, &s),
            vec![Field::LimitAmount, Field::LimitReset]
        );
    }

    #[test]
    fn validate_limits() {
        let c = client(None).unwrap();
        let mut s = settings();
        assert!(c.validate(&s).is_empty());
        for ok in ["75", "12.50", "0.000001", "123456789.123456"] {
            s.limit = Some(Limit {
                amount: ok.into(),
                reset: None,
            });
            assert!(c.validate(&s).is_empty(), "{ok}: {:?}", c.validate(&s));
        }
        for bad in ["0.0000001", "12345678901234567890"] {
            s.limit = Some(Limit {
                amount: bad.into(),
                reset: None,
            });
            let p = c.validate(&s);
            assert_eq!(p.len(), 1, "{bad}");
            assert!(p[0].contains("spec.limit.amount"));
        }
        s.limit = None;
        s.name = " ".into();
        assert_eq!(c.validate(&s).len(), 1);
    }

    #[test]
    fn times_and_paths() {
        let t = parse_time("2025-08-24T10:30:00Z").unwrap();
        assert_eq!(parse_time("2025-08-24 10:30:00+00"), Some(t));
        assert_eq!(parse_time("2025-08-24T10:30:00"), Some(t));
        assert_eq!(parse_time("2025-08-24T12:30:00+02:00"), Some(t));
        assert_eq!(
            parse_time("2025-08-24T10:30:00.250Z"),
            Some(t + chrono::Duration::milliseconds(250))
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(format_utc(t), "2025-08-24T10:30:00Z");
        assert_eq!(key_path("f01d").unwrap(), "/keys/f01d");
        assert!(key_path("../key").is_err());
        assert!(key_path("").is_err());
    }

    #[test]
    fn errors_map_by_status() {
        let resp = |status: u16, body: &str| HttpResponse {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: bytes::Bytes::from(body.to_string()),
        };
        let env = |code: u16, msg: &str| {
            json!({"error": {"code": code, "message": msg}, "user_id": null}).to_string()
        };
        assert_eq!(
            error_from_response(&resp(401, &env(401, "Missing Authentication header"))),
            ProviderError::Auth("HTTP 401: Missing Authentication header".into())
        );
        assert!(matches!(
            error_from_response(&resp(403, &env(403, "x"))),
            ProviderError::Auth(_)
        ));
        assert!(matches!(
            error_from_response(&resp(400, &env(400, "x"))),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            error_from_response(&resp(409, "")),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            error_from_response(&resp(404, &env(404, "Resource not found"))),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            error_from_response(&resp(410, "gone")),
            ProviderError::Unsupported(_)
        ));
        assert_eq!(
            error_from_response(&resp(429, &env(429, "Rate limit exceeded"))),
            ProviderError::RateLimited { retry_after: None }
        );
        assert_eq!(
            error_from_response(&resp(502, "<html>bad gateway</html>")),
            ProviderError::Unavailable("HTTP 502: a non-JSON body of 24 bytes, not shown".into())
        );
    }
}
