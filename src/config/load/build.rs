//! From the parsed tables to the validated `Config`: the exchange checks, each bridge
//! with `[defaults]` applied, its kind's keys parsed through the catalog, and the checks
//! across bridges.

use std::collections::HashSet;

use serde_json::Value;

use super::secrets::Schema;
use super::{ConfigError, bridge_label};
use crate::config::{BridgeSpec, CommonKeys, Config, PayloadFormat, TopLevel, fields};
use crate::routing;
use crate::short_string::MAX_SHORT_STRING;
use crate::template::Template;

pub(super) fn build(schema: &Schema, top: TopLevel) -> Result<Config, ConfigError> {
    let exchange = top.exchange;
    let exchange_error = |key: &str, message: &str| ConfigError::Key {
        key: format!("exchange.{key}"),
        message: message.to_owned(),
    };
    if exchange.kind != "topic" {
        return Err(exchange_error(
            "kind",
            "only `topic` exchanges are supported (routing keys are event.<tenant>.<source>.<type>)",
        ));
    }
    if exchange.name.is_empty() {
        return Err(exchange_error("name", "must not be empty"));
    }
    for (key, name) in [
        ("name", Some(&exchange.name)),
        ("deadletter", exchange.deadletter.as_ref()),
        ("alternate_exchange", exchange.alternate_exchange.as_ref()),
    ] {
        if let Some(name) = name
            && name.len() > MAX_SHORT_STRING
        {
            return Err(exchange_error(
                key,
                &format!(
                    "is {} bytes; AMQP exchange names hold at most {MAX_SHORT_STRING}",
                    name.len()
                ),
            ));
        }
    }
    let url = exchange.url.expose();
    if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
        // lapin's message may quote the URL, password included.
        let e = e.replace(url, "<url>");
        return Err(exchange_error("url", &format!("not an AMQP URL: {e}")));
    }
    // A dead letter carries its sample plus bounded headers (DEADLETTER_HEADROOM).
    let deadletter_size = top
        .defaults
        .deadletter_sample_bytes
        .saturating_add(crate::config::DEADLETTER_HEADROOM);
    if deadletter_size > exchange.max_message_size {
        return Err(ConfigError::Key {
            key: "defaults.deadletter_sample_bytes".into(),
            message: format!(
                "a dead letter of {deadletter_size} bytes (the sample and its headers) would not fit `exchange.max_message_size` = {}",
                exchange.max_message_size
            ),
        });
    }
    if let Err(message) = tenant_template(&top.defaults.tenant) {
        return Err(ConfigError::Key {
            key: "defaults.tenant".into(),
            message,
        });
    }
    let mut names = HashSet::new();
    let mut bridges = Vec::with_capacity(top.bridge.len());
    for (index, raw) in top.bridge.into_iter().enumerate() {
        let spec = build_bridge(schema, raw, index, &top.defaults, exchange.max_message_size)?;
        spec.source
            .check(&spec, &exchange)
            .map_err(|message| ConfigError::Bridge {
                bridge: spec.name.clone(),
                message,
            })?;
        if !names.insert(spec.name.clone()) {
            return Err(ConfigError::Bridge {
                bridge: spec.name,
                message: "key `name`: another bridge has the same name".into(),
            });
        }
        bridges.push(spec);
    }
    schema
        .kinds
        .check_bridges(&bridges)
        .map_err(|(bridge, message)| ConfigError::Bridge { bridge, message })?;
    if let Some(url) = &top.webhook.public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ConfigError::Key {
            key: "webhook.public_url".into(),
            message: format!("`{url}` must be an http:// or https:// URL"),
        });
    }
    top.admin.validate()?;
    top.webhook.validate()?;
    Ok(Config {
        exchange,
        admin: top.admin,
        webhook: top.webhook,
        defaults: top.defaults,
        bridges,
    })
}

