//! KeyBudgets and ClusterKeyBudgets on the real API server, with OpenRouter and Bifrost
//! emulators whose spend is driven by their own `POST /_emulator/usage`.

use std::collections::BTreeMap;
use std::sync::Arc;

use keysmith::api::{
    ApiKey, ApiKeySpec, BifrostProvider, ClusterKeyBudget, KeyBudget, KeyBudgetStatus,
    KeyProviderSpec, LimitReset, ProviderKind, SpendLimit,
};
use keysmith::controller;
use keysmith::emulators::{self, build_bifrost, BifrostArgs, RunningEmulator};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::harness::*;

/// An env with ClusterKeyProviders `openrouter` (the env's emulator) and `bifrost` (the second
/// emulator, returned).
async fn two_providers() -> (Env, RunningEmulator) {
    let (router, faults) = build_bifrost(&BifrostArgs::default());
    let bf = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    let bifrost = cluster_provider(
        "bifrost",
        KeyProviderSpec {
            bifrost: Some(BifrostProvider {
                base_url: bf.url(),
                auth_secret_ref: None,
            }),
            ..Default::default()
        },
    );
    let env =
        crate::openrouter::env_with(|_| {}, vec![serde_json::to_value(bifrost).unwrap()]).await;
    (env, bf)
}

/// An ApiKey `name` in `ns` through ClusterKeyProvider `provider`, labelled `labels`.
fn key(ns: &str, name: &str, provider: &str, labels: &[(&str, &str)], spec: ApiKeySpec) -> ApiKey {
    let mut ak = apikey(name, provider, spec);
    ak.spec.provider_ref.kind = ProviderKind::ClusterKeyProvider;
    ak.metadata.namespace = Some(ns.into());
    ak.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    ak
}

/// Reconcile ApiKey `ns/name` until it is Ready; its key id.
async fn converge_in(env: &Env, ns: &str, name: &str) -> String {
    let api: Api<ApiKey> = Api::namespaced(env.client.clone(), ns);
    for _ in 0..6 {
        let ak = api.get(name).await.unwrap();
        if ready(&ak).0 == "True" {
            return ak.status.unwrap().key_id.unwrap();
        }
        if let Err(e) = controller::reconcile(Arc::new(ak), env.ctx.clone()).await {
            eprintln!("reconcile {ns}/{name}: {e}");
        }
    }
    let ak = api.get(name).await.unwrap();
    panic!("{ns}/{name} not ready: {:?}", ak.status);
}

/// Spend `amount` on an OpenRouter key; `as_request`: refused as a request would be. HTTP status.
async fn spend_or(env: &Env, id: &str, amount: f64, as_request: bool) -> u16 {
    env.emulator_post(
        "/_emulator/usage",
        json!({"hash": id, "amount": amount, "asRequest": as_request}),
    )
    .await
    .0
}

async fn spend_bf(bf: &RunningEmulator, id: &str, amount: f64, as_request: bool) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/_emulator/usage", bf.url()))
        .json(&json!({"vkId": id, "amount": amount, "asRequest": as_request}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A budget pass on fresh listings (the shared listing is otherwise reused for a refresh
/// interval, 10 s at least).
async fn pass(env: &Env) -> controller::PassReport {
    for p in ["openrouter", "bifrost"] {
        env.ctx.listings.forget(&format!(
            "ClusterKeyProvider/{}",
            env.cluster_provider_name(p)
        ));
    }
    own_pass(env).await
}

/// A budget pass over this test's budgets only (KeyBudgets of its namespaces, ClusterKeyBudgets
/// named with its suffix): tests run in parallel on one API server.
async fn own_pass(env: &Env) -> controller::PassReport {
    let suffix = env.cluster_provider_name("");
    let (ns, other) = (env.ns.clone(), env.other_ns.clone());
    controller::pass_over(&env.ctx, &move |n, name| match n {
        Some(n) => n == ns || n == other,
        None => name.ends_with(&suffix),
    })
    .await
    .expect("budget pass")
}

fn threshold_events(env: &Env) -> Vec<String> {
    env.events()
        .into_iter()
        .filter(|(_, reason, _)| reason == "BudgetThresholdReached")
        .map(|(_, _, note)| note)
        .collect()
}

async fn cluster_budget_status(env: &Env, name: &str) -> KeyBudgetStatus {
    Api::<ClusterKeyBudget>::all(env.client.clone())
        .get(name)
        .await
        .unwrap()
        .status
        .expect("a status")
}

fn condition<'a>(st: &'a KeyBudgetStatus, type_: &str) -> Option<&'a str> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// A ClusterKeyBudget over the env's two namespaces, ApiKeys labelled `keysmith-test/budget=<tag>`.
async fn cluster_budget(env: &Env, tag: &str, amount: &str, on_exceeded: &str) -> String {
    let name = env.cluster_provider_name(&format!("budget-{tag}"));
    let b: ClusterKeyBudget = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "ClusterKeyBudget",
        "metadata": { "name": name },
        "spec": {
            "namespaceSelector": { "matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In",
                "values": [env.ns, env.other_ns],
            }]},
            "selector": { "matchLabels": { "keysmith-test/budget": tag } },
            "amount": amount, "period": "monthly", "onExceeded": on_exceeded,
        },
    }))
    .unwrap();
    Api::<ClusterKeyBudget>::all(env.client.clone())
        .create(&PostParams::default(), &b)
        .await
        .expect("ClusterKeyBudget created");
    name
}

