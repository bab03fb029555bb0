//! The reconciler: makes the cluster run what the plan says (leader only).
//!
//! Level-triggered, driven by changes: a pass runs soon after the watched
//! view of etcd changes (a spec, a record, a collector, a mark; debounced
//! by `CHANGE_DEBOUNCE`) and at least every `period` (the slow full check,
//! which also notices silent collectors). A pass
//!
//! 1. waits until the watched view (`cluster_view.rs`) holds everything
//!    etcd held when the pass began (one small read, no scan), takes
//!    monitors, live collectors (with their leases), drain marks,
//!    revocation marks and assignment records from it, and asks every
//!    live collector what it runs (ListRunning, in parallel, bounded); a
//!    collector silent for too long has its lease revoked, safely
//!    (`liveness.rs`), and gets no new monitors;
//! 2. plans (`planner.rs`) and decides the record writes
//!    (`decisions::assignment_changes`), then writes them in chunks that fit
//!    etcd's transaction limits, each guarded by the leader key;
//! 3. re-checks leadership, then sends the Unassigns
//!    (`decisions::unassign_actions`);
//! 4. re-checks leadership, then sends the Assigns that are safe now
//!    (`decisions::assign_actions`); moves that must wait are published.
//!
//! Every decision is a pure function in `decisions.rs`; this file only
//! reads, writes and calls. Nothing depends on remembering past calls except
//! the releases confirmed by the previous pass (written down in the next
//! one); a new leader simply asks again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kollector_coordination::election::{confirm_leader, LeaderToken, Leadership};
use kollector_coordination::CoordinationError;
use kollector_core::{CollectorId, Generation, MonitorId};
use kollector_proto::input_to_proto;
use kollector_proto::v1::collector_service_client::CollectorServiceClient;
use kollector_proto::v1::{self as pb};
use kollector_proto::GrpcLimits;
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::cluster_store::{LiveCollector, StoredMonitor};
use crate::cluster_view::ClusterView;
use crate::decisions::{
    assign_actions, assignment_changes, survey, unassign_actions, AssignAction, AssignmentRecord, Confirmed, Pending,
    Report, Running, TxnLimits, UnassignAction,
};
use crate::intake::Intake;
use crate::liveness::{Health, Liveness, LivenessPlan, LivenessRules, Observed};
use crate::planner::{self, CollectorSlot, Placement};

/// Bound on one Assign or Unassign (the collector answers once the old
/// client is closed; an in-flight collection is abandoned within ~100 ms).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A change in the view starts a pass this long after it (a burst of
/// changes, e.g. a collector's death deleting its key and a batch of
/// creates, is one pass).
const CHANGE_DEBOUNCE: Duration = Duration::from_millis(100);
/// A pass whose inputs equal those of a pass that found nothing to do is
/// skipped, but a full pass runs at least this often anyway.
const FULL_PASS_EVERY: Duration = Duration::from_secs(30);
/// Bound on the view catching up with etcd at the start of a pass.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on ListRunning: a frozen collector must not stall a pass.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on ListRunning to a collector that was already silent last pass:
/// a healthy one answers in milliseconds, and waiting the full bound on a
/// known-silent one every pass would slow every failover behind it.
const SILENT_LIST_TIMEOUT: Duration = Duration::from_millis(300);
/// Monitors re-sealed per pass after a key rotation: each restarts once on
/// its collector (its generation changes), so they go a few at a time.
const RESEALS_PER_PASS: usize = 16;
/// Bound on revoking one collector's lease (mark, then revocation); the
/// mark outlives the collector's TTL by this much more.
const REVOKE_BUDGET: Duration = Duration::from_secs(2);
/// How long a step of a pass (its Unassigns, its Assigns) keeps starting
/// commands to one collector. A healthy collector takes hundreds of
/// commands in that time (32 at a time, milliseconds each); a slow one gets
/// the commands it has started answered (each within `CALL_TIMEOUT`) and
/// the rest next pass, so the pass, and with it failovers onto the other
/// collectors, waits about this long plus one call on it, not its whole
/// batch.
const STEP_START_BUDGET: Duration = Duration::from_secs(1);
/// Commands in flight per collector. A collector serializes commands per
/// monitor only, and a stop costs a Kafka client close (~35 ms), so 200
/// moves off one collector take ~0.25 s instead of ~7 s one at a time.
const IN_FLIGHT_PER_COLLECTOR: usize = 32;

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("reading the cluster state: {0}")]
    Read(CoordinationError),
    #[error("no longer the leader; the pass stopped before {0}")]
    Deposed(&'static str),
}

