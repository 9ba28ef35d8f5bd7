//! `kind = "calendar"` with the real daemon and RabbitMQ: the shared contract with ticks
//! as the messages, ticks with their scheduled times and deterministic ids, exclusion
//! dates, catch-up after a restart and after an exchange outage. The evaluator itself
//! (cron, time zones, DST) is unit-tested in `src/sources/calendar/tests.rs`, without
//! waiting.
#![cfg(feature = "calendar")]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use common::conformance::{SourceUnderTest, Ticks, conformance_suite};
use common::proxy::Proxy;
use common::{AMQP_URL, Daemon, Rabbit, Received, config_text, eventually, unique};
use serde_json::{Value, json};

fn bridge_table(name: &str, extra: &str) -> String {
    format!("\n[[bridge]]\nname = \"{name}\"\nkind = \"calendar\"\n{extra}\n")
}

/// Starts the daemon with its own state_dir (in its temporary directory).
async fn start(exchange_url: &str, exchange: &str, bridges: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    Daemon::start_with_text(dir, exchange_url, exchange, |port| {
        config_text(exchange_url, exchange, port, bridges).replace(
            "[defaults]\n",
            &format!("[defaults]\nstate_dir = \"{}\"\n", state.display()),
        )
    })
    .await
}

fn cursor_file(daemon: &Daemon, bridge: &str) -> PathBuf {
    daemon
        .dir
        .path()
        .join("state/calendar")
        .join(format!("{bridge}.json"))
}

/// The last confirmed tick the daemon persisted.
fn cursor(daemon: &Daemon, bridge: &str) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(cursor_file(daemon, bridge)).ok()?;
    let file: Value = serde_json::from_str(&text).ok()?;
    Some(
        DateTime::parse_from_rfc3339(file["last_tick"].as_str()?)
            .ok()?
            .with_timezone(&Utc),
    )
}

/// The scheduled time of a tick event, checking that its id names it.
fn tick_time(bridge: &str, event: &Value) -> DateTime<Utc> {
    let text = event["time"].as_str().expect("time");
    let time = DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(time.timestamp_subsec_nanos(), 0, "whole seconds: {event}");
    assert_eq!(
        event["id"],
        format!("{bridge}@{}", time.format("%Y-%m-%dT%H:%M:%SZ")),
        "id is <bridge>@<scheduled time>"
    );
    time
}

/// Tick times by id, counting how often each arrived.
fn tally(bridge: &str, received: &[Received]) -> BTreeMap<DateTime<Utc>, usize> {
    let mut times = BTreeMap::new();
    for r in received {
        *times.entry(tick_time(bridge, &r.json())).or_insert(0) += 1;
    }
    times
}

/// Asserts that the times are consecutive seconds, and returns the first and last.
fn assert_consecutive(
    times: &BTreeMap<DateTime<Utc>, usize>,
    log: &str,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let all: Vec<DateTime<Utc>> = times.keys().copied().collect();
    for pair in all.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            TimeDelta::seconds(1),
            "a gap after {}: {all:?}\nlog: {log}",
            pair[0]
        );
    }
    (all[0], *all.last().unwrap())
}

/// A calendar bridge as the conformance checks drive it: nothing is sent to it; a check
/// asks for ticks a second apart and gets a schedule that fires exactly then.
struct Clock;

impl SourceUnderTest for Clock {
    fn kind(&self) -> &'static str {
        "calendar"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    /// Ticks missed while the exchange is down come after it, late (not skipped).
    fn bridge_keys(&self) -> String {
        "catch_up = 100".into()
    }
    /// Ticks have no subject; their type is the calendar's own.
    fn subject(&self) -> String {
        "broker-bridge.calendar.tick".into()
    }
    fn expected_subject(&self) -> Option<String> {
        None
    }
    async fn send(&self, _payload: &[u8], _headers: &[(&str, &str)]) {
        unreachable!("nothing can be sent to a calendar bridge: the checks ask for `ticks`")
    }
    fn data_is_not_the_payload(&self) -> Option<&'static str> {
        Some(
            "nothing can be sent to a calendar bridge: a tick carries the bridge's own `data` (JSON from its config) or none",
        )
    }
    /// A cron schedule in UTC of some seconds of one minute of one date (`5-14 7 9 22 11
    /// *`): no tick before or after them but a year later. The ticks fit into one
    /// minute, so the first may wait for the next minute.
    fn ticks(&self, not_before: DateTime<Utc>, count: u64) -> Option<Ticks> {
        let whole_second = not_before.timestamp() + i64::from(not_before.nanosecond() > 0);
        let mut first = DateTime::from_timestamp(whole_second, 0).unwrap();
        if u64::from(first.second()) + count > 60 {
            first = first.with_second(0).unwrap() + TimeDelta::minutes(1);
        }
        let last = first + TimeDelta::seconds(count as i64 - 1);
        let seconds = if count == 1 {
            first.second().to_string()
        } else {
            format!("{}-{}", first.second(), last.second())
        };
        let keys = format!(
            "schedule = \"{seconds} {} {} {} {} *\"",
            first.minute(),
            first.hour(),
            first.day(),
            first.month()
        );
        Some(Ticks { keys, first })
    }
}

