//! `onExceeded: Throttle | Disable`: what the budgets want of each key (a [`Hold`]), kept where
//! the ApiKey sync reads it ([`super::super::limits`]), and pushed to the provider by the
//! budget pass for the keys whose provider shows otherwise.

use kube::runtime::events::EventType;

use super::super::backends::ResolvedProvider;
use super::super::context::Context;
use super::super::limits;
use super::super::reasons::Reason;
use crate::api::ApiKey;
use crate::providers::{self, Capabilities, Field, KeyScope, ProviderKey};

// The holds live beside the context that keeps them (the context needs nothing of the pass).
pub use super::super::enforcements::{GroupHold, Hold};

/// Whether keysmith can throttle keys of a provider: it reports spend and updates the limit
/// and its period in place.
pub fn can_throttle(caps: &Capabilities) -> bool {
    caps.can_update(Field::LimitAmount) && caps.can_update(Field::LimitReset)
}

/// Whether keysmith can disable (and re-enable) keys of a provider in place.
pub fn can_disable(caps: &Capabilities) -> bool {
    caps.can_update(Field::Disabled)
}

/// A key the pass may have to change at its provider.
pub struct Target<'a> {
    pub ak: &'a ApiKey,
    pub p: &'a ResolvedProvider,
    pub scope: &'a KeyScope,
    pub id: &'a str,
    /// The key as the shared listing shows it.
    pub current: &'a ProviderKey,
}

/// Push what [`limits::wanted`] says for `t` if its provider shows otherwise (only the fields a
/// budget sets). Returns whether an update was sent; an error is the provider's.
pub async fn apply(ctx: &Context, t: &Target<'_>) -> Result<bool, providers::ProviderError> {
    let status = t.ak.status.clone().unwrap_or_default();
    let spec = match super::super::validate::settings_for(t.ak, &status) {
        Ok(s) => s,
        // An ApiKey whose spec does not validate is reported by its own reconcile.
        Err(_) => return Ok(false),
    };
    let wanted = limits::wanted(ctx, t.ak, &status, &spec);
    let caps = t.p.backend.capabilities();
    let fields: Vec<Field> = providers::drift(t.p.backend.as_ref(), t.current, &wanted)
        .into_iter()
        .filter(|f| limits::BUDGET_FIELDS.contains(f) && caps.can_update(*f))
        .collect();
    if fields.is_empty() {
        return Ok(false);
    }
    let updated = t.p.backend.update(t.scope, t.id, &wanted, &fields).await?;
    ctx.listings.remember(t.p, t.scope, &updated).await;
    let what = match (wanted.disabled, &wanted.limit) {
        (true, _) if fields.contains(&Field::Disabled) => "disabled by a budget".to_string(),
        (false, _) if fields.contains(&Field::Disabled) => "enabled again".to_string(),
        (_, Some(l)) => format!(
            "limit set to {} {}",
            l.amount,
            l.reset.map(|r| r.as_str()).unwrap_or("never")
        ),
        (_, None) => "limit removed".to_string(),
    };
    ctx.event(
        t.ak,
        EventType::Normal,
        Reason::BudgetEnforced,
        "Budget",
        format!("key {what} at {}", t.p.provider_type),
    )
    .await;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::super::enforcements::Enforcements;
    use super::*;
    use crate::api::LimitReset;
    use crate::providers::Limit;

    #[test]
    fn the_stricter_hold_wins() {
        let l = |a: &str| {
            Some(Limit {
                amount: a.into(),
                reset: Some(LimitReset::Monthly),
            })
        };
        let mut h = Hold {
            limit: l("5"),
            disabled: false,
        };
        h.merge(&Hold {
            limit: l("3"),
            disabled: false,
        });
        assert_eq!(h.limit, l("3"));
        h.merge(&Hold {
            limit: None,
            disabled: true,
        });
        assert_eq!(
            h,
            Hold {
                limit: l("3"),
                disabled: true
            }
        );
        let e = Enforcements::default();
        assert!(e.settled());
        e.wait_for_first_pass();
        assert!(!e.settled());
    }
}
