//! `Incoming` -> CloudEvent: every mapping rule of DESIGN.md, as a pure function.
//! No I/O here; the bridge's `Mapping` is built once when the bridge starts.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde_json::Value;

use crate::cloudevent::{
    self, CloudEvent, Data, ExtensionValue, format_time, is_json_content_type,
    is_structured_content_type,
};
use crate::config::{BridgeSpec, PayloadFormat};
use crate::message::{Metadata, Reject, RejectReason};
use crate::routing;
use crate::short_string;
use crate::template::{Template, TemplateInput};

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

/// Where a bridge's tenants come from: never the payload.
#[derive(Debug, Clone)]
enum TenantRule {
    /// Fixed, or from the transport's subject or a header.
    Template(Template),
    /// `bucket_tenants` (`format = "s3-notification"`): each record's bucket names its
    /// tenant in the config.
    Buckets(BTreeMap<String, String>),
}

/// A bridge's mapping rules, prepared once from its spec.
#[derive(Debug, Clone)]
pub struct Mapping {
    tenant: TenantRule,
    /// What `{subject[N]}` splits the transport's subject on (`SourceSpec::subject_separator`).
    subject_separator: Option<char>,
    pub source_name: String,
    source_uri: Option<String>,
    event_type: Template,
    /// The bridge sets `type`: it wins over the kind's `default_type`.
    type_configured: bool,
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
        let tenant = match &spec.bucket_tenants {
            Some(buckets) => TenantRule::Buckets(buckets.clone()),
            None => TenantRule::Template(
                Template::parse(&spec.tenant).unwrap_or_else(|_| Template::fixed(&spec.tenant)),
            ),
        };
        Mapping {
            tenant,
            subject_separator: spec.source.subject_separator(),
            source_name: spec.source_name.clone(),
            source_uri: spec.source_uri.clone(),
            event_type,
            type_configured: spec.event_type.is_some(),
            time_pointer,
            format: spec.format,
            default_content_type: spec.content_type.clone(),
            max_message_bytes: spec.max_message_bytes,
        }
    }

    /// The tenant of a message from its transport: fixed, the transport's subject or a
    /// header; valid as it stands, or the message is rejected (`invalid_tenant`).
    fn transport_tenant(&self, meta: &Metadata) -> Result<String, Reject> {
        let template = match &self.tenant {
            TenantRule::Template(template) => template,
            TenantRule::Buckets(_) => {
                return Err(reject(
                    RejectReason::InvalidTenant,
                    "tenant: the tenant comes from each record's bucket (`bucket_tenants`)",
                ));
            }
        };
        let tenant = template
            .resolve(&TemplateInput {
                subject: meta.subject.as_deref(),
                separator: self.subject_separator,
                headers: &meta.headers,
                json: None,
            })
            .map_err(|e| reject(RejectReason::UnresolvedTemplate, format!("tenant: {e}")))?;
        routing::check_tenant(&tenant).map_err(|e| reject(RejectReason::InvalidTenant, e))?;
        Ok(tenant)
    }

    /// The tenant of an s3-notification record: its bucket's in `bucket_tenants`, else
    /// the transport's (`transport`, resolved once per message). Never the document's.
    fn record_tenant(&self, bucket: &str, transport: Option<&str>) -> Result<String, Reject> {
        match (&self.tenant, transport) {
            (TenantRule::Buckets(buckets), _) => buckets.get(bucket).cloned().ok_or_else(|| {
                reject(
                    RejectReason::InvalidTenant,
                    format!(
                        "bucket `{}` has no tenant in `bucket_tenants`",
                        short_string::preview(bucket)
                    ),
                )
            }),
            (TenantRule::Template(_), Some(tenant)) => Ok(tenant.to_owned()),
            (TenantRule::Template(_), None) => Err(reject(
                RejectReason::UnresolvedTemplate,
                "tenant: not resolved for this message",
            )),
        }
    }

    /// Where a message's dead letter goes. A tenant that does not resolve or is not
    /// valid (the reason it is dead-lettered, perhaps), and any tenant by bucket (a
    /// message may hold records of several), becomes the word `_`: a dead letter never
    /// carries the refused text in its key.
    pub fn deadletter_key(&self, meta: &Metadata) -> String {
        let tenant = self.transport_tenant(meta).ok();
        routing::deadletter_key(tenant.as_deref(), &self.source_name)
    }
}

