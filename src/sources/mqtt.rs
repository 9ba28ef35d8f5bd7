//! `kind = "mqtt"`: MQTT 3.1.1 and MQTT 5 subscriptions (several filters, wildcards,
//! MQTT 5 shared subscriptions) read through a persistent session, acknowledged by hand.
//!
//! Delivery (DESIGN.md, "Delivery contract"):
//!
//! - **QoS 1 (the default) is at-least-once.** Automatic acknowledgements are off. A
//!   PUBACK goes out only after the exchange confirmed the event made from the message
//!   (or its dead-letter copy), and PUBACKs go out in the order the PUBLISHes arrived, as
//!   MQTT requires: a confirm that overtakes an earlier message waits for it
//!   ([`InOrder`]). `Acker::ack` returns once the PUBACK is written to the connection, so
//!   a drain (SIGTERM, reload) that finished has really acknowledged what it confirmed.
//! - **The session is persistent**: a stable client id with `clean_session = false`
//!   (3.1.1) or `clean_start = false` and a session expiry (5). The broker keeps the
//!   subscriptions and queues QoS 1 messages while broker-bridge is stopped or
//!   disconnected, and resends those it delivered but never got a PUBACK for. When the
//!   broker reports no session (`session present = 0`), every filter is subscribed
//!   again, and if this bridge had a session there, a warning says that what was
//!   published meanwhile was not kept.
//! - **Edited settings never drop what the session holds** ([`SessionMemory::plan`]).
//!   Filters added to `topics` are subscribed before removed ones are unsubscribed, so
//!   a topic both cover is never without a subscription. An UNSUBSCRIBE stops new
//!   messages for the filter; what the broker queued for it before is still delivered
//!   (Mosquitto does, measured with 2.0.11; MQTT 5 §3.10.4 lets a broker do either) and
//!   bridged: there is no client-side filtering by topic. The filters a session was
//!   given are recorded in `<state_dir>/mqtt/<bridge>.json`, so a filter removed while
//!   broker-bridge was stopped is unsubscribed at the start too. A new `client_id` (or
//!   `url`) is a new, empty session: the old one keeps its queued messages until the
//!   broker expires it, and a warning names it (from the same record).
//! - **Ids**: MQTT messages carry no identity, so events get a UUIDv7. A QoS 1 message
//!   the broker resends to the same process after a reconnect (DUP flag, same packet id,
//!   same topic and bytes) gets the id of its first delivery, so consumers deduplicate
//!   it. After a restart of the process a resent message gets a new id.
//! - **QoS 0 is at-most-once**: no acknowledgements, no redelivery.
//!
//! One task per connection drives rumqttc's event loop. It keeps answering pings,
//! writing PUBACKs and queueing arriving messages while the bridge does not pull
//! (backpressure during an exchange outage), so the connection does not time out and
//! acknowledgements are never stuck behind a pull. For QoS 1 the broker's flow control
//! bounds that queue: MQTT 5 receive maximum = `max_in_flight`; with 3.1.1 the broker's
//! own window (Mosquitto: `max_inflight_messages`, 20 by default). A connection error
//! ends the task and makes `next` fail, so the bridge reconnects with its capped,
//! jittered backoff, forever (rumqttc has no backoff of its own; each connection gets a
//! fresh event loop).
//!
//! MQTT 5 properties: the content type becomes the message's content type and the user
//! properties become headers (usable as `{header:NAME}` in `tenant` and `type`). A
//! binary-mode CloudEvent (MQTT 5 binding: attributes as user properties without a
//! prefix) passes through with its own id, source and type.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use rumqttc::v5;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use super::common::in_order::{InOrder, Ticket};
use super::common::context::{ConnectContext, Source};
use crate::config::TlsOptions;
use crate::cloudevent::is_valid_attribute_name;
use crate::config::{duration, fields};
use crate::message::{Acker, Incoming, Metadata, NoAck, SourceError};
use crate::secret::Secret;

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `protocol = 5` is an easy slip in TOML; take the number too.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Text(String),
            Number(u64),
        }
        match Given::deserialize(deserializer)? {
            Given::Text(text) if text == "3.1.1" => Ok(Protocol::V311),
            Given::Text(text) if text == "5" || text == "5.0" => Ok(Protocol::V5),
            Given::Number(5) => Ok(Protocol::V5),
            _ => Err(serde::de::Error::custom(
                "the MQTT protocol is \"3.1.1\" or \"5\"",
            )),
        }
    }
}

/// `kind = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSpec {
    /// Broker URL: `mqtt://host:1883` (plain TCP) or `mqtts://host:8883` (TLS).
    #[serde(default = "default_url")]
    pub url: Secret,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Topic filters to subscribe to; wildcards `+` (one level) and `#` (the rest).
    pub topics: Vec<String>,
    /// 1: at-least-once (default). 0: at-most-once.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Names the session; default `broker-bridge-<bridge name>`. Keep it stable across
    /// restarts, and give each replica its own.
    pub client_id: Option<String>,
    /// MQTT 5: subscribe as `$share/<group>/<filter>`, so replicas split the messages.
    pub shared_group: Option<String>,
    /// MQTT 5: how long the broker keeps the session while broker-bridge is away.
    #[serde(default, with = "duration::option")]
    pub session_expiry: Option<Duration>,
    #[serde(default = "default_keep_alive", with = "duration")]
    pub keep_alive: Duration,
    pub user: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<Secret>,
    pub tls: Option<TlsOptions>,
}

fn default_url() -> Secret {
    "mqtt://127.0.0.1:1883".into()
}

