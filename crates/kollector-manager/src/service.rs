//! The gRPC `ManagerService`.
//!
//! Requests are validated at this edge; invalid input gets INVALID_ARGUMENT
//! naming every bad field, and nothing is stored or started. Mutations are
//! serialized by one lock over the catalog. A change is first saved to the
//! state file (if the node has one: standalone mode keeps its monitors
//! across restarts), then applied to the backend (which returns only after
//! any old Kafka client is closed), then committed to the catalog. If the
//! backend refuses, the saved state is put back, so neither the catalog nor
//! the file ever names a monitor the backend refused.

use std::future::Future;

use kollector_core::{CollectError, MonitorId, MonitorResult, MonitorSpec, Snapshot};
use kollector_proto::v1::manager_service_server::ManagerService;
use kollector_proto::v1::{self as pb};
use kollector_proto::{input_from_proto, monitor_view, result_to_proto, snapshot_to_proto, status_to_proto};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::catalog::{CatalogError, MonitorCatalog};
use crate::state_file::StateFile;

/// Why the backend could not apply a change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("rejected: {0}")]
    Rejected(String),
}

/// What runs monitors for the manager.
pub trait MonitorBackend: Send + Sync + 'static {
    /// Starts `spec`, replacing any other generation; resolves after the old client is closed.
    fn start(&self, spec: MonitorSpec) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Stops a monitor; resolves after its client is closed.
    fn stop(&self, id: MonitorId) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// The latest result, if the monitor runs here.
    fn latest(&self, id: &MonitorId) -> Option<MonitorResult>;
    /// One collection with a temporary client.
    fn probe(&self, spec: MonitorSpec) -> impl Future<Output = Result<Snapshot, CollectError>> + Send;
}

pub struct ManagerServiceImpl<B> {
    catalog: Mutex<MonitorCatalog>,
    backend: B,
    state: Option<StateFile>,
}

impl<B: MonitorBackend> ManagerServiceImpl<B> {
    /// A service whose monitors live in memory only (the demo).
    pub fn new(backend: B) -> Self {
        ManagerServiceImpl { catalog: Mutex::new(MonitorCatalog::new()), backend, state: None }
    }

    /// A service that saves every change to `state` before answering.
    pub fn with_state(backend: B, state: StateFile) -> Self {
        ManagerServiceImpl { catalog: Mutex::new(MonitorCatalog::new()), backend, state: Some(state) }
    }

    /// Saves the catalog as it would be after `change`.
    fn save(&self, catalog: &MonitorCatalog, change: impl FnOnce(&mut Vec<MonitorSpec>)) -> Result<(), Status> {
        let Some(state) = &self.state else { return Ok(()) };
        let mut specs: Vec<MonitorSpec> = catalog.list().cloned().collect();
        change(&mut specs);
        state.save(&specs).map_err(|e| {
            tracing::error!("{e}");
            Status::unavailable(format!("the change was not applied: {e}"))
        })
    }

    /// Puts the saved state back to the catalog's (after the backend refused a change).
    fn restore(&self, catalog: &MonitorCatalog) {
        if let Err(e) = self.save(catalog, |_| {}) {
            tracing::error!("could not restore the state file after a refused change: {}", e.message());
        }
    }

    /// Starts `specs` (at start-up: the saved state merged with the config
    /// file) and saves them once. Stops at the first refusal.
    pub async fn load(&self, specs: Vec<MonitorSpec>) -> Result<(), Status> {
        let mut catalog = self.catalog.lock().await;
        for spec in specs {
            self.backend.start(spec.clone()).await.map_err(backend_status)?;
            catalog.commit(spec);
        }
        self.save(&catalog, |_| {})
    }

    /// Creates a monitor.
    pub async fn create(&self, input: kollector_core::MonitorInput) -> Result<MonitorSpec, Status> {
        let mut catalog = self.catalog.lock().await;
        let spec = catalog.prepare_create(&input).map_err(catalog_status)?;
        self.save(&catalog, |all| all.push(spec.clone()))?;
        if let Err(e) = self.backend.start(spec.clone()).await {
            self.restore(&catalog);
            return Err(backend_status(e));
        }
        catalog.commit(spec.clone());
        tracing::info!(monitor = %spec.id, "monitor created");
        Ok(spec)
    }

    fn info(&self, spec: &MonitorSpec) -> pb::MonitorInfo {
        let status = self.backend.latest(&spec.id).map(|l| status_to_proto(&l.status));
        pb::MonitorInfo { spec: Some(monitor_view(spec)), status, collector_id: String::new(), epoch: 0 }
    }

    /// Stops every monitor; used on shutdown.
    pub async fn stop_all(&self) {
        let mut catalog = self.catalog.lock().await;
        let ids: Vec<MonitorId> = catalog.list().map(|s| s.id.clone()).collect();
        for id in ids {
            if self.backend.stop(id.clone()).await.is_ok() {
                catalog.remove(&id);
            }
        }
    }
}

fn catalog_status(e: CatalogError) -> Status {
    match e {
        CatalogError::Invalid(_) => Status::invalid_argument(e.to_string()),
        CatalogError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        CatalogError::NotFound(_) => Status::not_found(e.to_string()),
    }
}

fn backend_status(e: BackendError) -> Status {
    match e {
        BackendError::Unavailable(_) => Status::unavailable(e.to_string()),
        BackendError::Rejected(_) => Status::failed_precondition(e.to_string()),
    }
}

