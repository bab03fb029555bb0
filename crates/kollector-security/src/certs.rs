//! `kollector certs`: a cluster CA and node certificates for a test or small
//! cluster, made with rcgen. Larger deployments bring their own PKI; the
//! nodes only need PEM files.
//!
//! The CA is made once and reused: run the command again with new `--node`
//! names to add nodes. Each node certificate is valid for server and client
//! use (a manager is a client of collectors; every node may serve gRPC) and
//! names the node plus every `--host`. Key files are written mode 0600, and
//! nothing is overwritten: an existing node file is an error, so a half-done
//! run can be finished by naming only the missing nodes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CA's subject. Fixed, so an existing CA key can sign new nodes with a
/// matching issuer name.
const CA_NAME: &str = "kollector cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0} already exists; remove it or choose other --node names")]
    Exists(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
pub struct CertRequest {
    pub dir: PathBuf,
    /// Node names; each becomes `<dir>/<name>.pem` and `<dir>/<name>.key`.
    pub nodes: Vec<String>,
    /// Manager names: like nodes, and the certificate also names
    /// [`crate::tls::MANAGER_ROLE_NAME`], which collectors require of callers.
    pub managers: Vec<String>,
    /// DNS names and IP addresses every node certificate is valid for.
    pub hosts: Vec<String>,
    /// Validity of node certificates.
    pub valid_for: Duration,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.display().to_string(), source }
}

/// Writes a file that must not exist yet, with `mode`.
fn write_new(path: &Path, body: &str, mode: u32) -> Result<(), CertError> {
    crate::files::create_new(path, body, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists(path.display().to_string())
        } else {
            io(path)(e)
        }
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Makes the CA (unless `ca.pem` and `ca.key` exist) and one certificate per
/// node. Returns the files written.
pub fn generate(req: &CertRequest) -> Result<Vec<PathBuf>, CertError> {
    let all: Vec<(&String, bool)> =
        req.managers.iter().map(|m| (m, true)).chain(req.nodes.iter().map(|n| (n, false))).collect();
    if all.is_empty() {
        return Err(CertError::Invalid("name at least one node (--manager NAME or --node NAME)".into()));
    }
    if let Some((bad, _)) = all.iter().find(|(n, _)| !valid_name(n)) {
        return Err(CertError::Invalid(format!("node name {bad:?}: letters, digits, '.', '_' and '-' only")));
    }
    // A collector's certificate is checked against its id by name.
    if let Some((bad, _)) = all.iter().find(|(n, _)| !crate::tls::is_tls_name(n)) {
        return Err(CertError::Invalid(format!(
            "node name {bad:?} is not a name TLS can check (not all digits, no label ending in '-')"
        )));
    }
    // Check every target first so a clash writes nothing.
    for (n, _) in &all {
        for ext in ["pem", "key"] {
            let p = req.dir.join(format!("{n}.{ext}"));
            if p.exists() {
                return Err(CertError::Exists(p.display().to_string()));
            }
        }
    }
    std::fs::create_dir_all(&req.dir).map_err(io(&req.dir))?;
    let mut written = Vec::new();
    let (ca_pem, ca_key) = (req.dir.join("ca.pem"), req.dir.join("ca.key"));
    let ca_keypair = if ca_pem.exists() && ca_key.exists() {
        let text = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        KeyPair::from_pem(&text)?
    } else {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_new(&ca_key, &key.serialize_pem(), 0o600)?;
        write_new(&ca_pem, &cert.pem(), 0o644)?;
        written.extend([ca_pem.clone(), ca_key.clone()]);
        key
    };
    let issuer = Issuer::new(ca_params(), ca_keypair);
    for (n, manager) in all {
        let mut names = vec![n.clone()];
        names.extend(req.hosts.iter().cloned());
        if manager {
            names.push(crate::tls::MANAGER_ROLE_NAME.to_string());
        }
        names.dedup();
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, n.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(req.valid_for.as_secs().min(i64::MAX as u64) as i64);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let (pem, keyfile) = (req.dir.join(format!("{n}.pem")), req.dir.join(format!("{n}.key")));
        write_new(&keyfile, &key.serialize_pem(), 0o600)?;
        write_new(&pem, &cert.pem(), 0o644)?;
        written.extend([pem, keyfile]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_once_adds_nodes_later_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let req = |nodes: &[&str]| CertRequest {
            dir: dir.path().to_path_buf(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            managers: vec![],
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            valid_for: Duration::from_secs(86400),
        };
        let first = generate(&req(&["manager", "c1"])).unwrap();
        assert_eq!(first.len(), 6);
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let second = generate(&req(&["c2"])).unwrap();
        assert_eq!(second.len(), 2, "the CA is reused");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        assert!(matches!(generate(&req(&["c3", "c1"])), Err(CertError::Exists(_))));
        assert!(!dir.path().join("c3.pem").exists(), "a clash writes nothing");
        assert!(matches!(generate(&req(&["../x"])), Err(CertError::Invalid(_))));
        // Only a manager's certificate carries the manager role.
        let mut m = req(&[]);
        m.managers = vec!["m1".into()];
        generate(&m).unwrap();
        use rustls_pki_types::pem::PemObject as _;
        let cert = |f: &str| rustls_pki_types::CertificateDer::from_pem_file(dir.path().join(f)).unwrap();
        assert!(crate::tls::is_manager_cert(&cert("m1.pem")));
        assert!(!crate::tls::is_manager_cert(&cert("c1.pem")));
        assert!(!crate::tls::is_manager_cert(&cert("manager.pem")), "a node merely named manager has no role");
        use std::os::unix::fs::PermissionsExt as _;
        for k in ["ca.key", "c1.key", "c2.key"] {
            assert_eq!(std::fs::metadata(dir.path().join(k)).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
