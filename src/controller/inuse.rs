//! The in-use finalizer (as Crossplane does for ProviderConfigs): a provider object and its
//! credentials Secrets are kept while an ApiKey holding a key needs them to revoke it, so that
//! deleting a namespace (or the provider object first) cannot strand keys at the provider.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::context::Context;
use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderSpec, ProviderKind};

/// Finalizer on provider objects and credentials Secrets in use by ApiKeys.
pub const IN_USE_FINALIZER: &str = "keysmith.dev/in-use";

/// Whether an ApiKey still accounts for a key at the provider (so its deletion will need the
/// provider object and credentials).
pub fn holds_keys(ak: &ApiKey) -> bool {
    ak.status.as_ref().is_some_and(|st| {
        st.key_id.is_some() || st.pending_create.is_some() || !st.previous_keys.is_empty()
    })
}

/// Add or remove the finalizer on one object (a merge patch guarded by resourceVersion; no
/// write when it is already as wanted). A conflict (the object changed since it was read: the
/// provider controller's status write, kubectl) reads it again, a few times, instead of failing
/// the reconcile (issue 11: at the start of a burst, 20 of the first ApiKeys failed so).
async fn set_finalizer<K>(api: &Api<K>, name: &str, present: bool) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut conflicts = 0;
    loop {
        let Some(obj) = api.get_opt(name).await? else {
            return Ok(());
        };
        let has = obj.finalizers().iter().any(|f| f == IN_USE_FINALIZER);
        if has == present {
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
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": obj.resource_version(), "finalizers": finalizers }
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 && conflicts < 5 => conflicts += 1,
            other => return other.map(|_| ()),
        }
    }
}

/// The credentials Secrets (namespace, name) a provider object reads.
fn credential_secrets(
    spec: &KeyProviderSpec,
    own: Option<&str>,
    operator_ns: &str,
) -> Vec<(String, String)> {
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

    fn key(&self) -> String {
        format!("{:?}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Set (or clear) the finalizer on a provider object and on its credentials.
async fn mark(ctx: &Context, p: &ProviderId, present: bool) -> Result<(), kube::Error> {
    let secrets = match p.kind {
        ProviderKind::KeyProvider => {
            let api: Api<KeyProvider> = Api::namespaced(ctx.client.clone(), &p.namespace);
            let Some(obj) = api.get_opt(&p.name).await? else {
                return Ok(());
            };
            set_finalizer(&api, &p.name, present).await?;
            credential_secrets(&obj.spec, Some(&p.namespace), &ctx.operator_namespace)
        }
        ProviderKind::ClusterKeyProvider => {
            let api: Api<ClusterKeyProvider> = Api::all(ctx.client.clone());
            let Some(obj) = api.get_opt(&p.name).await? else {
                return Ok(());
            };
            set_finalizer(&api, &p.name, present).await?;
            credential_secrets(&obj.spec.inner, None, &ctx.operator_namespace)
        }
    };
    for (sns, name) in secrets {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &sns);
        set_finalizer(&api, &name, present).await?;
    }
    Ok(())
}

/// The ApiKey holds a key: protect its provider object and credentials (once per provider
/// object per process; the finalizer stays until no ApiKey needs them).
pub async fn protect(ctx: &Context, ak: &ApiKey) -> Result<(), kube::Error> {
    let p = ProviderId::of(ak);
    if ctx.in_use_marked.lock().unwrap().contains(&p.key()) {
        return Ok(());
    }
    // One reconcile marks, the others of a burst wait for it and find it done (instead of 64
    // concurrent patches of one object, all but one refused with 409).
    let _one_at_a_time = ctx.in_use_marking.lock().await;
    if ctx.in_use_marked.lock().unwrap().contains(&p.key()) {
        return Ok(());
    }
    mark(ctx, &p, true).await?;
    ctx.in_use_marked.lock().unwrap().insert(p.key());
    Ok(())
}

/// Release provider object `p` and its credentials when no ApiKey other than `except` (an
/// ApiKey whose keys were just revoked) holds a key through it. Returns whether it was released.
pub async fn release_if_unused(
    ctx: &Context,
    p: &ProviderId,
    except: Option<&str>,
) -> Result<bool, kube::Error> {
    let api: Api<ApiKey> = match p.kind {
        ProviderKind::KeyProvider => Api::namespaced(ctx.client.clone(), &p.namespace),
        ProviderKind::ClusterKeyProvider => Api::all(ctx.client.clone()),
    };
    let needs =
        |o: &ApiKey| o.uid().as_deref() != except && ProviderId::of(o) == *p && holds_keys(o);
    // The watch store answers first: while other ApiKeys of the provider object hold keys (every
    // deletion of a mass deletion but the last), no request at all. A full LIST on each
    // deletion was O(N²): 10,000 deletions listed 10,000 ApiKeys each (issue 11).
    if ctx.cache.any_apikey(needs) == Some(true) {
        return Ok(false);
    }
    // The store says no ApiKey needs it (or there is no store): the server confirms, a page at
    // a time, stopping at the first ApiKey that does.
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        if page.items.iter().any(needs) {
            return Ok(false);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    ctx.in_use_marked.lock().unwrap().remove(&p.key());
    mark(ctx, p, false).await?;
    Ok(true)
}
