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
use common::conformance::{SourceUnderTest, bridge_table, conformance_suite};
use common::poison::{self, Carries, PoisonMessage, Sent};
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
    partitions: i32,
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
            partitions,
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

    /// Produces `payload` with `headers` to partition 0.
    async fn produce_to_first_partition(&self, payload: &[u8], headers: &[(&str, &[u8])]) {
        let record = Record {
            partition: Some(0),
            headers,
            ..Default::default()
        };
        self.produce(payload, record).await;
    }

    /// Produces the `{"n":N}` record of `run` to partition N modulo the partition count,
    /// so that consecutive records spread over every partition; `(partition, offset)`.
    async fn produce_spread(&self, run: &str, n: u64) -> (i32, i64) {
        let record = Record {
            partition: Some((n % self.partitions as u64) as i32),
            ..Default::default()
        };
        self.produce(&numbered(run, n), record).await
    }

    /// Records waiting for the bridge's group: end offsets minus committed offsets
    /// (the start of the log where nothing is committed yet).
    async fn pending_for_group(&self, group: &str) -> Option<u64> {
        pending(&self.topic, group).await
    }
}

/// Each partition of `topic` as `group` stands there: `(committed offset, low, high)`,
/// read with a client that joins no group.
async fn standing(topic: &str, group: &str) -> Option<Vec<(Option<i64>, i64, i64)>> {
    let topic = topic.to_owned();
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
        let mut out = Vec::new();
        for partition in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .ok()?;
            let at = match committed.find_partition(&topic, partition)?.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            out.push((at, low, high));
        }
        Some(out)
    })
    .await
    .unwrap()
}

/// Records of `topic` waiting for `group`: end offsets minus committed offsets (the
/// start of the log where nothing is committed yet).
async fn pending(topic: &str, group: &str) -> Option<u64> {
    let partitions = standing(topic, group).await?;
    Some(
        partitions
            .iter()
            .map(|(at, low, high)| (high - at.unwrap_or(*low)).max(0) as u64)
            .sum(),
    )
}

/// Committed offsets of `group` on the partitions of `topic` (`None`: nothing).
async fn committed(topic: &str, group: &str) -> Vec<Option<i64>> {
    standing(topic, group)
        .await
        .expect("the broker answers")
        .into_iter()
        .map(|(at, _, _)| at)
        .collect()
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
        self.produce_to_first_partition(payload, &headers).await;
    }
    async fn pending_at_source(&self, bridge: &str) -> Option<u64> {
        self.pending_for_group(&format!("broker-bridge-{bridge}"))
            .await
    }
    fn carries(&self) -> Carries {
        Carries {
            // No `max_id`: the event id is `<topic>:<partition>:<offset>`.
            headers: true,
            // Record header names are strings of any length, values any bytes.
            max_header_name: 4096,
            binary_header_values: true,
            control_header_values: true,
            // The `content-type` record header.
            max_content_type: 4096,
            ..Default::default()
        }
    }
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        let mut headers: Vec<(&str, &[u8])> = message
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        if let Some(content_type) = &message.content_type {
            headers.push(("content-type", content_type.as_bytes()));
        }
        self.produce_to_first_partition(&message.payload, &headers)
            .await;
        Sent::default()
    }
}

// --- The shared conformance checks. ---

conformance_suite!(Kafka::new(1).await);

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

fn event_ids(received: &[Received]) -> HashSet<String> {
    received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect()
}

fn metric(daemon: &Daemon, name: &str, bridge: &str) -> f64 {
    daemon
        .metrics()
        .bridge(name, bridge, "kafka")
        .unwrap_or(-2.0)
}

/// A topic of the test's own with one partition.
async fn new_topic(prefix: &str) -> String {
    let topic = unique(prefix);
    create_topic(&topic, 1).await;
    topic
}

/// Produces `{"n":N}` records for `numbers` to partition 0 of `topic`; their event ids.
async fn produce_numbered(
    producer: &FutureProducer,
    topic: &str,
    run: &str,
    numbers: std::ops::Range<u64>,
) -> HashSet<String> {
    let mut ids = HashSet::new();
    for n in numbers {
        let (partition, offset) = produce(
            producer,
            topic,
            &numbered(run, n),
            Record {
                partition: Some(0),
                ..Default::default()
            },
        )
        .await;
        ids.insert(format!("{topic}:{partition}:{offset}"));
    }
    ids
}

/// What a Kafka-specific test sets up around its daemon: a bridge name of its own, an
/// exchange with a RabbitMQ queue bound to every event the bridge publishes, the
/// daemon's exchange connection (through a proxy the test can cut, where it asks for
/// one), and a producer and run name for its records.
struct Scene {
    rabbit: Rabbit,
    exchange: String,
    bridge: String,
    queue: String,
    proxy: Option<Proxy>,
    producer: FutureProducer,
    run: String,
}

impl Scene {
    /// The daemon talks to RabbitMQ directly; the queue takes tenant `acme`'s events.
    async fn direct() -> Scene {
        Scene::new("acme", false).await
    }

