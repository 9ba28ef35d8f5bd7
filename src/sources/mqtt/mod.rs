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
//!
//! [`InOrder`]: super::common::in_order::InOrder
//! [`SessionMemory::plan`]: session::SessionMemory::plan

mod ack;
mod client;
mod connection;
mod session;
mod source;
mod spec;

use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source};
use crate::config::fields;
use crate::message::SourceError;
use spec::{Endpoint, human_duration};

pub use spec::{MqttSpec, Protocol};

/// `kind = "mqtt"`.
pub struct Mqtt;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Mqtt {
    const NAME: &'static str = "mqtt";
    const SECRET_KEYS: &'static [&'static str] = &["url", "password"];
    type Spec = MqttSpec;

    fn parse(table: Map<String, Value>) -> Result<MqttSpec, String> {
        fields::reject_unknown(&table, fields::names::<MqttSpec>(), "kind `mqtt`")?;
        let spec: MqttSpec = fields::parse(Value::Object(table))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The keys of `kind = "mqtt"` (the `[bridge.tls]` keys are listed by the caller).
    fn accepted_keys() -> Vec<&'static str> {
        fields::names::<MqttSpec>().to_vec()
    }

    fn describe(spec: &MqttSpec) -> String {
        let topics: Vec<String> = spec.topics.iter().map(|t| format!("`{t}`")).collect();
        let endpoint = Endpoint::parse(spec.url.expose());
        let mut details = vec![
            format!("MQTT {}", spec.protocol.label()),
            format!("QoS {}", spec.qos),
        ];
        if let Some(group) = &spec.shared_group {
            details.push(format!("shared group `{group}`"));
        }
        details.push(match &spec.client_id {
            Some(id) => format!("client id `{id}`"),
            None => "client id `broker-bridge-<bridge name>`".into(),
        });
        details.push(match spec.protocol {
            Protocol::V311 => "persistent session".into(),
            Protocol::V5 => format!(
                "persistent session, expiry {}",
                human_duration(spec.session_expiry())
            ),
        });
        if endpoint.as_ref().is_ok_and(|e| e.tls) {
            details.push("TLS".into());
        }
        let guarantee = if spec.qos == 0 {
            "at-most-once: QoS 0 has no acknowledgements, messages in flight when broker-bridge \
             stops or disconnects are lost"
        } else {
            "at-least-once: PUBACK after the exchange confirmed, in arrival order"
        };
        format!(
            "topics {} on {} ({}); {guarantee}",
            topics.join(", "),
            endpoint.map_or_else(|_| spec.url.redacted(), |e| e.label()),
            details.join(", ")
        )
    }

    fn subject_separator(_: &MqttSpec) -> Option<char> {
        Some('/')
    }

    async fn connect(
        spec: &MqttSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connection::connect(spec, context).await
    }
}

#[cfg(test)]
mod tests;
