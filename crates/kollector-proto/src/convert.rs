//! Wire <-> domain conversions.

use kollector_core as core;

use crate::v1;

/// A user's spec from the wire, in the untrusted input form (validated later).
pub fn input_from_proto(p: v1::MonitorSpecInput) -> core::MonitorInput {
    core::MonitorInput {
        id: p.id,
        bootstrap: p.bootstrap,
        interval: p.interval,
        timeout: p.timeout,
        lag_history: p.lag_history,
        topic_include: p.topic_include,
        topic_exclude: p.topic_exclude,
        group_include: p.group_include,
        group_exclude: p.group_exclude,
        expected_cluster_id: p.expected_cluster_id,
        sasl: p.sasl.map(|s| core::SaslInput {
            mechanism: s.mechanism,
            username: s.username,
            password: (!s.password.is_empty()).then(|| core::Secret::new(s.password)),
            password_env: None,
            token_endpoint: (!s.token_endpoint.is_empty()).then_some(s.token_endpoint),
            scope: (!s.scope.is_empty()).then_some(s.scope),
            extensions: s.extensions.into_iter().collect(),
            ca_file: (!s.ca_file.is_empty()).then_some(s.ca_file),
            aws_region: (!s.aws_region.is_empty()).then_some(s.aws_region),
        }),
        tls: p.tls.map(|t| core::TlsInput {
            enabled: Some(true),
            ca_file: t.ca_file,
            cert_file: t.cert_file,
            key_file: t.key_file,
            key_password: (!t.key_password.is_empty()).then(|| core::Secret::new(t.key_password)),
            insecure_skip_verify: Some(t.insecure_skip_verify),
        }),
        labels: p.labels.into_iter().collect(),
        pinned_collector: p.pinned_collector,
        collector_labels: p.collector_labels.into_iter().collect(),
        client_id: p.client_id,
        group_metrics: p.group_metrics,
        e2e_probe: p.e2e_probe.map(|e| core::e2e::E2eProbeInput {
            topic: e.topic,
            interval: e.interval,
            ack_sla: e.ack_sla,
            roundtrip_sla: e.roundtrip_sla,
            commit_sla: e.commit_sla,
            partitions_per_broker: e.partitions_per_broker,
            // A value past u16 is refused by validation, not wrapped.
            replication_factor: e.replication_factor.map(|r| u16::try_from(r).unwrap_or(u16::MAX)),
        }),
    }
}

fn e2e_input_to_proto(e: &core::e2e::E2eProbeInput) -> v1::E2eProbeInput {
    v1::E2eProbeInput {
        topic: e.topic.clone(),
        interval: e.interval.clone(),
        ack_sla: e.ack_sla.clone(),
        roundtrip_sla: e.roundtrip_sla.clone(),
        commit_sla: e.commit_sla.clone(),
        partitions_per_broker: e.partitions_per_broker,
        replication_factor: e.replication_factor.map(u32::from),
    }
}

fn histogram_to_proto(h: &core::e2e::LatencyHistogram) -> v1::LatencyHistogram {
    v1::LatencyHistogram { counts: h.counts.clone(), sum_micros: h.sum_micros }
}

fn histogram_from_proto(h: Option<v1::LatencyHistogram>) -> core::e2e::LatencyHistogram {
    h.map(|h| core::e2e::LatencyHistogram { counts: h.counts, sum_micros: h.sum_micros }).unwrap_or_default()
}

fn e2e_to_proto(e: &core::e2e::E2eSnapshot) -> v1::E2eSnapshot {
    v1::E2eSnapshot {
        topic: e.topic.clone(),
        partitions: e
            .partitions
            .iter()
            .map(|p| v1::E2ePartition {
                partition: p.partition,
                leader: p.leader,
                produced: p.produced,
                produce_failed: p.produce_failed,
                received: p.received,
                lost: p.lost,
                late: p.late,
                duplicates: p.duplicates,
                out_of_order: p.out_of_order,
                produce_latency: Some(histogram_to_proto(&p.produce_latency)),
                roundtrip_latency: Some(histogram_to_proto(&p.roundtrip_latency)),
            })
            .collect(),
        in_flight: e.in_flight,
        commits: e.commits,
        commits_failed: e.commits_failed,
        commit_latency: Some(histogram_to_proto(&e.commit_latency)),
        brokers_without_partition: e.brokers_without_partition.clone(),
        problems: e.problems.clone(),
        ack_sla_ms: e.ack_sla_ms,
        roundtrip_sla_ms: e.roundtrip_sla_ms,
        commit_sla_ms: e.commit_sla_ms,
    }
}

