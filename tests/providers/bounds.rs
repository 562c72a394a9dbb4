//! The HTTP layer's bounds, against tiny hostile servers: no redirect is followed (a credential
//! must not travel), bodies are capped, listings end, the client-side rate-limit and in-flight
//! waits are bounded, and at most `max_in_flight` calls of one provider object run at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use keysmith::api::{BoltzProvider, KeyProviderSpec, OpenRouterProvider, SecretKeySelector};
use keysmith::providers::{
    build_backend, ClientOptions, Credentials, KeyBackend, KeyScope, ProviderError,
};
use secrecy::SecretString;
use serde_json::json;

const ADMIN: &str = "sk_bc_admin_live_must-not-travel-0001";

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn selector() -> SecretKeySelector {
    SecretKeySelector {
        name: "creds".into(),
        key: "token".into(),
        namespace: None,
    }
}

fn creds(token: &str) -> Credentials {
    let mut c = BTreeMap::new();
    c.insert("token".to_string(), SecretString::from(token.to_string()));
    Credentials(c)
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        max_attempts: 1,
        backoff_base: Duration::from_millis(5),
        ..Default::default()
    }
}

fn boltz(url: &str, o: ClientOptions) -> Arc<dyn KeyBackend> {
    let spec = KeyProviderSpec {
        boltz: Some(BoltzProvider {
            base_url: Some(url.to_string()),
            api_key_secret_ref: selector(),
            workspace_id: None,
        }),
        ..Default::default()
    };
    build_backend(&spec, creds(ADMIN), o).unwrap()
}

fn openrouter(url: &str, o: ClientOptions) -> Arc<dyn KeyBackend> {
    let spec = KeyProviderSpec {
        openrouter: Some(OpenRouterProvider {
            base_url: Some(url.to_string()),
            management_key_secret_ref: selector(),
            workspace_id: None,
        }),
        ..Default::default()
    };
    build_backend(&spec, creds("sk-or-v1-management"), o).unwrap()
}

#[tokio::test]
async fn redirects_are_not_followed_and_the_api_key_stays_home() {
    // The other host records every request and the x-api-key it carried.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let s = seen.clone();
    let elsewhere = serve(Router::new().fallback(any(move |h: HeaderMap| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(
                h.get("x-api-key")
                    .map(|v| v.to_str().unwrap_or("").to_string()),
            );
            axum::Json(json!({"data": [], "has_more": false}))
        }
    })))
    .await;
    let target = format!("{elsewhere}/compute/v1/admin/api-keys");
    for status in [301u16, 302, 307, 308] {
        let t = target.clone();
        let home = serve(Router::new().fallback(any(move || {
            let t = t.clone();
            async move {
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("location", t)],
                    "<html>moved</html>",
                )
            }
        })))
        .await;
        let c = boltz(&home, opts());
        let e = c.list_page(&KeyScope::default(), None).await.unwrap_err();
        assert!(
            matches!(e, ProviderError::Rejected(_) | ProviderError::Malformed(_)),
            "{status}: {e}"
        );
        assert!(!e.to_string().contains("moved"), "{e}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the redirect was followed: {:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn response_bodies_are_capped() {
    let big = 5 << 20;
    let app = Router::new()
        // With a Content-Length: refused before reading.
        .route(
            "/known/keys",
            get(move || async move { vec![b' '; big].into_response() }),
        )
        // Streamed without a length: refused once the cap is passed.
        .route(
            "/streamed/keys",
            get(move || async move {
                let chunks =
                    (0..(big / 65536) + 1).map(|_| Ok::<_, std::io::Error>(vec![b' '; 65536]));
                Body::from_stream(futures::stream::iter(chunks)).into_response()
            }),
        );
    let url = serve(app).await;
    for base in ["known", "streamed"] {
        let c = openrouter(&format!("{url}/{base}"), opts());
        let started = Instant::now();
        let e = c.list_page(&KeyScope::default(), None).await.unwrap_err();
        assert!(
            matches!(&e, ProviderError::Malformed(m) if m.contains("4 MiB")),
            "{base}: {e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// A Boltz listing that never ends: `has_more` always, with a fresh or a repeated cursor.
async fn endless(repeat: bool) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/compute/v1/admin/api-keys",
        get(move |Query(q): Query<BTreeMap<String, String>>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                let id = if repeat {
                    "key_same".to_string()
                } else {
                    format!("key_{n}")
                };
                let _ = q;
                axum::Json(json!({
                    "data": [{"id": id, "name": "x", "is_active": true, "livemode": true,
                              "key_type": "workspace", "created_at": "2026-01-01T00:00:00Z"}],
                    "has_more": true, "first_id": id, "last_id": id,
                }))
            }
        }),
    );
    (serve(app).await, calls)
}

#[tokio::test]
async fn listings_end_on_a_repeated_cursor_and_at_the_page_cap() {
    let (url, calls) = endless(true).await;
    let c = boltz(&url, opts());
    let e = c
        .get(&KeyScope::default(), "key_missing")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Malformed(m) if m.contains("repeated")),
        "{e}"
    );
    assert!(calls.load(Ordering::SeqCst) <= 3);

    let (url, calls) = endless(false).await;
    let c = boltz(&url, opts());
    let e = c
        .get(&KeyScope::default(), "key_missing")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Malformed(m) if m.contains("pages")),
        "{e}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), keysmith::providers::MAX_PAGES);
}

/// A slow provider: each answer takes `delay`; records the most calls in flight at once.
async fn slow(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let m = max.clone();
    let app = Router::new().fallback(any(move || {
        let now = now.clone();
        let max = m.clone();
        async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            now.fetch_sub(1, Ordering::SeqCst);
            axum::Json(json!({"data": []}))
        }
    }));
    (serve(app).await, max)
}

