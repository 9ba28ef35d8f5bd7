//! End-to-end figures for every bridge kind with a source broker (NATS core, JetStream,
//! MQTT, AMQP, Kafka) and for webhooks, with the exchange ceiling measured in the same
//! run. Not a test: it prints numbers and asserts nothing about them.
//!
//! For each kind a real `broker-bridge` process (the release build) bridges a source into
//! a fresh exchange, and a consumer of our own counts the events on a queue bound to it:
//!
//! - throughput: a burst of messages sent as fast as the source takes them; events per
//!   second from the first send to the last event on the queue, every one confirmed;
//! - latency: messages paced at a modest rate, each carrying its send time; p50/p99 of
//!   send to arrival on the queue, so queueing of a burst does not hide the pipeline;
//! - peak RSS of the daemon process (VmHWM) after both phases.
//!
//! The ceiling is the same `Publisher` the daemon uses, in this process, sending the same
//! events (made by the same `normalize` from the same payloads) straight to the exchange
//! with the same in-order send and at most `max_in_flight` confirms outstanding.
//!
//! Webhooks are driven by `wrk` (Debian's package; `scripts/bench.sh` installs it) with
//! `WEBHOOK_CONNECTIONS` keep-alive connections for `WEBHOOK_SECONDS`: requests per
//! second answered 200 (each one confirmed by the exchange before its reply), wrk's
//! p50/p99 of request to reply under that load, and a check that exactly as many events
//! arrived on the queue as requests were answered 200.
//!
//! Run: `scripts/bench.sh` (starts the brokers, then `cargo bench --bench pipeline`).
//! `BENCH_EVENTS` sets the burst size (default 20000).

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use broker_bridge::config;
use broker_bridge::exchange::Publisher;
use broker_bridge::message::Metadata;
use broker_bridge::metrics::Registry;
use broker_bridge::normalize::{Mapping, normalize};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_URL: &str = "nats://127.0.0.1:4222";
const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
const KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Partitions of the Kafka bench topic: the bridge reads them concurrently.
const KAFKA_PARTITIONS: i32 = 3;
/// The consumer's `fetch.wait.max.ms` in the bench (see `source_client`).
const KAFKA_FETCH_WAIT_MS: u32 = 5;
const MAX_IN_FLIGHT: usize = 256;
const LATENCY_EVENTS: usize = 2_000;
const LATENCY_PACE: Duration = Duration::from_micros(1_000);
const PAD: usize = 160;
/// Concurrent keep-alive connections wrk holds to the webhook listener.
const WEBHOOK_CONNECTIONS: usize = 64;
const WEBHOOK_SECONDS: u64 = 10;

fn main() {
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // `BENCH_KINDS=jetstream,webhook` measures only those rows (default: all).
    let wanted: Option<Vec<String>> = std::env::var("BENCH_KINDS")
        .ok()
        .map(|list| list.split(',').map(|kind| kind.trim().to_owned()).collect());
    let measured = |name: &str| {
        wanted
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == name))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        println!(
            "broker-bridge pipeline bench: {events} events per burst, {LATENCY_EVENTS} paced at {}/s for latency, \
             {}-byte JSON payloads, max_in_flight {MAX_IN_FLIGHT}",
            Duration::from_secs(1).as_micros() / LATENCY_PACE.as_micros(),
            payload(0, 0).len()
        );
        println!(
            "{:<28} {:>12} {:>10} {:>10} {:>12}",
            "path", "events/s", "p50 ms", "p99 ms", "peak RSS MiB"
        );
        let ceiling = ceiling(events).await;
        ceiling.print("exchange ceiling (in-process)");
        for kind in [Kind::Nats, Kind::JetStream, Kind::Mqtt, Kind::Amqp, Kind::Kafka] {
            if !measured(kind.name()) {
                continue;
            }
            let result = bridge(kind, events).await;
            result.print(kind.label());
            println!(
                "{:<28} {:>11.0}%",
                format!("  {} / ceiling", kind.name()),
                100.0 * result.per_second / ceiling.per_second
            );
        }
        if measured("webhook") {
            let result = webhook_bridge().await;
            result.print("webhook (wrk) -> exchange");
            println!(
                "{:<28} {:>11.0}%",
                "  webhook / ceiling",
                100.0 * result.per_second / ceiling.per_second
            );
        }
    });
}

