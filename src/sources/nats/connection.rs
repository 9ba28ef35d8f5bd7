//! The connection keys both NATS kinds share (server URLs, credentials, TLS), how they
//! are read and checked, and how a client connects with them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::TlsOptions;
use crate::config::fields;
use crate::message::SourceError;
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

pub(super) fn parse_parts<K: for<'de> Deserialize<'de>>(
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

/// `host:port` of the first server, without credentials, for CloudEvent sources.
pub(super) fn server_label(url: &Secret) -> String {
    // Redacted first: a `,` in a password would otherwise split the list inside it.
    let url = crate::secret::redact_url(url.expose());
    let first = url.split(',').next().unwrap_or("").trim();
    let without_scheme = first.split_once("://").map_or(first, |(_, rest)| rest);
    let without_credentials = without_scheme
        .rsplit_once('@')
        .map_or(without_scheme, |(_, host)| host);
    without_credentials.trim_end_matches('/').to_owned()
}

pub(super) async fn connect_client(
    connection: &NatsConnection,
    bridge: &str,
) -> Result<async_nats::Client, SourceError> {
    connect_with(connection, bridge, async_nats::ConnectOptions::new()).await
}

pub(super) async fn connect_with(
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
