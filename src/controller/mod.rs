//! The controller (`keysmith run`): reconciles ApiKeys against providers and Secrets, and
//! verifies provider objects. Only the Lease holder reconciles when leader election is on.

pub(crate) mod admin;
pub(crate) mod apikey;
pub(crate) mod backends;
pub(crate) mod backoff;
pub(crate) mod budget;
pub(crate) mod cache;
pub(crate) mod conditions;
pub(crate) mod context;
pub(crate) mod create_holds;
pub(crate) mod credentials;
pub(crate) mod enforcements;
pub(crate) mod error;
pub(crate) mod fairness;
pub(crate) mod gauges;
pub(crate) mod history;
pub(crate) mod inuse;
pub(crate) mod leader;
pub(crate) mod lease;
pub(crate) mod limits;
pub(crate) mod listing;
pub(crate) mod nsguard;
pub(crate) mod period;
pub(crate) mod predicates;
pub(crate) mod provider;
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) mod rbac;
pub(crate) mod reasons;
pub(crate) mod resolve;
pub(crate) mod restart;
pub(crate) mod rotation;
pub(crate) mod secret;
pub(crate) mod settings;
pub(crate) mod supervise;
pub(crate) mod time;
pub(crate) mod watches;
pub(crate) mod write_log;

pub(crate) use apikey::validate;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};

use crate::api::{ApiKey, ClusterKeyProvider, KeyProvider, MANAGED_BY, MANAGED_BY_LABEL};
use crate::metrics::Metrics;
pub use admin::{serve_http, Health};
pub use context::Context;
#[cfg(any(test, feature = "test-hooks"))]
pub use context::Kept;
pub use settings::Settings;

// Every module above is `pub(crate)`, so `dead_code` reports what nothing uses. What other
// crates (the binaries, the bench, the tests) call is re-exported here, one line each:
/// The ApiKey reconciler and its error policy: the bench and the controller tests drive them.
pub use apikey::{error_policy, reconcile};
/// The budget pass: tests/controller/budget.rs runs one directly.
pub use budget::{pass_over, pass_over_at, PassReport};
/// The watch cache's trimming: tests/memory.rs measures what it saves.
pub use cache::slim;
/// The reconcile error: tests match on its variants (LeaseLost, Panicked).
pub use error::Error;
/// The finalizer keysmith keeps on provider objects in use: tests check it.
pub use inuse::IN_USE_FINALIZER;
/// Leader election and fencing: tests/controller/leader.rs drives them against the API server.
pub use leader::{fenced_client, lead, Attempt, LeaseClock, LeaseLock, SteppedDown};
/// The listing cap and snapshot: tests/memory.rs and tests/e2e_bounds.rs measure them.
pub use listing::{Snapshot, MAX_SNAPSHOT_KEYS};
/// The permissions the chart's RBAC and the recorded requests are checked against (tests only).
#[cfg(any(test, feature = "test-hooks"))]
pub use rbac::{Permission, NAMESPACE_MODE_PERMISSIONS, PERMISSIONS, ROLLOUT_RESTART_PERMISSIONS};
/// Workload restarts: tests/restart.rs and tests/e2e_restart.rs run them on a real cluster.
pub use restart::{restart, restarted_at, rolled_out, Debouncer, Outcome, DEBOUNCE_WINDOW};
/// The message of a spent create budget: tests/controller/fairness.rs looks for it.
pub use rotation::BUDGET_HELD;
/// The Secret template check: tests/template_memory.rs measures it.
pub use secret::check_template;
/// The supervised reconcilers (panic-catching): the controller tests run them.
pub use supervise::{reconcile_apikey, reconcile_cluster_key_provider, reconcile_key_provider};
/// Status timestamps (RFC 3339): tests read and write them.
pub use time::{parse as parse_time, ts};

