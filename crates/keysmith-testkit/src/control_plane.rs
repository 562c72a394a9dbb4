//! A local Kubernetes control plane for tests, owned by the project (in the spirit of
//! controller-runtime's envtest, without Go and without a download at test time): etcd,
//! kube-apiserver and (optionally) kube-controller-manager as child processes on free loopback
//! ports, with generated X.509 v3 certificates, a token file holding an admin token, RBAC on,
//! ServiceAccount signing keys (TokenRequest works) and a kubeconfig.
//!
//! Binaries, first found wins (see [`find_binaries`]):
//! 1. `KUBEBUILDER_ASSETS`: a directory holding `kube-apiserver` and `etcd` (and optionally
//!    `kube-controller-manager`), as `setup-envtest` leaves them;
//! 2. `<repo>/.tools/k8s/v1.36.3/`, unpacked earlier from (3) and checked against [`PINNED`];
//! 3. `<repo>/../shared/k8s/v1.36.3/*.xz`, unpacked into (2) with `xz` (or Python's `lzma`), each
//!    binary's sha256 checked against [`PINNED`].
//!
//! Otherwise [`find_binaries`] says why, and callers report that the cluster tests did not run.
//!
//! Lifetime: the processes are started from a thread that lives as long as the process and
//! carry `PR_SET_PDEATHSIG(SIGKILL)`, so they die with the test binary however it ends (normal
//! exit, panic, SIGKILL). [`ControlPlane::stop`] kills them by their own pids earlier.
//!
//! Used by the e2e tests (through `cluster.rs`), the controller tests, the benchmarks and the
//! `local-cluster` example that `scripts/demo.sh` runs.

use std::fmt;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

/// The Kubernetes version the project tests against, and the sha256 of each unpacked binary
/// (from `../shared/k8s/README.md`).
pub const K8S_VERSION: &str = "v1.36.3";
pub const PINNED: [(&str, &str); 3] = [
    (
        "kube-apiserver",
        "5cc590cd9cc87b962c150b9ad4ee6da5efdcde4620020caabc5599fd774c27a9",
    ),
    (
        "kube-controller-manager",
        "33177fe395bf4b7ac11d376cedd1a5741d46c747621ce2f4217139eae0b4ec2b",
    ),
    (
        "etcd",
        "0e10d6312768575d084c0cae8e44d854180750a0530f8d8d888e62c91aa62ae4",
    ),
];

/// Install ring as rustls' process-wide crypto provider (as `keysmith`'s main does), so that
/// clients built in tests never depend on which providers the dependency graph compiled in.
// (rustls 0.23.48 deprecates ring's provider: no post-quantum key exchange; ring stays
// the one provider, see src/main.rs)
#[allow(deprecated)]
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    pub controller_manager: bool,
    /// How they were found (for messages).
    pub source: String,
}

use crate::paths::repo_root;

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// A verified binary leaves a stamp `<name>.sha256` holding its hash, size and mtime, so later
/// runs do not hash 200 MB again; any change to the file invalidates the stamp.
fn stamp_of(p: &Path, hash: &str) -> Option<String> {
    let m = std::fs::metadata(p).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{hash} {} {}", m.len(), mtime.as_nanos()))
}

fn stamp_path(p: &Path) -> PathBuf {
    p.with_extension("sha256")
}

fn verified(p: &Path, hash: &str) -> bool {
    executable(p)
        && std::fs::read_to_string(stamp_path(p))
            .ok()
            .is_some_and(|s| Some(s.trim().to_string()) == stamp_of(p, hash))
}

fn unpack(xz: &Path, dest: &Path, hash: &str) -> Result<(), String> {
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let out = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .stdout(out)
        .status()
        .or_else(|_| {
            let out = std::fs::File::create(&tmp)?;
            Command::new("python3")
                .args([
                    "-c",
                    "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)",
                ])
                .arg(xz)
                .stdout(out)
                .status()
        })
        .map_err(|e| format!("neither xz nor python3 can unpack {}: {e}", xz.display()))?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("unpacking {} failed ({status})", xz.display()));
    }
    let got = sha256_file(&tmp).map_err(|e| e.to_string())?;
    if got != hash {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{}: sha256 {got}, expected {hash} (see ../shared/k8s/README.md)",
            xz.display()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dest).map_err(|e| e.to_string())?;
    let stamp = stamp_of(dest, hash).ok_or("cannot stat the unpacked binary")?;
    std::fs::write(stamp_path(dest), stamp).map_err(|e| e.to_string())?;
    Ok(())
}

