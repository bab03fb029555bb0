//! Results intake: the latest result of every monitor, cluster-wide.
//!
//! Every manager (leader or standby) subscribes to every live collector's
//! `StreamResults`, so any of them can answer GetLatest and serve the
//! cluster-wide `/metrics`. A result is believed only if
//! `decisions::accept_result` says so: it came **on the stream of** the
//! collector that owns the monitor now (the collector id inside the message
//! is ignored), and was collected under the current assignment epoch and the
//! current spec generation. Anything else (a fenced or paused former owner
//! still talking, an old spec's last cycle) is dropped and counted.
//!
//! What it judges against (records, specs, collectors) comes from the
//! manager's watched view of etcd (`cluster_view.rs`); a result newer than
//! the view (a move or an update not seen yet) waits for the view to reach
//! its revision, briefly, instead of re-reading etcd.
//!
//! Latest results and offset histories (for handovers) are kept as the
//! encoded bytes that came, under a total cap each, and decoded only when
//! served: at 100,000 monitors a decoded snapshot costs several times its
//! encoding, and most are never read before the next one replaces them.
//!
//! Results are judged again when served ([`Intake::current_of`]): one whose
//! owner's next result is overdue past the stale bound (the collector cut
//! off from this manager, its actors dead, its stream gone) is `Stale`,
//! without its snapshot: GetLatest, `monitor show`, `status` and `/metrics`
//! never present it as current. The due time travels relative to the
//! sending moment, so clock skew between nodes does not move the bound.
//!
//! Streams use the cluster's transport limits (message size, HTTP/2
//! keepalive), so a half-open connection ends the stream instead of hanging
//! it, and a stream that ends is followed again on the next round.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kollector_core::result::StaleRule;
use kollector_core::{unix_ms, CollectorId, Epoch, Generation, MonitorId, MonitorResult};
use kollector_proto::result_from_proto;
use kollector_proto::v1::{self as pb};
use prost::Message as _;
use tokio::task::JoinHandle;

use crate::cluster_view::{ClusterView, ViewState};
use crate::decisions::{accept_result, AssignmentRecord};
use crate::reconciler::CollectorClients;

/// Largest offset history kept for a handover, encoded.
const MAX_HISTORY_BYTES: usize = 4 * 1024 * 1024;

/// Total bytes of histories kept (all monitors): beyond it a new history is
/// dropped (counted), so a manager's memory stays bounded whatever the
/// number of monitors. An honest history is ~2 MiB at most, most far less.
pub const HISTORIES_CAP_BYTES: usize = 1024 * 1024 * 1024;

/// Total bytes of latest results kept: beyond it a new result of a monitor
/// not yet kept is dropped (counted). ~1 KB each for a small cluster's.
pub const LATEST_CAP_BYTES: usize = 2 * 1024 * 1024 * 1024;

/// How often the intake checks its streams against the view's collectors.
const REFRESH: Duration = Duration::from_millis(500);

/// How often results of monitors gone, of older specs or of earlier owners
/// are forgotten. Only memory waits for it: serving judges every result
/// against the view anyway.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// How long a result newer than the view waits for the view.
const NEWER_WAIT: Duration = Duration::from_secs(1);

/// A monitor's latest result as it came (without its history), with what
/// it is judged by. Cheap to clone (the bytes are shared).
#[derive(Clone)]
struct Latest {
    collector: CollectorId,
    epoch: Epoch,
    generation: Generation,
    /// Unix ms it came at: its relative due time counts from then.
    received_ms: u64,
    bytes: bytes::Bytes,
}

