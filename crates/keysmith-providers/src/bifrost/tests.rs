use super::*;
use keysmith_api::BifrostProviderConfig;

fn vk_settings() -> KeySettings {
    KeySettings {
        name: "team-a/chat".into(),
        uid: "0b6a3c1e-1111-2222-3333-444455556666".into(),
        ..Default::default()
    }
}

/// A gateway on loopback answering each request by its first line (`"POST /api/…"` prefix)
/// with a status and a JSON body; 404 for anything else.
async fn fake_gateway(routes: Vec<(&'static str, u16, String)>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = std::sync::Arc::new(routes);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // The head, then as much body as Content-Length says.
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let (status, body) = routes
                    .iter()
                    .find(|(prefix, _, _)| head.starts_with(prefix))
                    .map(|(_, s, b)| (*s, b.clone()))
                    .unwrap_or((404, r#"{"error":{"message":"not found"}}"#.into()));
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
}

fn push_settings() -> KeySettings {
    KeySettings {
        name: "team-a/upstream".into(),
        uid: "0b6a3c1e-1111-2222-3333-444455556666".into(),
        pushed: true,
        bifrost: Some(keysmith_api::BifrostKeySpec {
            provider: Some("openai".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn client_at(url: &str) -> BifrostClient {
    let spec = BifrostProvider {
        base_url: url.into(),
        ..Default::default()
    };
    let opts = ClientOptions {
        max_attempts: 1,
        timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    BifrostClient::new(&spec, Credentials::default(), opts).unwrap()
}

/// issue 17 item 11: a gateway that echoes the pushed value in its error, placed where the
/// 200-character cut splits it. Before, the message was cut first and scrubbed after: the
/// value's first characters were left in the error (and so in the condition and Event).
#[tokio::test]
async fn a_pushed_value_echoed_in_an_error_is_scrubbed_before_the_cut() {
    let value = "sk-proj-UPSTREAM-0123456789abcdefghijklmnopqrstuvwxyz";
    let message = format!("{} {value} is not a valid key", "x".repeat(190));
    let body = json!({ "error": { "message": message } }).to_string();
    let url = fake_gateway(vec![("POST /api/providers/openai/keys", 400, body)]).await;
    let c = client_at(&url);
    let err = c
        .push(&push_settings(), &SecretString::from(value), None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ProviderError::Rejected(_)), "{text}");
    for k in 4..value.len() {
        assert!(
            !text.contains(&value[..k]),
            "{k} characters of the value in: {text}"
        );
    }
}

/// issue 17 item 11: a name another key holds. Before, the error named that key's id and
/// provider (another tenant's, possibly); now it only says the name is taken.
#[tokio::test]
async fn a_taken_name_does_not_reveal_the_other_key() {
    let rows = json!([{ "key_id": "victim-key-7f3a", "name": "team-a/upstream", "provider": "anthropic" }]).to_string();
    let url = fake_gateway(vec![
        (
            "POST /api/providers/openai/keys",
            409,
            r#"{"error":{"message":"name exists"}}"#.into(),
        ),
        ("GET /api/keys ", 200, rows),
    ])
    .await;
    let c = client_at(&url);
    let err = c
        .push(
            &push_settings(),
            &SecretString::from("sk-proj-abcdefgh"),
            None,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("is taken by another key"), "{text}");
    assert!(
        !text.contains("victim-key-7f3a") && !text.contains("anthropic"),
        "{text}"
    );
}

/// issue 17 item 12: an id from spec.keyRef or status that would walk the path (`..`,
/// `.`, `/`, their encodings) is refused before any request. Before, `..` was kept as a
/// segment and `DELETE /api/governance/virtual-keys/..` went out as
/// `DELETE /api/governance/` (here: a connection refused, so `Unavailable`).
#[tokio::test]
async fn ids_that_would_walk_the_path_are_refused_before_a_call() {
    let spec = BifrostProvider {
        base_url: "http://127.0.0.1:9".into(),
        ..Default::default()
    };
    let opts = ClientOptions {
        max_attempts: 1,
        timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let c = BifrostClient::new(&spec, Credentials::default(), opts).unwrap();
    let vk = KeyScope::default();
    let pk = KeyScope {
        family: FAMILY_PROVIDER.into(),
        parent: "openai".into(),
    };
    for id in ["..", ".", "%2e%2e", "a/../b", "../../config", ""] {
        for scope in [&vk, &pk] {
            let e = c.revoke(scope, id).await.unwrap_err();
            assert!(matches!(e, ProviderError::Rejected(_)), "{id}: {e}");
            let e = c.get(scope, id).await.unwrap_err();
            assert!(matches!(e, ProviderError::Rejected(_)), "{id}: {e}");
        }
    }
    let bad_parent = KeyScope {
        family: FAMILY_PROVIDER.into(),
        parent: "..".into(),
    };
    let e = c.revoke(&bad_parent, "k1").await.unwrap_err();
    assert!(matches!(e, ProviderError::Rejected(_)), "{e}");
}

#[test]
fn descriptions_round_trip() {
    let d = compose_description(Some("chat backend"), Some("a1b2"));
    assert_eq!(d, "chat backend | managed by keysmith (attempt a1b2)");
    assert_eq!(
        parse_description(&d),
        ("chat backend".to_string(), Some("a1b2".to_string()))
    );
    let d = compose_description(None, Some("x9"));
    assert_eq!(d, "managed by keysmith (attempt x9)");
    assert_eq!(parse_description(&d), (String::new(), Some("x9".into())));
    assert_eq!(
        parse_description(&compose_description(Some("ops"), None)),
        ("ops".into(), None)
    );
    // Text keysmith did not write is the user's.
    assert_eq!(
        parse_description("made by hand"),
        ("made by hand".into(), None)
    );
    assert_eq!(
        parse_description("managed by keysmith (attempt x) and more"),
        ("managed by keysmith (attempt x) and more".into(), None)
    );
}

#[test]
fn windows_map_both_ways() {
    for r in [
        LimitReset::Daily,
        LimitReset::Weekly,
        LimitReset::Monthly,
        LimitReset::Never,
    ] {
        assert_eq!(window_reset(reset_window(Some(r))), Some(r));
    }
    assert_eq!(reset_window(None), "1Y");
    assert_eq!(window_reset("1h"), None);
    assert!(valid_window("30s") && valid_window("1M") && valid_window("12h"));
    assert!(!valid_window("1") && !valid_window("h") && !valid_window("0d"));
    assert!(!valid_window("1x") && !valid_window("-1d") && !valid_window(""));
}

#[test]
fn provider_key_ids_are_stable_uuids() {
    let a = provider_key_id("uid-1", "openai");
    assert_eq!(a, provider_key_id("uid-1", "openai"));
    assert_ne!(a, provider_key_id("uid-2", "openai"));
    assert_ne!(a, provider_key_id("uid-1", "anthropic"));
    let u = uuid::Uuid::parse_str(&a).unwrap();
    assert_eq!(u.get_version_num(), 5);
}

#[test]
fn models_group_into_provider_configs() {
    let mut s = vk_settings();
    assert_eq!(desired_provider_configs(&s), None);
    s.models = vec![
        "openai/gpt-4o".into(),
        "anthropic/*".into(),
        "openai/gpt-4o-mini".into(),
        "openrouter/meta/llama".into(),
    ];
    let pc = desired_provider_configs(&s).unwrap();
    let names: Vec<_> = pc.iter().map(|c| c.provider.as_str()).collect();
    assert_eq!(names, ["anthropic", "openai", "openrouter"]);
    assert_eq!(
        pc[0].allowed_models.as_deref(),
        Some(&["*".to_string()][..])
    );
    assert_eq!(
        pc[1].allowed_models.as_deref(),
        Some(&["gpt-4o".to_string(), "gpt-4o-mini".to_string()][..])
    );
    assert_eq!(
        pc[2].allowed_models.as_deref(),
        Some(&["meta/llama".to_string()][..])
    );
    // Explicit configs win, with "all" defaults.
    s.models.clear();
    s.bifrost = Some(BifrostKeySpec {
        provider_configs: vec![BifrostProviderConfig {
            provider: "openai".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let pc = desired_provider_configs(&s).unwrap();
    assert_eq!(pc[0].weight, Some(1.0));
    assert_eq!(pc[0].key_ids.as_deref(), Some(&["*".to_string()][..]));
}

#[test]
fn validation_names_the_field() {
    let v = validate_settings(&vk_settings());
    assert!(v.is_empty(), "{v:?}");

    // A provider key needs a source and an upstream provider.
    let mut s = vk_settings();
    s.bifrost = Some(BifrostKeySpec {
        provider: Some("openai".into()),
        ..Default::default()
    });
    let v = validate_settings(&s);
    assert!(
        v.iter().any(|m| m.contains("spec.source.secretRef")),
        "{v:?}"
    );
    let mut s = vk_settings();
    s.pushed = true;
    let v = validate_settings(&s);
    assert!(
        v.iter()
            .any(|m| m.contains("spec.bifrost.provider is required")),
        "{v:?}"
    );
    s.bifrost = Some(BifrostKeySpec {
        provider: Some("openai".into()),
        ..Default::default()
    });
    s.limit = Some(Limit {
        amount: "5".into(),
        reset: None,
    });
    let v = validate_settings(&s);
    assert!(v.iter().any(|m| m.starts_with("spec.limit")), "{v:?}");

    // Virtual keys: provider/model, no provider-key fields, sane rate limits.
    let mut s = vk_settings();
    s.models = vec!["gpt-4o".into()];
    s.bifrost = Some(BifrostKeySpec {
        weight: Some(2.0),
        rate_limit: Some(BifrostRateLimit {
            token_max_limit: Some(100),
            token_reset_duration: Some("1 hour".into()),
            request_max_limit: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    });
    let v = validate_settings(&s).join("\n");
    assert!(v.contains("\"gpt-4o\""), "{v}");
    assert!(v.contains("spec.bifrost.weight"), "{v}");
    assert!(v.contains("tokenResetDuration \"1 hour\""), "{v}");
    assert!(
        v.contains("requestMaxLimit needs requestResetDuration"),
        "{v}"
    );
}

#[test]
fn scrub_removes_a_value() {
    let v = SecretString::from("sk-upstream-secret-123");
    let e = scrub(
        ProviderError::Rejected("bad value sk-upstream-secret-123 here".into()),
        &v,
    );
    assert_eq!(
        e.to_string(),
        "the provider rejected the request: bad value [REDACTED] here"
    );
}

#[test]
fn virtual_keys_map_to_provider_keys() {
    let raw = json!({
        "id": "vk-1", "name": "a", "value": "sk-bf-0123456789abcdef0123",
        "description": "ops | managed by keysmith (attempt 42)", "is_active": false,
        "provider_configs": [{"id": 3, "provider": "openai", "weight": 1.0,
            "allowed_models": ["gpt-4o"], "key_ids": ["*"]}],
        "budgets": [{"max_limit": 10.0, "reset_duration": "1M", "current_usage": 2.5}],
        "rate_limit": {"request_max_limit": 10, "request_reset_duration": "1m", "request_current_usage": 3},
        "created_at": "2026-01-02T03:04:05.123456789Z"
    });
    let k = serde_json::from_value::<VirtualKey>(raw)
        .unwrap()
        .into_key();
    assert_eq!(k.attempt.as_deref(), Some("42"));
    assert_eq!(k.hint.as_deref(), Some("sk-bf-0123…0123"));
    assert_eq!(k.observed.disabled, Some(true));
    assert_eq!(
        k.observed.limit,
        Some(Some(Limit {
            amount: "10".into(),
            reset: Some(LimitReset::Monthly)
        }))
    );
    let u = k.usage.clone().unwrap();
    assert_eq!(u.monthly.as_deref(), Some("2.5"));
    assert_eq!(u.limit_remaining.as_deref(), Some("7.5"));
    assert!(k.created_at.is_some());
    assert!(k.secret.is_some());

    let mut d = vk_settings();
    d.models = vec!["openai/gpt-4o".into()];
    d.bifrost = Some(BifrostKeySpec {
        description: Some("ops".into()),
        rate_limit: Some(BifrostRateLimit {
            request_max_limit: Some(10),
            request_reset_duration: Some("1m".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(!extras_differ(&k, &d));
    d.models.push("openai/o3".into());
    assert!(extras_differ(&k, &d));
}

#[test]
fn redacted_values_are_never_secrets() {
    let raw = json!({"id": "vk", "name": "a", "value": "sk-b************************1234"});
    let k = serde_json::from_value::<VirtualKey>(raw)
        .unwrap()
        .into_key();
    assert!(k.secret.is_none());
    let raw = json!({"id": "k", "name": "n",
        "value": {"value": "sk-p************************wxyz", "env_var": "", "from_env": false},
        "models": ["*"], "enabled": true});
    let k = serde_json::from_value::<ProviderKeyJson>(raw)
        .unwrap()
        .into_key("openai");
    assert_eq!(k.hint.as_deref(), Some("sk-p…wxyz"));
    assert_eq!(k.observed.models, Some(vec![]));
}

#[test]
fn a_redacted_virtual_key_value_tells_a_rotation_by_its_ends() {
    let key = |value: &str, rotated_at: Option<&str>| {
        let mut raw = json!({"id": "vk1", "name": "a", "value": value});
        if let Some(r) = rotated_at {
            raw["rotated_at"] = json!(r);
        }
        serde_json::from_value::<VirtualKey>(raw)
            .unwrap()
            .into_key()
    };
    let held = SecretString::from("sk-bf-0123456789abcdefghij1234");
    let since = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc));
    // Redacted ends that fit the Secret's value: the same value, whatever rotated_at says.
    let same = key(
        "sk-b************************1234",
        Some("2026-06-01T00:00:00Z"),
    );
    assert_eq!(rotated_outside(&same, &held, since), None);
    let other = key("sk-b************************9999", None);
    let why = rotated_outside(&other, &held, since).expect("other ends");
    assert!(!why.contains("0123456789"), "{why}");
    // All stars: nothing to tell by.
    assert_eq!(rotated_outside(&key("********", None), &held, since), None);
    // A value in clear that is not the held one.
    let clear = key("sk-bf-zzzzzzzzzzzzzzzzzzzzzzzz1234", None);
    assert!(rotated_outside(&clear, &held, since).is_some());
    // No value at all: rotated_at after `since` (beyond the slack) tells; before does not.
    let hidden = |r: &str| {
        serde_json::from_value::<VirtualKey>(json!({"id": "vk1", "name": "a", "rotated_at": r}))
            .unwrap()
            .into_key()
    };
    assert!(rotated_outside(&hidden("2026-01-01T00:00:10Z"), &held, since).is_some());
    assert_eq!(
        rotated_outside(&hidden("2026-01-01T00:00:01Z"), &held, since),
        None
    );
    assert_eq!(
        rotated_outside(&hidden("2026-01-01T00:00:10Z"), &held, None),
        None,
        "no record of when keysmith got the value: nothing to compare"
    );
}

#[test]
fn a_provider_key_problem_masks_credential_like_words() {
    let raw = json!({"id": "k", "name": "n", "status": "list_models_failed",
        "description": "upstream said: Incorrect API key provided: sk-proj-abcdef0123456789XYZ. (401)"});
    let k = serde_json::from_value::<ProviderKeyJson>(raw)
        .unwrap()
        .into_key("openai");
    let m = key_problem(&k).expect("a problem");
    assert!(
        m.contains("list_models_failed") && m.contains("(401)"),
        "{m}"
    );
    assert!(!m.contains("abcdef0123456789"), "{m}");
    let ok = json!({"id": "k", "name": "n", "status": "success", "description": "fine"});
    let k = serde_json::from_value::<ProviderKeyJson>(ok)
        .unwrap()
        .into_key("openai");
    assert_eq!(key_problem(&k), None);
    assert_eq!(mask_tokens("gpt-4o-mini-2024-07-18"), "[REDACTED]");
    assert_eq!(mask_tokens("model gpt-4o failed"), "model gpt-4o failed");
}

/// Review (W16): a redacted virtual-key value becomes the status's keyHint, so it is bounded and
/// shows no more than a hint does (10 leading, 4 trailing characters), whatever the gateway
/// answers; its ends still tell a rotation. Before: the redacted string as answered (up to the
/// 4 MiB body limit) went into status.keyHint.
#[test]
fn a_redacted_virtual_key_value_gives_a_bounded_hint() {
    let key = |value: String| {
        serde_json::from_value::<VirtualKey>(json!({"id": "vk1", "name": "a", "value": value}))
            .unwrap()
            .into_key()
    };
    let huge = key(format!("sk-bf-{}1234", "*".repeat(1 << 20)));
    let hint = huge.hint.clone().expect("a hint");
    assert!(hint.chars().count() <= 32, "{} chars", hint.chars().count());
    let held = SecretString::from("sk-bf-0123456789abcdefghij1234");
    assert_eq!(rotated_outside(&huge, &held, None), None);
    // A gateway that "redacts" only a little: the hint keeps 10 + 4 characters of it.
    let little = key("sk-bf-0123456789abcdefgh****ij1234".to_string());
    let hint = little.hint.clone().expect("a hint");
    assert!(
        !hint.contains("6789abcd") && !hint.contains("ij1234"),
        "{hint}"
    );
    assert_eq!(rotated_outside(&little, &held, None), None);
    let other = key("sk-bf-9999999999abcdefgh****ij0000".to_string());
    assert!(rotated_outside(&other, &held, None).is_some());
}

/// Review (W16): the gateway's text is masked before it is cut, so a credential the cut splits
/// is not left in clear. Before: cut to 200 characters first, the remaining 15 characters of
/// the credential were too short to look like one and stayed in the Degraded condition.
#[test]
fn a_provider_key_problem_masks_a_credential_the_cut_splits() {
    let text = format!("{}sk-proj-abcdef0123456789XYZ", "word ".repeat(37));
    let raw = json!({"id": "k", "name": "n", "status": "list_models_failed", "description": text});
    let k = serde_json::from_value::<ProviderKeyJson>(raw)
        .unwrap()
        .into_key("openai");
    let m = key_problem(&k).expect("a problem");
    assert!(!m.contains("abcdef"), "{m}");
    assert!(m.contains("list_models_failed"), "{m}");
}
