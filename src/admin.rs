//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/bridges`.
//!
//! Two checks guard it. The `Host` of every request must name the listener: its own IP
//! address, `localhost` when it listens on loopback (or on every address), any IP literal
//! when it listens on every address, or one in `[admin] allowed_hosts`; anything else
//! is answered 421, so a page that rebinds its own DNS name to 127.0.0.1 cannot read it.
//! Requests without `Host` (HTTP/1.0 tools) pass: browsers always send one. With
//! `[admin] token`, `/bridges` (the whole configuration) wants `Authorization: Bearer
//! <token>` (401 otherwise); `/metrics`, `/healthz` and `/readyz` stay open for
//! Prometheus and load balancers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bridge::{State as BridgeState, current_publisher};
use crate::config::AdminConfig;
use crate::message::RejectReason;
use crate::metrics::Listener;
use crate::supervisor::Shared;

/// Who may ask what: the `Host` names served and the token `/bridges` wants.
pub struct Access {
    listen: IpAddr,
    /// `[admin] allowed_hosts`: names (lower case, no trailing dot) and IP addresses.
    allowed_names: Vec<String>,
    allowed_addresses: Vec<IpAddr>,
    /// SHA-256 of the token: comparing digests in constant time hides its length too.
    token_digest: Option<[u8; 32]>,
}

impl Access {
    pub fn new(config: &AdminConfig, listen: IpAddr) -> Self {
        let (allowed_addresses, allowed_names) = config
            .allowed_hosts
            .iter()
            .map(|host| normalize_host(host))
            .partition::<Vec<String>, _>(|host| ip_literal(host).is_some());
        Access {
            listen,
            allowed_names,
            allowed_addresses: allowed_addresses
                .iter()
                .filter_map(|host| ip_literal(host))
                .collect(),
            token_digest: config
                .token
                .as_ref()
                .map(|token| Sha256::digest(token.expose().as_bytes()).into()),
        }
    }

    /// Whether `authority` (a `Host` value: name or IP, perhaps with a port) names this
    /// listener. The port is not compared: a rebinding page's name is what gives it away.
    pub fn host_allowed(&self, authority: &str) -> bool {
        let Ok(authority) = authority.parse::<axum::http::uri::Authority>() else {
            return false;
        };
        let host = normalize_host(authority.host());
        match ip_literal(&host) {
            Some(ip) => {
                self.listen.is_unspecified()
                    || ip == self.listen
                    || (self.listen.is_loopback() && ip.is_loopback())
                    || self.allowed_addresses.contains(&ip)
            }
            None => {
                let on_loopback = self.listen.is_loopback() || self.listen.is_unspecified();
                (on_loopback && host == "localhost") || self.allowed_names.contains(&host)
            }
        }
    }

    /// Whether `request` carries the token (or none is configured).
    fn shows_token(&self, request: &Request) -> bool {
        self.token_valid(
            request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok()),
        )
    }

    fn token_valid(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = authorization.and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        presented.is_some_and(|token| {
            bool::from(
                Sha256::digest(token.as_bytes())
                    .as_slice()
                    .ct_eq(expected.as_slice()),
            )
        })
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The address of an IP literal host (`10.0.0.1`, `[::1]`, `::1`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

pub fn router(shared: Arc<Shared>, access: Arc<Access>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(readyz).route_layer(from_fn_with_state(access.clone(), note_token)),
        )
        .route(
            "/bridges",
            get(bridges).route_layer(from_fn_with_state(access.clone(), require_token)),
        )
        .with_state(shared)
        .layer(from_fn_with_state(access, check_host))
}

async fn check_host(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    // An absolute-form target (`GET http://host/ HTTP/1.1`) overrides `Host`.
    let allowed = match request.uri().authority() {
        Some(authority) => access.host_allowed(authority.as_str()),
        None => match request.headers().get(header::HOST) {
            None => true,
            Some(value) => value.to_str().is_ok_and(|host| access.host_allowed(host)),
        },
    };
    if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here (see [admin] allowed_hosts)\n",
        )
            .into_response()
    }
}

/// Whether the request showed the `[admin] token` (or none is configured).
#[derive(Clone, Copy)]
struct Authorized(bool);

/// `/readyz` stays open for load balancers, but says why only to who shows the token:
/// its errors name hosts and users.
async fn note_token(
    State(access): State<Arc<Access>>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorized = Authorized(access.shows_token(&request));
    request.extensions_mut().insert(authorized);
    next.run(request).await
}

async fn require_token(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    if access.shows_token(&request) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"broker-bridge admin\"",
            )],
            "send Authorization: Bearer <[admin] token>\n",
        )
            .into_response()
    }
}

/// Binds the admin listener and serves it in the background.
pub async fn serve(config: &AdminConfig, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() && config.token.is_none() {
        tracing::warn!(
            %address,
            "the admin listener is not on loopback and has no [admin] token: anyone who reaches it can read /bridges"
        );
    }
    let access = Arc::new(Access::new(config, address.ip()));
    crate::listener::spawn(
        listener,
        Listener::Admin,
        config.limits(),
        None,
        router(shared, access),
    );
    Ok(address)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        shared.registry.render(),
    )
}

