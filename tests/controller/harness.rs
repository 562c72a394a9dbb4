//! Test environment: a fake Kubernetes API holding the CRDs, a provider emulator on loopback,
//! and a controller context pointed at both. Every write to the fake API is recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};

use keysmith::api::{ApiKey, ApiKeySpec, KeyProviderSpec, ProviderRef};
use keysmith::controller::apikey;
use keysmith::controller::Context;
use keysmith::emulators::RunningEmulator;
use keysmith::metrics::Metrics;
use keysmith::providers::ClientOptions;

#[path = "../common/fake_kube.rs"]
mod fake_kube;
pub use fake_kube::{cluster_provider, namespace, secret, KubeFaults, Writes};
#[path = "../common/apikey_status.rs"]
mod apikey_status;
pub use apikey_status::ready;
#[path = "../common/emulator_control.rs"]
mod emulator_control;
pub use emulator_control::EmulatorControl;

pub const NS: &str = "team-a";
pub const OPERATOR_NS: &str = "keysmith-system";

pub struct Env {
    pub client: Client,
    pub ctx: Arc<Context>,
    pub emulator: RunningEmulator,
    pub writes: Writes,
    pub kube_faults: Arc<KubeFaults>,
    pub http: reqwest::Client,
    /// Requests the controller made that `keysmith::controller::rbac::PERMISSIONS` (and so the
    /// chart's RBAC) does not cover; checked when the Env is dropped.
    rbac_violations: Arc<Mutex<Vec<String>>>,
    /// The emulator's control endpoints.
    pub control: EmulatorControl,
    /// ApiKeys deleted while holding finalizers (see [`Env::delete`]).
    terminating: Mutex<std::collections::HashSet<String>>,
}

/// Build the fake API with `objects` (plus the team-a, operator and "other" namespaces).
pub async fn fake_client(objects: Vec<Value>, writes: Writes, faults: Arc<KubeFaults>) -> Client {
    let namespaces = vec![
        namespace(NS, &[("team", "ai")]),
        namespace(OPERATOR_NS, &[]),
        namespace("other", &[("team", "web")]),
    ];
    fake_kube::fake_client(objects, namespaces, writes, faults).await
}

/// The controller's client: every request is classified as RBAC sees it and must be covered by
/// `keysmith::controller::rbac::PERMISSIONS`, the list the chart's RBAC is checked against.
fn rbac_checked(inner: Client, violations: Arc<Mutex<Vec<String>>>) -> Client {
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        let violations = violations.clone();
        async move {
            let method = req.method().as_str().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            match keysmith::controller::rbac::classify(&method, &path, &query) {
                Some((group, resource, verb))
                    if keysmith::controller::rbac::allowed(&group, &resource, &verb) => {}
                other => violations
                    .lock()
                    .unwrap()
                    .push(format!("{method} {path} -> {other:?}")),
            }
            inner.send(req).await
        }
    });
    Client::new(svc, "default")
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let v = self.rbac_violations.lock().unwrap();
        assert!(
            v.is_empty(),
            "the controller made requests its RBAC does not cover: {v:?}"
        );
    }
}

pub fn apikey(name: &str, provider: &str, spec: ApiKeySpec) -> ApiKey {
    let mut spec = spec;
    spec.provider_ref = ProviderRef {
        kind: Default::default(),
        name: provider.into(),
    };
    let mut ak = ApiKey::new(name, spec);
    ak.metadata.namespace = Some(NS.into());
    ak
}

/// A provider-agnostic environment: `emulator`, a ClusterKeyProvider `provider` with `spec`, the
/// credential Secrets it reads (`credentials`, each in the namespace it names, normally
/// [`OPERATOR_NS`]) and any `extra` objects (user Secrets, KeyProviders…).
pub async fn env_for(
    emulator: RunningEmulator,
    provider: &str,
    spec: KeyProviderSpec,
    credentials: Vec<Secret>,
    extra: Vec<Value>,
) -> Env {
    let mut objects: Vec<Value> = credentials
        .into_iter()
        .map(|s| serde_json::to_value(s).expect("Secret serializes"))
        .collect();
    objects.push(serde_json::to_value(cluster_provider(provider, spec)).unwrap());
    objects.extend(extra);
    Env::new(emulator, objects).await
}

/// Short timeouts and backoff so failure tests stay fast.
pub fn test_client_options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(2),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

impl Env {
    pub async fn new(emulator: RunningEmulator, objects: Vec<Value>) -> Env {
        let writes: Writes = Arc::default();
        let kube_faults = Arc::new(KubeFaults::default());
        let client = fake_client(objects, writes.clone(), kube_faults.clone()).await;
        let metrics = Arc::new(Metrics::new());
        let rbac_violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut ctx = Context::new(
            rbac_checked(client.clone(), rbac_violations.clone()),
            metrics.clone(),
            OPERATOR_NS.into(),
            "keysmith-test",
        );
        ctx.client_options = ClientOptions {
            metrics: Some(metrics.provider.clone()),
            ..test_client_options()
        };
        Env {
            client,
            ctx: Arc::new(ctx),
            control: EmulatorControl::new(emulator.url()),
            emulator,
            writes,
            kube_faults,
            http: reqwest::Client::new(),
            terminating: Mutex::default(),
            rbac_violations,
        }
    }

    pub fn apikeys(&self) -> Api<ApiKey> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn create(&self, ak: &ApiKey) -> ApiKey {
        self.apikeys()
            .create(&PostParams::default(), ak)
            .await
            .expect("ApiKey created in the fake API")
    }