fn e2e_from_proto(e: v1::E2eSnapshot) -> core::e2e::E2eSnapshot {
    core::e2e::E2eSnapshot {
        topic: e.topic,
        partitions: e
            .partitions
            .into_iter()
            .map(|p| core::e2e::E2ePartition {
                partition: p.partition,
                leader: p.leader,
                produced: p.produced,
                produce_failed: p.produce_failed,
                received: p.received,
                lost: p.lost,
                late: p.late,
                duplicates: p.duplicates,
                out_of_order: p.out_of_order,
                produce_latency: histogram_from_proto(p.produce_latency),
                roundtrip_latency: histogram_from_proto(p.roundtrip_latency),
            })
            .collect(),
        in_flight: e.in_flight,
        commits: e.commits,
        commits_failed: e.commits_failed,
        commit_latency: histogram_from_proto(e.commit_latency),
        brokers_without_partition: e.brokers_without_partition,
        problems: e.problems,
        ack_sla_ms: e.ack_sla_ms,
        roundtrip_sla_ms: e.roundtrip_sla_ms,
        commit_sla_ms: e.commit_sla_ms,
    }
}

/// The CLI's input onto the wire (secrets included: this is a write).
pub fn input_to_proto(i: &core::MonitorInput) -> v1::MonitorSpecInput {
    v1::MonitorSpecInput {
        id: i.id.clone(),
        bootstrap: i.bootstrap.clone(),
        interval: i.interval.clone(),
        timeout: i.timeout.clone(),
        lag_history: i.lag_history.clone(),
        topic_include: i.topic_include.clone(),
        topic_exclude: i.topic_exclude.clone(),
        group_include: i.group_include.clone(),
        group_exclude: i.group_exclude.clone(),
        expected_cluster_id: i.expected_cluster_id.clone(),
        sasl: i.sasl.as_ref().map(|s| v1::SaslInput {
            mechanism: s.mechanism.clone(),
            username: s.username.clone(),
            password: s.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default(),
            token_endpoint: s.token_endpoint.clone().unwrap_or_default(),
            scope: s.scope.clone().unwrap_or_default(),
            extensions: s.extensions.clone().into_iter().collect(),
            ca_file: s.ca_file.clone().unwrap_or_default(),
            aws_region: s.aws_region.clone().unwrap_or_default(),
        }),
        tls: i.tls.as_ref().filter(|t| t.enabled != Some(false)).map(|t| v1::TlsInput {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            key_password: t.key_password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default(),
            insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        }),
        labels: i.labels.clone().into_iter().collect(),
        pinned_collector: i.pinned_collector.clone(),
        collector_labels: i.collector_labels.clone().into_iter().collect(),
        client_id: i.client_id.clone(),
        group_metrics: i.group_metrics.clone(),
        e2e_probe: i.e2e_probe.as_ref().map(e2e_input_to_proto),
    }
}

