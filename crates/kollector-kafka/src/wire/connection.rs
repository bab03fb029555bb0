//! One connection to one broker, owned by one monitor, speaking the Kafka
//! protocol directly (encoding by the `kafka-protocol` crate), over TCP or
//! TLS, authenticated with SASL when the monitor's spec says so.
//!
//! Why not librdkafka for these calls: its admin API takes one group per
//! OffsetFetch call and sends one DescribeGroups per group, and it exposes
//! no way to send a raw request (see `wire/mod.rs`). Everything else
//! (Metadata, ListOffsets) stays on librdkafka.
//!
//! Blocking, like the rest of a collection (it runs off the async threads).
//! Every read and write waits in slices of at most [`SLICE`] and asks the
//! collection's [`Deadline`] again between them, so a passed fence stops a
//! collection within a slice, like the librdkafka calls. What comes back is
//! untrusted: a frame longer than [`MAX_FRAME`] or with another correlation
//! id ends the connection with an error, never a panic or an allocation the
//! broker chose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ConsumerGroupDescribeResponse, DescribeGroupsResponse,
    FindCoordinatorResponse, ListGroupsResponse, ListOffsetsResponse, MetadataResponse, OffsetFetchResponse,
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rustls::pki_types::ServerName;

use super::security::{SaslCredentials, WireSecurity};
use super::versions::BrokerVersions;
use super::WireError;
use crate::deadline::Deadline;

/// Largest response accepted: far above any group answer (OffsetFetch of a
/// chunk of groups with all their partitions), far below memory trouble.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Longest single wait on the socket before the deadline and fence are asked again.
pub const SLICE: Duration = Duration::from_millis(100);

/// The Kafka `UNSUPPORTED_VERSION` error code.
const UNSUPPORTED_VERSION: i16 = 35;

/// Longest throttle believed from an answer: a broker asking for more is
/// waited on for this long (Kafka's quotas throttle for seconds, not hours).
const MAX_THROTTLE: Duration = Duration::from_secs(60);

/// An answer's `throttle_time_ms` (KIP-219: the broker muted this
/// connection for that long; a client sends nothing on it before then).
/// A trait because the `kafka-protocol` crate's answers share no type.
pub trait Throttle {
    fn throttle_ms(&self) -> i32;
}

macro_rules! throttled_answers {
    ($($answer:ty),*) => {
        $(impl Throttle for $answer {
            fn throttle_ms(&self) -> i32 {
                self.throttle_time_ms
            }
        })*
    };
}

throttled_answers!(
    ApiVersionsResponse,
    MetadataResponse,
    ListOffsetsResponse,
    ListGroupsResponse,
    DescribeGroupsResponse,
    ConsumerGroupDescribeResponse,
    OffsetFetchResponse,
    FindCoordinatorResponse
);

/// Whether a throttle in this answer asks the client to hold back
/// (KIP-219, as Java's `shouldClientThrottle`): from these versions on the
/// broker answers at once and mutes the connection; before, it had already
/// delayed the answer, and waiting again would double the throttle.
/// ApiVersions is not honoured: its answer comes before any quota applies
/// (tansu fills the field with an unset value there).
fn client_throttles(api: ApiKey, version: i16) -> bool {
    let from = match api {
        ApiKey::Metadata => 6,
        ApiKey::ListOffsets => 3,
        ApiKey::ListGroups | ApiKey::DescribeGroups | ApiKey::FindCoordinator => 2,
        ApiKey::OffsetFetch => 4,
        ApiKey::ConsumerGroupDescribe => 0,
        _ => return false,
    };
    version >= from
}

/// SASL answers carry no throttle.
impl Throttle for SaslHandshakeResponse {
    fn throttle_ms(&self) -> i32 {
        0
    }
}

impl Throttle for SaslAuthenticateResponse {
    fn throttle_ms(&self) -> i32 {
        0
    }
}

/// The socket, plain or inside a TLS session.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

pub struct BrokerConnection {
    stream: Stream,
    address: String,
    next_correlation: i32,
    versions: BrokerVersions,
    /// Requests sent on this connection (shown by Debug).
    requests: u64,
    /// When the broker ends the SASL session (SaslAuthenticate v1's
    /// session lifetime), less a margin: the connection is replaced before.
    expires: Option<std::time::Instant>,
    /// The client id in request headers (the monitor's).
    client_id: StrBytes,
    /// Until when the broker throttled this connection (its last answer's
    /// `throttle_time_ms`): no request is sent before.
    throttled_until: Option<std::time::Instant>,
    /// Where throttles are recorded (the monitor's log, by address).
    throttles: super::security::ThrottleLog,
    /// The size of the last answer frame read, in bytes.
    last_answer_bytes: usize,
}

