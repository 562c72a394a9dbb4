//! `keysmith render`: what an ApiKey would cause, without a cluster: the validation result, the
//! provider calls, and the Secret (value redacted).

use std::path::PathBuf;

use anyhow::Context as _;
use kube::ResourceExt;
use secrecy::SecretString;

use crate::api::{
    ApiKey, ApiKeyStatus, ClusterKeyProvider, KeyProvider, KeyProviderSpec, ProviderType,
};
use crate::controller::apikey::attempt;
use crate::controller::apikey::ValidatedApiKey;
use crate::controller::{secret, validate};
use crate::providers::{self, ClientOptions, Credentials, KeySettings};

/// Flags of `keysmith render`.
#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    /// The ApiKey manifest (YAML).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The KeyProvider or ClusterKeyProvider manifest it refers to (YAML). Without it, give
    /// --provider-type.
    #[arg(long)]
    pub provider: Option<PathBuf>,
    /// The provider type when no provider manifest is given.
    #[arg(long, value_parser = |s: &str| s.parse::<ProviderType>())]
    pub provider_type: Option<ProviderType>,
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a valid manifest", path.display()))
}

fn provider_spec(args: &RenderArgs) -> anyhow::Result<KeyProviderSpec> {
    if let Some(p) = &args.provider {
        let v: serde_json::Value = read_yaml(p)?;
        return match v.get("kind").and_then(|k| k.as_str()) {
            Some("KeyProvider") => Ok(serde_json::from_value::<KeyProvider>(v)?.spec),
            Some("ClusterKeyProvider") => {
                Ok(serde_json::from_value::<ClusterKeyProvider>(v)?.spec.inner)
            }
            other => anyhow::bail!(
                "{} is a {other:?}, not a KeyProvider or ClusterKeyProvider",
                p.display()
            ),
        };
    }
    let t = args
        .provider_type
        .context("give --provider FILE or --provider-type TYPE")?;
    let yaml = format!(
        "{}: {}",
        t,
        match t {
            ProviderType::OpenRouter => "{managementKeySecretRef: {name: x, key: x}}",
            ProviderType::Boltz => "{apiKeySecretRef: {name: x, key: x}}",
            ProviderType::UCloud => "{publicKey: x, privateKeySecretRef: {name: x, key: x}}",
            ProviderType::DigitalOcean => "{tokenSecretRef: {name: x, key: x}}",
            ProviderType::Bifrost => "{baseURL: 'http://bifrost:8080'}",
        }
    );
    Ok(serde_yaml::from_str(&yaml)?)
}

