//! Leader election of `keysmith run --leader-elect` as processes on a real API server: replicas
//! racing for an expired Lease elect one leader at a time; a leader paused (SIGSTOP) past its
//! Lease is replaced, and once resumed (SIGCONT) it makes no provider write and no Kubernetes
//! write before it steps down (fencing). See docs/e2e.md.

use keysmith_testkit::cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use cluster::{Cluster, EmulatorOptions, Operator, ProviderOptions};

const MINUTE: Duration = Duration::from_secs(60);

fn holder_of(lease: Option<Lease>) -> Option<String> {
    lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

fn signal(op: &Operator, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(op.pid).expect("a pid");
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// Which operators say they lead, by their `keysmith_leader` gauge.
async fn leaders(c: &Cluster, ops: &[&Operator]) -> Vec<String> {
    let mut out = Vec::new();
    for op in ops {
        let r = c
            .http
            .get(format!("http://{}/metrics", op.metrics_addr))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let Ok(r) = r else { continue }; // exited: not leading
        let Ok(text) = r.text().await else { continue };
        if text.lines().any(|l| l.trim() == "keysmith_leader 1") {
            out.push(op.name.clone());
        }
    }
    out
}

/// Lines of an operator's log that contain `what`.
fn log_count(op: &Operator, what: &str) -> usize {
    std::fs::read_to_string(&op.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// A Lease left by a replica that died holding it (its record does not change any more).
async fn dead_holder_lease(c: &Cluster, name: &str, seconds: i32) {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("dead-replica".into()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(3),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(c.client.clone(), &c.operator_ns)
        .create(&PostParams::default(), &lease)
        .await
        .expect("Lease created");
}

/// Three replicas start while a dead replica's Lease is still current: they all see it expire
/// at about the same time and race for it. The leaders (by each one's `keysmith_leader` gauge)
/// and the Lease's holder are polled many times: never more than one leader. Then the leader
/// is SIGKILLed twice, and the survivors race again each time.
#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_for_an_expired_lease_have_one_leader_at_a_time() {
    cluster::require("replicas_racing_for_an_expired_lease_have_one_leader_at_a_time");
    const LEASE_SECONDS: u64 = 4;
    let cluster = Cluster::start(
        "race",
        EmulatorOptions::default(),
        ProviderOptions::default(),
    )
    .await;
    let c = &cluster;
    let lease = format!("keysmith-e2e-{}", c.run);
    dead_holder_lease(c, &lease, LEASE_SECONDS as i32).await;
    let seconds = LEASE_SECONDS.to_string();
    let flags = [
        "--leader-elect",
        "--lease-name",
        &lease,
        "--lease-duration",
        &seconds,
    ];
    let mut ops = Vec::new();
    for i in 0..3 {
        ops.push(
            c.start_operator(&format!("e2e-{}-{i}", c.run), &flags)
                .await,
        );
    }
    // The dead replica "renews" once more now that all three watch: they all see the record
    // change within one poll period of each other, and all find it expired at about the same
    // time.
    Api::<Lease>::namespaced(c.client.clone(), &c.operator_ns)
        .patch(
            &lease,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({ "spec": { "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()) } }),
            ),
        )
        .await
        .expect("Lease renewed");
    let mut dead: Vec<Operator> = Vec::new();
    let mut max_at_once = 0;
    let mut polls = 0;
    let mut rounds = Vec::new();
    for round in 0..3 {
        // Watch for three lease durations (more than a takeover takes).
        let start = Instant::now();
        let mut leader: Option<String> = None;
        let mut took = None;
        while start.elapsed() < Duration::from_secs(3 * LEASE_SECONDS) {
            let alive: Vec<&Operator> = ops.iter().collect();
            let now = leaders(c, &alive).await;
            let holder = holder_of(c.lease(&lease).await);
            polls += 1;
            max_at_once = max_at_once.max(now.len());
            assert!(
                now.len() <= 1,
                "round {round}: {} replicas lead at once: {now:?} (Lease holder {holder:?})",
                now.len()
            );
            if let [one] = now.as_slice() {
                // The one that says it leads is the one the Lease names.
                assert_eq!(holder.as_deref(), Some(one.as_str()), "round {round}");
                if leader.is_none() {
                    took = Some(start.elapsed());
                }
                if let Some(l) = &leader {
                    assert_eq!(l, one, "round {round}: leadership changed hands");
                }
                leader = Some(one.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let leader = leader.unwrap_or_else(|| panic!("round {round}: no leader"));
        let became: usize = ops
            .iter()
            .chain(dead.iter())
            .map(|o| log_count(o, "became leader"))
            .sum();
        assert_eq!(became, round + 1, "one 'became leader' per round");
        rounds.push(format!(
            "round {round}: {} replicas, {leader} led after {:.1}s",
            ops.len(),
            took.unwrap_or_default().as_secs_f64()
        ));
        if round == 2 {
            break;
        }
        // The leader dies without releasing: the others race for its Lease.
        let i = ops.iter().position(|o| o.name == leader).unwrap();
        let mut gone = ops.remove(i);
        gone.kill().await;
        dead.push(gone);
    }
    eprintln!(
        "{}; {polls} polls of every replica's keysmith_leader gauge and the Lease: at most {max_at_once} leader(s) at once",
        rounds.join("; ")
    );
    // The survivor works.
    c.create_apikey("after-race", json!({})).await;
    c.wait_ready("after-race", MINUTE).await;
}

/// resourceVersions of the test namespace's Secrets, ApiKeys and Events.
async fn versions(c: &Cluster) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in c
        .secrets()
        .list(&ListParams::default())
        .await
        .expect("Secrets")
    {
        out.insert(
            format!("Secret/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    for a in c
        .apikeys()
        .list(&ListParams::default())
        .await
        .expect("ApiKeys")
    {
        out.insert(
            format!("ApiKey/{}", a.name_any()),
            a.resource_version().unwrap_or_default(),
        );
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), &c.ns);
    for e in events.list(&ListParams::default()).await.expect("Events") {
        out.insert(
            format!("Event/{}", e.name_any()),
            e.resource_version().unwrap_or_default(),
        );
    }
    out
}

/// Requests the emulator served that write (any method but GET), by route.
fn provider_writes(stats: &Value) -> BTreeMap<String, u64> {
    stats["byRoute"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(route, _)| !route.starts_with("GET "))
                .filter_map(|(route, n)| Some((route.clone(), n.as_u64()?)))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default()
}

/// The leader is paused (SIGSTOP) past its Lease while work arrives for it (new ApiKeys, a
/// changed one); the standby takes over and does that work. Then the new leader is paused too
/// and the old one resumed (SIGCONT): with only the old one running, the emulator counts its
/// provider writes and the Secrets' and ApiKeys' resourceVersions show its Kubernetes writes.
/// Target: none; it steps down.
#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_when_resumed() {
    cluster::require("a_leader_paused_past_its_lease_writes_nothing_when_resumed");
    const LEASE_SECONDS: u64 = 8;
    // A slow provider: creates are in flight when the leader is paused; their answers wait in
    // its sockets (or its request timeouts expire) while it is stopped.
    let emu = EmulatorOptions {
        latency: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    let cluster = Cluster::start("pause", emu, ProviderOptions::default()).await;
    let c = &cluster;
    let lease = format!("keysmith-e2e-{}", c.run);
    let seconds = LEASE_SECONDS.to_string();
    let flags = [
        "--leader-elect",
        "--lease-name",
        &lease,
        "--lease-duration",
        &seconds,
    ];
    let a = c.start_operator(&format!("e2e-{}-a", c.run), &flags).await;
    let b = c.start_operator(&format!("e2e-{}-b", c.run), &flags).await;
    let lease_name = lease.as_str();
    let first = c
        .eventually("a Lease holder", MINUTE, || async move {
            holder_of(c.lease(lease_name).await).ok_or_else(|| "no holder".to_string())
        })
        .await;
    let (old, new) = if first == a.name { (&a, &b) } else { (&b, &a) };
    c.create_apikey("before", json!({ "limit": { "amount": "5" } }))
        .await;
    c.wait_ready("before", MINUTE).await;

    // Pause the leader while it creates keys (the provider takes 1.5 s to answer each call);
    // more work arrives that it will see in its watches when resumed.
    c.reset_emulator_stats().await;
    for i in 0..4 {
        c.create_apikey(&format!("during-{i}"), json!({})).await;
    }
    c.eventually("creates in flight at the provider", MINUTE, || async move {
        let n = c.emulator_stats().await["requests"].as_u64().unwrap_or(0);
        if n > 0 {
            Ok(())
        } else {
            Err(format!("{n} requests"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(old, libc::SIGSTOP);
    let paused = Instant::now();
    c.create_apikey("during-pause", json!({})).await;
    let api = c.apikeys();
    api.patch(
        "before",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "spec": { "limit": { "amount": "7" } } })),
    )
    .await
    .expect("ApiKey patched");
    let new_name = new.name.as_str();
    c.eventually(
        "the standby taking the Lease",
        Duration::from_secs(4 * LEASE_SECONDS),
        || async move {
            match holder_of(c.lease(lease_name).await) {
                Some(h) if h == new_name => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "{} took over {:.1}s after {} was paused (lease {LEASE_SECONDS}s)",
        new.name,
        paused.elapsed().as_secs_f64(),
        old.name
    );
    for i in 0..4 {
        c.wait_ready(&format!("during-{i}"), MINUTE).await;
    }
    c.wait_ready("during-pause", MINUTE).await;
    c.eventually("the new limit at the provider", MINUTE, || async move {
        let keys = c.live_keys_named("before").await;
        match keys.first().and_then(|k| k["settings"]["limit"].as_f64()) {
            Some(7.0) => Ok(()),
            other => Err(format!("limit {other:?}")),
        }
    })
    .await;
    // Let the new leader's in-flight work end, then freeze it too: from here on only the old
    // one runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(new, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.reset_emulator_stats().await;
    // Wait out any call of the new leader still held by the slow emulator.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.reset_emulator_stats().await;
    let rv_before = versions(c).await;

    signal(old, libc::SIGCONT);
    let resumed = Instant::now();
    // Give it time to act on what it missed (its watches deliver at once).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = provider_writes(&c.emulator_stats().await);
    let rv_after = versions(c).await;
    let changed: Vec<&String> = rv_after
        .iter()
        .filter(|(k, v)| rv_before.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    let stepped_down = log_count(old, "stepping down");
    signal(new, libc::SIGCONT);
    eprintln!(
        "{} resumed after {:.1}s paused: provider writes {writes:?}, Secrets/ApiKeys/Events written {changed:?}; 'stepping down' logged: {stepped_down}",
        old.name,
        (resumed - paused).as_secs_f64()
    );
    let total: u64 = writes.values().sum::<u64>() + changed.len() as u64;
    eprintln!("writes by the fenced replica: {total} (target 0)");
    assert!(
        writes.is_empty(),
        "the fenced replica wrote to the provider: {writes:?}"
    );
    assert!(
        changed.is_empty(),
        "the fenced replica wrote Kubernetes objects: {changed:?}"
    );
    assert!(
        stepped_down >= 1,
        "the resumed replica says it stepped down:\n{}",
        cluster::tail(&old.log, 30)
    );
    // No second "became leader" for the old one.
    assert_eq!(log_count(old, "became leader"), 1);
}
