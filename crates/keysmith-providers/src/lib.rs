//! The provider side of keysmith: one trait for a key's lifecycle ([`KeyBackend`]), one module
//! per provider implementing it, and one shared HTTP layer ([`http`]).
//!
//! A provider module reads like the provider's reference: its endpoints, its error mapping and
//! its pagination. What every provider shares (retries, backoff, Retry-After, the client-side
//! rate limit, metrics, typed errors, drift detection) lives here and in [`http`].

pub(crate) mod bifrost;
pub(crate) mod boltz;
pub(crate) mod digitalocean;
pub(crate) mod egress;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod openrouter;
pub(crate) mod ucloud;

// The modules are `pub(crate)`, so `dead_code` reports what nothing uses. What the operator and
// the tests reach is re-exported here, one line per module (provider-specific names that would
// read ambiguously at the crate root carry the provider's name):
/// Bifrost's client and what the tests check of its key families.
pub use bifrost::{
    provider_key_id as bifrost_provider_key_id, BifrostClient, DENY_ALL_MODELS, FAMILY_PROVIDER,
    FAMILY_VIRTUAL,
};
/// Boltz's client (driven against its emulator by the tests).
pub use boltz::BoltzClient;
/// DigitalOcean's client, and the model-create retirement the tests expect.
pub use digitalocean::{DigitalOceanClient, MODEL_CREATE_RETIRED};
/// Where provider requests may go: the operator checks a provider object's base URL with it.
pub use egress::{check_url, NetworkPolicy};
/// The shared HTTP layer's bounds (the CRD's and the tests' limits) and helpers the operator uses.
pub use http::{
    parse_base_url, snippet, HttpClient, MAX_BURST, MAX_PAGES, MAX_REQUESTS_PER_SECOND,
    MAX_RETRY_AFTER, MIN_REQUESTS_PER_SECOND,
};
/// The provider-call metrics, registered by the operator's `/metrics`.
pub use metrics::ProviderMetrics;
/// OpenRouter's client, its wire object and update body (the tests and the memory test use them).
pub use openrouter::{
    update_body as openrouter_update_body, KeyObject as OpenRouterKeyObject, OpenRouterClient,
    EXTRA_INCLUDE_BYOK, EXTRA_WORKSPACE,
};
/// UCloud's client, its request signature and page size (the tests sign and page like it).
pub use ucloud::{
    signature as ucloud_signature, Params as UCloudParams, UCloudClient,
    PAGE_SIZE as UCLOUD_PAGE_SIZE,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use keysmith_api::{
    ApiKeySpec, BifrostKeySpec, BoltzKeySpec, DigitalOceanKeySpec, KeyProviderSpec, LastUsedSource,
    LimitReset, OpenRouterKeySpec, ProviderBlock, ProviderType, UCloudKeySpec, Usage,
};

/// Errors of a provider call. Messages come from the provider's error body (never from a
/// request, so never a secret) and are cut to a readable length.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ProviderError {
    /// 401/403: the credentials are wrong, revoked or lack a permission.
    #[error("the provider refused the credentials: {0}")]
    Auth(String),
    /// 400/409/422 and equivalents: the provider rejected what was asked.
    #[error("the provider rejected the request: {0}")]
    Rejected(String),
    /// 404: the key (or its parent) does not exist at the provider.
    #[error("not found at the provider: {0}")]
    NotFound(String),
    /// 429: slow down; retry after the given delay if the provider said.
    #[error("rate limited by the provider{}", .retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, timeouts and connection failures.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered with a body keysmith could not read.
    #[error("the provider sent a malformed response: {0}")]
    Malformed(String),
    /// The operation does not exist at this provider (or was retired, e.g. HTTP 410).
    #[error("not supported by the provider: {0}")]
    Unsupported(String),
    /// A revoke got an answer keysmith cannot read as success or failure (e.g. an unknown UCloud
    /// RetCode), and a listing still shows the key (or could not be taken). Transient: try again.
    #[error(
        "the provider's answer to the revoke was not understood and the key is still listed: {0}"
    )]
    Unconfirmed(String),
    /// The operator's network policy refused the connection (a namespaced KeyProvider whose
    /// host resolves to a private, loopback or link-local address): nothing was sent.
    #[error("refused by the operator's network policy: {0}")]
    Refused(String),
}

