//! Request handling: the listener's one axum handler, the per-bridge `Route` it checks a
//! request against (credentials, method, body limit, content type, replays), the answers
//! it gives, and the rate-limited log of refusals.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use super::auth::{Claim, ClaimTicket, REPLAY_CAPACITY, ReplayGuard, SignatureCheck};
use super::hub::Hub;
use super::spec::{DEFAULT_TYPE, WebhookSpec, signature_check};
use crate::cloudevent::{is_batch_content_type, is_json_content_type};
use crate::message::{Metadata, RejectReason, find_header};
use crate::metrics::Refusal;
use crate::secret::Secret;
use crate::sources::common::context::{ExchangeProbe, SourceMetrics};

/// Seconds a sender is asked to wait before trying again (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "5";

/// What the listener knows of one running (or restarting) webhook bridge.
pub(super) struct Route {
    methods: Vec<Method>,
    pub(super) path_token: Option<Vec<u8>>,
    bearer_token: Option<Vec<u8>>,
    signature: Option<SignatureCheck>,
    /// `id_header`, else the header of the scheme's signed delivery id.
    id_header: Option<String>,
    replay: Arc<ReplayGuard>,
    bridge: String,
    refusals_logged: RefusalLog,
    raw_bodies: bool,
    max_body: usize,
    response_timeout: Duration,
    source_uri: String,
    requests: mpsc::Sender<Pending>,
    exchange: ExchangeProbe,
    metrics: SourceMetrics,
}

/// What a route is connected to, besides its bridge's settings.
pub(super) struct RouteWiring {
    pub(super) bridge: String,
    pub(super) source_uri: String,
    pub(super) max_body: usize,
    pub(super) requests: mpsc::Sender<Pending>,
    pub(super) exchange: ExchangeProbe,
    pub(super) metrics: SourceMetrics,
}

impl Route {
    pub(super) fn new(spec: &WebhookSpec, wiring: RouteWiring) -> Result<Route, String> {
        let secret_bytes = |secret: &Option<Secret>| {
            secret
                .as_ref()
                .map(|secret| secret.expose().as_bytes().to_vec())
        };
        Ok(Route {
            methods: spec
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            path_token: secret_bytes(&spec.path_token),
            bearer_token: secret_bytes(&spec.bearer_token),
            signature: signature_check(spec)?,
            id_header: spec.delivery_id_header(),
            // A timestamp up to the tolerance ahead is accepted, so its replays stay
            // possible for twice the tolerance after it arrives.
            replay: ReplayGuard::new(2 * spec.timestamp_tolerance, REPLAY_CAPACITY),
            bridge: wiring.bridge,
            refusals_logged: RefusalLog::default(),
            raw_bodies: spec.raw_bodies,
            max_body: wiring.max_body,
            response_timeout: spec.response_timeout,
            source_uri: wiring.source_uri,
            requests: wiring.requests,
            exchange: wiring.exchange,
            metrics: wiring.metrics,
        })
    }

    fn refuse(&self, refusal: Refusal) -> Response {
        self.metrics.refuse(refusal);
        self.refusals_logged.log(&self.bridge, refusal);
        let status = match refusal {
            // One answer for every failed check: which one failed is for the operator.
            _ if refusal.is_authentication() => StatusCode::FORBIDDEN,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = plain(status);
        let headers = response.headers_mut();
        match refusal {
            Refusal::Unavailable | Refusal::Timeout => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            Refusal::MethodNotAllowed => {
                let allow: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
                if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                    headers.insert(header::ALLOW, value);
                }
            }
            _ => {}
        }
        response
    }

    /// Checks the token in the URL: all a health probe needs.
    pub(super) fn authorize_path(&self, token_segment: Option<&str>) -> Option<Refusal> {
        let expected = self.path_token.as_ref()?;
        match token_segment {
            None => Some(Refusal::MissingCredential),
            Some(given) if !bool::from(given.as_bytes().ct_eq(expected)) => {
                Some(Refusal::WrongToken)
            }
            Some(_) => None,
        }
    }

