//! Unit tests of the amqp kind: settings, endpoints, the loop guard, the refusals of a
//! declare, what an edit leaves behind, and the conversion of deliveries.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use serde_json::Value;

use super::consumer::{metadata, time_of};
use super::declare::{SettingsConflict, queue_arguments};
use super::endpoint::Endpoint;
use super::headers::{MAX_HEADER_TEXT, decimal_text, header_text};
use super::position::{Consumed, LeftBehind, left_behind};
use super::{Amqp, AmqpSpec};
use crate::config::PayloadFormat;
use crate::config::SourceSpec;
use crate::config::{BridgeSpec, ExchangeConfig};
use crate::sources::common::kind::Settings;
use crate::sources::common::kind::SourceKind;

fn parse(table: Value) -> Result<AmqpSpec, String> {
    Amqp::parse(table.as_object().unwrap().clone())
}

fn bridge(spec: &AmqpSpec, tenant: &str) -> BridgeSpec {
    BridgeSpec {
        name: "orders".into(),
        tenant: tenant.into(),
        bucket_tenants: None,
        source_name: "orders".into(),
        source_uri: None,
        event_type: None,
        time_field: None,
        format: PayloadFormat::Auto,
        content_type: None,
        max_in_flight: 10,
        max_message_bytes: 1024,
        shutdown_timeout: Duration::from_secs(1),
        backoff: Default::default(),
        state_dir: Default::default(),
        deadletter_sample_bytes: 65536,
        max_in_flight_bytes: 1 << 20,
        source: SourceSpec::new(Settings::<Amqp>(spec.clone())),
    }
}

