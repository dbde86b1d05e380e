//! libvirt's logging settings: `log_level`, `log_filters` and `log_outputs`.
//!
//! Pure parsing, shared by the broker (which opens what the outputs name) and
//! the frontend (which writes to what the broker opened).

use serde::{Deserialize, Serialize};

/// Most filters or outputs in one setting.
const MAX_ENTRIES: usize = 64;

/// libvirt priorities: 1 debug, 2 info, 3 warning, 4 error.
pub type Priority = u8;

/// Converts a `log` level to a libvirt priority.
pub fn priority_of(level: log::Level) -> Priority {
    match level {
        log::Level::Trace | log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

/// `log_filters` entry: records whose target contains `pattern` are kept from `priority` up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Lowest priority kept.
    pub priority: Priority,
    /// Substring of the record's module path.
    pub pattern: String,
}

/// Where an output writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    /// The daemon's standard error.
    Stderr,
    /// Syslog, with this identity.
    Syslog(String),
    /// Appended to this file (opened by the broker).
    File(String),
}

/// `log_outputs` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Lowest priority written.
    pub priority: Priority,
    /// Destination.
    pub kind: OutputKind,
}

/// The logging part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// Default lowest priority (`log_level`).
    pub level: Priority,
    /// Per-module overrides, first match wins.
    pub filters: Vec<Filter>,
    /// Destinations; empty means the default for how the daemon runs.
    pub outputs: Vec<Output>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: 3, filters: Vec::new(), outputs: Vec::new() }
    }
}

impl LogConfig {
    /// Whether a record of `priority` from `target` passes the level and filters.
    pub fn enabled(&self, priority: Priority, target: &str) -> bool {
        let floor =
            self.filters.iter().find(|f| target.contains(f.pattern.as_str())).map_or(self.level, |f| f.priority);
        priority >= floor
    }

    /// The outputs to use: the configured ones, or stderr in the foreground
    /// and syslog when daemonized, as libvirtd does.
    pub fn effective_outputs(&self, daemonized: bool) -> Vec<Output> {
        if !self.outputs.is_empty() {
            return self.outputs.clone();
        }
        let kind = if daemonized { OutputKind::Syslog("libvirtd".into()) } else { OutputKind::Stderr };
        vec![Output { priority: self.level, kind }]
    }
}

fn priority(s: &str) -> Result<Priority, String> {
    match s {
        "1" => Ok(1),
        "2" => Ok(2),
        "3" => Ok(3),
        "4" => Ok(4),
        _ => Err(format!("'{s}' is not a priority from 1 (debug) to 4 (error)")),
    }
}

fn entries(s: &str) -> Result<Vec<&str>, String> {
    let v: Vec<&str> = s.split_whitespace().collect();
    if v.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} entries"));
    }
    Ok(v)
}

/// Parses `log_filters`: space-separated `priority:[+]name`.
pub fn parse_filters(s: &str) -> Result<Vec<Filter>, String> {
    entries(s)?
        .into_iter()
        .map(|e| {
            let (p, name) = e.split_once(':').ok_or_else(|| format!("'{e}' is not priority:name"))?;
            let name = name.strip_prefix('+').unwrap_or(name);
            if name.is_empty() || name.len() > 256 {
                return Err(format!("'{e}' has no usable name"));
            }
            Ok(Filter { priority: priority(p)?, pattern: name.to_owned() })
        })
        .collect()
}

/// Parses `log_outputs`: space-separated `priority:stderr`, `priority:syslog:ident`,
/// `priority:file:/absolute/path`.
pub fn parse_outputs(s: &str) -> Result<Vec<Output>, String> {
    entries(s)?
        .into_iter()
        .map(|e| {
            let mut parts = e.splitn(3, ':');
            let p = priority(parts.next().unwrap_or(""))?;
            let kind = match (parts.next(), parts.next()) {
                (Some("stderr"), None) => OutputKind::Stderr,
                (Some("syslog"), Some(ident)) if !ident.is_empty() && ident.len() <= 64 => {
                    OutputKind::Syslog(ident.to_owned())
                }
                (Some("file"), Some(path)) if path.starts_with('/') && path.len() <= 4096 => {
                    OutputKind::File(path.to_owned())
                }
                (Some("journald"), None) => {
                    return Err(format!("'{e}': journald output is not supported, use syslog"));
                }
                _ => return Err(format!("'{e}' is not stderr, syslog:NAME or file:/PATH")),
            };
            Ok(Output { priority: p, kind })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_filter_overrides_the_level() {
        let cfg = LogConfig { level: 3, filters: parse_filters("1:broker 4:frontend").unwrap(), outputs: vec![] };
        assert!(cfg.enabled(1, "libvirtd::broker::audit"));
        assert!(!cfg.enabled(3, "libvirtd::frontend"));
        assert!(cfg.enabled(3, "libvirtd::config"));
        assert!(!cfg.enabled(2, "libvirtd::config"));
    }

    #[test]
    fn outputs_parse_each_kind() {
        let o = parse_outputs("1:stderr 3:syslog:libvirtd 2:file:/var/log/l.log").unwrap();
        assert_eq!(o[0], Output { priority: 1, kind: OutputKind::Stderr });
        assert_eq!(o[1].kind, OutputKind::Syslog("libvirtd".into()));
        assert_eq!(o[2].kind, OutputKind::File("/var/log/l.log".into()));
    }

    #[test]
    fn bad_outputs_are_refused() {
        for bad in ["stderr", "5:stderr", "1:file:relative", "1:syslog:", "1:journald", "1:tape"] {
            assert!(parse_outputs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_output_depends_on_daemonizing() {
        let cfg = LogConfig::default();
        assert_eq!(cfg.effective_outputs(false)[0].kind, OutputKind::Stderr);
        assert_eq!(cfg.effective_outputs(true)[0].kind, OutputKind::Syslog("libvirtd".into()));
    }
}
