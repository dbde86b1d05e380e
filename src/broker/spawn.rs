//! Starting the sandboxed processes: a fresh exec, never a bare fork, so a
//! child inherits none of the broker's memory (secrets such as the TLS key
//! included) and gets a fresh address-space layout. The child finds its
//! control channel on fd 3 and nothing else open but stdio.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::frontend::{CHANNEL_FD, FRONTEND_ARG};
use crate::privsep::{Channel, ListenerKind};

/// A running child and the broker's end of its channel.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid.
    pub pid: Pid,
    /// The broker's end.
    pub channel: Channel,
}

/// Execs `/proc/self/exe --frontend-process CLASS`. The frontend stays in
/// the daemon's session: it lives and dies with the daemon. The class in
/// its command line is only for operators reading `ps`; what a frontend
/// serves is decided by the sockets the broker hands it.
pub fn frontend(class: ListenerKind) -> std::io::Result<Spawned> {
    exec_with_channel(Path::new("/proc/self/exe"), &[FRONTEND_ARG, class.name()], false)
}

/// Execs a guest helper. It gets a session of its own, so that stopping or
/// killing the daemon (its process group included) never touches a guest.
pub fn helper(exe: &Path) -> std::io::Result<Spawned> {
    exec_with_channel(exe, &[], true)
}

/// Execs `exe` with its channel end as fd 3, an empty environment,
/// stdin/stdout on /dev/null, stderr shared (the log), and every signal
/// unblocked (the broker blocks its own for signalfd).
fn exec_with_channel(exe: &Path, args: &[&str], new_session: bool) -> std::io::Result<Spawned> {
    let (ours, theirs) = Channel::pair().map_err(std::io::Error::from)?;
    let child_fd = theirs.raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg0(exe.file_name().unwrap_or_default())
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if exe == Path::new("/proc/self/exe") {
        cmd.arg0("libvirtd");
    }
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (setsid, dup2, fcntl, sigprocmask) on fds it owns.
    unsafe {
        cmd.pre_exec(move || {
            if new_session && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if child_fd == CHANNEL_FD {
                let flags = libc::fcntl(child_fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, CHANNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok(Spawned { pid: Pid::from_raw(child.id() as i32), channel: ours })
}