/// Label (any value, e.g. `true`) a user puts on a Secret to let ApiKeys of its namespace use it
/// as `spec.source`: an unlabelled Secret is never read for a push (SourceNotFound). keysmith
/// watches such Secrets and re-pushes the key as soon as the value changes.
pub const SOURCE_LABEL: &str = "keysmith.dev/source";

/// Flags of `keysmith run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8080", env = "KEYSMITH_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Only reconcile while holding a Lease (run several replicas for HA).
    #[arg(long, env = "KEYSMITH_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "keysmith-leader", env = "KEYSMITH_LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the Lease, and the default namespace of ClusterKeyProvider credential
    /// Secrets. Default: the pod's namespace (POD_NAMESPACE), else `keysmith-system`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "keysmith-system")]
    pub namespace: String,
    /// Lease duration in seconds: a standby takes over at most this long after the leader stops
    /// renewing. The leader stops provider writes a fifth of it (at least 1 s) before then, and
    /// provider requests time out after at most lease − margin − lease/3 (7 s for 15 s).
    #[arg(long, default_value_t = 15, env = "KEYSMITH_LEASE_DURATION")]
    pub lease_duration: u64,
    /// Watch only these namespaces (comma-separated). Default: every namespace.
    #[arg(long, value_delimiter = ',', env = "KEYSMITH_WATCH_NAMESPACES")]
    pub watch_namespaces: Vec<String>,
    /// Namespace mode: the name of keysmith's RoleBinding in each watched namespace. keysmith
    /// keeps a finalizer on it while ApiKeys there hold keys, so that deleting the namespace
    /// cannot take keysmith's access before their keys are revoked (the chart sets it).
    #[arg(long, env = "KEYSMITH_NAMESPACE_ROLEBINDING")]
    pub namespace_rolebinding: Option<String>,
    /// Reconcile only ApiKeys matching this label selector (sharding across releases).
    #[arg(long, env = "KEYSMITH_LABEL_SELECTOR")]
    pub label_selector: Option<String>,
    /// Serve ClusterKeyProviders (needs cluster-wide read access to them and to Namespaces).
    /// `--cluster-providers=false` for a namespace-scoped install without that access: ApiKeys
    /// referring to a ClusterKeyProvider then report ProviderNotAllowed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "KEYSMITH_CLUSTER_PROVIDERS")]
    pub cluster_providers: bool,
    /// Serve namespaced KeyProviders. `--namespaced-providers=false` leaves provider choice to
    /// cluster admins: KeyProviders are ignored and ApiKeys referring to one report
    /// ProviderNotAllowed.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "KEYSMITH_NAMESPACED_PROVIDERS")]
    pub namespaced_providers: bool,
    /// Hosts a provider object's base URL may name (comma-separated, exact host names). Empty:
    /// any. A provider object whose base URL names another host is InvalidProvider, and no call
    /// is made.
    #[arg(long, value_delimiter = ',', env = "KEYSMITH_ALLOWED_BASE_URL_HOSTS")]
    pub allowed_base_url_hosts: Vec<String>,
    /// Let namespaced KeyProviders reach loopback, link-local (169.254.0.0/16, fe80::/10),
    /// private (10/8, 172.16/12, 192.168/16, fc00::/7), shared, unspecified, multicast and
    /// reserved addresses, checked on every address a host name resolves to. Off by default: a
    /// tenant's KeyProvider aimed there is InvalidProvider and nothing is sent. ClusterKeyProviders
    /// are never restricted.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", env = "KEYSMITH_ALLOW_PRIVATE_PROVIDER_NETWORKS")]
    pub allow_private_provider_networks: bool,
    /// Let namespaced KeyProviders use plain `http://` base URLs. Off by default: they must use
    /// `https://`. ClusterKeyProviders may always use http.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", env = "KEYSMITH_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
    /// Export per-ApiKey metrics (spend ratio, limit, expiry, last use, key creation) labelled
    /// namespace/apikey/provider. Off by default: one series set per ApiKey.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", env = "KEYSMITH_PER_KEY_METRICS")]
    pub per_key_metrics: bool,
    /// Most ApiKeys with per-key series; updates of further ApiKeys are dropped and counted
    /// (`keysmith_per_key_metrics_dropped_total`).
    #[arg(long, default_value_t = crate::metrics::per_key::DEFAULT_MAX_KEYS, env = "KEYSMITH_PER_KEY_METRICS_MAX_SERIES")]
    pub per_key_metrics_max_series: usize,
    /// ApiKeys reconciled at once.
    #[arg(long, default_value_t = 64, env = "KEYSMITH_CONCURRENCY")]
    pub concurrency: u16,
}

