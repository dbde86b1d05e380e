//! Telling whoever started us that the daemon is up: the `-d` parent through
//! a pipe, systemd through `NOTIFY_SOCKET`.
//!
//! With `-d` the parent exits 0 only once the daemon is serving, and otherwise
//! exits non-zero printing the daemon's own error, so an init script sees a
//! real failure instead of a daemon that dies a moment later.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use nix::unistd::{ForkResult, fork, setsid};

/// Where the start-up result goes.
#[derive(Debug, Default)]
pub struct Readiness {
    parent: Option<std::fs::File>,
}

impl Readiness {
    /// Detaches into the background (fork, setsid, fork). Only the daemon
    /// returns; the original process waits for its result and exits.
    ///
    /// Must run before any thread exists.
    pub fn daemonize() -> Result<Readiness, nix::Error> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: the broker is single-threaded here (documented precondition),
        // so the child inherits no lock held by another thread.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => {
                drop(w);
                let _ = nix::sys::wait::waitpid(child, None);
                Self::wait_for_daemon(r)
            }
            ForkResult::Child => {
                drop(r);
                setsid()?;
                // SAFETY: still single-threaded, as above.
                match unsafe { fork() }? {
                    ForkResult::Parent { .. } => std::process::exit(0),
                    ForkResult::Child => {
                        let _ = std::env::set_current_dir("/");
                        redirect_stdio_to_null();
                        Ok(Readiness { parent: Some(std::fs::File::from(w)) })
                    }
                }
            }
        }
    }

    fn wait_for_daemon(r: OwnedFd) -> ! {
        let mut text = String::new();
        let _ = std::fs::File::from(r).take(64 * 1024).read_to_string(&mut text);
        match text.strip_prefix("ok\n") {
            Some(_) => std::process::exit(0),
            None if text.is_empty() => {
                eprintln!("libvirtd: error: the daemon exited during start-up");
                std::process::exit(1)
            }
            None => {
                eprintln!("libvirtd: error: {}", text.trim_end());
                std::process::exit(1)
            }
        }
    }

    /// The daemon is serving.
    pub fn ok(&mut self) {
        if let Some(mut p) = self.parent.take() {
            let _ = p.write_all(b"ok\n");
        }
        sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    /// Start-up failed with `message`.
    pub fn fail(&mut self, message: &str) {
        if let Some(mut p) = self.parent.take() {
            let _ = p.write_all(message.as_bytes());
        }
        sd_notify(&format!("STATUS={message}\nERRNO=1"));
    }
}

fn redirect_stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in [0, 1, 2] {
            // SAFETY: fd 0-2 are the standard streams; dup2 atomically replaces them.
            let _ = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        }
    }
}

/// Sends a state line to systemd if it asked for one.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        log::warn!("cannot notify systemd: {e}");
    }
}
