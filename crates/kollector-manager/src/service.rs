//! The gRPC `ManagerService`: one implementation for both modes, over two
//! seams (see the crate docs): where desired state lives ([`DesiredState`]:
//! the embedded store in standalone mode, etcd in cluster mode) and what
//! runs it ([`Runner`]: the local collector, or the leader's reconciler).
//!
//! Requests are validated at this edge; invalid input gets INVALID_ARGUMENT
//! naming every bad field, and nothing is stored or started. A change is
//! computed in full (`changes.rs`), stored with compare-and-swap (a
//! concurrent change gets ABORTED), then applied by the runner, which
//! answers once the old Kafka client is closed and the new spec runs, or
//! says why not (DEADLINE_EXCEEDED in cluster mode: stored, not applied yet;
//! never OK). In cluster mode Create answers once stored: the reconciler
//! places the monitor when a collector can take it (`kollector status`).
//! The store step and a local apply run in a task of their own, so a client
//! that goes away mid-call cannot leave them half done; waiting for the
//! cluster ends with the request.

use std::collections::BTreeMap;
use std::sync::Arc;

use kollector_core::{MonitorId, MonitorSpec};
use kollector_proto::v1::manager_service_server::ManagerService;
use kollector_proto::v1::{self as pb};
use kollector_proto::{input_from_proto, monitor_view, result_to_proto, snapshot_to_proto, status_to_proto};
use kollector_security::access::MAX_PROBE_TIMEOUT;
use kollector_security::{ApiGuard, Role};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::changes::{prepare_create, prepare_update, CatalogError};
use crate::desired_state::{DesiredError, DesiredState};
use crate::runner::{Change, Runner, View};
use crate::state_file::StateError;

pub struct ManagerServiceImpl<D, R> {
    desired: Arc<D>,
    runner: Arc<R>,
    guard: ApiGuard,
}

impl<D: DesiredState, R: Runner> ManagerServiceImpl<D, R> {
    /// A service open to every caller; see [`Self::with_guard`].
    pub fn new(desired: Arc<D>, runner: Arc<R>) -> Self {
        ManagerServiceImpl { desired, runner, guard: ApiGuard::default() }
    }

    /// Who may call what, and the probe rate limit.
    pub fn with_guard(self, guard: ApiGuard) -> Self {
        ManagerServiceImpl { guard, ..self }
    }

    /// Applies every stored monitor (standalone start-up); stops at the first refusal.
    pub async fn apply_all(&self) -> Result<(), Status> {
        let set = self.desired.list().await.map_err(read_status)?;
        for (id, spec) in set.monitors {
            self.runner.apply(&*self.desired, &id, Change::Created(spec.generation)).await?;
        }
        Ok(())
    }

    /// Runs `f` (store, then apply) in a task of its own: it completes even
    /// if the caller goes away.
    async fn detached<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<D>, Arc<R>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Status>> + Send>>,
    ) -> Result<T, Status> {
        let task = tokio::spawn(f(self.desired.clone(), self.runner.clone()));
        task.await.map_err(|e| Status::internal(format!("the change did not complete (it may be stored): {e}")))?
    }

    /// After a change succeeded: status and placement if they can be read,
    /// never an error (the change is done).
    async fn info_after(&self, spec: &MonitorSpec) -> pb::MonitorInfo {
        let view = self.view(&BTreeMap::from([(spec.id.clone(), spec.clone())])).await.unwrap_or_default();
        info(spec, &view)
    }

    async fn view(&self, specs: &BTreeMap<MonitorId, MonitorSpec>) -> Result<View, Status> {
        self.runner.view(specs).await
    }
}

fn info(spec: &MonitorSpec, view: &View) -> pb::MonitorInfo {
    let placement = view.placement.get(&spec.id);
    pb::MonitorInfo {
        spec: Some(monitor_view(spec)),
        status: view.results.get(&spec.id).map(|r| status_to_proto(&r.status)),
        collector_id: placement.map(|(c, _)| c.to_string()).unwrap_or_default(),
        epoch: placement.map(|(_, e)| *e).unwrap_or(0),
    }
}

