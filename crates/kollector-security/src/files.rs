//! Writing files that hold keys, tokens or certificates: never over an
//! existing file, never through a link, created with the given mode and
//! flushed before anyone is told they exist.

use std::io::Write as _;
use std::path::Path;

/// Creates `path` (it must not exist) with `mode` and writes `body` durably.
pub fn create_new(path: &Path, body: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()
}
