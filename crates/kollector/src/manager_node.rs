//! `kollector manager`: a manager node in cluster mode.
//!
//! Any number run at once. Each serves ManagerService (monitor CRUD goes to
//! etcd; reads come from etcd and from the results it receives from every
//! collector) and a cluster-wide `/metrics`. One is elected leader; only the
//! leader runs the reconciler that assigns monitors to collectors.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use kollector_collector::metrics::{render_entries, Extra};
use kollector_coordination::election::{Election, ElectionConfig, Leadership};
use kollector_coordination::keys::Keys;
use kollector_coordination::lease;
use kollector_manager::cluster_store::ClusterStore;
use kollector_manager::decisions::TxnLimits;
use kollector_manager::intake::Intake;
use kollector_manager::reconciler::{CollectorClients, Reconciler, ReconcilerStats};
use kollector_manager::{ClusterRunner, ManagerServiceImpl};
use kollector_proto::v1::manager_service_server::ManagerServiceServer;
use tokio_stream::wrappers::TcpListenerStream;

use crate::etcd_args::{EtcdArgs, GrpcArgs};
use crate::http;
use crate::standalone::shutdown_signal;

#[derive(Args)]
pub struct ManagerArgs {
    #[command(flatten)]
    cluster: EtcdArgs,
    #[command(flatten)]
    grpc: GrpcArgs,
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
    /// How often the leader re-plans and repairs drift (also the debounce of membership changes).
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
}

pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    if args.election_ttl < Duration::from_secs(2) {
        anyhow::bail!("--election-ttl must be at least 2s (etcd's minimum lease)");
    }
    if args.etcd_max_txn_ops == 0 {
        anyhow::bail!("--etcd-max-txn-ops must be at least 1");
    }
    if args.etcd_max_request_bytes < 64 * 1024 {
        anyhow::bail!("--etcd-max-request-bytes must be at least 65536");
    }
    let limits = args.grpc.limits()?;
    let txn_limits = TxnLimits { max_ops: args.etcd_max_txn_ops, max_request_bytes: args.etcd_max_request_bytes };
    let grpc_listener = http::bind(args.grpc_listen, "gRPC (ManagerService)").await?;
    let http_listener = http::bind(args.http_listen, "HTTP (/metrics)").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let client = lease::connect(&args.cluster.etcd, args.election_ttl)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach etcd at {}: {e}", args.cluster.etcd.join(",")))?;
    let store = ClusterStore::new(client, Keys::new(&args.cluster.prefix));
    let clients = CollectorClients::new(limits);
    let (intake, intake_task) = Intake::start(store.clone(), clients.clone());
    let election = Election::start(ElectionConfig {
        endpoints: args.cluster.etcd.clone(),
        prefix: args.cluster.prefix.clone(),
        address: args.advertise_grpc.unwrap_or_else(|| grpc_addr.to_string()),
        ttl: args.election_ttl,
    });
    let stats = Arc::new(ReconcilerStats::default());
    let reconciler = tokio::spawn(
        Reconciler::new(store.clone(), clients.clone(), stats.clone(), args.reconcile_period, txn_limits)
            .run(election.state()),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The one ManagerService: desired state in etcd, run by the reconciler.
    let runner = ClusterRunner::new(store.clone(), intake.clone(), clients, args.apply_timeout);
    let service = ManagerServiceServer::new(ManagerServiceImpl::new(Arc::new(store.clone()), Arc::new(runner)))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let grpc_stop = wait(stop_rx.clone());
    let grpc = tokio::spawn(async move {
        let r = limits
            .server()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), grpc_stop)
            .await;
        if let Err(e) = r {
            tracing::error!("gRPC server failed: {e}");
        }
    });
    let leadership = election.state();
    let render: http::Render = Arc::new(move || {
        let (store, intake, stats, leadership) = (store.clone(), intake.clone(), stats.clone(), leadership.clone());
        Box::pin(async move {
            let leader = matches!(&*leadership.borrow(), Leadership::Leader(_));
            let extra = vec![
                Extra { name: "kollector_manager_is_leader", help: "1 if this manager is the leader.", value: leader as u8 as f64, counter: false },
                Extra { name: "kollector_leader_term", help: "Term of the leader (the leader key's create revision), as last seen while leading.", value: stats.leader_term.load(Ordering::Relaxed) as f64, counter: false },
                Extra { name: "kollector_assignments", help: "Monitors assigned to a collector (leader's view).", value: stats.assignments.load(Ordering::Relaxed) as f64, counter: false },
                Extra { name: "kollector_rebalance_moves", help: "Monitors moved from one collector to another.", value: stats.rebalance_moves.load(Ordering::Relaxed) as f64, counter: true },
                Extra { name: "kollector_failover_seconds", help: "Time from noticing a monitor's collector gone to its Assign on a live collector, for the latest failover.", value: stats.last_failover_ms.load(Ordering::Relaxed) as f64 / 1000.0, counter: false },
                Extra { name: "kollector_stale_results_dropped", help: "Results refused because their collector, epoch or generation was not the current assignment's.", value: intake.stale_dropped() as f64, counter: true },
                Extra { name: "kollector_pending_moves", help: "Monitors waiting for an earlier owner to confirm it stopped them before they start elsewhere (leader's view).", value: stats.pending_moves.load(Ordering::Relaxed) as f64, counter: false },
                Extra { name: "kollector_invalid_specs", help: "Monitor specs in etcd that do not decode and are skipped (leader's view; see kollector status).", value: stats.invalid_specs.load(Ordering::Relaxed) as f64, counter: false },
                Extra { name: "kollector_reconcile_pass_seconds", help: "Duration of the leader's latest reconcile pass.", value: stats.last_pass_ms.load(Ordering::Relaxed) as f64 / 1000.0, counter: false },
                Extra { name: "kollector_reconcile_failed_chunks", help: "Assignment write chunks etcd refused (the rest of the pass went on).", value: stats.failed_chunks.load(Ordering::Relaxed) as f64, counter: true },
            ];
            // Only results of the specs in force now (read at every scrape).
            let results = match (store.generations().await, store.assignments().await) {
                (Ok(g), Ok((records, _))) => intake.current(&g, &records),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("cannot read monitors for /metrics: {e}");
                    Vec::new()
                }
            };
            render_entries(results, extra, false)
        })
    });
    let http_stop = wait(stop_rx);
    let web = tokio::spawn(async move {
        if let Err(e) = http::serve(http_listener, render, http_stop).await {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    eprintln!("kollector manager: ManagerService on {grpc_addr}, cluster metrics on http://{http_addr}/metrics");
    shutdown_signal().await;
    tracing::info!("shutting down: resigning leadership");
    election.leave().await;
    let _ = reconciler.await;
    intake_task.abort();
    let _ = stop_tx.send(true);
    let _ = tokio::join!(grpc, web);
    Ok(())
}
