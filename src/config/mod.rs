//! `libvirtd.conf` and the default paths for root and non-root daemons.
//!
//! The file is read as TOML (libvirt's `key = value` syntax is TOML for every
//! key that matters). Unknown keys are warned about, bad values are rejected
//! naming the key, and the file is bounded in size before it is parsed.

mod file;
pub mod paths;

use std::path::{Path, PathBuf};

pub use file::parse;
pub use paths::{DefaultPaths, Mode, UserEnv};

use crate::logging::LogConfig;

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Failed to open file '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("configuration file '{0}' is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge(PathBuf),
    /// The file is not valid TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a value of the wrong type or out of range.
    #[error("{path}: invalid value for '{key}': {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
}

/// The daemon's configuration: the file's values over built-in defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory of the Unix sockets (`unix_sock_dir`).
    pub unix_sock_dir: PathBuf,
    /// Group owning the sockets (`unix_sock_group`); `None` keeps the daemon's group.
    pub unix_sock_group: Option<String>,
    /// Mode of `libvirt-sock-ro`.
    pub unix_sock_ro_perms: u32,
    /// Mode of `libvirt-sock`.
    pub unix_sock_rw_perms: u32,
    /// Mode of `libvirt-admin-sock`.
    pub unix_sock_admin_perms: u32,
    /// Listen for TLS with `--listen`.
    pub listen_tls: bool,
    /// Listen for plain TCP with `--listen`.
    pub listen_tcp: bool,
    /// Address to listen on with `--listen`.
    pub listen_addr: String,
    /// Plain TCP port.
    pub tcp_port: u16,
    /// TLS port.
    pub tls_port: u16,
    /// Most clients connected at once.
    pub max_clients: u32,
    /// Most clients not yet authenticated at once.
    pub max_anonymous_clients: u32,
    /// Most calls in progress per client.
    pub max_client_requests: u32,
    /// Most admin-socket clients connected at once.
    pub admin_max_clients: u32,
    /// Seconds of silence before the daemon pings a client; -1 disables keepalive.
    pub keepalive_interval: i32,
    /// Unanswered pings before a client is dropped.
    pub keepalive_count: u32,
    /// Log levels, filters and outputs.
    pub log: LogConfig,
    /// 0: no audit records; 1: audit when syslog is reachable; 2: refuse to run without it.
    pub audit_level: u8,
    /// Also copy audit records into the daemon's log outputs.
    pub audit_logging: bool,
    /// Host UUID reported to clients; `None` derives one from the machine.
    pub host_uuid: Option<String>,
    /// TLS server key (`key_file`).
    pub key_file: PathBuf,
    /// TLS server certificate (`cert_file`).
    pub cert_file: PathBuf,
    /// TLS CA certificate (`ca_file`).
    pub ca_file: PathBuf,
    /// TLS certificate revocation list (`crl_file`).
    pub crl_file: Option<PathBuf>,
    /// Accept TLS clients without checking their certificate.
    pub tls_no_verify_certificate: bool,
    /// Glob patterns on the client certificate's DN; empty allows any signed certificate.
    pub tls_allowed_dn_list: Vec<String>,
    /// Authentication on plain TCP: only `"none"` is supported, and must be explicit.
    pub auth_tcp: String,
    /// The frontend's uid when the daemon runs as root.
    pub frontend_uid: u32,
    /// The frontend's gid when the daemon runs as root.
    pub frontend_gid: u32,
    /// First uid (and gid) handed to a guest helper.
    pub helper_uid_min: u32,
    /// Last uid (and gid) handed to a guest helper.
    pub helper_uid_max: u32,
    /// Persistent domain XML.
    pub domain_config_dir: PathBuf,
    /// Running-domain state.
    pub domain_state_dir: PathBuf,
    /// The syslog socket audit records and syslog log outputs are sent to.
    pub syslog_socket: PathBuf,
    /// Write libvirt's `default` network (virbr0, NAT) on first start, as a
    /// fresh libvirt install has it.
    pub default_network: bool,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_mount: PathBuf,
    /// Where guests' cgroups go: absolute within the hierarchy, or relative
    /// to the daemon's own cgroup (a delegated subtree).
    pub cgroup_partition: String,
}

/// First id of the documented block the sandboxed processes run under by default.
///
/// It sits above the ranges that useradd, systemd (dynamic users, homed, and
/// the 0x00080000-0x6FFFFFFF container range) and subuid allocation commonly
/// hand out, so a fresh host needs no accounts created.
pub const SANDBOX_ID_BASE: u32 = 0x7000_0000;