/// A stored spec for read APIs: secrets are replaced by "is set" flags.
pub fn monitor_view(s: &core::MonitorSpec) -> v1::MonitorView {
    let [ti, te, gi, ge] = s.filter_patterns();
    v1::MonitorView {
        id: s.id.to_string(),
        generation: s.generation,
        bootstrap: s.connection.bootstrap.clone(),
        interval: humantime_fmt(s.interval),
        timeout: humantime_fmt(s.timeout),
        lag_history: humantime_fmt(s.lag_history),
        topic_include: ti,
        topic_exclude: te,
        group_include: gi,
        group_exclude: ge,
        expected_cluster_id: s.expected_cluster_id.clone(),
        sasl: s.connection.sasl.as_ref().map(|x| v1::SaslView {
            mechanism: x.mechanism.as_str().to_string(),
            username: x.username.clone(),
            password_set: !x.password.expose().is_empty(),
            token_endpoint: x.oidc.as_ref().map(|o| o.token_endpoint.clone()).unwrap_or_default(),
            scope: x.oidc.as_ref().and_then(|o| o.scope.clone()).unwrap_or_default(),
            extensions: x.oidc.as_ref().map(|o| o.extensions.clone().into_iter().collect()).unwrap_or_default(),
            ca_file: x.oidc.as_ref().and_then(|o| o.ca_file.clone()).unwrap_or_default(),
            aws_region: x.aws.as_ref().map(|a| a.region.clone()).unwrap_or_default(),
        }),
        tls: s.connection.tls.as_ref().map(|t| v1::TlsView {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            key_password_set: t.key_password.is_some(),
            insecure_skip_verify: t.insecure_skip_verify,
        }),
        labels: s.labels.clone().into_iter().collect(),
        pinned_collector: s.pinned_collector.as_ref().map(|c| c.to_string()),
        collector_labels: s.collector_labels.clone().into_iter().collect(),
        client_id: s.client_id(),
        group_metrics: s.group_metrics.as_str().to_string(),
        e2e_probe: s.e2e_probe.as_ref().map(|p| e2e_input_to_proto(&p.to_input())),
    }
}

fn humantime_fmt(d: std::time::Duration) -> String {
    // Durations are whole milliseconds at most; format like "15s" or "1m 30s".
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        let s = ms / 1000;
        match (s / 3600, (s % 3600) / 60, s % 60) {
            (0, 0, s) => format!("{s}s"),
            (0, m, 0) => format!("{m}m"),
            (0, m, s) => format!("{m}m{s}s"),
            (h, 0, 0) => format!("{h}h"),
            (h, m, s) => format!("{h}h{m}m{s}s"),
        }
    }
}

pub fn status_to_proto(s: &core::MonitorStatus) -> v1::MonitorStatus {
    let state = match s.state {
        core::MonitorState::Starting => v1::MonitorState::Starting,
        core::MonitorState::Running => v1::MonitorState::Running,
        core::MonitorState::Degraded => v1::MonitorState::Degraded,
        core::MonitorState::Failing => v1::MonitorState::Failing,
        core::MonitorState::Failed => v1::MonitorState::Failed,
        core::MonitorState::Stopped => v1::MonitorState::Stopped,
        core::MonitorState::Stale => v1::MonitorState::Stale,
    };
    v1::MonitorStatus {
        state: state as i32,
        reason: s.reason.clone(),
        consecutive_failures: s.consecutive_failures,
        restarts: s.restarts,
        pinned_cluster_id: s.pinned_cluster_id.clone(),
    }
}

/// A status from the wire (the manager reading collectors' results).
pub fn status_from_proto(s: &v1::MonitorStatus) -> core::MonitorStatus {
    let state = match s.state() {
        v1::MonitorState::Running => core::MonitorState::Running,
        v1::MonitorState::Degraded => core::MonitorState::Degraded,
        v1::MonitorState::Failing => core::MonitorState::Failing,
        v1::MonitorState::Failed => core::MonitorState::Failed,
        v1::MonitorState::Stopped => core::MonitorState::Stopped,
        v1::MonitorState::Stale => core::MonitorState::Stale,
        v1::MonitorState::Starting | v1::MonitorState::Unspecified => core::MonitorState::Starting,
    };
    core::MonitorStatus {
        state,
        reason: s.reason.clone(),
        consecutive_failures: s.consecutive_failures,
        restarts: s.restarts,
        pinned_cluster_id: s.pinned_cluster_id.clone(),
    }
}

