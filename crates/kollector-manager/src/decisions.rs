//! The reconciler's decisions, as pure functions: no etcd, no gRPC, no clock.
//!
//! A pass of the leader's reconciler (see `reconciler.rs`) reads the cluster,
//! asks these functions what to do, and carries their answers out:
//!
//! 1. [`assignment_changes`]: which assignment records to write, given the
//!    plan, the records in etcd, the live collectors and the releases
//!    confirmed so far;
//! 2. [`chunk_writes`]: the writes split so that every etcd transaction
//!    stays within etcd's limits (128 operations, 1.5 MiB per request);
//! 3. [`unassign_actions`]: which collectors must stop which monitors;
//! 4. [`assign_actions`]: which monitors may start where now, and which
//!    moves must wait (and why);
//! 5. [`accept_result`]: whether the manager believes a result.
//!
//! **Exactly one owner.** An assignment record names the collector that
//! should run the monitor and the set of collectors that *may still* run it
//! (`releasing`): earlier owners that have not yet confirmed an Unassign at
//! the record's epoch. A collector leaves that set only when it confirms
//! (its Unassign answered, which happens after its Kafka client closed) or
//! when its lease is gone (it fenced itself before the lease could expire).
//! The new owner gets its Assign only once the set is empty of live,
//! unconfirmed collectors, and only if no other live collector reports
//! running the monitor. A slow but alive old owner therefore keeps the
//! monitor, and the move waits, visibly, in the record.
//!
//! **Epochs.** A record's epoch is the etcd revision at which its owner was
//! set; writes that only shrink `releasing` keep it, so the owner's results
//! stay current while the move finishes.

use std::collections::{BTreeMap, BTreeSet};

use kollector_core::{CollectorId, Epoch, Generation, MonitorId};
use serde::{Deserialize, Serialize};

/// An assignment record as stored in etcd (`<prefix>/assignments/<monitor>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentValue {
    /// Who should run the monitor; None while no collector can take it or
    /// after the monitor was deleted (the record stays until releases end).
    #[serde(default)]
    pub collector: Option<CollectorId>,
    /// Earlier owners that may still run it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub releasing: BTreeSet<CollectorId>,
    /// The epoch, when the write does not set a new owner; None means "the
    /// revision of this write".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// A record as read back, with its effective epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignmentRecord {
    pub collector: Option<CollectorId>,
    pub releasing: BTreeSet<CollectorId>,
    pub epoch: Epoch,
}

impl AssignmentRecord {
    /// The record after `value` was written at `revision`.
    pub fn written(value: &AssignmentValue, revision: Epoch) -> AssignmentRecord {
        AssignmentRecord {
            collector: value.collector.clone(),
            releasing: value.releasing.clone(),
            epoch: value.epoch.unwrap_or(revision),
        }
    }
}

/// One record to write: `Some` puts the value, `None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordWrite {
    pub monitor: MonitorId,
    pub value: Option<AssignmentValue>,
    /// The owner changed from one collector to another (a move, counted).
    pub moved: bool,
}

/// What one live collector said it runs this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub generation: Generation,
    pub epoch: Epoch,
    /// Being stopped: its client is not closed yet.
    pub stopping: bool,
}

/// A live collector's answer to ListRunning, or its silence. The list is
/// shared: the reconciler keeps each collector's last one between passes
/// (an unchanged list is not sent again) and hands it here uncopied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    Answered(std::sync::Arc<BTreeMap<MonitorId, Running>>),
    /// No answer in time: it may run anything it was ever given.
    Silent,
}

/// Releases confirmed: (collector, monitor) pairs whose Unassign answered.
pub type Confirmed = BTreeSet<(CollectorId, MonitorId)>;

