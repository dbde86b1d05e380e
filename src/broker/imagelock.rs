//! Image locking as QEMU's file-posix driver does it, so that our guests and
//! QEMU's (and `qemu-img`) see each other's use of an image.
//!
//! QEMU (`raw_apply_lock_bytes`, `raw_check_lock_bytes`) takes open file
//! description locks (`F_OFD_SETLK`), all shared (`F_RDLCK`), one byte each:
//! at 100 + bit for each permission it holds (consistent read, write,
//! write unchanged, resize) and at 200 + bit for each permission it does not
//! let others have. It then tests, with `F_OFD_GETLK` for an exclusive lock,
//! that nobody else denies a permission it holds (byte 200 + bit) and that
//! nobody else holds a permission it denies (byte 100 + bit). The locks
//! belong to the open file description, so they last while any fd to it is
//! open: the broker's, and the helper's copy passed to it.

use std::fs::File;

use nix::fcntl::{FcntlArg, fcntl};

/// QEMU's `BLK_PERM_CONSISTENT_READ`.
pub const READ: u8 = 0x01;
/// `BLK_PERM_WRITE`.
pub const WRITE: u8 = 0x02;
/// `BLK_PERM_WRITE_UNCHANGED`.
pub const WRITE_UNCHANGED: u8 = 0x04;
/// `BLK_PERM_RESIZE`.
pub const RESIZE: u8 = 0x08;
/// Every permission QEMU 7 knows.
const ALL: u8 = 0x0f;
/// QEMU's names for them, as its errors say them.
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// What a user of an image does and lets others do, as QEMU's block layer
/// words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    /// Permissions held.
    pub perm: u8,
    /// Permissions others may hold meanwhile.
    pub shared: u8,
}

impl Perms {
    /// A backing layer: read, and nobody may change what we read.
    pub const BACKING: Perms = Perms { perm: READ, shared: READ | WRITE_UNCHANGED };

    /// The image a guest sees, as QEMU's virtio-blk over a raw or qcow2
    /// node asks for it: a writer denies other writers (unless the disk is
    /// `<shareable/>`, QEMU's `share-rw`, raw only); a reader too, so that
    /// what it reads does not change. qcow2 writes its own metadata (write
    /// and resize) and never shares writes.
    pub fn image(qcow2: bool, read_only: bool, shareable: bool) -> Perms {
        let mut perm = READ;
        let mut shared = READ | WRITE_UNCHANGED;
        if !read_only {
            perm |= WRITE;
            if qcow2 {
                perm |= RESIZE;
            }
        }
        if !qcow2 {
            shared |= RESIZE;
            if shareable {
                shared |= WRITE;
            }
        }
        Perms { perm, shared }
    }
}

/// Another user of the image holds or denies what we need.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Someone else denies a permission we need.
    #[error("Failed to get \"{0}\" lock")]
    Denied(&'static str),
    /// Someone else holds a permission we deny.
    #[error("Failed to get shared \"{0}\" lock")]
    Held(&'static str),
    /// The file system does not do OFD locks, or another failure.
    #[error("cannot lock the image: {0}")]
    Sys(nix::Error),
}

fn flock(kind: i32, byte: i64) -> libc::flock {
    libc::flock { l_type: kind as i16, l_whence: libc::SEEK_SET as i16, l_start: byte, l_len: 1, l_pid: 0 }
}

/// Whether another open file description holds a lock on `byte`.
fn taken(file: &File, byte: i64) -> Result<bool, LockError> {
    let mut l = flock(libc::F_WRLCK, byte);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut l)).map_err(LockError::Sys)?;
    Ok(l.l_type != libc::F_UNLCK as i16)
}

/// Takes QEMU's locks for `perms` on `file` and checks nobody else's stand
/// in the way. On failure the caller closes `file`, which drops whatever
/// this took.
pub fn lock(file: &File, perms: Perms) -> Result<(), LockError> {
    let denied = !perms.shared & ALL;
    for (bit, name) in NAMES.iter().enumerate() {
        let mask = 1u8 << bit;
        for (wanted, base) in [(perms.perm, PERM_BASE), (denied, SHARED_BASE)] {
            if wanted & mask != 0 {
                let l = flock(libc::F_RDLCK, base + bit as i64);
                match fcntl(file, FcntlArg::F_OFD_SETLK(&l)) {
                    Ok(_) => {}
                    // Someone holds an exclusive lock there: not QEMU's way, but a conflict all the same.
                    Err(nix::Error::EAGAIN | nix::Error::EACCES) => {
                        return Err(if base == PERM_BASE { LockError::Denied(name) } else { LockError::Held(name) });
                    }
                    Err(e) => return Err(LockError::Sys(e)),
                }
            }
        }
    }
    for (bit, name) in NAMES.iter().enumerate() {
        let mask = 1u8 << bit;
        if perms.perm & mask != 0 && taken(file, SHARED_BASE + bit as i64)? {
            return Err(LockError::Denied(name));
        }
        if denied & mask != 0 && taken(file, PERM_BASE + bit as i64)? {
            return Err(LockError::Held(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &std::path::Path) -> File {
        std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap()
    }

    #[test]
    fn a_writer_keeps_out_writers_and_readers_but_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let writer = open(&p);
        lock(&writer, Perms::image(false, false, false)).unwrap();
        assert_eq!(lock(&open(&p), Perms::image(false, false, false)), Err(LockError::Denied("write")));
        // A reader denies writes, which the writer holds.
        assert_eq!(lock(&open(&p), Perms::image(false, true, false)), Err(LockError::Held("write")));
        assert_eq!(lock(&open(&p), Perms::BACKING), Err(LockError::Held("write")));
        drop(writer);
        let r1 = open(&p);
        lock(&r1, Perms::image(false, true, false)).unwrap();
        let r2 = open(&p);
        lock(&r2, Perms::BACKING).unwrap();
        // While readers hold it, a writer is refused.
        assert_eq!(lock(&open(&p), Perms::image(true, false, false)), Err(LockError::Denied("write")));
    }

    #[test]
    fn shareable_raw_writers_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let a = open(&p);
        lock(&a, Perms::image(false, false, true)).unwrap();
        let b = open(&p);
        lock(&b, Perms::image(false, false, true)).unwrap();
        assert!(lock(&open(&p), Perms::image(false, false, false)).is_err());
    }
}
