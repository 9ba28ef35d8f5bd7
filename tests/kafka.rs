//! `kind = "kafka"` against the real Kafka-compatible broker on 127.0.0.1:9092 (tansu,
//! see DESIGN.md "Test brokers"): the shared conformance checks, then what is special
//! about Kafka (several partitions, keys, headers and timestamps in the mapping,
//! CloudEvents passing through, SIGKILL and restart, two daemons in one consumer group,
//! the lag gauge, a missing topic). Each test creates its own topics (the broker does
//! not create them) and uses its own consumer group.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine;
use common::conformance::{self, SourceUnderTest, bridge_table};
use common::proxy::Proxy;
use common::{AMQP_URL, Daemon, Rabbit, Received, eventually, eventually_async, unique};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const BROKERS: &str = "127.0.0.1:9092";

/// Creates a topic of the test's own with `partitions` partitions.
async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap_or_else(|e| panic!("Kafka on {BROKERS} (run scripts/brokers.sh tansu): {e}"));
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// One test record.
#[derive(Default)]
struct Record<'a> {
    partition: Option<i32>,
    key: Option<&'a [u8]>,
    headers: &'a [(&'a str, &'a [u8])],
    timestamp: Option<i64>,
}

/// Produces one record and waits until the broker stored it; `(partition, offset)`.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    payload: &[u8],
    record: Record<'_>,
) -> (i32, i64) {
    let mut headers = OwnedHeaders::new();
    for (key, value) in record.headers {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let mut message = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(headers);
    if let Some(partition) = record.partition {
        message = message.partition(partition);
    }
    if let Some(key) = record.key {
        message = message.key(key);
    }
    if let Some(timestamp) = record.timestamp {
        message = message.timestamp(timestamp);
    }
    let delivery = producer
        .send(message, Duration::from_secs(20))
        .await
        .unwrap_or_else(|(e, _)| panic!("Kafka on {BROKERS} stores the test record: {e}"));
    (delivery.partition, delivery.offset)
}

/// A Kafka source under test: a topic of its own, written to one partition so that the
/// shared checks see the records in send order.
struct Kafka {
    topic: String,
    producer: FutureProducer,
    /// More kind keys for every bridge of the test.
    extra: String,
}

impl Kafka {
    async fn new(partitions: i32) -> Kafka {
        let topic = unique("kt");
        create_topic(&topic, partitions).await;
        Kafka {
            topic,
            producer: producer(),
            extra: String::new(),
        }
    }

    /// Faster group membership for tests that end a member without leaving the group.
    fn with_short_sessions(mut self) -> Kafka {
        self.extra =
            "properties = { \"session.timeout.ms\" = 6000, \"heartbeat.interval.ms\" = 500 }"
                .into();
        self
    }

    async fn produce(&self, payload: &[u8], record: Record<'_>) -> (i32, i64) {
        produce(&self.producer, &self.topic, payload, record).await
    }

    /// Records waiting for the bridge's group: end offsets minus committed offsets
    /// (the start of the log where nothing is committed yet).
    async fn pending_for_group(&self, group: &str) -> Option<u64> {
        let topic = self.topic.clone();
        let group = group.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", BROKERS)
                .set("group.id", &group)
                .create()
                .ok()?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .ok()?;
            let partitions = metadata.topics().first()?.partitions().len() as i32;
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition(&topic, partition);
            }
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(10))
                .ok()?;
            let mut pending = 0;
            for partition in 0..partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                    .ok()?;
                let at = match committed.find_partition(&topic, partition)?.offset() {
                    Offset::Offset(offset) => offset,
                    _ => low,
                };
                pending += (high - at).max(0) as u64;
            }
            Some(pending)
        })
        .await
        .unwrap()
    }
}

impl SourceUnderTest for Kafka {
    fn kind(&self) -> &'static str {
        "kafka"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    fn bridge_keys(&self) -> String {
        format!(
            "brokers = \"{BROKERS}\"\ntopics = [\"{}\"]\n{}",
            self.topic, self.extra
        )
    }
    fn subject(&self) -> String {
        self.topic.clone()
    }
    async fn send(&self, payload: &[u8], headers: &[(&str, &str)]) {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.produce(
            payload,
            Record {
                partition: Some(0),
                headers: &headers,
                ..Default::default()
            },
        )
        .await;
    }
    async fn pending_at_source(&self, bridge: &str) -> Option<u64> {
        self.pending_for_group(&format!("broker-bridge-{bridge}"))
            .await
    }
}

