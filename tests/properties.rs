//! Property tests (issue 13): for arbitrary input, normalization, templates, the S3
//! notification parser, the CloudEvent encodings and the AMQP header conversion never
//! panic; every value that becomes an AMQP short string fits in 255 bytes; routing keys
//! are valid; encodings round-trip.
//!
//! CI runs a bounded number of cases per property (the `config(N)` of each block), a few
//! seconds in all. `PROPTEST_CASES` overrides that number for every property:
//!
//!     PROPTEST_CASES=10000 cargo test --test properties
//!
//! (`PROPTEST_RNG_SEED` or `PROPTEST_RNG_ALGORITHM` are honoured too.) No regression
//! files are written: a failing case, once shrunk, belongs at the end of this file as a
//! plain `#[test]` named for what it shows.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use broker_bridge::cloudevent::{
    self, BINARY_HEADER_PREFIXES, CloudEvent, Data, ExtensionValue, is_json_content_type,
    is_structured_content_type,
};
use broker_bridge::config::{BridgeSpec, PayloadFormat};
use broker_bridge::message::{Metadata, RejectReason};
use broker_bridge::normalize::{
    MAX_ORIGINAL_ID_BYTES, Mapping, Normalized, ORIGINAL_ID_EXTENSION, normalize_message,
};
use broker_bridge::routing;
use broker_bridge::s3notification;
use broker_bridge::short_string::{self, MAX_SHORT_STRING};
use broker_bridge::template::{Template, TemplateInput};
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, SecondsFormat, TimeZone, Utc};
use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};
use serde_json::{Map, Value, json};

/// `cases` unless `PROPTEST_CASES` says otherwise; never writes regression files into
/// the source tree.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Bridges, loaded through the public config path (`Mapping::new` takes a `BridgeSpec`).

/// Bridges that together reach every mapping rule: fixed and templated tenants and
/// types, subjects split on `.` (NATS), `/` (MQTT) and not at all (Kafka), `time_field`,
/// every payload format, tenants by bucket, a default content type, a small
/// `max_message_bytes`, and the longest `source_name`, which leaves less room in the key.
const BRIDGES_TOML: &str = r#"
[defaults]
tenant = "acme"

[[bridge]]
name = "plain"
kind = "nats"
subject = "in.>"

[[bridge]]
name = "templated"
kind = "nats"
subject = "in.>"
tenant = "{subject[1]}"
type = "com.acme.{header:X-Event}.{json:/kind}"
time_field = "ts"
format = "json"
source_uri = "/fixed/source"

[[bridge]]
name = "header-tenant"
kind = "nats"
subject = "in.>"
tenant = "{header:X-Tenant}"
type = "{subject}"
format = "raw"
content_type = "text/plain"

[[bridge]]
name = "auto-json-time"
kind = "nats"
subject = "in.>"
type = "{json:/kind}"
time_field = "/ts"

[[bridge]]
name = "s3-notifications"
kind = "nats"
subject = "in.>"
format = "s3-notification"

[[bridge]]
name = "s3-bucket-tenants"
kind = "nats"
subject = "in.>"
format = "s3-notification"
type = "{subject[0]}.{subject[1]}"
bucket_tenants = { "a.b" = "acme", "é" = "globex_eu", uploads = "initech" }

[[bridge]]
name = "mqtt-levels"
kind = "mqtt"
topics = ["in/#"]
tenant = "{subject[1]}"
type = "com.acme.{subject[0]}"

[[bridge]]
name = "kafka-topic"
kind = "kafka"
topics = ["in"]
tenant = "t-{subject[0]}"

[[bridge]]
name = "small"
kind = "nats"
subject = "in.>"
type = "t"
max_message_bytes = 64

[[bridge]]
name = "structured-default"
kind = "nats"
subject = "in.>"
content_type = "application/cloudevents+json"

[[bridge]]
name = "long-source-name"
kind = "nats"
subject = "in.>"
tenant = "t"
source_name = "ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss"
"#;

struct Bridge {
    spec: BridgeSpec,
    mapping: Mapping,
}

static BRIDGES: LazyLock<Vec<Bridge>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, BRIDGES_TOML).expect("config written");
    let loaded = broker_bridge::config::load(&path, &broker_bridge::sources::KINDS)
        .expect("the test bridges are valid");
    loaded
        .config
        .bridges
        .into_iter()
        .map(|spec| Bridge {
            mapping: Mapping::new(&spec),
            spec,
        })
        .collect()
});

// ---------------------------------------------------------------------------------------
// Text.

/// Values that mean something to one of the parsers.
const SPECIAL: &[&str] = &[
    "",
    ".",
    "*",
    "#",
    " ",
    "a.b",
    "a/b/c",
    "tenants/globex/sensors/t1",
    "{",
    "}",
    "{subject}",
    "%",
    "%zz",
    "%C3",
    "+",
    "é",
    "\u{0}",
    "\u{7f}",
    "\u{FFFD}",
    "\r\n",
    "1.0",
    "0.3",
    "null",
    "2026-01-02T03:04:05Z",
    "+10000-01-01T00:00:00Z",
    "application/json",
    "application/cloudevents+json",
    "sha256:",
];

/// Any characters: control characters, non-ASCII, the replacement character.
fn short_text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

/// Any text, now and then up to `long` bytes of one repeated character.
fn text_up_to(long: usize) -> BoxedStrategy<String> {
    prop_oneof![
        8 => short_text(),
        // What a transport makes of bytes that are not UTF-8.
        2 => vec(any::<u8>(), 0..48).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        3 => select(SPECIAL).prop_map(str::to_owned),
        1 => (short_text(), any::<char>(), 0..=long).prop_map(|(mut text, c, bytes)| {
            text.extend(std::iter::repeat_n(c, bytes / c.len_utf8()));
            text
        }),
    ]
    .boxed()
}

fn text() -> BoxedStrategy<String> {
    text_up_to(70_000)
}

fn nonempty_text() -> impl Strategy<Value = String> {
    text_up_to(600).prop_filter("non-empty", |text| !text.is_empty())
}

