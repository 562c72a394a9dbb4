//! `ApiKey`: one key at one provider, delivered into one Secret.
#![allow(clippy::duplicated_attributes)] // kube printcolumn(...) repeats `type_ =` by design

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A key at a provider whose plaintext keysmith keeps in a Secret of this namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keysmith.dev",
    version = "v1alpha1",
    kind = "ApiKey",
    namespaced,
    status = "ApiKeyStatus",
    shortname = "ak",
    category = "keysmith",
    doc = "An API key at a provider. keysmith creates (or adopts) it, writes its value into a Secret of this namespace, keeps its settings in sync, reports usage and revokes it when the ApiKey is deleted.",
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".spec.providerRef.name",
        description = "The KeyProvider or ClusterKeyProvider serving this key"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The key is live and its value is in the Secret"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Key",
        type_ = "string",
        json_path = ".status.keyHint",
        description = "Prefix or masked form of the key, as the provider shows it"
    ),
    printcolumn(
        name = "Last Used",
        type_ = "date",
        json_path = ".status.lastUsedAt",
        description = "When the key was last seen used: status.lastUsed says how that is known"
    ),
    printcolumn(
        name = "Expires",
        type_ = "date",
        json_path = ".status.expiresAt",
        description = "When the key expires (where it does); see the ExpiringSoon condition"
    ),
    printcolumn(
        name = "Next Rotation",
        type_ = "string",
        json_path = ".status.nextRotationAt",
        description = "When keysmith next rotates the key on schedule (spec.rotation)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    derive = "Default"
)]
#[x_kube(
    validation = Rule::new("!(has(self.expiresAt) && has(self.ttl))").message("set expiresAt or ttl, not both"),
    validation = Rule::new("!(has(self.keyRef) && has(self.source))").message("keyRef (adopt an existing key) and source (push a value) exclude each other"),
    validation = Rule::new("[has(self.openrouter), has(self.boltz), has(self.ucloud), has(self.digitalocean), has(self.bifrost)].filter(x, x).size() <= 1").message("set at most one provider-specific block"),
    validation = Rule::new("has(self.keyRef) == has(oldSelf.keyRef) && (!has(self.keyRef) || self.keyRef == oldSelf.keyRef)").message("keyRef is immutable: create a new ApiKey to manage another key"),
    validation = Rule::new("(has(self.secret) && has(self.secret.name) ? self.secret.name : '') == (has(oldSelf.secret) && has(oldSelf.secret.name) ? oldSelf.secret.name : '')").message("secret.name is immutable"),
    validation = Rule::new("!has(self.source) || !has(self.rotation) || (!has(self.rotation.every) && !has(self.rotation.renewBefore))").message("a pushed key (source) rotates when its source Secret changes: spec.rotation takes only gracePeriod here, not every or renewBefore"),
    validation = Rule::new("!has(self.rotation) || !has(self.rotation.renewBefore) || !has(self.ttl) || duration(self.rotation.renewBefore) < duration(self.ttl)").message("rotation.renewBefore must be shorter than ttl, or every new key would be due at once")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// The KeyProvider (this namespace) or ClusterKeyProvider that serves this key. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("providerRef is immutable: create a new ApiKey for another provider"))]
    pub provider_ref: ProviderRef,
    /// Name of the key at the provider. Default `<namespace>/<name>`. May not start with
    /// `keysmith-attempt-` (the provisional name keys are created under, docs/crash-safety.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(validation = Rule::new("!self.startsWith('keysmith-attempt-')").message("displayName may not start with keysmith-attempt- (keysmith's provisional key names)"))]
    pub display_name: Option<String>,
    /// Disable the key at the provider without deleting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// When the key stops working (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"), length(max = 64))]
    pub expires_at: Option<String>,
    /// Lifetime of the key from its creation (Go duration, e.g. `720h`); the alternative to expiresAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("ttl must be a positive duration such as 720h"))]
    pub ttl: Option<String>,
    /// Spend limit of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Box<SpendLimit>>,
    /// Source addresses (IPs, ranges or CIDRs) allowed to use the key. Empty: any.
    #[serde(default, rename = "allowedIPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 100)))]
    pub allowed_ips: Vec<String>,
    /// Models the key may call. Empty: the provider's default (usually all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 256)))]
    pub models: Vec<String>,
    /// OpenRouter-specific settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openrouter: Option<Box<OpenRouterKeySpec>>,
    /// Boltz-specific settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boltz: Option<Box<BoltzKeySpec>>,
    /// UCloud ModelVerse-specific settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ucloud: Option<Box<UCloudKeySpec>>,
    /// DigitalOcean-specific settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digitalocean: Option<Box<DigitalOceanKeySpec>>,
    /// Bifrost-specific settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bifrost: Option<Box<BifrostKeySpec>>,
    /// Adopt an existing key at the provider instead of creating one. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ref: Option<Box<KeyRef>>,
    /// Push a value you own (from a Secret) to the provider, for providers whose keys take a
    /// user-supplied value (Bifrost provider keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Box<KeySource>>,
    /// The Secret that receives the key's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Box<SecretSpec>>,
    /// What happens to the key at the provider when this ApiKey is deleted: `Delete` (default)
    /// revokes it; `Orphan` leaves it and keeps the Secret.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// What keysmith does when a field the provider cannot change on an existing key is edited
    /// (e.g. expiresAt at OpenRouter, anything at Boltz): `Report` (default) says in the status
    /// which fields need a new key; `Replace` creates a new key, writes it to the Secret, then
    /// revokes the old one.
    #[serde(default)]
    pub on_immutable_change: ImmutableChangePolicy,
    /// When keysmith replaces the key with a new one: on a schedule (`every`), ahead of its
    /// expiry (`renewBefore`), and always on demand when the `keysmith.dev/rotate` annotation
    /// gets a new value. The old key stays live for `gracePeriod`, then it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Box<RotationSpec>>,
    /// Workloads in this namespace restarted after each new key value, the way
    /// `kubectl rollout restart` does (pod template annotation `keysmith.dev/restartedAt`).
    /// A missing workload is reported in an Event and a condition; the key still works.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u.kind == t.kind && u.name == t.name))").message("rolloutRestartTargets must not list a workload twice"))]
    pub rollout_restart_targets: Vec<RestartTarget>,
    /// Warnings before money or time runs out: `usageThresholds` of the limit (condition
    /// `UsageHigh`). `ExpiringSoon` needs no setting (see docs/alerts.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Box<crate::AlertsSpec>>,
    /// How many key generations `status.history` keeps, newest first (default 10, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50), extend("format" = "int32"))]
    pub history_limit: Option<u32>,
}

