//! Fair share of one provider object between tenants (issue 17, item 7), without IO:
//!
//! - **A create budget per ApiKey**: at most `createLimit.perApiKeyPerHour` creates in any hour
//!   (first key, rotations, recreates, retries), counted in `status.recentCreates` so that a
//!   restart does not reset it. A loop of `keysmith.dev/rotate` annotations with
//!   `gracePeriod: 0s`, or of spec edits, cannot mint keys without end.
//! - **A fair share of the create rate per namespace**: each provider object has a token bucket
//!   of `createLimit.perSecond` (burst `createLimit.burst`) split evenly between the namespaces
//!   that asked for a create recently (within three of their turns, 5 s to 60 s): a namespace
//!   alone gets the whole rate, two
//!   get half each. A noisy namespace cannot take more than its share while others have work,
//!   and the check never waits (a reconcile that finds no token is requeued when one is due), so
//!   a noisy namespace does not hold the controller's reconcile slots either.
//! - **A bounded hold after a 429**: a provider's Retry-After holds the creates of every
//!   namespace on that provider object (the limit is the account's), but for at most
//!   [`MAX_CREATE_HOLD`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::api::KeyProviderSpec;

/// Creates per second through a provider object without `createLimit.perSecond` or
/// `rateLimit`.
pub const DEFAULT_PER_SECOND: f64 = 100.0;
/// Creates one ApiKey may send in any hour without `createLimit.perApiKeyPerHour`.
pub const DEFAULT_PER_API_KEY_PER_HOUR: u32 = 10;
/// The most `createLimit.perApiKeyPerHour` may be (it bounds `status.recentCreates`).
pub const MAX_PER_API_KEY_PER_HOUR: u32 = 100;
/// The window the per-ApiKey budget counts in.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(3600);
/// The longest a 429's Retry-After holds the creates of every namespace on a provider object.
pub const MAX_CREATE_HOLD: Duration = Duration::from_secs(60);
/// A namespace shares the create rate while it asked for a create recently: within three of
/// its turns (1 / its share), and at least this long…
pub const ACTIVE_MIN: Duration = Duration::from_secs(5);
/// …and at most this long. A namespace that stopped asking leaves the share soon after, and
/// the others get its part of the rate back.
pub const ACTIVE_MAX: Duration = Duration::from_secs(60);

/// How recently a namespace must have asked to share the rate, with `n` namespaces sharing.
fn active_window(limits: &CreateLimits, n: usize) -> Duration {
    let share = limits.per_second / n.max(1) as f64;
    Duration::try_from_secs_f64(3.0 / share)
        .unwrap_or(ACTIVE_MAX)
        .clamp(ACTIVE_MIN, ACTIVE_MAX)
}

const MIN_PER_SECOND: f64 = 0.001;
const MAX_PER_SECOND: f64 = 10_000.0;
const MAX_BURST: f64 = 10_000.0;

/// The create limits of a provider object, defaults applied and values bounded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CreateLimits {
    /// Creates per second through the provider object (all namespaces together).
    pub per_second: f64,
    /// Burst above the rate (all namespaces together).
    pub burst: f64,
    /// Creates one ApiKey may send in any hour.
    pub per_api_key_per_hour: u32,
}

impl Default for CreateLimits {
    fn default() -> Self {
        CreateLimits {
            per_second: DEFAULT_PER_SECOND,
            burst: DEFAULT_PER_SECOND,
            per_api_key_per_hour: DEFAULT_PER_API_KEY_PER_HOUR,
        }
    }
}

fn bounded_rate(r: f64) -> Option<f64> {
    (r.is_finite() && r > 0.0).then(|| r.clamp(MIN_PER_SECOND, MAX_PER_SECOND))
}

impl CreateLimits {
    /// `spec.createLimit`, falling back to `spec.rateLimit`, then to the defaults. Any value
    /// (NaN, negative, huge: objects admitted before the CRD bounds) gives bounded limits.
    pub fn of(spec: &KeyProviderSpec) -> CreateLimits {
        let cl = spec.create_limit.as_ref();
        let rl = spec.rate_limit.as_ref();
        let per_second = cl
            .and_then(|c| c.per_second)
            .and_then(bounded_rate)
            .or_else(|| rl.and_then(|r| bounded_rate(r.requests_per_second)))
            .unwrap_or(DEFAULT_PER_SECOND);
        let burst = cl
            .and_then(|c| c.burst)
            .map(f64::from)
            .or_else(|| rl.and_then(|r| r.burst).map(f64::from))
            .unwrap_or(per_second)
            .clamp(1.0, MAX_BURST);
        let per_api_key_per_hour = cl
            .and_then(|c| c.per_api_key_per_hour)
            .map_or(DEFAULT_PER_API_KEY_PER_HOUR, |n| {
                n.clamp(1, MAX_PER_API_KEY_PER_HOUR as i32) as u32
            });
        CreateLimits {
            per_second,
            burst,
            per_api_key_per_hour,
        }
    }
}

