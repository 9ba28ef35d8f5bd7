//! `kind = "nats"`: the shared conformance checks plus what is special about core NATS.

mod common;

use std::time::Duration;

use common::conformance::{self, SourceUnderTest, bridge_table};
use common::{AMQP_URL, Daemon, Rabbit, unique};

struct CoreNats {
    subject: String,
}

impl CoreNats {
    fn new() -> Self {
        CoreNats {
            subject: format!("{}.readings", unique("t").replace('-', "_")),
        }
    }
}

impl SourceUnderTest for CoreNats {
    fn kind(&self) -> &'static str {
        "nats"
    }
    fn at_least_once(&self) -> bool {
        false
    }
    fn bridge_keys(&self) -> String {
        format!(
            "url = \"{}\"\nsubject = \"{}\"",
            common::NATS_URL,
            self.subject
        )
    }
    fn subject(&self) -> String {
        self.subject.clone()
    }
    async fn send(&self, payload: &[u8], headers: &[(&str, &str)]) {
        let client = common::nats().await;
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        client
            .publish_with_headers(self.subject.clone(), map, payload.to_vec().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
}

#[tokio::test]
async fn delivers_byte_exact_events() {
    conformance::delivers_byte_exact(&CoreNats::new()).await;
}

#[tokio::test]
async fn dead_letters_poison_and_keeps_going() {
    conformance::dead_letters_poison(&CoreNats::new()).await;
}

#[tokio::test]
async fn metrics_match_traffic() {
    conformance::metrics_match_traffic(&CoreNats::new()).await;
}

#[tokio::test]
async fn counts_unroutable_events() {
    conformance::counts_unroutable(&CoreNats::new()).await;
}

/// Core NATS has no acks, but while the exchange is down the daemon stops taking
/// messages and the client buffers them; a short outage loses nothing.
#[tokio::test]
async fn exchange_outage_stops_pulling_and_recovers() {
    conformance::at_least_once_through_exchange_outage(&CoreNats::new()).await;
}

#[tokio::test]
async fn reload_under_traffic_leaves_untouched_bridges_alone() {
    conformance::reload_under_traffic(&CoreNats::new()).await;
}

/// `Nats-Msg-Id` becomes the event id; binary-mode CloudEvent headers pass through.
#[tokio::test]
async fn message_ids_and_inbound_cloudevents() {
    let source = CoreNats::new();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_running(&bridge).await;
    source
        .send(b"{\"a\":1}", &[("Nats-Msg-Id", "order-77")])
        .await;
    source
        .send(
            b"plain text data",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "upstream-1"),
                ("ce-source", "/sensors/kitchen"),
                ("ce-type", "com.example.reading"),
                ("ce-myext", "kept"),
                ("Content-Type", "text/plain"),
            ],
        )
        .await;
    let received = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    assert_eq!(received[0].json()["id"], "order-77");
    let passed = received[1].json();
    assert_eq!(passed["id"], "upstream-1");
    assert_eq!(passed["source"], "/sensors/kitchen");
    assert_eq!(passed["type"], "com.example.reading");
    assert_eq!(passed["myext"], "kept");
    assert_eq!(passed["tenant"], "acme");
    assert_eq!(passed["datacontenttype"], "text/plain");
    assert_eq!(
        received[1].routing_key,
        format!("event.acme.{bridge}.com_example_reading")
    );
}

/// Two daemons in one queue group share the subject: each message arrives once.
#[tokio::test]
async fn queue_group_splits_messages_between_replicas() {
    let source = CoreNats::new();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let table = bridge_table(&source, &bridge, "queue_group = \"replicas\"");
    let first = Daemon::start(AMQP_URL, &exchange, &table).await;
    let second = Daemon::start(AMQP_URL, &exchange, &table).await;
    first.wait_running(&bridge).await;
    second.wait_running(&bridge).await;
    for n in 0..40 {
        source.send(format!("{{\"n\":{n}}}").as_bytes(), &[]).await;
    }
    let received = rabbit
        .take_exactly(&queue, 40, Duration::from_secs(20))
        .await;
    assert_eq!(
        received.len(),
        40,
        "each message exactly once across the group"
    );
    let published = |d: &Daemon| {
        d.metrics()
            .bridge("bridge_events_published_total", &bridge, "nats")
            .unwrap()
    };
    assert_eq!(published(&first) + published(&second), 40.0);
}

