//! broker-bridge: reads messages from brokers, turns each into a CloudEvent v1.0 and
//! publishes it to one RabbitMQ topic exchange, acknowledging the source only after the
//! exchange confirmed. See `DESIGN.md` in the shared folder for the contracts.

pub mod admin;
pub mod backoff;
pub mod bridge;
pub mod cloudevent;
pub mod config;
pub mod crypto;
pub mod exchange;
pub mod listener;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod normalize;
pub mod notify;
pub mod routing;
pub mod s3notification;
pub mod secret;
pub mod short_string;
pub mod sources;
pub mod supervisor;
pub mod template;
