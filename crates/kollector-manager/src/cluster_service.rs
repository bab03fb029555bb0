//! ManagerService in cluster mode, served by every manager.
//!
//! Monitor CRUD writes desired state to etcd with compare-and-swap, so any
//! manager (leader or standby) can take it; the leader's reconciler then
//! moves the cluster. Update and Delete answer once the change is applied
//! (every collector that answers runs the new generation or nothing, and
//! every live collector answered), which a collector acknowledges only after
//! the old Kafka client is closed. If that does not happen within the apply
//! timeout they answer DEADLINE_EXCEEDED, saying the change is stored and
//! who has not applied it yet; never OK.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_coordination::election::current_leader;
use kollector_core::{Generation, MonitorId, MonitorSpec};
use kollector_proto::v1::manager_service_server::ManagerService;
use kollector_proto::v1::{self as pb};
use kollector_proto::{input_from_proto, monitor_view, status_to_proto};
use tonic::{Request, Response, Status};

use crate::catalog::{CatalogError, MonitorCatalog};
use crate::cluster_store::ClusterStore;
use crate::intake::Intake;
use crate::reconciler::CollectorClients;
use crate::service::{parse_id, required_spec};

pub struct ClusterManagerService {
    store: ClusterStore,
    intake: Intake,
    clients: CollectorClients,
    apply_timeout: Duration,
}

fn etcd_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("etcd: {e}"))
}

/// What one live collector said about a monitor: `None` if it did not answer.
type Seen = BTreeMap<String, Option<Option<Generation>>>;

impl ClusterManagerService {
    pub fn new(store: ClusterStore, intake: Intake, clients: CollectorClients, apply_timeout: Duration) -> Self {
        ClusterManagerService { store, intake, clients, apply_timeout }
    }

    async fn info(&self, spec: &MonitorSpec) -> pb::MonitorInfo {
        let record = self.store.assignments().await.ok().and_then(|(a, _)| a.get(&spec.id).cloned());
        let latest = self.intake.latest(&spec.id, spec.generation, record.as_ref());
        let owner = record.as_ref().and_then(|r| r.collector.clone());
        pb::MonitorInfo {
            spec: Some(monitor_view(spec)),
            status: latest.as_ref().map(|l| status_to_proto(&l.status)),
            collector_id: owner.map(|c| c.to_string()).unwrap_or_default(),
            epoch: record.map(|r| r.epoch).unwrap_or(0),
        }
    }

