//! One connection to one broker, owned by one monitor, speaking the Kafka
//! protocol directly (encoding by the `kafka-protocol` crate).
//!
//! Why not librdkafka for these calls: its admin API takes one group per
//! OffsetFetch call and sends one DescribeGroups per group, and it exposes
//! no way to send a raw request (see `wire/mod.rs`). Everything else
//! (Metadata, ListOffsets) stays on librdkafka.
//!
//! Blocking, like the rest of a collection (it runs off the async threads),
//! with every read and write bounded by the caller's timeout. What comes
//! back is untrusted: a frame longer than [`MAX_FRAME`] or with another
//! correlation id ends the connection with an error, never a panic or an
//! allocation the broker chose.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::versions::BrokerVersions;
use super::WireError;

/// Largest response accepted: far above any group answer (OffsetFetch of a
/// chunk of groups with all their partitions), far below memory trouble.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The Kafka `UNSUPPORTED_VERSION` error code.
const UNSUPPORTED_VERSION: i16 = 35;

pub struct BrokerConnection {
    stream: TcpStream,
    address: String,
    next_correlation: i32,
    versions: BrokerVersions,
    /// Requests sent on this connection (for the request counts).
    requests: u64,
}

impl std::fmt::Debug for BrokerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConnection").field("address", &self.address).field("requests", &self.requests).finish()
    }
}

impl BrokerConnection {
    /// Connects to `address` (host:port) and asks which versions it speaks.
    pub fn connect(address: &str, timeout: Duration) -> Result<BrokerConnection, WireError> {
        let deadline = Instant::now() + timeout;
        let io = |e: std::io::Error| WireError::Io(format!("{address}: {e}"));
        let addrs: Vec<_> = address.to_socket_addrs().map_err(io)?.collect();
        let mut last = WireError::Io(format!("{address}: no address"));
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WireError::Timeout(address.to_string()));
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let mut c = BrokerConnection {
                        stream,
                        address: address.to_string(),
                        next_correlation: 1,
                        versions: BrokerVersions::default(),
                        requests: 0,
                    };
                    c.versions = c.api_versions(deadline)?;
                    return Ok(c);
                }
                Err(e) => last = io(e),
            }
        }
        Err(last)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn versions(&self) -> &BrokerVersions {
        &self.versions
    }

    /// Requests sent so far on this connection.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// ApiVersions v3, or v0 from a broker that does not know v3 (it
    /// answers UNSUPPORTED_VERSION in the v0 format).
    fn api_versions(&mut self, deadline: Instant) -> Result<BrokerVersions, WireError> {
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

    /// Sends one request and reads its answer, both before `deadline`.
    pub fn call<Req, Resp>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
        deadline: Instant,
    ) -> Result<Resp, WireError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("kollector")));
        let protocol = |what: &str, e: &dyn std::fmt::Display| WireError::Protocol(format!("{what}: {e}"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, Req::header_version(version))
            .map_err(|e| protocol("encoding a request header", &e))?;
        request.encode(&mut body, version).map_err(|e| protocol("encoding a request", &e))?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
        frame.extend_from_slice(&body);
        self.set_timeouts(deadline)?;
        self.requests += 1;
        self.stream.write_all(&frame).map_err(|e| self.io_error(e))?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(|e| self.io_error(e))?;
        let len = i32::from_be_bytes(len);
        let len = usize::try_from(len).ok().filter(|l| *l <= MAX_FRAME).ok_or_else(|| {
            WireError::Protocol(format!("{}: a response frame of {len} bytes (at most {MAX_FRAME})", self.address))
        })?;
        let mut answer = vec![0u8; len];
        self.set_timeouts(deadline)?;
        self.stream.read_exact(&mut answer).map_err(|e| self.io_error(e))?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, Resp::header_version(version))
            .map_err(|e| protocol("decoding a response header", &e))?;
        if header.correlation_id != correlation {
            return Err(WireError::Protocol(format!(
                "{}: answer to request {} while waiting for {correlation}",
                self.address, header.correlation_id
            )));
        }
        Resp::decode(&mut answer, version).map_err(|e| protocol(&format!("decoding a {api:?} v{version} response"), &e))
    }

    fn set_timeouts(&self, deadline: Instant) -> Result<(), WireError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WireError::Timeout(self.address.clone()));
        }
        let io = |e: std::io::Error| WireError::Io(format!("{}: {e}", self.address));
        self.stream.set_read_timeout(Some(left)).map_err(io)?;
        self.stream.set_write_timeout(Some(left)).map_err(io)
    }

    fn io_error(&self, e: std::io::Error) -> WireError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => WireError::Timeout(self.address.clone()),
            _ => WireError::Io(format!("{}: {e}", self.address)),
        }
    }
}
