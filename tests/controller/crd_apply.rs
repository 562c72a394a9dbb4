//! The CRDs apply to a real API server without warnings (issue 18 item 6): `kubectl apply`
//! prints `Warning: unrecognized format "uint32"` for a format Kubernetes does not know.

use std::process::Command;

use crate::harness::control_plane;

#[tokio::test]
async fn the_crds_apply_without_warnings() {
    let cp = control_plane::shared().unwrap_or_else(|e| {
        panic!("the controller tests need a Kubernetes API server (see docs/e2e.md): {e}")
    });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let kubectl = root.join(".tools/bin/kubectl");
    if !kubectl.is_file() {
        panic!(
            "{} not found: run scripts/install-tools.sh",
            kubectl.display()
        );
    }
    for dir in ["crds", "charts/keysmith/crds"] {
        let out = Command::new(&kubectl)
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "-f",
            ])
            .arg(root.join(dir))
            .env("KUBECONFIG", &cp.kubeconfig)
            .output()
            .expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dir}: {stderr}");
        // One object per CRD file in the directory: every CRD the operator ships applies.
        let files = std::fs::read_dir(root.join(dir))
            .expect("CRD directory")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
            })
            .count();
        assert!(files >= 5, "{dir}: {files} CRD files");
        assert_eq!(
            stdout.matches("serverside-applied").count(),
            files,
            "{dir}: {stdout}"
        );
        assert!(
            !stderr.contains("Warning"),
            "{dir}: the API server warns: {stderr}"
        );
    }
}
