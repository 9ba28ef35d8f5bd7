use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::Calendar;
use super::cursor::{Fingerprint, Progress, Resume, Stored, read_cursor, resume};
use super::schedule::{Schedule, tick_text};
use super::source::tick_id;
use super::spec::CalendarSpec;
use super::ticker::{GRACE, Next, Plan, Span, Ticker, plan};
use crate::sources::common::in_order::{InOrder, Ticket};
use crate::sources::common::kind::SourceKind;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn spec(keys: Value) -> Result<CalendarSpec, String> {
    Calendar::parse(keys.as_object().unwrap().clone())
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
        err(serde_json::json!({"schedule": "* * * * *", "interval": "1m"})).contains("not both")
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
        Calendar::describe(&ok),
        "cron `0 9 * * MON-FRI` in Europe/Berlin, 1 exclusion date(s) in Europe/Berlin, \
         catch_up 3; at-least-once: the last tick advances after the exchange confirmed"
    );
    let every = spec(serde_json::json!({"interval": "15m"})).unwrap();
    assert_eq!(every.timezone, "UTC");
    assert!(
        Calendar::describe(&every).starts_with("every 15m "),
        "{}",
        Calendar::describe(&every)
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
    let spec =
        crate::sources::common::kind::spec_of::<super::Calendar>(&loaded.config.bridges[0].source)
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
