//! Alerts before money or time runs out (pure; the driver publishes what they announce):
//!
//! - `UsageHigh`: the spend of the limit's period (`spec.limit.reset`: the day, ISO week or
//!   month in UTC, as the providers reset; the key's lifetime for `never`) reached one of
//!   `spec.alerts.usageThresholds`. Each threshold is announced (Event) once per period.
//! - `ExpiringSoon`: the key expires within `spec.rotation.renewBefore` (7 days when nothing
//!   renews it) and no rotation is planned before then. Announced once per expiry.
//!
//! What was announced is recorded in `status.alerts`, written before the Event is published
//! ([`super::apply`]): a reconcile, a failed status write or an operator restart never repeats
//! an Event (a crash between the write and the Event loses the Event; the condition stays).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::super::conditions::{remove_condition, set_condition};
use super::super::period::Period;
use super::super::rotation::Plan;
use super::super::time;
fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(time::parse)
}

use crate::api::{AlertsStatus, ApiKeySpec, ApiKeyStatus, LimitReset, MAX_USAGE_THRESHOLDS};

/// Condition type: spend reached a usage threshold.
pub const USAGE_HIGH: &str = "UsageHigh";
/// Condition type: the key expires soon and nothing renews it in time.
pub const EXPIRING_SOON: &str = "ExpiringSoon";
/// The window of `ExpiringSoon` when `spec.rotation.renewBefore` is not set.
pub const DEFAULT_EXPIRY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// An alert to publish as an Event once the status recording it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Announce {
    /// The highest threshold newly reached, and the spend ratio.
    UsageHigh {
        threshold: f64,
        ratio: f64,
    },
    ExpiringSoon {
        message: String,
    },
}

