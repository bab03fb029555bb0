//! Manager leader election through etcd's election API.
//!
//! Every manager campaigns on `<prefix>/manager/election` with its gRPC
//! address as the value, under its own lease. The winner's leader key has a
//! create revision that only grows from one leader to the next: that is the
//! **leader term**, sent with every command and checked by collectors. Writes
//! only the leader may make go through [`guarded_txn`], which compares the
//! leader key's create revision, so a deposed leader (paused, partitioned)
//! cannot write even if it still believes it leads.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::keys::Keys;
use crate::lease::{self, LeaseEnd};
use crate::CoordinationError;

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub etcd: crate::lease::EtcdAccess,
    pub prefix: String,
    /// Published as the election value: where the leader serves gRPC.
    pub address: String,
    /// The campaign lease's TTL: how long a dead leader holds the seat.
    pub ttl: Duration,
    /// Published at `<prefix>/manager-keys/<campaign lease, hex>` under the
    /// campaign's own lease, so each candidate's announcement lives and
    /// dies with its candidacy (managers announce the key they seal with).
    pub announce: Option<String>,
}

/// Proof of leadership: the leader key and its create revision (the term).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderToken {
    pub key: Vec<u8>,
    pub term: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    Follower,
    Leader(LeaderToken),
    Stopped,
}

/// A running candidacy.
pub struct Election {
    state: watch::Receiver<Leadership>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    pub fn start(config: ElectionConfig) -> Election {
        let (state_tx, state) = watch::channel(Leadership::Follower);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(config, state_tx, stop_rx));
        Election { state, stop, task }
    }

    pub fn state(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// Stops at once without resigning or revoking, as a crash would: the
    /// seat stays taken until the lease expires at etcd.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Resigns (if leading) and stops campaigning.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(config: ElectionConfig, state: watch::Sender<Leadership>, mut stop: watch::Receiver<bool>) {
    let keys = Keys::new(&config.prefix);
    let ttl = config.ttl;
    let mut retry = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            let _ = state.send(Leadership::Stopped);
            return;
        }
        let session = async {
            let mut client = lease::connect(&config.etcd, ttl).await?;
            // The campaign blocks while another leads, so it goes over a
            // connection without a request timeout (with one, a standby
            // campaigned again every call bound, rewriting its keys: etcd
            // writes, and events for every watcher). Made before the lease,
            // so a failure here leaves nothing behind.
            let campaigner = lease::connect_for_blocking_calls(&config.etcd, ttl).await?;
            let (id, granted) = lease::grant(&mut client, ttl).await?;
            if let Some(value) = &config.announce {
                let key = format!("{}{id:x}", keys.manager_keys());
                let put = client.put(key, value.clone(), Some(etcd_client::PutOptions::new().with_lease(id)));
                timeout(lease::call_timeout(ttl), put).await.map_err(|_| CoordinationError::Timeout("announce"))??;
            }
            Ok::<_, CoordinationError>((client, campaigner, id, granted))
        };
        let (mut client, mut campaigner, lease_id, granted) = match session.await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("election: cannot reach etcd: {e}; retrying in {retry:?}");
                back_off(&mut retry, ttl, &mut stop).await;
                continue;
            }
        };

        // Campaign while keeping the lease alive.
        let campaign = campaigner.campaign(keys.election(), config.address.clone(), lease_id);
        let won = tokio::select! {
            r = campaign => r.map_err(CoordinationError::from).and_then(|resp| {
                resp.leader()
                    .map(|l| LeaderToken { key: l.key().to_vec(), term: l.rev() })
                    .ok_or_else(|| CoordinationError::Etcd("campaign returned no leader key".into()))
            }),
            end = lease::keep_alive(&mut client, lease_id, granted, ttl, &mut stop, &|_, _| {}) => match end {
                LeaseEnd::Stopped => {
                    lease::revoke(&mut client, lease_id, ttl).await;
                    let _ = state.send(Leadership::Stopped);
                    return;
                }
                LeaseEnd::Lost(reason) => Err(CoordinationError::Etcd(format!("campaign lease lost: {reason}"))),
            },
        };
        let token = match won {
            Ok(t) => t,
            Err(e) => {
                // Not at once: a member without a leader refuses every
                // campaign, and each attempt writes (a lease, a key).
                tracing::warn!("election: {e}; campaigning again in {retry:?}");
                lease::revoke(&mut client, lease_id, ttl).await;
                back_off(&mut retry, ttl, &mut stop).await;
                continue;
            }
        };
        retry = Duration::from_millis(200);
        tracing::info!(term = token.term, address = %config.address, "elected leader");
        let _ = state.send(Leadership::Leader(token.clone()));
        // The lease was valid when the campaign's write landed but may be near
        // expiry: renew at once (the first keepalive must succeed within one call).
        let must_renew_by = Instant::now() - ttl + lease::margin(ttl) + lease::call_timeout(ttl);
        match lease::keep_alive(&mut client, lease_id, must_renew_by, ttl, &mut stop, &|_, _| {}).await {
            LeaseEnd::Stopped => {
                let _ = timeout(
                    lease::call_timeout(ttl),
                    client.resign(Some(
                        etcd_client::ResignOptions::new().with_leader(
                            etcd_client::LeaderKey::new()
                                .with_name(keys.election())
                                .with_key(token.key.clone())
                                .with_rev(token.term)
                                .with_lease(lease_id),
                        ),
                    )),
                )
                .await;
                lease::revoke(&mut client, lease_id, ttl).await;
                let _ = state.send(Leadership::Stopped);
                return;
            }
            LeaseEnd::Lost(reason) => {
                tracing::warn!(term = token.term, "stepping down: {reason}");
                let _ = state.send(Leadership::Follower);
                // Give the seat up now if etcd can still be reached (the
                // keepalives failed, the lease may not have): otherwise no
                // manager leads until the lease runs out at etcd.
                lease::revoke(&mut client, lease_id, ttl).await;
            }
        }
    }
}