/// Find (or unpack) the control-plane binaries; `Err` says why there are none.
pub fn find_binaries() -> Result<Binaries, String> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        for b in ["kube-apiserver", "etcd"] {
            if !executable(&dir.join(b)) {
                return Err(format!(
                    "KUBEBUILDER_ASSETS={} holds no executable {b}",
                    dir.display()
                ));
            }
        }
        return Ok(Binaries {
            controller_manager: executable(&dir.join("kube-controller-manager")),
            source: format!("KUBEBUILDER_ASSETS={}", dir.display()),
            dir,
        });
    }
    let cache = repo_root().join(".tools/k8s").join(K8S_VERSION);
    if PINNED.iter().all(|(b, h)| verified(&cache.join(b), h)) {
        return Ok(Binaries {
            dir: cache.clone(),
            controller_manager: true,
            source: format!("{} (verified)", cache.display()),
        });
    }
    let shared = repo_root().join("../shared/k8s").join(K8S_VERSION);
    if !shared.is_dir() {
        return Err(format!(
            "no Kubernetes control-plane binaries: set KUBEBUILDER_ASSETS to a directory holding \
             kube-apiserver and etcd (setup-envtest use {}), or provide {}",
            K8S_VERSION.trim_start_matches('v'),
            shared.display()
        ));
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    for (b, h) in PINNED {
        let dest = cache.join(b);
        if verified(&dest, h) {
            continue;
        }
        unpack(&shared.join(format!("{b}.xz")), &dest, h)?;
    }
    Ok(Binaries {
        dir: cache,
        controller_manager: true,
        source: format!("unpacked from {}", shared.display()),
    })
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Working directory (certificates, etcd data, logs, kubeconfig); emptied first.
    pub dir: PathBuf,
    /// Also run kube-controller-manager (garbage collection, namespace deletion, Deployments).
    pub controller_manager: bool,
}

/// A running control plane.
pub struct ControlPlane {
    pub dir: PathBuf,
    /// A kubeconfig for the admin user (group `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    pub ca_pem: String,
    pub controller_manager: bool,
    pub binaries: Binaries,
    admin_token: String,
    pids: Vec<u32>,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("kubeconfig", &self.kubeconfig)
            .field("admin_token", &"<redacted>")
            .field("pids", &self.pids)
            .finish()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    sa_key: String,
    sa_pub: String,
}

fn pki() -> Result<Pki, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keysmith-test-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "10.0.0.1".to_string(),
    ])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let sa = KeyPair::generate()?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        sa_key: sa.serialize_pem(),
        sa_pub: sa.public_key_pem(),
    })
}