/// An error from the wire; an unknown kind reads as a Kafka error.
pub fn error_from_proto(e: &v1::CollectError) -> core::CollectError {
    let kind = core::ErrorKind::ALL.into_iter().find(|k| k.as_str() == e.kind).unwrap_or(core::ErrorKind::Kafka);
    core::CollectError::new(kind, e.message.clone())
}

pub fn snapshot_to_proto(s: &core::Snapshot) -> v1::Snapshot {
    v1::Snapshot {
        monitor_id: s.monitor.to_string(),
        generation: s.generation,
        cluster_id: s.cluster_id.clone(),
        controller_id: s.controller_id,
        brokers: s
            .brokers
            .iter()
            .map(|b| v1::Broker { id: b.id, host: b.host.clone(), port: b.port.into(), rack: b.rack.clone() })
            .collect(),
        topics: s
            .topics
            .iter()
            .map(|t| v1::Topic {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| v1::Partition {
                        partition: p.partition,
                        leader: p.leader,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        earliest: p.earliest,
                        latest: p.latest,
                        error: p.error.clone(),
                    })
                    .collect(),
            })
            .collect(),
        groups: s
            .groups
            .iter()
            .map(|g| v1::Group {
                group_id: g.group_id.clone(),
                state: g.state.clone(),
                members: g.members,
                coordinator: g.coordinator,
                offsets: g
                    .offsets
                    .iter()
                    .map(|o| v1::GroupOffset {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        committed: o.committed,
                        lag: o.lag,
                        data_loss: o.data_loss,
                        ahead_of_log: o.ahead_of_log,
                        lag_ms: o.lag_ms,
                        lag_ms_is_lower_bound: o.lag_ms_is_lower_bound,
                        retention_margin_ms: o.retention_margin_ms,
                        verdict: o.verdict.map(|v| v.as_str().to_string()).unwrap_or_default(),
                    })
                    .collect(),
                error: g.error.clone(),
                description_unread: g.description_unread,
                offsets_unread: g.offsets_unread,
                verdict: g.verdict.map(|v| v.as_str().to_string()).unwrap_or_default(),
                protocol_type: g.protocol_type.clone(),
                group_type: g.group_type.clone(),
            })
            .collect(),
        collected_at_ms: s.collected_at_ms,
        duration_ms: s.duration_ms,
        warnings: s.warnings.clone(),
        notes: s.notes.clone(),
        broker_errors: s
            .broker_errors
            .iter()
            .map(|e| v1::BrokerError {
                broker: e.broker,
                kind: e.kind.as_str().to_string(),
                message: e.message.clone(),
            })
            .collect(),
        broker_throttle_ms: s.broker_throttle_ms.clone().into_iter().collect(),
        throttles_unread: s.throttles_unread,
        group_metrics: s.group_metrics.as_str().to_string(),
        e2e: s.e2e.as_ref().map(e2e_to_proto),
    }
}

