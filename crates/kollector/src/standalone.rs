//! Standalone mode: the manager API and one collector in one process, no etcd.
//!
//! Start-up is all-or-nothing: the config file is parsed and validated in
//! full (every error reported with file, line and field) before anything
//! starts, and both listeners are bound before monitors start. Shutdown
//! (SIGINT/SIGTERM) stops every monitor and closes every Kafka client before
//! the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kollector_collector::{CollectorHandle, CollectorNode, RegistryError};
use kollector_core::{CollectError, ConfigFile, MonitorId, MonitorResult, MonitorSpec, Snapshot};
use kollector_kafka::ClientOptions;
use kollector_manager::state_file::{seed, StateFile};
use kollector_manager::{BackendError, ManagerServiceImpl, MonitorBackend};
use kollector_proto::v1::manager_service_server::ManagerServiceServer;
use tokio_stream::wrappers::TcpListenerStream;

use crate::http;

pub struct Options {
    pub config: PathBuf,
    pub http_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    /// Where monitors are kept across restarts; default next to the config.
    pub state: Option<PathBuf>,
}

/// The local collector as the manager's backend.
pub struct LocalBackend {
    node: CollectorHandle,
    options: ClientOptions,
}

fn registry_error(e: RegistryError) -> BackendError {
    match e {
        RegistryError::ShuttingDown => BackendError::Unavailable(e.to_string()),
        _ => BackendError::Rejected(e.to_string()),
    }
}

impl MonitorBackend for LocalBackend {
    async fn start(&self, spec: MonitorSpec) -> Result<(), BackendError> {
        self.node.assign(spec).await.map(|_| ()).map_err(registry_error)
    }

    async fn stop(&self, id: MonitorId) -> Result<(), BackendError> {
        match self.node.unassign(id).await {
            Ok(()) | Err(RegistryError::NotRunning(_)) => Ok(()),
            Err(e) => Err(registry_error(e)),
        }
    }

    fn latest(&self, id: &MonitorId) -> Option<MonitorResult> {
        self.node.store().get(id)
    }

    async fn probe(&self, spec: MonitorSpec) -> Result<Snapshot, CollectError> {
        kollector_collector::probe(spec, self.options.clone()).await
    }
}

/// A running standalone node, for `run` and the demo.
pub struct Standalone {
    pub node: CollectorHandle,
    pub service: Arc<ManagerServiceImpl<LocalBackend>>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Standalone {
    /// Binds both listeners, starts the collector and the servers, then the monitors.
    /// `state`: the state file and what it held; `None` keeps monitors in
    /// memory only (the demo).
    pub async fn start(
        grpc: SocketAddr,
        http_addr: SocketAddr,
        monitors: Vec<MonitorSpec>,
        state: Option<(StateFile, Vec<MonitorSpec>)>,
    ) -> anyhow::Result<Standalone> {
        let grpc_listener = http::bind(grpc, "gRPC (ManagerService)").await?;
        let http_listener = http::bind(http_addr, "HTTP (/metrics)").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let options = ClientOptions::default();
        let node = CollectorNode::start(options.clone()).context("starting the collector")?;
        let backend = LocalBackend { node: node.clone(), options };
        let (service, monitors) = match state {
            Some((file, saved)) => (ManagerServiceImpl::with_state(backend, file), seed(monitors, saved)),
            None => (ManagerServiceImpl::new(backend), monitors),
        };
        let service = Arc::new(service);
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let grpc_service = ManagerServiceServer::from_arc(service.clone());
        let grpc_shutdown = wait(rx.clone());
        let grpc_task = tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(grpc_service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), grpc_shutdown)
                .await;
            if let Err(e) = r {
                tracing::error!("gRPC server failed: {e}");
            }
        });
        let store = node.store().clone();
        let http_shutdown = wait(rx);
        let http_task = tokio::spawn(async move {
            if let Err(e) = http::serve(http_listener, http::local(store), http_shutdown).await {
                tracing::error!("HTTP server failed: {e}");
            }
        });

        service.load(monitors).await.map_err(|s| anyhow::anyhow!("starting the monitors: {}", s.message()))?;
        tracing::info!(%grpc_addr, %http_addr, "kollector standalone ready");
        Ok(Standalone { node, service, grpc_addr, http_addr, shutdown, servers: vec![grpc_task, http_task] })
    }

    /// Stops every monitor (closing its client), the servers and the actors.
    pub async fn stop(self) {
        self.service.stop_all().await;
        self.node.shutdown().await;
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let path = opts.config.display().to_string();
    let text = std::fs::read_to_string(&opts.config).with_context(|| format!("reading config file {path}"))?;
    let config = ConfigFile::parse(&path, &text, |var| std::env::var(var).ok())
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    // API changes live in the state file, next to the config by default.
    let state_path = opts.state.unwrap_or_else(|| opts.config.with_extension("state.json"));
    let state = StateFile::open(&state_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = Standalone::start(
        opts.grpc_listen.unwrap_or(config.grpc_listen),
        opts.http_listen.unwrap_or(config.http_listen),
        config.monitors,
        Some(state),
    )
    .await?;
    eprintln!(
        "kollector standalone: gRPC on {}, metrics on http://{}/metrics ({} monitor(s)), state in {}",
        node.grpc_addr,
        node.http_addr,
        node.node.store().len(),
        state_path.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down: stopping monitors and closing Kafka clients");
    node.stop().await;
    Ok(())
}