/// Turns one message into its CloudEvents: one, or with `format = "s3-notification"` one
/// per record (none for a test event). A message is rejected as a whole.
pub fn normalize_message(
    mapping: &Mapping,
    meta: &Metadata,
    payload: &Bytes,
) -> Result<Vec<Normalized>, Reject> {
    if mapping.format != PayloadFormat::S3Notification {
        return normalize(mapping, meta, payload).map(|event| vec![event]);
    }
    if payload.len() > mapping.max_message_bytes {
        return normalize(mapping, meta, payload).map(|event| vec![event]);
    }
    let records = crate::s3notification::parse(payload)
        .map_err(|e| reject(RejectReason::InvalidNotification, e))?;
    // The tenant never comes from the document: without `bucket_tenants` it is the
    // transport's (the subject the notification arrived on, its headers), not the
    // record's object key.
    let transport_tenant = match &mapping.tenant {
        TenantRule::Template(_) if !records.is_empty() => Some(mapping.transport_tenant(meta)?),
        _ => None,
    };
    records
        .into_iter()
        .map(|record| {
            let tenant = mapping.record_tenant(&record.data.bucket, transport_tenant.as_deref())?;
            let data = Bytes::from(serde_json::to_vec(&record.data).expect("serializable"));
            let meta = Metadata {
                subject: Some(record.data.key.clone()),
                // Transport headers stay for tenant and type templates, but not a
                // binary CloudEvent's: the document is not one.
                headers: meta
                    .headers
                    .iter()
                    .filter(|(name, _)| !cloudevent::is_binary_attribute_header(name))
                    .cloned()
                    .collect(),
                content_type: Some("application/json".into()),
                time: record.time,
                id: Some(record.id),
                source_uri: format!("s3://{}", record.data.bucket),
                extensions: meta.extensions.clone(),
                received: meta.received,
                default_type: Some(record.event_name),
                no_data: false,
            };
            // The record's subject is its object key: `{subject[N]}` in `type` splits it
            // on `/`, as for `kind = "s3"`.
            normalize_with_tenant(mapping, &meta, &data, tenant, Some('/'))
        })
        .collect()
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
    let tenant = mapping.transport_tenant(meta)?;
    normalize_with_tenant(mapping, meta, payload, tenant, mapping.subject_separator)
}

/// `normalize` once the tenant is known (validated); `separator` splits `meta.subject`
/// for `{subject[N]}` in `type`.
fn normalize_with_tenant(
    mapping: &Mapping,
    meta: &Metadata,
    payload: &Bytes,
    tenant: String,
    separator: Option<char>,
) -> Result<Normalized, Reject> {
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
        // A passed-through event keeps its id: one that does not fit is refused, not
        // rewritten.
        short_string::check_event(&event)
            .map_err(|e| reject(RejectReason::TooLong, e.to_string()))?;
        let routing_key = routing::event_key(&tenant, &mapping.source_name, &event.ty)
            .map_err(|e| reject(RejectReason::TooLong, e))?;
        event
            .extensions
            .insert("tenant".into(), ExtensionValue::String(tenant));
        return Ok(Normalized { event, routing_key });
    }

    let (data, datacontenttype) = if meta.no_data {
        (Data::None, None)
    } else {
        let (data, datacontenttype) = classify(mapping.format, content_type, payload)?;
        (data, Some(datacontenttype))
    };
    let json = match &data {
        Data::Json(bytes) if mapping.event_type.needs_json() || mapping.time_pointer.is_some() => {
            serde_json::from_slice::<Value>(bytes).ok()
        }
        _ => None,
    };
    let input = TemplateInput {
        subject: meta.subject.as_deref(),
        separator,
        headers: &meta.headers,
        json: json.as_ref(),
    };
    let ty = match &meta.default_type {
        Some(ty) if !mapping.type_configured => ty.clone(),
        _ => mapping
            .event_type
            .resolve(&input)
            .map_err(|e| reject(RejectReason::UnresolvedTemplate, format!("type: {e}")))?,
    };
    // A configured `time_field` is the user saying which time matters, so it wins over
    // the transport's own time (e.g. the JetStream publish time); then the transport
    // time; then when we received it.
    let payload_time = mapping
        .time_pointer
        .as_deref()
        .and_then(|pointer| time_from_json(json.as_ref()?.pointer(pointer)?));
    // RFC 3339 has four-digit years: a time outside them (a bogus transport
    // timestamp, a huge `time_field` number) is unusable, like an unparsable one.
    let representable = |time: &DateTime<Utc>| (0..=9999).contains(&time.year());
    let time = payload_time
        .filter(representable)
        .or(meta.time.filter(representable))
        .unwrap_or(meta.received);

    let mut extensions = BTreeMap::new();
    for (name, value) in &meta.extensions {
        extensions.insert(name.clone(), ExtensionValue::String(value.clone()));
    }
    extensions.insert("tenant".into(), ExtensionValue::String(tenant.clone()));
    // A transport id too long for a message id becomes its digest (the same on every
    // redelivery); the original travels along while it is of a sensible size.
    let id = match &meta.id {
        Some(id) if !short_string::fits(id) => {
            if id.len() <= MAX_ORIGINAL_ID_BYTES {
                extensions.insert(
                    ORIGINAL_ID_EXTENSION.into(),
                    ExtensionValue::String(id.clone()),
                );
            }
            short_string::fitting_id(id).into_owned()
        }
        Some(id) => id.clone(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let event = CloudEvent {
        id,
        source: mapping
            .source_uri
            .clone()
            .unwrap_or_else(|| meta.source_uri.clone()),
        ty,
        datacontenttype,
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
    short_string::check_event(&event).map_err(|e| reject(RejectReason::TooLong, e.to_string()))?;
    let routing_key = routing::event_key(&tenant, &mapping.source_name, &event.ty)
        .map_err(|e| reject(RejectReason::TooLong, e))?;
    Ok(Normalized { event, routing_key })
}

/// The extension that keeps a transport id replaced by its digest.
pub const ORIGINAL_ID_EXTENSION: &str = "originalid";
/// The longest transport id kept in `originalid`; a longer one is known by its digest.
pub const MAX_ORIGINAL_ID_BYTES: usize = 4096;

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
        PayloadFormat::Json | PayloadFormat::S3Notification => match valid_json() {
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

#[cfg(test)]
mod tests;
