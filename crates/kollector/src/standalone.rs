//! Standalone mode: the manager API and one collector in one process, no etcd.
//!
//! Standalone is cluster mode with local parts: the one ManagerService over
//! the embedded store (the state file keeps API changes across restarts; the
//! config file seeds it) and the local runner (the collector in this
//! process). Start-up is all-or-nothing: the config file is parsed and
//! validated in full (every error reported with file, line and field) before
//! anything starts, and both listeners are bound before monitors start.
//! Shutdown (SIGINT/SIGTERM) stops taking API calls, then stops every
//! monitor and closes every Kafka client before the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kollector_collector::{CollectorHandle, CollectorNode};
use kollector_core::ConfigFile;
use kollector_kafka::ClientOptions;
use kollector_manager::state_file::{SavedHistories, StateFile};
use kollector_manager::{EmbeddedStore, LocalRunner, ManagerServiceImpl};
use kollector_proto::v1::manager_service_server::ManagerServiceServer;
use tokio_stream::wrappers::TcpListenerStream;

use crate::http;
use crate::security_args::{check_standalone_exposure, secret_keys, ApiAccessArgs, KafkaClientArgs};
use kollector_proto::transport::MAX_API_REQUEST_BYTES;
use kollector_proto::GrpcLimits;
use kollector_security::{Access, ApiGuard, FilePolicy, TokenFile};
use tonic::transport::{Identity, ServerTlsConfig};

pub struct Options {
    pub config: PathBuf,
    pub http_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    /// Where monitors are kept across restarts; default next to the config.
    pub state: Option<PathBuf>,
    pub security: StandaloneSecurityArgs,
    /// When a result stops being served as current.
    pub stale: kollector_core::result::StaleRule,
}

/// A standalone node's security flags.
#[derive(clap::Args)]
pub struct StandaloneSecurityArgs {
    /// Serve the API over TLS with this certificate (PEM).
    #[arg(long, env = "KOLLECTOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "KOLLECTOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub access: ApiAccessArgs,
    /// Key file that seals secrets in the state file; created (mode 0600) if
    /// absent. Default: next to the state file, `<state>.key`. Keep a copy
    /// elsewhere: without it the saved secrets cannot be read back.
    #[arg(long, env = "KOLLECTOR_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub kafka_tls: KafkaClientArgs,
    /// Allow serving the API off loopback without TLS or tokens.
    #[arg(long)]
    pub insecure: bool,
}

/// What `Standalone::start` needs to protect its API.
pub struct ApiSecurity {
    pub tls: Option<ServerTlsConfig>,
    pub guard: ApiGuard,
    pub client_options: ClientOptions,
}

impl ApiSecurity {
    /// Loopback demo: open API, plaintext, Kafka TLS files from the default directory.
    pub fn loopback_demo() -> ApiSecurity {
        ApiSecurity {
            tls: None,
            guard: ApiGuard::default(),
            client_options: ClientOptions {
                tls_files: Some(FilePolicy::new(vec![PathBuf::from(crate::security_args::DEFAULT_KAFKA_TLS_DIR)])),
                ..ClientOptions::default()
            },
        }
    }
}

/// A running standalone node, for `run` and the demo.
pub struct Standalone {
    pub node: CollectorHandle,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop_grpc: tokio::sync::watch::Sender<bool>,
    stop_http: tokio::sync::watch::Sender<bool>,
    grpc: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
}

