//! Rebalances: a partition assigned gets its own queue and reader, a partition revoked
//! is forgotten (its unconfirmed records go to the next owner), and with `start =
//! "latest"` the group's start is stored once a new partition is assigned. Commits are
//! librdkafka's; their outcome is logged here.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tracing::Instrument;

use super::consumer::{KafkaContext, METADATA_TIMEOUT, Shared};
use super::stream::Reader;

impl Shared {
    /// A new assignment: each partition gets its own queue, split off before librdkafka
    /// starts fetching it (so none of its records can reach the main queue), and a
    /// reader task.
    fn assign(&self, list: &TopicPartitionList) {
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        let mut partitions = self.lock();
        for element in list.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let generation = partitions.assign(topic, partition);
            let queue = consumer
                .as_ref()
                .and_then(|c| c.split_partition_queue(topic, partition));
            let Some(queue) = queue else {
                partitions.revoke(topic, partition);
                self.fail(format!(
                    "cannot read partition {partition} of `{topic}` on its own queue"
                ));
                continue;
            };
            let reader = Reader {
                queue,
                topic: Arc::from(topic),
                partition,
                generation,
                records: self.records.clone(),
            };
            let task = self.runtime.spawn(reader.run().in_current_span());
            partitions.set_reader(topic, partition, generation, task);
        }
        tracing::info!(
            bridge = %self.bridge,
            partitions = %describe_list(list),
            "partitions assigned"
        );
        self.update_lag(&partitions);
    }

    /// A revocation, before librdkafka gives the partitions up: stop reading them and
    /// forget their trackers, so nothing after an unconfirmed record is stored; the
    /// offsets stored so far are committed as the partitions go.
    fn revoke(&self, list: &TopicPartitionList) {
        let mut partitions = self.lock();
        for element in list.elements() {
            partitions.revoke(element.topic(), element.partition());
        }
        tracing::info!(
            bridge = %self.bridge,
            partitions = %describe_list(list),
            "partitions revoked; their unconfirmed records go to the next owner"
        );
        self.update_lag(&partitions);
    }
}

/// With `start = "latest"`, librdkafka reads a partition the group has no committed
/// offset on from its end, and commits nothing there until a record is confirmed: a
/// restart or reconnect before that would start at the end again, and skip what came
/// in between. So once such a partition is assigned (off the callback, which must not
/// block), its end as seen before subscribing is stored, to be committed like any
/// offset: at most where reading started, so it skips nothing the group would read.
/// Not where the group has an offset by then (another member committed first), nor
/// where a confirmed record stored one already.
fn pin_starts(shared: &Arc<Shared>, list: &TopicPartitionList) {
    let pins = shared.lock().pins_of(list);
    if pins.is_empty() {
        return;
    }
    let shared = shared.clone();
    let span = tracing::Span::current();
    shared.runtime.clone().spawn_blocking(move || {
        let _entered = span.enter();
        let Some(consumer) = shared.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut list = TopicPartitionList::new();
        for (topic, partition, _, _) in &pins {
            list.add_partition(topic, *partition);
        }
        let committed = match consumer.committed_offsets(list, METADATA_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(bridge = %shared.bridge, %error, "cannot read the group's committed offsets to record where it starts (start = \"latest\"); until a record is bridged there, a restart starts at the end again");
                return;
            }
        };
        let mut partitions = shared.lock();
        for (topic, partition, generation, offset) in pins {
            let has_offset = committed
                .find_partition(&topic, partition)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= 0));
            if has_offset {
                partitions.pins.remove(&(topic, partition));
                continue;
            }
            if !partitions.may_pin(&topic, partition, generation) {
                continue;
            }
            let mut store = TopicPartitionList::with_capacity(1);
            let stored = store
                .add_partition_offset(&topic, partition, Offset::Offset(offset))
                .and_then(|()| consumer.store_offsets(&store));
            match stored {
                Ok(()) => {
                    partitions.pinned(&topic, partition);
                    tracing::info!(bridge = %shared.bridge, "{topic}[{partition}]: the group starts at offset {offset} (start = \"latest\"); stored, so a restart starts there too");
                }
                Err(error) => {
                    tracing::warn!(bridge = %shared.bridge, %error, "{topic}[{partition}]: cannot store where the group starts (start = \"latest\"); until a record is bridged there, a restart starts at the end again");
                }
            }
        }
        drop(partitions);
        // On a blocking thread: should this be the last reference, closing blocks.
        drop(consumer);
    });
}

fn describe_list(list: &TopicPartitionList) -> String {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for element in list.elements() {
        by_topic
            .entry(element.topic().to_owned())
            .or_default()
            .push(element.partition());
    }
    if by_topic.is_empty() {
        return "none".into();
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            let numbers: Vec<String> = partitions.iter().map(i32::to_string).collect();
            format!("{topic}[{}]", numbers.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => self.shared.assign(list),
            Rebalance::Revoke(list) => self.shared.revoke(list),
            Rebalance::Error(error) => {
                tracing::warn!(bridge = %self.shared.bridge, %error, "rebalance error")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            pin_starts(&self.shared, list);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::trace!(bridge = %self.shared.bridge, offsets = %describe_offsets(offsets), "offsets committed")
            }
            // Nothing to store: the next commit carries the offsets again, and until
            // then at worst records are read again (same ids).
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(bridge = %self.shared.bridge, %error, "committing offsets failed; they are committed with the next commit")
            }
        }
    }
}

fn describe_offsets(list: &TopicPartitionList) -> String {
    list.elements()
        .iter()
        .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
        .collect::<Vec<_>>()
        .join(" ")
}
