//! A private instance of Debian's libvirtd (with QEMU) for benchmarks that
//! compare with it, which must neither see nor disturb the host's: it runs in
//! its own mount, network and PID namespaces (`unshare`), with a fresh tmpfs
//! on /run, temporary directories bound over /etc/libvirt, /var/lib/libvirt,
//! /var/cache/libvirt and /var/log/libvirt, no cgroup mounts (so it creates
//! no cgroups) and its sockets in a temporary directory. Killing the
//! namespace's init ends it and every QEMU it started.
//!
//! QEMU is the one `shared/qemu.rs` finds: the installed one, or an
//! unpacked tree of Debian's `qemu-system-x86` and `qemu-system-common`
//! packages laid over `/usr` inside the namespace only.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::{self, children_of, cmdline, rss_kib_of, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Host directories Debian's libvirtd writes to, each replaced by a private one.
const DIRS: [(&str, &str); 4] = [
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

/// The unpacked QEMU tree, if QEMU is one.
fn qemu_root() -> Option<PathBuf> {
    super::qemu::find()?.root
}

/// Err says why Debian's daemon cannot run here.
pub fn available() -> Result<(), String> {
    if !common::is_root() {
        return Err("needs root (for its private namespaces)".into());
    }
    if !Path::new(LIBVIRTD).exists() {
        return Err(format!("{LIBVIRTD} is not installed (libvirt-daemon, libvirt-daemon-driver-qemu)"));
    }
    if super::qemu::find().is_none() {
        return Err(format!("{QEMU} is not installed (qemu-system-x86, or $LIBVIRTD_BENCH_QEMU(_ROOT))"));
    }
    Ok(())
}

pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = children_of(pid);
    let mut i = 0;
    while i < out.len() {
        out.extend(children_of(out[i]));
        i += 1;
    }
    out
}

/// A private Debian libvirtd; dropping it kills it and its guests.
pub struct Debian {
    pub dir: tempfile::TempDir,
    unshare: Child,
    /// The namespace's init (bash), parent of libvirtd and of every QEMU.
    init: Option<i32>,
}

impl Debian {
    pub fn start() -> Result<Debian, String> {
        available()?;
        let dir = tempfile::Builder::new()
            .prefix("bench-debian")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let p = dir.path();
        if p.starts_with("/run") || p.starts_with("/usr") || DIRS.iter().any(|(_, host)| p.starts_with(host)) {
            return Err(format!("the temporary directory {} would be hidden in the namespace", p.display()));
        }
        let q = |s: &Path| format!("'{}'", s.display());
        let mut script = String::from(
            "set -e\nmount -t tmpfs tmpfs /run\nmkdir /run/libvirt\numount -R -l /sys/fs/cgroup 2>/dev/null || true\n",
        );
        if let Some(root) = qemu_root() {
            script += &format!("mount -t overlay overlay -o lowerdir={}:/usr /usr\n", root.join("usr").display());
        }
        for (name, host) in DIRS {
            std::fs::create_dir(p.join(name)).map_err(|e| format!("mkdir: {e}"))?;
            if !Path::new(host).is_dir() {
                // Without libvirt-daemon-system the directory is missing: a
                // tmpfs over its parent, in the namespace only, provides it.
                let parent = Path::new(host).parent().unwrap_or(Path::new("/"));
                script += &format!("mountpoint -q {0} || mount -t tmpfs tmpfs {0}\nmkdir -p {host}\n", q(parent));
            }
            script += &format!("mount --bind {} {host}\n", q(&p.join(name)));
        }
        // Its QEMU driver looks up the user and group it was built for
        // before it reads qemu.conf; libvirt-daemon-system creates them, so
        // without that package they are added to private copies here.
        script += &format!(
            "cp /etc/passwd {0}/passwd; cp /etc/group {0}/group\n\
             getent passwd libvirt-qemu >/dev/null || \
             echo 'libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin' >> {0}/passwd\n\
             getent group libvirt-qemu >/dev/null || echo 'libvirt-qemu:x:64055:' >> {0}/group\n\
             getent group kvm >/dev/null || echo 'kvm:x:64056:' >> {0}/group\n\
             mount --bind {0}/passwd /etc/passwd\nmount --bind {0}/group /etc/group\n",
            q(p)
        );
        script += &format!("{LIBVIRTD} -f {} &\nwait\n", q(&p.join("libvirtd.conf")));
        let sock = p.join("sock");
        std::fs::create_dir(&sock).map_err(|e| format!("mkdir: {e}"))?;
        let files = [
            (
                "libvirtd.conf".to_owned(),
                format!(
                    "unix_sock_dir = \"{}\"\nauth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\n\
                     log_outputs = \"3:file:{}\"\n",
                    sock.display(),
                    p.join("libvirtd.log").display()
                ),
            ),
            // No virtlogd, no security driver, no per-guest namespaces or cgroups:
            // nothing of the host's beyond /dev/kvm.
            (
                "etc/qemu.conf".to_owned(),
                "stdio_handler = \"file\"\nsecurity_driver = \"none\"\nuser = \"root\"\ngroup = \"root\"\n\
                 dynamic_ownership = 0\nremember_owner = 0\nnamespaces = [ ]\ncgroup_controllers = [ ]\n"
                    .to_owned(),
            ),
        ];
        for (name, text) in files {
            std::fs::write(p.join(&name), text).map_err(|e| format!("writing {name}: {e}"))?;
        }
        let out = std::fs::File::create(p.join("output")).map_err(|e| format!("creating output: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("output: {e}"))?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private"])
            .args(["bash", "-c", &script])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // If the benchmark dies, the namespace (libvirtd and its QEMUs) dies with it.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let unshare = cmd.spawn().map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
        let mut d = Debian { dir, unshare, init: None };
        let pid = d.unshare.id() as i32;
        wait_until(Duration::from_secs(10), || {
            d.init = children_of(pid).first().copied();
            d.init.is_some()
        });
        let up = wait_until(Duration::from_secs(120), || {
            d.sock().exists() || d.unshare.try_wait().is_ok_and(|s| s.is_some())
        });
        if !up || !d.sock().exists() {
            let output = std::fs::read_to_string(d.dir.path().join("output")).unwrap_or_default();
            let status = match d.unshare.try_wait() {
                Ok(Some(s)) => format!("it exited ({s})"),
                _ => "it did not listen within 120 s".to_owned(),
            };
            return Err(format!("its libvirtd did not start, {status}: {}", output.trim()));
        }
        Ok(d)
    }

    /// Its read-write socket.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("sock/libvirt-sock")
    }

    /// Its read-only socket.
    pub fn sock_ro(&self) -> PathBuf {
        self.dir.path().join("sock/libvirt-sock-ro")
    }

    /// RSS of libvirtd, and of all the QEMU processes.
    pub fn rss(&self) -> (u64, u64) {
        let all = self.init.map(descendants).unwrap_or_default();
        let sum = |what: &str| all.iter().filter(|p| cmdline(**p).contains(what)).map(|p| rss_kib_of(*p)).sum();
        (sum(LIBVIRTD), sum("qemu-system"))
    }
}

impl Drop for Debian {
    fn drop(&mut self) {
        // The init's death ends the PID namespace: libvirtd and every QEMU.
        match self.init {
            Some(init) => {
                let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
            }
            None => {
                let _ = self.unshare.kill();
            }
        }
        let _ = self.unshare.wait();
    }
}
