//! One message as every layer sees it: what a source read (`Incoming`: bytes, metadata
//! and the handle that acknowledges it), why it may be rejected, and how a source fails.
//! Sources, normalize, metrics and the exchange all import it; it imports none of them.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

/// One message from a source, with the handle that acknowledges it to its broker.
pub struct Incoming {
    pub payload: Bytes,
    pub meta: Metadata,
    pub ack: Box<dyn Acker>,
}

/// Acknowledges a message to its own broker. Called only after the exchange confirmed
/// the event made from it (or its dead-letter copy). Dropping it without `ack` leaves the
/// message unacknowledged, so the broker redelivers it.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), SourceError>;

    /// Acknowledges a message that was dead-lettered instead of published (its
    /// dead-letter copy is confirmed). A source that answers its sender (webhook) says
    /// so; the others ack as usual.
    async fn ack_dead_lettered(self: Box<Self>, reason: RejectReason) -> Result<(), SourceError> {
        let _ = reason;
        self.ack().await
    }
}

/// For sources without acknowledgements (core NATS: at-most-once).
pub struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("subscription lost: {0}")]
    Subscription(String),
    #[error("acknowledgement failed: {0}")]
    Ack(String),
    /// Starting would change a broker object in a way that loses or skips messages (or
    /// one we did not create); nothing was changed. Retried, so an operator's fix at
    /// the broker takes effect without a reload.
    #[error("refused: {0}")]
    Refused(String),
}

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
    /// The CloudEvent type the kind suggests (e.g. `com.amazonaws.s3.ObjectCreated`),
    /// used when the bridge sets no `type`.
    pub default_type: Option<String>,
    /// The message has no payload at all (a calendar tick without `data`): the event
    /// gets neither `data` nor `datacontenttype`.
    pub no_data: bool,
}

/// A transport header's value. Header names compare case-insensitively on every
/// transport (HTTP, NATS, Kafka and AMQP users spell them differently).
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Why a message cannot become a CloudEvent. The label is the metrics `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TooLarge,
    /// A value longer than its wire field allows (an id, a content type, a routing key).
    TooLong,
    /// broker-bridge panicked on the message (a bug, logged with a backtrace).
    InternalError,
    /// The exchange refused (nacked) the event made from it.
    RejectedByExchange,
    InvalidJson,
    UnresolvedTemplate,
    /// The tenant is not a valid routing word as it stands (or an s3-notification
    /// record's bucket has no tenant in `bucket_tenants`). Never rewritten: two
    /// different tenants must never share a routing word.
    InvalidTenant,
    InvalidCloudEvent,
    InvalidNotification,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::TooLarge,
        RejectReason::TooLong,
        RejectReason::InvalidJson,
        RejectReason::UnresolvedTemplate,
        RejectReason::InvalidTenant,
        RejectReason::InvalidCloudEvent,
        RejectReason::InvalidNotification,
        RejectReason::InternalError,
        RejectReason::RejectedByExchange,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::TooLong => "too_long",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::UnresolvedTemplate => "unresolved_template",
            RejectReason::InvalidTenant => "invalid_tenant",
            RejectReason::InvalidCloudEvent => "invalid_cloudevent",
            RejectReason::InvalidNotification => "invalid_notification",
            RejectReason::InternalError => "internal_error",
            RejectReason::RejectedByExchange => "rejected_by_exchange",
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
