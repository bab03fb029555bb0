//! `/metrics`: Prometheus text exposition rendered from the result store.
//!
//! Kafka series use kafka_exporter's names so existing dashboards and alerts
//! keep working, and every one carries `monitor` and the observed
//! `cluster_id`. They come from the monitor's last snapshot, and only while
//! its latest attempt succeeded: a failing or deleted monitor has no Kafka
//! series (so nothing stale is scraped), and `kollector_monitor_up` says why.
//!
//! Rendering goes through prometheus-client's `Collector`, which handles
//! label escaping and the exposition format; series are generated at scrape
//! time because they appear and disappear with topics, groups and monitors.

use std::fmt;

use kollector_core::{ErrorKind, MonitorState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use kollector_core::MonitorResult;

use crate::store::ResultStore;

type Labels = Vec<(&'static str, String)>;

/// A process-level metric a caller adds (e.g. the manager's own).
#[derive(Clone, Debug)]
pub struct Extra {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
    /// A counter (exposed with `_total`) rather than a gauge.
    pub counter: bool,
}

/// Extra process-level metrics.
pub type ExtraGauges = Vec<Extra>;

/// Renders the store as Prometheus text (format 0.0.4).
pub fn render(store: &ResultStore, extra: ExtraGauges) -> String {
    render_entries(store.all(), extra, true)
}

/// One monitor's series alone (its scrape target's body), if it runs here.
pub fn render_monitor(store: &ResultStore, id: &kollector_core::MonitorId) -> Option<String> {
    store.get(id).map(|r| render_entries(vec![r], Vec::new(), false))
}

/// Renders given entries (the manager builds them from collectors' results).
/// `local_clients` adds this process's open Kafka client count.
pub fn render_entries(entries: Vec<MonitorResult>, extra: ExtraGauges, local_clients: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StoreCollector { entries, extra, local_clients }));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in label data.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!("rendering /metrics failed: {e}");
    }
    out
}

#[derive(Debug)]
struct StoreCollector {
    entries: Vec<MonitorResult>,
    extra: ExtraGauges,
    local_clients: bool,
}

fn gauges<N>(enc: &mut DescriptorEncoder, name: &str, help: &str, samples: Vec<(Labels, N)>) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Histograms from kept bucket counts (prometheus-client's own Histogram
/// observes values; these were observed by the probe, possibly on another
/// node, and arrive as counts).
fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, kollector_core::e2e::LatencyHistogram)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in samples {
        let buckets = h.buckets();
        let count = buckets.iter().map(|(_, n)| *n).fold(0u64, u64::saturating_add);
        metric.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum_seconds(),
            count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn counters(enc: &mut DescriptorEncoder, name: &str, help: &str, samples: Vec<(Labels, u64)>) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_kafka(&mut enc)?;
        self.encode_self(&mut enc)
    }
}

/// Builds one metric family's samples from every current snapshot.
macro_rules! family {
    ($self:ident, |$base:ident, $snap:ident| $body:expr) => {{
        let mut v = Vec::new();
        for entry in &$self.entries {
            if let Some($snap) = entry.current_snapshot() {
                let $base: Labels =
                    vec![("monitor", $snap.monitor.to_string()), ("cluster_id", $snap.cluster_id.clone())];
                v.extend($body);
            }
        }
        v
    }};
}

