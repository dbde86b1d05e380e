//! Log levels, filters and outputs in libvirt's syntax, written to stderr, syslog or files.
//!
//! Both processes install the same logger. The broker opens what the outputs
//! name; the frontend, which can open nothing, receives the opened fds from
//! the broker ([`LogState::handoff`] / [`LogState::from_handoff`]).

mod clock;
mod spec;
pub mod syslog;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

use ::syslog::{Facility, Severity};
use serde::{Deserialize, Serialize};

pub use clock::Utc;
pub use spec::{Filter, LogConfig, Output, OutputKind, Priority, parse_filters, parse_outputs, priority_of};
use syslog::SyslogSink;

/// An opened destination.
enum Target {
    Stderr,
    Syslog(SyslogSink),
    File(File),
}

/// What kind of fd accompanies each handed-off output, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinkSpec {
    /// Written to the process's own stderr: no fd.
    Stderr {
        /// Lowest priority written.
        priority: Priority,
    },
    /// A connected syslog datagram socket follows.
    Syslog {
        /// Lowest priority written.
        priority: Priority,
        /// Syslog tag.
        ident: String,
    },
    /// An append-only file follows.
    File {
        /// Lowest priority written.
        priority: Priority,
    },
}

/// The logger's live configuration and destinations.
pub struct LogState {
    config: LogConfig,
    targets: Vec<(Priority, Target)>,
}

impl LogState {
    /// Opens the outputs of `config` (broker side). An output that cannot be
    /// opened is skipped and reported in the returned warnings.
    pub fn open(config: &LogConfig, daemonized: bool, syslog_path: &Path) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut targets = Vec::new();
        for out in config.effective_outputs(daemonized) {
            let target = match &out.kind {
                OutputKind::Stderr => Target::Stderr,
                OutputKind::Syslog(ident) => {
                    let sink = SyslogSink::at_path(syslog_path, Facility::LOG_DAEMON, ident);
                    if !sink.is_connected() {
                        warnings.push(format!(
                            "syslog socket {} is not reachable; syslog output waits for it",
                            syslog_path.display()
                        ));
                    }
                    Target::Syslog(sink)
                }
                OutputKind::File(path) => match std::fs::OpenOptions::new().append(true).create(true).open(path) {
                    Ok(f) => Target::File(f),
                    Err(e) => {
                        warnings.push(format!("cannot open log file {path}: {e}"));
                        continue;
                    }
                },
            };
            targets.push((out.priority, target));
        }
        (LogState { config: config.clone(), targets }, warnings)
    }

    /// Describes the outputs and duplicates their fds, for another process.
    pub fn handoff(&mut self) -> (LogConfig, Vec<SinkSpec>, Vec<OwnedFd>) {
        let mut specs = Vec::new();
        let mut fds = Vec::new();
        for (priority, target) in &mut self.targets {
            let priority = *priority;
            match target {
                Target::Stderr => specs.push(SinkSpec::Stderr { priority }),
                Target::Syslog(sink) => {
                    if let Some(sock) = sink.connected_socket() {
                        specs.push(SinkSpec::Syslog { priority, ident: sink_ident(sink) });
                        fds.push(OwnedFd::from(sock));
                    }
                }
                Target::File(f) => {
                    if let Ok(fd) = f.as_fd().try_clone_to_owned() {
                        specs.push(SinkSpec::File { priority });
                        fds.push(fd);
                    }
                }
            }
        }
        (self.config.clone(), specs, fds)
    }

    /// Rebuilds outputs from a handoff (frontend side). Fails if the fds do not
    /// match the specs one for one.
    pub fn from_handoff(config: LogConfig, specs: Vec<SinkSpec>, fds: Vec<OwnedFd>) -> Result<Self, String> {
        let mut fds = fds.into_iter();
        let mut targets = Vec::new();
        for spec in specs {
            let (priority, target) = match spec {
                SinkSpec::Stderr { priority } => (priority, Target::Stderr),
                SinkSpec::Syslog { priority, ident } => {
                    let fd = fds.next().ok_or("missing syslog fd")?;
                    let sock = UnixDatagram::from(fd);
                    (priority, Target::Syslog(SyslogSink::from_socket(sock, Facility::LOG_DAEMON, &ident)))
                }
                SinkSpec::File { priority } => {
                    (priority, Target::File(File::from(fds.next().ok_or("missing log file fd")?)))
                }
            };
            targets.push((priority, target));
        }
        if fds.next().is_some() {
            return Err("more log fds than outputs".into());
        }
        Ok(LogState { config, targets })
    }

    fn write(&mut self, record: &log::Record) {
        let priority = priority_of(record.level());
        if !self.config.enabled(priority, record.target()) {
            return;
        }
        let level = match priority {
            1 => "debug",
            2 => "info",
            3 => "warning",
            _ => "error",
        };
        let pid = std::process::id();
        let line = format!("{}: {pid}: {level} : {}: {}\n", Utc::now().log_stamp(), record.target(), record.args());
        for (floor, target) in &mut self.targets {
            if priority < *floor {
                continue;
            }
            match target {
                Target::Stderr => {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                }
                Target::File(f) => {
                    let _ = f.write_all(line.as_bytes());
                }
                Target::Syslog(sink) => {
                    let severity = match priority {
                        1 => Severity::LOG_DEBUG,
                        2 => Severity::LOG_INFO,
                        3 => Severity::LOG_WARNING,
                        _ => Severity::LOG_ERR,
                    };
                    sink.send(severity, &format!("{level} : {}", record.args()));
                }
            }
        }
    }
}

fn sink_ident(sink: &SyslogSink) -> String {
    sink.ident().to_owned()
}

/// The process-wide logger behind the `log` macros.
struct GlobalLogger {
    state: Mutex<Option<LogState>>,
}

static LOGGER: GlobalLogger = GlobalLogger { state: Mutex::new(None) };

impl log::Log for GlobalLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(state) => state.write(record),
            // Errors before the configuration is read are returned to main,
            // which prints them once; warnings have no other way out.
            None if record.level() == log::Level::Warn => {
                let _ = writeln!(std::io::stderr(), "libvirtd: {}: {}", record.level(), record.args());
            }
            None => {}
        }
    }

    fn flush(&self) {}
}

/// Makes `state` the process's logging configuration, installing the logger on first use.
pub fn install(state: LogState) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
    *LOGGER.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
}

/// Installs a bootstrap logger (warnings and errors to stderr) until the configuration is read.
pub fn install_bootstrap() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
}

/// Whether the installed outputs include standard error.
pub fn writes_to_stderr() -> bool {
    with_state(|s| s.targets.iter().any(|(_, t)| matches!(t, Target::Stderr))).unwrap_or(false)
}

/// Applies `f` to the installed state (for handoff to a new frontend).
pub fn with_state<R>(f: impl FnOnce(&mut LogState) -> R) -> Option<R> {
    LOGGER.state.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(f)
}