    /// Checks the bearer token.
    pub(super) fn authorize_bearer(&self, headers: &HeaderMap) -> Option<Refusal> {
        if let Some(expected) = &self.bearer_token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            match given {
                None => return Some(Refusal::MissingCredential),
                Some(given) if !bool::from(given.as_bytes().ct_eq(expected)) => {
                    return Some(Refusal::WrongToken);
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Checks the body's signature (and its timestamp, where the scheme signs one);
    /// the replay key the scheme signs, if any.
    pub(super) fn authorize_body(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<String>, Refusal> {
        let Some(check) = &self.signature else {
            return Ok(None);
        };
        check
            .verify(headers, body, chrono::Utc::now().timestamp())
            .map(|verified| verified.replay_key)
    }

    /// What a repeat of this request would carry: the signed key, else the
    /// `id_header` value.
    fn replay_key(&self, signed: Option<String>, headers: &HeaderMap) -> Option<String> {
        signed.or_else(|| {
            let name = self.id_header.as_deref()?;
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
        })
    }

    /// JSON bodies, CloudEvents in binary mode, and anything when `raw_bodies` is set.
    pub(super) fn accepts(&self, headers: &HeaderMap) -> bool {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        // Batches would need one event per entry; senders can post them one by one.
        if content_type.is_some_and(is_batch_content_type) {
            return false;
        }
        self.raw_bodies
            || headers.contains_key("ce-specversion")
            || content_type.is_some_and(is_json_content_type)
    }

    pub(super) fn metadata(&self, headers: &HeaderMap) -> Metadata {
        let hidden = |name: &str| {
            name.eq_ignore_ascii_case(header::AUTHORIZATION.as_str())
                || name.eq_ignore_ascii_case(header::COOKIE.as_str())
                || name.eq_ignore_ascii_case(header::PROXY_AUTHORIZATION.as_str())
                || self
                    .signature
                    .as_ref()
                    .is_some_and(|check| check.is_signature_header(name))
        };
        // Secrets stay out of templates, so no `{header:Authorization}` can route on one.
        let headers: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| !hidden(name.as_str()))
            // HTTP allows any byte above 0x7f in a value: read lossily, never dropped,
            // so an `id_header` of UTF-8 text keeps its id (and its dedupe) on a retry.
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Metadata {
            id: self
                .id_header
                .as_deref()
                .and_then(|name| find_header(&headers, name))
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            content_type: find_header(&headers, header::CONTENT_TYPE.as_str()).map(str::to_owned),
            source_uri: self.source_uri.clone(),
            default_type: Some(DEFAULT_TYPE.to_owned()),
            received: chrono::Utc::now(),
            headers,
            ..Default::default()
        }
    }
}

fn plain(status: StatusCode) -> Response {
    let text = status.canonical_reason().unwrap_or("").to_ascii_lowercase();
    (status, format!("{text}\n")).into_response()
}

/// A request waiting for its bridge.
pub(super) struct Pending {
    pub(super) payload: Bytes,
    pub(super) meta: Metadata,
    pub(super) reply: oneshot::Sender<Outcome>,
    /// Its replay key's claim, settled when it is published.
    pub(super) claim: Option<ClaimTicket>,
}

/// How the bridge settled a request.
#[derive(Debug)]
pub(super) enum Outcome {
    Published,
    DeadLettered(RejectReason),
}

/// The listener's one handler: finds the route by path, then checks the request.
pub(super) async fn answer(
    State(hub): State<Arc<Hub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some((route, token_segment)) = hub.lookup(uri.path()) else {
        return plain(StatusCode::NOT_FOUND);
    };
    if let Some(refusal) = route.authorize_path(token_segment) {
        return route.refuse(refusal);
    }
    if !route.methods.contains(&method) {
        if method == Method::GET || method == Method::HEAD {
            return plain(StatusCode::OK);
        }
        return route.refuse(Refusal::MethodNotAllowed);
    }
    if let Some(refusal) = route.authorize_bearer(&headers) {
        return route.refuse(refusal);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > route.max_body as u64) {
        return route.refuse(Refusal::TooLarge);
    }
    let Ok(payload) = axum::body::to_bytes(body, route.max_body).await else {
        return route.refuse(Refusal::TooLarge);
    };
    // Every check before the availability one: a forged request gets its 403 whether
    // or not the exchange is up.
    let signed = match route.authorize_body(&headers, &payload) {
        Ok(signed) => signed,
        Err(refusal) => return route.refuse(refusal),
    };
    if !route.accepts(&headers) {
        return route.refuse(Refusal::UnsupportedMediaType);
    }
    if route.requests.is_closed() || !route.exchange.is_up() {
        return route.refuse(Refusal::Unavailable);
    }
    let claim = match route.replay_key(signed, &headers) {
        None => None,
        Some(key) => match route.replay.claim(&key, std::time::Instant::now()) {
            Claim::New(ticket) => Some(ticket),
            Claim::Duplicate => {
                route.metrics.count_duplicate();
                return plain(StatusCode::OK);
            }
            // The first copy may yet fail: this one is answered only once it is known.
            Claim::InFlight => return route.refuse(Refusal::Unavailable),
        },
    };
    let deadline = tokio::time::Instant::now() + route.response_timeout;
    let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, route.requests.reserve()).await else {
        return route.refuse(Refusal::Unavailable);
    };
    let (reply, outcome) = oneshot::channel();
    slot.send(Pending {
        payload,
        meta: route.metadata(&headers),
        reply,
        claim,
    });
    match tokio::time::timeout_at(deadline, outcome).await {
        Ok(Ok(Outcome::Published)) => plain(StatusCode::OK),
        Ok(Ok(Outcome::DeadLettered(reason))) => (
            StatusCode::BAD_REQUEST,
            format!(
                "rejected ({}); kept on the dead-letter route\n",
                reason.label()
            ),
        )
            .into_response(),
        // The bridge stopped before taking it, or no confirm in time.
        Ok(Err(_)) => route.refuse(Refusal::Unavailable),
        Err(_) => route.refuse(Refusal::Timeout),
    }
}

/// Logs refused requests, at most one line a second per bridge: a scanner must not
/// flood the log. The lines in between are counted in the next one.
#[derive(Default)]
struct RefusalLog {
    last_second: std::sync::atomic::AtomicI64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl RefusalLog {
    fn log(&self, bridge: &str, refusal: Refusal) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = chrono::Utc::now().timestamp();
        if self.last_second.swap(now, Relaxed) == now {
            self.suppressed.fetch_add(1, Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Relaxed);
        tracing::info!(
            bridge,
            reason = refusal.label(),
            suppressed,
            "webhook request refused"
        );
    }
}
