//! Group requests at the physical floor, sent directly over connections
//! the monitor owns (one per broker, closed with the monitor's client).
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
//! - `connection.rs`: one broker connection, framing, TLS, SASL, ApiVersions, bounds.
//! - `security.rs`: TLS and SASL settings from the spec, or why the direct path cannot serve them.
//! - `versions.rs`: which version to send (pure).
//! - `groups.rs`: the batched group requests on one connection.
//! - `group_plan.rs`: which group goes where, what to retry (pure).
//! - `group_cycle.rs`: one cycle's group reads over every broker, executing the plan.

pub mod cluster;
pub mod cluster_cycle;
pub mod connection;
pub mod group_cycle;
pub mod group_plan;
pub mod groups;
pub mod security;
pub mod versions;

use crate::deadline::Stop;

pub use kafka_protocol::messages::ApiKey;

/// Kafka's name for an error code, e.g. "NotCoordinator (16)".
pub fn error_name(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        Some(e) => format!("{e} ({code})"),
        None => "no error (0)".into(),
    }
}

/// `host:port`, with an IPv6 literal host in brackets.
pub fn broker_address(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why a direct group request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(String),
    #[error("{0}")]
    Oversized(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{api} answered error code {code}")]
    Broker { api: &'static str, code: i16 },
    #[error("the broker does not offer {0}")]
    Unsupported(&'static str),
    #[error("authentication failed: {0}")]
    Authentication(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// The broker throttled this connection for longer than the budget left.
    #[error("{0}")]
    Throttled(String),
    /// The broker at this address belongs to another cluster.
    #[error("another cluster: {0}")]
    WrongCluster(String),
    #[error("{}", match .0 { Stop::TimedOut => "no answer in time (the broker's budget or the collection's timeout passed)", Stop::Fenced => "the collection was abandoned at the fence" })]
    Stopped(Stop),
}

impl WireError {
    /// Whether the connection is unusable after this error (the request
    /// may be half-sent or its answer half-read): it is closed and opened
    /// again next time.
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, WireError::Broker { .. } | WireError::Unsupported(_) | WireError::Throttled(_))
    }

    /// Whether a failure on a kept connection is worth one retry on a fresh
    /// one (it may have died while idle): not when time ran out, and not
    /// when the address reaches another cluster (a fresh socket would too).
    pub fn worth_a_fresh_connection(&self) -> bool {
        self.breaks_connection() && !matches!(self, WireError::Stopped(_) | WireError::WrongCluster(_))
    }
}