/// Decides the record writes of a pass.
///
/// `plan` is the planner's answer, **sorted by monitor id** (a map's
/// iteration, or the planner's borrowed form); `live` the collectors whose lease is
/// alive; `confirmed` the releases confirmed since the records were written;
/// `skip` monitors whose spec could not be read (left exactly as they are).
pub fn assignment_changes<'a>(
    plan: impl IntoIterator<Item = (&'a MonitorId, &'a CollectorId)>,
    persisted: &BTreeMap<MonitorId, AssignmentRecord>,
    live: &BTreeSet<CollectorId>,
    confirmed: &Confirmed,
    skip: &BTreeSet<MonitorId>,
) -> Vec<RecordWrite> {
    let mut writes = Vec::new();
    // Walk both sorted sequences together: every id in either, once, no lookups.
    let mut a = plan.into_iter().peekable();
    let mut b = persisted.iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(x), Some(y)) => x.0.cmp(y.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
        };
        let (m, owner, old) = match order {
            std::cmp::Ordering::Equal => match (a.next(), b.next()) {
                (Some((m, c)), Some((_, r))) => (m, Some(c), Some(r)),
                _ => break,
            },
            std::cmp::Ordering::Less => match a.next() {
                Some((m, c)) => (m, Some(c), None),
                None => break,
            },
            std::cmp::Ordering::Greater => match b.next() {
                Some((m, r)) => (m, None, Some(r)),
                None => break,
            },
        };
        if skip.contains(m) {
            continue;
        }
        if let Some(w) = record_change(m, owner, old, live, confirmed) {
            writes.push(w);
        }
    }
    writes
}

/// The write one monitor's record needs, if any.
fn record_change(
    m: &MonitorId,
    owner: Option<&CollectorId>,
    old: Option<&AssignmentRecord>,
    live: &BTreeSet<CollectorId>,
    confirmed: &Confirmed,
) -> Option<RecordWrite> {
    let old_owner = old.and_then(|r| r.collector.as_ref());
    let owner_changed = old_owner != owner;
    // The steady case: same owner, nobody releasing. No allocation.
    if !owner_changed && owner.is_some() && old.is_some_and(|r| r.releasing.is_empty()) {
        return None;
    }
    let mut releasing: BTreeSet<CollectorId> = old.map(|r| r.releasing.clone()).unwrap_or_default();
    if owner_changed {
        releasing.extend(old_owner.cloned());
    }
    releasing.retain(|c| live.contains(c) && !confirmed.contains(&(c.clone(), m.clone())));
    if let Some(o) = owner {
        releasing.remove(o);
    }
    if owner.is_none() && releasing.is_empty() {
        return old.map(|_| RecordWrite { monitor: m.clone(), value: None, moved: false });
    }
    if let Some(old) = old {
        if !owner_changed && old.releasing == releasing {
            return None;
        }
    }
    let epoch = match old {
        Some(old) if !owner_changed => Some(old.epoch),
        _ => None,
    };
    Some(RecordWrite {
        monitor: m.clone(),
        moved: owner_changed && old_owner.is_some() && owner.is_some(),
        value: Some(AssignmentValue { collector: owner.cloned(), releasing, epoch }),
    })
}

/// What a monitor's owner said about it this pass.
#[derive(Clone, Copy)]
enum OwnerView<'a> {
    /// No owner, or an owner whose lease is gone.
    Gone,
    /// The owner did not answer.
    Silent,
    /// The owner answered: its entry for the monitor, if it runs it.
    Answered(Option<&'a Running>),
}

/// What one pass learned from the records and the reports together, shared
/// by [`unassign_actions`] and [`assign_actions`] (at 100,000 monitors the
/// walk is most of their cost: take it once). It keeps what it was taken
/// of, so both steps see the same records, live set and reports.
pub struct Survey<'a> {
    records: &'a BTreeMap<MonitorId, AssignmentRecord>,
    live: &'a BTreeSet<CollectorId>,
    reports: &'a BTreeMap<CollectorId, Report>,
    owners: Vec<OwnerView<'a>>,
    strays: Vec<(&'a MonitorId, &'a CollectorId, &'a Running)>,
}

/// Surveys `records` against `reports` (see [`Survey`]).
pub fn survey<'a>(
    records: &'a BTreeMap<MonitorId, AssignmentRecord>,
    live: &'a BTreeSet<CollectorId>,
    reports: &'a BTreeMap<CollectorId, Report>,
) -> Survey<'a> {
    let (owners, strays) = walk(records, live, reports);
    Survey { records, live, reports, owners, strays }
}

