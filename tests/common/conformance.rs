//! The contract checks every source kind must pass (DESIGN.md "Delivery contract" and
//! "CloudEvent mapping rules"). A kind's test file implements `SourceUnderTest` and runs
//! them all with one line, `conformance_suite!(...)`; it adds only what is special about
//! the kind. A check that cannot apply to a kind (the kind says why through
//! `SourceUnderTest`) says so in the test's output instead of passing silently.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use cloudevents::AttributesReader;

use super::poison::{Carries, PoisonMessage, Sent};
use super::proxy::Proxy;
use super::{Daemon, Rabbit, Received, eventually, http_get, sample_payloads, unique};

/// A source kind as the conformance checks drive it.
pub trait SourceUnderTest {
    /// The `kind` label of the bridge.
    fn kind(&self) -> &'static str;
    /// Whether an ack-less source (at-most-once) is under test.
    fn at_least_once(&self) -> bool;
    /// The kind-specific TOML lines of a bridge reading this source.
    fn bridge_keys(&self) -> String;
    /// The subject/topic/routing key messages are sent with (becomes `type`/`subject`).
    fn subject(&self) -> String;
    /// The `type` of events from plain messages (by default the subject).
    fn expected_type(&self) -> String {
        self.subject()
    }
    /// The `subject` attribute of events from plain messages.
    fn expected_subject(&self) -> Option<String> {
        Some(self.subject())
    }
    /// Whether the bridge takes messages while the exchange is down (broker sources
    /// pull until `max_in_flight`); a webhook answers 503 instead.
    fn takes_while_exchange_down(&self) -> bool {
        true
    }
    /// Whether a message above `max_message_bytes` is refused to its sender (webhook:
    /// 413) instead of dead-lettered.
    fn refuses_oversized(&self) -> bool {
        false
    }
    /// Text placed before the bridge table: top-level sections the kind needs (the
    /// webhook listener).
    fn config_prelude(&self) -> String {
        String::new()
    }
    /// Sends one message with an independent client.
    async fn send(&self, payload: &[u8], headers: &[(&str, &str)]);
    /// Messages the source still holds unacknowledged for `bridge`, where the source can
    /// tell (JetStream consumer info, an AMQP queue's depth).
    async fn pending_at_source(&self, _bridge: &str) -> Option<u64> {
        None
    }
    /// What of the poison corpus (`poison::poison_corpus`) the kind's transport can
    /// carry; by default a payload only.
    fn carries(&self) -> Carries {
        Carries::default()
    }
    /// Sends one corpus message; it holds only what `carries` allows. By default: `send`
    /// with its (text) headers.
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        assert!(
            message.id.is_none()
                && message.binary_id.is_none()
                && message.content_type.is_none()
                && message.nested_depth.is_none(),
            "the kind must implement send_poison for what its `carries` allows"
        );
        self.send(&message.payload, &message.text_headers()).await;
        Sent::default()
    }
    /// Why events do not carry the bytes sent as their data, for a kind whose events do
    /// not (S3 events describe objects; calendar ticks carry the bridge's own `data`). The
    /// checks of byte-exact data and of poison payloads then skip, saying why.
    fn data_is_not_the_payload(&self) -> Option<&'static str> {
        None
    }
    /// Where a sent JSON payload is in its event: `data`, or where the kind puts it (S3:
    /// the inlined body of the object's description).
    fn payload_in<'e>(&self, event: &'e serde_json::Value) -> &'e serde_json::Value {
        &event["data"]
    }
    /// For a kind whose messages are not sent but made by the bridge on a schedule
    /// (calendar): `count` ticks one second apart, the first at `not_before` or later.
    /// None (the default): messages are sent with `send`.
    fn ticks(&self, _not_before: DateTime<Utc>, _count: u64) -> Option<Ticks> {
        None
    }
    /// Messages the source would deliver again once the daemon is gone (an AMQP queue's
    /// ready count: RabbitMQ requeues what a dead consumer left unacked), where the source
    /// can tell.
    async fn left_after_stop(&self) -> Option<u64> {
        None
    }
}

/// A schedule of ticks a check asked a kind for (`SourceUnderTest::ticks`).
pub struct Ticks {
    /// The bridge keys that make them.
    pub keys: String,
    /// The scheduled time of the first; the others follow a second apart.
    pub first: DateTime<Utc>,
}

/// Ticks come one a second: a check that would send more messages takes this many ticks.
const MAX_TICKS: u64 = 10;

