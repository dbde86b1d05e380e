//! The messages between the broker and a guest's helper process: one
//! command enum and one event enum, shared by both ends.

use serde::{Deserialize, Serialize};

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
    /// An initrd fd follows the others.
    pub initrd: bool,
    /// Whether the guest's CPUID shows the host's invariant TSC (hidden for a
    /// migratable host CPU, as QEMU hides it).
    pub invariant_tsc: bool,
}

/// Broker to helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperCommand {
    /// Build and run the guest. Fds follow: `/dev/kvm`, the kernel image,
    /// the console (read for guest input, written with guest output), and a
    /// listening `SOCK_SEQPACKET` socket in the run directory, on which a
    /// restarted broker reconnects (the helper outlives the daemon); then,
    /// if the config says so, the initrd.
    Start(GuestConfig),
    /// Stop the guest now (destroy).
    Stop,
    /// Hard reset: the helper ends with `Stopped { reason: Reset }`, and the
    /// broker starts the guest again in a fresh helper (fresh memory and vCPU
    /// state, as a real reset gives; no half-reset VMM state to get wrong).
    Reset,
    /// Stop every vCPU; answered with `Paused`.
    Pause,
    /// Let the vCPUs run again; answered with `Resumed`.
    Resume,
    /// Press ctrl-alt-del on the guest's i8042 keyboard.
    CtrlAltDel,
    /// Report state and usage; answered with `Stats`.
    Stats,
    /// A new console for the guest (a restarted broker's): two fds, the
    /// same socket twice, one to read guest input from, one for its output.
    Console,
}

impl HelperCommand {
    /// How many fds travel with the command.
    pub fn fd_count(&self) -> usize {
        match self {
            HelperCommand::Start(config) => 4 + usize::from(config.initrd),
            HelperCommand::Console => 2,
            _ => 0,
        }
    }
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

/// What `Stats` reports.
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

/// Helper to broker.
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
}

impl HelperEvent {
    /// Events carry no fds.
    pub fn fd_count(&self) -> usize {
        0
    }
}
