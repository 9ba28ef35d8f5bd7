//! The pipeline end to end within the crate: `supervise` runs a `kind = "dummy"` bridge
//! (its messages are `*.msg` files, acked by deleting them) against the real RabbitMQ.

use std::sync::RwLock;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::*;
use crate::exchange::testing::{AMQP_URL, PATIENCE, TestExchange, text_header};
use crate::exchange::{BRIDGE_HEADER, ERROR_HEADER, REASON_HEADER, SUBJECT_HEADER};
use crate::metrics::Registry;

/// Waits until `check` holds, failing the test with `what` after `PATIENCE`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bridge `orders` (tenant `acme`) running under `supervise`, reading its spool directory.
struct TestBridge {
    bridge: Bridge,
    task: JoinHandle<()>,
    spool: tempfile::TempDir,
    _config_dir: tempfile::TempDir,
}

impl TestBridge {
    /// Loads a config with this bridge and its extra `keys`, publishing to `exchange`,
    /// and starts it.
    fn start(exchange: &TestExchange, keys: &str) -> TestBridge {
        if !cfg!(feature = "test-kinds") {
            panic!("kind `dummy` needs the `test-kinds` feature (scripts/test.sh turns it on)");
        }
        let spool = tempfile::tempdir().unwrap();
        let config_dir = tempfile::tempdir().unwrap();
        let path = config_dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[exchange]
url = "{AMQP_URL}"
name = "{exchange}"
declare = false
confirm_timeout = "10s"
backoff = {{ initial = "50ms", max = "1s" }}

[defaults]
tenant = "acme"
shutdown_timeout = "10s"
backoff = {{ initial = "50ms", max = "1s" }}

[[bridge]]
name = "orders"
kind = "dummy"
dir = "{spool}"
{keys}
"#,
                exchange = exchange.name,
                spool = spool.path().display(),
            ),
        )
        .unwrap();
        let config = crate::config::load(&path, &KINDS)
            .unwrap_or_else(|error| panic!("the test config does not load: {error}"))
            .config;
        let spec = config.bridges[0].clone();
        let registry = Arc::new(Registry::default());
        let bridge = Bridge {
            metrics: registry.bridge(&spec.name, spec.kind()),
            publisher: Arc::new(RwLock::new(Publisher::start(
                config.exchange.clone(),
                registry,
            ))),
            listeners: Listeners::new(&config),
            status: Arc::new(BridgeStatus::new()),
            stop: CancellationToken::new(),
            spec,
        };
        let task = tokio::spawn(supervise(bridge.clone()));
        TestBridge {
            bridge,
            task,
            spool,
            _config_dir: config_dir,
        }
    }

    /// Puts a message in the spool, renamed into place whole.
    fn put(&self, name: &str, payload: &[u8]) {
        let partial = self.spool.path().join(format!("{name}.partial"));
        std::fs::write(&partial, payload).unwrap();
        std::fs::rename(&partial, self.message(name)).unwrap();
    }

    fn message(&self, name: &str) -> std::path::PathBuf {
        self.spool.path().join(format!("{name}.msg"))
    }

    /// Waits until message `name` is acked (its file deleted).
    async fn acked(&self, name: &str) {
        let path = self.message(name);
        eventually(&format!("the ack of {name}"), || !path.exists()).await;
    }

    fn metrics(&self) -> &BridgeMetrics {
        &self.bridge.metrics
    }

    fn dead_lettered(&self, reason: RejectReason) -> u64 {
        let index = RejectReason::ALL.iter().position(|r| *r == reason).unwrap();
        self.metrics().dead_lettered[index].get()
    }

    fn dead_lettered_in_all(&self) -> u64 {
        self.metrics().dead_lettered.iter().map(|c| c.get()).sum()
    }

    fn state(&self) -> State {
        self.bridge.status.snapshot().state
    }

    /// Stops the bridge and waits until it drained.
    async fn stop(&mut self) {
        self.bridge.stop.cancel();
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the bridge drains and ends")
            .expect("the bridge task does not panic");
        assert_eq!(self.state(), State::Stopped);
        assert_eq!(self.metrics().up.get(), 0);
        current_publisher(&self.bridge.publisher).shutdown();
    }
}

