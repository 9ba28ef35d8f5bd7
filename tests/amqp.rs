//! `kind = "amqp"`: the shared conformance checks, plus what is special about consuming a
//! RabbitMQ queue: redelivery after SIGKILL with stable ids, inbound CloudEvents, property
//! mapping, quorum queues, re-declaring a deleted queue, a source outage, the loop guard,
//! and edits of queue, bindings and queue arguments with messages pending (issue 21).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::conformance::{SourceUnderTest, bridge_table, conformance_suite};
use common::poison::{self, Carries, PoisonMessage, Sent};
use common::proxy::Proxy;
use common::{
    AMQP_URL, Daemon, Rabbit, Received, config_text, eventually, eventually_async, unique,
};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};

/// Queue arguments every test queue gets: RabbitMQ deletes it ten minutes after its last
/// use (and with it the binding, and so the auto-delete source exchange).
const EXPIRES_MS: i64 = 600_000;

/// A source exchange of the test's own (a "legacy application" publishing to RabbitMQ),
/// and the queue the bridge consumes, bound to it.
struct Amqp {
    exchange: String,
    queue: String,
    routing_key: String,
    /// More kind keys for the bridge (e.g. quorum queue arguments).
    queue_keys: String,
    connection: Connection,
    channel: lapin::Channel,
}

impl Amqp {
    /// A source whose queue and binding exist before the bridge starts, so nothing sent
    /// early is unroutable. The bridge declares and binds them again, identically.
    async fn new() -> Self {
        let source = Amqp::without_queue("").await;
        source.declare_queue(FieldTable::default()).await;
        source
    }

    /// Only the source exchange: the bridge declares and binds the queue itself.
    async fn without_queue(queue_keys: &str) -> Self {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/brokers.sh)");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let exchange = unique("legacy");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Amqp {
            exchange,
            queue: unique("orders"),
            routing_key: "legacy.orders.created".into(),
            queue_keys: queue_keys.to_owned(),
            connection,
            channel,
        }
    }

    fn arguments(extra: FieldTable) -> FieldTable {
        let mut arguments = extra;
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
        arguments
    }

    async fn declare_queue(&self, extra_arguments: FieldTable) {
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Amqp::arguments(extra_arguments),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "legacy.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Publishes with confirms; true when a queue took the message.
    async fn publish(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> bool {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                properties.with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        match confirm {
            Confirmation::Ack(None) => true,
            Confirmation::Ack(Some(_)) => false,
            other => panic!("RabbitMQ did not take the message: {other:?}"),
        }
    }

    /// Publishes, asserting that the queue took it.
    async fn send_with(&self, payload: &[u8], properties: BasicProperties) {
        assert!(
            self.publish(&self.routing_key, payload, properties).await,
            "the source queue is bound"
        );
    }

    /// Messages ready in the queue (not counting those a consumer holds unacked). A
    /// fresh channel each time: a passive declare of a missing queue closes it.
    async fn ready(&self) -> Option<u32> {
        self.ready_in(&self.queue).await
    }

    /// `ready` for another queue.
    async fn ready_in(&self, queue: &str) -> Option<u32> {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = channel.close(200, "done".into()).await;
        Some(queue.message_count())
    }
}

/// Sends `{"n":N}` with the message_id `<run>-<N>`, so redeliveries keep their event id.
async fn send_numbered(source: &Amqp, run: &str, n: u64) {
    send_numbered_as(source, &source.routing_key, run, n).await;
}

/// `send_numbered` with another routing key, asserting that a queue took it.
async fn send_numbered_as(source: &Amqp, routing_key: &str, run: &str, n: u64) {
    let properties =
        BasicProperties::default().with_message_id(format!("{run}-{n}").as_str().into());
    assert!(
        source
            .publish(routing_key, format!("{{\"n\":{n}}}").as_bytes(), properties)
            .await,
        "`{routing_key}` is bound to a queue"
    );
}

fn headers_table(headers: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    table
}

impl SourceUnderTest for Amqp {
    fn kind(&self) -> &'static str {
        "amqp"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    fn bridge_keys(&self) -> String {
        format!(
            "url = \"{AMQP_URL}\"\nqueue = \"{}\"\nbind_exchange = \"{}\"\nbinding_keys = [\"legacy.#\"]\narguments = {{ \"x-expires\" = {EXPIRES_MS} }}\n{}",
            self.queue, self.exchange, self.queue_keys
        )
    }
    fn subject(&self) -> String {
        self.routing_key.clone()
    }
    async fn send(&self, payload: &[u8], headers: &[(&str, &str)]) {
        let properties = if headers.is_empty() {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_headers(headers_table(headers))
        };
        self.send_with(payload, properties).await;
    }
    // No `pending_at_source`: AMQP 0-9-1 reports only a queue's ready messages, not those
    // a live consumer holds unacked (that needs the management API). The AMQP tests
    // below prove "nothing acked" by closing the consumer first: RabbitMQ then requeues
    // everything unacked and the ready count is the whole backlog.
    async fn left_after_stop(&self) -> Option<u64> {
        self.ready().await.map(u64::from)
    }
    fn carries(&self) -> Carries {
        Carries {
            // No `max_id`: `message_id` is a short string, so no id over 255 bytes can be
            // sent at all.
            headers: true,
            // Header names are short strings: at most 255 bytes.
            max_header_name: 255,
            // Long-string header values are bytes.
            binary_header_values: true,
            control_header_values: true,
            // A `message_id` of bytes that are not UTF-8 (RabbitMQ passes short strings
            // on as bytes), sent with raw frames.
            binary_ids: true,
            // `content_type` is a short string property.
            max_content_type: 255,
            nested_tables: true,
            ..Default::default()
        }
    }
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        if let Some(id) = &message.binary_id {
            // lapin sends only UTF-8 short strings.
            poison::amqp_publish_raw(
                &self.exchange,
                &self.routing_key,
                &message.headers,
                id,
                &message.payload,
            )
            .await;
            return Sent::default();
        }
        let mut table = FieldTable::default();
        for (name, value) in &message.headers {
            table.insert(
                ShortString::from(name.as_str()),
                AMQPValue::LongString(LongString::from(value.clone())),
            );
        }
        if let Some(depth) = message.nested_depth {
            let mut value = AMQPValue::LongString(LongString::from("the bottom"));
            for level in 0..depth {
                let mut nested = FieldTable::default();
                nested.insert(ShortString::from(format!("level{level}")), value);
                value = AMQPValue::FieldTable(nested);
            }
            table.insert(ShortString::from("x-deep"), value);
        }
        let mut properties = BasicProperties::default().with_headers(table);
        if let Some(content_type) = &message.content_type {
            properties = properties.with_content_type(ShortString::from(content_type.as_str()));
        }
        self.send_with(&message.payload, properties).await;
        Sent::default()
    }
}

