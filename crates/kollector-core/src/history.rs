//! What a monitor remembers between cycles, and the two answers it gives:
//! how many seconds a consumer group is behind, and Burrow-style verdicts.
//! Pure: callers pass observations and the time; nothing here talks to
//! Kafka, so every rule is unit- and property-tested.
//!
//! **Lag in seconds.** Each cycle already reads every partition's latest
//! offset; [`LogHistory`] keeps (latest offset, time) points, bounded by a
//! point count and an age. The lag of a committed offset `o` is the age of
//! the first record not consumed (offset `o`): *now* minus the time the log
//! end passed `o`, interpolated between the last point at or below `o` and
//! the first point above it. (kafka-lag-exporter takes the time the log end
//! *equalled* `o`, which makes a consumer one record behind on an idle topic
//! read anywhere between 0 and a whole poll interval.) A flat run (no new records) keeps
//! only its first and last point, so an idle partition costs two points and
//! its caught-up consumer reads 0, not NaN. A committed offset older than
//! the whole history is never extrapolated (kafka-lag-exporter's users saw
//! 75 hours from one spike that way): it is reported as *at least* the
//! history's age, flagged. Fewer than two points: no answer.
//!
//! **Retention margin** in seconds: (committed − the partition's oldest
//! offset) ÷ its write rate over the history. Under steady time- or
//! size-based retention the log start advances as fast as records are
//! written, so this is about when retention reaches the committed offset;
//! no answer when nothing was written during the history (no rate to divide
//! by) or while the log start is still 0 (retention has deleted nothing yet:
//! a young topic, a compacted one, no time limit).
//!
//! **Verdicts** are Burrow's (linkedin/Burrow, `evaluator/caching.go`),
//! rule for rule and in Burrow's order, over a window of the last N
//! observations (committed offset, latest offset, time), one per cycle:
//! 1. current lag ≤ the allowed lag (0) → OK, nothing else checked;
//! 2. STOP when the consumer stopped, unless a recent latest offset is at or
//!    below the last committed offset (it was caught up lately);
//! 3. REWIND when the committed offset's first drop in the window never got
//!    back (before the next rule: a caught-up consumer that suddenly
//!    rewinds must show);
//! 4. OK when lag was 0 anywhere in the window;
//! 5. STALL when the committed offset never changed (lag > 0 throughout);
//! 6. WARN when lag never decreased from one observation to the next;
//! 7. otherwise OK.
//!
//! **The poller's "stopped".** Burrow reads every commit with its timestamp
//! (`__consumer_offsets`) and calls a consumer stopped when the time since
//! its last commit exceeds the span of its window. A poller sees one
//! committed offset per cycle and no commit times, so "the same offset
//! committed again" and "no commit at all" look alike. kollector decides
//! from what a cycle does see: the group has **no members** and its
//! committed offset has **not changed across the whole window** (every
//! observation in it shows the same offset; how long before the window it
//! got there a poller cannot know, so the window is the span judged). A
//! live member that keeps committing the same offset while lag stays above
//! 0 is therefore STALL, not STOP; a group whose members are gone while
//! producers write is STOP. Groups that commit without membership (a
//! framework assigning partitions itself, protocol type "") look stopped
//! whenever their offset stands still.
//!
//! A verdict needs a full window, except OK and REWIND (Burrow's
//! `minimum-complete`). A group or partition that could not be read in a
//! cycle has no verdict that cycle (never OK) and keeps its window, which
//! resumes when it reads again.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One log-end observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub offset: i64,
    pub at_ms: u64,
}

/// A partition's log end over time, bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHistory {
    points: VecDeque<Point>,
}

/// How far back history goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_points: usize,
    pub max_age_ms: u64,
}

/// How far back a monitor's history reaches unless its spec says otherwise
/// (`lag_history`).
pub const DEFAULT_HISTORY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Most log points and commit observations, together, that one monitor's
/// history may carry when it is handed to another collector: about 2 MiB
/// on the wire (points are delta-encoded), whatever the cluster's size.
pub const HANDOVER_MAX_POINTS: usize = 200_000;

impl HistoryLimits {
    /// A monitor's limits: `history` back, and never less than a verdict
    /// window of cycles.
    pub fn for_monitor(history: std::time::Duration, interval: std::time::Duration) -> HistoryLimits {
        HistoryLimits::covering(history.max(interval * DEFAULT_WINDOW as u32), interval)
    }

    /// At least `window` of history at `interval`, and 2 points at the least.
    pub fn covering(window: std::time::Duration, interval: std::time::Duration) -> HistoryLimits {
        let per = interval.as_millis().max(1);
        let points = (window.as_millis() / per) as usize + 2;
        HistoryLimits { max_points: points.max(2), max_age_ms: window.as_millis() as u64 }
    }
}

/// A lag in seconds, or a lower bound when the committed offset is older
/// than the history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LagSeconds {
    Exact(f64),
    AtLeast(f64),
}

impl LagSeconds {
    pub fn seconds(self) -> f64 {
        match self {
            LagSeconds::Exact(s) | LagSeconds::AtLeast(s) => s,
        }
    }
    pub fn is_lower_bound(self) -> bool {
        matches!(self, LagSeconds::AtLeast(_))
    }
}

impl LogHistory {
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }
    pub fn len(&self) -> usize {
        self.points.len()
    }
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Adds an observation. A time not after the last point's is ignored; an
    /// offset below the last point's means the log was recreated or
    /// truncated: history restarts from this point.
    pub fn record(&mut self, offset: i64, at_ms: u64, limits: HistoryLimits) {
        if let Some(last) = self.points.back() {
            if at_ms <= last.at_ms {
                return;
            }
            if offset < last.offset {
                self.points.clear();
            }
        }
        let n = self.points.len();
        // A flat run keeps its first and last points: move the last one.
        if n >= 2 && self.points[n - 1].offset == offset && self.points[n - 2].offset == offset {
            self.points[n - 1].at_ms = at_ms;
        } else {
            self.points.push_back(Point { offset, at_ms });
        }
        let oldest_allowed = at_ms.saturating_sub(limits.max_age_ms);
        // Keep one point at or before the window's start, so the window is
        // covered, but nothing older than that.
        while self.points.len() > 2 && self.points[1].at_ms <= oldest_allowed {
            self.points.pop_front();
        }
        while self.points.len() > limits.max_points.max(2) {
            self.points.pop_front();
        }
    }

    /// Records written per second over the whole history; None when
    /// nothing was written (or fewer than two points).
    pub fn write_rate(&self) -> Option<f64> {
        let (first, last) = (self.points.front()?, self.points.back()?);
        let records = last.offset as i128 - first.offset as i128;
        let ms = last.at_ms.saturating_sub(first.at_ms);
        (records > 0 && ms > 0).then(|| records as f64 * 1000.0 / ms as f64)
    }

    /// Keeps at most `n` (at least 2) points: the first, the last, and
    /// evenly spaced ones between.
    fn thin_to(&mut self, n: usize) {
        let len = self.points.len();
        let n = n.max(2);
        if len <= n {
            return;
        }
        let kept: VecDeque<Point> = (0..n).map(|i| self.points[i * (len - 1) / (n - 1)]).collect();
        self.points = kept;
    }

    /// How long ago the log reached `committed`, as of `now_ms`.
    pub fn lag_seconds(&self, committed: i64, now_ms: u64) -> Option<LagSeconds> {
        let newest = *self.points.back()?;
        if committed >= newest.offset {
            return Some(LagSeconds::Exact(0.0));
        }
        if self.points.len() < 2 {
            return None;
        }
        let age = |t: u64| now_ms.saturating_sub(t) as f64 / 1000.0;
        // The first record the group has not consumed is `committed`; it was
        // written when the log end passed `committed`: between the last point
        // at or below it and the first point above it.
        let oldest = self.points[0];
        if oldest.offset > committed {
            return Some(LagSeconds::AtLeast(age(oldest.at_ms)));
        }
        let i = self.points.iter().position(|p| p.offset > committed)?;
        let (l, r) = (self.points[i - 1], self.points[i]);
        // In i128: offsets come from brokers and from other nodes' histories.
        let (ahead, span) = (committed as i128 + 1 - l.offset as i128, r.offset as i128 - l.offset as i128);
        let fraction = (ahead as f64 / span as f64).min(1.0);
        let written = l.at_ms as f64 + fraction * (r.at_ms - l.at_ms) as f64;
        Some(LagSeconds::Exact((now_ms as f64 - written).max(0.0) / 1000.0))
    }
}

