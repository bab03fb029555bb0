//! The manager side of kollector: one control plane for both modes.
//!
//! The gRPC `ManagerService` ([`ManagerServiceImpl`], `service.rs`) is
//! written once, over two seams:
//! - where desired state lives, [`DesiredState`] (`desired_state.rs`): the
//!   [`EmbeddedStore`] in standalone mode (saved by `state_file.rs`, so API
//!   changes survive restarts), etcd (`cluster_store.rs`) in cluster mode;
//! - what runs it, [`Runner`] (`runner.rs`): the [`LocalRunner`] (the
//!   collector in this process) or the [`ClusterRunner`] (the leader's
//!   reconciler applies; it waits and reads).
//!
//! Standalone is cluster mode with local parts. The rest is cluster mode's:
//! - `cluster_view.rs`: the one watched view of etcd every reader reads.
//! - `changes.rs`: validation and the merge of an update, pure.
//! - `planner.rs`: which collector runs which monitor, pure.
//! - `decisions.rs`: the reconciler's decisions (record writes and their
//!   chunking, Unassigns, safe Assigns, which results to believe), pure.
//! - `liveness.rs`: which collectors the leader can work with (beyond
//!   their leases): silent ones are revoked, safely; pure.
//! - `reconciler.rs`: the leader's executor of those decisions.
//! - `intake.rs`: results from every collector, judged by `decisions.rs`.
//! - `node.rs`: a manager node: intake, election, reconciler, the service
//!   and its `/metrics`, started and stopped in one place.

mod changes;
pub mod cluster_store;
pub mod cluster_view;
pub mod decisions;
pub mod desired_state;
pub mod intake;
pub mod liveness;
pub mod node;
pub mod planner;
pub mod reconciler;
pub mod runner;
mod service;
pub mod state_file;

pub use changes::{prepare_create, prepare_update, CatalogError};
pub use desired_state::{DesiredState, EmbeddedStore};
pub use runner::{ClusterRunner, LocalRunner, Runner};
pub use service::ManagerServiceImpl;