impl Latest {
    /// The result, decoded for serving; None (and a warning) if it does not decode.
    fn decode(&self, monitor: &MonitorId) -> Option<MonitorResult> {
        let mut p = match pb::MonitorResult::decode(self.bytes.clone()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(monitor = %monitor, "a kept result does not decode: {e}");
                return None;
            }
        };
        // Due times travel relative to the moment of sending: take off the
        // time since it came.
        let since = unix_ms().saturating_sub(self.received_ms) as i64;
        p.next_result_in_ms = p.next_result_in_ms.map(|d| d.saturating_sub(since));
        match result_from_proto(p, Some(self.collector.clone())) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(monitor = %monitor, collector = %self.collector, "a kept result cannot be read: {e}");
                None
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    latest: RwLock<BTreeMap<MonitorId, Latest>>,
    latest_bytes: AtomicUsize,
    latest_dropped: AtomicU64,
    /// The latest offset history each monitor's owner sent (every few
    /// cycles), kept across owners, encoded: the reconciler hands it to the
    /// next owner with the Assign. Passed through as it came, never interpreted.
    histories: RwLock<BTreeMap<MonitorId, bytes::Bytes>>,
    history_bytes: AtomicUsize,
    histories_dropped: AtomicU64,
    stale_dropped: AtomicU64,
    stale_rule: StaleRule,
}

/// Results judged current, not decoded yet.
#[derive(Default)]
pub struct Current {
    kept: Vec<(MonitorId, Latest)>,
    rule: StaleRule,
}

impl Current {
    /// The results, decoded; one whose owner is overdue is served as
    /// `Stale` ([`StaleRule::judge`]).
    pub fn served(self) -> Vec<MonitorResult> {
        let now = unix_ms();
        self.kept.into_iter().filter_map(|(m, r)| r.decode(&m)).map(|r| self.rule.judge(r, now)).collect()
    }

    pub fn monitors(&self) -> impl Iterator<Item = &MonitorId> {
        self.kept.iter().map(|(m, _)| m)
    }
}

/// A handle to the intake's results; cheap to clone.
#[derive(Clone, Default)]
pub struct Intake {
    shared: Arc<Shared>,
}

/// Whether an accepted result still belongs to the monitor's current owner,
/// epoch and generation.
fn still_current(r: &Latest, record: Option<&AssignmentRecord>, generation: Option<Generation>) -> bool {
    accept_result(&r.collector, r.epoch, r.generation, record, generation).is_ok()
}

/// Forgets results of monitors that no longer exist, of older specs and of
/// earlier owners, and histories of monitors gone.
fn prune(shared: &Shared, v: &ViewState) {
    if let Ok(mut latest) = shared.latest.write() {
        latest.retain(|m, r| {
            let keep = still_current(r, v.assignments.get(m), v.monitors.get(m).map(|s| s.spec.generation));
            if !keep {
                shared.latest_bytes.fetch_sub(r.bytes.len(), Ordering::Relaxed);
            }
            keep
        });
    }
    if let Ok(mut histories) = shared.histories.write() {
        histories.retain(|m, h| {
            let keep = v.monitors.contains_key(m);
            if !keep {
                shared.history_bytes.fetch_sub(h.len(), Ordering::Relaxed);
            }
            keep
        });
    }
}

