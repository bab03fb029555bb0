//! The manager side of kollector.
//!
//! - `catalog.rs`: [`MonitorCatalog`], the desired monitors and their
//!   generations; create/update/delete validate first and change nothing on
//!   error.
//! - `service.rs`: [`ManagerServiceImpl`], the gRPC `ManagerService`, over a
//!   [`MonitorBackend`] that actually runs monitors. In standalone mode the
//!   backend is the local collector; in cluster mode it will be the
//!   assignment reconciler.
//! - `planner.rs`: which collector runs which monitor (cluster mode); a
//!   pure function tested apart from any I/O.
//! - `decisions.rs`: the reconciler's decisions (record writes and their
//!   chunking, Unassigns, safe Assigns, which results to believe), pure.
//! - `reconciler.rs`: the leader's executor of those decisions.
//! - `intake.rs`: results from every collector, judged by `decisions.rs`.
//! - `state_file.rs`: standalone mode's monitors on disk (atomic, durable
//!   replace), so API changes survive restarts.

mod catalog;
mod cluster_service;
pub mod cluster_store;
pub mod decisions;
pub mod intake;
pub mod planner;
pub mod reconciler;
mod service;
pub mod state_file;

pub use catalog::{CatalogError, MonitorCatalog};
pub use cluster_service::ClusterManagerService;
pub use service::{BackendError, ManagerServiceImpl, MonitorBackend};
