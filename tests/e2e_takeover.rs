//! Issue 17, the critical finding, with the operator binary on a real API server: a tenant whose
//! rotation is interrupted after its Secret was written, but before the status recorded the new
//! key, rewrites the Secret's `keysmith.dev/key-id` annotation to another tenant's key id. Before
//! the fix, crash recovery took the annotation's word: the attacker's `status.keyID` became the
//! victim's key (sync then pushes the attacker's settings onto it; deleting the attacker's
//! ApiKey revokes it).
//!
//! The interruption is made deterministic with the API server's own admission: a
//! ValidatingAdmissionPolicy refuses the attacker's status write that would clear
//! `status.pendingCreate` (as a conflicting write or a SIGKILL at that moment would leave it),
//! the test forges the Secret, then removes the policy and lets recovery run.

use keysmith_testkit::cluster;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

use cluster::{Cluster, EmulatorOptions, ProviderOptions};

const MINUTE: Duration = Duration::from_secs(60);

#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_key_id_annotation_never_hands_over_anothers_key() {
    cluster::require("a_forged_key_id_annotation_never_hands_over_anothers_key");
    let cluster = Cluster::start(
        "takeover",
        EmulatorOptions {
            latency: Some(Duration::from_millis(200)),
            ..Default::default()
        },
        ProviderOptions::default(),
    )
    .await;
    let c = &cluster;
    let _op = c.start_operator("op", &[]).await;

    // The victim: a key of its own on the shared ClusterKeyProvider.
    c.create_apikey("victim", json!({ "displayName": "victim-key" }))
        .await;
    let victim = c.wait_ready("victim", MINUTE).await;
    let victim_id = victim.status.unwrap().key_id.expect("victim keyID");
    let victim_value = c.secret_value("victim", "api-key").await.unwrap();

    // The attacker, with the victim's display name copied (its key's name then matches).
    c.create_apikey("mallory", json!({ "displayName": "victim-key" }))
        .await;
    let mallory = c.wait_ready("mallory", MINUTE).await;
    let first_id = mallory.status.unwrap().key_id.expect("mallory keyID");

    // The API server refuses the status write that records mallory's next key.
    let policy_name = format!("refuse-mallory-{}", c.run);
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(c.client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(c.client.clone());
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": { "name": policy_name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{
                "apiGroups": ["keysmith.dev"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["apikeys/status"],
            }]},
            "matchConditions": [{
                "name": "mallory",
                "expression": format!("object.metadata.namespace == '{}' && object.metadata.name == 'mallory'", c.ns),
            }],
            "validations": [{
                "expression": "!has(oldObject.status) || !has(oldObject.status.pendingCreate) || has(object.status.pendingCreate)",
                "message": "e2e: the write that records the new key is refused",
            }],
        },
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy created");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": policy_name },
        "spec": { "policyName": policy_name, "validationActions": ["Deny"] },
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding created");
    // Policies take effect asynchronously: wait until one refused write proves it is active.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Mallory rotates; the new key reaches its Secret, its status write is refused.
    let rotate = json!({"metadata": {"annotations": {"keysmith.dev/rotate": "attack-1"}}});
    c.apikeys()
        .patch("mallory", &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .unwrap();
    let first = &first_id;
    c.eventually("mallory's Secret holds a new key", MINUTE, || async move {
        let s = c
            .secrets()
            .get("mallory")
            .await
            .map_err(|e| e.to_string())?;
        match s.annotations().get("keysmith.dev/key-id") {
            Some(id) if id != first => Ok(()),
            other => Err(format!("key-id {other:?}")),
        }
    })
    .await;
    let pending = c.apikeys().get("mallory").await.unwrap().status.unwrap();
    assert!(
        pending.pending_create.is_some(),
        "the policy left the marker of the interrupted create: {pending:?}"
    );

    // The forgery: every mark on the Secret is the tenant's to write.
    let forge = json!({"metadata": {"annotations": {"keysmith.dev/key-id": victim_id}}});
    c.secrets()
        .patch("mallory", &PatchParams::default(), &Patch::Merge(&forge))
        .await
        .expect("a tenant may write its own Secret");
    bindings
        .delete(&policy_name, &DeleteParams::default())
        .await
        .unwrap();
    policies
        .delete(&policy_name, &DeleteParams::default())
        .await
        .unwrap();

    // Recovery runs; whatever it concludes, the victim's key is not mallory's.
    let victim_id2 = victim_id.clone();
    let ak = c
        .eventually("mallory's interrupted create recovered", 2 * MINUTE, || {
            let victim_id = victim_id2.clone();
            async move {
                let ak = c
                    .apikeys()
                    .get("mallory")
                    .await
                    .map_err(|e| e.to_string())?;
                let st = ak.status.clone().unwrap_or_default();
                if st.key_id.as_deref() == Some(victim_id.as_str()) {
                    return Ok(ak); // the failure the assertion below reports
                }
                if st.pending_create.is_none() && cluster::is_ready(&ak) {
                    Ok(ak)
                } else {
                    Err(format!("{:?}", cluster::ready(&ak)))
                }
            }
        })
        .await;
    let st = ak.status.unwrap();
    assert_ne!(
        st.key_id.as_deref(),
        Some(victim_id.as_str()),
        "the attacker's ApiKey took over the victim's key"
    );
    assert!(
        !st.previous_keys.iter().any(|p| p.key_id == victim_id),
        "nor queued it for revocation: {st:?}"
    );

    // Mallory goes; the victim's key is untouched and still works.
    c.apikeys()
        .delete("mallory", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_gone("mallory", MINUTE).await;
    assert!(
        c.key_works(&victim_value).await,
        "the victim's key still works after the attacker's ApiKey was deleted"
    );
    let keys = c.emulator_keys().await;
    let vk = keys
        .iter()
        .find(|k| k["hash"] == victim_id.as_str())
        .expect("victim key listed");
    assert_eq!(vk["active"], true);
    assert_eq!(
        c.secret_value("victim", "api-key").await,
        Some(victim_value)
    );
    // And no key of mallory's outlives it: every live key is the victim's.
    let live: Vec<_> = keys.iter().filter(|k| k["active"] == true).collect();
    assert_eq!(live.len(), 1, "live keys left: {live:?}");
}
