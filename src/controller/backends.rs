//! Resolving the provider object of an ApiKey (tenancy rule 6) and caching one backend per
//! provider object, rebuilt when its generation or a credential Secret changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::ResourceExt;

use super::context::Context;
use super::credentials::{read_ca_bundle, read_credentials};
use super::reasons::Reason;
use crate::api::{
    ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderSpec, ProviderKind, ProviderType,
};
use crate::providers::{self, KeyBackend};

/// Default refresh interval of a provider object.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How long a built backend is trusted before its credential Secrets are checked again.
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(60);

/// A cached backend and what it was built from.
pub(crate) struct BackendEntry {
    generation: Option<i64>,
    secret_versions: Vec<Option<String>>,
    checked: Mutex<Instant>,
    backend: Arc<dyn KeyBackend>,
}

#[cfg(test)]
impl BackendEntry {
    /// An entry for `backend` (tests fill the cache without a cluster).
    pub(crate) fn for_test(backend: Arc<dyn KeyBackend>) -> Self {
        BackendEntry {
            generation: None,
            secret_versions: Vec::new(),
            checked: Mutex::new(Instant::now()),
            backend,
        }
    }
}

/// A provider object an ApiKey resolved to.
#[derive(Clone)]
pub struct ResolvedProvider {
    /// `KeyProvider/ns/name` or `ClusterKeyProvider/name`: the cache key.
    pub id: String,
    pub provider_type: ProviderType,
    pub backend: Arc<dyn KeyBackend>,
    pub refresh_interval: Duration,
    /// `spec.createLimit` (defaults applied): the fair share and the per-ApiKey budget.
    pub create_limits: super::fairness::CreateLimits,
}

/// Why a provider could not be resolved; each maps to a condition reason.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    ProviderRefNotFound(String),
    #[error("{0}")]
    ProviderNotAllowed(String),
    #[error("{0}")]
    CredentialsNotFound(String),
    #[error("{0}")]
    InvalidProvider(String),
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl ResolveError {
    pub fn reason(&self) -> Reason {
        match self {
            ResolveError::ProviderRefNotFound(_) => Reason::ProviderRefNotFound,
            ResolveError::ProviderNotAllowed(_) => Reason::ProviderNotAllowed,
            ResolveError::CredentialsNotFound(_) => Reason::CredentialsNotFound,
            ResolveError::InvalidProvider(_) => Reason::InvalidProvider,
            ResolveError::Kube(_) => Reason::KubernetesError,
        }
    }
}

impl From<ResolveError> for super::error::Failure {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Kube(k) => k.into(),
            other => super::error::Failure::permanent(other.reason(), other.to_string()),
        }
    }
}

/// A provider object to build a backend for.
pub struct ProviderObject<'a> {
    /// `KeyProvider/ns/name` or `ClusterKeyProvider/name`.
    pub id: String,
    pub spec: &'a KeyProviderSpec,
    pub generation: Option<i64>,
    /// Some for a namespaced KeyProvider (credentials only from there), None for a
    /// ClusterKeyProvider.
    pub namespace: Option<&'a str>,
}

impl Context {
    /// Resolve the provider object of an ApiKey (tenancy rule 6) and its backend.
    ///
    /// An ApiKey being deleted resolves without the checks that admit creating keys
    /// (`--namespaced-providers`, `--cluster-providers`, a ClusterKeyProvider's
    /// `namespaceSelector`): its keys were made through this very provider object
    /// (`providerRef` is immutable) while it was admitted, and revoking them must stay possible
    /// after the admin narrowed who may create (invariant 7).
    pub async fn resolve(&self, ak: &ApiKey) -> Result<ResolvedProvider, ResolveError> {
        self.resolve_as(ak, ak.metadata.deletion_timestamp.is_some())
            .await
    }

