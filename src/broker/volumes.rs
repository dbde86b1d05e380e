//! A directory pool's volumes: the files in its directory, created, described,
//! resized, wiped, copied and deleted by the broker (qcow2 through
//! `qemu-img`, from Debian's qemu-utils), and opened for a client's stream.
//!
//! A volume is a regular file directly in the pool's directory: names with
//! '/' or that are '.' or '..' are refused, files are opened with
//! `O_NOFOLLOW` (a symlink is never a volume), and a path given by a client
//! names a volume only if its directory is the pool's.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::privsep::storage::StorageError;
use crate::storage::pool::Perms;
use crate::storage::probe::{self, Format, HEADER_BYTES, ImageInfo};
use crate::storage::volume::{FileFacts, VolDesc, VolRequest};
use crate::storage::{MAX_PATH_BYTES, check_name};

/// Most volumes listed in one pool (`REMOTE_STORAGE_VOL_LIST_MAX`).
pub const MAX_VOLUMES: usize = 16_384;
/// Most directory entries looked at while listing.
const MAX_ENTRIES: usize = 65_536;
/// Mode of a new volume without `<permissions>`, as libvirt's.
const DEFAULT_MODE: u32 = 0o600;
/// `VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA`.
const PREALLOC_METADATA: u32 = 1;
/// `VIR_STORAGE_VOL_RESIZE_ALLOCATE`, `_DELTA`, `_SHRINK`.
const RESIZE_ALLOCATE: u32 = 1;
const RESIZE_DELTA: u32 = 2;
const RESIZE_SHRINK: u32 = 4;

fn sys(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::System(format!("{what} '{}': {}", path.display(), strip_os_error(&e)))
}

/// std's "No such file or directory (os error 2)" as libvirt says it.
fn strip_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// The path of volume `name` in the pool at `dir`.
pub fn path_in(dir: &Path, name: &str) -> Result<PathBuf, StorageError> {
    check_name(name, "volume")?;
    Ok(dir.join(name))
}

/// Opens a volume's file (no symlinks, no FIFOs waited on) and checks it is a regular file.
fn open(path: &Path, write: bool) -> Result<std::fs::File, StorageError> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                StorageError::NoVol(format!("no storage vol with matching path '{}'", path.display()))
            }
            _ => sys("cannot open volume", path, e),
        })?;
    let meta = f.metadata().map_err(|e| sys("cannot stat", path, e))?;
    if !meta.is_file() {
        return Err(StorageError::InvalidArg(format!("volume '{}' is not a regular file", path.display())));
    }
    // Back to blocking I/O for the stream that may follow.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: fcntl on an fd this function owns (f is alive); no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(f)
}

/// What a file's header says; a qcow2 header with hostile fields is an error.
fn probe_file(path: &Path) -> Result<(ImageInfo, std::fs::Metadata), StorageError> {
    let f = open(path, false)?;
    let meta = f.metadata().map_err(|e| sys("cannot stat", path, e))?;
    let mut head = Vec::with_capacity(4096);
    f.take(HEADER_BYTES as u64).read_to_end(&mut head).map_err(|e| sys("cannot read", path, e))?;
    let info = probe::probe(&head, meta.len()).map_err(|e| StorageError::Failed(format!("{}: {e}", path.display())))?;
    Ok((info, meta))
}

fn facts(meta: &std::fs::Metadata) -> FileFacts {
    let t = |s: i64, ns: i64| format!("{s}.{ns:09}");
    FileFacts {
        perms: Perms { mode: Some(meta.mode() & 0o7777), owner: Some(meta.uid()), group: Some(meta.gid()) },
        times: Some([
            t(meta.atime(), meta.atime_nsec()),
            t(meta.mtime(), meta.mtime_nsec()),
            t(meta.ctime(), meta.ctime_nsec()),
        ]),
    }
}

/// A backing file name from a header, resolved as QEMU does (relative to the image's directory).
fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() { p.to_owned() } else { image.parent().unwrap_or(Path::new("/")).join(p) }
}