/// Waits `retry` (less if told to stop), then doubles it, up to a third of
/// the TTL.
async fn back_off(retry: &mut Duration, ttl: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(*retry) => {}
        _ = stop.changed() => {}
    }
    *retry = (*retry * 2).min(ttl / 3);
}

/// Runs `ops` only if `token`'s leader key still exists with its create
/// revision. Returns the revision of the write (the new epoch).
pub async fn guarded_txn(client: &mut Client, token: &LeaderToken, ops: Vec<TxnOp>) -> Result<i64, CoordinationError> {
    let txn =
        Txn::new().when([Compare::create_revision(token.key.clone(), CompareOp::Equal, token.term)]).and_then(ops);
    let resp = client.txn(txn).await?;
    if !resp.succeeded() {
        return Err(CoordinationError::NotLeader);
    }
    Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
}

/// Runs `ops` only if `token` still leads and every one of `also` holds;
/// Ok(None) if one of `also` failed (the leader key is checked apart, so
/// a deposed leader still reads [`CoordinationError::NotLeader`]).
pub async fn guarded_txn_if(
    client: &mut Client,
    token: &LeaderToken,
    also: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> Result<Option<i64>, CoordinationError> {
    let mut compares = vec![Compare::create_revision(token.key.clone(), CompareOp::Equal, token.term)];
    compares.extend(also);
    let resp = client.txn(Txn::new().when(compares).and_then(ops)).await?;
    if resp.succeeded() {
        return Ok(Some(resp.header().map(|h| h.revision()).unwrap_or_default()));
    }
    if confirm_leader(client, token).await? {
        Ok(None)
    } else {
        Err(CoordinationError::NotLeader)
    }
}

/// Whether `token`'s leader key still exists with its create revision (the
/// reconciler asks before each batch of commands).
pub async fn confirm_leader(client: &mut Client, token: &LeaderToken) -> Result<bool, CoordinationError> {
    let resp = client.get(token.key.clone(), None).await?;
    Ok(resp.kvs().first().is_some_and(|kv| kv.create_revision() == token.term))
}

/// The current leader's address and term, if there is a leader.
pub async fn current_leader(client: &mut Client, keys: &Keys) -> Result<Option<(String, i64)>, CoordinationError> {
    Ok(current_leader_at(client, keys).await?.0)
}

/// [`current_leader`], and etcd's revision at the time of the answer (0
/// if unknown): collectors compare it with the revisions their fencing
/// tokens carried to notice an etcd restored from an older backup.
pub async fn current_leader_at(
    client: &mut Client,
    keys: &Keys,
) -> Result<(Option<(String, i64)>, i64), CoordinationError> {
    match client.leader(keys.election()).await {
        Ok(resp) => {
            let revision = resp.header().map_or(0, |h| h.revision());
            let leader = resp.kv().map(|kv| (kv.value_str().unwrap_or_default().to_string(), kv.create_revision()));
            Ok((leader, revision))
        }
        // etcd answers "election: no leader" as an error (without a header).
        Err(e) if e.to_string().contains("no leader") => Ok((None, 0)),
        Err(e) => Err(e.into()),
    }
}
