//! The flags every cluster-mode node takes: etcd (endpoints, TLS, user),
//! and gRPC transport limits.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use etcd_client::{Certificate, Identity, TlsOptions};
use kollector_coordination::lease::EtcdAccess;
use kollector_proto::GrpcLimits;

#[derive(Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.1:2379).
    #[arg(long, env = "KOLLECTOR_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// etcd key prefix shared by the cluster.
    #[arg(long, default_value = kollector_coordination::keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// CA certificate (PEM) etcd's server certificate is verified against;
    /// needed for https:// endpoints.
    #[arg(long, env = "KOLLECTOR_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth.
    #[arg(long, env = "KOLLECTOR_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd's --client-cert-auth.
    #[arg(long, env = "KOLLECTOR_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (with etcd auth enabled); the password is read from the
    /// environment variable KOLLECTOR_ETCD_PASSWORD, never from an argument.
    #[arg(long, env = "KOLLECTOR_ETCD_USER")]
    pub etcd_user: Option<String>,
}

impl EtcdArgs {
    /// How to reach etcd. Plaintext etcd needs `insecure` (it carries the
    /// cluster's assignments and leader keys).
    pub fn access(&self, insecure: bool) -> anyhow::Result<EtcdAccess> {
        let tls_urls = self.etcd.iter().filter(|e| e.starts_with("https://")).count();
        if tls_urls != 0 && tls_urls != self.etcd.len() {
            anyhow::bail!("--etcd: use https:// for every endpoint or for none");
        }
        let tls = if tls_urls > 0 {
            let ca = self.etcd_ca.as_ref().ok_or_else(|| anyhow::anyhow!("https:// etcd endpoints need --etcd-ca"))?;
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            Some(tls)
        } else if insecure {
            tracing::warn!("etcd is reached without TLS (--insecure)");
            None
        } else {
            anyhow::bail!("--etcd must use https:// endpoints (with --etcd-ca), or pass --insecure");
        };
        let user = match &self.etcd_user {
            Some(u) => {
                let pw = std::env::var("KOLLECTOR_ETCD_PASSWORD")
                    .map_err(|_| anyhow::anyhow!("--etcd-user needs the password in KOLLECTOR_ETCD_PASSWORD"))?;
                Some((u.clone(), pw))
            }
            None => None,
        };
        Ok(EtcdAccess { endpoints: self.etcd.clone(), tls, user })
    }
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
