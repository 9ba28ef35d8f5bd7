//! `kind = "webhook"`: the shared conformance checks (driven by a sender that retries on
//! 503, as GitHub's redelivery or a CI system would), then what is special about HTTP
//! hooks: path tokens, bearer tokens and HMAC signatures, 415/413/405/404, the health
//! probe, CloudEvents over HTTP, 503 while the exchange is down, concurrent senders,
//! reloading a token, and the `webhook-url` and `token` commands.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::conformance::{SourceUnderTest, conformance_suite};
use common::poison::{self, Carries, PoisonMessage, Sent};
use common::proxy::Proxy;
use common::{AMQP_URL, Daemon, Rabbit, eventually, free_port, http_request, unique};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const DEFAULT_TYPE: &str = "broker-bridge.webhook.request";

/// One queued delivery of the conformance sender.
struct Delivery {
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    id: String,
}

/// A webhook bridge on a listener of the test's own, and a sender that posts in order
/// and tries again after every 503 until the hook settles the request.
struct Hook {
    port: u16,
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Deliveries the sender still holds (not yet answered with a final status).
    unsettled: Arc<AtomicU64>,
}

const CONFORMANCE_PATH: &str = "/hooks/conformance";
const CONFORMANCE_TOKEN: &str = "conformance-bearer-token";

