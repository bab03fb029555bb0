//! `kollector manager`: a manager node in cluster mode. Parses the flags and
//! serves `/metrics`; the node itself is `kollector_manager::node`.
//!
//! Any number run at once. Each serves ManagerService (monitor CRUD goes to
//! etcd; reads come from etcd and from the results it receives from every
//! collector) and a cluster-wide `/metrics`. One is elected leader; only the
//! leader runs the reconciler that assigns monitors to collectors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use kollector_manager::decisions::TxnLimits;
use kollector_manager::node::{ManagerConfig, ManagerNode};

use crate::etcd_args::{EtcdArgs, GrpcArgs};
use crate::http;
use crate::security_args::{ApiAccessArgs, NodeTlsArgs};
use crate::standalone::shutdown_signal;

#[derive(Args)]
pub struct ManagerArgs {
    #[command(flatten)]
    cluster: EtcdArgs,
    #[command(flatten)]
    grpc: GrpcArgs,
    #[command(flatten)]
    tls: NodeTlsArgs,
    #[command(flatten)]
    access: ApiAccessArgs,
    /// Key file that seals SASL and key passwords before they are written to
    /// etcd (`kollector secret-key new`); the same file on every manager.
    /// Without it, monitors with secrets are refused.
    #[arg(long, env = "KOLLECTOR_SECRET_KEY_FILE")]
    secret_key_file: Option<std::path::PathBuf>,
    /// Where to serve ManagerService (the CLI and users connect here).
    #[arg(long, default_value = "127.0.0.1:7070")]
    grpc_listen: SocketAddr,
    /// Where to serve the cluster-wide /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    http_listen: SocketAddr,
    /// The gRPC address to publish as leader, if not the listen address.
    #[arg(long)]
    advertise_grpc: Option<String>,
    /// Election lease TTL: a dead leader is replaced after about this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    election_ttl: Duration,
    /// The longest between two passes of the leader (each asks every
    /// collector what it runs); changes in etcd start a pass sooner.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reconcile_period: Duration,
    /// How long Update and Delete wait for the owning collector to apply the
    /// change before answering DEADLINE_EXCEEDED (the change stays stored).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    apply_timeout: Duration,
    /// Most operations in one etcd transaction: etcd's --max-txn-ops (default 128).
    #[arg(long, default_value_t = 128)]
    etcd_max_txn_ops: usize,
    /// Largest etcd request in bytes: etcd's --max-request-bytes (default 1.5 MiB).
    #[arg(long, default_value_t = 1536 * 1024)]
    etcd_max_request_bytes: usize,
    #[command(flatten)]
    stale: crate::stale_args::StaleArgs,
    /// A collector that has not answered the leader (ListRunning) for this
    /// long is unreachable, even if it keeps its etcd lease: the leader
    /// revokes its lease, and its monitors start elsewhere once it must
    /// have fenced itself (one lease TTL later). At least 2s and longer
    /// than --reconcile-period.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    unreachable_after: Duration,
    /// How long a collector that came back after a revocation must answer
    /// before it gets monitors again (no flapping).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    rejoin_after: Duration,
}

pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    let grpc = args.grpc.limits()?;
    let tls = args.tls.load("this manager")?;
    let etcd = args.cluster.access(args.tls.insecure)?;
    if args.access.tokens_file.is_none() {
        if !args.tls.insecure {
            anyhow::bail!("a manager needs --tokens-file (make tokens with `kollector token add`), or --insecure to let anyone call the API");
        }
        tracing::warn!("ManagerService accepts every caller as admin (--insecure, no --tokens-file)");
    }
    let grpc_listener = http::bind(args.grpc_listen, "gRPC (ManagerService)").await?;
    let http_listener = http::bind(args.http_listen, "HTTP (/metrics)").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let config = ManagerConfig {
        etcd,
        tls,
        tokens_file: args.access.tokens_file,
        secret_key_file: args.secret_key_file,
        probes_per_minute: args.access.probe_rate,
        prefix: args.cluster.prefix,
        advertise_grpc: args.advertise_grpc.unwrap_or_else(|| grpc_addr.to_string()),
        election_ttl: args.election_ttl,
        reconcile_period: args.reconcile_period,
        apply_timeout: args.apply_timeout,
        txn_limits: TxnLimits { max_ops: args.etcd_max_txn_ops, max_request_bytes: args.etcd_max_request_bytes },
        grpc,
        stale_rule: args.stale.stale_after_intervals,
        liveness: kollector_manager::liveness::LivenessRules {
            unreachable_after: args.unreachable_after,
            probation: args.rejoin_after,
        },
    };
    let node = ManagerNode::start(config, grpc_listener).await?;
    let metrics = node.metrics();
    let (m1, m2, m3, m4, m5) = (metrics.clone(), metrics.clone(), metrics.clone(), metrics.clone(), metrics);
    let views = http::Views {
        metrics: Arc::new(move || {
            let m = m1.clone();
            Box::pin(async move { m.render().await })
        }),
        node: Arc::new(move || {
            let m = m5.clone();
            Box::pin(async move { m.render_self() })
        }),
        monitor: Arc::new(move |id| {
            let m = m2.clone();
            Box::pin(async move { m.render_monitor(&id).await })
        }),
        targets: Arc::new(move || {
            let m = m3.clone();
            Box::pin(async move { m.targets().await })
        }),
        ready: Arc::new(move || {
            let m = m4.clone();
            Box::pin(async move { m.ready().await })
        }),
    };
    let (stop_http, mut stop_rx) = tokio::sync::watch::channel(false);
    let web = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        if let Err(e) = http::serve(http_listener, views, stopped).await {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    eprintln!("kollector manager: ManagerService on {grpc_addr}, cluster metrics on http://{http_addr}/metrics");
    shutdown_signal().await;
    tracing::info!("shutting down: resigning leadership");
    node.stop().await;
    let _ = stop_http.send(true);
    let _ = web.await;
    Ok(())
}
