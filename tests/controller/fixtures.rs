//! One row per provider (and key family) for the tests that run the same scenario against every
//! provider: its name, its test environment, an ApiKey spec for it, and how to count its live
//! keys. A sixth provider adds a variant and its arms here, not another copy of the scenarios.

use keysmith::api::{ApiKeySpec, DigitalOceanKeySpec, RotationSpec};

use crate::harness::Env;
use crate::{bifrost, boltz, digitalocean, openrouter, ucloud};

/// A provider (and key family) of the per-provider tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum P {
    OpenRouter,
    Boltz,
    UCloud,
    DigitalOceanAgent,
    BifrostVirtual,
}

pub(crate) const ALL: [P; 5] = [
    P::OpenRouter,
    P::Boltz,
    P::UCloud,
    P::DigitalOceanAgent,
    P::BifrostVirtual,
];

impl P {
    pub(crate) fn provider(self) -> &'static str {
        match self {
            P::OpenRouter => "openrouter",
            P::Boltz => "boltz",
            P::UCloud => "ucloud",
            P::DigitalOceanAgent => "digitalocean",
            P::BifrostVirtual => "bifrost",
        }
    }

    pub(crate) async fn env(self) -> Env {
        match self {
            P::OpenRouter => openrouter::env().await,
            P::Boltz => boltz::env().await,
            P::UCloud => ucloud::env().await,
            P::DigitalOceanAgent => digitalocean::env().await,
            P::BifrostVirtual => bifrost::env_with(vec![]).await,
        }
    }

    pub(crate) fn spec(self, rotation: RotationSpec) -> ApiKeySpec {
        let mut spec = ApiKeySpec {
            rotation: Some(Box::new(rotation)),
            ..Default::default()
        };
        if self == P::DigitalOceanAgent {
            spec.digitalocean = Some(Box::new(DigitalOceanKeySpec {
                agent_uuid: Some(digitalocean::AGENT.into()),
            }));
        }
        spec
    }

    /// Live keys at the provider (each emulator spells "active" its own way).
    pub(crate) async fn live(self, env: &Env) -> usize {
        let keys = match self {
            P::BifrostVirtual => bifrost::virtual_keys(env).await,
            _ => env.emulator_keys().await,
        };
        keys.iter()
            .filter(|k| (k["active"] == true || k["is_active"] == true) && k["key_type"] != "admin")
            .count()
    }
}
