//! A real Kubernetes cluster for the end-to-end tests (`tests/e2e*.rs`, `tests/plugin.rs`) and
//! the cluster benchmark (`tests/e2e_bench.rs`).
//!
//! Each [`Cluster`] is one run: the CRDs applied (server-side, left installed), a test namespace
//! and an operator namespace of its own, the OpenRouter emulator started as a child process on
//! loopback, its management key in a Secret of the operator namespace, and a ClusterKeyProvider
//! admitting only the test namespace. `keysmith run` is started as child processes
//! ([`Cluster::start_operator`]) outside the cluster, with the test's KUBECONFIG: it reaches the
//! API server like kubectl does and the emulator on loopback directly.
//!
//! Isolation: every operator of a run reconciles only ApiKeys labelled with the run
//! (`--label-selector`), so runs (and tests run in parallel) do not reconcile each other's
//! ApiKeys; the ClusterKeyProvider and namespaces carry the run's name.
//!
//! Cleanup (also on panic, from `Drop`): child processes are killed (SIGKILL, `kill_on_drop`, and
//! `PR_SET_PDEATHSIG` for a test binary that is itself killed),
//! the namespaces and the ClusterKeyProvider are deleted, and finalizers left on the run's
//! ApiKeys are removed so that the namespace can go (their keys lived only in the emulator).
//! `KEYSMITH_E2E_KEEP=1` leaves everything in place for inspection.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use keysmith::api::{ApiKey, ClusterKeyProvider};
use keysmith::emulators::random_hex;

pub use crate::apikey_status::{is_ready, ready};
use crate::control_plane;
use crate::emulator_control::EmulatorControl;
use crate::paths::{keysmith_bin, repo_root, target_tmpdir};

/// Label on every object of a run; the run's operators reconcile only ApiKeys carrying it.
pub const RUN_LABEL: &str = "e2e.keysmith.dev/run";
const FIELD_MANAGER: &str = "keysmith-e2e";
pub const MGMT_SECRET: &str = "openrouter-mgmt";

/// The cluster of this test binary: an existing one when `KEYSMITH_E2E=1` and `KUBECONFIG` are
/// set, else the local control plane (`control_plane.rs`), started on first use and shared by
/// every test of the binary. `Err` says why there is none.
fn target() -> &'static Result<PathBuf, String> {
    static TARGET: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TARGET.get_or_init(|| {
        control_plane::install_crypto_provider();
        let external = std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty());
        match external {
            Some(k) if std::env::var("KEYSMITH_E2E").as_deref() == Ok("1") => {
                eprintln!(
                    "e2e: using the cluster of KUBECONFIG={}",
                    k.to_string_lossy()
                );
                Ok(PathBuf::from(k))
            }
            _ => control_plane::shared().map(|cp| cp.kubeconfig.clone()),
        }
    })
}

/// The kubeconfig of the cluster the tests run against (after [`require`]).
pub fn kubeconfig() -> PathBuf {
    target()
        .clone()
        .expect("kubeconfig() is called after require()")
}

/// A cluster test starts with this. Cluster tests are `#[ignore]`d (`cargo test` reports them as
/// ignored without running them); when one runs (`--ignored`, as scripts/test.sh does where the
/// control plane's binaries are), a cluster is required: without one the test fails and says
/// why, it never passes without having run (docs/testing.md).
pub fn require(what: &str) {
    crate::skip::require("cluster", what, target().as_ref().map(|_| ()));
}

/// Transition (tests written before `require`; new tests are `#[ignore]`d and call
/// [`require`]): whether the cluster test may run: every variable of `flags` is `1` and a
/// cluster is available. Without one this says so loudly, or panics when
/// `KEYSMITH_REQUIRE_CLUSTER=1`.
pub fn enabled(what: &str, flags: &[&str]) -> bool {
    let missing: Vec<String> = flags
        .iter()
        .filter(|f| std::env::var(f).as_deref() != Ok("1"))
        .map(|f| format!("{f}=1"))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipping {what}: set {} (see docs/testing.md)",
            missing.join(" and ")
        );
        return false;
    }
    match target() {
        Ok(_) => true,
        Err(why) if std::env::var("KEYSMITH_REQUIRE_CLUSTER").as_deref() == Ok("1") => {
            panic!("KEYSMITH_REQUIRE_CLUSTER=1 but there is no cluster for {what}: {why}")
        }
        Err(why) => {
            eprintln!("\n*** CLUSTER TEST NOT RUN: {what}: {why} (see docs/testing.md) ***\n");
            false
        }
    }
}

