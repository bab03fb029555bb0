//! Kafka-side security in front of a real broker, for tests. tansu 0.6.0
//! cannot serve SASL or TLS itself (see `shared/reference/kafka-test-brokers.md`),
//! and librdkafka's mock cluster has neither, so the client's real
//! handshakes are answered here and the connection is then handed to tansu:
//!
//! - [`TlsTerminator`]: TLS (rustls), optionally requiring a client
//!   certificate from a given CA, then a byte pipe to the broker;
//! - [`SaslProxy`]: answers SaslHandshake and SaslAuthenticate itself (PLAIN,
//!   SCRAM-SHA-256, SCRAM-SHA-512, with a server-side SCRAM written here on
//!   ring's PBKDF2/HMAC: no maintained crate offers a SCRAM-SHA-512 server),
//!   forwards ApiVersions, refuses anything else before authentication, then
//!   pipes the connection to the broker. With a [`JwtValidator`] it also
//!   serves OAUTHBEARER: each token is checked against the identity
//!   provider's keys, the session lasts as long as the token
//!   (`session_lifetime_ms`), re-authentication on the open connection
//!   (KIP-368) is answered, and a request on an expired session closes it.
//!
//! Each counts the connections it let through, so a test can tell that the
//! client really passed the handshake.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use crate::aws_msk::MskIamVerifier;
use crate::oidc::JwtValidator;

/// How an OAUTHBEARER-serving [`SaslProxy`] checks tokens.
#[derive(Clone)]
pub enum TokenCheck {
    /// JWTs from an OIDC provider: signature against its key set, expiry, audience.
    Jwt(JwtValidator),
    /// AWS MSK IAM presigned requests, checked with botocore.
    MskIam(Arc<MskIamVerifier>),
}

/// OAUTHBEARER on a [`SaslProxy`].
#[derive(Clone)]
pub struct OAuthBearer {
    pub check: TokenCheck,
    /// Kafka's `connections.max.reauth.ms`: a session lasts at most this
    /// long even when its token lives longer.
    pub max_session: Option<std::time::Duration>,
}

impl OAuthBearer {
    pub fn jwt(v: JwtValidator) -> OAuthBearer {
        OAuthBearer { check: TokenCheck::Jwt(v), max_session: None }
    }
}

/// A listener bound now (so its port can be advertised by the broker
/// before the broker starts) that serves once [`TlsTerminator::serve`] or
/// [`SaslProxy::serve`] is called.
pub fn bind() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    l.set_nonblocking(true).expect("nonblocking");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

