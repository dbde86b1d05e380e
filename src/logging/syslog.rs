//! Syslog datagrams on a socket the broker connected.
//!
//! The frontend cannot open `/dev/log` itself, so it is handed a connected
//! datagram socket; the broker keeps the path and reconnects lazily, since a
//! host may have no syslog daemon at all (then records are dropped, and the
//! daemon keeps working).
//!
//! Sockets are non-blocking: a syslog daemon that stops reading fills the
//! socket's small queue (ten datagrams by default on Linux), and a blocking
//! send would then wedge the daemon. Such records are dropped and counted.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use syslog::{Facility, LogFormat, Logger, LoggerBackend, Severity};

use super::clock::Utc;

/// RFC 3164 lines with a UTC timestamp; the crate's own formatter reads the
/// local time zone, which a sandboxed process cannot.
#[derive(Debug, Clone)]
pub struct Rfc3164Utc {
    /// Facility of every message.
    pub facility: Facility,
    /// The tag (`libvirtd`).
    pub ident: String,
    /// The sender's pid.
    pub pid: u32,
}

impl LogFormat<&str> for Rfc3164Utc {
    fn format<W: io::Write>(&self, w: &mut W, severity: Severity, message: &str) -> syslog::Result<()> {
        let pri = self.facility as u8 | severity as u8;
        write!(w, "<{pri}>{} {}[{}]: {message}", Utc::now().syslog_stamp(), self.ident, self.pid)
            .map_err(syslog::Error::Write)
    }
}

/// How long a broker waits before trying an unreachable syslog socket again.
const RETRY: Duration = Duration::from_secs(5);

/// One syslog destination.
pub struct SyslogSink {
    logger: Option<Logger<LoggerBackend, Rfc3164Utc>>,
    /// Where to reconnect; `None` in the frontend, which cannot.
    path: Option<PathBuf>,
    formatter: Rfc3164Utc,
    last_attempt: Option<Instant>,
    dropped: u64,
}

impl SyslogSink {
    /// A sink that connects to `path` now and again after failures.
    pub fn at_path(path: &Path, facility: Facility, ident: &str) -> Self {
        let mut sink = SyslogSink {
            logger: None,
            path: Some(path.to_owned()),
            formatter: Rfc3164Utc { facility, ident: ident.to_owned(), pid: std::process::id() },
            last_attempt: None,
            dropped: 0,
        };
        sink.reconnect();
        sink
    }

    /// A sink over an already connected socket (the frontend's).
    pub fn from_socket(sock: UnixDatagram, facility: Facility, ident: &str) -> Self {
        let formatter = Rfc3164Utc { facility, ident: ident.to_owned(), pid: std::process::id() };
        let _ = sock.set_nonblocking(true);
        SyslogSink {
            logger: Some(Logger::new(LoggerBackend::Unix(sock), formatter.clone())),
            path: None,
            formatter,
            last_attempt: None,
            dropped: 0,
        }
    }

    /// Records dropped because syslog was not reading, since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The syslog tag.
    pub fn ident(&self) -> &str {
        &self.formatter.ident
    }

    /// Whether the socket is connected now.
    pub fn is_connected(&self) -> bool {
        self.logger.is_some()
    }

    /// A second connected socket to the same destination, to hand to another process.
    pub fn connected_socket(&mut self) -> Option<UnixDatagram> {
        if self.logger.is_none() {
            self.reconnect();
        }
        let path = self.path.as_ref()?;
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect(path).ok()?;
        Some(sock)
    }

    fn reconnect(&mut self) {
        let Some(path) = &self.path else { return };
        if self.last_attempt.is_some_and(|t| t.elapsed() < RETRY) {
            return;
        }
        self.last_attempt = Some(Instant::now());
        let sock =
            UnixDatagram::unbound().and_then(|s| s.connect(path).and_then(|()| s.set_nonblocking(true)).map(|()| s));
        self.logger = sock.ok().map(|s| Logger::new(LoggerBackend::Unix(s), self.formatter.clone()));
    }

    /// Sends one record; returns whether it was handed to syslog.
    pub fn send(&mut self, severity: Severity, message: &str) -> bool {
        if self.logger.is_none() {
            self.reconnect();
        }
        let Some(logger) = &mut self.logger else {
            return false;
        };
        match logger.formatter.format(&mut logger.backend, severity, message) {
            Ok(()) => true,
            Err(syslog::Error::Write(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.dropped += 1;
                false
            }
            Err(_) => {
                self.logger = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reach_a_listening_socket_with_priority_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut sink = SyslogSink::at_path(&path, Facility::LOG_AUTHPRIV, "libvirtd");
        assert!(sink.send(Severity::LOG_NOTICE, "hello"));
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(line.starts_with("<85>"), "{line}");
        assert!(line.ends_with(&format!("libvirtd[{}]: hello", std::process::id())), "{line}");
    }

    #[test]
    fn a_syslog_that_stops_reading_never_blocks_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let _server = UnixDatagram::bind(&path).unwrap();
        let mut sink = SyslogSink::at_path(&path, Facility::LOG_AUTHPRIV, "libvirtd");
        let sent = (0..1000).filter(|_| sink.send(Severity::LOG_INFO, "flood")).count();
        assert!(sent < 1000);
        assert_eq!(sink.take_dropped(), (1000 - sent) as u64);
    }

    #[test]
    fn a_missing_socket_drops_records_without_failing() {
        let mut sink = SyslogSink::at_path(Path::new("/nonexistent/log"), Facility::LOG_DAEMON, "x");
        assert!(!sink.is_connected());
        assert!(!sink.send(Severity::LOG_INFO, "dropped"));
    }
}
