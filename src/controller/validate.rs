//! Checking an ApiKey against what its provider can do, before any provider call.

use crate::api::{ApiKey, ProviderType};
use crate::providers::{AdoptMode, Capabilities, Field};

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

    let blocks = [
        (ProviderType::OpenRouter, s.openrouter.is_some()),
        (ProviderType::Boltz, s.boltz.is_some()),
        (ProviderType::UCloud, s.ucloud.is_some()),
        (ProviderType::DigitalOcean, s.digitalocean.is_some()),
        (ProviderType::Bifrost, s.bifrost.is_some()),
    ];
    for (p, set) in blocks {
        if set && p != provider {
            out.push(format!("spec.{p} (this ApiKey's provider is {provider})"));
        } else if set && !caps.supports(Field::Extras) {
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
        has_get: true,
        page_size: 100,
    };

    #[test]
    fn reports_each_unsupported_field_by_path() {
        let ak = ApiKey::new(
            "k",
            ApiKeySpec {
                limit: Some(SpendLimit {
                    amount: "5".into(),
                    reset: Some(LimitReset::Daily),
                }),
                allowed_ips: vec!["10.0.0.0/8".into()],
                boltz: Some(Default::default()),
                key_ref: Some(KeyRef { id: "x".into() }),
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
    fn a_plain_key_is_fine() {
        let ak = ApiKey::new("k", ApiKeySpec::default());
        assert!(unsupported_fields(&ak, ProviderType::OpenRouter, &CAPS).is_empty());
        let never = ApiKey::new(
            "k",
            ApiKeySpec {
                limit: Some(SpendLimit {
                    amount: "5".into(),
                    reset: Some(LimitReset::Never),
                }),
                ..Default::default()
            },
        );
        assert!(unsupported_fields(&never, ProviderType::OpenRouter, &CAPS).is_empty());
    }
}
