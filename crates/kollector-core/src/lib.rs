//! kollector's domain types, with no I/O.
//!
//! A *monitor* is one Kafka cluster to watch: its connection settings,
//! interval, timeout and filters ([`MonitorSpec`]). Specs arrive as untrusted
//! input ([`MonitorInput`], from a TOML file or gRPC) and become a
//! `MonitorSpec` only through [`MonitorInput::validate`], which reports every
//! bad field at once. A collection produces a [`Snapshot`] of one cluster.
//! Secrets live in [`Secret`], which never prints its value.

pub mod config;
pub mod e2e;
pub mod history;
pub mod ids;
pub mod result;
pub mod snapshot;
pub mod spec;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{ConfigError, ConfigFile, ConfigFileError};
pub use ids::{CollectorId, Epoch, Generation, MonitorId};
pub use result::{unix_ms, MonitorResult};
pub use snapshot::{
    compute_lag, Broker, BrokerError, BrokerErrorKind, CommitPosition, GroupOffset, GroupSnapshot, GroupTopic,
    PartitionSnapshot, Snapshot, TopicSnapshot,
};
pub use spec::{
    client_id_problem, msk_region_of, token_endpoint_problem, AwsMskIamConfig, FieldError, Filters, GroupMetrics,
    KafkaConnection, MonitorInput, MonitorSpec, OidcConfig, SaslConfig, SaslInput, SaslMechanism, Secret, TlsConfig,
    TlsInput, ValidationErrors,
};
pub use status::{CollectError, ErrorKind, MonitorState, MonitorStatus};
