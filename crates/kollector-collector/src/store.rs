//! The latest result of every running monitor.
//!
//! Monitor actors write here after each collection; the gRPC API and
//! `/metrics` read from here, never from a live client. An entry belongs to
//! one generation of a monitor: the registry replaces it when it restarts the
//! monitor with a new spec, and a late write from the old generation is
//! refused, so a stopped monitor can never publish again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kollector_core::{Generation, MonitorId, MonitorResult, MonitorSpec};

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
}

impl Default for ResultStore {
    fn default() -> Self {
        ResultStore {
            inner: Arc::default(),
            histories: Arc::default(),
            handover: Arc::default(),
            labels: Arc::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl ResultStore {
    pub fn new() -> Self {
        Self::default()
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

    pub fn get(&self, id: &MonitorId) -> Option<MonitorResult> {
        self.read().get(id).cloned()
    }

    /// All entries, sorted by monitor id.
    pub fn all(&self) -> Vec<MonitorResult> {
        let mut v: Vec<MonitorResult> = self.read().values().cloned().collect();
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