impl Hook {
    fn new() -> Self {
        let port = free_port();
        let (deliveries, mut queue) = mpsc::unbounded_channel::<Delivery>();
        let unsettled = Arc::new(AtomicU64::new(0));
        let counter = unsettled.clone();
        tokio::spawn(async move {
            while let Some(delivery) = queue.recv().await {
                let authorization = format!("Bearer {CONFORMANCE_TOKEN}");
                let mut headers: Vec<(&str, &str)> = vec![
                    ("Authorization", &authorization),
                    ("X-Delivery-Id", &delivery.id),
                ];
                headers.extend(
                    delivery
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str())),
                );
                loop {
                    let reply =
                        http_request(port, "POST", CONFORMANCE_PATH, &headers, &delivery.payload)
                            .await;
                    match reply {
                        Some(reply) if reply.status != 503 => break,
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                counter.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Hook {
            port,
            deliveries,
            unsettled,
        }
    }
}

impl SourceUnderTest for Hook {
    fn kind(&self) -> &'static str {
        "webhook"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    fn bridge_keys(&self) -> String {
        format!(
            "path = \"{CONFORMANCE_PATH}\"\nbearer_token = \"{CONFORMANCE_TOKEN}\"\nid_header = \"X-Delivery-Id\"\nraw_bodies = true"
        )
    }
    fn subject(&self) -> String {
        CONFORMANCE_PATH.into()
    }
    fn expected_type(&self) -> String {
        DEFAULT_TYPE.into()
    }
    fn expected_subject(&self) -> Option<String> {
        None
    }
    fn takes_while_exchange_down(&self) -> bool {
        false
    }
    fn refuses_oversized(&self) -> bool {
        true
    }
    fn config_prelude(&self) -> String {
        format!("[webhook]\nlisten = \"127.0.0.1:{}\"\n\n", self.port)
    }
    async fn send(&self, payload: &[u8], headers: &[(&str, &str)]) {
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        self.deliveries
            .send(Delivery {
                payload: payload.to_vec(),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                id: unique("delivery"),
            })
            .unwrap();
    }
    async fn pending_at_source(&self, _bridge: &str) -> Option<u64> {
        Some(self.unsettled.load(Ordering::SeqCst))
    }
    fn carries(&self) -> Carries {
        Carries {
            // The `id_header` (X-Delivery-Id): as long as the listener takes headers.
            max_id: 65_535,
            headers: true,
            max_header_name: 4096,
            // HTTP allows bytes 0x80-0xFF (obs-text) in values, but no NUL or other
            // control bytes but tab.
            binary_header_values: true,
            binary_ids: true,
            max_content_type: 4096,
            ..Default::default()
        }
    }
    /// Posts directly (not through the retrying sender), to see the answer.
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        let mut headers = message.headers.clone();
        headers.push((
            "Authorization".into(),
            format!("Bearer {CONFORMANCE_TOKEN}").into_bytes(),
        ));
        if let Some(id) = &message.id {
            headers.push(("X-Delivery-Id".into(), id.clone().into_bytes()));
        }
        if let Some(id) = &message.binary_id {
            headers.push(("X-Delivery-Id".into(), id.clone()));
        }
        if let Some(content_type) = &message.content_type {
            headers.push(("Content-Type".into(), content_type.clone().into_bytes()));
        }
        let answer =
            poison::http_post_raw(self.port, CONFORMANCE_PATH, &headers, &message.payload).await;
        Sent {
            answer: Some(answer),
            ..Default::default()
        }
    }
}

// The shared contract (tests/common/conformance.rs).
conformance_suite!(Hook::new());

// ---------------------------------------------------------------------------------------
// What is special about webhooks.

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A daemon with one webhook bridge named `bridge` and the `[webhook]` listener on `port`.
async fn start(exchange_url: &str, exchange: &str, port: u16, bridge: &str, keys: &str) -> Daemon {
    let text = format!(
        "[webhook]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://hooks.example.com\"\n\n[[bridge]]\nname = \"{bridge}\"\nkind = \"webhook\"\n{keys}\n"
    );
    let daemon = Daemon::start(exchange_url, exchange, &text).await;
    daemon.wait_ready().await;
    daemon
}

async fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let reply = http_request(port, "POST", path, headers, body)
        .await
        .expect("the webhook listener answers");
    (reply.status, reply.body)
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// `bridge_requests_refused_total` of a webhook bridge for one reason.
fn refused(metrics: &common::Metrics, bridge: &str, reason: &str) -> Option<f64> {
    metrics.get(
        "bridge_requests_refused_total",
        &[("bridge", bridge), ("kind", "webhook"), ("reason", reason)],
    )
}

#[tokio::test]
async fn a_github_delivery_becomes_an_event_with_its_type_id_and_time() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("gh");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let port = free_port();
    let secret = "It's a Secret to Everybody";
    let keys = format!(
        "path_token = \"tok-123\"\nhmac_secret = \"{secret}\"\ntype = \"com.github.{{header:X-GitHub-Event}}\"\nid_header = \"X-GitHub-Delivery\"\ntime_field = \"/head_commit/timestamp\""
    );
    let daemon = start(AMQP_URL, &exchange, port, &bridge, &keys).await;
    let path = format!("/hooks/{bridge}/tok-123");
    let body =
        br#"{"ref":"refs/heads/main","head_commit":{"timestamp":"2026-11-22T10:15:00+01:00"}}"#;
    let signature = sign(secret, body);
    let (status, _) = post(
        port,
        &path,
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("X-Hub-Signature-256", &signature),
            ("User-Agent", "GitHub-Hookshot/abc"),
        ],
        body,
    )
    .await;
    assert_eq!(status, 200, "log: {}", daemon.log());
    let received = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(10))
        .await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].routing_key,
        format!("event.acme.{bridge}.com_github_push")
    );
    let event = received[0].json();
    assert_eq!(event["type"], "com.github.push");
    assert_eq!(event["id"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(event["time"], "2026-11-22T09:15:00Z");
    assert_eq!(
        event["source"],
        format!("https://hooks.example.com/hooks/{bridge}"),
        "the source never carries the token"
    );
    assert_eq!(event["datacontenttype"], "application/json; charset=utf-8");
    assert_eq!(event["tenant"], "acme");
    let needle = [b"\"data\":".as_slice(), body].concat();
    assert!(
        received[0].body.windows(needle.len()).any(|w| w == needle),
        "data is byte-exact"
    );
}

#[tokio::test]
async fn every_failed_check_gets_the_same_answer_and_nothing_is_published() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("auth");
    let queue = rabbit.bind(&exchange, "#").await;
    let port = free_port();
    let keys = "path_token = \"right-token\"\nbearer_token = \"right-bearer\"\nhmac_secret = \"right-secret\"";
    let daemon = start(AMQP_URL, &exchange, port, &bridge, keys).await;
    let body = br#"{"n":1}"#;
    let good_signature = sign("right-secret", body);
    let forged_signature = sign("wrong-secret", body);
    let malformed_signature = "sha256=not-hex";
    let good_path = format!("/hooks/{bridge}/right-token");
    let bearer = ("Authorization", "Bearer right-bearer");
    /// What is wrong, the path, the headers, and the reason in the metric.
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no path token",
            format!("/hooks/{bridge}"),
            vec![JSON, bearer, ("X-Hub-Signature-256", &good_signature)],
            "missing_credential",
        ),
        (
            "wrong path token",
            format!("/hooks/{bridge}/wrong-token"),
            vec![JSON, bearer, ("X-Hub-Signature-256", &good_signature)],
            "wrong_token",
        ),
        (
            "no bearer token",
            good_path.clone(),
            vec![JSON, ("X-Hub-Signature-256", &good_signature)],
            "missing_credential",
        ),
        (
            "wrong bearer token",
            good_path.clone(),
            vec![
                JSON,
                ("Authorization", "Bearer wrong"),
                ("X-Hub-Signature-256", &good_signature),
            ],
            "wrong_token",
        ),
        (
            "no signature",
            good_path.clone(),
            vec![JSON, bearer],
            "missing_credential",
        ),
        (
            "forged signature",
            good_path.clone(),
            vec![JSON, bearer, ("X-Hub-Signature-256", &forged_signature)],
            "bad_signature",
        ),
        (
            "malformed signature header",
            good_path.clone(),
            vec![JSON, bearer, ("X-Hub-Signature-256", malformed_signature)],
            "malformed_signature",
        ),
    ];
    // A scanner learns nothing: the same status, headers and body whatever failed.
    let mut answers = Vec::new();
    for (case, path, headers, _) in &cases {
        let reply = http_request(port, "POST", path, headers, body)
            .await
            .expect("an answer");
        let mut header_names: Vec<String> = reply
            .headers
            .iter()
            .map(|(name, _)| name.to_ascii_lowercase())
            .filter(|name| name != "date")
            .collect();
        header_names.sort();
        answers.push((case, reply.status, header_names, reply.body.clone()));
    }
    for (case, status, headers, text) in &answers {
        assert_eq!(
            (*status, headers, text),
            (answers[0].1, &answers[0].2, &answers[0].3),
            "{case} is answered like {}",
            answers[0].0
        );
    }
    assert_eq!(answers[0].1, 403);
    let metrics = daemon.metrics();
    for reason in [
        "missing_credential",
        "wrong_token",
        "bad_signature",
        "malformed_signature",
    ] {
        let expected = cases.iter().filter(|case| case.3 == reason).count() as f64;
        assert_eq!(
            refused(&metrics, &bridge, reason),
            Some(expected),
            "{reason}"
        );
    }
    assert!(
        daemon.log().contains("webhook request refused"),
        "the reason goes to the log: {}",
        daemon.log()
    );
    let (status, _) = post(
        port,
        &good_path,
        &[JSON, bearer, ("X-Hub-Signature-256", &good_signature)],
        body,
    )
    .await;
    assert_eq!(status, 200, "log: {}", daemon.log());
    let received = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        received.len(),
        1,
        "only the authenticated request is published"
    );
    assert_eq!(received[0].json()["data"], serde_json::json!({"n": 1}));

    let metrics = daemon.metrics();
    assert_eq!(
        metrics.bridge("bridge_messages_received_total", &bridge, "webhook"),
        Some(1.0)
    );
}

