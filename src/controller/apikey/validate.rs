//! Checking an ApiKey against what its provider can do, before any provider call. Pure: the
//! result is a [`ValidatedApiKey`] or the [`Failure`] to report.

use chrono::Utc;
use kube::ResourceExt;

use super::super::backends::ResolvedProvider;
use super::super::reasons::Reason;
use super::super::secret;
use crate::api::{ApiKey, ApiKeyStatus, ProviderType};
use crate::controller::error::Failure;
use crate::providers::{AdoptMode, Capabilities, Field, KeyBackend, KeyScope, KeySettings};

/// An ApiKey its provider can honour: the key's desired settings and where a new key goes.
#[derive(Debug)]
pub struct ValidatedApiKey {
    pub settings: KeySettings,
    /// Where a new key is created (the current key may live elsewhere: see `status.keyScope`).
    pub scope: KeyScope,
}

/// Check `ak` against the provider's capabilities, its template and the provider's own rules.
pub fn validate(
    ak: &ApiKey,
    st: &ApiKeyStatus,
    p: &ResolvedProvider,
) -> Result<ValidatedApiKey, Failure> {
    validate_for(ak, st, p.provider_type, p.backend.as_ref())
}

/// [`validate`] against a provider's client alone: `keysmith render` has no cluster to resolve
/// the provider object in, and says what the controller would (one validation, not two).
pub fn validate_for(
    ak: &ApiKey,
    st: &ApiKeyStatus,
    provider_type: ProviderType,
    backend: &dyn KeyBackend,
) -> Result<ValidatedApiKey, Failure> {
    let caps = backend.capabilities();
    let bad = unsupported_fields(ak, provider_type, caps);
    if !bad.is_empty() {
        return Err(Failure::permanent(
            Reason::UnsupportedField,
            format!(
                "{} cannot honour {}; remove or change them",
                provider_type,
                bad.join(", ")
            ),
        ));
    }
    secret::check_template(ak).map_err(|m| Failure::permanent(Reason::InvalidSpec, m))?;
    let settings = settings_for(ak, st)?;
    if settings
        .name
        .starts_with(super::attempt::PROVISIONAL_PREFIX)
    {
        // Also refused by the CRD; an object stored before that rule is caught here.
        return Err(Failure::permanent(
            Reason::InvalidSpec,
            format!(
                "spec.displayName: may not start with {} (keysmith's provisional key names)",
                super::attempt::PROVISIONAL_PREFIX
            ),
        ));
    }
    let problems = backend.validate(&settings);
    if !problems.is_empty() {
        return Err(Failure::permanent(Reason::InvalidSpec, problems.join("; ")));
    }
    let scope = backend.scope(&settings);
    Ok(ValidatedApiKey { settings, scope })
}

/// The desired settings of the key (a ttl counts from the key's creation, else from now).
pub fn settings_for(ak: &ApiKey, st: &ApiKeyStatus) -> Result<KeySettings, Failure> {
    let anchor = st
        .created_at
        .as_deref()
        .and_then(super::super::time::parse)
        .unwrap_or_else(Utc::now);
    let mut s = KeySettings::from_spec(&ak.spec, ak.display_name(), anchor)
        .map_err(|m| Failure::permanent(Reason::InvalidSpec, m))?;
    s.uid = ak.uid().unwrap_or_default();
    Ok(s)
}

