//! Audit records: one fixed, grep-able line per event, to syslog (LOG_AUTHPRIV).
//!
//! Modelled on libvirt's audit messages (`virt=kvm op=... res=success`):
//!
//! ```text
//! libvirtd-audit: virt=kvm op=client-open conn=3 sock=rw uid=0 gid=0 pid=4242 res=success
//! ```
//!
//! Text values are written `key="value"` when they hold only safe characters
//! and as upper-case hex otherwise (as the kernel audit subsystem does), so a
//! client-chosen name can never forge a field.

use std::fmt::Write as _;
use std::path::Path;

use syslog::{Facility, Severity};

use crate::logging::syslog::SyslogSink;
use crate::privsep::PeerIdentity;

/// Prefix of every record, for grep.
pub const TAG: &str = "libvirtd-audit:";

/// One field's value.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    /// Printed as is.
    Num(i64),
    /// Quoted, or hex-encoded if it holds anything but safe characters.
    Text(&'a str),
}

/// Formats one record (pure, for tests and for the log copy).
pub fn format(op: &str, fields: &[(&str, Value<'_>)], success: bool) -> String {
    let mut line = format!("{TAG} virt=kvm op={op}");
    for (k, v) in fields {
        // A reason may quote what a client sent (an error about its XML):
        // cut as the client's own error message is, so a record always fits
        // one syslog datagram.
        let clipped;
        let v = match v {
            Value::Text(s) => {
                clipped = crate::rpc::error::clip(s, crate::rpc::error::MAX_MESSAGE_BYTES);
                &Value::Text(&clipped)
            }
            other => other,
        };
        match v {
            Value::Num(n) => {
                let _ = write!(line, " {k}={n}");
            }
            Value::Text(s) if is_safe(s) => {
                let _ = write!(line, " {k}=\"{s}\"");
            }
            Value::Text(s) => {
                let _ = write!(line, " {k}=");
                for b in s.bytes() {
                    let _ = write!(line, "{b:02X}");
                }
            }
        }
    }
    line.push_str(if success { " res=success" } else { " res=failed" });
    line
}

fn is_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/@+-,=*".contains(&b))
}

/// A client connection's number and identity as audit fields.
pub fn client_fields(conn: u64, peer: &PeerIdentity) -> Vec<(&'static str, Value<'_>)> {
    let mut f = vec![("conn", Value::Num(conn as i64))];
    f.extend(peer_fields(peer));
    f
}

/// The client's identity as audit fields.
pub fn peer_fields(peer: &PeerIdentity) -> Vec<(&'static str, Value<'_>)> {
    let mut f = vec![("sock", Value::Text(peer.socket.name()))];
    if let Some(uid) = peer.uid {
        f.push(("uid", Value::Num(uid.into())));
    }
    if let Some(gid) = peer.gid {
        f.push(("gid", Value::Num(gid.into())));
    }
    if let Some(pid) = peer.pid {
        f.push(("pid", Value::Num(pid.into())));
    }
    if let Some(addr) = &peer.addr {
        f.push(("addr", Value::Text(addr)));
    }
    if let Some(dn) = &peer.dn {
        f.push(("dn", Value::Text(dn)));
    }
    f
}

/// Writes audit records.
pub struct Auditor {
    sink: SyslogSink,
    level: u8,
    copy_to_log: bool,
}

impl Auditor {
    /// Audits to the syslog socket at `path`. `level` is `audit_level`
    /// (0 off, 1 on, 2 required); `copy_to_log` is `audit_logging`.
    pub fn new(path: &Path, level: u8, copy_to_log: bool) -> Self {
        Auditor { sink: SyslogSink::at_path(path, Facility::LOG_AUTHPRIV, "libvirtd"), level, copy_to_log }
    }

    /// Whether records can be delivered now (checked at start for `audit_level = 2`).
    pub fn is_connected(&self) -> bool {
        self.sink.is_connected()
    }

    /// Writes one record.
    /// Records what happened to client `conn`'s connection, with the reason
    /// when there is one.
    pub fn client(&mut self, op: &str, conn: u64, peer: &PeerIdentity, reason: Option<&str>, success: bool) {
        let mut fields = client_fields(conn, peer);
        fields.extend(reason.map(|r| ("reason", Value::Text(r))));
        self.record(op, &fields, success);
    }

    pub fn record(&mut self, op: &str, fields: &[(&str, Value<'_>)], success: bool) {
        if self.level == 0 {
            return;
        }
        let line = format(op, fields, success);
        let severity = if success { Severity::LOG_INFO } else { Severity::LOG_WARNING };
        let delivered = self.sink.send(severity, &line);
        if self.copy_to_log || (!delivered && self.level >= 2) {
            log::info!(target: "libvirtd::audit", "{line}");
        }
        let dropped = self.sink.take_dropped();
        if dropped > 0 {
            log::warn!("{dropped} audit record(s) dropped: the syslog daemon is not reading its socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::ListenerKind;

    #[test]
    fn long_texts_are_cut_before_they_are_written() {
        let reason = "r".repeat(100_000);
        let line = format("define", &[("reason", Value::Text(&reason))], false);
        assert!(line.len() < 2 * crate::rpc::error::MAX_MESSAGE_BYTES + 100, "{} bytes", line.len());
        assert!(line.ends_with(" res=failed"));
    }

    #[test]
    fn records_have_a_fixed_shape() {
        let peer = PeerIdentity {
            socket: ListenerKind::ReadOnly,
            uid: Some(1000),
            gid: Some(100),
            pid: Some(42),
            addr: None,
            dn: None,
        };
        let mut fields = vec![("conn", Value::Num(3))];
        fields.extend(peer_fields(&peer));
        assert_eq!(
            format("client-open", &fields, true),
            "libvirtd-audit: virt=kvm op=client-open conn=3 sock=\"ro\" uid=1000 gid=100 pid=42 res=success"
        );
    }

    #[test]
    fn unsafe_text_is_hex_encoded_so_it_cannot_forge_fields() {
        let line = format("define", &[("vm", Value::Text("x res=success"))], false);
        assert!(line.ends_with("vm=78207265733D73756363657373 res=failed"), "{line}");
    }
}
