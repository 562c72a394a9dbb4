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

/// The fields Bifrost honours when a key is created (virtual keys: all of them; provider keys:
/// name, disabled, models and the block — `validate` rejects a limit on a provider key).
const SUPPORTED: &[Field] = &[
    Field::DisplayName,
    Field::Disabled,
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

    // ---- virtual keys -------------------------------------------------------------------------

    async fn vk_get(&self, id: &str) -> Result<VirtualKey, ProviderError> {
        let resp = self
            .call(
                "get_virtual_key",
                Idempotency::Safe,
                Method::GET,
                &format!("{VK_PATH}/{}", seg(id)?),
                None,
            )
            .await?;
        Ok(resp.json::<VkEnvelope>()?.virtual_key)
    }

    async fn vk_list_page(&self, cursor: Option<&str>) -> Result<KeyPage, ProviderError> {
        let offset: usize = match cursor {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| ProviderError::Rejected(format!("bad page cursor {c:?}")))?,
        };
        let resp = self
            .call(
                "list_virtual_keys",
                Idempotency::Safe,
                Method::GET,
                &format!("{VK_PATH}?limit={PAGE_SIZE}&offset={offset}"),
                None,
            )
            .await?;
        let list: VkList = resp.json()?;
        let count = list.count.unwrap_or(list.virtual_keys.len());
        let next = match list.total_count {
            // A gateway that ignores paging answers everything at once, without total_count.
            Some(total) if count > 0 && offset + count < total => {
                Some((offset + count).to_string())
            }
            _ => None,
        };
        Ok(KeyPage {
            keys: list
                .virtual_keys
                .into_iter()
                .map(VirtualKey::into_key)
                .collect(),
            next,
        })
    }

    async fn vk_create(&self, s: &KeySettings) -> Result<CreatedKey, ProviderError> {
        let b = s.bifrost.clone().unwrap_or_default();
        let mut body = json!({
            "name": s.name,
            "description": compose_description(b.description.as_deref(), s.attempt.as_deref()),
            "is_active": !s.disabled,
        });
        if let Some(l) = &s.limit {
            body["budgets"] = budgets_json(l)?;
        }
        if let Some(pc) = desired_provider_configs(s) {
            body["provider_configs"] = provider_configs_json(&pc);
        }
        if let Some(rl) = &b.rate_limit {
            body["rate_limit"] = rate_limit_json(rl);
        }
        let resp = self
            .call(
                "create_virtual_key",
                Idempotency::Unsafe,
                Method::POST,
                VK_PATH,
                Some(&body),
            )
            .await?;
        created_from(resp.json::<VkEnvelope>()?.virtual_key, "create")
    }

    async fn vk_update(
        &self,
        id: &str,
        d: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        let b = d.bifrost.clone().unwrap_or_default();
        let mut body = json!({});
        for f in fields {
            match f {
                Field::DisplayName => body["name"] = json!(d.name),
                Field::Disabled => body["is_active"] = json!(!d.disabled),
                Field::LimitAmount | Field::LimitReset => {
                    // Budgets replace the key's budgets; an empty list removes them.
                    body["budgets"] = match &d.limit {
                        Some(l) => budgets_json(l)?,
                        None => json!([]),
                    };
                }
                Field::Models | Field::Extras => {
                    if let Some(pc) = desired_provider_configs(d) {
                        body["provider_configs"] = provider_configs_json(&pc);
                    }
                    if *f == Field::Extras {
                        if let Some(rl) = &b.rate_limit {
                            body["rate_limit"] = rate_limit_json(rl);
                        }
                        if let Some(desc) = &b.description {
                            // Keep the create attempt marker the key was made with.
                            let attempt = match &d.attempt {
                                Some(a) => Some(a.clone()),
                                None => {
                                    let cur = self.vk_get(id).await?;
                                    parse_description(cur.description.as_deref().unwrap_or("")).1
                                }
                            };
                            body["description"] =
                                json!(compose_description(Some(desc), attempt.as_deref()));
                        }
                    }
                }
                // Not supported at Bifrost; the controller never asks (see capabilities).
                _ => {}
            }
        }
        if body.as_object().is_some_and(|o| o.is_empty()) {
            return Ok(self.vk_get(id).await?.into_key());
        }
        let resp = self
            .call(
                "update_virtual_key",
                Idempotency::Safe,
                Method::PUT,
                &format!("{VK_PATH}/{}", seg(id)?),
                Some(&body),
            )
            .await?;
        Ok(resp.json::<VkEnvelope>()?.virtual_key.into_key())
    }

    async fn vk_rotate(&self, id: &str) -> Result<CreatedKey, ProviderError> {
        // Safe to repeat: every answer holds the key's current value, so a retried rotate only
        // rotates once more and still returns the value that works.
        let result = self
            .call(
                "rotate_virtual_key",
                Idempotency::Safe,
                Method::POST,
                &format!("{VK_PATH}/{}/rotate", seg(id)?),
                // The published operation takes no request body.
                None,
            )
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(ProviderError::NotFound(msg)) => {
                // Either the key is gone or this gateway predates the rotate route.
                return match self.vk_get(id).await {
                    Ok(_) => Err(no_rotate()),
                    Err(ProviderError::NotFound(_)) => Err(ProviderError::NotFound(msg)),
                    Err(e) => Err(e),
                };
            }
            Err(ProviderError::Unsupported(_)) => return Err(no_rotate()),
            Err(e) => return Err(e),
        };
        if !is_json(&resp) {
            // Some builds serve the web UI for unknown routes.
            return Err(no_rotate());
        }
        created_from(resp.json::<VkEnvelope>()?.virtual_key, "rotate")
    }

    async fn vk_delete(&self, id: &str) -> Result<(), ProviderError> {
        self.call(
            "delete_virtual_key",
            Idempotency::Safe,
            Method::DELETE,
            &format!("{VK_PATH}/{}", seg(id)?),
            None,
        )
        .await
        .map(|_| ())
    }

    // ---- provider keys ------------------------------------------------------------------------

    async fn pk_get(&self, provider: &str, id: &str) -> Result<ProviderKeyJson, ProviderError> {
        self.pk_get_json(provider, id).await
    }

    /// `GET /api/providers/{provider}/keys/{id}`, decoded as `T` (the typed key, or the raw
    /// object an update starts from).
    async fn pk_get_json<T: serde::de::DeserializeOwned>(
        &self,
        provider: &str,
        id: &str,
    ) -> Result<T, ProviderError> {
        self.call(
            "get_provider_key",
            Idempotency::Safe,
            Method::GET,
            &pk_path(provider, Some(id))?,
            None,
        )
        .await?
        .json()
    }

    async fn pk_list(&self, provider: &str) -> Result<Vec<ProviderKey>, ProviderError> {
        if provider.is_empty() {
            // No parent: the read-only flat list of every provider's keys.
            let resp = self
                .call(
                    "list_all_provider_keys",
                    Idempotency::Safe,
                    Method::GET,
                    "/api/keys",
                    None,
                )
                .await?;
            let rows: Vec<FlatKeyRow> = resp.json()?;
            return Ok(rows.into_iter().map(FlatKeyRow::into_key).collect());
        }
        let resp = self
            .call(
                "list_provider_keys",
                Idempotency::Safe,
                Method::GET,
                &pk_path(provider, None)?,
                None,
            )
            .await?;
        let list: ProviderKeyList = resp.json()?;
        Ok(list
            .keys
            .into_iter()
            .map(|k| k.into_key(provider))
            .collect())
    }

    /// Who holds a key name, from the flat list (for a clear 409 message).
    async fn pk_name_holder(&self, name: &str) -> Option<FlatKeyRow> {
        let resp = self
            .call(
                "list_all_provider_keys",
                Idempotency::Safe,
                Method::GET,
                "/api/keys",
                None,
            )
            .await
            .ok()?;
        let rows: Vec<FlatKeyRow> = resp.json().ok()?;
        rows.into_iter().find(|r| r.name == name)
    }

    /// PUT a provider key; `secret`: the pushed value the body carries, if any.
    async fn pk_put(
        &self,
        provider: &str,
        id: &str,
        body: &Value,
        secret: Option<&SecretString>,
    ) -> Result<ProviderKey, ProviderError> {
        let resp = self
            .call_with(
                "update_provider_key",
                Idempotency::Safe,
                Method::PUT,
                &pk_path(provider, Some(id))?,
                Some(body),
                secret,
                &[],
            )
            .await?;
        Ok(resp.json::<ProviderKeyJson>()?.into_key(provider))
    }

    async fn pk_push(
        &self,
        s: &KeySettings,
        value: &SecretString,
        existing: Option<&str>,
    ) -> Result<ProviderKey, ProviderError> {
        let b = s.bifrost.clone().unwrap_or_default();
        let provider = b
            .provider
            .clone()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                ProviderError::Rejected(
                    "spec.bifrost.provider is required for a provider key (e.g. openai)".into(),
                )
            })?;
        if value.expose_secret().is_empty() {
            return Err(ProviderError::Rejected(
                "the value in spec.source.secretRef is empty".into(),
            ));
        }
        let id = match existing {
            Some(id) => id.to_string(),
            None => {
                if s.uid.is_empty() {
                    return Err(ProviderError::Rejected(
                        "the ApiKey has no uid to derive the provider key id from".into(),
                    ));
                }
                provider_key_id(&s.uid, &provider)
            }
        };
        let body = provider_key_body(s, &b, &id, value);
        if existing.is_some() {
            match self.pk_put(&provider, &id, &body, Some(value)).await {
                // Deleted behind keysmith's back: register it again under the same id (an
                // unknown provider answers 404 to the create too).
                Err(ProviderError::NotFound(_)) => {}
                other => return other,
            }
        }
        let resp = self
            .call_with(
                "create_provider_key",
                Idempotency::Unsafe,
                Method::POST,
                &pk_path(&provider, None)?,
                Some(&body),
                Some(value),
                &[StatusCode::CONFLICT],
            )
            .await?;
        if resp.status.is_success() {
            return Ok(resp.json::<ProviderKeyJson>()?.into_key(&provider));
        }
        let err = error_with(&resp, Some(value));
        if resp.status != StatusCode::CONFLICT {
            return Err(err);
        }
        // 409: either our own id (a repeated create) or a name another key holds.
        match self.pk_get(&provider, &id).await {
            Ok(_) => self.pk_put(&provider, &id, &body, Some(value)).await,
            Err(ProviderError::NotFound(_)) => {
                let holder = self.pk_name_holder(&s.name).await;
                Err(ProviderError::Rejected(match holder {
                    // Another key holds the name: said without naming that key (its id and
                    // provider belong to whoever made it, maybe another tenant).
                    Some(h) if h.id() != id => format!(
                        "the name {:?} is taken by another key at the gateway; Bifrost key names are unique across providers: choose another spec.displayName",
                        http::snippet(&s.name),
                    ),
                    _ => format!(
                        "the gateway refused provider key {id} for {provider} ({err}): its id or the name {:?} is taken by another key, possibly under another provider",
                        s.name
                    ),
                }))
            }
            Err(e) => Err(e),
        }
    }

    async fn pk_update(
        &self,
        provider: &str,
        id: &str,
        d: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError> {
        // A provider-key PUT is a full object: start from what the gateway has. The redacted
        // value (and redacted config secrets) sent back are kept by the gateway.
        let mut body: Value = self.pk_get_json(provider, id).await?;
        if !body.is_object() {
            return Err(ProviderError::Malformed(
                "provider key is not a JSON object".into(),
            ));
        }
        let b = d.bifrost.clone().unwrap_or_default();
        for f in fields {
            match f {
                Field::DisplayName => body["name"] = json!(d.name),
                Field::Disabled => body["enabled"] = json!(!d.disabled),
                Field::Models => body["models"] = json!(provider_key_models(&d.models)),
                Field::Extras => {
                    if let Some(w) = b.weight {
                        body["weight"] = json!(w);
                    }
                    if let Some(desc) = &b.description {
                        body["description"] = json!(desc);
                    }
                    copy_cloud_configs(&mut body, &b);
                }
                _ => {}
            }
        }
        self.pk_put(provider, id, &body, None).await
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
}

// ---- pure helpers ---------------------------------------------------------------------------

fn no_rotate() -> ProviderError {
    ProviderError::Unsupported(
        "this Bifrost gateway has no virtual-key rotate route (POST /api/governance/virtual-keys/{id}/rotate); upgrade it or replace the key".into(),
    )
}

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

fn pk_path(provider: &str, id: Option<&str>) -> Result<String, ProviderError> {
    Ok(match id {
        Some(id) => format!("/api/providers/{}/keys/{}", seg(provider)?, seg(id)?),
        None => format!("/api/providers/{}/keys", seg(provider)?),
    })
}

/// The provider-key id keysmith uses for an ApiKey: a name-based UUID (version 5 layout, SHA-1)
/// of the ApiKey's uid and the upstream provider, so that every push of the same ApiKey targets
/// the same key and a repeated create is recognised by its 409.
pub fn provider_key_id(uid: &str, provider: &str) -> String {
    let digest = Sha1::digest(format!(
        "keysmith.dev/bifrost-provider-key/{uid}/{provider}"
    ));
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}

/// The description of a keysmith-made virtual key: the user's text, then the marker with the
/// create attempt (`team-a chat | managed by keysmith (attempt 5f2c…)`).
pub fn compose_description(user: Option<&str>, attempt: Option<&str>) -> String {
    let marker = match attempt {
        Some(a) if !a.is_empty() => format!("{MARKER} (attempt {a})"),
        _ => MARKER.to_string(),
    };
    match user.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => format!("{u} | {marker}"),
        None => marker,
    }
}

