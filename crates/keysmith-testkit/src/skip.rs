//! How tests that need a cluster or a node are left out: visibly, never by an early `return`
//! that counts as passed (docs/testing.md).
//!
//! - Tests that start their own processes against a cluster (`tests/e2e*.rs`, `tests/plugin.rs`)
//!   or a node (`tests/e2e_node.rs`, `tests/e2e_release.rs`) are `#[ignore = "needs …"]`: a plain
//!   `cargo test` lists them as ignored. `scripts/test.sh` runs them with `--ignored` where the
//!   control plane's binaries (or the node) are there. A test that runs calls
//!   [`cluster::require`](crate::cluster::require) or [`node::require`](crate::node::require):
//!   without its cluster it fails with the reason.
//! - Test binaries where every test needs the control plane (`tests/controller`,
//!   `tests/restart.rs`, `tests/e2e_restart.rs`) fail without one; `scripts/test.sh` leaves them
//!   out where there is none and says so in a banner and its closing line.

/// Fail the running test: what it needs (`kind`: "cluster", "node") is missing, `why`.
pub fn missing(kind: &str, what: &str, why: &str) -> ! {
    panic!(
        "{what} needs a {kind} and there is none: {why}\n\
         (these tests are #[ignore]d and run with --ignored where the {kind} can run; \
         see docs/testing.md)"
    )
}

/// [`missing`] unless `available`.
pub fn require(kind: &str, what: &str, available: Result<(), &String>) {
    if let Err(why) = available {
        missing(kind, what, why)
    }
}

#[cfg(test)]
mod tests {
    use super::require;

    #[test]
    fn a_test_with_its_cluster_goes_on() {
        require("cluster", "t", Ok(()));
    }

    #[test]
    #[should_panic(expected = "t needs a cluster and there is none: no kube-apiserver")]
    fn a_test_without_its_cluster_fails_with_the_reason() {
        require("cluster", "t", Err(&"no kube-apiserver".to_string()));
    }
}