impl ProviderError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Unavailable(_)
                | ProviderError::Malformed(_)
                | ProviderError::Unconfirmed(_)
        )
    }

    /// A static label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ProviderError::Auth(_) => "auth",
            ProviderError::Rejected(_) => "rejected",
            ProviderError::NotFound(_) => "not_found",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Malformed(_) => "malformed",
            ProviderError::Unsupported(_) => "unsupported",
            ProviderError::Unconfirmed(_) => "unconfirmed",
            ProviderError::Refused(_) => "refused",
        }
    }
}

/// A spec field a provider may or may not honour. `path()` is how it is named in conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    DisplayName,
    Disabled,
    ExpiresAt,
    Ttl,
    LimitAmount,
    LimitReset,
    AllowedIps,
    Models,
    /// The provider-specific block of this provider (each provider checks its own sub-fields).
    Extras,
    KeyRef,
    Source,
    /// Where the key lives at the provider (OpenRouter's workspace), chosen by the provider
    /// object: fixed at creation.
    Workspace,
}

impl Field {
    pub fn path(self) -> &'static str {
        match self {
            Field::DisplayName => "spec.displayName",
            Field::Disabled => "spec.disabled",
            Field::ExpiresAt => "spec.expiresAt",
            Field::Ttl => "spec.ttl",
            Field::LimitAmount => "spec.limit.amount",
            Field::LimitReset => "spec.limit.reset",
            Field::AllowedIps => "spec.allowedIPs",
            Field::Models => "spec.models",
            Field::Extras => "spec.<provider block>",
            Field::KeyRef => "spec.keyRef",
            Field::Source => "spec.source",
            Field::Workspace => "workspaceID (of the provider object)",
        }
    }
}

/// How an existing key can be adopted (`spec.keyRef`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdoptMode {
    /// The provider cannot give a value for an existing key: adoption is refused.
    No,
    /// The secret can be read back from the provider (list/get return it).
    ReadBack,
    /// A fresh value is obtained by regenerating the key (the old value stops working).
    Regenerate,
}

/// What a provider can do; the controller checks an ApiKey against this before any call.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// Keys can be created over the API.
    pub mint: bool,
    /// How `spec.keyRef` is served.
    pub adopt: AdoptMode,
    /// Keys take a user-supplied value (`spec.source`).
    pub push: bool,
    /// Fields honoured when a key is created.
    pub supported: &'static [Field],
    /// Fields that can be changed on an existing key.
    pub mutable: &'static [Field],
    /// The provider returns the plaintext in list/get, so a lost Secret can be restored.
    pub secret_readable: bool,
    /// How a key gets a new value, by how it came to be.
    pub rotation: RotationStrategy,
}

/// How one key is rotated (given a new value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Create a new key (with a `pendingCreate` marker), write it to the Secret, keep the old
    /// key live for the grace period, then revoke it.
    MintNewThenRevoke,
    /// Regenerate in place: the key keeps its id, the old value dies at once, no grace period.
    Regenerate,
    /// Pushed keys: register the new value as a new key next to the old one, which is deleted
    /// after the grace period.
    RepushWithGrace,
}

impl Rotation {
    pub fn as_str(self) -> &'static str {
        match self {
            Rotation::MintNewThenRevoke => "mint a new key, then revoke the old one",
            Rotation::Regenerate => "regenerate in place (the old value stops at once)",
            Rotation::RepushWithGrace => "push the new value as a new key, then delete the old one",
        }
    }

    /// Whether the old value outlives the rotation under keysmith's control (a previous key
    /// with `deleteAfter`).
    pub fn keeps_previous_key(self) -> bool {
        matches!(
            self,
            Rotation::MintNewThenRevoke | Rotation::RepushWithGrace
        )
    }
}

/// How a provider rotates its keys ([`Capabilities::rotation`]): the controller reads this,
/// never the provider's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationStrategy {
    /// A key keysmith minted.
    pub minted: Rotation,
    /// A key adopted with `spec.keyRef`, whose id must stay what the spec names. `None`: it
    /// cannot be rotated (a new key would not be the one the spec names).
    pub adopted: Option<Rotation>,
    /// A key pushed from `spec.source`. `None`: the provider takes no pushed value.
    pub pushed: Option<Rotation>,
}

