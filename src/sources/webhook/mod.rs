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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

mod auth;

use auth::{
    Claim, ClaimTicket, REPLAY_CAPACITY, ReplayGuard, SignatureCheck, SignatureScheme,
};
use super::common::context::{ConnectContext, ExchangeProbe, Shared, Source, SourceMetrics};
use crate::message::{Acker, Incoming, Metadata, RejectReason, SourceError, find_header};
use crate::cloudevent::{is_batch_content_type, is_json_content_type};
use crate::config::{BridgeSpec, WebhookConfig, duration, fields};
use crate::metrics::Refusal;
use crate::secret::Secret;

/// The CloudEvent type when the bridge sets no `type`.
pub const DEFAULT_TYPE: &str = "broker-bridge.webhook.request";
/// Seconds a sender is asked to wait before trying again (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "5";

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
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
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

    /// The header whose value is the event id and the delivery id of a repeat.
    fn delivery_id_header(&self) -> Option<String> {
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

    pub fn describe(&self) -> String {
        let mut checks = Vec::new();
        if self.path_token.is_some() {
            checks.push("path token".to_owned());
        }
        if self.bearer_token.is_some() {
            checks.push("bearer token".to_owned());
        }
        if self.hmac_secret.is_some() {
            checks.push(match self.hmac_scheme {
                SignatureScheme::Plain => format!("HMAC-SHA256 in {}", self.hmac_header),
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
            self.methods.join("|"),
            self.path.as_deref().unwrap_or("/hooks/<name>"),
            if self.path_token.is_some() {
                "/<token>"
            } else {
                ""
            },
            checks.join(", ")
        )
    }
}

fn accepted_keys() -> Vec<&'static str> {
    fields::names::<WebhookSpec>().to_vec()
}

/// `kind = "webhook"`: HTTP requests on the shared `[webhook]` listener.
pub struct Webhook;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for Webhook {
    const NAME: &'static str = "webhook";
    const SECRET_KEYS: &'static [&'static str] = &["path_token", "bearer_token", "hmac_secret"];
    type Spec = WebhookSpec;

    fn parse(table: Map<String, Value>) -> Result<WebhookSpec, String> {
        WebhookSpec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &WebhookSpec) -> String {
        spec.describe()
    }

    fn check_bridges(bridges: &[(&BridgeSpec, &WebhookSpec)]) -> Result<(), (String, String)> {
        check_paths(bridges)
    }

    async fn connect(
        spec: &WebhookSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect(spec, context).await
    }
}

fn check_path(path: &str) -> Result<(), String> {
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

/// Refuses configs in which two webhook bridges could answer the same URL.
fn check_paths(bridges: &[(&BridgeSpec, &WebhookSpec)]) -> Result<(), (String, String)> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (bridge, spec) in bridges {
        let path = spec.hook_path(&bridge.name);
        for (other_path, other) in &seen {
            let nested = |a: &str, b: &str| a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
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

/// The URL senders reach the listener at: `public_url`, else one made from `listen`.
pub fn base_url(config: &WebhookConfig) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = if config.listen.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "localhost".into())
    } else {
        match config.listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}:{}", config.listen.port())
}

/// The full URL of a bridge's hook, token included.
pub fn hook_url(config: &WebhookConfig, bridge: &str, spec: &WebhookSpec) -> String {
    let mut url = format!("{}{}", base_url(config), spec.hook_path(bridge));
    if let Some(token) = &spec.path_token {
        url.push('/');
        url.push_str(token.expose());
    }
    url
}

/// A random secret for `path_token`, `bearer_token` or `hmac_secret`: 32 bytes from the
/// OS generator, URL-safe base64 (43 characters).
pub fn generate_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The listener all webhook bridges share, and the routes the running bridges registered.
pub struct Hub {
    config: WebhookConfig,
    routes: RwLock<HashMap<String, Arc<Route>>>,
    bound: tokio::sync::Mutex<Option<SocketAddr>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("listen", &self.config.listen)
            .finish()
    }
}

