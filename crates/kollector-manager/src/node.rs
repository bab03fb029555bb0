//! A manager node (cluster mode): everything one manager runs, started and
//! stopped in one place.
//!
//! - the watched view of etcd every part below reads (`cluster_view.rs`);
//! - the results intake (follows every collector's result stream);
//! - its candidacy in the leader election, and the reconciler, which runs
//!   passes only while this manager leads;
//! - the one ManagerService over etcd (desired state) and the reconciler
//!   (runner), served on the given listener;
//! - the `/metrics` body: every monitor's current result (only from its
//!   owner, for the spec in force) and the manager's own metrics.
//!
//! Stopping resigns leadership at once (a standby takes over without
//! waiting for the election lease), then stops serving.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kollector_collector::metrics::{render_entries, Extra};
use kollector_coordination::election::{Election, ElectionConfig, Leadership};
use kollector_coordination::keys::Keys;
use kollector_coordination::lease::EtcdAccess;
use kollector_coordination::{lease, CoordinationError};
use kollector_proto::transport::MAX_API_REQUEST_BYTES;
use kollector_proto::v1::manager_service_server::ManagerServiceServer;
use kollector_proto::GrpcLimits;
use kollector_security::{Access, ApiGuard, Keyring, NodeTls, TokenFile};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::cluster_store::ClusterStore;
use crate::cluster_view::ClusterView;
use crate::decisions::TxnLimits;
use crate::intake::Intake;
use crate::reconciler::{CollectorClients, Reconciler, ReconcilerStats};
use crate::runner::ClusterRunner;
use crate::service::ManagerServiceImpl;

/// How a manager node runs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub etcd: EtcdAccess,
    /// Node TLS: the API is served over TLS and collectors are called with
    /// mutual TLS. None only with `--insecure`.
    pub tls: Option<NodeTls>,
    /// Bearer tokens the API accepts; None: every caller is admin (`--insecure`).
    pub tokens_file: Option<PathBuf>,
    /// Key that seals secrets before they are written to etcd; without it a
    /// monitor with a secret is refused.
    pub secret_key_file: Option<PathBuf>,
    /// Probes this manager starts per minute.
    pub probes_per_minute: u32,
    pub prefix: String,
    /// The gRPC address published as leader.
    pub advertise_grpc: String,
    pub election_ttl: Duration,
    pub reconcile_period: Duration,
    pub apply_timeout: Duration,
    pub txn_limits: TxnLimits,
    pub grpc: GrpcLimits,
    /// When a monitor's result stops being served as current.
    pub stale_rule: kollector_core::result::StaleRule,
    /// When a silent collector is revoked, and how long one that came back
    /// must answer before it gets work.
    pub liveness: crate::liveness::LivenessRules,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Etcd { endpoints: String, source: CoordinationError },
    #[error("{0}")]
    Security(String),
}

impl ManagerConfig {
    /// Refuses settings etcd or the reconciler cannot work with.
    pub fn validate(&self) -> Result<(), NodeError> {
        if self.election_ttl < Duration::from_secs(2) {
            return Err(NodeError::Invalid("--election-ttl must be at least 2s (etcd's minimum lease)".into()));
        }
        if self.election_ttl.subsec_nanos() != 0 {
            return Err(NodeError::Invalid(format!(
                "--election-ttl must be whole seconds (etcd leases are), got {:?}",
                self.election_ttl
            )));
        }
        if self.liveness.unreachable_after < Duration::from_secs(2)
            || self.liveness.unreachable_after <= self.reconcile_period
        {
            return Err(NodeError::Invalid(
                "--unreachable-after must be at least 2s and longer than --reconcile-period (silence is seen once per pass)".into(),
            ));
        }
        if self.txn_limits.max_ops == 0 {
            return Err(NodeError::Invalid("--etcd-max-txn-ops must be at least 1".into()));
        }
        if self.txn_limits.max_request_bytes < 64 * 1024 {
            return Err(NodeError::Invalid("--etcd-max-request-bytes must be at least 65536".into()));
        }
        if self.reconcile_period < Duration::from_millis(50) {
            return Err(NodeError::Invalid("--reconcile-period must be at least 50ms".into()));
        }
        Ok(())
    }
}