impl RotationStrategy {
    /// Mint a new key; adopted keys do not rotate; no pushed keys.
    pub const MINT: RotationStrategy = RotationStrategy {
        minted: Rotation::MintNewThenRevoke,
        adopted: None,
        pushed: None,
    };
}

impl Capabilities {
    pub fn supports(&self, f: Field) -> bool {
        self.supported.contains(&f)
    }
    pub fn can_update(&self, f: Field) -> bool {
        self.mutable.contains(&f)
    }
}

/// A spend limit, provider-neutral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Decimal string, normalised (no trailing zeros after the point).
    pub amount: String,
    pub reset: Option<LimitReset>,
}

/// The desired settings of a key, from an ApiKey spec (provider-neutral fields plus the
/// provider's own block).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeySettings {
    pub name: String,
    pub disabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub limit: Option<Limit>,
    pub allowed_ips: Vec<String>,
    pub models: Vec<String>,
    pub openrouter: Option<OpenRouterKeySpec>,
    pub boltz: Option<BoltzKeySpec>,
    pub ucloud: Option<UCloudKeySpec>,
    pub digitalocean: Option<DigitalOceanKeySpec>,
    pub bifrost: Option<BifrostKeySpec>,
    /// Random id of the create attempt; providers with a free-text field (e.g. a description)
    /// store it so that crash recovery can recognise the key beyond doubt.
    pub attempt: Option<String>,
    /// The ApiKey's uid: a stable identity for providers that take a client-chosen key id
    /// (Bifrost provider keys), so that a repeated create is recognised (409) instead of doubled.
    pub uid: String,
    /// `spec.keyRef.id` when adopting an existing key.
    pub key_ref: Option<String>,
    /// `spec.source` is set: the value is pushed from a user's Secret.
    pub pushed: bool,
}

impl KeySettings {
    /// Settings from a spec. `created_at` anchors `ttl` (now, for a key about to be created).
    pub fn from_spec(
        spec: &ApiKeySpec,
        name: String,
        created_at: DateTime<Utc>,
    ) -> Result<Self, String> {
        // The one reading of expiresAt and ttl (`ApiKeySpec::expiry`); a ttl counts from
        // `created_at`.
        let expires_at = spec.expiry()?.map(|e| e.for_key_created(created_at));
        let limit = match &spec.limit {
            Some(l) => Some(Limit {
                amount: normalize_decimal(&l.amount).ok_or_else(|| {
                    format!("spec.limit.amount {:?} is not a decimal number", l.amount)
                })?,
                reset: l.reset,
            }),
            None => None,
        };
        let mut settings = KeySettings {
            name,
            disabled: spec.disabled,
            expires_at,
            limit,
            allowed_ips: spec.allowed_ips.clone(),
            models: spec.models.clone(),
            attempt: None,
            uid: String::new(),
            key_ref: spec.key_ref.as_ref().map(|k| k.id.clone()),
            pushed: spec.source.is_some(),
            ..Default::default()
        };
        for block in spec.provider_blocks() {
            match block {
                ProviderBlock::OpenRouter(b) => settings.openrouter = Some(b.clone()),
                ProviderBlock::Boltz(b) => settings.boltz = Some(b.clone()),
                ProviderBlock::UCloud(b) => settings.ucloud = Some(b.clone()),
                ProviderBlock::DigitalOcean(b) => settings.digitalocean = Some(b.clone()),
                ProviderBlock::Bifrost(b) => settings.bifrost = Some(b.clone()),
            }
        }
        Ok(settings)
    }
}

/// Where a family of keys lives at a provider. Listing is per scope: DigitalOcean agent keys
/// live under their agent, Bifrost provider keys under their upstream provider, and so on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyScope {
    /// The family of keys (e.g. `agent` or `model`; `virtual` or `provider`). Empty: the only one.
    pub family: String,
    /// The parent object the keys live under (an agent uuid, an upstream provider…). Empty: none.
    pub parent: String,
}

