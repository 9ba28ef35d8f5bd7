//! Every metric series, named in one place, rendered as Prometheus text.
//!
//! Hand-rolled on atomics rather than the `metrics` crate because a bridge's series must
//! exist at 0 from the moment it starts (histogram included) and disappear when a reload
//! removes the bridge; the per-message cost is a few relaxed atomic adds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::message::RejectReason;

/// Upper bounds (seconds) of the end-to-end latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(index) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }
}

/// The series of one bridge. Kept across restarts of the bridge (same name), dropped
/// when a reload removes it.
#[derive(Default)]
pub struct BridgeMetrics {
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub dead_lettered: [AtomicU64; RejectReason::ALL.len()],
    pub unroutable: AtomicU64,
    pub publish_retries: AtomicU64,
    pub in_flight: AtomicI64,
    pub up: AtomicI64,
    pub restarts: AtomicU64,
    /// Panics caught in the bridge (a message's pipeline, or the bridge task itself).
    pub panics: AtomicU64,
    /// 1 while the bridge is stopped for good (`failed` in `/bridges`).
    pub failed: AtomicI64,
    /// Messages a source without flow control (core NATS) had no room for.
    pub dropped_overflow: AtomicU64,
    pub source_lag: AtomicI64,
    pub end_to_end: Histogram,
    /// Webhook requests answered with an error before they became a message.
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Webhook deliveries answered 200 without publishing: their delivery id was
    /// published within the replay window.
    pub duplicates: AtomicU64,
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
            self.dead_lettered[index].fetch_add(1, Relaxed);
        }
    }

    pub fn refuse(&self, refusal: Refusal) {
        if let Some(index) = Refusal::ALL.iter().position(|r| *r == refusal) {
            self.refused[index].fetch_add(1, Relaxed);
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
pub struct ListenerMetrics {
    pub open: AtomicI64,
    pub accepted: AtomicU64,
    pub cut: [AtomicU64; Cut::ALL.len()],
}

impl ListenerMetrics {
    const fn new() -> Self {
        ListenerMetrics {
            open: AtomicI64::new(0),
            accepted: AtomicU64::new(0),
            cut: [const { AtomicU64::new(0) }; Cut::ALL.len()],
        }
    }

    pub fn cut(&self, cut: Cut) {
        if let Some(index) = Cut::ALL.iter().position(|c| *c == cut) {
            self.cut[index].fetch_add(1, Relaxed);
        }
    }
}

// Process-wide, like the listeners themselves: the webhook listener is bound by whichever
// bridge comes first and has no registry at hand.
static LISTENER_METRICS: [ListenerMetrics; Listener::ALL.len()] =
    [const { ListenerMetrics::new() }; Listener::ALL.len()];

pub fn listener(listener: Listener) -> &'static ListenerMetrics {
    &LISTENER_METRICS[listener as usize]
}

struct Entry {
    kind: &'static str,
    metrics: Arc<BridgeMetrics>,
}

/// All series of the process.
#[derive(Default)]
pub struct Registry {
    bridges: RwLock<BTreeMap<String, Entry>>,
    pub exchange_up: AtomicI64,
    pub reloads_success: AtomicU64,
    pub reloads_failure: AtomicU64,
    pub last_reload_success_seconds: AtomicU64,
}

impl Registry {
    /// The series of a bridge, created at 0 if new. `source_lag` starts at -1: unknown.
    pub fn bridge(&self, name: &str, kind: &'static str) -> Arc<BridgeMetrics> {
        let mut bridges = self.bridges.write().expect("metrics lock");
        if let Some(entry) = bridges.get_mut(name) {
            entry.kind = kind;
            return entry.metrics.clone();
        }
        let metrics = Arc::new(BridgeMetrics::default());
        metrics.source_lag.store(-1, Relaxed);
        bridges.insert(
            name.to_owned(),
            Entry {
                kind,
                metrics: metrics.clone(),
            },
        );
        metrics
    }

    pub fn remove_bridge(&self, name: &str) {
        self.bridges.write().expect("metrics lock").remove(name);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let bridges = self.bridges.read().expect("metrics lock");
        let mut out = String::with_capacity(4096 + bridges.len() * 3000);
        let labels =
            |name: &str, kind: &str| format!("bridge=\"{}\",kind=\"{}\"", escape(name), kind);
        type Get = fn(&BridgeMetrics) -> i64;
        let simple: [(&str, &str, &str, Get); 9] = [
            (
                "bridge_messages_received_total",
                "counter",
                "Messages read from the source.",
                |m| m.received.load(Relaxed) as i64,
            ),
            (
                "bridge_events_published_total",
                "counter",
                "Events confirmed by the exchange.",
                |m| m.published.load(Relaxed) as i64,
            ),
            (
                "bridge_events_unroutable_total",
                "counter",
                "Events the exchange returned because no queue was bound.",
                |m| m.unroutable.load(Relaxed) as i64,
            ),
            (
                "bridge_publish_retries_total",
                "counter",
                "Publishes retried after a failure or timeout.",
                |m| m.publish_retries.load(Relaxed) as i64,
            ),
            (
                "bridge_in_flight",
                "gauge",
                "Messages received and not yet acknowledged.",
                |m| m.in_flight.load(Relaxed),
            ),
            (
                "bridge_up",
                "gauge",
                "1 while the bridge is connected to its source.",
                |m| m.up.load(Relaxed),
            ),
            (
                "bridge_restarts_total",
                "counter",
                "Times the bridge reconnected or was restarted.",
                |m| m.restarts.load(Relaxed) as i64,
            ),
            (
                "bridge_panics_total",
                "counter",
                "Panics caught in the bridge: bugs, each logged with a backtrace.",
                |m| m.panics.load(Relaxed) as i64,
            ),
            (
                "bridge_failed",
                "gauge",
                "1 while the bridge is stopped for good (the exchange refused a dead letter).",
                |m| m.failed.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in simple {
            header(&mut out, name, kind, help);
            for (bridge, entry) in bridges.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {}",
                    labels(bridge, entry.kind),
                    get(&entry.metrics)
                );
            }
        }
        header(
            &mut out,
            "bridge_events_dropped_total",
            "counter",
            "Messages dropped, by reason: overflow, a source without flow control (core NATS) outran max_in_flight_bytes.",
        );
        for (bridge, entry) in bridges.iter() {
            let _ = writeln!(
                out,
                "bridge_events_dropped_total{{{},reason=\"overflow\"}} {}",
                labels(bridge, entry.kind),
                entry.metrics.dropped_overflow.load(Relaxed)
            );
        }
        header(
            &mut out,
            "bridge_events_dead_lettered_total",
            "counter",
            "Messages sent to the dead-letter route, by reason.",
        );
        for (bridge, entry) in bridges.iter() {
            for (index, reason) in RejectReason::ALL.iter().map(|r| r.label()).enumerate() {
                let _ = writeln!(
                    out,
                    "bridge_events_dead_lettered_total{{{},reason=\"{reason}\"}} {}",
                    labels(bridge, entry.kind),
                    entry.metrics.dead_lettered[index].load(Relaxed)
                );
            }
        }
        header(
            &mut out,
            "bridge_requests_refused_total",
            "counter",
            "Webhook requests answered with an error status, by reason.",
        );
        for (bridge, entry) in bridges.iter().filter(|(_, e)| e.kind == "webhook") {
            for (index, reason) in Refusal::ALL.iter().map(|r| r.label()).enumerate() {
                let _ = writeln!(
                    out,
                    "bridge_requests_refused_total{{{},reason=\"{reason}\"}} {}",
                    labels(bridge, entry.kind),
                    entry.metrics.refused[index].load(Relaxed)
                );
            }
        }
        header(
            &mut out,
            "bridge_requests_duplicate_total",
            "counter",
            "Webhook deliveries answered 200 without publishing again: their delivery id was published within the replay window.",
        );
        for (bridge, entry) in bridges.iter().filter(|(_, e)| e.kind == "webhook") {
            let _ = writeln!(
                out,
                "bridge_requests_duplicate_total{{{}}} {}",
                labels(bridge, entry.kind),
                entry.metrics.duplicates.load(Relaxed)
            );
        }
        header(
            &mut out,
            "bridge_source_lag",
            "gauge",
            "Messages waiting at the source, where it can tell (-1: unknown).",
        );
        for (bridge, entry) in bridges.iter() {
            let _ = writeln!(
                out,
                "bridge_source_lag{{{}}} {}",
                labels(bridge, entry.kind),
                entry.metrics.source_lag.load(Relaxed)
            );
        }
        header(
            &mut out,
            "bridge_end_to_end_seconds",
            "histogram",
            "Time from receiving a message to the exchange's confirm.",
        );
        for (bridge, entry) in bridges.iter() {
            let histogram = &entry.metrics.end_to_end;
            let l = labels(bridge, entry.kind);
            let mut cumulative = 0;
            for (index, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += histogram.buckets[index].load(Relaxed);
                let _ = writeln!(
                    out,
                    "bridge_end_to_end_seconds_bucket{{{l},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = histogram.count.load(Relaxed);
            let _ = writeln!(
                out,
                "bridge_end_to_end_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
            );
            let sum = histogram.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "bridge_end_to_end_seconds_sum{{{l}}} {sum}");
            let _ = writeln!(out, "bridge_end_to_end_seconds_count{{{l}}} {count}");
        }
        header(
            &mut out,
            "bridge_exchange_up",
            "gauge",
            "1 while the exchange connection is up.",
        );
        let _ = writeln!(out, "bridge_exchange_up {}", self.exchange_up.load(Relaxed));
        header(
            &mut out,
            "bridge_config_reloads_total",
            "counter",
            "Config reloads, by result.",
        );
        let _ = writeln!(
            out,
            "bridge_config_reloads_total{{result=\"success\"}} {}",
            self.reloads_success.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "bridge_config_reloads_total{{result=\"failure\"}} {}",
            self.reloads_failure.load(Relaxed)
        );
        header(
            &mut out,
            "bridge_config_last_reload_success_timestamp_seconds",
            "gauge",
            "When the config was last applied.",
        );
        let _ = writeln!(
            out,
            "bridge_config_last_reload_success_timestamp_seconds {}",
            self.last_reload_success_seconds.load(Relaxed)
        );
        render_listeners(&mut out);
        out
    }
}

fn render_listeners(out: &mut String) {
    header(
        out,
        "bridge_listener_connections",
        "gauge",
        "Connections open on the listener.",
    );
    for which in Listener::ALL {
        let _ = writeln!(
            out,
            "bridge_listener_connections{{listener=\"{}\"}} {}",
            which.label(),
            listener(which).open.load(Relaxed)
        );
    }
    header(
        out,
        "bridge_listener_connections_accepted_total",
        "counter",
        "Connections the listener accepted (refused ones included).",
    );
    for which in Listener::ALL {
        let _ = writeln!(
            out,
            "bridge_listener_connections_accepted_total{{listener=\"{}\"}} {}",
            which.label(),
            listener(which).accepted.load(Relaxed)
        );
    }
    header(
        out,
        "bridge_listener_connections_refused_total",
        "counter",
        "Connections the listener closed itself, by reason: over max_connections, too slow (header, body, write timeout) or a failed TLS handshake.",
    );
    for which in Listener::ALL {
        for (index, cut) in Cut::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "bridge_listener_connections_refused_total{{listener=\"{}\",reason=\"{}\"}} {}",
                which.label(),
                cut.label(),
                listener(which).cut[index].load(Relaxed)
            );
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