pub struct TlsTerminator {
    pub passed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsTerminator {
    /// Serves TLS with `cert`/`key` on `listener`; with `client_ca`, only
    /// clients presenting a certificate signed by it get through.
    pub fn serve(
        listener: std::net::TcpListener,
        upstream: u16,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> TlsTerminator {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert).expect("cert file").map(|c| c.expect("cert")).collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key file");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let config = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).expect("ca file") {
                    roots.add(c.expect("ca cert")).expect("add ca");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(certs, key)
        .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let passed = Arc::new(AtomicU64::new(0));
        let count = passed.clone();
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        TlsTerminator { passed, task }
    }
}

/// SASL users: name → password.
pub type Users = BTreeMap<String, String>;

pub struct SaslProxy {
    /// Successful authentications, by mechanism.
    pub passed: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    /// Failed authentications.
    pub failed: Arc<AtomicU64>,
    /// OAUTHBEARER: what the token checks saw.
    pub oauth: Arc<OAuthStats>,
    task: tokio::task::JoinHandle<()>,
}

/// What an OAUTHBEARER-serving [`SaslProxy`] saw. A session lives until its
/// token expires (the broker's `session_lifetime_ms`, sent with every
/// successful SaslAuthenticate, is the token's remaining lifetime, as
/// Kafka's `connections.max.reauth.ms` makes it); a request on a session
/// past that closes the connection (as Kafka does) and is counted.
#[derive(Default)]
pub struct OAuthStats {
    /// Connections authenticated with a valid token.
    pub authenticated: AtomicU64,
    /// Sessions extended in place with a new valid token (KIP-368).
    pub reauthenticated: AtomicU64,
    /// Tokens refused (bad signature, expired, wrong audience, not a JWT).
    pub refused: AtomicU64,
    /// Requests sent on a session whose token had expired (each closed the connection).
    pub expired_requests: AtomicU64,
    /// Distinct tokens accepted (a JWT's `jti`, an MSK token's signature).
    pub tokens: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Tokens accepted per principal (an MSK token's access key), in order of first use.
    pub principals: std::sync::Mutex<Vec<(String, u64)>>,
    /// Why the last token was refused.
    pub last_refusal: std::sync::Mutex<String>,
}

impl OAuthStats {
    pub fn distinct_tokens(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Tokens accepted from `principal`.
    pub fn tokens_of(&self, principal: &str) -> u64 {
        let p = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().find(|(k, _)| k == principal).map(|(_, n)| *n).unwrap_or(0)
    }

    /// Why the last token was refused.
    pub fn last_refusal(&self) -> String {
        self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks one OAUTHBEARER client message; when valid, when its session
    /// ends (the token's expiry, or sooner with `max_session`), in ms.
    async fn check(&self, oauth: &OAuthBearer, message: &[u8]) -> Option<u64> {
        let token = parse_client_first(message);
        let checked = match (token, &oauth.check) {
            (None, _) => Err("not an OAUTHBEARER client message".to_string()),
            (Some(t), TokenCheck::Jwt(v)) => v.check(&t).map(|(exp, jti)| (exp, jti, String::new())),
            (Some(t), TokenCheck::MskIam(v)) => v.check(&t).await.map(|(exp, key)| (exp, t.clone(), key)),
        };
        match checked {
            Ok((exp_ms, id, principal)) => {
                self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                if !principal.is_empty() {
                    let mut p = self.principals.lock().unwrap_or_else(|e| e.into_inner());
                    match p.iter_mut().find(|(k, _)| *k == principal) {
                        Some((_, n)) => *n += 1,
                        None => p.push((principal, 1)),
                    }
                }
                let session_end = match oauth.max_session {
                    Some(max) => exp_ms.min(now_ms() + max.as_millis() as u64),
                    None => exp_ms,
                };
                Some(session_end)
            }
            Err(why) => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                *self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()) = why;
                None
            }
        }
    }
}

/// The bearer token of an OAUTHBEARER initial client response, checked as
/// Kafka's server reads it (RFC 7628 §3.1): `n,[a=…],` then 0x01, `key=value`
/// pairs each ended by 0x01 (keys letters only, `auth` holding
/// `Bearer <token>`), then a final 0x01; the token of RFC 6750 characters.
fn parse_client_first(message: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(message).ok()?;
    let rest = text.strip_prefix("n,")?;
    let (authzid, rest) = rest.split_once(',')?;
    if !(authzid.is_empty() || authzid.starts_with("a=")) {
        return None;
    }
    let body = rest.strip_prefix('\x01')?.strip_suffix("\x01\x01")?;
    let mut token = None;
    for kv in body.split('\x01') {
        let (k, v) = kv.split_once('=')?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphabetic()) {
            return None;
        }
        if k == "auth" {
            let t = v.strip_prefix("Bearer ")?;
            let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
            if t.is_empty() || !t.chars().all(b64token) || token.is_some() {
                return None;
            }
            token = Some(t.to_string());
        }
    }
    token
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A SaslAuthenticate answer (v0/v1) after `correlation`; a refusal says why.
fn authenticate_answer(correlation: i32, version: i16, refusal: Option<&str>, session_lifetime_ms: i64) -> Vec<u8> {
    let mut out = correlation.to_be_bytes().to_vec();
    let ok = refusal.is_none();
    match refusal {
        None => {
            out.extend(0i16.to_be_bytes());
            put_string(&mut out, None);
        }
        Some(why) => {
            out.extend(SASL_AUTHENTICATION_FAILED.to_be_bytes());
            put_string(&mut out, Some(&format!("Authentication failed: invalid_token: {why}")));
        }
    }
    out.extend(0i32.to_be_bytes());
    if version >= 1 {
        out.extend(if ok { session_lifetime_ms } else { 0 }.to_be_bytes());
    }
    out
}

/// A SaslHandshake answer after `correlation`: whether `asked` is served, and the list.
fn handshake_answer(correlation: i32, asked: &str, mechanisms: &[&str]) -> (Vec<u8>, bool) {
    let mut out = correlation.to_be_bytes().to_vec();
    let known = mechanisms.contains(&asked);
    out.extend(if known { 0i16 } else { UNSUPPORTED_SASL_MECHANISM }.to_be_bytes());
    out.extend((mechanisms.len() as i32).to_be_bytes());
    for m in mechanisms {
        put_string(&mut out, Some(m));
    }
    (out, known)
}

/// After an OAUTHBEARER authentication: frames are forwarded one by one
/// (not piped) so that a re-authentication on the open connection
/// (KIP-368: SaslHandshake and SaslAuthenticate again) is answered here,
/// once the broker has answered every request sent before it, and so that
/// a request on an expired session closes the connection.
async fn forward_reauthenticating(
    client: TcpStream,
    up: TcpStream,
    mut expires_ms: u64,
    oauth: OAuthBearer,
    stats: Arc<OAuthStats>,
) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_broker, mut to_broker) = up.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let in_flight = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let answered = Arc::new(tokio::sync::Notify::new());
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut to_client, &frame).await.is_none() {
                break;
            }
        }
    });
    let (btx, bflight, banswered) = (tx.clone(), in_flight.clone(), answered.clone());
    let reader = tokio::spawn(async move {
        while let Some(frame) = read_frame(&mut from_broker).await {
            if btx.send(frame).is_err() {
                break;
            }
            bflight.fetch_sub(1, Ordering::SeqCst);
            banswered.notify_waiters();
        }
    });
    let mut mechanism_ok = false;
    'frames: while let Some(frame) = read_frame(&mut from_client).await {
        let mut r = Reader(&frame);
        let (Some(key), Some(version), Some(correlation), Some(_)) = (r.i16(), r.i16(), r.i32(), r.string()) else {
            break;
        };
        if key == SASL_HANDSHAKE || key == SASL_AUTHENTICATE {
            // Answer only once everything before has been answered.
            loop {
                let waiting = answered.notified();
                tokio::pin!(waiting);
                waiting.as_mut().enable();
                if in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                waiting.await;
            }
        }
        match key {
            SASL_HANDSHAKE => {
                let asked = r.string().unwrap_or_default();
                let (answer, known) = handshake_answer(correlation, &asked, &["OAUTHBEARER"]);
                mechanism_ok = known;
                if tx.send(answer).is_err() || !known {
                    break 'frames;
                }
            }
            SASL_AUTHENTICATE if version <= 1 && mechanism_ok => {
                let checked = match r.bytes() {
                    Some(auth) => stats.check(&oauth, &auth).await,
                    None => None,
                };
                let lifetime = checked.map(|exp| exp.saturating_sub(now_ms()) as i64).unwrap_or(0);
                let refusal = checked.is_none().then(|| stats.last_refusal());
                let _ = tx.send(authenticate_answer(correlation, version, refusal.as_deref(), lifetime));
                match checked {
                    Some(exp) => {
                        expires_ms = exp;
                        mechanism_ok = false;
                        stats.reauthenticated.fetch_add(1, Ordering::SeqCst);
                    }
                    None => break 'frames,
                }
            }
            SASL_AUTHENTICATE => break 'frames,
            _ => {
                if now_ms() >= expires_ms {
                    stats.expired_requests.fetch_add(1, Ordering::SeqCst);
                    break 'frames;
                }
                in_flight.fetch_add(1, Ordering::SeqCst);
                if write_frame(&mut to_broker, &frame).await.is_none() {
                    break 'frames;
                }
            }
        }
    }
    reader.abort();
    // Let what was queued for the client go out, then close.
    drop(tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
}