/// What the provider reports about a key's settings. `None`: the provider does not report it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedSettings {
    pub disabled: Option<bool>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub limit: Option<Option<Limit>>,
    pub allowed_ips: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
}

/// A key as the provider describes it (never the plaintext, except where the provider
/// returns it in listings: then [`ProviderKey::secret`]).
#[derive(Clone, Debug, Default)]
pub struct ProviderKey {
    pub id: String,
    pub name: String,
    /// Prefix or masked rendering (`sk-or-v1-0e6...1c96`), never the secret.
    pub hint: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// The expiry the provider reports, for the status, also where it is left out of
    /// `observed` because it cannot be compared with the spec exactly (Boltz sets expiry in
    /// whole days from creation).
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub usage: Option<Usage>,
    /// False once revoked (providers that keep revoked keys listed).
    pub active: bool,
    pub observed: ObservedSettings,
    /// Free-text marker the key was created with (see [`KeySettings::attempt`]).
    pub attempt: Option<String>,
    /// The plaintext, only for providers whose listing returns it (UCloud).
    pub secret: Option<SecretString>,
    /// Provider-specific settings kept for drift checks of the provider block.
    pub extras: Extras,
}

/// Provider-specific settings of a key ([`ProviderKey::extras`]): a handful of pairs, kept in
/// one Vec. A `BTreeMap` spends a node of about 540 bytes even on a single pair, and the listing
/// snapshot holds one of these per key (issue 11: memory at 10,000 keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extras(Vec<(String, String)>);

impl Extras {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Set `key`; the value it had, if any.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Extras {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut e = Extras::new();
        for (k, v) in iter {
            e.insert(k, v);
        }
        e
    }
}

/// A freshly minted (or regenerated) key: the only time most providers show the plaintext.
#[derive(Debug)]
pub struct CreatedKey {
    pub key: ProviderKey,
    pub secret: SecretString,
}

/// When the management credentials themselves expire, as the provider tells it (issue 21 §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CredentialsExpiry {
    /// The provider does not say (no call tells a management key's expiry).
    #[default]
    NotExposed,
    /// The provider says the credentials never expire.
    Never,
    /// The credentials stop working at this time.
    At(DateTime<Utc>),
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct KeyPage {
    pub keys: Vec<ProviderKey>,
    /// Cursor of the next page; `None` on the last page.
    pub next: Option<String>,
}

