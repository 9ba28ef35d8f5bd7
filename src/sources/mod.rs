//! Source kinds behind one `SourceKind` trait (`common/kind.rs`), listed once in
//! `kinds!` below. A kind's folder owns its settings, its connection and its
//! acknowledgement; it imports the shared plumbing of `common/` and knows nothing of
//! other kinds, of this list or of the exchange.

pub mod common;
pub mod registry;

registry::kinds! {
    #[cfg(feature = "nats")] nats: [Nats, JetStream],
    #[cfg(feature = "mqtt")] mqtt: [Mqtt],
    #[cfg(feature = "amqp")] amqp: [Amqp],
    #[cfg(feature = "kafka")] kafka: [Kafka],
    #[cfg(feature = "s3")] s3: [S3],
    #[cfg(feature = "webhook")] webhook: [Webhook],
    #[cfg(feature = "calendar")] calendar: [Calendar],
    #[cfg(feature = "test-kinds")] dummy: [Dummy],
}

// What the daemon outside `sources` uses.
pub use common::context::{
    ConnectContext, ExchangeProbe, Listeners, Source, SourceMetrics, VERIFY_TIMEOUT, Verdict,
};
pub use common::kind::{SourceKind, spec_of};