/// Annotations under this prefix are keysmith's: it reacts to them (a change reconciles the
/// ApiKey) and keeps them in its cached copies.
pub const ANNOTATION_PREFIX: &str = "keysmith.dev/";
/// Annotation on an ApiKey: each new value rotates the key once (`kubectl annotate apikey NAME
/// keysmith.dev/rotate=$(date +%s) --overwrite`).
pub const ROTATE_ANNOTATION: &str = "keysmith.dev/rotate";
/// Pod template annotation keysmith sets on `rolloutRestartTargets` after a new key value.
pub const RESTARTED_AT_ANNOTATION: &str = "keysmith.dev/restartedAt";
/// Annotation on a written Secret: sha256 (hex) of the id of the key it holds and of when that
/// value was issued, for Reloader-style tools and `checksum/` pod annotations. Never a hash of
/// the value.
pub const KEY_HASH_ANNOTATION: &str = "keysmith.dev/key-hash";

/// Rotation of a key (`spec.rotation`). Durations are Go-style (`90m`, `720h`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.every) || duration(has(self.gracePeriod) ? self.gracePeriod : '1h') < duration(self.every)").message("rotation.gracePeriod (default 1h) must be shorter than rotation.every: the old key must be gone before the next rotation"),
    validation = Rule::new("!has(self.every) || !has(self.renewBefore) || duration(self.renewBefore) < duration(self.every)").message("rotation.renewBefore must be shorter than rotation.every")
)]
pub struct RotationSpec {
    /// Rotate this often: the first rotation is this long after the key was created, the next
    /// ones this long after the last rotation. Between 1m and 8760h. Absent: no schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("rotation.every must be a duration between 1m and 8760h, such as 720h"))]
    pub every: Option<String>,
    /// For keys that expire (expiresAt, ttl, or an expiry set at the provider): rotate this long
    /// before the expiry, as cert-manager renews certificates. Between 1m and 8760h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("rotation.renewBefore must be a duration between 1m and 8760h, such as 72h"))]
    pub renew_before: Option<String>,
    /// How long the old key stays live after the new value is in the Secret (with
    /// rolloutRestartTargets: after the restarted workloads have rolled out, or at the latest
    /// 10m after the restart). Between 0s and 720h; default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('720h')").message("rotation.gracePeriod must be a duration between 0s and 720h, such as 1h"))]
    pub grace_period: Option<String>,
    /// Allow a rotation that stops the old value at once (DigitalOcean's regenerate has no
    /// grace period): workloads fail until they restart with the new value. Required to rotate
    /// DigitalOcean keys; other providers never need it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downtime: bool,
}

