//! The two ways a reconcile ends badly: an [`Error`] (the controller retries, `error_policy`
//! counts it by [`Error::category`]) and a [`Failure`] (reported in the Ready condition).

use std::time::Duration;

use super::reasons::Reason;
use crate::providers::ProviderError;

/// Errors that end a reconcile early (everything a person can act on goes into conditions
/// instead and the reconcile returns Ok).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer error: {0}")]
    Finalizer(String),
    /// Deletion could not revoke the key; the finalizer stays until it can.
    #[error("finalizer error: revoke failed: {0}")]
    RevokeFailed(Reason),
    /// The reconcile panicked (a bug); contained and reported on the object.
    #[error("internal error: the reconcile panicked")]
    Panicked,
    /// The leader Lease ran out (or could not be renewed in time): the reconcile was cancelled.
    #[error("the leader Lease ran out; reconcile cancelled")]
    LeaseLost,
}

impl Error {
    /// A static label for metrics and logs (never object names or error text).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => Reason::KubernetesError.as_str(),
            Error::Finalizer(_) => "FinalizerError",
            Error::RevokeFailed(r) => r.as_str(),
            Error::Panicked => Reason::InternalError.as_str(),
            Error::LeaseLost => Reason::LeaseExpiring.as_str(),
        }
    }
}

/// Why a reconcile could not reach Ready.
#[derive(Debug)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    pub transient: bool,
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure only an edit (or a change of the provider object) fixes.
    pub fn permanent(reason: Reason, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
            transient: false,
            retry_after: None,
        }
    }

    /// A failure that resolves by itself; retried after `retry_after`, or with backoff.
    pub fn transient(
        reason: Reason,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Failure {
            reason,
            message: message.into(),
            transient: true,
            retry_after,
        }
    }

    /// Whether this failure only says the reconcile worked from a stale copy of the ApiKey.
    pub fn is_stale(&self) -> bool {
        self.reason == Reason::Conflict
    }
}

/// A write refused because the object changed since it was read (not a create that found the
/// object existing, which is also a 409).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict")
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        let retry_after = match &e {
            ProviderError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        Failure {
            reason: Reason::from(&e),
            transient: e.is_transient(),
            message: e.to_string(),
            retry_after,
        }
    }
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        let reason = if is_conflict(&e) {
            Reason::Conflict
        } else {
            Reason::KubernetesError
        };
        Failure::transient(reason, format!("Kubernetes API error: {e}"), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("x", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn categories_are_static_labels() {
        assert_eq!(
            Error::Kube(api_error(500, "InternalError")).category(),
            "KubernetesError"
        );
        assert_eq!(
            Error::RevokeFailed(Reason::ProviderUnavailable).category(),
            "ProviderUnavailable"
        );
        assert_eq!(Error::Finalizer("x".into()).category(), "FinalizerError");
    }

    #[test]
    fn only_a_version_conflict_is_stale() {
        assert!(Failure::from(api_error(409, "Conflict")).is_stale());
        assert!(!Failure::from(api_error(409, "AlreadyExists")).is_stale());
        let f = Failure::from(ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(f.reason, Reason::RateLimited);
        assert!(f.transient);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
    }
}
