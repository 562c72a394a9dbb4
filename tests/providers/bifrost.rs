//! Bifrost client ⇄ emulator tests, over real HTTP on loopback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keysmith::api::{
    BifrostAuth, BifrostAuthScheme, BifrostKeySpec, BifrostProvider, BifrostRateLimit, LimitReset,
};
use keysmith::emulators::{bifrost, spawn, RunningEmulator, ScriptedFault};
use keysmith::providers::bifrost::{
    provider_key_id, BifrostClient, FAMILY_PROVIDER, FAMILY_VIRTUAL,
};
use keysmith::providers::{
    drift, ClientOptions, Credentials, Field, KeyBackend, KeyScope, KeySettings, Limit,
    ProviderError,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

const USER: &str = "admin";
const PASS: &str = "correct horse battery staple";
const TOKEN: &str = "bfst-test-management-key";
const VIEWER: &str = "bfst-viewer-key";

async fn start(args: bifrost::Args) -> RunningEmulator {
    let (router, faults) = bifrost::build(&args);
    spawn(router, faults).await.expect("emulator starts")
}

fn protected() -> bifrost::Args {
    bifrost::Args {
        username: Some(USER.into()),
        password: Some(PASS.into()),
        token: Some(TOKEN.into()),
        viewer_token: Some(VIEWER.into()),
        ..Default::default()
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(2),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(2),
        ..Default::default()
    }
}

fn basic(emu: &RunningEmulator, user: &str, pass: &str) -> BifrostClient {
    let spec = BifrostProvider {
        base_url: emu.url(),
        auth_secret_ref: Some(BifrostAuth {
            scheme: BifrostAuthScheme::Basic,
            name: "bifrost-admin".into(),
            namespace: None,
            key: None,
        }),
    };
    let mut c = BTreeMap::new();
    c.insert("username".to_string(), SecretString::from(user));
    c.insert("password".to_string(), SecretString::from(pass));
    BifrostClient::new(&spec, Credentials(c), opts()).expect("client")
}

fn bearer(emu: &RunningEmulator, token: &str, o: ClientOptions) -> BifrostClient {
    let spec = BifrostProvider {
        base_url: emu.url(),
        auth_secret_ref: Some(BifrostAuth {
            scheme: BifrostAuthScheme::Bearer,
            name: "bifrost-token".into(),
            namespace: None,
            key: Some("token".into()),
        }),
    };
    let mut c = BTreeMap::new();
    c.insert("token".to_string(), SecretString::from(token));
    BifrostClient::new(&spec, Credentials(c), o).expect("client")
}

fn open(emu: &RunningEmulator, o: ClientOptions) -> BifrostClient {
    let spec = BifrostProvider {
        base_url: emu.url(),
        auth_secret_ref: None,
    };
    BifrostClient::new(&spec, Credentials::default(), o).expect("client")
}

fn vk_settings(name: &str) -> KeySettings {
    KeySettings {
        name: name.into(),
        uid: uuid::Uuid::new_v4().to_string(),
        attempt: Some(format!("att-{name}")),
        models: vec!["openai/gpt-4o".into()],
        limit: Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Monthly),
        }),
        ..Default::default()
    }
}

