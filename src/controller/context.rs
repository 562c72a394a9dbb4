//! State shared by every reconcile, in owned parts, each in the file its name says and each
//! with its own `forget`:
//!
//! | part | kept per | file |
//! | --- | --- | --- |
//! | [`Settings`] | installation (built once, never changed) | `settings.rs` |
//! | [`Backends`] | provider object: its built client | `backends.rs` |
//! | [`Listings`] | provider object and scope: the shared listing | `listing.rs` |
//! | [`InUse`] | provider object: the in-use finalizer this process put on | `inuse.rs` |
//! | [`CreateHolds`] | provider object: no create until a 429's Retry-After | `create_holds.rs` |
//! | [`FairShares`] | provider object and namespace: the create rate | `fairness.rs` |
//! | [`Backoff`] | ApiKey: failures in a row | `backoff.rs` |
//! | [`WriteLog`] | ApiKey: this process's last write | `write_log.rs` |
//! | [`Gauges`] | ApiKey: what it adds to the gauges | `gauges.rs` |
//! | [`Debouncer`] | workload: its last restart, and the ApiKeys that claimed it | `restart.rs` |
//! | [`Enforcements`] | ApiKey: what the budgets want of it (rebuilt by every pass) | `enforcements.rs` |
//!
//! Beside them: the Kubernetes client, the metrics, the Event recorder, the leader Lease's
//! clock and the watch stores ([`ObjectCache`]).
//!
//! Deleting an ApiKey calls [`Context::forget`] (from `apikey/delete.rs`), deleting a provider
//! object [`Context::forget_provider`] (from `provider.rs`); each calls every part's `forget`.
//! [`Context::prune_caches`] runs the same `forget`s every [`CACHE_SWEEP`] for objects that went
//! while this process did not see them go.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use super::backends::Backends;
use super::backoff::Backoff;
use super::cache::ObjectCache;
use super::create_holds::CreateHolds;
use super::enforcements::Enforcements;
use super::fairness::FairShares;
use super::gauges::Gauges;
use super::inuse::InUse;
use super::lease::LeaseClock;
use super::listing::Listings;
use super::reasons::Reason;
use super::restart::{Debouncer, RESTART_MEMORY};
use super::settings::Settings;
use super::write_log::WriteLog;
use crate::metrics::Metrics;
use crate::providers::{ClientOptions, WriteGate};

/// How often [`Context::prune_caches`] runs.
pub const CACHE_SWEEP: Duration = Duration::from_secs(300);

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
    /// What this installation was told at start. Its client options carry the metrics and the
    /// leader Lease's write gate.
    pub settings: Arc<Settings>,
    /// The leader Lease's renew deadline: provider writes stop there.
    pub lease: Arc<LeaseClock>,
    /// Watch-fed provider objects and namespace labels (fallback: a GET).
    pub cache: Arc<ObjectCache>,
    /// What KeyBudgets and ClusterKeyBudgets want of each key (`onExceeded`), for the sync.
    pub budgets: Enforcements,
    pub backends: Backends,
    pub listings: Listings,
    pub in_use: InUse,
    pub create_holds: CreateHolds,
    /// Per provider object: its create rate, split between the namespaces creating through it.
    pub fair_shares: FairShares,
    pub backoff: Backoff,
    pub write_log: WriteLog,
    pub gauges: Gauges,
    /// Workload restarts shared by every ApiKey (one restart per burst of new values).
    pub debouncer: Debouncer,
    /// Test hook: make reconciles panic (the containment tests). Only with `test-hooks`.
    #[cfg(feature = "test-hooks")]
    pub panic_in_reconcile: std::sync::atomic::AtomicBool,
    /// Test hook: make the next creates stop right after the provider answered, as if the
    /// process had been killed there (crash-safety tests). Only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub crash_after_create: std::sync::atomic::AtomicBool,
}

/// The provider clients' write gate: open while `lease`'s renew deadline has not passed.
fn write_gate(lease: Arc<LeaseClock>) -> WriteGate {
    WriteGate::new(move || lease.holds())
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("operator_namespace", &self.settings.operator_namespace)
            .finish_non_exhaustive()
    }
}

/// How many entries each part keeps (the forget tests count them).
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Kept {
    pub backends: usize,
    pub listings: usize,
    pub in_use: usize,
    pub create_holds: usize,
    pub fair_shares: usize,
    pub backoff: usize,
    pub write_log: usize,
    pub gauges: usize,
    pub debouncer: usize,
    pub budget_holds: usize,
}

#[cfg(any(test, feature = "test-hooks"))]
impl Kept {
    /// Nothing kept at all.
    pub fn is_empty(&self) -> bool {
        *self == Kept::default()
    }
}

