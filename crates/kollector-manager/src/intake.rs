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
//! Results are judged again when served ([`Intake::current`]): one whose
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kollector_core::result::StaleRule;
use kollector_core::{unix_ms, CollectorId, Generation, MonitorId, MonitorResult};
use kollector_proto::result_from_proto;
use kollector_proto::v1::{self as pb};
use prost::Message as _;
use tokio::task::JoinHandle;

use crate::cluster_store::ClusterStore;
use crate::decisions::{accept_result, AssignmentRecord};
use crate::reconciler::CollectorClients;

/// Largest offset history kept for a handover, encoded.
const MAX_HISTORY_BYTES: usize = 4 * 1024 * 1024;

/// How often the intake re-reads assignments and collectors.
const REFRESH: Duration = Duration::from_millis(500);

/// What the intake judges results against.
#[derive(Default)]
struct Current {
    records: BTreeMap<MonitorId, AssignmentRecord>,
    generations: BTreeMap<MonitorId, Generation>,
    read_at: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    latest: RwLock<BTreeMap<MonitorId, MonitorResult>>,
    /// The latest offset history each monitor's owner sent (every few
    /// cycles), kept across owners: the reconciler hands it to the next
    /// owner with the Assign. Passed through as it came, never interpreted.
    histories: RwLock<BTreeMap<MonitorId, Arc<pb::MonitorHistory>>>,
    current: RwLock<Current>,
    stale_dropped: AtomicU64,
    /// One refresh at a time: a slow one must not overwrite a newer one.
    refreshing: tokio::sync::Mutex<()>,
    stale_rule: StaleRule,
}

/// A handle to the intake's results; cheap to clone.
#[derive(Clone, Default)]
pub struct Intake {
    shared: Arc<Shared>,
}

/// Whether an accepted result still belongs to the monitor's current owner,
/// epoch and generation.
fn still_current(r: &MonitorResult, record: Option<&AssignmentRecord>, generation: Option<Generation>) -> bool {
    r.collector.as_ref().is_some_and(|c| accept_result(c, r.epoch, r.generation, record, generation).is_ok())
}

async fn refresh(store: &ClusterStore, shared: &Shared) {
    let Ok(_one) = shared.refreshing.try_lock() else {
        // Another refresh is reading now; its answer is at least as new.
        let _wait = shared.refreshing.lock().await;
        return;
    };
    let (Ok((records, _)), Ok(monitors)) = (store.assignments().await, store.monitors().await) else { return };
    let generations = monitors.valid.iter().map(|(m, s)| (m.clone(), s.spec.generation)).collect();
    if let Ok(mut latest) = shared.latest.write() {
        // Forget results of monitors that no longer exist, of older specs and of earlier owners.
        latest.retain(|m, r| still_current(r, records.get(m), monitors.valid.get(m).map(|s| s.spec.generation)));
    }
    if let Ok(mut histories) = shared.histories.write() {
        histories.retain(|m, _| monitors.valid.contains_key(m));
    }
    if let Ok(mut cur) = shared.current.write() {
        *cur = Current { records, generations, read_at: Some(Instant::now()) };
    }
}

