//! The one RabbitMQ publisher all bridges share: a single connection in confirm mode,
//! persistent and `mandatory` publishes, reconnecting forever. `publish` waits while the
//! exchange is down, which is what makes bridges stop pulling (backpressure).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use sha2::Digest;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::cloudevent::{CloudEvent, STRUCTURED_CONTENT_TYPE_UTF8};
use crate::config::{ContentMode, ExchangeConfig};
use crate::metrics::Registry;
use crate::short_string::{BINARY_HEADER_PREFIX, TooLong, constant, cut, lower_hex, short_string};

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

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("no answer from the broker within {0:?}")]
    Timeout(std::time::Duration),
}

struct Manager {
    config: ExchangeConfig,
    sender: watch::Sender<Option<Current>>,
    broken: Arc<(AtomicU64, Notify)>,
    cancel: CancellationToken,
    last_error: Arc<Mutex<Option<String>>>,
    connects: Arc<AtomicU64>,
    registry: Arc<Registry>,
}

impl Manager {
    async fn run(self) {
        let mut backoff = Backoff::new(self.config.backoff.clone());
        let mut generation = 0u64;
        loop {
            // A broker that accepts TCP but never answers must not hang us: the connect
            // is bounded by confirm_timeout too.
            let timeout = self.config.confirm_timeout;
            let attempt = tokio::select! {
                result = tokio::time::timeout(timeout, self.connect()) => result
                    .unwrap_or_else(|_| Err(ConnectError::Timeout(timeout))),
                _ = self.cancel.cancelled() => break,
            };
            match attempt {
                Ok((connection, channel)) => {
                    generation += 1;
                    backoff.reset();
                    *self.last_error.lock().expect("lock") = None;
                    self.connects.fetch_add(1, Relaxed);
                    self.registry.exchange_up.set(1);
                    tracing::info!(exchange = %self.config.name, "connected to the exchange");
                    let mut events = connection.events_listener();
                    self.sender.send_replace(Some(Current {
                        generation,
                        channel: channel.clone(),
                    }));
                    let reason = loop {
                        tokio::select! {
                            _ = self.cancel.cancelled() => break None,
                            _ = self.broken.1.notified() => {
                                if self.broken.0.load(Relaxed) >= generation {
                                    break Some("a publish failed on this connection".to_string());
                                }
                            }
                            event = events.next() => match event {
                                Some(lapin::Event::Error(error)) => break Some(error.to_string()),
                                None => break Some("connection closed".to_string()),
                                Some(_) => {}
                            },
                        }
                    };
                    self.sender.send_replace(None);
                    self.registry.exchange_up.set(0);
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        connection.close(200, constant("broker-bridge reconnecting")),
                    )
                    .await;
                    match reason {
                        None => break,
                        Some(reason) => {
                            tracing::warn!(exchange = %self.config.name, %reason, "exchange connection lost; reconnecting");
                            *self.last_error.lock().expect("lock") = Some(reason);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(exchange = %self.config.name, %error, "cannot connect to the exchange; retrying");
                    *self.last_error.lock().expect("lock") = Some(error.to_string());
                }
            }
            if !backoff.wait(&self.cancel).await {
                break;
            }
        }
        self.registry.exchange_up.set(0);
    }

    async fn connect(&self) -> Result<(Connection, Channel), ConnectError> {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("broker-bridge"));
        let connection = Connection::connect(self.config.url.expose(), properties).await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare(&channel, &self.config.name, &self.config).await?;
            if let Some(deadletter) = &self.config.deadletter {
                declare(&channel, deadletter, &self.config).await?;
            }
            Ok::<_, lapin::Error>(channel)
        };
        match setup.await {
            Ok(channel) => Ok((connection, channel)),
            Err(error) => {
                let _ = connection.close(200, constant("setup failed")).await;
                Err(error.into())
            }
        }
    }
}

async fn declare(
    channel: &Channel,
    name: &str,
    config: &ExchangeConfig,
) -> Result<(), lapin::Error> {
    let mut arguments = FieldTable::default();
    if let Some(alternate) = &config.alternate_exchange {
        arguments.insert(
            constant("alternate-exchange"),
            AMQPValue::LongString(LongString::from(alternate.as_str())),
        );
    }
    // Exchange names are checked when the config is loaded.
    let name = short_string("the exchange name", name)
        .map_err(|e| lapin::Error::from(std::io::Error::other(e)))?;
    channel
        .exchange_declare(
            name,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: config.durable,
                passive: !config.declare,
                ..Default::default()
            },
            arguments,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(outbound: &Outbound, name: &str) -> Option<String> {
        match outbound.properties.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn dead_letters_always_fit() {
        let publisher = Publisher::start(
            ExchangeConfig {
                // Nothing listens there: encoding needs no connection.
                url: "amqp://127.0.0.1:1/%2f".into(),
                ..Default::default()
            },
            Arc::new(Registry::default()),
        );
        let detail = "é".repeat(3000);
        let subject = "s".repeat(70_000);
        let letter = |payload: &[u8], sample_bytes| DeadLetter {
            routing_key: "deadletter.acme.orders".into(),
            payload: bytes::Bytes::copy_from_slice(payload),
            content_type: Some("application/x-long-content-type-that-does-not-fit"),
            bridge: "orders",
            reason: "too_large",
            detail: &detail,
            subject: Some(&subject),
            sample_bytes,
        };
        let out = publisher.deadletter_message(letter(b"abc", usize::MAX));
        let error = header(&out, ERROR_HEADER).unwrap();
        assert!(error.len() <= MAX_DEADLETTER_HEADER_BYTES && error.ends_with('…'));
        assert!(header(&out, SUBJECT_HEADER).unwrap().len() <= MAX_DEADLETTER_HEADER_BYTES);
        assert_eq!(&out.body[..], b"abc", "a small payload travels whole");
        assert_eq!(header(&out, TRUNCATED_HEADER), None);

        let big = vec![7u8; 10_000];
        let out = publisher.deadletter_message(letter(&big, 100));
        assert_eq!(out.body.len(), 100);
        assert_eq!(header(&out, ORIGINAL_SIZE_HEADER).as_deref(), Some("10000"));
        assert_eq!(
            header(&out, ORIGINAL_SHA256_HEADER).map(|h| h.len()),
            Some(64)
        );
        assert_eq!(header(&out, TRUNCATED_HEADER).as_deref(), Some("true"));
        publisher.shutdown();
    }
}
