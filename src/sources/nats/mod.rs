//! `kind = "nats"` (core subscriptions, at-most-once) and `kind = "jetstream"` (durable
//! pull consumer, acknowledged after the exchange confirmed).
//!
//! `connection` holds the keys and connect options both kinds share, `core_nats` and
//! `jetstream` one kind each, `headers` the header conversion they both use.

mod connection;
mod core_nats;
mod headers;
mod jetstream;

use serde_json::{Map, Value};

pub use connection::NatsConnection;
pub use core_nats::{NatsKeys, NatsSpec};
pub use jetstream::{JetStreamKeys, JetStreamSpec, StartPosition};

use super::common::context::{ConnectContext, Source};
use super::common::kind::SourceKind;
use crate::config::{BridgeSpec, fields};
use crate::message::SourceError;
use connection::{parse_parts, server_label};
use core_nats::connect_core;
use jetstream::{connect_jetstream, verify_jetstream};

/// `kind = "nats"`: core NATS, at most once.
pub struct Nats;

#[async_trait::async_trait]
impl SourceKind for Nats {
    const NAME: &'static str = "nats";
    const SECRET_KEYS: &'static [&'static str] = &["url", "password", "token", "nkey"];
    type Spec = NatsSpec;

    fn parse(table: Map<String, Value>) -> Result<NatsSpec, String> {
        let (connection, keys) = parse_parts(table, "nats")?;
        Ok(NatsSpec { connection, keys })
    }

    /// The keys of both NATS kinds (connection, core and JetStream).
    fn accepted_keys() -> Vec<&'static str> {
        [
            fields::names::<NatsConnection>(),
            fields::names::<NatsKeys>(),
            fields::names::<JetStreamKeys>(),
        ]
        .concat()
    }

    fn describe(spec: &NatsSpec) -> String {
        format!(
            "subject `{}`{} on {}; at-most-once: core NATS has no acknowledgements, messages sent while broker-bridge is down or disconnected are lost",
            spec.keys.subject,
            spec.keys
                .queue_group
                .as_ref()
                .map(|g| format!(" (queue group `{g}`)"))
                .unwrap_or_default(),
            server_label(&spec.connection.url)
        )
    }

    fn subject_separator(_: &NatsSpec) -> Option<char> {
        Some('.')
    }

    async fn connect(
        spec: &NatsSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect_core(spec, context).await
    }
}

/// `kind = "jetstream"`: a durable JetStream consumer, at least once.
pub struct JetStream;

#[async_trait::async_trait]
impl SourceKind for JetStream {
    const NAME: &'static str = "jetstream";
    const SECRET_KEYS: &'static [&'static str] = Nats::SECRET_KEYS;
    type Spec = JetStreamSpec;

    fn parse(table: Map<String, Value>) -> Result<JetStreamSpec, String> {
        let (connection, keys) = parse_parts::<JetStreamKeys>(table, "jetstream")?;
        if keys.stream.is_empty() {
            return Err("key `stream`: must not be empty".into());
        }
        Ok(JetStreamSpec { connection, keys })
    }

    /// Both NATS kinds accept the same keys.
    fn accepted_keys() -> Vec<&'static str> {
        Nats::accepted_keys()
    }

    fn describe(spec: &JetStreamSpec) -> String {
        format!(
            "stream `{}` on {}; at-least-once: acked after the exchange confirmed",
            spec.keys.stream,
            server_label(&spec.connection.url)
        )
    }

    fn subject_separator(_: &JetStreamSpec) -> Option<char> {
        Some('.')
    }

    async fn verify_position(spec: &JetStreamSpec, bridge: &BridgeSpec) -> Result<(), SourceError> {
        verify_jetstream(spec, &bridge.name, bridge.max_in_flight).await
    }

    async fn connect(
        spec: &JetStreamSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect_jetstream(spec, context).await
    }
}

#[cfg(test)]
mod tests;
