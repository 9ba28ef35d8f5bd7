//! `kind = "jetstream"`: the shared conformance checks, at-least-once through an exchange
//! outage, redelivery with the same id, and reload under traffic.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::conformance::{SourceUnderTest, bridge_table, conformance_suite};
use common::poison::{self, Carries, PoisonMessage, Sent};
use common::proxy::Proxy;
use common::{Daemon, Rabbit, eventually, eventually_async, unique};

struct JetStream {
    stream: String,
    subject: String,
    context: jetstream::Context,
}

impl JetStream {
    /// A fresh in-memory stream for this test.
    async fn new() -> Self {
        let stream = unique("S").replace('-', "_");
        let subject = format!("{}.orders", stream.to_lowercase());
        let context = jetstream::new(common::nats().await);
        context
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{}.>", stream.to_lowercase())],
                storage: jetstream::stream::StorageType::Memory,
                max_age: Duration::from_secs(900),
                ..Default::default()
            })
            .await
            .expect("create stream");
        JetStream {
            stream,
            subject,
            context,
        }
    }

    async fn consumer_info(&self, bridge: &str) -> jetstream::consumer::Info {
        let stream = self.context.get_stream(&self.stream).await.unwrap();
        stream
            .consumer_info(format!("broker-bridge-{bridge}"))
            .await
            .unwrap()
    }
}

impl SourceUnderTest for JetStream {
    fn kind(&self) -> &'static str {
        "jetstream"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    fn bridge_keys(&self) -> String {
        format!(
            "url = \"{}\"\nstream = \"{}\"",
            common::NATS_URL,
            self.stream
        )
    }
    fn subject(&self) -> String {
        self.subject.clone()
    }
    async fn send(&self, payload: &[u8], headers: &[(&str, &str)]) {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        self.context
            .publish_with_headers(self.subject.clone(), map, payload.to_vec().into())
            .await
            .unwrap()
            .await
            .expect("stored in the stream");
    }
    async fn pending_at_source(&self, bridge: &str) -> Option<u64> {
        let info = self.consumer_info(bridge).await;
        Some(info.num_ack_pending as u64 + info.num_pending)
    }
    fn carries(&self) -> Carries {
        Carries {
            // No `max_id`: the event id is `<stream>:<sequence>`, whatever the message
            // carries (`Nats-Msg-Id` is JetStream's de-duplication id, not the event's).
            headers: true,
            // NATS header names are tokens of any length.
            max_header_name: 4096,
            // The protocol takes any bytes but CR and LF in a header value; async-nats
            // does not send them, so the corpus uses the raw protocol for these.
            binary_header_values: true,
            control_header_values: true,
            max_content_type: 4096,
            ..Default::default()
        }
    }
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        let (headers, text) = poison::nats_headers(message, false);
        if text {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), std::str::from_utf8(v).unwrap()))
                .collect();
            self.send(&message.payload, &headers).await;
        } else {
            poison::nats_publish_raw(&self.subject, &headers, &message.payload, true).await;
        }
        Sent::default()
    }
}

// The shared contract (tests/common/conformance.rs).
conformance_suite!(JetStream::new().await);

