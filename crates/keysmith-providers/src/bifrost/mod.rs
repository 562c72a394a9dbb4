//! Bifrost (maximhq/bifrost), a self-hosted LLM gateway.
//!
//! Two families of keys live at a gateway, and keysmith serves both:
//!
//! * **Virtual keys** (`KeyScope{family: "virtual"}`) — `sk-bf-…` credentials the gateway mints,
//!   under `/api/governance/virtual-keys`. Created, listed (paginated with `limit`/`offset`),
//!   updated (partial PUT), rotated (`POST …/{vk_id}/rotate`, feature-detected) and deleted.
//!   Budgets carry the spend limit and live usage counters.
//! * **Provider keys** (`KeyScope{family: "provider", parent: <upstream provider>}`) — upstream
//!   credentials (OpenAI, Anthropic, Azure…) whose value the user owns. keysmith *pushes* them
//!   from a Secret (`spec.source`) to `/api/providers/{provider}/keys` under a deterministic id
//!   derived from the ApiKey's uid, so a repeated create answers 409 and is recognised. The value
//!   only ever travels in request bodies: the gateway redacts it in every answer and keysmith
//!   never puts it in a status, a log line or an error.
//!
//! Authentication is off by default at Bifrost; `authSecretRef` selects HTTP Basic (admin
//! username/password) or a Bearer token (session token or `bfst-` management key).
//!
//! Errors come in Bifrost's envelope `{"is_bifrost_error": false, "status_code": N, "error":
//! {"message": "…"}}`; the message is what conditions show.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::http::{self, HttpClient, HttpResponse, Idempotency};
use super::*;
use keysmith_api::{
    BifrostAuthScheme, BifrostKeySpec, BifrostProvider, BifrostRateLimit, LastUsedSource,
};

mod provider_keys;
mod settings;
#[cfg(test)]
mod tests;
mod virtual_keys;

pub use provider_keys::*;
pub use settings::*;
pub use virtual_keys::*;

/// Family of virtual keys (minted by the gateway).
pub const FAMILY_VIRTUAL: &str = "virtual";
/// Family of provider keys (pushed from a user's Secret).
pub const FAMILY_PROVIDER: &str = "provider";

/// Page size asked for when listing virtual keys (the gateway may clamp it; the client follows
/// the `count` it answers with).
const PAGE_SIZE: usize = 100;

/// Reset window used for a limit that never resets: Bifrost budgets always have a window, and a
/// year is the longest one it documents.
const NEVER_WINDOW: &str = "1Y";

/// What the description of a keysmith-made virtual key carries (see [`compose_description`]).
const MARKER: &str = "managed by keysmith";

const VK_PATH: &str = "/api/governance/virtual-keys";

/// The fields Bifrost honours when a key is created (virtual keys: all of them, expiry since
/// Bifrost PR #4887; provider keys: name, disabled, models and the block — `validate` rejects a
/// limit or an expiry on a provider key).
const SUPPORTED: &[Field] = &[
    Field::DisplayName,
    Field::Disabled,
    Field::ExpiresAt,
    Field::Ttl,
    Field::LimitAmount,
    Field::LimitReset,
    Field::Models,
    Field::Extras,
    Field::KeyRef,
    Field::Source,
];

/// What a PUT can change later: Bifrost updates every one of them in place.
const MUTABLE: &[Field] = &[
    Field::DisplayName,
    Field::Disabled,
    Field::ExpiresAt,
    Field::Ttl,
    Field::LimitAmount,
    Field::LimitReset,
    Field::Models,
    Field::Extras,
];

enum Auth {
    None,
    Basic(SecretString),
    Bearer(SecretString),
}

/// Client of one Bifrost gateway.
pub struct BifrostClient {
    http: HttpClient,
    auth: Auth,
    caps: Capabilities,
}

impl std::fmt::Debug for BifrostClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Basic(_) => "basic [REDACTED]",
            Auth::Bearer(_) => "bearer [REDACTED]",
        };
        f.debug_struct("BifrostClient")
            .field("http", &self.http)
            .field("auth", &auth)
            .finish()
    }
}

