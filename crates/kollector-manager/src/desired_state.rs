//! Where desired state lives: the first of the ManagerService's two seams.
//!
//! The service (`service.rs`) validates and merges requests the same way in
//! both modes, then stores the result through [`DesiredState`]:
//! - [`EmbeddedStore`] in standalone mode: a map in memory, saved to the
//!   state file (`state_file.rs`) before any change is acknowledged;
//! - `ClusterView` in cluster mode: etcd, with compare-and-swap, read
//!   through the manager's watched view (`cluster_view.rs`).
//!
//! Both give a monitor's **generation** the same meaning: the store's
//! revision at the spec's latest write. It only grows, across updates and
//! across a delete followed by a re-create of the same id, so neither a
//! collector nor a result can mistake a new spec for an old one.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;

use kollector_coordination::CoordinationError;
use kollector_core::{Generation, MonitorId, MonitorSpec};

use crate::state_file::{Saved, StateError, StateFile};

#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("etcd: {0}")]
    Etcd(#[from] CoordinationError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Secret(#[from] kollector_security::SealError),
}

/// Every monitor: those that can be read, and why the others cannot.
#[derive(Clone, Debug, Default)]
pub struct DesiredSet {
    pub monitors: BTreeMap<MonitorId, MonitorSpec>,
    /// Monitor id → why its stored value could not be read (skipped).
    pub invalid: BTreeMap<String, String>,
    /// Monitors whose stored secrets are sealed with another key than this
    /// node's first (etcd: the leader re-seals them after a rotation; the
    /// embedded store does not track it and says 0).
    pub secrets_on_old_keys: usize,
}

/// Desired monitors, by id, with compare-and-swap writes.
pub trait DesiredState: Send + Sync + 'static {
    /// A monitor as stored, its `generation` set.
    fn get(&self, id: &MonitorId) -> impl Future<Output = Result<Option<MonitorSpec>, DesiredError>> + Send;
    fn list(&self) -> impl Future<Output = Result<DesiredSet, DesiredError>> + Send;
    /// At most `limit` monitors with ids after `after`, in id order;
    /// `invalid` and `secrets_on_old_keys` describe every monitor.
    fn page(
        &self,
        after: Option<&MonitorId>,
        limit: usize,
    ) -> impl Future<Output = Result<DesiredSet, DesiredError>> + Send;
    /// Stores a new monitor; its generation, or None if the id is taken.
    fn create(&self, spec: &MonitorSpec) -> impl Future<Output = Result<Option<Generation>, DesiredError>> + Send;
    /// Replaces a monitor if it is still at `expected`; its new generation,
    /// or None if it changed (or vanished) meanwhile.
    fn replace(
        &self,
        spec: &MonitorSpec,
        expected: Generation,
    ) -> impl Future<Output = Result<Option<Generation>, DesiredError>> + Send;
    /// Deletes a monitor; the generation it had, or None if it did not exist.
    fn delete(&self, id: &MonitorId) -> impl Future<Output = Result<Option<Generation>, DesiredError>> + Send;
}

/// Standalone mode's desired state: in memory, saved to a state file (if
/// any) before a change takes effect. Writes are serialized by a lock held
/// only for the write itself (a small file, flushed: milliseconds).
///
/// Monitors of the config file are applied at every start and not saved:
/// the file manages them (for their ids the file wins; an API change to one
/// lasts until the next start; removing one from the file stops it).
/// Monitors created through the API are saved, and survive restarts.
pub struct EmbeddedStore {
    inner: Mutex<Embedded>,
    file: Option<StateFile>,
}

struct Embedded {
    revision: u64,
    monitors: BTreeMap<MonitorId, MonitorSpec>,
    /// Ids the config file defines (not saved).
    from_config: BTreeSet<MonitorId>,
}

impl EmbeddedStore {
    /// In memory only (the demo): `monitors` as given.
    pub fn in_memory(monitors: Vec<MonitorSpec>) -> Self {
        let revision = monitors.iter().map(|s| s.generation).max().unwrap_or(0);
        let from_config = monitors.iter().map(|s| s.id.clone()).collect();
        EmbeddedStore {
            inner: Mutex::new(Embedded {
                revision,
                monitors: monitors.into_iter().map(|s| (s.id.clone(), s)).collect(),
                from_config,
            }),
            file: None,
        }
    }

