//! The VM, in places with one job each: [`builder`] assembles it from its
//! parts (memory, interrupt controllers, devices on the bus, vCPUs),
//! [`confine`] sandboxes the process once nothing needs privilege or a
//! path any more, [`control`] runs the loop that joins broker commands,
//! device fds and vCPU exits, and [`machine::Machine`] owns what must go in
//! a fixed order when the VM ends. [`run`] puts them in sequence.

pub mod balloon;
pub mod builder;
pub mod confine;
pub mod control;
pub mod disks;
pub mod gsi;
pub mod machine;
pub mod nets;
pub mod pci_plug;
pub mod rtc_reports;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use libvirtd::privsep::helper::{FdRole, GuestConfig, HelperEvent, ManifestError, RoleFds, StopReason};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::events::{EventError, EventLoop};
use crate::link::Link;
use crate::vcpu::{VcpuError, Vcpus};

/// Why the VM could not run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `Start`'s fds did not fit.
    #[error("Start: {0}")]
    Manifest(#[from] ManifestError),
    /// `Start` carried fds nothing took.
    #[error("Start: fds with roles {0:?} have no use")]
    UnusedFds(Vec<FdRole>),
    /// The VM could not be built.
    #[error(transparent)]
    Build(#[from] builder::BuildError),
    /// The process could not be confined.
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
    /// The event loop failed.
    #[error(transparent)]
    Events(#[from] EventError),
    /// The vCPU threads failed.
    #[error(transparent)]
    Vcpus(#[from] VcpuError),
    /// The stop eventfd could not be made.
    #[error("eventfd: {0}")]
    Eventfd(std::io::Error),
}

/// Builds, confines and runs the guest until it stops; returns why. The
/// vCPU threads are joined (or named, if they did not leave) by then.
/// `listener` is where a restarted broker reconnects.
pub fn run(
    config: &GuestConfig,
    mut fds: RoleFds,
    listener: &OwnedFd,
    link: &mut Link,
) -> Result<(StopReason, String), VmError> {
    let files = builder::BootFiles {
        kvm: fds.require(FdRole::Kvm)?,
        kernel: fds.require(FdRole::Kernel)?,
        initrd: fds.take(FdRole::Initrd),
        disks: disks::take_layers(config, &mut fds)?,
        memory: fds.take(FdRole::GuestMemory),
        taps: nets::take_taps(config, &mut fds)?,
    };
    let built = builder::build(config, files)?;
    // Everything that needs privilege or a path is done: confine the
    // process before the guest runs a single instruction.
    let profile = confine::process(config.ids)?;
    // The disks' I/O threads, each under its own filter; stopped and joined
    // when dropped, after the vCPUs.
    let mut io_threads = Vec::with_capacity(built.workers.len());
    for (index, worker) in built.workers.into_iter().enumerate() {
        let name = format!("helper-io{index}");
        io_threads.push(worker.spawn(name, move || confine::io_thread(index)).map_err(VmError::Eventfd)?);
    }
    // The balloon's thread, under the I/O threads' filter (madvise is in it).
    let index = io_threads.len();
    let balloon_thread = built
        .balloon
        .map(|worker| worker.spawn(format!("helper-io{index}"), move || confine::io_thread(index)))
        .transpose()
        .map_err(VmError::Eventfd)?;
    // Each network interface's thread, under the `net` filter.
    let mut net_threads = Vec::with_capacity(built.nets.len());
    for (index, worker) in built.nets.into_iter().enumerate() {
        let name = format!("helper-net{index}");
        net_threads.push(worker.spawn(name, move || confine::net_thread(index)).map_err(VmError::Eventfd)?);
    }
    let mut events = EventLoop::new()?;
    events.add_subscriber(Box::new(built.console))?;
    // The console's fds go to the device that owns them.
    events.deliver(&mut fds)?;
    if !fds.roles().is_empty() {
        return Err(VmError::UnusedFds(fds.roles()));
    }

    let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Eventfd)?);
    let reason: Arc<Mutex<Option<(StopReason, String)>>> = Arc::default();
    let report = {
        let (stop, reason) = (stop.clone(), reason.clone());
        move |r: StopReason, detail: String| {
            if let Ok(mut slot) = reason.lock() {
                slot.get_or_insert((r, detail));
            }
            let _ = stop.write(1);
        }
    };
    let mut machine = built.machine;
    machine.set_vcpus(Vcpus::spawn(built.vcpus, confine::vcpu_thread, report, built.stopping)?);
    confine::control_thread(profile)?;

    let mut ops = events.control();
    ops.add(stop.as_raw_fd(), EventSet::IN)?;
    ops.add(listener.as_raw_fd(), EventSet::IN)?;
    if let Some(fd) = link.fd() {
        ops.add(fd, EventSet::IN)?;
    }
    if let Some(io_errors) = &built.devices.io_errors {
        ops.add(io_errors.as_raw_fd(), EventSet::IN)?;
    }
    ops.add(built.devices.rtc.fd.as_raw_fd(), EventSet::IN)?;
    link.send(&HelperEvent::Started, &mut ops);
    let devices = built.devices;
    let outcome = control::Control {
        machine: &machine,
        devices: &devices,
        events: &mut events,
        link,
        listener,
        stop: &stop,
        memory_mib: config.memory_mib,
        rtc_limit: rtc_reports::RateLimit::default(),
    }
    .run();
    let vcpu_reason = reason.lock().ok().and_then(|mut r| r.take());
    // The vCPUs go first (see `Machine`); the devices and the event loop
    // after them, here on the control thread.
    if let Err(e) = machine.end() {
        eprintln!("libvirt-helper: {e}");
    }
    drop((io_threads, balloon_thread, net_threads, devices, events));
    Ok(match outcome? {
        control::Ended::Broker(reason, detail) => (reason, detail),
        control::Ended::Vcpu => vcpu_reason.unwrap_or((StopReason::Failed, "vCPU ended".into())),
    })
}