impl Intake {
    /// Starts following collectors' result streams in the background, as
    /// the view names them.
    pub fn start(view: ClusterView, clients: CollectorClients, stale_rule: StaleRule) -> (Intake, JoinHandle<()>) {
        let intake = Intake { shared: Arc::new(Shared { stale_rule, ..Shared::default() }) };
        let shared = intake.shared.clone();
        let task = tokio::spawn(async move {
            let mut streams: HashMap<CollectorId, (String, JoinHandle<()>)> = HashMap::new();
            let mut pruned_at = tokio::time::Instant::now();
            loop {
                let collectors = view.read(|v| {
                    if pruned_at.elapsed() >= PRUNE_EVERY {
                        pruned_at = tokio::time::Instant::now();
                        prune(&shared, v);
                    }
                    v.collectors.iter().map(|(id, c)| (id.clone(), c.record.grpc_address.clone())).collect()
                });
                if let Ok(collectors) = collectors {
                    let collectors: BTreeMap<CollectorId, String> = collectors;
                    // Followers run no reconciler: forget clients of collectors gone.
                    clients.retain(&collectors.iter().map(|(id, a)| (id.clone(), a.clone())).collect());
                    streams.retain(|id, (addr, task)| {
                        let keep = collectors.get(id).is_some_and(|a| a == addr) && !task.is_finished();
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for (id, address) in collectors {
                        if streams.contains_key(&id) {
                            continue;
                        }
                        let task = tokio::spawn(follow(
                            id.clone(),
                            address.clone(),
                            clients.clone(),
                            view.clone(),
                            shared.clone(),
                        ));
                        streams.insert(id, (address, task));
                    }
                }
                // Every REFRESH: a new collector's stream, or one that
                // ended, is followed within it (the view is read in memory).
                tokio::time::sleep(REFRESH).await;
            }
        });
        (intake, task)
    }

    /// The latest results of the monitors `ids` that are still current
    /// against the view `v`: a result of an older spec (e.g. of a deleted
    /// monitor whose id was re-created) or of an earlier owner (the monitor
    /// moved; the new owner has not reported yet) is never served. They are
    /// copied out (shared bytes), to be decoded with [`Current::served`] once
    /// the locks are released.
    pub fn current_of<'a>(&self, v: &ViewState, ids: impl Iterator<Item = &'a MonitorId>) -> Current {
        let Ok(latest) = self.shared.latest.read() else { return Current::default() };
        self.current(v, ids.filter_map(|m| latest.get_key_value(m)))
    }

    /// [`Self::current_of`] every monitor.
    pub fn current_all(&self, v: &ViewState) -> Current {
        let Ok(latest) = self.shared.latest.read() else { return Current::default() };
        self.current(v, latest.iter())
    }

    fn current<'a>(&self, v: &ViewState, kept: impl Iterator<Item = (&'a MonitorId, &'a Latest)>) -> Current {
        let kept = kept
            .filter(|(m, r)| still_current(r, v.assignments.get(*m), v.monitors.get(*m).map(|s| s.spec.generation)))
            .map(|(m, r)| (m.clone(), r.clone()))
            .collect();
        Current { kept, rule: self.shared.stale_rule }
    }

    /// The latest offset history `monitor`'s owner sent, for its next owner.
    pub fn history(&self, monitor: &MonitorId) -> Option<pb::MonitorHistory> {
        let bytes = self.shared.histories.read().ok()?.get(monitor).cloned()?;
        pb::MonitorHistory::decode(bytes).ok()
    }

    pub fn stale_dropped(&self) -> u64 {
        self.shared.stale_dropped.load(Ordering::Relaxed)
    }

    /// (results kept, their bytes, results dropped at the cap).
    pub fn latest_counts(&self) -> (usize, usize, u64) {
        let kept = self.shared.latest.read().map(|l| l.len()).unwrap_or(0);
        (kept, self.shared.latest_bytes.load(Ordering::Relaxed), self.shared.latest_dropped.load(Ordering::Relaxed))
    }

    /// Keeps `latest` as `monitor`'s result unless one of a later
    /// assignment is kept, within the cap.
    fn keep_latest(&self, monitor: MonitorId, latest: Latest) {
        let Ok(mut all) = self.shared.latest.write() else { return };
        // Never replace a result of a later assignment with an earlier one.
        let old = match all.get(&monitor) {
            Some(old) if old.epoch > latest.epoch => return,
            Some(old) => old.bytes.len(),
            None => 0,
        };
        let total = self.shared.latest_bytes.load(Ordering::Relaxed);
        if total - old + latest.bytes.len() > LATEST_CAP_BYTES {
            self.shared.latest_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(monitor = %monitor, total, "dropped a result: the manager keeps at most {LATEST_CAP_BYTES} bytes of them");
            return;
        }
        self.shared.latest_bytes.store(total - old + latest.bytes.len(), Ordering::Relaxed);
        all.insert(monitor, latest);
    }

    /// (histories kept, their bytes, histories dropped at the cap).
    pub fn history_counts(&self) -> (usize, usize, u64) {
        let kept = self.shared.histories.read().map(|h| h.len()).unwrap_or(0);
        (kept, self.shared.history_bytes.load(Ordering::Relaxed), self.shared.histories_dropped.load(Ordering::Relaxed))
    }

