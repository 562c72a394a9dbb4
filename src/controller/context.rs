//! State shared by every reconcile: the client, metrics, events, the per-provider-object backend
//! cache, and the per-provider-object listing snapshots that serve the batched usage refresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use secrecy::SecretString;

use crate::api::{
    ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderSpec, ProviderKind, ProviderType,
};
use crate::metrics::Metrics;
use crate::providers::{
    self, ClientOptions, Credentials, KeyBackend, KeyScope, ProviderError, ProviderKey,
};

/// Default refresh interval of a provider object.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How long a built backend is trusted before its credential Secrets are checked again.
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(60);

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The operator's namespace: default namespace of ClusterKeyProvider credential Secrets.
    pub operator_namespace: String,
    /// HTTP options applied to every provider client (tests shorten timeouts).
    pub client_options: ClientOptions,
    /// ClusterKeyProviders are served (see `keysmith run --cluster-providers`).
    pub cluster_providers: bool,
    /// Test hook: make the next creates stop right after the provider answered, as if the
    /// process had been killed there (crash-safety tests).
    pub crash_after_create: std::sync::atomic::AtomicBool,
    failures: Mutex<HashMap<String, u32>>,
    /// Per ApiKey: (provider type, ready, expiry in Unix seconds), for the gauges.
    tracked: Mutex<HashMap<String, Tracked>>,
    /// Per provider object: no create before this instant, and the message of the 429 that said so.
    create_holds: Mutex<HashMap<String, (Instant, String)>>,
    backends: Mutex<HashMap<String, Arc<BackendEntry>>>,
    snapshots: Mutex<HashMap<(String, KeyScope), SnapshotSlot>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("operator_namespace", &self.operator_namespace)
            .finish()
    }
}

struct BackendEntry {
    generation: Option<i64>,
    secret_versions: Vec<Option<String>>,
    checked: Mutex<Instant>,
    backend: Arc<dyn KeyBackend>,
}

/// What the gauges know of one ApiKey: provider type, ready, expiry (Unix seconds).
pub type Tracked = (String, bool, Option<i64>);

/// One listing, shared by the reconciles of a provider object and scope.
pub type SnapshotSlot = Arc<tokio::sync::Mutex<Snapshot>>;

/// The provider's keys of one scope as last listed.
#[derive(Default)]
pub struct Snapshot {
    pub fetched: Option<Instant>,
    pub keys: HashMap<String, ProviderKey>,
}

