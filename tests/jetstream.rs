//! `kind = "jetstream"`: the shared conformance checks, at-least-once through an exchange
//! outage, redelivery with the same id, and reload under traffic.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use common::conformance::{self, SourceUnderTest, bridge_table};
use common::proxy::Proxy;
use common::{AMQP_URL, Daemon, Rabbit, eventually, eventually_async, unique};

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
}

#[tokio::test]
async fn delivers_byte_exact_events() {
    conformance::delivers_byte_exact(&JetStream::new().await).await;
}

#[tokio::test]
async fn dead_letters_poison_and_keeps_going() {
    conformance::dead_letters_poison(&JetStream::new().await).await;
}

#[tokio::test]
async fn metrics_match_traffic() {
    conformance::metrics_match_traffic(&JetStream::new().await).await;
}

#[tokio::test]
async fn counts_unroutable_events() {
    conformance::counts_unroutable(&JetStream::new().await).await;
}

/// With the exchange unreachable nothing is acked, pulling stops at max_in_flight and
/// nothing is lost; once it is back every message arrives.
#[tokio::test]
async fn at_least_once_through_exchange_outage() {
    let source = JetStream::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let table = bridge_table(&source, &bridge, "max_in_flight = 10");
    let daemon = Daemon::start(&proxy.amqp_url(), &exchange, &table).await;
    daemon.wait_ready().await;

    proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    let sent = 30u64;
    for n in 0..sent {
        source.send(format!("{{\"n\":{n}}}").as_bytes(), &[]).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = source.consumer_info(&bridge).await;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "nothing acked while the exchange is down"
    );
    assert_eq!(
        info.num_ack_pending as u64 + info.num_pending,
        sent,
        "nothing lost: {info:?}"
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.bridge("bridge_events_published_total", &bridge, "jetstream"),
        Some(0.0)
    );
    let pulled = metrics
        .bridge("bridge_messages_received_total", &bridge, "jetstream")
        .unwrap();
    assert!(
        (1.0..=10.0).contains(&pulled),
        "stops pulling by max_in_flight (backpressure): pulled {pulled}"
    );
    let (code, body) = common::http_get(daemon.admin_port, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready while the exchange is down");
    assert!(body.contains("exchange"), "{body}");

    proxy.restore();
    let received = rabbit
        .take_exactly(&queue, sent as usize, Duration::from_secs(30))
        .await;
    let ids: HashSet<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = (1..=sent)
        .map(|seq| format!("{}:{seq}", source.stream))
        .collect();
    assert_eq!(
        ids, expected,
        "every message arrives once, ids are <stream>:<sequence>"
    );
    assert_eq!(received.len() as u64, sent);
    eventually_async(Duration::from_secs(10), "all acked", || async {
        source
            .consumer_info(&bridge)
            .await
            .ack_floor
            .stream_sequence
            == sent
    })
    .await;
    assert_eq!(
        daemon
            .metrics()
            .bridge("bridge_events_published_total", &bridge, "jetstream"),
        Some(sent as f64)
    );
}

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

/// While one bridge takes a steady stream, another is added, changed and removed (file
/// edits and SIGHUP), and an invalid edit is refused: the busy bridge never restarts and
/// delivers everything.
#[tokio::test]
async fn reload_under_traffic_leaves_untouched_bridges_alone() {
    let source = JetStream::new().await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let steady = unique("steady");
    let other = unique("other");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{steady}.#"))
        .await;
    let steady_table = bridge_table(&source, &steady, "");
    let other_subject = format!("{}.other", unique("t").replace('-', "_"));
    let other_table = |tenant: &str| {
        format!(
            "[[bridge]]\nname = \"{other}\"\nkind = \"nats\"\ntenant = \"{tenant}\"\nurl = \"{}\"\nsubject = \"{other_subject}\"\n",
            common::NATS_URL
        )
    };
    let daemon = Daemon::start(AMQP_URL, &exchange, &steady_table).await;
    daemon.wait_running(&steady).await;
    let before = daemon.bridge_status(&steady).unwrap();

    // The steady stream: 150 messages over about 6 seconds.
    let total = 150u64;
    let sender = {
        let context = source.context.clone();
        let subject = source.subject.clone();
        tokio::spawn(async move {
            for n in 0..total {
                context
                    .publish(subject.clone(), format!("{{\"n\":{n}}}").into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let reloads = |result: &str| {
        daemon
            .metrics()
            .get("bridge_config_reloads_total", &[("result", result)])
            .unwrap()
    };

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

    sender.await.unwrap();
    let received = rabbit
        .take_exactly(&queue, total as usize, Duration::from_secs(30))
        .await;
    let ids: HashSet<String> = received
        .iter()
        .map(|r| r.json()["id"].to_string())
        .collect();
    assert_eq!(
        ids.len() as u64,
        total,
        "the untouched bridge delivered every message"
    );
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
            .bridge("bridge_restarts_total", &steady, "jetstream"),
        Some(0.0)
    );
}
