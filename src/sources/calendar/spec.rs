//! The keys of `kind = "calendar"`, as config holds them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::duration;

/// `kind = "calendar"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    /// Cron expression, evaluated in `timezone`: 5 fields (minute hour day-of-month
    /// month day-of-week) or 6 with seconds first (a 7th, the year, is allowed).
    /// Exactly one of `schedule` and `interval`.
    pub schedule: Option<String>,
    /// A fixed interval (whole seconds, at least 1s): ticks at the multiples of it since
    /// the Unix epoch, in UTC (`"1h"`: every full UTC hour).
    #[serde(default, with = "duration::option")]
    pub interval: Option<Duration>,
    /// IANA time zone name (`Europe/Berlin`) for `schedule` and `exclusion_dates`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Dates (`YYYY-MM-DD`, in `timezone`) on which no tick fires.
    #[serde(default)]
    pub exclusion_dates: Vec<String>,
    /// How many of the newest missed ticks (daemon or exchange down) to emit late, each
    /// with its own time; older missed ticks are skipped. 0: none.
    #[serde(default)]
    pub catch_up: u32,
    /// The event data, any TOML value, sent as JSON; without it, events carry no data.
    pub data: Option<Value>,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// `1h`, `15m`, `90s`.
pub(super) fn human(interval: Duration) -> String {
    let secs = interval.as_secs();
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        duration::format(&interval)
    }
}
