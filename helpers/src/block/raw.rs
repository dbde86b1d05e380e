//! A raw image: a file or block device read and written in place with
//! pread/pwrite at the guest's offsets.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::Backend;

/// A raw image on an fd.
pub struct Raw {
    file: File,
    size: u64,
}

impl Raw {
    /// `file`'s size is taken now (a block device's by seeking to its end).
    pub fn new(mut file: File) -> io::Result<Raw> {
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Raw { file, size })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own fd with plain integer arguments.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

impl Backend for Raw {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let zeros = vec![0u8; 64 << 10];
                let mut at = 0;
                while at < len {
                    let n = (len - at).min(zeros.len() as u64);
                    self.write_at(&zeros[..n as usize], offset + at)?;
                    at += n;
                }
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn reads_writes_and_zeroes_in_place() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        let raw = Raw::new(f.try_clone().unwrap()).unwrap();
        assert_eq!(raw.size(), 8192);
        raw.write_at(&[1, 2, 3], 512).unwrap();
        let mut b = [0u8; 4];
        raw.read_at(&mut b, 511).unwrap();
        assert_eq!(b, [7, 1, 2, 3]);
        raw.write_zeroes(0, 4096).unwrap();
        raw.read_at(&mut b, 510).unwrap();
        assert_eq!(b, [0; 4]);
        raw.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [7; 4]);
        raw.flush().unwrap();
        assert!(raw.read_at(&mut b, 8190).is_err(), "past the end");
    }
}
