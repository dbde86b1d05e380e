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
/// `PauseFailed` and device attach/detach; 3 added disks (and the
/// per-device fd roles) to the guest's configuration; 4 added network
/// interfaces (`nics`, `Tap` fds, `SetLink`, `NetStats`), locked memory,
/// the balloon's live statistics period and unsolicited disk I/O errors;
/// 5 added the guest's RTC offset and the unasked `RtcChange` report.
pub const HELPER_PROTOCOL_VERSION: u32 = 5;

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
    /// The guest's disks, in the order of their `disk` index in
    /// [`FdRole::DiskLayer`].
    pub disks: Vec<DiskConfig>,
    /// The guest's virtio-balloon, if it has one (appended in version 3).
    pub balloon: Option<BalloonConfig>,
    /// The guest's network interfaces, in the order of their `nic` index in
    /// [`FdRole::Tap`] (appended in version 4).
    pub nics: Vec<NicConfig>,
    /// `<memoryBacking><locked/>`: guest RAM is locked in host memory
    /// (`mlock`), never swapped; the broker raised the helper's
    /// `RLIMIT_MEMLOCK` to fit (appended in version 4).
    pub mem_locked: bool,
    /// Where the guest's CMOS clock starts: host UTC plus this many seconds
    /// (`<clock offset=...>`, worked out by the broker at start).
    pub rtc_offset_secs: i64,
}

/// One virtio-net interface as the helper builds it, over the tap fd the
/// broker made (role `Tap { nic }`); the helper never creates, names or
/// configures an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// The device's alias (`<alias name=...>`, `net0`...), unique in the guest.
    pub alias: String,
    /// The guest's MAC address (`<mac address=...>`).
    pub mac: [u8; 6],
    /// The PCI slot on bus 0 (`<address type='pci' slot=...>`).
    pub pci_slot: u8,
    /// `<link state=...>`: whether the guest sees its link up at start.
    pub link_up: bool,
    /// `<mtu size=...>`, offered to the guest (VIRTIO_NET_F_MTU) when set.
    pub mtu: Option<u16>,
}

/// One interface's traffic since the guest started, from the device's own
/// counters, as `virsh domifstat` shows it (rx is what the guest received).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicCounters {
    /// The device's alias.
    pub alias: String,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Frames from the tap that could not be delivered (malformed buffers).
    pub rx_errs: u64,
    /// Frames from the tap dropped (link down, no guest buffers).
    pub rx_drop: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Frames from the guest that were malformed (bad chains, lengths, headers).
    pub tx_errs: u64,
    /// Frames from the guest dropped (link down, tap refused them).
    pub tx_drop: u64,
    /// Whether the link is up, as the guest sees it.
    pub link_up: bool,
}

/// `<memballoon model='virtio'>`: where the helper puts the balloon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// The PCI slot on bus 0.
    pub pci_slot: u8,
    /// `<stats period=...>` in seconds (0: the guest's statistics are not asked for).
    pub stats_period: u32,
}

/// What the balloon shows: the host's target, the guest's `actual`, what
/// went back to the host, and the guest's last statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonFigures {
    /// The target the host set, in KiB of guest memory left to the guest.
    pub target_kib: u64,
    /// Guest memory minus what the guest says it gave the balloon (`actual`), in KiB.
    pub actual_kib: u64,
    /// Pages handed back to the host (MADV_DONTNEED) since start.
    pub released_pages: u64,
    /// Page numbers the guest gave that lie outside its RAM, ignored.
    pub ignored_pfns: u64,
    /// The guest's last statistics, (virtio tag, value) as the guest sent
    /// them (bytes for memory figures), at most one per tag.
    pub guest_stats: Vec<(u16, u64)>,
}

/// How a disk's image is laid out, for the helper's block backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageFormat {
    /// Bytes as the guest sees them (a file or a block device).
    Raw,
    /// A qcow2 image, possibly over a chain of backing files.
    Qcow2,
}

/// libvirt's `<driver cache=...>`, as QEMU maps it: whether the host page
/// cache is bypassed (`O_DIRECT`), whether every write is made durable
/// (`O_DSYNC`), and whether the guest's flushes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheMode {
    /// O_DIRECT; guest flushes reach the disk.
    None,
    /// The page cache; guest flushes reach the disk (the default).
    Writeback,
    /// The page cache, every write durable (O_DSYNC).
    Writethrough,
    /// O_DIRECT and O_DSYNC.
    Directsync,
    /// The page cache; guest flushes are ignored.
    Unsafe,
}

