//! `Incoming` -> CloudEvent: every mapping rule of DESIGN.md, as a pure function.
//! No I/O here; the bridge's `Mapping` is built once when the bridge starts.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::cloudevent::{
    self, CloudEvent, Data, ExtensionValue, format_time, is_json_content_type,
    is_structured_content_type,
};
use crate::config::{BridgeSpec, PayloadFormat};
use crate::routing;
use crate::template::{Template, TemplateInput};

/// What a source knows about one message besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// NATS subject, MQTT topic, Kafka topic, AMQP routing key or S3 key.
    pub subject: Option<String>,
    /// Transport headers with their original names.
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// The time the transport gives for the message.
    pub time: Option<DateTime<Utc>>,
    /// A deterministic id the transport gives (`<stream>:<seq>`, `Nats-Msg-Id`...).
    pub id: Option<String>,
    /// The CloudEvent `source` the kind derives (e.g. `nats://host:4222/orders.new`).
    pub source_uri: String,
    /// Transport details worth keeping as extensions (e.g. `partitionkey`).
    pub extensions: Vec<(String, String)>,
    pub received: DateTime<Utc>,
}

/// Why a message cannot become a CloudEvent. The label is the metrics `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TooLarge,
    InvalidJson,
    UnresolvedTemplate,
    InvalidCloudEvent,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::TooLarge,
        RejectReason::InvalidJson,
        RejectReason::UnresolvedTemplate,
        RejectReason::InvalidCloudEvent,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::UnresolvedTemplate => "unresolved_template",
            RejectReason::InvalidCloudEvent => "invalid_cloudevent",
        }
    }
}

/// A typed rejection: the reason and a human-readable detail for `x-bridge-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.label())]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// A CloudEvent and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub event: CloudEvent,
    pub routing_key: String,
}

/// A bridge's mapping rules, prepared once from its spec.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub tenant: String,
    pub source_name: String,
    source_uri: Option<String>,
    event_type: Template,
    time_pointer: Option<String>,
    format: PayloadFormat,
    default_content_type: Option<String>,
    max_message_bytes: usize,
}

impl Mapping {
    /// Builds the mapping; the spec was validated when the config was loaded.
    pub fn new(spec: &BridgeSpec) -> Self {
        let event_type = match &spec.event_type {
            Some(text) => Template::parse(text).unwrap_or_else(|_| Template::fixed(text)),
            None => Template::parse("{subject}").expect("valid template"),
        };
        let time_pointer = spec.time_field.as_ref().map(|field| {
            if field.starts_with('/') {
                field.clone()
            } else {
                // A plain field name: escape it as one pointer token.
                format!("/{}", field.replace('~', "~0").replace('/', "~1"))
            }
        });
        Mapping {
            tenant: spec.tenant.clone(),
            source_name: spec.source_name.clone(),
            source_uri: spec.source_uri.clone(),
            event_type,
            time_pointer,
            format: spec.format,
            default_content_type: spec.content_type.clone(),
            max_message_bytes: spec.max_message_bytes,
        }
    }

    /// The dead-letter routing key of this bridge.
    pub fn deadletter_key(&self) -> String {
        routing::deadletter_key(&self.tenant, &self.source_name)
    }
}

