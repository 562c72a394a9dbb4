//! Deletion and the in-use finalizer (issue 17 items 3 and 4) against the real API server:
//! namespace mode with the chart's namespace-mode RBAC (a ServiceAccount token, so a
//! cluster-wide request is really refused), a credentials Secret shared by two KeyProviders, a
//! changed credentials ref, `--namespaced-providers=false`, and a namespace a ClusterKeyProvider
//! stops admitting. Deletion and revocation always go through the provider object that made the
//! key.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use keysmith::api::{
    AdoptionPolicy, ApiKey, ApiKeySpec, ClusterKeyProvider, KeyProvider, KeyProviderSpec, KeyRef,
    OpenRouterProvider, ProviderKind, RotationSpec, SecretKeySelector, ROTATE_ANNOTATION,
};
use keysmith::controller::apikey;
use keysmith::controller::inuse::IN_USE_FINALIZER;
use keysmith::controller::{Context, Settings};
use keysmith::metrics::Metrics;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Resource;
use serde_json::{json, Value};

use crate::harness::*;
use crate::{openrouter, ucloud};

fn has_in_use<K: Resource>(o: &K) -> bool {
    o.meta()
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == IN_USE_FINALIZER))
}

/// Resources that are cluster-scoped (granted by a ClusterRole in namespace mode).
fn cluster_scoped(resource: &str) -> bool {
    resource.starts_with("clusterkeyproviders")
        || resource.starts_with("clusterkeybudgets")
        || resource == "namespaces"
}

fn rules(cluster: bool) -> Value {
    Value::Array(
        keysmith::controller::rbac::PERMISSIONS
            .iter()
            .filter(|p| cluster_scoped(p.resource) == cluster && p.resource != "leases")
            .map(|p| json!({"apiGroups": [p.group], "resources": [p.resource], "verbs": p.verbs}))
            .collect(),
    )
}

/// A controller context as the chart installs it in namespace mode with ClusterKeyProviders
/// (`watchNamespaces: [team-a]`, `clusterProviders.enabled: true`): a ServiceAccount with a
/// Role in the watched namespace, a ClusterRole for ClusterKeyProviders and namespaces, and a
/// Role on the credentials Secrets of the operator's namespace; the client authenticates with
/// that ServiceAccount's token only.
async fn namespace_mode_context(env: &Env) -> Arc<Context> {
    let c = env.client.clone();
    let pp = PostParams::default();
    let sa = "keysmith";
    Api::<ServiceAccount>::namespaced(c.clone(), &env.operator_ns)
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
        )
        .await
        .unwrap();
    let subject = json!([{"kind": "ServiceAccount", "name": sa, "namespace": env.operator_ns}]);
    let role = |ns: &str, rules: Value| -> Role {
        serde_json::from_value(
            json!({"metadata": {"name": "keysmith", "namespace": ns}, "rules": rules}),
        )
        .unwrap()
    };
    let binding = |ns: &str| -> RoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": "keysmith", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "keysmith"},
            "subjects": subject,
        }))
        .unwrap()
    };
    let creds = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "patch"]}]);
    for (ns, rules) in [(&env.ns, rules(false)), (&env.operator_ns, creds)] {
        Api::<Role>::namespaced(c.clone(), ns)
            .create(&pp, &role(ns, rules))
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(c.clone(), ns)
            .create(&pp, &binding(ns))
            .await
            .unwrap();
    }
    let cluster_name = format!("{}-keysmith", env.ns);
    Api::<ClusterRole>::all(c.clone())
        .create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": cluster_name}, "rules": rules(true)}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(c.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": cluster_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
                "subjects": subject,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let tr: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}),
    )
    .unwrap();
    let tr = Api::<ServiceAccount>::namespaced(c.clone(), &env.operator_ns)
        .create_subresource::<_, k8s_openapi::api::authentication::v1::TokenRequest>(
            "token",
            sa,
            &Default::default(),
            &tr,
        )
        .await
        .expect("TokenRequest");
    let client = client_with_token(&tr.status.expect("a token").token).await;
    // The grants take effect once the authorizer's cache has them.
    let mine: Api<ApiKey> = Api::namespaced(client.clone(), &env.ns);
    let ckps: Api<ClusterKeyProvider> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mine.list(&ListParams::default()).await.is_err()
        || ckps.list(&ListParams::default()).await.is_err()
    {
        assert!(std::time::Instant::now() < deadline, "RBAC never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(
        client,
        metrics,
        Settings {
            reporter: "keysmith-nsmode".into(),
            watch_namespaces: vec![env.ns.clone()],
            ..test_settings(&env.operator_ns)
        },
    );
    Arc::new(ctx)
}

