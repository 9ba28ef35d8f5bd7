//! `kind = "mqtt"` against the real Mosquitto on 127.0.0.1:1883: the shared conformance
//! checks for MQTT 3.1.1 and MQTT 5, then what is special about MQTT (persistent
//! sessions, resubscribing, stable ids for resent messages, shared subscriptions, topic
//! levels and MQTT 5 properties in the mapping, TLS with a client certificate and a
//! password against a Mosquitto of the test's own).

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::conformance::{SourceUnderTest, bridge_table, conformance_suite};
use common::poison::{self, Carries, PoisonMessage, Sent};
use common::proxy::Proxy;
use common::{AMQP_URL, Daemon, Rabbit, Received, eventually, unique};
use rumqttc::v5;
use tokio::sync::{Mutex, mpsc};

const MQTT_URL: &str = "mqtt://127.0.0.1:1883";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V311,
    V5,
}

impl Version {
    fn label(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// What one test message carries besides its topic and payload (MQTT 5 only).
#[derive(Default)]
struct Properties<'a> {
    content_type: Option<&'a str>,
    user: &'a [(&'a str, &'a str)],
}

/// Where and how an independent client reaches the broker.
struct Connection {
    host: String,
    port: u16,
    /// `(CA, client certificate, client key)` PEM for TLS.
    tls: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    credentials: Option<(String, String)>,
}

impl Connection {
    fn local() -> Self {
        Connection {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: None,
            credentials: None,
        }
    }

    fn transport(&self) -> Option<rumqttc::Transport> {
        self.tls.as_ref().map(|(ca, cert, key)| {
            broker_bridge::crypto::install_default_provider();
            rumqttc::Transport::tls(ca.clone(), Some((cert.clone(), key.clone())), None)
        })
    }
}

/// An independent MQTT client (rumqttc itself, with a clean session of its own) that
/// publishes at QoS 1 and waits for the broker's PUBACK, so a sent message is stored.
enum Publisher {
    V311 {
        client: rumqttc::AsyncClient,
        acks: Mutex<mpsc::UnboundedReceiver<()>>,
    },
    V5 {
        client: v5::AsyncClient,
        acks: Mutex<mpsc::UnboundedReceiver<()>>,
    },
}

impl Publisher {
    async fn connect(version: Version, connection: &Connection) -> Publisher {
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
        let id = unique("publisher");
        let publisher = match version {
            Version::V311 => {
                let mut options = rumqttc::MqttOptions::new(id, &connection.host, connection.port);
                options.set_max_packet_size(1 << 20, 1 << 20);
                if let Some(transport) = connection.transport() {
                    options.set_transport(transport);
                }
                if let Some((user, password)) = &connection.credentials {
                    options.set_credentials(user, password);
                }
                let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
                tokio::spawn(async move {
                    loop {
                        match events.poll().await {
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                                let _ = connected_tx.send(Ok(()));
                            }
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                                let _ = acks_tx.send(());
                            }
                            Ok(_) => {}
                            Err(error) => {
                                let _ = connected_tx.send(Err(error.to_string()));
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                });
                Publisher::V311 {
                    client,
                    acks: Mutex::new(acks_rx),
                }
            }
            Version::V5 => {
                let mut options = v5::MqttOptions::new(id, &connection.host, connection.port);
                options.set_max_packet_size(Some(1 << 20));
                if let Some(transport) = connection.transport() {
                    options.set_transport(transport);
                }
                if let Some((user, password)) = &connection.credentials {
                    options.set_credentials(user, password);
                }
                let (client, mut events) = v5::AsyncClient::new(options, 100);
                tokio::spawn(async move {
                    loop {
                        match events.poll().await {
                            Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(_))) => {
                                let _ = connected_tx.send(Ok(()));
                            }
                            Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::PubAck(_))) => {
                                let _ = acks_tx.send(());
                            }
                            Ok(_) => {}
                            Err(error) => {
                                let _ = connected_tx.send(Err(error.to_string()));
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                });
                Publisher::V5 {
                    client,
                    acks: Mutex::new(acks_rx),
                }
            }
        };
        let connected = tokio::time::timeout(Duration::from_secs(10), connected_rx.recv())
            .await
            .expect("the test publisher connects to Mosquitto")
            .unwrap();
        connected.unwrap_or_else(|e| {
            panic!(
                "Mosquitto on {}:{} (run scripts/brokers.sh): {e}",
                connection.host, connection.port
            )
        });
        publisher
    }

    /// Publishes at QoS 1 and waits until the broker acknowledged (stored) it.
    async fn publish(&self, topic: &str, payload: &[u8], properties: Properties<'_>) {
        let acks = match self {
            Publisher::V311 { client, acks } => {
                assert!(
                    properties.content_type.is_none() && properties.user.is_empty(),
                    "MQTT 3.1.1 has no properties"
                );
                let acks = acks.lock().await;
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
                    .await
                    .unwrap();
                acks
            }
            Publisher::V5 { client, acks } => {
                let acks = acks.lock().await;
                let properties = v5::mqttbytes::v5::PublishProperties {
                    content_type: properties.content_type.map(str::to_owned),
                    user_properties: properties
                        .user
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                };
                client
                    .publish_with_properties(
                        topic,
                        v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        payload.to_vec(),
                        properties,
                    )
                    .await
                    .unwrap();
                acks
            }
        };
        // One publish at a time (the lock), so the next PUBACK is this one's.
        let mut acks = acks;
        tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("Mosquitto acknowledges the test publish")
            .unwrap();
    }
}

/// An MQTT source under test: a topic of its own under a unique first level, and the
/// client ids its bridges use, whose persistent sessions it ends when dropped (after the
/// test's daemons, which are declared later and so dropped first).
struct Mqtt {
    version: Version,
    /// The first topic level, unique to the test; the bridge subscribes to `<prefix>/#`.
    prefix: String,
    topic: String,
    /// The client id of `bridge_keys`.
    client_id: String,
    sessions: std::sync::Mutex<Vec<String>>,
    publisher: Publisher,
}

impl Mqtt {
    async fn new(version: Version) -> Self {
        let prefix = unique("mq");
        Mqtt {
            version,
            topic: format!("{prefix}/sensors/t1"),
            client_id: unique("bb-test"),
            sessions: Default::default(),
            prefix,
            publisher: Publisher::connect(version, &Connection::local()).await,
        }
    }