// The shared contract (tests/common/conformance.rs), with ticks as the messages.
conformance_suite!(Clock);

#[tokio::test]
async fn interval_ticks_carry_their_scheduled_time_and_id() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("cal");
    let bare = unique("cal");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let bare_queue = rabbit
        .bind(&exchange, &format!("event.acme.{bare}.#"))
        .await;
    let bridges = [
        bridge_table(
            &bridge,
            "interval = \"1s\"\ndata = { job = \"sync\", n = 2, tags = [\"a\"] }",
        ),
        bridge_table(&bare, "interval = \"1s\""),
    ]
    .concat();
    let daemon = start(AMQP_URL, &exchange, &bridges).await;

    let received = rabbit.take(&queue, 3, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 3, "log: {}", daemon.log());
    let mut times = Vec::new();
    for r in &received {
        assert_eq!(
            r.routing_key,
            format!("event.acme.{bridge}.broker-bridge_calendar_tick")
        );
        let event = r.json();
        assert_eq!(event["type"], "broker-bridge.calendar.tick");
        assert_eq!(
            event["source"],
            format!("urn:broker-bridge:calendar:{bridge}")
        );
        assert!(event.get("subject").is_none(), "{event}");
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["data"], json!({"job": "sync", "n": 2, "tags": ["a"]}));
        assert_eq!(event["tenant"], "acme");
        times.push(tick_time(&bridge, &event));
    }
    for pair in times.windows(2) {
        assert_eq!(pair[1] - pair[0], TimeDelta::seconds(1), "{times:?}");
    }
    let now = Utc::now();
    let last = *times.last().unwrap();
    assert!(
        last <= now && now - last < TimeDelta::seconds(10),
        "ticks come at their time: {last} at {now}"
    );
    eventually(
        Duration::from_secs(10),
        "the cursor at the last tick",
        || cursor(&daemon, &bridge).is_some_and(|c| c >= last),
    )
    .await;

    let bare_ticks = rabbit.take(&bare_queue, 1, Duration::from_secs(10)).await;
    assert_eq!(bare_ticks.len(), 1);
    let event = bare_ticks[0].json();
    let object = event.as_object().unwrap();
    for absent in ["data", "data_base64", "datacontenttype"] {
        assert!(!object.contains_key(absent), "no {absent}: {event}");
    }
    tick_time(&bare, &event);
}

#[tokio::test]
async fn excluded_dates_have_no_ticks() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let excluded = unique("cal");
    let control = unique("cal");
    let excluded_queue = rabbit
        .bind(&exchange, &format!("event.acme.{excluded}.#"))
        .await;
    let control_queue = rabbit
        .bind(&exchange, &format!("event.acme.{control}.#"))
        .await;
    // Yesterday, today and tomorrow in Tokyo: every tick of this test is excluded,
    // even around midnight.
    let tokyo_today = (Utc::now() + TimeDelta::hours(9)).date_naive();
    let dates: Vec<String> = [-1i64, 0, 1]
        .iter()
        .map(|d| format!("\"{}\"", tokyo_today + TimeDelta::days(*d)))
        .collect();
    let bridges = [
        bridge_table(
            &excluded,
            &format!(
                "interval = \"1s\"\ntimezone = \"Asia/Tokyo\"\ncatch_up = 100\nexclusion_dates = [{}]",
                dates.join(", ")
            ),
        ),
        bridge_table(&control, "interval = \"1s\"\ntimezone = \"Asia/Tokyo\""),
    ]
    .concat();
    let daemon = start(AMQP_URL, &exchange, &bridges).await;
    let ticks = rabbit
        .take(&control_queue, 3, Duration::from_secs(15))
        .await;
    assert_eq!(
        ticks.len(),
        3,
        "the control bridge ticks; log: {}",
        daemon.log()
    );
    let none = rabbit
        .take(&excluded_queue, 1, Duration::from_secs(1))
        .await;
    assert!(none.is_empty(), "no tick on an excluded date: {none:?}");
    daemon.wait_running(&excluded).await;
    assert_eq!(
        daemon
            .metrics()
            .bridge("bridge_messages_received_total", &excluded, "calendar"),
        Some(0.0)
    );
}

