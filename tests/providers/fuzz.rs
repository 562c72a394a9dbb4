//! Hostile provider answers, fuzzed: every client of the five providers is pointed at a server
//! whose status, headers and body come from `proptest`, and every operation is called. No input
//! may panic; error text stays short and never quotes a body that is not the provider's JSON.
//! Bounded: a fixed number of cases, no retries and no waits, so it runs in seconds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use keysmith::api::{
    BifrostProvider, BoltzProvider, DigitalOceanKeySpec, DigitalOceanProvider, KeyProviderSpec,
    OpenRouterProvider, SecretKeySelector, UCloudProvider,
};
use keysmith::providers::{build_backend, ClientOptions, Credentials, KeyBackend, KeySettings};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::Value;

/// Field names the five providers' answers use, so that generated objects reach the decoders.
const VOCAB: &[&str] = &[
    "data",
    "Data",
    "RetCode",
    "Message",
    "Action",
    "TotalCount",
    "KeyId",
    "Key",
    "Name",
    "Status",
    "ExpireTime",
    "CreateTime",
    "ModelverseDisabled",
    "SandBoxDisabled",
    "DailyLimitAmount",
    "MonthlyLimitAmount",
    "DailyUsedAmount",
    "MonthlyUsedAmount",
    "GrantAllModels",
    "GrantedModels",
    "IPWhitelist",
    "ChannelId",
    "UminferID",
    "hash",
    "name",
    "label",
    "key",
    "disabled",
    "limit",
    "limit_remaining",
    "limit_reset",
    "usage",
    "usage_daily",
    "usage_weekly",
    "usage_monthly",
    "created_at",
    "updated_at",
    "expires_at",
    "id",
    "uuid",
    "secret_key",
    "api_key_info",
    "api_key_infos",
    "links",
    "pages",
    "next",
    "last",
    "meta",
    "total",
    "page",
    "has_more",
    "first_id",
    "last_id",
    "key_prefix",
    "key_type",
    "is_active",
    "livemode",
    "allowed_ips",
    "workspace_id",
    "last_used_at",
    "key_details",
    "error",
    "message",
    "detail",
    "type",
    "virtual_key",
    "virtual_keys",
    "value",
    "models",
    "provider_configs",
    "budgets",
    "budget",
    "max_limit",
    "reset_duration",
    "current_usage",
    "rate_limit",
    "token_max_limit",
    "token_reset_duration",
    "request_max_limit",
    "request_reset_duration",
    "keys",
    "key_ids",
    "allow_all_keys",
    "weight",
    "enabled",
    "description",
    "count",
    "total_count",
    "offset",
    "provider",
    "env_var",
    "from_env",
    "deleted_at",
    "request_id",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop_oneof![
            Just(String::new()),
            "[ -~]{0,16}",
            "\\PC{0,8}",
            Just("2026-01-01T00:00:00Z".to_string()),
            Just("9999-12-31T23:59:59Z".to_string()),
            Just("*".to_string()),
            Just("-1".to_string()),
            Just("1e308".to_string()),
            "[0-9]{1,30}(\\.[0-9]{0,8})?",
            Just("https://api.digitalocean.com/v2/gen-ai/models/api_keys?page=2".to_string()),
        ]
        .prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(VOCAB), inner, 0..8).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A marker that only non-JSON bodies carry: it must never reach an error message.
const FOREIGN: &str = "FOREIGN-BODY-7f3a";

#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    json: bool,
}

/// Any answer: any status, wait headers, JSON, bytes or HTML.
fn answer() -> impl Strategy<Value = Answer> {
    answer_with(prop::sample::select(vec![
        200u16, 200, 200, 201, 204, 301, 302, 400, 401, 403, 404, 409, 410, 422, 429, 429, 429,
        429, 500, 502, 503,
    ]))
}

/// An answer with `status`: wait headers and a body.
fn answer_with(status: impl Strategy<Value = u16>) -> impl Strategy<Value = Answer> {
    let header_value = prop_oneof![
        // The values of issue 10 that panicked, and their neighbours.
        3 => prop::sample::select(vec![
            "inf", "-inf", "NaN", "1e300", "-1", "18446744073709551615", "1e-300",
            "99999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT",
        ])
        .prop_map(String::from),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| f.to_string()),
        1 => "[0-9]{15,30}",
        1 => "[ -~]{0,30}",
        1 => Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
    ];
    let headers = prop::collection::vec(
        (
            prop::sample::select(vec![
                "retry-after",
                "retry-after-ms",
                "ratelimit-reset",
                "location",
            ]),
            header_value,
        ),
        1..4,
    );
    let body = prop_oneof![
        4 => json().prop_map(|v| (serde_json::to_vec(&v).unwrap(), true)),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut b| {
            b.extend_from_slice(FOREIGN.as_bytes());
            (b, false)
        }),
        1 => Just((format!("<html><body>{FOREIGN}</body></html>").into_bytes(), false)),
    ];
    (status, headers, body).prop_map(|(status, headers, (body, json))| Answer {
        status,
        headers,
        body,
        json,
    })
}

