//! `kind = "jetstream"`: the shared conformance checks, at-least-once through an exchange
//! outage, redelivery with the same id, and reload under traffic.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::conformance::{self, SourceUnderTest, bridge_table};
use common::proxy::Proxy;
use common::{Daemon, Rabbit, eventually_async, unique};

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

#[tokio::test]
async fn at_least_once_through_exchange_outage() {
    conformance::at_least_once_through_exchange_outage(&JetStream::new().await).await;
}

#[tokio::test]
async fn reload_under_traffic_leaves_untouched_bridges_alone() {
    conformance::reload_under_traffic(&JetStream::new().await).await;
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
