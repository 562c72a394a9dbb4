//! Reconcile benchmark: N ApiKeys reconciled in-process against the local Kubernetes API server
//! (`keysmith_testkit::control_plane`, as in tests/controller; no cluster needed) and the OpenRouter
//! emulator, with the emulator's rate limit and latency. Writes are recorded by the tower layer
//! of `keysmith_testkit::kube_recorder`.
//!
//! ```text
//! cargo bench --bench reconcile                       # N=1000, 50 rps, 5ms
//! BENCH_N=200 BENCH_RATE=50 BENCH_LATENCY=5ms cargo bench --bench reconcile
//! ```
//!
//! Knobs (environment, shared with tests/e2e_bench.rs: `keysmith_testkit::bench`): `BENCH_N` (1000),
//! `BENCH_RATE` requests/s the emulator serves before answering 429 + Retry-After (50),
//! `BENCH_LATENCY` added to every emulator answer (5ms), `BENCH_CONCURRENCY` reconciles in
//! flight, like `keysmith run --concurrency` (16), `BENCH_REFRESH` the ClusterKeyProvider's
//! refreshInterval (10s here), `BENCH_CLIENT_RPS` the ClusterKeyProvider's client-side
//! `rateLimit.requestsPerSecond` (unset: none), `BENCH_RETRY_AFTER` seconds the emulator's 429
//! answers ask for (1; keysmith waits inside a call for at most 10 s, longer ones end the
//! reconcile with RateLimited).
//!
//! The driver stands in for kube-runtime's Controller: at most BENCH_CONCURRENCY reconciles run
//! at once; a reconcile that wrote the ApiKey is followed at once by another (the watch event of
//! its own write), otherwise the object waits for the requeue delay the reconcile returned. It
//! reads the ApiKey fresh from the API server each time (a watch cache that is never stale).
//!
//! Figures are printed, nothing is asserted; docs/performance.md records them.

use keysmith_testkit::{apikey_status, bench, control_plane, emulator_control, kube_recorder};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Semaphore;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use keysmith::api::{ApiKey, ClusterKeyProvider, ClusterKeyProviderSpec, KeyProviderSpec};
use keysmith::controller::{apikey, Context};
use keysmith::emulators::{self, openrouter};
use keysmith::metrics::Metrics;

use apikey_status::is_ready;
use bench::{mib, route, vm_hwm_kib, BenchConfig};
use emulator_control::EmulatorControl;

const MGMT: &str = "sk-or-v1-mgmt-bench-0000";
const PROVIDER: &str = "openrouter";

/// kube's `Action` keeps its delay private; its Debug form is `Action { requeue_after: Some(1.5s) }`.
fn requeue_of(a: &Action) -> Option<Duration> {
    let s = format!("{a:?}");
    let d = s.split("Some(").nth(1)?.split(')').next()?;
    let unit_at = d.find(|c: char| c.is_alphabetic() || c == 'µ')?;
    let (num, unit) = d.split_at(unit_at);
    let num: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => num,
        "ms" => num / 1e3,
        "µs" => num / 1e6,
        "ns" => num / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// What one ApiKey went through until it was Ready and settled.
struct Outcome {
    ready_at: Duration,
    reconciles: u32,
}

/// Reconcile `name` like the controller would until it is Ready and its last reconcile wrote
/// nothing.
async fn drive_until_ready(
    api: Api<ApiKey>,
    ctx: Arc<Context>,
    sem: Arc<Semaphore>,
    name: String,
    start: Instant,
) -> Outcome {
    let mut reconciles = 0;
    let mut ready_at = None;
    loop {
        let ak = Arc::new(api.get(&name).await.expect("ApiKey exists"));
        let permit = sem.acquire().await.expect("semaphore open");
        let result = apikey::reconcile(ak.clone(), ctx.clone()).await;
        drop(permit);
        reconciles += 1;
        let action = match result {
            Ok(a) => a,
            Err(e) => apikey::error_policy(ak.clone(), &e, ctx.clone()),
        };
        let after = api.get(&name).await.expect("ApiKey exists");
        if is_ready(&after) && ready_at.is_none() {
            ready_at = Some(start.elapsed());
        }
        if after.resource_version() != ak.resource_version() {
            continue; // the watch event of its own write triggers the next reconcile at once
        }
        if let Some(ready_at) = ready_at {
            return Outcome {
                ready_at,
                reconciles,
            };
        }
        tokio::time::sleep(requeue_of(&action).unwrap_or(Duration::from_secs(300))).await;
    }
}

/// Provider requests counted by keysmith's own metrics, by result (`success`, `rate_limited`…).
fn provider_results(metrics: &Metrics) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.encode().lines() {
        if !line.starts_with("keysmith_provider_requests_total{") {
            continue;
        }
        let result = line
            .split("result=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(result).or_default() += n as u64;
    }
    out
}

/// Writes recorded in front of the API server, grouped by what was written.
fn classify(writes: Vec<String>) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for w in writes {
        let what = if w.starts_with("patch status") {
            "ApiKey status"
        } else if w.starts_with("patch object") {
            "ApiKey metadata (finalizer)"
        } else if w.starts_with("patch Secret") {
            "Secret apply"
        } else if w.starts_with("create Event") {
            "Event"
        } else {
            "other"
        };
        *out.entry(what).or_default() += 1;
    }
    out
}

