//! Edits of `group_id`, `topics` and `start`: where the group starts, and what an edit
//! leaves behind.
//!
//! Kafka keeps a group's position per partition (its committed offset) until the group
//! commits again; broker-bridge never writes one except for the confirmed prefix. So an
//! edit moves no position; what it can do is read from another one:
//!
//! - a topic added is read from the group's committed offsets there, or from `start`
//!   where it has none;
//! - a topic removed keeps the group's committed offsets, so listing it again resumes
//!   from them; its unread records wait there;
//! - `start` matters only where the group has no committed offset;
//! - a new `group_id` has offsets of its own (usually none), so it starts at `start`,
//!   and the old group keeps its offsets and its unread records.
//!
//! Connecting reports where the group starts on every partition without a committed
//! offset. To report what an edit leaves behind, the source remembers, per bridge, what
//! its last connection in this process read (`LAST_READ`). A restart begins with nothing
//! there (broker-bridge keeps no Kafka state): it cannot name a group used before, except
//! the default group, which it checks when the bridge names another one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::consumer::METADATA_TIMEOUT;
use super::spec::{KafkaSpec, Start};
use crate::message::SourceError;

/// What the last connection of each bridge in this process read.
pub(super) static LAST_READ: Mutex<BTreeMap<String, LastRead>> = Mutex::new(BTreeMap::new());

/// How long a connection waits for the consumer of the bridge's previous connection to
/// close (and commit) before it reports what that one left behind.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub(super) struct LastRead {
    pub(super) group: String,
    pub(super) topics: Vec<String>,
    pub(super) start: Start,
    /// Becomes true once that connection's consumer has closed: its last stored offsets
    /// are committed.
    pub(super) closed: watch::Receiver<bool>,
}

fn last_read(bridge: &str) -> Option<LastRead> {
    LAST_READ
        .lock()
        .expect("last read lock")
        .get(bridge)
        .cloned()
}

/// Where a group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Standing {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The group's committed offset (the next record it reads); `None` where it has none.
    pub(super) committed: Option<i64>,
    /// The oldest offset still in the log.
    pub(super) low: i64,
    /// The end of what a consumer of this isolation level can read: the high
    /// watermark, or the last stable offset under `read_committed`.
    pub(super) end: i64,
}

impl Standing {
    fn name(&self) -> String {
        format!("{}[{}]", self.topic, self.partition)
    }

    /// Records after the committed offset (0 where the group has none).
    fn unread(&self) -> u64 {
        self.committed.map_or(0, |committed| {
            u64::try_from(self.end - committed.max(self.low)).unwrap_or(0)
        })
    }

    /// Records in the partition now.
    fn held(&self) -> u64 {
        u64::try_from(self.end - self.low).unwrap_or(0)
    }

    /// `t[0] at 5 (3 unread)`.
    fn position(&self) -> String {
        match self.committed {
            Some(committed) => format!("{} at {committed} ({} unread)", self.name(), self.unread()),
            None => format!("{} none", self.name()),
        }
    }
}

fn names(standings: &[&Standing]) -> String {
    standings
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn positions(standings: &[&Standing]) -> String {
    standings
        .iter()
        .map(|s| s.position())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads where `group` stands on the partitions of the literal `topics` (missing topics
/// are left out): committed offsets (OffsetFetch) and watermarks, with a client of its
/// own that never joins the group, subscribes, assigns or commits. Blocking.
fn standings(
    spec: &KafkaSpec,
    bridge: &str,
    group: &str,
    topics: &[String],
) -> Result<Vec<Standing>, String> {
    let topics: Vec<&String> = topics.iter().filter(|t| !t.starts_with('^')).collect();
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let mut config = spec.client_config(bridge);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .remove("statistics.interval.ms");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| format!("no metadata for `{topic}`: {e}"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.as_str() && t.error().is_none());
        for partition in found.map(|t| t.partitions()).unwrap_or_default() {
            list.add_partition(topic, partition.id());
        }
    }
    if list.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer
        .committed_offsets(list, METADATA_TIMEOUT)
        .map_err(|e| format!("cannot read the committed offsets of group `{group}`: {e}"))?;
    let mut out = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, end) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|e| format!("cannot read the offsets of {topic}[{partition}]: {e}"))?;
        let committed = match element.offset() {
            Offset::Offset(offset) if offset >= 0 => Some(offset),
            _ => None,
        };
        out.push(Standing {
            topic: topic.to_owned(),
            partition,
            committed,
            low,
            end,
        });
    }
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}

