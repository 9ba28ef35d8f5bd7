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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::in_order::{InOrder, Ticket};
use super::common::context::{ConnectContext, Source, SourceMetrics};
use crate::config::{duration, fields};
use crate::message::{Acker, Incoming, Metadata, SourceError};

/// The CloudEvent type of a tick when the bridge sets no `type`.
pub const TICK_TYPE: &str = "broker-bridge.calendar.tick";

/// A tick overdue by this much or less is on time; more is missed.
const GRACE: TimeDelta = TimeDelta::seconds(1);

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

impl CalendarSpec {
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
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

    pub fn describe(&self) -> String {
        let rule = match (&self.schedule, &self.interval) {
            (Some(cron), _) => format!("cron `{cron}` in {}", self.timezone),
            (None, Some(interval)) => format!(
                "every {} (multiples since the Unix epoch, UTC)",
                human(*interval)
            ),
            (None, None) => "no schedule".into(),
        };
        let mut extras = Vec::new();
        if !self.exclusion_dates.is_empty() {
            extras.push(format!(
                "{} exclusion date(s) in {}",
                self.exclusion_dates.len(),
                self.timezone
            ));
        }
        extras.push(format!("catch_up {}", self.catch_up));
        format!(
            "{rule}, {}; at-least-once: the last tick advances after the exchange confirmed",
            extras.join(", ")
        )
    }
}

/// `1h`, `15m`, `90s`.
fn human(interval: Duration) -> String {
    let secs = interval.as_secs();
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        duration::format(&interval)
    }
}

fn accepted_keys() -> Vec<&'static str> {
    fields::names::<CalendarSpec>().to_vec()
}

/// `kind = "calendar"`: ticks on a schedule.
pub struct Calendar;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Calendar {
    const NAME: &'static str = "calendar";
    type Spec = CalendarSpec;

    fn parse(table: Map<String, Value>) -> Result<CalendarSpec, String> {
        CalendarSpec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &CalendarSpec) -> String {
        spec.describe()
    }

    async fn connect(
        spec: &CalendarSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect(spec, context).await
    }
}