/// Turns one message into a CloudEvent and its routing key.
pub fn normalize(
    mapping: &Mapping,
    meta: &Metadata,
    payload: &Bytes,
) -> Result<Normalized, Reject> {
    if payload.len() > mapping.max_message_bytes {
        return Err(reject(
            RejectReason::TooLarge,
            format!(
                "message is {} bytes, over max_message_bytes = {}",
                payload.len(),
                mapping.max_message_bytes
            ),
        ));
    }
    let content_type = meta
        .content_type
        .as_deref()
        .or(mapping.default_content_type.as_deref());

    // Already a CloudEvent: pass it through, adding only the tenant.
    let inbound = if content_type.is_some_and(is_structured_content_type) {
        Some(cloudevent::parse_structured(payload))
    } else {
        cloudevent::parse_binary(&meta.headers, content_type, payload).transpose()
    };
    if let Some(inbound) = inbound {
        let mut event = inbound.map_err(|e| reject(RejectReason::InvalidCloudEvent, e.0))?;
        event.extensions.insert(
            "tenant".into(),
            ExtensionValue::String(mapping.tenant.clone()),
        );
        let routing_key = routing::event_key(&mapping.tenant, &mapping.source_name, &event.ty);
        return Ok(Normalized { event, routing_key });
    }

    let (data, datacontenttype) = classify(mapping.format, content_type, payload)?;
    let json = match &data {
        Data::Json(bytes) if mapping.event_type.needs_json() || mapping.time_pointer.is_some() => {
            serde_json::from_slice::<Value>(bytes).ok()
        }
        _ => None,
    };
    let input = TemplateInput {
        subject: meta.subject.as_deref(),
        headers: &meta.headers,
        json: json.as_ref(),
    };
    let ty = mapping
        .event_type
        .resolve(&input)
        .map_err(|e| reject(RejectReason::UnresolvedTemplate, format!("type: {e}")))?;
    let time = meta
        .time
        .or_else(|| {
            let pointer = mapping.time_pointer.as_deref()?;
            time_from_json(json.as_ref()?.pointer(pointer)?)
        })
        .unwrap_or(meta.received);

    let mut extensions = BTreeMap::new();
    for (name, value) in &meta.extensions {
        extensions.insert(name.clone(), ExtensionValue::String(value.clone()));
    }
    extensions.insert(
        "tenant".into(),
        ExtensionValue::String(mapping.tenant.clone()),
    );
    let event = CloudEvent {
        id: meta
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        source: mapping
            .source_uri
            .clone()
            .unwrap_or_else(|| meta.source_uri.clone()),
        ty,
        datacontenttype: Some(datacontenttype),
        dataschema: None,
        subject: meta.subject.clone(),
        time: Some(format_time(&time)),
        time_utc: Some(time),
        extensions,
        data,
    };
    event
        .validate()
        .map_err(|e| reject(RejectReason::InvalidCloudEvent, e.0))?;
    let routing_key = routing::event_key(&mapping.tenant, &mapping.source_name, &event.ty);
    Ok(Normalized { event, routing_key })
}

/// Decides how the payload travels: JSON as JSON, everything else as bytes.
fn classify(
    format: PayloadFormat,
    content_type: Option<&str>,
    payload: &Bytes,
) -> Result<(Data, String), Reject> {
    let valid_json = || serde_json::from_slice::<serde::de::IgnoredAny>(payload);
    let json = |content_type: Option<&str>| {
        (
            Data::Json(payload.clone()),
            content_type.unwrap_or("application/json").to_owned(),
        )
    };
    let binary = |content_type: Option<&str>| {
        (
            Data::Binary(payload.clone()),
            content_type
                .unwrap_or("application/octet-stream")
                .to_owned(),
        )
    };
    match format {
        PayloadFormat::Raw => Ok(binary(content_type)),
        PayloadFormat::Json => match valid_json() {
            Ok(_) => Ok(json(content_type.filter(|ct| is_json_content_type(ct)))),
            Err(e) => Err(reject(
                RejectReason::InvalidJson,
                format!("payload is not JSON: {e}"),
            )),
        },
        PayloadFormat::Auto => match content_type {
            Some(ct) if !is_json_content_type(ct) => Ok(binary(Some(ct))),
            Some(ct) => match valid_json() {
                Ok(_) => Ok(json(Some(ct))),
                Err(e) => Err(reject(
                    RejectReason::InvalidJson,
                    format!("content type `{ct}` says JSON, but the payload is not: {e}"),
                )),
            },
            None if !payload.is_empty() && valid_json().is_ok() => Ok(json(None)),
            None => Ok(binary(None)),
        },
    }
}

/// A `time_field` value: an RFC 3339 string, or Unix seconds (milliseconds when the
/// number is larger than 10^11, i.e. past the year 5138 in seconds).
fn time_from_json(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => cloudevent::parse_time(text),
        Value::Number(number) => {
            let n = number.as_f64()?;
            let millis = if n.abs() > 1e11 { n } else { n * 1000.0 };
            Utc.timestamp_millis_opt(millis as i64).single()
        }
        _ => None,
    }
}
