//! The publisher's connection: connect in confirm mode, declare the exchanges, hand the
//! channel to publishers, and reconnect with backoff when it breaks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Current;
use crate::backoff::Backoff;
use crate::config::ExchangeConfig;
use crate::metrics::Registry;
use crate::short_string::{constant, short_string};

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("no answer from the broker within {0:?}")]
    Timeout(std::time::Duration),
}

pub(super) struct Manager {
    pub(super) config: ExchangeConfig,
    pub(super) sender: watch::Sender<Option<Current>>,
    pub(super) broken: Arc<(AtomicU64, Notify)>,
    pub(super) cancel: CancellationToken,
    pub(super) last_error: Arc<Mutex<Option<String>>>,
    pub(super) connects: Arc<AtomicU64>,
    pub(super) registry: Arc<Registry>,
}

impl Manager {
    pub(super) async fn run(self) {
        let mut backoff = Backoff::new(self.config.backoff.clone());
        let mut generation = 0u64;
        loop {
            // A broker that accepts TCP but never answers must not hang us: the connect
            // is bounded by confirm_timeout too.
            let timeout = self.config.confirm_timeout;
            let attempt = tokio::select! {
                result = tokio::time::timeout(timeout, self.connect()) => result
                    .unwrap_or_else(|_| Err(ConnectError::Timeout(timeout))),
                _ = self.cancel.cancelled() => break,
            };
            match attempt {
                Ok((connection, channel)) => {
                    generation += 1;
                    backoff.reset();
                    *self.last_error.lock().expect("lock") = None;
                    self.connects.fetch_add(1, Relaxed);
                    self.registry.exchange_up.set(1);
                    tracing::info!(exchange = %self.config.name, "connected to the exchange");
                    let mut events = connection.events_listener();
                    self.sender.send_replace(Some(Current {
                        generation,
                        channel: channel.clone(),
                    }));
                    let reason = loop {
                        tokio::select! {
                            _ = self.cancel.cancelled() => break None,
                            _ = self.broken.1.notified() => {
                                if self.broken.0.load(Relaxed) >= generation {
                                    break Some("a publish failed on this connection".to_string());
                                }
                            }
                            event = events.next() => match event {
                                Some(lapin::Event::Error(error)) => break Some(error.to_string()),
                                None => break Some("connection closed".to_string()),
                                Some(_) => {}
                            },
                        }
                    };
                    self.sender.send_replace(None);
                    self.registry.exchange_up.set(0);
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        connection.close(200, constant("broker-bridge reconnecting")),
                    )
                    .await;
                    match reason {
                        None => break,
                        Some(reason) => {
                            tracing::warn!(exchange = %self.config.name, %reason, "exchange connection lost; reconnecting");
                            *self.last_error.lock().expect("lock") = Some(reason);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(exchange = %self.config.name, %error, "cannot connect to the exchange; retrying");
                    *self.last_error.lock().expect("lock") = Some(error.to_string());
                }
            }
            if !backoff.wait(&self.cancel).await {
                break;
            }
        }
        self.registry.exchange_up.set(0);
    }

    async fn connect(&self) -> Result<(Connection, Channel), ConnectError> {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("broker-bridge"));
        let connection = Connection::connect(self.config.url.expose(), properties).await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare(&channel, &self.config.name, &self.config).await?;
            if let Some(deadletter) = &self.config.deadletter {
                declare(&channel, deadletter, &self.config).await?;
            }
            Ok::<_, lapin::Error>(channel)
        };
        match setup.await {
            Ok(channel) => Ok((connection, channel)),
            Err(error) => {
                let _ = connection.close(200, constant("setup failed")).await;
                Err(error.into())
            }
        }
    }
}

async fn declare(
    channel: &Channel,
    name: &str,
    config: &ExchangeConfig,
) -> Result<(), lapin::Error> {
    let mut arguments = FieldTable::default();
    if let Some(alternate) = &config.alternate_exchange {
        arguments.insert(
            constant("alternate-exchange"),
            AMQPValue::LongString(LongString::from(alternate.as_str())),
        );
    }
    // Exchange names are checked when the config is loaded.
    let name = short_string("the exchange name", name)
        .map_err(|e| lapin::Error::from(std::io::Error::other(e)))?;
    channel
        .exchange_declare(
            name,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: config.durable,
                passive: !config.declare,
                ..Default::default()
            },
            arguments,
        )
        .await
}
