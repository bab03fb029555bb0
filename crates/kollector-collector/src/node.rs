//! Running the actors next to tokio.
//!
//! actix actors live on single-threaded arbiters, while tonic and axum want a
//! multi-thread tokio runtime. The node runs an actix `System` on its own
//! thread and hands out a [`CollectorHandle`] (an `Addr`, which is `Send`)
//! that async code on any runtime can call.
//!
//! Commands for one monitor are serialized by its [`MonitorTurn`]: whoever
//! changes a monitor (the CollectorService checking fencing tokens, the
//! standalone manager) holds the turn from its check to its effect, and
//! commands for other monitors never wait for it.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};

use actix::prelude::*;
use kollector_core::{Epoch, MonitorId, MonitorSpec};
use kollector_kafka::ClientOptions;

use crate::gate::CollectGate;
use crate::registry::{
    Assign, AssignOutcome, ListRunning, MonitorRegistry, RegistryError, RunningMonitor, StopAll, Unassign,
};
use crate::store::ResultStore;

/// Starts collector nodes.
pub struct CollectorNode;

/// A `Send + Clone` handle to a running node's registry and results.
#[derive(Clone)]
pub struct CollectorHandle {
    registry: Addr<MonitorRegistry>,
    store: ResultStore,
    system: System,
    turns: Arc<std::sync::Mutex<HashMap<MonitorId, Arc<tokio::sync::Mutex<()>>>>>,
    /// Becomes true when the actor system's thread ends, for whatever reason.
    actors_ended: tokio::sync::watch::Receiver<bool>,
}

/// The exclusive right to change one monitor, held from a command's checks
/// to its effect. Dropping it lets the next command for that monitor in.
pub struct MonitorTurn {
    id: MonitorId,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl MonitorTurn {
    pub fn id(&self) -> &MonitorId {
        &self.id
    }
}

impl CollectorNode {
    /// Starts the actor system on a new thread named `kollector-actors`,
    /// with the gate always open (standalone mode).
    pub fn start(options: ClientOptions) -> std::io::Result<CollectorHandle> {
        Self::start_gated(options, CollectGate::open())
    }

    /// Starts with a collect gate that cluster membership opens and shuts.
    pub fn start_gated(options: ClientOptions, gate: CollectGate) -> std::io::Result<CollectorHandle> {
        let store = ResultStore::new();
        let (tx, rx) = mpsc::channel();
        let thread_store = store.clone();
        let (ended_tx, actors_ended) = tokio::sync::watch::channel(false);
        std::thread::Builder::new().name("kollector-actors".into()).spawn(move || {
            // Sent when this thread ends, also by unwinding from a panic.
            struct Ended(tokio::sync::watch::Sender<bool>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    let _ = self.0.send(true);
                }
            }
            let _ended = Ended(ended_tx);
            let runner = System::new();
            runner.block_on(async move {
                let registry = MonitorRegistry::new(thread_store, options, gate).start();
                let _ = tx.send((registry, System::current()));
            });
            if let Err(e) = runner.run() {
                tracing::error!("actor system ended with an error: {e}");
            }
        })?;
        let (registry, system) =
            rx.recv().map_err(|_| std::io::Error::other("the actor system thread ended before starting"))?;
        Ok(CollectorHandle { registry, store, system, turns: Arc::default(), actors_ended })
    }
}

impl CollectorHandle {
    /// Waits for the turn to change monitor `id`.
    pub async fn turn(&self, id: &MonitorId) -> MonitorTurn {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            // Forget turns nobody holds or waits for (ids come and go).
            turns.retain(|_, m| Arc::strong_count(m) > 1);
            turns.entry(id.clone()).or_default().clone()
        };
        MonitorTurn { id: id.clone(), _guard: lock.lock_owned().await }
    }

    /// Starts or restarts a monitor (standalone: no epoch); returns after
    /// any older client is closed. Takes the monitor's turn itself.
    pub async fn assign(&self, spec: MonitorSpec) -> Result<AssignOutcome, RegistryError> {
        let turn = self.turn(&spec.id).await;
        self.assign_in_turn(&turn, spec, 0, None).await
    }

    /// Stops a monitor; returns after its client is closed. Takes its turn itself.
    pub async fn unassign(&self, id: MonitorId) -> Result<(), RegistryError> {
        let turn = self.turn(&id).await;
        self.unassign_in_turn(&turn).await
    }

    /// Starts or restarts a monitor under assignment `epoch`; returns after
    /// any older client is closed. `turn` must be the monitor's; `lease`
    /// (cluster mode) is the lease the command was addressed to, which must
    /// still be held when the monitor starts.
    pub async fn assign_in_turn(
        &self,
        turn: &MonitorTurn,
        spec: MonitorSpec,
        epoch: Epoch,
        lease: Option<(crate::service::CurrentLease, i64)>,
    ) -> Result<AssignOutcome, RegistryError> {
        debug_assert_eq!(turn.id(), &spec.id);
        if turn.id() != &spec.id {
            return Err(RegistryError::NotRunning(spec.id));
        }
        self.registry.send(Assign { spec, epoch, lease }).await.map_err(|_| RegistryError::ShuttingDown)?
    }

    /// Stops a monitor; returns after its client is closed. `turn` must be its.
    pub async fn unassign_in_turn(&self, turn: &MonitorTurn) -> Result<(), RegistryError> {
        self.registry.send(Unassign(turn.id().clone())).await.map_err(|_| RegistryError::ShuttingDown)?
    }

    pub async fn list_running(&self) -> Vec<RunningMonitor> {
        self.try_list_running().await.unwrap_or_default()
    }

    /// What runs here, or None if the registry cannot answer (its actor
    /// is gone): never "nothing" for "cannot tell".
    pub async fn try_list_running(&self) -> Option<Vec<RunningMonitor>> {
        self.registry.send(ListRunning).await.ok()
    }

    pub fn store(&self) -> &ResultStore {
        &self.store
    }

    /// Resolves when the actor system has ended (after [`Self::shutdown`],
    /// or because it died): a node that cannot run monitors must not keep
    /// its lease.
    pub async fn actors_ended(&self) {
        let mut ended = self.actors_ended.clone();
        // A panic in an actor does not end the thread (the runtime catches
        // it), so the registry's own liveness is watched too.
        loop {
            tokio::select! {
                _ = ended.wait_for(|e| *e) => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            if !self.registry.connected() {
                return;
            }
        }
    }

    /// Stops every monitor (closing every client), then the actor system.
    pub async fn shutdown(&self) {
        let _ = self.registry.send(StopAll { refuse_new: true }).await;
        self.system.stop();
    }

    /// Self-fencing: stops every monitor and waits until every client is
    /// closed, but keeps accepting assignments afterwards. False if the
    /// registry could not be reached (then nothing is known to be stopped).
    pub async fn fence(&self) -> bool {
        self.registry.send(StopAll { refuse_new: false }).await.is_ok()
    }
}
