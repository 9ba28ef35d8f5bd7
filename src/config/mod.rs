//! The configuration schema. `config.example.toml` documents every key; a test keeps the
//! two in step. Loading (files, includes, environment, `${VAR}`, `*_file`) is in `load`.

pub mod duration;
pub mod fields;
pub mod load;
pub mod source;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Loaded, load};
pub use source::{KindCatalog, SourceSettings, SourceSpec, TlsOptions};

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub exchange: ExchangeConfig,
    pub admin: AdminConfig,
    pub webhook: WebhookConfig,
    pub defaults: Defaults,
    pub bridges: Vec<BridgeSpec>,
}

/// The top level of the main file, before bridges are resolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopLevel {
    /// Already expanded by `load`; kept here so the key is known to the schema.
    #[serde(default, rename = "include")]
    pub _include: Vec<String>,
    #[serde(default)]
    pub exchange: ExchangeConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub webhook: WebhookConfig,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub bridge: Vec<serde_json::Value>,
}

/// How events are encoded on the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// `application/cloudevents+json` body.
    #[default]
    Structured,
    /// `ce-` headers and the raw data as body.
    Binary,
}

/// `[exchange]`: the RabbitMQ topic exchange every bridge publishes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeConfig {
    /// Holds the password: shown only through `url.redacted()`.
    pub url: crate::secret::Secret,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub declare: bool,
    pub alternate_exchange: Option<String>,
    pub content_mode: ContentMode,
    pub deadletter: Option<String>,
    #[serde(with = "duration")]
    pub confirm_timeout: Duration,
    pub backoff: BackoffConfig,
    /// The largest message the broker takes (RabbitMQ's `max_message_size`). A message
    /// over it would make RabbitMQ close the shared channel, so it is never sent: an
    /// event that would be larger is dead-lettered as `too_large`.
    pub max_message_size: usize,
}

/// Room for a dead letter's headers besides its body (each header is capped).
pub const DEADLETTER_HEADROOM: usize = 8 * 1024;

/// RabbitMQ 4's default `max_message_size`.
pub const RABBITMQ_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Default for ExchangeConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            name: "events".into(),
            kind: "topic".into(),
            durable: true,
            declare: true,
            alternate_exchange: None,
            content_mode: ContentMode::Structured,
            deadletter: None,
            confirm_timeout: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
            max_message_size: RABBITMQ_MAX_MESSAGE_SIZE,
        }
    }
}

/// `[admin]`: the metrics/health/status listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// How long a bridge that was running may be down (reconnecting, restarting) before
    /// `/readyz` says not ready; a bridge that never connected is not ready at once.
    #[serde(with = "duration")]
    pub ready_grace: Duration,
    /// When set, `/bridges` wants `Authorization: Bearer <token>`; `/metrics`, `/healthz`
    /// and `/readyz` stay open.
    pub token: Option<crate::secret::Secret>,
    /// Host names (besides the listen address, and `localhost` on loopback) that requests
    /// may name in `Host`; any other is answered 421 (DNS rebinding). A list, or
    /// comma-separated text (as an environment override gives it).
    #[serde(deserialize_with = "list_or_text")]
    pub allowed_hosts: Vec<String>,
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9180".parse().expect("valid address"),
            ready_grace: Duration::from_secs(10),
            token: None,
            allowed_hosts: Vec::new(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: 64,
        }
    }
}

impl AdminConfig {
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_limits("admin", &self.limits())?;
        if self
            .token
            .as_ref()
            .is_some_and(|token| token.expose().is_empty())
        {
            return Err(key_error("admin.token", "must not be empty".into()));
        }
        for host in &self.allowed_hosts {
            let name = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            let address = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok();
            if !(name || address) {
                return Err(key_error(
                    "admin.allowed_hosts",
                    format!(
                        "`{host}` is not a host name or an IP address (no scheme, path or port)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[webhook] tls`: PEM files of the certificate chain and its private key, re-read when
/// they change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// `[webhook]`: the HTTP listener every `kind = "webhook"` bridge shares (not the admin
/// listener). Bound when the first webhook bridge starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// The base URL senders use, e.g. `https://hooks.example.com` behind a TLS proxy.
    /// `webhook-url` prints it, and events carry it in their `source`.
    pub public_url: Option<String>,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsConfig>,
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9181".parse().expect("valid address"),
            public_url: None,
            tls: None,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: 1024,
        }
    }
}

impl WebhookConfig {
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
        }
    }

    /// Checks the limits, and reads the certificate and key so that a mistake in them
    /// is a config error (at `check`, start and reload) rather than a failed bridge.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_limits("webhook", &self.limits())?;
        if let Some(tls) = &self.tls {
            crate::crypto::load_certified_key(&tls.cert, &tls.key)
                .map_err(|(key, message)| key_error(&format!("webhook.{key}"), message))?;
        }
        Ok(())
    }
}

