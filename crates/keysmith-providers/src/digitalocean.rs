//! DigitalOcean Gradient: model access keys and agent API keys (`/v2/gen-ai/...`).
//!
//! Two families of keys live behind one API token (`Authorization: Bearer <token>`):
//!
//! | family | scope | endpoints | create |
//! |---|---|---|---|
//! | model access keys (serverless inference) | `{family: "model"}` | `/v2/gen-ai/models/api_keys` | **retired: 410 Gone** |
//! | agent API keys | `{family: "agent", parent: <agent uuid>}` | `/v2/gen-ai/agents/{agent_uuid}/api_keys` | `POST` |
//!
//! Both families list (page/per_page), rename (`PUT …/{uuid}`), regenerate
//! (`PUT …/{uuid}/regenerate`, the old value dies at once) and delete (`DELETE …/{uuid}`, 200 with
//! the deleted key). There is no get-one endpoint (the listing is filtered) and nothing per key
//! but a name: no expiry, limits, IPs, models, usage or last use.
//!
//! Model keys can only be adopted (`spec.keyRef`): keysmith obtains a value with regenerate.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::http::{self, HttpClient, HttpResponse, Idempotency};
use super::*;
use keysmith_api::DigitalOceanProvider;

/// The only server in DigitalOcean's API description.
pub const DEFAULT_BASE_URL: &str = DigitalOceanProvider::DEFAULT_BASE_URL;
/// Largest page DigitalOcean serves (the generic API maximum).
pub const PAGE_SIZE: usize = 200;
/// Scope family of model access keys (serverless inference).
pub const FAMILY_MODEL: &str = "model";
/// Scope family of agent API keys (scope parent: the agent's uuid).
pub const FAMILY_AGENT: &str = "agent";
/// Why a model key cannot be created, and what to do instead.
pub const MODEL_CREATE_RETIRED: &str = "DigitalOcean retired model-key creation over the API (410 Gone); create the key in the control panel and set spec.keyRef.id to its uuid, or set spec.digitalocean.agentUUID to mint an agent key";

const MODEL_KEYS: &str = "/v2/gen-ai/models/api_keys";

const CAPS: Capabilities = Capabilities {
    // Agent keys only; a model key without keyRef is refused by validate().
    mint: true,
    adopt: AdoptMode::Regenerate,
    push: false,
    supported: &[Field::DisplayName, Field::Extras, Field::KeyRef],
    mutable: &[Field::DisplayName],
    secret_readable: false,
    // Agent keys can still be minted: a new key and a grace period beat a regenerate. An
    // adopted key (every model key) keeps its id only through a regenerate.
    rotation: RotationStrategy {
        adopted: Some(Rotation::Regenerate),
        ..RotationStrategy::MINT
    },
};

/// Client of one DigitalOcean account (one API token).
pub struct DigitalOceanClient {
    http: HttpClient,
    token: SecretString,
    caps: Capabilities,
}

