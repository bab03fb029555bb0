//! `MonitorRegistry`: the only place monitors are started and stopped.
//!
//! Every start and stop in the process goes through [`Assign`] and
//! [`Unassign`]. Both are answered only after the old monitor's Kafka client
//! is closed, so when a caller hears "done", no client of the old spec
//! exists.
//!
//! Commands are serialized **per monitor, not per registry**: callers hold
//! the monitor's [`MonitorTurn`] (see `node.rs`) across a command, and the
//! registry itself never blocks on a stop. While one monitor waits for its
//! client to close (a black-holed broker, a long timeout), every other
//! monitor's commands and `ListRunning` are answered at once. A monitor
//! being stopped is still listed (as `stopping`): until its client is closed
//! it counts as running here, so the manager will not start it elsewhere.
//!
//! A fence or shutdown ([`StopAll`]) bumps `stop_seq`; an Assign that was
//! waiting for an old client to close when that happened does not start its
//! monitor afterwards. The registry also supervises: a monitor actor that
//! stops without being asked is restarted after a short delay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::{BoxFuture, FutureExt as _, Shared};
use kollector_core::{Epoch, Generation, MonitorId, MonitorSpec};
use kollector_kafka::ClientOptions;

use crate::gate::CollectGate;
use crate::monitor_actor::{MonitorActor, MonitorExited, Stop};
use crate::service::CurrentLease;
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
    #[error("the collector fenced itself while starting monitor {0}; it was not started")]
    Fenced(MonitorId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignOutcome {
    /// The monitor was not running and now is.
    Started,
    /// An older generation was stopped (client closed), then the new one started.
    Restarted,
    /// The same generation and spec already run: nothing was done (the epoch is updated).
    Unchanged,
}

impl AssignOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AssignOutcome::Started => "started",
            AssignOutcome::Restarted => "restarted",
            AssignOutcome::Unchanged => "unchanged",
        }
    }
}

/// Start `spec` under assignment `epoch`, replacing any other generation of
/// the same monitor. Send only while holding the monitor's turn.
///
/// `lease` (cluster mode): the lease the command was addressed to. It is
/// checked again when the registry handles the Assign and when the monitor
/// starts, so a fence that happens between the service's check and the
/// start (it sets the current lease to 0 before stopping everything) wins.
#[derive(Message)]
#[rtype(result = "Result<AssignOutcome, RegistryError>")]
pub(crate) struct Assign {
    pub spec: MonitorSpec,
    pub epoch: Epoch,
    pub lease: Option<(CurrentLease, i64)>,
}

fn lease_held(lease: &Option<(CurrentLease, i64)>) -> bool {
    lease.as_ref().is_none_or(|(current, expected)| current.get() == *expected)
}

/// Stop a monitor and close its client. Send only while holding its turn.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub(crate) struct Unassign(pub MonitorId);

/// What runs here, including monitors being stopped.
#[derive(Message)]
#[rtype(result = "Vec<RunningMonitor>")]
pub(crate) struct ListRunning;

/// Stop every monitor (closing every client). With `refuse_new`, later
/// Assigns are refused (shutdown); without it (self-fencing) the node keeps
/// accepting once the manager assigns again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopAll {
    pub refuse_new: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningMonitor {
    pub id: MonitorId,
    pub generation: Generation,
    pub epoch: Epoch,
    /// Being stopped: its client is not closed yet.
    pub stopping: bool,
}

struct Running {
    addr: Addr<MonitorActor>,
    spec: Arc<MonitorSpec>,
    epoch: Arc<AtomicU64>,
}

