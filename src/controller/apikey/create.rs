//! Creating a key: mark the attempt in the status, create, deliver the value, and retire the
//! key it replaces (see the ordering in the module doc of `apikey`).

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;

use super::super::reasons::Reason;
use super::deliver::{ensure_secret, Delivery};
use super::revoke::revoke_quietly;
use super::status::{fill_from_key, location, now_rfc3339, write_status, Ready};
use super::validate::ValidatedApiKey;
use super::{Failure, LocatedKey, Reconciler};
use crate::api::{ApiKey, ApiKeyStatus, Expiry, PendingCreate, PreviousKey};
use crate::providers::{CreatedKey, KeySettings, ProviderError};

/// The marker written before a create call.
pub fn marker(settings: &KeySettings, attempt: &str) -> PendingCreate {
    PendingCreate {
        name: settings.name.clone(),
        started_at: now_rfc3339(),
        attempt: attempt.to_string(),
    }
}

/// The settings a create sends: the attempt id, and an expiry counted from now for a ttl.
pub fn settings_for_attempt(
    ak: &ApiKey,
    settings: &KeySettings,
    attempt: String,
) -> Result<KeySettings, Failure> {
    let mut settings = settings.clone();
    settings.attempt = Some(attempt);
    let expiry = ak
        .spec
        .expiry()
        .map_err(|m| Failure::permanent(Reason::InvalidSpec, m))?;
    if let Some(ttl @ Expiry::After(_)) = expiry {
        settings.expires_at = Some(ttl.for_key_created(Utc::now()));
    }
    Ok(settings)
}

/// Whether a failed create may still have created a key (so the marker must stay for recovery).
/// A definite refusal, or a 429 (the provider did not act on it), created nothing.
pub fn may_have_created(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Unavailable(_) | ProviderError::Malformed(_)
    )
}

/// Create a key where `v` says (a replacement of `replacing`, if given) and deliver its value.
pub async fn create(
    r: &Reconciler<'_>,
    v: &ValidatedApiKey,
    st: &mut ApiKeyStatus,
    existing: Option<&Secret>,
    replacing: Option<LocatedKey>,
) -> Result<Ready, Failure> {
    if let Some((wait, message)) = r.ctx.creates_held(&r.p.id) {
        // The provider asked to wait (429 + Retry-After). Writing the marker anyway would be a
        // watch event that reconciles this ApiKey again at once, ignoring the requeue: a loop of
        // creates and status writes for as long as the provider keeps answering 429.
        return Err(Failure::transient(Reason::RateLimited, message, Some(wait)));
    }
    r.ctx.lease_allows(r.ctx.client_options.timeout)?;
    let attempt = crate::ids::random_hex(16);
    let mut marked = st.clone();
    marked.pending_create = Some(marker(&v.settings, &attempt));
    // Invariant 1: the marker is durable before the provider is asked to create anything. The
    // write is conditional (ServerCopy): a reconcile working from a stale copy, which may not
    // show a key created moments ago, stops here instead of creating a second one.
    write_status(r.ctx, r.ak, &marked, r.seen).await?;
    *st = marked;

    let settings = settings_for_attempt(r.ak, &v.settings, attempt)?;
    let created = match r.p.backend.create(&settings).await {
        Ok(c) => c,
        Err(e) => {
            if let ProviderError::RateLimited {
                retry_after: Some(wait),
            } = &e
            {
                r.ctx.hold_creates(&r.p.id, *wait, e.to_string());
            }
            if !may_have_created(&e) {
                // Nothing was created, so nothing to recover. Leaving the marker would make the
                // next reconcile list every key of the provider, for each rate-limited create.
                st.pending_create = None;
            }
            return Err(e.into());
        }
    };
    r.ctx.metrics.keys_created.get_or_create(&r.label()).inc();
    #[cfg(feature = "test-hooks")]
    if r.ctx.fault_crash_after_create() {
        // Test hook: behave as if the process died right here.
        return Err(Failure::permanent(
            Reason::Crashed,
            "simulated crash after create",
        ));
    }
    deliver_created(r, v, st, existing, &created).await?;
    let secret_name = r.ak.secret_name();
    let id = created.key.id;
    match replacing {
        Some(old) => retire_replaced(r, st, old, &id).await?,
        None => {
            let note = format!(
                "created key {id} at {}; value written to Secret {secret_name}",
                r.p.provider_type
            );
            r.event(EventType::Normal, Reason::KeyCreated, "Create", note)
                .await;
        }
    }
    Ok(Ready::active(r.p, st, &secret_name))
}