#[derive(Clone, Copy)]
enum Kind {
    Nats,
    JetStream,
    Mqtt,
    Amqp,
    Kafka,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Nats => "nats",
            Kind::JetStream => "jetstream",
            Kind::Mqtt => "mqtt",
            Kind::Amqp => "amqp",
            Kind::Kafka => "kafka",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Nats => "nats -> exchange",
            Kind::JetStream => "jetstream -> exchange",
            Kind::Mqtt => "mqtt (QoS 1) -> exchange",
            Kind::Amqp => "amqp queue -> exchange",
            Kind::Kafka => "kafka (3 parts) -> exchange",
        }
    }
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    peak_rss_kib: Option<u64>,
}

impl Figures {
    fn print(&self, label: &str) {
        let rss = self
            .peak_rss_kib
            .map(|kib| format!("{:.1}", kib as f64 / 1024.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{label:<28} {:>12.0} {:>10.2} {:>10.2} {rss:>12}",
            self.per_second,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
        );
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A JSON payload carrying its send time (0 in the burst) and a sequence number.
fn payload(sequence: usize, sent_ns: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"seq\":{sequence:>8},\"sent_ns\":{sent_ns:>20},\"pad\":\"{}\"}}",
        "x".repeat(PAD)
    ))
}

/// A queue bound to the exchange, counting events and recording latencies of paced ones.
struct Counter {
    arrived: Arc<AtomicUsize>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    _connection: Connection,
}

impl Counter {
    async fn bind(exchange: &str) -> Counter {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/brokers.sh)");
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "event.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "bench".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let (count, record) = (arrived.clone(), latencies.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let now = unix_nanos();
                let event: serde_json::Value =
                    serde_json::from_slice(&delivery.data).expect("structured CloudEvent");
                let sent = event["data"]["sent_ns"].as_u64().unwrap_or(0);
                if sent > 0 {
                    record
                        .lock()
                        .await
                        .push(Duration::from_nanos(now.saturating_sub(sent)));
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        Counter {
            arrived,
            latencies,
            _connection: connection,
        }
    }

