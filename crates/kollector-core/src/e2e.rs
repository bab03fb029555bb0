//! The end-to-end probe: its settings, and what it reports with each snapshot.
//!
//! Offsets say a cluster holds data, not that it works. A monitor with an
//! `e2e_probe` produces one message per partition of a probe topic every
//! interval and consumes them back, measuring what a user of the cluster
//! would live through: produce acknowledgement, round trip and offset
//! commit latency, and messages that failed, never came back (lost), came
//! twice or out of order. The numbers are cumulative for the life of the
//! probe (which is the life of the monitor's Kafka client) and travel with
//! every snapshot, so they reach `/metrics` the same way in standalone and
//! cluster mode.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The probe topic unless the spec names another.
pub const DEFAULT_TOPIC: &str = "kollector-e2e";

/// Upper bounds (seconds) of the latency histograms' buckets: exponential
/// from 5 ms as KMinion's, up to 5 minutes (the longest round-trip SLA).
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// A validated probe configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2eProbeConfig {
    pub topic: String,
    /// One message per partition this often.
    #[serde(with = "crate::spec::humantime_serde_compat")]
    pub interval: Duration,
    /// A produce not acknowledged within this fails.
    #[serde(with = "crate::spec::humantime_serde_compat")]
    pub ack_sla: Duration,
    /// An acknowledged message not consumed back within this is lost.
    #[serde(with = "crate::spec::humantime_serde_compat")]
    pub roundtrip_sla: Duration,
    /// An offset commit slower than this is reported above its SLA.
    #[serde(with = "crate::spec::humantime_serde_compat")]
    pub commit_sla: Duration,
    /// Partitions the topic gets per broker when it is created (so every
    /// broker leads at least one).
    pub partitions_per_broker: u32,
    /// Replicas of each probe partition when the topic is created.
    pub replication_factor: u16,
}

/// The probe settings as a user writes them (`[monitors.e2e_probe]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eProbeInput {
    /// Default `kollector-e2e`.
    pub topic: Option<String>,
    /// Default 1s; 100ms..=1m.
    pub interval: Option<String>,
    /// Default 5s.
    pub ack_sla: Option<String>,
    /// Default 20s.
    pub roundtrip_sla: Option<String>,
    /// Default 10s.
    pub commit_sla: Option<String>,
    /// Default 1; 1..=16.
    pub partitions_per_broker: Option<u32>,
    /// Default 1; 1..=7.
    pub replication_factor: Option<u16>,
}

/// Why `name` cannot be a Kafka topic, if it cannot.
pub fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 249 {
        Some("must be 1 to 249 characters".into())
    } else if name == "." || name == ".." {
        Some("cannot be \".\" or \"..\"".into())
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        Some(format!("{name:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"))
    } else {
        None
    }
}

impl E2eProbeInput {
    /// The configuration, or every bad field as (field under `e2e_probe.`, message).
    pub fn validate(&self) -> Result<E2eProbeConfig, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let topic = self.topic.clone().unwrap_or_else(|| DEFAULT_TOPIC.to_string());
        if let Some(p) = topic_name_problem(&topic) {
            errors.push(("e2e_probe.topic".to_string(), p));
        }
        let mut duration = |field: &str, v: &Option<String>, default: Duration, min: Duration, max: Duration| {
            let Some(text) = v else { return default };
            match humantime::parse_duration(text) {
                Ok(d) if d >= min && d <= max => d,
                Ok(d) => {
                    errors.push((
                        format!("e2e_probe.{field}"),
                        format!(
                            "{} is outside {}..={}",
                            humantime::format_duration(d),
                            humantime::format_duration(min),
                            humantime::format_duration(max)
                        ),
                    ));
                    default
                }
                Err(e) => {
                    errors.push((format!("e2e_probe.{field}"), format!("{text:?}: {e}")));
                    default
                }
            }
        };
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let interval = duration("interval", &self.interval, s(1), ms(100), s(60));
        let ack_sla = duration("ack_sla", &self.ack_sla, s(5), ms(10), s(60));
        let roundtrip_sla = duration("roundtrip_sla", &self.roundtrip_sla, s(20), ms(10), s(300));
        let commit_sla = duration("commit_sla", &self.commit_sla, s(10), ms(10), s(60));
        let partitions_per_broker = self.partitions_per_broker.unwrap_or(1);
        if !(1..=16).contains(&partitions_per_broker) {
            errors
                .push(("e2e_probe.partitions_per_broker".into(), format!("{partitions_per_broker} is outside 1..=16")));
        }
        let replication_factor = self.replication_factor.unwrap_or(1);
        if !(1..=7).contains(&replication_factor) {
            errors.push(("e2e_probe.replication_factor".into(), format!("{replication_factor} is outside 1..=7")));
        }
        if errors.is_empty() {
            Ok(E2eProbeConfig {
                topic,
                interval,
                ack_sla,
                roundtrip_sla,
                commit_sla,
                partitions_per_broker,
                replication_factor,
            })
        } else {
            Err(errors)
        }
    }
}

