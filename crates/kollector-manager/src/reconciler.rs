//! The reconciler: makes the cluster run what the plan says (leader only).
//!
//! Level-triggered: every `period` (which also debounces bursts of
//! membership changes) it reads monitors, live collectors, drain marks and
//! assignments from etcd, plans, persists the assignments that changed in
//! one leader-guarded transaction (their new epoch is its revision), then
//! repairs every collector against the desired state it learns through
//! ListRunning: first Unassign everything running where it should not (so a
//! moved monitor never has two owners), then Assign what is missing or
//! outdated. A lost Assign, a restarted collector or a manager failover are
//! all repaired by the next pass; nothing depends on remembering past calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kollector_coordination::election::{LeaderToken, Leadership};
use kollector_coordination::membership::CollectorRecord;
use kollector_core::{CollectorId, MonitorId};
use kollector_proto::input_to_proto;
use kollector_proto::v1::collector_service_client::CollectorServiceClient;
use kollector_proto::v1::{self as pb};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::cluster_store::{Assignment, ClusterStore};
use crate::planner::{self, CollectorSlot, Placement};

/// Bound on one call to a collector (an Assign may wait for an old client to close).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on ListRunning: a frozen collector must not stall a pass.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters the manager exports as `kollector_*` metrics.
#[derive(Debug, Default)]
pub struct ReconcilerStats {
    pub assignments: AtomicU64,
    pub rebalance_moves: AtomicU64,
    pub passes: AtomicU64,
    pub leader_term: AtomicI64,
    /// Milliseconds from noticing a monitor's collector gone to its Assign on a live one.
    pub last_failover_ms: AtomicU64,
}

/// gRPC clients to collectors, by address.
#[derive(Default, Clone)]
pub struct CollectorClients {
    clients: Arc<tokio::sync::Mutex<HashMap<String, CollectorServiceClient<Channel>>>>,
}

impl CollectorClients {
    pub async fn get(&self, address: &str) -> Result<CollectorServiceClient<Channel>, String> {
        let mut map = self.clients.lock().await;
        if let Some(c) = map.get(address) {
            return Ok(c.clone());
        }
        let url = if address.starts_with("http") { address.to_string() } else { format!("http://{address}") };
        let channel = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        let client = CollectorServiceClient::new(channel);
        map.insert(address.to_string(), client.clone());
        Ok(client)
    }
}

pub struct Reconciler {
    store: ClusterStore,
    clients: CollectorClients,
    stats: Arc<ReconcilerStats>,
    period: Duration,
    orphaned_since: HashMap<MonitorId, Instant>,
}

impl Reconciler {
    pub fn new(store: ClusterStore, clients: CollectorClients, stats: Arc<ReconcilerStats>, period: Duration) -> Self {
        Reconciler { store, clients, stats, period, orphaned_since: HashMap::new() }
    }