/// Burrow's partition statuses, with its numeric codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    Ok,
    Warn,
    Stop,
    Stall,
    Rewind,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [Verdict::Ok, Verdict::Warn, Verdict::Stop, Verdict::Stall, Verdict::Rewind];

    /// Burrow's partition code: 1 OK, 2 WARN, 4 STOP, 5 STALL, 6 REWIND.
    pub fn code(self) -> u8 {
        match self {
            Verdict::Ok => 1,
            Verdict::Warn => 2,
            Verdict::Stop => 4,
            Verdict::Stall => 5,
            Verdict::Rewind => 6,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Warn => "WARN",
            Verdict::Stop => "STOP",
            Verdict::Stall => "STALL",
            Verdict::Rewind => "REWIND",
        }
    }
    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }
    /// How bad, for the group's worst: REWIND and STOP/STALL above WARN.
    fn severity(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::Warn => 1,
            Verdict::Stall => 2,
            Verdict::Stop => 3,
            Verdict::Rewind => 4,
        }
    }
}

/// Burrow's group status: 1 OK, 2 WARN, 3 ERR (any partition worse than WARN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupVerdict {
    Ok,
    Warn,
    Err,
}

impl GroupVerdict {
    pub fn code(self) -> u8 {
        match self {
            GroupVerdict::Ok => 1,
            GroupVerdict::Warn => 2,
            GroupVerdict::Err => 3,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            GroupVerdict::Ok => "OK",
            GroupVerdict::Warn => "WARN",
            GroupVerdict::Err => "ERR",
        }
    }
    pub fn parse(s: &str) -> Option<GroupVerdict> {
        [GroupVerdict::Ok, GroupVerdict::Warn, GroupVerdict::Err].into_iter().find(|v| v.as_str() == s)
    }
    /// The group's status from its partitions' verdicts, None for a
    /// partition whose verdict is unknown this cycle. Burrow's rule: the
    /// worst partition, anything past WARN as ERR. Unknown partitions
    /// could hide anything worse, so with any of them only ERR is certain;
    /// no partitions at all (nothing committed) is no status, not OK.
    pub fn of(verdicts: impl IntoIterator<Item = Option<Verdict>>) -> Option<GroupVerdict> {
        let (mut worst, mut unknown, mut any) = (None::<Verdict>, false, false);
        for v in verdicts {
            any = true;
            match v {
                None => unknown = true,
                Some(v) => worst = Some(worst.map_or(v, |w| if v.severity() > w.severity() { v } else { w })),
            }
        }
        let status = match worst? {
            Verdict::Ok => GroupVerdict::Ok,
            Verdict::Warn => GroupVerdict::Warn,
            _ => GroupVerdict::Err,
        };
        (any && (!unknown || status == GroupVerdict::Err)).then_some(status)
    }
}

/// One cycle's view of a group's partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub committed: i64,
    pub latest: i64,
    pub at_ms: u64,
}

impl Observation {
    pub fn lag(&self) -> i64 {
        self.latest.saturating_sub(self.committed).max(0)
    }
}

/// The last `window` observations of a group's partition, and since when
/// its committed offset has had its current value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitWindow {
    observations: VecDeque<Observation>,
    committed_since_ms: u64,
}

impl CommitWindow {
    pub fn observations(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter()
    }

    /// Unix ms since which the committed offset has had its current value.
    pub fn committed_since_ms(&self) -> u64 {
        self.committed_since_ms
    }

    pub fn record(&mut self, o: Observation, window: usize) {
        if self.observations.back().is_some_and(|last| o.at_ms <= last.at_ms) {
            return;
        }
        if self.observations.back().is_none_or(|last| last.committed != o.committed) {
            self.committed_since_ms = o.at_ms;
        }
        self.observations.push_back(o);
        while self.observations.len() > window.max(2) {
            self.observations.pop_front();
        }
    }

    /// The verdict over the window, as of the latest observation; None until
    /// there is one. `members` is the group's member count this cycle (None
    /// when its description could not be read: then there is no verdict).
    pub fn verdict(&self, window: usize, members: Option<u32>) -> Option<Verdict> {
        let members = members?;
        let last = *self.observations.back()?;
        let obs: Vec<Observation> = self.observations.iter().copied().collect();
        let full = obs.len() >= window.max(2);
        let first = obs[0];
        // The poller's stand-in for Burrow's "stopped committing" (module doc).
        let stopped =
            full && members == 0 && last.at_ms.saturating_sub(self.committed_since_ms) >= last.at_ms - first.at_ms;
        let facts = WindowFacts {
            current_lag: last.lag(),
            allowed_lag: 0,
            stopped,
            recent_lag_zero: recent_lag_zero(obs.iter().map(|o| o.latest), last.committed),
        };
        let verdict = burrow_status(&obs, facts);
        // Short of a full window only OK and REWIND are said.
        Some(if full || verdict == Verdict::Rewind { verdict } else { Verdict::Ok })
    }
}

/// What Burrow's partition rules need besides the window itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowFacts {
    /// Lag now (latest − committed, at least 0).
    pub current_lag: i64,
    /// Lag at or below this counts as caught up (Burrow's `allowed-lag`, 0 here).
    pub allowed_lag: i64,
    /// The consumer stopped committing (Burrow: time since the last commit
    /// exceeds the window's span; the poller's adaptation: module doc).
    pub stopped: bool,
    /// Some recent latest offset is at or below the last committed offset.
    pub recent_lag_zero: bool,
}