#[tokio::test]
async fn body_rules_probe_and_methods() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("body");
    let events = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.acme.{bridge}"))
        .await;
    let port = free_port();
    let keys = "bearer_token = \"b\"\nmax_message_bytes = 1000";
    let daemon = start(AMQP_URL, &exchange, port, &bridge, keys).await;
    let path = format!("/hooks/{bridge}");
    let auth = ("Authorization", "Bearer b");

    let (status, _) = post(port, &path, &[auth, ("Content-Type", "text/plain")], b"hi").await;
    assert_eq!(status, 415, "text is refused without raw_bodies");
    let (status, _) = post(port, &path, &[auth], b"{}").await;
    assert_eq!(status, 415, "no content type");
    let (status, _) = post(
        port,
        &path,
        &[auth, ("Content-Type", "application/cloudevents-batch+json")],
        b"[]",
    )
    .await;
    assert_eq!(status, 415, "batches are not taken");
    let large = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let (status, _) = post(port, &path, &[auth, JSON], large.as_bytes()).await;
    assert_eq!(status, 413);
    let (status, text) = post(port, &path, &[auth, JSON], b"{ not json").await;
    assert_eq!(status, 400, "dead-lettered bodies are answered 400");
    assert!(text.contains("invalid_json"), "{text}");
    let dead_letters = rabbit.take_exactly(&dead, 1, Duration::from_secs(10)).await;
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(dead_letters[0].body, b"{ not json");

    for (content_type, body) in [
        ("application/json", br#"{"a":1}"#.as_slice()),
        (
            "application/vnd.gitlab+json; charset=utf-8",
            br#"{"b":2}"#.as_slice(),
        ),
    ] {
        let (status, _) = post(port, &path, &[auth, ("Content-Type", content_type)], body).await;
        assert_eq!(status, 200, "{content_type}");
    }
    let received = rabbit
        .take_exactly(&events, 2, Duration::from_secs(10))
        .await;
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].json()["data"], serde_json::json!({"a": 1}));
    assert_eq!(received[1].json()["data"], serde_json::json!({"b": 2}));
    assert_eq!(received[0].json()["type"], DEFAULT_TYPE);

    // The health probe: GET and HEAD of the hook URL (no body, no credentials needed
    // beyond a path token); other methods 405; unknown paths 404.
    for method in ["GET", "HEAD"] {
        let reply = http_request(port, method, &path, &[], b"").await.unwrap();
        assert_eq!(reply.status, 200, "{method}");
    }
    let reply = http_request(port, "PUT", &path, &[auth, JSON], b"{}")
        .await
        .unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));
    let reply = http_request(port, "POST", "/hooks/nobody", &[auth, JSON], b"{}")
        .await
        .unwrap();
    assert_eq!(reply.status, 404);

    let metrics = daemon.metrics();
    assert_eq!(
        refused(&metrics, &bridge, "unsupported_media_type"),
        Some(3.0)
    );
    assert_eq!(refused(&metrics, &bridge, "too_large"), Some(1.0));
    assert_eq!(refused(&metrics, &bridge, "method_not_allowed"), Some(1.0));
    assert_eq!(
        metrics.bridge("bridge_events_published_total", &bridge, "webhook"),
        Some(2.0)
    );
}