/// A workload restarted after each new key value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet` (group apps).
    pub kind: RestartKind,
    /// Name of the workload in the ApiKey's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("name must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"))]
    pub name: String,
}

/// Kind of a workload keysmith restarts.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
pub enum RestartKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl RestartKind {
    /// The resource name (plural, lowercase) as RBAC and the API paths spell it.
    pub fn resource(self) -> &'static str {
        match self {
            RestartKind::Deployment => "deployments",
            RestartKind::StatefulSet => "statefulsets",
            RestartKind::DaemonSet => "daemonsets",
        }
    }
}

impl std::fmt::Display for RestartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartKind::Deployment => "Deployment",
            RestartKind::StatefulSet => "StatefulSet",
            RestartKind::DaemonSet => "DaemonSet",
        })
    }
}

/// Which provider object serves an ApiKey.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// `KeyProvider` (same namespace) or `ClusterKeyProvider`.
    #[serde(default)]
    pub kind: ProviderKind,
    /// Name of the provider object (a DNS-1123 subdomain).
    #[x_kube(validation = Rule::new("self != ''").message("providerRef.name must not be empty"))]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Kind of provider object.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum ProviderKind {
    /// A namespaced KeyProvider in the ApiKey's namespace.
    KeyProvider,
    /// A cluster-scoped ClusterKeyProvider.
    #[default]
    ClusterKeyProvider,
}

/// A spend limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpendLimit {
    /// Amount in the provider's currency (USD for most), as a decimal string such as `"75"` or `"12.50"`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?$')").message("amount must be a non-negative decimal such as 75 or 12.50"))]
    pub amount: String,
    /// When the spent amount resets: `daily`, `weekly`, `monthly` or `never` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<LimitReset>,
}

/// Reset period of a spend limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitReset {
    Daily,
    Weekly,
    Monthly,
    Never,
}

impl LimitReset {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReset::Daily => "daily",
            LimitReset::Weekly => "weekly",
            LimitReset::Monthly => "monthly",
            LimitReset::Never => "never",
        }
    }
}

/// OpenRouter-specific key settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenRouterKeySpec {
    /// Count bring-your-own-key spend against the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_byok_in_limit: Option<bool>,
}

/// Boltz-specific key settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BoltzKeySpec {
    /// Workspace of the key. Default: the provider's workspaceID, else the organisation's default.
    #[serde(
        default,
        rename = "workspaceID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 128))]
    pub workspace_id: Option<String>,
    /// `live` (default) or `test` (synthetic, GPU-free resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<BoltzMode>,
}

/// Boltz key mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BoltzMode {
    Live,
    Test,
}

/// UCloud ModelVerse-specific key settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UCloudKeySpec {
    /// Disable ModelVerse inference for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modelverse_disabled: Option<bool>,
    /// Disable the sandbox for this key (UCloud documents this as not yet effective).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_disabled: Option<bool>,
    /// Daily spend cap, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub daily_limit_amount: Option<String>,
    /// Monthly spend cap, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub monthly_limit_amount: Option<String>,
}

/// DigitalOcean-specific key settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DigitalOceanKeySpec {
    /// Mint an agent API key for this agent (uuid). Absent: a model access key, which must be
    /// adopted with keyRef because DigitalOcean retired model-key creation over the API.
    #[serde(default, rename = "agentUUID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub agent_uuid: Option<String>,
}

