//! What the ApiKey asks of Bifrost: validation of the settings and the drift check of the
//! provider block.

use super::*;

/// A Bifrost duration: a positive count and one of `s m h d w M Y`.
pub fn valid_window(w: &str) -> bool {
    let Some(unit) = w.chars().last() else {
        return false;
    };
    let num = &w[..w.len() - unit.len_utf8()];
    matches!(unit, 's' | 'm' | 'h' | 'd' | 'w' | 'M' | 'Y')
        && !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit())
        && num.parse::<u64>().is_ok_and(|n| n > 0)
}

/// Problems with the settings that no call can fix.
pub fn validate_settings(s: &KeySettings) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.bifrost.clone().unwrap_or_default();
    let upstream = b.provider.clone().unwrap_or_default();
    let provider_family = s.pushed || !upstream.is_empty();
    if let Some(w) = b.weight {
        if !w.is_finite() || w < 0.0 {
            out.push(format!(
                "spec.bifrost.weight {w} must be a non-negative number"
            ));
        }
    }
    if provider_family {
        if !s.pushed {
            out.push(
                "spec.bifrost.provider makes this a Bifrost provider key, whose value you own: set spec.source.secretRef to the Secret holding it (or remove spec.bifrost.provider to mint a virtual key)".into(),
            );
        }
        if upstream.trim().is_empty() {
            out.push(
                "spec.bifrost.provider is required for a provider key pushed from spec.source: name the upstream provider (e.g. openai, anthropic, azure)".into(),
            );
        }
        if s.limit.is_some() {
            out.push(
                "spec.limit: Bifrost provider keys have no budget; put the limit on a virtual key (an ApiKey without spec.source)".into(),
            );
        }
        if !b.provider_configs.is_empty() {
            out.push(
                "spec.bifrost.providerConfigs applies to virtual keys only; a provider key is restricted with spec.models".into(),
            );
        }
        if b.rate_limit.is_some() {
            out.push("spec.bifrost.rateLimit applies to virtual keys only".into());
        }
        if s.expires_at.is_some() {
            out.push(
                "spec.expiresAt/spec.ttl: Bifrost provider keys have no expiry (virtual keys do)"
                    .into(),
            );
        }
        return out;
    }
    // Virtual keys.
    for (field, set) in [
        ("weight", b.weight.is_some()),
        ("azureKeyConfig", b.azure_key_config.is_some()),
        ("vertexKeyConfig", b.vertex_key_config.is_some()),
        ("bedrockKeyConfig", b.bedrock_key_config.is_some()),
    ] {
        if set {
            out.push(format!(
                "spec.bifrost.{field} applies to provider keys (pushed with spec.source and spec.bifrost.provider), not to virtual keys"
            ));
        }
    }
    if !b.provider_configs.is_empty() && !s.models.is_empty() {
        out.push(
            "set either spec.models (provider/model) or spec.bifrost.providerConfigs[].allowedModels, not both".into(),
        );
    }
    for m in &s.models {
        match m.split_once('/') {
            Some((p, model)) if !p.is_empty() && !model.is_empty() => {}
            _ => out.push(format!(
                "spec.models entry {m:?}: Bifrost virtual keys need provider/model (e.g. openai/gpt-4o, or openai/* for all of a provider)"
            )),
        }
    }
    let mut seen = BTreeSet::new();
    for (i, c) in b.provider_configs.iter().enumerate() {
        if c.provider.trim().is_empty() {
            out.push(format!(
                "spec.bifrost.providerConfigs[{i}].provider must not be empty"
            ));
        } else if !seen.insert(c.provider.clone()) {
            out.push(format!(
                "spec.bifrost.providerConfigs: provider {:?} is listed twice",
                c.provider
            ));
        }
        if let Some(w) = c.weight {
            if !w.is_finite() || w < 0.0 {
                out.push(format!(
                    "spec.bifrost.providerConfigs[{i}].weight {w} must be a non-negative number"
                ));
            }
        }
    }
    if let Some(rl) = &b.rate_limit {
        let pairs = [
            ("token", rl.token_max_limit, &rl.token_reset_duration),
            ("request", rl.request_max_limit, &rl.request_reset_duration),
        ];
        let mut any = false;
        for (what, max, window) in pairs {
            match (max, window) {
                (None, None) => {}
                (Some(m), Some(w)) => {
                    any = true;
                    if m < 0 {
                        out.push(format!(
                            "spec.bifrost.rateLimit.{what}MaxLimit must not be negative"
                        ));
                    }
                    if !valid_window(w) {
                        out.push(format!(
                            "spec.bifrost.rateLimit.{what}ResetDuration {w:?} is not a Bifrost duration (30s, 5m, 1h, 1d, 1w, 1M, 1Y)"
                        ));
                    }
                }
                (Some(_), None) => out.push(format!(
                    "spec.bifrost.rateLimit.{what}MaxLimit needs {what}ResetDuration"
                )),
                (None, Some(_)) => out.push(format!(
                    "spec.bifrost.rateLimit.{what}ResetDuration needs {what}MaxLimit"
                )),
            }
        }
        if !any && out.is_empty() {
            out.push(
                "spec.bifrost.rateLimit sets no limit: give tokenMaxLimit/tokenResetDuration or requestMaxLimit/requestResetDuration".into(),
            );
        }
    }
    if let Some(l) = &s.limit {
        if l.amount.parse::<f64>().is_err() {
            out.push(format!("spec.limit.amount {:?} is not a number", l.amount));
        }
    }
    out
}

