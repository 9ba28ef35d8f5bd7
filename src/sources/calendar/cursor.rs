//! The cursor file, `<state_dir>/calendar/<bridge>.json`: the last tick the exchange
//! confirmed and the schedule it belongs to; read on connect, advanced in order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schedule::{Schedule, tick_text};
use super::spec::{CalendarSpec, human};
use crate::message::SourceError;
use crate::sources::common::in_order::{InOrder, Ticket};
use crate::sources::common::state_file;

/// What decides the ticks, as the cursor file records it: a changed schedule starts
/// from now (see "A changed schedule" in the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Fingerprint {
    /// The cron expression, its fields separated by one space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval_seconds: Option<u64>,
    timezone: String,
    /// Sorted, without repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclusion_dates: Vec<String>,
}

impl Fingerprint {
    pub(super) fn of(spec: &CalendarSpec) -> Fingerprint {
        let mut exclusion_dates = spec.exclusion_dates.clone();
        exclusion_dates.sort();
        exclusion_dates.dedup();
        Fingerprint {
            schedule: spec
                .schedule
                .as_ref()
                .map(|cron| cron.split_whitespace().collect::<Vec<_>>().join(" ")),
            interval_seconds: spec.interval.map(|interval| interval.as_secs()),
            timezone: spec.timezone.clone(),
            exclusion_dates,
        }
    }

    /// The schedule recorded, to count the ticks it missed.
    pub(super) fn schedule(&self) -> Result<Schedule, String> {
        Schedule::new(&CalendarSpec {
            schedule: self.schedule.clone(),
            interval: self.interval_seconds.map(Duration::from_secs),
            timezone: self.timezone.clone(),
            exclusion_dates: self.exclusion_dates.clone(),
            catch_up: 0,
            data: None,
        })
    }

    /// `cron `0 * * * *` in UTC`, `every 1h`, with the exclusion dates.
    pub(super) fn describe(&self) -> String {
        let rule = match (&self.schedule, self.interval_seconds) {
            (Some(cron), _) => format!("cron `{cron}` in {}", self.timezone),
            (None, Some(secs)) => format!("every {}", human(Duration::from_secs(secs))),
            (None, None) => "no schedule".into(),
        };
        if self.exclusion_dates.is_empty() {
            rule
        } else {
            format!(
                "{rule}, excluding {} in {}",
                self.exclusion_dates.join(", "),
                self.timezone
            )
        }
    }
}

/// The cursor file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct CursorFile {
    /// The last tick the exchange confirmed (RFC 3339 UTC).
    last_tick: String,
    /// The `Fingerprint` of the schedule `last_tick` belongs to; absent in files written
    /// before it was recorded (taken as unchanged), kept as JSON so that one this
    /// version cannot read counts as changed rather than damaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<Value>,
}

/// A cursor file read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    pub(super) last_tick: DateTime<Utc>,
    pub(super) schedule: Option<Value>,
}

/// Whether the stored cursor belongs to the current schedule.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Resume {
    /// Same schedule (or a file of an earlier version): resume after the last tick.
    Unchanged,
    /// Another schedule; the previous one when it can be read.
    Changed(Option<Fingerprint>),
}

pub(super) fn resume(stored: &Stored, current: &Fingerprint) -> Resume {
    let Some(recorded) = &stored.schedule else {
        return Resume::Unchanged;
    };
    match serde_json::from_value::<Fingerprint>(recorded.clone()) {
        Ok(previous) if previous == *current => Resume::Unchanged,
        Ok(previous) => Resume::Changed(Some(previous)),
        Err(_) => Resume::Changed(None),
    }
}

pub(super) fn cursor_path(state_dir: &Path, bridge: &str) -> PathBuf {
    state_dir.join("calendar").join(format!("{bridge}.json"))
}

pub(super) fn io_error(what: &str, path: &Path, e: std::io::Error) -> SourceError {
    SourceError::Connect(format!("cursor: cannot {what} {}: {e}", path.display()))
}

/// The last confirmed tick and its schedule, or `None` without a cursor file.
pub(super) fn read_cursor(path: &Path) -> Result<Option<Stored>, SourceError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path, e)),
    };
    serde_json::from_slice::<CursorFile>(&bytes)
        .ok()
        .and_then(|file| {
            let time = DateTime::parse_from_rfc3339(&file.last_tick).ok()?;
            Some(Some(Stored {
                last_tick: time.with_timezone(&Utc),
                schedule: file.schedule,
            }))
        })
        .ok_or_else(|| {
            SourceError::Connect(format!(
                "cursor: {} is damaged (delete it to start at the current time)",
                path.display()
            ))
        })
}

/// Writes the cursor atomically (`state_file`).
pub(super) fn write_cursor(
    path: &Path,
    tick: DateTime<Utc>,
    schedule: &Fingerprint,
) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Written<'a> {
        last_tick: String,
        schedule: &'a Fingerprint,
    }
    let contents = serde_json::to_vec(&Written {
        last_tick: tick_text(tick),
        schedule,
    })
    .expect("serializable");
    state_file::write_atomically(path, &contents)
}

/// Ticks handed to the bridge and not yet confirmed, and the cursor they advance.
pub(super) struct Progress {
    pub(super) path: PathBuf,
    pub(super) order: InOrder<DateTime<Utc>>,
    /// The tick last written to the cursor file.
    pub(super) persisted: DateTime<Utc>,
    /// The schedule the ticks belong to, written with each.
    pub(super) schedule: Fingerprint,
}

impl Progress {
    pub(super) fn confirm(&mut self, ticket: Ticket) -> std::io::Result<()> {
        let released = self.order.confirm(ticket);
        if let Some(&last) = released.last()
            && last > self.persisted
        {
            write_cursor(&self.path, last, &self.schedule)?;
            self.persisted = last;
        }
        Ok(())
    }
}
