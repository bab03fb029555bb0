//! The probe topic: read what it is, decide what it needs (pure), do it.
//!
//! Every broker should lead a probe partition, or the probe cannot say
//! whether that broker works. A missing topic is created with
//! `partitions_per_broker` partitions per broker (Kafka's placement then
//! gives each broker as many leaders); a topic with fewer partitions than
//! that (a broker was added) grows by partitions led by the brokers that
//! lead none. A broker that leads none although the topic is big enough
//! (leadership moved after a failure) is reported, not fixed: growing the
//! topic at every leader move would grow it without end.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use super::{ProbeContext, Shared};

/// What the probe knows about its topic, reported with each snapshot.
#[derive(Debug, Default)]
pub struct TopicState {
    pub brokers_without_partition: Vec<i32>,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub id: i32,
    pub leader: Option<i32>,
}

/// The cluster's brokers and the topic as metadata shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicView {
    pub brokers: Vec<i32>,
    pub exists: bool,
    pub partitions: Vec<PartitionView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Keep,
    Create {
        partitions: i32,
        replication: i32,
    },
    /// Grow to `total` partitions, the new ones with these replicas (leader first).
    Grow {
        total: usize,
        assignment: Vec<Vec<i32>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    /// Brokers that lead no partition and that the action does not cover.
    pub uncovered: Vec<i32>,
}

impl Plan {
    pub fn problems(&self, topic: &str) -> Vec<String> {
        if self.uncovered.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "broker(s) {:?} lead no partition of {topic}: the probe cannot speak for them (leadership moved; a preferred leader election gives them back)",
                self.uncovered
            )]
        }
    }
}

/// What `view` needs. Pure.
pub fn plan(view: &TopicView, per_broker: u32, replication: u16) -> Plan {
    let brokers = {
        let mut b = view.brokers.clone();
        b.sort_unstable();
        b.dedup();
        b
    };
    let n = brokers.len();
    let replication = i32::from(replication).min(n.max(1) as i32);
    if !view.exists {
        return Plan {
            action: Action::Create { partitions: (n.max(1) as i32) * per_broker as i32, replication },
            uncovered: Vec::new(),
        };
    }
    let leading: std::collections::BTreeSet<i32> = view.partitions.iter().filter_map(|p| p.leader).collect();
    let uncovered: Vec<i32> = brokers.iter().copied().filter(|b| !leading.contains(b)).collect();
    let wanted = n * per_broker as usize;
    if uncovered.is_empty() || view.partitions.len() >= wanted {
        return Plan { action: Action::Keep, uncovered };
    }
    // One new partition per uncovered broker, led by it, its replicas on the next brokers.
    let assignment: Vec<Vec<i32>> = uncovered
        .iter()
        .map(|b| {
            let at = brokers.iter().position(|x| x == b).unwrap_or(0);
            (0..replication as usize).map(|k| brokers[(at + k) % n]).collect()
        })
        .collect();
    Plan { action: Action::Grow { total: view.partitions.len() + assignment.len(), assignment }, uncovered: Vec::new() }
}

/// Reads the topic's metadata within `timeout`.
pub fn read(client: &Client<ProbeContext>, topic: &str, timeout: Duration) -> Result<TopicView, String> {
    let md = client.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata for {topic}: {e}"))?;
    let brokers = md.brokers().iter().map(|b| b.id()).collect();
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(TopicView { brokers, exists: false, partitions: Vec::new() });
    };
    match t.error() {
        None => {}
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            return Ok(TopicView { brokers, exists: false, partitions: Vec::new() })
        }
        Some(e) => return Err(format!("metadata for {topic}: {}", RDKafkaErrorCode::from(e))),
    }
    let partitions = t
        .partitions()
        .iter()
        .map(|p| PartitionView { id: p.id(), leader: (p.leader() >= 0).then_some(p.leader()) })
        .collect();
    Ok(TopicView { brokers, exists: true, partitions })
}

