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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use super::common::in_order::{InOrder, Ticket};
use super::common::context::{ConnectContext, Source, SourceMetrics};
use crate::config::TlsOptions;
use crate::config::fields;
use crate::message::{Acker, Incoming, Metadata, SourceError};

/// Where librdkafka starts a group that has no committed offset for a partition (also
/// where it goes when the committed offset is no longer in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// The oldest record still in the log.
    #[default]
    Earliest,
    /// Only records produced after the group started.
    Latest,
}

impl Start {
    fn label(self) -> &'static str {
        match self {
            Start::Earliest => "earliest",
            Start::Latest => "latest",
        }
    }
}

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Security {
    fn protocol(self) -> &'static str {
        match self {
            Security::Plaintext => "plaintext",
            Security::Ssl => "ssl",
            Security::SaslPlaintext => "sasl_plaintext",
            Security::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Security::Ssl | Security::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Security::SaslPlaintext | Security::SaslSsl)
    }
}

/// `sasl.mechanisms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// Bootstrap servers, `host:port` each: a list, or one comma-separated text.
    #[serde(default = "default_brokers", deserialize_with = "brokers")]
    pub brokers: Vec<String>,
    /// Topics to read; an entry starting with `^` is a regular expression matching topic
    /// names (librdkafka's regex subscription).
    pub topics: Vec<String>,
    /// The consumer group; default `broker-bridge-<bridge name>`. Replicas with the same
    /// group split the partitions between them.
    pub group_id: Option<String>,
    /// Where a group without a committed offset starts: `earliest` (default) or `latest`.
    #[serde(default)]
    pub start: Start,
    /// Names the cluster in the CloudEvent source `kafka://<cluster>/<topic>`; default
    /// the first broker's `host:port`.
    pub cluster: Option<String>,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security: Security,
    /// With `sasl_*`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name and password, with `sasl_*`.
    pub user: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<crate::secret::Secret>,
    /// TLS files, with `ssl` and `sasl_ssl`.
    pub tls: Option<TlsOptions>,
    /// More librdkafka properties, passed through as text, e.g.
    /// `{ "session.timeout.ms" = 10000 }`. Nested tables join their keys with dots.
    #[serde(default, deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
}

fn default_brokers() -> Vec<String> {
    vec!["127.0.0.1:9092".into()]
}

fn brokers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        List(Vec<String>),
    }
    let list = match Given::deserialize(deserializer)? {
        Given::Text(text) => text.split(',').map(str::to_owned).collect(),
        Given::List(list) => list,
    };
    Ok(list.into_iter().map(|b| b.trim().to_owned()).collect())
}

/// A table of librdkafka properties as text; nested tables (`fetch.min.bytes = 1` in
/// TOML is `fetch = { min = { bytes = 1 } }`) join their keys with dots.
fn properties<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    fn flatten(
        prefix: &str,
        table: Map<String, Value>,
        out: &mut BTreeMap<String, String>,
    ) -> Result<(), String> {
        for (key, value) in table {
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            let text = match value {
                Value::String(text) => text,
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                Value::Object(nested) => {
                    flatten(&name, nested, out)?;
                    continue;
                }
                _ => {
                    return Err(format!(
                        "`{name}` must be text, a number or true/false (librdkafka properties are text)"
                    ));
                }
            };
            if out.insert(name.clone(), text).is_some() {
                return Err(format!("`{name}` is given twice"));
            }
        }
        Ok(())
    }
    let table = Map::<String, Value>::deserialize(deserializer)?;
    let mut out = BTreeMap::new();
    flatten("", table, &mut out).map_err(serde::de::Error::custom)?;
    Ok(out)
}

/// librdkafka properties broker-bridge sets itself, and the key that controls each.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("group.id", "use `group_id`"),
    ("auto.offset.reset", "use `start`"),
    ("security.protocol", "use `security`"),
    ("sasl.mechanism", "use `sasl_mechanism`"),
    ("sasl.mechanisms", "use `sasl_mechanism`"),
    ("sasl.username", "use `user`"),
    ("sasl.password", "use `password` or `password_file`"),
    ("ssl.ca.location", "use `tls.ca_file`"),
    ("ssl.certificate.location", "use `tls.cert_file`"),
    ("ssl.key.location", "use `tls.key_file`"),
    (
        "enable.auto.offset.store",
        "broker-bridge stores offsets itself, only for confirmed records",
    ),
    (
        "enable.auto.commit",
        "broker-bridge relies on librdkafka committing the offsets it stored",
    ),
    (
        "auto.commit.enable",
        "broker-bridge relies on librdkafka committing the offsets it stored",
    ),
    (
        "enable.partition.eof",
        "broker-bridge reads partitions without end-of-partition events",
    ),
    (
        "statistics.interval.ms",
        "broker-bridge reads the lag from statistics every second",
    ),
];

/// Every key of the kind (the `[bridge.tls]` keys are listed by the caller).
fn accepted_keys() -> Vec<&'static str> {
    fields::names::<KafkaSpec>().to_vec()
}

/// `kind = "kafka"`: a consumer group.
pub struct Kafka;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Kafka {
    const NAME: &'static str = "kafka";
    type Spec = KafkaSpec;

