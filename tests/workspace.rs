//! The crate boundaries are the rules (README, "Layout"): these tests read the workspace's
//! manifests with `cargo metadata` and fail when someone adds a dependency that breaks one.
//!
//! - `keysmith-emulators` depends on no keysmith crate: an emulator that shared the client's code
//!   would confirm the client's guesses instead of checking them (a bug shared is a bug hidden).
//! - `keysmith-api` is types and CRD generation: no keysmith crate, no kube client or runtime.
//! - `keysmith-providers` never depends on the emulators.
//! - The operator's code (everything in `src/` but `main.rs`, which hosts `keysmith emulate`)
//!   never names the emulators.
//! - `keysmith-testkit` (the cluster harness, the recorder, the scripted backend) is dev-only:
//!   unpublished, and a dev-dependency wherever it is named, so production never builds it.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Every dependency (normal, dev and build) the package `name` declares, with its features.
fn dependencies(meta: &Value, name: &str) -> Vec<(String, Vec<String>)> {
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} is a workspace member"));
    pkg["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let features = d["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            (d["name"].as_str().unwrap().to_string(), features)
        })
        .collect()
}

fn keysmith_crates(deps: &[(String, Vec<String>)]) -> Vec<&str> {
    deps.iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("keysmith"))
        .collect()
}

#[test]
fn the_workspace_has_the_five_crates() {
    let meta = metadata();
    let mut members: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            "keysmith",
            "keysmith-api",
            "keysmith-emulators",
            "keysmith-providers",
            "keysmith-testkit"
        ]
    );
}

#[test]
fn the_emulators_depend_on_no_keysmith_crate() {
    let meta = metadata();
    let deps = dependencies(&meta, "keysmith-emulators");
    assert_eq!(
        keysmith_crates(&deps),
        Vec::<&str>::new(),
        "keysmith-emulators must not share code with the clients or the operator"
    );
}

#[test]
fn the_api_crate_is_types_without_a_kube_client_or_runtime() {
    let meta = metadata();
    let deps = dependencies(&meta, "keysmith-api");
    assert_eq!(keysmith_crates(&deps), Vec::<&str>::new());
    let (_, kube) = deps
        .iter()
        .find(|(n, _)| n == "kube")
        .expect("keysmith-api derives its CRDs with kube");
    for f in kube {
        assert!(
            !["client", "runtime", "unstable-runtime", "ws", "config"].contains(&f.as_str()),
            "keysmith-api enables kube's {f:?}"
        );
    }
}

#[test]
fn the_clients_depend_on_the_api_types_only() {
    let meta = metadata();
    let deps = dependencies(&meta, "keysmith-providers");
    assert_eq!(keysmith_crates(&deps), ["keysmith-api"]);
}

/// The operator crate has to depend on the emulators (`keysmith emulate` is a subcommand of the
/// same binary), so the compiler cannot keep the controller from importing one; this does.
#[test]
fn the_operator_code_never_names_the_emulators() {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                // `lib.rs` re-exports the crate for the tests; nothing else names it.
                let named = text.lines().any(|l| {
                    !l.trim_start().starts_with("//")
                        && !l.starts_with("pub use keysmith_emulators as emulators;")
                        && (l.contains("keysmith_emulators") || l.contains("crate::emulators"))
                });
                if named {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    assert_eq!(
        found,
        Vec::<String>::new(),
        "operator code uses an emulator"
    );
}

/// The test harness is dev-only: never published, and every workspace crate that names it names
/// it as a dev-dependency (a normal or build dependency would put it in the shipped binary's
/// graph). The operator does, for its tests, benchmarks and examples.
#[test]
fn the_testkit_is_a_dev_dependency_only() {
    let meta = metadata();
    let packages = meta["packages"].as_array().unwrap();
    let testkit = packages
        .iter()
        .find(|p| p["name"] == "keysmith-testkit")
        .expect("keysmith-testkit is a workspace member");
    assert_eq!(
        testkit["publish"],
        serde_json::json!([]),
        "keysmith-testkit has publish = false"
    );
    let mut named_by = Vec::new();
    for p in packages {
        for d in p["dependencies"].as_array().unwrap() {
            if d["name"] == "keysmith-testkit" {
                assert_eq!(
                    d["kind"], "dev",
                    "{} depends on keysmith-testkit as a {} dependency: only a dev-dependency may",
                    p["name"], d["kind"]
                );
                named_by.push(p["name"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(named_by, ["keysmith"]);
}
