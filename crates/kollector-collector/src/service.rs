//! `CollectorService`: how the manager drives this collector (cluster mode).
//!
//! A command is checked against the [`FencingBook`] and applied through the
//! registry while holding the monitor's turn (see `node.rs`), so checks and
//! effects of one monitor never interleave, and a slow stop of one monitor
//! never delays another's commands. The book itself is locked only for the
//! instant of a check or a record, never across an await.
//!
//! An Assign must name the etcd lease this collector holds now
//! (`Fencing.collector_lease`): one addressed to an earlier incarnation (sent
//! before this collector fenced itself and registered again) is refused, so
//! it cannot start a monitor the cluster has given to someone else meanwhile.
//!
//! A leader term higher than any seen is believed only once etcd confirms it
//! is the current leader's (see [`TermSource`]): otherwise one forged
//! command with `leader_term = i64::MAX` would make this collector refuse
//! every real manager until it restarted. With mutual TLS only a node of the
//! cluster can send commands at all; this check also holds against a
//! misbehaving node and in `--insecure` clusters.
//!
//! `StreamResults` pushes every result with the generation and epoch that
//! were in force when its collection started; a result too large for the
//! transport is replaced by an error result for that monitor and the stream
//! goes on.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use kollector_core::history::{HistoryLimits, DEFAULT_WINDOW};
use kollector_core::{CollectError, CollectorId, ErrorKind, MonitorId, MonitorResult};
use kollector_kafka::ClientOptions;
use kollector_proto::v1::collector_service_server::CollectorService;
use kollector_proto::v1::{self as pb};
use kollector_proto::{history_from_proto, history_to_proto, input_from_proto, result_to_proto, snapshot_to_proto};
use prost::Message as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::fencing::{FencingBook, Tokens};
use crate::node::CollectorHandle;
use crate::registry::RegistryError;

/// The lease this collector holds now (0: not registered), shared with the
/// membership task that renews and loses it.
#[derive(Clone, Debug, Default)]
pub struct CurrentLease(Arc<AtomicI64>);

impl CurrentLease {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    pub fn set(&self, lease: i64) {
        self.0.store(lease, Ordering::SeqCst)
    }
}

/// What etcd says now: the current leader's term (None: no leader) and
/// its revision (0 if unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtcdNow {
    pub leader_term: Option<i64>,
    pub revision: i64,
}

/// Reads the current leader's term from where leaders are elected (etcd).
pub type TermSource = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<EtcdNow, String>> + Send + Sync>;

#[derive(Clone)]
pub struct CollectorServiceImpl {
    terms: Option<TermSource>,
    id: CollectorId,
    node: CollectorHandle,
    options: ClientOptions,
    book: Arc<Mutex<FencingBook>>,
    lease: CurrentLease,
    max_message_bytes: usize,
    /// When etcd was last read to look for a restored history: stale
    /// commands around an election must not queue reads ahead of the new
    /// leader's.
    last_restore_probe: Arc<Mutex<Option<std::time::Instant>>>,
}

impl CollectorServiceImpl {
    pub fn new(
        id: CollectorId,
        node: CollectorHandle,
        options: ClientOptions,
        lease: CurrentLease,
        max_message_bytes: usize,
    ) -> Self {
        CollectorServiceImpl {
            terms: None,
            id,
            node,
            options,
            book: Arc::default(),
            lease,
            max_message_bytes,
            last_restore_probe: Arc::default(),
        }
    }

    /// Check every new leader term against `source` before believing it.
    pub fn with_term_source(self, source: TermSource) -> Self {
        CollectorServiceImpl { terms: Some(source), ..self }
    }

    /// Refuses a term higher than any seen unless it is the current
    /// leader's. Terms already seen (or older: the book refuses those) need
    /// no etcd read, so this costs one read per leader change.
    async fn believe_term(&self, term: i64) -> Result<(), Status> {
        let Some(source) = &self.terms else { return Ok(()) };
        let max = self.book().max_term();
        if term < max {
            // The book refuses it (a deposed leader) unless etcd's history
            // went back; then only the current leader's term is believed.
            return match self.rebase_if_restored().await {
                Some(current) if current != term => Err(not_current(term, current)),
                _ => Ok(()),
            };
        }
        if term == max {
            return Ok(());
        }
        match source().await.map(|now| now.leader_term) {
            Ok(Some(current)) if current == term => Ok(()),
            Ok(current) => {
                tracing::warn!(term, current = ?current, "refused a command whose leader term is not the current one");
                Err(Status::failed_precondition(format!(
                    "leader term {term} is not the current leader's ({}); command refused",
                    current.map_or("no leader".to_string(), |c| c.to_string())
                )))
            }
            Err(e) => Err(Status::unavailable(format!("cannot check leader term {term} against etcd: {e}"))),
        }
    }

