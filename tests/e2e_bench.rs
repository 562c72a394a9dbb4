//! Cluster benchmark: N ApiKeys against a real API server, the real operator (`keysmith run`,
//! a child process) and the OpenRouter emulator with a rate limit and latency. Prints figures;
//! asserts only that every ApiKey gets Ready with one live key. `#[ignore]`d (run only when
//! asked, `--ignored`); on the local control plane, or a cluster of `KUBECONFIG` with
//! `KEYSMITH_E2E=1`:
//!
//! ```text
//! cargo test --release --test e2e_bench -- --ignored --nocapture
//! KEYSMITH_E2E=1 KUBECONFIG=~/.kube/config cargo test --release --test e2e_bench -- --ignored --nocapture
//! BENCH_N=10000 … (the ≤ 64 MiB target is stated for 10,000 ApiKeys)
//! ```
//!
//! Knobs (shared with benches/reconcile.rs, see `keysmith_testkit::bench` and docs/performance.md):
//! `BENCH_N` (1000), `BENCH_RATE` emulator requests/s before 429 (50), `BENCH_LATENCY` (5ms),
//! `BENCH_CONCURRENCY` (`keysmith run --concurrency`, 64), `BENCH_REFRESH` the
//! ClusterKeyProvider's refreshInterval (30s here), `BENCH_CLIENT_RPS` its client-side rate limit
//! (unset: none), `BENCH_RETRY_AFTER` the emulator's Retry-After (1), `BENCH_NAMESPACES` (1)
//! and `BENCH_PROVIDERS` (1): the ApiKeys spread round-robin over that many namespaces and
//! ClusterKeyProviders (all of one account at the emulator).

use keysmith_testkit::bench;
use keysmith_testkit::cluster;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use keysmith::api::{ApiKey, ClusterKeyProvider};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use bench::{mib, route, rss_breakdown, vm_hwm_kib, BenchConfig};
use cluster::{is_ready, Cluster, EmulatorOptions, ProviderOptions, RUN_LABEL};

