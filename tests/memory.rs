//! What the operator's memory at 10,000 ApiKeys is made of (issue 11): the heap bytes that each
//! long-lived per-key structure holds, counted by a counting allocator. A benchmark that prints
//! figures (see docs/performance.md, "Memory"); the asserts only check that the counting worked.
//!
//! `cargo test --release --test memory -- --nocapture`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::json;

use keysmith::api::ApiKey;
use keysmith::controller::Snapshot;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 10_000;

/// Heap bytes and blocks `make` leaves allocated.
fn held<T>(make: impl FnOnce() -> T) -> (T, isize, isize) {
    let (b0, n0) = (LIVE.load(Ordering::SeqCst), BLOCKS.load(Ordering::SeqCst));
    let t = make();
    let (b1, n1) = (LIVE.load(Ordering::SeqCst), BLOCKS.load(Ordering::SeqCst));
    (t, b1 - b0, n1 - n0)
}

/// A Ready OpenRouter ApiKey as the API server sends it: applied with kubectl (labels, the
/// last-applied annotation, managedFields of kubectl and of keysmith).
fn ready_apikey(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "keysmith.dev/v1alpha1",
        "kind": "ApiKey",
        "metadata": {
            "name": format!("bench-{i:05}"),
            "namespace": "bench",
            "uid": format!("3f1c2a4e-8d7b-4c1a-9e2f-{i:012}"),
            "resourceVersion": format!("{}", 1_000_000 + i),
            "generation": 1,
            "creationTimestamp": "2026-12-02T10:00:00Z",
            "finalizers": ["keysmith.dev/revoke"],
            "labels": { "app.kubernetes.io/name": "inference", "team": "search" },
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": format!(
                    "{{\"apiVersion\":\"keysmith.dev/v1alpha1\",\"kind\":\"ApiKey\",\"metadata\":{{\"labels\":{{\"app.kubernetes.io/name\":\"inference\",\"team\":\"search\"}},\"name\":\"bench-{i:05}\",\"namespace\":\"bench\"}},\"spec\":{{\"providerRef\":{{\"kind\":\"ClusterKeyProvider\",\"name\":\"openrouter\"}}}}}}\n"
                ),
            },
            "managedFields": [
                { "manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "keysmith.dev/v1alpha1", "time": "2026-12-02T10:00:00Z", "fieldsType": "FieldsV1",
                  "fieldsV1": { "f:metadata": { "f:annotations": { ".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {} }, "f:labels": { ".": {}, "f:app.kubernetes.io/name": {}, "f:team": {} } }, "f:spec": { ".": {}, "f:providerRef": { ".": {}, "f:kind": {}, "f:name": {} } } } },
                { "manager": "keysmith", "operation": "Update", "apiVersion": "keysmith.dev/v1alpha1", "time": "2026-12-02T10:00:00Z", "fieldsType": "FieldsV1",
                  "fieldsV1": { "f:metadata": { "f:finalizers": { ".": {}, "v:\"keysmith.dev/revoke\"": {} } } } },
                { "manager": "keysmith", "operation": "Update", "apiVersion": "keysmith.dev/v1alpha1", "time": "2026-12-02T10:00:01Z", "fieldsType": "FieldsV1", "subresource": "status",
                  "fieldsV1": { "f:status": { ".": {}, "f:conditions": {}, "f:keyID": {}, "f:keyHint": {}, "f:createdAt": {}, "f:usage": {}, "f:secretName": {}, "f:providerType": {}, "f:observedGeneration": {} } } },
            ],
        },
        "spec": {
            "providerRef": { "kind": "ClusterKeyProvider", "name": "openrouter" },
        },
        "status": {
            "observedGeneration": 1,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KeyReady",
                "message": "key delivered to Secret bench-00000",
                "lastTransitionTime": "2026-12-02T10:00:01Z",
                "observedGeneration": 1,
            }],
            "providerType": "openrouter",
            "keyID": format!("{:064x}", i),
            "keyHint": "sk-or-v1-0e6...1c96",
            "createdAt": "2026-12-02T10:00:01Z",
            "usage": { "total": "0", "daily": "0", "weekly": "0", "monthly": "0", "unit": "USD" },
            "secretName": format!("bench-{i:05}"),
        }
    })
}

/// An OpenRouter key as its listing shows it, parsed by the client.
fn listed_openrouter_key(i: usize) -> keysmith::providers::ProviderKey {
    let o: keysmith::providers::OpenRouterKeyObject = serde_json::from_value(json!({
        "hash": format!("{:064x}", i),
        "name": format!("bench/bench-{i:05}"),
        "label": "sk-or-v1-0e6...1c96",
        "disabled": false,
        "limit": null,
        "limit_remaining": null,
        "limit_reset": null,
        "include_byok_in_limit": false,
        "usage": 0.0, "usage_daily": 0.0, "usage_weekly": 0.0, "usage_monthly": 0.0,
        "created_at": "2026-12-02T10:00:01Z",
        "updated_at": null,
        "expires_at": null,
    }))
    .unwrap();
    o.into_provider_key()
}