/// A publish whose confirm is lost is published again after reconnecting, with the same
/// id; the source is acked only after the second confirm.
#[tokio::test]
async fn lost_confirm_republishes_with_the_same_id() {
    let source = JetStream::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let daemon = Daemon::start(
        &proxy.amqp_url(),
        &exchange,
        &bridge_table(&source, &bridge, ""),
    )
    .await;
    daemon.wait_ready().await;

    proxy.drop_replies();
    source.send(br#"{"once":"twice"}"#, &[]).await;
    let first = rabbit.take(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1, "RabbitMQ routed the publish");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = source.consumer_info(&bridge).await;
    assert_eq!(info.ack_floor.stream_sequence, 0, "no confirm, no ack");

    // Break the half-open connection; the daemon reconnects and publishes again.
    proxy.cut();
    proxy.restore();
    let second = rabbit.take(&queue, 1, Duration::from_secs(30)).await;
    assert_eq!(
        second.len(),
        1,
        "republished after the lost confirm; log: {}",
        daemon.log()
    );
    assert_eq!(first[0].json()["id"], format!("{}:1", source.stream));
    assert_eq!(
        first[0].json()["id"],
        second[0].json()["id"],
        "a redelivery keeps its id"
    );
    assert_eq!(first[0].body, second[0].body, "and is the same event");
    eventually_async(
        Duration::from_secs(10),
        "acked after the second confirm",
        || async {
            source
                .consumer_info(&bridge)
                .await
                .ack_floor
                .stream_sequence
                == 1
        },
    )
    .await;
}

// Editing a bridge's source settings (issue 21): a JetStream consumer is never moved.

/// The bridge table of a jetstream bridge on `source` with a named consumer.
fn consumer_bridge(source: &JetStream, name: &str, consumer: &str, extra: &str) -> String {
    format!(
        "[[bridge]]\nname = \"{name}\"\nkind = \"jetstream\"\n{}\nconsumer = \"{consumer}\"\n{extra}\n",
        source.bridge_keys()
    )
}

impl JetStream {
    async fn named_consumer(&self, consumer: &str) -> jetstream::consumer::Info {
        let stream = self.context.get_stream(&self.stream).await.unwrap();
        stream.consumer_info(consumer).await.unwrap()
    }

    /// Messages the consumer still holds: not yet delivered, or delivered and unacked.
    async fn held(&self, consumer: &str) -> u64 {
        let info = self.named_consumer(consumer).await;
        info.num_pending + info.num_ack_pending as u64
    }

    /// Publishes `count` numbered messages on `subject`.
    async fn send_many(&self, subject: &str, count: usize) {
        for n in 0..count {
            self.context
                .publish(subject.to_owned(), format!("{{\"n\":{n}}}").into())
                .await
                .unwrap()
                .await
                .expect("stored in the stream");
        }
    }

    /// The ids `<stream>:<seq>` of stream sequences `first..=last`.
    fn ids(&self, first: u64, last: u64) -> Vec<String> {
        (first..=last)
            .map(|seq| format!("{}:{seq}", self.stream))
            .collect()
    }
}

fn sorted_ids(received: &[common::Received]) -> Vec<String> {
    let mut ids: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort_by_key(|id| id.rsplit(':').next().unwrap().parse::<u64>().unwrap());
    ids
}

/// The bridge's `last_error` in `/bridges`, once it mentions `needle`.
async fn wait_bridge_error(daemon: &Daemon, bridge: &str, needle: &str) -> String {
    let mut error = String::new();
    eventually(
        Duration::from_secs(20),
        "the bridge reports the refusal",
        || {
            error = daemon
                .bridge_status(bridge)
                .and_then(|s| s["status"]["last_error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            error.contains(needle)
        },
    )
    .await;
    error
}

/// The scenario of issue 21: a bridge on a named consumer with a narrow filter, which
/// has published the stream's first 10 messages; the edit widens the filter.
struct FilterEdit {
    source: JetStream,
    rabbit: Rabbit,
    bridge: String,
    consumer: String,
    queue: String,
    daemon: Daemon,
}

impl FilterEdit {
    /// Starts the daemon (publishing through `exchange_url`) and delivers the first 10.
    async fn start(exchange_url: &str) -> Self {
        let source = JetStream::new().await;
        let rabbit = Rabbit::connect().await;
        let exchange = unique("ex");
        let bridge = unique("b");
        let consumer = unique("bb").replace('-', "_");
        let queue = rabbit
            .bind(&exchange, &format!("event.acme.{bridge}.#"))
            .await;
        let narrow = consumer_bridge(&source, &bridge, &consumer, &filters(&source).0);
        let daemon = Daemon::start(exchange_url, &exchange, &narrow).await;
        daemon.wait_ready().await;
        source.send_many(&source.subject, 10).await;
        let first = rabbit
            .take_exactly(&queue, 10, Duration::from_secs(20))
            .await;
        assert_eq!(sorted_ids(&first), source.ids(1, 10));
        FilterEdit {
            source,
            rabbit,
            bridge,
            consumer,
            queue,
            daemon,
        }
    }
}

/// The `filter_subject` lines of the scenario: the narrow one it starts with, and the
/// whole stream.
fn filters(source: &JetStream) -> (String, String) {
    (
        format!("filter_subject = \"{}\"", source.subject),
        format!("filter_subject = \"{}.>\"", source.stream.to_lowercase()),
    )
}

/// The sequence of issue 21 with a restart: 10 delivered under a narrow filter, 100
/// more pending, the filter widened while the daemon is down. The bridge refuses to
/// touch the consumer (and says why, in `/bridges`, `/readyz` and `check --online`);
/// the 100 stay pending; putting the filter back delivers them all.
#[tokio::test]
async fn widened_filter_on_restart_is_refused_and_nothing_is_skipped() {
    let FilterEdit {
        source,
        rabbit,
        bridge,
        consumer,
        queue,
        mut daemon,
    } = FilterEdit::start(common::AMQP_URL).await;
    let (narrow, wide) = filters(&source);
    eventually_async(Duration::from_secs(10), "the 10 acked", || async {
        source
            .named_consumer(&consumer)
            .await
            .ack_floor
            .stream_sequence
            == 10
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));

    source.send_many(&source.subject, 100).await;
    assert_eq!(source.held(&consumer).await, 100);
    daemon.write_bridges(&consumer_bridge(&source, &bridge, &consumer, &wide));

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_broker-bridge"))
        .args(["check", "--online", "-c"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        check.status.code(),
        Some(1),
        "check --online refuses: {said}"
    );
    assert!(
        said.contains("key `filter_subject`") && said.contains(&consumer) && said.contains("100"),
        "names the key, the consumer and what is pending: {said}"
    );

    daemon.restart().await;
    let error = wait_bridge_error(&daemon, &bridge, "filter_subject").await;
    assert!(error.contains(&consumer), "{error}");
    let (code, body) = common::http_get(daemon.admin_port, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready while the bridge is refused: {body}");
    assert!(
        rabbit
            .take(&queue, 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "nothing published under the refused filter"
    );
    let info = source.named_consumer(&consumer).await;
    assert_eq!(
        info.config.filter_subject, source.subject,
        "filter unchanged"
    );
    assert_eq!(info.ack_floor.stream_sequence, 10, "position unchanged");
    assert_eq!(
        info.num_pending + info.num_ack_pending as u64,
        100,
        "all still pending"
    );

    // The operator keeps the old filter: the reload is accepted and all 100 arrive.
    daemon.write_bridges(&consumer_bridge(&source, &bridge, &consumer, &narrow));
    let rest = rabbit
        .take_exactly(&queue, 100, Duration::from_secs(30))
        .await;
    assert_eq!(
        sorted_ids(&rest),
        source.ids(11, 110),
        "log: {}",
        daemon.log()
    );
    eventually_async(Duration::from_secs(10), "all acked", || async {
        source.held(&consumer).await == 0
    })
    .await;
}

/// The same edit through a hot reload while 100 messages are pending (the exchange is
/// cut, so the bridge is not pulling): the reload is refused, the running bridge keeps
/// its filter and delivers the 100 once the exchange is back.
#[tokio::test]
async fn widened_filter_on_reload_is_refused_and_the_old_bridge_keeps_delivering() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let FilterEdit {
        source,
        rabbit,
        bridge,
        consumer,
        queue,
        daemon,
    } = FilterEdit::start(&proxy.amqp_url()).await;
    let (_, wide) = filters(&source);

    proxy.cut();
    source.send_many(&source.subject, 100).await;
    daemon.write_bridges(&consumer_bridge(&source, &bridge, &consumer, &wide));
    let mut refused = String::new();
    eventually(Duration::from_secs(20), "the reload is refused", || {
        refused = daemon.bridges()["config"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        refused.contains("filter_subject")
    })
    .await;
    assert!(
        refused.contains(&bridge) && refused.contains(&consumer),
        "names the bridge and the consumer: {refused}"
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.get("bridge_config_reloads_total", &[("result", "failure")]),
        Some(1.0)
    );
    let info = source.named_consumer(&consumer).await;
    assert_eq!(
        info.config.filter_subject, source.subject,
        "filter unchanged"
    );
    assert_eq!(
        info.num_pending + info.num_ack_pending as u64,
        100,
        "all still pending"
    );

    proxy.restore();
    let rest = rabbit
        .take_exactly(&queue, 100, Duration::from_secs(30))
        .await;
    assert_eq!(
        sorted_ids(&rest),
        source.ids(11, 110),
        "log: {}",
        daemon.log()
    );
    let status = daemon.bridge_status(&bridge).unwrap();
    assert_eq!(status["status"]["state"], "running");
    eventually_async(Duration::from_secs(10), "all acked", || async {
        source.held(&consumer).await == 0
    })
    .await;
}

/// A consumer an operator made (no filter, its own max_ack_pending and ack_wait, 2,000
/// messages pending) is consumed as it is and never altered; a bridge that asks it for
/// another filter is refused.
#[tokio::test]
async fn operator_consumer_is_used_as_it_is_and_never_altered() {
    let source = JetStream::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let consumer = unique("ops").replace('-', "_");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let stream = source.context.get_stream(&source.stream).await.unwrap();
    let operator = jetstream::consumer::pull::Config {
        durable_name: Some(consumer.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_ack_pending: 4096,
        ..Default::default()
    };
    stream.create_consumer(operator).await.unwrap();
    let before = source.named_consumer(&consumer).await.config;
    source.send_many(&source.subject, 2000).await;

    let daemon = Daemon::start(
        common::AMQP_URL,
        &exchange,
        &consumer_bridge(&source, &bridge, &consumer, ""),
    )
    .await;
    daemon.wait_ready().await;
    let received = rabbit
        .take_exactly(&queue, 2000, Duration::from_secs(60))
        .await;
    assert_eq!(sorted_ids(&received), source.ids(1, 2000));
    eventually_async(Duration::from_secs(10), "all acked", || async {
        source.held(&consumer).await == 0
    })
    .await;
    let after = source.named_consumer(&consumer).await.config;
    assert_eq!(after.max_ack_pending, 4096);
    assert_eq!(after.ack_wait, Duration::from_secs(60));
    assert_eq!(after.description, before.description);
    assert_eq!(after.filter_subject, before.filter_subject);
    assert!(
        daemon.log().contains("used as it is"),
        "the differences are logged: {}",
        daemon.log()
    );

    // Asking the operator's consumer for a filter is refused; it stays as it was.
    source.send_many(&source.subject, 5).await;
    let narrow = format!("filter_subject = \"{}\"", source.subject);
    daemon.write_bridges(&consumer_bridge(&source, &bridge, &consumer, &narrow));
    eventually(Duration::from_secs(20), "the reload is refused", || {
        daemon.bridges()["config"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("filter_subject") && e.contains(&consumer))
    })
    .await;
    let rest = rabbit
        .take_exactly(&queue, 5, Duration::from_secs(20))
        .await;
    assert_eq!(
        sorted_ids(&rest),
        source.ids(2001, 2005),
        "the old bridge goes on"
    );
    let after = source.named_consumer(&consumer).await.config;
    assert_eq!(after.filter_subject, "", "filter unchanged");
    assert_eq!(after.max_ack_pending, 4096);
}

/// Our own consumer gets a new `max_ack_pending` (from `max_in_flight`) and `ack_wait`
/// in place, with 300 messages pending: its filter and position stay, all 300 arrive.
#[tokio::test]
async fn our_consumer_takes_a_new_max_in_flight_without_moving() {
    let source = JetStream::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let consumer = unique("bb").replace('-', "_");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let filter = format!("filter_subject = \"{}\"", source.subject);
    let mut daemon = Daemon::start(
        common::AMQP_URL,
        &exchange,
        &consumer_bridge(
            &source,
            &bridge,
            &consumer,
            &format!("{filter}\nmax_in_flight = 64"),
        ),
    )
    .await;
    daemon.wait_ready().await;
    let created = source.named_consumer(&consumer).await.config;
    assert_eq!(created.max_ack_pending, 64);
    assert!(
        created
            .description
            .as_deref()
            .is_some_and(|d| d.contains("broker-bridge")),
        "marked as ours: {:?}",
        created.description
    );
    assert_eq!(daemon.terminate(), Some(0));

    source.send_many(&source.subject, 300).await;
    daemon.write_bridges(&consumer_bridge(
        &source,
        &bridge,
        &consumer,
        &format!("{filter}\nmax_in_flight = 16\nack_wait = \"45s\""),
    ));
    daemon.restart().await;
    daemon.wait_ready().await;
    let received = rabbit
        .take_exactly(&queue, 300, Duration::from_secs(60))
        .await;
    assert_eq!(sorted_ids(&received), source.ids(1, 300));
    let updated = source.named_consumer(&consumer).await.config;
    assert_eq!(updated.max_ack_pending, 16);
    assert_eq!(updated.ack_wait, Duration::from_secs(45));
    assert_eq!(updated.filter_subject, source.subject);
    assert_eq!(updated.deliver_policy, created.deliver_policy);
    eventually_async(Duration::from_secs(10), "all acked", || async {
        source.held(&consumer).await == 0
    })
    .await;
}

/// An exchange that exists with other settings (here an operator's fanout exchange) is
/// never changed: the daemon reports RabbitMQ's refusal, pulls nothing, and the
/// messages wait in the stream until the config says `declare = false`; then they all
/// reach the queue the operator bound.
#[tokio::test]
async fn an_existing_exchange_with_other_settings_is_never_changed() {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;

    let source = JetStream::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    rabbit
        .channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = unique("q");
    rabbit
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::from(std::collections::BTreeMap::from([(
                "x-expires".into(),
                lapin::types::AMQPValue::LongInt(600_000),
            )])),
        )
        .await
        .unwrap();
    rabbit
        .channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    source.send_many(&source.subject, 5).await;

    let daemon = Daemon::start(
        common::AMQP_URL,
        &exchange,
        &bridge_table(&source, &bridge, ""),
    )
    .await;
    let mut error = String::new();
    eventually(
        Duration::from_secs(20),
        "the exchange refusal is shown",
        || {
            error = daemon.bridges()["exchange"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            error.contains("inequivalent arg")
        },
    )
    .await;
    assert!(error.contains(&exchange), "names the exchange: {error}");
    let (code, _) = common::http_get(daemon.admin_port, "/readyz").unwrap();
    assert_eq!(code, 503);
    let consumer = format!("broker-bridge-{bridge}");
    eventually_async(
        Duration::from_secs(20),
        "the consumer holds all 5",
        || async {
            let stream = source.context.get_stream(&source.stream).await.unwrap();
            stream
                .consumer_info(&consumer)
                .await
                .is_ok_and(|info| info.num_pending == 5 && info.num_ack_pending == 0)
        },
    )
    .await;

    // The operator's exchange is still a fanout: a passive declare of it as such passes.
    let check = rabbit.connection.create_channel().await.unwrap();
    check
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the exchange kept its type and settings");

    // Using it as it is: every pending message arrives at the operator's queue.
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    daemon.write_raw(&config.replace(
        "confirm_timeout = \"5s\"",
        "confirm_timeout = \"5s\"\ndeclare = false",
    ));
    let received = rabbit
        .take_exactly(&queue, 5, Duration::from_secs(30))
        .await;
    assert_eq!(
        sorted_ids(&received),
        source.ids(1, 5),
        "log: {}",
        daemon.log()
    );
}

// What the exchange refuses (issue 13): permanent refusals never loop and never take the
// shared connection down.

/// A queue that refuses every message routed to it (RabbitMQ nacks the publish).
async fn refusing_queue(rabbit: &Rabbit, exchange: &str, pattern: &str) {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    rabbit.declare_exchange(exchange).await;
    let queue = unique("full");
    let arguments = FieldTable::from(std::collections::BTreeMap::from([
        ("x-max-length".into(), AMQPValue::LongInt(0)),
        (
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        ),
        ("x-expires".into(), AMQPValue::LongInt(600_000)),
    ]));
    rabbit
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    rabbit
        .channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// An event the exchange nacks is dead-lettered as `rejected_by_exchange` and its
/// message acked; a bridge whose dead letter is nacked too stops as `failed` with its
/// message still at the source, while the other bridge on the same connection goes on.
#[tokio::test]
async fn refused_events_are_dead_lettered_and_a_refused_dead_letter_fails_only_its_bridge() {
    let (refused, stuck) = (JetStream::new().await, JetStream::new().await);
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let (bridge, failing) = (unique("b"), unique("f"));
    refusing_queue(&rabbit, &exchange, &format!("event.acme.{bridge}.#")).await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.acme.{bridge}"))
        .await;
    refusing_queue(&rabbit, &exchange, &format!("event.acme.{failing}.#")).await;
    refusing_queue(&rabbit, &exchange, &format!("deadletter.acme.{failing}")).await;
    let bridges = bridge_table(&refused, &bridge, "") + &bridge_table(&stuck, &failing, "");
    let daemon = Daemon::start(common::AMQP_URL, &exchange, &bridges).await;
    daemon.wait_ready().await;

    refused.send_many(&refused.subject, 3).await;
    let letters = rabbit.take_exactly(&dead, 3, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 3, "log: {}", daemon.log());
    for letter in &letters {
        assert_eq!(
            letter.header("x-bridge-reason").as_deref(),
            Some("rejected_by_exchange")
        );
    }
    eventually_async(
        Duration::from_secs(10),
        "the refused messages acked",
        || async { refused.pending_at_source(&bridge).await == Some(0) },
    )
    .await;

    stuck.send_many(&stuck.subject, 1).await;
    eventually(Duration::from_secs(20), "the bridge failed", || {
        daemon
            .bridge_status(&failing)
            .is_some_and(|b| b["status"]["state"] == "failed")
    })
    .await;
    let status = daemon.bridge_status(&failing).unwrap();
    assert!(
        status["status"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused a dead letter")),
        "{status}"
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.bridge("bridge_failed", &failing, "jetstream"),
        Some(1.0)
    );
    assert_eq!(
        metrics.bridge("bridge_failed", &bridge, "jetstream"),
        Some(0.0)
    );
    assert_eq!(
        stuck.pending_at_source(&failing).await,
        Some(1),
        "not acked"
    );

    // The shared connection stayed up: the other bridge goes on.
    refused.send_many(&refused.subject, 1).await;
    let more = rabbit.take_exactly(&dead, 1, Duration::from_secs(20)).await;
    assert_eq!(more.len(), 1);
    assert_eq!(
        daemon.bridges()["exchange"]["connects"],
        1,
        "never reconnected"
    );
}

/// An event that would be larger than `[exchange] max_message_size` is never sent (it
/// would make RabbitMQ close the shared channel): it is dead-lettered as `too_large`,
/// and so is a message over `max_message_bytes`, each as a bounded envelope: the first
/// `deadletter_sample_bytes`, the full size and a SHA-256.
#[tokio::test]
async fn oversized_messages_are_dead_lettered_as_bounded_envelopes() {
    use sha2::Digest;
    let source = JetStream::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.acme.{bridge}"))
        .await;
    let bridges = bridge_table(&source, &bridge, "max_message_bytes = 16000");
    let daemon = Daemon::start_with_text(
        tempfile::tempdir().unwrap(),
        common::AMQP_URL,
        &exchange,
        |port| {
            common::config_text(common::AMQP_URL, &exchange, port, &bridges)
                .replace(
                    "confirm_timeout = \"5s\"",
                    "confirm_timeout = \"5s\"\nmax_message_size = 16384",
                )
                .replace(
                    "[defaults]\n",
                    "[defaults]\ndeadletter_sample_bytes = 1024\n",
                )
        },
    )
    .await;
    daemon.wait_ready().await;
    // Bytes, not JSON: base64 in the structured event makes it larger than 16384.
    let binary: Vec<u8> = (0..15_000u32).map(|i| (i % 251) as u8).collect();
    let json = format!("{{\"pad\":\"{}\"}}", "x".repeat(16_100));
    for payload in [binary.clone(), json.clone().into_bytes()] {
        source
            .send(&payload, &[("Content-Type", "application/octet-stream")])
            .await;
    }
    let letters = rabbit.take_exactly(&dead, 2, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 2, "log: {}", daemon.log());
    // The two take different paths (the binary one is refused at the publisher, the
    // JSON one at normalize), so their dead letters may come in either order.
    for letter in &letters {
        let size = letter.header("x-bridge-original-size");
        let original: &[u8] = if size == Some(binary.len().to_string()) {
            &binary
        } else {
            json.as_bytes()
        };
        assert_eq!(
            letter.header("x-bridge-reason").as_deref(),
            Some("too_large")
        );
        assert_eq!(letter.body, original[..1024], "the first bytes");
        assert_eq!(
            letter.header("x-bridge-original-size"),
            Some(original.len().to_string())
        );
        let digest: String = sha2::Sha256::digest(original)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(letter.header("x-bridge-original-sha256"), Some(digest));
        assert_eq!(letter.header("x-bridge-truncated").as_deref(), Some("true"));
    }
    eventually_async(Duration::from_secs(10), "both acked", || async {
        source.pending_at_source(&bridge).await == Some(0)
    })
    .await;
    assert_eq!(
        daemon.bridges()["exchange"]["connects"],
        1,
        "never reconnected"
    );
}

/// The poison corpus (issue 13) through a JetStream stream: long, binary and
/// control-byte headers, content types, CloudEvents and bodies at the limits; every
/// message is acked (nothing pending for the consumer afterwards).
/// A header that is not UTF-8 used to close async-nats's connection on every
/// redelivery, forever (fixed in `vendor/async-nats`).
#[tokio::test]
async fn poison_corpus_is_published_or_dead_lettered() {
    poison::poison_corpus(&JetStream::new().await).await;
}
