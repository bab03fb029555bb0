//! Leases: connect, grant, keep alive, notice the loss.
//!
//! etcd-client neither reconnects keepalive streams nor bounds calls in
//! time, and a frozen etcd answers nothing. So every call here has a timeout,
//! each keepalive round opens a fresh stream, and a lease counts as lost once
//! `ttl − margin` passes without a successful keepalive, measured from when
//! that keepalive was *sent* (the server may have renewed it any time after).

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::CoordinationError;

/// Bound on any single etcd call, for a lease of `ttl`.
pub fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

/// How long before expiry a lease holder must consider it lost: a fifth of
/// the TTL, at least 1 s, at most half the TTL.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_secs(1)).min(ttl / 2)
}

/// How to reach etcd: endpoints, and optionally TLS (CA, client
/// certificate) and a user. Debug never shows the password.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    pub tls: Option<etcd_client::TlsOptions>,
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl EtcdAccess {
    /// Plaintext, no user (tests, `--insecure`).
    pub fn plain(endpoints: Vec<String>) -> EtcdAccess {
        EtcdAccess { endpoints, ..EtcdAccess::default() }
    }
}

/// Connects to etcd with bounded connect and request times.
pub async fn connect(etcd: &EtcdAccess, ttl: Duration) -> Result<Client, CoordinationError> {
    connect_with(etcd, ttl, true).await
}

/// HTTP/2 keepalive of connections that carry blocking calls.
const BLOCKING_PING_EVERY: Duration = Duration::from_secs(10);

/// Connects to etcd for calls that block by design (an election campaign
/// waits while another manager leads): no request timeout, which would end
/// such a call after one call bound and have it made again, a write each
/// time; a dead connection still ends it (HTTP/2 keepalive).
pub async fn connect_for_blocking_calls(etcd: &EtcdAccess, ttl: Duration) -> Result<Client, CoordinationError> {
    connect_with(etcd, ttl, false).await
}

async fn connect_with(etcd: &EtcdAccess, ttl: Duration, bounded: bool) -> Result<Client, CoordinationError> {
    let t = call_timeout(ttl);
    let mut options = ConnectOptions::new().with_connect_timeout(t);
    options = if bounded {
        options.with_timeout(t).with_keep_alive(t, t)
    } else {
        // etcd refuses HTTP/2 pings more often than every 5 s (its
        // --grpc-keepalive-min-time) on a connection that carries no data,
        // and after three it drops the connection: a campaign that waits
        // quietly would be cut every few seconds. So ping every 10 s.
        // And only from a member with a leader: one cut off from the
        // quorum refuses the call when it starts, and cancels a stream
        // (a watch) when it loses its leader.
        options.with_keep_alive(BLOCKING_PING_EVERY.max(t), t).with_require_leader(true)
    };
    if let Some(tls) = &etcd.tls {
        options = options.with_tls(tls.clone());
    }
    if let Some((user, password)) = &etcd.user {
        options = options.with_user(user.clone(), password.clone());
    }
    timeout(t * 2, Client::connect(&etcd.endpoints, Some(options)))
        .await
        .map_err(|_| CoordinationError::Timeout("connect"))?
        .map_err(CoordinationError::from)
}

/// Grants a lease of `ttl`; returns its id and when the grant was sent.
pub async fn grant(client: &mut Client, ttl: Duration) -> Result<(i64, Instant), CoordinationError> {
    let sent = Instant::now();
    let lease = timeout(call_timeout(ttl), client.lease_grant(ttl.as_secs().max(1) as i64, None))
        .await
        .map_err(|_| CoordinationError::Timeout("lease grant"))??
        .id();
    Ok((lease, sent))
}

/// Best-effort revoke (leaving cleanly makes others react at once).
/// Returns whether the lease is surely gone (revoked, or already unknown).
pub async fn revoke(client: &mut Client, lease: i64, ttl: Duration) -> bool {
    match timeout(call_timeout(ttl), client.lease_revoke(lease)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.to_string().contains("not found"),
        Err(_) => false,
    }
}

/// One keepalive round trip on a fresh stream. Returns the TTL etcd reports
/// (≤ 0: the lease no longer exists).
async fn keep_alive_once(client: &mut Client, lease: i64) -> Result<i64, String> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
    keeper.keep_alive().await.map_err(|e| e.to_string())?;
    match stream.message().await {
        Ok(Some(resp)) => Ok(resp.ttl()),
        Ok(None) => Err("keepalive stream closed".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// How keeping a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Consider the lease gone: stop acting on it (fence, step down).
    Lost(String),
    /// `stop` fired; the lease was not revoked (the caller decides).
    Stopped,
}

/// Called after each renewal with the instant until which the lease is
/// surely alive (the renewal's send time + TTL − margin) and the renewal's
/// round-trip time.
pub type OnRenew = dyn Fn(Instant, Duration) + Send + Sync;

/// Keeps `lease` alive every `ttl/3` until it is lost or `stop` fires.
/// `granted` is when the grant (or last renewal) was sent.
pub async fn keep_alive(
    client: &mut Client,
    lease: i64,
    granted: Instant,
    ttl: Duration,
    stop: &mut watch::Receiver<bool>,
    on_renew: &OnRenew,
) -> LeaseEnd {
    let t = call_timeout(ttl);
    let mut last_ok = granted;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow() {
            return LeaseEnd::Stopped;
        }
        let lost_at = last_ok + ttl - margin(ttl);
        tokio::select! {
            _ = tokio::time::sleep_until(lost_at) => {
                return LeaseEnd::Lost(format!("no successful keepalive for {:?} (lease TTL {ttl:?})", Instant::now() - last_ok));
            }
            _ = stop.changed() => return LeaseEnd::Stopped,
            _ = tick.tick() => {
                let sent = Instant::now();
                // Also bounded by the loss deadline, so a hung call cannot delay it.
                let limit = t.min(lost_at.saturating_duration_since(sent));
                match timeout(limit, keep_alive_once(client, lease)).await {
                    Ok(Ok(left)) if left > 0 => {
                        last_ok = sent;
                        on_renew(sent + ttl - margin(ttl), sent.elapsed());
                    }
                    Ok(Ok(_)) => return LeaseEnd::Lost("the lease expired at etcd".into()),
                    Ok(Err(e)) => tracing::warn!(lease, "keepalive failed: {e}"),
                    Err(_) => tracing::warn!(lease, "keepalive timed out"),
                }
            }
        }
    }
}
