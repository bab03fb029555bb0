//! What runs the desired state: the second of the ManagerService's seams.
//!
//! - [`LocalRunner`] (standalone): the collector in this process. A change is
//!   applied at once, level-triggered: under the monitor's turn it reads the
//!   monitor's desired state *now* and makes the registry run exactly that
//!   (or nothing), so concurrent changes converge on the latest.
//! - [`ClusterRunner`] (cluster): the leader's reconciler moves the cluster;
//!   this runner only waits until the owning collector applied a change
//!   (every live collector answering ListRunning), reads results from the
//!   intake, and serves the cluster-only views.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use kollector_collector::{CollectorHandle, RegistryError};
use kollector_coordination::election::current_leader;
use kollector_core::{CollectError, CollectorId, Epoch, Generation, MonitorId, MonitorResult, MonitorSpec, Snapshot};
use kollector_kafka::ClientOptions;
use kollector_proto::v1::{self as pb};
use kollector_proto::{error_from_proto, snapshot_from_proto};
use tonic::Status;

use crate::cluster_view::{ClusterView, ViewError};
use crate::desired_state::{DesiredSet, DesiredState};
use crate::intake::Intake;
use crate::reconciler::CollectorClients;

/// A change just stored, for the runner to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created(Generation),
    Updated(Generation),
    /// Deleted at this generation (a later re-create has a higher one).
    Deleted(Generation),
}

/// What the runner knows about monitors: results still current, and where
/// each runs (cluster mode).
#[derive(Debug, Default)]
pub struct View {
    pub results: BTreeMap<MonitorId, MonitorResult>,
    pub placement: BTreeMap<MonitorId, (CollectorId, Epoch)>,
}

fn cluster_only(what: &str) -> Status {
    Status::failed_precondition(format!("standalone mode has no collectors; {what} is for cluster mode"))
}

pub trait Runner: Send + Sync + 'static {
    /// Carries out a change just stored for `id`, if this runner does the
    /// work itself (the local collector). Runs to completion even if the
    /// caller goes away.
    fn apply<D: DesiredState>(
        &self,
        desired: &D,
        id: &MonitorId,
        change: Change,
    ) -> impl Future<Output = Result<(), Status>> + Send;

    /// Waits until a stored change is applied by others (the cluster), or
    /// says why not (DEADLINE_EXCEEDED: stored, not applied yet). Ends with
    /// the request that waits.
    fn wait_applied(&self, _id: &MonitorId, _change: Change) -> impl Future<Output = Result<(), Status>> + Send {
        async { Ok(()) }
    }

    /// Results still current for `specs` (their generation), and placements.
    fn view(&self, specs: &BTreeMap<MonitorId, MonitorSpec>) -> impl Future<Output = Result<View, Status>> + Send;

    /// One collection with a temporary client, where monitors run.
    fn probe(&self, spec: MonitorSpec) -> impl Future<Output = Result<Result<Snapshot, CollectError>, Status>> + Send;

    fn list_collectors(&self) -> impl Future<Output = Result<pb::ListCollectorsResponse, Status>> + Send {
        async { Err(cluster_only("ListCollectors")) }
    }

    /// The assignments of the monitors with ids in `range` (after its
    /// first, up to and including its second; None: no bound), `desired`
    /// being the page of specs in that range.
    fn get_assignments(
        &self,
        _desired: &DesiredSet,
        _range: (Option<&MonitorId>, Option<&MonitorId>),
    ) -> impl Future<Output = Result<pb::GetAssignmentsResponse, Status>> + Send {
        async { Err(cluster_only("GetAssignments")) }
    }

    fn drain(&self, _collector: &str, _undo: bool) -> impl Future<Output = Result<(), Status>> + Send {
        async { Err(cluster_only("Drain")) }
    }
}

/// Standalone: the collector in this process.
pub struct LocalRunner {
    node: CollectorHandle,
    options: ClientOptions,
}

