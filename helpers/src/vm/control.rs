//! The control loop, on the helper's main thread: broker commands, a
//! restarted broker reconnecting, and the vCPUs' stop eventfd, all through
//! the event loop (which also runs the devices' own fds). Each command is
//! answered within a bound: a pause waits for the vCPUs at most
//! [`PAUSE_BOUND`], and nothing here waits for a device lock a vCPU can
//! hold across a blocking write.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use libvirtd::privsep::helper::{DeviceAnswer, GuestStats, HelperCommand, HelperEvent, StopReason};
use vmm_sys_util::eventfd::EventFd;

use super::builder::Devices;
use super::machine::Machine;
use crate::events::{EventError, EventLoop, Ready};
use crate::link::Link;
use crate::vcpu::PAUSE_BOUND;

/// Why hotplug is refused, for now.
const NO_HOTPLUG: &str = "this helper has no PCI hotplug, so it cannot plug or unplug devices in a running guest";

/// How the loop ended.
pub enum Ended {
    /// The broker asked (stop, reset).
    Broker(StopReason, String),
    /// A vCPU ended the VM; it reported why.
    Vcpu,
}

/// What the loop acts on.
pub struct Control<'a> {
    /// The VM and its vCPUs.
    pub machine: &'a Machine,
    /// The devices it acts on by name.
    pub devices: &'a Devices,
    /// Device fds, and its own.
    pub events: &'a mut EventLoop,
    /// The broker, when there is one.
    pub link: &'a mut Link,
    /// Where a restarted broker reconnects.
    pub listener: &'a OwnedFd,
    /// Written by the vCPU that ends the VM.
    pub stop: &'a EventFd,
    /// Guest RAM, for `Stats`.
    pub memory_mib: u64,
    /// Which of the guest's clock changes go to the broker, and when.
    pub rtc_limit: super::rtc_reports::RateLimit,
}

