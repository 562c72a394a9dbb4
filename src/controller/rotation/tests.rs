//! Unit tests of the rotation decisions (`super`).
use super::*;
use crate::api::{RestartKind, RolloutTarget, RotationSpec};

fn t(s: &str) -> DateTime<Utc> {
    parse_time(Some(s)).unwrap()
}

fn spec(r: RotationSpec) -> ApiKeySpec {
    ApiKeySpec {
        rotation: Some(Box::new(r)),
        ..Default::default()
    }
}

fn plan(every: Option<&str>, renew: Option<&str>, grace: Option<&str>) -> Plan {
    Plan::of(&spec(RotationSpec {
        every: every.map(Into::into),
        renew_before: renew.map(Into::into),
        grace_period: grace.map(Into::into),
        allow_downtime: false,
    }))
    .unwrap()
}

#[test]
fn plan_defaults_and_checks() {
    let p = Plan::of(&ApiKeySpec::default()).unwrap();
    assert_eq!(p, Plan::default());
    assert_eq!(p.grace, DEFAULT_GRACE);
    assert!(p.every.is_none() && p.renew_before.is_none());
    let p = plan(Some("720h"), Some("72h"), Some("30m"));
    assert_eq!(p.every, Some(Duration::from_secs(720 * 3600)));
    assert_eq!(p.grace, Duration::from_secs(1800));
    assert_eq!(p.renew_before, Some(Duration::from_secs(72 * 3600)));

    let err = |r: RotationSpec| Plan::of(&spec(r)).unwrap_err();
    let e = err(RotationSpec {
        every: Some("30m".into()),
        ..Default::default()
    });
    assert!(
        e.contains("gracePeriod (1h) must be shorter than spec.rotation.every (30m)"),
        "{e}"
    );
    let e = err(RotationSpec {
        every: Some("2h".into()),
        renew_before: Some("3h".into()),
        grace_period: Some("0s".into()),
        ..Default::default()
    });
    assert!(e.contains("renewBefore must be shorter"), "{e}");
    let e = err(RotationSpec {
        every: Some("often".into()),
        ..Default::default()
    });
    assert!(e.starts_with("spec.rotation.every:"), "{e}");
    let e = err(RotationSpec {
        every: Some("10s".into()),
        grace_period: Some("0s".into()),
        ..Default::default()
    });
    assert!(e.contains("at least 1m"), "{e}");
    let mut pushed = spec(RotationSpec {
        every: Some("720h".into()),
        ..Default::default()
    });
    pushed.source = Some(Default::default());
    assert!(Plan::of(&pushed)
        .unwrap_err()
        .contains("source Secret changes"));
}

#[test]
fn next_rotation_from_creation_then_from_last_rotation() {
    let p = plan(Some("720h"), None, None);
    let mut c = Clock {
        created_at: Some(t("2026-01-01T00:00:00Z")),
        ..Default::default()
    };
    assert_eq!(c.next(&p), Some(t("2026-01-31T00:00:00Z")));
    c.last_rotated_at = Some(t("2026-01-20T12:00:00Z"));
    assert_eq!(c.next(&p), Some(t("2026-02-19T12:00:00Z")));
    // No creation time and no rotation: nothing to measure from.
    assert_eq!(Clock::default().next(&p), None);
    assert_eq!(c.next(&Plan::default()), None);
}

#[test]
fn renew_before_expiry_comes_first_and_rotates_once_per_expiry() {
    let p = plan(Some("720h"), Some("72h"), None);
    let mut c = Clock {
        created_at: Some(t("2026-01-01T00:00:00Z")),
        last_rotated_at: None,
        expires_at: Some(t("2026-01-10T00:00:00Z")),
    };
    assert_eq!(c.next(&p), Some(t("2026-01-07T00:00:00Z")));
    let s = State {
        has_key: true,
        ..Default::default()
    };
    assert_eq!(
        due(&p, &c, &s, t("2026-01-06T23:59:59Z")),
        Due::No(Some(t("2026-01-07T00:00:00Z")))
    );
    assert_eq!(
        due(&p, &c, &s, t("2026-01-07T00:00:00Z")),
        Due::Now(Trigger::BeforeExpiry)
    );
    // A fixed spec.expiresAt gives the new key the same expiry: rotated inside the window,
    // the key is not rotated again for it (no loop); the schedule still applies.
    c.last_rotated_at = Some(t("2026-01-07T00:00:05Z"));
    assert_eq!(
        due(&p, &c, &s, t("2026-01-08T00:00:00Z")),
        Due::No(Some(t("2026-02-06T00:00:05Z")))
    );
    // A ttl gives the new key a later expiry: its own window applies.
    c.expires_at = Some(t("2026-02-06T00:00:05Z"));
    assert_eq!(c.next(&p), Some(t("2026-02-03T00:00:05Z")));
}

