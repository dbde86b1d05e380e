//! Writing a definition file (a domain's, a pool's, a network's) so that a
//! crash or a full disk leaves the old file or the new one, never half of
//! either: the bytes go to a private temporary beside it (mode 0600, never
//! through a symlink planted there), reach the disk, and are renamed over
//! the old file in one step.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Which step failed, on which file.
#[derive(Debug, thiserror::Error)]
#[error("{what} '{}': {source}", path.display())]
pub struct WriteError {
    /// The step ("cannot create", "cannot write", ...).
    pub what: &'static str,
    /// The file it failed on.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` through the temporary `tmp` (in the same directory).
pub fn write(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    fn fail(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WriteError {
        let path = path.to_owned();
        move |source| WriteError { what, path, source }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(fail("cannot create", tmp))?;
    f.write_all(bytes).map_err(fail("cannot write", tmp))?;
    f.sync_all().map_err(fail("cannot sync", tmp))?;
    std::fs::rename(tmp, path).map_err(fail("cannot rename into", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_bytes_replace_the_old_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tmp) = (dir.path().join("a.xml"), dir.path().join(".a.xml.new"));
        std::fs::write(&path, "old").unwrap();
        write(&path, &tmp, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_symlink_planted_as_the_temporary_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tmp, target) =
            (dir.path().join("a.xml"), dir.path().join(".a.xml.new"), dir.path().join("elsewhere"));
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        let e = write(&path, &tmp, b"new").unwrap_err();
        assert_eq!(e.what, "cannot create");
        assert!(!target.exists() && !path.exists());
    }
}