impl Drop for SaslProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
const WITH_OAUTHBEARER: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let len = r.read_i32().await.ok()?;
    if !(0..=16 << 20).contains(&len) {
        return None;
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Option<()> {
    w.write_i32(body.len() as i32).await.ok()?;
    w.write_all(body).await.ok()?;
    w.flush().await.ok()
}

/// A cursor over a request body.
struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.i16()?;
        if n < 0 {
            return Some(String::new());
        }
        self.take(n as usize).map(|b| String::from_utf8_lossy(b).into_owned())
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.i32()?;
        self.take(usize::try_from(n).ok()?).map(<[u8]>::to_vec)
    }
}

fn put_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend((-1i16).to_be_bytes()),
        Some(s) => {
            out.extend((s.len() as i16).to_be_bytes());
            out.extend(s.as_bytes());
        }
    }
}

/// Server side of one SCRAM exchange (RFC 5802), for SHA-256 or SHA-512.
struct Scram {
    hmac: ring::hmac::Algorithm,
    pbkdf2: ring::pbkdf2::Algorithm,
    digest: &'static ring::digest::Algorithm,
    first_bare: String,
    server_first: String,
    salted: Vec<u8>,
}

const SCRAM_ITERATIONS: u32 = 4096;

impl Scram {
    fn new(mechanism: &str) -> Option<Scram> {
        match mechanism {
            "SCRAM-SHA-256" => Some(Scram {
                hmac: ring::hmac::HMAC_SHA256,
                pbkdf2: ring::pbkdf2::PBKDF2_HMAC_SHA256,
                digest: &ring::digest::SHA256,
                first_bare: String::new(),
                server_first: String::new(),
                salted: Vec::new(),
            }),
            "SCRAM-SHA-512" => Some(Scram {
                hmac: ring::hmac::HMAC_SHA512,
                pbkdf2: ring::pbkdf2::PBKDF2_HMAC_SHA512,
                digest: &ring::digest::SHA512,
                first_bare: String::new(),
                server_first: String::new(),
                salted: Vec::new(),
            }),
            _ => None,
        }
    }