async fn delete_cluster_budget(env: &Env, name: &str) {
    let _ = Api::<ClusterKeyBudget>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

fn monthly(amount: &str) -> ApiKeySpec {
    ApiKeySpec {
        limit: Some(Box::new(SpendLimit {
            amount: amount.into(),
            reset: Some(LimitReset::Monthly),
        })),
        ..Default::default()
    }
}

/// The OpenRouter emulator's view of key `id`: (limit, monthly usage, disabled).
async fn or_key(env: &Env, id: &str) -> (Option<f64>, f64, bool) {
    let keys = env.emulator_keys().await;
    let k = keys
        .iter()
        .find(|k| k["hash"] == id || k["id"] == id)
        .unwrap_or_else(|| panic!("key {id} at the emulator: {keys:?}"));
    (
        k["settings"]["limit"].as_f64(),
        k["usage"]["monthly"].as_f64().unwrap_or(0.0),
        k["settings"]["disabled"].as_bool().unwrap_or(false),
    )
}

/// The Bifrost emulator's view of VK `id`: (monthly budget limit, its usage).
async fn bf_key(bf: &RunningEmulator, id: &str) -> (f64, f64) {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/_emulator/keys", bf.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vk = v["virtualKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .expect("the VK");
    let b = vk["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["resetDuration"] == "1M")
        .cloned()
        .expect("a monthly budget");
    (
        b["maxLimit"].as_f64().unwrap(),
        b["currentUsage"].as_f64().unwrap(),
    )
}

/// Issue 21 §2: a ClusterKeyBudget across OpenRouter and Bifrost keys in two namespaces reports
/// spend per provider and namespace, and crosses 50/80/95 % once each (condition, Event,
/// metric), with one listing per provider object per pass.
#[tokio::test]
async fn a_cluster_budget_across_providers_and_namespaces_crosses_each_threshold_once() {
    let (env, bf) = two_providers().await;
    let tag = "report";
    let label = [("keysmith-test/budget", tag)];
    env.create(&key(
        NS,
        "or-a",
        "openrouter",
        &label,
        ApiKeySpec::default(),
    ))
    .await;
    env.create(&key(OTHER_NS, "bf-b", "bifrost", &label, monthly("100")))
        .await;
    env.create(&key(
        OTHER_NS,
        "or-b",
        "openrouter",
        &label,
        ApiKeySpec::default(),
    ))
    .await;
    // Not labelled: not counted.
    env.create(&key(
        NS,
        "or-free",
        "openrouter",
        &[],
        ApiKeySpec::default(),
    ))
    .await;
    let or_a = converge_in(&env, &env.ns, "or-a").await;
    let bf_b = converge_in(&env, &env.other_ns, "bf-b").await;
    let _or_b = converge_in(&env, &env.other_ns, "or-b").await;
    let or_free = converge_in(&env, &env.ns, "or-free").await;
    let name = cluster_budget(&env, tag, "10", "Report").await;

    assert_eq!(spend_or(&env, &or_free, 50.0, false).await, 200);
    assert_eq!(spend_or(&env, &or_a, 3.0, false).await, 200);
    env.reset_provider_calls().await;
    let bf_control = EmulatorControl::new(bf.url());
    bf_control.reset_stats().await;
    let r = pass(&env).await;
    println!("pass: {r:?}");
    assert_eq!(
        (r.budgets, r.keys, r.listings),
        (1, 3, 2),
        "one listing per provider object"
    );
    let or_calls = env.provider_calls().await;
    let bf_calls = bf_control.stats().await;
    println!("provider calls of one pass: openrouter {or_calls}, bifrost {bf_calls}");
    // One listing each: OpenRouter pages until an empty page (2 requests for 4 keys), Bifrost
    // answers in one; no call per key.
    assert_eq!(
        or_calls["byRoute"],
        json!({"GET /api/v1/keys": 2}),
        "one listing: {or_calls}"
    );
    assert_eq!(
        bf_calls["byRoute"],
        json!({"GET /api/governance/virtual-keys": 1}),
        "one listing: {bf_calls}"
    );
    let st = cluster_budget_status(&env, &name).await;
    assert_eq!(st.spent.as_deref(), Some("3"));
    assert_eq!(st.unit.as_deref(), Some("USD"));
    assert_eq!(st.keys_counted, 3);
    assert_eq!(st.keys_not_measured, 0, "{:?}", st.not_measured);
    assert!(threshold_events(&env).is_empty());

    // 55 %: 50 % is reached, once.
    assert_eq!(spend_bf(&bf, &bf_b, 2.5, false).await, 200);
    pass(&env).await;
    pass(&env).await;
    assert_eq!(
        threshold_events(&env).len(),
        1,
        "{:?}",
        threshold_events(&env)
    );
    let st = cluster_budget_status(&env, &name).await;
    assert_eq!(st.spent.as_deref(), Some("5.5"));
    assert_eq!(st.percent.as_deref(), Some("55%"));
    let by_provider: BTreeMap<&str, &str> = st
        .by_provider
        .iter()
        .map(|p| (p.name.as_str(), p.spent.as_str()))
        .collect();
    assert_eq!(
        by_provider,
        BTreeMap::from([("openrouter", "3"), ("bifrost", "2.5")])
    );
    let by_ns: BTreeMap<&str, &str> = st
        .by_namespace
        .iter()
        .map(|p| (p.name.as_str(), p.spent.as_str()))
        .collect();
    assert_eq!(
        by_ns,
        BTreeMap::from([(env.ns.as_str(), "3"), (env.other_ns.as_str(), "2.5")])
    );
    assert_eq!(condition(&st, "Threshold50"), Some("True"));
    assert_eq!(condition(&st, "Threshold80"), Some("False"));

    // 85 %, then 100 %: 80 and 95 once each, whatever the passes in between.
    assert_eq!(spend_or(&env, &or_a, 3.0, false).await, 200);
    pass(&env).await;
    pass(&env).await;
    assert_eq!(spend_bf(&bf, &bf_b, 1.5, false).await, 200);
    pass(&env).await;
    pass(&env).await;
    let events = threshold_events(&env);
    assert_eq!(events.len(), 3, "{events:?}");
    for t in ["50%", "80%", "95%"] {
        assert_eq!(
            events.iter().filter(|e| e.starts_with(t)).count(),
            1,
            "{t}: {events:?}"
        );
    }
    let st = cluster_budget_status(&env, &name).await;
    assert_eq!(st.spent.as_deref(), Some("10"));
    assert_eq!(st.remaining.as_deref(), Some("0"));
    assert_eq!(st.thresholds_reached, vec![0.5, 0.8, 0.95]);
    assert_eq!(condition(&st, "Threshold95"), Some("True"));
    assert_eq!(condition(&st, "Exceeded"), Some("True"));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &env.ctx.metrics.registry).unwrap();
    let crossed =
        format!("keysmith_budget_thresholds_reached_total{{namespace=\"\",budget=\"{name}\"}} 3");
    assert!(
        text.contains(&crossed),
        "{crossed} in:\n{}",
        metric_lines(&text)
    );
    assert!(
        !text.contains(&or_a) && !text.contains(&bf_b),
        "no key id in a metric"
    );
    delete_cluster_budget(&env, &name).await;
}

fn metric_lines(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains("keysmith_budget"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Issue 21 §2: with `Throttle`, keys spending as fast as their providers let them never take
/// the budget's keys past the cap together: OpenRouter refuses a request past a key's limit,
/// Bifrost admits a request while a budget is not used up (so one request may pass it). The
/// ApiKey sync leaves the throttled limit alone, and `Report` gives the spec's limit back.
#[tokio::test]
async fn throttle_keeps_the_keys_under_the_cap() {
    let (env, bf) = two_providers().await;
    let tag = "throttle";
    let label = [("keysmith-test/budget", tag)];
    env.create(&key(NS, "or-a", "openrouter", &label, monthly("50")))
        .await;
    env.create(&key(
        OTHER_NS,
        "or-b",
        "openrouter",
        &label,
        ApiKeySpec::default(),
    ))
    .await;
    env.create(&key(OTHER_NS, "bf-b", "bifrost", &label, monthly("100")))
        .await;
    let or_a = converge_in(&env, &env.ns, "or-a").await;
    let or_b = converge_in(&env, &env.other_ns, "or-b").await;
    let bf_b = converge_in(&env, &env.other_ns, "bf-b").await;
    let name = cluster_budget(&env, tag, "10", "Throttle").await;
    let request = 0.5;

    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 30, "spend never stopped");
        pass(&env).await;
        let mut admitted = 0;
        for _ in 0..40 {
            let mut any = false;
            for id in [&or_a, &or_b] {
                if spend_or(&env, id, request, true).await == 200 {
                    admitted += 1;
                    any = true;
                }
            }
            if spend_bf(&bf, &bf_b, request, true).await == 200 {
                admitted += 1;
                any = true;
            }
            if !any {
                break;
            }
        }
        if admitted == 0 {
            break;
        }
    }
    let (a_limit, a_spent, _) = or_key(&env, &or_a).await;
    let (b_limit, b_spent, _) = or_key(&env, &or_b).await;
    let (bf_limit, bf_spent) = bf_key(&bf, &bf_b).await;
    let total = a_spent + b_spent + bf_spent;
    println!(
        "after {rounds} passes: openrouter {a_spent}/{a_limit:?} and {b_spent}/{b_limit:?}, bifrost {bf_spent}/{bf_limit}; total {total} of 10"
    );
    assert!(a_spent <= a_limit.unwrap() + 1e-9 && b_spent <= b_limit.unwrap() + 1e-9);
    assert!(
        total <= 10.0 + request + 1e-9,
        "the keys spent {total} of a 10 budget"
    );
    assert!(
        total >= 10.0 - 3.0 * request,
        "the budget was usable: {total}"
    );
    let st = cluster_budget_status(&env, &name).await;
    assert!(
        st.enforcement
            .as_deref()
            .unwrap_or("")
            .starts_with("Throttle: 3 keys"),
        "{st:?}"
    );

    // The ApiKey sync (a fresh read after a spec change) keeps the throttled limit.
    env.touch("or-a", "after-throttle").await;
    env.reconcile("or-a").await.unwrap();
    assert_eq!(
        or_key(&env, &or_a).await.0,
        a_limit,
        "the sync did not undo the throttle"
    );

    // Report: the spec's limits come back (or-a: 50 monthly; or-b: none).
    Api::<ClusterKeyBudget>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"onExceeded": "Report"}})),
        )
        .await
        .unwrap();
    let r = pass(&env).await;
    assert!(r.updates >= 2, "{r:?}");
    assert_eq!(or_key(&env, &or_a).await.0, Some(50.0));
    assert_eq!(or_key(&env, &or_b).await.0, None);
    assert_eq!(bf_key(&bf, &bf_b).await.0, 100.0);
    delete_cluster_budget(&env, &name).await;
}

