//! `kind = "nats"` (core subscriptions, at-most-once) and `kind = "jetstream"` (durable
//! pull consumer, acknowledged after the exchange confirmed).

use std::time::Duration;

use async_nats::jetstream::consumer::FromConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer::pull};
use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source, SourceMetrics};
use crate::config::TlsOptions;
use crate::config::{duration, fields};
use crate::message::{Acker, Incoming, Metadata, NoAck, SourceError, find_header};
use crate::secret::Secret;

/// Connection keys shared by both NATS kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConnection {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`, `tls://host:4222`.
    #[serde(default = "default_url")]
    pub url: Secret,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// NKey seed (`SU...`).
    pub nkey: Option<Secret>,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<std::path::PathBuf>,
    pub tls: Option<TlsOptions>,
}

fn default_url() -> Secret {
    "nats://127.0.0.1:4222".into()
}

/// `kind = "nats"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsKeys {
    /// Subject to subscribe to; wildcards `*` and `>` allowed.
    pub subject: String,
    /// Queue group, so several replicas share the subject.
    pub queue_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatsSpec {
    #[serde(flatten)]
    pub connection: NatsConnection,
    #[serde(flatten)]
    pub keys: NatsKeys,
}

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

fn parse_parts<K: for<'de> Deserialize<'de>>(
    mut table: Map<String, Value>,
    kind: &str,
) -> Result<(NatsConnection, K), String> {
    let accepted = [fields::names::<NatsConnection>(), fields::names::<K>()].concat();
    fields::reject_unknown(&table, &accepted, &format!("kind `{kind}`"))?;
    let connection: NatsConnection =
        fields::parse(Value::Object(fields::take::<NatsConnection>(&mut table)))?;
    connection.validate()?;
    let keys = fields::parse(Value::Object(table))?;
    Ok((connection, keys))
}

impl NatsConnection {
    /// Refuses settings that would otherwise be silently ignored.
    fn validate(&self) -> Result<(), String> {
        match (&self.user, &self.password) {
            (Some(_), None) => return Err("key `user`: needs `password` too".into()),
            (None, Some(_)) => return Err("key `password`: needs `user` too".into()),
            _ => {}
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some(),
            self.nkey.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|set| **set).count() > 1 {
            return Err(
                "keys `user`/`token`/`nkey`/`creds_file`: choose one way to authenticate".into(),
            );
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err("key `tls`: `cert_file` and `key_file` go together".into());
        }
        Ok(())
    }
}

impl NatsSpec {
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
        let (connection, keys) = parse_parts(table, "nats")?;
        Ok(NatsSpec { connection, keys })
    }

    pub fn describe(&self) -> String {
        format!(
            "subject `{}`{} on {}; at-most-once: core NATS has no acknowledgements, messages sent while broker-bridge is down or disconnected are lost",
            self.keys.subject,
            self.keys
                .queue_group
                .as_ref()
                .map(|g| format!(" (queue group `{g}`)"))
                .unwrap_or_default(),
            server_label(&self.connection.url)
        )
    }
}

impl JetStreamSpec {
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
        let (connection, keys) = parse_parts::<JetStreamKeys>(table, "jetstream")?;
        if keys.stream.is_empty() {
            return Err("key `stream`: must not be empty".into());
        }
        Ok(JetStreamSpec { connection, keys })
    }

    pub fn describe(&self) -> String {
        format!(
            "stream `{}` on {}; at-least-once: acked after the exchange confirmed",
            self.keys.stream,
            server_label(&self.connection.url)
        )
    }
}

/// The keys of both NATS kinds (connection, core and JetStream).
fn accepted_keys() -> Vec<&'static str> {
    [
        fields::names::<NatsConnection>(),
        fields::names::<NatsKeys>(),
        fields::names::<JetStreamKeys>(),
    ]
    .concat()
}

/// `kind = "nats"`: core NATS, at most once.
pub struct Nats;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Nats {
    const NAME: &'static str = "nats";
    const SECRET_KEYS: &'static [&'static str] = &["url", "password", "token", "nkey"];
    type Spec = NatsSpec;

    fn parse(table: Map<String, Value>) -> Result<NatsSpec, String> {
        NatsSpec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &NatsSpec) -> String {
        spec.describe()
    }

    fn subject_separator(_: &NatsSpec) -> Option<char> {
        Some('.')
    }

    async fn connect(
        spec: &NatsSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect_core(spec, context).await
    }
}

