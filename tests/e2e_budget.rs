//! Budgets end to end (issue 21 §2): the `keysmith` binary, an OpenRouter and a Bifrost emulator
//! (child processes) and a ClusterKeyBudget across keys of both in two namespaces. Spend driven
//! by the emulators' own `POST /_emulator/usage` crosses 50/80/95 % once each (one Event each,
//! not repeated by later passes), and `kubectl get keybudgets` / `clusterkeybudgets` show
//! SPENT, LIMIT and % (the server-side Table kubectl prints).
//!
//! Needs the local control plane (see docs/testing.md): `#[ignore]`d, run with `--ignored`.

use keysmith_testkit::cluster;

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};

use cluster::{is_ready, Cluster, EmulatorOptions, ProviderOptions, RUN_LABEL};
use keysmith::api::{ApiKey, ClusterKeyBudget, KeyBudget};

const WAIT: Duration = Duration::from_secs(150);

/// An ApiKey of the run in `ns` through ClusterKeyProvider `provider`, labelled `budget=e2e`.
async fn apikey(c: &Cluster, ns: &str, name: &str, provider: &str, spec: Value) {
    let mut s = json!({ "providerRef": { "kind": "ClusterKeyProvider", "name": provider } });
    if let (Some(s), Value::Object(extra)) = (s.as_object_mut(), spec) {
        s.extend(extra);
    }
    let ak: ApiKey = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey",
        "metadata": { "name": name, "namespace": ns,
                      "labels": { RUN_LABEL: c.run, "budget": "e2e" } },
        "spec": s,
    }))
    .unwrap();
    Api::<ApiKey>::namespaced(c.client.clone(), ns)
        .create(&PostParams::default(), &ak)
        .await
        .unwrap_or_else(|e| panic!("ApiKey {ns}/{name}: {e}"));
}

