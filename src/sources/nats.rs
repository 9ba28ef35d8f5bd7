//! `kind = "nats"` (core subscriptions, at-most-once) and `kind = "jetstream"` (durable
//! pull consumer, acknowledged after the exchange confirmed).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    Acker, ConnectContext, Incoming, NoAck, Source, SourceError, SourceMetrics, TlsOptions,
};
use crate::config::{duration, fields};
use crate::normalize::{Metadata, find_header};

/// Connection keys shared by both NATS kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConnection {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`, `tls://host:4222`.
    #[serde(default = "default_url")]
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// NKey seed (`SU...`).
    pub nkey: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<std::path::PathBuf>,
    pub tls: Option<TlsOptions>,
}

fn default_url() -> String {
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
pub(super) fn accepted_keys() -> Vec<&'static str> {
    [
        fields::names::<NatsConnection>(),
        fields::names::<NatsKeys>(),
        fields::names::<JetStreamKeys>(),
    ]
    .concat()
}

/// `host:port` of the first server, without credentials, for CloudEvent sources.
fn server_label(url: &str) -> String {
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
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("broker-bridge/{bridge}"))
        // Once connected, the client reconnects and resubscribes by itself, forever.
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(10));
    if let (Some(user), Some(password)) = (&connection.user, &connection.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &connection.token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &connection.nkey {
        options = options.nkey(seed.clone());
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
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| SourceError::Connect(format!("bad url `{}`: {e}", connection.url)))?;
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
    subscriber: async_nats::Subscriber,
    server: String,
    // Kept so the connection lives as long as the subscription.
    _client: async_nats::Client,
}

pub async fn connect_core(
    spec: &NatsSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let client = connect_client(&spec.connection, &context.bridge).await?;
    let subject = spec.keys.subject.clone();
    let subscriber = match &spec.keys.queue_group {
        Some(group) => client.queue_subscribe(subject, group.clone()).await,
        None => client.subscribe(subject).await,
    }
    .map_err(|e| SourceError::Subscription(e.to_string()))?;
    Ok(Box::new(CoreSource {
        subscriber,
        server: server_label(&spec.connection.url),
        _client: client,
    }))
}

#[async_trait]
impl Source for CoreSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        let message = self
            .subscriber
            .next()
            .await
            .ok_or_else(|| SourceError::Subscription("the subscription ended".into()))?;
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
    let durable = keys
        .consumer
        .clone()
        .unwrap_or_else(|| format!("broker-bridge-{}", context.bridge));
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: keys.ack_wait,
        max_ack_pending: context.max_in_flight as i64,
        filter_subject: keys.filter_subject.clone().unwrap_or_default(),
        deliver_policy: match keys.start {
            StartPosition::All => jetstream::consumer::DeliverPolicy::All,
            StartPosition::New => jetstream::consumer::DeliverPolicy::New,
        },
        ..Default::default()
    };
    // Creating an existing durable with the same settings is a no-op; with changed
    // editable settings (max_ack_pending, ack_wait) the server updates it.
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| SourceError::Connect(format!("consumer `{durable}`: {e}")))?;
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
        assert_eq!(server_label("nats://u:p@127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(server_label("tls://a:4222, tls://b:4222"), "a:4222");
        assert_eq!(server_label("localhost:4222"), "localhost:4222");
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
        assert_eq!(spec.connection.url, "nats://x:4222");
        assert_eq!(spec.keys.queue_group.as_deref(), Some("g"));
        let table = serde_json::json!({"subject": "a", "stream": "S"});
        let err = NatsSpec::parse(table.as_object().unwrap().clone()).unwrap_err();
        assert!(err.starts_with("key `stream`: unknown key"), "{err}");
        assert!(err.contains("url") && err.contains("queue_group"), "{err}");
    }
}