/// Tenancy: a KeyBudget counts and acts on keys of its own namespace only, even when an ApiKey
/// of another namespace carries its labels, and a key id two ApiKeys claim (one forged it in
/// its status) counts for neither and is never throttled.
#[tokio::test]
async fn a_key_budget_never_counts_or_throttles_a_key_of_another_namespace() {
    let env = crate::openrouter::env().await;
    let label = [("team", "x")];
    env.create(&key(
        NS,
        "mine",
        "openrouter",
        &label,
        ApiKeySpec::default(),
    ))
    .await;
    env.create(&key(
        OTHER_NS,
        "theirs",
        "openrouter",
        &label,
        monthly("40"),
    ))
    .await;
    let mine = converge_in(&env, &env.ns, "mine").await;
    let theirs = converge_in(&env, &env.other_ns, "theirs").await;
    // A tenant of NS forges an ApiKey whose status claims the other namespace's key.
    env.create(&key(
        NS,
        "forged",
        "openrouter",
        &label,
        ApiKeySpec::default(),
    ))
    .await;
    env.apikeys()
        .patch_status(
            "forged",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"keyID": theirs}})),
        )
        .await
        .unwrap();
    assert_eq!(spend_or(&env, &mine, 1.0, false).await, 200);
    assert_eq!(spend_or(&env, &theirs, 7.0, false).await, 200);

    let b: KeyBudget = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "KeyBudget",
        "metadata": { "name": "team-x", "namespace": env.ns },
        "spec": { "selector": { "matchLabels": { "team": "x" } }, "amount": "10",
                  "period": "monthly", "onExceeded": "Throttle" },
    }))
    .unwrap();
    let budgets: Api<KeyBudget> = Api::namespaced(env.client.clone(), &env.ns);
    budgets.create(&PostParams::default(), &b).await.unwrap();
    env.ctx.listings.forget(&format!(
        "ClusterKeyProvider/{}",
        env.cluster_provider_name("openrouter")
    ));
    own_pass(&env).await;

    let st = budgets.get("team-x").await.unwrap().status.unwrap();
    assert_eq!(st.spent.as_deref(), Some("1"), "only its own key: {st:?}");
    assert_eq!(st.keys_counted, 1);
    assert_eq!(st.keys_not_measured, 1);
    assert_eq!(st.not_measured[0].name, "forged");
    assert!(
        st.not_measured[0]
            .reason
            .contains("claimed by another ApiKey"),
        "{st:?}"
    );
    assert_eq!(st.by_namespace.len(), 1);
    // The other namespace's key keeps its own limit; the budget's own key is throttled.
    assert_eq!(or_key(&env, &theirs).await.0, Some(40.0));
    assert_eq!(or_key(&env, &mine).await.0, Some(10.0), "1 spent + 9 left");
}

