//! State shared by every reconcile: the client, metrics, events, per-object backoff, the gauges'
//! view of each ApiKey, and holds on creates after a 429. The backend cache lives in
//! [`super::backends`], the listing snapshots in [`super::listing`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use super::backends::BackendEntry;
use super::listing::Listing;
use super::reasons::Reason;
use crate::api::ApiKey;
use crate::metrics::{set_or_remove, Contribution, Metrics, Tally, Tracker};
use crate::providers::{ClientOptions, KeyScope};

pub use super::backends::{ResolveError, ResolvedProvider, DEFAULT_REFRESH};
pub use super::listing::Snapshot;

/// How often [`Context::prune_caches`] runs.
pub const CACHE_SWEEP: Duration = Duration::from_secs(300);
/// How long the restart debouncer remembers a workload's last restart.
pub const RESTART_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Events published through one kube Recorder before it is replaced by a fresh one.
pub const RECORDER_SPAN: u32 = 256;

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Publishes Events; replaced by a fresh one every [`RECORDER_SPAN`] publishes (see
    /// [`Context::event`]).
    recorder: Mutex<(Recorder, u32)>,
    reporter: Reporter,
    /// The operator's namespace: default namespace of ClusterKeyProvider credential Secrets.
    pub operator_namespace: String,
    /// HTTP options applied to every provider client (tests shorten timeouts).
    pub client_options: ClientOptions,
    /// ClusterKeyProviders are served (see `keysmith run --cluster-providers`).
    pub cluster_providers: bool,
    /// Workload restarts shared by every ApiKey (one restart per burst of new values).
    pub debouncer: super::restart::Debouncer,
    /// Namespaced KeyProviders are served (see `keysmith run --namespaced-providers`).
    pub namespaced_providers: bool,
    /// The namespaces served (`keysmith run --watch-namespaces`); empty: every namespace. In
    /// namespace mode ApiKeys are only ever listed per watched namespace (the namespace-mode
    /// RBAC grants nothing cluster-wide on them), see [`super::inuse::scan_apikeys`].
    pub watch_namespaces: Vec<String>,
    /// When not empty, the only hosts a provider object's base URL may name
    /// (`keysmith run --allowed-base-url-hosts`).
    pub allowed_base_url_hosts: Vec<String>,
    /// Where namespaced KeyProviders may connect (`keysmith run
    /// --allow-private-provider-networks`, `--allow-insecure-http`); restricted by default.
    /// ClusterKeyProviders are not restricted.
    pub namespaced_network: crate::providers::egress::NetworkPolicy,
    /// The leader Lease's renew deadline: provider writes stop there.
    pub lease: Arc<super::leader::LeaseClock>,
    /// Watch-fed provider objects and namespace labels (fallback: a GET).
    pub cache: super::cache::ObjectCache,
    /// What KeyBudgets and ClusterKeyBudgets want of each key (`onExceeded`), for the sync.
    pub budgets: super::budget::enforce::Enforcements,
    /// Test hook: make reconciles panic (the containment tests). Only with `test-hooks`.
    #[cfg(feature = "test-hooks")]
    pub panic_in_reconcile: std::sync::atomic::AtomicBool,
    /// Test hook: make the next creates stop right after the provider answered, as if the
    /// process had been killed there (crash-safety tests). Only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub crash_after_create: std::sync::atomic::AtomicBool,
    failures: Mutex<HashMap<String, u32>>,
    /// Per ApiKey: (provider type, ready, expiry in Unix seconds), for the gauges.
    tracked: Mutex<Tracker<Tracked>>,
    /// Per provider object: no create before this instant, and the message of the 429 that said so.
    create_holds: Mutex<HashMap<String, (Instant, String)>>,
    /// Per provider object: its create rate, split between the namespaces creating through it.
    pub fair_shares: super::fairness::FairShares,
    pub(crate) backends: Mutex<HashMap<String, Arc<BackendEntry>>>,
    /// Provider objects this process put the in-use finalizer on (see [`super::inuse`]).
    pub(crate) in_use_marked: Mutex<std::collections::HashSet<String>>,
    /// Held while one reconcile puts the in-use finalizer on (see [`super::inuse::protect`]).
    pub(crate) in_use_marking: tokio::sync::Mutex<()>,
    pub(crate) snapshots: Mutex<HashMap<(String, KeyScope), Arc<Listing>>>,
    /// Per ApiKey (`namespace/name`): the resourceVersion of this process's last write of it,
    /// until the watch cache shows that version (see [`Context::current_copy`]).
    written: Mutex<HashMap<String, String>>,
}

