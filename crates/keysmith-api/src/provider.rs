//! `KeyProvider` (namespaced) and `ClusterKeyProvider` (cluster-scoped): how to reach one
//! provider account. Both share [`KeyProviderSpec`].
#![allow(clippy::duplicated_attributes)] // kube printcolumn(...) repeats `type_ =` by design

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SecretKeySelector;

/// How to reach one provider account. Exactly one provider block must be set.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keysmith.dev",
    version = "v1alpha1",
    kind = "KeyProvider",
    namespaced,
    status = "KeyProviderStatus",
    shortname = "kp",
    category = "keysmith",
    doc = "A provider account that ApiKeys of this namespace can use. Credentials come from a Secret in this namespace.",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.providerType", description = "Which provider this account is at"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Credentials verified against the provider"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    derive = "PartialEq",
    derive = "Default",
    validation = Rule::new("[has(self.spec.openrouter), has(self.spec.boltz), has(self.spec.ucloud), has(self.spec.digitalocean), has(self.spec.bifrost)].filter(x, x).size() == 1").message("exactly one provider block (openrouter, boltz, ucloud, digitalocean, bifrost) must be set").field_path(".spec"),
    validation = Rule::new("!has(self.spec.namespaceSelector)").message("namespaceSelector is for ClusterKeyProvider; a KeyProvider serves its own namespace only").field_path(".spec.namespaceSelector"),
    validation = Rule::new("!has(self.spec.adoption) || !has(self.spec.adoption.namespaceSelector)").message("adoption.namespaceSelector is for ClusterKeyProvider; a KeyProvider serves its own namespace only").field_path(".spec.adoption.namespaceSelector")
)]
#[serde(rename_all = "camelCase")]
pub struct KeyProviderSpec {
    /// OpenRouter account reached with a management key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openrouter: Option<OpenRouterProvider>,
    /// Boltz compute API organisation reached with an admin API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boltz: Option<BoltzProvider>,
    /// UCloud ModelVerse project reached with an API key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ucloud: Option<UCloudProvider>,
    /// DigitalOcean Gradient account reached with a personal access or OAuth token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digitalocean: Option<DigitalOceanProvider>,
    /// A self-hosted Bifrost gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bifrost: Option<BifrostProvider>,
    /// Client-side rate limit for calls to this provider account, shared by all ApiKeys using it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// How fast keys are minted through this provider object, shared fairly between the
    /// namespaces that use it, and how many creates one ApiKey may make in an hour. Absent:
    /// the defaults of each field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_limit: Option<CreateLimit>,
    /// How often usage and last-used data are refreshed from the provider (Go duration, e.g.
    /// `5m`). One paged listing per interval serves every ApiKey of this provider. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("refreshInterval must be at least 10s"))]
    pub refresh_interval: Option<String>,
    /// ClusterKeyProvider only: which namespaces may use this provider. Empty or absent admits
    /// every namespace. Ignored (and rejected) on a namespaced KeyProvider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "bounded_label_selector")]
    pub namespace_selector: Option<LabelSelector>,
    /// Whether ApiKeys may take over existing keys of this account (`spec.keyRef`). A
    /// KeyProvider allows it unless `allowed: false`; a ClusterKeyProvider, shared by tenants,
    /// only with `allowed: true`, and then only for the namespaces `namespaceSelector` admits.
    /// A key another ApiKey manages is never adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionPolicy>,
    /// Extra CA certificates (PEM) trusted for this provider's base URL, e.g. a self-hosted
    /// gateway behind a private CA. Added to the platform's roots (the image's CA bundle,
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR`) and the built-in Mozilla roots, never replacing them.
    /// Read from the provider object's namespace (a ClusterKeyProvider: the namespace the
    /// reference names, default the operator's), like credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
}

/// Where the PEM CA certificates of a provider object are: exactly one of a Secret key or a
/// ConfigMap key (at most 1 MiB, at most 1000 certificates).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.configMapRef)").message("caBundle needs exactly one of secretRef and configMapRef"))]
#[serde(rename_all = "camelCase")]
pub struct CaBundle {
    /// A Secret key holding PEM certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeySelector>,
    /// A ConfigMap key holding PEM certificates (e.g. one trust-manager writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeySelector>,
}

/// A key of a ConfigMap.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeySelector {
    /// Name of the ConfigMap (a DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the ConfigMap's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Namespace of the ConfigMap. Only for a ClusterKeyProvider (default: the operator's
    /// namespace); a namespaced KeyProvider always reads its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

/// Who may adopt existing keys of a provider account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionPolicy {
    /// Adoption through this provider object is allowed.
    #[serde(default)]
    pub allowed: bool,
    /// ClusterKeyProvider only: the namespaces whose ApiKeys may adopt (absent: every
    /// namespace the provider admits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "bounded_label_selector")]
    pub namespace_selector: Option<LabelSelector>,
}

/// A LabelSelector with bounds (issue 17: nothing a spec holds is unbounded): at most 64
/// matchLabels (values as Kubernetes allows, 63 characters) and 16 matchExpressions of at most
/// 64 values each.
pub(crate) fn bounded_label_selector(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    use serde_json::{json, Value};
    let mut v = Value::from(<Option<LabelSelector> as schemars::JsonSchema>::json_schema(g));
    fn bound(v: &mut Value) {
        let Some(o) = v.as_object_mut() else { return };
        if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
            if let Some(ml) = props.get_mut("matchLabels").and_then(Value::as_object_mut) {
                ml.insert("maxProperties".into(), json!(64));
                ml.insert(
                    "additionalProperties".into(),
                    json!({"type": "string", "maxLength": 63}),
                );
                ml.insert(
                    "x-kubernetes-validations".into(),
                    json!([{"rule": "self.all(k, size(k) <= 317)", "message": "a label key has at most 317 characters"}]),
                );
            }
            if let Some(me) = props
                .get_mut("matchExpressions")
                .and_then(Value::as_object_mut)
            {
                me.insert("maxItems".into(), json!(16));
                if let Some(item) = me
                    .get_mut("items")
                    .and_then(|i| i.get_mut("properties"))
                    .and_then(Value::as_object_mut)
                {
                    for (k, max) in [("key", 317), ("operator", 16)] {
                        if let Some(f) = item.get_mut(k).and_then(Value::as_object_mut) {
                            f.insert("maxLength".into(), json!(max));
                        }
                    }
                    if let Some(vals) = item.get_mut("values").and_then(Value::as_object_mut) {
                        vals.insert("maxItems".into(), json!(64));
                        if let Some(i) = vals.get_mut("items").and_then(Value::as_object_mut) {
                            i.insert("maxLength".into(), json!(63));
                        }
                    }
                }
            }
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            if let Some(alts) = o.get_mut(k).and_then(Value::as_array_mut) {
                alts.iter_mut().for_each(bound);
            }
        }
    }
    bound(&mut v);
    schemars::Schema::try_from(v).expect("a schema object")
}

impl KeyProviderSpec {
    /// Whether adoption is allowed, and for which namespaces: `cluster` for a ClusterKeyProvider
    /// (opt-in), else a KeyProvider (allowed unless turned off).
    pub fn adoption_allowed(&self, cluster: bool) -> (bool, Option<&LabelSelector>) {
        match &self.adoption {
            Some(a) => (a.allowed, a.namespace_selector.as_ref()),
            None => (!cluster, None),
        }
    }
}

/// OpenRouter: keys are created with a management key (created in the OpenRouter web UI).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenRouterProvider {
    /// API base URL. Default `https://openrouter.ai/api/v1`; override for proxies or the emulator.
    #[serde(default, rename = "baseURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub base_url: Option<String>,
    /// Secret key holding the OpenRouter management key.
    pub management_key_secret_ref: SecretKeySelector,
    /// Workspace (UUID) in which keys are created and listed. Default: the account's default workspace.
    #[serde(
        default,
        rename = "workspaceID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 128))]
    pub workspace_id: Option<String>,
}

