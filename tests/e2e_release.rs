//! The release dry run onto a real node (issue 18): `ON_NODE=1 scripts/release-dry-run.sh` pushes
//! the operator image and the chart to a registry on loopback (Debian's `docker-registry`),
//! starts the one-node cluster (`../shared/k8s/node/up.sh`), `helm install`s the chart from
//! `oci://` so that the node's containerd pulls the image from that registry by digest, and
//! waits until an ApiKey on a ClusterKeyProvider (the OpenRouter emulator, a pod from the same
//! pulled image) is Ready=True.
//!
//! The image is built from this test binary's own `keysmith` (as tests/e2e_node.rs does), so the
//! run checks the code under test. The test is `#[ignore]`d; run with `--ignored` (as
//! scripts/test.sh does where the node can run) without root, the node scripts or the tools it
//! fails and says which (docs/testing.md). It starts and stops the node itself: not at the same time as
//! tests/e2e_node.rs (one node per machine; cargo runs test binaries one after the other).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Why the dry run cannot run here, if it cannot.
fn missing() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("the node needs root (kubelet, containerd, iptables, mounts)".into());
    }
    let scripts = std::env::var_os("KEYSMITH_NODE_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/k8s/node"));
    if !scripts.join("up.sh").is_file() {
        return Some(format!("no node scripts at {}", scripts.display()));
    }
    let tools: Vec<&str> = [
        "docker-registry",
        "skopeo",
        "containerd",
        "runc",
        "iptables",
        "buildah",
        "mmdebstrap",
        "jq",
        "curl",
        "openssl",
    ]
    .into_iter()
    .filter(|c| !on_path(c))
    .collect();
    if !tools.is_empty() {
        return Some(format!(
            "missing {} (scripts/install-node-tools.sh, scripts/install-check-tools.sh registry)",
            tools.join(", ")
        ));
    }
    let helm = repo_root().join(".tools/bin/helm");
    if std::env::var_os("HELM").is_none() && !helm.is_file() {
        return Some("no helm (scripts/install-tools.sh)".into());
    }
    None
}

fn run(mut c: Command, log: &Path) -> (bool, String) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(log, &text).expect("write the log");
    (out.status.success(), text)
}

#[test]
#[ignore = "needs a node (root, ../shared/k8s/node): runs with --ignored (docs/testing.md)"]
fn release_dry_run_reaches_a_ready_apikey_on_the_node() {
    if let Some(why) = missing() {
        keysmith_testkit::skip::missing("node", "the release dry run onto the node", &why);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-release");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");

    // 1. the image, from the binary under test
    let t = Instant::now();
    let image_dir = dir.join("image");
    let mut build = Command::new("bash");
    build
        .arg(repo_root().join("scripts/build-image.sh"))
        .env("IMAGE", "localhost/keysmith:release-dry-run")
        .env("KEYSMITH_BIN", env!("CARGO_BIN_EXE_keysmith"))
        .env("OUT", &image_dir);
    let (ok, out) = run(build, &dir.join("build-image.log"));
    assert!(ok, "scripts/build-image.sh failed:\n{out}");
    let built = std::fs::read_to_string(image_dir.join("image-digest"))
        .expect("image-digest")
        .trim()
        .to_string();
    eprintln!(
        "e2e_release: image {built} built in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 2. the dry run, all the way onto the node
    let t = Instant::now();
    let mut dry = Command::new("bash");
    dry.arg(repo_root().join("scripts/release-dry-run.sh"))
        .env("ON_NODE", "1")
        .env("IMAGE_ARCHIVE", image_dir.join("keysmith-oci.tar"))
        .env_remove("KUBECONFIG")
        .env_remove("INSTALL");
    let (ok, out) = run(dry, &dir.join("release-dry-run.log"));
    eprintln!(
        "e2e_release: scripts/release-dry-run.sh (ON_NODE=1) in {:.1} s:\n{out}",
        t.elapsed().as_secs_f64()
    );
    assert!(
        ok,
        "ON_NODE=1 scripts/release-dry-run.sh failed (output above)"
    );

    // what it printed: the pushed image is the built one, by digest; it was pulled and run by
    // the node; the ApiKey became Ready; each phase has its wall time
    let image_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("image "))
        .expect("an `image` line");
    assert!(
        image_line
            .trim_end()
            .ends_with(&format!("/keysmith/keysmith@{built}")),
        "the dry run pushed {image_line}, not the built {built}"
    );
    let chart_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("chart "))
        .expect("a `chart` line");
    assert!(
        chart_line.contains("oci://127.0.0.1:") && chart_line.contains("(sha256:"),
        "no chart digest in {chart_line}"
    );
    assert!(
        out.contains("operator pods Ready, pulled from the registry"),
        "the operator pods did not run the pulled image"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("ApiKey release-dry-run/dry-run Ready=True")),
        "no Ready ApiKey in the output"
    );
    for phase in [
        "image push",
        "chart package + push",
        "node up",
        "helm install (pull + pods Ready)",
        "emulator pod Ready",
        "ApiKey Ready",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(phase) && l.trim_end().ends_with(" s")),
            "no wall time for the phase {phase:?}"
        );
    }
}
