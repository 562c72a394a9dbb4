//! Adding up a budget: pure functions from what the providers' listings report to the figures
//! of a budget's status, the thresholds it reached, and each key's share under `Throttle`.
//! No client, no clock: the caller passes `now`.

use std::collections::BTreeMap;

use crate::api::{BudgetPeriod, LimitReset, NotMeasured, SpendPart, Usage, MAX_STATUS_ENTRIES};
use crate::providers::decimal_from_f64;

/// The limit reset that counts spend over the same period as the budget.
pub fn reset_of(period: BudgetPeriod) -> LimitReset {
    match period {
        BudgetPeriod::Daily => LimitReset::Daily,
        BudgetPeriod::Weekly => LimitReset::Weekly,
        BudgetPeriod::Monthly => LimitReset::Monthly,
    }
}

/// Largest amount a provider may report for one key (a provider answering 1e300 must not make
/// the sum infinite): a billion in any currency.
const MAX_KEY_SPEND: f64 = 1e9;

/// A decimal string as reported by a provider, if it is a sane amount.
pub fn amount(s: &str) -> Option<f64> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && (0.0..=MAX_KEY_SPEND).contains(&v)).then_some(v)
}

/// What one key generation spent in the budget's period, as its provider reports it; `Err`
/// says why it is not known (never taken as 0).
pub fn period_spend(
    usage: Option<&Usage>,
    period: BudgetPeriod,
    currency: &str,
) -> Result<f64, String> {
    let Some(u) = usage else {
        return Err("its provider reports no spend for keys".into());
    };
    let unit = u.unit.as_deref().unwrap_or("");
    if !unit.eq_ignore_ascii_case(currency) {
        let unit = if unit.is_empty() { "no unit" } else { unit };
        return Err(format!(
            "its provider reports spend in {}, not {currency}",
            crate::providers::http::snippet(unit)
        ));
    }
    let field = match period {
        BudgetPeriod::Daily => &u.daily,
        BudgetPeriod::Weekly => &u.weekly,
        BudgetPeriod::Monthly => &u.monthly,
    };
    match field.as_deref() {
        Some(s) => amount(s).ok_or_else(|| "its provider reported an unreadable amount".into()),
        None => Err(format!(
            "its provider reports no {} spend for this key",
            period.as_str()
        )),
    }
}

/// One selected ApiKey, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub namespace: String,
    pub name: String,
    /// Provider type (`openrouter`), a bounded label.
    pub provider: String,
    /// Spent in the period over every live generation of the key, or why it is not known.
    pub spent: Result<f64, String>,
}

/// A budget's figures for the current period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    pub spent: f64,
    pub remaining: f64,
    /// Spent / amount (0 when the amount is 0 and nothing was spent; 1 when it is 0 and
    /// something was).
    pub ratio: f64,
    pub by_provider: Vec<SpendPart>,
    pub by_namespace: Vec<SpendPart>,
    pub counted: i64,
    pub not_measured_count: i64,
    pub not_measured: Vec<NotMeasured>,
}

