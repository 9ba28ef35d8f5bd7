//! For the unit tests of the exchange and of the bridge: a topic exchange and queues of
//! each test's own on the real RabbitMQ (127.0.0.1:5672, guest/guest). The queues are
//! exclusive to the test's connection and the exchange auto-deletes with its last
//! binding, so nothing is left behind and tests run side by side.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::ExchangeConfig;
use crate::short_string::{constant, short_string};

pub(crate) const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a test waits for RabbitMQ before it fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A name no other test (or earlier run) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Relaxed)
    )
}

/// A test's own exchange, and the connection its queues live on.
pub(crate) struct TestExchange {
    pub name: String,
    _connection: Connection,
    channel: Channel,
}

impl TestExchange {
    /// Declares a fresh topic exchange (not durable, auto-deleted with its last binding).
    pub async fn declare() -> TestExchange {
        let connection = tokio::time::timeout(
            PATIENCE,
            Connection::connect(AMQP_URL, ConnectionProperties::default()),
        )
        .await
        .expect("RabbitMQ answers on 127.0.0.1:5672")
        .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/brokers.sh)");
        let channel = connection.create_channel().await.unwrap();
        let name = unique("unit");
        channel
            .exchange_declare(
                named(&name),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        TestExchange {
            name,
            _connection: connection,
            channel,
        }
    }

    /// A publisher's settings for this exchange. `declare = false`: the publisher only
    /// checks that it exists, so it does not declare it durable and kept.
    pub fn config(&self) -> ExchangeConfig {
        ExchangeConfig {
            url: AMQP_URL.into(),
            name: self.name.clone(),
            declare: false,
            confirm_timeout: PATIENCE,
            ..Default::default()
        }
    }

    /// A new queue bound with `pattern`.
    pub async fn bind(&self, pattern: &str) -> String {
        self.bind_with(pattern, FieldTable::default()).await
    }

    /// A new queue bound with `pattern` that takes nothing: RabbitMQ nacks every
    /// publish routed to it (`x-max-length = 0`, `x-overflow = reject-publish`).
    pub async fn bind_refusing(&self, pattern: &str) -> String {
        let mut arguments = FieldTable::default();
        arguments.insert(constant("x-max-length"), AMQPValue::LongInt(0));
        arguments.insert(
            constant("x-overflow"),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
        self.bind_with(pattern, arguments).await
    }

    async fn bind_with(&self, pattern: &str, arguments: FieldTable) -> String {
        let queue = unique("unit-q");
        self.channel
            .queue_declare(
                named(&queue),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                named(&queue),
                named(&self.name),
                named(pattern),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue
    }

    /// The first message of `queue` as it is now (acknowledged: taken off the queue).
    pub async fn take(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(named(queue), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    }
}

/// A test's name or pattern on the wire (all of them are short).
fn named(text: &str) -> lapin::types::ShortString {
    short_string("a test's name", text).expect("test names are short")
}

/// A text header of a message.
pub(crate) fn text_header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into()),
        _ => None,
    }
}