#[tokio::test]
async fn a_message_is_acked_only_once_its_event_is_confirmed_on_the_queue() {
    let exchange = TestExchange::declare().await;
    let queue = exchange.bind("#").await;
    let mut bridge = TestBridge::start(&exchange, "");
    bridge.put("000001", br#"{"order":1}"#);

    bridge.acked("000001").await;
    // The ack (deleting the file) comes after the confirm, and a confirmed event is on
    // its queue: the moment the file is gone the event is there, taken without waiting.
    let got = exchange
        .take(&queue)
        .await
        .expect("the event is on the queue when its message is acked");
    assert_eq!(got.delivery.routing_key.as_str(), "event.acme.orders.dummy");
    let event: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(event["id"], "000001", "the id of the message");
    assert_eq!(event["tenant"], "acme");
    assert_eq!(event["data"], serde_json::json!({"order": 1}));
    assert_eq!(got.message_count, 0, "published once");

    let metrics = bridge.metrics();
    assert_eq!(metrics.received.get(), 1);
    assert_eq!(metrics.published.get(), 1);
    assert_eq!(bridge.dead_lettered_in_all(), 0);
    assert_eq!(metrics.unroutable.get(), 0);
    eventually("the message out of bridge_in_flight", || {
        metrics.in_flight.get() == 0
    })
    .await;
    assert_eq!(metrics.up.get(), 1);
    let status = bridge.bridge.status.snapshot();
    assert_eq!(status.state, State::Running);
    assert_eq!(status.connects, 1);
    bridge.stop().await;
}

#[tokio::test]
async fn an_invalid_json_message_is_dead_lettered_with_its_reason_then_acked() {
    let exchange = TestExchange::declare().await;
    let events = exchange.bind("event.#").await;
    let deadletters = exchange.bind("deadletter.#").await;
    let mut bridge = TestBridge::start(&exchange, "format = \"json\"");
    bridge.put("000001", b"{not json");

    bridge.acked("000001").await;
    let got = exchange
        .take(&deadletters)
        .await
        .expect("the dead letter is on its queue when its message is acked");
    let properties = &got.delivery.properties;
    assert_eq!(got.delivery.routing_key.as_str(), "deadletter.acme.orders");
    assert_eq!(got.delivery.data, b"{not json", "the original bytes");
    assert_eq!(
        text_header(properties, REASON_HEADER).as_deref(),
        Some("invalid_json")
    );
    let error = text_header(properties, ERROR_HEADER).expect("why, for people");
    assert!(!error.is_empty());
    assert_eq!(
        text_header(properties, BRIDGE_HEADER).as_deref(),
        Some("orders")
    );
    assert_eq!(
        text_header(properties, SUBJECT_HEADER).as_deref(),
        Some("dummy")
    );
    assert!(exchange.take(&events).await.is_none(), "no event of it");
    assert_eq!(bridge.dead_lettered(RejectReason::InvalidJson), 1);
    assert_eq!(bridge.dead_lettered_in_all(), 1);
    assert_eq!(bridge.metrics().published.get(), 0);

    // The bridge goes on with the next message.
    bridge.put("000002", br#"{"order":2}"#);
    bridge.acked("000002").await;
    let got = exchange.take(&events).await.expect("the next event");
    let event: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(event["data"], serde_json::json!({"order": 2}));
    assert_eq!(bridge.metrics().received.get(), 2);
    assert_eq!(bridge.metrics().published.get(), 1);
    bridge.stop().await;
}

#[tokio::test]
async fn an_event_no_queue_is_bound_for_is_counted_unroutable_and_acked() {
    let exchange = TestExchange::declare().await;
    let elsewhere = exchange.bind("event.globex.#").await;
    let mut bridge = TestBridge::start(&exchange, "");
    bridge.put("000001", br#"{"order":1}"#);

    bridge.acked("000001").await;
    assert_eq!(bridge.metrics().unroutable.get(), 1);
    assert_eq!(
        bridge.metrics().published.get(),
        1,
        "confirmed: the exchange has it"
    );
    assert_eq!(bridge.dead_lettered_in_all(), 0);
    assert!(exchange.take(&elsewhere).await.is_none());
    bridge.stop().await;
}

#[tokio::test]
async fn a_message_whose_event_and_dead_letter_are_refused_stays_unacked_and_the_bridge_fails() {
    let exchange = TestExchange::declare().await;
    exchange.bind_refusing("#").await;
    let mut bridge = TestBridge::start(&exchange, "");
    bridge.put("000001", br#"{"order":1}"#);

    // The event is nacked, so the message is dead-lettered; the dead letter is nacked
    // too, and nothing is left that could take the message without losing it.
    eventually("the bridge to fail", || bridge.state() == State::Failed).await;
    // Failed for good: it pulls and acks nothing more, so what is there now stays.
    assert!(
        bridge.message("000001").exists(),
        "a message nothing confirmed is never acked"
    );
    let status = bridge.bridge.status.snapshot();
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("refused a dead letter"), "{error}");
    let metrics = bridge.metrics();
    assert_eq!(metrics.failed.get(), 1);
    assert_eq!(metrics.received.get(), 1);
    assert_eq!(metrics.published.get(), 0);
    assert_eq!(bridge.dead_lettered_in_all(), 0, "no dead letter went out");
    eventually("the message out of bridge_in_flight", || {
        metrics.in_flight.get() == 0
    })
    .await;

    bridge.stop().await;
    assert!(
        bridge.message("000001").exists(),
        "still there after the drain"
    );
}
