//! How a monitor's direct group connections authenticate, built once from
//! its spec: TLS with rustls (CA file or the system store, client
//! certificate, or no verification for test clusters) and SASL PLAIN,
//! SCRAM-SHA-256 and SCRAM-SHA-512 with rsasl, OAUTHBEARER with the
//! monitor's token source (`oauth.rs`).
//!
//! What the direct path cannot do is refused here with the reason (today:
//! an encrypted TLS key, which rustls does not read), and the monitor then
//! reads its groups through librdkafka, one request per group, and says so.
//! Secrets stay in [`Secret`]s; nothing here prints them.

use std::sync::Arc;

use kollector_core::{KafkaConnection, SaslMechanism, Secret};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// SASL credentials for the direct path.
#[derive(Clone, Debug)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// Redacted in Debug by [`Secret`].
    pub password: Secret,
}

/// TLS and SASL settings of one monitor's direct connections.
#[derive(Clone, Default)]
pub struct WireSecurity {
    tls: Option<Arc<ClientConfig>>,
    sasl: Option<SaslCredentials>,
    /// The client id in every request header: the monitor's own
    /// (`kollector-<monitor>`, as its librdkafka client's), so a broker's
    /// quotas and logs tell monitors apart instead of lumping them together.
    client_id: Option<Arc<str>>,
    /// The cluster every connection must reach (the id the monitor
    /// pinned): a connection whose broker answers with another cluster id
    /// is refused before any of its answers is used. Addresses are resolved
    /// again at every connect, so a DNS change (or a broker replaced
    /// behind the same address) could otherwise mix two clusters' data
    /// under one cluster id.
    cluster_id: Option<Arc<str>>,
    /// The longest throttle each address asked since the cycle last took
    /// them, shared by every connection opened with these settings: a
    /// connection closed during the cycle (an error, a reconnect) still
    /// has its throttle reported.
    throttles: ThrottleLog,
    /// OAUTHBEARER: where tokens come from.
    tokens: Option<Arc<crate::oauth::TokenSource>>,
}

/// Longest throttle by broker address, shared by a monitor's connections.
#[derive(Clone, Default)]
pub struct ThrottleLog(Arc<std::sync::Mutex<std::collections::BTreeMap<String, std::time::Duration>>>);

impl ThrottleLog {
    /// Records that `address` asked to be left alone for `throttle`.
    pub fn record(&self, address: &str, throttle: std::time::Duration) {
        if let Ok(mut log) = self.0.lock() {
            let longest = log.entry(address.to_string()).or_default();
            *longest = (*longest).max(throttle);
        }
    }

    /// What was recorded since the last call, and starts again.
    pub fn take(&self) -> std::collections::BTreeMap<String, std::time::Duration> {
        self.0.lock().map(|mut log| std::mem::take(&mut *log)).unwrap_or_default()
    }
}

impl std::fmt::Debug for WireSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireSecurity")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|s| s.mechanism))
            .finish()
    }
}

impl WireSecurity {
    /// The same settings, with `client_id` in every request header.
    pub fn with_client_id(mut self, client_id: impl Into<Arc<str>>) -> WireSecurity {
        self.client_id = Some(client_id.into());
        self
    }

    /// The same settings, with every new connection checked to reach `cluster_id`.
    pub fn expecting_cluster(mut self, cluster_id: impl Into<Arc<str>>) -> WireSecurity {
        self.cluster_id = Some(cluster_id.into());
        self
    }

    /// The cluster new connections must reach, once pinned.
    pub fn expected_cluster(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// The same settings, with OAUTHBEARER tokens from `tokens` (the
    /// monitor's source, shared with its librdkafka client).
    pub fn with_tokens(mut self, tokens: Option<Arc<crate::oauth::TokenSource>>) -> WireSecurity {
        self.tokens = tokens;
        self
    }

    pub(crate) fn tokens(&self) -> Option<&Arc<crate::oauth::TokenSource>> {
        self.tokens.as_ref()
    }

    /// Where connections opened with these settings record throttles.
    pub fn throttle_log(&self) -> &ThrottleLog {
        &self.throttles
    }

    /// The client id sent in request headers ("kollector" unless set).
    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or("kollector")
    }