/// The numbered messages `0..count` of a check: `{"n":N}` sent by an independent client,
/// or, for a kind that makes its messages on a schedule, ticks a second apart, numbered
/// by their scheduled second.
struct Numbered {
    count: u64,
    /// The first tick's time, for a kind that ticks.
    first_tick: Option<DateTime<Utc>>,
    /// Bridge keys the messages need (the ticks' schedule).
    keys: String,
}

impl Numbered {
    /// `count` messages; ticks begin at least `lead` from now, so that the daemon is up
    /// (and the check has done what must come first) before the first.
    fn plan<S: SourceUnderTest>(source: &S, count: u64, lead: Duration) -> Numbered {
        let count_ticks = count.min(MAX_TICKS);
        let not_before = Utc::now() + lead;
        match source.ticks(not_before, count_ticks) {
            None => Numbered {
                count,
                first_tick: None,
                keys: String::new(),
            },
            Some(ticks) => {
                assert!(
                    ticks.first >= not_before,
                    "ticks asked for from {not_before}"
                );
                Numbered {
                    count: count_ticks,
                    first_tick: Some(ticks.first),
                    keys: ticks.keys,
                }
            }
        }
    }

    /// The bridge's `extra` lines with the keys the messages need.
    fn with_keys(&self, extra: &str) -> String {
        format!("{}\n{extra}", self.keys)
    }

