//! What the two benchmarks share (`benches/reconcile.rs` offline, `tests/e2e_bench.rs` on a
//! cluster): their knobs, read from the environment, and the helpers that print figures. The
//! soak test (`tests/e2e_soak.rs`) reads its knobs with the same helpers.

use std::time::Duration;

use serde_json::Value;

/// The knobs (docs/performance.md).
pub struct BenchConfig {
    /// `BENCH_N`: ApiKeys.
    pub n: usize,
    /// `BENCH_RATE`: requests per second the emulator serves before answering 429.
    pub rate: f64,
    /// `BENCH_LATENCY`: added to every emulator answer.
    pub latency: Duration,
    /// `BENCH_CONCURRENCY`: reconciles in flight (`keysmith run --concurrency`).
    pub concurrency: u16,
    /// `BENCH_REFRESH`: the ClusterKeyProvider's refreshInterval.
    pub refresh: Duration,
    /// `BENCH_CLIENT_RPS`: the ClusterKeyProvider's client-side rate limit.
    pub client_rps: Option<f64>,
    /// `BENCH_RETRY_AFTER`: seconds asked for in the emulator's 429 answers.
    pub retry_after: u64,
    /// `BENCH_NAMESPACES`: namespaces the ApiKeys are spread over (cluster benchmark).
    pub namespaces: usize,
    /// `BENCH_PROVIDERS`: ClusterKeyProviders the ApiKeys are spread over, all of one account
    /// at the emulator (cluster benchmark).
    pub providers: usize,
    /// `BENCH_OPERATOR_ENV`: `NAME=value` pairs (comma-separated) set for the operator process
    /// only, e.g. `MALLOC_ARENA_MAX=2` or a heap profiler's `LD_PRELOAD` (cluster benchmark).
    pub operator_env: Vec<(String, String)>,
}

/// `name` parsed from the environment, or `default` when unset (a value that does not parse
/// stops the run).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

/// A duration (`16s`, `10m`) from the environment, or `default`.
pub fn env_duration(name: &str, default: &str) -> Duration {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_string());
    humantime::parse_duration(&v).unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
}

impl BenchConfig {
    pub fn from_env(default_refresh: &str) -> Self {
        BenchConfig {
            n: env_or("BENCH_N", 1000),
            rate: env_or("BENCH_RATE", 50.0),
            latency: env_duration("BENCH_LATENCY", "5ms"),
            concurrency: env_or("BENCH_CONCURRENCY", 64),
            refresh: env_duration("BENCH_REFRESH", default_refresh),
            client_rps: std::env::var("BENCH_CLIENT_RPS")
                .ok()
                .map(|v| v.parse().expect("BENCH_CLIENT_RPS is a number")),
            retry_after: env_or("BENCH_RETRY_AFTER", 1),
            namespaces: env_or::<usize>("BENCH_NAMESPACES", 1).max(1),
            providers: env_or::<usize>("BENCH_PROVIDERS", 1).max(1),
            operator_env: std::env::var("BENCH_OPERATOR_ENV")
                .unwrap_or_default()
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .collect(),
        }
    }

    /// One line naming every knob.
    pub fn describe(&self) -> String {
        format!(
            "N={} ApiKeys in {} namespace(s) using {} provider object(s), emulator rate limit {} rps (429 + Retry-After: {} beyond it), latency {:?}, concurrency {}, refreshInterval {:?}, client-side rateLimit {}{}",
            self.n,
            self.namespaces,
            self.providers,
            self.rate,
            self.retry_after,
            self.latency,
            self.concurrency,
            self.refresh,
            self.client_rps
                .map(|r| format!("{r} rps"))
                .unwrap_or_else(|| "none".into()),
            if self.operator_env.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = self.operator_env.iter().map(|(k, _)| k.as_str()).collect();
                format!(", operator environment: {}", names.join(" "))
            },
        )
    }

    /// The lower bound of the creation time: N/R.
    pub fn bound(&self) -> Duration {
        Duration::from_secs_f64(self.n as f64 / self.rate)
    }
}

/// Requests the emulator counted on one route (`GET /_emulator/stats` → `byRoute`).
pub fn route(stats: &Value, r: &str) -> u64 {
    stats["byRoute"][r].as_u64().unwrap_or(0)
}

/// `VmHWM` (peak resident set size) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What a process's resident memory is made of (`/proc/PID/smaps_rollup`): anonymous memory
/// (heap, stacks) and file-backed pages (the binary's code and data), as one line.
pub fn rss_breakdown(pid: u32) -> String {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return "unknown".into();
    };
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let (rss, anon) = (field("Rss:"), field("Anonymous:"));
    format!(
        "RSS now {} = anonymous (heap, stacks) {} + file-backed (binary) {}",
        mib(rss),
        mib(anon),
        mib(rss.zip(anon).map(|(r, a)| r.saturating_sub(a)))
    )
}

/// KiB as MiB for printing.
pub fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".into())
}
