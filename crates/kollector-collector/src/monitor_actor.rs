//! `MonitorActor`: one monitor, one Kafka client, one collection at a time.
//!
//! State machine (reported as [`MonitorState`]):
//!
//! ```text
//!   Starting ──ok──▶ Running ◀──ok──▶ Degraded (snapshot with warnings)
//!      │               │ error
//!      └──error──▶ Failing ──3 in a row──▶ client closed, rebuilt after backoff
//!                      └──10 rebuilds without success──▶ Failed (retry every 5 min)
//!   any ──Stop──▶ (wait for the in-flight collection) ──▶ client closed ──▶ Stopped
//! ```
//!
//! Ownership: the client lives in `ClientSlot`. A collection *moves* it into
//! a blocking task (`spawn_blocking`, off the actor thread) and gets it back
//! when the task ends, so the actor cannot start a second collection or close
//! the client while one runs. A panic in the task drops the client there
//! (closing it) and becomes a `Panic` failure. Closing also happens on the
//! blocking pool, because librdkafka's destroy joins its threads.
//!
//! Identity guard: the first successful snapshot pins the cluster id (or the
//! spec's `expected_cluster_id` does from the start). A snapshot from another
//! cluster is an `IdentityMismatch` error and is never published.
//!
//! Fence (cluster mode): a collection may talk to Kafka only until the
//! collect gate's deadline (the lease's safe end). One that is still in
//! flight then is abandoned within ~100 ms and its client is closed at once,
//! so a frozen or cut-off collector has no Kafka connection left when its
//! lease expires and the monitor starts elsewhere.
//!
//! Each result is stamped with the generation and the assignment epoch in
//! force when its collection *started*, so the manager can refuse one that
//! was collected under an assignment that is no longer current.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use kollector_core::history::{HistoryLimits, MonitorHistory, DEFAULT_WINDOW, HANDOVER_MAX_POINTS};
use kollector_core::{unix_ms, CollectError, ErrorKind, MonitorSpec, MonitorState, Snapshot};
use kollector_kafka::{ClientOptions, KafkaClient};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backoff;
use crate::gate::CollectGate;
use crate::store::ResultStore;

/// Extra time past the spec's timeout before an in-flight collection is
/// reported as stuck (it is still awaited: the client must come back).
const STUCK_GRACE: Duration = Duration::from_secs(5);

enum ClientSlot {
    /// No client: not built yet, or closed after failures (see `rebuild_not_before`).
    Empty,
    Idle(KafkaClient),
    /// Moved into the running collection.
    Lent,
}

/// Asks a monitor to stop; answered after its Kafka client is closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Sent by a monitor that stopped without being asked, so the registry can restart it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MonitorExited {
    pub spec: Arc<MonitorSpec>,
}

/// The result of one collection task: the client back (unless the task
/// panicked) and what it collected.
type CycleOutcome = Result<(KafkaClient, Result<Snapshot, CollectError>), tokio::task::JoinError>;

/// Cluster mode: every this many successful cycles (from the second on), a
/// copy of the history goes out with the result, so a manager can hand it
/// to the next owner if this collector dies. Each copy costs a few bytes per
/// point on the wire; five cycles keep that small while a new owner starts
/// with history at most five cycles old.
const HANDOVER_EVERY: u64 = 5;

pub struct MonitorActor {
    spec: Arc<MonitorSpec>,
    /// The assignment epoch, shared with the registry (a re-Assign of the
    /// same spec under a newer epoch changes it without a restart).
    epoch: Arc<AtomicU64>,
    options: ClientOptions,
    gate: CollectGate,
    store: ResultStore,
    exited: Option<Recipient<MonitorExited>>,
    client: ClientSlot,
    /// Closes in progress (after failures); a stop waits for them too.
    closing: Vec<JoinHandle<()>>,
    stopping: bool,
    /// Set on Stop: an in-flight collection gives up within ~100 ms instead
    /// of running on to its timeout, so a stop (Unassign, reconfigure) of a
    /// monitor whose brokers do not answer is quick.
    abandon: Arc<AtomicBool>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Sequence number of the collection in flight, if any.
    in_flight: Option<u64>,
    cycles: u64,
    state: MonitorState,
    consecutive_failures: u32,
    failures_since_rebuild: u32,
    /// Rebuilds since the last success: drives backoff and the restart limit.
    rebuilds_since_success: u32,
    restarts: u32,
    rebuild_not_before: Option<Instant>,
    pinned_cluster_id: Option<String>,
    /// Log histories and commit windows: lag in seconds and verdicts come
    /// from these, not from extra Kafka requests.
    history: MonitorHistory,
    /// Successful cycles of this actor (paces history handovers).
    successes: u64,
}