// --- The shared conformance checks. ---

#[tokio::test]
async fn delivers_byte_exact_events() {
    conformance::delivers_byte_exact(&Kafka::new(1).await).await;
}

#[tokio::test]
async fn dead_letters_poison_and_keeps_going() {
    conformance::dead_letters_poison(&Kafka::new(1).await).await;
}

#[tokio::test]
async fn metrics_match_traffic() {
    conformance::metrics_match_traffic(&Kafka::new(1).await).await;
}

#[tokio::test]
async fn counts_unroutable_events() {
    conformance::counts_unroutable(&Kafka::new(1).await).await;
}

#[tokio::test]
async fn at_least_once_through_exchange_outage() {
    conformance::at_least_once_through_exchange_outage(&Kafka::new(1).await).await;
}

#[tokio::test]
async fn reload_under_traffic_leaves_untouched_bridges_alone() {
    conformance::reload_under_traffic(&Kafka::new(1).await).await;
}

// --- Helpers for the Kafka-specific tests. ---

/// A `{"n":N,"run":"..."}` payload.
fn numbered(run: &str, n: u64) -> Vec<u8> {
    format!("{{\"n\":{n},\"run\":\"{run}\"}}").into_bytes()
}

/// Events by `n`: the id of each, checking that every copy of a record has one id.
/// Returns the ids and the number of events (copies included).
fn ids_by_number(received: &[Received]) -> (HashMap<u64, String>, usize) {
    let mut ids: HashMap<u64, String> = HashMap::new();
    for event in received {
        let json = event.json();
        let n = json["data"]["n"].as_u64().expect("a {\"n\":N} event");
        let id = json["id"].as_str().unwrap().to_owned();
        let first = ids.entry(n).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "a record read again ({n}) got another id");
    }
    (ids, received.len())
}

/// Takes events from `queue` until every `n` below `total` arrived (copies allowed).
async fn take_numbers(
    rabbit: &Rabbit,
    queue: &str,
    total: u64,
    timeout: Duration,
) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut received = Vec::new();
    loop {
        let (ids, _) = ids_by_number(&received);
        if ids.len() as u64 >= total || tokio::time::Instant::now() >= deadline {
            break;
        }
        let missing = total as usize - ids.len();
        received.extend(rabbit.take(queue, missing, Duration::from_secs(2)).await);
    }
    // Whatever else is on its way (copies).
    received.extend(
        rabbit
            .take(queue, usize::MAX, Duration::from_millis(500))
            .await,
    );
    received
}

fn metric(daemon: &Daemon, name: &str, bridge: &str) -> f64 {
    daemon
        .metrics()
        .bridge(name, bridge, "kafka")
        .unwrap_or(-2.0)
}

// --- What is special about Kafka. ---

