//! The settings of `kind = "kafka"`: its keys, how they are read and checked, and the
//! librdkafka configuration they make (with the `properties` passed through).

use std::collections::BTreeMap;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::config::TlsOptions;

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
    pub(super) fn label(self) -> &'static str {
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
    pub(super) fn name(self) -> &'static str {
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

/// Largest Kafka topic name.
const MAX_TOPIC_LENGTH: usize = 249;

/// How often librdkafka reports statistics (the lag).
const STATISTICS_INTERVAL_MS: &str = "1000";
/// How often stored offsets are committed unless `properties` say otherwise.
const DEFAULT_COMMIT_INTERVAL_MS: &str = "1000";

impl KafkaSpec {

    /// Refuses settings that are wrong, that would be silently ignored, or that would
    /// take the offsets out of broker-bridge's hands.
    pub(super) fn validate(&self) -> Result<(), String> {
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
    pub(super) fn cluster(&self) -> String {
        self.cluster
            .clone()
            .unwrap_or_else(|| self.brokers.first().cloned().unwrap_or_default())
    }

    /// Topics named literally (not regular expressions).
    pub(super) fn literal_topics(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|t| !t.starts_with('^'))
            .cloned()
            .collect()
    }

    /// The whole librdkafka configuration of the bridge's consumer.
    pub(super) fn client_config(&self, bridge: &str) -> ClientConfig {
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
    pub(super) fn read_committed(&self) -> bool {
        self.properties
            .get("isolation.level")
            .is_none_or(|level| level != "read_uncommitted")
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