/// A provider object an ApiKey resolved to.
pub struct ResolvedProvider {
    /// `KeyProvider/ns/name` or `ClusterKeyProvider/name`: the cache key.
    pub id: String,
    pub provider_type: ProviderType,
    pub backend: Arc<dyn KeyBackend>,
    pub refresh_interval: Duration,
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
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::ProviderRefNotFound(_) => "ProviderRefNotFound",
            ResolveError::ProviderNotAllowed(_) => "ProviderNotAllowed",
            ResolveError::CredentialsNotFound(_) => "CredentialsNotFound",
            ResolveError::InvalidProvider(_) => "InvalidProvider",
            ResolveError::Kube(_) => "KubernetesError",
        }
    }
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        operator_namespace: String,
        reporter: &str,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: reporter.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let client_options = ClientOptions {
            metrics: Some(metrics.provider.clone()),
            ..ClientOptions::default()
        };
        Context {
            client,
            metrics,
            recorder,
            operator_namespace,
            client_options,
            cluster_providers: true,
            crash_after_create: Default::default(),
            failures: Mutex::new(HashMap::new()),
            tracked: Mutex::new(HashMap::new()),
            create_holds: Mutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
        }
    }

    /// Count a transient failure of an object; returns how many in a row.
    pub fn record_failure(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap();
        let n = f.entry(key.to_string()).or_default();
        *n += 1;
        *n
    }

    /// An object reconciled fine: its backoff starts over.
    pub fn clear_failures(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }

    /// Record an ApiKey's provider, readiness and expiry (None: forget it, it was deleted) and
    /// refresh the `keysmith_apikeys` and `keysmith_key_expiry_timestamp_seconds` gauges.
    pub fn track(&self, key: &str, state: Option<Tracked>) {
        let mut t = self.tracked.lock().unwrap();
        let changed = match state {
            Some(s) => t.insert(key.to_string(), s.clone()) != Some(s),
            None => t.remove(key).is_some(),
        };
        if !changed {
            return;
        }
        let mut counts: BTreeMap<(String, bool), i64> = BTreeMap::new();
        let mut soonest: BTreeMap<String, i64> = BTreeMap::new();
        for (provider, ready, expiry) in t.values() {
            *counts.entry((provider.clone(), *ready)).or_default() += 1;
            if let Some(e) = expiry {
                let s = soonest.entry(provider.clone()).or_insert(*e);
                *s = (*s).min(*e);
            }
        }
        self.metrics.apikeys.clear();
        for ((provider, ready), n) in counts {
            self.metrics
                .apikeys
                .get_or_create(&crate::metrics::ReadyLabels {
                    provider,
                    ready: ready.to_string(),
                })
                .set(n);
        }
        self.metrics.key_expiry.clear();
        for (provider, e) in soonest {
            self.metrics
                .key_expiry
                .get_or_create(&crate::metrics::ProviderLabel { provider })
                .set(e);
        }
    }

    /// The provider answered a create through `provider` (a provider object id) with 429 and
    /// Retry-After `wait`: hold every create through that provider object until then. The limit
    /// is the account's, not one key's.
    pub fn hold_creates(&self, provider: &str, wait: Duration, message: String) {
        self.create_holds
            .lock()
            .unwrap()
            .insert(provider.to_string(), (Instant::now() + wait, message));
    }

    /// What is left of a hold on creates through `provider`, with the message of the 429.
    pub fn creates_held(&self, provider: &str) -> Option<(Duration, String)> {
        let mut holds = self.create_holds.lock().unwrap();
        let (until, message) = holds.get(provider)?;
        match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some((left, message.clone())),
            _ => {
                holds.remove(provider);
                None
            }
        }
    }

    pub(crate) fn fault_crash_after_create(&self) -> bool {
        self.crash_after_create
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publish an Event about `obj`. Failures are logged, never fatal. Notes never hold secrets.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Resolve the provider object of an ApiKey (tenancy rule 6) and its backend.
    pub async fn resolve(&self, ak: &ApiKey) -> Result<ResolvedProvider, ResolveError> {
        let ns = ak.namespace().unwrap_or_default();
        let r = &ak.spec.provider_ref;
        match r.kind {
            ProviderKind::KeyProvider => {
                let api: Api<KeyProvider> = Api::namespaced(self.client.clone(), &ns);
                let p = api.get_opt(&r.name).await?.ok_or_else(|| {
                    ResolveError::ProviderRefNotFound(format!(
                        "KeyProvider {ns}/{} does not exist",
                        r.name
                    ))
                })?;
                let id = format!("KeyProvider/{ns}/{}", r.name);
                self.resolve_spec(id, &p.spec, p.metadata.generation, Some(&ns))
                    .await
            }
            ProviderKind::ClusterKeyProvider if !self.cluster_providers => Err(ResolveError::ProviderNotAllowed(format!(
                "this keysmith installation serves only KeyProviders of the ApiKey's namespace (--cluster-providers=false); ClusterKeyProvider {} cannot be used",
                r.name
            ))),
            ProviderKind::ClusterKeyProvider => {
                let api: Api<ClusterKeyProvider> = Api::all(self.client.clone());
                let p = api.get_opt(&r.name).await?.ok_or_else(|| {
                    ResolveError::ProviderRefNotFound(format!(
                        "ClusterKeyProvider {} does not exist",
                        r.name
                    ))
                })?;
                if let Some(sel) = &p.spec.inner.namespace_selector {
                    let nsobj = Api::<Namespace>::all(self.client.clone()).get(&ns).await?;
                    if !selector_matches(sel, nsobj.labels()).map_err(|e| {
                        ResolveError::InvalidProvider(format!("ClusterKeyProvider {}: {e}", r.name))
                    })? {
                        return Err(ResolveError::ProviderNotAllowed(format!(
                            "ClusterKeyProvider {} does not admit namespace {ns} (spec.namespaceSelector)",
                            r.name
                        )));
                    }
                }
                let id = format!("ClusterKeyProvider/{}", r.name);
                self.resolve_spec(id, &p.spec.inner, p.metadata.generation, None)
                    .await
            }
        }
    }

    /// Build (or reuse) the backend of a provider spec. `namespace`: Some for a namespaced
    /// KeyProvider (credentials only from there), None for a ClusterKeyProvider.
    pub async fn resolve_spec(
        &self,
        id: String,
        spec: &KeyProviderSpec,
        generation: Option<i64>,
        namespace: Option<&str>,
    ) -> Result<ResolvedProvider, ResolveError> {
        let provider_type = spec.provider_type().ok_or_else(|| {
            ResolveError::InvalidProvider(format!("{id}: exactly one provider block must be set"))
        })?;
        let refresh_interval = match &spec.refresh_interval {
            Some(s) => providers::parse_duration(s)
                .map_err(|e| {
                    ResolveError::InvalidProvider(format!("{id}: spec.refreshInterval {e}"))
                })?
                .max(Duration::from_secs(10)),
            None => DEFAULT_REFRESH,
        };
        let cached = self.backends.lock().unwrap().get(&id).cloned();
        if let Some(entry) = &cached {
            if entry.generation == generation
                && entry.checked.lock().unwrap().elapsed() < CREDENTIAL_RECHECK
            {
                return Ok(ResolvedProvider {
                    id,
                    provider_type,
                    backend: entry.backend.clone(),
                    refresh_interval,
                });
            }
        }
        let refs = providers::credential_refs(spec);
        let mut creds = Credentials::default();
        let mut versions = Vec::new();
        for (role, sns, name, key) in refs {
            let sns = match (namespace, sns) {
                (Some(own), Some(other)) if other != own => {
                    return Err(ResolveError::InvalidProvider(format!(
                        "{id}: a KeyProvider reads credentials from its own namespace only (secret ref names namespace {other})"
                    )))
                }
                (Some(own), _) => own.to_string(),
                (None, Some(other)) => other,
                (None, None) => self.operator_namespace.clone(),
            };
            let secret = Api::<Secret>::namespaced(self.client.clone(), &sns)
                .get_opt(&name)
                .await?
                .ok_or_else(|| {
                    ResolveError::CredentialsNotFound(format!(
                        "{id}: credentials Secret {sns}/{name} does not exist"
                    ))
                })?;
            let value = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ResolveError::CredentialsNotFound(format!(
                        "{id}: Secret {sns}/{name} has no non-empty key {key:?}"
                    ))
                })?;
            versions.push(secret.resource_version());
            creds.0.insert(role, SecretString::from(value));
        }
        if let Some(entry) = &cached {
            if entry.generation == generation && entry.secret_versions == versions {
                *entry.checked.lock().unwrap() = Instant::now();
                return Ok(ResolvedProvider {
                    id,
                    provider_type,
                    backend: entry.backend.clone(),
                    refresh_interval,
                });
            }
        }
        let backend = providers::build_backend(spec, creds, self.client_options.clone())
            .map_err(|e| ResolveError::InvalidProvider(format!("{id}: {e}")))?;
        let entry = Arc::new(BackendEntry {
            generation,
            secret_versions: versions,
            checked: Mutex::new(Instant::now()),
            backend: backend.clone(),
        });
        self.backends.lock().unwrap().insert(id.clone(), entry);
        // Settings or credentials changed: listings taken with the old ones are stale.
        self.snapshots
            .lock()
            .unwrap()
            .retain(|(pid, _), _| pid != &id);
        Ok(ResolvedProvider {
            id,
            provider_type,
            backend,
            refresh_interval,
        })
    }

    /// Forget a backend (after the provider refused its credentials, so they are re-read).
    pub fn forget_backend(&self, id: &str) {
        self.backends.lock().unwrap().remove(id);
    }

    /// The provider's keys of `scope`, listed at most once per `max_age` for all ApiKeys of the
    /// provider object (concurrent callers wait for one listing).
    pub async fn listing(
        &self,
        p: &ResolvedProvider,
        scope: &KeyScope,
        max_age: Duration,
    ) -> Result<SnapshotSlot, ProviderError> {
        let slot = self
            .snapshots
            .lock()
            .unwrap()
            .entry((p.id.clone(), scope.clone()))
            .or_default()
            .clone();
        {
            let mut snap = slot.lock().await;
            if snap.fetched.is_none_or(|t| t.elapsed() >= max_age) {
                let mut keys = HashMap::new();
                let mut cursor: Option<String> = None;
                loop {
                    let page = p.backend.list_page(scope, cursor.as_deref()).await?;
                    for k in page.keys {
                        keys.insert(k.id.clone(), k);
                    }
                    match page.next {
                        Some(n) => cursor = Some(n),
                        None => break,
                    }
                }
                snap.keys = keys;
                snap.fetched = Some(Instant::now());
            }
        }
        Ok(slot)
    }

    /// Record a key's latest state in the snapshot of its scope, if one exists.
    pub async fn remember(&self, p: &ResolvedProvider, scope: &KeyScope, key: &ProviderKey) {
        let slot = self
            .snapshots
            .lock()
            .unwrap()
            .get(&(p.id.clone(), scope.clone()))
            .cloned();
        if let Some(slot) = slot {
            let mut snap = slot.lock().await;
            let mut k = key.clone();
            k.secret = None;
            snap.keys.insert(k.id.clone(), k);
        }
    }

    /// Drop a key from the snapshot of its scope (after revoking it).
    pub async fn forget_key(&self, p: &ResolvedProvider, scope: &KeyScope, id: &str) {
        let slot = self
            .snapshots
            .lock()
            .unwrap()
            .get(&(p.id.clone(), scope.clone()))
            .cloned();
        if let Some(slot) = slot {
            slot.lock().await.keys.remove(id);
        }
    }
}

/// Evaluate a LabelSelector against labels.
pub fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

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
}