    /// For every live collector: the generation of `id` it runs (None: it
    /// does not), or None if it did not answer.
    async fn seen(&self, id: &MonitorId) -> Result<Seen, Status> {
        let collectors = self.store.collectors().await.map_err(etcd_status)?;
        let calls = collectors.into_iter().map(|(cid, c)| {
            let client = self.clients.get(&c.record.grpc_address);
            async move {
                let Ok(mut client) = client else { return (cid.to_string(), None) };
                let call = client.list_running(pb::ListRunningRequest { leader_term: 0 });
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
    /// then DEADLINE_EXCEEDED naming what is still pending.
    async fn wait_applied(
        &self,
        id: &MonitorId,
        what: &str,
        pending: impl Fn(&Seen) -> Vec<String>,
    ) -> Result<(), Status> {
        let deadline = Instant::now() + self.apply_timeout;
        loop {
            let waiting = pending(&self.seen(id).await?);
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

/// Collectors that have not applied generation `g` of a monitor owned by `owner`.
fn not_updated(seen: &Seen, g: Generation, owner: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for (c, s) in seen {
        match s {
            None => out.push(format!("{c} does not answer")),
            Some(Some(run)) if *run != g => out.push(format!("{c} still runs generation {run}")),
            Some(None) if Some(c.as_str()) == owner => out.push(format!("{c} does not run it yet")),
            _ => {}
        }
    }
    if owner.is_some_and(|o| !seen.contains_key(o)) {
        out.push(format!("owner {} is not live", owner.unwrap_or_default()));
    }
    out
}

/// Collectors that still run (or may run) a deleted monitor.
fn not_stopped(seen: &Seen) -> Vec<String> {
    seen.iter()
        .filter_map(|(c, s)| match s {
            None => Some(format!("{c} does not answer")),
            Some(Some(g)) => Some(format!("{c} still runs generation {g}")),
            Some(None) => None,
        })
        .collect()
}

#[tonic::async_trait]
impl ManagerService for ClusterManagerService {
    async fn create_monitor(
        &self,
        req: Request<pb::CreateMonitorRequest>,
    ) -> Result<Response<pb::MonitorInfo>, Status> {
        let input = required_spec(req.into_inner().spec)?;
        let mut spec = input.validate(1).map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        let Some(generation) = self.store.create_monitor(&spec).await.map_err(etcd_status)? else {
            return Err(Status::already_exists(format!("monitor {:?} already exists", spec.id.as_str())));
        };
        spec.generation = generation;
        tracing::info!(monitor = %spec.id, generation, "monitor created");
        Ok(Response::new(self.info(&spec).await))
    }

    async fn update_monitor(
        &self,
        req: Request<pb::UpdateMonitorRequest>,
    ) -> Result<Response<pb::MonitorInfo>, Status> {
        let input = required_spec(req.into_inner().spec)?;
        let id = parse_id(&input.id)?;
        let stored = self
            .store
            .monitor(&id)
            .await
            .map_err(etcd_status)?
            .ok_or_else(|| Status::not_found(format!("monitor {:?} does not exist", id.as_str())))?;
        // The same merge and validation as standalone mode, over the stored spec.
        let mut catalog = MonitorCatalog::new();
        catalog.commit(stored.spec.clone());
        let mut spec = match catalog.prepare_update(&input) {
            Ok(Some(spec)) => spec,
            Ok(None) => return Ok(Response::new(self.info(&stored.spec).await)),
            Err(e @ CatalogError::Invalid(_)) => return Err(Status::invalid_argument(e.to_string())),
            Err(e) => return Err(Status::failed_precondition(e.to_string())),
        };
        let Some(generation) = self.store.update_monitor(&spec, stored.mod_revision).await.map_err(etcd_status)? else {
            return Err(Status::aborted("the monitor changed concurrently; read it again and retry"));
        };
        spec.generation = generation;
        let what = format!("generation {generation} of monitor {:?}", id.as_str());
        self.wait_applied(&id, &what, |seen| {
            // Read the owner each round: a move may be in progress.
            let owner =
                seen.iter().find(|(_, s)| matches!(s, Some(Some(g)) if *g == generation)).map(|(c, _)| c.as_str());
            let mut pending = not_updated(seen, generation, owner);
            if owner.is_none() && !seen.is_empty() {
                pending.push("no collector runs it yet".into());
            }
            pending
        })
        .await?;
        tracing::info!(monitor = %id, generation, "monitor updated and applied");
        Ok(Response::new(self.info(&spec).await))
    }

    async fn delete_monitor(
        &self,
        req: Request<pb::DeleteMonitorRequest>,
    ) -> Result<Response<pb::DeleteMonitorResponse>, Status> {
        let id = parse_id(&req.into_inner().id)?;
        if !self.store.delete_monitor(&id).await.map_err(etcd_status)? {
            return Err(Status::not_found(format!("monitor {:?} does not exist", id.as_str())));
        }
        let what = format!("the deletion of monitor {:?}", id.as_str());
        self.wait_applied(&id, &what, not_stopped).await?;
        tracing::info!(monitor = %id, "monitor deleted and stopped everywhere");
        Ok(Response::new(pb::DeleteMonitorResponse {}))
    }

    async fn get_monitor(&self, req: Request<pb::GetMonitorRequest>) -> Result<Response<pb::MonitorInfo>, Status> {
        let id = parse_id(&req.into_inner().id)?;
        let stored = self
            .store
            .monitor(&id)
            .await
            .map_err(etcd_status)?
            .ok_or_else(|| Status::not_found(format!("monitor {:?} does not exist", id.as_str())))?;
        Ok(Response::new(self.info(&stored.spec).await))
    }

    async fn list_monitors(
        &self,
        _: Request<pb::ListMonitorsRequest>,
    ) -> Result<Response<pb::ListMonitorsResponse>, Status> {
        let monitors = self.store.monitors().await.map_err(etcd_status)?;
        let (records, _) = self.store.assignments().await.map_err(etcd_status)?;
        let out = monitors
            .valid
            .values()
            .map(|m| {
                let record = records.get(&m.spec.id);
                pb::MonitorInfo {
                    spec: Some(monitor_view(&m.spec)),
                    status: self
                        .intake
                        .latest(&m.spec.id, m.spec.generation, record)
                        .map(|l| status_to_proto(&l.status)),
                    collector_id: record.and_then(|r| r.collector.as_ref()).map(|c| c.to_string()).unwrap_or_default(),
                    epoch: record.map(|r| r.epoch).unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(pb::ListMonitorsResponse { monitors: out }))
    }

    async fn probe(&self, req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let req = req.into_inner();
        let input = req.spec.clone().map(input_from_proto).ok_or_else(|| Status::invalid_argument("spec: required"))?;
        input.validate(0).map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        // Probe from a collector: that is where the monitor would run.
        let collectors = self.store.collectors().await.map_err(etcd_status)?;
        let (_, live) =
            collectors.iter().next().ok_or_else(|| Status::unavailable("no live collector to probe from"))?;
        let mut c = self
            .clients
            .get(&live.record.grpc_address)
            .map_err(|e| Status::unavailable(format!("collector {}: {e}", live.record.grpc_address)))?;
        c.probe(req).await
    }

    async fn get_latest(&self, req: Request<pb::GetLatestRequest>) -> Result<Response<pb::GetLatestResponse>, Status> {
        let wanted = req.into_inner().monitor_id;
        if wanted.is_empty() {
            let generations = self.store.generations().await.map_err(etcd_status)?;
            let (records, _) = self.store.assignments().await.map_err(etcd_status)?;
            let results =
                self.intake.current(&generations, &records).iter().map(kollector_proto::result_to_proto).collect();
            return Ok(Response::new(pb::GetLatestResponse { results }));
        }
        let id = parse_id(&wanted)?;
        let Some(stored) = self.store.monitor(&id).await.map_err(etcd_status)? else {
            return Err(Status::not_found(format!("monitor {wanted:?} does not exist")));
        };
        let (records, _) = self.store.assignments().await.map_err(etcd_status)?;
        let results = self
            .intake
            .latest(&id, stored.spec.generation, records.get(&id))
            .iter()
            .map(kollector_proto::result_to_proto)
            .collect();
        Ok(Response::new(pb::GetLatestResponse { results }))
    }

    async fn list_collectors(
        &self,
        _: Request<pb::ListCollectorsRequest>,
    ) -> Result<Response<pb::ListCollectorsResponse>, Status> {
        let collectors = self.store.collectors().await.map_err(etcd_status)?;
        let (assignments, _) = self.store.assignments().await.map_err(etcd_status)?;
        let draining = self.store.draining().await.map_err(etcd_status)?;
        let mut client = self.store.client();
        let leader = current_leader(&mut client, self.store.keys()).await.map_err(etcd_status)?;
        let collectors = collectors
            .into_iter()
            .map(|(id, c)| pb::CollectorInfo {
                monitors: assignments.values().filter(|a| a.collector.as_ref() == Some(&id)).count() as u32,
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
        Ok(Response::new(pb::ListCollectorsResponse { collectors, leader_address, leader_term }))
    }

    async fn get_assignments(
        &self,
        _: Request<pb::GetAssignmentsRequest>,
    ) -> Result<Response<pb::GetAssignmentsResponse>, Status> {
        let monitors = self.store.monitors().await.map_err(etcd_status)?;
        let (assignments, bad_records) = self.store.assignments().await.map_err(etcd_status)?;
        let unplaced = monitors
            .valid
            .keys()
            .filter(|m| assignments.get(*m).is_none_or(|a| a.collector.is_none()))
            .map(|m| (m.to_string(), "no live collector can take it yet".to_string()))
            .collect();
        let invalid = monitors.invalid.into_iter().chain(bad_records).collect();
        let assignments = assignments
            .into_iter()
            .map(|(m, a)| pb::Assignment {
                monitor_id: m.to_string(),
                collector_id: a.collector.map(|c| c.to_string()).unwrap_or_default(),
                epoch: a.epoch,
                releasing: a.releasing.iter().map(|c| c.to_string()).collect(),
            })
            .collect();
        Ok(Response::new(pb::GetAssignmentsResponse { assignments, unplaced, invalid }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let req = req.into_inner();
        let id = kollector_core::CollectorId::new(req.collector_id.clone())
            .map_err(|e| Status::invalid_argument(format!("collector_id: {:?} {e}", req.collector_id)))?;
        if !req.undo && !self.store.collectors().await.map_err(etcd_status)?.contains_key(&id) {
            return Err(Status::not_found(format!("collector {:?} is not live", id.as_str())));
        }
        self.store.set_draining(&id, !req.undo).await.map_err(etcd_status)?;
        tracing::info!(collector = %id, undo = req.undo, "drain");
        Ok(Response::new(pb::DrainResponse {}))
    }
}
