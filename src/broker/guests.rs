//! Running guests: each is one `libvirt-helper` process the broker started.
//!
//! The broker opens everything the guest needs (the kernel and initrd it
//! checks are regular files before opening them, never waiting on a FIFO, `/dev/kvm`, the console, the helper's control
//! socket in the run directory) and passes the fds; the helper opens nothing.
//! Each helper runs under its own uid from `helper_uid_min..helper_uid_max`.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use std::sync::Arc;

use super::cgroup::{Cgroups, GuestCgroup};
use super::files::{FileError, Purpose};
use super::greeting::Greeting;
use super::spawn;
use crate::domain::DomainDef;
use crate::privsep::helper::{
    BalloonConfig, GuestConfig, HelperCommand, HelperEvent, ProtocolMismatch, StartFds, StopReason,
};
use crate::privsep::{CallError, Channel};

/// One running guest.
#[derive(Debug)]
pub struct Running {
    /// Its domain id.
    pub id: i32,
    /// The helper's pid.
    pub pid: Pid,
    /// The helper's uid (and gid).
    pub uid: u32,
    /// The control channel.
    pub channel: Channel,
    /// The broker's end of the guest console.
    pub console: UnixStream,
    /// The helper's end of the console, which the broker keeps as well: the
    /// broker's end (and the copy a client's console stream holds) then
    /// reaches end of file only when the broker lets go of it, not when a
    /// helper exits, and a reboot hands both ends to the next helper
    /// ([`Console`]), so that an open console goes on with the new boot.
    pub console_peer: OwnedFd,
    /// Where console output goes while nobody is attached (`<serial type='file'>`).
    pub log: Option<std::fs::File>,
    /// This broker spawned it (one re-attached after a restart is not our child).
    pub child: bool,
    /// What is known of the protocol it speaks.
    pub protocol: Protocol,
    /// Its disks' images, open and locked for as long as it runs (empty for
    /// a helper re-attached after a restart: it holds the same open file
    /// descriptions, and with them the locks; see `disks.rs`).
    pub disks: Vec<super::disks::OpenDisk>,
    /// Its cgroups, where the daemon has them.
    pub cgroup: Option<GuestCgroup>,
    /// Its interfaces' taps, in `<interface>` order (from the record for a
    /// helper re-attached after a restart).
    pub nics: Vec<super::nics::GuestNic>,
    /// Its CMOS clock: where it started, where the guest put it (for a
    /// helper re-attached after a restart, as the definition starts it).
    pub clock: super::rtc::LiveClock,
    /// When its last RTC change event went out (`rtc.rs` bounds a helper
    /// that sends them faster than its own limit).
    pub rtc_event_at: Option<std::time::Instant>,
}

/// A guest's console socket pair (the broker's end, the helper's), handed
/// from a helper whose guest rebooted to the one that runs it on. The
/// kernel's socket buffers bound what waits in it meanwhile: guest output
/// for the client, and client input for the new guest.
pub type Console = (UnixStream, OwnedFd);

impl Running {
    /// The guest's console, for the helper that runs it on after a reboot.
    pub fn into_console(self) -> Console {
        (self.console, self.console_peer)
    }
}

/// What the broker knows of the protocol a helper speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// Its greeting has not arrived yet (a helper just spawned): the next
    /// message must be `Hello`.
    Awaiting,
    /// It greeted with this build's version.
    Spoken,
    /// It speaks another protocol: its guest runs but cannot be managed.
    /// Nothing it sends is parsed; its channel is watched for its end.
    Unmanageable(ProtocolMismatch),
}

impl Running {
    /// The helper's protocol, if this broker can speak it; otherwise the
    /// error every operation on the guest gets, naming the mismatch.
    pub fn manageable(&self, name: &str) -> Result<(), CallError> {
        match &self.protocol {
            Protocol::Unmanageable(why) => Err(unmanageable(name, self.pid, why)),
            _ => Ok(()),
        }
    }
}

/// The error for an operation on a guest whose helper speaks another protocol.
pub fn unmanageable(name: &str, pid: Pid, why: &ProtocolMismatch) -> CallError {
    CallError::OperationFailed(format!(
        "guest '{name}' runs but cannot be managed: {why} (helper pid {pid}); only destroy works on it"
    ))
}

impl Running {
    /// Removes the guest's cgroups, once its helper is gone (or going).
    pub fn remove_cgroup(&mut self) {
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
    }

    /// Removes the guest's taps that outlive its helper (see `nics.rs`).
    pub fn remove_taps(&mut self) {
        super::nics::release(&std::mem::take(&mut self.nics));
    }