/// `kind = "jetstream"`: a durable JetStream consumer, at least once.
pub struct JetStream;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for JetStream {
    const NAME: &'static str = "jetstream";
    const SECRET_KEYS: &'static [&'static str] = Nats::SECRET_KEYS;
    type Spec = JetStreamSpec;

    fn parse(table: Map<String, Value>) -> Result<JetStreamSpec, String> {
        JetStreamSpec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &JetStreamSpec) -> String {
        spec.describe()
    }

    fn subject_separator(_: &JetStreamSpec) -> Option<char> {
        Some('.')
    }

    async fn verify_position(
        spec: &JetStreamSpec,
        bridge: &crate::config::BridgeSpec,
    ) -> Result<(), SourceError> {
        verify_jetstream(spec, &bridge.name, bridge.max_in_flight).await
    }

    async fn connect(
        spec: &JetStreamSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect_jetstream(spec, context).await
    }
}

/// `host:port` of the first server, without credentials, for CloudEvent sources.
fn server_label(url: &Secret) -> String {
    // Redacted first: a `,` in a password would otherwise split the list inside it.
    let url = crate::secret::redact_url(url.expose());
    let first = url.split(',').next().unwrap_or("").trim();
    let without_scheme = first.split_once("://").map_or(first, |(_, rest)| rest);
    let without_credentials = without_scheme
        .rsplit_once('@')
        .map_or(without_scheme, |(_, host)| host);
    without_credentials.trim_end_matches('/').to_owned()
}

async fn connect_client(
    connection: &NatsConnection,
    bridge: &str,
) -> Result<async_nats::Client, SourceError> {
    connect_with(connection, bridge, async_nats::ConnectOptions::new()).await
}

async fn connect_with(
    connection: &NatsConnection,
    bridge: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, SourceError> {
    let mut options = options
        .name(format!("broker-bridge/{bridge}"))
        // Once connected, the client reconnects and resubscribes by itself, forever.
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(10));
    if let (Some(user), Some(password)) = (&connection.user, &connection.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &connection.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(seed) = &connection.nkey {
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(path) = &connection.creds_file {
        options = options.credentials_file(path).await.map_err(|e| {
            SourceError::Connect(format!("cannot read creds_file {}: {e}", path.display()))
        })?;
    }
    if let Some(tls) = &connection.tls {
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if tls.required {
            options = options.require_tls(true);
        }
    }
    let servers: Vec<async_nats::ServerAddr> = connection
        .url
        .expose()
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            SourceError::Connect(format!("bad url `{}`: {e}", connection.url.redacted()))
        })?;
    options
        .connect(servers)
        .await
        .map_err(|e| SourceError::Connect(e.to_string()))
}

fn headers_of(headers: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, values) in headers.iter() {
        for value in values {
            out.push((name.to_string(), value.as_str().to_owned()));
        }
    }
    out
}

struct CoreSource {
    buffered: tokio::sync::mpsc::UnboundedReceiver<async_nats::Message>,
    /// Payload bytes in `buffered`, shared with the reader that fills it.
    buffered_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: String,
    reader: tokio::task::JoinHandle<()>,
    // Kept so the connection lives as long as the subscription.
    _client: async_nats::Client,
}

