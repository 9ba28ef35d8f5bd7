//! Connecting: the connection (TLS included), the channel and its prefetch, the queue's
//! declare and bindings, and the consumer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{FieldTable, LongString};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use super::consumer::AmqpSource;
use super::declare::declare_queue;
use super::endpoint::Endpoint;
use super::position::report_what_an_edit_left;
use super::spec::AmqpSpec;
use crate::config::TlsOptions;
use crate::message::SourceError;
use crate::sources::common::context::{ConnectContext, Source};

/// A broker that accepts TCP but never finishes the handshake or a declare must not hang
/// the bridge: the whole setup is bounded, then retried with backoff.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

// AMQP short strings (queue, exchange, binding key, consumer tag) hold at most 255
// bytes: checked when the config is loaded, and built through `short_string` (a value
// that still does not fit is a setup error, never a panic).
use crate::short_string::{TooLong, short_string as wire};

/// Why connecting, declaring, binding or consuming failed. The bridge retries all of them.
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    #[error("bad url: {0}")]
    Url(String),
    #[error("{0}")]
    TooLong(#[from] TooLong),
    #[error("cannot read the TLS {what} {}: {error}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot connect to {server}: {error}")]
    Connect { server: String, error: lapin::Error },
    #[error("no answer from {server} within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("cannot open a channel: {0}")]
    Channel(lapin::Error),
    #[error("cannot set the prefetch (basic.qos): {0}")]
    Qos(lapin::Error),
    #[error("queue `{queue}`: {error} ({hint})")]
    Queue {
        queue: String,
        error: lapin::Error,
        hint: &'static str,
    },
    #[error(
        "cannot bind queue `{queue}` to exchange `{exchange}` with `{key}`: {error} (the exchange must exist)"
    )]
    Bind {
        queue: String,
        exchange: String,
        key: String,
        error: lapin::Error,
    },
    #[error("cannot consume from queue `{queue}`: {error}")]
    Consume { queue: String, error: lapin::Error },
    /// The queue exists with other settings: the bridge changes nothing and retries.
    #[error("{0}")]
    Refused(String),
    /// RabbitMQ refuses a queue argument's value.
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<SetupError> for SourceError {
    fn from(error: SetupError) -> Self {
        match error {
            SetupError::Refused(why) => SourceError::Refused(why),
            other => SourceError::Connect(other.to_string()),
        }
    }
}

/// Connects, declares and binds the queue, and starts consuming.
pub async fn connect(
    spec: &AmqpSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let endpoint = Endpoint::parse(spec.url.expose()).map_err(SetupError::Url)?;
    match tokio::time::timeout(SETUP_TIMEOUT, open(spec, &endpoint, context)).await {
        Ok(result) => Ok(Box::new(result?)),
        Err(_) => Err(SetupError::Timeout {
            server: endpoint.label(),
            timeout: SETUP_TIMEOUT,
        }
        .into()),
    }
}

/// Opens a connection named after the bridge (`label` says what for).
pub(super) async fn connect_broker(
    spec: &AmqpSpec,
    endpoint: &Endpoint,
    label: &str,
) -> Result<Connection, SetupError> {
    let url = spec.url.expose();
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| SetupError::Url(e.replace(url, "<url>")))?;
    // lapin's URI parser turns IPv6 literals into "localhost"; connect where the URL says.
    uri.authority.host = endpoint.host.clone();
    if let (Some(user), Some(password)) = (&spec.user, &spec.password) {
        uri.authority.userinfo.username = user.clone();
        uri.authority.userinfo.password = password.expose().to_owned();
    }
    let tls = tls_config(spec.tls.as_ref()).await?;
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("broker-bridge/{label}")));
    let server = endpoint.label();
    let connect_error = |error| SetupError::Connect {
        server: server.clone(),
        error,
    };
    let runtime = lapin::runtime::default_runtime().map_err(connect_error)?;
    Connection::connect_uri_with_config(uri, properties, tls, runtime)
        .await
        .map_err(connect_error)
}

async fn open(
    spec: &AmqpSpec,
    endpoint: &Endpoint,
    context: &ConnectContext,
) -> Result<AmqpSource, SetupError> {
    let connection = connect_broker(spec, endpoint, &context.bridge).await?;
    // Dropping the connection (and its channel) on any error below closes it.
    let channel = connection
        .create_channel()
        .await
        .map_err(SetupError::Channel)?;
    // The prefetch count is 16 bits wide; a larger max_in_flight is capped there.
    let prefetch = u16::try_from(context.max_in_flight.max(1)).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .map_err(SetupError::Qos)?;

    let queue = wire("the queue name", &spec.queue)?;
    declare_queue(&connection, &channel, spec).await?;
    if let Some(exchange) = &spec.bind_exchange {
        for key in spec.binding_keys() {
            channel
                .queue_bind(
                    queue.clone(),
                    wire("bind_exchange", exchange)?,
                    wire("a binding key", key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|error| SetupError::Bind {
                    queue: spec.queue.clone(),
                    exchange: exchange.clone(),
                    key: key.to_owned(),
                    error,
                })?;
        }
    }
    let tag = spec
        .consumer_tag
        .clone()
        .unwrap_or_else(|| format!("broker-bridge-{}", context.bridge));
    let consumer = channel
        .basic_consume(
            queue,
            wire("consumer_tag", &tag)?,
            // Manual acknowledgements: no_ack stays false.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| SetupError::Consume {
            queue: spec.queue.clone(),
            error,
        })?;
    tracing::debug!(queue = %spec.queue, prefetch, "consuming");
    report_what_an_edit_left(&connection, endpoint, spec, context).await;
    Ok(AmqpSource::new(
        consumer,
        channel,
        endpoint.source_uri(&spec.queue),
        connection,
    ))
}

async fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    tokio::fs::read(path)
        .await
        .map_err(|error| SetupError::ReadFile {
            what,
            path: path.to_owned(),
            error,
        })
}

/// The CA certificates are added to the system's; the client certificate and key (PEM)
/// are for mutual TLS (and `?auth_mechanism=external` in the url).
async fn tls_config(tls: Option<&TlsOptions>) -> Result<OwnedTLSConfig, SetupError> {
    let mut config = OwnedTLSConfig::default();
    let Some(tls) = tls else {
        return Ok(config);
    };
    if let Some(path) = &tls.ca_file {
        let pem = read_file("ca_file", path).await?;
        config.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        config.identity = Some(OwnedIdentity::PKCS8 {
            pem: read_file("cert_file", cert).await?,
            key: read_file("key_file", key).await?,
        });
    }
    Ok(config)
}