/// What `run_stop_restart` saw.
struct Restarted {
    bridge: String,
    /// The ticks of both runs.
    received: Vec<Received>,
    /// When the restart began.
    restarted: DateTime<Utc>,
    /// The last tick confirmed before the stop (the cursor).
    stopped: DateTime<Utc>,
    log: String,
}

/// Runs a 1s bridge, stops it with SIGTERM, waits 4s and starts it again.
async fn run_stop_restart(catch_up: u32) -> Restarted {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("cal");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let table = bridge_table(
        &bridge,
        &format!("interval = \"1s\"\ncatch_up = {catch_up}"),
    );
    let mut daemon = start(AMQP_URL, &exchange, &table).await;
    let mut received = rabbit.take(&queue, 2, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
    let stopped = cursor(&daemon, &bridge).expect("a cursor after the stop");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted = Utc::now();
    daemon.restart().await;
    // Everything queued, and what the new process emits in the next seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    received.extend(rabbit.take(&queue, 10_000, Duration::from_secs(2)).await);
    Restarted {
        bridge,
        received,
        restarted,
        stopped,
        log: daemon.log(),
    }
}

#[tokio::test]
async fn a_restart_with_catch_up_emits_every_missed_tick_once() {
    let Restarted {
        bridge,
        received,
        restarted,
        stopped,
        log,
    } = run_stop_restart(10).await;
    let times = tally(&bridge, &received);
    let duplicates: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "duplicates: {duplicates:?}\nlog: {log}"
    );
    let (first, last) = assert_consecutive(&times, &log);
    assert!(
        first <= stopped && last >= restarted + TimeDelta::seconds(1),
        "covers the stop ({stopped}) and the restart ({restarted}): {first}..{last}"
    );
    assert!(!log.contains("missed ticks skipped"), "{log}");
}

#[tokio::test]
async fn a_restart_without_catch_up_skips_the_missed_ticks() {
    let Restarted {
        bridge,
        received,
        restarted,
        stopped,
        log,
    } = run_stop_restart(0).await;
    let times = tally(&bridge, &received);
    assert!(times.values().all(|n| *n == 1), "{times:?}");
    let before: BTreeMap<_, _> = times.range(..=stopped).map(|(t, n)| (*t, *n)).collect();
    let after: BTreeMap<_, _> = times
        .range(stopped + TimeDelta::seconds(1)..)
        .map(|(t, n)| (*t, *n))
        .collect();
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{times:?}\nlog: {log}"
    );
    assert_consecutive(&before, &log);
    let (first_after, _) = assert_consecutive(&after, &log);
    assert!(
        first_after >= restarted - TimeDelta::seconds(2),
        "nothing from the downtime: the first tick after the restart is {first_after}, \
         the restart began at {restarted}\nlog: {log}"
    );
    assert!(first_after - stopped >= TimeDelta::seconds(4));
    assert!(log.contains("missed ticks skipped"), "{log}");
}

#[tokio::test]
async fn ticks_missed_during_an_exchange_outage_come_after_it_with_their_own_times() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("cal");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let table = bridge_table(&bridge, "interval = \"1s\"\ncatch_up = 100");
    let daemon = start(&proxy.amqp_url(), &exchange, &table).await;
    let mut received = rabbit.take(&queue, 2, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());

    proxy.cut();
    let cut_at = Utc::now();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    let held = cursor(&daemon, &bridge).expect("a cursor");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        cursor(&daemon, &bridge),
        Some(held),
        "the last tick does not advance while the exchange is down"
    );
    assert!(held <= cut_at, "{held} vs cut at {cut_at}");
    let restored_at = Utc::now();
    proxy.restore();

    tokio::time::sleep(Duration::from_secs(4)).await;
    received.extend(rabbit.take(&queue, 10_000, Duration::from_secs(2)).await);
    let log = daemon.log();
    // A tick in flight at the cut may be published twice (at-least-once), with one id.
    let times = tally(&bridge, &received);
    let (first, last) = assert_consecutive(&times, &log);
    assert!(
        first < cut_at && last > restored_at + TimeDelta::seconds(1),
        "{times:?}"
    );
    // Scheduled while the exchange was down, so published after it was back.
    let during = times.range(cut_at..restored_at).count();
    assert!(
        during >= 3,
        "the ticks of the outage arrive after it: {times:?}, cut at {cut_at}, restored at {restored_at}"
    );
    assert!(times.values().all(|n| *n <= 2), "{times:?}");
    eventually(Duration::from_secs(10), "the cursor moves on", || {
        cursor(&daemon, &bridge).is_some_and(|c| c >= restored_at)
    })
    .await;
}

