//! The one builder of `Ready` conditions, for ApiKeys and provider objects alike.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::reasons::Reason;

/// What a reconcile concluded about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
}

/// Set the `Ready` condition in `conditions` for `generation`. The transition time is kept
/// while the status stays the same, so a reconcile that finds nothing new changes nothing.
/// Returns whether what a person sees changed (status, reason or message), not merely the
/// observed generation.
pub fn set_ready(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    readiness: &Readiness,
) -> bool {
    let status = if readiness.ready { "True" } else { "False" };
    let reason = readiness.reason.as_str();
    let prev = conditions.iter().find(|c| c.type_ == "Ready").cloned();
    if let Some(p) = &prev {
        if p.status == status
            && p.reason == reason
            && p.message == readiness.message
            && p.observed_generation == generation
        {
            return false;
        }
    }
    let changed = prev
        .as_ref()
        .is_none_or(|p| p.status != status || p.reason != reason || p.message != readiness.message);
    let transition = match &prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: readiness.message.clone(),
        observed_generation: generation,
        last_transition_time: transition,
    });
    changed
}

/// Set a condition other than `Ready` (`UsageHigh`, `ExpiringSoon`, …): status, reason and
/// message; the transition time is kept while the status stays the same. Returns whether
/// anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> bool {
    let status = if status { "True" } else { "False" };
    let prev = conditions.iter().find(|c| c.type_ == type_).cloned();
    if prev.as_ref().is_some_and(|p| {
        p.status == status
            && p.reason == reason
            && p.message == message
            && p.observed_generation == generation
    }) {
        return false;
    }
    let transition = match &prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    });
    true
}

/// Remove the condition `type_`; returns whether there was one.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// Whether `conditions` hold `Ready=True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ready: bool, reason: Reason, message: &str) -> Readiness {
        Readiness {
            ready,
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn same_conclusion_changes_nothing() {
        let mut c = Vec::new();
        assert!(set_ready(
            &mut c,
            Some(1),
            &r(true, Reason::KeyActive, "live")
        ));
        let before = c.clone();
        assert!(!set_ready(
            &mut c,
            Some(1),
            &r(true, Reason::KeyActive, "live")
        ));
        assert_eq!(c, before);
        assert!(is_ready(&c));
    }

    #[test]
    fn a_new_generation_is_recorded_without_counting_as_a_change() {
        let mut c = Vec::new();
        set_ready(&mut c, Some(1), &r(true, Reason::KeyActive, "live"));
        let t = c[0].last_transition_time.clone();
        assert!(!set_ready(
            &mut c,
            Some(2),
            &r(true, Reason::KeyActive, "live")
        ));
        assert_eq!(c[0].observed_generation, Some(2));
        assert_eq!(c[0].last_transition_time, t);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut c = Vec::new();
        set_ready(&mut c, Some(1), &r(false, Reason::RateLimited, "slow"));
        let t = c[0].last_transition_time.clone();
        assert!(set_ready(
            &mut c,
            Some(1),
            &r(false, Reason::ProviderUnavailable, "down")
        ));
        assert_eq!(c[0].last_transition_time, t);
        assert_eq!(c[0].reason, "ProviderUnavailable");
        assert!(set_ready(
            &mut c,
            Some(1),
            &r(true, Reason::KeyActive, "live")
        ));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, "True");
    }
}