    /// Waits until `total` events have arrived; panics after a minute without progress.
    async fn wait_for(&self, total: usize) {
        let mut last = (self.arrived.load(Ordering::Relaxed), Instant::now());
        loop {
            let now = self.arrived.load(Ordering::Relaxed);
            if now >= total {
                return;
            }
            if now != last.0 {
                last = (now, Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(60),
                "stalled at {now} of {total} events"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn percentiles(&self) -> (Duration, Duration) {
        let mut latencies = self.latencies.lock().await.clone();
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        (at(0.50), at(0.99))
    }
}

/// The config the daemon runs in the bench.
fn config_text(exchange: &str, admin_port: u16, bridge: &str) -> String {
    format!(
        r#"
[exchange]
url = "{AMQP_URL}"
name = "{exchange}"

[admin]
listen = "127.0.0.1:{admin_port}"

[defaults]
tenant = "bench"
max_in_flight = {MAX_IN_FLIGHT}

{bridge}
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The release build of the daemon, next to this bench's own executable's profile.
fn spawn_daemon(config: &Path, log: &Path) -> DaemonProcess {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_broker-bridge"))
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(DaemonProcess)
        .expect("start broker-bridge")
}

/// The daemon under measurement; killed if the bench panics, so no run leaves one behind.
struct DaemonProcess(Child);

impl DaemonProcess {
    fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, as an operator stops it, and wait for the exit.
    fn terminate(mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// An independent client of the source broker, sending as fast as the broker takes it.
enum SourceClient {
    Nats {
        client: async_nats::Client,
        subject: String,
    },
    JetStream {
        client: async_nats::Client,
        jetstream: async_nats::jetstream::Context,
        subject: String,
    },
    Mqtt {
        client: rumqttc::AsyncClient,
        topic: String,
    },
    Amqp {
        channel: lapin::Channel,
        exchange: String,
        _connection: Connection,
    },
    Kafka {
        producer: rdkafka::producer::FutureProducer,
        topic: String,
    },
}

/// How far the MQTT producer may run ahead of the events that arrived.
const MQTT_AHEAD: usize = 800;

/// How many broker acknowledgements a fast producer keeps outstanding.
const PRODUCER_WINDOW: usize = 512;

impl SourceClient {
    async fn send_all(&self, payloads: impl Iterator<Item = Bytes>) {
        match self {
            SourceClient::Nats { client, subject } => {
                for payload in payloads {
                    client.publish(subject.clone(), payload).await.unwrap();
                }
                client.flush().await.unwrap();
            }
            SourceClient::JetStream {
                jetstream, subject, ..
            } => {
                let mut acks = VecDeque::new();
                for payload in payloads {
                    acks.push_back(jetstream.publish(subject.clone(), payload).await.unwrap());
                    if acks.len() >= PRODUCER_WINDOW {
                        acks.pop_front().unwrap().await.expect("stored");
                    }
                }
                for ack in acks {
                    ack.await.expect("stored");
                }
            }
            SourceClient::Mqtt { client, topic } => {
                // rumqttc keeps its own window of unacknowledged QoS 1 publishes.
                for payload in payloads {
                    client
                        .publish_bytes(topic.clone(), rumqttc::QoS::AtLeastOnce, false, payload)
                        .await
                        .unwrap();
                }
            }
            SourceClient::Amqp {
                channel, exchange, ..
            } => {
                let mut confirms = VecDeque::new();
                for payload in payloads {
                    confirms.push_back(amqp_publish(channel, exchange, &payload).await);
                    if confirms.len() >= PRODUCER_WINDOW {
                        confirms.pop_front().unwrap().await.expect("confirmed");
                    }
                }
                for confirm in confirms {
                    confirm.await.expect("confirmed");
                }
            }
            SourceClient::Kafka { producer, topic } => {
                let mut deliveries = VecDeque::new();
                for payload in payloads {
                    deliveries.push_back(kafka_send(producer, topic, &payload).await);
                    if deliveries.len() >= PRODUCER_WINDOW {
                        kafka_stored(deliveries.pop_front().unwrap()).await;
                    }
                }
                for delivery in deliveries {
                    kafka_stored(delivery).await;
                }
            }
        }
    }

    async fn send_paced(&self) {
        let mut tick = tokio::time::interval(LATENCY_PACE);
        for sequence in 0..LATENCY_EVENTS {
            tick.tick().await;
            let body = payload(sequence, unix_nanos());
            // Acknowledgements from the source broker are not awaited, to keep the pace.
            match self {
                SourceClient::Nats { client, subject } => {
                    client.publish(subject.clone(), body).await.unwrap()
                }
                SourceClient::JetStream {
                    jetstream, subject, ..
                } => {
                    let _ = jetstream.publish(subject.clone(), body).await.unwrap();
                }
                SourceClient::Mqtt { client, topic } => client
                    .publish_bytes(topic.clone(), rumqttc::QoS::AtLeastOnce, false, body)
                    .await
                    .unwrap(),
                SourceClient::Amqp {
                    channel, exchange, ..
                } => {
                    drop(amqp_publish(channel, exchange, &body).await);
                }
                SourceClient::Kafka { producer, topic } => {
                    drop(kafka_send(producer, topic, &body).await);
                }
            }
        }
        if let SourceClient::Nats { client, .. } | SourceClient::JetStream { client, .. } = self {
            client.flush().await.unwrap();
        }
    }
}

async fn amqp_publish(
    channel: &lapin::Channel,
    exchange: &str,
    payload: &[u8],
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            exchange.into(),
            "bench.reading".into(),
            lapin::options::BasicPublishOptions::default(),
            payload,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await
        .unwrap()
}

/// Queues one record (partitioned by librdkafka, no key: spread over the partitions).
async fn kafka_send(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    payload: &[u8],
) -> rdkafka::producer::DeliveryFuture {
    let mut record = rdkafka::producer::FutureRecord::<(), [u8]>::to(topic).payload(payload);
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((_, returned)) => {
                // The producer's local queue is full: let it drain.
                record = returned;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn kafka_stored(delivery: rdkafka::producer::DeliveryFuture) {
    delivery
        .await
        .expect("delivery reported")
        .map_err(|(error, _)| error)
        .expect("stored by Kafka");
}

fn kafka_admin() -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA_BROKERS)
        .create()
        .expect("Kafka admin client")
}

/// Connects the producer for `kind` and returns it with the bridge's kind keys.
async fn source_client(kind: Kind, name: &str) -> (SourceClient, String) {
    let word = name.replace('-', "_");
    match kind {
        Kind::Nats | Kind::JetStream => {
            let client = async_nats::connect(NATS_URL)
                .await
                .expect("NATS on 127.0.0.1:4222 (run scripts/brokers.sh)");
            let subject = format!("bench.{word}");
            if let Kind::Nats = kind {
                let keys = format!("url = \"{NATS_URL}\"\nsubject = \"{subject}\"");
                return (SourceClient::Nats { client, subject }, keys);
            }
            let jetstream = async_nats::jetstream::new(client.clone());
            let stream = format!("BENCH_{word}");
            jetstream
                .create_stream(async_nats::jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![subject.clone()],
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    max_age: Duration::from_secs(600),
                    ..Default::default()
                })
                .await
                .expect("create stream");
            let keys = format!("url = \"{NATS_URL}\"\nstream = \"{stream}\"");
            let client = SourceClient::JetStream {
                client,
                jetstream,
                subject,
            };
            (client, keys)
        }
        Kind::Mqtt => {
            let mut options =
                rumqttc::MqttOptions::new(format!("{name}-producer"), "127.0.0.1", 1883);
            options.set_inflight(PRODUCER_WINDOW as u16);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, PRODUCER_WINDOW);
            tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let topic = format!("bench/{name}/reading");
            let keys = format!("url = \"{MQTT_URL}\"\ntopics = [\"bench/{name}/#\"]");
            (SourceClient::Mqtt { client, topic }, keys)
        }
        Kind::Amqp => {
            let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
                .await
                .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/brokers.sh)");
            let channel = connection.create_channel().await.unwrap();
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .unwrap();
            let exchange = format!("{name}-source");
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
            let keys = format!(
                "url = \"{AMQP_URL}\"\nqueue = \"{name}\"\nauto_delete = true\nbind_exchange = \"{exchange}\"\nbinding_keys = [\"bench.#\"]"
            );
            let client = SourceClient::Amqp {
                channel,
                exchange,
                _connection: connection,
            };
            (client, keys)
        }
        Kind::Kafka => {
            use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
            let topic = format!("bench-{name}");
            let created = kafka_admin()
                .create_topics(
                    [&NewTopic::new(
                        &topic,
                        KAFKA_PARTITIONS,
                        TopicReplication::Fixed(1),
                    )],
                    &AdminOptions::new(),
                )
                .await
                .expect("Kafka on 127.0.0.1:9092 (run scripts/brokers.sh)");
            for result in created {
                result.expect("bench topic created");
            }
            let producer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", KAFKA_BROKERS)
                .set("linger.ms", "2")
                .create()
                .expect("Kafka producer");
            // tansu answers a fetch that finds no new records only when
            // fetch.wait.max.ms (librdkafka: 500ms) has passed, not as soon as records
            // arrive as Kafka does; a short wait keeps that out of the latency figures.
            let keys = format!(
                "brokers = \"{KAFKA_BROKERS}\"\ntopics = [\"{topic}\"]\nproperties = {{ \"fetch.wait.max.ms\" = {KAFKA_FETCH_WAIT_MS} }}"
            );
            (SourceClient::Kafka { producer, topic }, keys)
        }
    }
}

async fn bridge(kind: Kind, events: usize) -> Figures {
    let exchange = unique("bench-ex");
    let bridge_name = unique(kind.name());
    let (source, keys) = source_client(kind, &bridge_name).await;
    let table = format!(
        "[[bridge]]\nname = \"{bridge_name}\"\nkind = \"{}\"\n{keys}\n",
        kind.name()
    );
    let counter = Counter::bind(&exchange).await;
    let (daemon, _config_dir) = start_daemon(&exchange, &table).await;

    let start = Instant::now();
    if let SourceClient::Mqtt { .. } = source {
        // Mosquitto queues at most 1000 QoS 1 messages per session and drops the rest
        // when a subscriber falls behind a full-speed producer; staying at most
        // MQTT_AHEAD messages ahead of the arrivals keeps the bridge saturated.
        for chunk in (0..events).collect::<Vec<_>>().chunks(MQTT_AHEAD / 2) {
            counter
                .wait_for((chunk[0] + MQTT_AHEAD / 2).saturating_sub(MQTT_AHEAD))
                .await;
            source.send_all(chunk.iter().map(|&n| payload(n, 0))).await;
        }
    } else {
        source.send_all((0..events).map(|n| payload(n, 0))).await;
    }
    counter.wait_for(events).await;
    let per_second = events as f64 / start.elapsed().as_secs_f64();

    source.send_paced().await;
    counter.wait_for(events + LATENCY_EVENTS).await;
    let (p50, p99) = counter.percentiles().await;
    let peak_rss_kib = peak_rss_kib(daemon.id());

    daemon.terminate();
    if let SourceClient::JetStream { jetstream, .. } = &source {
        let stream = format!("BENCH_{}", bridge_name.replace('-', "_"));
        let _ = jetstream.delete_stream(&stream).await;
    }
    if let SourceClient::Kafka { topic, .. } = &source {
        // The bench's own topic (the broker keeps it in memory).
        let options = rdkafka::admin::AdminOptions::new();
        let _ = kafka_admin()
            .delete_topics(&[topic.as_str()], &options)
            .await;
    }
    Figures {
        per_second,
        p50,
        p99,
        peak_rss_kib,
    }
}

/// The same events, made by the daemon's own `normalize`, published straight to the
/// exchange by the daemon's `Publisher` the way a bridge does.
async fn ceiling(events: usize) -> Figures {
    let exchange = unique("bench-ex");
    let counter = Counter::bind(&exchange).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("ceiling.toml");
    let table = format!(
        "[[bridge]]\nname = \"ceiling\"\nkind = \"nats\"\nurl = \"{NATS_URL}\"\nsubject = \"bench.ceiling\"\n"
    );
    std::fs::write(&config_path, config_text(&exchange, 0, &table)).unwrap();
    let loaded = config::load(&config_path, &broker_bridge::sources::KINDS).expect("bench config");
    let mapping = Mapping::new(&loaded.config.bridges[0]);
    let publisher = Publisher::start(
        loaded.config.exchange.clone(),
        Arc::new(Registry::default()),
    );
    let build = |sequence: usize, sent_ns: u64| {
        let meta = Metadata {
            subject: Some("bench.ceiling".into()),
            source_uri: "nats://127.0.0.1:4222/bench.ceiling".into(),
            received: Utc::now(),
            ..Default::default()
        };
        let normalized = normalize(&mapping, &meta, &payload(sequence, sent_ns)).expect("valid");
        publisher.event_message(&normalized.event, normalized.routing_key)
    };
    let prebuilt: Vec<_> = (0..events).map(|n| build(n, 0)).collect();
    // As a bridge does before it pulls: a send before the first connection fails.
    publisher.connected().await.expect("the exchange connects");

    let start = Instant::now();
    let mut confirms = VecDeque::new();
    for message in &prebuilt {
        confirms.push_back(publisher.send(message).await.expect("sent"));
        if confirms.len() >= MAX_IN_FLIGHT {
            confirms
                .pop_front()
                .unwrap()
                .confirmed()
                .await
                .expect("confirmed");
        }
    }
    for confirm in confirms {
        confirm.confirmed().await.expect("confirmed");
    }
    counter.wait_for(events).await;
    let per_second = events as f64 / start.elapsed().as_secs_f64();

    // Latency: built when sent, as a bridge builds each event when it arrives.
    let mut tick = tokio::time::interval(LATENCY_PACE);
    let mut confirms = VecDeque::new();
    for sequence in 0..LATENCY_EVENTS {
        tick.tick().await;
        let message = build(sequence, unix_nanos());
        confirms.push_back(publisher.send(&message).await.expect("sent"));
        while confirms.len() >= MAX_IN_FLIGHT {
            confirms
                .pop_front()
                .unwrap()
                .confirmed()
                .await
                .expect("confirmed");
        }
    }
    for confirm in confirms {
        confirm.confirmed().await.expect("confirmed");
    }
    counter.wait_for(events + LATENCY_EVENTS).await;
    let (p50, p99) = counter.percentiles().await;
    publisher.shutdown();
    Figures {
        per_second,
        p50,
        p99,
        peak_rss_kib: None,
    }
}

/// Runs the release daemon on a config with these bridges in a fresh folder and waits
/// until it is ready.
async fn start_daemon(exchange: &str, bridges: &str) -> (DaemonProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("bench.toml");
    let admin_port = free_port();
    std::fs::write(&config_path, config_text(exchange, admin_port, bridges)).unwrap();
    let daemon = spawn_daemon(&config_path, &dir.path().join("daemon.log"));
    let started = Instant::now();
    while !ready(admin_port) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "daemon not ready: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (daemon, dir)
}

/// wrk's summary of one run.
struct WrkRun {
    requests: u64,
    non_2xx: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Reads wrk's `--latency` report.
fn parse_wrk(report: &str) -> WrkRun {
    let duration = |text: &str| -> Duration {
        let text = text.trim();
        let (number, scale) = if let Some(n) = text.strip_suffix("us") {
            (n, 1e-6)
        } else if let Some(n) = text.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = text.strip_suffix('s') {
            (n, 1.0)
        } else {
            (text, 1.0)
        };
        Duration::from_secs_f64(number.parse::<f64>().expect("a wrk duration") * scale)
    };
    let mut run = WrkRun {
        requests: 0,
        non_2xx: 0,
        per_second: 0.0,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
    };
    for line in report.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => run.p50 = duration(value),
            ["99%", value] => run.p99 = duration(value),
            [count, "requests", "in", ..] => run.requests = count.parse().unwrap_or(0),
            ["Requests/sec:", value] => run.per_second = value.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                run.non_2xx = count.parse().unwrap_or(0)
            }
            _ => {}
        }
    }
    run
}

/// A webhook bridge under `wrk`: requests per second answered 200, wrk's latency
/// percentiles, and the events counted on the queue.
async fn webhook_bridge() -> Figures {
    let exchange = unique("bench-ex");
    let bridge_name = unique("webhook");
    let webhook_port = free_port();
    let table = format!(
        "[webhook]\nlisten = \"127.0.0.1:{webhook_port}\"\n\n[[bridge]]\nname = \"{bridge_name}\"\nkind = \"webhook\"\nbearer_token = \"bench\"\n"
    );
    let counter = Counter::bind(&exchange).await;
    let (daemon, dir) = start_daemon(&exchange, &table).await;
    let body = String::from_utf8(payload(0, 0).to_vec()).unwrap();
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer bench\"\n"
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new("wrk")
        .args([
            "--threads",
            "2",
            "--connections",
            &WEBHOOK_CONNECTIONS.to_string(),
            "--duration",
            &format!("{WEBHOOK_SECONDS}s"),
            "--latency",
            "--script",
        ])
        .arg(&script)
        .arg(format!(
            "http://127.0.0.1:{webhook_port}/hooks/{bridge_name}"
        ))
        .output()
        .await
        .expect("wrk (Debian package `wrk`; scripts/bench.sh installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {report}");
    let run = parse_wrk(&report);
    let answered_200 = (run.requests - run.non_2xx) as usize;
    counter.wait_for(answered_200).await;
    // wrk stops with requests still open on its connections; those are published but
    // not counted by wrk, so the queue may hold up to one event per connection more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrived = counter.arrived.load(Ordering::Relaxed);
    println!(
        "  webhook: {} requests, {} answered 200, {} other; {} events on the queue",
        run.requests, answered_200, run.non_2xx, arrived
    );
    let peak_rss_kib = peak_rss_kib(daemon.id());
    daemon.terminate();
    Figures {
        per_second: run.per_second * answered_200 as f64 / run.requests.max(1) as f64,
        p50: run.p50,
        p99: run.p99,
        peak_rss_kib,
    }
}