fn per_key(x: u64, n: usize) -> String {
    format!("{:.2}", x as f64 / n as f64)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") && std::env::var_os("BENCH_N").is_none() {
        println!("reconcile benchmark: not run under cargo test; use `cargo bench --bench reconcile` (or set BENCH_N)");
        return;
    }
    let cfg = BenchConfig::from_env("10s");
    let n = cfg.n;
    println!(
        "keysmith reconcile benchmark (local kube-apiserver + in-process OpenRouter emulator)"
    );
    println!("{}", cfg.describe());

    let mut args = openrouter::Args::with_management_keys(&[MGMT]);
    args.faults.rate_limit = Some(cfg.rate);
    args.faults.latency = Some(cfg.latency);
    // FaultArgs::default() has retry_after 0; `keysmith emulate` defaults to 1 (as does this).
    args.faults.retry_after = cfg.retry_after;
    let (router, faults) = openrouter::build(&args);
    let running = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let emu = EmulatorControl::new(running.url());

    let mut spec: KeyProviderSpec = serde_json::from_value(json!({
        "openrouter": {
            "baseURL": format!("{}/api/v1", emu.url),
            "managementKeySecretRef": { "name": "openrouter-mgmt", "key": "token" },
        },
        "refreshInterval": format!("{}s", cfg.refresh.as_secs()),
    }))
    .expect("provider spec");
    if let Some(rps) = cfg.client_rps {
        spec.rate_limit = serde_json::from_value(
            json!({ "requestsPerSecond": rps, "burst": rps.ceil().max(1.0) as u32 }),
        )
        .expect("rate limit");
    }
    let cp = match control_plane::shared() {
        Ok(cp) => cp,
        Err(e) => {
            println!("reconcile benchmark: NOT RUN: no Kubernetes API server: {e}");
            return;
        }
    };
    let admin = cp.client().await;
    control_plane::install_crds(&admin).await;
    let run = emulators::random_hex(6);
    let (ns, operator_ns) = (format!("bench-{run}"), format!("bench-{run}-op"));
    let provider = format!("{PROVIDER}-{run}");
    for (name, team) in [(&ns, "ai"), (&operator_ns, "")] {
        let n: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": { "team": team } },
        }))
        .unwrap();
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &n)
            .await
            .expect("namespace created");
    }
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "openrouter-mgmt", "namespace": operator_ns },
        "stringData": { "token": MGMT },
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &operator_ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("management-key Secret created");
    let ckp = ClusterKeyProvider::new(&provider, ClusterKeyProviderSpec { inner: spec });
    Api::<ClusterKeyProvider>::all(admin.clone())
        .create(&PostParams::default(), &ckp)
        .await
        .expect("ClusterKeyProvider created");
    let writes = kube_recorder::Writes::default();
    let client = kube_recorder::instrumented(
        cp.client().await,
        Arc::default(),
        writes.clone(),
        Arc::new(kube_recorder::KubeFaults::default()),
    );
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        keysmith::controller::Settings {
            operator_namespace: operator_ns.clone(),
            reporter: "keysmith-bench".into(),
            ..Default::default()
        },
    ));
    // The driver reads with the admin client (not recorded), as a watch cache would.
    let api: Api<ApiKey> = Api::namespaced(admin.clone(), &ns);
    let names: Vec<String> = (0..n).map(|i| format!("key-{i:05}")).collect();
    for name in &names {
        let ak: ApiKey = serde_json::from_value(json!({
            "apiVersion": "keysmith.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "providerRef": { "kind": "ClusterKeyProvider", "name": provider },
                      "limit": { "amount": "10", "reset": "monthly" } },
        }))
        .expect("ApiKey");
        api.create(&PostParams::default(), &ak)
            .await
            .expect("ApiKey created");
    }
    writes.lock().unwrap().clear();
    emu.reset_stats().await;

    // Phase 1: creation, until every ApiKey is Ready.
    let sem = Arc::new(Semaphore::new(cfg.concurrency.into()));
    let start = Instant::now();
    let drivers = names.iter().map(|name| {
        tokio::spawn(drive_until_ready(
            api.clone(),
            ctx.clone(),
            sem.clone(),
            name.clone(),
            start,
        ))
    });
    let outcomes: Vec<Outcome> = futures::future::join_all(drivers)
        .await
        .into_iter()
        .map(|r| r.expect("driver task"))
        .collect();
    let settled = start.elapsed();
    let all_ready = outcomes
        .iter()
        .map(|o| o.ready_at)
        .max()
        .unwrap_or_default();
    let bound = cfg.bound();
    let stats = emu.stats().await;
    let results = provider_results(&metrics);
    let created = classify(std::mem::take(&mut *writes.lock().unwrap()));
    let total_writes: usize = created.values().sum();
    let reconciles: u32 = outcomes.iter().map(|o| o.reconciles).sum();
    let requests = stats["requests"].as_u64().unwrap_or(0);

    println!();
    println!("== creation ==");
    // The emulator's token bucket starts full (burst = R), so N/R slightly overstates the floor.
    let floor = Duration::from_secs_f64((n as f64 - cfg.rate).max(0.0) / cfg.rate);
    println!(
        "all {n} Ready after {:.2}s (every reconcile settled after {:.2}s); bound N/R = {:.2}s; ratio {:.2} ((N-burst)/R = {:.2}s)",
        all_ready.as_secs_f64(),
        settled.as_secs_f64(),
        bound.as_secs_f64(),
        all_ready.as_secs_f64() / bound.as_secs_f64(),
        floor.as_secs_f64()
    );
    println!(
        "provider requests: {requests} = {} per key (POST /keys {}, GET /keys {}, GET /keys/{{hash}} {}); by keysmith's result label: {results:?}",
        per_key(requests, n),
        route(&stats, "POST /api/v1/keys"),
        route(&stats, "GET /api/v1/keys"),
        route(&stats, "GET /api/v1/keys/{hash}"),
    );
    println!(
        "Kubernetes writes: {total_writes} = {} per key {created:?}",
        per_key(total_writes as u64, n)
    );
    println!(
        "reconciles: {reconciles} = {} per key; live keys at the emulator: {} (want {n})",
        per_key(reconciles as u64, n),
        emu.keys()
            .await
            .iter()
            .filter(|k| k["active"] == true)
            .count()
    );

    // Phase 2: one idle refresh pass, once the refresh interval has passed.
    tokio::time::sleep(cfg.refresh + Duration::from_secs(1)).await;
    emu.reset_stats().await;
    writes.lock().unwrap().clear();
    let pass_start = Instant::now();
    let not_ready: usize = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            let ctx = ctx.clone();
            async move {
                let ak = Arc::new(api.get(&name).await.expect("ApiKey exists"));
                if let Err(e) = apikey::reconcile(ak, ctx).await {
                    eprintln!("reconcile {name}: {e}");
                }
                let after = api.get(&name).await.expect("ApiKey exists");
                usize::from(!is_ready(&after))
            }
        })
        .buffer_unordered(cfg.concurrency.into())
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    let pass = pass_start.elapsed();
    let stats = emu.stats().await;
    let idle = classify(std::mem::take(&mut *writes.lock().unwrap()));
    let idle_writes: usize = idle.values().sum();
    let lists = route(&stats, "GET /api/v1/keys");
    println!();
    println!(
        "== idle refresh pass (after {:?}) ==",
        cfg.refresh + Duration::from_secs(1)
    );
    println!(
        "{n} reconciles in {:.2}s; Kubernetes writes: {idle_writes} (target 0) {idle:?}; not Ready afterwards: {not_ready}",
        pass.as_secs_f64()
    );
    println!(
        "provider requests: {} (target: list pages only, ceil(N/100) = {}); GET /keys: {lists} (pages of 100; a full last page needs one more, empty, page), GET /keys/{{hash}}: {}",
        stats["requests"].as_u64().unwrap_or(0),
        n.div_ceil(100),
        route(&stats, "GET /api/v1/keys/{hash}")
    );

    println!();
    println!(
        "peak RSS (VmHWM) of this process: {} (emulator + controller context + driver; kube-apiserver is another process)",
        mib(vm_hwm_kib(std::process::id()))
    );
}