/// One virtio disk as the helper builds it. Its image and backing files
/// arrive as fds with roles `DiskLayer { disk, layer: 0..layers }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskDevice {
    /// virtio-blk on virtio-pci.
    VirtioBlk,
}

/// What the helper needs to know about one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The device's alias (`<alias name=...>`), unique in the guest.
    pub alias: String,
    /// The guest-visible name (`<target dev=...>`), for messages.
    pub target: String,
    /// The device.
    pub device: DiskDevice,
    /// The PCI slot on bus 0 (`<address type='pci' slot=...>`).
    pub pci_slot: u8,
    /// The layout of layer 0; backing layers are qcow2 or raw as their
    /// parent's header says.
    pub format: ImageFormat,
    /// How many image fds make up the chain (1 for an image with no backing file).
    pub layers: u8,
    /// The guest may not write it (`<readonly/>`): writes get an I/O error status.
    pub read_only: bool,
    /// `<serial>`, what virtio-blk's get-id answers (at most 20 bytes).
    pub serial: Option<String>,
    /// `<driver cache=...>`.
    pub cache: CacheMode,
    /// `<driver discard='unmap'>`: the guest's discards reach the image.
    pub discard: bool,
}

/// A device to plug into a running guest (hotplug), as the broker describes
/// it; its backing fd travels beside the command under the role it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// A disk: its layers travel as `DiskLayer { disk: 0, layer }`.
    Disk(DiskConfig),
    /// A network interface on a tap device: one fd, role `Tap { nic: 0 }`.
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
            DeviceSpec::Disk(disk) => &disk.alias,
            DeviceSpec::Net { id, .. } => id,
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
    /// Report each disk's I/O counters; answered with `DiskStats`.
    DiskStats,
    /// Set the balloon's target (guest memory the guest should keep);
    /// answered with `Balloon`, or `Balloon(None)` without a balloon.
    SetBalloon {
        /// The target in MiB.
        target_mib: u64,
    },
    /// Report the balloon's figures; answered with `Balloon`.
    BalloonStats,
    /// Set one interface's link state as the guest sees it (`virsh
    /// domif-setlink`); answered with `NetStats`, which shows the new state.
    SetLink {
        /// The interface's alias.
        alias: String,
        /// Up or down.
        up: bool,
    },
    /// Report each interface's counters; answered with `NetStats`.
    NetStats,
    /// Set how often the guest's balloon statistics are asked for, in
    /// seconds (0: never); answered with `Balloon`.
    SetBalloonPeriod {
        /// The period in seconds.
        seconds: u32,
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
            )
            .with_devices(),
            HelperCommand::Console { .. } => manifest::FdRule::new(&[ConsoleInput, ConsoleOutput], &[]),
            HelperCommand::AttachDevice { device: DeviceSpec::Disk(_), .. } => {
                manifest::FdRule::new(&[DiskLayer { disk: 0, layer: 0 }], &[]).with_devices()
            }
            HelperCommand::AttachDevice { device: DeviceSpec::Net { .. }, .. } => {
                manifest::FdRule::new(&[Tap { nic: 0 }], &[])
            }
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
        for (disk, layers) in fds.disks.iter().enumerate() {
            for (layer, fd) in layers.iter().enumerate() {
                // GuestConfig::disks and each chain are bounded far below 256 by the broker.
                let (disk, layer) = (disk as u8, layer as u8);
                pairs.push((FdRole::DiskLayer { disk, layer }, *fd));
            }
        }
        for (nic, fd) in fds.taps.iter().enumerate() {
            // GuestConfig::nics is bounded far below 256 by the broker.
            pairs.push((FdRole::Tap { nic: nic as u8 }, *fd));
        }
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
    /// Each disk's image chain, top layer first, in `GuestConfig::disks` order.
    pub disks: &'a [Vec<BorrowedFd<'a>>],
    /// Each interface's tap, in `GuestConfig::nics` order.
    pub taps: &'a [BorrowedFd<'a>],
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
    /// Answer to `DiskStats`: one entry per disk, in `GuestConfig::disks`
    /// order, hotplugged disks after.
    DiskStats(Vec<DiskCounters>),
    /// Answer to `SetBalloon` and `BalloonStats`; `None` when the guest has no balloon.
    Balloon(Option<BalloonFigures>),
    /// Answer to `NetStats` and `SetLink`: one entry per interface, in
    /// `GuestConfig::nics` order, hotplugged interfaces after.
    NetStats(Vec<NicCounters>),
    /// Unsolicited: a disk's backend failed a request (the guest got an
    /// I/O error status). Sent for the first error and then at most once a
    /// second per disk, so a failing disk cannot flood the broker.
    IoError {
        /// The disk's alias.
        alias: String,
        /// The backend's error, for the event and `virsh domblkerror`.
        detail: String,
    },
    /// Unsolicited: the guest set its CMOS clock, which now runs at host
    /// UTC plus `offset_secs`. Sent for the first change and then at most
    /// once a second (the last change of a burst arrives when its second
    /// ends), so a guest writing its clock in a loop cannot flood the broker.
    RtcChange {
        /// The guest's time minus the host's UTC, in seconds.
        offset_secs: i64,
    },
}

