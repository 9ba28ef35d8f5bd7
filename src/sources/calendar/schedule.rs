//! Which instants are ticks: a cron expression on the wall clock of a time zone, or the
//! multiples of a fixed interval since the Unix epoch; less the excluded local dates.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::spec::CalendarSpec;

/// The RFC 3339 text of a scheduled time, as in the event id: UTC, whole seconds, `Z`.
pub(super) fn tick_text(tick: DateTime<Utc>) -> String {
    tick.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Debug, Clone)]
enum Rule {
    Cron(Box<Cron>),
    /// Seconds; ticks at the multiples since the Unix epoch.
    Every(i64),
}

/// The evaluator: which instants are ticks. Pure: no clock, no I/O.
#[derive(Debug, Clone)]
pub(super) struct Schedule {
    rule: Rule,
    zone: Tz,
    excluded: BTreeSet<NaiveDate>,
}

impl Schedule {
    /// Validates and prepares a spec's schedule; errors name the key.
    pub(super) fn new(spec: &CalendarSpec) -> Result<Schedule, String> {
        let zone = Tz::from_str(&spec.timezone).map_err(|_| {
            format!(
                "key `timezone`: `{}` is not an IANA time zone name (e.g. \"Europe/Berlin\", \"UTC\")",
                spec.timezone
            )
        })?;
        let rule = match (&spec.schedule, spec.interval) {
            (Some(_), Some(_)) => {
                return Err(
                    "keys `schedule`/`interval`: set one of them, not both (cron or a fixed interval)"
                        .into(),
                );
            }
            (None, None) => {
                return Err(
                    "keys `schedule`/`interval`: set one of them (a cron expression, or a duration such as \"15m\")"
                        .into(),
                );
            }
            (Some(text), None) => {
                Rule::Cron(Box::new(Cron::from_str(text).map_err(|e| {
                    format!("key `schedule`: `{text}` is not a cron expression: {e}")
                })?))
            }
            (None, Some(interval)) => {
                if interval < Duration::from_secs(1) {
                    return Err("key `interval`: must be at least 1s".into());
                }
                if interval.subsec_nanos() != 0 {
                    return Err("key `interval`: must be a whole number of seconds".into());
                }
                let secs = i64::try_from(interval.as_secs())
                    .map_err(|_| "key `interval`: too long".to_owned())?;
                Rule::Every(secs)
            }
        };
        let mut excluded = BTreeSet::new();
        for text in &spec.exclusion_dates {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .filter(|date| date.format("%Y-%m-%d").to_string() == *text)
                .ok_or_else(|| {
                    format!("key `exclusion_dates`: `{text}` is not a date (YYYY-MM-DD)")
                })?;
            excluded.insert(date);
        }
        Ok(Schedule {
            rule,
            zone,
            excluded,
        })
    }

    /// The first tick strictly after `after`, skipping excluded dates; `None` when the
    /// schedule has no more ticks.
    pub(super) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut tick = self.first_after(after)?;
        loop {
            let date = tick.with_timezone(&self.zone).date_naive();
            if !self.excluded.contains(&date) {
                return Some(tick);
            }
            // `max`: progress even should a time change fold the day's end back.
            tick = self.first_after(self.last_second_of(date)?.max(tick))?;
        }
    }

    /// The first tick strictly after `after`, exclusions aside.
    fn first_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.rule {
            Rule::Every(secs) => {
                let k = after.timestamp().div_euclid(*secs).checked_add(1)?;
                DateTime::from_timestamp(k.checked_mul(*secs)?, 0)
            }
            Rule::Cron(cron) => cron
                .find_next_occurrence(&after.with_timezone(&self.zone), false)
                .ok()
                .map(|tick| tick.with_timezone(&Utc)),
        }
    }

    /// The last whole second of the local `date`: one second before the next day starts
    /// (at midnight, or where a time change skips midnight, at the first local time that
    /// exists).
    fn last_second_of(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let mut start = date.succ_opt()?.and_time(NaiveTime::MIN);
        for _ in 0..(4 * 24) {
            if let Some(instant) = self.zone.from_local_datetime(&start).earliest() {
                return Some(instant.with_timezone(&Utc) - TimeDelta::seconds(1));
            }
            start += TimeDelta::minutes(15);
        }
        None
    }
}