/// What `/metrics` is rendered from; cheap to clone.
#[derive(Clone)]
pub struct ManagerMetrics {
    view: ClusterView,
    intake: Intake,
    stats: Arc<ReconcilerStats>,
    leadership: watch::Receiver<Leadership>,
}

impl ManagerMetrics {
    /// The `/metrics` body now.
    pub async fn render(&self) -> String {
        render_entries(self.current().await.unwrap_or_default(), self.own_metrics(), false)
    }

    /// Only the manager's own series (no monitor's).
    pub fn render_self(&self) -> String {
        render_entries(Vec::new(), self.own_metrics(), false)
    }

    fn own_metrics(&self) -> Vec<Extra> {
        let stats = &self.stats;
        let leader = matches!(&*self.leadership.borrow(), Leadership::Leader(_));
        let gauge = |name, help, value| Extra { name, help, value, counter: false };
        let counter = |name, help, value| Extra { name, help, value, counter: true };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let (_, latest_bytes, latest_dropped) = self.intake.latest_counts();
        let (_, history_bytes, histories_dropped) = self.intake.history_counts();
        let (view_lists, view_events) = self.view.counts();
        let extra = vec![
            gauge("kollector_manager_is_leader", "1 if this manager is the leader.", leader as u8 as f64),
            gauge(
                "kollector_leader_term",
                "Term of the leader (the leader key's create revision), as last seen while leading.",
                stats.leader_term.load(Ordering::Relaxed) as f64,
            ),
            gauge("kollector_assignments", "Monitors assigned to a collector (leader's view).", load(&stats.assignments)),
            counter("kollector_rebalance_moves", "Monitors moved from one collector to another.", load(&stats.rebalance_moves)),
            gauge(
                "kollector_failover_seconds",
                "Time from noticing a monitor's collector gone to its Assign on a live collector, for the latest failover.",
                load(&stats.last_failover_ms) / 1000.0,
            ),
            counter(
                "kollector_stale_results_dropped",
                "Results refused because their collector, epoch or generation was not the current assignment's.",
                self.intake.stale_dropped() as f64,
            ),
            gauge(
                "kollector_pending_moves",
                "Monitors waiting for an earlier owner to confirm it stopped them before they start elsewhere (leader's view).",
                load(&stats.pending_moves),
            ),
            counter(
                "kollector_deferred_commands",
                "Commands to a collector not started in a pass because that collector's step budget (1 s) was spent: it answers slowly. They go again next pass (leader's view).",
                load(&stats.deferred_commands),
            ),
            counter(
                "kollector_quiet_passes",
                "Reconcile passes skipped because nothing changed (the watched view of etcd, every collector's running list, liveness) since a pass that found nothing to do; a full pass still runs every 30 s (leader's view).",
                load(&stats.quiet_passes),
            ),
            gauge(
                "kollector_latest_results_bytes",
                "Bytes of the latest results this manager keeps (encoded), all monitors.",
                latest_bytes as f64,
            ),
            counter(
                "kollector_latest_results_dropped",
                "Results not kept because the total cap was reached.",
                latest_dropped as f64,
            ),
            gauge(
                "kollector_histories_bytes",
                "Bytes of offset histories this manager keeps for handovers (encoded), all monitors.",
                history_bytes as f64,
            ),
            counter(
                "kollector_histories_dropped",
                "Offset histories not kept because the total cap was reached (the next owner starts that monitor's windows afresh).",
                histories_dropped as f64,
            ),
            counter(
                "kollector_etcd_view_lists",
                "Full listings of the prefix by this manager's watched view of etcd: one at start, then one per lost watch (a compaction, an error).",
                view_lists as f64,
            ),
            counter(
                "kollector_etcd_view_events",
                "etcd changes applied to this manager's watched view.",
                view_events as f64,
            ),
            gauge(
                "kollector_invalid_specs",
                "Monitor specs in etcd that do not decode and are skipped (leader's view; see kollector status).",
                load(&stats.invalid_specs),
            ),
            gauge(
                "kollector_reconcile_pass_seconds",
                "Duration of the leader's latest reconcile pass.",
                load(&stats.last_pass_ms) / 1000.0,
            ),
            gauge(
                "kollector_collectors_unreachable",
                "Collectors the leader cannot work with (silent past --unreachable-after, revoked, or on probation after coming back), leader's view.",
                load(&stats.unreachable),
            ),
            gauge(
                "kollector_secrets_on_old_keys",
                "Monitors whose secrets are still sealed with another key than the key file's first (leader's view); 0 once a rotation's re-seal is done and the old key line may go.",
                load(&stats.secrets_on_old_keys),
            ),
            counter(
                "kollector_collector_revocations",
                "Collector leases the leader revoked because the collector did not answer it.",
                load(&stats.revocations),
            ),
            counter(
                "kollector_reconcile_failed_chunks",
                "Assignment write chunks etcd refused (the rest of the pass went on).",
                load(&stats.failed_chunks),
            ),
        ];
        extra
    }