impl MonitorActor {
    pub fn new(
        spec: Arc<MonitorSpec>,
        epoch: Arc<AtomicU64>,
        options: ClientOptions,
        gate: CollectGate,
        store: ResultStore,
        exited: Option<Recipient<MonitorExited>>,
    ) -> Self {
        MonitorActor {
            pinned_cluster_id: spec.expected_cluster_id.clone(),
            spec,
            epoch,
            options,
            gate,
            store,
            exited,
            client: ClientSlot::Empty,
            closing: Vec::new(),
            stopping: false,
            abandon: Arc::new(AtomicBool::new(false)),
            stop_waiters: Vec::new(),
            in_flight: None,
            cycles: 0,
            state: MonitorState::Starting,
            consecutive_failures: 0,
            failures_since_rebuild: 0,
            rebuilds_since_success: 0,
            restarts: 0,
            rebuild_not_before: None,
            history: MonitorHistory::default(),
            successes: 0,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.in_flight.is_some() {
            // Never overlap collections; a slow one simply skips ticks.
            return;
        }
        if !self.gate.is_open() {
            // Cluster mode: the lease may have expired; the fence will stop us.
            return;
        }
        if matches!(self.client, ClientSlot::Empty) {
            if self.rebuild_not_before.is_some_and(|t| Instant::now() < t) {
                return;
            }
            match KafkaClient::connect(&self.spec, &self.options) {
                Ok(c) => {
                    if let Some(id) = &self.pinned_cluster_id {
                        c.pin_cluster(id);
                    }
                    self.client = ClientSlot::Idle(c)
                }
                Err(e) => {
                    self.on_failure(e, self.epoch.load(Ordering::SeqCst), ctx);
                    return;
                }
            }
        }
        let ClientSlot::Idle(client) = std::mem::replace(&mut self.client, ClientSlot::Lent) else {
            return;
        };
        self.cycles += 1;
        let seq = self.cycles;
        self.in_flight = Some(seq);
        let spec = self.spec.clone();
        let fence = Some(self.gate.fence(self.abandon.clone()));
        // Stamped now: the result belongs to the assignment it started under.
        let epoch = self.epoch.load(Ordering::SeqCst);
        let task = tokio::task::spawn_blocking(move || {
            let result = client.collect_fenced(&spec, fence);
            (client, result)
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(task).map(move |outcome, act, ctx| {
            act.on_cycle_done(seq, epoch, outcome, ctx);
        }));
        let limit = self.spec.timeout + STUCK_GRACE;
        ctx.run_later(limit, move |act, _| {
            if act.in_flight == Some(seq) {
                act.state = MonitorState::Failing;
                let msg = format!("collection still running after {limit:?}; waiting for it to end");
                tracing::warn!(monitor = %act.spec.id, "{msg}");
                act.publish_status(Some(msg));
            }
        });
    }

    fn on_cycle_done(&mut self, seq: u64, epoch: u64, outcome: CycleOutcome, ctx: &mut Context<Self>) {
        if self.in_flight != Some(seq) {
            return;
        }
        self.in_flight = None;
        let result = match outcome {
            Ok((client, result)) => {
                self.client = ClientSlot::Idle(client);
                result
            }
            Err(join_error) => {
                // The client was dropped (and closed) while the task unwound.
                self.client = ClientSlot::Empty;
                Err(CollectError::new(ErrorKind::Panic, format!("collection panicked: {join_error}")))
            }
        };
        if self.stopping {
            self.finish_stop(ctx);
            return;
        }
        match result.and_then(|s| self.check_identity(s)) {
            Ok(snapshot) => self.on_success(snapshot, epoch),
            Err(e) if e.kind == ErrorKind::Fenced => self.on_fenced(e, epoch),
            Err(e) => self.on_failure(e, epoch, ctx),
        }
    }

    /// The collection was abandoned at the fence: close the client now (its
    /// connections must be gone before the lease can expire). Not a failure
    /// of the monitor: no backoff, a new client is built once the gate opens.
    fn on_fenced(&mut self, error: CollectError, epoch: u64) {
        tracing::warn!(monitor = %self.spec.id, "{}; closing the Kafka client", error.message);
        if let ClientSlot::Idle(client) = std::mem::replace(&mut self.client, ClientSlot::Empty) {
            self.closing.retain(|h| !h.is_finished());
            self.closing.push(tokio::task::spawn_blocking(move || drop(client)));
        }
        self.state = MonitorState::Failing;
        self.publish_failure(error, epoch);
    }

    fn check_identity(&mut self, snapshot: Snapshot) -> Result<Snapshot, CollectError> {
        match &self.pinned_cluster_id {
            Some(pinned) if *pinned != snapshot.cluster_id => Err(CollectError::new(
                ErrorKind::IdentityMismatch,
                format!(
                    "cluster id {:?} differs from {} {:?}; data refused",
                    snapshot.cluster_id,
                    if self.spec.expected_cluster_id.is_some() {
                        "expected_cluster_id"
                    } else {
                        "the id pinned at first success"
                    },
                    pinned
                ),
            )),
            Some(_) => Ok(snapshot),
            None => {
                tracing::info!(monitor = %self.spec.id, cluster_id = %snapshot.cluster_id, "pinned cluster id");
                self.pinned_cluster_id = Some(snapshot.cluster_id.clone());
                Ok(snapshot)
            }
        }
    }

    fn on_success(&mut self, mut snapshot: Snapshot, epoch: u64) {
        let limits = HistoryLimits::for_monitor(self.spec.lag_history, self.spec.interval);
        let at = snapshot.collected_at_ms;
        self.history.observe(&mut snapshot, at, limits, DEFAULT_WINDOW);
        self.successes += 1;
        if !self.gate.is_always_open() && self.successes % HANDOVER_EVERY == 2 {
            // Before the update below, so the result it announces carries it.
            self.store.offer_handover(&self.spec.id, self.history.for_handover(HANDOVER_MAX_POINTS));
        }
        self.consecutive_failures = 0;
        self.failures_since_rebuild = 0;
        self.rebuilds_since_success = 0;
        self.state = if snapshot.degraded() { MonitorState::Degraded } else { MonitorState::Running };
        let reason = snapshot.degraded().then(|| snapshot.warnings.join("; "));
        let status = self.status(reason);
        let now = unix_ms();
        let due = self.next_result_due_ms(now);
        self.store.update(&self.spec.id, self.spec.generation, |e| {
            e.status = status;
            e.next_result_due_ms = due;
            e.snapshot = Some(Arc::new(snapshot));
            e.error = None;
            e.epoch = epoch;
            e.attempted_at_ms = now;
            e.last_success_ms = Some(now);
            e.collections_total += 1;
        });
    }

    fn on_failure(&mut self, error: CollectError, epoch: u64, ctx: &mut Context<Self>) {
        self.consecutive_failures += 1;
        self.failures_since_rebuild += 1;
        tracing::warn!(monitor = %self.spec.id, kind = error.kind.as_str(), "collection failed: {}", error.message);
        let client_broken = error.kind == ErrorKind::Client || matches!(self.client, ClientSlot::Empty);
        if client_broken || self.failures_since_rebuild >= backoff::REBUILD_AFTER_FAILURES {
            self.schedule_rebuild(ctx);
        }
        self.state = if self.rebuilds_since_success > backoff::MAX_RESTARTS {
            MonitorState::Failed
        } else {
            MonitorState::Failing
        };
        self.publish_failure(error, epoch);
    }

    /// Closes the current client (off the actor thread) and sets when the next may be built.
    fn schedule_rebuild(&mut self, _ctx: &mut Context<Self>) {
        if let ClientSlot::Idle(client) = std::mem::replace(&mut self.client, ClientSlot::Empty) {
            self.closing.retain(|h| !h.is_finished());
            self.closing.push(tokio::task::spawn_blocking(move || drop(client)));
        }
        self.failures_since_rebuild = 0;
        self.rebuilds_since_success += 1;
        self.restarts += 1;
        let delay = backoff::delay(self.rebuilds_since_success, rand::random::<f64>());
        tracing::info!(monitor = %self.spec.id, "rebuilding the Kafka client in {delay:?} (rebuild {})", self.restarts);
        self.rebuild_not_before = Some(Instant::now() + delay);
        self.store.update(&self.spec.id, self.spec.generation, |e| e.restarts_total += 1);
    }

    /// When this monitor's next result is due, stated with every result so
    /// readers can tell a late owner from a waiting one: the next tick (or,
    /// with no client, the end of the rebuild backoff and the tick after
    /// it) plus the timeout the collection may take.
    fn next_result_due_ms(&self, now_ms: u64) -> u64 {
        let backoff = match self.client {
            ClientSlot::Empty => self.rebuild_not_before.map(|t| t.saturating_duration_since(Instant::now())),
            _ => None,
        };
        let wait = backoff.unwrap_or_default() + self.spec.interval + self.spec.timeout;
        now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
    }

    /// Publishes a failed attempt (the state is already set).
    fn publish_failure(&self, error: CollectError, epoch: u64) {
        let status = self.status(Some(error.message.clone()));
        let now = unix_ms();
        let due = self.next_result_due_ms(now);
        self.store.update(&self.spec.id, self.spec.generation, |e| {
            e.status = status;
            e.next_result_due_ms = due;
            *e.errors_total.entry(error.kind).or_default() += 1;
            e.error = Some(error);
            e.epoch = epoch;
            e.attempted_at_ms = now;
            e.collections_total += 1;
        });
    }

    fn status(&self, reason: Option<String>) -> kollector_core::MonitorStatus {
        kollector_core::MonitorStatus {
            state: self.state,
            reason,
            consecutive_failures: self.consecutive_failures,
            restarts: self.restarts,
            pinned_cluster_id: self.pinned_cluster_id.clone(),
        }
    }

    fn publish_status(&self, reason: Option<String>) {
        let status = self.status(reason);
        self.store.update(&self.spec.id, self.spec.generation, |e| e.status = status);
    }

    /// Closes the client and every close in progress, then answers the stop
    /// requests and stops the actor.
    fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        let client = match std::mem::replace(&mut self.client, ClientSlot::Empty) {
            ClientSlot::Idle(c) => Some(c),
            _ => None,
        };
        let mut closing = std::mem::take(&mut self.closing);
        if let Some(c) = client {
            closing.push(tokio::task::spawn_blocking(move || drop(c)));
        }
        let all_closed = async move {
            for handle in closing {
                let _ = handle.await;
            }
        };
        ctx.wait(actix::fut::wrap_future::<_, Self>(all_closed).map(|_, act, ctx| {
            act.state = MonitorState::Stopped;
            for waiter in act.stop_waiters.drain(..) {
                let _ = waiter.send(());
            }
            ctx.stop();
        }));
    }
}

/// Internal timer message: time to collect.
#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

impl Actor for MonitorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(history) = self.store.take_history(&self.spec.id) {
            self.history = history;
        }
        tracing::info!(monitor = %self.spec.id, generation = self.spec.generation, "monitor started");
        ctx.notify(Tick);
        ctx.run_interval(self.spec.interval, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // The next actor for this monitor (a restart, a new generation, the
        // next process through the standalone history file) continues it.
        self.store.put_history(&self.spec.id, std::mem::take(&mut self.history));
        if !self.stopping {
            // Stopped without a Stop request: the registry decides whether to restart.
            if let Some(exited) = &self.exited {
                exited.do_send(MonitorExited { spec: self.spec.clone() });
            }
        }
        tracing::info!(monitor = %self.spec.id, generation = self.spec.generation, "monitor stopped");
    }
}

impl Handler<Tick> for MonitorActor {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        self.tick(ctx);
    }
}

impl Handler<Stop> for MonitorActor {
    // A plain future (not tied to the actor's context), so the answer is
    // delivered even though the actor stops right after sending it.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.stop_waiters.push(tx);
        if !self.stopping {
            self.stopping = true;
            self.abandon.store(true, Ordering::SeqCst);
            if self.in_flight.is_none() {
                self.finish_stop(ctx);
            }
            // Otherwise on_cycle_done finishes the stop when the client comes back.
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
