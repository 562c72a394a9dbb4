//! Taking over an existing key (`spec.keyRef`): its value comes from the Secret, the provider's
//! copy, or a regeneration, depending on what the provider can do.

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;
use secrecy::SecretString;

use super::super::reasons::Reason;
use super::super::secret;
use super::deliver::{ensure_secret, Delivery};
use super::status::{fill_from_key, location, Ready};
use super::{Failure, Reconciler};
use crate::api::ApiKeyStatus;
use crate::providers::{AdoptMode, KeyScope, ProviderError, ProviderKey};

/// Take over key `id` in `scope` and deliver its value.
pub async fn adopt(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    scope: &KeyScope,
    id: &str,
    existing: Option<&Secret>,
) -> Result<Ready, Failure> {
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
    let held = existing
        .filter(|s| secret::key_id_of(s).as_deref() == Some(id))
        .and_then(|s| secret::value_of(r.ak, s));
    let (value, key) = value_of_adopted(r, scope, id, key, held).await?;
    fill_from_key(st, &key);
    st.key_id = Some(id.to_string());
    st.key_scope = location(scope);
    let delivery = Delivery {
        value: &value,
        key_id: id,
        hint: st.key_hint.as_deref().unwrap_or(""),
    };
    ensure_secret(r.ctx, r.ak, existing, &delivery).await?;
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