/// ASCII text of exactly `len` bytes, around the 255-byte and 64 KiB limits.
fn exact_len(lengths: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    (lengths, select(&['k', '.', '/', ':'][..])).prop_map(|(len, c)| c.to_string().repeat(len))
}

// ---------------------------------------------------------------------------------------
// JSON.

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(&["ts", "kind", "id", "type", "source", "specversion", "data", "Records", "Event"][..])
            .prop_map(str::to_owned),
        1 => short_text(),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Not finite becomes null.
        any::<f64>().prop_map(Value::from),
        text_up_to(2_000).prop_map(Value::String),
    ]
}

fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                vec((json_key(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A `time_field` value: seconds, milliseconds, far past or future, or text.
fn json_time() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-1e17..1e17f64).prop_map(Value::from),
        (0i64..4_000_000_000).prop_map(Value::from),
        (-10_000_000_000_000i64..400_000_000_000_000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        rfc3339().prop_map(Value::String),
        text_up_to(100).prop_map(Value::String),
    ]
}

/// An object with the members templates and `time_field` look at.
fn json_with_kind_and_time() -> impl Strategy<Value = Value> {
    (
        option::of(json_leaf()),
        option::of(json_time()),
        json_value(),
    )
        .prop_map(|(kind, ts, other)| {
            let mut object = Map::new();
            if let Some(kind) = kind {
                object.insert("kind".into(), kind);
            }
            if let Some(ts) = ts {
                object.insert("ts".into(), ts);
            }
            object.insert("other".into(), other);
            Value::Object(object)
        })
}

/// RFC 3339 text of any instant in years 0000-9999, in any offset and precision.
fn rfc3339() -> impl Strategy<Value = String> {
    (
        -62_167_219_200i64..=253_402_300_799,
        0u32..1_000_000_000,
        -86_399i32..=86_399,
        select(
            &[
                SecondsFormat::Secs,
                SecondsFormat::Millis,
                SecondsFormat::Micros,
                SecondsFormat::Nanos,
                SecondsFormat::AutoSi,
            ][..],
        ),
        any::<bool>(),
    )
        .prop_filter_map("in range", |(seconds, nanos, offset, format, z)| {
            let offset = FixedOffset::east_opt(offset)?;
            let time = offset.timestamp_opt(seconds, nanos).single()?;
            let text = time.to_rfc3339_opts(format, z);
            // Offsets near a year's edge can carry the local date out of 0000-9999.
            cloudevent::parse_time(&text).map(|_| text)
        })
}

// ---------------------------------------------------------------------------------------
// Messages.

const PREFIXES_ANY_CASE: &[&str] = &[
    "ce-",
    "ce_",
    "cloudEvents:",
    "cloudEvents_",
    "CE-",
    "Ce_",
    "CLOUDEVENTS:",
    "cloudevents_",
];

const ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "tenant",
    "originalid",
    "data",
];

fn header_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => text_up_to(400),
        3 => (select(PREFIXES_ANY_CASE), select(ATTRIBUTES)).prop_map(|(p, a)| format!("{p}{a}")),
        1 => (select(PREFIXES_ANY_CASE), text_up_to(300)).prop_map(|(p, a)| format!("{p}{a}")),
        // Valid extension names around the 255-byte limit of `ce-<name>`.
        1 => (select(PREFIXES_ANY_CASE), 250..=256usize).prop_map(|(p, n)| format!("{p}{}", "k".repeat(n))),
        2 => select(&["X-Tenant", "x-event", "X-Event", "content-type", "Nats-Msg-Id"][..])
            .prop_map(str::to_owned),
        1 => exact_len(250..=260).prop_map(|name| format!("x-{name}")),
    ]
    .boxed()
}

fn header_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => text(),
        1 => select(&["1.0", "acme", "created", "/edge", "text/plain"][..]).prop_map(str::to_owned),
        1 => rfc3339(),
    ]
    .boxed()
}

/// The headers of a binary-mode CloudEvent with arbitrary attribute values.
fn binary_event_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    (
        select(PREFIXES_ANY_CASE),
        text_up_to(1_000),
        text_up_to(1_000),
        text_up_to(1_000),
        option::of(prop_oneof![rfc3339(), short_text()]),
        vec((extension_name(), text_up_to(1_000)), 0..3),
    )
        .prop_map(|(prefix, id, source, ty, time, extensions)| {
            let mut headers = vec![
                (format!("{prefix}specversion"), "1.0".to_owned()),
                (format!("{prefix}id"), id),
                (format!("{prefix}source"), source),
                (format!("{prefix}type"), ty),
            ];
            if let Some(time) = time {
                headers.push((format!("{prefix}time"), time));
            }
            for (name, value) in extensions {
                headers.push((format!("{prefix}{name}"), value));
            }
            headers
        })
}

/// Transport headers, often with the ones the test bridges' templates read.
fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    (
        any_headers(),
        option::weighted(0.7, header_value()),
        option::weighted(0.7, header_value()),
    )
        .prop_map(|(mut headers, tenant, event)| {
            if let Some(tenant) = tenant {
                headers.push(("X-Tenant".into(), tenant));
            }
            if let Some(event) = event {
                headers.push(("x-event".into(), event));
            }
            headers
        })
}

fn any_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop_oneof![
        3 => vec((header_name(), header_value()), 0..6),
        1 => (binary_event_headers(), vec((header_name(), header_value()), 0..3)).prop_map(
            |(mut event, others)| {
                event.extend(others);
                event
            }
        ),
    ]
}

fn content_type() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(&[
            "application/json",
            "APPLICATION/JSON; charset=utf-8",
            "application/vnd.acme+json",
            "text/json",
            "application/cloudevents+json",
            "application/cloudevents+json; charset=utf-8",
            "application/cloudevents-batch+json",
            "text/plain",
            "application/octet-stream",
            "",
        ][..])
        .prop_map(str::to_owned),
        1 => text_up_to(400),
        1 => exact_len(240..=270).prop_map(|tail| format!("application/x-{tail}")),
    ]
    .boxed()
}