pub(crate) fn parse_id(id: &str) -> Result<MonitorId, Status> {
    MonitorId::new(id).map_err(|e| Status::invalid_argument(format!("id: {id:?} {e}")))
}

pub(crate) fn required_spec(spec: Option<pb::MonitorSpecInput>) -> Result<kollector_core::MonitorInput, Status> {
    spec.map(input_from_proto).ok_or_else(|| Status::invalid_argument("spec: required"))
}

#[tonic::async_trait]
impl<B: MonitorBackend> ManagerService for ManagerServiceImpl<B> {
    async fn create_monitor(
        &self,
        req: Request<pb::CreateMonitorRequest>,
    ) -> Result<Response<pb::MonitorInfo>, Status> {
        let spec = self.create(required_spec(req.into_inner().spec)?).await?;
        Ok(Response::new(self.info(&spec)))
    }

    async fn update_monitor(
        &self,
        req: Request<pb::UpdateMonitorRequest>,
    ) -> Result<Response<pb::MonitorInfo>, Status> {
        let input = required_spec(req.into_inner().spec)?;
        let mut catalog = self.catalog.lock().await;
        let spec = match catalog.prepare_update(&input).map_err(catalog_status)? {
            Some(spec) => {
                self.save(&catalog, |all| {
                    all.retain(|s| s.id != spec.id);
                    all.push(spec.clone());
                })?;
                if let Err(e) = self.backend.start(spec.clone()).await {
                    self.restore(&catalog);
                    return Err(backend_status(e));
                }
                catalog.commit(spec.clone());
                tracing::info!(monitor = %spec.id, generation = spec.generation, "monitor updated");
                spec
            }
            None => catalog.get(&parse_id(&input.id)?).cloned().ok_or_else(|| Status::not_found("monitor vanished"))?,
        };
        Ok(Response::new(self.info(&spec)))
    }

    async fn delete_monitor(
        &self,
        req: Request<pb::DeleteMonitorRequest>,
    ) -> Result<Response<pb::DeleteMonitorResponse>, Status> {
        let id = parse_id(&req.into_inner().id)?;
        let mut catalog = self.catalog.lock().await;
        if catalog.get(&id).is_none() {
            return Err(catalog_status(CatalogError::NotFound(id.to_string())));
        }
        self.save(&catalog, |all| all.retain(|s| s.id != id))?;
        if let Err(e) = self.backend.stop(id.clone()).await {
            self.restore(&catalog);
            return Err(backend_status(e));
        }
        catalog.remove(&id);
        tracing::info!(monitor = %id, "monitor deleted");
        Ok(Response::new(pb::DeleteMonitorResponse {}))
    }

    async fn get_monitor(&self, req: Request<pb::GetMonitorRequest>) -> Result<Response<pb::MonitorInfo>, Status> {
        let id = parse_id(&req.into_inner().id)?;
        let catalog = self.catalog.lock().await;
        let spec = catalog.get(&id).ok_or_else(|| catalog_status(CatalogError::NotFound(id.to_string())))?;
        Ok(Response::new(self.info(spec)))
    }

    async fn list_monitors(
        &self,
        _: Request<pb::ListMonitorsRequest>,
    ) -> Result<Response<pb::ListMonitorsResponse>, Status> {
        let catalog = self.catalog.lock().await;
        let monitors = catalog.list().map(|s| self.info(s)).collect();
        Ok(Response::new(pb::ListMonitorsResponse { monitors }))
    }

    async fn probe(&self, req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let input = required_spec(req.into_inner().spec)?;
        let spec = input.validate(0).map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        let response = match self.backend.probe(spec).await {
            Ok(snapshot) => pb::ProbeResponse { snapshot: Some(snapshot_to_proto(&snapshot)), error: None },
            Err(e) => pb::ProbeResponse {
                snapshot: None,
                error: Some(pb::CollectError { kind: e.kind.as_str().to_string(), message: e.message }),
            },
        };
        Ok(Response::new(response))
    }

    async fn list_collectors(
        &self,
        _: Request<pb::ListCollectorsRequest>,
    ) -> Result<Response<pb::ListCollectorsResponse>, Status> {
        Err(Status::failed_precondition("standalone mode has no collectors; ListCollectors is for cluster mode"))
    }

    async fn get_assignments(
        &self,
        _: Request<pb::GetAssignmentsRequest>,
    ) -> Result<Response<pb::GetAssignmentsResponse>, Status> {
        Err(Status::failed_precondition("standalone mode has no assignments; GetAssignments is for cluster mode"))
    }

    async fn drain(&self, _: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        Err(Status::failed_precondition("standalone mode has no collectors to drain; Drain is for cluster mode"))
    }

    async fn get_latest(&self, req: Request<pb::GetLatestRequest>) -> Result<Response<pb::GetLatestResponse>, Status> {
        let wanted = req.into_inner().monitor_id;
        let catalog = self.catalog.lock().await;
        let ids: Vec<MonitorId> = if wanted.is_empty() {
            catalog.list().map(|s| s.id.clone()).collect()
        } else {
            let id = parse_id(&wanted)?;
            if catalog.get(&id).is_none() {
                return Err(catalog_status(CatalogError::NotFound(wanted)));
            }
            vec![id]
        };
        let results = ids.iter().filter_map(|id| self.backend.latest(id)).map(|l| result_to_proto(&l)).collect();
        Ok(Response::new(pb::GetLatestResponse { results }))
    }
}
