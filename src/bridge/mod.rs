//! One bridge's life: connect its source, pull with at most `max_in_flight` messages
//! unacknowledged, normalize, publish until confirmed, then ack. Reconnects forever.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::BridgeSpec;
use crate::exchange::{DeadLetter, Delivered, Outbound, PendingConfirm, PublishError, Publisher};
use crate::message::Incoming;
use crate::message::{Reject, RejectReason};
use crate::metrics::BridgeMetrics;
use crate::normalize::{Mapping, normalize_message};
use crate::sources::{ConnectContext, ExchangeProbe, KINDS, Listeners, Source, SourceMetrics};

mod status;

pub use status::{BridgeStatus, PublisherSlot, State, StatusSnapshot, current_publisher};

/// How long a source connection must hold before its failure starts the backoff over.
const STABLE_CONNECTION: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything a running bridge and its message tasks share.
struct Shared {
    name: String,
    mapping: Mapping,
    publisher: PublisherSlot,
    metrics: Arc<BridgeMetrics>,
    retry: crate::config::BackoffConfig,
    deadletter_sample_bytes: usize,
    faults: Faults,
    /// Fires when the bridge must stop for good (the exchange refused a dead letter).
    failed: CancellationToken,
    failure: Mutex<Option<String>>,
}

impl Shared {
    /// Stops the bridge for good with this reason: it pulls nothing more, and shows
    /// `failed` until its config changes or the daemon restarts.
    fn fail(&self, reason: String) {
        tracing::error!(%reason, "the bridge stops: it cannot go on without losing messages");
        self.failure
            .lock()
            .expect("failure lock")
            .get_or_insert(reason);
        self.failed.cancel();
    }
}

/// Panics on purpose, for the tests of the supervision: a message whose payload holds
/// `BROKER_BRIDGE_PANIC_IN_MESSAGE` panics in its pipeline, one that holds
/// `BROKER_BRIDGE_PANIC_IN_BRIDGE` panics the bridge task. Unset (always, in
/// production), nothing happens.
#[derive(Debug, Clone, Default)]
struct Faults {
    in_message: Option<Vec<u8>>,
    in_bridge: Option<Vec<u8>>,
}

impl Faults {
    fn from_env() -> Self {
        let marker = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|m| !m.is_empty())
                .map(String::into_bytes)
        };
        Faults {
            in_message: marker("BROKER_BRIDGE_PANIC_IN_MESSAGE"),
            in_bridge: marker("BROKER_BRIDGE_PANIC_IN_BRIDGE"),
        }
    }

    fn holds(marker: &Option<Vec<u8>>, payload: &[u8]) -> bool {
        marker
            .as_deref()
            .is_some_and(|m| payload.windows(m.len()).any(|w| w == m))
    }
}

/// What a bridge runs with: its spec, what it shares with the daemon, and what it reports.
#[derive(Clone)]
pub struct Bridge {
    pub spec: BridgeSpec,
    pub publisher: PublisherSlot,
    pub listeners: Listeners,
    pub metrics: Arc<BridgeMetrics>,
    pub status: Arc<BridgeStatus>,
    /// Fires to stop it: it drains, and ends.
    pub stop: CancellationToken,
}

/// Runs a bridge (`run`) and starts it again, after a backoff, whenever its task
/// panics: a bug in one bridge never stops it for good, and shows in `/bridges`
/// (`restarting`, the panic, the restart counter), `bridge_up` and `bridge_panics_total`.
pub async fn supervise(bridge: Bridge) {
    let mut backoff = Backoff::new(bridge.spec.backoff.clone());
    let Bridge {
        spec,
        metrics,
        status,
        stop,
        ..
    } = bridge.clone();
    loop {
        let task = tokio::spawn(run(bridge.clone()));
        let panic = match task.await {
            Ok(()) => return,
            Err(error) if error.is_panic() => panic_text(error.into_panic().as_ref()),
            Err(_) => return,
        };
        metrics.up.set(0);
        metrics.panics.inc();
        metrics.restarts.inc();
        tracing::error!(bridge = %spec.name, %panic, "the bridge task panicked (a bug); starting it again after a backoff");
        status.update(|s| {
            s.state = State::Restarting;
            s.last_error = Some(format!("panicked: {panic}"));
            s.connected_since = None;
        });
        if !backoff.wait(&stop).await {
            status.update(|s| s.state = State::Stopped);
            return;
        }
    }
}

