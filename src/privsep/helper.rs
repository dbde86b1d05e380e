//! The messages between the broker and a guest's helper process: one
//! command enum and one event enum, shared by both ends.
//!
//! **Versions.** Helpers outlive the daemon, so after an upgrade a new
//! broker re-attaches to helpers of the old build. The helper speaks first
//! on every connection, at start (fd 3) and on each broker that reconnects
//! to its control socket: [`HelperEvent::Hello`] with its
//! [`HELPER_PROTOCOL_VERSION`]. A broker reads nothing else from a helper
//! before that greeting, and reads nothing at all from one whose version it
//! does not speak ([`check_version`]): it reports that guest running but
//! unmanageable instead of misparsing it. `Start` carries the broker's
//! version too, and a helper refuses a broker of another version.
//!
//! **What never changes.** postcard encodes an enum variant by its index, so
//! variants are only ever appended, and these keep their index and shape in
//! every version, since they are how two builds recognise each other:
//! command 6 `Stats`, events 3 `Stats`, 4 `Stopped` and 5 `Hello`. (Builds
//! before the handshake, version 1, never greet; a broker asks such a helper
//! for `Stats`, which both understand, to tell it from a wedged one.)
//!
//! **Fds by role.** A message that carries fds lists their roles
//! ([`FdRole`]), in the order they travel; the receiver sorts them by role
//! ([`manifest::RoleFds`]) and refuses a list that names a role twice, lacks
//! one the message needs or has one it does not take.

pub mod manifest;

use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

pub use manifest::{FdRole, ManifestError, RoleFds};

/// The helper protocol this build speaks. 1 was the unversioned protocol
/// (no greeting, fds by position); 2 added the greeting, fd manifests,
/// `PauseFailed` and device attach/detach.
pub const HELPER_PROTOCOL_VERSION: u32 = 2;

/// Why a broker cannot manage a helper: it speaks another protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolMismatch {
    /// It greeted with a version this build does not speak.
    #[error("its helper speaks helper protocol version {0}; this daemon speaks version {HELPER_PROTOCOL_VERSION}")]
    Version(u32),
    /// It answered without greeting: a build from before the handshake.
    #[error(
        "its helper speaks the unversioned helper protocol of builds before version 2; this daemon speaks version \
         {HELPER_PROTOCOL_VERSION}"
    )]
    Unversioned,
    /// It said nothing within the time allowed.
    #[error("its helper did not say which helper protocol it speaks within {0} ms")]
    Silent(u64),
    /// Its first message did not decode as a greeting.
    #[error("its helper's first message is not a greeting this daemon can read")]
    Garbled,
}

/// Whether a broker of this build can speak with a helper that greeted
/// with `version`. Only the same version is spoken: a broker never guesses
/// at another build's encoding.
pub fn check_version(version: u32) -> Result<(), ProtocolMismatch> {
    if version == HELPER_PROTOCOL_VERSION { Ok(()) } else { Err(ProtocolMismatch::Version(version)) }
}

/// What the helper needs to know about the guest (everything else it gets as fds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Kernel command line.
    pub cmdline: String,
    /// The guest's own uid and gid (system mode); `None` keeps the helper's.
    pub ids: Option<(u32, u32)>,
    /// Whether the guest's CPUID shows the host's invariant TSC (hidden for a
    /// migratable host CPU, as QEMU hides it).
    pub invariant_tsc: bool,
}

/// A device to plug into a running guest (hotplug), as the broker describes
/// it; its backing fd travels beside the command under the role it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// A disk on a file or block device: one fd, role [`FdRole::DiskImage`].
    Disk {
        /// The device's alias (`<alias name=...>`), unique in the guest.
        id: String,
        /// The guest may not write it.
        read_only: bool,
    },
    /// A network interface on a tap device: one fd, role [`FdRole::Tap`].
    Net {
        /// The device's alias, unique in the guest.
        id: String,
        /// Its MAC address.
        mac: [u8; 6],
    },
}

impl DeviceSpec {
    /// The device's alias.
    pub fn id(&self) -> &str {
        match self {
            DeviceSpec::Disk { id, .. } | DeviceSpec::Net { id, .. } => id,
        }
    }