/// The wire snapshot back into the domain type (used by the CLI and by the
/// manager's results intake). Fails only on an invalid monitor id.
pub fn snapshot_from_proto(p: v1::Snapshot) -> Result<core::Snapshot, core::ids::IdError> {
    Ok(core::Snapshot {
        monitor: core::MonitorId::new(p.monitor_id)?,
        generation: p.generation,
        cluster_id: p.cluster_id,
        controller_id: p.controller_id,
        brokers: p
            .brokers
            .into_iter()
            .map(|b| core::Broker { id: b.id, host: b.host, port: u16::try_from(b.port).unwrap_or(0), rack: b.rack })
            .collect(),
        topics: p
            .topics
            .into_iter()
            .map(|t| core::TopicSnapshot {
                name: t.name,
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|x| core::PartitionSnapshot {
                        partition: x.partition,
                        leader: x.leader,
                        replicas: x.replicas,
                        isr: x.isr,
                        earliest: x.earliest,
                        latest: x.latest,
                        error: x.error,
                    })
                    .collect(),
            })
            .collect(),
        groups: p
            .groups
            .into_iter()
            .map(|g| core::GroupSnapshot {
                group_id: g.group_id,
                state: g.state,
                members: g.members,
                coordinator: g.coordinator,
                offsets: g
                    .offsets
                    .into_iter()
                    .map(|o| core::GroupOffset {
                        topic: o.topic,
                        partition: o.partition,
                        committed: o.committed,
                        lag: o.lag,
                        data_loss: o.data_loss,
                        ahead_of_log: o.ahead_of_log,
                        lag_ms: o.lag_ms,
                        lag_ms_is_lower_bound: o.lag_ms_is_lower_bound,
                        retention_margin_ms: o.retention_margin_ms,
                        verdict: core::history::Verdict::parse(&o.verdict),
                    })
                    .collect(),
                error: g.error,
                description_unread: g.description_unread,
                offsets_unread: g.offsets_unread,
                verdict: core::history::GroupVerdict::parse(&g.verdict),
                protocol_type: g.protocol_type,
                group_type: g.group_type,
            })
            .collect(),
        collected_at_ms: p.collected_at_ms,
        duration_ms: p.duration_ms,
        warnings: p.warnings,
        notes: p.notes,
        // An error of a kind this build does not know is still an error:
        // named as the broker's own (kafka) rather than dropped.
        broker_errors: p
            .broker_errors
            .into_iter()
            .map(|e| core::BrokerError {
                broker: e.broker,
                kind: core::BrokerErrorKind::parse(&e.kind).unwrap_or(core::BrokerErrorKind::Kafka),
                message: e.message,
            })
            .collect(),
        broker_throttle_ms: p.broker_throttle_ms.into_iter().collect(),
        throttles_unread: p.throttles_unread,
        // An unknown value from a newer node: every series, as before.
        group_metrics: core::GroupMetrics::parse(&p.group_metrics).unwrap_or_default(),
        e2e: p.e2e.map(e2e_from_proto),
    })
}

/// One monitor's latest result onto the wire.
pub fn result_to_proto(r: &core::MonitorResult) -> v1::MonitorResult {
    v1::MonitorResult {
        monitor_id: r.monitor.to_string(),
        generation: r.generation,
        status: Some(status_to_proto(&r.status)),
        snapshot: r.snapshot.as_deref().map(snapshot_to_proto),
        error: r
            .error
            .as_ref()
            .map(|e| v1::CollectError { kind: e.kind.as_str().to_string(), message: e.message.clone() }),
        attempted_at_ms: r.attempted_at_ms,
        collector_id: r.collector.as_ref().map(|c| c.to_string()).unwrap_or_default(),
        epoch: r.epoch,
        last_success_ms: r.last_success_ms.unwrap_or(0),
        collections_total: r.collections_total,
        errors_total: r.errors_total.iter().map(|(k, v)| (k.as_str().to_string(), *v)).collect(),
        restarts_total: r.restarts_total,
        // Only collectors' result streams carry it (`history_to_proto`).
        history: None,
        next_result_in_ms: (r.next_result_due_ms > 0)
            .then(|| clamp_i64(i128::from(r.next_result_due_ms) - i128::from(core::unix_ms()))),
        interval_ms: r.interval_ms,
    }
}

/// Two hours: an interval and a timeout of at most an hour each, plus a
/// parked rebuild's 5 minutes, fit well within it.
const MAX_DUE_IN_MS: i64 = 2 * 3600 * 1000;

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Delta-encodes a list of values (the first from 0).
fn deltas(values: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut previous = 0i64;
    values
        .map(|v| {
            let d = v.wrapping_sub(previous);
            previous = v;
            d
        })
        .collect()
}

/// Decodes `deltas` (wrapping, like the encoding: any input decodes, and
/// `MonitorHistory::from_parts` judges the values).
fn undeltas(deltas: &[i64]) -> Vec<i64> {
    let mut acc = 0i64;
    deltas
        .iter()
        .map(|d| {
            acc = acc.wrapping_add(*d);
            acc
        })
        .collect()
}

