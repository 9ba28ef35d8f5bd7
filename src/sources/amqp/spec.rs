//! The settings of an amqp bridge: keys, defaults, validation and the loop guard of
//! `check`.

use std::collections::BTreeMap;

use lapin::uri::AMQPUri;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::endpoint::Endpoint;
use crate::config::{BridgeSpec, ExchangeConfig, TlsOptions};
use crate::routing;
use crate::secret::Secret;
use crate::short_string::MAX_SHORT_STRING;

/// `kind = "amqp"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSpec {
    /// Broker URL, `amqp://user:password@host:5672/vhost` (the vhost `/` is `%2f`);
    /// `amqps://` for TLS.
    #[serde(default = "default_url")]
    pub url: Secret,
    /// User name instead of the one in `url` (with `password`).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// TLS settings for an `amqps://` url.
    pub tls: Option<TlsOptions>,
    /// The queue to consume.
    pub queue: String,
    /// Declare the queue on every connect; `false`: it must exist (passive declare).
    #[serde(default = "default_true")]
    pub declare: bool,
    /// Queue settings, with `declare = true` only. Default: durable, not exclusive, not
    /// auto-delete.
    pub durable: Option<bool>,
    pub exclusive: Option<bool>,
    pub auto_delete: Option<bool>,
    /// Queue arguments (`x-queue-type`, `x-max-length`...): text, integers or booleans.
    #[serde(default)]
    pub arguments: BTreeMap<String, Value>,
    /// Bind the queue to this existing exchange on every connect.
    pub bind_exchange: Option<String>,
    /// The binding keys for `bind_exchange`; default `["#"]`.
    pub binding_keys: Option<Vec<String>>,
    /// Default `broker-bridge-<bridge name>`.
    pub consumer_tag: Option<String>,
}

