//! The CloudEvent v1.0 model we publish, its structured JSON and binary (`ce-` header)
//! encodings, and the one place that recognises inbound CloudEvents for every transport.
//!
//! We keep the event data as the original bytes (`Data`) instead of a parsed value so
//! that data is preserved byte for byte, which the `cloudevents-sdk` model cannot do.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;

/// Media type of a structured-mode CloudEvent.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The content type structured-mode events are published with.
pub const STRUCTURED_CONTENT_TYPE_UTF8: &str = "application/cloudevents+json; charset=utf-8";

/// Header prefixes that carry binary-mode attributes: HTTP/AMQP (Knative), Kafka, AMQP 1.0.
pub const BINARY_HEADER_PREFIXES: [&str; 4] = ["ce-", "ce_", "cloudEvents:", "cloudEvents_"];

/// Context attributes defined by the spec; everything else is an extension.
const CORE_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// An extension attribute value. Inbound structured events may carry JSON numbers and
/// booleans; those are kept as their JSON text so they are re-emitted unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    String(String),
    /// Raw JSON scalar (number or boolean) text.
    Json(String),
}

impl ExtensionValue {
    /// The value as header text.
    pub fn as_text(&self) -> &str {
        match self {
            ExtensionValue::String(s) | ExtensionValue::Json(s) => s,
        }
    }
}

/// Event data, kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    None,
    /// Valid JSON text, emitted verbatim as the `data` member.
    Json(Bytes),
    /// Anything else, emitted as `data_base64` in structured mode.
    Binary(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    /// The event time. Inbound events keep their own text; `time_utc` is its parsed value.
    pub time: Option<String>,
    pub time_utc: Option<DateTime<Utc>>,
    pub extensions: BTreeMap<String, ExtensionValue>,
    pub data: Data,
}

/// Why an inbound CloudEvent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCloudEvent(pub String);

fn invalid(message: impl Into<String>) -> InvalidCloudEvent {
    InvalidCloudEvent(message.into())
}

/// Formats a time the way we write `time`: RFC 3339, UTC, with the precision it has.
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The content type of a batch of structured CloudEvents (a JSON array).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// A content type without its parameters (`; charset=...`), trimmed.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// True for `application/json`, `text/json` and any `+json` suffix, parameters ignored.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = essence(content_type).to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// True when the content type announces a structured-mode CloudEvent.
pub fn is_structured_content_type(content_type: &str) -> bool {
    essence(content_type).eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE)
}

/// True when the content type announces a batch of CloudEvents.
pub fn is_batch_content_type(content_type: &str) -> bool {
    essence(content_type).eq_ignore_ascii_case(BATCH_CONTENT_TYPE)
}

/// Valid extension (and attribute) names: lower-case ASCII letters and digits.
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl CloudEvent {
    /// Checks the rules the spec makes and the SDK does not enforce.
    pub fn validate(&self) -> Result<(), InvalidCloudEvent> {
        for (name, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(invalid(format!("attribute `{name}` is empty")));
            }
        }
        for name in self.extensions.keys() {
            if !is_valid_attribute_name(name) {
                return Err(invalid(format!(
                    "extension name `{name}` is not lower-case a-z0-9"
                )));
            }
            if name == "data" || CORE_ATTRIBUTES.contains(&name.as_str()) {
                return Err(invalid(format!("extension name `{name}` is reserved")));
            }
        }
        if self.time.is_some() && self.time_utc.is_none() {
            return Err(invalid("attribute `time` is not an RFC 3339 timestamp"));
        }
        Ok(())
    }

    /// The structured-mode JSON document. Data is written verbatim (JSON) or as base64.
    pub fn to_structured_json(&self) -> Vec<u8> {
        let data_len = match &self.data {
            Data::None => 0,
            Data::Json(b) => b.len(),
            Data::Binary(b) => b.len() * 4 / 3 + 4,
        };
        let mut out = Vec::with_capacity(256 + data_len);
        out.extend_from_slice(b"{\"specversion\":\"1.0\"");
        push_member(&mut out, "id", &self.id);
        push_member(&mut out, "source", &self.source);
        push_member(&mut out, "type", &self.ty);
        for (name, value) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(value) = value {
                push_member(&mut out, name, value);
            }
        }
        for (name, value) in &self.extensions {
            match value {
                ExtensionValue::String(s) => push_member(&mut out, name, s),
                ExtensionValue::Json(raw) => {
                    push_key(&mut out, name);
                    out.extend_from_slice(raw.as_bytes());
                }
            }
        }
        match &self.data {
            Data::None => {}
            Data::Json(raw) => {
                push_key(&mut out, "data");
                out.extend_from_slice(raw);
            }
            Data::Binary(bytes) => push_member(&mut out, "data_base64", &BASE64.encode(bytes)),
        }
        out.push(b'}');
        out
    }

    /// Binary mode: the attributes as `(name, value)` pairs without prefix, and the raw body.
    pub fn binary_attributes(&self) -> Vec<(&str, &str)> {
        let mut attributes = vec![
            ("specversion", "1.0"),
            ("id", self.id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.ty.as_str()),
        ];
        for (name, value) in [
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(value) = value {
                attributes.push((name, value.as_str()));
            }
        }
        for (name, value) in &self.extensions {
            attributes.push((name.as_str(), value.as_text()));
        }
        attributes
    }

    /// The body in binary mode: the data bytes themselves.
    pub fn binary_body(&self) -> Bytes {
        match &self.data {
            Data::None => Bytes::new(),
            Data::Binary(bytes) => bytes.clone(),
            Data::Json(raw) => {
                // A JSON string whose content type is not JSON is text data: send its text.
                let is_json = self
                    .datacontenttype
                    .as_deref()
                    .is_none_or(is_json_content_type);
                if !is_json && let Ok(text) = serde_json::from_slice::<String>(raw) {
                    return Bytes::from(text);
                }
                raw.clone()
            }
        }
    }
}