fn default_qos() -> u8 {
    1
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// MQTT 5 session expiry when the config gives none: long enough to ride out a night
/// with the edge box switched off, short enough that an abandoned session goes away.
const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The largest MQTT packet (remaining length 268,435,455 plus the fixed header). We
/// accept every packet the protocol allows: refusing one would drop the connection, and
/// the broker would resend the same message forever. `max_message_bytes` dead-letters
/// large messages instead.
const MAX_PACKET_BYTES: usize = 268_435_460;

/// Requests (PUBACKs, SUBSCRIBE) queued to the event loop. PUBACKs are bounded by the
/// messages the broker lets us hold unacknowledged, at most 65535 in MQTT 5.
const REQUEST_CAPACITY: usize = 65_535 + 64;

/// Seconds to reach the broker and get its CONNACK.
const CONNECT_TIMEOUT_SECONDS: u64 = 10;
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// A PUBACK not written within this is reported as failed (the broker resends).
const PUBACK_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl MqttSpec {
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
        fields::reject_unknown(&table, fields::names::<MqttSpec>(), "kind `mqtt`")?;
        let spec: MqttSpec = fields::parse(Value::Object(table))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses settings that would otherwise be silently ignored or quietly lose messages.
    fn validate(&self) -> Result<(), String> {
        let endpoint = Endpoint::parse(self.url.expose()).map_err(|e| format!("key `url`: {e}"))?;
        if self.topics.is_empty() {
            return Err(
                "key `topics`: give at least one topic filter, e.g. [\"sensors/#\"]".into(),
            );
        }
        for (index, topic) in self.topics.iter().enumerate() {
            check_filter(topic).map_err(|e| format!("key `topics`: `{topic}` {e}"))?;
            if self.topics[..index].contains(topic) {
                return Err(format!("key `topics`: `{topic}` is listed twice"));
            }
        }
        match self.qos {
            0 | 1 => {}
            2 => {
                return Err(
                    "key `qos`: 2 is not supported; publishing to the exchange is \
                            at-least-once, so exactly-once cannot hold end to end. Use 1 \
                            (consumers deduplicate on source and id)"
                        .into(),
                );
            }
            other => return Err(format!("key `qos`: {other} is not a QoS; use 1 or 0")),
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 65_535)
        {
            return Err(
                "key `client_id`: must be 1 to 65535 bytes (it names the persistent session)"
                    .into(),
            );
        }
        if let Some(group) = &self.shared_group {
            if self.protocol != Protocol::V5 {
                return Err(
                    "key `shared_group`: shared subscriptions need protocol = \"5\" \
                            (an MQTT 3.1.1 broker may take `$share/...` for an ordinary topic \
                            and deliver nothing)"
                        .into(),
                );
            }
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(
                    "key `shared_group`: must be a non-empty name without `/`, `+` or `#`".into(),
                );
            }
        }
        if let Some(expiry) = self.session_expiry {
            if self.protocol != Protocol::V5 {
                return Err(
                    "key `session_expiry`: only for protocol = \"5\"; a 3.1.1 session \
                            lasts until the broker drops it (Mosquitto: \
                            persistent_client_expiration)"
                        .into(),
                );
            }
            if expiry.as_secs() == 0 {
                return Err(
                    "key `session_expiry`: 0 ends the session with each connection, \
                            so messages published while broker-bridge is away are lost; give \
                            a duration such as \"24h\""
                        .into(),
                );
            }
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive.as_secs() > 65_535 {
            return Err("key `keep_alive`: must be between 5s and 65535s".into());
        }
        if self.password.is_some() && self.user.is_none() {
            return Err("key `password`: needs `user` too".into());
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("key `tls`: `cert_file` and `key_file` go together".into());
            }
            let configured = tls.required
                || tls.ca_file.is_some()
                || tls.cert_file.is_some()
                || tls.key_file.is_some();
            if configured && !endpoint.tls {
                return Err(format!(
                    "key `tls`: the url `{}` is plain TCP; use mqtts:// for TLS",
                    self.url.redacted()
                ));
            }
        }
        Ok(())
    }

    /// The client id, which names the broker's session for this bridge.
    pub fn client_id(&self, bridge: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("broker-bridge-{bridge}"))
    }

    /// The filters as subscribed, with the shared-subscription prefix.
    fn filters(&self) -> Vec<(String, u8)> {
        self.topics
            .iter()
            .map(|topic| {
                let filter = match &self.shared_group {
                    Some(group) => format!("$share/{group}/{topic}"),
                    None => topic.clone(),
                };
                (filter, self.qos)
            })
            .collect()
    }

    fn session_expiry(&self) -> Duration {
        self.session_expiry.unwrap_or(DEFAULT_SESSION_EXPIRY)
    }

    pub fn describe(&self) -> String {
        let topics: Vec<String> = self.topics.iter().map(|t| format!("`{t}`")).collect();
        let endpoint = Endpoint::parse(self.url.expose());
        let mut details = vec![
            format!("MQTT {}", self.protocol.label()),
            format!("QoS {}", self.qos),
        ];
        if let Some(group) = &self.shared_group {
            details.push(format!("shared group `{group}`"));
        }
        details.push(match &self.client_id {
            Some(id) => format!("client id `{id}`"),
            None => "client id `broker-bridge-<bridge name>`".into(),
        });
        details.push(match self.protocol {
            Protocol::V311 => "persistent session".into(),
            Protocol::V5 => format!(
                "persistent session, expiry {}",
                human_duration(self.session_expiry())
            ),
        });
        if endpoint.as_ref().is_ok_and(|e| e.tls) {
            details.push("TLS".into());
        }
        let guarantee = if self.qos == 0 {
            "at-most-once: QoS 0 has no acknowledgements, messages in flight when broker-bridge \
             stops or disconnects are lost"
        } else {
            "at-least-once: PUBACK after the exchange confirmed, in arrival order"
        };
        format!(
            "topics {} on {} ({}); {guarantee}",
            topics.join(", "),
            endpoint.map_or_else(|_| self.url.redacted(), |e| e.label()),
            details.join(", ")
        )
    }
}

/// The keys of `kind = "mqtt"` (the `[bridge.tls]` keys are listed by the caller).
fn accepted_keys() -> Vec<&'static str> {
    fields::names::<MqttSpec>().to_vec()
}

/// `kind = "mqtt"`.
pub struct Mqtt;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Mqtt {
    const NAME: &'static str = "mqtt";
    const SECRET_KEYS: &'static [&'static str] = &["url", "password"];
    type Spec = MqttSpec;

    fn parse(table: Map<String, Value>) -> Result<MqttSpec, String> {
        MqttSpec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &MqttSpec) -> String {
        spec.describe()
    }

    fn subject_separator(_: &MqttSpec) -> Option<char> {
        Some('/')
    }

    async fn connect(
        spec: &MqttSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect(spec, context).await
    }
}

fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Checks a topic filter the way MQTT does, with a message that says what is wrong.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("is empty".into());
    }
    if filter.len() > 65_535 || filter.contains('\0') {
        return Err("is not a valid topic filter".into());
    }
    if filter.starts_with("$share/") {
        return Err(
            "is a shared subscription; write the plain filter and set `shared_group`".into(),
        );
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return Err("has `#` that is not the whole last level".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("has `+` that is not a whole level".into());
        }
    }
    Ok(())
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let usage = "must look like mqtt://host:1883 or mqtts://host:8883";
        let (scheme, rest) = url.trim().split_once("://").ok_or(usage)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme `{other}` is not mqtt:// or mqtts://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(
                "credentials in the url are not read; use `user` and `password` (or \
                 password_file)"
                    .into(),
            );
        }
        if rest.contains(['/', '?', '#']) {
            return Err(format!("{usage} (no path or query)"));
        }
        let (host, port) = match rest.strip_prefix('[') {
            // An IPv6 literal keeps its brackets: rumqttc joins host and port as text.
            Some(v6) => {
                let (address, after) = v6.split_once(']').ok_or(usage)?;
                (format!("[{address}]"), after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (rest.to_owned(), None),
            },
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("{usage} (the host is missing)"));
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{port}` is not a port number"))?,
        };
        Ok(Endpoint { tls, host, port })
    }

    /// `host:port`, for CloudEvent sources and messages.
    fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "mqtts" } else { "mqtt" }
    }
}

/// The TLS settings for rumqttc, reading the PEM files now so a renewed certificate is
/// picked up at the next connection.
fn tls_configuration(
    spec: &MqttSpec,
    endpoint: &Endpoint,
) -> Result<Option<rumqttc::TlsConfiguration>, SourceError> {
    if !endpoint.tls {
        return Ok(None);
    }
    crate::crypto::install_default_provider();
    let options = spec.tls.clone().unwrap_or_default();
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            SourceError::Connect(format!("cannot read {what} {}: {e}", path.display()))
        })
    };
    let ca = match &options.ca_file {
        Some(path) => read(path, "tls.ca_file")?,
        None => system_ca_bundle().map_err(SourceError::Connect)?,
    };
    let client_auth = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => Some((read(cert, "tls.cert_file")?, read(key, "tls.key_file")?)),
        _ => None,
    };
    Ok(Some(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// The system's CA bundle, for `mqtts://` without a `ca_file`. Read from the usual
/// places instead of rumqttc's default (which panics when a system certificate does not
/// load).
fn system_ca_bundle() -> Result<Vec<u8>, String> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
            "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
            "/etc/ssl/ca-bundle.pem",             // openSUSE
            "/etc/ssl/cert.pem",                  // Alpine, BSDs, macOS
        ]
        .map(PathBuf::from),
    );
    for path in &candidates {
        if let Ok(bundle) = std::fs::read(path) {
            return Ok(bundle);
        }
    }
    Err(format!(
        "no system CA bundle found (looked at {}); set ca_file in [bridge.tls]",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

// ---------------------------------------------------------------------------------------
// The two protocol versions behind one shape.

/// A message as either protocol version delivers it.
#[derive(Debug)]
struct Arrived {
    topic: String,
    payload: Bytes,
    /// The packet id of a QoS 1 message, which needs a PUBACK; `None` for QoS 0.
    pkid: Option<u16>,
    /// Set by the broker when it resends a message it delivered before.
    dup: bool,
    content_type: Option<String>,
    user_properties: Vec<(String, String)>,
}

/// What the driver needs to know of the event loop's events.
#[derive(Debug)]
enum Event {
    ConnAck {
        session_present: bool,
    },
    /// Per requested filter: the granted QoS, or why the broker refused it.
    SubAck(Vec<Result<u8, String>>),
    /// Per filter of an UNSUBSCRIBE: done, or why the broker refused it.
    UnsubAck(Vec<Result<(), String>>),
    Publish(Arrived),
    /// A PUBACK was written to the connection.
    PubAckWritten(u16),
    DisconnectWritten,
    Other,
}

enum EventLoop {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl EventLoop {
    async fn poll(&mut self) -> Result<Event, String> {
        match self {
            EventLoop::V311(events) => {
                use rumqttc::{Event as E, Outgoing, Packet};
                let event = events.poll().await.map_err(|e| e.to_string())?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(ack)) => Event::ConnAck {
                        session_present: ack.session_present,
                    },
                    E::Incoming(Packet::SubAck(ack)) => Event::SubAck(
                        ack.return_codes
                            .iter()
                            .map(|code| match code {
                                rumqttc::SubscribeReasonCode::Success(qos) => Ok(*qos as u8),
                                rumqttc::SubscribeReasonCode::Failure => {
                                    Err("refused (SUBACK failure; check the broker's ACL for this \
                                     client)"
                                        .to_owned())
                                }
                            })
                            .collect(),
                    ),
                    // 3.1.1 has no reason codes: an UNSUBACK means done.
                    E::Incoming(Packet::UnsubAck(_)) => Event::UnsubAck(vec![Ok(())]),
                    E::Incoming(Packet::Publish(publish)) => Event::Publish(Arrived {
                        pkid: (publish.qos != rumqttc::QoS::AtMostOnce).then_some(publish.pkid),
                        dup: publish.dup,
                        topic: publish.topic,
                        payload: publish.payload,
                        content_type: None,
                        user_properties: Vec::new(),
                    }),
                    E::Outgoing(Outgoing::PubAck(pkid)) => Event::PubAckWritten(pkid),
                    E::Outgoing(Outgoing::Disconnect) => Event::DisconnectWritten,
                    _ => Event::Other,
                })
            }
            EventLoop::V5(events) => {
                use rumqttc::Outgoing;
                use v5::mqttbytes::v5::{
                    DisconnectReasonCode, Packet, SubscribeReasonCode, UnsubAckReason,
                };
                use v5::{ConnectionError, Event as E, StateError};
                let event = events.poll().await.map_err(|error| match &error {
                    ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code: DisconnectReasonCode::SessionTakenOver,
                        ..
                    }) => format!(
                        "{error} (another client connected with this client id; replicas \
                         need distinct client ids)"
                    ),
                    _ => error.to_string(),
                })?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(ack)) => Event::ConnAck {
                        session_present: ack.session_present,
                    },
                    E::Incoming(Packet::SubAck(ack)) => Event::SubAck(
                        ack.return_codes
                            .iter()
                            .map(|code| match code {
                                SubscribeReasonCode::Success(qos) => Ok(*qos as u8),
                                refused => Err(format!("refused ({refused:?})")),
                            })
                            .collect(),
                    ),
                    E::Incoming(Packet::UnsubAck(ack)) => Event::UnsubAck(
                        ack.reasons
                            .iter()
                            .map(|reason| match reason {
                                // Already gone is what we wanted.
                                UnsubAckReason::Success | UnsubAckReason::NoSubscriptionExisted => {
                                    Ok(())
                                }
                                refused => Err(format!("refused ({refused:?})")),
                            })
                            .collect(),
                    ),
                    E::Incoming(Packet::Publish(publish)) => {
                        let properties = publish.properties.unwrap_or_default();
                        Event::Publish(Arrived {
                            pkid: (publish.qos != v5::mqttbytes::QoS::AtMostOnce)
                                .then_some(publish.pkid),
                            dup: publish.dup,
                            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                            payload: publish.payload,
                            content_type: properties.content_type,
                            user_properties: properties.user_properties,
                        })
                    }
                    E::Outgoing(Outgoing::PubAck(pkid)) => Event::PubAckWritten(pkid),
                    E::Outgoing(Outgoing::Disconnect) => Event::DisconnectWritten,
                    _ => Event::Other,
                })
            }
        }
    }
}

