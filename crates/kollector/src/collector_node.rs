//! `kollector collector`: a collector node in cluster mode.
//!
//! Registers itself in etcd under a lease, serves CollectorService (the
//! manager's commands) and `/metrics` for the monitors it owns, and fences
//! itself (stops every monitor, closing its clients) when it cannot keep the
//! lease alive. On restart with the same id it starts empty and waits for
//! the manager.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use kollector_collector::{
    ClusterMember, CollectGate, CollectorNode, CollectorServiceImpl, CurrentLease, EtcdNow, TermSource,
};
use kollector_coordination::election;
use kollector_coordination::keys::Keys;
use kollector_coordination::lease::{self, EtcdAccess};
use kollector_coordination::membership::{CollectorRecord, MembershipConfig};
use kollector_core::CollectorId;
use kollector_proto::v1::collector_service_server::CollectorServiceServer;
use kollector_security::NodeTls;
use tokio_stream::wrappers::TcpListenerStream;

use crate::etcd_args::{EtcdArgs, GrpcArgs};
use crate::http;
use crate::security_args::{KafkaClientArgs, NodeTlsArgs};
use crate::standalone::shutdown_signal;

#[derive(Args)]
pub struct CollectorArgs {
    #[command(flatten)]
    cluster: EtcdArgs,
    #[command(flatten)]
    grpc: GrpcArgs,
    #[command(flatten)]
    tls: NodeTlsArgs,
    #[command(flatten)]
    kafka_tls: KafkaClientArgs,
    /// This collector's id: stable across restarts (e.g. the host name).
    #[arg(long, env = "KOLLECTOR_COLLECTOR_ID")]
    id: String,
    /// Where to serve CollectorService (the manager connects here).
    #[arg(long, default_value = "127.0.0.1:7171")]
    grpc_listen: SocketAddr,
    /// Where to serve /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9465")]
    http_listen: SocketAddr,
    /// The gRPC address managers should dial, if not the listen address (e.g. behind NAT).
    #[arg(long)]
    advertise_grpc: Option<String>,
    /// The HTTP address scrapers should use for this collector's monitors
    /// (published in etcd; managers' /sd points here), if not the listen address.
    #[arg(long)]
    advertise_http: Option<String>,
    /// Membership lease TTL: a dead collector's monitors move after about this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Label for placement constraints, key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// On SIGTERM, how long to wait for this collector's monitors to move to
    /// other collectors (it marks itself draining) before stopping them; 0
    /// stops them at once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Relative capacity for the planner (1.0 = typical; 0.01 to 100).
    #[arg(long, default_value_t = 1.0)]
    weight: f64,
    #[command(flatten)]
    stale: crate::stale_args::StaleArgs,
}