    fn mac(&self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        ring::hmac::sign(&ring::hmac::Key::new(self.hmac, key), msg).as_ref().to_vec()
    }

    /// client-first → server-first, or None for an unknown user.
    fn first(&mut self, users: &Users, client_first: &str) -> Option<String> {
        let bare = client_first.strip_prefix("n,,")?;
        let mut user = None;
        let mut nonce = None;
        for part in bare.split(',') {
            if let Some(u) = part.strip_prefix("n=") {
                user = Some(u.replace("=2C", ",").replace("=3D", "="));
            } else if let Some(r) = part.strip_prefix("r=") {
                nonce = Some(r.to_string());
            }
        }
        let password = users.get(&user?)?;
        let mut salt = [0u8; 16];
        let mut server_nonce = [0u8; 18];
        let rng = ring::rand::SystemRandom::new();
        rng.fill(&mut salt).ok()?;
        rng.fill(&mut server_nonce).ok()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.salted = vec![0u8; self.digest.output_len()];
        ring::pbkdf2::derive(
            self.pbkdf2,
            std::num::NonZeroU32::new(SCRAM_ITERATIONS)?,
            &salt,
            password.as_bytes(),
            &mut self.salted,
        );
        self.first_bare = bare.to_string();
        self.server_first =
            format!("r={}{},s={},i={SCRAM_ITERATIONS}", nonce?, b64.encode(server_nonce), b64.encode(salt));
        Some(self.server_first.clone())
    }