/// The lifecycle of a key at one provider account.
#[async_trait]
pub trait KeyBackend: Send + Sync {
    /// Which provider this is.
    fn provider(&self) -> ProviderType;
    /// What the provider can do.
    fn capabilities(&self) -> &Capabilities;
    /// Where keys with these settings live (default: the provider's only family).
    fn scope(&self, _settings: &KeySettings) -> KeyScope {
        KeyScope::default()
    }
    /// Provider-specific problems with the desired settings, found before any call (e.g. a
    /// model key at DigitalOcean without keyRef, a bad value in the provider's own block). Each
    /// message names the field and says what to do. The controller has already rejected fields
    /// outside [`Capabilities::supported`].
    fn validate(&self, _settings: &KeySettings) -> Vec<String> {
        Vec::new()
    }
    /// Whether a created key keeps the create attempt id where a listing shows it (Bifrost: in
    /// the virtual key's description; provider keys take the ApiKey's uid as their id), so that
    /// crash recovery recognises the attempt's key without a provisional name.
    fn records_attempt(&self) -> bool {
        false
    }
    /// How this provider tells when `key` was last used (see [`LastUsedSource`]): the
    /// controller derives `status.lastUsed` from the listing it already takes, never with an
    /// extra call per key.
    fn last_use(&self, _key: &ProviderKey) -> LastUsedSource {
        LastUsedSource::NotReported
    }
    /// The client's HTTP layer (every provider client has one; a test double need not).
    fn http(&self) -> Option<&http::HttpClient> {
        None
    }
    /// How far the provider's clock is ahead of ours, as its answers' `Date` headers say
    /// (crash recovery reads creation times in the provider's clock). `None`: not known.
    fn clock_offset(&self) -> Option<chrono::Duration> {
        self.http().and_then(http::HttpClient::clock_offset)
    }
    /// Check the credentials with the cheapest authenticated call there is.
    async fn verify(&self) -> Result<(), ProviderError>;
    /// Check the credentials and tell when they expire, where the provider exposes it: the
    /// provider object's verify, one call per provider object per refresh (never per ApiKey).
    /// Default: [`KeyBackend::verify`], expiry not exposed.
    async fn verify_credentials(&self) -> Result<CredentialsExpiry, ProviderError> {
        self.verify().await.map(|()| CredentialsExpiry::NotExposed)
    }
    /// Create a key; the answer holds the one-time plaintext.
    async fn create(&self, settings: &KeySettings) -> Result<CreatedKey, ProviderError>;
    /// One page of the keys of a scope. `cursor` is `None` for the first page.
    async fn list_page(
        &self,
        scope: &KeyScope,
        cursor: Option<&str>,
    ) -> Result<KeyPage, ProviderError>;
    /// One key. `Err(NotFound)` when it does not exist.
    async fn get(&self, scope: &KeyScope, id: &str) -> Result<ProviderKey, ProviderError> {
        let mut pages = Pages::default();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.list_page(scope, cursor.as_deref()).await?;
            if let Some(k) = page.keys.into_iter().find(|k| k.id == id) {
                return Ok(k);
            }
            match pages.next(page.next)? {
                Some(n) => cursor = Some(n),
                None => return Err(ProviderError::NotFound(format!("key {id}"))),
            }
        }
    }
    /// Change the given mutable fields of a key to their desired values.
    async fn update(
        &self,
        scope: &KeyScope,
        id: &str,
        desired: &KeySettings,
        fields: &[Field],
    ) -> Result<ProviderKey, ProviderError>;
    /// Revoke (delete) a key. `Err(NotFound)` when it is already gone.
    async fn revoke(&self, scope: &KeyScope, id: &str) -> Result<(), ProviderError>;
    /// Give an existing key a new value (the old one stops working).
    async fn regenerate(&self, _scope: &KeyScope, _id: &str) -> Result<CreatedKey, ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "{} has no regenerate call",
            self.provider()
        )))
    }
    /// Register a user-supplied value (push). `existing`: the id of the key to update instead.
    async fn push(
        &self,
        _settings: &KeySettings,
        _value: &SecretString,
        _existing: Option<&str>,
    ) -> Result<ProviderKey, ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "{} keys do not take a user-supplied value",
            self.provider()
        )))
    }
    /// Fields of the provider block that differ between the observed key and the desired
    /// settings (default: the provider reports none of them).
    fn extras_drift(&self, _current: &ProviderKey, _desired: &KeySettings) -> bool {
        false
    }
    /// Whether the key lives in another workspace than the one this client creates keys in
    /// (default: the provider has no such thing). Fixed at creation: only a new key resolves it.
    fn workspace_drift(&self, _current: &ProviderKey) -> bool {
        false
    }
    /// A problem the provider reports with `key` itself (Bifrost: a provider key whose model
    /// listing failed), for a condition on the ApiKey; bounded, no secret. `None`: none reported.
    fn key_problem(&self, _key: &ProviderKey) -> Option<String> {
        None
    }
    /// Whether `key`, as the provider reports it, was rotated outside keysmith: its value (or
    /// the hint of it) is no longer `held` (the value the Secret holds), or the provider
    /// recorded a rotation after `since` (when keysmith got `held`). The reason, or `None`
    /// (also when the provider cannot tell).
    fn rotated_outside(
        &self,
        _key: &ProviderKey,
        _held: &SecretString,
        _since: Option<DateTime<Utc>>,
    ) -> Option<String> {
        None
    }
}

/// Guards a pagination loop: at most [`http::MAX_PAGES`] pages, and a cursor the provider
/// already gave is an error, not a loop.
#[derive(Debug, Default)]
pub struct Pages {
    seen: std::collections::HashSet<String>,
    count: usize,
}

