//! The running source: each tick as an `Incoming` when it is due (missed ones caught
//! up or skipped), and the cursor advanced as the exchange confirms them, in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};

use super::cursor::{
    Fingerprint, Progress, Resume, cursor_path, io_error, read_cursor, resume, write_cursor,
};
use super::schedule::{Schedule, tick_text};
use super::spec::CalendarSpec;
use super::ticker::{Next, Ticker, plan};
use crate::message::{Acker, Incoming, Metadata, SourceError};
use crate::sources::common::context::{ConnectContext, Source, SourceMetrics};
use crate::sources::common::in_order::{InOrder, Ticket};

/// The CloudEvent type of a tick when the bridge sets no `type`.
const TICK_TYPE: &str = "broker-bridge.calendar.tick";

/// The event id of a tick: `<bridge>@<scheduled time>`.
pub(super) fn tick_id(bridge: &str, tick: DateTime<Utc>) -> String {
    format!("{bridge}@{}", tick_text(tick))
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