impl LocalRunner {
    pub fn new(node: CollectorHandle, options: ClientOptions) -> Self {
        LocalRunner { node, options }
    }
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::ShuttingDown | RegistryError::Fenced(_) => {
            Status::unavailable(format!("{e}: the change is stored and applies at the next start"))
        }
        _ => Status::failed_precondition(e.to_string()),
    }
}

impl Runner for LocalRunner {
    async fn apply<D: DesiredState>(&self, desired: &D, id: &MonitorId, _change: Change) -> Result<(), Status> {
        let turn = self.node.turn(id).await;
        // Level-triggered: whatever is desired now, under the turn.
        let now = desired.get(id).await.map_err(|e| Status::unavailable(e.to_string()))?;
        match now {
            Some(spec) => self.node.assign_in_turn(&turn, spec, 0, None).await.map(|_| ()).map_err(registry_status),
            None => match self.node.unassign_in_turn(&turn).await {
                Ok(()) | Err(RegistryError::NotRunning(_)) => Ok(()),
                Err(e) => Err(registry_status(e)),
            },
        }
    }

    async fn view(&self, specs: &BTreeMap<MonitorId, MonitorSpec>) -> Result<View, Status> {
        let results = specs
            .values()
            .filter_map(|s| self.node.store().get(&s.id).filter(|r| r.generation == s.generation))
            .map(|r| (r.monitor.clone(), r))
            .collect();
        Ok(View { results, placement: BTreeMap::new() })
    }

    async fn probe(&self, spec: MonitorSpec) -> Result<Result<Snapshot, CollectError>, Status> {
        Ok(kollector_collector::probe(spec, self.options.clone()).await)
    }
}

/// Cluster: the leader's reconciler applies; this waits and reads.
pub struct ClusterRunner {
    view: ClusterView,
    intake: Intake,
    clients: CollectorClients,
    apply_timeout: Duration,
    /// Update/Delete waits polling collectors at once.
    waits: tokio::sync::Semaphore,
    /// The reconciler's view of collectors' health (this manager's, when it leads).
    health: Option<std::sync::Arc<crate::reconciler::ReconcilerStats>>,
    /// Probes go to collectors in turn, so one collector does not carry
    /// every probe's temporary Kafka client.
    next_probe: std::sync::atomic::AtomicUsize,
}

/// Most Update/Delete waits at once (each polls every collector every 200 ms).
const MAX_WAITS: usize = 32;

/// What each live collector said about a monitor: `None` if it did not answer.
type Seen = BTreeMap<String, Option<Option<Generation>>>;

fn etcd_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("etcd: {e}"))
}

fn view_status(e: ViewError) -> Status {
    Status::unavailable(e.to_string())
}

/// Live collectors' gRPC addresses, as the view shows them.
fn collector_addresses(view: &ClusterView) -> Result<BTreeMap<CollectorId, String>, Status> {
    view.read(|v| v.collectors.iter().map(|(id, c)| (id.clone(), c.record.grpc_address.clone())).collect())
        .map_err(view_status)
}