impl Config {
    /// Built-in defaults for a daemon in `mode` with the given default paths.
    pub fn defaults(paths: &DefaultPaths) -> Self {
        Config {
            unix_sock_dir: paths.sock_dir.clone(),
            unix_sock_group: None,
            unix_sock_ro_perms: 0o777,
            unix_sock_rw_perms: 0o700,
            unix_sock_admin_perms: 0o700,
            listen_tls: true,
            listen_tcp: false,
            listen_addr: "0.0.0.0".into(),
            tcp_port: 16509,
            tls_port: 16514,
            max_clients: 5000,
            max_anonymous_clients: 20,
            max_client_requests: 5,
            admin_max_clients: 5,
            keepalive_interval: 5,
            keepalive_count: 5,
            log: LogConfig::default(),
            audit_level: 1,
            audit_logging: false,
            host_uuid: None,
            key_file: paths.key_file.clone(),
            cert_file: paths.cert_file.clone(),
            ca_file: paths.ca_file.clone(),
            crl_file: None,
            tls_no_verify_certificate: false,
            tls_allowed_dn_list: Vec::new(),
            auth_tcp: "sasl".into(),
            frontend_uid: SANDBOX_ID_BASE,
            frontend_gid: SANDBOX_ID_BASE,
            helper_uid_min: SANDBOX_ID_BASE + 1,
            helper_uid_max: SANDBOX_ID_BASE + 0xFFFF,
            domain_config_dir: paths.domain_config_dir.clone(),
            domain_state_dir: paths.domain_state_dir.clone(),
            syslog_socket: PathBuf::from("/dev/log"),
            default_network: true,
            cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
            cgroup_partition: "/machine.slice".into(),
        }
    }

    /// Reads `path`, bounded in size. A missing file is an error: callers decide
    /// whether the default file may be absent.
    pub fn load(path: &Path, paths: &DefaultPaths) -> Result<(Config, Vec<String>), ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read { path: path.to_owned(), source };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(read_err)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge(path.to_owned()));
        }
        parse(&text, path, Config::defaults(paths))
    }

    /// Persistent storage pool definitions: `storage` beside `domain_config_dir`
    /// (`/etc/libvirt/storage`, `$XDG_CONFIG_HOME/libvirt/storage`), as libvirt keeps them.
    pub fn storage_config_dir(&self) -> PathBuf {
        sibling(&self.domain_config_dir, "storage")
    }

    /// Where active storage pools are recorded: `storage` beside `domain_state_dir`.
    pub fn storage_state_dir(&self) -> PathBuf {
        sibling(&self.domain_state_dir, "storage")
    }

    /// The socket path of each Unix socket.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.unix_sock_dir.join(name)
    }

    /// Keys whose change a SIGHUP cannot apply, compared with `new`.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! cmp {
            ($($f:ident),*) => { $( if self.$f != new.$f { changed.push(stringify!($f)); } )* };
        }
        cmp!(
            unix_sock_dir,
            unix_sock_group,
            unix_sock_ro_perms,
            unix_sock_rw_perms,
            unix_sock_admin_perms,
            listen_tls,
            listen_tcp,
            listen_addr,
            tcp_port,
            tls_port,
            host_uuid,
            auth_tcp,
            frontend_uid,
            frontend_gid,
            helper_uid_min,
            helper_uid_max,
            domain_config_dir,
            domain_state_dir,
            cgroup_mount,
            cgroup_partition
        );
        changed
    }
}

impl Config {
    /// Takes the keys a SIGHUP may change from `new` and returns the names of
    /// the others that differ; those keep their running values until a restart.
    pub fn apply_reload(&mut self, new: Config) -> Vec<&'static str> {
        let changed = self.restart_only_changes(&new);
        self.max_clients = new.max_clients;
        self.max_anonymous_clients = new.max_anonymous_clients;
        self.max_client_requests = new.max_client_requests;
        self.admin_max_clients = new.admin_max_clients;
        self.keepalive_interval = new.keepalive_interval;
        self.keepalive_count = new.keepalive_count;
        self.log = new.log;
        self.audit_level = new.audit_level;
        self.audit_logging = new.audit_logging;
        self.key_file = new.key_file;
        self.cert_file = new.cert_file;
        self.ca_file = new.ca_file;
        self.crl_file = new.crl_file;
        self.tls_no_verify_certificate = new.tls_no_verify_certificate;
        self.tls_allowed_dn_list = new.tls_allowed_dn_list;
        self.syslog_socket = new.syslog_socket;
        changed
    }
}

/// `name` beside `dir` (in its parent), as libvirt keeps `storage/` beside `qemu/`.
fn sibling(dir: &Path, name: &str) -> PathBuf {
    dir.parent().unwrap_or(dir).join(name)
}