/// Faults of the emulator (`keysmith emulate openrouter --latency … --rate-limit …`).
#[derive(Clone, Default)]
pub struct EmulatorOptions {
    pub latency: Option<Duration>,
    pub rate_limit: Option<f64>,
    /// Seconds asked for in 429 answers (the emulator's default: 1).
    pub retry_after: Option<u64>,
    /// More flags (e.g. `--failure-rate 0.2 --fault-kinds 5xx,timeout,429-burst`).
    pub extra_args: Vec<String>,
}

/// Settings of the run's ClusterKeyProvider.
#[derive(Clone, Default)]
pub struct ProviderOptions {
    /// `spec.refreshInterval` (default: the operator's, 5m).
    pub refresh_interval: Option<String>,
    /// `spec.rateLimit.requestsPerSecond` (client side).
    pub client_rps: Option<f64>,
}

/// The emulator child process.
pub struct Emulator {
    child: Child,
    /// `http://127.0.0.1:PORT` as printed by the emulator.
    pub url: String,
    pub control: EmulatorControl,
}

/// One `keysmith run` child process.
pub struct Operator {
    child: Child,
    /// `POD_NAME` given to it: its Lease holder identity.
    pub name: String,
    pub pid: u32,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
}

pub struct Cluster {
    pub client: Client,
    /// Random id of the run (label value, part of every name).
    pub run: String,
    /// Namespace of the ApiKeys.
    pub ns: String,
    /// Namespace of the operator: its Lease and the management-key Secret.
    pub operator_ns: String,
    /// Name of the ClusterKeyProvider.
    pub provider: String,
    pub emulator: Emulator,
    pub http: reqwest::Client,
    /// Logs of the child processes.
    pub log_dir: PathBuf,
    operator_logs: Mutex<Vec<PathBuf>>,
}

pub fn run_labels(run: &str) -> Value {
    json!({ RUN_LABEL: run, "app.kubernetes.io/part-of": "keysmith-e2e" })
}

/// Apply the CRDs (from `crds/*.yaml` if the directory exists, else from the Rust types, which is
/// what `keysmith crds` prints) with server-side apply, and wait until each is Established.
pub async fn install_crds(client: &Client) {
    let dir = repo_root().join("crds");
    let crds: Vec<CustomResourceDefinition> = if dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("crds/ is readable")
            .map(|e| e.expect("crds/ entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("CRD file is readable");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = serde_yaml::Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
                if v.is_null() {
                    continue;
                }
                out.push(serde_yaml::from_value(v).unwrap_or_else(|e| {
                    panic!("{}: not a CustomResourceDefinition: {e}", f.display())
                }));
            }
        }
        out
    } else {
        keysmith::api::crds()
    };
    assert!(!crds.is_empty(), "no CRDs to install");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &crds {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused CRD {name}: {e}"));
    }
    for crd in &crds {
        let name = crd.name_any();
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established after 60s"))
        .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
    }
}

/// A free loopback port (bound and released; another process could take it in between, which is
/// unlikely on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Emulator {
    /// `keysmith emulate <provider> <args>` on a free loopback port, with `env` (credentials go
    /// through the environment where the emulator reads them there, so they are not in `ps`).
    async fn start(
        dir: &Path,
        provider: &str,
        opts: &EmulatorOptions,
        args: &[String],
        env: &[(String, String)],
    ) -> Emulator {
        let log = dir.join(format!("emulator-{provider}.log"));
        let file = std::fs::File::create(&log).expect("emulator log file");
        let bin = keysmith_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["emulate", "--listen", "127.0.0.1:0", provider]);
        cmd.args(args);
        if let Some(l) = opts.latency {
            cmd.args(["--latency", &format!("{}ms", l.as_millis())]);
        }
        if let Some(r) = opts.rate_limit {
            cmd.args(["--rate-limit", &r.to_string()]);
        }
        if let Some(r) = opts.retry_after {
            cmd.args(["--retry-after", &r.to_string()]);
        }
        cmd.args(&opts.extra_args);
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true);
        // Also when the test binary is killed (kill_on_drop needs a Drop that then never runs).
        control_plane::die_with_parent(cmd.as_std_mut());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} emulate: {e}", bin.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, url)) = line.split_once("listening on ") {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the emulator did not print its address; {}:\n{}",
                log.display(),
                tail(&log, 20)
            )
        });
        // Keep reading so that the emulator never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Emulator {
            child,
            control: EmulatorControl::new(url.clone()),
            url,
        }
    }
}

