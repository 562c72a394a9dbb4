//! Stateful, faithful HTTP emulators of the five providers' key APIs (`keysmith emulate`).
//!
//! Each provider module builds an axum [`Router`] for its own endpoints, auth and error envelope.
//! This module adds what every emulator shares: fault injection (latency, a rate limit answered
//! with 429 + `Retry-After`, a random failure rate, and scripted one-shot faults for tests), a
//! request counter, and the control endpoints under `/_emulator/`:
//!
//! | endpoint | what it does |
//! |---|---|
//! | `POST /_emulator/faults` | queue one-shot faults: `[{"status":429,"retryAfter":2}, {"status":500}, {"malformed":true}, {"delayMs":3000}]` |
//! | `DELETE /_emulator/faults` | clear queued faults |
//! | `GET /_emulator/stats` | `{"requests": n, "byRoute": {"POST /keys": n, …}}` (control endpoints not counted) |
//! | `DELETE /_emulator/stats` | reset the counters |
//!
//! Control endpoints take no credentials: an emulator is a test tool bound to loopback by default.

pub mod bifrost;
pub mod boltz;
pub mod digitalocean;
pub mod openrouter;
pub mod ucloud;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng;
use serde::Deserialize;

/// Fault flags every `keysmith emulate <provider>` accepts.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FaultArgs {
    /// Delay added to every response (e.g. `50ms`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Requests per second served before answering 429 with Retry-After (token bucket, burst = rate).
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Seconds sent in Retry-After with rate-limit answers.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// Fraction (0..1) of requests answered with the provider's 500 error.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
}

/// A one-shot fault, consumed by the next request to a provider endpoint.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScriptedFault {
    /// Answer with this status in the provider's error envelope.
    #[serde(default)]
    pub status: Option<u16>,
    /// With a 429 (or 503): the Retry-After header value in seconds.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Answer 200 with a body that is not valid JSON.
    #[serde(default)]
    pub malformed: bool,
    /// Wait this long before handling the request (longer than the client timeout = a timeout).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// How one provider renders an error: status and message into its own envelope.
pub type ErrorRenderer = fn(StatusCode, &str) -> Response;

/// The fault state of one emulator.
pub struct Faults {
    args: FaultArgs,
    render: ErrorRenderer,
    bucket: Mutex<(f64, Instant)>,
    scripted: Mutex<VecDeque<ScriptedFault>>,
    requests: AtomicU64,
    by_route: Mutex<BTreeMap<String, u64>>,
}

impl Faults {
    pub fn new(args: FaultArgs, render: ErrorRenderer) -> Arc<Self> {
        let burst = args.rate_limit.unwrap_or(0.0).max(1.0);
        Arc::new(Faults {
            args,
            render,
            bucket: Mutex::new((burst, Instant::now())),
            scripted: Mutex::new(VecDeque::new()),
            requests: AtomicU64::new(0),
            by_route: Mutex::new(BTreeMap::new()),
        })
    }

    /// Queue one-shot faults (tests call this directly or through `POST /_emulator/faults`).
    pub fn push(&self, faults: impl IntoIterator<Item = ScriptedFault>) {
        self.scripted.lock().unwrap().extend(faults);
    }

    /// Requests served to provider endpoints so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests per route (`"METHOD /path/{param}"`).
    pub fn by_route(&self) -> BTreeMap<String, u64> {
        self.by_route.lock().unwrap().clone()
    }

    fn take_token(&self) -> bool {
        let Some(rate) = self.args.rate_limit else {
            return true;
        };
        let burst = rate.max(1.0);
        let mut b = self.bucket.lock().unwrap();
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * rate;
        b.0 = (b.0 + refill).min(burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn rate_limited(&self, retry_after: u64) -> Response {
        let mut resp = (self.render)(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(retry_after));
        resp
    }
}

async fn fault_middleware(State(faults): State<Arc<Faults>>, req: Request, next: Next) -> Response {
    // A provider's own control endpoints (e.g. `/_emulator/keys`) are neither counted nor faulted.
    if req.uri().path().starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    faults.requests.fetch_add(1, Ordering::Relaxed);
    *faults
        .by_route
        .lock()
        .unwrap()
        .entry(format!("{} {}", req.method(), route))
        .or_default() += 1;

    if let Some(latency) = faults.args.latency {
        tokio::time::sleep(latency).await;
    }
    let scripted = faults.scripted.lock().unwrap().pop_front();
    if let Some(f) = scripted {
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if f.malformed {
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"data\": [tru",
            )
                .into_response();
        }
        if let Some(status) = f.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status == StatusCode::TOO_MANY_REQUESTS {
                return faults.rate_limited(f.retry_after.unwrap_or(faults.args.retry_after));
            }
            let mut resp = (faults.render)(status, status.canonical_reason().unwrap_or("Error"));
            if let Some(ra) = f.retry_after {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from(ra));
            }
            return resp;
        }
    }
    if !faults.take_token() {
        return faults.rate_limited(faults.args.retry_after);
    }
    if faults.args.failure_rate > 0.0
        && rand::rng().random_bool(faults.args.failure_rate.clamp(0.0, 1.0))
    {
        return (faults.render)(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    }
    next.run(req).await
}