#[ignore = "benchmark: cargo test --release --test e2e_bench -- --ignored --nocapture (docs/performance.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apikeys_at_scale() {
    cluster::require("the cluster benchmark");
    let cfg = BenchConfig::from_env("30s");
    let n = cfg.n;
    println!("keysmith cluster benchmark: {}", cfg.describe());

    let cluster = Cluster::start(
        "bench",
        EmulatorOptions {
            latency: Some(cfg.latency),
            rate_limit: Some(cfg.rate),
            retry_after: Some(cfg.retry_after),
            ..Default::default()
        },
        ProviderOptions {
            refresh_interval: Some(format!("{}s", cfg.refresh.as_secs())),
            client_rps: cfg.client_rps,
        },
    )
    .await;
    let c = &cluster;
    let concurrency = cfg.concurrency.to_string();
    let op_env: Vec<(&str, &str)> = cfg
        .operator_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut op = c
        .start_operator_env("op", &["--concurrency", &concurrency], &op_env)
        .await;
    let writes_metric = "keysmith_kubernetes_writes_total";

    // BENCH_NAMESPACES / BENCH_PROVIDERS: extra namespaces (labelled like the run's, so the
    // providers' namespaceSelector admits them) and copies of the run's ClusterKeyProvider.
    let mut namespaces = vec![c.ns.clone()];
    for i in 1..cfg.namespaces {
        let name = format!("{}-{i}", c.ns);
        let nsobj: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": { RUN_LABEL: c.run } },
        }))
        .unwrap();
        Api::<Namespace>::all(c.client.clone())
            .create(&PostParams::default(), &nsobj)
            .await
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
        namespaces.push(name);
    }
    let ckps: Api<ClusterKeyProvider> = Api::all(c.client.clone());
    let mut providers = vec![c.provider.clone()];
    let template = ckps
        .get(&c.provider)
        .await
        .expect("the run's ClusterKeyProvider");
    for i in 1..cfg.providers {
        let name = format!("{}-{i}", c.provider);
        // Each copy has a workspace of its own at the emulator (as separate accounts would):
        // its listings hold its keys only.
        let mut spec = serde_json::to_value(&template.spec).unwrap();
        spec["openrouter"]["workspaceID"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
        let copy: ClusterKeyProvider = serde_json::from_value(json!({
            "apiVersion": "keysmith.dev/v1alpha1", "kind": "ClusterKeyProvider",
            "metadata": { "name": name, "labels": { RUN_LABEL: c.run } },
            "spec": spec,
        }))
        .unwrap();
        ckps.create(&PostParams::default(), &copy)
            .await
            .unwrap_or_else(|e| panic!("ClusterKeyProvider {name}: {e}"));
        providers.push(name);
    }

    // Readiness is followed with a watch of the run's ApiKeys, not by polling N objects.
    let start = Instant::now();
    let ready_at: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
    let follower = {
        let ready_at = ready_at.clone();
        let wc = watcher::Config::default().labels(&format!("{RUN_LABEL}={}", c.run));
        let stream = watcher(Api::<ApiKey>::all(c.client.clone()), wc)
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Ok(ak) = ev {
                    if is_ready(&ak) {
                        ready_at
                            .lock()
                            .unwrap()
                            .entry(ak.name_any())
                            .or_insert_with(|| start.elapsed());
                    }
                }
            }
        })
    };

    c.reset_emulator_stats().await;
    let writes_before = op.metric_sum(&c.http, writes_metric).await;
    let namespaces_ref = &namespaces;
    let providers_ref = &providers;
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| async move {
            let ns = &namespaces_ref[i % namespaces_ref.len()];
            let provider = &providers_ref[i % providers_ref.len()];
            let mut ak = c.apikey(
                &format!("bench-{i:05}"),
                json!({ "providerRef": { "kind": "ClusterKeyProvider", "name": provider } }),
            );
            ak.metadata.namespace = Some(ns.clone());
            let api: Api<ApiKey> = Api::namespaced(c.client.clone(), ns);
            api.create(&PostParams::default(), &ak)
                .await
                .unwrap_or_else(|e| panic!("create bench-{i:05}: {e}"));
        })
        .await;
    let submitted = start.elapsed();
    let bound = cfg.bound();
    let ready_at_ref = &ready_at;
    c.eventually(
        "every ApiKey Ready",
        (bound * 20).max(Duration::from_secs(600)),
        || async move {
            let k = ready_at_ref.lock().unwrap().len();
            if k >= n {
                Ok(())
            } else {
                Err(format!("{k} of {n} Ready"))
            }
        },
    )
    .await;
    let all_ready = ready_at.lock().unwrap().values().max().copied().unwrap();
    // Let the reconciles the last writes triggered finish before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = c.emulator_stats().await;
    let requests = stats["requests"].as_u64().unwrap_or(0);
    let writes = op.metric_sum(&c.http, writes_metric).await - writes_before;
    let writes_of = |filter: &'static str| {
        let op = &op;
        async move { op.metric_sum_where(&c.http, writes_metric, filter).await }
    };
    let (w_status, w_meta, w_secret) = (
        writes_of("resource=\"apikeys/status\"").await,
        writes_of("resource=\"apikeys\"").await,
        writes_of("resource=\"secrets\"").await,
    );
    let limited = op
        .metric_sum_where(
            &c.http,
            "keysmith_provider_requests_total",
            "result=\"rate_limited\"",
        )
        .await;
    println!("== creation ==");
    println!(
        "{n} ApiKeys submitted in {:.1}s; all Ready after {:.1}s; bound N/R = {:.1}s; ratio {:.2}",
        submitted.as_secs_f64(),
        all_ready.as_secs_f64(),
        bound.as_secs_f64(),
        all_ready.as_secs_f64() / bound.as_secs_f64()
    );
    println!(
        "provider requests: {requests} = {:.2} per key (POST /keys {}, GET /keys {}, GET /keys/{{hash}} {}; 429s seen by keysmith {limited})",
        requests as f64 / n as f64,
        route(&stats, "POST /api/v1/keys"),
        route(&stats, "GET /api/v1/keys"),
        route(&stats, "GET /api/v1/keys/{hash}"),
    );
    // Keys the emulator made (it serves this run only), not POST requests: a POST answered 429
    // created nothing.
    let created = c.emulator_keys().await.len();
    println!(
        "creates per key: {:.3} ({created} keys created at the emulator for {n} ApiKeys, POST /keys requests {} incl. those answered 429; target 1.000); renames (PATCH /keys/{{hash}}) {}; list pages per created key: {:.4} (GET /keys {}; target ≤ 0.02)",
        created as f64 / n as f64,
        route(&stats, "POST /api/v1/keys"),
        route(&stats, "PATCH /api/v1/keys/{hash}"),
        route(&stats, "GET /api/v1/keys") as f64 / n as f64,
        route(&stats, "GET /api/v1/keys"),
    );
    // Refresh listings while creation runs: each refreshInterval the snapshot is stale and one
    // listing of the keys existing then serves every refresh (the rest is creation's own).
    let refresh_pages: usize = {
        let ready = ready_at.lock().unwrap();
        let per_provider =
            |t: Duration| ready.values().filter(|r| **r <= t).count() / providers.len();
        (1..)
            .map(|j| cfg.refresh * j)
            .take_while(|t| *t <= all_ready)
            .map(|t| providers.len() * (per_provider(t) / 100 + 1))
            .sum()
    };
    println!(
        "list pages while creation ran: {} = ~{refresh_pages} of the refresh listings due every refreshInterval + {} more: {:.4} per created key without the refreshes (target ≤ 0.02)",
        route(&stats, "GET /api/v1/keys"),
        route(&stats, "GET /api/v1/keys").saturating_sub(refresh_pages as u64),
        route(&stats, "GET /api/v1/keys").saturating_sub(refresh_pages as u64) as f64 / n as f64,
    );
    println!(
        "Kubernetes writes (keysmith_kubernetes_writes_total; Events not counted): {writes} = {:.2} per key (ApiKey metadata (finalizer) {w_meta}, ApiKey status {w_status}, Secret {w_secret})",
        writes / n as f64
    );
    let counted_at = start.elapsed();
    let reconciles = op
        .metric_sum(&c.http, "controller_runtime_reconcile_total")
        .await;
    // A Ready key is reconciled again every refreshInterval (±10%): over a long creation the
    // early keys are refreshed several times before the last is Ready. Those refreshes are
    // expected work, not creation work; their expected number is each key's time spent Ready
    // before the count, over refreshInterval.
    let refreshes: f64 = ready_at
        .lock()
        .unwrap()
        .values()
        .map(|t| counted_at.saturating_sub(*t).as_secs_f64() / cfg.refresh.as_secs_f64())
        .map(f64::floor)
        .sum();
    println!(
        "reconciles: {reconciles} = {:.2} per key (controller_runtime_reconcile_total); of them ~{refreshes:.0} refreshes of keys already Ready (each key's time Ready / refreshInterval), so ~{:.2} per key for creation (target ≤ 3)",
        reconciles / n as f64,
        (reconciles - refreshes) / n as f64
    );
    println!(
        "operator peak RSS so far: {}; {}",
        mib(vm_hwm_kib(op.pid)),
        rss_breakdown(op.pid)
    );

    // One refresh interval of idling, measured after the creation has settled.
    tokio::time::sleep(cfg.refresh).await;
    c.reset_emulator_stats().await;
    let writes_before = op.metric_sum(&c.http, writes_metric).await;
    let window = cfg.refresh.mul_f64(1.2);
    tokio::time::sleep(window).await;
    let stats = c.emulator_stats().await;
    let writes = op.metric_sum(&c.http, writes_metric).await - writes_before;
    // Each provider object lists its own workspace: its share of the keys, 100 a page, and the
    // empty page that ends the listing.
    let pages = n.div_ceil(providers.len()) / 100 + 1;
    println!("== idle, over {window:?} (every key's refresh comes due once; its requeue is refreshInterval ±10%) ==");
    println!(
        "Kubernetes writes: {writes} (target 0); provider requests: {} (GET /keys {}: {:.1} listings of {pages} pages per provider object; GET /keys/{{hash}} {}; target: list pages only)",
        stats["requests"].as_u64().unwrap_or(0),
        route(&stats, "GET /api/v1/keys"),
        route(&stats, "GET /api/v1/keys") as f64 / (pages * providers.len()) as f64,
        route(&stats, "GET /api/v1/keys/{hash}"),
    );
    let peak = vm_hwm_kib(op.pid);
    println!(
        "operator peak RSS (VmHWM of pid {}): {}; {}",
        op.pid,
        mib(peak),
        rss_breakdown(op.pid)
    );
    match (n, peak) {
        (10_000.., Some(kib)) => println!(
            "target: ≤ 48 MiB operator peak RSS with 10,000 ApiKeys: {} at N={n}: {}",
            mib(Some(kib)),
            if kib <= 48 * 1024 { "met" } else { "NOT met" }
        ),
        _ => println!(
            "target: ≤ 48 MiB operator peak RSS with 10,000 ApiKeys: not checked at N={n} (run with BENCH_N=10000)"
        ),
    }

    // A restart with every key Ready: the new operator reads everything once and should write
    // nothing and create nothing.
    op.kill().await;
    c.reset_emulator_stats().await;
    let restarted = Instant::now();
    let op = c
        .start_operator_env("restarted", &["--concurrency", &concurrency], &op_env)
        .await;
    let op_ref = &op;
    c.eventually(
        "the restarted operator reconciling every ApiKey once",
        (bound * 20).max(Duration::from_secs(600)),
        || async move {
            let r = op_ref
                .metric_sum(&c.http, "controller_runtime_reconcile_total")
                .await;
            if r >= n as f64 {
                Ok(())
            } else {
                Err(format!("{r} reconciles"))
            }
        },
    )
    .await;
    let settled = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = c.emulator_stats().await;
    let sum = |filter: &'static str| async move {
        op_ref
            .metric_sum_where(&c.http, writes_metric, filter)
            .await
    };
    println!("== restart with all {n} keys Ready ==");
    println!(
        "every ApiKey reconciled after {:.1}s; keys created: {} (target 0); Secret writes: {} (target 0); status writes: {} (target 0); all Kubernetes writes: {}; provider requests: {} (GET /keys {}, GET /keys/{{hash}} {}, POST /keys {})",
        settled.as_secs_f64(),
        op.metric_sum(&c.http, "keysmith_keys_created_total").await,
        sum("resource=\"secrets\"").await,
        sum("resource=\"apikeys/status\"").await,
        op.metric_sum(&c.http, writes_metric).await,
        stats["requests"].as_u64().unwrap_or(0),
        route(&stats, "GET /api/v1/keys"),
        route(&stats, "GET /api/v1/keys/{hash}"),
        route(&stats, "POST /api/v1/keys"),
    );
    println!(
        "restarted operator peak RSS: {}; {}",
        mib(vm_hwm_kib(op.pid)),
        rss_breakdown(op.pid)
    );

    // Every ApiKey has its key, and nothing else is live.
    let live = c
        .emulator_keys()
        .await
        .into_iter()
        .filter(|k| {
            k["active"] == true
                && k["name"].as_str().is_some_and(|name| {
                    namespaces
                        .iter()
                        .any(|ns| name.starts_with(&format!("{ns}/")))
                })
        })
        .count();
    assert_eq!(live, n, "one live key per ApiKey");

    // Deleting them all goes through the operator: each key is revoked at the provider.
    c.reset_emulator_stats().await;
    let deleting = Instant::now();
    let selector = format!("{RUN_LABEL}={}", c.run);
    // One DELETE per ApiKey (32 at a time): a deletecollection of 10,000 objects outlasts the
    // connection on a loaded API server.
    let names: Vec<(String, String)> = Api::<ApiKey>::all(c.client.clone())
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .expect("list the run's ApiKeys")
        .items
        .into_iter()
        .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
        .collect();
    futures::stream::iter(names)
        .for_each_concurrent(32, |(ns, name)| async move {
            let api: Api<ApiKey> = Api::namespaced(c.client.clone(), &ns);
            for attempt in 0..5 {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => return,
                    Err(kube::Error::Api(e)) if e.code == 404 => return,
                    Err(e) if attempt < 4 => {
                        eprintln!("delete {ns}/{name}: {e}; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => panic!("delete {ns}/{name}: {e}"),
                }
            }
        })
        .await;
    let api: Api<ApiKey> = Api::all(c.client.clone());
    c.eventually(
        "every ApiKey deleted (keys revoked, finalizers released)",
        (bound * 20).max(Duration::from_secs(600)),
        || {
            let api = api.clone();
            let selector = selector.clone();
            async move {
                let l = api
                    .list(&ListParams::default().labels(&selector).limit(1))
                    .await
                    .map_err(|e| e.to_string())?;
                if l.items.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "about {} left",
                        l.metadata.remaining_item_count.unwrap_or(0) + 1
                    ))
                }
            }
        },
    )
    .await;
    let stats = c.emulator_stats().await;
    println!(
        "== deletion ==\nall {n} deleted after {:.1}s (DELETE /keys/{{hash}} {}); operator peak RSS {}",
        deleting.elapsed().as_secs_f64(),
        route(&stats, "DELETE /api/v1/keys/{hash}"),
        mib(vm_hwm_kib(op.pid))
    );
    follower.abort();
    drop(op);
    for name in &namespaces[1..] {
        let _ = Api::<Namespace>::all(c.client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }
    for name in &providers[1..] {
        let _ = ckps.delete(name, &DeleteParams::default()).await;
    }
}