/// Describes volume `name` of the pool at `dir`.
pub fn describe(dir: &Path, name: &str) -> Result<VolDesc, StorageError> {
    let path = path_in(dir, name)?;
    let (info, meta) = probe_file(&path).map_err(|e| match e {
        StorageError::NoVol(_) => StorageError::NoVol(format!("no storage vol with matching name '{name}'")),
        other => other,
    })?;
    let backing = info.backing.as_ref().map(|(b, fmt)| {
        let resolved = resolve_backing(&path, b);
        let f = std::fs::metadata(&resolved).map(|m| facts(&m)).unwrap_or_default();
        (resolved.display().to_string(), fmt.clone(), f)
    });
    Ok(VolDesc {
        name: name.to_owned(),
        path: path.display().to_string(),
        capacity: info.capacity,
        allocation: meta.blocks().saturating_mul(512),
        physical: meta.len(),
        format: info.format,
        facts: facts(&meta),
        compat: info.compat,
        cluster_size: info.cluster_size,
        lazy_refcounts: info.lazy_refcounts,
        backing,
    })
}

/// The names of the regular files in `dir`, sorted, at most [`MAX_VOLUMES`].
pub fn list(dir: &Path) -> Result<Vec<String>, StorageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| sys("cannot open directory", dir, e))?;
    let mut names = Vec::new();
    for entry in entries.take(MAX_ENTRIES).flatten() {
        // file_type does not follow symlinks: a link is not a volume.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else { continue };
        if check_name(&name, "volume").is_ok() {
            names.push(name);
        }
        if names.len() >= MAX_VOLUMES {
            break;
        }
    }
    names.sort();
    Ok(names)
}

/// Whether volume `name` exists in `dir` (a regular file, not a link).
pub fn exists(dir: &Path, name: &str) -> bool {
    path_in(dir, name).is_ok_and(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
}

/// A client's path or key, as (pool directory, volume name), if it names a
/// file directly in a directory; compared, never opened here.
pub fn split_path(path: &str) -> Option<(PathBuf, String)> {
    if path.len() > MAX_PATH_BYTES {
        return None;
    }
    let p = crate::storage::pool::normalise(path).ok()?;
    let name = p.file_name()?.to_str()?.to_owned();
    Some((p.parent()?.to_owned(), name))
}

/// `qemu-img` from the system's directories, with nothing of our environment.
fn qemu_img_command() -> Command {
    let mut c = Command::new("qemu-img");
    c.env_clear().env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin").stdin(std::process::Stdio::null());
    c
}

/// Runs `qemu-img ARGS`, failing with its own words.
fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<(), StorageError> {
    let out = qemu_img_command()
        .args(args)
        .output()
        .map_err(|e| StorageError::Failed(format!("cannot run qemu-img: {}", strip_os_error(&e))))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(StorageError::Failed(format!("qemu-img failed: {}", err.trim())));
    }
    Ok(())
}

/// The source of a new volume: a backing file or a volume to copy.
pub enum Source<'a> {
    /// A new, empty volume (with the request's backing file, if any).
    Fresh,
    /// A copy of the volume at this path.
    Copy(&'a Path),
}

/// Creates volume `req` in `dir`; on failure nothing is left behind.
pub fn create(dir: &Path, req: &VolRequest, source: Source<'_>, flags: u32) -> Result<(), StorageError> {
    let (file, path) = create_file(dir, req, flags)?;
    let result = fill(&file, &path, req, source, flags);
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
        return result;
    }
    set_owner(&file, &path, req)
}

/// The new volume's file, made with O_EXCL: an existing file (or a link
/// planted there) is never overwritten.
fn create_file(dir: &Path, req: &VolRequest, flags: u32) -> Result<(std::fs::File, PathBuf), StorageError> {
    if flags & !PREALLOC_METADATA != 0 {
        return Err(StorageError::Flags { flags, function: "virStorageBackendFileSystemVolBuild".into() });
    }
    let path = path_in(dir, &req.name)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(req.perms.mode.unwrap_or(DEFAULT_MODE))
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StorageError::VolExists(req.name.clone()),
            _ => sys("cannot create volume", &path, e),
        })?;
    Ok((file, path))
}

fn set_owner(file: &std::fs::File, path: &Path, req: &VolRequest) -> Result<(), StorageError> {
    let _ = file.set_permissions(std::fs::Permissions::from_mode(req.perms.mode.unwrap_or(DEFAULT_MODE)));
    if req.perms.owner.is_some() || req.perms.group.is_some() {
        std::os::unix::fs::fchown(file, req.perms.owner, req.perms.group).map_err(|e| sys("cannot chown", path, e))?;
    }
    Ok(())
}