// The shared contract (tests/common/conformance.rs).
conformance_suite!(Amqp::new().await);

/// Collects events from `queue` until every `{"n":N}` for N in 0..count arrived (or the
/// deadline passes), checking that duplicates carry their first copy's id.
async fn collect_numbers(
    rabbit: &Rabbit,
    queue: &str,
    count: u64,
    timeout: Duration,
) -> (HashMap<u64, String>, usize) {
    let deadline = Instant::now() + timeout;
    let mut ids: HashMap<u64, String> = HashMap::new();
    let mut total = 0;
    while (ids.len() as u64) < count && Instant::now() < deadline {
        for event in rabbit.take(queue, 1000, Duration::from_secs(2)).await {
            total += 1;
            let json = event.json();
            let n = json["data"]["n"].as_u64().expect("a {\"n\":N} event");
            let id = json["id"].as_str().unwrap().to_owned();
            let first = ids.entry(n).or_insert_with(|| id.clone());
            assert_eq!(*first, id, "a redelivery of message {n} got another id");
        }
    }
    (ids, total)
}

/// While the exchange is unreachable nothing is acked: after SIGKILL (the consumer's
/// connection closes, RabbitMQ requeues what it held) the whole backlog is still in the
/// queue; a restart with the exchange back delivers all of it and empties the queue.
#[tokio::test]
async fn nothing_is_acked_while_the_exchange_is_down() {
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let table = bridge_table(&source, &bridge, "max_in_flight = 10");
    let mut daemon = Daemon::start(&proxy.amqp_url(), &exchange, &table).await;
    daemon.wait_ready().await;

    proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    let sent = 40u64;
    let run = unique("m");
    for n in 0..sent {
        send_numbered(&source, &run, n).await;
    }
    // RabbitMQ hands the consumer max_in_flight messages (the prefetch) and keeps the
    // rest; the bridge itself stops pulling at its first unconfirmable publish.
    eventually_async(
        Duration::from_secs(10),
        "prefetch = max_in_flight taken",
        || async { source.ready().await == Some(30) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(source.ready().await, Some(30), "no more than the prefetch");
    let pulled = daemon
        .metrics()
        .bridge("bridge_messages_received_total", &bridge, "amqp")
        .unwrap();
    assert!((1.0..=10.0).contains(&pulled), "pulled {pulled}");
    daemon.kill();
    eventually_async(
        Duration::from_secs(10),
        "unacked requeued on close",
        || async { source.ready().await == Some(sent as u32) },
    )
    .await;

    proxy.restore();
    daemon.restart().await;
    let (ids, _) = collect_numbers(&rabbit, &queue, sent, Duration::from_secs(30)).await;
    assert_eq!(
        ids.keys().copied().collect::<HashSet<_>>(),
        (0..sent).collect(),
        "log: {}",
        daemon.log()
    );
    eventually_async(Duration::from_secs(10), "queue empty", || async {
        source.ready().await == Some(0)
    })
    .await;
}

/// SIGKILL mid-stream, then restart: every message arrives, duplicates only with the id
/// of their first copy (the message_id property), and the queue ends empty. The
/// exchange's confirms are held back before the kill, so max_in_flight events are
/// published but unconfirmed, hence unacked, when the process dies.
#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_and_keeps_ids() {
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let table = bridge_table(&source, &bridge, "max_in_flight = 20");
    let mut daemon = Daemon::start(&proxy.amqp_url(), &exchange, &table).await;
    daemon.wait_ready().await;
    let published = |daemon: &Daemon| {
        daemon
            .metrics()
            .bridge("bridge_events_published_total", &bridge, "amqp")
    };
    let received = |daemon: &Daemon| {
        daemon
            .metrics()
            .bridge("bridge_messages_received_total", &bridge, "amqp")
    };

    let run = unique("m");
    let total = 400u64;
    for n in 0..100 {
        send_numbered(&source, &run, n).await;
    }
    eventually(Duration::from_secs(20), "the first 100 confirmed", || {
        published(&daemon) == Some(100.0)
    })
    .await;
    // Confirms stop coming back: the next 20 are published but never acked.
    proxy.drop_replies();
    for n in 100..200 {
        send_numbered(&source, &run, n).await;
    }
    eventually(Duration::from_secs(20), "max_in_flight in flight", || {
        received(&daemon) == Some(120.0)
    })
    .await;
    assert_eq!(published(&daemon), Some(100.0), "no confirm, no ack");
    daemon.kill();
    for n in 200..total {
        send_numbered(&source, &run, n).await;
    }
    eventually_async(
        Duration::from_secs(10),
        "the unacked requeued: everything after the first 100 waits",
        || async { source.ready().await == Some(300) },
    )
    .await;

    proxy.restore();
    daemon.restart().await;
    let (ids, events) = collect_numbers(&rabbit, &queue, total, Duration::from_secs(60)).await;
    assert_eq!(
        ids.keys().copied().collect::<HashSet<_>>(),
        (0..total).collect(),
        "every message arrives; log: {}",
        daemon.log()
    );
    for (n, id) in &ids {
        assert_eq!(id, &format!("{run}-{n}"), "the event id is the message_id");
    }
    assert!(
        events as u64 > total,
        "the unconfirmed ones were published again: {events} events"
    );
    // All acked: after a clean stop nothing is requeued.
    eventually(Duration::from_secs(10), "in-flight back to 0", || {
        daemon.metrics().bridge("bridge_in_flight", &bridge, "amqp") == Some(0.0)
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    assert_eq!(source.ready().await, Some(0), "the queue ends empty");
}

/// Changing the bridge under traffic drains the old one: it stops consuming, the
/// exchange still confirms what it had in flight and those messages are acked on the
/// old channel (kept open by their ack handles); the new one takes over the queue.
#[tokio::test]
async fn a_changed_bridge_drains_and_acks_its_in_flight_messages() {
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit.bind(&exchange, &format!("event.*.{bridge}.#")).await;
    let table = |tenant: &str| bridge_table(&source, &bridge, &format!("tenant = \"{tenant}\""));
    let daemon = Daemon::start(AMQP_URL, &exchange, &table("acme")).await;
    daemon.wait_ready().await;

    let run = unique("m");
    let total = 200u64;
    let stream = async {
        for n in 0..total {
            send_numbered(&source, &run, n).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let change = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        daemon.write_bridges(&table("globex"));
        eventually(Duration::from_secs(10), "the changed bridge runs", || {
            daemon
                .bridge_status(&bridge)
                .is_some_and(|b| b["tenant"] == "globex" && b["status"]["state"] == "running")
        })
        .await;
    };
    tokio::join!(stream, change);

    let (ids, events) = collect_numbers(&rabbit, &queue, total, Duration::from_secs(30)).await;
    assert_eq!(
        ids.keys().copied().collect::<HashSet<_>>(),
        (0..total).collect(),
        "log: {}",
        daemon.log()
    );
    // Duplicates are rare but allowed (collect_numbers checked they keep their id): a
    // stop that lands while the old bridge hands a message to the exchange abandons
    // that message unacked, though its event went out.
    assert!(events as u64 >= total);
    assert!(
        !daemon.log().contains("ack failed"),
        "every ack went through: {}",
        daemon.log()
    );
    eventually_async(Duration::from_secs(10), "queue empty", || async {
        source.ready().await == Some(0)
    })
    .await;
}

/// The source contract, driven directly: prefetch = max_in_flight, and an ack handle
/// still acks after its source was dropped (what a draining bridge relies on). The
/// channel closes with the last handle, and only what was never acked is requeued.
#[tokio::test]
async fn ack_handles_outlive_their_source() {
    use broker_bridge::sources::{ConnectContext, SourceKind, amqp};
    let source = Amqp::new().await;
    let run = unique("m");
    for n in 0..3 {
        send_numbered(&source, &run, n).await;
    }
    let table = serde_json::json!({
        "url": AMQP_URL,
        "queue": source.queue,
        "bind_exchange": source.exchange,
        "binding_keys": ["legacy.#"],
        "arguments": {"x-expires": EXPIRES_MS},
    });
    let spec = <amqp::Amqp as SourceKind>::parse(table.as_object().unwrap().clone()).unwrap();
    let context = ConnectContext {
        bridge: "direct".into(),
        max_in_flight: 2,
        ..Default::default()
    };
    let mut consumer = amqp::connect(&spec, &context).await.unwrap();
    let first = consumer.next().await.unwrap();
    let second = consumer.next().await.unwrap();
    assert_eq!(first.meta.id, Some(format!("{run}-0")));
    assert_eq!(second.meta.id, Some(format!("{run}-1")));
    assert_eq!(first.meta.subject.as_deref(), Some("legacy.orders.created"));
    assert_eq!(&first.payload[..], b"{\"n\":0}");
    eventually_async(Duration::from_secs(10), "prefetch 2", || async {
        source.ready().await == Some(1)
    })
    .await;
    drop(consumer);
    first
        .ack
        .ack()
        .await
        .expect("acked after the source is gone");
    second
        .ack
        .ack()
        .await
        .expect("acked after the source is gone");
    // Both acked, the channel closed: only the third message is in the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(source.ready().await, Some(1));
}

/// Binary-mode CloudEvents (`ce-` and `cloudEvents:` headers) and structured ones pass
/// through with their own id, source, type and data; only the tenant is added.
#[tokio::test]
async fn inbound_cloudevents_pass_through() {
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit.bind(&exchange, "event.acme.#").await;
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_ready().await;

    let data = br#"{ "order" : 7 }"#;
    for prefix in ["ce-", "cloudEvents:", "cloudEvents_"] {
        let headers = [
            (format!("{prefix}specversion"), "1.0".to_owned()),
            (format!("{prefix}id"), format!("{prefix}id-1")),
            (format!("{prefix}source"), "/legacy/shop".to_owned()),
            (format!("{prefix}type"), "com.acme.order.paid".to_owned()),
            (format!("{prefix}time"), "2026-05-01T12:00:00Z".to_owned()),
            (format!("{prefix}region"), "eu".to_owned()),
        ];
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        source
            .send_with(
                data,
                BasicProperties::default()
                    .with_headers(headers_table(&headers))
                    .with_content_type("application/json".into()),
            )
            .await;
    }
    let structured = br#"{"specversion":"1.0","id":"s-1","source":"/legacy/billing","type":"com.acme.invoice.sent","datacontenttype":"text/plain","data":"hello"}"#;
    source
        .send_with(
            structured,
            BasicProperties::default().with_content_type("application/cloudevents+json".into()),
        )
        .await;

    let received = rabbit
        .take_exactly(&queue, 4, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 4, "log: {}", daemon.log());
    for (event, prefix) in received.iter().zip(["ce-", "cloudEvents:", "cloudEvents_"]) {
        assert_eq!(
            event.routing_key,
            format!("event.acme.{bridge}.com_acme_order_paid")
        );
        let json = event.json();
        assert_eq!(json["id"], format!("{prefix}id-1"));
        assert_eq!(json["source"], "/legacy/shop");
        assert_eq!(json["type"], "com.acme.order.paid");
        assert_eq!(json["time"], "2026-05-01T12:00:00Z");
        assert_eq!(json["region"], "eu");
        assert_eq!(json["tenant"], "acme");
        let needle = [b"\"data\":".as_slice(), data].concat();
        assert!(
            event.body.windows(needle.len()).any(|w| w == needle),
            "data byte-exact: {}",
            String::from_utf8_lossy(&event.body)
        );
        let properties_id = event
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string());
        assert_eq!(properties_id, Some(format!("{prefix}id-1")));
    }
    let json = received[3].json();
    assert_eq!(
        received[3].routing_key,
        format!("event.acme.{bridge}.com_acme_invoice_sent")
    );
    assert_eq!(json["id"], "s-1");
    assert_eq!(json["source"], "/legacy/billing");
    assert_eq!(json["data"], "hello");
    assert_eq!(json["tenant"], "acme");
}

/// message_id, timestamp and content_type become id, time and datacontenttype; the source
/// names broker, vhost and queue; type comes from the routing key (default) or from the
/// AMQP `type` property; the tenant from a header.
#[tokio::test]
async fn properties_map_to_attributes() {
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let by_key = unique("key");
    let by_property = unique("prop");
    let queue = rabbit.bind(&exchange, "event.#").await;
    // Two bridges, each on its own queue bound to the same source exchange.
    let second_queue = unique("orders");
    let second_keys = format!(
        "url = \"{AMQP_URL}\"\nqueue = \"{second_queue}\"\nbind_exchange = \"{}\"\narguments = {{ \"x-expires\" = {EXPIRES_MS} }}\ntype = \"{{header:amqp-type}}\"\ntenant = \"{{header:x-tenant}}\"\n",
        source.exchange
    );
    let bridges = format!(
        "{}\n[[bridge]]\nname = \"{by_property}\"\nkind = \"amqp\"\n{second_keys}",
        bridge_table(
            &source,
            &by_key,
            "type = \"com.acme.{subject[1]}.{subject[2]}\""
        ),
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridges).await;
    daemon.wait_ready().await;

    let mut headers = FieldTable::default();
    headers.insert("x-tenant".into(), AMQPValue::LongString("globex".into()));
    headers.insert("x-attempt".into(), AMQPValue::LongInt(2));
    let properties = BasicProperties::default()
        .with_message_id("order-42".into())
        .with_timestamp(1_700_000_000)
        .with_content_type("text/plain".into())
        .with_type("OrderCreated".into())
        .with_headers(headers);
    source.send_with(b"plain text", properties).await;

    let received = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let find = |prefix: &str| -> &Received {
        received
            .iter()
            .find(|r| r.routing_key.starts_with(prefix))
            .unwrap_or_else(|| panic!("no event on {prefix}: {received:?}"))
    };
    let from_key = find(&format!("event.acme.{by_key}."));
    assert_eq!(
        from_key.routing_key,
        format!("event.acme.{by_key}.com_acme_orders_created")
    );
    let from_property = find(&format!("event.globex.{by_property}."));
    assert_eq!(
        from_property.routing_key,
        format!("event.globex.{by_property}.OrderCreated")
    );
    for (event, ty, tenant, queue) in [
        (from_key, "com.acme.orders.created", "acme", &source.queue),
        (from_property, "OrderCreated", "globex", &second_queue),
    ] {
        let json = event.json();
        assert_eq!(json["id"], "order-42");
        assert_eq!(json["time"], "2023-11-14T22:13:20Z");
        assert_eq!(json["datacontenttype"], "text/plain");
        assert_eq!(json["subject"], "legacy.orders.created");
        assert_eq!(json["type"], ty);
        assert_eq!(json["tenant"], tenant);
        assert_eq!(
            json["source"],
            format!("amqp://127.0.0.1:5672/%2F/{queue}"),
            "no credentials in the source"
        );
        assert_eq!(json["data_base64"], "cGxhaW4gdGV4dA==");
    }
}

/// `tenant = "{header:amqp-user-id}"` takes the tenant only from the `user_id` property,
/// which RabbitMQ checks against the publisher's login (issue 14). An application header
/// named `amqp-user-id` (any case) is dropped: next to the property it is ignored, and
/// alone it leaves the tenant unresolved (dead-lettered under `deadletter._.<bridge>`),
/// never the tenant it claims.
#[tokio::test]
async fn a_spoofed_amqp_user_id_header_never_gives_the_tenant() {
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let events = rabbit.bind(&exchange, &format!("event.*.{bridge}.#")).await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.*.{bridge}"))
        .await;
    let table = bridge_table(&source, &bridge, "tenant = \"{header:amqp-user-id}\"");
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;

    // The test connection logs in as guest, so RabbitMQ accepts `user_id = "guest"`.
    let spoofed = |name: &str| headers_table(&[(name, "evil")]);
    source
        .send_with(
            br#"{"n":1}"#,
            BasicProperties::default()
                .with_user_id("guest".into())
                .with_headers(spoofed("amqp-user-id")),
        )
        .await;
    source
        .send_with(
            br#"{"n":2}"#,
            BasicProperties::default().with_headers(spoofed("AMQP-User-Id")),
        )
        .await;

    let received = rabbit
        .take_exactly(&events, 1, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert!(
        received[0]
            .routing_key
            .starts_with(&format!("event.guest.{bridge}.")),
        "{}",
        received[0].routing_key
    );
    let json = received[0].json();
    assert_eq!(json["tenant"], "guest");
    assert_eq!(json["data"]["n"], 1);
    let letters = rabbit.take_exactly(&dead, 1, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1, "log: {}", daemon.log());
    assert_eq!(letters[0].routing_key, format!("deadletter._.{bridge}"));
    assert_eq!(
        letters[0].header("x-bridge-reason").as_deref(),
        Some("unresolved_template")
    );
    assert_eq!(letters[0].body, br#"{"n":2}"#);
}

/// A quorum queue declared by the bridge (x-queue-type = quorum, durable) works; the queue
/// really is a quorum queue (declaring it as classic is refused by RabbitMQ).
#[tokio::test]
async fn declares_and_consumes_a_quorum_queue() {
    let source = Amqp::without_queue(
        "arguments = { \"x-queue-type\" = \"quorum\", \"x-expires\" = 600000 }",
    )
    .await;
    // The kind's own `arguments` line replaces the default one.
    let keys = format!(
        "url = \"{AMQP_URL}\"\nqueue = \"{}\"\nbind_exchange = \"{}\"\nbinding_keys = [\"legacy.#\"]\n{}",
        source.queue, source.exchange, source.queue_keys
    );
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let table = format!("[[bridge]]\nname = \"{bridge}\"\nkind = \"amqp\"\n{keys}\n");
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;
    for n in 0..5 {
        source.send(format!("{{\"n\":{n}}}").as_bytes(), &[]).await;
    }
    let received = rabbit
        .take_exactly(&queue, 5, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 5, "log: {}", daemon.log());

    let channel = source.connection.create_channel().await.unwrap();
    // The same arguments but for the queue type, so that is what RabbitMQ objects to.
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let classic = Amqp::arguments(classic);
    let redeclared = channel
        .queue_declare(
            source.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            classic,
        )
        .await;
    let error = redeclared
        .expect_err("the bridge declared a quorum queue")
        .to_string();
    assert!(
        error.contains("inequivalent arg 'x-queue-type'") && error.contains("'quorum'"),
        "the bridge declared a quorum queue: {error}"
    );
}

/// Deleting the queue under a running bridge cancels its consumer; the bridge reconnects,
/// declares and binds the queue again, and goes on consuming.
#[tokio::test]
async fn redeclares_and_rebinds_a_deleted_queue() {
    let source = Amqp::without_queue("").await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_ready().await;
    source.send(b"{\"n\":0}", &[]).await;
    assert_eq!(
        rabbit.take(&queue, 1, Duration::from_secs(20)).await.len(),
        1
    );

    source
        .channel
        .queue_delete(source.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // The source exchange was auto-delete and went with the queue's binding; the legacy
    // application declares it again. The bridge retries binding until it exists.
    source
        .channel
        .exchange_declare(
            source.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Until the bridge has declared and bound it again, publishes are unroutable.
    eventually_async(
        Duration::from_secs(20),
        "the queue is back and bound",
        || async {
            source
                .publish(
                    &source.routing_key,
                    b"{\"n\":1}",
                    BasicProperties::default(),
                )
                .await
        },
    )
    .await;
    let received = rabbit.take(&queue, 1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(received[0].json()["data"]["n"], 1);
    let status = daemon.bridge_status(&bridge).unwrap();
    assert!(
        status["status"]["connects"].as_u64().unwrap() >= 2,
        "reconnected: {status}"
    );
    assert_eq!(status["status"]["state"], "running");
}

/// The bridge's own connection to the source broker is cut: messages published meanwhile
/// wait in the durable queue, and the bridge reconnects and delivers them all.
#[tokio::test]
async fn source_outage_loses_nothing() {
    let source = Amqp::new().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let keys = source.bridge_keys().replace(AMQP_URL, &proxy.amqp_url());
    let table = format!("[[bridge]]\nname = \"{bridge}\"\nkind = \"amqp\"\n{keys}\n");
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;
    let run = unique("m");
    for n in 0..10 {
        send_numbered(&source, &run, n).await;
    }
    proxy.cut();
    eventually(Duration::from_secs(10), "bridge seen down", || {
        daemon.metrics().bridge("bridge_up", &bridge, "amqp") == Some(0.0)
    })
    .await;
    for n in 10..30 {
        send_numbered(&source, &run, n).await;
    }
    proxy.restore();
    let (ids, _) = collect_numbers(&rabbit, &queue, 30, Duration::from_secs(30)).await;
    assert_eq!(
        ids.keys().copied().collect::<HashSet<_>>(),
        (0..30).collect(),
        "log: {}",
        daemon.log()
    );
    daemon.wait_running(&bridge).await;
    assert!(
        daemon
            .metrics()
            .bridge("bridge_restarts_total", &bridge, "amqp")
            .unwrap()
            >= 1.0
    );
}

/// `check` refuses a bridge bound to the routing exchange with a key matching its own
/// events, naming the key; a key for other events passes.
#[test]
fn check_refuses_a_bridge_that_would_consume_its_own_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker-bridge.toml");
    let write = |keys: &str| {
        std::fs::write(
            &config,
            format!(
                "[exchange]\nurl = \"amqp://guest:guest@localhost:5672/%2f\"\nname = \"events\"\n\n[[bridge]]\nname = \"orders\"\nkind = \"amqp\"\ntenant = \"acme\"\nurl = \"amqp://bridge:secret@127.0.0.1/%2F\"\nqueue = \"orders\"\nbind_exchange = \"events\"\nbinding_keys = {keys}\n"
            ),
        )
        .unwrap();
    };
    let check = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_broker-bridge"))
            .args(["check", "-c"])
            .arg(&config)
            .env_remove("BROKER_BRIDGE__EXCHANGE__URL")
            .env_remove("BROKER_BRIDGE__EXCHANGE__NAME")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    write("[\"legacy.#\", \"event.#\"]");
    let (code, _, stderr) = check();
    assert_eq!(code, Some(1), "{stderr}");
    for fragment in [
        "`orders`",
        "key `binding_keys`",
        "`event.#` on the routing exchange `events`",
        "event.acme.orders.*",
        "it would consume what it publishes",
    ] {
        assert!(stderr.contains(fragment), "{fragment} in {stderr}");
    }
    assert!(
        !stderr.contains("secret"),
        "no password in errors: {stderr}"
    );

    write("[\"event.globex.shop.*\"]");
    let (code, stdout, stderr) = check();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("bound to `events` with `event.globex.shop.*`"),
        "{stdout}"
    );
    assert!(stdout.contains("at-least-once"), "{stdout}");
}

// Issue 21: what happens to messages pending in the queue when a bridge's source
// settings are edited, by reload and by restart. The bridge never deletes or re-creates a
// queue and never removes a binding; what an edit leaves behind is reported.

/// One amqp bridge on `queue`, bound to the source exchange with `keys`; `arguments` is
/// added to the queue arguments (e.g. `, "x-max-length" = 1000`).
fn edited_bridge(
    bridge: &str,
    source: &Amqp,
    queue: &str,
    keys: &[&str],
    arguments: &str,
) -> String {
    format!(
        "[[bridge]]\nname = \"{bridge}\"\nkind = \"amqp\"\nurl = \"{AMQP_URL}\"\nqueue = \"{queue}\"\nbind_exchange = \"{}\"\nbinding_keys = {keys:?}\narguments = {{ \"x-expires\" = {EXPIRES_MS}{arguments} }}\n",
        source.exchange
    )
}

/// The config text with a state_dir of the daemon's own (where the bridge records what
/// it consumed): relative, so next to the config file in the daemon's temporary directory.
fn config_with_state(exchange_url: &str, exchange: &str, port: u16, bridges: &str) -> String {
    config_text(exchange_url, exchange, port, bridges)
        .replace("[defaults]\n", "[defaults]\nstate_dir = \"state\"\n")
}

async fn start_with_state(exchange_url: &str, exchange: &str, bridges: &str) -> Daemon {
    Daemon::start_with_text(
        tempfile::tempdir().unwrap(),
        exchange_url,
        exchange,
        |port| config_with_state(exchange_url, exchange, port, bridges),
    )
    .await
}

/// `Daemon::write_bridges`, keeping the state_dir.
fn write_bridges_with_state(daemon: &Daemon, bridges: &str) {
    let text = config_with_state(
        &daemon.exchange_url,
        &daemon.exchange,
        daemon.admin_port,
        bridges,
    );
    let temporary = daemon.dir.path().join("broker-bridge.toml.new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, &daemon.config_path).unwrap();
}

/// What `/bridges` says went wrong: the last reload's error and the bridge's own.
fn reported(daemon: &Daemon, bridge: &str) -> String {
    let all = daemon.bridges();
    let own = daemon
        .bridge_status(bridge)
        .and_then(|b| b["status"]["last_error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "config: {}\nbridge: {own}",
        all["config"]["last_error"].as_str().unwrap_or_default()
    )
}

/// Cuts the daemon's connection to the exchange: the bridge stops acking, so what is
/// published to its source waits in the queue.
async fn exchange_down(proxy: &Proxy, daemon: &Daemon) {
    proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
}

/// Asserts that exactly the messages `range` (by `n` and message_id) were published.
async fn assert_published(
    rabbit: &Rabbit,
    out: &str,
    run: &str,
    range: std::ops::Range<u64>,
    daemon: &Daemon,
) {
    let count = range.end - range.start;
    let (ids, _) = collect_numbers(rabbit, out, count, Duration::from_secs(40)).await;
    assert_eq!(
        ids.keys().copied().collect::<HashSet<_>>(),
        range.collect(),
        "log: {}",
        daemon.log()
    );
    for (n, id) in &ids {
        assert_eq!(id, &format!("{run}-{n}"), "published with its own id");
    }
}

/// The `n`s of the raw messages in a source queue (taken, so the queue ends empty).
async fn numbers_in(rabbit: &Rabbit, queue: &str, count: usize) -> HashSet<u64> {
    rabbit
        .take_exactly(queue, count, Duration::from_secs(10))
        .await
        .iter()
        .map(|m| m.json()["n"].as_u64().expect("{\"n\":N}"))
        .collect()
}

/// Hot reload with messages pending in the queue (the exchange is down, so nothing is
/// acked). Bindings edited (`legacy.b.#` removed, `legacy.c.#` added): every pending
/// message is published after the edit; the removed binding stays (the bridge cannot tell
/// it made it) and the log says so. Queue renamed: the old queue keeps its pending
/// messages and its binding, the log names it with its message count, and the new queue
/// is consumed.
#[tokio::test]
async fn reload_edits_of_bindings_and_queue_lose_nothing() {
    let source = Amqp::without_queue("").await;
    let rabbit = Rabbit::connect().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let out = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let old_queue = source.queue.clone();
    let new_queue = unique("orders");
    let table = |queue: &str, keys: &[&str]| edited_bridge(&bridge, &source, queue, keys, "");
    let daemon = start_with_state(
        &proxy.amqp_url(),
        &exchange,
        &table(&old_queue, &["legacy.a.#", "legacy.b.#"]),
    )
    .await;
    daemon.wait_ready().await;
    let run = unique("m");

    // Bindings edited with 20 messages pending.
    exchange_down(&proxy, &daemon).await;
    for n in 0..10 {
        send_numbered_as(&source, "legacy.a.x", &run, n).await;
    }
    for n in 10..20 {
        send_numbered_as(&source, "legacy.b.x", &run, n).await;
    }
    write_bridges_with_state(&daemon, &table(&old_queue, &["legacy.a.#", "legacy.c.#"]));
    let kept_binding = format!(
        "the binding of queue `{old_queue}` to `{}` with `legacy.b.#` is no longer configured but stays",
        source.exchange
    );
    eventually(Duration::from_secs(30), "the kept binding reported", || {
        daemon.log().contains(&kept_binding)
    })
    .await;
    daemon.wait_running(&bridge).await;
    for n in 20..25 {
        send_numbered_as(&source, "legacy.c.x", &run, n).await; // the added binding
    }
    for n in 25..30 {
        send_numbered_as(&source, "legacy.b.x", &run, n).await; // the kept one
    }
    proxy.restore();
    assert_published(&rabbit, &out, &run, 0..30, &daemon).await;
    eventually_async(Duration::from_secs(10), "old queue acked empty", || async {
        source.ready_in(&old_queue).await == Some(0)
    })
    .await;

    // Queue renamed with 10 messages pending in the old one.
    exchange_down(&proxy, &daemon).await;
    for n in 30..40 {
        send_numbered_as(&source, "legacy.a.x", &run, n).await;
    }
    write_bridges_with_state(&daemon, &table(&new_queue, &["legacy.a.#", "legacy.c.#"]));
    let left_queue = format!(
        "queue `{old_queue}`, which this bridge consumed before its `queue` was edited, still holds"
    );
    eventually(Duration::from_secs(30), "the old queue reported", || {
        daemon.log().contains(&left_queue)
    })
    .await;
    daemon.wait_running(&bridge).await;
    // Unacked ones come back when the old bridge's channel closes: all 10 wait there.
    eventually_async(
        Duration::from_secs(10),
        "pending stay in the old queue",
        || async { source.ready_in(&old_queue).await == Some(10) },
    )
    .await;
    // Accounting: the 10 pending before the rename are still in the old queue, by n.
    assert_eq!(
        numbers_in(&rabbit, &old_queue, 10).await,
        (30..40).collect(),
        "log: {}",
        daemon.log()
    );
    proxy.restore();
    for n in 40..45 {
        send_numbered_as(&source, "legacy.c.x", &run, n).await;
    }
    // Only what came after the rename, through the new queue.
    assert_published(&rabbit, &out, &run, 40..45, &daemon).await;
}

/// The issue's sequence by restart. Stopped, 100 messages wait in the queue; started
/// again with `x-max-length` added to the queue arguments (and the binding widened): the
/// bridge refuses, naming the key, the queue and the 100 messages, which stay; the fixed
/// config (reload) delivers all of them. Then the queue is renamed while stopped: the old
/// queue keeps its 10 pending messages, and the first connect names it in the log.
#[tokio::test]
async fn restart_with_edited_settings_loses_nothing() {
    let source = Amqp::without_queue("").await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let out = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let queue = source.queue.clone();
    let table = |queue: &str, keys: &[&str], arguments: &str| {
        edited_bridge(&bridge, &source, queue, keys, arguments)
    };
    let mut daemon =
        start_with_state(AMQP_URL, &exchange, &table(&queue, &["legacy.a.#"], "")).await;
    daemon.wait_ready().await;
    let run = unique("m");
    for n in 0..10 {
        send_numbered_as(&source, "legacy.a.x", &run, n).await;
    }
    assert_published(&rabbit, &out, &run, 0..10, &daemon).await;
    eventually(Duration::from_secs(10), "all acked", || {
        daemon.metrics().bridge("bridge_in_flight", &bridge, "amqp") == Some(0.0)
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));

    for n in 10..110 {
        send_numbered_as(&source, "legacy.a.x", &run, n).await;
    }
    assert_eq!(source.ready().await, Some(100));
    write_bridges_with_state(
        &daemon,
        &table(&queue, &["legacy.#"], ", \"x-max-length\" = 1000"),
    );
    daemon.restart().await;
    let refusal = format!(
        "key `arguments.x-max-length`: queue `{queue}` exists with another `arguments.x-max-length`"
    );
    eventually(Duration::from_secs(20), "the refusal in /bridges", || {
        reported(&daemon, &bridge).contains(&refusal)
    })
    .await;
    let error = reported(&daemon, &bridge);
    for fragment in [
        "inequivalent arg 'x-max-length'",
        "its 100 ready message(s) stay in it",
        "never deletes or re-creates a queue",
    ] {
        assert!(error.contains(fragment), "{fragment} in {error}");
    }
    let status = daemon.bridge_status(&bridge).unwrap();
    assert_eq!(status["status"]["state"], "reconnecting", "{status}");
    assert_eq!(source.ready().await, Some(100), "nothing taken");
    assert_eq!(
        daemon
            .metrics()
            .bridge("bridge_events_published_total", &bridge, "amqp"),
        Some(0.0)
    );

    // The fix, by reload; the widened binding stays.
    write_bridges_with_state(&daemon, &table(&queue, &["legacy.#"], ""));
    daemon.wait_running(&bridge).await;
    send_numbered_as(&source, "legacy.other", &run, 110).await;
    assert_published(&rabbit, &out, &run, 10..111, &daemon).await;
    eventually(Duration::from_secs(10), "all acked", || {
        daemon.metrics().bridge("bridge_in_flight", &bridge, "amqp") == Some(0.0)
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    assert_eq!(source.ready().await, Some(0));

    // Renamed while stopped, 10 pending.
    for n in 200..210 {
        send_numbered_as(&source, "legacy.a.x", &run, n).await;
    }
    let new_queue = unique("orders");
    write_bridges_with_state(&daemon, &table(&new_queue, &["legacy.#"], ""));
    daemon.restart().await;
    daemon.wait_running(&bridge).await;
    let left_queue = format!(
        "queue `{queue}`, which this bridge consumed before its `queue` was edited, still holds 10 ready message(s)"
    );
    eventually(Duration::from_secs(10), "the old queue reported", || {
        daemon.log().contains(&left_queue)
    })
    .await;
    assert_eq!(
        numbers_in(&rabbit, &queue, 10).await,
        (200..210).collect(),
        "the pending ones stay in the old queue; log: {}",
        daemon.log()
    );
    send_numbered_as(&source, "legacy.a.x", &run, 210).await;
    assert_published(&rabbit, &out, &run, 210..211, &daemon).await;
}

/// A queue an operator declared beforehand with `x-max-length`, 20 messages in it, and a
/// bridge whose `arguments` lack it: RabbitMQ refuses the declare; the bridge changes
/// nothing, reports the key and the queue, and retries; the fixed config (reload) brings it
/// up and every message arrives. An edit of the arguments by reload, with messages
/// pending, is reported in `/bridges` too (refused at reload, or by the restarted bridge);
/// after the fix those arrive as well. `verify_queue`, asked before a reload, refuses the
/// same without changing anything.
#[tokio::test]
async fn an_existing_queue_with_other_arguments_is_refused_and_kept() {
    let source = Amqp::without_queue("").await;
    let rabbit = Rabbit::connect().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let out = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let mut operator_arguments = FieldTable::default();
    operator_arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
    source.declare_queue(operator_arguments).await;
    let run = unique("m");
    for n in 0..20 {
        send_numbered(&source, &run, n).await;
    }
    let table =
        |arguments: &str| edited_bridge(&bridge, &source, &source.queue, &["legacy.#"], arguments);
    let refusal = format!(
        "key `arguments.x-max-length`: queue `{}` exists with another `arguments.x-max-length`",
        source.queue
    );

    // What a reload (or `check --online`) asks before restarting a bridge: it refuses
    // without changing anything, passes equal settings, and creates no missing queue.
    {
        use broker_bridge::message::SourceError;
        use broker_bridge::sources::{SourceKind, amqp};
        let spec = |queue: &str, arguments: serde_json::Value| {
            let table = serde_json::json!({
                "url": AMQP_URL, "queue": queue, "arguments": arguments,
            });
            <amqp::Amqp as SourceKind>::parse(table.as_object().unwrap().clone()).unwrap()
        };
        let without = spec(&source.queue, serde_json::json!({"x-expires": EXPIRES_MS}));
        match amqp::verify_queue(&without, &bridge).await {
            Err(SourceError::Refused(why)) => {
                assert!(why.starts_with(&refusal), "{why}");
                assert!(why.contains("its 20 ready message(s) stay in it"), "{why}");
            }
            other => panic!("refused, not {other:?}"),
        }
        let equal = spec(
            &source.queue,
            serde_json::json!({"x-expires": EXPIRES_MS, "x-max-length": 1000}),
        );
        assert!(amqp::verify_queue(&equal, &bridge).await.is_ok());
        let missing = unique("missing");
        assert!(
            amqp::verify_queue(&spec(&missing, serde_json::json!({})), &bridge)
                .await
                .is_ok()
        );
        assert_eq!(source.ready_in(&missing).await, None, "not created");
        assert_eq!(source.ready().await, Some(20));
    }

    let daemon = start_with_state(&proxy.amqp_url(), &exchange, &table("")).await;
    eventually(Duration::from_secs(20), "the refusal in /bridges", || {
        reported(&daemon, &bridge).contains(&refusal)
    })
    .await;
    assert!(
        reported(&daemon, &bridge).contains("its 20 ready message(s) stay in it"),
        "{}",
        reported(&daemon, &bridge)
    );
    // It keeps retrying, and keeps the queue as it is.
    eventually(Duration::from_secs(20), "retried", || {
        daemon
            .metrics()
            .bridge("bridge_restarts_total", &bridge, "amqp")
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    assert_eq!(source.ready().await, Some(20));

    let fixed = table(", \"x-max-length\" = 1000");
    write_bridges_with_state(&daemon, &fixed);
    daemon.wait_running(&bridge).await;
    assert_published(&rabbit, &out, &run, 0..20, &daemon).await;

    // An edit of the arguments by reload, 10 pending while the exchange is down.
    exchange_down(&proxy, &daemon).await;
    for n in 20..30 {
        send_numbered(&source, &run, n).await;
    }
    write_bridges_with_state(&daemon, &table(", \"x-max-length\" = 5"));
    eventually(
        Duration::from_secs(30),
        "the edit reported in /bridges",
        || reported(&daemon, &bridge).contains(&refusal),
    )
    .await;
    write_bridges_with_state(&daemon, &fixed);
    proxy.restore();
    daemon.wait_running(&bridge).await;
    assert_published(&rabbit, &out, &run, 20..30, &daemon).await;
}

/// lapin parses nested header tables recursively on its I/O thread: a table nested
/// 1,500 deep (RabbitMQ stores and delivers it; one frame holds some 18,000 levels)
/// overflowed a default 2 MiB stack and aborted the whole daemon, again on every
/// redelivery (issue 13). The daemon's threads have a stack for the deepest table a
/// frame can hold: the message is published (its header converted 16 levels deep), the
/// next one too, and nothing restarts. (The test's own client needs such a stack too to
/// build the message, so a child copy of this test binary publishes it.)
#[tokio::test]
async fn a_deeply_nested_header_table_neither_aborts_nor_stops_the_bridge() {
    const CHILD: &str = "BROKER_BRIDGE_TEST_DEEP_TABLE_TO";
    if let Some(target) = std::env::var_os(CHILD) {
        let target = target.into_string().unwrap();
        let (exchange, routing_key) = target.split_once(' ').unwrap();
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut deep = AMQPValue::LongString("bottom".into());
        for _ in 0..1500 {
            let mut table = FieldTable::default();
            table.insert("a".into(), deep);
            deep = AMQPValue::FieldTable(table);
        }
        let mut headers = FieldTable::default();
        headers.insert("deep".into(), deep);
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                br#"{"n":1}"#,
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        return;
    }
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let mut daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_running(&bridge).await;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_deeply_nested_header_table_neither_aborts_nor_stops_the_bridge",
        ])
        .env(CHILD, format!("{} {}", source.exchange, source.routing_key))
        .env("RUST_MIN_STACK", (256 << 20).to_string())
        .output()
        .await
        .unwrap();
    assert!(
        child.status.success(),
        "the child published: {}",
        String::from_utf8_lossy(&child.stderr)
    );
    source
        .send_with(br#"{"n":2}"#, BasicProperties::default())
        .await;
    let events = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(20))
        .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon is alive; log: {}",
        daemon.log()
    );
    let numbers: Vec<_> = events
        .iter()
        .map(|e| e.json()["data"]["n"].clone())
        .collect();
    assert_eq!(numbers, [1, 2], "log: {}", daemon.log());
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.bridge("bridge_restarts_total", &bridge, "amqp"),
        Some(0.0)
    );
    assert_eq!(source.ready().await, Some(0));
    daemon.terminate();
}

/// The poison corpus (issue 13) through a RabbitMQ queue: long, binary and control-byte
/// header values, header tables nested 100 deep, content types, CloudEvents and bodies
/// at the limits. Nothing stays unacked: once the daemon stopped, RabbitMQ would have
/// requeued what it held, and the queue is empty.
/// A `message_id` that is not UTF-8 used to fail lapin's parser and loop the bridge's
/// reconnects forever (fixed in `vendor/amq-protocol-types`).
#[tokio::test]
async fn poison_corpus_is_published_or_dead_lettered() {
    let source = Amqp::new().await;
    let mut run = poison::poison_corpus(&source).await;
    assert_eq!(run.daemon.terminate(), Some(0));
    assert_eq!(source.ready().await, Some(0), "nothing was left unacked");
}

/// A routing key is the sender's text: one with a newline cannot forge a log line. The
/// pipeline logs the subject of a message that panicked it; the line stays one line.
#[tokio::test]
async fn a_routing_key_with_a_newline_cannot_forge_a_log_line() {
    let source = Amqp::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let dead = rabbit.bind(&exchange, "deadletter.#").await;
    let mut daemon = Daemon::start_with_text_and_env(
        tempfile::tempdir().unwrap(),
        AMQP_URL,
        &exchange,
        |port| {
            config_text(
                AMQP_URL,
                &exchange,
                port,
                &bridge_table(&source, &bridge, ""),
            )
        },
        &[("BROKER_BRIDGE_PANIC_IN_MESSAGE", "boom-in-message")],
    )
    .await;
    daemon.wait_running(&bridge).await;
    let forged = "FORGED ERROR the exchange is gone";
    let routing_key = format!("legacy.x\n{forged}\u{1b}[2J");
    assert!(
        source
            .publish(
                &routing_key,
                br#"{"n":"boom-in-message"}"#,
                BasicProperties::default()
            )
            .await
    );
    let letters = rabbit.take_exactly(&dead, 1, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1, "log: {}", daemon.log());
    daemon.terminate();
    let log = daemon.log();
    assert!(
        log.contains(&format!("legacy.x\\n{forged}\\u{{1b}}[2J")),
        "the subject is logged, escaped: {log}"
    );
    assert!(
        !log.lines().any(|line| line.starts_with(forged)) && !log.contains('\u{1b}'),
        "no line starts with the sender's text, no escape sequence reaches the terminal: {log}"
    );
}
