//! OpenRouter client ⇄ emulator, over real HTTP on loopback, and both against OpenRouter's own
//! OpenAPI description (`tests/specs/openrouter-keys.openapi.yaml`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use keysmith::api::{
    KeyProviderSpec, LimitReset, OpenRouterKeySpec, OpenRouterProvider, SecretKeySelector,
};
use keysmith::emulators::{
    self, build_openrouter, OpenRouterArgs, RunningEmulator, ScriptedFault, OPENROUTER_WORKSPACE,
};
use keysmith::providers::{
    build_backend, drift, ClientOptions, Credentials, Field, KeyBackend, KeyScope, KeySettings,
    Limit, ProviderError,
};
use keysmith::providers::{
    openrouter_update_body as update_body, OpenRouterClient, EXTRA_INCLUDE_BYOK,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::openapi::{validate_request, validate_response};

const MGMT: &str = "sk-or-v1-0000000000000000000000000000000000000000000000000000000000000001";
const SPEC: &str = "tests/specs/openrouter-keys.openapi.yaml";
const OTHER_WORKSPACE: &str = "6f1c1f0e-3d7b-4c1e-9a55-2b8f4e0d9a10";

async fn start() -> RunningEmulator {
    let (router, faults) = build_openrouter(&OpenRouterArgs::with_management_keys(&[MGMT]));
    emulators::spawn(router, faults).await.unwrap()
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(3),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(2),
        ..Default::default()
    }
}

fn spec_for(e: &RunningEmulator, workspace: Option<&str>) -> OpenRouterProvider {
    OpenRouterProvider {
        base_url: Some(format!("{}/api/v1", e.url())),
        management_key_secret_ref: SecretKeySelector {
            name: "openrouter-management".into(),
            key: "token".into(),
            namespace: Some("keysmith-system".into()),
        },
        workspace_id: workspace.map(String::from),
    }
}

fn creds(token: &str) -> Credentials {
    let mut m = BTreeMap::new();
    m.insert("token".to_string(), SecretString::from(token.to_string()));
    Credentials(m)
}

fn client_with(
    e: &RunningEmulator,
    token: &str,
    workspace: Option<&str>,
    mut o: ClientOptions,
) -> OpenRouterClient {
    let spec = spec_for(e, workspace);
    o.base_url = spec.base_url.clone();
    OpenRouterClient::new(&spec, creds(token), o).unwrap()
}

fn client(e: &RunningEmulator) -> OpenRouterClient {
    client_with(e, MGMT, None, opts())
}

fn settings(name: &str) -> KeySettings {
    KeySettings {
        name: name.into(),
        ..Default::default()
    }
}

fn scope() -> KeyScope {
    KeyScope::default()
}

fn count(e: &RunningEmulator, route: &str) -> u64 {
    e.faults.by_route().get(route).copied().unwrap_or(0)
}

/// A raw call to the emulator: status, headers and JSON body (Null when empty).
async fn raw(
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut b = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    if let Some(body) = body {
        b = b.json(&body);
    }
    let resp = b.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "emulator sent non-JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, headers, v)
}

fn api(e: &RunningEmulator, path: &str) -> String {
    format!("{}/api/v1{path}", e.url())
}

async fn control_keys(e: &RunningEmulator) -> Vec<Value> {
    let (s, _, v) = raw("GET", format!("{}/_emulator/keys", e.url()), None, None).await;
    assert_eq!(s, 200);
    v["keys"].as_array().unwrap().clone()
}

fn assert_no_secret(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "a secret leaked into: {text}");
    }
}

#[tokio::test]
async fn lifecycle_create_use_get_update_revoke() {
    let e = start().await;
    let c = client(&e);
    c.verify().await.unwrap();

    let expires = (Utc::now() + chrono::Duration::days(30)).trunc_subsecs(0);
    let mut want = settings("team-a/chat");
    want.expires_at = Some(expires);
    want.limit = Some(Limit {
        amount: "10".into(),
        reset: Some(LimitReset::Monthly),
    });
    want.openrouter = Some(OpenRouterKeySpec {
        include_byok_in_limit: Some(true),
    });
    assert!(c.validate(&want).is_empty());
    let before = Utc::now() - chrono::Duration::seconds(1);
    let created = c.create(&want).await.unwrap();
    let secret = created.secret.expose_secret().to_string();
    let key = created.key;

    // One-time plaintext in OpenRouter's format, a masked hint, the settings as asked.
    assert!(secret.starts_with("sk-or-v1-"), "unexpected key format");
    assert_eq!(secret.len(), "sk-or-v1-".len() + 64);
    assert_eq!(key.id.len(), 64);
    assert!(key.id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(key.name, "team-a/chat");
    let hint = key.hint.clone().unwrap();
    assert_eq!(
        hint,
        format!("{}...{}", &secret[..12], &secret[secret.len() - 4..])
    );
    assert!(key.created_at.unwrap() >= before && key.created_at.unwrap() <= Utc::now());
    assert_eq!(key.observed.disabled, Some(false));
    assert_eq!(key.observed.expires_at, Some(Some(expires)));
    assert_eq!(
        key.observed.limit,
        Some(Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Monthly)
        }))
    );
    assert_eq!(
        key.extras.get(EXTRA_INCLUDE_BYOK).map(String::as_str),
        Some("true")
    );
    assert!(key.last_used_at.is_none());
    assert!(key.active);
    assert!(drift(&c, &key, &want).is_empty());

    // The plaintext is a live key: GET /key answers for it, as a normal (non-management) key.
    let (s, _, body) = raw("GET", api(&e, "/key"), Some(&secret), None).await;
    assert_eq!(s, 200);
    assert_eq!(body["data"]["is_management_key"], json!(false));
    assert_eq!(body["data"]["label"], json!(hint));
    assert_eq!(body["data"]["limit"], json!(10.0));
    validate_response(SPEC, "/key", "GET", 200, &body).unwrap();
    // …and it is refused as a management key.
    let as_mgmt = client_with(&e, &secret, None, opts());
    match as_mgmt.verify().await {
        Err(ProviderError::Auth(m)) => assert!(m.contains("not a management key"), "{m}"),
        other => panic!("expected Auth, got {other:?}"),
    }

    // get returns the same key.
    let got = c.get(&scope(), &key.id).await.unwrap();
    assert_eq!(got.id, key.id);
    assert_eq!(got.name, key.name);
    assert_eq!(got.created_at, key.created_at);
    assert!(drift(&c, &got, &want).is_empty());

    // update: every mutable field at once, only what drifted.
    let mut next = want.clone();
    next.name = "team-a/chat-v2".into();
    next.disabled = true;
    next.limit = Some(Limit {
        amount: "20.5".into(),
        reset: Some(LimitReset::Daily),
    });
    next.openrouter = Some(OpenRouterKeySpec {
        include_byok_in_limit: Some(false),
    });
    let fields = drift(&c, &got, &next);
    assert_eq!(
        fields,
        vec![
            Field::DisplayName,
            Field::Disabled,
            Field::LimitAmount,
            Field::LimitReset,
            Field::Extras
        ]
    );
    assert!(fields.iter().all(|f| c.capabilities().can_update(*f)));
    let updated = c.update(&scope(), &key.id, &next, &fields).await.unwrap();
    assert_eq!(updated.name, "team-a/chat-v2");
    assert_eq!(updated.observed.disabled, Some(true));
    assert!(drift(&c, &updated, &next).is_empty());
    assert_eq!(updated.observed.expires_at, Some(Some(expires)));
    // A disabled key no longer authenticates.
    let (s, _, body) = raw("GET", api(&e, "/key"), Some(&secret), None).await;
    assert_eq!(s, 401);
    validate_response(SPEC, "/key", "GET", 401, &body).unwrap();

    // Removing the limit sends nulls.
    let mut unlimited = next.clone();
    unlimited.limit = None;
    let fields = drift(&c, &updated, &unlimited);
    assert_eq!(fields, vec![Field::LimitAmount, Field::LimitReset]);
    let updated = c
        .update(&scope(), &key.id, &unlimited, &fields)
        .await
        .unwrap();
    assert_eq!(updated.observed.limit, Some(None));
    assert_eq!(updated.usage.unwrap().limit_remaining, None);

    // revoke, then the key is gone everywhere.
    c.revoke(&scope(), &key.id).await.unwrap();
    assert!(matches!(
        c.get(&scope(), &key.id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.revoke(&scope(), &key.id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.update(&scope(), &key.id, &next, &[Field::DisplayName])
            .await,
        Err(ProviderError::NotFound(_))
    ));
    let stored = control_keys(&e).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["id"], json!(key.id));
    assert_eq!(stored[0]["active"], json!(false));
}