fn selector() -> SecretKeySelector {
    SecretKeySelector {
        name: "creds".into(),
        key: "token".into(),
        namespace: None,
    }
}

fn clients(url: &str) -> Vec<(Arc<dyn KeyBackend>, KeySettings)> {
    let opts = ClientOptions {
        timeout: Duration::from_secs(5),
        max_attempts: 1,
        backoff_base: Duration::from_millis(1),
        max_retry_after: Duration::ZERO,
        max_wait: Duration::from_secs(5),
        ..Default::default()
    };
    let creds = || {
        let mut c = BTreeMap::new();
        for role in ["token", "privateKey", "username", "password"] {
            c.insert(role.to_string(), SecretString::from("fuzz-credential"));
        }
        Credentials(c)
    };
    let base = |s: KeySettings| KeySettings {
        name: "fuzz".into(),
        uid: "00000000-0000-4000-8000-000000000000".into(),
        ..s
    };
    let specs = vec![
        (
            KeyProviderSpec {
                openrouter: Some(OpenRouterProvider {
                    base_url: Some(url.into()),
                    management_key_secret_ref: selector(),
                    workspace_id: None,
                }),
                ..Default::default()
            },
            base(KeySettings::default()),
        ),
        (
            KeyProviderSpec {
                boltz: Some(BoltzProvider {
                    base_url: Some(url.into()),
                    api_key_secret_ref: selector(),
                    workspace_id: None,
                }),
                ..Default::default()
            },
            base(KeySettings::default()),
        ),
        (
            KeyProviderSpec {
                ucloud: Some(UCloudProvider {
                    base_url: Some(url.into()),
                    public_key: "fuzz-public".into(),
                    private_key_secret_ref: selector(),
                    project_id: None,
                    region: None,
                }),
                ..Default::default()
            },
            base(KeySettings::default()),
        ),
        (
            KeyProviderSpec {
                digitalocean: Some(DigitalOceanProvider {
                    base_url: Some(url.into()),
                    token_secret_ref: selector(),
                }),
                ..Default::default()
            },
            base(KeySettings {
                digitalocean: Some(DigitalOceanKeySpec {
                    agent_uuid: Some("3f1b2c4d-0000-4000-8000-000000000001".into()),
                }),
                ..Default::default()
            }),
        ),
        (
            KeyProviderSpec {
                bifrost: Some(BifrostProvider {
                    base_url: url.into(),
                    auth_secret_ref: None,
                }),
                ..Default::default()
            },
            base(KeySettings {
                models: vec!["openai/gpt-4o".into()],
                ..Default::default()
            }),
        ),
    ];
    specs
        .into_iter()
        .map(|(spec, s)| (build_backend(&spec, creds(), opts.clone()).unwrap(), s))
        .collect()
}

fn check(
    what: &str,
    a: &Answer,
    err: &keysmith::providers::ProviderError,
) -> Result<(), TestCaseError> {
    let text = err.to_string();
    prop_assert!(
        text.chars().count() <= 320,
        "{what}: {} chars: {text}",
        text.chars().count()
    );
    if !a.json {
        prop_assert!(
            !text.contains(FOREIGN),
            "{what} quotes a foreign body: {text}"
        );
    }
    Ok(())
}

#[test]
fn hostile_answers_never_panic_any_client() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let current: Arc<Mutex<Option<Answer>>> = Arc::default();
    let c = current.clone();
    let url = rt.block_on(async move {
        let app = Router::new().fallback(move || {
            let a = c.lock().unwrap().clone().expect("an answer is set");
            async move {
                let mut r = (StatusCode::from_u16(a.status).unwrap(), a.body).into_response();
                for (k, v) in a.headers {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        r.headers_mut().insert(HeaderName::from_static(k), v);
                    }
                }
                r
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    });
    let backends = clients(&url);
    let config = ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // Rate-limit and server-error answers with hostile wait headers, where a bad value once
    // panicked (issue 10); then anything at all.
    let waits = answer_with(prop::sample::select(vec![429u16, 503]));
    let answers = prop_oneof![2 => waits, 1 => answer()];
    proptest!(config, |(a in answers)| {
        *current.lock().unwrap() = Some(a.clone());
        rt.block_on(async {
            for (b, s) in &backends {
                let scope = b.scope(s);
                let p = b.provider();
                let results = [
                    ("verify", b.verify().await.err()),
                    ("create", b.create(s).await.err()),
                    ("list", b.list_page(&scope, None).await.err()),
                    ("list page 2", b.list_page(&scope, Some("2")).await.err()),
                    ("get", b.get(&scope, "key-1").await.err()),
                    ("revoke", b.revoke(&scope, "key-1").await.err()),
                    ("regenerate", b.regenerate(&scope, "key-1").await.err()),
                ];
                for (op, e) in results {
                    if let Some(e) = e {
                        check(&format!("{p} {op}"), &a, &e)?;
                    }
                }
            }
            Ok::<(), TestCaseError>(())
        })?;
    });
}
