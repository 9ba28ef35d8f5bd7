//! Connecting: the CONNACK, what the session needs subscribed and unsubscribed (and
//! waiting for the broker's answers), and the task that drives the connection's event
//! loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ack::{AckState, Written};
use super::client::{Arrived, Client, Event, EventLoop, new_client};
use super::session::{SessionRecord, keep_record, previous_record, record_path, session_memory};
use super::source::MqttSource;
use super::spec::{Endpoint, MqttSpec};
use crate::message::SourceError;
use crate::sources::common::context::{ConnectContext, Source};
use crate::sources::common::in_order::InOrder;

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn connect(
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

pub(super) fn check_suback(
    filters: &[(String, u8)],
    results: Vec<Result<u8, String>>,
) -> Result<(), String> {
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
