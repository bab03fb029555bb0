//! The etcd flags every cluster-mode node takes.

use clap::Args;

#[derive(Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.1:2379).
    #[arg(long, env = "KOLLECTOR_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// etcd key prefix shared by the cluster.
    #[arg(long, default_value = kollector_coordination::keys::DEFAULT_PREFIX)]
    pub prefix: String,
}
