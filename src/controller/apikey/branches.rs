//! Branch tests of the create, recover and sync steps against a scripted provider
//! (`keysmith_testkit::fake::ScriptedBackend`: scripted answers, recorded calls, no HTTP) and an
//! offline Kubernetes client: the decisions that need no emulator and no API server. A call the
//! test did not script fails it, so each test states every provider answer its branch takes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keysmith_testkit::fake::{self, Call, ScriptedBackend};

use super::create::{after_failed_create, create};
use super::recover::recover;
use super::scope::LocatedKey;
use super::step::ServerCopy;
use super::step::{Reconciler, Step};
use super::sync::{observe, update_in_place};
use super::validate::ValidatedApiKey;
use crate::api::{ApiKey, ApiKeyStatus, CreateBackoff, PendingCreate, ProviderType};
use crate::controller::backends::ResolvedProvider;
use crate::controller::context::Context;
use crate::controller::fairness::MAX_CREATE_HOLD;
use crate::controller::reasons::Reason;
use crate::controller::time::ts;
use crate::metrics::Metrics;
use crate::providers::{Field, KeyScope, KeySettings, Limit, ProviderError, ProviderKey};

/// A client whose every request fails: these steps' Kubernetes calls (Events) are best effort.
fn offline_client() -> kube::Client {
    let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
        Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other(
            "no API server in unit tests",
        ))
    });
    kube::Client::new(svc, "default")
}

struct World {
    ctx: Context,
    p: ResolvedProvider,
    ak: ApiKey,
    seen: ServerCopy,
}

fn world(fake: &ScriptedBackend) -> World {
    let ctx = Context::new(
        offline_client(),
        Arc::new(Metrics::new()),
        Default::default(),
    );
    let p = ResolvedProvider {
        id: "ClusterKeyProvider/fake".into(),
        provider_type: ProviderType::OpenRouter,
        backend: fake.backend(),
        refresh_interval: Duration::from_secs(300),
        create_limits: Default::default(),
    };
    let mut ak = ApiKey::new("chat", Default::default());
    ak.metadata.namespace = Some("team-a".into());
    ak.metadata.uid = Some("uid-1".into());
    ak.metadata.generation = Some(1);
    let seen = ServerCopy::of(&ak);
    World { ctx, p, ak, seen }
}

impl World {
    fn step(&self, settings: KeySettings) -> Step<'_> {
        Step {
            r: Reconciler {
                ak: &self.ak,
                ctx: &self.ctx,
                p: &self.p,
                seen: &self.seen,
            },
            v: ValidatedApiKey {
                settings,
                scope: KeyScope::default(),
            },
            existing: None,
        }
    }
}

fn settings(name: &str) -> KeySettings {
    KeySettings {
        name: name.into(),
        ..KeySettings::default()
    }
}

fn at() -> KeyScope {
    KeyScope::default()
}

fn revoke(id: &str) -> Call {
    Call::Revoke {
        scope: at(),
        id: id.into(),
    }
}

fn list() -> Call {
    Call::ListPage {
        scope: at(),
        cursor: None,
    }
}

// ---- create ----