impl std::fmt::Debug for DigitalOceanClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigitalOceanClient")
            .field("base_url", &self.http.base_url())
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl DigitalOceanClient {
    /// A client for `spec` with the API token in the credential role `token`.
    pub fn new(
        spec: &DigitalOceanProvider,
        creds: Credentials,
        mut opts: ClientOptions,
    ) -> Result<Self, String> {
        let token = creds.get("token")?.clone();
        if token.expose_secret().trim().is_empty() {
            return Err("credential \"token\" (the DigitalOcean API token) is empty".into());
        }
        if opts.base_url.is_none() {
            opts.base_url = spec.base_url.clone();
        }
        let http = HttpClient::new(ProviderType::DigitalOcean, DEFAULT_BASE_URL, opts)?;
        Ok(DigitalOceanClient {
            http,
            token,
            caps: CAPS,
        })
    }

    /// DigitalOcean's side of [`HttpClient::call_json`]: the token as `Authorization: Bearer`,
    /// errors from its `{"id", "message", "request_id"}` body, prefixed with `what` was being
    /// done.
    async fn call(&self, what: &str, call: http::Call<'_>) -> Result<HttpResponse, ProviderError> {
        let api = http::Api {
            headers: vec![
                (
                    AUTHORIZATION,
                    http::sensitive_header(&format!("Bearer {}", self.token.expose_secret()))?,
                ),
                (
                    ACCEPT,
                    reqwest::header::HeaderValue::from_static("application/json"),
                ),
            ],
            error: &|r: &HttpResponse| error_for(r, what),
        };
        self.http.call_json(call, &api).await
    }

    /// One key from an `{"api_key_info": …}` answer that must carry a fresh secret.
    fn created(resp: &HttpResponse, scope: &KeyScope) -> Result<CreatedKey, ProviderError> {
        let env: InfoEnvelope = decode(resp)?;
        let mut info = env
            .api_key_info
            .ok_or_else(|| ProviderError::Malformed("the answer has no api_key_info".into()))?;
        let secret = info
            .secret_key
            .take()
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| {
                ProviderError::Malformed("the answer has no api_key_info.secret_key".into())
            })?;
        Ok(CreatedKey {
            key: provider_key(info, scope)?,
            secret,
        })
    }
}

