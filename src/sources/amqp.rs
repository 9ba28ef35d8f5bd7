//! `kind = "amqp"`: consume a RabbitMQ (AMQP 0-9-1) queue, at-least-once.
//!
//! On every connect the bridge declares its queue (`declare = true`: with `durable`,
//! `exclusive`, `auto_delete` and `arguments`, quorum queues included; `declare = false`:
//! a passive declare, so the queue must exist), binds it to `bind_exchange` with each of
//! `binding_keys`, sets the prefetch (`basic.qos`) to the bridge's `max_in_flight` and
//! consumes with manual acknowledgements.
//!
//! Delivery:
//! - A message is `basic.ack`ed only after the exchange confirmed its CloudEvent (or its
//!   dead-letter copy). It is never nacked: a message that is not acked stays unacked on
//!   its channel, and when that channel closes (lost connection, reconnect, stop, crash,
//!   SIGKILL) RabbitMQ requeues it and delivers it again, flagged `redelivered`.
//! - A lost connection or a cancelled consumer (queue deleted) makes `next` fail; the
//!   bridge then reconnects with backoff, forever, and declares and binds again.
//! - An ack handle keeps its channel open. A draining bridge (reload, SIGTERM) stops
//!   consuming but still acks what the exchange confirms; the channel and connection close
//!   with the last in-flight message, and RabbitMQ requeues what was prefetched but never
//!   pulled.
//! - Event id: the `message_id` property, so a redelivered message keeps its id. A message
//!   without one gets a new UUIDv7 on every delivery, redeliveries included.
//! - An `exclusive` or `auto_delete` queue disappears with its connection or consumer, and
//!   with it whatever it holds and whatever arrives in between; `describe` says so.
//!
//! Broker objects: the bridge creates a missing queue and adds the configured bindings.
//! It never deletes, purges or re-declares a queue and never removes a binding, whatever
//! the config says later:
//! - RabbitMQ does not change an existing queue on a declare: with other `durable`,
//!   `exclusive`, `auto_delete` or (checked) `arguments` it refuses it (406, 405). The
//!   bridge then refuses to start (`SourceError::Refused`, retried), naming the key and
//!   the queue and how many messages stay in it. `verify_queue` asks the same before a
//!   reload restarts the bridge.
//! - An edit of `queue` or of the bindings leaves the old queue, its messages and the
//!   removed bindings in place (a binding made by the bridge cannot be told from one an
//!   operator made). What the bridge consumed last is kept in
//!   `<state_dir>/amqp/<bridge>.json`, so the first connect after such an edit (reload
//!   or restart) logs a warning naming what stays behind: the old queue with its message
//!   count and bindings, or the bindings no longer configured.
//!
//! `check` refuses a bridge whose queue would be bound to the routing exchange (or its
//! dead-letter or alternate exchange) on the same broker with a key matching the bridge's
//! own output: it would consume what it publishes, forever.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source};
use crate::config::TlsOptions;
use crate::config::{BridgeSpec, ExchangeConfig, fields};
use crate::message::{Acker, Incoming, Metadata, SourceError};
use crate::routing;
use crate::secret::Secret;

/// A broker that accepts TCP but never finishes the handshake or a declare must not hang
/// the bridge: the whole setup is bounded, then retried with backoff.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

// AMQP short strings (queue, exchange, binding key, consumer tag) hold at most 255
// bytes: checked when the config is loaded, and built through `short_string` (a value
// that still does not fit is a setup error, never a panic).
use crate::short_string::{MAX_SHORT_STRING, TooLong, constant, short_string as wire};

/// AMQP properties offered to templates as if they were headers, e.g.
/// `type = "{header:amqp-type}"` or `tenant = "{header:amqp-user-id}"` (RabbitMQ checks
/// `user_id` against the publishing connection's user). They come only from the
/// properties: an application header of one of these names (any case) is dropped, so a
/// publisher can never stand in for the identity RabbitMQ checked.
pub const PROPERTY_HEADERS: [&str; 4] = [
    "amqp-type",
    "amqp-app-id",
    "amqp-user-id",
    "amqp-correlation-id",
];

/// `kind = "amqp"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSpec {
    /// Broker URL, `amqp://user:password@host:5672/vhost` (the vhost `/` is `%2f`);
    /// `amqps://` for TLS.
    #[serde(default = "default_url")]
    pub url: Secret,
    /// User name instead of the one in `url` (with `password`).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// TLS settings for an `amqps://` url.
    pub tls: Option<TlsOptions>,
    /// The queue to consume.
    pub queue: String,
    /// Declare the queue on every connect; `false`: it must exist (passive declare).
    #[serde(default = "default_true")]
    pub declare: bool,
    /// Queue settings, with `declare = true` only. Default: durable, not exclusive, not
    /// auto-delete.
    pub durable: Option<bool>,
    pub exclusive: Option<bool>,
    pub auto_delete: Option<bool>,
    /// Queue arguments (`x-queue-type`, `x-max-length`...): text, integers or booleans.
    #[serde(default)]
    pub arguments: BTreeMap<String, Value>,
    /// Bind the queue to this existing exchange on every connect.
    pub bind_exchange: Option<String>,
    /// The binding keys for `bind_exchange`; default `["#"]`.
    pub binding_keys: Option<Vec<String>>,
    /// Default `broker-bridge-<bridge name>`.
    pub consumer_tag: Option<String>,
}

fn default_url() -> Secret {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

fn default_true() -> bool {
    true
}

/// Every key of the kind (for the test that the example config documents them all).
fn accepted_keys() -> Vec<&'static str> {
    fields::names::<AmqpSpec>().to_vec()
}

/// `kind = "amqp"`: a RabbitMQ queue.
pub struct Amqp;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Amqp {
    const NAME: &'static str = "amqp";
    const SECRET_KEYS: &'static [&'static str] = &["url", "password"];
    type Spec = AmqpSpec;

    fn parse(table: Map<String, Value>) -> Result<AmqpSpec, String> {
        AmqpSpec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &AmqpSpec) -> String {
        spec.describe()
    }

    fn subject_separator(_: &AmqpSpec) -> Option<char> {
        Some('.')
    }

    fn check(spec: &AmqpSpec, bridge: &BridgeSpec, exchange: &ExchangeConfig) -> Result<(), String> {
        spec.check(bridge, exchange)
    }

    async fn verify_position(spec: &AmqpSpec, bridge: &BridgeSpec) -> Result<(), SourceError> {
        verify_queue(spec, &bridge.name).await
    }

    async fn connect(
        spec: &AmqpSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect(spec, context).await
    }
}

impl AmqpSpec {
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
        fields::reject_unknown(&table, fields::names::<AmqpSpec>(), "kind `amqp`")?;
        let spec: AmqpSpec = fields::parse(Value::Object(table))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn durable(&self) -> bool {
        self.durable.unwrap_or(true)
    }

    pub fn exclusive(&self) -> bool {
        self.exclusive.unwrap_or(false)
    }

    pub fn auto_delete(&self) -> bool {
        self.auto_delete.unwrap_or(false)
    }

    /// The binding keys, when the queue is bound to an exchange.
    pub fn binding_keys(&self) -> Vec<&str> {
        match (&self.bind_exchange, &self.binding_keys) {
            (None, _) => Vec::new(),
            (Some(_), None) => vec!["#"],
            (Some(_), Some(keys)) => keys.iter().map(String::as_str).collect(),
        }
    }