/// Bifrost-specific key settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BifrostKeySpec {
    /// Provider keys (with `source`): the upstream provider the gateway uses the value for
    /// (`openai`, `anthropic`, `azure`, `bedrock`, `vertex`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub provider: Option<String>,
    /// Provider keys: load-balancing weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Description stored with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Virtual keys: which upstream providers (and their keys) the key may use. Empty (and
    /// `models` empty): not managed by keysmith. At create the key then has no provider
    /// configs, which Bifrost treats as "no provider allowed"; emptying the list later leaves
    /// the gateway's configs as they are (remove them at the gateway, or list what to keep).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub provider_configs: Vec<BifrostProviderConfig>,
    /// Virtual keys: token and request rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<BifrostRateLimit>,
    /// Provider keys: Azure configuration, passed to the gateway as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::apikey::free_form")]
    pub azure_key_config: Option<serde_json::Value>,
    /// Provider keys: Vertex configuration, passed to the gateway as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::apikey::free_form")]
    pub vertex_key_config: Option<serde_json::Value>,
    /// Provider keys: Bedrock configuration, passed to the gateway as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::apikey::free_form")]
    pub bedrock_key_config: Option<serde_json::Value>,
}

/// One upstream provider a Bifrost virtual key may use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BifrostProviderConfig {
    /// Upstream provider name (`openai`, `anthropic`, …).
    #[schemars(length(max = 64))]
    pub provider: String,
    /// Load-balancing weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Models allowed through this provider (`*` for all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 256)))]
    pub allowed_models: Vec<String>,
    /// Provider key ids this virtual key may use (`*` for all).
    #[serde(default, rename = "keyIDs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 256)))]
    pub key_ids: Vec<String>,
}

/// Token and request rate limits of a Bifrost virtual key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BifrostRateLimit {
    /// Tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_max_limit: Option<i64>,
    /// Token window (`30s`, `5m`, `1h`, `1d`, `1w`, `1M`, `1Y`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub token_reset_duration: Option<String>,
    /// Requests per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_max_limit: Option<i64>,
    /// Request window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub request_reset_duration: Option<String>,
}

/// An existing key at the provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// The provider's id of the key (hash, uuid or KeyId).
    #[x_kube(validation = Rule::new("self != ''").message("keyRef.id must not be empty"))]
    #[schemars(length(max = 256))]
    pub id: String,
}

/// Where a pushed key's value comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeySource {
    /// A key of a Secret in this namespace that you own; keysmith reads it and never writes it.
    pub secret_ref: LocalSecretKeyRef,
}

/// A key of a Secret in the ApiKey's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretKeyRef {
    /// Name of the Secret (a DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Shape of the Secret keysmith writes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Name of the Secret (in the ApiKey's namespace; a DNS-1123 subdomain). Default: the
    /// ApiKey's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Data key holding the plaintext. Default `api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
    /// Extra shape for workloads: type, labels, annotations and data entries rendered from
    /// `{{ .key }}` (the plaintext), `{{ .keyID }}`, `{{ .keyHint }}` and `{{ .name }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,
}

/// Template for the written Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Secret type. Default `Opaque`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub type_: Option<String>,
    /// Labels added to the Secret (at most 64; values up to 63 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::apikey::label_map")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 317)").message("a label key has at most 317 characters (a 253-character prefix, '/', and a 63-character name)"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret (at most 32; values up to 4096 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::apikey::annotation_map")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 317)").message("an annotation key has at most 317 characters (a 253-character prefix, '/', and a 63-character name)"))]
    pub annotations: BTreeMap<String, String>,
    /// Extra data entries; values may use `{{ .key }}`, `{{ .keyID }}`, `{{ .keyHint }}`, `{{ .name }}`.
    /// At most 16 entries of up to 8192 characters each (before rendering).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::apikey::data_map")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 253)").message("a Secret data key has at most 253 characters"))]
    pub data: BTreeMap<String, String>,
}

/// What happens at the provider when an ApiKey is deleted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Revoke (delete) the key at the provider.
    #[default]
    Delete,
    /// Leave the key at the provider and keep the Secret.
    Orphan,
}

/// What happens when a field the provider cannot update changes.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ImmutableChangePolicy {
    /// Report the fields in the Ready condition and keep the current key.
    #[default]
    Report,
    /// Create a replacement key, write it to the Secret, then revoke the old key.
    Replace,
}