/// `Disable`: at the cap the keys are disabled at the provider; neither the ApiKey sync nor an
/// operator restart (holds forgotten until the first pass) enables them again; under the
/// amount again (here: a larger amount, as a new period would) they are enabled.
#[tokio::test]
async fn disable_at_the_cap_survives_the_sync_and_a_restart() {
    let env = crate::openrouter::env().await;
    env.create(&key(
        NS,
        "k",
        "openrouter",
        &[("team", "y")],
        ApiKeySpec::default(),
    ))
    .await;
    let id = converge_in(&env, &env.ns, "k").await;
    let b: KeyBudget = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "KeyBudget",
        "metadata": { "name": "cap", "namespace": env.ns },
        "spec": { "selector": { "matchLabels": { "team": "y" } }, "amount": "2",
                  "period": "daily", "onExceeded": "Disable" },
    }))
    .unwrap();
    let budgets: Api<KeyBudget> = Api::namespaced(env.client.clone(), &env.ns);
    budgets.create(&PostParams::default(), &b).await.unwrap();
    let provider = format!(
        "ClusterKeyProvider/{}",
        env.cluster_provider_name("openrouter")
    );

    assert_eq!(spend_or(&env, &id, 2.0, true).await, 200);
    env.ctx.listings.forget(&provider);
    let r = own_pass(&env).await;
    assert_eq!(r.updates, 1);
    assert!(or_key(&env, &id).await.2, "disabled at the provider");
    assert_eq!(
        spend_or(&env, &id, 0.1, true).await,
        401,
        "the key is refused"
    );
    assert!(env
        .events()
        .iter()
        .any(|(_, r, n)| r == "BudgetEnforced" && n.contains("disabled")));

    // The sync keeps it disabled.
    env.touch("k", "1").await;
    env.reconcile("k").await.unwrap();
    assert!(or_key(&env, &id).await.2, "the sync did not enable it");
    // A restart: nothing held, the budgets not added up yet. The sync leaves it alone; the
    // first pass holds it again from the provider's figures.
    env.ctx.budgets.wait_for_first_pass();
    assert_eq!(env.ctx.budgets.held(), 0);
    env.touch("k", "2").await;
    env.reconcile("k").await.unwrap();
    assert!(
        or_key(&env, &id).await.2,
        "not enabled before the budgets were added up"
    );
    env.ctx.listings.forget(&provider);
    own_pass(&env).await;
    assert!(env.ctx.budgets.settled());
    assert_eq!(env.ctx.budgets.held(), 1);
    env.touch("k", "3").await;
    env.reconcile("k").await.unwrap();
    assert!(or_key(&env, &id).await.2);

    // Under the amount again: enabled.
    budgets
        .patch(
            "cap",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"amount": "5"}})),
        )
        .await
        .unwrap();
    env.ctx.listings.forget(&provider);
    own_pass(&env).await;
    assert!(!or_key(&env, &id).await.2, "enabled again");
    assert_eq!(spend_or(&env, &id, 0.1, true).await, 200);
}

