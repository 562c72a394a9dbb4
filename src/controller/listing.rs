//! Listing snapshots ([`Listings`]): the provider's keys of one provider object and scope, listed
//! at most once per refresh interval and shared by every ApiKey of that provider object (batched
//! usage refresh). Dropped with the provider object ([`Listings::forget`]) or when its settings or
//! credentials change, and after [`IDLE_SNAPSHOT`] unused.
//!
//! Every listing is bounded (issue 17): at most [`crate::providers::http::MAX_PAGES`] pages with
//! no repeated cursor (the [`Pages`] guard), at most [`MAX_SNAPSHOT_KEYS`] distinct keys and
//! about [`MAX_SNAPSHOT_BYTES`] of them, and at most [`MAX_LISTING_TIME`]. A listing that runs
//! past a bound fails with a message naming the bound, its snapshot is emptied (the memory goes
//! back), and the failure is served to every caller for [`BOUND_FAILURE_HOLD`] instead of
//! listing again: a provider that pages forever costs one bounded listing per hold.
//!
//! Two locks per snapshot: `refresh`, held by the one caller that lists (and keeping the last
//! failure), and the snapshot's own data lock, taken only to apply one page or to read. A
//! refresh therefore never blocks the readers of a snapshot that already holds a listing: they
//! read it (some entries already newer) instead of waiting for the provider. Callers without a
//! listing to read wait for the one in flight at most [`MAX_WAIT`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::backends::ResolvedProvider;
use crate::providers::{KeyScope, Pages, ProviderError, ProviderKey};

/// Most distinct keys one listing (one provider object and scope) may hold: twice the largest
/// deployment measured (10,000 ApiKeys on one provider, docs/performance.md).
pub const MAX_SNAPSHOT_KEYS: usize = 20_000;
/// Most bytes (estimated, see [`approx_size`]) the keys of one listing may hold.
pub const MAX_SNAPSHOT_BYTES: usize = 24 << 20;
/// Longest one listing may take, all pages together (a provider that answers slowly forever).
pub const MAX_LISTING_TIME: Duration = Duration::from_secs(300);
/// Longest a caller without a listing to read waits for the listing in flight.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a listing that ran past a bound is answered from its failure, not listed again.
pub const BOUND_FAILURE_HOLD: Duration = Duration::from_secs(60);
/// Snapshots unused this long are dropped (scopes come from tenants' specs: a workspace or agent
/// named once must not keep its listing forever).
pub const IDLE_SNAPSHOT: Duration = Duration::from_secs(3600);

/// One listing, shared by the reconciles of a provider object and scope.
pub type SnapshotSlot = Arc<tokio::sync::Mutex<Snapshot>>;

/// A snapshot and the lock of whoever refreshes it (see the module documentation).
#[derive(Default)]
pub struct Listing {
    data: SnapshotSlot,
    /// Held while listing; holds the last failed listing: when, and what it answered.
    refresh: tokio::sync::Mutex<Option<(Instant, ProviderError, bool)>>,
    /// Last time a reconcile asked for this snapshot.
    used: std::sync::Mutex<Option<Instant>>,
}

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

/// Heap and inline bytes a listed key costs in a snapshot, about.
pub fn approx_size(k: &ProviderKey) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let list = |l: &Option<Vec<String>>| {
        l.as_ref()
            .map_or(0, |v| v.iter().map(|s| s.len() + 24).sum::<usize>())
    };
    std::mem::size_of::<ProviderKey>()
        + 2 * k.id.len() // the map's key and the key's own id
        + k.name.len()
        + opt(&k.hint)
        + opt(&k.attempt)
        + list(&k.observed.allowed_ips)
        + list(&k.observed.models)
        + k.extras.iter().map(|(a, b)| a.len() + b.len() + 48).sum::<usize>()
        + 64 // the map entry and the box
}

/// Every listing kept, per provider object and scope.
#[derive(Default)]
pub struct Listings {
    snapshots: Mutex<HashMap<(String, KeyScope), Arc<Listing>>>,
}

impl std::fmt::Debug for Listings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listings").finish_non_exhaustive()
    }
}

