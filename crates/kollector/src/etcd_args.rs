//! The flags every cluster-mode node takes: etcd, and gRPC transport limits.

use std::time::Duration;

use clap::Args;
use kollector_proto::GrpcLimits;

#[derive(Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.1:2379).
    #[arg(long, env = "KOLLECTOR_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// etcd key prefix shared by the cluster.
    #[arg(long, default_value = kollector_coordination::keys::DEFAULT_PREFIX)]
    pub prefix: String,
}

/// gRPC transport settings shared by managers and collectors.
#[derive(Args)]
pub struct GrpcArgs {
    /// Largest gRPC message sent or received, in bytes (a 50,000-partition
    /// snapshot is about 10 MiB). Managers and collectors should agree.
    #[arg(long, default_value_t = kollector_proto::DEFAULT_MAX_MESSAGE_BYTES)]
    pub grpc_max_message_size: usize,
    /// HTTP/2 keepalive PING interval on every gRPC connection; a peer that
    /// does not answer within half of it is considered gone.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grpc_keepalive: Duration,
}

impl GrpcArgs {
    pub fn limits(&self) -> anyhow::Result<GrpcLimits> {
        if self.grpc_max_message_size < 1024 * 1024 {
            anyhow::bail!("--grpc-max-message-size must be at least 1048576 (1 MiB)");
        }
        if self.grpc_keepalive < Duration::from_secs(1) {
            anyhow::bail!("--grpc-keepalive must be at least 1s");
        }
        Ok(GrpcLimits {
            max_message_bytes: self.grpc_max_message_size,
            keepalive_interval: self.grpc_keepalive,
            keepalive_timeout: self.grpc_keepalive / 2,
        })
    }
}