/// The id a transport gives: short, around 255 bytes, or up to 66,000 bytes.
fn transport_id() -> BoxedStrategy<String> {
    prop_oneof![
        4 => text_up_to(66_000),
        2 => exact_len(250..=260),
        1 => exact_len(MAX_ORIGINAL_ID_BYTES - 2..=MAX_ORIGINAL_ID_BYTES + 2),
        1 => exact_len(65_990..=66_000),
    ]
    .boxed()
}

/// A transport time: mostly recent, sometimes anywhere chrono can represent (Kafka and
/// AMQP timestamps are whatever the sender wrote).
fn transport_time() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        4 => (0i64..4_000_000_000).prop_filter_map("valid", |s| Utc.timestamp_opt(s, 0).single()),
        1 => (DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis())
            .prop_filter_map("valid", |ms| Utc.timestamp_millis_opt(ms).single()),
    ]
}

/// A subject, topic or key: any text, or tokens joined by `.` or `/`.
fn subject() -> BoxedStrategy<String> {
    prop_oneof![
        2 => text(),
        1 => (vec(text_up_to(300), 1..5), select(&[".", "/"][..]))
            .prop_map(|(tokens, separator)| tokens.join(separator)),
    ]
    .boxed()
}

fn metadata() -> impl Strategy<Value = Metadata> {
    (
        option::weighted(0.9, subject()),
        headers(),
        option::weighted(0.7, content_type()),
        option::of(transport_time()),
        option::weighted(0.8, transport_id()),
        prop_oneof![9 => Just("nats://127.0.0.1:4222/in".to_owned()), 1 => text_up_to(1_000)],
        vec(
            (
                prop_oneof![
                    4 => extension_name().boxed(),
                    1 => short_text().boxed(),
                    1 => (250..=256usize).prop_map(|n| "x".repeat(n)).boxed(),
                ],
                text_up_to(5_000),
            ),
            0..3,
        ),
        option::weighted(0.2, text()),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(
                subject,
                headers,
                content_type,
                time,
                id,
                source_uri,
                extensions,
                default_type,
                no_data,
            )| {
                Metadata {
                    subject,
                    headers,
                    content_type,
                    time,
                    id,
                    source_uri,
                    extensions,
                    received: Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap(),
                    default_type,
                    no_data,
                }
            },
        )
}