/// One disk's I/O since the guest started, as `virsh domblkstat` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCounters {
    /// The device's alias.
    pub alias: String,
    /// Completed read requests.
    pub rd_reqs: u64,
    /// Bytes read.
    pub rd_bytes: u64,
    /// Nanoseconds spent on reads.
    pub rd_total_ns: u64,
    /// Completed write requests.
    pub wr_reqs: u64,
    /// Bytes written.
    pub wr_bytes: u64,
    /// Nanoseconds spent on writes.
    pub wr_total_ns: u64,
    /// Completed flush requests.
    pub flush_reqs: u64,
    /// Nanoseconds spent on flushes.
    pub flush_total_ns: u64,
    /// Requests answered with an error status (bad requests, backend errors,
    /// writes to a read-only disk).
    pub errors: u64,
    /// The last backend error, for `virsh domblkerror`; `None` while none happened.
    pub last_error: Option<String>,
}

impl HelperEvent {
    /// Events carry no fds.
    pub fn fd_count(&self) -> usize {
        0
    }
}

impl GuestConfig {
    /// A small guest with no devices, for tests and benchmarks.
    pub fn test(memory_mib: u64) -> GuestConfig {
        GuestConfig {
            memory_mib,
            vcpus: 1,
            cmdline: String::new(),
            ids: None,
            invariant_tsc: true,
            disks: Vec::new(),
            balloon: None,
            nics: Vec::new(),
            mem_locked: false,
            rtc_offset_secs: 0,
        }
    }
}

impl DiskConfig {
    /// A writable raw virtio disk in slot 4 with no backing file, for tests.
    pub fn test(target: &str) -> DiskConfig {
        DiskConfig {
            alias: format!("virtio-disk-{target}"),
            target: target.to_string(),
            device: DiskDevice::VirtioBlk,
            pci_slot: 4,
            format: ImageFormat::Raw,
            layers: 1,
            read_only: false,
            serial: None,
            cache: CacheMode::Writeback,
            discard: false,
        }
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
        let (theirs, ours) = (HELPER_PROTOCOL_VERSION + 1, HELPER_PROTOCOL_VERSION);
        assert!(
            e.contains(&format!("version {theirs}")) && e.contains(&format!("this daemon speaks version {ours}")),
            "{e}"
        );
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
            disks: &[],
            taps: &[],
        };
        let config = GuestConfig::test(32);
        let (command, sent) = HelperCommand::start(config, &fds);
        use FdRole::*;
        assert_eq!(command.fd_roles(), [Kvm, Kernel, ConsoleInput, ConsoleOutput, ControlListener]);
        assert_eq!(sent.len(), command.fd_count());
        assert!(matches!(command, HelperCommand::Start { version: HELPER_PROTOCOL_VERSION, .. }));
        let with_initrd = StartFds { initrd: Some(b.as_fd()), ..fds };
        let config = GuestConfig::test(32);
        assert_eq!(HelperCommand::start(config, &with_initrd).0.fd_roles().last(), Some(&Initrd));
    }

    #[test]
    fn a_command_refuses_fds_it_does_not_take() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let disk = DeviceSpec::Disk(DiskConfig::test("vda"));
        let wrong = HelperCommand::AttachDevice { device: disk.clone(), fds: vec![FdRole::GuestMemory] };
        let got = wrong.sort_fds(vec![a.as_fd().try_clone_to_owned().unwrap()]).map(|_| ());
        assert_eq!(got, Err(ManifestError::Unexpected(FdRole::GuestMemory)));
        let top = FdRole::DiskLayer { disk: 0, layer: 0 };
        let right = HelperCommand::AttachDevice { device: disk, fds: vec![top] };
        let mut sorted = right.sort_fds(vec![a.as_fd().try_clone_to_owned().unwrap()]).unwrap();
        assert!(sorted.take(top).is_some());
        let console = HelperCommand::Console { fds: vec![FdRole::ConsoleInput] };
        let got = console.sort_fds(vec![a.as_fd().try_clone_to_owned().unwrap()]).map(|_| ());
        assert_eq!(got, Err(ManifestError::Missing(FdRole::ConsoleOutput)));
    }
}