/// Observed state of an ApiKey. Every field is deterministic: a reconcile that finds nothing new
/// writes nothing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` with a reason a person can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Which provider serves the key (openrouter, boltz, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_type: Option<String>,
    /// The provider's id of the key (hash, uuid or KeyId). Not secret.
    #[serde(default, rename = "keyID", skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Prefix or masked rendering of the key, as the provider shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hint: Option<String>,
    /// When the provider created the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When the key expires, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `status.lastUsed.at`, kept for the `LAST USED` printer column. `status.lastUsed` is the
    /// authoritative record: it says how the time is known and how precise it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// When the key was last used and how keysmith knows: reported by the provider (Boltz),
    /// derived from usage counters that rose between two refreshes (OpenRouter, UCloud, Bifrost
    /// virtual keys), or not reported by this provider (DigitalOcean, Bifrost provider keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<LastUsed>,
    /// Spend reported by the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The Secret holding the key's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Fields changed in the spec that the provider cannot update on the existing key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields_needing_new_key: Vec<String>,
    /// Pushed keys: resourceVersion of the source Secret last pushed (a change re-pushes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// Recorded *before* every create call: lets keysmith find and revoke a key whose create
    /// answered but whose value never reached the Secret (e.g. the operator was killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<Box<PendingCreate>>,
    /// Where the key lives at the provider when keys are grouped below the account (a
    /// DigitalOcean agent, a Boltz workspace, a Bifrost upstream provider). The key is read,
    /// updated and revoked there even after the spec names another place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_scope: Option<KeyLocation>,
    /// Keys replaced by a newer one that keysmith still has to revoke at the provider (the
    /// revoke failed, or is not due yet). Retried on every reconcile and on deletion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousKey>,
    /// When the key was last rotated (replaced by a new value on schedule, before expiry, on
    /// demand or after its source changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<String>,
    /// The next scheduled rotation (spec.rotation.every or renewBefore); absent without a
    /// schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<String>,
    /// Rotation bookkeeping: the last on-demand request handled, a rotation in flight, and
    /// the workload restarts the grace period waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Box<RotationStatus>>,
    /// Backoff of creates that failed (provider refusal, a Secret that cannot be written): no
    /// create is attempted before `notBefore`, across reconciles and restarts. Cleared by a
    /// successful create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_backoff: Option<Box<CreateBackoff>>,
    /// When this ApiKey's creates of the last hour were sent (RFC 3339, oldest first), recorded
    /// with the `pendingCreate` marker before each create: no more than the provider object's
    /// `createLimit.perApiKeyPerHour` in any hour, across restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub recent_creates: Vec<String>,
    /// The alerts already raised (`UsageHigh` per threshold and period, `ExpiringSoon` per
    /// expiry), so that none is raised twice, across reconciles and restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Box<crate::AlertsStatus>>,
    /// What earlier keys of this ApiKey spent in the current period of `spec.limit`: a new key
    /// gets only what is left of the limit (issue 21). Kept here, where tenants cannot write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_carry_over: Option<Box<LimitCarryOver>>,
    /// Every key generation this ApiKey had, newest first (bounded by `spec.historyLimit`):
    /// its id and hint (never the value), when and why it was made, who asked, when and why it
    /// was revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub history: Vec<KeyGeneration>,
}

/// Spend of replaced keys counted against `spec.limit` for the rest of the period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitCarryOver {
    /// The `spec.limit.reset` it was counted for; a different reset in the spec ignores it.
    pub reset: String,
    /// When the period ends and the carried spend stops counting (RFC 3339); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_ends_at: Option<String>,
    /// What the replaced keys spent in the period, in the provider's unit (decimal string).
    pub spent: String,
    /// The replaced keys counted, each with what it had spent when its limit was lowered to
    /// that spend (newest last; older entries are folded into `spent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub keys: Vec<CarriedKey>,
}

/// One replaced key whose spend is carried over.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CarriedKey {
    /// The provider's id of the key.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// What it had spent in the period (decimal string).
    pub spent: String,
    /// Its limit at the provider was lowered to `spent` (it can spend no more).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub limit_lowered: bool,
}

/// One key generation in `status.history`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyGeneration {
    /// The provider's id of the key (never its value).
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// Prefix or masked form of the key, as the provider shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hint: Option<String>,
    /// When keysmith got the key (RFC 3339).
    pub created_at: String,
    /// Why: `Created`, `Rotated`, `Adopted`, `Regenerated` (same id, new value), `Replaced`
    /// (a spec change the provider cannot make in place) or `Recreated` (the key was gone at
    /// the provider).
    pub reason: String,
    /// What made a rotation happen: `Schedule`, `OnDemand`, `BeforeExpiry`, `SourceChanged`,
    /// `Leak` (on demand with a zero grace period, as `kubectl keysmith revoke-now` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Who asked, as the API server recorded it in `metadata.managedFields` (a field manager
    /// name, chosen by the client; not an authenticated user: see docs/rotation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<RequestedBy>,
    /// When keysmith revoked it, or saw it gone (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Why: `GracePeriodEnded`, `Replaced` (revoked with no grace), `ValueRegenerated` (the
    /// old value died with an in-place regenerate) or `GoneAtProvider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
}