/// A key budget `name` in the env's namespace over ApiKeys labelled `team=<team>`.
async fn key_budget(env: &Env, name: &str, team: &str, amount: &str, on_exceeded: &str) {
    let b: KeyBudget = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "KeyBudget",
        "metadata": { "name": name, "namespace": env.ns },
        "spec": { "selector": { "matchLabels": { "team": team } }, "amount": amount,
                  "period": "monthly", "onExceeded": on_exceeded },
    }))
    .unwrap();
    Api::<KeyBudget>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &b)
        .await
        .expect("KeyBudget created");
}

async fn or_pass(env: &Env) -> controller::PassReport {
    env.ctx.listings.forget(&format!(
        "ClusterKeyProvider/{}",
        env.cluster_provider_name("openrouter")
    ));
    own_pass(env).await
}

/// A key created while a `Throttle` budget holds its group is created throttled (limit 0 over
/// the budget's period: the measured keys' shares add up to the amount), and its sync keeps
/// that, until the next pass gives it its share out of the others'. Before: it was created with
/// its spec's limit and could spend past the cap until the next pass.
#[tokio::test]
async fn a_key_created_while_a_budget_throttles_its_group_is_created_throttled() {
    let env = crate::openrouter::env().await;
    let label = [("team", "late")];
    env.create(&key(NS, "first", "openrouter", &label, monthly("50")))
        .await;
    let first = converge_in(&env, &env.ns, "first").await;
    key_budget(&env, "cap", "late", "10", "Throttle").await;
    assert_eq!(spend_or(&env, &first, 4.0, false).await, 200);
    or_pass(&env).await;
    assert_eq!(or_key(&env, &first).await.0, Some(10.0), "4 spent + 6 left");

    // No pass between the ApiKey and its key.
    env.create(&key(NS, "late", "openrouter", &label, monthly("50")))
        .await;
    let late = converge_in(&env, &env.ns, "late").await;
    let (limit, _, _) = or_key(&env, &late).await;
    assert_eq!(
        limit,
        Some(0.0),
        "created throttled, not with its spec's 50"
    );
    let keys = env.emulator_keys().await;
    let k = keys.iter().find(|k| k["hash"] == late.as_str()).unwrap();
    assert_eq!(k["settings"]["limitReset"], "monthly");
    assert_eq!(
        spend_or(&env, &late, 0.5, true).await,
        402,
        "it cannot spend"
    );
    // Its sync keeps it so (the listing does not show the new key's hold lifted).
    env.touch("late", "synced").await;
    env.reconcile("late").await.unwrap();
    assert_eq!(or_key(&env, &late).await.0, Some(0.0));

    // The next pass shares what is left between the two: 4 + 3 and 0 + 3.
    or_pass(&env).await;
    assert_eq!(or_key(&env, &first).await.0, Some(7.0));
    assert_eq!(or_key(&env, &late).await.0, Some(3.0));
}