/// The provider clients' write gate: open while `lease`'s renew deadline has not passed.
fn write_gate(lease: Arc<super::leader::LeaseClock>) -> crate::providers::WriteGate {
    crate::providers::WriteGate::new(move || lease.holds())
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("operator_namespace", &self.operator_namespace)
            .finish()
    }
}

/// The `keysmith_apikeys` part an ApiKey counts under.
fn ready_part(ready: bool) -> &'static str {
    if ready {
        "ready"
    } else {
        "not-ready"
    }
}

/// What the gauges know of one ApiKey: provider type, ready, expiry (Unix seconds).
pub type Tracked = (String, bool, Option<i64>);

impl Contribution for Tracked {
    fn provider(&self) -> &str {
        &self.0
    }

    fn add_to(&self, tally: &mut Tally, sign: i64) {
        tally.apply(&self.0, ready_part(self.1), 1, self.2, sign);
    }
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        operator_namespace: String,
        reporter: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: reporter.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Mutex::new((Recorder::new(client.clone(), reporter.clone()), 0));
        let lease: Arc<super::leader::LeaseClock> = Default::default();
        let client_options = ClientOptions {
            metrics: Some(metrics.provider.clone()),
            write_gate: Some(write_gate(lease.clone())),
            ..ClientOptions::default()
        };
        Context {
            client,
            metrics,
            recorder,
            reporter,
            operator_namespace,
            client_options,
            cluster_providers: true,
            debouncer: Default::default(),
            namespaced_providers: true,
            watch_namespaces: Vec::new(),
            allowed_base_url_hosts: Vec::new(),
            namespaced_network: crate::providers::egress::NetworkPolicy::RESTRICTED,
            lease,
            cache: Default::default(),
            budgets: Default::default(),
            #[cfg(feature = "test-hooks")]
            panic_in_reconcile: Default::default(),
            #[cfg(feature = "test-hooks")]
            crash_after_create: Default::default(),
            failures: Mutex::new(HashMap::new()),
            tracked: Mutex::new(Default::default()),
            create_holds: Mutex::new(HashMap::new()),
            fair_shares: Default::default(),
            backends: Mutex::new(HashMap::new()),
            in_use_marked: Default::default(),
            in_use_marking: Default::default(),
            snapshots: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Count a transient failure of an object; returns how many in a row.
    pub fn record_failure(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap();
        let n = f.entry(key.to_string()).or_default();
        *n += 1;
        *n
    }

    /// An object reconciled fine: its backoff starts over.
    pub fn clear_failures(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }

    /// This process wrote the ApiKey `key`; the server now holds `resource_version`.
    pub fn wrote_apikey(&self, key: &str, resource_version: Option<String>) {
        let mut w = self.written.lock().unwrap();
        match resource_version {
            Some(rv) => w.insert(key.to_string(), rv),
            None => w.remove(key),
        };
    }

    /// The copy of an ApiKey to reconcile: the watch cache's `cached`, unless it may be older
    /// than the server's, then the server's (one GET); `None` when the ApiKey is gone.
    ///
    /// The cache may be older when this process wrote the ApiKey since and the cache does not
    /// show that write yet (a reconcile triggered by the Secret it just wrote), or when the copy
    /// holds a `pendingCreate` marker: crash recovery is only for a create that really may have
    /// happened, never for a marker that a later write of this process already cleared. A GET
    /// per such reconcile is much cheaper than what a stale copy costs (a 409, a requeue, or a
    /// recovery with its listing).
    pub async fn current_copy(
        &self,
        cached: std::sync::Arc<ApiKey>,
    ) -> Result<Option<std::sync::Arc<ApiKey>>, kube::Error> {
        let key = format!(
            "{}/{}",
            cached.namespace().unwrap_or_default(),
            cached.name_any()
        );
        let behind = {
            let mut w = self.written.lock().unwrap();
            match w.get(&key) {
                Some(rv) if cached.resource_version().as_ref() == Some(rv) => {
                    // The cache caught up with our last write.
                    w.remove(&key);
                    false
                }
                Some(_) => true,
                None => false,
            }
        };
        let pending = cached
            .status
            .as_ref()
            .is_some_and(|s| s.pending_create.is_some());
        if !behind && !pending {
            return Ok(Some(cached));
        }
        let api: Api<ApiKey> =
            Api::namespaced(self.client.clone(), &cached.namespace().unwrap_or_default());
        let server = api.get_opt(&cached.name_any()).await?;
        self.written.lock().unwrap().remove(&key);
        Ok(server.map(|s| {
            if s.resource_version() == cached.resource_version() {
                cached
            } else {
                std::sync::Arc::new(s)
            }
        }))
    }

    /// Record an ApiKey's provider, readiness and expiry (None: forget it, it was deleted) and
    /// refresh the `keysmith_apikeys` and `keysmith_key_expiry_timestamp_seconds` gauges.
    pub fn track(&self, key: &str, state: Option<Tracked>) {
        if state.is_none() {
            // The ApiKey is gone: nothing kept for it outlives it (issue 17).
            self.written.lock().unwrap().remove(key);
            self.failures.lock().unwrap().remove(key);
        }
        let mut t = self.tracked.lock().unwrap();
        // Only the providers this ApiKey counted under change (O(log N), issue 11).
        for provider in t.update(key, state) {
            for ready in [true, false] {
                let n = t.tally.sum(&provider, ready_part(ready));
                let labels = crate::metrics::ReadyLabels {
                    provider: provider.clone(),
                    ready: ready.to_string(),
                };
                set_or_remove(&self.metrics.apikeys, &labels, (n != 0).then_some(n));
            }
            let min = t.tally.min(&provider);
            set_or_remove(
                &self.metrics.key_expiry,
                &crate::metrics::ProviderLabel { provider },
                min,
            );
        }
    }

    /// Drop what is kept for a provider object (it was deleted): its HTTP client, its listings
    /// and a hold on its creates.
    pub fn forget_provider(&self, id: &str) {
        self.backends.lock().unwrap().remove(id);
        self.forget_listings(id);
        self.create_holds.lock().unwrap().remove(id);
    }

    /// Drop what is kept for provider objects and ApiKeys the watches no longer show, and
    /// restart bookkeeping older than [`RESTART_MEMORY`] (issue 17: caches that only grew).
    /// Run every [`CACHE_SWEEP`] by the controllers. Returns how many entries went.
    pub fn prune_caches(&self) -> usize {
        let mut ids: std::collections::BTreeSet<String> =
            self.backends.lock().unwrap().keys().cloned().collect();
        ids.extend(
            self.snapshots
                .lock()
                .unwrap()
                .keys()
                .map(|(id, _)| id.clone()),
        );
        ids.extend(self.create_holds.lock().unwrap().keys().cloned());
        let mut gone = 0;
        for id in ids {
            if self.cache.provider_exists(&id) == Some(false) {
                self.forget_provider(&id);
                gone += 1;
            }
        }
        let exists = |k: &String| self.cache.apikey_exists(k) != Some(false);
        let keys: Vec<String> = self.failures.lock().unwrap().keys().cloned().collect();
        let stale: Vec<String> = keys.into_iter().filter(|k| !exists(k)).collect();
        {
            let mut f = self.failures.lock().unwrap();
            for k in &stale {
                f.remove(k);
            }
        }
        gone += stale.len();
        let keys: Vec<String> = self.written.lock().unwrap().keys().cloned().collect();
        let stale: Vec<String> = keys.into_iter().filter(|k| !exists(k)).collect();
        {
            let mut w = self.written.lock().unwrap();
            for k in &stale {
                w.remove(k);
            }
        }
        gone += stale.len();
        let before = self.debouncer.len();
        let horizon = chrono::Duration::from_std(RESTART_MEMORY).unwrap_or_default();
        self.debouncer.prune(chrono::Utc::now() - horizon);
        gone + before.saturating_sub(self.debouncer.len())
    }

    /// Entries kept per provider object and per ApiKey: (HTTP clients, listings, failure
    /// counters) — tests count them.
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        (
            self.backends.lock().unwrap().len(),
            self.snapshots.lock().unwrap().len(),
            self.failures.lock().unwrap().len(),
        )
    }