/// One walk over the records and every report together (all sorted by
/// monitor id, so each is read once, with a cursor per collector and no
/// per-monitor lookups): what each record's owner runs, in record order, and
/// the strays: monitors live collectors run although the records give them
/// to someone else or to nobody.
#[allow(clippy::type_complexity)]
fn walk<'a>(
    records: &'a BTreeMap<MonitorId, AssignmentRecord>,
    live: &BTreeSet<CollectorId>,
    reports: &'a BTreeMap<CollectorId, Report>,
) -> (Vec<OwnerView<'a>>, Vec<(&'a MonitorId, &'a CollectorId, &'a Running)>) {
    let mut cursors: BTreeMap<
        &CollectorId,
        std::iter::Peekable<std::collections::btree_map::Iter<'a, MonitorId, Running>>,
    > = BTreeMap::new();
    let mut silent: BTreeSet<&CollectorId> = BTreeSet::new();
    for (c, report) in reports {
        if !live.contains(c) {
            continue;
        }
        match report {
            Report::Answered(running) => {
                cursors.insert(c, running.iter().peekable());
            }
            Report::Silent => {
                silent.insert(c);
            }
        }
    }
    let mut owners = Vec::with_capacity(records.len());
    let mut strays = Vec::new();
    for (m, rec) in records {
        let view = match &rec.collector {
            Some(o) => match cursors.get_mut(o) {
                Some(cursor) => {
                    while let Some((sm, sr)) = cursor.next_if(|(k, _)| *k < m) {
                        strays.push((sm, o, sr));
                    }
                    OwnerView::Answered(cursor.next_if(|(k, _)| *k == m).map(|(_, r)| r))
                }
                // Live but no answer (or no report at all): silent.
                None if silent.contains(o) || live.contains(o) => OwnerView::Silent,
                None => OwnerView::Gone,
            },
            None => OwnerView::Gone,
        };
        owners.push(view);
    }
    for (c, cursor) in cursors {
        strays.extend(cursor.map(|(m, r)| (m, c, r)));
    }
    (owners, strays)
}

/// Limits of one etcd transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    /// etcd's `--max-txn-ops` (default 128).
    pub max_ops: usize,
    /// etcd's `--max-request-bytes` (default 1.5 MiB).
    pub max_request_bytes: usize,
}

impl Default for TxnLimits {
    fn default() -> Self {
        TxnLimits { max_ops: 128, max_request_bytes: 1536 * 1024 }
    }
}

/// Room kept in every request for the guard, the header and protobuf framing.
const REQUEST_OVERHEAD: usize = 8 * 1024;
/// Framing per operation (RequestOp, PutRequest tags and lengths), generously.
const OP_OVERHEAD: usize = 32;

