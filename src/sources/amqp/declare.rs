//! The queue declare, and RabbitMQ's refusals of it read back into config keys.

use std::collections::BTreeMap;

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};
use serde_json::Value;

use super::connect::SetupError;
use super::spec::AmqpSpec;
use crate::short_string::{constant, short_string as wire};

/// The queue declare with the bridge's settings; RabbitMQ's answer is left to the
/// caller.
pub(super) async fn declare_as_configured(
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
pub(super) async fn declare_queue(
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
pub(super) struct SettingsConflict {
    /// The config key that differs: `durable`, `auto_delete`, `exclusive` or
    /// `arguments.<name>`.
    pub(super) key: String,
    /// RabbitMQ's reply text, e.g. "PRECONDITION_FAILED - inequivalent arg
    /// 'x-max-length' for queue 'q' in vhost '/': received none but current is ...".
    reply: String,
    /// 405 RESOURCE_LOCKED: exclusive to another connection, or `exclusive` differs.
    locked: bool,
}

impl SettingsConflict {
    pub(super) fn of(error: &lapin::Error) -> Option<SettingsConflict> {
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
    pub(super) fn from_reply(reply: &str, locked: bool) -> Option<SettingsConflict> {
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
    pub(super) fn refusal(&self, queue: &str, held: Option<u32>) -> String {
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
pub(super) async fn messages_in(connection: &Connection, queue: &str) -> Result<u32, lapin::Error> {
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
pub(super) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

/// TOML values as AMQP field values (validated to be text, integers or booleans).
pub(super) fn queue_arguments(arguments: &BTreeMap<String, Value>) -> FieldTable {
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