    /// Sends every message, `pace` apart; for ticks, waits until the last is due.
    async fn produce<S: SourceUnderTest>(&self, source: &S, pace: Duration) {
        match self.first_tick {
            None => {
                for n in 0..self.count {
                    source.send(format!("{{\"n\":{n}}}").as_bytes(), &[]).await;
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
            }
            Some(first) => {
                let last = first + chrono::TimeDelta::seconds(self.count as i64 - 1);
                if let Ok(left) = (last - Utc::now()).to_std() {
                    tokio::time::sleep(left).await;
                }
            }
        }
    }

    /// Asserts that no tick is due yet: what the check did so far (`done`) came before
    /// the traffic. Sent messages are only sent later anyway.
    fn assert_not_begun(&self, done: &str) {
        if let Some(first) = self.first_tick {
            let now = Utc::now();
            assert!(
                now < first,
                "{done} only at {now}, after the first tick ({first}): the daemon was slow, try again"
            );
        }
    }

    /// The number of an event made from one of the messages.
    fn number<S: SourceUnderTest>(&self, source: &S, event: &serde_json::Value) -> u64 {
        match self.first_tick {
            None => source.payload_in(event)["n"]
                .as_u64()
                .unwrap_or_else(|| panic!("a {{\"n\":N}} event: {event}")),
            Some(first) => {
                let time = event["time"].as_str().expect("a tick has its time");
                let time = DateTime::parse_from_rfc3339(time).unwrap();
                let n = (time.with_timezone(&Utc) - first).num_seconds();
                assert!(
                    u64::try_from(n).is_ok_and(|n| n < self.count),
                    "a tick outside the check's {} from {first}: {event}",
                    self.count
                );
                n as u64
            }
        }
    }

    /// The numbers of the events, checking that duplicates (redeliveries) carry the id of
    /// their first copy.
    fn with_stable_ids<S: SourceUnderTest>(
        &self,
        source: &S,
        received: &[Received],
    ) -> HashSet<u64> {
        let mut ids = std::collections::HashMap::new();
        for event in received {
            let json = event.json();
            let n = self.number(source, &json);
            let id = json["id"].as_str().unwrap().to_owned();
            let first = ids.entry(n).or_insert_with(|| id.clone());
            assert_eq!(*first, id, "a redelivery of message {n} got another id");
        }
        ids.into_keys().collect()
    }

    fn all(&self) -> HashSet<u64> {
        (0..self.count).collect()
    }
}

/// Says in the test's output that `check` does not apply to the kind, and why.
fn skipped<S: SourceUnderTest>(check: &str, source: &S, reason: &str) {
    eprintln!("{check}: skipped for {}: {reason}", source.kind());
}

/// The whole contract, one `#[tokio::test]` per check, for the source the expression
/// makes (afresh in each test): `conformance_suite!(Kafka::new(1).await);`. A kind tested
/// in several variants names each, and gets a module of tests per variant:
/// `conformance_suite!(mqtt5: Mqtt::new(Version::V5).await);` makes
/// `mqtt5::delivers_byte_exact_events` and so on.
// Test crates that include `common` without testing a kind leave it unused.
#[allow(unused_macros)]
macro_rules! conformance_suite {
    ($variant:ident: $source:expr) => {
        mod $variant {
            use super::*;

            $crate::common::conformance::conformance_suite!($source);
        }
    };
    ($source:expr) => {
        #[tokio::test]
        async fn delivers_byte_exact_events() {
            $crate::common::conformance::delivers_byte_exact(&$source).await;
        }

        #[tokio::test]
        async fn dead_letters_poison_and_keeps_going() {
            $crate::common::conformance::dead_letters_poison(&$source).await;
        }

        #[tokio::test]
        async fn metrics_match_traffic() {
            $crate::common::conformance::metrics_match_traffic(&$source).await;
        }

        #[tokio::test]
        async fn counts_unroutable_events() {
            $crate::common::conformance::counts_unroutable(&$source).await;
        }

        #[tokio::test]
        async fn at_least_once_through_exchange_outage() {
            $crate::common::conformance::at_least_once_through_exchange_outage(&$source).await;
        }

        #[tokio::test]
        async fn reload_under_traffic_leaves_untouched_bridges_alone() {
            $crate::common::conformance::reload_under_traffic(&$source).await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use conformance_suite;

/// A `[[bridge]]` table: common keys, the kind's keys, and `extra` lines.
pub fn bridge_table<S: SourceUnderTest>(source: &S, name: &str, extra: &str) -> String {
    format!(
        "{}[[bridge]]\nname = \"{name}\"\nkind = \"{}\"\n{}\n{extra}\n",
        source.config_prelude(),
        source.kind(),
        source.bridge_keys()
    )
}

fn routing_word(text: &str) -> String {
    super::type_word(text)
}

/// Checks one delivered event against the payload it was made from.
pub fn assert_event_matches(
    received: &Received,
    payload: &[u8],
    event_type: &str,
    subject: Option<&str>,
) {
    assert_eq!(
        received
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.to_string())
            .as_deref(),
        Some("application/cloudevents+json; charset=utf-8")
    );
    assert_eq!(*received.properties.delivery_mode(), Some(2), "persistent");
    // An independent parser accepts it as a CloudEvent v1.0.
    let event: cloudevents::Event =
        serde_json::from_slice(&received.body).expect("cloudevents-sdk parses the event");
    assert_eq!(event.specversion().as_str(), "1.0");
    assert!(!event.id().is_empty());
    assert_eq!(
        received
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .as_deref(),
        Some(event.id())
    );
    assert_eq!(event.ty(), event_type);
    assert_eq!(event.subject(), subject);
    assert!(event.time().is_some());
    assert!(!event.source().to_string().is_empty());
    let json = received.json();
    assert_eq!(json["tenant"], "acme");
    if serde_json::from_slice::<serde_json::Value>(payload).is_ok() {
        assert!(
            json.get("data_base64").is_none(),
            "JSON must never be base64"
        );
        let needle = [b"\"data\":".as_slice(), payload].concat();
        assert!(
            received
                .body
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "JSON data is not byte-exact in {}",
            String::from_utf8_lossy(&received.body)
        );
        assert_eq!(json["datacontenttype"], "application/json");
    } else {
        let data = base64::engine::general_purpose::STANDARD
            .decode(json["data_base64"].as_str().expect("data_base64"))
            .unwrap();
        assert_eq!(data, payload, "binary data is not byte-exact");
        assert_eq!(json["datacontenttype"], "application/octet-stream");
    }
}

/// Messages sent with an independent client arrive on a queue bound to the exchange, with
/// the right routing key, valid attributes and byte-exact data.
pub async fn delivers_byte_exact<S: SourceUnderTest>(source: &S) {
    if let Some(reason) = source.data_is_not_the_payload() {
        skipped("delivers_byte_exact", source, reason);
        return;
    }
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let daemon = Daemon::start(
        super::AMQP_URL,
        &exchange,
        &bridge_table(source, &bridge, ""),
    )
    .await;
    daemon.wait_ready().await;
    let payloads = sample_payloads();
    for (_, payload) in &payloads {
        source.send(payload, &[]).await;
    }
    let received = rabbit
        .take_exactly(&queue, payloads.len(), Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), payloads.len(), "log: {}", daemon.log());
    let event_type = source.expected_type();
    let subject = source.expected_subject();
    let expected_key = format!("event.acme.{bridge}.{}", routing_word(&event_type));
    for (received, (_, payload)) in received.iter().zip(&payloads) {
        assert_eq!(received.routing_key, expected_key);
        assert_event_matches(received, payload, &event_type, subject.as_deref());
    }
}

/// Poison input goes to the dead-letter route with its reason; the bridge keeps going.
pub async fn dead_letters_poison<S: SourceUnderTest>(source: &S) {
    if let Some(reason) = source.data_is_not_the_payload() {
        skipped("dead_letters_poison", source, reason);
        return;
    }
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let events = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.acme.{bridge}"))
        .await;
    let extra = "format = \"json\"\nmax_message_bytes = 1000";
    let daemon = Daemon::start(
        super::AMQP_URL,
        &exchange,
        &bridge_table(source, &bridge, extra),
    )
    .await;
    daemon.wait_ready().await;
    let not_json = b"{ this is not json".to_vec();
    let too_large = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)).into_bytes();
    source.send(&not_json, &[]).await;
    source.send(&too_large, &[]).await;
    source.send(br#"{"fine":true}"#, &[]).await;

    let oversized_dead_lettered = !source.refuses_oversized();
    let expected_dead = if oversized_dead_lettered { 2 } else { 1 };
    let dead_letters = rabbit
        .take_exactly(&dead, expected_dead, Duration::from_secs(20))
        .await;
    assert_eq!(dead_letters.len(), expected_dead, "log: {}", daemon.log());
    let by_reason = |reason: &str| {
        dead_letters
            .iter()
            .find(|d| d.header("x-bridge-reason").as_deref() == Some(reason))
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}: {dead_letters:?}"))
    };
    let invalid = by_reason("invalid_json");
    assert_eq!(
        invalid.body, not_json,
        "dead letter keeps the original bytes"
    );
    assert!(
        invalid
            .header("x-bridge-error")
            .unwrap()
            .contains("not JSON")
    );
    assert_eq!(
        invalid.header("x-bridge-name").as_deref(),
        Some(bridge.as_str())
    );
    if oversized_dead_lettered {
        let large = by_reason("too_large");
        assert_eq!(large.body, too_large);
        assert!(
            large
                .header("x-bridge-error")
                .unwrap()
                .contains("max_message_bytes")
        );
    }