    /// client-final → server-final when the proof is right.
    fn last(&self, client_final: &str) -> Option<String> {
        let (without_proof, proof) = client_final.rsplit_once(",p=")?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let proof = b64.decode(proof).ok()?;
        let auth_message = format!("{},{},{}", self.first_bare, self.server_first, without_proof);
        let client_key = self.mac(&self.salted, b"Client Key");
        let stored_key = ring::digest::digest(self.digest, &client_key);
        let signature = self.mac(stored_key.as_ref(), auth_message.as_bytes());
        if proof.len() != signature.len() {
            return None;
        }
        let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if ring::digest::digest(self.digest, &recovered).as_ref() != stored_key.as_ref() {
            return None;
        }
        let server_key = self.mac(&self.salted, b"Server Key");
        Some(format!("v={}", b64.encode(self.mac(&server_key, auth_message.as_bytes()))))
    }
}

impl SaslProxy {
    pub fn serve(listener: std::net::TcpListener, upstream: u16, users: Users) -> SaslProxy {
        Self::serve_with(listener, upstream, users, None)
    }

    /// Like [`SaslProxy::serve`], and also OAUTHBEARER, each token checked as `oauth` says.
    pub fn serve_with(
        listener: std::net::TcpListener,
        upstream: u16,
        users: Users,
        validator: Option<OAuthBearer>,
    ) -> SaslProxy {
        let passed: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
        let failed = Arc::new(AtomicU64::new(0));
        let oauth = Arc::new(OAuthStats::default());
        let (p, f, o) = (passed.clone(), failed.clone(), oauth.clone());
        let users = Arc::new(users);
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let (p, f, o, users, validator) = (p.clone(), f.clone(), o.clone(), users.clone(), validator.clone());
                tokio::spawn(async move {
                    match Self::session(tcp, peer, upstream, &users, validator.as_ref(), &o).await {
                        Some(Ok((m, client, up, expires))) => {
                            *p.lock().unwrap_or_else(|e| e.into_inner()).entry(m).or_default() += 1;
                            match (expires, validator) {
                                (Some(exp), Some(v)) => {
                                    o.authenticated.fetch_add(1, Ordering::SeqCst);
                                    forward_reauthenticating(client, up, exp, v, o).await;
                                }
                                _ => {
                                    let (mut client, mut up) = (client, up);
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                                }
                            }
                        }
                        Some(Err(())) => {
                            f.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {}
                    }
                });
            }
        });
        SaslProxy { passed, failed, oauth, task }
    }

    /// One client connection's SASL exchange: Some(Ok((mechanism, client,
    /// broker, token expiry for OAUTHBEARER))) when it authenticated,
    /// Some(Err) when it failed, None when it ended before.
    #[allow(clippy::type_complexity)]
    async fn session(
        mut client: TcpStream,
        _peer: SocketAddr,
        upstream: u16,
        users: &Users,
        validator: Option<&OAuthBearer>,
        oauth: &OAuthStats,
    ) -> Option<Result<(String, TcpStream, TcpStream, Option<u64>), ()>> {
        let mechanisms: &[&str] = if validator.is_some() { &WITH_OAUTHBEARER } else { &MECHANISMS };
        let mut up = TcpStream::connect(("127.0.0.1", upstream)).await.ok()?;
        let mut mechanism: Option<String> = None;
        let mut scram: Option<Scram> = None;
        loop {
            let frame = read_frame(&mut client).await?;
            let mut r = Reader(&frame);
            let (key, version, correlation) = (r.i16()?, r.i16()?, r.i32()?);
            let _client_id = r.string()?;
            let mut out = correlation.to_be_bytes().to_vec();
            match key {
                API_VERSIONS => {
                    write_frame(&mut up, &frame).await?;
                    let answer = read_frame(&mut up).await?;
                    write_frame(&mut client, &answer).await?;
                }
                SASL_HANDSHAKE => {
                    let asked = r.string()?;
                    let (answer, known) = handshake_answer(correlation, &asked, mechanisms);
                    write_frame(&mut client, &answer).await?;
                    if !known {
                        return Some(Err(()));
                    }
                    scram = Scram::new(&asked);
                    mechanism = Some(asked);
                }
                SASL_AUTHENTICATE if version <= 1 && mechanism.as_deref() == Some("OAUTHBEARER") => {
                    let auth = r.bytes()?;
                    let checked = match validator {
                        Some(v) => oauth.check(v, &auth).await,
                        None => None,
                    };
                    let lifetime = checked.map(|exp| exp.saturating_sub(now_ms()) as i64).unwrap_or(0);
                    let refusal = checked.is_none().then(|| oauth.last_refusal());
                    write_frame(&mut client, &authenticate_answer(correlation, version, refusal.as_deref(), lifetime))
                        .await?;
                    return Some(match checked {
                        Some(exp) => Ok(("OAUTHBEARER".into(), client, up, Some(exp))),
                        None => Err(()),
                    });
                }
                SASL_AUTHENTICATE if version <= 1 => {
                    let auth = r.bytes()?;
                    let m = mechanism.clone()?;
                    let (reply, done): (Option<Vec<u8>>, bool) = match (m.as_str(), scram.as_mut()) {
                        ("PLAIN", _) => {
                            let parts: Vec<&[u8]> = auth.split(|b| *b == 0).collect();
                            let ok = parts.len() == 3
                                && users.get(&*String::from_utf8_lossy(parts[1])).map(String::as_bytes)
                                    == Some(parts[2]);
                            (ok.then(Vec::new), true)
                        }
                        (_, Some(s)) if s.server_first.is_empty() => {
                            (s.first(users, &String::from_utf8_lossy(&auth)).map(String::into_bytes), false)
                        }
                        (_, Some(s)) => (s.last(&String::from_utf8_lossy(&auth)).map(String::into_bytes), true),
                        _ => (None, true),
                    };
                    match &reply {
                        Some(bytes) => {
                            out.extend(0i16.to_be_bytes());
                            put_string(&mut out, None);
                            out.extend((bytes.len() as i32).to_be_bytes());
                            out.extend(bytes);
                        }
                        None => {
                            out.extend(SASL_AUTHENTICATION_FAILED.to_be_bytes());
                            put_string(&mut out, Some("Authentication failed: invalid credentials"));
                            out.extend(0i32.to_be_bytes());
                        }
                    }
                    if version >= 1 {
                        out.extend(0i64.to_be_bytes());
                    }
                    write_frame(&mut client, &out).await?;
                    if reply.is_none() {
                        return Some(Err(()));
                    }
                    if done {
                        return Some(Ok((m, client, up, None)));
                    }
                }
                // Anything else before authentication: the connection is closed,
                // as a broker with SASL required would.
                _ => return Some(Err(())),
            }
        }
    }
}

