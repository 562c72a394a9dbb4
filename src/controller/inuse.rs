//! The in-use finalizer (as Crossplane does for ProviderConfigs): a provider object and its
//! credentials Secrets are kept while an ApiKey holding a key needs them to revoke it, so that
//! deleting a namespace (or the provider object first) cannot strand keys at the provider.
//!
//! What a provider object's finalizer covered is recorded on it (annotation
//! [`IN_USE_SECRETS_ANNOTATION`]): when its credentials ref changes, the Secrets it no longer
//! reads are released; a Secret that another provider object in use also reads keeps the
//! finalizer (one Secret shared by two provider objects is released when the last one is).
//!
//! In namespace mode (`--watch-namespaces`) ApiKeys are listed per watched namespace, never
//! cluster-wide (the namespace-mode RBAC forbids that): a ClusterKeyProvider counts as in use
//! by the ApiKeys of the namespaces this installation serves (docs/tenancy.md).
//!
//! [`InUse`] remembers which provider objects this process marked (so a burst marks once) and
//! forgets a provider object when it is deleted ([`InUse::forget`]).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::cache::ObjectCache;
use super::settings::Settings;
use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderSpec, ProviderKind};

/// Finalizer on provider objects and credentials Secrets in use by ApiKeys.
pub const IN_USE_FINALIZER: &str = "keysmith.dev/in-use";

/// On a provider object carrying [`IN_USE_FINALIZER`]: the credentials Secrets
/// (`namespace/name`, comma-separated) that keysmith put the finalizer on for it.
pub const IN_USE_SECRETS_ANNOTATION: &str = "keysmith.dev/in-use-secrets";

/// Where to list ApiKeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyScope<'a> {
    /// One namespace.
    Namespace(&'a str),
    /// Every namespace this installation serves: all of them in cluster mode, each watched
    /// namespace in namespace mode.
    Served,
    /// Every namespace, whatever the mode (needs a cluster-wide grant to list ApiKeys).
    Cluster,
}

/// Page through the ApiKeys of `scope`; `visit` sees each page and returns true to stop.
/// Returns whether it stopped early. Paged, so neither the API server nor keysmith holds every
/// ApiKey at once.
pub async fn scan_apikeys(
    client: &Client,
    settings: &Settings,
    scope: ApiKeyScope<'_>,
    mut visit: impl FnMut(&[ApiKey]) -> bool,
) -> Result<bool, kube::Error> {
    let apis: Vec<Api<ApiKey>> = match scope {
        ApiKeyScope::Namespace(ns) => vec![Api::namespaced(client.clone(), ns)],
        ApiKeyScope::Served if !settings.watch_namespaces.is_empty() => settings
            .watch_namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
        ApiKeyScope::Served | ApiKeyScope::Cluster => vec![Api::all(client.clone())],
    };
    for api in apis {
        let mut lp = ListParams::default().limit(500);
        loop {
            let page = api.list(&lp).await?;
            if visit(&page.items) {
                return Ok(true);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(false)
}

/// Whether an ApiKey still accounts for a key at the provider (so its deletion will need the
/// provider object and credentials).
pub fn holds_keys(ak: &ApiKey) -> bool {
    ak.status.as_ref().is_some_and(|st| {
        st.key_id.is_some() || st.pending_create.is_some() || !st.previous_keys.is_empty()
    })
}

/// Add or remove the finalizer on one object, and on a provider object record (or, with the
/// finalizer gone, drop) the Secrets it covers: a merge patch guarded by resourceVersion; no
/// write when it is already as wanted. A conflict (the object changed since it was read: the
/// provider controller's status write, kubectl) reads it again, a few times, instead of failing
/// the reconcile (issue 11: at the start of a burst, 20 of the first ApiKeys failed so).
pub(crate) async fn set_finalizer<K>(
    api: &Api<K>,
    name: &str,
    present: bool,
    record: Option<&str>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut conflicts = 0;
    loop {
        let Some(obj) = api.get_opt(name).await? else {
            return Ok(());
        };
        let has = obj.finalizers().iter().any(|f| f == IN_USE_FINALIZER);
        let recorded = obj.annotations().get(IN_USE_SECRETS_ANNOTATION);
        let record_ok = match record {
            None => true,
            Some(r) if present => recorded.map(String::as_str) == Some(r),
            Some(_) => recorded.is_none(),
        };
        if has == present && record_ok {
            return Ok(());
        }
        let mut finalizers: Vec<String> = obj
            .finalizers()
            .iter()
            .filter(|f| *f != IN_USE_FINALIZER)
            .cloned()
            .collect();
        if present {
            finalizers.push(IN_USE_FINALIZER.into());
        }
        let mut meta = serde_json::json!({
            "resourceVersion": obj.resource_version(), "finalizers": finalizers
        });
        if let Some(r) = record {
            let value = if present {
                serde_json::json!(r)
            } else {
                serde_json::Value::Null
            };
            meta["annotations"] = serde_json::json!({ IN_USE_SECRETS_ANNOTATION: value });
        }
        let patch = serde_json::json!({ "metadata": meta });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 && conflicts < 5 => conflicts += 1,
            other => return other.map(|_| ()),
        }
    }
}

/// A credentials Secret: (namespace, name).
type SecretId = (String, String);

/// The credentials Secrets a provider object reads (each once).
fn credential_secrets(
    spec: &KeyProviderSpec,
    own: Option<&str>,
    operator_ns: &str,
) -> BTreeSet<SecretId> {
    spec.provider()
        .map(|c| c.credential_refs())
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let ns = match own {
                Some(own) => own.to_string(),
                None => r.namespace.unwrap_or_else(|| operator_ns.to_string()),
            };
            (ns, r.name)
        })
        .collect()
}

