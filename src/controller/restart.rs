//! Restarting `spec.rolloutRestartTargets` after a new key value, the way `kubectl rollout
//! restart` does: a merge patch of the pod template annotation `keysmith.dev/restartedAt`
//! (a new template, so the workload controller rolls out new Pods that read the new value).
//!
//! Restarts are debounced across ApiKeys ([`Debouncer`]): several Secrets changing in one burst
//! (a leak rotating every key of a namespace) restart a workload once, after the last of them
//! changed; a restart that happened after a Secret changed covers it. A missing workload is
//! reported, never an error of the key. Whether a workload rolled out the restarted template is
//! read from its status ([`rolled_out`]); without a kubelet (or with Pods that never become
//! ready) it never does, which is why the grace period also starts after a bound
//! (`rotation::ROLLOUT_BOUND`).
//!
//! RBAC: `patch` to restart, and `get` to read the rollout status the grace period waits for.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::{
    RestartKind, RestartTarget, RolloutTarget, FIELD_MANAGER, RESTARTED_AT_ANNOTATION,
};

/// How long the debouncer remembers a workload's last restart (see [`Debouncer::prune`]).
pub const RESTART_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// How long a restart waits for more Secrets of the same burst before it goes.
pub const DEBOUNCE_WINDOW: Duration = Duration::from_secs(5);
/// How soon to ask again when the restart that covers a change is still being patched.
pub const IN_FLIGHT_POLL: Duration = Duration::from_secs(1);

/// `keysmith.dev/key-hash` of a Secret: sha256 (hex) of the key id and, for keys whose id
/// survives a rotation (adopted with `spec.keyRef`: regenerate in place), of `lastRotatedAt`,
/// so the hash changes with every new value. Never a hash of the value itself.
pub fn key_hash(key_id: &str, issued_at: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(key_id.as_bytes());
    h.update(b"\n");
    h.update(issued_at.unwrap_or("").as_bytes());
    hex::encode(h.finalize())
}

/// The value of the restart annotation for a restart at `now` (RFC 3339, milliseconds).
pub fn restarted_at(now: DateTime<Utc>) -> String {
    super::time::ts_millis(now)
}

/// The merge patch `kubectl rollout restart` sends, with keysmith's annotation.
pub fn restart_patch(value: &str) -> Value {
    json!({
        "spec": {
            "template": {
                "metadata": {
                    "annotations": { RESTARTED_AT_ANNOTATION: value }
                }
            }
        }
    })
}

/// A workload, across ApiKeys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: RestartKind,
    pub name: String,
}

impl WorkloadKey {
    pub fn new(namespace: &str, t: &RestartTarget) -> Self {
        WorkloadKey {
            namespace: namespace.to_string(),
            kind: t.kind,
            name: t.name.clone(),
        }
    }
}

/// What a caller should do about restarting one workload for a Secret changed at some moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Patch it now (the claim is recorded; call [`Debouncer::patched`] with the generation the
    /// patch gave the workload, or [`Debouncer::failed`] if it failed).
    Patch,
    /// A restart claimed after the Secret changed was made: it gave the workload this
    /// generation, the one whose rollout carries the new value.
    Covered(i64),
    /// Another change may follow in this burst: ask again after this long.
    Wait(Duration),
}

#[derive(Debug, Default, Clone)]
struct Slot {
    /// When the last restart was claimed.
    last_restart: Option<DateTime<Utc>>,
    /// The generation the last restart's patch gave the workload; None while it is in flight.
    generation: Option<i64>,
    /// The restart before that one and its generation (restored when the last one fails).
    before: Option<(DateTime<Utc>, Option<i64>)>,
    /// The first request not covered by a restart yet.
    waiting_since: Option<DateTime<Utc>>,
    /// The ApiKeys (`namespace/name`) that claimed a restart of it: when the last of them is
    /// deleted, the workload is forgotten ([`Debouncer::forget`]).
    claimants: BTreeSet<String>,
}

