//! The standalone node's desired state on disk: the monitors created or
//! changed through the API, so that they survive a restart. (Monitors of the
//! config file are not saved here: the config file manages them, and
//! removing one from the file stops it at the next start.)
//!
//! Crash safety comes from never writing the file in place: the new state is
//! written to a fresh temporary file in the same directory, flushed to disk,
//! and renamed over the old one (rename is atomic on POSIX file systems),
//! then the directory is flushed so the rename itself is durable. A crash at
//! any moment leaves either the previous file or the new one, never a torn
//! mix. A change is acknowledged (the API call answers) only after that.
//!
//! One process at a time: the file's lock (`<file>.lock`, an exclusive
//! `flock` held for the life of the process) refuses a second node started
//! on the same state. The file holds specs as the API validated them, with
//! every secret sealed by the node's secret key (`kollector_security::sealing`),
//! and is readable by its owner only. A file that
//! exists but cannot be read is an error at start: it is never silently
//! replaced by an empty state.

use std::io::Write;
use std::path::{Path, PathBuf};

use kollector_core::MonitorSpec;
use kollector_security::sealing::{open_spec, seal_spec};
use kollector_security::{Keyring, SealError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Bumped when the layout changes incompatibly.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state file {path} is not readable kollector state: {message}")]
    Corrupt { path: String, message: String },
    #[error("state file {path} is in use by another kollector process (its lock {lock} is held)")]
    InUse { path: String, lock: String },
    #[error("state file {path}: {source}")]
    Secret { path: String, source: SealError },
}

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    format: u32,
    /// The store's revision: generations given out so far (they only grow).
    #[serde(default)]
    pub revision: u64,
    pub monitors: Vec<MonitorSpec>,
}

/// Where the standalone node keeps its monitors; holds the file's lock.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: std::fs::File,
    secrets: Option<Arc<Keyring>>,
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Takes an exclusive, non-blocking `flock` on `file`. Written with libc
/// rather than a crate: one call, and the lock must live exactly as long as
/// the open file (it is released when the process exits, even on a crash).
fn lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock(2) on a valid, open descriptor; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

impl StateFile {
    /// Locks and opens `path`, and reads what is saved there (nothing if
    /// the file does not exist yet).
    /// `secrets` seals the secrets saved and opens those read.
    pub fn open(path: impl Into<PathBuf>, secrets: Option<Arc<Keyring>>) -> Result<(StateFile, Saved), StateError> {
        let path = path.into();
        let shown = path.display().to_string();
        let io = |source| StateError::Io { path: shown.clone(), source };
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = std::fs::OpenOptions::new().create(true).append(true).open(&lock_path).map_err(io)?;
        if !lock_exclusive(&lock).map_err(io)? {
            return Err(StateError::InUse { path: shown, lock: lock_path.display().to_string() });
        }
        let saved = match std::fs::read(&path) {
            Ok(text) => {
                let saved: Saved = serde_json::from_slice(&text)
                    .map_err(|e| StateError::Corrupt { path: shown.clone(), message: e.to_string() })?;
                if saved.format != FORMAT {
                    return Err(StateError::Corrupt {
                        path: shown,
                        message: format!("format {} (this kollector reads format {FORMAT})", saved.format),
                    });
                }
                let monitors = saved
                    .monitors
                    .into_iter()
                    .map(|m| open_spec(secrets.as_deref(), m))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| StateError::Secret { path: shown.clone(), source })?;
                Saved { monitors, ..saved }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!("no state file at {shown} yet: starting from the config file alone");
                Saved { format: FORMAT, ..Saved::default() }
            }
            Err(source) => return Err(StateError::Io { path: shown, source }),
        };
        Ok((StateFile { path, _lock: lock, secrets }, saved))
    }

    /// Replaces what is saved, durably and atomically.
    pub fn save(&self, revision: u64, monitors: &[MonitorSpec]) -> Result<(), StateError> {
        let shown = self.path.display().to_string();
        let io = |source| StateError::Io { path: shown.clone(), source };
        let monitors = monitors
            .iter()
            .map(|m| seal_spec(self.secrets.as_deref(), m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StateError::Secret { path: shown.clone(), source })?;
        let body = serde_json::to_vec(&Saved { format: FORMAT, revision, monitors })
            .map_err(|e| StateError::Corrupt { path: shown.clone(), message: e.to_string() })?;
        write_atomically(&self.path, &body).map_err(io)
    }
}

