//! A collector as a member of the cluster: how its etcd lease drives it.
//!
//! The lease (kept by `kollector_coordination::membership`) is wired to three
//! things here, in one place:
//! - every renewal moves the collect gate's deadline (no collection, and no
//!   Kafka traffic of an in-flight one, past the lease's safe end);
//! - the lease id is what Assigns must be addressed to ([`CurrentLease`]);
//!   it reads 0 from the moment the lease is lost until a new one is held;
//! - losing it fences: the gate shuts, the lease reads 0, and every monitor
//!   is stopped with its Kafka client closed before the lease can expire.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kollector_coordination::membership::{Membership, MembershipConfig, MembershipState};
use tokio::sync::watch;

use crate::gate::CollectGate;
use crate::metrics::Extra;
use crate::node::CollectorHandle;
use crate::service::CurrentLease;

pub struct ClusterMember {
    membership: Membership,
    gate: CollectGate,
    lease: CurrentLease,
    /// Set when leaving: renewals no longer open the gate.
    leaving: Arc<AtomicBool>,
    keepalive_us: Arc<AtomicU64>,
    fences: Arc<AtomicU64>,
    lease_task: tokio::task::JoinHandle<()>,
}

impl ClusterMember {
    /// Registers and keeps the lease; `gate` must be the node's gate.
    pub fn start(config: MembershipConfig, node: CollectorHandle, gate: CollectGate, lease: CurrentLease) -> Self {
        let keepalive_us = Arc::new(AtomicU64::new(0));
        let fences = Arc::new(AtomicU64::new(0));
        let (fence_gate, fence_lease, fence_count) = (gate.clone(), lease.clone(), fences.clone());
        let (own_gate, own_lease) = (gate.clone(), lease.clone());
        let renew_us = keepalive_us.clone();
        let leaving = Arc::new(AtomicBool::new(false));
        let renew_leaving = leaving.clone();
        let fence_leaving = leaving.clone();
        let membership = Membership::start(
            config,
            Box::new(move || {
                let (node, gate, lease) = (node.clone(), fence_gate.clone(), fence_lease.clone());
                let leaving = fence_leaving.clone();
                fence_count.fetch_add(1, Ordering::Relaxed);
                Box::pin(async move {
                    gate.close();
                    lease.set(0);
                    if !node.fence().await {
                        // The registry could not be told to stop its
                        // monitors: actors it lost track of might still
                        // tick. The gate must never open again; the node
                        // notices its actor system is gone and exits.
                        leaving.store(true, Ordering::SeqCst);
                        tracing::error!(
                            "fencing could not reach the monitor registry; this collector stops collecting for good"
                        );
                    }
                })
            }),
            Box::new(move |until, rtt| {
                if !renew_leaving.load(Ordering::SeqCst) {
                    gate.open_until(until.into_std());
                }
                renew_us.store(rtt.as_micros() as u64, Ordering::Relaxed);
            }),
        );
        let mut state = membership.state();
        let task_leaving = leaving.clone();
        let lease_task = tokio::spawn(async move {
            loop {
                let held = match &*state.borrow_and_update() {
                    MembershipState::Registered { lease } if !task_leaving.load(Ordering::SeqCst) => *lease,
                    _ => 0,
                };
                lease.set(held);
                // Leaving may have begun between the read and the set above.
                if task_leaving.load(Ordering::SeqCst) {
                    lease.set(0);
                }
                if state.changed().await.is_err() {
                    lease.set(0);
                    return;
                }
            }
        });
        ClusterMember { membership, gate: own_gate, lease: own_lease, leaving, keepalive_us, fences, lease_task }
    }

    /// Before leaving: no new collection, no new Assign accepted.
    pub async fn stop_collecting(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        self.lease_task.abort();
        self.lease.set(0);
        self.gate.close();
    }

    pub fn state(&self) -> watch::Receiver<MembershipState> {
        self.membership.state()
    }

    /// Resolves with the reason if membership gave up for good (another
    /// live process holds this collector id).
    pub async fn failed(&self) -> String {
        let mut state = self.membership.state();
        loop {
            if let MembershipState::Failed { reason } = &*state.borrow_and_update() {
                return reason.clone();
            }
            if state.changed().await.is_err() {
                return "membership ended".into();
            }
        }
    }

    /// Lease health for `/metrics`.
    pub fn metrics(&self) -> Arc<dyn Fn() -> Vec<Extra> + Send + Sync> {
        let (k, f) = (self.keepalive_us.clone(), self.fences.clone());
        Arc::new(move || {
            vec![
                Extra {
                    name: "kollector_lease_keepalive_latency_seconds",
                    help: "Round trip of the latest successful etcd lease keepalive.",
                    value: k.load(Ordering::Relaxed) as f64 / 1e6,
                    counter: false,
                },
                Extra {
                    name: "kollector_lease_fences",
                    help: "Times this collector fenced itself (stopped every monitor) after losing its lease.",
                    value: f.load(Ordering::Relaxed) as f64,
                    counter: true,
                },
            ]
        })
    }

    /// Revokes the lease (the key disappears at once) and stops.
    pub async fn leave(self) {
        self.membership.leave().await;
        self.lease_task.abort();
    }
}