#[derive(Clone)]
enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    /// Queues a PUBACK without waiting: it is called under the ordering lock.
    fn try_ack(&self, pkid: u16) -> Result<(), String> {
        match self {
            Client::V311(client) => {
                let mut publish = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, "");
                publish.pkid = pkid;
                client.try_ack(&publish).map_err(|e| e.to_string())
            }
            Client::V5(client) => {
                let mut publish = v5::mqttbytes::v5::Publish::new(
                    "",
                    v5::mqttbytes::QoS::AtLeastOnce,
                    Bytes::new(),
                    None,
                );
                publish.pkid = pkid;
                client.try_ack(&publish).map_err(|e| e.to_string())
            }
        }
    }

    fn try_subscribe(&self, filters: &[(String, u8)]) -> Result<(), String> {
        match self {
            Client::V311(client) => client
                .try_subscribe_many(filters.iter().map(|(filter, qos)| {
                    rumqttc::SubscribeFilter::new(filter.clone(), v4_qos(*qos))
                }))
                .map_err(|e| e.to_string()),
            Client::V5(client) => client
                .try_subscribe_many(filters.iter().map(|(filter, qos)| {
                    let mut filter = v5::mqttbytes::v5::Filter::new(filter.clone(), v5_qos(*qos));
                    // A SUBSCRIBE that replaces an existing subscription must not send
                    // the retained messages again (they would be bridged twice).
                    filter.retain_forward_rule =
                        v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                    filter
                }))
                .map_err(|e| e.to_string()),
        }
    }

    fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V311(client) => client.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V5(client) => client.try_unsubscribe(filter).map_err(|e| e.to_string()),
        }
    }

    fn try_disconnect(&self) -> Result<(), String> {
        match self {
            Client::V311(client) => client.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(client) => client.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

fn v4_qos(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

fn v5_qos(qos: u8) -> v5::mqttbytes::QoS {
    if qos == 0 {
        v5::mqttbytes::QoS::AtMostOnce
    } else {
        v5::mqttbytes::QoS::AtLeastOnce
    }
}

fn new_client(
    spec: &MqttSpec,
    endpoint: &Endpoint,
    client_id: String,
    context: &ConnectContext,
) -> Result<(Client, EventLoop), SourceError> {
    let transport = tls_configuration(spec, endpoint)?.map(rumqttc::Transport::tls_with_config);
    let credentials = spec.user.as_ref().map(|user| {
        let password = spec
            .password
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        (user.clone(), password.to_owned())
    });
    Ok(match spec.protocol {
        Protocol::V311 => {
            let mut options = rumqttc::MqttOptions::new(client_id, &endpoint.host, endpoint.port);
            options
                .set_keep_alive(spec.keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
            if let Some((user, password)) = credentials {
                options.set_credentials(user, password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, mut events) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
            events
                .network_options
                .set_connection_timeout(CONNECT_TIMEOUT_SECONDS);
            (Client::V311(client), EventLoop::V311(Box::new(events)))
        }
        Protocol::V5 => {
            let mut options = v5::MqttOptions::new(client_id, &endpoint.host, endpoint.port);
            let expiry = spec.session_expiry().as_secs().min(u64::from(u32::MAX)) as u32;
            options
                .set_keep_alive(spec.keep_alive)
                .set_clean_start(false)
                .set_session_expiry_interval(Some(expiry))
                // The broker's flow control keeps at most this many QoS 1 messages
                // unacknowledged with us, which bounds what waits for the bridge.
                .set_receive_maximum(Some(context.max_in_flight.clamp(1, 65_535) as u16))
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
                .set_manual_acks(true)
                .set_connection_timeout(CONNECT_TIMEOUT_SECONDS);
            if let Some((user, password)) = credentials {
                options.set_credentials(user, password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, events) = v5::AsyncClient::new(options, REQUEST_CAPACITY);
            (Client::V5(client), EventLoop::V5(Box::new(events)))
        }
    })
}

// ---------------------------------------------------------------------------------------
// What outlives one connection: subscriptions and the ids of unacknowledged messages.

/// What this process knows about one broker session (server and client id).
#[derive(Debug, Default)]
struct SessionMemory {
    /// The filters this process last subscribed the session to; empty before the first
    /// subscription in this process.
    subscribed: Vec<(String, u8)>,
    /// Event ids of QoS 1 messages handed to the bridge and not yet acknowledged, by
    /// packet id, with a digest of the message: a resent message keeps its id.
    unacked: HashMap<u16, (u64, String)>,
}

/// What to do with the session after a CONNACK.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    subscribe: Vec<(String, u8)>,
    /// Filters the session has and `topics` no longer lists; unsubscribed only after
    /// `subscribe` is acknowledged.
    unsubscribe: Vec<String>,
    /// The broker has no session although this bridge had one there: what was published
    /// while broker-bridge was away was not kept for it.
    session_lost: bool,
    /// A session is present, but nothing tells which filters it has from before this
    /// process (no record): a filter removed while stopped cannot be unsubscribed.
    filters_unknown: bool,
}

impl SessionMemory {
    /// What to subscribe and unsubscribe after a CONNACK. A session the broker kept
    /// already has the filters this process gave it, so those are not subscribed again:
    /// a SUBSCRIBE makes an MQTT 3.1.1 broker resend every retained message, which would
    /// be bridged twice. Before the first subscription in this process, or when the
    /// broker has no session, every filter is subscribed. The filters the session has
    /// and `wanted` lacks are unsubscribed: those this process subscribed, or before its
    /// first subscription those `recorded` (by an earlier process, in the state_dir).
    /// Unsubscribing loses nothing the session already queued: the broker still
    /// delivers it (Mosquitto), and the bridge bridges every topic it is given.
    fn plan(
        &mut self,
        session_present: bool,
        wanted: &[(String, u8)],
        recorded: Option<&[String]>,
    ) -> Plan {
        if !session_present {
            // A new session: nothing will be resent, and no subscription exists.
            let session_lost = !self.subscribed.is_empty() || recorded.is_some();
            self.unacked.clear();
            self.subscribed.clear();
            return Plan {
                subscribe: wanted.to_vec(),
                unsubscribe: Vec::new(),
                session_lost,
                filters_unknown: false,
            };
        }
        let first_in_process = self.subscribed.is_empty();
        let subscribe = wanted
            .iter()
            .filter(|filter| first_in_process || !self.subscribed.contains(filter))
            .cloned()
            .collect();
        let had: Vec<String> = if first_in_process {
            recorded.unwrap_or_default().to_vec()
        } else {
            self.subscribed.iter().map(|(old, _)| old.clone()).collect()
        };
        let unsubscribe = had
            .into_iter()
            .filter(|old| !wanted.iter().any(|(new, _)| new == old))
            .collect();
        Plan {
            subscribe,
            unsubscribe,
            session_lost: false,
            filters_unknown: first_in_process && recorded.is_none(),
        }
    }

    /// The event id of a QoS 1 message: that of its first delivery when the broker
    /// resends it, else a new UUIDv7.
    fn id_for(&mut self, pkid: u16, dup: bool, digest: u64) -> String {
        if dup
            && let Some((known, id)) = self.unacked.get(&pkid)
            && *known == digest
        {
            return id.clone();
        }
        let id = uuid::Uuid::now_v7().to_string();
        self.unacked.insert(pkid, (digest, id.clone()));
        id
    }

    /// Forgets an acknowledged message (unless its packet id was already reused).
    fn acknowledged(&mut self, pkid: u16, id: &str) {
        if self
            .unacked
            .get(&pkid)
            .is_some_and(|(_, known)| known == id)
        {
            self.unacked.remove(&pkid);
        }
    }
}

static SESSIONS: LazyLock<Mutex<HashMap<String, Arc<Mutex<SessionMemory>>>>> =
    LazyLock::new(Default::default);

fn session_memory(key: String) -> Arc<Mutex<SessionMemory>> {
    SESSIONS
        .lock()
        .expect("sessions lock")
        .entry(key)
        .or_default()
        .clone()
}

fn digest(arrived: &Arrived) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    arrived.topic.hash(&mut hasher);
    arrived.payload.hash(&mut hasher);
    hasher.finish()
}

/// Which session a bridge last used and the filters it gave it, kept in
/// `<state_dir>/mqtt/<bridge>.json`. It lets a start unsubscribe a filter removed while
/// broker-bridge was stopped, and tell that `client_id` or `url` changed (the old
/// session still holds what was queued there). Losing it loses no message: without it
/// a removed filter stays subscribed, as the log then says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRecord {
    /// `host:port` of the broker.
    server: String,
    client_id: String,
    /// The filters as subscribed (with the `$share/<group>/` prefix).
    filters: Vec<String>,
}

impl SessionRecord {
    fn same_session(&self, server: &str, client_id: &str) -> bool {
        self.server == server && self.client_id == client_id
    }
}

/// The latest record of each bridge in this process, by bridge name: the state_dir
/// copy may be missing (not writable), a reload still knows.
static RECORDS: LazyLock<Mutex<HashMap<String, SessionRecord>>> = LazyLock::new(Default::default);

fn record_path(state_dir: &Path, bridge: &str) -> PathBuf {
    state_dir.join("mqtt").join(format!("{bridge}.json"))
}

/// The bridge's last record: this process's, else the state_dir's.
fn previous_record(path: &Path, bridge: &str) -> Option<SessionRecord> {
    if let Some(record) = RECORDS.lock().expect("records lock").get(bridge) {
        return Some(record.clone());
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot read the record of this bridge's MQTT session; filters removed \
                 from `topics` while broker-bridge was stopped stay subscribed"
            );
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "the record of this bridge's MQTT session is damaged and is ignored (it is \
                 written again once subscribed); filters removed from `topics` while \
                 broker-bridge was stopped stay subscribed"
            );
            None
        }
    }
}

