//! The message stream: each partition's reader moves its records into one channel,
//! and the source turns each record into an `Incoming` (id, subject, source, time,
//! headers, partition key) with a handle that confirms it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::DropGuard;

use super::consumer::{PartitionQueue, Shared};
use super::offsets::KafkaAck;
use crate::message::{Incoming, Metadata, SourceError};
use crate::sources::common::context::Source;
use crate::sources::common::in_order::Ticket;

/// One record, owned, on its way from a partition's reader to `next`.
pub(super) struct Record {
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) generation: u64,
    pub(super) payload: Bytes,
    pub(super) key: Option<Vec<u8>>,
    pub(super) headers: Vec<(String, String)>,
    /// Milliseconds since the epoch (create or log-append time).
    pub(super) timestamp: Option<i64>,
}

impl Record {
    fn read(message: &BorrowedMessage<'_>, topic: &Arc<str>, generation: u64) -> Record {
        Record {
            topic: topic.clone(),
            partition: message.partition(),
            offset: message.offset(),
            generation,
            payload: message
                .payload()
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
            key: message.key().map(<[u8]>::to_vec),
            headers: message.headers().map(header_texts).unwrap_or_default(),
            timestamp: message.timestamp().to_millis(),
        }
    }
}

/// Header values as text. A header without a value is empty text; a value that is
/// not UTF-8 cannot be a text attribute or template input, so it is left out.
pub(super) fn header_texts<H: Headers>(headers: &H) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|header| match header.value {
            None => Some((header.key.to_owned(), String::new())),
            Some(value) => std::str::from_utf8(value)
                .ok()
                .map(|text| (header.key.to_owned(), text.to_owned())),
        })
        .collect()
}

/// Moves one partition's records, in order, into the source's channel.
pub(super) struct Reader {
    pub(super) queue: PartitionQueue,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) generation: u64,
    pub(super) records: mpsc::Sender<Record>,
}

impl Reader {
    pub(super) async fn run(self) {
        loop {
            let record = match self.queue.recv().await {
                Ok(message) => Record::read(&message, &self.topic, self.generation),
                Err(error) => {
                    // Reported for the partition (an offset reset, a fetch error);
                    // librdkafka carries on by itself.
                    tracing::warn!(topic = %self.topic, partition = self.partition, %error, "Kafka reported a partition error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if self.records.send(record).await.is_err() {
                return; // the source is gone
            }
        }
    }
}

/// Ends the connection once the source and every handle are dropped.
pub(super) struct Link {
    pub(super) _close: DropGuard,
}

pub(super) struct KafkaSource {
    pub(super) shared: Arc<Shared>,
    pub(super) records: mpsc::Receiver<Record>,
    pub(super) failed: watch::Receiver<Option<String>>,
    pub(super) link: Arc<Link>,
    pub(super) cluster: String,
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        loop {
            let record = tokio::select! {
                // A failure wins over waiting records: they are not stored, so they
                // are read again after the reconnect.
                biased;
                reason = self.failed.wait_for(Option::is_some) => {
                    let reason = reason
                        .map(|r| r.clone().unwrap_or_default())
                        .unwrap_or_else(|_| "the consumer is gone".into());
                    return Err(SourceError::Subscription(reason));
                }
                record = self.records.recv() => record.ok_or_else(|| {
                    SourceError::Subscription("the partition readers stopped".into())
                })?,
            };
            let ticket = {
                let mut partitions = self.shared.lock();
                let ticket = partitions.take(
                    &record.topic,
                    record.partition,
                    record.generation,
                    record.offset,
                );
                if ticket.is_some() {
                    self.shared.update_lag(&partitions);
                }
                ticket
            };
            // `None`: the partition was revoked since the record was read; its owner
            // reads it again.
            if let Some(ticket) = ticket {
                return Ok(self.incoming(record, ticket));
            }
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.shared.detached.store(true, Relaxed);
    }
}

impl KafkaSource {
    fn incoming(&self, record: Record, ticket: Ticket) -> Incoming {
        let meta = metadata(&record, &self.cluster, Utc::now());
        Incoming {
            payload: record.payload,
            meta,
            ack: Box::new(KafkaAck {
                shared: self.shared.clone(),
                topic: record.topic,
                partition: record.partition,
                generation: record.generation,
                offset: record.offset,
                ticket,
                done: false,
                _link: self.link.clone(),
            }),
        }
    }
}

/// The CloudEvent side of a record: id, subject, source, time, headers, partition key.
pub(super) fn metadata(record: &Record, cluster: &str, received: DateTime<Utc>) -> Metadata {
    let topic = &*record.topic;
    let content_type = crate::message::find_header(&record.headers, "content-type")
        .filter(|value| !value.is_empty())
        .map(str::to_owned);
    let extensions = match &record.key {
        Some(key) if !key.is_empty() => vec![("partitionkey".to_owned(), key_text(key))],
        _ => Vec::new(),
    };
    Metadata {
        subject: Some(topic.to_owned()),
        headers: record.headers.clone(),
        content_type,
        time: record
            .timestamp
            .and_then(|millis| Utc.timestamp_millis_opt(millis).single()),
        id: Some(format!("{topic}:{}:{}", record.partition, record.offset)),
        source_uri: format!("kafka://{cluster}/{topic}"),
        extensions,
        received,
        default_type: None,
        no_data: false,
    }
}

/// The record key as the `partitionkey` extension, which is text: UTF-8 keys as they
/// are, other keys in base64.
fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_owned(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(key),
    }
}