#[async_trait]
impl KeyBackend for DigitalOceanClient {
    fn http(&self) -> Option<&HttpClient> {
        Some(&self.http)
    }
    fn provider(&self) -> ProviderType {
        ProviderType::DigitalOcean
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn scope(&self, settings: &KeySettings) -> KeyScope {
        match settings
            .digitalocean
            .as_ref()
            .and_then(|d| d.agent_uuid.as_ref())
        {
            Some(agent) => KeyScope {
                family: FAMILY_AGENT.into(),
                parent: agent.clone(),
            },
            None => KeyScope {
                family: FAMILY_MODEL.into(),
                parent: String::new(),
            },
        }
    }

    fn validate(&self, settings: &KeySettings) -> Vec<String> {
        let mut out = Vec::new();
        let agent = settings
            .digitalocean
            .as_ref()
            .and_then(|d| d.agent_uuid.as_ref());
        match agent {
            Some(a) if a.trim().is_empty() => out.push(
                "spec.digitalocean.agentUUID is empty: set it to the uuid of the agent whose key \
                 to mint, or remove it for a model access key (adopted with spec.keyRef)"
                    .into(),
            ),
            Some(a) if !is_uuid(a) => out.push(format!(
                "spec.digitalocean.agentUUID {a:?} is not a uuid (like \
                 1b418231-b7d6-11ef-bf8f-4e013e2ddde4): copy the agent's uuid from the control \
                 panel or `doctl genai agent list`"
            )),
            Some(_) => {}
            None if settings.key_ref.is_none() && !settings.pushed => {
                out.push(MODEL_CREATE_RETIRED.into())
            }
            None => {}
        }
        if let Some(id) = &settings.key_ref {
            if !is_uuid(id) {
                out.push(format!(
                    "spec.keyRef.id {id:?} is not a DigitalOcean key uuid (like \
                     11efb7d6-cdb5-6388-bf8f-4e013e2ddde4)"
                ));
            }
        }
        out
    }

    async fn verify(&self) -> Result<(), ProviderError> {
        self.call(
            "checking the token",
            http::Call::new(
                "verify",
                Idempotency::Safe,
                &Method::GET,
                &format!("{MODEL_KEYS}?per_page=1"),
            ),
        )
        .await?;
        Ok(())
    }

    async fn create(&self, settings: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let scope = self.scope(settings);
        if scope.family == FAMILY_MODEL {
            let resp = self
                .call(
                    "creating a model key",
                    http::Call::new("create", Idempotency::Unsafe, &Method::POST, MODEL_KEYS)
                        .json(Some(&json!({ "name": settings.name })))
                        .pass(&[reqwest::StatusCode::GONE]),
                )
                .await?;
            if resp.status == reqwest::StatusCode::GONE {
                return Err(ProviderError::Unsupported(format!(
                    "{MODEL_CREATE_RETIRED} (DigitalOcean answered: {})",
                    error_detail(&resp)
                )));
            }
            return Self::created(&resp, &scope);
        }
        let agent = segment(&scope.parent, "agent uuid")?;
        let resp = self
            .call(
                &format!("creating a key for agent {}", scope.parent),
                http::Call::new(
                    "create",
                    Idempotency::Unsafe,
                    &Method::POST,
                    &format!("/v2/gen-ai/agents/{agent}/api_keys"),
                )
                .json(Some(
                    &json!({ "agent_uuid": scope.parent, "name": settings.name }),
                )),
            )
            .await?;
        Self::created(&resp, &scope)
    }

    async fn list_page(
        &self,
        scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError> {
        let page: u64 = match cursor {
            None => 1,
            Some(c) => c.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
                ProviderError::Malformed(format!("{c:?} is not a DigitalOcean page number"))
            })?,
        };
        let path = format!("{}?page={page}&per_page={PAGE_SIZE}", collection(scope)?);
        let resp = self
            .call(
                &format!("listing {}", describe(scope)),
                http::Call::new("list", Idempotency::Safe, &Method::GET, &path),
            )
            .await?;
        let env: ListEnvelope = decode(&resp)?;
        let next = next_page(page, &env)?;
        let keys = env
            .api_key_infos
            .unwrap_or_default()
            .into_iter()
            .map(|i| provider_key(i, scope))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyPage {
            keys,
            next: next.map(|n| n.to_string()),
        })
    }

    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        if let Some(f) = fields.iter().find(|f| **f != Field::DisplayName) {
            return Err(ProviderError::Unsupported(format!(
                "DigitalOcean keys can only be renamed; {} cannot be changed",
                f.path()
            )));
        }
        if !fields.contains(&Field::DisplayName) {
            return self.get(scope, id).await;
        }
        let path = format!("{}/{}", collection(scope)?, segment(id, "key uuid")?);
        let body = if scope.family == FAMILY_AGENT {
            json!({ "agent_uuid": scope.parent, "api_key_uuid": id, "name": desired.name })
        } else {
            json!({ "api_key_uuid": id, "name": desired.name })
        };
        let resp = self
            .call(
                &format!("renaming key {id}"),
                http::Call::new("update", Idempotency::Safe, &Method::PUT, &path).json(Some(&body)),
            )
            .await?;
        let env: InfoEnvelope = decode(&resp)?;
        let info = env.api_key_info.ok_or_else(|| {
            ProviderError::Malformed("the rename answer has no api_key_info".into())
        })?;
        provider_key(info, scope)
    }

    async fn revoke(&self, scope: &KeyScope, id: &str) -> Result<(), ProviderError> {
        let path = format!("{}/{}", collection(scope)?, segment(id, "key uuid")?);
        // 200 with the deleted key in the body; the body adds nothing keysmith needs.
        self.call(
            &format!("deleting key {id}"),
            http::Call::new("revoke", Idempotency::Safe, &Method::DELETE, &path),
        )
        .await?;
        Ok(())
    }

    async fn regenerate(&self, scope: &KeyScope, id: &str) -> Result<CreatedKey, ProviderError> {
        let path = format!(
            "{}/{}/regenerate",
            collection(scope)?,
            segment(id, "key uuid")?
        );
        // Safe to repeat: a retry after a lost answer regenerates again and returns the value that
        // is live now (the lost one is dead either way).
        let resp = self
            .call(
                &format!("regenerating key {id}"),
                http::Call::new("regenerate", Idempotency::Safe, &Method::PUT, &path),
            )
            .await?;
        Self::created(&resp, scope)
    }

    fn extras_drift(&self, current: &ProviderKey, desired: &KeySettings) -> bool {
        // A key lives under one agent for good: a changed agentUUID cannot be applied in place.
        let want = desired
            .digitalocean
            .as_ref()
            .and_then(|d| d.agent_uuid.as_deref());
        match current.extras.get("agentUUID") {
            Some(have) => want != Some(have.as_str()),
            None => false,
        }
    }
}