impl Pages {
    /// Cursors let through so far (the pages after the first).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The cursor to fetch next (`None`: the listing is complete), or an error when the
    /// provider repeats a cursor or the listing runs past the page cap.
    pub fn next(&mut self, cursor: Option<String>) -> Result<Option<String>, ProviderError> {
        let Some(c) = cursor else {
            return Ok(None);
        };
        self.count += 1;
        if self.count >= http::MAX_PAGES {
            return Err(ProviderError::Malformed(format!(
                "the listing did not end within {} pages",
                http::MAX_PAGES
            )));
        }
        if !self.seen.insert(c.clone()) {
            return Err(ProviderError::Malformed(
                "the listing repeated a page cursor".into(),
            ));
        }
        Ok(Some(c))
    }
}

/// Confirm a revoke whose answer could not be read (an unknown RetCode, a 409 on a repeated
/// revoke): look the key up. Listed as inactive: `Ok(())` (revoked); not there at all:
/// `Err(NotFound)` (already gone, what a revoke of a missing key answers); still live:
/// `Err(Unconfirmed)`, transient; the lookup's own error when it cannot be made. Providers call
/// this for answers they cannot classify; a controller may call it too before giving up on a key.
pub async fn confirm_revoked(
    backend: &dyn KeyBackend,
    scope: &KeyScope,
    id: &str,
    answer: &str,
) -> Result<(), ProviderError> {
    match backend.get(scope, id).await {
        Err(ProviderError::NotFound(_)) => Err(ProviderError::NotFound(http::snippet(answer))),
        Ok(k) if !k.active => Ok(()),
        Ok(_) => Err(ProviderError::Unconfirmed(http::snippet(answer))),
        Err(e) => Err(e),
    }
}

/// The neutral fields that differ between what the provider reports and what is desired.
pub fn drift(backend: &dyn KeyBackend, current: &ProviderKey, desired: &KeySettings) -> Vec<Field> {
    let mut out = Vec::new();
    let o = &current.observed;
    if current.name != desired.name {
        out.push(Field::DisplayName);
    }
    if o.disabled.is_some_and(|d| d != desired.disabled) {
        out.push(Field::Disabled);
    }
    if let Some(exp) = &o.expires_at {
        let same = match (exp, &desired.expires_at) {
            (Some(a), Some(b)) => (*a - *b).num_seconds().abs() <= 1,
            (None, None) => true,
            _ => false,
        };
        if !same {
            out.push(Field::ExpiresAt);
        }
    }
    if let Some(lim) = &o.limit {
        let amount = |l: &Option<Limit>| l.as_ref().map(|l| l.amount.clone());
        let reset = |l: &Option<Limit>| {
            l.as_ref()
                .and_then(|l| l.reset)
                .filter(|r| *r != LimitReset::Never)
        };
        if amount(lim) != amount(&desired.limit) {
            out.push(Field::LimitAmount);
        }
        if reset(lim) != reset(&desired.limit) {
            out.push(Field::LimitReset);
        }
    }
    if let Some(ips) = &o.allowed_ips {
        if ip_set(ips) != ip_set(&desired.allowed_ips) {
            out.push(Field::AllowedIps);
        }
    }
    if let Some(models) = &o.models {
        if set(models) != set(&desired.models) {
            out.push(Field::Models);
        }
    }
    if backend.extras_drift(current, desired) {
        out.push(Field::Extras);
    }
    if backend.workspace_drift(current) {
        out.push(Field::Workspace);
    }
    out
}

/// A list compared as a set: order and repeats mean nothing to a provider.
fn set(v: &[String]) -> Vec<&str> {
    let mut s: Vec<&str> = v.iter().map(|x| x.trim()).collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// IP addresses and CIDR ranges compared by what they admit, not how they are written: a
/// provider that canonicalises (`10.0.0.1/8` → `10.0.0.0/8`, `10.0.0.1/32` → `10.0.0.1`,
/// `2001:DB8::0001` → `2001:db8::1`) or reorders the list is no drift (issue 20, item 3). An
/// entry that is neither is compared as written.
pub fn ip_set(v: &[String]) -> Vec<String> {
    let mut s: Vec<String> = v
        .iter()
        .map(|x| {
            let x = x.trim();
            if let Ok(net) = x.parse::<ipnet::IpNet>() {
                let net = net.trunc();
                if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                }
            } else if let Ok(ip) = x.parse::<std::net::IpAddr>() {
                ip.to_string()
            } else {
                x.to_string()
            }
        })
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// Normalise a decimal string: `"75.50"` → `"75.5"`, `"010"` → `"10"`, `"3.0"` → `"3"`.
/// `None` if it is not a plain non-negative decimal.
pub fn normalize_decimal(s: &str) -> Option<String> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if s.ends_with('.') {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    Some(if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    })
}

