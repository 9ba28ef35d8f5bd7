//! Acknowledging QoS 1 messages: a PUBACK per message, written in the order the
//! PUBLISHes arrived, and an acknowledgement that returns once it is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::client::Client;
use super::session::SessionMemory;
use crate::message::{Acker, SourceError};
use crate::sources::common::in_order::{InOrder, Ticket};

/// PUBACKs queued and not yet seen written, by packet id.
pub(super) type Written = Arc<Mutex<HashMap<u16, oneshot::Sender<()>>>>;

/// A PUBACK not written within this is reported as failed (the broker resends).
const PUBACK_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared by the source and the acknowledgement handles of one connection.
pub(super) struct AckState {
    /// Packet ids (and event ids) of the QoS 1 messages handed out, in arrival order.
    pub(super) order: Mutex<InOrder<(u16, String)>>,
    pub(super) client: Client,
    pub(super) written: Written,
    pub(super) session: Arc<Mutex<SessionMemory>>,
    pub(super) broken: CancellationToken,
    /// Ends the connection once the source and every handle are dropped, which is after
    /// the bridge drained.
    pub(super) _close_connection: DropGuard,
}

/// Acknowledges one QoS 1 message, in arrival order.
pub(super) struct MqttAck {
    pub(super) acks: Arc<AckState>,
    pub(super) ticket: Ticket,
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