/// Counters and status the manager exports (`kollector_*` metrics, status).
#[derive(Debug, Default)]
pub struct ReconcilerStats {
    pub assignments: AtomicU64,
    pub rebalance_moves: AtomicU64,
    pub passes: AtomicU64,
    pub failed_passes: AtomicU64,
    /// Whether the latest pass failed (readiness of the leader).
    pub last_pass_failed: std::sync::atomic::AtomicBool,
    pub failed_chunks: AtomicU64,
    pub leader_term: AtomicI64,
    /// Milliseconds from noticing a monitor's collector gone to its Assign on a live one.
    pub last_failover_ms: AtomicU64,
    /// Duration of the latest pass.
    pub last_pass_ms: AtomicU64,
    /// Moves that wait for an old owner to release the monitor.
    pub pending_moves: AtomicU64,
    /// Monitor specs in etcd that do not decode (skipped).
    pub invalid_specs: AtomicU64,
    /// The latest pass's waiting moves, for logs and status.
    pub pending: Mutex<Vec<Pending>>,
    /// Collectors the leader cannot work with now (silent past the bound,
    /// revoked, or on probation), as of the latest pass.
    pub unreachable: AtomicU64,
    /// Collector leases revoked because they did not answer.
    pub revocations: AtomicU64,
    /// Each collector's health in words (`liveness::Health`), latest pass.
    pub health: Mutex<BTreeMap<CollectorId, String>>,
    /// Monitors whose secrets are still sealed with another key than the
    /// first of the key file (leader's view; re-sealed a few per pass).
    pub secrets_on_old_keys: AtomicU64,
    /// Commands not started because their collector's step budget was
    /// spent (a slow collector); they go again next pass.
    pub deferred_commands: AtomicU64,
    /// Passes skipped because nothing changed since a pass that found
    /// nothing to do (see `FULL_PASS_EVERY`).
    pub quiet_passes: AtomicU64,
}

/// gRPC clients to collectors, by collector and address, with the
/// cluster's transport limits and, in a secure cluster, mutual TLS (this
/// manager's node certificate; the collector's verified against the
/// cluster CA *and* required to name the collector's id, as `kollector
/// certs --node ID` writes it: a collector registered under one id that
/// presents another node's certificate is refused, so no node can take
/// another's monitors, and their secrets, by claiming its id).
#[derive(Clone, Default)]
pub struct CollectorClients {
    limits: GrpcLimits,
    tls: Option<ClientTlsConfig>,
    clients: Arc<Mutex<HashMap<CollectorAt, CollectorServiceClient<Channel>>>>,
}

/// A collector id and the gRPC address it registered.
type CollectorAt = (CollectorId, String);

impl CollectorClients {
    pub fn new(limits: GrpcLimits, tls: Option<ClientTlsConfig>) -> Self {
        CollectorClients { limits, tls, clients: Arc::default() }
    }

    pub fn get(
        &self,
        id: &CollectorId,
        address: &str,
    ) -> Result<CollectorServiceClient<Channel>, tonic::transport::Error> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = (id.clone(), address.to_string());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let tls = self.tls.clone().map(|t| t.domain_name(id.as_str()));
        let channel = self.limits.endpoint(address, tls.as_ref(), Duration::from_secs(2), None)?.connect_lazy();
        let client = CollectorServiceClient::new(channel)
            .max_decoding_message_size(self.limits.max_message_bytes)
            .max_encoding_message_size(self.limits.max_message_bytes);
        map.insert(key, client.clone());
        Ok(client)
    }

    /// Forgets clients of collectors no longer registered at that address.
    pub fn retain(&self, live: &BTreeSet<CollectorAt>) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| live.contains(k));
    }
}

/// The order a collector's commands are started in: those `urgent` says
/// (failovers) first, in their order; then the others from position `turn`
/// (modulo their count) on, wrapping around. Pure.
fn order_commands<T>(commands: &mut [(MonitorId, T)], urgent: impl Fn(&MonitorId) -> bool, turn: usize) {
    // A stable sort: both kinds keep their order.
    commands.sort_by_key(|(m, _)| !urgent(m));
    let at = commands.iter().take_while(|(m, _)| urgent(m)).count();
    let rest = &mut commands[at..];
    if !rest.is_empty() {
        let by = turn % rest.len();
        rest.rotate_left(by);
    }
}

pub struct Reconciler {
    /// The watched view; its store makes the writes.
    view: ClusterView,
    clients: CollectorClients,
    /// Where the monitors' offset histories come from, for Assigns.
    histories: Intake,
    stats: Arc<ReconcilerStats>,
    period: Duration,
    limits: TxnLimits,
    /// Releases confirmed by the previous pass, to write down in the next
    /// (only under the same leader term: a new term starts afresh).
    confirmed: Confirmed,
    confirmed_term: i64,
    orphaned_since: HashMap<MonitorId, Instant>,
    liveness: Liveness,
    liveness_rules: LivenessRules,
    /// Each collector's latest ListRunning answer under a lease: the digest
    /// and the list, so an unchanged list is not sent again.
    running: HashMap<CollectorId, (i64, u64, RunningList)>,
    /// The inputs of the latest full pass that found nothing to do, and when.
    quiet: Option<(PassInputs, Instant)>,
}

