//! The latest result of one monitor: the one shape every reader uses.
//!
//! A monitor actor writes it after each collection; the collector's
//! `/metrics`, its result stream, the manager's intake, GetLatest and the
//! manager's cluster-wide `/metrics` all read this same type. It is
//! converted to the wire only at the gRPC edge (`kollector-proto`).
//!
//! `generation` and `epoch` are those in force when the collection
//! *started*: a result can only be accepted under the spec and the
//! assignment it was collected for.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{CollectorId, Epoch, Generation, MonitorId};
use crate::snapshot::Snapshot;
use crate::status::{CollectError, ErrorKind, MonitorState, MonitorStatus};

#[derive(Clone, Debug, PartialEq)]
pub struct MonitorResult {
    pub monitor: MonitorId,
    pub generation: Generation,
    /// The assignment epoch the latest attempt ran under (0 in standalone mode).
    pub epoch: Epoch,
    /// The collector that produced it (cluster mode, set by the receiver
    /// from the stream it came on).
    pub collector: Option<CollectorId>,
    pub status: MonitorStatus,
    /// The last successful snapshot of this generation.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The error of the latest attempt, if it failed.
    pub error: Option<CollectError>,
    /// Unix ms of the latest attempt (success or failure); 0 before the first.
    pub attempted_at_ms: u64,
    /// Unix ms of the latest success.
    pub last_success_ms: Option<u64>,
    /// Counters kept across generations of the same monitor on one node.
    pub collections_total: u64,
    pub errors_total: BTreeMap<ErrorKind, u64>,
    pub restarts_total: u64,
}

impl MonitorResult {
    /// A fresh result for a monitor that has not collected yet.
    pub fn starting(monitor: MonitorId, generation: Generation, pinned_cluster_id: Option<String>) -> Self {
        MonitorResult {
            monitor,
            generation,
            epoch: 0,
            collector: None,
            status: MonitorStatus {
                state: MonitorState::Starting,
                reason: None,
                consecutive_failures: 0,
                restarts: 0,
                pinned_cluster_id,
            },
            snapshot: None,
            error: None,
            attempted_at_ms: 0,
            last_success_ms: None,
            collections_total: 0,
            errors_total: BTreeMap::new(),
            restarts_total: 0,
        }
    }

    /// The snapshot to publish as current: only when the latest attempt succeeded.
    pub fn current_snapshot(&self) -> Option<&Arc<Snapshot>> {
        if self.error.is_none() {
            self.snapshot.as_ref()
        } else {
            None
        }
    }
}