// ---- wire types -------------------------------------------------------------------------------

/// `apiModelAPIKeyInfo` / `apiAgentAPIKeyInfo` (every field optional in the spec). No `Debug`:
/// it may hold a secret.
#[derive(Deserialize, Default)]
struct KeyInfo {
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    secret_key: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    deleted_at: Option<String>,
}

#[derive(Deserialize)]
struct InfoEnvelope {
    #[serde(default)]
    api_key_info: Option<KeyInfo>,
}

#[derive(Deserialize)]
struct ListEnvelope {
    #[serde(default)]
    api_key_infos: Option<Vec<KeyInfo>>,
    #[serde(default)]
    links: Option<Links>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    pages: Option<Pages>,
}

#[derive(Deserialize, Default)]
struct Pages {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    pages: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

// ---- pure helpers -----------------------------------------------------------------------------

/// Decode a body. The error names the position only: serde's own message may quote a value, and
/// these bodies can hold a secret.
fn decode<T: DeserializeOwned>(resp: &HttpResponse) -> Result<T, ProviderError> {
    serde_json::from_slice(&resp.body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "not the expected shape",
            serde_json::error::Category::Eof => "cut short",
        };
        ProviderError::Malformed(format!(
            "HTTP {} body is {kind} (line {}, column {})",
            resp.status.as_u16(),
            e.line(),
            e.column()
        ))
    })
}

/// The provider's words from an error body: `message (id, request_id …)`, or the raw body.
fn error_detail(resp: &HttpResponse) -> String {
    match serde_json::from_slice::<ErrorBody>(&resp.body) {
        Ok(b) if b.message.is_some() || b.id.is_some() => {
            let mut s = b.message.unwrap_or_default();
            let mut tags = Vec::new();
            if let Some(id) = b.id.filter(|i| !i.is_empty()) {
                tags.push(id);
            }
            if let Some(r) = b.request_id.filter(|r| !r.is_empty()) {
                tags.push(format!("request_id {r}"));
            }
            if !tags.is_empty() {
                s = format!("{s} ({})", tags.join(", "));
            }
            http::snippet(&s)
        }
        _ if resp.body.is_empty() => "(empty body)".into(),
        _ => resp.text_snippet(),
    }
}

/// The typed error for a non-2xx answer.
fn error_for(resp: &HttpResponse, what: &str) -> ProviderError {
    let code = resp.status.as_u16();
    let msg = http::snippet(&format!("{what}: HTTP {code}: {}", error_detail(resp)));
    match code {
        401 | 403 => ProviderError::Auth(msg),
        404 => ProviderError::NotFound(msg),
        410 => ProviderError::Unsupported(msg),
        429 => ProviderError::RateLimited {
            retry_after: http::rate_limit_wait(&resp.headers),
        },
        500..=599 => ProviderError::Unavailable(msg),
        400..=499 => ProviderError::Rejected(msg),
        _ => ProviderError::Malformed(format!("unexpected answer to {msg}")),
    }
}

/// A listed (or returned) key as keysmith sees it.
fn provider_key(info: KeyInfo, scope: &KeyScope) -> Result<ProviderKey, ProviderError> {
    let id = info
        .uuid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ProviderError::Malformed("a key in the answer has no uuid".into()))?;
    let deleted = info.deleted_at.as_deref().and_then(parse_time).is_some();
    let mut extras = Extras::new();
    if scope.family == FAMILY_AGENT {
        extras.insert("agentUUID".to_string(), scope.parent.clone());
    }
    Ok(ProviderKey {
        expires_at: None,
        id,
        name: info.name.unwrap_or_default(),
        hint: None,
        created_at: info.created_at.as_deref().and_then(parse_time),
        last_used_at: None,
        usage: None,
        active: !deleted,
        observed: ObservedSettings::default(),
        attempt: None,
        secret: None,
        extras,
    })
}