/// What a pass decides from, in brief: equal inputs, equal decisions.
#[derive(Debug, PartialEq, Eq)]
struct PassInputs {
    /// The view's count of changes (`ViewState::changes`): moves with every
    /// change to a spec, record, collector or mark, and with every listing.
    changes: u64,
    /// Each collector's answer (its list's digest), None if silent.
    answers: BTreeMap<CollectorId, Option<u64>>,
    closed: BTreeSet<CollectorId>,
    not_holding: BTreeSet<CollectorId>,
    marks: BTreeMap<CollectorId, i64>,
}

/// What a collector said it runs, shared between passes.
type RunningList = Arc<BTreeMap<MonitorId, Running>>;

/// A collector's ListRunning answer this pass.
enum Answer {
    Silent,
    /// Its list's digest, and the list.
    Answered(u64, RunningList),
}

impl Answer {
    fn digest(&self) -> Option<u64> {
        match self {
            Answer::Silent => None,
            Answer::Answered(d, _) => Some(*d),
        }
    }
}

impl Reconciler {
    pub fn new(
        view: ClusterView,
        clients: CollectorClients,
        stats: Arc<ReconcilerStats>,
        period: Duration,
        limits: TxnLimits,
        histories: Intake,
        liveness_rules: LivenessRules,
    ) -> Self {
        Reconciler {
            view,
            clients,
            histories,
            stats,
            period,
            limits,
            confirmed: Confirmed::new(),
            confirmed_term: 0,
            orphaned_since: HashMap::new(),
            liveness: Liveness::new(),
            liveness_rules,
            running: HashMap::new(),
            quiet: None,
        }
    }