/// Start `cmd` so that it dies with this process (SIGKILL when its parent thread ends; the
/// caller starts it from a thread that lives as long as the process).
fn spawn(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

/// `PR_SET_PDEATHSIG(SIGKILL)` in the child, before exec.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and kill are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before prctl took effect.
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Remove working directories of earlier runs whose process is gone (`<parent>/<pid>`).
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl ControlPlane {
    /// Start a control plane in `opts.dir` and wait until `/readyz` answers 200. Blocking; call
    /// it from a thread that lives as long as the control plane should (the children die with it).
    pub fn start(opts: &Options) -> Result<ControlPlane, String> {
        install_crypto_provider();
        let binaries = find_binaries()?;
        let dir = opts.dir.clone();
        if let Some(parent) = dir.parent() {
            remove_stale(parent);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pki")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let w = |name: &str, text: &str| -> Result<PathBuf, String> {
            let p = dir.join("pki").join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        };
        let pki = pki().map_err(|e| format!("generating certificates: {e}"))?;
        let ca = w("ca.crt", &pki.ca_pem)?;
        let server_crt = w("server.crt", &pki.server_cert)?;
        let server_key = w("server.key", &pki.server_key)?;
        let sa_key = w("sa.key", &pki.sa_key)?;
        let sa_pub = w("sa.pub", &pki.sa_pub)?;
        let admin_token = random_token();
        let tokens = w(
            "tokens.csv",
            &format!("{admin_token},keysmith-test-admin,keysmith-test-admin,\"system:masters\"\n"),
        )?;

        let mut cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            server: String::new(),
            ca_pem: pki.ca_pem.clone(),
            controller_manager: false,
            binaries: binaries.clone(),
            admin_token,
            pids: Vec::new(),
            dir: dir.clone(),
        };

        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = Command::new(binaries.dir.join("etcd"));
        etcd.arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--name", "keysmith-test"])
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .arg("--unsafe-no-fsync")
            .args(["--quota-backend-bytes", &(4u64 << 30).to_string()]);
        let etcd = spawn(etcd, &dir.join("etcd.log"))?;
        cp.pids.push(etcd.id());

        let p = |p: &Path| p.display().to_string();
        let mut api = Command::new(binaries.dir.join("kube-apiserver"));
        api.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--tls-cert-file={}", p(&server_crt)))
            .arg(format!("--tls-private-key-file={}", p(&server_key)))
            .arg(format!("--client-ca-file={}", p(&ca)))
            .arg(format!("--token-auth-file={}", p(&tokens)))
            .arg(format!("--service-account-key-file={}", p(&sa_pub)))
            .arg(format!("--service-account-signing-key-file={}", p(&sa_key)))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--api-audiences=https://kubernetes.default.svc")
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg(format!("--cert-dir={}", p(&dir.join("pki"))));
        let api_log = dir.join("kube-apiserver.log");
        let mut api = spawn(api, &api_log)?;
        cp.pids.push(api.id());
        cp.server = format!("https://127.0.0.1:{api_port}");

        let ca_b64 = base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: keysmith-local\n  cluster:\n    server: {}\n    certificate-authority-data: {ca_b64}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: keysmith-local\n  context:\n    cluster: keysmith-local\n    user: admin\ncurrent-context: keysmith-local\n",
            cp.server, cp.admin_token
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&cp.kubeconfig)
            .map_err(|e| e.to_string())?;
        f.write_all(kubeconfig.as_bytes())
            .map_err(|e| e.to_string())?;
        drop(f);

        cp.wait_ready(&mut api, &api_log, Duration::from_secs(90))?;

        if opts.controller_manager && binaries.controller_manager {
            let kc = p(&cp.kubeconfig);
            let mut kcm = Command::new(binaries.dir.join("kube-controller-manager"));
            kcm.arg(format!("--kubeconfig={kc}"))
                .arg(format!("--authentication-kubeconfig={kc}"))
                .arg(format!("--authorization-kubeconfig={kc}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--secure-port=0")
                .arg(format!("--service-account-private-key-file={}", p(&sa_key)))
                .arg(format!("--root-ca-file={}", p(&ca)))
                .arg("--use-service-account-credentials=false")
                .arg("--leader-elect=false")
                .arg("--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route");
            let kcm = spawn(kcm, &dir.join("kube-controller-manager.log"))?;
            cp.pids.push(kcm.id());
            cp.controller_manager = true;
        }
        Ok(cp)
    }

    fn wait_ready(&self, api: &mut Child, log: &Path, timeout: Duration) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes())
                    .map_err(|e| e.to_string())?,
            )
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{}/readyz", self.server);
        let deadline = Instant::now() + timeout;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = api.try_wait() {
                self.stop();
                return Err(format!(
                    "kube-apiserver exited ({status}); {}:\n{}",
                    log.display(),
                    tail(log, 30)
                ));
            }
            let code = rt.block_on(async {
                http.get(&url)
                    .bearer_auth(&self.admin_token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
            if code.as_ref().is_ok_and(|c| *c == 200) {
                eprintln!(
                    "local control plane ready at {} in {:.1}s ({})",
                    self.server,
                    started.elapsed().as_secs_f64(),
                    self.binaries.source
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "kube-apiserver: /readyz not 200 after {timeout:?} (last: {code:?}); {}:\n{}",
                    log.display(),
                    tail(log, 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An admin client (reads the kubeconfig written by [`ControlPlane::start`]).
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// SIGKILL every process of this control plane, by pid.
    pub fn stop(&self) {
        for pid in self.pids.iter().rev() {
            // SAFETY: plain kill(2) of a child we started.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// Apply the CRDs (from the Rust types, what `keysmith crds` prints) and wait until each is
/// Established. Idempotent: every test does it on its own client.
pub async fn install_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::wait::{await_condition, conditions};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in keysmith::api::crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        api.patch(
            &name,
            &PatchParams::apply("keysmith-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established after 60s"))
        .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
    }
}

/// A client from the kubeconfig file at `path`.
pub async fn client_from(path: &Path) -> kube::Client {
    install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    kube::Client::try_from(config).expect("a Kubernetes client")
}

/// The control plane of this test binary: started on first use from a thread that lives as long
/// as the process (its children die with the process), shared by every test. `Err` says why
/// there is none (no binaries, or it did not start).
pub fn shared() -> Result<&'static ControlPlane, String> {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let dir = std::env::var_os("KEYSMITH_CONTROL_PLANE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("keysmith-control-plane"))
                .join(std::process::id().to_string());
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("control-plane".into())
                .spawn(move || {
                    let r = ControlPlane::start(&Options {
                        dir,
                        controller_manager: true,
                    });
                    let _ = tx.send(r);
                    // The children die when this thread does (PR_SET_PDEATHSIG): never return.
                    loop {
                        std::thread::park();
                    }
                })
                .expect("control-plane thread");
            rx.recv()
                .unwrap_or_else(|_| Err("the control-plane thread died".into()))
        })
        .as_ref()
        .map_err(Clone::clone)
}