    /// After the book refused (or would refuse) a command: if etcd's
    /// history went back (restored from an older backup), starts the book
    /// over from what etcd says now and returns the current leader's term,
    /// the only one believed from then on (a newer one is checked against
    /// etcd as always). The judgement uses one read made while the book did
    /// not change, so a token recorded meanwhile (a new leader's) is never
    /// forgotten; at most one read a second.
    async fn rebase_if_restored(&self) -> Option<i64> {
        let source = self.terms.as_ref()?;
        {
            let mut last = self.last_restore_probe.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                return None;
            }
            *last = Some(std::time::Instant::now());
        }
        let version = self.book().version();
        let now = source().await.ok()?;
        let current = now.leader_term?;
        let mut book = self.book();
        if book.version() != version || !book.history_went_back(now.revision, current) {
            return None;
        }
        tracing::warn!(
            revision = now.revision,
            highest_seen = book.highest_revision(),
            believed_term = book.max_term(),
            current_term = current,
            "etcd's revision went back (restored from a backup?): starting the fencing book over from etcd"
        );
        book.rebase(current);
        Some(current)
    }

    /// The book's verdict on a command of leader term `term`, after a
    /// rebase if etcd's history went back (then only the current leader's
    /// term passes).
    async fn fenced(&self, term: i64, check: impl Fn(&FencingBook) -> Result<(), String>) -> Result<(), Status> {
        if check(&self.book()).is_ok() {
            return Ok(());
        }
        if let Some(current) = self.rebase_if_restored().await {
            if current != term {
                return Err(not_current(term, current));
            }
        }
        check(&self.book()).map_err(|e| Status::failed_precondition(format!("stale command: {e}")))
    }

    fn book(&self) -> std::sync::MutexGuard<'_, FencingBook> {
        // Plain bookkeeping: a panic while holding it cannot leave it half-written.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The wire form of `id`'s latest result, or an error result in its
    /// place if it would not fit in one message.
    fn result(&self, id: &MonitorId) -> Option<pb::MonitorResult> {
        let mut r = self.node.store().get(id)?;
        r.collector = Some(self.id.clone());
        let wire = result_to_proto(&r);
        // Leave room for framing and the stream's own overhead.
        let limit = self.max_message_bytes.saturating_sub(1024);
        if wire.encoded_len() <= limit {
            return Some(wire);
        }
        let message = format!(
            "result of {} bytes exceeds the gRPC message limit of {} bytes (raise --grpc-max-message-size or narrow topic_include)",
            wire.encoded_len(),
            self.max_message_bytes
        );
        tracing::warn!(monitor = %id, "{message}");
        let too_large =
            MonitorResult { snapshot: None, error: Some(CollectError::new(ErrorKind::ResultTooLarge, message)), ..r };
        Some(result_to_proto(&too_large))
    }
}

fn not_current(term: i64, current: i64) -> Status {
    Status::failed_precondition(format!(
        "leader term {term} is not the current leader's ({current}) after etcd's history went back; command refused"
    ))
}