async fn readyz(
    State(shared): State<Arc<Shared>>,
    Extension(Authorized(authorized)): Extension<Authorized>,
) -> impl IntoResponse {
    let publisher = current_publisher(&shared.publisher);
    let mut not_ready = serde_json::Map::new();
    if !publisher.is_connected() {
        not_ready.insert(
            "exchange".into(),
            json!({"connected": false, "last_error": publisher.last_error()}),
        );
    }
    let mut bridges = serde_json::Map::new();
    let grace = chrono::Duration::from_std(shared.ready_grace).unwrap_or(chrono::TimeDelta::MAX);
    let now = chrono::Utc::now();
    for (name, view) in shared.bridges.read().expect("bridges lock").iter() {
        let status = view.status.snapshot();
        // A bridge that was running is given `ready_grace` to come back (a source
        // reconnect should not flap readiness); one that never connected is not ready.
        let briefly_down = status
            .down_since
            .is_some_and(|since| now.signed_duration_since(since) < grace);
        if status.state != BridgeState::Running && !briefly_down {
            bridges.insert(
                name.clone(),
                json!({
                    "state": status.state,
                    "last_error": status.last_error,
                    "down_since": status.down_since,
                }),
            );
        }
    }
    if !bridges.is_empty() {
        not_ready.insert("bridges".into(), Value::Object(bridges));
    }
    if not_ready.is_empty() {
        (StatusCode::OK, Json(json!({"ready": true})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(if authorized {
                json!({"ready": false, "not_ready": not_ready})
            } else {
                json!({"ready": false})
            }),
        )
    }
}

async fn bridges(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let publisher = current_publisher(&shared.publisher);
    let reload = shared.reload.lock().expect("reload lock").clone();
    let bridges: Vec<Value> = shared
        .bridges
        .read()
        .expect("bridges lock")
        .values()
        .map(|view| {
            let spec = &view.spec;
            let m = &view.metrics;
            let dead_lettered: serde_json::Map<String, Value> = RejectReason::ALL
                .iter()
                .enumerate()
                .map(|(i, r)| (r.label().to_owned(), json!(m.dead_lettered[i].get())))
                .collect();
            json!({
                "name": spec.name,
                "kind": spec.kind(),
                "tenant": spec.tenant_setting(),
                "routing_pattern": spec.routing_pattern(),
                "status": view.status.snapshot(),
                "counters": {
                    "received": m.received.get(),
                    "published": m.published.get(),
                    "dead_lettered": dead_lettered,
                    "unroutable": m.unroutable.get(),
                    "publish_retries": m.publish_retries.get(),
                    "in_flight": m.in_flight.get(),
                    "restarts": m.restarts.get(),
                },
            })
        })
        .collect();
    Json(json!({
        "exchange": {
            "name": publisher.config().name,
            "connected": publisher.is_connected(),
            "connects": publisher.connects(),
            "last_error": publisher.last_error(),
        },
        "config": reload,
        "bridges": bridges,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, allowed: &[&str], token: Option<&str>) -> Access {
        let config = AdminConfig {
            allowed_hosts: allowed.iter().map(|h| h.to_string()).collect(),
            token: token.map(Into::into),
            ..AdminConfig::default()
        };
        Access::new(&config, listen.parse().unwrap())
    }

    #[test]
    fn loopback_serves_its_address_and_localhost_only() {
        let access = access("127.0.0.1", &["Status.Example.com", "::2"], None);
        for host in [
            "127.0.0.1:9180",
            "127.0.0.1",
            "localhost:9180",
            "LOCALHOST",
            "localhost.",
            "[::1]:9180",
            "status.example.com",
            "status.example.com.:443",
            "[0:0::2]:9180",
        ] {
            assert!(access.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9180",
            "10.0.0.1:9180",
            "localhost.evil.example",
            "",
            "a b",
        ] {
            assert!(!access.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn every_address_serves_every_ip_literal_but_no_other_name() {
        let access = access("0.0.0.0", &[], None);
        assert!(access.host_allowed("10.1.2.3:9180"));
        assert!(access.host_allowed("[2001:db8::1]:9180"));
        assert!(access.host_allowed("localhost:9180"));
        assert!(!access.host_allowed("status.example.com"));
        let specific = self::access("10.1.2.3", &[], None);
        assert!(specific.host_allowed("10.1.2.3:9180"));
        assert!(!specific.host_allowed("10.1.2.4:9180"));
        assert!(!specific.host_allowed("localhost:9180"));
    }

    #[test]
    fn token_checks() {
        let open = access("127.0.0.1", &[], None);
        assert!(open.token_valid(None));
        let guarded = access("127.0.0.1", &[], Some("s3cr3t"));
        assert!(!guarded.token_valid(None));
        assert!(!guarded.token_valid(Some("Bearer s3cr3")));
        assert!(!guarded.token_valid(Some("Basic s3cr3t")));
        assert!(!guarded.token_valid(Some("s3cr3t")));
        assert!(guarded.token_valid(Some("Bearer s3cr3t")));
        assert!(guarded.token_valid(Some("bearer  s3cr3t ")));
    }
}
