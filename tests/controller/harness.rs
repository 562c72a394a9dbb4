//! Test environment: a fake Kubernetes API holding the CRDs, a provider emulator on loopback,
//! and a controller context pointed at both. Every write to the fake API is recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::Client;
use kube_fake_client::{interceptor, ClientBuilder};
use serde_json::{json, Value};

use keysmith::api::{
    ApiKey, ApiKeySpec, ClusterKeyProvider, ClusterKeyProviderSpec, KeyProvider, KeyProviderSpec,
    ProviderRef,
};
use keysmith::controller::apikey;
use keysmith::controller::Context;
use keysmith::emulators::RunningEmulator;
use keysmith::metrics::Metrics;
use keysmith::providers::ClientOptions;

pub const NS: &str = "team-a";
pub const OPERATOR_NS: &str = "keysmith-system";

/// One recorded write to the fake API: `"<verb> <what> <body>"`.
pub type Writes = Arc<Mutex<Vec<String>>>;

/// Failures to inject into the fake API.
#[derive(Default)]
pub struct KubeFaults {
    /// Fail this many Secret writes (server-side apply of a Secret).
    pub fail_secret_writes: std::sync::atomic::AtomicU32,
}

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
    /// ApiKeys deleted while holding finalizers (see [`Env::delete`]).
    terminating: Mutex<std::collections::HashSet<String>>,
}

fn describe_patch(kind: &str, v: &Value) -> String {
    let k = v.get("kind").and_then(Value::as_str).unwrap_or(kind);
    format!("patch {k}")
}

/// Build the fake API with `objects` (plus the team-a and operator namespaces).
pub async fn fake_client(objects: Vec<Value>, writes: Writes, faults: Arc<KubeFaults>) -> Client {
    let w1 = writes.clone();
    let w2 = writes.clone();
    let w3 = writes.clone();
    let w4 = writes.clone();
    let w5 = writes.clone();
    let funcs = interceptor::Funcs::new()
        .create(move |c| {
            let kind = c
                .object
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            w1.lock()
                .unwrap()
                .push(format!("create {kind} {}", c.object));
            Ok(None)
        })
        .patch(move |c| {
            let what = describe_patch("object", c.patch);
            if what == "patch Secret"
                && faults
                    .fail_secret_writes
                    .load(std::sync::atomic::Ordering::SeqCst)
                    > 0
            {
                faults
                    .fail_secret_writes
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                w2.lock().unwrap().push("patch Secret (failed)".into());
                return Err(kube_fake_client::Error::Internal(
                    "injected: the API server is unavailable".into(),
                ));
            }
            w2.lock().unwrap().push(format!("{what} {}", c.patch));
            Ok(None)
        })
        .patch_status(move |c| {
            w3.lock()
                .unwrap()
                .push(format!("patch status {} {}", c.name, c.patch));
            Ok(None)
        })
        .delete(move |c| {
            w4.lock().unwrap().push(format!("delete {}", c.name));
            Ok(None)
        })
        .update(move |_| {
            w5.lock().unwrap().push("update".into());
            Ok(None)
        });
    let mut b = ClientBuilder::new()
        .with_resource::<ApiKey>()
        .with_status_subresource::<ApiKey>()
        .with_resource::<KeyProvider>()
        .with_status_subresource::<KeyProvider>()
        .with_resource::<ClusterKeyProvider>()
        .with_status_subresource::<ClusterKeyProvider>()
        .with_interceptor_funcs(funcs);
    b = b.with_runtime_objects(objects);
    let fake = b.build().await.expect("fake client builds");
    let client = with_namespaces(
        fake,
        vec![
            namespace(NS, &[("team", "ai")]),
            namespace(OPERATOR_NS, &[]),
            namespace("other", &[("team", "web")]),
        ],
    );
    writes.lock().unwrap().clear();
    client
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

/// Two gaps of kube-fake-client 0.3 are bridged here, in front of it:
/// - it cannot route `/api/v1/namespaces/{name}` (it reads "namespaces" as the start of a
///   namespaced path), so Namespace reads are answered from `namespaces`;
/// - it registers every custom resource as namespaced and files objects without a namespace
///   under `default`, so requests for the cluster-scoped ClusterKeyProvider are rewritten to
///   that namespace.
///
/// Every other request goes to the fake unchanged.
fn with_namespaces(fake: Client, namespaces: Vec<Namespace>) -> Client {
    let namespaces = Arc::new(namespaces);
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let fake = fake.clone();
        let namespaces = namespaces.clone();
        async move {
            let path = req.uri().path().to_string();
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            if req.method() == http::Method::GET
                && parts.len() == 4
                && parts[..3] == ["api", "v1", "namespaces"]
            {
                let (status, body) = match namespaces.iter().find(|n| n.metadata.name.as_deref() == Some(parts[3])) {
                    Some(n) => (200, serde_json::to_vec(n).unwrap()),
                    None => (
                        404,
                        serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("namespaces \"{}\" not found", parts[3])})).unwrap(),
                    ),
                };
                let resp = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(body))
                    .unwrap();
                return Ok::<_, kube::Error>(resp);
            }
            const CKP: &str = "/apis/keysmith.dev/v1alpha1/clusterkeyproviders";
            if let Some(rest) = path.strip_prefix(CKP) {
                let query = req
                    .uri()
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let uri: http::Uri = format!("/apis/keysmith.dev/v1alpha1/namespaces/default/clusterkeyproviders{rest}{query}")
                    .parse()
                    .unwrap();
                let (mut parts, body) = req.into_parts();
                parts.uri = uri;
                return fake.send(http::Request::from_parts(parts, body)).await;
            }
            fake.send(req).await
        }
    });
    Client::new(svc, "default")
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut n = Namespace::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n
}

pub fn secret(ns: &str, name: &str, key: &str, value: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(ns.into());
    s.data = Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into());
    s
}

pub fn cluster_provider(name: &str, spec: KeyProviderSpec) -> ClusterKeyProvider {
    let mut p = ClusterKeyProvider::new(name, ClusterKeyProviderSpec { inner: spec });
    p.metadata.uid = Some(format!("uid-ckp-{name}"));
    p.metadata.generation = Some(1);
    p
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
    pub async fn converge(&self, name: &str, max: usize) -> ApiKey {
        for _ in 0..max {
            if let Err(e) = self.reconcile(name).await {
                eprintln!("reconcile {name}: {e}");
            }
            let ak = self.get(name).await;
            if ready(&ak).0 == "True" {
                return ak;
            }
        }
        self.get(name).await
    }

    pub fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut *self.writes.lock().unwrap())
    }

    /// Provider calls the emulator served since the last reset, by route.
    pub async fn provider_calls(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/stats", self.emulator.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn reset_provider_calls(&self) {
        self.http
            .delete(format!("{}/_emulator/stats", self.emulator.url()))
            .send()
            .await
            .unwrap();
    }

    /// The keys the emulator holds (no plaintext).
    pub async fn emulator_keys(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_emulator/keys", self.emulator.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match v {
            Value::Array(a) => a,
            Value::Object(mut o) => o
                .remove("keys")
                .and_then(|k| k.as_array().cloned())
                .unwrap_or_default(),
            _ => vec![],
        }
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

/// (status, reason, message) of the Ready condition.
pub fn ready(ak: &ApiKey) -> (String, String, String) {
    ak.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}
