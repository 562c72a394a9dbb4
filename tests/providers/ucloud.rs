//! UCloud ModelVerse client ⇄ emulator, over real HTTP on loopback.

use std::time::{Duration, Instant};

use keysmith::api::{LimitReset, UCloudKeySpec, UCloudProvider};
use keysmith::emulators::{spawn, ucloud as emu, RunningEmulator, ScriptedFault};
use keysmith::providers::ucloud::{signature, Params, UCloudClient, PAGE_SIZE};
use keysmith::providers::{
    drift, ClientOptions, Credentials, Field, KeyBackend, KeyScope, KeySettings, Limit,
    ProviderError,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

const PUBLIC: &str = "test-public-key";
const PRIVATE: &str = "test-private-key-0123456789";

fn args() -> emu::Args {
    emu::Args {
        public_key: PUBLIC.into(),
        private_key: PRIVATE.into(),
        ..Default::default()
    }
}

async fn start(args: emu::Args) -> RunningEmulator {
    let (router, faults) = emu::build(&args);
    spawn(router, faults).await.expect("emulator starts")
}

fn opts(e: &RunningEmulator) -> ClientOptions {
    ClientOptions {
        base_url: Some(e.url()),
        timeout: Duration::from_millis(800),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(2),
        ..Default::default()
    }
}

fn client_with(
    e: &RunningEmulator,
    public: &str,
    private: &str,
    project: Option<&str>,
) -> UCloudClient {
    let spec = UCloudProvider {
        base_url: Some(e.url()),
        public_key: public.into(),
        project_id: project.map(str::to_string),
        ..Default::default()
    };
    let mut creds = Credentials::default();
    creds
        .0
        .insert("privateKey".into(), SecretString::from(private.to_string()));
    UCloudClient::new(&spec, creds, opts(e)).expect("client builds")
}

fn client(e: &RunningEmulator) -> UCloudClient {
    client_with(e, PUBLIC, PRIVATE, None)
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

/// `GET /v1/models` with a key: the status code (200 live, 403 disabled/over cap, 401 dead).
async fn inference_status(e: &RunningEmulator, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v1/models", e.url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn control_keys(e: &RunningEmulator) -> Vec<Value> {
    reqwest::get(format!("{}/_emulator/keys", e.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A signed call built by hand (GET query string or POST form), for emulator checks.
async fn raw(e: &RunningEmulator, get: bool, pairs: &[(&str, &str)], sign_with: &str) -> Value {
    let mut p: Params = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p.insert("PublicKey".into(), PUBLIC.into());
    let sig = signature(&p, sign_with);
    p.insert("Signature".into(), sig);
    let c = reqwest::Client::new();
    let req = if get {
        c.get(format!("{}/", e.url())).query(&p)
    } else {
        c.post(format!("{}/", e.url())).form(&p)
    };
    let resp = req.send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "UCloud answers business errors with 200"
    );
    resp.json().await.unwrap()
}

/// Which typed error an HTTP status must become.
type ErrorCheck = fn(&ProviderError) -> bool;
/// Parameters, the private key to sign with, the RetCode expected.
type RawCase = (Vec<(&'static str, &'static str)>, &'static str, i64);

fn retcode(v: &Value) -> i64 {
    v["RetCode"].as_i64().expect("RetCode")
}

async fn list_all(c: &UCloudClient) -> (Vec<keysmith::providers::ProviderKey>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = c.list_page(&scope(), cursor.as_deref()).await.unwrap();
        pages += 1;
        all.extend(page.keys);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return (all, pages),
        }
    }
}

#[tokio::test]
async fn lifecycle_create_use_list_get_update_revoke() {
    let e = start(args()).await;
    let c = client(&e);
    c.verify().await.unwrap();

    let mut s = settings("team-a/chat");
    s.models = vec!["deepseek-ai/DeepSeek-R1".into()];
    s.allowed_ips = vec!["10.0.0.0/8".into(), "192.168.1.10-192.168.1.20".into()];
    s.limit = Some(Limit {
        amount: "10".into(),
        reset: Some(LimitReset::Daily),
    });
    assert!(c.validate(&s).is_empty());
    let created = c.create(&s).await.unwrap();
    let id = created.key.id.clone();
    let secret = created.secret.expose_secret().to_string();
    assert!(id.starts_with("uminferapikey-") && id.len() == "uminferapikey-".len() + 12);
    assert!(id[14..]
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(created.key.name, "team-a/chat");
    assert!(created.key.created_at.is_some());
    let hint = created.key.hint.clone().unwrap();
    assert!(!hint.contains(&secret) && secret.starts_with(&hint[..4]));
    assert!(drift(&c, &created.key, &s).is_empty());

    // The plaintext works at the inference API.
    assert_eq!(inference_status(&e, &secret).await, 200);
    assert_eq!(inference_status(&e, "not-a-key").await, 401);

    // More than one page: 100 is the page size.
    for i in 0..PAGE_SIZE {
        c.create(&settings(&format!("filler-{i}"))).await.unwrap();
    }
    let (all, pages) = list_all(&c).await;
    assert_eq!(all.len(), PAGE_SIZE + 1);
    assert_eq!(pages, 2);
    assert_eq!(all[0].id, id, "listing keeps creation order");

    // get (filters the listing) returns the secret: a lost Secret is restored without a new key.
    let got = c.get(&scope(), &id).await.unwrap();
    assert_eq!(got.secret.as_ref().unwrap().expose_secret(), secret);
    assert_eq!(
        got.observed.models,
        Some(vec!["deepseek-ai/DeepSeek-R1".to_string()])
    );
    assert_eq!(got.extras.get("dailyLimitAmount").unwrap(), "10");

    // Update: rename, disable, caps moved to monthly, whitelist cleared, all models.
    let mut d = settings("team-a/chat-v2");
    d.disabled = true;
    d.limit = Some(Limit {
        amount: "75.5".into(),
        reset: Some(LimitReset::Monthly),
    });
    let fields = drift(&c, &got, &d);
    assert_eq!(
        fields,
        vec![
            Field::DisplayName,
            Field::Disabled,
            Field::AllowedIps,
            Field::Models,
            Field::Extras
        ]
    );
    let updated = c.update(&scope(), &id, &d, &fields).await.unwrap();
    assert_eq!(updated.name, "team-a/chat-v2");
    assert_eq!(updated.observed.disabled, Some(true));
    assert_eq!(updated.observed.allowed_ips, Some(vec![]));
    assert_eq!(updated.observed.models, Some(vec![]));
    assert_eq!(updated.extras.get("dailyLimitAmount").unwrap(), "");
    assert_eq!(updated.extras.get("monthlyLimitAmount").unwrap(), "75.5");
    assert!(drift(&c, &updated, &d).is_empty(), "in sync after update");
    assert_eq!(inference_status(&e, &secret).await, 403, "disabled");
    assert_eq!(
        updated.secret.unwrap().expose_secret(),
        secret,
        "update keeps the value"
    );

    c.revoke(&scope(), &id).await.unwrap();
    assert!(matches!(
        c.get(&scope(), &id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.revoke(&scope(), &id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        c.update(&scope(), &id, &d, &[Field::DisplayName]).await,
        Err(ProviderError::NotFound(_))
    ));
    assert_eq!(inference_status(&e, &secret).await, 401);

    let keys = control_keys(&e).await;
    assert_eq!(keys.len(), PAGE_SIZE + 1);
    let mine = keys.iter().find(|k| k["keyId"] == id.as_str()).unwrap();
    assert_eq!(mine["revoked"], true);
    assert_eq!(mine["active"], false);
    assert_eq!(
        keys.iter().filter(|k| k["active"] == true).count(),
        PAGE_SIZE
    );
    let text = serde_json::to_string(&keys).unwrap();
    assert!(
        !text.contains(&secret),
        "control listing holds no plaintext"
    );
}

#[tokio::test]
async fn provider_block_settings_round_trip() {
    let e = start(args()).await;
    let c = client(&e);
    let mut s = settings("block");
    s.ucloud = Some(UCloudKeySpec {
        sandbox_disabled: Some(true),
        daily_limit_amount: Some("1.50".into()),
        monthly_limit_amount: Some("30".into()),
        modelverse_disabled: Some(false),
    });
    assert!(c.validate(&s).is_empty());
    let k = c.create(&s).await.unwrap().key;
    assert_eq!(k.extras.get("sandboxDisabled").unwrap(), "true");
    assert_eq!(k.extras.get("dailyLimitAmount").unwrap(), "1.5");
    assert_eq!(k.extras.get("monthlyLimitAmount").unwrap(), "30");
    assert!(drift(&c, &k, &s).is_empty());

    // Drop the daily cap and re-enable the sandbox: the block drifts and update fixes it.
    let mut d = s.clone();
    d.ucloud = Some(UCloudKeySpec {
        sandbox_disabled: Some(false),
        monthly_limit_amount: Some("30".into()),
        ..Default::default()
    });
    let fields = drift(&c, &k, &d);
    assert_eq!(fields, vec![Field::Extras]);
    let u = c.update(&scope(), &k.id, &d, &fields).await.unwrap();
    assert_eq!(u.extras.get("sandboxDisabled").unwrap(), "false");
    assert_eq!(u.extras.get("dailyLimitAmount").unwrap(), "");
    assert!(drift(&c, &u, &d).is_empty());

    // The emulator's list filters on the 0/1 switches.
    let on = raw(
        &e,
        true,
        &[("Action", "ListUMInferAPIKey"), ("SandBoxDisabled", "1")],
        PRIVATE,
    )
    .await;
    assert_eq!(retcode(&on), 0);
    // Nothing matches: `"Data": {}`, as UCloud's published example answers.
    assert_eq!(on["Data"], json!({}));
    let off = raw(
        &e,
        true,
        &[("Action", "ListUMInferAPIKey"), ("SandBoxDisabled", "0")],
        PRIVATE,
    )
    .await;
    assert_eq!(off["Data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn usage_is_reported_and_caps_bite() {
    let e = start(args()).await;
    let c = client(&e);
    let mut s = settings("spender");
    s.limit = Some(Limit {
        amount: "5".into(),
        reset: Some(LimitReset::Daily),
    });
    let created = c.create(&s).await.unwrap();
    let bump = |amount: &'static str| {
        let url = format!("{}/_emulator/usage", e.url());
        let id = created.key.id.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({ "keyId": id, "amount": amount }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(bump("1.5").await, 200);
    assert_eq!(bump("0.25").await, 200);
    let k = c.get(&scope(), &created.key.id).await.unwrap();
    let u = k.usage.unwrap();
    assert_eq!(u.daily.as_deref(), Some("1.75"));
    assert_eq!(u.monthly.as_deref(), Some("1.75"));
    assert_eq!(u.limit_remaining.as_deref(), Some("3.25"));
    assert_eq!(u.unit.as_deref(), Some("USD"));
    let secret = created.secret.expose_secret().to_string();
    assert_eq!(inference_status(&e, &secret).await, 200);
    assert_eq!(bump("4").await, 200);
    assert_eq!(
        inference_status(&e, &secret).await,
        403,
        "over the daily cap"
    );
    assert_eq!(bump("-1").await, 400);
    let unknown = reqwest::Client::new()
        .post(format!("{}/_emulator/usage", e.url()))
        .json(&json!({ "keyId": "uminferapikey-nope", "amount": "1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn wrong_credentials_are_auth_errors() {
    let e = start(args()).await;
    let bad_private = client_with(&e, PUBLIC, "wrong-private-key", None);
    let err = bad_private.verify().await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");
    assert!(err.to_string().contains("171"), "{err}");
    let err = bad_private.create(&settings("x")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)));

    let bad_public = client_with(&e, "someone-else", PRIVATE, None);
    let err = bad_public.verify().await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");
    assert!(err.to_string().contains("172"), "{err}");

    for err in [
        bad_private.verify().await.unwrap_err(),
        bad_public.verify().await.unwrap_err(),
    ] {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(PRIVATE) && !text.contains("wrong-private-key"));
        }
    }
    assert!(control_keys(&e).await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn projects_and_sub_accounts() {
    let e = start(emu::Args {
        project_ids: vec!["org-a".into(), "org-b".into()],
        require_project_id: true,
        ..args()
    })
    .await;
    let blank = client(&e);
    let err = blank.verify().await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected(m) if m.contains("ProjectId")),
        "{err:?}"
    );
    let unknown = client_with(&e, PUBLIC, PRIVATE, Some("org-zzz"));
    assert!(matches!(
        unknown.verify().await,
        Err(ProviderError::Rejected(_))
    ));

    let a = client_with(&e, PUBLIC, PRIVATE, Some("org-a"));
    let b = client_with(&e, PUBLIC, PRIVATE, Some("org-b"));
    let ka = a.create(&settings("in-a")).await.unwrap().key;
    b.create(&settings("in-b")).await.unwrap();
    let (in_a, _) = list_all(&a).await;
    assert_eq!(in_a.len(), 1);
    assert_eq!(in_a[0].name, "in-a");
    assert!(matches!(
        b.revoke(&scope(), &ka.id).await,
        Err(ProviderError::NotFound(_))
    ));

    // Without --require-project-id a blank ProjectId means the first (default) project.
    let e2 = start(emu::Args {
        project_ids: vec!["org-main".into(), "org-other".into()],
        ..args()
    })
    .await;
    client(&e2).create(&settings("default")).await.unwrap();
    let keys = control_keys(&e2).await;
    assert_eq!(keys[0]["projectId"], "org-main");
    let (seen, _) = list_all(&client_with(&e2, PUBLIC, PRIVATE, Some("org-main"))).await;
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn http_errors_map_by_status() {
    let e = start(args()).await;
    let c = client(&e);
    let cases: [(u16, ErrorCheck); 6] = [
        (401, |e| matches!(e, ProviderError::Auth(_))),
        (403, |e| matches!(e, ProviderError::Auth(_))),
        (404, |e| matches!(e, ProviderError::NotFound(_))),
        (409, |e| matches!(e, ProviderError::Rejected(_))),
        (400, |e| matches!(e, ProviderError::Rejected(_))),
        (410, |e| matches!(e, ProviderError::Unsupported(_))),
    ];
    for (status, check) in cases {
        e.faults.push([ScriptedFault {
            status: Some(status),
            retry_after: None,
            malformed: false,
            delay_ms: None,
        }]);
        let err = c.verify().await.unwrap_err();
        assert!(check(&err), "HTTP {status} gave {err:?}");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
    }
}

#[tokio::test]
async fn business_errors_map_by_retcode() {
    let e = start(args()).await;
    let c = client(&e);
    // Missing/invalid parameters → Rejected (the client's validate() normally stops these).
    let err = c.create(&settings("")).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected(m) if m.contains("230") && m.contains("Name")),
        "{err:?}"
    );
    let mut s = settings("bad-ip");
    s.allowed_ips = vec!["2001:db8::1".into()];
    assert!(!c.validate(&s).is_empty());
    let err = c.create(&s).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Rejected(m) if m.contains("IPWhitelist")),
        "{err:?}"
    );
    let err = c
        .update(
            &scope(),
            "uminferapikey-000000000000",
            &settings("x"),
            &[Field::DisplayName],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::NotFound(m) if m.contains("1404")),
        "{err:?}"
    );
    assert!(control_keys(&e).await.is_empty());
}

#[tokio::test]
async fn emulator_validates_like_ucloud() {
    let e = start(args()).await;
    // GET with a query string works as well as the SDK's POST form.
    let created = raw(
        &e,
        true,
        &[
            ("Action", "CreateUMInferAPIKey"),
            ("Name", "via-get"),
            ("GrantAllModels", "false"),
            ("GrantedModels", r#"["a/b","c/d"]"#),
            ("IPWhitelist", "10.0.0.1\n10.0.0.0/24"),
            ("DailyLimitAmount", "3.50"),
        ],
        PRIVATE,
    )
    .await;
    assert_eq!(retcode(&created), 0, "{created}");
    assert_eq!(created["Action"], "CreateUMInferAPIKeyResponse");
    let data = &created["Data"];
    assert_eq!(data["GrantedModels"], json!(["a/b", "c/d"]), "array out");
    assert_eq!(data["IPWhitelist"], "10.0.0.1\n10.0.0.0/24");
    assert_eq!(data["DailyLimitAmount"], "3.5");
    assert_eq!(data["ExpireTime"], -1);
    assert_eq!(data["Status"], 1);
    let id = data["KeyId"].as_str().unwrap().to_string();
    assert!(data["Key"].as_str().unwrap().len() >= 32);

    let cases: Vec<RawCase> = vec![
        (vec![("Name", "x")], PRIVATE, 160),
        (
            vec![("Action", "CreateUMInferAPIKey"), ("Name", "x")],
            "other-private",
            171,
        ),
        (vec![("Action", "DescribeUHostInstance")], PRIVATE, 161),
        (vec![("Action", "CreateUMInferAPIKey")], PRIVATE, 220),
        (
            vec![
                ("Action", "CreateUMInferAPIKey"),
                ("Name", "x"),
                ("GrantedModels", "a/b"),
            ],
            PRIVATE,
            230,
        ),
        (
            vec![
                ("Action", "CreateUMInferAPIKey"),
                ("Name", "x"),
                ("ModelverseDisabled", "5"),
            ],
            PRIVATE,
            230,
        ),
        (
            vec![
                ("Action", "CreateUMInferAPIKey"),
                ("Name", "x"),
                ("DailyLimitAmount", "ten"),
            ],
            PRIVATE,
            230,
        ),
        (vec![("Action", "UpdateUMInferAPIKey")], PRIVATE, 220),
        (vec![("Action", "DeleteUMInferAPIKey")], PRIVATE, 220),
        (
            vec![("Action", "ListUMInferAPIKey"), ("Offset", "-1")],
            PRIVATE,
            230,
        ),
    ];
    for (pairs, key, want) in cases {
        let v = raw(&e, false, &pairs, key).await;
        assert_eq!(retcode(&v), want, "{pairs:?} → {v}");
        assert!(v["Message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let many: String = (0..101)
        .map(|i| format!("10.0.{}.1", i))
        .collect::<Vec<_>>()
        .join("\n");
    let v = raw(
        &e,
        false,
        &[
            ("Action", "CreateUMInferAPIKey"),
            ("Name", "x"),
            ("IPWhitelist", &many),
        ],
        PRIVATE,
    )
    .await;
    assert_eq!(retcode(&v), 240);

    // Unsigned / unknown public key.
    let v: Value = reqwest::Client::new()
        .post(format!("{}/?Action=ListUMInferAPIKey", e.url()))
        .form(&[("Action", "ListUMInferAPIKey"), ("PublicKey", PUBLIC)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retcode(&v), 170);
    let mut p = Params::new();
    p.insert("Action".into(), "ListUMInferAPIKey".into());
    p.insert("PublicKey".into(), "nobody".into());
    p.insert("Signature".into(), signature(&p, PRIVATE));
    let v: Value = reqwest::Client::new()
        .get(format!("{}/", e.url()))
        .query(&p)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retcode(&v), 172);
    assert_eq!(v["Message"], "User Not Exists");

    // Partial update: omitted parameters stay; delete twice.
    let v = raw(
        &e,
        false,
        &[
            ("Action", "UpdateUMInferAPIKey"),
            ("KeyId", &id),
            ("Name", "renamed"),
        ],
        PRIVATE,
    )
    .await;
    assert_eq!(retcode(&v), 0);
    assert_eq!(v["UminferID"], id.as_str());
    let listed = raw(&e, true, &[("Action", "ListUMInferAPIKey")], PRIVATE).await;
    let k = &listed["Data"][0];
    assert_eq!(k["Name"], "renamed");
    assert_eq!(k["GrantedModels"], json!(["a/b", "c/d"]));
    assert_eq!(k["DailyLimitAmount"], "3.5");
    let del = [("Action", "DeleteUMInferAPIKey"), ("KeyId", id.as_str())];
    assert_eq!(retcode(&raw(&e, false, &del, PRIVATE).await), 0);
    assert_eq!(retcode(&raw(&e, false, &del, PRIVATE).await), 1404);

    // List: Limit defaults to 20 and is capped at 100.
    for i in 0..105 {
        let n = format!("k{i}");
        let v = raw(
            &e,
            false,
            &[("Action", "CreateUMInferAPIKey"), ("Name", &n)],
            PRIVATE,
        )
        .await;
        assert_eq!(retcode(&v), 0);
    }
    let page = |pairs: Vec<(&'static str, &'static str)>| {
        let e = &e;
        async move {
            let mut all = vec![("Action", "ListUMInferAPIKey")];
            all.extend(pairs);
            raw(e, true, &all, PRIVATE).await["Data"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(page(vec![]).await, 20);
    assert_eq!(page(vec![("Limit", "500")]).await, 100);
    assert_eq!(page(vec![("Offset", "100"), ("Limit", "100")]).await, 5);
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let e = start(args()).await;
    let c = client(&e);
    let fault = |retry_after| ScriptedFault {
        status: Some(429),
        retry_after: Some(retry_after),
        malformed: false,
        delay_ms: None,
    };
    // A short Retry-After is waited out and the call succeeds.
    e.faults.push([fault(1)]);
    let started = Instant::now();
    let (keys, _) = list_all(&c).await;
    assert!(keys.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A Retry-After above max_retry_after comes back as RateLimited with the delay.
    e.faults.push([fault(30)]);
    let err = c.verify().await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    // A 429 on create is retried too (the provider did not act on it).
    e.faults.push([fault(0)]);
    c.create(&settings("after-429")).await.unwrap();
    assert_eq!(control_keys(&e).await.len(), 1);

    // Business-level throttling: HTTP 200 with RetCode 1429.
    let throttle = reqwest::Client::new()
        .post(format!("{}/_emulator/throttle", e.url()))
        .json(&json!({ "count": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(throttle.status(), 204);
    let err = c.verify().await.unwrap_err();
    assert!(matches!(err, ProviderError::RateLimited { .. }), "{err:?}");
    c.verify().await.unwrap();
    reqwest::Client::new()
        .post(format!("{}/_emulator/throttle", e.url()))
        .send()
        .await
        .unwrap();
    assert!(c.verify().await.is_err());
    reqwest::Client::new()
        .delete(format!("{}/_emulator/throttle", e.url()))
        .send()
        .await
        .unwrap();
    c.verify().await.unwrap();
}

#[tokio::test]
async fn server_errors_retry_safe_calls_only() {
    let e = start(args()).await;
    let c = client(&e);
    let fault = || ScriptedFault {
        status: Some(500),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    };
    e.faults.push([fault()]);
    let before = e.faults.requests();
    c.verify().await.unwrap();
    assert_eq!(e.faults.requests() - before, 2, "list retried once");

    e.faults.push([fault(), fault(), fault()]);
    let err = c.verify().await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Unavailable(m) if m.contains("500")),
        "{err:?}"
    );

    e.faults.push([fault()]);
    let before = e.faults.requests();
    let err = c.create(&settings("not-retried")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert_eq!(e.faults.requests() - before, 1, "create is not retried");
    assert!(control_keys(&e).await.is_empty());
    assert_eq!(e.faults.by_route().get("POST /").copied(), Some(6));
}

#[tokio::test]
async fn timeouts_and_malformed_bodies() {
    let e = start(args()).await;
    let c = client(&e);
    let slow = ScriptedFault {
        status: None,
        retry_after: None,
        malformed: false,
        delay_ms: Some(1500),
    };
    // A safe call times out once, then succeeds on the retry.
    e.faults.push([slow.clone()]);
    c.verify().await.unwrap();
    // A create that times out is not retried.
    e.faults.push([slow]);
    let before = e.faults.requests();
    let err = c.create(&settings("slow")).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Unavailable(m) if m.contains("timed out")),
        "{err:?}"
    );
    assert_eq!(e.faults.requests() - before, 1);

    e.faults.push([ScriptedFault {
        status: None,
        retry_after: None,
        malformed: true,
        delay_ms: None,
    }]);
    let err = c.list_page(&scope(), None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn control_endpoints_are_not_faulted() {
    let e = start(args()).await;
    let c = client(&e);
    e.faults.push([ScriptedFault {
        status: Some(401),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    }]);
    let before = e.faults.requests();
    assert!(control_keys(&e).await.is_empty());
    assert_eq!(e.faults.requests(), before, "control calls are not counted");
    // The queued fault is still there for the next API call.
    assert!(matches!(c.verify().await, Err(ProviderError::Auth(_))));
    c.verify().await.unwrap();
}

#[tokio::test]
async fn no_secret_in_errors() {
    let e = start(args()).await;
    let c = client(&e);
    let created = c.create(&settings("secret-holder")).await.unwrap();
    let secret = created.secret.expose_secret().to_string();
    let mut errors = vec![
        client_with(&e, PUBLIC, "wrong-private-key-xyz", None)
            .verify()
            .await
            .unwrap_err(),
        c.update(
            &scope(),
            "uminferapikey-000000000000",
            &settings("x"),
            &[Field::DisplayName],
        )
        .await
        .unwrap_err(),
        c.create(&settings("")).await.unwrap_err(),
    ];
    e.faults.push([ScriptedFault {
        status: Some(403),
        retry_after: None,
        malformed: false,
        delay_ms: None,
    }]);
    errors.push(c.get(&scope(), &created.key.id).await.unwrap_err());
    for err in errors {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(PRIVATE), "{text}");
            assert!(!text.contains("wrong-private-key-xyz"), "{text}");
            assert!(!text.contains(&secret), "{text}");
        }
    }
    let dbg = format!("{:?} {:?} {c:?}", created, created.key);
    assert!(!dbg.contains(&secret) && !dbg.contains(PRIVATE), "{dbg}");
}

/// The manifests in examples/ucloud work as written against the emulator started with the
/// flags in provider.yaml's header comment.
#[tokio::test]
async fn examples_work_against_the_emulator() {
    use k8s_openapi::api::core::v1::Secret;
    use keysmith::api::{ApiKey, KeyProvider};

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ucloud");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
    let provider_yaml = read("provider.yaml");
    let command = provider_yaml
        .lines()
        .find(|l| l.contains("keysmith emulate ucloud"))
        .expect("provider.yaml names the emulator command");
    let words: Vec<&str> = command.split_whitespace().collect();
    let flag = |name: &str| -> Vec<String> {
        words
            .windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1].to_string())
            .collect()
    };
    let e = start(emu::Args {
        public_key: flag("--public-key")[0].clone(),
        private_key: flag("--private-key")[0].clone(),
        project_ids: flag("--project-id"),
        ..Default::default()
    })
    .await;

    let mut kp: KeyProvider = serde_yaml::from_str(&provider_yaml).unwrap();
    let spec = kp.spec.ucloud.as_mut().expect("a ucloud block");
    assert_eq!(spec.base_url.as_deref(), Some("http://127.0.0.1:8787"));
    spec.base_url = Some(e.url());
    let secret: Secret = serde_yaml::from_str(&read("secret.yaml")).unwrap();
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some(spec.private_key_secret_ref.name.as_str())
    );
    let value = secret.string_data.unwrap()[&spec.private_key_secret_ref.key].clone();
    let mut creds = Credentials::default();
    creds
        .0
        .insert("privateKey".into(), SecretString::from(value));
    let backend = keysmith::providers::build_backend(&kp.spec, creds, opts(&e)).unwrap();
    backend.verify().await.unwrap();

    let ak: ApiKey = serde_yaml::from_str(&read("apikey.yaml")).unwrap();
    assert_eq!(ak.spec.provider_ref.name, "ucloud");
    let s = KeySettings::from_spec(&ak.spec, ak.display_name(), chrono::Utc::now()).unwrap();
    assert!(
        backend.validate(&s).is_empty(),
        "{:?}",
        backend.validate(&s)
    );
    let caps = backend.capabilities();
    for f in [
        Field::DisplayName,
        Field::LimitAmount,
        Field::LimitReset,
        Field::AllowedIps,
        Field::Models,
        Field::Extras,
    ] {
        assert!(caps.supports(f), "{f:?}");
    }
    let created = backend.create(&s).await.unwrap();
    assert!(drift(backend.as_ref(), &created.key, &s).is_empty());
    let models: Value = reqwest::Client::new()
        .get(format!("{}/v1/models", e.url()))
        .bearer_auth(created.secret.expose_secret())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
    let keys = control_keys(&e).await;
    assert_eq!(keys[0]["projectId"], "org-example");
    assert_eq!(keys[0]["settings"]["monthlyLimitAmount"], "200");
}

#[tokio::test]
async fn an_empty_listing_is_data_object_and_reads_as_no_keys() {
    let e = start(args()).await;
    // The published example: `"Data": {}` when there is nothing to list.
    let v = raw(&e, false, &[("Action", "ListUMInferAPIKey")], PRIVATE).await;
    assert_eq!(retcode(&v), 0);
    assert_eq!(v["Data"], json!({}));
    let c = client(&e);
    let page = c
        .list_page(&scope(), None)
        .await
        .expect("an empty listing parses");
    assert!(page.keys.is_empty() && page.next.is_none());
    c.verify().await.expect("verify lists too");
}

#[tokio::test]
async fn a_disabled_key_is_still_a_live_key() {
    let e = start(args()).await;
    let c = client(&e);
    let mut s = settings("team-a/disabled");
    s.disabled = true;
    let k = c.create(&s).await.unwrap();
    // The emulator reports a disabled key with Status 0 ("1 = normal" is all UCloud says).
    let listed = c.get(&scope(), &k.key.id).await.unwrap();
    assert_eq!(listed.extras.get("status").map(String::as_str), Some("0"));
    assert!(listed.active, "a disabled key must not read as gone");
    assert_eq!(listed.observed.disabled, Some(true));
    assert!(
        drift(&c, &listed, &s).is_empty(),
        "{:?}",
        drift(&c, &listed, &s)
    );
}

#[tokio::test]
async fn a_delete_with_an_unknown_retcode_is_confirmed_against_the_listing() {
    // The second delete of a key answers a RetCode keysmith has never seen: the listing shows
    // the key gone, so the revoke succeeds instead of blocking deletion.
    let e = start(emu::Args {
        missing_key_retcode: 1046,
        ..args()
    })
    .await;
    let c = client(&e);
    let k = c.create(&settings("team-a/gone")).await.unwrap();
    c.revoke(&scope(), &k.key.id).await.unwrap();
    // Confirmed gone: the answer a revoke of a missing key gives (the controller's "done").
    let again = c.revoke(&scope(), &k.key.id).await;
    assert!(
        matches!(again, Err(ProviderError::NotFound(_))),
        "{again:?}"
    );
    assert!(c.list_page(&scope(), None).await.unwrap().keys.is_empty());
}

#[tokio::test]
async fn a_delete_with_an_unknown_retcode_for_a_listed_key_is_unconfirmed() {
    use axum::routing::post;
    // A gateway that answers every delete with an unknown code but keeps listing the key.
    let app = axum::Router::new().route(
        "/",
        post(|body: String| async move {
            if body.contains("DeleteUMInferAPIKey") {
                axum::Json(json!({"RetCode": 8046, "Action": "DeleteUMInferAPIKeyResponse",
                                  "Message": "something new"}))
            } else {
                axum::Json(json!({"RetCode": 0, "Action": "ListUMInferAPIKeyResponse",
                                  "Data": [{"KeyId": "uminferapikey-still", "Name": "x", "Status": 1}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let spec = UCloudProvider {
        base_url: Some(url.clone()),
        public_key: PUBLIC.into(),
        ..Default::default()
    };
    let mut creds = Credentials::default();
    creds
        .0
        .insert("privateKey".into(), SecretString::from(PRIVATE.to_string()));
    let c = UCloudClient::new(
        &spec,
        creds,
        ClientOptions {
            base_url: Some(url),
            ..Default::default()
        },
    )
    .unwrap();
    let e = c.revoke(&scope(), "uminferapikey-still").await.unwrap_err();
    assert!(matches!(e, ProviderError::Unconfirmed(_)), "{e}");
    assert!(e.is_transient());
    assert!(e.to_string().contains("8046"), "{e}");
}

/// Issue 20, item 5: UCloud documents no throttling RetCode. A read throttled with a code the
/// client has never seen and a message none of its heuristics knows is retried with backoff
/// (transient), not reported as a rejection of the request.
#[tokio::test]
async fn a_read_throttled_with_an_unknown_retcode_is_transient() {
    let e = start(emu::Args {
        throttle_retcode: 1777,
        throttle_message: "busy, come back later".into(),
        ..args()
    })
    .await;
    let c = client(&e);
    let k = c.create(&settings("team-a/read")).await.unwrap();
    reqwest::Client::new()
        .post(format!("{}/_emulator/throttle", e.url()))
        .json(&json!({ "count": 2 }))
        .send()
        .await
        .unwrap();
    let read = c.get(&scope(), &k.key.id).await;
    assert!(
        matches!(read, Err(ProviderError::Unavailable(_))),
        "an unknown code on a read is transient: {read:?}"
    );
    let listed = c.list_page(&scope(), None).await.map(|p| p.keys.len());
    assert!(
        matches!(listed, Err(ProviderError::Unavailable(_))),
        "{listed:?}"
    );
    // Throttling over, the read works; a write with an unknown code stays what it says.
    assert_eq!(c.get(&scope(), &k.key.id).await.unwrap().id, k.key.id);
}

/// Removing a cap or the whitelist is sending it empty (UCloud documents no way; the reference
/// leaves open whether an empty value clears). Against a UCloud that clears, one update does
/// it; against one that keeps the value (`--empty-keeps`), the update is sent once, the kept
/// settings are reported (`Unsupported`, naming them), and later reconciles do not send the same
/// update again (issue 20 item 3: a fallback that cannot loop).
#[tokio::test]
async fn removing_a_cap_and_the_whitelist_is_tried_once() {
    for keeps in [false, true] {
        let e = start(emu::Args {
            empty_keeps: keeps,
            ..args()
        })
        .await;
        let updates = || {
            e.faults
                .by_route()
                .get("POST /?Action=UpdateUMInferAPIKey")
                .copied()
                .unwrap_or(0)
        };
        let c = client(&e);
        let mut capped = settings("caps");
        capped.limit = Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Daily),
        });
        capped.allowed_ips = vec!["10.0.0.1".into()];
        let id = c.create(&capped).await.expect("created").key.id;
        let plain = settings("caps");
        let fields = drift(&c, &c.get(&scope(), &id).await.unwrap(), &plain);
        assert!(
            fields.contains(&Field::AllowedIps) && fields.contains(&Field::Extras),
            "{fields:?}"
        );
        let first = c.update(&scope(), &id, &plain, &fields).await;
        assert_eq!(updates(), 1);
        if !keeps {
            let k = first.expect("an empty value removes them");
            assert_eq!(drift(&c, &k, &plain), Vec::<Field>::new());
            continue;
        }
        let msg = match first {
            Err(ProviderError::Unsupported(m)) => m,
            other => panic!("kept settings are reported: {other:?}"),
        };
        assert!(
            msg.contains("DailyLimitAmount") && msg.contains("IPWhitelist"),
            "{msg}"
        );
        for _ in 0..3 {
            let again = c.update(&scope(), &id, &plain, &fields).await;
            assert!(
                matches!(again, Err(ProviderError::Unsupported(_))),
                "{again:?}"
            );
        }
        assert_eq!(updates(), 1, "the same update is not sent again");
        // Another change is still made, without sending the kept settings empty again.
        let renamed = settings("caps-renamed");
        let again = c
            .update(
                &scope(),
                &id,
                &renamed,
                &[Field::DisplayName, Field::AllowedIps, Field::Extras],
            )
            .await;
        assert!(
            matches!(again, Err(ProviderError::Unsupported(_))),
            "{again:?}"
        );
        assert_eq!(updates(), 2);
        assert_eq!(c.get(&scope(), &id).await.unwrap().name, "caps-renamed");
        // A value in the spec again: sent, and nothing is left to report.
        let k = c
            .update(&scope(), &id, &capped, &[Field::AllowedIps, Field::Extras])
            .await
            .expect("a set value is sent");
        assert_eq!(updates(), 3);
        assert_eq!(k.observed.allowed_ips, Some(vec!["10.0.0.1".to_string()]));
    }
}