/// Records on three partitions with keys, headers, a content type and explicit
/// timestamps: each event has the id `<topic>:<partition>:<offset>`, the key as
/// `partitionkey`, the record time, the topic as subject and type, the source
/// `kafka://<cluster>/<topic>`, header-driven tenant, and byte-exact data.
#[tokio::test]
async fn partitions_keys_headers_and_timestamps_map_to_the_event() {
    let source = Kafka::new(3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit.bind(&exchange, &format!("event.*.{bridge}.#")).await;
    let table = bridge_table(
        &source,
        &bridge,
        "tenant = \"{header:tenant}\"\ncluster = \"main-cluster\"",
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;

    let payloads = common::sample_payloads();
    let binary_key = [0xffu8, 0x00, 0x10];
    let mut sent = Vec::new();
    for round in 0..4i64 {
        for (index, (what, payload)) in payloads.iter().enumerate() {
            let partition = (round as i32 + index as i32) % 3;
            let timestamp = 1_700_000_000_000 + round * 1000 + index as i64;
            let key_text = format!("key-{round}-{what}");
            let key: &[u8] = if *what == "binary" {
                &binary_key
            } else {
                key_text.as_bytes()
            };
            let content_type: &[u8] = match *what {
                "text" => b"text/plain; charset=utf-8",
                "json" => b"application/json",
                _ => b"application/octet-stream",
            };
            let headers: [(&str, &[u8]); 3] = [
                ("tenant", b"globex"),
                ("Content-Type", content_type),
                ("x-trace", b"t-1"),
            ];
            let (partition, offset) = source
                .produce(
                    payload,
                    Record {
                        partition: Some(partition),
                        key: Some(key),
                        headers: &headers,
                        timestamp: Some(timestamp),
                    },
                )
                .await;
            sent.push((
                partition,
                offset,
                key.to_vec(),
                timestamp,
                *what,
                payload.clone(),
            ));
        }
    }
    let received = rabbit
        .take_exactly(&queue, sent.len(), Duration::from_secs(30))
        .await;
    assert_eq!(received.len(), sent.len(), "log: {}", daemon.log());
    let by_id: HashMap<String, &Received> = received
        .iter()
        .map(|r| (r.json()["id"].as_str().unwrap().to_owned(), r))
        .collect();
    assert_eq!(by_id.len(), sent.len(), "distinct ids");
    let partitions: HashSet<i32> = sent.iter().map(|s| s.0).collect();
    assert_eq!(partitions.len(), 3, "records on every partition");
    let topic = &source.topic;
    for (partition, offset, key, timestamp, what, payload) in &sent {
        let id = format!("{topic}:{partition}:{offset}");
        let event = by_id.get(&id).unwrap_or_else(|| panic!("no event {id}"));
        let json = event.json();
        assert_eq!(event.routing_key, format!("event.globex.{bridge}.{topic}"));
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], topic.as_str());
        assert_eq!(json["subject"], topic.as_str());
        assert_eq!(json["source"], format!("kafka://main-cluster/{topic}"));
        assert_eq!(json["tenant"], "globex");
        let expected_key = if *what == "binary" {
            base64::engine::general_purpose::STANDARD.encode(key)
        } else {
            String::from_utf8(key.clone()).unwrap()
        };
        assert_eq!(json["partitionkey"], expected_key);
        let time = chrono::DateTime::parse_from_rfc3339(json["time"].as_str().unwrap()).unwrap();
        assert_eq!(
            time.timestamp_millis(),
            *timestamp,
            "time is the record timestamp"
        );
        match *what {
            "json" => {
                assert_eq!(json["datacontenttype"], "application/json");
                let needle = [b"\"data\":".as_slice(), payload].concat();
                assert!(
                    event
                        .body
                        .windows(needle.len())
                        .any(|w| w == needle.as_slice()),
                    "JSON data is not byte-exact"
                );
            }
            other => {
                let expected = if other == "text" {
                    "text/plain; charset=utf-8"
                } else {
                    "application/octet-stream"
                };
                assert_eq!(json["datacontenttype"], expected);
                let data = base64::engine::general_purpose::STANDARD
                    .decode(json["data_base64"].as_str().expect("data_base64"))
                    .unwrap();
                assert_eq!(&data, payload, "data is byte-exact");
            }
        }
    }
}

