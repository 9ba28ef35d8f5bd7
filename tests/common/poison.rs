//! The poison corpus (issue 13): hostile input sent through the real brokers, for every
//! kind as far as its transport can carry it. Each item must be published or
//! dead-lettered with its named reason (a webhook may refuse an oversized body with
//! 413), and the bridge must go on: the next good message is delivered, nothing stays
//! unacknowledged, nothing restarts or panics, and `/readyz` stays ready.
//!
//! A kind says what it can carry in `SourceUnderTest::carries` and sends an item with
//! `SourceUnderTest::send_poison`; an item it cannot carry is skipped, and the skip is
//! printed with its reason, never passed silently.

use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions};
use lapin::types::FieldTable;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conformance::{SourceUnderTest, bridge_table};
use super::{Daemon, Rabbit, Received, config_text, http_get, unique};

/// `max_message_bytes` of the corpus bridge.
pub const MAX_MESSAGE_BYTES: usize = 200_000;
/// `[exchange] max_message_size` of the corpus daemon: a binary body of
/// `MAX_MESSAGE_BYTES` is accepted by the bridge, but its structured event (base64, a
/// third larger) is over this.
pub const EXCHANGE_MAX_MESSAGE_SIZE: usize = 262_144;
/// `[defaults] deadletter_sample_bytes` of the corpus daemon.
pub const DEADLETTER_SAMPLE_BYTES: usize = 4096;
/// The header whose value becomes the event type (`type = "com.acme.{header:...}"`)
/// on kinds that carry headers.
pub const TYPE_HEADER: &str = "x-poison-type";
/// The type of every event on kinds without headers: made of the characters that are
/// special in topic-exchange routing keys, so each of their events shows that they are
/// sanitised.
pub const FIXED_TYPE: &str = "com.acme.#.*.with spaces";

/// What a kind's transport can carry of the corpus. The default: a payload only.
#[derive(Debug, Clone, Default)]
pub struct Carries {
    /// The longest transport id the kind makes the event id from (`Nats-Msg-Id`, a
    /// webhook's `id_header`, an S3 key); 0 when the kind makes its ids itself.
    pub max_id: usize,
    /// Headers (`{header:NAME}` reads them).
    pub headers: bool,
    /// The longest header name the transport carries.
    pub max_header_name: usize,
    /// Header values that are not UTF-8.
    pub binary_header_values: bool,
    /// Header values with NUL and other control bytes.
    pub control_header_values: bool,
    /// Transport ids that are not UTF-8 (`Nats-Msg-Id`, an AMQP `message_id`, a
    /// webhook's `id_header`).
    pub binary_ids: bool,
    /// The longest content type of the message itself (it becomes `datacontenttype`);
    /// 0 when messages have none.
    pub max_content_type: usize,
    /// The content type is metadata of the object the event describes (S3): it goes
    /// into `data`, not `datacontenttype`.
    pub content_type_is_object_metadata: bool,
    /// Nested AMQP field tables in headers.
    pub nested_tables: bool,
    /// The event describes an object instead of carrying the bytes sent (S3): the
    /// bytes are the object's body, and `max_message_bytes` applies to the description.
    pub describes_objects: bool,
}

/// One corpus message. Only what the kind's `Carries` allows is set.
#[derive(Clone, Default)]
pub struct PoisonMessage {
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    /// The transport id (`Nats-Msg-Id`, the webhook `id_header`, an S3 key).
    pub id: Option<String>,
    /// A transport id that is not UTF-8.
    pub binary_id: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// AMQP: a header `x-deep` holding field tables nested this deep.
    pub nested_depth: Option<usize>,
}

impl PoisonMessage {
    /// The headers as text, for kinds whose clients take text (UTF-8 is checked by the
    /// corpus through `Carries::binary_header_values`).
    pub fn text_headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(name, value)| {
                let value = std::str::from_utf8(value).expect("a text header value");
                (name.as_str(), value)
            })
            .collect()
    }
}

/// What sending a corpus message gave.
#[derive(Debug, Default)]
pub struct Sent {
    /// A webhook's HTTP status and reply body.
    pub answer: Option<(u16, String)>,
    /// The transport id as the kind derives it, when that is not `PoisonMessage::id`
    /// itself (S3: `<bucket>/<key>@<etag>`).
    pub transport_id: Option<String>,
    /// The event's subject, when the kind's is not the same for every message (S3: the
    /// key).
    pub subject: Option<String>,
}

/// What must become of a corpus item.
enum Expect {
    /// Published as an event of this type. `passed_through`: a CloudEvent keeping its
    /// own id.
    Published {
        ty: String,
        passed_through: Option<String>,
    },
    /// Dead-lettered with this `x-bridge-reason`; `truncated`: as the bounded envelope
    /// of a message too large to publish whole.
    DeadLettered {
        reason: &'static str,
        truncated: bool,
    },
    /// Refused to the sender with this HTTP status, nothing published (webhook 413).
    Refused(u16),
    /// Published, or dead-lettered with a named reason other than `internal_error`:
    /// for input whose treatment the code does not define (an id that is not text).
    Settled,
}

struct Item {
    name: &'static str,
    message: PoisonMessage,
    expect: Expect,
}

