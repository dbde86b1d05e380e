//! Default paths, exactly as libvirtd(8) gives them for root and for other users.
//!
//! SYSCONFDIR and RUNSTATEDIR are fixed at build time
//! (`LIBVIRTD_SYSCONFDIR`, `LIBVIRTD_RUNSTATEDIR`; default `/etc` and `/run`).

use std::path::{Path, PathBuf};

/// The build's configuration directory.
pub const SYSCONFDIR: &str = match option_env!("LIBVIRTD_SYSCONFDIR") {
    Some(d) => d,
    None => "/etc",
};

/// The build's run-state directory.
pub const RUNSTATEDIR: &str = match option_env!("LIBVIRTD_RUNSTATEDIR") {
    Some(d) => d,
    None => "/run",
};

/// Whether the daemon manages the host (root) or a user's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Run by root: `qemu:///system`, sockets under RUNSTATEDIR.
    System,
    /// Run by any other user: `qemu:///session`, sockets under `$XDG_RUNTIME_DIR`.
    Session,
}

/// The paths a daemon uses when neither the command line nor the config file says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPaths {
    /// `libvirtd.conf`.
    pub config_file: PathBuf,
    /// The directory holding the three Unix sockets.
    pub sock_dir: PathBuf,
    /// The PID file.
    pub pid_file: PathBuf,
    /// TLS CA certificate.
    pub ca_file: PathBuf,
    /// TLS server certificate.
    pub cert_file: PathBuf,
    /// TLS server private key.
    pub key_file: PathBuf,
    /// Persistent domain XML.
    pub domain_config_dir: PathBuf,
    /// Running-domain state (status records, helper sockets).
    pub domain_state_dir: PathBuf,
}

/// The environment the session defaults are derived from.
#[derive(Debug, Clone, Default)]
pub struct UserEnv {
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
}

impl UserEnv {
    /// Reads the variables from the process environment; empty values count as unset.
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        UserEnv { home: var("HOME"), xdg_config_home: var("XDG_CONFIG_HOME"), xdg_runtime_dir: var("XDG_RUNTIME_DIR") }
    }
}

impl DefaultPaths {
    /// The defaults for `mode`; session paths follow the XDG fallbacks of the manual page.
    pub fn for_mode(mode: Mode, env: &UserEnv) -> Self {
        match mode {
            Mode::System => {
                let etc = Path::new(SYSCONFDIR);
                let run = Path::new(RUNSTATEDIR);
                DefaultPaths {
                    config_file: etc.join("libvirt/libvirtd.conf"),
                    sock_dir: run.join("libvirt"),
                    pid_file: run.join("libvirtd.pid"),
                    ca_file: etc.join("pki/CA/cacert.pem"),
                    cert_file: etc.join("pki/libvirt/servercert.pem"),
                    key_file: etc.join("pki/libvirt/private/serverkey.pem"),
                    domain_config_dir: etc.join("libvirt/qemu"),
                    domain_state_dir: run.join("libvirt/qemu"),
                }
            }
            Mode::Session => {
                let home = env.home.clone().unwrap_or_else(|| PathBuf::from("/"));
                let config = env.xdg_config_home.clone().unwrap_or_else(|| home.join(".config"));
                let runtime = env.xdg_runtime_dir.clone().unwrap_or_else(|| home.join(".cache"));
                let pki = home.join(".pki/libvirt");
                DefaultPaths {
                    config_file: config.join("libvirt/libvirtd.conf"),
                    sock_dir: runtime.join("libvirt"),
                    pid_file: runtime.join("libvirt/libvirtd.pid"),
                    ca_file: pki.join("cacert.pem"),
                    cert_file: pki.join("servercert.pem"),
                    key_file: pki.join("serverkey.pem"),
                    domain_config_dir: config.join("libvirt/qemu"),
                    domain_state_dir: runtime.join("libvirt/qemu/run"),
                }
            }
        }
    }
}

/// File names of the three Unix sockets inside the socket directory.
pub const RW_SOCKET: &str = "libvirt-sock";
/// Read-only socket name.
pub const RO_SOCKET: &str = "libvirt-sock-ro";
/// Admin socket name.
pub const ADMIN_SOCKET: &str = "libvirt-admin-sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_paths_follow_the_manual_page() {
        let p = DefaultPaths::for_mode(Mode::System, &UserEnv::default());
        assert_eq!(p.config_file, PathBuf::from("/etc/libvirt/libvirtd.conf"));
        assert_eq!(p.sock_dir.join(RW_SOCKET), PathBuf::from("/run/libvirt/libvirt-sock"));
        assert_eq!(p.pid_file, PathBuf::from("/run/libvirtd.pid"));
        assert_eq!(p.ca_file, PathBuf::from("/etc/pki/CA/cacert.pem"));
        assert_eq!(p.key_file, PathBuf::from("/etc/pki/libvirt/private/serverkey.pem"));
    }

    #[test]
    fn session_paths_use_xdg_variables() {
        let env = UserEnv {
            home: Some("/home/u".into()),
            xdg_config_home: Some("/cfg".into()),
            xdg_runtime_dir: Some("/rt".into()),
        };
        let p = DefaultPaths::for_mode(Mode::Session, &env);
        assert_eq!(p.config_file, PathBuf::from("/cfg/libvirt/libvirtd.conf"));
        assert_eq!(p.sock_dir, PathBuf::from("/rt/libvirt"));
        assert_eq!(p.pid_file, PathBuf::from("/rt/libvirt/libvirtd.pid"));
        assert_eq!(p.cert_file, PathBuf::from("/home/u/.pki/libvirt/servercert.pem"));
    }

    #[test]
    fn session_paths_fall_back_to_home() {
        let env = UserEnv { home: Some("/home/u".into()), ..UserEnv::default() };
        let p = DefaultPaths::for_mode(Mode::Session, &env);
        assert_eq!(p.config_file, PathBuf::from("/home/u/.config/libvirt/libvirtd.conf"));
        assert_eq!(p.sock_dir, PathBuf::from("/home/u/.cache/libvirt"));
        assert_eq!(p.pid_file, PathBuf::from("/home/u/.cache/libvirt/libvirtd.pid"));
    }
}
