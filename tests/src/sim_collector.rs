//! Simulated collectors, for driving the real managers and a real etcd at
//! the scale of 100,000 monitors on one machine.
//!
//! A simulated collector registers in etcd exactly as a collector does (its
//! record under a lease of its own, kept alive every TTL/3) and serves the
//! real `CollectorService` protocol on a loopback port: it takes Assign and
//! Unassign (refusing an Assign addressed to another lease, as a collector
//! does, and any command of a leader term older than one it has seen),
//! answers ListRunning with its collector id, lease and list digest, and streams
//! synthetic results of a chosen size (with a handover history every few
//! results) for everything it runs. It opens no Kafka client: what it
//! measures is the control plane alone.
//!
//! Faults, as a test needs them:
//! - [`SimCollector::kill`]: like SIGKILL. Every call fails at once
//!   (UNAVAILABLE), streams end, the listener closes, and keepalives stop, so
//!   the lease runs out one TTL later.
//! - [`SimCollector::cut`]: reachable by etcd, not by the managers: calls
//!   hang until [`SimCollector::restore`]; keepalives go on.
//! - [`SimCollector::pause`]: like SIGSTOP: calls hang and keepalives stop.
//!   [`SimCollector::resume`] goes on; if the lease ran out meanwhile it
//!   registers again under a fresh lease with nothing running, as a
//!   collector that fenced itself does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use kollector_coordination::keys::Keys;
use kollector_proto::v1::collector_service_server::{CollectorService, CollectorServiceServer};
use kollector_proto::v1::{self as pb};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// What simulated collectors send, and how they hold their leases.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub prefix: String,
    pub ttl: Duration,
    /// Each running monitor sends a result this often (its "interval").
    pub result_every: Duration,
    /// Partitions in each result's snapshot (about 40 bytes each).
    pub partitions: usize,
    /// A handover history with every this-many results (0: none).
    pub history_every: u64,
    /// Points per partition in a history.
    pub history_points: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            prefix: "/kollector".into(),
            ttl: Duration::from_secs(3),
            result_every: Duration::from_secs(30),
            partitions: 12,
            history_every: 4,
            history_points: 8,
        }
    }
}

/// What a simulated collector runs: monitor → (generation, epoch).
type Running = BTreeMap<String, (u64, u64)>;

struct Shared {
    id: String,
    config: SimConfig,
    lease: AtomicI64,
    running: Mutex<Running>,
    dead: AtomicBool,
    /// Calls hang while set (cut or paused).
    hold: AtomicBool,
    paused: AtomicBool,
    released: Notify,
    /// Changes to `running` or `dead`, for result streams.
    changed: watch::Sender<u64>,
    /// The highest leader term seen; older commands are refused.
    term: AtomicI64,
    assigns: AtomicU64,
    unassigns: AtomicU64,
    results_sent: AtomicU64,
}

impl Shared {
    /// Waits while calls are held; fails once dead.
    async fn gate(&self) -> Result<(), Status> {
        loop {
            if self.dead.load(Ordering::SeqCst) {
                return Err(Status::unavailable("killed"));
            }
            let released = self.released.notified();
            if !self.hold.load(Ordering::SeqCst) {
                return Ok(());
            }
            released.await;
        }
    }

