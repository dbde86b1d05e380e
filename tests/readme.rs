//! The README's quick start is a promise too: its first command, run
//! verbatim, starts a daemon that `virsh` reaches.
//!
//! The command builds the release profile into a target directory of its
//! own beside ours (`readme-quick-start`, kept between runs, so only the
//! first run pays for the build and the outer `cargo test` never waits on
//! its lock). As root the daemon would manage the host, so it runs in a
//! private mount namespace with empty `/run` and `/etc/libvirt`; as any
//! other user it gets private XDG directories. Either way its config file,
//! found where the daemon looks by default, sends audit records to the
//! test's own syslog socket.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A nested release build on two busy cores takes minutes; give it room.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The first command of the README's quick start.
fn quick_start_command() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Quick start").nth(1).expect("README has a quick start");
    let block = section.split("```sh\n").nth(1).expect("the quick start has a sh block");
    block.lines().next().expect("the block has a command").trim().to_owned()
}

/// Kills the command's process group (cargo and the daemon under it) when dropped.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        kill_tree(self.0);
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn the_readme_quick_start_command_starts_a_daemon_virsh_reaches() {
    if !have_virsh() {
        return;
    }
    let cmd = quick_start_command();
    assert!(cmd.starts_with("cargo run"), "the quick start begins with {cmd:?}");
    let tree = Tree::new();
    // No default network: this daemon runs in the host's network namespace.
    let conf = format!("syslog_socket = \"{}\"\ndefault_network = 0\n", tree.path("syslog").display());
    let target: PathBuf = Path::new(BIN).parent().and_then(Path::parent).unwrap().join("readme-quick-start");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_dir = Path::new(&cargo).parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!("{}:{}", cargo_dir.display(), std::env::var("PATH").unwrap_or_default());

    let mut command = if is_root() {
        if !require(Path::new("/etc/libvirt").is_dir(), "/etc/libvirt (libvirt-clients) as a mount point") {
            return;
        }
        std::fs::write(tree.path("libvirtd.conf"), &conf).unwrap();
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /etc/libvirt && \
             cp \"$QS_CONF\" /etc/libvirt/libvirtd.conf && exec sh -c \"$QS_CMD\"",
        );
        c.env("QS_CONF", tree.path("libvirtd.conf"));
        c
    } else {
        std::fs::create_dir_all(tree.path("cfg/libvirt")).unwrap();
        std::fs::create_dir_all(tree.path("rt")).unwrap();
        std::fs::write(tree.path("cfg/libvirt/libvirtd.conf"), &conf).unwrap();
        let mut c = Command::new("sh");
        c.args(["-c", "exec sh -c \"$QS_CMD\""]);
        c.env("XDG_CONFIG_HOME", tree.path("cfg")).env("XDG_RUNTIME_DIR", tree.path("rt"));
        c
    };
    command
        .env("QS_CMD", &cmd)
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_NET_OFFLINE", "true")
        .env("PATH", path)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(tree.path("output")).unwrap())
        .stderr(std::fs::File::create(tree.path("output")).unwrap());
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let group = Group(child.id() as i32);
    let socket = if is_root() {
        PathBuf::from(format!("/proc/{}/root/run/libvirt/libvirt-sock", group.0))
    } else {
        tree.path("rt/libvirt/libvirt-sock")
    };
    let output = || std::fs::read_to_string(tree.path("output")).unwrap_or_default();
    let up = wait_until(BUILD_LIMIT, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok() || child.try_wait().ok().flatten().is_some()
    });
    assert!(up, "`{cmd}` did not serve within {BUILD_LIMIT:?}:\n{}", output());
    assert!(child.try_wait().unwrap().is_none(), "`{cmd}` ended:\n{}", output());
    // The daemon is up once its socket accepts; give the frontend its moment.
    let answered = wait_until(Duration::from_secs(10), || virsh(&socket, &["version"]).0 == 0);
    let (code, out, err) = virsh(&socket, &["version"]);
    assert!(answered && code == 0, "virsh got no answer from `{cmd}`: {err}\n{}", output());
    assert!(out.contains("Running hypervisor: QEMU"), "{out}");
    // `--verbose` reached the daemon: it shows its info messages.
    assert!(wait_until(Duration::from_secs(5), || output().contains("is confined and serving")), "{}", output());
    drop(group);
    let _ = child.wait();
}