/// Where the groups stand when a bridge connects, and what it read before.
#[derive(Debug, Default)]
pub(super) struct Survey {
    pub(super) group: String,
    pub(super) start: Start,
    pub(super) topics: Vec<String>,
    /// The group on the literal topics it reads now.
    pub(super) now: Vec<Standing>,
    /// What the bridge's last connection in this process read, if it read something
    /// else, with where that group stands on those literal topics.
    pub(super) before: Option<(LastRead, Vec<Standing>)>,
    /// The default group `broker-bridge-<bridge>` on the literal topics, when the bridge
    /// names another group and nothing tells what it read before (a restart).
    pub(super) default_group: Option<(String, Vec<Standing>)>,
}

/// What connecting reports, or refuses.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Assessment {
    /// Connecting would skip records the bridge has not read (a new group starting at
    /// the end of partitions where the old group has unread records).
    pub(super) refusal: Option<String>,
    pub(super) warnings: Vec<String>,
    pub(super) notes: Vec<String>,
}

/// Asks the brokers where the groups stand for `assess`. Blocking.
fn survey(spec: &KafkaSpec, bridge: &str, before: Option<LastRead>) -> Result<Survey, String> {
    let group = spec.group_id(bridge);
    let now = standings(spec, bridge, &group, &spec.topics)?;
    let before = match before {
        Some(last) if last.group != group => {
            let old = standings(spec, bridge, &last.group, &last.topics)?;
            Some((last, old))
        }
        Some(last) if last.topics != spec.topics || last.start != spec.start => {
            let removed: Vec<String> = last
                .topics
                .iter()
                .filter(|t| !spec.topics.contains(t))
                .cloned()
                .collect();
            let old = standings(spec, bridge, &group, &removed)?;
            Some((last, old))
        }
        _ => None,
    };
    let default = format!("broker-bridge-{bridge}");
    let default_group = if before.is_none()
        && group != default
        && spec.start == Start::Latest
        && now.iter().any(|s| s.committed.is_none() && s.held() > 0)
    {
        let standings = standings(spec, bridge, &default, &spec.topics)?;
        Some((default, standings))
    } else {
        None
    };
    Ok(Survey {
        group,
        start: spec.start,
        topics: spec.topics.clone(),
        now,
        before,
        default_group,
    })
}