    /// Refuses a command of an older leader term than one seen.
    fn believe(&self, term: i64) -> Result<(), Status> {
        // 0: no term (a manager's read, as ClusterRunner's waits send).
        if term == 0 {
            return Ok(());
        }
        let seen = self.term.fetch_max(term, Ordering::SeqCst);
        if term < seen {
            return Err(Status::failed_precondition(format!("leader term {term} is older than {seen}")));
        }
        Ok(())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// One simulated collector, alive until killed or dropped.
pub struct SimCollector {
    pub id: String,
    pub address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    keepalive: JoinHandle<()>,
}

fn record(address: &SocketAddr) -> String {
    serde_json::json!({
        "grpc_address": format!("http://{address}"),
        "http_address": "127.0.0.1:9",
        "labels": {},
        "weight": 1.0,
        "version": "simulated",
    })
    .to_string()
}

/// Grants a lease and puts the collector's record under it; the lease.
async fn register(
    client: &mut Client,
    keys: &Keys,
    id: &str,
    address: &SocketAddr,
    ttl: Duration,
) -> Result<i64, String> {
    let lease = client.lease_grant(ttl.as_secs() as i64, None).await.map_err(|e| e.to_string())?.id();
    client
        .put(keys.collector(id), record(address), Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(lease)
}

impl SimCollector {
    /// Registers `id` in `etcd` and serves on a fresh loopback port.
    pub async fn start(etcd: &str, id: &str, config: SimConfig) -> SimCollector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let mut client = Client::connect([etcd], None).await.expect("connect to etcd");
        let keys = Keys::new(&config.prefix);
        let lease = register(&mut client, &keys, id, &address, config.ttl).await.expect("register");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            id: id.to_string(),
            config: config.clone(),
            lease: AtomicI64::new(lease),
            running: Mutex::new(BTreeMap::new()),
            dead: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            released: Notify::new(),
            changed,
            term: AtomicI64::new(0),
            assigns: AtomicU64::new(0),
            unassigns: AtomicU64::new(0),
            results_sent: AtomicU64::new(0),
        });
        let service = CollectorServiceServer::new(Service { shared: shared.clone() })
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let s = shared.clone();
        let server = tokio::spawn(async move {
            let stopped = async move {
                let mut changes = s.changed.subscribe();
                let _ = changes.wait_for(|_| s.dead.load(Ordering::SeqCst)).await;
            };
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stopped)
                .await;
        });
        let keepalive = tokio::spawn(keep_alive(client, keys, address, shared.clone()));
        SimCollector { id: id.to_string(), address, shared, server, keepalive }
    }

    /// Like SIGKILL: every call fails, streams end, keepalives stop (the
    /// lease runs out one TTL later).
    pub fn kill(&self) {
        self.keepalive.abort();
        self.shared.dead.store(true, Ordering::SeqCst);
        self.shared.released.notify_waiters();
        self.shared.bump();
    }

    /// Reachable by etcd, not by the managers: calls hang.
    pub fn cut(&self) {
        self.shared.hold.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.shared.hold.store(false, Ordering::SeqCst);
        self.shared.released.notify_waiters();
    }

    /// Like SIGSTOP: calls hang and keepalives stop.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        self.cut();
    }

    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.restore();
    }

    /// Drops `monitor` without being told to (an actor that died): the
    /// leader must notice from ListRunning and start it again.
    pub fn forget(&self, monitor: &str) -> bool {
        let gone = self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).remove(monitor).is_some();
        self.shared.bump();
        gone
    }

    /// Monitor → (generation, epoch) it runs now.
    pub fn running(&self) -> BTreeMap<String, (u64, u64)> {
        self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn lease(&self) -> i64 {
        self.shared.lease.load(Ordering::SeqCst)
    }

    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::SeqCst)
    }

    /// (Assigns taken, Unassigns taken, results sent).
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = &self.shared;
        (s.assigns.load(Ordering::Relaxed), s.unassigns.load(Ordering::Relaxed), s.results_sent.load(Ordering::Relaxed))
    }
}

impl Drop for SimCollector {
    fn drop(&mut self) {
        self.kill();
        self.server.abort();
    }
}

/// Keeps the lease alive every TTL/3 (not while paused); a lease found gone
/// (after a pause) is replaced by a fresh registration with nothing running.
async fn keep_alive(mut client: Client, keys: Keys, address: SocketAddr, shared: Arc<Shared>) {
    let every = shared.config.ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        if shared.paused.load(Ordering::SeqCst) {
            continue;
        }
        let lease = shared.lease.load(Ordering::SeqCst);
        let alive = match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => {
                let _ = keeper.keep_alive().await;
                matches!(tokio::time::timeout(every, stream.message()).await, Ok(Ok(Some(r))) if r.ttl() > 0)
            }
            Err(_) => continue,
        };
        if !alive {
            shared.running.lock().unwrap_or_else(|p| p.into_inner()).clear();
            shared.bump();
            if let Ok(lease) = register(&mut client, &keys, &shared.id, &address, shared.config.ttl).await {
                shared.lease.store(lease, Ordering::SeqCst);
            }
        }
    }
}

struct Service {
    shared: Arc<Shared>,
}

type ResultStream = Pin<Box<dyn futures::Stream<Item = Result<pb::MonitorResult, Status>> + Send>>;