/// SIGTERM drains and exits 0.
#[tokio::test]
async fn sigterm_exits_cleanly() {
    let source = CoreNats::new();
    let exchange = unique("ex");
    let bridge = unique("b");
    let mut daemon = Daemon::start(AMQP_URL, &exchange, &bridge_table(&source, &bridge, "")).await;
    daemon.wait_running(&bridge).await;
    assert_eq!(daemon.terminate(), Some(0), "log: {}", daemon.log());
}

/// `format = "s3-notification"`: a MinIO multi-object delete becomes one event per
/// record (URL-decoded keys, bucket source, sequencer ids); a document that is not a
/// notification is dead-lettered as `invalid_notification`.
#[tokio::test]
async fn s3_notification_records_become_one_event_each() {
    let source = CoreNats::new();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let events = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.acme.{bridge}"))
        .await;
    let table = bridge_table(&source, &bridge, "format = \"s3-notification\"");
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_ready().await;
    let document = br#"{"EventName":"s3:ObjectRemoved:Delete","Key":"images/a%20b.png","Records":[
      {"eventVersion":"2.0","eventSource":"minio:s3","eventTime":"2024-05-01T10:00:00.123Z",
       "eventName":"s3:ObjectRemoved:Delete",
       "s3":{"s3SchemaVersion":"1.0","bucket":{"name":"images","arn":"arn:aws:s3:::images"},
             "object":{"key":"a%20b.png","sequencer":"17C1A2B3C4D5E6F8"}}},
      {"eventVersion":"2.0","eventSource":"minio:s3","eventTime":"2024-05-01T10:00:00.124Z",
       "eventName":"s3:ObjectRemoved:Delete",
       "s3":{"s3SchemaVersion":"1.0","bucket":{"name":"images","arn":"arn:aws:s3:::images"},
             "object":{"key":"dir%2Fc+d.png","sequencer":"17C1A2B3C4D5E6F9"}}}]}"#;
    source.send(document, &[]).await;
    source.send(br#"{"not":"a notification"}"#, &[]).await;
    let received = rabbit
        .take_exactly(&events, 2, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let first = received[0].json();
    let second = received[1].json();
    assert_eq!(first["type"], "s3:ObjectRemoved:Delete");
    assert_eq!(first["source"], "s3://images");
    assert_eq!(first["subject"], "a b.png");
    assert_eq!(first["id"], "images/a b.png@17C1A2B3C4D5E6F8");
    assert_eq!(first["data"]["key"], "a b.png");
    assert_eq!(first["data"]["bucket"], "images");
    assert_eq!(second["subject"], "dir/c d.png");
    let dead_letters = rabbit.take_exactly(&dead, 1, Duration::from_secs(20)).await;
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(
        dead_letters[0].header("x-bridge-reason").as_deref(),
        Some("invalid_notification")
    );
}

// Supervision (issue 13): a panic is a bug, never the end of a bridge.

/// A daemon with one core NATS bridge, its `[admin] ready_grace` at 0 and these
/// environment variables (the panic injectors).
async fn start_with_faults(exchange: &str, bridges: &str, env: &[(&str, &str)]) -> Daemon {
    Daemon::start_with_text_and_env(
        tempfile::tempdir().unwrap(),
        AMQP_URL,
        exchange,
        |port| {
            common::config_text(AMQP_URL, exchange, port, bridges)
                .replace("[admin]\n", "[admin]\nready_grace = \"0s\"\n")
        },
        env,
    )
    .await
}

/// A message that panics the pipeline is dead-lettered as `internal_error`, counted, and
/// the bridge goes on without a restart and stays ready.
#[tokio::test]
async fn a_message_that_panics_is_dead_lettered_and_the_bridge_goes_on() {
    let source = CoreNats::new();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.acme.{bridge}"))
        .await;
    let daemon = start_with_faults(
        &exchange,
        &bridge_table(&source, &bridge, ""),
        &[("BROKER_BRIDGE_PANIC_IN_MESSAGE", "boom-in-message")],
    )
    .await;
    daemon.wait_running(&bridge).await;
    source.send(br#"{"n":1}"#, &[]).await;
    source.send(br#"{"n":"boom-in-message"}"#, &[]).await;
    source.send(br#"{"n":3}"#, &[]).await;
    let events = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(20))
        .await;
    let numbers: Vec<_> = events
        .iter()
        .map(|e| e.json()["data"]["n"].clone())
        .collect();
    assert_eq!(numbers, [1, 3], "log: {}", daemon.log());
    let letters = rabbit.take_exactly(&dead, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header("x-bridge-reason").as_deref(),
        Some("internal_error")
    );
    assert_eq!(letters[0].body, br#"{"n":"boom-in-message"}"#);
    let metrics = daemon.metrics();
    let series = |name| metrics.bridge(name, &bridge, "nats");
    assert_eq!(series("bridge_panics_total"), Some(1.0));
    assert_eq!(series("bridge_restarts_total"), Some(0.0));
    assert_eq!(series("bridge_up"), Some(1.0));
    assert_eq!(
        common::http_get(daemon.admin_port, "/readyz").unwrap().0,
        200
    );
    let log = daemon.log();
    assert!(
        log.contains("backtrace") && log.contains("internal_error"),
        "the panic is logged with a backtrace: {log}"
    );
}

/// A panic of the bridge task itself restarts the bridge after a backoff; meanwhile
/// `/bridges`, `/metrics` and `/readyz` all say so; then it runs again.
#[tokio::test]
async fn a_bridge_task_that_panics_is_restarted_and_seen_everywhere() {
    let source = CoreNats::new();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    // A restart backoff long enough to look at the bridge while it is down.
    let daemon = start_with_faults(
        &exchange,
        &bridge_table(
            &source,
            &bridge,
            "backoff = { initial = \"3s\", max = \"3s\" }",
        ),
        &[("BROKER_BRIDGE_PANIC_IN_BRIDGE", "boom-in-bridge")],
    )
    .await;
    daemon.wait_running(&bridge).await;
    source.send(br#"{"n":"boom-in-bridge"}"#, &[]).await;
    common::eventually(Duration::from_secs(10), "the bridge restarting", || {
        daemon
            .bridge_status(&bridge)
            .is_some_and(|b| b["status"]["state"] == "restarting")
    })
    .await;
    let status = daemon.bridge_status(&bridge).unwrap();
    assert_eq!(status["status"]["restarts"], 1);
    assert!(
        status["status"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked") && e.contains("injected")),
        "{status}"
    );
    let (code, body) = common::http_get(daemon.admin_port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&bridge), "{body}");
    let metrics = daemon.metrics();
    let series = |name| metrics.bridge(name, &bridge, "nats");
    assert_eq!(series("bridge_up"), Some(0.0));
    assert_eq!(series("bridge_panics_total"), Some(1.0));
    assert!(series("bridge_restarts_total").is_some_and(|n| n >= 1.0));

    daemon.wait_running(&bridge).await;
    source.send(br#"{"n":2}"#, &[]).await;
    let events = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(20))
        .await;
    assert_eq!(events.len(), 1, "log: {}", daemon.log());
    assert_eq!(events[0].json()["data"]["n"], 2);
    assert_eq!(
        common::http_get(daemon.admin_port, "/readyz").unwrap().0,
        200
    );
}