/// One reconcile of ApiKey `ns/name` with `ctx`; None when the ApiKey is gone.
async fn reconcile_with(env: &Env, ctx: &Arc<Context>, ns: &str, name: &str) -> Option<String> {
    let api: Api<ApiKey> = Api::namespaced(env.client.clone(), ns);
    let ak = api.get_opt(name).await.unwrap()?;
    Some(match apikey::reconcile(Arc::new(ak), ctx.clone()).await {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    })
}

/// Reconcile with `ctx` until Ready=True.
async fn converge_with(env: &Env, ctx: &Arc<Context>, ns: &str, name: &str) -> ApiKey {
    let api: Api<ApiKey> = Api::namespaced(env.client.clone(), ns);
    for _ in 0..6 {
        reconcile_with(env, ctx, ns, name).await;
        let ak = api.get(name).await.unwrap();
        if ready(&ak).0 == "True" {
            return ak;
        }
    }
    let ak = api.get(name).await.unwrap();
    panic!("{name} not Ready: {:?}", ready(&ak));
}

/// Reconcile a deleted ApiKey with `ctx` until it is gone; the errors of the attempts.
async fn deleted_with(env: &Env, ctx: &Arc<Context>, ns: &str, name: &str) -> Vec<String> {
    let api: Api<ApiKey> = Api::namespaced(env.client.clone(), ns);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    let mut errors = Vec::new();
    for _ in 0..4 {
        match reconcile_with(env, ctx, ns, name).await {
            None => return errors,
            Some(r) if r != "ok" => errors.push(r),
            Some(_) => {}
        }
    }
    match api.get_opt(name).await.unwrap() {
        None => errors,
        Some(ak) => panic!(
            "{name} never finished deleting: {errors:?} {:?}",
            ready(&ak)
        ),
    }
}

#[tokio::test]
async fn namespace_mode_with_the_charts_rbac_finishes_a_deletion_through_a_cluster_provider() {
    let env = openrouter::env().await;
    let ctx = namespace_mode_context(&env).await;
    // What the bug hit: this token may not list ApiKeys cluster-wide.
    let refused = Api::<ApiKey>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 403),
        "{refused:?}"
    );
    env.create(&apikey("k", "openrouter", ApiKeySpec::default()))
        .await;
    let ak = converge_with(&env, &ctx, &env.ns, "k").await;
    let id = ak.status.unwrap().key_id.unwrap();
    let ckp_name = env.cluster_provider_name("openrouter");
    let ckps: Api<ClusterKeyProvider> = Api::all(env.client.clone());
    let creds: Api<Secret> = Api::namespaced(env.client.clone(), &env.operator_ns);
    assert!(has_in_use(&ckps.get(&ckp_name).await.unwrap()));
    assert!(has_in_use(&creds.get("openrouter-mgmt").await.unwrap()));

    let errors = deleted_with(&env, &ctx, &env.ns, "k").await;
    assert!(errors.is_empty(), "{errors:?}");
    let keys = env.emulator_keys().await;
    assert_eq!(openrouter::live_keys(&keys), 0, "{id} revoked: {keys:?}");
    // Nothing else holds a key through it: the ClusterKeyProvider and its credentials are free.
    assert!(!has_in_use(&ckps.get(&ckp_name).await.unwrap()));
    assert!(!has_in_use(&creds.get("openrouter-mgmt").await.unwrap()));
}

