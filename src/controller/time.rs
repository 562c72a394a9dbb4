//! Moments as the status writes and reads them: RFC 3339, UTC. The one writer ([`ts`]) and the
//! one reader ([`parse`]) of every time a status, a marker or an annotation holds.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 with seconds, UTC (`2026-12-02T03:00:00Z`), as the status writes moments.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// RFC 3339 with milliseconds, UTC, where a second is too coarse (a restart's `restartedAt`).
pub fn ts_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, as [`ts`] writes it.
pub fn now() -> String {
    ts(Utc::now())
}

/// An RFC 3339 moment from the status (any offset, read as UTC); anything else is `None`, never
/// a panic. What a caller does with `None` is its own choice (due now, now, unknown).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_round_trips_and_garbage_is_none() {
        let t = parse("2026-06-01T14:00:00+02:00").unwrap();
        assert_eq!(ts(t), "2026-06-01T12:00:00Z");
        assert_eq!(
            ts_millis(parse("2026-06-01T12:00:00.250Z").unwrap()),
            "2026-06-01T12:00:00.250Z"
        );
        assert_eq!(parse(&now()).map(|t| t <= Utc::now()), Some(true));
        assert!(parse("garbage").is_none());
        assert!(parse("").is_none());
    }
}