impl ClusterRunner {
    pub fn new(view: ClusterView, intake: Intake, clients: CollectorClients, apply_timeout: Duration) -> Self {
        ClusterRunner {
            view,
            intake,
            clients,
            apply_timeout,
            waits: tokio::sync::Semaphore::new(MAX_WAITS),
            health: None,
            next_probe: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Reports collectors' health as this manager's reconciler judged it.
    pub fn with_health(mut self, stats: std::sync::Arc<crate::reconciler::ReconcilerStats>) -> Self {
        self.health = Some(stats);
        self
    }

    /// For every live collector: the generation of `id` it runs (None: it
    /// does not), or None if it did not answer.
    async fn seen(&self, id: &MonitorId) -> Result<Seen, Status> {
        let collectors = collector_addresses(&self.view)?;
        let calls = collectors.into_iter().map(|(cid, address)| {
            let client = self.clients.get(&cid, &address);
            async move {
                let Ok(mut client) = client else { return (cid.to_string(), None) };
                let call = client.list_running(pb::ListRunningRequest { leader_term: 0, ..Default::default() });
                match tokio::time::timeout(Duration::from_secs(2), call).await {
                    Ok(Ok(r)) => {
                        let g = r
                            .into_inner()
                            .monitors
                            .into_iter()
                            .find(|m| m.monitor_id == id.as_str())
                            .map(|m| m.generation);
                        (cid.to_string(), Some(g))
                    }
                    _ => (cid.to_string(), None),
                }
            }
        });
        Ok(futures::future::join_all(calls).await.into_iter().collect())
    }

    /// Waits until `pending(seen)` is empty or the apply timeout passes;
    /// then DEADLINE_EXCEEDED naming what is still pending. A round whose
    /// reading fails (etcd) counts as pending: the change is stored either way.
    async fn wait(&self, id: &MonitorId, what: &str, pending: impl Fn(&Seen) -> Vec<String>) -> Result<(), Status> {
        // Each wait polls every collector: a bounded number at once.
        let _permit = self.waits.acquire().await.map_err(|_| Status::unavailable("the manager is shutting down"))?;
        let deadline = Instant::now() + self.apply_timeout;
        loop {
            let waiting = match self.seen(id).await {
                Ok(seen) => pending(&seen),
                Err(e) => vec![format!("cannot read the cluster ({})", e.message())],
            };
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "{what} is stored but not applied after {:?}: {}; the cluster keeps applying it",
                    self.apply_timeout,
                    waiting.join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Why generation `g` is not applied yet: a collector runs an older one or
/// does not answer, or nobody runs it (a later generation running instead
/// supersedes this change and counts as applied).
fn not_updated(seen: &Seen, g: Generation) -> Vec<String> {
    let mut out = Vec::new();
    let runs_it = seen.values().any(|s| matches!(s, Some(Some(run)) if *run >= g));
    for (c, s) in seen {
        match s {
            None => out.push(format!("{c} does not answer")),
            Some(Some(run)) if *run < g => out.push(format!("{c} still runs generation {run}")),
            _ => {}
        }
    }
    if seen.is_empty() {
        out.push("no live collector".into());
    } else if !runs_it {
        out.push("no collector runs it yet".into());
    }
    out
}

/// Collectors that still run (or may run) the monitor deleted at generation
/// `g` (one running a later generation runs a re-created monitor).
fn not_stopped(seen: &Seen, g: Generation) -> Vec<String> {
    seen.iter()
        .filter_map(|(c, s)| match s {
            None => Some(format!("{c} does not answer")),
            Some(Some(run)) if *run <= g => Some(format!("{c} still runs generation {run}")),
            _ => None,
        })
        .collect()
}

impl Runner for ClusterRunner {
    /// The leader's reconciler does the work.
    async fn apply<D: DesiredState>(&self, _desired: &D, _id: &MonitorId, _change: Change) -> Result<(), Status> {
        Ok(())
    }

    async fn wait_applied(&self, id: &MonitorId, change: Change) -> Result<(), Status> {
        match change {
            // Create answers once stored: the reconciler places it (if a
            // collector can take it; `kollector status` says why not).
            Change::Created(_) => Ok(()),
            Change::Updated(g) => {
                let what = format!("generation {g} of monitor {:?}", id.as_str());
                self.wait(id, &what, |seen| not_updated(seen, g)).await
            }
            Change::Deleted(g) => {
                let what = format!("the deletion of monitor {:?}", id.as_str());
                self.wait(id, &what, |seen| not_stopped(seen, g)).await
            }
        }
    }

    async fn view(&self, specs: &BTreeMap<MonitorId, MonitorSpec>) -> Result<View, Status> {
        let (current, placement) = self
            .view
            .read(|v| {
                let current = self.intake.current_of(v, specs.keys());
                let placement = specs
                    .keys()
                    .filter_map(|m| {
                        let r = v.assignments.get(m)?;
                        Some((m.clone(), (r.collector.clone()?, r.epoch)))
                    })
                    .collect();
                (current, placement)
            })
            .map_err(view_status)?;
        // Decoded with no lock held; only results of the specs asked
        // about, at their generation.
        let results = current
            .served()
            .into_iter()
            .filter(|r| specs.get(&r.monitor).is_some_and(|s| s.generation == r.generation))
            .map(|r| (r.monitor.clone(), r))
            .collect();
        Ok(View { results, placement })
    }

    async fn probe(&self, spec: MonitorSpec) -> Result<Result<Snapshot, CollectError>, Status> {
        // Probe from a collector: that is where the monitor would run.
        let collectors = collector_addresses(&self.view)?;
        let turn = self.next_probe.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % collectors.len().max(1);
        let (cid, address) =
            collectors.iter().nth(turn).ok_or_else(|| Status::unavailable("no live collector to probe from"))?;
        let mut c =
            self.clients.get(cid, address).map_err(|e| Status::unavailable(format!("collector {address}: {e}")))?;
        let req = pb::ProbeRequest { spec: Some(kollector_proto::input_to_proto(&spec.to_input())) };
        let r = c.probe(req).await?.into_inner();
        Ok(match (r.snapshot, r.error) {
            (Some(s), _) => {
                Ok(snapshot_from_proto(s)
                    .map_err(|e| Status::internal(format!("collector sent a bad snapshot: {e}")))?)
            }
            (None, Some(e)) => Err(error_from_proto(&e)),
            (None, None) => Err(CollectError::new(kollector_core::ErrorKind::Kafka, "the probe returned nothing")),
        })
    }

    async fn list_collectors(&self) -> Result<pb::ListCollectorsResponse, Status> {
        self.view.sync(Duration::from_secs(5)).await.map_err(view_status)?;
        let (collectors, monitors_of, draining, marks) = self
            .view
            .read(|v| {
                let mut monitors_of: BTreeMap<CollectorId, u32> = BTreeMap::new();
                for c in v.assignments.values().filter_map(|a| a.collector.as_ref()) {
                    *monitors_of.entry(c.clone()).or_default() += 1;
                }
                (v.collectors.clone(), monitors_of, v.draining.clone(), v.revoked.clone())
            })
            .map_err(view_status)?;
        let mut client = self.view.store().client();
        let leader = current_leader(&mut client, self.view.store().keys()).await.map_err(etcd_status)?;
        // The leader's judgement when this manager leads; otherwise what
        // etcd shows everyone (revocation marks).
        let judged = self.health.as_ref().map(|s| s.health.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let health = |id: &CollectorId| -> String {
            if marks.contains_key(id) {
                return "revoked".into();
            }
            judged.as_ref().and_then(|h| h.get(id).cloned()).unwrap_or_default()
        };
        let collectors = collectors
            .into_iter()
            .map(|(id, c)| pb::CollectorInfo {
                health: health(&id),
                monitors: monitors_of.get(&id).copied().unwrap_or(0),
                draining: draining.contains(&id),
                id: id.to_string(),
                grpc_address: c.record.grpc_address,
                http_address: c.record.http_address,
                labels: c.record.labels.into_iter().collect(),
                weight: c.record.weight,
                version: c.record.version,
            })
            .collect();
        let (leader_address, leader_term) = leader.unwrap_or_default();
        Ok(pb::ListCollectorsResponse { collectors, leader_address, leader_term })
    }

    async fn get_assignments(
        &self,
        desired: &DesiredSet,
        (after, upto): (Option<&MonitorId>, Option<&MonitorId>),
    ) -> Result<pb::GetAssignmentsResponse, Status> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let to = upto.map_or(Bound::Unbounded, Bound::Included);
        let (assignments, bad_records) = self
            .view
            .read(|v| {
                let records: Vec<(MonitorId, crate::decisions::AssignmentRecord)> =
                    v.assignments.range::<MonitorId, _>((from, to)).map(|(m, r)| (m.clone(), r.clone())).collect();
                let bad = if after.is_none() { v.invalid_assignments.clone() } else { BTreeMap::new() };
                (records, bad)
            })
            .map_err(view_status)?;
        let placed: std::collections::BTreeSet<&MonitorId> =
            assignments.iter().filter(|(_, a)| a.collector.is_some()).map(|(m, _)| m).collect();
        let unplaced = desired
            .monitors
            .keys()
            .filter(|m| !placed.contains(m))
            .map(|m| (m.to_string(), "no live collector can take it yet".to_string()))
            .collect();
        let first_page = after.is_none();
        let invalid = if first_page {
            desired.invalid.clone().into_iter().chain(bad_records).collect()
        } else {
            Default::default()
        };
        let secrets_on_old_keys =
            if first_page { u32::try_from(desired.secrets_on_old_keys).unwrap_or(u32::MAX) } else { 0 };
        let assignments = assignments
            .into_iter()
            .map(|(m, a)| pb::Assignment {
                monitor_id: m.to_string(),
                collector_id: a.collector.map(|c| c.to_string()).unwrap_or_default(),
                epoch: a.epoch,
                releasing: a.releasing.iter().map(|c| c.to_string()).collect(),
            })
            .collect();
        Ok(pb::GetAssignmentsResponse {
            assignments,
            unplaced,
            invalid,
            secrets_on_old_keys,
            next_page_token: String::new(),
        })
    }

    async fn drain(&self, collector: &str, undo: bool) -> Result<(), Status> {
        let id = CollectorId::new(collector.to_string())
            .map_err(|e| Status::invalid_argument(format!("collector_id: {collector:?} {e}")))?;
        self.view.sync(Duration::from_secs(5)).await.map_err(view_status)?;
        if !undo && !self.view.read(|v| v.collectors.contains_key(&id)).map_err(view_status)? {
            return Err(Status::not_found(format!("collector {:?} is not live", id.as_str())));
        }
        self.view.store().set_draining(&id, !undo).await.map_err(etcd_status)?;
        tracing::info!(collector = %id, undo, "drain");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(list: &[(&str, Option<Option<Generation>>)]) -> Seen {
        list.iter().map(|(c, s)| (c.to_string(), *s)).collect()
    }

    #[test]
    fn an_update_is_applied_when_its_generation_or_a_later_one_runs_and_nobody_is_silent() {
        assert!(not_updated(&seen(&[("c1", Some(Some(7))), ("c2", Some(None))]), 7).is_empty());
        assert!(not_updated(&seen(&[("c1", Some(Some(9)))]), 7).is_empty(), "superseded by a later change");
        assert!(!not_updated(&seen(&[("c1", Some(Some(5)))]), 7).is_empty(), "an older generation still runs");
        assert!(!not_updated(&seen(&[("c1", Some(Some(7))), ("c2", None)]), 7).is_empty(), "c2 is silent");
        assert!(!not_updated(&seen(&[("c1", Some(None))]), 7).is_empty(), "nobody runs it");
        assert!(!not_updated(&seen(&[]), 7).is_empty(), "no live collector");
    }

    #[test]
    fn a_delete_is_applied_when_nothing_older_runs_anywhere() {
        assert!(not_stopped(&seen(&[("c1", Some(None))]), 7).is_empty());
        assert!(not_stopped(&seen(&[("c1", Some(Some(9)))]), 7).is_empty(), "a re-created monitor runs");
        assert!(!not_stopped(&seen(&[("c1", Some(Some(7)))]), 7).is_empty());
        assert!(!not_stopped(&seen(&[("c1", None)]), 7).is_empty(), "silent: it may still run it");
    }
}