/// tansu behind TLS and a [`SaslProxy`] that serves OAUTHBEARER as
/// `oauth` says (and PLAIN for the fixture's own user), seeded through that
/// PLAIN user with topic `orders` (5 records in partition 0) and group
/// `readers` committed at 3: what the token tests' monitors must read back.
/// Tokens go only over verified TLS, so the brokers are reached through a
/// [`TlsTerminator`] whose CA the monitors are given.
pub struct TokenCluster {
    pub proxy: SaslProxy,
    /// The TLS port (what tansu advertises).
    pub port: u16,
    _tls: TlsTerminator,
    _broker: crate::tansu::TansuBroker,
    pki: tempfile::TempDir,
}

impl TokenCluster {
    /// The CA file the monitors verify the brokers with.
    pub fn ca_file(&self) -> String {
        self.pki.path().join("kafka-tls/ca.pem").display().to_string()
    }

    /// The node flag that lets monitors use that CA file.
    pub fn tls_dir_flag(&self) -> String {
        format!("--kafka-tls-dir={}", self.pki.path().join("kafka-tls").display())
    }

    /// A monitor's `[monitors.tls]` table for this cluster.
    pub fn tls_table(&self) -> String {
        format!("[monitors.tls]\nca_file = \"{}\"\n", self.ca_file())
    }
}