    /// The kind's keys for a bridge on `url` with this client id and topic filter.
    fn keys(&self, url: &str, client_id: &str, filter: &str) -> String {
        self.remember(client_id);
        format!(
            "url = \"{url}\"\nprotocol = \"{}\"\ntopics = [\"{filter}\"]\nclient_id = \"{client_id}\"",
            self.version.label()
        )
    }

    /// The filter of every topic of this test.
    fn everything(&self) -> String {
        format!("{}/#", self.prefix)
    }

    async fn publish(&self, topic: &str, payload: &[u8], properties: Properties<'_>) {
        self.publisher.publish(topic, payload, properties).await;
    }

    async fn send_numbers(&self, numbers: std::ops::Range<u64>) {
        for n in numbers {
            self.send(format!("{{\"n\":{n}}}").as_bytes(), &[]).await;
        }
    }
}

impl SourceUnderTest for Mqtt {
    fn kind(&self) -> &'static str {
        "mqtt"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    fn bridge_keys(&self) -> String {
        self.keys(MQTT_URL, &self.client_id, &self.everything())
    }
    fn subject(&self) -> String {
        self.topic.clone()
    }
    async fn send(&self, payload: &[u8], headers: &[(&str, &str)]) {
        self.publish(
            &self.topic,
            payload,
            Properties {
                user: headers,
                ..Default::default()
            },
        )
        .await;
    }
    fn carries(&self) -> Carries {
        match self.version {
            // MQTT 3.1.1 messages are a topic and a payload, nothing else.
            Version::V311 => Carries::default(),
            // No `max_id`: MQTT messages carry no id (each event gets a UUIDv7). User
            // properties and the content type are UTF-8 strings without NUL (MQTT 5,
            // 1.5.4), so header values are text.
            Version::V5 => Carries {
                headers: true,
                max_header_name: 4096,
                max_content_type: 4096,
                ..Default::default()
            },
        }
    }
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        let headers = message.text_headers();
        self.publish(
            &self.topic,
            &message.payload,
            Properties {
                content_type: message.content_type.as_deref(),
                user: &headers,
            },
        )
        .await;
        Sent::default()
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        for client_id in self.sessions.lock().unwrap().iter() {
            forget_session(client_id);
        }
    }
}

/// Ends a persistent session on the shared Mosquitto (a clean-session connect under its
/// client id), so test runs do not pile up sessions there. Runs on a thread of its own:
/// it is called from `Drop`, inside the test's runtime.
fn forget_session(client_id: &str) {
    let client_id = client_id.to_owned();
    let forget = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", 1883);
            options.set_clean_session(true);
            let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match events.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            let _ = client.try_disconnect();
                        }
                        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => {
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            })
            .await;
        });
    };
    let _ = std::thread::spawn(forget).join();
}

// --- The shared conformance checks, for both protocol versions. ---

conformance_suite!(mqtt311: Mqtt::new(Version::V311).await);
conformance_suite!(mqtt5: Mqtt::new(Version::V5).await);

// --- Helpers for the MQTT-specific tests. ---

/// The `n` of each `{"n":N}` event; a message that arrived twice must carry one id.
/// Returns the numbers and how many events were duplicates.
fn numbers_with_stable_ids(received: &[Received]) -> (HashSet<u64>, usize) {
    let mut ids: HashMap<u64, String> = HashMap::new();
    let mut duplicates = 0;
    for event in received {
        let json = event.json();
        let n = json["data"]["n"].as_u64().expect("a {\"n\":N} event");
        let id = json["id"].as_str().unwrap().to_owned();
        match ids.get(&n) {
            Some(first) => {
                assert_eq!(*first, id, "a resent message {n} got another id");
                duplicates += 1;
            }
            None => {
                ids.insert(n, id);
            }
        }
    }
    (ids.into_keys().collect(), duplicates)
}

/// Takes events until every number in `0..count` arrived and nothing more comes for a
/// moment (to catch duplicates too).
async fn take_numbers(rabbit: &Rabbit, queue: &str, count: u64, daemon: &Daemon) -> Vec<Received> {
    let mut received = rabbit
        .take(queue, count as usize, Duration::from_secs(30))
        .await;
    loop {
        let more = rabbit.take(queue, 1000, Duration::from_secs(2)).await;
        if more.is_empty() {
            break;
        }
        received.extend(more);
    }
    let (numbers, _) = numbers_with_stable_ids(&received);
    assert_eq!(
        numbers,
        (0..count).collect(),
        "every message arrives; log: {}",
        daemon.log()
    );
    received
}

fn state_of(daemon: &Daemon, bridge: &str) -> serde_json::Value {
    daemon.bridge_status(bridge).unwrap()["status"].clone()
}

// --- What is special about MQTT. ---

