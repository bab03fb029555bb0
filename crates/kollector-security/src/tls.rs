//! TLS material of a node and the TLS configurations built from it.
//!
//! One cluster CA signs every node certificate. Collectors serve gRPC with
//! mutual TLS: only a peer holding a certificate from the cluster CA (a
//! manager) gets past the handshake, so no one else can send Assign,
//! Unassign, Probe or read results. Managers serve the public
//! ManagerService with server-side TLS (callers prove themselves with
//! tokens) and present their node certificate when they call collectors.
//!
//! Roles: a certificate made for a manager (`kollector certs --manager`)
//! also names [`MANAGER_ROLE_NAME`]. Collectors answer only peers whose
//! certificate carries it ([`require_manager`]), so a collector's own
//! certificate (or an etcd server's) cannot be used to command another
//! collector or read its results.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The DNS name a manager's certificate carries besides its host names. The
/// `.invalid` top-level domain is reserved: no real host can have it.
pub const MANAGER_ROLE_NAME: &str = "manager.role.kollector.invalid";

/// Whether a (CA-verified) certificate was issued to a manager.
pub fn is_manager_cert(der: &rustls_pki_types::CertificateDer<'_>) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(MANAGER_ROLE_NAME) else { return false };
    webpki::EndEntityCert::try_from(der).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// A collector's gate for every call: over TLS the peer's certificate (the
/// handshake has already checked it against the cluster CA) must be a
/// manager's; without TLS (`--insecure`) there is nothing to check.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn require_manager(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match req.peer_certs() {
        None => Ok(req),
        Some(certs) if certs.first().is_some_and(is_manager_cert) => Ok(req),
        Some(_) => {
            tracing::warn!("refused a call from a cluster certificate that is not a manager's");
            Err(tonic::Status::permission_denied("only a manager's certificate may call a collector"))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    #[error("{what} {path} holds no PEM {kind}")]
    NotPem { what: &'static str, path: String, kind: &'static str },
}

fn read_pem(what: &'static str, path: &Path, kind: &'static str) -> Result<Vec<u8>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { what, path: shown.clone(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let marker = if kind == "private key" { "PRIVATE KEY-----" } else { "-----BEGIN CERTIFICATE-----" };
    if !text.contains(marker) {
        return Err(TlsError::NotPem { what, path: shown, kind });
    }
    Ok(bytes)
}

/// The CA, certificate and key a node uses on every gRPC hop.
#[derive(Clone)]
pub struct NodeTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls(<certificate and key>)")
    }
}

impl NodeTls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<NodeTls, TlsError> {
        Ok(NodeTls {
            ca: read_pem("--tls-ca", ca, "certificate")?,
            cert: read_pem("--tls-cert", cert, "certificate")?,
            key: read_pem("--tls-key", key, "private key")?,
        })
    }

    /// Server side of a node-only service: the peer must present a
    /// certificate signed by the cluster CA.
    pub fn server_mutual(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// Server side of the public API: TLS, no client certificate asked for.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// Client side towards another node: verify it against the cluster CA
    /// and present this node's certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// A CLI's TLS: verify the server against `ca`.
/// Whether `name` can be checked against a certificate by TLS (a DNS name
/// or an IP address rustls accepts): managers check a collector's
/// certificate against its id, so in a secure cluster an id must be one.
pub fn is_tls_name(name: &str) -> bool {
    rustls_pki_types::ServerName::try_from(name).is_ok()
}

pub fn client_with_ca(ca: &Path) -> Result<ClientTlsConfig, TlsError> {
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--ca-file", ca, "certificate")?)))
}

/// The directories a node lets monitors' Kafka TLS files come from. A spec
/// arrives over the network; without this, anyone allowed to create a
/// monitor could make the node read any file it can read (its own node key,
/// a state file) and hand it to a broker of their choosing.
#[derive(Clone, Debug)]
pub struct FilePolicy {
    roots: Vec<PathBuf>,
}

impl FilePolicy {
    /// Directories that do not exist are kept (they may be created later) but
    /// match nothing until they do.
    pub fn new(roots: Vec<PathBuf>) -> FilePolicy {
        FilePolicy { roots }
    }

    /// The file's real path when it lies in an allowed directory (symlinks
    /// resolved, so a link out of the directory does not pass).
    pub fn check(&self, field: &str, path: &str) -> Result<PathBuf, String> {
        let shown = self.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
        let outside = || {
            format!("{field} {path:?} is not in a directory this node allows Kafka TLS files from ({shown}; see --kafka-tls-dir)")
        };
        if path.contains('\0') {
            return Err(outside());
        }
        // The same answer whether or not the file exists, so the check is no
        // oracle for which files a node has.
        let real = std::fs::canonicalize(path).map_err(|_| outside())?;
        let allowed = self.roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|r| real.starts_with(r));
        if allowed {
            Ok(real)
        } else {
            Err(outside())
        }
    }

    /// The spec with every TLS file it names checked and replaced by its
    /// resolved path.
    pub fn resolve_spec(&self, spec: &kollector_core::MonitorSpec) -> Result<kollector_core::MonitorSpec, String> {
        let mut out = spec.clone();
        // The token endpoint's CA (OAUTHBEARER) is a file the spec names too.
        if let Some(p) = out.connection.sasl.as_mut().and_then(|s| s.oidc.as_mut()).and_then(|o| o.ca_file.as_mut()) {
            *p = self.check("sasl.ca_file", p)?.display().to_string();
        }
        let Some(tls) = out.connection.tls.as_mut() else { return Ok(out) };
        for (field, p) in [
            ("tls.ca_file", &mut tls.ca_file),
            ("tls.cert_file", &mut tls.cert_file),
            ("tls.key_file", &mut tls.key_file),
        ] {
            if let Some(p) = p {
                *p = self.check(field, p)?.display().to_string();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn collector_ids_must_be_names_tls_can_check() {
        for ok in ["c1", "collector-0", "kollector-collector-2.ns.svc", "node_7", "127.0.0.1"] {
            assert!(super::is_tls_name(ok), "{ok}");
        }
        for bad in ["c1-", "a..b", ""] {
            assert!(!super::is_tls_name(bad), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn files_outside_the_allowed_directories_are_refused_even_through_links() {
        let allowed = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(allowed.path().join("ca.pem"), "x").unwrap();
        std::fs::write(other.path().join("secret.key"), "x").unwrap();
        std::os::unix::fs::symlink(other.path().join("secret.key"), allowed.path().join("link.pem")).unwrap();
        let p = FilePolicy::new(vec![allowed.path().to_path_buf()]);
        let inside = allowed.path().join("ca.pem");
        assert!(p.check("tls.ca_file", inside.to_str().unwrap()).is_ok());
        let dotdot = format!(
            "{}/../{}/secret.key",
            allowed.path().display(),
            other.path().file_name().unwrap().to_str().unwrap()
        );
        for bad in [
            other.path().join("secret.key").to_str().unwrap().to_string(),
            allowed.path().join("link.pem").to_str().unwrap().to_string(),
            dotdot,
            "/etc/passwd".to_string(),
        ] {
            let e = p.check("tls.ca_file", &bad).unwrap_err();
            assert!(e.contains("--kafka-tls-dir"), "{bad}: {e}");
        }
        assert!(p.check("tls.ca_file", "/nonexistent/x").is_err());
        assert!(p.check("tls.ca_file", "a\0b").is_err());
        assert!(FilePolicy::new(vec![PathBuf::from("/")]).check("tls.ca_file", "/etc/passwd").is_ok());
    }
}
