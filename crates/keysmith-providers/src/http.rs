//! The HTTP layer every provider client shares: reqwest with rustls, per-request timeouts, retries
//! with full-jitter exponential backoff on 5xx, timeouts and connection failures, 429 honouring
//! `Retry-After`, a client-side token bucket per provider object, and request metrics.
//!
//! Every value that comes from outside is bounded here: the client-side rate limit is clamped
//! to [`MIN_REQUESTS_PER_SECOND`, `MAX_REQUESTS_PER_SECOND`] and [`MAX_BURST`], a provider's
//! `Retry-After`/`Retry-After-Ms`/`ratelimit-reset` to [`MAX_RETRY_AFTER`], a response body to
//! [`MAX_BODY_BYTES`] (read as a stream, an error beyond), the wait for the client-side bucket or
//! an in-flight slot to [`ClientOptions::max_wait`]; redirects are never followed (a provider
//! credential must not travel to another host), and at most [`ClientOptions::max_in_flight`]
//! calls of one provider object run at once.
//!
//! Requests that are not safe to repeat (a key create) are retried only when the provider cannot
//! have acted on them (connection refused, 429): a 5xx or a timeout on a create may have created a
//! key, and that case is left to the controller's crash recovery (see `docs/crash-safety.md`).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::{header::HeaderMap, Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use super::{ClientOptions, ProviderError};
use keysmith_api::ProviderType;

/// Whether a request may be sent twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// GET, PUT, DELETE, PATCH to a fixed state: retry on any transient failure.
    Safe,
    /// Create: retry only when the provider certainly did not act.
    Unsafe,
}

/// A response read to the end.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// Decode the body as JSON, mapping failure to [`ProviderError::Malformed`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            // serde's message may quote a value of the body: cut like any provider text.
            ProviderError::Malformed(snippet(&format!(
                "HTTP {} body is not the expected JSON: {e}",
                self.status.as_u16()
            )))
        })
    }

    /// What an error answer whose body is not the provider's JSON error shape may say about
    /// its body. The body itself is never shown: it may come from a proxy or another host (an
    /// HTML error page), and status conditions and Events are no place for it.
    pub fn text_snippet(&self) -> String {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            String::new()
        } else {
            format!("a non-JSON body of {} bytes, not shown", self.body.len())
        }
    }
}

/// Longest provider message (in characters) copied into an error, and so into a status
/// condition or an Event.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// Largest response body read from a provider; a larger one is an error
/// ([`ProviderError::Malformed`]) and is not read to its end.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Longest wait a provider can ask for (`Retry-After`, `Retry-After-Ms`, `ratelimit-reset`);
/// longer, infinite or far-future values are read as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Bounds of the client-side rate limit (`spec.rateLimit`), also enforced by the CRD.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
pub const MAX_REQUESTS_PER_SECOND: f64 = 10_000.0;
pub const MAX_BURST: u32 = 10_000;

/// Pages one listing may take before keysmith gives up on it (a provider that never ends its
/// pagination, or repeats a cursor, must not hold a reconcile forever).
pub const MAX_PAGES: usize = 1000;

/// Cut a provider message to something readable in `kubectl describe` (at most
/// [`MAX_MESSAGE_CHARS`] characters, cut on a character boundary).
pub fn snippet(s: &str) -> String {
    const MAX: usize = MAX_MESSAGE_CHARS;
    let s = s.trim();
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// [`snippet`] of `s` with `secret` (a value keysmith sent, e.g. a pushed key) replaced by
/// `[REDACTED]` first: scrubbing after the cut would miss a value the cut split.
pub fn snippet_scrubbed(s: &str, secret: Option<&str>) -> String {
    match secret {
        Some(v) if v.len() >= 4 && s.contains(v) => snippet(&s.replace(v, "[REDACTED]")),
        _ => snippet(s),
    }
}

/// Redact `secret` from a message that may already have been cut: the whole value wherever it
/// is, and a beginning of it (4 characters or more) that ends the message, before the `…` of a
/// cut.
pub fn redact(message: &str, secret: &str) -> String {
    if secret.len() < 4 {
        return message.to_string();
    }
    let mut m = message.replace(secret, "[REDACTED]");
    let (body, ellipsis) = match m.strip_suffix('…') {
        Some(b) => (b.to_string(), "…"),
        None => (m.clone(), ""),
    };
    let longest = (4..secret.len())
        .rev()
        .filter(|k| secret.is_char_boundary(*k))
        .find(|k| body.ends_with(&secret[..*k]));
    if let Some(k) = longest {
        m = format!("{}[REDACTED]{ellipsis}", &body[..body.len() - k]);
    }
    m
}

/// A wait in seconds from a provider as a [`Duration`] no longer than [`MAX_RETRY_AFTER`].
/// `None` for NaN and negative values (no usable hint); infinity is the maximum.
pub fn clamped_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    let max = MAX_RETRY_AFTER.as_secs_f64();
    // `min` keeps infinity and 1e300 in range; `try_from` guards what remains.
    Duration::try_from_secs_f64(secs.min(max)).ok()
}

