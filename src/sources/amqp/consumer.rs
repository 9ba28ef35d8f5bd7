//! Consuming: each delivery becomes an `Incoming` whose ack handle `basic.ack`s it on
//! the channel that delivered it.

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::ShortString;
use lapin::{Channel, Connection};

use super::headers::{PROPERTY_HEADERS, headers_of};
use crate::message::{Acker, Incoming, Metadata, SourceError};
use crate::sources::common::context::Source;

pub(super) struct AmqpSource {
    consumer: lapin::Consumer,
    /// Cloned into every ack handle, which keeps the channel open while messages are in
    /// flight, even after the source itself is dropped (a draining bridge).
    channel: Channel,
    source_uri: String,
    _connection: Connection,
}

impl AmqpSource {
    /// The source of `consumer`, which keeps `connection` open as long as it lives.
    pub(super) fn new(
        consumer: lapin::Consumer,
        channel: Channel,
        source_uri: String,
        connection: Connection,
    ) -> AmqpSource {
        AmqpSource {
            consumer,
            channel,
            source_uri,
            _connection: connection,
        }
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        let delivery = match self.consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(SourceError::Subscription(error.to_string())),
            None => {
                return Err(SourceError::Subscription(
                    "the broker cancelled the consumer (was the queue deleted?)".into(),
                ));
            }
        };
        let meta = metadata(&delivery, &self.source_uri, Utc::now());
        let Delivery { data, acker, .. } = delivery;
        Ok(Incoming {
            payload: data.into(),
            meta,
            ack: Box::new(AmqpAck {
                acker,
                _channel: self.channel.clone(),
            }),
        })
    }
}

struct AmqpAck {
    acker: lapin::Acker,
    _channel: Channel,
}

#[async_trait]
impl Acker for AmqpAck {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SourceError::Ack(
                "the channel that delivered the message is closed; RabbitMQ redelivers it".into(),
            )),
            Err(error) => Err(SourceError::Ack(error.to_string())),
        }
    }
}

/// What the bridge needs to know about a delivery: routing key, headers, properties.
pub(super) fn metadata(delivery: &Delivery, source_uri: &str, received: DateTime<Utc>) -> Metadata {
    let properties = &delivery.properties;
    let text = |value: &Option<ShortString>| {
        value
            .as_ref()
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut headers = headers_of(properties);
    headers.retain(|(name, _)| {
        !PROPERTY_HEADERS
            .iter()
            .any(|property| name.eq_ignore_ascii_case(property))
    });
    for (name, value) in PROPERTY_HEADERS.into_iter().zip([
        properties.kind(),
        properties.app_id(),
        properties.user_id(),
        properties.correlation_id(),
    ]) {
        if let Some(value) = text(value) {
            headers.push((name.to_owned(), value));
        }
    }
    let routing_key = delivery.routing_key.as_str();
    Metadata {
        subject: (!routing_key.is_empty()).then(|| routing_key.to_owned()),
        headers,
        content_type: text(properties.content_type()),
        time: properties.timestamp().and_then(time_of),
        id: text(properties.message_id()),
        source_uri: source_uri.to_owned(),
        extensions: Vec::new(),
        received,
        default_type: None,
        no_data: false,
    }
}

/// The `timestamp` property: Unix seconds. 0 means unset to many clients. A value past
/// the year 5138 in seconds is read as milliseconds, which some clients send.
pub(super) fn time_of(seconds: u64) -> Option<DateTime<Utc>> {
    if seconds == 0 {
        return None;
    }
    let seconds = i64::try_from(seconds).ok()?;
    if seconds > 100_000_000_000 {
        Utc.timestamp_millis_opt(seconds).single()
    } else {
        Utc.timestamp_opt(seconds, 0).single()
    }
}
