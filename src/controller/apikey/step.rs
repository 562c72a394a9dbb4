//! What every step of one ApiKey reconcile works with: the handles ([`Reconciler`]), the
//! reconcile's [`Step`] (built once, after the target Secret was read), and what one reconcile knows of the server's copy
//! ([`ServerCopy`]). It imports no step but [`super::validate`] (pure).

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;

use super::validate::ValidatedApiKey;
use crate::api::{ApiKey, ApiKeyStatus};
use crate::controller::backends::ResolvedProvider;
use crate::controller::context::Context;
use crate::controller::reasons::Reason;
use crate::metrics::ProviderLabel;
use kube::ResourceExt;

/// The handles every step of one reconcile works with.
#[derive(Clone, Copy)]
pub struct Reconciler<'a> {
    pub ak: &'a ApiKey,
    pub ctx: &'a Context,
    pub p: &'a ResolvedProvider,
    /// The server's copy as this reconcile knows it (status writes are conditional on it).
    pub seen: &'a ServerCopy,
}

impl Reconciler<'_> {
    /// Publish an Event about the ApiKey.
    pub async fn event(&self, type_: EventType, reason: Reason, action: &str, note: String) {
        self.ctx.event(self.ak, type_, reason, action, note).await;
    }

    /// The metric label of the provider.
    pub fn label(&self) -> ProviderLabel {
        ProviderLabel {
            provider: self.p.provider_type.to_string(),
        }
    }
}

/// What every step after validation works on, built once per reconcile: the handles, what the
/// ApiKey asks for, and the target Secret as it was read before any step wrote it.
pub struct Step<'a> {
    pub r: Reconciler<'a>,
    /// The validated spec: the key's desired settings and where a new key goes.
    pub v: ValidatedApiKey,
    /// The Secret the value goes to, if it exists (never read for a pushed key: its value
    /// comes from the user's Secret and goes to no Secret of keysmith's).
    pub existing: Option<Secret>,
}

impl<'a> std::ops::Deref for Step<'a> {
    type Target = Reconciler<'a>;

    fn deref(&self) -> &Reconciler<'a> {
        &self.r
    }
}

/// What one reconcile knows of the server's copy of its ApiKey: the resourceVersion it read or
/// last wrote, and the status it last wrote.
///
/// The controller hands `reconcile` the object from its watch cache, which can lag behind the
/// API server: a reconcile triggered by the Secret watch may run before the ApiKey watch has
/// delivered the status written by the previous reconcile. Writing from such a stale copy would
/// overwrite a newer `keyID` or `pendingCreate` (losing track of a live key), and creating from
/// it would mint a second key for the same ApiKey (invariant 1). So every status write of a
/// reconcile is conditional on this version (409 Conflict otherwise) and advances it.
///
/// The status last written is what the final write of the reconcile must be compared with: a
/// reconcile that wrote the pendingCreate marker and then cleared it again (a refused create)
/// ends with the status it read, yet the server holds the marker.
pub struct ServerCopy(std::sync::Mutex<(Option<String>, Option<ApiKeyStatus>)>);

impl ServerCopy {
    pub fn of(ak: &ApiKey) -> Self {
        ServerCopy(std::sync::Mutex::new((ak.resource_version(), None)))
    }

    pub(super) fn resource_version(&self) -> Option<String> {
        self.0.lock().unwrap().0.clone()
    }

    pub(super) fn wrote(&self, resource_version: Option<String>, status: &ApiKeyStatus) {
        *self.0.lock().unwrap() = (resource_version, Some(status.clone()));
    }

    /// Whether the server's status differs from `st`; `read` is the status the reconcile began with.
    pub fn differs(&self, st: &ApiKeyStatus, read: &ApiKeyStatus) -> bool {
        self.0.lock().unwrap().1.as_ref().unwrap_or(read) != st
    }
}

/// `namespace/name` of an ApiKey.
pub(crate) fn object_key(ak: &ApiKey) -> String {
    format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any())
}