/// Render to a string (the CLI prints it).
pub fn render(args: &RenderArgs) -> anyhow::Result<String> {
    let mut ak: ApiKey = read_yaml(&args.file)?;
    if ak.namespace().is_none() {
        ak.metadata.namespace = Some("default".into());
    }
    ak.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    let spec = provider_spec(args)?;
    let provider = spec
        .provider_type()
        .context("the provider manifest must set exactly one provider block")?;
    // Placeholder credentials: nothing is sent anywhere.
    let mut creds = Credentials::default();
    let config = spec
        .provider()
        .context("the provider manifest must set exactly one provider block")?;
    for r in config.credential_refs() {
        creds
            .0
            .insert(r.role.to_string(), SecretString::from("render-placeholder"));
    }
    let backend = providers::build_backend(&spec, creds, ClientOptions::default())
        .map_err(anyhow::Error::msg)?;
    let caps = backend.capabilities();
    let mut out = String::new();
    let name = format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any());
    out.push_str(&format!("# ApiKey {name} at {provider}\n"));

    // The controller's own validation, on an ApiKey without status (a key not created yet).
    let validated = validate::validate_for(&ak, &ApiKeyStatus::default(), provider, &*backend);
    let ValidatedApiKey { settings, scope } = match validated {
        Ok(v) => v,
        Err(f) => {
            out.push_str(&format!(
                "# Ready=False reason={}: {}\n",
                f.reason.as_str(),
                f.message
            ));
            out.push_str("# no provider call would be made\n");
            return Ok(out);
        }
    };
    let scope_txt = if scope.family.is_empty() && scope.parent.is_empty() {
        String::new()
    } else {
        format!(
            " (scope {}{}{})",
            scope.family,
            if scope.parent.is_empty() { "" } else { "/" },
            scope.parent
        )
    };
    out.push_str("# provider calls:\n");
    if let Some(src) = &ak.spec.source {
        out.push_str(&format!(
            "#  1. push the value of Secret {} to {provider}{scope_txt}\n",
            src.secret_ref.name
        ));
    } else if let Some(id) = &settings.key_ref {
        let how = match caps.adopt {
            providers::AdoptMode::ReadBack => "read its value back",
            providers::AdoptMode::Regenerate => {
                "regenerate it to obtain a value (the old value stops working)"
            }
            providers::AdoptMode::No => "(not possible)",
        };
        out.push_str(&format!("#  1. look up key {id} and {how}{scope_txt}\n"));
    } else if attempt::creates_under_provisional_name(&*backend) {
        // As the controller does: a provisional name that proves the key the attempt's own to
        // crash recovery, the display name once the status records the key.
        out.push_str(&format!(
            "#  1. record status.pendingCreate, then create key \"{}<attempt id>\"{scope_txt}",
            attempt::PROVISIONAL_PREFIX
        ));
        details(&settings, &mut out);
        out.push_str(&format!(
            "#  2. once status.keyID records the key, name it {:?}\n",
            settings.name
        ));
    } else {
        out.push_str(&format!(
            "#  1. record status.pendingCreate, then create key {:?}{scope_txt}",
            settings.name
        ));
        details(&settings, &mut out);
    }
    out.push_str(&format!(
        "#  then every {}: one paged listing of the {provider} keys{scope_txt}, shared by every ApiKey of this provider\n",
        spec.refresh_interval.as_deref().unwrap_or("5m")
    ));
    let delete = match ak.spec.deletion_policy {
        crate::api::DeletionPolicy::Delete => "revoke the key",
        crate::api::DeletionPolicy::Orphan => "leave the key (deletionPolicy: Orphan)",
    };
    out.push_str(&format!("#  on deletion: {delete}\n"));
    if ak.spec.rotation.is_some() || !ak.spec.rollout_restart_targets.is_empty() {
        out.push_str(&rotation_plan(
            &ak,
            provider,
            &caps.rotation,
            &scope.family,
            settings.key_ref.is_some(),
        ));
    }
    if ak.spec.source.is_some() {
        return Ok(out);
    }
    let redacted = SecretString::from("<redacted>");
    let s = secret::render_secret(&ak, &redacted, "<key id>", "<key hint>")
        .map_err(anyhow::Error::msg)?;
    let mut v = serde_json::to_value(&s)?;
    // Show data as readable strings (values are placeholders) instead of base64.
    if let Some(data) = v.get_mut("data").and_then(|d| d.as_object_mut()) {
        let plain: serde_json::Map<String, serde_json::Value> = s
            .data
            .iter()
            .flatten()
            .map(|(k, b)| {
                (
                    k.clone(),
                    serde_json::Value::String(String::from_utf8_lossy(&b.0).into_owned()),
                )
            })
            .collect();
        *data = plain;
    }
    if let Some(obj) = v.as_object_mut() {
        if let Some(data) = obj.remove("data") {
            obj.insert("stringData".into(), data);
        }
    }
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&v)?);
    Ok(out)
}

