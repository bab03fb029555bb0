//! `CollectorService`: how the manager drives this collector (cluster mode).
//!
//! Commands are checked against the [`FencingBook`] and applied through the
//! registry while holding the book, so checks and effects never interleave.
//! `StreamResults` pushes every collection result with the epoch of the
//! assignment it ran under; the manager drops any whose epoch is not current.

use std::pin::Pin;
use std::sync::Arc;

use kollector_core::{CollectorId, MonitorId};
use kollector_kafka::ClientOptions;
use kollector_proto::v1::collector_service_server::CollectorService;
use kollector_proto::v1::{self as pb};
use kollector_proto::{input_from_proto, result_to_proto, snapshot_to_proto};
use tokio::sync::{broadcast, mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::fencing::{FencingBook, Tokens};
use crate::node::CollectorHandle;
use crate::registry::{AssignOutcome, RegistryError};

pub struct CollectorServiceImpl {
    id: CollectorId,
    node: CollectorHandle,
    options: ClientOptions,
    book: Arc<Mutex<FencingBook>>,
}

impl CollectorServiceImpl {
    pub fn new(id: CollectorId, node: CollectorHandle, options: ClientOptions) -> Self {
        CollectorServiceImpl { id, node, options, book: Arc::default() }
    }

    fn result(&self, id: &MonitorId, epoch: u64) -> Option<pb::MonitorResult> {
        let e = self.node.store().get(id)?;
        let mut r = result_to_proto(
            id,
            e.spec.generation,
            &e.status,
            e.last_snapshot.as_deref(),
            e.last_error.as_ref(),
            e.attempted_at_ms,
        );
        r.collector_id = self.id.to_string();
        r.epoch = epoch;
        Some(r)
    }
}

fn tokens(f: Option<pb::Fencing>) -> Result<Tokens, Status> {
    let f = f.ok_or_else(|| Status::invalid_argument("fencing: required"))?;
    Ok(Tokens { generation: f.generation, epoch: f.epoch, leader_term: f.leader_term })
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::ShuttingDown => Status::unavailable(e.to_string()),
        RegistryError::StaleGeneration { .. } => Status::failed_precondition(e.to_string()),
        RegistryError::NotRunning(_) => Status::not_found(e.to_string()),
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::MonitorResult, Status>> + Send>>;

#[tonic::async_trait]
impl CollectorService for CollectorServiceImpl {
    async fn assign(&self, req: Request<pb::AssignRequest>) -> Result<Response<pb::AssignResponse>, Status> {
        let req = req.into_inner();
        let tokens = tokens(req.fencing)?;
        let input = req.spec.map(input_from_proto).ok_or_else(|| Status::invalid_argument("spec: required"))?;
        let spec = input
            .validate(tokens.generation)
            .map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        let mut book = self.book.lock().await;
        book.check(&spec.id, tokens).map_err(|e| Status::failed_precondition(format!("stale command: {e}")))?;
        let id = spec.id.clone();
        let outcome = self.node.assign(spec).await.map_err(registry_status)?;
        book.record(&id, tokens);
        let outcome = match outcome {
            AssignOutcome::Started => "started",
            AssignOutcome::Restarted => "restarted",
            AssignOutcome::Unchanged => "unchanged",
        };
        tracing::info!(monitor = %id, epoch = tokens.epoch, term = tokens.leader_term, outcome, "assign");
        Ok(Response::new(pb::AssignResponse { outcome: outcome.into() }))
    }

    async fn unassign(&self, req: Request<pb::UnassignRequest>) -> Result<Response<pb::UnassignResponse>, Status> {
        let req = req.into_inner();
        let tokens = tokens(req.fencing)?;
        let id = MonitorId::new(req.monitor_id.clone())
            .map_err(|e| Status::invalid_argument(format!("monitor_id: {:?} {e}", req.monitor_id)))?;
        let mut book = self.book.lock().await;
        book.check(&id, tokens).map_err(|e| Status::failed_precondition(format!("stale command: {e}")))?;
        let was_running = match self.node.unassign(id.clone()).await {
            Ok(()) => true,
            Err(RegistryError::NotRunning(_)) => false,
            Err(e) => return Err(registry_status(e)),
        };
        book.record(&id, tokens);
        tracing::info!(monitor = %id, epoch = tokens.epoch, was_running, "unassign");
        Ok(Response::new(pb::UnassignResponse { was_running }))
    }

    async fn list_running(
        &self,
        _: Request<pb::ListRunningRequest>,
    ) -> Result<Response<pb::ListRunningResponse>, Status> {
        let running = self.node.list_running().await;
        let book = self.book.lock().await;
        let monitors = running
            .into_iter()
            .map(|r| pb::RunningMonitor {
                epoch: book.epoch(&r.id),
                monitor_id: r.id.to_string(),
                generation: r.generation,
            })
            .collect();
        Ok(Response::new(pb::ListRunningResponse { collector_id: self.id.to_string(), monitors }))
    }

    async fn probe(&self, req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let input =
            req.into_inner().spec.map(input_from_proto).ok_or_else(|| Status::invalid_argument("spec: required"))?;
        let spec = input.validate(0).map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        Ok(Response::new(match crate::probe(spec, self.options.clone()).await {
            Ok(s) => pb::ProbeResponse { snapshot: Some(snapshot_to_proto(&s)), error: None },
            Err(e) => pb::ProbeResponse {
                snapshot: None,
                error: Some(pb::CollectError { kind: e.kind.as_str().into(), message: e.message }),
            },
        }))
    }

    type StreamResultsStream = ResultStream;

    async fn stream_results(&self, _: Request<pb::StreamResultsRequest>) -> Result<Response<ResultStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let mut changes = self.node.store().subscribe();
        let this = CollectorServiceImpl {
            id: self.id.clone(),
            node: self.node.clone(),
            options: self.options.clone(),
            book: self.book.clone(),
        };
        tokio::spawn(async move {
            // Everything current first, then each change as it happens.
            let mut pending: Vec<MonitorId> = this.node.store().all().into_iter().map(|e| e.spec.id.clone()).collect();
            loop {
                for id in pending.drain(..) {
                    let epoch = this.book.lock().await.epoch(&id);
                    if let Some(r) = this.result(&id, epoch) {
                        if tx.send(Ok(r)).await.is_err() {
                            return; // the manager went away
                        }
                    }
                }
                match changes.recv().await {
                    Ok(id) => pending.push(id),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        pending = this.node.store().all().into_iter().map(|e| e.spec.id.clone()).collect();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