#[tokio::test]
async fn in_flight_calls_per_provider_object_are_limited() {
    let (url, max) = slow(Duration::from_millis(300)).await;
    let c = openrouter(
        &url,
        ClientOptions {
            max_in_flight: 2,
            max_wait: Duration::from_secs(10),
            ..opts()
        },
    );
    let calls = (0..6).map(|_| {
        let c = c.clone();
        async move { c.list_page(&KeyScope::default(), None).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(max.load(Ordering::SeqCst), 2);

    // Waiting for a slot is bounded: beyond max_wait the call fails as RateLimited (nothing
    // was sent), so a reconcile is requeued instead of held.
    let (url, _) = slow(Duration::from_secs(2)).await;
    let c = openrouter(
        &url,
        ClientOptions {
            max_in_flight: 1,
            max_wait: Duration::from_millis(100),
            ..opts()
        },
    );
    let busy = {
        let c = c.clone();
        tokio::spawn(async move { c.list_page(&KeyScope::default(), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let e = c.list_page(&KeyScope::default(), None).await.unwrap_err();
    assert!(matches!(e, ProviderError::RateLimited { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
    busy.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_client_side_rate_limit_wait_is_bounded() {
    let (url, _) = slow(Duration::ZERO).await;
    // One request per 1000 s (the slowest rate there is): the second call would wait 1000 s.
    let c = openrouter(
        &url,
        ClientOptions {
            rate_limit: Some((1e-20, 1)),
            max_wait: Duration::from_millis(200),
            ..opts()
        },
    );
    c.list_page(&KeyScope::default(), None).await.unwrap();
    let started = Instant::now();
    let e = c.list_page(&KeyScope::default(), None).await.unwrap_err();
    assert!(
        matches!(
            e,
            ProviderError::RateLimited {
                retry_after: Some(_)
            }
        ),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn error_text_is_short_and_never_quotes_a_foreign_body() {
    let page = format!(
        "<html><title>502 from proxy.corp</title>{}</html>",
        "internal detail ".repeat(500)
    );
    let long_json = json!({"error": {"message": "é".repeat(5000)}}).to_string();
    let app = Router::new()
        .route(
            "/html/keys",
            get(move || async move { (StatusCode::BAD_GATEWAY, page.clone()) }),
        )
        .route(
            "/json/keys",
            get(move || async move {
                (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/json")],
                    long_json.clone(),
                )
            }),
        );
    let url = serve(app).await;
    let c = openrouter(&format!("{url}/html"), opts());
    let e = c
        .list_page(&KeyScope::default(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !e.contains("proxy.corp") && !e.contains("internal detail"),
        "{e}"
    );
    let c = openrouter(&format!("{url}/json"), opts());
    let e = c
        .list_page(&KeyScope::default(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("éé"), "{e}");
    assert!(e.chars().count() <= 300, "{} chars", e.chars().count());
}

#[tokio::test]
async fn digitalocean_429_without_retry_after_honours_ratelimit_reset() {
    use keysmith::api::DigitalOceanProvider;
    // A 429 with only DigitalOcean's ratelimit-reset (epoch seconds): first 90 s away (longer
    // than the client waits inside a call), then far in the future (clamped to the maximum).
    let resets = Arc::new(Mutex::new(vec![
        (chrono::Utc::now().timestamp() + 90).to_string(),
        "99999999999".to_string(),
    ]));
    let r = resets.clone();
    let app = Router::new().fallback(any(move || {
        let r = r.clone();
        async move {
            let reset = r.lock().unwrap().remove(0);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("ratelimit-limit", "5000".to_string()),
                    ("ratelimit-remaining", "0".to_string()),
                    ("ratelimit-reset", reset),
                ],
                axum::Json(
                    json!({"id": "too_many_requests", "message": "API Rate limit exceeded."}),
                ),
            )
        }
    }));
    let url = serve(app).await;
    let spec = KeyProviderSpec {
        digitalocean: Some(DigitalOceanProvider {
            base_url: Some(url),
            token_secret_ref: selector(),
        }),
        ..Default::default()
    };
    let c = build_backend(
        &spec,
        creds("dop_v1_token"),
        ClientOptions {
            max_attempts: 2,
            max_retry_after: Duration::from_secs(10),
            ..opts()
        },
    )
    .unwrap();
    let started = Instant::now();
    // Longer than max_retry_after: not waited out in the call, handed back with the wait.
    let e = c.verify().await.unwrap_err();
    match e {
        ProviderError::RateLimited {
            retry_after: Some(w),
        } => assert!(
            w > Duration::from_secs(80) && w <= Duration::from_secs(90),
            "{w:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The answer said `ratelimit-remaining: 0`: this client sends nothing before the reset
    // (pacing), and says how long is left.
    match c.verify().await.unwrap_err() {
        ProviderError::RateLimited {
            retry_after: Some(w),
        } => assert!(w <= Duration::from_secs(90), "{w:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        resets.lock().unwrap().len(),
        1,
        "the paced call sent nothing"
    );
    // A fresh client (no pacing state) sends, and a reset far away is clamped.
    let c = build_backend(
        &spec,
        creds("dop_v1_token"),
        ClientOptions {
            max_attempts: 2,
            max_retry_after: Duration::from_secs(10),
            ..opts()
        },
    )
    .unwrap();
    let e = c.verify().await.unwrap_err();
    assert_eq!(
        e,
        ProviderError::RateLimited {
            retry_after: Some(keysmith::providers::MAX_RETRY_AFTER)
        }
    );
}