#[test]
fn defaults_and_keys() {
    let spec = parse(serde_json::json!({"queue": "orders"})).unwrap();
    assert_eq!(spec.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert!(spec.declare && spec.durable() && !spec.exclusive() && !spec.auto_delete());
    assert!(spec.binding_keys().is_empty());
    let spec = parse(serde_json::json!({"queue": "q", "bind_exchange": "legacy"})).unwrap();
    assert_eq!(spec.binding_keys(), vec!["#"]);
    let err = parse(serde_json::json!({"queue": "q", "subject": "x"})).unwrap_err();
    assert!(err.starts_with("key `subject`: unknown key"), "{err}");
    assert!(err.contains("binding_keys"), "{err}");
    let err = parse(serde_json::json!({})).unwrap_err();
    assert!(err.contains("queue"), "{err}");
}

#[test]
fn settings_that_would_be_ignored_or_are_wrong_are_refused() {
    for (table, fragment) in [
        (serde_json::json!({"queue": ""}), "key `queue`"),
        (serde_json::json!({"queue": "amq.x"}), "key `queue`"),
        (
            serde_json::json!({"queue": "q", "declare": false, "durable": true}),
            "key `durable`",
        ),
        (
            serde_json::json!({"queue": "q", "declare": false, "arguments": {"x-max-length": 5}}),
            "key `arguments`",
        ),
        (
            serde_json::json!({"queue": "q", "binding_keys": ["a"]}),
            "key `binding_keys`: needs `bind_exchange`",
        ),
        (
            serde_json::json!({"queue": "q", "bind_exchange": "x", "binding_keys": []}),
            "key `binding_keys`",
        ),
        (
            serde_json::json!({"queue": "q", "bind_exchange": ""}),
            "key `bind_exchange`",
        ),
        (
            serde_json::json!({"queue": "q", "arguments": {"x-queue-type": "quorum"}, "durable": false}),
            "key `durable`",
        ),
        (
            serde_json::json!({"queue": "q", "arguments": {"x-queue-type": "quorum"}, "exclusive": true}),
            "key `exclusive`",
        ),
        (
            serde_json::json!({"queue": "q", "arguments": {"x-queue-type": "stream"}}),
            "stream queues",
        ),
        (
            serde_json::json!({"queue": "q", "arguments": {"x-ratio": 1.5}}),
            "key `arguments.x-ratio`",
        ),
        (
            serde_json::json!({"queue": "q", "url": "nats://x:4222"}),
            "key `url`",
        ),
        (serde_json::json!({"queue": "q", "user": "u"}), "key `user`"),
        (
            serde_json::json!({"queue": "q", "user": "u", "password": "p"}),
            "credentials too",
        ),
        (
            serde_json::json!({"queue": "q", "tls": {"ca_file": "/ca.pem"}}),
            "amqps://",
        ),
        (
            serde_json::json!({"queue": "q", "tls": {"required": true}}),
            "key `tls.required`",
        ),
        (
            serde_json::json!({"queue": "q", "url": "amqps://h/%2f", "tls": {"cert_file": "/c.pem"}}),
            "`cert_file` and `key_file`",
        ),
    ] {
        let err = parse(table.clone()).unwrap_err();
        assert!(err.contains(fragment), "{table}: {err}");
    }
    let quorum = serde_json::json!({
        "queue": "q",
        "url": "amqps://h:5671/prod",
        "user": "u",
        "password": "p",
        "tls": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
        "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 5, "x-single-active-consumer": true},
    });
    parse(quorum).unwrap();
}

#[test]
fn endpoints_keep_the_host_and_drop_credentials() {
    let e = Endpoint::parse("amqp://u:p@127.0.0.1:5673/%2f").unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.vhost.as_str(), e.tls),
        ("127.0.0.1", 5673, "/", false)
    );
    assert!(e.has_credentials);
    assert_eq!(
        e.source_uri("or ders"),
        "amqp://127.0.0.1:5673/%2F/or%20ders"
    );
    let e = Endpoint::parse("amqps://[::1]/prod?heartbeat=10").unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.vhost.as_str()),
        ("::1", 5671, "prod")
    );
    assert_eq!(e.label(), "[::1]:5671");
    assert!(!e.has_credentials);
    assert_eq!(Endpoint::parse("amqp://rabbit").unwrap().vhost, "/");
    assert_eq!(Endpoint::parse("amqp://rabbit/").unwrap().vhost, "");
    assert!(Endpoint::parse("amqp://h:99999/").is_err());
    assert!(Endpoint::parse("http://h/").is_err());
    let a = Endpoint::parse("amqp://localhost:5672/%2f").unwrap();
    assert!(a.same_broker(&Endpoint::parse("amqp://x:y@127.0.0.1/%2F").unwrap()));
    assert!(!a.same_broker(&Endpoint::parse("amqp://127.0.0.1/other").unwrap()));
    assert!(!a.same_broker(&Endpoint::parse("amqp://rabbit/%2f").unwrap()));
}