/// A copy under way in a child process (`qemu-img convert`), so that the
/// broker's loop serves other clients meanwhile: the loop reaps the child
/// and calls [`PendingCopy::finish`].
pub struct PendingCopy {
    /// The child's pid.
    pub pid: i32,
    file: std::fs::File,
    path: PathBuf,
    req: VolRequest,
    format: Format,
    source_capacity: u64,
    /// Where the child writes its errors (read after it exits; a file, so
    /// the child never blocks on a full pipe).
    stderr: std::fs::File,
}

/// Starts copying the volume at `from` into new volume `req` in `dir`.
pub fn start_copy(dir: &Path, req: &VolRequest, from: &Path, flags: u32) -> Result<PendingCopy, StorageError> {
    let (info, _) = probe_file(from)?;
    let format = req.format.unwrap_or(info.format);
    let (file, path) = create_file(dir, req, flags)?;
    let started = nix::sys::memfd::memfd_create("qemu-img-errors", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map(std::fs::File::from)
        .map_err(|e| StorageError::System(format!("cannot make a file for qemu-img's errors: {e}")))
        .and_then(|stderr| {
            let child = qemu_img_command()
                .args(["convert", "-f", info.format.name(), "-O", format.name()])
                .arg(from)
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(stderr.try_clone().map_err(|e| sys("cannot share", &path, e))?)
                .spawn()
                .map_err(|e| StorageError::Failed(format!("cannot run qemu-img: {}", strip_os_error(&e))))?;
            Ok((child.id() as i32, stderr))
        });
    match started {
        Ok((pid, stderr)) => {
            Ok(PendingCopy { pid, file, path, req: req.clone(), format, source_capacity: info.capacity, stderr })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

impl PendingCopy {
    /// The child ended (`success`: exit status 0): the volume is finished
    /// (grown to the capacity asked, its owner set), or removed.
    pub fn finish(mut self, success: bool) -> Result<(), StorageError> {
        let result = if success {
            match self.req.capacity {
                Some(c) if c > self.source_capacity => resize_to(&self.path, self.format, c, false),
                _ => Ok(()),
            }
            .and_then(|()| set_owner(&self.file, &self.path, &self.req))
        } else {
            let mut err = String::new();
            let _ = self.stderr.seek(SeekFrom::Start(0));
            let _ = (&mut self.stderr).take(4096).read_to_string(&mut err);
            Err(StorageError::Failed(format!("qemu-img failed: {}", err.trim())))
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        result
    }

    /// The broker is going away with the copy unfinished: stop it and
    /// leave no half-copied volume.
    pub fn abandon(self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fill(
    file: &std::fs::File,
    path: &Path,
    req: &VolRequest,
    source: Source<'_>,
    flags: u32,
) -> Result<(), StorageError> {
    let os = |s: &str| std::ffi::OsString::from(s);
    match source {
        Source::Copy(from) => {
            let (info, _) = probe_file(from)?;
            let format = req.format.unwrap_or(info.format);
            qemu_img(&[
                os("convert").as_os_str(),
                os("-f").as_os_str(),
                os(info.format.name()).as_os_str(),
                os("-O").as_os_str(),
                os(format.name()).as_os_str(),
                from.as_os_str(),
                path.as_os_str(),
            ])?;
            match req.capacity {
                Some(c) if c > info.capacity => resize_to(path, format, c, false),
                _ => Ok(()),
            }
        }
        Source::Fresh => {
            let backing = match &req.backing {
                Some((b, fmt)) => {
                    let bpath = PathBuf::from(b);
                    if !bpath.is_absolute() {
                        return Err(StorageError::InvalidArg(format!("backing store path '{b}' is not absolute")));
                    }
                    let (info, _) = probe_file(&bpath).map_err(|e| match e {
                        StorageError::NoVol(_) => {
                            StorageError::InvalidArg(format!("backing store '{b}' does not exist"))
                        }
                        other => other,
                    })?;
                    Some((bpath, fmt.unwrap_or(info.format), info.capacity))
                }
                None => None,
            };
            let format = req.format.unwrap_or(Format::Raw);
            let capacity = match (req.capacity, &backing) {
                (Some(c), _) => c,
                (None, Some((_, _, c))) => *c,
                (None, None) => return Err(StorageError::Xml("missing capacity element".into())),
            };
            match format {
                Format::Raw => {
                    if backing.is_some() {
                        return Err(StorageError::NoSupport("a raw volume cannot have a backing store".into()));
                    }
                    file.set_len(capacity).map_err(|e| sys("cannot resize", path, e))?;
                    let alloc = req.allocation.unwrap_or(0).min(capacity);
                    if alloc > 0 {
                        allocate(file, path, alloc)?;
                    }
                    Ok(())
                }
                Format::Qcow2 => {
                    let mut opts = format!("compat={}", req.compat.as_deref().unwrap_or("1.1"));
                    if req.lazy_refcounts {
                        opts.push_str(",lazy_refcounts=on");
                    }
                    if flags & PREALLOC_METADATA != 0 && backing.is_none() {
                        opts.push_str(",preallocation=metadata");
                    }
                    let size = capacity.to_string();
                    let mut args = vec![os("create"), os("-q"), os("-f"), os("qcow2"), os("-o"), os(&opts)];
                    if let Some((b, f, _)) = &backing {
                        args.extend([os("-b"), b.clone().into_os_string(), os("-F"), os(f.name())]);
                    }
                    args.extend([path.as_os_str().to_owned(), os(&size)]);
                    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
                    qemu_img(&refs)
                }
            }
        }
    }
}

fn allocate(file: &std::fs::File, path: &Path, len: u64) -> Result<(), StorageError> {
    let len = i64::try_from(len).map_err(|_| StorageError::InvalidArg("allocation too large".into()))?;
    nix::fcntl::posix_fallocate(file, 0, len).map_err(|e| sys("cannot allocate", path, e.into()))
}

fn resize_to(path: &Path, format: Format, capacity: u64, shrink: bool) -> Result<(), StorageError> {
    match format {
        Format::Raw => {
            let f = open(path, true)?;
            f.set_len(capacity).map_err(|e| sys("cannot resize", path, e))
        }
        Format::Qcow2 => {
            let size = capacity.to_string();
            let mut args: Vec<&std::ffi::OsStr> =
                vec!["resize".as_ref(), "-q".as_ref(), "-f".as_ref(), "qcow2".as_ref()];
            if shrink {
                args.push("--shrink".as_ref());
            }
            args.extend([path.as_os_str(), size.as_ref()]);
            qemu_img(&args)
        }
    }
}

/// `virStorageVolResize`.
pub fn resize(dir: &Path, name: &str, capacity: u64, flags: u32) -> Result<(), StorageError> {
    if flags & !(RESIZE_ALLOCATE | RESIZE_DELTA | RESIZE_SHRINK) != 0 {
        return Err(StorageError::Flags { flags, function: "storageVolResize".into() });
    }
    let path = path_in(dir, name)?;
    let (info, _) = probe_file(&path)?;
    let target = if flags & RESIZE_DELTA != 0 {
        if flags & RESIZE_SHRINK != 0 {
            info.capacity.checked_sub(capacity)
        } else {
            info.capacity.checked_add(capacity)
        }
        .ok_or_else(|| StorageError::InvalidArg("capacity out of range".into()))?
    } else {
        capacity
    };
    if target < info.capacity && flags & RESIZE_SHRINK == 0 {
        return Err(StorageError::InvalidArg(
            "Can't shrink capacity below current capacity unless shrink flag explicitly specified".into(),
        ));
    }
    if flags & RESIZE_ALLOCATE != 0 && info.format == Format::Qcow2 {
        return Err(StorageError::NoSupport("preallocate is only supported for raw type volume".into()));
    }
    resize_to(&path, info.format, target, flags & RESIZE_SHRINK != 0)?;
    if flags & RESIZE_ALLOCATE != 0 {
        allocate(&open(&path, true)?, &path, target)?;
    }
    Ok(())
}

/// `virStorageVolWipe(Pattern)` with zeroes: a raw file reads as zeroes
/// after (sparse), a qcow2 image is made anew, empty, with its size and backing file.
pub fn wipe(dir: &Path, name: &str, algorithm: u32, flags: u32) -> Result<(), StorageError> {
    if flags != 0 {
        return Err(StorageError::Flags { flags, function: "storageVolWipePattern".into() });
    }
    if algorithm != 0 {
        return Err(StorageError::NoSupport(format!("wiping algorithm {algorithm} is not supported")));
    }
    let path = path_in(dir, name)?;
    let (info, meta) = probe_file(&path)?;
    match info.format {
        Format::Raw => {
            let f = open(&path, true)?;
            f.set_len(0).map_err(|e| sys("cannot wipe", &path, e))?;
            f.set_len(info.capacity).map_err(|e| sys("cannot wipe", &path, e))?;
            f.sync_all().map_err(|e| sys("cannot sync", &path, e))
        }
        Format::Qcow2 => {
            let req = VolRequest {
                name: name.to_owned(),
                capacity: Some(info.capacity),
                allocation: None,
                format: Some(Format::Qcow2),
                perms: Perms { mode: Some(meta.mode() & 0o7777), owner: Some(meta.uid()), group: Some(meta.gid()) },
                backing: info.backing.map(|(b, f)| {
                    let fmt = f.as_deref().and_then(Format::from_name);
                    (resolve_backing(&path, &b).display().to_string(), fmt)
                }),
                compat: info.compat.map(str::to_owned),
                lazy_refcounts: info.lazy_refcounts,
            };
            // Made beside it, then renamed over it: a failure leaves the old image.
            let tmp_name = format!(".{name}.wipe");
            let tmp = VolRequest { name: tmp_name.clone(), ..req };
            let _ = std::fs::remove_file(dir.join(&tmp_name));
            create(dir, &tmp, Source::Fresh, 0)?;
            std::fs::rename(dir.join(&tmp_name), &path).map_err(|e| sys("cannot replace", &path, e))
        }
    }
}

/// `virStorageVolDelete`.
pub fn delete(dir: &Path, name: &str, flags: u32) -> Result<(), StorageError> {
    // VIR_STORAGE_VOL_DELETE_ZEROED (1) and _WITH_SNAPSHOTS (2) are not offered.
    if flags != 0 {
        return Err(StorageError::Flags { flags, function: "virStorageBackendFileSystemVolDelete".into() });
    }
    let path = path_in(dir, name)?;
    if !exists(dir, name) {
        return Err(StorageError::NoVol(format!("no storage vol with matching name '{name}'")));
    }
    std::fs::remove_file(&path).map_err(|e| sys("cannot unlink file", &path, e))
}

/// Opens volume `name` for a stream, positioned at `offset`.
pub fn open_stream(dir: &Path, name: &str, upload: bool, offset: u64) -> Result<OwnedFd, StorageError> {
    let path = path_in(dir, name)?;
    let mut f = open(&path, upload)?;
    if offset > 0 {
        f.seek(SeekFrom::Start(offset)).map_err(|e| sys("cannot seek", &path, e))?;
    }
    Ok(OwnedFd::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, capacity: u64) -> VolRequest {
        VolRequest {
            name: name.into(),
            capacity: Some(capacity),
            allocation: None,
            format: None,
            perms: Perms::default(),
            backing: None,
            compat: None,
            lazy_refcounts: false,
        }
    }

    #[test]
    fn a_raw_volume_is_a_sparse_file_of_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), &raw("a.img", 1 << 30), Source::Fresh, 0).unwrap();
        let d = describe(dir.path(), "a.img").unwrap();
        assert_eq!((d.capacity, d.physical, d.format), (1 << 30, 1 << 30, Format::Raw));
        assert!(d.allocation < 1 << 20, "{}", d.allocation);
        assert_eq!(d.facts.perms.mode, Some(0o600));
        assert_eq!(list(dir.path()).unwrap(), vec!["a.img".to_owned()]);
        assert_eq!(
            create(dir.path(), &raw("a.img", 1), Source::Fresh, 0),
            Err(StorageError::VolExists("a.img".into()))
        );
        resize(dir.path(), "a.img", 2 << 30, 0).unwrap();
        assert!(resize(dir.path(), "a.img", 1, 0).is_err());
        assert_eq!(describe(dir.path(), "a.img").unwrap().capacity, 2 << 30);
        delete(dir.path(), "a.img", 0).unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn links_and_traversal_are_not_volumes() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
        assert!(describe(dir.path(), "link").is_err());
        assert!(open_stream(dir.path(), "link", false, 0).is_err());
        assert!(create(dir.path(), &raw("../escape", 1), Source::Fresh, 0).is_err());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
        assert_eq!(split_path("/p/q//v.img"), Some((PathBuf::from("/p/q"), "v.img".into())));
        assert_eq!(split_path("/p/../etc/passwd"), None);
    }
}