/// Parse `Retry-After` (delta-seconds or an HTTP date) and `Retry-After-Ms`, clamped to
/// [`MAX_RETRY_AFTER`]. Unreadable, negative and NaN values are ignored (`None`).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(d) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| clamped_secs(ms / 1000.0))
    {
        return Some(d);
    }
    let v = text("retry-after")?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        // More digits than a u64 holds: as long as it gets.
        return Some(MAX_RETRY_AFTER);
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when
        .with_timezone(&chrono::Utc)
        .signed_duration_since(chrono::Utc::now());
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Parse `ratelimit-reset`, clamped to [`MAX_RETRY_AFTER`]. DigitalOcean sends Unix epoch
/// seconds (when the oldest counted request expires); the IETF RateLimit draft sends
/// delta-seconds. A value from 10^9 up (2001 onwards as a date, 31 years as a delay) is read as
/// a time, a smaller one as a delay. Negative or unreadable: `None`.
pub fn ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("ratelimit-reset")?.to_str().ok()?.trim();
    let n: i64 = match v.parse() {
        Ok(n) => n,
        // Digits beyond i64: as far away as it gets.
        Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => i64::MAX,
        Err(_) => return None,
    };
    if n < 0 {
        return None;
    }
    let secs = if n >= 1_000_000_000 {
        n.saturating_sub(chrono::Utc::now().timestamp()).max(0)
    } else {
        n
    };
    Some(Duration::from_secs(secs.unsigned_abs()).min(MAX_RETRY_AFTER))
}

/// How long a 429 asks the client to wait: `Retry-After-Ms`/`Retry-After`, else
/// `ratelimit-reset`; clamped to [`MAX_RETRY_AFTER`].
pub fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers).or_else(|| ratelimit_reset(headers))
}

/// How long a provider's answer says no request will be accepted: `ratelimit-remaining: 0`
/// with a `ratelimit-reset` (DigitalOcean: every answer carries both; the reset is when the
/// oldest counted request leaves the sliding window). `None` while requests remain, or when
/// either header is missing or unreadable. Clamped to [`MAX_RETRY_AFTER`].
pub fn exhausted_for(headers: &HeaderMap) -> Option<Duration> {
    let remaining: i64 = headers
        .get("ratelimit-remaining")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if remaining > 0 {
        return None;
    }
    // A Retry-After on the same answer (a 429's) is the server's own, more precise word on
    // when to come back: a 429 saying "retry after 1 s" must not hold requests for the whole
    // window that `ratelimit-reset` names.
    retry_after(headers).or_else(|| ratelimit_reset(headers))
}

/// The provider's `x-should-retry: true|false` (Stainless-generated SDKs, e.g. Boltz's, honour
/// it over their own rules); `None` when absent or unreadable.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers
        .get("x-should-retry")?
        .to_str()
        .ok()?
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The client-side token bucket for `(requests per second, burst)`, with both clamped to the
/// documented bounds. `None` (no client-side limit) for a rate that is NaN, zero or negative.
pub fn rate_limiter(rps: f64, burst: u32) -> Option<DefaultDirectRateLimiter> {
    if rps.is_nan() || rps <= 0.0 {
        return None;
    }
    let rps = rps.clamp(MIN_REQUESTS_PER_SECOND, MAX_REQUESTS_PER_SECOND);
    // rps in [1e-3, 1e4]: the period is in [100 µs, 1000 s], never zero, never out of range.
    let period = Duration::try_from_secs_f64(1.0 / rps).ok()?;
    let burst = NonZeroU32::new(burst.clamp(1, MAX_BURST))?;
    Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
}

/// The platform's CA certificates (rustls-native-certs: the system bundle, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set), read on first use. Unreadable or missing ones leave the built-in
/// roots (and a provider object's `caBundle`).
fn platform_roots() -> &'static [reqwest::Certificate] {
    static ROOTS: std::sync::OnceLock<Vec<reqwest::Certificate>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "cannot read some of the platform's CA certificates");
        }
        loaded
            .certs
            .iter()
            .filter_map(|c| reqwest::Certificate::from_der(c).ok())
            .collect()
    })
}

/// The shared HTTP client of one provider object.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    provider: ProviderType,
    /// Parsed and checked once; every request URL is built from it.
    base: url::Url,
    base_url: String,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    in_flight: Arc<tokio::sync::Semaphore>,
    opts: ClientOptions,
    /// The provider's clock less ours, in seconds, from the last `Date` header
    /// ([`NO_OFFSET`]: none seen yet).
    clock_offset: Arc<AtomicI64>,
    /// Until when the provider's last answer said its rate limit is used up
    /// (`ratelimit-remaining: 0`): requests wait for it instead of drawing a 429.
    exhausted_until: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// [`HttpClient::clock_offset`] before any answer carried a `Date` header.
const NO_OFFSET: i64 = i64::MIN;
/// A `Date` further off than this is not believed (a day, in seconds).
const MAX_OFFSET_SECS: i64 = 86_400;

