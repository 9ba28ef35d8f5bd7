//! Every metric series, named in one place, exported with Prometheus' `prometheus-client`.
//!
//! A bridge's series exist at 0 from the moment it is registered (histogram included) and
//! disappear when a reload removes it: a `Family` per metric, a label set per bridge, added
//! by [`Registry::bridge`] and removed by [`Registry::remove_bridge`]. [`BridgeMetrics`]
//! holds the handles, so a message costs a few relaxed atomic adds (and one short lock for
//! the histogram), never a lookup. `/metrics` is Prometheus text 0.0.4 ([`CONTENT_TYPE`])
//! with the names it always had: counters are registered without `_total`, which the
//! encoder appends, and help texts without their final period, which the registry adds.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::message::RejectReason;

/// The `Content-Type` of [`Registry::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the end-to-end latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `bridge_end_to_end_seconds` of one bridge.
#[derive(Clone, Debug)]
pub struct Latency(Histogram);

impl Latency {
    pub fn observe(&self, value: Duration) {
        self.0.observe(value.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BridgeLabels {
    bridge: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    #[prometheus(flatten)]
    bridge: BridgeLabels,
    reason: &'static str,
}

impl BridgeLabels {
    fn reason(&self, reason: &'static str) -> ReasonLabels {
        ReasonLabels {
            bridge: self.clone(),
            reason,
        }
    }
}

/// The series of one bridge. Kept across restarts of the bridge (same name), dropped
/// when a reload removes it.
#[derive(Debug)]
pub struct BridgeMetrics {
    pub received: Counter,
    pub published: Counter,
    pub dead_lettered: [Counter; RejectReason::ALL.len()],
    pub unroutable: Counter,
    pub publish_retries: Counter,
    pub in_flight: Gauge,
    pub up: Gauge,
    pub restarts: Counter,
    /// Panics caught in the bridge (a message's pipeline, or the bridge task itself).
    pub panics: Counter,
    /// 1 while the bridge is stopped for good (`failed` in `/bridges`).
    pub failed: Gauge,
    /// Messages a source without flow control (core NATS) had no room for.
    pub dropped_overflow: Counter,
    pub source_lag: Gauge,
    pub end_to_end: Latency,
    /// Webhook requests answered with an error before they became a message. Only a
    /// webhook bridge exports them; another kind's are never registered.
    pub refused: [Counter; Refusal::ALL.len()],
    /// Webhook deliveries answered 200 without publishing: their delivery id was
    /// published within the replay window. Exported for webhook bridges only.
    pub duplicates: Counter,
    /// Which series are this bridge's, to remove them.
    labels: BridgeLabels,
}

/// Why a webhook request was refused (`bridge_requests_refused_total{reason}`). Every
/// failed authentication gets the same answer (403); only this label and the log tell
/// them apart, so a scanner cannot learn which tokens exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A configured credential (token, signature, timestamp) is missing.
    MissingCredential,
    /// A path or bearer token is wrong.
    WrongToken,
    /// A signature header that cannot be read.
    MalformedSignature,
    /// A signature that does not match.
    BadSignature,
    /// A signed timestamp outside `timestamp_tolerance`.
    StaleTimestamp,
    /// 405.
    MethodNotAllowed,
    /// 413: larger than `max_message_bytes`.
    TooLarge,
    /// 415: not JSON, and the bridge takes no raw bodies.
    UnsupportedMediaType,
    /// 503: the exchange is down, the bridge is not running, or its queue stayed full.
    Unavailable,
    /// 503: no confirm within `response_timeout`.
    Timeout,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::MissingCredential,
        Refusal::WrongToken,
        Refusal::MalformedSignature,
        Refusal::BadSignature,
        Refusal::StaleTimestamp,
        Refusal::MethodNotAllowed,
        Refusal::TooLarge,
        Refusal::UnsupportedMediaType,
        Refusal::Unavailable,
        Refusal::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::MissingCredential => "missing_credential",
            Refusal::WrongToken => "wrong_token",
            Refusal::MalformedSignature => "malformed_signature",
            Refusal::BadSignature => "bad_signature",
            Refusal::StaleTimestamp => "stale_timestamp",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::TooLarge => "too_large",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::Unavailable => "unavailable",
            Refusal::Timeout => "timeout",
        }
    }

    /// A failed authentication, answered like every other one.
    pub fn is_authentication(self) -> bool {
        matches!(
            self,
            Refusal::MissingCredential
                | Refusal::WrongToken
                | Refusal::MalformedSignature
                | Refusal::BadSignature
                | Refusal::StaleTimestamp
        )
    }
}