/// The field manager that last wrote the field which asked for a key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedBy {
    /// `managedFields[].manager`: the name the client gave (kubectl: `kubectl-annotate`,
    /// `kubectl-edit`, `kubectl-client-side-apply`; server-side apply: `--field-manager`).
    #[schemars(length(max = 128))]
    pub field_manager: String,
    /// `managedFields[].operation`: `Update` or `Apply`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    /// `managedFields[].time`: when that manager last changed its fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The field it wrote (`metadata.annotations[keysmith.dev/rotate]`, `spec`).
    pub field: String,
}

/// Failed creates in a row and when the next may be tried.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBackoff {
    /// Failed creates in a row.
    // Kubernetes knows only int32/int64 formats: a u32 is an int64 bounded to its range.
    #[schemars(range(min = 0, max = 4294967295u32), extend("format" = "int64"))]
    pub failures: u32,
    /// No create before this time (RFC 3339).
    pub not_before: String,
    /// The generation whose create failed: an edit of the spec may try once at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Why the last create failed (never a secret value).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_failure: String,
}

/// Rotation bookkeeping in the status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The value of the `keysmith.dev/rotate` annotation last acted on: a different value
    /// rotates once more, the same value never again (not even after an operator restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_request: Option<String>,
    /// A rotation whose new key may exist but is not yet the recorded one. Written together
    /// with `pendingCreate`, before the provider is asked for the new key: after a crash the
    /// replaced key still gets its grace period instead of an immediate revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<RotationInProgress>,
    /// Workloads restarted after the last new value; the grace period of the replaced key
    /// starts when all of them have rolled out, or at `graceStartsBy` at the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// A rotation in flight.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationInProgress {
    /// What started it: `Schedule`, `BeforeExpiry`, `OnDemand` or `SourceChanged`.
    pub trigger: String,
    /// The `keysmith.dev/rotate` value being handled (OnDemand only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The key being replaced.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// Where the replaced key lives, if below the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<KeyLocation>,
    /// When the rotation started (RFC 3339).
    pub started_at: String,
}

/// Restarts the grace period of the replaced key waits for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The `keysmith.dev/restartedAt` value written to the pod templates.
    pub restarted_at: String,
    /// The restarted workloads and the generation the restart produced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<RolloutTarget>,
    /// The grace period starts at this moment at the latest, rolled out or not (Pods that
    /// never become ready must not keep an old key alive forever).
    pub grace_starts_by: String,
}

/// One restarted workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: RestartKind,
    /// Name of the workload.
    pub name: String,
    /// metadata.generation after the restart patch; rolled out once the workload's status
    /// reports this generation observed and every replica updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The workload has rolled out the restarted template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_out: bool,
}

/// Where a key lives below the provider account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyLocation {
    /// The family of keys (DigitalOcean `model`/`agent`, Bifrost `virtual`/`provider`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub family: String,
    /// The parent the key lives under (an agent uuid, a workspace, an upstream provider).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
}

/// A replaced key waiting to be revoked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKey {
    /// The provider's id of the key.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// When keysmith revokes it (RFC 3339); it retries until the provider confirms.
    pub delete_after: String,
    /// Where the key lives, if not where the current key does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<KeyLocation>,
}

/// Marker of a create call in flight.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingCreate {
    /// Name the key is created under at the provider.
    pub name: String,
    /// When the attempt started (RFC 3339); keys of that name created since then are this attempt's.
    pub started_at: String,
    /// Random id of the attempt, also sent to the provider where it has a field for it.
    pub attempt: String,
    /// Where the key is created (agent, workspace, upstream provider), so that recovery looks
    /// there even if the spec changed between the crash and the recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<KeyLocation>,
}