    /// The fd role its backing fd travels under.
    pub fn fd_role(&self) -> FdRole {
        match self {
            DeviceSpec::Disk { .. } => FdRole::DiskImage,
            DeviceSpec::Net { .. } => FdRole::Tap,
        }
    }
}

/// How a helper answered `AttachDevice` or `DetachDevice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceAnswer {
    /// The device is in the guest.
    Attached,
    /// The device is out of the guest.
    Detached,
    /// This helper cannot plug devices of this kind (yet).
    Unsupported(String),
    /// The request itself was wrong (its fds, an unknown alias).
    Refused(String),
}

/// Broker to helper. Variants are only ever appended (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperCommand {
    /// Build and run the guest, for a broker speaking `version`. Its fds:
    /// `Kvm`, `Kernel`, `ConsoleInput` and `ConsoleOutput` (the same
    /// socket, read for guest input and written with guest output),
    /// `ControlListener` (a listening `SOCK_SEQPACKET` socket in the run
    /// directory, on which a restarted broker reconnects: the helper
    /// outlives the daemon), `Initrd` if the guest has one, and `GuestMemory`
    /// where the broker made the guest's RAM.
    Start {
        /// The broker's [`HELPER_PROTOCOL_VERSION`].
        version: u32,
        /// The guest.
        config: GuestConfig,
        /// The roles of the fds beside this message, in order.
        fds: Vec<FdRole>,
    },
    /// Stop the guest now (destroy).
    Stop,
    /// Hard reset: the helper ends with `Stopped { reason: Reset }`, and the
    /// broker starts the guest again in a fresh helper (fresh memory and vCPU
    /// state, as a real reset gives; no half-reset VMM state to get wrong).
    Reset,
    /// Stop every vCPU; answered with `Paused`, or `PauseFailed` when a vCPU
    /// does not stop within the helper's bound (the guest then runs on).
    Pause,
    /// Let the vCPUs run again; answered with `Resumed`.
    Resume,
    /// Press ctrl-alt-del on the guest's i8042 keyboard.
    CtrlAltDel,
    /// Report state and usage; answered with `Stats`.
    Stats,
    /// A new console for the guest (a restarted broker's): fds
    /// `ConsoleInput` and `ConsoleOutput`, the same socket twice (the
    /// confined helper cannot duplicate an fd itself).
    Console {
        /// The roles of the fds beside this message, in order.
        fds: Vec<FdRole>,
    },
    /// Plug a device into the running guest; answered with `Device`.
    AttachDevice {
        /// What to plug.
        device: DeviceSpec,
        /// The roles of the fds beside this message, in order.
        fds: Vec<FdRole>,
    },
    /// Unplug the device with this alias; answered with `Device`.
    DetachDevice {
        /// The device's alias.
        id: String,
    },
}

impl HelperCommand {
    /// The roles of the fds that travel with the command, in order.
    pub fn fd_roles(&self) -> &[FdRole] {
        match self {
            HelperCommand::Start { fds, .. }
            | HelperCommand::Console { fds }
            | HelperCommand::AttachDevice { fds, .. } => fds,
            _ => &[],
        }
    }

    /// How many fds travel with the command.
    pub fn fd_count(&self) -> usize {
        self.fd_roles().len()
    }

    /// The roles this command must carry, and those it may.
    pub fn fd_rule(&self) -> manifest::FdRule {
        use FdRole::*;
        match self {
            HelperCommand::Start { .. } => manifest::FdRule::new(
                &[Kvm, Kernel, ConsoleInput, ConsoleOutput, ControlListener],
                &[Initrd, GuestMemory],
            ),
            HelperCommand::Console { .. } => manifest::FdRule::new(&[ConsoleInput, ConsoleOutput], &[]),
            HelperCommand::AttachDevice { device: DeviceSpec::Disk { .. }, .. } => {
                manifest::FdRule::new(&[DiskImage], &[])
            }
            HelperCommand::AttachDevice { device: DeviceSpec::Net { .. }, .. } => manifest::FdRule::new(&[Tap], &[]),
            _ => manifest::FdRule::new(&[], &[]),
        }
    }