fn default_url() -> Secret {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

fn default_true() -> bool {
    true
}

impl AmqpSpec {
    pub fn durable(&self) -> bool {
        self.durable.unwrap_or(true)
    }

    pub fn exclusive(&self) -> bool {
        self.exclusive.unwrap_or(false)
    }

    pub fn auto_delete(&self) -> bool {
        self.auto_delete.unwrap_or(false)
    }

    /// The binding keys, when the queue is bound to an exchange.
    pub fn binding_keys(&self) -> Vec<&str> {
        match (&self.bind_exchange, &self.binding_keys) {
            (None, _) => Vec::new(),
            (Some(_), None) => vec!["#"],
            (Some(_), Some(keys)) => keys.iter().map(String::as_str).collect(),
        }
    }

    /// Refuses settings that are wrong or that would otherwise be silently ignored.
    pub(super) fn validate(&self) -> Result<(), String> {
        let url = self.url.expose();
        let endpoint = Endpoint::parse(url).map_err(|e| format!("key `url`: {e}"))?;
        // The URL holds a password: the errors never repeat it.
        url.parse::<AMQPUri>().map_err(|e| {
            let e = e.replace(url, "<url>");
            format!("key `url`: not an AMQP URL: {e}")
        })?;
        match (&self.user, &self.password) {
            (Some(_), None) => return Err("key `user`: needs `password` too".into()),
            (None, Some(_)) => return Err("key `password`: needs `user` too".into()),
            (Some(_), Some(_)) if endpoint.has_credentials => {
                return Err(
                    "keys `user`/`password`: the url has credentials too; give them in one place"
                        .into(),
                );
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if !endpoint.tls {
                return Err(if tls.required {
                    "key `tls.required`: the url is amqp://; use amqps:// for TLS".into()
                } else {
                    "key `tls`: TLS settings need an amqps:// url".into()
                });
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("key `tls`: `cert_file` and `key_file` go together".into());
            }
        }
        short_string("queue", &self.queue)?;
        if self.declare && self.queue.starts_with("amq.") {
            return Err(
                "key `queue`: names starting with `amq.` are reserved by RabbitMQ; set declare = false to consume such a queue"
                    .into(),
            );
        }
        if !self.declare {
            let set = [
                ("durable", self.durable.is_some()),
                ("exclusive", self.exclusive.is_some()),
                ("auto_delete", self.auto_delete.is_some()),
                ("arguments", !self.arguments.is_empty()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "key `{key}`: only used with declare = true (declare = false consumes an existing queue as it is)"
                ));
            }
        }
        for (name, value) in &self.arguments {
            short_string(&format!("arguments.{name}"), name)?;
            if !(value.is_string() || value.is_i64() || value.is_boolean()) {
                return Err(format!(
                    "key `arguments.{name}`: must be text, a whole number or true/false"
                ));
            }
        }
        match self.arguments.get("x-queue-type") {
            None => {}
            Some(Value::String(kind)) if kind == "quorum" => {
                let refused = if !self.durable() {
                    Some("durable")
                } else if self.exclusive() {
                    Some("exclusive")
                } else if self.auto_delete() {
                    Some("auto_delete")
                } else {
                    None
                };
                if let Some(key) = refused {
                    return Err(format!(
                        "key `{key}`: quorum queues are durable, not exclusive and not auto-delete"
                    ));
                }
            }
            Some(Value::String(kind)) if kind == "stream" => {
                return Err(
                    "key `arguments.x-queue-type`: stream queues are not supported: an ack does not remove a message from a stream, and a consumer that reconnects starts after what arrived meanwhile"
                        .into(),
                );
            }
            Some(Value::String(_)) => {}
            Some(_) => return Err("key `arguments.x-queue-type`: must be text".into()),
        }
        match (&self.bind_exchange, &self.binding_keys) {
            (None, Some(_)) => {
                return Err("key `binding_keys`: needs `bind_exchange`".into());
            }
            (Some(exchange), keys) => {
                if exchange.is_empty() {
                    return Err(
                        "key `bind_exchange`: the default exchange cannot be bound; without bind_exchange the queue gets what is published to it by name"
                            .into(),
                    );
                }
                short_string("bind_exchange", exchange)?;
                if keys.as_ref().is_some_and(Vec::is_empty) {
                    return Err(
                        "key `binding_keys`: give at least one key (or leave it out for [\"#\"])"
                            .into(),
                    );
                }
                for key in keys.iter().flatten() {
                    if !crate::short_string::fits(key) {
                        return Err(format!(
                            "key `binding_keys`: `{key}` is longer than {MAX_SHORT_STRING} bytes"
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(tag) = &self.consumer_tag {
            short_string("consumer_tag", tag)?;
        }
        Ok(())
    }

    /// The loop guard: refuses a queue bound, on the exchange's own broker, to the routing
    /// exchange (or its dead-letter or alternate exchange) with a key that matches what
    /// this bridge publishes there.
    pub fn check(&self, bridge: &BridgeSpec, exchange: &ExchangeConfig) -> Result<(), String> {
        let Some(bound) = self.bind_exchange.as_deref() else {
            return Ok(());
        };
        let (Ok(ours), Ok(theirs)) = (
            Endpoint::parse(self.url.expose()),
            Endpoint::parse(exchange.url.expose()),
        ) else {
            return Ok(());
        };
        if !ours.same_broker(&theirs) {
            return Ok(());
        }
        let events = ("events", bridge.routing_pattern());
        let dead_letters = ("dead letters", bridge.deadletter_pattern());
        let deadletter_exchange = exchange.deadletter.as_deref().unwrap_or(&exchange.name);
        let dead_letters_on_main = deadletter_exchange == exchange.name;
        // What of ours arrives on the bound exchange, and what that exchange is to us.
        let mut arriving = Vec::new();
        let mut role = None;
        if bound == exchange.name {
            arriving.push(events.clone());
            if dead_letters_on_main {
                arriving.push(dead_letters.clone());
            }
            role.get_or_insert("the routing exchange");
        }
        if bound == deadletter_exchange && !dead_letters_on_main {
            arriving.push(dead_letters.clone());
            role.get_or_insert("the dead-letter exchange");
        }
        if exchange.alternate_exchange.as_deref() == Some(bound) {
            // Unroutable events (and dead letters published to the routing exchange).
            arriving.push(events.clone());
            if dead_letters_on_main {
                arriving.push(dead_letters.clone());
            }
            role.get_or_insert("the alternate exchange of the routing exchange");
        }
        let Some(role) = role else {
            return Ok(());
        };
        for key in self.binding_keys() {
            for (what, pattern) in &arriving {
                if routing::patterns_overlap(key, pattern) {
                    return Err(format!(
                        "key `binding_keys`: `{key}` on {role} `{bound}` matches this bridge's own {what} ({pattern}): it would consume what it publishes"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A name that goes on the wire as an AMQP short string.
fn short_string(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("key `{key}`: must not be empty"));
    }
    if !crate::short_string::fits(value) {
        return Err(format!(
            "key `{key}`: must be at most {MAX_SHORT_STRING} bytes"
        ));
    }
    Ok(())
}
