//! Opening the files a domain names (kernel, initrd, serial log) without ever
//! waiting on them.
//!
//! The broker serves everyone from one thread, so an `open(2)` that blocks
//! stops the whole daemon: opening a FIFO waits for its other end, and a
//! device's open may wait or act (a tape rewinds, a watchdog arms). Each path
//! is therefore first opened `O_PATH`, which touches only the inode, and
//! checked with `fstat`; only a regular file is then opened for real, through
//! `/proc/self/fd`, which reaches that same inode even if the path was
//! swapped meanwhile.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a file a domain names could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path could not be opened or inspected.
    #[error("domain '{domain}': cannot open {what} '{path}': {source}")]
    Open {
        /// The domain that names the file.
        domain: String,
        /// What the file is for ("kernel", "initrd", "serial log").
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is something other than a regular file: refused before it is
    /// opened for reading or writing.
    #[error("domain '{domain}': {what} '{path}' is a {kind}, not a regular file")]
    NotRegular {
        /// The domain that names the file.
        domain: String,
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is instead ("FIFO", "socket", ...).
        kind: &'static str,
    },
}

/// The name of a file type that is not a regular file.
pub fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Which domain wants the file, and what for: only used to name it in errors.
#[derive(Debug, Clone, Copy)]
pub struct Purpose<'a> {
    /// The domain's name.
    pub domain: &'a str,
    /// What the file is for ("kernel", "initrd", "serial log").
    pub what: &'static str,
}

impl Purpose<'_> {
    fn open_error(&self, path: &Path, source: std::io::Error) -> FileError {
        FileError::Open { domain: self.domain.to_owned(), what: self.what, path: path.to_owned(), source }
    }

    /// `O_PATH` handle on `path` (never blocks, never opens the file itself),
    /// checked to be a regular file.
    fn inode(&self, path: &Path) -> Result<File, FileError> {
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .map_err(|e| self.open_error(path, e))?;
        let t = handle.metadata().map_err(|e| self.open_error(path, e))?.file_type();
        if !t.is_file() {
            return Err(FileError::NotRegular {
                domain: self.domain.to_owned(),
                what: self.what,
                path: path.to_owned(),
                kind: kind_of(t),
            });
        }
        Ok(handle)
    }

    /// Opens the inode `handle` holds with `options`.
    fn reopen(&self, path: &Path, handle: &File, options: &mut OpenOptions) -> Result<File, FileError> {
        let via = format!("/proc/self/fd/{}", handle.as_raw_fd());
        options.custom_flags(libc::O_NOCTTY).open(via).map_err(|e| self.open_error(path, e))
    }

    /// Opens `path` for reading if it is a regular file.
    pub fn open_read(&self, path: &Path) -> Result<File, FileError> {
        let handle = self.inode(path)?;
        self.reopen(path, &handle, OpenOptions::new().read(true))
    }

    /// Opens `path` for appending if it is a regular file, creating it if it
    /// does not exist.
    pub fn open_append(&self, path: &Path) -> Result<File, FileError> {
        // A missing file is created exclusively (a regular file, and never
        // through a symlink planted meanwhile); one that appeared since is
        // opened like any existing file.
        match self.inode(path) {
            Err(FileError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                match OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
                    .open(path)
                {
                    Ok(f) => Ok(f),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let handle = self.inode(path)?;
                        self.reopen(path, &handle, OpenOptions::new().append(true))
                    }
                    Err(e) => Err(self.open_error(path, e)),
                }
            }
            Err(e) => Err(e),
            Ok(handle) => self.reopen(path, &handle, OpenOptions::new().append(true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const KERNEL: Purpose<'static> = Purpose { domain: "vm1", what: "kernel" };

    fn fifo(dir: &Path) -> PathBuf {
        let p = dir.join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    #[test]
    fn regular_files_open_for_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bzImage");
        std::fs::write(&p, b"kernel bytes").unwrap();
        let mut s = String::new();
        KERNEL.open_read(&p).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "kernel bytes");
    }

    #[test]
    fn a_fifo_is_refused_at_once_naming_domain_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path());
        let started = std::time::Instant::now();
        let e = KERNEL.open_read(&p).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(matches!(e, FileError::NotRegular { kind: "FIFO", .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("'vm1'") && text.contains(&p.display().to_string()) && text.contains("FIFO"), "{text}");
        // Appending to a FIFO (a serial log) is refused the same way, not
        // left waiting for a reader.
        let log = Purpose { domain: "vm1", what: "serial log" };
        assert!(matches!(log.open_append(&p), Err(FileError::NotRegular { kind: "FIFO", .. })));
    }

    #[test]
    fn sockets_devices_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for (path, kind) in
            [(sock.as_path(), "socket"), (Path::new("/dev/null"), "character device"), (dir.path(), "directory")]
        {
            match KERNEL.open_read(path) {
                Err(FileError::NotRegular { kind: k, .. }) => assert_eq!(k, kind, "{}", path.display()),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
    }

    #[test]
    fn a_symlink_to_a_fifo_is_refused_and_one_to_a_file_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = fifo(dir.path());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(KERNEL.open_read(&link), Err(FileError::NotRegular { kind: "FIFO", .. })));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let link2 = dir.path().join("link2");
        std::os::unix::fs::symlink(&file, &link2).unwrap();
        assert!(KERNEL.open_read(&link2).is_ok());
    }

    #[test]
    fn serial_logs_are_created_then_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serial.log");
        let log = Purpose { domain: "vm1", what: "serial log" };
        log.open_append(&p).unwrap().write_all(b"one\n").unwrap();
        log.open_append(&p).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        let missing = dir.path().join("no/such/dir/log");
        assert!(matches!(log.open_append(&missing), Err(FileError::Open { .. })));
    }
}
