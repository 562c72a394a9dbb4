//! Resolving the provider object of an ApiKey (tenancy rule 6) and its backend: the provider
//! object from the watch store (else a GET), the admission checks, the credentials, and the
//! backend built from them (kept in [`super::backends::Backends`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::ResourceExt;

use super::backends::{
    selector_matches, Backends, Cached, ProviderObject, ResolveError, ResolvedProvider,
    DEFAULT_REFRESH,
};
use super::context::Context;
use super::credentials::{read_ca_bundle, read_credentials};
use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderSpec, ProviderKind};
use crate::providers;

/// Resolve the provider object of an ApiKey (tenancy rule 6) and its backend.
///
/// An ApiKey being deleted resolves without the checks that admit creating keys
/// (`--namespaced-providers`, `--cluster-providers`, a ClusterKeyProvider's
/// `namespaceSelector`): its keys were made through this very provider object
/// (`providerRef` is immutable) while it was admitted, and revoking them must stay possible
/// after the admin narrowed who may create (invariant 7).
pub async fn resolve(ctx: &Context, ak: &ApiKey) -> Result<ResolvedProvider, ResolveError> {
    resolve_as(ctx, ak, ak.metadata.deletion_timestamp.is_some()).await
}

/// Resolve the provider object of an ApiKey to revoke keys made through it, without the
/// checks that admit creating (see [`resolve`]): replaced keys of a namespace that
/// is no longer admitted still end with their grace period.
pub async fn resolve_for_revoke(
    ctx: &Context,
    ak: &ApiKey,
) -> Result<ResolvedProvider, ResolveError> {
    resolve_as(ctx, ak, true).await
}

