//! A monitor's health as an operator sees it, and why a collection failed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The states of a monitor's life. The actor moves between them; the API and
/// `/metrics` report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MonitorState {
    /// Client being built, no collection finished yet.
    Starting,
    /// Last collection complete.
    Running,
    /// Last collection succeeded but was partial (see the snapshot's warnings).
    Degraded,
    /// Last collection failed; retrying on the next tick or after a client rebuild.
    Failing,
    /// The restart limit was reached; retrying only at the slowest backoff.
    Failed,
    /// Stopped and its client closed.
    Stopped,
    /// Judged by a reader, never set by the actor: the owner's next result
    /// is overdue past the stale bound ([`crate::result::StaleRule`]), so
    /// the last one is not served as current (no snapshot, `up` 0).
    Stale,
}

impl MonitorState {
    pub const ALL: [MonitorState; 7] = [
        MonitorState::Starting,
        MonitorState::Running,
        MonitorState::Degraded,
        MonitorState::Failing,
        MonitorState::Failed,
        MonitorState::Stopped,
        MonitorState::Stale,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorState::Starting => "starting",
            MonitorState::Running => "running",
            MonitorState::Degraded => "degraded",
            MonitorState::Failing => "failing",
            MonitorState::Failed => "failed",
            MonitorState::Stopped => "stopped",
            MonitorState::Stale => "stale",
        }
    }
}

impl fmt::Display for MonitorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classes of collection failure, used as the `kind` label of
/// `kollector_collection_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The client could not be built from the spec.
    Client,
    /// Brokers unreachable or a transport failure.
    Connection,
    /// The collection did not finish within the monitor's timeout.
    Timeout,
    /// Kafka answered with an error.
    Kafka,
    /// The cluster id differs from the pinned or expected one.
    IdentityMismatch,
    /// The collection code panicked; contained and reported.
    Panic,
    /// Abandoned at the collector's fence: its etcd lease may be lost, so it
    /// stopped talking to Kafka and closed the client (cluster mode).
    Fenced,
    /// The result was too large to send to the manager (cluster mode).
    ResultTooLarge,
    /// The credentials were refused or could not be had: the token
    /// endpoint or the AWS credentials chain gave no token (its answer is in
    /// the message), or every broker asked refused the monitor's password,
    /// token or TLS certificate.
    Authentication,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Client,
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Kafka,
        ErrorKind::IdentityMismatch,
        ErrorKind::Panic,
        ErrorKind::Fenced,
        ErrorKind::ResultTooLarge,
        ErrorKind::Authentication,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Kafka => "kafka",
            ErrorKind::IdentityMismatch => "identity_mismatch",
            ErrorKind::Panic => "panic",
            ErrorKind::Fenced => "fenced",
            ErrorKind::ResultTooLarge => "result_too_large",
            ErrorKind::Authentication => "authentication",
        }
    }
}

/// Why one collection failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct CollectError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CollectError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CollectError { kind, message: message.into() }
    }
}

/// A monitor's status as reported by its actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    pub state: MonitorState,
    /// Why the monitor is not Running, in words.
    pub reason: Option<String>,
    pub consecutive_failures: u32,
    /// Client rebuilds since the monitor started.
    pub restarts: u32,
    /// The cluster id this monitor is pinned to (first success, or expected_cluster_id).
    pub pinned_cluster_id: Option<String>,
}
