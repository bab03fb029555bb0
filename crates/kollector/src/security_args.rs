//! Security flags, shared by every node and CLI command, and the rule that
//! decides whether a node may start: secure unless `--insecure` says
//! otherwise, and then loudly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use kollector_security::access::DEFAULT_PROBES_PER_MINUTE;
use kollector_security::{FilePolicy, Keyring, NodeTls};

/// Default directory Kafka TLS files (CA, client certificate and key) may come from.
pub const DEFAULT_KAFKA_TLS_DIR: &str = "/etc/kollector/kafka-tls";

/// This node's certificate on the cluster's gRPC hops.
#[derive(Args, Clone, Debug)]
pub struct NodeTlsArgs {
    /// The cluster CA certificate (PEM): peers are verified against it.
    #[arg(long, env = "KOLLECTOR_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA (`kollector certs`).
    #[arg(long, env = "KOLLECTOR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "KOLLECTOR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Run without TLS (and, on a manager, without API tokens). Logged as a
    /// warning at start. For tests and trusted networks only.
    #[arg(long)]
    pub insecure: bool,
}

impl NodeTlsArgs {
    /// The node's TLS material; None only with `--insecure`.
    pub fn load(&self, what: &str) -> anyhow::Result<Option<NodeTls>> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(NodeTls::load(ca, cert, key)?)),
            (None, None, None) if self.insecure => {
                tracing::warn!("{what} runs WITHOUT TLS (--insecure): commands, secrets and results cross the network in clear");
                Ok(None)
            }
            (None, None, None) => bail!(
                "{what} needs --tls-ca, --tls-cert and --tls-key (make them with `kollector certs`), or --insecure to run without TLS"
            ),
            _ => bail!("--tls-ca, --tls-cert and --tls-key go together"),
        }
    }
}

/// How monitors' Kafka clients are built: where their TLS files may be
/// read from, and which path reads consumer groups.
#[derive(Args, Clone, Debug)]
pub struct KafkaClientArgs {
    /// Directory a monitor's TLS files (ca_file, cert_file, key_file) must be
    /// in; repeatable. Specs come over the network, so this keeps a caller
    /// from making the node read any other file.
    #[arg(long = "kafka-tls-dir", default_value = DEFAULT_KAFKA_TLS_DIR)]
    pub dirs: Vec<PathBuf>,
    /// Read consumer groups with librdkafka's admin calls (one OffsetFetch,
    /// and usually a FindCoordinator, per group) instead of the default
    /// batched requests over each monitor's own broker connections (a few
    /// requests per broker, however many groups). For comparison, or should
    /// a broker misread the batched requests.
    #[arg(long)]
    pub librdkafka_groups: bool,
}

impl KafkaClientArgs {
    pub fn policy(&self) -> FilePolicy {
        FilePolicy::new(self.dirs.clone())
    }

    /// The options every monitor's client is built with.
    pub fn client_options(&self) -> kollector_kafka::ClientOptions {
        kollector_kafka::ClientOptions {
            tls_files: Some(self.policy()),
            librdkafka_groups: self.librdkafka_groups,
            ..Default::default()
        }
    }
}

/// Who may call the API, and how often probes may run.
#[derive(Args, Clone, Debug)]
pub struct ApiAccessArgs {
    /// Bearer tokens the API accepts, with their roles (`kollector token add`).
    /// Re-read when it changes: delete an entry to revoke a token.
    #[arg(long, env = "KOLLECTOR_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Probes (one-off collections against an address the caller gives)
    /// this node starts per minute.
    #[arg(long, default_value_t = DEFAULT_PROBES_PER_MINUTE)]
    pub probe_rate: u32,
}

/// Loads the secret key file, or in standalone mode creates it (mode 0600)
/// the first time.
pub fn secret_keys(path: &Path, create: bool) -> anyhow::Result<Keyring> {
    if create && !path.exists() {
        new_secret_key_file(path)?;
        tracing::info!(path = %path.display(), "created a secret key for sealing stored secrets");
    }
    Ok(Keyring::load(path)?)
}

/// Makes a secret key file with one key (`kollector secret-key new`, and
/// standalone's first start).
pub fn new_secret_key_file(path: &Path) -> anyhow::Result<()> {
    let line = kollector_security::sealing::new_key_line("k1")?;
    write_private(path, &format!("# kollector secret key: seals SASL and key passwords at rest\n{line}\n"))
}

/// Writes a new file readable by its owner only; refuses to replace one.
pub fn write_private(path: &Path, body: &str) -> anyhow::Result<()> {
    kollector_security::files::create_new(path, body, 0o600).with_context(|| format!("creating {}", path.display()))
}

/// Standalone without TLS or tokens is allowed on loopback (with a
/// warning); anywhere else it needs `--insecure`.
pub fn check_standalone_exposure(grpc: SocketAddr, tls: bool, tokens: bool, insecure: bool) -> anyhow::Result<()> {
    if tls && tokens {
        return Ok(());
    }
    let missing = match (tls, tokens) {
        (false, false) => "TLS and tokens",
        (false, true) => "TLS",
        _ => "tokens",
    };
    if !grpc.ip().is_loopback() && !insecure {
        bail!(
            "the API would listen on {grpc} without {missing}: give --tls-cert/--tls-key and --tokens-file, listen on 127.0.0.1, or pass --insecure"
        );
    }
    tracing::warn!(%grpc, "the API is served without {missing}{}", if grpc.ip().is_loopback() { " (loopback only)" } else { " (--insecure)" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_exposure_needs_tls_and_tokens_off_loopback() {
        let lo: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert!(check_standalone_exposure(lo, false, false, false).is_ok());
        assert!(check_standalone_exposure(any, true, true, false).is_ok());
        assert!(check_standalone_exposure(any, false, false, true).is_ok());
        for (tls, tokens) in [(false, false), (true, false), (false, true)] {
            assert!(check_standalone_exposure(any, tls, tokens, false).is_err());
        }
    }
}