/// Builds a ClusterKeyProvider's provider block from the emulator's URL and the operator namespace.
pub type ProviderSpecFn = Box<dyn Fn(&str, &str) -> Value + Send + Sync>;

/// Which emulator a run starts and the ClusterKeyProvider that points at it.
pub struct ProviderSetup {
    /// `keysmith emulate <emulator>`.
    pub emulator: &'static str,
    /// Flags after the provider name.
    pub emulator_args: Vec<String>,
    /// Environment of the emulator.
    pub emulator_env: Vec<(String, String)>,
    /// Credential Secret created in the operator namespace: name and string data.
    pub credentials: Option<(&'static str, Vec<(&'static str, String)>)>,
    /// The provider block of the ClusterKeyProvider's spec (e.g. `{"boltz": {…}}`), given the
    /// emulator's URL and the operator namespace (where the credentials are).
    pub spec: ProviderSpecFn,
}

impl ProviderSetup {
    /// OpenRouter with a random management key.
    pub fn openrouter() -> ProviderSetup {
        let management_key = format!("sk-or-v1-e2e-{}", random_hex(48));
        ProviderSetup {
            emulator: "openrouter",
            emulator_args: vec![],
            emulator_env: vec![(
                "KEYSMITH_EMULATOR_MANAGEMENT_KEY".into(),
                management_key.clone(),
            )],
            credentials: Some((MGMT_SECRET, vec![("token", management_key)])),
            spec: Box::new(|url, operator_ns| {
                json!({ "openrouter": {
                    "baseURL": format!("{url}/api/v1"),
                    "managementKeySecretRef": { "name": MGMT_SECRET, "key": "token", "namespace": operator_ns },
                }})
            }),
        }
    }
}

impl Operator {
    /// SIGKILL, as a node failure or an OOM kill would: no cleanup, no Lease release.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL delivered");
        let _ = self.child.wait().await;
    }

    /// Body of `/readyz` (`leader`, `standby`, `starting`), if it answers 200.
    pub async fn readyz(&self, http: &reqwest::Client) -> Option<String> {
        let r = http
            .get(format!("http://{}/readyz", self.metrics_addr))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }

    /// Sum of every sample of a counter family on `/metrics` (e.g. `keysmith_kubernetes_writes_total`).
    pub async fn metric_sum(&self, http: &reqwest::Client, family: &str) -> f64 {
        self.metric_sum_where(http, family, "").await
    }

    /// Like [`Operator::metric_sum`], over the samples whose line contains `filter`
    /// (e.g. `result="rate_limited"`).
    pub async fn metric_sum_where(
        &self,
        http: &reqwest::Client,
        family: &str,
        filter: &str,
    ) -> f64 {
        let text = http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics body");
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} "))
            })
            .filter(|l| l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    }
}

impl Cluster {
    /// Set up an OpenRouter run named `test` (a few lowercase letters: it is part of the
    /// namespace names).
    pub async fn start(test: &str, emu: EmulatorOptions, provider: ProviderOptions) -> Cluster {
        Self::start_with(test, ProviderSetup::openrouter(), emu, provider).await
    }