    let good = rabbit
        .take_exactly(&events, 1, Duration::from_secs(20))
        .await;
    assert_eq!(good.len(), 1, "the bridge keeps going after poison");
    assert_eq!(good[0].json()["data"], serde_json::json!({"fine": true}));

    let kind = source.kind();
    let metrics = daemon.metrics();
    let dead_count = |reason: &str| {
        metrics.get(
            "bridge_events_dead_lettered_total",
            &[("bridge", &bridge), ("kind", kind), ("reason", reason)],
        )
    };
    assert_eq!(dead_count("invalid_json"), Some(1.0));
    let oversized = if oversized_dead_lettered { 1.0 } else { 0.0 };
    assert_eq!(dead_count("too_large"), Some(oversized));
    assert_eq!(dead_count("unresolved_template"), Some(0.0));
    assert_eq!(
        metrics.bridge("bridge_events_published_total", &bridge, kind),
        Some(1.0)
    );
    assert_eq!(
        metrics.bridge("bridge_messages_received_total", &bridge, kind),
        Some(2.0 + oversized)
    );

    // Dead-lettered messages were acked like the good one: with the daemon gone, the
    // source has nothing to deliver again.
    drop(daemon);
    super::eventually_async(Duration::from_secs(10), "poison acked too", || async {
        source.left_after_stop().await.is_none_or(|left| left == 0)
    })
    .await;
}