impl BridgeMetrics {
    pub fn dead_letter(&self, reason: RejectReason) {
        if let Some(index) = RejectReason::ALL.iter().position(|r| *r == reason) {
            self.dead_lettered[index].inc();
        }
    }

    pub fn refuse(&self, refusal: Refusal) {
        if let Some(index) = Refusal::ALL.iter().position(|r| *r == refusal) {
            self.refused[index].inc();
        }
    }
}

/// The per-bridge families; [`Registry`] adds and removes each bridge's label sets.
struct BridgeFamilies {
    received: Family<BridgeLabels, Counter>,
    published: Family<BridgeLabels, Counter>,
    unroutable: Family<BridgeLabels, Counter>,
    publish_retries: Family<BridgeLabels, Counter>,
    in_flight: Family<BridgeLabels, Gauge>,
    up: Family<BridgeLabels, Gauge>,
    restarts: Family<BridgeLabels, Counter>,
    panics: Family<BridgeLabels, Counter>,
    failed: Family<BridgeLabels, Gauge>,
    dropped: Family<ReasonLabels, Counter>,
    dead_lettered: Family<ReasonLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    duplicates: Family<BridgeLabels, Counter>,
    source_lag: Family<BridgeLabels, Gauge>,
    end_to_end: Family<BridgeLabels, Histogram, fn() -> Histogram>,
}

impl BridgeFamilies {
    /// Every series of a bridge, at 0; `source_lag` at -1: unknown.
    fn create(&self, labels: BridgeLabels) -> BridgeMetrics {
        // Only a webhook bridge refuses requests; another kind's handles count nowhere.
        let webhook = labels.kind == "webhook";
        let refused = Refusal::ALL.map(|refusal| match webhook {
            true => self
                .refused
                .get_or_create_owned(&labels.reason(refusal.label())),
            false => Counter::default(),
        });
        let metrics = BridgeMetrics {
            received: self.received.get_or_create_owned(&labels),
            published: self.published.get_or_create_owned(&labels),
            dead_lettered: RejectReason::ALL.map(|reason| {
                self.dead_lettered
                    .get_or_create_owned(&labels.reason(reason.label()))
            }),
            unroutable: self.unroutable.get_or_create_owned(&labels),
            publish_retries: self.publish_retries.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&labels),
            up: self.up.get_or_create_owned(&labels),
            restarts: self.restarts.get_or_create_owned(&labels),
            panics: self.panics.get_or_create_owned(&labels),
            failed: self.failed.get_or_create_owned(&labels),
            dropped_overflow: self.dropped.get_or_create_owned(&labels.reason("overflow")),
            source_lag: self.source_lag.get_or_create_owned(&labels),
            end_to_end: Latency(self.end_to_end.get_or_create_owned(&labels)),
            refused,
            duplicates: match webhook {
                true => self.duplicates.get_or_create_owned(&labels),
                false => Counter::default(),
            },
            labels,
        };
        metrics.source_lag.set(-1);
        metrics
    }

    fn remove(&self, labels: &BridgeLabels) {
        self.received.remove(labels);
        self.published.remove(labels);
        self.unroutable.remove(labels);
        self.publish_retries.remove(labels);
        self.in_flight.remove(labels);
        self.up.remove(labels);
        self.restarts.remove(labels);
        self.panics.remove(labels);
        self.failed.remove(labels);
        self.duplicates.remove(labels);
        self.source_lag.remove(labels);
        self.end_to_end.remove(labels);
        self.dropped.remove(&labels.reason("overflow"));
        for reason in RejectReason::ALL {
            self.dead_lettered.remove(&labels.reason(reason.label()));
        }
        for refusal in Refusal::ALL {
            self.refused.remove(&labels.reason(refusal.label()));
        }
    }
}

/// One of the process's HTTP listeners (the `listener` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Admin,
    Webhook,
}

impl Listener {
    pub const ALL: [Listener; 2] = [Listener::Admin, Listener::Webhook];

    pub fn label(self) -> &'static str {
        match self {
            Listener::Admin => "admin",
            Listener::Webhook => "webhook",
        }
    }
}

/// Why a listener closed a connection itself
/// (`bridge_listener_connections_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Over `max_connections`: closed as soon as accepted.
    Limit,
    /// The request head (or the TLS handshake) took longer than `header_timeout`.
    HeaderTimeout,
    /// The request body took longer than `body_timeout`.
    BodyTimeout,
    /// The client did not take the answer within `body_timeout`.
    WriteTimeout,
    /// The TLS handshake failed.
    TlsHandshake,
}

impl Cut {
    pub const ALL: [Cut; 5] = [
        Cut::Limit,
        Cut::HeaderTimeout,
        Cut::BodyTimeout,
        Cut::WriteTimeout,
        Cut::TlsHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cut::Limit => "limit",
            Cut::HeaderTimeout => "header_timeout",
            Cut::BodyTimeout => "body_timeout",
            Cut::WriteTimeout => "write_timeout",
            Cut::TlsHandshake => "tls_handshake",
        }
    }
}

