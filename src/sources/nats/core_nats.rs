//! `kind = "nats"`: a core NATS subscription, at most once, read into a bounded buffer.

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::connection::{NatsConnection, connect_with, server_label};
use super::headers::headers_of;
use crate::message::{Incoming, Metadata, NoAck, SourceError, find_header};
use crate::sources::common::context::{ConnectContext, Source, SourceMetrics};

/// `kind = "nats"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsKeys {
    /// Subject to subscribe to; wildcards `*` and `>` allowed.
    pub subject: String,
    /// Queue group, so several replicas share the subject.
    pub queue_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatsSpec {
    #[serde(flatten)]
    pub connection: NatsConnection,
    #[serde(flatten)]
    pub keys: NatsKeys,
}

struct CoreSource {
    buffered: tokio::sync::mpsc::UnboundedReceiver<async_nats::Message>,
    /// Payload bytes in `buffered`, shared with the reader that fills it.
    buffered_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: String,
    reader: tokio::task::JoinHandle<()>,
    // Kept so the connection lives as long as the subscription.
    _client: async_nats::Client,
}

impl Drop for CoreSource {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Core NATS has no flow control: the server pushes whatever is published, and a
/// subscriber that does not keep up would buffer without limit. A reader drains the
/// subscription into a buffer of at most `max_bytes` payload bytes and drops (and
/// counts, `bridge_events_dropped_total{reason="overflow"}`) what does not fit, as
/// core NATS's at-most-once contract allows.
fn spawn_reader(
    mut subscriber: async_nats::Subscriber,
    max_bytes: usize,
    metrics: SourceMetrics,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<async_nats::Message>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (sender, buffered) = tokio::sync::mpsc::unbounded_channel();
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = bytes.clone();
    let reader = tokio::spawn(async move {
        let mut dropped_since_warning = 0u64;
        while let Some(message) = subscriber.next().await {
            let size = message.payload.len();
            // One message always fits an empty buffer, whatever its size.
            let held = counted.load(Relaxed);
            if held > 0 && held + size > max_bytes {
                metrics.drop_overflow();
                dropped_since_warning += 1;
                if dropped_since_warning.is_power_of_two() {
                    tracing::warn!(
                        dropped = dropped_since_warning,
                        max_in_flight_bytes = max_bytes,
                        "core NATS messages arrive faster than the exchange takes them; dropping what does not fit (at-most-once)"
                    );
                }
                continue;
            }
            counted.fetch_add(size, Relaxed);
            if sender.send(message).is_err() {
                return;
            }
        }
    });
    (buffered, bytes, reader)
}

pub(super) async fn connect_core(
    spec: &NatsSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    // The client's own queue for the subscription is bounded too: what it has no room
    // for (a "slow consumer") it drops, and tells; that is counted like our overflow.
    let queue = (context.max_in_flight_bytes / context.max_message_bytes.max(1)).clamp(16, 65_536);
    let metrics = context.metrics.clone();
    let options = async_nats::ConnectOptions::new()
        .subscription_capacity(queue)
        .event_callback(move |event| {
            let metrics = metrics.clone();
            async move {
                if let async_nats::Event::SlowConsumer(_) = event {
                    metrics.drop_overflow();
                }
            }
        });
    let client = connect_with(&spec.connection, &context.bridge, options).await?;
    let subject = spec.keys.subject.clone();
    let subscriber = match &spec.keys.queue_group {
        Some(group) => client.queue_subscribe(subject, group.clone()).await,
        None => client.subscribe(subject).await,
    }
    .map_err(|e| SourceError::Subscription(e.to_string()))?;
    let (buffered, buffered_bytes, reader) = spawn_reader(
        subscriber,
        context.max_in_flight_bytes.max(1),
        context.metrics.clone(),
    );
    Ok(Box::new(CoreSource {
        buffered,
        buffered_bytes,
        server: server_label(&spec.connection.url),
        reader,
        _client: client,
    }))
}

#[async_trait]
impl Source for CoreSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        let message = self
            .buffered
            .recv()
            .await
            .ok_or_else(|| SourceError::Subscription("the subscription ended".into()))?;
        self.buffered_bytes
            .fetch_sub(message.payload.len(), std::sync::atomic::Ordering::Relaxed);
        let headers = headers_of(message.headers.as_ref());
        let subject = message.subject.to_string();
        let meta = Metadata {
            id: find_header(&headers, "Nats-Msg-Id").map(str::to_owned),
            content_type: find_header(&headers, "Content-Type").map(str::to_owned),
            source_uri: format!("nats://{}/{}", self.server, subject),
            subject: Some(subject),
            headers,
            time: None,
            extensions: Vec::new(),
            received: Utc::now(),
            default_type: None,
            no_data: false,
        };
        Ok(Incoming {
            payload: message.payload,
            meta,
            ack: Box::new(NoAck),
        })
    }
}