/// A create in backoff, over its budget, or held by a 429 of another ApiKey asks the provider
/// nothing (the scripted backend fails the test on any call).
#[tokio::test]
async fn a_create_that_waits_sends_nothing_to_the_provider() {
    let fake = ScriptedBackend::new(ProviderType::OpenRouter);
    let w = world(&fake);
    let s = w.step(settings("team-a/chat"));

    let mut backing_off = ApiKeyStatus {
        create_backoff: Some(Box::new(CreateBackoff {
            failures: 3,
            not_before: ts(Utc::now() + chrono::Duration::minutes(5)),
            generation: Some(1),
            last_failure: "ProviderUnavailable: 502".into(),
        })),
        ..ApiKeyStatus::default()
    };
    let f = create(&s, &mut backing_off, None).await.unwrap_err();
    assert_eq!(f.reason, Reason::CreateBackoff);
    assert!(f.retry_after.is_some_and(|w| w > Duration::from_secs(200)));
    // The wait refused nothing: the row of failures is not counted up.
    assert_eq!(backing_off.create_backoff.as_ref().unwrap().failures, 3);

    let per_hour = w.p.create_limits.per_api_key_per_hour as usize;
    let mut spent = ApiKeyStatus {
        recent_creates: vec![ts(Utc::now() - chrono::Duration::minutes(1)); per_hour],
        ..ApiKeyStatus::default()
    };
    let f = create(&s, &mut spent, None).await.unwrap_err();
    assert_eq!(f.reason, Reason::CreateBudgetExhausted);
    assert!(spent.create_backoff.is_none());

    w.ctx.create_holds.hold(
        &w.p.id,
        Duration::from_secs(30),
        "429 from another key".into(),
    );
    let mut held = ApiKeyStatus::default();
    let f = create(&s, &mut held, None).await.unwrap_err();
    assert_eq!(f.reason, Reason::RateLimited);
    assert!(held.pending_create.is_none(), "no marker written");

    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

/// What a refused create leaves: the marker only where a key may exist (5xx, unreadable
/// answer), a hold of the provider object's creates after a 429 with Retry-After (capped), the
/// provider's reason in the failure.
#[tokio::test]
async fn a_refused_create_keeps_the_marker_only_when_a_key_may_exist() {
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_create(Err(ProviderError::Unavailable("502 bad gateway".into())))
        .on_create(Err(ProviderError::Malformed("<html>".into())))
        .on_create(Err(ProviderError::Rejected("name taken".into())))
        .on_create(Err(ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7200)),
        }));
    let w = world(&fake);
    let b = w.p.backend.clone();
    let marked = || ApiKeyStatus {
        pending_create: Some(Box::new(PendingCreate {
            name: "team-a/chat".into(),
            started_at: ts(Utc::now()),
            attempt: "a1".into(),
            scope: None,
        })),
        ..ApiKeyStatus::default()
    };
    let expected = [
        (Reason::ProviderUnavailable, true),
        (Reason::ProviderUnavailable, true),
        (Reason::ProviderRejected, false),
        (Reason::RateLimited, false),
    ];
    for (i, (reason, kept)) in expected.into_iter().enumerate() {
        let mut st = marked();
        let e = b.create(&settings("team-a/chat")).await.unwrap_err();
        let f = after_failed_create(&w.ctx, &w.p.id, &mut st, e);
        assert_eq!(f.reason, reason, "answer {i}");
        assert_eq!(st.pending_create.is_some(), kept, "answer {i}: marker kept");
        if reason == Reason::RateLimited {
            assert_eq!(f.retry_after, Some(MAX_CREATE_HOLD), "capped");
            let (wait, _) = w.ctx.create_holds.held(&w.p.id).expect("creates held");
            assert!(wait <= MAX_CREATE_HOLD);
        } else {
            assert!(
                w.ctx.create_holds.held(&w.p.id).is_none(),
                "answer {i}: no hold"
            );
        }
    }
    assert_eq!(fake.calls().len(), 4);
}

// ---- recover ----

/// An interrupted create under a provisional name, settled long ago.
fn interrupted() -> (ApiKeyStatus, PendingCreate) {
    let pending = PendingCreate {
        name: super::attempt::provisional_name("a1"),
        started_at: ts(Utc::now() - chrono::Duration::hours(1)),
        attempt: "a1".into(),
        scope: None,
    };
    let st = ApiKeyStatus {
        pending_create: Some(Box::new(pending.clone())),
        ..ApiKeyStatus::default()
    };
    (st, pending)
}

