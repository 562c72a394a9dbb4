//! A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for
//! `scripts/demo.sh`: the same harness the e2e tests use (`keysmith_testkit::control_plane`).
//! Prints `KUBECONFIG=<path>` once the API server is ready, then runs until Ctrl-C, SIGTERM or
//! the end of its standard input, and stops what it started.
//!
//! ```text
//! cargo run --example local-cluster            # then, in another shell: export KUBECONFIG=…
//! ```

use keysmith_testkit::control_plane;

use std::io::Write;

use std::io::Read;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    let dir = std::env::var_os("KEYSMITH_CONTROL_PLANE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("keysmith-local-cluster"))
        .join(std::process::id().to_string());
    // Started from the main thread: the processes die with it (PR_SET_PDEATHSIG).
    let cp = match control_plane::ControlPlane::start(&control_plane::Options {
        dir: dir.clone(),
        controller_manager: true,
    }) {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("local-cluster: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("KUBECONFIG={}", cp.kubeconfig.display());
    let _ = std::io::stdout().flush();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        // End of input (the parent went away) or an error on stdin ends the run.
        let (tx, stdin_closed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = std::io::stdin().read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        });
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = stdin_closed => {}
        }
    });
    cp.stop();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("local-cluster: stopped");
    std::process::ExitCode::SUCCESS
}