/// A key created while a `Disable` budget is at its cap is created disabled.
#[tokio::test]
async fn a_key_created_while_a_budget_disables_its_group_is_created_disabled() {
    let env = crate::openrouter::env().await;
    let label = [("team", "off")];
    env.create(&key(
        NS,
        "first",
        "openrouter",
        &label,
        ApiKeySpec::default(),
    ))
    .await;
    let first = converge_in(&env, &env.ns, "first").await;
    key_budget(&env, "cap", "off", "2", "Disable").await;
    assert_eq!(spend_or(&env, &first, 2.0, false).await, 200);
    or_pass(&env).await;
    assert!(or_key(&env, &first).await.2, "disabled at the cap");

    env.create(&key(
        NS,
        "late",
        "openrouter",
        &label,
        ApiKeySpec::default(),
    ))
    .await;
    let late = converge_in(&env, &env.ns, "late").await;
    assert!(or_key(&env, &late).await.2, "created disabled");
    assert_eq!(spend_or(&env, &late, 0.1, true).await, 401);
    env.touch("late", "synced").await;
    env.reconcile("late").await.unwrap();
    assert!(or_key(&env, &late).await.2, "the sync keeps it disabled");
}

/// The first instant of next month (UTC) plus an hour: a budget pass "then".
fn next_month() -> chrono::DateTime<chrono::Utc> {
    use chrono::{Datelike, TimeZone};
    let now = chrono::Utc::now();
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    chrono::Utc.with_ymd_and_hms(y, m, 1, 1, 0, 0).unwrap()
}