/// A monitor's history onto the wire, for handover to its next owner.
pub fn history_to_proto(h: &core::history::MonitorHistory) -> v1::MonitorHistory {
    // Times as their bits: the deltas wrap, so every u64 comes back.
    let ms = |t: u64| t as i64;
    v1::MonitorHistory {
        cluster_id: h.cluster_id().unwrap_or_default().to_string(),
        logs: h
            .logs()
            .map(|(topic, partition, log)| v1::PartitionLog {
                topic: topic.to_string(),
                partition,
                offset_deltas: deltas(log.points().map(|p| p.offset)),
                at_ms_deltas: deltas(log.points().map(|p| ms(p.at_ms))),
            })
            .collect(),
        commits: h
            .commits()
            .map(|(group, topic, partition, w)| v1::PartitionCommits {
                group_id: group.to_string(),
                topic: topic.to_string(),
                partition,
                committed_since_ms: w.committed_since_ms(),
                committed_deltas: deltas(w.observations().map(|o| o.committed)),
                latest_deltas: deltas(w.observations().map(|o| o.latest)),
                at_ms_deltas: deltas(w.observations().map(|o| ms(o.at_ms))),
            })
            .collect(),
    }
}

/// A history from the wire (a manager's Assign). Untrusted:
/// `MonitorHistory::from_parts` re-applies
/// every rule a monitor's own history follows, within `limits`.
pub fn history_from_proto(
    p: v1::MonitorHistory,
    limits: core::history::HistoryLimits,
    window: usize,
    not_after_ms: u64,
) -> core::history::MonitorHistory {
    use core::history::{MonitorHistory, Observation, Point};
    let time = |t: i64| t as u64;
    let logs = p.logs.into_iter().map(|l| {
        let points = undeltas(&l.offset_deltas)
            .into_iter()
            .zip(undeltas(&l.at_ms_deltas))
            .map(|(offset, t)| Point { offset, at_ms: time(t) })
            .collect();
        (l.topic, l.partition, points)
    });
    let commits = p.commits.into_iter().map(|c| {
        let observations = undeltas(&c.committed_deltas)
            .into_iter()
            .zip(undeltas(&c.latest_deltas))
            .zip(undeltas(&c.at_ms_deltas))
            .map(|((committed, latest), t)| Observation { committed, latest, at_ms: time(t) })
            .collect();
        (c.group_id, c.topic, c.partition, c.committed_since_ms, observations)
    });
    let cluster_id = (!p.cluster_id.is_empty()).then_some(p.cluster_id);
    MonitorHistory::from_parts(cluster_id, logs, commits, limits, window, not_after_ms)
}

