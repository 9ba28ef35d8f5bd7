//! The one RabbitMQ publisher all bridges share: a single connection in confirm mode,
//! persistent and `mandatory` publishes, reconnecting forever. `publish` waits while the
//! exchange is down, which is what makes bridges stop pulling (backpressure).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use sha2::Digest;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::cloudevent::{CloudEvent, STRUCTURED_CONTENT_TYPE_UTF8};
use crate::config::{ContentMode, ExchangeConfig};
use crate::metrics::Registry;
use crate::short_string::{BINARY_HEADER_PREFIX, TooLong, constant, cut, lower_hex, short_string};

mod connection;

use connection::Manager;

/// A value `normalize` should have kept within bounds but did not: logged, left out.
fn fitting(checked: Result<ShortString, TooLong>) -> Option<ShortString> {
    checked
        .inspect_err(|error| tracing::error!(%error, "left out of the message (a bug: it should have been checked earlier)"))
        .ok()
}

/// Header naming why a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-bridge-error";
/// Header with the short reason label (the metrics `reason`).
pub const REASON_HEADER: &str = "x-bridge-reason";
/// Header with the bridge that dead-lettered the message.
pub const BRIDGE_HEADER: &str = "x-bridge-name";
/// Header with the subject/topic/routing key the message arrived on.
pub const SUBJECT_HEADER: &str = "x-bridge-subject";
/// Headers of a dead letter that carries only the start of its message.
pub const ORIGINAL_SIZE_HEADER: &str = "x-bridge-original-size";
pub const ORIGINAL_SHA256_HEADER: &str = "x-bridge-original-sha256";
pub const TRUNCATED_HEADER: &str = "x-bridge-truncated";
/// The most bytes of text a dead-letter header carries (the error, the subject).
pub const MAX_DEADLETTER_HEADER_BYTES: usize = 1024;

/// A message that could not become a CloudEvent, and why.
pub struct DeadLetter<'a> {
    pub routing_key: String,
    /// The original bytes.
    pub payload: bytes::Bytes,
    pub content_type: Option<&'a str>,
    pub bridge: &'a str,
    /// The short reason label (the metrics `reason`).
    pub reason: &'a str,
    /// What exactly was wrong, for people.
    pub detail: &'a str,
    pub subject: Option<&'a str>,
    /// A payload longer than this travels as an envelope: its first `sample_bytes`
    /// bytes, its size and its SHA-256.
    pub sample_bytes: usize,
}

/// A message ready to publish: exchange, routing key, properties and body.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: bytes::Bytes,
}

/// What the exchange did with a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Confirmed and routed to at least one queue.
    Routed,
    /// Confirmed but returned: no queue is bound for its routing key.
    Unroutable,
}

/// Why one publish attempt failed. All of them are retried.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker nacked the message")]
    Nacked,
    #[error("no confirm within {0:?}")]
    Timeout(std::time::Duration),
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("publisher shut down")]
    ShutDown,
    #[error("cannot encode the message: {0}")]
    Unencodable(String),
    #[error("the message is {size} bytes, over exchange.max_message_size = {limit}")]
    TooLarge { size: usize, limit: usize },
}

impl PublishError {
    /// Whether publishing this same message again cannot succeed: the broker refused
    /// it, or it can never be sent. Anything else (a lost connection, a missing
    /// confirm) is worth retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PublishError::Nacked | PublishError::Unencodable(_) | PublishError::TooLarge { .. }
        )
    }
}

#[derive(Clone)]
struct Current {
    generation: u64,
    channel: Channel,
}

pub struct Publisher {
    config: ExchangeConfig,
    current: watch::Receiver<Option<Current>>,
    broken: Arc<(AtomicU64, Notify)>,
    cancel: CancellationToken,
    last_error: Arc<Mutex<Option<String>>>,
    connects: Arc<AtomicU64>,
}

impl Publisher {
    /// Starts connecting in the background and returns at once.
    pub fn start(config: ExchangeConfig, registry: Arc<Registry>) -> Arc<Publisher> {
        let (sender, current) = watch::channel(None);
        let publisher = Arc::new(Publisher {
            config: config.clone(),
            current,
            broken: Arc::new((AtomicU64::new(0), Notify::new())),
            cancel: CancellationToken::new(),
            last_error: Arc::new(Mutex::new(None)),
            connects: Arc::new(AtomicU64::new(0)),
        });
        let manager = Manager {
            config,
            sender,
            broken: publisher.broken.clone(),
            cancel: publisher.cancel.clone(),
            last_error: publisher.last_error.clone(),
            connects: publisher.connects.clone(),
            registry,
        };
        tokio::spawn(manager.run());
        publisher
    }