/// Split a description into the user's text and the create attempt (inverse of
/// [`compose_description`]; a description keysmith did not write is all user text).
pub fn parse_description(d: &str) -> (String, Option<String>) {
    let Some(pos) = d.rfind(MARKER) else {
        return (d.to_string(), None);
    };
    let tail = &d[pos + MARKER.len()..];
    let attempt = if tail.is_empty() {
        None
    } else if let Some(a) = tail
        .strip_prefix(" (attempt ")
        .and_then(|t| t.strip_suffix(')'))
    {
        Some(a.to_string())
    } else {
        // The marker words appear inside the user's own text.
        return (d.to_string(), None);
    };
    let user = d[..pos].trim_end();
    let user = user.strip_suffix('|').unwrap_or(user).trim_end();
    (user.to_string(), attempt)
}

/// Neutral reset → Bifrost budget window.
pub fn reset_window(r: Option<LimitReset>) -> &'static str {
    match r {
        Some(LimitReset::Daily) => "1d",
        Some(LimitReset::Weekly) => "1w",
        Some(LimitReset::Monthly) => "1M",
        Some(LimitReset::Never) | None => NEVER_WINDOW,
    }
}

/// Bifrost budget window → neutral reset (`None` for windows keysmith does not name, e.g. `1h`).
pub fn window_reset(w: &str) -> Option<LimitReset> {
    match w {
        "1d" => Some(LimitReset::Daily),
        "1w" => Some(LimitReset::Weekly),
        "1M" => Some(LimitReset::Monthly),
        NEVER_WINDOW => Some(LimitReset::Never),
        _ => None,
    }
}

