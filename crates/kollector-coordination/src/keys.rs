//! The etcd key layout. One place, so every reader and writer agrees.
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `<prefix>/collectors/<id>` | JSON `CollectorRecord` | the collector's lease |
//! | `<prefix>/monitors/<id>` | JSON `MonitorSpec` (desired state) | durable |
//! | `<prefix>/assignments/<id>` | JSON `Assignment` (`collector`, `epoch`) | durable, leader-written |
//! | `<prefix>/manager/election` | etcd election; value = leader's gRPC address | the leader's lease |
//! | `<prefix>/draining/<id>` | `1`: the collector gets no monitors | durable, until undone |
//! | `<prefix>/manager-keys/<lease hex>` | JSON `{"first": "k2"}`: the key the manager campaigning with that lease seals with (null: none) | that manager's campaign lease |
//! | `<prefix>/revoked/<id>` | JSON `{"lease": n}`: the lease the leader revoked | a lease of the collector's TTL + 1 s |

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/kollector";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_string() }
    }
    /// Every key of this cluster (what a manager's view watches).
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }
    pub fn collectors(&self) -> String {
        format!("{}/collectors/", self.prefix)
    }
    pub fn collector(&self, id: &str) -> String {
        format!("{}{id}", self.collectors())
    }
    pub fn monitors(&self) -> String {
        format!("{}/monitors/", self.prefix)
    }
    pub fn monitor(&self, id: &str) -> String {
        format!("{}{id}", self.monitors())
    }
    pub fn assignments(&self) -> String {
        format!("{}/assignments/", self.prefix)
    }
    pub fn assignment(&self, id: &str) -> String {
        format!("{}{id}", self.assignments())
    }
    /// Drain marks: a collector listed here keeps running but gets no monitors.
    pub fn draining(&self) -> String {
        format!("{}/draining/", self.prefix)
    }
    /// Each election candidate's sealing key, under its campaign lease: the
    /// leader re-seals secrets only once every candidate seals with the same key.
    pub fn manager_keys(&self) -> String {
        format!("{}/manager-keys/", self.prefix)
    }
    /// Revocation marks: the leader revoked this collector's lease (it did
    /// not answer); its monitors move when the mark expires.
    pub fn revoked(&self) -> String {
        format!("{}/revoked/", self.prefix)
    }
    pub fn election(&self) -> String {
        format!("{}/manager/election", self.prefix)
    }
    /// The id at the end of `key` under `dir` (one of the directory keys above).
    pub fn id_in<'a>(&self, dir: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(dir).filter(|id| !id.is_empty() && !id.contains('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("/kollector/");
        assert_eq!(k.collector("c1"), "/kollector/collectors/c1");
        assert_eq!(k.monitor("m"), "/kollector/monitors/m");
        assert_eq!(k.assignment("m"), "/kollector/assignments/m");
        assert_eq!(k.election(), "/kollector/manager/election");
        assert_eq!(k.id_in(&k.monitors(), "/kollector/monitors/orders"), Some("orders"));
        assert_eq!(k.id_in(&k.monitors(), "/kollector/monitors/"), None);
    }
}