    /// Refuses settings that are wrong or that would otherwise be silently ignored.
    fn validate(&self) -> Result<(), String> {
        let url = self.url.expose();
        let endpoint = Endpoint::parse(url).map_err(|e| format!("key `url`: {e}"))?;
        // The URL holds a password: the errors never repeat it.
        url.parse::<AMQPUri>().map_err(|e| {
            let e = e.replace(url, "<url>");
            format!("key `url`: not an AMQP URL: {e}")
        })?;
        match (&self.user, &self.password) {
            (Some(_), None) => return Err("key `user`: needs `password` too".into()),
            (None, Some(_)) => return Err("key `password`: needs `user` too".into()),
            (Some(_), Some(_)) if endpoint.has_credentials => {
                return Err(
                    "keys `user`/`password`: the url has credentials too; give them in one place"
                        .into(),
                );
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if !endpoint.tls {
                return Err(if tls.required {
                    "key `tls.required`: the url is amqp://; use amqps:// for TLS".into()
                } else {
                    "key `tls`: TLS settings need an amqps:// url".into()
                });
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("key `tls`: `cert_file` and `key_file` go together".into());
            }
        }
        short_string("queue", &self.queue)?;
        if self.declare && self.queue.starts_with("amq.") {
            return Err(
                "key `queue`: names starting with `amq.` are reserved by RabbitMQ; set declare = false to consume such a queue"
                    .into(),
            );
        }
        if !self.declare {
            let set = [
                ("durable", self.durable.is_some()),
                ("exclusive", self.exclusive.is_some()),
                ("auto_delete", self.auto_delete.is_some()),
                ("arguments", !self.arguments.is_empty()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "key `{key}`: only used with declare = true (declare = false consumes an existing queue as it is)"
                ));
            }
        }
        for (name, value) in &self.arguments {
            short_string(&format!("arguments.{name}"), name)?;
            if !(value.is_string() || value.is_i64() || value.is_boolean()) {
                return Err(format!(
                    "key `arguments.{name}`: must be text, a whole number or true/false"
                ));
            }
        }
        match self.arguments.get("x-queue-type") {
            None => {}
            Some(Value::String(kind)) if kind == "quorum" => {
                let refused = if !self.durable() {
                    Some("durable")
                } else if self.exclusive() {
                    Some("exclusive")
                } else if self.auto_delete() {
                    Some("auto_delete")
                } else {
                    None
                };
                if let Some(key) = refused {
                    return Err(format!(
                        "key `{key}`: quorum queues are durable, not exclusive and not auto-delete"
                    ));
                }
            }
            Some(Value::String(kind)) if kind == "stream" => {
                return Err(
                    "key `arguments.x-queue-type`: stream queues are not supported: an ack does not remove a message from a stream, and a consumer that reconnects starts after what arrived meanwhile"
                        .into(),
                );
            }
            Some(Value::String(_)) => {}
            Some(_) => return Err("key `arguments.x-queue-type`: must be text".into()),
        }
        match (&self.bind_exchange, &self.binding_keys) {
            (None, Some(_)) => {
                return Err("key `binding_keys`: needs `bind_exchange`".into());
            }
            (Some(exchange), keys) => {
                if exchange.is_empty() {
                    return Err(
                        "key `bind_exchange`: the default exchange cannot be bound; without bind_exchange the queue gets what is published to it by name"
                            .into(),
                    );
                }
                short_string("bind_exchange", exchange)?;
                if keys.as_ref().is_some_and(Vec::is_empty) {
                    return Err(
                        "key `binding_keys`: give at least one key (or leave it out for [\"#\"])"
                            .into(),
                    );
                }
                for key in keys.iter().flatten() {
                    if !crate::short_string::fits(key) {
                        return Err(format!(
                            "key `binding_keys`: `{key}` is longer than {MAX_SHORT_STRING} bytes"
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(tag) = &self.consumer_tag {
            short_string("consumer_tag", tag)?;
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let endpoint = Endpoint::parse(self.url.expose()).ok();
        let server = endpoint
            .as_ref()
            .map(|e| format!("{}, vhost `{}`", e.label(), e.vhost))
            .unwrap_or_default();
        let binding = match &self.bind_exchange {
            Some(exchange) => format!(
                " (bound to `{exchange}` with {})",
                self.binding_keys()
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let mut line = format!(
            "queue `{}` on {server}{binding}; at-least-once: basic.ack after the exchange confirmed; event id: the message_id property, else a new UUIDv7 per delivery (a redelivery then gets a new id)",
            self.queue
        );
        if self.declare && (self.exclusive() || self.auto_delete()) {
            line.push_str(
                "; WARNING: RabbitMQ deletes an exclusive or auto-delete queue when its connection or consumer goes (every restart, reload or reconnect of this bridge), and with it the messages waiting in it and those sent meanwhile",
            );
        }
        line
    }

    /// The loop guard: refuses a queue bound, on the exchange's own broker, to the routing
    /// exchange (or its dead-letter or alternate exchange) with a key that matches what
    /// this bridge publishes there.
    pub fn check(&self, bridge: &BridgeSpec, exchange: &ExchangeConfig) -> Result<(), String> {
        let Some(bound) = self.bind_exchange.as_deref() else {
            return Ok(());
        };
        let (Ok(ours), Ok(theirs)) = (
            Endpoint::parse(self.url.expose()),
            Endpoint::parse(exchange.url.expose()),
        ) else {
            return Ok(());
        };
        if !ours.same_broker(&theirs) {
            return Ok(());
        }
        let events = ("events", bridge.routing_pattern());
        let dead_letters = ("dead letters", bridge.deadletter_pattern());
        let deadletter_exchange = exchange.deadletter.as_deref().unwrap_or(&exchange.name);
        let dead_letters_on_main = deadletter_exchange == exchange.name;
        // What of ours arrives on the bound exchange, and what that exchange is to us.
        let mut arriving = Vec::new();
        let mut role = None;
        if bound == exchange.name {
            arriving.push(events.clone());
            if dead_letters_on_main {
                arriving.push(dead_letters.clone());
            }
            role.get_or_insert("the routing exchange");
        }
        if bound == deadletter_exchange && !dead_letters_on_main {
            arriving.push(dead_letters.clone());
            role.get_or_insert("the dead-letter exchange");
        }
        if exchange.alternate_exchange.as_deref() == Some(bound) {
            // Unroutable events (and dead letters published to the routing exchange).
            arriving.push(events.clone());
            if dead_letters_on_main {
                arriving.push(dead_letters.clone());
            }
            role.get_or_insert("the alternate exchange of the routing exchange");
        }
        let Some(role) = role else {
            return Ok(());
        };
        for key in self.binding_keys() {
            for (what, pattern) in &arriving {
                if routing::patterns_overlap(key, pattern) {
                    return Err(format!(
                        "key `binding_keys`: `{key}` on {role} `{bound}` matches this bridge's own {what} ({pattern}): it would consume what it publishes"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn short_string(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("key `{key}`: must not be empty"));
    }
    if !crate::short_string::fits(value) {
        return Err(format!(
            "key `{key}`: must be at most {MAX_SHORT_STRING} bytes"
        ));
    }
    Ok(())
}

/// Where a URL points, without its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    /// Without IPv6 brackets.
    host: String,
    port: u16,
    vhost: String,
    has_credentials: bool,
}

impl Endpoint {
    /// Reads scheme, host, port and vhost the way lapin does (no path: vhost `/`; a bare
    /// `/`: the vhost ""), but keeps IP hosts, which lapin's URI parser turns into
    /// `localhost` when they are IPv6 literals. Errors never quote the user info or the
    /// port, where a password would be (or a piece of one that holds `/`, `?` or `#`).
    fn parse(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("not an AMQP URL (amqp://host:port/vhost)")?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => false,
            "amqps" => true,
            _ if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                return Err(format!("the scheme is `{scheme}`, not amqp or amqps"));
            }
            _ => return Err("the scheme is not amqp or amqps".into()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if !authority.contains('@') && rest.contains('@') {
            return Err(
                "the user info holds `/`, `?` or `#`: percent-encode them (%2F, %3F, %23)".into(),
            );
        }
        let (has_credentials, host_port) = match authority.rsplit_once('@') {
            Some((_, host_port)) => (true, host_port),
            None => (false, authority),
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("an IPv6 address is not closed by `]`")?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = match port {
            None | Some("") => {
                if tls {
                    5671
                } else {
                    5672
                }
            }
            Some(port) => port
                .parse()
                .map_err(|_| "the port is not a number up to 65535".to_string())?,
        };
        let path = rest.split(['?', '#']).next().unwrap_or("");
        let vhost = match path.strip_prefix('/') {
            None => "/".to_owned(),
            Some(encoded) => crate::short_string::percent_decode(encoded).ok_or(
                "the vhost is not percent-encoded UTF-8 (a `%` must be followed by two hex digits)",
            )?,
        };
        Ok(Endpoint {
            tls,
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host.to_owned()
            },
            port,
            vhost,
            has_credentials,
        })
    }

    /// `host:port`, IPv6 in brackets.
    fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The CloudEvent `source` of messages from `queue`: `amqp://host:port/<vhost>/<queue>`
    /// with both names percent-encoded, and no credentials.
    fn source_uri(&self, queue: &str) -> String {
        format!(
            "{}://{}/{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            self.label(),
            percent_encode(&self.vhost),
            percent_encode(queue)
        )
    }

    /// Same broker and vhost; the loopback names count as one host.
    fn same_broker(&self, other: &Endpoint) -> bool {
        fn host(text: &str) -> String {
            let text = text.trim_end_matches('.').to_ascii_lowercase();
            match text.as_str() {
                "127.0.0.1" | "::1" | "localhost" => "localhost".into(),
                _ => text,
            }
        }
        host(&self.host) == host(&other.host)
            && self.port == other.port
            && self.vhost == other.vhost
    }
}

/// Percent-encodes everything but the RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why connecting, declaring, binding or consuming failed. The bridge retries all of them.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("bad url: {0}")]
    Url(String),
    #[error("{0}")]
    TooLong(#[from] TooLong),
    #[error("cannot read the TLS {what} {}: {error}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot connect to {server}: {error}")]
    Connect { server: String, error: lapin::Error },
    #[error("no answer from {server} within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("cannot open a channel: {0}")]
    Channel(lapin::Error),
    #[error("cannot set the prefetch (basic.qos): {0}")]
    Qos(lapin::Error),
    #[error("queue `{queue}`: {error} ({hint})")]
    Queue {
        queue: String,
        error: lapin::Error,
        hint: &'static str,
    },
    #[error(
        "cannot bind queue `{queue}` to exchange `{exchange}` with `{key}`: {error} (the exchange must exist)"
    )]
    Bind {
        queue: String,
        exchange: String,
        key: String,
        error: lapin::Error,
    },
    #[error("cannot consume from queue `{queue}`: {error}")]
    Consume { queue: String, error: lapin::Error },
    /// The queue exists with other settings: the bridge changes nothing and retries.
    #[error("{0}")]
    Refused(String),
    /// RabbitMQ refuses a queue argument's value.
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<SetupError> for SourceError {
    fn from(error: SetupError) -> Self {
        match error {
            SetupError::Refused(why) => SourceError::Refused(why),
            other => SourceError::Connect(other.to_string()),
        }
    }
}

/// Connects, declares and binds the queue, and starts consuming.
pub async fn connect(
    spec: &AmqpSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let endpoint = Endpoint::parse(spec.url.expose()).map_err(SetupError::Url)?;
    match tokio::time::timeout(SETUP_TIMEOUT, open(spec, &endpoint, context)).await {
        Ok(result) => Ok(Box::new(result?)),
        Err(_) => Err(SetupError::Timeout {
            server: endpoint.label(),
            timeout: SETUP_TIMEOUT,
        }
        .into()),
    }
}

/// Opens a connection named after the bridge (`label` says what for).
async fn connect_broker(
    spec: &AmqpSpec,
    endpoint: &Endpoint,
    label: &str,
) -> Result<Connection, SetupError> {
    let url = spec.url.expose();
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| SetupError::Url(e.replace(url, "<url>")))?;
    // lapin's URI parser turns IPv6 literals into "localhost"; connect where the URL says.
    uri.authority.host = endpoint.host.clone();
    if let (Some(user), Some(password)) = (&spec.user, &spec.password) {
        uri.authority.userinfo.username = user.clone();
        uri.authority.userinfo.password = password.expose().to_owned();
    }
    let tls = tls_config(spec.tls.as_ref()).await?;
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("broker-bridge/{label}")));
    let server = endpoint.label();
    let connect_error = |error| SetupError::Connect {
        server: server.clone(),
        error,
    };
    let runtime = lapin::runtime::default_runtime().map_err(connect_error)?;
    Connection::connect_uri_with_config(uri, properties, tls, runtime)
        .await
        .map_err(connect_error)
}

async fn open(
    spec: &AmqpSpec,
    endpoint: &Endpoint,
    context: &ConnectContext,
) -> Result<AmqpSource, SetupError> {
    let connection = connect_broker(spec, endpoint, &context.bridge).await?;
    // Dropping the connection (and its channel) on any error below closes it.
    let channel = connection
        .create_channel()
        .await
        .map_err(SetupError::Channel)?;
    // The prefetch count is 16 bits wide; a larger max_in_flight is capped there.
    let prefetch = u16::try_from(context.max_in_flight.max(1)).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .map_err(SetupError::Qos)?;

    let queue = wire("the queue name", &spec.queue)?;
    declare_queue(&connection, &channel, spec).await?;
    if let Some(exchange) = &spec.bind_exchange {
        for key in spec.binding_keys() {
            channel
                .queue_bind(
                    queue.clone(),
                    wire("bind_exchange", exchange)?,
                    wire("a binding key", key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|error| SetupError::Bind {
                    queue: spec.queue.clone(),
                    exchange: exchange.clone(),
                    key: key.to_owned(),
                    error,
                })?;
        }
    }
    let tag = spec
        .consumer_tag
        .clone()
        .unwrap_or_else(|| format!("broker-bridge-{}", context.bridge));
    let consumer = channel
        .basic_consume(
            queue,
            wire("consumer_tag", &tag)?,
            // Manual acknowledgements: no_ack stays false.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| SetupError::Consume {
            queue: spec.queue.clone(),
            error,
        })?;
    tracing::debug!(queue = %spec.queue, prefetch, "consuming");
    report_what_an_edit_left(&connection, endpoint, spec, context).await;
    Ok(AmqpSource {
        consumer,
        channel,
        source_uri: endpoint.source_uri(&spec.queue),
        _connection: connection,
    })
}

/// The queue declare with the bridge's settings; RabbitMQ's answer is left to the
/// caller.
async fn declare_as_configured(
    channel: &Channel,
    spec: &AmqpSpec,
    passive: bool,
) -> Result<Result<lapin::Queue, lapin::Error>, SetupError> {
    Ok(channel
        .queue_declare(
            wire("the queue name", &spec.queue)?,
            QueueDeclareOptions {
                passive,
                durable: spec.durable(),
                exclusive: spec.exclusive(),
                auto_delete: spec.auto_delete(),
                nowait: false,
            },
            queue_arguments(&spec.arguments),
        )
        .await)
}

/// Declares the queue (passively with `declare = false`). RabbitMQ never changes an
/// existing queue on a declare; it refuses one with other settings, and so does the
/// bridge then, leaving the queue and its messages as they are.
async fn declare_queue(
    connection: &Connection,
    channel: &Channel,
    spec: &AmqpSpec,
) -> Result<(), SetupError> {
    let declared = declare_as_configured(channel, spec, !spec.declare).await?;
    let error = match declared {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    if spec.declare {
        if let Some(conflict) = SettingsConflict::of(&error) {
            // The refused declare closed its channel; count on a fresh one.
            let held = messages_in(connection, &spec.queue).await.ok();
            return Err(SetupError::Refused(conflict.refusal(&spec.queue, held)));
        }
        if let Some((argument, reply)) = invalid_argument(&error) {
            return Err(SetupError::InvalidArgument(format!(
                "key `arguments.{argument}`: RabbitMQ refuses its value for queue `{}` (RabbitMQ: {reply})",
                spec.queue
            )));
        }
    }
    Err(SetupError::Queue {
        queue: spec.queue.clone(),
        error,
        hint: if spec.declare {
            "cannot declare it"
        } else {
            "declare = false: the queue must exist"
        },
    })
}

/// The name RabbitMQ quotes after `what` in a reply, e.g. `x-max-length` from
/// "... inequivalent arg 'x-max-length' for queue ...".
fn quoted_after<'a>(reply: &'a str, what: &str) -> Option<&'a str> {
    reply
        .split_once(what)
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(name, _)| name)
}

/// A queue argument whose value RabbitMQ refuses ("invalid arg 'x-overflow' ..."), and
/// the reply.
fn invalid_argument(error: &lapin::Error) -> Option<(String, String)> {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let reply = amqp.get_message().as_str();
    let argument = quoted_after(reply, "invalid arg '")?;
    Some((argument.to_owned(), reply.to_owned()))
}

/// RabbitMQ refused a declare because the queue exists with other settings.
#[derive(Debug, PartialEq, Eq)]
struct SettingsConflict {
    /// The config key that differs: `durable`, `auto_delete`, `exclusive` or
    /// `arguments.<name>`.
    key: String,
    /// RabbitMQ's reply text, e.g. "PRECONDITION_FAILED - inequivalent arg
    /// 'x-max-length' for queue 'q' in vhost '/': received none but current is ...".
    reply: String,
    /// 405 RESOURCE_LOCKED: exclusive to another connection, or `exclusive` differs.
    locked: bool,
}

impl SettingsConflict {
    fn of(error: &lapin::Error) -> Option<SettingsConflict> {
        let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
            return None;
        };
        let locked = match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => false,
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => true,
            _ => return None,
        };
        SettingsConflict::from_reply(amqp.get_message().as_str(), locked)
    }

    /// `None` for a 406 about something else (e.g. an invalid argument value).
    fn from_reply(reply: &str, locked: bool) -> Option<SettingsConflict> {
        let key = match quoted_after(reply, "inequivalent arg '") {
            Some(flag @ ("durable" | "exclusive" | "auto_delete")) => flag.to_owned(),
            Some(argument) => format!("arguments.{argument}"),
            None if locked => "exclusive".to_owned(),
            None => return None,
        };
        Some(SettingsConflict {
            key,
            reply: reply.to_owned(),
            locked,
        })
    }

    /// The refusal: key, queue, what RabbitMQ said, that the messages stay, the way out.
    fn refusal(&self, queue: &str, held: Option<u32>) -> String {
        let key = &self.key;
        let what = if self.locked {
            format!(
                "queue `{queue}` is exclusive to another connection (a bridge still draining?), or exists with another `exclusive`"
            )
        } else {
            format!("queue `{queue}` exists with another `{key}` than this bridge declares")
        };
        let messages = match held {
            Some(count) => format!("its {count} ready message(s) stay in it"),
            None => "its messages stay in it".to_owned(),
        };
        format!(
            "key `{key}`: {what} (RabbitMQ: {}); broker-bridge never deletes or re-creates a queue, so {messages}. Make `{key}` match the queue, or set declare = false to consume it as it is; the bridge retries until then",
            self.reply
        )
    }
}

/// The ready messages of a queue, by a passive declare on a channel of its own (a
/// missing queue closes the channel).
async fn messages_in(connection: &Connection, queue: &str) -> Result<u32, lapin::Error> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            crate::short_string::short_string("the queue name", queue)
                .map_err(|e| lapin::Error::from(std::io::Error::other(e)))?,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, constant("done")).await;
    Ok(declared.message_count())
}

/// 404 NOT_FOUND: e.g. a passive declare of a missing queue.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

/// Refuses (`SourceError::Refused`) a spec whose queue exists with other settings, as
/// connecting would, without creating or changing anything: for a reload that would
/// restart the bridge, and `check --online`. A missing queue is fine (connecting
/// creates it); an exclusive one cannot be asked about from another connection.
pub async fn verify_queue(spec: &AmqpSpec, bridge: &str) -> Result<(), SourceError> {
    if !spec.declare || spec.exclusive() {
        return Ok(());
    }
    let endpoint = Endpoint::parse(spec.url.expose()).map_err(SetupError::Url)?;
    let connection = connect_broker(spec, &endpoint, &format!("{bridge} (verify)")).await?;
    let held = match messages_in(&connection, &spec.queue).await {
        Ok(held) => held,
        Err(error) if is_not_found(&error) => return Ok(()),
        Err(error) => {
            return Err(SetupError::Queue {
                queue: spec.queue.clone(),
                error,
                hint: "cannot read it",
            }
            .into());
        }
    };
    let channel = connection
        .create_channel()
        .await
        .map_err(SetupError::Channel)?;
    // Declaring an existing queue with equal settings changes nothing.
    let declared = declare_as_configured(&channel, spec, false).await?;
    let _ = connection.close(200, constant("verified")).await;
    match declared {
        Ok(_) => Ok(()),
        Err(error) => Err(match SettingsConflict::of(&error) {
            Some(conflict) => SourceError::Refused(conflict.refusal(&spec.queue, Some(held))),
            None => SetupError::Queue {
                queue: spec.queue.clone(),
                error,
                hint: "cannot declare it",
            }
            .into(),
        }),
    }
}

/// What a bridge consumed at its last connect, in `<state_dir>/amqp/<bridge>.json`: what
/// an edit of `queue`, `bind_exchange` or `binding_keys` leaves behind at the broker
/// (the old queue with its messages, removed bindings), for a reload or a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Consumed {
    /// The broker and vhost, no credentials.
    host: String,
    port: u16,
    vhost: String,
    queue: String,
    bind_exchange: Option<String>,
    binding_keys: Vec<String>,
}

impl Consumed {
    fn of(spec: &AmqpSpec, endpoint: &Endpoint) -> Consumed {
        Consumed {
            host: endpoint.host.clone(),
            port: endpoint.port,
            vhost: endpoint.vhost.clone(),
            queue: spec.queue.clone(),
            bind_exchange: spec.bind_exchange.clone(),
            binding_keys: spec.binding_keys().into_iter().map(str::to_owned).collect(),
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            tls: false,
            host: self.host.clone(),
            port: self.port,
            vhost: self.vhost.clone(),
            has_credentials: false,
        }
    }

    /// The bindings this bridge made last (others may exist).
    fn bindings_text(&self) -> String {
        match &self.bind_exchange {
            Some(exchange) => format!(
                "and so do its bindings (this bridge bound it to `{exchange}` with {})",
                self.binding_keys
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "and so do any bindings it has".to_owned(),
        }
    }
}

/// What an edit from `before` to `now` leaves at the broker, for the warning log.
#[derive(Debug, PartialEq, Eq)]
enum LeftBehind {
    /// Another broker or vhost: the old queue cannot be counted from here.
    QueueElsewhere,
    /// `queue` changed: the old queue is no longer consumed.
    Queue,
    /// The same queue; these `(exchange, key)` bindings are no longer configured.
    Bindings(Vec<(String, String)>),
}

fn left_behind(before: &Consumed, now: &Consumed) -> Option<LeftBehind> {
    if !before.endpoint().same_broker(&now.endpoint()) {
        return Some(LeftBehind::QueueElsewhere);
    }
    if before.queue != now.queue {
        return Some(LeftBehind::Queue);
    }
    let binding =
        |c: &Consumed, key: &String| (c.bind_exchange.clone().unwrap_or_default(), key.clone());
    let removed: Vec<(String, String)> = before
        .binding_keys
        .iter()
        .map(|key| binding(before, key))
        .filter(|old| !now.binding_keys.iter().any(|key| binding(now, key) == *old))
        .collect();
    (!removed.is_empty()).then_some(LeftBehind::Bindings(removed))
}

fn consumed_path(state_dir: &Path, bridge: &str) -> PathBuf {
    state_dir.join("amqp").join(format!("{bridge}.json"))
}

/// Compares what the bridge consumes now with what it consumed at its last connect,
/// warns about what an edit left behind, and records the present. Never fails the
/// connect: without the record, edits are just not reported.
async fn report_what_an_edit_left(
    connection: &Connection,
    endpoint: &Endpoint,
    spec: &AmqpSpec,
    context: &ConnectContext,
) {
    if context.state_dir.as_os_str().is_empty() {
        // No state_dir (a source driven directly, as in tests): nothing to compare.
        return;
    }
    let path = consumed_path(&context.state_dir, &context.bridge);
    let now = Consumed::of(spec, endpoint);
    let before = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Consumed>(&bytes).ok(),
        Err(_) => None,
    };
    if before.as_ref() == Some(&now) {
        return;
    }
    if let Some(before) = &before {
        match left_behind(before, &now) {
            None => {}
            Some(LeftBehind::QueueElsewhere) => tracing::warn!(
                old_queue = %before.queue,
                "this bridge consumed queue `{}` on {} vhost `{}` before its settings were edited; nothing consumes it now: it keeps what it holds, {} (broker-bridge never deletes a queue or removes a binding)",
                before.queue, before.endpoint().label(), before.vhost, before.bindings_text()
            ),
            Some(LeftBehind::Queue) => match messages_in(connection, &before.queue).await {
                Ok(held) => tracing::warn!(
                    old_queue = %before.queue,
                    messages = held,
                    "queue `{}`, which this bridge consumed before its `queue` was edited, still holds {held} ready message(s) that nothing consumes now; it stays, {}, so it may keep collecting messages. broker-bridge never deletes a queue or removes a binding: consume or move its messages, then delete it",
                    before.queue, before.bindings_text()
                ),
                Err(error) if is_not_found(&error) => tracing::info!(
                    old_queue = %before.queue,
                    "queue `{}`, which this bridge consumed before its `queue` was edited, is not there any more",
                    before.queue
                ),
                Err(error) => tracing::warn!(
                    old_queue = %before.queue,
                    "queue `{}`, which this bridge consumed before its `queue` was edited, is no longer consumed and may still hold messages; it cannot be counted: {error}",
                    before.queue
                ),
            },
            Some(LeftBehind::Bindings(removed)) => {
                for (exchange, key) in removed {
                    tracing::warn!(
                        exchange = %exchange,
                        binding_key = %key,
                        "the binding of queue `{}` to `{exchange}` with `{key}` is no longer configured but stays: broker-bridge never removes a binding (it cannot tell its own from an operator's), so what matches it still arrives and is bridged. Remove it at the broker if it is not wanted",
                        spec.queue
                    );
                }
            }
        }
    }
    let written = super::common::state_file::write_json(&path, &now);
    if let Err(error) = written {
        tracing::warn!(
            "cannot record the queue and bindings in {}: {error}; a later edit of them is not reported",
            path.display()
        );
    }
}

async fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    tokio::fs::read(path)
        .await
        .map_err(|error| SetupError::ReadFile {
            what,
            path: path.to_owned(),
            error,
        })
}

/// The CA certificates are added to the system's; the client certificate and key (PEM)
/// are for mutual TLS (and `?auth_mechanism=external` in the url).
async fn tls_config(tls: Option<&TlsOptions>) -> Result<OwnedTLSConfig, SetupError> {
    let mut config = OwnedTLSConfig::default();
    let Some(tls) = tls else {
        return Ok(config);
    };
    if let Some(path) = &tls.ca_file {
        let pem = read_file("ca_file", path).await?;
        config.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        config.identity = Some(OwnedIdentity::PKCS8 {
            pem: read_file("cert_file", cert).await?,
            key: read_file("key_file", key).await?,
        });
    }
    Ok(config)
}

/// TOML values as AMQP field values (validated to be text, integers or booleans).
fn queue_arguments(arguments: &BTreeMap<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            Value::Bool(flag) => AMQPValue::Boolean(*flag),
            Value::Number(n) if n.is_i64() => AMQPValue::LongLongInt(n.as_i64().unwrap_or(0)),
            Value::String(text) => AMQPValue::LongString(LongString::from(text.as_str())),
            // Refused when the config was loaded.
            _ => continue,
        };
        // Names are checked when the config is loaded; one that does not fit is left out.
        if let Ok(name) = crate::short_string::short_string("an argument name", name) {
            table.insert(name, value);
        }
    }
    table
}