/// A synthetic result for `monitor`, with a snapshot of `partitions`
/// partitions and, if `history`, a handover history.
fn synthetic(
    shared: &Shared,
    monitor: &str,
    (generation, epoch): (u64, u64),
    n: u64,
    history: bool,
) -> pb::MonitorResult {
    let config = &shared.config;
    let now = kollector_core::unix_ms();
    let partitions = (0..config.partitions as i32)
        .map(|p| pb::Partition {
            partition: p,
            leader: Some(1),
            replicas: vec![1],
            isr: vec![1],
            earliest: Some(0),
            latest: Some(1_000 + n as i64),
            ..Default::default()
        })
        .collect();
    let snapshot = pb::Snapshot {
        monitor_id: monitor.to_string(),
        generation,
        cluster_id: format!("sim-{monitor}"),
        controller_id: Some(1),
        brokers: vec![pb::Broker { id: 1, host: "127.0.0.1".into(), port: 9, rack: None }],
        topics: vec![pb::Topic { name: "events".into(), partitions }],
        collected_at_ms: now,
        duration_ms: 5,
        group_metrics: "partition".into(),
        ..Default::default()
    };
    let history = history.then(|| pb::MonitorHistory {
        cluster_id: format!("sim-{monitor}"),
        logs: (0..config.partitions as i32)
            .map(|p| pb::PartitionLog {
                topic: "events".into(),
                partition: p,
                offset_deltas: vec![100; config.history_points],
                at_ms_deltas: vec![30_000; config.history_points],
            })
            .collect(),
        ..Default::default()
    });
    let every = config.result_every.as_millis() as u64;
    pb::MonitorResult {
        monitor_id: monitor.to_string(),
        generation,
        status: Some(pb::MonitorStatus { state: pb::MonitorState::Running as i32, ..Default::default() }),
        snapshot: Some(snapshot),
        attempted_at_ms: now,
        collector_id: shared.id.clone(),
        epoch,
        last_success_ms: now,
        collections_total: n,
        history,
        next_result_in_ms: Some((every + 10_000) as i64),
        interval_ms: every,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl CollectorService for Service {
    async fn assign(&self, req: Request<pb::AssignRequest>) -> Result<Response<pb::AssignResponse>, Status> {
        self.shared.gate().await?;
        let req = req.into_inner();
        let (Some(spec), Some(fencing)) = (req.spec, req.fencing) else {
            return Err(Status::invalid_argument("spec and fencing are required"));
        };
        self.shared.believe(fencing.leader_term)?;
        if fencing.collector_lease != self.shared.lease.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition("addressed to another incarnation (lease)"));
        }
        let mut running = self.shared.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(&spec.id).is_some_and(|(_, e)| *e > fencing.epoch) {
            return Err(Status::failed_precondition("an older epoch than the one running"));
        }
        running.insert(spec.id, (fencing.generation, fencing.epoch));
        drop(running);
        self.shared.assigns.fetch_add(1, Ordering::Relaxed);
        self.shared.bump();
        Ok(Response::new(pb::AssignResponse { outcome: "started (simulated)".into() }))
    }

    async fn unassign(&self, req: Request<pb::UnassignRequest>) -> Result<Response<pb::UnassignResponse>, Status> {
        self.shared.gate().await?;
        let req = req.into_inner();
        if let Some(f) = &req.fencing {
            self.shared.believe(f.leader_term)?;
        }
        let was_running =
            self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.monitor_id).is_some();
        self.shared.unassigns.fetch_add(1, Ordering::Relaxed);
        self.shared.bump();
        Ok(Response::new(pb::UnassignResponse { was_running }))
    }

    async fn list_running(
        &self,
        req: Request<pb::ListRunningRequest>,
    ) -> Result<Response<pb::ListRunningResponse>, Status> {
        self.shared.gate().await?;
        let req = req.into_inner();
        self.shared.believe(req.leader_term)?;
        let monitors: Vec<pb::RunningMonitor> = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(m, (generation, epoch))| pb::RunningMonitor {
                monitor_id: m.clone(),
                generation: *generation,
                epoch: *epoch,
                stopping: false,
            })
            .collect();
        let lease = self.shared.lease.load(Ordering::SeqCst);
        Ok(Response::new(kollector_proto::list_running_answer(
            self.shared.id.clone(),
            lease,
            monitors,
            req.unless_digest,
        )))
    }

    async fn probe(&self, _req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        Err(Status::unimplemented("a simulated collector opens no Kafka client"))
    }

    type StreamResultsStream = ResultStream;

    /// Each running monitor's result every `result_every`, spread evenly
    /// over that period (a twentieth of them each twentieth).
    async fn stream_results(&self, _req: Request<pb::StreamResultsRequest>) -> Result<Response<ResultStream>, Status> {
        self.shared.gate().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            const TICKS: u32 = 20;
            let mut tick = tokio::time::interval(shared.config.result_every / TICKS);
            let mut sent: u64 = 0;
            let mut round: u64 = 0;
            let mut changes = shared.changed.subscribe();
            loop {
                if shared.dead.load(Ordering::SeqCst) {
                    return;
                }
                // This tick's share: the monitors whose position falls in it.
                let slot = (round % u64::from(TICKS)) as usize;
                let due: Vec<(String, (u64, u64))> = shared
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % TICKS as usize == slot)
                    .map(|(_, (m, f))| (m.clone(), *f))
                    .collect();
                for (m, f) in due {
                    if shared.hold.load(Ordering::SeqCst) {
                        break;
                    }
                    sent += 1;
                    let history = shared.config.history_every > 0 && sent.is_multiple_of(shared.config.history_every);
                    if tx.send(Ok(synthetic(&shared, &m, f, sent, history))).await.is_err() {
                        return;
                    }
                    shared.results_sent.fetch_add(1, Ordering::Relaxed);
                }
                round += 1;
                // Woken early only to end (killed, or the manager went away).
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = changes.wait_for(|_| shared.dead.load(Ordering::SeqCst)) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