impl BifrostClient {
    pub fn new(
        spec: &BifrostProvider,
        creds: Credentials,
        mut opts: ClientOptions,
    ) -> Result<Self, String> {
        if opts.base_url.is_none() {
            opts.base_url = Some(spec.base_url.clone());
        }
        let base = opts.base_url.clone().unwrap_or_default();
        if base.trim().is_empty() {
            return Err("spec.bifrost.baseURL is required (e.g. http://bifrost:8080)".into());
        }
        let auth = match &spec.auth_secret_ref {
            None => Auth::None,
            Some(a) => match a.scheme {
                BifrostAuthScheme::Basic => {
                    let user = creds.get("username")?.expose_secret();
                    let pass = creds.get("password")?.expose_secret();
                    if user.contains(':') {
                        return Err(
                            "the Bifrost admin username must not contain ':' (HTTP Basic)".into(),
                        );
                    }
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                    Auth::Basic(SecretString::from(format!("Basic {encoded}")))
                }
                BifrostAuthScheme::Bearer => {
                    let token = creds.get("token")?.expose_secret().trim();
                    if token.is_empty() {
                        return Err("the Bifrost bearer token is empty".into());
                    }
                    Auth::Bearer(SecretString::from(format!("Bearer {token}")))
                }
            },
        };
        let http = HttpClient::new(ProviderType::Bifrost, &base, opts)?;
        Ok(BifrostClient {
            http,
            auth,
            caps: Capabilities {
                mint: true,
                adopt: AdoptMode::ReadBack,
                push: true,
                supported: SUPPORTED,
                mutable: MUTABLE,
                secret_readable: true,
                // Virtual keys mint a new key (the gateway's rotate route is not used); pushed
                // provider keys take the new value as a new key.
                rotation: RotationStrategy {
                    pushed: Some(Rotation::RepushWithGrace),
                    ..RotationStrategy::MINT
                },
            },
        })
    }

    /// The admin `Authorization` header (marked sensitive), if the gateway needs one.
    fn auth_header(&self) -> Result<Option<reqwest::header::HeaderValue>, ProviderError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Basic(v) | Auth::Bearer(v) => http::sensitive_header(v.expose_secret()).map(Some),
        }
    }

    /// Send a request; non-2xx answers become typed errors.
    async fn call(
        &self,
        operation: &'static str,
        idem: Idempotency,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, ProviderError> {
        self.call_with(operation, idem, method, path, body, None, &[])
            .await
    }

    /// Bifrost's side of [`HttpClient::call_json`]: the admin `Authorization` header if the
    /// gateway needs one, errors from its envelope. A request that carries `secret` (a pushed
    /// value) has it scrubbed from an error text before the text is cut; the statuses in
    /// `pass` come back for the caller to read.
    #[allow(clippy::too_many_arguments)]
    async fn call_with(
        &self,
        operation: &'static str,
        idem: Idempotency,
        method: Method,
        path: &str,
        body: Option<&Value>,
        secret: Option<&SecretString>,
        pass: &[StatusCode],
    ) -> Result<HttpResponse, ProviderError> {
        let api = http::Api {
            headers: self
                .auth_header()?
                .map(|h| (reqwest::header::AUTHORIZATION, h))
                .into_iter()
                .collect(),
            error: &|r: &HttpResponse| error_with(r, secret),
        };
        let call = http::Call::new(operation, idem, &method, path)
            .json(body)
            .pass(pass);
        self.http.call_json(call, &api).await
    }
}