#[tokio::test]
async fn cloudevents_over_http_pass_through() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("ce");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let port = free_port();
    let daemon = start(AMQP_URL, &exchange, port, &bridge, "bearer_token = \"b\"").await;
    let path = format!("/hooks/{bridge}");
    let auth = ("Authorization", "Bearer b");

    let structured = br#"{"specversion":"1.0","id":"evt-1","source":"https://ci.example/jobs","type":"com.example.build.finished","subject":"job-7","data":{"ok":true}}"#;
    let (status, _) = post(
        port,
        &path,
        &[
            auth,
            (
                "Content-Type",
                "application/cloudevents+json; charset=utf-8",
            ),
        ],
        structured,
    )
    .await;
    assert_eq!(status, 200, "log: {}", daemon.log());
    // Binary mode: attributes in ce- headers, the body is the data, any content type.
    let (status, _) = post(
        port,
        &path,
        &[
            auth,
            ("ce-specversion", "1.0"),
            ("ce-id", "evt-2"),
            ("ce-source", "/sensors/7"),
            ("ce-type", "com.example.reading"),
            ("Content-Type", "text/csv"),
        ],
        b"t,21.5\n",
    )
    .await;
    assert_eq!(status, 200);

    let received = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(10))
        .await;
    assert_eq!(received.len(), 2);
    let first = received[0].json();
    assert_eq!(first["id"], "evt-1");
    assert_eq!(first["source"], "https://ci.example/jobs");
    assert_eq!(first["subject"], "job-7");
    assert_eq!(first["data"], serde_json::json!({"ok": true}));
    assert_eq!(first["tenant"], "acme");
    assert_eq!(
        received[0].routing_key,
        format!("event.acme.{bridge}.com_example_build_finished")
    );
    let second = received[1].json();
    assert_eq!(second["id"], "evt-2");
    assert_eq!(second["type"], "com.example.reading");
    assert_eq!(second["datacontenttype"], "text/csv");
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(second["data_base64"].as_str().unwrap())
            .unwrap(),
        b"t,21.5\n"
    );
}

