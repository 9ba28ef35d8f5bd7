//! What a kind's source sees of the daemon: the `Source` it returns, the context it
//! connects with (limits, metrics, the exchange's state, shared listeners), and what a
//! broker says about a position.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::config::{BridgeSpec, Config};
use crate::message::{Incoming, SourceError};

/// A connected source.
#[async_trait]
pub trait Source: Send {
    /// The next message. An error means the connection is lost: the bridge reconnects.
    async fn next(&mut self) -> Result<Incoming, SourceError>;
}

/// How long `verify_position` waits for a broker before calling the spec unverified.
pub const VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a source's broker says about starting a bridge with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Starting moves no position (or the kind keeps none at its broker).
    Safe,
    /// The broker could not be asked; the bridge checks again when it connects.
    Unverified(String),
    /// Starting would move a position or change an object we did not create.
    Refused(String),
}

/// What a source needs to know about its bridge when it connects.
#[derive(Debug, Clone, Default)]
pub struct ConnectContext {
    pub bridge: String,
    pub max_in_flight: usize,
    /// A source that must buffer on its own (core NATS, which has no flow control)
    /// holds at most this many payload bytes.
    pub max_in_flight_bytes: usize,
    pub max_message_bytes: usize,
    /// The bridge's series a source reports to: `bridge_source_lag` (a source that can
    /// tell how far behind it is, e.g. JetStream pending or Kafka consumer lag, sets it
    /// whenever it learns, also while idle) and webhook refusals.
    pub metrics: SourceMetrics,
    /// `[defaults] state_dir`: where a kind keeps a cursor of its own (`s3`, `calendar`).
    pub state_dir: std::path::PathBuf,
    /// Whether the exchange is connected right now.
    pub exchange: ExchangeProbe,
    pub listeners: Listeners,
}

/// Process-wide state that the bridges of one kind share (the webhook kind's HTTP
/// listener): made on a bridge's first use, and told after a reload which bridges remain.
pub trait Shared: Any + Send + Sync {
    /// Forgets what bridges no longer configured registered.
    fn retain(&self, bridges: &[BridgeSpec]);
}

/// The shared state of every kind, made from the config the daemon started with.
#[derive(Clone, Default)]
pub struct Listeners(Arc<SharedStates>);

#[derive(Default)]
struct SharedStates {
    config: Option<Config>,
    states: Mutex<Vec<SharedState>>,
}

struct SharedState {
    as_any: Arc<dyn Any + Send + Sync>,
    as_shared: Arc<dyn Shared>,
}

impl Listeners {
    /// The shared state of a config (each made when a bridge first needs it).
    pub fn new(config: &Config) -> Self {
        Listeners(Arc::new(SharedStates {
            config: Some(config.clone()),
            states: Mutex::default(),
        }))
    }

    /// The state of type `T`, made by `make` on first use; `None` without a config
    /// (a source connected outside the daemon, as in benches).
    pub fn get_or_init<T: Shared>(&self, make: impl FnOnce(&Config) -> Arc<T>) -> Option<Arc<T>> {
        let config = self.0.config.as_ref()?;
        let mut states = self.0.states.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = states
            .iter()
            .find_map(|state| state.as_any.clone().downcast::<T>().ok())
        {
            return Some(found);
        }
        let made = make(config);
        states.push(SharedState {
            as_any: made.clone(),
            as_shared: made.clone(),
        });
        Some(made)
    }

    /// Tells every shared state which bridges remain.
    pub fn retain(&self, bridges: &[BridgeSpec]) {
        let states = self.0.states.lock().unwrap_or_else(PoisonError::into_inner);
        for state in states.iter() {
            state.as_shared.retain(bridges);
        }
    }
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listeners")
    }
}

/// Tells whether the exchange is connected right now. A source that answers senders
/// itself (webhook) refuses work while it is not; the default reports it up.
#[derive(Clone, Default)]
pub struct ExchangeProbe(Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>);

impl ExchangeProbe {
    pub fn new(is_up: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        ExchangeProbe(Some(std::sync::Arc::new(is_up)))
    }

    pub fn is_up(&self) -> bool {
        self.0.as_ref().is_none_or(|is_up| is_up())
    }
}

impl std::fmt::Debug for ExchangeProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeProbe")
    }
}

/// What a source reports to its bridge's series; the default reports nowhere.
#[derive(Clone, Default)]
pub struct SourceMetrics(Option<std::sync::Arc<crate::metrics::BridgeMetrics>>);

impl SourceMetrics {
    pub fn new(metrics: std::sync::Arc<crate::metrics::BridgeMetrics>) -> Self {
        SourceMetrics(Some(metrics))
    }

    /// `bridge_source_lag`: messages waiting at the source.
    pub fn set_lag(&self, lag: u64) {
        if let Some(metrics) = &self.0 {
            let lag = i64::try_from(lag).unwrap_or(i64::MAX);
            metrics.source_lag.set(lag);
        }
    }

    /// `bridge_events_dropped_total{reason="overflow"}`: a message a source without flow
    /// control (core NATS) had no room for.
    pub fn drop_overflow(&self) {
        if let Some(metrics) = &self.0 {
            metrics.dropped_overflow.inc();
        }
    }

    /// `bridge_requests_duplicate_total`: a delivery answered without publishing again.
    pub fn count_duplicate(&self) {
        if let Some(metrics) = &self.0 {
            metrics.duplicates.inc();
        }
    }

    /// `bridge_requests_refused_total`: a request refused before it became a message.
    pub fn refuse(&self, refusal: crate::metrics::Refusal) {
        if let Some(metrics) = &self.0 {
            metrics.refuse(refusal);
        }
    }
}

impl std::fmt::Debug for SourceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SourceMetrics"
        } else {
            "SourceMetrics(none)"
        })
    }
}
