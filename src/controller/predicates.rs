//! Which watch events are worth a reconcile (kube's predicate filters): the hash of what
//! keysmith reacts to in an object; an event whose hash did not change is dropped.
//!
//! An ApiKey is reconciled again when its spec (generation), finalizers, deletion or a
//! `keysmith.dev/` annotation (e.g. `keysmith.dev/rotate`) changes, not when only its status
//! does: status is keysmith's own output, and the reconcile that wrote it returned the requeue
//! that refreshes it. A provider object re-reconciles its ApiKeys when its spec or its
//! conditions change (credentials accepted or refused), not when a verification only restamps
//! its status.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use kube::api::ObjectMeta;

use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderStatus, ANNOTATION_PREFIX};

/// What keysmith reacts to in an ApiKey.
pub fn apikey_changes(ak: &ApiKey) -> Option<u64> {
    let mut h = DefaultHasher::new();
    meta_changes(&ak.metadata, &mut h);
    Some(h.finish())
}

/// What keysmith reacts to in a KeyProvider.
pub fn key_provider_changes(kp: &KeyProvider) -> Option<u64> {
    Some(provider_changes(&kp.metadata, kp.status.as_ref()))
}

/// What keysmith reacts to in a ClusterKeyProvider.
pub fn cluster_provider_changes(ckp: &ClusterKeyProvider) -> Option<u64> {
    Some(provider_changes(&ckp.metadata, ckp.status.as_ref()))
}

fn meta_changes(m: &ObjectMeta, h: &mut DefaultHasher) {
    m.generation.hash(h);
    m.deletion_timestamp.is_some().hash(h);
    m.finalizers.hash(h);
    if let Some(a) = &m.annotations {
        // BTreeMap: a stable order.
        a.iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .for_each(|kv| kv.hash(h));
    }
}

fn provider_changes(m: &ObjectMeta, st: Option<&KeyProviderStatus>) -> u64 {
    let mut h = DefaultHasher::new();
    meta_changes(m, &mut h);
    for c in st.map(|s| s.conditions.as_slice()).unwrap_or_default() {
        (&c.type_, &c.status, &c.reason).hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiKeyStatus, FINALIZER};

    fn ak() -> ApiKey {
        let mut ak = ApiKey::new("k", Default::default());
        ak.metadata.generation = Some(1);
        ak.metadata.resource_version = Some("10".into());
        ak
    }

    #[test]
    fn status_and_foreign_annotations_do_not_trigger() {
        let a = ak();
        let mut b = a.clone();
        b.metadata.resource_version = Some("11".into());
        b.status = Some(ApiKeyStatus {
            key_id: Some("k1".into()),
            ..Default::default()
        });
        b.metadata.annotations.get_or_insert_default().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        assert_eq!(apikey_changes(&a), apikey_changes(&b));
    }

    #[test]
    fn spec_finalizers_deletion_and_keysmith_annotations_trigger() {
        let a = ak();
        let h = apikey_changes(&a);
        let mut spec = a.clone();
        spec.metadata.generation = Some(2);
        let mut fin = a.clone();
        fin.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let mut del = a.clone();
        del.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        let mut rot = a.clone();
        rot.metadata
            .annotations
            .get_or_insert_default()
            .insert("keysmith.dev/rotate".into(), "now".into());
        for changed in [spec, fin, del, rot] {
            assert_ne!(apikey_changes(&changed), h);
        }
    }
}
