//! The settings of `kind = "mqtt"`: the keys, their defaults and the checks that refuse
//! what would be ignored or lose messages; and the broker URL they name.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{TlsOptions, duration};
use crate::secret::Secret;

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

impl Protocol {
    pub(super) fn label(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `protocol = 5` is an easy slip in TOML; take the number too.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Text(String),
            Number(u64),
        }
        match Given::deserialize(deserializer)? {
            Given::Text(text) if text == "3.1.1" => Ok(Protocol::V311),
            Given::Text(text) if text == "5" || text == "5.0" => Ok(Protocol::V5),
            Given::Number(5) => Ok(Protocol::V5),
            _ => Err(serde::de::Error::custom(
                "the MQTT protocol is \"3.1.1\" or \"5\"",
            )),
        }
    }
}

/// `kind = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSpec {
    /// Broker URL: `mqtt://host:1883` (plain TCP) or `mqtts://host:8883` (TLS).
    #[serde(default = "default_url")]
    pub url: Secret,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Topic filters to subscribe to; wildcards `+` (one level) and `#` (the rest).
    pub topics: Vec<String>,
    /// 1: at-least-once (default). 0: at-most-once.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Names the session; default `broker-bridge-<bridge name>`. Keep it stable across
    /// restarts, and give each replica its own.
    pub client_id: Option<String>,
    /// MQTT 5: subscribe as `$share/<group>/<filter>`, so replicas split the messages.
    pub shared_group: Option<String>,
    /// MQTT 5: how long the broker keeps the session while broker-bridge is away.
    #[serde(default, with = "duration::option")]
    pub session_expiry: Option<Duration>,
    #[serde(default = "default_keep_alive", with = "duration")]
    pub keep_alive: Duration,
    pub user: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<Secret>,
    pub tls: Option<TlsOptions>,
}

fn default_url() -> Secret {
    "mqtt://127.0.0.1:1883".into()
}

fn default_qos() -> u8 {
    1
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// MQTT 5 session expiry when the config gives none: long enough to ride out a night
/// with the edge box switched off, short enough that an abandoned session goes away.
pub(super) const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(24 * 3600);

impl MqttSpec {
    /// Refuses settings that would otherwise be silently ignored or quietly lose messages.
    pub(super) fn validate(&self) -> Result<(), String> {
        let endpoint = Endpoint::parse(self.url.expose()).map_err(|e| format!("key `url`: {e}"))?;
        if self.topics.is_empty() {
            return Err(
                "key `topics`: give at least one topic filter, e.g. [\"sensors/#\"]".into(),
            );
        }
        for (index, topic) in self.topics.iter().enumerate() {
            check_filter(topic).map_err(|e| format!("key `topics`: `{topic}` {e}"))?;
            if self.topics[..index].contains(topic) {
                return Err(format!("key `topics`: `{topic}` is listed twice"));
            }
        }
        match self.qos {
            0 | 1 => {}
            2 => {
                return Err(
                    "key `qos`: 2 is not supported; publishing to the exchange is \
                            at-least-once, so exactly-once cannot hold end to end. Use 1 \
                            (consumers deduplicate on source and id)"
                        .into(),
                );
            }
            other => return Err(format!("key `qos`: {other} is not a QoS; use 1 or 0")),
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 65_535)
        {
            return Err(
                "key `client_id`: must be 1 to 65535 bytes (it names the persistent session)"
                    .into(),
            );
        }
        if let Some(group) = &self.shared_group {
            if self.protocol != Protocol::V5 {
                return Err(
                    "key `shared_group`: shared subscriptions need protocol = \"5\" \
                            (an MQTT 3.1.1 broker may take `$share/...` for an ordinary topic \
                            and deliver nothing)"
                        .into(),
                );
            }
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(
                    "key `shared_group`: must be a non-empty name without `/`, `+` or `#`".into(),
                );
            }
        }
        if let Some(expiry) = self.session_expiry {
            if self.protocol != Protocol::V5 {
                return Err(
                    "key `session_expiry`: only for protocol = \"5\"; a 3.1.1 session \
                            lasts until the broker drops it (Mosquitto: \
                            persistent_client_expiration)"
                        .into(),
                );
            }
            if expiry.as_secs() == 0 {
                return Err(
                    "key `session_expiry`: 0 ends the session with each connection, \
                            so messages published while broker-bridge is away are lost; give \
                            a duration such as \"24h\""
                        .into(),
                );
            }
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive.as_secs() > 65_535 {
            return Err("key `keep_alive`: must be between 5s and 65535s".into());
        }
        if self.password.is_some() && self.user.is_none() {
            return Err("key `password`: needs `user` too".into());
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("key `tls`: `cert_file` and `key_file` go together".into());
            }
            let configured = tls.required
                || tls.ca_file.is_some()
                || tls.cert_file.is_some()
                || tls.key_file.is_some();
            if configured && !endpoint.tls {
                return Err(format!(
                    "key `tls`: the url `{}` is plain TCP; use mqtts:// for TLS",
                    self.url.redacted()
                ));
            }
        }
        Ok(())
    }

    /// The client id, which names the broker's session for this bridge.
    pub(super) fn client_id(&self, bridge: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("broker-bridge-{bridge}"))
    }

    /// The filters as subscribed, with the shared-subscription prefix.
    pub(super) fn filters(&self) -> Vec<(String, u8)> {
        self.topics
            .iter()
            .map(|topic| {
                let filter = match &self.shared_group {
                    Some(group) => format!("$share/{group}/{topic}"),
                    None => topic.clone(),
                };
                (filter, self.qos)
            })
            .collect()
    }

    pub(super) fn session_expiry(&self) -> Duration {
        self.session_expiry.unwrap_or(DEFAULT_SESSION_EXPIRY)
    }
}

pub(super) fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Checks a topic filter the way MQTT does, with a message that says what is wrong.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("is empty".into());
    }
    if filter.len() > 65_535 || filter.contains('\0') {
        return Err("is not a valid topic filter".into());
    }
    if filter.starts_with("$share/") {
        return Err(
            "is a shared subscription; write the plain filter and set `shared_group`".into(),
        );
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return Err("has `#` that is not the whole last level".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("has `+` that is not a whole level".into());
        }
    }
    Ok(())
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
}

impl Endpoint {
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let usage = "must look like mqtt://host:1883 or mqtts://host:8883";
        let (scheme, rest) = url.trim().split_once("://").ok_or(usage)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme `{other}` is not mqtt:// or mqtts://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(
                "credentials in the url are not read; use `user` and `password` (or \
                 password_file)"
                    .into(),
            );
        }
        if rest.contains(['/', '?', '#']) {
            return Err(format!("{usage} (no path or query)"));
        }
        let (host, port) = match rest.strip_prefix('[') {
            // An IPv6 literal keeps its brackets: rumqttc joins host and port as text.
            Some(v6) => {
                let (address, after) = v6.split_once(']').ok_or(usage)?;
                (format!("[{address}]"), after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (rest.to_owned(), None),
            },
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("{usage} (the host is missing)"));
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{port}` is not a port number"))?,
        };
        Ok(Endpoint { tls, host, port })
    }

    /// `host:port`, for CloudEvent sources and messages.
    pub(super) fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(super) fn scheme(&self) -> &'static str {
        if self.tls { "mqtts" } else { "mqtt" }
    }
}
