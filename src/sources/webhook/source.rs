//! The bridge's side: registering its route, turning each waiting request into an
//! `Incoming`, and answering the sender once the exchange confirmed (or dead-lettered).

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::WebhookSpec;
use super::auth::ClaimTicket;
use super::hub::{Hub, base_url};
use super::request::{Outcome, Pending, Route, RouteWiring};
use crate::message::{Acker, Incoming, RejectReason, SourceError};
use crate::sources::common::context::{ConnectContext, Source};

/// Registers the bridge's route (binding the listener on first use).
pub(super) async fn connect(
    spec: &WebhookSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let hub = context
        .listeners
        .get_or_init(|config| Hub::new(config.webhook.clone()))
        .ok_or_else(|| SourceError::Connect("no webhook listener in this process".into()))?;
    hub.listening().await.map_err(|error| {
        SourceError::Connect(format!(
            "cannot listen on {} ([webhook] listen): {error}",
            hub.config().listen
        ))
    })?;
    let path = spec.hook_path(&context.bridge);
    // Requests wait here for the bridge; each holds a body of up to max_message_bytes,
    // so the queue is sized to hold no more than max_in_flight_bytes of them. A full
    // queue answers 503 with Retry-After.
    let queue = (context.max_in_flight_bytes / context.max_message_bytes.max(1))
        .clamp(1, context.max_in_flight.max(1));
    let (sender, requests) = mpsc::channel(queue);
    let route = Route::new(
        spec,
        RouteWiring {
            bridge: context.bridge.clone(),
            source_uri: format!("{}{path}", base_url(hub.config())),
            max_body: context.max_message_bytes,
            requests: sender,
            exchange: context.exchange.clone(),
            metrics: context.metrics.clone(),
        },
    )
    .map_err(SourceError::Connect)?;
    hub.register(path, route);
    Ok(Box::new(WebhookSource { requests }))
}

struct WebhookSource {
    requests: mpsc::Receiver<Pending>,
}

#[async_trait]
impl Source for WebhookSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        loop {
            let pending = self.requests.recv().await.ok_or_else(|| {
                SourceError::Subscription("the webhook route was replaced".into())
            })?;
            // Its sender already got 503 (or left) and will send it again.
            if pending.reply.is_closed() {
                continue;
            }
            return Ok(Incoming {
                payload: pending.payload,
                meta: pending.meta,
                ack: Box::new(Reply {
                    sender: pending.reply,
                    claim: pending.claim,
                }),
            });
        }
    }
}

/// Answers the waiting request.
/// Dropped without an ack (the bridge stopped), its claim frees the replay key.
struct Reply {
    sender: oneshot::Sender<Outcome>,
    claim: Option<ClaimTicket>,
}

#[async_trait]
impl Acker for Reply {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        // Settled first, so a repeat sent on the 200 is a duplicate, also when the
        // confirm came after the sender stopped waiting.
        if let Some(claim) = self.claim {
            claim.settle();
        }
        // A sender that stopped waiting is no error: the event is published.
        let _ = self.sender.send(Outcome::Published);
        Ok(())
    }

    /// A dead-lettered request frees its key: a repeat is dead-lettered again, not
    /// answered as if it had been published.
    async fn ack_dead_lettered(self: Box<Self>, reason: RejectReason) -> Result<(), SourceError> {
        let _ = self.sender.send(Outcome::DeadLettered(reason));
        Ok(())
    }
}
