//! The missed-tick rule: what comes next from the schedule, the last tick handed out
//! and the time; and what becomes of a run of missed ticks (skipped, or caught up).

use chrono::{DateTime, TimeDelta, Utc};

use super::schedule::Schedule;

/// A tick overdue by this much or less is on time; more is missed.
pub(super) const GRACE: TimeDelta = TimeDelta::seconds(1);

/// What comes next, as the ticker decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
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
pub(super) struct Span {
    pub(super) count: u64,
    pub(super) first: DateTime<Utc>,
    pub(super) last: DateTime<Utc>,
}

/// What becomes of a run of missed ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    /// The older ones, beyond `catch_up`: skipped.
    pub(super) skipped: Option<Span>,
    /// The newest `catch_up`: emitted late, oldest first.
    pub(super) kept: Option<Span>,
}

/// Splits the missed ticks from `first` (a tick) to before `limit` into the skipped and
/// the kept (the newest `catch_up`). Walks every missed tick, twice at most.
pub(super) fn plan(
    schedule: &Schedule,
    first: DateTime<Utc>,
    limit: DateTime<Utc>,
    catch_up: u64,
) -> Plan {
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
pub(super) struct Ticker {
    pub(super) schedule: Schedule,
    pub(super) catch_up: u64,
    /// The last tick handed out, or the cursor this connection started from.
    position: DateTime<Utc>,
    /// While catching up: the newest missed tick to emit, and how many are left.
    catching_up: Option<(DateTime<Utc>, u64)>,
}

impl Ticker {
    pub(super) fn new(schedule: Schedule, catch_up: u64, cursor: DateTime<Utc>) -> Ticker {
        Ticker {
            schedule,
            catch_up,
            position: cursor,
            catching_up: None,
        }
    }

    pub(super) fn next(&mut self, now: DateTime<Utc>) -> Next {
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
    pub(super) fn apply(&mut self, plan: &Plan) {
        if let Some(skipped) = plan.skipped {
            self.position = skipped.last;
        }
        if let Some(kept) = plan.kept {
            self.catching_up = Some((kept.last, kept.count));
        }
    }

    /// Takes the tick `Next::At` announced, once its time has come.
    pub(super) fn take(&mut self, tick: DateTime<Utc>) {
        self.position = tick;
    }

    /// Missed ticks still to emit.
    pub(super) fn waiting(&self) -> u64 {
        self.catching_up.map_or(0, |(_, left)| left)
    }
}
