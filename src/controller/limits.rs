//! The one answer to "which limit and enabled state does keysmith want at the provider for this
//! key now": the ApiKey's spec, narrowed by the budgets that select it (`Throttle`: a lower
//! limit over the budget's period; `Disable`: disabled). The ApiKey sync pushes exactly this,
//! so it never undoes what a budget did, and the budget pass restores the spec the same way.
//!
//! Issue 21 §1: `spec.limit` is the ApiKey's limit, not each key's. When a key is replaced
//! (rotation, a spec change that needs a new key), what it spent in the period is counted in
//! `status.limitCarryOver` (which tenants cannot write) before the new key is created
//! ([`count_replaced`]), the replaced key's limit is lowered to its spend ([`hold_replaced`]),
//! and the current key gets only what is left ([`left`]) until the period ends: old and new keys
//! together never exceed `spec.limit`. [`wanted`] applies it before a budget's narrowing, so the
//! sync and the budget pass push the same limit; [`apply`] gives it to the steps that create.

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use super::context::Context;
use super::enforcements::Hold;
use super::period::Period;
use super::time::ts;
use crate::api::{ApiKey, ApiKeyStatus, CarriedKey, LimitCarryOver, LimitReset, Usage};
use crate::providers::{Field, KeySettings, Limit, ProviderKey};

/// Replaced keys listed one by one in `limitCarryOver.keys`; older ones are only in the total.
const CARRIED_KEYS: usize = 16;
/// Amounts are counted in millionths (OpenRouter stores at most 6 decimal places).
const SCALE: i128 = 1_000_000;

/// A decimal string in millionths; `None` when it is not a non-negative decimal. Extra digits
/// are rounded up (`up`) or down.
pub fn micros(s: &str, up: bool) -> Option<i128> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || int.len() > 24
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut v: i128 = int.parse().ok()?;
    v = v.checked_mul(SCALE)?;
    let (six, rest) = frac.split_at(frac.len().min(6));
    let six = format!("{six:0<6}");
    v += six.parse::<i128>().ok()?;
    if up && rest.bytes().any(|b| b != b'0') {
        v += 1;
    }
    Some(v)
}

/// Millionths as a normalised decimal string.
pub fn decimal(v: i128) -> String {
    let v = v.max(0);
    let (int, frac) = (v / SCALE, v % SCALE);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:06}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

/// The name of a reset period (`never` when none).
fn reset_name(r: Option<LimitReset>) -> &'static str {
    r.unwrap_or(LimitReset::Never).as_str()
}

/// The spend of `usage` over the period of `reset` (`total` for a limit that never resets).
pub fn period_spend(usage: &Usage, reset: Option<LimitReset>) -> Option<&str> {
    match reset.unwrap_or(LimitReset::Never) {
        LimitReset::Daily => usage.daily.as_deref(),
        LimitReset::Weekly => usage.weekly.as_deref(),
        LimitReset::Monthly => usage.monthly.as_deref(),
        LimitReset::Never => usage.total.as_deref(),
    }
}

pub(crate) fn period_spend_mut(
    usage: &mut Usage,
    reset: Option<LimitReset>,
) -> &mut Option<String> {
    match reset.unwrap_or(LimitReset::Never) {
        LimitReset::Daily => &mut usage.daily,
        LimitReset::Weekly => &mut usage.weekly,
        LimitReset::Monthly => &mut usage.monthly,
        LimitReset::Never => &mut usage.total,
    }
}

/// The carried spend that counts against `spec` at `now`: recorded for the same reset and its
/// period not over. An unreadable end counts as not over (a garbled status never raises a limit).
pub fn active<'a>(
    spec: Option<&Limit>,
    carry: Option<&'a LimitCarryOver>,
    now: DateTime<Utc>,
) -> Option<&'a LimitCarryOver> {
    let (spec, carry) = (spec?, carry?);
    if carry.reset != reset_name(spec.reset) {
        return None;
    }
    match carry.period_ends_at.as_deref() {
        None => Some(carry),
        Some(end) => match DateTime::parse_from_rfc3339(end) {
            Ok(end) if end <= now => None,
            _ => Some(carry),
        },
    }
}