impl Listings {
    /// The provider's keys of `scope`, listed at most once per `max_age` for all ApiKeys of the
    /// provider object (concurrent callers wait for one listing; while a listing refreshes a
    /// snapshot, callers read the snapshot as it is).
    pub async fn get(
        &self,
        p: &ResolvedProvider,
        scope: &KeyScope,
        max_age: Duration,
    ) -> Result<SnapshotSlot, ProviderError> {
        self.listing_where(
            p,
            scope,
            |s| s.fetched.is_some_and(|t| t.elapsed() < max_age),
            true,
        )
        .await
    }

    /// The provider's keys of `scope` as a listing begun at or after `since` shows them: the
    /// shared snapshot if it is that recent, else a new listing (crash recovery: one listing
    /// begun after the interrupted creates settled serves the recovery of all of them).
    pub async fn since(
        &self,
        p: &ResolvedProvider,
        scope: &KeyScope,
        since: DateTime<Utc>,
    ) -> Result<SnapshotSlot, ProviderError> {
        self.listing_where(p, scope, |s| s.began.is_some_and(|b| b >= since), false)
            .await
    }

    /// `stale_ok`: while another caller refreshes, a snapshot that holds a listing will do.
    async fn listing_where(
        &self,
        p: &ResolvedProvider,
        scope: &KeyScope,
        recent_enough: impl Fn(&Snapshot) -> bool,
        stale_ok: bool,
    ) -> Result<SnapshotSlot, ProviderError> {
        let asked = Instant::now();
        let entry = self.listing_entry(p, scope);
        {
            let snap = entry.data.lock().await;
            if recent_enough(&snap) {
                return Ok(entry.data.clone());
            }
        }
        let mut refresh = match entry.refresh.try_lock() {
            Ok(g) => g,
            Err(_) => {
                if stale_ok && entry.data.lock().await.fetched.is_some() {
                    return Ok(entry.data.clone());
                }
                match tokio::time::timeout(MAX_WAIT, entry.refresh.lock()).await {
                    Ok(g) => g,
                    Err(_) => {
                        return Err(ProviderError::Unavailable(format!(
                            "a listing of the provider's keys has been running for over {}s",
                            MAX_WAIT.as_secs()
                        )))
                    }
                }
            }
        };
        // A listing that failed while this caller waited answers it too; one that ran past a
        // bound answers everyone for a while.
        if let Some((at, e, bound)) = refresh.as_ref() {
            if *at >= asked || (*bound && at.elapsed() < BOUND_FAILURE_HOLD) {
                return Err(e.clone());
            }
        }
        if recent_enough(&*entry.data.lock().await) {
            return Ok(entry.data.clone());
        }
        let began = Utc::now();
        let listed = tokio::time::timeout(MAX_LISTING_TIME, list_into(p, scope, &entry.data))
            .await
            .unwrap_or_else(|_| {
                Err((
                    ProviderError::Unavailable(format!(
                        "the listing of the provider's keys did not finish within {}s",
                        MAX_LISTING_TIME.as_secs()
                    )),
                    true,
                ))
            });
        match listed {
            Ok(()) => {
                *refresh = None;
                let mut snap = entry.data.lock().await;
                snap.fetched = Some(Instant::now());
                snap.began = Some(began);
                Ok(entry.data.clone())
            }
            Err((e, bound)) => {
                if bound {
                    // Give the memory back: nothing of an unbounded listing is kept.
                    let mut snap = entry.data.lock().await;
                    snap.keys = HashMap::new();
                    snap.fetched = None;
                    snap.began = None;
                    tracing::warn!(provider = %p.id, error = %e, "listing stopped at a bound");
                }
                *refresh = Some((Instant::now(), e.clone(), bound));
                Err(e)
            }
        }
    }

