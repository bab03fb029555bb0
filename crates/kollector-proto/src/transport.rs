//! gRPC transport settings every kollector server and client uses.
//!
//! tonic's defaults do not fit a monitoring cluster: a 4 MiB message cap
//! (one snapshot of a 50,000-partition cluster is larger, and a refused
//! message on a result stream would end the stream for every monitor after
//! it) and no HTTP/2 keepalive (a half-open connection to a vanished
//! collector would hang a results stream forever). So every server and
//! client is built here, with one limit and keepalive on every channel, a
//! cap on concurrent calls per connection and on how long a call may run,
//! and TLS when the node has it.

use std::time::Duration;

use tonic::transport::{ClientTlsConfig, Endpoint, Server, ServerTlsConfig};

/// Largest request the public ManagerService accepts: a monitor spec is a
/// few KiB; anything near this is hostile or a mistake.
pub const MAX_API_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Calls served at once on one connection; more wait their turn.
pub const MAX_CALLS_PER_CONNECTION: usize = 128;

/// Longest time a server lets one call run before answering (a stream
/// counts until its first message). Longer than any wait kollector makes
/// (`--apply-timeout`, probe timeouts), so only a stuck call meets it.
pub const MAX_CALL_TIME: Duration = Duration::from_secs(600);

/// Default cap on one gRPC message, each way: room for a 50,000-partition
/// snapshot with its groups (about 10 MiB) several times over.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Largest message sent or received.
    pub max_message_bytes: usize,
    /// HTTP/2 PING interval on idle connections.
    pub keepalive_interval: Duration,
    /// A PING unanswered this long closes the connection.
    pub keepalive_timeout: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

impl GrpcLimits {
    /// A server builder with keepalive, call limits and, when given, TLS;
    /// apply `max_message_bytes` to each service with its
    /// `max_{en,de}coding_message_size`.
    pub fn server(&self, tls: Option<ServerTlsConfig>) -> Result<Server, tonic::transport::Error> {
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        Ok(server
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .tcp_keepalive(Some(self.keepalive_interval))
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .max_concurrent_streams(Some(MAX_CALLS_PER_CONNECTION as u32))
            .timeout(MAX_CALL_TIME))
    }

    /// An endpoint for `address` (`host:port` or a URL) with keepalive and
    /// the given connect and per-call timeouts; over TLS when `tls` is given.
    pub fn endpoint(
        &self,
        address: &str,
        tls: Option<&ClientTlsConfig>,
        connect_timeout: Duration,
        call_timeout: Option<Duration>,
    ) -> Result<Endpoint, tonic::transport::Error> {
        let bare = address.trim_start_matches("http://").trim_start_matches("https://");
        let url = if tls.is_some() { format!("https://{bare}") } else { format!("http://{bare}") };
        let mut e = Endpoint::from_shared(url)?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(self.keepalive_interval));
        if let Some(t) = call_timeout {
            e = e.timeout(t);
        }
        if let Some(tls) = tls {
            e = e.tls_config(tls.clone())?;
        }
        Ok(e)
    }
}
