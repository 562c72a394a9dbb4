//! Which ApiKeys a change of a related object re-reconciles (the controller's watch mappers).

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderSpec, ProviderKind};

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

/// Whether a provider object reads its credentials from Secret `ns`/`name`. `own`: the
/// namespace of a KeyProvider (which reads only there), None for a ClusterKeyProvider (its ref's
/// namespace, else the operator's).
pub fn reads_secret(
    spec: &KeyProviderSpec,
    own: Option<&str>,
    operator_ns: &str,
    ns: &str,
    name: &str,
) -> bool {
    spec.provider()
        .map(|c| c.credential_refs())
        .unwrap_or_default()
        .iter()
        .any(|r| {
            r.name == name
                && match own {
                    Some(own) => own == ns,
                    None => r.namespace.as_deref().unwrap_or(operator_ns) == ns,
                }
        })
}

/// ApiKeys whose provider object reads its credentials from Secret `ns`/`name`: the Secret
/// appearing (or changing) re-reconciles them at once. Only Secrets some provider object names
/// map to anything.
pub fn apikeys_using_credentials(
    apikeys: &Store<ApiKey>,
    key_providers: &Store<KeyProvider>,
    cluster_providers: Option<&Store<ClusterKeyProvider>>,
    operator_ns: &str,
    ns: &str,
    name: &str,
) -> Vec<ObjectRef<ApiKey>> {
    let kps: Vec<(String, String)> = key_providers
        .state()
        .iter()
        .filter_map(|kp| {
            let own = kp.namespace()?;
            reads_secret(&kp.spec, Some(&own), operator_ns, ns, name).then(|| (own, kp.name_any()))
        })
        .collect();
    let ckps: Vec<String> = cluster_providers
        .map(|s| {
            s.state()
                .iter()
                .filter(|c| reads_secret(&c.spec.inner, None, operator_ns, ns, name))
                .map(|c| c.name_any())
                .collect()
        })
        .unwrap_or_default();
    if kps.is_empty() && ckps.is_empty() {
        return Vec::new();
    }
    apikeys_where(apikeys, |ak| {
        let r = &ak.spec.provider_ref;
        match r.kind {
            ProviderKind::KeyProvider => kps.iter().any(|(kp_ns, kp_name)| {
                *kp_name == r.name && ak.namespace().as_deref() == Some(kp_ns.as_str())
            }),
            ProviderKind::ClusterKeyProvider => ckps.contains(&r.name),
        }
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
        pushed.spec.source = Some(Box::new(KeySource {
            secret_ref: LocalSecretKeyRef {
                name: "src".into(),
                key: "k".into(),
            },
        }));
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

    #[test]
    fn a_credentials_secret_maps_to_the_apikeys_of_the_providers_that_read_it() {
        use crate::api::{ClusterKeyProviderSpec, OpenRouterProvider, SecretKeySelector};
        let (apikeys, mut w) = store::<ApiKey>();
        for o in [
            ak("a", "one", ProviderKind::KeyProvider, "kp"),
            ak("b", "two", ProviderKind::KeyProvider, "kp"),
            ak("b", "three", ProviderKind::ClusterKeyProvider, "shared"),
            ak("a", "four", ProviderKind::KeyProvider, "other"),
        ] {
            w.apply_watcher_event(&Event::Apply(o));
        }
        let spec = |secret: &str, ns: Option<&str>| KeyProviderSpec {
            openrouter: Some(OpenRouterProvider {
                management_key_secret_ref: SecretKeySelector {
                    name: secret.into(),
                    key: "token".into(),
                    namespace: ns.map(Into::into),
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let (kps, mut kw) = store::<KeyProvider>();
        let mut kp = KeyProvider::new("kp", spec("creds", None));
        kp.metadata.namespace = Some("a".into());
        kw.apply_watcher_event(&Event::Apply(kp));
        let (ckps, mut cw) = store::<ClusterKeyProvider>();
        cw.apply_watcher_event(&Event::Apply(ClusterKeyProvider::new(
            "shared",
            ClusterKeyProviderSpec {
                inner: spec("creds", None),
            },
        )));
        let map = |ns: &str, name: &str| {
            names(apikeys_using_credentials(
                &apikeys,
                &kps,
                Some(&ckps),
                "ops",
                ns,
                name,
            ))
        };
        // The KeyProvider of namespace a reads a/creds; the ClusterKeyProvider ops/creds.
        assert_eq!(map("a", "creds"), ["a/one"]);
        assert_eq!(map("ops", "creds"), ["b/three"]);
        assert!(map("b", "creds").is_empty());
        assert!(map("a", "unrelated").is_empty());
    }
}
