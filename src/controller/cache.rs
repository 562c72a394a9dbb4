//! Watch-fed copies of the objects every ApiKey reconcile reads: its provider object and, for a
//! ClusterKeyProvider with a `namespaceSelector`, its namespace's labels (issue 11: two GETs per
//! reconcile, each an etcd read, were a large share of the API server's work in a burst).
//!
//! It also gives the in-use check (`inuse::release_if_unused`) the ApiKey controllers' own
//! stores, so that deleting an ApiKey does not list every ApiKey.
//!
//! The stores are filled by the ApiKey controllers' watches (see `controller::apikey_controller`)
//! and a metadata-only watch of Namespaces (`controller::run_controllers`). A lookup that misses (the store has not synced yet, or an object created moments ago) falls
//! back to a GET, so a miss costs what every reconcile cost before; a hit is at most as old as
//! the watch, and a change of the object reconciles the ApiKeys it concerns again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider};

/// Drop from a watched ApiKey what no reconcile reads, before the watch store keeps it
/// (issue 11, memory at 10,000 ApiKeys): managedFields (often the bulk of an object's
/// metadata), its labels (the `--label-selector` is applied by the API server), and every
/// annotation but keysmith's own (`keysmith.dev/…`, e.g. the rotate request), kubectl's copy of
/// the last applied manifest among them. Each non-empty label or annotation map costs a B-tree
/// node of about 540 bytes. keysmith writes ApiKeys with patches only, never by sending a cached
/// copy back, so nothing dropped here is lost on the server.
pub fn slim(ak: &mut ApiKey) {
    let m = &mut ak.metadata;
    m.managed_fields = None;
    m.labels = None;
    if let Some(a) = m.annotations.take() {
        let own: BTreeMap<String, String> = a
            .into_iter()
            .filter(|(k, _)| k.starts_with(crate::api::ANNOTATION_PREFIX))
            .collect();
        m.annotations = (!own.is_empty()).then_some(own);
    }
}

/// The stores, set once the controllers start (empty in tests that build a bare Context: every
/// lookup then falls back to a GET).
#[derive(Default)]
pub struct ObjectCache {
    /// The ApiKey controllers' own stores (one per watched namespace, or one for all).
    apikeys: Mutex<Vec<Store<ApiKey>>>,
    /// One store per ApiKey controller (one per watched namespace, or one for all).
    key_providers: Mutex<Vec<Store<KeyProvider>>>,
    cluster_providers: OnceLock<Store<ClusterKeyProvider>>,
    namespaces: OnceLock<Store<PartialObjectMeta<Namespace>>>,
}

impl ObjectCache {
    pub fn add_apikeys(&self, store: Store<ApiKey>) {
        self.apikeys.lock().unwrap().push(store);
    }

    /// Whether a cached ApiKey satisfies `f`; `None` when no store is set (no controller runs).
    pub fn any_apikey(&self, f: impl Fn(&ApiKey) -> bool) -> Option<bool> {
        let stores = self.apikeys.lock().unwrap();
        if stores.is_empty() {
            return None;
        }
        Some(stores.iter().any(|s| s.state().iter().any(|ak| f(ak))))
    }

    pub fn add_key_providers(&self, store: Store<KeyProvider>) {
        self.key_providers.lock().unwrap().push(store);
    }

    pub fn set_cluster_providers(&self, store: Store<ClusterKeyProvider>) {
        let _ = self.cluster_providers.set(store);
    }

    pub fn set_namespaces(&self, store: Store<PartialObjectMeta<Namespace>>) {
        let _ = self.namespaces.set(store);
    }

    /// The KeyProvider `ns/name`, if a store holds it.
    pub fn key_provider(&self, ns: &str, name: &str) -> Option<Arc<KeyProvider>> {
        let r = ObjectRef::new(name).within(ns);
        self.key_providers
            .lock()
            .unwrap()
            .iter()
            .find_map(|s| s.get(&r))
    }

    /// The ClusterKeyProvider `name`, if the store holds it.
    pub fn cluster_provider(&self, name: &str) -> Option<Arc<ClusterKeyProvider>> {
        self.cluster_providers.get()?.get(&ObjectRef::new(name))
    }

    /// Whether the provider object `id` (`KeyProvider/ns/name` or `ClusterKeyProvider/name`)
    /// exists as the watches see it; `None` when no store covers it (nothing can be concluded).
    pub fn provider_exists(&self, id: &str) -> Option<bool> {
        let parts: Vec<&str> = id.split('/').collect();
        match parts[..] {
            ["KeyProvider", ns, name] => {
                let stores = self.key_providers.lock().unwrap();
                if stores.is_empty() {
                    return None;
                }
                let r = ObjectRef::new(name).within(ns);
                Some(stores.iter().any(|s| s.get(&r).is_some()))
            }
            ["ClusterKeyProvider", name] => Some(
                self.cluster_providers
                    .get()?
                    .get(&ObjectRef::new(name))
                    .is_some(),
            ),
            _ => None,
        }
    }

