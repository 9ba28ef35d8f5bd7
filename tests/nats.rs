//! `kind = "nats"`: the shared conformance checks plus what is special about core NATS.

mod common;

use std::time::Duration;

use common::conformance::{SourceUnderTest, bridge_table, conformance_suite};
use common::poison::{self, Carries, PoisonMessage, Sent};
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
    fn carries(&self) -> Carries {
        Carries {
            // `Nats-Msg-Id` is a header, as long as a message allows.
            max_id: 65_535,
            headers: true,
            // NATS header names are tokens of any length.
            max_header_name: 4096,
            // The protocol takes any bytes but CR and LF in a header value; async-nats
            // does not send them, so the corpus uses the raw protocol for these.
            binary_header_values: true,
            control_header_values: true,
            binary_ids: true,
            max_content_type: 4096,
            ..Default::default()
        }
    }
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        let (headers, text) = poison::nats_headers(message, true);
        if text {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), std::str::from_utf8(v).unwrap()))
                .collect();
            self.send(&message.payload, &headers).await;
        } else {
            poison::nats_publish_raw(&self.subject, &headers, &message.payload, false).await;
        }
        Sent::default()
    }
}

// The shared contract. Core NATS has no acks, but while the exchange is down the daemon
// stops taking messages and the client buffers them: a short outage loses nothing.
conformance_suite!(CoreNats::new());

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

/// An s3-notification record of `bucket` with the object `key`.
fn notification_record(bucket: &str, key: &str, sequencer: &str) -> String {
    format!(
        r#"{{"eventName":"s3:ObjectCreated:Put","eventTime":"2024-05-01T10:00:00Z","s3":{{"bucket":{{"name":"{bucket}"}},"object":{{"key":"{key}","sequencer":"{sequencer}"}}}}}}"#
    )
}