    /// The listing entry of a provider object and scope, created if missing; drops entries
    /// nobody used for [`IDLE_SNAPSHOT`].
    pub(crate) fn listing_entry(&self, p: &ResolvedProvider, scope: &KeyScope) -> Arc<Listing> {
        let now = Instant::now();
        let mut all = self.snapshots.lock().unwrap();
        let entry = all
            .entry((p.id.clone(), scope.clone()))
            .or_default()
            .clone();
        *entry.used.lock().unwrap() = Some(now);
        if all.len() > 1 {
            all.retain(|_, l| {
                Arc::strong_count(l) > 1
                    || l.used
                        .lock()
                        .unwrap()
                        .is_some_and(|t| now.duration_since(t) < IDLE_SNAPSHOT)
            });
        }
        entry
    }

    /// Record a key's latest state in the snapshot of its scope, if one exists.
    pub async fn remember(&self, p: &ResolvedProvider, scope: &KeyScope, key: &ProviderKey) {
        if let Some(slot) = self.slot(p, scope) {
            let mut snap = slot.lock().await;
            if snap.fetched.is_none() && snap.keys.is_empty() {
                // No listing holds this scope (never listed, or dropped at a bound).
                return;
            }
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

    /// Drop every snapshot of a provider object (it was deleted, or its settings changed).
    pub fn forget(&self, provider_id: &str) {
        self.snapshots
            .lock()
            .unwrap()
            .retain(|(pid, _), _| pid != provider_id);
    }

    /// The provider objects with a snapshot.
    pub fn providers(&self) -> Vec<String> {
        let all = self.snapshots.lock().unwrap();
        let ids: std::collections::BTreeSet<&String> = all.keys().map(|(id, _)| id).collect();
        ids.into_iter().cloned().collect()
    }

    /// How many snapshots are kept (tests count them).
    pub fn len(&self) -> usize {
        self.snapshots.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, p: &ResolvedProvider, scope: &KeyScope) -> Option<SnapshotSlot> {
        self.snapshots
            .lock()
            .unwrap()
            .get(&(p.id.clone(), scope.clone()))
            .map(|l| l.data.clone())
    }
}

/// Pages in a row that hold only keys the listing already gave before it is taken for a loop.
/// Each create that lands between two page requests of an offset-paged provider (OpenRouter,
/// newest first) shifts one already-listed key onto the next page: with a slow provider and
/// creates in flight from another replica, three such pages in a row were seen in the e2e
/// suite (a listing failed with `ProviderUnavailable`). Ten in a row takes ten creates landing
/// one per page request; a provider that ignores the cursor is still caught within ten pages
/// (and by the page, key and time bounds in any case).
const MAX_REPEATED_PAGES: usize = 10;

/// Every page of the provider's keys of `scope`, written over `keys` in place: a key listed is
/// updated (its allocation reused), a key no longer listed is dropped at the end. Building a new
/// map instead held two snapshots at once during every refresh, +9 MiB at 10,000 keys (issue
/// 11). A listing that fails half-way leaves some entries newer and none removed; the snapshot's
/// `fetched` is not advanced, so the next caller lists again. The data lock is taken per page,
/// never across a provider call.
///
/// The error says whether a bound stopped the listing (`true`) rather than the provider.
async fn list_into(
    p: &ResolvedProvider,
    scope: &KeyScope,
    data: &SnapshotSlot,
) -> Result<(), (ProviderError, bool)> {
    let mut seen = HashSet::new();
    let mut bytes = 0usize;
    let mut repeats = 0usize;
    let mut pages = Pages::default();
    let mut cursor: Option<String> = None;
    loop {
        let page = p
            .backend
            .list_page(scope, cursor.as_deref())
            .await
            .map_err(|e| (e, false))?;
        let repeated = !page.keys.is_empty() && page.keys.iter().all(|k| seen.contains(&k.id));
        // An offset-paged provider (OpenRouter) shifts its pages when a key is created during
        // the listing, so a page of keys already seen happens now and then; several in a row
        // under changing cursors are a loop the cursor check cannot see.
        repeats = if repeated { repeats + 1 } else { 0 };
        if repeats >= MAX_REPEATED_PAGES && page.next.is_some() {
            return Err((
                ProviderError::Malformed(format!(
                    "the listing repeated a page of keys it had already given (page {})",
                    pages.count() + 1
                )),
                true,
            ));
        }
        {
            let mut snap = data.lock().await;
            for k in page.keys {
                if !seen.contains(&k.id) {
                    bytes += approx_size(&k);
                    if seen.len() >= MAX_SNAPSHOT_KEYS || bytes > MAX_SNAPSHOT_BYTES {
                        return Err((
                            ProviderError::Malformed(format!(
                                "the listing exceeded {MAX_SNAPSHOT_KEYS} keys or {} MiB (keysmith's bound per provider object and scope) after {} pages",
                                MAX_SNAPSHOT_BYTES >> 20,
                                pages_taken(&pages) + 1
                            )),
                            true,
                        ));
                    }
                    seen.insert(k.id.clone());
                }
                match snap.keys.get_mut(&k.id) {
                    Some(entry) => **entry = k,
                    None => {
                        snap.keys.insert(k.id.clone(), Box::new(k));
                    }
                }
            }
        }
        match pages.next(page.next) {
            Ok(Some(n)) => cursor = Some(n),
            Ok(None) => break,
            Err(e) => return Err((e, true)),
        }
    }
    data.lock().await.keys.retain(|id, _| seen.contains(id));
    Ok(())
}

/// Pages a guard has let through (for messages).
fn pages_taken(p: &Pages) -> usize {
    p.count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProviderType;
    use crate::providers::{
        Capabilities, CreatedKey, Field, KeyBackend, KeyPage, KeySettings, ProviderKey,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ctx() -> Listings {
        Listings::default()
    }

    #[derive(Clone, Copy)]
    enum Shape {
        /// `n` keys in pages of 100, then the end.
        Finite(usize),
        /// Every page 100 fresh keys and a fresh cursor.
        Forever,
        /// The same cursor every time.
        SameCursor,
        /// The same keys every time, under a new cursor.
        SamePage,
        /// Pages that take `ms` each, forever.
        Slow(u64),
        /// Offset pages shifted by a key created during the listing: 20 keys, then a page
        /// holding only the last of them again (under a new offset), then the end.
        Shifted,
    }

    struct Fake {
        shape: Shape,
        pages: AtomicUsize,
        caps: Capabilities,
    }

    fn key(i: usize) -> ProviderKey {
        ProviderKey {
            id: format!("{i:064x}"),
            name: format!("team-a/key-{i}"),
            active: true,
            ..Default::default()
        }
    }

    #[async_trait::async_trait]
    impl KeyBackend for Fake {
        fn provider(&self) -> ProviderType {
            ProviderType::OpenRouter
        }
        fn capabilities(&self) -> &Capabilities {
            &self.caps
        }
        async fn verify(&self) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn create(&self, _: &KeySettings) -> Result<CreatedKey, ProviderError> {
            Err(ProviderError::Unsupported("fake".into()))
        }
        async fn list_page(
            &self,
            _: &KeyScope,
            cursor: Option<&str>,
        ) -> Result<KeyPage, ProviderError> {
            let n = self.pages.fetch_add(1, Ordering::SeqCst);
            let start: usize = cursor.map_or(0, |c| c.parse().unwrap_or(0));
            let page = |end: usize, next: Option<String>| KeyPage {
                keys: (start..end).map(key).collect(),
                next,
            };
            Ok(match self.shape {
                Shape::Finite(total) => {
                    let end = (start + 100).min(total);
                    page(end, (end < total).then(|| end.to_string()))
                }
                Shape::Forever => page(start + 100, Some((start + 100).to_string())),
                Shape::Shifted => match start {
                    0 => page(20, Some("20".into())),
                    20 => KeyPage {
                        keys: vec![key(19)],
                        next: Some("21".into()),
                    },
                    _ => page(start, None),
                },
                Shape::SamePage => KeyPage {
                    keys: (0..100).map(key).collect(),
                    next: Some((start + 100).to_string()),
                },
                Shape::SameCursor => KeyPage {
                    keys: (n * 100..n * 100 + 100).map(key).collect(),
                    next: Some("again".into()),
                },
                Shape::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    page(start + 1, Some((start + 1).to_string()))
                }
            })
        }
        async fn update(
            &self,
            _: &KeyScope,
            _: &str,
            _: &KeySettings,
            _: &[Field],
        ) -> Result<ProviderKey, ProviderError> {
            Err(ProviderError::Unsupported("fake".into()))
        }
        async fn revoke(&self, _: &KeyScope, _: &str) -> Result<(), ProviderError> {
            Err(ProviderError::Unsupported("fake".into()))
        }
    }

    fn provider(id: &str, shape: Shape) -> (ResolvedProvider, Arc<Fake>) {
        let fake = Arc::new(Fake {
            shape,
            pages: AtomicUsize::new(0),
            caps: Capabilities {
                mint: false,
                adopt: crate::providers::AdoptMode::No,
                push: false,
                supported: &[],
                mutable: &[],
                secret_readable: false,
                rotation: crate::providers::RotationStrategy::MINT,
            },
        });
        let p = ResolvedProvider {
            id: id.into(),
            provider_type: ProviderType::OpenRouter,
            backend: fake.clone(),
            refresh_interval: Duration::from_secs(300),
            create_limits: Default::default(),
        };
        (p, fake)
    }

    #[tokio::test]
    async fn a_finite_listing_is_kept_and_shared() {
        let c = ctx();
        let (p, fake) = provider("ClusterKeyProvider/ok", Shape::Finite(250));
        let scope = KeyScope::default();
        let slot = c.get(&p, &scope, Duration::from_secs(60)).await.unwrap();
        assert_eq!(slot.lock().await.keys.len(), 250);
        c.get(&p, &scope, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            fake.pages.load(Ordering::SeqCst),
            3,
            "one listing of 3 pages"
        );
    }

    /// Issue 17: a provider that pages forever with fresh keys. Before: the loop never ended and
    /// the snapshot grew without bound (1,347 MiB in 30 s). Now: the listing stops at the key
    /// bound, the snapshot is emptied, and callers get the failure without listing again.
    #[tokio::test]
    async fn a_listing_that_never_ends_stops_at_the_key_bound_and_is_held() {
        let c = ctx();
        let (p, fake) = provider("ClusterKeyProvider/forever", Shape::Forever);
        let scope = KeyScope::default();
        let err = match c.get(&p, &scope, Duration::from_secs(60)).await {
            Err(e) => e,
            Ok(_) => panic!("an endless listing must fail"),
        };
        let msg = err.to_string();
        assert!(msg.contains("exceeded 20000 keys"), "{msg}");
        use crate::controller::reasons::Reason;
        assert_eq!(Reason::from(&err), Reason::ProviderUnavailable);
        let pages = fake.pages.load(Ordering::SeqCst);
        assert_eq!(pages, MAX_SNAPSHOT_KEYS / 100 + 1, "pages: {pages}");
        let slot = c.slot(&p, &scope).unwrap();
        assert!(
            slot.lock().await.keys.is_empty(),
            "the memory is given back"
        );
        // Every caller within the hold gets the failure without a page more.
        for _ in 0..5 {
            assert!(c.get(&p, &scope, Duration::from_secs(60)).await.is_err());
        }
        assert_eq!(fake.pages.load(Ordering::SeqCst), pages);
    }

    #[tokio::test]
    async fn a_repeated_cursor_ends_the_listing() {
        let c = ctx();
        let (p, fake) = provider("ClusterKeyProvider/repeat", Shape::SameCursor);
        let scope = KeyScope::default();
        let err = c
            .get(&p, &scope, Duration::from_secs(60))
            .await
            .err()
            .expect("a repeated cursor must fail");
        assert!(err.to_string().contains("repeated a page cursor"), "{err}");
        assert_eq!(fake.pages.load(Ordering::SeqCst), 2);
    }

    /// An offset-paged provider shifts a key onto the next page when one is created during the
    /// listing: a page of keys already seen, once, is no loop (it failed every small OpenRouter
    /// listing taken while keys were being created).
    #[tokio::test]
    async fn a_page_shifted_by_a_create_during_the_listing_is_no_loop() {
        let c = ctx();
        let (p, fake) = provider("ClusterKeyProvider/shifted", Shape::Shifted);
        let scope = KeyScope::default();
        let slot = c
            .get(&p, &scope, Duration::from_secs(60))
            .await
            .expect("the listing ends normally");
        assert_eq!(slot.lock().await.keys.len(), 20);
        assert_eq!(fake.pages.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_repeated_page_under_new_cursors_ends_the_listing() {
        let c = ctx();
        let (p, fake) = provider("ClusterKeyProvider/same", Shape::SamePage);
        let scope = KeyScope::default();
        let err = c
            .get(&p, &scope, Duration::from_secs(60))
            .await
            .err()
            .expect("a repeated page must fail");
        assert!(err.to_string().contains("repeated a page of keys"), "{err}");
        assert_eq!(fake.pages.load(Ordering::SeqCst), 1 + MAX_REPEATED_PAGES);
    }

    #[test]
    fn the_byte_bound_counts_what_a_key_holds() {
        let small = approx_size(&key(1));
        println!("approx size of a small key: {small} B");
        let mut big = key(1);
        big.name = "x".repeat(1 << 20);
        assert!(approx_size(&big) > small + (1 << 20) - 64);
        assert!(MAX_SNAPSHOT_KEYS * small < MAX_SNAPSHOT_BYTES);
    }

    /// A slow listing does not hold readers of a snapshot that already has one, and other
    /// provider objects are not affected at all.
    #[tokio::test(start_paused = true)]
    async fn a_slow_refresh_does_not_block_readers_of_the_snapshot() {
        let c = Arc::new(ctx());
        let scope = KeyScope::default();
        let (p, _) = provider("ClusterKeyProvider/slow", Shape::Slow(1000));
        // Seed a listing taken longer than a refresh interval ago.
        {
            let slot = c.listing_entry(&p, &scope).data.clone();
            let mut s = slot.lock().await;
            s.keys.insert(key(7).id, Box::new(key(7)));
            s.fetched = Instant::now().checked_sub(Duration::from_secs(400));
        }
        let p2 = p.clone();
        let (c2, s2) = (c.clone(), scope.clone());
        let refresher =
            tokio::spawn(async move { c2.get(&p2, &s2, Duration::from_secs(300)).await });
        tokio::task::yield_now().await;
        // A second reader gets the snapshot at once, while the first lists.
        let slot = tokio::time::timeout(
            Duration::from_millis(10),
            c.get(&p, &scope, Duration::from_secs(300)),
        )
        .await
        .expect("a reader must not wait for the refresh")
        .unwrap();
        assert!(slot.lock().await.keys.contains_key(&key(7).id));
        // The refresh itself stops at the time bound.
        let err = refresher.await.unwrap().err().expect("time bound");
        assert!(err.to_string().contains("did not finish within"), "{err}");
        // Another provider object lists as usual.
        let (ok, _) = provider("ClusterKeyProvider/ok", Shape::Finite(10));
        assert_eq!(
            c.get(&ok, &scope, Duration::from_secs(60))
                .await
                .unwrap()
                .lock()
                .await
                .keys
                .len(),
            10
        );
    }

    #[tokio::test]
    async fn idle_snapshots_are_pruned_and_a_provider_object_is_forgotten() {
        let c = ctx();
        let (p, _) = provider("ClusterKeyProvider/ok", Shape::Finite(1));
        for i in 0..10 {
            let scope = KeyScope {
                family: "agent".into(),
                parent: format!("agent-{i}"),
            };
            c.get(&p, &scope, Duration::from_secs(60)).await.unwrap();
        }
        assert_eq!(c.len(), 10);
        // Age them past the idle bound.
        for l in c.snapshots.lock().unwrap().values() {
            *l.used.lock().unwrap() = Instant::now().checked_sub(IDLE_SNAPSHOT * 2);
        }
        c.get(&p, &KeyScope::default(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(c.len(), 1, "only the one just used");
        c.forget(&p.id);
        assert_eq!(c.len(), 0);
    }
}
