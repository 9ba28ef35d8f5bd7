//! Source kinds behind one `Source` trait. A kind's module owns its config struct, its
//! connection and its acknowledgement; it knows nothing of other kinds or of the exchange.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "calendar")]
pub mod calendar;
pub mod in_order;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "s3")]
pub mod s3;
pub mod state_file;
#[cfg(feature = "webhook")]
pub mod webhook;
#[cfg(feature = "webhook")]
pub mod webhook_auth;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{BridgeSpec, ExchangeConfig};
use crate::normalize::Metadata;

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
    async fn ack_dead_lettered(
        self: Box<Self>,
        reason: crate::normalize::RejectReason,
    ) -> Result<(), SourceError> {
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

/// A connected source.
#[async_trait]
pub trait Source: Send {
    /// The next message. An error means the connection is lost: the bridge reconnects.
    async fn next(&mut self) -> Result<Incoming, SourceError>;
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

/// How long `verify_position` waits for a broker before calling the spec unverified.
pub const VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a source's broker says about starting a bridge with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Starting moves no position (or the kind keeps none at its broker).
    Safe,
    /// The broker could not be asked; the bridge checks again when it connects.
    Unverified(String),
    /// Starting would move a position or change an object we did not create.
    Refused(String),
}

/// The kind-specific part of a bridge's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SourceSpec {
    #[cfg(feature = "nats")]
    Nats(nats::NatsSpec),
    #[cfg(feature = "nats")]
    JetStream(nats::JetStreamSpec),
    #[cfg(feature = "mqtt")]
    Mqtt(mqtt::MqttSpec),
    #[cfg(feature = "amqp")]
    Amqp(amqp::AmqpSpec),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaSpec),
    #[cfg(feature = "s3")]
    S3(s3::S3Spec),
    #[cfg(feature = "webhook")]
    Webhook(webhook::WebhookSpec),
    #[cfg(feature = "calendar")]
    Calendar(calendar::CalendarSpec),
}

/// Every kind this build knows, for error messages.
pub const KINDS: &[&str] = &[
    #[cfg(feature = "nats")]
    "nats",
    #[cfg(feature = "nats")]
    "jetstream",
    #[cfg(feature = "mqtt")]
    "mqtt",
    #[cfg(feature = "amqp")]
    "amqp",
    #[cfg(feature = "kafka")]
    "kafka",
    #[cfg(feature = "s3")]
    "s3",
    #[cfg(feature = "webhook")]
    "webhook",
    #[cfg(feature = "calendar")]
    "calendar",
];