    /// The saved monitors with the config file's on top (it wins for its
    /// ids), each config monitor at a fresh generation; saved at once.
    pub fn open(config: Vec<MonitorSpec>, file: StateFile, saved: Saved) -> Result<Self, DesiredError> {
        let mut revision = saved.revision.max(saved.monitors.iter().map(|s| s.generation).max().unwrap_or(0));
        let mut monitors: BTreeMap<MonitorId, MonitorSpec> =
            saved.monitors.into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut from_config = BTreeSet::new();
        for spec in config {
            revision += 1;
            from_config.insert(spec.id.clone());
            monitors.insert(spec.id.clone(), MonitorSpec { generation: revision, ..spec });
        }
        let store = EmbeddedStore { inner: Mutex::new(Embedded { revision, monitors, from_config }), file: Some(file) };
        {
            let inner = store.lock();
            store.persist(&inner)?;
        }
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Embedded> {
        // Plain data; a writer that panicked left it whole (changes are swapped in after saving).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves the API-made monitors and the revision.
    fn persist(&self, state: &Embedded) -> Result<(), DesiredError> {
        let Some(f) = &self.file else { return Ok(()) };
        let saved: Vec<MonitorSpec> =
            state.monitors.values().filter(|s| !state.from_config.contains(&s.id)).cloned().collect();
        Ok(f.save(state.revision, &saved)?)
    }

    /// Applies `change` to a copy, saves it, then makes it current.
    fn write<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<MonitorId, MonitorSpec>, &mut BTreeSet<MonitorId>, u64) -> Option<T>,
    ) -> Result<Option<T>, DesiredError> {
        let mut inner = self.lock();
        let mut next = Embedded {
            revision: inner.revision + 1,
            monitors: inner.monitors.clone(),
            from_config: inner.from_config.clone(),
        };
        let Some(out) = change(&mut next.monitors, &mut next.from_config, next.revision) else { return Ok(None) };
        // The save flushes to disk: on a multi-thread runtime, tell tokio so
        // that other tasks move off this worker meanwhile.
        let save = || self.persist(&next);
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(save)
            }
            _ => save(),
        }?;
        *inner = next;
        Ok(Some(out))
    }
}

impl DesiredState for EmbeddedStore {
    async fn get(&self, id: &MonitorId) -> Result<Option<MonitorSpec>, DesiredError> {
        Ok(self.lock().monitors.get(id).cloned())
    }

    async fn list(&self) -> Result<DesiredSet, DesiredError> {
        Ok(DesiredSet { monitors: self.lock().monitors.clone(), invalid: BTreeMap::new(), secrets_on_old_keys: 0 })
    }

    async fn page(&self, after: Option<&MonitorId>, limit: usize) -> Result<DesiredSet, DesiredError> {
        let inner = self.lock();
        let monitors = page_of(&inner.monitors, after, limit).map(|(m, s)| (m.clone(), s.clone())).collect();
        Ok(DesiredSet { monitors, invalid: BTreeMap::new(), secrets_on_old_keys: 0 })
    }

    async fn create(&self, spec: &MonitorSpec) -> Result<Option<Generation>, DesiredError> {
        self.write(|all, from_config, revision| {
            if all.contains_key(&spec.id) {
                return None;
            }
            // Made through the API now (even if the config file once had it).
            from_config.remove(&spec.id);
            all.insert(spec.id.clone(), MonitorSpec { generation: revision, ..spec.clone() });
            Some(revision)
        })
    }

    async fn replace(&self, spec: &MonitorSpec, expected: Generation) -> Result<Option<Generation>, DesiredError> {
        self.write(|all, _, revision| {
            if all.get(&spec.id).map(|s| s.generation) != Some(expected) {
                return None;
            }
            all.insert(spec.id.clone(), MonitorSpec { generation: revision, ..spec.clone() });
            Some(revision)
        })
    }

    async fn delete(&self, id: &MonitorId) -> Result<Option<Generation>, DesiredError> {
        self.write(|all, _, _| all.remove(id).map(|s| s.generation))
    }
}

/// The entries of `map` after `after` (all if None), at most `limit`.
pub fn page_of<'a, V>(
    map: &'a BTreeMap<MonitorId, V>,
    after: Option<&MonitorId>,
    limit: usize,
) -> impl Iterator<Item = (&'a MonitorId, &'a V)> {
    use std::ops::Bound;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    map.range::<MonitorId, _>((from, Bound::Unbounded)).take(limit)
}

/// How long a reader waits for the view to catch up with etcd, or a writer
/// for the view to show its write.
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn view_error(e: crate::cluster_view::ViewError) -> DesiredError {
    DesiredError::Etcd(CoordinationError::Etcd(e.to_string()))
}

impl crate::cluster_view::ClusterView {
    /// Waits until the view shows a write at `revision`. The write is
    /// stored either way: a view that does not catch up in time is logged,
    /// not reported as a failed write (the caller would retry a done change).
    async fn shown(&self, revision: i64) {
        if let Err(e) = self.wait_for(revision, VIEW_WAIT).await {
            tracing::warn!(revision, "a write is stored, but this manager's view does not show it yet: {e}");
        }
    }
}