#[test]
fn the_loop_guard_refuses_consuming_our_own_output() {
    let exchange = ExchangeConfig::default();
    let spec = |bind: &str, keys: &[&str]| {
        parse(serde_json::json!({"queue": "q", "bind_exchange": bind, "binding_keys": keys}))
            .unwrap()
    };
    let check = |spec: &AmqpSpec, tenant: &str, exchange: &ExchangeConfig| {
        spec.check(&bridge(spec, tenant), exchange)
    };
    let looping = spec("events", &["event.#"]);
    let err = check(&looping, "acme", &exchange).unwrap_err();
    assert_eq!(
        err,
        "key `binding_keys`: `event.#` on the routing exchange `events` matches this bridge's own events (event.acme.orders.*): it would consume what it publishes"
    );
    // A tenant template may resolve to any word.
    assert!(
        check(
            &spec("events", &["event.globex.#"]),
            "{header:t}",
            &exchange
        )
        .is_err()
    );
    assert!(check(&spec("events", &["event.globex.#"]), "acme", &exchange).is_ok());
    assert!(check(&spec("events", &["event.*.other.*"]), "acme", &exchange).is_ok());
    // The default binding key `#` catches dead letters too.
    let all = parse(serde_json::json!({"queue": "q", "bind_exchange": "events"})).unwrap();
    assert!(check(&all, "acme", &exchange).unwrap_err().contains("`#`"));
    let dead = spec("events", &["deadletter.#"]);
    assert!(
        check(&dead, "acme", &exchange)
            .unwrap_err()
            .contains("dead letters")
    );
    // A separate dead-letter exchange, and the alternate exchange.
    let with_exchanges = ExchangeConfig {
        deadletter: Some("dlx".into()),
        alternate_exchange: Some("unrouted".into()),
        ..ExchangeConfig::default()
    };
    assert!(check(&dead, "acme", &with_exchanges).is_ok());
    assert!(check(&spec("dlx", &["#"]), "acme", &with_exchanges).is_err());
    assert!(
        check(
            &spec("unrouted", &["event.acme.#"]),
            "acme",
            &with_exchanges
        )
        .is_err()
    );
    // Other exchanges, and the same exchange name on another broker or vhost, are fine.
    assert!(check(&spec("legacy", &["#"]), "acme", &exchange).is_ok());
    let elsewhere = parse(serde_json::json!({
        "queue": "q", "url": "amqp://other-host/%2f", "bind_exchange": "events",
    }))
    .unwrap();
    assert!(check(&elsewhere, "acme", &exchange).is_ok());
    let other_vhost = parse(serde_json::json!({
        "queue": "q", "url": "amqp://localhost/legacy", "bind_exchange": "events",
    }))
    .unwrap();
    assert!(check(&other_vhost, "acme", &exchange).is_ok());
}

#[test]
fn describe_names_queue_binding_and_guarantee() {
    let spec = parse(serde_json::json!({
        "queue": "orders", "bind_exchange": "legacy", "binding_keys": ["order.#", "refund.*"],
    }))
    .unwrap();
    let text = Amqp::describe(&spec);
    assert!(
        text.starts_with("queue `orders` on 127.0.0.1:5672, vhost `/` (bound to `legacy` with `order.#`, `refund.*`); at-least-once"),
        "{text}"
    );
    assert!(!text.contains("guest"), "{text}");
    let exclusive = parse(serde_json::json!({"queue": "o", "exclusive": true})).unwrap();
    assert!(Amqp::describe(&exclusive).contains("WARNING"));
}

#[test]
fn arguments_become_field_values() {
    let spec = parse(serde_json::json!({"queue": "q", "arguments": {
        "x-queue-type": "quorum", "x-max-length": 1000, "x-single-active-consumer": true,
    }}))
    .unwrap();
    let table = queue_arguments(&spec.arguments);
    let get = |name: &str| table.inner().get(name).cloned();
    assert_eq!(
        get("x-queue-type"),
        Some(AMQPValue::LongString("quorum".into()))
    );
    assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(1000)));
    assert_eq!(
        get("x-single-active-consumer"),
        Some(AMQPValue::Boolean(true))
    );
}

#[test]
fn header_conversion_is_bounded_in_depth_and_size() {
    let mut value = AMQPValue::LongString("bottom".into());
    for _ in 0..100 {
        let mut table = FieldTable::default();
        table.insert("n".into(), value);
        value = AMQPValue::FieldTable(table);
    }
    let text = header_text(&value);
    assert!(text.contains("nested deeper than 16 levels"), "{text}");
    assert!(!text.contains("bottom"));
    let wide = AMQPValue::FieldArray(
        vec![AMQPValue::LongString("é".repeat(1000).as_str().into()); 100].into(),
    );
    assert!(header_text(&wide).len() <= MAX_HEADER_TEXT);
}