struct AmqpSource {
    consumer: lapin::Consumer,
    /// Cloned into every ack handle, which keeps the channel open while messages are in
    /// flight, even after the source itself is dropped (a draining bridge).
    channel: Channel,
    source_uri: String,
    _connection: Connection,
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
fn metadata(delivery: &Delivery, source_uri: &str, received: DateTime<Utc>) -> Metadata {
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

/// The AMQP headers as text, so templates and the binary CloudEvent parser can read them.
pub fn headers_of(properties: &BasicProperties) -> Vec<(String, String)> {
    let Some(table) = properties.headers() else {
        return Vec::new();
    };
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), header_text(value)))
        .collect()
}

/// Nested header tables and arrays deeper than this are not converted further.
const MAX_HEADER_DEPTH: usize = 16;
/// The longest text one header value becomes (nested tables as JSON are cut here).
const MAX_HEADER_TEXT: usize = 64 * 1024;

/// One header value as text: strings as they are, numbers and booleans as written,
/// timestamps in RFC 3339, byte arrays in base64, nested tables and arrays as JSON. A
/// header is outside data: nesting stops at `MAX_HEADER_DEPTH` and the text at
/// `MAX_HEADER_TEXT` bytes.
fn header_text(value: &AMQPValue) -> String {
    let mut text = match value {
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => to_json(value, 0).to_string(),
        other => match to_json(other, 0) {
            Value::String(text) => text,
            Value::Null => String::new(),
            json => json.to_string(),
        },
    };
    text.truncate(crate::short_string::cut(&text, MAX_HEADER_TEXT).len());
    text
}