/// Cluster mode: writes go to etcd (compare-and-swap); reads come from the
/// watched view, after it caught up with etcd (one small read), so a read
/// sees every write acknowledged before it, as a read of etcd would; a
/// write answers once the view shows it.
impl DesiredState for crate::cluster_view::ClusterView {
    async fn get(&self, id: &MonitorId) -> Result<Option<MonitorSpec>, DesiredError> {
        self.sync(VIEW_WAIT).await.map_err(view_error)?;
        self.read(|v| v.monitors.get(id).map(|m| m.spec.clone())).map_err(view_error)
    }

    async fn list(&self) -> Result<DesiredSet, DesiredError> {
        self.sync(VIEW_WAIT).await.map_err(view_error)?;
        self.read(|v| DesiredSet {
            monitors: v.monitors.iter().map(|(m, s)| (m.clone(), s.spec.clone())).collect(),
            invalid: v.invalid_monitors.clone(),
            secrets_on_old_keys: v.monitors.values().filter(|m| m.needs_reseal).count(),
        })
        .map_err(view_error)
    }

    async fn page(&self, after: Option<&MonitorId>, limit: usize) -> Result<DesiredSet, DesiredError> {
        self.sync(VIEW_WAIT).await.map_err(view_error)?;
        self.read(|v| DesiredSet {
            monitors: page_of(&v.monitors, after, limit).map(|(m, s)| (m.clone(), s.spec.clone())).collect(),
            invalid: v.invalid_monitors.clone(),
            secrets_on_old_keys: v.monitors.values().filter(|m| m.needs_reseal).count(),
        })
        .map_err(view_error)
    }

    async fn create(&self, spec: &MonitorSpec) -> Result<Option<Generation>, DesiredError> {
        let written = self.store().create_monitor(&self.store().seal(spec)?).await?;
        if let Some(g) = written {
            self.shown(g as i64).await;
        }
        Ok(written)
    }

    async fn replace(&self, spec: &MonitorSpec, expected: Generation) -> Result<Option<Generation>, DesiredError> {
        let written = self.store().update_monitor(&self.store().seal(spec)?, expected as i64).await?;
        if let Some(g) = written {
            self.shown(g as i64).await;
        }
        Ok(written)
    }

    async fn delete(&self, id: &MonitorId) -> Result<Option<Generation>, DesiredError> {
        let Some((generation, revision)) = self.store().delete_monitor(id).await? else { return Ok(None) };
        self.shown(revision).await;
        Ok(Some(generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kollector_core::MonitorInput;

    fn spec(id: &str) -> MonitorSpec {
        MonitorInput { id: id.into(), bootstrap: vec!["h:1".into()], ..Default::default() }.validate(1).unwrap()
    }

    #[tokio::test]
    async fn generations_only_grow_and_writes_are_compare_and_swap() {
        let store = EmbeddedStore::in_memory(Vec::new());
        let a = spec("a");
        let g1 = store.create(&a).await.unwrap().unwrap();
        assert_eq!(store.create(&a).await.unwrap(), None, "the id is taken");
        let g2 = store.replace(&a, g1).await.unwrap().unwrap();
        assert!(g2 > g1);
        assert_eq!(store.replace(&a, g1).await.unwrap(), None, "a stale expected generation is refused");
        assert_eq!(store.delete(&a.id).await.unwrap(), Some(g2));
        assert_eq!(store.delete(&a.id).await.unwrap(), None);
        let g3 = store.create(&a).await.unwrap().unwrap();
        assert!(g3 > g2, "a re-created id never goes back to an older generation");
        assert_eq!(store.get(&a.id).await.unwrap().unwrap().generation, g3);
    }

    #[tokio::test]
    async fn only_api_monitors_are_saved_and_the_config_wins_for_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let (file, saved) = StateFile::open(&path, None).unwrap();
        let store = EmbeddedStore::open(vec![spec("file")], file, saved).unwrap();
        store.create(&spec("api")).await.unwrap().unwrap();
        let mut changed = spec("file");
        changed.interval = std::time::Duration::from_secs(9);
        let g = store.get(&changed.id).await.unwrap().unwrap().generation;
        store.replace(&changed, g).await.unwrap().unwrap();
        drop(store);
        let (file, saved) = StateFile::open(&path, None).unwrap();
        assert_eq!(saved.monitors.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["api"]);
        let before = saved.revision;
        // The next start: the config file without "file" stops it; "api" stays.
        let store = EmbeddedStore::open(Vec::new(), file, saved).unwrap();
        let all = store.list().await.unwrap().monitors;
        assert_eq!(all.keys().map(|m| m.as_str()).collect::<Vec<_>>(), vec!["api"]);
        let g = store.create(&spec("later")).await.unwrap().unwrap();
        assert!(g > before, "generations keep growing across restarts");
    }
}
