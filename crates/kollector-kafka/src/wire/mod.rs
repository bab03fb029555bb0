//! Group requests at the physical floor, sent directly over a connection
//! the monitor owns (issue 10, in progress: not yet used by `collect`).
//!
//! librdkafka 2.12 cannot batch group calls: `rd_kafka_ListConsumerGroupOffsets`
//! takes exactly one group, DescribeConsumerGroups sends one request per
//! group, its coordinator cache holds about a dozen entries, and no public
//! API sends a raw request. So a cycle of G groups costs 2G to 4G requests
//! (BENCHMARKS.md). Here the monitor speaks the protocol itself, with the
//! `kafka-protocol` crate for encoding: per broker one ListGroups, one
//! DescribeGroups with all of its groups and OffsetFetch v8+ with hundreds of
//! groups per request, versions chosen from the broker's ApiVersions answer.
//!
//! - `connection.rs`: one broker connection, framing, ApiVersions, bounds.
//! - `versions.rs`: which version to send (pure).
//! - `groups.rs`: the batched group requests on one connection.

pub mod connection;
pub mod groups;
pub mod versions;

pub use kafka_protocol::messages::ApiKey;

/// Why a direct group request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(String),
    #[error("timed out talking to {0}")]
    Timeout(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{api} answered error code {code}")]
    Broker { api: &'static str, code: i16 },
    #[error("the broker does not offer {0}")]
    Unsupported(&'static str),
}
