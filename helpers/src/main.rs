//! `libvirt-helper`: one guest, run with KVM directly (no QEMU).
//!
//! Started by the broker with its control channel on fd 3. It greets the
//! broker with its protocol version, receives `HelperCommand::Start` with
//! every fd it needs, each named by its role (`/dev/kvm`, the kernel, the
//! console, ...), opens no path itself, runs the guest, and reports how it
//! stopped. Written for hardware KVM; proven on emulating KVM with the test
//! guest in `tests/guest/`.

mod acpi;
mod block;
mod boot;
mod bus;
mod cpu;
mod devices;
mod events;
mod layout;
mod link;
mod mmio;
mod pci;
mod vcpu;
mod virtio;
mod vm;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use libvirtd::privsep::Channel;
use libvirtd::privsep::helper::{FdRole, HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent, StopReason};

/// Where the broker puts the control channel.
const CHANNEL_FD: i32 = 3;
/// How long to wait for the broker's `Start`, in ms.
const START_TIMEOUT_MS: u16 = 10_000;

fn main() -> ExitCode {
    // SAFETY: the broker's spawn placed the channel on fd 3 and nothing else
    // in this freshly exec'd process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    let Ok(channel) = Channel::from_fd(fd) else {
        eprintln!("libvirt-helper: no control channel on fd 3");
        return ExitCode::FAILURE;
    };
    // Speak first: the broker reads nothing from a helper before this.
    if let Err(e) = link::greet(&channel) {
        eprintln!("libvirt-helper: cannot greet the broker: {e}");
        return ExitCode::FAILURE;
    }
    let (command, fds) = match channel.recv_blocking::<HelperCommand>(START_TIMEOUT_MS, HelperCommand::fd_count) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("libvirt-helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let HelperCommand::Start { version, config, .. } = &command else {
        eprintln!("libvirt-helper: expected Start");
        return ExitCode::FAILURE;
    };
    let mut link = link::Link::new(channel);
    // Before the guest runs, only the broker that started it can hear why not.
    let failed = |link: link::Link, detail: String| {
        link.last_word(None, &HelperEvent::Stopped { reason: StopReason::Failed, detail });
        ExitCode::FAILURE
    };
    if *version != HELPER_PROTOCOL_VERSION {
        let why = format!(
            "the broker speaks helper protocol version {version}; this helper speaks version {HELPER_PROTOCOL_VERSION}"
        );
        return failed(link, why);
    }
    let mut fds = match command.sort_fds(fds) {
        Ok(fds) => fds,
        Err(e) => return failed(link, format!("Start: {e}")),
    };
    let listener = match fds.require(FdRole::ControlListener) {
        Ok(l) => l,
        Err(e) => return failed(link, format!("Start: {e}")),
    };
    let (reason, detail) = match vm::run(config, fds, &listener, &mut link) {
        Ok(stop) => stop,
        Err(e) => (StopReason::Failed, e.to_string()),
    };
    // A broker that went away hears how the guest ended when it comes back.
    link.last_word(Some(&listener), &HelperEvent::Stopped { reason, detail });
    if reason == StopReason::Failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
