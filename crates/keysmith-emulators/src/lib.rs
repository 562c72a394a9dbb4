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
//! | `GET /_emulator/stats` | `{"requests": n, "byRoute": {"POST /keys": n, "POST /?Action=UpdateUMInferAPIKey": n, …}, "injected": {"5xx": n, …}}` (control endpoints not counted; a `?Action=` query is counted under its action too) |
//! | `DELETE /_emulator/stats` | reset the counters |
//!
//! Control endpoints take no credentials: an emulator is a test tool bound to loopback by default.
//!
//! `--normalise` (every provider) answers equal in meaning but written differently (see
//! [`normalise`]): a converged key must then draw no write from its client.

pub mod bifrost;
pub mod boltz;
pub mod digitalocean;
pub mod normalise;
pub mod openrouter;
pub mod tls;
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
#[derive(clap::Args, Clone, Debug)]
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
    /// Fraction (0..1) of requests that fail, each with one of `--fault-kinds`.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// What a failing request gets, drawn evenly from this list: `5xx` (the provider's 500,
    /// 502 or 503 error), `timeout` (the answer held for `--timeout-delay`; half of them after
    /// the request was carried out, so a create can succeed without its answer arriving),
    /// `429-burst` (every request for the next `--burst-length` answered 429 + Retry-After).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "5xx")]
    pub fault_kinds: Vec<FaultKind>,
    /// How long a `timeout` fault holds its answer (longer than the client's timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub timeout_delay: Duration,
    /// How long a `429-burst` fault answers every request with 429.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub burst_length: Duration,
    /// Answer as a real provider may, equal in meaning but written differently: lists in
    /// another order, IPs as canonical CIDR blocks, padded decimals, other time formats, and
    /// fields no client knows (see the `normalise` module).
    #[arg(long)]
    pub normalise: bool,
}

impl Default for FaultArgs {
    /// No faults (what the tests' in-process emulators start with).
    fn default() -> Self {
        FaultArgs {
            latency: None,
            rate_limit: None,
            retry_after: 0,
            failure_rate: 0.0,
            fault_kinds: vec![FaultKind::ServerError],
            timeout_delay: Duration::from_secs(20),
            burst_length: Duration::from_secs(1),
            normalise: false,
        }
    }
}

/// A kind of random failure (`--fault-kinds`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The provider's 500, 502 or 503 error.
    #[value(name = "5xx")]
    ServerError,
    /// The answer held past the client's timeout (before or after carrying the request out).
    Timeout,
    /// A burst of 429 answers.
    #[value(name = "429-burst")]
    Burst429,
}

