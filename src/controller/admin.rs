//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::metrics::Metrics;

/// Liveness and readiness as served on `/healthz` and `/readyz`.
#[derive(Default)]
pub struct Health {
    pub started: AtomicBool,
    pub leader: AtomicBool,
    /// Controllers whose task ended while nobody asked them to stop: liveness fails.
    died: Mutex<Vec<&'static str>>,
}

impl Health {
    /// A controller stopped unexpectedly: `/healthz` fails from now on.
    pub fn controller_died(&self, name: &'static str) {
        self.died.lock().unwrap().push(name);
    }

    /// The `/healthz` answer: 200 "ok", or 503 naming the controllers that stopped.
    pub fn healthz(&self) -> (u16, String) {
        let died = self.died.lock().unwrap();
        if died.is_empty() {
            (200, "ok".into())
        } else {
            (
                503,
                format!("controllers stopped unexpectedly: {}", died.join(", ")),
            )
        }
    }
}

/// `/metrics`, `/healthz`, `/readyz`.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = metrics.clone();
    let h1 = health.clone();
    let h2 = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let (code, text) = h2.healthz();
                async move {
                    (
                        StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        text,
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let h = h1.clone();
                async move {
                    if h.started.load(Ordering::SeqCst) {
                        let role = if h.leader.load(Ordering::SeqCst) {
                            "leader"
                        } else {
                            "standby"
                        };
                        (StatusCode::OK, role)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}