/// Spec fields the provider cannot honour, as paths a person can find in the manifest.
pub fn unsupported_fields(ak: &ApiKey, provider: ProviderType, caps: &Capabilities) -> Vec<String> {
    let s = &ak.spec;
    let mut out = Vec::new();
    let mut check = |set: bool, f: Field| {
        if set && !caps.supports(f) {
            out.push(f.path().to_string());
        }
    };
    check(s.display_name.is_some(), Field::DisplayName);
    check(s.disabled, Field::Disabled);
    check(s.expires_at.is_some(), Field::ExpiresAt);
    check(s.ttl.is_some(), Field::Ttl);
    check(s.limit.is_some(), Field::LimitAmount);
    check(
        s.limit
            .as_ref()
            .and_then(|l| l.reset)
            .is_some_and(|r| r != crate::api::LimitReset::Never),
        Field::LimitReset,
    );
    check(!s.allowed_ips.is_empty(), Field::AllowedIps);
    check(!s.models.is_empty(), Field::Models);

    for block in s.provider_blocks() {
        let p = block.provider_type();
        if p != provider {
            out.push(format!("spec.{p} (this ApiKey's provider is {provider})"));
        } else if !caps.supports(Field::Extras) {
            out.push(format!("spec.{p}"));
        }
    }
    if s.key_ref.is_some() && caps.adopt == AdoptMode::No {
        out.push(format!(
            "spec.keyRef ({provider} cannot give a value for an existing key)"
        ));
    }
    if s.source.is_some() && !caps.push {
        out.push(format!(
            "spec.source ({provider} keys do not take a user-supplied value)"
        ));
    }
    if s.key_ref.is_none() && s.source.is_none() && !caps.mint {
        out.push(format!(
            "spec.keyRef is required ({provider} keys cannot be created over its API)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiKeySpec, KeyRef, LimitReset, SpendLimit};

    const CAPS: Capabilities = Capabilities {
        mint: true,
        adopt: AdoptMode::No,
        push: false,
        supported: &[Field::DisplayName, Field::LimitAmount],
        mutable: &[],
        secret_readable: false,
        rotation: crate::providers::RotationStrategy::MINT,
    };

    #[test]
    fn reports_each_unsupported_field_by_path() {
        let ak = ApiKey::new(
            "k",
            ApiKeySpec {
                limit: Some(Box::new(SpendLimit {
                    amount: "5".into(),
                    reset: Some(LimitReset::Daily),
                })),
                allowed_ips: vec!["10.0.0.0/8".into()],
                boltz: Some(Default::default()),
                key_ref: Some(Box::new(KeyRef { id: "x".into() })),
                ..Default::default()
            },
        );
        let got = unsupported_fields(&ak, ProviderType::OpenRouter, &CAPS);
        assert_eq!(
            got,
            vec![
                "spec.limit.reset".to_string(),
                "spec.allowedIPs".to_string(),
                "spec.boltz (this ApiKey's provider is openrouter)".to_string(),
                "spec.keyRef (openrouter cannot give a value for an existing key)".to_string(),
            ]
        );
    }

    #[test]
    fn malformed_values_are_invalid_spec() {
        let ak = ApiKey::new(
            "k",
            ApiKeySpec {
                ttl: Some("soon".into()),
                ..Default::default()
            },
        );
        let f = settings_for(&ak, &ApiKeyStatus::default()).unwrap_err();
        assert_eq!(f.reason, Reason::InvalidSpec);
        assert!(!f.transient);
        let ok = ApiKey::new(
            "k",
            ApiKeySpec {
                ttl: Some("1h".into()),
                ..Default::default()
            },
        );
        let st = ApiKeyStatus {
            created_at: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let s = settings_for(&ok, &st).unwrap();
        assert_eq!(
            s.expires_at.map(|t| t.to_rfc3339()),
            Some("2026-01-01T01:00:00+00:00".to_string())
        );
    }

    #[test]
    fn a_plain_key_is_fine() {
        let ak = ApiKey::new("k", ApiKeySpec::default());
        assert!(unsupported_fields(&ak, ProviderType::OpenRouter, &CAPS).is_empty());
        let never = ApiKey::new(
            "k",
            ApiKeySpec {
                limit: Some(Box::new(SpendLimit {
                    amount: "5".into(),
                    reset: Some(LimitReset::Never),
                })),
                ..Default::default()
            },
        );
        assert!(unsupported_fields(&never, ProviderType::OpenRouter, &CAPS).is_empty());
    }
}