// ---- Edited schedules (issue 21) ----
//
// The cursor file records the schedule it was written for. A changed schedule starts
// from now: no tick of the new schedule's past is emitted (no burst), and the ticks of
// the previous schedule still missed at the edit are reported in the log (skipped).

/// How an edit of the bridge's table reaches the daemon.
#[derive(Debug, Clone, Copy)]
enum Edit {
    /// The config file is rewritten while the daemon runs.
    Reload,
    /// The daemon is stopped (SIGTERM), the file rewritten, the daemon started again.
    Restart,
}

/// The whole config text, with the test's state_dir (as `start` writes it).
fn config_with_state(daemon: &Daemon, bridges: &str) -> String {
    let state = daemon.dir.path().join("state");
    config_text(
        &daemon.exchange_url,
        &daemon.exchange,
        daemon.admin_port,
        bridges,
    )
    .replace(
        "[defaults]\n",
        &format!("[defaults]\nstate_dir = \"{}\"\n", state.display()),
    )
}

/// Applies `bridges` by reload or restart; returns the time of the edit (for a restart,
/// when the new process starts, 3s after the stop).
async fn edit(daemon: &mut Daemon, how: Edit, bridge: &str, bridges: &str) -> DateTime<Utc> {
    let text = config_with_state(daemon, bridges);
    let write = |daemon: &Daemon| {
        let temporary = daemon.dir.path().join("broker-bridge.toml.new");
        std::fs::write(&temporary, &text).unwrap();
        std::fs::rename(&temporary, &daemon.config_path).unwrap();
    };
    let edited = match how {
        Edit::Reload => {
            let restarts = |d: &Daemon| {
                d.bridge_status(bridge)
                    .and_then(|b| b["counters"]["restarts"].as_u64())
                    .unwrap_or(0)
            };
            let before = restarts(daemon);
            let edited = Utc::now();
            write(daemon);
            eventually(
                Duration::from_secs(20),
                "the edited bridge restarted",
                || restarts(daemon) > before,
            )
            .await;
            edited
        }
        Edit::Restart => {
            assert_eq!(daemon.terminate(), Some(0));
            write(daemon);
            // Down a while: the new schedule has a past since the cursor.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let edited = Utc::now();
            daemon.restart().await;
            edited
        }
    };
    daemon.wait_running(bridge).await;
    edited
}

/// Starts the daemon with a cursor file already in its state_dir.
async fn start_with_cursor(
    exchange: &str,
    bridges: &str,
    bridge: &str,
    cursor_json: &str,
) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("calendar")).unwrap();
    std::fs::write(
        state.join("calendar").join(format!("{bridge}.json")),
        cursor_json,
    )
    .unwrap();
    Daemon::start_with_text(dir, AMQP_URL, exchange, |port| {
        config_text(AMQP_URL, exchange, port, bridges).replace(
            "[defaults]\n",
            &format!("[defaults]\nstate_dir = \"{}\"\n", state.display()),
        )
    })
    .await
}

fn full_hour(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(time.timestamp() - time.timestamp().rem_euclid(3600), 0).unwrap()
}