    /// The daemon's exchange connection goes through a proxy; the queue takes tenant
    /// `acme`'s events.
    async fn behind_proxy() -> Scene {
        Scene::new("acme", true).await
    }

    /// The queue takes the bridge's events of `tenant` (a routing key word or `*`).
    async fn new(tenant: &str, proxied: bool) -> Scene {
        let rabbit = Rabbit::connect().await;
        let (exchange, bridge) = (unique("ex"), unique("b"));
        let queue = rabbit
            .bind(&exchange, &format!("event.{tenant}.{bridge}.#"))
            .await;
        let proxy = if proxied {
            Some(Proxy::start("127.0.0.1:5672").await)
        } else {
            None
        };
        Scene {
            rabbit,
            exchange,
            bridge,
            queue,
            proxy,
            producer: producer(),
            run: unique("r"),
        }
    }

    /// The proxy in front of the exchange (a scene made `behind_proxy`).
    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("a scene behind a proxy")
    }

    /// Starts a daemon on `bridges` without waiting for its bridges.
    async fn launch(&self, bridges: &str) -> Daemon {
        let url = match &self.proxy {
            Some(proxy) => proxy.amqp_url(),
            None => AMQP_URL.to_owned(),
        };
        Daemon::start(&url, &self.exchange, bridges).await
    }

    /// Starts a daemon on `bridges` and waits until it is ready.
    async fn start(&self, bridges: &str) -> Daemon {
        let daemon = self.launch(bridges).await;
        daemon.wait_ready().await;
        daemon
    }

    /// The scene's bridge reading `topics`, with `extra` keys.
    fn kafka_bridge(&self, topics: &[&str], extra: &str) -> String {
        let topics: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            "[[bridge]]\nname = \"{}\"\nkind = \"kafka\"\nbrokers = \"{BROKERS}\"\ntopics = [{}]\n{extra}\n",
            self.bridge,
            topics.join(", ")
        )
    }

    /// Cuts the daemon's exchange connection and waits until the daemon sees it down:
    /// from then on records wait at the source.
    async fn cut_exchange(&self, daemon: &Daemon) {
        self.proxy().cut();
        eventually(Duration::from_secs(15), "exchange seen down", || {
            daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
        })
        .await;
    }

    /// Lets the daemon reach the exchange again (and its confirms come back).
    fn restore_exchange(&self) {
        self.proxy().restore();
    }

    /// `{"n":N}` records of the scene's run for `numbers`, on partition 0 of `topic`;
    /// their event ids.
    async fn produce(&self, topic: &str, numbers: std::ops::Range<u64>) -> HashSet<String> {
        produce_numbered(&self.producer, topic, &self.run, numbers).await
    }

    /// Takes `count` events from the queue, then makes sure nothing else arrives.
    async fn take_exactly(&self, count: usize, timeout: Duration) -> Vec<Received> {
        self.rabbit.take_exactly(&self.queue, count, timeout).await
    }

    /// Takes events until every `n` below `total` arrived (copies allowed).
    async fn take_numbers(&self, total: u64, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut received = Vec::new();
        loop {
            let (ids, _) = ids_by_number(&received);
            if ids.len() as u64 >= total || tokio::time::Instant::now() >= deadline {
                break;
            }
            let missing = total as usize - ids.len();
            received.extend(self.take(missing, Duration::from_secs(2)).await);
        }
        // Whatever else is on its way (copies).
        received.extend(self.take(usize::MAX, Duration::from_millis(500)).await);
        received
    }

    /// Takes events until every id in `expected` arrived (or a minute passed), then
    /// whatever else comes within half a second.
    async fn take_ids(&self, expected: &HashSet<String>) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut received = Vec::new();
        loop {
            let missing = expected.difference(&event_ids(&received)).count();
            if missing == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            received.extend(self.take(missing, Duration::from_secs(2)).await);
        }
        received.extend(self.take(usize::MAX, Duration::from_millis(500)).await);
        received
    }

    async fn take(&self, count: usize, timeout: Duration) -> Vec<Received> {
        self.rabbit.take(&self.queue, count, timeout).await
    }
}

// --- What is special about Kafka. ---

