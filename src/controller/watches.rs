//! Which ApiKeys a change of a related object re-reconciles (the controller's watch mappers).

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, ProviderKind};

/// ApiKeys of the store that `pred` selects.
fn apikeys_where(store: &Store<ApiKey>, pred: impl Fn(&ApiKey) -> bool) -> Vec<ObjectRef<ApiKey>> {
    store
        .state()
        .into_iter()
        .filter(|ak| pred(ak))
        .map(|ak| ObjectRef::from_obj(ak.as_ref()))
        .collect()
}

/// ApiKeys served by a ClusterKeyProvider.
pub fn apikeys_using_cluster_provider(
    store: &Store<ApiKey>,
    ckp: &ClusterKeyProvider,
) -> Vec<ObjectRef<ApiKey>> {
    let name = ckp.name_any();
    apikeys_where(store, |ak| {
        uses(ak, ProviderKind::ClusterKeyProvider, &name)
    })
}

/// ApiKeys of the KeyProvider's namespace served by it.
pub fn apikeys_using_key_provider(
    store: &Store<ApiKey>,
    kp: &KeyProvider,
) -> Vec<ObjectRef<ApiKey>> {
    let ns = kp.namespace();
    let name = kp.name_any();
    apikeys_where(store, |ak| {
        uses(ak, ProviderKind::KeyProvider, &name) && ak.namespace() == ns
    })
}

/// ApiKeys of the Secret's namespace that push its value (`spec.source`).
pub fn apikeys_using_source_secret(
    store: &Store<ApiKey>,
    secret: &Secret,
) -> Vec<ObjectRef<ApiKey>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    apikeys_where(store, |ak| {
        ak.namespace() == ns
            && ak
                .spec
                .source
                .as_ref()
                .is_some_and(|src| src.secret_ref.name == name)
    })
}

fn uses(ak: &ApiKey, kind: ProviderKind, name: &str) -> bool {
    ak.spec.provider_ref.kind == kind && ak.spec.provider_ref.name == name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiKeySpec, KeySource, LocalSecretKeyRef, ProviderRef};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn ak(ns: &str, name: &str, kind: ProviderKind, provider: &str) -> ApiKey {
        let mut ak = ApiKey::new(
            name,
            ApiKeySpec {
                provider_ref: ProviderRef {
                    kind,
                    name: provider.into(),
                },
                ..Default::default()
            },
        );
        ak.metadata.namespace = Some(ns.into());
        ak
    }

    fn names(refs: Vec<ObjectRef<ApiKey>>) -> Vec<String> {
        let mut v: Vec<String> = refs
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn mappers_select_the_apikeys_that_use_the_object() {
        let (reader, mut writer) = store::<ApiKey>();
        let mut pushed = ak("a", "pushed", ProviderKind::KeyProvider, "kp");
        pushed.spec.source = Some(KeySource {
            secret_ref: LocalSecretKeyRef {
                name: "src".into(),
                key: "k".into(),
            },
        });
        for o in [
            ak("a", "one", ProviderKind::ClusterKeyProvider, "shared"),
            ak("b", "two", ProviderKind::ClusterKeyProvider, "shared"),
            ak("a", "three", ProviderKind::KeyProvider, "kp"),
            ak("b", "four", ProviderKind::KeyProvider, "kp"),
            pushed,
        ] {
            writer.apply_watcher_event(&Event::Apply(o));
        }
        let ckp = ClusterKeyProvider::new("shared", Default::default());
        assert_eq!(
            names(apikeys_using_cluster_provider(&reader, &ckp)),
            ["a/one", "b/two"]
        );
        let mut kp = KeyProvider::new("kp", Default::default());
        kp.metadata.namespace = Some("a".into());
        assert_eq!(
            names(apikeys_using_key_provider(&reader, &kp)),
            ["a/pushed", "a/three"]
        );
        let mut s = Secret::default();
        s.metadata.name = Some("src".into());
        s.metadata.namespace = Some("a".into());
        assert_eq!(
            names(apikeys_using_source_secret(&reader, &s)),
            ["a/pushed"]
        );
        s.metadata.namespace = Some("b".into());
        assert!(apikeys_using_source_secret(&reader, &s).is_empty());
    }
}
