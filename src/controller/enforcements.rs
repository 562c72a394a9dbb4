//! What the budgets (`onExceeded: Throttle | Disable`) want of each key, a [`Hold`]: written by
//! each budget pass ([`super::budget`]), read by the ApiKey sync ([`super::limits`]), and
//! dropped with the ApiKey ([`Enforcements::forget`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::providers::Limit;

/// What the budgets want of one key, on top of its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    /// A limit over the budget's period (`Throttle`).
    pub limit: Option<Limit>,
    /// Disabled at the provider (`Disable`, at the cap).
    pub disabled: bool,
}

impl Hold {
    /// Two budgets selecting the same key: the stricter of each.
    pub fn merge(&mut self, other: &Hold) {
        self.disabled |= other.disabled;
        self.limit = match (self.limit.take(), &other.limit) {
            (Some(a), Some(b)) => {
                let (x, y) = (
                    a.amount.parse::<f64>().unwrap_or(f64::INFINITY),
                    b.amount.parse::<f64>().unwrap_or(f64::INFINITY),
                );
                Some(if y < x { b.clone() } else { a })
            }
            (a, b) => a.or_else(|| b.clone()),
        };
    }
}

/// The holds of every key (`namespace/name`), replaced by each budget pass.
pub struct Enforcements {
    holds: Mutex<HashMap<String, Hold>>,
    /// False from an operator start until the first budget pass ended.
    settled: AtomicBool,
}

impl Default for Enforcements {
    /// Settled: a Context without a budget loop (tests, tools) never waits for one.
    fn default() -> Self {
        Enforcements {
            holds: Mutex::default(),
            settled: AtomicBool::new(true),
        }
    }
}

impl Enforcements {
    /// The hold on ApiKey `key` (`namespace/name`), if a budget has one.
    pub fn hold_for(&self, key: &str) -> Option<Hold> {
        self.holds.lock().unwrap().get(key).cloned()
    }

    /// Whether the budgets were added up since the operator started (until then the ApiKey
    /// sync does not touch [`super::limits::BUDGET_FIELDS`]).
    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    /// As after an operator start (called by `keysmith run` before the controllers start):
    /// nothing held, and the sync waits for the first pass before touching
    /// [`super::limits::BUDGET_FIELDS`].
    pub fn wait_for_first_pass(&self) {
        self.holds.lock().unwrap().clear();
        self.settled.store(false, Ordering::SeqCst);
    }

    pub(crate) fn mark_settled(&self) {
        self.settled.store(true, Ordering::SeqCst);
    }

    /// Put `new` in place; the holds it replaces.
    pub(crate) fn replace(&self, new: HashMap<String, Hold>) -> HashMap<String, Hold> {
        std::mem::replace(&mut *self.holds.lock().unwrap(), new)
    }

    /// The keys held (`namespace/name`).
    pub fn keys(&self) -> Vec<String> {
        self.holds.lock().unwrap().keys().cloned().collect()
    }

    /// How many keys are held (tests, metrics).
    pub fn held(&self) -> usize {
        self.holds.lock().unwrap().len()
    }

    /// The ApiKey `key` is gone: its hold goes before the next pass.
    pub fn forget(&self, key: &str) {
        self.holds.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_apikey_loses_its_hold() {
        let e = Enforcements::default();
        let hold = Hold {
            limit: None,
            disabled: true,
        };
        e.replace(HashMap::from([
            ("team-a/one".to_string(), hold.clone()),
            ("team-a/two".to_string(), hold.clone()),
        ]));
        e.forget("team-a/one");
        assert_eq!(e.keys(), vec!["team-a/two".to_string()]);
        assert_eq!(e.hold_for("team-a/two"), Some(hold));
        e.forget("team-a/two");
        assert_eq!(e.held(), 0);
    }
}