/// Replaces `path` with `body`: a fresh file in the same directory (0600,
/// never following a link), flushed, renamed over the old one; then the
/// directory is flushed (a failure there is logged: the new file is in
/// place whatever happens).
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = dir_of(path);
    let mut tmp = tempfile::Builder::new().prefix(".kollector-state").tempfile_in(&dir)?;
    tmp.write_all(body)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
        tracing::warn!("{}: flushing its directory failed: {e}", path.display());
    }
    Ok(())
}

/// The standalone node's offset histories (lag in seconds and verdicts
/// continue across a restart): written at shutdown, read at start. Not
/// secret, not vital: a file that cannot be read is logged and ignored.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedHistories {
    format: u32,
    pub monitors: std::collections::BTreeMap<kollector_core::MonitorId, kollector_core::history::MonitorHistory>,
}

impl SavedHistories {
    pub fn new(
        monitors: std::collections::BTreeMap<kollector_core::MonitorId, kollector_core::history::MonitorHistory>,
    ) -> Self {
        SavedHistories { format: FORMAT, monitors }
    }

    pub fn load(path: &Path) -> SavedHistories {
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<SavedHistories>(&bytes) {
                Ok(h) if h.format == FORMAT => h,
                Ok(h) => {
                    tracing::warn!("history file {} has format {}; starting without history", path.display(), h.format);
                    SavedHistories::default()
                }
                Err(e) => {
                    tracing::warn!("history file {} is unreadable ({e}); starting without history", path.display());
                    SavedHistories::default()
                }
            },
            Err(_) => SavedHistories::default(),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomically(path, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kollector_core::MonitorInput;

    fn spec(id: &str) -> MonitorSpec {
        MonitorInput { id: id.into(), bootstrap: vec!["h:1".into()], ..Default::default() }.validate(1).unwrap()
    }

    #[test]
    fn saves_and_reads_back_refuses_a_broken_file_and_a_second_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        {
            let (state, none) = StateFile::open(&path, None).unwrap();
            assert!(none.monitors.is_empty());
            assert!(matches!(StateFile::open(&path, None), Err(StateError::InUse { .. })), "one process at a time");
            state.save(7, &[spec("a"), spec("b")]).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
        let (_, back) = StateFile::open(&path, None).unwrap();
        assert_eq!(back.revision, 7);
        assert_eq!(back.monitors.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        drop(back);
        std::fs::write(&path, b"{\"format\": 1, \"monitors\": [").unwrap();
        assert!(matches!(StateFile::open(&path, None), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn secrets_are_sealed_on_disk_and_open_only_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let keys = Arc::new(Keyring::parse("k", &kollector_security::sealing::new_key_line("k1").unwrap()).unwrap());
        let mut input = MonitorInput { id: "s".into(), bootstrap: vec!["h:1".into()], ..Default::default() };
        input.sasl = Some(kollector_core::SaslInput {
            mechanism: "PLAIN".into(),
            username: "u".into(),
            password: Some(kollector_core::Secret::new("pa55-in-clear?")),
            password_env: None,
            ..Default::default()
        });
        let secret_spec = input.validate(1).unwrap();
        {
            let (state, _) = StateFile::open(&path, Some(keys.clone())).unwrap();
            state.save(1, std::slice::from_ref(&secret_spec)).unwrap();
        }
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains("pa55-in-clear?") && raw.contains("kollector-sealed:v1:k1:"), "{raw}");
        {
            let (_, back) = StateFile::open(&path, Some(keys)).unwrap();
            assert_eq!(back.monitors, vec![secret_spec.clone()]);
        }
        assert!(matches!(StateFile::open(&path, None), Err(StateError::Secret { .. })));
        // Without a key a secret is never written in clear: the save is refused.
        std::fs::remove_file(&path).unwrap();
        let (state, _) = StateFile::open(&path, None).unwrap();
        assert!(matches!(state.save(2, &[secret_spec]), Err(StateError::Secret { .. })));
        assert!(!path.exists());
    }
}