    /// Resolve the provider object of an ApiKey to revoke keys made through it, without the
    /// checks that admit creating (see [`Context::resolve`]): replaced keys of a namespace that
    /// is no longer admitted still end with their grace period.
    pub async fn resolve_for_revoke(&self, ak: &ApiKey) -> Result<ResolvedProvider, ResolveError> {
        self.resolve_as(ak, true).await
    }

    async fn resolve_as(
        &self,
        ak: &ApiKey,
        deleting: bool,
    ) -> Result<ResolvedProvider, ResolveError> {
        let ns = ak.namespace().unwrap_or_default();
        let r = &ak.spec.provider_ref;
        match r.kind {
            ProviderKind::KeyProvider if !self.namespaced_providers && !deleting => Err(ResolveError::ProviderNotAllowed(format!(
                "this keysmith installation serves only ClusterKeyProviders (--namespaced-providers=false); KeyProvider {} cannot be used: ask a cluster admin for a ClusterKeyProvider",
                r.name
            ))),
            ProviderKind::KeyProvider => {
                let p = match self.cache.key_provider(&ns, &r.name) {
                    Some(p) => Some(p),
                    None => {
                        let api: Api<KeyProvider> = Api::namespaced(self.client.clone(), &ns);
                        api.get_opt(&r.name).await?.map(Arc::new)
                    }
                };
                let p = p.ok_or_else(|| {
                    ResolveError::ProviderRefNotFound(format!(
                        "KeyProvider {ns}/{} does not exist",
                        r.name
                    ))
                })?;
                self.resolve_object(ProviderObject {
                    id: format!("KeyProvider/{ns}/{}", r.name),
                    spec: &p.spec,
                    generation: p.metadata.generation,
                    namespace: Some(&ns),
                })
                .await
            }
            ProviderKind::ClusterKeyProvider if !self.cluster_providers && !deleting => Err(ResolveError::ProviderNotAllowed(format!(
                "this keysmith installation serves only KeyProviders of the ApiKey's namespace (--cluster-providers=false); ClusterKeyProvider {} cannot be used",
                r.name
            ))),
            ProviderKind::ClusterKeyProvider => {
                let p = match self.cache.cluster_provider(&r.name) {
                    Some(p) => Some(p),
                    None => {
                        let api: Api<ClusterKeyProvider> = Api::all(self.client.clone());
                        api.get_opt(&r.name).await?.map(Arc::new)
                    }
                };
                let p = p.ok_or_else(|| {
                    ResolveError::ProviderRefNotFound(format!(
                        "ClusterKeyProvider {} does not exist",
                        r.name
                    ))
                })?;
                if let Some(sel) = p.spec.inner.namespace_selector.as_ref().filter(|_| !deleting) {
                    let labels = self.namespace_labels(&ns).await?;
                    if !selector_matches(sel, &labels).map_err(|e| {
                        ResolveError::InvalidProvider(format!("ClusterKeyProvider {}: {e}", r.name))
                    })? {
                        return Err(ResolveError::ProviderNotAllowed(format!(
                            "ClusterKeyProvider {} does not admit namespace {ns} (spec.namespaceSelector)",
                            r.name
                        )));
                    }
                }
                self.resolve_object(ProviderObject {
                    id: format!("ClusterKeyProvider/{}", r.name),
                    spec: &p.spec.inner,
                    generation: p.metadata.generation,
                    namespace: None,
                })
                .await
            }
        }
    }