/// The limit keysmith wants at the provider for the key `current` of an ApiKey now:
/// `spec.limit` minus what the *other* keys of the period spent (never below zero), or
/// `spec.limit` itself when nothing is carried or the period ended. `current: None`: a key
/// about to be created.
pub fn left(
    spec: Option<&Limit>,
    carry: Option<&LimitCarryOver>,
    current: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Limit> {
    let spec = spec?;
    let Some(carry) = active(Some(spec), carry, now) else {
        return Some(spec.clone());
    };
    // An unreadable amount carried counts as the whole limit spent (never raises a limit).
    let limit = micros(&spec.amount, false)?;
    let mut spent = micros(&carry.spent, true).unwrap_or(limit);
    if let Some(own) = carry
        .keys
        .iter()
        .find(|k| Some(k.key_id.as_str()) == current)
    {
        spent -= micros(&own.spent, true).unwrap_or(0);
    }
    Some(Limit {
        amount: decimal(limit - spent.max(0)),
        reset: spec.reset,
    })
}

/// The usage of the current key as the status reports it: the period of the limit counts the
/// replaced keys' spend too (`limitCarryOver`, which [`apply`] keeps only while it matches
/// `spec.limit`); the other periods are the current key's.
pub fn across_generations(
    usage: Option<Usage>,
    carry: Option<&LimitCarryOver>,
    now: DateTime<Utc>,
) -> Option<Usage> {
    let mut usage = usage?;
    let Some(carry) = carry else {
        return Some(usage);
    };
    let reset = match carry.reset.as_str() {
        "daily" => LimitReset::Daily,
        "weekly" => LimitReset::Weekly,
        "monthly" => LimitReset::Monthly,
        _ => LimitReset::Never,
    };
    let spec = Limit {
        amount: "0".into(),
        reset: Some(reset),
    };
    if active(Some(&spec), Some(carry), now).is_none() {
        return Some(usage);
    }
    let slot = period_spend_mut(&mut usage, Some(reset));
    if let (Some(cur), Some(earlier)) = (
        slot.as_deref().and_then(|s| micros(s, false)),
        micros(&carry.spent, false),
    ) {
        *slot = Some(decimal(cur + earlier));
    }
    Some(usage)
}

/// Count `key`'s spend `spent` (millionths) in the carry-over of the period ending at `ends`;
/// a key counted before is counted once, at the larger spend (a rotation retried after a crash
/// lowers the same key again).
pub fn carry(
    st: &mut ApiKeyStatus,
    spec: &Limit,
    key: &str,
    spent: i128,
    ends: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    let current = active(Some(spec), st.limit_carry_over.as_deref(), now).cloned();
    let mut c = current.unwrap_or_else(|| LimitCarryOver {
        reset: reset_name(spec.reset).into(),
        period_ends_at: ends.map(ts),
        spent: "0".into(),
        keys: Vec::new(),
    });
    let mut total = micros(&c.spent, true).unwrap_or(0);
    match c.keys.iter_mut().find(|k| k.key_id == key) {
        Some(k) => {
            let before = micros(&k.spent, true).unwrap_or(0);
            if spent > before {
                total += spent - before;
                k.spent = decimal(spent);
            }
        }
        None => {
            total += spent;
            c.keys.push(CarriedKey {
                key_id: key.to_string(),
                spent: decimal(spent),
                limit_lowered: false,
            });
            if c.keys.len() > CARRIED_KEYS {
                c.keys.remove(0);
            }
        }
    }
    c.spent = decimal(total);
    st.limit_carry_over = Some(Box::new(c));
}

/// When the period of `spec` that `key` spends in ends.
pub(crate) fn period_end(
    spec: &Limit,
    key: &ProviderKey,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if matches!(spec.reset, None | Some(LimitReset::Never)) {
        return None;
    }
    key.usage
        .as_ref()
        .and_then(|u| u.resets_at.as_deref())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| Period::of_reset(spec.reset).map(|p| p.end(now)))
}

/// What `key` spent in the period of `reset`, in millionths.
pub(crate) fn spend_of(key: &ProviderKey, reset: Option<LimitReset>) -> Option<i128> {
    let u = key.usage.as_ref()?;
    micros(period_spend(u, reset)?, true)
}

/// `spec.limit` of `ak`, normalised as the settings carry it.
pub fn own_limit(ak: &ApiKey) -> Option<Limit> {
    let l = ak.spec.limit.as_deref()?;
    Some(Limit {
        amount: crate::providers::normalize_decimal(&l.amount)?,
        reset: l.reset,
    })
}

