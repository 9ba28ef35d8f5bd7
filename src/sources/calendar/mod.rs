//! `kind = "calendar"`: an event on every tick of a schedule, a cron expression
//! (`schedule`) or a fixed `interval`, with a persisted last tick so that ticks missed
//! while broker-bridge was down (or the exchange was) can be caught up.
//!
//! # Ticks
//!
//! - `schedule` is a cron expression with 5 fields (minute hour day-of-month month
//!   day-of-week) or 6 with seconds first (a 7th, the year, is allowed too), evaluated
//!   on the wall clock of `timezone` (an IANA name, default `UTC`). When both day fields
//!   are restricted, either may match, as in Vixie cron.
//! - `interval` (`"15m"`, whole seconds, at least 1s) ticks at the multiples of the
//!   interval since the Unix epoch, in UTC: `"1h"` ticks on every full UTC hour, so
//!   replicas agree whatever their start time. `timezone` then only decides the dates
//!   of `exclusion_dates`. For local-time schedules, use cron.
//! - `exclusion_dates` (`YYYY-MM-DD`, dates in `timezone`): a tick whose local date is
//!   listed does not happen at all; it is neither emitted nor counted as missed.
//!
//! # Daylight saving time
//!
//! Cron is evaluated on the local wall clock, with the rules of the Open Cron Pattern
//! Specification (as croner implements them):
//!
//! - A schedule at a *fixed time of day* (one value each in the second, minute and hour
//!   fields, e.g. `30 2 * * *`) fires once a day. When that time does not exist (spring
//!   forward), it fires at the first instant after the gap: in Europe/Berlin on
//!   2026-03-29, `30 2 * * *` fires at 03:00 CEST (01:00 UTC). When it exists twice (fall
//!   back), it fires at the first of them: on 2026-10-25, 02:30 CEST (00:30 UTC) only.
//! - Any other schedule (`*`, ranges, lists or steps in the second, minute or hour
//!   field, e.g. `0 * * * *`) fires at every instant whose wall clock time matches: a
//!   time in the gap does not happen, a repeated time happens twice. An hourly schedule
//!   therefore ticks exactly one hour apart in UTC across both changes.
//!
//! `interval` ticks are UTC instants and never see a change.
//!
//! # Event
//!
//! Id `<bridge>@<scheduled time>`, the time in RFC 3339, UTC, whole seconds, with `Z`
//! (`hourly@2026-11-22T10:00:00Z`): the same for every replica and every restart, so
//! consumers deduplicate on (`source`, `id`). `time` is the scheduled time (not when it
//! was emitted), `source` is `urn:broker-bridge:calendar:<bridge>`, `type`
//! `broker-bridge.calendar.tick` unless the bridge sets `type`, no `subject`. `data`
//! (any TOML value) is sent as JSON (`application/json`); without it the event has no
//! `data` and no `datacontenttype` at all.
//!
//! # The last tick and missed ticks
//!
//! The cursor, `<state_dir>/calendar/<bridge>.json`, holds the last tick confirmed by the
//! exchange (RFC 3339 UTC). It advances only after the publisher confirm: while ticks are
//! caught up several are in flight, and the cursor is the end of the contiguous
//! confirmed prefix (`in_order`). It is written atomically (`state_file`). A first
//! start without a cursor file writes "now": nothing from the past is emitted.
//!
//! One rule covers restarts and exchange outages: when the bridge asks for the next tick
//! (it does only while the exchange is connected and it has an in-flight permit), a tick
//! scheduled more than 1s before now is *missed*. Of the missed ticks after the cursor,
//! the newest `catch_up` (default 0) are emitted at once, oldest first, each with its own
//! scheduled time and id; older ones are skipped, and their number and range are logged
//! (info). A tick overdue by 1s or less is on time and emitted; a future tick is waited
//! for. A scheduled time is never emitted twice by one process; after a restart (or a
//! reload whose drain timed out), a tick whose confirm was not persisted may come again,
//! with the same id (at-least-once).
//!
//! # A changed schedule
//!
//! The cursor file also records the schedule its last tick belongs to: `schedule` or
//! `interval`, `timezone` and `exclusion_dates` (not `catch_up` or `data`). When a bridge
//! starts (reload or restart) with another schedule, the new schedule starts from now:
//! none of its ticks before now is emitted, whatever `catch_up` says, as they were never
//! scheduled. Ticks of the previous schedule still missed at that moment (the daemon was
//! down, or the exchange was) are skipped too; both are logged (warn), the skipped ticks
//! with their number and range. An unchanged schedule resumes and catches up as above. A
//! cursor file without the schedule (written by an earlier version) counts as unchanged.

mod cursor;
mod schedule;
mod source;
mod spec;
mod ticker;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source};
use super::common::kind::SourceKind;
use crate::config::fields;
use crate::message::SourceError;
use schedule::Schedule;
use spec::human;

pub use spec::CalendarSpec;

/// `kind = "calendar"`: ticks on a schedule.
pub struct Calendar;

#[async_trait]
impl SourceKind for Calendar {
    const NAME: &'static str = "calendar";
    type Spec = CalendarSpec;

    fn parse(table: Map<String, Value>) -> Result<CalendarSpec, String> {
        fields::reject_unknown(&table, fields::names::<CalendarSpec>(), "kind `calendar`")?;
        let spec: CalendarSpec = fields::parse(Value::Object(table))?;
        let schedule = Schedule::new(&spec)?;
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!(
                "key `schedule`: `{}` never fires (from now on{})",
                spec.schedule.as_deref().unwrap_or_default(),
                if spec.exclusion_dates.is_empty() {
                    ""
                } else {
                    ", with the exclusion dates"
                }
            ));
        }
        Ok(spec)
    }

    fn accepted_keys() -> Vec<&'static str> {
        fields::names::<CalendarSpec>().to_vec()
    }

    fn describe(spec: &CalendarSpec) -> String {
        let rule = match (&spec.schedule, &spec.interval) {
            (Some(cron), _) => format!("cron `{cron}` in {}", spec.timezone),
            (None, Some(interval)) => format!(
                "every {} (multiples since the Unix epoch, UTC)",
                human(*interval)
            ),
            (None, None) => "no schedule".into(),
        };
        let mut extras = Vec::new();
        if !spec.exclusion_dates.is_empty() {
            extras.push(format!(
                "{} exclusion date(s) in {}",
                spec.exclusion_dates.len(),
                spec.timezone
            ));
        }
        extras.push(format!("catch_up {}", spec.catch_up));
        format!(
            "{rule}, {}; at-least-once: the last tick advances after the exchange confirmed",
            extras.join(", ")
        )
    }

    async fn connect(
        spec: &CalendarSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        source::connect(spec, context).await
    }
}

#[cfg(test)]
mod tests;