    /// Runs passes while this manager leads, until `leadership` says Stopped.
    pub async fn run(mut self, mut leadership: watch::Receiver<Leadership>) {
        loop {
            let token = match &*leadership.borrow_and_update() {
                Leadership::Leader(t) => Some(t.clone()),
                Leadership::Stopped => return,
                Leadership::Follower => None,
            };
            match token {
                Some(token) => {
                    self.stats.leader_term.store(token.term, Ordering::Relaxed);
                    if let Err(e) = self.pass(&token).await {
                        tracing::warn!("reconcile pass failed: {e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.period) => {}
                        r = leadership.changed() => if r.is_err() { return },
                    }
                }
                None => {
                    self.orphaned_since.clear();
                    if leadership.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One plan-persist-repair pass.
    pub async fn pass(&mut self, token: &LeaderToken) -> Result<(), String> {
        let monitors = self.store.monitors().await.map_err(|e| e.to_string())?;
        let collectors = self.store.collectors().await.map_err(|e| e.to_string())?;
        let draining = self.store.draining().await.map_err(|e| e.to_string())?;
        let (mut assignments, _) = self.store.assignments().await.map_err(|e| e.to_string())?;

        let slots: Vec<CollectorSlot> = collectors
            .iter()
            .filter(|(id, _)| !draining.contains(*id))
            .map(|(id, r)| CollectorSlot { id: id.clone(), weight: r.weight, labels: r.labels.clone() })
            .collect();
        let placements: BTreeMap<MonitorId, Placement> = monitors
            .iter()
            .map(|(m, s)| {
                let placement = Placement {
                    pinned: s.spec.pinned_collector.clone(),
                    required_labels: s.spec.collector_labels.clone(),
                };
                (m.clone(), placement)
            })
            .collect();
        let previous: BTreeMap<MonitorId, CollectorId> =
            assignments.iter().map(|(m, a)| (m.clone(), a.collector.clone())).collect();
        let plan = planner::plan(&placements, &slots, &previous);

        let now = Instant::now();
        for (m, a) in &assignments {
            if !collectors.contains_key(&a.collector) {
                self.orphaned_since.entry(m.clone()).or_insert(now);
            }
        }

        let mut changes: Vec<(MonitorId, Option<CollectorId>)> = Vec::new();
        let mut moves = 0u64;
        for (m, a) in &assignments {
            match plan.assignments.get(m) {
                Some(c) if *c == a.collector => {}
                Some(c) => {
                    moves += 1;
                    changes.push((m.clone(), Some(c.clone())));
                }
                None => changes.push((m.clone(), None)),
            }
        }
        for (m, c) in &plan.assignments {
            if !assignments.contains_key(m) {
                changes.push((m.clone(), Some(c.clone())));
            }
        }
        if !changes.is_empty() {
            let epoch = self.store.write_assignments(token, &changes).await.map_err(|e| e.to_string())? as u64;
            tracing::info!(changes = changes.len(), moves, epoch, term = token.term, "assignments written");
            self.stats.rebalance_moves.fetch_add(moves, Ordering::Relaxed);
            for (m, c) in &changes {
                match c {
                    Some(c) => {
                        assignments.insert(m.clone(), Assignment { collector: c.clone(), epoch });
                    }
                    None => {
                        assignments.remove(m);
                    }
                }
            }
        }
        self.stats.assignments.store(assignments.len() as u64, Ordering::Relaxed);

        self.repair(token, &monitors, &collectors, &assignments).await;
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn repair(
        &mut self,
        token: &LeaderToken,
        monitors: &BTreeMap<MonitorId, crate::cluster_store::StoredMonitor>,
        collectors: &BTreeMap<CollectorId, CollectorRecord>,
        assignments: &BTreeMap<MonitorId, Assignment>,
    ) {
        // What runs where, from every live collector.
        let mut running: BTreeMap<CollectorId, Vec<pb::RunningMonitor>> = BTreeMap::new();
        for (id, rec) in collectors {
            let Ok(mut client) = self.clients.get(&rec.grpc_address).await else { continue };
            match tokio::time::timeout(LIST_TIMEOUT, client.list_running(pb::ListRunningRequest {})).await {
                Ok(Ok(r)) => {
                    running.insert(id.clone(), r.into_inner().monitors);
                }
                Ok(Err(e)) => tracing::warn!(collector = %id, "ListRunning failed: {}", e.message()),
                Err(_) => tracing::warn!(collector = %id, "ListRunning timed out"),
            }
        }
        let fencing = |generation, epoch| Some(pb::Fencing { generation, epoch, leader_term: token.term });

        // 1. Stop whatever runs where it should not, everywhere, first.
        for (cid, list) in &running {
            for r in list {
                let Ok(mid) = MonitorId::new(r.monitor_id.clone()) else { continue };
                let wanted_here = assignments.get(&mid).is_some_and(|a| &a.collector == cid);
                if wanted_here {
                    continue;
                }
                let epoch = assignments.get(&mid).map(|a| a.epoch).unwrap_or(0).max(r.epoch);
                let generation =
                    monitors.get(&mid).map(|s| s.spec.generation).unwrap_or(r.generation).max(r.generation);
                let Ok(mut client) = self.clients.get(&collectors[cid].grpc_address).await else { continue };
                let req = pb::UnassignRequest { monitor_id: r.monitor_id.clone(), fencing: fencing(generation, epoch) };
                match client.unassign(req).await {
                    Ok(_) => tracing::info!(monitor = %mid, collector = %cid, "unassigned"),
                    Err(e) => tracing::warn!(monitor = %mid, collector = %cid, "Unassign failed: {}", e.message()),
                }
            }
        }

        // 2. Start what is missing or outdated.
        for (mid, a) in assignments {
            let Some(stored) = monitors.get(mid) else { continue };
            let Some(rec) = collectors.get(&a.collector) else { continue };
            let Some(list) = running.get(&a.collector) else { continue };
            let current = list
                .iter()
                .any(|r| r.monitor_id == mid.as_str() && r.generation == stored.spec.generation && r.epoch == a.epoch);
            if current {
                self.orphaned_since.remove(mid);
                continue;
            }
            let Ok(mut client) = self.clients.get(&rec.grpc_address).await else { continue };
            let req = pb::AssignRequest {
                spec: Some(input_to_proto(&stored.spec.to_input())),
                fencing: fencing(stored.spec.generation, a.epoch),
            };
            match client.assign(req).await {
                Ok(r) => {
                    tracing::info!(monitor = %mid, collector = %a.collector, epoch = a.epoch, outcome = %r.into_inner().outcome, "assigned");
                    if let Some(since) = self.orphaned_since.remove(mid) {
                        self.stats.last_failover_ms.store(since.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::warn!(monitor = %mid, collector = %a.collector, "Assign failed: {}", e.message()),
            }
        }
        self.orphaned_since.retain(|m, _| assignments.contains_key(m));
    }
}
