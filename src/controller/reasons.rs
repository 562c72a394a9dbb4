//! Every reason keysmith puts in a `Ready` condition or an Event, in one place. The README's
//! reason table is checked against [`Reason::CONDITIONS`] by a test below.

use crate::providers::ProviderError;

macro_rules! reasons {
    (
        $($(#[$doc:meta])* $v:ident,)*
        // Reasons that exist only in builds with the `test-hooks` feature.
        @test_hooks { $($(#[$hdoc:meta])* $h:ident,)* }
    ) => {
        /// A condition or Event reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $v,)*
            $(#[cfg(feature = "test-hooks")] $(#[$hdoc])* $h,)*
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &'static [Reason] = &[
                $(Reason::$v,)*
                $(#[cfg(feature = "test-hooks")] Reason::$h,)*
            ];

            /// The CamelCase name written to conditions, Events and metric labels.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$v => stringify!($v),)*
                    $(#[cfg(feature = "test-hooks")] Reason::$h => stringify!($h),)*
                }
            }
        }
    };
}

reasons! {
    // Ready conditions of ApiKeys.
    /// The key is live and its value is in the Secret.
    KeyActive,
    /// A field changed that the provider cannot change on an existing key.
    NewKeyNeeded,
    /// The spec sets something the provider cannot honour.
    UnsupportedField,
    /// A value is malformed.
    InvalidSpec,
    /// The target Secret exists and keysmith did not create it.
    SecretConflict,
    /// The `spec.source` Secret (or its key) is missing.
    SourceNotFound,
    /// The provider object does not exist.
    ProviderRefNotFound,
    /// The provider object does not admit the namespace, or is not served.
    ProviderNotAllowed,
    /// A credentials Secret (or its key) is missing.
    CredentialsNotFound,
    /// The provider object is malformed.
    InvalidProvider,
    /// The key was rotated outside keysmith and the Secret's value is stale (also an Event,
    /// then also when keysmith wrote the provider's new value or rotated to a new key).
    RotatedOutside,
    /// Provider objects: the provider accepted the credentials.
    CredentialsVerified,
    /// The provider refused the credentials.
    ProviderAuthFailed,
    /// The provider refused the request.
    ProviderRejected,
    /// The key does not exist at the provider.
    ProviderNotFound,
    /// The provider answered 429.
    RateLimited,
    /// The provider is down, slow or answered garbage.
    ProviderUnavailable,
    /// The operation does not exist at the provider.
    UnsupportedOperation,
    /// An interrupted create may still reach the provider; keysmith waits before creating again.
    RecoveringCreate,
    /// The Kubernetes API failed.
    KubernetesError,
    /// The API server refuses to write the Secret (quota, admission webhook, validation).
    SecretWriteRefused,
    /// Creates failed repeatedly; keysmith waits (`status.createBackoff`) before the next one.
    CreateBackoff,
    /// The ApiKey sent the creates `createLimit.perApiKeyPerHour` allows in an hour
    /// (`status.recentCreates`); the next waits until the oldest leaves the hour.
    CreateBudgetExhausted,
    /// The namespace used its share of the provider object's create rate
    /// (`createLimit.perSecond`, split between the namespaces creating); retried shortly.
    CreateThrottled,
    /// `spec.keyRef` names a key keysmith may not adopt (another ApiKey manages it, or the
    /// provider object does not allow adoption for this namespace).
    AdoptionRefused,
    /// A bug: the reconcile panicked. It was contained and is retried with backoff.
    InternalError,
    /// The leader Lease expires before a create could finish: it waits for the next renewal.
    LeaseExpiring,
    /// Internal: a conditional write found a newer ApiKey; never shown in a condition.
    Conflict,
    // Events.
    /// A key was created.
    KeyCreated,
    /// An existing key was taken over (`spec.keyRef`).
    KeyAdopted,
    /// An adopted key was regenerated to obtain its value.
    KeyRegenerated,
    /// A user-owned value was pushed (`spec.source`).
    KeyPushed,
    /// Settings of the key were updated in place.
    KeyUpdated,
    /// A key created under its provisional name could not be given its display name yet
    /// (Warning; retried).
    KeyRenameFailed,
    /// A new key replaced the old one.
    KeyReplaced,
    /// A key was revoked.
    KeyRevoked,
    /// A key was left at the provider (`deletionPolicy: Orphan`).
    KeyOrphaned,
    /// The key no longer exists at the provider.
    KeyMissing,
    /// A key created by an interrupted attempt was revoked.
    OrphanRevoked,
    /// The Secret lost the key's value and the provider cannot give it back.
    SecretLost,
    /// The Secret was restored from the provider's copy of the value.
    SecretRestored,
    /// The key was rotated: a new value is in the Secret.
    KeyRotated,
    /// A replaced key was revoked after its grace period.
    PreviousKeyRevoked,
    /// rolloutRestartTargets were restarted after a new value.
    RestartTriggered,
    /// A rolloutRestartTarget does not exist or could not be patched.
    RestartTargetMissing,
    /// A `keysmith.dev/rotate` request that cannot be honoured (a pushed key).
    RotationIgnored,
    /// A rotation waits: the ApiKey spent its create budget (`createLimit.perApiKeyPerHour`).
    /// It runs when the budget allows, it is not dropped.
    RotationDeferred,
    /// The spend of the limit's period reached one of `spec.alerts.usageThresholds`.
    UsageHigh,
    /// The key expires within `spec.rotation.renewBefore` (7 days when nothing renews it) and
    /// no rotation is planned before then.
    ExpiringSoon,
    // Provider objects: `CredentialsExpiring` (condition and Event).
    /// The management credentials expire within 7 days.
    CredentialsExpiring,
    /// The management credentials expire later than 7 days from now, or never.
    CredentialsNotExpiring,
    /// The provider does not tell when the management credentials expire.
    CredentialsExpiryNotExposed,
    // KeyBudgets and ClusterKeyBudgets (conditions and Events).
    /// The budget's spend was added up from the providers' listings.
    BudgetCounted,
    /// The budget reached one of its thresholds in this period (once per period each).
    BudgetThresholdReached,
    /// The budget's spend reached its amount in this period.
    BudgetExceeded,
    /// A new period began: thresholds, throttles and disables reset.
    BudgetPeriodReset,
    /// A budget changed a key's limit or enabled state at the provider (`onExceeded`).
    BudgetEnforced,
    @test_hooks {
        /// A simulated crash right after a create.
        Crashed,
    }
}

impl Reason {
    /// The reasons a `Ready` condition of an ApiKey or provider object can carry (the README table).
    pub const CONDITIONS: &'static [Reason] = &[
        Reason::KeyActive,
        Reason::NewKeyNeeded,
        Reason::UnsupportedField,
        Reason::InvalidSpec,
        Reason::SecretConflict,
        Reason::SourceNotFound,
        Reason::ProviderRefNotFound,
        Reason::ProviderNotAllowed,
        Reason::CredentialsNotFound,
        Reason::InvalidProvider,
        Reason::RotatedOutside,
        Reason::CredentialsVerified,
        Reason::ProviderAuthFailed,
        Reason::ProviderRejected,
        Reason::ProviderNotFound,
        Reason::RateLimited,
        Reason::ProviderUnavailable,
        Reason::UnsupportedOperation,
        Reason::RecoveringCreate,
        Reason::KubernetesError,
        Reason::SecretWriteRefused,
        Reason::CreateBackoff,
        Reason::CreateBudgetExhausted,
        Reason::CreateThrottled,
        Reason::AdoptionRefused,
        Reason::InternalError,
        Reason::LeaseExpiring,
    ];

    /// The reason named `s` (a reason recorded in a status, e.g. `createBackoff.lastFailure`).
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

/// The reason a provider error surfaces as.
impl From<&ProviderError> for Reason {
    fn from(e: &ProviderError) -> Reason {
        match e {
            ProviderError::Auth(_) => Reason::ProviderAuthFailed,
            ProviderError::Rejected(_) => Reason::ProviderRejected,
            ProviderError::NotFound(_) => Reason::ProviderNotFound,
            ProviderError::RateLimited { .. } => Reason::RateLimited,
            // A revoke not confirmed is transient like an outage: the revoke is tried again.
            ProviderError::Unavailable(_)
            | ProviderError::Malformed(_)
            | ProviderError::Unconfirmed(_) => Reason::ProviderUnavailable,
            ProviderError::Unsupported(_) => Reason::UnsupportedOperation,
            // Nothing was sent: the provider object's base URL is what the policy refuses.
            ProviderError::Refused(_) => Reason::InvalidProvider,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_provider_error_has_a_condition_reason() {
        let s = String::new;
        let errors = [
            (ProviderError::Auth(s()), Reason::ProviderAuthFailed),
            (ProviderError::Rejected(s()), Reason::ProviderRejected),
            (ProviderError::NotFound(s()), Reason::ProviderNotFound),
            (
                ProviderError::RateLimited { retry_after: None },
                Reason::RateLimited,
            ),
            (ProviderError::Unavailable(s()), Reason::ProviderUnavailable),
            (ProviderError::Malformed(s()), Reason::ProviderUnavailable),
            (
                ProviderError::Unsupported(s()),
                Reason::UnsupportedOperation,
            ),
            (ProviderError::Unconfirmed(s()), Reason::ProviderUnavailable),
            (ProviderError::Refused(s()), Reason::InvalidProvider),
        ];
        for (e, want) in errors {
            let r = Reason::from(&e);
            assert_eq!(r, want, "{e:?}");
            assert!(
                Reason::CONDITIONS.contains(&r),
                "{r} is not a condition reason"
            );
        }
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let names: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
    }

    /// The README's reason table lists exactly the condition reasons.
    #[test]
    fn readme_reason_table_matches_the_enum() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("| reason | meaning |")
            .expect("README has a reason table");
        let documented: BTreeSet<String> = readme[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .flat_map(|l| {
                let first = l.split('|').nth(1).unwrap_or_default();
                first
                    .split('/')
                    .map(|s| s.trim().trim_matches('`').to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let wanted: BTreeSet<String> = Reason::CONDITIONS
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        assert_eq!(
            documented, wanted,
            "README reason table and Reason::CONDITIONS differ"
        );
    }
}