/// The listing shows the attempt's key (its provisional name proves it) next to keys of other
/// names: that one key is revoked, the marker cleared, the others left alone.
#[tokio::test]
async fn recovery_revokes_the_attempts_key_and_nothing_else() {
    let (mut st, pending) = interrupted();
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_list_page(Ok(fake::page(
            vec![
                fake::key("orphan", &pending.name),
                fake::key("other", "team-a/web"),
                fake::key("another-attempt", &super::attempt::provisional_name("a2")),
            ],
            None,
        )))
        .on_revoke(Ok(()));
    let w = world(&fake);
    recover(&w.step(settings("team-a/chat")), &mut st, &pending)
        .await
        .expect("recovered");
    assert!(st.pending_create.is_none());
    assert_eq!(fake.calls(), [list(), revoke("orphan")]);
    assert!(fake.unused().is_empty());
}

/// An orphan that is already gone (404 on revoke) counts as revoked.
#[tokio::test]
async fn recovery_takes_an_orphan_already_gone_as_revoked() {
    let (mut st, pending) = interrupted();
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_list_page(Ok(fake::page(
            vec![fake::key("orphan", &pending.name)],
            None,
        )))
        .on_revoke(Err(ProviderError::NotFound("key orphan".into())));
    let w = world(&fake);
    recover(&w.step(settings("team-a/chat")), &mut st, &pending)
        .await
        .expect("recovered");
    assert!(st.pending_create.is_none());
    assert_eq!(fake.calls(), [list(), revoke("orphan")]);
}

/// A revoke or a listing the provider fails keeps the marker: the next reconcile recovers again
/// instead of creating a second key beside the orphan.
#[tokio::test]
async fn recovery_keeps_the_marker_when_the_provider_fails() {
    let (mut st, pending) = interrupted();
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_list_page(Ok(fake::page(
            vec![fake::key("orphan", &pending.name)],
            None,
        )))
        .on_revoke(Err(ProviderError::Unavailable("503".into())));
    let w = world(&fake);
    let f = recover(&w.step(settings("team-a/chat")), &mut st, &pending)
        .await
        .unwrap_err();
    assert_eq!(f.reason, Reason::ProviderUnavailable);
    assert!(st.pending_create.is_some());
    assert_eq!(fake.calls(), [list(), revoke("orphan")]);

    let (mut st, pending) = interrupted();
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_list_page(Err(ProviderError::Unavailable("503".into())));
    let w = world(&fake);
    let f = recover(&w.step(settings("team-a/chat")), &mut st, &pending)
        .await
        .unwrap_err();
    assert_eq!(f.reason, Reason::ProviderUnavailable);
    assert!(st.pending_create.is_some());
    assert_eq!(fake.calls(), [list()], "no revoke without a listing");
}

/// A create interrupted moments ago may still reach the provider: with nothing listed yet,
/// recovery waits (transient, with a retry) and keeps the marker rather than concluding.
#[tokio::test]
async fn recovery_waits_for_a_create_that_may_still_land() {
    let pending = PendingCreate {
        name: super::attempt::provisional_name("a1"),
        started_at: ts(Utc::now()),
        attempt: "a1".into(),
        scope: None,
    };
    let mut st = ApiKeyStatus {
        pending_create: Some(Box::new(pending.clone())),
        ..ApiKeyStatus::default()
    };
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_list_page(Ok(fake::page(vec![fake::key("other", "team-a/web")], None)));
    let w = world(&fake);
    let f = recover(&w.step(settings("team-a/chat")), &mut st, &pending)
        .await
        .unwrap_err();
    assert_eq!(f.reason, Reason::RecoveringCreate);
    assert!(f.transient && f.retry_after.is_some_and(|w| !w.is_zero()));
    assert!(st.pending_create.is_some());
    assert_eq!(fake.calls(), [list()]);
}

// ---- sync ----

