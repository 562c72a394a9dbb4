//! What the budgets (`onExceeded: Throttle | Disable`) want of each key, a [`Hold`]: written by
//! each budget pass ([`super::budget`]), read by the ApiKey sync ([`super::limits`]), and
//! dropped with the ApiKey ([`Enforcements::forget`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::backends::selector_matches;
use crate::api::ApiKey;
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

/// What a `Throttle` or `Disable` budget wants of a key created before the next pass measures
/// it, with what the budget selects (issue 21: a key created while a budget throttles its group
/// is created throttled, not held only from the next pass on).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupHold {
    /// A KeyBudget's namespace (it selects ApiKeys of its namespace only); `None`: a
    /// ClusterKeyBudget.
    pub namespace: Option<String>,
    /// A ClusterKeyBudget's `namespaceSelector`.
    pub namespace_selector: Option<LabelSelector>,
    pub selector: Option<LabelSelector>,
    pub hold: Hold,
}

impl GroupHold {
    /// Whether the budget selects ApiKey `ak` (`ns_labels`: the labels of its namespace, needed
    /// for a ClusterKeyBudget; unknown labels select nothing).
    pub fn selects(&self, ak: &ApiKey, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        let by_label = |sel: &Option<LabelSelector>, l: &BTreeMap<String, String>| {
            sel.as_ref()
                .is_none_or(|s| selector_matches(s, l).unwrap_or(false))
        };
        let in_namespace = match &self.namespace {
            Some(ns) => ak.namespace().as_deref() == Some(ns.as_str()),
            None => ns_labels.is_some_and(|l| by_label(&self.namespace_selector, l)),
        };
        in_namespace && by_label(&self.selector, ak.labels())
    }
}

/// The holds of every key (`namespace/name`), replaced by each budget pass.
pub struct Enforcements {
    holds: Mutex<HashMap<String, Hold>>,
    /// Per `Throttle`/`Disable` budget: what a key created before the next pass gets.
    groups: Mutex<Vec<GroupHold>>,
    /// False from an operator start until the first budget pass ended.
    settled: AtomicBool,
}

impl Default for Enforcements {
    /// Settled: a Context without a budget loop (tests, tools) never waits for one.
    fn default() -> Self {
        Enforcements {
            holds: Mutex::default(),
            groups: Mutex::default(),
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
        self.groups.lock().unwrap().clear();
        self.settled.store(false, Ordering::SeqCst);
    }

    pub(crate) fn mark_settled(&self) {
        self.settled.store(true, Ordering::SeqCst);
    }

    /// Put `new` in place; the holds it replaces.
    pub(crate) fn replace(&self, new: HashMap<String, Hold>) -> HashMap<String, Hold> {
        std::mem::replace(&mut *self.holds.lock().unwrap(), new)
    }

    /// Put the budgets' holds for new keys in place.
    pub(crate) fn replace_groups(&self, new: Vec<GroupHold>) {
        *self.groups.lock().unwrap() = new;
    }

    /// The budgets' holds for new keys.
    pub fn groups(&self) -> Vec<GroupHold> {
        self.groups.lock().unwrap().clone()
    }

    /// Hold `key` (`namespace/name`) with `hold` too, until the next pass decides (a key just
    /// created under a budget: the sync keeps what it was created with).
    pub(crate) fn hold_new(&self, key: &str, hold: &Hold) {
        self.holds
            .lock()
            .unwrap()
            .entry(key.to_string())
            .and_modify(|h| h.merge(hold))
            .or_insert_with(|| hold.clone());
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