    pub fn config(&self) -> &ExchangeConfig {
        &self.config
    }

    pub fn is_connected(&self) -> bool {
        self.current.borrow().is_some()
    }

    /// The last connection error, without secrets (it is shown in `/bridges`, `/readyz`
    /// and by `emit`).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .expect("lock")
            .as_deref()
            .map(crate::secret::scrub)
    }

    /// How many times the connection was (re)established.
    pub fn connects(&self) -> u64 {
        self.connects.load(Relaxed)
    }

    /// Closes the connection and stops reconnecting.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits until connected, or until the publisher is shut down (`Err`).
    pub async fn connected(&self) -> Result<(), PublishError> {
        let mut current = self.current.clone();
        tokio::select! {
            result = current.wait_for(Option::is_some) => result
                .map(|_| ())
                .map_err(|_| PublishError::ShutDown),
            _ = self.cancel.cancelled() => Err(PublishError::ShutDown),
        }
    }

    /// One publish attempt: waits for a connection, publishes, waits for the confirm.
    pub async fn publish(&self, message: &Outbound) -> Result<Delivered, PublishError> {
        self.connected().await?;
        self.send(message).await?.confirmed().await
    }

    /// The first half of a publish: hands the message to the current connection. Never
    /// waits for a connection (an error when there is none) and is bounded by
    /// `confirm_timeout`, so callers need not race it against anything: abandoning it
    /// midway could let the event out while its source message is never acked.
    /// Calling `send` in order keeps events in order on the exchange; the confirms can
    /// then be awaited concurrently.
    pub async fn send(&self, message: &Outbound) -> Result<PendingConfirm, PublishError> {
        // RabbitMQ closes the channel (every bridge's) on a message over its limit.
        if message.body.len() > self.config.max_message_size {
            return Err(PublishError::TooLarge {
                size: message.body.len(),
                limit: self.config.max_message_size,
            });
        }
        let Some(Current {
            generation,
            channel,
        }) = self.current.borrow().clone()
        else {
            return Err(PublishError::Connection("not connected".into()));
        };
        // Both are bounded before they get here (config validation, `routing`); a value
        // that still does not fit is an error for this message, never a panic.
        let unfit = |e: TooLong| PublishError::Unencodable(e.to_string());
        let exchange = short_string("the exchange name", &message.exchange).map_err(unfit)?;
        let routing_key = short_string("the routing key", &message.routing_key).map_err(unfit)?;
        let publish = channel.basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &message.body,
            message.properties.clone(),
        );
        let confirm = match tokio::time::timeout(self.config.confirm_timeout, publish).await {
            Ok(sent) => sent.map_err(|error| self.broken(generation, error))?,
            Err(_) => {
                // The socket takes nothing: treat the connection as gone.
                report_broken(&self.broken, generation);
                return Err(PublishError::Timeout(self.config.confirm_timeout));
            }
        };
        Ok(PendingConfirm {
            broken: self.broken.clone(),
            timeout: self.config.confirm_timeout,
            generation,
            confirm,
        })
    }

    fn broken(&self, generation: u64, error: lapin::Error) -> PublishError {
        report_broken(&self.broken, generation);
        PublishError::Connection(error.to_string())
    }

    /// The exchange that dead letters go to.
    pub fn deadletter_exchange(&self) -> &str {
        self.config
            .deadletter
            .as_deref()
            .unwrap_or(&self.config.name)
    }

    /// Encodes an event for the exchange (structured or binary mode, per config).
    pub fn event_message(&self, event: &CloudEvent, routing_key: String) -> Outbound {
        // `normalize` made every short string of the event fit (`check_event`); a value
        // that still does not is left out rather than cut.
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = fitting(short_string("the event id", &event.id)) {
            properties = properties.with_message_id(id);
        }
        if let Some(time) = event.time_utc {
            properties = properties.with_timestamp(time.timestamp().max(0) as u64);
        }
        let body = match self.config.content_mode {
            ContentMode::Structured => {
                properties = properties.with_content_type(constant(STRUCTURED_CONTENT_TYPE_UTF8));
                bytes::Bytes::from(event.to_structured_json())
            }
            ContentMode::Binary => {
                let mut headers = FieldTable::default();
                for (name, value) in event.binary_attributes() {
                    let header = format!("{BINARY_HEADER_PREFIX}{name}");
                    if let Some(header) = fitting(short_string("a header name", &header)) {
                        headers.insert(header, AMQPValue::LongString(LongString::from(value)));
                    }
                }
                properties = properties.with_headers(headers);
                if let Some(content_type) = event
                    .datacontenttype
                    .as_deref()
                    .and_then(|ct| fitting(short_string("datacontenttype", ct)))
                {
                    properties = properties.with_content_type(content_type);
                }
                event.binary_body()
            }
        };
        Outbound {
            exchange: self.config.name.clone(),
            routing_key,
            properties,
            body,
        }
    }

    /// The dead-letter copy of a message: original bytes and content type, the reason.
    /// It always fits: header texts are capped, and a payload over `sample_bytes`
    /// travels as its first bytes with its size and SHA-256.
    pub fn deadletter_message(&self, letter: DeadLetter<'_>) -> Outbound {
        let mut headers = FieldTable::default();
        let mut put = |name: &'static str, value: &str| {
            headers.insert(
                constant(name),
                AMQPValue::LongString(LongString::from(&*capped(
                    value,
                    MAX_DEADLETTER_HEADER_BYTES,
                ))),
            );
        };
        put(ERROR_HEADER, &crate::secret::scrub(letter.detail));
        put(REASON_HEADER, letter.reason);
        put(BRIDGE_HEADER, letter.bridge);
        if let Some(subject) = letter.subject {
            put(SUBJECT_HEADER, subject);
        }
        // Whatever the reason, the body leaves room for the headers under the exchange's
        // limit (an invalid message may be as large as max_message_bytes allows).
        let sample_bytes = letter.sample_bytes.min(
            self.config
                .max_message_size
                .saturating_sub(crate::config::DEADLETTER_HEADROOM),
        );
        let mut body = letter.payload;
        if body.len() > sample_bytes {
            let digest = sha2::Sha256::digest(&body);
            put(ORIGINAL_SIZE_HEADER, &body.len().to_string());
            put(ORIGINAL_SHA256_HEADER, &lower_hex(&digest));
            put(TRUNCATED_HEADER, "true");
            body.truncate(sample_bytes);
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        // The original content type is outside data: kept when it fits, else left out
        // (the dead letter must go out whatever came in).
        if let Some(content_type) = letter
            .content_type
            .and_then(|ct| fitting(short_string("the content type", ct)))
        {
            properties = properties.with_content_type(content_type);
        }
        Outbound {
            exchange: self.deadletter_exchange().to_owned(),
            routing_key: letter.routing_key,
            properties,
            body,
        }
    }
}