#[async_trait]
impl KeyBackend for BifrostClient {
    fn last_use(&self, key: &ProviderKey) -> LastUsedSource {
        // Virtual keys have no `last_used_at`, but their budgets carry live usage counters;
        // provider keys report nothing per key.
        match key.extras.get("family").map(String::as_str) {
            Some(FAMILY_VIRTUAL) if key.usage.is_some() => LastUsedSource::UsageDelta,
            _ => LastUsedSource::NotReported,
        }
    }
    fn http(&self) -> Option<&HttpClient> {
        Some(&self.http)
    }
    fn provider(&self) -> ProviderType {
        ProviderType::Bifrost
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn records_attempt(&self) -> bool {
        true
    }

    /// Provider keys when the ApiKey pushes a value or names an upstream provider; virtual keys
    /// otherwise.
    fn scope(&self, s: &KeySettings) -> KeyScope {
        let upstream = s
            .bifrost
            .as_ref()
            .and_then(|b| b.provider.clone())
            .unwrap_or_default();
        if s.pushed || !upstream.is_empty() {
            KeyScope {
                family: FAMILY_PROVIDER.into(),
                parent: upstream,
            }
        } else {
            KeyScope {
                family: FAMILY_VIRTUAL.into(),
                parent: String::new(),
            }
        }
    }

    fn validate(&self, s: &KeySettings) -> Vec<String> {
        validate_settings(s)
    }

    async fn verify(&self) -> Result<(), ProviderError> {
        match self
            .call(
                "verify",
                Idempotency::Safe,
                Method::GET,
                &format!("{VK_PATH}?limit=1"),
                None,
            )
            .await
        {
            // Governance may be off on this gateway: provider keys still work.
            Err(ProviderError::NotFound(_)) => self
                .call("verify", Idempotency::Safe, Method::GET, "/api/keys", None)
                .await
                .map(|_| ()),
            other => other.map(|_| ()),
        }
    }

    async fn create(&self, s: &KeySettings) -> Result<CreatedKey, ProviderError> {
        if self.scope(s).family == FAMILY_PROVIDER {
            return Err(ProviderError::Unsupported(
                "Bifrost provider keys take your value: set spec.source.secretRef".into(),
            ));
        }
        self.vk_create(s).await
    }

    async fn list_page(
        &self,
        scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        if scope.family == FAMILY_PROVIDER {
            // Provider keys are not paginated: one answer holds them all.
            return Ok(KeyPage {
                keys: self.pk_list(&scope.parent).await?,
                next: None,
            });
        }
        self.vk_list_page(cursor).await
    }

    async fn get(&self, scope: &KeyScope, id: &str) -> Result<ProviderKey, ProviderError> {
        if scope.family == FAMILY_PROVIDER {
            if scope.parent.is_empty() {
                return self
                    .pk_list("")
                    .await?
                    .into_iter()
                    .find(|k| k.id == id)
                    .ok_or_else(|| ProviderError::NotFound(format!("provider key {id}")));
            }
            return Ok(self
                .pk_get(&scope.parent, id)
                .await?
                .into_key(&scope.parent));
        }
        Ok(self.vk_get(id).await?.into_key())
    }

    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        if scope.family == FAMILY_PROVIDER {
            return self.pk_update(&scope.parent, id, desired, fields).await;
        }
        self.vk_update(id, desired, fields).await
    }

    async fn revoke(&self, scope: &KeyScope, id: &str) -> Result<(), ProviderError> {
        if scope.family == FAMILY_PROVIDER {
            return self
                .call(
                    "delete_provider_key",
                    Idempotency::Safe,
                    Method::DELETE,
                    &pk_path(&scope.parent, Some(id))?,
                    None,
                )
                .await
                .map(|_| ());
        }
        self.vk_delete(id).await
    }

    async fn regenerate(&self, scope: &KeyScope, id: &str) -> Result<CreatedKey, ProviderError> {
        if scope.family == FAMILY_PROVIDER {
            return Err(ProviderError::Unsupported(
                "Bifrost provider keys hold your value: change the Secret in spec.source to rotate"
                    .into(),
            ));
        }
        self.vk_rotate(id).await
    }

    async fn push(
        &self,
        settings: &KeySettings,
        value: &SecretString,
        existing: Option<&str>,
    ) -> Result<ProviderKey, ProviderError> {
        self.pk_push(settings, value, existing)
            .await
            .map_err(|e| scrub(e, value))
    }

    fn extras_drift(&self, current: &ProviderKey, desired: &KeySettings) -> bool {
        extras_differ(current, desired)
    }

    fn key_problem(&self, key: &ProviderKey) -> Option<String> {
        key_problem(key)
    }