impl std::fmt::Debug for BrokerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConnection").field("address", &self.address).field("requests", &self.requests).finish()
    }
}

/// Whether an I/O error only means "nothing yet" (a read or write slice ran out).
fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted)
}

/// Resolves `address` within the deadline and the fence. The system's
/// resolver (getaddrinfo) takes no timeout and can block for its own
/// retries (tens of seconds against a dead DNS server), so a host name is
/// looked up on a short-lived thread while this one waits in slices; on a
/// passed deadline or fence the lookup is left to finish alone and its
/// answer dropped. An IP literal needs no lookup.
fn resolve(address: &str, deadline: &Deadline) -> Result<Vec<SocketAddr>, WireError> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    // Lookups left running (a dead DNS server) are bounded: past the cap a
    // connect fails at once instead of piling up blocked threads.
    static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    const MAX_IN_FLIGHT: usize = 64;
    use std::sync::atomic::Ordering::SeqCst;
    if IN_FLIGHT.fetch_add(1, SeqCst) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, SeqCst);
        return Err(WireError::Io(format!("{address}: {MAX_IN_FLIGHT} name lookups already waiting on the resolver")));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = address.to_string();
    std::thread::Builder::new()
        .name("kollector-resolve".into())
        .spawn(move || {
            let found = owned.to_socket_addrs().map(|a| a.collect::<Vec<_>>());
            IN_FLIGHT.fetch_sub(1, SeqCst);
            let _ = tx.send(found);
        })
        .map_err(|e| {
            IN_FLIGHT.fetch_sub(1, SeqCst);
            WireError::Io(format!("{address}: starting a name lookup: {e}"))
        })?;
    loop {
        let (left, _) = deadline.slice().map_err(WireError::Stopped)?;
        match rx.recv_timeout(left.min(SLICE)) {
            Ok(found) => return found.map_err(|e| WireError::Io(format!("{address}: {e}"))),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(WireError::Io(format!("{address}: the name lookup ended without an answer")))
            }
        }
    }
}

/// Kafka's bounds on SCRAM iterations (`ScramMechanism`): a broker asking
/// for more would make PBKDF2 run for as long as it likes.
const SCRAM_MAX_ITERATIONS: u32 = 16_384;

/// Checks a SCRAM server message before rsasl parses it: round 1 is the
/// server-first message (`r=…,s=…,i=…`, every attribute `x=value`, an
/// iteration count Kafka would accept), round 2 the server-final one
/// (`v=…` or `e=…`). Pure.
pub(crate) fn check_scram_server_message(round: usize, bytes: &[u8]) -> Result<(), &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "a SCRAM message that is not UTF-8")?;
    let attributes: Vec<&str> = text.split(',').collect();
    let well_formed = |a: &&str| a.len() >= 2 && a.as_bytes()[1] == b'=' && a.as_bytes()[0].is_ascii_alphabetic();
    if !attributes.iter().all(well_formed) {
        return Err("a malformed SCRAM message");
    }
    match round {
        1 => {
            let value = |key: &str| attributes.iter().find(|a| a.starts_with(key)).map(|a| &a[2..]);
            if value("r=").is_none_or(str::is_empty) || value("s=").is_none_or(str::is_empty) {
                return Err("a SCRAM server-first message without nonce or salt");
            }
            match value("i=").and_then(|i| i.parse::<u32>().ok()) {
                Some(i) if (1..=SCRAM_MAX_ITERATIONS).contains(&i) => Ok(()),
                _ => Err("a SCRAM iteration count outside 1..=16384"),
            }
        }
        2 if attributes[0].starts_with("v=") || attributes[0].starts_with("e=") => Ok(()),
        2 => Err("a SCRAM server-final message without verifier"),
        _ => Err("a SCRAM exchange longer than two rounds"),
    }
}

