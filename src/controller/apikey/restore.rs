//! When the key or its value went missing: the Secret is restored from the provider's copy where
//! the provider keeps one; otherwise an adopted key is re-adopted and a minted one replaced.

use kube::runtime::events::EventType;
use secrecy::SecretString;

use super::super::reasons::Reason;
use super::super::secret;
use super::scope::LocatedKey;
use super::status::Ready;
use super::step::Step;
use super::{adopt, create};
use crate::api::ApiKeyStatus;
use crate::controller::error::Failure;

/// The value the Secret must hold for `key`: the one it holds, else the provider's copy
/// (providers that return the plaintext give it back). `None`: the value is lost.
pub async fn value_to_deliver(
    s: &Step<'_>,
    key: &LocatedKey,
) -> Result<Option<SecretString>, Failure> {
    let (r, existing) = (&s.r, s.existing.as_ref());
    let held = existing
        .filter(|s| secret::key_id_of(s).as_deref() == Some(key.id.as_str()))
        .and_then(|s| secret::value_of(r.ak, s));
    if held.is_some() {
        return Ok(held);
    }
    if !r.p.backend.capabilities().secret_readable {
        return Ok(None);
    }
    let restored = r.p.backend.get(&key.at, &key.id).await?.secret;
    if restored.is_some() {
        let note = format!(
            "Secret {} restored from the provider's copy of key {}",
            r.ak.secret_name(),
            key.id
        );
        r.event(EventType::Normal, Reason::SecretRestored, "Restore", note)
            .await;
    }
    Ok(restored)
}

/// The key no longer exists (or was revoked) at the provider: an adopted key cannot come back,
/// a minted one is created again.
pub async fn key_missing(s: &Step<'_>, st: &mut ApiKeyStatus, id: &str) -> Result<Ready, Failure> {
    let (r, v) = (&s.r, &s.v);
    let note = format!(
        "key {id} no longer exists (or was revoked) at {}",
        r.p.provider_type
    );
    r.event(EventType::Warning, Reason::KeyMissing, "Recreate", note)
        .await;
    if v.settings.key_ref.is_some() {
        return Err(Failure::permanent(
            Reason::ProviderNotFound,
            format!(
                "the adopted key {id} no longer exists at {}",
                r.p.provider_type
            ),
        ));
    }
    st.key_id = None;
    create::create(s, st, None).await
}

/// The Secret lost the value of `key`: adopted keys are re-adopted, minted ones replaced.
pub async fn replace_or_readopt(
    s: &Step<'_>,
    st: &mut ApiKeyStatus,
    key: LocatedKey,
) -> Result<Ready, Failure> {
    let (r, v) = (&s.r, &s.v);
    let note = format!(
        "Secret {} no longer holds the value of key {}; the value cannot be read back from {}",
        r.ak.secret_name(),
        key.id,
        r.p.provider_type
    );
    r.event(EventType::Warning, Reason::SecretLost, "Recreate", note)
        .await;
    if v.settings.key_ref.is_some() {
        st.key_id = None;
        return adopt::adopt(s, st, &key.at, &key.id).await;
    }
    create::create(s, st, Some(key)).await
}