pub(super) fn build_bridge(
    schema: &Schema,
    raw: Value,
    index: usize,
    defaults: &crate::config::Defaults,
    exchange_max_message_size: usize,
) -> Result<BridgeSpec, ConfigError> {
    let label = bridge_label(&raw, index);
    let Value::Object(mut table) = raw else {
        return Err(ConfigError::Key {
            key: format!("bridge[{index}]"),
            message: "must be a table".into(),
        });
    };
    let error = |message: String| ConfigError::Bridge {
        bridge: label.clone(),
        message,
    };
    let common: CommonKeys =
        fields::parse(Value::Object(fields::take::<CommonKeys>(&mut table))).map_err(&error)?;
    let source = schema.kinds.parse(&common.kind, table).map_err(&error)?;

    let key_error = |key: &str, message: String| error(format!("key `{key}`: {message}"));
    if common.name.is_empty()
        || !common
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(key_error(
            "name",
            "must be non-empty and use only A-Z a-z 0-9 _ -".into(),
        ));
    }
    // The `<source>` word is used as it stands, like the tenant: never rewritten.
    let source_name = match &common.source_name {
        Some(source_name) => {
            routing::check_source(source_name).map_err(|e| key_error("source_name", e))?;
            source_name.clone()
        }
        None if !routing::is_valid_word(&common.name) => {
            return Err(key_error(
                "source_name",
                format!(
                    "the default, the bridge name, is not a valid <source> word ({}): set `source_name`",
                    routing::WORD_RULE
                ),
            ));
        }
        None => common.name.clone(),
    };
    let bucket_tenants = common.bucket_tenants;
    if let Some(bucket_tenants) = &bucket_tenants {
        if common.format != PayloadFormat::S3Notification {
            return Err(key_error(
                "bucket_tenants",
                "applies only to `format = \"s3-notification\"`".into(),
            ));
        }
        if common.tenant.is_some() {
            return Err(key_error(
                "bucket_tenants",
                "set either `tenant` or `bucket_tenants`: with `bucket_tenants` each record's tenant is its bucket's".into(),
            ));
        }
        if bucket_tenants.is_empty() {
            return Err(key_error(
                "bucket_tenants",
                "must map at least one bucket to its tenant".into(),
            ));
        }
        for (bucket, tenant) in bucket_tenants {
            routing::check_tenant(tenant)
                .map_err(|e| key_error(&format!("bucket_tenants.{bucket}"), e))?;
        }
    }
    let tenant = common.tenant.unwrap_or_else(|| defaults.tenant.clone());
    let tenant_template = tenant_template(&tenant).map_err(|e| key_error("tenant", e))?;
    let type_template = match &common.event_type {
        Some(text) => Some(Template::parse(text).map_err(|e| key_error("type", e.to_string()))?),
        None => None,
    };
    // `event.<tenant>.<source>.<type>`: refuse settings whose every key is too long
    // rather than dead-letter every message. Every value holds its template's literal
    // text, and escaping is byte by byte, so that text's word is a lower bound.
    let shortest_tenant = match bucket_tenants
        .as_ref()
        .and_then(|tenants| tenants.values().map(String::len).min())
    {
        Some(shortest) => shortest,
        None => tenant_template.literal_text().len().max(1),
    };
    let shortest_type = type_template.as_ref().map_or(1, |template| {
        routing::type_word(&template.literal_text()).len().max(1)
    });
    let shortest_key = "event...".len() + shortest_tenant + source_name.len() + shortest_type;
    if shortest_key > MAX_SHORT_STRING {
        return Err(key_error(
            "type",
            format!(
                "with this tenant and source_name every routing key would be at least {shortest_key} bytes; AMQP allows at most {MAX_SHORT_STRING}"
            ),
        ));
    }
    if let Some(content_type) = &common.content_type
        && content_type.len() > MAX_SHORT_STRING
    {
        return Err(key_error(
            "content_type",
            format!("must be at most {MAX_SHORT_STRING} bytes"),
        ));
    }
    if let Some(field) = &common.time_field
        && field.is_empty()
    {
        return Err(key_error(
            "time_field",
            "must name a payload field or a JSON pointer".into(),
        ));
    }
    if common.time_field.is_some() && common.format == PayloadFormat::Raw {
        return Err(key_error(
            "time_field",
            "needs JSON payloads, but `format = \"raw\"` never parses them".into(),
        ));
    }
    let max_in_flight = common.max_in_flight.unwrap_or(defaults.max_in_flight);
    if max_in_flight == 0 {
        return Err(key_error("max_in_flight", "must be at least 1".into()));
    }
    let max_in_flight_bytes = common
        .max_in_flight_bytes
        .unwrap_or(defaults.max_in_flight_bytes);
    if max_in_flight_bytes == 0 || max_in_flight_bytes > u32::MAX as usize {
        return Err(key_error(
            "max_in_flight_bytes",
            format!("must be 1 to {} (4 GiB)", u32::MAX),
        ));
    }
    let max_message_bytes = common
        .max_message_bytes
        .unwrap_or(defaults.max_message_bytes);
    if max_message_bytes == 0 {
        return Err(key_error("max_message_bytes", "must be at least 1".into()));
    }
    if max_message_bytes > exchange_max_message_size {
        return Err(key_error(
            "max_message_bytes",
            format!(
                "is larger than `exchange.max_message_size` = {exchange_max_message_size}, the largest message the exchange takes"
            ),
        ));
    }
    Ok(BridgeSpec {
        source_name,
        name: common.name,
        tenant,
        bucket_tenants,
        source_uri: common.source_uri,
        event_type: common.event_type,
        time_field: common.time_field,
        format: common.format,
        content_type: common.content_type,
        max_in_flight,
        max_in_flight_bytes,
        max_message_bytes,
        shutdown_timeout: common.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        backoff: common.backoff.unwrap_or_else(|| defaults.backoff.clone()),
        state_dir: defaults.state_dir.clone(),
        deadletter_sample_bytes: defaults.deadletter_sample_bytes,
        source,
    })
}

/// Checks a `tenant` setting (a bridge's or `[defaults]`): fixed text must be a valid
/// tenant as it stands; a template may take the transport's subject and headers, never
/// the payload, and its literal text must be tenant characters, or no message could
/// ever get a valid tenant.
pub(super) fn tenant_template(text: &str) -> Result<Template, String> {
    let template = Template::parse(text).map_err(|e| e.to_string())?;
    if template.needs_json() {
        return Err(
            "comes from configuration, the transport's subject or a header, never from the payload (`{json:...}`)"
                .into(),
        );
    }
    if template.is_fixed() {
        routing::check_tenant(text)?;
    } else {
        let literal = template.literal_text();
        if !literal.is_empty() && !routing::is_valid_word(&literal) {
            return Err(format!(
                "the fixed text `{}` of template `{text}` can never be part of a valid tenant ({})",
                crate::short_string::preview(&literal),
                routing::WORD_RULE
            ));
        }
    }
    Ok(template)
}