/// An RFC 3339 time; Go's zero time (`0001-01-01T00:00:00Z`) and empty strings count as none.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s.trim())
        .ok()?
        .with_timezone(&Utc);
    (t.year() > 1970).then_some(t)
}

/// The page after `requested`: from `links.pages.next` (its `page` query parameter, or the page
/// after the current one), else from `meta` when it says more pages follow; `None` at the end.
fn next_page(requested: u64, env: &ListEnvelope) -> Result<Option<u64>, ProviderError> {
    let meta = env.meta.as_ref();
    let current = meta.and_then(|m| m.page).unwrap_or(requested);
    let next_link = env
        .links
        .as_ref()
        .and_then(|l| l.pages.as_ref())
        .and_then(|p| p.next.as_deref())
        .filter(|n| !n.is_empty());
    let next = match next_link {
        Some(url) => Some(page_param(url).unwrap_or(current + 1)),
        None => match meta.and_then(|m| m.pages) {
            Some(pages) if current < pages => Some(current + 1),
            _ => None,
        },
    };
    match next {
        Some(n) if n <= current => Err(ProviderError::Malformed(format!(
            "the listing's next page ({n}) does not follow page {current}"
        ))),
        n => Ok(n),
    }
}

/// The `page` query parameter of a (possibly relative) link.
fn page_param(link: &str) -> Option<u64> {
    let base = url::Url::parse("https://api.digitalocean.com/").ok()?;
    let url = base.join(link).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse().ok())
}

/// The listing path of a scope.
fn collection(scope: &KeyScope) -> Result<String, ProviderError> {
    match scope.family.as_str() {
        FAMILY_AGENT => Ok(format!(
            "/v2/gen-ai/agents/{}/api_keys",
            segment(&scope.parent, "agent uuid")?
        )),
        "" | FAMILY_MODEL => Ok(MODEL_KEYS.into()),
        other => Err(ProviderError::Unsupported(format!(
            "DigitalOcean has no key family {other:?} (model or agent)"
        ))),
    }
}

fn describe(scope: &KeyScope) -> String {
    if scope.family == FAMILY_AGENT {
        format!("the keys of agent {}", scope.parent)
    } else {
        "the model keys".into()
    }
}

/// A path segment (uuid) that cannot change the path it is put in.
fn segment<'a>(s: &'a str, what: &str) -> Result<&'a str, ProviderError> {
    if !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(s)
    } else {
        Err(ProviderError::Rejected(format!(
            "{:?} is not a valid DigitalOcean {what}",
            http::snippet(s)
        )))
    }
}

