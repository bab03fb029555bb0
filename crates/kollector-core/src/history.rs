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
//! **Verdicts** follow Burrow's evaluator over a window of the last N
//! observations (committed offset, latest offset, time), one per cycle:
//! 1. lag 0 now → OK;
//! 2. committed unchanged across the window and for longer than the window
//!    spans, lag > 0: STALL if the log moved meanwhile (the consumer is
//!    stuck while records arrive), STOP if it did not (the consumer stopped);
//! 3. committed went backwards and did not get back → REWIND;
//! 4. if no observation in the window had lag 0: WARN when lag never fell
//!    and grew from first to last;
//! 5. otherwise OK.
//!
//! Burrow sees every commit (it reads `__consumer_offsets`); a poller sees
//! one observation per cycle, so it cannot tell "no commits" from "the same
//! offset committed again": STOP and STALL are told apart by whether the log
//! moved, and a verdict needs a full window except OK and REWIND.

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
    /// The group's status from its partitions' verdicts (OK for none).
    pub fn of(verdicts: impl IntoIterator<Item = Verdict>) -> GroupVerdict {
        match verdicts.into_iter().max_by_key(|v| v.severity()) {
            None | Some(Verdict::Ok) => GroupVerdict::Ok,
            Some(Verdict::Warn) => GroupVerdict::Warn,
            Some(_) => GroupVerdict::Err,
        }
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
    /// there is one.
    pub fn verdict(&self, window: usize) -> Option<Verdict> {
        let last = *self.observations.back()?;
        if last.lag() == 0 {
            return Some(Verdict::Ok);
        }
        let obs: Vec<Observation> = self.observations.iter().copied().collect();
        // REWIND: a drop that no later observation recovered from.
        let rewound = obs
            .windows(2)
            .enumerate()
            .any(|(i, w)| w[1].committed < w[0].committed && obs[i + 1..].iter().all(|o| o.committed < w[0].committed));
        if rewound {
            return Some(Verdict::Rewind);
        }
        if obs.len() < window.max(2) {
            return Some(Verdict::Ok);
        }
        let first = obs[0];
        let span = last.at_ms - first.at_ms;
        let unchanged = obs.iter().all(|o| o.committed == last.committed);
        if unchanged && last.at_ms.saturating_sub(self.committed_since_ms) >= span {
            let log_moved = obs.iter().any(|o| o.latest != first.latest);
            return Some(if log_moved { Verdict::Stall } else { Verdict::Stop });
        }
        if obs.iter().any(|o| o.lag() == 0) {
            return Some(Verdict::Ok);
        }
        let never_fell = obs.windows(2).all(|w| w[1].lag() >= w[0].lag());
        if never_fell && last.lag() > first.lag() {
            return Some(Verdict::Warn);
        }
        Some(Verdict::Ok)
    }
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
            let mut kept: BTreeMap<String, BTreeMap<i32, CommitWindow>> = BTreeMap::new();
            for o in &mut g.offsets {
                let mut w = old.get_mut(&o.topic).and_then(|m| m.remove(&o.partition)).unwrap_or_default();
                // Observations from before a long gap (a restart after a
                // while) say nothing about the consumer now.
                if w.observations().last().is_some_and(|last| last.at_ms < stale_before || last.at_ms > now_ms) {
                    w = CommitWindow::default();
                }
                if let Some(lag) = o.lag {
                    w.record(
                        Observation { committed: o.committed, latest: o.committed.saturating_add(lag), at_ms: now_ms },
                        window,
                    );
                    o.verdict = w.verdict(window);
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
                        let ahead = (o.committed - start).max(0) as f64;
                        o.retention_margin_ms = Some((ahead / rate * 1000.0).round() as u64);
                    }
                }
                kept.entry(o.topic.clone()).or_default().insert(o.partition, w);
            }
            g.verdict = Some(GroupVerdict::of(g.offsets.iter().filter_map(|o| o.verdict)));
            commits.insert(g.group_id.clone(), kept);
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

    #[test]
    fn each_burrow_verdict_from_a_scripted_consumer() {
        // Caught up now.
        assert_eq!(window(&[(0, 10), (5, 10), (10, 10)], 1000).verdict(5), Some(Verdict::Ok));
        // Committing and keeping up (lag 0 at some point in the window).
        assert_eq!(window(&[(0, 5), (5, 10), (10, 10), (12, 15), (15, 16)], 1000).verdict(5), Some(Verdict::Ok));
        // Stopped: nothing moves, lag stays.
        assert_eq!(window(&[(10, 20); 6], 1000).verdict(5), Some(Verdict::Stop));
        // Stalled: committed stuck while records arrive.
        assert_eq!(
            window(&[(10, 20), (10, 25), (10, 30), (10, 35), (10, 40), (10, 45)], 1000).verdict(5),
            Some(Verdict::Stall)
        );
        // Rewound and not recovered.
        assert_eq!(window(&[(50, 60), (55, 60), (20, 60), (25, 60)], 1000).verdict(5), Some(Verdict::Rewind));
        // ...recovered: not REWIND any more.
        assert_ne!(window(&[(50, 60), (20, 60), (55, 70), (60, 80), (65, 90)], 1000).verdict(5), Some(Verdict::Rewind));
        // Falling behind: committing, but lag grows across the window.
        assert_eq!(window(&[(0, 10), (5, 20), (10, 30), (15, 40), (20, 50)], 1000).verdict(5), Some(Verdict::Warn));
        // Behind but catching up: OK.
        assert_eq!(window(&[(0, 50), (10, 52), (20, 54), (30, 56), (40, 58)], 1000).verdict(5), Some(Verdict::Ok));
        // Not enough observations to judge anything but OK and REWIND.
        assert_eq!(window(&[(10, 20), (10, 20)], 1000).verdict(5), Some(Verdict::Ok));
        assert_eq!(CommitWindow::default().verdict(5), None);
    }

    #[test]
    fn a_verdict_is_left_when_the_behaviour_changes() {
        let mut w = window(&[(10, 20); 6], 1000);
        assert_eq!(w.verdict(5), Some(Verdict::Stop));
        w.record(Observation { committed: 20, latest: 20, at_ms: 10_000 }, 5);
        assert_eq!(w.verdict(5), Some(Verdict::Ok));
    }

    #[test]
    fn group_status_is_the_worst_partition_with_burrows_codes() {
        assert_eq!(GroupVerdict::of([]), GroupVerdict::Ok);
        assert_eq!(GroupVerdict::of([Verdict::Ok, Verdict::Warn]).code(), 2);
        assert_eq!(GroupVerdict::of([Verdict::Warn, Verdict::Stall]), GroupVerdict::Err);
        assert_eq!(Verdict::ALL.map(Verdict::code), [1, 2, 4, 5, 6]);
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
        assert_eq!(o.verdict, Some(Verdict::Ok), "lag is steady, not growing");
        assert_eq!(s.groups[0].verdict, Some(GroupVerdict::Ok));
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
