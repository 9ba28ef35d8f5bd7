//! The keys of `kind = "s3"` and their defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{TlsOptions, duration};
use crate::secret::Secret;

/// `kind = "s3"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Spec {
    /// The bucket to poll (one per bridge).
    pub bucket: String,
    /// Only keys starting with this (sent to the store as the listing prefix).
    #[serde(default)]
    pub prefix: String,
    /// Only keys ending with this (filtered here).
    #[serde(default)]
    pub suffix: String,
    /// `http://127.0.0.1:9000` for MinIO, moto...; default: AWS.
    pub endpoint_url: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`host/bucket/key`); default: true with `endpoint_url`.
    pub path_style: Option<bool>,
    /// Static credentials; without them, the standard AWS credential chain.
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub tls: Option<TlsOptions>,
    #[serde(default = "default_poll_interval", with = "duration")]
    pub poll_interval: Duration,
    /// Publish an event for objects gone from the listing.
    #[serde(default)]
    pub removed: bool,
    /// CloudEvent type of created and changed objects (unless `type` is set).
    #[serde(default = "default_created_type")]
    pub created_type: String,
    /// CloudEvent type of removed objects (unless `type` is set).
    #[serde(default = "default_removed_type")]
    pub removed_type: String,
    /// Objects up to this size travel inline in `data.body`; 0 never.
    #[serde(default)]
    pub inline_max_bytes: u64,
    /// Keys per listing request (1..=1000).
    #[serde(default = "default_page_size")]
    pub page_size: i32,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_created_type() -> String {
    "com.amazonaws.s3.ObjectCreated".into()
}
fn default_removed_type() -> String {
    "com.amazonaws.s3.ObjectRemoved".into()
}
fn default_page_size() -> i32 {
    1000
}