fn to_json(value: &AMQPValue, depth: usize) -> Value {
    let nested = |value: &AMQPValue| {
        if depth >= MAX_HEADER_DEPTH {
            Value::String(format!("(nested deeper than {MAX_HEADER_DEPTH} levels)"))
        } else {
            to_json(value, depth + 1)
        }
    };
    match value {
        AMQPValue::Boolean(flag) => Value::Bool(*flag),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(n) => Value::from(*n),
        AMQPValue::Double(n) => Value::from(*n),
        AMQPValue::DecimalValue(decimal) => {
            Value::String(decimal_text(decimal.value, decimal.scale))
        }
        AMQPValue::ShortString(text) => Value::String(text.as_str().to_owned()),
        AMQPValue::LongString(text) => {
            Value::String(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(nested).collect()),
        AMQPValue::Timestamp(seconds) => match i64::try_from(*seconds)
            .ok()
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
        {
            Some(time) => Value::String(crate::cloudevent::format_time(&time)),
            None => Value::from(*seconds),
        },
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), nested(value)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP decimal (`value` × 10^-`scale`) written out, e.g. 12345 with scale 2: `123.45`.
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

/// The `timestamp` property: Unix seconds. 0 means unset to many clients. A value past
/// the year 5138 in seconds is read as milliseconds, which some clients send.
fn time_of(seconds: u64) -> Option<DateTime<Utc>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PayloadFormat;
    use crate::config::SourceSpec;
    use crate::sources::common::kind::Settings;

    fn parse(table: Value) -> Result<AmqpSpec, String> {
        AmqpSpec::parse(table.as_object().unwrap().clone())
    }

    fn bridge(spec: &AmqpSpec, tenant: &str) -> BridgeSpec {
        BridgeSpec {
            name: "orders".into(),
            tenant: tenant.into(),
            bucket_tenants: None,
            source_name: "orders".into(),
            source_uri: None,
            event_type: None,
            time_field: None,
            format: PayloadFormat::Auto,
            content_type: None,
            max_in_flight: 10,
            max_message_bytes: 1024,
            shutdown_timeout: Duration::from_secs(1),
            backoff: Default::default(),
            state_dir: Default::default(),
            deadletter_sample_bytes: 65536,
            max_in_flight_bytes: 1 << 20,
            source: SourceSpec::new(Settings::<Amqp>(spec.clone())),
        }
    }

    #[test]
    fn defaults_and_keys() {
        let spec = parse(serde_json::json!({"queue": "orders"})).unwrap();
        assert_eq!(spec.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert!(spec.declare && spec.durable() && !spec.exclusive() && !spec.auto_delete());
        assert!(spec.binding_keys().is_empty());
        let spec = parse(serde_json::json!({"queue": "q", "bind_exchange": "legacy"})).unwrap();
        assert_eq!(spec.binding_keys(), vec!["#"]);
        let err = parse(serde_json::json!({"queue": "q", "subject": "x"})).unwrap_err();
        assert!(err.starts_with("key `subject`: unknown key"), "{err}");
        assert!(err.contains("binding_keys"), "{err}");
        let err = parse(serde_json::json!({})).unwrap_err();
        assert!(err.contains("queue"), "{err}");
    }

    #[test]
    fn settings_that_would_be_ignored_or_are_wrong_are_refused() {
        for (table, fragment) in [
            (serde_json::json!({"queue": ""}), "key `queue`"),
            (serde_json::json!({"queue": "amq.x"}), "key `queue`"),
            (
                serde_json::json!({"queue": "q", "declare": false, "durable": true}),
                "key `durable`",
            ),
            (
                serde_json::json!({"queue": "q", "declare": false, "arguments": {"x-max-length": 5}}),
                "key `arguments`",
            ),
            (
                serde_json::json!({"queue": "q", "binding_keys": ["a"]}),
                "key `binding_keys`: needs `bind_exchange`",
            ),
            (
                serde_json::json!({"queue": "q", "bind_exchange": "x", "binding_keys": []}),
                "key `binding_keys`",
            ),
            (
                serde_json::json!({"queue": "q", "bind_exchange": ""}),
                "key `bind_exchange`",
            ),
            (
                serde_json::json!({"queue": "q", "arguments": {"x-queue-type": "quorum"}, "durable": false}),
                "key `durable`",
            ),
            (
                serde_json::json!({"queue": "q", "arguments": {"x-queue-type": "quorum"}, "exclusive": true}),
                "key `exclusive`",
            ),
            (
                serde_json::json!({"queue": "q", "arguments": {"x-queue-type": "stream"}}),
                "stream queues",
            ),
            (
                serde_json::json!({"queue": "q", "arguments": {"x-ratio": 1.5}}),
                "key `arguments.x-ratio`",
            ),
            (
                serde_json::json!({"queue": "q", "url": "nats://x:4222"}),
                "key `url`",
            ),
            (serde_json::json!({"queue": "q", "user": "u"}), "key `user`"),
            (
                serde_json::json!({"queue": "q", "user": "u", "password": "p"}),
                "credentials too",
            ),
            (
                serde_json::json!({"queue": "q", "tls": {"ca_file": "/ca.pem"}}),
                "amqps://",
            ),
            (
                serde_json::json!({"queue": "q", "tls": {"required": true}}),
                "key `tls.required`",
            ),
            (
                serde_json::json!({"queue": "q", "url": "amqps://h/%2f", "tls": {"cert_file": "/c.pem"}}),
                "`cert_file` and `key_file`",
            ),
        ] {
            let err = parse(table.clone()).unwrap_err();
            assert!(err.contains(fragment), "{table}: {err}");
        }
        let quorum = serde_json::json!({
            "queue": "q",
            "url": "amqps://h:5671/prod",
            "user": "u",
            "password": "p",
            "tls": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
            "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 5, "x-single-active-consumer": true},
        });
        parse(quorum).unwrap();
    }

    #[test]
    fn endpoints_keep_the_host_and_drop_credentials() {
        let e = Endpoint::parse("amqp://u:p@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.vhost.as_str(), e.tls),
            ("127.0.0.1", 5673, "/", false)
        );
        assert!(e.has_credentials);
        assert_eq!(
            e.source_uri("or ders"),
            "amqp://127.0.0.1:5673/%2F/or%20ders"
        );
        let e = Endpoint::parse("amqps://[::1]/prod?heartbeat=10").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.vhost.as_str()),
            ("::1", 5671, "prod")
        );
        assert_eq!(e.label(), "[::1]:5671");
        assert!(!e.has_credentials);
        assert_eq!(Endpoint::parse("amqp://rabbit").unwrap().vhost, "/");
        assert_eq!(Endpoint::parse("amqp://rabbit/").unwrap().vhost, "");
        assert!(Endpoint::parse("amqp://h:99999/").is_err());
        assert!(Endpoint::parse("http://h/").is_err());
        let a = Endpoint::parse("amqp://localhost:5672/%2f").unwrap();
        assert!(a.same_broker(&Endpoint::parse("amqp://x:y@127.0.0.1/%2F").unwrap()));
        assert!(!a.same_broker(&Endpoint::parse("amqp://127.0.0.1/other").unwrap()));
        assert!(!a.same_broker(&Endpoint::parse("amqp://rabbit/%2f").unwrap()));
    }

    #[test]
    fn the_loop_guard_refuses_consuming_our_own_output() {
        let exchange = ExchangeConfig::default();
        let spec = |bind: &str, keys: &[&str]| {
            parse(serde_json::json!({"queue": "q", "bind_exchange": bind, "binding_keys": keys}))
                .unwrap()
        };
        let check = |spec: &AmqpSpec, tenant: &str, exchange: &ExchangeConfig| {
            spec.check(&bridge(spec, tenant), exchange)
        };
        let looping = spec("events", &["event.#"]);
        let err = check(&looping, "acme", &exchange).unwrap_err();
        assert_eq!(
            err,
            "key `binding_keys`: `event.#` on the routing exchange `events` matches this bridge's own events (event.acme.orders.*): it would consume what it publishes"
        );
        // A tenant template may resolve to any word.
        assert!(
            check(
                &spec("events", &["event.globex.#"]),
                "{header:t}",
                &exchange
            )
            .is_err()
        );
        assert!(check(&spec("events", &["event.globex.#"]), "acme", &exchange).is_ok());
        assert!(check(&spec("events", &["event.*.other.*"]), "acme", &exchange).is_ok());
        // The default binding key `#` catches dead letters too.
        let all = parse(serde_json::json!({"queue": "q", "bind_exchange": "events"})).unwrap();
        assert!(check(&all, "acme", &exchange).unwrap_err().contains("`#`"));
        let dead = spec("events", &["deadletter.#"]);
        assert!(
            check(&dead, "acme", &exchange)
                .unwrap_err()
                .contains("dead letters")
        );
        // A separate dead-letter exchange, and the alternate exchange.
        let with_exchanges = ExchangeConfig {
            deadletter: Some("dlx".into()),
            alternate_exchange: Some("unrouted".into()),
            ..ExchangeConfig::default()
        };
        assert!(check(&dead, "acme", &with_exchanges).is_ok());
        assert!(check(&spec("dlx", &["#"]), "acme", &with_exchanges).is_err());
        assert!(
            check(
                &spec("unrouted", &["event.acme.#"]),
                "acme",
                &with_exchanges
            )
            .is_err()
        );
        // Other exchanges, and the same exchange name on another broker or vhost, are fine.
        assert!(check(&spec("legacy", &["#"]), "acme", &exchange).is_ok());
        let elsewhere = parse(serde_json::json!({
            "queue": "q", "url": "amqp://other-host/%2f", "bind_exchange": "events",
        }))
        .unwrap();
        assert!(check(&elsewhere, "acme", &exchange).is_ok());
        let other_vhost = parse(serde_json::json!({
            "queue": "q", "url": "amqp://localhost/legacy", "bind_exchange": "events",
        }))
        .unwrap();
        assert!(check(&other_vhost, "acme", &exchange).is_ok());
    }

    #[test]
    fn describe_names_queue_binding_and_guarantee() {
        let spec = parse(serde_json::json!({
            "queue": "orders", "bind_exchange": "legacy", "binding_keys": ["order.#", "refund.*"],
        }))
        .unwrap();
        let text = spec.describe();
        assert!(
            text.starts_with("queue `orders` on 127.0.0.1:5672, vhost `/` (bound to `legacy` with `order.#`, `refund.*`); at-least-once"),
            "{text}"
        );
        assert!(!text.contains("guest"), "{text}");
        let exclusive = parse(serde_json::json!({"queue": "o", "exclusive": true})).unwrap();
        assert!(exclusive.describe().contains("WARNING"));
    }

    #[test]
    fn arguments_become_field_values() {
        let spec = parse(serde_json::json!({"queue": "q", "arguments": {
            "x-queue-type": "quorum", "x-max-length": 1000, "x-single-active-consumer": true,
        }}))
        .unwrap();
        let table = queue_arguments(&spec.arguments);
        let get = |name: &str| table.inner().get(name).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(1000)));
        assert_eq!(
            get("x-single-active-consumer"),
            Some(AMQPValue::Boolean(true))
        );
    }

    #[test]
    fn header_conversion_is_bounded_in_depth_and_size() {
        let mut value = AMQPValue::LongString("bottom".into());
        for _ in 0..100 {
            let mut table = FieldTable::default();
            table.insert("n".into(), value);
            value = AMQPValue::FieldTable(table);
        }
        let text = header_text(&value);
        assert!(text.contains("nested deeper than 16 levels"), "{text}");
        assert!(!text.contains("bottom"));
        let wide = AMQPValue::FieldArray(
            vec![AMQPValue::LongString("é".repeat(1000).as_str().into()); 100].into(),
        );
        assert!(header_text(&wide).len() <= MAX_HEADER_TEXT);
    }

    #[test]
    fn header_values_become_text() {
        let mut nested = FieldTable::default();
        nested.insert("a".into(), AMQPValue::LongInt(1));
        nested.insert("b".into(), AMQPValue::LongString("x".into()));
        let mut array = lapin::types::FieldArray::default();
        array.push(AMQPValue::Boolean(true));
        array.push(AMQPValue::Void);
        for (value, text) in [
            (AMQPValue::LongString("grüße".into()), "grüße"),
            (AMQPValue::ShortString("s".into()), "s"),
            (AMQPValue::Boolean(false), "false"),
            (AMQPValue::LongLongInt(-42), "-42"),
            (AMQPValue::ShortShortUInt(7), "7"),
            (AMQPValue::Double(1.5), "1.5"),
            (
                AMQPValue::DecimalValue(lapin::types::DecimalValue { scale: 2, value: 5 }),
                "0.05",
            ),
            (AMQPValue::Timestamp(1_700_000_000), "2023-11-14T22:13:20Z"),
            (AMQPValue::ByteArray(vec![0, 255].into()), "AP8="),
            (AMQPValue::Void, ""),
            (AMQPValue::FieldTable(nested), r#"{"a":1,"b":"x"}"#),
            (AMQPValue::FieldArray(array), "[true,null]"),
        ] {
            assert_eq!(header_text(&value), text, "{value:?}");
        }
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(12345, 0), "12345");
    }

    #[test]
    fn deliveries_map_to_metadata() {
        let mut headers = FieldTable::default();
        headers.insert("ce-specversion".into(), AMQPValue::LongString("1.0".into()));
        headers.insert("x-count".into(), AMQPValue::LongInt(3));
        let mut delivery = Delivery::mock(
            1,
            "legacy".into(),
            "order.created".into(),
            false,
            b"{}".to_vec(),
        );
        delivery.properties = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_content_type("application/json".into())
            .with_type("OrderCreated".into())
            .with_app_id("shop".into())
            .with_headers(headers);
        let received = Utc::now();
        let meta = metadata(&delivery, "amqp://h:5672/%2F/q", received);
        assert_eq!(meta.subject.as_deref(), Some("order.created"));
        assert_eq!(meta.id.as_deref(), Some("m-1"));
        assert_eq!(meta.content_type.as_deref(), Some("application/json"));
        assert_eq!(meta.time, Utc.timestamp_opt(1_700_000_000, 0).single());
        assert_eq!(meta.source_uri, "amqp://h:5672/%2F/q");
        let header = |name: &str| {
            meta.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("ce-specversion"), Some("1.0"));
        assert_eq!(header("x-count"), Some("3"));
        assert_eq!(header("amqp-type"), Some("OrderCreated"));
        assert_eq!(header("amqp-app-id"), Some("shop"));
        assert_eq!(header("amqp-user-id"), None);

        // An application header cannot stand in for a property, in any case: with the
        // property set it gives way to it, without it it is gone.
        let mut spoofed = FieldTable::default();
        spoofed.insert("AMQP-User-Id".into(), AMQPValue::LongString("evil".into()));
        spoofed.insert("amqp-app-id".into(), AMQPValue::LongString("evil".into()));
        delivery.properties = BasicProperties::default()
            .with_user_id("guest".into())
            .with_headers(spoofed);
        let meta = metadata(&delivery, "s", received);
        assert_eq!(
            meta.headers,
            [("amqp-user-id".to_owned(), "guest".to_owned())]
        );

        let bare = Delivery::mock(2, "".into(), "".into(), true, Vec::new());
        let meta = metadata(&bare, "s", received);
        assert_eq!((meta.subject, meta.id, meta.time), (None, None, None));
        assert!(meta.headers.is_empty());
    }

    #[test]
    fn a_refused_declare_names_the_key_and_the_queue() {
        let conflict =
            |reply: &str, locked| SettingsConflict::from_reply(reply, locked).map(|c| c.key);
        assert_eq!(
            conflict(
                "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received none but current is the value '10' of type 'signedint'",
                false
            ),
            Some("arguments.x-max-length".into())
        );
        assert_eq!(
            conflict(
                "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'",
                false
            ),
            Some("durable".into())
        );
        assert_eq!(
            conflict(
                "PRECONDITION_FAILED - inequivalent arg 'auto_delete' ...",
                false
            ),
            Some("auto_delete".into())
        );
        assert_eq!(
            conflict(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q'",
                true
            ),
            Some("exclusive".into())
        );
        // Not a conflict with an existing queue: a value RabbitMQ refuses for any queue.
        let invalid = "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow";
        assert_eq!(conflict(invalid, false), None);

        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'orders' in vhost '/': received '20' but current is '10'";
        let text = SettingsConflict::from_reply(reply, false)
            .unwrap()
            .refusal("orders", Some(3));
        assert!(
            text.starts_with(
                "key `arguments.x-max-length`: queue `orders` exists with another `arguments.x-max-length`"
            ),
            "{text}"
        );
        for fragment in [
            reply,
            "never deletes or re-creates",
            "its 3 ready message(s) stay",
        ] {
            assert!(text.contains(fragment), "{fragment} in {text}");
        }
    }

    #[test]
    fn an_edit_reports_the_queue_or_bindings_it_leaves() {
        let consumed = |url: &str, queue: &str, exchange: Option<&str>, keys: &[&str]| {
            let mut table = serde_json::json!({"url": url, "queue": queue});
            if let Some(exchange) = exchange {
                table["bind_exchange"] = exchange.into();
                table["binding_keys"] = keys.into();
            }
            let spec = parse(table).unwrap();
            Consumed::of(&spec, &Endpoint::parse(url).unwrap())
        };
        let url = "amqp://u:p@127.0.0.1/%2f";
        let before = consumed(url, "q", Some("legacy"), &["a.#", "b.#"]);
        assert_eq!(left_behind(&before, &before), None);
        // Same broker under another name, a key added: nothing left behind.
        let added = consumed(
            "amqp://localhost:5672/%2f",
            "q",
            Some("legacy"),
            &["b.#", "a.#", "c.#"],
        );
        assert_eq!(left_behind(&before, &added), None);
        assert_eq!(
            left_behind(&before, &consumed(url, "q", Some("legacy"), &["a.#"])),
            Some(LeftBehind::Bindings(vec![("legacy".into(), "b.#".into())]))
        );
        assert_eq!(
            left_behind(&before, &consumed(url, "q", Some("other"), &["a.#"])),
            Some(LeftBehind::Bindings(vec![
                ("legacy".into(), "a.#".into()),
                ("legacy".into(), "b.#".into())
            ]))
        );
        assert_eq!(
            left_behind(&before, &consumed(url, "q", None, &[])),
            Some(LeftBehind::Bindings(vec![
                ("legacy".into(), "a.#".into()),
                ("legacy".into(), "b.#".into())
            ]))
        );
        assert_eq!(
            left_behind(
                &before,
                &consumed(url, "q2", Some("legacy"), &["a.#", "b.#"])
            ),
            Some(LeftBehind::Queue)
        );
        assert_eq!(
            left_behind(
                &before,
                &consumed("amqp://127.0.0.1/other", "q", Some("legacy"), &["a.#"])
            ),
            Some(LeftBehind::QueueElsewhere)
        );
        // The record holds no credentials.
        let record = serde_json::to_string(&before).unwrap();
        assert!(!record.contains("u:p"), "{record}");
    }

    #[test]
    fn timestamps_are_seconds_or_obvious_milliseconds() {
        assert_eq!(time_of(0), None);
        assert_eq!(
            time_of(1_700_000_000),
            Utc.timestamp_opt(1_700_000_000, 0).single()
        );
        assert_eq!(
            time_of(1_700_000_000_123),
            Utc.timestamp_millis_opt(1_700_000_000_123).single()
        );
    }

    #[test]
    fn lapin_keeps_ipv4_hosts_but_loses_ipv6_ones() {
        // The reason `open` overrides the host: check what lapin's parser does.
        let uri: AMQPUri = "amqp://u:p@10.1.2.3:5673/%2f".parse().unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        let uri: AMQPUri = "amqp://u:p@[fd00::1]:5673/%2f".parse().unwrap();
        assert_eq!(uri.authority.host, "localhost", "IPv6 literals are lost");
    }
}
