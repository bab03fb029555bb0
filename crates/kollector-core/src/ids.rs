//! Identifiers and fencing counters.
//!
//! A monitor id appears in etcd keys, Prometheus label values and CLI output,
//! so it is restricted to a small, unambiguous alphabet. `Generation` counts
//! changes to one monitor's spec; `Epoch` is the etcd revision of an
//! assignment (cluster mode). Both only grow, which is what fencing relies on.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A user-given value as error messages echo it: quoted, and cut to 80
/// characters, so a 1 MB id does not come back as a 1 MB error (gRPC sends
/// the message in a header, which has its own size limit).
pub fn shown(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// Identifies a monitor: 1–128 characters of `[A-Za-z0-9._-]`, starting with
/// a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MonitorId(String);

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long; at most 128 are allowed")]
    TooLong(usize),
    #[error("must start with a letter or digit")]
    BadStart,
    #[error("contains {0:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar(char),
}

fn check_id(s: &str) -> Result<(), IdError> {
    let first = s.chars().next().ok_or(IdError::Empty)?;
    let len = s.chars().count();
    if len > 128 {
        return Err(IdError::TooLong(len));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::BadStart);
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(IdError::BadChar(c));
    }
    Ok(())
}

impl MonitorId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check_id(&s)?;
        Ok(MonitorId(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MonitorId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        MonitorId::new(s)
    }
}
impl From<MonitorId> for String {
    fn from(id: MonitorId) -> String {
        id.0
    }
}
impl fmt::Display for MonitorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies a collector node (cluster mode); same alphabet as [`MonitorId`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CollectorId(String);

impl CollectorId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        check_id(&s)?;
        Ok(CollectorId(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for CollectorId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        CollectorId::new(s)
    }
}
impl From<CollectorId> for String {
    fn from(id: CollectorId) -> String {
        id.0
    }
}
impl fmt::Display for CollectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many times a monitor's spec has changed; bumped on every update.
pub type Generation = u64;

/// The etcd revision at which an assignment was written (cluster mode); 0 in
/// standalone mode, where there is one owner and nothing to fence.
pub type Epoch = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for ok in ["orders-prod", "a", "A.b_c-1", &"x".repeat(128)] {
            assert!(MonitorId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_ids_with_reason() {
        assert_eq!(MonitorId::new(""), Err(IdError::Empty));
        assert_eq!(MonitorId::new("-x"), Err(IdError::BadStart));
        assert_eq!(MonitorId::new("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(MonitorId::new("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(MonitorId::new("x".repeat(129)), Err(IdError::TooLong(129)));
    }

    #[test]
    fn serde_rejects_bad_id() {
        let r: Result<MonitorId, _> = serde_json::from_str("\"a/b\"");
        assert!(r.is_err());
    }
}
