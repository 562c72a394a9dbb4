//! Reading a provider object's credentials from Secrets (tenancy: a KeyProvider reads only its
//! own namespace; a ClusterKeyProvider the namespace it names, else the operator's).

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::ResourceExt;
use secrecy::SecretString;

use super::backends::ResolveError;
use super::context::Context;
use crate::api::CredentialRef;
use crate::providers::Credentials;

/// Credentials read for one provider object, with the resourceVersion of each Secret read (a
/// change of any of them means the backend must be rebuilt).
pub struct ReadCredentials {
    pub credentials: Credentials,
    pub versions: Vec<Option<String>>,
}

/// Where a credential Secret is read from. `own`: Some for a namespaced KeyProvider.
pub fn credential_namespace(
    id: &str,
    own: Option<&str>,
    named: Option<&str>,
    operator_namespace: &str,
) -> Result<String, ResolveError> {
    match (own, named) {
        (Some(own), Some(other)) if other != own => Err(ResolveError::InvalidProvider(format!(
            "{id}: a KeyProvider reads credentials from its own namespace only (secret ref names namespace {other})"
        ))),
        (Some(own), _) => Ok(own.to_string()),
        (None, Some(other)) => Ok(other.to_string()),
        (None, None) => Ok(operator_namespace.to_string()),
    }
}

/// Read every credential of `refs` for provider object `id` (`own`: see [`credential_namespace`]).
pub async fn read_credentials(
    ctx: &Context,
    id: &str,
    refs: Vec<CredentialRef>,
    own: Option<&str>,
) -> Result<ReadCredentials, ResolveError> {
    let mut out = ReadCredentials {
        credentials: Credentials::default(),
        versions: Vec::new(),
    };
    for r in refs {
        let ns = credential_namespace(id, own, r.namespace.as_deref(), &ctx.operator_namespace)?;
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&r.name)
            .await?
            .ok_or_else(|| {
                ResolveError::CredentialsNotFound(format!(
                    "{id}: credentials Secret {ns}/{} does not exist",
                    r.name
                ))
            })?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ResolveError::CredentialsNotFound(format!(
                    "{id}: Secret {ns}/{} has no non-empty key {:?}",
                    r.name, r.key
                ))
            })?;
        out.versions.push(secret.resource_version());
        out.credentials
            .0
            .insert(r.role.to_string(), SecretString::from(value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_provider_reads_only_its_namespace() {
        let ns = |own, named| credential_namespace("p", own, named, "keysmith-system");
        assert_eq!(ns(Some("team-a"), None).unwrap(), "team-a");
        assert_eq!(ns(Some("team-a"), Some("team-a")).unwrap(), "team-a");
        assert!(matches!(
            ns(Some("team-a"), Some("other")),
            Err(ResolveError::InvalidProvider(_))
        ));
        assert_eq!(ns(None, Some("ops")).unwrap(), "ops");
        assert_eq!(ns(None, None).unwrap(), "keysmith-system");
    }
}
