//! Boltz compute API: workspace keys minted with an admin key.
//!
//! | operation | call |
//! |---|---|
//! | verify | `GET /compute/v1/auth/me` (must report `key_type: "admin"`) |
//! | create | `POST /compute/v1/admin/api-keys` → `{key, key_details}` (the only time `key` is shown) |
//! | list | `GET /compute/v1/admin/api-keys?limit=&after_id=&workspace_id=` (cursor page) |
//! | revoke | `POST /compute/v1/admin/api-keys/{api_key_id}/revoke` (no body) |
//!
//! The admin key goes in the `x-api-key` header. Boltz has no get-one and no update call: keys
//! are immutable after creation (a change needs a new key), and a key is found by filtering the
//! list. Revoked keys stay listed with `is_active: false`.
//!
//! Boltz does not document its error body; the client reads `{"error": {"type", "message"}}`,
//! `{"error": "..."}`, `{"message": "..."}` and `{"detail": ...}` and otherwise quotes the raw
//! body (cut short).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{self, HttpClient, HttpResponse, Idempotency};
use super::*;
use keysmith_api::{BoltzMode, BoltzProvider, LastUsedSource};

/// Default base URL (the SDK's production environment).
pub const DEFAULT_BASE_URL: &str = BoltzProvider::DEFAULT_BASE_URL;
/// Largest page the list endpoint serves (`limit` 1–100).
pub const MAX_PAGE_SIZE: usize = 100;

const KEYS_PATH: &str = "/compute/v1/admin/api-keys";
const ME_PATH: &str = "/compute/v1/auth/me";

/// `extras` entry: the workspace a key belongs to.
pub const EXTRA_WORKSPACE: &str = "workspace_id";
/// `extras` entry: `live` or `test` (from the key's `livemode`).
pub const EXTRA_MODE: &str = "mode";

const SUPPORTED: &[Field] = &[
    Field::DisplayName,
    Field::ExpiresAt,
    Field::Ttl,
    Field::AllowedIps,
    Field::Extras,
];

/// A Boltz organisation reached with an admin API key.
pub struct BoltzClient {
    http: HttpClient,
    token: SecretString,
    workspace_id: Option<String>,
    caps: Capabilities,
}

impl std::fmt::Debug for BoltzClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoltzClient")
            .field("base_url", &self.http.base_url())
            .field("workspace_id", &self.workspace_id)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl BoltzClient {
    /// A client for the organisation of the admin key in credential role `token`.
    pub fn new(
        spec: &BoltzProvider,
        creds: Credentials,
        opts: ClientOptions,
    ) -> Result<Self, String> {
        let token = creds.get("token")?.expose_secret().trim().to_string();
        if token.is_empty() {
            return Err("credential \"token\" (the Boltz admin API key) is empty".into());
        }
        let workspace_id = spec
            .workspace_id
            .as_deref()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string);
        let http = HttpClient::new(ProviderType::Boltz, DEFAULT_BASE_URL, opts)?;
        Ok(BoltzClient {
            http,
            token: SecretString::from(token),
            workspace_id,
            caps: Capabilities {
                mint: true,
                adopt: AdoptMode::No,
                push: false,
                supported: SUPPORTED,
                mutable: &[],
                secret_readable: false,
                rotation: RotationStrategy::MINT,
            },
        })
    }

    /// The workspace a key with these settings lives in: the ApiKey's `boltz.workspaceID`, else
    /// the provider's `workspaceID`, else `None` (the organisation's default workspace).
    pub fn workspace_for(&self, settings: &KeySettings) -> Option<String> {
        settings
            .boltz
            .as_ref()
            .and_then(|b| b.workspace_id.as_deref())
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .or_else(|| self.workspace_id.clone())
    }

    fn auth_header(&self) -> Result<reqwest::header::HeaderValue, ProviderError> {
        http::sensitive_header(self.token.expose_secret())
    }

    /// Boltz's side of [`HttpClient::call_json`]: the token as `x-api-key`, errors from its
    /// error body.
    async fn call(
        &self,
        operation: &'static str,
        idempotency: Idempotency,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<HttpResponse, ProviderError> {
        let api = http::Api {
            headers: vec![
                (
                    reqwest::header::HeaderName::from_static("x-api-key"),
                    self.auth_header()?,
                ),
                (
                    reqwest::header::ACCEPT,
                    reqwest::header::HeaderValue::from_static("application/json"),
                ),
            ],
            error: &error_from,
        };
        let call = http::Call::new(operation, idempotency, &method, path)
            .query(query)
            .json(body);
        self.http.call_json(call, &api).await
    }
}