/// Run the controller until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("cannot configure a Kubernetes client: run in a cluster or set KUBECONFIG")?;
    // Two clients: the Lease is written through a plain one; the controllers' writes go through
    // one that refuses them once the leader Lease's renew deadline has passed (fencing).
    let lease_client = Client::try_from(config.clone())
        .context("cannot configure a Kubernetes client: run in a cluster or set KUBECONFIG")?;
    let lease = Arc::new(leader::LeaseClock::default());
    let client = leader::fenced_client(config, lease.clone())
        .context("cannot configure a Kubernetes client: run in a cluster or set KUBECONFIG")?;
    check_crds(&client).await?;
    let metrics = Arc::new(if args.per_key_metrics {
        Metrics::with_per_key(args.per_key_metrics_max_series)
    } else {
        Metrics::new()
    });
    let health = Arc::new(Health::default());
    let server = tokio::spawn(serve_http(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
    ));
    let mut client_options = crate::providers::ClientOptions::default();
    if args.leader_elect {
        // A create starts only if it can end before the Lease's renew deadline: provider
        // requests must be shorter than the window between two renewals.
        let cap = leader::provider_timeout_cap(leader::lease_ttl(&args));
        if client_options.timeout > cap {
            tracing::info!(
                timeout_ms = cap.as_millis() as u64,
                "provider request timeout capped to fit the leader Lease"
            );
            client_options.timeout = cap;
        }
    }
    let settings = Settings {
        operator_namespace: args.namespace.clone(),
        reporter: "keysmith".into(),
        cluster_providers: args.cluster_providers,
        namespaced_providers: args.namespaced_providers,
        watch_namespaces: args.watch_namespaces.clone(),
        allowed_base_url_hosts: args
            .allowed_base_url_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
        namespaced_network: crate::providers::NetworkPolicy {
            allow_private: args.allow_private_provider_networks,
            allow_http: args.allow_insecure_http,
        },
        client_options,
        restart_debounce: restart::DEBOUNCE_WINDOW,
    };
    let ctx = Context::fenced(client.clone(), metrics, settings, lease);
    let ctx = Arc::new(ctx);

    if args.leader_elect {
        leader::run_with_leader_election(lease_client, ctx, &args, health).await?;
    } else {
        health.leader.store(true, Ordering::SeqCst);
        ctx.metrics.leader.set(1);
        run_controllers(client, ctx, &args, health, crate::shutdown_signal()).await;
    }
    server.abort();
    Ok(())
}

/// Exit with an install hint when the CRDs are missing.
async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<ApiKey> = Api::all(client.clone());
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the ApiKey CRD is not installed: run `keysmith crds | kubectl apply --server-side -f -` (or install the Helm chart)"
        ),
        // Forbidden in a namespace-scoped install is fine: the per-namespace watches will tell.
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        Err(e) => Err(e).context("cannot reach the Kubernetes API"),
    }
}

/// Where the namespaced controllers watch: every namespace, or each of `--watch-namespaces`.
fn watched_namespaces(args: &RunArgs) -> Vec<Option<String>> {
    if args.watch_namespaces.is_empty() {
        vec![None]
    } else {
        args.watch_namespaces.iter().cloned().map(Some).collect()
    }
}

/// An Api of `K` in `ns`, or across all namespaces.
fn api_in<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// ApiKeys per list page of the ApiKey watch (see `apikey_controller`).
pub const APIKEY_LIST_PAGE: u32 = 100;

