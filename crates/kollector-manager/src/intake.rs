//! Results intake: the latest result of every monitor, cluster-wide.
//!
//! Every manager (leader or standby) subscribes to every live collector's
//! `StreamResults`, so any of them can answer GetLatest and serve the
//! cluster-wide `/metrics`. A result is accepted only if it comes from the
//! collector that currently owns the monitor, under the current assignment
//! epoch; anything else (a fenced or paused former owner still talking) is
//! dropped and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kollector_core::{CollectorId, MonitorId};
use kollector_proto::v1::{self as pb};
use tokio::task::JoinHandle;

use crate::cluster_store::{Assignment, ClusterStore};
use crate::reconciler::CollectorClients;

#[derive(Default)]
struct Shared {
    latest: RwLock<BTreeMap<MonitorId, pb::MonitorResult>>,
    assignments: RwLock<BTreeMap<MonitorId, Assignment>>,
    stale_dropped: AtomicU64,
}

/// A handle to the intake's results; cheap to clone.
#[derive(Clone, Default)]
pub struct Intake {
    shared: Arc<Shared>,
}

impl Intake {
    /// Starts following collectors and assignments in the background.
    pub fn start(store: ClusterStore, clients: CollectorClients) -> (Intake, JoinHandle<()>) {
        let intake = Intake::default();
        let shared = intake.shared.clone();
        let task = tokio::spawn(async move {
            let mut streams: HashMap<CollectorId, (String, JoinHandle<()>)> = HashMap::new();
            loop {
                if let Ok((a, _)) = store.assignments().await {
                    if let Ok(mut cur) = shared.assignments.write() {
                        *cur = a;
                    }
                    // Forget results of monitors that no longer exist.
                    let keep: Vec<MonitorId> =
                        shared.assignments.read().map(|a| a.keys().cloned().collect()).unwrap_or_default();
                    if let Ok(mut latest) = shared.latest.write() {
                        latest.retain(|m, _| keep.contains(m));
                    }
                }
                if let Ok(collectors) = store.collectors().await {
                    streams.retain(|id, (addr, task)| {
                        let keep = collectors.get(id).is_some_and(|r| &r.grpc_address == addr) && !task.is_finished();
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for (id, rec) in collectors {
                        if streams.contains_key(&id) {
                            continue;
                        }
                        let task = tokio::spawn(follow(
                            id.clone(),
                            rec.grpc_address.clone(),
                            clients.clone(),
                            store.clone(),
                            shared.clone(),
                        ));
                        streams.insert(id, (rec.grpc_address, task));
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        (intake, task)
    }

    pub fn latest(&self, id: &MonitorId) -> Option<pb::MonitorResult> {
        self.shared.latest.read().ok()?.get(id).cloned()
    }

    pub fn all(&self) -> Vec<pb::MonitorResult> {
        self.shared.latest.read().map(|l| l.values().cloned().collect()).unwrap_or_default()
    }

    pub fn stale_dropped(&self) -> u64 {
        self.shared.stale_dropped.load(Ordering::Relaxed)
    }
}

/// Follows one collector's result stream until it ends.
async fn follow(id: CollectorId, address: String, clients: CollectorClients, store: ClusterStore, shared: Arc<Shared>) {
    let Ok(mut client) = clients.get(&address).await else { return };
    let mut stream = match client.stream_results(pb::StreamResultsRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            tracing::debug!(collector = %id, "results stream unavailable: {}", e.message());
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    while let Ok(Some(result)) = stream.message().await {
        let Ok(monitor) = MonitorId::new(result.monitor_id.clone()) else { continue };
        let cached = shared.assignments.read().ok().and_then(|a| a.get(&monitor).cloned());
        let is_current = |a: &Option<Assignment>| {
            a.as_ref().is_some_and(|a| a.collector.as_str() == result.collector_id && a.epoch == result.epoch)
        };
        let mut current = is_current(&cached);
        if !current && cached.as_ref().is_none_or(|a| result.epoch > a.epoch) {
            // The result may be newer than our cache: read the assignments again before judging.
            if let Ok((fresh, _)) = store.assignments().await {
                current = is_current(&fresh.get(&monitor).cloned());
                if let Ok(mut cur) = shared.assignments.write() {
                    *cur = fresh;
                }
            }
        }
        if !current {
            shared.stale_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(monitor = %monitor, collector = %id, epoch = result.epoch, "dropped a result from a stale assignment");
            continue;
        }
        if let Ok(mut latest) = shared.latest.write() {
            latest.insert(monitor, result);
        }
    }
}
