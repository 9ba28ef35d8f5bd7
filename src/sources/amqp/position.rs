//! What a restart or reload would do to the queue: `verify_queue` asks RabbitMQ before
//! a bridge restarts, and the state file of what the bridge consumed last reports what an
//! edit of the queue or its bindings left behind.

use std::path::{Path, PathBuf};

use lapin::Connection;
use serde::{Deserialize, Serialize};

use super::connect::{SetupError, connect_broker};
use super::declare::{SettingsConflict, declare_as_configured, is_not_found, messages_in};
use super::endpoint::Endpoint;
use super::spec::AmqpSpec;
use crate::message::SourceError;
use crate::short_string::constant;
use crate::sources::common::context::ConnectContext;

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
pub(super) struct Consumed {
    /// The broker and vhost, no credentials.
    host: String,
    port: u16,
    vhost: String,
    queue: String,
    bind_exchange: Option<String>,
    binding_keys: Vec<String>,
}

impl Consumed {
    pub(super) fn of(spec: &AmqpSpec, endpoint: &Endpoint) -> Consumed {
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
pub(super) enum LeftBehind {
    /// Another broker or vhost: the old queue cannot be counted from here.
    QueueElsewhere,
    /// `queue` changed: the old queue is no longer consumed.
    Queue,
    /// The same queue; these `(exchange, key)` bindings are no longer configured.
    Bindings(Vec<(String, String)>),
}

pub(super) fn left_behind(before: &Consumed, now: &Consumed) -> Option<LeftBehind> {
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
pub(super) async fn report_what_an_edit_left(
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
    let written = crate::sources::common::state_file::write_json(&path, &now);
    if let Err(error) = written {
        tracing::warn!(
            "cannot record the queue and bindings in {}: {error}; a later edit of them is not reported",
            path.display()
        );
    }
}
