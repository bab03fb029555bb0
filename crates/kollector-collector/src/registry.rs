//! `MonitorRegistry`: the only place monitors are started and stopped.
//!
//! Every start and stop in the process goes through [`Assign`] and
//! [`Unassign`]. Both are answered only after the old monitor's Kafka client
//! is closed, so when a caller hears "done", no client of the old spec
//! exists. The registry handles one request at a time (`AtomicResponse`):
//! two concurrent updates of one monitor can never interleave into two live
//! actors. It also supervises: a monitor actor that stops without being asked
//! is restarted after a short delay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use kollector_core::{Generation, MonitorId, MonitorSpec};
use kollector_kafka::ClientOptions;

use crate::gate::CollectGate;
use crate::monitor_actor::{MonitorActor, MonitorExited, Stop};
use crate::store::ResultStore;

/// Delay before restarting a monitor actor that stopped on its own.
const RESTART_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("monitor {id} runs generation {running}; refusing older generation {offered}")]
    StaleGeneration { id: MonitorId, running: Generation, offered: Generation },
    #[error("monitor {0} is not running")]
    NotRunning(MonitorId),
    #[error("the collector is shutting down")]
    ShuttingDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignOutcome {
    /// The monitor was not running and now is.
    Started,
    /// An older generation was stopped (client closed), then the new one started.
    Restarted,
    /// The same generation and spec already run: nothing was done.
    Unchanged,
}

/// Start `spec`, replacing any other generation of the same monitor.
#[derive(Message)]
#[rtype(result = "Result<AssignOutcome, RegistryError>")]
pub struct Assign(pub MonitorSpec);

/// Stop a monitor and close its client.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct Unassign(pub MonitorId);

/// What runs here.
#[derive(Message)]
#[rtype(result = "Vec<RunningMonitor>")]
pub struct ListRunning;

/// Stop every monitor (closing every client). With `refuse_new`, later
/// Assigns are refused (shutdown); without it (self-fencing) the node keeps
/// accepting once the manager assigns again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll {
    pub refuse_new: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningMonitor {
    pub id: MonitorId,
    pub generation: Generation,
}

struct Running {
    addr: Addr<MonitorActor>,
    spec: Arc<MonitorSpec>,
}

pub struct MonitorRegistry {
    running: HashMap<MonitorId, Running>,
    store: ResultStore,
    options: ClientOptions,
    gate: CollectGate,
    shutting_down: bool,
}

impl MonitorRegistry {
    pub fn new(store: ResultStore, options: ClientOptions, gate: CollectGate) -> Self {
        MonitorRegistry { running: HashMap::new(), store, options, gate, shutting_down: false }
    }

    fn start_monitor(&mut self, spec: Arc<MonitorSpec>, ctx: &mut Context<Self>) {
        self.store.open(spec.clone());
        let actor = MonitorActor::new(
            spec.clone(),
            self.options.clone(),
            self.gate.clone(),
            self.store.clone(),
            Some(ctx.address().recipient()),
        );
        let addr = actor.start();
        self.running.insert(spec.id.clone(), Running { addr, spec });
    }
}

impl Actor for MonitorRegistry {
    type Context = Context<Self>;
}

/// Sends Stop and waits for the answer, which comes after the client closed.
/// A mailbox error means the actor is already gone, which is also "stopped".
async fn stop_actor(addr: Addr<MonitorActor>) {
    let _ = addr.send(Stop).await;
}

impl Handler<Assign> for MonitorRegistry {
    type Result = AtomicResponse<Self, Result<AssignOutcome, RegistryError>>;

    fn handle(&mut self, Assign(spec): Assign, _ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(RegistryError::ShuttingDown))));
        }
        let old = match self.running.get(&spec.id) {
            Some(r) if r.spec.generation > spec.generation => {
                let err = RegistryError::StaleGeneration {
                    id: spec.id.clone(),
                    running: r.spec.generation,
                    offered: spec.generation,
                };
                return AtomicResponse::new(Box::pin(actix::fut::ready(Err(err))));
            }
            Some(r) if *r.spec == spec => {
                return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(AssignOutcome::Unchanged))));
            }
            Some(_) => self.running.remove(&spec.id),
            None => None,
        };
        let spec = Arc::new(spec);
        let outcome = if old.is_some() { AssignOutcome::Restarted } else { AssignOutcome::Started };
        let stop_old = async move {
            if let Some(old) = old {
                stop_actor(old.addr).await;
            }
        };
        AtomicResponse::new(Box::pin(actix::fut::wrap_future::<_, Self>(stop_old).map(move |_, act, ctx| {
            act.start_monitor(spec, ctx);
            Ok(outcome)
        })))
    }
}

impl Handler<Unassign> for MonitorRegistry {
    type Result = AtomicResponse<Self, Result<(), RegistryError>>;

    fn handle(&mut self, Unassign(id): Unassign, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(old) = self.running.remove(&id) else {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(RegistryError::NotRunning(id)))));
        };
        AtomicResponse::new(Box::pin(actix::fut::wrap_future::<_, Self>(stop_actor(old.addr)).map(move |_, act, _| {
            act.store.remove(&id);
            Ok(())
        })))
    }
}

impl Handler<ListRunning> for MonitorRegistry {
    type Result = MessageResult<ListRunning>;

    fn handle(&mut self, _: ListRunning, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<RunningMonitor> = self
            .running
            .values()
            .map(|r| RunningMonitor { id: r.spec.id.clone(), generation: r.spec.generation })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        MessageResult(v)
    }
}

impl Handler<StopAll> for MonitorRegistry {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: StopAll, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down |= msg.refuse_new;
        let all: Vec<(MonitorId, Addr<MonitorActor>)> = self.running.drain().map(|(id, r)| (id, r.addr)).collect();
        let ids: Vec<MonitorId> = all.iter().map(|(id, _)| id.clone()).collect();
        let stops = futures::future::join_all(all.into_iter().map(|(_, addr)| stop_actor(addr)));
        AtomicResponse::new(Box::pin(actix::fut::wrap_future::<_, Self>(stops).map(move |_, act, _| {
            for id in ids {
                act.store.remove(&id);
            }
        })))
    }
}

impl Handler<MonitorExited> for MonitorRegistry {
    type Result = ();

    fn handle(&mut self, msg: MonitorExited, ctx: &mut Context<Self>) {
        let still_wanted = self
            .running
            .get(&msg.spec.id)
            .is_some_and(|r| r.spec.generation == msg.spec.generation && !r.addr.connected());
        if !still_wanted || self.shutting_down {
            return;
        }
        tracing::warn!(monitor = %msg.spec.id, "monitor actor exited unexpectedly; restarting in {RESTART_DELAY:?}");
        ctx.run_later(RESTART_DELAY, move |act, ctx| {
            let still_wanted = act
                .running
                .get(&msg.spec.id)
                .is_some_and(|r| r.spec.generation == msg.spec.generation && !r.addr.connected());
            if still_wanted && !act.shutting_down {
                act.start_monitor(msg.spec, ctx);
            }
        });
    }
}
