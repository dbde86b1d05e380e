//! Persistent domain definitions on disk: `<dir>/NAME.xml`, and autostart
//! links in `<dir>/autostart/NAME.xml`, as libvirt lays them out.
//!
//! Writes are atomic (temporary file, fsync, rename, fsync of the directory),
//! so a crash leaves the old definition or the new one, never half of either.
//! A file that does not parse is reported and left alone, never deleted.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::domain::{self, DomainDef, xml::MAX_XML_BYTES};

/// Most definition files read at start-up.
const MAX_FILES: usize = 16_384;

/// Reads a state or definition file, at most one byte past the XML limit
/// (so an oversized file fails to parse rather than filling memory). Opened
/// non-blocking and refused unless a regular file, so that a FIFO left in the
/// directory cannot stop the broker's only thread.
pub fn read_bounded(path: &Path) -> std::io::Result<String> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_XML_BYTES as u64 + 1).read_to_string(&mut text)?;
    Ok(text)
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A loaded definition and whether it autostarts.
pub struct Stored {
    /// The definition.
    pub def: DomainDef,
    /// Autostart link present.
    pub autostart: bool,
}

/// The directory of persistent definitions.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { what, path: path.to_owned(), source }
}

impl Store {
    /// A store in `dir`, created (mode 0700) if missing.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("autostart"))
            .map_err(io("cannot create", dir))?;
        Ok(Store { dir: dir.to_owned() })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.xml"))
    }

    fn link(&self, name: &str) -> PathBuf {
        self.dir.join("autostart").join(format!("{name}.xml"))
    }

    /// Every definition that parses; the others are logged and skipped.
    pub fn load_all(&self) -> Vec<Stored> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten().take(MAX_FILES) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "xml") || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match self.load_one(&path) {
                Ok(def) => {
                    let autostart = self.link(&def.name).symlink_metadata().is_ok();
                    out.push(Stored { def, autostart });
                }
                Err(e) => log::error!("skipping domain definition {}: {e}", path.display()),
            }
        }
        out
    }

    fn load_one(&self, path: &Path) -> Result<DomainDef, String> {
        let text = read_bounded(path).map_err(|e| e.to_string())?;
        let (def, dropped) = domain::parse(&text, false).map_err(|e| e.to_string())?;
        if !dropped.is_empty() {
            log::warn!("{}: ignoring {}", path.display(), dropped.join(", "));
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != def.name {
            return Err(format!("file name does not match domain name '{}'", def.name));
        }
        Ok(def)
    }

    /// Writes `def` atomically.
    pub fn save(&self, def: &DomainDef) -> Result<(), StoreError> {
        let path = self.file(&def.name);
        let tmp = self.dir.join(format!(".{}.xml.new", def.name));
        super::atomic::write(&path, &tmp, def.to_xml().as_bytes()).map_err(|e| io(e.what, &e.path)(e.source))?;
        self.sync_dir()
    }

    /// Removes the definition and its autostart link.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let _ = std::fs::remove_file(self.link(name));
        let path = self.file(name);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot remove", &path)(e)),
        }
    }

    /// Creates or removes the autostart link.
    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), StoreError> {
        let link = self.link(name);
        let _ = std::fs::remove_file(&link);
        if on {
            std::os::unix::fs::symlink(self.file(name), &link).map_err(io("cannot create", &link))?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("cannot sync", &self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_in_the_store_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("vm.xml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_bounded(&fifo).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let file = dir.path().join("ok.xml");
        std::fs::write(&file, "<domain/>").unwrap();
        assert_eq!(read_bounded(&file).unwrap(), "<domain/>");
    }
}