/// The fields a budget may change on a key. After an operator start the sync leaves them alone
/// until the budgets were added up once (see [`super::enforcements::Enforcements::settled`]):
/// a throttle or disable made before the restart is not undone in between.
pub const BUDGET_FIELDS: [Field; 3] = [Field::Disabled, Field::LimitAmount, Field::LimitReset];

/// What keysmith wants at the provider for `ak`'s key now (`spec`: the settings from its spec;
/// `st`: the status as this reconcile knows it): `spec.limit` less what replaced keys of the
/// period spent ([`left`]), then narrowed by the budgets that hold the key.
pub fn wanted(ctx: &Context, ak: &ApiKey, st: &ApiKeyStatus, spec: &KeySettings) -> KeySettings {
    let key = format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any());
    let mut s = spec.clone();
    if let Some(own) = own_limit(ak) {
        s.limit = left(
            Some(&own),
            st.limit_carry_over.as_deref(),
            st.key_id.as_deref(),
            Utc::now(),
        );
    }
    narrow(&s, ctx.budgets.hold_for(&key).as_ref())
}

/// The settings a key about to be created for `ak` is created with: `settings` (the spec with
/// what is left of its limit, see [`apply`] and [`count_replaced`]) narrowed by the hold of the
/// ApiKey and by every `Throttle`/`Disable` budget that selects it now, which the budget pass
/// has not measured yet (a throttled group's new key starts at limit 0 over the budget's period,
/// nothing of the amount being unallocated, until the next pass gives it its share). The hold is
/// kept for the ApiKey's sync until the next pass decides.
pub async fn for_new_key(ctx: &Context, ak: &ApiKey, settings: &KeySettings) -> KeySettings {
    let key = format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any());
    let mut hold = ctx.budgets.hold_for(&key);
    let mut ns_labels = None;
    for g in ctx.budgets.groups() {
        if g.namespace.is_none() && ns_labels.is_none() {
            let ns = ak.namespace().unwrap_or_default();
            ns_labels = Some(super::resolve::namespace_labels(ctx, &ns).await.ok());
        }
        if g.selects(ak, ns_labels.as_ref().and_then(Option::as_ref)) {
            match hold.as_mut() {
                Some(h) => h.merge(&g.hold),
                None => hold = Some(g.hold.clone()),
            }
        }
    }
    if let Some(h) = &hold {
        ctx.budgets.hold_new(&key, h);
    }
    narrow(settings, hold.as_ref())
}

/// `spec` narrowed by a budget's hold: disabled if the hold disables; the hold's limit unless
/// the spec's own limit over the same period is already lower.
pub fn narrow(spec: &KeySettings, hold: Option<&Hold>) -> KeySettings {
    let mut s = spec.clone();
    let Some(h) = hold else { return s };
    if h.disabled {
        s.disabled = true;
    }
    if let Some(l) = &h.limit {
        let spec_is_lower = spec
            .limit
            .as_ref()
            .is_some_and(|own| own.reset == l.reset && amount(own) <= amount(l));
        if !spec_is_lower {
            s.limit = Some(l.clone());
        }
    }
    s
}

