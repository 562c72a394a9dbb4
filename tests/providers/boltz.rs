//! Boltz client ⇄ emulator, over real HTTP on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use keysmith::api::{BoltzKeySpec, BoltzMode, BoltzProvider, SecretKeySelector};
use keysmith::emulators::{build_boltz as build, BoltzArgs as Args};
use keysmith::emulators::{spawn, FaultArgs, RunningEmulator, ScriptedFault};
use keysmith::providers::BoltzClient;
use keysmith::providers::{
    drift, ClientOptions, Credentials, Field, KeyBackend, KeyScope, KeySettings, ProviderError,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

const ADMIN: &str = "sk_bc_admin_live_0123456789abcdef";
const ADMIN_TEST: &str = "sk_bc_admin_test_fedcba9876543210";

async fn emulator() -> RunningEmulator {
    emulator_with_pages(None).await
}

/// The emulator, serving at most `max_page_size` keys per list page.
async fn emulator_with_pages(max_page_size: Option<usize>) -> RunningEmulator {
    let args = Args {
        faults: FaultArgs::default(),
        admin_keys: vec![ADMIN.into(), ADMIN_TEST.into()],
        workspaces: vec!["ws_main".into(), "ws_other".into()],
        idempotent_revoke: false,
        max_page_size,
    };
    let (router, faults) = build(&args);
    spawn(router, faults).await.unwrap()
}

fn opts(url: &str) -> ClientOptions {
    ClientOptions {
        base_url: Some(url.to_string()),
        timeout: Duration::from_millis(800),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(2),
        ..Default::default()
    }
}

fn client_with(emu: &RunningEmulator, token: &str, workspace: Option<&str>) -> BoltzClient {
    let spec = BoltzProvider {
        base_url: Some(emu.url()),
        api_key_secret_ref: SecretKeySelector {
            name: "boltz-admin".into(),
            key: "token".into(),
            namespace: None,
        },
        workspace_id: workspace.map(str::to_string),
    };
    let mut creds = BTreeMap::new();
    creds.insert("token".to_string(), SecretString::from(token.to_string()));
    BoltzClient::new(&spec, Credentials(creds), opts(&emu.url())).unwrap()
}

fn client(emu: &RunningEmulator) -> BoltzClient {
    client_with(emu, ADMIN, None)
}

fn settings(name: &str) -> KeySettings {
    KeySettings {
        name: name.to_string(),
        ..Default::default()
    }
}

async fn me(emu: &RunningEmulator, key: &str, forwarded: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .get(format!("{}/compute/v1/auth/me", emu.url()))
        .header("x-api-key", key);
    if let Some(ip) = forwarded {
        req = req.header("x-forwarded-for", ip);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn raw(
    emu: &RunningEmulator,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{}", emu.url(), path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn control_keys(emu: &RunningEmulator) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{}/_emulator/keys", emu.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["keys"].as_array().unwrap().clone()
}

fn route_count(emu: &RunningEmulator, route: &str) -> u64 {
    emu.faults.by_route().get(route).copied().unwrap_or(0)
}

const CREATE_ROUTE: &str = "POST /compute/v1/admin/api-keys";
const LIST_ROUTE: &str = "GET /compute/v1/admin/api-keys";

#[tokio::test]
async fn lifecycle_create_use_list_get_update_revoke() {
    // Pages of two keys: the listings below page through the emulator.
    let emu = emulator_with_pages(Some(2)).await;
    let c = client(&emu);
    c.verify().await.unwrap();

    let mut s = settings("team-a/chat");
    s.expires_at = Some(Utc::now() + chrono::Duration::hours(25));
    let created = c.create(&s).await.unwrap();
    let secret = created.secret.expose_secret().to_string();
    assert!(secret.starts_with("sk_bc_ws_live_"), "mode prefix");
    assert!(!format!("{created:?}").contains(&secret), "Debug redacts");
    let k = &created.key;
    assert_eq!(k.name, "team-a/chat");
    assert_eq!(k.hint.as_deref(), Some("sk_bc_ws_liv…"));
    assert!(k.active);
    assert_eq!(
        k.extras.get("workspace_id").map(String::as_str),
        Some("ws_main")
    );
    assert_eq!(k.extras.get("mode").map(String::as_str), Some("live"));
    // 25 h rounds up to 2 whole days; reported for the status, not compared for drift.
    let exp = k.expires_at.expect("provider expiry");
    let days = (exp - k.created_at.unwrap()).num_seconds();
    assert!((days - 2 * 86_400).abs() <= 2, "{days}");
    assert_eq!(k.observed.expires_at, None);
    assert_eq!(k.observed.allowed_ips, Some(vec![]));
    assert!(drift(&c, k, &s).is_empty(), "no drift right after create");
    assert!(k.last_used_at.is_none());

    // The plaintext is a live key at the provider, and using it moves last_used_at.
    let (st, who) = me(&emu, &secret, None).await;
    assert_eq!(st, 200);
    assert_eq!(who["key_type"], "workspace");
    assert_eq!(who["api_key_id"], json!(k.id));
    assert_eq!(who["mode"], "live");
    assert_eq!(who["workspace_id"], "ws_main");

    // More keys, so that the listing spans pages of two.
    let mut ids = vec![k.id.clone()];
    for i in 0..4 {
        ids.push(c.create(&settings(&format!("k{i}"))).await.unwrap().key.id);
    }
    let before_list = route_count(&emu, LIST_ROUTE);
    let scope = c.scope(&s);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = c.list_page(&scope, cursor.as_deref()).await.unwrap();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert!(
        route_count(&emu, LIST_ROUTE) - before_list >= 3,
        "several pages"
    );
    let mut seen_ids: Vec<String> = seen.iter().map(|k| k.id.clone()).collect();
    seen_ids.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(
        seen_ids, want,
        "every workspace key once, admin keys left out"
    );

    let got = c.get(&scope, &ids[0]).await.unwrap();
    assert_eq!(got.name, "team-a/chat");
    assert!(got.last_used_at.is_some(), "last_used_at moved after use");
    assert!(got.created_at.is_some());

    // No update call: nothing is mutable.
    let err = c
        .update(&scope, &ids[0], &s, &[Field::DisplayName])
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    assert_eq!(c.update(&scope, &ids[0], &s, &[]).await.unwrap().id, ids[0]);

    c.revoke(&scope, &ids[0]).await.unwrap();
    // A repeated revoke answers 409 ("idempotent or 409"); the client confirms the key is
    // inactive and reads it as revoked.
    c.revoke(&scope, &ids[0]).await.unwrap();
    assert_eq!(
        route_count(&emu, "POST /compute/v1/admin/api-keys/{api_key_id}/revoke"),
        2
    );
    let gone = c.get(&scope, &ids[0]).await.unwrap();
    assert!(!gone.active, "revoked keys stay listed, inactive");
    let (st, body) = me(&emu, &secret, None).await;
    assert_eq!(st, 401, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error");

    let err = c.get(&scope, "key_doesnotexist").await.unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
    let err = c.revoke(&scope, "key_doesnotexist").await.unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");

    // The control listing counts keys and never shows a plaintext.
    let keys = control_keys(&emu).await;
    assert_eq!(keys.len(), 7, "2 admin + 5 workspace");
    let text = serde_json::to_string(&keys).unwrap();
    assert!(!text.contains(&secret) && !text.contains(ADMIN));
    assert_eq!(
        keys.iter().filter(|k| k["revoked"] == json!(true)).count(),
        1
    );
}

#[tokio::test]
async fn workspaces_modes_and_extras_drift() {
    let emu = emulator().await;
    let c = client_with(&emu, ADMIN, Some("ws_other"));
    let mut s = settings("test-key");
    s.boltz = Some(BoltzKeySpec {
        workspace_id: None,
        mode: Some(BoltzMode::Test),
    });
    let created = c.create(&s).await.unwrap();
    assert!(created.secret.expose_secret().starts_with("sk_bc_ws_test_"));
    assert_eq!(created.key.extras.get("workspace_id").unwrap(), "ws_other");
    assert_eq!(created.key.extras.get("mode").unwrap(), "test");
    assert!(drift(&c, &created.key, &s).is_empty());

    // The ApiKey's workspace overrides the provider's.
    let mut s2 = settings("main-key");
    s2.boltz = Some(BoltzKeySpec {
        workspace_id: Some("ws_main".into()),
        mode: None,
    });
    let k2 = c.create(&s2).await.unwrap().key;
    assert_eq!(k2.extras.get("workspace_id").unwrap(), "ws_main");
    assert_eq!(
        c.scope(&s2),
        KeyScope {
            family: String::new(),
            parent: "ws_main".into()
        }
    );

    // Listing by scope filters by workspace.
    let other = c.list_page(&c.scope(&s), None).await.unwrap();
    assert_eq!(other.keys.len(), 1);
    assert_eq!(other.keys[0].id, created.key.id);
    assert!(other.next.is_none());

    // A different mode or workspace on an existing key needs a new key.
    let mut changed = s.clone();
    changed.boltz = Some(BoltzKeySpec {
        workspace_id: None,
        mode: Some(BoltzMode::Live),
    });
    assert_eq!(drift(&c, &created.key, &changed), vec![Field::Extras]);
    let mut renamed = s.clone();
    renamed.name = "other-name".into();
    renamed.allowed_ips = vec!["10.0.0.0/8".into()];
    assert_eq!(
        drift(&c, &created.key, &renamed),
        vec![Field::DisplayName, Field::AllowedIps]
    );

    // Without a mode, a key takes the mode of the admin key that creates it.
    let t = client_with(&emu, ADMIN_TEST, None);
    let tk = t.create(&settings("from-test-admin")).await.unwrap();
    assert!(tk.secret.expose_secret().starts_with("sk_bc_ws_test_"));
    assert_eq!(
        tk.key.extras.get("workspace_id").unwrap(),
        "ws_main",
        "default workspace"
    );

    // Unknown workspace → 404 → NotFound.
    let mut bad = settings("x");
    bad.boltz = Some(BoltzKeySpec {
        workspace_id: Some("ws_nope".into()),
        mode: None,
    });
    let err = c.create(&bad).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::NotFound(ref m) if m.contains("ws_nope")),
        "{err:?}"
    );
}

#[tokio::test]
async fn allowed_ips_are_enforced_on_use() {
    let emu = emulator().await;
    let c = client(&emu);
    let mut s = settings("restricted");
    s.allowed_ips = vec!["10.0.0.0/8".into(), "2001:db8::1".into()];
    let created = c.create(&s).await.unwrap();
    assert_eq!(
        created.key.observed.allowed_ips,
        Some(vec!["10.0.0.0/8".to_string(), "2001:db8::1".to_string()])
    );
    let secret = created.secret.expose_secret();
    let (st, body) = me(&emu, secret, None).await;
    assert_eq!(st, 403, "127.0.0.1 is not allowed: {body}");
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(me(&emu, secret, Some("10.20.30.40")).await.0, 200);
    assert_eq!(me(&emu, secret, Some("2001:db8::1")).await.0, 200);
    assert_eq!(me(&emu, secret, Some("192.168.1.1")).await.0, 403);

    // The TCP peer is what is checked when no proxy header is sent.
    let mut local = settings("loopback-only");
    local.allowed_ips = vec!["127.0.0.1".into()];
    let local = c.create(&local).await.unwrap();
    assert_eq!(me(&emu, local.secret.expose_secret(), None).await.0, 200);

    // An IP the client would not send (validate() catches it) is a 400 at the provider.
    let mut bad = settings("bad-ip");
    bad.allowed_ips = vec!["10.0.0.1-10.0.0.9".into()];
    assert_eq!(c.validate(&bad).len(), 1);
    let err = c.create(&bad).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Rejected(ref m) if m.contains("allowed_ips[0]")),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_keys_fail_auth() {
    let emu = emulator().await;
    let c = client(&emu);
    let mut s = settings("short");
    s.expires_at = Some(Utc::now() + chrono::Duration::minutes(5));
    let created = c.create(&s).await.unwrap();
    assert_eq!(me(&emu, created.secret.expose_secret(), None).await.0, 200);
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/_emulator/keys/{}/expire",
            emu.url(),
            created.key.id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (st, body) = me(&emu, created.secret.expose_secret(), None).await;
    assert_eq!(st, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));

    // An expiry in the past is refused before any call.
    let before = emu.faults.requests();
    let mut past = settings("past");
    past.expires_at = Some(Utc::now() - chrono::Duration::minutes(1));
    let err = c.create(&past).await.unwrap_err();
    assert!(matches!(err, ProviderError::Rejected(_)), "{err:?}");
    assert_eq!(emu.faults.requests(), before);
}

#[tokio::test]
async fn credentials_errors_are_auth() {
    let emu = emulator().await;
    let wrong = client_with(&emu, "sk_bc_admin_live_wrong", None);
    let err = wrong.verify().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Auth(ref m) if m.contains("401")),
        "{err:?}"
    );
    let err = wrong
        .list_page(&KeyScope::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");
    let err = wrong.create(&settings("x")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");

    // A workspace key configured as the admin key: auth/me accepts it, verify refuses it, and
    // the admin endpoints answer 403.
    let ws_secret = client(&emu)
        .create(&settings("ws"))
        .await
        .unwrap()
        .secret
        .expose_secret()
        .to_string();
    let ws = client_with(&emu, &ws_secret, None);
    let err = ws.verify().await.unwrap_err();
    match &err {
        ProviderError::Auth(m) => assert!(m.contains("workspace key"), "{m}"),
        other => panic!("{other:?}"),
    }
    let err = ws.list_page(&KeyScope::default(), None).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Auth(ref m) if m.contains("403")),
        "{err:?}"
    );
    let err = ws.create(&settings("y")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");
    for text in [format!("{err}"), format!("{err:?}")] {
        assert!(!text.contains(&ws_secret));
    }
    assert!(!format!("{ws:?}").contains(&ws_secret));
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let emu = emulator().await;
    let c = client(&emu);
    emu.faults.push([ScriptedFault {
        status: Some(429),
        retry_after: Some(1),
        malformed: false,
        delay_ms: None,
    }]);
    let started = std::time::Instant::now();
    let page = c.list_page(&KeyScope::default(), None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited Retry-After"
    );
    assert!(page.keys.is_empty());
    assert_eq!(route_count(&emu, LIST_ROUTE), 2);

    // A create is retried after a 429 too (the provider did not act).
    emu.faults.push([ScriptedFault {
        status: Some(429),
        retry_after: Some(0),
        malformed: false,
        delay_ms: None,
    }]);
    c.create(&settings("after-429")).await.unwrap();
    assert_eq!(route_count(&emu, CREATE_ROUTE), 2);

    // Longer than max_retry_after: returned to the caller.
    emu.faults.push([ScriptedFault {
        status: Some(429),
        retry_after: Some(30),
        malformed: false,
        delay_ms: None,
    }]);
    let err = c.list_page(&KeyScope::default(), None).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
}

