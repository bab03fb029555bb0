//! The latest result of every running monitor.
//!
//! Monitor actors write here after each collection; the gRPC API and
//! `/metrics` read from here, never from a live client. An entry belongs to
//! one generation of a monitor: the registry replaces it when it restarts the
//! monitor with a new spec, and a late write from the old generation is
//! refused, so a stopped monitor can never publish again.
//!
//! Readers get each entry as judged now by the node's [`StaleRule`]: an
//! entry whose actor has not published when it said it would (the actor
//! system died, a collection is stuck, the fence closed) reads as `Stale`,
//! without its snapshot, so `/metrics` never serves it as current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use kollector_core::result::StaleRule;
use kollector_core::{unix_ms, Generation, MonitorId, MonitorResult, MonitorSpec};

/// A history copy for handover, with its sequence number.
type Handover = (u64, Arc<kollector_core::history::MonitorHistory>);

/// Shared, cheaply cloneable handle to the results of all monitors.
#[derive(Clone, Debug)]
pub struct ResultStore {
    inner: Arc<RwLock<HashMap<MonitorId, MonitorResult>>>,
    /// Histories of monitors not running now (between a stop and a start,
    /// or loaded from disk): a new actor for the monitor continues them.
    histories: Arc<RwLock<HashMap<MonitorId, kollector_core::history::MonitorHistory>>>,
    /// A recent copy of each running monitor's history, with a sequence
    /// number, for collectors' result streams to hand to the managers.
    handover: Arc<RwLock<HashMap<MonitorId, Handover>>>,
    /// The labels of each running monitor's spec (for discovery targets).
    labels: Arc<RwLock<HashMap<MonitorId, std::collections::BTreeMap<String, String>>>>,
    /// Announces every change of an entry (for result streams).
    changes: tokio::sync::broadcast::Sender<MonitorId>,
    /// The stale rule's interval count (set once at start by the node).
    stale_after: Arc<AtomicU32>,
}

impl Default for ResultStore {
    fn default() -> Self {
        ResultStore {
            inner: Arc::default(),
            histories: Arc::default(),
            handover: Arc::default(),
            labels: Arc::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
            stale_after: Arc::new(AtomicU32::new(StaleRule::DEFAULT_INTERVALS)),
        }
    }
}