/// A key as the list, revoke and create calls describe it.
#[derive(Debug, Deserialize)]
struct BoltzKey {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default = "yes")]
    is_active: bool,
    #[serde(default)]
    key_prefix: Option<String>,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    last_used_at: Option<DateTime<Utc>>,
    #[serde(default = "yes")]
    livemode: bool,
    #[serde(default)]
    workspace_id: Option<String>,
}

fn yes() -> bool {
    true
}

impl BoltzKey {
    fn is_admin(&self) -> bool {
        self.key_type.as_deref() == Some("admin")
    }

    fn into_provider_key(self) -> ProviderKey {
        let mut extras = Extras::new();
        if let Some(ws) = self.workspace_id.as_deref().filter(|w| !w.is_empty()) {
            extras.insert(EXTRA_WORKSPACE.to_string(), ws.to_string());
        }
        extras.insert(
            EXTRA_MODE.to_string(),
            if self.livemode { "live" } else { "test" }.to_string(),
        );
        ProviderKey {
            id: self.id,
            name: self.name,
            hint: self
                .key_prefix
                .filter(|p| !p.is_empty())
                .map(|p| format!("{p}…")),
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            usage: None,
            active: self.is_active,
            observed: ObservedSettings {
                // Expiry is set in whole days from creation, so it never equals the spec's
                // instant: it is reported in `expires_at` for the status, not compared.
                expires_at: None,
                allowed_ips: Some(self.allowed_ips.unwrap_or_default()),
                ..Default::default()
            },
            attempt: None,
            secret: None,
            extras,
        }
    }
}

/// The create answer. No `Debug`: it holds the plaintext.
#[derive(Deserialize)]
struct CreateResponse {
    key: String,
    key_details: BoltzKey,
}

#[derive(Debug, Deserialize)]
struct ListResponse {
    #[serde(default)]
    data: Vec<BoltzKey>,
    #[serde(default)]
    last_id: Option<String>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Debug, Deserialize)]
struct Me {
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    principal_type: Option<String>,
}

#[derive(Debug, Serialize)]
struct CreateRequest<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    allowed_ips: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_days: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace_id: Option<String>,
}

fn mode_str(m: BoltzMode) -> &'static str {
    match m {
        BoltzMode::Live => "live",
        BoltzMode::Test => "test",
    }
}

/// Whole days from `now` until `expires_at`, rounded up (Boltz takes `expires_in_days`): the
/// key lives at least as long as asked and at most a day longer. `None` if the time is not in
/// the future.
pub fn expires_in_days(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<i64> {
    let secs = (expires_at - now).num_seconds();
    if secs <= 0 {
        return None;
    }
    Some((secs + 86_399) / 86_400)
}

/// Whether `s` is an address Boltz takes in `allowed_ips`: an IPv4/IPv6 address or a CIDR.
pub fn valid_ip_or_cidr(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

/// The message of a Boltz error body, read leniently; a body that is not JSON of a known shape
/// is described (its size), never quoted.
pub fn error_message(body: &[u8]) -> String {
    fn text(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            serde_json::Value::Object(o) => {
                let msg = ["message", "detail", "error", "msg", "title"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(text))?;
                match o.get("type").and_then(|t| t.as_str()) {
                    Some(t) if !t.is_empty() && !msg.starts_with(t) => Some(format!("{t}: {msg}")),
                    _ => Some(msg),
                }
            }
            // FastAPI-style validation lists: [{"loc": [...], "msg": "..."}]
            serde_json::Value::Array(items) => {
                let parts: Vec<String> = items.iter().filter_map(text).collect();
                (!parts.is_empty()).then(|| parts.join("; "))
            }
            _ => None,
        }
    }
    // Only the provider's JSON error shape is quoted: any other body (a proxy's HTML page, a
    // redirect target's answer) is described, never copied into a status or an Event.
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| text(&v))
        .unwrap_or_else(|| {
            if body.iter().all(u8::is_ascii_whitespace) {
                String::new()
            } else {
                format!("a non-JSON body of {} bytes, not shown", body.len())
            }
        });
    let msg = http::snippet(&msg);
    if msg.is_empty() {
        "(empty body)".to_string()
    } else {
        msg
    }
}