/// A budget pass over this test's budgets as if the clock read `now`, on fresh listings.
async fn or_pass_at(env: &Env, now: chrono::DateTime<chrono::Utc>) -> controller::PassReport {
    env.ctx.listings.forget(&format!(
        "ClusterKeyProvider/{}",
        env.cluster_provider_name("openrouter")
    ));
    let ns = env.ns.clone();
    controller::pass_over_at(&env.ctx, &move |n, _| n == Some(ns.as_str()), now)
        .await
        .expect("budget pass")
}

/// The provider's period ends (the emulator's monthly spend restarts at 0, as OpenRouter's does
/// on the 1st) and the budget pass runs in the new month: a `Throttle` gives each key its own
/// limit back where it is lower than its new share, the thresholds start over (Event
/// `BudgetPeriodReset`), and a `Disable` enables its keys again.
#[tokio::test]
async fn a_period_reset_restores_throttled_limits_and_enables_disabled_keys() {
    let env = crate::openrouter::env().await;
    let label = [("team", "reset")];
    env.create(&key(NS, "a", "openrouter", &label, monthly("4")))
        .await;
    env.create(&key(NS, "b", "openrouter", &label, monthly("4")))
        .await;
    env.create(&key(NS, "c", "openrouter", &label, ApiKeySpec::default()))
        .await;
    env.create(&key(
        NS,
        "d",
        "openrouter",
        &[("team", "reset-off")],
        ApiKeySpec::default(),
    ))
    .await;
    let a = converge_in(&env, &env.ns, "a").await;
    let b = converge_in(&env, &env.ns, "b").await;
    let c = converge_in(&env, &env.ns, "c").await;
    let d = converge_in(&env, &env.ns, "d").await;
    key_budget(&env, "throttle", "reset", "30", "Throttle").await;
    key_budget(&env, "off", "reset-off", "2", "Disable").await;

    // This month: c spent 27 of 30 and d its whole 2.
    assert_eq!(spend_or(&env, &c, 27.0, false).await, 200);
    assert_eq!(spend_or(&env, &d, 2.0, false).await, 200);
    or_pass(&env).await;
    assert_eq!(or_key(&env, &a).await.0, Some(1.0), "0 spent + 1 of 3 left");
    assert_eq!(or_key(&env, &b).await.0, Some(1.0));
    assert_eq!(or_key(&env, &c).await.0, Some(28.0));
    assert!(or_key(&env, &d).await.2, "d disabled at the cap");
    let budgets: Api<KeyBudget> = Api::namespaced(env.client.clone(), &env.ns);
    let st = budgets.get("throttle").await.unwrap().status.unwrap();
    assert_eq!(st.thresholds_reached, vec![0.5, 0.8]);

    // The 1st of next month: the provider's monthly spend restarts, and so does the budget's.
    let (code, _) = env
        .emulator_post("/_emulator/reset-period", json!({"period": "monthly"}))
        .await;
    assert_eq!(code, 200);
    let then = next_month();
    or_pass_at(&env, then).await;
    // a and b: their own 4 (lower than a share of 10); c: its share.
    assert_eq!(or_key(&env, &a).await.0, Some(4.0), "a's own limit back");
    assert_eq!(or_key(&env, &b).await.0, Some(4.0), "b's own limit back");
    assert_eq!(or_key(&env, &c).await.0, Some(10.0));
    assert!(!or_key(&env, &d).await.2, "d enabled again");
    assert_eq!(spend_or(&env, &d, 0.5, true).await, 200, "d works again");
    let st = budgets.get("throttle").await.unwrap().status.unwrap();
    assert!(st.thresholds_reached.is_empty(), "{st:?}");
    assert_eq!(
        st.period_start.as_deref(),
        Some(&*keysmith::controller::ts(
            then.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc()
        ))
    );
    assert_eq!(condition(&st, "Threshold50"), Some("False"));
    let resets = env
        .events()
        .into_iter()
        .filter(|e| e.1 == "BudgetPeriodReset")
        .count();
    assert_eq!(resets, 2, "one per budget");
    // The ApiKey sync agrees (a spec edit reads each key fresh).
    for (name, id, want) in [("a", &a, Some(4.0)), ("c", &c, Some(10.0))] {
        env.touch(name, "after-reset").await;
        env.reconcile(name).await.unwrap();
        assert_eq!(or_key(&env, id).await.0, want, "{name}");
    }
}