impl Intake {
    /// Starts following collectors and assignments in the background.
    pub fn start(store: ClusterStore, clients: CollectorClients, stale_rule: StaleRule) -> (Intake, JoinHandle<()>) {
        let intake = Intake { shared: Arc::new(Shared { stale_rule, ..Shared::default() }) };
        let shared = intake.shared.clone();
        let task = tokio::spawn(async move {
            let mut streams: HashMap<CollectorId, (String, JoinHandle<()>)> = HashMap::new();
            loop {
                refresh(&store, &shared).await;
                if let Ok(collectors) = store.collectors().await {
                    // Followers run no reconciler: forget clients of collectors gone.
                    clients.retain(
                        &collectors.iter().map(|(id, c)| (id.clone(), c.record.grpc_address.clone())).collect(),
                    );
                    streams.retain(|id, (addr, task)| {
                        let keep =
                            collectors.get(id).is_some_and(|c| &c.record.grpc_address == addr) && !task.is_finished();
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for (id, c) in collectors {
                        if streams.contains_key(&id) {
                            continue;
                        }
                        let address = c.record.grpc_address;
                        let task = tokio::spawn(follow(
                            id.clone(),
                            address.clone(),
                            clients.clone(),
                            store.clone(),
                            shared.clone(),
                        ));
                        streams.insert(id, (address, task));
                    }
                }
                tokio::time::sleep(REFRESH).await;
            }
        });
        (intake, task)
    }

    /// The latest results that are still current against the given
    /// generations and records, read from etcd by the caller just now: a
    /// result of an older spec (e.g. of a deleted monitor whose id was
    /// re-created) or of an earlier owner (the monitor moved; the new owner
    /// has not reported yet) is never served; one whose owner is overdue is
    /// served as `Stale` ([`StaleRule::judge`]).
    pub fn current(
        &self,
        generations: &BTreeMap<MonitorId, Generation>,
        records: &BTreeMap<MonitorId, AssignmentRecord>,
    ) -> Vec<MonitorResult> {
        let Ok(latest) = self.shared.latest.read() else { return Vec::new() };
        let (rule, now) = (self.shared.stale_rule, unix_ms());
        latest
            .values()
            .filter(|r| still_current(r, records.get(&r.monitor), generations.get(&r.monitor).copied()))
            .map(|r| rule.judge(r.clone(), now))
            .collect()
    }

    /// The latest offset history `monitor`'s owner sent, for its next owner.
    pub fn history(&self, monitor: &MonitorId) -> Option<Arc<pb::MonitorHistory>> {
        self.shared.histories.read().ok()?.get(monitor).cloned()
    }

    pub fn stale_dropped(&self) -> u64 {
        self.shared.stale_dropped.load(Ordering::Relaxed)
    }
}

/// Follows one collector's result stream until it ends.
async fn follow(id: CollectorId, address: String, clients: CollectorClients, store: ClusterStore, shared: Arc<Shared>) {
    let Ok(mut client) = clients.get(&id, &address) else { return };
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
        let result = match result_from_proto(message, Some(id.clone())) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(collector = %id, "dropped an unreadable result: {e}");
                continue;
            }
        };
        let judge = |shared: &Shared| {
            let cur = shared.current.read().ok()?;
            Some(accept_result(
                &id,
                result.epoch,
                result.generation,
                cur.records.get(&result.monitor),
                cur.generations.get(&result.monitor).copied(),
            ))
        };
        let mut verdict = judge(&shared);
        // A result newer than what we read (a move or an update we have not
        // seen yet): read again, at most once per refresh period, then judge.
        let newer = shared.current.read().ok().is_some_and(|cur| {
            cur.records.get(&result.monitor).is_none_or(|r| result.epoch > r.epoch)
                || cur.generations.get(&result.monitor).is_none_or(|g| result.generation > *g)
        });
        let recently = shared.current.read().ok().and_then(|c| c.read_at).is_some_and(|t| t.elapsed() < REFRESH / 5);
        if !matches!(verdict, Some(Ok(()))) && newer && !recently {
            refresh(&store, &shared).await;
            verdict = judge(&shared);
        }
        match verdict {
            Some(Ok(())) => {
                // Only the current owner's history is believed, like its
                // results, and only within a handover's size: an honest copy
                // is at most ~2 MiB (kollector_core::history::HANDOVER_MAX_POINTS).
                match history {
                    Some(h) if h.encoded_len() > MAX_HISTORY_BYTES => {
                        tracing::warn!(monitor = %result.monitor, collector = %id, bytes = h.encoded_len(), "dropped an oversized history");
                    }
                    Some(h) => {
                        if let Ok(mut histories) = shared.histories.write() {
                            histories.insert(result.monitor.clone(), Arc::new(h));
                        }
                    }
                    None => {}
                }
                if let Ok(mut latest) = shared.latest.write() {
                    // Never replace a result of a later assignment with an earlier one.
                    if latest.get(&result.monitor).is_none_or(|old| old.epoch <= result.epoch) {
                        latest.insert(result.monitor.clone(), result);
                    }
                }
            }
            why => {
                shared.stale_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(monitor = %result.monitor, collector = %id, epoch = result.epoch, generation = result.generation, "dropped a result: {why:?}");
            }
        }
    }
}
