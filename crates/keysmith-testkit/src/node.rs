//! A real one-node Kubernetes cluster for `tests/e2e_node.rs`: Pods run. The operator runs as a
//! pod from its image, installed by `helm install charts/keysmith`.
//!
//! [`shared`] (first use, once per test binary):
//! 1. checks what the node needs (root; containerd, runc, iptables, the CNI plugins; buildah and
//!    mmdebstrap for the image: `scripts/install-node-tools.sh` installs them from Debian);
//! 2. builds the operator image with `scripts/build-image.sh` from this test binary's own
//!    `keysmith` (so the image holds the code under test; `KEYSMITH_NODE_IMAGE_BIN` names another
//!    binary, e.g. target/release/keysmith) as `localhost/keysmith:e2e-a`, and again with another
//!    SOURCE_DATE_EPOCH (so another digest) as `localhost/keysmith:e2e-b`, the "new image" of the
//!    upgrade test;
//! 3. builds the pause and busybox images (`node/build-images.sh`) when they are missing;
//! 4. starts the node with `node/up.sh` (scripts found in `../shared/k8s/node/` next to the
//!    checkout, or `KEYSMITH_NODE_SCRIPTS`), importing the images (`EXTRA_IMAGES`).
//!
//! Teardown: `node/down.sh` with `PURGE=1` (every process by pid, mounts, netns, iptables chains,
//! the bridge, etcd/containerd state) runs when the test binary exits (an `atexit` handler, which
//! also runs after failed tests), and a watchdog process (its own session) runs it if the test
//! binary is killed. `KEYSMITH_NODE_KEEP=1` leaves the cluster up for inspection
//! (`export KUBECONFIG=/tmp/keysmith-node/admin.kubeconfig`).
//!
//! The node tests are `#[ignore]`d; one that runs calls [`require`], which fails the test with
//! the reason where the node cannot start (docs/testing.md).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use keysmith::api::ApiKey;

pub const IMAGE_REPO: &str = "localhost/keysmith";
pub const TAG_A: &str = "e2e-a";
pub const TAG_B: &str = "e2e-b";
pub const BUSYBOX: &str = "localhost/busybox:1.35";
pub const EMULATOR_PORT: u16 = 8787;
pub const RUN_LABEL: &str = "e2e.keysmith.dev/run";

/// The running node cluster.
pub struct Node {
    pub l: PathBuf,
    pub scripts: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    pub log_dir: PathBuf,
    /// `sha256:…` of the operator image (OCI manifest digest), and its archive sizes.
    pub image_digest: String,
    pub image_summary: String,
}

use crate::paths::{keysmith_bin, repo_root, target_tmpdir};

fn scripts_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KEYSMITH_NODE_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/k8s/node"));
    if dir.join("up.sh").is_file() && dir.join("down.sh").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "no node scripts at {} (up.sh, down.sh; see ../shared/k8s/README.md \"A real node\", or set KEYSMITH_NODE_SCRIPTS)",
            dir.display()
        ))
    }
}

fn on_path(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// helm / kubectl: `$HELM` / `$KUBECTL`, then `.tools/bin/` (scripts/install-tools.sh), then PATH.
fn tool(name: &str, var: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(p.into());
    }
    let local = repo_root().join(".tools/bin").join(name);
    if local.is_file() {
        return Ok(local);
    }
    on_path(name).ok_or_else(|| format!("no {name} (run scripts/install-tools.sh or set {var})"))
}

fn prerequisites() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("the node needs root (kubelet, containerd, iptables, mounts)".into());
    }
    let mut missing: Vec<&str> = [
        "containerd",
        "ctr",
        "runc",
        "iptables",
        "buildah",
        "mmdebstrap",
        "gcc",
        "jq",
        "openssl",
        "curl",
        "xz",
    ]
    .into_iter()
    .filter(|c| on_path(c).is_none())
    .collect();
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        missing.push("containernetworking-plugins");
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (scripts/install-node-tools.sh installs them from Debian)",
            missing.join(", ")
        ))
    }
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a script with its output in `log`; `Err` carries the log's tail.
fn run_logged(mut cmd: Command, log: &Path) -> Result<(), String> {
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({status}); {} ends with:\n{}",
            log.display(),
            tail(log, 25)
        ))
    }
}