fn push_key(out: &mut Vec<u8>, name: &str) {
    out.push(b',');
    // Names are validated a-z0-9 or fixed; writing them through serde keeps it safe anyway.
    serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
    out.push(b':');
}

fn push_member(out: &mut Vec<u8>, name: &str, value: &str) {
    push_key(out, name);
    serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
}

/// Parses a structured-mode event (`application/cloudevents+json`). Data stays byte-exact.
pub fn parse_structured(payload: &Bytes) -> Result<CloudEvent, InvalidCloudEvent> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_slice(payload)
        .map_err(|e| invalid(format!("structured CloudEvent is not a JSON object: {e}")))?;
    let string_attr = |name: &str| -> Result<Option<String>, InvalidCloudEvent> {
        match members.get(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| invalid(format!("attribute `{name}` is not a string"))),
        }
    };
    let required = |name: &str| -> Result<String, InvalidCloudEvent> {
        string_attr(name)?.ok_or_else(|| invalid(format!("attribute `{name}` is missing")))
    };
    let specversion = required("specversion")?;
    if specversion != "1.0" {
        return Err(invalid(format!(
            "specversion `{specversion}` is not supported (only 1.0)"
        )));
    }
    let time = string_attr("time")?;
    let mut extensions = BTreeMap::new();
    for (name, raw) in &members {
        if CORE_ATTRIBUTES.contains(&name.as_str()) || name == "data" || name == "data_base64" {
            continue;
        }
        let text = raw.get();
        let value = if text.starts_with('"') {
            ExtensionValue::String(
                serde_json::from_str(text)
                    .map_err(|e| invalid(format!("extension `{name}`: {e}")))?,
            )
        } else if text == "null" {
            continue;
        } else if text.starts_with('{') || text.starts_with('[') {
            return Err(invalid(format!(
                "extension `{name}` must be a string, number or boolean"
            )));
        } else {
            ExtensionValue::Json(text.to_owned())
        };
        extensions.insert(name.clone(), value);
    }
    let data = match (members.get("data"), members.get("data_base64")) {
        (Some(_), Some(_)) => return Err(invalid("both `data` and `data_base64` are present")),
        (Some(raw), None) => Data::Json(payload.slice_ref(raw.get().as_bytes())),
        (None, Some(raw)) => {
            let text: String = serde_json::from_str(raw.get())
                .map_err(|_| invalid("`data_base64` is not a string"))?;
            Data::Binary(Bytes::from(
                BASE64
                    .decode(text)
                    .map_err(|e| invalid(format!("`data_base64` is not base64: {e}")))?,
            ))
        }
        (None, None) => Data::None,
    };
    let event = CloudEvent {
        id: required("id")?,
        source: required("source")?,
        ty: required("type")?,
        datacontenttype: string_attr("datacontenttype")?,
        dataschema: string_attr("dataschema")?,
        subject: string_attr("subject")?,
        time_utc: time.as_deref().and_then(parse_time),
        time,
        extensions,
        data,
    };
    event.validate()?;
    Ok(event)
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// True when a header carries a binary-mode CloudEvent attribute (any of the prefixes).
pub fn is_binary_attribute_header(header: &str) -> bool {
    binary_attribute_name(header).is_some()
}

/// Strips a binary-mode prefix from a header name, case-insensitively.
fn binary_attribute_name(header: &str) -> Option<&str> {
    BINARY_HEADER_PREFIXES.iter().find_map(|prefix| {
        let head = header.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| &header[prefix.len()..])
    })
}

