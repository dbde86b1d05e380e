//! Puts the guest's virtio-net interfaces on the PCI bus: each over the tap
//! fd the broker passed for it (`FdRole::Tap { nic }`, one per entry of
//! `GuestConfig::nics`, no more, no fewer), plugged as every virtio device is
//! ([`super::pci_plug`]), and its thread ready to start.

use std::os::fd::OwnedFd;

use libvirtd::privsep::helper::{FdRole, GuestConfig, ManifestError, NicConfig, RoleFds};

use super::builder::BuildError;
use super::pci_plug::PciPlug;
use crate::virtio::net::datapath::Tap;
use crate::virtio::net::{Control, MIN_MTU, Net, Worker};

/// Most interfaces a guest may have (one PCI slot each, on bus 0).
pub const MAX_NICS: usize = 28;

/// Takes every interface's tap fd from `fds`, in `config.nics` order. A
/// missing one fails here; one more than `nics` names stays behind and
/// fails the start as unused.
pub fn take_taps(config: &GuestConfig, fds: &mut RoleFds) -> Result<Vec<OwnedFd>, ManifestError> {
    (0..config.nics.len()).map(|nic| fds.require(FdRole::Tap { nic: nic as u8 })).collect()
}

/// Plugs each interface of `nics` into `plug`, over its tap in `taps`.
pub fn attach(
    plug: &mut PciPlug<'_>,
    nics: &[NicConfig],
    taps: Vec<OwnedFd>,
) -> Result<(Vec<Control>, Vec<Worker>), BuildError> {
    if nics.len() > MAX_NICS || nics.len() != taps.len() {
        return Err(BuildError::Nic(format!("{} interfaces with {} taps; at most {MAX_NICS}", nics.len(), taps.len())));
    }
    let (mut controls, mut workers) = (Vec::new(), Vec::new());
    for (config, tap) in nics.iter().zip(taps) {
        let fail = |why: String| BuildError::Nic(format!("interface {}: {why}", config.alias));
        if config.mac[0] & 1 != 0 {
            return Err(fail("a multicast MAC address".into()));
        }
        if config.mtu.is_some_and(|m| m < MIN_MTU) {
            return Err(fail(format!("an MTU below {MIN_MTU}")));
        }
        if controls.iter().any(|c: &Control| c.alias() == config.alias) {
            return Err(fail("a second interface with this alias".into()));
        }
        let tap = Tap::new(tap).map_err(|e| fail(format!("its tap: {e}")))?;
        let (net, worker, control) = Net::new(config, tap).map_err(BuildError::Eventfd)?;
        plug.plug(Box::new(net), config.pci_slot, &format!("interface {}", config.alias))?;
        controls.push(control);
        workers.push(worker);
    }
    Ok((controls, workers))
}
