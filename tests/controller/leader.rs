//! The Lease lock and the write fencing on the real API server: replicas racing for an expired
//! Lease elect exactly one; expiry is judged by when a replica *saw* the record change, not by
//! the record's renewTime (clock skew); release hands over at once; a leader whose Lease was
//! taken cannot renew; past the renew deadline no provider write and no Kubernetes write is
//! sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use keysmith::api::{KeyProviderSpec, OpenRouterProvider, SecretKeySelector};
use keysmith::controller::{fenced_client, Attempt, LeaseClock, LeaseLock};
use keysmith::emulators;
use keysmith::providers::{self, ClientOptions, Credentials, KeySettings, WriteGate};

use crate::harness::*;

const MGMT: &str = "sk-or-v1-mgmt-leader-0000";

async fn env() -> Env {
    #[derive(Parser)]
    struct EmuArgs {
        #[command(flatten)]
        args: emulators::OpenRouterArgs,
    }
    let a = EmuArgs::try_parse_from(["emulate", "--management-key", MGMT])
        .expect("emulator flags parse")
        .args;
    let (router, faults) = emulators::build_openrouter(&a);
    let emu = emulators::spawn(router, faults)
        .await
        .expect("emulator starts");
    Env::new(emu, vec![]).await
}

fn leases(env: &Env) -> Api<Lease> {
    Api::namespaced(env.client.clone(), &env.operator_ns)
}

fn lock(env: &Env, name: &str, holder: &str, ttl: Duration) -> LeaseLock {
    LeaseLock::new(env.client.clone(), &env.operator_ns, name, holder, ttl)
}

fn micro(t: &str) -> MicroTime {
    MicroTime(t.parse().expect("a timestamp"))
}

/// Write a Lease record as a (possibly dead, possibly skewed) replica `holder` would.
async fn put_record(env: &Env, name: &str, holder: &str, seconds: i32, renew: &str) {
    let spec = LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(micro(renew)),
        renew_time: Some(micro(renew)),
        lease_transitions: Some(0),
        ..Default::default()
    };
    let api = leases(env);
    if api.get_opt(name).await.expect("get Lease").is_some() {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("Lease patched");
    } else {
        let l = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(spec),
        };
        api.create(&PostParams::default(), &l)
            .await
            .expect("Lease created");
    }
}

async fn holder(env: &Env, name: &str) -> Option<String> {
    leases(env)
        .get(name)
        .await
        .expect("Lease")
        .spec
        .and_then(|s| s.holder_identity)
}

/// Three replicas that have all watched a dead holder's record for its whole duration try to
/// take it at the same instant, over and over: each round exactly one wins, the others see a
/// conflict; and the Lease names the winner.
#[tokio::test]
async fn three_replicas_racing_for_an_expired_lease_elect_exactly_one() {
    let env = env().await;
    let ttl = Duration::from_secs(1);
    let name = "race";
    let mut locks: Vec<LeaseLock> = (0..3)
        .map(|i| lock(&env, name, &format!("replica-{i}"), ttl))
        .collect();
    const ROUNDS: usize = 12;
    let mut max_leaders = 0;
    let mut wins = [0usize; 3];
    for round in 0..ROUNDS {
        put_record(
            &env,
            name,
            &format!("dead-{round}"),
            1,
            "2026-01-01T00:00:00Z",
        )
        .await;
        // Each replica sees the new record (it changed: standby)...
        for l in locks.iter_mut() {
            assert!(
                matches!(
                    l.try_acquire_or_renew().await.expect("attempt"),
                    Attempt::Standby { .. }
                ),
                "a record seen for the first time is not expired"
            );
        }
        // ...and, a lease duration later, all three try at once.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let results =
            futures::future::join_all(locks.iter_mut().map(|l| l.try_acquire_or_renew())).await;
        let leaders: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Ok(Attempt::Leading)))
            .map(|(i, _)| i)
            .collect();
        for r in &results {
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        max_leaders = max_leaders.max(leaders.len());
        assert_eq!(
            leaders.len(),
            1,
            "round {round}: exactly one replica acquires, got {leaders:?}"
        );
        wins[leaders[0]] += 1;
        assert_eq!(
            holder(&env, name).await,
            Some(format!("replica-{}", leaders[0])),
            "the Lease names the winner"
        );
    }
    eprintln!(
        "{ROUNDS} rounds of 3 replicas racing: at most {max_leaders} leader(s) at once; wins per replica {wins:?}"
    );
}