impl SourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "nats")]
            SourceSpec::Nats(_) => "nats",
            #[cfg(feature = "nats")]
            SourceSpec::JetStream(_) => "jetstream",
            #[cfg(feature = "mqtt")]
            SourceSpec::Mqtt(_) => "mqtt",
            #[cfg(feature = "amqp")]
            SourceSpec::Amqp(_) => "amqp",
            #[cfg(feature = "kafka")]
            SourceSpec::Kafka(_) => "kafka",
            #[cfg(feature = "s3")]
            SourceSpec::S3(_) => "s3",
            #[cfg(feature = "webhook")]
            SourceSpec::Webhook(_) => "webhook",
            #[cfg(feature = "calendar")]
            SourceSpec::Calendar(_) => "calendar",
        }
    }

    /// What `{subject[N]}` splits this kind's subject on: `.` for NATS subjects and AMQP
    /// routing keys, `/` for MQTT topics and S3 keys; `None` for Kafka topics (one
    /// token; `.` is an ordinary character of a topic name) and for kinds without a
    /// subject (webhook, calendar). Only this separator: `a.b/c` on MQTT is the levels
    /// `a.b` and `c`, so one level can never reach into the position of another.
    pub fn subject_separator(&self) -> Option<char> {
        match self {
            #[cfg(feature = "nats")]
            SourceSpec::Nats(_) | SourceSpec::JetStream(_) => Some('.'),
            #[cfg(feature = "amqp")]
            SourceSpec::Amqp(_) => Some('.'),
            #[cfg(feature = "mqtt")]
            SourceSpec::Mqtt(_) => Some('/'),
            #[cfg(feature = "s3")]
            SourceSpec::S3(_) => Some('/'),
            #[cfg(feature = "kafka")]
            SourceSpec::Kafka(_) => None,
            #[cfg(feature = "webhook")]
            SourceSpec::Webhook(_) => None,
            #[cfg(feature = "calendar")]
            SourceSpec::Calendar(_) => None,
        }
    }

    /// A line for `check`: delivery guarantee and where it reads from.
    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "nats")]
            SourceSpec::Nats(spec) => spec.describe(),
            #[cfg(feature = "nats")]
            SourceSpec::JetStream(spec) => spec.describe(),
            #[cfg(feature = "mqtt")]
            SourceSpec::Mqtt(spec) => spec.describe(),
            #[cfg(feature = "amqp")]
            SourceSpec::Amqp(spec) => spec.describe(),
            #[cfg(feature = "kafka")]
            SourceSpec::Kafka(spec) => spec.describe(),
            #[cfg(feature = "s3")]
            SourceSpec::S3(spec) => spec.describe(),
            #[cfg(feature = "webhook")]
            SourceSpec::Webhook(spec) => spec.describe(),
            #[cfg(feature = "calendar")]
            SourceSpec::Calendar(spec) => spec.describe(),
        }
    }

    /// Checks that need the rest of the config (e.g. a bridge consuming its own output).
    pub fn check(&self, bridge: &BridgeSpec, exchange: &ExchangeConfig) -> Result<(), String> {
        match self {
            #[cfg(feature = "amqp")]
            SourceSpec::Amqp(spec) => spec.check(bridge, exchange),
            // Unreachable in a build with only the amqp kind.
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (bridge, exchange);
                Ok(())
            }
        }
    }

    /// Asks the source's broker, before a reload restarts a bridge (or for `check
    /// --online`), whether this spec would move a position there. Kinds that keep no
    /// position at their broker, or cannot tell, answer `Safe`. AMQP: an existing queue
    /// whose settings differ (RabbitMQ would refuse the declare). Kafka: a new group that
    /// would start at the end where the old one has unread records.
    pub async fn verify_position(&self, bridge: &BridgeSpec) -> Verdict {
        let asked = async {
            match self {
                #[cfg(feature = "nats")]
                SourceSpec::JetStream(spec) => {
                    nats::verify_jetstream(spec, &bridge.name, bridge.max_in_flight).await
                }
                #[cfg(feature = "amqp")]
                SourceSpec::Amqp(spec) => amqp::verify_queue(spec, &bridge.name).await,
                #[cfg(feature = "kafka")]
                SourceSpec::Kafka(spec) => kafka::verify_position(spec, &bridge.name).await,
                // Unreachable in a build with only kinds that keep a position.
                #[allow(unreachable_patterns)]
                _ => {
                    let _ = bridge;
                    Ok(())
                }
            }
        };
        match tokio::time::timeout(VERIFY_TIMEOUT, asked).await {
            Ok(Ok(())) => Verdict::Safe,
            Ok(Err(SourceError::Refused(reason))) => Verdict::Refused(reason),
            Ok(Err(error)) => Verdict::Unverified(error.to_string()),
            Err(_) => Verdict::Unverified(format!(
                "no answer from the broker within {VERIFY_TIMEOUT:?}"
            )),
        }
    }

    /// Connects and subscribes.
    pub async fn connect(&self, context: &ConnectContext) -> Result<Box<dyn Source>, SourceError> {
        match self {
            #[cfg(feature = "nats")]
            SourceSpec::Nats(spec) => nats::connect_core(spec, context).await,
            #[cfg(feature = "nats")]
            SourceSpec::JetStream(spec) => nats::connect_jetstream(spec, context).await,
            #[cfg(feature = "mqtt")]
            SourceSpec::Mqtt(spec) => mqtt::connect(spec, context).await,
            #[cfg(feature = "amqp")]
            SourceSpec::Amqp(spec) => amqp::connect(spec, context).await,
            #[cfg(feature = "kafka")]
            SourceSpec::Kafka(spec) => kafka::connect(spec, context).await,
            #[cfg(feature = "s3")]
            SourceSpec::S3(spec) => s3::connect(spec, context).await,
            #[cfg(feature = "webhook")]
            SourceSpec::Webhook(spec) => webhook::connect(spec, context).await,
            #[cfg(feature = "calendar")]
            SourceSpec::Calendar(spec) => calendar::connect(spec, context).await,
        }
    }
}

/// Checks across bridges: `Err((bridge, message))` names the bridge at fault.
pub fn check_bridges(bridges: &[BridgeSpec]) -> Result<(), (String, String)> {
    #[cfg(feature = "webhook")]
    webhook::check_paths(bridges)?;
    let _ = bridges;
    Ok(())
}

/// Reads the kind-specific keys (everything but the common bridge keys).
pub fn parse_spec(kind: &str, table: Map<String, Value>) -> Result<SourceSpec, String> {
    match kind {
        #[cfg(feature = "nats")]
        "nats" => nats::NatsSpec::parse(table).map(SourceSpec::Nats),
        #[cfg(feature = "nats")]
        "jetstream" => nats::JetStreamSpec::parse(table).map(SourceSpec::JetStream),
        #[cfg(feature = "mqtt")]
        "mqtt" => mqtt::MqttSpec::parse(table).map(SourceSpec::Mqtt),
        #[cfg(feature = "amqp")]
        "amqp" => amqp::AmqpSpec::parse(table).map(SourceSpec::Amqp),
        #[cfg(feature = "kafka")]
        "kafka" => kafka::KafkaSpec::parse(table).map(SourceSpec::Kafka),
        #[cfg(feature = "s3")]
        "s3" => s3::S3Spec::parse(table).map(SourceSpec::S3),
        #[cfg(feature = "webhook")]
        "webhook" => webhook::WebhookSpec::parse(table).map(SourceSpec::Webhook),
        #[cfg(feature = "calendar")]
        "calendar" => calendar::CalendarSpec::parse(table).map(SourceSpec::Calendar),
        other => Err(format!(
            "key `kind`: unknown kind `{other}` (this build knows: {})",
            KINDS.join(", ")
        )),
    }
}

