//! Where the benchmarks find the QEMU they measure beside: Debian's
//! installed `/usr/bin/qemu-system-x86_64`, or one unpacked from Debian's
//! packages (`dpkg -x`) on a host where installing it would replace
//! packages others use (here: a newer qemu-utils). `$LIBVIRTD_BENCH_QEMU`
//! names such a binary, `$LIBVIRTD_BENCH_QEMU_ROOT` the tree it was
//! unpacked into; either works for every benchmark. An unpacked QEMU gets
//! the firmware and libraries beside it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The installed QEMU.
pub const INSTALLED: &str = "/usr/bin/qemu-system-x86_64";

/// A QEMU to run.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// Its binary.
    pub bin: PathBuf,
    /// The tree it was unpacked into (`ROOT/usr/bin/qemu-system-x86_64`),
    /// `None` when it is installed.
    pub root: Option<PathBuf>,
}

/// The QEMU the environment names, else the installed one; `None` if
/// neither is there.
pub fn find() -> Option<Qemu> {
    let bin = if let Some(bin) = std::env::var_os("LIBVIRTD_BENCH_QEMU") {
        PathBuf::from(bin)
    } else if let Some(root) = std::env::var_os("LIBVIRTD_BENCH_QEMU_ROOT") {
        Path::new(&root).join(INSTALLED.trim_start_matches('/'))
    } else {
        PathBuf::from(INSTALLED)
    };
    if !bin.exists() {
        return None;
    }
    let root = bin
        .parent()
        .and_then(Path::parent)
        .filter(|usr| usr.ends_with("usr"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .filter(|root| root != Path::new("/"));
    Some(Qemu { bin, root })
}

impl Qemu {
    /// Its firmware directories (`-L`): the unpacked tree's, then Debian's.
    pub fn firmware(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for root in self.root.iter().map(PathBuf::as_path).chain([Path::new("/")]) {
            dirs.extend(
                ["usr/share/qemu", "usr/share/seabios"].map(|d| root.join(d)).into_iter().filter(|d| d.is_dir()),
            );
        }
        dirs
    }

    /// Adds its firmware directories and, when unpacked, its libraries to
    /// `c`, a command that runs it (directly or through a wrapper).
    pub fn set_up(&self, c: &mut Command) {
        for dir in self.firmware() {
            c.arg("-L").arg(dir);
        }
        if let Some(libs) = self.root.as_ref().map(|r| r.join("usr/lib/x86_64-linux-gnu")).filter(|d| d.is_dir()) {
            let mut all = libs.into_os_string();
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                all.push(":");
                all.push(old);
            }
            c.env("LD_LIBRARY_PATH", all);
        }
    }

    /// The command, set up.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        self.set_up(&mut c);
        c
    }
}
