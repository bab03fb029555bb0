//! Running the actors next to tokio.
//!
//! actix actors live on single-threaded arbiters, while tonic and axum want a
//! multi-thread tokio runtime. The node runs an actix `System` on its own
//! thread and hands out a [`CollectorHandle`] (an `Addr`, which is `Send`)
//! that async code on any runtime can call.

use std::sync::mpsc;

use actix::prelude::*;
use kollector_core::{MonitorId, MonitorSpec};
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
        std::thread::Builder::new().name("kollector-actors".into()).spawn(move || {
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
        Ok(CollectorHandle { registry, store, system })
    }
}

impl CollectorHandle {
    /// Starts or restarts a monitor; returns after any older client is closed.
    pub async fn assign(&self, spec: MonitorSpec) -> Result<AssignOutcome, RegistryError> {
        self.registry.send(Assign(spec)).await.map_err(|_| RegistryError::ShuttingDown)?
    }

    /// Stops a monitor; returns after its client is closed.
    pub async fn unassign(&self, id: MonitorId) -> Result<(), RegistryError> {
        self.registry.send(Unassign(id)).await.map_err(|_| RegistryError::ShuttingDown)?
    }

    pub async fn list_running(&self) -> Vec<RunningMonitor> {
        self.registry.send(ListRunning).await.unwrap_or_default()
    }

    pub fn store(&self) -> &ResultStore {
        &self.store
    }

    /// Stops every monitor (closing every client), then the actor system.
    pub async fn shutdown(&self) {
        let _ = self.registry.send(StopAll { refuse_new: true }).await;
        self.system.stop();
    }

    /// Self-fencing: stops every monitor and waits until every client is
    /// closed, but keeps accepting assignments afterwards.
    pub async fn fence(&self) {
        let _ = self.registry.send(StopAll { refuse_new: false }).await;
    }
}
