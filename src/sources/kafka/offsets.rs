//! The partitions assigned to the consumer: generations, trackers, readers and lag;
//! and the handle that confirms a record and stores the offset after the confirmed
//! prefix of its partition (librdkafka commits what is stored).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::consumer::Shared;
use super::spec::Start;
use super::stream::Link;
use crate::message::{Acker, SourceError};
use crate::sources::common::in_order::{InOrder, Ticket};

/// One assignment of one partition.
#[derive(Debug)]
struct PartitionState {
    /// Changes with every assignment: handles of an earlier one store nothing.
    generation: u64,
    /// Offsets handed to the bridge, in order, until confirmed.
    order: InOrder<i64>,
    /// The task moving the partition's records into the source's channel.
    reader: Option<JoinHandle<()>>,
    /// The offset after the last record handed to the bridge in this generation.
    position: Option<i64>,
    /// Where reading started, from statistics: the committed offset (or, for a group
    /// without one, the log start or end as `start` says).
    first: Option<i64>,
    /// The end of the partition (last stable offset or high watermark), from statistics.
    end: Option<i64>,
    /// Whether an offset was stored for the partition in this generation.
    stored: bool,
}

/// The bookkeeping of the assigned partitions, behind one lock shared by the source,
/// the handles and the rebalance callbacks.
#[derive(Debug, Default)]
pub(super) struct Partitions {
    by_topic: HashMap<String, HashMap<i32, PartitionState>>,
    next_generation: u64,
    /// Readers of revoked partitions, stopped but perhaps not yet finished.
    retired: Vec<JoinHandle<()>>,
    /// With `start = "latest"`: partitions the group had no committed offset on when
    /// the source connected, and their end then, to store as the group's start once
    /// they are assigned (see `pin_starts`).
    pub(super) pins: HashMap<(String, i32), i64>,
}

impl Partitions {
    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionState> {
        self.by_topic.get_mut(topic)?.get_mut(&partition)
    }

    /// A new assignment of a partition; returns its generation.
    pub(super) fn assign(&mut self, topic: &str, partition: i32) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        let state = PartitionState {
            generation,
            order: InOrder::default(),
            reader: None,
            position: None,
            first: None,
            end: None,
            stored: false,
        };
        let old = self
            .by_topic
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, state);
        if let Some(old) = old {
            self.retire(old);
        }
        generation
    }

    pub(super) fn set_reader(
        &mut self,
        topic: &str,
        partition: i32,
        generation: u64,
        reader: JoinHandle<()>,
    ) {
        match self.get_mut(topic, partition) {
            Some(state) if state.generation == generation => state.reader = Some(reader),
            _ => {
                reader.abort();
                self.retired.push(reader);
            }
        }
    }

    /// Forgets a partition: its reader stops, its handles store nothing any more.
    pub(super) fn revoke(&mut self, topic: &str, partition: i32) -> bool {
        let Some(partitions) = self.by_topic.get_mut(topic) else {
            return false;
        };
        let Some(old) = partitions.remove(&partition) else {
            return false;
        };
        if partitions.is_empty() {
            self.by_topic.remove(topic);
        }
        self.retire(old);
        true
    }

    fn retire(&mut self, state: PartitionState) {
        self.retired.retain(|reader| !reader.is_finished());
        if let Some(reader) = state.reader {
            reader.abort();
            self.retired.push(reader);
        }
    }

    /// Records a record handed to the bridge; `None` when it belongs to an assignment
    /// that is over (skip it: the partition's owner reads it).
    pub(super) fn take(
        &mut self,
        topic: &str,
        partition: i32,
        generation: u64,
        offset: i64,
    ) -> Option<Ticket> {
        let state = self.get_mut(topic, partition)?;
        if state.generation != generation {
            return None;
        }
        state.position = Some(offset + 1);
        Some(state.order.push(offset))
    }

    /// Marks a record confirmed; returns the offset to store (the one after the
    /// confirmed prefix) when the prefix grew, `None` when nothing may be stored (an
    /// earlier record is unconfirmed, or the assignment is over).
    pub(super) fn confirm(
        &mut self,
        topic: &str,
        partition: i32,
        generation: u64,
        ticket: Ticket,
    ) -> Option<i64> {
        let state = self.get_mut(topic, partition)?;
        if state.generation != generation {
            return None;
        }
        let next = state.order.confirm(ticket).last().map(|offset| offset + 1);
        state.stored |= next.is_some();
        next
    }

    /// The pins waiting for partitions of `list`: `(topic, partition, generation, offset)`.
    pub(super) fn pins_of(&self, list: &TopicPartitionList) -> Vec<(String, i32, u64, i64)> {
        list.elements()
            .iter()
            .filter_map(|element| {
                let (topic, partition) = (element.topic(), element.partition());
                let offset = *self.pins.get(&(topic.to_owned(), partition))?;
                let generation = self.by_topic.get(topic)?.get(&partition)?.generation;
                Some((topic.to_owned(), partition, generation, offset))
            })
            .collect()
    }

    /// Whether a pin may still be stored: the assignment is current and nothing was
    /// stored in it (a stored offset is past the pin already).
    pub(super) fn may_pin(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.by_topic
            .get(topic)
            .and_then(|p| p.get(&partition))
            .is_some_and(|state| state.generation == generation && !state.stored)
    }

    pub(super) fn pinned(&mut self, topic: &str, partition: i32) {
        self.pins.remove(&(topic.to_owned(), partition));
        if let Some(state) = self.get_mut(topic, partition) {
            state.stored = true;
        }
    }

    pub(super) fn is_current(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.by_topic
            .get(topic)
            .and_then(|p| p.get(&partition))
            .is_some_and(|state| state.generation == generation)
    }

    /// Records waiting to be bridged over all assigned partitions; `None` while the
    /// statistics have not told the end of any of them.
    pub(super) fn lag(&self) -> Option<u64> {
        let mut total = 0u64;
        let mut known = self.by_topic.is_empty();
        for state in self.by_topic.values().flat_map(HashMap::values) {
            let Some(end) = state.end else { continue };
            known = true;
            if let Some(position) = state.position.or(state.first) {
                total += u64::try_from(end - position).unwrap_or(0);
            }
        }
        known.then_some(total)
    }

    /// Takes in one statistics report.
    pub(super) fn statistics(&mut self, stats: &Statistics, read_committed: bool, start: Start) {
        for (topic, partitions) in &mut self.by_topic {
            let Some(topic_stats) = stats.topics.get(topic) else {
                continue;
            };
            for (partition, state) in partitions.iter_mut() {
                let Some(p) = topic_stats.partitions.get(&partition.to_string()) else {
                    continue;
                };
                let end = if read_committed && p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if end < 0 {
                    continue;
                }
                state.end = Some(end);
                state.first = if p.committed_offset >= 0 {
                    Some(p.committed_offset)
                } else {
                    match start {
                        Start::Earliest => Some(p.lo_offset.max(0)),
                        Start::Latest => Some(end),
                    }
                };
            }
        }
    }

    /// Everything that still runs, for the end of the connection.
    pub(super) fn drain_readers(&mut self) -> Vec<JoinHandle<()>> {
        let mut readers: Vec<JoinHandle<()>> = std::mem::take(&mut self.retired);
        for partitions in self.by_topic.values_mut() {
            for state in partitions.values_mut() {
                readers.extend(state.reader.take());
            }
        }
        for reader in &readers {
            reader.abort();
        }
        readers
    }
}

