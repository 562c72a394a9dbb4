//! Reading an ApiKey's Ready condition: the controller tests, the e2e tests and both
//! benchmarks.

use keysmith::api::ApiKey;

/// (status, reason, message) of the Ready condition; empty strings without one.
pub fn ready(ak: &ApiKey) -> (String, String, String) {
    ak.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Ready=True for the ApiKey's current generation.
pub fn is_ready(ak: &ApiKey) -> bool {
    ready(ak).0 == "True"
        && ak.status.as_ref().and_then(|s| s.observed_generation) == ak.metadata.generation
}