/// A Bifrost duration: a positive count and one of `s m h d w M Y`.
pub fn valid_window(w: &str) -> bool {
    let Some(unit) = w.chars().last() else {
        return false;
    };
    let num = &w[..w.len() - unit.len_utf8()];
    matches!(unit, 's' | 'm' | 'h' | 'd' | 'w' | 'M' | 'Y')
        && !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit())
        && num.parse::<u64>().is_ok_and(|n| n > 0)
}

fn budgets_json(l: &Limit) -> Result<Value, ProviderError> {
    let amount: f64 = l.amount.parse().map_err(|_| {
        ProviderError::Rejected(format!("spec.limit.amount {:?} is not a number", l.amount))
    })?;
    Ok(json!([{ "max_limit": amount, "reset_duration": reset_window(l.reset) }]))
}

fn rate_limit_json(rl: &BifrostRateLimit) -> Value {
    let mut v = json!({});
    if let Some(x) = rl.token_max_limit {
        v["token_max_limit"] = json!(x);
    }
    if let Some(x) = &rl.token_reset_duration {
        v["token_reset_duration"] = json!(x);
    }
    if let Some(x) = rl.request_max_limit {
        v["request_max_limit"] = json!(x);
    }
    if let Some(x) = &rl.request_reset_duration {
        v["request_reset_duration"] = json!(x);
    }
    v
}

/// One provider entry of a virtual key, as keysmith compares them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfigView {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ids: Option<Vec<String>>,
}

/// The provider configs a virtual key should have, or `None` when the ApiKey leaves them to the
/// gateway (neither `spec.models` nor `spec.bifrost.providerConfigs` is set).
///
/// * `spec.bifrost.providerConfigs` is sent as written; an empty `allowedModels` or `keyIDs`
///   means all (`["*"]`) and an absent weight is 1.
/// * Otherwise `spec.models` (`provider/model`, `provider/*`) is grouped by provider into one
///   config per provider, allowed to use every key of that provider.
pub fn desired_provider_configs(s: &KeySettings) -> Option<Vec<ProviderConfigView>> {
    let all = || vec!["*".to_string()];
    let configs = s
        .bifrost
        .as_ref()
        .map(|b| b.provider_configs.as_slice())
        .unwrap_or_default();
    if !configs.is_empty() {
        return Some(
            configs
                .iter()
                .map(|c| ProviderConfigView {
                    provider: c.provider.clone(),
                    weight: Some(c.weight.unwrap_or(1.0)),
                    allowed_models: Some(if c.allowed_models.is_empty() {
                        all()
                    } else {
                        c.allowed_models.clone()
                    }),
                    key_ids: Some(if c.key_ids.is_empty() {
                        all()
                    } else {
                        c.key_ids.clone()
                    }),
                })
                .collect(),
        );
    }
    if s.models.is_empty() {
        return None;
    }
    let mut by_provider: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &s.models {
        if let Some((p, model)) = m.split_once('/') {
            by_provider
                .entry(p.to_string())
                .or_default()
                .insert(model.to_string());
        }
    }
    Some(
        by_provider
            .into_iter()
            .map(|(provider, models)| {
                let models: Vec<String> = if models.contains("*") {
                    all()
                } else {
                    models.into_iter().collect()
                };
                ProviderConfigView {
                    provider,
                    weight: Some(1.0),
                    allowed_models: Some(models),
                    key_ids: Some(all()),
                }
            })
            .collect(),
    )
}