/// Map a non-2xx answer to a typed error.
fn error_from(resp: &HttpResponse) -> ProviderError {
    let status = resp.status;
    let msg = format!("HTTP {}: {}", status.as_u16(), error_message(&resp.body));
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Auth(msg),
        StatusCode::NOT_FOUND => ProviderError::NotFound(msg),
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
            retry_after: http::rate_limit_wait(&resp.headers),
        },
        StatusCode::GONE => ProviderError::Unsupported(msg),
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
            ProviderError::Unavailable(msg)
        }
        _ => ProviderError::Rejected(msg),
    }
}

/// One path segment for an id (ids are opaque strings; never `.`, `..` or holding `/`).
fn segment(id: &str) -> Result<String, ProviderError> {
    http::path_segment(id, "Boltz key id")
}

#[async_trait]
impl KeyBackend for BoltzClient {
    fn last_use(&self, _key: &ProviderKey) -> LastUsedSource {
        // Every API key carries `last_used_at` (null until first used).
        LastUsedSource::Provider
    }
    fn http(&self) -> Option<&HttpClient> {
        Some(&self.http)
    }
    fn provider(&self) -> ProviderType {
        ProviderType::Boltz
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Keys live in a workspace: the scope's parent is its id (empty: the default workspace,
    /// listed without a filter).
    fn scope(&self, settings: &KeySettings) -> KeyScope {
        KeyScope {
            family: String::new(),
            parent: self.workspace_for(settings).unwrap_or_default(),
        }
    }

    fn validate(&self, settings: &KeySettings) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(b) = &settings.boltz {
            if b.workspace_id
                .as_deref()
                .is_some_and(|w| w.trim().is_empty())
            {
                out.push(
                    "spec.boltz.workspaceID is empty: name a workspace (e.g. ws_…) or leave the \
                     field out to use the provider's workspace"
                        .to_string(),
                );
            }
        }
        for (i, ip) in settings.allowed_ips.iter().enumerate() {
            if !valid_ip_or_cidr(ip.trim()) {
                out.push(format!(
                    "spec.allowedIPs[{i}] {ip:?} is not an IP address or CIDR range; Boltz \
                     takes IPv4/IPv6 addresses and CIDRs such as 10.0.0.0/8 (no a-b ranges)"
                ));
            }
        }
        out
    }

    async fn verify(&self) -> Result<(), ProviderError> {
        let resp = self
            .call("verify", Idempotency::Safe, Method::GET, ME_PATH, &[], None)
            .await?;
        let me: Me = resp.json()?;
        match me.key_type.as_deref() {
            Some("admin") => Ok(()),
            Some("workspace") => Err(ProviderError::Auth(
                "the configured key is a Boltz workspace key (sk_bc_ws_…), which cannot manage \
                 API keys; put an admin key (sk_bc_admin_…) in the credential Secret"
                    .into(),
            )),
            other => Err(ProviderError::Auth(format!(
                "the configured credential is not a Boltz admin API key (auth/me reports \
                 principal_type {:?}, key_type {:?}); put an admin key (sk_bc_admin_…) in the \
                 credential Secret",
                me.principal_type.as_deref().unwrap_or("unknown"),
                other.unwrap_or("none"),
            ))),
        }
    }

    async fn create(&self, settings: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let expires_in_days = match settings.expires_at {
            None => None,
            Some(at) => Some(expires_in_days(at, Utc::now()).ok_or_else(|| {
                ProviderError::Rejected(format!(
                    "the key would expire at {} which is not in the future; set a later \
                     spec.expiresAt or a positive spec.ttl",
                    at.to_rfc3339()
                ))
            })?),
        };
        let allowed_ips: Vec<String> = settings
            .allowed_ips
            .iter()
            .map(|s| s.trim().to_string())
            .collect();
        let req = CreateRequest {
            name: &settings.name,
            allowed_ips: &allowed_ips,
            expires_in_days,
            mode: settings.boltz.as_ref().and_then(|b| b.mode).map(mode_str),
            workspace_id: self.workspace_for(settings),
        };
        let body = serde_json::to_value(&req)
            .map_err(|e| ProviderError::Rejected(format!("cannot encode the request: {e}")))?;
        let resp = self
            .call(
                "create",
                Idempotency::Unsafe,
                Method::POST,
                KEYS_PATH,
                &[],
                Some(&body),
            )
            .await?;
        let created: CreateResponse = resp.json()?;
        if created.key.is_empty() {
            return Err(ProviderError::Malformed(
                "the create answer holds no key".into(),
            ));
        }
        Ok(CreatedKey {
            key: created.key_details.into_provider_key(),
            secret: SecretString::from(created.key),
        })
    }