/// Keeps the record in this process and, when it changed, in the state_dir (atomically,
/// `state_file`).
fn keep_record(path: &Path, bridge: &str, record: SessionRecord, previous: Option<&SessionRecord>) {
    RECORDS
        .lock()
        .expect("records lock")
        .insert(bridge.to_owned(), record.clone());
    if previous == Some(&record) {
        return;
    }
    let write = || super::common::state_file::write_json(path, &record);
    if let Err(e) = write() {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot record this bridge's MQTT session in the state_dir; after a restart, \
             filters removed from `topics` while broker-bridge was stopped stay subscribed, \
             and a changed client_id is not reported"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Connecting, the connection task, the source and its acknowledgements.

/// PUBACKs queued and not yet seen written, by packet id.
type Written = Arc<Mutex<HashMap<u16, oneshot::Sender<()>>>>;

pub async fn connect(
    spec: &MqttSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let endpoint = Endpoint::parse(spec.url.expose()).map_err(SourceError::Connect)?;
    let server = endpoint.label();
    let client_id = spec.client_id(&context.bridge);
    let (client, mut events) = new_client(spec, &endpoint, client_id.clone(), context)?;

    // The first poll connects: TCP (and TLS), CONNECT, CONNACK.
    let session_present = match events.poll().await {
        Ok(Event::ConnAck { session_present }) => session_present,
        Ok(other) => {
            return Err(SourceError::Connect(format!(
                "expected CONNACK from {server}, got {other:?}"
            )));
        }
        Err(error) => {
            return Err(SourceError::Connect(format!(
                "{server} (MQTT {}): {error}",
                spec.protocol.label()
            )));
        }
    };
    let record_path = record_path(&context.state_dir, &context.bridge);
    let previous = previous_record(&record_path, &context.bridge);
    if let Some(old) = previous
        .as_ref()
        .filter(|old| !old.same_session(&server, &client_id))
    {
        // MQTT cannot tell what another session holds without taking it over (which
        // would throw out whoever uses it now), so the bridge leaves it alone and says so.
        tracing::warn!(
            previous_client_id = %old.client_id,
            previous_server = %old.server,
            %client_id,
            "this bridge's previous session `{}` on {} may still hold messages: queued \
             there before `client_id` or `url` changed, they are not bridged by the new \
             session. The old session is still subscribed to {:?} and goes on queueing \
             until the broker expires it (MQTT 5: its session expiry; 3.1.1 on Mosquitto: \
             persistent_client_expiration, never by default). To bridge what it holds, \
             set the old client_id again; to end it, connect once under its client id \
             with a clean session",
            old.client_id,
            old.server,
            old.filters,
        );
    }
    let recorded = previous
        .as_ref()
        .filter(|old| old.same_session(&server, &client_id))
        .map(|old| old.filters.as_slice());
    let session = session_memory(format!("{server}/{client_id}"));
    let wanted = spec.filters();
    let plan = session
        .lock()
        .expect("session lock")
        .plan(session_present, &wanted, recorded);
    tracing::info!(
        %client_id,
        session_present,
        subscribing = ?plan.subscribe.iter().map(|(f, _)| f).collect::<Vec<_>>(),
        unsubscribing = ?plan.unsubscribe,
        "connected to the MQTT broker"
    );
    if plan.session_lost {
        tracing::warn!(
            %client_id,
            "the broker has no session for this client id although this bridge had one \
             (expired after its session expiry, dropped by the broker, or taken by a \
             client with a clean session): messages published while broker-bridge was \
             away were not kept for it"
        );
    }
    if plan.filters_unknown {
        tracing::info!(
            %client_id,
            "the session's filters from before this process are not recorded in the \
             state_dir: a filter removed from `topics` while broker-bridge was stopped \
             stays subscribed"
        );
    }

    // For QoS 1 the broker's flow control bounds the queue and the driver must never
    // wait on it (PUBACKs would stall). QoS 0 has no flow control: there the driver
    // waits for the bridge (TCP backpressure), which delays no acknowledgement.
    let queue_capacity = if spec.qos == 0 {
        context.max_in_flight.max(1)
    } else {
        65_535 + context.max_in_flight
    };
    let (queue_tx, queue_rx) = mpsc::channel(queue_capacity);
    let (failed_tx, failed_rx) = watch::channel(None);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let written: Written = Arc::default();
    let closed = CancellationToken::new();
    let broken = CancellationToken::new();
    let driver = Driver {
        events,
        client: client.clone(),
        queue: queue_tx,
        failed: failed_tx,
        control: control_tx,
        written: written.clone(),
        closed: closed.clone(),
        broken: broken.clone(),
    };
    tokio::spawn(driver.run().in_current_span());
    let acks = Arc::new(AckState {
        order: Mutex::new(InOrder::default()),
        client: client.clone(),
        written,
        session: session.clone(),
        broken,
        _close_connection: closed.drop_guard(),
    });

    // Running means subscribed: wait for the SUBACK before reporting the bridge up. New
    // filters first, so a topic that an old and a new filter both cover always has a
    // subscription.
    if !plan.subscribe.is_empty() {
        client
            .try_subscribe(&plan.subscribe)
            .map_err(|e| SourceError::Subscription(e.to_string()))?;
        match next_control(&mut control_rx, &failed_rx, "SUBACK").await? {
            Control::SubAck(results) => {
                check_suback(&plan.subscribe, results).map_err(SourceError::Subscription)?
            }
            Control::UnsubAck(_) => {
                return Err(SourceError::Subscription(
                    "the broker answered the SUBSCRIBE with an UNSUBACK".into(),
                ));
            }
        }
    }
    // Filters the broker refused to remove stay in the session, and in the memory, so
    // the next connection tries again.
    let mut still_subscribed = wanted.clone();
    for filter in &plan.unsubscribe {
        client
            .try_unsubscribe(filter)
            .map_err(|e| SourceError::Subscription(format!("unsubscribe `{filter}`: {e}")))?;
        let refused = match next_control(&mut control_rx, &failed_rx, "UNSUBACK").await? {
            Control::UnsubAck(results) => results.into_iter().find_map(Result::err),
            Control::SubAck(_) => Some("answered with a SUBACK".to_owned()),
        };
        match refused {
            None => tracing::warn!(
                %client_id,
                "unsubscribed `{filter}` (no longer in `topics`): what the broker queued \
                 for it before is still delivered and bridged (Mosquitto does; a broker \
                 that drops it on UNSUBSCRIBE loses it)"
            ),
            Some(reason) => {
                tracing::warn!(
                    %client_id,
                    "the broker refused to unsubscribe `{filter}` ({reason}): it stays \
                     subscribed and its messages are bridged; retried on the next connection"
                );
                still_subscribed.push((filter.clone(), spec.qos));
            }
        }
    }
    keep_record(
        &record_path,
        &context.bridge,
        SessionRecord {
            server: server.clone(),
            client_id: client_id.clone(),
            filters: still_subscribed.iter().map(|(f, _)| f.clone()).collect(),
        },
        previous.as_ref(),
    );
    session.lock().expect("session lock").subscribed = still_subscribed;

    Ok(Box::new(MqttSource {
        queue: queue_rx,
        failed: failed_rx,
        acks,
        origin: format!("{}://{server}", endpoint.scheme()),
    }))
}

/// The broker's answer to a SUBSCRIBE or UNSUBSCRIBE, which `connect` sends one at a
/// time and waits for.
#[derive(Debug)]
enum Control {
    SubAck(Vec<Result<u8, String>>),
    UnsubAck(Vec<Result<(), String>>),
}

async fn next_control(
    control: &mut mpsc::UnboundedReceiver<Control>,
    failed: &watch::Receiver<Option<String>>,
    what: &str,
) -> Result<Control, SourceError> {
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, control.recv()).await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => {
            let reason = failed.borrow().clone().unwrap_or_default();
            Err(SourceError::Subscription(format!(
                "connection lost before the {what}: {reason}"
            )))
        }
        Err(_) => Err(SourceError::Subscription(format!(
            "no {what} within {}s",
            SUBSCRIBE_TIMEOUT.as_secs()
        ))),
    }
}

