//! The HTTP side: `/metrics` (Prometheus text) and `/healthz`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kollector_collector::ResultStore;

/// Produces the `/metrics` body on each scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// `/metrics` of the monitors running in this process.
pub fn local(store: ResultStore) -> Render {
    local_with(store, Arc::new(Vec::new))
}

/// Like [`local`], plus process-level metrics computed at each scrape.
pub fn local_with(
    store: ResultStore,
    extra: Arc<dyn Fn() -> kollector_collector::metrics::ExtraGauges + Send + Sync>,
) -> Render {
    Arc::new(move || {
        let (store, extra) = (store.clone(), extra.clone());
        Box::pin(async move { kollector_collector::metrics::render(&store, extra()) })
    })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Render,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    let body = render().await;
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds a listener with an error that names the address and the flag to change.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}