    /// Results of the specs in force now, from their owners (from the view:
    /// a scrape reads nothing from etcd).
    async fn current(&self) -> Result<Vec<kollector_core::MonitorResult>, crate::cluster_view::ViewError> {
        Ok(self.view.read(|v| self.intake.current_all(v))?.served())
    }

    /// One monitor's series alone, if it has a current result.
    pub async fn render_monitor(&self, id: &kollector_core::MonitorId) -> Option<String> {
        let r = self.view.read(|v| self.intake.current_of(v, std::iter::once(id))).ok()?.served().pop()?;
        Some(render_entries(vec![r], Vec::new(), false))
    }

    /// Discovery: one target per monitor with a current result, at the HTTP
    /// address of the collector that owns it now.
    pub async fn targets(&self) -> Vec<kollector_collector::discovery::SdTarget> {
        // Copied out under the view's lock, decoded after it.
        let read = self.view.read(|v| {
            let current = self.intake.current_all(v);
            let labels: std::collections::BTreeMap<
                kollector_core::MonitorId,
                std::collections::BTreeMap<String, String>,
            > = current
                .monitors()
                .filter_map(|m| Some((m.clone(), v.monitors.get(m)?.spec.labels.clone())))
                .filter(|(_, l)| !l.is_empty())
                .collect();
            let http: std::collections::BTreeMap<kollector_core::CollectorId, String> =
                v.collectors.iter().map(|(c, live)| (c.clone(), live.record.http_address.clone())).collect();
            (current, labels, http)
        });
        let Ok((current, labels, http)) = read else { return Vec::new() };
        let no_labels = std::collections::BTreeMap::new();
        current
            .served()
            .iter()
            .filter_map(|r| {
                let address = http.get(r.collector.as_ref()?)?;
                let labels = labels.get(&r.monitor).unwrap_or(&no_labels);
                Some(kollector_collector::discovery::target(address, r, labels))
            })
            .collect()
    }

    /// Ready: etcd answers, and, while leading, the latest pass did not fail.
    pub async fn ready(&self) -> Result<(), String> {
        self.view.store().ping().await.map_err(|e| format!("etcd: {e}"))?;
        if let Some(why) = self.view.down() {
            return Err(format!("the view of etcd is not live: {why}"));
        }
        let leading = matches!(&*self.leadership.borrow(), Leadership::Leader(_));
        if leading && self.stats.last_pass_failed.load(Ordering::Relaxed) {
            return Err("leading, but the latest reconcile pass failed".into());
        }
        Ok(())
    }
}