/// The Secrets recorded on a provider object as covered by its finalizer. For a KeyProvider
/// only Secrets of its own namespace count (the annotation is its owner's to write).
fn recorded_secrets<K: Resource>(obj: &K, own: Option<&str>) -> BTreeSet<SecretId> {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(IN_USE_SECRETS_ANNOTATION))
        .map(|v| {
            v.split(',')
                .filter_map(|s| s.trim().split_once('/'))
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .filter(|(ns, _)| own.is_none_or(|own| own == *ns))
                .map(|(ns, name)| (ns.to_string(), name.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn record_of(secrets: &BTreeSet<SecretId>) -> String {
    secrets
        .iter()
        .map(|(ns, name)| format!("{ns}/{name}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A provider object: its kind, namespace (KeyProvider) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderId {
    pub kind: ProviderKind,
    pub namespace: String,
    pub name: String,
}

impl ProviderId {
    pub fn of(ak: &ApiKey) -> Self {
        let r = &ak.spec.provider_ref;
        ProviderId {
            kind: r.kind,
            namespace: match r.kind {
                ProviderKind::KeyProvider => ak.namespace().unwrap_or_default(),
                ProviderKind::ClusterKeyProvider => String::new(),
            },
            name: r.name.clone(),
        }
    }

    /// `KeyProvider/ns/name` or `ClusterKeyProvider/name`, as the other parts of the context
    /// know the provider object.
    pub fn key(&self) -> String {
        match self.kind {
            ProviderKind::KeyProvider => format!("KeyProvider/{}/{}", self.namespace, self.name),
            ProviderKind::ClusterKeyProvider => format!("ClusterKeyProvider/{}", self.name),
        }
    }

    /// The fast-path key of a marking that covered `secrets`.
    fn key_with(&self, secrets: &BTreeSet<SecretId>) -> String {
        format!("{}|{}", self.key(), record_of(secrets))
    }

    fn is(&self, kind: ProviderKind, namespace: &str, name: &str) -> bool {
        self.kind == kind && self.namespace == namespace && self.name == name
    }
}

/// What [`InUse::release_if_unused`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// An ApiKey still holds a key through the provider object: the finalizer stays.
    InUse,
    /// Released; the provider object stays.
    Released,
    /// Released while it was being deleted (or it is gone already): it goes, and so should
    /// everything kept for it.
    Gone,
}

/// The in-use finalizer's bookkeeping, and what it needs to put it on and take it off: the
/// (fenced) client, the watch stores and the installation's settings.
pub struct InUse {
    client: Client,
    cache: Arc<ObjectCache>,
    settings: Arc<Settings>,
    /// Provider objects (with the Secrets they read) this process put the finalizer on.
    marked: Mutex<HashSet<String>>,
    /// Held while one reconcile puts the in-use finalizer on (see [`InUse::protect`]).
    marking: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InUse").finish_non_exhaustive()
    }
}

/// The Secrets an in-use provider object's finalizer covers: those recorded when it was marked
/// (with the namespace resolved then), else (marked before the record existed) those it reads.
/// The record matters for a ClusterKeyProvider whose ref names no namespace: "the operator's
/// namespace" is another namespace for another installation.
fn covers<K: Resource>(q: &K, reads: impl FnOnce() -> BTreeSet<SecretId>) -> BTreeSet<SecretId> {
    let recorded = q
        .meta()
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(IN_USE_SECRETS_ANNOTATION));
    if recorded {
        let own = q.meta().namespace.as_deref();
        recorded_secrets(q, own)
    } else {
        reads()
    }
}

impl InUse {
    pub fn new(client: Client, cache: Arc<ObjectCache>, settings: Arc<Settings>) -> Self {
        InUse {
            client,
            cache,
            settings,
            marked: Mutex::default(),
            marking: tokio::sync::Mutex::default(),
        }
    }

    /// The provider object `id` (`KeyProvider/ns/name` or `ClusterKeyProvider/name`) is gone:
    /// what this process marked of it is forgotten.
    pub fn forget(&self, id: &str) {
        let prefix = format!("{id}|");
        self.marked
            .lock()
            .unwrap()
            .retain(|k| !k.starts_with(&prefix));
    }

    /// The provider objects this process marked.
    pub fn providers(&self) -> Vec<String> {
        let marked = self.marked.lock().unwrap();
        let ids: BTreeSet<&str> = marked
            .iter()
            .filter_map(|k| k.split_once('|'))
            .map(|(id, _)| id)
            .collect();
        ids.into_iter().map(String::from).collect()
    }

    /// Provider objects this process marked.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.providers().len()
    }

    #[cfg(any(test, feature = "test-hooks"))]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The credentials Secrets the provider object reads now: as the watch store has it, else
    /// (no store, or not in it yet) from the server. None: the object is gone.
    async fn current_secrets(
        &self,
        p: &ProviderId,
    ) -> Result<Option<BTreeSet<SecretId>>, kube::Error> {
        let own = Some(p.namespace.as_str());
        Ok(match p.kind {
            ProviderKind::KeyProvider => {
                let obj = match self.cache.key_provider(&p.namespace, &p.name) {
                    Some(o) => Some(o),
                    None => Api::<KeyProvider>::namespaced(self.client.clone(), &p.namespace)
                        .get_opt(&p.name)
                        .await?
                        .map(std::sync::Arc::new),
                };
                obj.map(|o| credential_secrets(&o.spec, own, &self.settings.operator_namespace))
            }
            ProviderKind::ClusterKeyProvider => {
                let obj = match self.cache.cluster_provider(&p.name) {
                    Some(o) => Some(o),
                    None => Api::<ClusterKeyProvider>::all(self.client.clone())
                        .get_opt(&p.name)
                        .await?
                        .map(std::sync::Arc::new),
                };
                obj.map(|o| {
                    credential_secrets(&o.spec.inner, None, &self.settings.operator_namespace)
                })
            }
        })
    }

    /// Set (or clear) the finalizer on a provider object and on its credentials; returns the
    /// Secrets it reads now (None: the object is gone). The object is marked first, with the
    /// Secrets it covers recorded, then the Secrets: a crash in between is repaired by the next
    /// marking. Secrets it covered before and reads no more (a changed credentials ref) are
    /// released unless another provider object in use reads them.
    async fn mark(
        &self,
        p: &ProviderId,
        present: bool,
    ) -> Result<Option<(BTreeSet<SecretId>, bool)>, kube::Error> {
        let (current, recorded, terminating) = match p.kind {
            ProviderKind::KeyProvider => {
                let api: Api<KeyProvider> = Api::namespaced(self.client.clone(), &p.namespace);
                let Some(obj) = api.get_opt(&p.name).await? else {
                    return Ok(None);
                };
                let current = credential_secrets(
                    &obj.spec,
                    Some(&p.namespace),
                    &self.settings.operator_namespace,
                );
                let recorded = recorded_secrets(&obj, Some(&p.namespace));
                set_finalizer(&api, &p.name, present, Some(&record_of(&current))).await?;
                (current, recorded, obj.metadata.deletion_timestamp.is_some())
            }
            ProviderKind::ClusterKeyProvider => {
                let api: Api<ClusterKeyProvider> = Api::all(self.client.clone());
                let Some(obj) = api.get_opt(&p.name).await? else {
                    return Ok(None);
                };
                let current =
                    credential_secrets(&obj.spec.inner, None, &self.settings.operator_namespace);
                let recorded = recorded_secrets(&obj, None);
                set_finalizer(&api, &p.name, present, Some(&record_of(&current))).await?;
                (current, recorded, obj.metadata.deletion_timestamp.is_some())
            }
        };
        if present {
            for (sns, name) in &current {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), sns);
                set_finalizer(&api, name, true, None).await?;
            }
            for s in recorded.difference(&current) {
                self.release_secret(s, p).await?;
            }
        } else {
            for s in current.union(&recorded) {
                self.release_secret(s, p).await?;
            }
        }
        Ok(Some((current, terminating)))
    }

    /// Whether a provider object other than `except` that is in use (it carries the finalizer)
    /// covers Secret `s`.
    async fn needed_by_another(
        &self,
        s: &SecretId,
        except: &ProviderId,
    ) -> Result<bool, kube::Error> {
        let in_use = |f: &[String]| f.iter().any(|f| f == IN_USE_FINALIZER);
        if self.settings.cluster_providers {
            let api: Api<ClusterKeyProvider> = Api::all(self.client.clone());
            for q in api.list(&ListParams::default()).await?.items {
                if except.is(ProviderKind::ClusterKeyProvider, "", &q.name_any())
                    || !in_use(q.finalizers())
                {
                    continue;
                }
                if covers(&q, || {
                    credential_secrets(&q.spec.inner, None, &self.settings.operator_namespace)
                })
                .contains(s)
                {
                    return Ok(true);
                }
            }
        }
        // KeyProviders read Secrets of their own namespace only; those of a namespace this
        // installation does not serve are not its to count (nor may it list them).
        if self.settings.serves_namespace(&s.0) {
            let api: Api<KeyProvider> = Api::namespaced(self.client.clone(), &s.0);
            for q in api.list(&ListParams::default()).await?.items {
                if except.is(ProviderKind::KeyProvider, &s.0, &q.name_any())
                    || !in_use(q.finalizers())
                {
                    continue;
                }
                if covers(&q, || {
                    credential_secrets(&q.spec, Some(&s.0), &self.settings.operator_namespace)
                })
                .contains(s)
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Drop the finalizer of Secret `s`, which `p` no longer needs, unless another provider object
    /// in use needs it.
    async fn release_secret(&self, s: &SecretId, p: &ProviderId) -> Result<(), kube::Error> {
        if self.needed_by_another(s, p).await? {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &s.0);
        set_finalizer(&api, &s.1, false, None).await
    }

    /// The ApiKey holds a key: protect its provider object and credentials (once per provider
    /// object and credentials per process; the finalizer stays until no ApiKey needs them). A
    /// changed credentials ref marks the new Secrets and releases the old ones.
    pub async fn protect(&self, ak: &ApiKey) -> Result<(), kube::Error> {
        let p = ProviderId::of(ak);
        let Some(secrets) = self.current_secrets(&p).await? else {
            return Ok(());
        };
        let fast = p.key_with(&secrets);
        if self.marked.lock().unwrap().contains(&fast) {
            return Ok(());
        }
        // One reconcile marks, the others of a burst wait for it and find it done (instead of 64
        // concurrent patches of one object, all but one refused with 409). Releases take the same
        // lock, so a release never drops what a marking just counted on.
        let _one_at_a_time = self.marking.lock().await;
        if self.marked.lock().unwrap().contains(&fast) {
            return Ok(());
        }
        if let Some((secrets, _)) = self.mark(&p, true).await? {
            let mut marked = self.marked.lock().unwrap();
            let prefix = format!("{}|", p.key());
            marked.retain(|k| !k.starts_with(&prefix));
            marked.insert(p.key_with(&secrets));
        }
        Ok(())
    }

    /// Release provider object `p` and its credentials when no ApiKey other than `except` (an
    /// ApiKey whose keys were just revoked) holds a key through it. See [`Release`] for the answer.
    ///
    /// A ClusterKeyProvider is counted over the namespaces this installation serves (in namespace
    /// mode, the watched ones: ApiKeys elsewhere are not this installation's to serve, nor may it
    /// list them).
    pub async fn release_if_unused(
        &self,
        p: &ProviderId,
        except: Option<&str>,
    ) -> Result<Release, kube::Error> {
        let needs =
            |o: &ApiKey| o.uid().as_deref() != except && ProviderId::of(o) == *p && holds_keys(o);
        // The watch store answers first: while other ApiKeys of the provider object hold keys (every
        // deletion of a mass deletion but the last), no request at all. A full LIST on each
        // deletion was O(N²): 10,000 deletions listed 10,000 ApiKeys each (issue 11).
        if self.cache.any_apikey(needs) == Some(true) {
            return Ok(Release::InUse);
        }
        let _one_at_a_time = self.marking.lock().await;
        // The store says no ApiKey needs it (or there is no store): the server confirms, a page at
        // a time, stopping at the first ApiKey that does.
        let scope = match p.kind {
            ProviderKind::KeyProvider => ApiKeyScope::Namespace(&p.namespace),
            ProviderKind::ClusterKeyProvider => ApiKeyScope::Served,
        };
        if scan_apikeys(&self.client, &self.settings, scope, |page| {
            page.iter().any(needs)
        })
        .await?
        {
            return Ok(Release::InUse);
        }
        {
            let mut marked = self.marked.lock().unwrap();
            let prefix = format!("{}|", p.key());
            marked.retain(|k| !k.starts_with(&prefix));
        }
        Ok(match self.mark(p, false).await? {
            Some((_, false)) => Release::Released,
            // Deleted: without the finalizer it goes now (or went already).
            Some((_, true)) | None => Release::Gone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_client() -> Client {
        let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other(
                "offline",
            ))
        });
        Client::new(svc, "default")
    }

    #[tokio::test]
    async fn a_deleted_provider_object_is_forgotten() {
        let in_use = InUse::new(offline_client(), Default::default(), Default::default());
        let cluster = ProviderId {
            kind: ProviderKind::ClusterKeyProvider,
            namespace: String::new(),
            name: "shared".into(),
        };
        let kp = ProviderId {
            kind: ProviderKind::KeyProvider,
            namespace: "team-a".into(),
            name: "kp".into(),
        };
        assert_eq!(cluster.key(), "ClusterKeyProvider/shared");
        assert_eq!(kp.key(), "KeyProvider/team-a/kp");
        let secrets = BTreeSet::from([("keysmith".to_string(), "creds".to_string())]);
        in_use.marked.lock().unwrap().extend([
            cluster.key_with(&secrets),
            cluster.key_with(&BTreeSet::new()),
            kp.key_with(&secrets),
        ]);
        assert_eq!(in_use.len(), 2);
        in_use.forget("ClusterKeyProvider/shared");
        assert_eq!(in_use.providers(), vec![kp.key()]);
        // A name that is a prefix of another's is not taken for it.
        in_use.forget("KeyProvider/team-a/k");
        assert_eq!(in_use.len(), 1);
        in_use.forget(&kp.key());
        assert!(in_use.is_empty());
    }

    #[test]
    fn recorded_secrets_of_a_key_provider_stay_in_its_namespace() {
        let mut kp = KeyProvider::new("kp", Default::default());
        kp.metadata.annotations = Some(
            [(
                IN_USE_SECRETS_ANNOTATION.to_string(),
                "team-a/old, kube-system/admin,/x,team-a/,garbage,team-a/new".to_string(),
            )]
            .into(),
        );
        let own = recorded_secrets(&kp, Some("team-a"));
        assert_eq!(
            own,
            BTreeSet::from([
                ("team-a".to_string(), "new".to_string()),
                ("team-a".to_string(), "old".to_string())
            ])
        );
        let all = recorded_secrets(&kp, None);
        assert!(all.contains(&("kube-system".to_string(), "admin".to_string())));
        assert_eq!(record_of(&own), "team-a/new,team-a/old");
    }
}
