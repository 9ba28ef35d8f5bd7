//! What a bridge shows of itself: its state and last error for `/bridges`, `/readyz`
//! and the systemd status line, and the publisher slot it publishes through.

use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::exchange::Publisher;

/// The publisher bridges use; swapped when a reload changes `[exchange]`.
pub type PublisherSlot = Arc<RwLock<Arc<Publisher>>>;

pub fn current_publisher(slot: &PublisherSlot) -> Arc<Publisher> {
    slot.read().expect("publisher lock").clone()
}

/// Lifecycle states shown in `/bridges` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Connecting,
    Running,
    Reconnecting,
    /// The bridge task panicked; it starts again after a backoff.
    Restarting,
    /// Stopped for good: going on would lose messages (e.g. the exchange refuses a
    /// dead letter). A config change or a restart starts it again.
    Failed,
    Draining,
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub state: State,
    pub last_error: Option<String>,
    /// Successful source connections since the bridge (this spec) started.
    pub connects: u64,
    pub connected_since: Option<DateTime<Utc>>,
    /// When the bridge last stopped running after it had been running (for the
    /// readiness grace); `None` while running or before its first connect.
    pub down_since: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
}

/// A bridge's live status, shared with the admin endpoints.
pub struct BridgeStatus(Mutex<StatusSnapshot>);

impl BridgeStatus {
    pub fn new() -> Self {
        BridgeStatus(Mutex::new(StatusSnapshot {
            state: State::Connecting,
            last_error: None,
            connects: 0,
            connected_since: None,
            down_since: None,
            started_at: Utc::now(),
        }))
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        self.0.lock().expect("status lock").clone()
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut StatusSnapshot)) {
        let mut status = self.0.lock().expect("status lock");
        let was_running = status.state == State::Running;
        change(&mut status);
        // Errors come from client libraries, which may quote a URL or a value they
        // were given: `/bridges` and `/readyz` show this text.
        if let Some(error) = &mut status.last_error {
            *error = crate::secret::scrub(error);
        }
        match (was_running, status.state == State::Running) {
            (true, false) => status.down_since = Some(Utc::now()),
            (_, true) => status.down_since = None,
            _ => {}
        }
    }
}

impl Default for BridgeStatus {
    fn default() -> Self {
        Self::new()
    }
}