/// Splits writes into chunks of at most `limits.max_ops` operations and
/// `limits.max_request_bytes` bytes, given each write's encoded size (key +
/// value). Order is kept. A single write larger than a whole request gets a
/// chunk of its own (etcd will refuse it; the others still go through).
pub fn chunk_writes<T>(writes: Vec<T>, size: impl Fn(&T) -> usize, limits: TxnLimits) -> Vec<Vec<T>> {
    let max_ops = limits.max_ops.max(1);
    let budget = limits.max_request_bytes.saturating_sub(REQUEST_OVERHEAD).max(1);
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for w in writes {
        let s = size(&w) + OP_OVERHEAD;
        if !current.is_empty() && (current.len() >= max_ops || bytes + s > budget) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += s;
        current.push(w);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// A command to stop `monitor` on `collector`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnassignAction {
    pub collector: CollectorId,
    pub monitor: MonitorId,
    pub generation: Generation,
    pub epoch: Epoch,
}

/// Who must stop what: every live collector that reports running a monitor
/// it does not own, and every live collector still in a record's
/// `releasing` set (it must confirm at the record's epoch, even if it seems
/// idle: the confirmation is what makes it refuse a delayed, older Assign).
/// Collectors that did not answer this pass get no command (it would only
/// wait out its timeout); their releases wait for a pass they answer in.
pub fn unassign_actions(
    survey: &Survey<'_>,
    generations: &BTreeMap<MonitorId, Generation>,
    skip: &BTreeSet<MonitorId>,
) -> Vec<UnassignAction> {
    let (records, live, reports) = (survey.records, survey.live, survey.reports);
    let mut out: BTreeSet<UnassignAction> = BTreeSet::new();
    let tokens = |m: &MonitorId, reported: Option<&Running>| {
        let epoch = records.get(m).map(|r| r.epoch).unwrap_or(0).max(reported.map(|r| r.epoch).unwrap_or(0));
        let generation = generations.get(m).copied().unwrap_or(0).max(reported.map(|r| r.generation).unwrap_or(0));
        (generation, epoch)
    };
    for &(m, c, r) in &survey.strays {
        if skip.contains(m) || r.stopping {
            continue;
        }
        let (generation, epoch) = tokens(m, Some(r));
        out.insert(UnassignAction { collector: c.clone(), monitor: m.clone(), generation, epoch });
    }
    for (m, rec) in records {
        if rec.releasing.is_empty() || skip.contains(m) {
            continue;
        }
        for c in rec.releasing.iter().filter(|c| live.contains(*c)) {
            let reported = match reports.get(c) {
                Some(Report::Answered(running)) => running.get(m),
                _ => continue,
            };
            if reported.is_some_and(|r| r.stopping) {
                continue; // already on its way out; confirm on a later pass
            }
            let (generation, epoch) = tokens(m, reported);
            out.insert(UnassignAction { collector: c.clone(), monitor: m.clone(), generation, epoch });
        }
    }
    out.into_iter().collect()
}

/// A command to start `monitor` on `collector`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignAction {
    pub collector: CollectorId,
    pub monitor: MonitorId,
    pub generation: Generation,
    pub epoch: Epoch,
}

/// Why a monitor is not started where it should run, yet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wait {
    /// The new owner did not answer ListRunning this pass.
    OwnerSilent(CollectorId),
    /// Its client is still closing on the owner (a restart).
    StoppingOn(CollectorId),
    /// A collector that may still run it has not confirmed its Unassign.
    NotReleasedBy(CollectorId),
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::OwnerSilent(c) => write!(f, "new owner {c} does not answer"),
            Wait::StoppingOn(c) => write!(f, "still stopping on {c}"),
            Wait::NotReleasedBy(c) => write!(f, "{c} has not confirmed it stopped"),
        }
    }
}

/// A move (or start) that waits, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub monitor: MonitorId,
    pub to: CollectorId,
    pub waiting_for: Vec<Wait>,
}