/// A structured-mode document, valid or not: each attribute may be missing, of the
/// wrong JSON type, or anything.
fn structured_document() -> impl Strategy<Value = Vec<u8>> {
    let attribute = || {
        option::weighted(
            0.85,
            prop_oneof![8 => text_up_to(1_000).prop_map(Value::String), 1 => json_value()],
        )
    };
    (
        option::weighted(
            0.9,
            prop_oneof![
                8 => Just(Value::from("1.0")),
                1 => Just(Value::from("0.3")),
                1 => json_leaf(),
            ],
        ),
        attribute(),
        attribute(),
        attribute(),
        option::of(prop_oneof![rfc3339().prop_map(Value::String), json_leaf()]),
        option::of(json_value()),
        option::weighted(
            0.2,
            prop_oneof![short_text().prop_map(Value::String), json_leaf()],
        ),
        vec(
            (
                prop_oneof![3 => extension_name(), 1 => short_text()],
                json_value(),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(specversion, id, source, ty, time, data, data_base64, extensions)| {
                let mut object = Map::new();
                for (name, value) in [
                    ("specversion", specversion),
                    ("id", id),
                    ("source", source),
                    ("type", ty),
                    ("time", time),
                    ("data", data),
                    ("data_base64", data_base64),
                ] {
                    if let Some(value) = value {
                        object.insert(name.into(), value);
                    }
                }
                for (name, value) in extensions {
                    object.insert(name, value);
                }
                serde_json::to_vec(&Value::Object(object)).expect("serializable")
            },
        )
}

/// A payload, leaning towards what `bridge` reads (S3 documents, JSON with a `kind`).
fn payload_for(bridge: &Bridge) -> BoxedStrategy<Vec<u8>> {
    let json = || json_with_kind_and_time().prop_map(|value| value.to_string().into_bytes());
    match bridge.spec.format {
        PayloadFormat::S3Notification => prop_oneof![
            2 => s3_document().prop_map(|value| value.to_string().into_bytes()),
            1 => payload(),
        ]
        .boxed(),
        _ if bridge
            .spec
            .event_type
            .as_deref()
            .is_some_and(|t| t.contains("{json:"))
            || bridge.spec.time_field.is_some() =>
        {
            prop_oneof![2 => json(), 1 => payload()].boxed()
        }
        _ => payload(),
    }
}

fn payload() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..256),
        2 => json_value().prop_map(|value| value.to_string().into_bytes()),
        2 => json_with_kind_and_time().prop_map(|value| value.to_string().into_bytes()),
        // JSON with whitespace around it.
        1 => json_value().prop_map(|value| format!(" \n{value}\t ").into_bytes()),
        2 => structured_document(),
        1 => valid_event().prop_map(|event| event.to_structured_json()),
        2 => s3_document().prop_map(|value| value.to_string().into_bytes()),
        1 => (any::<u8>(), 0..70_000usize).prop_map(|(byte, len)| vec![byte; len]),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// S3 notification documents.

/// Form-encodes a key the way S3 puts it in a notification.
fn form_encode(key: &str) -> String {
    let mut out = String::new();
    for byte in key.bytes() {
        match byte {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A member: a string; unless `well_formed`, sometimes another JSON value or missing.
fn s3_member(
    well_formed: bool,
    strings: impl Strategy<Value = String> + 'static,
) -> BoxedStrategy<Option<Value>> {
    let strings = strings.prop_map(Value::String);
    if well_formed {
        return strings.prop_map(Some).boxed();
    }
    option::weighted(0.95, prop_oneof![12 => strings, 1 => json_leaf()]).boxed()
}

/// A `Records[]` entry; a `well_formed` one has every member the parser requires, of
/// the right type (but any content).
fn s3_record(well_formed: bool) -> impl Strategy<Value = Value> {
    let s3_member = move |strings| s3_member(well_formed, strings);
    (
        s3_member(
            prop_oneof![
                select(&["ObjectCreated:Put", "s3:ObjectRemoved:Delete"][..])
                    .prop_map(str::to_owned),
                text_up_to(300),
            ]
            .boxed(),
        ),
        if well_formed {
            option::of(rfc3339().prop_map(Value::String)).boxed()
        } else {
            s3_member(prop_oneof![4 => rfc3339(), 1 => short_text()].boxed())
        },
        s3_member(text_up_to(300)),
        s3_member(if well_formed {
            text_up_to(1_000).prop_map(|key| form_encode(&key)).boxed()
        } else {
            prop_oneof![
                3 => text_up_to(1_000).prop_map(|key| form_encode(&key)),
                1 => text_up_to(1_000),
            ]
            .boxed()
        }),
        option::of(prop_oneof![any::<i64>().prop_map(Value::from), json_leaf()]),
        s3_member(short_text().boxed()),
        s3_member(short_text().boxed()),
        s3_member(short_text().boxed()),
        s3_member(text_up_to(300)),
        if well_formed {
            Just(None).boxed()
        } else {
            option::weighted(0.05, json_value()).boxed()
        },
    )
        .prop_map(
            |(event_name, time, bucket, key, size, etag, version, content_type, sequencer, s3)| {
                let mut object = Map::new();
                for (name, value) in [
                    ("key", key),
                    ("size", size),
                    ("eTag", etag),
                    ("versionId", version),
                    ("contentType", content_type),
                    ("sequencer", sequencer),
                ] {
                    if let Some(value) = value {
                        object.insert(name.into(), value);
                    }
                }
                let mut bucket_object = Map::new();
                if let Some(bucket) = bucket {
                    bucket_object.insert("name".into(), bucket);
                }
                let s3 = s3.unwrap_or_else(|| {
                    json!({"bucket": Value::Object(bucket_object), "object": Value::Object(object)})
                });
                let mut record = Map::new();
                record.insert("s3".into(), s3);
                if let Some(event_name) = event_name {
                    record.insert("eventName".into(), event_name);
                }
                if let Some(time) = time {
                    record.insert("eventTime".into(), time);
                }
                Value::Object(record)
            },
        )
}

fn s3_document() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => vec(s3_record(true), 1..4).prop_map(|records| json!({"Records": records})),
        4 => vec(s3_record(false), 0..4).prop_map(|records| json!({"Records": records})),
        1 => Just(json!({"Event": "s3:TestEvent"})),
        1 => json_value().prop_map(|records| json!({"Records": records})),
        1 => json_value(),
    ]
}

// ---------------------------------------------------------------------------------------
// Valid CloudEvents.

fn extension_name() -> impl Strategy<Value = String> {
    const RESERVED: &[&str] = &[
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "dataschema",
        "subject",
        "time",
        "data",
    ];
    "[a-z0-9]{1,20}".prop_filter("not a core attribute", |name| {
        !RESERVED.contains(&name.as_str())
    })
}

fn extension_value() -> impl Strategy<Value = ExtensionValue> {
    prop_oneof![
        4 => text_up_to(2_000).prop_map(ExtensionValue::String),
        1 => any::<i64>().prop_map(|n| ExtensionValue::Json(n.to_string())),
        1 => any::<bool>().prop_map(|b| ExtensionValue::Json(b.to_string())),
        1 => (any::<i32>(), 0u8..100).prop_map(|(whole, cents)| ExtensionValue::Json(format!("{whole}.{cents:02}"))),
    ]
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        Just(Data::None),
        json_value().prop_map(|value| Data::Json(Bytes::from(value.to_string()))),
        vec(any::<u8>(), 0..512).prop_map(|bytes| Data::Binary(Bytes::from(bytes))),
    ]
}

fn valid_event() -> impl Strategy<Value = CloudEvent> {
    (
        nonempty_text(),
        nonempty_text(),
        nonempty_text(),
        option::of(prop_oneof![content_type(), short_text()]),
        option::of(text_up_to(600)),
        option::of(text_up_to(600)),
        option::of(rfc3339()),
        btree_map(extension_name(), extension_value(), 0..4),
        data(),
    )
        .prop_map(
            |(id, source, ty, datacontenttype, dataschema, subject, time, extensions, data)| {
                CloudEvent {
                    id,
                    source,
                    ty,
                    datacontenttype,
                    dataschema,
                    subject,
                    time_utc: time.as_deref().and_then(cloudevent::parse_time),
                    time,
                    extensions,
                    data,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------
// AMQP header tables.

fn amqp_name() -> impl Strategy<Value = ShortString> {
    text_up_to(300).prop_map(|mut name| {
        // Header names on the wire are short strings: cut to 255 bytes.
        let mut end = name.len().min(MAX_SHORT_STRING);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        ShortString::try_new(name).expect("at most 255 bytes")
    })
}

fn amqp_leaf() -> BoxedStrategy<AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        amqp_name().prop_map(AMQPValue::ShortString),
        prop_oneof![
            4 => vec(any::<u8>(), 0..64),
            1 => (any::<u8>(), 0..70_000usize).prop_map(|(byte, len)| vec![byte; len]),
        ]
        .prop_map(|bytes| AMQPValue::LongString(LongString::from(bytes))),
        text_up_to(300).prop_map(|text| AMQPValue::LongString(LongString::from(text))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..64).prop_map(|bytes| AMQPValue::ByteArray(ByteArray::from(bytes))),
        Just(AMQPValue::Void),
    ]
    .boxed()
}

fn amqp_table(entries: Vec<(ShortString, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(name, value);
    }
    table
}

/// Bushy trees: random nesting of tables and arrays.
fn amqp_tree() -> BoxedStrategy<AMQPValue> {
    amqp_leaf()
        .prop_recursive(24, 256, 5, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5)
                    .prop_map(|items| AMQPValue::FieldArray(FieldArray::from(items))),
                vec((amqp_name(), inner), 0..5)
                    .prop_map(|entries| AMQPValue::FieldTable(amqp_table(entries))),
            ]
        })
        .boxed()
}

