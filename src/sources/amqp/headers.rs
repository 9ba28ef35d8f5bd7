//! AMQP headers and properties as text headers, for templates and the binary CloudEvent
//! parser.

use base64::Engine;
use chrono::{TimeZone, Utc};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::Value;

/// AMQP properties offered to templates as if they were headers, e.g.
/// `type = "{header:amqp-type}"` or `tenant = "{header:amqp-user-id}"` (RabbitMQ checks
/// `user_id` against the publishing connection's user). They come only from the
/// properties: an application header of one of these names (any case) is dropped, so a
/// publisher can never stand in for the identity RabbitMQ checked.
pub const PROPERTY_HEADERS: [&str; 4] = [
    "amqp-type",
    "amqp-app-id",
    "amqp-user-id",
    "amqp-correlation-id",
];

/// The AMQP headers as text, so templates and the binary CloudEvent parser can read them.
pub fn headers_of(properties: &BasicProperties) -> Vec<(String, String)> {
    let Some(table) = properties.headers() else {
        return Vec::new();
    };
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), header_text(value)))
        .collect()
}

/// Nested header tables and arrays deeper than this are not converted further.
const MAX_HEADER_DEPTH: usize = 16;
/// The longest text one header value becomes (nested tables as JSON are cut here).
pub(super) const MAX_HEADER_TEXT: usize = 64 * 1024;

/// One header value as text: strings as they are, numbers and booleans as written,
/// timestamps in RFC 3339, byte arrays in base64, nested tables and arrays as JSON. A
/// header is outside data: nesting stops at `MAX_HEADER_DEPTH` and the text at
/// `MAX_HEADER_TEXT` bytes.
pub(super) fn header_text(value: &AMQPValue) -> String {
    let mut text = match value {
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => to_json(value, 0).to_string(),
        other => match to_json(other, 0) {
            Value::String(text) => text,
            Value::Null => String::new(),
            json => json.to_string(),
        },
    };
    text.truncate(crate::short_string::cut(&text, MAX_HEADER_TEXT).len());
    text
}

fn to_json(value: &AMQPValue, depth: usize) -> Value {
    let nested = |value: &AMQPValue| {
        if depth >= MAX_HEADER_DEPTH {
            Value::String(format!("(nested deeper than {MAX_HEADER_DEPTH} levels)"))
        } else {
            to_json(value, depth + 1)
        }
    };
    match value {
        AMQPValue::Boolean(flag) => Value::Bool(*flag),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(n) => Value::from(*n),
        AMQPValue::Double(n) => Value::from(*n),
        AMQPValue::DecimalValue(decimal) => {
            Value::String(decimal_text(decimal.value, decimal.scale))
        }
        AMQPValue::ShortString(text) => Value::String(text.as_str().to_owned()),
        AMQPValue::LongString(text) => {
            Value::String(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(nested).collect()),
        AMQPValue::Timestamp(seconds) => match i64::try_from(*seconds)
            .ok()
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
        {
            Some(time) => Value::String(crate::cloudevent::format_time(&time)),
            None => Value::from(*seconds),
        },
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), nested(value)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP decimal (`value` × 10^-`scale`) written out, e.g. 12345 with scale 2: `123.45`.
pub(super) fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}
