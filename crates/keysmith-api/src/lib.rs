//! The custom resources of group `keysmith.dev`, version `v1alpha1`.

pub mod alerts;
pub mod apikey;
pub mod budget;
pub mod provider;

pub use alerts::*;
pub use apikey::*;
pub use budget::*;
pub use provider::*;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Finalizer that makes deletion of an ApiKey revoke its key at the provider first.
pub const FINALIZER: &str = "keysmith.dev/revoke";
/// Label put on every Secret keysmith writes; the controller watches only these.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "keysmith";
/// Annotation on a written Secret: the provider key id whose value the Secret holds.
pub const KEY_ID_ANNOTATION: &str = "keysmith.dev/key-id";
/// Annotation on a written Secret: the ApiKey it belongs to (`namespace/name`).
pub const OWNER_ANNOTATION: &str = "keysmith.dev/apikey";
/// Annotation a user sets on a Secret keysmith did not create to let keysmith take it over.
pub const ALLOW_ADOPT_ANNOTATION: &str = "keysmith.dev/allow-overwrite";
/// The field manager used for every write keysmith makes.
pub const FIELD_MANAGER: &str = "keysmith";

/// A reference to one key of a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret (a DNS-1123 subdomain).
    #[x_kube(validation = Rule::new("self != ''").message("name must not be empty"))]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the Secret's data.
    #[x_kube(validation = Rule::new("self != ''").message("key must not be empty"))]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Namespace of the Secret. Only for a ClusterKeyProvider (default: the operator's
    /// namespace); a namespaced KeyProvider always reads its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

/// The five providers keysmith speaks to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    OpenRouter,
    Boltz,
    UCloud,
    DigitalOcean,
    Bifrost,
}

impl ProviderType {
    /// Every provider, in documentation order.
    pub const ALL: [ProviderType; 5] = [
        ProviderType::OpenRouter,
        ProviderType::Boltz,
        ProviderType::UCloud,
        ProviderType::DigitalOcean,
        ProviderType::Bifrost,
    ];

    /// The name used in manifests, metrics labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::OpenRouter => "openrouter",
            ProviderType::Boltz => "boltz",
            ProviderType::UCloud => "ucloud",
            ProviderType::DigitalOcean => "digitalocean",
            ProviderType::Bifrost => "bifrost",
        }
    }
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderType::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown provider {s:?}; expected one of openrouter, boltz, ucloud, digitalocean, bifrost"))
    }
}