/// The connection series of one listener.
#[derive(Debug)]
pub struct ListenerMetrics {
    pub open: Gauge,
    pub accepted: Counter,
    pub cut: [Counter; Cut::ALL.len()],
}

impl ListenerMetrics {
    pub fn cut(&self, cut: Cut) {
        if let Some(index) = Cut::ALL.iter().position(|c| *c == cut) {
            self.cut[index].inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CutLabels {
    listener: &'static str,
    reason: &'static str,
}

/// The listener families, and each listener's handles into them.
struct Listeners {
    open: Family<ListenerLabels, Gauge>,
    accepted: Family<ListenerLabels, Counter>,
    refused: Family<CutLabels, Counter>,
    handles: [ListenerMetrics; Listener::ALL.len()],
}

// Process-wide, like the listeners themselves: the webhook listener is bound by whichever
// bridge comes first and has no registry at hand. Every `Registry` exports these families.
static LISTENERS: LazyLock<Listeners> = LazyLock::new(|| {
    let open = Family::<ListenerLabels, Gauge>::default();
    let accepted = Family::<ListenerLabels, Counter>::default();
    let refused = Family::<CutLabels, Counter>::default();
    let handles = Listener::ALL.map(|which| {
        let listener = which.label();
        ListenerMetrics {
            open: open.get_or_create_owned(&ListenerLabels { listener }),
            accepted: accepted.get_or_create_owned(&ListenerLabels { listener }),
            cut: Cut::ALL.map(|cut| {
                let reason = cut.label();
                refused.get_or_create_owned(&CutLabels { listener, reason })
            }),
        }
    });
    Listeners {
        open,
        accepted,
        refused,
        handles,
    }
});

pub fn listener(listener: Listener) -> &'static ListenerMetrics {
    &LISTENERS.handles[listener as usize]
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// All series of the process.
pub struct Registry {
    exposition: prometheus_client::registry::Registry,
    families: BridgeFamilies,
    bridges: Mutex<BTreeMap<String, Arc<BridgeMetrics>>>,
    pub exchange_up: Gauge,
    pub reloads_success: Counter,
    pub reloads_failure: Counter,
    pub last_reload_success_seconds: Gauge,
}

impl Default for Registry {
    fn default() -> Self {
        let mut into = prometheus_client::registry::Registry::default();
        macro_rules! registered {
            ($name:literal, $help:literal) => {
                registered!($name, $help, Family::default())
            };
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                into.register($name, $help, metric.clone());
                metric
            }};
        }
        // Registered in the order `/metrics` shows them.
        let families = BridgeFamilies {
            received: registered!("bridge_messages_received", "Messages read from the source"),
            published: registered!(
                "bridge_events_published",
                "Events confirmed by the exchange"
            ),
            unroutable: registered!(
                "bridge_events_unroutable",
                "Events the exchange returned because no queue was bound"
            ),
            publish_retries: registered!(
                "bridge_publish_retries",
                "Publishes retried after a failure or timeout"
            ),
            in_flight: registered!(
                "bridge_in_flight",
                "Messages received and not yet acknowledged"
            ),
            up: registered!("bridge_up", "1 while the bridge is connected to its source"),
            restarts: registered!(
                "bridge_restarts",
                "Times the bridge reconnected or was restarted"
            ),
            panics: registered!(
                "bridge_panics",
                "Panics caught in the bridge: bugs, each logged with a backtrace"
            ),
            failed: registered!(
                "bridge_failed",
                "1 while the bridge is stopped for good (the exchange refused a dead letter)"
            ),
            dropped: registered!(
                "bridge_events_dropped",
                "Messages dropped, by reason: overflow, a source without flow control (core NATS) outran max_in_flight_bytes"
            ),
            dead_lettered: registered!(
                "bridge_events_dead_lettered",
                "Messages sent to the dead-letter route, by reason"
            ),
            refused: registered!(
                "bridge_requests_refused",
                "Webhook requests answered with an error status, by reason"
            ),
            duplicates: registered!(
                "bridge_requests_duplicate",
                "Webhook deliveries answered 200 without publishing again: their delivery id was published within the replay window"
            ),
            source_lag: registered!(
                "bridge_source_lag",
                "Messages waiting at the source, where it can tell (-1: unknown)"
            ),
            end_to_end: registered!(
                "bridge_end_to_end_seconds",
                "Time from receiving a message to the exchange's confirm",
                Family::new_with_constructor((|| Histogram::new(LATENCY_BUCKETS)) as fn() -> _)
            ),
        };
        let exchange_up = registered!(
            "bridge_exchange_up",
            "1 while the exchange connection is up",
            Gauge::default()
        );
        let reloads: Family<ResultLabels, Counter> =
            registered!("bridge_config_reloads", "Config reloads, by result");
        let last_reload_success_seconds = registered!(
            "bridge_config_last_reload_success_timestamp_seconds",
            "When the config was last applied",
            Gauge::default()
        );
        registered!(
            "bridge_listener_connections",
            "Connections open on the listener",
            LISTENERS.open.clone()
        );
        registered!(
            "bridge_listener_connections_accepted",
            "Connections the listener accepted (refused ones included)",
            LISTENERS.accepted.clone()
        );
        registered!(
            "bridge_listener_connections_refused",
            "Connections the listener closed itself, by reason: over max_connections, too slow (header, body, write timeout) or a failed TLS handshake",
            LISTENERS.refused.clone()
        );
        let result = |result| ResultLabels { result };
        Registry {
            exposition: into,
            families,
            bridges: Mutex::new(BTreeMap::new()),
            exchange_up,
            reloads_success: reloads.get_or_create_owned(&result("success")),
            reloads_failure: reloads.get_or_create_owned(&result("failure")),
            last_reload_success_seconds,
        }
    }
}

impl Registry {
    /// The series of a bridge, created at 0 if new. A bridge whose kind changed gets new
    /// series: `kind` is a label, so its old ones go.
    pub fn bridge(&self, name: &str, kind: &'static str) -> Arc<BridgeMetrics> {
        let mut bridges = self.bridges.lock().expect("metrics lock");
        if let Some(metrics) = bridges.get(name) {
            if metrics.labels.kind == kind {
                return metrics.clone();
            }
            self.families.remove(&metrics.labels);
        }
        let labels = BridgeLabels {
            bridge: name.to_owned(),
            kind,
        };
        let metrics = Arc::new(self.families.create(labels));
        bridges.insert(name.to_owned(), metrics.clone());
        metrics
    }