/// The part of librdkafka's statistics the lag needs.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Statistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
}

#[derive(Debug, Default, Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(Debug, Deserialize)]
struct PartitionStatistics {
    #[serde(default = "unknown_offset")]
    hi_offset: i64,
    #[serde(default = "unknown_offset")]
    ls_offset: i64,
    #[serde(default = "unknown_offset")]
    lo_offset: i64,
    #[serde(default = "unknown_offset")]
    committed_offset: i64,
}

fn unknown_offset() -> i64 {
    -1
}

/// Confirms one record and stores the offset after the confirmed prefix of its
/// partition.
pub(super) struct KafkaAck {
    pub(super) shared: Arc<Shared>,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) generation: u64,
    pub(super) offset: i64,
    pub(super) ticket: Ticket,
    pub(super) done: bool,
    pub(super) _link: Arc<Link>,
}

#[async_trait]
impl Acker for KafkaAck {
    async fn ack(mut self: Box<Self>) -> Result<(), SourceError> {
        self.done = true;
        // Stored under the lock, so a revocation cannot slip in between the check of
        // the generation and the store.
        let partitions = &mut *self.shared.lock();
        let Some(next) =
            partitions.confirm(&self.topic, self.partition, self.generation, self.ticket)
        else {
            // An earlier record is unconfirmed, or the partition was revoked: its owner
            // reads this record again.
            return Ok(());
        };
        let Some(consumer) = self.shared.consumer.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition_offset(&self.topic, self.partition, Offset::Offset(next))
            .map_err(|e| SourceError::Ack(e.to_string()))?;
        match consumer.store_offsets(&list) {
            Ok(()) => Ok(()),
            // No longer assigned at librdkafka's level: the owner reads it again.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => Ok(()),
            Err(error) => Err(SourceError::Ack(format!(
                "cannot store offset {next} of {}[{}]: {error}",
                self.topic, self.partition
            ))),
        }
    }
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Never confirmed: its partition can store nothing past it any more. Read it
        // again through a new connection, unless the partition was revoked already.
        let current = self
            .shared
            .lock()
            .is_current(&self.topic, self.partition, self.generation);
        if current {
            self.shared.fail(format!(
                "record {}:{}:{} was abandoned before the exchange confirmed it",
                self.topic, self.partition, self.offset
            ));
        }
    }
}
