//! Everything kollector coordinates through etcd, in one place.
//!
//! - `keys.rs`: the key layout under the prefix (default `/kollector`).
//! - `lease.rs`: connecting, granting a lease and keeping it alive with
//!   every call bounded by a timeout; reports when the lease is lost.
//! - `membership.rs`: a collector's lease-bound key and self-fencing.
//! - `election.rs`: manager leader election (etcd's election API), the
//!   leader term, and writes guarded by the leader key.
//!
//! etcd guarantees what the rest relies on: a key bound to a lease vanishes
//! when the lease expires; a transaction that compares the leader key's
//! create revision fails once that leader is deposed. Leases alone give no
//! mutual exclusion (a paused holder does not know it lost), so collectors
//! fence themselves early and every write or command carries a revision.

pub mod election;
pub mod keys;
pub mod lease;
pub mod membership;

/// Why an etcd operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinationError {
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("etcd did not answer {0} in time")]
    Timeout(&'static str),
    #[error("not the leader (the leader key changed): write refused")]
    NotLeader,
    #[error("bad data in etcd at {key}: {message}")]
    BadData { key: String, message: String },
}

impl From<etcd_client::Error> for CoordinationError {
    fn from(e: etcd_client::Error) -> Self {
        CoordinationError::Etcd(e.to_string())
    }
}
