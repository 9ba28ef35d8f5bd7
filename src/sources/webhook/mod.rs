//! `kind = "webhook"`: HTTP requests on the shared `[webhook] listen` listener, each
//! bridge on its own path.
//!
//! # Delivery
//!
//! A request is answered only when its fate is known: 200 after the exchange confirmed
//! the event, 400 after it confirmed the dead-letter copy of a body that cannot become
//! an event, 503 with `Retry-After` while the exchange is down, while the bridge is not
//! running, when the bridge's queue stays full, or when no confirm came within
//! `response_timeout`. A 2xx is never sent for an event that was not published.
//!
//! A request whose sender has stopped waiting (timed out, disconnected) before the
//! bridge took it is not published: the sender was told 503 and sends it again. Once
//! taken, it is published even if the sender leaves (at-least-once); with `id_header`
//! the copy the sender sends again has the same event id.
//!
//! # Authentication
//!
//! Any combination of a token as the last path segment (`/hooks/github/<token>`, a URL
//! that can be pasted into GitHub, GitLab, Docker Hub or CircleCI), a bearer token, and
//! an HMAC-SHA256 signature of the raw body in a header (GitHub's `X-Hub-Signature-256:
//! sha256=<hex>`, or the Slack, Stripe and Standard Webhooks schemes of
//! `webhook_auth`, whose signed timestamps must be within `timestamp_tolerance`). Every
//! configured check must pass. Secrets are compared in constant time. Every failed check
//! is answered the same (403 `forbidden`), so a scanner learns nothing about which
//! tokens exist; the reason goes to the log and the metric label.
//!
//! A delivery id (`id_header`, or the scheme's signed id) that was published within
//! `timestamp_tolerance` is answered 200 without being published again.

//!
//! # Layout
//!
//! `spec` holds the keys and their defaults, `hub` the shared listener and the URLs of
//! the hooks, `request` the handler that checks and answers each request, `source` the
//! bridge's side that takes the requests and answers them after the confirm, and `auth`
//! the signature schemes and the replay guard.

use axum::http::{Method, header};
use serde_json::{Map, Value};

mod auth;
mod hub;
mod request;
mod source;
mod spec;

use auth::SignatureScheme;
use spec::{check_path, signature_check};

use super::common::context::{ConnectContext, Source};
use super::common::kind::SourceKind;
use crate::config::{BridgeSpec, fields};
use crate::message::SourceError;

pub use hub::{Hub, base_url, generate_token, hook_url};
pub use spec::{DEFAULT_TYPE, WebhookSpec};

/// `kind = "webhook"`: HTTP requests on the shared `[webhook]` listener.
pub struct Webhook;

#[async_trait::async_trait]
impl SourceKind for Webhook {
    const NAME: &'static str = "webhook";
    const SECRET_KEYS: &'static [&'static str] = &["path_token", "bearer_token", "hmac_secret"];
    type Spec = WebhookSpec;

    fn parse(table: Map<String, Value>) -> Result<WebhookSpec, String> {
        fields::reject_unknown(&table, fields::names::<WebhookSpec>(), "kind `webhook`")?;
        let mut spec: WebhookSpec = fields::parse(Value::Object(table))?;
        if let Some(path) = &spec.path {
            check_path(path).map_err(|message| format!("key `path`: {message}"))?;
        }
        if spec.methods.is_empty() {
            return Err("key `methods`: name at least one HTTP method".into());
        }
        for method in &mut spec.methods {
            *method = method.to_ascii_uppercase();
            if Method::from_bytes(method.as_bytes()).is_err() {
                return Err(format!("key `methods`: `{method}` is not an HTTP method"));
            }
        }
        for (key, secret) in [
            ("path_token", &spec.path_token),
            ("bearer_token", &spec.bearer_token),
            ("hmac_secret", &spec.hmac_secret),
        ] {
            if secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
                return Err(format!("key `{key}`: must not be empty"));
            }
        }
        if let Some(token) = &spec.path_token
            && !token
                .expose()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
        {
            return Err(
                "key `path_token`: use only A-Z a-z 0-9 - _ . ~ (it is a URL path segment; `broker-bridge token` makes one)"
                    .into(),
            );
        }
        if spec.hmac_header.is_empty() || header::HeaderName::try_from(&spec.hmac_header).is_err() {
            return Err(format!(
                "key `hmac_header`: `{}` is not a header name",
                spec.hmac_header
            ));
        }
        if let Some(name) = &spec.id_header
            && header::HeaderName::try_from(name).is_err()
        {
            return Err(format!("key `id_header`: `{name}` is not a header name"));
        }
        let authenticated =
            spec.path_token.is_some() || spec.bearer_token.is_some() || spec.hmac_secret.is_some();
        if !authenticated && !spec.allow_unauthenticated {
            return Err(
                "set `path_token`, `bearer_token` or `hmac_secret` (or `allow_unauthenticated = true` behind a proxy that authenticates)"
                    .into(),
            );
        }
        if spec.response_timeout.is_zero() {
            return Err("key `response_timeout`: must be more than 0".into());
        }
        if spec.timestamp_tolerance.is_zero() {
            return Err("key `timestamp_tolerance`: must be more than 0".into());
        }
        if spec.hmac_scheme != SignatureScheme::Plain && spec.hmac_secret.is_none() {
            return Err("key `hmac_scheme`: set `hmac_secret` too".into());
        }
        signature_check(&spec)?;
        Ok(spec)
    }

    fn accepted_keys() -> Vec<&'static str> {
        fields::names::<WebhookSpec>().to_vec()
    }

    fn describe(spec: &WebhookSpec) -> String {
        let mut checks = Vec::new();
        if spec.path_token.is_some() {
            checks.push("path token".to_owned());
        }
        if spec.bearer_token.is_some() {
            checks.push("bearer token".to_owned());
        }
        if spec.hmac_secret.is_some() {
            checks.push(match spec.hmac_scheme {
                SignatureScheme::Plain => format!("HMAC-SHA256 in {}", spec.hmac_header),
                SignatureScheme::Slack => "Slack signature".into(),
                SignatureScheme::Stripe => "Stripe signature".into(),
                SignatureScheme::StandardWebhooks => "Standard Webhooks signature".into(),
            });
        }
        if checks.is_empty() {
            checks.push("no authentication".to_owned());
        }
        format!(
            "{} {}{} ({}); at-least-once: answered 200 only after the exchange confirmed",
            spec.methods.join("|"),
            spec.path.as_deref().unwrap_or("/hooks/<name>"),
            if spec.path_token.is_some() {
                "/<token>"
            } else {
                ""
            },
            checks.join(", ")
        )
    }

    /// Refuses configs in which two webhook bridges could answer the same URL.
    fn check_bridges(bridges: &[(&BridgeSpec, &WebhookSpec)]) -> Result<(), (String, String)> {
        let mut seen: Vec<(String, &str)> = Vec::new();
        for (bridge, spec) in bridges {
            let path = spec.hook_path(&bridge.name);
            for (other_path, other) in &seen {
                let nested =
                    |a: &str, b: &str| a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
                if *other_path == path || nested(&path, other_path) || nested(other_path, &path) {
                    return Err((
                        bridge.name.clone(),
                        format!("key `path`: `{path}` overlaps `{other_path}` of bridge `{other}`"),
                    ));
                }
            }
            seen.push((path, &bridge.name));
        }
        Ok(())
    }

    async fn connect(
        spec: &WebhookSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        source::connect(spec, context).await
    }
}

#[cfg(test)]
mod tests;