    pub fn remove_bridge(&self, name: &str) {
        if let Some(metrics) = self.bridges.lock().expect("metrics lock").remove(name) {
            self.families.remove(&metrics.labels);
        }
    }

    /// Prometheus text exposition format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.exposition).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_whose_kind_changed_has_new_series_and_not_the_old_ones() {
        let registry = Registry::default();
        registry.bridge("orders", "nats").received.inc();
        assert_eq!(registry.bridge("orders", "webhook").received.get(), 0);
        let text = registry.render();
        assert!(!text.contains("kind=\"nats\""));
        let duplicates = "bridge_requests_duplicate_total{bridge=\"orders\",kind=\"webhook\"} 0";
        assert!(text.contains(duplicates));
    }

    #[test]
    fn new_bridges_have_every_series_at_zero_and_removed_ones_none() {
        let registry = Registry::default();
        let metrics = registry.bridge("orders", "nats");
        let text = registry.render();
        for name in [
            "bridge_messages_received_total",
            "bridge_events_published_total",
            "bridge_events_unroutable_total",
            "bridge_publish_retries_total",
            "bridge_in_flight",
            "bridge_up",
            "bridge_restarts_total",
            "bridge_panics_total",
            "bridge_failed",
        ] {
            assert!(
                text.contains(&format!("{name}{{bridge=\"orders\",kind=\"nats\"}} 0\n")),
                "{name}"
            );
        }
        assert!(text.contains("bridge_events_dead_lettered_total{bridge=\"orders\",kind=\"nats\",reason=\"too_large\"} 0"));
        assert!(
            text.contains("bridge_end_to_end_seconds_count{bridge=\"orders\",kind=\"nats\"} 0")
        );
        metrics.end_to_end.observe(Duration::from_millis(3));
        metrics.dead_letter(RejectReason::InvalidJson);
        let text = registry.render();
        assert!(text.contains(
            "bridge_end_to_end_seconds_bucket{bridge=\"orders\",kind=\"nats\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("reason=\"invalid_json\"} 1"));
        assert!(!text.contains("bridge_requests_refused_total{"));
        let hook = registry.bridge("github", "webhook");
        hook.refuse(Refusal::WrongToken);
        let text = registry.render();
        assert!(text.contains(
            "bridge_requests_refused_total{bridge=\"github\",kind=\"webhook\",reason=\"wrong_token\"} 1"
        ));
        assert!(text.contains(
            "bridge_requests_refused_total{bridge=\"github\",kind=\"webhook\",reason=\"timeout\"} 0"
        ));
        registry.remove_bridge("github");
        registry.remove_bridge("orders");
        assert!(!registry.render().contains("orders"));
    }
}
