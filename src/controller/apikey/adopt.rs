//! Taking over an existing key (`spec.keyRef`): its value comes from the Secret, the provider's
//! copy, or a regeneration, depending on what the provider can do.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use secrecy::SecretString;

use super::super::backends::selector_matches;
use super::super::context::Context;
use super::super::reasons::Reason;
use super::super::secret;
use super::deliver::{dry_run, ensure_secret, Delivery};
use super::others::Others;
use super::scope::location;
use super::status::{fill_from_key, Ready};
use super::step::{Reconciler, Step};
use crate::api::{ApiKey, ApiKeyStatus, ClusterKeyProvider, KeyProvider, ProviderKind};
use crate::controller::error::Failure;
use crate::providers::{AdoptMode, KeyScope, ProviderError, ProviderKey};

/// Whether the provider object of `ak` lets its namespace adopt keys (docs/tenancy.md): a
/// KeyProvider unless it says `adoption.allowed: false`; a ClusterKeyProvider only if it says
/// `adoption.allowed: true`, for the namespaces its `adoption.namespaceSelector` admits.
pub async fn adoption_allowed(ctx: &Context, ak: &ApiKey) -> Result<(), Failure> {
    let ns = ak.namespace().unwrap_or_default();
    let r = &ak.spec.provider_ref;
    let refused = |why: String| Err(Failure::permanent(Reason::AdoptionRefused, why));
    let (allowed, selector, what) = match r.kind {
        ProviderKind::KeyProvider => {
            let p = Api::<KeyProvider>::namespaced(ctx.client.clone(), &ns)
                .get(&r.name)
                .await?;
            let (allowed, _) = p.spec.adoption_allowed(false);
            (allowed, None, format!("KeyProvider {ns}/{}", r.name))
        }
        ProviderKind::ClusterKeyProvider => {
            let p = Api::<ClusterKeyProvider>::all(ctx.client.clone())
                .get(&r.name)
                .await?;
            let (allowed, selector) = p.spec.inner.adoption_allowed(true);
            (
                allowed,
                selector.cloned(),
                format!("ClusterKeyProvider {}", r.name),
            )
        }
    };
    if !allowed {
        return refused(format!(
            "{what} does not allow adopting existing keys (spec.keyRef); its owner can allow it with spec.adoption.allowed: true"
        ));
    }
    if let Some(sel) = selector {
        let labels = super::super::resolve::namespace_labels(ctx, &ns).await?;
        let admitted = selector_matches(&sel, &labels)
            .map_err(|e| Failure::permanent(Reason::InvalidProvider, format!("{what}: {e}")))?;
        if !admitted {
            return refused(format!(
                "{what} does not allow namespace {ns} to adopt existing keys (spec.adoption.namespaceSelector)"
            ));
        }
    }
    Ok(())
}

/// Refuse a key that another ApiKey manages (its keyID, previousKeys or a rotation in flight,
/// in any namespace).
pub fn not_managed_elsewhere(others: &Others, id: &str) -> Result<(), Failure> {
    if others.keys.contains(id) {
        return Err(Failure::permanent(
            Reason::AdoptionRefused,
            format!("spec.keyRef.id {id} is managed by another ApiKey; a key is adopted only if no ApiKey manages it"),
        ));
    }
    Ok(())
}

/// In namespace mode keysmith cannot list the ApiKeys of namespaces it does not watch, and a
/// ClusterKeyProvider is shared with them: that no ApiKey manages the key cannot be proven, so
/// adoption through a ClusterKeyProvider is refused (unless the installation may list ApiKeys
/// cluster-wide, which makes the view complete). A KeyProvider's credentials are the tenant's
/// own: what it can adopt through them it could take with them anyway.
pub fn not_provable_in_part(others: &Others, ak: &ApiKey) -> Result<(), Failure> {
    if others.partial && ak.spec.provider_ref.kind == ProviderKind::ClusterKeyProvider {
        return Err(Failure::permanent(
            Reason::AdoptionRefused,
            format!(
                "keysmith watches only some namespaces (--watch-namespaces) and cannot list ApiKeys of the others, so it cannot prove that no ApiKey there manages this key: adoption through ClusterKeyProvider {} is refused. Adopt through a KeyProvider of this namespace, or grant keysmith list on apikeys cluster-wide",
                ak.spec.provider_ref.name
            ),
        ));
    }
    Ok(())
}