/// The provider block of a [`KeyProviderSpec`], borrowed: the one place that decides "which
/// provider is this". Match on it instead of testing the five `Option`s.
#[derive(Debug, Clone, Copy)]
pub enum ProviderConfig<'a> {
    OpenRouter(&'a OpenRouterProvider),
    Boltz(&'a BoltzProvider),
    UCloud(&'a UCloudProvider),
    DigitalOcean(&'a DigitalOceanProvider),
    Bifrost(&'a BifrostProvider),
}

/// One credential a provider object reads from a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    /// What the provider client calls it (`token`, `privateKey`, `username`, `password`).
    pub role: &'static str,
    /// Namespace of the Secret, if the spec names one (ClusterKeyProviders only).
    pub namespace: Option<String>,
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret's data.
    pub key: String,
}

impl CredentialRef {
    fn of(role: &'static str, s: &SecretKeySelector) -> Self {
        CredentialRef {
            role,
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            key: s.key.clone(),
        }
    }
}

impl<'a> ProviderConfig<'a> {
    /// Which provider this is.
    pub fn provider_type(&self) -> ProviderType {
        match self {
            ProviderConfig::OpenRouter(_) => ProviderType::OpenRouter,
            ProviderConfig::Boltz(_) => ProviderType::Boltz,
            ProviderConfig::UCloud(_) => ProviderType::UCloud,
            ProviderConfig::DigitalOcean(_) => ProviderType::DigitalOcean,
            ProviderConfig::Bifrost(_) => ProviderType::Bifrost,
        }
    }

    /// The base URL the provider object's client talks to: its `baseURL`, else the provider's
    /// default (a Bifrost gateway has none: `baseURL` is required).
    pub fn base_url(&self) -> &'a str {
        match self {
            ProviderConfig::OpenRouter(p) => p
                .base_url
                .as_deref()
                .unwrap_or(OpenRouterProvider::DEFAULT_BASE_URL),
            ProviderConfig::Boltz(p) => p
                .base_url
                .as_deref()
                .unwrap_or(BoltzProvider::DEFAULT_BASE_URL),
            ProviderConfig::UCloud(p) => p
                .base_url
                .as_deref()
                .unwrap_or(UCloudProvider::DEFAULT_BASE_URL),
            ProviderConfig::DigitalOcean(p) => p
                .base_url
                .as_deref()
                .unwrap_or(DigitalOceanProvider::DEFAULT_BASE_URL),
            ProviderConfig::Bifrost(p) => &p.base_url,
        }
    }

    /// The credentials the provider object reads, in the order the client expects them.
    pub fn credential_refs(&self) -> Vec<CredentialRef> {
        match self {
            ProviderConfig::OpenRouter(p) => {
                vec![CredentialRef::of("token", &p.management_key_secret_ref)]
            }
            ProviderConfig::Boltz(p) => vec![CredentialRef::of("token", &p.api_key_secret_ref)],
            ProviderConfig::UCloud(p) => {
                vec![CredentialRef::of("privateKey", &p.private_key_secret_ref)]
            }
            ProviderConfig::DigitalOcean(p) => {
                vec![CredentialRef::of("token", &p.token_secret_ref)]
            }
            ProviderConfig::Bifrost(p) => match &p.auth_secret_ref {
                None => vec![],
                Some(a) => {
                    let r = |role: &'static str, key: String| CredentialRef {
                        role,
                        namespace: a.namespace.clone(),
                        name: a.name.clone(),
                        key,
                    };
                    match a.scheme {
                        BifrostAuthScheme::Basic => vec![
                            r("username", "username".into()),
                            r("password", "password".into()),
                        ],
                        BifrostAuthScheme::Bearer => {
                            vec![r("token", a.key.clone().unwrap_or_else(|| "token".into()))]
                        }
                    }
                }
            },
        }
    }
}

impl KeyProviderSpec {
    /// The provider block, if exactly one is set.
    pub fn provider(&self) -> Option<ProviderConfig<'_>> {
        let set: Vec<ProviderConfig<'_>> = [
            self.openrouter.as_ref().map(ProviderConfig::OpenRouter),
            self.boltz.as_ref().map(ProviderConfig::Boltz),
            self.ucloud.as_ref().map(ProviderConfig::UCloud),
            self.digitalocean.as_ref().map(ProviderConfig::DigitalOcean),
            self.bifrost.as_ref().map(ProviderConfig::Bifrost),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Which provider block is set, if exactly one is.
    pub fn provider_type(&self) -> Option<ProviderType> {
        self.provider().map(|p| p.provider_type())
    }
}

/// Every CRD keysmith defines, in the order `keysmith crds` prints them.
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        ApiKey::crd(),
        KeyProvider::crd(),
        ClusterKeyProvider::crd(),
        KeyBudget::crd(),
        ClusterKeyBudget::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream (what `keysmith crds` prints).
pub fn crds_yaml() -> String {
    crd_files()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

const CRD_HEADER: &str =
    "# Generated from the Rust types by `keysmith crds`; do not edit (tests/chart.rs checks drift).\n";

/// One `(file name, YAML)` pair per CRD, named `<plural>.<group>.yaml` (the files of `crds/`
/// and `charts/keysmith/crds/`, written by `keysmith crds --output-dir DIR`).
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.as_deref().expect("a CRD has a name");
            let yaml = serde_yaml::to_string(crd).expect("a CRD serializes to YAML");
            (format!("{name}.yaml"), format!("{CRD_HEADER}{yaml}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(name: &str, key: &str) -> SecretKeySelector {
        SecretKeySelector {
            name: name.into(),
            key: key.into(),
            namespace: None,
        }
    }

    #[test]
    fn exactly_one_block_is_a_provider() {
        let mut spec = KeyProviderSpec::default();
        assert!(spec.provider().is_none());
        spec.boltz = Some(BoltzProvider {
            api_key_secret_ref: sel("b", "k"),
            ..Default::default()
        });
        assert_eq!(spec.provider_type(), Some(ProviderType::Boltz));
        spec.openrouter = Some(Default::default());
        assert!(spec.provider().is_none());
    }

    #[test]
    fn credential_refs_follow_the_block() {
        let spec = KeyProviderSpec {
            bifrost: Some(BifrostProvider {
                base_url: "http://b".into(),
                auth_secret_ref: Some(BifrostAuth {
                    scheme: BifrostAuthScheme::Basic,
                    name: "admin".into(),
                    namespace: Some("ops".into()),
                    key: None,
                }),
            }),
            ..Default::default()
        };
        let refs = spec.provider().unwrap().credential_refs();
        let roles: Vec<_> = refs.iter().map(|r| (r.role, r.key.as_str())).collect();
        assert_eq!(roles, [("username", "username"), ("password", "password")]);
        assert!(refs.iter().all(|r| r.namespace.as_deref() == Some("ops")));
        let spec = KeyProviderSpec {
            ucloud: Some(UCloudProvider {
                public_key: "pub".into(),
                private_key_secret_ref: sel("uc", "pk"),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            spec.provider().unwrap().credential_refs(),
            [CredentialRef {
                role: "privateKey",
                namespace: None,
                name: "uc".into(),
                key: "pk".into()
            }]
        );
    }
}
