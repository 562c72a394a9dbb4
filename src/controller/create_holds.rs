//! Holds on creates per provider object (`KeyProvider/ns/name` or `ClusterKeyProvider/name`):
//! after the provider answered a create with 429, no create goes through that provider object
//! until the hold ends. Dropped with the provider object ([`CreateHolds::forget`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::fairness::MAX_CREATE_HOLD;

/// Per provider object: no create before this instant, and the message of the 429 that said so.
#[derive(Debug, Default)]
pub struct CreateHolds {
    holds: Mutex<HashMap<String, (Instant, String)>>,
}

impl CreateHolds {
    /// The provider answered a create through `provider` with 429 and Retry-After `wait`: hold
    /// every create through that provider object until then, for at most [`MAX_CREATE_HOLD`].
    /// The limit is the account's, not one key's; the bound keeps one namespace's burst from
    /// holding every other namespace for an hour (the fair share then decides who creates next).
    pub fn hold(&self, provider: &str, wait: Duration, message: String) {
        let wait = wait.min(MAX_CREATE_HOLD);
        self.holds
            .lock()
            .unwrap()
            .insert(provider.to_string(), (Instant::now() + wait, message));
    }

    /// What is left of a hold on creates through `provider`, with the message of the 429.
    pub fn held(&self, provider: &str) -> Option<(Duration, String)> {
        let mut holds = self.holds.lock().unwrap();
        let (until, message) = holds.get(provider)?;
        match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some((left, message.clone())),
            _ => {
                holds.remove(provider);
                None
            }
        }
    }

    /// The provider object `provider` is gone.
    pub fn forget(&self, provider: &str) {
        self.holds.lock().unwrap().remove(provider);
    }

    /// The provider objects with a hold.
    pub fn providers(&self) -> Vec<String> {
        self.holds.lock().unwrap().keys().cloned().collect()
    }

    /// Provider objects with a hold.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.holds.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_holds_creates_for_at_most_a_minute() {
        let holds = CreateHolds::default();
        // A provider asking for an hour (the most a Retry-After is read as) gets a minute.
        holds.hold(
            "ClusterKeyProvider/p",
            Duration::from_secs(3600),
            "429".into(),
        );
        let (left, message) = holds.held("ClusterKeyProvider/p").unwrap();
        assert!(left <= MAX_CREATE_HOLD, "{left:?}");
        assert!(left > Duration::from_secs(59), "{left:?}");
        assert_eq!(message, "429");
        // A shorter Retry-After is honoured as is; other provider objects are not held.
        holds.hold("ClusterKeyProvider/q", Duration::from_secs(2), "429".into());
        assert!(holds.held("ClusterKeyProvider/q").unwrap().0 <= Duration::from_secs(2));
        assert!(holds.held("ClusterKeyProvider/r").is_none());
        // A hold that ended is dropped when asked about; a deleted provider object's at once.
        holds.hold("ClusterKeyProvider/r", Duration::ZERO, "429".into());
        assert!(holds.held("ClusterKeyProvider/r").is_none());
        assert_eq!(holds.len(), 2);
        holds.forget("ClusterKeyProvider/p");
        assert_eq!(holds.providers(), vec!["ClusterKeyProvider/q".to_string()]);
    }
}
