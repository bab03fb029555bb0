//! What one collection saw of one Kafka cluster.
//!
//! A snapshot is self-contained and immutable: the monitor it belongs to, the
//! cluster id it was read from, and everything read in that cycle. Metrics
//! and API answers are rendered from snapshots, never from a live client, so
//! a sample can only carry the cluster id it was collected from.

use serde::{Deserialize, Serialize};

use crate::ids::{Generation, MonitorId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub partition: i32,
    /// None when the partition has no leader (offline).
    pub leader: Option<i32>,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Log start offset (oldest); None when it could not be read this cycle.
    pub earliest: Option<i64>,
    /// High watermark (next offset to be written); None when it could not be read.
    pub latest: Option<i64>,
    /// Why metadata or offsets are missing, when they are.
    pub error: Option<String>,
}

impl PartitionSnapshot {
    pub fn under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
    pub fn offline(&self) -> bool {
        self.leader.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSnapshot {
    pub name: String,
    pub partitions: Vec<PartitionSnapshot>,
}

/// One group's committed offset on one partition, and the lag derived from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// `max(0, latest − committed)`; None when the latest offset is unknown this cycle.
    pub lag: Option<i64>,
    /// The committed offset is below the log start: records were deleted before being consumed.
    pub data_loss: bool,
    /// The committed offset is above the high watermark (lag is reported as
    /// 0): the topic was deleted and re-created, or its log truncated, since
    /// the group committed. Never hidden inside a lag of 0.
    #[serde(default)]
    pub ahead_of_log: bool,
    /// How long ago the log reached the committed offset, in milliseconds
    /// (see `history`); None without enough history.
    #[serde(default)]
    pub lag_ms: Option<u64>,
    /// `lag_ms` is only a lower bound: the committed offset is older than the history.
    #[serde(default)]
    pub lag_ms_is_lower_bound: bool,
    /// Estimated milliseconds until retention deletes the committed offset
    /// (see `history`); None when the partition had no writes in the history.
    #[serde(default)]
    pub retention_margin_ms: Option<u64>,
    /// Burrow-style verdict over the last observations; None before the first.
    #[serde(default)]
    pub verdict: Option<crate::history::Verdict>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    pub group_id: String,
    /// Kafka's group state, e.g. "Stable", "Empty"; "Unknown" when not described.
    pub state: String,
    pub members: u32,
    pub coordinator: Option<i32>,
    /// Only partitions that have a commit. A partition with no commit has no entry (no lag series).
    pub offsets: Vec<GroupOffset>,
    pub error: Option<String>,
    /// The group's description (state, members) could not be read this
    /// cycle: `state` and `members` are placeholders and have no series.
    #[serde(default)]
    pub description_unread: bool,
    /// The group's committed offsets could not be read this cycle: `offsets`
    /// is empty for that reason, not because nothing was committed.
    #[serde(default)]
    pub offsets_unread: bool,
    /// The worst of its partitions' verdicts, Burrow-style; None before the first.
    #[serde(default)]
    pub verdict: Option<crate::history::GroupVerdict>,
    /// The group's protocol type: "consumer", "connect", "" for a group that
    /// only commits offsets; None when the cluster did not say.
    #[serde(default)]
    pub protocol_type: Option<String>,
    /// "classic" or "consumer" (KIP-848), also "share" or "streams", from
    /// brokers that report it (ListGroups v5+); None from older brokers.
    #[serde(default)]
    pub group_type: Option<String>,
}

impl GroupSnapshot {
    /// Whether everything about the group was read this cycle; an unread
    /// group has no status, and no series for what was not read.
    pub fn fully_read(&self) -> bool {
        !self.description_unread && !self.offsets_unread
    }

    /// Lag summed per topic; topics with a partition of unknown lag are left out.
    pub fn lag_by_topic(&self) -> Vec<(String, i64)> {
        self.by_topic().into_iter().filter_map(|t| Some((t.topic.to_string(), t.lag_sum?))).collect()
    }

    /// Per-topic figures in one pass over the group's offsets (a wide group
    /// with many topics must not be rescanned once per topic), topics in
    /// name order. Sums saturate: offsets come from the network.
    pub fn by_topic(&self) -> Vec<GroupTopic<'_>> {
        let mut topics: std::collections::BTreeMap<&str, GroupTopic<'_>> = Default::default();
        for o in &self.offsets {
            let t = topics.entry(o.topic.as_str()).or_insert_with(|| GroupTopic {
                topic: o.topic.as_str(),
                committed_sum: 0,
                lag_sum: None,
                max_lag_ms: None,
                partitions: 0,
                lag_unknown: false,
            });
            t.partitions += 1;
            t.committed_sum = t.committed_sum.saturating_add(o.committed);
            match o.lag {
                Some(lag) => t.lag_sum = Some(t.lag_sum.unwrap_or(0).saturating_add(lag)),
                None => t.lag_unknown = true,
            }
            if let Some(ms) = o.lag_ms {
                t.max_lag_ms = Some(t.max_lag_ms.unwrap_or(0).max(ms));
            }
        }
        // A sum or a maximum over part of a topic's partitions is not the
        // topic's: withheld while any partition's lag is unknown (its leader
        // unread), so an alert on it is not silently cleared.
        topics
            .into_values()
            .map(|mut t| {
                if t.lag_unknown {
                    t.lag_sum = None;
                    t.max_lag_ms = None;
                }
                t
            })
            .collect()
    }
}

