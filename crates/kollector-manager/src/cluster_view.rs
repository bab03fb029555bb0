//! The manager's one watched view of etcd: monitor specs, assignment
//! records, live collectors, drain marks and revocation marks, kept in
//! memory from an etcd watch.
//!
//! Why: polling re-read everything (every spec, every record) twice a
//! second per manager, and again for every pass, scrape and GetMonitor; at
//! 100,000 monitors that is a hundred MB/s from etcd per manager and seconds
//! of CPU per scan, with lease keepalives queued behind it. A watch sends
//! each change once. So the view lists the prefix once (at start, after a
//! compaction or an error), then follows a watch resumed from the listing's
//! revision; each value is decoded once per write (a spec's regexes
//! compiled and its secrets opened once), never per read.
//!
//! Every reader (the reconciler, the intake, the ManagerService, `/sd`,
//! `/metrics`) reads this view. Writes still go to etcd with
//! compare-and-swap; whoever must see a write (its own, or every write
//! before a moment) waits for the view to reach that revision:
//! [`ClusterView::wait_for`] for a known revision, [`ClusterView::sync`]
//! for "everything etcd holds now" (one small read for etcd's revision, then
//! a watch progress request if no event carries the view there).
//!
//! Two numbers move: the revision the view has applied (for waiters) and a
//! count of applied changes (for those driven by changes: the reconciler,
//! the intake). Only event batches and listings move the count, so writes
//! outside the prefix, which move etcd's revision, start no work. A
//! progress answer the view asked for moves the revision only after
//! `PROGRESS_SETTLE`: etcd before 3.4.24 and 3.5.8 may send it ahead of
//! events still in flight (etcd#15220), so it is trusted once they have had
//! their chance; etcd's periodic progress notices, sent only to a watch that
//! is caught up, count at once.
//!
//! A view that lost its watch is not live: reads fail (UNAVAILABLE) rather
//! than serve what may be old. A half-open connection is caught by asking
//! for progress when the watch has been quiet and giving up when even that
//! is not answered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use kollector_coordination::keys::Keys;
use kollector_coordination::membership::CollectorRecord;
use kollector_core::{CollectorId, MonitorId};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster_store::{ClusterStore, LiveCollector, StoredMonitor};
use crate::decisions::{AssignmentRecord, AssignmentValue};

/// A quiet watch is asked for progress this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// A watch that sends nothing for this long, progress asked for, is dead.
const SILENT_WATCH: Duration = Duration::from_secs(7);
/// Longest wait between attempts to list and watch again.
const MAX_RETRY: Duration = Duration::from_secs(2);
/// How long a requested progress answer waits before it counts.
const PROGRESS_SETTLE: Duration = Duration::from_millis(200);
/// A waiter that is behind asks for progress again this often.
const PROGRESS_AGAIN: Duration = Duration::from_millis(150);
/// Largest watch message accepted (a batch of large specs).
const MAX_WATCH_MESSAGE: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("the manager's view of etcd is not live: {0}")]
    NotLive(String),
    #[error("the manager's view of etcd did not reach revision {wanted} within {within:?} (at {at})")]
    Behind { wanted: i64, at: i64, within: Duration },
    #[error("etcd: {0}")]
    Etcd(String),
}

/// The revocation mark's value.
#[derive(serde::Deserialize)]
struct RevocationMark {
    lease: i64,
}

/// One key-value as etcd sent it.
pub struct Kv<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub mod_revision: i64,
    pub lease: i64,
}

