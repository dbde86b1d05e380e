//! Puts the guest's virtio-balloon on the PCI bus: its function in its
//! slot with a BAR from the 32-bit hole, ioeventfds on its notify
//! addresses, an irqfd for its INTx line, and its thread ready to start.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use libvirtd::privsep::helper::BalloonConfig;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::builder::{BuildError, irq_line};
use crate::bus::{Bus, Space};
use crate::pci::BarAllocator;
use crate::pci::bus::PciBus;
use crate::virtio::balloon::{Balloon, Control, Worker};
use crate::virtio::pci::{BAR_SIZE, VirtioPci};

/// Plugs the balloon `config` describes into `pci`.
pub fn attach(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    bus: &mut Bus,
    pci: &Arc<Mutex<PciBus>>,
    bars: &mut BarAllocator,
    config: &BalloonConfig,
) -> Result<(Control, Worker), BuildError> {
    let fail = |why: String| BuildError::Disk(format!("memballoon: {why}"));
    let ram = memory.iter().map(|r| r.len()).sum();
    // The backing's page size: a hugetlb memfd reports its huge page size
    // as its block size; anonymous memory and a plain memfd have 4 KiB pages.
    let host_page = memory
        .iter()
        .find_map(|r| r.file_offset().map(|f| f.file().metadata()))
        .transpose()
        .map_err(BuildError::Eventfd)?
        .map_or(4096, |m| std::os::unix::fs::MetadataExt::blksize(&m));
    let (balloon, worker, control) = Balloon::new(ram, config.stats_period, host_page).map_err(BuildError::Eventfd)?;
    let bar = bars.allocate(u64::from(BAR_SIZE)).ok_or_else(|| fail("no room for its BAR".into()))?;
    let irq = 10 + (config.pci_slot % 2);
    let line = Arc::new(irq_line(vm, u32::from(irq))?);
    let device = VirtioPci::new(Box::new(balloon), memory.clone(), bar as u32, line, irq);
    for (addr, event) in device.notify_addresses() {
        vm.register_ioevent(&event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|source| BuildError::Kvm { what: "KVM_IOEVENTFD", source })?;
    }
    let device = Arc::new(Mutex::new(device));
    bus.insert(Space::Mmio, bar, u64::from(BAR_SIZE), device.clone())?;
    pci.lock().unwrap_or_else(|p| p.into_inner()).insert(config.pci_slot, device).map_err(|e| fail(e.to_string()))?;
    Ok((control, worker))
}