#[test]
fn on_demand_rotates_once_per_new_value() {
    let p = Plan::default();
    let c = Clock::default();
    let now = t("2026-03-01T00:00:00Z");
    let mut s = State {
        has_key: true,
        request: Some("1700000000"),
        ..Default::default()
    };
    assert_eq!(
        due(&p, &c, &s, now),
        Due::Now(Trigger::OnDemand("1700000000".into()))
    );
    s.handled_request = Some("1700000000");
    assert_eq!(due(&p, &c, &s, now), Due::No(None));
    s.request = Some("  ");
    assert_eq!(due(&p, &c, &s, now), Due::No(None));
    s.request = Some("1700000099");
    assert_eq!(
        due(&p, &c, &s, now),
        Due::Now(Trigger::OnDemand("1700000099".into()))
    );
    // No key yet: the first create is not a rotation.
    s.has_key = false;
    assert_eq!(due(&p, &c, &s, now), Due::No(None));
}

#[test]
fn an_interrupted_rotation_resumes_with_its_trigger() {
    let ip = in_progress(
        &Trigger::OnDemand("x".into()),
        "old",
        None,
        t("2026-03-01T00:00:00Z"),
    );
    assert_eq!(ip.trigger, "OnDemand");
    assert_eq!(ip.request.as_deref(), Some("x"));
    let s = State {
        in_progress: Some(&ip),
        ..Default::default()
    };
    assert_eq!(
        due(
            &Plan::default(),
            &Clock::default(),
            &s,
            t("2026-03-01T00:00:01Z")
        ),
        Due::Now(Trigger::OnDemand("x".into()))
    );
    let sched = in_progress(&Trigger::Schedule, "old", None, t("2026-03-01T00:00:00Z"));
    assert_eq!(Trigger::of_in_progress(&sched), Trigger::Schedule);
    for tr in [Trigger::BeforeExpiry, Trigger::SourceChanged] {
        let ip = in_progress(&tr, "k", None, t("2026-03-01T00:00:00Z"));
        assert_eq!(Trigger::of_in_progress(&ip), tr);
    }
}