/// Deep chains: a value wrapped in up to 120 tables and arrays, with a sibling here and
/// there.
fn amqp_chain() -> impl Strategy<Value = AMQPValue> {
    (
        amqp_leaf(),
        vec(
            (
                any::<bool>(),
                amqp_name(),
                option::weighted(0.1, amqp_leaf()),
            ),
            0..=120,
        ),
    )
        .prop_map(|(leaf, layers)| {
            layers
                .into_iter()
                .fold(leaf, |inner, (as_table, name, sibling)| {
                    if as_table {
                        let mut table = FieldTable::default();
                        table.insert(name, inner);
                        if let Some(sibling) = sibling {
                            table.insert(ShortString::try_new("sibling").unwrap(), sibling);
                        }
                        AMQPValue::FieldTable(table)
                    } else {
                        let mut items = vec![inner];
                        items.extend(sibling);
                        AMQPValue::FieldArray(FieldArray::from(items))
                    }
                })
        })
}

fn amqp_headers() -> impl Strategy<Value = FieldTable> {
    vec(
        (
            amqp_name(),
            prop_oneof![3 => amqp_leaf(), 2 => amqp_tree(), 2 => amqp_chain().boxed()],
        ),
        0..6,
    )
    .prop_map(amqp_table)
}

// ---------------------------------------------------------------------------------------
// Checks.

const REASON_LABELS: [&str; 7] = [
    "too_large",
    "too_long",
    "invalid_json",
    "unresolved_template",
    "invalid_tenant",
    "invalid_cloudevent",
    "invalid_notification",
];

/// `event.<tenant>.<source>.<type>`: at most 255 bytes, four non-empty words of
/// `[A-Za-z0-9_-]` (`~` too in the escaped type word).
fn check_routing_key(key: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        key.len() <= routing::MAX_ROUTING_KEY_BYTES,
        "routing key of {} bytes",
        key.len()
    );
    let words: Vec<&str> = key.split('.').collect();
    prop_assert_eq!(words.len(), 4, "routing key `{}`", key);
    prop_assert_eq!(words[0], "event");
    for (index, word) in words.iter().enumerate() {
        prop_assert!(
            !word.is_empty()
                && word.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (index == 3 && b == b'~')
                }),
            "word `{}` of routing key `{}`",
            word,
            key
        );
    }
    Ok(())
}

/// JSON data compares without the whitespace around it, which a JSON parser (ours and
/// every consumer's) does not keep.
fn comparable(mut event: CloudEvent) -> CloudEvent {
    if let Data::Json(raw) = &event.data {
        let text = raw.as_ref();
        let start = text
            .iter()
            .position(|b| !b" \t\r\n".contains(b))
            .unwrap_or(text.len());
        let end = text
            .iter()
            .rposition(|b| !b" \t\r\n".contains(b))
            .map_or(start, |i| i + 1);
        event.data = Data::Json(raw.slice(start..end));
    }
    event
}

/// What a consumer of the exchange decodes from a published event: the structured
/// document gives the same event back, and so do the binary-mode headers and body.
fn check_decodes(event: &CloudEvent) -> Result<(), TestCaseError> {
    let structured = Bytes::from(event.to_structured_json());
    let back = cloudevent::parse_structured(&structured);
    prop_assert!(
        back.is_ok(),
        "structured document does not decode: {:?}\n{}",
        back,
        String::from_utf8_lossy(&structured)
    );
    prop_assert_eq!(comparable(back.unwrap()), comparable(event.clone()));
    for prefix in BINARY_HEADER_PREFIXES {
        let headers: Vec<(String, String)> = event
            .binary_attributes()
            .into_iter()
            .map(|(name, value)| (format!("{prefix}{name}"), value.to_owned()))
            .collect();
        let body = event.binary_body();
        let back = cloudevent::parse_binary(&headers, event.datacontenttype.as_deref(), &body);
        let back = match back {
            Ok(Some(back)) => back,
            other => {
                return Err(TestCaseError::fail(format!(
                    "binary mode ({prefix}) does not decode: {other:?}"
                )));
            }
        };
        prop_assert_eq!(&back.id, &event.id);
        prop_assert_eq!(&back.source, &event.source);
        prop_assert_eq!(&back.ty, &event.ty);
        prop_assert_eq!(&back.datacontenttype, &event.datacontenttype);
        prop_assert_eq!(&back.dataschema, &event.dataschema);
        prop_assert_eq!(&back.subject, &event.subject);
        prop_assert_eq!(&back.time, &event.time);
        prop_assert_eq!(back.time_utc, event.time_utc);
        // Header values are text: a JSON extension comes back as its text.
        let texts = |event: &CloudEvent| -> BTreeMap<String, String> {
            event
                .extensions
                .iter()
                .map(|(name, value)| (name.clone(), value.as_text().to_owned()))
                .collect()
        };
        prop_assert_eq!(texts(&back), texts(event));
        prop_assert_eq!(back.binary_body(), body, "the body, byte for byte");
    }
    Ok(())
}

