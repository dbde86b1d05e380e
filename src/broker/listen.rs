//! The listening sockets: created here, or taken from systemd.
//!
//! The broker creates them (it may need root for the directory and group) and
//! keeps them across frontend restarts, so clients can reconnect at once.

use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::config::paths::{ADMIN_SOCKET, RO_SOCKET, RW_SOCKET};
use crate::privsep::ListenerKind;

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A live daemon answers on the socket already.
    #[error("socket '{0}' is in use by another daemon")]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("'{0}' exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The group named by `unix_sock_group` does not exist.
    #[error("unix_sock_group: no group named '{0}'")]
    NoGroup(String),
    /// Creating, binding or setting up a socket failed.
    #[error("cannot listen on '{what}': {source}")]
    Io {
        /// The path or address.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The configuration asks for a listener we refuse to open.
    #[error("{0}")]
    Refused(String),
}

/// Bound sockets, in the order they are handed to the frontend.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Each socket with its role.
    pub sockets: Vec<(ListenerKind, OwnedFd)>,
    /// Paths we created and must remove at exit (none under socket activation).
    pub created: Vec<PathBuf>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for p in &self.created {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates the three Unix sockets, and the TCP ones with `--listen`.
pub fn bind_all(config: &Config, listen: bool, private_dir: bool) -> Result<Listeners, ListenError> {
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |source| ListenError::Io { what, source }
    };
    let dir = &config.unix_sock_dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if private_dir {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let gid = match &config.unix_sock_group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name).ok().flatten().ok_or_else(|| ListenError::NoGroup(name.clone()))?.gid,
        ),
        None => None,
    };
    let mut out = Listeners::default();
    for (kind, name, mode) in [
        (ListenerKind::ReadWrite, RW_SOCKET, config.unix_sock_rw_perms),
        (ListenerKind::ReadOnly, RO_SOCKET, config.unix_sock_ro_perms),
        (ListenerKind::Admin, ADMIN_SOCKET, config.unix_sock_admin_perms),
    ] {
        let path = config.socket_path(name);
        let listener = bind_unix(&path, mode, gid)?;
        out.created.push(path);
        out.sockets.push((kind, OwnedFd::from(listener)));
    }
    if listen {
        if config.listen_tls {
            let addr = (config.listen_addr.as_str(), config.tls_port);
            let what = format!("{}:{}", config.listen_addr, config.tls_port);
            let l = TcpListener::bind(addr).map_err(|source| ListenError::Io { what, source })?;
            out.sockets.push((ListenerKind::Tls, OwnedFd::from(l)));
        }
        if config.listen_tcp {
            plain_tcp_allowed(config)?;
            let addr = (config.listen_addr.as_str(), config.tcp_port);
            let what = format!("{}:{}", config.listen_addr, config.tcp_port);
            let l = TcpListener::bind(addr).map_err(|source| ListenError::Io { what: what.clone(), source })?;
            out.sockets.push((ListenerKind::Tcp, OwnedFd::from(l)));
        }
    }
    Ok(out)
}

/// Plain TCP carries no authentication here (no SASL): only an explicit
/// `auth_tcp = "none"` allows it, whether the socket is ours or systemd's.
pub fn plain_tcp_allowed(config: &Config) -> Result<(), ListenError> {
    if config.auth_tcp != "none" {
        return Err(ListenError::Refused(format!(
            "auth_tcp = \"{}\" is not supported (no SASL); set auth_tcp = \"none\" to allow unauthenticated TCP",
            config.auth_tcp
        )));
    }
    Ok(())
}

/// Checks the sockets about to be served, wherever they came from, and
/// warns about unauthenticated TCP at every start.
pub fn vet(config: &Config, listeners: &Listeners) -> Result<(), ListenError> {
    if listeners.sockets.iter().any(|(k, _)| *k == ListenerKind::Tcp) {
        plain_tcp_allowed(config)?;
        log::warn!("serving unauthenticated, unencrypted TCP clients (auth_tcp = \"none\")");
    }
    Ok(())
}

/// Binds one Unix socket, replacing a stale one but never a live one.
fn bind_unix(path: &Path, mode: u32, gid: Option<nix::unistd::Gid>) -> Result<UnixListener, ListenError> {
    let io = |source| ListenError::Io { what: path.display().to_string(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.to_owned()));
            }
            log::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(ListenError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| io(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(listener)
}
