//! Where things are. The harness is a library, so the compile-time variables cargo gives an
//! integration test (`CARGO_BIN_EXE_keysmith`, `CARGO_TARGET_TMPDIR`) are found at run time.

use std::path::PathBuf;

/// The root of the repository (the operator package).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// The directory of the running test binary's profile (`target/debug`): test binaries live in
/// its `deps/`, the package's binaries in it.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().expect("the test binary's directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The `keysmith` binary of this build: `CARGO_BIN_EXE_keysmith` when cargo sets it at run
/// time, else next to the test binary's `deps/` (cargo builds a package's binaries before its
/// integration tests).
pub fn keysmith_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_keysmith").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let bin = profile_dir().join("keysmith");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo test builds it for the integration tests)",
        bin.display()
    );
    bin
}

/// Scratch space for logs of a test run (`target/tmp`, what `CARGO_TARGET_TMPDIR` names for an
/// integration test).
pub fn target_tmpdir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            profile_dir()
                .parent()
                .map(|t| t.join("tmp"))
                .unwrap_or_else(std::env::temp_dir)
        });
    let _ = std::fs::create_dir_all(&dir);
    dir
}
