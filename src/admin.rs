//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/bridges`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::bridge::{State as BridgeState, current_publisher};
use crate::normalize::RejectReason;
use crate::supervisor::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/bridges", get(bridges))
        .with_state(shared)
}

/// Binds the admin listener and serves it in the background.
pub async fn serve(listen: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(shared)).await {
            tracing::error!(%error, "admin listener failed");
        }
    });
    Ok(address)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.registry.render(),
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
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
            Json(json!({"ready": false, "not_ready": not_ready})),
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
                .map(|(i, r)| {
                    (
                        r.label().to_owned(),
                        json!(m.dead_lettered[i].load(Relaxed)),
                    )
                })
                .collect();
            json!({
                "name": spec.name,
                "kind": spec.kind(),
                "tenant": spec.tenant,
                "routing_pattern": spec.routing_pattern(),
                "status": view.status.snapshot(),
                "counters": {
                    "received": m.received.load(Relaxed),
                    "published": m.published.load(Relaxed),
                    "dead_lettered": dead_lettered,
                    "unroutable": m.unroutable.load(Relaxed),
                    "publish_retries": m.publish_retries.load(Relaxed),
                    "in_flight": m.in_flight.load(Relaxed),
                    "restarts": m.restarts.load(Relaxed),
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
