//! Reading what an ApiKey refers to in the cluster (its provider is resolved by
//! [`Context::resolve`]): the Secret its value goes to, and the Secret a pushed value comes from.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use secrecy::SecretString;

use super::super::context::Context;
use super::super::reasons::Reason;
use super::super::secret::{self, SecretOwnership};
use crate::api::ApiKey;
use crate::controller::error::Failure;

/// The Secret the value goes to, if it exists; a Secret keysmith must not overwrite is a
/// `SecretConflict`.
pub async fn target_secret(ak: &ApiKey, ctx: &Context) -> Result<Option<Secret>, Failure> {
    let ns = ak.namespace().unwrap_or_default();
    let name = ak.secret_name();
    let existing = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await?;
    if let Some(s) = &existing {
        if let SecretOwnership::Foreign(who) = secret::ownership(ak, s) {
            return Err(Failure::permanent(
                Reason::SecretConflict,
                format!(
                    "Secret {ns}/{name} exists and {who}; keysmith will not overwrite it. Delete it, set spec.secret.name to another name, or annotate it keysmith.dev/allow-overwrite=true"
                ),
            ));
        }
    }
    Ok(existing)
}

/// A value to push and the resourceVersion of the Secret it was read from.
pub struct SourceValue {
    pub value: SecretString,
    pub version: Option<String>,
    /// Name of the source Secret.
    pub name: String,
}

/// Read the value of `spec.source` (the caller checked that it is set).
pub async fn source_value(ak: &ApiKey, ctx: &Context) -> Result<SourceValue, Failure> {
    let Some(src) = ak.spec.source.as_ref().map(|s| &s.secret_ref) else {
        return Err(Failure::permanent(
            Reason::SourceNotFound,
            "spec.source is not set",
        ));
    };
    let ns = ak.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&src.name)
        .await?
        .ok_or_else(|| {
            Failure::permanent(
                Reason::SourceNotFound,
                format!(
                    "spec.source.secretRef: Secret {ns}/{} does not exist",
                    src.name
                ),
            )
        })?;
    // Opt-in: anyone who may write ApiKeys in the namespace could otherwise push any Secret of
    // it (a database password, a ServiceAccount token) to a gateway of their choosing. Only a
    // Secret its owner labelled is read.
    if !secret.labels().contains_key(super::super::SOURCE_LABEL) {
        return Err(Failure::permanent(
            Reason::SourceNotFound,
            format!(
                "Secret {ns}/{} is not labelled {}: keysmith pushes only Secrets their owner opted in (kubectl label secret {} {}=true -n {ns})",
                src.name,
                super::super::SOURCE_LABEL,
                src.name,
                super::super::SOURCE_LABEL,
            ),
        ));
    }
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&src.key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
        .ok_or_else(|| {
            Failure::permanent(
                Reason::SourceNotFound,
                format!(
                    "Secret {ns}/{} has no non-empty key {:?}",
                    src.name, src.key
                ),
            )
        })?;
    Ok(SourceValue {
        value,
        version: secret.resource_version(),
        name: src.name.clone(),
    })
}
