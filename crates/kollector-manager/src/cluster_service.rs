//! ManagerService in cluster mode, served by every manager.
//!
//! Monitor CRUD writes desired state to etcd with compare-and-swap, so any
//! manager (leader or standby) can take it; the leader's reconciler then
//! moves the cluster. Update and Delete answer once the owning collector
//! runs the new generation (or no collector runs the monitor), which the
//! collector acknowledges only after the old Kafka client is closed.

use std::time::{Duration, Instant};

use kollector_coordination::election::current_leader;
use kollector_core::{MonitorId, MonitorSpec};
use kollector_proto::v1::manager_service_server::ManagerService;
use kollector_proto::v1::{self as pb};
use kollector_proto::{input_from_proto, monitor_view};
use tonic::{Request, Response, Status};

use crate::catalog::{CatalogError, MonitorCatalog};
use crate::cluster_store::ClusterStore;
use crate::intake::Intake;
use crate::reconciler::CollectorClients;
use crate::service::{parse_id, required_spec};

/// How long Update and Delete wait for the cluster to apply the change.
const APPLY_WAIT: Duration = Duration::from_secs(30);

pub struct ClusterManagerService {
    store: ClusterStore,
    intake: Intake,
    clients: CollectorClients,
}

fn etcd_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("etcd: {e}"))
}

impl ClusterManagerService {
    pub fn new(store: ClusterStore, intake: Intake, clients: CollectorClients) -> Self {
        ClusterManagerService { store, intake, clients }
    }

    async fn info(&self, spec: &MonitorSpec) -> pb::MonitorInfo {
        let latest = self.intake.latest(&spec.id);
        let assignment = self.store.assignments().await.ok().and_then(|(a, _)| a.get(&spec.id).cloned());
        pb::MonitorInfo {
            spec: Some(monitor_view(spec)),
            status: latest.as_ref().and_then(|l| l.status.clone()),
            collector_id: assignment.as_ref().map(|a| a.collector.to_string()).unwrap_or_default(),
            epoch: assignment.map(|a| a.epoch).unwrap_or(0),
        }
    }

    /// Which (collector, generation) pairs run `id` right now.
    async fn running(&self, id: &MonitorId) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let Ok(collectors) = self.store.collectors().await else { return out };
        for (cid, rec) in collectors {
            let Ok(mut c) = self.clients.get(&rec.grpc_address).await else { continue };
            let call = tokio::time::timeout(Duration::from_secs(2), c.list_running(pb::ListRunningRequest {}));
            if let Ok(Ok(r)) = call.await {
                for m in r.into_inner().monitors {
                    if m.monitor_id == id.as_str() {
                        out.push((cid.to_string(), m.generation));
                    }
                }
            }
        }
        out
    }

    /// Waits until `done(running)` holds or APPLY_WAIT passes.
    async fn wait_applied(&self, id: &MonitorId, done: impl Fn(&[(String, u64)]) -> bool) -> bool {
        let deadline = Instant::now() + APPLY_WAIT;
        while Instant::now() < deadline {
            if done(&self.running(id).await) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

#[tonic::async_trait]
impl ManagerService for ClusterManagerService {
    async fn create_monitor(
        &self,
        req: Request<pb::CreateMonitorRequest>,
    ) -> Result<Response<pb::MonitorInfo>, Status> {
        let input = required_spec(req.into_inner().spec)?;
        let spec = input.validate(1).map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        if !self.store.create_monitor(&spec).await.map_err(etcd_status)? {
            return Err(Status::already_exists(format!("monitor {:?} already exists", spec.id.as_str())));
        }
        tracing::info!(monitor = %spec.id, "monitor created");
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
        let spec = match catalog.prepare_update(&input) {
            Ok(Some(spec)) => spec,
            Ok(None) => return Ok(Response::new(self.info(&stored.spec).await)),
            Err(e @ CatalogError::Invalid(_)) => return Err(Status::invalid_argument(e.to_string())),
            Err(e) => return Err(Status::failed_precondition(e.to_string())),
        };
        if !self.store.update_monitor(&spec, stored.mod_revision).await.map_err(etcd_status)? {
            return Err(Status::aborted("the monitor changed concurrently; read it again and retry"));
        }
        let generation = spec.generation;
        let applied = self.wait_applied(&id, |r| !r.is_empty() && r.iter().all(|(_, g)| *g == generation)).await;
        tracing::info!(monitor = %id, generation, applied, "monitor updated");
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
        let stopped = self.wait_applied(&id, |r| r.is_empty()).await;
        tracing::info!(monitor = %id, stopped, "monitor deleted");
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
        let mut out = Vec::with_capacity(monitors.len());
        for m in monitors.values() {
            out.push(self.info(&m.spec).await);
        }
        Ok(Response::new(pb::ListMonitorsResponse { monitors: out }))
    }

    async fn probe(&self, req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let req = req.into_inner();
        let input = req.spec.clone().map(input_from_proto).ok_or_else(|| Status::invalid_argument("spec: required"))?;
        input.validate(0).map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        // Probe from a collector: that is where the monitor would run.
        let collectors = self.store.collectors().await.map_err(etcd_status)?;
        let (_, rec) =
            collectors.iter().next().ok_or_else(|| Status::unavailable("no live collector to probe from"))?;
        let mut c = self.clients.get(&rec.grpc_address).await.map_err(Status::unavailable)?;
        c.probe(req).await
    }

    async fn get_latest(&self, req: Request<pb::GetLatestRequest>) -> Result<Response<pb::GetLatestResponse>, Status> {
        let wanted = req.into_inner().monitor_id;
        if wanted.is_empty() {
            return Ok(Response::new(pb::GetLatestResponse { results: self.intake.all() }));
        }
        let id = parse_id(&wanted)?;
        if self.store.monitor(&id).await.map_err(etcd_status)?.is_none() {
            return Err(Status::not_found(format!("monitor {wanted:?} does not exist")));
        }
        Ok(Response::new(pb::GetLatestResponse { results: self.intake.latest(&id).into_iter().collect() }))
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
            .map(|(id, r)| pb::CollectorInfo {
                monitors: assignments.values().filter(|a| a.collector == id).count() as u32,
                draining: draining.contains(&id),
                id: id.to_string(),
                grpc_address: r.grpc_address,
                http_address: r.http_address,
                labels: r.labels.into_iter().collect(),
                weight: r.weight,
                version: r.version,
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
        let (assignments, _) = self.store.assignments().await.map_err(etcd_status)?;
        let unplaced = monitors
            .keys()
            .filter(|m| !assignments.contains_key(*m))
            .map(|m| (m.to_string(), "no live collector can take it yet".to_string()))
            .collect();
        let assignments = assignments
            .into_iter()
            .map(|(m, a)| pb::Assignment {
                monitor_id: m.to_string(),
                collector_id: a.collector.to_string(),
                epoch: a.epoch,
            })
            .collect();
        Ok(Response::new(pb::GetAssignmentsResponse { assignments, unplaced }))
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