/// A binary-mode CloudEvent (`ce_` headers, the Kafka binding) and a structured one
/// (`content-type: application/cloudevents+json`) pass through with their own id,
/// source and type; only the tenant is added.
#[tokio::test]
async fn cloudevents_pass_through_in_both_modes() {
    let source = Kafka::new(1).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_ready().await;

    let binary_headers: [(&str, &[u8]); 7] = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"order-1"),
        ("ce_source", b"/shop/orders"),
        ("ce_type", b"com.shop.order.created"),
        ("ce_time", b"2024-01-02T03:04:05Z"),
        ("ce_myext", b"v1"),
        ("content-type", b"application/json"),
    ];
    source
        .produce(
            br#"{"order": 7}"#,
            Record {
                partition: Some(0),
                key: Some(b"order-7"),
                headers: &binary_headers,
                ..Default::default()
            },
        )
        .await;
    let structured = br#"{"specversion":"1.0","id":"s-1","source":"/billing","type":"com.shop.invoice","datacontenttype":"application/json","data":{"sum":12.5}}"#;
    source
        .produce(
            structured,
            Record {
                partition: Some(0),
                headers: &[("content-type", b"application/cloudevents+json")],
                ..Default::default()
            },
        )
        .await;

    let received = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(30))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let binary = received[0].json();
    assert_eq!(binary["id"], "order-1");
    assert_eq!(binary["source"], "/shop/orders");
    assert_eq!(binary["type"], "com.shop.order.created");
    assert_eq!(binary["time"], "2024-01-02T03:04:05Z");
    assert_eq!(binary["myext"], "v1");
    assert_eq!(binary["tenant"], "acme");
    assert_eq!(binary["data"], serde_json::json!({"order": 7}));
    assert_eq!(
        received[0].routing_key,
        format!("event.acme.{bridge}.com_shop_order_created")
    );
    let structured = received[1].json();
    assert_eq!(structured["id"], "s-1");
    assert_eq!(structured["source"], "/billing");
    assert_eq!(structured["type"], "com.shop.invoice");
    assert_eq!(structured["tenant"], "acme");
    assert_eq!(structured["data"], serde_json::json!({"sum": 12.5}));
}

/// SIGKILL while records are published but unconfirmed (the exchange's confirms are
/// held back), more records while the daemon is dead, then a restart: every record
/// arrives, copies carry the id of their first delivery, and that id is
/// `<topic>:<partition>:<offset>`.
#[tokio::test]
async fn sigkill_mid_stream_then_restart_loses_nothing_and_keeps_ids() {
    let source = Kafka::new(3).await.with_short_sessions();
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

    let run = unique("r");
    let total = 300u64;
    let mut offsets = HashMap::new();
    let mut send = async |n: u64| {
        let placed = source
            .produce(
                &numbered(&run, n),
                Record {
                    partition: Some((n % 3) as i32),
                    ..Default::default()
                },
            )
            .await;
        offsets.insert(n, placed);
    };
    for n in 0..100 {
        send(n).await;
    }
    eventually(Duration::from_secs(30), "the first 100 confirmed", || {
        metric(&daemon, "bridge_events_published_total", &bridge) == 100.0
    })
    .await;
    // Confirms stop coming back: the next records are published but never confirmed.
    proxy.drop_replies();
    for n in 100..200 {
        send(n).await;
    }
    eventually(Duration::from_secs(30), "max_in_flight in flight", || {
        metric(&daemon, "bridge_messages_received_total", &bridge) == 120.0
    })
    .await;
    assert_eq!(
        metric(&daemon, "bridge_events_published_total", &bridge),
        100.0
    );
    daemon.kill();
    for n in 200..total {
        send(n).await;
    }
    proxy.restore();
    daemon.restart().await;

    let received = take_numbers(&rabbit, &queue, total, Duration::from_secs(90)).await;
    let (ids, events) = ids_by_number(&received);
    assert_eq!(
        ids.keys().copied().collect::<HashSet<_>>(),
        (0..total).collect(),
        "every record arrives; log: {}",
        daemon.log()
    );
    for (n, id) in &ids {
        let (partition, offset) = offsets[n];
        assert_eq!(id, &format!("{}:{partition}:{offset}", source.topic));
    }
    assert!(
        events as u64 > total,
        "the unconfirmed records were read again: {events} events"
    );
    // Everything is committed in the end.
    eventually_async(Duration::from_secs(20), "offsets committed", || async {
        source.pending_at_source(&bridge).await == Some(0)
    })
    .await;
}