/// `header_timeout`, `body_timeout`, `idle_timeout` and `max_connections` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Backoff settings, `[defaults.backoff]` and `[exchange.backoff]` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay after a failure.
    #[serde(with = "duration", default = "default_initial")]
    pub initial: Duration,
    /// Upper bound for any delay.
    #[serde(with = "duration", default = "default_max")]
    pub max: Duration,
}

fn default_initial() -> Duration {
    Duration::from_millis(200)
}

fn default_max() -> Duration {
    Duration::from_secs(30)
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: default_initial(),
            max: default_max(),
        }
    }
}

const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Far above any file-descriptor limit; keeps the semaphore within its bounds.
const MAX_CONNECTIONS: usize = 1 << 20;

fn list_or_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(deserializer)? {
        ListOrText::List(items) => items,
        ListOrText::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn key_error(key: &str, message: String) -> ConfigError {
    ConfigError::Key {
        key: key.to_owned(),
        message,
    }
}

fn check_limits(section: &str, limits: &ListenerLimits) -> Result<(), ConfigError> {
    for (key, value) in [
        ("header_timeout", limits.header_timeout),
        ("body_timeout", limits.body_timeout),
        ("idle_timeout", limits.idle_timeout),
    ] {
        if value.is_zero() {
            return Err(key_error(
                &format!("{section}.{key}"),
                "must be more than 0".into(),
            ));
        }
    }
    if !(1..=MAX_CONNECTIONS).contains(&limits.max_connections) {
        return Err(key_error(
            &format!("{section}.max_connections"),
            format!("must be between 1 and {MAX_CONNECTIONS}"),
        ));
    }
    Ok(())
}

/// `[defaults]`: values every bridge inherits unless it sets its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub tenant: String,
    pub max_in_flight: usize,
    /// Payload bytes a bridge holds unacknowledged at most (with `max_in_flight`).
    pub max_in_flight_bytes: usize,
    pub max_message_bytes: usize,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    pub backoff: BackoffConfig,
    /// Where kinds with a cursor of their own (`s3`, `calendar`) keep it; one file set per
    /// bridge.
    pub state_dir: std::path::PathBuf,
    /// How many bytes of a `too_large` message its dead letter carries (with the full
    /// size and a SHA-256 of the whole).
    pub deadletter_sample_bytes: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            tenant: "default".into(),
            max_in_flight: 256,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            state_dir: "/var/lib/broker-bridge".into(),
            deadletter_sample_bytes: 64 * 1024,
        }
    }
}

/// How a bridge reads payloads that are not CloudEvents already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// JSON when the bytes parse as JSON (and no non-JSON content type says otherwise),
    /// else binary.
    #[default]
    Auto,
    /// Must be JSON; anything else is dead-lettered as `invalid_json`.
    Json,
    /// Never parsed: always `data_base64` with the content type.
    Raw,
    /// An AWS S3 or MinIO event-notification document: one event per `Records[]`
    /// entry; anything else is dead-lettered as `invalid_notification`.
    #[serde(rename = "s3-notification")]
    S3Notification,
}

/// Keys every bridge has, whatever its kind. Optional ones fall back to `[defaults]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommonKeys {
    pub name: String,
    pub kind: String,
    pub tenant: Option<String>,
    pub source_name: Option<String>,
    pub source_uri: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub time_field: Option<String>,
    #[serde(default)]
    pub format: PayloadFormat,
    /// `format = "s3-notification"`: the tenant of each record's bucket.
    pub bucket_tenants: Option<std::collections::BTreeMap<String, String>>,
    pub content_type: Option<String>,
    pub max_in_flight: Option<usize>,
    pub max_in_flight_bytes: Option<usize>,
    pub max_message_bytes: Option<usize>,
    #[serde(default, with = "duration::option")]
    pub shutdown_timeout: Option<Duration>,
    pub backoff: Option<BackoffConfig>,
}