#[tokio::test]
async fn namespace_mode_refuses_adoption_through_a_cluster_provider_it_cannot_prove() {
    let env = ucloud::env_with_adoption(Some(AdoptionPolicy {
        allowed: true,
        namespace_selector: None,
    }))
    .await;
    // A tenant of a namespace this installation does not watch holds a key on the shared
    // ClusterKeyProvider (served by another installation; here the cluster-wide context).
    let mut owner = apikey("owner", "ucloud", ApiKeySpec::default());
    owner.metadata.namespace = Some(OTHER_NS.into());
    env.create(&owner).await;
    let owner = converge_with(&env, &env.ctx, &env.other_ns, "owner").await;
    let id = owner.status.unwrap().key_id.unwrap();

    let ctx = namespace_mode_context(&env).await;
    env.create(&apikey(
        "thief",
        "ucloud",
        ApiKeySpec {
            key_ref: Some(Box::new(KeyRef { id: id.clone() })),
            ..Default::default()
        },
    ))
    .await;
    for _ in 0..3 {
        reconcile_with(&env, &ctx, &env.ns, "thief").await;
    }
    let thief = env.get("thief").await;
    let (status, reason, message) = ready(&thief);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "AdoptionRefused"),
        "{message}"
    );
    assert!(message.contains("--watch-namespaces"), "{message}");
    assert!(thief.status.unwrap().key_id.is_none());
    assert!(env.secrets().get_opt("thief").await.unwrap().is_none());
    assert_eq!(ucloud::live(&env.emulator_keys().await).len(), 1);
    let errors = deleted_with(&env, &ctx, &env.ns, "thief").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        ucloud::live(&env.emulator_keys().await).len(),
        1,
        "the owner's key is untouched"
    );
}

/// A KeyProvider `name` in the test's namespace at the OpenRouter emulator, reading Secret
/// `secret`.
fn key_provider(env: &Env, name: &str, secret: &str) -> KeyProvider {
    let mut kp = KeyProvider::new(
        name,
        KeyProviderSpec {
            openrouter: Some(OpenRouterProvider {
                base_url: Some(format!("{}/api/v1", env.emulator.url())),
                management_key_secret_ref: SecretKeySelector {
                    name: secret.into(),
                    key: "token".into(),
                    namespace: None,
                },
                workspace_id: None,
            }),
            ..Default::default()
        },
    );
    kp.metadata.namespace = Some(env.ns.clone());
    kp
}

async fn with_key_providers(env: &Env, providers: &[(&str, &str)]) {
    let pp = PostParams::default();
    for (name, s) in providers {
        if env.secrets().get_opt(s).await.unwrap().is_none() {
            env.secrets()
                .create(&pp, &secret(&env.ns, s, "token", openrouter::MGMT))
                .await
                .unwrap();
        }
        Api::<KeyProvider>::namespaced(env.client.clone(), &env.ns)
            .create(&pp, &key_provider(env, name, s))
            .await
            .unwrap();
    }
}

fn on_key_provider(name: &str, provider: &str) -> ApiKey {
    let mut ak = apikey(name, provider, ApiKeySpec::default());
    ak.spec.provider_ref.kind = ProviderKind::KeyProvider;
    ak
}