    async fn list_page(
        &self,
        scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        let mut query = vec![("limit", MAX_PAGE_SIZE.to_string())];
        if let Some(c) = cursor {
            query.push(("after_id", c.to_string()));
        }
        if !scope.parent.is_empty() {
            query.push(("workspace_id", scope.parent.clone()));
        }
        let resp = self
            .call(
                "list",
                Idempotency::Safe,
                Method::GET,
                KEYS_PATH,
                &query,
                None,
            )
            .await?;
        let page: ListResponse = resp.json()?;
        let next = if page.has_more && !page.data.is_empty() {
            page.last_id
                .filter(|l| !l.is_empty())
                .or_else(|| page.data.last().map(|k| k.id.clone()))
        } else {
            None
        };
        // Admin keys are listed too; keysmith never manages them (and must never revoke the
        // key it runs on), so they are left out.
        let keys = page
            .data
            .into_iter()
            .filter(|k| !k.is_admin())
            .map(BoltzKey::into_provider_key)
            .collect();
        Ok(KeyPage { keys, next })
    }

    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        _desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        if fields.is_empty() {
            return self.get(scope, id).await;
        }
        let names: Vec<&str> = fields.iter().map(|f| f.path()).collect();
        Err(ProviderError::Unsupported(format!(
            "Boltz API keys cannot be changed after creation ({}); a new key is needed \
             (spec.onImmutableChange: Replace)",
            names.join(", ")
        )))
    }

    async fn revoke(&self, scope: &KeyScope, id: &str) -> Result<(), ProviderError> {
        let path = format!("{KEYS_PATH}/{}/revoke", segment(id)?);
        // Revoke moves the key to a fixed final state: safe to repeat. A repeated revoke may
        // answer 409 ("idempotent or 409" per the reference): read it as "already revoked" once
        // a listing shows the key inactive or gone.
        match self
            .call("revoke", Idempotency::Safe, Method::POST, &path, &[], None)
            .await
        {
            Ok(_) => Ok(()),
            Err(ProviderError::Rejected(m)) if m.starts_with("HTTP 409") => {
                super::confirm_revoked(self, scope, id, &m).await
            }
            Err(e) => Err(e),
        }
    }

    /// The workspace and the mode cannot change on an existing key; a difference needs a new key.
    fn extras_drift(&self, current: &ProviderKey, desired: &KeySettings) -> bool {
        if let Some(ws) = self.workspace_for(desired) {
            if current.extras.get(EXTRA_WORKSPACE) != Some(&ws) {
                return true;
            }
        }
        if let Some(mode) = desired.boltz.as_ref().and_then(|b| b.mode) {
            if current.extras.get(EXTRA_MODE).map(String::as_str) != Some(mode_str(mode)) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keysmith_api::{BoltzKeySpec, SecretKeySelector};

    fn client(ws: Option<&str>) -> BoltzClient {
        let spec = BoltzProvider {
            base_url: Some("http://127.0.0.1:1".into()),
            api_key_secret_ref: SecretKeySelector {
                name: "boltz".into(),
                key: "token".into(),
                namespace: None,
            },
            workspace_id: ws.map(str::to_string),
        };
        let mut creds = BTreeMap::new();
        creds.insert(
            "token".to_string(),
            SecretString::from("sk_bc_admin_test_abc\n"),
        );
        BoltzClient::new(&spec, Credentials(creds), ClientOptions::default()).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn days_round_up() {
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(expires_in_days(t("2026-01-02T00:00:00Z"), now), Some(1));
        assert_eq!(expires_in_days(t("2026-01-01T00:00:01Z"), now), Some(1));
        assert_eq!(expires_in_days(t("2026-01-02T00:00:01Z"), now), Some(2));
        assert_eq!(expires_in_days(t("2026-01-31T00:00:00Z"), now), Some(30));
        assert_eq!(expires_in_days(now, now), None);
        assert_eq!(expires_in_days(t("2025-12-31T00:00:00Z"), now), None);
    }

    #[test]
    fn error_bodies_are_read_leniently() {
        assert_eq!(
            error_message(
                br#"{"error":{"type":"invalid_request_error","message":"name is required"}}"#
            ),
            "invalid_request_error: name is required"
        );
        assert_eq!(error_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message(br#"{"message":"bad"}"#), "bad");
        assert_eq!(
            error_message(br#"{"detail":"Not authenticated"}"#),
            "Not authenticated"
        );
        assert_eq!(
            error_message(br#"{"detail":[{"loc":["body","name"],"msg":"field required"}]}"#),
            "field required"
        );
        // Not Boltz's error JSON (a proxy's page): described, never quoted.
        assert_eq!(
            error_message(b"<html>502 Bad Gateway</html>"),
            "a non-JSON body of 28 bytes, not shown"
        );
        assert_eq!(error_message(b""), "(empty body)");
        assert!(error_message("x".repeat(5000).as_bytes()).chars().count() <= 301);
    }

    #[test]
    fn capabilities_are_create_only() {
        let c = client(None);
        let caps = c.capabilities();
        assert!(caps.mint && !caps.push && !caps.secret_readable);
        assert_eq!(caps.adopt, AdoptMode::No);
        assert!(caps.mutable.is_empty());
        for f in [
            Field::DisplayName,
            Field::ExpiresAt,
            Field::Ttl,
            Field::AllowedIps,
            Field::Extras,
        ] {
            assert!(caps.supports(f), "{f:?}");
        }
        for f in [
            Field::Disabled,
            Field::LimitAmount,
            Field::LimitReset,
            Field::Models,
            Field::KeyRef,
            Field::Source,
        ] {
            assert!(!caps.supports(f), "{f:?}");
        }
        assert!(!format!("{c:?}").contains("sk_bc_admin"));
    }

    #[test]
    fn scope_is_the_workspace() {
        let mut s = KeySettings {
            name: "a".into(),
            ..Default::default()
        };
        assert_eq!(client(None).scope(&s).parent, "");
        assert_eq!(client(Some("ws_p")).scope(&s).parent, "ws_p");
        s.boltz = Some(BoltzKeySpec {
            workspace_id: Some("ws_k".into()),
            mode: None,
        });
        assert_eq!(client(Some("ws_p")).scope(&s).parent, "ws_k");
        assert_eq!(client(Some("  ")).workspace_id, None);
    }

    #[test]
    fn validation_names_the_field() {
        let c = client(None);
        let s = KeySettings {
            name: "a".into(),
            allowed_ips: vec!["10.0.0.0/8".into(), "::1".into(), "1.2.3.4-1.2.3.9".into()],
            boltz: Some(BoltzKeySpec {
                workspace_id: Some("".into()),
                mode: None,
            }),
            ..Default::default()
        };
        let errs = c.validate(&s);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("spec.boltz.workspaceID"));
        assert!(errs[1].contains("spec.allowedIPs[2]"));
    }

    #[test]
    fn extras_drift_on_workspace_and_mode() {
        let c = client(Some("ws_a"));
        let key = BoltzKey {
            id: "k".into(),
            name: "n".into(),
            allowed_ips: Some(vec![]),
            created_at: None,
            expires_at: None,
            is_active: true,
            key_prefix: Some("sk_bc_ws_tes".into()),
            key_type: Some("workspace".into()),
            last_used_at: None,
            livemode: false,
            workspace_id: Some("ws_a".into()),
        }
        .into_provider_key();
        assert_eq!(key.hint.as_deref(), Some("sk_bc_ws_tes…"));
        assert_eq!(key.observed.expires_at, None);
        let mut d = KeySettings {
            name: "n".into(),
            ..Default::default()
        };
        assert!(!c.extras_drift(&key, &d));
        d.boltz = Some(BoltzKeySpec {
            workspace_id: None,
            mode: Some(BoltzMode::Test),
        });
        assert!(!c.extras_drift(&key, &d));
        d.boltz = Some(BoltzKeySpec {
            workspace_id: None,
            mode: Some(BoltzMode::Live),
        });
        assert!(c.extras_drift(&key, &d));
        d.boltz = Some(BoltzKeySpec {
            workspace_id: Some("ws_b".into()),
            mode: None,
        });
        assert!(c.extras_drift(&key, &d));
        assert_eq!(drift(&c, &key, &d), vec![Field::Extras]);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("key_abc-1").unwrap(), "key_abc-1");
        assert_eq!(segment("a b").unwrap(), "a%20b");
        for walk in ["..", ".", "a/b", "%2e%2e", ""] {
            assert!(segment(walk).is_err(), "{walk}");
        }
    }
}
