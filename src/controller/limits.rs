//! The one answer to "which limit and enabled state does keysmith want at the provider for this
//! key now": the ApiKey's spec, narrowed by the budgets that select it (`Throttle`: a lower
//! limit over the budget's period; `Disable`: disabled). The ApiKey sync pushes exactly this,
//! so it never undoes what a budget did, and the budget pass restores the spec the same way.

use kube::ResourceExt;

use super::budget::enforce::Hold;
use super::context::Context;
use crate::api::ApiKey;
use crate::providers::{Field, KeySettings, Limit};

/// The fields a budget may change on a key. After an operator start the sync leaves them alone
/// until the budgets were added up once (see [`super::budget::enforce::Enforcements::settled`]):
/// a throttle or disable made before the restart is not undone in between.
pub const BUDGET_FIELDS: [Field; 3] = [Field::Disabled, Field::LimitAmount, Field::LimitReset];

/// What keysmith wants at the provider for `ak`'s key now (`spec`: the settings from its spec).
pub fn wanted(ctx: &Context, ak: &ApiKey, spec: &KeySettings) -> KeySettings {
    let key = format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any());
    narrow(spec, ctx.budgets.hold_for(&key).as_ref())
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
    use crate::api::LimitReset;

    fn limit(a: &str, r: LimitReset) -> Limit {
        Limit {
            amount: a.into(),
            reset: Some(r),
        }
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
