//! Listing snapshots: the provider's keys of one provider object and scope, listed at most once
//! per refresh interval and shared by every ApiKey of that provider object (batched usage refresh).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backends::ResolvedProvider;
use super::context::Context;
use crate::providers::{KeyScope, ProviderError, ProviderKey};

/// One listing, shared by the reconciles of a provider object and scope.
pub type SnapshotSlot = Arc<tokio::sync::Mutex<Snapshot>>;

/// The provider's keys of one scope as last listed.
#[derive(Default)]
pub struct Snapshot {
    pub fetched: Option<Instant>,
    pub keys: HashMap<String, ProviderKey>,
}

impl Context {
    /// The provider's keys of `scope`, listed at most once per `max_age` for all ApiKeys of the
    /// provider object (concurrent callers wait for one listing).
    pub async fn listing(
        &self,
        p: &ResolvedProvider,
        scope: &KeyScope,
        max_age: Duration,
    ) -> Result<SnapshotSlot, ProviderError> {
        let slot = self
            .snapshots
            .lock()
            .unwrap()
            .entry((p.id.clone(), scope.clone()))
            .or_default()
            .clone();
        {
            let mut snap = slot.lock().await;
            if snap.fetched.is_none_or(|t| t.elapsed() >= max_age) {
                snap.keys = list_all(p, scope).await?;
                snap.fetched = Some(Instant::now());
            }
        }
        Ok(slot)
    }

    /// Record a key's latest state in the snapshot of its scope, if one exists.
    pub async fn remember(&self, p: &ResolvedProvider, scope: &KeyScope, key: &ProviderKey) {
        if let Some(slot) = self.slot(p, scope) {
            let mut snap = slot.lock().await;
            let mut k = key.clone();
            k.secret = None;
            snap.keys.insert(k.id.clone(), k);
        }
    }

    /// Drop a key from the snapshot of its scope (after revoking it).
    pub async fn forget_key(&self, p: &ResolvedProvider, scope: &KeyScope, id: &str) {
        if let Some(slot) = self.slot(p, scope) {
            slot.lock().await.keys.remove(id);
        }
    }

    fn slot(&self, p: &ResolvedProvider, scope: &KeyScope) -> Option<SnapshotSlot> {
        self.snapshots
            .lock()
            .unwrap()
            .get(&(p.id.clone(), scope.clone()))
            .cloned()
    }
}

/// Every page of the provider's keys of `scope`.
async fn list_all(
    p: &ResolvedProvider,
    scope: &KeyScope,
) -> Result<HashMap<String, ProviderKey>, ProviderError> {
    let mut keys = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = p.backend.list_page(scope, cursor.as_deref()).await?;
        for k in page.keys {
            keys.insert(k.id.clone(), k);
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(keys),
        }
    }
}
