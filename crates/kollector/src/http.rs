//! The HTTP side of every node:
//! - `/metrics`: every series this node serves;
//! - `/metrics/self`: only the node's own series (no monitor's), for node
//!   scrape jobs next to the per-monitor targets, so nothing is scraped twice;
//! - `/monitors/<id>/metrics`: one monitor's series alone (its scrape target);
//! - `/sd`: Prometheus HTTP service discovery, one target per monitor (see
//!   `kollector_collector::discovery`);
//! - `/healthz`: the process answers;
//! - `/readyz`: the node can do its job now (503 with the reason otherwise).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kollector_collector::discovery::{self, SdTarget};
use kollector_collector::ResultStore;
use kollector_core::MonitorId;

type Fut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Produces the `/metrics` body on each scrape.
pub type Render = Arc<dyn Fn() -> Fut<String> + Send + Sync>;

/// What a node serves over HTTP; each part computed per request.
#[derive(Clone)]
pub struct Views {
    pub metrics: Render,
    /// The node's own series only.
    pub node: Render,
    /// One monitor's series, or None if this node does not serve it.
    pub monitor: Arc<dyn Fn(MonitorId) -> Fut<Option<String>> + Send + Sync>,
    /// The discovery targets.
    pub targets: Arc<dyn Fn() -> Fut<Vec<SdTarget>> + Send + Sync>,
    /// Ready, or why not.
    pub ready: Arc<dyn Fn() -> Fut<Result<(), String>> + Send + Sync>,
}

/// The views of a node that runs monitors itself (standalone, collector):
/// targets point at `address`, this node's HTTP address as scrapers reach it.
pub fn local(
    store: ResultStore,
    extra: Arc<dyn Fn() -> kollector_collector::metrics::ExtraGauges + Send + Sync>,
    address: String,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> Views {
    let (s1, s2, s3) = (store.clone(), store.clone(), store);
    let extra_node = extra.clone();
    Views {
        metrics: Arc::new(move || {
            let (store, extra) = (s1.clone(), extra.clone());
            Box::pin(async move { kollector_collector::metrics::render(&store, extra()) })
        }),
        node: Arc::new(move || {
            let extra = extra_node.clone();
            Box::pin(async move { kollector_collector::metrics::render_entries(Vec::new(), extra(), true) })
        }),
        monitor: Arc::new(move |id| {
            let store = s2.clone();
            Box::pin(async move { kollector_collector::metrics::render_monitor(&store, &id) })
        }),
        targets: Arc::new(move || {
            let (store, address) = (s3.clone(), address.clone());
            Box::pin(async move {
                store.all().iter().map(|r| discovery::target(&address, r, &store.labels(&r.monitor))).collect()
            })
        }),
        ready: Arc::new(move || {
            let r = ready();
            Box::pin(async move { r })
        }),
    }
}

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    views: Views,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (v1, v2, v3, v4) = (views.clone(), views.clone(), views.clone(), views.clone());
    let v5 = views;
    let app = Router::new()
        .route(
            "/metrics/self",
            get(move || {
                let render = v5.node.clone();
                async move { ([(header::CONTENT_TYPE, TEXT)], render().await).into_response() }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let render = v1.metrics.clone();
                async move { ([(header::CONTENT_TYPE, TEXT)], render().await).into_response() }
            }),
        )
        .route(
            "/monitors/{id}/metrics",
            get(move |Path(id): Path<String>| {
                let monitor = v2.monitor.clone();
                async move {
                    let Ok(id) = MonitorId::new(id) else {
                        return (StatusCode::NOT_FOUND, "no such monitor\n").into_response();
                    };
                    match monitor(id).await {
                        Some(body) => ([(header::CONTENT_TYPE, TEXT)], body).into_response(),
                        None => (StatusCode::NOT_FOUND, "no such monitor here\n").into_response(),
                    }
                }
            }),
        )
        .route(
            "/sd",
            get(move || {
                let targets = v3.targets.clone();
                async move { axum::Json(targets().await).into_response() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = v4.ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds a listener with an error that names the address and the flag to change.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}
