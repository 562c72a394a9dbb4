//! A spend limit survives rotation (issue 21 §1), on the real API server against the OpenRouter
//! and Bifrost emulators, whose spend endpoints (`asRequest: true`) refuse spend past a key's
//! limit for its period as the providers refuse requests: limit 10 monthly, 6 spent, then a rotation with a
//! 10-minute grace period: the old and the new key together can spend only the 4 left.

use std::sync::atomic::Ordering;

use keysmith::api::{ApiKey, ApiKeySpec, LimitReset, RotationSpec, SpendLimit, ROTATE_ANNOTATION};
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

use crate::harness::*;
use crate::{bifrost, openrouter};

#[derive(Clone, Copy, Debug)]
enum P {
    OpenRouter,
    Bifrost,
}

impl P {
    fn provider(self) -> &'static str {
        match self {
            P::OpenRouter => "openrouter",
            P::Bifrost => "bifrost",
        }
    }

    async fn env(self) -> Env {
        match self {
            P::OpenRouter => openrouter::env().await,
            P::Bifrost => bifrost::env_with(vec![]).await,
        }
    }

    /// Spend `amount` on key `id` through the emulator, as a request would: the HTTP status.
    async fn spend(self, env: &Env, id: &str, amount: f64) -> u16 {
        let body = match self {
            P::OpenRouter => json!({"hash": id, "amount": amount, "asRequest": true}),
            P::Bifrost => json!({"vkId": id, "amount": amount, "asRequest": true}),
        };
        env.emulator_post("/_emulator/usage", body).await.0
    }

    /// Spend 1 at a time until the provider refuses (at most 30): how much was spent.
    async fn spend_until_refused(self, env: &Env, id: &str) -> u32 {
        for n in 0..30 {
            let code = self.spend(env, id, 1.0).await;
            if code != 200 {
                assert!(code == 402 || code == 429, "{self:?}: refused with {code}");
                return n;
            }
        }
        30
    }
}