#[tokio::test]
async fn listing_pages_through_more_than_one_page_newest_first() {
    let e = start().await;
    // Through build_backend, as the controller builds it.
    let spec = KeyProviderSpec {
        openrouter: Some(spec_for(&e, None)),
        ..Default::default()
    };
    let c: Arc<dyn KeyBackend> = build_backend(&spec, creds(MGMT), opts()).unwrap();
    let mut ids = Vec::new();
    for i in 0..105 {
        let k = c.create(&settings(&format!("k-{i:03}"))).await.unwrap();
        ids.push(k.key.id);
    }
    // A disabled key is listed too: the controller must see every key it owns.
    let mut off = settings("k-003");
    off.disabled = true;
    c.update(&scope(), &ids[3], &off, &[Field::Disabled])
        .await
        .unwrap();

    let first = c.list_page(&scope(), None).await.unwrap();
    assert_eq!(first.keys.len(), 100);
    assert_eq!(first.next.as_deref(), Some("100"));
    assert_eq!(first.keys[0].name, "k-104", "newest first");
    assert_eq!(first.keys[0].id, ids[104]);
    let second = c.list_page(&scope(), first.next.as_deref()).await.unwrap();
    assert_eq!(second.keys.len(), 5);
    // A short page is not taken for the last one: only an empty page ends the listing.
    assert_eq!(second.next.as_deref(), Some("105"));
    let third = c.list_page(&scope(), second.next.as_deref()).await.unwrap();
    assert!(third.keys.is_empty());
    assert_eq!(third.next, None);
    let listed: Vec<&String> = first
        .keys
        .iter()
        .chain(&second.keys)
        .map(|k| &k.id)
        .collect();
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 105);
    let disabled = second.keys.iter().find(|k| k.id == ids[3]).unwrap();
    assert_eq!(disabled.observed.disabled, Some(true));
    assert!(second.keys.iter().all(|k| k.created_at.is_some()));

    // Every page went out with include_disabled=true; without it OpenRouter hides the key.
    let (s, _, body) = raw("GET", api(&e, "/keys?offset=100"), Some(MGMT), None).await;
    assert_eq!(s, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 4);
    validate_response(SPEC, "/keys", "GET", 200, &body).unwrap();

    // The default get() is not used: OpenRouter has GET /keys/{hash}.
    let before = count(&e, "GET /api/v1/keys");
    c.get(&scope(), &ids[0]).await.unwrap();
    assert_eq!(count(&e, "GET /api/v1/keys"), before);
    assert_eq!(count(&e, "GET /api/v1/keys/{hash}"), 1);

    assert!(matches!(
        c.list_page(&scope(), Some("page-two")).await,
        Err(ProviderError::Rejected(_))
    ));
}