/// Marks this collector draining (bound to its lease) and waits until it
/// runs no monitor, or `timeout`. Errors only shorten the wait: the monitors
/// are stopped and the lease revoked right after in any case.
async fn drain_before_leaving(
    node: &kollector_collector::CollectorHandle,
    etcd: &EtcdAccess,
    prefix: &str,
    id: &CollectorId,
    lease: i64,
    timeout: Duration,
    ttl: Duration,
) {
    if lease == 0 || node.list_running().await.is_empty() {
        return;
    }
    let marked = async {
        let mut client = lease::connect(etcd, ttl).await?;
        kollector_coordination::membership::mark_draining(&mut client, &Keys::new(prefix), id, lease).await
    };
    if let Err(e) = marked.await {
        tracing::warn!("cannot mark this collector draining ({e}); stopping its monitors now");
        return;
    }
    tracing::info!(timeout = ?timeout, "draining: waiting for the monitors to move to other collectors");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = node.list_running().await.len();
        if left == 0 {
            tracing::info!("drained: every monitor runs elsewhere");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(left, "drain timeout: stopping the monitors that did not move");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the current leader term from etcd (one connection, made on first
/// use and kept), for the collector's check of new terms.
fn term_source(etcd: EtcdAccess, prefix: String, ttl: Duration) -> TermSource {
    let client: Arc<tokio::sync::Mutex<Option<etcd_client::Client>>> = Arc::default();
    let keys = Keys::new(&prefix);
    Arc::new(move || {
        let (etcd, keys, client) = (etcd.clone(), keys.clone(), client.clone());
        Box::pin(async move {
            let mut slot = client.lock().await;
            if slot.is_none() {
                *slot = Some(lease::connect(&etcd, ttl).await.map_err(|e| e.to_string())?);
            }
            let Some(c) = slot.as_mut() else { return Err("no etcd client".to_string()) };
            // Bounded: a command must not hang on a partitioned etcd.
            let read = tokio::time::timeout(lease::call_timeout(ttl), election::current_leader_at(c, &keys)).await;
            match read {
                Ok(Ok((leader, revision))) => Ok(EtcdNow { leader_term: leader.map(|(_, term)| term), revision }),
                Ok(Err(e)) => {
                    *slot = None;
                    Err(e.to_string())
                }
                Err(_) => {
                    *slot = None;
                    Err("etcd did not answer in time".to_string())
                }
            }
        })
    })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not key=value"))
}

pub async fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let id = CollectorId::new(args.id.clone()).map_err(|e| anyhow::anyhow!("--id {:?} {e}", args.id))?;
    if args.lease_ttl < Duration::from_secs(2) {
        anyhow::bail!("--lease-ttl must be at least 2s (etcd's minimum lease)");
    }
    if args.lease_ttl.subsec_nanos() != 0 {
        // etcd grants whole seconds: a fence computed from 2.99s would
        // leave 10 ms of margin against a 2 s lease.
        anyhow::bail!("--lease-ttl must be whole seconds (etcd leases are), got {:?}", args.lease_ttl);
    }
    let limits = args.grpc.limits()?;
    let tls = args.tls.load("this collector")?;
    if tls.is_some() && !kollector_security::tls::is_tls_name(id.as_str()) {
        anyhow::bail!(
            "--id {:?} cannot be checked against a certificate (managers require a collector's certificate to name its id): use a DNS-style name, e.g. letters, digits and '-', not ending in '-' and not all digits",
            id.as_str()
        );
    }
    let etcd = args.cluster.access(args.tls.insecure)?;
    let grpc_listener = http::bind(args.grpc_listen, "gRPC (CollectorService)").await?;
    let http_listener = http::bind(args.http_listen, "HTTP (/metrics)").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let http_address = args.advertise_http.clone().unwrap_or_else(|| http_addr.to_string());
    let (etcd_for_drain, prefix, drain_timeout, args_ttl) =
        (etcd.clone(), args.cluster.prefix.clone(), args.drain_timeout, args.lease_ttl);
    let record = CollectorRecord {
        grpc_address: args.advertise_grpc.clone().unwrap_or_else(|| grpc_addr.to_string()),
        http_address: http_address.clone(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        weight: args.weight,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    record.check().map_err(|e| anyhow::anyhow!("--weight/--label: {e}"))?;
    let options = args.kafka_tls.client_options();
    // Shut until registered: no collection without a live lease.
    let gate = CollectGate::shut();
    let lease = CurrentLease::default();
    let lease_view = lease.clone();
    let node = CollectorNode::start_gated(options.clone(), gate.clone()).context("starting the collector")?;
    node.store().set_stale_rule(args.stale.stale_after_intervals);
    let service = CollectorServiceImpl::new(id.clone(), node.clone(), options, lease.clone(), limits.max_message_bytes)
        .with_term_source(term_source(etcd.clone(), args.cluster.prefix.clone(), args.lease_ttl));
    let member = ClusterMember::start(
        MembershipConfig { etcd, prefix: args.cluster.prefix, id: id.clone(), record, ttl: args.lease_ttl },
        node.clone(),
        gate,
        lease,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grpc_stop = wait(stop_rx.clone());
    let server = tonic::service::interceptor::InterceptedService::new(
        CollectorServiceServer::new(service)
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes),
        kollector_security::tls::require_manager,
    );
    // Mutual TLS: only a holder of a cluster certificate (a manager) gets
    // past the handshake to send commands or read results.
    let mut grpc_server = limits.server(tls.as_ref().map(NodeTls::server_mutual))?;
    // A collector whose server is gone cannot be commanded: it must not
    // keep its lease (and its monitors) while unable to work.
    let (grpc_ended_tx, mut grpc_ended) = tokio::sync::oneshot::channel::<String>();
    let grpc = tokio::spawn(async move {
        let r = grpc_server
            .add_service(server)
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), grpc_stop)
            .await;
        let why = match r {
            Err(e) => format!("the gRPC server failed: {e}"),
            Ok(()) => "the gRPC server stopped".to_string(),
        };
        let _ = grpc_ended_tx.send(why);
    });
    let http_stop = wait(stop_rx);
    // Ready while it holds a lease: registered, not fenced, not leaving.
    let held = lease_view.clone();
    let ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = Arc::new(move || {
        if held.get() != 0 {
            Ok(())
        } else {
            Err("no etcd lease held (registering, fenced or leaving)".into())
        }
    });
    let store = node.store().clone();
    let extra = member.metrics();
    let web = tokio::spawn(async move {
        let views = http::local(store, extra, http_address, ready);
        if let Err(e) = http::serve(http_listener, views, http_stop).await {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    eprintln!("kollector collector {id}: CollectorService on {grpc_addr}, metrics on http://{http_addr}/metrics");
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        reason = member.failed() => Some(reason),
        why = &mut grpc_ended => Some(why.unwrap_or_else(|_| "the gRPC server task ended".to_string())),
        _ = node.actors_ended() => Some("the actor system stopped; monitors cannot run".to_string()),
    };
    if let Some(reason) = &failure {
        tracing::error!("{reason}; leaving the cluster and exiting");
    }
    // Graceful: mark this collector draining so the leader moves its
    // monitors elsewhere one by one (each stops here only once the move is
    // under way), and wait for that, bounded.
    if failure.is_none() && !drain_timeout.is_zero() {
        drain_before_leaving(&node, &etcd_for_drain, &prefix, &id, lease_view.get(), drain_timeout, args_ttl).await;
    }
    // Stop every monitor (closing its Kafka client) *before* giving up the
    // lease: once the key is gone the manager starts them elsewhere at once.
    tracing::info!("shutting down: stopping monitors, then leaving the cluster");
    member.stop_collecting().await;
    node.shutdown().await;
    member.leave().await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(grpc, web);
    match failure {
        Some(reason) => Err(anyhow::anyhow!("{reason}")),
        None => Ok(()),
    }
}
