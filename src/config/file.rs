//! Parsing `libvirtd.conf` onto a [`Config`].

use std::path::{Path, PathBuf};

use toml::Value;

use super::{Config, ConfigError};
use crate::logging::{LogConfig, parse_filters, parse_outputs};

/// libvirt keys this daemon recognises but does not implement: warned about, not rejected.
const UNSUPPORTED_LIBVIRT_KEYS: &[&str] = &[
    "listen_addr_tls",
    "mdns_adv",
    "mdns_name",
    "unix_sock_ro_group",
    "unix_sock_rw_group",
    "auth_unix_ro",
    "auth_unix_rw",
    "access_drivers",
    "sasl_allowed_username_list",
    "tls_priority",
    "min_workers",
    "max_workers",
    "prio_workers",
    "max_queued_clients",
    "admin_min_workers",
    "admin_max_workers",
    "admin_max_queued_clients",
    "admin_max_client_requests",
    "admin_keepalive_interval",
    "admin_keepalive_count",
    "keepalive_required",
    "log_buffer_size",
    "host_uuid_source",
    "ovs_timeout",
    "tcp_min_ssf",
    "tls_certificate_expiry_warning",
    "tls_certificate_expiry_warning_time",
];

/// Longest string value accepted.
const MAX_STRING: usize = 4096;
/// Most entries in a list value.
const MAX_LIST: usize = 1024;

/// Applies the keys of `text` (the contents of `path`) over `config`.
/// Returns the configuration and one warning per ignored key.
pub fn parse(text: &str, path: &Path, mut config: Config) -> Result<(Config, Vec<String>), ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string().replace('\n', " ").trim().to_owned(),
    })?;
    let mut warnings = Vec::new();
    let mut log_level = None;
    let mut log_filters = None;
    let mut log_outputs = None;
    for (key, value) in &table {
        let v = Val { path, key, value };
        let c = &mut config;
        match key.as_str() {
            "unix_sock_dir" => c.unix_sock_dir = v.abs_path()?,
            "unix_sock_group" => c.unix_sock_group = Some(v.string()?).filter(|g| !g.is_empty()),
            "unix_sock_ro_perms" => c.unix_sock_ro_perms = v.perms()?,
            "unix_sock_rw_perms" => c.unix_sock_rw_perms = v.perms()?,
            "unix_sock_admin_perms" => c.unix_sock_admin_perms = v.perms()?,
            "listen_tls" => c.listen_tls = v.boolean()?,
            "listen_tcp" => c.listen_tcp = v.boolean()?,
            "listen_addr" => c.listen_addr = v.string()?,
            "tcp_port" => c.tcp_port = v.int_in(1, 65535)? as u16,
            "tls_port" => c.tls_port = v.int_in(1, 65535)? as u16,
            "max_clients" => c.max_clients = v.int_in(1, 1 << 20)? as u32,
            "max_anonymous_clients" => c.max_anonymous_clients = v.int_in(0, 1 << 20)? as u32,
            "max_client_requests" => c.max_client_requests = v.int_in(1, 4096)? as u32,
            "admin_max_clients" => c.admin_max_clients = v.int_in(1, 1 << 20)? as u32,
            "keepalive_interval" => c.keepalive_interval = v.int_in(-1, 86400)? as i32,
            "keepalive_count" => c.keepalive_count = v.int_in(0, 1000)? as u32,
            "log_level" => log_level = Some(v.int_in(1, 4)? as u8),
            "log_filters" => log_filters = Some(v.string()?),
            "log_outputs" => log_outputs = Some(v.string()?),
            "audit_level" => c.audit_level = v.int_in(0, 2)? as u8,
            "audit_logging" => c.audit_logging = v.boolean()?,
            "host_uuid" => c.host_uuid = Some(v.uuid()?),
            "key_file" => c.key_file = v.abs_path()?,
            "cert_file" => c.cert_file = v.abs_path()?,
            "ca_file" => c.ca_file = v.abs_path()?,
            "crl_file" => c.crl_file = Some(v.abs_path()?),
            "tls_no_verify_certificate" => c.tls_no_verify_certificate = v.boolean()?,
            "tls_allowed_dn_list" => c.tls_allowed_dn_list = v.string_list()?,
            "auth_tls" => {
                if v.string()? != "none" {
                    return Err(v.bad(
                        "SASL is not supported: TLS clients are authenticated by their certificate; use \"none\"",
                    ));
                }
            }
            "auth_tcp" => {
                let s = v.string()?;
                if s != "none" && s != "sasl" {
                    return Err(v.bad("expected \"none\" or \"sasl\""));
                }
                c.auth_tcp = s;
            }
            "frontend_uid" => c.frontend_uid = v.int_in(1, u32::MAX as i64 - 1)? as u32,
            "frontend_gid" => c.frontend_gid = v.int_in(1, u32::MAX as i64 - 1)? as u32,
            "helper_uid_min" => c.helper_uid_min = v.int_in(1, u32::MAX as i64 - 1)? as u32,
            "helper_uid_max" => c.helper_uid_max = v.int_in(1, u32::MAX as i64 - 1)? as u32,
            "domain_config_dir" => c.domain_config_dir = v.abs_path()?,
            "domain_state_dir" => c.domain_state_dir = v.abs_path()?,
            "syslog_socket" => c.syslog_socket = v.abs_path()?,
            "default_network" => c.default_network = v.boolean()?,
            "cgroup_mount" => c.cgroup_mount = v.abs_path()?,
            "cgroup_partition" => {
                let s = v.string()?;
                if crate::broker::cgroup::partition_parts(&s).is_none() {
                    return Err(v.bad("expected a cgroup path such as \"/machine.slice\", without '..'"));
                }
                c.cgroup_partition = s;
            }
            k if UNSUPPORTED_LIBVIRT_KEYS.contains(&k) => warnings
                .push(format!("{}: configuration key '{k}' is not supported by this daemon (ignored)", path.display())),
            k => warnings.push(format!("{}: unknown configuration key '{k}' (ignored)", path.display())),
        }
    }
    if config.helper_uid_min > config.helper_uid_max {
        return Err(ConfigError::Value {
            path: path.to_owned(),
            key: "helper_uid_max".into(),
            reason: "must not be below helper_uid_min".into(),
        });
    }
    let frontend_in_helpers = (config.helper_uid_min..=config.helper_uid_max).contains(&config.frontend_uid);
    if frontend_in_helpers {
        return Err(ConfigError::Value {
            path: path.to_owned(),
            key: "frontend_uid".into(),
            reason: "must lie outside helper_uid_min..helper_uid_max".into(),
        });
    }
    config.log = LogConfig {
        level: log_level.unwrap_or(config.log.level),
        filters: match log_filters {
            Some(s) => parse_filters(&s).map_err(|reason| value_err(path, "log_filters", reason))?,
            None => config.log.filters,
        },
        outputs: match log_outputs {
            Some(s) => parse_outputs(&s).map_err(|reason| value_err(path, "log_outputs", reason))?,
            None => config.log.outputs,
        },
    };
    Ok((config, warnings))
}