    /// Set up a run named `test` with the emulator and ClusterKeyProvider of `setup`.
    pub async fn start_with(
        test: &str,
        setup: ProviderSetup,
        emu: EmulatorOptions,
        provider: ProviderOptions,
    ) -> Cluster {
        let kubeconfig = kubeconfig();
        let client = control_plane::client_from(&kubeconfig).await;
        install_crds(&client).await;
        let run = random_hex(6);
        let ns = format!("ks-e2e-{test}-{run}");
        let operator_ns = format!("ks-e2e-{test}-{run}-op");
        let log_dir = target_tmpdir().join(format!("e2e-{test}-{run}"));
        std::fs::create_dir_all(&log_dir).expect("log directory");
        eprintln!(
            "e2e run {run}: namespaces {ns} and {operator_ns}; logs in {}",
            log_dir.display()
        );

        let namespaces: Api<Namespace> = Api::all(client.clone());
        for name in [&ns, &operator_ns] {
            let n: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": name, "labels": run_labels(&run) },
            }))
            .unwrap();
            namespaces
                .create(&PostParams::default(), &n)
                .await
                .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        }

        let (emulator, provider_name) = add_provider(
            Run {
                client: &client,
                run: &run,
                operator_ns: &operator_ns,
                log_dir: &log_dir,
            },
            format!("ks-e2e-{run}"),
            setup,
            &emu,
            &provider,
        )
        .await;

        Cluster {
            client,
            run,
            ns,
            operator_ns,
            provider: provider_name,
            emulator,
            http: reqwest::Client::new(),
            log_dir,
            operator_logs: Mutex::new(Vec::new()),
        }
    }

    /// Start `keysmith run` named `name` (its POD_NAME, hence its Lease holder identity) with
    /// `extra` flags, and wait until `/readyz` answers. Declare the returned value after the
    /// Cluster so that it is dropped (killed) first.
    pub async fn start_operator(&self, name: &str, extra: &[&str]) -> Operator {
        self.start_operator_env(name, extra, &[]).await
    }

    /// [`Cluster::start_operator`] with extra environment variables (e.g. another KUBECONFIG).
    pub async fn start_operator_env(
        &self,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = self.log_dir.join(format!("operator-{name}.log"));
        let file = std::fs::File::create(&log).expect("operator log file");
        // BENCH_OPERATOR_BIN: another build of the operator (e.g. other release-profile
        // settings), for the cluster benchmark; default: this test build's.
        let bin = std::env::var_os("BENCH_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(keysmith_bin);
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .args(["--namespace", &self.operator_ns])
            .args(["--label-selector", &format!("{RUN_LABEL}={}", self.run)])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("KEYSMITH_E2E_LOG").unwrap_or_else(|_| "info,keysmith=debug".into()),
            )
            .env("KUBECONFIG", kubeconfig())
            .env("POD_NAME", name)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .kill_on_drop(true);
        // Also when the test binary is killed (kill_on_drop needs a Drop that then never runs).
        control_plane::die_with_parent(cmd.as_std_mut());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} run: {e}", bin.display()));
        let pid = child.id().expect("a running child has a pid");
        self.operator_logs.lock().unwrap().push(log.clone());
        let mut op = Operator {
            child,
            name: name.to_string(),
            pid,
            metrics_addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = op.child.try_wait() {
                panic!(
                    "operator {name} exited ({status}) before it was ready; {}:\n{}",
                    op.log.display(),
                    tail(&op.log, 40)
                );
            }
            if op.readyz(&self.http).await.is_some() {
                return op;
            }
            if Instant::now() > deadline {
                panic!(
                    "operator {name}: /readyz not answering after 60s; {}:\n{}",
                    op.log.display(),
                    tail(&op.log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Poll `check` every 250 ms until it returns Ok, or panic after `timeout` with `what`, the
    /// last state `check` described, and the end of every operator log.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match check().await {
                Ok(v) => return v,
                Err(state) if Instant::now() > deadline => {
                    let logs: Vec<String> = self
                        .operator_logs
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|l| format!("--- {} (last 30 lines)\n{}", l.display(), tail(l, 30)))
                        .collect();
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; last seen: {state}\n{}",
                        logs.join("\n")
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    pub fn apikeys(&self) -> Api<ApiKey> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// An ApiKey of the run using its ClusterKeyProvider; `spec` adds to `providerRef`.
    pub fn apikey(&self, name: &str, spec: Value) -> ApiKey {
        let mut s =
            json!({ "providerRef": { "kind": "ClusterKeyProvider", "name": self.provider } });
        if let (Some(s), Value::Object(extra)) = (s.as_object_mut(), spec) {
            s.extend(extra);
        }
        serde_json::from_value(json!({
            "apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey",
            "metadata": { "name": name, "namespace": self.ns, "labels": run_labels(&self.run) },
            "spec": s,
        }))
        .expect("ApiKey manifest")
    }

    pub async fn create_apikey(&self, name: &str, spec: Value) -> ApiKey {
        self.apikeys()
            .create(&PostParams::default(), &self.apikey(name, spec))
            .await
            .unwrap_or_else(|e| panic!("the API server refused ApiKey {name}: {e}"))
    }

    /// A kubeconfig for the test's API server that authenticates only with a token of
    /// ServiceAccount `sa` in `ns`.
    pub async fn service_account_kubeconfig(&self, ns: &str, sa: &str) -> String {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), ns);
        let tr: k8s_openapi::api::authentication::v1::TokenRequest =
            serde_json::from_value(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": { "expirationSeconds": 3600 }
            }))
            .unwrap();
        let tr = sas
            .create_subresource::<_, k8s_openapi::api::authentication::v1::TokenRequest>(
                "token",
                sa,
                &Default::default(),
                &tr,
            )
            .await
            .expect("TokenRequest for the chart's ServiceAccount");
        let token = tr.status.expect("token issued").token;
        let current =
            kube::config::Kubeconfig::read_from(kubeconfig()).expect("kubeconfig readable");
        let ctx_name = current.current_context.clone().expect("a current context");
        let context = current
            .contexts
            .iter()
            .find(|x| x.name == ctx_name)
            .and_then(|x| x.context.clone())
            .expect("context");
        let named_cluster = current
            .clusters
            .iter()
            .find(|x| x.name == context.cluster)
            .cloned()
            .expect("cluster");
        let sa_config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [ serde_json::to_value(&named_cluster).unwrap() ],
            "users": [ { "name": "keysmith-sa", "user": { "token": token } } ],
            "contexts": [ { "name": "keysmith-sa", "context": { "cluster": named_cluster.name, "user": "keysmith-sa", "namespace": ns } } ],
            "current-context": "keysmith-sa",
        });
        let path = self.log_dir.join("kubeconfig-serviceaccount.yaml");
        std::fs::write(&path, serde_yaml::to_string(&sa_config).unwrap())
            .expect("kubeconfig written");
        path.to_string_lossy().to_string()
    }

    /// Wait until `name` is Ready=True for its current generation and its key, at the run's
    /// emulator, has lost its provisional name (keysmith renames a key right after the status
    /// write that records it, so Ready can be seen a moment before the rename).
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> ApiKey {
        let api = self.apikeys();
        self.eventually(&format!("ApiKey {}/{name} Ready", self.ns), timeout, || {
            let api = api.clone();
            async move {
                match api.get_opt(name).await {
                    Ok(Some(ak)) if is_ready(&ak) => {
                        let id = ak.status.as_ref().and_then(|s| s.key_id.clone());
                        if let Some(id) = id {
                            let keys = self.emulator_keys().await;
                            let provisional = keys.iter().any(|k| {
                                k.as_object().is_some_and(|o| {
                                    o.values().any(|v| v == id.as_str())
                                        && o.values().any(|v| {
                                            v.as_str()
                                                .is_some_and(|n| n.starts_with("keysmith-attempt-"))
                                        })
                                })
                            });
                            if provisional {
                                return Err("Ready, its key not renamed yet".into());
                            }
                        }
                        Ok(ak)
                    }
                    Ok(Some(ak)) => Err(format!(
                        "Ready={:?}, generation {:?}, observedGeneration {:?}",
                        ready(&ak),
                        ak.metadata.generation,
                        ak.status.as_ref().and_then(|s| s.observed_generation)
                    )),
                    Ok(None) => Err("the ApiKey does not exist".into()),
                    Err(e) => Err(format!("GET failed: {e}")),
                }
            }
        })
        .await
    }

    /// Wait until `name` no longer exists (its finalizer released).
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let api = self.apikeys();
        self.eventually(&format!("ApiKey {}/{name} gone", self.ns), timeout, || {
            let api = api.clone();
            async move {
                match api.get_opt(name).await {
                    Ok(None) => Ok(()),
                    Ok(Some(ak)) => Err(format!(
                        "still there: deletionTimestamp {:?}, finalizers {:?}, Ready={:?}",
                        ak.metadata.deletion_timestamp,
                        ak.metadata.finalizers,
                        ready(&ak)
                    )),
                    Err(e) => Err(format!("GET failed: {e}")),
                }
            }
        })
        .await
    }

    /// Create (or replace the data of) a Secret of the test namespace holding `data`, with the
    /// run's labels and `labels`.
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)], labels: &[(&str, &str)]) {
        let mut l = run_labels(&self.run);
        for (k, v) in labels {
            l[*k] = json!(v);
        }
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name, "namespace": self.ns, "labels": l },
            "type": "Opaque",
            "stringData": data,
        });
        self.secrets()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap_or_else(|e| panic!("Secret {name} not applied: {e}"));
    }

    /// Another provider for the run: `setup`'s emulator (a child process) and a
    /// ClusterKeyProvider `ks-e2e-<run>-<suffix>` pointing at it. Both go with the Cluster.
    pub async fn add_provider(
        &self,
        suffix: &str,
        setup: ProviderSetup,
        emu: EmulatorOptions,
        provider: ProviderOptions,
    ) -> (Emulator, String) {
        add_provider(
            Run {
                client: &self.client,
                run: &self.run,
                operator_ns: &self.operator_ns,
                log_dir: &self.log_dir,
            },
            format!("ks-e2e-{}-{suffix}", self.run),
            setup,
            &emu,
            &provider,
        )
        .await
    }

    /// Another namespace of the run (labelled like the first, so the run's providers admit
    /// it); deleted with the Cluster.
    pub async fn add_namespace(&self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.ns);
        let n: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": run_labels(&self.run) },
        }))
        .unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        name
    }

    /// The value the Secret `name` holds under `key`.
    pub async fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let s = self.secrets().get_opt(name).await.expect("GET Secret")?;
        s.data?
            .get(key)
            .map(|b| String::from_utf8(b.0.clone()).expect("UTF-8 value"))
    }

    /// Every key the emulator ever held (`GET /_emulator/keys`), deleted ones with `active: false`.
    pub async fn emulator_keys(&self) -> Vec<Value> {
        self.emulator.control.keys().await
    }

    /// The emulator's live keys of the run's ApiKeys: named `<ns>/<name>` (keysmith's default
    /// display name).
    pub async fn live_keys(&self) -> Vec<Value> {
        let prefix = format!("{}/", self.ns);
        self.emulator_keys()
            .await
            .into_iter()
            .filter(|k| {
                k["active"] == true && k["name"].as_str().is_some_and(|n| n.starts_with(&prefix))
            })
            .collect()
    }

    /// The emulator's live keys of ApiKey `name`.
    pub async fn live_keys_named(&self, name: &str) -> Vec<Value> {
        let want = format!("{}/{name}", self.ns);
        let mut keys = self.live_keys().await;
        keys.retain(|k| k["name"] == want.as_str());
        keys
    }

    /// Does the emulator accept `value` on `GET /api/v1/key` (a live key)?
    pub async fn key_works(&self, value: &str) -> bool {
        self.emulator.control.openrouter_key_works(value).await
    }

    /// `GET /_emulator/stats`: `{"requests": n, "byRoute": {...}}`.
    pub async fn emulator_stats(&self) -> Value {
        self.emulator.control.stats().await
    }

    pub async fn reset_emulator_stats(&self) {
        self.emulator.control.reset_stats().await
    }

    /// The Lease `name` in the operator namespace.
    pub async fn lease(&self, name: &str) -> Option<Lease> {
        Api::<Lease>::namespaced(self.client.clone(), &self.operator_ns)
            .get_opt(name)
            .await
            .expect("GET Lease")
    }
}