#[tokio::test]
async fn a_credentials_secret_shared_by_two_key_providers_stays_until_both_are_unused() {
    let env = openrouter::env().await;
    with_key_providers(&env, &[("kp1", "shared"), ("kp2", "shared")]).await;
    for (ak, kp) in [("a", "kp1"), ("b", "kp2")] {
        env.create(&on_key_provider(ak, kp)).await;
        let ak = env.converge(ak, 6).await;
        assert_eq!(ready(&ak).0, "True", "{:?}", ready(&ak));
    }
    let kps: Api<KeyProvider> = Api::namespaced(env.client.clone(), &env.ns);
    assert!(has_in_use(&env.secrets().get("shared").await.unwrap()));
    // a goes: kp1 is free, but kp2 still needs the Secret to revoke b's key.
    env.delete("a").await;
    env.reconcile("a").await.unwrap();
    assert!(env.apikeys().get_opt("a").await.unwrap().is_none());
    assert!(!has_in_use(&kps.get("kp1").await.unwrap()));
    assert!(has_in_use(&kps.get("kp2").await.unwrap()));
    assert!(
        has_in_use(&env.secrets().get("shared").await.unwrap()),
        "released while kp2 still needs it"
    );
    // b goes: nothing needs the Secret any more.
    env.delete("b").await;
    env.reconcile("b").await.unwrap();
    assert!(env.apikeys().get_opt("b").await.unwrap().is_none());
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 0);
    assert!(!has_in_use(&kps.get("kp2").await.unwrap()));
    assert!(!has_in_use(&env.secrets().get("shared").await.unwrap()));
}

#[tokio::test]
async fn a_changed_credentials_ref_moves_the_finalizer_to_the_new_secret() {
    let env = openrouter::env().await;
    with_key_providers(&env, &[("kp", "old-creds")]).await;
    env.create(&on_key_provider("k", "kp")).await;
    assert_eq!(ready(&env.converge("k", 6).await).0, "True");
    assert!(has_in_use(&env.secrets().get("old-creds").await.unwrap()));
    // The owner moves the KeyProvider to a new Secret (same account).
    env.secrets()
        .create(
            &PostParams::default(),
            &secret(&env.ns, "new-creds", "token", openrouter::MGMT),
        )
        .await
        .unwrap();
    let kps: Api<KeyProvider> = Api::namespaced(env.client.clone(), &env.ns);
    kps.patch(
        "kp",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"openrouter": {"managementKeySecretRef": {"name": "new-creds"}}}}),
        ),
    )
    .await
    .unwrap();
    env.reconcile("k").await.unwrap();
    let k = env.get("k").await;
    assert!(
        has_in_use(&env.secrets().get("new-creds").await.unwrap()),
        "the Secret that revoking now needs is protected: {:?} {:?}",
        ready(&k),
        kps.get("kp").await.unwrap().metadata
    );
    assert!(
        !has_in_use(&env.secrets().get("old-creds").await.unwrap()),
        "the old Secret is let go"
    );
    // It can be deleted now; and the deletion of the ApiKey releases the new one.
    env.secrets()
        .delete("old-creds", &DeleteParams::default())
        .await
        .unwrap();
    assert!(env.secrets().get_opt("old-creds").await.unwrap().is_none());
    env.delete("k").await;
    env.reconcile("k").await.unwrap();
    assert!(env.apikeys().get_opt("k").await.unwrap().is_none());
    assert!(!has_in_use(&env.secrets().get("new-creds").await.unwrap()));
    assert!(!has_in_use(&kps.get("kp").await.unwrap()));
}

#[tokio::test]
async fn without_namespaced_providers_a_key_provider_in_use_still_revokes_and_goes() {
    let env = openrouter::env().await;
    with_key_providers(&env, &[("kp", "creds")]).await;
    env.create(&on_key_provider("k", "kp")).await;
    assert_eq!(ready(&env.converge("k", 6).await).0, "True");
    // The admin turns namespaced providers off (`--namespaced-providers=false`).
    let ctx = Arc::new(Context::new(
        env.client.clone(),
        Arc::new(Metrics::new()),
        Settings {
            reporter: "keysmith-clusteronly".into(),
            namespaced_providers: false,
            ..test_settings(&env.operator_ns)
        },
    ));
    // The tenant deletes the KeyProvider first (it stays Terminating while in use), then the
    // ApiKey: its key is revoked through the KeyProvider that made it, and both go.
    let kps: Api<KeyProvider> = Api::namespaced(env.client.clone(), &env.ns);
    kps.delete("kp", &DeleteParams::default()).await.unwrap();
    assert!(kps
        .get("kp")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_some());
    let errors = deleted_with(&env, &ctx, &env.ns, "k").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 0);
    assert!(
        kps.get_opt("kp").await.unwrap().is_none(),
        "the KeyProvider finished deleting"
    );
    assert!(!has_in_use(&env.secrets().get("creds").await.unwrap()));
}