/// Burrow's `calculatePartitionStatus`, rule for rule in its order, over a
/// window of observations oldest first (each with its lag at the time).
pub fn burrow_status(window: &[Observation], facts: WindowFacts) -> Verdict {
    if facts.current_lag <= facts.allowed_lag {
        return Verdict::Ok;
    }
    if facts.stopped && !facts.recent_lag_zero {
        return Verdict::Stop;
    }
    // REWIND before "lag was 0": a consumer often has no lag and then
    // suddenly rewinds (to the earliest offset), and that must show.
    // Burrow looks at the first drop only: REWIND unless a later offset got
    // back to where it dropped from.
    if let Some(i) = window.windows(2).position(|w| w[1].committed < w[0].committed) {
        let from = window[i].committed;
        if window[i + 1..].iter().all(|o| o.committed < from) {
            return Verdict::Rewind;
        }
    }
    if window.iter().any(|o| o.lag() <= facts.allowed_lag) {
        return Verdict::Ok;
    }
    if window.windows(2).all(|w| w[1].committed == w[0].committed) {
        return Verdict::Stall;
    }
    if window.windows(2).all(|w| w[1].lag() >= w[0].lag()) {
        return Verdict::Warn;
    }
    Verdict::Ok
}

/// Burrow's "recent lag zero": some recent latest (broker) offset is at or
/// below the last committed offset, so the consumer was caught up lately.
pub fn recent_lag_zero(latest: impl IntoIterator<Item = i64>, last_committed: i64) -> bool {
    latest.into_iter().any(|l| l <= last_committed)
}

/// Observations per partition a verdict looks at (Burrow's default).
pub const DEFAULT_WINDOW: usize = 10;

/// Everything a monitor remembers between cycles: each partition's log
/// history and each group partition's commit window. Bounded: partitions
/// and groups absent from a cycle are forgotten, each history by its limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorHistory {
    /// The cluster the history was taken from: a snapshot of another
    /// cluster (the monitor now points elsewhere) starts it afresh.
    #[serde(default)]
    cluster_id: Option<String>,
    /// topic → partition → log history.
    logs: BTreeMap<String, BTreeMap<i32, LogHistory>>,
    /// group → topic → partition → commit window.
    commits: BTreeMap<String, BTreeMap<String, BTreeMap<i32, CommitWindow>>>,
}

impl MonitorHistory {
    /// Points held, over all partitions (for the memory figures).
    pub fn points(&self) -> usize {
        self.logs.values().flat_map(|p| p.values()).map(LogHistory::len).sum()
    }

