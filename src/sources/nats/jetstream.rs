//! `kind = "jetstream"`: a durable pull consumer, created or checked without moving its
//! position, each message acked after the exchange confirmed; its pending count is the
//! bridge's lag.

use std::time::Duration;

use async_nats::jetstream::consumer::FromConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer::pull};
use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::connection::{NatsConnection, connect_client, server_label};
use super::headers::headers_of;
use crate::config::duration;
use crate::message::{Acker, Incoming, Metadata, SourceError, find_header};
use crate::sources::common::context::{ConnectContext, Source, SourceMetrics};

/// Where a new durable consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// Every message still in the stream.
    #[default]
    All,
    /// Only messages stored after the consumer was created.
    New,
}

/// `kind = "jetstream"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamKeys {
    /// The stream to read; it must exist unless `create_stream_subjects` is set.
    pub stream: String,
    /// Durable consumer name; default `broker-bridge-<bridge name>`.
    pub consumer: Option<String>,
    /// Only messages on this subject (wildcards allowed).
    pub filter_subject: Option<String>,
    /// Create the stream with these subjects when it does not exist.
    #[serde(default)]
    pub create_stream_subjects: Vec<String>,
    /// How long the server waits for our ack before redelivering.
    #[serde(default = "default_ack_wait", with = "duration")]
    pub ack_wait: Duration,
    #[serde(default)]
    pub start: StartPosition,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JetStreamSpec {
    #[serde(flatten)]
    pub connection: NatsConnection,
    #[serde(flatten)]
    pub keys: JetStreamKeys,
}

struct JetStreamSource {
    messages: pull::Stream,
    server: String,
    /// JetStream tells with every message how many wait behind it.
    lag: SourceMetrics,
    _client: async_nats::Client,
}

struct JetStreamAck(jetstream::Message);

#[async_trait]
impl Acker for JetStreamAck {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        self.0
            .ack()
            .await
            .map_err(|e| SourceError::Ack(e.to_string()))
    }
}

/// Marks a consumer as created by broker-bridge: only such a consumer is ever updated.
const OWNED_CONSUMER_MARK: &str = "created by broker-bridge";

/// What to do with a durable consumer that already exists.
#[derive(Debug)]
pub(super) enum ConsumerPlan {
    /// Consume it unchanged; the notes say where it differs from our settings.
    UseAsItIs { notes: Vec<String> },
    /// Ours, and only settings that cannot move its position differ.
    Update {
        config: Box<pull::Config>,
        changes: Vec<String>,
    },
}

impl JetStreamSpec {
    /// The durable consumer's name; default `broker-bridge-<bridge name>`.
    fn consumer_name(&self, bridge: &str) -> String {
        self.keys
            .consumer
            .clone()
            .unwrap_or_else(|| format!("broker-bridge-{bridge}"))
    }

    /// The consumer this bridge creates when none exists.
    pub(super) fn consumer_config(&self, bridge: &str, max_in_flight: usize) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer_name(bridge)),
            description: Some(format!("{OWNED_CONSUMER_MARK} (bridge `{bridge}`)")),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.keys.ack_wait,
            max_ack_pending: max_in_flight as i64,
            filter_subject: self.keys.filter_subject.clone().unwrap_or_default(),
            deliver_policy: match self.keys.start {
                StartPosition::All => jetstream::consumer::DeliverPolicy::All,
                StartPosition::New => jetstream::consumer::DeliverPolicy::New,
            },
            ..Default::default()
        }
    }
}

/// The subjects a consumer delivers; empty for the whole stream.
fn consumer_filters(filter_subject: &str, filter_subjects: &[String]) -> Vec<String> {
    let mut filters: Vec<String> = std::iter::once(filter_subject)
        .chain(filter_subjects.iter().map(String::as_str))
        .filter(|f| !f.is_empty() && *f != ">")
        .map(str::to_owned)
        .collect();
    filters.sort();
    filters.dedup();
    filters
}