pub struct MonitorRegistry {
    running: HashMap<MonitorId, Running>,
    /// Monitors whose actor was asked to stop and whose client is not closed
    /// yet, with that stop (shared, so anyone can wait for it).
    stopping: HashMap<MonitorId, (RunningMonitor, Shared<BoxFuture<'static, ()>>)>,
    store: ResultStore,
    options: ClientOptions,
    gate: CollectGate,
    shutting_down: bool,
    /// Bumped by every StopAll.
    stop_seq: u64,
}

impl MonitorRegistry {
    pub fn new(store: ResultStore, options: ClientOptions, gate: CollectGate) -> Self {
        MonitorRegistry {
            running: HashMap::new(),
            stopping: HashMap::new(),
            store,
            options,
            gate,
            shutting_down: false,
            stop_seq: 0,
        }
    }

    fn start_monitor(&mut self, spec: Arc<MonitorSpec>, epoch: Arc<AtomicU64>, ctx: &mut Context<Self>) {
        self.store.open(&spec);
        let actor = MonitorActor::new(
            spec.clone(),
            epoch.clone(),
            self.options.clone(),
            self.gate.clone(),
            self.store.clone(),
            Some(ctx.address().recipient()),
        );
        let addr = actor.start();
        self.running.insert(spec.id.clone(), Running { addr, spec, epoch });
    }

    /// Takes a monitor out of `running`, lists it as stopping and returns
    /// what to await for its client to close.
    fn begin_stop(&mut self, id: &MonitorId) -> Option<Shared<BoxFuture<'static, ()>>> {
        let r = self.running.remove(id)?;
        let listed = RunningMonitor {
            id: id.clone(),
            generation: r.spec.generation,
            epoch: r.epoch.load(Ordering::SeqCst),
            stopping: true,
        };
        // A mailbox error means the actor is already gone, which is also "stopped".
        let stop: BoxFuture<'static, ()> = Box::pin(async move {
            let _ = r.addr.send(Stop).await;
        });
        let stop = stop.shared();
        self.stopping.insert(id.clone(), (listed, stop.clone()));
        Some(stop)
    }

    /// If `spec`'s actor exited on its own and is still wanted (same
    /// generation registered, not shutting down): the epoch to restart under.
    fn restart_epoch(&self, spec: &MonitorSpec) -> Option<Arc<AtomicU64>> {
        let r = self.running.get(&spec.id)?;
        let wanted = r.spec.generation == spec.generation && !r.addr.connected() && !self.shutting_down;
        wanted.then(|| r.epoch.clone())
    }

    /// Forgets a finished stop (unless a newer one of the same id replaced it).
    fn end_stop(&mut self, id: &MonitorId) {
        if self.stopping.get(id).is_some_and(|(_, f)| f.peek().is_some()) {
            self.stopping.remove(id);
        }
    }
}

impl Actor for MonitorRegistry {
    type Context = Context<Self>;
}

impl Handler<Assign> for MonitorRegistry {
    type Result = ResponseActFuture<Self, Result<AssignOutcome, RegistryError>>;

    fn handle(&mut self, Assign { spec, epoch, lease }: Assign, _ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Box::pin(actix::fut::ready(Err(RegistryError::ShuttingDown)));
        }
        if !lease_held(&lease) {
            return Box::pin(actix::fut::ready(Err(RegistryError::Fenced(spec.id))));
        }
        match self.running.get(&spec.id) {
            Some(r) if r.spec.generation > spec.generation => {
                let err = RegistryError::StaleGeneration {
                    id: spec.id.clone(),
                    running: r.spec.generation,
                    offered: spec.generation,
                };
                return Box::pin(actix::fut::ready(Err(err)));
            }
            Some(r) if *r.spec == spec => {
                r.epoch.store(epoch, Ordering::SeqCst);
                return Box::pin(actix::fut::ready(Ok(AssignOutcome::Unchanged)));
            }
            _ => {}
        }
        let seq = self.stop_seq;
        // Running: stop it first. Already stopping (an Unassign whose caller
        // went away, a fence): wait for that stop too, so the old client is
        // closed before the new one exists.
        let stop_old = self.begin_stop(&spec.id).or_else(|| self.stopping.get(&spec.id).map(|(_, f)| f.clone()));
        let outcome = if stop_old.is_some() { AssignOutcome::Restarted } else { AssignOutcome::Started };
        let spec = Arc::new(spec);
        let wait = async move {
            if let Some(stop) = stop_old {
                stop.await;
            }
        };
        Box::pin(actix::fut::wrap_future::<_, Self>(wait).map(move |_, act, ctx| {
            act.end_stop(&spec.id);
            if act.shutting_down {
                return Err(RegistryError::ShuttingDown);
            }
            if act.stop_seq != seq || !lease_held(&lease) {
                return Err(RegistryError::Fenced(spec.id.clone()));
            }
            act.start_monitor(spec, Arc::new(AtomicU64::new(epoch)), ctx);
            Ok(outcome)
        }))
    }
}