impl Hub {
    pub fn new(config: WebhookConfig) -> Arc<Hub> {
        Arc::new(Hub {
            config,
            routes: RwLock::default(),
            bound: tokio::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// Binds the listener on first use; the address it is bound to.
    async fn listening(self: &Arc<Self>) -> std::io::Result<SocketAddr> {
        let mut bound = self.bound.lock().await;
        if let Some(address) = *bound {
            return Ok(address);
        }
        let tls = match &self.config.tls {
            Some(tls) => Some(crate::listener::tls_acceptor(&tls.cert, &tls.key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(self.config.listen).await?;
        let address = listener.local_addr()?;
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(self.clone());
        crate::listener::spawn(
            listener,
            crate::metrics::Listener::Webhook,
            self.config.limits(),
            tls,
            router,
        );
        tracing::info!(%address, tls = self.config.tls.is_some(), "webhook listener up");
        *bound = Some(address);
        Ok(address)
    }

    fn register(&self, path: String, route: Route) {
        self.routes
            .write()
            .expect("routes lock")
            .insert(path, Arc::new(route));
    }

    /// The route answering `path`, and the token segment when the route has one.
    fn lookup<'p>(&self, path: &'p str) -> Option<(Arc<Route>, Option<&'p str>)> {
        let routes = self.routes.read().expect("routes lock");
        if let Some(route) = routes.get(path) {
            return Some((route.clone(), None));
        }
        let (base, last) = path.rsplit_once('/')?;
        let route = routes.get(base)?;
        route
            .path_token
            .is_some()
            .then(|| (route.clone(), Some(last)))
    }
}

impl Shared for Hub {
    /// Forgets the routes of bridges no longer configured. A configured bridge that is
    /// between runs (restarting after a reload) keeps its route, answering 503.
    fn retain(&self, bridges: &[BridgeSpec]) {
        let wanted: HashSet<String> = bridges
            .iter()
            .filter_map(|bridge| {
                super::common::kind::spec_of::<Webhook>(&bridge.source)
                    .map(|spec| spec.hook_path(&bridge.name))
            })
            .collect();
        self.routes
            .write()
            .expect("routes lock")
            .retain(|path, _| wanted.contains(path));
    }
}

/// What the listener knows of one running (or restarting) webhook bridge.
struct Route {
    methods: Vec<Method>,
    path_token: Option<Vec<u8>>,
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
struct RouteWiring {
    bridge: String,
    source_uri: String,
    max_body: usize,
    requests: mpsc::Sender<Pending>,
    exchange: ExchangeProbe,
    metrics: SourceMetrics,
}

impl Route {
    fn new(spec: &WebhookSpec, wiring: RouteWiring) -> Result<Route, String> {
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
    fn authorize_path(&self, token_segment: Option<&str>) -> Option<Refusal> {
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
    fn authorize_bearer(&self, headers: &HeaderMap) -> Option<Refusal> {
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
    fn authorize_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, Refusal> {
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
    fn accepts(&self, headers: &HeaderMap) -> bool {
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

    fn metadata(&self, headers: &HeaderMap) -> Metadata {
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
struct Pending {
    payload: Bytes,
    meta: Metadata,
    reply: oneshot::Sender<Outcome>,
    /// Its replay key's claim, settled when it is published.
    claim: Option<ClaimTicket>,
}

/// How the bridge settled a request.
#[derive(Debug)]
enum Outcome {
    Published,
    DeadLettered(RejectReason),
}

/// The listener's one handler: finds the route by path, then checks the request.
async fn answer(
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

/// The configured signature check, if any.
fn signature_check(spec: &WebhookSpec) -> Result<Option<SignatureCheck>, String> {
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

/// Registers the bridge's route (binding the listener on first use).
pub(super) async fn connect(
    spec: &WebhookSpec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let hub = context
        .listeners
        .get_or_init(|config| Hub::new(config.webhook.clone()))
        .ok_or_else(|| SourceError::Connect("no webhook listener in this process".into()))?;
    hub.listening().await.map_err(|error| {
        SourceError::Connect(format!(
            "cannot listen on {} ([webhook] listen): {error}",
            hub.config.listen
        ))
    })?;
    let path = spec.hook_path(&context.bridge);
    // Requests wait here for the bridge; each holds a body of up to max_message_bytes,
    // so the queue is sized to hold no more than max_in_flight_bytes of them. A full
    // queue answers 503 with Retry-After.
    let queue = (context.max_in_flight_bytes / context.max_message_bytes.max(1))
        .clamp(1, context.max_in_flight.max(1));
    let (sender, requests) = mpsc::channel(queue);
    let route = Route::new(
        spec,
        RouteWiring {
            bridge: context.bridge.clone(),
            source_uri: format!("{}{path}", base_url(&hub.config)),
            max_body: context.max_message_bytes,
            requests: sender,
            exchange: context.exchange.clone(),
            metrics: context.metrics.clone(),
        },
    )
    .map_err(SourceError::Connect)?;
    hub.register(path, route);
    Ok(Box::new(WebhookSource { requests }))
}

struct WebhookSource {
    requests: mpsc::Receiver<Pending>,
}

#[async_trait]
impl Source for WebhookSource {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        loop {
            let pending = self.requests.recv().await.ok_or_else(|| {
                SourceError::Subscription("the webhook route was replaced".into())
            })?;
            // Its sender already got 503 (or left) and will send it again.
            if pending.reply.is_closed() {
                continue;
            }
            return Ok(Incoming {
                payload: pending.payload,
                meta: pending.meta,
                ack: Box::new(Reply {
                    sender: pending.reply,
                    claim: pending.claim,
                }),
            });
        }
    }
}

/// Answers the waiting request.
/// Dropped without an ack (the bridge stopped), its claim frees the replay key.
struct Reply {
    sender: oneshot::Sender<Outcome>,
    claim: Option<ClaimTicket>,
}

#[async_trait]
impl Acker for Reply {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        // Settled first, so a repeat sent on the 200 is a duplicate, also when the
        // confirm came after the sender stopped waiting.
        if let Some(claim) = self.claim {
            claim.settle();
        }
        // A sender that stopped waiting is no error: the event is published.
        let _ = self.sender.send(Outcome::Published);
        Ok(())
    }

    /// A dead-lettered request frees its key: a repeat is dead-lettered again, not
    /// answered as if it had been published.
    async fn ack_dead_lettered(self: Box<Self>, reason: RejectReason) -> Result<(), SourceError> {
        let _ = self.sender.send(Outcome::DeadLettered(reason));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    fn parse(text: &str) -> Result<WebhookSpec, String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let value = serde_json::to_value(table).unwrap();
        WebhookSpec::parse(value.as_object().unwrap().clone())
    }

    fn route(spec: &WebhookSpec) -> Route {
        let (requests, _) = mpsc::channel(1);
        Route::new(
            spec,
            RouteWiring {
                bridge: "x".into(),
                source_uri: "http://hooks.example/hooks/x".into(),
                max_body: 1024,
                requests,
                exchange: ExchangeProbe::default(),
                metrics: SourceMetrics::default(),
            },
        )
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_bridge_without_authentication_is_refused_unless_allowed() {
        let error = parse("").unwrap_err();
        assert!(error.contains("path_token"), "{error}");
        assert!(parse("allow_unauthenticated = true").is_ok());
    }

    #[test]
    fn config_mistakes_name_the_key() {
        for (text, key) in [
            ("path = \"hooks\"\nbearer_token = \"t\"", "path"),
            ("path = \"/a/\"\nbearer_token = \"t\"", "path"),
            ("methods = []\nbearer_token = \"t\"", "methods"),
            ("methods = [\"PO ST\"]\nbearer_token = \"t\"", "methods"),
            ("path_token = \"a/b\"", "path_token"),
            ("bearer_token = \"\"", "bearer_token"),
            (
                "hmac_secret = \"s\"\nhmac_header = \"bad header\"",
                "hmac_header",
            ),
            (
                "bearer_token = \"t\"\nresponse_timeout = \"0s\"",
                "response_timeout",
            ),
            ("bearer_token = \"t\"\nsecret = \"x\"", "secret"),
            (
                "hmac_secret = \"s\"\ntimestamp_tolerance = \"0s\"",
                "timestamp_tolerance",
            ),
            (
                "bearer_token = \"t\"\nhmac_scheme = \"slack\"",
                "hmac_scheme",
            ),
            (
                "hmac_secret = \"whsec_!!\"\nhmac_scheme = \"standard-webhooks\"",
                "hmac_secret",
            ),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(&format!("`{key}`")), "{text}: {error}");
        }
    }

    #[test]
    fn methods_are_upper_case() {
        let spec = parse("methods = [\"post\", \"put\"]\nbearer_token = \"t\"").unwrap();
        assert_eq!(spec.methods, ["POST", "PUT"]);
    }

    #[test]
    fn path_token_checks() {
        let spec = parse("path_token = \"s3cr3t\"").unwrap();
        let route = route(&spec);
        let none = HeaderMap::new();
        assert_eq!(route.authorize_path(None), Some(Refusal::MissingCredential));
        assert_eq!(
            route.authorize_path(Some("s3cr3")),
            Some(Refusal::WrongToken)
        );
        assert_eq!(route.authorize_path(Some("s3cr3t")), None);
        assert_eq!(
            route.authorize_bearer(&none),
            None,
            "no bearer token configured"
        );
    }

    #[test]
    fn bearer_token_checks() {
        let spec = parse("bearer_token = \"abc\"").unwrap();
        let route = route(&spec);
        assert_eq!(
            route.authorize_bearer(&HeaderMap::new()),
            Some(Refusal::MissingCredential)
        );
        assert_eq!(
            route.authorize_bearer(&headers(&[("authorization", "Basic abc")])),
            Some(Refusal::MissingCredential)
        );
        assert_eq!(
            route.authorize_bearer(&headers(&[("authorization", "Bearer abd")])),
            Some(Refusal::WrongToken)
        );
        assert_eq!(
            route.authorize_bearer(&headers(&[("authorization", "bearer abc")])),
            None
        );
    }

    #[test]
    fn hmac_signature_checks() {
        let spec = parse("hmac_secret = \"It's a Secret to Everybody\"").unwrap();
        let route = route(&spec);
        let body = b"Hello, World!";
        // GitHub's documented example of X-Hub-Signature-256.
        let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign("It's a Secret to Everybody", body), github);
        assert_eq!(
            route.authorize_body(&headers(&[("x-hub-signature-256", github)]), body),
            Ok(None)
        );
        assert_eq!(
            route.authorize_body(
                &headers(&[("x-hub-signature-256", github)]),
                b"Hello, World?"
            ),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            route.authorize_body(&headers(&[("x-hub-signature-256", "sha1=00")]), body),
            Err(Refusal::MalformedSignature)
        );
        assert_eq!(
            route.authorize_body(&HeaderMap::new(), body),
            Err(Refusal::MissingCredential)
        );
    }

    #[test]
    fn hmac_header_and_prefix_are_configurable() {
        let spec = parse("hmac_secret = \"k\"\nhmac_header = \"X-Signature\"\nhmac_prefix = \"\"")
            .unwrap();
        let route = route(&spec);
        let signature = sign("k", b"{}");
        let bare = signature.strip_prefix("sha256=").unwrap();
        assert_eq!(
            route.authorize_body(&headers(&[("x-signature", bare)]), b"{}"),
            Ok(None)
        );
    }

    #[test]
    fn content_types() {
        let spec = parse("bearer_token = \"t\"").unwrap();
        let strict = route(&spec);
        for accepted in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.github+json",
            "application/cloudevents+json; charset=UTF-8",
        ] {
            assert!(
                strict.accepts(&headers(&[("content-type", accepted)])),
                "{accepted}"
            );
        }
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            crate::cloudevent::BATCH_CONTENT_TYPE,
        ] {
            assert!(
                !strict.accepts(&headers(&[("content-type", refused)])),
                "{refused}"
            );
        }
        assert!(!strict.accepts(&HeaderMap::new()));
        assert!(strict.accepts(&headers(&[
            ("content-type", "text/plain"),
            ("ce-specversion", "1.0")
        ])));
        let raw = route(&parse("bearer_token = \"t\"\nraw_bodies = true").unwrap());
        assert!(raw.accepts(&headers(&[("content-type", "text/plain")])));
        assert!(raw.accepts(&HeaderMap::new()));
    }

    #[test]
    fn metadata_hides_credentials_and_takes_the_delivery_id() {
        let spec = parse("hmac_secret = \"k\"\nid_header = \"X-GitHub-Delivery\"").unwrap();
        let route = route(&spec);
        let meta = route.metadata(&headers(&[
            ("authorization", "Bearer x"),
            ("x-hub-signature-256", "sha256=00"),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-github-event", "push"),
            ("content-type", "application/json"),
        ]));
        assert_eq!(
            meta.id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(meta.content_type.as_deref(), Some("application/json"));
        assert_eq!(find_header(&meta.headers, "X-GitHub-Event"), Some("push"));
        assert!(find_header(&meta.headers, "authorization").is_none());
        assert!(find_header(&meta.headers, "x-hub-signature-256").is_none());
        assert_eq!(meta.default_type.as_deref(), Some(DEFAULT_TYPE));
    }

    #[test]
    fn hook_urls() {
        let spec = parse("path = \"/wh/acme\"\npath_token = \"tok\"").unwrap();
        let config = WebhookConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            public_url: Some("https://hooks.example.com/".into()),
            ..WebhookConfig::default()
        };
        assert_eq!(
            hook_url(&config, "gh", &spec),
            "https://hooks.example.com/wh/acme/tok"
        );
        let local = WebhookConfig {
            listen: "[::1]:9000".parse().unwrap(),
            public_url: None,
            ..WebhookConfig::default()
        };
        let spec = parse("bearer_token = \"t\"").unwrap();
        assert_eq!(hook_url(&local, "gh", &spec), "http://[::1]:9000/hooks/gh");
    }

    #[test]
    fn tokens_are_long_random_and_path_safe() {
        let a = generate_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, generate_token());
        assert!(parse(&format!("path_token = \"{a}\"")).is_ok());
    }
}