    /// The provider answered a create through `provider` (a provider object id) with 429 and
    /// Retry-After `wait`: hold every create through that provider object until then, for at
    /// most [`super::fairness::MAX_CREATE_HOLD`]. The limit is the account's, not one key's;
    /// the bound keeps one namespace's burst from holding every other namespace for an hour
    /// (the fair share then decides who creates next).
    pub fn hold_creates(&self, provider: &str, wait: Duration, message: String) {
        let wait = wait.min(super::fairness::MAX_CREATE_HOLD);
        self.create_holds
            .lock()
            .unwrap()
            .insert(provider.to_string(), (Instant::now() + wait, message));
    }

    /// What is left of a hold on creates through `provider`, with the message of the 429.
    pub fn creates_held(&self, provider: &str) -> Option<(Duration, String)> {
        let mut holds = self.create_holds.lock().unwrap();
        let (until, message) = holds.get(provider)?;
        match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some((left, message.clone())),
            _ => {
                holds.remove(provider);
                None
            }
        }
    }

    /// Use `lease` as the leader Lease's renew deadline: reconciles are cancelled at it and
    /// provider writes are refused past it (the clients are built with this gate).
    pub fn set_lease(&mut self, lease: Arc<super::leader::LeaseClock>) {
        self.client_options.write_gate = Some(write_gate(lease.clone()));
        self.lease = lease;
    }

    /// Whether a provider write that may take up to `worst` can start: not when the leader
    /// Lease's renew deadline comes first (the write could land after another replica took
    /// over). Err is a transient `LeaseExpiring`.
    pub fn lease_allows(&self, worst: Duration) -> Result<(), super::error::Failure> {
        match self.lease.time_left() {
            Some(left) if left <= worst => Err(super::error::Failure::transient(
                Reason::LeaseExpiring,
                format!(
                    "the leader Lease has {} ms left, less than a create may take ({} ms); waiting for the next renewal",
                    left.as_millis(),
                    worst.as_millis()
                ),
                Some(Duration::from_secs(1)),
            )),
            _ => Ok(()),
        }
    }

    /// Test hook (`test-hooks` feature): whether a create should stop as if the process died.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn fault_crash_after_create(&self) -> bool {
        self.crash_after_create
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publish an Event about `obj`. Failures are logged, never fatal. Notes never hold secrets.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: Reason,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.as_str().into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = {
            // kube's Recorder keeps every Event it published for six minutes (to patch a repeat
            // into a series) and scans them all on each publish: in a burst of 10,000 creates
            // that is 10,000 cached Events and O(N²) work. A fresh Recorder every RECORDER_SPAN
            // publishes bounds both; an exact repeat soon after still joins its series.
            let mut r = self.recorder.lock().unwrap();
            r.1 += 1;
            if r.1 > RECORDER_SPAN {
                *r = (Recorder::new(self.client.clone(), self.reporter.clone()), 1);
            }
            r.0.clone()
        };
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason = reason.as_str(), "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClusterKeyProvider, KeyProvider, KeyProviderSpec, RestartKind};
    use crate::controller::backends::BackendEntry;
    use crate::controller::restart::WorkloadKey;
    use kube::runtime::{reflector, watcher};

    fn offline_client() -> Client {
        let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other(
                "offline",
            ))
        });
        Client::new(svc, "default")
    }

    #[tokio::test]
    async fn a_429_holds_creates_for_at_most_a_minute() {
        let ctx = Context::new(
            offline_client(),
            Arc::new(Metrics::new()),
            "keysmith-system".into(),
            "test",
        );
        // A provider asking for an hour (the most a Retry-After is read as) gets a minute.
        ctx.hold_creates(
            "ClusterKeyProvider/p",
            Duration::from_secs(3600),
            "429".into(),
        );
        let (left, message) = ctx.creates_held("ClusterKeyProvider/p").unwrap();
        assert!(left <= super::super::fairness::MAX_CREATE_HOLD, "{left:?}");
        assert!(left > Duration::from_secs(59), "{left:?}");
        assert_eq!(message, "429");
        // A shorter Retry-After is honoured as is; other provider objects are not held.
        ctx.hold_creates("ClusterKeyProvider/q", Duration::from_secs(2), "429".into());
        assert!(ctx.creates_held("ClusterKeyProvider/q").unwrap().0 <= Duration::from_secs(2));
        assert!(ctx.creates_held("ClusterKeyProvider/r").is_none());
    }

    /// Issue 17 item 6: HTTP clients, listings and create holds of deleted provider objects,
    /// failure counters of deleted ApiKeys and old restart bookkeeping are dropped; what still
    /// exists is kept. Before, nothing was ever removed (and `Debouncer::prune` never ran).
    #[tokio::test]
    async fn caches_of_deleted_objects_are_pruned() {
        let ctx = Context::new(
            offline_client(),
            Arc::new(Metrics::default()),
            "keysmith".into(),
            "test",
        );
        // The watches: one ClusterKeyProvider, one KeyProvider, one ApiKey.
        let (ckps, mut w) = reflector::store::<ClusterKeyProvider>();
        w.apply_watcher_event(&watcher::Event::Apply(ClusterKeyProvider::new(
            "shared",
            Default::default(),
        )));
        ctx.cache.set_cluster_providers(ckps);
        let (kps, mut w) = reflector::store::<KeyProvider>();
        let mut kp = KeyProvider::new("kp", Default::default());
        kp.metadata.namespace = Some("team-a".into());
        w.apply_watcher_event(&watcher::Event::Apply(kp));
        ctx.cache.add_key_providers(kps);
        let (aks, mut w) = reflector::store::<ApiKey>();
        let mut ak = ApiKey::new("alive", Default::default());
        ak.metadata.namespace = Some("team-a".into());
        w.apply_watcher_event(&watcher::Event::Apply(ak));
        ctx.cache.add_apikeys(aks);

        let spec: KeyProviderSpec = serde_json::from_value(serde_json::json!({
            "openrouter": { "managementKeySecretRef": { "name": "m", "key": "k" } }
        }))
        .unwrap();
        let mut creds = crate::providers::Credentials::default();
        creds
            .0
            .insert("token".into(), secrecy::SecretString::from("t"));
        let backend = crate::providers::build_backend(&spec, creds, Default::default()).unwrap();
        let ids = [
            "ClusterKeyProvider/shared",
            "ClusterKeyProvider/deleted",
            "KeyProvider/team-a/kp",
            "KeyProvider/team-a/gone",
        ];
        for id in ids {
            ctx.backends.lock().unwrap().insert(
                id.to_string(),
                Arc::new(BackendEntry::for_test(backend.clone())),
            );
            ctx.snapshots
                .lock()
                .unwrap()
                .insert((id.to_string(), KeyScope::default()), Default::default());
        }
        ctx.hold_creates(
            "ClusterKeyProvider/deleted",
            Duration::from_secs(3600),
            "429".into(),
        );
        ctx.record_failure("team-a/alive");
        ctx.record_failure("team-a/deleted");
        ctx.record_failure("team-a/deleted-with-finalizer");
        // A workload restarted two days ago, and one being debounced now.
        let old = chrono::Utc::now() - chrono::Duration::days(2);
        let target = |name: &str| WorkloadKey {
            namespace: "team-a".into(),
            kind: RestartKind::Deployment,
            name: name.into(),
        };
        ctx.debouncer.claim(&target("old"), old, old);
        let later = old + chrono::Duration::minutes(5);
        assert_eq!(
            ctx.debouncer.claim(&target("old"), old, later),
            crate::controller::restart::Claim::Patch
        );
        let now = chrono::Utc::now();
        ctx.debouncer.claim(&target("now"), now, now);
        assert_eq!(ctx.debouncer.len(), 2);

        // The cleanup of an ApiKey deleted through its finalizer drops its counter at once.
        ctx.track("team-a/deleted-with-finalizer", None);
        assert_eq!(ctx.cache_sizes(), (4, 4, 2));

        let gone = ctx.prune_caches();
        assert_eq!(ctx.cache_sizes(), (2, 2, 1), "{gone} dropped");
        assert!(ctx.creates_held("ClusterKeyProvider/deleted").is_none());
        assert_eq!(ctx.debouncer.len(), 1, "the old restart is forgotten");
        for kept in ["ClusterKeyProvider/shared", "KeyProvider/team-a/kp"] {
            assert!(ctx.backends.lock().unwrap().contains_key(kept), "{kept}");
        }
        // Without stores (no controller runs) nothing can be concluded: nothing is dropped.
        let bare = Context::new(
            offline_client(),
            Arc::new(Metrics::default()),
            "keysmith".into(),
            "test",
        );
        bare.record_failure("team-a/x");
        bare.prune_caches();
        assert_eq!(bare.cache_sizes(), (0, 0, 1));
    }
}