    /// Keeps `history` for `monitor` if the total stays within the cap.
    fn keep_history(&self, monitor: &MonitorId, history: pb::MonitorHistory) {
        let bytes = bytes::Bytes::from(history.encode_to_vec());
        let Ok(mut histories) = self.shared.histories.write() else { return };
        let old = histories.get(monitor).map_or(0, |h| h.len());
        let total = self.shared.history_bytes.load(Ordering::Relaxed);
        if total - old + bytes.len() > HISTORIES_CAP_BYTES {
            self.shared.histories_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(monitor = %monitor, total, "dropped a history: the manager keeps at most {HISTORIES_CAP_BYTES} bytes of them");
            return;
        }
        self.shared.history_bytes.store(total - old + bytes.len(), Ordering::Relaxed);
        histories.insert(monitor.clone(), bytes);
    }
}

/// Follows one collector's result stream until it ends.
async fn follow(id: CollectorId, address: String, clients: CollectorClients, view: ClusterView, shared: Arc<Shared>) {
    let Ok(mut client) = clients.get(&id, &address) else { return };
    // The view's revision when a wait for it last ran out: while it stays
    // there, results ahead of the view do not wait again (after a restore
    // without --bump-revision every epoch is ahead, for good).
    let mut waited_in_vain: Option<i64> = None;
    let mut stream = match client.stream_results(pb::StreamResultsRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            tracing::debug!(collector = %id, "results stream unavailable: {}", e.message());
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    loop {
        let mut message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(collector = %id, "results stream ended: {}", e.message());
                return;
            }
        };
        // The collector is the stream's, never the message's claim; a message
        // that claims another collector means another process answers at this
        // address: stop following it.
        if message.collector_id != id.as_str() {
            tracing::warn!(collector = %id, answered = %message.collector_id, "results stream answered by another collector; dropped");
            return;
        }
        let history = message.history.take();
        let Ok(monitor) = MonitorId::new(message.monitor_id.clone()) else {
            tracing::warn!(collector = %id, "dropped a result with an invalid monitor id");
            continue;
        };
        let (epoch, generation) = (message.epoch, message.generation);
        let judge = || {
            view.read(|v| {
                accept_result(
                    &id,
                    epoch,
                    generation,
                    v.assignments.get(&monitor),
                    v.monitors.get(&monitor).map(|s| s.spec.generation),
                )
            })
            .ok()
        };
        let mut verdict = judge();
        // A result newer than the view (a move or an update it has not
        // shown yet: epochs and generations are etcd revisions): wait for
        // the view to reach it, briefly, then judge again.
        let newest = (epoch as i64).max(generation as i64);
        let at = view.revision();
        let worth_waiting = view.down().is_none() && waited_in_vain != Some(at);
        if !matches!(verdict, Some(Ok(()))) && newest > at && worth_waiting {
            if view.wait_for(newest, NEWER_WAIT).await.is_err() {
                waited_in_vain = Some(view.revision());
            }
            verdict = judge();
        }
        match verdict {
            Some(Ok(())) => {
                let intake = Intake { shared: shared.clone() };
                // Only the current owner's history is believed, like its
                // results, and only within a handover's size: an honest copy
                // is at most ~2 MiB (kollector_core::history::HANDOVER_MAX_POINTS).
                match history {
                    Some(h) if h.encoded_len() > MAX_HISTORY_BYTES => {
                        tracing::warn!(monitor = %monitor, collector = %id, bytes = h.encoded_len(), "dropped an oversized history");
                    }
                    Some(h) => intake.keep_history(&monitor, h),
                    None => {}
                }
                let latest = Latest {
                    collector: id.clone(),
                    epoch,
                    generation,
                    received_ms: unix_ms(),
                    bytes: bytes::Bytes::from(message.encode_to_vec()),
                };
                intake.keep_latest(monitor, latest);
            }
            why => {
                shared.stale_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(monitor = %monitor, collector = %id, epoch, generation, "dropped a result: {why:?}");
            }
        }
    }
}