fn spec() -> ApiKeySpec {
    ApiKeySpec {
        limit: Some(Box::new(SpendLimit {
            amount: "10".into(),
            reset: Some(LimitReset::Monthly),
        })),
        rotation: Some(Box::new(RotationSpec {
            grace_period: Some("10m".into()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn st(ak: &ApiKey) -> keysmith::api::ApiKeyStatus {
    ak.status.clone().unwrap_or_default()
}

async fn annotate(env: &Env, name: &str, value: &str) {
    env.apikeys()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})),
        )
        .await
        .expect("annotated");
}

/// Create the ApiKey, spend 6 of its 10 on the first key; returns the first key's id.
async fn six_spent(env: &Env, p: P) -> String {
    env.create(&apikey("k", p.provider(), spec())).await;
    let ak = env.converge("k", 6).await;
    assert_eq!(ready(&ak).0, "True", "{p:?}: {:?}", ak.status);
    let old = st(&ak).key_id.expect("keyID");
    for _ in 0..6 {
        assert_eq!(p.spend(env, &old, 1.0).await, 200, "{p:?}");
    }
    old
}

/// After the rotation away from `old`: the new key, with the old one still live.
async fn rotated(env: &Env, p: P, old: &str) -> String {
    let s = st(&env.get("k").await);
    let new = s.key_id.clone().expect("keyID");
    assert_ne!(new, old, "{p:?}: rotated");
    assert_eq!(
        s.previous_keys.len(),
        1,
        "{p:?}: the old key is in its grace period"
    );
    assert_eq!(s.previous_keys[0].key_id, old);
    new
}

/// Both keys live, each spending until refused: together no more than the 4 left.
async fn assert_four_left(env: &Env, p: P, old: &str, new: &str) {
    // Reconciles in between must not give a key more (sync keeps the limit left).
    env.touch("k", "after-rotation").await;
    env.reconcile("k").await.unwrap();
    let by_old = p.spend_until_refused(env, old).await;
    let by_new = p.spend_until_refused(env, new).await;
    println!("{p:?}: after 6 spent, the old key spent {by_old} more and the new key {by_new}");
    assert_eq!(
        by_old + by_new,
        4,
        "{p:?}: both keys together spent {} of a limit of 10",
        6 + by_old + by_new
    );
    env.touch("k", "spent").await;
    env.reconcile("k").await.unwrap();
    env.reconcile("k").await.unwrap();
    assert_ne!(
        p.spend(env, new, 1.0).await,
        200,
        "{p:?}: still refused after reconciles"
    );
    let s = st(&env.get("k").await);
    let carried = s.limit_carry_over.as_ref().expect("limitCarryOver");
    assert_eq!(carried.reset, "monthly");
    assert_eq!(carried.keys[0].key_id, old);
    assert!(carried.keys[0].limit_lowered, "{:?}", carried);
    // status.usage counts the month across both keys.
    let usage = s.usage.expect("usage");
    assert_eq!(usage.monthly.as_deref(), Some("10"), "{p:?}: {usage:?}");
    assert_eq!(
        usage.limit_remaining.as_deref(),
        Some("0"),
        "{p:?}: {usage:?}"
    );
}

#[tokio::test]
async fn a_rotated_key_mid_period_cannot_spend_past_the_limit_with_both_keys_live() {
    for p in [P::OpenRouter, P::Bifrost] {
        let env = p.env().await;
        let old = six_spent(&env, p).await;
        annotate(&env, "k", "r1").await;
        env.reconcile("k").await.unwrap();
        let new = rotated(&env, p, &old).await;
        assert_four_left(&env, p, &old, &new).await;
    }
}

/// The operator dies after the new key reached the Secret, before the status recorded it (as
/// a SIGKILL would leave it): the next reconcile recovers the rotation and still holds the limit.
#[tokio::test]
async fn a_crash_mid_rotation_still_holds_the_limit() {
    for p in [P::OpenRouter, P::Bifrost] {
        let env = p.env().await;
        let old = six_spent(&env, p).await;
        annotate(&env, "k", "r1").await;
        env.kube_faults
            .fail_unmarked_status_writes
            .store(1, Ordering::SeqCst);
        assert!(
            env.reconcile("k").await.is_err(),
            "{p:?}: the final write failed"
        );
        assert!(st(&env.get("k").await).pending_create.is_some(), "{p:?}");
        env.reconcile("k").await.unwrap();
        let new = rotated(&env, p, &old).await;
        assert_four_left(&env, p, &old, &new).await;
    }
}

/// The limit each key has at the provider: the new key what is left, the old one what it spent;
/// raising spec.limit (the owner's decision) still counts the old key's spend.
#[tokio::test]
async fn each_key_gets_its_share_and_a_raised_limit_still_counts_the_old_spend() {
    let p = P::OpenRouter;
    let env = p.env().await;
    let old = six_spent(&env, p).await;
    annotate(&env, "k", "r1").await;
    env.reconcile("k").await.unwrap();
    let new = rotated(&env, p, &old).await;
    env.reconcile("k").await.unwrap();
    let limit_of = |keys: &[Value], id: &str| -> Value {
        keys.iter()
            .find(|k| k["hash"] == id)
            .map(|k| k["settings"]["limit"].clone())
            .unwrap_or(Value::Null)
    };
    let keys = env.emulator_keys().await;
    assert_eq!(limit_of(&keys, &new), json!(4.0));
    assert_eq!(limit_of(&keys, &old), json!(6.0));
    // The owner raises the limit to 20: the new key gets 20 - 6.
    env.patch_spec("k", json!({"limit": {"amount": "20", "reset": "monthly"}}))
        .await;
    env.reconcile("k").await.unwrap();
    let keys = env.emulator_keys().await;
    assert_eq!(limit_of(&keys, &new), json!(14.0));
    assert_eq!(limit_of(&keys, &old), json!(6.0));
}

/// The operator dies after the provider created the new key, before the Secret held it: the
/// orphan is revoked and the rotation runs again; the old key, still the current one, spent more
/// in between, and the new key gets what is left after all of it.
#[tokio::test]
async fn a_crash_before_the_secret_write_counts_the_spend_made_until_the_rotation_reruns() {
    for p in [P::OpenRouter, P::Bifrost] {
        let env = p.env().await;
        let old = six_spent(&env, p).await;
        annotate(&env, "k", "r1").await;
        env.ctx.crash_after_create.store(true, Ordering::SeqCst);
        let _ = env.reconcile("k").await;
        env.ctx.crash_after_create.store(false, Ordering::SeqCst);
        let s = st(&env.get("k").await);
        assert!(s.pending_create.is_some(), "{p:?}");
        assert_eq!(s.key_id.as_deref(), Some(old.as_str()));
        // Still the current key: its limit was not lowered, it spends on.
        assert_eq!(p.spend(&env, &old, 1.0).await, 200, "{p:?}");
        let ak = env.converge("k", 6).await;
        assert_eq!(ready(&ak).0, "True", "{p:?}: {:?}", ak.status);
        let new = rotated(&env, p, &old).await;
        let by_old = p.spend_until_refused(&env, &old).await;
        let by_new = p.spend_until_refused(&env, &new).await;
        println!("{p:?}: after 7 spent, the old key spent {by_old} more and the new key {by_new}");
        assert_eq!(by_old + by_new, 3, "{p:?}");
    }
}

/// UCloud caps spend per key in its own block: keysmith cannot hold them across keys, and the
/// Ready condition says so while the replaced key is live.
#[tokio::test]
async fn ucloud_caps_say_they_are_not_held_across_keys() {
    let env = crate::ucloud::env().await;
    let spec = ApiKeySpec {
        ucloud: Some(Box::new(keysmith::api::UCloudKeySpec {
            daily_limit_amount: Some("10".into()),
            ..Default::default()
        })),
        rotation: Some(Box::new(RotationSpec {
            grace_period: Some("10m".into()),
            ..Default::default()
        })),
        ..Default::default()
    };
    env.create(&apikey("k", "ucloud", spec)).await;
    let ak = env.converge("k", 6).await;
    assert_eq!(ready(&ak).0, "True", "{:?}", ak.status);
    assert!(!ready(&ak).2.contains("not held"), "{}", ready(&ak).2);
    annotate(&env, "k", "r1").await;
    env.reconcile("k").await.unwrap();
    env.reconcile("k").await.unwrap();
    let ak = env.get("k").await;
    assert_eq!(st(&ak).previous_keys.len(), 1);
    let (status, _, message) = ready(&ak);
    assert_eq!(status, "True");
    assert!(
        message.contains("the spend limit is not held across keys: ucloud caps spend per key"),
        "{message}"
    );
}
