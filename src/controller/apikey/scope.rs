//! Where a key lives: [`LocatedKey`] and the scope recorded in the status. Pure, a leaf.

use crate::api::{ApiKeyStatus, KeyLocation};
use crate::providers::KeyScope;

/// A key at the provider and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedKey {
    pub id: String,
    pub at: KeyScope,
}

/// How a scope is recorded in the status (`{}` for the provider's only family).
pub fn location(scope: &KeyScope) -> Option<KeyLocation> {
    Some(KeyLocation {
        family: scope.family.clone(),
        parent: scope.parent.clone(),
    })
}

/// The scope a recorded location names; `fallback` when none was recorded (a status written
/// before keysmith recorded locations: the key lives where the spec says).
pub fn scope_at(loc: Option<&KeyLocation>, fallback: &KeyScope) -> KeyScope {
    match loc {
        Some(l) => KeyScope {
            family: l.family.clone(),
            parent: l.parent.clone(),
        },
        None => fallback.clone(),
    }
}

/// Where the current key lives.
pub fn key_scope(st: &ApiKeyStatus, desired: &KeyScope) -> KeyScope {
    scope_at(st.key_scope.as_ref(), desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_location_wins_over_the_spec() {
        let desired = KeyScope {
            family: "agent".into(),
            parent: "new".into(),
        };
        let mut st = ApiKeyStatus::default();
        assert_eq!(key_scope(&st, &desired), desired);
        st.key_scope = location(&KeyScope {
            family: "agent".into(),
            parent: "old".into(),
        });
        assert_eq!(key_scope(&st, &desired).parent, "old");
    }
}