/// A running manager.
pub struct ManagerNode {
    election: Election,
    reconciler: JoinHandle<()>,
    intake_task: JoinHandle<()>,
    view_task: JoinHandle<()>,
    grpc: JoinHandle<()>,
    stop_grpc: watch::Sender<bool>,
    metrics: ManagerMetrics,
}

impl ManagerNode {
    /// Connects to etcd, starts the intake, the election, the reconciler and
    /// the ManagerService on `grpc_listener`.
    pub async fn start(config: ManagerConfig, grpc_listener: tokio::net::TcpListener) -> Result<Self, NodeError> {
        config.validate()?;
        let security = |e: &dyn std::fmt::Display| NodeError::Security(e.to_string());
        let access = match &config.tokens_file {
            Some(path) => Access::Tokens(TokenFile::load(path).map_err(|e| security(&e))?),
            None => Access::Open,
        };
        let secrets = match &config.secret_key_file {
            Some(path) => Some(Arc::new(Keyring::load(path).map_err(|e| security(&e))?)),
            None => None,
        };
        let client = lease::connect(&config.etcd, config.election_ttl)
            .await
            .map_err(|source| NodeError::Etcd { endpoints: config.etcd.endpoints.join(","), source })?;
        let store = ClusterStore::new(client, Keys::new(&config.prefix)).with_secrets(secrets);
        let clients = CollectorClients::new(config.grpc, config.tls.as_ref().map(NodeTls::client));
        let watch_client = lease::connect_for_blocking_calls(&config.etcd, config.election_ttl)
            .await
            .map_err(|source| NodeError::Etcd { endpoints: config.etcd.endpoints.join(","), source })?;
        let (view, view_task) = ClusterView::start(store.clone(), watch_client);
        let (intake, intake_task) = Intake::start(view.clone(), clients.clone(), config.stale_rule);
        let election = Election::start(ElectionConfig {
            etcd: config.etcd.clone(),
            prefix: config.prefix.clone(),
            address: config.advertise_grpc.clone(),
            ttl: config.election_ttl,
            announce: Some(store.sealing_announcement()),
        });
        let stats = Arc::new(ReconcilerStats::default());
        let reconciler = tokio::spawn(
            Reconciler::new(
                view.clone(),
                clients.clone(),
                stats.clone(),
                config.reconcile_period,
                config.txn_limits,
                intake.clone(),
                config.liveness,
            )
            .run(election.state()),
        );
        // The one ManagerService: desired state in etcd, run by the reconciler.
        let runner =
            ClusterRunner::new(view.clone(), intake.clone(), clients, config.apply_timeout).with_health(stats.clone());
        let guard = ApiGuard::new(access, config.probes_per_minute);
        let service = ManagerServiceServer::new(
            ManagerServiceImpl::new(Arc::new(view.clone()), Arc::new(runner)).with_guard(guard),
        )
        .max_decoding_message_size(MAX_API_REQUEST_BYTES)
        .max_encoding_message_size(config.grpc.max_message_bytes);
        let mut server = config.grpc.server(config.tls.as_ref().map(NodeTls::server)).map_err(|e| security(&e))?;
        let (stop_grpc, mut stop_rx) = watch::channel(false);
        let grpc = tokio::spawn(async move {
            let stopped = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            let r = server
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), stopped)
                .await;
            if let Err(e) = r {
                tracing::error!("gRPC server failed: {e}");
            }
        });
        let metrics = ManagerMetrics { view, intake, stats, leadership: election.state() };
        Ok(ManagerNode { election, reconciler, intake_task, view_task, grpc, stop_grpc, metrics })
    }

    pub fn metrics(&self) -> ManagerMetrics {
        self.metrics.clone()
    }

    /// Resigns leadership at once, stops the reconciler, the intake and the API.
    pub async fn stop(self) {
        self.election.leave().await;
        let _ = self.reconciler.await;
        self.intake_task.abort();
        self.view_task.abort();
        let _ = self.stop_grpc.send(true);
        let _ = self.grpc.await;
    }
}
