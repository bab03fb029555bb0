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
//!
//! Identity: registration is create-if-absent, bound to this process's own
//! lease. If the key exists under a lease that is not ours, either an
//! earlier incarnation crashed (its lease runs out within one TTL) or
//! another live process uses the same id (it keeps renewing). So we retry
//! for one TTL plus a call timeout; a key still held by a foreign lease after
//! that belongs to a live duplicate, and membership ends with
//! [`MembershipState::Failed`] (the collector exits non-zero) instead of two
//! processes collecting under one id.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use kollector_core::CollectorId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::keys::Keys;
use crate::lease::{self, LeaseEnd};
use crate::CoordinationError;

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

impl CollectorRecord {
    /// Relative capacities a collector may declare: a typo (`1e300`) must
    /// not hand one collector every monitor, each Assign carrying secrets.
    pub const WEIGHT_RANGE: std::ops::RangeInclusive<f64> = 0.01..=100.0;
    /// Placement labels a collector may declare, and their sizes.
    pub const MAX_LABELS: usize = 32;
    pub const MAX_LABEL_KEY: usize = 63;
    pub const MAX_LABEL_VALUE: usize = 255;

    /// Why this record may not be planned on, if it may not. Checked at a
    /// collector's start, and by the planner for records read from etcd.
    pub fn check(&self) -> Result<(), String> {
        if !Self::WEIGHT_RANGE.contains(&self.weight) {
            return Err(format!(
                "weight {} is outside {}..={}",
                self.weight,
                Self::WEIGHT_RANGE.start(),
                Self::WEIGHT_RANGE.end()
            ));
        }
        if self.labels.len() > Self::MAX_LABELS {
            return Err(format!("{} labels, at most {}", self.labels.len(), Self::MAX_LABELS));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > Self::MAX_LABEL_KEY || v.len() > Self::MAX_LABEL_VALUE {
                return Err(format!(
                    "label {:?}: keys 1 to {} bytes, values at most {}",
                    k.chars().take(80).collect::<String>(),
                    Self::MAX_LABEL_KEY,
                    Self::MAX_LABEL_VALUE
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub etcd: crate::lease::EtcdAccess,
    /// Key prefix, default `/kollector`.
    pub prefix: String,
    pub id: CollectorId,
    pub record: CollectorRecord,
    /// Lease TTL (whole seconds; etcd's minimum is about 2 s).
    pub ttl: Duration,
}

impl MembershipConfig {
    pub fn key(&self) -> String {
        Keys::new(&self.prefix).collector(self.id.as_str())
    }

    /// Fence this long before the lease would expire.
    pub fn margin(&self) -> Duration {
        lease::margin(self.ttl)
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
    /// Gave up for good (another live process holds this collector id).
    Failed {
        reason: String,
    },
}

/// Called to stop every monitor; resolves when their clients are closed.
pub type FenceFn = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Called with the instant until which the lease is surely alive and the
/// round-trip time, at registration and after every renewal (a collector
/// feeds its collect gate and its keepalive-latency metric with it).
pub type RenewFn = Box<lease::OnRenew>;

/// A running membership; dropping it does not revoke the lease, `leave` does.
pub struct Membership {
    state: watch::Receiver<MembershipState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Starts registering and keeping the lease alive in the background.
    pub fn start(config: MembershipConfig, fence: FenceFn, renewed: RenewFn) -> Membership {
        let (state_tx, state) = watch::channel(MembershipState::Joining);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(config, fence, renewed, state_tx, stop_rx));
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

/// How one registration attempt ended.
enum Registered {
    Ok(Box<Client>, i64, Instant),
    /// The key exists under another lease.
    Taken {
        holder: i64,
    },
}

/// Connects, grants a lease and creates the key on it if it is absent.
/// `own` holds this process's earlier leases (after a fence, or from an
/// attempt whose answer was lost): they are revoked first, since one of them
/// may still hold the key. The new lease is added to it until the key is ours.
async fn register(config: &MembershipConfig, own: &mut Vec<i64>) -> Result<Registered, CoordinationError> {
    let mut client = lease::connect(&config.etcd, config.ttl).await?;
    // Leases this process granted before (an earlier registration, or one
    // whose answer was lost after it committed) may still hold the key.
    // Forget one only once it is surely gone (etcd may be restarting).
    let mut kept = Vec::new();
    for old in own.drain(..) {
        if !lease::revoke(&mut client, old, config.ttl).await {
            kept.push(old);
        }
    }
    own.extend(kept);
    let (id, granted) = lease::grant(&mut client, config.ttl).await?;
    own.push(id);
    let value = serde_json::to_string(&config.record).map_err(|e| CoordinationError::Etcd(e.to_string()))?;
    let key = config.key();
    let txn = Txn::new()
        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(id)))])
        .or_else([TxnOp::get(key, None)]);
    let resp = timeout(lease::call_timeout(config.ttl), client.txn(txn))
        .await
        .map_err(|_| CoordinationError::Timeout("register"))??;
    if resp.succeeded() {
        own.retain(|l| *l != id);
        return Ok(Registered::Ok(Box::new(client), id, granted));
    }
    lease::revoke(&mut client, id, config.ttl).await;
    own.retain(|l| *l != id);
    let holder = resp
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
            _ => None,
        })
        .unwrap_or(0);
    Ok(Registered::Taken { holder })
}

async fn run(
    config: MembershipConfig,
    fence: FenceFn,
    renewed: RenewFn,
    state: watch::Sender<MembershipState>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = config.ttl;
    let mut retry = Duration::from_millis(200);
    // Leases of this process that may still exist: revoked before the next attempt.
    let mut own: Vec<i64> = Vec::new();
    // Every lease this process registered under (the latest 64): one that
    // holds the key again is ours, not a duplicate's. That happens when
    // etcd is restored from a backup taken while an earlier lease of ours
    // held the key (etcd restores leases too, with a fresh TTL).
    let mut ever: std::collections::VecDeque<i64> = std::collections::VecDeque::new();
    loop {
        // Register (again), retrying with backoff until etcd answers.
        let mut taken_since: Option<Instant> = None;
        let (mut client, lease_id, granted) = loop {
            if *stop.borrow() {
                let _ = state.send(MembershipState::Stopped);
                return;
            }
            let mine: Vec<i64> = own.clone();
            match register(&config, &mut own).await {
                Ok(Registered::Ok(client, id, granted)) => {
                    if ever.len() >= 64 {
                        ever.pop_front();
                    }
                    ever.push_back(id);
                    break (*client, id, granted);
                }
                Ok(Registered::Taken { holder }) if mine.contains(&holder) || ever.contains(&holder) => {
                    // Our own earlier lease (its revoke may have failed): it runs out.
                    if !own.contains(&holder) {
                        own.push(holder);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stop.changed() => {}
                    }
                }
                Ok(Registered::Taken { holder }) => {
                    let since = *taken_since.get_or_insert_with(Instant::now);
                    // A foreign lease still renewed after a whole TTL belongs
                    // to a live process (a crashed one's runs out by then).
                    if since.elapsed() > ttl + lease::call_timeout(ttl) {
                        let reason = format!(
                            "collector id {:?} is held by another live process (etcd lease {holder:x} at {}); \
                             give each collector its own --id",
                            config.id.as_str(),
                            config.key()
                        );
                        tracing::error!(collector = %config.id, "{reason}");
                        let _ = state.send(MembershipState::Failed { reason });
                        return;
                    }
                    tracing::warn!(
                        collector = %config.id,
                        "collector key is held by lease {holder:x}; waiting for it to expire (a crashed earlier run) or give up (another live process)"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => {}
                    }
                }
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
        tracing::info!(collector = %config.id, lease = lease_id, "registered in etcd");
        renewed(granted + ttl - lease::margin(ttl), granted.elapsed());
        let _ = state.send(MembershipState::Registered { lease: lease_id });

        match lease::keep_alive(&mut client, lease_id, granted, ttl, &mut stop, &*renewed).await {
            LeaseEnd::Stopped => {
                // Leaving cleanly: revoke so the manager reacts at once.
                lease::revoke(&mut client, lease_id, ttl).await;
                let _ = state.send(MembershipState::Stopped);
                return;
            }
            LeaseEnd::Lost(reason) => {
                own.push(lease_id);
                tracing::warn!(collector = %config.id, "fencing: {reason}; stopping every monitor");
                let _ = state.send(MembershipState::Fenced { reason });
                fence().await;
                tracing::info!(collector = %config.id, "fenced: every monitor stopped; registering again");
                let _ = state.send(MembershipState::Joining);
            }
        }
    }
}

/// Marks collector `id` draining under `lease` (so the mark goes with the
/// lease when the collector leaves), unless a drain mark already exists (an
/// operator's lasting `kollector collectors drain` is never replaced by a
/// lease-bound one). Returns whether this call wrote the mark.
pub async fn mark_draining(
    client: &mut etcd_client::Client,
    keys: &crate::keys::Keys,
    id: &kollector_core::CollectorId,
    lease: i64,
) -> Result<bool, CoordinationError> {
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
    let key = format!("{}{id}", keys.draining());
    let txn = Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        "leaving",
        Some(PutOptions::new().with_lease(lease)),
    )]);
    Ok(client.txn(txn).await?.succeeded())
}