fn provider_configs_json(pc: &[ProviderConfigView]) -> Value {
    Value::Array(
        pc.iter()
            .map(|c| {
                json!({
                    "provider": c.provider,
                    "weight": c.weight.unwrap_or(1.0),
                    "allowed_models": c.allowed_models.clone().unwrap_or_default(),
                    "key_ids": c.key_ids.clone().unwrap_or_default(),
                })
            })
            .collect(),
    )
}

/// How a provider key that allows no model (`"models": []`, Bifrost v1.5+) is observed.
pub const DENY_ALL_MODELS: &str = "(no models: Bifrost v1.5+ reads [] as deny-all)";

/// Models of a provider key: empty (the neutral "every model") is sent as `["*"]`, never as
/// `[]`, which Bifrost v1.5+ reads as "no model".
fn provider_key_models(models: &[String]) -> Vec<String> {
    if models.is_empty() {
        vec!["*".into()]
    } else {
        models.to_vec()
    }
}

fn provider_key_body(s: &KeySettings, b: &BifrostKeySpec, id: &str, value: &SecretString) -> Value {
    let mut body = json!({
        "id": id,
        "name": s.name,
        "value": value.expose_secret(),
        "models": provider_key_models(&s.models),
        "weight": b.weight.unwrap_or(1.0),
        "enabled": !s.disabled,
    });
    if let Some(d) = &b.description {
        body["description"] = json!(d);
    }
    copy_cloud_configs(&mut body, b);
    body
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

/// Problems with the settings that no call can fix.
pub fn validate_settings(s: &KeySettings) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.bifrost.clone().unwrap_or_default();
    let upstream = b.provider.clone().unwrap_or_default();
    let provider_family = s.pushed || !upstream.is_empty();
    if let Some(w) = b.weight {
        if !w.is_finite() || w < 0.0 {
            out.push(format!(
                "spec.bifrost.weight {w} must be a non-negative number"
            ));
        }
    }
    if provider_family {
        if !s.pushed {
            out.push(
                "spec.bifrost.provider makes this a Bifrost provider key, whose value you own: set spec.source.secretRef to the Secret holding it (or remove spec.bifrost.provider to mint a virtual key)".into(),
            );
        }
        if upstream.trim().is_empty() {
            out.push(
                "spec.bifrost.provider is required for a provider key pushed from spec.source: name the upstream provider (e.g. openai, anthropic, azure)".into(),
            );
        }
        if s.limit.is_some() {
            out.push(
                "spec.limit: Bifrost provider keys have no budget; put the limit on a virtual key (an ApiKey without spec.source)".into(),
            );
        }
        if !b.provider_configs.is_empty() {
            out.push(
                "spec.bifrost.providerConfigs applies to virtual keys only; a provider key is restricted with spec.models".into(),
            );
        }
        if b.rate_limit.is_some() {
            out.push("spec.bifrost.rateLimit applies to virtual keys only".into());
        }
        return out;
    }
    // Virtual keys.
    for (field, set) in [
        ("weight", b.weight.is_some()),
        ("azureKeyConfig", b.azure_key_config.is_some()),
        ("vertexKeyConfig", b.vertex_key_config.is_some()),
        ("bedrockKeyConfig", b.bedrock_key_config.is_some()),
    ] {
        if set {
            out.push(format!(
                "spec.bifrost.{field} applies to provider keys (pushed with spec.source and spec.bifrost.provider), not to virtual keys"
            ));
        }
    }
    if !b.provider_configs.is_empty() && !s.models.is_empty() {
        out.push(
            "set either spec.models (provider/model) or spec.bifrost.providerConfigs[].allowedModels, not both".into(),
        );
    }
    for m in &s.models {
        match m.split_once('/') {
            Some((p, model)) if !p.is_empty() && !model.is_empty() => {}
            _ => out.push(format!(
                "spec.models entry {m:?}: Bifrost virtual keys need provider/model (e.g. openai/gpt-4o, or openai/* for all of a provider)"
            )),
        }
    }
    let mut seen = BTreeSet::new();
    for (i, c) in b.provider_configs.iter().enumerate() {
        if c.provider.trim().is_empty() {
            out.push(format!(
                "spec.bifrost.providerConfigs[{i}].provider must not be empty"
            ));
        } else if !seen.insert(c.provider.clone()) {
            out.push(format!(
                "spec.bifrost.providerConfigs: provider {:?} is listed twice",
                c.provider
            ));
        }
        if let Some(w) = c.weight {
            if !w.is_finite() || w < 0.0 {
                out.push(format!(
                    "spec.bifrost.providerConfigs[{i}].weight {w} must be a non-negative number"
                ));
            }
        }
    }
    if let Some(rl) = &b.rate_limit {
        let pairs = [
            ("token", rl.token_max_limit, &rl.token_reset_duration),
            ("request", rl.request_max_limit, &rl.request_reset_duration),
        ];
        let mut any = false;
        for (what, max, window) in pairs {
            match (max, window) {
                (None, None) => {}
                (Some(m), Some(w)) => {
                    any = true;
                    if m < 0 {
                        out.push(format!(
                            "spec.bifrost.rateLimit.{what}MaxLimit must not be negative"
                        ));
                    }
                    if !valid_window(w) {
                        out.push(format!(
                            "spec.bifrost.rateLimit.{what}ResetDuration {w:?} is not a Bifrost duration (30s, 5m, 1h, 1d, 1w, 1M, 1Y)"
                        ));
                    }
                }
                (Some(_), None) => out.push(format!(
                    "spec.bifrost.rateLimit.{what}MaxLimit needs {what}ResetDuration"
                )),
                (None, Some(_)) => out.push(format!(
                    "spec.bifrost.rateLimit.{what}ResetDuration needs {what}MaxLimit"
                )),
            }
        }
        if !any && out.is_empty() {
            out.push(
                "spec.bifrost.rateLimit sets no limit: give tokenMaxLimit/tokenResetDuration or requestMaxLimit/requestResetDuration".into(),
            );
        }
    }
    if let Some(l) = &s.limit {
        if l.amount.parse::<f64>().is_err() {
            out.push(format!("spec.limit.amount {:?} is not a number", l.amount));
        }
    }
    out
}