/// Does what `plan` says; true when the topic changed.
pub fn apply(
    admin_config: &ClientConfig,
    shared: &std::sync::Arc<Shared>,
    topic: &str,
    plan: &Plan,
    timeout: Duration,
) -> Result<bool, String> {
    if plan.action == Action::Keep {
        return Ok(false);
    }
    let admin: AdminClient<ProbeContext> = admin_config
        .create_with_context(ProbeContext(shared.clone()))
        .map_err(|e| format!("admin client for {topic}: {e}"))?;
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("runtime for the admin call: {e}"))?;
    let results = match &plan.action {
        Action::Keep => return Ok(false),
        Action::Create { partitions, replication } => {
            // Short retention: the probe's messages are worth nothing once read.
            let new = NewTopic::new(topic, *partitions, TopicReplication::Fixed(*replication))
                .set("cleanup.policy", "delete")
                .set("retention.ms", "3600000");
            runtime.block_on(async {
                tokio::time::timeout(timeout + Duration::from_secs(1), admin.create_topics([&new], &options)).await
            })
        }
        Action::Grow { total, assignment } => {
            let rows: Vec<&[i32]> = assignment.iter().map(|r| r.as_slice()).collect();
            let new = NewPartitions::new(topic, *total).assign(&rows);
            runtime.block_on(async {
                tokio::time::timeout(timeout + Duration::from_secs(1), admin.create_partitions([&new], &options)).await
            })
        }
    };
    let what = match plan.action {
        Action::Create { .. } => "creating",
        _ => "adding partitions to",
    };
    let results = results
        .map_err(|_| format!("{what} {topic}: no answer within {timeout:?}"))?
        .map_err(|e| format!("{what} {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => {}
            // Someone else (another probe) did it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(format!("{what} {topic}: {code}")),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(brokers: &[i32], partitions: &[(i32, Option<i32>)]) -> TopicView {
        TopicView {
            brokers: brokers.to_vec(),
            exists: !partitions.is_empty(),
            partitions: partitions.iter().map(|(id, leader)| PartitionView { id: *id, leader: *leader }).collect(),
        }
    }

    #[test]
    fn a_missing_topic_gets_partitions_per_broker_and_no_more_replicas_than_brokers() {
        let p = plan(&view(&[1, 2, 3], &[]), 2, 3);
        assert_eq!(p.action, Action::Create { partitions: 6, replication: 3 });
        let p = plan(&view(&[7], &[]), 1, 3);
        assert_eq!(p.action, Action::Create { partitions: 1, replication: 1 });
    }

    #[test]
    fn a_new_broker_gets_a_partition_and_a_moved_leader_is_reported_not_fixed() {
        // Broker 4 joined: the topic grows by one partition led by 4.
        let p = plan(&view(&[1, 2, 3, 4], &[(0, Some(1)), (1, Some(2)), (2, Some(3))]), 1, 2);
        assert_eq!(p.action, Action::Grow { total: 4, assignment: vec![vec![4, 1]] });
        assert!(p.uncovered.is_empty());
        // Broker 2 lost its leadership to 1: nothing to do but say so.
        let p = plan(&view(&[1, 2, 3], &[(0, Some(1)), (1, Some(1)), (2, Some(3))]), 1, 1);
        assert_eq!((p.action.clone(), p.uncovered.clone()), (Action::Keep, vec![2]));
        assert!(p.problems("t")[0].contains("[2]"));
        // A partition without leader covers nobody.
        let p = plan(&view(&[1, 2], &[(0, Some(1)), (1, None)]), 1, 1);
        assert_eq!(p.uncovered, vec![2]);
        // All covered.
        let p = plan(&view(&[1, 2], &[(0, Some(2)), (1, Some(1))]), 1, 1);
        assert_eq!((p.action, p.uncovered), (Action::Keep, vec![]));
    }
}