struct Teardown {
    down: PathBuf,
    l: PathBuf,
    kubectl: PathBuf,
    log: PathBuf,
    watchdog: u32,
}
static TEARDOWN: OnceLock<Teardown> = OnceLock::new();

fn down_command(t: &Teardown) -> Command {
    let mut c = Command::new("bash");
    c.arg(&t.down)
        .env("L", &t.l)
        .env("PURGE", "1")
        .env("KUBECTL", &t.kubectl);
    c
}

/// Runs when the test binary exits (after every test, passed or failed).
extern "C" fn teardown_at_exit() {
    let Some(t) = TEARDOWN.get() else { return };
    unsafe {
        libc::kill(t.watchdog as i32, libc::SIGKILL);
    }
    if std::env::var("KEYSMITH_NODE_KEEP").as_deref() == Ok("1") {
        eprintln!(
            "e2e_node: KEYSMITH_NODE_KEEP=1: the node stays up (KUBECONFIG={}/admin.kubeconfig; stop it with L={} {})",
            t.l.display(),
            t.l.display(),
            t.down.display()
        );
        return;
    }
    let started = Instant::now();
    let ok = std::fs::File::create(&t.log)
        .ok()
        .and_then(|f| {
            down_command(t)
                .stdin(Stdio::null())
                .stdout(f.try_clone().ok()?)
                .stderr(f)
                .status()
                .ok()
        })
        .is_some_and(|s| s.success());
    eprintln!(
        "e2e_node: node torn down by down.sh in {:.1} s ({}; log {})",
        started.elapsed().as_secs_f64(),
        if ok { "ok" } else { "FAILED" },
        t.log.display()
    );
}

fn start() -> Result<Node, String> {
    let started = Instant::now();
    prerequisites()?;
    let scripts = scripts_dir()?;
    let kubectl = tool("kubectl", "KUBECTL")?;
    let helm = tool("helm", "HELM")?;
    let l =
        PathBuf::from(std::env::var("KEYSMITH_NODE_DIR").unwrap_or("/tmp/keysmith-node".into()));
    let log_dir = target_tmpdir().join("e2e-node");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;

    // 1. the operator image, from the binary under test, and a second one (another
    //    SOURCE_DATE_EPOCH: another digest) for the upgrade test
    let bin = std::env::var_os("KEYSMITH_NODE_IMAGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(keysmith_bin);
    let build_image =
        |tag: &str, epoch: Option<&str>| -> Result<(PathBuf, String, String), String> {
            let dir = log_dir.join(format!("image-{tag}"));
            let mut build = Command::new("bash");
            build
                .arg(repo_root().join("scripts/build-image.sh"))
                .env("IMAGE", format!("{IMAGE_REPO}:{tag}"))
                .env("KEYSMITH_BIN", &bin)
                .env("OUT", &dir);
            if let Some(e) = epoch {
                build.env("SOURCE_DATE_EPOCH", e);
            }
            let t = Instant::now();
            let log = log_dir.join(format!("build-image-{tag}.log"));
            run_logged(build, &log)?;
            let digest = std::fs::read_to_string(dir.join("image-digest"))
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("no image digest: {e}"))?;
            let summary = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("size:"))
                .collect::<Vec<_>>()
                .join("; ");
            eprintln!(
                "e2e_node: image {IMAGE_REPO}:{tag} ({digest}) from {} built in {:.1} s: {summary}",
                bin.display(),
                t.elapsed().as_secs_f64()
            );
            Ok((dir.join("keysmith-docker.tar"), digest, summary))
        };
    let (archive_a, image_digest, image_summary) = build_image(TAG_A, None)?;
    let (archive_b, digest_b, _) = build_image(TAG_B, Some("86400"))?;
    if digest_b == image_digest {
        return Err(format!(
            "{TAG_A} and {TAG_B} have the same digest {digest_b}"
        ));
    }

    // 2. pause + busybox
    if !l.join("images/pause.tar").is_file() || !l.join("images/busybox.tar").is_file() {
        let mut c = Command::new("bash");
        c.arg(scripts.join("build-images.sh")).env("L", &l);
        run_logged(c, &log_dir.join("build-images.log"))?;
    }

    // 3. a node left over by an earlier run that was killed before its watchdog ran
    let teardown = Teardown {
        down: scripts.join("down.sh"),
        l: l.clone(),
        kubectl: kubectl.clone(),
        log: log_dir.join("down.log"),
        watchdog: 0,
    };
    if l.join("run/apiserver.pid").is_file() || l.join("run/kubelet.pid").is_file() {
        eprintln!("e2e_node: a node of an earlier run is there: down.sh first");
        run_logged(down_command(&teardown), &log_dir.join("down-stale.log"))?;
    }

    // 4. teardown however this process ends: a watchdog in its own session runs down.sh once
    //    this process is gone (SIGKILL included); the atexit handler runs it first on a normal
    //    exit and stops the watchdog.
    let me = std::process::id();
    let mut wd = Command::new("sh");
    wd.arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; exec bash \"$0\" >\"$1\" 2>&1"
        ))
        .arg(&teardown.down)
        .arg(log_dir.join("down-watchdog.log"))
        .env("L", &l)
        .env("PURGE", "1")
        .env("KUBECTL", &kubectl)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        wd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let watchdog = wd.spawn().map_err(|e| format!("watchdog: {e}"))?.id();
    if TEARDOWN
        .set(Teardown {
            watchdog,
            ..teardown
        })
        .is_ok()
    {
        unsafe {
            libc::atexit(teardown_at_exit);
        }
    }

    // 5. the node, with the image imported
    let t = Instant::now();
    let mut up = Command::new("bash");
    up.arg(scripts.join("up.sh"))
        .env("L", &l)
        .env("KUBECTL", &kubectl)
        .env(
            "EXTRA_IMAGES",
            format!("{} {}", archive_a.display(), archive_b.display()),
        );
    run_logged(up, &log_dir.join("up.log"))?;
    eprintln!(
        "e2e_node: node up in {:.1} s ({:.1} s since the start, image build included)",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(Node {
        kubeconfig: l.join("admin.kubeconfig"),
        l,
        scripts,
        kubectl,
        helm,
        log_dir,
        image_digest,
        image_summary,
    })
}

