//! One Kafka cluster's client and collection.
//!
//! [`KafkaClient`] is built from one monitor's spec and is owned by exactly
//! one monitor: there is no cache, no sharing and no global client, which is
//! what makes HertzBeat's cross-cluster bug (one static admin client reused by
//! every monitor) impossible here. Dropping it closes its sockets and
//! librdkafka threads; `live_clients()` counts the ones still open.
//!
//! [`KafkaClient::collect`] reads one [`kollector_core::Snapshot`] with a
//! fixed, small number of batched requests (see `collect.rs`). The calls
//! block, so callers run them off async threads.
//!
//! [`oauth`] is where an OAUTHBEARER monitor's tokens come from, shared by
//! its librdkafka client and its direct connections.
//!
//! [`admin`] holds safe wrappers over librdkafka admin calls that the
//! `rdkafka` crate does not wrap.

pub mod admin;
mod client;
mod collect;
mod deadline;
pub mod e2e;
pub mod msk_iam;
pub mod oauth;
pub mod wire;

pub use client::{live_clients, live_probes, ClientOptions, KafkaClient, RequestCounts};
pub use collect::broker_budget;
pub use deadline::{Deadline, Fence, Stop};
