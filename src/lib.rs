//! keysmith: a Kubernetes operator that creates API keys at AI and compute providers, delivers
//! their one-time plaintext into Secrets, keeps their settings in sync, reports usage, and
//! revokes them when the `ApiKey` goes away.

pub mod controller;
pub mod ids;
pub mod metrics;
pub mod render;

// The workspace's other crates under their old paths (`keysmith::api::…`), so callers need not
// know where the boundaries run. The boundaries themselves are in `crates/`: the API types, the
// provider clients and the emulators are separate crates, and the emulators depend on no other
// keysmith crate (tests/workspace.rs checks that with `cargo metadata`).
pub use keysmith_api as api;
pub use keysmith_emulators as emulators;
pub use keysmith_providers as providers;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod crd_bounds {
    use crate::api::{ClusterKeyProvider, KeyProvider};
    use kube::CustomResourceExt;

    /// `spec.rateLimit` is bounded in the CRD (the API server refuses 1e-20 requests per second
    /// before the operator ever sees it); the client clamps to the same bounds.
    #[test]
    fn rate_limit_bounds_are_in_both_crds() {
        for crd in [KeyProvider::crd(), ClusterKeyProvider::crd()] {
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let rl = &schema["properties"]["spec"]["properties"]["rateLimit"]["properties"];
            let rps = &rl["requestsPerSecond"];
            assert_eq!(
                rps["minimum"].as_f64(),
                Some(crate::providers::MIN_REQUESTS_PER_SECOND)
            );
            assert_eq!(
                rps["maximum"].as_f64(),
                Some(crate::providers::MAX_REQUESTS_PER_SECOND)
            );
            assert_eq!(rl["burst"]["minimum"].as_f64(), Some(1.0));
            assert_eq!(
                rl["burst"]["maximum"].as_f64(),
                Some(f64::from(crate::providers::MAX_BURST))
            );
            // spec.createLimit: bounded too, in formats Kubernetes knows.
            let cl = &schema["properties"]["spec"]["properties"]["createLimit"]["properties"];
            assert_eq!(cl["perSecond"]["minimum"].as_f64(), Some(0.001));
            assert_eq!(cl["perSecond"]["maximum"].as_f64(), Some(10000.0));
            assert_eq!(cl["burst"]["minimum"].as_f64(), Some(1.0));
            assert_eq!(cl["burst"]["maximum"].as_f64(), Some(10000.0));
            assert_eq!(cl["perApiKeyPerHour"]["minimum"].as_f64(), Some(1.0));
            assert_eq!(
                cl["perApiKeyPerHour"]["maximum"].as_f64(),
                Some(f64::from(
                    crate::controller::fairness::MAX_PER_API_KEY_PER_HOUR
                ))
            );
            for f in ["burst", "perApiKeyPerHour"] {
                assert_eq!(cl[f]["format"], "int32", "{f}");
            }
        }
        // status.recentCreates holds at most as many entries as the largest budget.
        let crd = serde_json::to_value(crate::api::ApiKey::crd()).unwrap();
        let recent = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["status"]["properties"]["recentCreates"];
        assert_eq!(
            recent["maxItems"].as_u64(),
            Some(u64::from(
                crate::controller::fairness::MAX_PER_API_KEY_PER_HOUR
            ))
        );
    }
}