/// The node of this test binary, started on first use.
pub fn shared() -> &'static Result<Node, String> {
    static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
    NODE.get_or_init(|| {
        // (rustls 0.23.48 deprecates ring's provider: no post-quantum key exchange; ring stays
        // the one provider, see src/main.rs)
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        start()
    })
}

/// A node test starts with this: the node. Node tests are `#[ignore]`d; when one runs
/// (`--ignored`, as scripts/test.sh does where the node can run) the node is required: without
/// it the test fails and says why (docs/testing.md).
pub fn require(what: &str) -> &'static Node {
    match shared() {
        Ok(n) => n,
        Err(why) => crate::skip::missing("node", what, why),
    }
}

/// Transition (tests written before [`require`]): the node, or `None` after saying loudly why
/// there is none (a panic when `KEYSMITH_REQUIRE_NODE=1`).
pub fn enabled(what: &str) -> Option<&'static Node> {
    match shared() {
        Ok(n) => Some(n),
        Err(why) if std::env::var("KEYSMITH_REQUIRE_NODE").as_deref() == Ok("1") => {
            panic!("KEYSMITH_REQUIRE_NODE=1 but the node for {what} cannot start: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n##########################################################################\n\
                 ##  NODE TEST NOT RUN: {what}\n##  {why}\n\
                 ##  (see docs/e2e.md, \"A real node\")\n\
                 ##########################################################################\n"
            );
            None
        }
    }
}

/// The node tests share one cluster and run one at a time (each installs its own release).
/// (Each test has its own runtime: an async lock, held across awaits, that a failed test releases.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

impl Node {
    pub async fn client(&self) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("admin kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kube config");
        Client::try_from(cfg).expect("kube client")
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig).args(args);
        run_capture(c, stdin)
    }

    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new(&self.helm);
        c.env("KUBECONFIG", &self.kubeconfig).args(args);
        run_capture(c, None)
    }

    /// `kubectl apply` of one object (JSON).
    pub fn apply(&self, obj: &Value) {
        self.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()))
            .unwrap_or_else(|e| panic!("kubectl apply failed: {e}"));
    }
}