/// Restarts shared by every ApiKey of this process, keyed by (namespace, kind, name). A
/// workload is kept while an ApiKey that claimed a restart of it exists, and at most
/// [`RESTART_MEMORY`] after its last restart (the sweep, [`Debouncer::prune`]).
#[derive(Debug)]
pub struct Debouncer {
    window: Duration,
    slots: Mutex<HashMap<WorkloadKey, Slot>>,
}

impl Default for Debouncer {
    fn default() -> Self {
        Debouncer::new(DEBOUNCE_WINDOW)
    }
}

impl Debouncer {
    pub fn new(window: Duration) -> Self {
        Debouncer {
            window,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A Secret feeding `key` changed at `changed_at` (exactly, or rounded up: a restart claimed
    /// before the real change must never cover it); may the caller restart it at `now`?
    pub fn claim(&self, key: &WorkloadKey, changed_at: DateTime<Utc>, now: DateTime<Utc>) -> Claim {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(key.clone()).or_default();
        if slot.last_restart.is_some_and(|r| r >= changed_at) {
            return match slot.generation {
                Some(g) => Claim::Covered(g),
                // Its patch has not answered yet: which generation rolls the change out is not
                // known; ask again shortly (never "generation 0", which every status has passed).
                None => Claim::Wait(IN_FLIGHT_POLL),
            };
        }
        let since = *slot.waiting_since.get_or_insert(now);
        let due = since + chrono::Duration::from_std(self.window).unwrap_or_default();
        if now < due {
            return Claim::Wait((due - now).to_std().unwrap_or(self.window));
        }
        slot.before = slot.last_restart.map(|r| (r, slot.generation));
        slot.last_restart = Some(now);
        slot.generation = None;
        slot.waiting_since = None;
        Claim::Patch
    }

    /// [`Debouncer::claim`] for the ApiKey `apikey` (`namespace/name`), which is recorded as a
    /// claimant of the workload until it is forgotten.
    pub fn claim_for(
        &self,
        key: &WorkloadKey,
        apikey: &str,
        changed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Claim {
        {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let slot = slots.entry(key.clone()).or_default();
            if !slot.claimants.contains(apikey) {
                slot.claimants.insert(apikey.to_string());
            }
        }
        self.claim(key, changed_at, now)
    }

    /// The ApiKey `apikey` is gone: it claims nothing any more, and a workload no other ApiKey
    /// claimed is forgotten.
    pub fn forget(&self, apikey: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, s| !(s.claimants.remove(apikey) && s.claimants.is_empty()));
    }

    /// The patch of a claimed restart answered: the workload's template now has `generation`.
    pub fn patched(&self, key: &WorkloadKey, generation: i64) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(key) {
            slot.generation = Some(generation);
            slot.before = None;
        }
    }

    /// The patch of a claimed restart failed: the next claim tries again.
    pub fn failed(&self, key: &WorkloadKey) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(key) {
            let before = slot.before.take();
            slot.last_restart = before.map(|b| b.0);
            slot.generation = before.and_then(|b| b.1);
        }
    }

    /// Forget workloads not restarted or waiting since `older_than` (keeps the map small).
    pub fn prune(&self, older_than: DateTime<Utc>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, s| {
            s.waiting_since.is_some() || s.last_restart.is_some_and(|r| r >= older_than)
        });
    }

    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outcome of one restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Patched; the generation the new template has (to tell when it rolled out).
    Restarted(RolloutTarget),
    /// Already restarted after the Secret changed (by this or another ApiKey's rotation): the
    /// generation that restart gave the workload (to tell when it rolled out).
    Covered(RolloutTarget),
    /// Not yet: more Secrets of the burst may change; ask again after this long.
    Wait(Duration),
    /// The workload does not exist in the namespace.
    Missing,
    /// The API server refused the patch (e.g. Forbidden without the chart's
    /// `rolloutRestart.enabled`); the message says what it answered.
    Refused(String),
}