/// Every series exists at 0 from bridge start; counters match what was sent.
pub async fn metrics_match_traffic<S: SourceUnderTest>(source: &S) {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let messages = Numbered::plan(source, 25, Duration::from_secs(4));
    let daemon = Daemon::start(
        super::AMQP_URL,
        &exchange,
        &bridge_table(source, &bridge, &messages.with_keys("")),
    )
    .await;
    daemon.wait_ready().await;
    let kind = source.kind();

    let before = daemon.metrics();
    for name in [
        "bridge_messages_received_total",
        "bridge_events_published_total",
        "bridge_events_unroutable_total",
        "bridge_publish_retries_total",
        "bridge_in_flight",
        "bridge_restarts_total",
        "bridge_end_to_end_seconds",
    ] {
        assert_eq!(before.bridge(name, &bridge, kind), Some(0.0), "{name} at 0");
    }
    assert_eq!(before.bridge("bridge_up", &bridge, kind), Some(1.0));
    assert_eq!(before.get("bridge_exchange_up", &[]), Some(1.0));
    assert!(
        before
            .get("bridge_config_reloads_total", &[("result", "failure")])
            .is_some()
    );
    assert!(
        before
            .get("bridge_config_last_reload_success_timestamp_seconds", &[])
            .unwrap()
            > 0.0
    );
    messages.assert_not_begun("the series before the traffic were read");

    messages.produce(source, Duration::ZERO).await;
    let sent = messages.count as usize;
    let received = rabbit
        .take_exactly(&queue, sent, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), sent);
    let ids: HashSet<String> = received
        .iter()
        .map(|r| r.json()["id"].to_string())
        .collect();
    assert_eq!(ids.len(), sent, "distinct ids");
    super::eventually(Duration::from_secs(5), "in-flight back to 0", || {
        daemon.metrics().bridge("bridge_in_flight", &bridge, kind) == Some(0.0)
    })
    .await;
    let after = daemon.metrics();
    let sent = sent as f64;
    assert_eq!(
        after.bridge("bridge_messages_received_total", &bridge, kind),
        Some(sent)
    );
    assert_eq!(
        after.bridge("bridge_events_published_total", &bridge, kind),
        Some(sent)
    );
    assert_eq!(
        after.bridge("bridge_end_to_end_seconds", &bridge, kind),
        Some(sent)
    );
    assert_eq!(
        after.bridge("bridge_events_unroutable_total", &bridge, kind),
        Some(0.0)
    );
}

/// Events nobody is bound for are confirmed, counted as unroutable, and acked.
pub async fn counts_unroutable<S: SourceUnderTest>(source: &S) {
    let exchange = unique("ex");
    let bridge = unique("b");
    let lonely = Numbered::plan(source, 1, Duration::from_secs(2));
    let daemon = Daemon::start(
        super::AMQP_URL,
        &exchange,
        &bridge_table(source, &bridge, &lonely.with_keys("")),
    )
    .await;
    daemon.wait_ready().await;
    lonely.produce(source, Duration::ZERO).await;
    let kind = source.kind();
    super::eventually(Duration::from_secs(10), "unroutable counted", || {
        daemon
            .metrics()
            .bridge("bridge_events_unroutable_total", &bridge, kind)
            == Some(1.0)
    })
    .await;
    assert_eq!(
        daemon
            .metrics()
            .bridge("bridge_events_published_total", &bridge, kind),
        Some(1.0)
    );
}

/// With the exchange unreachable (a proxy of the test's own is cut) nothing is acked and
/// pulling stops within max_in_flight; once it is back, every message arrives.
pub async fn at_least_once_through_exchange_outage<S: SourceUnderTest>(source: &S) {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let messages = Numbered::plan(source, 30, Duration::from_secs(6));
    let table = bridge_table(source, &bridge, &messages.with_keys("max_in_flight = 10"));
    let daemon = Daemon::start(&proxy.amqp_url(), &exchange, &table).await;
    daemon.wait_ready().await;
    let kind = source.kind();

    proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    messages.assert_not_begun("the exchange was seen down");
    messages.produce(source, Duration::ZERO).await;
    let sent = messages.count;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.bridge("bridge_events_published_total", &bridge, kind),
        Some(0.0)
    );
    let pulled = metrics
        .bridge("bridge_messages_received_total", &bridge, kind)
        .unwrap();
    if source.takes_while_exchange_down() {
        assert!(
            (1.0..=10.0).contains(&pulled),
            "stops pulling by max_in_flight (backpressure): pulled {pulled}"
        );
    } else {
        assert_eq!(pulled, 0.0, "refuses everything while the exchange is down");
    }
    if let Some(pending) = source.pending_at_source(&bridge).await {
        assert_eq!(pending, sent, "nothing acked while the exchange is down");
    }
    let (code, body) = http_get(daemon.admin_port, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready while the exchange is down");
    assert!(body.contains("exchange"), "{body}");

    proxy.restore();
    let received = rabbit
        .take_exactly(&queue, sent as usize, Duration::from_secs(30))
        .await;
    assert_eq!(
        messages.with_stable_ids(source, &received),
        messages.all(),
        "every message arrives; log: {}",
        daemon.log()
    );
    super::eventually_async(
        Duration::from_secs(10),
        "all acked at the source",
        || async {
            source
                .pending_at_source(&bridge)
                .await
                .is_none_or(|p| p == 0)
        },
    )
    .await;
    assert!(
        daemon
            .metrics()
            .bridge("bridge_events_published_total", &bridge, kind)
            .unwrap()
            >= sent as f64
    );
}

