//! The HTTP layer every provider client shares: reqwest with rustls, per-request timeouts, retries
//! with full-jitter exponential backoff on 5xx, timeouts and connection failures, 429 honouring
//! `Retry-After`, a client-side token bucket per provider object, and request metrics.
//!
//! Requests that are not safe to repeat (a key create) are retried only when the provider cannot
//! have acted on them (connection refused, 429): a 5xx or a timeout on a create may have created a
//! key, and that case is left to the controller's crash recovery (see `docs/crash-safety.md`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::{header::HeaderMap, Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use super::{ClientOptions, ProviderError};
use crate::api::ProviderType;

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
            ProviderError::Malformed(format!(
                "HTTP {} body is not the expected JSON: {e}",
                self.status.as_u16()
            ))
        })
    }

    /// The body as text, cut to a length fit for a condition message.
    pub fn text_snippet(&self) -> String {
        snippet(&String::from_utf8_lossy(&self.body))
    }
}

/// Cut a provider message to something readable in `kubectl describe`.
pub fn snippet(s: &str) -> String {
    const MAX: usize = 300;
    let s = s.trim();
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Parse `Retry-After` (delta-seconds or an HTTP date) and `Retry-After-Ms`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The shared HTTP client of one provider object.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    provider: ProviderType,
    base_url: String,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    opts: ClientOptions,
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
    /// A client for `provider`, using `opts.base_url` or `default_base_url`.
    pub fn new(
        provider: ProviderType,
        default_base_url: &str,
        opts: ClientOptions,
    ) -> Result<Self, String> {
        let base_url = opts
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url.to_string());
        let base_url = base_url.trim_end_matches('/').to_string();
        url::Url::parse(&base_url)
            .map_err(|e| format!("baseURL {base_url:?} is not a URL: {e}"))?;
        let inner = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("keysmith/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let limiter = match opts.rate_limit {
            Some((rps, burst)) if rps > 0.0 => {
                let period = Duration::from_secs_f64(1.0 / rps);
                let quota = Quota::with_period(period)
                    .ok_or("rate limit period is zero")?
                    .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst >= 1"));
                Some(Arc::new(RateLimiter::direct(quota)))
            }
            _ => None,
        };
        Ok(HttpClient {
            inner,
            provider,
            base_url,
            limiter,
            opts,
        })
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Start a request to `base_url + path`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.inner
            .request(method, format!("{}{}", self.base_url, path))
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
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if let Some(l) = &self.limiter {
                l.until_ready().await;
            }
            let started = Instant::now();
            let outcome = match build().send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(body) => Ok(HttpResponse {
                            status,
                            headers,
                            body,
                        }),
                        Err(e) => Err(transport_error(&e)),
                    }
                }
                Err(e) => Err(transport_error(&e)),
            };
            let elapsed = started.elapsed();
            let last = attempt >= self.opts.max_attempts;
            match outcome {
                Ok(resp) => {
                    self.observe(operation, result_label(resp.status), elapsed);
                    let status = resp.status;
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = retry_after(&resp.headers);
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
                    if status.is_server_error() && idempotency == Idempotency::Safe && !last {
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
        let cap = Duration::from_secs(10);
        let exp = self
            .opts
            .backoff_base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(cap);
        let ms = rand::rng().random_range(0..=exp.as_millis().max(1) as u64);
        Duration::from_millis(ms)
    }

    fn observe(&self, operation: &'static str, result: &'static str, elapsed: Duration) {
        if let Some(m) = &self.opts.metrics {
            m.observe(self.provider.as_str(), operation, result, elapsed);
        }
    }
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
}

impl TransportError {
    fn certainly_not_sent(&self) -> bool {
        self.connect && !self.timeout
    }
    fn label(&self) -> &'static str {
        if self.timeout {
            "timeout"
        } else {
            "transport_error"
        }
    }
}

fn transport_error(e: &reqwest::Error) -> TransportError {
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
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    snippet(&cur.to_string())
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
    fn snippets_are_cut() {
        let long = "x".repeat(1000);
        assert!(snippet(&long).chars().count() <= 301);
        assert_eq!(snippet(" short "), "short");
    }
}