#[tokio::test]
async fn server_errors_retry_safe_calls_only() {
    let emu = emulator().await;
    let c = client(&emu);
    let fault = |status| ScriptedFault {
        status: Some(status),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    };
    emu.faults.push([fault(500), fault(503)]);
    c.list_page(&KeyScope::default(), None).await.unwrap();
    assert_eq!(route_count(&emu, LIST_ROUTE), 3);

    emu.faults.push([fault(500)]);
    let err = c.create(&settings("once")).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Unavailable(ref m) if m.contains("500")),
        "{err:?}"
    );
    assert_eq!(
        route_count(&emu, CREATE_ROUTE),
        1,
        "a create is never repeated after a 5xx"
    );
    assert_eq!(control_keys(&emu).await.len(), 2, "no key was made");

    // Exhausted retries of a safe call surface as Unavailable.
    emu.faults.push([fault(502), fault(502), fault(502)]);
    let err = c.verify().await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");

    // Other statuses the provider may send.
    emu.faults.push([fault(409)]);
    let err = c.create(&settings("conflict")).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Rejected(ref m) if m.contains("409")),
        "{err:?}"
    );
    emu.faults.push([fault(410)]);
    let err = c.revoke(&KeyScope::default(), "key_x").await.unwrap_err();
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    emu.faults.push([fault(404)]);
    let err = c.list_page(&KeyScope::default(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
}

/// Queue errors carrying `x-should-retry` (`POST /_emulator/errors`).
async fn script_errors(emu: &RunningEmulator, errors: Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/_emulator/errors", emu.url()))
        .json(&errors)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

#[tokio::test]
async fn x_should_retry_is_honoured_both_ways() {
    let emu = emulator().await;
    let c = client(&emu);
    // A 5xx the server marks final: not repeated, even on a safe call.
    script_errors(&emu, json!([{"status": 503, "shouldRetry": false}])).await;
    let err = c.list_page(&KeyScope::default(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert_eq!(route_count(&emu, LIST_ROUTE), 1, "x-should-retry: false");

    // A 408 (or 409) the server marks retryable: a safe call is repeated and succeeds.
    script_errors(
        &emu,
        json!([{"status": 408, "shouldRetry": true}, {"status": 409, "shouldRetry": true}]),
    )
    .await;
    c.list_page(&KeyScope::default(), None).await.unwrap();
    assert_eq!(
        route_count(&emu, LIST_ROUTE),
        4,
        "two retries, then the page"
    );

    // A create is repeated only where the provider cannot have acted, whatever the header says.
    script_errors(&emu, json!([{"status": 409, "shouldRetry": true}])).await;
    let err = c.create(&settings("told-to-retry")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Rejected(_)), "{err:?}");
    assert_eq!(route_count(&emu, CREATE_ROUTE), 1);
    // A 429 marked final is not waited for.
    script_errors(&emu, json!([{"status": 429, "shouldRetry": false}])).await;
    let err = c.verify().await.unwrap_err();
    assert!(matches!(err, ProviderError::RateLimited { .. }), "{err:?}");
}

#[tokio::test]
async fn timeouts_and_malformed_bodies() {
    let emu = emulator().await;
    let c = client(&emu);
    let slow = ScriptedFault {
        status: None,
        retry_after: None,
        malformed: false,
        delay_ms: Some(1500),
    };
    emu.faults.push([slow.clone()]);
    let err = c.create(&settings("slow")).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Unavailable(ref m) if m.contains("timed out")),
        "{err:?}"
    );
    assert_eq!(
        route_count(&emu, CREATE_ROUTE),
        1,
        "a timed-out create is not repeated"
    );

    // A safe call is retried after a timeout.
    emu.faults.push([slow]);
    c.list_page(&KeyScope::default(), None).await.unwrap();
    assert_eq!(route_count(&emu, LIST_ROUTE), 2);

    let bad = ScriptedFault {
        status: None,
        retry_after: None,
        malformed: true,
        delay_ms: None,
    };
    emu.faults.push([bad.clone()]);
    let err = c.list_page(&KeyScope::default(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
    emu.faults.push([bad.clone()]);
    let err = c.create(&settings("m")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
    emu.faults.push([bad]);
    let err = c.verify().await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn no_secret_in_any_error() {
    let emu = emulator().await;
    let c = client(&emu);
    let created = c.create(&settings("s")).await.unwrap();
    let secret = created.secret.expose_secret().to_string();
    let mut errors = Vec::new();
    for status in [400u16, 401, 403, 404, 409, 410, 429, 500] {
        emu.faults.push([ScriptedFault {
            status: Some(status),
            retry_after: Some(60),
            malformed: false,
            delay_ms: None,
        }]);
        errors.push(c.create(&settings("t")).await.unwrap_err());
    }
    errors.push(client_with(&emu, &secret, None).verify().await.unwrap_err());
    errors.push(
        client_with(&emu, "sk_bc_admin_live_bogus", None)
            .verify()
            .await
            .unwrap_err(),
    );
    for e in &errors {
        for text in [format!("{e}"), format!("{e:?}")] {
            assert!(!text.contains(&secret), "{text}");
            assert!(!text.contains(ADMIN) && !text.contains("bogus"), "{text}");
        }
    }
    assert!(!format!("{c:?}").contains(ADMIN));
}

#[tokio::test]
async fn emulator_validation_and_pagination() {
    let emu = emulator().await;
    let post = |body: Value| {
        let emu = &emu;
        async move {
            raw(
                emu,
                reqwest::Method::POST,
                "/compute/v1/admin/api-keys",
                Some(ADMIN),
                Some(body),
            )
            .await
        }
    };
    for (body, needle) in [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": "a", "mode": "prod"}), "mode"),
        (
            json!({"name": "a", "expires_in_days": 0}),
            "expires_in_days",
        ),
        (
            json!({"name": "a", "expires_in_days": -3}),
            "expires_in_days",
        ),
        (
            json!({"name": "a", "expires_in_days": 1.5}),
            "expires_in_days",
        ),
        (
            json!({"name": "a", "expires_in_days": "3"}),
            "expires_in_days",
        ),
        (
            json!({"name": "a", "allowed_ips": ["300.1.1.1"]}),
            "allowed_ips",
        ),
        (
            json!({"name": "a", "allowed_ips": "10.0.0.1"}),
            "allowed_ips",
        ),
        (json!([1, 2]), "JSON object"),
    ] {
        let (st, b) = post(body.clone()).await;
        assert_eq!(st, 400, "{body} → {b}");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(needle),
            "{b}"
        );
    }
    let (st, _) = post(json!({"name": "a", "workspace_id": "ws_missing"})).await;
    assert_eq!(st, 404);

    // Missing and unknown keys.
    let (st, b) = raw(
        &emu,
        reqwest::Method::GET,
        "/compute/v1/admin/api-keys",
        None,
        None,
    )
    .await;
    assert_eq!(
        (st, b["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let (st, _) = raw(
        &emu,
        reqwest::Method::GET,
        "/compute/v1/admin/api-keys",
        Some("sk_bc_admin_live_unknown"),
        None,
    )
    .await;
    assert_eq!(st, 401);

    // One-time key and 12-character prefix.
    let (st, b) = post(json!({"name": "p0", "expires_in_days": 3, "mode": "test"})).await;
    assert_eq!(st, 201);
    let key = b["key"].as_str().unwrap();
    assert!(key.starts_with("sk_bc_ws_test_"));
    assert_eq!(b["key_details"]["key_prefix"], json!(&key[..12]));
    assert_eq!(b["key_details"]["key_type"], "workspace");
    assert_eq!(b["key_details"]["livemode"], false);
    assert_eq!(b["key_details"]["workspace_id"], "ws_main");
    assert!(b["key_details"]["expires_at"].is_string());
    for i in 1..5 {
        let (st, _) = post(json!({"name": format!("p{i}"), "workspace_id": "ws_other"})).await;
        assert_eq!(st, 201);
    }

    let list = |q: &str| {
        let emu = &emu;
        let path = format!("/compute/v1/admin/api-keys{q}");
        async move { raw(emu, reqwest::Method::GET, &path, Some(ADMIN), None).await }
    };
    // Everything: 5 workspace keys + 2 admin keys, newest first, no `key` anywhere.
    let (st, all) = list("?limit=100").await;
    assert_eq!(st, 200);
    let data = all["data"].as_array().unwrap();
    assert_eq!(data.len(), 7);
    assert_eq!(all["has_more"], false);
    assert!(data.iter().all(|k| k.get("key").is_none()));
    assert_eq!(data.iter().filter(|k| k["key_type"] == "admin").count(), 2);
    assert_eq!(data[0]["name"], "p4");
    assert!(data.iter().all(|k| k["livemode"].is_boolean()));

    // Pages of 3 forward with after_id, then back with before_id.
    let (_, p1) = list("?limit=3").await;
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["first_id"], p1["data"][0]["id"]);
    assert_eq!(p1["last_id"], p1["data"][2]["id"]);
    let (_, p2) = list(&format!(
        "?limit=3&after_id={}",
        p1["last_id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(p2["data"].as_array().unwrap().len(), 3);
    assert_eq!(p2["has_more"], true);
    let (_, p3) = list(&format!(
        "?limit=3&after_id={}",
        p2["last_id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(p3["data"].as_array().unwrap().len(), 1);
    assert_eq!(p3["has_more"], false);
    let (_, back) = list(&format!(
        "?limit=3&before_id={}",
        p2["first_id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(back["data"], p1["data"]);
    assert_eq!(back["has_more"], false);

    // Workspace filter: only that workspace's keys (admin keys belong to none).
    let (_, other) = list("?workspace_id=ws_other").await;
    let d = other["data"].as_array().unwrap();
    assert_eq!(d.len(), 4);
    assert!(d.iter().all(|k| k["workspace_id"] == "ws_other"));

    for q in [
        "?limit=0",
        "?limit=101",
        "?limit=x",
        "?after_id=key_nope",
        "?after_id=a&before_id=b",
    ] {
        let (st, b) = list(q).await;
        assert_eq!(st, 400, "{q}: {b}");
    }

    // Revoke: 404 for unknown ids, 200 then 409 on a repeat, key inactive.
    let id = data[0]["id"].as_str().unwrap();
    let path = format!("/compute/v1/admin/api-keys/{id}/revoke");
    let (st, r) = raw(&emu, reqwest::Method::POST, &path, Some(ADMIN), None).await;
    assert_eq!((st, r["is_active"].as_bool()), (200, Some(false)));
    let (st, b) = raw(&emu, reqwest::Method::POST, &path, Some(ADMIN), None).await;
    assert_eq!(st, 409, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already revoked"));
    let (st, b) = raw(
        &emu,
        reqwest::Method::POST,
        "/compute/v1/admin/api-keys/key_nope/revoke",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (st, b["error"]["type"].as_str()),
        (404, Some("not_found_error"))
    );

    // A workspace key cannot use the admin endpoints.
    let (st, b) = raw(
        &emu,
        reqwest::Method::GET,
        "/compute/v1/admin/api-keys",
        Some(key),
        None,
    )
    .await;
    assert_eq!(
        (st, b["error"]["type"].as_str()),
        (403, Some("permission_error"))
    );

    // auth/me for admin keys.
    let (st, who) = me(&emu, ADMIN_TEST, None).await;
    assert_eq!(st, 200);
    assert_eq!(who["key_type"], "admin");
    assert_eq!(who["mode"], "test");
    assert_eq!(who["livemode"], false);

    // Injected 429s carry Retry-After in the Boltz envelope; control routes are not faulted.
    emu.faults.push([ScriptedFault {
        status: Some(429),
        retry_after: Some(7),
        malformed: false,
        delay_ms: None,
    }]);
    assert_eq!(control_keys(&emu).await.len(), 7);
    let resp = reqwest::Client::new()
        .get(format!("{}/compute/v1/auth/me", emu.url()))
        .header("x-api-key", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["type"], "rate_limit_error");
}

/// The manifests in examples/boltz/ work as written against the emulator started with the flags
/// in keyprovider.yaml's comment.
#[tokio::test]
async fn examples_work_against_the_emulator() {
    use clap::Parser;
    use keysmith::api::{ApiKey, KeyProvider};
    use keysmith::providers::build_backend;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/boltz");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
    let provider_yaml = read("keyprovider.yaml");
    let line = provider_yaml
        .lines()
        .find(|l| l.contains("keysmith emulate boltz"))
        .expect("emulator command in a comment");
    let mut argv = vec!["emulate".to_string()];
    let mut words = line
        .split_whitespace()
        .skip_while(|w| *w != "boltz")
        .skip(1);
    while let Some(w) = words.next() {
        if w == "--listen" {
            words.next();
            continue;
        }
        argv.push(w.to_string());
    }
    let cli = Cli::try_parse_from(argv).unwrap();
    let (router, faults) = build(&cli.args);
    let emu = spawn(router, faults).await.unwrap();

    let secret: Value = serde_yaml::from_str(&read("secret.yaml")).unwrap();
    let token = secret["stringData"]["token"].as_str().unwrap().to_string();
    let mut provider: KeyProvider = serde_yaml::from_str(&provider_yaml).unwrap();
    let boltz = provider.spec.boltz.as_mut().unwrap();
    assert_eq!(boltz.base_url.as_deref(), Some("http://127.0.0.1:8787"));
    boltz.base_url = Some(emu.url()); // the test's emulator listens on a free port
    let mut creds = BTreeMap::new();
    creds.insert("token".to_string(), SecretString::from(token));
    let backend = build_backend(&provider.spec, Credentials(creds), opts(&emu.url())).unwrap();
    backend.verify().await.unwrap();

    for (file, prefix, workspace) in [
        ("apikey.yaml", "sk_bc_ws_live_", "ws_research"),
        ("apikey-test-mode.yaml", "sk_bc_ws_test_", "ws_sandbox"),
    ] {
        let key: ApiKey = serde_yaml::from_str(&read(file)).unwrap();
        let name = key.spec.display_name.clone().unwrap();
        let s = KeySettings::from_spec(&key.spec, name, Utc::now()).unwrap();
        assert!(backend.validate(&s).is_empty(), "{file}");
        let caps = backend.capabilities();
        if s.expires_at.is_some() {
            assert!(caps.supports(Field::Ttl) && caps.supports(Field::ExpiresAt));
        }
        let created = backend.create(&s).await.unwrap();
        assert!(created.secret.expose_secret().starts_with(prefix), "{file}");
        assert_eq!(
            created.key.extras.get("workspace_id").unwrap(),
            workspace,
            "{file}"
        );
        assert!(
            drift(backend.as_ref(), &created.key, &s).is_empty(),
            "{file}"
        );
        assert_eq!(me(&emu, created.secret.expose_secret(), None).await.0, 200);
        let listed = backend
            .get(&backend.scope(&s), &created.key.id)
            .await
            .unwrap();
        assert_eq!(listed.name, s.name);
    }
}

#[tokio::test]
async fn a_repeated_revoke_answering_409_is_confirmed() {
    // --idempotent-revoke: the other reading of the reference, 200 twice.
    let args = Args {
        faults: FaultArgs::default(),
        admin_keys: vec![ADMIN.into()],
        workspaces: vec![],
        idempotent_revoke: true,
        max_page_size: None,
    };
    let (router, faults) = build(&args);
    let idem = spawn(router, faults).await.unwrap();
    let c = client(&idem);
    let id = c.create(&settings("idem")).await.unwrap().key.id;
    let path = format!("/compute/v1/admin/api-keys/{id}/revoke");
    for _ in 0..2 {
        let (st, _) = raw(&idem, reqwest::Method::POST, &path, Some(ADMIN), None).await;
        assert_eq!(st, 200);
    }

    // 409 for a key that is revoked: confirmed by the listing, success.
    let emu = emulator().await;
    let c = client(&emu);
    let scope = KeyScope::default();
    let id = c.create(&settings("twice")).await.unwrap().key.id;
    c.revoke(&scope, &id).await.unwrap();
    c.revoke(&scope, &id)
        .await
        .expect("409 on a revoked key is success");
    assert!(!c.get(&scope, &id).await.unwrap().active);
}