/// What the view holds (as of [`ClusterView::revision`]).
#[derive(Debug, Default, Clone)]
pub struct ViewState {
    /// Event batches and listings applied since start: moves with every
    /// change of the view, and only then.
    pub changes: u64,
    pub monitors: BTreeMap<MonitorId, Arc<StoredMonitor>>,
    /// Monitor id (from the key) → why its value could not be read.
    pub invalid_monitors: BTreeMap<String, String>,
    pub collectors: BTreeMap<CollectorId, LiveCollector>,
    /// Live collectors whose record does not decode, with their leases.
    pub unreadable_collectors: BTreeMap<CollectorId, i64>,
    pub assignments: BTreeMap<MonitorId, AssignmentRecord>,
    /// Record id → why it could not be read.
    pub invalid_assignments: BTreeMap<String, String>,
    pub draining: BTreeSet<CollectorId>,
    /// Revocation marks in force: collector → the lease revoked (0: unknown).
    pub revoked: BTreeMap<CollectorId, i64>,
}

/// Decodes a monitor's value (`ClusterStore::decode_monitor` in a node).
pub type MonitorDecoder<'a> = &'a dyn Fn(&Kv<'_>) -> Result<StoredMonitor, String>;

impl ViewState {
    /// Applies a put. Pure: what each directory's values mean.
    /// Returns whether the key is one the view keeps (others, such as the
    /// election's, are no change to it).
    pub fn put(&mut self, keys: &Keys, kv: &Kv<'_>, decode_monitor: MonitorDecoder<'_>) -> bool {
        let (monitors, assignments, collectors) = (keys.monitors(), keys.assignments(), keys.collectors());
        let (draining, revoked) = (keys.draining(), keys.revoked());
        if let Some(id) = keys.id_in(&monitors, kv.key) {
            let (id, parsed) = (id.to_string(), MonitorId::new(id));
            match (decode_monitor(kv), parsed) {
                (Ok(m), Ok(mid)) => {
                    self.invalid_monitors.remove(&id);
                    self.monitors.insert(mid, Arc::new(m));
                }
                (Err(why), parsed) => {
                    if let Ok(mid) = parsed {
                        self.monitors.remove(&mid);
                    }
                    self.invalid_monitors.insert(id, why);
                }
                (Ok(_), Err(e)) => {
                    self.invalid_monitors.insert(id, e.to_string());
                }
            }
        } else if let Some(id) = keys.id_in(&assignments, kv.key) {
            let Ok(mid) = MonitorId::new(id) else { return false };
            match serde_json::from_slice::<AssignmentValue>(kv.value) {
                Ok(v) => {
                    self.invalid_assignments.remove(id);
                    self.assignments.insert(mid, AssignmentRecord::written(&v, kv.mod_revision as u64));
                }
                Err(e) => {
                    self.assignments.remove(&mid);
                    self.invalid_assignments.insert(id.to_string(), e.to_string());
                }
            }
        } else if let Some(id) = keys.id_in(&collectors, kv.key) {
            let Ok(cid) = CollectorId::new(id) else { return false };
            match serde_json::from_slice::<CollectorRecord>(kv.value) {
                Ok(record) => {
                    self.unreadable_collectors.remove(&cid);
                    self.collectors.insert(cid, LiveCollector { record, lease: kv.lease });
                }
                Err(e) => {
                    tracing::warn!("collector key {} does not decode ({e}); treating it as alive but silent", kv.key);
                    self.collectors.remove(&cid);
                    self.unreadable_collectors.insert(cid, kv.lease);
                }
            }
        } else if let Some(id) = keys.id_in(&draining, kv.key) {
            if let Ok(cid) = CollectorId::new(id) {
                self.draining.insert(cid);
            }
        } else if let Some(id) = keys.id_in(&revoked, kv.key) {
            if let Ok(cid) = CollectorId::new(id) {
                // A mark that does not decode still marks: its lease is unknown (0).
                let lease = serde_json::from_slice::<RevocationMark>(kv.value).map_or(0, |m| m.lease);
                self.revoked.insert(cid, lease);
            }
        } else {
            return false;
        }
        true
    }

    /// Applies a delete; whether the key is one the view keeps.
    pub fn delete(&mut self, keys: &Keys, key: &str) -> bool {
        if let Some(id) = keys.id_in(&keys.monitors(), key) {
            self.invalid_monitors.remove(id);
            if let Ok(mid) = MonitorId::new(id) {
                self.monitors.remove(&mid);
            }
        } else if let Some(id) = keys.id_in(&keys.assignments(), key) {
            self.invalid_assignments.remove(id);
            if let Ok(mid) = MonitorId::new(id) {
                self.assignments.remove(&mid);
            }
        } else if let Some(id) = keys.id_in(&keys.collectors(), key) {
            if let Ok(cid) = CollectorId::new(id) {
                self.collectors.remove(&cid);
                self.unreadable_collectors.remove(&cid);
            }
        } else if let Some(id) = keys.id_in(&keys.draining(), key) {
            if let Ok(cid) = CollectorId::new(id) {
                self.draining.remove(&cid);
            }
        } else if let Some(id) = keys.id_in(&keys.revoked(), key) {
            if let Ok(cid) = CollectorId::new(id) {
                self.revoked.remove(&cid);
            }
        } else {
            return false;
        }
        true
    }

    /// Monitor id → its spec's generation.
    pub fn generations(&self) -> BTreeMap<MonitorId, kollector_core::Generation> {
        self.monitors.iter().map(|(m, s)| (m.clone(), s.spec.generation)).collect()
    }
}

struct Shared {
    store: ClusterStore,
    /// The watch's own connection: no request timeout (a watch is one long
    /// call), and only to a member with a leader, so a watch on a member cut
    /// off from the quorum is cancelled instead of going quiet while live.
    watch_client: etcd_client::Client,
    state: RwLock<ViewState>,
    /// The revision applied so far (what waiters wait on).
    applied: watch::Sender<i64>,
    /// `ViewState::changes`, for those driven by changes.
    changed: watch::Sender<u64>,
    /// None while live; otherwise why not.
    down: RwLock<Option<String>>,
    /// Someone waits for a revision no event may bring: ask for progress.
    want_progress: Notify,
    relists: AtomicU64,
    events: AtomicU64,
}

/// A handle to the view; cheap to clone.
#[derive(Clone)]
pub struct ClusterView {
    shared: Arc<Shared>,
}

impl ClusterView {
    /// Starts listing `store`'s prefix and watching it over `watch_client`
    /// (from `kollector_coordination::lease::connect_for_blocking_calls`)
    /// in the background.
    pub fn start(store: ClusterStore, watch_client: etcd_client::Client) -> (ClusterView, JoinHandle<()>) {
        let (applied, _) = watch::channel(0);
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store,
            watch_client,
            state: RwLock::new(ViewState::default()),
            applied,
            changed,
            down: RwLock::new(Some("not listed yet".into())),
            want_progress: Notify::new(),
            relists: AtomicU64::new(0),
            events: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(shared.clone()));
        (ClusterView { shared }, task)
    }

    pub fn store(&self) -> &ClusterStore {
        &self.shared.store
    }

    /// Why the view is not live, if it is not.
    pub fn down(&self) -> Option<String> {
        self.shared.down.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the view (only while it is live).
    pub fn read<T>(&self, f: impl FnOnce(&ViewState) -> T) -> Result<T, ViewError> {
        if let Some(why) = self.down() {
            return Err(ViewError::NotLive(why));
        }
        Ok(f(&self.shared.state.read().unwrap_or_else(|p| p.into_inner())))
    }

    /// The revision applied so far.
    pub fn revision(&self) -> i64 {
        *self.shared.applied.borrow()
    }

    /// The count of changes applied (`ViewState::changes`): moves with every
    /// applied event batch and listing, for those driven by changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// (lists, events applied) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.relists.load(Ordering::Relaxed), self.shared.events.load(Ordering::Relaxed))
    }

    /// Waits until the view is live and has applied `revision`.
    pub async fn wait_for(&self, revision: i64, within: Duration) -> Result<(), ViewError> {
        let deadline = Instant::now() + within;
        let mut applied = self.shared.applied.subscribe();
        let mut first = true;
        loop {
            let at = *applied.borrow_and_update();
            if at >= revision {
                return match self.down() {
                    None => Ok(()),
                    Some(why) => Err(ViewError::NotLive(why)),
                };
            }
            // No event in the prefix may come to carry the view there (the
            // revision was another prefix's write): ask for progress once
            // the events in flight had their chance, and again while behind
            // (an answer may come from a member that lags).
            let nudge = tokio::time::sleep(if first { Duration::from_millis(20) } else { PROGRESS_AGAIN });
            tokio::select! {
                changed = applied.changed() => if changed.is_err() {
                    return Err(ViewError::NotLive("the view stopped".into()));
                },
                _ = nudge => {
                    first = false;
                    self.shared.want_progress.notify_one();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(why) = self.down() {
                        return Err(ViewError::NotLive(why));
                    }
                    return Err(ViewError::Behind { wanted: revision, at, within });
                }
            }
        }
    }

    /// Waits until the view holds everything etcd held when this was
    /// called: one small read for etcd's revision, then [`Self::wait_for`].
    /// Returns that revision.
    pub async fn sync(&self, within: Duration) -> Result<i64, ViewError> {
        let deadline = Instant::now() + within;
        let read = tokio::time::timeout_at(deadline, self.shared.store.current_revision());
        let revision = match read.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(ViewError::Etcd(e.to_string())),
            Err(_) => return Err(ViewError::Etcd(format!("no answer within {within:?}"))),
        };
        self.wait_for(revision, deadline.saturating_duration_since(Instant::now())).await?;
        Ok(revision)
    }
}