/// Recognises a binary-mode event in transport headers (any of the four prefixes, names
/// compared case-insensitively). Returns `Ok(None)` when the headers carry no
/// `specversion`, i.e. the message is not a CloudEvent.
pub fn parse_binary(
    headers: &[(String, String)],
    content_type: Option<&str>,
    payload: &Bytes,
) -> Result<Option<CloudEvent>, InvalidCloudEvent> {
    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(attribute) = binary_attribute_name(name) {
            attributes.insert(attribute.to_ascii_lowercase(), value.clone());
        }
    }
    let Some(specversion) = attributes.remove("specversion") else {
        return Ok(None);
    };
    if specversion != "1.0" {
        return Err(invalid(format!(
            "specversion `{specversion}` is not supported (only 1.0)"
        )));
    }
    let mut take = |name: &str| attributes.remove(name);
    let id = take("id").ok_or_else(|| invalid("attribute `id` is missing"))?;
    let source = take("source").ok_or_else(|| invalid("attribute `source` is missing"))?;
    let ty = take("type").ok_or_else(|| invalid("attribute `type` is missing"))?;
    let datacontenttype = take("datacontenttype").or_else(|| content_type.map(str::to_owned));
    let dataschema = take("dataschema");
    let subject = take("subject");
    let time = take("time");
    let data = if payload.is_empty() {
        Data::None
    } else if datacontenttype.as_deref().is_none_or(is_json_content_type)
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
    {
        Data::Json(payload.clone())
    } else {
        Data::Binary(payload.clone())
    };
    let event = CloudEvent {
        id,
        source,
        ty,
        datacontenttype,
        dataschema,
        subject,
        time_utc: time.as_deref().and_then(parse_time),
        time,
        extensions: attributes
            .into_iter()
            .map(|(k, v)| (k, ExtensionValue::String(v)))
            .collect(),
        data,
    };
    event.validate()?;
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudEvent {
        CloudEvent {
            id: "1".into(),
            source: "nats://localhost/a".into(),
            ty: "a.b".into(),
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            subject: Some("a".into()),
            time: Some("2026-01-02T03:04:05Z".into()),
            time_utc: parse_time("2026-01-02T03:04:05Z"),
            extensions: BTreeMap::from([("tenant".into(), ExtensionValue::String("acme".into()))]),
            data: Data::Json(Bytes::from_static(b"{ \"x\" : 1.50 }")),
        }
    }

    #[test]
    fn structured_json_keeps_data_bytes_and_round_trips() {
        let event = sample();
        let json = event.to_structured_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"data\":{ \"x\" : 1.50 }"), "{text}");
        let back = parse_structured(&Bytes::from(json)).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn binary_data_round_trips_through_base64() {
        let mut event = sample();
        event.datacontenttype = Some("application/octet-stream".into());
        event.data = Data::Binary(Bytes::from_static(&[0, 159, 146, 150, 255]));
        let json = event.to_structured_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["data_base64"], "AJ+Slv8=");
        assert_eq!(parse_structured(&Bytes::from(json)).unwrap(), event);
    }

    #[test]
    fn binary_headers_with_every_prefix_are_recognised() {
        for prefix in BINARY_HEADER_PREFIXES {
            let headers = vec![
                (format!("{prefix}specversion"), "1.0".to_string()),
                (format!("{prefix}id"), "x1".to_string()),
                (format!("{prefix}source"), "/here".to_string()),
                (format!("{prefix}type"), "t".to_string()),
                (format!("{prefix}myext"), "v".to_string()),
                ("other".to_string(), "ignored".to_string()),
            ];
            let event = parse_binary(&headers, Some("text/plain"), &Bytes::from_static(b"hi"))
                .unwrap()
                .unwrap();
            assert_eq!(event.id, "x1");
            assert_eq!(event.extensions["myext"].as_text(), "v");
            assert_eq!(event.data, Data::Binary(Bytes::from_static(b"hi")));
            assert_eq!(event.datacontenttype.as_deref(), Some("text/plain"));
        }
        let upper = vec![("CE-SpecVersion".to_string(), "1.0".to_string())];
        assert!(
            parse_binary(&upper, None, &Bytes::new()).is_err(),
            "id missing"
        );
        assert_eq!(parse_binary(&[], None, &Bytes::new()), Ok(None));
    }

    #[test]
    fn invalid_events_are_refused() {
        let cases: [&[u8]; 7] = [
            br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
            br#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#,
            br#"{"specversion":"1.0","id":"1","source":"s"}"#,
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad":"x"}"#,
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"yesterday"}"#,
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#,
            br#"[1,2]"#,
        ];
        for case in cases {
            assert!(
                parse_structured(&Bytes::from_static(case)).is_err(),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type(
            "application/vnd.api+json; charset=utf-8"
        ));
        assert!(is_json_content_type("Application/JSON;charset=UTF-8"));
        assert!(!is_json_content_type("text/plain"));
        assert!(is_structured_content_type(
            "application/cloudevents+json; charset=utf-8"
        ));
    }
}
