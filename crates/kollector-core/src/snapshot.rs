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
    /// Lag summed per topic, over the partitions whose lag is known.
    pub fn lag_by_topic(&self) -> Vec<(String, i64)> {
        let mut sums: std::collections::BTreeMap<&str, i64> = Default::default();
        for o in &self.offsets {
            if let Some(lag) = o.lag {
                *sums.entry(&o.topic).or_default() += lag;
            }
        }
        sums.into_iter().map(|(t, s)| (t.to_string(), s)).collect()
    }
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
}

impl Snapshot {
    pub fn degraded(&self) -> bool {
        !self.warnings.is_empty()
    }
    pub fn partition_count(&self) -> usize {
        self.topics.iter().map(|t| t.partitions.len()).sum()
    }
}

/// Lag of a committed offset: `max(0, latest − committed)` (a commit can be
/// read after a newer high watermark, so negative differences are clock skew
/// between two reads, not lag), plus whether the commit points below the log
/// start (data loss). Unknown `latest` gives unknown lag, never -1 or NaN.
pub fn compute_lag(committed: i64, earliest: Option<i64>, latest: Option<i64>) -> (Option<i64>, bool) {
    let lag = latest.map(|l| (l - committed).max(0));
    let data_loss = earliest.is_some_and(|e| committed < e);
    (lag, data_loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_rules() {
        assert_eq!(compute_lag(3, Some(0), Some(10)), (Some(7), false));
        assert_eq!(compute_lag(12, Some(0), Some(10)), (Some(0), false));
        assert_eq!(compute_lag(2, Some(5), Some(10)), (Some(8), true));
        assert_eq!(compute_lag(2, None, None), (None, false));
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
            verdict: None,
            protocol_type: None,
            group_type: None,
        };
        assert_eq!(g.lag_by_topic(), vec![("a".to_string(), 5)]);
    }
}