/// s3-notification tenants never come from the document (issue 14). With
/// `bucket_tenants` each record's tenant is its bucket's, and a record of a bucket
/// without one dead-letters the message as `invalid_tenant`; without it, the tenant
/// template resolves against the NATS subject the document arrived on, never the
/// record's object key (whose first level here names another tenant).
#[tokio::test]
async fn s3_notification_tenants_come_from_buckets_or_the_subject_never_the_document() {
    let source = CoreNats::new();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let by_bucket = unique("b");
    let by_subject = unique("b");
    let bucket_events = rabbit
        .bind(&exchange, &format!("event.*.{by_bucket}.#"))
        .await;
    let bucket_dead = rabbit
        .bind(&exchange, &format!("deadletter.*.{by_bucket}"))
        .await;
    let subject_events = rabbit
        .bind(&exchange, &format!("event.*.{by_subject}.#"))
        .await;
    let bridges = format!(
        "{}\n{}",
        bridge_table(
            &source,
            &by_bucket,
            "format = \"s3-notification\"\nbucket_tenants = { images = \"acme\", \"photos.eu\" = \"globex\" }",
        ),
        bridge_table(
            &source,
            &by_subject,
            "format = \"s3-notification\"\ntenant = \"{subject[1]}\"",
        ),
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridges).await;
    daemon.wait_running(&by_bucket).await;
    daemon.wait_running(&by_subject).await;
    let mapped = format!(
        r#"{{"Records":[{},{}]}}"#,
        notification_record("images", "globex/a.png", "01"),
        notification_record("photos.eu", "acme/b.png", "02"),
    );
    let unmapped = format!(
        r#"{{"Records":[{}]}}"#,
        notification_record("other", "acme/c.png", "03")
    );
    source.send(mapped.as_bytes(), &[]).await;
    source.send(unmapped.as_bytes(), &[]).await;

    let received = rabbit
        .take_exactly(&bucket_events, 2, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let mut routed: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            (
                r.routing_key.clone(),
                r.json()["tenant"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    routed.sort();
    assert_eq!(
        routed,
        [
            (
                format!("event.acme.{by_bucket}.s3~3AObjectCreated~3APut"),
                "acme".to_owned()
            ),
            (
                format!("event.globex.{by_bucket}.s3~3AObjectCreated~3APut"),
                "globex".to_owned()
            ),
        ]
    );
    let letters = rabbit
        .take_exactly(&bucket_dead, 1, Duration::from_secs(20))
        .await;
    assert_eq!(letters.len(), 1, "log: {}", daemon.log());
    assert_eq!(letters[0].routing_key, format!("deadletter._.{by_bucket}"));
    assert_eq!(
        letters[0].header("x-bridge-reason").as_deref(),
        Some("invalid_tenant")
    );
    assert_eq!(letters[0].body, unmapped.as_bytes());

    // The subject is `<unique>.readings`: every record's tenant is `readings`.
    let received = rabbit
        .take_exactly(&subject_events, 3, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 3, "log: {}", daemon.log());
    for event in &received {
        assert_eq!(event.json()["tenant"], "readings");
        assert!(
            event
                .routing_key
                .starts_with(&format!("event.readings.{by_subject}."))
        );
    }
}

/// A tenant from `{subject[1]}` that is not a valid word as it stands is dead-lettered
/// as `invalid_tenant` (with the reason header) under `deadletter._.<bridge>`, never
/// rewritten (issue 14); a valid one routes as it stands. `_`, the tenant word of dead
/// letters whose tenant is unknown, is not a tenant either.
#[tokio::test]
async fn an_invalid_tenant_from_the_subject_is_dead_lettered() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let root = unique("t").replace('-', "_");
    let events = rabbit.bind(&exchange, &format!("event.*.{bridge}.#")).await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.*.{bridge}"))
        .await;
    let table = format!(
        "[[bridge]]\nname = \"{bridge}\"\nkind = \"nats\"\nurl = \"{}\"\nsubject = \"{root}.>\"\ntenant = \"{{subject[1]}}\"\ntype = \"com.acme.{{subject[2]}}\"\n",
        common::NATS_URL
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &table).await;
    daemon.wait_running(&bridge).await;
    let client = common::nats().await;
    let long = "t".repeat(65);
    let tenants = ["acmé", "_", long.as_str(), "acme_eu"];
    for (n, tenant) in tenants.iter().enumerate() {
        client
            .publish(
                format!("{root}.{tenant}.reading"),
                format!("{{\"n\":{n}}}").into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let letters = rabbit.take_exactly(&dead, 3, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 3, "log: {}", daemon.log());
    for letter in &letters {
        assert_eq!(letter.routing_key, format!("deadletter._.{bridge}"));
        assert_eq!(
            letter.header("x-bridge-reason").as_deref(),
            Some("invalid_tenant")
        );
        assert!(
            letter
                .header("x-bridge-error")
                .is_some_and(|error| error.contains("is not valid") || error.contains("reserved")),
            "{:?}",
            letter.header("x-bridge-error")
        );
    }
    let received = rabbit
        .take_exactly(&events, 1, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(
        received[0].routing_key,
        format!("event.acme_eu.{bridge}.com_acme_reading")
    );
    assert_eq!(received[0].json()["tenant"], "acme_eu");
    assert_eq!(received[0].json()["data"]["n"], 3);
    common::eventually(
        Duration::from_secs(10),
        "3 invalid_tenant dead letters counted",
        || {
            daemon.metrics().get(
                "bridge_events_dead_lettered_total",
                &[
                    ("bridge", bridge.as_str()),
                    ("kind", "nats"),
                    ("reason", "invalid_tenant"),
                ],
            ) == Some(3.0)
        },
    )
    .await;
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
    assert_eq!(status["counters"]["restarts"], 1);
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

/// Peak resident memory of a process, from `/proc/<pid>/status` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Memory is bounded in bytes (issue 13): 300 messages of about 1 MiB flood a core
/// NATS bridge while the exchange is down. Core NATS has no flow control, so the
/// bridge keeps at most `max_in_flight_bytes` (8 MiB here) and drops and counts the
/// rest; the daemon's peak RSS stays under 160 MiB (it would pass 300 MiB holding them
/// all). Once the exchange is back, sent = published + dropped.
#[tokio::test]
async fn a_flood_with_the_exchange_down_stays_within_the_byte_bound() {
    const SENT: usize = 300;
    const PEAK_BOUND: u64 = 160 * 1024 * 1024;
    let source = CoreNats::new();
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = common::proxy::Proxy::start("127.0.0.1:5672").await;
    let daemon = Daemon::start(
        &proxy.amqp_url(),
        &exchange,
        &bridge_table(
            &source,
            &bridge,
            "max_in_flight_bytes = 8388608\nmax_message_bytes = 2097152\nformat = \"raw\"",
        ),
    )
    .await;
    daemon.wait_ready().await;
    proxy.cut();
    common::eventually(Duration::from_secs(10), "the exchange down", || {
        daemon.bridges()["exchange"]["connected"] == false
    })
    .await;

    let client = common::nats().await;
    let payload = bytes::Bytes::from(vec![b'x'; 1_000_000]);
    for n in 0..SENT {
        client
            .publish(source.subject.clone(), payload.clone())
            .await
            .unwrap();
        if n % 10 == 9 {
            client.flush().await.unwrap();
        }
    }
    client.flush().await.unwrap();
    let dropped = |m: &common::Metrics| {
        m.get(
            "bridge_events_dropped_total",
            &[
                ("bridge", bridge.as_str()),
                ("kind", "nats"),
                ("reason", "overflow"),
            ],
        )
        .unwrap()
    };
    common::eventually(Duration::from_secs(20), "the flood read", || {
        let m = daemon.metrics();
        dropped(&m)
            + m.bridge("bridge_messages_received_total", &bridge, "nats")
                .unwrap()
            >= 250.0
    })
    .await;
    let peak = peak_rss(daemon.child.id());
    eprintln!("peak RSS during the flood: {} MiB", peak >> 20);
    assert!(
        peak < PEAK_BOUND,
        "peak RSS {} MiB over the bound of {} MiB",
        peak >> 20,
        PEAK_BOUND >> 20
    );

    proxy.restore();
    let mut published = 0.0;
    common::eventually(Duration::from_secs(60), "everything accounted for", || {
        let m = daemon.metrics();
        published = m
            .bridge("bridge_events_published_total", &bridge, "nats")
            .unwrap();
        published + dropped(&m) == SENT as f64
    })
    .await;
    eprintln!("published {published}, dropped {}", SENT as f64 - published);
    assert!(published >= 8.0, "the buffer was delivered: {published}");
    let received = rabbit
        .take_exactly(&queue, published as usize, Duration::from_secs(30))
        .await;
    assert_eq!(received.len(), published as usize);
}

/// The poison corpus (issue 13) through core NATS: long `Nats-Msg-Id`s, long, binary
/// and control-byte headers, content types, CloudEvents and bodies at the limits.
/// A header that is not UTF-8 used to close async-nats's connection and lose the
/// message silently (fixed in `vendor/async-nats`).
#[tokio::test]
async fn poison_corpus_is_published_or_dead_lettered() {
    poison::poison_corpus(&CoreNats::new()).await;
}