fn value_err(path: &Path, key: &str, reason: String) -> ConfigError {
    ConfigError::Value { path: path.to_owned(), key: key.to_owned(), reason }
}

/// One key's value, with what is needed to name it in an error.
struct Val<'a> {
    path: &'a Path,
    key: &'a str,
    value: &'a Value,
}

impl Val<'_> {
    fn bad(&self, reason: &str) -> ConfigError {
        value_err(self.path, self.key, reason.to_owned())
    }

    fn string(&self) -> Result<String, ConfigError> {
        match self.value {
            Value::String(s) if s.len() <= MAX_STRING && !s.contains('\0') => Ok(s.clone()),
            Value::String(_) => Err(self.bad("string too long or contains NUL")),
            _ => Err(self.bad("expected a string")),
        }
    }

    fn abs_path(&self) -> Result<PathBuf, ConfigError> {
        let s = self.string()?;
        if !s.starts_with('/') {
            return Err(self.bad("expected an absolute path"));
        }
        Ok(PathBuf::from(s))
    }

    fn int_in(&self, min: i64, max: i64) -> Result<i64, ConfigError> {
        match self.value {
            Value::Integer(i) if (min..=max).contains(i) => Ok(*i),
            Value::Integer(_) => Err(self.bad(&format!("expected an integer from {min} to {max}"))),
            _ => Err(self.bad("expected an integer")),
        }
    }

    /// libvirt writes booleans as 0/1; TOML's true/false are accepted too.
    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.value {
            Value::Boolean(b) => Ok(*b),
            Value::Integer(0) => Ok(false),
            Value::Integer(1) => Ok(true),
            _ => Err(self.bad("expected 0 or 1")),
        }
    }

    /// libvirt writes modes as octal strings ("0770").
    fn perms(&self) -> Result<u32, ConfigError> {
        let s = self.string()?;
        match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o777 && !s.is_empty() => Ok(m),
            _ => Err(self.bad("expected an octal mode such as \"0770\"")),
        }
    }

    fn string_list(&self) -> Result<Vec<String>, ConfigError> {
        let Value::Array(items) = self.value else {
            return Err(self.bad("expected a list of strings"));
        };
        if items.len() > MAX_LIST {
            return Err(self.bad(&format!("more than {MAX_LIST} entries")));
        }
        items.iter().map(|value| Val { path: self.path, key: self.key, value }.string()).collect()
    }

    fn uuid(&self) -> Result<String, ConfigError> {
        let s = self.string()?.to_ascii_lowercase();
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let dashes_ok = s.len() == 32 || (s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| &s[i..=i] == "-"));
        let all_same = hex.chars().all(|c| hex.starts_with(c));
        if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) || !dashes_ok || all_same {
            return Err(self.bad("expected a UUID such as \"00000000-1111-2222-3333-444444444444\" with varied digits"));
        }
        Ok(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DefaultPaths, Mode, UserEnv};
    use crate::logging::OutputKind;

    fn defaults() -> Config {
        Config::defaults(&DefaultPaths::for_mode(Mode::System, &UserEnv::default()))
    }

    fn conf(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        parse(text, Path::new("/t.conf"), defaults())
    }

    #[test]
    fn libvirt_style_file_parses() {
        let (c, warnings) = conf(
            r#"
# a comment, as libvirt writes them
unix_sock_group = "libvirt"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
listen_tls = 0
listen_tcp = 1
tcp_port = 16600
log_level = 1
log_filters = "3:remote 4:event"
log_outputs = "2:stderr 1:syslog:libvirtd"
tls_allowed_dn_list = ["C=GB,O=Example,CN=*", "CN=admin"]
host_uuid = "00000000-1111-2222-3333-444444444444"
"#,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.unix_sock_group.as_deref(), Some("libvirt"));
        assert_eq!(c.unix_sock_rw_perms, 0o770);
        assert!(!c.listen_tls && c.listen_tcp);
        assert_eq!(c.tcp_port, 16600);
        assert_eq!(c.log.level, 1);
        assert_eq!(c.log.filters.len(), 2);
        assert_eq!(c.log.outputs[1].kind, OutputKind::Syslog("libvirtd".into()));
        assert_eq!(c.tls_allowed_dn_list.len(), 2);
    }

    #[test]
    fn defaults_match_libvirt() {
        let (c, _) = conf("").unwrap();
        assert_eq!((c.unix_sock_ro_perms, c.unix_sock_rw_perms, c.unix_sock_admin_perms), (0o777, 0o700, 0o700));
        assert_eq!((c.tcp_port, c.tls_port), (16509, 16514));
        assert!(c.listen_tls && !c.listen_tcp);
        assert_eq!(c.unix_sock_dir, PathBuf::from("/run/libvirt"));
    }

    #[test]
    fn unknown_keys_are_warned_not_fatal() {
        let (_, w) = conf("frobnicate = 1\nmdns_adv = 0\n").unwrap();
        assert_eq!(w.len(), 2);
        assert!(w.iter().any(|w| w.contains("unknown configuration key 'frobnicate'")));
        assert!(w.iter().any(|w| w.contains("'mdns_adv' is not supported")));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("tcp_port = 70000", "tcp_port"),
            ("unix_sock_rw_perms = \"0999\"", "unix_sock_rw_perms"),
            ("listen_tls = \"yes\"", "listen_tls"),
            ("log_level = 7", "log_level"),
            ("log_outputs = \"3:carrier-pigeon\"", "log_outputs"),
            ("log_filters = \"x:remote\"", "log_filters"),
            ("unix_sock_dir = \"relative\"", "unix_sock_dir"),
            ("host_uuid = \"11111111-1111-1111-1111-111111111111\"", "host_uuid"),
            ("helper_uid_min = 10\nhelper_uid_max = 5", "helper_uid_max"),
            ("auth_tls = \"sasl\"", "auth_tls"),
            ("admin_max_clients = 0", "admin_max_clients"),
        ] {
            let err = conf(text).unwrap_err().to_string();
            assert!(err.contains(&format!("'{key}'")), "{text}: {err}");
        }
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = conf("log_level = = 3\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn overlong_lists_are_refused() {
        let list: Vec<String> = (0..=MAX_LIST).map(|i| format!("\"CN={i}\"")).collect();
        let err = conf(&format!("tls_allowed_dn_list = [{}]", list.join(","))).unwrap_err();
        assert!(err.to_string().contains("tls_allowed_dn_list"));
    }
}
