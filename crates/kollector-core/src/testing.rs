//! Shared by every crate's property tests: one configuration, so CI runs a
//! fixed number of cases from a fixed seed (a failure reproduces) and never
//! writes regression files into the tree.

use proptest::test_runner::{Config, RngSeed};

/// 512 cases from a fixed seed, no failure persistence.
pub fn proptest_config() -> Config {
    Config { cases: 512, failure_persistence: None, rng_seed: RngSeed::Fixed(0x6b6f6c6c), ..Config::default() }
}

/// A snapshot of one topic of `partitions` partitions, each from `earliest`
/// to `latest`, and one group committed at `committed` on every one of them
/// (monitor "m", cluster "c"): what the history's tests and benchmark feed
/// a monitor cycle after cycle.
pub fn one_group_snapshot(
    topic: &str,
    group: &str,
    partitions: i32,
    (earliest, latest): (i64, i64),
    committed: i64,
) -> crate::Snapshot {
    use crate::snapshot::{GroupOffset, GroupSnapshot, PartitionSnapshot, TopicSnapshot};
    crate::Snapshot {
        monitor: crate::MonitorId::new("m").expect("a valid id"),
        generation: 1,
        cluster_id: "c".into(),
        controller_id: None,
        brokers: Vec::new(),
        topics: vec![TopicSnapshot {
            name: topic.into(),
            partitions: (0..partitions)
                .map(|partition| PartitionSnapshot {
                    partition,
                    leader: Some(1),
                    replicas: vec![1],
                    isr: vec![1],
                    earliest: Some(earliest),
                    latest: Some(latest),
                    error: None,
                })
                .collect(),
        }],
        groups: vec![GroupSnapshot {
            group_id: group.into(),
            state: "Stable".into(),
            members: 1,
            coordinator: Some(1),
            offsets: (0..partitions)
                .map(|partition| GroupOffset {
                    topic: topic.into(),
                    partition,
                    committed,
                    lag: Some((latest - committed).max(0)),
                    data_loss: false,
                    ahead_of_log: false,
                    lag_ms: None,
                    lag_ms_is_lower_bound: false,
                    retention_margin_ms: None,
                    verdict: None,
                })
                .collect(),
            error: None,
            description_unread: false,
            offsets_unread: false,
            verdict: None,
            protocol_type: Some("consumer".into()),
            group_type: None,
        }],
        collected_at_ms: 0,
        duration_ms: 0,
        warnings: Vec::new(),
        notes: Vec::new(),
        broker_errors: Vec::new(),
        broker_throttle_ms: Default::default(),
        throttles_unread: false,
        group_metrics: Default::default(),
        e2e: None,
    }
}