/// Every key the kinds of this build accept besides the common bridge keys, read from
/// their config structs (for the test that `config.example.toml` documents them all).
pub fn accepted_keys() -> Vec<&'static str> {
    let mut keys = crate::config::fields::names::<TlsOptions>().to_vec();
    #[cfg(feature = "nats")]
    keys.extend(nats::accepted_keys());
    #[cfg(feature = "mqtt")]
    keys.extend(mqtt::accepted_keys());
    #[cfg(feature = "amqp")]
    keys.extend(amqp::accepted_keys());
    #[cfg(feature = "kafka")]
    keys.extend(kafka::accepted_keys());
    #[cfg(feature = "s3")]
    keys.extend(s3::accepted_keys());
    #[cfg(feature = "webhook")]
    keys.extend(webhook::accepted_keys());
    #[cfg(feature = "calendar")]
    keys.extend(calendar::accepted_keys());
    keys
}

/// TLS settings shared by the kinds that speak TLS (`[bridge.tls]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file with the CA certificates that sign the server certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Refuse to connect without TLS.
    #[serde(default)]
    pub required: bool,
}

/// What a source needs to know about its bridge when it connects.
#[derive(Debug, Clone, Default)]
pub struct ConnectContext {
    pub bridge: String,
    pub max_in_flight: usize,
    /// A source that must buffer on its own (core NATS, which has no flow control)
    /// holds at most this many payload bytes.
    pub max_in_flight_bytes: usize,
    pub max_message_bytes: usize,
    /// The bridge's series a source reports to: `bridge_source_lag` (a source that can
    /// tell how far behind it is, e.g. JetStream pending or Kafka consumer lag, sets it
    /// whenever it learns, also while idle) and webhook refusals.
    pub metrics: SourceMetrics,
    /// `[defaults] state_dir`: where a kind keeps a cursor of its own (`s3`, `calendar`).
    pub state_dir: std::path::PathBuf,
    /// Whether the exchange is connected right now.
    pub exchange: ExchangeProbe,
    pub listeners: Listeners,
}

/// Process-wide listeners that sources register with, shared by every bridge.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    /// The HTTP listener of the webhook bridges (`[webhook]`).
    #[cfg(feature = "webhook")]
    pub webhook: Option<std::sync::Arc<webhook::Hub>>,
}

impl Listeners {
    /// The listeners of a config (each binds when a bridge first needs it).
    pub fn new(config: &crate::config::Config) -> Self {
        let _ = config;
        Listeners {
            #[cfg(feature = "webhook")]
            webhook: Some(webhook::Hub::new(config.webhook.clone())),
        }
    }

    /// Forgets what bridges no longer configured registered.
    pub fn retain(&self, bridges: &[BridgeSpec]) {
        let _ = bridges;
        #[cfg(feature = "webhook")]
        if let Some(hub) = &self.webhook {
            hub.retain(bridges);
        }
    }
}

/// Tells whether the exchange is connected right now. A source that answers senders
/// itself (webhook) refuses work while it is not; the default reports it up.
#[derive(Clone, Default)]
pub struct ExchangeProbe(Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>);

impl ExchangeProbe {
    pub fn new(is_up: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        ExchangeProbe(Some(std::sync::Arc::new(is_up)))
    }

    pub fn is_up(&self) -> bool {
        self.0.as_ref().is_none_or(|is_up| is_up())
    }
}

impl std::fmt::Debug for ExchangeProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeProbe")
    }
}

/// What a source reports to its bridge's series; the default reports nowhere.
#[derive(Clone, Default)]
pub struct SourceMetrics(Option<std::sync::Arc<crate::metrics::BridgeMetrics>>);

impl SourceMetrics {
    pub fn new(metrics: std::sync::Arc<crate::metrics::BridgeMetrics>) -> Self {
        SourceMetrics(Some(metrics))
    }

    /// `bridge_source_lag`: messages waiting at the source.
    pub fn set_lag(&self, lag: u64) {
        if let Some(metrics) = &self.0 {
            let lag = i64::try_from(lag).unwrap_or(i64::MAX);
            metrics.source_lag.set(lag);
        }
    }

    /// `bridge_events_dropped_total{reason="overflow"}`: a message a source without flow
    /// control (core NATS) had no room for.
    pub fn drop_overflow(&self) {
        if let Some(metrics) = &self.0 {
            metrics.dropped_overflow.inc();
        }
    }

    /// `bridge_requests_duplicate_total`: a delivery answered without publishing again.
    pub fn count_duplicate(&self) {
        if let Some(metrics) = &self.0 {
            metrics.duplicates.inc();
        }
    }

    /// `bridge_requests_refused_total`: a request refused before it became a message.
    pub fn refuse(&self, refusal: crate::metrics::Refusal) {
        if let Some(metrics) = &self.0 {
            metrics.refuse(refusal);
        }
    }
}

impl std::fmt::Debug for SourceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SourceMetrics"
        } else {
            "SourceMetrics(none)"
        })
    }
}