fn pushed(name: &str, uid: &str, provider: &str) -> KeySettings {
    KeySettings {
        name: name.into(),
        uid: uid.into(),
        pushed: true,
        models: vec!["gpt-4o".into()],
        bifrost: Some(BifrostKeySpec {
            provider: Some(provider.into()),
            weight: Some(2.0),
            description: Some("pushed by keysmith tests".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn virtual_scope() -> KeyScope {
    KeyScope {
        family: FAMILY_VIRTUAL.into(),
        parent: String::new(),
    }
}

fn provider_scope(p: &str) -> KeyScope {
    KeyScope {
        family: FAMILY_PROVIDER.into(),
        parent: p.into(),
    }
}

/// Status of `GET /v1/models` with a virtual key.
async fn inference(emu: &RunningEmulator, vk: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v1/models", emu.url()))
        .bearer_auth(vk)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn control_keys(emu: &RunningEmulator) -> Value {
    reqwest::get(format!("{}/_emulator/keys", emu.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn value_matches(emu: &RunningEmulator, provider: &str, id: &str, value: &str) -> bool {
    let v: Value = reqwest::Client::new()
        .post(format!("{}/_emulator/provider-key-check", emu.url()))
        .json(&json!({ "provider": provider, "id": id, "value": value }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["matches"].as_bool().expect("matches")
}

fn route_count(emu: &RunningEmulator, route: &str) -> u64 {
    emu.faults.by_route().get(route).copied().unwrap_or(0)
}

#[tokio::test]
async fn virtual_key_lifecycle() {
    let emu = start(bifrost::Args {
        max_page_size: 2,
        ..protected()
    })
    .await;
    let c = basic(&emu, USER, PASS);
    c.verify().await.expect("verify");
    let scope = virtual_scope();

    // Create: the value comes back once and works at the inference check.
    let s = vk_settings("team-a/chat");
    assert_eq!(c.scope(&s), scope);
    assert!(c.validate(&s).is_empty(), "{:?}", c.validate(&s));
    let created = c.create(&s).await.expect("create");
    let secret = created.secret.expose_secret().to_string();
    assert!(secret.starts_with("sk-bf-"));
    assert_eq!(created.key.name, "team-a/chat");
    assert_eq!(created.key.attempt.as_deref(), Some("att-team-a/chat"));
    assert!(created.key.created_at.is_some());
    let hint = created.key.hint.clone().unwrap();
    assert!(hint.starts_with("sk-bf-") && !hint.contains(&secret[10..]));
    assert_eq!(inference(&emu, &secret).await, 200);
    assert_eq!(inference(&emu, "sk-bf-not-a-key").await, 401);

    // More keys, listed across pages of 2.
    for i in 0..4 {
        c.create(&vk_settings(&format!("bulk-{i}"))).await.unwrap();
    }
    let (mut all, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let page = c.list_page(&scope, cursor.as_deref()).await.expect("list");
        pages += 1;
        assert!(page.keys.len() <= 2);
        all.extend(page.keys);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), 5);
    assert!(pages >= 3, "pages: {pages}");
    let listed = all.iter().find(|k| k.id == created.key.id).unwrap();
    assert_eq!(listed.name, "team-a/chat");
    assert_eq!(listed.attempt.as_deref(), Some("att-team-a/chat"));
    assert!(listed.created_at.is_some());

    // Get: settings, readable value, usage from the budget.
    reqwest::Client::new()
        .post(format!("{}/_emulator/usage", emu.url()))
        .json(&json!({ "vkId": created.key.id, "amount": 1.5 }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let got = c.get(&scope, &created.key.id).await.expect("get");
    assert_eq!(got.secret.as_ref().unwrap().expose_secret(), secret);
    assert_eq!(got.observed.disabled, Some(false));
    assert_eq!(
        got.observed.limit,
        Some(Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Monthly)
        }))
    );
    let usage = got.usage.clone().unwrap();
    assert_eq!(usage.monthly.as_deref(), Some("1.5"));
    assert_eq!(usage.limit_remaining.as_deref(), Some("8.5"));
    assert_eq!(usage.unit.as_deref(), Some("USD"));
    assert!(drift(&c, &got, &s).is_empty(), "{:?}", drift(&c, &got, &s));

    // Update: rename, new limit window, more models, a rate limit, a description.
    let mut d = s.clone();
    d.attempt = None;
    d.name = "team-a/chat-v2".into();
    d.limit = Some(Limit {
        amount: "20".into(),
        reset: Some(LimitReset::Weekly),
    });
    d.models.push("anthropic/*".into());
    d.bifrost = Some(BifrostKeySpec {
        description: Some("chat backend".into()),
        rate_limit: Some(BifrostRateLimit {
            request_max_limit: Some(100),
            request_reset_duration: Some("1m".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let fields = drift(&c, &got, &d);
    assert_eq!(
        fields,
        vec![
            Field::DisplayName,
            Field::LimitAmount,
            Field::LimitReset,
            Field::Extras
        ]
    );
    assert!(fields.iter().all(|f| c.capabilities().can_update(*f)));
    let updated = c
        .update(&scope, &created.key.id, &d, &fields)
        .await
        .expect("update");
    assert_eq!(updated.name, "team-a/chat-v2");
    // The create marker survives a description change.
    assert_eq!(updated.attempt.as_deref(), Some("att-team-a/chat"));
    assert!(
        drift(&c, &updated, &d).is_empty(),
        "{:?}",
        drift(&c, &updated, &d)
    );
    let again = c.get(&scope, &created.key.id).await.unwrap();
    assert!(drift(&c, &again, &d).is_empty());
    assert_eq!(again.usage.unwrap().weekly.as_deref(), Some("0"));

    // Rotate: a new value; the old one stops working.
    let rotated = c.regenerate(&scope, &created.key.id).await.expect("rotate");
    let new_secret = rotated.secret.expose_secret().to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(inference(&emu, &secret).await, 401);
    assert_eq!(inference(&emu, &new_secret).await, 200);

    // Disable: the key stops working, and drift sees it.
    d.disabled = true;
    let disabled = c
        .update(&scope, &created.key.id, &d, &[Field::Disabled])
        .await
        .unwrap();
    assert_eq!(disabled.observed.disabled, Some(true));
    assert_eq!(inference(&emu, &new_secret).await, 401);

    // Revoke.
    c.revoke(&scope, &created.key.id).await.expect("revoke");
    assert!(matches!(
        c.get(&scope, &created.key.id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.revoke(&scope, &created.key.id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.regenerate(&scope, &created.key.id).await,
        Err(ProviderError::NotFound(_))
    ));
    let keys = control_keys(&emu).await;
    assert_eq!(keys["virtualKeys"].as_array().unwrap().len(), 4);
    assert!(!keys.to_string().contains(&new_secret));
}

#[tokio::test]
async fn provider_key_push_lifecycle() {
    let emu = start(protected()).await;
    let c = bearer(&emu, TOKEN, opts());
    let uid = uuid::Uuid::new_v4().to_string();
    let s = pushed("openai-prod", &uid, "openai");
    let scope = c.scope(&s);
    assert_eq!(scope, provider_scope("openai"));
    assert!(c.validate(&s).is_empty(), "{:?}", c.validate(&s));

    // Push: a deterministic id, the value stored but never shown.
    let value = SecretString::from("sk-proj-upstream-value-0001");
    let k = c.push(&s, &value, None).await.expect("push");
    assert_eq!(k.id, provider_key_id(&uid, "openai"));
    assert_eq!(k.name, "openai-prod");
    assert_eq!(k.hint.as_deref(), Some("sk-p…0001"));
    assert!(k.secret.is_none());
    assert!(value_matches(&emu, "openai", &k.id, "sk-proj-upstream-value-0001").await);
    assert!(drift(&c, &k, &s).is_empty(), "{:?}", drift(&c, &k, &s));

    // A repeated create (lost answer, restarted operator) is recognised by its 409: one key.
    let again = c.push(&s, &value, None).await.expect("repeated push");
    assert_eq!(again.id, k.id);
    assert_eq!(
        control_keys(&emu).await["providerKeys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A new value is pushed onto the same key.
    let value2 = SecretString::from("sk-proj-upstream-value-0002");
    let k2 = c
        .push(&s, &value2, Some(&k.id))
        .await
        .expect("push new value");
    assert_eq!(k2.id, k.id);
    assert!(value_matches(&emu, "openai", &k.id, "sk-proj-upstream-value-0002").await);
    assert!(!value_matches(&emu, "openai", &k.id, "sk-proj-upstream-value-0001").await);

    // Observe through the list and the read-only flat list.
    let page = c.list_page(&scope, None).await.unwrap();
    assert!(page.next.is_none());
    assert_eq!(page.keys.len(), 1);
    assert_eq!(
        page.keys[0].observed.models,
        Some(vec!["gpt-4o".to_string()])
    );
    let flat = c.get(&provider_scope(""), &k.id).await.expect("flat get");
    assert_eq!(flat.name, "openai-prod");

    // Update without the value: the redacted echo keeps the stored value.
    let mut d = s.clone();
    d.disabled = true;
    d.models = vec![];
    d.name = "openai-prod-2".into();
    d.bifrost.as_mut().unwrap().weight = Some(3.0);
    let current = c.get(&scope, &k.id).await.unwrap();
    let fields = drift(&c, &current, &d);
    assert_eq!(
        fields,
        vec![
            Field::DisplayName,
            Field::Disabled,
            Field::Models,
            Field::Extras
        ]
    );
    let u = c.update(&scope, &k.id, &d, &fields).await.expect("update");
    assert_eq!(u.observed.disabled, Some(true));
    assert!(drift(&c, &u, &d).is_empty(), "{:?}", drift(&c, &u, &d));
    assert!(value_matches(&emu, "openai", &k.id, "sk-proj-upstream-value-0002").await);
    let shown = control_keys(&emu).await["providerKeys"][0].clone();
    assert_eq!(shown["models"], json!(["*"]));
    assert_eq!(shown["weight"], json!(3.0));

    // Provider keys are not minted nor rotated by the gateway.
    assert!(
        matches!(c.create(&s).await, Err(ProviderError::Unsupported(m)) if m.contains("spec.source.secretRef"))
    );
    assert!(matches!(
        c.regenerate(&scope, &k.id).await,
        Err(ProviderError::Unsupported(_))
    ));

    // Names are unique across providers: another ApiKey reusing it is told so.
    let other = pushed(
        "openai-prod-2",
        &uuid::Uuid::new_v4().to_string(),
        "anthropic",
    );
    let err = c
        .push(&other, &SecretString::from("sk-ant-other-value-1234"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected(m) if m.contains("unique across providers") && m.contains("openai")),
        "{err}"
    );
    assert!(!err.to_string().contains("sk-ant-other-value-1234"));

    // Deleted behind keysmith's back: a push with the known id registers it again.
    reqwest::Client::new()
        .delete(format!("{}/api/providers/openai/keys/{}", emu.url(), k.id))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let back = c.push(&d, &value2, Some(&k.id)).await.expect("re-register");
    assert_eq!(back.id, k.id);

    // Revoke.
    c.revoke(&scope, &k.id).await.expect("revoke");
    assert!(matches!(
        c.get(&scope, &k.id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.revoke(&scope, &k.id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(control_keys(&emu).await["providerKeys"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn values_never_leak_into_errors() {
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    let value = SecretString::from("sk-live-do-not-print-me-42");
    // Unknown upstream provider.
    let s = pushed("k1", "uid-1", "mistral");
    let err = c.push(&s, &value, None).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::NotFound(ref m) if m.contains("Provider not found")),
        "{err}"
    );
    for text in [err.to_string(), format!("{err:?}"), format!("{c:?}")] {
        assert!(!text.contains("do-not-print-me"), "{text}");
    }
    // An empty value is refused before any call.
    let before = emu.faults.requests();
    let err = c
        .push(
            &pushed("k2", "uid-2", "openai"),
            &SecretString::from(""),
            None,
        )
        .await;
    assert!(matches!(err, Err(ProviderError::Rejected(_))));
    assert_eq!(emu.faults.requests(), before);
    // Credentials are not in Debug output either.
    let emu2 = start(protected()).await;
    let b = basic(&emu2, USER, PASS);
    assert!(!format!("{b:?}").contains("horse"));
    assert!(!format!("{:?}", protected()).contains("horse"));
}

#[tokio::test]
async fn credentials_are_checked() {
    let emu = start(protected()).await;
    assert!(basic(&emu, USER, PASS).verify().await.is_ok());
    assert!(bearer(&emu, TOKEN, opts()).verify().await.is_ok());
    for c in [
        basic(&emu, USER, "wrong"),
        bearer(&emu, "bfst-wrong", opts()),
        open(&emu, opts()),
    ] {
        match c.verify().await {
            Err(ProviderError::Auth(m)) => assert!(m.contains("401"), "{m}"),
            other => panic!("expected Auth, got {other:?}"),
        }
        assert!(matches!(
            c.create(&vk_settings("x")).await,
            Err(ProviderError::Auth(_))
        ));
    }
    // A management key with view permissions only: reads pass, changes are 403.
    let viewer = bearer(&emu, VIEWER, opts());
    viewer.verify().await.expect("viewer can read");
    match viewer.create(&vk_settings("x")).await {
        Err(ProviderError::Auth(m)) => {
            assert!(m.contains("403") && m.contains("permission"), "{m}")
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    // A session token from the login endpoint works as Bearer.
    let login: Value = reqwest::Client::new()
        .post(format!("{}/api/session/login", emu.url()))
        .json(&json!({ "username": USER, "password": PASS }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = login["token"].as_str().unwrap();
    bearer(&emu, session, opts())
        .verify()
        .await
        .expect("session token");
    // Without auth flags the gateway is open.
    let open_emu = start(bifrost::Args::default()).await;
    open(&open_emu, opts())
        .verify()
        .await
        .expect("open gateway");
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    emu.faults.push([ScriptedFault {
        status: Some(429),
        retry_after: Some(1),
        malformed: false,
        delay_ms: None,
    }]);
    let started = Instant::now();
    c.list_page(&virtual_scope(), None).await.expect("retried");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(route_count(&emu, "GET /api/governance/virtual-keys"), 2);

    // Longer than max_retry_after: handed back to the controller.
    emu.faults.push([ScriptedFault {
        status: Some(429),
        retry_after: Some(30),
        malformed: false,
        delay_ms: None,
    }]);
    match c.create(&vk_settings("x")).await {
        Err(ProviderError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(control_keys(&emu).await["virtualKeys"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn server_errors_retry_reads_but_not_creates() {
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    let fault = || ScriptedFault {
        status: Some(500),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    };
    emu.faults.push([fault()]);
    c.verify().await.expect("verify retried");
    assert_eq!(route_count(&emu, "GET /api/governance/virtual-keys"), 2);

    emu.faults.push([fault()]);
    match c.create(&vk_settings("x")).await {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("500"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(route_count(&emu, "POST /api/governance/virtual-keys"), 1);

    // The push create is not retried either.
    emu.faults.push([fault()]);
    let err = c
        .push(
            &pushed("p", "uid-p", "openai"),
            &SecretString::from("sk-value-123456789"),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err}");
    assert_eq!(route_count(&emu, "POST /api/providers/{provider}/keys"), 1);
}

#[tokio::test]
async fn timeouts_and_malformed_bodies() {
    let emu = start(bifrost::Args::default()).await;
    let quick = ClientOptions {
        timeout: Duration::from_millis(300),
        max_attempts: 1,
        ..opts()
    };
    let c = open(&emu, quick);
    emu.faults.push([ScriptedFault {
        status: None,
        retry_after: None,
        malformed: false,
        delay_ms: Some(1500),
    }]);
    match c.list_page(&virtual_scope(), None).await {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("expected a timeout, got {other:?}"),
    }

    let c = open(&emu, opts());
    let created = c.create(&vk_settings("m")).await.unwrap();
    emu.faults.push([ScriptedFault {
        status: None,
        retry_after: None,
        malformed: true,
        delay_ms: None,
    }]);
    assert!(matches!(
        c.get(&virtual_scope(), &created.key.id).await,
        Err(ProviderError::Malformed(_))
    ));
    emu.faults.push([ScriptedFault {
        status: None,
        retry_after: None,
        malformed: true,
        delay_ms: None,
    }]);
    assert!(matches!(
        c.list_page(&provider_scope("openai"), None).await,
        Err(ProviderError::Malformed(_))
    ));
}

#[tokio::test]
async fn gateway_validation_surfaces_as_rejected() {
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    // Settings the controller would have stopped in validate(), sent anyway.
    let mut s = vk_settings("bad");
    s.bifrost = Some(BifrostKeySpec {
        rate_limit: Some(BifrostRateLimit {
            token_max_limit: Some(10),
            token_reset_duration: Some("soon".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(!c.validate(&s).is_empty());
    match c.create(&s).await {
        Err(ProviderError::Rejected(m)) => assert!(m.contains("400") && m.contains("soon"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    let mut s = vk_settings("");
    s.models.clear();
    match c.create(&s).await {
        Err(ProviderError::Rejected(m)) => assert!(m.contains("name is required"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(matches!(
        c.get(&virtual_scope(), "no-such-key").await,
        Err(ProviderError::NotFound(m)) if m.contains("Virtual key not found")
    ));
    assert!(matches!(
        c.get(&provider_scope("openai"), "no-such-key").await,
        Err(ProviderError::NotFound(m)) if m.contains("Provider key not found")
    ));
}

#[tokio::test]
async fn rotate_is_feature_detected() {
    let emu = start(bifrost::Args {
        no_rotate: true,
        ..Default::default()
    })
    .await;
    let c = open(&emu, opts());
    let k = c.create(&vk_settings("old-gateway")).await.unwrap();
    match c.regenerate(&virtual_scope(), &k.key.id).await {
        Err(ProviderError::Unsupported(m)) => assert!(m.contains("rotate"), "{m}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(matches!(
        c.regenerate(&virtual_scope(), "missing").await,
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn hidden_values_are_not_read_back() {
    let emu = start(bifrost::Args {
        hide_vk_values: true,
        ..Default::default()
    })
    .await;
    let c = open(&emu, opts());
    let k = c.create(&vk_settings("hidden")).await.unwrap();
    assert!(k.secret.expose_secret().starts_with("sk-bf-"));
    let got = c.get(&virtual_scope(), &k.key.id).await.unwrap();
    assert!(got.secret.is_none());
    assert_eq!(got.name, "hidden");
}

/// The emulator's own validation and shapes, over raw HTTP.
#[tokio::test]
async fn emulator_reproduces_the_gateway() {
    let emu = start(bifrost::Args::default()).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", emu.url());
    let call = |m: reqwest::Method, p: &str, body: Option<Value>| {
        let mut r = http.request(m, url(p));
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            (status, v)
        }
    };
    use reqwest::Method as M;

    // Provider keys: auto id, defaults, redaction, 400/404/409.
    let (st, k) = call(
        M::POST,
        "/api/providers/openai/keys",
        Some(json!({"name": "a", "value": "sk-abcdefghijklmnopqrstuvwxyz"})),
    )
    .await;
    assert_eq!(st, 200, "{k}");
    assert!(uuid::Uuid::parse_str(k["id"].as_str().unwrap()).is_ok());
    assert_eq!(k["enabled"], json!(true));
    assert_eq!(
        k["value"]["value"],
        json!("sk-a************************wxyz")
    );
    let id = k["id"].as_str().unwrap().to_string();
    let (st, e) = call(
        M::POST,
        "/api/providers/openai/keys",
        Some(json!({"name": "b", "value": ""})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["is_bifrost_error"], json!(false));
    assert_eq!(e["status_code"], json!(400));
    assert_eq!(e["error"]["message"], json!("Key value must not be empty"));
    let (st, _) = call(
        M::POST,
        "/api/providers/anthropic/keys",
        Some(json!({"name": "a", "value": "sk-ant-12345678"})),
    )
    .await;
    assert_eq!(st, 409, "names are unique across providers");
    let (st, _) = call(
        M::POST,
        "/api/providers/anthropic/keys",
        Some(json!({"id": id, "name": "c", "value": "sk-ant-12345678"})),
    )
    .await;
    assert_eq!(st, 409, "ids are unique");
    let (st, e) = call(M::GET, "/api/providers/mistral/keys", None).await;
    assert_eq!(
        (st, e["error"]["message"].clone()),
        (404, json!("Provider not found: mistral"))
    );
    let (st, _) = call(
        M::POST,
        "/api/providers/openai/keys",
        Some(json!({"name": "s", "value": "short"})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, list) = call(M::GET, "/api/providers/openai/keys", None).await;
    assert_eq!(list["total"], json!(2));
    assert!(list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["value"]["value"] == json!("*****")));

    // Redacted echo in a PUT keeps the value; a new one replaces it.
    let mut echo = k.clone();
    echo["models"] = json!(["gpt-4o"]);
    let (st, _) = call(
        M::PUT,
        &format!("/api/providers/openai/keys/{id}"),
        Some(echo),
    )
    .await;
    assert_eq!(st, 200);
    assert!(value_matches(&emu, "openai", &id, "sk-abcdefghijklmnopqrstuvwxyz").await);

    // /api/keys is read-only and blank; keys are not accepted on the provider itself.
    let (st, rows) = call(M::GET, "/api/keys", None).await;
    assert_eq!(st, 200);
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["value"], json!(""));
    for m in [M::POST, M::PUT, M::DELETE] {
        assert_eq!(call(m, "/api/keys", Some(json!({}))).await.0, 405);
    }
    let (st, e) = call(
        M::PUT,
        "/api/providers/openai",
        Some(json!({"keys": [{"name": "x", "value": "y"}]})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("keys are not accepted"));
    assert_eq!(
        call(M::PUT, "/api/providers/openai", Some(json!({"keys": []})))
            .await
            .0,
        200
    );

    // Virtual keys: unpaginated without params, paginated with them, 400 on bad params.
    for i in 0..3 {
        let (st, v) = call(M::POST, "/api/governance/virtual-keys", Some(json!({"name": format!("vk{i}"), "budgets": [{"max_limit": 1.0, "reset_duration": "1d"}]}))).await;
        assert_eq!(st, 200);
        assert!(v["virtual_key"]["value"]
            .as_str()
            .unwrap()
            .starts_with("sk-bf-"));
    }
    let (_, all) = call(M::GET, "/api/governance/virtual-keys", None).await;
    assert_eq!(all["count"], json!(3));
    // Unpaginated: one page holding everything, with the fields the spec requires.
    assert_eq!(
        (&all["total_count"], &all["limit"], &all["offset"]),
        (&json!(3), &json!(3), &json!(0))
    );
    let (_, page) = call(
        M::GET,
        "/api/governance/virtual-keys?limit=2&offset=2",
        None,
    )
    .await;
    assert_eq!(
        (
            page["count"].clone(),
            page["total_count"].clone(),
            page["limit"].clone(),
            page["offset"].clone()
        ),
        (json!(1), json!(3), json!(2), json!(2))
    );
    for q in ["limit=abc", "limit=-1", "offset=x"] {
        let (st, e) = call(M::GET, &format!("/api/governance/virtual-keys?{q}"), None).await;
        assert_eq!(st, 400, "{q}: {e}");
    }
    let (st, _) = call(M::POST, "/api/governance/virtual-keys", Some(json!({"name": "dup", "budgets": [{"max_limit": 1.0, "reset_duration": "1d"}, {"max_limit": 2.0, "reset_duration": "1d"}]}))).await;
    assert_eq!(st, 400);
    assert_eq!(
        call(
            M::POST,
            "/api/governance/virtual-keys",
            Some(json!({"name": "x", "team_id": "t", "customer_id": "c"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        call(M::GET, "/api/governance/virtual-keys/nope", None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(M::POST, "/api/governance/virtual-keys/nope/rotate", None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(
            M::POST,
            "/api/governance/virtual-keys/rotate",
            Some(json!({"ids": []}))
        )
        .await
        .0,
        400
    );

    // Budget exhaustion and the quota endpoint.
    let vk = all["virtual_keys"][0].clone();
    let value = vk["value"].as_str().unwrap();
    assert_eq!(inference(&emu, value).await, 200);
    http.post(url("/_emulator/usage"))
        .json(&json!({"vkId": vk["id"], "amount": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(inference(&emu, value).await, 429);
    let q: Value = http
        .get(url("/api/governance/virtual-keys/quota"))
        .header("x-bf-vk", value)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(q["budgets"][0]["current_usage"], json!(1.0));

    // Control endpoints are neither counted nor faulted.
    let before = emu.faults.requests();
    emu.faults.push([ScriptedFault {
        status: Some(500),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    }]);
    let keys = control_keys(&emu).await;
    assert_eq!(keys["virtualKeys"].as_array().unwrap().len(), 3);
    assert!(!keys.to_string().contains(value));
    assert_eq!(emu.faults.requests(), before);
    assert_eq!(call(M::GET, "/api/keys", None).await.0, 500);
}

/// The manifests in examples/bifrost/ work as written against the emulator started with the
/// flags in 01-keyprovider.yaml.
#[tokio::test]
async fn examples_work_against_the_emulator() {
    use k8s_openapi::api::core::v1::Secret;
    use keysmith::api::{ApiKey, KeyProvider};
    use keysmith::providers::build_backend;

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bifrost");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).expect(f);
    let provider_yaml = read("01-keyprovider.yaml");
    let flags = provider_yaml
        .lines()
        .find_map(|l| {
            l.trim_start_matches('#')
                .trim()
                .strip_prefix("keysmith emulate bifrost ")
        })
        .expect("emulator command in a comment");
    let flag = |name: &str| {
        let words: Vec<&str> = flags.split_whitespace().collect();
        words
            .iter()
            .position(|w| *w == name)
            .map(|i| words[i + 1].to_string())
    };
    let emu_args = bifrost::Args {
        username: flag("--username"),
        password: flag("--password"),
        ..Default::default()
    };
    let emu = start(emu_args).await;
    assert_eq!(flag("--listen").as_deref(), Some("127.0.0.1:8787"));

    let mut provider: KeyProvider = serde_yaml::from_str(&provider_yaml).unwrap();
    provider.spec.bifrost.as_mut().unwrap().base_url = emu.url(); // the test's own port
    let creds_secret: Secret = serde_yaml::from_str(&read("00-credentials.yaml")).unwrap();
    let data = creds_secret.string_data.unwrap();
    let mut creds = BTreeMap::new();
    for r in provider
        .spec
        .provider()
        .expect("one block")
        .credential_refs()
    {
        assert_eq!(r.name, "bifrost-admin");
        creds.insert(r.role.to_string(), SecretString::from(data[&r.key].clone()));
    }
    let backend = build_backend(&provider.spec, Credentials(creds), opts()).expect("backend");
    backend
        .verify()
        .await
        .expect("credentials of the example are accepted");

    // The virtual key.
    let vk: ApiKey = serde_yaml::from_str(&read("02-virtual-key.yaml")).unwrap();
    let mut s = KeySettings::from_spec(&vk.spec, vk.display_name(), chrono::Utc::now()).unwrap();
    s.uid = "example-vk-uid".into();
    s.attempt = Some("example".into());
    assert!(
        backend.validate(&s).is_empty(),
        "{:?}",
        backend.validate(&s)
    );
    assert_eq!(backend.scope(&s).family, FAMILY_VIRTUAL);
    for f in [
        Field::DisplayName,
        Field::LimitAmount,
        Field::LimitReset,
        Field::Models,
        Field::Extras,
    ] {
        assert!(backend.capabilities().supports(f));
    }
    let created = backend.create(&s).await.expect("virtual key");
    assert_eq!(inference(&emu, created.secret.expose_secret()).await, 200);
    let got = backend
        .get(&backend.scope(&s), &created.key.id)
        .await
        .unwrap();
    assert!(drift(backend.as_ref(), &got, &s).is_empty());
    let shown = control_keys(&emu).await["virtualKeys"][0].clone();
    assert_eq!(shown["budgets"][0]["resetDuration"], json!("1M"));
    assert_eq!(shown["providerConfigs"].as_array().unwrap().len(), 2);

    // The provider key pushed from the user's Secret.
    let pk: ApiKey = serde_yaml::from_str(&read("04-provider-key.yaml")).unwrap();
    let upstream: Secret = serde_yaml::from_str(&read("03-upstream-secret.yaml")).unwrap();
    let source = pk.spec.source.clone().unwrap().secret_ref;
    assert_eq!(
        upstream.metadata.name.as_deref(),
        Some(source.name.as_str())
    );
    let value = upstream.string_data.unwrap()[&source.key].clone();
    let mut s = KeySettings::from_spec(&pk.spec, pk.display_name(), chrono::Utc::now()).unwrap();
    s.uid = "example-pk-uid".into();
    assert!(
        backend.validate(&s).is_empty(),
        "{:?}",
        backend.validate(&s)
    );
    assert_eq!(backend.scope(&s), provider_scope("openai"));
    let pushed = backend
        .push(&s, &SecretString::from(value.clone()), None)
        .await
        .expect("provider key");
    assert_eq!(pushed.name, "openai-prod");
    assert!(value_matches(&emu, "openai", &pushed.id, &value).await);
    assert!(drift(backend.as_ref(), &pushed, &s).is_empty());
}

#[tokio::test]
async fn provider_key_models_empty_is_deny_all_both_ways() {
    use keysmith::providers::bifrost::DENY_ALL_MODELS;
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    let uid = uuid::Uuid::new_v4().to_string();
    let mut s = pushed("openai-all", &uid, "openai");
    // No models in the spec: every model, sent as ["*"], never as [] (deny-all since v1.5).
    s.models.clear();
    let scope = c.scope(&s);
    let k = c
        .push(&s, &SecretString::from("sk-proj-upstream-value-0002"), None)
        .await
        .unwrap();
    let stored = &control_keys(&emu).await["providerKeys"];
    let row = stored
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(k.id))
        .unwrap();
    assert_eq!(row["models"], json!(["*"]), "{row}");
    assert!(drift(&c, &k, &s).is_empty());

    // Someone sets models: [] at the gateway: that key now serves no model. It must not read
    // as "every model" (no drift); it reads as deny-all, which differs from the spec.
    let url = format!("{}/api/providers/openai/keys/{}", emu.url(), k.id);
    let mut body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    body["models"] = json!([]);
    let resp = reqwest::Client::new()
        .put(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let now = c.get(&scope, &k.id).await.unwrap();
    assert_eq!(now.observed.models, Some(vec![DENY_ALL_MODELS.to_string()]));
    assert_eq!(drift(&c, &now, &s), vec![Field::Models]);
    // The correction writes ["*"] back.
    let fixed = c.update(&scope, &k.id, &s, &[Field::Models]).await.unwrap();
    assert_eq!(fixed.observed.models, Some(vec![]));
}

// ---- issue 20: provider-key status, virtual-key expiry, rotation outside keysmith -----------

/// A provider key's `description` is the gateway's error/status text (published `Key` schema):
/// keysmith neither sends the user's text there nor compares it, so a gateway that writes its
/// own text is no drift; its non-OK `status` is reported instead.
#[tokio::test]
async fn provider_key_description_is_the_gateways_and_its_status_is_reported() {
    let emu = start(bifrost::Args {
        list_models_fails: true,
        ..Default::default()
    })
    .await;
    let c = open(&emu, opts());
    let value = SecretString::from("sk-proj-upstream-described-0123456789");
    let s = pushed("described", "uid-described", "openai");
    let k = c.push(&s, &value, None).await.unwrap();
    let got = c.get(&provider_scope("openai"), &k.id).await.unwrap();
    assert_eq!(
        drift(&c, &got, &s),
        Vec::<Field>::new(),
        "the gateway's text in description is not drift"
    );
    let problem = c.key_problem(&got).expect("list_models_failed is reported");
    assert!(problem.contains("list_models_failed"), "{problem}");
    assert!(problem.contains("401"), "the gateway's text: {problem}");
    assert!(!problem.contains(value.expose_secret()));
    // An update of the block leaves description alone.
    let updated = c
        .update(&provider_scope("openai"), &k.id, &s, &[Field::Extras])
        .await
        .unwrap();
    assert_eq!(drift(&c, &updated, &s), Vec::<Field>::new());

    // A healthy gateway: nothing reported, and the user's text was never sent.
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    let k = c
        .push(&pushed("quiet", "uid-quiet", "openai"), &value, None)
        .await
        .unwrap();
    assert_eq!(c.key_problem(&k), None);
    let keys = control_keys(&emu).await;
    assert_eq!(keys["providerKeys"][0]["description"], "", "{keys}");
    // Virtual keys report no such problem.
    let vk = c.create(&vk_settings("vk-no-problem")).await.unwrap();
    assert_eq!(c.key_problem(&vk.key), None);
}

/// Virtual-key `expires_at` (newer Bifrost): sent on create, observed, updated and cleared in
/// place; the gateway refuses the key once it passed.
#[tokio::test]
async fn virtual_key_expiry_is_set_observed_and_enforced() {
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    let at = |secs: i64| {
        let t = chrono::Utc::now() + chrono::Duration::seconds(secs);
        chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap()
    };
    let mut s = vk_settings("expiring");
    s.expires_at = Some(at(3600));
    let k = c.create(&s).await.unwrap();
    assert_eq!(k.key.observed.expires_at, Some(s.expires_at));
    let got = c.get(&virtual_scope(), &k.key.id).await.unwrap();
    assert_eq!(got.observed.expires_at, Some(s.expires_at));
    assert_eq!(drift(&c, &got, &s), Vec::<Field>::new());
    let keys = control_keys(&emu).await;
    assert!(keys["virtualKeys"][0]["expiresAt"].is_string(), "{keys}");

    // A new expiry is drift, updated in place.
    s.expires_at = Some(at(7200));
    assert_eq!(drift(&c, &got, &s), vec![Field::ExpiresAt]);
    assert!(c.capabilities().can_update(Field::ExpiresAt));
    let updated = c
        .update(&virtual_scope(), &k.key.id, &s, &[Field::ExpiresAt])
        .await
        .unwrap();
    assert_eq!(updated.observed.expires_at, Some(s.expires_at));
    // Cleared.
    s.expires_at = None;
    let cleared = c
        .update(&virtual_scope(), &k.key.id, &s, &[Field::ExpiresAt])
        .await
        .unwrap();
    assert_eq!(cleared.observed.expires_at, Some(None));

    // Enforced: a key that expires in two seconds works, then is refused.
    let mut short = vk_settings("short-lived");
    short.expires_at = Some(at(2));
    let k = c.create(&short).await.unwrap();
    assert_eq!(inference(&emu, k.secret.expose_secret()).await, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(inference(&emu, k.secret.expose_secret()).await, 403);

    // A build without expiry ignores the field: an update says so instead of repeating.
    let old = start(bifrost::Args {
        no_vk_expiry: true,
        ..Default::default()
    })
    .await;
    let c = open(&old, opts());
    let k = c.create(&vk_settings("old-build")).await.unwrap();
    let mut s = vk_settings("old-build");
    s.expires_at = Some(at(3600));
    match c
        .update(&virtual_scope(), &k.key.id, &s, &[Field::ExpiresAt])
        .await
    {
        Err(ProviderError::Unsupported(m)) => assert!(m.contains("expires_at"), "{m}"),
        other => panic!("expected Unsupported, got {:?}", other.map(|k| k.id)),
    }
}

/// A virtual key rotated behind keysmith's back is recognised: by its value where list/get
/// return it, by `rotated_at` where they do not.
#[tokio::test]
async fn a_virtual_key_rotated_outside_keysmith_is_recognised() {
    let emu = start(bifrost::Args::default()).await;
    let c = open(&emu, opts());
    let k = c.create(&vk_settings("rotated-by-hand")).await.unwrap();
    let since = k.key.created_at;
    let got = c.get(&virtual_scope(), &k.key.id).await.unwrap();
    assert_eq!(c.rotated_outside(&got, &k.secret, since), None);
    let r = reqwest::Client::new()
        .post(format!("{}/_emulator/rotate", emu.url()))
        .json(&json!({ "vkId": k.key.id }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got = c.get(&virtual_scope(), &k.key.id).await.unwrap();
    let why = c
        .rotated_outside(&got, &k.secret, since)
        .expect("another value");
    assert!(!why.contains(k.secret.expose_secret()), "{why}");
    let new = got.secret.clone().expect("the gateway returns the value");
    assert_ne!(new.expose_secret(), k.secret.expose_secret());
    assert_eq!(c.rotated_outside(&got, &new, since), None, "the new value");
    assert_eq!(inference(&emu, k.secret.expose_secret()).await, 401);

    // Values hidden: rotated_at tells.
    let emu = start(bifrost::Args {
        hide_vk_values: true,
        ..Default::default()
    })
    .await;
    let c = open(&emu, opts());
    let k = c.create(&vk_settings("rotated-hidden")).await.unwrap();
    let since = k.key.created_at;
    let got = c.get(&virtual_scope(), &k.key.id).await.unwrap();
    assert!(got.hint.is_none() && got.secret.is_none());
    assert_eq!(c.rotated_outside(&got, &k.secret, since), None);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    reqwest::Client::new()
        .post(format!("{}/_emulator/rotate", emu.url()))
        .json(&json!({ "vkId": k.key.id }))
        .send()
        .await
        .unwrap();
    let got = c.get(&virtual_scope(), &k.key.id).await.unwrap();
    let why = c
        .rotated_outside(&got, &k.secret, since)
        .expect("rotated_at after creation");
    assert!(why.contains("rotated"), "{why}");
    // keysmith's own later record of the value covers it.
    let later = Some(chrono::Utc::now());
    assert_eq!(c.rotated_outside(&got, &k.secret, later), None);
}
