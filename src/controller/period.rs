//! UTC calendar periods: the one reading of "this day, week, month" for spend limits
//! (`limits.rs`), budgets (`budget/`) and usage alerts (`apikey/alerts.rs`). Days start at
//! midnight, weeks on Monday midnight (ISO weeks; OpenRouter: "resets at midnight UTC; weeks
//! Mon–Sun", and its `usage_daily`/`usage_weekly`/`usage_monthly` reset on these boundaries),
//! months on the 1st. Pure: the caller passes `now`; no input panics.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveTime, TimeZone, Utc};

use crate::api::{BudgetPeriod, LimitReset};

/// A calendar period (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
}

impl From<BudgetPeriod> for Period {
    fn from(p: BudgetPeriod) -> Period {
        match p {
            BudgetPeriod::Daily => Period::Daily,
            BudgetPeriod::Weekly => Period::Weekly,
            BudgetPeriod::Monthly => Period::Monthly,
        }
    }
}

impl Period {
    /// The period a spend limit resets in; `None` for `never` (or no reset given).
    pub fn of_reset(reset: Option<LimitReset>) -> Option<Period> {
        match reset? {
            LimitReset::Daily => Some(Period::Daily),
            LimitReset::Weekly => Some(Period::Weekly),
            LimitReset::Monthly => Some(Period::Monthly),
            LimitReset::Never => None,
        }
    }

    /// The period `[start, end)` that contains `now`. Past the end of chrono's calendar the end
    /// is its last moment, never a panic.
    pub fn bounds(self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let day = now.date_naive();
        let start = match self {
            Period::Daily => day,
            Period::Weekly => day
                .checked_sub_days(Days::new(day.weekday().num_days_from_monday().into()))
                .unwrap_or(day),
            Period::Monthly => day.with_day(1).unwrap_or(day),
        };
        let end = match self {
            Period::Daily => start.succ_opt(),
            Period::Weekly => start.checked_add_days(Days::new(7)),
            Period::Monthly => start.checked_add_months(Months::new(1)),
        };
        (
            midnight(start),
            end.map_or(DateTime::<Utc>::MAX_UTC, midnight),
        )
    }

    /// When the period that contains `now` ends (the next one starts).
    pub fn end(self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.bounds(now).1
    }