/// A result from the wire (the manager reading a collector's stream). The
/// collector is *not* taken from the message: the caller passes the identity
/// of the stream it came on.
pub fn result_from_proto(
    p: v1::MonitorResult,
    collector: Option<core::CollectorId>,
) -> Result<core::MonitorResult, core::ids::IdError> {
    let monitor = core::MonitorId::new(p.monitor_id)?;
    let status = p
        .status
        .as_ref()
        .map(status_from_proto)
        .unwrap_or_else(|| core::MonitorResult::starting(monitor.clone(), p.generation, None).status);
    let snapshot = match p.snapshot {
        Some(s) => Some(std::sync::Arc::new(snapshot_from_proto(s)?)),
        None => None,
    };
    let errors_total = p
        .errors_total
        .iter()
        .filter_map(|(k, v)| core::ErrorKind::ALL.into_iter().find(|e| e.as_str() == k).map(|e| (e, *v)))
        .collect();
    Ok(core::MonitorResult {
        monitor,
        generation: p.generation,
        epoch: p.epoch,
        collector,
        status,
        snapshot,
        error: p.error.as_ref().map(error_from_proto),
        attempted_at_ms: p.attempted_at_ms,
        last_success_ms: (p.last_success_ms > 0).then_some(p.last_success_ms),
        collections_total: p.collections_total,
        errors_total,
        restarts_total: p.restarts_total,
        // Placed on this clock (any value decodes; a due time before 1970
        // or past u64 saturates, and 0 stays "unknown" only when absent).
        // A due time further out than any honest schedule (the longest
        // interval and timeout plus the parked backoff) is cut there, so a
        // wrong or hostile value cannot keep a result current forever.
        next_result_due_ms: p.next_result_in_ms.map_or(0, |d| {
            let d = d.min(MAX_DUE_IN_MS);
            (i128::from(core::unix_ms()) + i128::from(d)).clamp(1, i128::from(u64::MAX)) as u64
        }),
        interval_ms: p.interval_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_never_carry_secrets() {
        let input = core::MonitorInput {
            id: "m".into(),
            bootstrap: vec!["h:1".into()],
            sasl: Some(core::SaslInput {
                mechanism: "PLAIN".into(),
                username: "u".into(),
                password: Some(core::Secret::new("hunter2")),
                password_env: None,
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = input.validate(1).unwrap();
        let view = monitor_view(&spec);
        assert!(view.sasl.as_ref().unwrap().password_set);
        assert!(!format!("{view:?}").contains("hunter2"));
        assert_eq!(view.interval, "30s");
        assert_eq!(view.timeout, "20s");
    }

    #[test]
    fn input_round_trip() {
        let input = core::MonitorInput {
            id: "m".into(),
            bootstrap: vec!["h:1".into()],
            interval: Some("10s".into()),
            topic_include: Some("a.*".into()),
            ..Default::default()
        };
        let back = input_from_proto(input_to_proto(&input));
        assert_eq!(back.validate(1).unwrap(), input.validate(1).unwrap());
    }

    #[test]
    fn a_due_time_travels_relative_and_lands_on_the_receivers_clock() {
        let mut r = core::MonitorResult::starting(core::MonitorId::new("m").unwrap(), 1, None);
        r.interval_ms = 1_000;
        let before = core::unix_ms();
        r.next_result_due_ms = before + 5_000;
        let wire = result_to_proto(&r);
        let in_ms = wire.next_result_in_ms.unwrap();
        assert!((4_000..=5_000).contains(&in_ms), "{in_ms}");
        let back = result_from_proto(wire, None).unwrap();
        assert!(back.next_result_due_ms.abs_diff(before + 5_000) < 1_000, "{}", back.next_result_due_ms);
        assert_eq!(back.interval_ms, 1_000);

        // Unknown stays unknown; hostile values saturate instead of wrapping.
        r.next_result_due_ms = 0;
        assert_eq!(result_from_proto(result_to_proto(&r), None).unwrap().next_result_due_ms, 0);
        let mut hostile = result_to_proto(&r);
        hostile.next_result_in_ms = Some(i64::MIN);
        assert_eq!(result_from_proto(hostile.clone(), None).unwrap().next_result_due_ms, 1);
        hostile.next_result_in_ms = Some(i64::MAX);
        let capped = result_from_proto(hostile, None).unwrap().next_result_due_ms;
        assert!(capped > core::unix_ms() && capped <= core::unix_ms() + MAX_DUE_IN_MS as u64, "{capped}");
    }

    mod hostile {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use prost::Message as _;

        use super::super::*;

        const HOUR: core::history::HistoryLimits =
            core::history::HistoryLimits { max_points: 122, max_age_ms: 3_600_000 };

        proptest! {
            #![proptest_config(kollector_core::testing::proptest_config())]
            /// Arbitrary bytes on a results stream or in a request decode or
            /// are refused, and whatever decodes converts or is refused:
            /// never a panic.
            #[test]
            fn arbitrary_wire_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
                if let Ok(r) = v1::MonitorResult::decode(&bytes[..]) {
                    let _ = result_from_proto(r, None);
                }
                if let Ok(spec) = v1::MonitorSpecInput::decode(&bytes[..]) {
                    let _ = input_from_proto(spec).validate(1);
                }
                if let Ok(s) = v1::Snapshot::decode(&bytes[..]) {
                    let _ = snapshot_from_proto(s);
                }
                if let Ok(h) = v1::MonitorHistory::decode(&bytes[..]) {
                    // Whatever decodes is safe to use: observing it never panics.
                    let mut h = history_from_proto(h, HOUR, 10, u64::MAX / 2);
                    let mut s = core::Snapshot {
                        monitor: core::MonitorId::new("m".to_string()).unwrap(),
                        generation: 1,
                        cluster_id: h.cluster_id().unwrap_or("c").to_string(),
                        controller_id: None,
                        brokers: Vec::new(),
                        // Every partition and group partition it holds, at
                        // extreme offsets: lag seconds, verdicts and margins run.
                        topics: h.logs().map(|(t, p, _)| core::TopicSnapshot {
                            name: t.to_string(),
                            partitions: vec![core::PartitionSnapshot {
                                partition: p, leader: None, replicas: Vec::new(), isr: Vec::new(),
                                earliest: Some(i64::MIN), latest: Some(i64::MAX), error: None,
                            }],
                        }).collect(),
                        groups: h.commits().map(|(g, t, p, _)| core::GroupSnapshot {
                            group_id: g.to_string(), state: String::new(), members: 0, coordinator: None,
                            offsets: vec![core::GroupOffset {
                                topic: t.to_string(), partition: p, committed: i64::MIN + 1, lag: Some(i64::MAX),
                                data_loss: false, ahead_of_log: false, lag_ms: None, lag_ms_is_lower_bound: false,
                                retention_margin_ms: None, verdict: None,
                            }],
                            error: None, description_unread: false, offsets_unread: false,
                            verdict: None, protocol_type: None, group_type: None,
                        }).collect(),
                        collected_at_ms: 0,
                        duration_ms: 0,
                        warnings: Vec::new(),
                        notes: Vec::new(),
                        broker_errors: Vec::new(),
                        broker_throttle_ms: Default::default(),
                        throttles_unread: false,
                        group_metrics: Default::default(),
                        e2e: None,
                    };
                    h.observe(&mut s, u64::MAX / 2, HOUR, 10);
                }
            }

            /// Any history a monitor builds survives the trip to a manager
            /// and on to the next owner unchanged, whatever its offsets and
            /// times (deltas wrap, never overflow).
            #[test]
            fn histories_round_trip(
                logs in vec((0i32..4, vec((proptest::num::i64::ANY, proptest::num::u64::ANY), 0..30)), 0..4),
                commits in vec((0i32..4, proptest::num::u64::ANY, vec((proptest::num::i64::ANY, proptest::num::i64::ANY, proptest::num::u64::ANY), 0..12)), 0..4),
            ) {
                use kollector_core::history::{MonitorHistory, Observation, Point};
                // Whatever a monitor could hold: any values, put in order by its own rules.
                let sorted = |mut v: Vec<(i64, u64)>| { v.sort_by_key(|p| p.1); v };
                let h = MonitorHistory::from_parts(
                    Some("cluster".into()),
                    logs.into_iter().map(|(p, pts)| ("t".to_string(), p, sorted(pts).into_iter().map(|(offset, at_ms)| Point { offset, at_ms }).collect())),
                    commits.into_iter().map(|(p, since, mut obs)| {
                        obs.sort_by_key(|o| o.2);
                        ("g".to_string(), "t".to_string(), p, since, obs.into_iter().map(|(committed, latest, at_ms)| Observation { committed, latest, at_ms }).collect())
                    }),
                    HOUR,
                    10,
                    u64::MAX,
                );
                let wire = history_to_proto(&h);
                let back = history_from_proto(v1::MonitorHistory::decode(&wire.encode_to_vec()[..]).unwrap(), HOUR, 10, u64::MAX);
                prop_assert_eq!(back, h);
            }

            /// A spec input survives the trip to the wire and back.
            #[test]
            fn spec_inputs_round_trip(id in ".{0,20}", hosts in vec(".{0,20}", 0..3), interval in proptest::option::of(".{0,6}")) {
                let input = core::MonitorInput { id, bootstrap: hosts, interval, ..Default::default() };
                prop_assert_eq!(input_from_proto(input_to_proto(&input)), input);
            }
        }
    }
}