#[test]
fn per_key_memory_at_10000_keys() {
    let objects: Vec<ApiKey> = (0..N)
        .map(|i| serde_json::from_value(ready_apikey(i)).unwrap())
        .collect();
    // The ApiKey watch store: one Arc<ApiKey> per key, as the API server sent it, and as the
    // operator keeps it (`cache::slim`).
    let store_of = |slim: bool| {
        held(|| {
            let (store, mut writer) = reflector::store::<ApiKey>();
            for mut o in objects.iter().cloned() {
                if slim {
                    keysmith::controller::slim(&mut o);
                }
                writer.apply_watcher_event(&Event::Apply(o));
            }
            (store, writer)
        })
    };
    let ((full, full_writer), full_bytes, full_blocks) = store_of(false);
    assert_eq!(full.state().len(), N);
    drop((full, full_writer));
    let ((store, _writer), apikey_bytes, apikey_blocks) = store_of(true);
    assert_eq!(store.state().len(), N);

    // The listing snapshot: one ProviderKey per key, as the OpenRouter client parses a page.
    let (snapshot, snap_bytes, snap_blocks) = held(|| {
        let mut s = Snapshot::default();
        for i in 0..N {
            let k = listed_openrouter_key(i);
            s.keys.insert(k.id.clone(), Box::new(k));
        }
        s
    });
    assert_eq!(snapshot.keys.len(), N);

    let row = |what: &str, bytes: isize, blocks: isize| {
        println!(
            "{what:<44} {:>7.1} MiB {:>6} B/key {:>5.1} blocks/key",
            bytes as f64 / (1 << 20) as f64,
            bytes / N as isize,
            blocks as f64 / N as f64
        );
    };
    println!(
        "inline sizes: ApiKey {} B (ObjectMeta {}, spec {}, status {}), ProviderKey {} B",
        std::mem::size_of::<ApiKey>(),
        std::mem::size_of::<kube::api::ObjectMeta>(),
        std::mem::size_of::<keysmith::api::ApiKeySpec>(),
        std::mem::size_of::<keysmith::api::ApiKeyStatus>(),
        std::mem::size_of::<keysmith::providers::ProviderKey>(),
    );
    println!("heap held for N = {N} (bytes asked of the allocator, before its overhead)");
    row(
        "ApiKey watch store, objects as sent",
        full_bytes,
        full_blocks,
    );
    row(
        "ApiKey watch store, as kept (cache::slim)",
        apikey_bytes,
        apikey_blocks,
    );
    row("listing snapshot (ProviderKey)", snap_bytes, snap_blocks);
    assert!(apikey_bytes > 0 && snap_bytes > 0);
}

/// Per-ApiKey series (`--per-key-metrics`, issue 21): the heap they hold at 10,000 ApiKeys,
/// what one scrape of them weighs, and that the cap holds when 2,000 more ApiKeys report.
#[test]
fn per_key_metrics_memory_at_10000_keys() {
    use keysmith::metrics::per_key::KeySample;
    use keysmith::metrics::Metrics;

    let sample = |i: usize| KeySample {
        spend_ratio: Some((i % 100) as f64 / 100.0),
        limit: Some(10.0),
        expires_at: Some(1_800_000_000 + i as i64),
        last_used_at: Some(1_780_000_000 + i as i64),
        created_at: Some(1_770_000_000 + i as i64),
    };
    let (plain, plain_bytes, _) = held(Metrics::new);
    let plain_scrape = plain.encode().len();
    let (m, empty_bytes, _) = held(|| Metrics::with_per_key(N));
    let ((), series_bytes, series_blocks) = held(|| {
        let pk = m.per_key.as_ref().unwrap();
        for i in 0..N {
            pk.observe(
                &format!("team-{:03}", i % 200),
                &format!("bench-{i:05}"),
                "openrouter",
                Some(&sample(i)),
            );
        }
    });
    let pk = m.per_key.as_ref().unwrap();
    // 2,000 ApiKeys over the cap: dropped and counted, no series.
    let ((), over_bytes, _) = held(|| {
        for i in N..N + 2_000 {
            pk.observe(
                "team-x",
                &format!("over-{i:05}"),
                "openrouter",
                Some(&sample(i)),
            );
        }
    });
    let scrape = m.encode();
    let series = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("apikey=\"bench-"))
        .count();
    assert_eq!(pk.tracked.get(), N as i64, "ApiKeys with series: the cap");
    assert_eq!(
        pk.dropped.get(),
        2_000,
        "updates beyond the cap are counted"
    );
    assert_eq!(
        series,
        5 * N,
        "five series per ApiKey, none for the dropped ones"
    );
    assert!(!scrape.contains("over-"), "no series beyond the cap");
    // Deleting half the ApiKeys frees their series.
    for i in 0..N / 2 {
        pk.observe(
            &format!("team-{:03}", i % 200),
            &format!("bench-{i:05}"),
            "openrouter",
            None,
        );
    }
    assert_eq!(pk.tracked.get(), (N / 2) as i64);

    let mib = |b: isize| b as f64 / (1 << 20) as f64;
    println!(
        "per-key metrics at N = {N} ApiKeys (heap asked of the allocator, before its overhead)"
    );
    println!(
        "  metrics without per-key series           {:>7.2} MiB",
        mib(plain_bytes)
    );
    println!(
        "  per-key families registered, no series   {:>7.2} MiB",
        mib(empty_bytes - plain_bytes)
    );
    println!(
        "  series of {N} ApiKeys (5 each)          {:>7.2} MiB {:>5} B/ApiKey {:>5.1} blocks/ApiKey",
        mib(series_bytes),
        series_bytes / N as isize,
        series_blocks as f64 / N as f64
    );
    println!(
        "  2,000 ApiKeys over the cap (dropped)     {:>7.3} MiB",
        mib(over_bytes)
    );
    println!(
        "  one scrape: {:.1} MiB with per-key series, {:.1} KiB without ({series} per-key series)",
        scrape.len() as f64 / (1 << 20) as f64,
        plain_scrape as f64 / 1024.0
    );
}