/// Clock skew: a record whose renewTime lies far in the past does not let a standby take the
/// Lease at once, and one far in the future does not hold it off beyond a lease duration: only
/// how long this replica has seen the record unchanged counts.
#[tokio::test]
async fn expiry_is_judged_by_local_observation_not_the_records_renew_time() {
    let env = env().await;
    let ttl = Duration::from_secs(2);
    for (name, renew) in [
        ("past", "2001-01-01T00:00:00Z"),
        ("future", "2099-01-01T00:00:00Z"),
    ] {
        put_record(&env, name, "skewed", 2, renew).await;
        let mut l = lock(&env, name, "me", ttl);
        let seen = Instant::now();
        // Standby until the record has been seen unchanged for its 2 s.
        let mut standby_polls = 0;
        let took = loop {
            match l.try_acquire_or_renew().await.expect("attempt") {
                Attempt::Leading => break seen.elapsed(),
                Attempt::Standby { holder } => {
                    assert_eq!(holder.as_deref(), Some("skewed"));
                    standby_polls += 1;
                }
            }
            assert!(
                seen.elapsed() < Duration::from_secs(10),
                "{name}: never acquired"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("renewTime {renew}: acquired {took:?} after first seeing the record ({standby_polls} standby polls)");
        assert!(
            took >= Duration::from_secs(2),
            "{name}: acquired after {took:?}, before the record was seen unchanged for 2 s"
        );
        assert!(
            took < Duration::from_secs(4),
            "{name}: acquired only after {took:?}"
        );
        assert_eq!(holder(&env, name).await.as_deref(), Some("me"));
    }

    // A record that keeps changing (a live leader renewing, whatever its clock says) is never
    // taken, even with a renewTime decades old.
    let name = "renewing";
    put_record(&env, name, "alive", 1, "2001-01-01T00:00:00Z").await;
    let mut l = lock(&env, name, "me", ttl);
    let until = Instant::now() + Duration::from_secs(4);
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        // The live leader renews every 0.5 s (its renewTime moves on its own skewed clock).
        put_record(
            &env,
            name,
            "alive",
            1,
            &format!("2001-01-01T00:00:{:02}Z", i % 60),
        )
        .await;
        assert_eq!(
            l.try_acquire_or_renew().await.expect("attempt"),
            Attempt::Standby {
                holder: Some("alive".into())
            },
            "a renewing leader's Lease is never taken"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Release clears the holder (conditionally) and shortens the lease: a standby acquires at its
/// next attempt. A leader whose Lease another replica took cannot renew it.
#[tokio::test]
async fn release_hands_over_at_once_and_a_displaced_leader_cannot_renew() {
    let env = env().await;
    let ttl = Duration::from_secs(30);
    let name = "handover";
    let mut a = lock(&env, name, "a", ttl);
    let mut b = lock(&env, name, "b", ttl);
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    assert_eq!(
        b.try_acquire_or_renew().await.unwrap(),
        Attempt::Standby {
            holder: Some("a".into())
        }
    );
    // Renewing keeps it.
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    assert!(a.release().await.unwrap(), "the holder releases");
    let l = leases(&env).get(name).await.unwrap().spec.unwrap();
    assert_eq!(l.holder_identity, None);
    assert_eq!(l.lease_duration_seconds, Some(1));
    // No 30 s wait: an empty holder is free.
    assert_eq!(b.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    assert_eq!(holder(&env, name).await.as_deref(), Some("b"));
    let transitions = leases(&env)
        .get(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    assert_eq!(transitions, Some(1));
    // `a` releasing again writes nothing: it does not hold the Lease.
    assert!(!a.release().await.unwrap());
    assert_eq!(holder(&env, name).await.as_deref(), Some("b"));
    // `a` (e.g. resumed after a pause) tries to renew: b's record is new to it, so it stands by.
    assert_eq!(
        a.try_acquire_or_renew().await.unwrap(),
        Attempt::Standby {
            holder: Some("b".into())
        }
    );
    assert_eq!(holder(&env, name).await.as_deref(), Some("b"));
}

/// Past the renew deadline, the fenced Kubernetes client refuses writes before sending them
/// (reads still go), and the provider client's write gate refuses creates and deletes (reads
/// still go): the emulator counts no write and the API server holds no new object.
#[tokio::test]
async fn past_the_renew_deadline_no_write_is_sent() {
    let env = env().await;
    let cp = control_plane::shared().expect("control plane");
    let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    let clock = Arc::new(LeaseClock::default());
    let client = fenced_client(config, clock.clone()).expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client, &env.operator_ns);
    let cm = |name: &str| ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let ttl = Duration::from_secs(3);
    clock.renewed(tokio::time::Instant::now(), ttl);
    cms.create(&PostParams::default(), &cm("while-leading"))
        .await
        .expect("a write while the deadline is ahead");

    // Provider writes through a client gated on the same clock.
    let gate_clock = clock.clone();
    let spec = KeyProviderSpec {
        openrouter: Some(OpenRouterProvider {
            base_url: Some(format!("{}/api/v1", env.emulator.url())),
            management_key_secret_ref: SecretKeySelector {
                name: "x".into(),
                key: "token".into(),
                namespace: None,
            },
            workspace_id: None,
        }),
        ..Default::default()
    };
    let mut creds = Credentials::default();
    creds.0.insert("token".into(), MGMT.to_string().into());
    let backend = providers::build_backend(
        &spec,
        creds,
        ClientOptions {
            write_gate: Some(WriteGate::new(move || gate_clock.holds())),
            ..test_client_options()
        },
    )
    .expect("backend");
    let settings = KeySettings {
        name: "fenced".into(),
        ..Default::default()
    };
    let key = backend
        .create(&settings)
        .await
        .expect("a create while leading")
        .key;
    let scope = backend.scope(&settings);
    env.reset_provider_calls().await;

    // The deadline passes (as for a replica paused past it, or one that could not renew).
    clock.renewed(tokio::time::Instant::now() - Duration::from_secs(10), ttl);
    assert!(!clock.holds());
    let refused = cms
        .create(&PostParams::default(), &cm("after-deadline"))
        .await
        .expect_err("a write past the deadline is refused");
    assert!(
        refused
            .to_string()
            .contains("no longer holds the leader Lease"),
        "{refused}"
    );
    assert!(
        cms.get_opt("after-deadline").await.unwrap().is_none(),
        "nothing reached the API server"
    );
    cms.get("while-leading").await.expect("reads still go");

    let created = backend.create(&settings).await;
    assert!(
        created.is_err(),
        "a provider create past the deadline fails"
    );
    let revoked = backend.revoke(&scope, &key.id).await;
    assert!(
        revoked.is_err(),
        "a provider revoke past the deadline fails"
    );
    backend.verify().await.expect("provider reads still go");
    let stats = env.provider_calls().await;
    assert_eq!(route_count(&stats, "POST /api/v1/keys"), 0, "{stats}");
    assert_eq!(
        route_count(&stats, "DELETE /api/v1/keys/{hash}"),
        0,
        "{stats}"
    );
    assert_eq!(env.emulator_keys().await.len(), 1, "the key is still there");

    // A renewal opens the gate again.
    clock.renewed(tokio::time::Instant::now(), ttl);
    backend
        .revoke(&scope, &key.id)
        .await
        .expect("a revoke while leading");
}

/// The leader loop: it renews (the deadline moves on); it steps down, without writing the
/// Lease, when it finds its renew deadline already passed (a replica resumed after a pause);
/// it steps down when another replica took the Lease; it stops on shutdown.
#[tokio::test]
async fn the_leader_loop_renews_and_steps_down_when_its_deadline_passed_or_the_lease_was_taken() {
    use keysmith::controller::{lead, SteppedDown};
    let env = env().await;
    let ttl = Duration::from_secs(3);
    let name = "loop";
    let mut a = lock(&env, name, "a", ttl);
    let clock = LeaseClock::default();
    let sent = tokio::time::Instant::now();
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    clock.renewed(sent, ttl);
    let first = clock.time_left().expect("a deadline");

    // Renews every ttl/3; stopped after 2.5 s it has renewed at least once.
    let why = lead(
        &mut a,
        &clock,
        Box::pin(tokio::time::sleep(Duration::from_millis(2500))),
    )
    .await;
    assert_eq!(why, SteppedDown::Shutdown);
    // 2.5 s later, a deadline further away than 2.5 s less than the first: it was renewed.
    let left = clock.time_left().expect("a deadline");
    assert!(
        left + Duration::from_millis(2500) > first + Duration::from_millis(500),
        "a renewal moved the deadline on ({left:?} left, {first:?} at first)"
    );
    assert!(clock.holds());

    // Frozen past the deadline: it steps down at once and does not touch the Lease.
    let rv = leases(&env)
        .get(name)
        .await
        .unwrap()
        .metadata
        .resource_version;
    clock.renewed(tokio::time::Instant::now() - Duration::from_secs(10), ttl);
    let started = Instant::now();
    let why = lead(&mut a, &clock, Box::pin(std::future::pending())).await;
    assert_eq!(why, SteppedDown::DeadlinePassed);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        leases(&env)
            .get(name)
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv,
        "no renew was written"
    );

    // Another replica took the Lease (as after a pause): the next renew finds it and stops.
    put_record(&env, name, "b", 3, "2026-01-01T00:00:00Z").await;
    clock.renewed(tokio::time::Instant::now(), ttl);
    let why = lead(&mut a, &clock, Box::pin(std::future::pending())).await;
    assert_eq!(
        why,
        SteppedDown::Lost {
            holder: Some("b".into())
        }
    );
    assert_eq!(holder(&env, name).await.as_deref(), Some("b"));
}