fn refused(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

async fn patch_typed<K>(api: Api<K>, name: &str, body: &Value) -> Result<Option<i64>, kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    match api.patch(name, &pp, &Patch::Merge(body)).await {
        Ok(obj) => Ok(Some(obj.meta().generation.unwrap_or_default())),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Patch one workload's pod template with `value`; `Ok(None)` when it does not exist.
pub async fn patch(
    client: &Client,
    namespace: &str,
    target: &RestartTarget,
    value: &str,
) -> Result<Option<i64>, kube::Error> {
    let body = restart_patch(value);
    let c = client.clone();
    match target.kind {
        RestartKind::Deployment => {
            patch_typed(
                Api::<Deployment>::namespaced(c, namespace),
                &target.name,
                &body,
            )
            .await
        }
        RestartKind::StatefulSet => {
            patch_typed(
                Api::<StatefulSet>::namespaced(c, namespace),
                &target.name,
                &body,
            )
            .await
        }
        RestartKind::DaemonSet => {
            patch_typed(
                Api::<DaemonSet>::namespaced(c, namespace),
                &target.name,
                &body,
            )
            .await
        }
    }
}

/// Restart `target` for a Secret of the ApiKey `apikey` (`namespace/name`) changed at
/// `changed_at`, through the shared debouncer.
pub async fn restart(
    client: &Client,
    debouncer: &Debouncer,
    apikey: &str,
    target: &RestartTarget,
    changed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Outcome {
    let namespace = apikey.split_once('/').map_or(apikey, |(ns, _)| ns);
    let key = WorkloadKey::new(namespace, target);
    match debouncer.claim_for(&key, apikey, changed_at, now) {
        Claim::Covered(generation) => {
            return Outcome::Covered(RolloutTarget {
                kind: target.kind,
                name: target.name.clone(),
                generation: Some(generation),
                rolled_out: false,
            })
        }
        Claim::Wait(d) => return Outcome::Wait(d),
        Claim::Patch => {}
    }
    // Milliseconds: a second restart within the same second (a change just after the first
    // was claimed) must still change the template, or no new rollout carries the new value.
    let value = restarted_at(now);
    match patch(client, namespace, target, &value).await {
        Ok(Some(generation)) => {
            debouncer.patched(&key, generation);
            Outcome::Restarted(RolloutTarget {
                kind: target.kind,
                name: target.name.clone(),
                generation: Some(generation),
                rolled_out: false,
            })
        }
        Ok(None) => {
            debouncer.failed(&key);
            Outcome::Missing
        }
        Err(e) => {
            debouncer.failed(&key);
            Outcome::Refused(refused(&e))
        }
    }
}

/// Whether a Deployment has rolled out generation `generation` (as `kubectl rollout status`
/// judges: observed, every replica updated, no old replica left, the updated ones available).
pub fn deployment_rolled_out(d: &Deployment, generation: i64) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = &d.status else { return false };
    s.observed_generation.unwrap_or(0) >= generation
        && s.updated_replicas.unwrap_or(0) >= want
        && s.replicas.unwrap_or(0) <= s.updated_replicas.unwrap_or(0)
        && s.available_replicas.unwrap_or(0) >= s.updated_replicas.unwrap_or(0)
}

/// Whether a StatefulSet has rolled out generation `generation`.
pub fn statefulset_rolled_out(st: &StatefulSet, generation: i64) -> bool {
    let want = st.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = &st.status else { return false };
    s.observed_generation.unwrap_or(0) >= generation
        && s.updated_replicas.unwrap_or(0) >= want
        && s.ready_replicas.unwrap_or(0) >= want
        && s.update_revision.is_some()
        && s.current_revision == s.update_revision
}

/// Whether a DaemonSet has rolled out generation `generation`.
pub fn daemonset_rolled_out(ds: &DaemonSet, generation: i64) -> bool {
    let Some(s) = &ds.status else { return false };
    s.observed_generation.unwrap_or(0) >= generation
        && s.updated_number_scheduled.unwrap_or(0) >= s.desired_number_scheduled
        && s.number_available.unwrap_or(0) >= s.desired_number_scheduled
}

/// Read a restarted workload and tell whether it rolled out: `Ok(None)` when it is gone (the
/// grace period need not wait for it).
pub async fn rolled_out(
    client: &Client,
    namespace: &str,
    target: &RolloutTarget,
) -> Result<Option<bool>, kube::Error> {
    let generation = target.generation.unwrap_or(0);
    let c = client.clone();
    Ok(match target.kind {
        RestartKind::Deployment => Api::<Deployment>::namespaced(c, namespace)
            .get_opt(&target.name)
            .await?
            .map(|d| deployment_rolled_out(&d, generation)),
        RestartKind::StatefulSet => Api::<StatefulSet>::namespaced(c, namespace)
            .get_opt(&target.name)
            .await?
            .map(|s| statefulset_rolled_out(&s, generation)),
        RestartKind::DaemonSet => Api::<DaemonSet>::namespaced(c, namespace)
            .get_opt(&target.name)
            .await?
            .map(|d| daemonset_rolled_out(&d, generation)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DaemonSetStatus, DeploymentSpec, DeploymentStatus, StatefulSetSpec, StatefulSetStatus,
    };

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The generation the tests' patches answer with.
    const GEN: i64 = 7;

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "team-a".into(),
            kind: RestartKind::Deployment,
            name: name.into(),
        }
    }

    #[test]
    fn the_patch_is_what_kubectl_rollout_restart_sends() {
        assert_eq!(
            restart_patch("2026-03-01T00:00:00Z"),
            json!({"spec": {"template": {"metadata": {"annotations": {"keysmith.dev/restartedAt": "2026-03-01T00:00:00Z"}}}}})
        );
    }

    #[test]
    fn key_hash_changes_with_id_and_issue_time_and_is_not_the_id() {
        let a = key_hash("k1", Some("2026-03-01T00:00:00Z"));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, key_hash("k1", Some("2026-03-01T00:00:00Z")));
        assert_ne!(a, key_hash("k2", Some("2026-03-01T00:00:00Z")));
        assert_ne!(a, key_hash("k1", Some("2026-03-02T00:00:00Z")));
        assert_ne!(key_hash("k1", None), key_hash("k1\n", None));
    }

    #[test]
    fn a_burst_of_changes_restarts_a_workload_once() {
        let d = Debouncer::new(Duration::from_secs(5));
        let api = key("api");
        let t0 = t("2026-03-01T00:00:00Z");
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        // Three ApiKeys feeding the same Deployment change within two seconds.
        assert_eq!(
            d.claim(&api, at(0), at(0)),
            Claim::Wait(Duration::from_secs(5))
        );
        assert_eq!(
            d.claim(&api, at(1), at(1)),
            Claim::Wait(Duration::from_secs(4))
        );
        assert_eq!(
            d.claim(&api, at(2), at(2)),
            Claim::Wait(Duration::from_secs(3))
        );
        // After the window, the first to ask restarts; the others are covered by it, once its
        // patch answered (before, the generation that carries their change is not known).
        assert_eq!(d.claim(&api, at(0), at(5)), Claim::Patch);
        assert_eq!(d.claim(&api, at(1), at(5)), Claim::Wait(IN_FLIGHT_POLL));
        d.patched(&api, GEN);
        assert_eq!(d.claim(&api, at(1), at(6)), Claim::Covered(GEN));
        assert_eq!(d.claim(&api, at(2), at(6)), Claim::Covered(GEN));
        // Another workload is independent.
        assert_eq!(
            d.claim(&key("worker"), at(2), at(6)),
            Claim::Wait(Duration::from_secs(5))
        );
        // A Secret changing after the restart needs a new one (never covered by an older restart).
        assert_eq!(
            d.claim(&api, at(10), at(10)),
            Claim::Wait(Duration::from_secs(5))
        );
        assert_eq!(d.claim(&api, at(10), at(15)), Claim::Patch);
        d.patched(&api, GEN + 1);
        assert_eq!(d.claim(&api, at(10), at(16)), Claim::Covered(GEN + 1));
        // A change a moment after a restart was claimed is not covered by it (changed_at is
        // exact, or rounded up by the caller).
        let later = at(15) + chrono::Duration::milliseconds(400);
        assert_eq!(
            d.claim(&api, later, at(17)),
            Claim::Wait(Duration::from_secs(5))
        );
    }

    /// Issue 19: a workload restarted for an ApiKey stayed in the debouncer for a day after
    /// the ApiKey was deleted. Now it goes with the last ApiKey that claimed it.
    #[test]
    fn a_workload_is_forgotten_with_the_last_apikey_that_claimed_it() {
        let d = Debouncer::new(Duration::ZERO);
        let t0 = t("2026-03-01T00:00:00Z");
        let (api, worker) = (key("api"), key("worker"));
        assert_eq!(d.claim_for(&api, "team-a/one", t0, t0), Claim::Patch);
        d.patched(&api, GEN);
        assert_eq!(
            d.claim_for(&api, "team-a/two", t0, t0),
            Claim::Covered(GEN),
            "another ApiKey's restart covers it"
        );
        assert_eq!(d.claim_for(&worker, "team-a/two", t0, t0), Claim::Patch);
        assert_eq!(d.len(), 2);
        d.forget("team-a/one");
        assert_eq!(d.len(), 2, "team-a/two still claims both");
        assert_eq!(d.claim(&api, t0, t0), Claim::Covered(GEN), "kept as it was");
        d.forget("team-a/two");
        assert_eq!(d.len(), 0);
        d.forget("team-a/never-claimed");
        assert!(d.is_empty());
    }

    #[test]
    fn a_failed_patch_is_claimed_again() {
        let d = Debouncer::new(Duration::ZERO);
        let api = key("api");
        let t0 = t("2026-03-01T00:00:00Z");
        assert_eq!(d.claim(&api, t0, t0), Claim::Patch);
        d.patched(&api, GEN);
        let t1 = t0 + chrono::Duration::seconds(1);
        assert_eq!(d.claim(&api, t1, t1), Claim::Patch);
        d.failed(&api);
        // The failed restart is forgotten, the one before it (and its generation) restored.
        assert_eq!(d.claim(&api, t0, t1), Claim::Covered(GEN));
        assert_eq!(d.claim(&api, t1, t1), Claim::Patch);
        d.patched(&api, GEN + 1);
        assert_eq!(d.claim(&api, t1, t1), Claim::Covered(GEN + 1));
        // The same namespace and name under another kind is another workload.
        let sts = WorkloadKey {
            kind: RestartKind::StatefulSet,
            ..api.clone()
        };
        assert_eq!(d.claim(&sts, t0, t0), Claim::Patch);
        assert_eq!(d.len(), 2);
        d.prune(t0 + chrono::Duration::seconds(2));
        assert!(d.is_empty());
    }

    #[test]
    fn rollout_status_of_each_kind() {
        let mut dep = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(3),
                replicas: Some(3),
                updated_replicas: Some(2),
                available_replicas: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            !deployment_rolled_out(&dep, 4),
            "generation not observed yet"
        );
        assert!(
            !deployment_rolled_out(&dep, 3),
            "an old replica is still there"
        );
        dep.status.as_mut().unwrap().replicas = Some(2);
        assert!(deployment_rolled_out(&dep, 3));
        dep.status.as_mut().unwrap().available_replicas = Some(0);
        assert!(
            !deployment_rolled_out(&dep, 3),
            "no kubelet: never available"
        );
        dep.status = None;
        assert!(!deployment_rolled_out(&dep, 1));

        let mut sts = StatefulSet {
            spec: Some(StatefulSetSpec {
                replicas: Some(1),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(2),
                replicas: 1,
                updated_replicas: Some(1),
                ready_replicas: Some(1),
                current_revision: Some("r1".into()),
                update_revision: Some("r2".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!statefulset_rolled_out(&sts, 2));
        sts.status.as_mut().unwrap().current_revision = Some("r2".into());
        assert!(statefulset_rolled_out(&sts, 2));
        assert!(!statefulset_rolled_out(&sts, 3));

        let mut ds = DaemonSet {
            status: Some(DaemonSetStatus {
                observed_generation: Some(5),
                desired_number_scheduled: 3,
                updated_number_scheduled: Some(2),
                number_available: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!daemonset_rolled_out(&ds, 5));
        ds.status.as_mut().unwrap().updated_number_scheduled = Some(3);
        assert!(daemonset_rolled_out(&ds, 5));
    }
}