/// The ApiKey controller of one namespace (or all), with its watches: the Secrets it owns,
/// labelled source Secrets, and the provider objects the ApiKeys use.
fn apikey_controller(
    client: &Client,
    ctx: Arc<Context>,
    args: &RunArgs,
    ns: Option<&str>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    // Smaller list pages than kube's 500: an ApiKey may hold up to about 300 KiB of spec (the
    // CRD's bounds, issue 17), and every page is one response held whole while it is parsed.
    let mut apikey_wc = watcher::Config::default().page_size(APIKEY_LIST_PAGE);
    if let Some(sel) = &args.label_selector {
        apikey_wc = apikey_wc.labels(sel);
    }
    let secret_wc = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let secrets: Api<Secret> = api_in(client, ns);
    // ApiKey events that only change its status (keysmith's own writes) reconcile nothing: the
    // reconcile that wrote it already acted, and its requeue covers the refresh (issue 11).
    let (store, writer) = reflector::store();
    // The cached copies drop what keysmith never reads (see `cache::slim`).
    let apikeys = watcher(api_in::<ApiKey>(client, ns), apikey_wc)
        .default_backoff()
        .modify(cache::slim);
    let apikeys = reflector(writer, apikeys)
        .applied_objects()
        .predicate_filter(predicates::apikey_changes, Default::default());
    ctx.cache.add_apikeys(store.clone());
    let ctl = Controller::for_stream(apikeys, store.clone());
    // Provider objects, kept in stores (every event updates the store; only meaningful changes
    // re-reconcile): a change of one re-reconciles the ApiKeys it serves, and the stores map a
    // credentials Secret to the provider objects that read it.
    let (kp_store, kp_writer) = reflector::store::<KeyProvider>();
    let kp_stream = reflector(
        kp_writer,
        watcher(
            api_in::<KeyProvider>(client, ns),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects()
    .predicate_filter(predicates::key_provider_changes, Default::default());
    ctx.cache.add_key_providers(kp_store.clone());
    let ctl = {
        let store = store.clone();
        ctl.watches_stream(kp_stream, move |kp| {
            watches::apikeys_using_key_provider(&store, &kp)
        })
    };
    let (ctl, ckp_store) = if args.cluster_providers {
        let (ckp_store, ckp_writer) = reflector::store::<ClusterKeyProvider>();
        let ckp_stream = reflector(
            ckp_writer,
            watcher(
                Api::<ClusterKeyProvider>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .touched_objects()
        .predicate_filter(predicates::cluster_provider_changes, Default::default());
        ctx.cache.set_cluster_providers(ckp_store.clone());
        let store = store.clone();
        let ctl = ctl.watches_stream(ckp_stream, move |ckp| {
            watches::apikeys_using_cluster_provider(&store, &ckp)
        });
        (ctl, Some(ckp_store))
    } else {
        (ctl, None)
    };
    // Credentials Secrets (metadata only; only those a provider object reads map to ApiKeys):
    // an ApiKey applied before its provider's credentials is Ready as soon as they appear.
    let creds_stream = watcher(
        api_in::<PartialObjectMeta<Secret>>(client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let ctl = {
        let store = store.clone();
        let operator_ns = ctx.settings.operator_namespace.clone();
        ctl.watches_stream(creds_stream, move |s| {
            watches::apikeys_using_credentials(
                &store,
                &kp_store,
                ckp_store.as_ref(),
                &operator_ns,
                &s.namespace().unwrap_or_default(),
                &s.name_any(),
            )
        })
    };
    let source_store = store.clone();
    // Source Secrets: metadata only (the mapper needs namespace and name; the value is read
    // when the ApiKey is reconciled), so no Secret data is held or decoded by the watch.
    let sources = watcher(
        api_in::<PartialObjectMeta<Secret>>(client, ns),
        watcher::Config::default().labels(SOURCE_LABEL),
    )
    .default_backoff()
    .touched_objects();
    let ctl = ctl
        // Owned Secrets: kube watches them metadata-only.
        .owns(secrets, secret_wc)
        // Source Secrets of pushed keys, when labelled keysmith.dev/source: a change re-pushes
        // at once (unlabelled ones are checked every refresh interval).
        .watches_stream(sources, move |s| {
            let s = Secret {
                metadata: s.metadata,
                ..Default::default()
            };
            watches::apikeys_using_source_secret(&source_store, &s)
        })
        .with_config(controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(stop)
        .run(supervise::reconcile_apikey, apikey::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(ctl)
}

/// Run every controller until `stop` resolves; in-flight reconciles finish first (or are
/// cancelled at the leader Lease's renew deadline). A controller that ends on its own turns
/// `/healthz` bad.
pub async fn run_controllers(
    client: Client,
    ctx: Arc<Context>,
    args: &RunArgs,
    health: Arc<Health>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = stopping.clone();
    let stop = futures::future::FutureExt::shared(Box::pin(async move {
        stop.await;
        flag.store(true, Ordering::SeqCst);
    }));
    let mut tasks = Vec::new();
    if args.cluster_providers {
        // Namespace labels for ClusterKeyProviders' namespaceSelector: metadata only.
        let (ns_store, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let namespaces = reflector(
            ns_writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .take_until(stop.clone())
        .for_each(|_| futures::future::ready(()));
        ctx.cache.set_namespaces(ns_store);
        tokio::spawn(namespaces);
    }
    for ns in watched_namespaces(args) {
        let ns = ns.as_deref();
        tasks.push((
            "apikey",
            apikey_controller(&client, ctx.clone(), args, ns, stop.clone()),
        ));
        // Also with `--namespaced-providers=false`: then only KeyProviders being deleted are
        // looked at (their in-use finalizer; see supervise::reconcile_key_provider).
        let kp_ctl = Controller::new(
            api_in::<KeyProvider>(&client, ns),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(stop.clone())
        .run(
            supervise::reconcile_key_provider,
            supervise::provider_error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
        tasks.push(("keyprovider", tokio::spawn(kp_ctl)));
    }
    if args.cluster_providers {
        let ckp_ctl = Controller::new(
            Api::<ClusterKeyProvider>::all(client.clone()),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(stop.clone())
        .run(
            supervise::reconcile_cluster_key_provider,
            supervise::provider_error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
        tasks.push(("clusterkeyprovider", tokio::spawn(ckp_ctl)));
    }
    if let Some(name) = args
        .namespace_rolebinding
        .clone()
        .filter(|_| !args.watch_namespaces.is_empty())
    {
        tokio::spawn(nsguard::run(ctx.clone(), name, stop.clone()));
    }
    // KeyBudgets and ClusterKeyBudgets: added up every budget::PASS_INTERVAL. Until the first
    // pass ends, the ApiKey sync leaves the fields a budget sets alone (after a restart a
    // throttle or disable stays in place).
    ctx.budgets.wait_for_first_pass();
    tokio::spawn(budget::run(ctx.clone(), stop.clone()));
    // Caches of provider objects and ApiKeys that are gone are dropped (issue 17).
    let sweep_ctx = ctx.clone();
    let sweep_stop = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(context::CACHE_SWEEP);
        every.tick().await;
        let sweep = async {
            loop {
                every.tick().await;
                let gone = sweep_ctx.prune_caches();
                tracing::debug!(entries = gone, "dropped cached state of deleted objects");
            }
        };
        tokio::select! {
            _ = sweep => {}
            _ = sweep_stop => {}
        }
    });
    health.started.store(true, Ordering::SeqCst);
    tracing::info!(namespaces = ?args.watch_namespaces, selector = ?args.label_selector, "controllers running");
    supervise::supervise(tasks, stopping, health).await;
    tracing::info!("controllers stopped");
}