    /// The name of the period that contains `now`, as `status.alerts.usagePeriod` records it:
    /// `daily:2026-12-06`, `weekly:2026-W49` (the ISO week and its year), `monthly:2026-12`.
    pub fn label(self, now: DateTime<Utc>) -> String {
        match self {
            Period::Daily => format!("daily:{}", now.format("%Y-%m-%d")),
            Period::Weekly => {
                let w = now.iso_week();
                format!("weekly:{}-W{:02}", w.year(), w.week())
            }
            Period::Monthly => format!("monthly:{}", now.format("%Y-%m")),
        }
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// From limits.rs: when a limit's period ends.
    #[test]
    fn calendar_periods_end_at_utc_boundaries() {
        let end = |r: Option<LimitReset>, now| Period::of_reset(r).map(|p| p.end(now));
        let now = t("2026-12-06T04:30:00Z"); // a Sunday
        assert_eq!(
            end(Some(LimitReset::Daily), now),
            Some(t("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            end(Some(LimitReset::Weekly), now),
            Some(t("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            end(Some(LimitReset::Weekly), t("2026-12-07T00:00:00Z")),
            Some(t("2026-12-14T00:00:00Z"))
        );
        assert_eq!(
            end(Some(LimitReset::Monthly), now),
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(end(Some(LimitReset::Never), now), None);
        assert_eq!(end(None, now), None);
    }

    /// From budget/tally.rs: a budget's period `[start, end)`.
    #[test]
    fn periods_follow_utc_calendar_boundaries() {
        // A Wednesday, late in the day.
        let now = at(2026, 12, 30, 23, 59, 59);
        let (s, e) = Period::from(BudgetPeriod::Daily).bounds(now);
        assert_eq!(s, at(2026, 12, 30, 0, 0, 0));
        assert_eq!(e, at(2026, 12, 31, 0, 0, 0));
        let (s, e) = Period::from(BudgetPeriod::Weekly).bounds(now);
        assert_eq!(s, at(2026, 12, 28, 0, 0, 0), "Monday");
        assert_eq!(e, at(2027, 1, 4, 0, 0, 0));
        let (s, e) = Period::from(BudgetPeriod::Monthly).bounds(now);
        assert_eq!(s, at(2026, 12, 1, 0, 0, 0));
        assert_eq!(e, at(2027, 1, 1, 0, 0, 0), "December rolls over");
        // A Monday at midnight starts its own week.
        let monday = at(2026, 12, 28, 0, 0, 0);
        assert_eq!(Period::Weekly.bounds(monday).0, monday);
    }

    /// From apikey/alerts.rs: the period names of `status.alerts.usagePeriod`.
    #[test]
    fn periods_follow_the_limit_reset() {
        let label = |r: LimitReset, now| {
            Period::of_reset(Some(r)).map_or_else(|| "never".to_string(), |p| p.label(now))
        };
        let now = at(2026, 12, 6, 5, 0, 0);
        assert_eq!(label(LimitReset::Daily, now), "daily:2026-12-06");
        assert_eq!(label(LimitReset::Weekly, now), "weekly:2026-W49");
        assert_eq!(label(LimitReset::Monthly, now), "monthly:2026-12");
        assert_eq!(label(LimitReset::Never, now), "never");
    }

    #[test]
    fn month_ends_of_every_length() {
        // 31, 30 and 28 days: the last second of the month is still in it, midnight is not.
        for (last, next) in [
            (at(2027, 1, 31, 23, 59, 59), at(2027, 2, 1, 0, 0, 0)),
            (at(2027, 4, 30, 23, 59, 59), at(2027, 5, 1, 0, 0, 0)),
            (at(2027, 2, 28, 23, 59, 59), at(2027, 3, 1, 0, 0, 0)),
        ] {
            let (s, e) = Period::Monthly.bounds(last);
            assert_eq!(e, next, "{last}");
            assert_eq!(s.day(), 1);
            assert_eq!(s.month(), last.month());
            assert_eq!(Period::Daily.end(last), next);
            assert_eq!(
                Period::Monthly.bounds(next).0,
                next,
                "{next} starts its month"
            );
            assert_ne!(Period::Monthly.label(last), Period::Monthly.label(next));
        }
        assert_eq!(
            Period::Monthly.label(at(2027, 1, 31, 23, 59, 59)),
            "monthly:2027-01"
        );
    }

    #[test]
    fn a_leap_day_is_in_february() {
        let leap = at(2028, 2, 29, 12, 0, 0);
        assert_eq!(
            Period::Daily.bounds(leap),
            (at(2028, 2, 29, 0, 0, 0), at(2028, 3, 1, 0, 0, 0))
        );
        assert_eq!(
            Period::Monthly.bounds(leap),
            (at(2028, 2, 1, 0, 0, 0), at(2028, 3, 1, 0, 0, 0))
        );
        assert_eq!(Period::Monthly.label(leap), "monthly:2028-02");
        assert_eq!(Period::Daily.label(leap), "daily:2028-02-29");
        // 2028-02-28 is a Monday: the leap day is in its week, which ends on 6 March.
        assert_eq!(
            Period::Weekly.bounds(leap),
            (at(2028, 2, 28, 0, 0, 0), at(2028, 3, 6, 0, 0, 0))
        );
        // A leap year's February 28th is not its month's last day.
        assert_eq!(
            Period::Monthly.end(at(2028, 2, 28, 23, 59, 59)),
            at(2028, 3, 1, 0, 0, 0)
        );
        assert_eq!(
            Period::Daily.end(at(2028, 2, 28, 23, 59, 59)),
            leap - chrono::Duration::hours(12)
        );
    }

    #[test]
    fn weeks_turn_on_monday_midnight_across_the_year() {
        // 2026 has 53 ISO weeks: Thursday 31 December to Sunday 3 January are week 53 of 2026.
        let sunday = at(2027, 1, 3, 23, 59, 59);
        let monday = at(2027, 1, 4, 0, 0, 0);
        assert_eq!(
            Period::Weekly.label(at(2026, 12, 31, 8, 0, 0)),
            "weekly:2026-W53"
        );
        assert_eq!(Period::Weekly.label(sunday), "weekly:2026-W53");
        assert_eq!(Period::Weekly.label(monday), "weekly:2027-W01");
        assert_eq!(
            Period::Weekly.bounds(sunday),
            (at(2026, 12, 28, 0, 0, 0), monday)
        );
        assert_eq!(Period::Weekly.bounds(monday).0, monday);
        assert_eq!(Period::Weekly.end(monday), at(2027, 1, 11, 0, 0, 0));
        // The label and the bounds agree: one label per [start, end).
        let (s, e) = Period::Weekly.bounds(sunday);
        assert_eq!(Period::Weekly.label(s), Period::Weekly.label(sunday));
        assert_ne!(Period::Weekly.label(e), Period::Weekly.label(sunday));
    }

    #[test]
    fn the_end_of_the_calendar_is_not_a_panic() {
        let last = DateTime::<Utc>::MAX_UTC;
        for p in [Period::Daily, Period::Weekly, Period::Monthly] {
            let (s, e) = p.bounds(last);
            assert!(s <= last && e == last, "{p:?}: {s} {e}");
            let _ = p.label(last);
        }
        let first = DateTime::<Utc>::MIN_UTC;
        for p in [Period::Daily, Period::Weekly, Period::Monthly] {
            let (s, e) = p.bounds(first);
            assert!(s <= first && first < e, "{p:?}: {s} {e}");
        }
    }
}