/// One bridge with `[defaults]` applied. Two specs are equal exactly when a reload may
/// leave the running bridge alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BridgeSpec {
    pub name: String,
    /// Fixed text, or a template of the transport's subject or a header
    /// (`{subject[1]}`); never of the payload. Unused with `bucket_tenants`.
    pub tenant: String,
    /// `format = "s3-notification"` only: bucket name -> tenant (each a valid tenant).
    /// Records of other buckets are dead-lettered as `invalid_tenant`.
    pub bucket_tenants: Option<std::collections::BTreeMap<String, String>>,
    /// The `<source>` word of the routing key.
    pub source_name: String,
    /// Overrides the CloudEvent `source` the kind would derive.
    pub source_uri: Option<String>,
    /// The `type` template; `None` uses the subject/topic/routing key.
    pub event_type: Option<String>,
    pub time_field: Option<String>,
    pub format: PayloadFormat,
    pub content_type: Option<String>,
    pub max_in_flight: usize,
    pub max_in_flight_bytes: usize,
    pub max_message_bytes: usize,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    pub backoff: BackoffConfig,
    /// `[defaults] state_dir`.
    pub state_dir: std::path::PathBuf,
    /// `[defaults] deadletter_sample_bytes`.
    pub deadletter_sample_bytes: usize,
    pub source: SourceSpec,
}

impl BridgeSpec {
    pub fn kind(&self) -> &'static str {
        self.source.kind()
    }

    /// The tenant when it is the same for every message; `None` for a tenant template
    /// such as `{subject[1]}`, or tenants by bucket (`bucket_tenants`).
    pub fn fixed_tenant(&self) -> Option<&str> {
        (self.bucket_tenants.is_none() && !self.tenant.contains('{'))
            .then_some(self.tenant.as_str())
    }

    /// The tenant setting as `check` shows it: the `tenant` text, or the buckets'
    /// tenants (`bucket_tenants`).
    pub fn tenant_setting(&self) -> String {
        match &self.bucket_tenants {
            Some(buckets) => {
                let pairs: Vec<String> = buckets
                    .iter()
                    .map(|(bucket, tenant)| format!("{bucket} = {tenant}"))
                    .collect();
                format!("by bucket: {}", pairs.join(", "))
            }
            None => self.tenant.clone(),
        }
    }

    /// The binding pattern matching every event of this bridge.
    pub fn routing_pattern(&self) -> String {
        crate::routing::event_pattern(self.fixed_tenant(), &self.source_name)
    }

    /// The dead-letter routing key (a pattern when the tenant varies per message).
    pub fn deadletter_pattern(&self) -> String {
        crate::routing::deadletter_pattern(self.fixed_tenant(), &self.source_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fields::names;

    const EXAMPLE: &str = include_str!("../../config.example.toml");

    /// True when `key` is documented: a `key = ...` line (commented out or not), a
    /// `[... .key]` table header, or an entry of the `#   key   description` lists.
    fn documented(key: &str) -> bool {
        EXAMPLE.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            let assigned = line
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with([' ', '=']));
            let line = line.trim_end();
            let header = line == format!("[{key}]")
                || line == format!("[[{key}]]")
                || (line.starts_with('[') && line.ends_with(&format!(".{key}]")));
            assigned || header
        })
    }

    #[test]
    fn the_example_documents_every_key_the_schema_accepts() {
        let mut keys: Vec<&str> = [
            names::<TopLevel>(),
            names::<ExchangeConfig>(),
            names::<AdminConfig>(),
            names::<WebhookConfig>(),
            names::<TlsConfig>(),
            names::<Defaults>(),
            names::<BackoffConfig>(),
            names::<CommonKeys>(),
        ]
        .concat();
        keys.extend(crate::sources::KINDS.accepted_keys());
        let secret_files: Vec<String> = load::Schema::new(&crate::sources::KINDS)
            .secret_keys()
            .iter()
            .filter(|key| keys.contains(key))
            .map(|key| format!("{key}_file"))
            .collect();
        keys.extend(secret_files.iter().map(String::as_str));
        let missing: Vec<&str> = keys.into_iter().filter(|key| !documented(key)).collect();
        assert!(
            missing.is_empty(),
            "config.example.toml does not document: {missing:?}"
        );
    }

    #[test]
    fn every_kind_of_this_build_is_listed_in_the_example() {
        for kind in crate::sources::KINDS.documented_names() {
            assert!(
                EXAMPLE.contains(&format!("kind = \"{kind}\"")),
                "no example bridge of kind {kind}"
            );
        }
    }
}