    /// No TLS, no SASL.
    pub fn plaintext() -> WireSecurity {
        WireSecurity::default()
    }

    /// The settings for `conn` (TLS file names already resolved by the
    /// node's file policy), or why the direct path cannot serve them.
    pub fn from_connection(conn: &KafkaConnection) -> Result<WireSecurity, String> {
        let sasl = conn.sasl.as_ref().map(|s| SaslCredentials {
            mechanism: s.mechanism,
            username: s.username.clone(),
            password: s.password.clone(),
        });
        let tls = match &conn.tls {
            None => None,
            Some(t) => {
                if t.key_password.is_some() {
                    return Err("an encrypted TLS key (key_password) is not readable by the direct path".into());
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let builder = ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS: {e}"))?;
                let builder = if t.insecure_skip_verify {
                    builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                } else {
                    builder.with_root_certificates(roots(t.ca_file.as_deref())?)
                };
                let config = match (&t.cert_file, &t.key_file) {
                    (Some(cert), Some(key)) => {
                        let certs = CertificateDer::pem_file_iter(cert)
                            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                            .map_err(|e| format!("TLS client certificate {cert}: {e}"))?;
                        let key =
                            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS client key {key}: {e}"))?;
                        builder.with_client_auth_cert(certs, key).map_err(|e| format!("TLS client certificate: {e}"))?
                    }
                    _ => builder.with_no_client_auth(),
                };
                Some(Arc::new(config))
            }
        };
        Ok(WireSecurity {
            tls,
            sasl,
            client_id: None,
            cluster_id: None,
            throttles: ThrottleLog::default(),
            tokens: None,
        })
    }

    pub(crate) fn tls(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref()
    }

    pub(crate) fn sasl(&self) -> Option<&SaslCredentials> {
        self.sasl.as_ref()
    }
}

/// The CA file's certificates, or the system store's without one.
fn roots(ca_file: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("TLS CA file {path}: {e}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("TLS CA file {path}: no certificate"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("TLS: no CA file and no system certificates".into());
            }
        }
    }
    Ok(store)
}

/// `insecure_skip_verify`: any certificate is accepted (signatures on the
/// handshake are still checked, so the session is at least consistent).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kollector_core::{SaslConfig, TlsConfig};

    fn conn(tls: Option<TlsConfig>, sasl: Option<SaslConfig>) -> KafkaConnection {
        KafkaConnection { bootstrap: vec!["k:9092".into()], sasl, tls }
    }

    #[test]
    fn what_the_direct_path_cannot_serve_is_refused_with_the_reason_and_no_secret() {
        let tls = TlsConfig {
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: Some(Secret::new("hunter2")),
            insecure_skip_verify: false,
        };
        let why = WireSecurity::from_connection(&conn(Some(tls), None)).unwrap_err();
        assert!(why.contains("key_password") && !why.contains("hunter2"), "{why}");
        let missing = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            cert_file: None,
            key_file: None,
            key_password: None,
            insecure_skip_verify: false,
        };
        let why = WireSecurity::from_connection(&conn(Some(missing), None)).unwrap_err();
        assert!(why.contains("/nonexistent/ca.pem"), "{why}");
    }

    #[test]
    fn debug_output_names_the_mechanism_never_the_password() {
        let sasl = SaslConfig {
            mechanism: SaslMechanism::ScramSha512,
            username: "alice".into(),
            password: Secret::new("wonder-land"),
            oidc: None,
            aws: None,
        };
        let insecure = TlsConfig {
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            insecure_skip_verify: true,
        };
        let s = WireSecurity::from_connection(&conn(Some(insecure), Some(sasl))).unwrap();
        let shown = format!("{s:?} {:?}", s.sasl());
        assert!(shown.contains("ScramSha512") && !shown.contains("wonder-land"), "{shown}");
    }
}