/// Why a create must wait for its namespace's share.
#[derive(Clone, Debug, PartialEq)]
pub struct Throttled {
    /// When the namespace's next token is due.
    pub wait: Duration,
    /// Namespaces sharing the rate now (this one included).
    pub sharing: usize,
    /// This namespace's share, creates per second.
    pub share: f64,
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    asked: Instant,
}

/// The create rate of one provider object, split between namespaces.
#[derive(Clone, Debug, Default)]
pub struct FairShare {
    namespaces: HashMap<String, Bucket>,
}

impl FairShare {
    /// Take one create for namespace `ns` at `now`, or say how long it must wait.
    pub fn take(&mut self, ns: &str, limits: &CreateLimits, now: Instant) -> Result<(), Throttled> {
        // Namespaces that stopped asking leave the share (and the map).
        let active = active_window(limits, self.namespaces.len());
        self.namespaces
            .retain(|n, b| n == ns || now.saturating_duration_since(b.asked) < active);
        let sharing = self.namespaces.len() + usize::from(!self.namespaces.contains_key(ns));
        let share = limits.per_second / sharing as f64;
        let capacity = (limits.burst / sharing as f64).max(1.0);
        let b = self.namespaces.entry(ns.to_string()).or_insert(Bucket {
            tokens: capacity,
            refilled: now,
            asked: now,
        });
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * share).min(capacity);
        b.refilled = now;
        b.asked = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::try_from_secs_f64((1.0 - b.tokens) / share)
            .unwrap_or(BUDGET_WINDOW)
            .clamp(Duration::from_millis(1), BUDGET_WINDOW);
        Err(Throttled {
            wait,
            sharing,
            share,
        })
    }

    /// Namespaces that asked within [`ACTIVE_MAX`] of `now`.
    pub fn sharing(&self, now: Instant) -> usize {
        self.namespaces
            .values()
            .filter(|b| now.saturating_duration_since(b.asked) < ACTIVE_MAX)
            .count()
    }
}

/// The fair shares of every provider object (by provider object id). Provider objects whose
/// namespaces all went idle are dropped: the map holds only recently used ones.
#[derive(Debug, Default)]
pub struct FairShares(Mutex<HashMap<String, FairShare>>);

impl FairShares {
    /// Take one create through `provider` for namespace `ns`.
    pub fn take(&self, provider: &str, ns: &str, limits: &CreateLimits) -> Result<(), Throttled> {
        let now = Instant::now();
        let mut all = self.0.lock().unwrap();
        if all.len() > 64 {
            all.retain(|_, f| f.sharing(now) > 0);
        }
        all.entry(provider.to_string())
            .or_default()
            .take(ns, limits, now)
    }

    /// Forget a provider object (deleted, or its limits changed).
    pub fn forget(&self, provider: &str) {
        self.0.lock().unwrap().remove(provider);
    }

    /// Provider objects with a fair share held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn window() -> chrono::Duration {
    chrono::Duration::from_std(BUDGET_WINDOW).unwrap_or(chrono::Duration::hours(1))
}

/// The creates of `recent` (`status.recentCreates`) inside the hour before `now`, oldest first.
/// Unreadable entries and entries in the future (a clock step back) count as sent now: a
/// status cannot buy creates by being malformed.
fn in_window(recent: &[String], now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let start = now - window();
    let mut times: Vec<DateTime<Utc>> = recent
        .iter()
        .map(|s| super::time::parse(s).map_or(now, |t| t.min(now)))
        .filter(|t| *t > start)
        .collect();
    times.sort();
    times
}

/// When the next create of an ApiKey may be sent, if its budget is spent: `Some(t)` means no
/// create before `t` (the oldest create of the window leaves it then).
pub fn budget_spent_until(
    recent: &[String],
    per_hour: u32,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let times = in_window(recent, now);
    let per_hour = per_hour.max(1) as usize;
    if times.len() < per_hour {
        return None;
    }
    // With `per_hour` creates in the window, the next may go when the oldest of the last
    // `per_hour` leaves it.
    let oldest = times[times.len() - per_hour];
    Some(oldest + window())
}