    /// SIGKILLs the helper. A child of ours that has already been reaped is
    /// left alone, since its pid may belong to another process by now.
    pub fn kill(&self) {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        if self.child && !matches!(waitpid(self.pid, Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive)) {
            return;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

/// Where helpers come from and what they may use.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The helper binary.
    pub exe: PathBuf,
    /// Run directory for control sockets.
    pub state_dir: PathBuf,
    /// Uids (and gids) for helpers, inclusive; `None` in session mode.
    pub uids: Option<(u32, u32)>,
    /// The host's cgroups for guests; `None` where the daemon has none.
    pub cgroups: Option<Arc<Cgroups>>,
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> CallError {
    CallError::OperationFailed(format!("{what} '{}': {e}", path.display()))
}

/// Opens a file the guest will read, refusing anything but a regular file
/// (without waiting on it: see [`super::files`]).
fn open_regular(domain: &str, what: &'static str, path: &str) -> Result<OwnedFd, CallError> {
    Ok(Purpose { domain, what }.open_read(Path::new(path))?.into())
}

/// A new console socket pair: the broker's end, non-blocking, and the helper's.
fn new_console() -> Result<Console, CallError> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| CallError::Internal(format!("console: {e}")))?;
    ours.set_nonblocking(true).map_err(|e| CallError::Internal(format!("console: {e}")))?;
    Ok((ours, theirs.into()))
}

/// The file a `<serial type='file'>` console is logged to, opened for
/// appending (created if missing; anything but a regular file is refused).
fn serial_log(def: &DomainDef) -> Result<Option<std::fs::File>, CallError> {
    match def.serials.first().map(|s| &s.source) {
        Some(crate::domain::CharSource::File(path)) => {
            Ok(Some(Purpose { domain: &def.name, what: "serial log" }.open_append(Path::new(path))?))
        }
        _ => Ok(None),
    }
}

/// Files a domain names fail its start as "operation failed", naming them.
impl From<FileError> for CallError {
    fn from(e: FileError) -> Self {
        CallError::OperationFailed(e.to_string())
    }
}

/// A listening seqpacket socket at `path` (replacing a stale one).
fn control_listener(path: &Path) -> Result<OwnedFd, CallError> {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
    let _ = std::fs::remove_file(path);
    let err = |e: nix::Error| failed("cannot create control socket", path, e);
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path).map_err(err)?).map_err(err)?;
    listen(&fd, Backlog::new(4).map_err(err)?).map_err(err)?;
    Ok(fd)
}

impl Launcher {
    /// The first helper uid no running guest uses.
    fn free_uid(&self, running: &HashMap<crate::domain::Uuid, Running>) -> Result<Option<u32>, CallError> {
        let Some((lo, hi)) = self.uids else { return Ok(None) };
        (lo..=hi).find(|u| !running.values().any(|r| r.uid == *u)).map(Some).ok_or_else(|| {
            CallError::OperationFailed("no free helper uid left in helper_uid_min..helper_uid_max".into())
        })
    }

    /// Starts `def` as guest `id`: opens and checks its files, spawns the
    /// helper and hands everything over; its clock starts where `clock`
    /// (a reset guest's) was, or where the definition says, and its console
    /// is `console` (a reset guest's, which a client may hold open) or a new
    /// one. The helper's `Started` (or how it failed) arrives on the
    /// returned channel.
    pub fn start(
        &self,
        def: &DomainDef,
        id: i32,
        running: &HashMap<crate::domain::Uuid, Running>,
        networks: &super::networks::Networks,
        clock: Option<super::rtc::LiveClock>,
        console: Option<Console>,
    ) -> Result<Running, CallError> {
        // Where the interfaces go, first, as libvirt checks its networks
        // before anything else is prepared.
        let ports = super::nics::ports(def, networks)?;
        let tuning = def.tuning();
        super::cgroup::check(self.cgroups.as_deref(), &tuning).map_err(CallError::ConfigUnsupported)?;
        let log = serial_log(def)?;
        let kernel = open_regular(&def.name, "kernel", &def.os.kernel)?;
        let initrd = def.os.initrd.as_deref().map(|p| open_regular(&def.name, "initrd", p)).transpose()?;
        let kvm: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| failed("cannot open", Path::new("/dev/kvm"), e))?
            .into();
        let uid = self.free_uid(running)?;
        // Every image opened, checked and locked before anything is spawned:
        // a disk that fails leaves nothing behind (its fds close, and with
        // them its locks).
        let disks = super::disks::open_all(def).map_err(|e| CallError::OperationFailed(e.to_string()))?;
        // Guest RAM the domain wants made by the broker (memfd, huge pages).
        let backing = def.backing();
        let ram_bytes = def.memory_kib.div_ceil(1024) << 20;
        if backing.locked {
            let host_kib = super::host::host_memory()?.iter().map(|c| c.total_kib).sum();
            super::memlock::check(&def.name, ram_bytes, host_kib)?;
        }
        let memory = super::guestmem::create(&def.name, ram_bytes, &backing)?;
        // The taps last, as they are the only thing here the host sees: a
        // start that fails later removes them with their fds.
        let nics = super::nics::open_all(def, ports)?;
        let (console, guest_console) = match console {
            Some(carried) => carried,
            None => new_console()?,
        };
        std::fs::create_dir_all(&self.state_dir).map_err(|e| failed("cannot create", &self.state_dir, e))?;
        let listener = control_listener(&super::status::control_socket(&self.state_dir, &def.name))?;