/// `8-4-4-4-12` hex digits, the form of every DigitalOcean gen-ai uuid.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keysmith_api::{DigitalOceanKeySpec, SecretKeySelector};
    use reqwest::header::HeaderMap;
    use reqwest::StatusCode;

    const AGENT: &str = "1b418231-b7d6-11ef-bf8f-4e013e2ddde4";
    const KEY: &str = "11efb7d6-cdb5-6388-bf8f-4e013e2ddde4";

    fn client() -> DigitalOceanClient {
        let mut creds = BTreeMap::new();
        creds.insert("token".to_string(), SecretString::from("dop_v1_sekrit"));
        DigitalOceanClient::new(
            &DigitalOceanProvider {
                base_url: None,
                token_secret_ref: SecretKeySelector::default(),
            },
            Credentials(creds),
            ClientOptions::default(),
        )
        .unwrap()
    }

    fn settings(agent: Option<&str>, key_ref: Option<&str>) -> KeySettings {
        KeySettings {
            name: "team-a/chat".into(),
            digitalocean: agent.map(|a| DigitalOceanKeySpec {
                agent_uuid: Some(a.into()),
            }),
            key_ref: key_ref.map(String::from),
            ..Default::default()
        }
    }

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn uuids() {
        assert!(is_uuid(AGENT));
        assert!(is_uuid("123E4567-E89B-12D3-A456-426614174000"));
        assert!(!is_uuid("1b418231b7d611efbf8f4e013e2ddde4"));
        assert!(!is_uuid("1b418231-b7d6-11ef-bf8f-4e013e2ddde4/../x"));
        assert!(!is_uuid("zb418231-b7d6-11ef-bf8f-4e013e2ddde4"));
    }

    #[test]
    fn scope_follows_agent_uuid() {
        let c = client();
        assert_eq!(
            c.scope(&settings(None, Some(KEY))),
            KeyScope {
                family: "model".into(),
                parent: String::new()
            }
        );
        assert_eq!(
            c.scope(&settings(Some(AGENT), None)),
            KeyScope {
                family: "agent".into(),
                parent: AGENT.into()
            }
        );
        // An empty block is a model key too.
        let mut s = settings(None, Some(KEY));
        s.digitalocean = Some(DigitalOceanKeySpec { agent_uuid: None });
        assert_eq!(c.scope(&s).family, "model");
    }

    #[test]
    fn validate_refuses_model_key_without_key_ref() {
        let c = client();
        assert_eq!(
            c.validate(&settings(None, None)),
            vec![MODEL_CREATE_RETIRED.to_string()]
        );
        assert!(c.validate(&settings(None, Some(KEY))).is_empty());
        assert!(c.validate(&settings(Some(AGENT), None)).is_empty());
        assert!(c.validate(&settings(Some(AGENT), Some(KEY))).is_empty());
        let bad = c.validate(&settings(Some("agent-1"), None));
        assert_eq!(bad.len(), 1);
        assert!(bad[0].contains("spec.digitalocean.agentUUID"), "{bad:?}");
        let empty = c.validate(&settings(Some(""), None));
        assert!(empty[0].contains("is empty"), "{empty:?}");
        let bad_ref = c.validate(&settings(None, Some("../../v2/account")));
        assert!(bad_ref[0].contains("spec.keyRef.id"), "{bad_ref:?}");
    }

    #[test]
    fn capabilities_are_exact() {
        let c = client();
        let caps = c.capabilities();
        assert!(caps.mint && !caps.push && !caps.secret_readable);
        assert_eq!(caps.adopt, AdoptMode::Regenerate);
        assert_eq!(
            caps.supported,
            &[Field::DisplayName, Field::Extras, Field::KeyRef]
        );
        assert_eq!(caps.mutable, &[Field::DisplayName]);
        for f in [
            Field::Disabled,
            Field::ExpiresAt,
            Field::Ttl,
            Field::LimitAmount,
            Field::LimitReset,
            Field::AllowedIps,
            Field::Models,
            Field::Source,
        ] {
            assert!(!caps.supports(f), "{f:?}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let c = client();
        let d = format!("{c:?}");
        assert!(!d.contains("sekrit"), "{d}");
        assert!(d.contains("api.digitalocean.com"), "{d}");
    }

    #[test]
    fn empty_token_is_refused() {
        let mut creds = BTreeMap::new();
        creds.insert("token".to_string(), SecretString::from("  "));
        let err = DigitalOceanClient::new(
            &DigitalOceanProvider::default(),
            Credentials(creds),
            ClientOptions::default(),
        )
        .unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = DigitalOceanClient::new(
            &DigitalOceanProvider::default(),
            Credentials::default(),
            ClientOptions::default(),
        )
        .unwrap_err();
        assert!(err.contains("token"), "{err}");
    }

    #[test]
    fn errors_map_to_types() {
        let body =
            r#"{"id":"unauthorized","message":"Unable to authenticate you.","request_id":"r-1"}"#;
        match error_for(&resp(401, body), "listing") {
            ProviderError::Auth(m) => {
                assert!(m.contains("Unable to authenticate you."), "{m}");
                assert!(
                    m.contains("unauthorized") && m.contains("request_id r-1"),
                    "{m}"
                );
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            error_for(&resp(403, r#"{"id":"forbidden","message":"no"}"#), "x"),
            ProviderError::Auth(_)
        ));
        assert!(matches!(
            error_for(&resp(404, r#"{"id":"not_found","message":"gone"}"#), "x"),
            ProviderError::NotFound(_)
        ));
        for s in [400, 409, 422] {
            assert!(matches!(
                error_for(&resp(s, r#"{"id":"bad_request","message":"no"}"#), "x"),
                ProviderError::Rejected(_)
            ));
        }
        assert!(matches!(
            error_for(
                &resp(410, r#"{"id":"gone","message":"resource retired"}"#),
                "x"
            ),
            ProviderError::Unsupported(_)
        ));
        assert!(matches!(
            error_for(&resp(502, "<html>bad gateway</html>"), "x"),
            // A body that is not DigitalOcean's error JSON is described, never quoted.
            ProviderError::Unavailable(m) if !m.contains("bad gateway") && m.contains("not shown")
        ));
        let mut r = resp(
            429,
            r#"{"id":"too_many_requests","message":"API rate limit exceeded."}"#,
        );
        r.headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            error_for(&r, "x"),
            ProviderError::RateLimited {
                retry_after: Some(std::time::Duration::from_secs(7))
            }
        );
        assert!(matches!(
            error_for(&resp(500, ""), "x"),
            ProviderError::Unavailable(m) if m.contains("empty body")
        ));
    }

    #[test]
    fn decode_errors_never_quote_the_body() {
        let r = resp(
            200,
            r#"{"api_key_info":{"uuid":"u","secret_key":12345678987654321}}"#,
        );
        let err = decode::<InfoEnvelope>(&r).err().unwrap();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, ProviderError::Malformed(_)));
        assert!(!text.contains("12345678987654321"), "{text}");
    }

    #[test]
    fn created_key_needs_a_secret() {
        let scope = KeyScope::default();
        let r = resp(
            200,
            r#"{"api_key_info":{"uuid":"u","name":"n","secret_key":""}}"#,
        );
        assert!(matches!(
            DigitalOceanClient::created(&r, &scope),
            Err(ProviderError::Malformed(_))
        ));
        let r = resp(
            200,
            r#"{"api_key_info":{"uuid":"u","name":"n","secret_key":"sk-do-abc","created_at":"2025-05-01T00:00:00Z"}}"#,
        );
        let c = DigitalOceanClient::created(&r, &scope).unwrap();
        assert_eq!(c.secret.expose_secret(), "sk-do-abc");
        assert_eq!(c.key.id, "u");
        assert_eq!(
            c.key.created_at.unwrap().to_rfc3339(),
            "2025-05-01T00:00:00+00:00"
        );
        assert!(c.key.active && c.key.hint.is_none());
        assert!(!format!("{c:?}").contains("sk-do-abc"));
    }

    #[test]
    fn listed_keys() {
        let scope = KeyScope {
            family: FAMILY_AGENT.into(),
            parent: AGENT.into(),
        };
        let k = provider_key(
            serde_json::from_str(
                r#"{"uuid":"a","name":"n","secret_key":"","created_at":"2025-05-01T10:00:00Z","created_by":"12345","deleted_at":null}"#,
            )
            .unwrap(),
            &scope,
        )
        .unwrap();
        assert!(k.active);
        assert_eq!(k.extras.get("agentUUID").map(String::as_str), Some(AGENT));
        let zero = provider_key(
            serde_json::from_str(r#"{"uuid":"a","deleted_at":"0001-01-01T00:00:00Z"}"#).unwrap(),
            &scope,
        )
        .unwrap();
        assert!(zero.active);
        let gone = provider_key(
            serde_json::from_str(r#"{"uuid":"a","deleted_at":"2025-06-01T00:00:00Z"}"#).unwrap(),
            &scope,
        )
        .unwrap();
        assert!(!gone.active);
        assert!(provider_key(serde_json::from_str(r#"{"name":"x"}"#).unwrap(), &scope).is_err());
    }

    #[test]
    fn pagination_follows_links_then_meta() {
        let env = |s: &str| serde_json::from_str::<ListEnvelope>(s).unwrap();
        let e = env(
            r#"{"api_key_infos":[],"links":{"pages":{"next":"https://api.digitalocean.com/v2/gen-ai/models/api_keys?page=2&per_page=200","last":"x"}},"meta":{"page":1,"pages":3,"total":450}}"#,
        );
        assert_eq!(next_page(1, &e).unwrap(), Some(2));
        let e = env(
            r#"{"links":{"pages":{"next":"/v2/gen-ai/models/api_keys?per_page=200&page=3"}},"meta":{"page":2}}"#,
        );
        assert_eq!(next_page(2, &e).unwrap(), Some(3));
        // A next link without a page parameter: the page after the current one.
        let e = env(r#"{"links":{"pages":{"next":"opaque"}},"meta":{"page":4}}"#);
        assert_eq!(next_page(4, &e).unwrap(), Some(5));
        // No links, meta says more.
        let e = env(r#"{"meta":{"page":1,"pages":2,"total":300}}"#);
        assert_eq!(next_page(1, &e).unwrap(), Some(2));
        // Last page, single page, empty body.
        let e =
            env(r#"{"links":{"pages":{"first":"a","previous":"b"}},"meta":{"page":3,"pages":3}}"#);
        assert_eq!(next_page(3, &e).unwrap(), None);
        assert_eq!(next_page(1, &env(r#"{"links":{}}"#)).unwrap(), None);
        assert_eq!(next_page(1, &env("{}")).unwrap(), None);
        // A link that goes backwards would loop forever.
        let e = env(r#"{"links":{"pages":{"next":"?page=1"}},"meta":{"page":1}}"#);
        assert!(matches!(next_page(1, &e), Err(ProviderError::Malformed(_))));
    }

    #[test]
    fn paths_are_safe() {
        assert_eq!(
            collection(&KeyScope::default()).unwrap(),
            "/v2/gen-ai/models/api_keys"
        );
        assert_eq!(
            collection(&KeyScope {
                family: "agent".into(),
                parent: AGENT.into()
            })
            .unwrap(),
            format!("/v2/gen-ai/agents/{AGENT}/api_keys")
        );
        assert!(collection(&KeyScope {
            family: "agent".into(),
            parent: "../x".into()
        })
        .is_err());
        assert!(collection(&KeyScope {
            family: "agent".into(),
            parent: String::new()
        })
        .is_err());
        assert!(collection(&KeyScope {
            family: "virtual".into(),
            parent: String::new()
        })
        .is_err());
        assert!(segment("a/b", "key uuid").is_err());
        assert!(segment("a?b", "key uuid").is_err());
    }

    #[test]
    fn agent_change_is_extras_drift() {
        let c = client();
        let mut k = ProviderKey::default();
        k.extras.insert("agentUUID".into(), AGENT.into());
        assert!(!c.extras_drift(&k, &settings(Some(AGENT), None)));
        assert!(c.extras_drift(
            &k,
            &settings(Some("2b418231-b7d6-11ef-bf8f-4e013e2ddde4"), None)
        ));
        assert!(!c.extras_drift(&ProviderKey::default(), &settings(None, Some(KEY))));
    }
}
