//! The keys of a webhook bridge (`WebhookSpec`) and their defaults, the path check of
//! parsing, and the signature check that parsing and the listener's routes both build.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::{SignatureCheck, SignatureScheme};
use crate::config::duration;
use crate::secret::Secret;

/// The CloudEvent type when the bridge sets no `type`.
pub const DEFAULT_TYPE: &str = "broker-bridge.webhook.request";

/// `kind = "webhook"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// URL path of the hook; default `/hooks/<bridge name>`.
    pub path: Option<String>,
    /// Methods that deliver an event (default POST). GET and HEAD that do not deliver
    /// are health probes: 200 when the bridge exists.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// A secret appended to the path as its last segment.
    pub path_token: Option<Secret>,
    /// A secret the sender sends as `Authorization: Bearer <token>`.
    pub bearer_token: Option<Secret>,
    /// The key of an HMAC-SHA256 signature over the raw body.
    pub hmac_secret: Option<Secret>,
    /// Header carrying the signature.
    #[serde(default = "default_hmac_header")]
    pub hmac_header: String,
    /// Text before the hex signature in that header.
    #[serde(default = "default_hmac_prefix")]
    pub hmac_prefix: String,
    /// How the sender signs: `plain` (`hmac_header`/`hmac_prefix`, GitHub and alike),
    /// `slack`, `stripe` or `standard-webhooks`.
    #[serde(default)]
    pub hmac_scheme: SignatureScheme,
    /// How far a signed timestamp may be from now, either way; also how long a
    /// published delivery id is remembered to answer a repeat without publishing it.
    #[serde(default = "default_timestamp_tolerance", with = "duration")]
    pub timestamp_tolerance: Duration,
    /// Accept requests without any of the checks above (for hooks behind a proxy that
    /// authenticates).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Header whose value becomes the event id (a delivery id such as
    /// `X-GitHub-Delivery`); without it, or when absent, a UUIDv7.
    pub id_header: Option<String>,
    /// Accept bodies that are not JSON (they travel as `data_base64` with their content
    /// type); without it they are answered 415.
    #[serde(default)]
    pub raw_bodies: bool,
    /// How long a request waits for the exchange's confirm before it is answered 503.
    #[serde(default = "default_response_timeout", with = "duration")]
    pub response_timeout: Duration,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into()]
}
fn default_hmac_header() -> String {
    "X-Hub-Signature-256".into()
}
fn default_hmac_prefix() -> String {
    "sha256=".into()
}
fn default_timestamp_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(8)
}

impl WebhookSpec {
    /// The header whose value is the event id and the delivery id of a repeat.
    pub(super) fn delivery_id_header(&self) -> Option<String> {
        self.id_header.clone().or_else(|| {
            self.hmac_secret
                .as_ref()
                .and(self.hmac_scheme.delivery_id_header())
                .map(str::to_owned)
        })
    }

    /// The path of the hook without its token.
    pub fn hook_path(&self, bridge: &str) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("/hooks/{bridge}"))
    }
}

pub(super) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!("`{path}` must start with `/` and name something"));
    }
    if path.ends_with('/') || path.contains("//") {
        return Err(format!("`{path}` must not end with `/` or hold `//`"));
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-_.~".contains(c))
    {
        return Err(format!("`{path}`: use only A-Z a-z 0-9 / - _ . ~"));
    }
    Ok(())
}

/// The configured signature check, if any.
pub(super) fn signature_check(spec: &WebhookSpec) -> Result<Option<SignatureCheck>, String> {
    let Some(secret) = &spec.hmac_secret else {
        return Ok(None);
    };
    Ok(Some(SignatureCheck {
        scheme: spec.hmac_scheme,
        key: spec
            .hmac_scheme
            .key(secret.expose())
            .map_err(|message| format!("key `hmac_secret`: {message}"))?,
        header: spec.hmac_header.clone(),
        prefix: spec.hmac_prefix.clone(),
        tolerance: spec.timestamp_tolerance,
    }))
}
