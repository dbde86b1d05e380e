//! Puts the guest's virtio-net interfaces on the PCI bus: each over the tap
//! fd the broker passed for it (`FdRole::Tap { nic }`, one per entry of
//! `GuestConfig::nics`, no more, no fewer), its function in its slot with a
//! BAR from the 32-bit hole, ioeventfds on its notify addresses, an irqfd
//! for its INTx line, and its thread ready to start.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use libvirtd::privsep::helper::{FdRole, GuestConfig, ManifestError, NicConfig, RoleFds};
use vm_memory::GuestMemoryMmap;

use super::builder::{BuildError, irq_line};
use crate::bus::{Bus, Space};
use crate::pci::BarAllocator;
use crate::pci::bus::PciBus;
use crate::virtio::net::datapath::Tap;
use crate::virtio::net::{Control, MIN_MTU, Net, Worker};
use crate::virtio::pci::{BAR_SIZE, VirtioPci};

/// Most interfaces a guest may have (one PCI slot each, on bus 0).
pub const MAX_NICS: usize = 28;

/// Takes every interface's tap fd from `fds`, in `config.nics` order. A
/// missing one fails here; one more than `nics` names stays behind and
/// fails the start as unused.
pub fn take_taps(config: &GuestConfig, fds: &mut RoleFds) -> Result<Vec<OwnedFd>, ManifestError> {
    (0..config.nics.len()).map(|nic| fds.require(FdRole::Tap { nic: nic as u8 })).collect()
}

/// Plugs each interface of `nics` into `pci`, over its tap in `taps`.
pub fn attach(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    bus: &mut Bus,
    pci: &Arc<Mutex<PciBus>>,
    bars: &mut BarAllocator,
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
        let bar = bars.allocate(u64::from(BAR_SIZE)).ok_or_else(|| fail("no room for its BAR".into()))?;
        let irq = 10 + (config.pci_slot % 2);
        let line = Arc::new(irq_line(vm, u32::from(irq))?);
        let device = VirtioPci::new(Box::new(net), memory.clone(), bar as u32, line, irq);
        for (addr, event) in device.notify_addresses() {
            vm.register_ioevent(&event, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|source| BuildError::Kvm { what: "KVM_IOEVENTFD", source })?;
        }
        let device = Arc::new(Mutex::new(device));
        bus.insert(Space::Mmio, bar, u64::from(BAR_SIZE), device.clone())?;
        pci.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(config.pci_slot, device)
            .map_err(|e| fail(e.to_string()))?;
        controls.push(control);
        workers.push(worker);
    }
    Ok((controls, workers))
}