    /// Build (or reuse) the backend of a provider object.
    pub async fn resolve_object(
        &self,
        obj: ProviderObject<'_>,
    ) -> Result<ResolvedProvider, ResolveError> {
        let ProviderObject {
            id,
            spec,
            generation,
            namespace,
        } = obj;
        let config = spec.provider().ok_or_else(|| {
            ResolveError::InvalidProvider(format!("{id}: exactly one provider block must be set"))
        })?;
        super::provider::check_base_url(&self.allowed_base_url_hosts, &id, spec)
            .map_err(ResolveError::InvalidProvider)?;
        if namespace.is_some() {
            // Before the credentials are read: a refused KeyProvider gets nothing.
            super::provider::check_network(self.namespaced_network, spec)
                .map_err(|e| ResolveError::InvalidProvider(format!("{id}: {e}")))?;
        }
        let refresh_interval = match &spec.refresh_interval {
            Some(s) => providers::parse_duration(s)
                .map_err(|e| {
                    ResolveError::InvalidProvider(format!("{id}: spec.refreshInterval {e}"))
                })?
                .max(Duration::from_secs(10)),
            None => DEFAULT_REFRESH,
        };
        let create_limits = super::fairness::CreateLimits::of(spec);
        let resolved = |backend| ResolvedProvider {
            id: id.clone(),
            provider_type: config.provider_type(),
            backend,
            refresh_interval,
            create_limits,
        };
        let cached = self.backends.lock().unwrap().get(&id).cloned();
        if let Some(entry) = &cached {
            if entry.generation == generation
                && entry.checked.lock().unwrap().elapsed() < CREDENTIAL_RECHECK
            {
                return Ok(resolved(entry.backend.clone()));
            }
        }
        let mut read = read_credentials(self, &id, config.credential_refs(), namespace).await?;
        let mut options = self.client_options.clone();
        if let Some(bundle) = &spec.ca_bundle {
            let (roots, version) = read_ca_bundle(self, &id, bundle, namespace).await?;
            options.extra_roots = roots;
            read.versions.push(version);
        }
        if let Some(entry) = &cached {
            if entry.generation == generation && entry.secret_versions == read.versions {
                *entry.checked.lock().unwrap() = Instant::now();
                return Ok(resolved(entry.backend.clone()));
            }
        }
        if namespace.is_some() {
            // A tenant's KeyProvider: the admin's network policy (ClusterKeyProviders are the
            // admin's own).
            options.network = self.namespaced_network;
        }
        let backend = providers::build_backend(spec, read.credentials, options)
            .map_err(|e| ResolveError::InvalidProvider(format!("{id}: {e}")))?;
        let entry = Arc::new(BackendEntry {
            generation,
            secret_versions: read.versions,
            checked: Mutex::new(Instant::now()),
            backend: backend.clone(),
        });
        self.backends.lock().unwrap().insert(id.clone(), entry);
        // Settings or credentials changed: listings taken with the old ones are stale.
        self.forget_listings(&id);
        Ok(resolved(backend))
    }

    /// The labels of namespace `ns`: from the watch, else read.
    pub async fn namespace_labels(
        &self,
        ns: &str,
    ) -> Result<BTreeMap<String, String>, kube::Error> {
        if let Some(labels) = self.cache.namespace_labels(ns) {
            return Ok(labels);
        }
        let nsobj = Api::<Namespace>::all(self.client.clone()).get(ns).await?;
        Ok(nsobj.labels().clone())
    }

    /// Forget a backend (after the provider refused its credentials, so they are re-read).
    pub fn forget_backend(&self, id: &str) {
        self.backends.lock().unwrap().remove(id);
    }
}