/// The run a provider is added to: its client, label, operator namespace and log directory.
struct Run<'a> {
    client: &'a Client,
    run: &'a str,
    operator_ns: &'a str,
    log_dir: &'a Path,
}

/// Start `setup`'s emulator, put its credentials in a Secret of the operator namespace and
/// create the ClusterKeyProvider `provider_name` that points at it, admitting (and allowing
/// adoption for) the run's namespaces.
async fn add_provider(
    to: Run<'_>,
    provider_name: String,
    setup: ProviderSetup,
    emu: &EmulatorOptions,
    provider: &ProviderOptions,
) -> (Emulator, String) {
    let Run {
        client,
        run,
        operator_ns,
        log_dir,
    } = to;
    let emulator = Emulator::start(
        log_dir,
        setup.emulator,
        emu,
        &setup.emulator_args,
        &setup.emulator_env,
    )
    .await;
    if let Some((name, data)) = &setup.credentials {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name, "namespace": operator_ns, "labels": run_labels(run) },
            "type": "Opaque",
            "stringData": data,
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), operator_ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("credentials Secret created");
    }

    let mut spec = (setup.spec)(&emulator.url, operator_ns);
    spec["namespaceSelector"] = json!({ "matchLabels": { RUN_LABEL: run } });
    // The run's own namespaces may adopt keys through it (the adoption tests do): a
    // ClusterKeyProvider allows adoption only when its owner says so (docs/tenancy.md).
    spec["adoption"] = json!({
        "allowed": true,
        "namespaceSelector": { "matchLabels": { RUN_LABEL: run } }
    });
    if let Some(r) = &provider.refresh_interval {
        spec["refreshInterval"] = json!(r);
    }
    if let Some(rps) = provider.client_rps {
        spec["rateLimit"] =
            json!({ "requestsPerSecond": rps, "burst": rps.ceil().max(1.0) as u32 });
    }
    let ckp: ClusterKeyProvider = serde_json::from_value(json!({
        "apiVersion": "keysmith.dev/v1alpha1", "kind": "ClusterKeyProvider",
        "metadata": { "name": provider_name, "labels": run_labels(run) },
        "spec": spec,
    }))
    .expect("ClusterKeyProvider manifest");
    Api::<ClusterKeyProvider>::all(client.clone())
        .create(&PostParams::default(), &ckp)
        .await
        .expect("ClusterKeyProvider created");
    (emulator, provider_name)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.emulator.child.start_kill();
        if std::env::var("KEYSMITH_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!(
                "KEYSMITH_E2E_KEEP=1: left namespaces {} and {} and ClusterKeyProvider {}; logs in {}",
                self.ns,
                self.operator_ns,
                self.provider,
                self.log_dir.display()
            );
            return;
        }
        let run = self.run.clone();
        // The test's runtime may be unwinding (or single-threaded and blocked here): clean up on
        // a runtime and a client of our own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let client = control_plane::client_from(&kubeconfig()).await;
                cleanup(client, &run).await
            })
        });
        let _ = cleanup.join();
    }
}