impl BrokerConnection {
    /// Connects to `address` (host:port), with TLS and SASL as `security`
    /// says, and asks which versions it speaks.
    pub fn connect(address: &str, security: &WireSecurity, deadline: &Deadline) -> Result<BrokerConnection, WireError> {
        let io = |e: std::io::Error| WireError::Io(format!("{address}: {e}"));
        let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = resolve(address, deadline)?;
        let mut last = WireError::Io(format!("{address}: no address"));
        for addr in addrs {
            let (left, _) = deadline.slice().map_err(WireError::Stopped)?;
            let tcp = match TcpStream::connect_timeout(&addr, left) {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = io(e);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let stream = match security.tls() {
                None => Stream::Plain(tcp),
                Some(config) => {
                    let name = ServerName::try_from(host.to_string())
                        .map_err(|e| WireError::Io(format!("{address}: not a TLS server name: {e}")))?;
                    let session = rustls::ClientConnection::new(config.clone(), name)
                        .map_err(|e| WireError::Io(format!("{address}: TLS: {e}")))?;
                    Stream::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
                }
            };
            let mut c = BrokerConnection {
                stream,
                address: address.to_string(),
                next_correlation: 1,
                versions: BrokerVersions::default(),
                requests: 0,
                expires: None,
                client_id: StrBytes::from_string(security.client_id().to_string()),
                throttled_until: None,
                throttles: security.throttle_log().clone(),
                last_answer_bytes: 0,
            };
            c.handshake_tls(deadline)?;
            c.versions = c.api_versions(deadline)?;
            match (security.sasl(), security.tokens()) {
                (Some(sasl), _) if !sasl.mechanism.uses_tokens() => c.authenticate(sasl, deadline)?,
                (Some(_), Some(tokens)) => c.authenticate_oauthbearer(tokens, deadline)?,
                (Some(_), None) => return Err(WireError::Authentication("OAUTHBEARER without a token source".into())),
                (None, _) => {}
            }
            if let Some(expected) = security.expected_cluster() {
                c.check_cluster(expected, deadline)?;
            }
            return Ok(c);
        }
        Err(last)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn versions(&self) -> &BrokerVersions {
        &self.versions
    }

    /// The size of the last answer frame, in bytes: what the next request
    /// of the kind should expect to weigh.
    pub fn last_answer_bytes(&self) -> usize {
        self.last_answer_bytes
    }

    /// Waits out a throttle the broker asked for, within the deadline; a
    /// throttle that outlasts the deadline is not waited for at all.
    fn wait_for_throttle(&mut self, deadline: &Deadline) -> Result<(), WireError> {
        let Some(until) = self.throttled_until else { return Ok(()) };
        if until > deadline.at() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            return Err(WireError::Throttled(format!(
                "{}: throttled by the broker for another {} ms, past this broker's budget",
                self.address,
                left.as_millis()
            )));
        }
        while std::time::Instant::now() < until {
            let (left, _) = deadline.slice().map_err(WireError::Stopped)?;
            std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()).min(left).min(SLICE));
        }
        self.throttled_until = None;
        Ok(())
    }

    /// Whether the broker's SASL session is about to end (open a new one).
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|at| std::time::Instant::now() >= at)
    }

    /// Asks which cluster this broker belongs to (Metadata for no topic)
    /// and refuses the connection unless it is `expected`: an answer from
    /// another cluster is never used.
    fn check_cluster(&mut self, expected: &str, deadline: &Deadline) -> Result<(), WireError> {
        let found = super::cluster::cluster_id(self, deadline)?;
        super::cluster::check_cluster_id(found.as_deref(), expected, &self.address)
    }

    /// Completes the TLS handshake before the first request, so a refused
    /// certificate reads as a TLS error, not as a broken request.
    fn handshake_tls(&mut self, deadline: &Deadline) -> Result<(), WireError> {
        let Stream::Tls(s) = &mut self.stream else { return Ok(()) };
        while s.conn.is_handshaking() {
            let (left, _) = deadline.slice().map_err(WireError::Stopped)?;
            let slice = Some(left.min(SLICE));
            let tcp = &s.sock;
            tcp.set_read_timeout(slice)
                .and_then(|_| tcp.set_write_timeout(slice))
                .map_err(|e| WireError::Io(format!("{}: {e}", self.address)))?;
            match s.conn.complete_io(&mut s.sock) {
                Ok(_) => {}
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(WireError::Tls(format!("{}: {e}", self.address))),
            }
        }
        Ok(())
    }

    /// ApiVersions v3, or v0 from a broker that does not know v3 (it
    /// answers UNSUPPORTED_VERSION in the v0 format).
    fn api_versions(&mut self, deadline: &Deadline) -> Result<BrokerVersions, WireError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("kollector"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let answer = match self.call::<_, ApiVersionsResponse>(ApiKey::ApiVersions, 3, &request, deadline) {
            Ok(r) if r.error_code != UNSUPPORTED_VERSION => r,
            Ok(_) | Err(WireError::Protocol(_)) => {
                self.call::<_, ApiVersionsResponse>(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default(), deadline)?
            }
            Err(e) => return Err(e),
        };
        if answer.error_code != 0 {
            return Err(WireError::Broker { api: "ApiVersions", code: answer.error_code });
        }
        Ok(BrokerVersions::new(answer.api_keys.iter().map(|k| (k.api_key, k.min_version, k.max_version))))
    }

    /// SaslHandshake v1, then the mechanism's exchange in SaslAuthenticate
    /// requests (v0/v1, as librdkafka sends), driven by rsasl.
    fn authenticate(&mut self, sasl: &SaslCredentials, deadline: &Deadline) -> Result<(), WireError> {
        let mechanism = sasl.mechanism.as_str();
        let refused = |why: String| WireError::Authentication(format!("{mechanism} as {}: {why}", sasl.username));
        if self.versions.pick(ApiKey::SaslHandshake, (1, 1)).is_none() {
            return Err(WireError::Unsupported("SaslHandshake v1"));
        }
        let auth_version =
            self.versions.pick(ApiKey::SaslAuthenticate, (0, 1)).ok_or(WireError::Unsupported("SaslAuthenticate"))?;
        let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let answer: SaslHandshakeResponse = self.call(ApiKey::SaslHandshake, 1, &handshake, deadline)?;
        if answer.error_code != 0 {
            let offered: Vec<String> = answer.mechanisms.iter().map(|m| m.to_string()).collect();
            return Err(refused(format!("the broker offers only {}", offered.join(", "))));
        }
        let config = rsasl::config::SASLConfig::with_credentials(
            None,
            sasl.username.clone(),
            sasl.password.expose().to_string(),
        )
        .map_err(|e| refused(e.to_string()))?;
        let name = rsasl::mechname::Mechname::parse(mechanism.as_bytes()).map_err(|e| refused(e.to_string()))?;
        let mut session =
            rsasl::prelude::SASLClient::new(config).start_suggested(&[name]).map_err(|e| refused(e.to_string()))?;
        let mut input: Option<Vec<u8>> = None;
        let scram = mechanism.starts_with("SCRAM-");
        // PLAIN takes one round, SCRAM two; a broker that wants more is not speaking SCRAM.
        for round in 0..4 {
            // rsasl's SCRAM client slices the broker's messages unchecked and
            // runs whatever PBKDF2 iteration count it is told, outside our
            // deadline: what the broker sent is checked first.
            if let (true, Some(bytes)) = (scram, &input) {
                check_scram_server_message(round, bytes).map_err(|why| refused(why.to_string()))?;
            }
            let mut out = Vec::new();
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                session.step(input.as_deref(), &mut out).map_err(|e| e.to_string())
            }));
            let state = match step {
                Ok(Ok(state)) => state,
                Ok(Err(e)) => return Err(refused(e)),
                Err(_) => return Err(refused("the broker's SASL message could not be read".into())),
            };
            if state.has_sent_message() {
                let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(out));
                let answer: SaslAuthenticateResponse =
                    self.call(ApiKey::SaslAuthenticate, auth_version, &request, deadline)?;
                if answer.error_code != 0 {
                    let said = answer.error_message.map(|m| m.to_string()).unwrap_or_default();
                    let code = super::error_name(answer.error_code);
                    return Err(refused(format!("the broker refused it: {code} {said}")));
                }
                input = Some(answer.auth_bytes.to_vec());
                if answer.session_lifetime_ms > 0 {
                    let lifetime = Duration::from_millis(answer.session_lifetime_ms as u64);
                    self.expires = Some(std::time::Instant::now() + lifetime.mul_f64(0.9));
                }
            }
            if state.is_finished() {
                return Ok(());
            }
        }
        Err(refused("the exchange did not end".into()))
    }

    /// SaslHandshake v1, then one SaslAuthenticate carrying a token from
    /// the monitor's source (RFC 7628). A broker that refuses the token
    /// either answers with an error code, or first with a JSON challenge
    /// that the client must acknowledge with a lone 0x01 before the broker
    /// fails the exchange: both end as an authentication error carrying
    /// what the broker said.
    fn authenticate_oauthbearer(
        &mut self,
        tokens: &crate::oauth::TokenSource,
        deadline: &Deadline,
    ) -> Result<(), WireError> {
        const MECHANISM: &str = "OAUTHBEARER";
        let refused = |why: String| WireError::Authentication(format!("{MECHANISM}: {why}"));
        if self.versions.pick(ApiKey::SaslHandshake, (1, 1)).is_none() {
            return Err(WireError::Unsupported("SaslHandshake v1"));
        }
        let auth_version =
            self.versions.pick(ApiKey::SaslAuthenticate, (0, 1)).ok_or(WireError::Unsupported("SaslAuthenticate"))?;
        let (left, _) = deadline.slice().map_err(WireError::Stopped)?;
        let token = tokens.token(left).map_err(|e| refused(e.to_string()))?;
        let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(MECHANISM));
        let answer: SaslHandshakeResponse = self.call(ApiKey::SaslHandshake, 1, &handshake, deadline)?;
        if answer.error_code != 0 {
            let offered: Vec<String> = answer.mechanisms.iter().map(|m| m.to_string()).collect();
            return Err(refused(format!("the broker offers only {}", offered.join(", "))));
        }
        let request =
            SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(crate::oauth::client_first_message(&token)));
        let answer: SaslAuthenticateResponse = self.call(ApiKey::SaslAuthenticate, auth_version, &request, deadline)?;
        if answer.error_code != 0 {
            let said = answer.error_message.map(|m| m.to_string()).unwrap_or_default();
            let code = super::error_name(answer.error_code);
            return Err(refused(format!("the broker refused the token: {code} {said}")));
        }
        if !answer.auth_bytes.is_empty() {
            // The broker's error challenge ({"status":"invalid_token",…}):
            // acknowledged so it ends the exchange, and reported.
            let challenge: String = String::from_utf8_lossy(&answer.auth_bytes)
                .chars()
                .take(300)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let ack = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\x01"));
            let end: Result<SaslAuthenticateResponse, _> =
                self.call(ApiKey::SaslAuthenticate, auth_version, &ack, deadline);
            let said = end.ok().and_then(|a| a.error_message.map(|m| m.to_string())).unwrap_or_default();
            return Err(refused(format!("the broker refused the token: {challenge} {said}")));
        }
        if answer.session_lifetime_ms > 0 {
            let lifetime = Duration::from_millis(answer.session_lifetime_ms as u64);
            self.expires = Some(std::time::Instant::now() + lifetime.mul_f64(0.9));
        }
        Ok(())
    }

    /// Sends one request and reads its answer, both before `deadline`.
    pub fn call<Req, Resp>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
        deadline: &Deadline,
    ) -> Result<Resp, WireError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion + Throttle,
    {
        self.wait_for_throttle(deadline)?;
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));
        let protocol = |what: &str, e: &dyn std::fmt::Display| WireError::Protocol(format!("{what}: {e}"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, Req::header_version(version))
            .map_err(|e| protocol("encoding a request header", &e))?;
        request.encode(&mut body, version).map_err(|e| protocol("encoding a request", &e))?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
        frame.extend_from_slice(&body);
        self.requests += 1;
        self.write_all(&frame, deadline)?;
        let mut len = [0u8; 4];
        self.read_full(&mut len, deadline)?;
        let len = i32::from_be_bytes(len);
        let len = usize::try_from(len).ok().filter(|l| *l <= MAX_FRAME).ok_or_else(|| {
            WireError::Oversized(format!("{}: a response frame of {len} bytes (at most {MAX_FRAME})", self.address))
        })?;
        let mut answer = vec![0u8; len];
        self.read_full(&mut answer, deadline)?;
        self.last_answer_bytes = len + 4;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, Resp::header_version(version))
            .map_err(|e| protocol("decoding a response header", &e))?;
        if header.correlation_id != correlation {
            return Err(WireError::Protocol(format!(
                "{}: answer to request {} while waiting for {correlation}",
                self.address, header.correlation_id
            )));
        }
        let answer = Resp::decode(&mut answer, version)
            .map_err(|e| protocol(&format!("decoding a {api:?} v{version} response"), &e))?;
        let honoured = client_throttles(api, version);
        if let Some(ms) = u64::try_from(answer.throttle_ms()).ok().filter(|_| honoured) {
            let throttle = Duration::from_millis(ms).min(MAX_THROTTLE);
            if !throttle.is_zero() {
                self.throttled_until = Some(std::time::Instant::now() + throttle);
                self.throttles.record(&self.address, throttle);
            }
        }
        Ok(answer)
    }

    /// How long the next wait on the socket may last, or why none may.
    fn slice(&self, deadline: &Deadline) -> Result<Duration, WireError> {
        let (left, _) = deadline.slice().map_err(WireError::Stopped)?;
        Ok(left.min(SLICE))
    }

    fn write_all(&mut self, mut buf: &[u8], deadline: &Deadline) -> Result<(), WireError> {
        while !buf.is_empty() {
            let slice = self.slice(deadline)?;
            self.stream.tcp().set_write_timeout(Some(slice)).map_err(|e| self.io_error(e))?;
            match self.stream.write(buf) {
                Ok(0) => return Err(WireError::Io(format!("{}: connection closed", self.address))),
                Ok(n) => buf = &buf[n..],
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        loop {
            let slice = self.slice(deadline)?;
            self.stream.tcp().set_write_timeout(Some(slice)).map_err(|e| self.io_error(e))?;
            match self.stream.flush() {
                Ok(()) => return Ok(()),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn read_full(&mut self, buf: &mut [u8], deadline: &Deadline) -> Result<(), WireError> {
        let mut filled = 0;
        while filled < buf.len() {
            let slice = self.slice(deadline)?;
            self.stream.tcp().set_read_timeout(Some(slice)).map_err(|e| self.io_error(e))?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => return Err(WireError::Io(format!("{}: connection closed by the broker", self.address))),
                Ok(n) => filled += n,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        Ok(())
    }

    fn io_error(&self, e: std::io::Error) -> WireError {
        match e.kind() {
            std::io::ErrorKind::InvalidData => WireError::Tls(format!("{}: {e}", self.address)),
            _ => WireError::Io(format!("{}: {e}", self.address)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::Stop;

    #[test]
    fn name_lookups_answer_within_the_deadline_and_stop_when_it_passes() {
        let deadline = Deadline::after(Duration::from_secs(5));
        assert_eq!(resolve("127.0.0.1:9092", &deadline), Ok(vec!["127.0.0.1:9092".parse().expect("addr")]));
        assert!(resolve("localhost:9092", &deadline).is_ok_and(|a| !a.is_empty()));
        let passed = Deadline::after(Duration::ZERO);
        assert_eq!(resolve("localhost:9092", &passed), Err(WireError::Stopped(Stop::TimedOut)));
    }

    #[test]
    fn scram_messages_that_would_trip_rsasl_are_refused_first() {
        assert_eq!(check_scram_server_message(1, b"r=abc,s=c2FsdA==,i=4096"), Ok(()));
        assert_eq!(check_scram_server_message(2, b"v=c2lnbmF0dXJl"), Ok(()));
        assert_eq!(check_scram_server_message(2, b"e=invalid-proof"), Ok(()));
        for (round, bad) in [
            (1, &b"r=x,s"[..]),
            (1, b"r=x,s=y,i=4000000000"),
            (1, b"r=x,s=y,i=0"),
            (1, b"r=x,i=4096"),
            (1, b"r=,s=y,i=4096"),
            (1, b"\xff\xfe"),
            (2, b""),
            (2, b"x"),
            (2, b"r=abc"),
            (3, b"v=abc"),
        ] {
            assert!(check_scram_server_message(round, bad).is_err(), "{round} {bad:?}");
        }
    }

    /// A broker's array header claiming four billion entries in a tiny
    /// frame is a decode error, not a 160 GB reservation that aborts the
    /// process (the patched kafka-protocol, vendor/kafka-protocol).
    #[test]
    fn a_huge_array_count_off_the_wire_is_an_error_not_an_abort() {
        // ApiVersions v3: error_code, then api_keys as a compact array of u32::MAX - 1 entries.
        let mut frame = Bytes::from_static(&[0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0, 0]);
        assert!(ApiVersionsResponse::decode(&mut frame, 3).is_err());
        // Int32-counted arrays (non-flexible versions) likewise.
        let mut frame = Bytes::from_static(&[0, 0, 0x7F, 0xFF, 0xFF, 0xFF, 0, 1]);
        assert!(ApiVersionsResponse::decode(&mut frame, 0).is_err());
    }
}