fn with(base: &Labels, more: &[(&'static str, String)]) -> Labels {
    let mut l = base.clone();
    l.extend_from_slice(more);
    l
}

impl StoreCollector {
    fn encode_kafka(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        gauges(
            enc,
            "kafka_brokers",
            "Number of brokers in the cluster.",
            family!(self, |b, s| [(b, s.brokers.len() as i64)]),
        )?;
        gauges(
            enc,
            "kafka_broker_info",
            "Broker id, address and rack.",
            family!(self, |b, s| s
                .brokers
                .iter()
                .map(|br| {
                    (
                        with(
                            &b,
                            &[
                                ("id", br.id.to_string()),
                                ("address", format!("{}:{}", br.host, br.port)),
                                ("rack", br.rack.clone().unwrap_or_default()),
                                ("controller", (Some(br.id) == s.controller_id).to_string()),
                            ],
                        ),
                        1i64,
                    )
                })
                .collect::<Vec<_>>()),
        )?;
        // What this monitor could and could not read of its cluster.
        gauges(
            enc,
            "kollector_broker_up",
            "1 if this monitor read its part from the broker in the latest cycle, 0 if the broker failed \
             (refused, stuck past its budget, refused the credentials, answered an error): the partitions it \
             leads and the groups it coordinates have no series that cycle.",
            family!(self, |b, s| s
                .brokers
                .iter()
                .map(|br| {
                    let up = !s.broker_errors.iter().any(|e| e.broker == br.id);
                    (with(&b, &[("broker", br.id.to_string())]), up as i64)
                })
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kollector_broker_throttle_seconds",
            "The longest throttle the broker asked of this monitor in the latest cycle (its quota was \
             exceeded; KIP-219): the monitor sent it nothing until the throttle ended. 0 when it asked none.",
            family!(self, |b, s| s
                .brokers
                .iter()
                // Not read (the librdkafka path): no series, not a 0.
                .filter(|_| !s.throttles_unread)
                .map(|br| {
                    let ms = s.broker_throttle_ms.get(&br.id).copied().unwrap_or(0);
                    (with(&b, &[("broker", br.id.to_string())]), f64::from(ms) / 1000.0)
                })
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kollector_broker_error",
            "1 for a broker that failed in the monitor's latest cycle, by kind: timeout, connection, \
             authentication, kafka, wrong_cluster (the message is in monitor show and GetLatest).",
            family!(self, |b, s| s
                .broker_errors
                .iter()
                .map(|e| {
                    (with(&b, &[("broker", e.broker.to_string()), ("kind", e.kind.as_str().to_string())]), 1i64)
                })
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kollector_monitor_partial",
            "1 if the monitor's latest collection could not read everything (a broker failed, partitions or \
             groups missing); kollector_monitor_up stays 1: the cluster answered.",
            family!(self, |b, s| [(b, s.partial() as i64)]),
        )?;
        gauges(
            enc,
            "kollector_monitor_missing_partitions",
            "Partitions with a leader whose offsets could not be read in the latest cycle (no series for them).",
            family!(self, |b, s| [(b, s.missing_partitions() as i64)]),
        )?;
        gauges(
            enc,
            "kollector_monitor_missing_groups",
            "Listed groups that could not be read fully in the latest cycle (groups of a broker that could not \
             list them are not counted: see kollector_broker_up).",
            family!(self, |b, s| [(b, s.missing_groups() as i64)]),
        )?;
        gauges(
            enc,
            "kafka_topic_partitions",
            "Number of partitions of a topic.",
            family!(self, |b, s| s
                .topics
                .iter()
                .map(|t| (with(&b, &[("topic", t.name.clone())]), t.partitions.len() as i64))
                .collect::<Vec<_>>()),
        )?;
        // Per-partition families.
        type PartitionValue<'a> = &'a dyn Fn(&kollector_core::PartitionSnapshot) -> Option<i64>;
        let partition_families: [(&str, &str, PartitionValue); 8] = [
            ("kafka_topic_partition_current_offset", "Latest offset (high watermark) of a partition.", &|p| p.latest),
            ("kafka_topic_partition_oldest_offset", "Oldest offset (log start) of a partition.", &|p| p.earliest),
            ("kafka_topic_partition_leader", "Leader broker id of a partition; -1 when it has none.", &|p| {
                Some(p.leader.unwrap_or(-1) as i64)
            }),
            (
                "kafka_topic_partition_replicas",
                "Number of replicas of a partition.",
                &|p| Some(p.replicas.len() as i64),
            ),
            ("kafka_topic_partition_in_sync_replica", "Number of in-sync replicas of a partition.", &|p| {
                Some(p.isr.len() as i64)
            }),
            (
                "kafka_topic_partition_under_replicated_partition",
                "1 if the partition has fewer in-sync replicas than replicas.",
                &|p| Some(p.under_replicated() as i64),
            ),
            ("kafka_topic_partition_leader_is_preferred", "1 if the leader is the preferred (first) replica.", &|p| {
                Some((p.leader.is_some() && p.replicas.first() == p.leader.as_ref()) as i64)
            }),
            ("kafka_topic_partition_offline", "1 if the partition has no leader.", &|p| Some(p.offline() as i64)),
        ];
        for (name, help, value) in partition_families {
            let samples = family!(self, |b, s| s
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
                .filter_map(|(t, p)| {
                    value(p)
                        .map(|v| (with(&b, &[("topic", t.name.clone()), ("partition", p.partition.to_string())]), v))
                })
                .collect::<Vec<_>>());
            gauges(enc, name, help, samples)?;
        }

        // Consumer groups.
        let partition_labels = |b: &Labels, g: &kollector_core::GroupSnapshot, o: &kollector_core::GroupOffset| {
            with(
                b,
                &[
                    ("consumergroup", g.group_id.clone()),
                    ("topic", o.topic.clone()),
                    ("partition", o.partition.to_string()),
                ],
            )
        };
        let group_partition = |value: &dyn Fn(&kollector_core::GroupOffset) -> Option<i64>| {
            family!(self, |b, s| s
                .group_partitions()
                .filter_map(|(g, o)| value(o).map(|v| (partition_labels(&b, g, o), v)))
                .collect::<Vec<_>>())
        };
        // Milliseconds kept in the snapshot, exported in seconds.
        let group_partition_seconds = |ms: &dyn Fn(&kollector_core::GroupOffset) -> Option<u64>| {
            family!(self, |b, s| s
                .group_partitions()
                .filter_map(|(g, o)| ms(o).map(|ms| (partition_labels(&b, g, o), ms as f64 / 1000.0)))
                .collect::<Vec<_>>())
        };
        gauges(
            enc,
            "kafka_consumergroup_current_offset",
            "Committed offset of a group on a partition (partitions without a commit have no series).",
            group_partition(&|o| Some(o.committed)),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_lag",
            "max(0, latest offset - committed offset) of a group on a partition.",
            group_partition(&|o| o.lag),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_data_loss",
            "1 if a group's committed offset is below the partition's oldest offset (records deleted unread); \
             no series while the partition's oldest offset is unread.",
            family!(self, |b, s| {
                let read: std::collections::HashSet<(&str, i32)> = s
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions
                            .iter()
                            .filter(|p| p.earliest.is_some())
                            .map(move |p| (t.name.as_str(), p.partition))
                    })
                    .collect();
                s.group_partitions()
                    .filter(|(_, o)| read.contains(&(o.topic.as_str(), o.partition)))
                    .map(|(g, o)| (partition_labels(&b, g, o), o.data_loss as i64))
                    .collect::<Vec<_>>()
            }),
        )?;
        // Lag in seconds, verdicts and retention margin (kollector_core::history).
        gauges(
            enc,
            "kafka_consumergroup_lag_seconds",
            "Seconds since the partition's log reached the group's committed offset (interpolated from kollector's offset history; a lower bound when kafka_consumergroup_lag_seconds_lower_bound is 1).",
            group_partition_seconds(&|o| o.lag_ms),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_lag_seconds_lower_bound",
            "1 when the committed offset is older than kollector's offset history, so kafka_consumergroup_lag_seconds is only a lower bound.",
            group_partition(&|o| o.lag_ms.map(|_| o.lag_ms_is_lower_bound as i64)),
        )?;
        // Per group and topic, from one pass over each group's offsets.
        let group_topic = |value: &dyn Fn(&kollector_core::GroupTopic) -> Option<i64>| {
            family!(self, |b, s| s
                .groups
                .iter()
                .flat_map(|g| g.by_topic().into_iter().map(move |t| (g, t)))
                .filter_map(|(g, t)| value(&t).map(|v| {
                    (with(&b, &[("consumergroup", g.group_id.clone()), ("topic", t.topic.to_string())]), v)
                }))
                .collect::<Vec<_>>())
        };
        gauges(
            enc,
            "kafka_consumergroup_max_lag_seconds",
            "Largest kafka_consumergroup_lag_seconds of a group on a topic.",
            group_topic(&|t| t.max_lag_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)))
                .into_iter()
                .map(|(labels, ms)| (labels, ms as f64 / 1000.0))
                .collect(),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_partition_status",
            "Burrow's verdict of a group on a partition, as Burrow's code: 1 OK, 2 WARN, 4 STOP, 5 STALL, 6 REWIND \
             (absent while unread).",
            group_partition(&|o| o.verdict.map(|v| v.code() as i64)),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_partition_verdict",
            "1 for the current verdict of a group on a partition (label verdict: OK, WARN, STOP, STALL, REWIND).",
            family!(self, |b, s| s
                .group_partitions()
                .filter_map(|(g, o)| {
                    o.verdict.map(|v| {
                        let mut l = partition_labels(&b, g, o);
                        l.push(("verdict", v.as_str().to_string()));
                        (l, 1i64)
                    })
                })
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_status",
            "Burrow's group status, the worst of its partitions: 1 OK, 2 WARN, 3 ERR (absent while the group, \
             or a partition of it, is unread: unknown, never OK).",
            family!(self, |b, s| s
                .groups
                .iter()
                .filter_map(|g| g
                    .verdict
                    .map(|v| (with(&b, &[("consumergroup", g.group_id.clone())]), v.code() as i64)))
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_retention_margin",
            "Records between a group's committed offset and the partition's oldest offset: how far the group is from losing records to retention (0 when it already has).",
            family!(self, |b, s| {
                let earliest: std::collections::HashMap<(&str, i32), i64> = s
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().filter_map(move |p| p.earliest.map(|e| ((t.name.as_str(), p.partition), e))))
                    .collect();
                s.group_partitions()
                    .filter_map(|(g, o)| {
                        earliest
                            .get(&(o.topic.as_str(), o.partition))
                            .map(|e| (partition_labels(&b, g, o), o.committed.saturating_sub(*e).max(0)))
                    })
                    .collect::<Vec<_>>()
            }),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_retention_margin_seconds",
            "Estimated seconds until retention deletes the group's committed offset: kafka_consumergroup_retention_margin divided by the partition's write rate over kollector's offset history (absent when nothing was written during it, or while the log start is still 0: retention has deleted nothing yet).",
            group_partition_seconds(&|o| o.retention_margin_ms),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_current_offset_sum",
            "Sum of a group's committed offsets on a topic.",
            group_topic(&|t| Some(t.committed_sum)),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_lag_sum",
            "Sum of a group's lag on a topic; no series while any partition's lag is unknown (its leader unread).",
            group_topic(&|t| t.lag_sum),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_partitions_ahead_of_log",
            "Partitions of a topic where a group's committed offset is above the high watermark (lag is reported \
             as 0 there): the topic was re-created or its log truncated since the group committed. Present only \
             while non-zero.",
            family!(self, |b, s| s
                .groups
                .iter()
                .flat_map(|g| {
                    let mut n: std::collections::BTreeMap<&str, i64> = Default::default();
                    for o in g.offsets.iter().filter(|o| o.ahead_of_log) {
                        *n.entry(o.topic.as_str()).or_default() += 1;
                    }
                    let b = b.clone();
                    n.into_iter().map(move |(t, n)| {
                        (with(&b, &[("consumergroup", g.group_id.clone()), ("topic", t.to_string())]), n)
                    })
                })
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kollector_consumergroup_unread",
            "1 for each part of a group (label part: description, offsets) that could not be read in the \
             monitor's latest collection: its series are absent this cycle and its status is unknown, never OK. \
             The reason is in the group's error (monitor show, GetLatest).",
            family!(self, |b, s| s
                .groups
                .iter()
                .flat_map(|g| {
                    let parts = [("description", g.description_unread), ("offsets", g.offsets_unread)];
                    let b = b.clone();
                    parts.into_iter().filter(|(_, unread)| *unread).map(move |(part, _)| {
                        (with(&b, &[("consumergroup", g.group_id.clone()), ("part", part.to_string())]), 1i64)
                    })
                })
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_members",
            "Number of members of a consumer group (absent while its description is unread).",
            family!(self, |b, s| s
                .groups
                .iter()
                .filter(|g| !g.description_unread)
                .map(|g| (with(&b, &[("consumergroup", g.group_id.clone())]), g.members as i64))
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_state",
            "Consumer group state (value 1, state in the label; absent while its description is unread).",
            family!(self, |b, s| s
                .groups
                .iter()
                .filter(|g| !g.description_unread)
                .map(|g| (with(&b, &[("consumergroup", g.group_id.clone()), ("state", g.state.clone())]), 1i64))
                .collect::<Vec<_>>()),
        )?;
        gauges(
            enc,
            "kafka_consumergroup_info",
            "A consumer group's kind (value 1): protocol_type (consumer, connect, empty for commit-only \
             groups) and group_type (classic, consumer for KIP-848, share, streams; empty from brokers \
             before ListGroups v5).",
            family!(self, |b, s| s
                .groups
                .iter()
                .filter(|g| g.protocol_type.is_some() || g.group_type.is_some())
                .map(|g| {
                    let labels = [
                        ("consumergroup", g.group_id.clone()),
                        ("protocol_type", g.protocol_type.clone().unwrap_or_default()),
                        ("group_type", g.group_type.clone().unwrap_or_default()),
                    ];
                    (with(&b, &labels), 1i64)
                })
                .collect::<Vec<_>>()),
        )?;
        self.encode_e2e(enc)
    }

    /// The end-to-end probe's series (`kafka_e2e_*`), KMinion's
    /// `kminion_end_to_end_*` under kafka_exporter's prefix; see the README
    /// for the mapping. Per probe partition, labelled with the topic.
    fn encode_e2e(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        type Count = fn(&kollector_core::e2e::E2ePartition) -> u64;
        let per_partition: [(&str, &str, Count); 7] = [
            ("kafka_e2e_messages_produced", "Probe messages produced, per probe partition.", |p| p.produced),
            (
                "kafka_e2e_messages_produced_failed",
                "Probe messages whose produce failed or was not acknowledged within the ack SLA.",
                |p| p.produce_failed,
            ),
            ("kafka_e2e_messages_received", "Probe messages consumed back.", |p| p.received),
            (
                "kafka_e2e_messages_lost",
                "Acknowledged probe messages not consumed back within the round-trip SLA.",
                |p| p.lost,
            ),
            ("kafka_e2e_messages_late", "Probe messages consumed back after being counted lost.", |p| p.late),
            ("kafka_e2e_messages_duplicate", "Probe messages consumed back a second time.", |p| p.duplicates),
            (
                "kafka_e2e_messages_out_of_order",
                "Probe messages consumed back after a later message of the same partition.",
                |p| p.out_of_order,
            ),
        ];
        let e2e = |b: &Labels, s: &kollector_core::Snapshot| -> Option<(Labels, kollector_core::e2e::E2eSnapshot)> {
            s.e2e.as_ref().map(|e| {
                // One series per partition even if a peer sent one twice.
                let mut e = e.clone();
                e.partitions.sort_by_key(|p| p.partition);
                e.partitions.dedup_by_key(|p| p.partition);
                (with(b, &[("topic", e.topic.clone())]), e)
            })
        };
        for (name, help, count) in per_partition {
            counters(
                enc,
                name,
                help,
                family!(self, |b, s| e2e(&b, s)
                    .map(|(b, e)| {
                        e.partitions
                            .iter()
                            .map(|p| (with(&b, &[("partition", p.partition.to_string())]), count(p)))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()),
            )?;
        }
        gauges(
            enc,
            "kafka_e2e_partition_leader",
            "The leader of each probe partition as the probe last saw it (1 per partition and leader): join on \
             partition to read the probe's series per broker.",
            family!(self, |b, s| e2e(&b, s)
                .map(|(b, e)| {
                    e.partitions
                        .iter()
                        .filter_map(|p| {
                            p.leader.map(|l| {
                                (with(&b, &[("partition", p.partition.to_string()), ("leader", l.to_string())]), 1i64)
                            })
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()),
        )?;
        gauges(
            enc,
            "kafka_e2e_messages_in_flight",
            "Probe messages produced and not yet received, failed or lost.",
            family!(self, |b, s| e2e(&b, s).map(|(b, e)| (b, e.in_flight as i64))),
        )?;
        gauges(
            enc,
            "kafka_e2e_brokers_without_partition",
            "Brokers leading no probe partition: the probe cannot speak for them (kafka_e2e_probe_problem says which).",
            family!(self, |b, s| e2e(&b, s).map(|(b, e)| (b, e.brokers_without_partition.len() as i64))),
        )?;
        gauges(
            enc,
            "kafka_e2e_probe_problem",
            "Why the probe is not fully running (1 per problem), e.g. a topic it cannot create or a broker it cannot cover.",
            family!(self, |b, s| e2e(&b, s)
                .map(|(b, e)| e.problems.iter().map(|p| (with(&b, &[("problem", p.clone())]), 1i64)).collect::<Vec<_>>())
                .unwrap_or_default()),
        )?;
        gauges(
            enc,
            "kafka_e2e_sla_seconds",
            "The probe's SLAs: ack (produce), roundtrip (produce to consume) and commit.",
            family!(self, |b, s| e2e(&b, s)
                .map(|(b, e)| {
                    [("ack", e.ack_sla_ms), ("roundtrip", e.roundtrip_sla_ms), ("commit", e.commit_sla_ms)]
                        .map(|(k, ms)| (with(&b, &[("sla", k.to_string())]), ms as f64 / 1000.0))
                        .to_vec()
                })
                .unwrap_or_default()),
        )?;
        counters(
            enc,
            "kafka_e2e_offset_commits",
            "Offset commits of the probe's consumer group that succeeded.",
            family!(self, |b, s| e2e(&b, s).map(|(b, e)| (b, e.commits))),
        )?;
        counters(
            enc,
            "kafka_e2e_offset_commits_failed",
            "Offset commits of the probe's consumer group that failed.",
            family!(self, |b, s| e2e(&b, s).map(|(b, e)| (b, e.commits_failed))),
        )?;
        histograms(
            enc,
            "kafka_e2e_produce_latency_seconds",
            "Time from producing a probe message to its acknowledgement (acks=all).",
            family!(self, |b, s| e2e(&b, s)
                .map(|(b, e)| {
                    e.partitions
                        .iter()
                        .map(|p| (with(&b, &[("partition", p.partition.to_string())]), p.produce_latency.clone()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()),
        )?;
        histograms(
            enc,
            "kafka_e2e_roundtrip_latency_seconds",
            "Time from producing a probe message to consuming it back.",
            family!(self, |b, s| e2e(&b, s)
                .map(|(b, e)| {
                    e.partitions
                        .iter()
                        .map(|p| (with(&b, &[("partition", p.partition.to_string())]), p.roundtrip_latency.clone()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()),
        )?;
        histograms(
            enc,
            "kafka_e2e_offset_commit_latency_seconds",
            "Time an offset commit of the probe's consumer group took.",
            family!(self, |b, s| e2e(&b, s).map(|(b, e)| (b, e.commit_latency.clone()))),
        )
    }

    fn encode_self(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let m = |e: &MonitorResult| -> Labels { vec![("monitor", e.monitor.to_string())] };
        let per = |f: &dyn Fn(&MonitorResult) -> Option<f64>| -> Vec<(Labels, f64)> {
            self.entries.iter().filter_map(|e| f(e).map(|v| (m(e), v))).collect()
        };
        if self.local_clients {
            gauges(
                enc,
                "kollector_kafka_clients",
                "Kafka clients currently open in this process (one per running monitor, plus probes in progress).",
                vec![(Labels::new(), kollector_kafka::live_clients())],
            )?;
            gauges(
                enc,
                "kollector_e2e_probes",
                "End-to-end probes running in this process (each with its own producer and consumer).",
                vec![(Labels::new(), kollector_kafka::live_probes())],
            )?;
        }
        gauges(
            enc,
            "kollector_monitors",
            "Monitors with a result here.",
            vec![(Labels::new(), self.entries.len() as i64)],
        )?;
        for x in &self.extra {
            if x.counter {
                counters(enc, x.name, x.help, vec![(Labels::new(), x.value as u64)])?;
            } else {
                gauges(enc, x.name, x.help, vec![(Labels::new(), x.value)])?;
            }
        }
        gauges(
            enc,
            "kollector_monitor_up",
            "1 if the monitor's latest collection succeeded.",
            per(&|e| Some(if e.current_snapshot().is_some() { 1.0 } else { 0.0 })),
        )?;
        gauges(
            enc,
            "kollector_monitor_status",
            "The monitor's state (1 for the current state, 0 for the others).",
            self.entries
                .iter()
                .flat_map(|e| {
                    MonitorState::ALL.into_iter().map(move |st| {
                        (with(&m(e), &[("state", st.as_str().to_string())]), (e.status.state == st) as i64)
                    })
                })
                .collect(),
        )?;
        gauges(
            enc,
            "kollector_collection_duration_seconds",
            "Duration of the monitor's latest successful collection.",
            per(&|e| e.snapshot.as_ref().map(|s| s.duration_ms as f64 / 1000.0)),
        )?;
        gauges(
            enc,
            "kollector_last_success_timestamp_seconds",
            "Unix time of the monitor's latest successful collection.",
            per(&|e| e.last_success_ms.map(|t| t as f64 / 1000.0)),
        )?;
        gauges(
            enc,
            "kollector_monitor_generation",
            "Generation of the monitor's spec that is running.",
            per(&|e| Some(e.generation as f64)),
        )?;
        counters(
            enc,
            "kollector_collections",
            "Collections attempted by the monitor.",
            self.entries.iter().map(|e| (m(e), e.collections_total)).collect(),
        )?;
        counters(
            enc,
            "kollector_collection_errors",
            "Failed collections by kind.",
            self.entries
                .iter()
                .flat_map(|e| {
                    ErrorKind::ALL.into_iter().map(move |k| {
                        (with(&m(e), &[("kind", k.as_str().to_string())]), e.errors_total.get(&k).copied().unwrap_or(0))
                    })
                })
                .collect(),
        )?;
        counters(
            enc,
            "kollector_monitor_restarts",
            "Kafka client rebuilds after failures.",
            self.entries.iter().map(|e| (m(e), e.restarts_total)).collect(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kollector_core::testing::one_group_snapshot;
    use kollector_core::{GroupMetrics, MonitorId};

    fn rendered(group_metrics: GroupMetrics) -> String {
        let mut snapshot = one_group_snapshot("events", "g", 3, (0, 10), 4);
        for o in &mut snapshot.groups[0].offsets {
            o.lag_ms = Some(2_000);
            o.retention_margin_ms = Some(60_000);
            o.verdict = Some(kollector_core::history::Verdict::Ok);
        }
        snapshot.groups[0].verdict = Some(kollector_core::history::GroupVerdict::Ok);
        snapshot.group_metrics = group_metrics;
        let mut result = MonitorResult::starting(MonitorId::new("m").expect("id"), 1, None);
        result.snapshot = Some(std::sync::Arc::new(snapshot));
        render_entries(vec![result], Vec::new(), false)
    }

    /// Per topic: one series per group and topic (the sums and the status
    /// kafka_exporter users know), none per group and partition.
    #[test]
    fn group_metrics_per_topic_leave_out_every_per_partition_series() {
        let all = rendered(GroupMetrics::Partition);
        let per_topic = rendered(GroupMetrics::Topic);
        let series = |text: &str, name: &str| text.lines().filter(|l| l.starts_with(&format!("{name}{{"))).count();
        assert_eq!(series(&all, "kafka_consumergroup_lag"), 3);
        assert_eq!(series(&all, "kafka_consumergroup_current_offset"), 3);
        for name in [
            "kafka_consumergroup_lag",
            "kafka_consumergroup_current_offset",
            "kafka_consumergroup_data_loss",
            "kafka_consumergroup_retention_margin",
        ] {
            assert_eq!(series(&per_topic, name), 0, "{name}");
        }
        for text in [&all, &per_topic] {
            assert!(
                text.contains(
                    r#"kafka_consumergroup_lag_sum{monitor="m",cluster_id="c",consumergroup="g",topic="events"} 18"#
                ),
                "{text}"
            );
            assert_eq!(series(text, "kafka_consumergroup_current_offset_sum"), 1);
        }
        // No group series per partition is left, of any family.
        let group_partition_lines =
            |text: &str| text.lines().filter(|l| l.contains("consumergroup=\"") && l.contains("partition=\"")).count();
        assert!(group_partition_lines(&all) >= 3 * 8, "{all}");
        assert_eq!(group_partition_lines(&per_topic), 0, "{per_topic}");
        assert_eq!(series(&per_topic, "kafka_consumergroup_status"), 1);
        assert_eq!(series(&per_topic, "kafka_consumergroup_max_lag_seconds"), 1);
    }

    /// Throttles read: a series per broker (0 for none asked). Not read (the
    /// librdkafka path): no series at all, never a 0 nobody read.
    #[test]
    fn throttles_not_read_have_no_series() {
        let render = |unread: bool| {
            let mut snapshot = one_group_snapshot("events", "g", 1, (0, 10), 4);
            snapshot.brokers = vec![kollector_core::Broker { id: 1, host: "h".into(), port: 9092, rack: None }];
            snapshot.broker_throttle_ms = std::collections::BTreeMap::from([(1, 250)]);
            snapshot.throttles_unread = unread;
            let mut result = MonitorResult::starting(MonitorId::new("m").expect("id"), 1, None);
            result.snapshot = Some(std::sync::Arc::new(snapshot));
            render_entries(vec![result], Vec::new(), false)
        };
        let read = render(false);
        assert!(
            read.contains(r#"kollector_broker_throttle_seconds{monitor="m",cluster_id="c",broker="1"} 0.25"#),
            "{read}"
        );
        assert!(!render(true).contains("kollector_broker_throttle_seconds{"));
    }
}
