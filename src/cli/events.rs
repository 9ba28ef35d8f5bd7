//! `broker-bridge emit` and `tail`: publish one event to the exchange, and print the
//! events that arrive on it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;

use broker_bridge::cloudevent::{
    CloudEvent, Data, ExtensionValue, format_time, is_json_content_type,
};
use broker_bridge::config::ExchangeConfig;
use broker_bridge::exchange::{Delivered, Publisher};
use broker_bridge::metrics::Registry;
use broker_bridge::routing;

use crate::print_stdout;

#[allow(clippy::too_many_arguments)]
pub async fn emit(
    exchange: ExchangeConfig,
    event_type: String,
    source: String,
    source_name: String,
    tenant: String,
    id: Option<String>,
    subject: Option<String>,
    data: Option<Bytes>,
    content_type: Option<String>,
) -> anyhow::Result<()> {
    if let Some(id) = &id {
        broker_bridge::short_string::short_string("the id", id)
            .map_err(|e| anyhow::anyhow!("option --id: {e}"))?;
    }
    let now = chrono::Utc::now();
    let (data, datacontenttype) = match data {
        None => (Data::None, content_type),
        Some(bytes) => {
            let json_ok = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            match content_type {
                Some(ct) if is_json_content_type(&ct) => {
                    if !json_ok {
                        bail!("--content-type {ct} says JSON, but the data is not JSON");
                    }
                    (Data::Json(bytes), Some(ct))
                }
                Some(ct) => (Data::Binary(bytes), Some(ct)),
                None if json_ok => (Data::Json(bytes), Some("application/json".into())),
                None => (Data::Binary(bytes), Some("application/octet-stream".into())),
            }
        }
    };
    let event = CloudEvent {
        id: id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        source,
        ty: event_type,
        datacontenttype,
        dataschema: None,
        subject,
        time: Some(format_time(&now)),
        time_utc: Some(now),
        extensions: [("tenant".to_owned(), ExtensionValue::String(tenant.clone()))].into(),
        data,
    };
    event.validate()?;
    broker_bridge::short_string::check_event(&event)
        .map_err(|e| anyhow::anyhow!("option --content-type: {e}"))?;
    let routing_key = routing::event_key(&tenant, &source_name, &event.ty)
        .map_err(|e| anyhow::anyhow!("options --type, --tenant, --source-name: {e}"))?;
    let publisher = Publisher::start(exchange, Arc::new(Registry::default()));
    let message = publisher.event_message(&event, routing_key.clone());
    let outcome = tokio::time::timeout(Duration::from_secs(30), publisher.publish(&message))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no confirm from the exchange within 30s{}",
                publisher
                    .last_error()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )
        })??;
    publisher.shutdown();
    print_stdout(&format!("{routing_key} {}\n", event.id))?;
    if outcome == Delivered::Unroutable {
        eprintln!("warning: confirmed, but no queue is bound for {routing_key}");
    }
    Ok(())
}

pub async fn tail(
    exchange: ExchangeConfig,
    pattern: String,
    count: Option<u64>,
) -> anyhow::Result<()> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(
        exchange.url.expose(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .context("connecting to the exchange")?;
    let channel = connection.create_channel().await?;
    let short = |what, value: &str| {
        broker_bridge::short_string::short_string(what, value).map_err(anyhow::Error::from)
    };
    let queue = channel
        .queue_declare(
            broker_bridge::short_string::constant(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            short("the exchange name", &exchange.name)?,
            short("the pattern", &pattern)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding to exchange `{}`", exchange.name))?;
    eprintln!("tailing `{}` with pattern {pattern}", exchange.name);
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            broker_bridge::short_string::constant("broker-bridge-tail"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let mut line = format!("{} ", delivery.routing_key);
        if let Some(headers) = delivery.properties.headers() {
            for (name, value) in headers.inner() {
                if let lapin::types::AMQPValue::LongString(text) = value {
                    line.push_str(&format!("{name}={} ", text));
                }
            }
        }
        line.push_str(&String::from_utf8_lossy(&delivery.data));
        line.push('\n');
        if !print_stdout(&line)? {
            break;
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}