/// What normalization promises for one published event.
fn check_published(out: &Normalized) -> Result<(), TestCaseError> {
    let event = &out.event;
    let fits = short_string::check_event(event);
    prop_assert!(fits.is_ok(), "{:?}", fits);
    prop_assert!(event.id.len() <= MAX_SHORT_STRING);
    if let Some(content_type) = &event.datacontenttype {
        prop_assert!(content_type.len() <= MAX_SHORT_STRING);
    }
    for name in event.extensions.keys() {
        prop_assert!(
            name.len() + "ce-".len() <= MAX_SHORT_STRING,
            "extension `{}`",
            name
        );
    }
    prop_assert!(event.validate().is_ok(), "{:?}", event.validate());
    check_routing_key(&out.routing_key)?;
    // The tenant word is the tenant itself, valid as it stands (never rewritten), and
    // the type word decodes back to the type.
    let tenant = event.extensions.get("tenant");
    prop_assert!(tenant.is_some(), "no tenant extension");
    let tenant = tenant.unwrap().as_text();
    prop_assert!(routing::check_tenant(tenant).is_ok(), "tenant `{}`", tenant);
    prop_assert_eq!(out.routing_key.split('.').nth(1), Some(tenant));
    let type_word = out.routing_key.split('.').nth(3).unwrap_or_default();
    prop_assert_eq!(routing::type_from_word(type_word), Some(event.ty.clone()));
    check_decodes(event)
}

/// Normalizes one message on `bridge` and checks every promise of normalization.
fn check_normalize(bridge: &Bridge, meta: &Metadata, payload: &Bytes) -> Result<(), TestCaseError> {
    let first = normalize_message(&bridge.mapping, meta, payload);
    match &first {
        Ok(events) => {
            for out in events {
                check_published(out)?;
            }
        }
        Err(reject) => prop_assert!(
            REASON_LABELS.contains(&reject.reason.label()),
            "unknown reason {:?}",
            reject.reason
        ),
    }
    if payload.len() > bridge.spec.max_message_bytes {
        prop_assert_eq!(
            first.as_ref().err().map(|r| r.reason),
            Some(RejectReason::TooLarge)
        );
        return Ok(());
    }

    // Deterministic: the same message gives the same events (ids included, unless
    // there is no transport id and the event is not a CloudEvent already: a UUID then).
    let again = normalize_message(&bridge.mapping, meta, payload);
    let without_uuids = |result: &Result<Vec<Normalized>, _>| {
        result.clone().map(|events: Vec<Normalized>| {
            events
                .into_iter()
                .map(|mut out| {
                    if meta.id.is_none() && uuid_like(&out.event.id) {
                        out.event.id.clear();
                    }
                    out
                })
                .collect::<Vec<_>>()
        })
    };
    prop_assert_eq!(without_uuids(&first), without_uuids(&again));

    // Where each id comes from.
    if bridge.spec.format == PayloadFormat::S3Notification {
        let records = s3notification::parse(payload);
        match (&first, &records) {
            (Ok(events), Ok(records)) => {
                prop_assert_eq!(events.len(), records.len());
                for (out, record) in events.iter().zip(records) {
                    prop_assert!(!record.id.is_empty());
                    prop_assert_eq!(&out.event.id, &short_string::fitting_id(&record.id));
                }
            }
            (Ok(_), Err(e)) => {
                prop_assert!(false, "events from a document that does not parse: {}", e)
            }
            (Err(_), _) => {}
        }
        return Ok(());
    }
    let content_type = meta
        .content_type
        .as_deref()
        .or(bridge.spec.content_type.as_deref());
    let inbound = if content_type.is_some_and(is_structured_content_type) {
        Some(cloudevent::parse_structured(payload))
    } else {
        cloudevent::parse_binary(&meta.headers, content_type, payload).transpose()
    };
    match (&first, inbound) {
        (Ok(events), Some(inbound)) => {
            prop_assert!(inbound.is_ok(), "published an invalid inbound CloudEvent");
            let inbound = inbound.unwrap();
            prop_assert_eq!(
                &events[0].event.id,
                &inbound.id,
                "a passed-through id is kept"
            );
            prop_assert_eq!(&events[0].event.ty, &inbound.ty);
        }
        (Ok(events), None) => {
            let event = &events[0].event;
            if let Some(id) = &meta.id {
                prop_assert_eq!(&event.id, &short_string::fitting_id(id));
                let kept = event.extensions.get(ORIGINAL_ID_EXTENSION);
                if id.len() > MAX_SHORT_STRING && id.len() <= MAX_ORIGINAL_ID_BYTES {
                    prop_assert_eq!(kept, Some(&ExtensionValue::String(id.clone())));
                } else if !meta
                    .extensions
                    .iter()
                    .any(|(name, _)| name == ORIGINAL_ID_EXTENSION)
                {
                    prop_assert_eq!(kept, None);
                }
            }
            if !meta.no_data
                && content_type.is_some_and(is_json_content_type)
                && bridge.spec.format != PayloadFormat::Raw
            {
                prop_assert!(
                    matches!(event.data, Data::Json(_)),
                    "JSON under a JSON content type"
                );
            }
        }
        // An inbound CloudEvent that does not parse is rejected (checked above).
        (Err(_), _) => {}
    }
    Ok(())
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.bytes().filter(|b| *b == b'-').count() == 4
}

// ---------------------------------------------------------------------------------------
// 1. Normalization.

proptest! {
    #![proptest_config(config(1024))]

    /// Any message on any bridge: never a panic; a published event fits every short
    /// string, has a valid routing key, decodes back, and has a deterministic id; a
    /// rejection has a known reason.
    #[test]
    fn normalize_any_message(
        (bridge, meta, payload) in (0..BRIDGES.len())
            .prop_flat_map(|bridge| (Just(bridge), metadata(), payload_for(&BRIDGES[bridge]))),
    ) {
        check_normalize(&BRIDGES[bridge], &meta, &Bytes::from(payload))?;
    }
}

// ---------------------------------------------------------------------------------------
// 2. Templates.