    fn parse(table: Map<String, Value>) -> Result<KafkaSpec, String> {
        KafkaSpec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &KafkaSpec) -> String {
        spec.describe()
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

/// Largest Kafka topic name.
const MAX_TOPIC_LENGTH: usize = 249;

/// How often librdkafka reports statistics (the lag).
const STATISTICS_INTERVAL_MS: &str = "1000";
/// How often stored offsets are committed unless `properties` say otherwise.
const DEFAULT_COMMIT_INTERVAL_MS: &str = "1000";
/// Bound on checking the brokers and topics when connecting.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Records read from partitions and not yet taken by the bridge.
const RECORD_BUFFER: usize = 64;

impl KafkaSpec {
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
        fields::reject_unknown(&table, fields::names::<KafkaSpec>(), "kind `kafka`")?;
        let spec: KafkaSpec = fields::parse(Value::Object(table))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses settings that are wrong, that would be silently ignored, or that would
    /// take the offsets out of broker-bridge's hands.
    fn validate(&self) -> Result<(), String> {
        if self.brokers.is_empty() {
            return Err("key `brokers`: give at least one broker, e.g. \"kafka:9092\"".into());
        }
        for broker in &self.brokers {
            check_broker(broker).map_err(|e| format!("key `brokers`: `{broker}` {e}"))?;
        }
        if self.topics.is_empty() {
            return Err(
                "key `topics`: give at least one topic (or a regular expression starting with ^)"
                    .into(),
            );
        }
        for (index, topic) in self.topics.iter().enumerate() {
            check_topic(topic).map_err(|e| format!("key `topics`: `{topic}` {e}"))?;
            if self.topics[..index].contains(topic) {
                return Err(format!("key `topics`: `{topic}` is listed twice"));
            }
        }
        if let Some(group) = &self.group_id
            && group.trim().is_empty()
        {
            return Err("key `group_id`: must not be empty".into());
        }
        if let Some(cluster) = &self.cluster
            && (cluster.is_empty()
                || !cluster.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '.' | '-' | '_' | '~' | ':' | '[' | ']')
                }))
        {
            return Err(
                "key `cluster`: must be a non-empty name of letters, digits and . - _ ~ : [ ] (it is the host part of kafka://<cluster>/<topic>)"
                    .into(),
            );
        }
        if self.security.sasl() {
            let protocol = self.security.protocol();
            if self.sasl_mechanism.is_none() {
                return Err(format!(
                    "key `sasl_mechanism`: security = \"{protocol}\" needs one: \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\""
                ));
            }
            if self.user.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "key `user`: security = \"{protocol}\" needs a user name"
                ));
            }
            if self.password.is_none() {
                return Err(format!(
                    "key `password`: security = \"{protocol}\" needs a password (or password_file)"
                ));
            }
        } else {
            let set = [
                ("sasl_mechanism", self.sasl_mechanism.is_some()),
                ("user", self.user.is_some()),
                ("password", self.password.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "key `{key}`: only used with security = \"sasl_plaintext\" or \"sasl_ssl\""
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if !self.security.tls() {
                return Err(if tls.required {
                    format!(
                        "key `tls.required`: security = \"{}\" is not TLS; use \"ssl\" or \"sasl_ssl\"",
                        self.security.protocol()
                    )
                } else {
                    format!(
                        "key `tls`: TLS settings need security = \"ssl\" or \"sasl_ssl\" (it is \"{}\")",
                        self.security.protocol()
                    )
                });
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("key `tls`: `cert_file` and `key_file` go together".into());
            }
        }
        for name in self.properties.keys() {
            if let Some((_, instead)) = OWNED_PROPERTIES.iter().find(|(owned, _)| owned == name) {
                return Err(format!(
                    "key `properties`: `{name}` is set by broker-bridge; {instead}"
                ));
            }
        }
        // librdkafka checks names and values now, so `check` catches a typo.
        self.client_config("check")
            .create_native_config()
            .map_err(|e| format!("key `properties`: librdkafka refuses them: {e}"))?;
        Ok(())
    }

    /// The consumer group of the bridge.
    pub fn group_id(&self, bridge: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("broker-bridge-{bridge}"))
    }

    /// The host of the CloudEvent source, `kafka://<cluster>/<topic>`.
    fn cluster(&self) -> String {
        self.cluster
            .clone()
            .unwrap_or_else(|| self.brokers.first().cloned().unwrap_or_default())
    }

    /// Topics named literally (not regular expressions).
    fn literal_topics(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|t| !t.starts_with('^'))
            .cloned()
            .collect()
    }

    /// The whole librdkafka configuration of the bridge's consumer.
    fn client_config(&self, bridge: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("client.id", format!("broker-bridge-{bridge}"))
            .set("auto.commit.interval.ms", DEFAULT_COMMIT_INTERVAL_MS);
        // The user's properties first, so that what broker-bridge owns is set last (the
        // owned ones are refused when the config is loaded anyway).
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
            .set("bootstrap.servers", self.brokers.join(","))
            .set("group.id", self.group_id(bridge))
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", self.start.label())
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .set("security.protocol", self.security.protocol())
            .set_log_level(RDKafkaLogLevel::Info);
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanisms", mechanism.name());
        }
        if let Some(user) = &self.user {
            config.set("sasl.username", user);
        }
        if let Some(password) = &self.password {
            config.set("sasl.password", password.expose());
        }
        if let Some(tls) = &self.tls {
            let path = |p: &std::path::PathBuf| p.to_string_lossy().into_owned();
            if let Some(ca) = &tls.ca_file {
                config.set("ssl.ca.location", path(ca));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                config
                    .set("ssl.certificate.location", path(cert))
                    .set("ssl.key.location", path(key));
            }
        }
        config
    }

    /// Whether the lag counts to the last stable offset (librdkafka's default
    /// `isolation.level = read_committed`) or to the high watermark.
    fn read_committed(&self) -> bool {
        self.properties
            .get("isolation.level")
            .is_none_or(|level| level != "read_uncommitted")
    }

    pub fn describe(&self) -> String {
        let topics: Vec<String> = self.topics.iter().map(|t| format!("`{t}`")).collect();
        let group = match &self.group_id {
            Some(group) => format!("group `{group}`"),
            None => "group `broker-bridge-<bridge name>`".into(),
        };
        let mut details = vec![group, format!("new groups start at {}", self.start.label())];
        match (self.security, self.sasl_mechanism) {
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
            self.brokers.join(","),
            details.join(", ")
        )
    }
}

fn check_broker(broker: &str) -> Result<(), String> {
    if broker.is_empty() {
        return Err("is empty".into());
    }
    if broker.contains("://") {
        return Err("has a scheme; give host:port and choose the protocol with `security`".into());
    }
    let (host, port) = match broker.strip_prefix('[') {
        Some(v6) => {
            let (address, after) = v6
                .split_once(']')
                .ok_or("has an IPv6 address not closed by `]`")?;
            (address, after.strip_prefix(':'))
        }
        None => match broker.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (broker, None),
        },
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err("is not host:port".into());
    }
    if let Some(port) = port
        && port.parse::<u16>().ok().filter(|p| *p != 0).is_none()
    {
        return Err(format!("has `{port}`, which is not a port number"));
    }
    Ok(())
}