/// The provider's clock less ours, from a `Date` header, if it is within a day.
pub fn clock_offset_of(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    let v = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let off = (when.with_timezone(&chrono::Utc) - now).num_seconds();
    (off.abs() <= MAX_OFFSET_SECS).then_some(off)
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl HttpClient {
    /// A client for `provider`, using `opts.base_url` or `default_base_url`. The base URL must
    /// be an absolute `http(s)` URL without userinfo, query or fragment, and pass
    /// `opts.network` (see [`super::egress`]); a restricted client also checks every address a
    /// host name resolves to before connecting.
    pub fn new(
        provider: ProviderType,
        default_base_url: &str,
        opts: ClientOptions,
    ) -> Result<Self, String> {
        let raw = opts
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url.to_string());
        let base = parse_base_url(&raw)?;
        super::egress::check_url(&base, opts.network)?;
        let base_url = base.as_str().trim_end_matches('/').to_string();
        // Roots: the built-in Mozilla set, the platform's (rustls-native-certs: the system
        // bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set) and the provider object's caBundle.
        // The platform's roots are read once per process (reading and parsing the system
        // bundle on every client build cost 18 ms in a debug build), not per provider object.
        let mut builder = reqwest::Client::builder().tls_built_in_webpki_certs(true);
        for cert in platform_roots().iter().chain(&opts.extra_roots) {
            builder = builder.add_root_certificate(cert.clone());
        }
        let mut builder = builder
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("keysmith/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the credential header to wherever the answer points (and
            // past the network policy): never followed, a 3xx is returned as it is.
            .redirect(reqwest::redirect::Policy::none());
        if !opts.network.allow_private {
            builder = builder.dns_resolver(Arc::new(super::egress::GuardedResolver));
        }
        let inner = builder
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let limiter = opts
            .rate_limit
            .and_then(|(rps, burst)| rate_limiter(rps, burst))
            .map(Arc::new);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(opts.max_in_flight.max(1)));
        Ok(HttpClient {
            inner,
            provider,
            base,
            base_url,
            limiter,
            in_flight,
            opts,
            clock_offset: Arc::new(AtomicI64::new(NO_OFFSET)),
            exhausted_until: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// How far the provider's clock is ahead of ours (negative: behind), as its last `Date`
    /// header said; `None` before any answer carried one.
    pub fn clock_offset(&self) -> Option<chrono::Duration> {
        match self.clock_offset.load(Ordering::Relaxed) {
            NO_OFFSET => None,
            s => Some(chrono::Duration::seconds(s)),
        }
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL of `path` (`/segment/segment[?query]`) under the base URL, built from parsed
    /// parts: the base's scheme, host, port and path are kept whatever `path` holds, and a
    /// `path` that could walk the path (a `.`/`..` segment, raw or percent-encoded, an encoded
    /// `/` or backslash, an empty segment) or carries a fragment is refused before any call.
    pub fn url(&self, path: &str) -> Result<url::Url, ProviderError> {
        join_path(&self.base, path).map_err(ProviderError::Rejected)
    }

    /// Start a request to `url` (from [`HttpClient::url`]).
    pub fn request(&self, method: Method, url: &url::Url) -> RequestBuilder {
        self.inner.request(method, url.clone())
    }

    /// Send a request built by `build` (called once per attempt), with rate limiting, retries and
    /// metrics. Any HTTP status comes back as a response; only transport failures (after
    /// retries) and exhausted 429/5xx retries come back as errors… except that the caller decides
    /// how to read non-2xx statuses, so 429 and 5xx are returned as responses after the last
    /// attempt too.
    pub async fn send(
        &self,
        operation: &'static str,
        idempotency: Idempotency,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<HttpResponse, ProviderError> {
        // One slot of this provider object's in-flight limit for the whole call, retries
        // included; waiting for it is bounded like the wait for the token bucket.
        let _permit = match tokio::time::timeout(
            self.opts.max_wait,
            self.in_flight.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => {
                tracing::debug!(provider = %self.provider, operation, "every in-flight slot of this provider object is taken");
                return Err(ProviderError::RateLimited { retry_after: None });
            }
        };
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            // Pacing: the provider said its limit is used up until a known time. Wait for it
            // (as long as a token-bucket wait may take), or tell the caller when to come back;
            // either way no request is sent only to draw a 429.
            let until = *self.exhausted_until.lock().unwrap();
            if let Some(wait) = until.and_then(|u| u.checked_duration_since(Instant::now())) {
                if wait > self.opts.max_wait {
                    tracing::debug!(provider = %self.provider, operation, wait_ms = wait.as_millis() as u64, "the provider's rate limit is used up; not sent");
                    return Err(ProviderError::RateLimited {
                        retry_after: Some(wait),
                    });
                }
                tracing::debug!(provider = %self.provider, operation, wait_ms = wait.as_millis() as u64, "the provider's rate limit is used up; waiting for its reset");
                tokio::time::sleep(wait).await;
            }
            if let Some(l) = &self.limiter {
                if tokio::time::timeout(self.opts.max_wait, l.until_ready())
                    .await
                    .is_err()
                {
                    // Nothing was sent: the caller may retry later.
                    return Err(ProviderError::RateLimited {
                        retry_after: Some(self.opts.max_wait),
                    });
                }
            }
            let request = match build().build() {
                Ok(r) => r,
                Err(e) => return Err(ProviderError::Unavailable(transport_error(&e).message)),
            };
            // Fencing: a write is sent only while this replica still holds the leader Lease,
            // checked at the last moment (after any wait above), on every attempt.
            let writes = !matches!(
                *request.method(),
                Method::GET | Method::HEAD | Method::OPTIONS
            );
            if writes && self.opts.write_gate.as_ref().is_some_and(|g| !g.is_open()) {
                tracing::warn!(provider = %self.provider, operation, "not sent: this replica no longer holds the leader Lease");
                return Err(ProviderError::Unavailable(
                    "this replica no longer holds the leader Lease: request not sent".into(),
                ));
            }
            let started = Instant::now();
            let outcome = match self.inner.execute(request).await {
                Ok(resp) => read_capped(resp).await,
                Err(e) => Err(transport_error(&e)),
            };
            let elapsed = started.elapsed();
            let last = attempt >= self.opts.max_attempts;
            match outcome {
                Ok(resp) => {
                    self.observe(operation, result_label(resp.status), elapsed);
                    if let Some(off) = clock_offset_of(&resp.headers, chrono::Utc::now()) {
                        self.clock_offset.store(off, Ordering::Relaxed);
                    }
                    *self.exhausted_until.lock().unwrap() =
                        exhausted_for(&resp.headers).map(|w| Instant::now() + w);
                    let status = resp.status;
                    // The provider's own word on retrying this answer, over the rules below.
                    let told = should_retry(&resp.headers);
                    if told == Some(false) {
                        return Ok(resp);
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = rate_limit_wait(&resp.headers);
                        // The provider did not act on a 429: safe to retry any request.
                        let can_wait = wait.is_none_or(|w| w <= self.opts.max_retry_after);
                        if !last && can_wait {
                            let delay = wait.unwrap_or_else(|| self.backoff(attempt));
                            tracing::debug!(provider = %self.provider, operation, attempt, delay_ms = delay.as_millis() as u64, "rate limited by the provider, waiting");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        return Ok(resp);
                    }
                    // `x-should-retry: true` makes any failed answer retryable, but only for a
                    // request that is safe to repeat: a create the provider may have carried
                    // out is left to crash recovery, whatever the header says.
                    let retryable =
                        status.is_server_error() || (told == Some(true) && !status.is_success());
                    if retryable && idempotency == Idempotency::Safe && !last {
                        let delay = retry_after(&resp.headers)
                            .filter(|w| *w <= self.opts.max_retry_after)
                            .unwrap_or_else(|| self.backoff(attempt));
                        tracing::debug!(provider = %self.provider, operation, attempt, status = status.as_u16(), "provider error, retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(err) => {
                    self.observe(operation, err.label(), elapsed);
                    if err.too_large {
                        return Err(ProviderError::Malformed(err.message));
                    }
                    if err.refused {
                        // Nothing was sent, and trying again would be refused again.
                        return Err(ProviderError::Refused(err.message));
                    }
                    let retry =
                        !last && (idempotency == Idempotency::Safe || err.certainly_not_sent());
                    if retry {
                        let delay = self.backoff(attempt);
                        tracing::debug!(provider = %self.provider, operation, attempt, error = %err.message, "transport error, retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(ProviderError::Unavailable(err.message));
                }
            }
        }
    }

    /// Full-jitter exponential backoff: uniform in [0, base·2^(attempt-1)], capped at 10 s.
    fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.opts.backoff_base, attempt)
    }

    fn observe(&self, operation: &'static str, result: &'static str, elapsed: Duration) {
        if let Some(m) = &self.opts.metrics {
            m.observe(self.provider.as_str(), operation, result, elapsed);
        }
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(base·2^(attempt-1), 10 s)]. Saturating
/// throughout: any base and attempt give a delay of at most 10 s.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let cap = Duration::from_secs(10);
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// Read a response body to its end, refusing one over [`MAX_BODY_BYTES`] (by its
/// Content-Length up front, or as the chunks arrive).
async fn read_capped(mut resp: reqwest::Response) -> Result<HttpResponse, TransportError> {
    let status = resp.status();
    let headers = resp.headers().clone();
    let too_large = || TransportError {
        message: format!("the response body exceeds {} MiB", MAX_BODY_BYTES >> 20),
        connect: false,
        timeout: false,
        too_large: true,
        refused: false,
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len().saturating_add(chunk.len()) > MAX_BODY_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(transport_error(&e)),
        }
    }
    Ok(HttpResponse {
        status,
        headers,
        body: body.freeze(),
    })
}

fn result_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "success",
        401 | 403 => "auth",
        404 => "not_found",
        409 => "conflict",
        410 => "gone",
        429 => "rate_limited",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

struct TransportError {
    message: String,
    connect: bool,
    timeout: bool,
    /// The body was over [`MAX_BODY_BYTES`]: the provider answered, so not retried.
    too_large: bool,
    /// The network policy refused every address of the host: nothing was sent.
    refused: bool,
}

impl TransportError {
    fn certainly_not_sent(&self) -> bool {
        self.connect && !self.timeout
    }
    fn label(&self) -> &'static str {
        if self.too_large {
            "too_large"
        } else if self.refused {
            "refused"
        } else if self.timeout {
            "timeout"
        } else {
            "transport_error"
        }
    }
}

fn transport_error(e: &reqwest::Error) -> TransportError {
    if super::egress::is_refused_error(e) {
        return TransportError {
            message: super::egress::RESOLVES_TO_PRIVATE.to_string(),
            connect: true,
            timeout: false,
            too_large: false,
            refused: true,
        };
    }
    // Only the innermost cause is kept: reqwest's own Display includes the URL.
    let message = if e.is_timeout() {
        "request timed out".to_string()
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        format!("transport error: {}", root_cause(e))
    };
    TransportError {
        message,
        connect: e.is_connect(),
        timeout: e.is_timeout(),
        too_large: false,
        refused: false,
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    snippet(&cur.to_string())
}

/// Parse a provider object's base URL: absolute `http`/`https` with a host, and no userinfo,
/// query or fragment (each would change what a request URL means). A trailing `/` is dropped.
pub fn parse_base_url(raw: &str) -> Result<url::Url, String> {
    // The value is the admin's or tenant's own: quoted, but cut.
    let shown = snippet(raw);
    let url =
        url::Url::parse(raw.trim()).map_err(|e| format!("baseURL {shown:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "baseURL {shown:?} must be an http:// or https:// URL"
        ));
    }
    if url.host().is_none() {
        return Err(format!("baseURL {shown:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not quoted: the userinfo may be a credential.
        return Err("the baseURL must not carry a user name or password (use the provider's credentials Secret)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "baseURL {shown:?} must not have a query (?…) or fragment (#…): request paths are appended to its path"
        ));
    }
    let mut url = url;
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

/// Whether a path segment is one a URL parser resolves (`.`, `..`, and their percent-encoded
/// forms `%2e`, `.%2e`, `%2e.`, `%2e%2e`, any case).
fn is_dot_segment(seg: &str) -> bool {
    let s = seg.to_ascii_lowercase().replace("%2e", ".");
    s == "." || s == ".."
}

/// `base` with `path` (`/a/b[?query]`) appended to its path. Refused: a path not starting with
/// `/`, a fragment, an empty, dot or backslash segment, an encoded `/` or backslash in a segment.
pub fn join_path(base: &url::Url, path: &str) -> Result<url::Url, String> {
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let bad = || format!("{:?} is not a request path keysmith sends", snippet(path));
    if !p.starts_with('/') || path.contains('#') {
        return Err(bad());
    }
    if p != "/" {
        for seg in p[1..].split('/') {
            let lower = seg.to_ascii_lowercase();
            if seg.is_empty()
                || is_dot_segment(seg)
                || seg.contains('\\')
                || lower.contains("%2f")
                || lower.contains("%5c")
            {
                return Err(bad());
            }
        }
    }
    let mut url = base.clone();
    let joined = format!("{}{p}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url.set_query(query);
    url.set_fragment(None);
    // What the parser made of it: still under the base, nothing resolved away.
    if url.path() != joined
        || url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port() != base.port()
    {
        return Err(bad());
    }
    Ok(url)
}

/// Percent-encode one path segment of a request (an id from a spec, a status or a provider
/// answer): everything but unreserved characters is encoded. Refused, whatever the encoding: an
/// empty id, `.` and `..` (a URL parser resolves them, encoded or not), and ids holding `/` or
/// backslash (servers that decode before routing would walk the path). `what` names the id in the
/// message.
pub fn path_segment(id: &str, what: &str) -> Result<String, ProviderError> {
    if id.is_empty() || is_dot_segment(id) || id.contains('/') || id.contains('\\') {
        return Err(ProviderError::Rejected(format!(
            "{:?} is not a valid {what}",
            snippet(id)
        )));
    }
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

/// What one request sends as its body.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    Empty,
    /// `application/json`.
    Json(&'a serde_json::Value),
    /// `application/x-www-form-urlencoded`, already encoded (UCloud's signed parameters).
    Form(&'a str),
}

/// One call to a provider's API, for [`HttpClient::call_json`].
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub operation: &'static str,
    pub idempotency: Idempotency,
    pub method: &'a Method,
    /// `/segment/segment[?query]` under the base URL (see [`HttpClient::url`]).
    pub path: &'a str,
    pub query: &'a [(&'a str, String)],
    pub body: Body<'a>,
    /// Non-2xx statuses the caller reads itself (e.g. Bifrost's 409 on a repeated create):
    /// returned as answers, not turned into errors.
    pub pass: &'a [StatusCode],
}

impl<'a> Call<'a> {
    pub fn new(
        operation: &'static str,
        idempotency: Idempotency,
        method: &'a Method,
        path: &'a str,
    ) -> Self {
        Call {
            operation,
            idempotency,
            method,
            path,
            query: &[],
            body: Body::Empty,
            pass: &[],
        }
    }
    pub fn query(mut self, query: &'a [(&'a str, String)]) -> Self {
        self.query = query;
        self
    }
    /// A JSON body when `body` is `Some`.
    pub fn json(mut self, body: Option<&'a serde_json::Value>) -> Self {
        self.body = body.map_or(Body::Empty, Body::Json);
        self
    }
    pub fn form(mut self, body: &'a str) -> Self {
        self.body = Body::Form(body);
        self
    }
    pub fn pass(mut self, statuses: &'a [StatusCode]) -> Self {
        self.pass = statuses;
        self
    }
}

/// What differs between providers in how a call is made and read: the headers every request
/// carries (the credential, made with [`sensitive_header`]; `Accept`) and how a non-2xx answer
/// reads as a typed error (each provider's error body has its own shape).
pub struct Api<'a> {
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub error: &'a (dyn Fn(&HttpResponse) -> ProviderError + Send + Sync),
}

impl HttpClient {
    /// Send one call through [`HttpClient::send`] (rate limits, retries, bounds, metrics) with
    /// `api`'s headers, and read the answer: 2xx (and the statuses in [`Call::pass`]) come back
    /// as the response, any other status as `api`'s typed error. Every client's calls go
    /// through here; what a provider adds (a RetCode envelope, pagination) reads the response.
    pub async fn call_json(
        &self,
        call: Call<'_>,
        api: &Api<'_>,
    ) -> Result<HttpResponse, ProviderError> {
        let url = self.url(call.path)?;
        let resp = self
            .send(call.operation, call.idempotency, || {
                let mut b = self.request(call.method.clone(), &url);
                for (name, value) in &api.headers {
                    b = b.header(name.clone(), value.clone());
                }
                if !call.query.is_empty() {
                    b = b.query(call.query);
                }
                match call.body {
                    Body::Empty => b,
                    Body::Json(v) => b.json(v),
                    Body::Form(f) => b
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(f.to_string()),
                }
            })
            .await?;
        if resp.status.is_success() || call.pass.contains(&resp.status) {
            Ok(resp)
        } else {
            Err((api.error)(&resp))
        }
    }
}

/// Mark an auth header value sensitive so that it never appears in debug output.
pub fn sensitive_header(value: &str) -> Result<reqwest::header::HeaderValue, ProviderError> {
    let mut v = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
        ProviderError::Auth(
            "the credential contains characters not allowed in an HTTP header".into(),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_used_up_rate_limit_is_read_from_ratelimit_remaining_and_reset() {
        let in_30s = (chrono::Utc::now().timestamp() + 30).to_string();
        let w = exhausted_for(&headers(&[
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", &in_30s),
        ]))
        .expect("used up");
        assert!(
            w <= Duration::from_secs(30) && w >= Duration::from_secs(28),
            "{w:?}"
        );
        // Requests left, no reset, unreadable: nothing to wait for.
        assert_eq!(
            exhausted_for(&headers(&[
                ("ratelimit-remaining", "1"),
                ("ratelimit-reset", &in_30s)
            ])),
            None
        );
        assert_eq!(
            exhausted_for(&headers(&[("ratelimit-remaining", "0")])),
            None
        );
        assert_eq!(
            exhausted_for(&headers(&[
                ("ratelimit-remaining", "none"),
                ("ratelimit-reset", &in_30s)
            ])),
            None
        );
        // A far reset is bounded.
        assert_eq!(
            exhausted_for(&headers(&[
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "99999999999999999999999")
            ])),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn x_should_retry_is_read_strictly() {
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", " FALSE ")])),
            Some(false)
        );
        assert_eq!(should_retry(&headers(&[("x-should-retry", "1")])), None);
        assert_eq!(should_retry(&HeaderMap::new()), None);
    }

    #[test]
    fn the_providers_clock_offset_comes_from_its_date_header() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let with_date = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(reqwest::header::DATE, v.parse().unwrap());
            h
        };
        assert_eq!(
            clock_offset_of(&with_date("Mon, 01 Jun 2026 11:50:00 GMT"), now),
            Some(-600)
        );
        assert_eq!(
            clock_offset_of(&with_date("Mon, 01 Jun 2026 12:00:30 GMT"), now),
            Some(30)
        );
        // Garbage, or more than a day off, is not believed.
        assert_eq!(clock_offset_of(&with_date("yesterday"), now), None);
        assert_eq!(
            clock_offset_of(&with_date("Mon, 01 Jun 2020 12:00:00 GMT"), now),
            None
        );
        assert_eq!(clock_offset_of(&HeaderMap::new(), now), None);
    }

    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn secrets_are_scrubbed_before_the_cut_and_cut_tails_are_redacted() {
        let value = "sk-upstream-0123456789abcdef0123456789";
        let text = format!("{} {value} trailing", "x".repeat(190));
        // Cut first, scrubbed after (the old order): the value's head survives the cut.
        let old = snippet(&text).replace(value, "[REDACTED]");
        assert!(old.contains("sk-upstre"), "{old}");
        let new = snippet_scrubbed(&text, Some(value));
        assert!(!new.contains("sk-up"), "{new}");
        // A message that was cut elsewhere: its tail that starts the value is redacted.
        let r = redact(&old, value);
        assert!(!r.contains("sk-up") && r.ends_with("[REDACTED]…"), "{r}");
        assert_eq!(redact("no value here", value), "no value here");
        assert_eq!(redact(&format!("a {value} b"), value), "a [REDACTED] b");
    }

    #[test]
    fn snippets_are_cut() {
        let long = "x".repeat(1000);
        assert!(snippet(&long).chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert_eq!(snippet(" short "), "short");
        // Multi-byte characters are cut on a character boundary.
        let wide = "é語🦀".repeat(200);
        let cut = snippet(&wide);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hostile_retry_after_values_are_clamped_or_ignored() {
        let ra = |k: &'static str, v: &str| retry_after(&headers(&[(k, v)]));
        // Retry-After-Ms: the values of the issue.
        assert_eq!(ra("retry-after-ms", "inf"), Some(MAX_RETRY_AFTER));
        assert_eq!(ra("retry-after-ms", "infinity"), Some(MAX_RETRY_AFTER));
        assert_eq!(ra("retry-after-ms", "1e300"), Some(MAX_RETRY_AFTER));
        assert_eq!(ra("retry-after-ms", "NaN"), None);
        assert_eq!(ra("retry-after-ms", "-inf"), None);
        assert_eq!(ra("retry-after-ms", "-5"), None);
        assert_eq!(ra("retry-after-ms", "1e-300"), Some(Duration::ZERO));
        // Retry-After: u64::MAX, beyond u64, negative, HTTP dates far away either way.
        assert_eq!(
            ra("retry-after", "18446744073709551615"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            ra("retry-after", "99999999999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(ra("retry-after", "-1"), None);
        assert_eq!(ra("retry-after", "7200"), Some(MAX_RETRY_AFTER));
        assert_eq!(ra("retry-after", "120"), Some(Duration::from_secs(120)));
        assert_eq!(
            ra("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            ra("retry-after", "Mon, 01 Jan 0001 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(ra("retry-after", "soon"), None);
        // A NaN Retry-After-Ms falls back to Retry-After.
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "NaN"), ("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn ratelimit_reset_is_an_epoch_or_a_delay_and_clamped() {
        let rr = |v: &str| ratelimit_reset(&headers(&[("ratelimit-reset", v)]));
        let now = chrono::Utc::now().timestamp();
        let in_a_minute = rr(&(now + 60).to_string()).unwrap();
        assert!(in_a_minute <= Duration::from_secs(60) && in_a_minute >= Duration::from_secs(58));
        assert_eq!(rr(&(now - 60).to_string()), Some(Duration::ZERO));
        assert_eq!(rr("30"), Some(Duration::from_secs(30)));
        assert_eq!(rr(&i64::MAX.to_string()), Some(MAX_RETRY_AFTER));
        assert_eq!(rr("184467440737095516150"), Some(MAX_RETRY_AFTER));
        assert_eq!(rr("-5"), None);
        assert_eq!(rr("tomorrow"), None);
        // Retry-After wins over ratelimit-reset.
        let h = headers(&[("retry-after", "3"), ("ratelimit-reset", "30")]);
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(3)));
        let h = headers(&[("ratelimit-reset", "30")]);
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(30)));
    }

    #[test]
    fn rate_limits_are_clamped_not_panicking() {
        // The value of the issue: 1e-20 requests per second panicked in from_secs_f64.
        for rps in [
            1e-20,
            f64::MIN_POSITIVE,
            5e-324,
            1e-3,
            0.5,
            1e300,
            f64::INFINITY,
        ] {
            assert!(rate_limiter(rps, 1).is_some(), "{rps}");
        }
        for rps in [0.0, -0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            assert!(rate_limiter(rps, 1).is_none(), "{rps}");
        }
        assert!(rate_limiter(1.0, 0).is_some());
        assert!(rate_limiter(1.0, u32::MAX).is_some());
        // The slowest rate admits its burst at once, then refuses.
        let slow = rate_limiter(1e-20, 2).unwrap();
        assert!(slow.check().is_ok());
        assert!(slow.check().is_ok());
        assert!(slow.check().is_err());
    }

    #[test]
    fn a_client_with_any_rate_limit_builds() {
        for rps in [1e-20, 0.0, f64::NAN, f64::INFINITY, -3.0, 1e300] {
            let opts = ClientOptions {
                rate_limit: Some((rps, u32::MAX)),
                ..Default::default()
            };
            HttpClient::new(ProviderType::OpenRouter, "http://127.0.0.1:9", opts).unwrap();
        }
    }

    #[test]
    fn backoff_is_bounded_for_any_base_and_attempt() {
        for base in [Duration::ZERO, Duration::from_millis(1), Duration::MAX] {
            for attempt in [0, 1, 2, 17, 64, u32::MAX] {
                assert!(backoff(base, attempt) <= Duration::from_secs(10));
            }
        }
    }

    #[test]
    fn base_urls_with_userinfo_query_or_fragment_are_refused() {
        assert_eq!(
            parse_base_url("https://gw.example.com/api/")
                .unwrap()
                .as_str(),
            "https://gw.example.com/api"
        );
        for bad in [
            "https://user:pass@gw.example.com/",
            "https://token@gw.example.com/",
            "https://gw.example.com/api?x=/admin",
            "https://gw.example.com/api#",
            "https://gw.example.com/api#frag",
            "ftp://gw.example.com/",
            "file:///etc/passwd",
            "not a url",
        ] {
            let e = parse_base_url(bad).unwrap_err();
            assert!(!e.contains("user:pass") && !e.contains("token@"), "{e}");
        }
        // A `?` in the baseURL used to pick the path: `{base}{path}` put the path in the query.
        let opts = ClientOptions {
            base_url: Some("https://gw.example.com/api?".into()),
            ..Default::default()
        };
        assert!(HttpClient::new(ProviderType::Bifrost, "https://x", opts).is_err());
    }

    #[test]
    fn request_urls_are_built_under_the_base_path() {
        let base = parse_base_url("https://gw.example.com/api").unwrap();
        let u = join_path(&base, "/keys/abc%20d?cursor=x%26y").unwrap();
        assert_eq!(
            u.as_str(),
            "https://gw.example.com/api/keys/abc%20d?cursor=x%26y"
        );
        let root = parse_base_url("https://api.example.com").unwrap();
        assert_eq!(
            join_path(&root, "/?Action=List").unwrap().as_str(),
            "https://api.example.com/?Action=List"
        );
        for bad in [
            "/keys/..",
            "/keys/../admin",
            "/keys/.",
            "/keys/%2e%2E",
            "/keys/.%2e",
            "/keys/%2E",
            "/keys/a%2Fb",
            "/keys/a%5cb",
            "/keys/a\\b",
            "/keys//x",
            "/keys/",
            "/keys/x#frag",
            "keys",
            "//evil.example/x",
        ] {
            assert!(join_path(&base, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_become_one_segment_or_are_refused() {
        assert_eq!(path_segment("key_abc-1.2", "id").unwrap(), "key_abc-1.2");
        assert_eq!(
            path_segment("a b?c#d%2f", "id").unwrap(),
            "a%20b%3Fc%23d%252f"
        );
        for bad in ["", ".", "..", "%2e", "%2E%2e", "a/b", "a\\b", "../admin"] {
            let e = path_segment(bad, "Bifrost key id").unwrap_err();
            assert!(matches!(e, ProviderError::Rejected(_)), "{bad}: {e}");
        }
        // Whatever an id holds, the URL stays under the base and ends with that one segment.
        let base = parse_base_url("https://gw.example.com/api").unwrap();
        for id in ["x", "a.b", "...", "%2e%2e%2f", "?q", "#f", "é"] {
            let seg = path_segment(id, "id").unwrap();
            let u = join_path(&base, &format!("/keys/{seg}")).unwrap();
            assert!(u.path().starts_with("/api/keys/"), "{id}: {u}");
            assert_eq!(u.path_segments().unwrap().count(), 3, "{id}: {u}");
            assert!(u.query().is_none() && u.fragment().is_none(), "{id}: {u}");
        }
    }

    /// A restricted client (a namespaced KeyProvider's, by default) never connects to a name
    /// that resolves to loopback: the listener accepts nothing and the error says why without
    /// naming the address. Before the network policy the request went out.
    #[tokio::test]
    async fn a_restricted_client_does_not_connect_to_a_name_resolving_to_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            while let Ok((_conn, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let client = |network| {
            HttpClient::new(
                ProviderType::OpenRouter,
                "https://x",
                ClientOptions {
                    base_url: Some(format!("https://localhost:{port}/api/v1")),
                    network,
                    timeout: Duration::from_secs(2),
                    max_attempts: 3,
                    backoff_base: Duration::from_millis(1),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let restricted = client(super::super::egress::NetworkPolicy::RESTRICTED);
        let url = restricted.url("/keys").unwrap();
        let err = restricted
            .send("list", Idempotency::Safe, || {
                restricted.request(Method::GET, &url)
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Refused(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("private, loopback or link-local"), "{text}");
        assert!(
            !text.contains("127.0.0.1") && !text.contains("::1"),
            "{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        // The same client without the policy connects (TLS then fails: the listener is no
        // TLS server, but the connection was made).
        let open = client(super::super::egress::NetworkPolicy::OPEN);
        let _ = open
            .send("list", Idempotency::Unsafe, || {
                open.request(Method::GET, &url)
            })
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        server.abort();
    }

    /// Redirects are not followed: a 302 comes back as the answer, and the place it points to
    /// gets no connection (it would get the credential header, and escape the network policy).
    #[tokio::test]
    async fn redirects_are_never_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = reached.clone();
        let t = tokio::spawn(async move {
            while let Ok(_c) = target.accept().await {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", redirector.local_addr().unwrap());
        let s = tokio::spawn(async move {
            while let Ok((mut c, _)) = redirector.accept().await {
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(format!("HTTP/1.1 302 Found\r\nlocation: http://{target_addr}/steal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let client = HttpClient::new(
            ProviderType::OpenRouter,
            &base,
            ClientOptions {
                max_attempts: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let url = client.url("/keys").unwrap();
        let resp = client
            .send("list", Idempotency::Safe, || {
                client
                    .request(Method::GET, &url)
                    .header("authorization", "Bearer secret")
            })
            .await
            .unwrap();
        assert_eq!(resp.status.as_u16(), 302);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
        t.abort();
        s.abort();
    }

    #[test]
    fn bodies_that_are_not_the_providers_json_are_not_quoted() {
        let r = HttpResponse {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"<html><body>proxy of evil.example: token abc</body></html>"),
        };
        let t = r.text_snippet();
        assert!(!t.contains("evil") && !t.contains("abc"), "{t}");
        assert!(t.contains("not shown"));
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        fn header_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| f.to_string()),
                "[0-9]{15,40}",
                "-?[0-9]{0,5}(\\.[0-9]{0,5})?(e[+-]?[0-9]{1,4})?",
                "(Mon|Fri|Sun), [0-9]{2} (Jan|Dec|Feb) [0-9]{1,5} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|\\+9999|-0000)",
                "[ -~]{0,40}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn wait_headers_never_panic_and_stay_bounded(a in header_value(), b in header_value(), c in header_value()) {
                let mut h = HeaderMap::new();
                for (k, v) in [("retry-after", &a), ("retry-after-ms", &b), ("ratelimit-reset", &c)] {
                    if let Ok(v) = v.parse() {
                        h.insert(k, v);
                    }
                }
                for w in [retry_after(&h), ratelimit_reset(&h), rate_limit_wait(&h)].into_iter().flatten() {
                    prop_assert!(w <= MAX_RETRY_AFTER);
                    // What callers do with it: add it to now.
                    prop_assert!(std::time::Instant::now().checked_add(w).is_some());
                }
            }

            #[test]
            fn any_rate_limit_and_backoff_is_safe(rps in any::<f64>(), burst in any::<u32>(), ms in any::<u64>(), attempt in any::<u32>()) {
                let _ = rate_limiter(rps, burst);
                prop_assert!(backoff(Duration::from_millis(ms), attempt) <= Duration::from_secs(10));
                if let Some(d) = clamped_secs(rps) {
                    prop_assert!(d <= MAX_RETRY_AFTER);
                }
            }

            #[test]
            fn snippets_never_split_a_character(s in "\\PC{0,400}") {
                let cut = snippet(&s);
                prop_assert!(cut.chars().count() <= MAX_MESSAGE_CHARS + 1);
            }
        }
    }
}