#[test]
fn schedule_is_due_and_pushed_keys_follow_their_source() {
    let p = plan(Some("24h"), None, Some("1h"));
    let c = Clock {
        created_at: Some(t("2026-03-01T00:00:00Z")),
        ..Default::default()
    };
    let mut s = State {
        has_key: true,
        ..Default::default()
    };
    assert_eq!(
        due(&p, &c, &s, t("2026-03-02T00:00:00Z")),
        Due::Now(Trigger::Schedule)
    );
    s.pushed = true;
    assert_eq!(due(&p, &c, &s, t("2026-03-02T00:00:00Z")), Due::No(None));
    s.request = Some("now");
    match due(&p, &c, &s, t("2026-03-02T00:00:00Z")) {
        Due::Ignored(v, m) => {
            assert_eq!(v, "now");
            assert!(m.contains("spec.source"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    s.handled_request = Some("now");
    assert_eq!(due(&p, &c, &s, t("2026-03-02T00:00:00Z")), Due::No(None));
}

#[test]
fn too_many_keys_in_grace_hold_a_rotation() {
    let s = State {
        has_key: true,
        request: Some("again"),
        previous_keys: MAX_PREVIOUS_KEYS,
        earliest_delete_after: Some(t("2026-03-01T01:00:00Z")),
        ..Default::default()
    };
    match due(
        &Plan::default(),
        &Clock::default(),
        &s,
        t("2026-03-01T00:00:00Z"),
    ) {
        Due::Held(Trigger::OnDemand(v), m, when) => {
            assert_eq!(v, "again");
            assert!(m.contains("2026-03-01T01:00:00Z"), "{m}");
            assert_eq!(when, Some(t("2026-03-01T01:00:00Z")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_spent_create_budget_defers_a_rotation_and_an_interrupted_one_resumes() {
    let until = t("2026-03-01T00:40:00Z");
    let mut s = State {
        has_key: true,
        request: Some("loop-42"),
        handled_request: Some("loop-41"),
        budget_spent_until: Some(until),
        ..Default::default()
    };
    let now = t("2026-03-01T00:00:00Z");
    let plan = Plan {
        grace: Duration::ZERO,
        ..Plan::default()
    };
    match due(&plan, &Clock::default(), &s, now) {
        Due::Held(Trigger::OnDemand(v), m, when) => {
            assert_eq!(v, "loop-42", "deferred, not dropped");
            assert!(m.starts_with(BUDGET_HELD), "{m}");
            assert!(m.contains("2026-03-01T00:40:00Z"), "{m}");
            assert_eq!(when, Some(until));
        }
        other => panic!("{other:?}"),
    }
    // A schedule waits the same way.
    s.request = None;
    let every = Plan {
        every: Some(Duration::from_secs(600)),
        grace: Duration::from_secs(60),
        ..Plan::default()
    };
    let clock = Clock {
        created_at: Some(t("2026-02-28T00:00:00Z")),
        ..Default::default()
    };
    assert!(matches!(
        due(&every, &clock, &s, now),
        Due::Held(Trigger::Schedule, ..)
    ));
    // Without the budget spent it is due now.
    s.budget_spent_until = None;
    assert_eq!(due(&every, &clock, &s, now), Due::Now(Trigger::Schedule));
    // A rotation a crash interrupted resumes first (the create path checks the budget).
    let flight = RotationInProgress {
        trigger: "OnDemand".into(),
        request: Some("loop-42".into()),
        key_id: "k1".into(),
        scope: None,
        started_at: "2026-03-01T00:00:00Z".into(),
    };
    s.budget_spent_until = Some(until);
    s.in_progress = Some(&flight);
    assert!(matches!(
        due(&every, &clock, &s, now),
        Due::Now(Trigger::OnDemand(_))
    ));
}

/// The rotation strategy a provider's client declares (its `Capabilities`), from a client built
/// as the operator builds it (placeholder credentials; nothing is sent).
fn declared(provider: ProviderType) -> RotationStrategy {
    use crate::providers::{build_backend, ClientOptions, Credentials};
    let block = match provider {
        ProviderType::OpenRouter => "{managementKeySecretRef: {name: x, key: x}}",
        ProviderType::Boltz => "{apiKeySecretRef: {name: x, key: x}}",
        ProviderType::UCloud => "{publicKey: x, privateKeySecretRef: {name: x, key: x}}",
        ProviderType::DigitalOcean => "{tokenSecretRef: {name: x, key: x}}",
        ProviderType::Bifrost => "{baseURL: 'http://bifrost:8080'}",
    };
    let spec: crate::api::KeyProviderSpec =
        serde_yaml::from_str(&format!("{provider}: {block}")).unwrap();
    let mut creds = Credentials::default();
    for r in spec.provider().unwrap().credential_refs() {
        creds.0.insert(r.role.to_string(), "placeholder".into());
    }
    let backend = build_backend(&spec, creds, ClientOptions::default()).unwrap();
    backend.capabilities().rotation
}

#[test]
fn strategy_per_provider() {
    let p = Plan::default();
    let minted = KeyKind::default();
    let adopted = KeyKind {
        adopted: true,
        ..Default::default()
    };
    let pushed = KeyKind {
        pushed: true,
        ..Default::default()
    };
    for prov in [
        ProviderType::OpenRouter,
        ProviderType::Boltz,
        ProviderType::UCloud,
    ] {
        let how = declared(prov);
        assert_eq!(
            strategy(prov, &how, &minted, &p),
            Ok(Strategy::MintNewThenRevoke)
        );
        assert!(strategy(prov, &how, &adopted, &p)
            .unwrap_err()
            .contains("spec.keyRef"));
        assert!(strategy(prov, &how, &pushed, &p)
            .unwrap_err()
            .contains("do not take a pushed value"));
    }
    // DigitalOcean: an adopted key (every model key) regenerates, only with allowDowntime;
    // minted (agent) keys get a grace period.
    let d = ProviderType::DigitalOcean;
    let how = declared(d);
    let e = strategy(d, &how, &adopted, &p).unwrap_err();
    assert!(e.contains("allowDowntime: true"), "{e}");
    let down = Plan {
        allow_downtime: true,
        ..Plan::default()
    };
    assert_eq!(strategy(d, &how, &adopted, &down), Ok(Strategy::Regenerate));
    assert_eq!(
        strategy(d, &how, &minted, &p),
        Ok(Strategy::MintNewThenRevoke)
    );
    // Bifrost virtual keys: mint new (keysmith does not call the gateway's rotate route); an
    // adopted one cannot rotate.
    let b = ProviderType::Bifrost;
    let how = declared(b);
    assert_eq!(
        strategy(b, &how, &minted, &p),
        Ok(Strategy::MintNewThenRevoke)
    );
    assert_eq!(
        strategy(b, &how, &minted, &down),
        Ok(Strategy::MintNewThenRevoke)
    );
    assert!(strategy(b, &how, &adopted, &p)
        .unwrap_err()
        .contains("spec.keyRef"));
    // Bifrost provider keys (pushed): re-push with grace.
    assert_eq!(
        strategy(b, &how, &pushed, &p),
        Ok(Strategy::RepushWithGrace)
    );
    assert!(Strategy::RepushWithGrace.keeps_previous_key());
    assert!(!Strategy::Regenerate.keeps_previous_key());
}

#[test]
fn grace_waits_for_the_rollout_within_a_bound() {
    let p = plan(None, None, Some("30m"));
    let now = t("2026-03-01T00:00:00Z");
    // Without restarts the grace runs from the rotation.
    assert_eq!(delete_after(&p, false, now), t("2026-03-01T00:30:00Z"));
    // With restarts: the upper bound first.
    let mut prev = vec![
        previous_key("old", None, &p, true, now),
        PreviousKey {
            key_id: "lost".into(),
            delete_after: ts(now),
            scope: None,
        },
    ];
    assert_eq!(prev[0].delete_after, "2026-03-01T00:40:00Z");
    let mut r = RolloutStatus {
        restarted_at: ts(now),
        targets: vec![
            RolloutTarget {
                kind: RestartKind::Deployment,
                name: "api".into(),
                generation: Some(4),
                rolled_out: true,
            },
            RolloutTarget {
                kind: RestartKind::StatefulSet,
                name: "worker".into(),
                generation: Some(2),
                rolled_out: false,
            },
        ],
        grace_starts_by: ts(add(now, ROLLOUT_BOUND)),
    };
    let two_min = t("2026-03-01T00:02:00Z");
    assert_eq!(
        grace_start(Some(&r), two_min),
        GraceStart::Waiting {
            pending: vec!["StatefulSet/worker".into()],
            until: t("2026-03-01T00:10:00Z")
        }
    );
    // The bound passed without a rollout: the grace starts at the bound.
    assert_eq!(
        grace_start(Some(&r), t("2026-03-01T00:11:00Z")),
        GraceStart::At(t("2026-03-01T00:10:00Z"))
    );
    r.targets[1].rolled_out = true;
    assert_eq!(grace_start(Some(&r), two_min), GraceStart::At(two_min));
    assert_eq!(grace_start(None, two_min), GraceStart::NoRollout);
    assert!(settle_after_rollout(&mut prev, &p, two_min));
    assert_eq!(prev[0].delete_after, "2026-03-01T00:32:00Z");
    assert_eq!(
        prev[1].delete_after,
        ts(now),
        "an already due key stays due"
    );
    assert!(!settle_after_rollout(&mut prev, &p, two_min));
}

#[test]
fn previous_keys_are_revoked_when_due_and_not_before() {
    let prev = vec![
        PreviousKey {
            key_id: "a".into(),
            delete_after: "2026-03-01T01:00:00Z".into(),
            scope: None,
        },
        PreviousKey {
            key_id: "b".into(),
            delete_after: "2026-03-01T00:30:00Z".into(),
            scope: None,
        },
        PreviousKey {
            key_id: "c".into(),
            delete_after: "garbage".into(),
            scope: None,
        },
    ];
    let (due, next) = revocations_due(&prev, t("2026-03-01T00:29:59Z"));
    assert_eq!(due, vec![2]);
    assert_eq!(next, Some(t("2026-03-01T00:30:00Z")));
    let (due, next) = revocations_due(&prev, t("2026-03-01T00:30:00Z"));
    assert_eq!(due, vec![1, 2]);
    assert_eq!(next, Some(t("2026-03-01T01:00:00Z")));
    let (due, next) = revocations_due(&prev, t("2026-03-01T01:00:00Z"));
    assert_eq!(due, vec![0, 1, 2]);
    assert_eq!(next, None);
}

#[test]
fn the_next_revocation_counts_deadlines_already_past() {
    let key = |at: &str| PreviousKey {
        key_id: at.into(),
        delete_after: at.into(),
        scope: None,
    };
    assert_eq!(next_revocation(&[]), None);
    let future = [key("2026-03-01T01:00:00Z"), key("2026-03-01T00:30:00Z")];
    assert_eq!(next_revocation(&future), Some(t("2026-03-01T00:30:00Z")));
    // A reconcile that began at 00:29:59.8 found nothing due; at its end (00:30:00.1) the key
    // is due but still listed: the requeue must come for it now, not at the next refresh.
    let end = t("2026-03-01T00:30:00Z") + chrono::Duration::milliseconds(100);
    assert_eq!(
        revocations_due(&future, end).1,
        Some(t("2026-03-01T01:00:00Z"))
    );
    assert!(next_revocation(&future).is_some_and(|n| n <= end));
    assert_eq!(
        next_revocation(&[key("garbage"), key("2026-03-01T00:30:00Z")]),
        Some(DateTime::<Utc>::MIN_UTC),
        "an unreadable deadline is due"
    );
}

#[test]
fn recovery_keeps_the_grace_period_of_the_replaced_key() {
    let p = plan(Some("24h"), None, Some("1h"));
    let started = t("2026-03-01T00:00:00Z");
    let mut st = ApiKeyStatus {
        key_id: Some("new".into()),
        created_at: Some("2026-03-01T00:00:01Z".into()),
        rotation: Some(Box::new(crate::api::RotationStatus {
            in_progress: Some(in_progress(
                &Trigger::OnDemand("r1".into()),
                "old",
                None,
                started,
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    let now = t("2026-03-01T00:05:00Z");
    let prev = retire_on_recovery(&mut st, &p, false, "new", None, now).unwrap();
    assert_eq!(prev.key_id, "old");
    assert_eq!(prev.delete_after, "2026-03-01T01:05:00Z");
    let r = st.rotation.as_ref().unwrap();
    assert_eq!(r.in_progress, None);
    assert_eq!(r.handled_request.as_deref(), Some("r1"));
    assert_eq!(st.last_rotated_at.as_deref(), Some("2026-03-01T00:05:00Z"));
    assert_eq!(st.next_rotation_at.as_deref(), Some("2026-03-02T00:05:00Z"));
    // Nothing in flight: nothing to retire.
    assert_eq!(
        retire_on_recovery(&mut st, &p, false, "new", None, now),
        None
    );
    // An in-place rotation (same id) leaves no previous key.
    st.rotation.as_mut().unwrap().in_progress =
        Some(in_progress(&Trigger::Schedule, "same", None, started));
    assert_eq!(
        retire_on_recovery(&mut st, &p, false, "same", None, now),
        None
    );
    assert_eq!(st.rotation.as_ref().unwrap().in_progress, None);
}

#[test]
fn odd_inputs_do_not_panic() {
    let huge = plan(Some("8760h"), Some("8759h"), Some("720h"));
    let c = Clock {
        created_at: Some(DateTime::<Utc>::MAX_UTC),
        last_rotated_at: None,
        expires_at: Some(DateTime::<Utc>::MIN_UTC),
    };
    let _ = c.next(&huge);
    let _ = delete_after(&huge, true, DateTime::<Utc>::MAX_UTC);
    let st = ApiKeyStatus {
        created_at: Some("not a time".into()),
        expires_at: Some("".into()),
        ..Default::default()
    };
    assert_eq!(Clock::of(&st, None), Clock::default());
    assert_eq!(human(Duration::from_secs(5400)), "90m");
    assert_eq!(human(Duration::from_secs(7200)), "2h");
    assert_eq!(human(Duration::from_secs(0)), "0s");
}