#[tokio::test]
async fn a_key_wanted_disabled_is_disabled_right_after_create() {
    let e = start().await;
    let c = client(&e);
    let mut want = settings("team-a/off");
    want.disabled = true;
    let created = c.create(&want).await.unwrap();
    assert_eq!(created.key.observed.disabled, Some(true));
    assert!(drift(&c, &created.key, &want).is_empty());
    assert_eq!(count(&e, "POST /api/v1/keys"), 1);
    assert_eq!(count(&e, "PATCH /api/v1/keys/{hash}"), 1);
    let (s, _, body) = raw(
        "GET",
        api(&e, "/key"),
        Some(created.secret.expose_secret()),
        None,
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(body["error"]["message"], json!("API key is disabled"));

    // If the PATCH fails, the plaintext still comes back, and drift says "disable it".
    e.faults.push([
        ScriptedFault {
            status: None,
            retry_after: None,
            malformed: false,
            delay_ms: None,
        },
        ScriptedFault {
            status: Some(400),
            retry_after: None,
            malformed: false,
            delay_ms: None,
        },
    ]);
    let created = c.create(&want).await.unwrap();
    assert!(created.secret.expose_secret().starts_with("sk-or-v1-"));
    assert_eq!(created.key.observed.disabled, Some(false));
    assert_eq!(drift(&c, &created.key, &want), vec![Field::Disabled]);
}

fn fault(status: u16, retry_after: Option<u64>) -> ScriptedFault {
    ScriptedFault {
        status: Some(status),
        retry_after,
        malformed: false,
        delay_ms: None,
    }
}

#[tokio::test]
async fn wrong_or_non_management_credentials_are_auth_errors() {
    let e = start().await;
    let wrong = client_with(&e, "sk-or-v1-not-a-key-at-all", None, opts());
    for r in [
        wrong.verify().await.map(|_| ()),
        wrong.create(&settings("x")).await.map(|_| ()),
        wrong.list_page(&scope(), None).await.map(|_| ()),
    ] {
        match r {
            Err(ProviderError::Auth(m)) => {
                assert!(m.contains("401"), "{m}");
                assert!(m.contains("User not found."), "{m}");
            }
            other => panic!("expected Auth, got {other:?}"),
        }
    }

    // A minted (normal) key on /keys → 403 with OpenRouter's message.
    let minted = client(&e).create(&settings("normal")).await.unwrap();
    let normal = client_with(&e, minted.secret.expose_secret(), None, opts());
    match normal.create(&settings("y")).await {
        Err(ProviderError::Auth(m)) => {
            assert!(m.contains("403"), "{m}");
            assert!(
                m.contains("Only management keys can perform this operation"),
                "{m}"
            );
            assert_no_secret(&m, &[minted.secret.expose_secret(), MGMT]);
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    match normal.list_page(&scope(), None).await {
        Err(ProviderError::Auth(m)) => assert!(m.contains("403"), "{m}"),
        other => panic!("expected Auth, got {other:?}"),
    }
    assert_eq!(control_keys(&e).await.len(), 1, "no key was created");
    // Auth errors are not transient: not retried.
    assert_eq!(count(&e, "POST /api/v1/keys"), 3);
}

#[tokio::test]
async fn unknown_keys_are_not_found_and_bad_ids_never_reach_the_provider() {
    let e = start().await;
    let c = client(&e);
    let id = "f01d52606dc8f0a8303a7b5cc3fa07109c2e346cec7c0a16b40de462992ce943";
    for r in [
        c.get(&scope(), id).await.map(|_| ()),
        c.update(&scope(), id, &settings("x"), &[Field::DisplayName])
            .await
            .map(|_| ()),
        c.revoke(&scope(), id).await,
    ] {
        match r {
            Err(ProviderError::NotFound(m)) => assert!(m.contains("Resource not found"), "{m}"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    let before = e.faults.requests();
    assert!(matches!(
        c.get(&scope(), "../key").await,
        Err(ProviderError::Rejected(_))
    ));
    assert!(matches!(
        c.revoke(&scope(), "a?b").await,
        Err(ProviderError::Rejected(_))
    ));
    // expiresAt is fixed at creation at OpenRouter.
    assert!(!c.capabilities().can_update(Field::ExpiresAt));
    assert!(matches!(
        c.update(&scope(), id, &settings("x"), &[Field::ExpiresAt])
            .await,
        Err(ProviderError::Unsupported(_))
    ));
    assert_eq!(e.faults.requests(), before);
}

#[tokio::test]
async fn validation_errors_are_rejected() {
    let e = start().await;
    let c = client(&e);
    // A limit OpenRouter cannot store exactly is refused before any call.
    let mut s = settings("x");
    s.limit = Some(Limit {
        amount: "0.0000001".into(),
        reset: None,
    });
    assert_eq!(c.validate(&s).len(), 1);
    assert!(matches!(
        c.create(&s).await,
        Err(ProviderError::Rejected(_))
    ));
    assert_eq!(e.faults.requests(), 0);

    // The provider's 400 comes back as Rejected with its message, not retried.
    e.faults.push([fault(400, None)]);
    match c.create(&settings("x")).await {
        Err(ProviderError::Rejected(m)) => assert!(m.contains("400"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    e.faults.push([fault(409, None)]);
    assert!(matches!(
        c.list_page(&scope(), None).await,
        Err(ProviderError::Rejected(_))
    ));
    e.faults.push([fault(410, None)]);
    assert!(matches!(
        c.list_page(&scope(), None).await,
        Err(ProviderError::Unsupported(_))
    ));
    assert_eq!(count(&e, "POST /api/v1/keys"), 1);
    assert_eq!(count(&e, "GET /api/v1/keys"), 2);
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let e = start().await;
    let c = client(&e);
    // Retry-After within max_retry_after: waited for, then the call succeeds.
    e.faults.push([fault(429, Some(1))]);
    let t = Instant::now();
    c.list_page(&scope(), None).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(count(&e, "GET /api/v1/keys"), 2);

    // A 429 means OpenRouter did not act: even a create is retried.
    e.faults.push([fault(429, Some(0))]);
    c.create(&settings("after-429")).await.unwrap();
    assert_eq!(count(&e, "POST /api/v1/keys"), 2);
    assert_eq!(control_keys(&e).await.len(), 1);

    // Retry-After beyond max_retry_after: returned at once for the controller to requeue.
    e.faults.push([fault(429, Some(30))]);
    let t = Instant::now();
    match c.list_page(&scope(), None).await {
        Err(ProviderError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(count(&e, "GET /api/v1/keys"), 3);
}

#[tokio::test]
async fn server_errors_are_retried_for_safe_calls_but_not_for_create() {
    let e = start().await;
    let c = client(&e);
    e.faults.push([fault(500, None)]);
    c.list_page(&scope(), None).await.unwrap();
    assert_eq!(count(&e, "GET /api/v1/keys"), 2);

    e.faults.push([fault(500, None)]);
    match c.create(&settings("x")).await {
        Err(ProviderError::Unavailable(m)) => {
            assert!(m.contains("500"), "{m}");
            assert!(m.contains("Internal Server Error"), "{m}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(
        count(&e, "POST /api/v1/keys"),
        1,
        "a create is never repeated"
    );

    // Safe calls give up after max_attempts (3).
    e.faults
        .push([fault(503, None), fault(502, None), fault(500, None)]);
    assert!(matches!(
        c.verify().await,
        Err(ProviderError::Unavailable(_))
    ));
    assert_eq!(count(&e, "GET /api/v1/key"), 3);
}

#[tokio::test]
async fn timeouts_retry_safe_calls_and_fail_creates() {
    let e = start().await;
    let mut o = opts();
    o.timeout = Duration::from_millis(300);
    let c = client_with(&e, MGMT, None, o);
    let slow = ScriptedFault {
        status: None,
        retry_after: None,
        malformed: false,
        delay_ms: Some(1500),
    };
    e.faults.push([slow.clone()]);
    c.list_page(&scope(), None).await.unwrap();
    assert_eq!(count(&e, "GET /api/v1/keys"), 2);

    e.faults.push([slow]);
    let t = Instant::now();
    match c.create(&settings("slow")).await {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_millis(1400));
    assert_eq!(count(&e, "POST /api/v1/keys"), 1);
}

#[tokio::test]
async fn malformed_bodies_are_malformed_errors() {
    let e = start().await;
    let c = client(&e);
    let created = c.create(&settings("x")).await.unwrap();
    let malformed = ScriptedFault {
        status: None,
        retry_after: None,
        malformed: true,
        delay_ms: None,
    };
    e.faults.push([malformed.clone()]);
    assert!(matches!(
        c.get(&scope(), &created.key.id).await,
        Err(ProviderError::Malformed(_))
    ));
    e.faults.push([malformed.clone()]);
    assert!(matches!(
        c.list_page(&scope(), None).await,
        Err(ProviderError::Malformed(_))
    ));
    e.faults.push([malformed]);
    let err = c.create(&settings("y")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn secrets_never_appear_in_errors_or_debug_output() {
    let e = start().await;
    let c = client(&e);
    let created = c.create(&settings("x")).await.unwrap();
    let secret = created.secret.expose_secret().to_string();
    let secrets = [secret.as_str(), MGMT];
    assert_no_secret(&format!("{created:?}"), &secrets);
    assert_no_secret(&format!("{c:?}"), &secrets);
    assert_no_secret(&format!("{:?}", creds(MGMT)), &secrets);
    assert_no_secret(
        &format!("{:?}", OpenRouterArgs::with_management_keys(&[MGMT])),
        &secrets,
    );

    let mut errors = Vec::new();
    let normal = client_with(&e, &secret, None, opts());
    errors.push(normal.verify().await.unwrap_err());
    errors.push(normal.create(&settings("y")).await.unwrap_err());
    errors.push(
        client_with(&e, &format!("{MGMT}x"), None, opts())
            .list_page(&scope(), None)
            .await
            .unwrap_err(),
    );
    e.faults.push([fault(400, None)]);
    errors.push(c.create(&settings("z")).await.unwrap_err());
    e.faults.push([ScriptedFault {
        status: None,
        retry_after: None,
        malformed: true,
        delay_ms: None,
    }]);
    errors.push(c.create(&settings("z")).await.unwrap_err());
    errors.push(c.get(&scope(), &"0".repeat(64)).await.unwrap_err());
    assert_eq!(errors.len(), 6);
    for err in &errors {
        assert_no_secret(&format!("{err}"), &secrets);
        assert_no_secret(&format!("{err:?}"), &secrets);
    }
    // Nor in the emulator's control listing.
    let (_, _, body) = raw("GET", format!("{}/_emulator/keys", e.url()), None, None).await;
    assert_no_secret(&body.to_string(), &secrets);
    assert!(body.to_string().contains(&created.key.id));
}

#[tokio::test]
async fn usage_and_limit_remaining_are_reported() {
    let e = start().await;
    let c = client(&e);
    let mut s = settings("spender");
    s.limit = Some(Limit {
        amount: "10".into(),
        reset: None,
    });
    let created = c.create(&s).await.unwrap();
    let id = created.key.id.clone();
    let u = created.key.usage.unwrap();
    assert_eq!(u.total.as_deref(), Some("0"));
    assert_eq!(u.limit_remaining.as_deref(), Some("10"));

    let bump = |amount: f64, byok: bool| {
        let url = format!("{}/_emulator/usage", e.url());
        let id = id.clone();
        async move {
            let (s, _, b) = raw(
                "POST",
                url,
                None,
                Some(json!({"hash": id, "amount": amount, "byok": byok})),
            )
            .await;
            assert_eq!(s, 200, "{b}");
        }
    };
    bump(1.25, false).await;
    let k = c.get(&scope(), &id).await.unwrap();
    let u = k.usage.unwrap();
    assert_eq!(u.total.as_deref(), Some("1.25"));
    assert_eq!(u.daily.as_deref(), Some("1.25"));
    assert_eq!(u.weekly.as_deref(), Some("1.25"));
    assert_eq!(u.monthly.as_deref(), Some("1.25"));
    assert_eq!(u.limit_remaining.as_deref(), Some("8.75"));
    assert_eq!(u.unit.as_deref(), Some("USD"));

    // BYOK spend counts against the limit only when the key says so, and is reported apart.
    assert_eq!(
        u.byok.as_ref().and_then(|b| b.total.as_deref()),
        Some("0"),
        "no BYOK spend yet"
    );
    bump(0.5, true).await;
    let k = c.get(&scope(), &id).await.unwrap();
    let u = k.usage.unwrap();
    assert_eq!(u.limit_remaining.as_deref(), Some("8.75"));
    assert_eq!(
        u.total.as_deref(),
        Some("1.25"),
        "BYOK spend is not credit spend"
    );
    let byok = u.byok.expect("byok_usage* reported");
    assert_eq!(byok.total.as_deref(), Some("0.5"));
    assert_eq!(byok.daily.as_deref(), Some("0.5"));
    assert_eq!(byok.weekly.as_deref(), Some("0.5"));
    assert_eq!(byok.monthly.as_deref(), Some("0.5"));
    s.openrouter = Some(OpenRouterKeySpec {
        include_byok_in_limit: Some(true),
    });
    let k = c.update(&scope(), &id, &s, &[Field::Extras]).await.unwrap();
    assert_eq!(k.usage.unwrap().limit_remaining.as_deref(), Some("8.25"));

    // The key itself sees its usage at GET /key.
    let (st, _, body) = raw(
        "GET",
        api(&e, "/key"),
        Some(created.secret.expose_secret()),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body["data"]["usage"], json!(1.25));
    assert_eq!(body["data"]["limit_remaining"], json!(8.25));

    let (st, _, _) = raw(
        "POST",
        format!("{}/_emulator/usage", e.url()),
        None,
        Some(json!({"hash": "0".repeat(64), "amount": 1})),
    )
    .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn workspaces_scope_creates_and_listings() {
    let e = start().await;
    let default = client(&e);
    let other = client_with(&e, MGMT, Some(OTHER_WORKSPACE), opts());
    let a = default.create(&settings("in-default")).await.unwrap();
    let b = other.create(&settings("in-other")).await.unwrap();
    let ids = |p: keysmith::providers::KeyPage| -> Vec<String> {
        p.keys.into_iter().map(|k| k.id).collect()
    };
    assert_eq!(
        ids(default.list_page(&scope(), None).await.unwrap()),
        vec![a.key.id.clone()]
    );
    assert_eq!(
        ids(other.list_page(&scope(), None).await.unwrap()),
        vec![b.key.id.clone()]
    );
    let stored = control_keys(&e).await;
    let ws = |id: &str| {
        stored.iter().find(|k| k["id"] == json!(id)).unwrap()["workspaceId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(ws(&a.key.id), OPENROUTER_WORKSPACE);
    assert_eq!(ws(&b.key.id), OTHER_WORKSPACE);
    // GET /keys/{hash} finds a key whatever its workspace.
    default.get(&scope(), &b.key.id).await.unwrap();
}

/// Issue 20: a key's `workspace_id` is compared with the provider object's `workspaceID`.
/// OpenRouter cannot move a key (`workspace_id` is not in `PATCH /keys/{hash}`), so another
/// workspace is drift that needs a new key; without a `workspaceID` (the account's default,
/// whose id the API does not tell) there is nothing to compare.
#[tokio::test]
async fn a_key_in_another_workspace_needs_a_new_key() {
    let e = start().await;
    let other = client_with(&e, MGMT, Some(OTHER_WORKSPACE), opts());
    let in_default = client_with(&e, MGMT, Some(OPENROUTER_WORKSPACE), opts());
    let unset = client(&e);
    let want = settings("moving");
    let key = other.create(&want).await.unwrap().key;
    assert_eq!(
        key.extras
            .get(keysmith::providers::EXTRA_WORKSPACE)
            .map(String::as_str),
        Some(OTHER_WORKSPACE)
    );
    assert!(drift(&other, &key, &want).is_empty());
    // The upper-case spelling of the same UUID is the same workspace.
    let upper = client_with(&e, MGMT, Some(&OTHER_WORKSPACE.to_uppercase()), opts());
    assert!(drift(&upper, &key, &want).is_empty());
    let got = in_default.get(&scope(), &key.id).await.unwrap();
    let d = drift(&in_default, &got, &want);
    assert_eq!(d, vec![Field::Workspace]);
    assert!(
        !in_default.capabilities().can_update(Field::Workspace),
        "a new key, never an update"
    );
    assert!(drift(&unset, &got, &want).is_empty());
}

#[tokio::test]
async fn expired_keys_fail_authentication() {
    let e = start().await;
    let c = client(&e);
    let mut s = settings("short-lived");
    s.expires_at = Some(Utc::now() - chrono::Duration::seconds(5));
    let created = c.create(&s).await.unwrap();
    let (st, _, body) = raw(
        "GET",
        api(&e, "/key"),
        Some(created.secret.expose_secret()),
        None,
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(body["error"]["message"], json!("API key has expired"));
    let stored = control_keys(&e).await;
    assert_eq!(stored[0]["settings"]["expired"], json!(true));
    // It is still listed (and revocable).
    assert_eq!(c.list_page(&scope(), None).await.unwrap().keys.len(), 1);
    c.revoke(&scope(), &created.key.id).await.unwrap();
}

#[tokio::test]
async fn extras_drift_follows_include_byok_in_limit() {
    let e = start().await;
    let c = client(&e);
    let mut s = settings("byok");
    s.openrouter = Some(OpenRouterKeySpec {
        include_byok_in_limit: Some(true),
    });
    let created = c.create(&s).await.unwrap();
    // Someone flips it in the OpenRouter UI.
    let (st, _, _) = raw(
        "PATCH",
        api(&e, &format!("/keys/{}", created.key.id)),
        Some(MGMT),
        Some(json!({"include_byok_in_limit": false})),
    )
    .await;
    assert_eq!(st, 200);
    let k = c.get(&scope(), &created.key.id).await.unwrap();
    assert!(c.extras_drift(&k, &s));
    assert_eq!(drift(&c, &k, &s), vec![Field::Extras]);
    // An ApiKey that does not set it does not care.
    assert!(!c.extras_drift(&k, &settings("byok")));
    let k = c
        .update(&scope(), &k.id, &s, &[Field::Extras])
        .await
        .unwrap();
    assert!(drift(&c, &k, &s).is_empty());
}

#[tokio::test]
async fn emulator_responses_conform_to_the_openapi_spec() {
    let e = start().await;
    let check = |path: &str, method: &str, status: u16, body: &Value| {
        validate_response(SPEC, path, method, status, body)
            .unwrap_or_else(|err| panic!("{err}\nbody: {body}"));
    };

    // 201 create, with every optional field.
    let (s, _, created) = raw(
        "POST",
        api(&e, "/keys"),
        Some(MGMT),
        Some(json!({
            "name": "My New API Key", "limit": 50, "limit_reset": "monthly",
            "include_byok_in_limit": true, "expires_at": "2027-12-31T23:59:59Z",
            "workspace_id": OPENROUTER_WORKSPACE, "creator_user_id": "user_x"
        })),
    )
    .await;
    assert_eq!(s, 201);
    check("/keys", "POST", 201, &created);
    let hash = created["data"]["hash"].as_str().unwrap().to_string();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-or-v1-") && key.len() == 73);
    assert!(key[9..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(created["data"]["limit_remaining"], json!(50.0));
    assert_eq!(created["data"]["updated_at"], Value::Null);
    // Minimal create: nullable fields are null.
    let (s, _, minimal) = raw(
        "POST",
        api(&e, "/keys"),
        Some(MGMT),
        Some(json!({"name": "m"})),
    )
    .await;
    assert_eq!(s, 201);
    check("/keys", "POST", 201, &minimal);
    assert_eq!(minimal["data"]["limit"], Value::Null);
    assert_eq!(minimal["data"]["limit_remaining"], Value::Null);
    assert_eq!(minimal["data"]["expires_at"], Value::Null);

    let (s, _, list) = raw(
        "GET",
        api(&e, "/keys?include_disabled=true&offset=0"),
        Some(MGMT),
        None,
    )
    .await;
    assert_eq!(s, 200);
    check("/keys", "GET", 200, &list);
    assert!(
        !list.to_string().contains(&key),
        "plaintext only at creation"
    );
    let (s, _, one) = raw("GET", api(&e, &format!("/keys/{hash}")), Some(MGMT), None).await;
    assert_eq!(s, 200);
    check("/keys/{hash}", "GET", 200, &one);
    let patch = json!({"name": "Updated", "disabled": true, "limit": 75, "limit_reset": "daily", "include_byok_in_limit": false});
    validate_request(SPEC, "/keys/{hash}", "PATCH", &patch).unwrap();
    let (s, _, patched) = raw(
        "PATCH",
        api(&e, &format!("/keys/{hash}")),
        Some(MGMT),
        Some(patch),
    )
    .await;
    assert_eq!(s, 200);
    check("/keys/{hash}", "PATCH", 200, &patched);
    assert_eq!(patched["data"]["name"], json!("Updated"));
    assert_eq!(patched["data"]["limit_reset"], json!("daily"));
    assert!(patched["data"]["updated_at"].is_string());
    // Partial: fields not sent are kept.
    let (_, _, patched) = raw(
        "PATCH",
        api(&e, &format!("/keys/{hash}")),
        Some(MGMT),
        Some(json!({"limit": null})),
    )
    .await;
    assert_eq!(patched["data"]["name"], json!("Updated"));
    assert_eq!(patched["data"]["disabled"], json!(true));
    assert_eq!(patched["data"]["limit"], Value::Null);

    let (s, _, me) = raw("GET", api(&e, "/key"), Some(MGMT), None).await;
    assert_eq!(s, 200);
    check("/key", "GET", 200, &me);
    assert_eq!(me["data"]["is_management_key"], json!(true));
    assert_eq!(
        me["data"]["label"],
        json!(format!("{}...{}", &MGMT[..12], &MGMT[MGMT.len() - 4..]))
    );
    let minimal_key = minimal["key"].as_str().unwrap();
    let (s, _, me) = raw("GET", api(&e, "/key"), Some(minimal_key), None).await;
    assert_eq!(s, 200);
    check("/key", "GET", 200, &me);

    let (s, _, deleted) = raw(
        "DELETE",
        api(&e, &format!("/keys/{hash}")),
        Some(MGMT),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(deleted, json!({"deleted": true}));
    check("/keys/{hash}", "DELETE", 200, &deleted);

    // Errors, each in OpenRouter's envelope.
    let (s, _, missing) = raw("GET", api(&e, "/keys"), None, None).await;
    assert_eq!(s, 401);
    assert_eq!(
        missing,
        json!({"error": {"code": 401, "message": "Missing Authentication header"}, "user_id": null, "openrouter_metadata": null})
    );
    check("/keys", "GET", 401, &missing);
    let (s, _, missing) = raw("GET", api(&e, "/key"), None, None).await;
    assert_eq!(s, 401);
    check("/key", "GET", 401, &missing);
    let (s, _, unknown) = raw(
        "POST",
        api(&e, "/keys"),
        Some("sk-or-v1-nope"),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(unknown["error"]["code"], json!(401));
    check("/keys", "POST", 401, &unknown);
    let (s, _, forbidden) = raw(
        "POST",
        api(&e, "/keys"),
        Some(minimal_key),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        forbidden["error"],
        json!({"code": 403, "message": "Only management keys can perform this operation"})
    );
    check("/keys", "POST", 403, &forbidden);
    let (s, _, bad) = raw(
        "POST",
        api(&e, "/keys"),
        Some(MGMT),
        Some(json!({"name": ""})),
    )
    .await;
    assert_eq!(s, 400);
    check("/keys", "POST", 400, &bad);
    let (s, _, bad) = raw("GET", api(&e, "/keys?offset=-1"), Some(MGMT), None).await;
    assert_eq!(s, 400);
    check("/keys", "GET", 400, &bad);
    let (s, _, bad) = raw(
        "PATCH",
        api(
            &e,
            &format!("/keys/{}", minimal["data"]["hash"].as_str().unwrap()),
        ),
        Some(MGMT),
        Some(json!({"limit_reset": "yearly"})),
    )
    .await;
    assert_eq!(s, 400);
    check("/keys/{hash}", "PATCH", 400, &bad);
    for method in ["GET", "PATCH", "DELETE"] {
        let body = (method == "PATCH").then(|| json!({"name": "x"}));
        let (s, _, nf) = raw(method, api(&e, &format!("/keys/{hash}")), Some(MGMT), body).await;
        assert_eq!(s, 404, "{method}");
        assert_eq!(
            nf["error"],
            json!({"code": 404, "message": "Resource not found"})
        );
        check("/keys/{hash}", method, 404, &nf);
    }
    e.faults.push([fault(429, Some(3))]);
    let (s, headers, limited) = raw("GET", api(&e, "/keys"), Some(MGMT), None).await;
    assert_eq!(s, 429);
    assert_eq!(headers.get("retry-after").unwrap(), "3");
    assert_eq!(
        limited["error"],
        json!({"code": 429, "message": "Rate limit exceeded"})
    );
    check("/keys", "GET", 429, &limited);
    for (path, method, template) in [
        ("/key", "GET", "/key"),
        ("/keys", "POST", "/keys"),
        ("/keys/x", "DELETE", "/keys/{hash}"),
    ] {
        e.faults.push([fault(500, None)]);
        let body = (method == "POST").then(|| json!({"name": "x"}));
        let (s, _, ise) = raw(method, api(&e, path), Some(MGMT), body).await;
        assert_eq!(s, 500);
        assert_eq!(ise["error"]["code"], json!(500));
        check(template, method, 500, &ise);
    }
}

#[tokio::test]
async fn client_requests_conform_to_the_openapi_spec() {
    let e = start().await;
    let c = client_with(&e, MGMT, Some(OTHER_WORKSPACE), opts());
    let mut full = settings("team-a/chat");
    full.disabled = true;
    full.expires_at = Some(
        DateTime::parse_from_rfc3339("2027-06-01T12:00:00.5+02:00")
            .unwrap()
            .with_timezone(&Utc),
    );
    full.openrouter = Some(OpenRouterKeySpec {
        include_byok_in_limit: Some(true),
    });
    for reset in [
        None,
        Some(LimitReset::Daily),
        Some(LimitReset::Weekly),
        Some(LimitReset::Monthly),
        Some(LimitReset::Never),
    ] {
        full.limit = Some(Limit {
            amount: "12.34".into(),
            reset,
        });
        let body = c.create_body(&full).unwrap();
        validate_request(SPEC, "/keys", "POST", &body).unwrap_or_else(|err| panic!("{err}"));
        // UTC with Z, as OpenRouter demands.
        assert_eq!(body["expires_at"], json!("2027-06-01T10:00:00Z"));
        let patch = update_body(
            &full,
            &[
                Field::DisplayName,
                Field::Disabled,
                Field::LimitAmount,
                Field::LimitReset,
                Field::Extras,
            ],
        )
        .unwrap();
        validate_request(SPEC, "/keys/{hash}", "PATCH", &patch)
            .unwrap_or_else(|err| panic!("{err}"));
    }
    full.limit = None;
    let c = client(&e);
    let body = c.create_body(&full).unwrap();
    validate_request(SPEC, "/keys", "POST", &body).unwrap();
    assert!(body.get("workspace_id").is_none());
    let patch = update_body(&full, &[Field::LimitAmount, Field::LimitReset]).unwrap();
    validate_request(SPEC, "/keys/{hash}", "PATCH", &patch).unwrap();
    // The emulator accepts what the client sends (a real round trip of the same bodies).
    let k = c.create(&full).await.unwrap();
    c.update(
        &scope(),
        &k.key.id,
        &full,
        &[Field::LimitAmount, Field::LimitReset],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn emulator_validates_create_and_patch_bodies() {
    let e = start().await;
    let post = |body: Value| raw("POST", api(&e, "/keys"), Some(MGMT), Some(body));
    for (body, why) in [
        (json!({}), "name missing"),
        (json!({"name": ""}), "name empty"),
        (json!({"name": 5}), "name not a string"),
        (
            json!({"name": "x", "limit_reset": "yearly"}),
            "limit_reset outside the enum",
        ),
        (json!({"name": "x", "limit": -1}), "negative limit"),
        (json!({"name": "x", "limit": "10"}), "limit as a string"),
        (
            json!({"name": "x", "expires_at": "2027-01-01T00:00:00+02:00"}),
            "expires_at not UTC",
        ),
        (
            json!({"name": "x", "expires_at": "2027-01-01"}),
            "expires_at not a timestamp",
        ),
        (
            json!({"name": "x", "workspace_id": "default"}),
            "workspace_id not a UUID",
        ),
        (
            json!({"name": "x", "include_byok_in_limit": "yes"}),
            "byok not a boolean",
        ),
        (json!(["name"]), "not an object"),
    ] {
        let (s, _, b) = post(body).await;
        assert_eq!(s, 400, "{why}: {b}");
        assert_eq!(b["error"]["code"], json!(400), "{why}");
        validate_response(SPEC, "/keys", "POST", 400, &b).unwrap();
    }
    // Not JSON at all.
    let resp = reqwest::Client::new()
        .post(api(&e, "/keys"))
        .bearer_auth(MGMT)
        .body("{name:")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // UTC with an explicit +00:00 offset is UTC.
    let (s, _, b) = post(json!({"name": "x", "expires_at": "2027-01-01T00:00:00+00:00"})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(control_keys(&e).await.len(), 1);

    let hash = b["data"]["hash"].as_str().unwrap().to_string();
    for body in [
        json!({"name": ""}),
        json!({"disabled": "yes"}),
        json!({"limit": "ten"}),
        json!({"limit_reset": "hourly"}),
        json!({"include_byok_in_limit": 1}),
        json!({"name": "ok", "limit_reset": "never"}),
    ] {
        let (s, _, b) = raw(
            "PATCH",
            api(&e, &format!("/keys/{hash}")),
            Some(MGMT),
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 400, "{body}: {b}");
    }
    // A rejected PATCH changes nothing.
    let (_, _, k) = raw("GET", api(&e, &format!("/keys/{hash}")), Some(MGMT), None).await;
    assert_eq!(k["data"]["name"], json!("x"));
    for q in ["offset=abc", "include_disabled=maybe", "workspace_id=nope"] {
        let (s, _, _) = raw("GET", api(&e, &format!("/keys?{q}")), Some(MGMT), None).await;
        assert_eq!(s, 400, "{q}");
    }
}

#[tokio::test]
async fn control_endpoints_are_not_counted_nor_faulted() {
    let e = start().await;
    let c = client(&e);
    let k = c.create(&settings("x")).await.unwrap();
    e.faults.push([fault(500, None)]);
    let before = e.faults.requests();
    let keys = control_keys(&e).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], json!("x"));
    assert_eq!(keys[0]["active"], json!(true));
    assert!(keys[0]["createdAt"].is_string());
    assert_eq!(e.faults.requests(), before);
    // The queued fault is still there for the next API call.
    let (s, _, _) = raw(
        "GET",
        api(&e, &format!("/keys/{}", k.key.id)),
        Some(MGMT),
        None,
    )
    .await;
    assert_eq!(s, 500);
}

#[test]
fn emulator_flags() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: OpenRouterArgs,
    }
    let cli = Cli::try_parse_from([
        "emulate",
        "--management-key",
        "a",
        "--management-key",
        "b",
        "--workspace",
        OTHER_WORKSPACE,
        "--latency",
        "5ms",
    ])
    .unwrap();
    assert_eq!(cli.args.management_keys, vec!["a", "b"]);
    assert_eq!(cli.args.workspace, OTHER_WORKSPACE);
    assert_eq!(cli.args.faults.latency, Some(Duration::from_millis(5)));
    let cli = Cli::try_parse_from(["emulate", "--management-key", "a"]).unwrap();
    assert_eq!(cli.args.workspace, OPENROUTER_WORKSPACE);
    assert!(Cli::try_parse_from(["emulate", "--management-key", "a", "--workspace", "w"]).is_err());
    // The environment variable is the alternative to the flag; without either it fails.
    if std::env::var_os("KEYSMITH_EMULATOR_MANAGEMENT_KEY").is_none() {
        assert!(Cli::try_parse_from(["emulate"]).is_err());
    }
}

/// `examples/openrouter/` works as written against the emulator started as its comment says
/// (only the port differs: the test binds an ephemeral one).
#[tokio::test]
async fn examples_work_against_the_emulator() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/openrouter");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret =
        // The file creates the namespace first; the Secret is its last document.
        serde_yaml::from_str(read("credentials.yaml").rsplit("\n---\n").next().unwrap()).unwrap();
    let token = secret.string_data.as_ref().unwrap()["token"].clone();
    let provider_text = read("provider.yaml");
    assert!(
        provider_text.contains(&format!("--management-key {token}")),
        "provider.yaml must start the emulator with the Secret's management key"
    );
    let provider: keysmith::api::ClusterKeyProvider = serde_yaml::from_str(&provider_text).unwrap();
    let mut spec = provider.spec.inner.clone();
    assert_eq!(
        spec.openrouter.as_ref().unwrap().base_url.as_deref(),
        Some("http://127.0.0.1:8787/api/v1")
    );
    let refs = spec
        .provider()
        .expect("one provider block")
        .credential_refs();
    assert_eq!(
        refs,
        vec![keysmith::api::CredentialRef {
            role: "token",
            namespace: secret.metadata.namespace.clone(),
            name: secret.metadata.name.clone().unwrap(),
            key: "token".to_string()
        }]
    );

    let (router, faults) = build_openrouter(&OpenRouterArgs::with_management_keys(&[&token]));
    let e = emulators::spawn(router, faults).await.unwrap();
    spec.openrouter.as_mut().unwrap().base_url = Some(format!("{}/api/v1", e.url()));
    let backend = build_backend(&spec, creds(&token), opts()).unwrap();
    backend.verify().await.unwrap();

    let apikey: keysmith::api::ApiKey = serde_yaml::from_str(&read("apikey.yaml")).unwrap();
    let now = Utc::now();
    let want = KeySettings::from_spec(&apikey.spec, apikey.display_name(), now).unwrap();
    for f in [
        Field::DisplayName,
        Field::Ttl,
        Field::LimitAmount,
        Field::LimitReset,
        Field::Extras,
    ] {
        assert!(backend.capabilities().supports(f), "{f:?}");
    }
    assert!(backend.validate(&want).is_empty());
    let created = backend.create(&want).await.unwrap();
    assert_eq!(created.key.name, "default/chat-backend");
    assert_eq!(
        created.key.observed.limit,
        Some(Some(Limit {
            amount: "25".into(),
            reset: Some(LimitReset::Monthly)
        }))
    );
    let expires = created.key.observed.expires_at.unwrap().unwrap();
    assert!(
        (expires - (now + chrono::Duration::hours(2160)))
            .num_seconds()
            .abs()
            <= 1
    );
    assert!(drift(backend.as_ref(), &created.key, &want).is_empty());
    let (s, _, _) = raw(
        "GET",
        api(&e, "/key"),
        Some(created.secret.expose_secret()),
        None,
    )
    .await;
    assert_eq!(s, 200);
}

/// Issue 20, item 4: OpenRouter does not document its page size. Against a provider whose pages
/// hold 37 keys, the listing still returns every key (it used to stop at the first page shorter
/// than 100, losing the rest: crash recovery reads this listing).
#[tokio::test]
async fn a_listing_with_another_page_size_loses_no_key() {
    let (router, faults) = build_openrouter(&OpenRouterArgs {
        page_size: 37,
        ..OpenRouterArgs::with_management_keys(&[MGMT])
    });
    let e = emulators::spawn(router, faults).await.unwrap();
    let c = client(&e);
    let mut ids = Vec::new();
    for i in 0..80 {
        ids.push(
            c.create(&settings(&format!("p-{i:02}")))
                .await
                .unwrap()
                .key
                .id,
        );
    }
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c.list_page(&scope(), cursor.as_deref()).await.unwrap();
        pages += 1;
        listed.extend(page.keys.into_iter().map(|k| k.id));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
        assert!(pages < 10, "the listing ends");
    }
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids, "every key listed once");
    assert_eq!(pages, 4, "37 + 37 + 6 + the empty page");
}

/// Issue 21 §3: the management key's own expiry, from the one `GET /key` that verifies it
/// (null: never; a time: when; past it the key is refused). The emulator's answer matches
/// OpenRouter's schema.
#[tokio::test]
async fn verify_tells_when_the_management_key_expires() {
    use keysmith::providers::CredentialsExpiry;
    let e = start().await;
    let c = client(&e);
    let before = e.faults.requests();
    assert_eq!(
        c.verify_credentials().await.unwrap(),
        CredentialsExpiry::Never
    );
    assert_eq!(e.faults.requests() - before, 1, "one call");

    let at = (Utc::now() + chrono::Duration::days(3)).trunc_subsecs(0);
    let (s, _, _) = raw(
        "POST",
        format!("{}/_emulator/management-key", e.url()),
        None,
        Some(json!({"expiresAt": at.to_rfc3339()})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, body) = raw("GET", api(&e, "/key"), Some(MGMT), None).await;
    assert_eq!(s, 200);
    validate_response(SPEC, "/key", "GET", 200, &body).unwrap();
    assert_eq!(
        c.verify_credentials().await.unwrap(),
        CredentialsExpiry::At(at)
    );
    c.verify().await.unwrap();

    // Expired: refused like OpenRouter refuses an expired key.
    let past = Utc::now() - chrono::Duration::seconds(1);
    raw(
        "POST",
        format!("{}/_emulator/management-key", e.url()),
        None,
        Some(json!({"expiresAt": past.to_rfc3339()})),
    )
    .await;
    match c.verify_credentials().await {
        Err(ProviderError::Auth(_)) => {}
        other => panic!("expected Auth, got {other:?}"),
    }
}

/// The expiry parser is lenient only where "not told" is the safe reading: an absent or
/// unreadable `expires_at` is "not exposed", never "never expires".
#[tokio::test]
async fn an_unreadable_management_key_expiry_is_not_exposed() {
    use axum::routing::get;
    use keysmith::providers::CredentialsExpiry;
    for (data, want) in [
        (
            json!({"is_management_key": true}),
            CredentialsExpiry::NotExposed,
        ),
        (
            json!({"is_management_key": true, "expires_at": "soon"}),
            CredentialsExpiry::NotExposed,
        ),
        (
            json!({"is_management_key": true, "expires_at": null}),
            CredentialsExpiry::Never,
        ),
    ] {
        let body = json!({ "data": data });
        let router = axum::Router::new().route(
            "/api/v1/key",
            get(move || {
                let body = body.clone();
                async move { axum::Json(body) }
            }),
        );
        let (_, faults) = build_openrouter(&OpenRouterArgs::with_management_keys(&[MGMT]));
        let e = emulators::spawn(router, faults).await.unwrap();
        assert_eq!(client(&e).verify_credentials().await.unwrap(), want);
    }
}