/// Records on three partitions with keys, headers, a content type and explicit
/// timestamps: each event has the id `<topic>:<partition>:<offset>`, the key as
/// `partitionkey`, the record time, the topic as subject and type, the source
/// `kafka://<cluster>/<topic>`, header-driven tenant, and byte-exact data.
#[tokio::test]
async fn partitions_keys_headers_and_timestamps_map_to_the_event() {
    let source = Kafka::new(3).await;
    // Every tenant: the tenant comes from a record header.
    let scene = Scene::new("*", false).await;
    let bridge = &scene.bridge;
    let table = bridge_table(
        &source,
        bridge,
        "tenant = \"{header:tenant}\"\ncluster = \"main-cluster\"",
    );
    let daemon = scene.start(&table).await;

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
    let received = scene
        .take_exactly(sent.len(), Duration::from_secs(30))
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
    let scene = Scene::direct().await;
    let bridge = &scene.bridge;
    let daemon = scene.start(&bridge_table(&source, bridge, "")).await;

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
        .produce_to_first_partition(
            structured,
            &[("content-type", b"application/cloudevents+json")],
        )
        .await;

    let received = scene.take_exactly(2, Duration::from_secs(30)).await;
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
    let scene = Scene::behind_proxy().await;
    let bridge = &scene.bridge;
    let table = bridge_table(&source, bridge, "max_in_flight = 20");
    let mut daemon = scene.start(&table).await;

    let total = 300u64;
    let mut offsets = HashMap::new();
    let mut send = async |n: u64| {
        offsets.insert(n, source.produce_spread(&scene.run, n).await);
    };
    for n in 0..100 {
        send(n).await;
    }
    eventually(Duration::from_secs(30), "the first 100 confirmed", || {
        metric(&daemon, "bridge_events_published_total", bridge) == 100.0
    })
    .await;
    // Confirms stop coming back: the next records are published but never confirmed.
    scene.proxy().drop_replies();
    for n in 100..200 {
        send(n).await;
    }
    eventually(Duration::from_secs(30), "max_in_flight in flight", || {
        metric(&daemon, "bridge_messages_received_total", bridge) == 120.0
    })
    .await;
    assert_eq!(
        metric(&daemon, "bridge_events_published_total", bridge),
        100.0
    );
    daemon.kill();
    for n in 200..total {
        send(n).await;
    }
    scene.restore_exchange();
    daemon.restart().await;

    let received = scene.take_numbers(total, Duration::from_secs(90)).await;
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
        source.pending_at_source(bridge).await == Some(0)
    })
    .await;
}

/// Two daemons in one consumer group split the partitions and together deliver every
/// record; when one stops (SIGTERM), the other takes its partitions over and delivers
/// what is sent after that, without loss.
#[tokio::test]
async fn two_daemons_in_one_group_split_partitions_and_hand_over() {
    let source = Kafka::new(4).await.with_short_sessions();
    let scene = Scene::direct().await;
    let bridge = &scene.bridge;
    let group = unique("g");
    let table = bridge_table(&source, bridge, &format!("group_id = \"{group}\""));
    let mut first = scene.start(&table).await;
    let second = scene.start(&table).await;

    let mut next = 0u64;
    let mut send_round = async |count: u64| {
        for _ in 0..count {
            source.produce_spread(&scene.run, next).await;
            next += 1;
        }
        next
    };
    // Until the group has settled with both members, rounds of records go to every
    // partition; both daemons must end up publishing.
    let published = |daemon: &Daemon| metric(daemon, "bridge_events_published_total", bridge);
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
    let received = scene.take_numbers(sent, Duration::from_secs(60)).await;
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
    let received = scene
        .take_numbers(total - sent, Duration::from_secs(90))
        .await;
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
    let scene = Scene::behind_proxy().await;
    let bridge = &scene.bridge;
    let daemon = scene
        .start(&bridge_table(&source, bridge, "max_in_flight = 5"))
        .await;
    let lag = || metric(&daemon, "bridge_source_lag", bridge);
    eventually(Duration::from_secs(20), "lag known and 0", || lag() == 0.0).await;

    scene.cut_exchange(&daemon).await;
    let total = 60u64;
    for n in 0..total {
        source.produce_spread(&scene.run, n).await;
    }
    eventually(
        Duration::from_secs(20),
        "the lag shows the waiting records",
        || lag() >= (total - 5) as f64,
    )
    .await;
    assert!(lag() <= total as f64, "lag {} of {total} records", lag());

    scene.restore_exchange();
    let received = scene.take_numbers(total, Duration::from_secs(60)).await;
    let (ids, _) = ids_by_number(&received);
    assert_eq!(ids.len() as u64, total, "every record arrives");
    eventually(Duration::from_secs(20), "lag back to 0", || lag() == 0.0).await;
}