/// Write the new key's value to the Secret and record the key. If the value cannot be delivered,
/// the key is revoked rather than left unaccounted for; if even that fails, pendingCreate stays
/// set and the next reconcile recovers.
async fn deliver_created(
    r: &Reconciler<'_>,
    v: &ValidatedApiKey,
    st: &mut ApiKeyStatus,
    existing: Option<&Secret>,
    created: &CreatedKey,
) -> Result<(), Failure> {
    let id = &created.key.id;
    let mut hinted = st.clone();
    fill_from_key(&mut hinted, &created.key);
    let delivery = Delivery {
        value: &created.secret,
        key_id: id,
        hint: hinted.key_hint.as_deref().unwrap_or(""),
    };
    if let Err(f) = ensure_secret(r.ctx, r.ak, existing, &delivery).await {
        if matches!(
            r.p.backend.revoke(&v.scope, id).await,
            Ok(()) | Err(ProviderError::NotFound(_))
        ) {
            st.pending_create = None;
        }
        return Err(f);
    }
    *st = hinted;
    st.pending_create = None;
    st.fields_needing_new_key.clear();
    st.key_scope = location(&v.scope);
    r.ctx.remember(r.p, &v.scope, &created.key).await;
    Ok(())
}

/// The Secret holds the new key `new`: the old one must go. If the provider refuses now, the
/// status keeps it in previousKeys and later reconciles (or deletion) revoke it.
async fn retire_replaced(
    r: &Reconciler<'_>,
    st: &mut ApiKeyStatus,
    old: LocatedKey,
    new: &str,
) -> Result<(), Failure> {
    if let Err(e) = revoke_quietly(r.ctx, r.p, &old.at, &old.id).await {
        st.previous_keys.push(PreviousKey {
            key_id: old.id,
            delete_after: now_rfc3339(),
            scope: location(&old.at),
        });
        return Err(e.into());
    }
    let note = format!(
        "created key {new} at {} and revoked {}",
        r.p.provider_type, old.id
    );
    r.event(EventType::Normal, Reason::KeyReplaced, "Create", note)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiKeySpec;

    #[test]
    fn only_an_unanswered_create_may_have_created_a_key() {
        assert!(may_have_created(&ProviderError::Unavailable(
            "timeout".into()
        )));
        assert!(may_have_created(&ProviderError::Malformed("body".into())));
        assert!(!may_have_created(&ProviderError::Rejected("no".into())));
        assert!(!may_have_created(&ProviderError::RateLimited {
            retry_after: None
        }));
        assert!(!may_have_created(&ProviderError::Auth("no".into())));
    }

    #[test]
    fn a_ttl_counts_from_the_attempt() {
        let ak = ApiKey::new(
            "k",
            ApiKeySpec {
                ttl: Some("1h".into()),
                ..Default::default()
            },
        );
        let base =
            KeySettings::from_spec(&ak.spec, "n".into(), Utc::now() - chrono::Duration::days(1))
                .unwrap();
        let s = settings_for_attempt(&ak, &base, "a1".into()).unwrap();
        assert_eq!(s.attempt.as_deref(), Some("a1"));
        let left = s.expires_at.unwrap() - Utc::now();
        assert!(left > chrono::Duration::minutes(59) && left <= chrono::Duration::hours(1));
        let m = marker(&s, "a1");
        assert_eq!((m.name.as_str(), m.attempt.as_str()), ("n", "a1"));
    }
}