/// A label name, the part of a label key after an optional prefix: 1 to 63 characters of
/// `[-._a-zA-Z0-9]`, starting and ending with an alphanumeric.
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key (a qualified name): `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn is_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => super::secret::is_dns1123_subdomain(prefix) && is_label_name(name),
        None => is_label_name(k),
    }
}

/// A label value: empty, or a label name.
fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name(v)
}

/// Check a LabelSelector as the API server checks one (`field` names it in the message): keys
/// are label keys, values label values, operators known; `In`/`NotIn` need values,
/// `Exists`/`DoesNotExist` take none.
pub fn check_selector(sel: &LabelSelector, field: &str) -> Result<(), String> {
    let bad_key = |k: &str| {
        let k = crate::providers::http::snippet(k);
        format!("{field}: {k:?} is not a valid label key ([prefix/]name: name 1 to 63 characters of [-._a-zA-Z0-9], alphanumeric at both ends; prefix a DNS-1123 subdomain)")
    };
    for (k, v) in sel.match_labels.iter().flatten() {
        if !is_label_key(k) {
            return Err(bad_key(k));
        }
        if !is_label_value(v) {
            let v = crate::providers::http::snippet(v);
            return Err(format!(
                "{field}: {v:?} (label {k}) is not a valid label value (up to 63 characters of [-._a-zA-Z0-9], alphanumeric at both ends)"
            ));
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        if !is_label_key(&e.key) {
            return Err(bad_key(&e.key));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "{field}: operator {} on {} needs at least one value",
                    e.operator, e.key
                ))
            }
            "In" | "NotIn" => {}
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "{field}: operator {} on {} takes no values",
                    e.operator, e.key
                ))
            }
            "Exists" | "DoesNotExist" => {}
            op => {
                let op = crate::providers::http::snippet(op);
                return Err(format!(
                    "{field}: unknown selector operator {op:?} (In, NotIn, Exists, DoesNotExist)"
                ));
            }
        }
        if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
            let v = crate::providers::http::snippet(v);
            return Err(format!(
                "{field}: {v:?} (label {}) is not a valid label value",
                e.key
            ));
        }
    }
    Ok(())
}

/// Evaluate a LabelSelector against labels; `Err` for a selector the API server would refuse.
pub fn selector_matches(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    check_selector(sel, "namespaceSelector")?;
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return Ok(false);
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            op => return Err(format!("unknown selector operator {op:?}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "ai".to_string())].into();
        let sel = LabelSelector {
            match_labels: Some(labels.clone()),
            match_expressions: None,
        };
        assert!(selector_matches(&sel, &labels).unwrap());
        assert!(!selector_matches(&sel, &BTreeMap::new()).unwrap());
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "NotIn".into(),
                values: Some(vec!["ai".into()]),
            }]),
        };
        assert!(!selector_matches(&sel, &labels).unwrap());
        assert!(selector_matches(&LabelSelector::default(), &labels).unwrap());
    }

    #[test]
    fn selectors_the_api_server_would_refuse_are_errors() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "ai".to_string())].into();
        let ml = |k: &str, v: &str| LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            match_expressions: None,
        };
        for ok in [
            "team",
            "example.com/team",
            "a",
            "A_b.c-9",
            "keysmith.dev/tenant",
        ] {
            assert!(check_selector(&ml(ok, "x"), "s").is_ok(), "{ok}");
        }
        for bad in [
            "not a valid key!",
            "",
            "-team",
            "team-",
            "Example.com/team",
            "a/b/c",
            "/team",
            &"x".repeat(64),
        ] {
            let err = check_selector(&ml(bad, "x"), "spec.namespaceSelector").unwrap_err();
            assert!(err.contains("not a valid label key"), "{bad}: {err}");
            assert!(selector_matches(&ml(bad, "x"), &labels).is_err());
        }
        assert!(check_selector(&ml("team", ""), "s").is_ok());
        assert!(check_selector(&ml("team", "a b"), "s")
            .unwrap_err()
            .contains("label value"));
        let expr = |op: &str, values: Option<Vec<String>>| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: op.into(),
                values,
            }]),
        };
        assert!(check_selector(&expr("In", None), "s")
            .unwrap_err()
            .contains("needs at least one value"));
        assert!(check_selector(&expr("Exists", Some(vec!["x".into()])), "s")
            .unwrap_err()
            .contains("takes no values"));
        assert!(
            check_selector(&expr("Matches", Some(vec!["x".into()])), "s")
                .unwrap_err()
                .contains("unknown selector operator")
        );
        assert!(
            check_selector(&expr("In", Some(vec!["no way".into()])), "s")
                .unwrap_err()
                .contains("label value")
        );
        assert!(check_selector(&expr("Exists", None), "s").is_ok());
    }
}