impl Control<'_> {
    /// Runs until the guest or the broker ends the VM.
    pub fn run(&mut self) -> Result<Ended, EventError> {
        loop {
            // The clock's lock is held only for a register access.
            let tick = self.devices.clock.lock().unwrap_or_else(|p| p.into_inner()).next_tick_ms();
            let timeout = [self.rtc_limit.wait_ms(Instant::now()), tick].into_iter().flatten().min();
            let mut ready = self.events.wait(timeout)?;
            if tick.is_some() {
                self.devices.clock.lock().unwrap_or_else(|p| p.into_inner()).tick();
            }
            if let Some(offset_secs) = self.rtc_limit.due(Instant::now()) {
                self.answer(&HelperEvent::RtcChange { offset_secs });
            }
            // A reconnecting broker first (it replaces the link), then a
            // stopped guest, then commands.
            ready.sort_by_key(|r| self.rank(r));
            for r in ready {
                if r.fd == self.listener.as_raw_fd() {
                    self.link.accept(self.listener, &mut self.events.control());
                } else if r.fd == self.stop.as_raw_fd() {
                    return Ok(Ended::Vcpu);
                } else if self.devices.io_errors.as_ref().is_some_and(|e| e.as_raw_fd() == r.fd) {
                    self.report_io_errors();
                } else if r.fd == self.devices.rtc.fd.as_raw_fd() {
                    let offset = self.devices.rtc.take();
                    if let Some(offset_secs) = offset.and_then(|o| self.rtc_limit.offer(o, Instant::now())) {
                        self.answer(&HelperEvent::RtcChange { offset_secs });
                    }
                } else if Some(r.fd) == self.link.fd()
                    && let Some(ended) = self.commands()
                {
                    return Ok(ended);
                }
            }
        }
    }

    fn rank(&self, r: &Ready) -> u8 {
        match r.fd {
            fd if fd == self.listener.as_raw_fd() => 0,
            fd if fd == self.stop.as_raw_fd() => 1,
            _ => 2,
        }
    }

    /// Carries out every command that has arrived.
    fn commands(&mut self) -> Option<Ended> {
        while let Some((command, fds)) = self.link.recv(&mut self.events.control()) {
            if let Some(ended) = self.command(command, fds) {
                return Some(ended);
            }
        }
        None
    }

    /// Tells the broker of each disk's backend error waiting, unasked.
    fn report_io_errors(&mut self) {
        if let Some(e) = &self.devices.io_errors {
            // Drains the counter; the reports themselves are in the disks.
            let _ = e.read();
        }
        let reports: Vec<(String, String)> = self
            .devices
            .disks
            .iter()
            .filter_map(|d| d.stats.take_report().map(|detail| (d.alias.clone(), detail)))
            .collect();
        for (alias, detail) in reports {
            self.answer(&HelperEvent::IoError { alias, detail });
        }
    }

    fn answer(&mut self, event: &HelperEvent) {
        self.link.send(event, &mut self.events.control());
    }

    fn command(&mut self, command: HelperCommand, fds: Vec<OwnedFd>) -> Option<Ended> {
        let machine: &Machine = self.machine;
        let vcpus = machine.vcpus();
        match &command {
            HelperCommand::Stop => return Some(Ended::Broker(StopReason::Destroyed, "stopped by the broker".into())),
            HelperCommand::Reset => return Some(Ended::Broker(StopReason::Reset, "reset by the broker".into())),
            HelperCommand::Start { .. } => {
                return Some(Ended::Broker(StopReason::Failed, "the broker sent a second Start".into()));
            }
            HelperCommand::Pause => {
                let event = match vcpus.map(|v| v.pause(PAUSE_BOUND)) {
                    Some(Err(e)) => HelperEvent::PauseFailed { detail: e.to_string() },
                    _ => HelperEvent::Paused,
                };
                self.answer(&event);
            }
            HelperCommand::Resume => {
                if let Some(v) = vcpus {
                    v.resume();
                }
                self.answer(&HelperEvent::Resumed);
            }
            HelperCommand::CtrlAltDel => {
                // The i8042's lock is held only for a register access.
                self.devices.i8042.lock().unwrap_or_else(|p| p.into_inner()).ctrl_alt_del();
            }
            HelperCommand::Stats => {
                let stats = GuestStats {
                    paused: vcpus.is_some_and(|v| v.paused()),
                    vcpu_time_ns: vcpus
                        .map(|v| v.threads())
                        .unwrap_or_default()
                        .into_iter()
                        .map(thread_cpu_ns)
                        .collect(),
                    memory_mib: self.memory_mib,
                    rss_kib: peak_rss_kib(),
                };
                self.answer(&HelperEvent::Stats(stats));
            }
            HelperCommand::Console { .. } => {
                let delivered = command
                    .sort_fds(fds)
                    .map_err(|e| e.to_string())
                    .and_then(|mut sorted| self.events.deliver(&mut sorted).map_err(|e| e.to_string()));
                if let Err(e) = delivered {
                    eprintln!("libvirt-helper: refused a new console: {e}");
                }
            }
            HelperCommand::AttachDevice { device, .. } => {
                let answer = match command.sort_fds(fds) {
                    Err(e) => DeviceAnswer::Refused(e.to_string()),
                    Ok(_) => DeviceAnswer::Unsupported(NO_HOTPLUG.into()),
                };
                self.answer(&HelperEvent::Device { id: device.id().into(), answer });
            }
            HelperCommand::DiskStats => {
                let counters = self.devices.disks.iter().map(|d| d.stats.snapshot(&d.alias)).collect();
                self.answer(&HelperEvent::DiskStats(counters));
            }
            HelperCommand::SetBalloon { target_mib } => {
                let figures = self.devices.balloon.as_ref().map(|b| {
                    b.set_target(*target_mib);
                    b.figures()
                });
                self.answer(&HelperEvent::Balloon(figures));
            }
            HelperCommand::BalloonStats => {
                let figures = self.devices.balloon.as_ref().map(|b| b.figures());
                self.answer(&HelperEvent::Balloon(figures));
            }
            HelperCommand::SetLink { alias, up } => {
                // An unknown alias changes nothing; the answer shows what there is.
                if let Some(nic) = self.devices.nics.iter().find(|n| n.alias() == alias) {
                    nic.set_link(*up);
                }
                self.answer(&HelperEvent::NetStats(self.net_stats()));
            }
            HelperCommand::NetStats => self.answer(&HelperEvent::NetStats(self.net_stats())),
            HelperCommand::SetBalloonPeriod { seconds } => {
                let figures = self.devices.balloon.as_ref().map(|b| {
                    b.set_period(*seconds);
                    b.figures()
                });
                self.answer(&HelperEvent::Balloon(figures));
            }
            HelperCommand::DetachDevice { id } => {
                let answer = DeviceAnswer::Unsupported(NO_HOTPLUG.into());
                self.answer(&HelperEvent::Device { id: id.clone(), answer });
            }
        }
        None
    }
}

impl Control<'_> {
    /// Every interface's counters, read without touching its device.
    fn net_stats(&self) -> Vec<libvirtd::privsep::helper::NicCounters> {
        self.devices.nics.iter().map(|n| n.counters()).collect()
    }
}

/// CPU time of one thread, from its CPU clock; 0 once it has ended.
fn thread_cpu_ns(thread: libc::pthread_t) -> u64 {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `thread` is a vCPU thread of this process not yet joined (the
    // machine joins them only after this loop); both out-pointers are valid.
    let ok =
        unsafe { libc::pthread_getcpuclockid(thread, &mut clock) == 0 && libc::clock_gettime(clock, &mut ts) == 0 };
    if ok { ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64 } else { 0 }
}

/// The helper's peak resident set (guest memory it touched included), from
/// getrusage: the helper opens no file, /proc included.
fn peak_rss_kib() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|u| u.max_rss() as u64).unwrap_or(0)
}