/// The issue's example: an hourly bridge with catch_up, its cursor at the last full
/// hour, edited to tick every second. Before the fix the new schedule's past (the
/// seconds since the last full hour) came at once, up to catch_up of them.
async fn hourly_to_every_second(how: Edit, new_rule: &str) {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("cal");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    // A cursor of the format before the schedule was recorded, one tick behind: the
    // upgrade keeps catch-up, so the last full hour is emitted late.
    let hour = full_hour(Utc::now());
    let behind = hour - TimeDelta::hours(1);
    let old_format = format!(
        r#"{{"last_tick":"{}"}}"#,
        behind.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let hourly = bridge_table(&bridge, "interval = \"1h\"\ncatch_up = 10");
    let mut daemon = start_with_cursor(&exchange, &hourly, &bridge, &old_format).await;
    let mut received = rabbit.take(&queue, 1, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(
        tick_time(&bridge, &received[0].json()),
        hour,
        "caught up from an old-format cursor"
    );
    eventually(Duration::from_secs(10), "the cursor at the hour", || {
        cursor(&daemon, &bridge) == Some(hour)
    })
    .await;
    let text = std::fs::read_to_string(cursor_file(&daemon, &bridge)).unwrap();
    assert!(
        text.contains("\"schedule\""),
        "the cursor records its schedule: {text}"
    );

    let every_second = bridge_table(&bridge, &format!("{new_rule}\ncatch_up = 10"));
    let edited = edit(&mut daemon, how, &bridge, &every_second).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    received.extend(rabbit.take(&queue, 10_000, Duration::from_secs(2)).await);
    let log = daemon.log();
    let times = tally(&bridge, &received);
    // Accounting: the old schedule's only due tick (the hour) was published before the
    // edit; should the test have crossed a full hour, that tick too. Everything else
    // is the new schedule from the edit on.
    let before: Vec<DateTime<Utc>> = times.range(..=edited).map(|(t, _)| *t).collect();
    assert!(
        before.contains(&hour) && before.iter().all(|t| *t == full_hour(*t)),
        "before the edit only the hourly schedule's ticks: {before:?}\nlog: {log}"
    );
    let after: BTreeMap<_, _> = times
        .range(edited + TimeDelta::milliseconds(1)..)
        .map(|(t, n)| (*t, *n))
        .collect();
    assert!(
        after.len() >= 2,
        "the new schedule ticks: {times:?}\nlog: {log}"
    );
    assert!(after.values().all(|n| *n == 1), "{after:?}");
    let (first, _) = assert_consecutive(&after, &log);
    assert!(
        first > edited && first - edited <= TimeDelta::seconds(10),
        "no burst of the new schedule's past: the first new tick is {first}, the edit \
         was at {edited}\nlog: {log}"
    );
    assert!(log.contains("schedule changed"), "{log}");
    assert!(
        log.matches("emitting missed ticks late").count() <= 1,
        "only the hourly catch-up at the start: {log}"
    );
}

#[tokio::test]
async fn an_edited_schedule_on_reload_starts_from_now_without_a_burst() {
    hourly_to_every_second(Edit::Reload, "interval = \"1s\"").await;
}

#[tokio::test]
async fn an_edited_schedule_across_a_restart_starts_from_now_without_a_burst() {
    hourly_to_every_second(Edit::Restart, "schedule = \"* * * * * *\"").await;
}

/// Every second, stopped, edited to every other second, started again 3s later: the
/// every-other-second ticks of the downtime do not come, and the every-second ticks
/// missed in the downtime (due before the edit took effect) are reported as skipped.
#[tokio::test]
async fn ticks_of_the_previous_schedule_missed_at_the_edit_are_reported() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("cal");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let table = bridge_table(&bridge, "interval = \"1s\"\ncatch_up = 10");
    let mut daemon = start(AMQP_URL, &exchange, &table).await;
    let mut received = rabbit.take(&queue, 2, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let every_other = bridge_table(&bridge, "schedule = \"*/2 * * * * *\"\ncatch_up = 10");
    let edited = edit(&mut daemon, Edit::Restart, &bridge, &every_other).await;
    let stopped = *tally(&bridge, &received).keys().last().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    received.extend(rabbit.take(&queue, 10_000, Duration::from_secs(2)).await);
    let log = daemon.log();
    let times = tally(&bridge, &received);
    assert!(times.values().all(|n| *n == 1), "{times:?}");
    let first_run: BTreeMap<_, _> = times.range(..=stopped).map(|(t, n)| (*t, *n)).collect();
    assert_consecutive(&first_run, &log);
    let confirmed = cursor_before_restart(&log).unwrap_or(stopped);
    let after: Vec<DateTime<Utc>> = times
        .range(confirmed + TimeDelta::seconds(1)..)
        .map(|(t, _)| *t)
        .collect();
    assert!(!after.is_empty(), "{times:?}\nlog: {log}");
    assert!(
        after
            .iter()
            .all(|t| *t > edited && t.timestamp().rem_euclid(2) == 0),
        "after the edit only the new schedule, from now on: {after:?}, edited at {edited}\nlog: {log}"
    );
    // The every-second ticks after the last confirmed one, up to the restart: reported.
    let reported = format!(
        "tick(s) of the previous schedule from {} to ",
        (confirmed + TimeDelta::seconds(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    assert!(
        log.contains(&reported),
        "the missed ticks of the old schedule are reported ({reported}...): {log}"
    );
}

/// The last confirmed tick the second process resumed from, from its log line
/// ("schedule changed ... last confirmed tick <time>").
fn cursor_before_restart(log: &str) -> Option<DateTime<Utc>> {
    let line = log.lines().find(|l| l.contains("schedule changed"))?;
    let (_, rest) = line.split_once("last confirmed tick ")?;
    let text: String = rest.chars().take(20).collect();
    Some(
        DateTime::parse_from_rfc3339(&text)
            .ok()?
            .with_timezone(&Utc),
    )
}