        let spawned = spawn::helper(&self.exe).map_err(|e| failed("cannot start helper", &self.exe, e))?;
        // Into its cgroups, with their limits, before it is told to start:
        // no guest instruction runs outside them.
        let cgroup = match self.cgroups.as_ref().map(|c| self.enter_cgroup(c, def, id, spawned.pid)).transpose() {
            Ok(c) => c,
            Err(e) => {
                let _ = kill(spawned.pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(spawned.pid, None);
                return Err(e);
            }
        };
        // Its memlock limit, before it is told to start (and lock).
        if backing.locked
            && let Err(e) = super::memlock::raise(&def.name, spawned.pid, ram_bytes)
        {
            let _ = kill(spawned.pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(spawned.pid, None);
            if let Some(c) = cgroup {
                c.remove();
            }
            return Err(e);
        }
        let now = super::rtc::now();
        let clock =
            clock.unwrap_or_else(|| super::rtc::LiveClock::at_start(&def.clock(), now, super::rtc::local_offset(now)));
        let config = GuestConfig {
            memory_mib: def.memory_kib.div_ceil(1024),
            vcpus: def.vcpus,
            cmdline: def.os.cmdline.clone().unwrap_or_default(),
            ids: uid.map(|u| (u, u)),
            invariant_tsc: def.invariant_tsc(),
            disks: disks.iter().map(|d| d.config.clone()).collect(),
            balloon: crate::domain::balloon::of(def)
                .and_then(|b| Some(BalloonConfig { pci_slot: b.pci_slot?, stats_period: b.stats_period })),
            nics: nics.configs.clone(),
            mem_locked: backing.locked,
            rtc_offset_secs: clock.offset,
        };
        let tap_fds: Vec<_> = nics.fds.iter().map(|f| f.as_fd()).collect();
        let disk_fds: Vec<Vec<_>> = disks.iter().map(|d| d.layers.iter().map(|f| f.as_fd()).collect()).collect();
        let fds = StartFds {
            kvm: kvm.as_fd(),
            kernel: kernel.as_fd(),
            initrd: initrd.as_ref().map(|f| f.as_fd()),
            console: guest_console.as_fd(),
            control_listener: listener.as_fd(),
            disks: &disk_fds,
            taps: &tap_fds,
        };
        // Sent at once, without waiting for the helper's greeting: the event
        // loop checks that (its first message) before anything else.
        let (command, fds) = HelperCommand::start_backed(config, &fds, memory.as_ref().map(|m| m.as_fd()));
        if let Err(e) = spawned.channel.send(&command, &fds) {
            let _ = kill(spawned.pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(spawned.pid, None);
            if let Some(c) = cgroup {
                c.remove();
            }
            return Err(CallError::OperationFailed(format!("guest failed to start: {e}")));
        }
        drop(fds);
        drop(disk_fds);
        drop(tap_fds);
        Ok(Running {
            id,
            pid: spawned.pid,
            uid: uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
            channel: spawned.channel,
            console,
            console_peer: guest_console,
            log,
            child: true,
            protocol: Protocol::Awaiting,
            disks,
            cgroup,
            nics: nics.nics,
            clock,
            rtc_event_at: None,
        })
    }

    /// Creates guest `id`'s cgroups, moves helper `pid` in and writes the
    /// definition's limits; on failure nothing of them is left.
    fn enter_cgroup(
        &self,
        cgroups: &Arc<Cgroups>,
        def: &DomainDef,
        id: i32,
        pid: Pid,
    ) -> Result<GuestCgroup, CallError> {
        let fail = |e: super::cgroup::CgroupError| {
            CallError::OperationFailed(format!("guest '{}' cannot be placed in its cgroup: {e}", def.name))
        };
        let mut cg = GuestCgroup::create(cgroups, id, &def.name, def.vcpus).map_err(fail)?;
        let tuning = def.tuning();
        match cg.add_helper(pid.as_raw()).and_then(|()| cg.apply(&tuning)).and_then(|()| cg.reserve_rt(&tuning.cpu)) {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(fail(e))
            }
        }
    }
}

/// What a broker found of a helper that outlived its predecessor.
#[derive(Debug)]
pub enum Reattached {
    /// Gone: its control socket does not answer.
    Gone,
    /// Its guest stopped while no broker was there, for this reason.
    Stopped(StopReason),
    /// It speaks this build's protocol: attached, with a new console; and
    /// its word on whether the guest is paused (`None` if it did not say in
    /// time).
    Attached(Running, Option<bool>),
    /// It runs, speaking a protocol this build does not: held as running,
    /// never parsed, every operation but destroy refused.
    Unmanageable(Running, ProtocolMismatch),
}

impl Launcher {
    /// Joins a helper that outlived the previous broker: connects to its
    /// control socket and reads its greeting. One speaking this build's
    /// protocol gets a new console and is asked whether its guest is paused
    /// (the helper's word beats the record, which a broker that died
    /// mid-request may have left behind). One that speaks another version,
    /// or none (a build from before the greeting, which never greets but
    /// answers `Stats`), is reported unmanageable, and nothing it says is
    /// parsed from then on.
    pub fn reattach(&self, def: &DomainDef, id: i32, pid: i32, uid: u32) -> Reattached {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
        let path = super::status::control_socket(&self.state_dir, &def.name);
        let connected =
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).ok().and_then(|fd| {
                connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(&path).ok()?).ok()?;
                Channel::from_fd(fd).ok()
            });
        let Some(channel) = connected else { return Reattached::Gone };
        let Ok((console, console_peer)) = new_console() else { return Reattached::Gone };
        // The guest runs on whether or not its log can be reopened.
        let log = serial_log(def).unwrap_or_else(|e| {
            log::warn!("domain '{}': {e}", def.name);
            None
        });
        let greeting = super::greeting::read(&channel, REATTACH_GRACE_MS);
        let cgroup = self.cgroups.as_ref().and_then(|c| GuestCgroup::find(c, id, &def.name, def.vcpus));
        let now = super::rtc::now();
        let running = |protocol| Running {
            id,
            pid: Pid::from_raw(pid),
            uid,
            channel,
            console,
            console_peer,
            log,
            child: false,
            protocol,
            disks: Vec::new(),
            cgroup,
            nics: Vec::new(),
            clock: super::rtc::LiveClock::at_start(&def.clock(), now, super::rtc::local_offset(now)),
            rtc_event_at: None,
        };
        match greeting {
            Greeting::Stopped(reason) => Reattached::Stopped(reason),
            Greeting::Gone => Reattached::Gone,
            Greeting::Mismatch(why) => Reattached::Unmanageable(running(Protocol::Unmanageable(why.clone())), why),
            Greeting::Spoken => {
                let r = running(Protocol::Spoken);
                // A helper whose guest stopped meanwhile says so at once.
                if let Ok((HelperEvent::Stopped { reason, .. }, _)) =
                    r.channel.recv_blocking::<HelperEvent>(REATTACH_GRACE_MS, HelperEvent::fd_count)
                {
                    return Reattached::Stopped(reason);
                }
                let (command, fds) = HelperCommand::console(r.console_peer.as_fd());
                if r.channel.send(&command, &fds).is_err() {
                    return Reattached::Gone;
                }
                let paused = match r.channel.send(&HelperCommand::Stats, &[]) {
                    Ok(()) => match r.channel.recv_blocking::<HelperEvent>(REATTACH_GRACE_MS, HelperEvent::fd_count) {
                        Ok((HelperEvent::Stats(stats), _)) => Some(stats.paused),
                        _ => None,
                    },
                    Err(_) => None,
                };
                Reattached::Attached(r, paused)
            }
        }
    }
}

/// How long a re-attached helper gets to report a guest that stopped, in ms.
const REATTACH_GRACE_MS: u16 = 300;

/// CPU time a helper process has used, in ns: the kernel's process CPU
/// clock (every thread's scheduler runtime, the figure cgroup accounting
/// sums), not `/proc/<pid>/stat`'s clock ticks, which leave a guest that has
/// run for a few ms at 0. 0 when the helper is gone.
pub fn cpu_time_ns(pid: Pid) -> u64 {
    use nix::time::{ClockId, clock_gettime};
    let Ok(clock) = ClockId::pid_cpu_clock_id(pid) else { return 0 };
    clock_gettime(clock).map_or(0, |t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
}