/// Whether the provider block differs between the key and the spec (fields the spec leaves
/// unset are not managed and never differ).
pub fn extras_differ(current: &ProviderKey, d: &KeySettings) -> bool {
    let b = d.bifrost.clone().unwrap_or_default();
    let ex = &current.extras;
    if let Some(desc) = &b.description {
        if ex.get("description").map(String::as_str).unwrap_or("") != desc.trim() {
            return true;
        }
    }
    if ex.get("family").map(String::as_str) == Some(FAMILY_PROVIDER) {
        if let Some(w) = b.weight {
            let cur = ex
                .get("weight")
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(1.0);
            if (cur - w).abs() > 1e-9 {
                return true;
            }
        }
        return false;
    }
    if let Some(want) = desired_provider_configs(d) {
        let have: Vec<ProviderConfigView> = ex
            .get("providerConfigs")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        if !configs_match(&have, &want) {
            return true;
        }
    }
    if let Some(rl) = &b.rate_limit {
        let have: Option<BifrostRateLimit> = ex
            .get("rateLimit")
            .and_then(|s| serde_json::from_str(s).ok());
        if have.as_ref() != Some(rl) {
            return true;
        }
    }
    false
}

/// Compare observed provider configs with desired ones; a field the gateway does not report is
/// not compared.
fn configs_match(have: &[ProviderConfigView], want: &[ProviderConfigView]) -> bool {
    if have.len() != want.len() {
        return false;
    }
    let sorted = |v: &Option<Vec<String>>| {
        v.as_ref().map(|v| {
            let mut v = v.clone();
            v.sort();
            v
        })
    };
    want.iter().all(|w| {
        let Some(h) = have.iter().find(|h| h.provider == w.provider) else {
            return false;
        };
        let weight_ok = match (h.weight, w.weight) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            _ => true,
        };
        let models_ok =
            h.allowed_models.is_none() || sorted(&h.allowed_models) == sorted(&w.allowed_models);
        let keys_ok = h.key_ids.is_none() || sorted(&h.key_ids) == sorted(&w.key_ids);
        weight_ok && models_ok && keys_ok
    })
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

