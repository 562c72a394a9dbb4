//! Test environment: the local Kubernetes API server of this test binary
//! (`keysmith_testkit::control_plane`) with the CRDs, namespaces of the test's own, a provider
//! emulator on loopback, and a controller context pointed at both. Every write the controller
//! makes is recorded, Secret writes can be failed, and every request is checked against the RBAC
//! the chart grants: a tower layer in front of the real client does all three.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};

use keysmith::api::{
    ApiKey, ApiKeySpec, ClusterKeyProvider, ClusterKeyProviderSpec, KeyProvider, KeyProviderSpec,
    ProviderKind, ProviderRef,
};
use keysmith::controller::apikey;
use keysmith::controller::{Context, Settings};
use keysmith::emulators::RunningEmulator;
use keysmith::metrics::Metrics;
use keysmith::providers::ClientOptions;

pub use keysmith_testkit::apikey_status::ready;
pub use keysmith_testkit::control_plane;
pub use keysmith_testkit::emulator_control::EmulatorControl;
use keysmith_testkit::kube_recorder::instrumented;
pub use keysmith_testkit::kube_recorder::{KubeFaults, Writes};

/// The namespaces tests name. Each test gets namespaces of its own (`<run>-team-a`, …): these
/// names are mapped to them when objects are created (see [`Env::map_ns`]).
pub const NS: &str = "team-a";
pub const OPERATOR_NS: &str = "keysmith-system";
pub const OTHER_NS: &str = "other";

pub struct Env {
    /// An admin client (not recorded): what the test itself reads and writes.
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
    /// The test's namespaces: for [`NS`], [`OPERATOR_NS`] and [`OTHER_NS`].
    pub ns: String,
    pub operator_ns: String,
    pub other_ns: String,
    /// ClusterKeyProviders are cluster-scoped: each test's get a suffix (name → real name).
    cluster_providers: Mutex<HashMap<String, String>>,
    run: String,
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
    ClusterKeyProvider::new(name, ClusterKeyProviderSpec { inner: spec })
}

impl Drop for Env {
    fn drop(&mut self) {
        let (client_ns, run) = (
            vec![
                self.ns.clone(),
                self.operator_ns.clone(),
                self.other_ns.clone(),
            ],
            self.run.clone(),
        );
        let providers: Vec<String> = self
            .cluster_providers
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        // The test's namespaces and ClusterKeyProviders go; finalizers left on its ApiKeys are
        // removed first (no controller runs to release them).
        let kubeconfig = self_kubeconfig();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let client = control_plane::client_from(&kubeconfig).await;
                let apikeys: Api<ApiKey> = Api::namespaced(client.clone(), &client_ns[0]);
                if let Ok(list) = apikeys.list(&Default::default()).await {
                    for ak in list.items {
                        if ak
                            .metadata
                            .finalizers
                            .as_ref()
                            .is_some_and(|f| !f.is_empty())
                        {
                            let _ = apikeys
                                .patch(
                                    ak.metadata.name.as_deref().unwrap_or_default(),
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                                )
                                .await;
                        }
                    }
                }
                let namespaces: Api<Namespace> = Api::all(client.clone());
                for n in &client_ns {
                    let _ = namespaces.delete(n, &DeleteParams::background()).await;
                }
                let ckps: Api<ClusterKeyProvider> = Api::all(client);
                for p in providers {
                    let _ = ckps.delete(&p, &DeleteParams::background()).await;
                }
                let _ = run;
            })
        })
        .join();
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