fn catalog_status(e: CatalogError) -> Status {
    match e {
        CatalogError::Invalid(_) => Status::invalid_argument(e.to_string()),
        CatalogError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        CatalogError::NotFound(_) => Status::not_found(e.to_string()),
        CatalogError::SecretRequired { .. } => Status::invalid_argument(e.to_string()),
    }
}

/// A failed read.
fn read_status(e: DesiredError) -> Status {
    match e {
        DesiredError::Etcd(kollector_coordination::CoordinationError::BadData { .. }) => {
            Status::failed_precondition(format!("a stored monitor cannot be read: {e}"))
        }
        e => Status::unavailable(format!("cannot read the monitors: {e}")),
    }
}

/// A failed write: refused before writing (a secret that cannot be sealed),
/// or it may or may not have been stored (etcd did not answer).
fn desired_status(e: DesiredError) -> Status {
    if matches!(e, DesiredError::Secret(_) | DesiredError::State(StateError::Secret { .. })) {
        return Status::failed_precondition(format!("not stored: {e}"));
    }
    Status::unavailable(format!("the change may not be stored (read the monitor again before retrying): {e}"))
}

pub(crate) fn parse_id(id: &str) -> Result<MonitorId, Status> {
    MonitorId::new(id).map_err(|e| Status::invalid_argument(format!("id: {} {e}", kollector_core::ids::shown(id))))
}

fn required_spec(spec: Option<pb::MonitorSpecInput>) -> Result<kollector_core::MonitorInput, Status> {
    spec.map(input_from_proto).ok_or_else(|| Status::invalid_argument("spec: required"))
}

/// Bytes of results per GetLatest page at most (one result may be larger:
/// it goes alone), well within the default 64 MiB message limit.
const PAGE_BYTES: usize = 16 * 1024 * 1024;

/// Monitors per page when the caller does not say, and at most.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 5000;

/// A page request: after which id, and how many.
fn page_request(size: u32, token: &str) -> Result<(Option<MonitorId>, usize), Status> {
    let limit = match size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    // The token is the last id of the previous page (opaque to callers).
    let after = if token.is_empty() {
        None
    } else {
        Some(MonitorId::new(token).map_err(|_| Status::invalid_argument("page_token: not one this API gave"))?)
    };
    Ok((after, limit))
}