/// Drives one connection's event loop until it fails, or until the source and every
/// acknowledgement handle are gone.
struct Driver {
    events: EventLoop,
    client: Client,
    queue: mpsc::Sender<Arrived>,
    /// Why the connection ended, for `next`.
    failed: watch::Sender<Option<String>>,
    /// SUBACKs and UNSUBACKs, for `connect`.
    control: mpsc::UnboundedSender<Control>,
    written: Written,
    /// Cancelled when the source and every acknowledgement handle are dropped.
    closed: CancellationToken,
    /// Cancelled when a PUBACK could not be queued.
    broken: CancellationToken,
}

impl Driver {
    async fn run(mut self) {
        let reason = loop {
            let event = tokio::select! {
                _ = self.closed.cancelled() => {
                    self.disconnect().await;
                    return;
                }
                _ = self.broken.cancelled() => break "a PUBACK could not be queued; \
                    reconnecting so the broker resends what is unacknowledged"
                    .to_owned(),
                event = self.events.poll() => event,
            };
            match event {
                Err(error) => break error,
                Ok(Event::Publish(arrived)) => {
                    // An error means the source is gone (the bridge is draining): the
                    // message stays unacknowledged and the broker resends it.
                    let _ = self.queue.send(arrived).await;
                }
                // Nobody waits once `connect` is done.
                Ok(Event::SubAck(results)) => {
                    let _ = self.control.send(Control::SubAck(results));
                }
                Ok(Event::UnsubAck(results)) => {
                    let _ = self.control.send(Control::UnsubAck(results));
                }
                Ok(Event::PubAckWritten(pkid)) => {
                    let waiter = self.written.lock().expect("written lock").remove(&pkid);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(());
                    }
                }
                // A new CONNACK cannot come: a connection that fails ends this task and
                // the bridge connects again with a fresh event loop.
                Ok(Event::ConnAck { .. } | Event::DisconnectWritten | Event::Other) => {}
            }
        };
        tracing::debug!(%reason, "MQTT connection ended");
        // Waiting acknowledgements learn that their PUBACK will not be written.
        self.written.lock().expect("written lock").clear();
        let _ = self.failed.send(Some(reason));
    }

    /// A clean DISCONNECT (the session stays, by its expiry), bounded in time.
    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match self.events.poll().await {
                    Ok(Event::DisconnectWritten) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

fn check_suback(filters: &[(String, u8)], results: Vec<Result<u8, String>>) -> Result<(), String> {
    if results.len() != filters.len() {
        return Err(format!(
            "SUBACK answers {} filters, {} were requested",
            results.len(),
            filters.len()
        ));
    }
    let mut refused = Vec::new();
    for ((filter, requested), result) in filters.iter().zip(results) {
        match result {
            Ok(granted) if granted < *requested => tracing::warn!(
                %filter,
                granted,
                "the broker granted a lower QoS: messages on this filter are at-most-once"
            ),
            Ok(_) => {}
            Err(reason) => refused.push(format!("`{filter}` {reason}")),
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the broker refused the subscription: {}",
            refused.join(", ")
        ))
    }
}

/// Shared by the source and the acknowledgement handles of one connection.
struct AckState {
    /// Packet ids (and event ids) of the QoS 1 messages handed out, in arrival order.
    order: Mutex<InOrder<(u16, String)>>,
    client: Client,
    written: Written,
    session: Arc<Mutex<SessionMemory>>,
    broken: CancellationToken,
    /// Ends the connection once the source and every handle are dropped, which is after
    /// the bridge drained.
    _close_connection: DropGuard,
}

