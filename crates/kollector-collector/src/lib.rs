//! A collector node: where monitors run.
//!
//! File map, by what a reader looks for:
//! - `registry.rs`: [`MonitorRegistry`], the only place monitors are started
//!   and stopped. Assign / Unassign answer only after the old Kafka client is
//!   closed.
//! - `monitor_actor.rs`: [`MonitorActor`], one per monitor; owns its Kafka
//!   client, collects on its interval, rebuilds the client with backoff.
//! - `store.rs`: [`ResultStore`], the latest result per monitor, read by the
//!   APIs and `/metrics`; writes from an older generation are refused.
//! - `metrics.rs`: Prometheus text exposition rendered from the store.
//! - `probe.rs`: a one-time collection with a temporary client.
//! - `service.rs`, `fencing.rs`: cluster mode: the gRPC CollectorService the
//!   manager drives, refusing stale commands by their fencing tokens.
//! - `cluster_member.rs`: cluster mode: the etcd lease drives the collect
//!   gate, the lease Assigns must name, and self-fencing.
//! - `node.rs`: runs the actors on their own actix system thread and hands a
//!   `Send` handle to the tokio side (gRPC, HTTP).

mod backoff;
mod cluster_member;
pub mod discovery;
pub mod fencing;
mod gate;
pub mod metrics;
mod monitor_actor;
mod node;
mod probe;
mod registry;
mod service;
mod store;

pub use cluster_member::ClusterMember;
pub use gate::CollectGate;
pub use monitor_actor::MonitorActor;
pub use node::{CollectorHandle, CollectorNode, MonitorTurn};
pub use probe::probe;
pub use registry::{AssignOutcome, MonitorRegistry, RegistryError, RunningMonitor};
pub use service::{CollectorServiceImpl, CurrentLease, EtcdNow, TermSource};
pub use store::ResultStore;