/// What a connection reports about where its group starts and what an edit of
/// `group_id`, `topics` or `start` left behind; a refusal where it would skip records.
pub(super) fn assess(survey: &Survey) -> Assessment {
    let mut out = Assessment::default();
    let group = &survey.group;
    let start = survey.start.label();
    let fresh: Vec<&Standing> = survey
        .now
        .iter()
        .filter(|s| s.committed.is_none())
        .collect();
    let mut group_changed = false;
    if let Some((last, old)) = &survey.before {
        let old_group = &last.group;
        if old_group != group {
            group_changed = true;
            // Where the new group has no offset and starts at the end, the old group's
            // unread records there would never be read by this bridge.
            let skipped: Vec<&Standing> = old
                .iter()
                .filter(|o| o.unread() > 0 && survey.start == Start::Latest)
                .filter(|o| {
                    fresh
                        .iter()
                        .any(|n| n.topic == o.topic && n.partition == o.partition)
                })
                .collect();
            if !skipped.is_empty() {
                let count: u64 = skipped.iter().map(|s| s.unread()).sum();
                out.refusal = Some(format!(
                    "key `group_id`: changing it from `{old_group}` to `{group}` would skip {count} record(s): `{group}` has no committed offset on {} and would start at their end (start = \"latest\"), where `{old_group}` has not read them yet ({}). Nothing was changed and the records stay with `{old_group}`. To change the group, first give `{group}` committed offsets (e.g. kafka-consumer-groups --reset-offsets --group {group} --to-offset, with the offsets above), or let `{old_group}` catch up, or switch with start = \"earliest\" (the new group reads the topics from their oldest record, with the same event ids)",
                    names(&skipped),
                    positions(&skipped)
                ));
                return out;
            }
            let kept: Vec<&Standing> = old.iter().filter(|o| o.committed.is_some()).collect();
            let unread_elsewhere: u64 = old
                .iter()
                .filter(|o| !survey.topics.contains(&o.topic))
                .map(Standing::unread)
                .sum();
            let mut text = if kept.is_empty() {
                format!(
                    "key `group_id` changed from `{old_group}` to `{group}`: `{old_group}` has no committed offsets on literal topics; `{group}` reads from its own, "
                )
            } else {
                format!(
                    "key `group_id` changed from `{old_group}` to `{group}`: `{old_group}` keeps its committed offsets ({}); `{group}` reads from its own, ",
                    positions(&kept)
                )
            };
            if fresh.is_empty() {
                text.push_str("which it has on every partition");
            } else {
                text.push_str(&format!(
                    "and has none on {}: it starts there at the {start} offset (start = \"{start}\")",
                    names(&fresh)
                ));
                if survey.start == Start::Earliest {
                    text.push_str(&format!(
                        ", so records `{old_group}` bridged already are bridged again, with the same ids"
                    ));
                }
            }
            if unread_elsewhere > 0 {
                text.push_str(&format!(
                    "; {unread_elsewhere} record(s) unread by `{old_group}` on topics no longer read stay with it"
                ));
            }
            out.warnings.push(text);
        } else {
            let removed: Vec<&String> = last
                .topics
                .iter()
                .filter(|t| !survey.topics.contains(t))
                .collect();
            for topic in removed {
                let partitions: Vec<&Standing> = old.iter().filter(|s| &s.topic == topic).collect();
                if topic.starts_with('^') {
                    out.notes.push(format!(
                        "key `topics`: `{topic}` is no longer read; group `{group}` keeps its committed offsets on the topics it matched, and listing it again resumes from them"
                    ));
                    continue;
                }
                let unread: u64 = partitions.iter().map(|s| s.unread()).sum();
                let text = format!(
                    "key `topics`: `{topic}` is no longer read; group `{group}` keeps its committed offsets there ({}), and listing it again resumes from them; until then {unread} record(s) there are not bridged",
                    if partitions.is_empty() {
                        "none".to_owned()
                    } else {
                        positions(&partitions)
                    }
                );
                if unread > 0 {
                    out.warnings.push(text);
                } else {
                    out.notes.push(text);
                }
            }
            if last.start != survey.start {
                out.notes.push(format!(
                    "key `start` changed from \"{}\" to \"{start}\": group `{group}` goes on from its committed offsets; start applies only where it has none ({})",
                    last.start.label(),
                    if fresh.is_empty() {
                        "no partition".to_owned()
                    } else {
                        names(&fresh)
                    }
                ));
            }
        }
    }
    // Partitions the group has never committed on (a new group, a topic added); after
    // a change of group, those the old group did not read (the rest is told above).
    let fresh: Vec<&Standing> = match &survey.before {
        Some((_, old)) if group_changed => fresh
            .into_iter()
            .filter(|n| {
                !old.iter()
                    .any(|o| o.topic == n.topic && o.partition == n.partition)
            })
            .collect(),
        _ => fresh,
    };
    if !fresh.is_empty() {
        let held: u64 = fresh.iter().map(|s| s.held()).sum();
        match survey.start {
            Start::Latest if held > 0 => {
                let mut text = format!(
                    "group `{group}` has no committed offset on {}: it starts at their end (start = \"latest\"), so the {held} record(s) they hold now are not bridged",
                    names(&fresh)
                );
                if let Some((default, standings)) = &survey.default_group {
                    let unread: Vec<&Standing> =
                        standings.iter().filter(|s| s.unread() > 0).collect();
                    if !unread.is_empty() {
                        let count: u64 = unread.iter().map(|s| s.unread()).sum();
                        text.push_str(&format!(
                            "; the default group `{default}` has {count} unread record(s) on these topics ({}): if this bridge used it before `group_id` was set, they stay with it (set `group_id = \"{default}\"` to bridge them)",
                            positions(&unread)
                        ));
                    }
                }
                out.warnings.push(text);
            }
            Start::Latest => out.notes.push(format!(
                "group `{group}` has no committed offset on {}: it starts at their end (start = \"latest\"); they hold no records now",
                names(&fresh)
            )),
            Start::Earliest => out.notes.push(format!(
                "group `{group}` has no committed offset on {}: it starts at their oldest record (start = \"earliest\"): {held} record(s)",
                names(&fresh)
            )),
        }
    }
    out
}