/// Fresh (after a spec change): one GET; a value the provider sends along is dropped, a missing
/// key is `None`, a failed lookup an error (not "gone").
#[tokio::test]
async fn observing_fresh_asks_the_provider_once() {
    let mut with_value = fake::key("k1", "team-a/chat");
    with_value.secret = Some("sk-listed-value".to_string().into());
    let fake = ScriptedBackend::new(ProviderType::UCloud)
        .on_get(Ok(with_value))
        .on_get(Err(ProviderError::NotFound("k1".into())))
        .on_get(Err(ProviderError::Unavailable("timeout".into())));
    let w = world(&fake);
    let seen = observe(&w.ctx, &w.p, &at(), "k1", true).await.unwrap();
    let seen = seen.expect("the key");
    assert!(seen.secret.is_none(), "the value is not kept");
    assert!(observe(&w.ctx, &w.p, &at(), "k1", true)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        observe(&w.ctx, &w.p, &at(), "k1", true).await.unwrap_err(),
        ProviderError::Unavailable("timeout".into())
    );
    let get = Call::Get {
        scope: at(),
        id: "k1".into(),
    };
    assert_eq!(fake.calls(), [get.clone(), get.clone(), get]);
}

/// From the shared listing: a listed key costs no GET; a key the listing lacks (created after
/// it) is asked for once before it is called gone.
#[tokio::test]
async fn observing_from_the_listing_asks_only_for_what_it_lacks() {
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_list_page(Ok(fake::page(vec![fake::key("k1", "team-a/chat")], None)))
        .on_get(Err(ProviderError::NotFound("k2".into())));
    let w = world(&fake);
    let k1 = observe(&w.ctx, &w.p, &at(), "k1", false).await.unwrap();
    assert_eq!(k1.map(|k| k.name), Some("team-a/chat".into()));
    assert!(observe(&w.ctx, &w.p, &at(), "k2", false)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        fake.calls(),
        [
            list(),
            Call::Get {
                scope: at(),
                id: "k2".into()
            }
        ]
    );
}

fn limit(amount: &str) -> Limit {
    Limit {
        amount: amount.into(),
        reset: None,
    }
}

/// Drift the provider can update is updated in one call; drift it cannot is returned (a new key
/// is needed); until the budgets were added up after a start, the limit is left alone.
#[tokio::test]
async fn update_in_place_sends_only_what_the_provider_can_change() {
    let mut current = fake::key("k1", "old name");
    current.observed.limit = Some(Some(limit("5")));
    current.observed.expires_at = Some(Some(Utc::now() + chrono::Duration::days(30)));
    let desired = KeySettings {
        limit: Some(limit("10")),
        ..settings("team-a/chat")
    };
    let fake = ScriptedBackend::new(ProviderType::OpenRouter)
        .on_update(Ok(fake::key("k1", "team-a/chat")))
        .on_update(Ok(fake::key("k1", "team-a/chat")))
        .on_update(Err(ProviderError::Rejected("limit too high".into())));
    let w = world(&fake);
    let s = w.step(desired);
    let key = LocatedKey {
        at: at(),
        id: "k1".into(),
    };
    let update = |fields: Vec<Field>| Call::Update {
        scope: at(),
        id: "k1".into(),
        fields,
    };

    // Just started (as `keysmith run` begins): the budgets are not settled, the limit waits.
    w.ctx.budgets.wait_for_first_pass();
    let mut st = ApiKeyStatus::default();
    let immutable = update_in_place(&s, &mut st, &current, &key).await.unwrap();
    assert_eq!(immutable, [Field::ExpiresAt]);
    assert_eq!(fake.calls(), [update(vec![Field::DisplayName])]);

    w.ctx.budgets.mark_settled();
    let immutable = update_in_place(&s, &mut st, &current, &key).await.unwrap();
    assert_eq!(immutable, [Field::ExpiresAt]);
    assert_eq!(
        fake.calls()[1],
        update(vec![Field::DisplayName, Field::LimitAmount])
    );

    let f = update_in_place(&s, &mut st, &current, &key)
        .await
        .unwrap_err();
    assert_eq!(f.reason, Reason::ProviderRejected);
    assert_eq!(fake.calls().len(), 3);

    // In sync: nothing to send.
    let in_sync = ProviderKey {
        name: "team-a/chat".into(),
        ..current.clone()
    };
    let mut in_sync = in_sync;
    in_sync.observed.limit = Some(Some(limit("10")));
    in_sync.observed.expires_at = None;
    assert!(update_in_place(&s, &mut st, &in_sync, &key)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(fake.calls().len(), 3);
}