/// Which monitors may start where now, and which must wait.
///
/// `confirmed` are the releases confirmed this pass (their Unassign
/// answered); a monitor starts on its owner only if no other live collector
/// may still run it.
pub fn assign_actions(
    survey: &Survey<'_>,
    generations: &BTreeMap<MonitorId, Generation>,
    confirmed: &Confirmed,
    skip: &BTreeSet<MonitorId>,
) -> (Vec<AssignAction>, Vec<Pending>) {
    let (records, live) = (survey.records, survey.live);
    // Who else reports running a monitor: live collectors that are not its owner.
    let mut runners: BTreeMap<&MonitorId, Vec<&CollectorId>> = BTreeMap::new();
    for &(m, c, _) in &survey.strays {
        runners.entry(m).or_default().push(c);
    }
    let owners = survey.owners.iter().copied();
    let mut assigns = Vec::new();
    let mut pending = Vec::new();
    // Records and generations are both sorted by monitor: walk them together.
    let mut gens = generations.iter().peekable();
    for ((m, rec), view) in records.iter().zip(owners) {
        while gens.next_if(|(gm, _)| *gm < m).is_some() {}
        let generation = gens.next_if(|(gm, _)| *gm == m).map(|(_, g)| *g);
        if skip.contains(m) {
            continue;
        }
        let (Some(owner), Some(generation)) = (&rec.collector, generation) else { continue };
        let here = match view {
            OwnerView::Gone => continue, // the next plan moves it
            OwnerView::Silent => {
                pending.push(Pending {
                    monitor: m.clone(),
                    to: owner.clone(),
                    waiting_for: vec![Wait::OwnerSilent(owner.clone())],
                });
                continue;
            }
            OwnerView::Answered(here) => here,
        };
        if here.is_some_and(|r| !r.stopping && r.generation == generation && r.epoch == rec.epoch) {
            continue; // runs as it should
        }
        let mut waits: BTreeSet<Wait> = BTreeSet::new();
        if here.is_some_and(|r| r.stopping) {
            waits.insert(Wait::StoppingOn(owner.clone()));
        }
        let released = |c: &CollectorId| confirmed.contains(&(c.clone(), m.clone()));
        for c in rec.releasing.iter().filter(|c| live.contains(*c) && *c != owner && !released(c)) {
            waits.insert(Wait::NotReleasedBy(c.clone()));
        }
        for c in runners.get(m).into_iter().flatten() {
            if *c != owner && !released(c) {
                waits.insert(Wait::NotReleasedBy((*c).clone()));
            }
        }
        if waits.is_empty() {
            assigns.push(AssignAction { collector: owner.clone(), monitor: m.clone(), generation, epoch: rec.epoch });
        } else {
            pending.push(Pending { monitor: m.clone(), to: owner.clone(), waiting_for: waits.into_iter().collect() });
        }
    }
    (assigns, pending)
}

/// Why a result is not believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The monitor has no owner, or another one.
    NotOwner,
    /// Collected under another assignment epoch.
    StaleEpoch,
    /// Collected with another spec generation.
    StaleGeneration,
}

