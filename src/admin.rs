//! The operator's HTTP endpoints on one port: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness: the controllers' caches are synced; with leader election, a standby that does
/// not lead is ready too (it has nothing to sync), and `/readyz` says whether it leads. Once the
/// controllers have stopped for good, never ready.
#[derive(Debug, Default)]
pub struct Health {
    electing: AtomicBool,
    leading: AtomicBool,
    failed: AtomicBool,
    /// Controllers whose cache is not synced yet; `usize::MAX` before any started.
    unsynced: AtomicUsize,
}

impl Health {
    pub fn new(electing: bool) -> Self {
        Self {
            electing: AtomicBool::new(electing),
            leading: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            unsynced: AtomicUsize::new(usize::MAX),
        }
    }
    /// `n` controllers are starting.
    pub fn starting(&self, n: usize) {
        self.unsynced.store(n, Ordering::SeqCst);
    }
    /// One controller's cache is synced.
    pub fn synced_one(&self) {
        let _ = self
            .unsynced
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            self.unsynced.store(usize::MAX, Ordering::SeqCst);
        }
    }
    /// The controllers stopped for good (the process is about to exit).
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }
    pub fn caches_synced(&self) -> bool {
        self.unsynced.load(Ordering::SeqCst) == 0
    }
    pub fn ready(&self) -> bool {
        let electing = self.electing.load(Ordering::SeqCst);
        let leading = self.leading.load(Ordering::SeqCst);
        let failed = self.failed.load(Ordering::SeqCst);
        !failed && ((electing && !leading) || self.caches_synced())
    }
    fn report(&self) -> serde_json::Value {
        let electing = self.electing.load(Ordering::SeqCst);
        serde_json::json!({
            "ready": self.ready(),
            "cachesSynced": self.caches_synced(),
            "leader": electing.then(|| self.leading.load(Ordering::SeqCst)),
        })
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                let code = if s.health.ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, axum::Json(s.health.report()))
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                // the body is OpenMetrics text: say so, or a scraper parses it as the
                // Prometheus 0.0.4 format (and trips over `# EOF` and `_created`)
                (
                    [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    s.metrics.encode(),
                )
                    .into_response()
            }),
        )
        .with_state(AppState { health, metrics })
}

/// Serve until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    axum::serve(listener, router(health, metrics)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let metrics = Arc::new(Metrics::default());
        metrics.reconcile_duration(0.01);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(Health::new(false)), metrics));
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = response.text().await.unwrap();
        assert!(
            body.contains("tokensync_reconcile_duration_seconds_count 1"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[test]
    fn readiness() {
        let h = Health::new(false);
        assert!(!h.ready());
        h.starting(2);
        h.synced_one();
        assert!(!h.ready());
        h.synced_one();
        assert!(h.ready());
        // a standby is ready; a new leader is ready once its caches sync
        let h = Health::new(true);
        assert!(h.ready());
        h.set_leading(true);
        assert!(!h.ready());
        h.starting(1);
        h.synced_one();
        assert!(h.ready());
        assert_eq!(h.report()["leader"], true);
        // controllers that stopped for good: not ready, leading or not
        h.set_leading(false);
        h.set_failed();
        assert!(!h.ready());
    }
}