/// A topic that does not exist keeps the bridge reconnecting with the reason in its
/// status; once the topic is created, the bridge runs and delivers.
#[tokio::test]
async fn a_missing_topic_is_reported_until_it_exists() {
    let topic = unique("kt-later");
    let scene = Scene::direct().await;
    let bridge = &scene.bridge;
    // Not ready until the topic exists.
    let daemon = scene.launch(&scene.kafka_bridge(&[&topic], "")).await;
    eventually(
        Duration::from_secs(20),
        "the missing topic reported",
        || {
            daemon.bridge_status(bridge).is_some_and(|b| {
                b["status"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("does not exist"))
            })
        },
    )
    .await;
    create_topic(&topic, 1).await;
    daemon.wait_running(bridge).await;
    produce(
        &scene.producer,
        &topic,
        b"{\"late\":true}",
        Record::default(),
    )
    .await;
    let received = scene.take_exactly(1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(received[0].json()["id"], format!("{topic}:0:0"));
}

// --- Editing a bridge's source keys: what happens to the records waiting for it. ---
//
// Each test leaves records waiting at the source when the edit takes effect (the
// exchange is cut for a reload, the daemon is stopped for a restart), then accounts for
// every one of them by id `<topic>:<partition>:<offset>`: published after the edit, or
// still waiting for a group (its committed offset) and reported by the daemon.

/// The daemon's log without colours.
fn plain_log(daemon: &Daemon) -> String {
    let log = daemon.log();
    let mut out = String::with_capacity(log.len());
    let mut rest = log.as_str();
    while let Some(at) = rest.find('\u{1b}') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = match rest.find('m') {
            Some(end) => &rest[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Waits until `needle` appears `count` times in the daemon's log.
async fn wait_log(daemon: &Daemon, needle: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while plain_log(daemon).matches(needle).count() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{needle}` {count} time(s) in the log: {}",
            plain_log(daemon)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The line the source logs once it has subscribed (the message and its first field,
/// whichever module of the kind logs it).
const SUBSCRIBED: &str = ": subscribed group=";

async fn wait_committed(topic: &str, group: &str) {
    eventually_async(
        Duration::from_secs(30),
        &format!("{topic} committed for {group}"),
        || async { pending(topic, group).await == Some(0) },
    )
    .await;
}

/// The committed offset of `group` on the one partition of `topic`.
async fn committed_at(topic: &str, group: &str) -> i64 {
    let [Some(at)] = committed(topic, group).await[..] else {
        panic!("one committed offset")
    };
    at
}

/// Every id of `expected` is among the `ids` taken.
fn assert_arrived(ids: &HashSet<String>, expected: &HashSet<String>, daemon: &Daemon) {
    assert!(
        ids.is_superset(expected),
        "missing {:?}; log: {}",
        expected.difference(ids).collect::<Vec<_>>(),
        plain_log(daemon)
    );
}

/// None of `not_read` is among the `ids` taken; `what` says why.
fn assert_none_of(ids: &HashSet<String>, not_read: &HashSet<String>, what: &str) {
    assert!(
        ids.is_disjoint(not_read),
        "{what}: {:?}",
        ids.intersection(not_read).collect::<Vec<_>>()
    );
}

/// The accounting where an edit to `new_group` was refused or not made: `unread`
/// records still wait for `old_group`, and `new_group` has nothing committed.
async fn assert_kept_by_old_group(topic: &str, old_group: &str, new_group: &str, unread: u64) {
    assert_eq!(pending(topic, old_group).await, Some(unread));
    assert_eq!(committed(topic, new_group).await, vec![None]);
}

impl Scene {
    /// Produces marker records to `topic` until one is bridged: from then on the bridge
    /// reads every new record of the topic (with `start = "latest"`, records produced
    /// before the group found the end of a partition are not read). Returns what
    /// arrived.
    async fn until_reading(&self, topic: &str) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for n in 0.. {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no marker on {topic} was bridged"
            );
            produce(
                &self.producer,
                topic,
                format!("{{\"marker\":{n}}}").as_bytes(),
                Record {
                    partition: Some(0),
                    ..Default::default()
                },
            )
            .await;
            let received = self.take(1, Duration::from_secs(1)).await;
            if !received.is_empty() {
                return received;
            }
        }
        unreachable!()
    }

    /// Takes events until every id of `expected` arrived and checks that they all did;
    /// the ids of all that was taken.
    async fn expect_ids(&self, daemon: &Daemon, expected: &HashSet<String>) -> HashSet<String> {
        let ids = event_ids(&self.take_ids(expected).await);
        assert_arrived(&ids, expected, daemon);
        ids
    }

    /// Takes events until every id of `expected` arrived and checks that exactly these
    /// did.
    async fn expect_exactly(&self, daemon: &Daemon, expected: &HashSet<String>) {
        let ids = event_ids(&self.take_ids(expected).await);
        assert_eq!(&ids, expected, "log: {}", plain_log(daemon));
    }

    /// The accounting after an edit: every record of `waiting` is published, and none of
    /// `bridged` (committed before the edit) is read again.
    async fn expect_waiting_not_bridged(
        &self,
        daemon: &Daemon,
        waiting: &HashSet<String>,
        bridged: &HashSet<String>,
    ) {
        let ids = self.expect_ids(daemon, waiting).await;
        assert_none_of(
            &ids,
            bridged,
            "records bridged before the edit were read again",
        );
    }

    /// A reload while records wait: cuts the exchange, produces `numbers` to `topic`
    /// (they wait at the source), then writes `bridges`. The caller restores the
    /// exchange once it has checked what the daemon said. The waiting records' ids.
    async fn reload_while_waiting(
        &self,
        daemon: &Daemon,
        topic: &str,
        numbers: std::ops::Range<u64>,
        bridges: &str,
    ) -> HashSet<String> {
        self.cut_exchange(daemon).await;
        let waiting = self.produce(topic, numbers).await;
        daemon.write_bridges(bridges);
        waiting
    }

    /// A restart while records wait: stops the daemon (SIGTERM, exit 0), produces
    /// `numbers` to `topic`, writes `bridges` and starts the daemon again. The waiting
    /// records' ids.
    async fn restart_while_waiting(
        &self,
        daemon: &mut Daemon,
        topic: &str,
        numbers: std::ops::Range<u64>,
        bridges: &str,
    ) -> HashSet<String> {
        assert_eq!(daemon.terminate(), Some(0));
        let waiting = self.produce(topic, numbers).await;
        daemon.write_bridges(bridges);
        daemon.restart().await;
        waiting
    }
}

/// Reload: a topic added is read from its oldest record (`start = "earliest"`, no
/// committed offset there), and the daemon says so; the kept topic goes on from its
/// committed offset: its 20 waiting records are published, the 10 committed before the
/// edit are not read again.
#[tokio::test]
async fn reload_adding_a_topic_starts_it_at_start_and_keeps_the_other_topics_offsets() {
    let (a, b) = (new_topic("kt-a").await, new_topic("kt-b").await);
    let group = unique("g");
    let scene = Scene::behind_proxy().await;
    let extra = format!("group_id = \"{group}\"\nmax_in_flight = 5");
    let daemon = scene.start(&scene.kafka_bridge(&[&a], &extra)).await;

    let bridged = scene.produce(&a, 0..10).await;
    scene.expect_exactly(&daemon, &bridged).await;
    wait_committed(&a, &group).await;
    // b holds records the bridge has never read.
    let held_by_b = scene.produce(&b, 100..104).await;

    scene.cut_exchange(&daemon).await;
    let waiting = scene.produce(&a, 10..30).await;
    assert_eq!(pending(&a, &group).await, Some(20));
    daemon.write_bridges(&scene.kafka_bridge(&[&a, &b], &extra));
    wait_log(&daemon, SUBSCRIBED, 2).await;
    let said = format!(
        "group `{group}` has no committed offset on {b}[0]: it starts at their oldest record (start = \"earliest\"): 4 record(s)"
    );
    assert!(
        plain_log(&daemon).contains(&said),
        "{said}: {}",
        plain_log(&daemon)
    );
    scene.restore_exchange();

    let expected = waiting.union(&held_by_b).cloned().collect();
    scene
        .expect_waiting_not_bridged(&daemon, &expected, &bridged)
        .await;
    wait_committed(&a, &group).await;
    wait_committed(&b, &group).await;
}

/// Restart with `start = "latest"`: a topic added starts at its end, and the daemon
/// names the records it will not bridge there (they were never waiting for the bridge);
/// the kept topic's 20 waiting records are published, because its committed offset
/// wins over `start`; new records of the added topic are bridged.
#[tokio::test]
async fn restart_adding_a_topic_with_start_latest_skips_only_what_it_held_and_says_so() {
    let (a, b) = (new_topic("kt-a").await, new_topic("kt-b").await);
    let group = unique("g");
    let scene = Scene::direct().await;
    let extra = format!("group_id = \"{group}\"\nstart = \"latest\"");
    let mut daemon = scene.start(&scene.kafka_bridge(&[&a], &extra)).await;
    scene.until_reading(&a).await;
    let bridged = scene.produce(&a, 0..10).await;
    scene.expect_ids(&daemon, &bridged).await;
    wait_committed(&a, &group).await;
    let held_by_b = scene.produce(&b, 100..104).await;

    let both = scene.kafka_bridge(&[&a, &b], &extra);
    let waiting = scene
        .restart_while_waiting(&mut daemon, &a, 10..30, &both)
        .await;
    let said = format!(
        "group `{group}` has no committed offset on {b}[0]: it starts at their end (start = \"latest\"), so the 4 record(s) they hold now are not bridged"
    );
    wait_log(&daemon, &said, 1).await;

    let mut ids = event_ids(&scene.take_ids(&waiting).await);
    ids.extend(event_ids(&scene.until_reading(&b).await));
    let later = scene.produce(&b, 104..109).await;
    ids.extend(event_ids(&scene.take_ids(&later).await));
    assert_arrived(&ids, &waiting.union(&later).cloned().collect(), &daemon);
    assert_none_of(&ids, &bridged, "committed records read again");
    assert_none_of(&ids, &held_by_b, "start = latest skipped what b held");
    wait_committed(&a, &group).await;
}

/// Reload removing a topic: the group keeps its committed offset there, the daemon
/// names the topic, the group and the 10 records left waiting, and none of them is
/// read; listing the topic again (here across a restart, where the daemon remembers
/// nothing) resumes from that offset: all 13 waiting records are published, none of the
/// 5 bridged before is read again.
#[tokio::test]
async fn removing_a_topic_keeps_its_offsets_and_listing_it_again_resumes() {
    let (a, b) = (new_topic("kt-a").await, new_topic("kt-b").await);
    let group = unique("g");
    let scene = Scene::behind_proxy().await;
    let extra = format!("group_id = \"{group}\"");
    let both = scene.kafka_bridge(&[&a, &b], &extra);
    let mut daemon = scene.start(&both).await;
    let mut bridged = scene.produce(&a, 0..5).await;
    bridged.extend(scene.produce(&b, 100..105).await);
    scene.expect_exactly(&daemon, &bridged).await;
    wait_committed(&a, &group).await;
    wait_committed(&b, &group).await;

    scene.cut_exchange(&daemon).await;
    let waiting_a = scene.produce(&a, 5..15).await;
    let mut waiting_b = scene.produce(&b, 105..115).await;
    daemon.write_bridges(&scene.kafka_bridge(&[&a], &extra));
    let said = format!(
        "key `topics`: `{b}` is no longer read; group `{group}` keeps its committed offsets there ({b}[0] at 5 (10 unread)), and listing it again resumes from them; until then 10 record(s) there are not bridged"
    );
    wait_log(&daemon, &said, 1).await;
    scene.restore_exchange();
    let ids = scene.expect_ids(&daemon, &waiting_a).await;
    assert_none_of(&ids, &waiting_b, "b is no longer read");
    wait_committed(&a, &group).await;
    // The accounting of b: every waiting record is still waiting for the group.
    assert_eq!(committed(&b, &group).await, vec![Some(5)]);
    assert_eq!(pending(&b, &group).await, Some(10));

    // Listed again after a restart: the group resumes from its committed offset.
    waiting_b.extend(
        scene
            .restart_while_waiting(&mut daemon, &b, 115..118, &both)
            .await,
    );
    scene
        .expect_waiting_not_bridged(&daemon, &waiting_b, &bridged)
        .await;
    wait_committed(&b, &group).await;
}

/// Reload changing `group_id` with `start = "latest"` while the old group has 20
/// records waiting: the new group has no offsets and would start at the end, so the
/// edit is refused with the key, both groups and the old group's offsets; nothing is
/// committed for the new group and the records keep waiting for the old one, which then
/// publishes all of them.
#[tokio::test]
async fn reload_changing_the_group_where_it_would_skip_records_is_refused() {
    let topic = new_topic("kt").await;
    let (old_group, new_group) = (unique("g-old"), unique("g-new"));
    let scene = Scene::behind_proxy().await;
    let bridge = &scene.bridge;
    let table = |group: &str| {
        let keys = format!("group_id = \"{group}\"\nstart = \"latest\"");
        scene.kafka_bridge(&[&topic], &keys)
    };
    let daemon = scene.start(&table(&old_group)).await;
    scene.until_reading(&topic).await;
    let bridged = scene.produce(&topic, 0..5).await;
    scene.expect_ids(&daemon, &bridged).await;
    wait_committed(&topic, &old_group).await;
    let at = committed_at(&topic, &old_group).await;

    let waiting = scene
        .reload_while_waiting(&daemon, &topic, 5..25, &table(&new_group))
        .await;
    let said = format!(
        "key `group_id`: changing it from `{old_group}` to `{new_group}` would skip 20 record(s): `{new_group}` has no committed offset on {topic}[0] and would start at their end (start = \"latest\"), where `{old_group}` has not read them yet ({topic}[0] at {at} (20 unread))"
    );
    // A reload is refused as a whole (the old bridge keeps running); a bridge that
    // connects with the new group anyway (the broker did not answer the check in time)
    // refuses to start and says why in its status.
    eventually(Duration::from_secs(45), "the refusal reported", || {
        let bridges = daemon.bridges();
        let reload = bridges["config"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let status = daemon
            .bridge_status(bridge)
            .and_then(|b| b["status"]["last_error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        reload.contains(&said) || status.contains(&said)
    })
    .await;
    let reload_refused = daemon.bridges()["config"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains(&said) && e.contains(bridge.as_str()));
    if reload_refused {
        daemon.wait_running(bridge).await;
    }
    // The accounting at the refusal: all 20 wait for the old group, the new one has
    // nothing committed.
    assert_kept_by_old_group(&topic, &old_group, &new_group, 20).await;

    // Back to the old group (a no-op where the reload was refused): all 20 arrive.
    daemon.write_bridges(&table(&old_group));
    scene.restore_exchange();
    scene
        .expect_waiting_not_bridged(&daemon, &waiting, &bridged)
        .await;
    wait_committed(&topic, &old_group).await;
    assert_eq!(committed(&topic, &new_group).await, vec![None]);
}

/// Reload changing `group_id` with `start = "earliest"`: the new group reads the topic
/// from its oldest record, so the 20 waiting records are published (and the 5 bridged
/// before come again with their ids); the daemon names the key, both groups and the
/// offset the old group keeps.
#[tokio::test]
async fn reload_changing_the_group_with_start_earliest_reads_again_and_says_so() {
    let topic = new_topic("kt").await;
    let (old_group, new_group) = (unique("g-old"), unique("g-new"));
    let scene = Scene::behind_proxy().await;
    let table = |group: &str| scene.kafka_bridge(&[&topic], &format!("group_id = \"{group}\""));
    let daemon = scene.start(&table(&old_group)).await;
    let bridged = scene.produce(&topic, 0..5).await;
    scene.expect_exactly(&daemon, &bridged).await;
    wait_committed(&topic, &old_group).await;

    let waiting = scene
        .reload_while_waiting(&daemon, &topic, 5..25, &table(&new_group))
        .await;
    let said = format!(
        "key `group_id` changed from `{old_group}` to `{new_group}`: `{old_group}` keeps its committed offsets ({topic}[0] at 5 (20 unread)); `{new_group}` reads from its own, and has none on {topic}[0]: it starts there at the earliest offset (start = \"earliest\"), so records `{old_group}` bridged already are bridged again, with the same ids"
    );
    wait_log(&daemon, &said, 1).await;
    scene.restore_exchange();
    let expected: HashSet<String> = waiting.union(&bridged).cloned().collect();
    let received = scene.take_ids(&expected).await;
    assert_arrived(&event_ids(&received), &expected, &daemon);
    let (by_number, _) = ids_by_number(&received);
    assert_eq!(
        by_number.len(),
        25,
        "one id per record, the same when read again"
    );
    wait_committed(&topic, &new_group).await;
    // The old group keeps its offset: nothing moved it.
    assert_eq!(committed(&topic, &old_group).await, vec![Some(5)]);
}

/// Restart after setting `group_id` on a bridge that used the default group, with
/// `start = "latest"`: the daemon cannot know the previous group in general, but it
/// names the records the new group skips and the default group's 20 waiting records;
/// those stay committed there, and removing `group_id` again (a reload) publishes them.
#[tokio::test]
async fn restart_changing_the_group_reports_what_the_default_group_keeps() {
    let topic = new_topic("kt").await;
    let new_group = unique("g-new");
    let scene = Scene::direct().await;
    let default_group = format!("broker-bridge-{}", scene.bridge);
    let latest = "start = \"latest\"";
    let mut daemon = scene.start(&scene.kafka_bridge(&[&topic], latest)).await;
    scene.until_reading(&topic).await;
    let bridged = scene.produce(&topic, 0..5).await;
    scene.expect_ids(&daemon, &bridged).await;
    wait_committed(&topic, &default_group).await;
    let at = committed_at(&topic, &default_group).await;

    let with_group = format!("{latest}\ngroup_id = \"{new_group}\"");
    let waiting = scene
        .restart_while_waiting(
            &mut daemon,
            &topic,
            5..25,
            &scene.kafka_bridge(&[&topic], &with_group),
        )
        .await;
    let held = at + 20;
    let said = format!(
        "group `{new_group}` has no committed offset on {topic}[0]: it starts at their end (start = \"latest\"), so the {held} record(s) they hold now are not bridged; the default group `{default_group}` has 20 unread record(s) on these topics ({topic}[0] at {at} (20 unread))"
    );
    wait_log(&daemon, &said, 1).await;
    daemon.wait_running(&scene.bridge).await;
    // The accounting: all 20 still wait for the default group, and the daemon said so.
    assert_eq!(pending(&topic, &default_group).await, Some(20));
    let nothing = scene.take(1, Duration::from_secs(2)).await;
    assert!(nothing.is_empty(), "the new group started at the end");

    daemon.write_bridges(&scene.kafka_bridge(&[&topic], latest));
    scene
        .expect_waiting_not_bridged(&daemon, &waiting, &bridged)
        .await;
    wait_committed(&topic, &default_group).await;
}

/// Changing `start` on a group with committed offsets repositions nothing: after a
/// reload to "latest" the 10 records waiting are published, and after a restart back to
/// "earliest" the next 10 are, without reading the 15 committed ones again.
#[tokio::test]
async fn changing_start_keeps_the_committed_offsets_on_reload_and_restart() {
    let topic = new_topic("kt").await;
    let group = unique("g");
    let scene = Scene::behind_proxy().await;
    let table = |start: &str| {
        let keys = format!("group_id = \"{group}\"\nstart = \"{start}\"");
        scene.kafka_bridge(&[&topic], &keys)
    };
    let mut daemon = scene.start(&table("earliest")).await;
    let mut bridged = scene.produce(&topic, 0..5).await;
    scene.expect_ids(&daemon, &bridged).await;
    wait_committed(&topic, &group).await;

    let waiting = scene
        .reload_while_waiting(&daemon, &topic, 5..15, &table("latest"))
        .await;
    let said = format!(
        "key `start` changed from \"earliest\" to \"latest\": group `{group}` goes on from its committed offsets; start applies only where it has none (no partition)"
    );
    wait_log(&daemon, &said, 1).await;
    scene.restore_exchange();
    scene
        .expect_waiting_not_bridged(&daemon, &waiting, &bridged)
        .await;
    wait_committed(&topic, &group).await;
    bridged.extend(waiting);

    let waiting = scene
        .restart_while_waiting(&mut daemon, &topic, 15..25, &table("earliest"))
        .await;
    scene
        .expect_waiting_not_bridged(&daemon, &waiting, &bridged)
        .await;
    wait_committed(&topic, &group).await;
}

/// `start = "latest"` is decided once per partition: the start of a new group is
/// committed before any record arrives, so records produced while the daemon is stopped
/// (before it ever bridged one) are published after the restart, and the 3 records the
/// topic held before the group started are not.
#[tokio::test]
async fn start_latest_holds_across_a_restart_before_the_first_record() {
    let topic = new_topic("kt").await;
    let group = unique("g");
    let scene = Scene::direct().await;
    let held = scene.produce(&topic, 0..3).await;
    let extra = format!("group_id = \"{group}\"\nstart = \"latest\"");
    let mut daemon = scene.start(&scene.kafka_bridge(&[&topic], &extra)).await;
    wait_log(&daemon, "partitions assigned", 1).await;
    // The start is committed soon after the assignment (not asserted here: without it,
    // the loss shows below).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while committed(&topic, &group).await != vec![Some(3)] && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(daemon.terminate(), Some(0));
    let waiting = scene.produce(&topic, 3..8).await;
    daemon.restart().await;
    let ids = event_ids(&scene.take_ids(&waiting).await);
    assert!(
        ids.is_superset(&waiting),
        "records produced while the daemon was stopped were skipped: {:?}; committed {:?}; log: {}",
        waiting.difference(&ids).collect::<Vec<_>>(),
        committed(&topic, &group).await,
        plain_log(&daemon)
    );
    assert_none_of(&ids, &held, "latest: what the topic held is not read");
    wait_committed(&topic, &group).await;
}

/// What a reload asks before it restarts a changed bridge (`verify_position`), in the
/// process whose source read with the old group: a new group that would start at the
/// end where the old one has 4 unread records is refused, naming the key, both groups
/// and the offset, and nothing is committed for it; the same group, or the new one with
/// `start = "earliest"`, passes.
#[tokio::test]
async fn verify_position_refuses_a_new_group_that_would_skip_records() {
    use broker_bridge::message::SourceError;
    use broker_bridge::sources::{ConnectContext, SourceKind, kafka};
    let topic = new_topic("kt").await;
    let producer = producer();
    let run = unique("r");
    produce_numbered(&producer, &topic, &run, 0..3).await;
    let (bridge, old_group, new_group) = (unique("b"), unique("g-old"), unique("g-new"));
    let spec = |group: &str, start: &str| {
        let table = serde_json::json!({
            "brokers": BROKERS, "topics": [&topic], "group_id": group, "start": start,
        });
        <kafka::Kafka as SourceKind>::parse(table.as_object().unwrap().clone()).unwrap()
    };
    let context = ConnectContext {
        bridge: bridge.clone(),
        max_in_flight: 10,
        ..Default::default()
    };
    let source = kafka::connect(&spec(&old_group, "latest"), &context)
        .await
        .unwrap_or_else(|e| panic!("connects: {e}"));
    // The old group's start is committed at the end (3); 4 records come after it.
    eventually_async(Duration::from_secs(30), "the start committed", || async {
        committed(&topic, &old_group).await == vec![Some(3)]
    })
    .await;
    produce_numbered(&producer, &topic, &run, 3..7).await;

    let refused = kafka::verify_position(&spec(&new_group, "latest"), &bridge).await;
    let Err(SourceError::Refused(reason)) = refused else {
        panic!("refused: {refused:?}")
    };
    let said = format!(
        "key `group_id`: changing it from `{old_group}` to `{new_group}` would skip 4 record(s): `{new_group}` has no committed offset on {topic}[0] and would start at their end (start = \"latest\"), where `{old_group}` has not read them yet ({topic}[0] at 3 (4 unread))"
    );
    assert!(reason.contains(&said), "{reason}");
    assert!(
        kafka::verify_position(&spec(&old_group, "latest"), &bridge)
            .await
            .is_ok()
    );
    assert!(
        kafka::verify_position(&spec(&new_group, "earliest"), &bridge)
            .await
            .is_ok()
    );
    assert!(
        kafka::verify_position(&spec(&new_group, "latest"), &unique("other"))
            .await
            .is_ok(),
        "nothing known about a bridge this process did not connect"
    );
    // The accounting: the 4 still wait for the old group; nothing moved, nothing new.
    assert_kept_by_old_group(&topic, &old_group, &new_group, 4).await;
    drop(source);
}

/// The poison corpus (issue 13) through a Kafka topic: long, binary and control-byte
/// record headers, content types, CloudEvents and bodies at the limits; the group's
/// committed offset reaches the end of the topic (nothing left unconfirmed).
#[tokio::test]
async fn poison_corpus_is_published_or_dead_lettered() {
    poison::poison_corpus(&Kafka::new(1).await).await;
}
