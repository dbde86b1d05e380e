//! Calls that libvirt answers through the QEMU guest agent. The daemon has
//! no guest agent channel (`<channel>` is refused at define time), so each
//! answers as libvirt's QEMU driver does for a domain whose agent is not
//! configured, after the same state checks.

use super::domains::Entry;
use crate::privsep::CallError;

/// Why libvirt would not ask the agent: it checks that the domain runs and
/// is not paused, then that an agent is configured, which it never is here.
fn no_agent(e: &Entry) -> CallError {
    if e.id.is_none() || !e.state.is_running() {
        return CallError::NotRunning;
    }
    CallError::ArgumentUnsupported("QEMU guest agent is not configured".into())
}

/// `virDomainGetTime`: the guest's clock, which only an agent could read,
/// so always the error libvirt gives for a domain without one.
pub fn get_time(e: &Entry, flags: u32) -> Result<(i64, u32), CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetTime".into() });
    }
    Err(no_agent(e))
}