impl OpenRouterProvider {
    /// The base URL when `baseURL` is not set: the only server in OpenRouter's API description.
    pub const DEFAULT_BASE_URL: &'static str = "https://openrouter.ai/api/v1";
}

/// Boltz compute API: workspace keys are created with an admin key (`sk_bc_admin_…`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BoltzProvider {
    /// API base URL. Default `https://api.boltz.bio`.
    #[serde(default, rename = "baseURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub base_url: Option<String>,
    /// Secret key holding the Boltz admin API key.
    pub api_key_secret_ref: SecretKeySelector,
    /// Workspace in which keys are created unless the ApiKey names another. Default: the
    /// organisation's default workspace.
    #[serde(
        default,
        rename = "workspaceID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 128))]
    pub workspace_id: Option<String>,
}

impl BoltzProvider {
    /// The base URL when `baseURL` is not set: the SDK's production environment.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.boltz.bio";
}

/// UCloud ModelVerse: signed requests with an API key pair.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UCloudProvider {
    /// API base URL. Default `https://api.ucloud.cn` (international: `https://api.ucloud-global.com`).
    #[serde(default, rename = "baseURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub base_url: Option<String>,
    /// The account's API public key (not a secret).
    #[x_kube(validation = Rule::new("self != ''").message("publicKey must not be empty"))]
    #[schemars(length(max = 256))]
    pub public_key: String,
    /// Secret key holding the API private key used to sign requests.
    pub private_key_secret_ref: SecretKeySelector,
    /// Project the keys belong to. Sub-accounts must set it; blank means the default project.
    #[serde(default, rename = "projectID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub project_id: Option<String>,
    /// Region, for the request-log actions. The key actions do not need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
}