impl Drop for CoreSource {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Core NATS has no flow control: the server pushes whatever is published, and a
/// subscriber that does not keep up would buffer without limit. A reader drains the
/// subscription into a buffer of at most `max_bytes` payload bytes and drops (and
/// counts, `bridge_events_dropped_total{reason="overflow"}`) what does not fit, as
/// core NATS's at-most-once contract allows.
fn spawn_reader(
    mut subscriber: async_nats::Subscriber,
    max_bytes: usize,
    metrics: SourceMetrics,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<async_nats::Message>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (sender, buffered) = tokio::sync::mpsc::unbounded_channel();
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = bytes.clone();
    let reader = tokio::spawn(async move {
        let mut dropped_since_warning = 0u64;
        while let Some(message) = subscriber.next().await {
            let size = message.payload.len();
            // One message always fits an empty buffer, whatever its size.
            let held = counted.load(Relaxed);
            if held > 0 && held + size > max_bytes {
                metrics.drop_overflow();
                dropped_since_warning += 1;
                if dropped_since_warning.is_power_of_two() {
                    tracing::warn!(
                        dropped = dropped_since_warning,
                        max_in_flight_bytes = max_bytes,
                        "core NATS messages arrive faster than the exchange takes them; dropping what does not fit (at-most-once)"
                    );
                }
                continue;
            }
            counted.fetch_add(size, Relaxed);
            if sender.send(message).is_err() {
                return;
            }
        }
    });
    (buffered, bytes, reader)
}

pub async fn connect_core(
    spec: &NatsSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    // The client's own queue for the subscription is bounded too: what it has no room
    // for (a "slow consumer") it drops, and tells; that is counted like our overflow.
    let queue = (context.max_in_flight_bytes / context.max_message_bytes.max(1)).clamp(16, 65_536);
    let metrics = context.metrics.clone();
    let options = async_nats::ConnectOptions::new()
        .subscription_capacity(queue)
        .event_callback(move |event| {
            let metrics = metrics.clone();
            async move {
                if let async_nats::Event::SlowConsumer(_) = event {
                    metrics.drop_overflow();
                }
            }
        });
    let client = connect_with(&spec.connection, &context.bridge, options).await?;
    let subject = spec.keys.subject.clone();
    let subscriber = match &spec.keys.queue_group {
        Some(group) => client.queue_subscribe(subject, group.clone()).await,
        None => client.subscribe(subject).await,
    }
    .map_err(|e| SourceError::Subscription(e.to_string()))?;
    let (buffered, buffered_bytes, reader) = spawn_reader(
        subscriber,
        context.max_in_flight_bytes.max(1),
        context.metrics.clone(),
    );
    Ok(Box::new(CoreSource {
        buffered,
        buffered_bytes,
        server: server_label(&spec.connection.url),
        reader,
        _client: client,
    }))
}

#[async_trait]
impl Source for CoreSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        let message = self
            .buffered
            .recv()
            .await
            .ok_or_else(|| SourceError::Subscription("the subscription ended".into()))?;
        self.buffered_bytes
            .fetch_sub(message.payload.len(), std::sync::atomic::Ordering::Relaxed);
        let headers = headers_of(message.headers.as_ref());
        let subject = message.subject.to_string();
        let meta = Metadata {
            id: find_header(&headers, "Nats-Msg-Id").map(str::to_owned),
            content_type: find_header(&headers, "Content-Type").map(str::to_owned),
            source_uri: format!("nats://{}/{}", self.server, subject),
            subject: Some(subject),
            headers,
            time: None,
            extensions: Vec::new(),
            received: Utc::now(),
            default_type: None,
            no_data: false,
        };
        Ok(Incoming {
            payload: message.payload,
            meta,
            ack: Box::new(NoAck),
        })
    }
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
enum ConsumerPlan {
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
    pub fn consumer_name(&self, bridge: &str) -> String {
        self.keys
            .consumer
            .clone()
            .unwrap_or_else(|| format!("broker-bridge-{bridge}"))
    }