/// Add up the keys of a budget of `amount`.
pub fn tally(amount: f64, keys: &[Measured]) -> Figures {
    let mut f = Figures::default();
    let mut providers: BTreeMap<&str, (f64, i64)> = BTreeMap::new();
    let mut namespaces: BTreeMap<&str, (f64, i64)> = BTreeMap::new();
    for k in keys {
        match &k.spent {
            Ok(s) => {
                f.spent += s;
                f.counted += 1;
                let p = providers.entry(&k.provider).or_default();
                p.0 += s;
                p.1 += 1;
                let n = namespaces.entry(&k.namespace).or_default();
                n.0 += s;
                n.1 += 1;
            }
            Err(why) => {
                f.not_measured_count += 1;
                if f.not_measured.len() < MAX_STATUS_ENTRIES {
                    f.not_measured.push(NotMeasured {
                        namespace: k.namespace.clone(),
                        name: k.name.clone(),
                        reason: why.chars().take(256).collect(),
                    });
                }
            }
        }
    }
    f.remaining = (amount - f.spent).max(0.0);
    f.ratio = if amount > 0.0 {
        f.spent / amount
    } else if f.spent > 0.0 {
        1.0
    } else {
        0.0
    };
    let parts = |m: BTreeMap<&str, (f64, i64)>| {
        let mut v: Vec<SpendPart> = m
            .into_iter()
            .map(|(name, (s, n))| SpendPart {
                name: name.to_string(),
                spent: decimal_from_f64(s),
                keys: n,
            })
            .collect();
        // Largest first (ties by name, as the map gave them); the tail beyond the bound is in
        // the totals only.
        v.sort_by(|a, b| {
            let (x, y) = (amount_or_zero(&b.spent), amount_or_zero(&a.spent));
            x.total_cmp(&y)
        });
        v.truncate(MAX_STATUS_ENTRIES);
        v
    };
    f.by_provider = parts(providers);
    f.by_namespace = parts(namespaces);
    f
}

fn amount_or_zero(s: &str) -> f64 {
    amount(s).unwrap_or(0.0)
}

/// The thresholds `ratio` has reached.
pub fn reached(thresholds: &[f64], ratio: f64) -> Vec<f64> {
    thresholds
        .iter()
        .copied()
        .filter(|t| ratio + 1e-9 >= *t)
        .collect()
}

/// The thresholds reached now that were not reached before in this period.
pub fn newly_reached(before: &[f64], now: &[f64]) -> Vec<f64> {
    now.iter()
        .copied()
        .filter(|t| !before.iter().any(|b| (b - t).abs() < 1e-9))
        .collect()
}

/// A threshold as a condition type: `Threshold80`, `Threshold12.5`.
pub fn threshold_condition(t: f64) -> String {
    format!("Threshold{}", decimal_from_f64(t * 100.0))
}

/// Rounded down to 6 decimal places (a cap must never round up past the budget).
fn floor6(v: f64) -> f64 {
    (v * 1e6).floor() / 1e6
}