/// How the last use of a key is known.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum LastUsedSource {
    /// The provider reports a last-use time for the key (Boltz `last_used_at`).
    Provider,
    /// The provider reports usage counters only: a counter that rose between two refreshes
    /// means the key was used in that interval (`at` is when the rise was seen, `precision` how
    /// long before `at` the use may have been).
    UsageDelta,
    /// Nothing this provider reports can tell when the key was used.
    #[default]
    NotReported,
}

/// When a key was last used, and how that is known.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastUsed {
    /// When (RFC 3339). Absent: no use seen yet (`Provider`: never used; `UsageDelta`: no
    /// counter rose since keysmith began watching this key), or `NotReported`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// `Provider`, `UsageDelta` or `NotReported`.
    pub source: LastUsedSource,
    /// `UsageDelta` only: the use happened within this long before `at` (the provider's
    /// refresh interval, e.g. `5m`); longer if a refresh was missed (an operator restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub precision: Option<String>,
}

/// Spend of a key as reported by the provider, as decimal strings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<String>,
    /// Limit minus spend, where the provider reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_remaining: Option<String>,
    /// Currency or unit of the amounts (e.g. USD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Spend through your own upstream provider keys (OpenRouter BYOK: `byok_usage*`), in the
    /// same unit; counted against the limit only with `openrouter.includeByokInLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byok: Option<Box<UsageAmounts>>,
    /// When the limit's spend counter resets, where the provider reports it (Bifrost: the
    /// budget's `last_reset` plus its window). Providers that reset on calendar days (UTC),
    /// such as OpenRouter, leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// Spend per period, as decimal strings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageAmounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<String>,
}

/// Schema for a free-form JSON object (kept as is by the API server).
/// A map of strings of at most `entries` entries and `len` characters per value.
fn string_map(entries: u32, len: u32) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": entries,
        "additionalProperties": { "type": "string", "maxLength": len }
    })
}

pub(crate) fn label_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_map(64, 63)
}

pub(crate) fn annotation_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_map(32, 4096)
}

pub(crate) fn data_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_map(16, 8192)
}

pub(crate) fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 32,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

impl ApiKey {
    /// Name of the key at the provider.
    pub fn display_name(&self) -> String {
        use kube::ResourceExt;
        self.spec.display_name.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                self.namespace().unwrap_or_default(),
                self.name_any()
            )
        })
    }

    /// Name of the Secret receiving the value.
    pub fn secret_name(&self) -> String {
        use kube::ResourceExt;
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| self.name_any())
    }

    /// Data key holding the plaintext.
    pub fn secret_data_key(&self) -> String {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.key.clone())
            .unwrap_or_else(|| "api-key".to_string())
    }
}

/// When a key expires, as its spec says: parsed once from `expiresAt` (wins) or `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `spec.expiresAt`: a fixed time.
    At(chrono::DateTime<chrono::Utc>),
    /// `spec.ttl`: this long after the key is created.
    After(std::time::Duration),
}

impl Expiry {
    /// The expiry of a key created at `created`.
    pub fn for_key_created(
        &self,
        created: chrono::DateTime<chrono::Utc>,
    ) -> chrono::DateTime<chrono::Utc> {
        match self {
            Expiry::At(t) => *t,
            // A ttl too long to represent means "never" in practice, never a panic.
            Expiry::After(d) => chrono::Duration::from_std(*d)
                .ok()
                .and_then(|d| created.checked_add_signed(d))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        }
    }
}