/// A JSON object of exactly `size` bytes (at least 12).
fn json_of_size(size: usize) -> Vec<u8> {
    let mut body = b"{\"pad\":\"".to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// A text id of exactly `len` bytes, with a readable start.
fn id_of(len: usize) -> String {
    let mut id = format!("poison-id-{len}-");
    id.push_str(&"i".repeat(len - id.len()));
    id
}

fn structured(ce: &str) -> PoisonMessage {
    PoisonMessage {
        payload: ce.as_bytes().to_vec(),
        content_type: Some("application/cloudevents+json".into()),
        ..Default::default()
    }
}

/// The type of events from messages that do not choose one.
fn plain_type(carries: &Carries) -> String {
    if carries.headers {
        "com.acme.plain".into()
    } else {
        FIXED_TYPE.into()
    }
}

/// The corpus for a kind: the items it runs, and those it skips with the reason.
fn corpus(carries: &Carries, refuses_oversized: bool) -> (Vec<Item>, Vec<(&'static str, String)>) {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let published = || Expect::Published {
        ty: plain_type(carries),
        passed_through: None,
    };
    let dead = |reason| Expect::DeadLettered {
        reason,
        truncated: false,
    };
    let mut add = |name: &'static str, needs: Result<(), String>, message, expect| match needs {
        Ok(()) => items.push(Item {
            name,
            message,
            expect,
        }),
        Err(why) => skipped.push((name, why)),
    };
    let need = |ok: bool, why: &str| if ok { Ok(()) } else { Err(why.to_owned()) };
    let ids = |len: usize| match carries.max_id {
        0 => Err("the kind makes event ids itself: no transport id to send".to_owned()),
        max => need(
            max >= len,
            &format!("the kind's transport ids hold at most {max} bytes"),
        ),
    };
    let headers = || need(carries.headers, "the kind carries no headers");
    let content_type = |len: usize| match carries.max_content_type {
        0 => Err("the kind's messages have no content type".to_owned()),
        max => need(
            max >= len,
            &format!("the kind's content types hold at most {max} bytes"),
        ),
    };
    let payload_is_data = || {
        need(
            !carries.describes_objects,
            "the event describes the object (key, size, metadata), so the bytes sent are not the message whose size max_message_bytes and max_message_size bound",
        )
    };

    // Ids longer than a short string: a digest id, the original kept up to 4 KiB.
    for len in [256, 1000, 65_535] {
        let name = match len {
            256 => "an id of 256 bytes",
            1000 => "an id of 1,000 bytes",
            _ => "an id of 65,535 bytes",
        };
        let message = PoisonMessage {
            payload: format!("{{\"item\":\"id-{len}\"}}").into_bytes(),
            id: Some(id_of(len)),
            ..Default::default()
        };
        add(name, ids(len), message, published());
    }
    add(
        "an id with #, *, . and spaces",
        ids(64),
        PoisonMessage {
            payload: br#"{"item":"odd-id"}"#.to_vec(),
            id: Some("poison/odd #id*.with spaces".into()),
            ..Default::default()
        },
        published(),
    );

    // Found by this corpus and fixed in `vendor/` (see vendor/README.md):
    // - nats, jetstream: async-nats dropped its connection on a header value that is not
    //   UTF-8: core NATS lost the message silently, JetStream redelivered it forever.
    // - amqp: lapin failed to parse a delivery whose `message_id` is not UTF-8, and the
    //   bridge reconnected about ten times a second, forever.
    add(
        "an id that is not UTF-8",
        need(
            carries.binary_ids,
            "the kind carries no transport ids, or only text ones",
        ),
        PoisonMessage {
            payload: br#"{"item":"binary-id"}"#.to_vec(),
            binary_id: Some(b"poison-id-\xff\xfe\xc3\x28".to_vec()),
            ..Default::default()
        },
        Expect::Settled,
    );

    // Headers: long names and values, bytes that are not text.
    add(
        "a header name of 300 bytes",
        headers().and(need(
            carries.max_header_name >= 300,
            &format!(
                "the transport's header names hold at most {} bytes",
                carries.max_header_name
            ),
        )),
        PoisonMessage {
            payload: br#"{"item":"long-header-name"}"#.to_vec(),
            headers: vec![(format!("x-{}", "n".repeat(298)), b"v".to_vec())],
            ..Default::default()
        },
        published(),
    );
    add(
        "a header value of 4,096 bytes",
        headers(),
        PoisonMessage {
            payload: br#"{"item":"long-header-value"}"#.to_vec(),
            headers: vec![("x-long".into(), vec![b'v'; 4096])],
            ..Default::default()
        },
        published(),
    );
    // nats and jetstream: see "an id that is not UTF-8" above.
    add(
        "a header value that is not UTF-8",
        headers().and(need(
            carries.binary_header_values,
            "the transport's header values are UTF-8 text",
        )),
        PoisonMessage {
            payload: br#"{"item":"binary-header"}"#.to_vec(),
            headers: vec![("x-binary".into(), b"\xff\xfe\xc3\x28 not utf-8".to_vec())],
            ..Default::default()
        },
        published(),
    );
    add(
        "a header value with NUL and control bytes",
        headers().and(need(
            carries.control_header_values,
            "the transport's header values cannot hold NUL or control bytes",
        )),
        PoisonMessage {
            payload: br#"{"item":"control-header"}"#.to_vec(),
            headers: vec![(
                "x-control".into(),
                b"a\x00b\x01c\x07d\x1b[31me\x7f".to_vec(),
            )],
            ..Default::default()
        },
        published(),
    );
    add(
        "AMQP header tables nested 100 deep",
        need(carries.nested_tables, "only AMQP headers nest field tables"),
        PoisonMessage {
            payload: br#"{"item":"deep-tables"}"#.to_vec(),
            nested_depth: Some(100),
            ..Default::default()
        },
        published(),
    );

    // Types: type words are escaped; a type that makes the key too long is refused.
    add(
        "a type with #, *, . and spaces (from a header)",
        headers(),
        PoisonMessage {
            payload: br#"{"item":"odd-type"}"#.to_vec(),
            headers: vec![(TYPE_HEADER.into(), b"a#b*c.d e".to_vec())],
            ..Default::default()
        },
        Expect::Published {
            ty: "com.acme.a#b*c.d e".into(),
            passed_through: None,
        },
    );
    add(
        "a type of 300 bytes (from a header)",
        headers(),
        PoisonMessage {
            payload: br#"{"item":"long-type"}"#.to_vec(),
            headers: vec![(TYPE_HEADER.into(), vec![b't'; 300])],
            ..Default::default()
        },
        dead("too_long"),
    );

    // Content types and what they claim.
    if carries.content_type_is_object_metadata {
        add(
            "a content type of 300 bytes (object metadata)",
            Ok(()),
            PoisonMessage {
                payload: b"metadata".to_vec(),
                content_type: Some(format!("application/x-{}", "c".repeat(286))),
                ..Default::default()
            },
            published(),
        );
    } else {
        add(
            "a content type of 300 bytes",
            content_type(300),
            PoisonMessage {
                payload: b"long content type".to_vec(),
                content_type: Some(format!("application/x-{}", "c".repeat(286))),
                ..Default::default()
            },
            dead("too_long"),
        );
    }
    add(
        "invalid JSON under a JSON content type",
        content_type(16),
        PoisonMessage {
            payload: br#"{"unterminated": "#.to_vec(),
            content_type: Some("application/json".into()),
            ..Default::default()
        },
        dead("invalid_json"),
    );
    add(
        "an empty body under a JSON content type",
        content_type(16),
        PoisonMessage {
            content_type: Some("application/json".into()),
            ..Default::default()
        },
        dead("invalid_json"),
    );
    let cloudevents = || content_type(28);
    add(
        "a structured CloudEvent with specversion 0.3",
        cloudevents(),
        structured(r#"{"specversion":"0.3","id":"ce-1","source":"/poison","type":"t"}"#),
        dead("invalid_cloudevent"),
    );
    add(
        "a structured CloudEvent without id",
        cloudevents(),
        structured(r#"{"specversion":"1.0","source":"/poison","type":"t"}"#),
        dead("invalid_cloudevent"),
    );
    add(
        "a structured CloudEvent with an id of 300 bytes",
        cloudevents(),
        structured(&format!(
            r#"{{"specversion":"1.0","id":"{}","source":"/poison","type":"t"}}"#,
            id_of(300)
        )),
        dead("too_long"),
    );
    add(
        "a structured CloudEvent with an extension name of 300 bytes",
        cloudevents(),
        structured(&format!(
            r#"{{"specversion":"1.0","id":"ce-2","source":"/poison","type":"t","{}":"v"}}"#,
            "e".repeat(300)
        )),
        dead("too_long"),
    );
    add(
        "a structured CloudEvent with #, *, . and spaces in its type",
        cloudevents(),
        structured(
            r#"{"specversion":"1.0","id":"ce-odd-type","source":"/poison","type":"com.acme.#.* spaced","data":{"ok":1}}"#,
        ),
        Expect::Published {
            ty: "com.acme.#.* spaced".into(),
            passed_through: Some("ce-odd-type".into()),
        },
    );

    // Bodies.
    add(
        "an empty body",
        Ok(()),
        PoisonMessage::default(),
        published(),
    );
    add(
        "a body of NUL and control bytes",
        Ok(()),
        PoisonMessage {
            payload: b"\x00\x01\x02\x07\x08\t\n\r\x0b\x0c\x1b[31m\x7f\x00end".to_vec(),
            ..Default::default()
        },
        published(),
    );
    add(
        "a body of exactly max_message_bytes",
        payload_is_data(),
        PoisonMessage {
            payload: json_of_size(MAX_MESSAGE_BYTES),
            ..Default::default()
        },
        published(),
    );
    add(
        "a body one byte over max_message_bytes",
        payload_is_data(),
        PoisonMessage {
            payload: json_of_size(MAX_MESSAGE_BYTES + 1),
            ..Default::default()
        },
        if refuses_oversized {
            Expect::Refused(413)
        } else {
            Expect::DeadLettered {
                reason: "too_large",
                truncated: true,
            }
        },
    );
    let mut binary = vec![0u8; MAX_MESSAGE_BYTES];
    for (n, byte) in binary.iter_mut().enumerate() {
        *byte = (n * 7 + 0x80) as u8;
    }
    binary[0] = 0xff; // never JSON, never UTF-8
    add(
        "a message over the exchange's max_message_size once encoded",
        payload_is_data(),
        PoisonMessage {
            payload: binary,
            ..Default::default()
        },
        Expect::DeadLettered {
            reason: "too_large",
            truncated: true,
        },
    );

    if carries.describes_objects {
        // The event carries the object's body inline (base64 for binary), so a large
        // object makes an event over max_message_bytes.
        let mut body = vec![0u8; 160_000];
        for (n, byte) in body.iter_mut().enumerate() {
            *byte = (n * 13 + 0x80) as u8;
        }
        add(
            "an object whose inline description is over max_message_bytes",
            Ok(()),
            PoisonMessage {
                payload: body,
                ..Default::default()
            },
            Expect::DeadLettered {
                reason: "too_large",
                truncated: true,
            },
        );
    }

    // Every message of a kind with headers says its type.
    if carries.headers {
        for item in &mut items {
            if !item.message.headers.iter().any(|(n, _)| n == TYPE_HEADER) {
                item.message
                    .headers
                    .push((TYPE_HEADER.into(), b"plain".to_vec()));
            }
        }
    }
    (items, skipped)
}

/// The routing word of a type.
fn word(text: &str) -> String {
    super::type_word(text)
}

/// The end of the daemon's log, for failure messages.
fn log_tail(daemon: &Daemon) -> String {
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(40);
    lines[start..]
        .iter()
        .map(|line| {
            if line.len() > 600 {
                let mut end = 600;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}… ({} bytes)", &line[..end], line.len())
            } else {
                (*line).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Events and dead letters of one bridge, in the order the exchange routed them.
struct Outcomes {
    consumer: lapin::Consumer,
    _channel: lapin::Channel,
}

impl Outcomes {
    async fn bind(rabbit: &Rabbit, exchange: &str, bridge: &str) -> Outcomes {
        let queue = rabbit
            .bind(exchange, &format!("event.acme.{bridge}.#"))
            .await;
        rabbit
            .channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                format!("deadletter.acme.{bridge}").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let channel = rabbit.connection.create_channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                unique("c").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Outcomes {
            consumer,
            _channel: channel,
        }
    }

    async fn next(&mut self, timeout: Duration) -> Option<Received> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        Some(Received {
            routing_key: delivery.routing_key.to_string(),
            body: delivery.data.clone(),
            properties: delivery.properties.clone(),
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bridge under test and what its kind carries.
#[derive(Clone, Copy)]
struct Target<'a> {
    bridge: &'a str,
    carries: &'a Carries,
}

/// Checks a published event against the item it was made from.
fn check_published(
    name: &str,
    event: &Received,
    message: &PoisonMessage,
    sent: &Sent,
    ty: &str,
    passed_through: Option<&str>,
    target: &Target,
) {
    let Target { bridge, carries } = *target;
    assert_eq!(
        event.routing_key,
        format!("event.acme.{bridge}.{}", word(ty)),
        "{name}: routing key"
    );
    let json = event.json();
    assert_eq!(json["type"], ty, "{name}: type");
    assert_eq!(json["tenant"], "acme", "{name}: tenant");
    let id = json["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        event
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(id.clone()),
        "{name}: message_id is the event id"
    );
    assert!(id.len() <= 255, "{name}: the id fits a short string");
    if let Some(own) = passed_through {
        assert_eq!(id, own, "{name}: a CloudEvent keeps its id");
    } else if let Some(transport) = sent.transport_id.as_ref().or(message.id.as_ref()) {
        if transport.len() <= 255 {
            assert_eq!(&id, transport, "{name}: the transport id is the event id");
            assert!(json.get("originalid").is_none(), "{name}: no originalid");
        } else {
            assert_eq!(
                id,
                format!("sha256:{}", sha256_hex(transport.as_bytes())),
                "{name}: a long transport id becomes its digest"
            );
            if transport.len() <= 4096 {
                assert_eq!(
                    json["originalid"].as_str(),
                    Some(transport.as_str()),
                    "{name}: the original id travels along"
                );
            } else {
                assert!(
                    json.get("originalid").is_none(),
                    "{name}: an original id over 4 KiB is left out"
                );
            }
        }
    }
    if let Some(subject) = &sent.subject {
        assert_eq!(json["subject"].as_str(), Some(subject.as_str()), "{name}");
    }
    if passed_through.is_some() {
        return;
    }
    if carries.describes_objects {
        let data = &json["data"];
        assert_eq!(data["size"], message.payload.len(), "{name}: object size");
        if let Some(key) = &sent.subject {
            assert_eq!(data["key"].as_str(), Some(key.as_str()), "{name}: key");
        }
        // An inline body is the object's bytes: JSON as JSON, text as a string, else
        // base64.
        if let Some(encoded) = data["body_base64"].as_str() {
            let body = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            assert!(body == message.payload, "{name}: inline body_base64");
        } else if let Some(text) = data["body"].as_str() {
            assert_eq!(text.as_bytes(), message.payload, "{name}: inline body");
        }
        if carries.content_type_is_object_metadata
            && let Some(content_type) = &message.content_type
        {
            assert_eq!(
                data["content_type"].as_str(),
                Some(content_type.as_str()),
                "{name}: object content type in data"
            );
        }
        return;
    }
    let claims_json = message
        .content_type
        .as_deref()
        .is_none_or(|ct| ct.contains("json"));
    let is_json = !message.payload.is_empty()
        && serde_json::from_slice::<serde::de::IgnoredAny>(&message.payload).is_ok();
    if claims_json && is_json {
        let needle = [b"\"data\":".as_slice(), &message.payload].concat();
        assert!(
            event
                .body
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "{name}: JSON data is byte-exact"
        );
        assert_eq!(
            json["datacontenttype"].as_str(),
            Some(
                message
                    .content_type
                    .as_deref()
                    .unwrap_or("application/json")
            ),
            "{name}"
        );
    } else {
        let data = base64::engine::general_purpose::STANDARD
            .decode(json["data_base64"].as_str().expect("data_base64"))
            .unwrap();
        assert!(data == message.payload, "{name}: binary data is byte-exact");
        assert_eq!(
            json["datacontenttype"].as_str(),
            Some(
                message
                    .content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream")
            ),
            "{name}"
        );
    }
}

/// Checks a dead letter against the item it was made from.
fn check_dead_letter(
    name: &str,
    letter: &Received,
    message: &PoisonMessage,
    reason: &str,
    truncated: bool,
    target: &Target,
) {
    let Target { bridge, carries } = *target;
    assert_eq!(
        letter.routing_key,
        format!("deadletter.acme.{bridge}"),
        "{name}"
    );
    assert_eq!(
        letter.header("x-bridge-reason").as_deref(),
        Some(reason),
        "{name}: reason (error: {:?})",
        letter.header("x-bridge-error")
    );
    assert_eq!(letter.header("x-bridge-name").as_deref(), Some(bridge));
    let error = letter.header("x-bridge-error").expect("x-bridge-error");
    assert!(
        !error.is_empty() && error.len() <= 1024,
        "{name}: x-bridge-error is there and capped: {} bytes",
        error.len()
    );
    if carries.describes_objects {
        // The message was the object's description, not the bytes sent.
        assert!(
            truncated,
            "{name}: only too large descriptions are dead-lettered"
        );
        assert_eq!(letter.header("x-bridge-truncated").as_deref(), Some("true"));
        let size: usize = letter
            .header("x-bridge-original-size")
            .expect("x-bridge-original-size")
            .parse()
            .unwrap();
        assert!(size > MAX_MESSAGE_BYTES, "{name}: original size {size}");
        assert_eq!(
            letter.header("x-bridge-original-sha256").map(|h| h.len()),
            Some(64)
        );
        assert_eq!(letter.body.len(), DEADLETTER_SAMPLE_BYTES, "{name}");
        assert!(
            letter.body.starts_with(b"{\"bucket\":"),
            "{name}: the description"
        );
        return;
    }
    if truncated {
        assert_eq!(
            letter.header("x-bridge-truncated").as_deref(),
            Some("true"),
            "{name}"
        );
        assert_eq!(
            letter.header("x-bridge-original-size"),
            Some(message.payload.len().to_string()),
            "{name}"
        );
        assert_eq!(
            letter.header("x-bridge-original-sha256"),
            Some(sha256_hex(&message.payload)),
            "{name}"
        );
        assert!(
            letter.body == message.payload[..DEADLETTER_SAMPLE_BYTES],
            "{name}: the dead letter carries the first deadletter_sample_bytes"
        );
    } else {
        assert!(
            letter.body == message.payload,
            "{name}: the dead letter keeps the original bytes"
        );
        assert!(letter.header("x-bridge-truncated").is_none(), "{name}");
    }
    if let Some(content_type) = &message.content_type {
        let kept = letter
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.to_string());
        if content_type.len() <= 255 {
            assert_eq!(
                kept.as_ref(),
                Some(content_type),
                "{name}: content type kept"
            );
        } else {
            assert_eq!(
                kept, None,
                "{name}: a content type that does not fit is left out"
            );
        }
    }
}

/// The daemon that ran the corpus, for checks only the kind can make.
pub struct PoisonRun {
    pub daemon: Daemon,
    pub exchange: String,
    pub bridge: String,
}

impl PoisonRun {
    /// Kills the daemon (SIGKILL) and starts it again on the same config and state. A
    /// source that keeps what was not acknowledged (an MQTT session, an S3 cursor)
    /// would deliver it again now: nothing comes.
    pub async fn restart_delivers_nothing(&mut self) {
        let rabbit = Rabbit::connect().await;
        let mut outcomes = Outcomes::bind(&rabbit, &self.exchange, &self.bridge).await;
        self.daemon.kill();
        self.daemon.restart().await;
        self.daemon.wait_running(&self.bridge).await;
        if let Some(again) = outcomes.next(Duration::from_secs(3)).await {
            panic!(
                "after a restart the source delivered again: {} {:?}",
                again.routing_key,
                String::from_utf8_lossy(&again.body[..again.body.len().min(300)])
            );
        }
    }
}

/// Runs the corpus through one bridge of `source`'s kind and checks every outcome and
/// the bridge's health afterwards.
pub async fn poison_corpus<S: SourceUnderTest>(source: &S) -> PoisonRun {
    let carries = source.carries();
    let (items, skipped) = corpus(&carries, source.refuses_oversized());
    let kind = source.kind();
    for (name, why) in &skipped {
        eprintln!("poison corpus, {kind}: skipped `{name}`: {why}");
    }

    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let mut outcomes = Outcomes::bind(&rabbit, &exchange, &bridge).await;
    let ty = if carries.headers {
        format!("com.acme.{{header:{TYPE_HEADER}}}")
    } else {
        FIXED_TYPE.to_owned()
    };
    let extra = format!("max_message_bytes = {MAX_MESSAGE_BYTES}\ntype = \"{ty}\"");
    let bridges = bridge_table(source, &bridge, &extra);
    let daemon = Daemon::start_with_text(
        tempfile::tempdir().unwrap(),
        super::AMQP_URL,
        &exchange,
        |port| {
            config_text(super::AMQP_URL, &exchange, port, &bridges)
                .replace(
                    "[exchange]\n",
                    &format!("[exchange]\nmax_message_size = {EXCHANGE_MAX_MESSAGE_SIZE}\n"),
                )
                .replace(
                    "[defaults]\n",
                    &format!("[defaults]\ndeadletter_sample_bytes = {DEADLETTER_SAMPLE_BYTES}\n"),
                )
        },
    )
    .await;
    daemon.wait_ready().await;

    let target = Target {
        bridge: &bridge,
        carries: &carries,
    };
    let mut published = 0u64;
    let mut dead_lettered: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut refused = 0u64;
    for item in &items {
        let name = item.name;
        eprintln!("poison corpus, {kind}: sending `{name}`");
        let sent = source.send_poison(&item.message).await;
        if let Expect::Refused(status) = item.expect {
            let (answered, reply) = sent.answer.as_ref().expect("an HTTP answer");
            assert_eq!(*answered, status, "{name}: answered {reply}");
            refused += 1;
            continue;
        }
        let Some(outcome) = outcomes.next(Duration::from_secs(30)).await else {
            panic!(
                "{kind}, `{name}`: neither published nor dead-lettered within 30s (sent: {sent:?}); bridge: {:?}\nlog:\n{}",
                daemon.bridge_status(&bridge),
                log_tail(&daemon)
            );
        };
        match &item.expect {
            Expect::Published { ty, passed_through } => {
                assert!(
                    outcome.routing_key.starts_with("event."),
                    "{kind}, `{name}`: expected an event, got a dead letter: {:?} {:?}",
                    outcome.header("x-bridge-reason"),
                    outcome.header("x-bridge-error")
                );
                check_published(
                    name,
                    &outcome,
                    &item.message,
                    &sent,
                    ty,
                    passed_through.as_deref(),
                    &target,
                );
                if let Some((status, reply)) = &sent.answer {
                    assert_eq!(*status, 200, "{name}: {reply}");
                }
                published += 1;
            }
            Expect::DeadLettered { reason, truncated } => {
                assert!(
                    outcome.routing_key.starts_with("deadletter."),
                    "{kind}, `{name}`: expected a dead letter ({reason}), got an event on {}",
                    outcome.routing_key
                );
                check_dead_letter(name, &outcome, &item.message, reason, *truncated, &target);
                if let Some((status, reply)) = &sent.answer {
                    assert_eq!(*status, 400, "{name}: {reply}");
                    assert!(reply.contains(reason), "{name}: {reply}");
                }
                *dead_lettered.entry(reason).or_default() += 1;
            }
            Expect::Settled => {
                if outcome.routing_key.starts_with("event.") {
                    check_published(
                        name,
                        &outcome,
                        &item.message,
                        &sent,
                        &plain_type(&carries),
                        None,
                        &target,
                    );
                    if let Some((status, reply)) = &sent.answer {
                        assert_eq!(*status, 200, "{name}: {reply}");
                    }
                    eprintln!("poison corpus, {kind}: `{name}` was published");
                    published += 1;
                    continue;
                }
                if let Some((status, reply)) = &sent.answer {
                    assert_eq!(*status, 400, "{name}: {reply}");
                }
                let reason = outcome
                    .header("x-bridge-reason")
                    .expect("a dead letter has a reason");
                assert_ne!(reason, "internal_error", "{kind}, `{name}`: a panic");
                let reason: &'static str = [
                    "too_large",
                    "too_long",
                    "invalid_json",
                    "unresolved_template",
                    "invalid_tenant",
                    "invalid_cloudevent",
                    "invalid_notification",
                    "rejected_by_exchange",
                ]
                .into_iter()
                .find(|known| *known == reason)
                .unwrap_or_else(|| panic!("{kind}, `{name}`: unknown reason {reason}"));
                eprintln!("poison corpus, {kind}: `{name}` was dead-lettered as {reason}");
                *dead_lettered.entry(reason).or_default() += 1;
            }
            Expect::Refused(_) => unreachable!(),
        }
    }

    // The bridge goes on: the next good message is delivered.
    let good = PoisonMessage {
        payload: br#"{"good":true}"#.to_vec(),
        headers: if carries.headers {
            vec![(TYPE_HEADER.into(), b"plain".to_vec())]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let sent = source.send_poison(&good).await;
    let Some(event) = outcomes.next(Duration::from_secs(30)).await else {
        panic!(
            "{kind}: the good message after the corpus was not delivered; log:\n{}",
            log_tail(&daemon)
        );
    };
    check_published(
        "the good message",
        &event,
        &good,
        &sent,
        &plain_type(&carries),
        None,
        &target,
    );
    published += 1;
    assert!(
        outcomes.next(Duration::from_secs(1)).await.is_none(),
        "{kind}: nothing else is published"
    );

    // Accounting: every item sent is an event, a dead letter or a refusal.
    let sent_total = items.len() as u64 + 1;
    let dead_total: u64 = dead_lettered.values().sum();
    assert_eq!(sent_total, published + dead_total + refused, "{kind}");
    super::eventually_async(
        Duration::from_secs(20),
        "nothing unacknowledged at the source",
        || async {
            source
                .pending_at_source(&bridge)
                .await
                .is_none_or(|pending| pending == 0)
        },
    )
    .await;
    super::eventually(Duration::from_secs(10), "in-flight back to 0", || {
        daemon.metrics().bridge("bridge_in_flight", &bridge, kind) == Some(0.0)
    })
    .await;
    let metrics = daemon.metrics();
    assert_eq!(
        metrics.bridge("bridge_events_published_total", &bridge, kind),
        Some(published as f64),
        "{kind}"
    );
    for reason in [
        "too_large",
        "too_long",
        "invalid_json",
        "unresolved_template",
        "invalid_tenant",
        "invalid_cloudevent",
        "invalid_notification",
        "internal_error",
        "rejected_by_exchange",
    ] {
        assert_eq!(
            metrics.get(
                "bridge_events_dead_lettered_total",
                &[("bridge", &bridge), ("kind", kind), ("reason", reason)],
            ),
            Some(dead_lettered.get(reason).copied().unwrap_or(0) as f64),
            "{kind}: dead letters with reason {reason}"
        );
    }
    assert_eq!(
        metrics.bridge("bridge_messages_received_total", &bridge, kind),
        Some((sent_total - refused) as f64),
        "{kind}"
    );
    if source.refuses_oversized() {
        assert_eq!(
            metrics.get(
                "bridge_requests_refused_total",
                &[("bridge", &bridge), ("kind", kind), ("reason", "too_large")],
            ),
            Some(refused as f64),
            "{kind}"
        );
    }
    for name in [
        "bridge_restarts_total",
        "bridge_panics_total",
        "bridge_failed",
    ] {
        assert_eq!(
            metrics.bridge(name, &bridge, kind),
            Some(0.0),
            "{kind}: {name}"
        );
    }
    assert_eq!(metrics.bridge("bridge_up", &bridge, kind), Some(1.0));
    assert_eq!(metrics.get("bridge_exchange_up", &[]), Some(1.0));
    let status = daemon.bridge_status(&bridge).unwrap();
    assert_eq!(status["status"]["state"], "running", "{kind}: {status}");
    assert_eq!(status["counters"]["restarts"], 0, "{kind}: {status}");
    assert_eq!(
        status["status"]["connects"], 1,
        "{kind}: one source connection throughout: {status}"
    );
    assert_eq!(
        daemon.bridges()["exchange"]["connects"],
        1,
        "{kind}: the shared exchange connection was never lost"
    );
    let (code, body) = http_get(daemon.admin_port, "/readyz").unwrap();
    assert_eq!(code, 200, "{kind}: /readyz: {body}");
    eprintln!(
        "poison corpus, {kind}: {} items run, then a good message: {published} published (the good message included), {dead_total} dead-lettered, {refused} refused; {} items skipped",
        items.len(),
        skipped.len()
    );
    PoisonRun {
        daemon,
        exchange,
        bridge,
    }
}

// ---------------------------------------------------------------------------------------
// Clients that send what well-behaved client libraries refuse to.

/// Publishes on NATS through the raw protocol (`HPUB`), so header values may be any
/// bytes but CR and LF, which async-nats does not allow. With `stored`, asks for and
/// waits for JetStream's acknowledgement.
pub async fn nats_publish_raw(
    subject: &str,
    headers: &[(String, Vec<u8>)],
    payload: &[u8],
    stored: bool,
) {
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:4222")
        .await
        .expect("NATS on 127.0.0.1:4222 (run scripts/brokers.sh)");
    let inbox = format!("_INBOX.{}", unique("poison").replace('-', "_"));
    let mut head = b"NATS/1.0\r\n".to_vec();
    for (name, value) in headers {
        assert!(
            !value.contains(&b'\r') && !value.contains(&b'\n'),
            "NATS header values end at CR LF"
        );
        head.extend_from_slice(format!("{name}: ").as_bytes());
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut out = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1,\"lang\":\"raw\",\"version\":\"0\"}\r\n".to_vec();
    let reply = if stored {
        out.extend_from_slice(format!("SUB {inbox} 1\r\n").as_bytes());
        format!(" {inbox}")
    } else {
        String::new()
    };
    out.extend_from_slice(
        format!(
            "HPUB {subject}{reply} {} {}\r\n",
            head.len(),
            head.len() + payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    stream.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(
                n > 0,
                "NATS closed the raw connection: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&seen);
            assert!(
                !text.contains("-ERR"),
                "NATS refused the raw publish: {text}"
            );
            let finished = if stored {
                text.contains("\"seq\":")
            } else {
                text.contains("PONG")
            };
            if finished {
                assert!(!text.contains("\"error\""), "JetStream refused it: {text}");
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "no answer to the raw NATS publish: {}",
        String::from_utf8_lossy(&seen)
    );
}

/// A POST whose header values are bytes (HTTP allows obs-text, bytes 0x80-0xFF, which
/// the test's text client does not send): `(status, body)`.
pub async fn http_post_raw(
    port: u16,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the webhook listener");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await.unwrap();
    // A server may answer (413) before it read the whole body, and close.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("an HTTP answer within 30s");
    if let Err(error) = read
        && response.is_empty()
    {
        panic!("the webhook listener closed the connection without an answer: {error}");
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {head}"));
    (status, body.to_owned())
}

/// The NATS headers of a corpus message: its headers, the `Content-Type` and (core
/// NATS) the id as `Nats-Msg-Id`. The flag says whether async-nats can send them (text
/// without control characters) or the raw protocol must.
pub fn nats_headers(message: &PoisonMessage, with_id: bool) -> (Vec<(String, Vec<u8>)>, bool) {
    let mut headers = message.headers.clone();
    if let Some(content_type) = &message.content_type {
        headers.push(("Content-Type".into(), content_type.clone().into_bytes()));
    }
    if with_id && let Some(id) = &message.id {
        headers.push(("Nats-Msg-Id".into(), id.clone().into_bytes()));
    }
    if with_id && let Some(id) = &message.binary_id {
        headers.push(("Nats-Msg-Id".into(), id.clone()));
    }
    let text = headers.iter().all(|(_, value)| {
        std::str::from_utf8(value).is_ok_and(|v| !v.chars().any(char::is_control))
    });
    (headers, text)
}

/// Publishes one message to RabbitMQ through raw AMQP 0-9-1 frames, with publisher
/// confirms, so its `message_id` (a short string) may be bytes that are not UTF-8,
/// which lapin never sends. Header values are long strings. The message is persistent;
/// `mandatory` makes an unroutable one an error here.
pub async fn amqp_publish_raw(
    exchange: &str,
    routing_key: &str,
    headers: &[(String, Vec<u8>)],
    message_id: &[u8],
    body: &[u8],
) {
    fn short(out: &mut Vec<u8>, bytes: &[u8]) {
        out.push(u8::try_from(bytes.len()).expect("a short string"));
        out.extend_from_slice(bytes);
    }
    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0xCE);
        out
    }
    fn method(class: u16, id: u16, arguments: &[u8]) -> Vec<u8> {
        let mut out = class.to_be_bytes().to_vec();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(arguments);
        out
    }
    /// Reads frames until a method frame of `(class, id)`; fails on Connection.Close or
    /// Channel.Close.
    async fn expect(stream: &mut tokio::net::TcpStream, class: u16, id: u16) -> Vec<u8> {
        loop {
            let mut head = [0u8; 7];
            stream.read_exact(&mut head).await.expect("an AMQP frame");
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            stream.read_exact(&mut payload).await.unwrap();
            payload.pop();
            if head[0] != 1 {
                continue;
            }
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            assert!(
                got != (60, 50),
                "RabbitMQ returned the raw message: unroutable"
            );
            assert!(
                got != (10, 50) && got != (20, 40),
                "RabbitMQ closed the raw connection: {}",
                String::from_utf8_lossy(&payload)
            );
            if got == (class, id) {
                return payload;
            }
        }
    }
    let raw = async {
        let mut stream = tokio::net::TcpStream::connect("127.0.0.1:5672")
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        expect(&mut stream, 10, 10).await; // Connection.Start
        let mut start_ok = 0u32.to_be_bytes().to_vec(); // client properties: {}
        short(&mut start_ok, b"PLAIN");
        let response = b"\x00guest\x00guest";
        start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
        start_ok.extend_from_slice(response);
        short(&mut start_ok, b"en_US");
        stream
            .write_all(&frame(1, 0, &method(10, 11, &start_ok)))
            .await
            .unwrap();
        let tune = expect(&mut stream, 10, 30).await;
        let mut tune_ok = tune[4..6].to_vec(); // the server's channel_max
        tune_ok.extend_from_slice(&131_072u32.to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        let mut open = Vec::new();
        short(&mut open, b"/");
        short(&mut open, b"");
        open.push(0);
        let mut out = frame(1, 0, &method(10, 31, &tune_ok));
        out.extend(frame(1, 0, &method(10, 40, &open)));
        stream.write_all(&out).await.unwrap();
        expect(&mut stream, 10, 41).await; // Connection.OpenOk
        stream
            .write_all(&frame(1, 1, &method(20, 10, &[0])))
            .await
            .unwrap();
        expect(&mut stream, 20, 11).await; // Channel.OpenOk
        stream
            .write_all(&frame(1, 1, &method(85, 10, &[0])))
            .await
            .unwrap();
        expect(&mut stream, 85, 11).await; // Confirm.SelectOk
        let mut publish = 0u16.to_be_bytes().to_vec();
        short(&mut publish, exchange.as_bytes());
        short(&mut publish, routing_key.as_bytes());
        publish.push(1); // mandatory
        let mut header = 60u16.to_be_bytes().to_vec();
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        // Property flags: headers (bit 13), delivery-mode (bit 12) and message-id (bit 7),
        // in that order.
        header.extend_from_slice(&((1u16 << 13) | (1u16 << 12) | (1u16 << 7)).to_be_bytes());
        let mut table = Vec::new();
        for (name, value) in headers {
            short(&mut table, name.as_bytes());
            table.push(b'S');
            table.extend_from_slice(&(value.len() as u32).to_be_bytes());
            table.extend_from_slice(value);
        }
        header.extend_from_slice(&(table.len() as u32).to_be_bytes());
        header.extend_from_slice(&table);
        header.push(2);
        short(&mut header, message_id);
        let mut out = frame(1, 1, &method(60, 40, &publish));
        out.extend(frame(2, 1, &header));
        for chunk in body.chunks(131_072 - 8) {
            out.extend(frame(3, 1, chunk));
        }
        stream.write_all(&out).await.unwrap();
        expect(&mut stream, 60, 80).await; // Basic.Ack: confirmed (a return comes first)
        let mut close = 200u16.to_be_bytes().to_vec();
        short(&mut close, b"bye");
        close.extend_from_slice(&[0, 0, 0, 0]);
        stream
            .write_all(&frame(1, 0, &method(10, 50, &close)))
            .await
            .unwrap();
        expect(&mut stream, 10, 51).await;
    };
    tokio::time::timeout(Duration::from_secs(10), raw)
        .await
        .expect("the raw AMQP publish is confirmed within 10s");
}