/// Wrap a provider router with fault injection and add the `/_emulator/` control endpoints.
pub fn with_faults(provider: Router, faults: Arc<Faults>) -> Router {
    let control = Router::new()
        .route(
            "/_emulator/faults",
            post(
                |State(f): State<Arc<Faults>>, Json(list): Json<Vec<ScriptedFault>>| async move {
                    f.push(list);
                    StatusCode::NO_CONTENT
                },
            )
            .delete(|State(f): State<Arc<Faults>>| async move {
                f.scripted.lock().unwrap().clear();
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_emulator/stats",
            axum::routing::get(|State(f): State<Arc<Faults>>| async move {
                Json(serde_json::json!({ "requests": f.requests(), "byRoute": f.by_route() }))
            })
            .delete(|State(f): State<Arc<Faults>>| async move {
                f.requests.store(0, Ordering::Relaxed);
                f.by_route.lock().unwrap().clear();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(faults.clone());
    provider
        .route_layer(middleware::from_fn_with_state(faults, fault_middleware))
        .merge(control)
}

/// A running emulator (tests): its address and a handle that stops it when dropped.
pub struct RunningEmulator {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT` (append the provider's path prefix as needed).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serve `router` on an ephemeral loopback port in the background.
pub async fn spawn(router: Router, faults: Arc<Faults>) -> std::io::Result<RunningEmulator> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = with_faults(router, faults.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .await;
    });
    Ok(RunningEmulator {
        addr,
        faults,
        shutdown: Some(tx),
    })
}

/// Serve until SIGINT/SIGTERM (the CLI).
pub async fn serve(
    router: Router,
    faults: Arc<Faults>,
    listen: SocketAddr,
    provider: &str,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // The one line scripts wait for; it names the address actually bound (port 0 works).
    println!("keysmith emulator for {provider} listening on http://{addr}");
    tracing::info!(%addr, provider, "emulator listening");
    axum::serve(
        listener,
        with_faults(router, faults).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(crate::shutdown_signal())
    .await?;
    Ok(())
}

/// Which emulator to run, with its flags.
#[derive(clap::Subcommand, Debug)]
pub enum EmulateCommand {
    /// OpenRouter key management API (`/api/v1/keys`, `/api/v1/key`).
    #[command(name = "openrouter")]
    OpenRouter(openrouter::Args),
    /// Boltz compute API admin keys (`/compute/v1/admin/api-keys`).
    Boltz(boltz::Args),
    /// UCloud ModelVerse UMInfer API keys (signed `Action` requests).
    #[command(name = "ucloud")]
    UCloud(ucloud::Args),
    /// DigitalOcean Gradient model and agent keys (`/v2/gen-ai/...`).
    #[command(name = "digitalocean")]
    DigitalOcean(digitalocean::Args),
    /// Bifrost gateway provider keys and virtual keys (`/api/...`).
    Bifrost(bifrost::Args),
}

/// Run the chosen emulator until stopped.
pub async fn run(listen: SocketAddr, cmd: EmulateCommand) -> anyhow::Result<()> {
    match cmd {
        EmulateCommand::OpenRouter(a) => {
            let (router, faults) = openrouter::build(&a);
            serve(router, faults, listen, "openrouter").await
        }
        EmulateCommand::Boltz(a) => {
            let (router, faults) = boltz::build(&a);
            serve(router, faults, listen, "boltz").await
        }
        EmulateCommand::UCloud(a) => {
            let (router, faults) = ucloud::build(&a);
            serve(router, faults, listen, "ucloud").await
        }
        EmulateCommand::DigitalOcean(a) => {
            let (router, faults) = digitalocean::build(&a);
            serve(router, faults, listen, "digitalocean").await
        }
        EmulateCommand::Bifrost(a) => {
            let (router, faults) = bifrost::build(&a);
            serve(router, faults, listen, "bifrost").await
        }
    }
}

/// Random lowercase hex of `n` characters (kept here for the emulators and tests that use it).
pub use crate::ids::random_hex;

/// Body for a response (helper for error renderers).
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}