    /// Runs passes while this manager leads, until `leadership` says Stopped.
    pub async fn run(mut self, mut leadership: watch::Receiver<Leadership>) {
        let mut changes = self.view.changes();
        loop {
            let token = match &*leadership.borrow_and_update() {
                Leadership::Leader(t) => Some(t.clone()),
                Leadership::Stopped => return,
                Leadership::Follower => None,
            };
            match token {
                Some(token) => {
                    self.stats.leader_term.store(token.term, Ordering::Relaxed);
                    if self.confirmed_term != token.term {
                        self.confirmed.clear();
                        self.orphaned_since.clear();
                        self.liveness.clear();
                        self.quiet = None;
                        self.confirmed_term = token.term;
                    }
                    let started = Instant::now();
                    // Changes from here on (this pass's own writes among
                    // them) start the next pass early.
                    changes.borrow_and_update();
                    let result = self.pass(&token, &leadership).await;
                    self.stats.last_pass_failed.store(result.is_err(), Ordering::Relaxed);
                    if let Err(e) = result {
                        self.stats.failed_passes.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("reconcile pass failed: {e}");
                    }
                    self.stats.last_pass_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(self.period) => {}
                        r = leadership.changed() => if r.is_err() { return },
                        r = changes.changed() => if r.is_ok() {
                            tokio::time::sleep(CHANGE_DEBOUNCE).await;
                        },
                    }
                }
                None => {
                    self.quiet = None;
                    self.running.clear();
                    self.orphaned_since.clear();
                    self.confirmed.clear();
                    self.liveness.clear();
                    // A follower judges nobody: its old view would mislead status.
                    self.stats.health.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    self.stats.unreachable.store(0, Ordering::Relaxed);
                    if leadership.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Whether `token` still leads: locally (the election task) and in etcd.
    async fn still_leader(&self, token: &LeaderToken, leadership: &watch::Receiver<Leadership>) -> bool {
        if !matches!(&*leadership.borrow(), Leadership::Leader(t) if t == token) {
            return false;
        }
        let mut client = self.view.store().client();
        let check = tokio::time::timeout(LIST_TIMEOUT, confirm_leader(&mut client, token));
        matches!(check.await, Ok(Ok(true)))
    }

    /// One read-plan-write-command pass.
    pub async fn pass(
        &mut self,
        token: &LeaderToken,
        leadership: &watch::Receiver<Leadership>,
    ) -> Result<(), PassError> {
        // Everything etcd held when the pass began, from the watched view.
        let read = |e: crate::cluster_view::ViewError| PassError::Read(CoordinationError::Etcd(e.to_string()));
        self.view.sync(SYNC_TIMEOUT).await.map_err(read)?;
        let (collectors, unreadable) =
            self.view.read(|v| (v.collectors.clone(), v.unreadable_collectors.clone())).map_err(read)?;
        self.clients.retain(&collectors.iter().map(|(id, c)| (id.clone(), c.record.grpc_address.clone())).collect());

        // Unreadable records are live collectors all the same: silent ones.
        // Silence counts from when we asked.
        let asked_at = Instant::now();
        let mut answers = self.list_running(&collectors, token.term).await;
        answers.extend(unreadable.keys().map(|c| (c.clone(), Answer::Silent)));
        // Read after ListRunning's wait, so an expired mark is seen at once.
        self.view.sync(SYNC_TIMEOUT).await.map_err(read)?;
        let (marks, changes) = self.view.read(|v| (v.revoked.clone(), v.changes)).map_err(read)?;
        let closed = self.judge_liveness(token, asked_at, &collectors, &unreadable, &marks, &answers).await?;

        // Nothing changed since a pass that found nothing to do (the view,
        // every collector's answer, who is closed): this pass
        // would find nothing either. A full pass still runs every
        // FULL_PASS_EVERY, as a check that costs what a pass used to.
        let inputs = PassInputs {
            changes,
            answers: answers.iter().map(|(c, a)| (c.clone(), a.digest())).collect(),
            closed: closed.closed.clone(),
            not_holding: closed.not_holding.clone(),
            marks: marks.clone(),
        };
        // A collector without digests (an older version) always differs.
        let comparable = answers.values().all(|a| !matches!(a, Answer::Answered(0, _)));
        if let (Some((quiet, at)), true) = (&self.quiet, comparable) {
            if *quiet == inputs && at.elapsed() < FULL_PASS_EVERY {
                self.stats.quiet_passes.fetch_add(1, Ordering::Relaxed);
                self.stats.passes.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.quiet = None;

        // A full pass: the rest of the state, from the view. Records are
        // written by this leader alone, so none can name a collector
        // registered since `collectors` was read.
        let (monitors, draining, mut records, bad_records) = self
            .view
            .read(|v| {
                let monitors = MonitorsRead { valid: v.monitors.clone(), invalid: v.invalid_monitors.clone() };
                (monitors, v.draining.clone(), v.assignments.clone(), v.invalid_assignments.clone())
            })
            .map_err(read)?;
        let mut reports: BTreeMap<CollectorId, Report> = answers
            .iter()
            .map(|(c, a)| {
                let report = match a {
                    Answer::Answered(_, running) => Report::Answered(running.clone()),
                    Answer::Silent => Report::Silent,
                };
                (c.clone(), report)
            })
            .collect();
        drop(answers);

        // Monitors that cannot be read are reported and left exactly as they are.
        self.stats.invalid_specs.store(monitors.invalid.len() as u64, Ordering::Relaxed);
        for (id, why) in monitors.invalid.iter().chain(&bad_records) {
            tracing::warn!(monitor = %id, "skipping a monitor whose etcd value does not decode: {why}");
        }
        let skip: BTreeSet<MonitorId> = monitors
            .invalid
            .keys()
            .chain(bad_records.keys())
            .filter_map(|id| MonitorId::new(id.clone()).ok())
            .collect();

        // Holders: every registered collector and every revoked one whose
        // mark has not expired (it may still collect), except those known
        // to run nothing (back after a revocation, given nothing since).
        let live: BTreeSet<CollectorId> = collectors
            .keys()
            .chain(unreadable.keys())
            .chain(marks.keys())
            .filter(|c| !closed.not_holding.contains(*c))
            .cloned()
            .collect();
        for c in marks.keys() {
            reports.entry(c.clone()).or_insert(Report::Silent);
        }
        let generations: BTreeMap<MonitorId, Generation> =
            monitors.valid.iter().map(|(m, s)| (m.clone(), s.spec.generation)).collect();

        // Plan, decide the writes, write them in chunks.
        let no_new_work: BTreeSet<CollectorId> = draining.iter().chain(&closed.closed).cloned().collect();
        let slots = slots(&collectors, &no_new_work);
        let placements = placements(&monitors.valid);
        let previous = records.iter().filter_map(|(m, r)| r.collector.as_ref().map(|c| (m, c)));
        let (plan, _) = planner::plan_borrowed(&placements, &slots, previous);
        let now = Instant::now();
        for (m, r) in &records {
            if r.collector.as_ref().is_some_and(|c| !live.contains(c)) {
                self.orphaned_since.entry(m.clone()).or_insert(now);
            }
        }
        let writes = assignment_changes(plan, &records, &live, &self.confirmed, &skip);
        let mut idle = writes.is_empty();
        if !writes.is_empty() {
            let moves = writes.iter().filter(|w| w.moved).count() as u64;
            let total = writes.len();
            for chunk in self.view.store().write_assignments(token, writes, self.limits).await {
                match chunk.result {
                    Ok(revision) => {
                        for w in chunk.writes {
                            match w.value {
                                Some(v) => {
                                    records.insert(w.monitor, AssignmentRecord::written(&v, revision));
                                }
                                None => {
                                    records.remove(&w.monitor);
                                }
                            }
                        }
                    }
                    Err(CoordinationError::NotLeader) => return Err(PassError::Deposed("writing assignments")),
                    Err(e) => {
                        self.stats.failed_chunks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(writes = chunk.writes.len(), "writing a chunk of assignments failed: {e}");
                    }
                }
            }
            tracing::info!(writes = total, moves, term = token.term, "assignments written");
            self.stats.rebalance_moves.fetch_add(moves, Ordering::Relaxed);
        }
        self.stats
            .assignments
            .store(records.values().filter(|r| r.collector.is_some()).count() as u64, Ordering::Relaxed);

        // Stop what must stop; each answer confirms a release.
        if !self.still_leader(token, leadership).await {
            return Err(PassError::Deposed("unassigning"));
        }
        let survey = survey(&records, &live, &reports);
        let unassigns = unassign_actions(&survey, &generations, &skip);
        idle &= unassigns.is_empty();
        let confirmed = self.unassign(&collectors, unassigns, token.term).await;

        // Start what is safe to start now.
        if !self.still_leader(token, leadership).await {
            return Err(PassError::Deposed("assigning"));
        }
        let (mut assigns, pending) = assign_actions(&survey, &generations, &confirmed, &skip);
        // Never start work on a collector that is closed (silent past the
        // bound, revoked, on probation), whatever a record still says; and
        // remember every incarnation that was sent work (`liveness.rs`).
        assigns.retain(|a| !closed.closed.contains(&a.collector));
        idle &= assigns.is_empty() && pending.is_empty();
        for a in &assigns {
            if let Some(c) = collectors.get(&a.collector) {
                self.liveness.sending_work(&a.collector, c.lease);
            }
        }
        self.assign(&collectors, &monitors.valid, assigns, token.term).await;
        if !pending.is_empty() {
            tracing::info!(
                pending = pending.len(),
                first = %pending.first().map(|p| format!("{} → {}: {}", p.monitor, p.to, p.waiting_for.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", "))).unwrap_or_default(),
                "moves waiting for their old owners"
            );
        }
        self.stats.pending_moves.store(pending.len() as u64, Ordering::Relaxed);
        *self.stats.pending.lock().unwrap_or_else(|p| p.into_inner()) = pending;
        self.orphaned_since.retain(|m, _| records.get(m).is_some_and(|r| r.collector.is_some()));
        self.confirmed = confirmed;
        // Last, so this pass's commands carried the generations it read.
        self.reseal(token, &monitors.valid).await?;
        idle &= !monitors.valid.values().any(|m| m.needs_reseal);
        if idle {
            self.quiet = Some((inputs, Instant::now()));
        }
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// After a key rotation: re-seals a few monitors' secrets with the
    /// first key each pass (guarded by leadership and by each monitor's
    /// revision), until none is left on an older key.
    async fn reseal(
        &self,
        token: &LeaderToken,
        monitors: &BTreeMap<MonitorId, Arc<StoredMonitor>>,
    ) -> Result<(), PassError> {
        let due: Vec<&StoredMonitor> = monitors.values().filter(|m| m.needs_reseal).map(|m| &**m).collect();
        let mut left = due.len();
        self.stats.secrets_on_old_keys.store(left as u64, Ordering::Relaxed);
        let Some(first) = self.view.store().sealing_key_id() else { return Ok(()) };
        if due.is_empty() {
            return Ok(());
        }
        // Only once every manager seals with this key: one still on the old
        // key file could not open what is re-sealed (a rolling restart).
        match tokio::time::timeout(LIST_TIMEOUT, self.view.store().every_manager_seals_with(&first)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::info!(left, key = %first, "not re-sealing yet: not every manager seals with this key");
                return Ok(());
            }
            Ok(Err(e)) => {
                tracing::warn!("cannot tell which keys the managers seal with: {e}");
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
        // One call timeout for the whole step: a slow etcd must not hold
        // the pass (and failovers) for RESEALS_PER_PASS timeouts.
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        for m in due.into_iter().take(RESEALS_PER_PASS) {
            match tokio::time::timeout_at(deadline, self.view.store().reseal(token, m)).await {
                Ok(Ok(true)) => {
                    left -= 1;
                    tracing::info!(monitor = %m.spec.id, "re-sealed its secrets with the first key");
                }
                Ok(Ok(false)) => {}
                Ok(Err(CoordinationError::NotLeader)) => return Err(PassError::Deposed("re-sealing secrets")),
                Ok(Err(e)) => tracing::warn!(monitor = %m.spec.id, "re-sealing failed: {e}"),
                Err(_) => tracing::warn!(monitor = %m.spec.id, "re-sealing timed out"),
            }
        }
        self.stats.secrets_on_old_keys.store(left as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Judges every collector's liveness from this pass's reports and
    /// revokes the leases of those silent too long (`liveness.rs`); returns
    /// the plan (who gets no new work, who holds nothing).
    async fn judge_liveness(
        &mut self,
        token: &LeaderToken,
        now: Instant,
        collectors: &BTreeMap<CollectorId, LiveCollector>,
        unreadable: &BTreeMap<CollectorId, i64>,
        marks: &BTreeMap<CollectorId, i64>,
        answers: &BTreeMap<CollectorId, Answer>,
    ) -> Result<LivenessPlan, PassError> {
        let observed: BTreeMap<CollectorId, Observed> = collectors
            .iter()
            .map(|(c, live)| {
                let answered = matches!(answers.get(c), Some(Answer::Answered(..)));
                (c.clone(), Observed { lease: live.lease, answered })
            })
            .chain(unreadable.iter().map(|(c, lease)| (c.clone(), Observed { lease: *lease, answered: false })))
            .collect();
        let plan = self.liveness.observe(now, &observed, marks, self.liveness_rules);
        let silent = plan.health.values().filter(|h| matches!(h, Health::Silent { .. })).count();
        if plan.leader_isolated && silent > 0 {
            tracing::warn!(
                silent,
                "most collectors do not answer this leader: it is likely cut off itself, so none is revoked"
            );
        }
        for (c, lease) in &plan.revoke {
            let revoke = self.view.store().revoke_collector(token, c, *lease, REVOKE_BUDGET);
            match tokio::time::timeout(REVOKE_BUDGET * 2, revoke).await {
                Ok(Ok(revoked)) => {
                    if revoked {
                        self.stats.revocations.fetch_add(1, Ordering::Relaxed);
                    }
                    self.liveness.revoked(c, *lease);
                    tracing::warn!(collector = %c, lease, silent_for = ?self.liveness_rules.unreachable_after, "collector unreachable: lease revoked; its monitors move once it must have fenced");
                }
                Ok(Err(CoordinationError::NotLeader)) => return Err(PassError::Deposed("revoking a lease")),
                Ok(Err(e)) => tracing::warn!(collector = %c, "revoking an unreachable collector's lease failed: {e}"),
                Err(_) => tracing::warn!(collector = %c, "revoking an unreachable collector's lease timed out"),
            }
        }
        let unreachable =
            plan.health.values().filter(|h| !matches!(h, Health::Answering | Health::Silent { .. })).count();
        self.stats.unreachable.store(unreachable as u64, Ordering::Relaxed);
        *self.stats.health.lock().unwrap_or_else(|p| p.into_inner()) =
            plan.health.iter().map(|(c, h)| (c.clone(), h.describe(now))).collect();
        Ok(plan)
    }

    /// Every live collector's ListRunning, in parallel; silence is an
    /// answer too. A collector whose list is unchanged since its previous
    /// answer (same lease, same digest) says so instead of sending it.
    async fn list_running(
        &mut self,
        collectors: &BTreeMap<CollectorId, LiveCollector>,
        term: i64,
    ) -> BTreeMap<CollectorId, Answer> {
        self.running.retain(|c, (lease, _, _)| collectors.get(c).is_some_and(|live| live.lease == *lease));
        let cache = &self.running;
        let calls = collectors.iter().map(|(id, c)| {
            let client = self.clients.get(id, &c.record.grpc_address);
            let bound = if self.liveness.was_silent(id) { SILENT_LIST_TIMEOUT } else { LIST_TIMEOUT };
            let held = cache.get(id).map(|(_, digest, list)| (*digest, list.clone()));
            async move {
                let mut client = match client {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(collector = %id, "cannot set up a connection to it: {e}");
                        return (id.clone(), Answer::Silent);
                    }
                };
                let unless_digest = held.as_ref().map_or(0, |(d, _)| *d);
                let call = client.list_running(pb::ListRunningRequest { leader_term: term, unless_digest });
                match tokio::time::timeout(bound, call).await {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        // Only the incarnation etcd names may answer for this collector
                        // (an address reused by another process, or a collector that
                        // registered again since we read etcd, counts as silence).
                        if r.collector_id != id.as_str() || r.lease != c.lease {
                            tracing::warn!(collector = %id, answered = %r.collector_id, lease = r.lease, expected = c.lease, "ListRunning answered by another collector or incarnation; ignored");
                            return (id.clone(), Answer::Silent);
                        }
                        if r.unchanged {
                            return match held {
                                Some((digest, list)) if digest == r.digest => (id.clone(), Answer::Answered(digest, list)),
                                _ => {
                                    tracing::warn!(collector = %id, "ListRunning said unchanged against a list this manager does not hold; ignored");
                                    (id.clone(), Answer::Silent)
                                }
                            };
                        }
                        let running = r
                            .monitors
                            .into_iter()
                            .filter_map(|m| {
                                let id = MonitorId::new(m.monitor_id).ok()?;
                                Some((id, Running { generation: m.generation, epoch: m.epoch, stopping: m.stopping }))
                            })
                            .collect();
                        (id.clone(), Answer::Answered(r.digest, Arc::new(running)))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(collector = %id, "ListRunning failed: {}", e.message());
                        (id.clone(), Answer::Silent)
                    }
                    Err(_) => {
                        tracing::warn!(collector = %id, "ListRunning timed out");
                        (id.clone(), Answer::Silent)
                    }
                }
            }
        });
        let answers: BTreeMap<CollectorId, Answer> = futures::future::join_all(calls).await.into_iter().collect();
        for (c, a) in &answers {
            match (a, collectors.get(c)) {
                // A digest of 0 comes from a collector that sends none: keep nothing.
                (Answer::Answered(digest, list), Some(live)) if *digest != 0 => {
                    self.running.insert(c.clone(), (live.lease, *digest, list.clone()));
                }
                _ => {
                    self.running.remove(c);
                }
            }
        }
        answers
    }

    /// Sends Unassigns; returns the releases confirmed.
    async fn unassign(
        &self,
        collectors: &BTreeMap<CollectorId, LiveCollector>,
        actions: Vec<UnassignAction>,
        term: i64,
    ) -> Confirmed {
        let commands = actions
            .into_iter()
            .map(|a| {
                let req = pb::UnassignRequest {
                    monitor_id: a.monitor.to_string(),
                    // The stop happens whatever the lease; it confirms a
                    // release only if the addressed incarnation answered.
                    fencing: Some(pb::Fencing {
                        generation: a.generation,
                        epoch: a.epoch,
                        leader_term: term,
                        collector_lease: 0,
                    }),
                };
                (a.collector, a.monitor, Command::Unassign(req))
            })
            .collect();
        self.send(collectors, commands).await.into_iter().collect()
    }

    /// Sends Assigns; notes failover times of the monitors started.
    async fn assign(
        &mut self,
        collectors: &BTreeMap<CollectorId, LiveCollector>,
        monitors: &BTreeMap<MonitorId, Arc<StoredMonitor>>,
        actions: Vec<AssignAction>,
        term: i64,
    ) {
        // Each Assign is built when it is started (`Command::request`), so a
        // pass holds at most the requests in flight, not every Assign with
        // its history at once.
        let commands = actions
            .into_iter()
            .filter_map(|a| {
                let stored = monitors.get(&a.monitor)?.clone();
                let fencing =
                    pb::Fencing { generation: a.generation, epoch: a.epoch, leader_term: term, collector_lease: 0 };
                Some((a.collector, a.monitor, Command::Assign { spec: stored, fencing }))
            })
            .collect();
        for (_, m) in self.send(collectors, commands).await {
            if let Some(since) = self.orphaned_since.remove(&m) {
                self.stats.last_failover_ms.store(since.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Sends commands: to one collector up to `IN_FLIGHT_PER_COLLECTOR` at a
    /// time, to all collectors in parallel, each addressed to the lease etcd
    /// names for its collector. Commands are started only within
    /// `STEP_START_BUDGET` (so a call that times out, at `CALL_TIMEOUT`, is
    /// followed by no other), and one collector's whole batch gets at most
    /// `CALL_TIMEOUT`: a slow collector (every call taking seconds) must not
    /// hold the pass, and with it failovers onto the others, for its whole
    /// batch. Commands not started or cut off are unconfirmed and sent again
    /// next pass (fencing makes a late one harmless). Returns the commands
    /// answered OK.
    async fn send(
        &self,
        collectors: &BTreeMap<CollectorId, LiveCollector>,
        commands: Vec<(CollectorId, MonitorId, Command)>,
    ) -> Vec<(CollectorId, MonitorId)> {
        let mut by_collector: BTreeMap<CollectorId, Vec<(MonitorId, Command)>> = BTreeMap::new();
        for (c, m, command) in commands {
            by_collector.entry(c).or_default().push((m, command));
        }
        let turn = self.stats.passes.load(Ordering::Relaxed) as usize;
        let calls = by_collector.into_iter().map(|(cid, mut commands)| {
            let target = collectors.get(&cid).map(|c| (self.clients.get(&cid, &c.record.grpc_address), c.lease));
            // Only the commands started within the step budget are sent: a
            // failover first (a monitor whose owner is gone), then the rest
            // from a point that moves every pass, so no command is always
            // last behind others that keep failing.
            order_commands(&mut commands, |m| self.orphaned_since.contains_key(m), turn);
            let deferred = &self.stats.deferred_commands;
            let histories = &self.histories;
            async move {
                let Some((Ok(client), lease)) = target else { return Vec::new() };
                let started = tokio::time::Instant::now();
                let one = |(m, command): (MonitorId, Command)| {
                    let (mut client, cid) = (client.clone(), cid.clone());
                    async move {
                        if started.elapsed() >= STEP_START_BUDGET {
                            deferred.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(monitor = %m, collector = %cid, "not started: the collector's step budget is spent; next pass");
                            return None;
                        }
                        let what = command.name();
                        let call = async {
                            match command {
                                Command::Assign { spec, mut fencing } => {
                                    fencing.collector_lease = lease;
                                    let req = pb::AssignRequest {
                                        history: histories.history(&m),
                                        spec: Some(input_to_proto(&spec.spec.to_input())),
                                        fencing: Some(fencing),
                                    };
                                    client.assign(req).await.map(|r| r.into_inner().outcome)
                                }
                                Command::Unassign(mut req) => {
                                    req.fencing.iter_mut().for_each(|f| f.collector_lease = lease);
                                    client.unassign(req).await.map(|r| format!("was running: {}", r.into_inner().was_running))
                                }
                            }
                        };
                        match tokio::time::timeout(CALL_TIMEOUT, call).await {
                            Ok(Ok(outcome)) => {
                                tracing::info!(monitor = %m, collector = %cid, %outcome, "{what} done");
                                Some((cid, m))
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(monitor = %m, collector = %cid, "{what} failed: {}", e.message());
                                None
                            }
                            Err(_) => {
                                tracing::warn!(monitor = %m, collector = %cid, "{what} timed out");
                                None
                            }
                        }
                    }
                };
                futures::stream::iter(commands.into_iter().map(one))
                    .buffer_unordered(IN_FLIGHT_PER_COLLECTOR)
                    .filter_map(|x| async move { x })
                    .take_until(tokio::time::sleep(CALL_TIMEOUT))
                    .collect::<Vec<_>>()
                    .await
            }
        });
        futures::future::join_all(calls).await.into_iter().flatten().collect()
    }
}

/// A command for one collector. An Assign carries what its request is
/// built from when it is started (the spec is shared with the view's).
enum Command {
    Assign { spec: Arc<StoredMonitor>, fencing: pb::Fencing },
    Unassign(pb::UnassignRequest),
}

/// The monitors a pass read: those that decode, and why the others do not.
struct MonitorsRead {
    valid: BTreeMap<MonitorId, Arc<StoredMonitor>>,
    invalid: BTreeMap<String, String>,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Assign { .. } => "Assign",
            Command::Unassign(_) => "Unassign",
        }
    }
}

/// The planner's collectors: the live ones that are not draining (or
/// otherwise closed) and whose declared weight and labels are within
/// bounds (one out of range in etcd gets no monitors; it still holds what
/// it runs).
pub fn slots(
    collectors: &BTreeMap<CollectorId, LiveCollector>,
    draining: &BTreeSet<CollectorId>,
) -> Vec<CollectorSlot> {
    collectors
        .iter()
        .filter(|(id, _)| !draining.contains(*id))
        .filter(|(id, c)| match c.record.check() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(collector = %id, "not planning on a collector whose record is out of bounds: {e}");
                false
            }
        })
        .map(|(id, c)| CollectorSlot { id: id.clone(), weight: c.record.weight, labels: c.record.labels.clone() })
        .collect()
}

/// The planner's monitors: each one's placement constraints.
pub fn placements(monitors: &BTreeMap<MonitorId, Arc<StoredMonitor>>) -> BTreeMap<MonitorId, Placement> {
    monitors
        .iter()
        .map(|(m, s)| {
            let placement =
                Placement { pinned: s.spec.pinned_collector.clone(), required_labels: s.spec.collector_labels.clone() };
            (m.clone(), placement)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[(MonitorId, ())]) -> Vec<&str> {
        list.iter().map(|(m, _)| m.as_str()).collect()
    }

    #[test]
    fn failovers_go_first_and_the_rest_starts_from_a_moving_point() {
        let make = |names: &[&str]| -> Vec<(MonitorId, ())> {
            names.iter().map(|n| (MonitorId::new(*n).expect("id"), ())).collect()
        };
        let urgent = |m: &MonitorId| m.as_str().starts_with('u');
        let mut c = make(&["a", "u1", "b", "c", "u2", "d"]);
        order_commands(&mut c, urgent, 0);
        assert_eq!(ids(&c), vec!["u1", "u2", "a", "b", "c", "d"]);
        let mut c = make(&["a", "u1", "b", "c", "u2", "d"]);
        order_commands(&mut c, urgent, 5);
        assert_eq!(ids(&c), vec!["u1", "u2", "b", "c", "d", "a"], "turn 5 of 4 others starts at the second");
        // Over as many passes as commands, every command is first once.
        let names: Vec<String> = (0..7).map(|i| format!("m{i}")).collect();
        let firsts: std::collections::BTreeSet<String> = (0..7)
            .map(|turn| {
                let mut c = make(&names.iter().map(String::as_str).collect::<Vec<_>>());
                order_commands(&mut c, urgent, turn);
                c[0].0.to_string()
            })
            .collect();
        assert_eq!(firsts.len(), 7);
        let mut empty: Vec<(MonitorId, ())> = Vec::new();
        order_commands(&mut empty, urgent, 3);
    }
}