struct MqttSource {
    queue: mpsc::Receiver<Arrived>,
    failed: watch::Receiver<Option<String>>,
    acks: Arc<AckState>,
    /// `mqtt://host:port`, the start of the default CloudEvent source.
    origin: String,
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
fn with_cloudevent_aliases(mut properties: Vec<(String, String)>) -> Vec<(String, String)> {
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

/// Acknowledges one QoS 1 message, in arrival order.
struct MqttAck {
    acks: Arc<AckState>,
    ticket: Ticket,
}

#[async_trait]
impl Acker for MqttAck {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        let acks = &self.acks;
        let mut pending = Vec::new();
        {
            let mut order = acks.order.lock().expect("order lock");
            // Only the confirmed run at the front is released, and its PUBACKs are
            // queued under this lock, so two handles cannot interleave them.
            for (pkid, id) in order.confirm(self.ticket) {
                let (written_tx, written_rx) = oneshot::channel();
                // Registered before queueing, so the write cannot be seen first.
                acks.written
                    .lock()
                    .expect("written lock")
                    .insert(pkid, written_tx);
                if let Err(error) = acks.client.try_ack(pkid) {
                    acks.written.lock().expect("written lock").remove(&pkid);
                    // The broker would wait forever for this PUBACK on this
                    // connection; a new connection makes it resend instead.
                    acks.broken.cancel();
                    return Err(SourceError::Ack(format!(
                        "cannot queue the PUBACK for packet {pkid}: {error}"
                    )));
                }
                pending.push((pkid, id, written_rx));
            }
        }
        for (pkid, id, written_rx) in pending {
            match tokio::time::timeout(PUBACK_WRITE_TIMEOUT, written_rx).await {
                Ok(Ok(())) => acks
                    .session
                    .lock()
                    .expect("session lock")
                    .acknowledged(pkid, &id),
                Ok(Err(_)) => {
                    return Err(SourceError::Ack(format!(
                        "the MQTT connection closed before the PUBACK for packet {pkid} was \
                         written; the broker resends the message"
                    )));
                }
                Err(_) => {
                    return Err(SourceError::Ack(format!(
                        "the PUBACK for packet {pkid} was not written within {}s",
                        PUBACK_WRITE_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: serde_json::Value) -> Result<MqttSpec, String> {
        MqttSpec::parse(value.as_object().unwrap().clone())
    }

    #[test]
    fn defaults_are_qos_1_on_local_mosquitto() {
        let spec = parse(serde_json::json!({"topics": ["a/#"]})).unwrap();
        assert_eq!(spec.url.expose(), "mqtt://127.0.0.1:1883");
        assert_eq!(spec.protocol, Protocol::V311);
        assert_eq!(spec.qos, 1);
        assert_eq!(spec.client_id("orders"), "broker-bridge-orders");
        assert_eq!(spec.filters(), vec![("a/#".to_owned(), 1)]);
        assert_eq!(spec.session_expiry(), DEFAULT_SESSION_EXPIRY);
    }

    #[test]
    fn protocol_is_text_or_the_number_5() {
        for (given, expected) in [
            (serde_json::json!("3.1.1"), Protocol::V311),
            (serde_json::json!("5"), Protocol::V5),
            (serde_json::json!(5), Protocol::V5),
        ] {
            let spec = parse(serde_json::json!({"topics": ["a"], "protocol": given})).unwrap();
            assert_eq!(spec.protocol, expected);
        }
        let err = parse(serde_json::json!({"topics": ["a"], "protocol": "3"})).unwrap_err();
        assert!(
            err.contains("key `protocol`") && err.contains("3.1.1"),
            "{err}"
        );
    }

    #[test]
    fn settings_that_would_be_ignored_or_lose_messages_are_refused() {
        for (table, needle) in [
            (serde_json::json!({"topics": []}), "at least one"),
            (serde_json::json!({"topics": ["a", "a"]}), "twice"),
            (serde_json::json!({"topics": ["a/#/b"]}), "`#`"),
            (serde_json::json!({"topics": ["a+/b"]}), "`+`"),
            (
                serde_json::json!({"topics": ["$share/g/a"]}),
                "shared_group",
            ),
            (
                serde_json::json!({"topics": ["a"], "qos": 2}),
                "exactly-once",
            ),
            (serde_json::json!({"topics": ["a"], "qos": 3}), "key `qos`"),
            (
                serde_json::json!({"topics": ["a"], "client_id": ""}),
                "client_id",
            ),
            (
                serde_json::json!({"topics": ["a"], "shared_group": "g"}),
                "protocol = \"5\"",
            ),
            (
                serde_json::json!({"topics": ["a"], "protocol": "5", "shared_group": "a/b"}),
                "shared_group",
            ),
            (
                serde_json::json!({"topics": ["a"], "session_expiry": "1h"}),
                "only for protocol",
            ),
            (
                serde_json::json!({"topics": ["a"], "protocol": "5", "session_expiry": 0}),
                "lost",
            ),
            (
                serde_json::json!({"topics": ["a"], "keep_alive": "1s"}),
                "keep_alive",
            ),
            (
                serde_json::json!({"topics": ["a"], "password": "p"}),
                "needs `user`",
            ),
            (
                serde_json::json!({"topics": ["a"], "url": "mqtts://h", "tls": {"cert_file": "c"}}),
                "go together",
            ),
            (
                serde_json::json!({"topics": ["a"], "tls": {"ca_file": "ca.pem"}}),
                "mqtts://",
            ),
            (
                serde_json::json!({"topics": ["a"], "tls": {"required": true}}),
                "mqtts://",
            ),
            (
                serde_json::json!({"topics": ["a"], "url": "mqtt://u:p@h:1883"}),
                "credentials",
            ),
            (
                serde_json::json!({"topics": ["a"], "url": "http://h"}),
                "scheme",
            ),
            (
                serde_json::json!({"topics": ["a"], "subject": "a"}),
                "unknown key",
            ),
        ] {
            let err = parse(table.clone()).unwrap_err();
            assert!(err.contains(needle), "{table}: {err}");
        }
        // A user without a password is fine (brokers that authenticate by user name).
        assert!(parse(serde_json::json!({"topics": ["a"], "user": "u"})).is_ok());
    }

    #[test]
    fn urls_give_host_port_and_tls() {
        let endpoint = Endpoint::parse("mqtts://broker.example").unwrap();
        assert_eq!(endpoint.label(), "broker.example:8883");
        assert!(endpoint.tls);
        assert_eq!(endpoint.scheme(), "mqtts");
        let endpoint = Endpoint::parse("mqtt://10.0.0.1:1884/").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("10.0.0.1", 1884));
        assert!(!endpoint.tls);
        let endpoint = Endpoint::parse("tcp://[::1]").unwrap();
        assert_eq!(endpoint.label(), "[::1]:1883");
        assert!(Endpoint::parse("mqtt://h:0").is_err());
        assert!(Endpoint::parse("mqtt://:1883").is_err());
        assert!(Endpoint::parse("mqtt://h/topic").is_err());
        assert!(Endpoint::parse("h:1883").is_err());
    }

    #[test]
    fn shared_group_prefixes_every_filter() {
        let spec = parse(serde_json::json!({
            "topics": ["a/+", "b/#"], "protocol": "5", "shared_group": "bb", "qos": 0
        }))
        .unwrap();
        assert_eq!(
            spec.filters(),
            vec![
                ("$share/bb/a/+".to_owned(), 0),
                ("$share/bb/b/#".to_owned(), 0)
            ]
        );
    }

    #[test]
    fn describe_names_the_guarantee() {
        let spec = parse(serde_json::json!({"topics": ["a/#", "b/+"], "client_id": "x"})).unwrap();
        assert_eq!(
            spec.describe(),
            "topics `a/#`, `b/+` on 127.0.0.1:1883 (MQTT 3.1.1, QoS 1, client id `x`, \
             persistent session); at-least-once: PUBACK after the exchange confirmed, in \
             arrival order"
        );
        let spec = parse(serde_json::json!({
            "topics": ["a"], "protocol": "5", "qos": 0, "url": "mqtts://h",
            "shared_group": "g", "session_expiry": "2h"
        }))
        .unwrap();
        let text = spec.describe();
        assert!(text.starts_with("topics `a` on h:8883 (MQTT 5, QoS 0, shared group `g`, client id `broker-bridge-<bridge name>`, persistent session, expiry 2h, TLS); at-most-once"), "{text}");
    }

    #[test]
    fn the_password_is_not_serialized() {
        let spec =
            parse(serde_json::json!({"topics": ["a"], "user": "u", "password": "s3cret"})).unwrap();
        assert!(!serde_json::to_string(&spec).unwrap().contains("s3cret"));
    }

    #[test]
    fn a_known_session_is_not_subscribed_again() {
        let mut memory = SessionMemory::default();
        let wanted = vec![("a/#".to_owned(), 1), ("b".to_owned(), 1)];
        let plan = |subscribe: &[(String, u8)], unsubscribe: &[&str]| Plan {
            subscribe: subscribe.to_vec(),
            unsubscribe: unsubscribe.iter().map(|f| f.to_string()).collect(),
            session_lost: false,
            filters_unknown: false,
        };
        // First connection of the process without a record: everything, and what the
        // session had before is unknown.
        assert_eq!(
            memory.plan(true, &wanted, None),
            Plan {
                filters_unknown: true,
                ..plan(&wanted, &[])
            }
        );
        memory.subscribed = wanted.clone();
        // Reconnect to the kept session: nothing.
        assert_eq!(memory.plan(true, &wanted, None), plan(&[], &[]));
        // The config changed: only the difference, and the removed filter goes.
        let changed = vec![("a/#".to_owned(), 1), ("c".to_owned(), 0)];
        assert_eq!(
            memory.plan(true, &changed, None),
            plan(&[("c".to_owned(), 0)], &["b"])
        );
        // A QoS change subscribes the filter again and removes nothing.
        let requalified = vec![("a/#".to_owned(), 0), ("b".to_owned(), 1)];
        assert_eq!(
            memory.plan(true, &requalified, None),
            plan(&[("a/#".to_owned(), 0)], &[])
        );
        // The broker lost the session: everything again, and that is reported.
        assert_eq!(
            memory.plan(false, &changed, None),
            Plan {
                session_lost: true,
                ..plan(&changed, &[])
            }
        );
    }

    #[test]
    fn a_recorded_filter_removed_while_stopped_is_unsubscribed() {
        let wanted = vec![("b".to_owned(), 1), ("c".to_owned(), 1)];
        let recorded = ["a".to_owned(), "b".to_owned()];
        // First connection of a new process to the recorded session: every filter, and
        // the recorded one no longer wanted goes.
        let plan = SessionMemory::default().plan(true, &wanted, Some(&recorded));
        assert_eq!(plan.subscribe, wanted);
        assert_eq!(plan.unsubscribe, vec!["a".to_owned()]);
        assert!(!plan.session_lost && !plan.filters_unknown);
        // What this process subscribed wins over the record.
        let mut memory = SessionMemory {
            subscribed: wanted.clone(),
            ..Default::default()
        };
        assert!(
            memory
                .plan(true, &wanted, Some(&recorded))
                .unsubscribe
                .is_empty()
        );
        // No session although one was recorded: lost, and reported.
        let plan = SessionMemory::default().plan(false, &wanted, Some(&recorded));
        assert!(plan.session_lost && plan.unsubscribe.is_empty());
        // No session and nothing known: a first start, nothing to report.
        assert!(
            !SessionMemory::default()
                .plan(false, &wanted, None)
                .session_lost
        );
    }

    #[test]
    fn the_session_record_survives_in_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("record-{}", uuid::Uuid::now_v7());
        let path = record_path(dir.path(), &bridge);
        let record = SessionRecord {
            server: "h:1883".into(),
            client_id: "id".into(),
            filters: vec!["a/#".into()],
        };
        keep_record(&path, &bridge, record.clone(), None);
        // A new process (no copy in memory) reads it from the file.
        RECORDS.lock().unwrap().remove(&bridge);
        assert_eq!(previous_record(&path, &bridge), Some(record.clone()));
        assert!(record.same_session("h:1883", "id"));
        assert!(!record.same_session("h:1883", "other"));
        // A damaged file is ignored (and written again on the next subscription).
        std::fs::write(&path, "{not json").unwrap();
        RECORDS.lock().unwrap().remove(&bridge);
        assert_eq!(previous_record(&path, &bridge), None);
        // A state_dir that cannot be written: the process still remembers.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "a file, not a directory").unwrap();
        let path = record_path(&blocked, &bridge);
        keep_record(&path, &bridge, record.clone(), None);
        assert!(!path.exists());
        assert_eq!(previous_record(&path, &bridge), Some(record));
    }

    #[test]
    fn a_resent_message_keeps_its_id() {
        let mut memory = SessionMemory::default();
        let first = memory.id_for(7, false, 42);
        assert_eq!(memory.id_for(7, true, 42), first, "DUP resend");
        assert_ne!(memory.id_for(8, true, 42), first, "another packet");
        // The same packet id with other bytes is another message.
        let other = memory.id_for(7, true, 43);
        assert_ne!(other, first);
        memory.acknowledged(7, &first);
        assert!(memory.unacked.contains_key(&7), "a reused packet id stays");
        memory.acknowledged(7, &other);
        assert!(!memory.unacked.contains_key(&7));
        // Without DUP it is a new message even with the same bytes.
        let fresh = memory.id_for(9, false, 1);
        assert_ne!(memory.id_for(9, false, 1), fresh);
        // A new session forgets everything.
        memory.plan(false, &[], None);
        assert!(memory.unacked.is_empty());
    }

    #[test]
    fn mqtt5_cloudevent_properties_get_binary_mode_names() {
        let properties = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), "x1".to_owned()),
            ("source".to_owned(), "/s".to_owned()),
            ("type".to_owned(), "t".to_owned()),
            ("myext".to_owned(), "v".to_owned()),
            ("X-Trace".to_owned(), "abc".to_owned()),
        ];
        let headers = with_cloudevent_aliases(properties.clone());
        assert_eq!(&headers[..properties.len()], &properties[..]);
        let event = crate::cloudevent::parse_binary(
            &headers,
            Some("application/json"),
            &Bytes::from_static(b"{\"a\":1}"),
        )
        .unwrap()
        .expect("a binary-mode CloudEvent");
        assert_eq!((event.id.as_str(), event.ty.as_str()), ("x1", "t"));
        assert_eq!(event.extensions["myext"].as_text(), "v");
        assert!(!event.extensions.contains_key("x-trace"));
        // Without specversion, user properties are only headers.
        let plain = vec![("type".to_owned(), "t".to_owned())];
        assert_eq!(with_cloudevent_aliases(plain.clone()), plain);
    }

    #[test]
    fn suback_refusals_name_the_filter() {
        let filters = vec![("a".to_owned(), 1), ("b".to_owned(), 1)];
        assert!(check_suback(&filters, vec![Ok(1), Ok(0)]).is_ok());
        let err =
            check_suback(&filters, vec![Ok(1), Err("refused (NotAuthorized)".into())]).unwrap_err();
        assert!(err.contains("`b` refused (NotAuthorized)"), "{err}");
        assert!(check_suback(&filters, vec![Ok(1)]).is_err());
    }
}