/// The message of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs a bridge until `stop` fires, then drains: no new pulls, in-flight messages get
/// up to `shutdown_timeout` to be confirmed and acked; the rest stay unacked.
async fn run(bridge: Bridge) {
    let Bridge {
        spec,
        publisher,
        listeners,
        metrics,
        status,
        stop,
    } = bridge;
    let span = tracing::info_span!("bridge", bridge = %spec.name, kind = spec.kind());
    async move {
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            mapping: Mapping::new(&spec),
            publisher,
            metrics: metrics.clone(),
            retry: spec.backoff.clone(),
            deadletter_sample_bytes: spec.deadletter_sample_bytes,
            faults: Faults::from_env(),
            failed: CancellationToken::new(),
            failure: Mutex::new(None),
        });
        let permits = Bounds {
            messages: Arc::new(Semaphore::new(spec.max_in_flight)),
            bytes: Arc::new(Semaphore::new(spec.max_in_flight_bytes)),
            max_bytes: spec.max_in_flight_bytes,
        };
        let mut tasks = JoinSet::new();
        let mut backoff = Backoff::new(spec.backoff.clone());
        let exchange = shared.publisher.clone();
        let context = ConnectContext {
            bridge: spec.name.clone(),
            max_in_flight: spec.max_in_flight,
            max_in_flight_bytes: spec.max_in_flight_bytes,
            max_message_bytes: spec.max_message_bytes,
            metrics: SourceMetrics::new(metrics.clone()),
            state_dir: spec.state_dir.clone(),
            exchange: ExchangeProbe::new(move || current_publisher(&exchange).is_connected()),
            listeners,
        };
        loop {
            let connected = tokio::select! {
                result = KINDS.connect(&spec.source, &context) => result,
                _ = stop.cancelled() => break,
            };
            let error = match connected {
                Ok(source) => {
                    let connected_at = Instant::now();
                    metrics.up.set(1);
                    status.update(|s| {
                        s.state = State::Running;
                        s.last_error = None;
                        s.connects += 1;
                        s.connected_since = Some(Utc::now());
                    });
                    tracing::info!("source connected");
                    let result = pump(source, &shared, &permits, &mut tasks, &stop).await;
                    metrics.up.set(0);
                    // Only a connection that held resets the backoff: one that fails at
                    // once (a message its client cannot parse, say) must not reconnect
                    // in a tight loop, nor look up most of the time.
                    if connected_at.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                    match result {
                        Ok(()) => break,
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            tracing::warn!(%error, "source failed; reconnecting");
            metrics.restarts.inc();
            status.update(|s| {
                s.state = State::Reconnecting;
                s.last_error = Some(error.to_string());
                s.connected_since = None;
            });
            if !backoff.wait(&stop).await {
                break;
            }
        }
        if shared.failed.is_cancelled() {
            let failure = shared.failure.lock().expect("failure lock").clone();
            metrics.failed.set(1);
            status.update(|s| {
                s.state = State::Failed;
                s.last_error = failure;
                s.connected_since = None;
            });
            // In-flight messages still finish; nothing new is pulled until the config
            // changes (a reload restarts the bridge) or the daemon restarts.
            while tasks.join_next().await.is_some() {}
            stop.cancelled().await;
            metrics.failed.set(0);
        }
        status.update(|s| s.state = State::Draining);
        let drained = tokio::time::timeout(spec.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "shutdown_timeout reached; unconfirmed messages stay unacked for redelivery"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        metrics.up.set(0);
        status.update(|s| {
            s.state = State::Stopped;
            s.connected_since = None;
        });
        tracing::info!("bridge stopped");
    }
    .instrument(span)
    .await
}

/// What a bridge holds unacknowledged at most: `max_in_flight` messages and
/// `max_in_flight_bytes` of payload.
struct Bounds {
    messages: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

/// A message's share of the bounds, given back when its task ends (acked or not).
struct Permits {
    _message: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// Pulls until the source fails (`Err`) or `stop` fires (`Ok`).
async fn pump(
    mut source: Box<dyn Source>,
    shared: &Arc<Shared>,
    permits: &Bounds,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> Result<(), crate::message::SourceError> {
    loop {
        // Backpressure: no permit, no pull. Permits come back only after the ack.
        let permit = tokio::select! {
            permit = permits.messages.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = stop.cancelled() => return Ok(()),
            _ = shared.failed.cancelled() => return Ok(()),
        };
        // Nothing is pulled while the exchange is down. (A replaced publisher reports
        // shut down at once; the send below then fails and is retried on the new one.)
        let publisher = current_publisher(&shared.publisher);
        tokio::select! {
            _ = publisher.connected() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        let incoming = tokio::select! {
            incoming = source.next() => incoming?,
            _ = stop.cancelled() => return Ok(()),
            _ = shared.failed.cancelled() => return Ok(()),
        };
        // The byte bound: nothing more is pulled until the payloads in flight fit it
        // again (a message larger than the whole bound takes all of it). Dropping the
        // message here leaves it unacknowledged for redelivery.
        let size = incoming.payload.len().clamp(1, permits.max_bytes) as u32;
        let bytes = tokio::select! {
            bytes = permits.bytes.clone().acquire_many_owned(size) => bytes.expect("semaphore is never closed"),
            _ = stop.cancelled() => return Ok(()),
            _ = shared.failed.cancelled() => return Ok(()),
        };
        let permit = Permits {
            _message: permit,
            _bytes: bytes,
        };
        shared.metrics.received.inc();
        shared.metrics.in_flight.inc();
        let in_flight = InFlight(shared.metrics.clone());
        if Faults::holds(&shared.faults.in_bridge, &incoming.payload) {
            panic!("injected panic in the bridge task (BROKER_BRIDGE_PANIC_IN_BRIDGE)");
        }
        let (message, outbounds) = Message::prepare(incoming, shared, &publisher);
        // The first send happens here, in arrival order, so events keep their order on
        // the exchange; confirms, retries and acks run concurrently. Not raced with
        // `stop`: the send is short and bounded, and a pulled message is always seen
        // through (confirmed and acked, or left to the drain).
        let mut first = Vec::with_capacity(outbounds.len());
        for outbound in &outbounds {
            first.push(publisher.send(outbound).await);
        }
        let task = deliver(
            message,
            shared.clone(),
            publisher,
            outbounds,
            first,
            in_flight,
            permit,
        );
        tasks.spawn(task.in_current_span());
        while tasks.try_join_next().is_some() {}
    }
}

/// A received message and what it becomes.
struct Message {
    payload: bytes::Bytes,
    meta: crate::message::Metadata,
    ack: Box<dyn crate::message::Acker>,
    /// Usually one event; a notification document may hold several, or none.
    normalized: Result<Vec<crate::normalize::Normalized>, Reject>,
    received: Instant,
}

impl Message {
    /// The message and its encoded events (or dead letter). A panic while normalizing
    /// or encoding (a bug) is caught here: that one message is dead-lettered as
    /// `internal_error` and the bridge goes on, so a durable poison message can never
    /// crash-loop it. The ack handle lives outside the caught code.
    fn prepare(
        incoming: Incoming,
        shared: &Shared,
        publisher: &Publisher,
    ) -> (Message, Vec<Outbound>) {
        let Incoming { payload, meta, ack } = incoming;
        let mut message = Message {
            payload,
            meta,
            ack,
            normalized: Ok(Vec::new()),
            received: Instant::now(),
        };
        let normalized = catch_unwind(AssertUnwindSafe(|| {
            if Faults::holds(&shared.faults.in_message, &message.payload) {
                panic!("injected panic in a message (BROKER_BRIDGE_PANIC_IN_MESSAGE)");
            }
            normalize_message(&shared.mapping, &message.meta, &message.payload)
        }));
        message.normalized = match normalized {
            Ok(normalized) => normalized,
            Err(panic) => Err(message.caught(panic.as_ref(), shared)),
        };
        if let Err(reject) = &message.normalized {
            tracing::warn!(reason = reject.reason.label(), detail = %reject.detail, "dead-lettering a message");
        }
        let outbounds =
            match catch_unwind(AssertUnwindSafe(|| message.outbounds(publisher, shared))) {
                Ok(outbounds) => outbounds,
                Err(panic) => {
                    message.normalized = Err(message.caught(panic.as_ref(), shared));
                    message.outbounds(publisher, shared)
                }
            };
        (message, outbounds)
    }

    /// Logs and counts a panic this message caused, and the rejection it becomes.
    fn caught(&self, panic: &(dyn std::any::Any + Send), shared: &Shared) -> Reject {
        let panic = panic_text(panic);
        shared.metrics.panics.inc();
        tracing::error!(
            id = self.meta.id.as_deref().unwrap_or("-"),
            subject = self.meta.subject.as_deref().unwrap_or("-"),
            %panic,
            "a message panicked the pipeline (a bug); dead-lettering it as internal_error"
        );
        Reject {
            reason: RejectReason::InternalError,
            detail: format!("broker-bridge panicked on this message: {panic}"),
        }
    }

    /// The events, or for a rejected message its dead-letter copy, encoded for
    /// `publisher`.
    fn outbounds(&self, publisher: &Publisher, shared: &Shared) -> Vec<Outbound> {
        match &self.normalized {
            Ok(events) => events
                .iter()
                .map(|event| publisher.event_message(&event.event, event.routing_key.clone()))
                .collect(),
            Err(reject) => vec![publisher.deadletter_message(DeadLetter {
                routing_key: shared.mapping.deadletter_key(&self.meta),
                payload: self.payload.clone(),
                content_type: self.meta.content_type.as_deref(),
                bridge: &shared.name,
                reason: reject.reason.label(),
                detail: &reject.detail,
                subject: self.meta.subject.as_deref(),
                sample_bytes: if reject.reason == RejectReason::TooLarge {
                    shared.deadletter_sample_bytes
                } else {
                    usize::MAX
                },
            })],
        }
    }
}

/// Waits for the confirms of every event of the message, publishing each again until
/// one comes, then acks the source once.
async fn deliver(
    mut message: Message,
    shared: Arc<Shared>,
    mut publisher: Arc<Publisher>,
    outbounds: Vec<Outbound>,
    first: Vec<Result<PendingConfirm, PublishError>>,
    _in_flight: InFlight,
    _permit: Permits,
) {
    let mut refused = None;
    for (index, (outbound, first)) in outbounds.into_iter().zip(first).enumerate() {
        let confirmed;
        (publisher, confirmed) =
            confirm_one(&message, &shared, publisher, index, outbound, first).await;
        if let Err(error) = confirmed {
            refused = Some(error);
            break;
        }
    }
    // The exchange refused an event for good: the message is dead-lettered instead
    // (events of it already confirmed stay published).
    if let Some(error) = refused.take_if(|_| message.normalized.is_ok()) {
        let reason = match error {
            PublishError::TooLarge { .. } => RejectReason::TooLarge,
            PublishError::Unencodable(_) => RejectReason::TooLong,
            _ => RejectReason::RejectedByExchange,
        };
        tracing::warn!(%error, reason = reason.label(), "the exchange refused an event; dead-lettering its message");
        message.normalized = Err(Reject {
            reason,
            detail: format!("the exchange refused its event: {error}"),
        });
        let letter = message.outbounds(&publisher, &shared).swap_remove(0);
        let first = publisher.send(&letter).await;
        refused = confirm_one(&message, &shared, publisher, 0, letter, first)
            .await
            .1
            .err();
    }
    // A dead letter the exchange refuses cannot go anywhere: stop before losing it.
    if let Some(error) = refused {
        shared.fail(format!(
            "the exchange refused a dead letter ({error}); the message stays unacknowledged at the source"
        ));
        return;
    }
    let dead_lettered = match &message.normalized {
        Ok(events) => {
            shared.metrics.published.inc_by(events.len() as u64);
            None
        }
        Err(reject) => {
            shared.metrics.dead_letter(reject.reason);
            Some(reject.reason)
        }
    };
    shared
        .metrics
        .end_to_end
        .observe(message.received.elapsed());
    let acked = match dead_lettered {
        None => message.ack.ack().await,
        Some(reason) => message.ack.ack_dead_lettered(reason).await,
    };
    if let Err(error) = acked {
        tracing::warn!(%error, "ack failed; the source will redeliver (same event id)");
    }
}

/// Waits for one outbound's confirm, publishing it again while the failure is
/// transient; a permanent one (the broker refused it, or it can never be sent) is
/// returned. Also returns the publisher it ended on.
async fn confirm_one(
    message: &Message,
    shared: &Shared,
    mut publisher: Arc<Publisher>,
    index: usize,
    mut outbound: Outbound,
    first: Result<PendingConfirm, PublishError>,
) -> (Arc<Publisher>, Result<(), PublishError>) {
    let mut backoff = Backoff::new(shared.retry.clone());
    let mut attempt = match first {
        Ok(pending) => pending.confirmed().await,
        Err(error) => Err(error),
    };
    let delivered = loop {
        match attempt {
            Ok(delivered) => break delivered,
            Err(error) if error.is_permanent() => return (publisher, Err(error)),
            Err(error) => {
                shared.metrics.publish_retries.inc();
                tracing::debug!(%error, "publish failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                let latest = current_publisher(&shared.publisher);
                if !Arc::ptr_eq(&latest, &publisher) {
                    // `[exchange]` was reloaded: encode again for the new exchange.
                    outbound = message.outbounds(&latest, shared).swap_remove(index);
                    publisher = latest;
                }
                attempt = publisher.publish(&outbound).await;
            }
        }
    };
    if delivered == Delivered::Unroutable {
        shared.metrics.unroutable.inc();
        tracing::debug!(routing_key = %outbound.routing_key, "no queue bound for this routing key");
    }
    (publisher, Ok(()))
}

/// Counts a message out of `bridge_in_flight` however its task ends (aborted included).
struct InFlight(Arc<BridgeMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests;
