//! Delivering a key's value: writing the Secret unless it already holds exactly that.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use secrecy::SecretString;

use super::super::context::Context;
use super::super::reasons::Reason;
use super::super::secret;
use super::Failure;
use crate::api::{ApiKey, FIELD_MANAGER};

/// A value to deliver and the key it belongs to.
pub struct Delivery<'a> {
    pub value: &'a SecretString,
    pub key_id: &'a str,
    pub hint: &'a str,
}

/// Write the Secret unless it already holds exactly this.
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
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    if existing.is_some_and(|e| e.type_ != desired.type_) {
        // A Secret's type is immutable: replace the object.
        replace(ctx, &api, &desired).await?;
        return Ok(());
    }
    apply(ctx, &api, &desired).await?;
    Ok(())
}

async fn replace(ctx: &Context, api: &Api<Secret>, desired: &Secret) -> Result<(), kube::Error> {
    api.delete(&desired.name_any(), &DeleteParams::default())
        .await?;
    ctx.metrics.kube_write("secrets", "delete");
    api.create(
        &PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        },
        desired,
    )
    .await?;
    ctx.metrics.kube_write("secrets", "create");
    Ok(())
}

/// Server-side apply, retried twice.
async fn apply(ctx: &Context, api: &Api<Secret>, desired: &Secret) -> Result<(), kube::Error> {
    let name = desired.name_any();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let res = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(desired),
            )
            .await;
        match res {
            Ok(_) => {
                ctx.metrics.kube_write("secrets", "apply");
                return Ok(());
            }
            Err(e) if attempts < 3 => {
                tracing::debug!(error = %e, "secret write failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