fn check_topic(topic: &str) -> Result<(), String> {
    if let Some(pattern) = topic.strip_prefix('^') {
        if pattern.is_empty() {
            return Err("is an empty regular expression".into());
        }
        return Ok(());
    }
    if topic.is_empty() {
        return Err("is empty".into());
    }
    if topic.len() > MAX_TOPIC_LENGTH
        || topic == "."
        || topic == ".."
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "is not a Kafka topic name (up to {MAX_TOPIC_LENGTH} of a-z A-Z 0-9 . _ -); start it with ^ for a regular expression"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The partitions assigned to the consumer: generations, trackers, readers and lag.

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
struct Partitions {
    by_topic: HashMap<String, HashMap<i32, PartitionState>>,
    next_generation: u64,
    /// Readers of revoked partitions, stopped but perhaps not yet finished.
    retired: Vec<JoinHandle<()>>,
    /// With `start = "latest"`: partitions the group had no committed offset on when
    /// the source connected, and their end then, to store as the group's start once
    /// they are assigned (see `pin_starts`).
    pins: HashMap<(String, i32), i64>,
}

impl Partitions {
    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionState> {
        self.by_topic.get_mut(topic)?.get_mut(&partition)
    }

    /// A new assignment of a partition; returns its generation.
    fn assign(&mut self, topic: &str, partition: i32) -> u64 {
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

    fn set_reader(&mut self, topic: &str, partition: i32, generation: u64, reader: JoinHandle<()>) {
        match self.get_mut(topic, partition) {
            Some(state) if state.generation == generation => state.reader = Some(reader),
            _ => {
                reader.abort();
                self.retired.push(reader);
            }
        }
    }

    /// Forgets a partition: its reader stops, its handles store nothing any more.
    fn revoke(&mut self, topic: &str, partition: i32) -> bool {
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
    fn take(
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
    fn confirm(
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
    fn pins_of(&self, list: &TopicPartitionList) -> Vec<(String, i32, u64, i64)> {
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
    fn may_pin(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.by_topic
            .get(topic)
            .and_then(|p| p.get(&partition))
            .is_some_and(|state| state.generation == generation && !state.stored)
    }

    fn pinned(&mut self, topic: &str, partition: i32) {
        self.pins.remove(&(topic.to_owned(), partition));
        if let Some(state) = self.get_mut(topic, partition) {
            state.stored = true;
        }
    }

    fn is_current(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.by_topic
            .get(topic)
            .and_then(|p| p.get(&partition))
            .is_some_and(|state| state.generation == generation)
    }

    /// Records waiting to be bridged over all assigned partitions; `None` while the
    /// statistics have not told the end of any of them.
    fn lag(&self) -> Option<u64> {
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
    fn statistics(&mut self, stats: &Statistics, read_committed: bool, start: Start) {
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
    fn drain_readers(&mut self) -> Vec<JoinHandle<()>> {
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
struct Statistics {
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

// ---------------------------------------------------------------------------------------
// The consumer, its context and the tasks around it.

type KafkaConsumer = StreamConsumer<KafkaContext>;
type PartitionQueue = StreamPartitionQueue<KafkaContext>;

/// What the source, its handles, its tasks and the consumer's callbacks share.
struct Shared {
    bridge: String,
    partitions: Mutex<Partitions>,
    /// Set right after the consumer is made; weak, since the consumer owns the context
    /// that owns this.
    consumer: OnceLock<Weak<KafkaConsumer>>,
    /// For the readers spawned from rebalance callbacks.
    runtime: tokio::runtime::Handle,
    records: mpsc::Sender<Record>,
    /// Why the source must reconnect, once something says so.
    failed: watch::Sender<Option<String>>,
    /// The bridge's gauge, set on every change while the source is in use (after a
    /// reconnect, the old consumer's statistics must not overwrite the new one's).
    gauge: SourceMetrics,
    detached: AtomicBool,
    read_committed: bool,
    start: Start,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.partitions.lock().expect("partitions lock")
    }

    fn fail(&self, reason: String) {
        let quiet = self.quiet();
        self.failed.send_if_modified(|failed| {
            if failed.is_some() {
                return false;
            }
            if !quiet {
                tracing::warn!(bridge = %self.bridge, %reason, "the Kafka source must reconnect");
            }
            *failed = Some(reason);
            true
        });
    }

    /// Whether this consumer is on its way out (failed, or its source given up): its
    /// further errors are only noise.
    fn quiet(&self) -> bool {
        self.detached.load(Relaxed) || self.failed.borrow().is_some()
    }

    fn update_lag(&self, partitions: &Partitions) {
        if let Some(lag) = partitions.lag()
            && !self.detached.load(Relaxed)
        {
            self.gauge.set_lag(lag);
        }
    }

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

    fn statistics(&self, json: &[u8]) {
        let stats: Statistics = match serde_json::from_slice(json) {
            Ok(stats) => stats,
            Err(error) => {
                tracing::debug!(bridge = %self.bridge, %error, "unreadable librdkafka statistics");
                return;
            }
        };
        let mut partitions = self.lock();
        partitions.statistics(&stats, self.read_committed, self.start);
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

/// The consumer's callbacks: rebalances, statistics, errors and librdkafka's log.
struct KafkaContext {
    shared: Arc<Shared>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let bridge = &self.shared.bridge;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(%bridge, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(%bridge, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(%bridge, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(%bridge, facility, "librdkafka: {message}"),
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.shared.statistics(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let bridge = &self.shared.bridge;
        let code = error.rdkafka_error_code();
        if self.shared.quiet() {
            tracing::debug!(%bridge, %error, reason, "Kafka client error");
        } else {
            tracing::warn!(%bridge, %error, reason, "Kafka client error");
        }
        let hint = match code {
            Some(RDKafkaErrorCode::Fatal) => Some("a fatal client error"),
            Some(RDKafkaErrorCode::AllBrokersDown) => Some("no broker is reachable"),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Some("authentication failed")
            }
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed,
            ) => Some("not authorized"),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Some("a subscribed topic does not exist")
            }
            _ => None,
        };
        if let Some(hint) = hint {
            self.shared.fail(format!("{hint}: {reason}"));
        }
    }
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

/// One record, owned, on its way from a partition's reader to `next`.
struct Record {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    generation: u64,
    payload: Bytes,
    key: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    /// Milliseconds since the epoch (create or log-append time).
    timestamp: Option<i64>,
}

impl Record {
    fn read(message: &BorrowedMessage<'_>, topic: &Arc<str>, generation: u64) -> Record {
        Record {
            topic: topic.clone(),
            partition: message.partition(),
            offset: message.offset(),
            generation,
            payload: message
                .payload()
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
            key: message.key().map(<[u8]>::to_vec),
            headers: message.headers().map(header_texts).unwrap_or_default(),
            timestamp: message.timestamp().to_millis(),
        }
    }
}

/// Header values as text. A header without a value is empty text; a value that is
/// not UTF-8 cannot be a text attribute or template input, so it is left out.
fn header_texts<H: Headers>(headers: &H) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|header| match header.value {
            None => Some((header.key.to_owned(), String::new())),
            Some(value) => std::str::from_utf8(value)
                .ok()
                .map(|text| (header.key.to_owned(), text.to_owned())),
        })
        .collect()
}

/// Moves one partition's records, in order, into the source's channel.
struct Reader {
    queue: PartitionQueue,
    topic: Arc<str>,
    partition: i32,
    generation: u64,
    records: mpsc::Sender<Record>,
}

impl Reader {
    async fn run(self) {
        loop {
            let record = match self.queue.recv().await {
                Ok(message) => Record::read(&message, &self.topic, self.generation),
                Err(error) => {
                    // Reported for the partition (an offset reset, a fetch error);
                    // librdkafka carries on by itself.
                    tracing::warn!(topic = %self.topic, partition = self.partition, %error, "Kafka reported a partition error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if self.records.send(record).await.is_err() {
                return; // the source is gone
            }
        }
    }
}

/// Polls the consumer's main queue (rebalances, statistics, errors) until the source
/// and every handle are gone, then closes the consumer off the runtime: closing leaves
/// the group, and commits the stored offsets.
async fn drive(
    consumer: Arc<KafkaConsumer>,
    shared: Arc<Shared>,
    closed: CancellationToken,
    consumer_closed: watch::Sender<bool>,
) {
    loop {
        tokio::select! {
            _ = closed.cancelled() => break,
            result = consumer.recv() => match result {
                Ok(message) => {
                    // Every assigned partition has its own queue; a record here was
                    // fetched outside it. Nothing of its partition may be stored past
                    // it any more, and a new connection reads it again.
                    let (topic, partition) = (message.topic().to_owned(), message.partition());
                    let offset = message.offset();
                    drop(message);
                    shared.lock().revoke(&topic, partition);
                    shared.fail(format!(
                        "record {topic}:{partition}:{offset} arrived outside its partition queue"
                    ));
                }
                Err(KafkaError::MessageConsumptionFatal(code)) => {
                    shared.fail(format!("fatal consumer error: {code}"));
                }
                // Logged (and judged) by the context's error callback.
                Err(_) => {}
            },
        }
    }
    let readers = shared.lock().drain_readers();
    for reader in readers {
        let _ = reader.await;
    }
    // The last reference: dropping it closes the consumer, which blocks.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    consumer_closed.send_replace(true);
    tracing::debug!("Kafka consumer closed");
}

/// Ends the connection once the source and every handle are dropped.
struct Link {
    _close: DropGuard,
}

struct KafkaSource {
    shared: Arc<Shared>,
    records: mpsc::Receiver<Record>,
    failed: watch::Receiver<Option<String>>,
    link: Arc<Link>,
    cluster: String,
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(KafkaError),
    #[error("no answer from the brokers {brokers} within {timeout:?}: {error}")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        error: KafkaError,
    },
    #[error(
        "topic `{0}` does not exist on {1} (broker-bridge does not create topics; create it, or fix `topics`)"
    )]
    NoTopic(String, String),
    #[error("topic `{topic}`: {error}")]
    Topic { topic: String, error: String },
    #[error("cannot subscribe: {0}")]
    Subscribe(KafkaError),
}

impl From<SetupError> for SourceError {
    fn from(error: SetupError) -> Self {
        SourceError::Connect(error.to_string())
    }
}

/// Makes the consumer, checks the brokers and topics, subscribes and starts the driver.
pub async fn connect(
    spec: &KafkaSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let (records_tx, records_rx) = mpsc::channel(RECORD_BUFFER);
    let (failed_tx, failed_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        bridge: context.bridge.clone(),
        partitions: Mutex::default(),
        consumer: OnceLock::new(),
        runtime: tokio::runtime::Handle::current(),
        records: records_tx,
        failed: failed_tx,
        gauge: context.metrics.clone(),
        detached: AtomicBool::new(false),
        read_committed: spec.read_committed(),
        start: spec.start,
    });
    let consumer: KafkaConsumer = spec
        .client_config(&context.bridge)
        .create_with_context(KafkaContext {
            shared: shared.clone(),
        })
        .map_err(SetupError::Create)?;
    let consumer = Arc::new(consumer);
    let _ = shared.consumer.set(Arc::downgrade(&consumer));

    let brokers = spec.brokers.join(",");
    let check = {
        let consumer = consumer.clone();
        let topics = spec.literal_topics();
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || check_topics(&consumer, &topics, &brokers))
    };
    let checked = check.await.unwrap_or_else(|e| {
        Err(SetupError::Topic {
            topic: String::new(),
            error: e.to_string(),
        })
    });
    let subscribed = match checked {
        Err(error) => Err(error.into()),
        Ok(()) => match report_start(spec, &context.bridge).await {
            Err(refusal) => Err(refusal),
            Ok(pins) => {
                shared.lock().pins = pins;
                let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&topics)
                    .map_err(|e| SetupError::Subscribe(e).into())
            }
        },
    };
    if let Err(error) = subscribed {
        shared.detached.store(true, Relaxed);
        // Closing blocks: not on the runtime.
        tokio::task::spawn_blocking(move || drop(consumer));
        return Err(error);
    }
    tracing::info!(
        group = %spec.group_id(&context.bridge),
        topics = ?spec.topics,
        %brokers,
        "subscribed"
    );
    let (closed_tx, closed_rx) = watch::channel(false);
    LAST_READ.lock().expect("last read lock").insert(
        context.bridge.clone(),
        LastRead {
            group: spec.group_id(&context.bridge),
            topics: spec.topics.clone(),
            start: spec.start,
            closed: closed_rx,
        },
    );

    let closed = CancellationToken::new();
    tokio::spawn(drive(consumer, shared.clone(), closed.clone(), closed_tx).in_current_span());
    Ok(Box::new(KafkaSource {
        shared,
        records: records_rx,
        failed: failed_rx,
        link: Arc::new(Link {
            _close: closed.drop_guard(),
        }),
        cluster: spec.cluster(),
    }))
}

/// The brokers answer, and every topic named literally exists.
fn check_topics(
    consumer: &KafkaConsumer,
    topics: &[String],
    brokers: &str,
) -> Result<(), SetupError> {
    let unreachable = |error| SetupError::Unreachable {
        brokers: brokers.to_owned(),
        timeout: METADATA_TIMEOUT,
        error,
    };
    if topics.is_empty() {
        consumer
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(unreachable)?;
        return Ok(());
    }
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(unreachable)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(SetupError::NoTopic(topic.clone(), brokers.to_owned()));
        };
        match found.error() {
            None => {}
            Some(code) => {
                let code = RDKafkaErrorCode::from(code);
                return Err(match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                        SetupError::NoTopic(topic.clone(), brokers.to_owned())
                    }
                    other => SetupError::Topic {
                        topic: topic.clone(),
                        error: other.to_string(),
                    },
                });
            }
        }
        if found.partitions().is_empty() {
            return Err(SetupError::NoTopic(topic.clone(), brokers.to_owned()));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Edits of `group_id`, `topics` and `start`: where the group starts, and what an edit
// leaves behind.
//
// Kafka keeps a group's position per partition (its committed offset) until the group
// commits again; broker-bridge never writes one except for the confirmed prefix. So an
// edit moves no position; what it can do is read from another one:
//
// - a topic added is read from the group's committed offsets there, or from `start`
//   where it has none;
// - a topic removed keeps the group's committed offsets, so listing it again resumes
//   from them; its unread records wait there;
// - `start` matters only where the group has no committed offset;
// - a new `group_id` has offsets of its own (usually none), so it starts at `start`,
//   and the old group keeps its offsets and its unread records.
//
// Connecting reports where the group starts on every partition without a committed
// offset. To report what an edit leaves behind, the source remembers, per bridge, what
// its last connection in this process read (`LAST_READ`). A restart begins with nothing
// there (broker-bridge keeps no Kafka state): it cannot name a group used before, except
// the default group, which it checks when the bridge names another one.

/// What the last connection of each bridge in this process read.
static LAST_READ: Mutex<BTreeMap<String, LastRead>> = Mutex::new(BTreeMap::new());

/// How long a connection waits for the consumer of the bridge's previous connection to
/// close (and commit) before it reports what that one left behind.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct LastRead {
    group: String,
    topics: Vec<String>,
    start: Start,
    /// Becomes true once that connection's consumer has closed: its last stored offsets
    /// are committed.
    closed: watch::Receiver<bool>,
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
struct Standing {
    topic: String,
    partition: i32,
    /// The group's committed offset (the next record it reads); `None` where it has none.
    committed: Option<i64>,
    /// The oldest offset still in the log.
    low: i64,
    /// The end of what a consumer of this isolation level can read: the high
    /// watermark, or the last stable offset under `read_committed`.
    end: i64,
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
struct Survey {
    group: String,
    start: Start,
    topics: Vec<String>,
    /// The group on the literal topics it reads now.
    now: Vec<Standing>,
    /// What the bridge's last connection in this process read, if it read something
    /// else, with where that group stands on those literal topics.
    before: Option<(LastRead, Vec<Standing>)>,
    /// The default group `broker-bridge-<bridge>` on the literal topics, when the bridge
    /// names another group and nothing tells what it read before (a restart).
    default_group: Option<(String, Vec<Standing>)>,
}

/// What connecting reports, or refuses.
#[derive(Debug, Default, PartialEq)]
struct Assessment {
    /// Connecting would skip records the bridge has not read (a new group starting at
    /// the end of partitions where the old group has unread records).
    refusal: Option<String>,
    warnings: Vec<String>,
    notes: Vec<String>,
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
fn assess(survey: &Survey) -> Assessment {
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
async fn report_start(
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

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        loop {
            let record = tokio::select! {
                // A failure wins over waiting records: they are not stored, so they
                // are read again after the reconnect.
                biased;
                reason = self.failed.wait_for(Option::is_some) => {
                    let reason = reason
                        .map(|r| r.clone().unwrap_or_default())
                        .unwrap_or_else(|_| "the consumer is gone".into());
                    return Err(SourceError::Subscription(reason));
                }
                record = self.records.recv() => record.ok_or_else(|| {
                    SourceError::Subscription("the partition readers stopped".into())
                })?,
            };
            let ticket = {
                let mut partitions = self.shared.lock();
                let ticket = partitions.take(
                    &record.topic,
                    record.partition,
                    record.generation,
                    record.offset,
                );
                if ticket.is_some() {
                    self.shared.update_lag(&partitions);
                }
                ticket
            };
            // `None`: the partition was revoked since the record was read; its owner
            // reads it again.
            if let Some(ticket) = ticket {
                return Ok(self.incoming(record, ticket));
            }
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.shared.detached.store(true, Relaxed);
    }
}

impl KafkaSource {
    fn incoming(&self, record: Record, ticket: Ticket) -> Incoming {
        let meta = metadata(&record, &self.cluster, Utc::now());
        Incoming {
            payload: record.payload,
            meta,
            ack: Box::new(KafkaAck {
                shared: self.shared.clone(),
                topic: record.topic,
                partition: record.partition,
                generation: record.generation,
                offset: record.offset,
                ticket,
                done: false,
                _link: self.link.clone(),
            }),
        }
    }
}

/// The CloudEvent side of a record: id, subject, source, time, headers, partition key.
fn metadata(record: &Record, cluster: &str, received: DateTime<Utc>) -> Metadata {
    let topic = &*record.topic;
    let content_type = crate::message::find_header(&record.headers, "content-type")
        .filter(|value| !value.is_empty())
        .map(str::to_owned);
    let extensions = match &record.key {
        Some(key) if !key.is_empty() => vec![("partitionkey".to_owned(), key_text(key))],
        _ => Vec::new(),
    };
    Metadata {
        subject: Some(topic.to_owned()),
        headers: record.headers.clone(),
        content_type,
        time: record
            .timestamp
            .and_then(|millis| Utc.timestamp_millis_opt(millis).single()),
        id: Some(format!("{topic}:{}:{}", record.partition, record.offset)),
        source_uri: format!("kafka://{cluster}/{topic}"),
        extensions,
        received,
        default_type: None,
        no_data: false,
    }
}

/// The record key as the `partitionkey` extension, which is text: UTF-8 keys as they
/// are, other keys in base64.
fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_owned(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(key),
    }
}

/// Confirms one record and stores the offset after the confirmed prefix of its
/// partition.
struct KafkaAck {
    shared: Arc<Shared>,
    topic: Arc<str>,
    partition: i32,
    generation: u64,
    offset: i64,
    ticket: Ticket,
    done: bool,
    _link: Arc<Link>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<KafkaSpec, String> {
        KafkaSpec::parse(value.as_object().unwrap().clone())
    }

    #[test]
    fn defaults_read_a_local_broker_from_the_earliest_offset() {
        let spec = parse(serde_json::json!({"topics": ["orders", "^audit-.*"]})).unwrap();
        assert_eq!(spec.brokers, vec!["127.0.0.1:9092"]);
        assert_eq!(spec.start, Start::Earliest);
        assert_eq!(spec.security, Security::Plaintext);
        assert_eq!(spec.group_id("orders"), "broker-bridge-orders");
        assert_eq!(spec.cluster(), "127.0.0.1:9092");
        assert_eq!(spec.literal_topics(), vec!["orders"]);
        assert!(spec.read_committed());
        let config = spec.client_config("orders");
        for (name, value) in [
            ("bootstrap.servers", "127.0.0.1:9092"),
            ("group.id", "broker-bridge-orders"),
            ("enable.auto.offset.store", "false"),
            ("enable.auto.commit", "true"),
            ("auto.offset.reset", "earliest"),
            ("auto.commit.interval.ms", "1000"),
            ("statistics.interval.ms", "1000"),
            ("security.protocol", "plaintext"),
            ("client.id", "broker-bridge-orders"),
        ] {
            assert_eq!(config.get(name), Some(value), "{name}");
        }
        assert_eq!(config.get("sasl.username"), None);
    }

    #[test]
    fn security_tls_and_properties_become_librdkafka_settings() {
        let spec = parse(serde_json::json!({
            "brokers": "k1:9093, k2:9093",
            "topics": ["orders"],
            "group_id": "shop",
            "start": "latest",
            "cluster": "prod",
            "security": "sasl_ssl",
            "sasl_mechanism": "SCRAM-SHA-512",
            "user": "bridge",
            "password": "s3cret",
            "tls": {"ca_file": "/etc/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
            "properties": {
                "session.timeout.ms": 10000,
                "fetch": {"wait": {"max": {"ms": "50"}}},
                "check.crcs": true,
                "isolation.level": "read_uncommitted",
                "auto.commit.interval.ms": 250,
            },
        }))
        .unwrap();
        assert_eq!(spec.brokers, vec!["k1:9093", "k2:9093"]);
        assert_eq!(spec.cluster(), "prod");
        assert!(!spec.read_committed());
        let config = spec.client_config("b");
        for (name, value) in [
            ("bootstrap.servers", "k1:9093,k2:9093"),
            ("group.id", "shop"),
            ("auto.offset.reset", "latest"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "bridge"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("ssl.certificate.location", "/c.pem"),
            ("ssl.key.location", "/k.pem"),
            ("session.timeout.ms", "10000"),
            ("fetch.wait.max.ms", "50"),
            ("check.crcs", "true"),
            ("auto.commit.interval.ms", "250"),
        ] {
            assert_eq!(config.get(name), Some(value), "{name}");
        }
        assert!(
            !serde_json::to_string(&spec).unwrap().contains("s3cret"),
            "the password is not shown"
        );
        let plain = parse(serde_json::json!({
            "topics": ["t"], "security": "sasl_plaintext", "sasl_mechanism": "PLAIN",
            "user": "u", "password": "p",
        }))
        .unwrap();
        assert_eq!(
            plain.client_config("b").get("sasl.mechanisms"),
            Some("PLAIN")
        );
    }

    #[test]
    fn wrong_or_ignored_settings_are_refused() {
        for (table, needle) in [
            (
                serde_json::json!({"topics": []}),
                "key `topics`: give at least one",
            ),
            (serde_json::json!({"topics": ["a", "a"]}), "twice"),
            (
                serde_json::json!({"topics": ["a b"]}),
                "not a Kafka topic name",
            ),
            (
                serde_json::json!({"topics": [".."]}),
                "not a Kafka topic name",
            ),
            (
                serde_json::json!({"topics": ["^"]}),
                "empty regular expression",
            ),
            (
                serde_json::json!({"topics": ["a"], "brokers": []}),
                "key `brokers`",
            ),
            (
                serde_json::json!({"topics": ["a"], "brokers": "kafka://h:9092"}),
                "scheme",
            ),
            (
                serde_json::json!({"topics": ["a"], "brokers": "h:0"}),
                "port",
            ),
            (
                serde_json::json!({"topics": ["a"], "brokers": "h:x"}),
                "port",
            ),
            (
                serde_json::json!({"topics": ["a"], "brokers": "a,,b"}),
                "is empty",
            ),
            (
                serde_json::json!({"topics": ["a"], "group_id": ""}),
                "key `group_id`",
            ),
            (
                serde_json::json!({"topics": ["a"], "cluster": "a/b"}),
                "key `cluster`",
            ),
            (
                serde_json::json!({"topics": ["a"], "start": "oldest"}),
                "key `start`",
            ),
            (
                serde_json::json!({"topics": ["a"], "security": "tls"}),
                "key `security`",
            ),
            (
                serde_json::json!({"topics": ["a"], "security": "sasl_ssl", "user": "u", "password": "p"}),
                "key `sasl_mechanism`",
            ),
            (
                serde_json::json!({"topics": ["a"], "security": "sasl_ssl", "sasl_mechanism": "PLAIN", "password": "p"}),
                "key `user`",
            ),
            (
                serde_json::json!({"topics": ["a"], "security": "sasl_plaintext", "sasl_mechanism": "PLAIN", "user": "u"}),
                "key `password`",
            ),
            (
                serde_json::json!({"topics": ["a"], "security": "sasl_ssl", "sasl_mechanism": "GSSAPI", "user": "u", "password": "p"}),
                "key `sasl_mechanism`",
            ),
            (
                serde_json::json!({"topics": ["a"], "user": "u", "password": "p"}),
                "key `user`: only used with security",
            ),
            (
                serde_json::json!({"topics": ["a"], "sasl_mechanism": "PLAIN"}),
                "key `sasl_mechanism`: only used",
            ),
            (
                serde_json::json!({"topics": ["a"], "tls": {"ca_file": "/ca.pem"}}),
                "TLS settings need security",
            ),
            (
                serde_json::json!({"topics": ["a"], "security": "sasl_plaintext", "sasl_mechanism": "PLAIN", "user": "u", "password": "p", "tls": {"required": true}}),
                "key `tls.required`",
            ),
            (
                serde_json::json!({"topics": ["a"], "security": "ssl", "tls": {"cert_file": "/c.pem"}}),
                "`cert_file` and `key_file`",
            ),
            (
                serde_json::json!({"topics": ["a"], "properties": {"group.id": "x"}}),
                "`group.id` is set by broker-bridge; use `group_id`",
            ),
            (
                serde_json::json!({"topics": ["a"], "properties": {"enable": {"auto": {"offset": {"store": true}}}}}),
                "`enable.auto.offset.store` is set by broker-bridge",
            ),
            (
                serde_json::json!({"topics": ["a"], "properties": {"enable.auto.commit": false}}),
                "`enable.auto.commit` is set by broker-bridge",
            ),
            (
                serde_json::json!({"topics": ["a"], "properties": {"sasl.password": "p"}}),
                "use `password`",
            ),
            (
                serde_json::json!({"topics": ["a"], "properties": {"no.such.property": "1"}}),
                "librdkafka refuses them",
            ),
            (
                serde_json::json!({"topics": ["a"], "properties": {"session.timeout.ms": "soon"}}),
                "librdkafka refuses them",
            ),
            (
                serde_json::json!({"topics": ["a"], "properties": {"x": [1]}}),
                "must be text, a number or true/false",
            ),
            (
                serde_json::json!({"topics": ["a"], "url": "x"}),
                "unknown key",
            ),
        ] {
            let err = parse(table.clone()).unwrap_err();
            assert!(err.contains(needle), "{table}: {err}");
        }
        // TLS without files (the system's CAs) is fine, and IPv6 brokers too.
        parse(serde_json::json!({"topics": ["a"], "security": "ssl", "tls": {"required": true}}))
            .unwrap();
        parse(serde_json::json!({"topics": ["a"], "brokers": ["[::1]:9092", "kafka"]})).unwrap();
    }

    #[test]
    fn describe_names_topics_group_start_security_and_guarantee() {
        let spec = parse(serde_json::json!({"topics": ["a", "^b.*"], "group_id": "g"})).unwrap();
        assert_eq!(
            spec.describe(),
            "topics `a`, `^b.*` on 127.0.0.1:9092 (group `g`, new groups start at earliest); \
             at-least-once: offsets stored only for the contiguous confirmed prefix of each \
             partition; event id `<topic>:<partition>:<offset>`, the same when a record is \
             read again"
        );
        let spec = parse(serde_json::json!({
            "topics": ["a"], "start": "latest", "security": "sasl_ssl",
            "sasl_mechanism": "SCRAM-SHA-256", "user": "u", "password": "p",
        }))
        .unwrap();
        let text = spec.describe();
        assert!(
            text.contains("(group `broker-bridge-<bridge name>`, new groups start at latest, SASL SCRAM-SHA-256 over TLS)"),
            "{text}"
        );
        assert!(!text.contains('p') || !text.contains("\"p\""));
    }

    #[test]
    fn confirms_out_of_order_store_only_the_contiguous_prefix() {
        let mut partitions = Partitions::default();
        let generation = partitions.assign("t", 0);
        let tickets: Vec<Ticket> = (10..15)
            .map(|offset| partitions.take("t", 0, generation, offset).unwrap())
            .collect();
        // 12 and 11 confirmed first: 10 is still out, nothing may be stored.
        assert_eq!(partitions.confirm("t", 0, generation, tickets[2]), None);
        assert_eq!(partitions.confirm("t", 0, generation, tickets[1]), None);
        // 10 confirmed: 10, 11, 12 are the prefix; store 13, the next to read.
        assert_eq!(partitions.confirm("t", 0, generation, tickets[0]), Some(13));
        assert_eq!(partitions.confirm("t", 0, generation, tickets[4]), None);
        assert_eq!(partitions.confirm("t", 0, generation, tickets[3]), Some(15));
        // A repeated confirm changes nothing.
        assert_eq!(partitions.confirm("t", 0, generation, tickets[3]), None);
    }

    #[test]
    fn an_unconfirmed_record_holds_back_every_later_offset() {
        let mut partitions = Partitions::default();
        let generation = partitions.assign("t", 3);
        // Offsets with gaps (compaction, transaction markers): order is what counts.
        let offsets = [5, 7, 8, 20, 21];
        let tickets: Vec<Ticket> = offsets
            .iter()
            .map(|offset| partitions.take("t", 3, generation, *offset).unwrap())
            .collect();
        assert_eq!(partitions.confirm("t", 3, generation, tickets[0]), Some(6));
        // 7 fails (never confirmed): however many later ones succeed, nothing moves.
        for ticket in &tickets[2..] {
            assert_eq!(partitions.confirm("t", 3, generation, *ticket), None);
        }
        // Other partitions are independent.
        let other = partitions.assign("t", 4);
        let ticket = partitions.take("t", 4, other, 0).unwrap();
        assert_eq!(partitions.confirm("t", 4, other, ticket), Some(1));
        // When 7 is confirmed after all, the whole run goes at once.
        assert_eq!(partitions.confirm("t", 3, generation, tickets[1]), Some(22));
    }

    #[test]
    fn a_new_generation_ignores_handles_and_records_of_the_old_one() {
        let mut partitions = Partitions::default();
        let old = partitions.assign("t", 0);
        let a = partitions.take("t", 0, old, 0).unwrap();
        let b = partitions.take("t", 0, old, 1).unwrap();
        assert!(partitions.is_current("t", 0, old));
        // Revoked: confirms of the old assignment store nothing, records read before
        // the revocation are not taken.
        assert!(partitions.revoke("t", 0));
        assert!(!partitions.is_current("t", 0, old));
        assert_eq!(partitions.confirm("t", 0, old, a), None);
        assert_eq!(partitions.take("t", 0, old, 2), None);
        // Assigned again (the group reads from the committed offset again): a fresh
        // tracker; the old handles still store nothing, even with matching tickets.
        let new = partitions.assign("t", 0);
        assert_ne!(new, old);
        assert_eq!(partitions.take("t", 0, old, 0), None);
        let fresh = partitions.take("t", 0, new, 0).unwrap();
        assert_eq!(partitions.confirm("t", 0, old, b), None);
        assert_eq!(partitions.confirm("t", 0, old, fresh), None);
        assert_eq!(partitions.confirm("t", 0, new, fresh), Some(1));
        // An assignment without a revocation first also starts a new generation.
        let newer = partitions.assign("t", 0);
        let ticket = partitions.take("t", 0, newer, 1).unwrap();
        assert_eq!(partitions.confirm("t", 0, new, ticket), None);
        assert_eq!(partitions.confirm("t", 0, newer, ticket), Some(2));
        assert!(!partitions.revoke("t", 9));
    }

    fn standing(topic: &str, partition: i32, committed: Option<i64>, end: i64) -> Standing {
        Standing {
            topic: topic.into(),
            partition,
            committed,
            low: 0,
            end,
        }
    }

    fn last(group: &str, topics: &[&str], start: Start) -> LastRead {
        LastRead {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            start,
            closed: watch::channel(true).1,
        }
    }

    fn survey(start: Start, topics: &[&str], now: Vec<Standing>) -> Survey {
        Survey {
            group: "g2".into(),
            start,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            now,
            before: None,
            default_group: None,
        }
    }

    #[test]
    fn a_new_group_starting_at_the_end_of_the_old_groups_unread_records_is_refused() {
        let mut edit = survey(
            Start::Latest,
            &["t"],
            vec![standing("t", 0, None, 30), standing("t", 1, None, 4)],
        );
        edit.before = Some((
            last("g1", &["t"], Start::Latest),
            vec![standing("t", 0, Some(10), 30), standing("t", 1, Some(4), 4)],
        ));
        let refusal = assess(&edit).refusal.expect("refused");
        for needle in [
            "key `group_id`: changing it from `g1` to `g2` would skip 20 record(s)",
            "`g2` has no committed offset on t[0]",
            "t[0] at 10 (20 unread)",
            "Nothing was changed",
            "start = \"earliest\"",
        ] {
            assert!(refusal.contains(needle), "{needle} in {refusal}");
        }
        assert!(
            !refusal.contains("t[1]"),
            "nothing unread on t[1]: {refusal}"
        );

        // The new group already has offsets there: it goes on from them; the old
        // group's place is reported, not refused.
        edit.now = vec![standing("t", 0, Some(25), 30), standing("t", 1, Some(4), 4)];
        let assessed = assess(&edit);
        assert_eq!(assessed.refusal, None);
        let warning = &assessed.warnings[0];
        assert!(
            warning.contains("key `group_id` changed from `g1` to `g2`")
                && warning.contains("t[0] at 10 (20 unread)")
                && warning.contains("which it has on every partition"),
            "{warning}"
        );
    }

    #[test]
    fn a_new_group_starting_at_the_earliest_offset_is_reported_not_refused() {
        let mut edit = survey(Start::Earliest, &["t"], vec![standing("t", 0, None, 30)]);
        edit.before = Some((
            last("g1", &["t", "gone"], Start::Earliest),
            vec![
                standing("gone", 0, Some(1), 8),
                standing("t", 0, Some(10), 30),
            ],
        ));
        let assessed = assess(&edit);
        assert_eq!(assessed.refusal, None);
        assert_eq!(assessed.warnings.len(), 1, "{assessed:?}");
        let warning = &assessed.warnings[0];
        for needle in [
            "key `group_id` changed from `g1` to `g2`",
            "`g1` keeps its committed offsets (gone[0] at 1 (7 unread), t[0] at 10 (20 unread))",
            "has none on t[0]: it starts there at the earliest offset",
            "bridged again, with the same ids",
            "7 record(s) unread by `g1` on topics no longer read stay with it",
        ] {
            assert!(warning.contains(needle), "{needle} in {warning}");
        }
    }

    #[test]
    fn a_removed_topic_keeps_its_offsets_and_is_reported_with_what_it_holds() {
        let mut edit = survey(Start::Earliest, &["a"], vec![standing("a", 0, Some(5), 5)]);
        edit.group = "g".into();
        edit.before = Some((
            last("g", &["a", "b", "^c.*"], Start::Earliest),
            vec![standing("b", 0, Some(3), 10), standing("b", 1, Some(2), 2)],
        ));
        let assessed = assess(&edit);
        assert_eq!(assessed.refusal, None);
        assert_eq!(
            assessed.warnings,
            vec![
                "key `topics`: `b` is no longer read; group `g` keeps its committed offsets there (b[0] at 3 (7 unread), b[1] at 2 (0 unread)), and listing it again resumes from them; until then 7 record(s) there are not bridged"
                    .to_owned()
            ]
        );
        assert_eq!(assessed.notes.len(), 1);
        assert!(assessed.notes[0].contains("`^c.*` is no longer read"));
    }

    #[test]
    fn start_applies_only_where_the_group_has_no_offset() {
        let mut edit = survey(
            Start::Latest,
            &["a", "b"],
            vec![standing("a", 0, Some(5), 9), standing("b", 0, None, 4)],
        );
        edit.group = "g".into();
        edit.before = Some((last("g", &["a"], Start::Earliest), Vec::new()));
        let assessed = assess(&edit);
        assert_eq!(assessed.refusal, None);
        assert_eq!(
            assessed.notes,
            vec![
                "key `start` changed from \"earliest\" to \"latest\": group `g` goes on from its committed offsets; start applies only where it has none (b[0])"
                    .to_owned()
            ]
        );
        // b was added: the group starts at its end, and says what it does not bridge.
        assert_eq!(
            assessed.warnings,
            vec![
                "group `g` has no committed offset on b[0]: it starts at their end (start = \"latest\"), so the 4 record(s) they hold now are not bridged"
                    .to_owned()
            ]
        );
        // From the earliest offset: a note with the number of records.
        let fresh = survey(Start::Earliest, &["b"], vec![standing("b", 0, None, 4)]);
        assert_eq!(
            assess(&fresh).notes,
            vec![
                "group `g2` has no committed offset on b[0]: it starts at their oldest record (start = \"earliest\"): 4 record(s)"
                    .to_owned()
            ]
        );
        // Nothing new, nothing edited: nothing to say.
        let steady = survey(Start::Latest, &["a"], vec![standing("a", 0, Some(5), 9)]);
        assert_eq!(assess(&steady), Assessment::default());
    }

    #[test]
    fn after_a_restart_the_default_groups_unread_records_are_named() {
        let mut edit = survey(Start::Latest, &["t"], vec![standing("t", 0, None, 12)]);
        edit.default_group = Some((
            "broker-bridge-b".into(),
            vec![standing("t", 0, Some(9), 12)],
        ));
        let warning = &assess(&edit).warnings[0];
        assert!(
            warning.contains("the 12 record(s) they hold now are not bridged")
                && warning.contains(
                    "the default group `broker-bridge-b` has 3 unread record(s) on these topics (t[0] at 9 (3 unread))"
                )
                && warning.contains("set `group_id = \"broker-bridge-b\"`"),
            "{warning}"
        );
    }

    #[test]
    fn a_start_is_pinned_only_before_anything_is_stored_in_the_assignment() {
        let mut partitions = Partitions::default();
        partitions.pins.insert(("t".into(), 0), 7);
        let generation = partitions.assign("t", 0);
        partitions.assign("t", 1);
        let mut list = TopicPartitionList::new();
        list.add_partition("t", 0);
        list.add_partition("t", 1);
        assert_eq!(
            partitions.pins_of(&list),
            vec![("t".to_owned(), 0, generation, 7)]
        );
        let ticket = partitions.take("t", 0, generation, 9).unwrap();
        assert!(
            partitions.may_pin("t", 0, generation),
            "taken is not stored"
        );
        // A confirmed record stored an offset past the pin: the pin is not stored.
        assert_eq!(partitions.confirm("t", 0, generation, ticket), Some(10));
        assert!(!partitions.may_pin("t", 0, generation));
        // A new assignment may pin (nothing stored in it yet); the old one may not.
        let newer = partitions.assign("t", 0);
        assert!(partitions.may_pin("t", 0, newer));
        assert!(!partitions.may_pin("t", 0, generation));
        partitions.pinned("t", 0);
        assert!(!partitions.may_pin("t", 0, newer));
        assert!(partitions.pins_of(&list).is_empty());
    }

    fn statistics(json: Value) -> Statistics {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn lag_is_end_offset_minus_the_next_record_to_bridge() {
        let mut partitions = Partitions::default();
        assert_eq!(partitions.lag(), Some(0), "nothing assigned, nothing waits");
        let g0 = partitions.assign("t", 0);
        partitions.assign("t", 1);
        assert_eq!(partitions.lag(), None, "unknown until the statistics come");
        let stats = statistics(serde_json::json!({"topics": {"t": {"partitions": {
            "0": {"hi_offset": 120, "ls_offset": 100, "lo_offset": 0, "committed_offset": 40},
            "1": {"hi_offset": 7, "ls_offset": 7, "lo_offset": 2, "committed_offset": -1001},
            "-1": {"hi_offset": -1, "ls_offset": -1, "lo_offset": -1, "committed_offset": -1},
        }}}}));
        partitions.statistics(&stats, true, Start::Earliest);
        // 100 - 40 on partition 0; nothing committed on 1: from the log start, 7 - 2.
        assert_eq!(partitions.lag(), Some(65));
        // High watermarks under read_uncommitted; `latest` counts nothing uncommitted.
        partitions.statistics(&stats, false, Start::Latest);
        assert_eq!(partitions.lag(), Some(80));
        partitions.statistics(&stats, true, Start::Earliest);
        // Records taken count from the position after the last one.
        partitions.take("t", 0, g0, 97).unwrap();
        assert_eq!(partitions.lag(), Some(2 + 5));
        partitions.take("t", 0, g0, 99).unwrap();
        assert_eq!(partitions.lag(), Some(5));
        // A stale end (the statistics lag behind the records) never goes negative.
        partitions.take("t", 0, g0, 130).unwrap();
        assert_eq!(partitions.lag(), Some(5));
        partitions.revoke("t", 1);
        assert_eq!(partitions.lag(), Some(0));
    }

    fn sample_record(
        key: Option<&[u8]>,
        headers: &[(&str, &str)],
        timestamp: Option<i64>,
    ) -> Record {
        Record {
            topic: Arc::from("orders"),
            partition: 2,
            offset: 41,
            generation: 1,
            payload: Bytes::from_static(b"{}"),
            key: key.map(<[u8]>::to_vec),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timestamp,
        }
    }

    #[test]
    fn records_map_to_metadata() {
        let received = Utc::now();
        let record = sample_record(
            Some(b"customer-7"),
            &[("Content-Type", "text/plain"), ("tenant", "acme")],
            Some(1_700_000_000_123),
        );
        let meta = metadata(&record, "prod", received);
        assert_eq!(meta.id.as_deref(), Some("orders:2:41"));
        assert_eq!(meta.subject.as_deref(), Some("orders"));
        assert_eq!(meta.source_uri, "kafka://prod/orders");
        assert_eq!(meta.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            meta.time,
            Utc.timestamp_millis_opt(1_700_000_000_123).single()
        );
        assert_eq!(
            meta.extensions,
            vec![("partitionkey".to_owned(), "customer-7".to_owned())]
        );
        assert_eq!(meta.headers.len(), 2);
        assert_eq!(meta.received, received);

        let bare = metadata(&record_without_extras(), "c", received);
        assert_eq!((bare.content_type, bare.time), (None, None));
        assert!(bare.extensions.is_empty(), "no key, no partitionkey");
        let binary = metadata(&sample_record(Some(&[0xff, 0]), &[], None), "c", received);
        assert_eq!(
            binary.extensions[0].1, "/wA=",
            "a key that is not UTF-8 is base64"
        );
        let empty = metadata(&sample_record(Some(b""), &[], None), "c", received);
        assert!(
            empty.extensions.is_empty(),
            "an empty key is no partitionkey"
        );
    }

    fn record_without_extras() -> Record {
        sample_record(None, &[], None)
    }

    #[test]
    fn binary_mode_cloudevent_headers_are_recognised() {
        let record = sample_record(
            None,
            &[
                ("ce_specversion", "1.0"),
                ("ce_id", "x-1"),
                ("ce_source", "/s"),
                ("ce_type", "t"),
                ("content-type", "application/json"),
            ],
            None,
        );
        let meta = metadata(&record, "c", Utc::now());
        let event = crate::cloudevent::parse_binary(
            &meta.headers,
            meta.content_type.as_deref(),
            &record.payload,
        )
        .unwrap()
        .expect("a binary-mode event");
        assert_eq!((event.id.as_str(), event.ty.as_str()), ("x-1", "t"));
    }

    #[test]
    fn header_values_are_text_or_left_out() {
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "text",
                value: Some("grüße"),
            })
            .insert(rdkafka::message::Header {
                key: "binary",
                value: Some(&[0xffu8, 0xfe][..]),
            })
            .insert(rdkafka::message::Header::<&str> {
                key: "none",
                value: None,
            });
        assert_eq!(
            header_texts(&headers),
            vec![
                ("text".to_owned(), "grüße".to_owned()),
                ("none".to_owned(), String::new())
            ]
        );
    }
}