impl ResultStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rule readers' entries are judged by (default: 3 intervals).
    pub fn set_stale_rule(&self, rule: StaleRule) {
        self.stale_after.store(rule.intervals(), Ordering::Relaxed);
    }

    fn stale_rule(&self) -> StaleRule {
        StaleRule::new(self.stale_after.load(Ordering::Relaxed)).unwrap_or_default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<MonitorId, MonitorResult>> {
        // A poisoned lock only means a writer panicked mid-update of plain data; keep serving.
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<MonitorId, MonitorResult>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a fresh entry for `spec` (status Starting), keeping the
    /// counters of an earlier generation of the same monitor.
    pub(crate) fn open(&self, spec: &MonitorSpec) {
        let mut map = self.write();
        let mut fresh = MonitorResult::starting(spec.id.clone(), spec.generation, spec.expected_cluster_id.clone());
        // The first attempt comes at the first tick, one interval in.
        let first = spec.interval + spec.timeout;
        fresh.next_result_due_ms = unix_ms().saturating_add(u64::try_from(first.as_millis()).unwrap_or(u64::MAX));
        fresh.interval_ms = u64::try_from(spec.interval.as_millis()).unwrap_or(u64::MAX);
        if let Some(p) = map.remove(&spec.id) {
            fresh.collections_total = p.collections_total;
            fresh.errors_total = p.errors_total;
            fresh.restarts_total = p.restarts_total;
        }
        map.insert(spec.id.clone(), fresh);
        drop(map);
        self.labels.write().unwrap_or_else(|p| p.into_inner()).insert(spec.id.clone(), spec.labels.clone());
    }

    /// Keeps `id`'s history until its next actor starts (or to be saved).
    pub fn put_history(&self, id: &MonitorId, history: kollector_core::history::MonitorHistory) {
        self.histories.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), history);
    }

    /// Keeps `history` for `id`'s next actor unless the one kept already
    /// reaches later (this node's own, from a run here that ended after
    /// the other owner last reported).
    pub fn offer_history(&self, id: &MonitorId, history: kollector_core::history::MonitorHistory) {
        let mut map = self.histories.write().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_none_or(|kept| kept.last_seen_ms() < history.last_seen_ms()) {
            map.insert(id.clone(), history);
        }
    }

    /// Hands `id`'s kept history to its new actor.
    pub fn take_history(&self, id: &MonitorId) -> Option<kollector_core::history::MonitorHistory> {
        self.histories.write().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    /// Forgets `id`'s history (the monitor was deleted or moved away).
    pub fn forget_history(&self, id: &MonitorId) {
        self.histories.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Every kept history (after a shutdown: every monitor's).
    pub fn histories(&self) -> Vec<(MonitorId, kollector_core::history::MonitorHistory)> {
        self.histories.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Publishes a copy of `id`'s history for handover (cluster mode);
    /// result streams send it once with the monitor's next result.
    pub fn offer_handover(&self, id: &MonitorId, history: kollector_core::history::MonitorHistory) {
        let mut map = self.handover.write().unwrap_or_else(|p| p.into_inner());
        let seq = map.get(id).map_or(1, |(s, _)| s + 1);
        map.insert(id.clone(), (seq, Arc::new(history)));
    }

    /// `id`'s latest history for handover and its sequence number.
    pub fn handover(&self, id: &MonitorId) -> Option<Handover> {
        self.handover.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The labels of `id`'s spec (empty if it does not run here).
    pub fn labels(&self, id: &MonitorId) -> std::collections::BTreeMap<String, String> {
        self.labels.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned().unwrap_or_default()
    }

    /// Removes a monitor's entry: its series disappear from `/metrics`.
    pub(crate) fn remove(&self, id: &MonitorId) {
        self.write().remove(id);
        self.handover.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.labels.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Applies `f` to the entry of `id` if it still belongs to `generation`.
    /// Returns false (and changes nothing) for a stale writer.
    pub(crate) fn update(&self, id: &MonitorId, generation: Generation, f: impl FnOnce(&mut MonitorResult)) -> bool {
        let updated = {
            let mut map = self.write();
            match map.get_mut(id) {
                Some(e) if e.generation == generation => {
                    f(e);
                    true
                }
                _ => false,
            }
        };
        if updated {
            // No subscribers is fine: nobody is streaming results.
            let _ = self.changes.send(id.clone());
        }
        updated
    }

    /// Ids of entries as they change, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MonitorId> {
        self.changes.subscribe()
    }

    /// `id`'s entry as judged now (stale when overdue).
    pub fn get(&self, id: &MonitorId) -> Option<MonitorResult> {
        let (rule, now) = (self.stale_rule(), unix_ms());
        self.read().get(id).cloned().map(|r| rule.judge(r, now))
    }

    /// All entries as judged now, sorted by monitor id.
    pub fn all(&self) -> Vec<MonitorResult> {
        let (rule, now) = (self.stale_rule(), unix_ms());
        let mut v: Vec<MonitorResult> = self.read().values().cloned().map(|r| rule.judge(r, now)).collect();
        v.sort_by(|a, b| a.monitor.cmp(&b.monitor));
        v
    }

    /// Ids of all entries, sorted.
    pub fn ids(&self) -> Vec<MonitorId> {
        let mut v: Vec<MonitorId> = self.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use kollector_core::{MonitorInput, MonitorState};

    use super::*;

    /// The store's read path judges entries: one whose actor never
    /// publishes (dead, stuck) reads `Starting` until its first result is
    /// overdue past the bound, then `Stale`; and never before.
    #[test]
    fn an_entry_nobody_updates_turns_stale_once_overdue() {
        let input = MonitorInput {
            id: "m".into(),
            bootstrap: vec!["127.0.0.1:9".into()],
            interval: Some("1s".into()),
            timeout: Some("100ms".into()),
            ..Default::default()
        };
        let spec = input.validate(1).expect("valid spec");
        let store = ResultStore::new();
        store.set_stale_rule(StaleRule::new(2).unwrap());
        let opened = Instant::now();
        store.open(&spec);
        // Due 1.1 s after opening, stale after one more interval: 2.1 s.
        let deadline = opened + Duration::from_secs(5);
        let stale_at = loop {
            let state = store.get(&spec.id).expect("entry").status.state;
            if state == MonitorState::Stale {
                break opened.elapsed();
            }
            assert!(Instant::now() < deadline, "never judged stale");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(stale_at >= Duration::from_millis(2100), "stale after only {stale_at:?}");
        assert!(store.get(&spec.id).unwrap().current_snapshot().is_none());
        assert_eq!(store.all()[0].status.state, MonitorState::Stale, "all() judges like get()");

        // A fresh publish makes it current again.
        store.update(&spec.id, spec.generation, |e| {
            e.status.state = MonitorState::Running;
            e.next_result_due_ms = unix_ms() + 60_000;
        });
        assert_eq!(store.get(&spec.id).unwrap().status.state, MonitorState::Running);
    }
}