pub async fn token_cluster(cluster_id: &str, oauth: OAuthBearer) -> TokenCluster {
    let pki = tempfile::tempdir().expect("tempdir");
    let dir = pki.path().join("kafka-tls");
    let (ok, out, err) = crate::kollector::run_cli(&["certs", "--dir", dir.to_str().expect("path"), "--node", "kafka"]);
    assert!(ok, "kollector certs: {out}{err}");
    let (tls_listener, port) = bind();
    let (sasl_listener, sasl_port) = bind();
    let broker = crate::tansu::TansuBroker::start_advertising(cluster_id, crate::free_port(), port);
    let users = BTreeMap::from([("fixture".to_string(), "fixture-pw".to_string())]);
    let proxy = SaslProxy::serve_with(sasl_listener, broker.port(), users, Some(oauth));
    let tls = TlsTerminator::serve(tls_listener, sasl_port, &dir.join("kafka.pem"), &dir.join("kafka.key"), None);
    let ca = dir.join("ca.pem").display().to_string();
    let config = || {
        let mut c = crate::kafka_fixtures::client_config(&format!("127.0.0.1:{port}"));
        c.set("security.protocol", "sasl_ssl")
            .set("ssl.ca.location", &ca)
            .set("sasl.mechanism", "PLAIN")
            .set("sasl.username", "fixture")
            .set("sasl.password", "fixture-pw");
        c
    };
    crate::kafka_fixtures::create_topic_with(config(), "orders", 1).await.expect("topic");
    let c = config();
    tokio::task::spawn_blocking(move || {
        crate::kafka_fixtures::produce_records_with(c.clone(), "orders", 0, 5).expect("produce");
        crate::kafka_fixtures::commit_offsets_with(c, "readers", &[("orders", 0, 3)]).expect("commit");
    })
    .await
    .expect("seeding");
    TokenCluster { proxy, port, _tls: tls, _broker: broker, pki }
}

/// Whether `r` is what a [`TokenCluster`] named `cluster` holds: its id,
/// group `readers` at 3 with lag 2, nothing partial (the librdkafka path's
/// note that it reads groups that way aside).
pub fn reads_token_cluster(r: &kollector_proto::v1::MonitorResult, cluster: &str) -> Result<(), String> {
    let s = r.snapshot.as_ref().ok_or_else(|| format!("{}: {:?}", r.monitor_id, r.error))?;
    if s.cluster_id != cluster {
        return Err(format!("{}: cluster {}", r.monitor_id, s.cluster_id));
    }
    let g = s.groups.iter().find(|g| g.group_id == "readers").ok_or_else(|| format!("{}: no group", r.monitor_id))?;
    let o: Vec<(&str, i32, i64, Option<i64>)> =
        g.offsets.iter().map(|o| (o.topic.as_str(), o.partition, o.committed, o.lag)).collect();
    if o != vec![("orders", 0, 3, Some(2))] {
        return Err(format!("{}: offsets {o:?}", r.monitor_id));
    }
    let notes: Vec<&String> =
        s.notes.iter().filter(|n| !n.starts_with("consumer groups read through librdkafka")).collect();
    if !notes.is_empty() || !s.warnings.is_empty() || !s.broker_errors.is_empty() {
        return Err(format!("{}: {:?} {:?} {:?}", r.monitor_id, s.notes, s.warnings, s.broker_errors));
    }
    Ok(())
}