/// What a create sends besides the name, as `keysmith render` shows it (` with …`, a line end).
fn details(settings: &KeySettings, out: &mut String) {
    let mut details = Vec::new();
    if settings.disabled {
        details.push("disabled".to_string());
    }
    if let Some(l) = &settings.limit {
        details.push(format!(
            "limit {}{}",
            l.amount,
            l.reset
                .map(|r| format!("/{}", r.as_str()))
                .unwrap_or_default()
        ));
    }
    if let Some(e) = &settings.expires_at {
        details.push(format!(
            "expires {}",
            e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if !settings.allowed_ips.is_empty() {
        details.push(format!("allowed IPs {}", settings.allowed_ips.join(",")));
    }
    if !settings.models.is_empty() {
        details.push(format!("models {}", settings.models.join(",")));
    }
    if !details.is_empty() {
        out.push_str(&format!(" with {}", details.join(", ")));
    }
    out.push('\n');
}

/// The rotation lines of `keysmith render`: strategy, schedule, grace period, restart targets.
fn rotation_plan(
    ak: &ApiKey,
    provider: ProviderType,
    how: &providers::RotationStrategy,
    family: &str,
    adopted: bool,
) -> String {
    use crate::controller::rotation::{self, KeyKind, Plan, Strategy};
    let mut out = String::from("# rotation:\n");
    let plan = match Plan::of(&ak.spec) {
        Ok(p) => p,
        Err(m) => {
            out.push_str(&format!("#  Ready=False reason=InvalidSpec: {m}\n"));
            return out;
        }
    };
    let kind = KeyKind {
        adopted,
        pushed: ak.spec.source.is_some(),
    };
    match rotation::strategy(provider, how, &kind, &plan) {
        Err(m) => out.push_str(&format!("#  Ready=False reason=UnsupportedField: {m}\n")),
        Ok(s) => {
            out.push_str(&format!("#  strategy: {}\n", s.as_str()));
            if provider == ProviderType::Bifrost && family == "virtual" {
                // What the controller does (rotate.rs passes NativeRotate::Unavailable): the
                // gateway's rotate route is never called, so render must not claim it.
                out.push_str(&format!(
                    "#  (a new virtual key; the gateway's own rotate route is not used: keysmith cannot read its vk_rotation_cooldown, so it could not promise the grace period of {})\n",
                    rotation::human(plan.grace)
                ));
            }
            let when = match (plan.every, plan.renew_before) {
                _ if kind.pushed => "when the source Secret changes".to_string(),
                (Some(e), Some(r)) => format!(
                    "every {} after creation, or {} before expiry, whichever comes first",
                    rotation::human(e),
                    rotation::human(r)
                ),
                (Some(e), None) => format!("every {} after creation", rotation::human(e)),
                (None, Some(r)) => format!("{} before the key expires", rotation::human(r)),
                (None, None) => "no schedule".to_string(),
            };
            out.push_str(&format!(
                "#  next: {when}; status.nextRotationAt shows the moment\n"
            ));
            if !kind.pushed {
                out.push_str(&format!(
                    "#  on demand: kubectl annotate apikey {} {}=$(date +%s) --overwrite\n",
                    ak.name_any(),
                    crate::api::ROTATE_ANNOTATION
                ));
            }
            if s.keeps_previous_key() {
                let start = if ak.spec.rollout_restart_targets.is_empty() {
                    "once the Secret holds the new value".to_string()
                } else {
                    format!(
                        "once the restarted workloads have rolled out (at most {} after the restart)",
                        rotation::human(rotation::ROLLOUT_BOUND)
                    )
                };
                out.push_str(&format!(
                    "#  grace: the old key stays live for {} {start}, then it is revoked\n",
                    rotation::human(plan.grace)
                ));
            } else if s == Strategy::Regenerate {
                out.push_str("#  grace: none, the old value stops at once (allowDowntime)\n");
            }
        }
    }
    if !ak.spec.rollout_restart_targets.is_empty() {
        let targets: Vec<String> = ak
            .spec
            .rollout_restart_targets
            .iter()
            .map(|t| format!("{}/{}", t.kind, t.name))
            .collect();
        out.push_str(&format!(
            "#  restart after each new value: {} (pod template annotation {})\n",
            targets.join(", "),
            crate::api::RESTARTED_AT_ANNOTATION
        ));
    }
    out
}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    print!("{}", render(&args)?);
    Ok(())
}