#[tokio::test]
async fn answers_503_while_the_exchange_is_down_and_200_after() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("down");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let port = free_port();
    let daemon = start(
        &proxy.amqp_url(),
        &exchange,
        port,
        &bridge,
        "bearer_token = \"b\"",
    )
    .await;
    let path = format!("/hooks/{bridge}");
    let auth = ("Authorization", "Bearer b");

    proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    for n in 0..5 {
        let reply = http_request(
            port,
            "POST",
            &path,
            &[auth, JSON],
            format!("{{\"down\":{n}}}").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 503);
        assert!(
            reply.header("retry-after").is_some(),
            "503 says when to retry"
        );
    }
    proxy.restore();
    eventually(Duration::from_secs(15), "exchange back", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(1.0)
    })
    .await;
    let (status, _) = post(port, &path, &[auth, JSON], br#"{"up":true}"#).await;
    assert_eq!(status, 200, "log: {}", daemon.log());
    let received = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(10))
        .await;
    assert_eq!(received.len(), 1, "nothing answered 503 was published");
    assert_eq!(received[0].json()["data"], serde_json::json!({"up": true}));
    assert_eq!(
        refused(&daemon.metrics(), &bridge, "unavailable"),
        Some(5.0)
    );
}

#[tokio::test]
async fn concurrent_posts_are_all_delivered_once() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("many");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let port = free_port();
    let daemon = start(
        AMQP_URL,
        &exchange,
        port,
        &bridge,
        "path_token = \"t\"\nmax_in_flight = 16",
    )
    .await;
    let path = format!("/hooks/{bridge}/t");
    let total = 300u64;
    let mut posts = tokio::task::JoinSet::new();
    for n in 0..total {
        let path = path.clone();
        posts.spawn(async move {
            let body = format!("{{\"n\":{n}}}");
            // A sender that tries again on 503, as webhook senders do.
            loop {
                let reply = http_request(port, "POST", &path, &[JSON], body.as_bytes()).await;
                match reply.map(|r| r.status) {
                    Some(200) => return,
                    Some(503) | None => tokio::time::sleep(Duration::from_millis(50)).await,
                    Some(other) => panic!("unexpected status {other}"),
                }
            }
        });
    }
    while let Some(result) = posts.join_next().await {
        result.unwrap();
    }
    let received = rabbit
        .take_exactly(&queue, total as usize, Duration::from_secs(30))
        .await;
    let mut numbers: Vec<u64> = received
        .iter()
        .map(|r| r.json()["data"]["n"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        (0..total).collect::<Vec<_>>(),
        "log: {}",
        daemon.log()
    );
}

/// Standard Webhooks headers for `body`, signed with the `whsec_` secret at `timestamp`.
fn standard_webhooks_headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), format!("v1,{signature}")),
    ]
}