/// Two daemons in one consumer group split the partitions and together deliver every
/// record; when one stops (SIGTERM), the other takes its partitions over and delivers
/// what is sent after that, without loss.
#[tokio::test]
async fn two_daemons_in_one_group_split_partitions_and_hand_over() {
    let source = Kafka::new(4).await.with_short_sessions();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let group = unique("g");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let table = bridge_table(&source, &bridge, &format!("group_id = \"{group}\""));
    let mut first = Daemon::start(AMQP_URL, &exchange, &table).await;
    first.wait_ready().await;
    let second = Daemon::start(AMQP_URL, &exchange, &table).await;
    second.wait_ready().await;

    let run = unique("r");
    let mut next = 0u64;
    let mut send_round = async |count: u64| {
        for _ in 0..count {
            source
                .produce(
                    &numbered(&run, next),
                    Record {
                        partition: Some((next % 4) as i32),
                        ..Default::default()
                    },
                )
                .await;
            next += 1;
        }
        next
    };
    // Until the group has settled with both members, rounds of records go to every
    // partition; both daemons must end up publishing.
    let published = |daemon: &Daemon| metric(daemon, "bridge_events_published_total", &bridge);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let sent = loop {
        let sent = send_round(8).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if published(&first) > 0.0 && published(&second) > 0.0 {
            break sent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both daemons publish: {} and {}\nfirst: {}\nsecond: {}",
            published(&first),
            published(&second),
            first.log(),
            second.log()
        );
    };
    let received = take_numbers(&rabbit, &queue, sent, Duration::from_secs(60)).await;
    let (ids, _) = ids_by_number(&received);
    assert_eq!(
        ids.keys().copied().collect::<HashSet<_>>(),
        (0..sent).collect(),
        "together they deliver every record"
    );

    // The first stops: its partitions go to the second.
    assert_eq!(first.terminate(), Some(0));
    let before = published(&second);
    let more = 40;
    let total = send_round(more).await;
    let received = take_numbers(&rabbit, &queue, total - sent, Duration::from_secs(90)).await;
    let (later, _) = ids_by_number(&received);
    let expected: HashSet<u64> = (sent..total).collect();
    let arrived: HashSet<u64> = later.keys().copied().filter(|n| *n >= sent).collect();
    assert_eq!(
        arrived,
        expected,
        "after the hand-over every record arrives; second: {}",
        second.log()
    );
    assert!(
        published(&second) - before >= more as f64,
        "the second daemon delivered them all"
    );
}

/// While the exchange is down, records wait at the source and `bridge_source_lag` says
/// how many; once they are bridged it returns to 0.
#[tokio::test]
async fn lag_counts_waiting_records_and_returns_to_zero() {
    let source = Kafka::new(2).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let table = bridge_table(&source, &bridge, "max_in_flight = 5");
    let daemon = Daemon::start(&proxy.amqp_url(), &exchange, &table).await;
    daemon.wait_ready().await;
    let lag = || metric(&daemon, "bridge_source_lag", &bridge);
    eventually(Duration::from_secs(20), "lag known and 0", || lag() == 0.0).await;

    proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    let run = unique("r");
    let total = 60u64;
    for n in 0..total {
        source
            .produce(
                &numbered(&run, n),
                Record {
                    partition: Some((n % 2) as i32),
                    ..Default::default()
                },
            )
            .await;
    }
    eventually(
        Duration::from_secs(20),
        "the lag shows the waiting records",
        || lag() >= (total - 5) as f64,
    )
    .await;
    assert!(lag() <= total as f64, "lag {} of {total} records", lag());

    proxy.restore();
    let received = take_numbers(&rabbit, &queue, total, Duration::from_secs(60)).await;
    let (ids, _) = ids_by_number(&received);
    assert_eq!(ids.len() as u64, total, "every record arrives");
    eventually(Duration::from_secs(20), "lag back to 0", || lag() == 0.0).await;
}

/// A topic that does not exist keeps the bridge reconnecting with the reason in its
/// status; once the topic is created, the bridge runs and delivers.
#[tokio::test]
async fn a_missing_topic_is_reported_until_it_exists() {
    let topic = unique("kt-later");
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let table = format!(
        "[[bridge]]\nname = \"{bridge}\"\nkind = \"kafka\"\nbrokers = \"{BROKERS}\"\ntopics = [\"{topic}\"]\n"
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    eventually(
        Duration::from_secs(20),
        "the missing topic reported",
        || {
            daemon.bridge_status(&bridge).is_some_and(|b| {
                b["status"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("does not exist"))
            })
        },
    )
    .await;
    create_topic(&topic, 1).await;
    daemon.wait_running(&bridge).await;
    produce(&producer(), &topic, b"{\"late\":true}", Record::default()).await;
    let received = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(30))
        .await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(received[0].json()["id"], format!("{topic}:0:0"));
}
