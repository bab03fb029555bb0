//! Who may call a ManagerService method: the check every method makes first.
//!
//! [`ApiGuard`] holds the node's access rule (open, for standalone on
//! loopback and `--insecure`; or a tokens file) and the probe rate limit.
//! The tokens file is re-read when its modification time changes, so a
//! token is revoked by deleting its entry, without a restart; a file that no
//! longer parses keeps the previous tokens and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tonic::{Request, Status};

use crate::rate::RateLimit;
use crate::tokens::{Role, TokenBook, TokenError};

/// Default probe budget per manager: a probe opens a Kafka client.
pub const DEFAULT_PROBES_PER_MINUTE: u32 = 30;

pub struct TokenFile {
    path: PathBuf,
    state: Mutex<(Option<SystemTime>, Arc<TokenBook>)>,
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<TokenFile, TokenError> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let book = TokenBook::load(path)?;
        Ok(TokenFile { path: path.to_path_buf(), state: Mutex::new((modified, Arc::new(book))) })
    }

    /// The tokens in force. A file that was changed is read again; one
    /// that no longer parses keeps the previous tokens (an editing slip
    /// must not lock everyone out), but one that was removed or made
    /// unreadable revokes every token.
    pub fn current(&self) -> Arc<TokenBook> {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if modified != state.0 {
            state.0 = modified;
            match TokenBook::load(&self.path) {
                Ok(book) => {
                    tracing::info!(path = %self.path.display(), tokens = book.len(), "tokens file reloaded");
                    state.1 = Arc::new(book);
                }
                Err(e @ TokenError::Read { .. }) => {
                    tracing::error!("{e}; every token is refused until it can be read");
                    state.1 = Arc::new(TokenBook::default());
                }
                Err(e) => tracing::error!("{e}; keeping the previous tokens"),
            }
        }
        state.1.clone()
    }
}

pub enum Access {
    /// Every call allowed (standalone on loopback, or `--insecure`).
    Open,
    Tokens(TokenFile),
}

/// Most probes running at once on one node: each holds a Kafka client and a
/// blocking thread for up to [`MAX_PROBE_TIMEOUT`].
pub const MAX_CONCURRENT_PROBES: usize = 4;
/// Longest timeout a probe may ask for.
pub const MAX_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct ApiGuard {
    access: Access,
    probes: Mutex<RateLimit>,
    running: Arc<std::sync::atomic::AtomicUsize>,
}

/// A probe's place among the running ones; freed on drop.
pub struct ProbeSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Default for ApiGuard {
    fn default() -> Self {
        ApiGuard::new(Access::Open, DEFAULT_PROBES_PER_MINUTE)
    }
}

impl ApiGuard {
    pub fn new(access: Access, probes_per_minute: u32) -> ApiGuard {
        let burst = probes_per_minute.clamp(1, 10);
        ApiGuard {
            access,
            probes: Mutex::new(RateLimit::per_minute(probes_per_minute, burst)),
            running: Arc::default(),
        }
    }

    /// Refuses the call unless its token carries `needed`. `method` names
    /// the call in the log line of a refusal.
    pub fn check<T>(&self, req: &Request<T>, needed: Role, method: &str) -> Result<(), Status> {
        let Access::Tokens(file) = &self.access else { return Ok(()) };
        let header = req.metadata().get("authorization").map(|v| v.to_str().unwrap_or(""));
        let book = file.current();
        match book.check(header, needed, SystemTime::now()) {
            Ok(name) => {
                if needed == Role::Admin {
                    tracing::info!(caller = name, method, "admin call");
                }
                Ok(())
            }
            Err(refusal) => {
                tracing::warn!(method, "refused: {refusal}");
                Err(refusal.status())
            }
        }
    }

    /// A probe may start now (hold the slot while it runs), or
    /// RESOURCE_EXHAUSTED: over the rate, or too many running.
    pub fn probe_slot(&self) -> Result<ProbeSlot, Status> {
        use std::sync::atomic::Ordering;
        if self.running.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT_PROBES {
            self.running.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted(format!(
                "{MAX_CONCURRENT_PROBES} probes are running on this node; try again when one ends"
            )));
        }
        let slot = ProbeSlot(self.running.clone());
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.try_take(Instant::now()).map_err(|wait| {
            Status::resource_exhausted(format!(
                "too many probes; try again in {}s (--probe-rate)",
                wait.as_secs().max(1)
            ))
        })?;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{entry_toml, hash_token, new_token};

    #[test]
    fn a_removed_tokens_file_revokes_every_token_and_a_broken_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let token = new_token().unwrap();
        std::fs::write(&path, entry_toml("ops", Role::Admin, &hash_token(&token), None)).unwrap();
        let file = TokenFile::load(&path).unwrap();
        let header = format!("Bearer {token}");
        let ok = |f: &TokenFile| f.current().check(Some(&header), Role::Admin, SystemTime::now()).is_ok();
        assert!(ok(&file));
        // A slip while editing (mtime changes): the previous tokens stay.
        std::fs::write(&path, "[[token]]\nname = ").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert!(ok(&file));
        std::fs::remove_file(&path).unwrap();
        assert!(!ok(&file), "a removed tokens file must revoke");
    }

    #[test]
    fn probes_are_limited_in_rate_and_in_number_running() {
        let guard = ApiGuard::new(Access::Open, 600);
        let slots: Vec<ProbeSlot> = (0..MAX_CONCURRENT_PROBES).map(|_| guard.probe_slot().unwrap()).collect();
        assert_eq!(guard.probe_slot().err().map(|s| s.code()), Some(tonic::Code::ResourceExhausted));
        drop(slots);
        assert!(guard.probe_slot().is_ok());
    }
}