/// A captured delivery replayed later is refused by its signed timestamp; replayed
/// within the window it is answered 200 but published once.
#[tokio::test]
async fn replays_are_refused_when_stale_and_published_once_when_fresh() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("replay");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let port = free_port();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let keys = format!(
        "hmac_secret = \"{secret}\"\nhmac_scheme = \"standard-webhooks\"\ntimestamp_tolerance = \"5m\""
    );
    let daemon = start(AMQP_URL, &exchange, port, &bridge, &keys).await;
    let now = chrono::Utc::now().timestamp();
    let path = format!("/hooks/{bridge}");
    let send = async |headers: Vec<(String, String)>, body: &[u8]| {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        post(port, &path, &headers, body).await
    };

    let fresh = standard_webhooks_headers(secret, "msg_fresh", now, br#"{"n":1}"#);
    assert_eq!(
        send(fresh.clone(), br#"{"n":1}"#).await.0,
        200,
        "log: {}",
        daemon.log()
    );
    // The same delivery again, as a sender retrying after a lost answer would.
    assert_eq!(
        send(fresh, br#"{"n":1}"#).await.0,
        200,
        "a repeat is acknowledged"
    );
    // Captured ten minutes ago: the signature is right, the timestamp is not.
    let stale = standard_webhooks_headers(secret, "msg_stale", now - 600, br#"{"n":2}"#);
    assert_eq!(send(stale, br#"{"n":2}"#).await.0, 403);
    let future = standard_webhooks_headers(secret, "msg_future", now + 600, br#"{"n":3}"#);
    assert_eq!(send(future, br#"{"n":3}"#).await.0, 403);
    let other = standard_webhooks_headers(secret, "msg_other", now, br#"{"n":4}"#);
    assert_eq!(send(other, br#"{"n":4}"#).await.0, 200);
    // Two copies at once: one is published; the other waits for it (503, then a retry
    // is a duplicate), never answered 200 before the first is known.
    let pair = standard_webhooks_headers(secret, "msg_pair", now, br#"{"n":5}"#);
    let (first, second) = tokio::join!(
        send(pair.clone(), br#"{"n":5}"#),
        send(pair.clone(), br#"{"n":5}"#)
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert!(
        statuses == [200, 200] || statuses == [200, 503],
        "{statuses:?}"
    );
    assert_eq!(send(pair, br#"{"n":5}"#).await.0, 200, "the retry");

    let received = rabbit
        .take_exactly(&queue, 3, Duration::from_secs(10))
        .await;
    let ids: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["msg_fresh", "msg_other", "msg_pair"],
        "the signed id is the event id, and each delivery is published once"
    );
    assert!(
        rabbit
            .take_exactly(&queue, 1, Duration::from_secs(1))
            .await
            .is_empty(),
        "no repeat was published again"
    );
    let metrics = daemon.metrics();
    assert_eq!(refused(&metrics, &bridge, "stale_timestamp"), Some(2.0));
    let duplicates = metrics
        .get(
            "bridge_requests_duplicate_total",
            &[("bridge", &bridge), ("kind", "webhook")],
        )
        .unwrap();
    // The repeat of msg_fresh, the retry of msg_pair, and its twin if it came second.
    assert!(duplicates == 2.0 || duplicates == 3.0, "{duplicates}");
    assert_eq!(
        metrics.bridge("bridge_messages_received_total", &bridge, "webhook"),
        Some(3.0)
    );
}

#[tokio::test]
async fn a_reloaded_token_takes_effect_and_the_hook_never_disappears() {
    let exchange = unique("ex");
    let bridge = unique("reload");
    let port = free_port();
    let prelude = format!("[webhook]\nlisten = \"127.0.0.1:{port}\"\n\n");
    let table = |token: &str| {
        format!(
            "{prelude}[[bridge]]\nname = \"{bridge}\"\nkind = \"webhook\"\npath_token = \"{token}\"\n"
        )
    };
    let daemon = Daemon::start(AMQP_URL, &exchange, &table("old-token")).await;
    daemon.wait_ready().await;
    let old = format!("/hooks/{bridge}/old-token");
    let new = format!("/hooks/{bridge}/new-token");
    assert_eq!(post(port, &old, &[JSON], b"{}").await.0, 200);
    daemon.write_bridges(&table("new-token"));
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = post(port, &new, &[JSON], b"{}").await.0;
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new token never accepted: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        statuses.iter().all(|s| [200, 403, 503].contains(s)),
        "while the bridge restarts the hook answers 403 or 503, never 404: {statuses:?}"
    );
    assert_eq!(post(port, &old, &[JSON], b"{}").await.0, 403);
}

#[tokio::test]
async fn webhook_url_and_token_commands() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hooks.toml");
    std::fs::write(&config, "[webhook]\nlisten = \"0.0.0.0:9181\"\npublic_url = \"https://hooks.example.com/\"\n\n[[bridge]]\nname = \"github\"\nkind = \"webhook\"\npath = \"/wh/acme\"\npath_token = \"abc123\"\n\n[[bridge]]\nname = \"orders\"\nkind = \"nats\"\nsubject = \"orders\"\n").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_broker-bridge"))
            .args(args)
            .output()
            .unwrap()
    };
    let config_arg = config.to_str().unwrap();
    let url = run(&["webhook-url", "-c", config_arg, "github"]);
    assert!(url.status.success());
    assert_eq!(
        String::from_utf8(url.stdout).unwrap(),
        "https://hooks.example.com/wh/acme/abc123\n"
    );
    let not_a_hook = run(&["webhook-url", "-c", config_arg, "orders"]);
    assert!(!not_a_hook.status.success());
    assert!(String::from_utf8_lossy(&not_a_hook.stderr).contains("not webhook"));
    let missing = run(&["webhook-url", "-c", config_arg, "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no bridge `nobody`"));

    let first = run(&["token"]);
    let second = run(&["token"]);
    assert!(first.status.success());
    let first = String::from_utf8(first.stdout).unwrap();
    assert_eq!(first.trim().len(), 43);
    assert!(
        first
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert_ne!(first, String::from_utf8(second.stdout).unwrap());
}

#[tokio::test]
async fn config_mistakes_name_the_bridge_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    for (text, expected) in [
        (
            "[[bridge]]\nname = \"open\"\nkind = \"webhook\"\n",
            "bridge `open`",
        ),
        (
            "[[bridge]]\nname = \"a\"\nkind = \"webhook\"\npath = \"/x\"\nbearer_token = \"t\"\n[[bridge]]\nname = \"b\"\nkind = \"webhook\"\npath = \"/x/y\"\nbearer_token = \"t\"\n",
            "bridge `b`: key `path`",
        ),
        (
            "[webhook]\npublic_url = \"hooks.example.com\"\n",
            "webhook.public_url",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_broker-bridge"))
            .args(["check", "-c", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
}

/// Issue 13's report: a 300-byte delivery id used to panic inside the AMQP client and
/// leave the hook answering 503 forever. The event is published under the id's digest
/// (with the original kept), the digest of the whole id (so a repeat, answered from
/// the replay guard, would carry the same one), and the next ordinary request is
/// published too; a passed-through CloudEvent with a 300-byte id is
/// dead-lettered as too_long.
#[tokio::test]
async fn an_over_long_delivery_id_is_digested_and_the_hook_goes_on() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("gh");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let dead = rabbit
        .bind(&exchange, &format!("deadletter.acme.{bridge}"))
        .await;
    let port = free_port();
    let keys = "path_token = \"tok-1\"\nid_header = \"X-GitHub-Delivery\"\ntype = \"push\"";
    let daemon = start(AMQP_URL, &exchange, port, &bridge, keys).await;
    let path = format!("/hooks/{bridge}/tok-1");
    let long_id = "a".repeat(300);
    for _ in 0..2 {
        let (status, body) =
            post(port, &path, &[JSON, ("X-GitHub-Delivery", &long_id)], b"{}").await;
        assert_eq!(status, 200, "{body}; log: {}", daemon.log());
    }
    assert_eq!(
        daemon.metrics().get(
            "bridge_requests_duplicate_total",
            &[("bridge", bridge.as_str()), ("kind", "webhook")]
        ),
        Some(1.0),
        "the repeat is answered without publishing it again"
    );
    let (status, _) = post(
        port,
        &path,
        &[JSON, ("X-GitHub-Delivery", "short-1")],
        b"{}",
    )
    .await;
    assert_eq!(status, 200);
    let received = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(10))
        .await;
    assert_eq!(received.len(), 2);
    let first = received[0].json();
    let digest = first["id"].as_str().unwrap();
    assert_eq!(
        digest,
        format!("sha256:{}", hex::encode(Sha256::digest(long_id.as_bytes())))
    );
    assert_eq!(first["originalid"], long_id.as_str());
    assert_eq!(
        received[0]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some(digest)
    );
    assert_eq!(received[1].json()["id"], "short-1");

    let event = format!(
        r#"{{"specversion":"1.0","id":"{}","source":"/s","type":"t","data":{{}}}}"#,
        "b".repeat(300)
    );
    let (status, body) = post(
        port,
        &path,
        &[("Content-Type", "application/cloudevents+json")],
        event.as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let letters = rabbit.take_exactly(&dead, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header("x-bridge-reason").as_deref(),
        Some("too_long")
    );
    let (status, _) = post(
        port,
        &path,
        &[JSON, ("X-GitHub-Delivery", "short-2")],
        b"{}",
    )
    .await;
    assert_eq!(status, 200, "the hook goes on");
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.get(
            "bridge_events_dead_lettered_total",
            &[
                ("bridge", bridge.as_str()),
                ("kind", "webhook"),
                ("reason", "too_long")
            ]
        ),
        Some(1.0)
    );
}

/// The poison corpus (issue 13) over HTTP: long `X-Delivery-Id`s, long and non-UTF-8
/// headers, content types, CloudEvents and bodies at the limits. Each request is
/// answered 200 (published), 400 with the reason (dead-lettered) or 413 (over
/// max_message_bytes, nothing published).
#[tokio::test]
async fn poison_corpus_is_published_or_dead_lettered() {
    poison::poison_corpus(&Hook::new()).await;
}
