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

pub struct ApiGuard {
    access: Access,
    probes: Mutex<RateLimit>,
}

impl Default for ApiGuard {
    fn default() -> Self {
        ApiGuard::new(Access::Open, DEFAULT_PROBES_PER_MINUTE)
    }
}

impl ApiGuard {
    pub fn new(access: Access, probes_per_minute: u32) -> ApiGuard {
        let burst = probes_per_minute.clamp(1, 10);
        ApiGuard { access, probes: Mutex::new(RateLimit::per_minute(probes_per_minute, burst)) }
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

    /// A probe may start now, or RESOURCE_EXHAUSTED.
    pub fn probe_slot(&self) -> Result<(), Status> {
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.try_take(Instant::now()).map_err(|wait| {
            Status::resource_exhausted(format!(
                "too many probes; try again in {}s (--probe-rate)",
                wait.as_secs().max(1)
            ))
        })
    }
}
