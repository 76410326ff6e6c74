//! The HTTP surface: liveness, readiness and metrics for orchestrators and
//! Prometheus, and the search API (`search`).

pub mod search;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

/// Renders the process's metrics in the Prometheus text format.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// What the worker reports about itself, read by the probes.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix milliseconds of the poll loop's last turn.
    last_poll_ms: AtomicU64,
    broker_up: AtomicBool,
    /// Lanes waiting out a store or broker failure.
    stalled_lanes: AtomicUsize,
    draining: AtomicBool,
    /// An indexer that has not yet applied what the changes topic held when
    /// it started: it would answer searches from a partial index.
    catching_up: AtomicBool,
    /// How long the poll loop may be silent before the process counts as hung.
    liveness_window_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Health {
    pub fn new(liveness_window: Duration) -> Self {
        let health = Self::default();
        health.liveness_window_ms.store(u64::try_from(liveness_window.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        health.polled();
        health
    }

    pub fn polled(&self) {
        self.last_poll_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }

    pub fn stall(&self) {
        self.stalled_lanes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unstall(&self) {
        self.stalled_lanes.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn set_catching_up(&self, catching_up: bool) {
        self.catching_up.store(catching_up, Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        now_ms().saturating_sub(self.last_poll_ms.load(Ordering::Relaxed)) <= self.liveness_window_ms.load(Ordering::Relaxed)
    }

    /// Why the worker should not get traffic now, if it should not.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining for shutdown")
        } else if !self.broker_up.load(Ordering::Relaxed) {
            Some("no broker reachable")
        } else if self.stalled_lanes.load(Ordering::Relaxed) > 0 {
            Some("waiting out a store or broker failure")
        } else if self.catching_up.load(Ordering::Relaxed) {
            Some("catching up with the changes topic")
        } else {
            None
        }
    }
}

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
