//! One backend per provider object ([`Backends`]), rebuilt when its generation or a credential
//! Secret changes; what resolving a provider object gives ([`ResolvedProvider`]) or why it
//! failed ([`ResolveError`]); the label selectors of `namespaceSelector`s. Resolving itself
//! (tenancy rule 6) is [`super::resolve`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::reasons::Reason;
use crate::api::{KeyProviderSpec, ProviderType};
use crate::providers::KeyBackend;

/// Default refresh interval of a provider object.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How long a built backend is trusted before its credential Secrets are checked again.
pub const CREDENTIAL_RECHECK: Duration = Duration::from_secs(60);

/// A cached backend and what it was built from.
pub struct BackendEntry {
    generation: Option<i64>,
    secret_versions: Vec<Option<String>>,
    checked: Mutex<Instant>,
    backend: Arc<dyn KeyBackend>,
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

/// The backends built, one per provider object (`KeyProvider/ns/name` or
/// `ClusterKeyProvider/name`), each with what it was built from. Dropped with the provider
/// object ([`Backends::forget`]) and after the provider refused its credentials.
#[derive(Default)]
pub struct Backends {
    built: Mutex<HashMap<String, Arc<BackendEntry>>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// What [`Backends::cached`] found for a provider object.
pub enum Cached {
    /// Built from this generation and checked within [`CREDENTIAL_RECHECK`]: use it.
    Fresh(Arc<dyn KeyBackend>),
    /// Built from this generation, but its credential Secrets are due for a check.
    Recheck(Arc<BackendEntry>),
    /// None, or built from another generation.
    Missing,
}

impl Backends {
    /// The backend of provider object `id` at `generation`, if one was built.
    pub fn cached(&self, id: &str, generation: Option<i64>) -> Cached {
        let Some(entry) = self.built.lock().unwrap().get(id).cloned() else {
            return Cached::Missing;
        };
        if entry.generation != generation {
            return Cached::Missing;
        }
        if entry.checked.lock().unwrap().elapsed() < CREDENTIAL_RECHECK {
            return Cached::Fresh(entry.backend.clone());
        }
        Cached::Recheck(entry)
    }

    /// The credential Secrets of a [`Cached::Recheck`] entry are at `versions`: its backend if
    /// they did not change (checked again in [`CREDENTIAL_RECHECK`]).
    pub fn confirm(
        entry: &BackendEntry,
        versions: &[Option<String>],
    ) -> Option<Arc<dyn KeyBackend>> {
        if entry.secret_versions != versions {
            return None;
        }
        *entry.checked.lock().unwrap() = Instant::now();
        Some(entry.backend.clone())
    }

    /// Keep the backend built for provider object `id` from `generation` and credential
    /// Secrets at `versions`.
    pub fn insert(
        &self,
        id: &str,
        generation: Option<i64>,
        versions: Vec<Option<String>>,
        backend: Arc<dyn KeyBackend>,
    ) {
        let entry = Arc::new(BackendEntry {
            generation,
            secret_versions: versions,
            checked: Mutex::new(Instant::now()),
            backend,
        });
        self.built.lock().unwrap().insert(id.to_string(), entry);
    }

    /// The provider object `id` is gone, or refused its credentials (they are read again).
    pub fn forget(&self, id: &str) {
        self.built.lock().unwrap().remove(id);
    }

    /// The provider objects with a backend.
    pub fn providers(&self) -> Vec<String> {
        self.built.lock().unwrap().keys().cloned().collect()
    }

    /// Whether provider object `id` has a backend.
    pub fn contains(&self, id: &str) -> bool {
        self.built.lock().unwrap().contains_key(id)
    }

    /// Provider objects with a backend.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.built.lock().unwrap().len()
    }

    #[cfg(any(test, feature = "test-hooks"))]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    fn backend() -> Arc<dyn KeyBackend> {
        let spec: KeyProviderSpec = serde_json::from_value(serde_json::json!({
            "openrouter": { "managementKeySecretRef": { "name": "m", "key": "k" } }
        }))
        .unwrap();
        let mut creds = crate::providers::Credentials::default();
        creds
            .0
            .insert("token".into(), secrecy::SecretString::from("t"));
        crate::providers::build_backend(&spec, creds, Default::default()).unwrap()
    }

    #[test]
    fn a_backend_is_reused_for_its_generation_until_forgotten() {
        let b = Backends::default();
        assert!(matches!(
            b.cached("ClusterKeyProvider/p", Some(1)),
            Cached::Missing
        ));
        b.insert(
            "ClusterKeyProvider/p",
            Some(1),
            vec![Some("5".into())],
            backend(),
        );
        b.insert("KeyProvider/team-a/kp", None, Vec::new(), backend());
        assert!(matches!(
            b.cached("ClusterKeyProvider/p", Some(1)),
            Cached::Fresh(_)
        ));
        assert!(
            matches!(b.cached("ClusterKeyProvider/p", Some(2)), Cached::Missing),
            "a new generation is built anew"
        );
        // Past the recheck, the same credential versions confirm it; others do not.
        let entry = b.built.lock().unwrap()["ClusterKeyProvider/p"].clone();
        *entry.checked.lock().unwrap() = Instant::now() - CREDENTIAL_RECHECK;
        let Cached::Recheck(entry) = b.cached("ClusterKeyProvider/p", Some(1)) else {
            panic!("due for a recheck");
        };
        assert!(Backends::confirm(&entry, &[Some("6".into())]).is_none());
        assert!(Backends::confirm(&entry, &[Some("5".into())]).is_some());
        assert!(matches!(
            b.cached("ClusterKeyProvider/p", Some(1)),
            Cached::Fresh(_)
        ));
        assert_eq!(b.len(), 2);
        b.forget("ClusterKeyProvider/p");
        assert!(!b.contains("ClusterKeyProvider/p"));
        assert_eq!(b.providers(), vec!["KeyProvider/team-a/kp".to_string()]);
        b.forget("KeyProvider/team-a/kp");
        assert!(b.is_empty());
    }

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