fn tokens(f: Option<pb::Fencing>) -> Result<(Tokens, i64), Status> {
    let f = f.ok_or_else(|| Status::invalid_argument("fencing: required"))?;
    Ok((Tokens { generation: f.generation, epoch: f.epoch, leader_term: f.leader_term }, f.collector_lease))
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::ShuttingDown | RegistryError::Fenced(_) => Status::unavailable(e.to_string()),
        RegistryError::StaleGeneration { .. } => Status::failed_precondition(e.to_string()),
        RegistryError::NotRunning(_) => Status::not_found(e.to_string()),
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::MonitorResult, Status>> + Send>>;

#[tonic::async_trait]
impl CollectorService for CollectorServiceImpl {
    async fn assign(&self, req: Request<pb::AssignRequest>) -> Result<Response<pb::AssignResponse>, Status> {
        let req = req.into_inner();
        let (tokens, lease) = tokens(req.fencing)?;
        let input = req.spec.map(input_from_proto).ok_or_else(|| Status::invalid_argument("spec: required"))?;
        self.believe_term(tokens.leader_term).await?;
        let spec = input
            .validate(tokens.generation)
            .map_err(|e| Status::invalid_argument(format!("invalid monitor spec: {e}")))?;
        let turn = self.node.turn(&spec.id).await;
        let held = self.lease.get();
        if held == 0 || lease != held {
            return Err(Status::failed_precondition(format!(
                "stale command: addressed to lease {lease}, this collector holds {}",
                if held == 0 { "none (not registered)".to_string() } else { held.to_string() }
            )));
        }
        self.fenced(tokens.leader_term, |book| book.check(&spec.id, tokens)).await?;
        let id = spec.id.clone();
        // The previous owner's history, as a manager last heard it. Not
        // needed (nor decoded) if the monitor runs here already.
        let mut offered = false;
        if let Some(history) = req.history {
            if !self.node.list_running().await.iter().any(|m| m.id == id) {
                let limits = HistoryLimits::for_monitor(spec.lag_history, spec.interval);
                // Nothing from this node's future: a clock ahead elsewhere would freeze it.
                let not_after = kollector_core::unix_ms().saturating_add(spec.interval.as_millis() as u64);
                let received = history_from_proto(history, limits, DEFAULT_WINDOW, not_after);
                self.node.store().offer_history(&id, received);
                offered = true;
            }
        }
        let outcome = self
            .node
            .assign_in_turn(&turn, spec, tokens.epoch, Some((self.lease.clone(), lease)))
            .await
            .inspect_err(|_| {
                if offered {
                    // Not started here: the history is the next owner's.
                    self.node.store().forget_history(&id);
                }
            })
            .map_err(registry_status)?;
        self.book().record_assign(&id, tokens);
        tracing::info!(monitor = %id, epoch = tokens.epoch, term = tokens.leader_term, outcome = outcome.as_str(), "assign");
        Ok(Response::new(pb::AssignResponse { outcome: outcome.as_str().into() }))
    }

    async fn unassign(&self, req: Request<pb::UnassignRequest>) -> Result<Response<pb::UnassignResponse>, Status> {
        let req = req.into_inner();
        // Stopping is always safe, whichever incarnation it was addressed to;
        // but only the addressed incarnation may *confirm* it (the manager
        // counts an OK as this collector's release of the monitor).
        let (tokens, lease) = tokens(req.fencing)?;
        let id = MonitorId::new(req.monitor_id.clone()).map_err(|e| {
            Status::invalid_argument(format!("monitor_id: {} {e}", kollector_core::ids::shown(&req.monitor_id)))
        })?;
        self.believe_term(tokens.leader_term).await?;
        let turn = self.node.turn(&id).await;
        self.fenced(tokens.leader_term, |book| book.check_unassign(&id, tokens)).await?;
        let was_running = match self.node.unassign_in_turn(&turn).await {
            Ok(()) => true,
            Err(RegistryError::NotRunning(_)) => false,
            Err(e) => return Err(registry_status(e)),
        };
        self.book().record(&id, tokens);
        tracing::info!(monitor = %id, epoch = tokens.epoch, was_running, "unassign");
        let held = self.lease.get();
        if lease != held {
            return Err(Status::failed_precondition(format!(
                "stopped, but addressed to lease {lease} while this collector holds {held}: not a confirmation"
            )));
        }
        Ok(Response::new(pb::UnassignResponse { was_running }))
    }

    async fn list_running(
        &self,
        req: Request<pb::ListRunningRequest>,
    ) -> Result<Response<pb::ListRunningResponse>, Status> {
        let req = req.into_inner();
        let term = req.leader_term;
        self.believe_term(term).await?;
        self.book().observe_term(term);
        let running = self.node.try_list_running().await.ok_or_else(|| {
            Status::unavailable("the monitor registry does not answer; this collector cannot say what it runs")
        })?;
        let monitors: Vec<pb::RunningMonitor> = running
            .into_iter()
            .map(|r| pb::RunningMonitor {
                epoch: r.epoch,
                monitor_id: r.id.to_string(),
                generation: r.generation,
                stopping: r.stopping,
            })
            .collect();
        Ok(Response::new(kollector_proto::list_running_answer(
            self.id.to_string(),
            self.lease.get(),
            monitors,
            req.unless_digest,
        )))
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
        let this = self.clone();
        tokio::spawn(async move {
            // Everything current first, then each change as it happens.
            let mut pending: Vec<MonitorId> = this.node.store().ids();
            // The handover history last sent on this stream, per monitor: a
            // copy goes out once, with the next result after it changed.
            let mut sent_history: HashMap<MonitorId, u64> = HashMap::new();
            loop {
                for id in pending.drain(..) {
                    if let Some(mut r) = this.result(&id) {
                        if let Some((seq, history)) = this.node.store().handover(&id) {
                            if sent_history.get(&id) != Some(&seq) {
                                let wire = history_to_proto(&history);
                                // Never push a result past the message limit for it.
                                if r.encoded_len() + wire.encoded_len() + 1024 <= this.max_message_bytes {
                                    r.history = Some(wire);
                                }
                                sent_history.insert(id.clone(), seq);
                            }
                        }
                        if tx.send(Ok(r)).await.is_err() {
                            return; // the manager went away
                        }
                    }
                }
                // Also end when the manager goes away while nothing changes.
                let next = tokio::select! {
                    next = changes.recv() => next,
                    _ = tx.closed() => return,
                };
                match next {
                    Ok(id) => pending.push(id),
                    Err(broadcast::error::RecvError::Lagged(_)) => pending = this.node.store().ids(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