#[test]
fn header_values_become_text() {
    let mut nested = FieldTable::default();
    nested.insert("a".into(), AMQPValue::LongInt(1));
    nested.insert("b".into(), AMQPValue::LongString("x".into()));
    let mut array = lapin::types::FieldArray::default();
    array.push(AMQPValue::Boolean(true));
    array.push(AMQPValue::Void);
    for (value, text) in [
        (AMQPValue::LongString("grüße".into()), "grüße"),
        (AMQPValue::ShortString("s".into()), "s"),
        (AMQPValue::Boolean(false), "false"),
        (AMQPValue::LongLongInt(-42), "-42"),
        (AMQPValue::ShortShortUInt(7), "7"),
        (AMQPValue::Double(1.5), "1.5"),
        (
            AMQPValue::DecimalValue(lapin::types::DecimalValue { scale: 2, value: 5 }),
            "0.05",
        ),
        (AMQPValue::Timestamp(1_700_000_000), "2023-11-14T22:13:20Z"),
        (AMQPValue::ByteArray(vec![0, 255].into()), "AP8="),
        (AMQPValue::Void, ""),
        (AMQPValue::FieldTable(nested), r#"{"a":1,"b":"x"}"#),
        (AMQPValue::FieldArray(array), "[true,null]"),
    ] {
        assert_eq!(header_text(&value), text, "{value:?}");
    }
    assert_eq!(decimal_text(12345, 2), "123.45");
    assert_eq!(decimal_text(12345, 0), "12345");
}

#[test]
fn deliveries_map_to_metadata() {
    let mut headers = FieldTable::default();
    headers.insert("ce-specversion".into(), AMQPValue::LongString("1.0".into()));
    headers.insert("x-count".into(), AMQPValue::LongInt(3));
    let mut delivery = Delivery::mock(
        1,
        "legacy".into(),
        "order.created".into(),
        false,
        b"{}".to_vec(),
    );
    delivery.properties = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_content_type("application/json".into())
        .with_type("OrderCreated".into())
        .with_app_id("shop".into())
        .with_headers(headers);
    let received = Utc::now();
    let meta = metadata(&delivery, "amqp://h:5672/%2F/q", received);
    assert_eq!(meta.subject.as_deref(), Some("order.created"));
    assert_eq!(meta.id.as_deref(), Some("m-1"));
    assert_eq!(meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(meta.time, Utc.timestamp_opt(1_700_000_000, 0).single());
    assert_eq!(meta.source_uri, "amqp://h:5672/%2F/q");
    let header = |name: &str| {
        meta.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("ce-specversion"), Some("1.0"));
    assert_eq!(header("x-count"), Some("3"));
    assert_eq!(header("amqp-type"), Some("OrderCreated"));
    assert_eq!(header("amqp-app-id"), Some("shop"));
    assert_eq!(header("amqp-user-id"), None);

    // An application header cannot stand in for a property, in any case: with the
    // property set it gives way to it, without it it is gone.
    let mut spoofed = FieldTable::default();
    spoofed.insert("AMQP-User-Id".into(), AMQPValue::LongString("evil".into()));
    spoofed.insert("amqp-app-id".into(), AMQPValue::LongString("evil".into()));
    delivery.properties = BasicProperties::default()
        .with_user_id("guest".into())
        .with_headers(spoofed);
    let meta = metadata(&delivery, "s", received);
    assert_eq!(
        meta.headers,
        [("amqp-user-id".to_owned(), "guest".to_owned())]
    );

    let bare = Delivery::mock(2, "".into(), "".into(), true, Vec::new());
    let meta = metadata(&bare, "s", received);
    assert_eq!((meta.subject, meta.id, meta.time), (None, None, None));
    assert!(meta.headers.is_empty());
}

#[test]
fn a_refused_declare_names_the_key_and_the_queue() {
    let conflict = |reply: &str, locked| SettingsConflict::from_reply(reply, locked).map(|c| c.key);
    assert_eq!(
        conflict(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received none but current is the value '10' of type 'signedint'",
            false
        ),
        Some("arguments.x-max-length".into())
    );
    assert_eq!(
        conflict(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'",
            false
        ),
        Some("durable".into())
    );
    assert_eq!(
        conflict(
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' ...",
            false
        ),
        Some("auto_delete".into())
    );
    assert_eq!(
        conflict(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q'",
            true
        ),
        Some("exclusive".into())
    );
    // Not a conflict with an existing queue: a value RabbitMQ refuses for any queue.
    let invalid = "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow";
    assert_eq!(conflict(invalid, false), None);

    let reply = "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'orders' in vhost '/': received '20' but current is '10'";
    let text = SettingsConflict::from_reply(reply, false)
        .unwrap()
        .refusal("orders", Some(3));
    assert!(
        text.starts_with(
            "key `arguments.x-max-length`: queue `orders` exists with another `arguments.x-max-length`"
        ),
        "{text}"
    );
    for fragment in [
        reply,
        "never deletes or re-creates",
        "its 3 ready message(s) stay",
    ] {
        assert!(text.contains(fragment), "{fragment} in {text}");
    }
}

#[test]
fn an_edit_reports_the_queue_or_bindings_it_leaves() {
    let consumed = |url: &str, queue: &str, exchange: Option<&str>, keys: &[&str]| {
        let mut table = serde_json::json!({"url": url, "queue": queue});
        if let Some(exchange) = exchange {
            table["bind_exchange"] = exchange.into();
            table["binding_keys"] = keys.into();
        }
        let spec = parse(table).unwrap();
        Consumed::of(&spec, &Endpoint::parse(url).unwrap())
    };
    let url = "amqp://u:p@127.0.0.1/%2f";
    let before = consumed(url, "q", Some("legacy"), &["a.#", "b.#"]);
    assert_eq!(left_behind(&before, &before), None);
    // Same broker under another name, a key added: nothing left behind.
    let added = consumed(
        "amqp://localhost:5672/%2f",
        "q",
        Some("legacy"),
        &["b.#", "a.#", "c.#"],
    );
    assert_eq!(left_behind(&before, &added), None);
    assert_eq!(
        left_behind(&before, &consumed(url, "q", Some("legacy"), &["a.#"])),
        Some(LeftBehind::Bindings(vec![("legacy".into(), "b.#".into())]))
    );
    assert_eq!(
        left_behind(&before, &consumed(url, "q", Some("other"), &["a.#"])),
        Some(LeftBehind::Bindings(vec![
            ("legacy".into(), "a.#".into()),
            ("legacy".into(), "b.#".into())
        ]))
    );
    assert_eq!(
        left_behind(&before, &consumed(url, "q", None, &[])),
        Some(LeftBehind::Bindings(vec![
            ("legacy".into(), "a.#".into()),
            ("legacy".into(), "b.#".into())
        ]))
    );
    assert_eq!(
        left_behind(
            &before,
            &consumed(url, "q2", Some("legacy"), &["a.#", "b.#"])
        ),
        Some(LeftBehind::Queue)
    );
    assert_eq!(
        left_behind(
            &before,
            &consumed("amqp://127.0.0.1/other", "q", Some("legacy"), &["a.#"])
        ),
        Some(LeftBehind::QueueElsewhere)
    );
    // The record holds no credentials.
    let record = serde_json::to_string(&before).unwrap();
    assert!(!record.contains("u:p"), "{record}");
}

#[test]
fn timestamps_are_seconds_or_obvious_milliseconds() {
    assert_eq!(time_of(0), None);
    assert_eq!(
        time_of(1_700_000_000),
        Utc.timestamp_opt(1_700_000_000, 0).single()
    );
    assert_eq!(
        time_of(1_700_000_000_123),
        Utc.timestamp_millis_opt(1_700_000_000_123).single()
    );
}

#[test]
fn lapin_keeps_ipv4_hosts_but_loses_ipv6_ones() {
    // The reason `open` overrides the host: check what lapin's parser does.
    let uri: AMQPUri = "amqp://u:p@10.1.2.3:5673/%2f".parse().unwrap();
    assert_eq!(uri.authority.host, "10.1.2.3");
    let uri: AMQPUri = "amqp://u:p@[fd00::1]:5673/%2f".parse().unwrap();
    assert_eq!(uri.authority.host, "localhost", "IPv6 literals are lost");
}