/// A decimal amount as the status and spec write them; `None` for anything else (never a
/// panic, never NaN or infinite).
fn amount(s: Option<&str>) -> Option<f64> {
    s?.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The spend ratio of the limit's period, where the provider reports that period's spend.
pub fn spend_ratio(spec: &ApiKeySpec, st: &ApiKeyStatus) -> Option<(LimitReset, f64)> {
    let limit = spec.limit.as_ref()?;
    let reset = limit.reset.unwrap_or(LimitReset::Never);
    let cap = amount(Some(&limit.amount)).filter(|c| *c > 0.0)?;
    let u = st.usage.as_ref()?;
    let spent = match reset {
        LimitReset::Daily => u.daily.as_deref(),
        LimitReset::Weekly => u.weekly.as_deref(),
        LimitReset::Monthly => u.monthly.as_deref(),
        LimitReset::Never => u.total.as_deref(),
    };
    Some((reset, amount(spent)? / cap))
}

/// The valid thresholds of `spec.alerts`, ascending, at most [`MAX_USAGE_THRESHOLDS`]
/// (the CRD says the same; this also covers objects admitted before it did).
fn thresholds(spec: &ApiKeySpec) -> Vec<f64> {
    let mut t: Vec<f64> = spec
        .alerts
        .as_ref()
        .map(|a| a.usage_thresholds.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|x| x.is_finite() && *x > 0.0 && *x <= 1.0)
        .take(MAX_USAGE_THRESHOLDS)
        .collect();
    t.sort_by(f64::total_cmp);
    t.dedup();
    t
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// Update the `UsageHigh` condition and `status.alerts`; returns what to announce.
fn usage(
    spec: &ApiKeySpec,
    st: &mut ApiKeyStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Option<Announce> {
    let thresholds = thresholds(spec);
    if thresholds.is_empty() {
        remove_condition(&mut st.conditions, USAGE_HIGH);
        if let Some(a) = st.alerts.as_mut() {
            a.usage_period = None;
            a.usage_thresholds_crossed.clear();
        }
        return None;
    }
    let Some((reset, ratio)) = spend_ratio(spec, st) else {
        set_condition(
            &mut st.conditions,
            USAGE_HIGH,
            false,
            "UsageNotReported",
            "the provider reports no spend for the limit's period (or the key has no limit)".into(),
            generation,
        );
        return None;
    };
    // The limit period `now` falls in.
    let period = Period::of_reset(Some(reset)).map_or_else(|| "never".into(), |p| p.label(now));
    let alerts = st.alerts.get_or_insert_with(Default::default);
    if alerts.usage_period.as_deref() != Some(period.as_str()) {
        alerts.usage_period = Some(period.clone());
        alerts.usage_thresholds_crossed.clear();
    }
    let reached: Vec<f64> = thresholds.iter().copied().filter(|t| ratio >= *t).collect();
    let fresh = reached
        .iter()
        .copied()
        .filter(|t| !alerts.usage_thresholds_crossed.contains(t))
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    for t in &reached {
        if !alerts.usage_thresholds_crossed.contains(t) {
            alerts.usage_thresholds_crossed.push(*t);
        }
    }
    alerts.usage_thresholds_crossed.sort_by(f64::total_cmp);
    let period_name = reset.as_str();
    match reached.last() {
        Some(top) => set_condition(
            &mut st.conditions,
            USAGE_HIGH,
            true,
            "ThresholdReached",
            format!(
                "the spend of this {period_name} period reached {} of the limit",
                pct(*top)
            ),
            generation,
        ),
        None => set_condition(
            &mut st.conditions,
            USAGE_HIGH,
            false,
            "BelowThresholds",
            format!(
                "the spend of this {period_name} period is below {} of the limit",
                pct(thresholds[0])
            ),
            generation,
        ),
    };
    fresh.map(|threshold| Announce::UsageHigh { threshold, ratio })
}

/// Update the `ExpiringSoon` condition and `status.alerts`; returns what to announce.
fn expiry(
    spec: &ApiKeySpec,
    st: &mut ApiKeyStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Option<Announce> {
    let Some(expires) = parse_time(st.expires_at.as_deref()) else {
        remove_condition(&mut st.conditions, EXPIRING_SOON);
        if let Some(a) = st.alerts.as_mut() {
            a.expiring_soon_announced = None;
        }
        return None;
    };
    let window = Plan::of(spec)
        .ok()
        .and_then(|p| p.renew_before)
        .unwrap_or(DEFAULT_EXPIRY_WINDOW);
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let within = expires.signed_duration_since(now) <= window;
    // A rotation planned before the expiry (and not overdue) replaces the key in time.
    let planned = parse_time(st.next_rotation_at.as_deref())
        .is_some_and(|next| next >= now && next < expires);
    let expires_at = st.expires_at.clone().unwrap_or_default();
    if !within || planned {
        let why = if planned {
            "a rotation is planned before the key expires"
        } else {
            "the key does not expire within the warning window"
        };
        set_condition(
            &mut st.conditions,
            EXPIRING_SOON,
            false,
            if planned {
                "RotationPlanned"
            } else {
                "NotDueYet"
            },
            why.into(),
            generation,
        );
        return None;
    }
    let message = if expires <= now {
        format!("the key expired at {expires_at} and nothing replaced it")
    } else {
        format!("the key expires at {expires_at} and no rotation is planned before then")
    };
    set_condition(
        &mut st.conditions,
        EXPIRING_SOON,
        true,
        "ExpiresWithinWindow",
        message.clone(),
        generation,
    );
    let alerts = st.alerts.get_or_insert_with(Default::default);
    if alerts.expiring_soon_announced.as_deref() == Some(expires_at.as_str()) {
        return None;
    }
    alerts.expiring_soon_announced = Some(expires_at);
    Some(Announce::ExpiringSoon { message })
}

/// Evaluate the alerts of a key whose reconcile succeeded: update the conditions and
/// `status.alerts`, return the Events to publish once that status is written.
pub fn evaluate(
    spec: &ApiKeySpec,
    st: &mut ApiKeyStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Announce> {
    let mut out = Vec::new();
    out.extend(usage(spec, st, generation, now));
    out.extend(expiry(spec, st, generation, now));
    if st
        .alerts
        .as_ref()
        .is_some_and(|a| **a == AlertsStatus::default())
    {
        st.alerts = None;
    }
    out
}

impl Announce {
    /// The Event's note (no key value or id: a hint at most is in the status already).
    pub fn note(&self, spec: &ApiKeySpec) -> String {
        match self {
            Announce::UsageHigh { threshold, ratio } => {
                let period = spec
                    .limit
                    .as_ref()
                    .and_then(|l| l.reset)
                    .unwrap_or(LimitReset::Never)
                    .as_str();
                format!(
                    "spend reached {} of the {period} limit (threshold {})",
                    pct(*ratio),
                    pct(*threshold)
                )
            }
            Announce::ExpiringSoon { message } => message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AlertsSpec, RotationSpec, SpendLimit, Usage};

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(Some(s)).unwrap()
    }

    fn spec(limit: &str, reset: LimitReset, th: &[f64]) -> ApiKeySpec {
        ApiKeySpec {
            limit: Some(Box::new(SpendLimit {
                amount: limit.into(),
                reset: Some(reset),
            })),
            alerts: Some(Box::new(AlertsSpec {
                usage_thresholds: th.to_vec(),
            })),
            ..Default::default()
        }
    }

    fn spent(st: &mut ApiKeyStatus, monthly: &str) {
        st.usage = Some(Usage {
            monthly: Some(monthly.into()),
            ..Default::default()
        });
    }

    fn cond<'a>(st: &'a ApiKeyStatus, ty: &str) -> Option<&'a str> {
        st.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .map(|c| c.status.as_str())
    }

    #[test]
    fn each_threshold_is_announced_once_per_period() {
        let s = spec("10", LimitReset::Monthly, &[0.95, 0.8]);
        let now = t("2026-12-06T05:00:00Z");
        let mut st = ApiKeyStatus::default();
        spent(&mut st, "5");
        assert!(evaluate(&s, &mut st, Some(1), now).is_empty());
        assert_eq!(cond(&st, USAGE_HIGH), Some("False"));
        spent(&mut st, "8.5");
        let a = evaluate(&s, &mut st, Some(1), now);
        assert!(
            matches!(a.as_slice(), [Announce::UsageHigh { threshold, .. }] if *threshold == 0.8)
        );
        assert_eq!(cond(&st, USAGE_HIGH), Some("True"));
        assert!(evaluate(&s, &mut st, Some(1), now).is_empty(), "not again");
        // A rotation's fresh key spends less: the period's threshold is not announced again.
        spent(&mut st, "1");
        assert!(evaluate(&s, &mut st, Some(1), now).is_empty());
        spent(&mut st, "9.9");
        let a = evaluate(&s, &mut st, Some(1), now);
        assert!(
            matches!(a.as_slice(), [Announce::UsageHigh { threshold, .. }] if *threshold == 0.95)
        );
        assert!(evaluate(&s, &mut st, Some(1), now).is_empty());
        // The next month starts over.
        let next = t("2027-01-01T00:00:01Z");
        let a = evaluate(&s, &mut st, Some(1), next);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            st.alerts.as_ref().unwrap().usage_period.as_deref(),
            Some("monthly:2027-01")
        );
    }

    #[test]
    fn a_jump_past_every_threshold_is_one_announcement_of_the_highest() {
        let s = spec("10", LimitReset::Monthly, &[0.5, 0.8, 0.95]);
        let mut st = ApiKeyStatus::default();
        spent(&mut st, "12");
        let a = evaluate(&s, &mut st, Some(1), t("2026-12-06T05:00:00Z"));
        assert!(
            matches!(a.as_slice(), [Announce::UsageHigh { threshold, .. }] if *threshold == 0.95)
        );
        assert_eq!(
            st.alerts.unwrap().usage_thresholds_crossed,
            vec![0.5, 0.8, 0.95]
        );
    }

    #[test]
    fn garbage_amounts_and_thresholds_raise_nothing() {
        for (limit, used) in [("0", "5"), ("10", "NaN"), ("10", "inf"), ("x", "1")] {
            let s = spec(limit, LimitReset::Monthly, &[0.5]);
            let mut st = ApiKeyStatus::default();
            spent(&mut st, used);
            assert!(evaluate(&s, &mut st, None, Utc::now()).is_empty());
        }
        let s = spec("10", LimitReset::Monthly, &[f64::NAN, 0.0, 7.0, -1.0]);
        let mut st = ApiKeyStatus::default();
        spent(&mut st, "10");
        assert!(evaluate(&s, &mut st, None, Utc::now()).is_empty());
        assert_eq!(cond(&st, USAGE_HIGH), None);
        assert_eq!(st.alerts, None);
    }

    #[test]
    fn expiring_soon_is_announced_once_per_expiry() {
        let s = ApiKeySpec::default();
        let now = t("2026-12-06T05:00:00Z");
        let mut st = ApiKeyStatus {
            expires_at: Some("2026-12-20T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(evaluate(&s, &mut st, None, now).is_empty(), "14 days away");
        assert_eq!(cond(&st, EXPIRING_SOON), Some("False"));
        st.expires_at = Some("2026-12-08T00:00:00Z".into());
        assert_eq!(evaluate(&s, &mut st, None, now).len(), 1);
        assert_eq!(cond(&st, EXPIRING_SOON), Some("True"));
        assert!(evaluate(&s, &mut st, None, now).is_empty());
        assert!(
            evaluate(&s, &mut st, None, t("2026-12-09T00:00:00Z")).is_empty(),
            "expired: same expiry"
        );
        // A new key with a new expiry inside the window is a new announcement.
        st.expires_at = Some("2026-12-10T00:00:00Z".into());
        assert_eq!(evaluate(&s, &mut st, None, now).len(), 1);
    }

    #[test]
    fn a_planned_rotation_or_renew_before_decides_the_window() {
        let now = t("2026-12-06T05:00:00Z");
        let renew = ApiKeySpec {
            rotation: Some(Box::new(RotationSpec {
                renew_before: Some("24h".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut st = ApiKeyStatus {
            expires_at: Some("2026-12-08T00:00:00Z".into()),
            next_rotation_at: Some("2026-12-07T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(evaluate(&renew, &mut st, None, now).is_empty());
        assert_eq!(cond(&st, EXPIRING_SOON), Some("False"));
        // Inside renewBefore with the rotation overdue (failing, deferred): announced.
        st.expires_at = Some("2026-12-06T20:00:00Z".into());
        st.next_rotation_at = Some("2026-12-05T20:00:00Z".into());
        assert_eq!(evaluate(&renew, &mut st, None, now).len(), 1);
        // A planned rotation before the expiry, no renewBefore: nothing.
        let mut st = ApiKeyStatus {
            expires_at: Some("2026-12-08T00:00:00Z".into()),
            next_rotation_at: Some("2026-12-07T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(evaluate(&ApiKeySpec::default(), &mut st, None, now).is_empty());
    }
}