impl Context {
    /// A context without leader election (the write gate is always open).
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings) -> Self {
        Context::fenced(client, metrics, settings, Default::default())
    }

    /// A context whose reconciles are cancelled at `lease`'s renew deadline and whose provider
    /// clients refuse writes past it.
    pub fn fenced(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        lease: Arc<LeaseClock>,
    ) -> Self {
        let reporter = Reporter {
            controller: settings.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Mutex::new((Recorder::new(client.clone(), reporter.clone()), 0));
        let settings = Arc::new(Settings {
            client_options: ClientOptions {
                metrics: Some(metrics.provider.clone()),
                write_gate: Some(write_gate(lease.clone())),
                ..settings.client_options
            },
            ..settings
        });
        let cache: Arc<ObjectCache> = Default::default();
        Context {
            in_use: InUse::new(client.clone(), cache.clone(), settings.clone()),
            gauges: Gauges::new(metrics.clone()),
            debouncer: Debouncer::new(settings.restart_debounce),
            client,
            metrics,
            recorder,
            reporter,
            settings,
            lease,
            cache,
            budgets: Default::default(),
            backends: Default::default(),
            listings: Default::default(),
            create_holds: Default::default(),
            fair_shares: Default::default(),
            backoff: Default::default(),
            write_log: Default::default(),
            #[cfg(feature = "test-hooks")]
            panic_in_reconcile: Default::default(),
            #[cfg(feature = "test-hooks")]
            crash_after_create: Default::default(),
        }
    }

    /// The ApiKey `key` (`namespace/name`) is gone: nothing kept for it outlives it (issues 17
    /// and 19).
    pub fn forget(&self, key: &str) {
        self.backoff.forget(key);
        self.write_log.forget(key);
        self.gauges.forget(key);
        self.debouncer.forget(key);
        self.budgets.forget(key);
    }

    /// The provider object `id` (`KeyProvider/ns/name` or `ClusterKeyProvider/name`) is gone:
    /// its HTTP client, its listings, a hold on its creates, its fair shares and what this
    /// process marked of it go.
    pub fn forget_provider(&self, id: &str) {
        self.backends.forget(id);
        self.listings.forget(id);
        self.create_holds.forget(id);
        self.fair_shares.forget(id);
        self.in_use.forget(id);
    }

    /// Drop what is kept for provider objects and ApiKeys the watches no longer show (deleted
    /// while this process did not see it), and restart bookkeeping older than
    /// [`RESTART_MEMORY`] (issue 17: caches that only grew). Run every [`CACHE_SWEEP`] by the
    /// controllers. Returns how many entries went.
    pub fn prune_caches(&self) -> usize {
        let mut ids: std::collections::BTreeSet<String> =
            self.backends.providers().into_iter().collect();
        ids.extend(self.listings.providers());
        ids.extend(self.create_holds.providers());
        ids.extend(self.in_use.providers());
        let mut gone = 0;
        for id in ids {
            if self.cache.provider_exists(&id) == Some(false) {
                self.forget_provider(&id);
                gone += 1;
            }
        }
        let deleted = |k: &str| self.cache.apikey_exists(k) == Some(false);
        gone += self.backoff.forget_where(deleted);
        gone += self.write_log.forget_where(deleted);
        let before = self.debouncer.len();
        let horizon = chrono::Duration::from_std(RESTART_MEMORY).unwrap_or_default();
        self.debouncer.prune(chrono::Utc::now() - horizon);
        gone + before.saturating_sub(self.debouncer.len())
    }

    /// How many entries each part keeps.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn kept(&self) -> Kept {
        Kept {
            backends: self.backends.len(),
            listings: self.listings.len(),
            in_use: self.in_use.len(),
            create_holds: self.create_holds.len(),
            fair_shares: self.fair_shares.len(),
            backoff: self.backoff.len(),
            write_log: self.write_log.len(),
            gauges: self.gauges.len(),
            debouncer: self.debouncer.len(),
            budget_holds: self.budgets.held(),
        }
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
    use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, KeyProviderSpec, RestartKind};
    use crate::controller::restart::WorkloadKey;
    use crate::providers::KeyScope;
    use kube::runtime::{reflector, watcher};

    fn offline_client() -> Client {
        let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other(
                "offline",
            ))
        });
        Client::new(svc, "default")
    }

    fn ctx() -> Context {
        Context::new(
            offline_client(),
            Arc::new(Metrics::default()),
            Settings {
                operator_namespace: "keysmith".into(),
                reporter: "test".into(),
                ..Settings::default()
            },
        )
    }

    fn backend() -> Arc<dyn crate::providers::KeyBackend> {
        let spec: KeyProviderSpec = serde_json::from_value(serde_json::json!({
            "openrouter": { "managementKeySecretRef": { "name": "m", "key": "k" } }
        }))
        .unwrap();
        let mut creds = crate::providers::Credentials::default();
        creds
            .0
            .insert("token".into(), secrecy::SecretString::from("t"));
        crate::providers::build_backend(&spec, creds, Default::default()).unwrap()
    }

    /// The settings given are kept; the client options gain the metrics and the write gate.
    #[tokio::test]
    async fn settings_are_taken_once_with_the_metrics_and_the_gate() {
        let c = Context::new(
            offline_client(),
            Arc::new(Metrics::default()),
            Settings {
                namespaced_providers: false,
                restart_debounce: Duration::ZERO,
                ..Settings::default()
            },
        );
        assert!(!c.settings.namespaced_providers);
        assert!(c.settings.cluster_providers);
        assert!(c.settings.client_options.metrics.is_some());
        assert!(c.settings.client_options.write_gate.is_some());
        assert!(c.kept().is_empty());
    }

    /// Issue 19: one `forget` per deletion reaches every part. Before, a deleted ApiKey's
    /// workload restarts stayed in the debouncer (for a day) and a deleted provider object's
    /// in-use marking and fair shares stayed for good.
    #[tokio::test]
    async fn forgetting_an_apikey_and_its_provider_object_empties_every_part() {
        let c = ctx();
        let id = "ClusterKeyProvider/shared";
        let key = "team-a/k";
        c.backends.insert(id, Some(1), Vec::new(), backend());
        let p = crate::controller::backends::ResolvedProvider {
            id: id.into(),
            provider_type: crate::api::ProviderType::OpenRouter,
            backend: backend(),
            refresh_interval: Duration::from_secs(300),
            create_limits: Default::default(),
        };
        c.listings.listing_entry(&p, &KeyScope::default());
        c.create_holds
            .hold(id, Duration::from_secs(30), "429".into());
        let _ = c.fair_shares.take(id, "team-a", &Default::default());
        c.backoff.failed(key);
        c.write_log.wrote(key, Some("7".into()));
        c.gauges.track(key, ("openrouter".into(), true, None));
        let now = chrono::Utc::now();
        let web = WorkloadKey {
            namespace: "team-a".into(),
            kind: RestartKind::Deployment,
            name: "web".into(),
        };
        c.debouncer.claim_for(&web, key, now, now);
        let kept = c.kept();
        assert_eq!(
            kept,
            Kept {
                backends: 1,
                listings: 1,
                in_use: 0,
                create_holds: 1,
                fair_shares: 1,
                backoff: 1,
                write_log: 1,
                gauges: 1,
                debouncer: 1,
                budget_holds: 0,
            }
        );
        c.forget(key);
        c.forget_provider(id);
        assert!(c.kept().is_empty(), "{:?}", c.kept());
    }

    /// Issue 17 item 6: HTTP clients, listings and create holds of deleted provider objects,
    /// failure counters of deleted ApiKeys and old restart bookkeeping are dropped; what still
    /// exists is kept. Before, nothing was ever removed (and `Debouncer::prune` never ran).
    #[tokio::test]
    async fn caches_of_deleted_objects_are_pruned() {
        let ctx = ctx();
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

        let ids = [
            "ClusterKeyProvider/shared",
            "ClusterKeyProvider/deleted",
            "KeyProvider/team-a/kp",
            "KeyProvider/team-a/gone",
        ];
        for id in ids {
            ctx.backends.insert(id, None, Vec::new(), backend());
            let p = crate::controller::backends::ResolvedProvider {
                id: id.into(),
                provider_type: crate::api::ProviderType::OpenRouter,
                backend: backend(),
                refresh_interval: Duration::from_secs(300),
                create_limits: Default::default(),
            };
            ctx.listings.listing_entry(&p, &KeyScope::default());
        }
        ctx.create_holds.hold(
            "ClusterKeyProvider/deleted",
            Duration::from_secs(3600),
            "429".into(),
        );
        ctx.backoff.failed("team-a/alive");
        ctx.backoff.failed("team-a/deleted");
        ctx.backoff.failed("team-a/deleted-with-finalizer");
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
        ctx.forget("team-a/deleted-with-finalizer");
        let sizes = |c: &Context| (c.backends.len(), c.listings.len(), c.backoff.len());
        assert_eq!(sizes(&ctx), (4, 4, 2));

        let gone = ctx.prune_caches();
        assert_eq!(sizes(&ctx), (2, 2, 1), "{gone} dropped");
        assert!(ctx
            .create_holds
            .held("ClusterKeyProvider/deleted")
            .is_none());
        assert_eq!(ctx.debouncer.len(), 1, "the old restart is forgotten");
        for kept in ["ClusterKeyProvider/shared", "KeyProvider/team-a/kp"] {
            assert!(ctx.backends.contains(kept), "{kept}");
        }
        // Without stores (no controller runs) nothing can be concluded: nothing is dropped.
        let bare = ctx_bare();
        bare.backoff.failed("team-a/x");
        bare.prune_caches();
        assert_eq!(sizes(&bare), (0, 0, 1));
    }

    fn ctx_bare() -> Context {
        ctx()
    }
}