/// Record a create sent at `now` in `recent` (`status.recentCreates`): entries older than the
/// window go, and at most [`MAX_PER_API_KEY_PER_HOUR`] are kept.
pub fn record_create(recent: &mut Vec<String>, now: DateTime<Utc>) {
    let mut times = in_window(recent, now);
    times.push(now);
    let keep = MAX_PER_API_KEY_PER_HOUR as usize;
    if times.len() > keep {
        times.drain(..times.len() - keep);
    }
    *recent = times.into_iter().map(crate::controller::time::ts).collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CreateLimit, RateLimit};

    fn limits(per_second: f64, burst: f64) -> CreateLimits {
        CreateLimits {
            per_second,
            burst,
            per_api_key_per_hour: 10,
        }
    }

    #[test]
    fn limits_default_to_the_rate_limit_and_are_bounded() {
        let mut spec = KeyProviderSpec::default();
        assert_eq!(CreateLimits::of(&spec), CreateLimits::default());
        spec.rate_limit = Some(RateLimit {
            requests_per_second: 5.0,
            burst: Some(8),
        });
        let l = CreateLimits::of(&spec);
        assert_eq!(
            (l.per_second, l.burst, l.per_api_key_per_hour),
            (5.0, 8.0, 10)
        );
        spec.create_limit = Some(CreateLimit {
            per_second: Some(2.0),
            burst: None,
            per_api_key_per_hour: Some(3),
        });
        let l = CreateLimits::of(&spec);
        assert_eq!(
            (l.per_second, l.burst, l.per_api_key_per_hour),
            (2.0, 8.0, 3)
        );
        for bad in [f64::NAN, -1.0, 0.0, f64::INFINITY] {
            spec.rate_limit = None;
            spec.create_limit = Some(CreateLimit {
                per_second: Some(bad),
                burst: Some(-5),
                per_api_key_per_hour: Some(i32::MAX),
            });
            let l = CreateLimits::of(&spec);
            assert!(l.per_second.is_finite() && l.per_second > 0.0, "{bad}");
            assert!(l.burst >= 1.0);
            assert_eq!(l.per_api_key_per_hour, MAX_PER_API_KEY_PER_HOUR);
        }
        spec.create_limit = Some(CreateLimit {
            per_second: Some(1e-30),
            burst: Some(i32::MAX),
            per_api_key_per_hour: Some(0),
        });
        let l = CreateLimits::of(&spec);
        assert_eq!(
            (l.per_second, l.burst, l.per_api_key_per_hour),
            (MIN_PER_SECOND, MAX_BURST, 1)
        );
    }

    /// Creates granted to each namespace in `secs` seconds when every namespace asks every
    /// 10 ms (as fast as a busy controller requeues).
    fn run(
        share: &mut FairShare,
        l: &CreateLimits,
        namespaces: &[&str],
        start: Instant,
        secs: u64,
    ) -> Vec<usize> {
        let mut granted = vec![0; namespaces.len()];
        let steps = secs * 100;
        for step in 0..steps {
            let now = start + Duration::from_millis(step * 10);
            for (i, ns) in namespaces.iter().enumerate() {
                if share.take(ns, l, now).is_ok() {
                    granted[i] += 1;
                }
            }
        }
        granted
    }

    #[test]
    fn a_namespace_alone_gets_the_whole_rate() {
        let l = limits(10.0, 10.0);
        let mut share = FairShare::default();
        let granted = run(&mut share, &l, &["a"], Instant::now(), 10);
        // 10 per second for 10 s, plus the burst.
        assert!((100..=111).contains(&granted[0]), "{granted:?}");
    }

    #[test]
    fn a_noisy_namespace_gets_no_more_than_its_share_while_another_has_work() {
        let l = limits(10.0, 10.0);
        let start = Instant::now();
        let mut share = FairShare::default();
        // A alone drains its bucket first, then B arrives.
        let alone = run(&mut share, &l, &["a"], start, 5);
        assert!(alone[0] >= 50);
        let both = run(
            &mut share,
            &l,
            &["a", "b"],
            start + Duration::from_secs(5),
            20,
        );
        let (a, b) = (both[0], both[1]);
        eprintln!("fair share over 20 s at 10/s: a {a}, b {b}");
        // Each gets half the rate (100 in 20 s), give or take the burst.
        assert!((95..=110).contains(&a), "{both:?}");
        assert!((95..=110).contains(&b), "{both:?}");
        assert!(
            a + b <= 10 * 20 + 10 + 2,
            "the total stays within rate and burst: {both:?}"
        );
    }

    #[test]
    fn shares_follow_the_namespaces_that_have_work() {
        let l = limits(12.0, 12.0);
        let start = Instant::now();
        let mut share = FairShare::default();
        let three = run(&mut share, &l, &["a", "b", "c"], start, 10);
        for n in &three {
            assert!((38..=46).contains(n), "{three:?}");
        }
        // b and c stop asking: a few of their turns later, a gets the whole rate again.
        let later = start + Duration::from_secs(10) + ACTIVE_MIN;
        let alone = run(&mut share, &l, &["a"], later, 10);
        assert!((120..=133).contains(&alone[0]), "{alone:?}");
        assert_eq!(
            share.sharing(later + ACTIVE_MAX + Duration::from_secs(10)),
            0
        );
    }

    #[test]
    fn a_throttled_create_is_told_when_its_token_is_due() {
        let l = limits(2.0, 1.0);
        let now = Instant::now();
        let mut share = FairShare::default();
        assert!(share.take("a", &l, now).is_ok());
        assert!(share.take("b", &l, now).is_ok());
        let t = share.take("a", &l, now).unwrap_err();
        assert_eq!(t.sharing, 2);
        assert_eq!(t.share, 1.0);
        assert!(
            t.wait > Duration::from_millis(990) && t.wait <= Duration::from_secs(1),
            "{t:?}"
        );
        assert!(share.take("a", &l, now + t.wait).is_ok());
    }

    #[test]
    fn idle_provider_objects_are_dropped() {
        let shares = FairShares::default();
        let l = limits(1.0, 1.0);
        for i in 0..10 {
            shares.take(&format!("p{i}"), "a", &l).unwrap();
        }
        assert_eq!(shares.len(), 10);
        shares.forget("p0");
        assert_eq!(shares.len(), 9);
    }

    fn at(now: DateTime<Utc>, secs_ago: i64) -> String {
        crate::controller::time::ts(now - chrono::Duration::seconds(secs_ago))
    }

    #[test]
    fn the_budget_counts_creates_of_the_last_hour() {
        let now = Utc::now();
        let mut recent = Vec::new();
        assert_eq!(budget_spent_until(&recent, 3, now), None);
        for ago in [3000, 2000, 1000] {
            record_create(&mut recent, now - chrono::Duration::seconds(ago));
        }
        assert_eq!(recent.len(), 3);
        let until = budget_spent_until(&recent, 3, now).expect("3 in the hour: spent");
        // The oldest (50 min ago) leaves the window in 10 minutes.
        let left = (until - now).num_seconds();
        assert!((599..=600).contains(&left), "{left}");
        assert_eq!(budget_spent_until(&recent, 4, now), None);
        // An hour later the old creates have left the window.
        assert_eq!(
            budget_spent_until(&recent, 3, now + chrono::Duration::seconds(601)),
            None
        );
        // Recording prunes what left the window.
        record_create(&mut recent, now + chrono::Duration::seconds(2500));
        assert_eq!(recent.len(), 2, "{recent:?}");
    }

    #[test]
    fn a_malformed_or_future_entry_counts_as_now() {
        let now = Utc::now();
        let recent = vec!["garbage".to_string(), at(now, -86_400), at(now, 10)];
        let until = budget_spent_until(&recent, 3, now).expect("all three count");
        assert!(until > now + chrono::Duration::minutes(59));
    }

    #[test]
    fn the_record_is_bounded() {
        let now = Utc::now();
        let mut recent: Vec<String> = (0..1000).map(|i| at(now, i)).collect();
        record_create(&mut recent, now);
        assert_eq!(recent.len(), MAX_PER_API_KEY_PER_HOUR as usize);
        assert_eq!(recent.last().map(String::as_str), Some(at(now, 0).as_str()));
    }

    #[test]
    fn a_loop_of_requests_gets_the_budget_and_no_more() {
        // A rotate annotation changed every second for two hours: `per_hour` creates in any
        // hour, never more.
        let start = Utc::now();
        let mut recent = Vec::new();
        let mut sent = Vec::new();
        for s in 0..7200 {
            let now = start + chrono::Duration::seconds(s);
            if budget_spent_until(&recent, 10, now).is_none() {
                record_create(&mut recent, now);
                sent.push(s);
            }
        }
        assert_eq!(sent.len(), 20, "{sent:?}");
        for (i, s) in sent.iter().enumerate() {
            let in_hour = sent[i..].iter().take_while(|t| **t < s + 3600).count();
            assert!(in_hour <= 10);
        }
    }
}