/// Asks the brokers, before a reload restarts the bridge (or for `check --online`),
/// whether connecting with `spec` would skip records: only a change of `group_id` can,
/// and only what this process read before is known.
pub async fn verify_position(spec: &KafkaSpec, bridge: &str) -> Result<(), SourceError> {
    let Some(last) = last_read(bridge) else {
        return Ok(());
    };
    if last.group == spec.group_id(bridge) {
        return Ok(());
    }
    let spec = spec.clone();
    let bridge = bridge.to_owned();
    let assessed = tokio::task::spawn_blocking(move || {
        survey(&spec, &bridge, Some(last)).map(|survey| assess(&survey))
    })
    .await
    .map_err(|e| SourceError::Connect(e.to_string()))?
    .map_err(SourceError::Connect)?;
    match assessed.refusal {
        Some(refusal) => Err(SourceError::Refused(refusal)),
        None => Ok(()),
    }
}

/// Reports where the group starts and what an edit left behind, before subscribing;
/// refuses a change of `group_id` that would skip records. A survey that fails is
/// reported and changes nothing (the group reads from its committed offsets as always),
/// except after a change to a new group with `start = "latest"`, which then waits.
pub(super) async fn report_start(
    spec: &KafkaSpec,
    bridge: &str,
) -> Result<HashMap<(String, i32), i64>, SourceError> {
    let last = last_read(bridge);
    let group = spec.group_id(bridge);
    if let Some(last) = &last
        && (last.group != group || last.topics != spec.topics)
    {
        // The previous consumer commits as it closes: wait for it, so that what it
        // left behind is told right.
        let mut closed = last.closed.clone();
        let _ = tokio::time::timeout(CLOSE_WAIT, closed.wait_for(|closed| *closed)).await;
    }
    // A new group starting at the end is the one edit that can skip records: without
    // the survey it cannot be told safe, so it waits (retried) instead of going ahead.
    let group_changed_to_latest =
        spec.start == Start::Latest && last.as_ref().is_some_and(|last| last.group != group);
    let surveyed = {
        let spec = spec.clone();
        let bridge = bridge.to_owned();
        tokio::task::spawn_blocking(move || survey(&spec, &bridge, last))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    };
    let survey = match surveyed {
        Ok(survey) => survey,
        Err(error) if group_changed_to_latest => {
            return Err(SourceError::Connect(format!(
                "key `group_id`: cannot tell whether the new group `{group}` would skip records the previous group has not read ({error}); trying again"
            )));
        }
        Err(error) => {
            tracing::warn!(%group, %error, "cannot tell where the consumer group starts on its topics; it reads from its committed offsets, and from `start` where it has none");
            return Ok(HashMap::new());
        }
    };
    let assessment = assess(&survey);
    if let Some(refusal) = assessment.refusal {
        return Err(SourceError::Refused(refusal));
    }
    for warning in &assessment.warnings {
        tracing::warn!(%group, "{warning}");
    }
    for note in &assessment.notes {
        tracing::info!(%group, "{note}");
    }
    let pins = match spec.start {
        Start::Latest => survey
            .now
            .iter()
            .filter(|s| s.committed.is_none())
            .map(|s| ((s.topic.clone(), s.partition), s.end))
            .collect(),
        Start::Earliest => HashMap::new(),
    };
    Ok(pins)
}