fn created_from(vk: VirtualKey, what: &str) -> Result<CreatedKey, ProviderError> {
    let secret = vk
        .value
        .as_ref()
        .map(|v| v.0.clone())
        .filter(|v| !v.expose_secret().is_empty() && !is_redacted(v.expose_secret()))
        .ok_or_else(|| {
            ProviderError::Malformed(format!(
                "the gateway answered the virtual-key {what} without the key's value"
            ))
        })?;
    Ok(CreatedKey {
        key: vk.into_key(),
        secret,
    })
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

#[derive(Deserialize)]
struct VkEnvelope {
    virtual_key: VirtualKey,
}

#[derive(Deserialize)]
struct VkList {
    #[serde(default)]
    virtual_keys: Vec<VirtualKey>,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    total_count: Option<usize>,
}

#[derive(Deserialize)]
struct VirtualKey {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: Option<SecretField>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    is_active: bool,
    #[serde(default)]
    provider_configs: Option<Vec<VkProviderConfig>>,
    #[serde(default)]
    budgets: Option<Vec<Budget>>,
    /// Older builds: one budget.
    #[serde(default)]
    budget: Option<Budget>,
    #[serde(default)]
    rate_limit: Option<VkRateLimit>,
    #[serde(default)]
    created_at: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct VkProviderConfig {
    provider: String,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    allowed_models: Option<Vec<String>>,
    /// Older gateways echo the request's `key_ids`; the published schema answers with
    /// `allow_all_keys` and `keys` (table rows) instead.
    #[serde(default)]
    key_ids: Option<Vec<String>>,
    #[serde(default)]
    allow_all_keys: Option<bool>,
    #[serde(default)]
    keys: Option<Vec<TableKeyRef>>,
}

#[derive(Deserialize)]
struct TableKeyRef {
    #[serde(default)]
    key_id: Option<String>,
}

impl VkProviderConfig {
    /// The key ids the config allows, as a request spells them (`["*"]`: all).
    fn key_ids(&self) -> Option<Vec<String>> {
        if let Some(ids) = &self.key_ids {
            return Some(ids.clone());
        }
        if self.allow_all_keys == Some(true) {
            return Some(vec!["*".to_string()]);
        }
        match (&self.keys, self.allow_all_keys) {
            (Some(keys), _) => Some(keys.iter().filter_map(|k| k.key_id.clone()).collect()),
            (None, Some(false)) => Some(Vec::new()),
            (None, _) => None,
        }
    }
}

#[derive(Deserialize)]
struct Budget {
    #[serde(default)]
    max_limit: f64,
    #[serde(default)]
    reset_duration: String,
    #[serde(default)]
    current_usage: f64,
    /// When the counter last reset (RFC 3339); the next reset is one window later.
    #[serde(default)]
    last_reset: Option<String>,
}

impl Budget {
    /// When the counter resets next: `last_reset` plus the window (Bifrost counts `M` as 30
    /// days and `Y` as 365); `None` when either is unreadable.
    fn resets_at(&self) -> Option<String> {
        let last = parse_time(&self.last_reset)?;
        let w = self.reset_duration.as_str();
        let unit = w.chars().last()?;
        let n: i64 = w[..w.len() - unit.len_utf8()].parse().ok()?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'M' => 30 * 86_400,
            'Y' => 365 * 86_400,
            _ => return None,
        };
        let at = last.checked_add_signed(chrono::Duration::try_seconds(n.checked_mul(secs)?)?)?;
        Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

#[derive(Deserialize)]
struct VkRateLimit {
    #[serde(default)]
    token_max_limit: Option<i64>,
    #[serde(default)]
    token_reset_duration: Option<String>,
    #[serde(default)]
    request_max_limit: Option<i64>,
    #[serde(default)]
    request_reset_duration: Option<String>,
}

impl VirtualKey {
    fn into_key(self) -> ProviderKey {
        let (user_desc, attempt) = parse_description(self.description.as_deref().unwrap_or(""));
        let mut budgets = self.budgets.unwrap_or_default();
        if budgets.is_empty() {
            budgets.extend(self.budget);
        }
        let limit = budgets.first().map(|b| Limit {
            amount: decimal_from_f64(b.max_limit.max(0.0)),
            reset: window_reset(&b.reset_duration),
        });
        let usage = if budgets.is_empty() {
            None
        } else {
            let mut u = Usage {
                unit: Some("USD".into()),
                ..Default::default()
            };
            for b in &budgets {
                let used = Some(decimal_from_f64(b.current_usage.max(0.0)));
                match window_reset(&b.reset_duration) {
                    Some(LimitReset::Daily) => u.daily = used,
                    Some(LimitReset::Weekly) => u.weekly = used,
                    Some(LimitReset::Monthly) => u.monthly = used,
                    Some(LimitReset::Never) => u.total = used,
                    None => {}
                }
            }
            let first = &budgets[0];
            u.limit_remaining = Some(decimal_from_f64(
                (first.max_limit - first.current_usage).max(0.0),
            ));
            u.resets_at = first.resets_at();
            Some(u)
        };
        let (secret, hint) = match self.value.map(|v| v.0) {
            Some(v) if is_redacted(v.expose_secret()) => {
                (None, Some(v.expose_secret().to_string()))
            }
            Some(v) if !v.expose_secret().is_empty() => {
                let hint = mask(v.expose_secret(), 10);
                (Some(v), hint)
            }
            _ => (None, None),
        };
        let mut extras = Extras::new();
        extras.insert("family".to_string(), FAMILY_VIRTUAL.to_string());
        extras.insert("description".to_string(), user_desc);
        if let Some(pcs) = self.provider_configs {
            let views: Vec<ProviderConfigView> = pcs
                .into_iter()
                .map(|c| ProviderConfigView {
                    key_ids: c.key_ids(),
                    provider: c.provider,
                    weight: c.weight,
                    allowed_models: c.allowed_models,
                })
                .collect();
            if let Ok(s) = serde_json::to_string(&views) {
                extras.insert("providerConfigs".to_string(), s);
            }
        }
        if let Some(rl) = self.rate_limit {
            let rl = BifrostRateLimit {
                token_max_limit: rl.token_max_limit,
                token_reset_duration: rl.token_reset_duration.filter(|s| !s.is_empty()),
                request_max_limit: rl.request_max_limit,
                request_reset_duration: rl.request_reset_duration.filter(|s| !s.is_empty()),
            };
            if let Ok(s) = serde_json::to_string(&rl) {
                extras.insert("rateLimit".to_string(), s);
            }
        }
        ProviderKey {
            expires_at: None,
            id: self.id,
            name: self.name,
            hint,
            created_at: parse_time(&self.created_at),
            last_used_at: None,
            usage,
            active: true,
            observed: ObservedSettings {
                disabled: Some(!self.is_active),
                expires_at: None,
                limit: Some(limit),
                allowed_ips: None,
                // Model allow-lists live in the provider configs: compared in extras_drift.
                models: None,
            },
            attempt,
            secret,
            extras,
        }
    }
}

#[derive(Deserialize)]
struct ProviderKeyList {
    #[serde(default)]
    keys: Vec<ProviderKeyJson>,
}

#[derive(Deserialize)]
struct ProviderKeyJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: Option<SecretField>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

impl ProviderKeyJson {
    fn into_key(self, provider: &str) -> ProviderKey {
        // `["*"]` is every model (the neutral empty list). Since Bifrost v1.5 `[]` is *no*
        // model, which no ApiKey spec asks for: it is observed as [`DENY_ALL_MODELS`], which
        // differs from every desired list, so the key is corrected rather than taken as "all".
        let models = self.models.map(|m| {
            if m.iter().any(|x| x == "*") {
                Vec::new()
            } else if m.is_empty() {
                vec![DENY_ALL_MODELS.to_string()]
            } else {
                m
            }
        });
        // The gateway redacts the value (4 + 24 `*` + 4): keep its ends as the hint.
        let hint = self.value.and_then(|v| {
            let v = v.0.expose_secret().to_string();
            let ends: String = v.chars().take(4).collect();
            if v.chars().count() >= 32 && !ends.contains('*') {
                let last: String = v
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Some(format!("{ends}…{last}"))
            } else {
                None
            }
        });
        let mut extras = Extras::new();
        extras.insert("family".to_string(), FAMILY_PROVIDER.to_string());
        extras.insert("provider".to_string(), provider.to_string());
        extras.insert("weight".to_string(), self.weight.unwrap_or(1.0).to_string());
        extras.insert(
            "description".to_string(),
            self.description.unwrap_or_default(),
        );
        ProviderKey {
            expires_at: None,
            id: self.id,
            name: self.name,
            hint,
            created_at: parse_time(&self.created_at),
            last_used_at: None,
            usage: None,
            active: true,
            observed: ObservedSettings {
                disabled: Some(!self.enabled.unwrap_or(true)),
                expires_at: None,
                limit: None,
                allowed_ips: None,
                models,
            },
            attempt: None,
            secret: None,
            extras,
        }
    }
}

/// A row of the read-only `GET /api/keys` (field set varies by version: `key_id` or `id`).
#[derive(Deserialize)]
struct FlatKeyRow {
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
}

impl FlatKeyRow {
    fn id(&self) -> String {
        self.key_id
            .clone()
            .or_else(|| self.id.clone())
            .unwrap_or_default()
    }

    fn into_key(self) -> ProviderKey {
        let provider = self.provider.clone().unwrap_or_default();
        ProviderKeyJson {
            id: self.id(),
            name: self.name,
            value: None,
            models: self.models,
            weight: self.weight,
            enabled: self.enabled,
            description: None,
            created_at: None,
        }
        .into_key(&provider)
    }
}

/// The Azure/Vertex/Bedrock configurations of the ApiKey's bifrost block, as the gateway takes them.
fn copy_cloud_configs(body: &mut serde_json::Value, b: &BifrostKeySpec) {
    for (k, v) in [
        ("azure_key_config", &b.azure_key_config),
        ("vertex_key_config", &b.vertex_key_config),
        ("bedrock_key_config", &b.bedrock_key_config),
    ] {
        if let Some(v) = v {
            body[k] = v.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keysmith_api::BifrostProviderConfig;

    fn vk_settings() -> KeySettings {
        KeySettings {
            name: "team-a/chat".into(),
            uid: "0b6a3c1e-1111-2222-3333-444455556666".into(),
            ..Default::default()
        }
    }

    /// A gateway on loopback answering each request by its first line (`"POST /api/…"` prefix)
    /// with a status and a JSON body; 404 for anything else.
    async fn fake_gateway(routes: Vec<(&'static str, u16, String)>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes = std::sync::Arc::new(routes);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // The head, then as much body as Content-Length says.
                    loop {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let (status, body) = routes
                        .iter()
                        .find(|(prefix, _, _)| head.starts_with(prefix))
                        .map(|(_, s, b)| (*s, b.clone()))
                        .unwrap_or((404, r#"{"error":{"message":"not found"}}"#.into()));
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        url
    }

    fn push_settings() -> KeySettings {
        KeySettings {
            name: "team-a/upstream".into(),
            uid: "0b6a3c1e-1111-2222-3333-444455556666".into(),
            pushed: true,
            bifrost: Some(keysmith_api::BifrostKeySpec {
                provider: Some("openai".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn client_at(url: &str) -> BifrostClient {
        let spec = BifrostProvider {
            base_url: url.into(),
            ..Default::default()
        };
        let opts = ClientOptions {
            max_attempts: 1,
            timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        };
        BifrostClient::new(&spec, Credentials::default(), opts).unwrap()
    }

    /// issue 17 item 11: a gateway that echoes the pushed value in its error, placed where the
    /// 200-character cut splits it. Before, the message was cut first and scrubbed after: the
    /// value's first characters were left in the error (and so in the condition and Event).
    #[tokio::test]
    async fn a_pushed_value_echoed_in_an_error_is_scrubbed_before_the_cut() {
        let value = "sk-proj-UPSTREAM-0123456789abcdefghijklmnopqrstuvwxyz";
        let message = format!("{} {value} is not a valid key", "x".repeat(190));
        let body = json!({ "error": { "message": message } }).to_string();
        let url = fake_gateway(vec![("POST /api/providers/openai/keys", 400, body)]).await;
        let c = client_at(&url);
        let err = c
            .push(&push_settings(), &SecretString::from(value), None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ProviderError::Rejected(_)), "{text}");
        for k in 4..value.len() {
            assert!(
                !text.contains(&value[..k]),
                "{k} characters of the value in: {text}"
            );
        }
    }

    /// issue 17 item 11: a name another key holds. Before, the error named that key's id and
    /// provider (another tenant's, possibly); now it only says the name is taken.
    #[tokio::test]
    async fn a_taken_name_does_not_reveal_the_other_key() {
        let rows = json!([{ "key_id": "victim-key-7f3a", "name": "team-a/upstream", "provider": "anthropic" }]).to_string();
        let url = fake_gateway(vec![
            (
                "POST /api/providers/openai/keys",
                409,
                r#"{"error":{"message":"name exists"}}"#.into(),
            ),
            ("GET /api/keys ", 200, rows),
        ])
        .await;
        let c = client_at(&url);
        let err = c
            .push(
                &push_settings(),
                &SecretString::from("sk-proj-abcdefgh"),
                None,
            )
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("is taken by another key"), "{text}");
        assert!(
            !text.contains("victim-key-7f3a") && !text.contains("anthropic"),
            "{text}"
        );
    }

    /// issue 17 item 12: an id from spec.keyRef or status that would walk the path (`..`,
    /// `.`, `/`, their encodings) is refused before any request. Before, `..` was kept as a
    /// segment and `DELETE /api/governance/virtual-keys/..` went out as
    /// `DELETE /api/governance/` (here: a connection refused, so `Unavailable`).
    #[tokio::test]
    async fn ids_that_would_walk_the_path_are_refused_before_a_call() {
        let spec = BifrostProvider {
            base_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        };
        let opts = ClientOptions {
            max_attempts: 1,
            timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        };
        let c = BifrostClient::new(&spec, Credentials::default(), opts).unwrap();
        let vk = KeyScope::default();
        let pk = KeyScope {
            family: FAMILY_PROVIDER.into(),
            parent: "openai".into(),
        };
        for id in ["..", ".", "%2e%2e", "a/../b", "../../config", ""] {
            for scope in [&vk, &pk] {
                let e = c.revoke(scope, id).await.unwrap_err();
                assert!(matches!(e, ProviderError::Rejected(_)), "{id}: {e}");
                let e = c.get(scope, id).await.unwrap_err();
                assert!(matches!(e, ProviderError::Rejected(_)), "{id}: {e}");
            }
        }
        let bad_parent = KeyScope {
            family: FAMILY_PROVIDER.into(),
            parent: "..".into(),
        };
        let e = c.revoke(&bad_parent, "k1").await.unwrap_err();
        assert!(matches!(e, ProviderError::Rejected(_)), "{e}");
    }

    #[test]
    fn descriptions_round_trip() {
        let d = compose_description(Some("chat backend"), Some("a1b2"));
        assert_eq!(d, "chat backend | managed by keysmith (attempt a1b2)");
        assert_eq!(
            parse_description(&d),
            ("chat backend".to_string(), Some("a1b2".to_string()))
        );
        let d = compose_description(None, Some("x9"));
        assert_eq!(d, "managed by keysmith (attempt x9)");
        assert_eq!(parse_description(&d), (String::new(), Some("x9".into())));
        assert_eq!(
            parse_description(&compose_description(Some("ops"), None)),
            ("ops".into(), None)
        );
        // Text keysmith did not write is the user's.
        assert_eq!(
            parse_description("made by hand"),
            ("made by hand".into(), None)
        );
        assert_eq!(
            parse_description("managed by keysmith (attempt x) and more"),
            ("managed by keysmith (attempt x) and more".into(), None)
        );
    }

    #[test]
    fn windows_map_both_ways() {
        for r in [
            LimitReset::Daily,
            LimitReset::Weekly,
            LimitReset::Monthly,
            LimitReset::Never,
        ] {
            assert_eq!(window_reset(reset_window(Some(r))), Some(r));
        }
        assert_eq!(reset_window(None), "1Y");
        assert_eq!(window_reset("1h"), None);
        assert!(valid_window("30s") && valid_window("1M") && valid_window("12h"));
        assert!(!valid_window("1") && !valid_window("h") && !valid_window("0d"));
        assert!(!valid_window("1x") && !valid_window("-1d") && !valid_window(""));
    }

    #[test]
    fn provider_key_ids_are_stable_uuids() {
        let a = provider_key_id("uid-1", "openai");
        assert_eq!(a, provider_key_id("uid-1", "openai"));
        assert_ne!(a, provider_key_id("uid-2", "openai"));
        assert_ne!(a, provider_key_id("uid-1", "anthropic"));
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 5);
    }

    #[test]
    fn models_group_into_provider_configs() {
        let mut s = vk_settings();
        assert_eq!(desired_provider_configs(&s), None);
        s.models = vec![
            "openai/gpt-4o".into(),
            "anthropic/*".into(),
            "openai/gpt-4o-mini".into(),
            "openrouter/meta/llama".into(),
        ];
        let pc = desired_provider_configs(&s).unwrap();
        let names: Vec<_> = pc.iter().map(|c| c.provider.as_str()).collect();
        assert_eq!(names, ["anthropic", "openai", "openrouter"]);
        assert_eq!(
            pc[0].allowed_models.as_deref(),
            Some(&["*".to_string()][..])
        );
        assert_eq!(
            pc[1].allowed_models.as_deref(),
            Some(&["gpt-4o".to_string(), "gpt-4o-mini".to_string()][..])
        );
        assert_eq!(
            pc[2].allowed_models.as_deref(),
            Some(&["meta/llama".to_string()][..])
        );
        // Explicit configs win, with "all" defaults.
        s.models.clear();
        s.bifrost = Some(BifrostKeySpec {
            provider_configs: vec![BifrostProviderConfig {
                provider: "openai".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let pc = desired_provider_configs(&s).unwrap();
        assert_eq!(pc[0].weight, Some(1.0));
        assert_eq!(pc[0].key_ids.as_deref(), Some(&["*".to_string()][..]));
    }

    #[test]
    fn validation_names_the_field() {
        let v = validate_settings(&vk_settings());
        assert!(v.is_empty(), "{v:?}");

        // A provider key needs a source and an upstream provider.
        let mut s = vk_settings();
        s.bifrost = Some(BifrostKeySpec {
            provider: Some("openai".into()),
            ..Default::default()
        });
        let v = validate_settings(&s);
        assert!(
            v.iter().any(|m| m.contains("spec.source.secretRef")),
            "{v:?}"
        );
        let mut s = vk_settings();
        s.pushed = true;
        let v = validate_settings(&s);
        assert!(
            v.iter()
                .any(|m| m.contains("spec.bifrost.provider is required")),
            "{v:?}"
        );
        s.bifrost = Some(BifrostKeySpec {
            provider: Some("openai".into()),
            ..Default::default()
        });
        s.limit = Some(Limit {
            amount: "5".into(),
            reset: None,
        });
        let v = validate_settings(&s);
        assert!(v.iter().any(|m| m.starts_with("spec.limit")), "{v:?}");

        // Virtual keys: provider/model, no provider-key fields, sane rate limits.
        let mut s = vk_settings();
        s.models = vec!["gpt-4o".into()];
        s.bifrost = Some(BifrostKeySpec {
            weight: Some(2.0),
            rate_limit: Some(BifrostRateLimit {
                token_max_limit: Some(100),
                token_reset_duration: Some("1 hour".into()),
                request_max_limit: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        });
        let v = validate_settings(&s).join("\n");
        assert!(v.contains("\"gpt-4o\""), "{v}");
        assert!(v.contains("spec.bifrost.weight"), "{v}");
        assert!(v.contains("tokenResetDuration \"1 hour\""), "{v}");
        assert!(
            v.contains("requestMaxLimit needs requestResetDuration"),
            "{v}"
        );
    }

    #[test]
    fn scrub_removes_a_value() {
        let v = SecretString::from("sk-upstream-secret-123");
        let e = scrub(
            ProviderError::Rejected("bad value sk-upstream-secret-123 here".into()),
            &v,
        );
        assert_eq!(
            e.to_string(),
            "the provider rejected the request: bad value [REDACTED] here"
        );
    }

    #[test]
    fn virtual_keys_map_to_provider_keys() {
        let raw = json!({
            "id": "vk-1", "name": "a", "value": "sk-bf-0123456789abcdef0123",
            "description": "ops | managed by keysmith (attempt 42)", "is_active": false,
            "provider_configs": [{"id": 3, "provider": "openai", "weight": 1.0,
                "allowed_models": ["gpt-4o"], "key_ids": ["*"]}],
            "budgets": [{"max_limit": 10.0, "reset_duration": "1M", "current_usage": 2.5}],
            "rate_limit": {"request_max_limit": 10, "request_reset_duration": "1m", "request_current_usage": 3},
            "created_at": "2026-01-02T03:04:05.123456789Z"
        });
        let k = serde_json::from_value::<VirtualKey>(raw)
            .unwrap()
            .into_key();
        assert_eq!(k.attempt.as_deref(), Some("42"));
        assert_eq!(k.hint.as_deref(), Some("sk-bf-0123…0123"));
        assert_eq!(k.observed.disabled, Some(true));
        assert_eq!(
            k.observed.limit,
            Some(Some(Limit {
                amount: "10".into(),
                reset: Some(LimitReset::Monthly)
            }))
        );
        let u = k.usage.clone().unwrap();
        assert_eq!(u.monthly.as_deref(), Some("2.5"));
        assert_eq!(u.limit_remaining.as_deref(), Some("7.5"));
        assert!(k.created_at.is_some());
        assert!(k.secret.is_some());

        let mut d = vk_settings();
        d.models = vec!["openai/gpt-4o".into()];
        d.bifrost = Some(BifrostKeySpec {
            description: Some("ops".into()),
            rate_limit: Some(BifrostRateLimit {
                request_max_limit: Some(10),
                request_reset_duration: Some("1m".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!extras_differ(&k, &d));
        d.models.push("openai/o3".into());
        assert!(extras_differ(&k, &d));
    }

    #[test]
    fn redacted_values_are_never_secrets() {
        let raw = json!({"id": "vk", "name": "a", "value": "sk-b************************1234"});
        let k = serde_json::from_value::<VirtualKey>(raw)
            .unwrap()
            .into_key();
        assert!(k.secret.is_none());
        let raw = json!({"id": "k", "name": "n",
            "value": {"value": "sk-p************************wxyz", "env_var": "", "from_env": false},
            "models": ["*"], "enabled": true});
        let k = serde_json::from_value::<ProviderKeyJson>(raw)
            .unwrap()
            .into_key("openai");
        assert_eq!(k.hint.as_deref(), Some("sk-p…wxyz"));
        assert_eq!(k.observed.models, Some(vec![]));
    }
}
