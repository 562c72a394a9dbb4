//! keysmith: a Kubernetes operator that creates API keys at AI and compute providers, delivers
//! their one-time plaintext into Secrets, keeps their settings in sync, reports usage, and
//! revokes them when the `ApiKey` goes away.

pub mod api;
pub mod controller;
pub mod emulators;
pub mod ids;
pub mod metrics;
pub mod providers;
pub mod render;

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