/// The persistent session keeps what is published while the daemon is stopped: N QoS 1
/// messages sent between SIGTERM and the restart all arrive, and the message acked
/// before the stop does not come again.
async fn persistent_session_keeps_messages_while_stopped(version: Version) {
    let source = Mqtt::new(version).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    // The same config, so the same client id, after the restart.
    let mut daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_ready().await;
    source.send_numbers(0..1).await;
    let first = rabbit.take(&queue, 1, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 1, "log: {}", daemon.log());

    assert_eq!(daemon.terminate(), Some(0), "SIGTERM exits 0");
    let sent = 25;
    source.send_numbers(1..sent).await;
    daemon.restart().await;
    daemon.wait_ready().await;

    let received = rabbit
        .take_exactly(&queue, sent as usize - 1, Duration::from_secs(30))
        .await;
    let (numbers, duplicates) = numbers_with_stable_ids(&received);
    assert_eq!(
        numbers,
        (1..sent).collect(),
        "everything published while stopped arrives, and the acked message does not come \
         again; log: {}",
        daemon.log()
    );
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn persistent_session_keeps_messages_while_stopped_mqtt311() {
    persistent_session_keeps_messages_while_stopped(Version::V311).await;
}

#[tokio::test]
async fn persistent_session_keeps_messages_while_stopped_mqtt5() {
    persistent_session_keeps_messages_while_stopped(Version::V5).await;
}

/// A broker that lost the session (here: another client took the client id with a clean
/// session while the bridge could not connect) gets every filter subscribed again, and
/// the daemon warns that what was published meanwhile was not kept.
#[tokio::test]
async fn resubscribes_when_the_broker_has_no_session() {
    let source = Mqtt::new(Version::V311).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:1883").await;
    let client_id = source.client_id.clone();
    let keys = source.keys(
        &format!("mqtt://127.0.0.1:{}", proxy.port),
        &client_id,
        &source.everything(),
    );
    let table = format!("[[bridge]]\nname = \"{bridge}\"\nkind = \"mqtt\"\n{keys}\n");
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;
    source.send_numbers(0..1).await;
    assert_eq!(
        rabbit.take(&queue, 1, Duration::from_secs(20)).await.len(),
        1
    );

    proxy.cut();
    eventually(Duration::from_secs(10), "bridge sees the cut", || {
        state_of(&daemon, &bridge)["state"] != "running"
    })
    .await;
    // The broker drops the session: a clean-session client with the same id connects
    // and disconnects.
    let mut options = rumqttc::MqttOptions::new(client_id.clone(), "127.0.0.1", 1883);
    options.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    loop {
        match events
            .poll()
            .await
            .expect("the clean-session client connects")
        {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => break,
            _ => continue,
        }
    }
    client.disconnect().await.unwrap();
    while !matches!(
        events.poll().await,
        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
    ) {}
    drop(events);

    proxy.restore();
    eventually(Duration::from_secs(20), "bridge reconnected", || {
        let status = state_of(&daemon, &bridge);
        status["state"] == "running" && status["connects"].as_u64() >= Some(2)
    })
    .await;
    source.send_numbers(1..11).await;
    let received = rabbit
        .take_exactly(&queue, 10, Duration::from_secs(20))
        .await;
    let (numbers, _) = numbers_with_stable_ids(&received);
    assert_eq!(
        numbers,
        (1..11).collect(),
        "subscribed again; log: {}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("the broker has no session for this client id although this bridge had one"),
        "what the lost session held is reported lost; log: {}",
        daemon.log()
    );
}

/// Messages the broker resends after the MQTT connection broke (delivered, not yet
/// acknowledged because the exchange was down) keep their event id, and all arrive.
async fn resent_messages_keep_their_id(version: Version) {
    let source = Mqtt::new(version).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let mqtt_proxy = Proxy::start("127.0.0.1:1883").await;
    let amqp_proxy = Proxy::start("127.0.0.1:5672").await;
    let keys = source.keys(
        &format!("mqtt://127.0.0.1:{}", mqtt_proxy.port),
        &source.client_id,
        &source.everything(),
    );
    let table =
        format!("[[bridge]]\nname = \"{bridge}\"\nkind = \"mqtt\"\n{keys}\nmax_in_flight = 10\n");
    let daemon = Daemon::start(&amqp_proxy.amqp_url(), &exchange, &table).await;
    daemon.wait_ready().await;

    amqp_proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    let sent = 20;
    source.send_numbers(0..sent).await;
    eventually(Duration::from_secs(10), "messages pulled", || {
        daemon
            .metrics()
            .bridge("bridge_messages_received_total", &bridge, "mqtt")
            .is_some_and(|pulled| pulled >= 1.0)
    })
    .await;
    // Break the MQTT connection while the pulled messages wait for the exchange: their
    // PUBACKs can no longer be sent, so the broker resends them on the next connection.
    mqtt_proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    mqtt_proxy.restore();
    amqp_proxy.restore();

    let received = take_numbers(&rabbit, &queue, sent, &daemon).await;
    let (_, duplicates) = numbers_with_stable_ids(&received);
    assert!(state_of(&daemon, &bridge)["connects"].as_u64() >= Some(2));
    assert!(
        duplicates > 0,
        "the broker resent the unacknowledged messages (same id, checked above); log: {}",
        daemon.log()
    );
}

#[tokio::test]
async fn resent_messages_keep_their_id_mqtt311() {
    resent_messages_keep_their_id(Version::V311).await;
}

#[tokio::test]
async fn resent_messages_keep_their_id_mqtt5() {
    resent_messages_keep_their_id(Version::V5).await;
}

/// A daemon killed (SIGKILL) while its messages wait for the exchange acknowledged none
/// of them: after the restart every message arrives.
async fn unconfirmed_messages_survive_a_crash(version: Version) {
    let source = Mqtt::new(version).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let amqp_proxy = Proxy::start("127.0.0.1:5672").await;
    let table = bridge_table(&source, &bridge, "max_in_flight = 10");
    let mut daemon = Daemon::start(&amqp_proxy.amqp_url(), &exchange, &table).await;
    daemon.wait_ready().await;

    amqp_proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    let sent = 20;
    source.send_numbers(0..sent).await;
    eventually(Duration::from_secs(10), "messages pulled", || {
        daemon
            .metrics()
            .bridge("bridge_messages_received_total", &bridge, "mqtt")
            .is_some_and(|pulled| pulled >= 1.0)
    })
    .await;
    daemon.kill();
    amqp_proxy.restore();
    daemon.restart().await;
    daemon.wait_ready().await;
    take_numbers(&rabbit, &queue, sent, &daemon).await;
}

#[tokio::test]
async fn unconfirmed_messages_survive_a_crash_mqtt311() {
    unconfirmed_messages_survive_a_crash(Version::V311).await;
}

#[tokio::test]
async fn unconfirmed_messages_survive_a_crash_mqtt5() {
    unconfirmed_messages_survive_a_crash(Version::V5).await;
}

/// Two daemons (replicas: same bridge, distinct client ids) in one MQTT 5 shared
/// subscription group split the stream and together deliver every message once.
#[tokio::test]
async fn shared_subscription_splits_one_stream_between_replicas() {
    let source = Mqtt::new(Version::V5).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let group = unique("g");
    let replica = |client_id: String| {
        format!(
            "[[bridge]]\nname = \"{bridge}\"\nkind = \"mqtt\"\n{}\nshared_group = \"{group}\"\n",
            source.keys(MQTT_URL, &client_id, &source.everything())
        )
    };
    let first = Daemon::start(AMQP_URL, &exchange, &replica(unique("bb-a"))).await;
    let second = Daemon::start(AMQP_URL, &exchange, &replica(unique("bb-b"))).await;
    first.wait_ready().await;
    second.wait_ready().await;

    let sent = 40;
    source.send_numbers(0..sent).await;
    let received = rabbit
        .take_exactly(&queue, sent as usize, Duration::from_secs(30))
        .await;
    let (numbers, duplicates) = numbers_with_stable_ids(&received);
    assert_eq!(numbers, (0..sent).collect(), "every message arrives");
    assert_eq!(duplicates, 0, "each message goes to one replica");
    let pulled = |daemon: &Daemon| {
        daemon
            .metrics()
            .bridge("bridge_messages_received_total", &bridge, "mqtt")
            .unwrap()
    };
    let (a, b) = (pulled(&first), pulled(&second));
    assert_eq!(a + b, sent as f64);
    assert!(
        a > 0.0 && b > 0.0,
        "both replicas took a share: {a} and {b}"
    );
}

/// `tenant = "{subject[1]}"` takes the tenant from a topic level (as in
/// bridges/mqtt-sensors.toml with `tenants/+/sensors/#`).
#[tokio::test]
async fn tenant_from_a_topic_level() {
    let source = Mqtt::new(Version::V311).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let acme = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let globex = rabbit
        .bind(&exchange, &format!("event.globex.{bridge}.#"))
        .await;
    let keys = source.keys(
        MQTT_URL,
        &source.client_id,
        &format!("{}/+/sensors/#", source.prefix),
    );
    let table = format!(
        "[[bridge]]\nname = \"{bridge}\"\nkind = \"mqtt\"\n{keys}\ntenant = \"{{subject[1]}}\"\ntype = \"com.acme.sensor.{{subject[3]}}\"\n"
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;
    for (tenant, sensor) in [("acme", "temperature"), ("globex", "humidity")] {
        let topic = format!("{}/{tenant}/sensors/{sensor}", source.prefix);
        source
            .publish(&topic, br#"{"value":21.5}"#, Properties::default())
            .await;
    }
    for (queue, tenant, sensor) in [
        (&acme, "acme", "temperature"),
        (&globex, "globex", "humidity"),
    ] {
        let received = rabbit.take_exactly(queue, 1, Duration::from_secs(20)).await;
        assert_eq!(received.len(), 1, "{tenant}; log: {}", daemon.log());
        assert_eq!(
            received[0].routing_key,
            format!("event.{tenant}.{bridge}.com_acme_sensor_{sensor}")
        );
        let json = received[0].json();
        assert_eq!(json["tenant"], tenant);
        assert_eq!(json["type"], format!("com.acme.sensor.{sensor}"));
        let topic = format!("{}/{tenant}/sensors/{sensor}", source.prefix);
        assert_eq!(json["subject"], topic.as_str());
        assert_eq!(json["source"], format!("{MQTT_URL}/{topic}"));
    }
}

/// `{subject[N]}` splits MQTT topics on `/` only (issue 14): a level with dots before the
/// tenant cannot shift another level into the tenant's position, a tenant level with a
/// dot (`acme.eu`) is dead-lettered as `invalid_tenant` under `deadletter._.<bridge>`,
/// never rewritten, and `acme_eu` routes as it stands: the two never share a word.
#[tokio::test]
async fn topic_levels_split_on_slashes_only_and_invalid_tenants_are_dead_lettered() {
    let source = Mqtt::new(Version::V311).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let events = rabbit.bind(&exchange, &format!("event.*.{bridge}.#")).await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.*.{bridge}"))
        .await;
    let keys = source.keys(MQTT_URL, &source.client_id, &source.everything());
    let table = format!(
        "[[bridge]]\nname = \"{bridge}\"\nkind = \"mqtt\"\n{keys}\ntenant = \"{{subject[2]}}\"\ntype = \"com.acme.{{subject[3]}}\"\n"
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;
    let prefix = &source.prefix;
    // Split on `.` too, `site.berlin` would make `berlin` the tenant.
    for (n, topic) in [
        format!("{prefix}/site.berlin/acme/temp.c"),
        format!("{prefix}/site/acme.eu/temp"),
        format!("{prefix}/site/acme_eu/temp"),
    ]
    .iter()
    .enumerate()
    {
        let payload = format!("{{\"n\":{n}}}");
        source
            .publish(topic, payload.as_bytes(), Properties::default())
            .await;
    }
    let received = rabbit
        .take_exactly(&events, 2, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let mut keys: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            (
                r.routing_key.clone(),
                r.json()["tenant"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            (
                format!("event.acme.{bridge}.com_acme_temp_c"),
                "acme".to_owned()
            ),
            (
                format!("event.acme_eu.{bridge}.com_acme_temp"),
                "acme_eu".to_owned()
            ),
        ]
    );
    let letters = rabbit.take_exactly(&dead, 1, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1, "log: {}", daemon.log());
    assert_eq!(letters[0].routing_key, format!("deadletter._.{bridge}"));
    assert_eq!(
        letters[0].header("x-bridge-reason").as_deref(),
        Some("invalid_tenant")
    );
    assert_eq!(letters[0].body, br#"{"n":1}"#);
}

/// MQTT 5: user properties are headers for the `tenant` and `type` templates, and the
/// content type is the event's `datacontenttype`.
#[tokio::test]
async fn mqtt5_user_properties_and_content_type_feed_the_mapping() {
    let source = Mqtt::new(Version::V5).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.globex.{bridge}.#"))
        .await;
    let extra = "tenant = \"{header:tenant}\"\ntype = \"com.acme.{header:kind}\"";
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, extra)).await;
    daemon.wait_ready().await;

    let json = br#"{ "reading" : 1.50 }"#;
    let csv = b"a,b\n1,2\n";
    source
        .publish(
            &source.topic,
            json,
            Properties {
                content_type: Some("application/vnd.acme+json"),
                user: &[("tenant", "globex"), ("kind", "reading")],
            },
        )
        .await;
    source
        .publish(
            &source.topic,
            csv,
            Properties {
                content_type: Some("text/csv"),
                user: &[("tenant", "globex"), ("kind", "batch")],
            },
        )
        .await;
    let received = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());

    assert_eq!(
        received[0].routing_key,
        format!("event.globex.{bridge}.com_acme_reading")
    );
    let event = received[0].json();
    assert_eq!(event["type"], "com.acme.reading");
    assert_eq!(event["tenant"], "globex");
    assert_eq!(event["datacontenttype"], "application/vnd.acme+json");
    let needle = [b"\"data\":".as_slice(), json].concat();
    assert!(
        received[0].body.windows(needle.len()).any(|w| w == needle),
        "JSON data byte-exact: {}",
        String::from_utf8_lossy(&received[0].body)
    );

    assert_eq!(
        received[1].routing_key,
        format!("event.globex.{bridge}.com_acme_batch")
    );
    let event = received[1].json();
    assert_eq!(event["datacontenttype"], "text/csv");
    let data = base64::engine::general_purpose::STANDARD
        .decode(event["data_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, csv);
}

/// MQTT 5 binary-mode CloudEvents (attributes as user properties, CloudEvents MQTT
/// binding) pass through with their own id, source, type and extensions.
#[tokio::test]
async fn mqtt5_binary_mode_cloudevents_pass_through() {
    use cloudevents::AttributesReader;

    let source = Mqtt::new(Version::V5).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_ready().await;

    let payload = br#"{"t": 21.5}"#;
    source
        .publish(
            &source.topic,
            payload,
            Properties {
                content_type: Some("application/json"),
                user: &[
                    ("specversion", "1.0"),
                    ("id", "evt-42"),
                    ("source", "/sensors/42"),
                    ("type", "com.example.reading"),
                    ("subject", "room-1"),
                    ("time", "2026-01-02T03:04:05Z"),
                    ("region", "eu"),
                ],
            },
        )
        .await;
    let received = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(
        received[0].routing_key,
        format!("event.acme.{bridge}.com_example_reading")
    );
    let event: cloudevents::Event = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(event.id(), "evt-42");
    assert_eq!(event.source().to_string(), "/sensors/42");
    assert_eq!(event.ty(), "com.example.reading");
    assert_eq!(event.subject(), Some("room-1"));
    let json = received[0].json();
    assert_eq!(json["time"], "2026-01-02T03:04:05Z");
    assert_eq!(json["region"], "eu");
    assert_eq!(json["tenant"], "acme");
    assert_eq!(json["datacontenttype"], "application/json");
    let needle = [b"\"data\":".as_slice(), payload].concat();
    assert!(received[0].body.windows(needle.len()).any(|w| w == needle));
}

// --- TLS and credentials, against a Mosquitto of the test's own. ---

/// A private Mosquitto with a TLS listener that requires a client certificate and a
/// password, on a free port. Killed when dropped.
struct TlsBroker {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("run a test tool");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a certificate signed by it with `extensions`, made with the openssl CLI.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=bb-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1"),
        ("client", "clientAuth", "subjectAltName=DNS:bridge"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n{san}\n"),
        )
        .unwrap();
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

impl TlsBroker {
    async fn start(user: &str, password: &str) -> TlsBroker {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let passwords = dir.path().join("passwd");
        run(Command::new("mosquitto_passwd")
            .arg("-c")
            .arg("-b")
            .arg(&passwords)
            .args([user, password]));
        let port = common::free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "user root\nper_listener_settings false\nallow_anonymous false\npassword_file {}\n\
             persistence false\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            passwords.display(),
            path("ca.pem"),
            path("server.pem"),
            path("server.key"),
        );
        let config_path = dir.path().join("mosquitto.conf");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let mosquitto = ["mosquitto", "/usr/sbin/mosquitto"]
            .into_iter()
            .find(|bin| Command::new(bin).arg("-h").output().is_ok())
            .expect("mosquitto installed (scripts/brokers.sh installs it)");
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a private mosquitto");
        let mut broker = TlsBroker { child, port, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("mosquitto exited with {status}: {}", broker.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto not listening: {}",
                broker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn connection(&self, password: &str) -> Connection {
        let read = |name: &str| std::fs::read(self.dir.path().join(name)).unwrap();
        Connection {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: Some((read("ca.pem"), read("client.pem"), read("client.key"))),
            credentials: Some(("bridge".into(), password.into())),
        }
    }
}

/// mqtts:// with the broker's CA, a client certificate and a password from a file; a
/// wrong password is retried forever and shown as the bridge's last error.
#[tokio::test]
async fn tls_with_client_certificate_and_password() {
    let broker = TlsBroker::start("bridge", "s3cret").await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let wrong = unique("wrong");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let password_file = broker.dir.path().join("bridge-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let prefix = unique("mq");
    let tls_table = |name: &str, password: &str| {
        format!(
            "[[bridge]]\nname = \"{name}\"\nkind = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{}\"\n\
             protocol = \"5\"\ntopics = [\"{prefix}/#\"]\nuser = \"bridge\"\n{password}\n\
             [bridge.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nrequired = true\n",
            broker.port,
            broker.file("ca.pem"),
            broker.file("client.pem"),
            broker.file("client.key"),
        )
    };
    let tables = format!(
        "{}\n{}",
        tls_table(
            &bridge,
            &format!("password_file = \"{}\"", password_file.display())
        ),
        tls_table(&wrong, "password = \"not-it\"")
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &tables).await;
    daemon.wait_running(&bridge).await;

    let publisher = Publisher::connect(Version::V5, &broker.connection("s3cret")).await;
    let topic = format!("{prefix}/secure");
    publisher
        .publish(&topic, br#"{"secure":true}"#, Properties::default())
        .await;
    let received = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        received.len(),
        1,
        "log: {}\nmosquitto: {}",
        daemon.log(),
        broker.log()
    );
    let json = received[0].json();
    assert_eq!(json["data"], serde_json::json!({"secure": true}));
    assert_eq!(
        json["source"],
        format!("mqtts://127.0.0.1:{}/{topic}", broker.port)
    );

    // The bridge with the wrong password keeps trying and says why.
    eventually(
        Duration::from_secs(20),
        "the refused bridge retries",
        || {
            daemon
                .metrics()
                .bridge("bridge_restarts_total", &wrong, "mqtt")
                .is_some_and(|restarts| restarts >= 2.0)
        },
    )
    .await;
    let status = state_of(&daemon, &wrong);
    assert_eq!(status["state"], "reconnecting");
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused") || error.contains("NotAuthorized"),
        "{error}"
    );
}

// --- Editing a bridge's source settings while messages are pending (issue 21). ---
//
// Each test stops the flow while messages wait at the source, edits the bridge and ends
// with the accounting: every message pending before the edit is published after it, or
// still held by the broker and reported by the daemon. The harness gives each daemon a
// state_dir of its own that a restart keeps: there the bridge records its session.

/// How an edit reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    /// The config file is rewritten while the daemon runs.
    Reload,
    /// The daemon is stopped (SIGTERM), the config edited, the daemon started.
    Restart,
}

/// One `#[tokio::test]` per case of a scenario: `test_name(arguments...);` runs
/// `scenario(arguments...)`. Each name is spelled out, so `cargo test <name>` finds it.
macro_rules! cases {
    (scenario: $scenario:ident; $($test:ident($($argument:expr),*);)+) => {
        $(
            #[tokio::test]
            async fn $test() {
                $scenario($($argument),*).await;
            }
        )+
    };
}

/// The source settings these tests edit; the rest of the bridge stays as it is.
#[derive(Clone)]
struct SourceSettings {
    protocol: Version,
    client_id: String,
    topics: Vec<String>,
    shared_group: Option<String>,
}

/// One mqtt bridge on the shared Mosquitto whose source settings a test edits: the
/// RabbitMQ queue bound to its events, and the exchange behind a proxy that a reload
/// cuts. The test's daemon is a local declared after it, so the daemon stops before
/// `source` ends the sessions.
struct EditedBridge {
    name: String,
    exchange: String,
    rabbit: Rabbit,
    queue: String,
    amqp: Proxy,
    source: Mqtt,
}

impl EditedBridge {
    async fn new(version: Version) -> Self {
        let source = Mqtt::new(version).await;
        let rabbit = Rabbit::connect().await;
        let exchange = unique("ex");
        let name = unique("b");
        let queue = rabbit
            .bind(&exchange, &format!("event.acme.{name}.#"))
            .await;
        EditedBridge {
            amqp: Proxy::start("127.0.0.1:5672").await,
            name,
            exchange,
            rabbit,
            queue,
            source,
        }
    }

    /// The settings the bridge starts with unless a test says otherwise: the source's
    /// protocol version and client id, every topic of the test.
    fn settings(&self) -> SourceSettings {
        SourceSettings {
            protocol: self.source.version,
            client_id: self.source.client_id.clone(),
            topics: vec![self.source.everything()],
            shared_group: None,
        }
    }

    /// The bridge's table with `settings`; the client id is remembered so the test ends
    /// its session.
    fn table(&self, settings: &SourceSettings) -> String {
        self.source.remember(&settings.client_id);
        let topics: Vec<String> = settings.topics.iter().map(|t| format!("\"{t}\"")).collect();
        let shared_group = settings
            .shared_group
            .as_ref()
            .map(|group| format!("shared_group = \"{group}\""))
            .unwrap_or_default();
        format!(
            "[[bridge]]\nname = \"{}\"\nkind = \"mqtt\"\nurl = \"{MQTT_URL}\"\nprotocol = \"{}\"\n\
             topics = [{}]\nclient_id = \"{}\"\nmax_in_flight = 10\n{shared_group}\n",
            self.name,
            settings.protocol.label(),
            topics.join(", "),
            settings.client_id,
        )
    }

    /// A ready daemon running the bridge with `settings`.
    async fn start(&self, settings: &SourceSettings) -> Daemon {
        let daemon =
            Daemon::start(&self.amqp.amqp_url(), &self.exchange, &self.table(settings)).await;
        daemon.wait_ready().await;
        daemon
    }

    /// Edits the bridge to `settings` while the messages `publish` sends wait at the
    /// source. Restart: the daemon stops, `publish` runs, the config changes, the daemon
    /// starts. Reload: the exchange is cut (the bridge can confirm nothing: what it
    /// pulled stays unacknowledged, the rest queues in the session), `publish` runs, the
    /// config changes, and the exchange comes back once the bridge connected under the
    /// new config.
    async fn edit(
        &self,
        daemon: &mut Daemon,
        edit: Edit,
        publish: impl std::future::Future<Output = ()>,
        settings: &SourceSettings,
    ) {
        let bridges = self.table(settings);
        let connections = connections_made(daemon);
        match edit {
            Edit::Restart => {
                assert_eq!(daemon.terminate(), Some(0), "SIGTERM exits 0");
                publish.await;
                daemon.write_bridges(&bridges);
                daemon.restart().await;
            }
            Edit::Reload => {
                let received = || {
                    daemon
                        .metrics()
                        .bridge("bridge_messages_received_total", &self.name, "mqtt")
                        .unwrap_or(0.0)
                };
                let before = received();
                self.amqp.cut();
                eventually(Duration::from_secs(10), "exchange seen down", || {
                    daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
                })
                .await;
                publish.await;
                eventually(Duration::from_secs(10), "pending messages pulled", || {
                    received() > before
                })
                .await;
                daemon.write_bridges(&bridges);
                eventually(
                    Duration::from_secs(30),
                    "the bridge connected under the new config",
                    || connections_made(daemon) > connections,
                )
                .await;
                // Running means subscribed and unsubscribed: the edit met the queued
                // messages at the broker, before the bridge could confirm any of them.
                daemon.wait_running(&self.name).await;
                self.amqp.restore();
            }
        }
        daemon.wait_ready().await;
        assert!(connections_made(daemon) > connections);
    }

    /// The common course: the daemon starts with `before` and the numbers below
    /// `pending` are published; then the bridge is edited to `after` while `pending`
    /// wait at the source. Returns the daemon, running `after`.
    async fn start_then_edit(
        &self,
        before: &SourceSettings,
        edit: Edit,
        pending: std::ops::Range<u64>,
        after: &SourceSettings,
    ) -> Daemon {
        let mut daemon = self.start(before).await;
        self.source.send_numbers(0..pending.start).await;
        self.expect_published(0..pending.start, &daemon, "before the edit")
            .await;
        self.edit(&mut daemon, edit, self.source.send_numbers(pending), after)
            .await;
        daemon
    }

    /// Takes events until `expected` arrived and nothing more comes for a moment;
    /// returns how often each number arrived.
    async fn take_counted(&self, expected: usize) -> HashMap<u64, usize> {
        let rabbit = &self.rabbit;
        let mut received = rabbit
            .take(&self.queue, expected, Duration::from_secs(30))
            .await;
        loop {
            let more = rabbit.take(&self.queue, 1000, Duration::from_secs(2)).await;
            if more.is_empty() {
                break;
            }
            received.extend(more);
        }
        let mut counts = HashMap::new();
        for event in &received {
            let n = event.json()["data"]["n"]
                .as_u64()
                .expect("a {\"n\":N} event");
            *counts.entry(n).or_default() += 1;
        }
        counts
    }

    /// Takes the events of `expected` (and whatever follows within a moment) and asserts
    /// that exactly those numbers were published; returns how often each arrived.
    async fn expect_published(
        &self,
        expected: std::ops::Range<u64>,
        daemon: &Daemon,
        what: &str,
    ) -> HashMap<u64, usize> {
        let published = self.take_counted(expected.clone().count()).await;
        assert_eq!(
            numbers(&published),
            range(expected),
            "{what}; log: {}",
            daemon.log()
        );
        published
    }
}

impl Mqtt {
    /// Notes a client id whose session the test ends when it is done.
    fn remember(&self, client_id: &str) {
        let mut sessions = self.sessions.lock().unwrap();
        if !sessions.iter().any(|known| known == client_id) {
            sessions.push(client_id.to_owned());
        }
    }

    async fn send_numbers_to(&self, topic: &str, numbers: std::ops::Range<u64>) {
        for n in numbers {
            self.publish(
                topic,
                format!("{{\"n\":{n}}}").as_bytes(),
                Properties::default(),
            )
            .await;
        }
    }
}

fn connections_made(daemon: &Daemon) -> usize {
    daemon.log().matches("connected to the MQTT broker").count()
}

fn numbers(counts: &HashMap<u64, usize>) -> BTreeSet<u64> {
    counts.keys().copied().collect()
}

fn range(numbers: std::ops::Range<u64>) -> BTreeSet<u64> {
    numbers.collect()
}

fn each_once(counts: &HashMap<u64, usize>) -> bool {
    counts.values().all(|&count| count == 1)
}

/// What a client reading a session sees, whichever protocol version it speaks.
enum SessionEvent {
    Connected { session_present: bool },
    Message(bytes::Bytes),
    Other,
}

/// Reads what a persistent session holds, as the bridge would (same client id, no clean
/// start), acknowledging it; returns the numbers.
async fn held_by_session(version: Version, client_id: &str) -> BTreeSet<u64> {
    let mut held = BTreeSet::new();
    let mut session_present = None;
    let mut seen = |event: SessionEvent| match event {
        SessionEvent::Connected {
            session_present: present,
        } => session_present = Some(present),
        SessionEvent::Message(payload) => {
            let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            held.insert(json["n"].as_u64().unwrap());
        }
        SessionEvent::Other => {}
    };
    // Quiet for this long after the last message: the session is empty.
    let quiet = Duration::from_secs(3);
    match version {
        Version::V311 => {
            let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", 1883);
            options.set_clean_session(false);
            let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
            while let Ok(event) = tokio::time::timeout(quiet, events.poll()).await {
                use rumqttc::{Event::Incoming, Packet};
                seen(match event.expect("the test reads the session") {
                    Incoming(Packet::ConnAck(ack)) => SessionEvent::Connected {
                        session_present: ack.session_present,
                    },
                    Incoming(Packet::Publish(publish)) => SessionEvent::Message(publish.payload),
                    _ => SessionEvent::Other,
                });
            }
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), events.poll()).await;
        }
        Version::V5 => {
            let mut options = v5::MqttOptions::new(client_id, "127.0.0.1", 1883);
            options
                .set_clean_start(false)
                .set_session_expiry_interval(Some(3600));
            let (client, mut events) = v5::AsyncClient::new(options, 100);
            while let Ok(event) = tokio::time::timeout(quiet, events.poll()).await {
                use v5::{Event::Incoming, mqttbytes::v5::Packet};
                seen(match event.expect("the test reads the session") {
                    Incoming(Packet::ConnAck(ack)) => SessionEvent::Connected {
                        session_present: ack.session_present,
                    },
                    Incoming(Packet::Publish(publish)) => SessionEvent::Message(publish.payload),
                    _ => SessionEvent::Other,
                });
            }
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), events.poll()).await;
        }
    }
    assert_eq!(
        session_present,
        Some(true),
        "the session `{client_id}` exists"
    );
    held
}

/// Topic filters edited while the session holds queued QoS 1 messages: `a` removed, `c`
/// added, `b` kept. Every message queued before the edit is published, the removed
/// filter's too (Mosquitto delivers what it queued before the UNSUBSCRIBE); the removed
/// filter is unsubscribed (on a restart too); the added filter delivers from its
/// subscription on (nothing published before it exists: MQTT has no history).
async fn editing_topics_keeps_queued_messages(version: Version, edit: Edit) {
    let bridge = EditedBridge::new(version).await;
    let source = &bridge.source;
    let filter = |level: &str| format!("{}/{level}/#", source.prefix);
    let topic = |level: &str| format!("{}/{level}/x", source.prefix);
    let before = SourceSettings {
        topics: vec![filter("a"), filter("b")],
        ..bridge.settings()
    };
    let after = SourceSettings {
        topics: vec![filter("b"), filter("c")],
        ..bridge.settings()
    };
    let mut daemon = bridge.start(&before).await;
    source.send_numbers_to(&topic("a"), 0..1).await;
    source.send_numbers_to(&topic("b"), 1..2).await;
    bridge
        .expect_published(0..2, &daemon, "before the edit")
        .await;

    let pending = async {
        source.send_numbers_to(&topic("a"), 2..32).await;
        source.send_numbers_to(&topic("b"), 32..37).await;
        // Not subscribed yet: no session holds these.
        source.send_numbers_to(&topic("c"), 37..40).await;
    };
    bridge.edit(&mut daemon, edit, pending, &after).await;
    bridge
        .expect_published(
            2..37,
            &daemon,
            "every message queued before the edit is published, the removed filter's too; \
             nothing from before the added filter existed",
        )
        .await;
    assert!(
        daemon
            .log()
            .contains(&format!("unsubscribed `{}`", filter("a"))),
        "the removal is logged; log: {}",
        daemon.log()
    );

    // From now on: the removed filter is gone, the added one delivers.
    source.send_numbers_to(&topic("a"), 40..45).await;
    source.send_numbers_to(&topic("b"), 45..50).await;
    source.send_numbers_to(&topic("c"), 50..55).await;
    let published = bridge
        .expect_published(
            45..55,
            &daemon,
            "the removed filter is unsubscribed and the added one subscribed",
        )
        .await;
    assert!(each_once(&published), "{published:?}");
}

cases! {
    scenario: editing_topics_keeps_queued_messages;
    editing_topics_keeps_queued_messages_reload_mqtt311(Version::V311, Edit::Reload);
    editing_topics_keeps_queued_messages_reload_mqtt5(Version::V5, Edit::Reload);
    editing_topics_keeps_queued_messages_restart_mqtt311(Version::V311, Edit::Restart);
    editing_topics_keeps_queued_messages_restart_mqtt5(Version::V5, Edit::Restart);
}

/// A new `client_id` names a new session, which starts empty. The old session keeps the
/// messages queued before the change (and, still subscribed, goes on queueing) until the
/// broker expires it: nothing is lost, the daemon says so naming the old session, and
/// the test reads the messages there.
async fn changing_the_client_id_leaves_messages_in_the_old_session(version: Version, edit: Edit) {
    let bridge = EditedBridge::new(version).await;
    let source = &bridge.source;
    let before = bridge.settings();
    let after = SourceSettings {
        client_id: unique("bb-test-new"),
        ..bridge.settings()
    };
    let old_id = &before.client_id;
    let daemon = bridge.start_then_edit(&before, edit, 1..21, &after).await;
    source.send_numbers(21..26).await;
    let published = bridge.take_counted(5).await;
    assert!(
        range(21..26).is_subset(&numbers(&published)),
        "the new session delivers; log: {}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("previous session `{old_id}`")),
        "the daemon names the old session that may still hold messages; log: {log}"
    );
    // The accounting: each message pending before the edit is published or still in
    // the old session.
    drop(daemon);
    let held = held_by_session(version, old_id).await;
    let published_or_held: BTreeSet<u64> = numbers(&published).union(&held).copied().collect();
    assert!(
        range(1..21).is_subset(&published_or_held),
        "published {published:?}, held by `{old_id}` {held:?}"
    );
    assert!(
        range(21..26).is_subset(&held),
        "the old session, still subscribed, keeps queueing: {held:?}"
    );
}

cases! {
    scenario: changing_the_client_id_leaves_messages_in_the_old_session;
    changing_the_client_id_leaves_messages_in_the_old_session_reload_mqtt311
        (Version::V311, Edit::Reload);
    changing_the_client_id_leaves_messages_in_the_old_session_reload_mqtt5
        (Version::V5, Edit::Reload);
    changing_the_client_id_leaves_messages_in_the_old_session_restart_mqtt311
        (Version::V311, Edit::Restart);
    changing_the_client_id_leaves_messages_in_the_old_session_restart_mqtt5
        (Version::V5, Edit::Restart);
}

/// MQTT 5: adding a `shared_group` replaces `<filter>` with `$share/<group>/<filter>` in
/// the same session. What the session queued is published, and afterwards each message
/// arrives once (the plain subscription is gone, on a restart too).
async fn adding_a_shared_group_keeps_queued_messages(edit: Edit) {
    let bridge = EditedBridge::new(Version::V5).await;
    let source = &bridge.source;
    let before = bridge.settings();
    let after = SourceSettings {
        shared_group: Some(unique("g")),
        ..bridge.settings()
    };
    let daemon = bridge.start_then_edit(&before, edit, 1..21, &after).await;
    bridge
        .expect_published(1..21, &daemon, "what the session queued is published")
        .await;
    source.send_numbers(21..26).await;
    let published = bridge
        .expect_published(21..26, &daemon, "the shared subscription delivers")
        .await;
    assert!(
        each_once(&published),
        "each message once: the plain filter is unsubscribed; {published:?}; log: {}",
        daemon.log()
    );
}

cases! {
    scenario: adding_a_shared_group_keeps_queued_messages;
    adding_a_shared_group_keeps_queued_messages_reload(Edit::Reload);
    adding_a_shared_group_keeps_queued_messages_restart(Edit::Restart);
}

/// Changing `protocol` keeps the session (same client id): Mosquitto resumes a 3.1.1
/// session for an MQTT 5 client and the other way round, queued messages included.
async fn changing_the_protocol_keeps_the_session(from: Version, to: Version, edit: Edit) {
    let bridge = EditedBridge::new(from).await;
    let source = &bridge.source;
    let before = bridge.settings();
    let after = SourceSettings {
        protocol: to,
        ..bridge.settings()
    };
    let daemon = bridge.start_then_edit(&before, edit, 1..21, &after).await;
    source.send_numbers(21..26).await;
    bridge
        .expect_published(
            1..26,
            &daemon,
            "the session, queued messages included, goes on under the other protocol",
        )
        .await;
}

cases! {
    scenario: changing_the_protocol_keeps_the_session;
    changing_the_protocol_keeps_the_session_restart_311_to_5
        (Version::V311, Version::V5, Edit::Restart);
    changing_the_protocol_keeps_the_session_reload_5_to_311
        (Version::V5, Version::V311, Edit::Reload);
}

/// The poison corpus (issue 13) through Mosquitto, MQTT 5 (user properties and content
/// types: long names and values, CloudEvents, bodies at the limits) and MQTT 3.1.1
/// (payloads only). Every message was PUBACKed: after SIGKILL and a restart on the same
/// persistent session, the broker resends nothing.
#[tokio::test]
async fn poison_corpus_is_published_or_dead_lettered() {
    for version in [Version::V5, Version::V311] {
        eprintln!("poison corpus, mqtt: MQTT {}", version.label());
        let source = Mqtt::new(version).await;
        let mut run = poison::poison_corpus(&source).await;
        run.restart_delivers_nothing().await;
    }
}