/// A template built from its grammar, so it always parses.
fn template_text() -> impl Strategy<Value = String> {
    let literal = text_up_to(300).prop_map(|text| text.replace(['{', '}'], ""));
    let part = prop_oneof![
        3 => literal,
        1 => Just("{subject}".to_owned()),
        1 => (0usize..6).prop_map(|n| format!("{{subject[{n}]}}")),
        1 => Just(format!("{{subject[{}]}}", usize::MAX)),
        1 => short_text().prop_filter_map("a header name", |name| {
            let name = name.replace(['{', '}'], "");
            (!name.is_empty()).then(|| format!("{{header:{name}}}"))
        }),
        1 => select(&["X-Tenant", "x-event", "ce-id"][..]).prop_map(|name| format!("{{header:{name}}}")),
        1 => vec(prop_oneof![json_key(), Just("0".to_owned()), Just("~1".to_owned()), Just("~".to_owned())], 0..4)
            .prop_map(|tokens| {
                let pointer: String = tokens.iter().map(|t| format!("/{}", t.replace(['{', '}'], ""))).collect();
                format!("{{json:{pointer}}}")
            }),
    ];
    vec(part, 0..6).prop_map(|parts| parts.concat())
}

type TemplateInputs = (
    Option<String>,
    Option<char>,
    Vec<(String, String)>,
    Option<Value>,
);

fn template_input() -> impl Strategy<Value = TemplateInputs> {
    (
        option::weighted(0.9, subject()),
        select(&[Some('.'), Some('/'), None][..]),
        headers(),
        option::weighted(
            0.7,
            prop_oneof![json_value(), json_with_kind_and_time().boxed()],
        ),
    )
}

