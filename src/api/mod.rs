//! The custom resources of group `keysmith.dev`, version `v1alpha1`.

pub mod apikey;
pub mod provider;

pub use apikey::*;
pub use provider::*;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// API group of every keysmith resource.
pub const GROUP: &str = "keysmith.dev";
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
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self != ''").message("name must not be empty"))]
    pub name: String,
    /// Key within the Secret's data.
    #[x_kube(validation = Rule::new("self != ''").message("key must not be empty"))]
    pub key: String,
    /// Namespace of the Secret. Only for a ClusterKeyProvider (default: the operator's
    /// namespace); a namespaced KeyProvider always reads its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

impl KeyProviderSpec {
    /// Which provider block is set, if exactly one is.
    pub fn provider_type(&self) -> Option<ProviderType> {
        let set: Vec<ProviderType> = [
            self.openrouter
                .is_some()
                .then_some(ProviderType::OpenRouter),
            self.boltz.is_some().then_some(ProviderType::Boltz),
            self.ucloud.is_some().then_some(ProviderType::UCloud),
            self.digitalocean
                .is_some()
                .then_some(ProviderType::DigitalOcean),
            self.bifrost.is_some().then_some(ProviderType::Bifrost),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// Every CRD keysmith defines, in the order `keysmith crds` prints them.
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![ApiKey::crd(), KeyProvider::crd(), ClusterKeyProvider::crd()]
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
