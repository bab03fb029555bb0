//! The standalone node's desired state on disk: every monitor, so that
//! monitors created, changed or deleted through the API survive a restart.
//!
//! Crash safety comes from never writing the file in place: the new state is
//! written to a temporary file in the same directory, flushed to disk, and
//! renamed over the old one (rename is atomic on POSIX file systems), then
//! the directory is flushed so the rename itself is durable. A crash at any
//! moment leaves either the previous file or the new one, never a torn mix.
//! A write is acknowledged (the API call answers) only after that.
//!
//! The file holds specs as the API validated them, secrets included (like
//! etcd does in cluster mode), so it is created readable by its owner only.
//! A file that exists but cannot be read is an error at start: it is never
//! silently replaced by an empty state.

use std::io::Write;
use std::path::{Path, PathBuf};

use kollector_core::MonitorSpec;
use serde::{Deserialize, Serialize};

/// Bumped when the layout changes incompatibly.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state file {path} is not readable kollector state: {message}")]
    Corrupt { path: String, message: String },
}

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    monitors: Vec<MonitorSpec>,
}

/// Where the standalone node keeps its monitors.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Opens `path` and reads the monitors saved there (none if the file
    /// does not exist yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<(StateFile, Vec<MonitorSpec>), StateError> {
        let path = path.into();
        let shown = path.display().to_string();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((StateFile { path }, Vec::new())),
            Err(source) => return Err(StateError::Io { path: shown, source }),
        };
        let saved: Saved = serde_json::from_slice(&text)
            .map_err(|e| StateError::Corrupt { path: shown.clone(), message: e.to_string() })?;
        if saved.format != FORMAT {
            return Err(StateError::Corrupt {
                path: shown,
                message: format!("format {} (this kollector reads format {FORMAT})", saved.format),
            });
        }
        Ok((StateFile { path }, saved.monitors))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the saved monitors with `monitors`, durably and atomically.
    pub fn save(&self, monitors: &[MonitorSpec]) -> Result<(), StateError> {
        let shown = self.path.display().to_string();
        let io = |source| StateError::Io { path: shown.clone(), source };
        let body = serde_json::to_vec_pretty(&Saved { format: FORMAT, monitors: monitors.to_vec() })
            .map_err(|e| StateError::Corrupt { path: shown.clone(), message: e.to_string() })?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The monitors a standalone node starts with: the saved ones, with the
/// config file's on top. A monitor in the config file is (re)applied at
/// every start: for its id the file wins (its generation moves on if the
/// file changed it). Monitors created through the API are kept. So a config
/// monitor deleted through the API comes back at the next start unless it is
/// removed from the file too.
pub fn seed(config: Vec<MonitorSpec>, saved: Vec<MonitorSpec>) -> Vec<MonitorSpec> {
    let mut by_id: std::collections::BTreeMap<_, MonitorSpec> = saved.into_iter().map(|s| (s.id.clone(), s)).collect();
    for mut spec in config {
        match by_id.get(&spec.id) {
            Some(old) if MonitorSpec { generation: old.generation, ..spec.clone() } == *old => {}
            Some(old) => {
                spec.generation = old.generation + 1;
                by_id.insert(spec.id.clone(), spec);
            }
            None => {
                by_id.insert(spec.id.clone(), spec);
            }
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kollector_core::MonitorInput;

    fn spec(id: &str) -> MonitorSpec {
        MonitorInput { id: id.into(), bootstrap: vec!["h:1".into()], ..Default::default() }.validate(1).unwrap()
    }

    #[test]
    fn the_config_file_wins_for_its_ids_and_api_monitors_are_kept() {
        let mut changed = spec("file");
        changed.interval = std::time::Duration::from_secs(7);
        let mut saved_file = spec("file");
        saved_file.generation = 4;
        let saved = vec![spec("api"), saved_file.clone()];
        let same = seed(vec![spec("file")], saved.clone());
        assert_eq!(same, saved, "an unchanged config entry keeps the saved generation (sorted by id)");
        let moved = seed(vec![changed.clone()], saved);
        let file = moved.iter().find(|s| s.id.as_str() == "file").unwrap();
        assert_eq!((file.interval, file.generation), (changed.interval, 5));
        assert!(moved.iter().any(|s| s.id.as_str() == "api"));
    }

    #[test]
    fn saves_and_reads_back_and_refuses_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (state, none) = StateFile::open(&path).unwrap();
        assert!(none.is_empty());
        state.save(&[spec("a"), spec("b")]).unwrap();
        let (_, back) = StateFile::open(&path).unwrap();
        assert_eq!(back.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, b"{\"format\": 1, \"monitors\": [").unwrap();
        assert!(matches!(StateFile::open(&path), Err(StateError::Corrupt { .. })));
    }
}