async fn key_id(c: &Cluster, ns: &str, name: &str) -> String {
    let api: Api<ApiKey> = Api::namespaced(c.client.clone(), ns);
    c.eventually(&format!("{ns}/{name} Ready"), WAIT, || {
        let api = api.clone();
        async move {
            match api.get(name).await {
                Ok(ak) if is_ready(&ak) => Ok(ak.status.unwrap().key_id.unwrap()),
                Ok(ak) => Err(format!("{:?}", ak.status)),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

async fn spend(c: &Cluster, url: &str, body: Value) {
    let s = c
        .http
        .post(format!("{url}/_emulator/usage"))
        .json(&body)
        .send()
        .await
        .expect("the emulator answers")
        .status();
    assert_eq!(s.as_u16(), 200, "spend {body}");
}

/// The Events of ClusterKeyBudget `name` with `reason`, wherever they were recorded.
async fn events(c: &Cluster, name: &str, reason: &str) -> Vec<String> {
    Api::<Event>::all(c.client.clone())
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

/// The Table `kubectl get` prints for `path`: column names and the first row's cells.
async fn table(c: &Cluster, path: &str) -> (Vec<String>, Vec<Value>) {
    let req = http::Request::get(path)
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .unwrap();
    let t: Value = c.client.request(req).await.expect("a Table");
    let cols = t["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|d| d["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let row = t["rows"][0]["cells"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (cols, row)
}

#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test]
async fn a_cluster_budget_across_openrouter_and_bifrost_in_two_namespaces() {
    cluster::require("a_cluster_budget_across_openrouter_and_bifrost_in_two_namespaces");
    let fast = ProviderOptions {
        refresh_interval: Some("10s".into()),
        ..Default::default()
    };
    let c = Cluster::start("budget", EmulatorOptions::default(), fast.clone()).await;
    let bifrost = cluster::ProviderSetup {
        emulator: "bifrost",
        emulator_args: vec![],
        emulator_env: vec![],
        credentials: None,
        spec: Box::new(|url, _| json!({ "bifrost": { "baseURL": url } })),
    };
    let (bf, bf_provider) = c
        .add_provider("bf", bifrost, EmulatorOptions::default(), fast)
        .await;
    let ns2 = c.add_namespace("b").await;
    let (ns, or) = (c.ns.clone(), c.provider.clone());
    let monthly = json!({ "limit": { "amount": "100", "reset": "monthly" } });
    apikey(&c, &ns, "or-a", &or, json!({})).await;
    apikey(&c, &ns2, "or-b", &or, json!({})).await;
    apikey(&c, &ns2, "bf-b", &bf_provider, monthly).await;
    let name = format!("ks-e2e-{}-budget", c.run);
    let b: ClusterKeyBudget = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "ClusterKeyBudget",
        "metadata": { "name": name },
        "spec": {
            "namespaceSelector": { "matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns, ns2],
            }]},
            "selector": { "matchLabels": { "budget": "e2e" } },
            "amount": "10", "period": "monthly",
        },
    }))
    .unwrap();
    let cluster_budgets: Api<ClusterKeyBudget> = Api::all(c.client.clone());
    cluster_budgets
        .create(&PostParams::default(), &b)
        .await
        .expect("ClusterKeyBudget");
    let kb: KeyBudget = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "KeyBudget",
        "metadata": { "name": "team", "namespace": ns },
        "spec": { "selector": { "matchLabels": { "budget": "e2e" } }, "amount": "10",
                  "period": "monthly" },
    }))
    .unwrap();
    Api::<KeyBudget>::namespaced(c.client.clone(), &ns)
        .create(&PostParams::default(), &kb)
        .await
        .expect("KeyBudget");

    let _op = c.start_operator("op", &[]).await;
    let or_a = key_id(&c, &ns, "or-a").await;
    let _or_b = key_id(&c, &ns2, "or-b").await;
    let bf_b = key_id(&c, &ns2, "bf-b").await;

    let reached = |want: usize| {
        let api = cluster_budgets.clone();
        let name = name.clone();
        async move {
            let st = api
                .get(&name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if st.thresholds_reached.len() == want && st.keys_counted == 3 {
                Ok(st)
            } else {
                Err(format!("{st:?}"))
            }
        }
    };
    let steps: [(&str, Value, usize); 4] = [
        ("3 spent", json!({"hash": or_a, "amount": 3.0}), 0),
        ("5.5: 50%", json!({"vkId": bf_b, "amount": 2.5}), 1),
        ("8.5: 80%", json!({"hash": or_a, "amount": 3.0}), 2),
        ("10: 95%", json!({"vkId": bf_b, "amount": 1.5}), 3),
    ];
    let started = std::time::Instant::now();
    for (what, body, want) in steps {
        let url = if body.get("vkId").is_some() {
            bf.url.clone()
        } else {
            c.emulator.url.clone()
        };
        spend(&c, &url, body).await;
        let st = c.eventually(what, WAIT, || reached(want)).await;
        println!(
            "{what}: spent {:?} ({:?}) after {:.0?}",
            st.spent,
            st.percent,
            started.elapsed()
        );
    }
    let st = reached(3).await.unwrap();
    assert_eq!(st.spent.as_deref(), Some("10"));
    assert_eq!(st.thresholds_reached, vec![0.5, 0.8, 0.95]);
    let mut by_ns: Vec<(String, String)> = st
        .by_namespace
        .iter()
        .map(|p| (p.name.clone(), p.spent.clone()))
        .collect();
    by_ns.sort();
    let mut want_ns = vec![
        (ns.clone(), "6".to_string()),
        (ns2.clone(), "4".to_string()),
    ];
    want_ns.sort();
    assert_eq!(by_ns, want_ns);

    // Each threshold once, also after two more passes.
    tokio::time::sleep(Duration::from_secs(65)).await;
    let told = events(&c, &name, "BudgetThresholdReached").await;
    assert_eq!(told.len(), 3, "{told:?}");
    for t in ["50%", "80%", "95%"] {
        assert_eq!(
            told.iter().filter(|m| m.starts_with(t)).count(),
            1,
            "{t}: {told:?}"
        );
    }

    // `kubectl get keybudgets` / `clusterkeybudgets`: SPENT, LIMIT, %.
    let (cols, row) = table(
        &c,
        &format!("/apis/keysmith.dev/v1alpha1/namespaces/{ns}/keybudgets"),
    )
    .await;
    println!("kubectl get keybudgets: {cols:?} {row:?}");
    let at = |name: &str| cols.iter().position(|c| c == name).expect(name);
    assert_eq!(row[at("Spent")], "6", "only the namespace's own key");
    assert_eq!(row[at("Limit")], "10");
    assert_eq!(row[at("%")], "60%");
    let (cols, _) = table(&c, "/apis/keysmith.dev/v1alpha1/clusterkeybudgets").await;
    for col in ["Spent", "Limit", "%"] {
        assert!(cols.iter().any(|c| c == col), "{col} in {cols:?}");
    }
    let _ = cluster_budgets.delete(&name, &Default::default()).await;
}
