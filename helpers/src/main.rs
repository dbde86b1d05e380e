//! `libvirt-helper`: one guest, run with KVM directly (no QEMU).
//!
//! Started by the broker with its control channel on fd 3; receives
//! `HelperCommand::Start` with every fd it needs (`/dev/kvm`, the kernel,
//! the console), opens no path itself, runs the guest, and reports how it
//! stopped. Written for hardware KVM; proven on emulating KVM with the test
//! guest in `tests/guest/`.

mod acpi;
mod boot;
mod bus;
mod cpu;
mod mmio;
mod vcpu;
mod vm;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use libvirtd::privsep::Channel;
use libvirtd::privsep::helper::{HelperCommand, HelperEvent, StopReason};

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
    let (command, fds) = match channel.recv_blocking::<HelperCommand>(START_TIMEOUT_MS, HelperCommand::fd_count) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("libvirt-helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let HelperCommand::Start(config) = command else {
        eprintln!("libvirt-helper: expected Start");
        return ExitCode::FAILURE;
    };
    // The channel checked the count against the config: four, plus the initrd.
    let mut fds = fds.into_iter();
    let (Some(kvm), Some(kernel), Some(console), Some(listener)) = (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        eprintln!("libvirt-helper: Start without its fds");
        return ExitCode::FAILURE;
    };
    let files = vm::Files { kvm, kernel, initrd: fds.next(), console, listener };
    let mut link = Some(channel);
    let (reason, detail) = match vm::run(&config, files, &mut link) {
        Ok(stop) => stop,
        Err(e) => (StopReason::Failed, e),
    };
    if let Some(channel) = link {
        let _ = channel.send_wait(&HelperEvent::Stopped { reason, detail }, &[]);
    }
    if reason == StopReason::Failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