    fn rotated_outside(
        &self,
        key: &ProviderKey,
        held: &SecretString,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<String> {
        rotated_outside(key, held, since)
    }
}

// ---- pure helpers ---------------------------------------------------------------------------

fn is_json(resp: &HttpResponse) -> bool {
    resp.headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| !ct.starts_with("text/html"))
}

/// Percent-encode one path segment.
fn seg(s: &str) -> Result<String, ProviderError> {
    // Ids come from spec.keyRef, status and gateway answers: one segment, never `.`/`..`/`/`.
    http::path_segment(s, "Bifrost id")
}

/// Make sure a pushed value never rides out in an error (a gateway echoing the request).
fn scrub(e: ProviderError, value: &SecretString) -> ProviderError {
    let v = value.expose_secret();
    if v.len() < 4 {
        return e;
    }
    // The whole value, and a head of it that a cut left at the end of a message.
    let clean = |m: String| http::redact(&m, v);
    match e {
        ProviderError::Auth(m) => ProviderError::Auth(clean(m)),
        ProviderError::Rejected(m) => ProviderError::Rejected(clean(m)),
        ProviderError::NotFound(m) => ProviderError::NotFound(clean(m)),
        ProviderError::Unavailable(m) => ProviderError::Unavailable(clean(m)),
        ProviderError::Malformed(m) => ProviderError::Malformed(clean(m)),
        ProviderError::Unsupported(m) => ProviderError::Unsupported(clean(m)),
        ProviderError::Unconfirmed(m) => ProviderError::Unconfirmed(clean(m)),
        ProviderError::Refused(m) => ProviderError::Refused(clean(m)),
        e @ ProviderError::RateLimited { .. } => e,
    }
}

/// A masked rendering of a value: its first `head` and last 4 characters.
fn mask(v: &str, head: usize) -> Option<String> {
    let chars: Vec<char> = v.chars().collect();
    if chars.len() < head + 8 {
        return None;
    }
    let first: String = chars[..head].iter().collect();
    let last: String = chars[chars.len() - 4..].iter().collect();
    Some(format!("{first}…{last}"))
}

/// Whether a value as the gateway answered it is a redacted placeholder.
fn is_redacted(v: &str) -> bool {
    v.contains("****") || (!v.is_empty() && v.chars().all(|c| c == '*'))
}

fn parse_time(s: &Option<String>) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = s.as_deref()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
        .filter(|t| t.timestamp() > 0)
}

/// Turn a non-2xx answer into a typed error, with the message from Bifrost's envelope. For an
/// answer to a request that carried `secret` (a pushed value), the gateway's message has it
/// scrubbed first, then is cut (the other order misses a value the cut split).
fn error_with(resp: &HttpResponse, secret: Option<&SecretString>) -> ProviderError {
    let status = resp.status;
    let secret = secret.map(|s| s.expose_secret());
    let message = serde_json::from_slice::<ErrorEnvelope>(&resp.body)
        .ok()
        .and_then(|e| e.error.and_then(|e| e.message).or(e.message))
        .map(|m| http::snippet_scrubbed(&m, secret))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let t = resp.text_snippet();
            if t.is_empty() || t.starts_with('<') {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                t
            }
        });
    let msg = format!("HTTP {}: {message}", status.as_u16());
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Auth(msg),
        StatusCode::NOT_FOUND => ProviderError::NotFound(msg),
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
            retry_after: http::rate_limit_wait(&resp.headers),
        },
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::GONE | StatusCode::NOT_IMPLEMENTED => {
            ProviderError::Unsupported(msg)
        }
        s if s.is_server_error() => ProviderError::Unavailable(msg),
        _ => ProviderError::Rejected(msg),
    }
}

// ---- wire types (never Debug: some carry values) -------------------------------------------

/// A string that is a secret on the wire.
struct SecretField(SecretString);

impl<'de> Deserialize<'de> for SecretField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Plain string, or an EnvVar object {"value": …}.
        let v = Value::deserialize(d)?;
        let s = match v {
            Value::String(s) => s,
            Value::Object(mut o) => match o.remove("value") {
                Some(Value::String(s)) => s,
                _ => String::new(),
            },
            _ => String::new(),
        };
        Ok(SecretField(SecretString::from(s)))
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
}