impl E2eProbeConfig {
    /// The input that validates to this configuration.
    pub fn to_input(&self) -> E2eProbeInput {
        let text = |d: Duration| Some(humantime::format_duration(d).to_string());
        E2eProbeInput {
            topic: Some(self.topic.clone()),
            interval: text(self.interval),
            ack_sla: text(self.ack_sla),
            roundtrip_sla: text(self.roundtrip_sla),
            commit_sla: text(self.commit_sla),
            partitions_per_broker: Some(self.partitions_per_broker),
            replication_factor: Some(self.replication_factor),
        }
    }
}

/// A latency histogram with [`LATENCY_BUCKETS`]: per-bucket (not
/// cumulative) counts, the last one for everything above the largest bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub counts: Vec<u64>,
    /// The sum of every latency observed, in microseconds (an integer, so
    /// snapshots compare exactly).
    pub sum_micros: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { counts: vec![0; LATENCY_BUCKETS.len() + 1], sum_micros: 0 }
    }
}

impl LatencyHistogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS.len());
        if self.counts.len() != LATENCY_BUCKETS.len() + 1 {
            self.counts.resize(LATENCY_BUCKETS.len() + 1, 0);
        }
        self.counts[i] += 1;
        self.sum_micros = self.sum_micros.saturating_add(d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }

    /// (upper bound, count) per bucket, +Inf last: what an exposition writes.
    /// A histogram with the wrong number of buckets (a peer's bug) reads as
    /// empty, and no count is so large that the cumulative sums an encoder
    /// makes of them could overflow (counts may come from the network).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let ok = self.counts.len() == LATENCY_BUCKETS.len() + 1;
        let cap = u64::MAX / 64;
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, b)| (b, if ok { self.counts[i].min(cap) } else { 0 }))
            .collect()
    }
}

/// One probe partition's numbers, cumulative for the life of the probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2ePartition {
    pub partition: i32,
    /// The partition's leader when the probe last looked (None: no leader).
    pub leader: Option<i32>,
    pub produced: u64,
    /// Not acknowledged within the ack SLA, or refused.
    pub produce_failed: u64,
    pub received: u64,
    /// Acknowledged, and not consumed back within the round-trip SLA.
    pub lost: u64,
    /// Consumed back after being counted lost.
    pub late: u64,
    /// Consumed back a second time.
    pub duplicates: u64,
    /// Consumed back after a later message of the same partition.
    pub out_of_order: u64,
    pub produce_latency: LatencyHistogram,
    pub roundtrip_latency: LatencyHistogram,
}

/// What the probe reports with a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2eSnapshot {
    pub topic: String,
    pub partitions: Vec<E2ePartition>,
    /// Produced and neither acknowledged-and-received nor failed or lost yet.
    pub in_flight: u64,
    pub commits: u64,
    pub commits_failed: u64,
    pub commit_latency: LatencyHistogram,
    /// Brokers leading no probe partition: the probe cannot speak for them.
    pub brokers_without_partition: Vec<i32>,
    /// Why the probe is not (fully) running, e.g. the topic could not be created.
    pub problems: Vec<String>,
    pub ack_sla_ms: u64,
    pub roundtrip_sla_ms: u64,
    pub commit_sla_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bounds_and_round_trip() {
        let c = E2eProbeInput::default().validate().unwrap();
        assert_eq!(
            (c.topic.as_str(), c.interval, c.partitions_per_broker),
            ("kollector-e2e", Duration::from_secs(1), 1)
        );
        assert_eq!(c.to_input().validate().unwrap(), c);
        let bad = E2eProbeInput {
            topic: Some("no spaces".into()),
            interval: Some("10ms".into()),
            ack_sla: Some("soon".into()),
            partitions_per_broker: Some(0),
            replication_factor: Some(9),
            ..Default::default()
        };
        let fields: Vec<String> = bad.validate().unwrap_err().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "e2e_probe.topic",
                "e2e_probe.interval",
                "e2e_probe.ack_sla",
                "e2e_probe.partitions_per_broker",
                "e2e_probe.replication_factor"
            ]
        );
    }

    #[test]
    fn histograms_put_each_latency_in_its_bucket() {
        let mut h = LatencyHistogram::default();
        for ms in [1, 5, 6, 900, 120_000] {
            h.observe(Duration::from_millis(ms));
        }
        let b = h.buckets();
        assert_eq!(b[0], (0.005, 2));
        assert_eq!(b[1], (0.01, 1));
        assert_eq!(b[7], (1.0, 1));
        assert_eq!(b[13], (60.0, 0));
        assert_eq!(b[14], (120.0, 1));
        assert_eq!(b[16], (f64::INFINITY, 0));
        assert_eq!(h.count(), 5);
        let broken = LatencyHistogram { counts: vec![1, 2], sum_micros: 1 };
        assert!(broken.buckets().iter().all(|(_, n)| *n == 0));
    }
}