    /// Whether the ApiKey `ns/name` exists as the watches see it; `None` without a store.
    pub fn apikey_exists(&self, key: &str) -> Option<bool> {
        let (ns, name) = key.split_once('/')?;
        let stores = self.apikeys.lock().unwrap();
        if stores.is_empty() {
            return None;
        }
        let r = ObjectRef::new(name).within(ns);
        Some(stores.iter().any(|s| s.get(&r).is_some()))
    }

    /// The labels of namespace `name`, if the store holds it.
    pub fn namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.namespaces.get()?.get(&ObjectRef::new(name))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    #[test]
    fn slim_keeps_what_reconciles_read() {
        let mut ak: ApiKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {
                "name": "k", "namespace": "team-a", "uid": "u", "resourceVersion": "7",
                "generation": 3, "finalizers": ["keysmith.dev/revoke"],
                "labels": { "app": "x" },
                "annotations": {
                    "keysmith.dev/rotate": "1",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "team": "a",
                },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
            },
            "spec": { "providerRef": { "kind": "KeyProvider", "name": "kp" } },
            "status": { "keyID": "id-1" },
        }))
        .unwrap();
        let before = ak.clone();
        slim(&mut ak);
        assert!(ak.metadata.managed_fields.is_none() && ak.metadata.labels.is_none());
        assert_eq!(
            ak.metadata.annotations,
            Some([("keysmith.dev/rotate".to_string(), "1".to_string())].into())
        );
        // Identity, generation, finalizers, spec and status are untouched.
        assert_eq!(ak.metadata.uid, before.metadata.uid);
        assert_eq!(
            ak.metadata.resource_version,
            before.metadata.resource_version
        );
        assert_eq!(ak.metadata.generation, before.metadata.generation);
        assert_eq!(ak.metadata.finalizers, before.metadata.finalizers);
        assert_eq!(ak.spec, before.spec);
        assert_eq!(ak.status, before.status);
        // Nothing of keysmith's left: no map at all.
        let mut bare = before;
        bare.metadata.annotations = Some([("team".to_string(), "a".to_string())].into());
        slim(&mut bare);
        assert!(bare.metadata.annotations.is_none());
    }

    #[test]
    fn lookups_hit_what_the_watches_delivered_and_miss_the_rest() {
        let cache = ObjectCache::default();
        assert!(
            cache.key_provider("team-a", "kp").is_none(),
            "no store: a miss"
        );
        assert!(cache.namespace_labels("team-a").is_none());

        let (kps, mut kp_writer) = reflector::store::<KeyProvider>();
        let mut kp = KeyProvider::new("kp", Default::default());
        kp.metadata.namespace = Some("team-a".into());
        kp_writer.apply_watcher_event(&watcher::Event::Apply(kp));
        cache.add_key_providers(kps);
        assert!(cache.key_provider("team-a", "kp").is_some());
        assert!(
            cache.key_provider("team-b", "kp").is_none(),
            "another namespace"
        );

        let (ckps, mut ckp_writer) = reflector::store::<ClusterKeyProvider>();
        ckp_writer.apply_watcher_event(&watcher::Event::Apply(ClusterKeyProvider::new(
            "shared",
            Default::default(),
        )));
        cache.set_cluster_providers(ckps);
        assert!(cache.cluster_provider("shared").is_some());
        assert!(cache.cluster_provider("other").is_none());

        let (nss, mut ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let mut ns = PartialObjectMeta::<Namespace>::default();
        ns.metadata.name = Some("team-a".into());
        ns.metadata.labels = Some([("tenant".to_string(), "a".to_string())].into());
        ns_writer.apply_watcher_event(&watcher::Event::Apply(ns.clone()));
        cache.set_namespaces(nss);
        assert_eq!(
            cache
                .namespace_labels("team-a")
                .unwrap()
                .get("tenant")
                .map(String::as_str),
            Some("a")
        );
        // A label change reaches the next lookup.
        ns.metadata.labels = None;
        ns_writer.apply_watcher_event(&watcher::Event::Apply(ns));
        assert!(cache.namespace_labels("team-a").unwrap().is_empty());
        assert!(cache.namespace_labels("team-b").is_none());
    }
}