/// Under `Throttle`: each throttled key's limit over the budget's period, its spend plus an
/// equal share of what is `left` of the budget, so that the limits together never exceed what
/// was spent plus what is left. `spent[i]` is key i's spend in the period; the answer is in the
/// same order.
pub fn throttle_caps(left: f64, spent: &[f64]) -> Vec<f64> {
    if spent.is_empty() {
        return Vec::new();
    }
    let share = left.max(0.0) / spent.len() as f64;
    spent.iter().map(|s| floor6(s + share)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(unit: &str, daily: Option<&str>, monthly: Option<&str>) -> Usage {
        Usage {
            daily: daily.map(String::from),
            monthly: monthly.map(String::from),
            unit: Some(unit.into()),
            ..Default::default()
        }
    }

    fn key(ns: &str, provider: &str, spent: Result<f64, String>) -> Measured {
        Measured {
            namespace: ns.into(),
            name: format!("k-{ns}-{provider}"),
            provider: provider.into(),
            spent,
        }
    }

    #[test]
    fn a_key_without_spend_for_the_period_is_not_measured_never_zero() {
        let u = usage("USD", Some("1.5"), None);
        assert_eq!(period_spend(Some(&u), BudgetPeriod::Daily, "USD"), Ok(1.5));
        let monthly = period_spend(Some(&u), BudgetPeriod::Monthly, "USD").unwrap_err();
        assert!(monthly.contains("no monthly spend"), "{monthly}");
        assert!(period_spend(None, BudgetPeriod::Daily, "USD").is_err());
        // Another currency is not converted.
        let cny = usage("CNY", Some("3"), Some("3"));
        let e = period_spend(Some(&cny), BudgetPeriod::Daily, "USD").unwrap_err();
        assert!(e.contains("CNY"), "{e}");
        // Garbage and absurd amounts are not added.
        for bad in ["NaN", "-1", "1e300", "x"] {
            let u = usage("USD", Some(bad), None);
            assert!(
                period_spend(Some(&u), BudgetPeriod::Daily, "USD").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn tally_adds_measured_keys_per_provider_and_namespace() {
        let keys = vec![
            key("team-a", "openrouter", Ok(2.0)),
            key("team-a", "bifrost", Ok(1.5)),
            key("team-b", "openrouter", Ok(4.0)),
            key(
                "team-b",
                "boltz",
                Err("its provider reports no spend for keys".into()),
            ),
        ];
        let f = tally(10.0, &keys);
        assert!((f.spent - 7.5).abs() < 1e-9);
        assert!((f.remaining - 2.5).abs() < 1e-9);
        assert!((f.ratio - 0.75).abs() < 1e-9);
        assert_eq!(f.counted, 3);
        assert_eq!(f.not_measured_count, 1);
        assert_eq!(f.not_measured[0].namespace, "team-b");
        assert_eq!(
            f.by_provider,
            vec![
                SpendPart {
                    name: "openrouter".into(),
                    spent: "6".into(),
                    keys: 2
                },
                SpendPart {
                    name: "bifrost".into(),
                    spent: "1.5".into(),
                    keys: 1
                },
            ]
        );
        assert_eq!(f.by_namespace[0].name, "team-b");
        assert_eq!(f.by_namespace[0].spent, "4");
        // Overspent: nothing remains, the ratio passes 1.
        let f = tally(5.0, &keys);
        assert_eq!(f.remaining, 0.0);
        assert!(f.ratio > 1.0);
    }

    #[test]
    fn status_lists_are_bounded() {
        let keys: Vec<Measured> = (0..100)
            .map(|i| {
                key(
                    &format!("ns-{i}"),
                    "openrouter",
                    if i % 2 == 0 {
                        Ok(1.0)
                    } else {
                        Err("no".into())
                    },
                )
            })
            .collect();
        let f = tally(1000.0, &keys);
        assert_eq!(f.counted, 50);
        assert_eq!(f.not_measured_count, 50);
        assert_eq!(f.not_measured.len(), MAX_STATUS_ENTRIES);
        assert_eq!(f.by_namespace.len(), MAX_STATUS_ENTRIES);
        assert!((f.spent - 50.0).abs() < 1e-9, "the totals hold every key");
    }

    #[test]
    fn thresholds_are_reached_once() {
        let t = [0.5, 0.8, 0.95];
        assert!(reached(&t, 0.49).is_empty());
        assert_eq!(reached(&t, 0.8), vec![0.5, 0.8]);
        assert_eq!(newly_reached(&[0.5], &reached(&t, 0.96)), vec![0.8, 0.95]);
        assert!(newly_reached(&[0.5, 0.8, 0.95], &reached(&t, 1.2)).is_empty());
        assert_eq!(threshold_condition(0.8), "Threshold80");
        assert_eq!(threshold_condition(0.125), "Threshold12.5");
    }

    #[test]
    fn throttle_caps_never_add_up_past_the_budget() {
        let spent = [2.0, 3.0, 0.0];
        let f = tally(
            10.0,
            &spent
                .iter()
                .map(|s| key("a", "openrouter", Ok(*s)))
                .collect::<Vec<_>>(),
        );
        let caps = throttle_caps(f.remaining, &spent);
        // 5 left, 5/3 each.
        assert_eq!(caps, vec![3.666666, 4.666666, 1.666666]);
        assert!(caps.iter().sum::<f64>() <= 10.0);
        // At or past the cap: each key is held at what it spent.
        assert_eq!(throttle_caps(0.0, &[4.0, 3.0]), vec![4.0, 3.0]);
        assert_eq!(throttle_caps(-2.0, &[4.0]), vec![4.0]);
        assert!(throttle_caps(5.0, &[]).is_empty());
    }
}