fn run_capture(mut c: Command, stdin: Option<&str>) -> Result<String, String> {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("{c:?}: {e}"))?;
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{:?} {:?}: {}{}",
            c.get_program(),
            c.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Poll `check` every 250 ms until it returns `Ok` or `timeout` passes (then panic with the last
/// state and `context()`).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When the pod's Ready condition last turned True (second resolution), if it is Ready.
pub fn ready_since(p: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0))
}

/// One test's world: a release namespace holding the operator (installed with helm from the
/// image), an app namespace for ApiKeys and workloads, the OpenRouter emulator as a pod of the
/// same image behind a Service, and a ClusterKeyProvider pointing at the Service's ClusterIP.
pub struct Stage {
    pub node: &'static Node,
    pub client: Client,
    pub name: String,
    pub release: String,
    pub sys_ns: String,
    pub app_ns: String,
    pub provider: String,
    /// http://<ClusterIP>:8787 (what pods use: there is no cluster DNS)
    pub emulator_service_url: String,
    /// http://<pod IP>:8787 (what the test uses from the host, through the node's bridge)
    pub emulator_pod_url: String,
    pub http: reqwest::Client,
    uninstalled: bool,
}

impl Stage {
    /// `sets` are extra `helm --set` values.
    pub async fn new(node: &'static Node, name: &str, sets: &[&str]) -> Stage {
        let client = node.client().await;
        let sys_ns = format!("{name}-system");
        let app_ns = format!("{name}-app");
        for ns in [&sys_ns, &app_ns] {
            node.apply(&json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": ns, "labels": { RUN_LABEL: name } }
            }));
        }
        // The emulator's management key, in a Secret: the emulator reads it from the env, the
        // operator through the ClusterKeyProvider's credentials reference.
        let mgmt = format!("sk-or-v1-{}", keysmith::emulators::random_hex(32));
        node.apply(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "openrouter-management", "namespace": sys_ns },
            "type": "Opaque", "stringData": { "token": mgmt }
        }));
        node.apply(&emulator_deployment(&sys_ns));
        node.apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "emulator", "namespace": sys_ns },
            "spec": { "selector": { "app": "emulator" },
                      "ports": [{ "port": EMULATOR_PORT, "targetPort": EMULATOR_PORT }] }
        }));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &sys_ns);
        let pod_ip = eventually("the emulator pod Ready", Duration::from_secs(120), || {
            let pods = pods.clone();
            async move {
                let l = pods
                    .list(&ListParams::default().labels("app=emulator"))
                    .await
                    .map_err(|e| e.to_string())?;
                l.items
                    .iter()
                    .find(|p| pod_ready(p))
                    .and_then(|p| p.status.as_ref()?.pod_ip.clone())
                    .ok_or_else(|| {
                        format!(
                            "{:?}",
                            l.items.iter().map(|p| &p.status).collect::<Vec<_>>()
                        )
                    })
            }
        })
        .await;
        let svc: Service = Api::namespaced(client.clone(), &sys_ns)
            .get("emulator")
            .await
            .expect("emulator Service");
        let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
        let emulator_service_url = format!("http://{cluster_ip}:{EMULATOR_PORT}");
        let mut stage = Stage {
            node,
            client,
            name: name.to_string(),
            release: format!("{name}-keysmith"),
            sys_ns,
            app_ns,
            provider: format!("{name}-openrouter"),
            emulator_service_url,
            emulator_pod_url: format!("http://{pod_ip}:{EMULATOR_PORT}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            uninstalled: true,
        };
        // The chart brings the CRDs (helm installs crds/ on the first install).
        stage.install(sets);
        let (provider, emulator_service_url, sys_ns, app_ns) = (
            &stage.provider,
            &stage.emulator_service_url,
            &stage.sys_ns,
            &stage.app_ns,
        );
        node.apply(&json!({
            "apiVersion": "keysmith.dev/v1alpha1", "kind": "ClusterKeyProvider",
            "metadata": { "name": provider, "labels": { RUN_LABEL: name } },
            "spec": {
                "openrouter": {
                    "baseURL": format!("{emulator_service_url}/api/v1"),
                    "managementKeySecretRef": { "name": "openrouter-management", "namespace": sys_ns, "key": "token" }
                },
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": app_ns } },
                "refreshInterval": "1m"
            }
        }));
        stage
    }

    /// `helm install` the chart with the image (tag e2e-a, `imagePullPolicy: Never`), reconciling
    /// only this stage's ApiKeys, and wait until the Deployment is available.
    fn install(&mut self, sets: &[&str]) {
        let chart = repo_root().join("charts/keysmith");
        let label_selector = format!("labelSelector={RUN_LABEL}={}", self.name);
        let mut args: Vec<String> = [
            "install",
            &self.release,
            chart.to_str().expect("utf-8 path"),
            "--namespace",
            &self.sys_ns,
            "--wait",
            "--timeout",
            "3m",
            "--set",
            &format!("image.repository={IMAGE_REPO}"),
            "--set",
            &format!("image.tag={TAG_A}"),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            &label_selector,
            "--set",
            "logLevel=info\\,keysmith=debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for s in sets {
            args.push("--set".into());
            args.push(s.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        if let Err(e) = self.node.helm(&args) {
            panic!(
                "helm install failed: {e}\n{}",
                self.node
                    .kubectl(
                        &["-n", &self.sys_ns, "get", "pods,events", "-o", "wide"],
                        None
                    )
                    .unwrap_or_default()
            );
        }
        self.uninstalled = false;
        eprintln!(
            "e2e_node[{}]: helm install --wait: {:.1} s",
            self.name,
            t.elapsed().as_secs_f64()
        );
    }

    pub fn uninstall(&mut self) -> Result<String, String> {
        self.uninstalled = true;
        self.node.helm(&[
            "uninstall",
            &self.release,
            "--namespace",
            &self.sys_ns,
            "--wait",
            "--timeout",
            "2m",
        ])
    }

    pub fn operator_selector(&self) -> String {
        format!(
            "app.kubernetes.io/name=keysmith,app.kubernetes.io/instance={}",
            self.release
        )
    }

    pub fn apikeys(&self) -> Api<ApiKey> {
        Api::namespaced(self.client.clone(), &self.app_ns)
    }

    pub fn operator_pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.sys_ns)
    }

    pub fn app_pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.app_ns)
    }

    pub fn deployments(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The operator's logs (every pod of the release), for failure messages.
    pub fn operator_logs(&self) -> String {
        self.node
            .kubectl(
                &[
                    "-n",
                    &self.sys_ns,
                    "logs",
                    "-l",
                    &self.operator_selector(),
                    "--tail=40",
                    "--prefix",
                ],
                None,
            )
            .unwrap_or_else(|e| e)
    }

    /// An ApiKey of this stage (labelled for its release) on its ClusterKeyProvider.
    pub fn create_apikey(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "providerRef": { "kind": "ClusterKeyProvider", "name": self.provider },
            "secret": { "name": name, "key": "api-key" }
        });
        if let (Some(s), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            s.extend(extra);
        }
        self.node.apply(&json!({
            "apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey",
            "metadata": { "name": name, "namespace": self.app_ns, "labels": { RUN_LABEL: self.name } },
            "spec": spec
        }));
    }

    pub async fn wait_apikey_ready(&self, name: &str) -> ApiKey {
        let api = self.apikeys();
        let t = Instant::now();
        let ak = eventually_or_logs(
            self,
            &format!("ApiKey {name} Ready"),
            Duration::from_secs(120),
            || {
                let api = api.clone();
                async move {
                    let ak = api.get(name).await.map_err(|e| e.to_string())?;
                    if crate::apikey_status::is_ready(&ak) {
                        Ok(ak)
                    } else {
                        Err(format!("{:?}", crate::apikey_status::ready(&ak)))
                    }
                }
            },
        )
        .await;
        eprintln!(
            "e2e_node[{}]: ApiKey {name} Ready in {:.1} s",
            self.name,
            t.elapsed().as_secs_f64()
        );
        ak
    }

    /// The key value in the ApiKey's Secret (never printed).
    pub async fn secret_value(&self, name: &str) -> String {
        let s: Secret = Api::namespaced(self.client.clone(), &self.app_ns)
            .get(name)
            .await
            .expect("the ApiKey's Secret");
        let v = s
            .data
            .and_then(|d| d.get("api-key").cloned())
            .expect("api-key in the Secret");
        String::from_utf8(v.0).expect("utf-8 key")
    }

    /// Whether the emulator accepts `key` (its "key in use" endpoint `GET /api/v1/key`).
    pub async fn key_works(&self, key: &str) -> Result<bool, String> {
        let r = self
            .http
            .get(format!("{}/api/v1/key", self.emulator_pod_url))
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| format!("emulator unreachable: {e}"))?;
        match r.status().as_u16() {
            200 => Ok(true),
            401 => Ok(false),
            s => Err(format!("emulator answered {s}")),
        }
    }

    /// Keys at the emulator: (live, all) counts.
    pub async fn emulator_keys(&self) -> (usize, usize) {
        let v: Value = self
            .http
            .get(format!("{}/_emulator/keys", self.emulator_pod_url))
            .send()
            .await
            .expect("emulator reachable")
            .json()
            .await
            .expect("JSON");
        let keys = v
            .as_array()
            .cloned()
            .or_else(|| v.get("keys").and_then(|k| k.as_array().cloned()))
            .or_else(|| v.get("data").and_then(|k| k.as_array().cloned()))
            .unwrap_or_else(|| panic!("unexpected /_emulator/keys answer shape"));
        let live = keys
            .iter()
            .filter(|k| k.get("active").and_then(Value::as_bool) == Some(true))
            .count();
        (live, keys.len())
    }

    /// `GET /readyz` of an operator pod: "leader", "standby", or None when unreachable.
    pub async fn role(&self, pod_ip: &str) -> Option<String> {
        let r = self
            .http
            .get(format!("http://{pod_ip}:8080/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }
}

/// [`eventually`], with the operator's logs in the panic message.
pub async fn eventually_or_logs<T, F, Fut>(s: &Stage, what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    match tokio::time::timeout(timeout + Duration::from_secs(1), async {
        let deadline = Instant::now() + timeout;
        let mut check = check;
        loop {
            match check().await {
                Ok(v) => return Ok(v),
                Err(state) if Instant::now() > deadline => return Err(state),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    })
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(state)) => panic!(
            "timed out after {timeout:?} waiting for {what}; last seen: {state}\noperator logs:\n{}",
            s.operator_logs()
        ),
        Err(_) => panic!("{what}: stuck\noperator logs:\n{}", s.operator_logs()),
    }
}

fn emulator_deployment(ns: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "emulator", "namespace": ns },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "emulator" } },
            "template": {
                "metadata": { "labels": { "app": "emulator" } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": { "type": "RuntimeDefault" } },
                    "containers": [{
                        "name": "emulator",
                        "image": format!("{IMAGE_REPO}:{TAG_A}"),
                        "imagePullPolicy": "Never",
                        "args": ["emulate", "--listen", format!("0.0.0.0:{EMULATOR_PORT}"), "openrouter"],
                        "env": [{ "name": "KEYSMITH_EMULATOR_MANAGEMENT_KEY",
                                  "valueFrom": { "secretKeyRef": { "name": "openrouter-management", "key": "token" } } }],
                        "ports": [{ "containerPort": EMULATOR_PORT }],
                        "readinessProbe": { "tcpSocket": { "port": EMULATOR_PORT }, "periodSeconds": 1 },
                        "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                             "capabilities": { "drop": ["ALL"] } }
                    }]
                }
            }
        }
    })
}

impl Drop for Stage {
    fn drop(&mut self) {
        if std::env::var("KEYSMITH_NODE_KEEP").as_deref() == Ok("1") {
            return;
        }
        // Best effort (the node itself is purged when the test binary ends): ApiKeys lose their
        // finalizers so that the namespaces can go, the release and the provider object go.
        let _ = self.node.kubectl(
            &[
                "-n",
                &self.app_ns,
                "patch",
                "apikeys",
                "--all",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
            None,
        );
        if !self.uninstalled {
            let _ = self.node.helm(&[
                "uninstall",
                &self.release,
                "--namespace",
                &self.sys_ns,
                "--wait=false",
            ]);
        }
        let _ = self.node.kubectl(
            &[
                "delete",
                "clusterkeyprovider",
                &self.provider,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
        let _ = self.node.kubectl(
            &[
                "delete",
                "namespace",
                &self.app_ns,
                &self.sys_ns,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// Patch helper for the tests.
pub async fn annotate_apikey(api: &Api<ApiKey>, name: &str, key: &str, value: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { key: value } } })),
    )
    .await
    .expect("annotate the ApiKey");
}