/// Reads one page of monitors (one more than asked, to tell whether more
/// follow): the page, and the next page's token (empty at the end).
async fn read_page<D: DesiredState>(
    desired: &D,
    after: Option<&MonitorId>,
    limit: usize,
) -> Result<(crate::desired_state::DesiredSet, String), Status> {
    let mut set = desired.page(after, limit + 1).await.map_err(read_status)?;
    let next = if set.monitors.len() > limit {
        set.monitors.pop_last();
        set.monitors.keys().next_back().map(|m| m.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok((set, next))
}

fn not_found(id: &MonitorId) -> Status {
    catalog_status(CatalogError::NotFound(id.to_string()))
}

#[tonic::async_trait]
impl<D: DesiredState, R: Runner> ManagerService for ManagerServiceImpl<D, R> {
    async fn create_monitor(
        &self,
        req: Request<pb::CreateMonitorRequest>,
    ) -> Result<Response<pb::MonitorInfo>, Status> {
        self.guard.check(&req, Role::Admin, "create_monitor")?;
        let spec = prepare_create(&required_spec(req.into_inner().spec)?).map_err(catalog_status)?;
        let spec = self
            .detached(move |desired, runner| {
                Box::pin(async move {
                    let Some(generation) = desired.create(&spec).await.map_err(desired_status)? else {
                        return Err(catalog_status(CatalogError::AlreadyExists(spec.id.to_string())));
                    };
                    let spec = MonitorSpec { generation, ..spec };
                    runner.apply(&*desired, &spec.id, Change::Created(generation)).await?;
                    tracing::info!(monitor = %spec.id, generation, "monitor created");
                    Ok(spec)
                })
            })
            .await?;
        self.runner.wait_applied(&spec.id, Change::Created(spec.generation)).await?;
        Ok(Response::new(self.info_after(&spec).await))
    }

    async fn update_monitor(
        &self,
        req: Request<pb::UpdateMonitorRequest>,
    ) -> Result<Response<pb::MonitorInfo>, Status> {
        self.guard.check(&req, Role::Admin, "update_monitor")?;
        let input = required_spec(req.into_inner().spec)?;
        let id = parse_id(&input.id)?;
        let current = self.desired.get(&id).await.map_err(read_status)?.ok_or_else(|| not_found(&id))?;
        let spec = match prepare_update(&current, &input).map_err(catalog_status)? {
            None => current,
            Some(spec) => {
                let spec = self
                    .detached(move |desired, runner| {
                        Box::pin(async move {
                            let Some(generation) =
                                desired.replace(&spec, current.generation).await.map_err(desired_status)?
                            else {
                                // Deleted meanwhile, or changed by someone else.
                                return Err(match desired.get(&spec.id).await {
                                    Ok(None) => not_found(&spec.id),
                                    _ => Status::aborted("the monitor changed concurrently; read it again and retry"),
                                });
                            };
                            runner.apply(&*desired, &spec.id, Change::Updated(generation)).await?;
                            Ok(MonitorSpec { generation, ..spec })
                        })
                    })
                    .await?;
                self.runner.wait_applied(&spec.id, Change::Updated(spec.generation)).await?;
                tracing::info!(monitor = %spec.id, generation = spec.generation, "monitor updated and applied");
                spec
            }
        };
        Ok(Response::new(self.info_after(&spec).await))
    }

    async fn delete_monitor(
        &self,
        req: Request<pb::DeleteMonitorRequest>,
    ) -> Result<Response<pb::DeleteMonitorResponse>, Status> {
        self.guard.check(&req, Role::Admin, "delete_monitor")?;
        let id = parse_id(&req.into_inner().id)?;
        let target = id.clone();
        let generation = self
            .detached(move |desired, runner| {
                Box::pin(async move {
                    let Some(generation) = desired.delete(&target).await.map_err(desired_status)? else {
                        return Err(not_found(&target));
                    };
                    runner.apply(&*desired, &target, Change::Deleted(generation)).await?;
                    Ok(generation)
                })
            })
            .await?;
        self.runner.wait_applied(&id, Change::Deleted(generation)).await?;
        tracing::info!(monitor = %id, "monitor deleted and stopped everywhere");
        Ok(Response::new(pb::DeleteMonitorResponse {}))
    }

    async fn get_monitor(&self, req: Request<pb::GetMonitorRequest>) -> Result<Response<pb::MonitorInfo>, Status> {
        self.guard.check(&req, Role::Viewer, "get_monitor")?;
        let id = parse_id(&req.into_inner().id)?;
        let spec = self.desired.get(&id).await.map_err(read_status)?.ok_or_else(|| not_found(&id))?;
        let view = self.view(&BTreeMap::from([(id, spec.clone())])).await?;
        Ok(Response::new(info(&spec, &view)))
    }

    async fn list_monitors(
        &self,
        req: Request<pb::ListMonitorsRequest>,
    ) -> Result<Response<pb::ListMonitorsResponse>, Status> {
        self.guard.check(&req, Role::Viewer, "list_monitors")?;
        let req = req.into_inner();
        let (after, limit) = page_request(req.page_size, &req.page_token)?;
        let (set, next_page_token) = read_page(&*self.desired, after.as_ref(), limit).await?;
        let view = self.view(&set.monitors).await?;
        let monitors = set.monitors.values().map(|s| info(s, &view)).collect();
        Ok(Response::new(pb::ListMonitorsResponse { monitors, next_page_token }))
    }

    async fn probe(&self, req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        self.guard.check(&req, Role::Admin, "probe")?;
        let input = required_spec(req.into_inner().spec)?;
        let spec = input.validate(0).map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        if spec.timeout > MAX_PROBE_TIMEOUT {
            return Err(Status::invalid_argument(format!(
                "timeout: a probe may take at most {}s",
                MAX_PROBE_TIMEOUT.as_secs()
            )));
        }
        // Only a probe that will open a Kafka client counts against the limits.
        let _slot = self.guard.probe_slot()?;
        let response = match self.runner.probe(spec).await? {
            Ok(snapshot) => pb::ProbeResponse { snapshot: Some(snapshot_to_proto(&snapshot)), error: None },
            Err(e) => pb::ProbeResponse {
                snapshot: None,
                error: Some(pb::CollectError { kind: e.kind.as_str().to_string(), message: e.message }),
            },
        };
        Ok(Response::new(response))
    }

    async fn get_latest(&self, req: Request<pb::GetLatestRequest>) -> Result<Response<pb::GetLatestResponse>, Status> {
        self.guard.check(&req, Role::Viewer, "get_latest")?;
        let req = req.into_inner();
        let (wanted, summary) = (req.monitor_id, req.summary);
        // Read the specs now: only results of the specs in force are served.
        let (specs, next_page_token) = if wanted.is_empty() {
            let (after, limit) = page_request(req.page_size, &req.page_token)?;
            let (set, next) = read_page(&*self.desired, after.as_ref(), limit).await?;
            (set.monitors, next)
        } else {
            let id = parse_id(&wanted)?;
            let spec = self.desired.get(&id).await.map_err(read_status)?.ok_or_else(|| not_found(&id))?;
            (BTreeMap::from([(id, spec)]), String::new())
        };
        let view = self.view(&specs).await?;
        // A page also ends where its results would pass PAGE_BYTES (large
        // snapshots): the next one starts after the last result sent.
        let (mut results, mut bytes) = (Vec::new(), 0usize);
        let mut next_page_token = next_page_token;
        for r in view.results.values() {
            let mut p = result_to_proto(r);
            if summary {
                p.snapshot = None;
            }
            bytes += p.encoded_len();
            if bytes > PAGE_BYTES && !results.is_empty() && wanted.is_empty() {
                next_page_token = results.last().map(|l: &pb::MonitorResult| l.monitor_id.clone()).unwrap_or_default();
                break;
            }
            results.push(p);
        }
        Ok(Response::new(pb::GetLatestResponse { results, next_page_token }))
    }

    async fn list_collectors(
        &self,
        req: Request<pb::ListCollectorsRequest>,
    ) -> Result<Response<pb::ListCollectorsResponse>, Status> {
        self.guard.check(&req, Role::Viewer, "list_collectors")?;
        Ok(Response::new(self.runner.list_collectors().await?))
    }

    async fn get_assignments(
        &self,
        req: Request<pb::GetAssignmentsRequest>,
    ) -> Result<Response<pb::GetAssignmentsResponse>, Status> {
        self.guard.check(&req, Role::Viewer, "get_assignments")?;
        let req = req.into_inner();
        let (after, limit) = page_request(req.page_size, &req.page_token)?;
        let (set, next_page_token) = read_page(&*self.desired, after.as_ref(), limit).await?;
        // This page covers the ids up to its last spec's (records of
        // deleted monitors in between included); the last page, the rest.
        let upto = if next_page_token.is_empty() { None } else { set.monitors.keys().next_back().cloned() };
        let mut page = self.runner.get_assignments(&set, (after.as_ref(), upto.as_ref())).await?;
        page.next_page_token = next_page_token;
        Ok(Response::new(page))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        self.guard.check(&req, Role::Admin, "drain")?;
        let req = req.into_inner();
        self.runner.drain(&req.collector_id, req.undo).await?;
        Ok(Response::new(pb::DrainResponse {}))
    }
}