/// An optional integer as JSON Schema (and so OpenAPI 3.1) reads one: any number with no
/// fractional part, `100` or `100.0` (a gateway that re-encodes numbers may send either). A
/// fraction, or a value beyond `i64`, is an error.
pub fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    use serde::Deserialize;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not an integer"))),
    }
}

/// A provider's number (e.g. a JSON double) as a normalised decimal string.
pub fn decimal_from_f64(v: f64) -> String {
    // Money at providers has at most cent-of-a-cent precision; 6 places is plenty and stable.
    normalize_decimal(&format!("{v:.6}")).unwrap_or_else(|| v.to_string())
}

/// Parse a Go-style duration (`90s`, `5m`, `720h`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 5m or 720h: {e}"))?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d.into())
}

/// Provider-wide settings for the HTTP layer.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overrides the provider's default base URL.
    pub base_url: Option<String>,
    /// Client-side token bucket (requests per second, burst).
    pub rate_limit: Option<(f64, u32)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts for a request that can be retried safely.
    pub max_attempts: u32,
    /// First backoff delay (doubled each attempt, with full jitter).
    pub backoff_base: Duration,
    /// Longest Retry-After keysmith waits inside one call; longer ones are returned as
    /// `RateLimited` and the reconcile is requeued instead.
    pub max_retry_after: Duration,
    /// Where request metrics go.
    pub metrics: Option<Arc<crate::metrics::ProviderMetrics>>,
    /// Calls of one provider object that may run at once; more wait (up to `max_wait`) for a
    /// slot, so a slow provider object holds at most this many reconciles.
    pub max_in_flight: usize,
    /// Longest wait for the client-side token bucket or an in-flight slot; beyond it the call
    /// fails with `RateLimited` (nothing was sent) and the reconcile is requeued.
    pub max_wait: Duration,
    /// CA certificates trusted in addition to the platform's and the built-in roots (the
    /// provider object's `caBundle`).
    pub extra_roots: Vec<reqwest::Certificate>,
    /// Checked right before each request that writes (any method but GET/HEAD/OPTIONS) is
    /// sent, every attempt: closed, the request is not sent (the leader Lease's fencing).
    pub write_gate: Option<WriteGate>,
    /// Where the client may connect ([`egress::NetworkPolicy::RESTRICTED`] for namespaced
    /// KeyProviders unless the admin allows more).
    pub network: egress::NetworkPolicy,
}

/// Whether this process may write to providers right now (see [`ClientOptions::write_gate`]).
#[derive(Clone)]
pub struct WriteGate(Arc<dyn Fn() -> bool + Send + Sync>);

impl WriteGate {
    pub fn new(open: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        WriteGate(Arc::new(open))
    }

    /// Whether a write may be sent now.
    pub fn is_open(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for WriteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteGate")
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            base_url: None,
            rate_limit: None,
            timeout: Duration::from_secs(15),
            max_attempts: 4,
            backoff_base: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(10),
            metrics: None,
            max_in_flight: 4,
            max_wait: Duration::from_secs(10),
            extra_roots: Vec::new(),
            write_gate: None,
            network: egress::NetworkPolicy::OPEN,
        }
    }
}

/// Credentials read from Secrets, by role (`token`, `privateKey`, `username`, `password`).
#[derive(Default)]
pub struct Credentials(pub BTreeMap<String, SecretString>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "[REDACTED]")))
            .finish()
    }
}

impl Credentials {
    pub fn get(&self, role: &str) -> Result<&SecretString, String> {
        self.0
            .get(role)
            .ok_or_else(|| format!("credential {role:?} missing"))
    }
}

