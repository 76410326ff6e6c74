//! The HTTP surface: liveness, readiness and metrics for orchestrators and
//! Prometheus, and the search API (`search`).

mod operator;
pub mod search;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::health::Health;

/// Renders the process's metrics in the Prometheus text format.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct ProbeState {
    health: Arc<Health>,
    metrics: RenderMetrics,
}

pub fn probes(health: Arc<Health>, metrics: RenderMetrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(ProbeState { health, metrics })
}

async fn healthz(State(state): State<ProbeState>) -> impl IntoResponse {
    if state.health.is_live() { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "poll loop stuck\n") }
}

async fn readyz(State(state): State<ProbeState>) -> impl IntoResponse {
    match state.health.not_ready_because() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn render_metrics(State(state): State<ProbeState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], (state.metrics)())
}

/// Serves `router` until `shutdown` resolves. The caller binds, so a taken
/// port fails the start rather than a background task.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving http");
    }
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
