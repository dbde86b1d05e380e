//! systemd socket activation: `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`.
//!
//! Names are the socket units' names (systemd's default `FileDescriptorName`),
//! as libvirt's own units use them. An fd without a known name is matched by
//! its address against the configured paths and ports.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};

use crate::config::Config;
use crate::config::paths::{ADMIN_SOCKET, RO_SOCKET, RW_SOCKET};
use crate::privsep::ListenerKind;

use super::listen::Listeners;

const FIRST_FD: RawFd = 3;
/// More passed sockets than this is a misconfiguration, not something to allocate for.
const MAX_FDS: usize = 16;

/// Why the passed sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The variables are malformed.
    #[error("socket activation: {0}")]
    Invalid(String),
}

/// The role of a socket unit's name.
fn kind_for_name(name: &str) -> Option<ListenerKind> {
    match name {
        "libvirtd.socket" => Some(ListenerKind::ReadWrite),
        "libvirtd-ro.socket" => Some(ListenerKind::ReadOnly),
        "libvirtd-admin.socket" => Some(ListenerKind::Admin),
        "libvirtd-tcp.socket" => Some(ListenerKind::Tcp),
        "libvirtd-tls.socket" => Some(ListenerKind::Tls),
        _ => None,
    }
}

/// Takes the sockets systemd passed us, if it passed any (and they are ours:
/// `LISTEN_PID` must be our pid). The variables are removed so no child sees them.
pub fn take(config: &Config) -> Result<Option<Listeners>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called at start-up, before the broker starts any thread.
        unsafe { std::env::remove_var(var) };
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count: usize = fds
        .parse()
        .ok()
        .filter(|n| (1..=MAX_FDS).contains(n))
        .ok_or_else(|| ActivationError::Invalid(format!("LISTEN_FDS={fds} is not 1 to {MAX_FDS}")))?;
    let names: Vec<&str> = names.as_deref().map(|n| n.split(':').collect()).unwrap_or_default();
    let mut out = Listeners::default();
    for i in 0..count {
        let raw = FIRST_FD + i as RawFd;
        // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this pid (checked above)
        // and nothing in this process has claimed them.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(|e| ActivationError::Invalid(format!("fd {raw}: {e}")))?;
        if !getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
            return Err(ActivationError::Invalid(format!("fd {raw} is not a listening socket")));
        }
        let kind = names
            .get(i)
            .and_then(|n| kind_for_name(n))
            .or_else(|| kind_for_address(fd.as_raw_fd(), config))
            .ok_or_else(|| {
                ActivationError::Invalid(format!(
                    "fd {raw} ({}) matches no libvirtd socket",
                    names.get(i).copied().unwrap_or("unnamed")
                ))
            })?;
        if out.sockets.iter().any(|(k, _)| *k == kind) {
            return Err(ActivationError::Invalid(format!("two sockets passed for {}", kind.name())));
        }
        out.sockets.push((kind, fd));
    }
    if !out.sockets.iter().any(|(k, _)| *k == ListenerKind::ReadWrite) {
        return Err(ActivationError::Invalid("no socket for libvirt-sock (libvirtd.socket) was passed".into()));
    }
    Ok(Some(out))
}

fn kind_for_address(raw: RawFd, config: &Config) -> Option<ListenerKind> {
    // SAFETY: `raw` is owned by the caller for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    match addr.family()? {
        AddressFamily::Unix => {
            let path = addr.as_unix_addr()?.path()?;
            [
                (RW_SOCKET, ListenerKind::ReadWrite),
                (RO_SOCKET, ListenerKind::ReadOnly),
                (ADMIN_SOCKET, ListenerKind::Admin),
            ]
            .into_iter()
            .find(|(name, _)| Path::new(path) == config.socket_path(name))
            .map(|(_, k)| k)
        }
        AddressFamily::Inet | AddressFamily::Inet6 => {
            let port = addr.as_sockaddr_in().map(|a| a.port()).or_else(|| addr.as_sockaddr_in6().map(|a| a.port()))?;
            if port == config.tls_port {
                Some(ListenerKind::Tls)
            } else if port == config.tcp_port {
                Some(ListenerKind::Tcp)
            } else {
                None
            }
        }
        _ => None,
    }
}