impl UCloudProvider {
    /// The base URL when `baseURL` is not set: the management API of UCloud's China site (the
    /// Go SDK's default).
    pub const DEFAULT_BASE_URL: &'static str = "https://api.ucloud.cn";
}

/// DigitalOcean Gradient: model and agent keys managed with an API token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DigitalOceanProvider {
    /// API base URL. Default `https://api.digitalocean.com`.
    #[serde(default, rename = "baseURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub base_url: Option<String>,
    /// Secret key holding the DigitalOcean API token (needs the `genai:*` scopes).
    pub token_secret_ref: SecretKeySelector,
}

impl DigitalOceanProvider {
    /// The base URL when `baseURL` is not set: the only server in DigitalOcean's API description.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.digitalocean.com";
}

/// A self-hosted Bifrost gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BifrostProvider {
    /// The gateway's base URL, e.g. `http://bifrost.ai-gateway:8080`.
    #[serde(rename = "baseURL")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("baseURL must be an http(s) URL"))]
    pub base_url: String,
    /// Credentials when the gateway has authentication on. Absent: no authentication (Bifrost's
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<BifrostAuth>,
}

/// How keysmith authenticates to a Bifrost gateway with auth enabled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BifrostAuth {
    /// `Basic` (admin username and password; the Secret holds `username` and `password` keys) or
    /// `Bearer` (a session token or `bfst-` management key in the key named by `key`).
    #[serde(default)]
    pub scheme: BifrostAuthScheme,
    /// Name of the Secret (a DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// For a ClusterKeyProvider: namespace of the Secret (default: the operator's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    /// Bearer: the key holding the token (default `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

/// Authentication scheme for a Bifrost gateway.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum BifrostAuthScheme {
    /// HTTP Basic with the admin username and password.
    #[default]
    Basic,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

/// A token bucket applied to every call keysmith makes to one provider account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (may be fractional, e.g. 0.5), from 0.001 to 10000.
    #[x_kube(validation = Rule::new("self > 0.0").message("requestsPerSecond must be positive"))]
    #[schemars(range(min = 0.001, max = 10000.0))]
    pub requests_per_second: f64,
    /// Largest burst above the sustained rate, from 1 to 10000. Default: max(1,
    /// requestsPerSecond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Kubernetes knows only int32/int64 (a `uint32` format is warned about on every apply).
    #[schemars(range(min = 1, max = 10000), extend("format" = "int32"))]
    pub burst: Option<u32>,
}

/// Limits on minting keys (creates, and rotations that mint or regenerate a key) through one
/// provider object. A namespace gets an even share of the rate while other namespaces also
/// create; alone, it gets all of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreateLimit {
    /// Keys minted per second through this provider object, split evenly between the
    /// namespaces creating at the moment (from 0.001 to 10000). Default:
    /// `rateLimit.requestsPerSecond` when set, else 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001, max = 10000.0))]
    pub per_second: Option<f64>,
    /// Largest burst of creates above the rate, split like the rate (from 1 to 10000).
    /// Default: `rateLimit.burst` when set, else max(1, perSecond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: Option<i32>,
    /// Creates one ApiKey may send in any hour: its first key, rotations (on demand, on
    /// schedule, before expiry), recreates and retries of failed creates (from 1 to 100,
    /// default 10). Beyond it an on-demand rotation is deferred, not dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub per_api_key_per_hour: Option<i32>,
}

/// Observed state of a provider object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyProviderStatus {
    /// The generation last verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Which provider block is set (openrouter, boltz, ucloud, digitalocean, bifrost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_type: Option<String>,
    /// `Ready`: the credentials were accepted by the provider. `CredentialsExpiring`: they
    /// expire within 7 days (where the provider tells their expiry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last time a call with these credentials succeeded (RFC 3339; rewritten at most
    /// every 30 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_verified_at: Option<String>,
    /// When the credentials expire, where the provider tells it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expires_at: Option<String>,
    /// The expiry the `CredentialsExpiring` Event was published for (once per expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expiry_announced: Option<String>,
}

/// The cluster-scoped twin of [`KeyProvider`]; credentials come from a Secret in the namespace
/// named in each secret reference (default: the operator's namespace).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keysmith.dev",
    version = "v1alpha1",
    kind = "ClusterKeyProvider",
    status = "KeyProviderStatus",
    shortname = "ckp",
    category = "keysmith",
    doc = "A provider account that ApiKeys of any namespace admitted by spec.namespaceSelector can use.",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.providerType", description = "Which provider this account is at"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Credentials verified against the provider"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    derive = "PartialEq",
    derive = "Default",
    validation = Rule::new("[has(self.spec.openrouter), has(self.spec.boltz), has(self.spec.ucloud), has(self.spec.digitalocean), has(self.spec.bifrost)].filter(x, x).size() == 1").message("exactly one provider block (openrouter, boltz, ucloud, digitalocean, bifrost) must be set").field_path(".spec")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterKeyProviderSpec {
    #[serde(flatten)]
    pub inner: KeyProviderSpec,
}