fn filters_text(filters: &[String]) -> String {
    if filters.is_empty() {
        "none (the whole stream)".into()
    } else {
        filters
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Decides how to consume an existing durable consumer without moving its position.
/// Its filter and deliver policy are never changed: the server would reposition it and
/// skip what is pending. A consumer someone else created is never changed at all.
/// `Err` is a refusal that names the key, the consumer and the way out.
pub(super) fn plan_existing_consumer(
    existing: &jetstream::consumer::Info,
    wanted: &pull::Config,
    stream: &str,
) -> Result<ConsumerPlan, String> {
    let have = &existing.config;
    let name = &existing.name;
    if let Some(subject) = &have.deliver_subject {
        return Err(format!(
            "key `consumer`: `{name}` on stream `{stream}` is a push consumer (deliver subject `{subject}`); a jetstream bridge needs a pull consumer: name another `consumer`"
        ));
    }
    if have.ack_policy != jetstream::consumer::AckPolicy::Explicit {
        return Err(format!(
            "key `consumer`: `{name}` on stream `{stream}` acks {:?}, not explicitly; the bridge acks each message after its confirm and needs AckPolicy explicit: name another `consumer`",
            have.ack_policy
        ));
    }
    let have_filters = consumer_filters(&have.filter_subject, &have.filter_subjects);
    let want_filters = consumer_filters(&wanted.filter_subject, &wanted.filter_subjects);
    if have_filters != want_filters {
        return Err(format!(
            "key `filter_subject`: consumer `{name}` on stream `{stream}` exists with filter {} but the bridge asks for {}; changing the filter of an existing consumer moves its position and skips the {} message(s) pending there, so broker-bridge leaves it unchanged. Keep the filter, or give the bridge a new `consumer` name (it starts as `start` says; the old consumer's ack floor is stream sequence {}), and delete the old consumer yourself when you no longer need it",
            filters_text(&have_filters),
            filters_text(&want_filters),
            existing.num_pending + existing.num_ack_pending as u64,
            existing.ack_floor.stream_sequence,
        ));
    }
    let owned = have
        .description
        .as_deref()
        .is_some_and(|d| d.starts_with(OWNED_CONSUMER_MARK))
        // Consumers made before the mark existed carry our default name.
        || have.durable_name.as_deref().is_some_and(|d| d.starts_with("broker-bridge-"));
    let mut differences = Vec::new();
    if have.ack_wait != wanted.ack_wait {
        differences.push(format!(
            "ack_wait {:?} (ours {:?})",
            have.ack_wait, wanted.ack_wait
        ));
    }
    if have.max_ack_pending != wanted.max_ack_pending {
        differences.push(format!(
            "max_ack_pending {} (ours {}, from max_in_flight)",
            have.max_ack_pending, wanted.max_ack_pending
        ));
    }
    if !owned {
        let mut notes: Vec<String> = differences
            .into_iter()
            .map(|d| format!("consumer not created by broker-bridge, used as it is: {d}"))
            .collect();
        if have.max_deliver > 0 {
            notes.push(format!(
                "consumer not created by broker-bridge has max_deliver {}: a message redelivered that often (e.g. while the exchange is slower than ack_wait) is dropped by the server",
                have.max_deliver
            ));
        }
        return Ok(ConsumerPlan::UseAsItIs { notes });
    }
    let marked = have.description == wanted.description;
    if differences.is_empty() && marked {
        return Ok(ConsumerPlan::UseAsItIs { notes: Vec::new() });
    }
    if !marked {
        differences.push("description (marks it as created by broker-bridge)".into());
    }
    // Start from the consumer as the server has it, so filter, deliver policy and
    // everything else we do not own stay exactly as they are.
    let mut config = pull::Config::try_from_consumer_config(have.clone())
        .map_err(|e| format!("key `consumer`: `{name}` on stream `{stream}`: {e}"))?;
    config.ack_wait = wanted.ack_wait;
    config.max_ack_pending = wanted.max_ack_pending;
    config.description = wanted.description.clone();
    Ok(ConsumerPlan::Update {
        config: Box::new(config),
        changes: differences,
    })
}

/// Refuses (`SourceError::Refused`) what `connect_jetstream` would refuse about an
/// existing consumer, without changing anything.
pub(super) async fn verify_jetstream(
    spec: &JetStreamSpec,
    bridge: &str,
    max_in_flight: usize,
) -> Result<(), SourceError> {
    let client = connect_client(&spec.connection, bridge).await?;
    let js = jetstream::new(client);
    let Ok(stream) = js.get_stream(&spec.keys.stream).await else {
        // A missing stream holds no position; connecting reports it.
        return Ok(());
    };
    existing_consumer(&stream, spec, bridge, max_in_flight)
        .await
        .map(drop)
}

/// How to consume the bridge's durable consumer if it exists (`None`: it does not);
/// `SourceError::Refused` when using it would move it.
async fn existing_consumer(
    stream: &jetstream::stream::Stream,
    spec: &JetStreamSpec,
    bridge: &str,
    max_in_flight: usize,
) -> Result<Option<ConsumerPlan>, SourceError> {
    let durable = spec.consumer_name(bridge);
    match stream.consumer_info(&durable).await {
        Ok(info) => {
            let wanted = spec.consumer_config(bridge, max_in_flight);
            plan_existing_consumer(&info, &wanted, &spec.keys.stream)
                .map(Some)
                .map_err(SourceError::Refused)
        }
        Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
        Err(err) => Err(SourceError::Connect(format!("consumer `{durable}`: {err}"))),
    }
}

pub(super) async fn connect_jetstream(
    spec: &JetStreamSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let client = connect_client(&spec.connection, &context.bridge).await?;
    let js = jetstream::new(client.clone());
    let keys = &spec.keys;
    let stream = match js.get_stream(&keys.stream).await {
        Ok(stream) => stream,
        Err(err) if !keys.create_stream_subjects.is_empty() => {
            tracing::info!(stream = %keys.stream, error = %err, "creating the stream");
            js.get_or_create_stream(jetstream::stream::Config {
                name: keys.stream.clone(),
                subjects: keys.create_stream_subjects.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                SourceError::Connect(format!("cannot create stream `{}`: {e}", keys.stream))
            })?
        }
        Err(err) => {
            return Err(SourceError::Connect(format!(
                "stream `{}`: {err} (create it, or set create_stream_subjects)",
                keys.stream
            )));
        }
    };
    let durable = spec.consumer_name(&context.bridge);
    let plan = existing_consumer(&stream, spec, &context.bridge, context.max_in_flight).await?;
    let consumer: jetstream::consumer::PullConsumer = match plan {
        Some(ConsumerPlan::UseAsItIs { notes }) => {
            for note in notes {
                tracing::warn!(consumer = %durable, "{note}");
            }
            stream
                .get_consumer(&durable)
                .await
                .map_err(|e| SourceError::Connect(format!("consumer `{durable}`: {e}")))?
        }
        Some(ConsumerPlan::Update { config, changes }) => {
            tracing::info!(consumer = %durable, changes = %changes.join(", "), "updating our consumer");
            stream.update_consumer(*config).await.map_err(|e| {
                SourceError::Connect(format!("cannot update consumer `{durable}`: {e}"))
            })?
        }
        None => {
            tracing::info!(consumer = %durable, "creating the durable consumer");
            let wanted = spec.consumer_config(&context.bridge, context.max_in_flight);
            stream.create_consumer_strict(wanted).await.map_err(|e| {
                SourceError::Connect(format!("cannot create consumer `{durable}`: {e}"))
            })?
        }
    };
    let messages = consumer
        .stream()
        .max_messages_per_batch(context.max_in_flight.clamp(1, 1000))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| SourceError::Subscription(e.to_string()))?;
    Ok(Box::new(JetStreamSource {
        messages,
        server: server_label(&spec.connection.url),
        lag: context.metrics.clone(),
        _client: client,
    }))
}

#[async_trait]
impl Source for JetStreamSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        let message = self
            .messages
            .next()
            .await
            .ok_or_else(|| SourceError::Subscription("the consumer stream ended".into()))?
            .map_err(|e| SourceError::Subscription(e.to_string()))?;
        let info = message
            .info()
            .map_err(|e| SourceError::Subscription(format!("bad JetStream reply subject: {e}")))?;
        let id = format!("{}:{}", info.stream, info.stream_sequence);
        let time = info.published;
        self.lag.set_lag(info.pending);
        let headers = headers_of(message.headers.as_ref());
        let subject = message.subject.to_string();
        let meta = Metadata {
            id: Some(id),
            content_type: find_header(&headers, "Content-Type").map(str::to_owned),
            source_uri: format!("nats://{}/{}", self.server, subject),
            subject: Some(subject),
            headers,
            time: Some(time),
            extensions: Vec::new(),
            received: Utc::now(),
            default_type: None,
            no_data: false,
        };
        Ok(Incoming {
            payload: message.payload.clone(),
            meta,
            ack: Box::new(JetStreamAck(message)),
        })
    }
}