/// Whether the provider block differs between the key and the spec (fields the spec leaves
/// unset are not managed and never differ).
pub fn extras_differ(current: &ProviderKey, d: &KeySettings) -> bool {
    let b = d.bifrost.clone().unwrap_or_default();
    let ex = &current.extras;
    if ex.get("family").map(String::as_str) == Some(FAMILY_PROVIDER) {
        // A provider key's `description` is the gateway's (error/status text): not compared.
        if let Some(w) = b.weight {
            let cur = ex
                .get("weight")
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(1.0);
            if (cur - w).abs() > 1e-9 {
                return true;
            }
        }
        return false;
    }
    if let Some(desc) = &b.description {
        if ex.get("description").map(String::as_str).unwrap_or("") != desc.trim() {
            return true;
        }
    }
    if let Some(want) = desired_provider_configs(d) {
        let have: Vec<ProviderConfigView> = ex
            .get("providerConfigs")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        if !configs_match(&have, &want) {
            return true;
        }
    }
    if let Some(rl) = &b.rate_limit {
        let have: Option<BifrostRateLimit> = ex
            .get("rateLimit")
            .and_then(|s| serde_json::from_str(s).ok());
        if have.as_ref() != Some(rl) {
            return true;
        }
    }
    false
}

/// Compare observed provider configs with desired ones; a field the gateway does not report is
/// not compared.
pub(super) fn configs_match(have: &[ProviderConfigView], want: &[ProviderConfigView]) -> bool {
    if have.len() != want.len() {
        return false;
    }
    let sorted = |v: &Option<Vec<String>>| {
        v.as_ref().map(|v| {
            let mut v = v.clone();
            v.sort();
            v
        })
    };
    want.iter().all(|w| {
        let Some(h) = have.iter().find(|h| h.provider == w.provider) else {
            return false;
        };
        let weight_ok = match (h.weight, w.weight) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            _ => true,
        };
        let models_ok =
            h.allowed_models.is_none() || sorted(&h.allowed_models) == sorted(&w.allowed_models);
        let keys_ok = h.key_ids.is_none() || sorted(&h.key_ids) == sorted(&w.key_ids);
        weight_ok && models_ok && keys_ok
    })
}