/// Delete every namespace and ClusterKeyProvider of the run, and release the finalizers left on
/// its ApiKeys.
async fn cleanup(client: Client, run: &str) {
    let selector = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = match namespaces.list(&selector).await {
        Ok(l) => l.items.iter().map(|n| n.name_any()).collect(),
        Err(e) => {
            eprintln!("e2e cleanup: listing the run's namespaces: {e}");
            vec![]
        }
    };
    for name in &names {
        if let Err(e) = namespaces.delete(name, &DeleteParams::default()).await {
            eprintln!("e2e cleanup: deleting namespace {name}: {e}");
        }
    }
    if let Err(e) = Api::<ClusterKeyProvider>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &selector)
        .await
    {
        eprintln!("e2e cleanup: deleting the run's ClusterKeyProviders: {e}");
    }
    for ns in &names {
        release_finalizers(&client, ns).await;
    }
}

async fn release_finalizers(client: &Client, ns: &str) {
    // The namespace is terminating, so no operator adds a finalizer again; the ones left (the
    // operator was killed, or could not revoke) would keep the namespace forever.
    let apikeys: Api<ApiKey> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = match apikeys.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("e2e cleanup: listing ApiKeys in {ns}: {e}");
                break;
            }
        };
        if left.is_empty() {
            break;
        }
        let patch = Patch::Merge(json!({ "metadata": { "finalizers": null } }));
        futures::stream::iter(left.iter().filter(|ak| !ak.finalizers().is_empty()))
            .for_each_concurrent(32, |ak| {
                let apikeys = apikeys.clone();
                let patch = &patch;
                async move {
                    let _ = apikeys
                        .patch(&ak.name_any(), &PatchParams::default(), patch)
                        .await;
                }
            })
            .await;
        if Instant::now() > deadline {
            eprintln!(
                "e2e cleanup: {} ApiKeys still in {ns} after 120s",
                left.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