/// The provider-specific block of an [`ApiKeySpec`], borrowed: the one place that decides
/// which of `openrouter`, `boltz`, `ucloud`, `digitalocean` and `bifrost` is set. Match on it
/// instead of testing the five `Option`s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProviderBlock<'a> {
    OpenRouter(&'a OpenRouterKeySpec),
    Boltz(&'a BoltzKeySpec),
    UCloud(&'a UCloudKeySpec),
    DigitalOcean(&'a DigitalOceanKeySpec),
    Bifrost(&'a BifrostKeySpec),
}

impl ProviderBlock<'_> {
    /// The provider the block is for (its field name is [`crate::ProviderType::as_str`]).
    pub fn provider_type(&self) -> crate::ProviderType {
        use crate::ProviderType;
        match self {
            ProviderBlock::OpenRouter(_) => ProviderType::OpenRouter,
            ProviderBlock::Boltz(_) => ProviderType::Boltz,
            ProviderBlock::UCloud(_) => ProviderType::UCloud,
            ProviderBlock::DigitalOcean(_) => ProviderType::DigitalOcean,
            ProviderBlock::Bifrost(_) => ProviderType::Bifrost,
        }
    }
}

impl ApiKeySpec {
    /// Every provider-specific block that is set, in documentation order. The CRD admits at
    /// most one; an object that carries more (written past the API server's validation) shows
    /// them all, so that validation can name each.
    pub fn provider_blocks(&self) -> impl Iterator<Item = ProviderBlock<'_>> {
        [
            self.openrouter.as_deref().map(ProviderBlock::OpenRouter),
            self.boltz.as_deref().map(ProviderBlock::Boltz),
            self.ucloud.as_deref().map(ProviderBlock::UCloud),
            self.digitalocean
                .as_deref()
                .map(ProviderBlock::DigitalOcean),
            self.bifrost.as_deref().map(ProviderBlock::Bifrost),
        ]
        .into_iter()
        .flatten()
    }

    /// The provider-specific block, if one is set (the first of [`Self::provider_blocks`]).
    pub fn provider_block(&self) -> Option<ProviderBlock<'_>> {
        self.provider_blocks().next()
    }

    /// The expiry the spec asks for, if any; an error names the field and never panics.
    pub fn expiry(&self) -> Result<Option<Expiry>, String> {
        if let Some(at) = &self.expires_at {
            let t = chrono::DateTime::parse_from_rfc3339(at)
                .map_err(|e| format!("spec.expiresAt {at:?} is not an RFC 3339 time: {e}"))?;
            return Ok(Some(Expiry::At(t.with_timezone(&chrono::Utc))));
        }
        let Some(ttl) = &self.ttl else {
            return Ok(None);
        };
        let d: kube::core::Duration = ttl
            .parse()
            .map_err(|e| format!("spec.ttl: {ttl:?} is not a duration like 5m or 720h: {e}"))?;
        if d.is_negative() {
            return Err(format!("spec.ttl: {ttl:?} is negative"));
        }
        Ok(Some(Expiry::After(d.into())))
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    #[test]
    fn the_provider_block_is_found_once() {
        let mut spec = ApiKeySpec::default();
        assert_eq!(spec.provider_block(), None);
        spec.ucloud = Some(Box::new(UCloudKeySpec {
            daily_limit_amount: Some("5".into()),
            ..Default::default()
        }));
        match spec.provider_block() {
            Some(ProviderBlock::UCloud(u)) => {
                assert_eq!(u.daily_limit_amount.as_deref(), Some("5"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            spec.provider_block().map(|b| b.provider_type()),
            Some(crate::ProviderType::UCloud)
        );
        // Two blocks (past the CRD's rule): both are shown, in documentation order.
        spec.openrouter = Some(Default::default());
        let types: Vec<_> = spec.provider_blocks().map(|b| b.provider_type()).collect();
        assert_eq!(
            types,
            [crate::ProviderType::OpenRouter, crate::ProviderType::UCloud]
        );
    }

    #[test]
    fn expires_at_wins_over_ttl_and_bad_values_are_errors() {
        let spec = |ttl: Option<&str>, at: Option<&str>| ApiKeySpec {
            ttl: ttl.map(Into::into),
            expires_at: at.map(Into::into),
            ..Default::default()
        };
        assert_eq!(spec(None, None).expiry(), Ok(None));
        let created = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let ttl = spec(Some("90m"), None).expiry().unwrap().unwrap();
        assert_eq!(ttl, Expiry::After(std::time::Duration::from_secs(5400)));
        assert_eq!(
            ttl.for_key_created(created).to_rfc3339(),
            "2026-01-01T01:30:00+00:00"
        );
        let at = spec(Some("1h"), Some("2027-01-01T00:00:00Z"))
            .expiry()
            .unwrap()
            .unwrap();
        assert_eq!(
            at.for_key_created(created).to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        assert!(spec(Some("soon"), None)
            .expiry()
            .unwrap_err()
            .contains("spec.ttl"));
        assert!(spec(Some("-5m"), None).expiry().is_err());
        let huge = Expiry::After(std::time::Duration::from_secs(u64::MAX));
        assert_eq!(
            huge.for_key_created(created),
            chrono::DateTime::<chrono::Utc>::MAX_UTC
        );
        assert!(spec(None, Some("tomorrow"))
            .expiry()
            .unwrap_err()
            .contains("spec.expiresAt"));
    }
}
