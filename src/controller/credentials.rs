//! Reading a provider object's credentials from Secrets (tenancy: a KeyProvider reads only its
//! own namespace; a ClusterKeyProvider the namespace it names, else the operator's).

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::ResourceExt;
use secrecy::SecretString;

use super::backends::ResolveError;
use super::context::Context;
use crate::api::{CaBundle, CredentialRef};
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
        let ns = credential_namespace(
            id,
            own,
            r.namespace.as_deref(),
            &ctx.settings.operator_namespace,
        )?;
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

/// Largest CA bundle read (a ConfigMap or Secret holds at most 1 MiB anyway).
pub const MAX_CA_BUNDLE_BYTES: usize = 1 << 20;
/// Most certificates taken from one CA bundle.
pub const MAX_CA_CERTIFICATES: usize = 1000;

/// The CA certificates of a provider object's `caBundle` and the resourceVersion of the object
/// they were read from (a change means the backend must be rebuilt).
pub async fn read_ca_bundle(
    ctx: &Context,
    id: &str,
    bundle: &CaBundle,
    own: Option<&str>,
) -> Result<(Vec<reqwest::Certificate>, Option<String>), ResolveError> {
    let (what, name, key, named) = match (&bundle.secret_ref, &bundle.config_map_ref) {
        (Some(r), None) => ("Secret", &r.name, &r.key, r.namespace.as_deref()),
        (None, Some(r)) => ("ConfigMap", &r.name, &r.key, r.namespace.as_deref()),
        _ => {
            return Err(ResolveError::InvalidProvider(format!(
                "{id}: spec.caBundle needs exactly one of secretRef and configMapRef"
            )))
        }
    };
    let ns = credential_namespace(id, own, named, &ctx.settings.operator_namespace)?;
    let missing = || {
        ResolveError::CredentialsNotFound(format!(
            "{id}: spec.caBundle: {what} {ns}/{name} does not exist"
        ))
    };
    let (pem, version) = if what == "Secret" {
        let s = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .get_opt(name)
            .await?
            .ok_or_else(missing)?;
        let v = s.resource_version();
        (s.data.and_then(|mut d| d.remove(key)).map(|b| b.0), v)
    } else {
        let c = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
            .get_opt(name)
            .await?
            .ok_or_else(missing)?;
        let v = c.resource_version();
        let text = c
            .data
            .and_then(|mut d| d.remove(key))
            .map(String::into_bytes);
        let binary = || c.binary_data.and_then(|mut d| d.remove(key)).map(|b| b.0);
        (text.or_else(binary), v)
    };
    let pem = pem.ok_or_else(|| {
        ResolveError::CredentialsNotFound(format!(
            "{id}: spec.caBundle: {what} {ns}/{name} has no key {key:?}"
        ))
    })?;
    let certs = parse_ca_bundle(&pem).map_err(|e| {
        ResolveError::InvalidProvider(format!(
            "{id}: spec.caBundle ({what} {ns}/{name} key {key:?}): {e}"
        ))
    })?;
    Ok((certs, version))
}

/// PEM certificates of a CA bundle, bounded in size and count.
pub fn parse_ca_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    if pem.len() > MAX_CA_BUNDLE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_CA_BUNDLE_BYTES} read",
            pem.len()
        ));
    }
    // Only CERTIFICATE blocks count: a private key pasted in by mistake is not echoed anywhere.
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|_| "not a PEM bundle of certificates".to_string())?;
    match certs.len() {
        0 => Err("holds no PEM certificate".into()),
        n if n > MAX_CA_CERTIFICATES => Err(format!(
            "{n} certificates, more than the {MAX_CA_CERTIFICATES} taken"
        )),
        _ => Ok(certs),
    }
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

    #[test]
    fn ca_bundles_are_bounded_and_must_hold_a_certificate() {
        let ca = rcgen::CertifiedIssuer::self_signed(
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let pem = ca.pem();
        assert_eq!(parse_ca_bundle(pem.as_bytes()).unwrap().len(), 1);
        let two = format!("{pem}\n# a comment between\n{pem}");
        assert_eq!(parse_ca_bundle(two.as_bytes()).unwrap().len(), 2);
        assert!(parse_ca_bundle(b"")
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(parse_ca_bundle(b"not pem at all").is_err());
        let key_only = ca.key().serialize_pem();
        let err = parse_ca_bundle(key_only.as_bytes()).unwrap_err();
        assert!(!err.contains("PRIVATE"), "{err}");
        let huge = pem.repeat(MAX_CA_BUNDLE_BYTES / pem.len() + 1);
        assert!(parse_ca_bundle(huge.as_bytes())
            .unwrap_err()
            .contains("more than"));
        let many = pem.repeat(MAX_CA_CERTIFICATES + 1);
        if many.len() <= MAX_CA_BUNDLE_BYTES {
            assert!(parse_ca_bundle(many.as_bytes())
                .unwrap_err()
                .contains("certificates"));
        }
    }
}