proptest! {
    #![proptest_config(config(1024))]

    /// Parsing any text never panics; a parsed template keeps its text.
    #[test]
    fn template_parse_any_text(text in prop_oneof![text(), template_text().boxed()]) {
        if let Ok(template) = Template::parse(&text) {
            prop_assert_eq!(template.as_str(), text.as_str());
            prop_assert_eq!(template.to_string(), text);
        }
    }

    /// Templates made of the documented placeholders parse, and resolving them against
    /// anything never panics: a value is never empty and its routing word is at least as
    /// long as that of the template's literal text (what `check` relies on to refuse keys
    /// that are always too long).
    #[test]
    fn template_resolve_any_input(
        text in template_text(),
        (subject, separator, headers, json) in template_input(),
    ) {
        let template = Template::parse(&text);
        prop_assert!(template.is_ok(), "{:?}", template);
        let template = template.unwrap();
        let input = TemplateInput { subject: subject.as_deref(), separator, headers: &headers, json: json.as_ref() };
        if let Ok(value) = template.resolve(&input) {
            prop_assert!(!value.is_empty());
            let literal = template.literal_text();
            prop_assert!(value.len() >= literal.len());
            prop_assert!(routing::type_word(&value).len() >= routing::type_word(&literal).len());
        }
        if !text.is_empty() && !text.contains(['{', '}']) {
            prop_assert_eq!(template.resolve(&input), Ok(text.clone()));
        }
        prop_assert_eq!(Template::fixed(&text).resolve(&input), Ok(text));
    }

    /// Arbitrary text as a template, resolved against arbitrary input.
    #[test]
    fn template_any_text_resolves_without_panic(
        text in text(),
        (subject, separator, headers, json) in template_input(),
    ) {
        if let Ok(template) = Template::parse(&text) {
            let input = TemplateInput { subject: subject.as_deref(), separator, headers: &headers, json: json.as_ref() };
            let _ = template.resolve(&input);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2b. Routing words: distinct values never share a word.

/// Text from a few characters that the old routing words merged (`.`, `_`, ` `, `~`,
/// `*`), so distinct values that look alike are common; or any text.
fn lookalike_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => vec(select(&['a', 'B', '0', '-', '.', '_', ' ', '~', '*', '#', 'é'][..]), 0..6)
            .prop_map(String::from_iter),
        1 => text_up_to(300),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(2048))]

    /// Type words: distinct types give distinct words, each decodes back to its type, and
    /// a word is one topic-exchange word (no `.`, `*` or `#`).
    #[test]
    fn type_words_are_distinct_and_decode_back(a in lookalike_text(), b in lookalike_text()) {
        let (word_a, word_b) = (routing::type_word(&a), routing::type_word(&b));
        prop_assert_eq!(routing::type_from_word(&word_a), Some(a.clone()));
        prop_assert_eq!(a == b, word_a == word_b, "`{}` and `{}`", a, b);
        prop_assert!(
            word_a.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-~".contains(&c)),
            "word `{}`",
            word_a
        );
    }

    /// Any text read as a type word decodes to nothing, or to the one type whose word it is.
    #[test]
    fn any_type_word_decodes_to_at_most_one_type(word in prop_oneof![
        vec(select(&['a', 'F', '0', '-', '_', '~', '2', 'E', '.'][..]), 0..8).prop_map(String::from_iter),
        text_up_to(300),
    ]) {
        if let Some(event_type) = routing::type_from_word(&word) {
            prop_assert_eq!(routing::type_word(&event_type), word);
        }
    }

    /// Tenants are used as they stand or refused: two tenants that both route have the
    /// same key only when they are the same tenant, and the key's word is the tenant.
    #[test]
    fn tenant_words_never_collide(a in lookalike_text(), b in lookalike_text()) {
        let key = |tenant: &str| routing::event_key(tenant, "src", "t");
        if let (Ok(key_a), Ok(key_b)) = (key(&a), key(&b)) {
            prop_assert_eq!(a == b, key_a == key_b, "`{}` and `{}`", a, b);
        }
        if let Ok(key_a) = key(&a) {
            prop_assert_eq!(key_a.split('.').nth(1), Some(a.as_str()));
        } else {
            prop_assert_eq!(routing::deadletter_key(Some(&a), "src"), "deadletter._.src");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. S3 notifications.

proptest! {
    #![proptest_config(config(1024))]

    /// Any bytes: an error or records, never a panic.
    #[test]
    fn s3_notification_any_bytes(bytes in vec(any::<u8>(), 0..1_024)) {
        let _ = s3notification::parse(&bytes);
    }

    /// Documents shaped like notifications: one record per `Records[]` entry, each with
    /// a non-empty id `<bucket>/<key>@<sequencer>` of the decoded key.
    #[test]
    fn s3_notification_any_document(document in s3_document()) {
        let bytes = document.to_string().into_bytes();
        if let Ok(records) = s3notification::parse(&bytes) {
            let entries = document.get("Records").and_then(Value::as_array).map_or(0, Vec::len);
            prop_assert_eq!(records.len(), entries);
            for (record, entry) in records.iter().zip(document["Records"].as_array().into_iter().flatten()) {
                prop_assert!(!record.id.is_empty());
                let raw_key = entry.pointer("/s3/object/key").and_then(Value::as_str).unwrap();
                prop_assert_eq!(Some(record.data.key.clone()), s3notification::url_decode(raw_key));
                let prefix = format!("{}/{}@", record.data.bucket, record.data.key);
                prop_assert!(record.id.starts_with(&prefix), "id `{}`", record.id);
                prop_assert!(serde_json::to_vec(&record.data).is_ok());
            }
        }
    }

    /// Keys survive the form encoding of notifications.
    #[test]
    fn s3_keys_decode_to_what_was_encoded(key in text_up_to(2_000)) {
        prop_assert_eq!(s3notification::url_decode(&form_encode(&key)), Some(key));
    }
}

// ---------------------------------------------------------------------------------------
// 4. CloudEvent encodings.

proptest! {
    #![proptest_config(config(1024))]

    /// A valid event encodes to a structured document and binary headers that decode to
    /// the same event (binary: extensions come back as text, and the body byte for byte;
    /// whether it is then JSON or bytes follows the content type).
    #[test]
    fn cloudevent_round_trips(event in valid_event()) {
        prop_assert!(event.validate().is_ok(), "generator: {:?}", event.validate());
        let structured = Bytes::from(event.to_structured_json());
        prop_assert_eq!(cloudevent::parse_structured(&structured), Ok(event.clone()), "exactly");
        check_decodes(&event)?;
    }

    /// Parsing anything never panics; what parses re-encodes to a document that parses
    /// to the same event.
    #[test]
    fn cloudevent_parse_any_document(document in prop_oneof![
        structured_document().boxed(),
        vec(any::<u8>(), 0..512).boxed(),
    ]) {
        if let Ok(event) = cloudevent::parse_structured(&Bytes::from(document)) {
            let again = cloudevent::parse_structured(&Bytes::from(event.to_structured_json()));
            prop_assert_eq!(again.map(comparable), Ok(comparable(event)));
        }
    }

    /// Binary-mode parsing of any headers never panics.
    #[test]
    fn cloudevent_parse_any_headers(
        headers in headers(),
        content_type in option::of(content_type()),
        payload in vec(any::<u8>(), 0..256),
    ) {
        if let Ok(Some(event)) = cloudevent::parse_binary(&headers, content_type.as_deref(), &Bytes::from(payload)) {
            prop_assert!(event.validate().is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. AMQP headers.

proptest! {
    #![proptest_config(config(256))]

    /// Header tables of any shape, up to 120 levels deep: never a panic; each header
    /// appears at most once, under its own name.
    #[test]
    fn amqp_headers_of_any_table(table in amqp_headers()) {
        let properties = BasicProperties::default().with_headers(table.clone());
        let headers = broker_bridge::sources::amqp::headers_of(&properties);
        prop_assert!(headers.len() <= table.inner().len());
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &headers {
            prop_assert!(table.contains_key(name), "`{}` is not a header of the table", name);
            prop_assert!(seen.insert(name.clone()), "`{}` twice", name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Regression cases: inputs the properties found, kept as plain tests.

fn bridge(name: &str) -> &'static Bridge {
    BRIDGES
        .iter()
        .find(|bridge| bridge.spec.name == name)
        .expect("a test bridge")
}

fn message(time: Option<DateTime<Utc>>) -> Metadata {
    Metadata {
        subject: Some("in.orders".into()),
        time,
        id: Some("orders:1".into()),
        source_uri: "nats://127.0.0.1:4222/in.orders".into(),
        received: Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap(),
        ..Metadata::default()
    }
}

/// The published event's `time` is RFC 3339 (years 0000-9999), so the event decodes
/// (ours refuses it otherwise, and so does every CloudEvents consumer).
fn assert_publishes_a_decodable_time(bridge: &Bridge, meta: &Metadata, payload: &[u8]) {
    let events = normalize_message(&bridge.mapping, meta, &Bytes::copy_from_slice(payload))
        .expect("published");
    let event = &events[0].event;
    let structured = Bytes::from(event.to_structured_json());
    assert!(
        cloudevent::parse_structured(&structured).is_ok(),
        "time {:?} does not decode: {}",
        event.time,
        String::from_utf8_lossy(&structured)
    );
}

/// Found by `normalize_any_message`: a transport time before year 0 (a Kafka timestamp
/// is whatever the producer wrote) is written as `-0001-12-31T23:59:59.999Z`.
#[test]
fn a_transport_time_before_year_0_gives_a_decodable_event() {
    let before_year_0 = Utc.timestamp_millis_opt(-62_167_219_200_001).single();
    assert!(before_year_0.is_some());
    assert_publishes_a_decodable_time(bridge("plain"), &message(before_year_0), b"{}");
}

/// The same past year 9999: an AMQP `timestamp` of 300,000,000,000,000 is read as
/// milliseconds (year 11476).
#[test]
fn a_transport_time_after_year_9999_gives_a_decodable_event() {
    let after_year_9999 = Utc.timestamp_millis_opt(300_000_000_000_000).single();
    assert!(after_year_9999.is_some());
    assert_publishes_a_decodable_time(bridge("plain"), &message(after_year_9999), b"{}");
}

/// The same through `time_field`: `"ts": 300000000000000` (milliseconds, year 11476)
/// and `"ts": -100000000000` (seconds, year -1199).
#[test]
fn a_time_field_outside_years_0_to_9999_gives_a_decodable_event() {
    for payload in [
        br#"{"kind":"k","ts":300000000000000}"#.as_slice(),
        br#"{"kind":"k","ts":-100000000000}"#,
    ] {
        assert_publishes_a_decodable_time(bridge("auto-json-time"), &message(None), payload);
    }
}
