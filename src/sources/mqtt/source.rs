//! The source of one connection: each PUBLISH becomes an `Incoming`, with its id, its
//! MQTT 5 properties as headers and, for QoS 1, its acknowledgement.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{mpsc, watch};

use super::ack::{AckState, MqttAck};
use super::client::Arrived;
use super::session::digest;
use crate::cloudevent::is_valid_attribute_name;
use crate::message::{Acker, Incoming, Metadata, NoAck, SourceError};
use crate::sources::common::context::Source;

pub(super) struct MqttSource {
    pub(super) queue: mpsc::Receiver<Arrived>,
    pub(super) failed: watch::Receiver<Option<String>>,
    pub(super) acks: Arc<AckState>,
    /// `mqtt://host:port`, the start of the default CloudEvent source.
    pub(super) origin: String,
}

#[async_trait]
impl Source for MqttSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        let arrived = tokio::select! {
            // A failed connection wins over queued messages: those are unacknowledged
            // and the broker resends them on the next connection.
            biased;
            reason = self.failed.wait_for(Option::is_some) => {
                let reason = reason
                    .map(|r| r.clone().unwrap_or_default())
                    .unwrap_or_else(|_| "the connection task ended".into());
                return Err(SourceError::Subscription(format!("MQTT connection lost: {reason}")));
            }
            arrived = self.queue.recv() => arrived.ok_or_else(|| {
                SourceError::Subscription("MQTT connection task ended".into())
            })?,
        };
        Ok(self.incoming(arrived))
    }
}

impl MqttSource {
    fn incoming(&self, arrived: Arrived) -> Incoming {
        let received = Utc::now();
        let (id, ack): (Option<String>, Box<dyn Acker>) = match arrived.pkid {
            None => (None, Box::new(NoAck)),
            Some(pkid) => {
                let id = self.acks.session.lock().expect("session lock").id_for(
                    pkid,
                    arrived.dup,
                    digest(&arrived),
                );
                let ticket = self
                    .acks
                    .order
                    .lock()
                    .expect("order lock")
                    .push((pkid, id.clone()));
                let ack = MqttAck {
                    acks: self.acks.clone(),
                    ticket,
                };
                (Some(id), Box::new(ack))
            }
        };
        let meta = Metadata {
            source_uri: format!("{}/{}", self.origin, arrived.topic),
            subject: Some(arrived.topic),
            headers: with_cloudevent_aliases(arrived.user_properties),
            content_type: arrived.content_type,
            // MQTT gives no message time: normalize uses the receive time.
            time: None,
            id,
            extensions: Vec::new(),
            received,
            default_type: None,
            no_data: false,
        };
        Incoming {
            payload: arrived.payload,
            meta,
            ack,
        }
    }
}

/// The CloudEvents MQTT 5 binding puts the attributes in user properties without a
/// prefix (`specversion`, `id`, `source`, `type`, extensions). The one parser of inbound
/// binary events (`cloudevent::parse_binary`) reads prefixed headers, so when the
/// properties carry `specversion`, each property with an attribute name is also given
/// as `ce-<name>`. The originals stay for `{header:NAME}` templates.
pub(super) fn with_cloudevent_aliases(
    mut properties: Vec<(String, String)>,
) -> Vec<(String, String)> {
    if properties.iter().any(|(name, _)| name == "specversion") {
        let aliases: Vec<(String, String)> = properties
            .iter()
            .filter(|(name, _)| is_valid_attribute_name(name))
            .map(|(name, value)| (format!("ce-{name}"), value.clone()))
            .collect();
        properties.extend(aliases);
    }
    properties
}