    /// Pairs the fds that arrived with the command with the roles it names,
    /// refusing any list the command does not take.
    pub fn sort_fds(&self, fds: Vec<OwnedFd>) -> Result<RoleFds, ManifestError> {
        RoleFds::sort(self.fd_roles(), fds, &self.fd_rule())
    }

    /// `Start` for `config`, and the fds to send beside it in manifest order.
    pub fn start<'a>(config: GuestConfig, fds: &StartFds<'a>) -> (HelperCommand, Vec<BorrowedFd<'a>>) {
        Self::start_backed(config, fds, None)
    }

    /// `Start` with guest RAM from `memory` ([`FdRole::GuestMemory`]).
    pub fn start_backed<'a>(
        config: GuestConfig,
        fds: &StartFds<'a>,
        memory: Option<BorrowedFd<'a>>,
    ) -> (HelperCommand, Vec<BorrowedFd<'a>>) {
        let mut pairs = vec![
            (FdRole::Kvm, fds.kvm),
            (FdRole::Kernel, fds.kernel),
            (FdRole::ConsoleInput, fds.console),
            (FdRole::ConsoleOutput, fds.console),
            (FdRole::ControlListener, fds.control_listener),
        ];
        pairs.extend(fds.initrd.map(|f| (FdRole::Initrd, f)));
        pairs.extend(memory.map(|f| (FdRole::GuestMemory, f)));
        let (roles, fds) = manifest::split(&pairs);
        (HelperCommand::Start { version: HELPER_PROTOCOL_VERSION, config, fds: roles }, fds)
    }

    /// `Console` handing the guest `console`, and the fds to send beside it.
    pub fn console(console: BorrowedFd<'_>) -> (HelperCommand, Vec<BorrowedFd<'_>>) {
        let (roles, fds) = manifest::split(&[(FdRole::ConsoleInput, console), (FdRole::ConsoleOutput, console)]);
        (HelperCommand::Console { fds: roles }, fds)
    }
}

/// The fds a guest starts with, by name (see [`HelperCommand::start`]).
#[derive(Debug, Clone, Copy)]
pub struct StartFds<'a> {
    /// `/dev/kvm`, open read-write.
    pub kvm: BorrowedFd<'a>,
    /// The kernel image.
    pub kernel: BorrowedFd<'a>,
    /// The initrd, if any.
    pub initrd: Option<BorrowedFd<'a>>,
    /// The guest's end of its console socket.
    pub console: BorrowedFd<'a>,
    /// The listening control socket a restarted broker reconnects on.
    pub control_listener: BorrowedFd<'a>,
}

/// Why a guest stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (i8042 or triple fault).
    Reset,
    /// The guest reported a panic (pvpanic).
    Crash,
    /// The broker asked it to stop.
    Destroyed,
    /// The VMM failed.
    Failed,
}

/// What `Stats` reports. Its shape never changes (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// The vCPUs are paused.
    pub paused: bool,
    /// CPU time used by each vCPU thread, in nanoseconds.
    pub vcpu_time_ns: Vec<u64>,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The helper's peak resident set, guest memory it touched included, in KiB.
    pub rss_kib: u64,
}

/// Helper to broker. Variants are only ever appended (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperEvent {
    /// The guest is running.
    Started,
    /// Every vCPU is stopped.
    Paused,
    /// The vCPUs run again.
    Resumed,
    /// Answer to `Stats`.
    Stats(GuestStats),
    /// The guest stopped; the helper exits after sending this.
    Stopped {
        /// Why.
        reason: StopReason,
        /// Details for the log.
        detail: String,
    },
    /// The helper's first message on every connection: the protocol it speaks.
    Hello {
        /// Its [`HELPER_PROTOCOL_VERSION`].
        version: u32,
    },
    /// A `Pause` that did not complete: a vCPU did not stop within the
    /// helper's bound. The vCPUs that had stopped run again, so the guest
    /// is running, as before the request.
    PauseFailed {
        /// Which vCPUs did not stop, and the bound, for the client's error.
        detail: String,
    },
    /// Answer to `AttachDevice` or `DetachDevice`.
    Device {
        /// The device's alias.
        id: String,
        /// What became of it.
        answer: DeviceAnswer,
    },
}

