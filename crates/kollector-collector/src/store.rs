//! The latest result of every running monitor.
//!
//! Monitor actors write here after each collection; the gRPC API and
//! `/metrics` read from here, never from a live client. An entry belongs to
//! one generation of a monitor: the registry replaces it when it restarts the
//! monitor with a new spec, and a late write from the old generation is
//! refused, so a stopped monitor can never publish again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kollector_core::{
    CollectError, ErrorKind, Generation, MonitorId, MonitorSpec, MonitorState, MonitorStatus, Snapshot,
};

/// What is known about one running monitor.
#[derive(Clone, Debug)]
pub struct MonitorEntry {
    pub spec: Arc<MonitorSpec>,
    pub status: MonitorStatus,
    /// The last successful snapshot of this generation.
    pub last_snapshot: Option<Arc<Snapshot>>,
    /// The error of the latest attempt, if it failed.
    pub last_error: Option<CollectError>,
    /// Unix ms of the latest attempt (success or failure).
    pub attempted_at_ms: u64,
    /// Unix ms of the latest success.
    pub last_success_ms: Option<u64>,
    /// Counters kept across generations of the same monitor.
    pub collections_total: u64,
    pub errors_total: BTreeMap<ErrorKind, u64>,
    pub restarts_total: u64,
}

impl MonitorEntry {
    /// The snapshot to publish as current: only when the latest attempt succeeded.
    pub fn current_snapshot(&self) -> Option<&Arc<Snapshot>> {
        if self.last_error.is_none() {
            self.last_snapshot.as_ref()
        } else {
            None
        }
    }
}

/// Shared, cheaply cloneable handle to the results of all monitors.
#[derive(Clone, Debug)]
pub struct ResultStore {
    inner: Arc<RwLock<HashMap<MonitorId, MonitorEntry>>>,
    /// Announces every change of an entry (for result streams).
    changes: tokio::sync::broadcast::Sender<MonitorId>,
}

impl Default for ResultStore {
    fn default() -> Self {
        ResultStore { inner: Arc::default(), changes: tokio::sync::broadcast::channel(1024).0 }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl ResultStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<MonitorId, MonitorEntry>> {
        // A poisoned lock only means a writer panicked mid-update of plain data; keep serving.
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<MonitorId, MonitorEntry>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a fresh entry for `spec` (status Starting), keeping the
    /// counters of an earlier generation of the same monitor.
    pub(crate) fn open(&self, spec: Arc<MonitorSpec>) {
        let mut map = self.write();
        let previous = map.remove(&spec.id);
        let (collections_total, errors_total, restarts_total) =
            previous.map(|p| (p.collections_total, p.errors_total, p.restarts_total)).unwrap_or_default();
        map.insert(
            spec.id.clone(),
            MonitorEntry {
                status: MonitorStatus {
                    state: MonitorState::Starting,
                    reason: None,
                    consecutive_failures: 0,
                    restarts: 0,
                    pinned_cluster_id: spec.expected_cluster_id.clone(),
                },
                spec,
                last_snapshot: None,
                last_error: None,
                attempted_at_ms: 0,
                last_success_ms: None,
                collections_total,
                errors_total,
                restarts_total,
            },
        );
    }

    /// Removes a monitor's entry: its series disappear from `/metrics`.
    pub(crate) fn remove(&self, id: &MonitorId) {
        self.write().remove(id);
    }

    /// Applies `f` to the entry of `id` if it still belongs to `generation`.
    /// Returns false (and changes nothing) for a stale writer.
    pub(crate) fn update(&self, id: &MonitorId, generation: Generation, f: impl FnOnce(&mut MonitorEntry)) -> bool {
        let updated = {
            let mut map = self.write();
            match map.get_mut(id) {
                Some(e) if e.spec.generation == generation => {
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

    pub fn get(&self, id: &MonitorId) -> Option<MonitorEntry> {
        self.read().get(id).cloned()
    }

    /// All entries, sorted by monitor id.
    pub fn all(&self) -> Vec<MonitorEntry> {
        let mut v: Vec<MonitorEntry> = self.read().values().cloned().collect();
        v.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
