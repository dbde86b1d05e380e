//! Fds by role: a message that carries fds names the role of each, and the
//! receiver takes them by role, never by position, so that adding an fd to a
//! message cannot shift another into the wrong hands, and a list that does
//! not fit the message is refused whole.

use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// What an fd passed to a helper is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FdRole {
    /// `/dev/kvm`, open read-write.
    Kvm,
    /// The kernel image, read.
    Kernel,
    /// The initrd, read.
    Initrd,
    /// The console, read for guest input.
    ConsoleInput,
    /// The console, written with guest output.
    ConsoleOutput,
    /// The listening control socket a restarted broker reconnects on.
    ControlListener,
    /// One layer of a disk's image chain: `disk` indexes
    /// [`super::GuestConfig::disks`] (0 for a hotplugged disk), `layer` 0 is
    /// the image the guest sees, 1 its backing file, and so on. The broker
    /// opens every layer, so the helper never opens a path.
    DiskLayer {
        /// Which disk.
        disk: u8,
        /// Which layer of its chain.
        layer: u8,
    },
    /// A network interface's tap device; `nic` indexes the guest's NICs.
    Tap {
        /// Which NIC.
        nic: u8,
    },
    /// Guest RAM the broker created (a memfd, with huge pages where the
    /// domain asks): mapped shared, low RAM at offset 0 and RAM above the
    /// PCI hole at offset 3 GiB.
    GuestMemory,
}

impl FdRole {
    /// Roles that come once per device, numbered, and are checked against
    /// the device list by the message's receiver rather than by the rule.
    pub fn is_per_device(&self) -> bool {
        matches!(self, FdRole::DiskLayer { .. } | FdRole::Tap { .. })
    }
}

/// Why a list of fds does not fit its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The list names a different number of fds than arrived.
    #[error("the manifest names {roles} fds but {fds} arrived")]
    Count {
        /// Roles named.
        roles: usize,
        /// Fds that arrived.
        fds: usize,
    },
    /// A role is named twice.
    #[error("fd role {0:?} is named twice")]
    Duplicate(FdRole),
    /// A role the message does not take.
    #[error("fd role {0:?} does not belong with this message")]
    Unexpected(FdRole),
    /// A role the message needs is missing.
    #[error("no fd with role {0:?}")]
    Missing(FdRole),
}

/// The roles a message must carry and those it may.
#[derive(Debug, Clone, Copy)]
pub struct FdRule {
    required: &'static [FdRole],
    optional: &'static [FdRole],
    per_device: bool,
}

impl FdRule {
    /// A message that needs `required` and may carry `optional`.
    pub const fn new(required: &'static [FdRole], optional: &'static [FdRole]) -> FdRule {
        FdRule { required, optional, per_device: false }
    }

    /// The same rule, also taking any number of per-device roles
    /// ([`FdRole::is_per_device`]), each at most once.
    pub const fn with_devices(self) -> FdRule {
        FdRule { per_device: true, ..self }
    }
}

/// Fds received with a message, by role: each role at most once.
#[derive(Debug, Default)]
pub struct RoleFds {
    fds: Vec<(FdRole, OwnedFd)>,
}

impl RoleFds {
    /// Pairs `fds` with `roles` (in the order both travelled) and checks
    /// them against `rule`. Nothing is kept from a list that does not fit:
    /// the fds close.
    pub fn sort(roles: &[FdRole], fds: Vec<OwnedFd>, rule: &FdRule) -> Result<RoleFds, ManifestError> {
        if roles.len() != fds.len() {
            return Err(ManifestError::Count { roles: roles.len(), fds: fds.len() });
        }
        for (i, role) in roles.iter().enumerate() {
            if roles[..i].contains(role) {
                return Err(ManifestError::Duplicate(*role));
            }
            let per_device = rule.per_device && role.is_per_device();
            if !rule.required.contains(role) && !rule.optional.contains(role) && !per_device {
                return Err(ManifestError::Unexpected(*role));
            }
        }
        if let Some(missing) = rule.required.iter().find(|r| !roles.contains(r)) {
            return Err(ManifestError::Missing(*missing));
        }
        Ok(RoleFds { fds: roles.iter().copied().zip(fds).collect() })
    }