/// While one bridge takes a steady stream, another (core NATS) is added, changed and
/// removed by file edits and SIGHUP, and an invalid edit is refused: the busy bridge is
/// never restarted and delivers every message.
pub async fn reload_under_traffic<S: SourceUnderTest>(source: &S) {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let steady = unique("steady");
    let other = unique("other");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{steady}.#"))
        .await;
    let messages = Numbered::plan(source, 150, Duration::from_secs(2));
    let steady_table = bridge_table(source, &steady, &messages.with_keys(""));
    let other_subject = format!("{}.other", unique("t").replace('-', "_"));
    let other_table = |tenant: &str| {
        format!(
            "[[bridge]]\nname = \"{other}\"\nkind = \"nats\"\ntenant = \"{tenant}\"\nurl = \"{}\"\nsubject = \"{other_subject}\"\n",
            super::NATS_URL
        )
    };
    let daemon = Daemon::start(super::AMQP_URL, &exchange, &steady_table).await;
    daemon.wait_running(&steady).await;
    let before = daemon.bridge_status(&steady).unwrap();
    let reloads = |result: &str| {
        daemon
            .metrics()
            .get("bridge_config_reloads_total", &[("result", result)])
            .unwrap()
    };

    // The steady stream while the config changes: 150 messages over about 6 seconds
    // (ticks: one a second).
    let total = messages.count;
    let steady_stream = messages.produce(source, Duration::from_millis(40));
    let reconfigure = async {
        // Add by editing the file.
        daemon.write_bridges(&format!("{steady_table}\n{}", other_table("acme")));
        daemon.wait_running(&other).await;
        // Change by editing the file and sending SIGHUP.
        daemon.write_bridges(&format!("{steady_table}\n{}", other_table("globex")));
        daemon.signal(libc::SIGHUP);
        eventually(Duration::from_secs(10), "changed bridge restarted", || {
            daemon
                .bridge_status(&other)
                .is_some_and(|b| b["tenant"] == "globex" && b["status"]["state"] == "running")
        })
        .await;
        // SIGHUP alone reloads too (nothing changed: nothing restarts).
        let successes = reloads("success");
        daemon.signal(libc::SIGHUP);
        eventually(Duration::from_secs(10), "SIGHUP reload", || {
            reloads("success") > successes
        })
        .await;
        // An invalid edit keeps everything running and is reported.
        daemon.write_raw(&format!("{steady_table}\nthis is = = not toml"));
        eventually(Duration::from_secs(10), "failed reload reported", || {
            reloads("failure") >= 1.0 && !daemon.bridges()["config"]["last_error"].is_null()
        })
        .await;
        assert_eq!(
            daemon.bridge_status(&other).unwrap()["status"]["state"],
            "running"
        );
        // Remove by editing the file (which also clears the error).
        daemon.write_bridges(&steady_table);
        eventually(Duration::from_secs(10), "removed bridge gone", || {
            daemon.bridge_status(&other).is_none()
        })
        .await;
        assert!(daemon.bridges()["config"]["last_error"].is_null());
        assert!(
            !daemon.metrics_text().contains(&other),
            "removed bridge's series are gone"
        );
    };
    tokio::join!(steady_stream, reconfigure);

    let received = rabbit
        .take_exactly(&queue, total as usize, Duration::from_secs(30))
        .await;
    assert_eq!(
        messages.with_stable_ids(source, &received),
        messages.all(),
        "the untouched bridge delivered every message"
    );
    assert_eq!(received.len() as u64, total, "and nothing twice");
    let after = daemon.bridge_status(&steady).unwrap();
    assert_eq!(after["counters"]["restarts"], 0);
    assert_eq!(
        after["status"]["connects"], 1,
        "same source connection throughout"
    );
    assert_eq!(
        after["status"]["started_at"],
        before["status"]["started_at"]
    );
    assert_eq!(
        daemon
            .metrics()
            .bridge("bridge_restarts_total", &steady, source.kind()),
        Some(0.0)
    );
}