/// docs/performance.md: what one budget pass costs over 1,000 ApiKeys of one provider object
/// under a KeyBudget and a ClusterKeyBudget: provider calls (one paged listing, shared with the
/// ApiKey reconciles, none at all while that listing is fresh), Kubernetes requests, time.
#[tokio::test]
async fn refresh_cost_of_1000_keys_under_budgets() {
    const N: usize = 1000;
    let env = crate::openrouter::env().await;
    let http = reqwest::Client::new();
    let base = format!("{}/api/v1", env.emulator.url());
    let provider = env.cluster_provider_name("openrouter");
    let apikeys = env.apikeys();
    let started = std::time::Instant::now();
    for i in 0..N {
        let name = format!("k{i:04}");
        let created: Value = http
            .post(format!("{base}/keys"))
            .bearer_auth(crate::openrouter::MGMT)
            .json(&json!({"name": format!("{}/{name}", env.ns)}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["data"]["hash"].as_str().unwrap().to_string();
        let mut ak = key(
            NS,
            &name,
            "openrouter",
            &[("team", "bulk")],
            ApiKeySpec::default(),
        );
        ak.metadata.namespace = Some(env.ns.clone());
        ak.spec.provider_ref.name = provider.clone();
        apikeys.create(&PostParams::default(), &ak).await.unwrap();
        apikeys
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"keyID": id}})),
            )
            .await
            .unwrap();
        if i % 10 == 0 {
            assert_eq!(spend_or(&env, &id, 0.01, false).await, 200);
        }
    }
    println!("set up {N} keys in {:?}", started.elapsed());
    let b: KeyBudget = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "KeyBudget",
        "metadata": { "name": "bulk", "namespace": env.ns },
        "spec": { "selector": { "matchLabels": { "team": "bulk" } }, "amount": "100",
                  "period": "monthly" },
    }))
    .unwrap();
    Api::<KeyBudget>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &b)
        .await
        .unwrap();
    let name = cluster_budget(&env, "bulk", "100", "Report").await;
    // The ClusterKeyBudget selects by the test's label; relabel nothing, reuse team=bulk.
    Api::<ClusterKeyBudget>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"keysmith-test/budget": null, "team": "bulk"}}}})),
        )
        .await
        .unwrap();

    for (label, fresh) in [("listing taken", true), ("listing shared", false)] {
        if fresh {
            env.ctx
                .listings
                .forget(&format!("ClusterKeyProvider/{provider}"));
        }
        env.reset_provider_calls().await;
        env.take_writes();
        let t = std::time::Instant::now();
        let r = own_pass(&env).await;
        let took = t.elapsed();
        let calls = env.provider_calls().await;
        let writes = env.take_writes().len();
        println!(
            "budget pass over {N} keys, 2 budgets ({label}): {took:?}, provider requests {} ({}), listings {}, Kubernetes writes {writes}, {r:?}",
            calls["requests"], calls["byRoute"], r.listings
        );
        assert_eq!(r.keys, N);
        assert_eq!(r.listings, 1, "one listing per provider object");
        let pages = N.div_ceil(100) + 1; // OpenRouter: pages of 100 until an empty one
        let requests = calls["requests"].as_u64().unwrap() as usize;
        if fresh {
            assert!(requests <= pages, "one paged listing: {calls}");
        } else {
            assert_eq!(requests, 0, "the shared listing is reused: {calls}");
        }
    }
    let st = Api::<KeyBudget>::namespaced(env.client.clone(), &env.ns)
        .get("bulk")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.keys_counted, N as i64);
    assert_eq!(st.spent.as_deref(), Some("1"));
    delete_cluster_budget(&env, &name).await;
}