    /// The consumer this bridge creates when none exists.
    fn consumer_config(&self, bridge: &str, max_in_flight: usize) -> pull::Config {
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
fn plan_existing_consumer(
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
pub async fn verify_jetstream(
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

pub async fn connect_jetstream(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_labels_drop_scheme_and_credentials() {
        let label = |url: &str| server_label(&url.into());
        assert_eq!(label("nats://u:p@127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(label("nats://u:p,w@127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(label("tls://a:4222, tls://b:4222"), "a:4222");
        assert_eq!(label("localhost:4222"), "localhost:4222");
    }

    #[test]
    fn half_given_credentials_are_refused() {
        for (table, key) in [
            (serde_json::json!({"subject": "a", "user": "u"}), "user"),
            (
                serde_json::json!({"subject": "a", "password": "p"}),
                "password",
            ),
            (
                serde_json::json!({"subject": "a", "user": "u", "password": "p", "token": "t"}),
                "creds_file",
            ),
            (
                serde_json::json!({"subject": "a", "tls": {"cert_file": "c.pem"}}),
                "key_file",
            ),
        ] {
            let err = NatsSpec::parse(table.as_object().unwrap().clone()).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
        let fine = serde_json::json!({"subject": "a", "user": "u", "password": "p"});
        assert!(NatsSpec::parse(fine.as_object().unwrap().clone()).is_ok());
    }

    #[test]
    fn keys_are_split_between_connection_and_kind() {
        let table =
            serde_json::json!({"url": "nats://x:4222", "subject": "a.>", "queue_group": "g"});
        let spec = NatsSpec::parse(table.as_object().unwrap().clone()).unwrap();
        assert_eq!(spec.connection.url.expose(), "nats://x:4222");
        assert_eq!(spec.keys.queue_group.as_deref(), Some("g"));
        let table = serde_json::json!({"subject": "a", "stream": "S"});
        let err = NatsSpec::parse(table.as_object().unwrap().clone()).unwrap_err();
        assert!(err.starts_with("key `stream`: unknown key"), "{err}");
        assert!(err.contains("url") && err.contains("queue_group"), "{err}");
    }

    fn jetstream_spec(filter: Option<&str>) -> JetStreamSpec {
        let mut table = serde_json::json!({"stream": "ORDERS", "consumer": "c1"});
        if let Some(filter) = filter {
            table["filter_subject"] = filter.into();
        }
        JetStreamSpec::parse(table.as_object().unwrap().clone()).unwrap()
    }

    /// An existing consumer as the server reports it: `config`, ack floor 10, 100 pending.
    fn existing(config: impl jetstream::consumer::IntoConsumerConfig) -> jetstream::consumer::Info {
        let config = serde_json::to_value(config.into_consumer_config()).unwrap();
        serde_json::from_value(serde_json::json!({
            "stream_name": "ORDERS",
            "name": "c1",
            "created": "2026-12-01T00:00:00Z",
            "config": config,
            "delivered": {"consumer_seq": 10, "stream_seq": 10},
            "ack_floor": {"consumer_seq": 10, "stream_seq": 10},
            "num_ack_pending": 0,
            "num_redelivered": 0,
            "num_waiting": 0,
            "num_pending": 100,
            "cluster": null
        }))
        .unwrap()
    }

    #[test]
    fn an_unchanged_consumer_of_ours_is_used_as_it_is() {
        let spec = jetstream_spec(Some("orders.a"));
        let wanted = spec.consumer_config("b", 256);
        let plan = plan_existing_consumer(&existing(wanted.clone()), &wanted, "ORDERS").unwrap();
        assert!(
            matches!(plan, ConsumerPlan::UseAsItIs { ref notes } if notes.is_empty()),
            "{plan:?}"
        );
    }

    #[test]
    fn a_changed_filter_is_refused_naming_key_consumer_and_pending() {
        let created = jetstream_spec(Some("orders.a")).consumer_config("b", 256);
        for filter in [Some("orders.>"), None, Some("orders.b")] {
            let wanted = jetstream_spec(filter).consumer_config("b", 256);
            let refusal =
                plan_existing_consumer(&existing(created.clone()), &wanted, "ORDERS").unwrap_err();
            assert!(refusal.starts_with("key `filter_subject`"), "{refusal}");
            assert!(
                refusal.contains("`c1`") && refusal.contains("`ORDERS`"),
                "{refusal}"
            );
            assert!(refusal.contains("100 message(s) pending"), "{refusal}");
            assert!(refusal.contains("stream sequence 10"), "{refusal}");
        }
    }

    #[test]
    fn our_consumer_is_updated_only_in_settings_that_cannot_move_it() {
        let created = jetstream_spec(Some("orders.a")).consumer_config("b", 256);
        let mut spec = jetstream_spec(Some("orders.a"));
        spec.keys.ack_wait = Duration::from_secs(45);
        spec.keys.start = StartPosition::New;
        let wanted = spec.consumer_config("b", 16);
        let plan = plan_existing_consumer(&existing(created.clone()), &wanted, "ORDERS").unwrap();
        let ConsumerPlan::Update { config, changes } = plan else {
            panic!("expected an update, got {plan:?}");
        };
        assert_eq!(config.max_ack_pending, 16);
        assert_eq!(config.ack_wait, Duration::from_secs(45));
        assert_eq!(config.filter_subject, "orders.a");
        // `start` only applies to a new consumer: the existing deliver policy stays.
        assert_eq!(config.deliver_policy, created.deliver_policy);
        assert_eq!(changes.len(), 2, "{changes:?}");
    }

    #[test]
    fn a_consumer_someone_else_made_is_never_updated() {
        let operator = pull::Config {
            durable_name: Some("c1".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 4096,
            max_deliver: 5,
            ..Default::default()
        };
        let wanted = jetstream_spec(None).consumer_config("b", 256);
        let plan = plan_existing_consumer(&existing(operator), &wanted, "ORDERS").unwrap();
        let ConsumerPlan::UseAsItIs { notes } = plan else {
            panic!("expected use as it is, got {plan:?}");
        };
        assert!(
            notes.iter().any(|n| n.contains("max_ack_pending 4096")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("max_deliver 5")),
            "{notes:?}"
        );
    }

    #[test]
    fn consumers_that_cannot_be_acked_one_by_one_are_refused() {
        let wanted = jetstream_spec(None).consumer_config("b", 256);
        let ack_all = pull::Config {
            durable_name: Some("c1".into()),
            ack_policy: jetstream::consumer::AckPolicy::All,
            ..Default::default()
        };
        let refusal = plan_existing_consumer(&existing(ack_all), &wanted, "ORDERS").unwrap_err();
        assert!(refusal.contains("explicit"), "{refusal}");
        let push = jetstream::consumer::push::Config {
            durable_name: Some("c1".into()),
            deliver_subject: "out".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        };
        let refusal = plan_existing_consumer(&existing(push), &wanted, "ORDERS").unwrap_err();
        assert!(refusal.contains("push consumer"), "{refusal}");
    }
}