fn self_kubeconfig() -> std::path::PathBuf {
    control_plane::shared()
        .expect("the local control plane")
        .kubeconfig
        .clone()
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

/// The settings of the tests' contexts: the operator's namespace `operator_ns`, short timeouts,
/// and, since the emulators listen on loopback over http, the admin flags that let a tenant's
/// KeyProvider reach them (the secure default is tested in tests/e2e_ssrf.rs).
pub fn test_settings(operator_ns: &str) -> Settings {
    Settings {
        operator_namespace: operator_ns.to_string(),
        reporter: "keysmith-test".into(),
        namespaced_network: keysmith::providers::egress::NetworkPolicy::OPEN,
        client_options: test_client_options(),
        ..Settings::default()
    }
}

impl Env {
    /// An Env holding `objects` (Secrets, KeyProviders, ClusterKeyProviders, ApiKeys, in the
    /// namespaces [`NS`], [`OPERATOR_NS`], [`OTHER_NS`], mapped to the test's own).
    pub async fn new(emulator: RunningEmulator, objects: Vec<Value>) -> Env {
        let cp = control_plane::shared().unwrap_or_else(|e| {
            panic!("the controller tests need a Kubernetes API server (see docs/e2e.md): {e}")
        });
        let client = cp.client().await;
        control_plane::install_crds(&client).await;
        let run = keysmith::emulators::random_hex(6);
        let env_ns = |n: &str| format!("t{run}-{n}");
        let (ns, operator_ns, other_ns) = (env_ns(NS), env_ns(OPERATOR_NS), env_ns(OTHER_NS));
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for n in [
            namespace(&ns, &[("team", "ai")]),
            namespace(&operator_ns, &[]),
            namespace(&other_ns, &[("team", "web")]),
        ] {
            namespaces
                .create(&PostParams::default(), &n)
                .await
                .expect("namespace created");
        }

        let writes: Writes = Arc::default();
        let kube_faults = Arc::new(KubeFaults::default());
        let metrics = Arc::new(Metrics::new());
        let rbac_violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let ctx = Context::new(
            instrumented(
                cp.client().await,
                rbac_violations.clone(),
                writes.clone(),
                kube_faults.clone(),
            ),
            metrics.clone(),
            test_settings(&operator_ns),
        );
        let env = Env {
            client,
            ctx: Arc::new(ctx),
            control: EmulatorControl::new(emulator.url()),
            emulator,
            writes,
            kube_faults,
            http: reqwest::Client::new(),
            rbac_violations,
            ns,
            operator_ns,
            other_ns,
            cluster_providers: Mutex::default(),
            run,
        };
        for o in objects {
            env.seed(o).await;
        }
        env
    }

    /// A fresh controller context, as after an operator restart (nothing in memory), whose
    /// writes are recorded with this Env's.
    pub async fn restarted_context(&self) -> Arc<Context> {
        let cp = control_plane::shared().expect("the control plane runs");
        let metrics = Arc::new(Metrics::new());
        let ctx = Context::new(
            instrumented(
                cp.client().await,
                self.rbac_violations.clone(),
                self.writes.clone(),
                self.kube_faults.clone(),
            ),
            metrics.clone(),
            test_settings(&self.operator_ns),
        );
        Arc::new(ctx)
    }

    /// The test's namespace for a namespace name used in the tests.
    pub fn map_ns(&self, ns: &str) -> String {
        match ns {
            NS => self.ns.clone(),
            OPERATOR_NS => self.operator_ns.clone(),
            OTHER_NS => self.other_ns.clone(),
            other => other.to_string(),
        }
    }

    /// The real name of ClusterKeyProvider `name` (each test's carry a suffix).
    pub fn cluster_provider_name(&self, name: &str) -> String {
        self.cluster_providers
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| format!("{name}-{}", self.run))
            .clone()
    }

    /// Create one object given as the tests write it, in the test's namespaces.
    async fn seed(&self, mut o: Value) {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        let meta = &mut o["metadata"];
        for f in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
            if let Some(m) = meta.as_object_mut() {
                m.remove(f);
            }
        }
        if let Some(ns) = meta["namespace"].as_str().map(str::to_string) {
            meta["namespace"] = json!(self.map_ns(&ns));
        }
        let ns = meta["namespace"].as_str().map(str::to_string);
        let pp = PostParams::default();
        match kind.as_str() {
            "Secret" => {
                let s: Secret = serde_json::from_value(o).expect("a Secret");
                Api::<Secret>::namespaced(self.client.clone(), &ns.expect("namespace"))
                    .create(&pp, &s)
                    .await
                    .expect("Secret created");
            }
            "ConfigMap" => {
                let c: ConfigMap = serde_json::from_value(o).expect("a ConfigMap");
                Api::<ConfigMap>::namespaced(self.client.clone(), &ns.expect("namespace"))
                    .create(&pp, &c)
                    .await
                    .expect("ConfigMap created");
            }
            "ClusterKeyProvider" => {
                let mut p: ClusterKeyProvider =
                    serde_json::from_value(o).expect("a ClusterKeyProvider");
                p.metadata.name =
                    Some(self.cluster_provider_name(p.metadata.name.as_deref().expect("a name")));
                Api::<ClusterKeyProvider>::all(self.client.clone())
                    .create(&pp, &p)
                    .await
                    .expect("ClusterKeyProvider created");
            }
            "KeyProvider" => {
                let p: KeyProvider = serde_json::from_value(o).expect("a KeyProvider");
                Api::<KeyProvider>::namespaced(self.client.clone(), &ns.expect("namespace"))
                    .create(&pp, &p)
                    .await
                    .expect("KeyProvider created");
            }
            "ApiKey" => {
                let ak: ApiKey = serde_json::from_value(o).expect("an ApiKey");
                self.create(&ak).await;
            }
            other => panic!("the harness cannot seed a {other}"),
        }
    }

    pub fn apikeys(&self) -> Api<ApiKey> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Create `ak` in the test's namespace (its providerRef mapped to the test's provider).
    pub async fn create(&self, ak: &ApiKey) -> ApiKey {
        let mut ak = ak.clone();
        ak.metadata.namespace = Some(self.map_ns(ak.metadata.namespace.as_deref().unwrap_or(NS)));
        if ak.spec.provider_ref.kind == ProviderKind::ClusterKeyProvider {
            ak.spec.provider_ref.name = self.cluster_provider_name(&ak.spec.provider_ref.name);
        }
        Api::<ApiKey>::namespaced(
            self.client.clone(),
            ak.metadata.namespace.as_deref().unwrap(),
        )
        .create(&PostParams::default(), &ak)
        .await
        .expect("ApiKey created")
    }

    pub async fn get(&self, name: &str) -> ApiKey {
        self.apikeys().get(name).await.expect("ApiKey exists")
    }

    /// One reconcile of the current state of `name`, as the controller would run it.
    pub async fn reconcile(&self, name: &str) -> Result<Action, apikey::Error> {
        let ak = self.get(name).await;
        apikey::reconcile(Arc::new(ak), self.ctx.clone()).await
    }

    /// Reconcile until Ready=True (or `max` passes); returns the last ApiKey.
    /// Passes that only wait for an interrupted create to settle (reason `RecoveringCreate`,
    /// for up to the client timeout plus 5 s) or for the backoff after a failed create
    /// (`CreateBackoff`) do not count against `max`.
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
            let waiting = reason == "RecoveringCreate" || reason == "CreateBackoff";
            if waiting && std::time::Instant::now() < deadline {
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

    /// Delete `name`: with its finalizer, the API server keeps it (deletionTimestamp set)
    /// until a reconcile releases the finalizer.
    pub async fn delete(&self, name: &str) {
        self.apikeys()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete accepted");
    }
}

/// Requests the emulator counted for `route` (`"METHOD /path/{param}"`) in `GET /_emulator/stats`.
pub fn route_count(stats: &Value, route: &str) -> u64 {
    stats["byRoute"][route].as_u64().unwrap_or(0)
}

/// A client of the local control plane that authenticates with `token` only (a ServiceAccount
/// token: it sees exactly what its RBAC grants).
pub async fn client_with_token(token: &str) -> Client {
    let cp = control_plane::shared().expect("the local control plane");
    let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig readable");
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).expect("a Kubernetes client")
}
