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
