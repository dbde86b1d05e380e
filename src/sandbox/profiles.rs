//! Every process's privileges, in one place.
//!
//! | process  | uid                      | capabilities  | filesystem   | seccomp            |
//! |----------|--------------------------|---------------|--------------|--------------------|
//! | broker   | root (system mode)       | [`BROKER_CAPS`] | full       | none yet           |
//! | frontend | `frontend_uid` (system)  | none          | none (landlock) | `frontend.json` main |
//! | helper   | one uid per guest        | none          | none (landlock) | `helper.json` vmm, vcpu |

use caps::Capability;
use nix::unistd::Pid;

use super::Thread;

/// Capabilities the broker keeps in system mode, with the reason for each.
/// Everything else leaves the effective, permitted, inheritable and bounding sets.
pub const BROKER_CAPS: &[Capability] = &[
    // Starting the frontend and helpers under their own uid/gid.
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    // Children empty their bounding sets before switching uid.
    Capability::CAP_SETPCAP,
    // Socket ownership (unix_sock_group) and run-dir files for helpers.
    Capability::CAP_CHOWN,
    Capability::CAP_FOWNER,
    // Opening guest images and kernels owned by other users to hand their fds on.
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    // Stopping helpers, which run under other uids.
    Capability::CAP_KILL,
    // New namespaces for helpers; taps and bridges for guest networking.
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_NET_ADMIN,
    // dnsmasq, started by the broker for each virtual network, inherits its
    // bounding set and needs raw sockets for DHCP (it refuses to start
    // without this capability) before it drops to its own user.
    Capability::CAP_NET_RAW,
    // Raising helpers' memlock and fd limits for guest memory.
    Capability::CAP_SYS_RESOURCE,
    Capability::CAP_IPC_LOCK,
    // Pinning helpers' threads (sched_setaffinity) and giving vCPU threads
    // a real-time scheduler (<vcpusched>): they run under other uids.
    Capability::CAP_SYS_NICE,
    // listen_addr ports below 1024, if an operator configures them.
    Capability::CAP_NET_BIND_SERVICE,
];

/// What [`super::confine`] applies to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Switch to this uid and gid (and no supplementary groups); `None` keeps the current ones.
    pub ids: Option<(u32, u32)>,
    /// Die with this parent (SIGKILL), checked against the expected parent pid.
    pub parent: Option<Pid>,
    /// Landlock ruleset with no filesystem access at all.
    pub no_filesystem: bool,
    /// Seccomp allow-list for the (only) thread.
    pub seccomp: Option<Thread>,
}

impl Profile {
    /// A guest helper: its guest's own ids, no filesystem. No parent-death
    /// signal: a guest outlives the daemon. Seccomp goes on per thread
    /// (`HelperVmm`, `HelperVcpu`) once the vCPU threads exist.
    pub fn helper(ids: Option<(u32, u32)>) -> Self {
        Profile { ids, parent: None, no_filesystem: true, seccomp: None }
    }

    /// The frontend: no privilege, no filesystem, a strict allow-list.
    pub fn frontend(ids: Option<(u32, u32)>, parent: Option<Pid>) -> Self {
        Profile { ids, parent, no_filesystem: true, seccomp: Some(Thread::FrontendMain) }
    }
}