/// Whether the manager believes a result that arrived on `stream`'s result
/// stream: only from the current owner, collected under the current epoch
/// and with the current spec generation.
pub fn accept_result(
    stream: &CollectorId,
    result_epoch: Epoch,
    result_generation: Generation,
    record: Option<&AssignmentRecord>,
    generation: Option<Generation>,
) -> Result<(), Refusal> {
    let record = record.ok_or(Refusal::NotOwner)?;
    if record.collector.as_ref() != Some(stream) {
        return Err(Refusal::NotOwner);
    }
    if record.epoch != result_epoch {
        return Err(Refusal::StaleEpoch);
    }
    if generation != Some(result_generation) {
        return Err(Refusal::StaleGeneration);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn m(s: &str) -> MonitorId {
        MonitorId::new(s).unwrap()
    }
    fn c(s: &str) -> CollectorId {
        CollectorId::new(s).unwrap()
    }
    fn set<T: Ord + Clone>(v: &[T]) -> BTreeSet<T> {
        v.iter().cloned().collect()
    }
    fn rec(owner: Option<&str>, releasing: &[&str], epoch: Epoch) -> AssignmentRecord {
        AssignmentRecord { collector: owner.map(c), releasing: releasing.iter().map(|s| c(s)).collect(), epoch }
    }
    fn running(list: &[(&str, Generation, Epoch)]) -> Report {
        Report::Answered(std::sync::Arc::new(
            list.iter().map(|(id, g, e)| (m(id), Running { generation: *g, epoch: *e, stopping: false })).collect(),
        ))
    }

    #[test]
    fn a_move_from_a_live_owner_keeps_it_releasing_and_a_dead_one_is_dropped() {
        let plan = BTreeMap::from([(m("a"), c("c2")), (m("b"), c("c2"))]);
        let persisted = BTreeMap::from([(m("a"), rec(Some("c1"), &[], 5)), (m("b"), rec(Some("c3"), &[], 6))]);
        let live = set(&[c("c1"), c("c2")]); // c3 is dead
        let writes = assignment_changes(&plan, &persisted, &live, &Confirmed::new(), &BTreeSet::new());
        assert_eq!(writes.len(), 2);
        let a = writes[0].value.as_ref().unwrap();
        assert_eq!((a.collector.clone(), a.releasing.clone(), a.epoch), (Some(c("c2")), set(&[c("c1")]), None));
        assert!(writes[0].moved);
        let b = writes[1].value.as_ref().unwrap();
        assert!(b.releasing.is_empty(), "a dead collector fenced itself: nothing to wait for");
    }

    #[test]
    fn a_confirmed_release_is_pruned_keeping_the_epoch_and_a_finished_delete_removes_the_key() {
        let plan = BTreeMap::from([(m("a"), c("c2"))]);
        let persisted = BTreeMap::from([(m("a"), rec(Some("c2"), &["c1"], 9)), (m("gone"), rec(None, &["c1"], 7))]);
        let live = set(&[c("c1"), c("c2")]);
        let confirmed = set(&[(c("c1"), m("a")), (c("c1"), m("gone"))]);
        let writes = assignment_changes(&plan, &persisted, &live, &confirmed, &BTreeSet::new());
        assert_eq!(
            writes,
            vec![
                RecordWrite {
                    monitor: m("a"),
                    value: Some(AssignmentValue {
                        collector: Some(c("c2")),
                        releasing: BTreeSet::new(),
                        epoch: Some(9)
                    }),
                    moved: false,
                },
                RecordWrite { monitor: m("gone"), value: None, moved: false },
            ]
        );
    }

    #[test]
    fn a_deleted_monitor_keeps_its_record_until_the_owner_confirms() {
        let persisted = BTreeMap::from([(m("a"), rec(Some("c1"), &[], 3))]);
        let live = set(&[c("c1")]);
        let writes = assignment_changes(&BTreeMap::new(), &persisted, &live, &Confirmed::new(), &BTreeSet::new());
        assert_eq!(writes[0].value, Some(AssignmentValue { collector: None, releasing: set(&[c("c1")]), epoch: None }));
    }

    #[test]
    fn unchanged_inputs_write_nothing_and_skipped_monitors_are_left_alone() {
        let plan = BTreeMap::from([(m("a"), c("c1"))]);
        let persisted = BTreeMap::from([(m("a"), rec(Some("c1"), &[], 3)), (m("bad"), rec(Some("c9"), &[], 2))]);
        let live = set(&[c("c1")]);
        let writes = assignment_changes(&plan, &persisted, &live, &Confirmed::new(), &set(&[m("bad")]));
        assert!(writes.is_empty());
    }

    #[test]
    fn chunks_respect_operation_and_byte_limits() {
        let writes: Vec<usize> = (0..300).collect();
        let chunks = chunk_writes(writes.clone(), |_| 100, TxnLimits::default());
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![128, 128, 44]);
        assert_eq!(chunks.concat(), writes, "order kept, nothing lost");
        let limits = TxnLimits { max_ops: 128, max_request_bytes: 64 * 1024 };
        let chunks = chunk_writes(writes.clone(), |_| 4000, limits);
        for ch in &chunks {
            assert!(ch.len() * (4000 + OP_OVERHEAD) <= 64 * 1024 - REQUEST_OVERHEAD);
        }
        assert_eq!(chunks.concat(), writes);
        let huge = chunk_writes(vec![1, 2], |_| 10 * 1024 * 1024, TxnLimits::default());
        assert_eq!(huge, vec![vec![1], vec![2]], "an oversized write stands alone");
    }

    #[test]
    fn the_new_owner_waits_for_a_live_old_owner_to_confirm() {
        let records = BTreeMap::from([(m("a"), rec(Some("c2"), &["c1"], 10))]);
        let generations = BTreeMap::from([(m("a"), 4)]);
        let live = set(&[c("c1"), c("c2")]);
        let reports = BTreeMap::from([(c("c1"), running(&[("a", 4, 3)])), (c("c2"), running(&[]))]);
        let un = unassign_actions(&survey(&records, &live, &reports), &generations, &BTreeSet::new());
        assert_eq!(un, vec![UnassignAction { collector: c("c1"), monitor: m("a"), generation: 4, epoch: 10 }]);
        let (assigns, pending) =
            assign_actions(&survey(&records, &live, &reports), &generations, &Confirmed::new(), &BTreeSet::new());
        assert!(assigns.is_empty());
        assert_eq!(pending[0].waiting_for, vec![Wait::NotReleasedBy(c("c1"))]);
        let confirmed = set(&[(c("c1"), m("a"))]);
        let (assigns, pending) =
            assign_actions(&survey(&records, &live, &reports), &generations, &confirmed, &BTreeSet::new());
        assert_eq!(assigns, vec![AssignAction { collector: c("c2"), monitor: m("a"), generation: 4, epoch: 10 }]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_silent_collector_gets_no_command_and_blocks_only_what_it_may_run() {
        let records = BTreeMap::from([
            (m("a"), rec(Some("c2"), &["c1"], 10)),
            (m("b"), rec(Some("c2"), &[], 11)),
            (m("x"), rec(Some("c1"), &[], 12)),
        ]);
        let generations = BTreeMap::from([(m("a"), 1), (m("b"), 1), (m("x"), 1)]);
        let live = set(&[c("c1"), c("c2")]);
        let reports = BTreeMap::from([(c("c1"), Report::Silent), (c("c2"), running(&[]))]);
        assert!(unassign_actions(&survey(&records, &live, &reports), &generations, &BTreeSet::new()).is_empty());
        let (assigns, pending) =
            assign_actions(&survey(&records, &live, &reports), &generations, &Confirmed::new(), &BTreeSet::new());
        assert_eq!(assigns.iter().map(|a| a.monitor.as_str()).collect::<Vec<_>>(), vec!["b"]);
        let waits: BTreeMap<&str, Vec<Wait>> =
            pending.iter().map(|p| (p.monitor.as_str(), p.waiting_for.clone())).collect();
        assert_eq!(waits["a"], vec![Wait::NotReleasedBy(c("c1"))]);
        assert_eq!(waits["x"], vec![Wait::OwnerSilent(c("c1"))]);
    }

    #[test]
    fn a_stray_copy_is_stopped_and_blocks_the_owner_until_confirmed() {
        let records = BTreeMap::from([(m("a"), rec(Some("c1"), &[], 10))]);
        let generations = BTreeMap::from([(m("a"), 2)]);
        let live = set(&[c("c1"), c("c2")]);
        let reports = BTreeMap::from([(c("c1"), running(&[])), (c("c2"), running(&[("a", 1, 4)]))]);
        let un = unassign_actions(&survey(&records, &live, &reports), &generations, &BTreeSet::new());
        assert_eq!(un, vec![UnassignAction { collector: c("c2"), monitor: m("a"), generation: 2, epoch: 10 }]);
        let (assigns, _) =
            assign_actions(&survey(&records, &live, &reports), &generations, &Confirmed::new(), &BTreeSet::new());
        assert!(assigns.is_empty());
    }

    #[test]
    fn a_restart_or_an_epoch_change_is_reassigned_and_a_current_one_is_left() {
        let records = BTreeMap::from([(m("a"), rec(Some("c1"), &[], 10)), (m("b"), rec(Some("c1"), &[], 11))]);
        let generations = BTreeMap::from([(m("a"), 2), (m("b"), 1)]);
        let live = set(&[c("c1")]);
        let reports = BTreeMap::from([(c("c1"), running(&[("a", 1, 10), ("b", 1, 11)]))]);
        let (assigns, pending) =
            assign_actions(&survey(&records, &live, &reports), &generations, &Confirmed::new(), &BTreeSet::new());
        assert_eq!(assigns.len(), 1);
        assert_eq!((assigns[0].monitor.as_str(), assigns[0].generation), ("a", 2));
        assert!(pending.is_empty());
    }

    #[test]
    fn results_are_believed_only_from_the_owner_at_its_epoch_and_generation() {
        let r = rec(Some("c1"), &["c0"], 10);
        assert_eq!(accept_result(&c("c1"), 10, 3, Some(&r), Some(3)), Ok(()));
        assert_eq!(accept_result(&c("c0"), 10, 3, Some(&r), Some(3)), Err(Refusal::NotOwner));
        assert_eq!(accept_result(&c("c1"), 9, 3, Some(&r), Some(3)), Err(Refusal::StaleEpoch));
        assert_eq!(accept_result(&c("c1"), 10, 2, Some(&r), Some(3)), Err(Refusal::StaleGeneration));
        assert_eq!(accept_result(&c("c1"), 10, 3, None, Some(3)), Err(Refusal::NotOwner));
    }

    /// Simulates many passes over random plans, deaths, silences and lost
    /// commands, and checks after every step that no monitor is ever started
    /// on a collector while another live collector may still run it.
    #[test]
    fn property_never_two_live_owners() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let collectors: Vec<CollectorId> = (0..4).map(|i| c(&format!("c{i}"))).collect();
            let monitors: Vec<MonitorId> = (0..12).map(|i| m(&format!("m{i}"))).collect();
            let generations: BTreeMap<MonitorId, Generation> = monitors.iter().map(|x| (x.clone(), 1)).collect();
            // What each collector really runs (the truth the checker sees).
            let mut runs: BTreeMap<CollectorId, BTreeSet<MonitorId>> = BTreeMap::new();
            let mut records: BTreeMap<MonitorId, AssignmentRecord> = BTreeMap::new();
            let mut live: BTreeSet<CollectorId> = collectors.iter().cloned().collect();
            let mut confirmed = Confirmed::new();
            let mut revision: Epoch = 1;
            for _pass in 0..60 {
                // Faults: a collector dies (its monitors stop with it) or comes back empty.
                if rng.gen_bool(0.1) {
                    let x = collectors[rng.gen_range(0..collectors.len())].clone();
                    if live.remove(&x) {
                        runs.remove(&x);
                    } else {
                        live.insert(x);
                    }
                }
                let plan: BTreeMap<MonitorId, CollectorId> = monitors
                    .iter()
                    .filter_map(|x| {
                        let alive: Vec<&CollectorId> = live.iter().collect();
                        (!alive.is_empty()).then(|| (x.clone(), alive[rng.gen_range(0..alive.len())].clone()))
                    })
                    .collect();
                let writes = assignment_changes(&plan, &records, &live, &confirmed, &BTreeSet::new());
                revision += 1;
                for w in writes {
                    match w.value {
                        Some(v) => {
                            records.insert(w.monitor, AssignmentRecord::written(&v, revision));
                        }
                        None => {
                            records.remove(&w.monitor);
                        }
                    }
                }
                let reports: BTreeMap<CollectorId, Report> = live
                    .iter()
                    .map(|x| {
                        let report = if rng.gen_bool(0.2) {
                            Report::Silent
                        } else {
                            let list = runs.get(x).cloned().unwrap_or_default();
                            Report::Answered(std::sync::Arc::new(
                                list.into_iter()
                                    .map(|mm| (mm, Running { generation: 1, epoch: 0, stopping: false }))
                                    .collect(),
                            ))
                        };
                        (x.clone(), report)
                    })
                    .collect();
                confirmed.clear();
                for u in unassign_actions(&survey(&records, &live, &reports), &generations, &BTreeSet::new()) {
                    // Some Unassigns are lost (the collector is slow): no confirmation.
                    if matches!(reports.get(&u.collector), Some(Report::Silent)) || rng.gen_bool(0.2) {
                        continue;
                    }
                    runs.entry(u.collector.clone()).or_default().remove(&u.monitor);
                    confirmed.insert((u.collector, u.monitor));
                }
                let (assigns, _) =
                    assign_actions(&survey(&records, &live, &reports), &generations, &confirmed, &BTreeSet::new());
                for a in assigns {
                    let others: Vec<&CollectorId> = runs
                        .iter()
                        .filter(|(x, set)| **x != a.collector && live.contains(*x) && set.contains(&a.monitor))
                        .map(|(x, _)| x)
                        .collect();
                    assert!(
                        others.is_empty(),
                        "seed {seed}: {} started on {} while {others:?} run it",
                        a.monitor,
                        a.collector
                    );
                    runs.entry(a.collector).or_default().insert(a.monitor);
                }
            }
        }
    }
}