    /// Records one cycle's snapshot taken at `now_ms` and fills in its
    /// derived values: lag in seconds and verdicts.
    pub fn observe(&mut self, snapshot: &mut crate::Snapshot, now_ms: u64, limits: HistoryLimits, window: usize) {
        if self.cluster_id.as_deref().is_some_and(|c| c != snapshot.cluster_id) {
            *self = MonitorHistory::default();
        }
        self.cluster_id = Some(snapshot.cluster_id.clone());
        let stale_before = now_ms.saturating_sub(limits.max_age_ms);
        let mut logs: BTreeMap<String, BTreeMap<i32, LogHistory>> = BTreeMap::new();
        for t in &snapshot.topics {
            let old = self.logs.remove(&t.name).unwrap_or_default();
            let mut kept = BTreeMap::new();
            let mut old = old;
            for p in &t.partitions {
                let mut h = old.remove(&p.partition).unwrap_or_default();
                // A history that ends before the window (a monitor back after
                // a long pause) would interpolate across the gap: start afresh.
                // So does one that ends after now (a clock set back, or a
                // sender's clock ahead): no new point could ever follow it.
                if h.points().last().is_some_and(|last| last.at_ms < stale_before || last.at_ms > now_ms) {
                    h = LogHistory::default();
                }
                if let Some(latest) = p.latest {
                    h.record(latest, now_ms, limits);
                }
                kept.insert(p.partition, h);
            }
            logs.insert(t.name.clone(), kept);
        }
        self.logs = logs;
        let earliest: BTreeMap<(&str, i32), i64> = snapshot
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().filter_map(move |p| Some(((t.name.as_str(), p.partition), p.earliest?))))
            .collect();
        let mut commits: BTreeMap<String, BTreeMap<String, BTreeMap<i32, CommitWindow>>> = BTreeMap::new();
        for g in &mut snapshot.groups {
            let mut old = self.commits.remove(&g.group_id).unwrap_or_default();
            if g.offsets_unread {
                // Offsets unread this cycle: nothing to add, nothing to say,
                // and the windows wait for the group to read again (kept
                // below with the groups absent this cycle, while fresh).
                g.verdict = None;
                self.commits.insert(g.group_id.clone(), old);
                continue;
            }
            // Without its description the member count is unknown, and with
            // it whether the consumer stopped: observations are kept, no
            // verdict is given.
            let members = (!g.description_unread).then_some(g.members);
            let mut kept: BTreeMap<String, BTreeMap<i32, CommitWindow>> = BTreeMap::new();
            for o in &mut g.offsets {
                let mut w = old.get_mut(&o.topic).and_then(|m| m.remove(&o.partition)).unwrap_or_default();
                // Observations from before a long gap (a restart after a
                // while) say nothing about the consumer now.
                if w.observations().last().is_some_and(|last| last.at_ms < stale_before || last.at_ms > now_ms) {
                    w = CommitWindow::default();
                }
                // A partition whose latest offset was unread this cycle
                // keeps its window as it was and has no verdict.
                if let Some(lag) = o.lag {
                    w.record(
                        Observation { committed: o.committed, latest: o.committed.saturating_add(lag), at_ms: now_ms },
                        window,
                    );
                    o.verdict = w.verdict(window, members);
                    let log = self.logs.get(&o.topic).and_then(|m| m.get(&o.partition));
                    if let Some(l) = log.and_then(|h| h.lag_seconds(o.committed, now_ms)) {
                        o.lag_ms = Some((l.seconds() * 1000.0).round() as u64);
                        o.lag_ms_is_lower_bound = l.is_lower_bound();
                    }
                    // Retention advances the log start about as fast as records
                    // are written (steady time- or size-based retention): the
                    // records before the committed offset last that long.
                    // A log start still at 0 means retention has deleted nothing
                    // yet (a young topic, compaction, no time limit): nothing
                    // says records are about to go, so no estimate.
                    let start = earliest.get(&(o.topic.as_str(), o.partition)).filter(|s| **s > 0);
                    if let (Some(start), Some(rate)) = (start, log.and_then(LogHistory::write_rate)) {
                        let ahead = o.committed.saturating_sub(*start).max(0) as f64;
                        o.retention_margin_ms = Some((ahead / rate * 1000.0).round() as u64);
                    }
                }
                kept.entry(o.topic.clone()).or_default().insert(o.partition, w);
            }
            g.verdict = match members {
                Some(_) => GroupVerdict::of(g.offsets.iter().map(|o| o.verdict)),
                None => None,
            };
            commits.insert(g.group_id.clone(), kept);
        }
        // Groups absent this cycle (their coordinator unreachable, a
        // partial listing) keep their windows until they are too old to
        // say anything; a deleted group's go the same way.
        for (group, windows) in std::mem::take(&mut self.commits) {
            let fresh: BTreeMap<String, BTreeMap<i32, CommitWindow>> = windows
                .into_iter()
                .map(|(t, ps)| {
                    let ps: BTreeMap<i32, CommitWindow> = ps
                        .into_iter()
                        .filter(|(_, w)| {
                            w.observations().last().is_some_and(|o| o.at_ms >= stale_before && o.at_ms <= now_ms)
                        })
                        .collect();
                    (t, ps)
                })
                .filter(|(_, ps)| !ps.is_empty())
                .collect();
            if !fresh.is_empty() {
                commits.insert(group, fresh);
            }
        }
        self.commits = commits;
    }

    /// The time of the newest point or observation held (0 when empty).
    pub fn last_seen_ms(&self) -> u64 {
        let logs = self.logs().filter_map(|(_, _, l)| l.points().last().map(|p| p.at_ms));
        let commits = self.commits().filter_map(|(_, _, _, w)| w.observations().last().map(|o| o.at_ms));
        logs.chain(commits).max().unwrap_or(0)
    }

    /// The cluster the history was taken from, if any.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Each partition's log history: (topic, partition, history).
    pub fn logs(&self) -> impl Iterator<Item = (&str, i32, &LogHistory)> {
        self.logs.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, h)| (t.as_str(), *p, h)))
    }

    /// Each group partition's commit window: (group, topic, partition, window).
    pub fn commits(&self) -> impl Iterator<Item = (&str, &str, i32, &CommitWindow)> {
        self.commits.iter().flat_map(|(g, ts)| {
            ts.iter().flat_map(move |(t, ps)| ps.iter().map(move |(p, w)| (g.as_str(), t.as_str(), *p, w)))
        })
    }

    /// Observations held in commit windows, over all group partitions.
    pub fn observations(&self) -> usize {
        self.commits().map(|(_, _, _, w)| w.observations.len()).sum()
    }

    /// A copy to hand to the monitor's next owner, holding at most
    /// `max_points` log points and observations together. Over the budget,
    /// log histories are thinned first (evenly, keeping each one's first and
    /// last point: lag in seconds gets coarser, never wrong), down to two
    /// points each; then commit windows keep only their newest observations
    /// (verdicts wait for the window to fill again).
    pub fn for_handover(&self, max_points: usize) -> MonitorHistory {
        let mut h = self.clone();
        let observations = h.observations();
        if h.points() + observations <= max_points {
            return h;
        }
        let partitions = h.logs().count().max(1);
        let per_log = (max_points.saturating_sub(observations) / partitions).max(2);
        for ps in h.logs.values_mut() {
            for log in ps.values_mut() {
                log.thin_to(per_log);
            }
        }
        let room = max_points.saturating_sub(h.points());
        if observations > room {
            let windows = h.commits().count().max(1);
            let per_window = room / windows;
            for ts in h.commits.values_mut() {
                for w in ts.values_mut().flat_map(|ps| ps.values_mut()) {
                    while w.observations.len() > per_window {
                        w.observations.pop_front();
                    }
                }
            }
        }
        h
    }

    /// Rebuilds a history received from elsewhere (a manager's Assign),
    /// enforcing what [`MonitorHistory::observe`] would have: points in time
    /// order, a log that went backwards restarts, windows of at most
    /// `window` observations. Anything out of order, negative, from after
    /// `not_after_ms` (the receiver's clock) or without a cluster id is
    /// dropped, never trusted.
    pub fn from_parts(
        cluster_id: Option<String>,
        logs: impl IntoIterator<Item = (String, i32, Vec<Point>)>,
        commits: impl IntoIterator<Item = (String, String, i32, u64, Vec<Observation>)>,
        limits: HistoryLimits,
        window: usize,
        not_after_ms: u64,
    ) -> MonitorHistory {
        // A history that names no cluster would be believed for any.
        let Some(cluster_id) = cluster_id.filter(|c| !c.is_empty()) else { return MonitorHistory::default() };
        let mut h = MonitorHistory { cluster_id: Some(cluster_id), ..MonitorHistory::default() };
        // Whatever the sender claims, no more than a handover's worth is kept.
        let mut room = HANDOVER_MAX_POINTS;
        for (topic, partition, points) in logs {
            let mut log = LogHistory::default();
            for p in points.into_iter().filter(|p| p.offset >= 0 && p.at_ms <= not_after_ms).take(room) {
                log.record(p.offset, p.at_ms, limits);
            }
            room = room.saturating_sub(log.len());
            if !log.is_empty() {
                h.logs.entry(topic).or_default().insert(partition, log);
            }
        }
        for (group, topic, partition, committed_since_ms, observations) in commits {
            let mut w = CommitWindow::default();
            let sane = |o: &Observation| o.committed >= 0 && o.latest >= o.committed && o.at_ms <= not_after_ms;
            for o in observations.into_iter().filter(sane).take(room) {
                w.record(o, window);
            }
            room = room.saturating_sub(w.observations.len());
            if let Some(last) = w.observations.back() {
                // Since when the committed offset has had its value: not
                // after the first observation that shows it, as received.
                let first_with = w.observations.iter().rev().take_while(|o| o.committed == last.committed).last();
                let bound = first_with.map_or(last.at_ms, |o| o.at_ms);
                w.committed_since_ms = committed_since_ms.min(bound);
                h.commits.entry(group).or_default().entry(topic).or_default().insert(partition, w);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: HistoryLimits = HistoryLimits { max_points: 1000, max_age_ms: 3_600_000 };

    fn history(points: &[(i64, u64)]) -> LogHistory {
        let mut h = LogHistory::default();
        for &(o, t) in points {
            h.record(o, t, HOUR);
        }
        h
    }

    #[test]
    fn lag_seconds_interpolates_between_the_points_around_the_committed_offset() {
        // 10 records per second from t=0.
        let h = history(&[(0, 0), (100, 10_000), (200, 20_000), (300, 30_000)]);
        assert_eq!(h.lag_seconds(300, 30_000), Some(LagSeconds::Exact(0.0)));
        // Offset 150 was written when the log end passed it: 15.1 s in.
        assert_eq!(h.lag_seconds(150, 30_000), Some(LagSeconds::Exact(14.9)));
        assert_eq!(h.lag_seconds(200, 31_000), Some(LagSeconds::Exact(10.9)));
        assert_eq!(h.lag_seconds(0, 30_000), Some(LagSeconds::Exact(29.9)));
        // Older than the history: a lower bound, never an extrapolation.
        let h2 = history(&[(1000, 0), (1100, 10_000)]);
        assert_eq!(h2.lag_seconds(10, 10_000), Some(LagSeconds::AtLeast(10.0)));
        // One point: nothing to say unless caught up.
        let one = history(&[(5, 0)]);
        assert_eq!(one.lag_seconds(5, 1000), Some(LagSeconds::Exact(0.0)));
        assert_eq!(one.lag_seconds(4, 1000), None);
        assert_eq!(LogHistory::default().lag_seconds(0, 0), None);
    }

    #[test]
    fn an_idle_partition_keeps_two_points_and_a_caught_up_group_reads_zero() {
        let mut h = LogHistory::default();
        for t in 0..100u64 {
            h.record(42, t * 1000, HOUR);
        }
        assert_eq!(h.len(), 2);
        assert_eq!(h.lag_seconds(42, 200_000), Some(LagSeconds::Exact(0.0)));
        // Records written before a flat run keep their age during it.
        let mut h = history(&[(0, 0), (42, 10_000)]);
        for t in 11..100u64 {
            h.record(42, t * 1000, HOUR);
        }
        assert_eq!(h.len(), 3);
        let l = h.lag_seconds(21, 100_000).unwrap().seconds();
        assert!((l - (100.0 - 22.0 / 42.0 * 10.0)).abs() < 1e-9, "{l}");
        // One record behind after a flat run: its age, not the whole run's.
        h.record(43, 101_000, HOUR);
        let l = h.lag_seconds(42, 101_500).unwrap().seconds();
        assert!((0.5..=2.5).contains(&l), "{l}");
    }

    #[test]
    fn history_is_bounded_by_age_and_count_and_restarts_after_truncation() {
        let limits = HistoryLimits { max_points: 5, max_age_ms: 60_000 };
        let mut h = LogHistory::default();
        for t in 0..100u64 {
            h.record(t as i64 * 10, t * 1000, limits);
        }
        assert_eq!(h.len(), 5);
        let mut h = LogHistory::default();
        for t in 0..100u64 {
            h.record(t as i64 * 10, t * 10_000, HistoryLimits { max_points: 1000, max_age_ms: 60_000 });
        }
        assert!(h.points().next().unwrap().at_ms >= 990_000 - 70_000, "{h:?}");
        h.record(5, 2_000_000, HOUR);
        assert_eq!(h.len(), 1, "a lower offset restarts history");
        assert_eq!(
            HistoryLimits::covering(std::time::Duration::from_secs(3600), std::time::Duration::from_secs(30))
                .max_points,
            122
        );
    }

    fn window(obs: &[(i64, i64)], every_ms: u64) -> CommitWindow {
        let mut w = CommitWindow::default();
        for (i, &(committed, latest)) in obs.iter().enumerate() {
            w.record(Observation { committed, latest, at_ms: i as u64 * every_ms }, 5);
        }
        w
    }

    /// One of Burrow's own test cases (`caching_test.go`), in Burrow's
    /// terms: commits `(offset, timestamp s, lag at commit)` (None: a commit
    /// whose lag Burrow had not computed), the broker offsets it stored, the
    /// current lag, now, the allowed lag.
    struct BurrowCase {
        name: &'static str,
        commits: Vec<(i64, u64, Option<i64>)>,
        broker_offsets: Vec<i64>,
        current_lag: i64,
        now_s: u64,
        allowed_lag: i64,
        expected: Verdict,
    }

    impl BurrowCase {
        /// Burrow's evaluation, through [`burrow_status`]: commits with a lag
        /// become observations; "stopped" is Burrow's own timestamp rule.
        fn evaluate(&self) -> Verdict {
            let obs: Vec<Observation> = self
                .commits
                .iter()
                .filter_map(|&(offset, ts, lag)| {
                    lag.map(|lag| Observation { committed: offset, latest: offset + lag, at_ms: ts * 1000 })
                })
                .collect();
            let (first, last) = (self.commits[0], self.commits[self.commits.len() - 1]);
            let facts = WindowFacts {
                current_lag: self.current_lag,
                allowed_lag: self.allowed_lag,
                stopped: self.now_s - last.1 > last.1 - first.1,
                recent_lag_zero: recent_lag_zero(self.broker_offsets.iter().copied(), last.0),
            };
            burrow_status(&obs, facts)
        }
    }

    fn commits(offsets: [i64; 5], lags: [i64; 5]) -> Vec<(i64, u64, Option<i64>)> {
        (0..5).map(|i| (offsets[i], 100 * (i as u64 + 1), Some(lags[i]))).collect()
    }

    /// Burrow's test cases 0-15 (`core/internal/evaluator/caching_test.go`),
    /// as the reference in shared/reference/partial-failure-auth-probe.md §2
    /// gives them.
    fn burrow_cases() -> Vec<BurrowCase> {
        let a = commits([1000, 2000, 3000, 4000, 5000], [0, 50, 100, 150, 200]);
        let b = commits([1000, 2000, 3000, 4000, 5000], [50, 100, 150, 200, 250]);
        let c = commits([1000; 5], [100, 150, 200, 250, 300]);
        let d = commits([1000, 2000, 3000, 2000, 4000], [100, 150, 200, 1250, 300]);
        let case = |name, commits: &Vec<(i64, u64, Option<i64>)>, bo: &[i64], cur, now_s, al, expected| BurrowCase {
            name,
            commits: commits.clone(),
            broker_offsets: bo.to_vec(),
            current_lag: cur,
            now_s,
            allowed_lag: al,
            expected,
        };
        // Case 11: A with commits whose lag Burrow had not computed between.
        let mut a_nil = Vec::new();
        for (i, &(o, t, l)) in a.iter().enumerate() {
            a_nil.push((o, t, l));
            if i + 1 < a.len() {
                a_nil.push((o + 500, t + 50, None));
            }
        }
        // Cases 9-10: 15 commits a second apart at lag 0, then the broker
        // offsets move on and no commit follows.
        let quick: Vec<(i64, u64, Option<i64>)> = (0..15).map(|i| (1000 + i * 10, 100 + i as u64, Some(0))).collect();
        let last_quick = 1000 + 14 * 10;
        let d15 = {
            let mut d = d.clone();
            d[4] = (2500, 500, Some(300));
            d
        };
        vec![
            case("0", &a, &[5200], 200, 600, 0, Verdict::Ok),
            case("1: 400 is not > 400", &a, &[5200], 200, 900, 0, Verdict::Ok),
            case("2", &a, &[5200], 200, 1000, 0, Verdict::Stop),
            case("3", &b, &[5250], 250, 1000, 0, Verdict::Stop),
            case("4: lag was 0", &commits([1000; 5], [0, 50, 100, 150, 200]), &[1200], 200, 600, 0, Verdict::Ok),
            case("5", &c, &[1300], 300, 600, 0, Verdict::Stall),
            case("6", &commits([1000; 5], [100; 5]), &[1100], 100, 600, 0, Verdict::Stall),
            case("7: rewind recovered", &d, &[4300], 300, 600, 0, Verdict::Ok),
            case("8: no lag now", &b, &[5250], 0, 1000, 0, Verdict::Ok),
            case("9: stopped after lag 0", &quick, &[last_quick + 100, last_quick + 931], 931, 160, 0, Verdict::Stop),
            case(
                "10: broker offset at the last commit",
                &quick,
                &[last_quick, last_quick + 931],
                931,
                160,
                0,
                Verdict::Ok,
            ),
            case("11: nil lags between", &a_nil, &[5700], 200, 600, 0, Verdict::Ok),
            case(
                "12: lag within the allowed lag",
                &vec![(1000, 100, Some(2)), (2000, 200, Some(1)), (2000, 300, Some(1))],
                &[2001],
                1,
                550,
                1,
                Verdict::Ok,
            ),
            case("13", &c, &[1300], 300, 600, 99, Verdict::Stall),
            case("14", &d, &[4300], 300, 600, 99, Verdict::Ok),
            case("15: rewind not recovered", &d15, &[2800], 300, 600, 0, Verdict::Rewind),
        ]
    }

    #[test]
    fn burrows_own_test_cases_give_burrows_answers() {
        for c in burrow_cases() {
            assert_eq!(c.evaluate(), c.expected, "Burrow's case {}", c.name);
        }
    }

    #[test]
    fn each_verdict_from_a_polled_consumer() {
        let live = Some(1);
        // Caught up now.
        assert_eq!(window(&[(0, 10), (5, 10), (10, 10)], 1000).verdict(5, live), Some(Verdict::Ok));
        // Committing and keeping up (lag 0 at some point in the window).
        assert_eq!(window(&[(0, 5), (5, 10), (10, 10), (12, 15), (15, 16)], 1000).verdict(5, live), Some(Verdict::Ok));
        // Members gone, nothing moves since before the window: STOP.
        assert_eq!(window(&[(10, 20); 6], 1000).verdict(5, Some(0)), Some(Verdict::Stop));
        // Members gone while producers write: STOP too (Burrow's, not STALL).
        let gone = [(10, 20), (10, 25), (10, 30), (10, 35), (10, 40), (10, 45)];
        assert_eq!(window(&gone, 1000).verdict(5, Some(0)), Some(Verdict::Stop));
        // A live member committing the same offset while producers write: STALL.
        assert_eq!(window(&gone, 1000).verdict(5, live), Some(Verdict::Stall));
        // ...and with nothing written either: still a live member, STALL.
        assert_eq!(window(&[(10, 20); 6], 1000).verdict(5, live), Some(Verdict::Stall));
        // Members gone, but the offset changed inside the window: not yet STOP.
        let left = [(0, 45), (5, 45), (10, 45), (10, 45), (10, 45)];
        assert_ne!(window(&left, 1000).verdict(5, Some(0)), Some(Verdict::Stop));
        // Members gone right after being caught up: not STOP while the window
        // still shows the log at the committed offset (Burrow's recent lag zero).
        let caught_up_then_gone = [(10, 10), (10, 10), (10, 10), (10, 10), (10, 10), (10, 12)];
        assert_eq!(window(&caught_up_then_gone, 1000).verdict(5, Some(0)), Some(Verdict::Ok));
        // Rewound and not recovered.
        assert_eq!(window(&[(50, 60), (55, 60), (20, 60), (25, 60)], 1000).verdict(5, live), Some(Verdict::Rewind));
        // ...recovered: not REWIND any more.
        let recovered = [(50, 60), (20, 60), (55, 70), (60, 80), (65, 90)];
        assert_ne!(window(&recovered, 1000).verdict(5, live), Some(Verdict::Rewind));
        // Caught up, then rewound to the start: REWIND, though lag was 0 in the window.
        let reset = [(1000, 1000), (1000, 1000), (1000, 1000), (0, 1020), (5, 1030)];
        assert_eq!(window(&reset, 1000).verdict(5, live), Some(Verdict::Rewind));
        // Burrow judges the first drop: recovered, so a later one is not REWIND.
        let two_drops = [(10, 30), (5, 30), (20, 30), (15, 30), (16, 30)];
        assert_ne!(window(&two_drops, 1000).verdict(5, live), Some(Verdict::Rewind));
        // Falling behind: committing, but lag grows across the window.
        let behind = [(0, 10), (5, 20), (10, 30), (15, 40), (20, 50)];
        assert_eq!(window(&behind, 1000).verdict(5, live), Some(Verdict::Warn));
        // Lag that never decreased, even if steady, is Burrow's WARN.
        let steady = [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)];
        assert_eq!(window(&steady, 1000).verdict(5, live), Some(Verdict::Warn));
        // Behind but catching up: OK.
        let catching_up = [(0, 50), (10, 52), (20, 54), (30, 56), (40, 58)];
        assert_eq!(window(&catching_up, 1000).verdict(5, live), Some(Verdict::Ok));
        // Not enough observations to judge anything but OK and REWIND.
        assert_eq!(window(&[(10, 20), (10, 20)], 1000).verdict(5, Some(0)), Some(Verdict::Ok));
        assert_eq!(CommitWindow::default().verdict(5, live), None);
        // Members unknown (the description was unread): no verdict.
        assert_eq!(window(&gone, 1000).verdict(5, None), None);
    }

    #[test]
    fn a_live_consumer_on_a_sparse_topic_stays_ok_across_new_records() {
        // One record every 15 cycles, committed a few cycles after it lands:
        // lag is 1 for a few cycles, 0 otherwise. Never STALL or STOP.
        let mut w = CommitWindow::default();
        let (mut committed, mut latest) = (0i64, 0i64);
        for cycle in 0..200u64 {
            if cycle % 15 == 0 {
                latest += 1;
            }
            if cycle % 15 == 4 {
                committed = latest;
            }
            w.record(Observation { committed, latest, at_ms: cycle * 1000 }, DEFAULT_WINDOW);
            let v = w.verdict(DEFAULT_WINDOW, Some(1));
            assert_eq!(v, Some(Verdict::Ok), "cycle {cycle}: {v:?}");
        }
    }

    #[test]
    fn a_verdict_is_left_when_the_behaviour_changes() {
        let mut w = window(&[(10, 20); 6], 1000);
        assert_eq!(w.verdict(5, Some(0)), Some(Verdict::Stop));
        w.record(Observation { committed: 20, latest: 20, at_ms: 10_000 }, 5);
        assert_eq!(w.verdict(5, Some(0)), Some(Verdict::Ok));
    }

    #[test]
    fn group_status_is_the_worst_partition_with_burrows_codes() {
        assert_eq!(GroupVerdict::of([]), None, "nothing committed: no status, not OK");
        assert_eq!(GroupVerdict::of([Some(Verdict::Ok), Some(Verdict::Warn)]).map(GroupVerdict::code), Some(2));
        assert_eq!(GroupVerdict::of([Some(Verdict::Warn), Some(Verdict::Stall)]), Some(GroupVerdict::Err));
        // An unknown partition could hide anything: only ERR is certain.
        assert_eq!(GroupVerdict::of([Some(Verdict::Ok), None]), None);
        assert_eq!(GroupVerdict::of([Some(Verdict::Warn), None]), None);
        assert_eq!(GroupVerdict::of([Some(Verdict::Stop), None]), Some(GroupVerdict::Err));
        assert_eq!(Verdict::ALL.map(Verdict::code), [1, 2, 4, 5, 6]);
        assert_eq!([GroupVerdict::Ok, GroupVerdict::Warn, GroupVerdict::Err].map(GroupVerdict::code), [1, 2, 3]);
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]
        /// Burrow's rules as invariants over any window: no lag now is OK;
        /// STOP only when stopped; STALL only when the offset never moved;
        /// REWIND only after a drop; any lag-0 observation (and not stopped)
        /// is OK; a live member (polled) is never STOP.
        #[test]
        fn burrow_rules_hold_for_any_window(
            steps in proptest::collection::vec((-20i64..40, 0i64..60), 1..12),
            stopped in proptest::bool::ANY,
            recent in proptest::bool::ANY,
            allowed in 0i64..3,
        ) {
            let mut committed = 1000i64;
            let obs: Vec<Observation> = steps.iter().enumerate().map(|(i, &(d, lag))| {
                committed += d;
                Observation { committed, latest: committed + lag, at_ms: i as u64 * 1000 }
            }).collect();
            let last = obs[obs.len() - 1];
            let facts = WindowFacts { current_lag: last.lag(), allowed_lag: allowed, stopped, recent_lag_zero: recent };
            let v = burrow_status(&obs, facts);
            if last.lag() <= allowed {
                prop_assert_eq!(v, Verdict::Ok);
            }
            if v == Verdict::Stop {
                prop_assert!(stopped && !recent);
            }
            if v == Verdict::Stall {
                prop_assert!(obs.iter().all(|o| o.committed == last.committed));
            }
            if v == Verdict::Rewind {
                prop_assert!(obs.windows(2).any(|w| w[1].committed < w[0].committed));
            }
            let first_drop = obs.windows(2).position(|w| w[1].committed < w[0].committed);
            let rewound = first_drop.is_some_and(|i| obs[i + 1..].iter().all(|o| o.committed < obs[i].committed));
            if last.lag() > allowed && (recent || !stopped) {
                prop_assert_eq!(v == Verdict::Rewind, rewound, "REWIND exactly when the first drop did not recover");
            }
            if (recent || !stopped) && !rewound && obs.iter().any(|o| o.lag() <= allowed) {
                prop_assert_eq!(v, Verdict::Ok);
            }
            let mut w = CommitWindow::default();
            for o in &obs {
                w.record(*o, obs.len());
            }
            prop_assert_ne!(w.verdict(obs.len(), Some(1)), Some(Verdict::Stop));
        }
    }

    fn empty() -> crate::Snapshot {
        crate::Snapshot {
            monitor: crate::MonitorId::new("m").unwrap(),
            generation: 1,
            cluster_id: "c".into(),
            controller_id: None,
            brokers: vec![],
            topics: vec![],
            groups: vec![],
            collected_at_ms: 0,
            duration_ms: 0,
            warnings: vec![],
            notes: vec![],
            broker_errors: vec![],
            broker_throttle_ms: Default::default(),
            throttles_unread: false,
            group_metrics: Default::default(),
            e2e: None,
        }
    }

    #[test]
    fn a_monitor_history_fills_lag_seconds_and_verdicts_into_each_snapshot() {
        let snap = |latest: i64, committed: i64| {
            crate::testing::one_group_snapshot("orders", "billing", 1, (20, latest), committed)
        };
        let mut h = MonitorHistory::default();
        // 10 records a second; the group stays 30 records (3 s) behind.
        let mut last = None;
        for cycle in 0..12u64 {
            let latest = 100 + cycle as i64 * 10;
            let mut s = snap(latest, latest - 30);
            h.observe(&mut s, cycle * 1000, HOUR, 5);
            last = Some(s);
        }
        let s = last.unwrap();
        let o = &s.groups[0].offsets[0];
        assert_eq!(o.lag_ms, Some(2900));
        assert!(!o.lag_ms_is_lower_bound);
        // 160 records ahead of the log start, written at 10 a second: 16 s.
        assert_eq!(o.retention_margin_ms, Some(16_000));
        // Lag that never decreased (steady at 30) is Burrow's WARN.
        assert_eq!(o.verdict, Some(Verdict::Warn));
        assert_eq!(s.groups[0].verdict, Some(GroupVerdict::Warn));
        // The consumer stops while records keep coming: STALL, and the group is ERR.
        let mut s = snap(0, 0);
        for cycle in 12..20u64 {
            s = snap(100 + cycle as i64 * 10, 180);
            h.observe(&mut s, cycle * 1000, HOUR, 5);
        }
        assert_eq!(s.groups[0].offsets[0].verdict, Some(Verdict::Stall));
        assert_eq!(s.groups[0].verdict, Some(GroupVerdict::Err));
        // An idle partition: nothing pushes the log start, no margin in seconds.
        let mut idle = MonitorHistory::default();
        for cycle in 0..5u64 {
            let mut s = snap(50, 20);
            idle.observe(&mut s, cycle * 1000, HOUR, 5);
            assert_eq!(s.groups[0].offsets[0].retention_margin_ms, None);
        }
        // A group and a topic that disappear are forgotten.
        let mut none = empty();
        h.observe(&mut none, 30_000, HOUR, 5);
        assert_eq!(h.points(), 0);
        // History survives a round trip through JSON (the standalone file).
        let mut h = MonitorHistory::default();
        for cycle in 0..5u64 {
            h.observe(&mut snap(100 + cycle as i64 * 10, 100), cycle * 1000, HOUR, 5);
        }
        let back: MonitorHistory = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        // Another cluster's snapshot starts it afresh.
        let mut other = snap(1, 1);
        other.cluster_id = "another".into();
        h.observe(&mut other, 6000, HOUR, 5);
        assert_eq!(h.points(), 1);
    }

    #[test]
    fn an_unreadable_group_has_no_status_and_keeps_its_window() {
        // Members gone while producers write: STOP once the window is full.
        let snap = |cycle: u64| {
            let mut s = crate::testing::one_group_snapshot("t", "g", 1, (0, 100 + cycle as i64 * 10), 50);
            s.groups[0].members = 0;
            s.groups[0].state = "Empty".into();
            s
        };
        let mut h = MonitorHistory::default();
        for cycle in 0..7u64 {
            h.observe(&mut snap(cycle), cycle * 1000, HOUR, 5);
        }
        let window_before = h.commits().next().map(|(_, _, _, w)| w.clone());
        // Offsets unread (coordinator loading) for three cycles: no verdict,
        // no status, the window untouched.
        for cycle in 7..10u64 {
            let mut s = snap(cycle);
            s.groups[0].offsets.clear();
            s.groups[0].offsets_unread = true;
            s.groups[0].error = Some("OffsetFetch: COORDINATOR_LOAD_IN_PROGRESS".into());
            h.observe(&mut s, cycle * 1000, HOUR, 5);
            assert_eq!(s.groups[0].verdict, None, "cycle {cycle}");
            assert_eq!(h.commits().next().map(|(_, _, _, w)| w.clone()), window_before);
        }
        // Absent from a partial listing: still kept.
        let mut s = snap(10);
        s.groups.clear();
        h.observe(&mut s, 10_000, HOUR, 5);
        assert_eq!(h.commits().next().map(|(_, _, _, w)| w.clone()), window_before);
        // Described unread: the observation is kept, no verdict given.
        let mut s = snap(11);
        s.groups[0].description_unread = true;
        h.observe(&mut s, 11_000, HOUR, 5);
        assert_eq!((s.groups[0].offsets[0].verdict, s.groups[0].verdict), (None, None));
        // Read again: the verdict resumes at once from the kept window.
        let mut s = snap(12);
        h.observe(&mut s, 12_000, HOUR, 5);
        assert_eq!(s.groups[0].offsets[0].verdict, Some(Verdict::Stop));
        assert_eq!(s.groups[0].verdict, Some(GroupVerdict::Err));
        // A partition whose latest offset is unread: no verdict for it, so
        // the group's OK cannot be said either.
        let mut s = crate::testing::one_group_snapshot("t", "g", 2, (0, 100), 100);
        s.groups[0].offsets[1].lag = None;
        h.observe(&mut s, 13_000, HOUR, 5);
        assert_eq!(s.groups[0].offsets[0].verdict, Some(Verdict::Ok));
        assert_eq!(s.groups[0].offsets[1].verdict, None);
        assert_eq!(s.groups[0].verdict, None);
        // A group gone for longer than the history forgets its windows.
        let mut none = crate::testing::one_group_snapshot("t", "other", 1, (0, 100), 100);
        h.observe(&mut none, 13_000 + 3_600_001, HOUR, 5);
        assert!(h.commits().all(|(g, _, _, _)| g == "other"));
    }

    /// A monitor's history after `cycles` cycles of `partitions` partitions
    /// growing 10 records a second, each with a group 30 records behind.
    fn busy(partitions: i32, cycles: u64) -> MonitorHistory {
        let mut h = MonitorHistory::default();
        for cycle in 0..cycles {
            let latest = 100 + cycle as i64 * 10;
            let mut s = crate::testing::one_group_snapshot("t", "g", partitions, (0, latest), latest - 30);
            h.observe(&mut s, cycle * 1000, HOUR, 5);
        }
        h
    }

    #[test]
    fn a_handover_copy_is_bounded_and_keeps_the_ends_of_each_history() {
        let h = busy(50, 100);
        assert_eq!(h.points(), 50 * 100);
        assert_eq!(h.observations(), 50 * 5);
        // Within the budget: the copy is the history.
        assert_eq!(h.for_handover(10_000), h);
        // Over it: each log thinned evenly, ends kept, windows whole.
        let small = h.for_handover(50 * 10 + 250);
        assert!(small.points() + small.observations() <= 750, "{}", small.points());
        assert_eq!(small.observations(), 250);
        for ((_, _, full), (_, _, thin)) in h.logs().zip(small.logs()) {
            let (f, t): (Vec<Point>, Vec<Point>) = (full.points().copied().collect(), thin.points().copied().collect());
            assert_eq!((t.first(), t.last()), (f.first(), f.last()));
            assert!(t.iter().all(|p| f.contains(p)), "only points that were observed");
            // A steady rate: the coarser history gives the same answer.
            let exact = full.lag_seconds(500, 99_000).unwrap();
            let coarse = thin.lag_seconds(500, 99_000).unwrap();
            assert!((exact.seconds() - coarse.seconds()).abs() < 0.2, "{exact:?} {coarse:?}");
        }
        // Far over it: two points per log, then the newest observations only.
        let tiny = h.for_handover(150);
        assert_eq!(tiny.points(), 100);
        assert_eq!(tiny.observations(), 50);
        assert!(tiny.commits().all(|(_, _, _, w)| w.observations().last()
            == Some(&Observation { committed: 100 + 99 * 10 - 30, latest: 100 + 99 * 10, at_ms: 99_000 })));
    }

    #[test]
    fn a_received_history_is_rebuilt_under_the_monitors_own_rules() {
        let h = busy(3, 20);
        let parts = |h: &MonitorHistory| {
            let logs: Vec<_> =
                h.logs().map(|(t, p, l)| (t.to_string(), p, l.points().copied().collect::<Vec<_>>())).collect();
            let commits: Vec<_> = h
                .commits()
                .map(|(g, t, p, w)| {
                    (
                        g.to_string(),
                        t.to_string(),
                        p,
                        w.committed_since_ms(),
                        w.observations().copied().collect::<Vec<_>>(),
                    )
                })
                .collect();
            (logs, commits)
        };
        let (logs, commits) = parts(&h);
        let back = MonitorHistory::from_parts(Some("c".into()), logs.clone(), commits.clone(), HOUR, 5, u64::MAX);
        assert_eq!(back, h, "a faithful copy comes back as it was");
        // Out of order, going backwards, too long: the rules apply again.
        let mut shuffled = logs.clone();
        shuffled[0].2.reverse();
        let mut long = commits.clone();
        long[0].4 = (0..50).map(|i| Observation { committed: i, latest: i + 1, at_ms: i as u64 }).collect();
        long[0].3 = u64::MAX;
        let back = MonitorHistory::from_parts(Some("c".into()), shuffled, long, HOUR, 5, u64::MAX);
        let first = back.logs().next().unwrap().2;
        assert_eq!(first.len(), 1, "a history received newest first keeps only what is in order");
        let w = back.commits().next().unwrap().3;
        assert_eq!(w.observations().count(), 5);
        assert_eq!(w.committed_since_ms(), 49, "never later than the observations show");
        // However much is sent, at most a handover's worth is kept.
        let flood = (0..3).map(|p| {
            (
                format!("t{p}"),
                0,
                (0..HANDOVER_MAX_POINTS as i64).map(|i| Point { offset: i, at_ms: i as u64 }).collect(),
            )
        });
        let limits = HistoryLimits { max_points: usize::MAX, max_age_ms: u64::MAX };
        let kept = MonitorHistory::from_parts(Some("c".into()), flood, Vec::new(), limits, 5, u64::MAX);
        assert_eq!(kept.points(), HANDOVER_MAX_POINTS);
        // Nothing from the receiver's future, nothing negative, nothing
        // without a cluster id.
        let future = MonitorHistory::from_parts(Some("c".into()), logs.clone(), commits.clone(), HOUR, 5, 9_000);
        assert_eq!(future.last_seen_ms(), 9_000, "points after 9 s were dropped");
        let negative = vec![("t".to_string(), 0, vec![Point { offset: -5, at_ms: 1 }, Point { offset: 3, at_ms: 2 }])];
        let bad_obs = vec![(
            "g".to_string(),
            "t".to_string(),
            0,
            0,
            vec![
                Observation { committed: 10, latest: 5, at_ms: 1 },
                Observation { committed: i64::MIN, latest: 0, at_ms: 2 },
            ],
        )];
        let cleaned = MonitorHistory::from_parts(Some("c".into()), negative, bad_obs, HOUR, 5, u64::MAX);
        assert_eq!(cleaned.points(), 1);
        assert_eq!(cleaned.observations(), 0);
        assert_eq!(MonitorHistory::from_parts(None, logs, commits, HOUR, 5, u64::MAX), MonitorHistory::default());
    }

    #[test]
    fn a_history_that_ended_before_the_window_starts_afresh() {
        let mut h = busy(1, 10);
        let mut s = crate::testing::one_group_snapshot("t", "g", 1, (0, 100_000), 100_000);
        // Two hours later: interpolating across the gap would guess.
        h.observe(&mut s, 7_200_000, HOUR, 5);
        assert_eq!(h.points(), 1);
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]
        /// For any growing log, the lag of a committed offset is never
        /// negative, never more than the history's age unless flagged as a
        /// bound, 0 when caught up, and grows as the committed offset falls.
        #[test]
        fn lag_seconds_is_sane_for_any_history(
            steps in proptest::collection::vec((0i64..50, 1u64..5000), 1..80),
            probe in 0i64..5000,
        ) {
            let mut h = LogHistory::default();
            let (mut offset, mut t) = (0i64, 0u64);
            for (d, dt) in steps {
                offset += d;
                t += dt;
                h.record(offset, t, HOUR);
            }
            let now = t + 1000;
            let oldest = h.points().next().unwrap().at_ms;
            let committed = probe.min(offset);
            if let Some(l) = h.lag_seconds(committed, now) {
                prop_assert!(l.seconds() >= 0.0);
                if !l.is_lower_bound() {
                    prop_assert!(l.seconds() <= (now - oldest) as f64 / 1000.0 + 1e-9);
                }
                if committed >= offset {
                    prop_assert_eq!(l, LagSeconds::Exact(0.0));
                }
                if let Some(less) = h.lag_seconds(committed - 1, now) {
                    prop_assert!(less.seconds() + 1e-9 >= l.seconds());
                }
            }
        }
    }
}
