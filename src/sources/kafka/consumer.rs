//! The consumer: what its callbacks, the source and the handles share, its client
//! callbacks (statistics, errors, log), connecting, and the driver that polls its main
//! queue until the connection ends.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::offsets::{Partitions, Statistics};
use super::position::{LAST_READ, LastRead, report_start};
use super::spec::{KafkaSpec, Start};
use super::stream::{KafkaSource, Link, Record};
use crate::message::SourceError;
use crate::sources::common::context::{ConnectContext, Source, SourceMetrics};

/// Bound on checking the brokers and topics when connecting.
pub(super) const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Records read from partitions and not yet taken by the bridge.
const RECORD_BUFFER: usize = 64;

pub(super) type KafkaConsumer = StreamConsumer<KafkaContext>;
pub(super) type PartitionQueue = StreamPartitionQueue<KafkaContext>;

/// What the source, its handles, its tasks and the consumer's callbacks share.
pub(super) struct Shared {
    pub(super) bridge: String,
    partitions: Mutex<Partitions>,
    /// Set right after the consumer is made; weak, since the consumer owns the context
    /// that owns this.
    pub(super) consumer: OnceLock<Weak<KafkaConsumer>>,
    /// For the readers spawned from rebalance callbacks.
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) records: mpsc::Sender<Record>,
    /// Why the source must reconnect, once something says so.
    failed: watch::Sender<Option<String>>,
    /// The bridge's gauge, set on every change while the source is in use (after a
    /// reconnect, the old consumer's statistics must not overwrite the new one's).
    gauge: SourceMetrics,
    pub(super) detached: AtomicBool,
    read_committed: bool,
    start: Start,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.partitions.lock().expect("partitions lock")
    }

    pub(super) fn fail(&self, reason: String) {
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

    pub(super) fn update_lag(&self, partitions: &Partitions) {
        if let Some(lag) = partitions.lag()
            && !self.detached.load(Relaxed)
        {
            self.gauge.set_lag(lag);
        }
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

/// The consumer's callbacks: rebalances, statistics, errors and librdkafka's log.
pub(super) struct KafkaContext {
    pub(super) shared: Arc<Shared>,
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