fn amount(l: &Limit) -> f64 {
    l.amount.parse().unwrap_or(f64::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn limit(a: &str, r: LimitReset) -> Limit {
        Limit {
            amount: a.into(),
            reset: Some(r),
        }
    }

    #[test]
    fn decimals_round_trip_in_millionths() {
        assert_eq!(micros("10", false), Some(10_000_000));
        assert_eq!(micros("6.25", false), Some(6_250_000));
        assert_eq!(micros("0.0000011", true), Some(2));
        assert_eq!(micros("0.0000011", false), Some(1));
        assert_eq!(micros("-1", false), None);
        assert_eq!(micros("1e3", false), None);
        assert_eq!(micros(&"9".repeat(40), false), None);
        assert_eq!(decimal(3_900_000), "3.9");
        assert_eq!(decimal(4_000_000), "4");
        assert_eq!(decimal(-5), "0");
    }

    #[test]
    fn a_new_key_gets_what_is_left_until_the_period_ends() {
        let now = t("2026-12-06T04:30:00Z");
        let spec = limit("10", LimitReset::Monthly);
        let mut st = ApiKeyStatus::default();
        assert_eq!(left(Some(&spec), None, None, now), Some(spec.clone()));
        carry(
            &mut st,
            &spec,
            "old",
            6_000_000,
            Period::of_reset(spec.reset).map(|p| p.end(now)),
            now,
        );
        let c = st.limit_carry_over.as_deref();
        assert_eq!(left(Some(&spec), c, None, now).unwrap().amount, "4");
        // A retried freeze of the same key counts it once, at its larger spend.
        carry(&mut st, &spec, "old", 6_500_000, None, now);
        carry(&mut st, &spec, "old", 6_000_000, None, now);
        assert_eq!(st.limit_carry_over.as_ref().unwrap().spent, "6.5");
        // A second rotation in the same period adds the next key's spend.
        carry(&mut st, &spec, "mid", 3_500_000, None, now);
        let c = st.limit_carry_over.as_deref();
        assert_eq!(left(Some(&spec), c, None, now).unwrap().amount, "0");
        // The period ends: the whole limit again, and the status drops the carry-over.
        let later = t("2027-01-01T00:00:00Z");
        assert_eq!(left(Some(&spec), c, None, later), Some(spec.clone()));
        // Another reset in the spec does not use it.
        let daily = limit("10", LimitReset::Daily);
        assert_eq!(left(Some(&daily), c, None, now), Some(daily.clone()));
        // A garbled carry-over never raises the limit.
        let bad = LimitCarryOver {
            reset: "monthly".into(),
            period_ends_at: Some("garbage".into()),
            spent: "lots".into(),
            keys: vec![],
        };
        assert_eq!(
            left(Some(&spec), Some(&bad), None, later).unwrap().amount,
            "0"
        );
    }

    #[test]
    fn carried_keys_stay_bounded_and_the_total_keeps_them() {
        let now = t("2026-12-06T04:30:00Z");
        let spec = limit("1000", LimitReset::Never);
        let mut st = ApiKeyStatus::default();
        for i in 0..40 {
            carry(&mut st, &spec, &format!("k{i}"), 1_000_000, None, now);
        }
        let c = st.limit_carry_over.as_ref().unwrap();
        assert_eq!(c.keys.len(), CARRIED_KEYS);
        assert_eq!(c.spent, "40");
        assert_eq!(c.period_ends_at, None);
    }

    #[test]
    fn status_usage_counts_the_period_across_keys() {
        let now = t("2026-12-06T04:30:00Z");
        let c = LimitCarryOver {
            reset: "monthly".into(),
            period_ends_at: Some("2027-01-01T00:00:00Z".into()),
            spent: "6".into(),
            keys: vec![],
        };
        let u = Usage {
            total: Some("1.5".into()),
            monthly: Some("1.5".into()),
            daily: Some("1.5".into()),
            ..Default::default()
        };
        let out = across_generations(Some(u.clone()), Some(&c), now).unwrap();
        assert_eq!(out.monthly.as_deref(), Some("7.5"));
        assert_eq!(out.daily.as_deref(), Some("1.5"));
        assert_eq!(out.total.as_deref(), Some("1.5"));
        let later = t("2027-01-02T00:00:00Z");
        assert_eq!(
            across_generations(Some(u.clone()), Some(&c), later),
            Some(u)
        );
    }

    #[test]
    fn a_hold_narrows_the_spec_and_never_widens_it() {
        let spec = KeySettings {
            limit: Some(limit("10", LimitReset::Monthly)),
            ..Default::default()
        };
        assert_eq!(narrow(&spec, None), spec, "no budget: the spec");
        let throttle = Hold {
            limit: Some(limit("4", LimitReset::Monthly)),
            disabled: false,
        };
        assert_eq!(
            narrow(&spec, Some(&throttle)).limit,
            Some(limit("4", LimitReset::Monthly))
        );
        let loose = Hold {
            limit: Some(limit("40", LimitReset::Monthly)),
            disabled: false,
        };
        assert_eq!(narrow(&spec, Some(&loose)), spec, "the spec is lower");
        // A key without a limit of its own gets the budget's.
        let free = KeySettings::default();
        assert_eq!(narrow(&free, Some(&loose)).limit, loose.limit);
        let off = Hold {
            limit: None,
            disabled: true,
        };
        let n = narrow(&spec, Some(&off));
        assert!(n.disabled);
        assert_eq!(n.limit, spec.limit);
    }
}