/// Take over key `id` in `scope` and deliver its value.
pub async fn adopt(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    scope: &KeyScope,
    id: &str,
) -> Result<Ready, Failure> {
    let (r, existing) = (&s.r, s.existing.as_ref());
    // Tenancy: before the provider is even asked about the key.
    adoption_allowed(r.ctx, r.ak).await?;
    let others = Others::read(r.ctx, r.ak, r.p.provider_type.as_str()).await?;
    not_provable_in_part(&others, r.ak)?;
    not_managed_elsewhere(&others, id)?;
    let key = match r.p.backend.get(scope, id).await {
        Ok(k) => k,
        Err(ProviderError::NotFound(_)) => {
            return Err(Failure::permanent(
                Reason::ProviderNotFound,
                format!(
                    "spec.keyRef.id {id} does not exist at {}",
                    r.p.provider_type
                ),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if key.name.starts_with(super::attempt::PROVISIONAL_PREFIX) {
        // A key under a provisional name belongs to another ApiKey's create in flight (or to
        // one that crashed and whose recovery will revoke it): never another's to take.
        return Err(Failure::permanent(
            Reason::AdoptionRefused,
            format!("spec.keyRef.id {id} is being created by keysmith for another ApiKey (its name is still provisional); a key is adopted only if no ApiKey manages it"),
        ));
    }
    let held = existing
        .filter(|s| secret::key_id_of(s).as_deref() == Some(id))
        .and_then(|s| secret::value_of(r.ak, s));
    let (value, key) = value_of_adopted(r, scope, id, key, held, existing).await?;
    fill_from_key(st, &key, r.p);
    st.key_id = Some(id.to_string());
    st.key_scope = location(scope);
    // A rotation at the provider before now is not one made outside keysmith later.
    let mut with_status = None;
    if super::outside::adopted(r.p.backend.as_ref(), st, &key, &value) {
        // The Secret is rendered from the status that records it (its key-hash).
        let mut ak = r.ak.clone();
        ak.status = Some(st.clone());
        with_status = Some(ak);
    }
    let delivery = Delivery {
        value: &value,
        key_id: id,
        hint: st.key_hint.as_deref().unwrap_or(""),
    };
    let ak = with_status.as_ref().unwrap_or(r.ak);
    ensure_secret(r.ctx, ak, existing, &delivery).await?;
    let note = format!("adopted key {id} at {}", r.p.provider_type);
    r.event(EventType::Normal, Reason::KeyAdopted, "Adopt", note)
        .await;
    Ok(Ready::active(r.p, st, &r.ak.secret_name()))
}

/// The value of an adopted key: the one the Secret holds, else the provider's copy, else a
/// regenerated one.
async fn value_of_adopted(
    r: &Reconciler<'_>,
    scope: &KeyScope,
    id: &str,
    key: ProviderKey,
    held: Option<SecretString>,
    existing: Option<&Secret>,
) -> Result<(SecretString, ProviderKey), Failure> {
    match (held, r.p.backend.capabilities().adopt) {
        (Some(v), _) => Ok((v, key)),
        (None, AdoptMode::ReadBack) => match key.secret.clone() {
            Some(v) => Ok((v, key)),
            None => Err(Failure::permanent(
                Reason::ProviderRejected,
                format!("{} did not return a value for key {id}", r.p.provider_type),
            )),
        },
        (None, AdoptMode::Regenerate) => {
            // The regenerate kills the value the key's users have: only once the Secret is
            // known to take the new one (quota, admission, type), as create does.
            dry_run(r.ctx, r.ak, existing).await?;
            let created = r.p.backend.regenerate(scope, id).await?;
            r.event(
                EventType::Warning,
                Reason::KeyRegenerated,
                "Adopt",
                format!("regenerated key {id} at {} to obtain its value: the previous value stopped working", r.p.provider_type),
            )
            .await;
            Ok((created.secret, created.key))
        }
        (None, AdoptMode::No) => Err(Failure::permanent(
            Reason::UnsupportedField,
            format!("{} cannot adopt existing keys", r.p.provider_type),
        )),
    }
}