    /// Takes the fd with `role`, if the message carried one.
    pub fn take(&mut self, role: FdRole) -> Option<OwnedFd> {
        let i = self.fds.iter().position(|(r, _)| *r == role)?;
        Some(self.fds.swap_remove(i).1)
    }

    /// Takes the fd with `role`, which the message must have carried.
    pub fn require(&mut self, role: FdRole) -> Result<OwnedFd, ManifestError> {
        self.take(role).ok_or(ManifestError::Missing(role))
    }

    /// The roles not taken yet.
    pub fn roles(&self) -> Vec<FdRole> {
        self.fds.iter().map(|(r, _)| *r).collect()
    }
}

/// The manifest and the fds of `pairs`, in one order, for sending.
pub fn split<'a>(pairs: &[(FdRole, BorrowedFd<'a>)]) -> (Vec<FdRole>, Vec<BorrowedFd<'a>>) {
    pairs.iter().copied().unzip()
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use super::FdRole::*;
    use super::*;

    const START: FdRule = FdRule::new(&[Kvm, Kernel], &[Initrd]);

    fn fds(n: usize) -> (Vec<OwnedFd>, Vec<i32>) {
        let owned: Vec<OwnedFd> = (0..n).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect();
        let raw = owned.iter().map(|f| f.as_raw_fd()).collect();
        (owned, raw)
    }

    #[test]
    fn fds_are_taken_by_role_whatever_their_order() {
        let (owned, raw) = fds(3);
        let mut sorted = RoleFds::sort(&[Initrd, Kernel, Kvm], owned, &START).unwrap();
        assert_eq!(sorted.require(Kvm).unwrap().as_raw_fd(), raw[2]);
        assert_eq!(sorted.take(Initrd).unwrap().as_raw_fd(), raw[0]);
        assert_eq!(sorted.roles(), [Kernel]);
        assert!(sorted.take(Initrd).is_none(), "a role is taken once");
    }

    #[test]
    fn an_optional_role_may_be_absent_a_required_one_may_not() {
        assert!(RoleFds::sort(&[Kvm, Kernel], fds(2).0, &START).is_ok());
        assert_eq!(RoleFds::sort(&[Kvm, Initrd], fds(2).0, &START).unwrap_err(), ManifestError::Missing(Kernel));
    }

    #[test]
    fn duplicates_strangers_and_miscounts_are_refused() {
        let twice = RoleFds::sort(&[Kvm, Kvm, Kernel], fds(3).0, &START).unwrap_err();
        assert_eq!(twice, ManifestError::Duplicate(Kvm));
        let stranger = RoleFds::sort(&[Kvm, Kernel, Tap { nic: 0 }], fds(3).0, &START).unwrap_err();
        assert_eq!(stranger, ManifestError::Unexpected(Tap { nic: 0 }));
        let short = RoleFds::sort(&[Kvm, Kernel, Initrd], fds(2).0, &START).unwrap_err();
        assert_eq!(short, ManifestError::Count { roles: 3, fds: 2 });
    }

    #[test]
    fn per_device_roles_pass_only_a_rule_that_takes_devices_and_only_once_each() {
        let layer = |disk, layer| DiskLayer { disk, layer };
        let devices = START.with_devices();
        let mut sorted =
            RoleFds::sort(&[Kvm, Kernel, layer(0, 0), layer(0, 1), layer(1, 0)], fds(5).0, &devices).unwrap();
        assert!(sorted.take(layer(0, 1)).is_some());
        assert!(sorted.take(layer(1, 1)).is_none());
        let twice = RoleFds::sort(&[Kvm, Kernel, layer(0, 0), layer(0, 0)], fds(4).0, &devices).unwrap_err();
        assert_eq!(twice, ManifestError::Duplicate(layer(0, 0)));
        assert_eq!(
            RoleFds::sort(&[Kvm, Kernel, GuestMemory], fds(3).0, &devices).unwrap_err(),
            ManifestError::Unexpected(GuestMemory)
        );
    }

    #[test]
    fn split_keeps_roles_and_fds_in_one_order() {
        let (owned, raw) = fds(2);
        let disk = DiskLayer { disk: 0, layer: 1 };
        let (roles, borrowed) = split(&[(Tap { nic: 0 }, owned[1].as_fd()), (disk, owned[0].as_fd())]);
        assert_eq!(roles, [Tap { nic: 0 }, disk]);
        assert_eq!(borrowed.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>(), [raw[1], raw[0]]);
    }
}