impl HelperEvent {
    /// Events carry no fds.
    pub fn fd_count(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// postcard's bytes for `value`.
    fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
        postcard::to_allocvec(value).unwrap()
    }

    #[test]
    fn the_messages_that_tell_builds_apart_keep_their_encoding() {
        // Indices and shapes fixed forever (module doc): a version-1 helper
        // and any later one must read and write these the same way.
        assert_eq!(bytes(&HelperCommand::Stats), [6]);
        assert_eq!(bytes(&HelperEvent::Hello { version: 2 }), [5, 2]);
        assert_eq!(bytes(&HelperEvent::Hello { version: 300 }), [5, 0xac, 0x02]);
        let stats = GuestStats { paused: true, vcpu_time_ns: vec![1], memory_mib: 2, rss_kib: 3 };
        assert_eq!(bytes(&HelperEvent::Stats(stats)), [3, 1, 1, 1, 2, 3]);
        let stopped = HelperEvent::Stopped { reason: StopReason::Crash, detail: "x".into() };
        assert_eq!(bytes(&stopped), [4, 2, 1, b'x']);
    }

    #[test]
    fn only_the_same_version_is_spoken() {
        assert_eq!(check_version(HELPER_PROTOCOL_VERSION), Ok(()));
        assert_eq!(check_version(1), Err(ProtocolMismatch::Version(1)));
        let e = check_version(HELPER_PROTOCOL_VERSION + 1).unwrap_err().to_string();
        assert!(e.contains("version 3") && e.contains("this daemon speaks version 2"), "{e}");
    }

    #[test]
    fn start_lists_each_fd_with_its_role() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fds = StartFds {
            kvm: a.as_fd(),
            kernel: b.as_fd(),
            initrd: None,
            console: a.as_fd(),
            control_listener: b.as_fd(),
        };
        let config = GuestConfig { memory_mib: 32, vcpus: 1, cmdline: String::new(), ids: None, invariant_tsc: true };
        let (command, sent) = HelperCommand::start(config, &fds);
        use FdRole::*;
        assert_eq!(command.fd_roles(), [Kvm, Kernel, ConsoleInput, ConsoleOutput, ControlListener]);
        assert_eq!(sent.len(), command.fd_count());
        assert!(matches!(command, HelperCommand::Start { version: HELPER_PROTOCOL_VERSION, .. }));
        let with_initrd = StartFds { initrd: Some(b.as_fd()), ..fds };
        let config = GuestConfig { memory_mib: 32, vcpus: 1, cmdline: String::new(), ids: None, invariant_tsc: true };
        assert_eq!(HelperCommand::start(config, &with_initrd).0.fd_roles().last(), Some(&Initrd));
    }

    #[test]
    fn a_command_refuses_fds_it_does_not_take() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let disk = DeviceSpec::Disk { id: "vda".into(), read_only: false };
        let wrong = HelperCommand::AttachDevice { device: disk.clone(), fds: vec![FdRole::Tap] };
        let got = wrong.sort_fds(vec![a.as_fd().try_clone_to_owned().unwrap()]).map(|_| ());
        assert_eq!(got, Err(ManifestError::Unexpected(FdRole::Tap)));
        let right = HelperCommand::AttachDevice { device: disk, fds: vec![FdRole::DiskImage] };
        let mut sorted = right.sort_fds(vec![a.as_fd().try_clone_to_owned().unwrap()]).unwrap();
        assert!(sorted.take(FdRole::DiskImage).is_some());
        let console = HelperCommand::Console { fds: vec![FdRole::ConsoleInput] };
        let got = console.sort_fds(vec![a.as_fd().try_clone_to_owned().unwrap()]).map(|_| ());
        assert_eq!(got, Err(ManifestError::Missing(FdRole::ConsoleOutput)));
    }
}
