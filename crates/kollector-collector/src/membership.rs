//! Collector membership in etcd: the lease, its keepalive, and self-fencing.
//!
//! A collector is alive while `<prefix>/collectors/<id>` exists; the key is
//! attached to a lease of `ttl` that this module keeps alive every `ttl/3`.
//! Every etcd call is bounded by a timeout, because a paused or partitioned
//! etcd answers nothing rather than an error.
//!
//! Self-fencing: if no keepalive has succeeded for `ttl − margin` (counted
//! from when the last successful keepalive was *sent*, as etcd's Go client
//! does), the collector stops every monitor and closes its clients *before*
//! the lease can expire at etcd. So by the time the manager sees the key
//! vanish and reassigns the monitors elsewhere, this node has already
//! stopped: two owners never collect at once (guarantee G5). Afterwards it
//! registers again with a fresh lease and starts empty, waiting for the
//! manager.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, PutOptions};
use kollector_core::CollectorId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// What a collector publishes about itself under its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectorRecord {
    pub grpc_address: String,
    pub http_address: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Relative capacity for the planner (1.0 = typical).
    pub weight: f64,
    pub version: String,
}

#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub endpoints: Vec<String>,
    /// Key prefix, default `/kollector`.
    pub prefix: String,
    pub id: CollectorId,
    pub record: CollectorRecord,
    /// Lease TTL (whole seconds; etcd's minimum is about 2 s).
    pub ttl: Duration,
}

impl MembershipConfig {
    pub fn key(&self) -> String {
        format!("{}/collectors/{}", self.prefix.trim_end_matches('/'), self.id)
    }

    /// Fence this long before the lease would expire: a fifth of the TTL, at least 1 s.
    pub fn margin(&self) -> Duration {
        (self.ttl / 5).max(Duration::from_secs(1)).min(self.ttl / 2)
    }
}

/// Where this collector stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipState {
    /// Not registered yet (or re-registering after a fence).
    Joining,
    Registered {
        lease: i64,
    },
    /// Monitors stopped because the lease could not be kept alive.
    Fenced {
        reason: String,
    },
    Stopped,
}

/// Called to stop every monitor; resolves when their clients are closed.
pub type FenceFn = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A running membership; dropping it does not revoke the lease, `leave` does.
pub struct Membership {
    state: watch::Receiver<MembershipState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Starts registering and keeping the lease alive in the background.
    pub fn start(config: MembershipConfig, fence: FenceFn) -> Membership {
        let (state_tx, state) = watch::channel(MembershipState::Joining);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(config, fence, state_tx, stop_rx));
        Membership { state, stop, task }
    }

    pub fn state(&self) -> watch::Receiver<MembershipState> {
        self.state.clone()
    }

    /// Revokes the lease (the key disappears at once) and stops.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Bound on any single etcd call.
fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

async fn connect(config: &MembershipConfig) -> Result<Client, String> {
    let t = call_timeout(config.ttl);
    let options = ConnectOptions::new().with_connect_timeout(t).with_timeout(t).with_keep_alive(t, t);
    timeout(t * 2, Client::connect(&config.endpoints, Some(options)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))
}

/// Grants a lease and writes the key on it. Returns the client, the lease id
/// and the instant the grant was sent (the lease's life starts no earlier).
async fn register(config: &MembershipConfig) -> Result<(Client, i64, Instant), String> {
    let mut client = connect(config).await?;
    let t = call_timeout(config.ttl);
    let sent = Instant::now();
    let lease = timeout(t, client.lease_grant(config.ttl.as_secs().max(1) as i64, None))
        .await
        .map_err(|_| "lease grant timed out".to_string())?
        .map_err(|e| format!("lease grant: {e}"))?
        .id();
    let value = serde_json::to_string(&config.record).map_err(|e| e.to_string())?;
    timeout(t, client.put(config.key(), value, Some(PutOptions::new().with_lease(lease))))
        .await
        .map_err(|_| "put timed out".to_string())?
        .map_err(|e| format!("put: {e}"))?;
    Ok((client, lease, sent))
}

/// One keepalive round trip on a fresh stream (streams are not reconnected
/// by the crate, so each round opens its own; this also survives etcd
/// restarts). Returns the TTL etcd reports (≤ 0: the lease is gone).
async fn keep_alive_once(client: &mut Client, lease: i64) -> Result<i64, String> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
    keeper.keep_alive().await.map_err(|e| e.to_string())?;
    match stream.message().await {
        Ok(Some(resp)) => Ok(resp.ttl()),
        Ok(None) => Err("keepalive stream closed".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn run(
    config: MembershipConfig,
    fence: FenceFn,
    state: watch::Sender<MembershipState>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = config.ttl;
    let t = call_timeout(ttl);
    let mut retry = Duration::from_millis(200);
    loop {
        // Register (again), retrying with backoff until etcd answers.
        let (mut client, lease, granted) = loop {
            if *stop.borrow() {
                let _ = state.send(MembershipState::Stopped);
                return;
            }
            match register(&config).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(collector = %config.id, "registering in etcd failed: {e}; retrying in {retry:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.changed() => {}
                    }
                    retry = (retry * 2).min(ttl / 3);
                }
            }
        };
        retry = Duration::from_millis(200);
        tracing::info!(collector = %config.id, lease, "registered in etcd");
        let _ = state.send(MembershipState::Registered { lease });

        let mut last_ok = granted;
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            let fence_at = last_ok + ttl - config.margin();
            tokio::select! {
                _ = tokio::time::sleep_until(fence_at) => {
                    break format!("no successful keepalive for {:?} (lease TTL {ttl:?})", Instant::now() - last_ok);
                }
                _ = stop.changed() => {
                    // Leaving cleanly: revoke so the manager reacts at once.
                    let _ = timeout(t, client.lease_revoke(lease)).await;
                    let _ = state.send(MembershipState::Stopped);
                    return;
                }
                _ = tick.tick() => {
                    let sent = Instant::now();
                    // Bounded by the fence deadline too, so a hung call cannot delay the fence.
                    let limit = t.min(fence_at.saturating_duration_since(sent));
                    match timeout(limit, keep_alive_once(&mut client, lease)).await {
                        Ok(Ok(left)) if left > 0 => last_ok = sent,
                        Ok(Ok(_)) => break "the lease expired at etcd".to_string(),
                        Ok(Err(e)) => tracing::warn!(collector = %config.id, "keepalive failed: {e}"),
                        Err(_) => tracing::warn!(collector = %config.id, "keepalive timed out"),
                    }
                }
            }
        };
        tracing::warn!(collector = %config.id, "fencing: {reason}; stopping every monitor");
        let _ = state.send(MembershipState::Fenced { reason });
        fence().await;
        tracing::info!(collector = %config.id, "fenced: every monitor stopped; registering again");
        let _ = state.send(MembershipState::Joining);
    }
}