    pub async fn get(&self, name: &str) -> ApiKey {
        self.apikeys().get(name).await.expect("ApiKey exists")
    }

    /// One reconcile of the current state of `name`.
    pub async fn reconcile(&self, name: &str) -> Result<Action, apikey::Error> {
        let mut ak = self.get(name).await;
        let terminating = self.terminating.lock().unwrap().contains(name);
        if terminating {
            ak.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        let result = apikey::reconcile(Arc::new(ak), self.ctx.clone()).await;
        if terminating
            && self
                .get(name)
                .await
                .metadata
                .finalizers
                .as_ref()
                .is_none_or(Vec::is_empty)
        {
            // The last finalizer is gone: the API server would remove the object now.
            self.apikeys()
                .delete(name, &DeleteParams::default())
                .await
                .expect("delete accepted");
            self.terminating.lock().unwrap().remove(name);
        }
        result
    }

    /// Reconcile until Ready=True (or `max` passes); returns the last ApiKey.
    /// Passes that only wait for an interrupted create to settle (reason `RecoveringCreate`,
    /// for up to the client timeout plus 5 s) do not count against `max`.
    pub async fn converge(&self, name: &str, max: usize) -> ApiKey {
        let mut passes = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while passes < max {
            if let Err(e) = self.reconcile(name).await {
                eprintln!("reconcile {name}: {e}");
            }
            let ak = self.get(name).await;
            let (status, reason, _) = ready(&ak);
            if status == "True" {
                return ak;
            }
            if reason == "RecoveringCreate" && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            passes += 1;
        }
        self.get(name).await
    }

    pub fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut *self.writes.lock().unwrap())
    }

    /// Provider calls the emulator served since the last reset, by route.
    pub async fn provider_calls(&self) -> Value {
        self.control.stats().await
    }

    pub async fn reset_provider_calls(&self) {
        self.control.reset_stats().await
    }

    /// The keys the emulator holds (no plaintext).
    pub async fn emulator_keys(&self) -> Vec<Value> {
        self.control.keys().await
    }

    /// `GET <emulator><path>` as JSON (control endpoints such as `/_emulator/keys`).
    pub async fn emulator_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.emulator.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST <emulator><path>` with a JSON body; (status, JSON body or Null).
    pub async fn emulator_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.emulator.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The Events published so far (recorded writes, not consumed), as
    /// `(type, reason, note)`. A repeat of an Event with the same type, action and reason is a
    /// patch of the first one (an event series: kube's Recorder keeps the first note).
    pub fn events(&self) -> Vec<(String, String, String)> {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|w| {
                w.strip_prefix("create Event ")
                    .or_else(|| w.strip_prefix("patch Event "))
            })
            .filter_map(|body| serde_json::from_str::<Value>(body).ok())
            .map(|e| {
                let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (field("type"), field("reason"), field("note"))
            })
            .collect()
    }

    /// A spec edit that changes nothing at the provider (a label on the written Secret): the
    /// generation moves, so the next reconcile reads the key fresh from the provider instead of
    /// the shared listing.
    pub async fn touch(&self, name: &str, label: &str) {
        self.patch_spec(
            name,
            json!({"secret": {"template": {"labels": {"keysmith-test/touched": label}}}}),
        )
        .await;
    }

    /// Invariant 4: once converged, reconciles write nothing and call the provider not at all
    /// (after one pass that takes the shared listing used by the periodic refresh).
    pub async fn assert_quiet(&self, name: &str) {
        self.reconcile(name).await.expect("reconcile");
        self.take_writes();
        self.reset_provider_calls().await;
        for _ in 0..2 {
            self.reconcile(name).await.expect("reconcile");
        }
        let writes: Vec<String> = self
            .take_writes()
            .iter()
            .map(|w| w.split(' ').take(3).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            writes,
            Vec::<String>::new(),
            "{name}: steady state writes nothing"
        );
        let calls = self.provider_calls().await;
        assert_eq!(
            calls["requests"], 0,
            "{name}: steady state calls nothing: {calls}"
        );
    }

    /// The plaintext the Secret holds under `key`.
    pub async fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let s = self.secrets().get_opt(name).await.unwrap()?;
        s.data?
            .get(key)
            .map(|b| String::from_utf8(b.0.clone()).unwrap())
    }

    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.apikeys()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("spec patched");
    }

    /// Delete as an API server does with finalizers present: the object stays, with
    /// deletionTimestamp set, until its finalizers are removed. kube-fake-client removes objects
    /// at once whatever their finalizers (and drops deletionTimestamp on create), so the harness
    /// marks the ApiKey terminating and hands it to the reconciler with deletionTimestamp set;
    /// once the reconciler has removed the finalizer, the object is deleted from the fake.
    pub async fn delete(&self, name: &str) {
        let ak = self.get(name).await;
        if ak.metadata.finalizers.as_ref().is_none_or(Vec::is_empty) {
            self.apikeys()
                .delete(name, &DeleteParams::default())
                .await
                .expect("delete accepted");
            return;
        }
        self.terminating.lock().unwrap().insert(name.to_string());
    }
}

/// Requests the emulator counted for `route` (`"METHOD /path/{param}"`) in `GET /_emulator/stats`.
pub fn route_count(stats: &Value, route: &str) -> u64 {
    stats["byRoute"][route].as_u64().unwrap_or(0)
}