/// `text`, cut to at most `max` bytes on a character boundary (with `…` when cut).
fn capped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    format!("{}…", cut(text, max - '…'.len_utf8())).into()
}

/// Tells the connection manager that the connection of `generation` failed.
fn report_broken(broken: &(AtomicU64, Notify), generation: u64) {
    broken.0.fetch_max(generation, Relaxed);
    broken.1.notify_one();
}

/// A message handed to the broker, waiting for its confirm.
pub struct PendingConfirm {
    broken: Arc<(AtomicU64, Notify)>,
    timeout: std::time::Duration,
    generation: u64,
    confirm: lapin::PublisherConfirm,
}

impl PendingConfirm {
    pub async fn confirmed(self) -> Result<Delivered, PublishError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.confirm).await {
            Err(_) => {
                // A missing confirm means the channel is stuck or gone: start over.
                report_broken(&self.broken, self.generation);
                Err(PublishError::Timeout(timeout))
            }
            Ok(Err(error)) => {
                report_broken(&self.broken, self.generation);
                Err(PublishError::Connection(error.to_string()))
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(Delivered::Routed),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Ok(Delivered::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                // Cannot happen on a confirm-mode channel; treat it as a broken channel.
                report_broken(&self.broken, self.generation);
                Err(PublishError::Connection(
                    "channel is not in confirm mode".into(),
                ))
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