fn set_down(shared: &Shared, why: Option<String>) {
    *shared.down.write().unwrap_or_else(|p| p.into_inner()) = why;
}

/// Lists and watches until stopped; after an error, marks the view down and
/// starts again with a fresh listing.
async fn run(shared: Arc<Shared>) {
    /// Marks the view down however this task ends (a panic included), so
    /// readers never take a frozen view for a live one.
    struct DownWhenGone(Arc<Shared>);
    impl Drop for DownWhenGone {
        fn drop(&mut self) {
            set_down(&self.0, Some("the view's task ended".into()));
        }
    }
    let _guard = DownWhenGone(shared.clone());
    let mut retry = Duration::from_millis(100);
    loop {
        let listed_before = shared.relists.load(Ordering::Relaxed);
        let why = follow(&shared).await;
        tracing::warn!("etcd watch lost ({why}); listing again");
        set_down(&shared, Some(why));
        // A watch that was followed starts the next attempt afresh.
        if shared.relists.load(Ordering::Relaxed) > listed_before {
            retry = Duration::from_millis(100);
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// One listing and the watch after it; returns why it stopped.
async fn follow(shared: &Shared) -> String {
    let store = &shared.store;
    let keys = store.keys().clone();
    let prefix = keys.root();
    let (kvs, listed_at) = match store.list(&prefix).await {
        Ok(x) => x,
        Err(e) => return format!("listing {prefix}: {e}"),
    };
    let decode = |kv: &Kv<'_>| store.decode_monitor(kv);
    let mut fresh = ViewState::default();
    for kv in &kvs {
        let key = String::from_utf8_lossy(kv.key());
        fresh.put(
            &keys,
            &Kv { key: &key, value: kv.value(), mod_revision: kv.mod_revision(), lease: kv.lease() },
            &decode,
        );
    }
    drop(kvs);
    let mut client = shared.watch_client.watch_client().max_decoding_message_size(MAX_WATCH_MESSAGE);
    let options = WatchOptions::new().with_prefix().with_start_revision(listed_at + 1).with_progress_notify();
    let stream = match client.watch(prefix.clone(), Some(options)).await {
        Ok(s) => s,
        Err(e) => return format!("watching {prefix}: {e}"),
    };
    {
        let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
        fresh.changes = state.changes + 1;
        *state = fresh;
    }
    shared.relists.fetch_add(1, Ordering::Relaxed);
    set_down(shared, None);
    shared.applied.send_replace(listed_at);
    shared.changed.send_modify(|n| *n += 1);
    tracing::info!(revision = listed_at, "etcd view listed; following changes");

    let (mut requests, mut responses) = stream.split();
    let mut heard = Instant::now();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A requested progress answer's revision and when it may count; and
    // the newest answer that came meanwhile, with when it came: a running
    // deadline is never pushed back (answers every 150 ms would otherwise
    // keep any from counting).
    let mut settling: Option<(i64, Instant)> = None;
    let mut next_settling: Option<(i64, Instant)> = None;
    loop {
        let settle_at = settling.map(|(_, at)| at);
        tokio::select! {
            message = responses.message() => {
                let r = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => return "the watch stream ended".into(),
                    Err(e) => return format!("the watch failed: {e}"),
                };
                heard = Instant::now();
                if r.compact_revision() > 0 {
                    return format!("etcd compacted past the view (to {})", r.compact_revision());
                }
                if r.canceled() {
                    return format!("etcd cancelled the watch: {}", r.cancel_reason());
                }
                let events = r.events();
                if events.is_empty() {
                    // The creation answer is no progress (events before its
                    // revision may still follow).
                    if r.created() {
                        continue;
                    }
                    let revision = r.header().map_or(0, |h| h.revision());
                    if r.watch_id() == -1 {
                        // Asked for: may overtake events in flight (see above).
                        match settling {
                            None => settling = Some((revision, Instant::now() + PROGRESS_SETTLE)),
                            Some((r, _)) if r < revision => {
                                if next_settling.is_none_or(|(n, _)| n < revision) {
                                    next_settling = Some((revision, Instant::now()));
                                }
                            }
                            Some(_) => {}
                        }
                    } else {
                        advance(shared, revision);
                    }
                    continue;
                }
                let (through, changed) = {
                    let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
                    let (mut through, mut changed) = (0, false);
                    for ev in events {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        changed |= match ev.event_type() {
                            EventType::Put => state.put(
                                &keys,
                                &Kv { key: &key, value: kv.value(), mod_revision: kv.mod_revision(), lease: kv.lease() },
                                &decode,
                            ),
                            EventType::Delete => state.delete(&keys, &key),
                        };
                        through = through.max(kv.mod_revision());
                    }
                    // Keys the view does not keep (the election's) change nothing.
                    if changed {
                        state.changes += 1;
                    }
                    (through, changed)
                };
                shared.events.fetch_add(events.len() as u64, Ordering::Relaxed);
                advance(shared, through);
                if changed {
                    shared.changed.send_modify(|n| *n += 1);
                }
            }
            _ = async { if let Some(at) = settle_at { tokio::time::sleep_until(at).await } }, if settle_at.is_some() => {
                if let Some((revision, _)) = settling.take() {
                    advance(shared, revision);
                }
                settling = next_settling.take().map(|(r, came)| (r, came + PROGRESS_SETTLE));
            }
            _ = shared.want_progress.notified() => {
                if let Err(e) = requests.request_progress().await {
                    return format!("asking the watch for progress: {e}");
                }
            }
            _ = tick.tick() => {
                if heard.elapsed() >= SILENT_WATCH {
                    return format!("the watch sent nothing for {:?}, progress asked for", heard.elapsed());
                }
                if heard.elapsed() >= PROGRESS_EVERY {
                    if let Err(e) = requests.request_progress().await {
                        return format!("asking the watch for progress: {e}");
                    }
                }
            }
        }
    }
}

/// Every event up to `revision` is applied: waiters may go on.
fn advance(shared: &Shared, revision: i64) {
    if revision > *shared.applied.borrow() {
        shared.applied.send_replace(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kollector_core::MonitorInput;

    fn decoder(kv: &Kv<'_>) -> Result<StoredMonitor, String> {
        let input: MonitorInput = serde_json::from_slice(kv.value).map_err(|e| e.to_string())?;
        let mut spec = input.validate(kv.mod_revision as u64).map_err(|e| e.to_string())?;
        spec.generation = kv.mod_revision as u64;
        Ok(StoredMonitor { spec, mod_revision: kv.mod_revision, needs_reseal: false })
    }

    fn kv<'a>(key: &'a str, value: &'a [u8], rev: i64) -> Kv<'a> {
        Kv { key, value, mod_revision: rev, lease: 7 }
    }

    #[test]
    fn each_directory_is_read_into_its_part_and_deletes_remove_it() {
        let keys = Keys::new("/k");
        let mut s = ViewState::default();
        let spec = br#"{"id":"m1","bootstrap":["h:1"]}"#;
        s.put(&keys, &kv("/k/monitors/m1", spec, 5), &decoder);
        s.put(&keys, &kv("/k/monitors/bad", b"{", 6), &decoder);
        s.put(&keys, &kv("/k/assignments/m1", br#"{"collector":"c1"}"#, 8), &decoder);
        s.put(
            &keys,
            &kv("/k/collectors/c1", br#"{"grpc_address":"a","http_address":"b","weight":1.0,"version":"v"}"#, 9),
            &decoder,
        );
        s.put(&keys, &kv("/k/collectors/c2", b"nonsense", 9), &decoder);
        s.put(&keys, &kv("/k/draining/c1", b"1", 10), &decoder);
        s.put(&keys, &kv("/k/revoked/c2", br#"{"lease":42}"#, 11), &decoder);
        s.put(&keys, &kv("/k/monitors/deeper/x", spec, 12), &decoder);
        s.put(&keys, &kv("/k2/monitors/m9", spec, 12), &decoder);
        let m1 = MonitorId::new("m1").unwrap();
        let (c1, c2) = (CollectorId::new("c1").unwrap(), CollectorId::new("c2").unwrap());
        assert_eq!(s.monitors.keys().map(|m| m.as_str()).collect::<Vec<_>>(), vec!["m1"]);
        assert_eq!(s.monitors[&m1].spec.generation, 5);
        assert!(s.invalid_monitors.contains_key("bad"));
        assert_eq!(s.assignments[&m1].collector.as_ref(), Some(&c1));
        assert_eq!(s.assignments[&m1].epoch, 8, "a record's epoch is its write's revision");
        assert_eq!(s.collectors[&c1].lease, 7);
        assert_eq!(s.unreadable_collectors.get(&c2), Some(&7), "alive but unreadable");
        assert!(s.draining.contains(&c1));
        assert_eq!(s.revoked.get(&c2), Some(&42));

        // A bad value replacing a good one makes it invalid, and back.
        s.put(&keys, &kv("/k/monitors/m1", b"[]", 13), &decoder);
        assert!(!s.monitors.contains_key(&m1) && s.invalid_monitors.contains_key("m1"));
        s.put(&keys, &kv("/k/monitors/m1", spec, 14), &decoder);
        assert!(s.monitors.contains_key(&m1) && !s.invalid_monitors.contains_key("m1"));
        assert_eq!(s.generations()[&m1], 14);

        for key in [
            "/k/monitors/m1",
            "/k/monitors/bad",
            "/k/assignments/m1",
            "/k/collectors/c1",
            "/k/collectors/c2",
            "/k/draining/c1",
            "/k/revoked/c2",
        ] {
            s.delete(&keys, key);
        }
        assert!(s.monitors.is_empty() && s.invalid_monitors.is_empty() && s.assignments.is_empty());
        assert!(s.collectors.is_empty() && s.unreadable_collectors.is_empty());
        assert!(s.draining.is_empty() && s.revoked.is_empty());
    }
}