/// Build the backend for a provider spec.
pub fn build_backend(
    spec: &KeyProviderSpec,
    creds: Credentials,
    mut opts: ClientOptions,
) -> Result<Arc<dyn KeyBackend>, String> {
    if let Some(rl) = &spec.rate_limit {
        // `as` saturates (NaN → 0); http::rate_limiter clamps both to their bounds.
        let burst = rl
            .burst
            .unwrap_or_else(|| rl.requests_per_second.ceil().max(1.0) as u32);
        opts.rate_limit = Some((rl.requests_per_second, burst.max(1)));
    }
    use keysmith_api::ProviderConfig;
    let config = spec
        .provider()
        .ok_or("exactly one provider block must be set")?;
    opts.base_url = Some(config.base_url().to_string());
    Ok(match config {
        ProviderConfig::OpenRouter(p) => {
            Arc::new(openrouter::OpenRouterClient::new(p, creds, opts)?)
        }
        ProviderConfig::Boltz(p) => Arc::new(boltz::BoltzClient::new(p, creds, opts)?),
        ProviderConfig::UCloud(p) => Arc::new(ucloud::UCloudClient::new(p, creds, opts)?),
        ProviderConfig::DigitalOcean(p) => {
            Arc::new(digitalocean::DigitalOceanClient::new(p, creds, opts)?)
        }
        ProviderConfig::Bifrost(p) => Arc::new(bifrost::BifrostClient::new(p, creds, opts)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_as_json_schema_reads_them() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "integral")]
            n: Option<i64>,
        }
        let n = |s: &str| serde_json::from_str::<T>(s).map(|t| t.n);
        assert_eq!(n(r#"{"n": 100}"#).unwrap(), Some(100));
        assert_eq!(n(r#"{"n": 100.0}"#).unwrap(), Some(100));
        assert_eq!(n(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(n(r#"{}"#).unwrap(), None);
        assert!(n(r#"{"n": 1.5}"#).is_err());
        assert!(n(r#"{"n": 1e300}"#).is_err());
    }

    #[test]
    fn ip_lists_compare_by_what_they_admit() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ip_set(&v(&[
                "10.0.0.1/8",
                "192.168.1.7/32",
                " 2001:DB8::0001 ",
                "10.0.0.0/8"
            ])),
            ip_set(&v(&["2001:db8::1", "10.0.0.0/8", "192.168.1.7"]))
        );
        assert_ne!(ip_set(&v(&["10.0.0.0/8"])), ip_set(&v(&["10.0.0.0/16"])));
        // What is not an address is compared as written.
        assert_eq!(ip_set(&v(&["any"])), v(&["any"]));
        assert_eq!(set(&v(&["b", "a", "a "])), ["a", "b"]);
    }

    #[test]
    fn decimals_normalise() {
        assert_eq!(normalize_decimal("75").as_deref(), Some("75"));
        assert_eq!(normalize_decimal("75.50").as_deref(), Some("75.5"));
        assert_eq!(normalize_decimal("007.000").as_deref(), Some("7"));
        assert_eq!(normalize_decimal("0.05").as_deref(), Some("0.05"));
        assert_eq!(normalize_decimal("-1"), None);
        assert_eq!(normalize_decimal("1e3"), None);
        assert_eq!(normalize_decimal("1."), None);
        assert_eq!(decimal_from_f64(12.5), "12.5");
        assert_eq!(decimal_from_f64(75.0), "75");
        assert_eq!(decimal_from_f64(0.1 + 0.2), "0.3");
    }

    #[test]
    fn durations_parse_go_style() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("five minutes").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn a_ttl_beyond_the_calendar_is_a_far_expiry_not_a_panic() {
        // About 570,000 years: a std Duration, but past the last moment chrono can represent.
        let spec = keysmith_api::ApiKeySpec {
            ttl: Some("5000000000h".into()),
            ..Default::default()
        };
        let s = KeySettings::from_spec(&spec, "n".into(), Utc::now()).unwrap();
        assert_eq!(s.expires_at, Some(DateTime::<Utc>::MAX_UTC));
        let bad = keysmith_api::ApiKeySpec {
            ttl: Some("soon".into()),
            ..Default::default()
        };
        let e = KeySettings::from_spec(&bad, "n".into(), Utc::now()).unwrap_err();
        assert!(e.starts_with("spec.ttl: \"soon\""), "{e}");
    }
}