/// The RFC 3339 text of a scheduled time, as in the event id: UTC, whole seconds, `Z`.
pub fn tick_text(tick: DateTime<Utc>) -> String {
    tick.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The event id of a tick: `<bridge>@<scheduled time>`.
pub fn tick_id(bridge: &str, tick: DateTime<Utc>) -> String {
    format!("{bridge}@{}", tick_text(tick))
}

#[derive(Debug, Clone)]
enum Rule {
    Cron(Box<Cron>),
    /// Seconds; ticks at the multiples since the Unix epoch.
    Every(i64),
}

/// The evaluator: which instants are ticks. Pure: no clock, no I/O.
#[derive(Debug, Clone)]
pub struct Schedule {
    rule: Rule,
    zone: Tz,
    excluded: BTreeSet<NaiveDate>,
}

impl Schedule {
    /// Validates and prepares a spec's schedule; errors name the key.
    pub fn new(spec: &CalendarSpec) -> Result<Schedule, String> {
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
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
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

/// What comes next, as the ticker decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Emit this tick now; it is taken.
    Now(DateTime<Utc>),
    /// The next tick is in the future: wait for it, then `take` it.
    At(DateTime<Utc>),
    /// Ticks from `first` to before `limit` were missed: `plan` them (that may take a
    /// while for a long gap), `apply` the plan, and ask again.
    Missed {
        first: DateTime<Utc>,
        limit: DateTime<Utc>,
    },
    /// The schedule has no more ticks.
    Never,
}

/// A run of consecutive ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    count: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

/// What becomes of a run of missed ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// The older ones, beyond `catch_up`: skipped.
    skipped: Option<Span>,
    /// The newest `catch_up`: emitted late, oldest first.
    kept: Option<Span>,
}

/// Splits the missed ticks from `first` (a tick) to before `limit` into the skipped and
/// the kept (the newest `catch_up`). Walks every missed tick, twice at most.
fn plan(schedule: &Schedule, first: DateTime<Utc>, limit: DateTime<Utc>, catch_up: u64) -> Plan {
    let missed_after = |tick: DateTime<Utc>| schedule.next_after(tick).filter(|t| *t < limit);
    let mut count = 1u64;
    let mut last = first;
    while let Some(later) = missed_after(last) {
        count += 1;
        last = later;
    }
    let keep = count.min(catch_up);
    let skip = count - keep;
    let skipped = (skip > 0).then(|| {
        let mut last_skipped = first;
        for _ in 1..skip {
            last_skipped = missed_after(last_skipped).expect("counted above");
        }
        Span {
            count: skip,
            first,
            last: last_skipped,
        }
    });
    let kept = (keep > 0).then(|| Span {
        count: keep,
        first: match skipped {
            Some(skipped) => missed_after(skipped.last).expect("counted above"),
            None => first,
        },
        last,
    });
    Plan { skipped, kept }
}

/// Decides the next tick from the schedule, the last tick handed out and the time: the
/// missed-tick rule, as a pure state machine (the caller brings the clock).
#[derive(Debug, Clone)]
struct Ticker {
    schedule: Schedule,
    catch_up: u64,
    /// The last tick handed out, or the cursor this connection started from.
    position: DateTime<Utc>,
    /// While catching up: the newest missed tick to emit, and how many are left.
    catching_up: Option<(DateTime<Utc>, u64)>,
}

impl Ticker {
    fn new(schedule: Schedule, catch_up: u64, cursor: DateTime<Utc>) -> Ticker {
        Ticker {
            schedule,
            catch_up,
            position: cursor,
            catching_up: None,
        }
    }

    fn next(&mut self, now: DateTime<Utc>) -> Next {
        let Some(tick) = self.schedule.next_after(self.position) else {
            self.catching_up = None;
            return Next::Never;
        };
        if let Some((until, left)) = self.catching_up {
            if tick <= until {
                self.catching_up = (left > 1).then_some((until, left - 1));
                self.position = tick;
                return Next::Now(tick);
            }
            self.catching_up = None;
        }
        let limit = now - GRACE;
        if tick < limit {
            Next::Missed { first: tick, limit }
        } else if tick <= now {
            self.position = tick;
            Next::Now(tick)
        } else {
            Next::At(tick)
        }
    }

    /// Skips and queues the missed ticks of a `plan` made for the last `Next::Missed`.
    fn apply(&mut self, plan: &Plan) {
        if let Some(skipped) = plan.skipped {
            self.position = skipped.last;
        }
        if let Some(kept) = plan.kept {
            self.catching_up = Some((kept.last, kept.count));
        }
    }

    /// Takes the tick `Next::At` announced, once its time has come.
    fn take(&mut self, tick: DateTime<Utc>) {
        self.position = tick;
    }

    /// Missed ticks still to emit.
    fn waiting(&self) -> u64 {
        self.catching_up.map_or(0, |(_, left)| left)
    }
}

/// What decides the ticks, as the cursor file records it: a changed schedule starts
/// from now (see "A changed schedule").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
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
    fn of(spec: &CalendarSpec) -> Fingerprint {
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
    fn schedule(&self) -> Result<Schedule, String> {
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
    fn describe(&self) -> String {
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
struct Stored {
    last_tick: DateTime<Utc>,
    schedule: Option<Value>,
}

/// Whether the stored cursor belongs to the current schedule.
#[derive(Debug, Clone, PartialEq)]
enum Resume {
    /// Same schedule (or a file of an earlier version): resume after the last tick.
    Unchanged,
    /// Another schedule; the previous one when it can be read.
    Changed(Option<Fingerprint>),
}

fn resume(stored: &Stored, current: &Fingerprint) -> Resume {
    let Some(recorded) = &stored.schedule else {
        return Resume::Unchanged;
    };
    match serde_json::from_value::<Fingerprint>(recorded.clone()) {
        Ok(previous) if previous == *current => Resume::Unchanged,
        Ok(previous) => Resume::Changed(Some(previous)),
        Err(_) => Resume::Changed(None),
    }
}

fn cursor_path(state_dir: &Path, bridge: &str) -> PathBuf {
    state_dir.join("calendar").join(format!("{bridge}.json"))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SourceError {
    SourceError::Connect(format!("cursor: cannot {what} {}: {e}", path.display()))
}

/// The last confirmed tick and its schedule, or `None` without a cursor file.
fn read_cursor(path: &Path) -> Result<Option<Stored>, SourceError> {
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
fn write_cursor(path: &Path, tick: DateTime<Utc>, schedule: &Fingerprint) -> std::io::Result<()> {
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
    super::common::state_file::write_atomically(path, &contents)
}

/// Ticks handed to the bridge and not yet confirmed, and the cursor they advance.
struct Progress {
    path: PathBuf,
    order: InOrder<DateTime<Utc>>,
    /// The tick last written to the cursor file.
    persisted: DateTime<Utc>,
    /// The schedule the ticks belong to, written with each.
    schedule: Fingerprint,
}

impl Progress {
    fn confirm(&mut self, ticket: Ticket) -> std::io::Result<()> {
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

struct CalendarAck {
    progress: Arc<Mutex<Progress>>,
    ticket: Ticket,
}

#[async_trait]
impl Acker for CalendarAck {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        self.progress
            .lock()
            .expect("progress lock")
            .confirm(self.ticket)
            .map_err(|e| SourceError::Ack(format!("cannot write the cursor: {e}")))
    }
}

struct CalendarSource {
    bridge: String,
    source_uri: String,
    ticker: Ticker,
    data: Option<Bytes>,
    progress: Arc<Mutex<Progress>>,
    lag: SourceMetrics,
}

impl CalendarSource {
    fn incoming(&self, tick: DateTime<Utc>) -> Incoming {
        let ticket = self
            .progress
            .lock()
            .expect("progress lock")
            .order
            .push(tick);
        let meta = Metadata {
            subject: None,
            headers: Vec::new(),
            content_type: self.data.as_ref().map(|_| "application/json".to_owned()),
            time: Some(tick),
            id: Some(tick_id(&self.bridge, tick)),
            source_uri: self.source_uri.clone(),
            extensions: Vec::new(),
            received: Utc::now(),
            default_type: Some(TICK_TYPE.into()),
            no_data: self.data.is_none(),
        };
        Incoming {
            payload: self.data.clone().unwrap_or_default(),
            meta,
            ack: Box::new(CalendarAck {
                progress: self.progress.clone(),
                ticket,
            }),
        }
    }
}

/// Sleeps until the wall clock reaches `tick`, rechecking at least every minute so a
/// clock step or a suspended machine is noticed.
async fn sleep_until(tick: DateTime<Utc>) {
    loop {
        let left = tick - Utc::now();
        let Ok(left) = left.to_std() else { return };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
    }
}

#[async_trait]
impl Source for CalendarSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        loop {
            let next = self.ticker.next(Utc::now());
            self.lag.set_lag(self.ticker.waiting());
            match next {
                Next::Now(tick) => return Ok(self.incoming(tick)),
                Next::At(tick) => {
                    sleep_until(tick).await;
                    self.ticker.take(tick);
                    return Ok(self.incoming(tick));
                }
                Next::Missed { first, limit } => {
                    // A long gap of a frequent schedule takes a while to walk: off the
                    // runtime's threads. Cancelled, nothing has changed.
                    let schedule = self.ticker.schedule.clone();
                    let catch_up = self.ticker.catch_up;
                    let plan = tokio::task::spawn_blocking(move || {
                        plan(&schedule, first, limit, catch_up)
                    })
                    .await
                    .map_err(|e| SourceError::Subscription(format!("missed ticks: {e}")))?;
                    if let Some(skipped) = plan.skipped {
                        tracing::info!(
                            count = skipped.count,
                            first = %tick_text(skipped.first),
                            last = %tick_text(skipped.last),
                            catch_up,
                            "missed ticks skipped (more than catch_up)"
                        );
                    }
                    if let Some(kept) = plan.kept {
                        tracing::info!(
                            count = kept.count,
                            first = %tick_text(kept.first),
                            last = %tick_text(kept.last),
                            "emitting missed ticks late (catch_up)"
                        );
                    }
                    self.ticker.apply(&plan);
                }
                Next::Never => {
                    tracing::warn!("the schedule has no more ticks");
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Logs a schedule change: the new schedule starts from `now`, and the ticks of the
/// previous one after `last_tick` up to `now` are skipped.
async fn report_schedule_change(
    previous: Option<Fingerprint>,
    current: &Fingerprint,
    last_tick: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    tracing::warn!(
        "schedule changed ({} -> {}): last confirmed tick {} under the previous schedule; \
         the new schedule starts from now ({}), none of its earlier ticks are emitted",
        previous
            .as_ref()
            .map_or_else(|| "unreadable".to_owned(), Fingerprint::describe),
        current.describe(),
        tick_text(last_tick),
        tick_text(now),
    );
    let Some(old) = previous.and_then(|p| p.schedule().ok()) else {
        return;
    };
    // Due ticks: up to `now` itself (ticks are whole seconds).
    let limit = now + TimeDelta::seconds(1);
    let Some(first) = old.next_after(last_tick).filter(|t| *t < limit) else {
        return;
    };
    // A long gap of a frequent schedule takes a while to walk: off the runtime's threads.
    let skipped = tokio::task::spawn_blocking(move || plan(&old, first, limit, 0).skipped)
        .await
        .ok()
        .flatten();
    if let Some(skipped) = skipped {
        tracing::warn!(
            "{} tick(s) of the previous schedule from {} to {} were missed and are skipped (the schedule changed)",
            skipped.count,
            tick_text(skipped.first),
            tick_text(skipped.last),
        );
    }
}

/// Reads (or, on a first start, writes) the cursor and starts ticking after it.
pub(super) async fn connect(
    spec: &CalendarSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let schedule = Schedule::new(spec).map_err(SourceError::Connect)?;
    let path = cursor_path(&context.state_dir, &context.bridge);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
    }
    let fingerprint = Fingerprint::of(spec);
    let write =
        |tick| write_cursor(&path, tick, &fingerprint).map_err(|e| io_error("write", &path, e));
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("in range");
    let cursor = match read_cursor(&path)? {
        Some(stored) => match resume(&stored, &fingerprint) {
            Resume::Unchanged => {
                if stored.schedule.is_none() {
                    // A file of an earlier version: record the schedule from now on.
                    write(stored.last_tick)?;
                }
                tracing::info!(last_tick = %tick_text(stored.last_tick), "resuming after the last confirmed tick");
                stored.last_tick
            }
            Resume::Changed(previous) => {
                write(now)?;
                report_schedule_change(previous, &fingerprint, stored.last_tick, now).await;
                now
            }
        },
        None => {
            write(now)?;
            tracing::info!(start = %tick_text(now), "no cursor yet: ticking from now on");
            now
        }
    };
    let data = spec
        .data
        .as_ref()
        .map(|value| Bytes::from(serde_json::to_vec(value).expect("JSON value")));
    Ok(Box::new(CalendarSource {
        bridge: context.bridge.clone(),
        source_uri: format!("urn:broker-bridge:calendar:{}", context.bridge),
        ticker: Ticker::new(schedule, u64::from(spec.catch_up), cursor),
        data,
        progress: Arc::new(Mutex::new(Progress {
            path,
            order: InOrder::default(),
            persisted: cursor,
            schedule: fingerprint,
        })),
        lag: context.metrics.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn spec(keys: Value) -> Result<CalendarSpec, String> {
        CalendarSpec::parse(keys.as_object().unwrap().clone())
    }

    fn schedule(keys: Value) -> Schedule {
        Schedule::new(&spec(keys).unwrap()).unwrap()
    }

    /// The first `n` ticks after `after`, as RFC 3339 text.
    fn ticks(schedule: &Schedule, after: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = utc(after);
        for _ in 0..n {
            at = schedule.next_after(at).expect("a tick");
            out.push(tick_text(at));
        }
        out
    }

    #[test]
    fn intervals_tick_at_multiples_since_the_epoch() {
        let hourly = schedule(serde_json::json!({"interval": "1h"}));
        assert_eq!(
            ticks(&hourly, "2026-11-22T09:17:45.5Z", 3),
            [
                "2026-11-22T10:00:00Z",
                "2026-11-22T11:00:00Z",
                "2026-11-22T12:00:00Z"
            ]
        );
        assert_eq!(
            ticks(&hourly, "2026-11-22T10:00:00Z", 1),
            ["2026-11-22T11:00:00Z"],
            "strictly after"
        );
        // 7s does not divide a minute: still multiples since 1970-01-01T00:00:00Z.
        let odd = schedule(serde_json::json!({"interval": "7s"}));
        let next = odd.next_after(utc("2026-11-22T10:00:00Z")).unwrap();
        assert_eq!(next.timestamp() % 7, 0);
        assert!(next > utc("2026-11-22T10:00:00Z") && next <= utc("2026-11-22T10:00:07Z"));
        // The time zone does not move interval ticks.
        let kolkata = schedule(serde_json::json!({"interval": "1h", "timezone": "Asia/Kolkata"}));
        assert_eq!(
            ticks(&kolkata, "2026-11-22T09:17:45Z", 1),
            ["2026-11-22T10:00:00Z"]
        );
    }

    #[test]
    fn cron_with_and_without_seconds() {
        let minutes = schedule(serde_json::json!({"schedule": "*/15 9-10 * * MON-FRI"}));
        assert_eq!(
            // 2026-11-20 is a Friday.
            ticks(&minutes, "2026-11-20T10:40:00Z", 3),
            [
                "2026-11-20T10:45:00Z",
                "2026-11-23T09:00:00Z",
                "2026-11-23T09:15:00Z"
            ]
        );
        let seconds = schedule(serde_json::json!({"schedule": "*/20 * * * * *"}));
        assert_eq!(
            ticks(&seconds, "2026-11-22T10:00:05.250Z", 3),
            [
                "2026-11-22T10:00:20Z",
                "2026-11-22T10:00:40Z",
                "2026-11-22T10:01:00Z"
            ]
        );
        let berlin = schedule(serde_json::json!({
            "schedule": "0 9 * * *", "timezone": "Europe/Berlin"
        }));
        assert_eq!(
            ticks(&berlin, "2026-11-22T00:00:00Z", 1),
            ["2026-11-22T08:00:00Z"],
            "09:00 CET"
        );
        assert_eq!(
            ticks(&berlin, "2026-07-01T00:00:00Z", 1),
            ["2026-07-01T07:00:00Z"],
            "09:00 CEST"
        );
    }

    #[test]
    fn exclusion_dates_skip_whole_local_days() {
        let hourly = schedule(serde_json::json!({
            "interval": "6h",
            "exclusion_dates": ["2026-12-25", "2026-12-26"]
        }));
        assert_eq!(
            ticks(&hourly, "2026-12-24T12:00:00Z", 3),
            [
                "2026-12-24T18:00:00Z",
                "2026-12-27T00:00:00Z",
                "2026-12-27T06:00:00Z"
            ]
        );
        // The dates are local: in Berlin, 2026-12-25 is 2026-12-24T23:00Z to 2026-12-25T23:00Z.
        let berlin = schedule(serde_json::json!({
            "interval": "1h",
            "timezone": "Europe/Berlin",
            "exclusion_dates": ["2026-12-25"]
        }));
        assert_eq!(
            ticks(&berlin, "2026-12-24T21:30:00Z", 3),
            [
                "2026-12-24T22:00:00Z",
                "2026-12-25T23:00:00Z",
                "2026-12-26T00:00:00Z"
            ]
        );
        let cron = schedule(serde_json::json!({
            "schedule": "0 0 8 * * *",
            "timezone": "America/New_York",
            "exclusion_dates": ["2026-11-26"]
        }));
        assert_eq!(
            ticks(&cron, "2026-11-25T14:00:00Z", 2),
            ["2026-11-27T13:00:00Z", "2026-11-28T13:00:00Z"],
            "08:00 EST, Thanksgiving skipped"
        );
    }

    #[test]
    fn spring_forward_in_berlin() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00Z); 02:xx does not exist.
        let fixed = schedule(serde_json::json!({
            "schedule": "30 2 * * *", "timezone": "Europe/Berlin"
        }));
        assert_eq!(
            ticks(&fixed, "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST, right after the gap
                "2026-03-30T00:30:00Z"  // 02:30 CEST
            ]
        );
        let every_quarter = schedule(serde_json::json!({
            "schedule": "*/30 2 * * *", "timezone": "Europe/Berlin"
        }));
        assert_eq!(
            ticks(&every_quarter, "2026-03-28T23:00:00Z", 2),
            ["2026-03-30T00:00:00Z", "2026-03-30T00:30:00Z"],
            "a non-fixed time in the gap does not happen"
        );
    }

    #[test]
    fn fall_back_in_berlin() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00Z); 02:xx happens twice.
        let fixed = schedule(serde_json::json!({
            "schedule": "30 2 * * *", "timezone": "Europe/Berlin"
        }));
        assert_eq!(
            ticks(&fixed, "2026-10-24T12:00:00Z", 3),
            [
                "2026-10-25T00:30:00Z", // 02:30 CEST, the first of the two
                "2026-10-26T01:30:00Z", // 02:30 CET the next day
                "2026-10-27T01:30:00Z"
            ]
        );
        let repeated = schedule(serde_json::json!({
            "schedule": "0,30 2 * * *", "timezone": "Europe/Berlin"
        }));
        assert_eq!(
            ticks(&repeated, "2026-10-24T23:00:00Z", 5),
            [
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T01:30:00Z", // 02:30 CET
                "2026-10-26T01:00:00Z"
            ]
        );
    }

    #[test]
    fn hourly_cron_is_one_hour_apart_in_utc_across_both_changes() {
        let hourly = schedule(serde_json::json!({
            "schedule": "0 * * * *", "timezone": "Europe/Berlin"
        }));
        for start in ["2026-03-28T20:00:00Z", "2026-10-24T20:00:00Z"] {
            let mut at = utc(start);
            for _ in 0..12 {
                let next = hourly.next_after(at).unwrap();
                assert_eq!(next - at, TimeDelta::hours(1), "after {at}");
                at = next;
            }
        }
    }

    fn ticker(keys: Value, catch_up: u64, cursor: &str) -> Ticker {
        Ticker::new(schedule(keys), catch_up, utc(cursor))
    }

    fn span(count: u64, first: &str, last: &str) -> Span {
        Span {
            count,
            first: utc(first),
            last: utc(last),
        }
    }

    /// Drains what `next` hands out at `now` without waiting, as the source does:
    /// the ticks emitted, the plans made for missed ones, and what comes then.
    fn due(ticker: &mut Ticker, now: &str) -> (Vec<String>, Vec<Plan>, Next) {
        let mut out = Vec::new();
        let mut plans = Vec::new();
        loop {
            match ticker.next(utc(now)) {
                Next::Now(tick) => out.push(tick_text(tick)),
                Next::Missed { first, limit } => {
                    let made = plan(&ticker.schedule, first, limit, ticker.catch_up);
                    ticker.apply(&made);
                    plans.push(made);
                }
                other => return (out, plans, other),
            }
        }
    }

    #[test]
    fn without_catch_up_missed_ticks_are_skipped() {
        let every_minute = serde_json::json!({"interval": "1m"});
        let mut t = ticker(every_minute, 0, "2026-11-22T10:00:00Z");
        let (emitted, plans, next) = due(&mut t, "2026-11-22T10:05:30Z");
        assert!(emitted.is_empty());
        assert_eq!(
            plans,
            [Plan {
                skipped: Some(span(5, "2026-11-22T10:01:00Z", "2026-11-22T10:05:00Z")),
                kept: None,
            }]
        );
        assert_eq!(next, Next::At(utc("2026-11-22T10:06:00Z")));
        t.take(utc("2026-11-22T10:06:00Z"));
        assert_eq!(t.waiting(), 0);
        let (emitted, plans, next) = due(&mut t, "2026-11-22T10:06:00.5Z");
        assert!(emitted.is_empty() && plans.is_empty());
        assert_eq!(next, Next::At(utc("2026-11-22T10:07:00Z")), "never twice");
    }

    #[test]
    fn catch_up_emits_the_newest_missed_ticks_oldest_first() {
        let every_minute = serde_json::json!({"interval": "1m"});
        let mut t = ticker(every_minute.clone(), 2, "2026-11-22T10:00:00Z");
        let now = utc("2026-11-22T10:05:30Z");
        let Next::Missed { first, limit } = t.next(now) else {
            panic!("missed ticks");
        };
        assert_eq!((first, limit), (utc("2026-11-22T10:01:00Z"), now - GRACE));
        let made = plan(&t.schedule, first, limit, 2);
        assert_eq!(
            made,
            Plan {
                skipped: Some(span(3, "2026-11-22T10:01:00Z", "2026-11-22T10:03:00Z")),
                kept: Some(span(2, "2026-11-22T10:04:00Z", "2026-11-22T10:05:00Z")),
            }
        );
        t.apply(&made);
        assert_eq!(t.waiting(), 2);
        assert_eq!(t.next(now), Next::Now(utc("2026-11-22T10:04:00Z")));
        assert_eq!(t.waiting(), 1, "one more missed tick to come");
        let (emitted, plans, next) = due(&mut t, "2026-11-22T10:05:30Z");
        assert_eq!(emitted, ["2026-11-22T10:05:00Z"]);
        assert!(plans.is_empty());
        assert_eq!(next, Next::At(utc("2026-11-22T10:06:00Z")));

        // catch_up larger than the gap: every missed tick, none skipped.
        let mut t = ticker(every_minute, 100, "2026-11-22T10:00:00Z");
        let (emitted, plans, next) = due(&mut t, "2026-11-22T10:03:30Z");
        assert_eq!(
            emitted,
            [
                "2026-11-22T10:01:00Z",
                "2026-11-22T10:02:00Z",
                "2026-11-22T10:03:00Z"
            ]
        );
        assert_eq!(
            plans,
            [Plan {
                skipped: None,
                kept: Some(span(3, "2026-11-22T10:01:00Z", "2026-11-22T10:03:00Z")),
            }]
        );
        assert_eq!(next, Next::At(utc("2026-11-22T10:04:00Z")));
    }

    #[test]
    fn a_tick_late_by_at_most_a_second_is_on_time() {
        let every_minute = serde_json::json!({"interval": "1m"});
        let mut t = ticker(every_minute.clone(), 0, "2026-11-22T10:00:00Z");
        assert_eq!(
            t.next(utc("2026-11-22T10:01:01Z")),
            Next::Now(utc("2026-11-22T10:01:00Z"))
        );
        let mut t = ticker(every_minute, 0, "2026-11-22T10:00:00Z");
        let (emitted, plans, next) = due(&mut t, "2026-11-22T10:01:01.001Z");
        assert!(emitted.is_empty());
        assert_eq!(plans[0].skipped.map(|s| s.count), Some(1));
        assert_eq!(next, Next::At(utc("2026-11-22T10:02:00Z")));
    }

    #[test]
    fn excluded_ticks_are_not_missed() {
        let keys = serde_json::json!({"interval": "1h", "exclusion_dates": ["2026-11-22"]});
        let mut t = ticker(keys, 100, "2026-11-21T22:00:00Z");
        let (emitted, plans, _) = due(&mut t, "2026-11-23T01:30:00Z");
        assert_eq!(
            emitted,
            [
                "2026-11-21T23:00:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-23T01:00:00Z"
            ]
        );
        assert_eq!(plans[0].kept.map(|k| k.count), Some(3));
    }

    #[test]
    fn a_schedule_that_ends_says_never() {
        let keys = serde_json::json!({"schedule": "0 0 0 1 1 * 2030"});
        let mut t = ticker(keys, 5, "2030-01-01T00:00:00Z");
        assert_eq!(t.next(utc("2030-06-01T00:00:00Z")), Next::Never);
    }

    #[test]
    fn ids_are_the_bridge_and_the_scheduled_time() {
        assert_eq!(
            tick_id("hourly", utc("2026-11-22T11:00:00+01:00")),
            "hourly@2026-11-22T10:00:00Z"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = |keys: Value| spec(keys).unwrap_err();
        assert!(err(serde_json::json!({})).contains("keys `schedule`/`interval`"));
        assert!(
            err(serde_json::json!({"schedule": "* * * * *", "interval": "1m"}))
                .contains("not both")
        );
        let e = err(serde_json::json!({"schedule": "61 * * * *"}));
        assert!(e.starts_with("key `schedule`:"), "{e}");
        let e = err(serde_json::json!({"schedule": "every hour"}));
        assert!(e.starts_with("key `schedule`:"), "{e}");
        let e = err(serde_json::json!({"schedule": "0 0 30 2 *"}));
        assert!(e.contains("never fires"), "{e}");
        let e = err(serde_json::json!({"interval": "0s"}));
        assert!(e.starts_with("key `interval`: must be at least 1s"), "{e}");
        let e = err(serde_json::json!({"interval": "1500ms"}));
        assert!(e.starts_with("key `interval`: must be a whole"), "{e}");
        let e = err(serde_json::json!({"interval": "soon"}));
        assert!(e.starts_with("key `interval`:"), "{e}");
        let e = err(serde_json::json!({"interval": "1m", "timezone": "Mars/Olympus"}));
        assert!(e.starts_with("key `timezone`:"), "{e}");
        for bad in ["2026-13-01", "2026-02-30", "2026-1-5", "tomorrow"] {
            let e = err(serde_json::json!({"interval": "1m", "exclusion_dates": [bad]}));
            assert!(e.starts_with("key `exclusion_dates`:"), "{e}");
        }
        let e = err(serde_json::json!({"interval": "1m", "catch_up": -1}));
        assert!(e.starts_with("key `catch_up`:"), "{e}");
        let e = err(serde_json::json!({"interval": "1m", "cron": "x"}));
        assert!(e.starts_with("key `cron`: unknown key"), "{e}");
        let ok = spec(serde_json::json!({
            "schedule": "0 9 * * MON-FRI",
            "timezone": "Europe/Berlin",
            "exclusion_dates": ["2026-12-25"],
            "catch_up": 3,
            "data": {"job": "report"}
        }))
        .unwrap();
        assert_eq!(ok.catch_up, 3);
        assert_eq!(
            ok.describe(),
            "cron `0 9 * * MON-FRI` in Europe/Berlin, 1 exclusion date(s) in Europe/Berlin, \
             catch_up 3; at-least-once: the last tick advances after the exchange confirmed"
        );
        let every = spec(serde_json::json!({"interval": "15m"})).unwrap();
        assert_eq!(every.timezone, "UTC");
        assert!(
            every.describe().starts_with("every 15m "),
            "{}",
            every.describe()
        );
    }

    #[test]
    fn exclusion_dates_may_be_toml_dates_and_data_any_toml_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
[[bridge]]
name = "ticks"
kind = "calendar"
interval = "1h"
exclusion_dates = [2026-12-25, "2026-12-26"]
data = { job = "sync", n = 2, tags = ["a"] }
"#,
        )
        .unwrap();
        let loaded = crate::config::load(&path, &crate::sources::KINDS).unwrap();
        let spec = crate::sources::common::kind::spec_of::<super::Calendar>(
            &loaded.config.bridges[0].source,
        )
        .expect("a calendar bridge");
        assert_eq!(spec.exclusion_dates, ["2026-12-25", "2026-12-26"]);
        assert_eq!(
            spec.data,
            Some(serde_json::json!({"job": "sync", "n": 2, "tags": ["a"]}))
        );
    }

    #[test]
    fn the_cursor_is_the_end_of_the_confirmed_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        let start = utc("2026-11-22T10:00:00Z");
        let every_minute = Fingerprint::of(&spec(serde_json::json!({"interval": "1m"})).unwrap());
        let mut progress = Progress {
            path: path.clone(),
            order: InOrder::default(),
            persisted: start,
            schedule: every_minute,
        };
        let tickets: Vec<Ticket> = (1..=3)
            .map(|m| progress.order.push(start + TimeDelta::minutes(m)))
            .collect();
        let last_tick = |path: &Path| read_cursor(path).unwrap().map(|s| s.last_tick);
        progress.confirm(tickets[1]).unwrap();
        assert_eq!(last_tick(&path), None, "waits for the first");
        progress.confirm(tickets[0]).unwrap();
        assert_eq!(last_tick(&path), Some(utc("2026-11-22T10:02:00Z")));
        progress.confirm(tickets[2]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            r#"{"last_tick":"2026-11-22T10:03:00Z","schedule":{"interval_seconds":60,"timezone":"UTC"}}"#
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(read_cursor(&path).is_err());
    }

    #[test]
    fn a_changed_schedule_is_noticed_and_an_old_cursor_file_is_not_one() {
        let fingerprint = |keys: Value| Fingerprint::of(&spec(keys).unwrap());
        let hourly = fingerprint(serde_json::json!({"interval": "1h", "catch_up": 3}));
        let stored = |schedule: Option<Value>| Stored {
            last_tick: utc("2026-11-22T10:00:00Z"),
            schedule,
        };
        let recorded = Some(serde_json::to_value(&hourly).unwrap());
        assert_eq!(
            resume(&stored(recorded.clone()), &hourly),
            Resume::Unchanged
        );
        assert_eq!(
            resume(&stored(None), &hourly),
            Resume::Unchanged,
            "a file of an earlier version keeps catch-up"
        );
        assert_eq!(
            resume(
                &stored(recorded.clone()),
                &fingerprint(serde_json::json!({"interval": "1h", "catch_up": 9, "data": 1}))
            ),
            Resume::Unchanged,
            "catch_up and data do not change the ticks"
        );
        for other in [
            serde_json::json!({"interval": "1s"}),
            serde_json::json!({"schedule": "0 * * * *"}),
            serde_json::json!({"interval": "1h", "timezone": "Europe/Berlin"}),
            serde_json::json!({"interval": "1h", "exclusion_dates": ["2026-12-25"]}),
        ] {
            assert_eq!(
                resume(&stored(recorded.clone()), &fingerprint(other.clone())),
                Resume::Changed(Some(hourly.clone())),
                "{other}"
            );
        }
        assert_eq!(
            resume(&stored(Some(serde_json::json!("v9"))), &hourly),
            Resume::Changed(None),
            "unreadable: changed, not damaged"
        );
        // Spelling that changes nothing.
        assert_eq!(
            fingerprint(serde_json::json!({"schedule": " 0  *  * * *"})),
            fingerprint(serde_json::json!({"schedule": "0 * * * *"}))
        );
        assert_eq!(
            fingerprint(
                serde_json::json!({"interval": "1h", "exclusion_dates": ["2026-12-26", "2026-12-25", "2026-12-25"]})
            ),
            fingerprint(
                serde_json::json!({"interval": "60m", "exclusion_dates": ["2026-12-25", "2026-12-26"]})
            )
        );
        // The recorded schedule can be evaluated again, to count what it missed.
        let back = hourly.schedule().unwrap();
        assert_eq!(
            ticks(&back, "2026-11-22T10:00:00Z", 1),
            ["2026-11-22T11:00:00Z"]
        );
        assert_eq!(hourly.describe(), "every 1h");
    }

    #[test]
    fn cursor_files_of_an_earlier_version_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(&path, r#"{"last_tick":"2026-11-22T10:00:00Z"}"#).unwrap();
        assert_eq!(
            read_cursor(&path).unwrap(),
            Some(Stored {
                last_tick: utc("2026-11-22T10:00:00Z"),
                schedule: None
            })
        );
    }
}