/// One group's figures on one topic, summed over its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupTopic<'a> {
    pub topic: &'a str,
    /// Partitions of the topic with a commit.
    pub partitions: usize,
    /// Sum of committed offsets.
    pub committed_sum: i64,
    /// Sum of lag over the topic's partitions; None when any partition's
    /// lag is unknown this cycle (a partial sum is not the topic's).
    pub lag_sum: Option<i64>,
    /// Largest lag in seconds (as milliseconds); None without history, or
    /// when any partition's lag is unknown this cycle.
    pub max_lag_ms: Option<u64>,
    /// Some partition's lag is unknown this cycle.
    pub lag_unknown: bool,
}

/// Why a broker's part of a cycle could not be read, by kind: what an
/// operator acts on differs (a refused connection is a broker down or a
/// port closed to kollector; a timeout is a stuck or overloaded broker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerErrorKind {
    /// No answer within the broker's budget (stuck, paused, overloaded, cut one way).
    Timeout,
    /// The connection could not be made or broke (refused, reset, unreachable).
    Connection,
    /// TLS or SASL refused.
    Authentication,
    /// The broker answered with an error code.
    Kafka,
    /// The broker at that address belongs to another cluster (a DNS change,
    /// a broker replaced): refused, none of its answers used.
    WrongCluster,
}

impl BrokerErrorKind {
    pub const ALL: [BrokerErrorKind; 5] = [
        BrokerErrorKind::Timeout,
        BrokerErrorKind::Connection,
        BrokerErrorKind::Authentication,
        BrokerErrorKind::Kafka,
        BrokerErrorKind::WrongCluster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BrokerErrorKind::Timeout => "timeout",
            BrokerErrorKind::Connection => "connection",
            BrokerErrorKind::Authentication => "authentication",
            BrokerErrorKind::Kafka => "kafka",
            BrokerErrorKind::WrongCluster => "wrong_cluster",
        }
    }

    pub fn parse(s: &str) -> Option<BrokerErrorKind> {
        BrokerErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A broker this monitor could not (fully) read from in one cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerError {
    pub broker: i32,
    pub kind: BrokerErrorKind,
    /// What failed and why, for people (e.g. "ListOffsets: no answer within 2s").
    pub message: String,
}

/// One successful collection of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub monitor: MonitorId,
    pub generation: Generation,
    pub cluster_id: String,
    pub controller_id: Option<i32>,
    pub brokers: Vec<Broker>,
    pub topics: Vec<TopicSnapshot>,
    pub groups: Vec<GroupSnapshot>,
    /// Unix time in milliseconds when the collection finished.
    pub collected_at_ms: u64,
    /// How long the collection took, in milliseconds.
    pub duration_ms: u64,
    /// Why the snapshot is partial (a broker down, a call the cluster does not
    /// support, …). Empty for a complete snapshot.
    pub warnings: Vec<String>,
    /// Facts about how the collection was made that do not make it partial,
    /// e.g. that consumer groups were read through librdkafka and why.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Brokers whose requests failed this cycle (at most one entry per
    /// broker: the first failure), so the partitions they lead and the
    /// groups they coordinate are missing from this snapshot.
    #[serde(default)]
    pub broker_errors: Vec<BrokerError>,
    /// Brokers that throttled this monitor's requests this cycle (quota
    /// exceeded, KIP-219): broker id → the longest throttle it asked, in
    /// milliseconds. The monitor sent that broker nothing until each
    /// throttle ended.
    #[serde(default)]
    pub broker_throttle_ms: std::collections::BTreeMap<i32, u32>,
    /// The throttles could not be read this cycle (the cluster was read
    /// through librdkafka, whose throttle reports need its statistics,
    /// which are off): `broker_throttle_ms` says nothing, and no throttle
    /// series is exported (never a 0 that was not read).
    #[serde(default)]
    pub throttles_unread: bool,
    /// How finely its group metrics are exported (the monitor's
    /// `group_metrics`, carried with the snapshot so every node renders it
    /// the same way).
    #[serde(default)]
    pub group_metrics: crate::GroupMetrics,
    /// The end-to-end probe's numbers, when the monitor runs one.
    #[serde(default)]
    pub e2e: Option<crate::e2e::E2eSnapshot>,
}

impl Snapshot {
    /// Every (group, committed partition) pair whose series are exported
    /// per partition: none when the monitor exports group metrics per
    /// topic only.
    pub fn group_partitions(&self) -> impl Iterator<Item = (&GroupSnapshot, &GroupOffset)> {
        let per_partition = self.group_metrics == crate::GroupMetrics::Partition;
        self.groups.iter().filter(move |_| per_partition).flat_map(|g| g.offsets.iter().map(move |o| (g, o)))
    }

