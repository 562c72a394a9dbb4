//! Delivering a key's value: writing the Secret unless it already holds exactly that.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use secrecy::SecretString;

use super::super::context::Context;
use super::super::reasons::Reason;
use super::super::secret;
use crate::api::{ApiKey, FIELD_MANAGER};
use crate::controller::error::Failure;

/// A value to deliver and the key it belongs to.
pub struct Delivery<'a> {
    pub value: &'a SecretString,
    pub key_id: &'a str,
    pub hint: &'a str,
}

/// Write the Secret unless it already holds exactly this. A Secret that does not exist is
/// created (one created in between by someone else is a conflict, never taken over); one of
/// ours is updated with server-side apply. A change of `type` is refused: the type of a Secret
/// is immutable, and deleting the live Secret first would lose a value that may not be
/// readable again.
pub async fn ensure_secret(
    ctx: &Context,
    ak: &ApiKey,
    existing: Option<&Secret>,
    d: &Delivery<'_>,
) -> Result<(), Failure> {
    // Templates were checked before any provider call, so this fails only on a bug; it is
    // reported, never a panic.
    let desired = secret::render_secret(ak, d.value, d.key_id, d.hint)
        .map_err(|m| Failure::permanent(Reason::InvalidSpec, m))?;
    if existing.is_some_and(|e| secret::is_up_to_date(e, &desired)) {
        return Ok(());
    }
    if let Some(e) = existing {
        check_type_unchanged(e, &desired)?;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    match existing {
        None => create(ctx, &api, &desired, false).await,
        Some(_) => apply(ctx, &api, &desired, false).await,
    }
    .map_err(|e| write_failure(ak, e))
}

/// The Secret's type cannot change in place; keysmith never deletes the live Secret to change it.
pub fn check_type_unchanged(existing: &Secret, desired: &Secret) -> Result<(), Failure> {
    let have = existing.type_.as_deref().unwrap_or("Opaque");
    let want = desired.type_.as_deref().unwrap_or("Opaque");
    if have == want {
        return Ok(());
    }
    Err(Failure::permanent(
        Reason::InvalidSpec,
        format!(
            "Secret {} has type {have} and secret.template.type asks for {want}; a Secret's type cannot change, and keysmith does not delete the live Secret: set the type back, or delete the Secret yourself (keysmith then writes a new one, with a new key if the provider cannot give the value again)",
            desired.name_any()
        ),
    ))
}

/// Check, without writing, that the Secret of `ak` can be written (quota, admission webhooks,
/// validation): a server-side dry run of the write a create would make, with a placeholder
/// value. Run before a key is minted, so a Secret that can never be written costs no key.
pub async fn dry_run(ctx: &Context, ak: &ApiKey, existing: Option<&Secret>) -> Result<(), Failure> {
    let placeholder = SecretString::from("keysmith-dry-run-placeholder-value");
    let desired = secret::render_secret(ak, &placeholder, "dry-run", "")
        .map_err(|m| Failure::permanent(Reason::InvalidSpec, m))?;
    if let Some(e) = existing {
        check_type_unchanged(e, &desired)?;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    match existing {
        None => create(ctx, &api, &desired, true).await,
        Some(_) => apply(ctx, &api, &desired, true).await,
    }
    .map_err(|e| write_failure(ak, e))
}

/// A refused Secret write as a failure: a conflict (the Secret appeared in between) is reported
/// as one, a refusal by the API server (quota, admission, validation) as the reason the key
/// cannot be delivered.
fn write_failure(ak: &ApiKey, e: kube::Error) -> Failure {
    match &e {
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => Failure::transient(
            Reason::SecretConflict,
            format!(
                "Secret {} was created by someone else while keysmith was writing it; keysmith looks at it again",
                ak.secret_name()
            ),
            None,
        ),
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => Failure::transient(
            Reason::SecretWriteRefused,
            format!(
                "the API server refuses to write Secret {}: {}",
                ak.secret_name(),
                s.message
            ),
            None,
        ),
        _ => Failure::from(e),
    }
}

fn dry(dry_run: bool) -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        dry_run,
    }
}

async fn create(
    ctx: &Context,
    api: &Api<Secret>,
    desired: &Secret,
    dry_run: bool,
) -> Result<(), kube::Error> {
    api.create(&dry(dry_run), desired).await?;
    if !dry_run {
        ctx.metrics.kube_write("secrets", "create");
    }
    Ok(())
}

/// Server-side apply of a Secret of ours, retried twice on errors other than a refusal.
async fn apply(
    ctx: &Context,
    api: &Api<Secret>,
    desired: &Secret,
    dry_run: bool,
) -> Result<(), kube::Error> {
    let name = desired.name_any();
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let res = api.patch(&name, &params, &Patch::Apply(desired)).await;
        match res {
            Ok(_) => {
                if !dry_run {
                    ctx.metrics.kube_write("secrets", "apply");
                }
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code < 500 && s.code != 429 => {
                return Err(kube::Error::Api(s))
            }
            Err(e) if attempts < 3 => {
                tracing::debug!(error = %e, "secret write failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiKeySpec;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused: exceeded quota", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn refused_writes_say_why_and_a_secret_made_in_between_is_a_conflict() {
        let ak = ApiKey::new("k", ApiKeySpec::default());
        let f = write_failure(&ak, api_error(409, "AlreadyExists"));
        assert_eq!(f.reason, Reason::SecretConflict);
        assert!(!f.is_stale(), "not mistaken for a stale ApiKey");
        let f = write_failure(&ak, api_error(403, "Forbidden"));
        assert_eq!(f.reason, Reason::SecretWriteRefused);
        assert!(f.message.contains("quota"));
        let f = write_failure(&ak, api_error(500, "InternalError"));
        assert_eq!(f.reason, Reason::KubernetesError);
    }

    #[test]
    fn a_type_change_is_refused_not_replaced() {
        let mut have = Secret::default();
        have.metadata.name = Some("k".into());
        let mut want = have.clone();
        assert!(check_type_unchanged(&have, &want).is_ok());
        want.type_ = Some("Opaque".into());
        assert!(
            check_type_unchanged(&have, &want).is_ok(),
            "absent is Opaque"
        );
        want.type_ = Some("example.com/key".into());
        let f = check_type_unchanged(&have, &want).unwrap_err();
        assert_eq!(f.reason, Reason::InvalidSpec);
        assert!(f.message.contains("example.com/key"));
    }
}
