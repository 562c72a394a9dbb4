//! Listing snapshots: the provider's keys of one provider object and scope, listed at most once
//! per refresh interval and shared by every ApiKey of that provider object (batched usage refresh).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::backends::ResolvedProvider;
use super::context::Context;
use crate::providers::{KeyScope, ProviderError, ProviderKey};

/// One listing, shared by the reconciles of a provider object and scope.
pub type SnapshotSlot = Arc<tokio::sync::Mutex<Snapshot>>;

/// The provider's keys of one scope as last listed.
#[derive(Default)]
pub struct Snapshot {
    /// When the listing finished.
    pub fetched: Option<Instant>,
    /// When the listing began (wall clock): it shows every key created before then.
    pub began: Option<DateTime<Utc>>,
    /// Boxed: a hash table reserves room for more entries than it holds, and a `ProviderKey`
    /// is over 400 bytes (issue 11: memory at 10,000 keys).
    pub keys: HashMap<String, Box<ProviderKey>>,
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
        self.listing_where(p, scope, |s| {
            s.fetched.is_some_and(|t| t.elapsed() < max_age)
        })
        .await
    }

    /// The provider's keys of `scope` as a listing begun at or after `since` shows them: the
    /// shared snapshot if it is that recent, else a new listing (crash recovery: one listing
    /// begun after the interrupted creates settled serves the recovery of all of them).
    pub async fn listing_since(
        &self,
        p: &ResolvedProvider,
        scope: &KeyScope,
        since: DateTime<Utc>,
    ) -> Result<SnapshotSlot, ProviderError> {
        self.listing_where(p, scope, |s| s.began.is_some_and(|b| b >= since))
            .await
    }

    async fn listing_where(
        &self,
        p: &ResolvedProvider,
        scope: &KeyScope,
        recent_enough: impl Fn(&Snapshot) -> bool,
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
            if !recent_enough(&snap) {
                let began = Utc::now();
                list_into(p, scope, &mut snap.keys).await?;
                snap.fetched = Some(Instant::now());
                snap.began = Some(began);
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
            snap.keys.insert(k.id.clone(), Box::new(k));
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

/// Every page of the provider's keys of `scope`, written over `keys` in place: a key listed is
/// updated (its allocation reused), a key no longer listed is dropped at the end. Building a new
/// map instead held two snapshots at once during every refresh, +9 MiB at 10,000 keys (issue
/// 11). A listing that fails half-way leaves some entries newer and none removed; the snapshot's
/// `fetched` is not advanced, so the next caller lists again.
async fn list_into(
    p: &ResolvedProvider,
    scope: &KeyScope,
    keys: &mut HashMap<String, Box<ProviderKey>>,
) -> Result<(), ProviderError> {
    let mut seen = HashSet::with_capacity(keys.len());
    let mut cursor: Option<String> = None;
    loop {
        let page = p.backend.list_page(scope, cursor.as_deref()).await?;
        for k in page.keys {
            seen.insert(k.id.clone());
            match keys.get_mut(&k.id) {
                Some(entry) => **entry = k,
                None => {
                    keys.insert(k.id.clone(), Box::new(k));
                }
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    keys.retain(|id, _| seen.contains(id));
    Ok(())
}
