//! The listener all webhook bridges share (`Hub`): binding it on first use, the routes
//! of the running bridges, and the URLs senders post to.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::request::{Route, answer};
use super::{Webhook, WebhookSpec};
use crate::config::{BridgeSpec, WebhookConfig};
use crate::sources::common::context::Shared;
use crate::sources::common::kind::spec_of;

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
    pub(super) async fn listening(self: &Arc<Self>) -> std::io::Result<SocketAddr> {
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

    pub(super) fn register(&self, path: String, route: Route) {
        self.routes
            .write()
            .expect("routes lock")
            .insert(path, Arc::new(route));
    }

    /// The route answering `path`, and the token segment when the route has one.
    pub(super) fn lookup<'p>(&self, path: &'p str) -> Option<(Arc<Route>, Option<&'p str>)> {
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
                spec_of::<Webhook>(&bridge.source).map(|spec| spec.hook_path(&bridge.name))
            })
            .collect();
        self.routes
            .write()
            .expect("routes lock")
            .retain(|path, _| wanted.contains(path));
    }
}