impl Handler<Unassign> for MonitorRegistry {
    type Result = ResponseActFuture<Self, Result<(), RegistryError>>;

    fn handle(&mut self, Unassign(id): Unassign, _ctx: &mut Context<Self>) -> Self::Result {
        // Running: stop it. Already stopping (a fence, a shutdown): wait for
        // that stop, so the answer still comes after the client is closed.
        let stop = match self.begin_stop(&id) {
            Some(stop) => stop,
            None => match self.stopping.get(&id) {
                Some((_, stop)) => stop.clone(),
                None => {
                    // Not running here: a history kept from an earlier run goes.
                    self.store.forget_history(&id);
                    return Box::pin(actix::fut::ready(Err(RegistryError::NotRunning(id))));
                }
            },
        };
        Box::pin(actix::fut::wrap_future::<_, Self>(stop).map(move |_, act, _| {
            act.end_stop(&id);
            // A later Assign may have opened a new entry meanwhile only by
            // holding the turn, which the caller holds: the entry is ours.
            if !act.running.contains_key(&id) {
                act.store.remove(&id);
                // Deleted or moved away: its history goes too.
                act.store.forget_history(&id);
            }
            Ok(())
        }))
    }
}

impl Handler<ListRunning> for MonitorRegistry {
    type Result = MessageResult<ListRunning>;

    fn handle(&mut self, _: ListRunning, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<RunningMonitor> = self
            .running
            .values()
            .map(|r| RunningMonitor {
                id: r.spec.id.clone(),
                generation: r.spec.generation,
                epoch: r.epoch.load(Ordering::SeqCst),
                stopping: false,
            })
            .chain(self.stopping.values().map(|(s, _)| s).filter(|s| !self.running.contains_key(&s.id)).cloned())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        MessageResult(v)
    }
}

impl Handler<StopAll> for MonitorRegistry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: StopAll, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down |= msg.refuse_new;
        let fenced = !msg.refuse_new;
        self.stop_seq += 1;
        let ids: Vec<MonitorId> = self.running.keys().cloned().collect();
        let stops: Vec<_> = ids.iter().filter_map(|id| self.begin_stop(id)).collect();
        Box::pin(actix::fut::wrap_future::<_, Self>(futures::future::join_all(stops)).map(move |_, act, _| {
            for id in ids {
                act.end_stop(&id);
                if !act.running.contains_key(&id) {
                    act.store.remove(&id);
                    if fenced {
                        // Fenced: the monitors go to other collectors, and a
                        // manager hands the history back if one returns here.
                        act.store.forget_history(&id);
                    }
                }
            }
        }))
    }
}

impl Handler<MonitorExited> for MonitorRegistry {
    type Result = ();

    fn handle(&mut self, msg: MonitorExited, ctx: &mut Context<Self>) {
        if self.restart_epoch(&msg.spec).is_none() {
            return;
        }
        tracing::warn!(monitor = %msg.spec.id, "monitor actor exited unexpectedly; restarting in {RESTART_DELAY:?}");
        ctx.run_later(RESTART_DELAY, move |act, ctx| {
            // Asked again: it may have been stopped or replaced meanwhile.
            if let Some(epoch) = act.restart_epoch(&msg.spec) {
                act.start_monitor(msg.spec, epoch, ctx);
            }
        });
    }
}