async fn resolve_as(
    ctx: &Context,
    ak: &ApiKey,
    deleting: bool,
) -> Result<ResolvedProvider, ResolveError> {
    let ns = ak.namespace().unwrap_or_default();
    let r = &ak.spec.provider_ref;
    match r.kind {
        ProviderKind::KeyProvider if !ctx.settings.namespaced_providers && !deleting => Err(ResolveError::ProviderNotAllowed(format!(
            "this keysmith installation serves only ClusterKeyProviders (--namespaced-providers=false); KeyProvider {} cannot be used: ask a cluster admin for a ClusterKeyProvider",
            r.name
        ))),
        ProviderKind::KeyProvider => {
            let p = match ctx.cache.key_provider(&ns, &r.name) {
                Some(p) => Some(p),
                None => {
                    let api: Api<KeyProvider> = Api::namespaced(ctx.client.clone(), &ns);
                    api.get_opt(&r.name).await?.map(Arc::new)
                }
            };
            let p = p.ok_or_else(|| {
                ResolveError::ProviderRefNotFound(format!(
                    "KeyProvider {ns}/{} does not exist",
                    r.name
                ))
            })?;
            resolve_object(ctx, ProviderObject {
                id: format!("KeyProvider/{ns}/{}", r.name),
                spec: &p.spec,
                generation: p.metadata.generation,
                namespace: Some(&ns),
            })
            .await
        }
        ProviderKind::ClusterKeyProvider if !ctx.settings.cluster_providers && !deleting => Err(ResolveError::ProviderNotAllowed(format!(
            "this keysmith installation serves only KeyProviders of the ApiKey's namespace (--cluster-providers=false); ClusterKeyProvider {} cannot be used",
            r.name
        ))),
        ProviderKind::ClusterKeyProvider => {
            let p = match ctx.cache.cluster_provider(&r.name) {
                Some(p) => Some(p),
                None => {
                    let api: Api<ClusterKeyProvider> = Api::all(ctx.client.clone());
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
                let labels = namespace_labels(ctx, &ns).await?;
                if !selector_matches(sel, &labels).map_err(|e| {
                    ResolveError::InvalidProvider(format!("ClusterKeyProvider {}: {e}", r.name))
                })? {
                    return Err(ResolveError::ProviderNotAllowed(format!(
                        "ClusterKeyProvider {} does not admit namespace {ns} (spec.namespaceSelector)",
                        r.name
                    )));
                }
            }
            resolve_object(ctx, ProviderObject {
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
    ctx: &Context,
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
    check_base_url(&ctx.settings.allowed_base_url_hosts, &id, spec)
        .map_err(ResolveError::InvalidProvider)?;
    if namespace.is_some() {
        // Before the credentials are read: a refused KeyProvider gets nothing.
        check_network(ctx.settings.namespaced_network, spec)
            .map_err(|e| ResolveError::InvalidProvider(format!("{id}: {e}")))?;
    }
    let refresh_interval = match &spec.refresh_interval {
        Some(s) => providers::parse_duration(s)
            .map_err(|e| ResolveError::InvalidProvider(format!("{id}: spec.refreshInterval {e}")))?
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
    let cached = match ctx.backends.cached(&id, generation) {
        Cached::Fresh(backend) => return Ok(resolved(backend)),
        Cached::Recheck(entry) => Some(entry),
        Cached::Missing => None,
    };
    let mut read = read_credentials(ctx, &id, config.credential_refs(), namespace).await?;
    let mut options = ctx.settings.client_options.clone();
    if let Some(bundle) = &spec.ca_bundle {
        let (roots, version) = read_ca_bundle(ctx, &id, bundle, namespace).await?;
        options.extra_roots = roots;
        read.versions.push(version);
    }
    if let Some(backend) = cached.and_then(|e| Backends::confirm(&e, &read.versions)) {
        return Ok(resolved(backend));
    }
    if namespace.is_some() {
        // A tenant's KeyProvider: the admin's network policy (ClusterKeyProviders are the
        // admin's own).
        options.network = ctx.settings.namespaced_network;
    }
    let backend = providers::build_backend(spec, read.credentials, options)
        .map_err(|e| ResolveError::InvalidProvider(format!("{id}: {e}")))?;
    ctx.backends
        .insert(&id, generation, read.versions, backend.clone());
    // Settings or credentials changed: listings taken with the old ones are stale.
    ctx.listings.forget(&id);
    Ok(resolved(backend))
}

/// The labels of namespace `ns`: from the watch, else read.
pub async fn namespace_labels(
    ctx: &Context,
    ns: &str,
) -> Result<BTreeMap<String, String>, kube::Error> {
    if let Some(labels) = ctx.cache.namespace_labels(ns) {
        return Ok(labels);
    }
    let nsobj = Api::<Namespace>::all(ctx.client.clone()).get(ns).await?;
    Ok(nsobj.labels().clone())
}

/// `--allowed-base-url-hosts`: when the list is not empty, a provider object may only talk to a
/// host on it (exact, case-insensitive). Err is the InvalidProvider message (no call is made).
pub fn check_base_url(allowed: &[String], id: &str, spec: &KeyProviderSpec) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    // The URL the client would talk to (none: no block, so no client is built either).
    let Some(base) = spec.provider().map(|p| p.base_url()) else {
        return Ok(());
    };
    let host = url::Url::parse(base).ok().and_then(|u| {
        u.host_str()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
    });
    match host {
        Some(h) if allowed.iter().any(|a| a.eq_ignore_ascii_case(&h)) => Ok(()),
        Some(h) => Err(format!(
            "{id}: base URL host {h} is not allowed by this installation (allowed: {})",
            allowed.join(", ")
        )),
        None => Err(format!("{id}: the base URL is not a valid absolute URL")),
    }
}

/// The network policy of namespaced KeyProviders, on the base URL itself (scheme, address
/// literals, userinfo/query/fragment); the addresses a host name resolves to are checked when
/// connecting (see `providers::egress`). Err is the InvalidProvider message.
pub fn check_network(
    policy: crate::providers::egress::NetworkPolicy,
    spec: &KeyProviderSpec,
) -> Result<(), String> {
    // The URL the client would talk to (none: no block, so no client is built either).
    let Some(base) = spec.provider().map(|p| p.base_url()) else {
        return Ok(());
    };
    let url = crate::providers::http::parse_base_url(base)?;
    crate::providers::egress::check_url(&url, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_hosts_outside_the_allow_list_are_refused() {
        use crate::api::{BifrostProvider, OpenRouterProvider};
        let allowed = vec!["openrouter.ai".to_string(), "gw.example.com".to_string()];
        let or = |url: Option<&str>| KeyProviderSpec {
            openrouter: Some(OpenRouterProvider {
                base_url: url.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            check_base_url(&[], "kp", &or(Some("http://evil.test"))),
            Ok(())
        );
        // The default base URL counts: openrouter.ai is listed.
        assert_eq!(check_base_url(&allowed, "kp", &or(None)), Ok(()));
        assert_eq!(
            check_base_url(&allowed, "kp", &or(Some("https://GW.example.com./v1"))),
            Ok(())
        );
        let err =
            check_base_url(&allowed, "kp", &or(Some("http://169.254.169.254/latest"))).unwrap_err();
        assert!(
            err.contains("169.254.169.254") && err.contains("not allowed"),
            "{err}"
        );
        // A look-alike suffix is not the host.
        assert!(
            check_base_url(&allowed, "kp", &or(Some("https://openrouter.ai.evil.test"))).is_err()
        );
        let bifrost = KeyProviderSpec {
            bifrost: Some(BifrostProvider {
                base_url: "not a url".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_base_url(&allowed, "kp", &bifrost).is_err());
    }
}