impl FaultKind {
    fn label(self) -> &'static str {
        match self {
            FaultKind::ServerError => "5xx",
            FaultKind::Timeout => "timeout",
            FaultKind::Burst429 => "429-burst",
        }
    }
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
    /// Until when a `429-burst` fault answers every request with 429.
    burst_until: Mutex<Option<Instant>>,
    /// Random faults injected so far, by kind (`5xx`, `timeout`, `429-burst`, `429-in-burst`).
    injected: Mutex<BTreeMap<&'static str, u64>>,
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
            burst_until: Mutex::new(None),
            injected: Mutex::new(BTreeMap::new()),
        })
    }

    /// Random faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.injected.lock().unwrap().clone()
    }

    pub(crate) fn count(&self, kind: &'static str) {
        *self.injected.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// Whether this request falls in a 429 burst (one in progress, or one it starts).
    fn in_burst(&self) -> bool {
        let until = *self.burst_until.lock().unwrap();
        until.is_some_and(|u| Instant::now() < u)
    }

    /// The random fault for this request, if it gets one.
    fn draw(&self) -> Option<FaultKind> {
        let rate = self.args.failure_rate;
        if rate.is_nan() || rate <= 0.0 || self.args.fault_kinds.is_empty() {
            return None;
        }
        let mut rng = rand::rng();
        if !rng.random_bool(rate.clamp(0.0, 1.0)) {
            return None;
        }
        let kinds = &self.args.fault_kinds;
        Some(kinds[rng.random_range(0..kinds.len())])
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
    // One URL serving every action (UCloud's `?Action=…`): counted per action too, so a test
    // can tell a read from a write.
    if let Some(action) = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric()))
    }) {
        *faults
            .by_route
            .lock()
            .unwrap()
            .entry(format!("{} {}?Action={action}", req.method(), route))
            .or_default() += 1;
    }

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
    if faults.in_burst() {
        faults.count("429-in-burst");
        return faults.rate_limited(faults.args.retry_after);
    }
    match faults.draw() {
        None => next.run(req).await,
        Some(kind @ FaultKind::ServerError) => {
            faults.count(kind.label());
            let status = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
            ][rand::rng().random_range(0..3)];
            (faults.render)(status, status.canonical_reason().unwrap_or("Error"))
        }
        Some(kind @ FaultKind::Timeout) => {
            faults.count(kind.label());
            let delay = faults.args.timeout_delay;
            if rand::rng().random_bool(0.5) {
                // Carried out, but the answer comes too late: a create that succeeded unseen.
                let resp = next.run(req).await;
                tokio::time::sleep(delay).await;
                resp
            } else {
                tokio::time::sleep(delay).await;
                next.run(req).await
            }
        }
        Some(kind @ FaultKind::Burst429) => {
            faults.count(kind.label());
            *faults.burst_until.lock().unwrap() = Some(Instant::now() + faults.args.burst_length);
            faults.rate_limited(faults.args.retry_after)
        }
    }
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
                Json(serde_json::json!({
                    "requests": f.requests(),
                    "byRoute": f.by_route(),
                    "injected": f.injected(),
                }))
            })
            .delete(|State(f): State<Arc<Faults>>| async move {
                f.requests.store(0, Ordering::Relaxed);
                f.by_route.lock().unwrap().clear();
                f.injected.lock().unwrap().clear();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(faults.clone());
    provider
        .route_layer(middleware::from_fn_with_state(faults, fault_middleware))
        .merge(control)
}

/// `router` with its answers normalised per `fields` when `faults` was built with
/// `--normalise` (each normalised answer counted as `injected.normalised` in the stats).
pub fn normalised(
    router: Router,
    faults: &Arc<Faults>,
    fields: &'static [normalise::Field],
) -> Router {
    if faults.args.normalise {
        normalise::layer(router, fields, faults.clone())
    } else {
        router
    }
}

/// A running emulator (tests): its address and a handle that stops it when dropped.
pub struct RunningEmulator {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    tls: bool,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` when served over TLS; append the
    /// provider's path prefix as needed).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serve `router` over HTTPS with `tls` on an ephemeral loopback port in the background.
pub async fn spawn_tls(
    router: Router,
    faults: Arc<Faults>,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<RunningEmulator> {
    use axum::serve::ListenerExt;
    let listener = tls::TlsListener::new(tokio::net::TcpListener::bind("127.0.0.1:0").await?, tls)?;
    let addr = axum::serve::Listener::local_addr(&listener)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = with_faults(router, faults.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener.tap_io(|_| ()),
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
        tls: true,
    })
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
        tls: false,
    })
}

/// The warning an emulator bound off loopback prints at start: its `/_emulator/*` control
/// endpoints (faults, stats, and for some providers every key's value) have no authentication.
pub fn off_loopback_warning(addr: SocketAddr) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "WARNING: this emulator listens on {addr}, not on loopback: its /_emulator/* control endpoints are NOT authenticated (anyone who can reach {addr} can inject faults, read stats and inspect keys). It is a test tool: bind it to 127.0.0.1 unless the network is yours alone."
    ))
}

/// Serve until SIGINT/SIGTERM (the CLI).
pub async fn serve(
    router: Router,
    faults: Arc<Faults>,
    listen: SocketAddr,
    provider: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // The one line scripts wait for; it names the address actually bound (port 0 works).
    println!("keysmith emulator for {provider} listening on {scheme}://{addr}");
    tracing::info!(%addr, provider, scheme, "emulator listening");
    if let Some(w) = off_loopback_warning(addr) {
        eprintln!("{w}");
        tracing::warn!(%addr, provider, "{w}");
    }
    let app = with_faults(router, faults).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(crate::shutdown_signal())
                .await?
        }
        Some(config) => {
            axum::serve(tls::TlsListener::new(listener, config)?.tap_io(|_| ()), app)
                .with_graceful_shutdown(crate::shutdown_signal())
                .await?
        }
    }
    Ok(())
}

/// `keysmith emulate --tls-cert/--tls-key`: serve HTTPS with this PEM chain and key.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain to serve HTTPS with (needs --tls-key); default plain HTTP.
    #[arg(long, value_name = "FILE", global = true, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", global = true, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    fn config(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Ok(Some(tls::server_config(
                &std::fs::read(c)?,
                &std::fs::read(k)?,
            )?)),
            _ => Ok(None),
        }
    }
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
pub async fn run(listen: SocketAddr, tls: TlsArgs, cmd: EmulateCommand) -> anyhow::Result<()> {
    let tls = tls.config()?;
    match cmd {
        EmulateCommand::OpenRouter(a) => {
            let (router, faults) = openrouter::build(&a);
            serve(router, faults, listen, "openrouter", tls).await
        }
        EmulateCommand::Boltz(a) => {
            let (router, faults) = boltz::build(&a);
            serve(router, faults, listen, "boltz", tls).await
        }
        EmulateCommand::UCloud(a) => {
            let (router, faults) = ucloud::build(&a);
            serve(router, faults, listen, "ucloud", tls).await
        }
        EmulateCommand::DigitalOcean(a) => {
            let (router, faults) = digitalocean::build(&a);
            serve(router, faults, listen, "digitalocean", tls).await
        }
        EmulateCommand::Bifrost(a) => {
            let (router, faults) = bifrost::build(&a);
            serve(router, faults, listen, "bifrost", tls).await
        }
    }
}

/// Random lowercase hex of `n` characters (the emulators' made-up keys and ids). The emulators'
/// own: they share no code with the operator or the clients.
pub fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Resolves on SIGINT or SIGTERM (the emulators' own copy of the operator's).
async fn shutdown_signal() {
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

/// Body for a response (helper for error renderers).
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use tower::ServiceExt;

    /// A provider route counting the requests it carried out, behind faults of `kinds`.
    fn app(kinds: Vec<FaultKind>, rate: f64) -> (Router, Arc<AtomicUsize>, Arc<Faults>) {
        let handled = Arc::new(AtomicUsize::new(0));
        let h = handled.clone();
        let provider = Router::new().route(
            "/keys",
            post(move || {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    StatusCode::CREATED
                }
            }),
        );
        let args = FaultArgs {
            failure_rate: rate,
            fault_kinds: kinds,
            timeout_delay: Duration::from_millis(200),
            burst_length: Duration::from_secs(60),
            retry_after: 3,
            ..FaultArgs::default()
        };
        let faults = Faults::new(args, |s, m| (s, m.to_string()).into_response());
        (with_faults(provider, faults.clone()), handled, faults)
    }

    async fn call(app: &Router) -> (StatusCode, Option<String>, Duration) {
        let started = Instant::now();
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .method("POST")
                    .uri("/keys")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (resp.status(), retry_after, started.elapsed())
    }

    #[test]
    fn control_endpoints_off_loopback_are_warned_about() {
        for quiet in ["127.0.0.1:8787", "[::1]:8787", "127.0.0.2:1"] {
            assert_eq!(
                off_loopback_warning(quiet.parse().unwrap()),
                None,
                "{quiet}"
            );
        }
        for loud in ["0.0.0.0:8787", "[::]:8787", "10.0.0.5:8787"] {
            let w = off_loopback_warning(loud.parse().unwrap()).expect(loud);
            assert!(
                w.contains("NOT authenticated") && w.contains("/_emulator/"),
                "{w}"
            );
        }
    }

    #[tokio::test]
    async fn server_errors_are_500_502_or_503_and_carry_nothing_out() {
        let (app, handled, faults) = app(vec![FaultKind::ServerError], 1.0);
        for _ in 0..20 {
            let (status, _, _) = call(&app).await;
            assert!([500, 502, 503].contains(&status.as_u16()), "{status}");
        }
        assert_eq!(handled.load(Ordering::SeqCst), 0);
        assert_eq!(faults.injected().get("5xx"), Some(&20));
    }

    #[tokio::test]
    async fn timeouts_hold_the_answer_and_some_are_carried_out_first() {
        let (app, handled, faults) = app(vec![FaultKind::Timeout], 1.0);
        for _ in 0..16 {
            let (status, _, took) = call(&app).await;
            assert_eq!(status, StatusCode::CREATED);
            assert!(took >= Duration::from_millis(200), "{took:?}");
        }
        // Every request is carried out in the end (the client gave up on half of them before).
        assert_eq!(handled.load(Ordering::SeqCst), 16);
        assert_eq!(faults.injected().get("timeout"), Some(&16));
    }

    #[tokio::test]
    async fn a_429_burst_answers_every_request_until_it_ends() {
        let (calm, _, _) = app(vec![FaultKind::Burst429], 0.0);
        assert_eq!(
            call(&calm).await.0,
            StatusCode::CREATED,
            "no fault drawn at rate 0"
        );
        let (app, handled, faults) = app(vec![FaultKind::Burst429], 1.0);
        for _ in 0..5 {
            let (status, retry_after, _) = call(&app).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(retry_after.as_deref(), Some("3"));
        }
        assert_eq!(handled.load(Ordering::SeqCst), 0);
        let injected = faults.injected();
        assert_eq!(injected.get("429-burst"), Some(&1), "{injected:?}");
        assert_eq!(injected.get("429-in-burst"), Some(&4), "{injected:?}");
    }

    #[test]
    fn fault_kinds_parse_from_the_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            faults: FaultArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "emulate",
            "--failure-rate",
            "0.2",
            "--fault-kinds",
            "5xx,timeout,429-burst",
            "--timeout-delay",
            "16s",
        ])
        .unwrap();
        assert_eq!(
            cli.faults.fault_kinds,
            vec![
                FaultKind::ServerError,
                FaultKind::Timeout,
                FaultKind::Burst429
            ]
        );
        assert_eq!(cli.faults.timeout_delay, Duration::from_secs(16));
        let cli = <Cli as clap::Parser>::try_parse_from(["emulate"]).unwrap();
        assert_eq!(cli.faults.fault_kinds, vec![FaultKind::ServerError]);
        assert!(
            <Cli as clap::Parser>::try_parse_from(["emulate", "--fault-kinds", "teapot"]).is_err()
        );
    }
}