impl Standalone {
    /// Binds both listeners, starts the collector, runs every monitor of
    /// `desired`, then serves the API (requests wait in the listen backlog
    /// until then).
    pub async fn start(
        grpc: SocketAddr,
        http_addr: SocketAddr,
        desired: EmbeddedStore,
        security: ApiSecurity,
        histories: Vec<(kollector_core::MonitorId, kollector_core::history::MonitorHistory)>,
    ) -> anyhow::Result<Standalone> {
        let grpc_listener = http::bind(grpc, "gRPC (ManagerService)").await?;
        let http_listener = http::bind(http_addr, "HTTP (/metrics)").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let options = security.client_options;
        let node = CollectorNode::start(options.clone()).context("starting the collector")?;
        // Offset histories saved at the last stop: monitors continue them.
        for (id, history) in histories {
            node.store().put_history(&id, history);
        }
        let service = ManagerServiceImpl::new(Arc::new(desired), Arc::new(LocalRunner::new(node.clone(), options)))
            .with_guard(security.guard);
        let mut server = GrpcLimits::default().server(security.tls)?;
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let (stop_http, rx) = tokio::sync::watch::channel(false);
        let store = node.store().clone();
        let http_shutdown = wait(rx);
        // Ready once every monitor of the store has been started.
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started_view = started.clone();
        let ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = Arc::new(move || {
            if started_view.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("starting the monitors".into())
            }
        });
        let views = http::local(store, Arc::new(Vec::new), http_addr.to_string(), ready);
        let http = tokio::spawn(async move {
            if let Err(e) = http::serve(http_listener, views, http_shutdown).await {
                tracing::error!("HTTP server failed: {e}");
            }
        });
        if let Err(s) = service.apply_all().await {
            node.shutdown().await;
            let _ = stop_http.send(true);
            let _ = http.await;
            anyhow::bail!("starting the monitors: {}", s.message());
        }
        started.store(true, std::sync::atomic::Ordering::SeqCst);
        let (stop_grpc, rx) = tokio::sync::watch::channel(false);
        let grpc_shutdown = wait(rx);
        let grpc = tokio::spawn(async move {
            let r = server
                .add_service(ManagerServiceServer::new(service).max_decoding_message_size(MAX_API_REQUEST_BYTES))
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), grpc_shutdown)
                .await;
            if let Err(e) = r {
                tracing::error!("gRPC server failed: {e}");
            }
        });
        tracing::info!(%grpc_addr, %http_addr, "kollector standalone ready");
        Ok(Standalone { node, grpc_addr, http_addr, stop_grpc, stop_http, grpc, http })
    }

    /// Stops taking API calls (the desired state stays as it is), then stops
    /// every monitor (closing its client), then the HTTP server and the actors.
    pub async fn stop(self) {
        let _ = self.stop_grpc.send(true);
        let _ = self.grpc.await;
        self.node.shutdown().await;
        let _ = self.stop_http.send(true);
        let _ = self.http.await;
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
    let sec = opts.security;
    let key_path =
        sec.secret_key_file.clone().unwrap_or_else(|| PathBuf::from(format!("{}.key", state_path.display())));
    let keys = Arc::new(secret_keys(&key_path, true)?);
    let (file, saved) = StateFile::open(&state_path, Some(keys)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let grpc_listen = opts.grpc_listen.unwrap_or(config.grpc_listen);
    check_standalone_exposure(grpc_listen, sec.tls_cert.is_some(), sec.access.tokens_file.is_some(), sec.insecure)?;
    let tls = match (&sec.tls_cert, &sec.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            Some(ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?)))
        }
        _ => None,
    };
    let access = match &sec.access.tokens_file {
        Some(p) => Access::Tokens(TokenFile::load(p)?),
        None => Access::Open,
    };
    let security = ApiSecurity {
        tls,
        guard: ApiGuard::new(access, sec.access.probe_rate),
        client_options: sec.kafka_tls.client_options(),
    };
    let desired = EmbeddedStore::open(config.monitors, file, saved).map_err(|e| {
        anyhow::anyhow!("{e} (set --state to a writable path for the monitors created through the API)")
    })?;
    // Lag-in-seconds history, kept next to the state file across restarts.
    let history_path = PathBuf::from(format!("{}.history", state_path.display()));
    let histories = SavedHistories::load(&history_path).monitors.into_iter().collect();
    let node =
        Standalone::start(grpc_listen, opts.http_listen.unwrap_or(config.http_listen), desired, security, histories)
            .await?;
    node.node.store().set_stale_rule(opts.stale);
    eprintln!(
        "kollector standalone: gRPC on {}, metrics on http://{}/metrics ({} monitor(s)), state in {}",
        node.grpc_addr,
        node.http_addr,
        node.node.store().len(),
        state_path.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down: stopping monitors and closing Kafka clients");
    let store = node.node.store().clone();
    node.stop().await;
    // Every monitor's history is in the store once its actor stopped.
    let saved = SavedHistories::new(store.histories().into_iter().collect());
    if let Err(e) = saved.save(&history_path) {
        tracing::warn!("cannot save offset histories to {}: {e}", history_path.display());
    }
    Ok(())
}