#[tokio::test]
async fn a_namespace_the_cluster_provider_stops_admitting_still_revokes_its_keys() {
    let env = openrouter::env_with(
        |s| {
            s.namespace_selector =
                Some(serde_json::from_value(json!({"matchLabels": {"team": "ai"}})).unwrap())
        },
        vec![],
    )
    .await;
    let spec = ApiKeySpec {
        rotation: Some(Box::new(RotationSpec {
            grace_period: Some("2s".into()),
            ..Default::default()
        })),
        ..Default::default()
    };
    env.create(&apikey("k", "openrouter", spec)).await;
    assert_eq!(ready(&env.converge("k", 6).await).0, "True");
    // A rotation: the replaced key lives for its grace period.
    env.apikeys()
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "r1"}}})),
        )
        .await
        .unwrap();
    env.reconcile("k").await.unwrap();
    assert_eq!(
        env.get("k").await.status.unwrap().previous_keys.len(),
        1,
        "replaced key in its grace"
    );
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 2);
    // The namespace leaves the team the ClusterKeyProvider admits.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "web"}}})),
        )
        .await
        .unwrap();
    env.touch("k", "x").await;
    let _ = env.reconcile("k").await;
    let (_, reason, _) = ready(&env.get("k").await);
    assert_eq!(reason, "ProviderNotAllowed", "no more creating");
    // The replaced key still ends with its grace period.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let _ = env.reconcile("k").await;
    let k = env.get("k").await;
    assert_eq!(ready(&k).1, "ProviderNotAllowed");
    assert!(
        k.status.unwrap().previous_keys.is_empty(),
        "replaced key revoked"
    );
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 1);
    // Its key can still be revoked through the ClusterKeyProvider that made it.
    let errors = deleted_with(&env, &env.ctx, &env.ns, "k").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(openrouter::live_keys(&env.emulator_keys().await), 0);
    let ckps: Api<ClusterKeyProvider> = Api::all(env.client.clone());
    assert!(!has_in_use(
        &ckps
            .get(&env.cluster_provider_name("openrouter"))
            .await
            .unwrap()
    ));
}

#[tokio::test]
async fn an_orphaned_key_releases_a_key_provider_deleted_first() {
    let env = openrouter::env().await;
    with_key_providers(&env, &[("kp", "creds")]).await;
    env.create(&on_key_provider("k", "kp")).await;
    assert_eq!(ready(&env.converge("k", 6).await).0, "True");
    env.patch_spec("k", json!({"deletionPolicy": "Orphan"}))
        .await;
    let kps: Api<KeyProvider> = Api::namespaced(env.client.clone(), &env.ns);
    kps.delete("kp", &DeleteParams::default()).await.unwrap();
    env.delete("k").await;
    env.reconcile("k").await.unwrap();
    assert!(env.apikeys().get_opt("k").await.unwrap().is_none());
    assert_eq!(
        openrouter::live_keys(&env.emulator_keys().await),
        1,
        "left at the provider"
    );
    assert!(
        kps.get_opt("kp").await.unwrap().is_none(),
        "no ApiKey needs the KeyProvider: it finished deleting"
    );
    assert!(!has_in_use(&env.secrets().get("creds").await.unwrap()));
}