    pub fn degraded(&self) -> bool {
        !self.warnings.is_empty()
    }

    /// Partitions with a leader whose offsets could not be read this cycle
    /// (offline partitions are counted by their own metric, not here).
    pub fn missing_partitions(&self) -> usize {
        self.topics.iter().flat_map(|t| &t.partitions).filter(|p| p.leader.is_some() && p.latest.is_none()).count()
    }

    /// Groups listed but not fully read this cycle.
    pub fn missing_groups(&self) -> usize {
        self.groups.iter().filter(|g| !g.fully_read()).count()
    }

    /// Whether something the cluster has could not be read this cycle: a
    /// broker failed, a partition's offsets or a group are missing.
    pub fn partial(&self) -> bool {
        !self.broker_errors.is_empty() || self.missing_partitions() > 0 || self.missing_groups() > 0
    }
    pub fn partition_count(&self) -> usize {
        self.topics.iter().map(|t| t.partitions.len()).sum()
    }
}

/// What a committed offset says against its partition's log offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPosition {
    /// `max(0, latest − committed)`; None when `latest` is unknown (never -1 or NaN).
    pub lag: Option<i64>,
    /// The commit points below the log start: records were deleted unread.
    pub data_loss: bool,
    /// The commit points above the high watermark: a re-created topic or a
    /// truncated log (lag is still 0, but flagged, not hidden).
    pub ahead_of_log: bool,
}

/// Lag of a committed offset, in saturating arithmetic (offsets come from
/// the network: `latest − committed` must not overflow on hostile values).
pub fn compute_lag(committed: i64, earliest: Option<i64>, latest: Option<i64>) -> CommitPosition {
    CommitPosition {
        lag: latest.map(|l| l.saturating_sub(committed).max(0)),
        data_loss: earliest.is_some_and(|e| committed < e),
        ahead_of_log: latest.is_some_and(|l| committed > l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(lag: Option<i64>, data_loss: bool, ahead_of_log: bool) -> CommitPosition {
        CommitPosition { lag, data_loss, ahead_of_log }
    }

    #[test]
    fn lag_rules() {
        assert_eq!(compute_lag(3, Some(0), Some(10)), pos(Some(7), false, false));
        assert_eq!(compute_lag(10, Some(0), Some(10)), pos(Some(0), false, false));
        // Above the high watermark: lag 0, but flagged.
        assert_eq!(compute_lag(12, Some(0), Some(10)), pos(Some(0), false, true));
        assert_eq!(compute_lag(2, Some(5), Some(10)), pos(Some(8), true, false));
        assert_eq!(compute_lag(2, None, None), pos(None, false, false));
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::proptest_config())]
        /// Hostile offsets (any i64, from a broker or a peer) never overflow,
        /// never give a negative lag, and the flags agree with the lag.
        #[test]
        fn lag_is_sane_for_any_offsets(
            committed in proptest::num::i64::ANY,
            earliest in proptest::option::of(proptest::num::i64::ANY),
            latest in proptest::option::of(proptest::num::i64::ANY),
        ) {
            let p = compute_lag(committed, earliest, latest);
            proptest::prop_assert_eq!(p.lag.is_some(), latest.is_some());
            proptest::prop_assert!(p.lag.is_none_or(|l| l >= 0));
            if p.ahead_of_log {
                proptest::prop_assert_eq!(p.lag, Some(0));
            }
            if let (Some(l), Some(lag)) = (latest, p.lag) {
                proptest::prop_assert_eq!(lag as i128, (l as i128 - committed as i128).clamp(0, i64::MAX as i128));
            }
        }
    }

    #[test]
    fn partition_health() {
        let p = PartitionSnapshot {
            partition: 0,
            leader: None,
            replicas: vec![1, 2, 3],
            isr: vec![1],
            earliest: None,
            latest: None,
            error: None,
        };
        assert!(p.offline() && p.under_replicated());
    }

    #[test]
    fn lag_by_topic_sums_known_lag_only() {
        let o = |t: &str, p, lag| GroupOffset {
            topic: t.into(),
            partition: p,
            committed: 0,
            lag,
            data_loss: false,
            ahead_of_log: false,
            lag_ms: None,
            lag_ms_is_lower_bound: false,
            retention_margin_ms: None,
            verdict: None,
        };
        let g = GroupSnapshot {
            group_id: "g".into(),
            state: "Stable".into(),
            members: 1,
            coordinator: Some(1),
            offsets: vec![o("a", 0, Some(2)), o("a", 1, Some(3)), o("b", 0, None)],
            error: None,
            description_unread: false,
            offsets_unread: false,
            verdict: None,
            protocol_type: None,
            group_type: None,
        };
        // Topic b's only partition has unknown lag: no sum for b.
        assert_eq!(g.lag_by_topic(), vec![("a".to_string(), 5)]);
        let mut partial = g.clone();
        partial.offsets.push(o("a", 2, None));
        assert_eq!(partial.lag_by_topic(), vec![], "a partial sum is not the topic's");
        assert!(partial.by_topic()[0].lag_unknown);
    }
}
