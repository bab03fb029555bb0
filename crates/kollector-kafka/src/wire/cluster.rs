//! The cluster's shape (Metadata) and its log offsets (ListOffsets) on one
//! broker connection the monitor owns; `group_cycle.rs` runs them over the
//! brokers, each within its own budget.
//!
//! Why not librdkafka's calls: librdkafka sends an application's Metadata
//! request to its *least idle* connection, which is the broker it last
//! sent to, so a stuck broker that was just asked for its offsets gets the
//! next Metadata request too, and the cycle waits out its whole timeout;
//! and its ListOffsets reports a leader that never answered as partitions
//! with offset -1001 and no error. Here the monitor chooses whom to ask and
//! how long to wait for each broker.

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::connection::BrokerConnection;
use super::WireError;
use crate::deadline::Deadline;

/// ListOffsets timestamps: the log start and the high watermark.
pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

/// A broker as Metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaBroker {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// A partition as Metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaPartition {
    pub partition: i32,
    /// -1 when it has no leader.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error_code: i16,
}

/// A topic as Metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaTopic {
    pub name: String,
    pub error_code: i16,
    pub partitions: Vec<MetaPartition>,
}

/// One Metadata answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub controller_id: Option<i32>,
    pub brokers: Vec<MetaBroker>,
    pub topics: Vec<MetaTopic>,
}

/// Metadata for every topic (v1+: null topics means all).
pub fn metadata(conn: &mut BrokerConnection, deadline: &Deadline) -> Result<ClusterMetadata, WireError> {
    let version = conn.versions().pick(ApiKey::Metadata, (1, 12)).ok_or(WireError::Unsupported("Metadata"))?;
    let request = MetadataRequest::default().with_topics(None).with_allow_auto_topic_creation(false);
    let answer: MetadataResponse = conn.call(ApiKey::Metadata, version, &request, deadline)?;
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
    Ok(ClusterMetadata {
        cluster_id: answer.cluster_id.as_ref().map(|c| c.to_string()).filter(|c| !c.is_empty()),
        controller_id: Some(answer.controller_id.0).filter(|c| *c >= 0),
        brokers: answer
            .brokers
            .iter()
            .map(|b| MetaBroker {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()).filter(|r| !r.is_empty()),
            })
            .collect(),
        topics: answer
            .topics
            .iter()
            .filter_map(|t| {
                Some(MetaTopic {
                    // A topic without a name (v10+ ids only) cannot be shown.
                    name: t.name.as_ref()?.0.to_string(),
                    error_code: t.error_code,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| MetaPartition {
                            partition: p.partition_index,
                            leader: p.leader_id.0,
                            replicas: ids(&p.replica_nodes),
                            isr: ids(&p.isr_nodes),
                            error_code: p.error_code,
                        })
                        .collect(),
                })
            })
            .collect(),
    })
}

/// The cluster id a broker reports (Metadata v2+ for no topic: a few
/// bytes each way). None: it reports none.
pub fn cluster_id(conn: &mut BrokerConnection, deadline: &Deadline) -> Result<Option<String>, WireError> {
    let version = conn.versions().pick(ApiKey::Metadata, (2, 12)).ok_or(WireError::Unsupported("Metadata v2+"))?;
    let request = MetadataRequest::default().with_topics(Some(Vec::new())).with_allow_auto_topic_creation(false);
    let answer: MetadataResponse = conn.call(ApiKey::Metadata, version, &request, deadline)?;
    Ok(answer.cluster_id.map(|c| c.to_string()).filter(|c| !c.is_empty()))
}

/// Refuses `found` unless it is `expected` (the id the monitor pinned),
/// naming both: the one check behind the connect-time probe and the
/// Metadata answers of connections opened before the pin.
pub fn check_cluster_id(found: Option<&str>, expected: &str, address: &str) -> Result<(), WireError> {
    match found {
        Some(id) if id == expected => Ok(()),
        found => Err(WireError::WrongCluster(format!(
            "{address} belongs to cluster {}, not to {expected}, the cluster this monitor is pinned to",
            found.unwrap_or("(none reported)")
        ))),
    }
}

/// One partition's ListOffsets answer: the offset, or the broker's error code.
pub type PartitionAnswer = (String, i32, Result<i64, i16>);

/// Offsets at `timestamp` ([`EARLIEST`] or [`LATEST`]) of `partitions`, all
/// led by this broker, in one request (v1+; read-uncommitted, so LATEST is
/// the high watermark, as kafka_exporter and librdkafka's admin call read).
/// A negative offset in an answer is no offset: reported as an error.
pub fn list_offsets(
    conn: &mut BrokerConnection,
    partitions: &[(String, i32)],
    timestamp: i64,
    deadline: &Deadline,
) -> Result<Vec<PartitionAnswer>, WireError> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let version = conn.versions().pick(ApiKey::ListOffsets, (1, 9)).ok_or(WireError::Unsupported("ListOffsets"))?;
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for (t, p) in partitions {
        by_topic.entry(t.as_str()).or_default().push(*p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, ps)| {
            ListOffsetsTopic::default().with_name(TopicName(StrBytes::from_string(t.to_string()))).with_partitions(
                ps.into_iter()
                    .map(|p| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(timestamp))
                    .collect(),
            )
        })
        .collect();
    let request =
        ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_isolation_level(0).with_topics(topics);
    let answer: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, version, &request, deadline)?;
    Ok(answer
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                let result = match (p.error_code, p.offset) {
                    (0, o) if o >= 0 => Ok(o),
                    // UNKNOWN_SERVER_ERROR (-1) stands for "no offset" here.
                    (0, _) => Err(-1),
                    (code, _) => Err(code),
                };
                (t.name.0.to_string(), p.partition_index, result)
            })
        })
        .collect())
}
