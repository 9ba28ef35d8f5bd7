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

mod connect;
mod consumer;
mod declare;
mod endpoint;
mod headers;
mod position;
mod spec;

use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source};
use super::common::kind::SourceKind;
use crate::config::{BridgeSpec, ExchangeConfig, fields};
use crate::message::SourceError;
use endpoint::Endpoint;

pub use connect::connect;
pub use headers::{PROPERTY_HEADERS, headers_of};
pub use position::verify_queue;
pub use spec::AmqpSpec;

/// `kind = "amqp"`: a RabbitMQ queue.
pub struct Amqp;

#[async_trait::async_trait]
impl SourceKind for Amqp {
    const NAME: &'static str = "amqp";
    const SECRET_KEYS: &'static [&'static str] = &["url", "password"];
    type Spec = AmqpSpec;

    fn parse(table: Map<String, Value>) -> Result<AmqpSpec, String> {
        fields::reject_unknown(&table, fields::names::<AmqpSpec>(), "kind `amqp`")?;
        let spec: AmqpSpec = fields::parse(Value::Object(table))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Every key of the kind (for the test that the example config documents them all).
    fn accepted_keys() -> Vec<&'static str> {
        fields::names::<AmqpSpec>().to_vec()
    }

    fn describe(spec: &AmqpSpec) -> String {
        let endpoint = Endpoint::parse(spec.url.expose()).ok();
        let server = endpoint
            .as_ref()
            .map(|e| format!("{}, vhost `{}`", e.label(), e.vhost))
            .unwrap_or_default();
        let binding = match &spec.bind_exchange {
            Some(exchange) => format!(
                " (bound to `{exchange}` with {})",
                spec.binding_keys()
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let mut line = format!(
            "queue `{}` on {server}{binding}; at-least-once: basic.ack after the exchange confirmed; event id: the message_id property, else a new UUIDv7 per delivery (a redelivery then gets a new id)",
            spec.queue
        );
        if spec.declare && (spec.exclusive() || spec.auto_delete()) {
            line.push_str(
                "; WARNING: RabbitMQ deletes an exclusive or auto-delete queue when its connection or consumer goes (every restart, reload or reconnect of this bridge), and with it the messages waiting in it and those sent meanwhile",
            );
        }
        line
    }

    fn subject_separator(_: &AmqpSpec) -> Option<char> {
        Some('.')
    }

    fn check(
        spec: &AmqpSpec,
        bridge: &BridgeSpec,
        exchange: &ExchangeConfig,
    ) -> Result<(), String> {
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

#[cfg(test)]
mod tests;
