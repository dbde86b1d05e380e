//! Starting the frontend: a fresh exec of our own binary, never a bare fork,
//! so it inherits none of the broker's memory (secrets such as the TLS key
//! included) and gets a fresh address-space layout.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::frontend::{CHANNEL_FD, FRONTEND_ARG};
use crate::privsep::Channel;

/// A running frontend and the broker's end of its channel.
#[derive(Debug)]
pub struct Spawned {
    /// The frontend's pid.
    pub pid: Pid,
    /// The broker's end.
    pub channel: Channel,
}

/// Execs `/proc/self/exe --frontend-process` with its channel end as fd 3,
/// an empty environment, stdin/stdout on /dev/null, stderr shared (the log),
/// and every signal unblocked (the broker blocks its own for signalfd).
pub fn frontend() -> std::io::Result<Spawned> {
    let (ours, theirs) = Channel::pair().map_err(std::io::Error::from)?;
    let child_fd = theirs.raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("libvirtd")
        .arg(FRONTEND_ARG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (dup2, fcntl, sigprocmask) on fds it owns.
    unsafe {
        cmd.pre_exec(move || {
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
