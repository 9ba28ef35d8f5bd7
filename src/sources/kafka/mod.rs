//! `kind = "kafka"`: a consumer group reading several topics (and regex subscriptions),
//! at-least-once, with offsets stored only for the contiguous confirmed prefix of each
//! partition.
//!
//! Delivery (DESIGN.md, "Delivery contract"):
//!
//! - **Offsets.** `enable.auto.offset.store` is off: librdkafka never stores an offset by
//!   itself. Each partition assigned to this consumer has a tracker ([`InOrder`]) of the
//!   records handed to the bridge, in offset order. When the exchange confirmed a
//!   record's event (or dead letter), its handle confirms it in the tracker, and the
//!   offset after the last record of the confirmed run at the front is stored
//!   (`store_offsets` with `offset + 1`, the next record to read, as Kafka commits it). A
//!   later confirm never moves the stored offset past an earlier record that is still
//!   unconfirmed. `enable.auto.commit` is on: librdkafka commits the stored offsets every
//!   `auto.commit.interval.ms` (1s unless `properties` says otherwise), when partitions
//!   are revoked, and when the consumer closes. Committing ourselves would add nothing
//!   but requests: what may be committed is decided by what is stored.
//! - **Rebalances.** Every assignment of a partition gets a new generation. On a
//!   revocation (before librdkafka gives the partitions up), the partitions' trackers are
//!   dropped and their readers stopped: no more records are taken from them, and a
//!   handle from an earlier generation stores nothing when its record is confirmed
//!   later (it returns `Ok`). So nothing past an unconfirmed record is ever stored, the
//!   committed offset is the confirmed prefix, and the new owner (this consumer again,
//!   or another member of the group) reads everything after it again. A record that
//!   still comes out of a reader after its partition was revoked is skipped: the new
//!   owner reads it. The rebalance then completes at once; in-flight records of revoked
//!   partitions are abandoned rather than awaited, so a rebalance never waits for the
//!   exchange.
//! - **Where a group starts.** A committed offset always wins. Where the group has none,
//!   librdkafka starts at `start`; with `latest` the end seen when connecting is stored
//!   as soon as the partition is assigned ([`pin_starts`]), so that a restart before the
//!   first record starts there again rather than at a later end. That is the one offset
//!   stored for no confirmed record, and it is never past where reading starts.
//! - **No loss.** A record is only ever skipped or abandoned when nothing at or after
//!   its offset can be stored by this consumer any more, so the group's committed offset
//!   stays at or before it and the partition's next owner reads it. A handle dropped
//!   without being confirmed (its record will never be) makes the source fail: the
//!   bridge reconnects and the group reads from the committed offset again.
//! - **Duplicates carry identical ids.** The event id is `<topic>:<partition>:<offset>`
//!   (unless the record is a CloudEvent, which keeps its own id), and a record read again
//!   after a rebalance, a restart, SIGKILL or a reconnect has the same topic, partition
//!   and offset. Consumers deduplicate on (`source`, `id`).
//!
//! How records are read: each assigned partition gets its own librdkafka queue (split
//! off before the assignment takes effect) and a task that moves its records, in order,
//! into one small channel that `next` reads; the channel's fairness interleaves the
//! partitions. A driver task keeps polling the consumer's main queue, which serves
//! rebalances, statistics and errors even while the bridge does not pull (an exchange
//! outage): the group never waits for this member, and records wait in librdkafka's
//! bounded prefetch queues. The bridge bounds what is in flight (`max_in_flight`).
//!
//! Lag: librdkafka's statistics (every second) give each partition's end offset (the
//! last stable offset under the default `isolation.level = read_committed`, else the
//! high watermark) and committed offset. The lag is the sum over the assigned
//! partitions of end offset minus the next record to hand to the bridge (the committed
//! offset before the first record of an assignment): records waiting to be bridged,
//! like JetStream's pending count. The source sets the bridge's gauge itself on every
//! report and rebalance ([`SourceMetrics`]), so it keeps counting while the bridge does not
//! pull (an exchange outage) and shows 0 on an idle bridge; `lag` gives it after every
//! record.
//!
//! Connecting checks that the brokers answer and that every topic named literally
//! exists (broker-bridge never creates topics), reports where the group starts and what
//! an edit of `group_id`, `topics` or `start` left behind (refusing a new group that
//! would skip records: see "Edits" below), then subscribes. Fatal client errors,
//! all brokers down, authentication and authorization failures and a deleted topic make
//! `next` fail, so the bridge reports the error and reconnects with backoff; librdkafka
//! rides out other trouble (a broker restart, a leader change) by itself.
//!
//! [`InOrder`]: crate::sources::common::in_order::InOrder
//! [`pin_starts`]: rebalance::pin_starts
//! [`SourceMetrics`]: crate::sources::common::context::SourceMetrics

mod consumer;
mod offsets;
mod position;
mod rebalance;
mod spec;
mod stream;

use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source};
use crate::config::fields;
use crate::message::SourceError;

pub use consumer::connect;
pub use position::verify_position;
pub use spec::{KafkaSpec, SaslMechanism, Security, Start};

/// `kind = "kafka"`: a consumer group.
pub struct Kafka;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Kafka {
    const NAME: &'static str = "kafka";
    type Spec = KafkaSpec;

    fn parse(table: Map<String, Value>) -> Result<KafkaSpec, String> {
        fields::reject_unknown(&table, fields::names::<KafkaSpec>(), "kind `kafka`")?;
        let spec: KafkaSpec = fields::parse(Value::Object(table))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Every key of the kind (the `[bridge.tls]` keys are listed by the caller).
    fn accepted_keys() -> Vec<&'static str> {
        fields::names::<KafkaSpec>().to_vec()
    }

    fn describe(spec: &KafkaSpec) -> String {
        let topics: Vec<String> = spec.topics.iter().map(|t| format!("`{t}`")).collect();
        let group = match &spec.group_id {
            Some(group) => format!("group `{group}`"),
            None => "group `broker-bridge-<bridge name>`".into(),
        };
        let mut details = vec![group, format!("new groups start at {}", spec.start.label())];
        match (spec.security, spec.sasl_mechanism) {
            (Security::Plaintext, _) => {}
            (Security::Ssl, _) => details.push("TLS".into()),
            (Security::SaslPlaintext, mechanism) => details.push(format!(
                "SASL {} without TLS",
                mechanism.map_or("", SaslMechanism::name)
            )),
            (Security::SaslSsl, mechanism) => details.push(format!(
                "SASL {} over TLS",
                mechanism.map_or("", SaslMechanism::name)
            )),
        }
        format!(
            "topics {} on {} ({}); at-least-once: offsets stored only for the contiguous confirmed prefix of each partition; event id `<topic>:<partition>:<offset>`, the same when a record is read again",
            topics.join(", "),
            spec.brokers.join(","),
            details.join(", ")
        )
    }

    async fn verify_position(
        spec: &KafkaSpec,
        bridge: &crate::config::BridgeSpec,
    ) -> Result<(), SourceError> {
        verify_position(spec, &bridge.name).await
    }

    async fn connect(
        spec: &KafkaSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect(spec, context).await
    }
}

#[cfg(test)]
mod tests;
