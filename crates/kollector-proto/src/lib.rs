//! kollector's gRPC contract.
//!
//! `proto/kollector/v1/*.proto` is the single source of truth for the wire;
//! this crate compiles it (tonic + prost) and converts between wire messages
//! and `kollector-core` types, so services and the CLI never hand-map fields.
//! Conversions to the wire drop secrets: read APIs say whether a password is
//! set, never what it is.

pub mod v1 {
    tonic::include_proto!("kollector.v1");
}

mod convert;
pub mod transport;

pub use convert::{
    error_from_proto, input_from_proto, input_to_proto, monitor_view, result_from_proto, result_to_proto,
    snapshot_from_proto, snapshot_to_proto, status_from_proto, status_to_proto,
};
pub use transport::{GrpcLimits, DEFAULT_MAX_MESSAGE_BYTES};
