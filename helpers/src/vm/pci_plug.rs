//! Plugs a virtio device into the VM being built, the same way for every
//! kind: its virtio-pci function in its slot, BAR 0 (the virtio
//! structures) and BAR 1 (MSI-X) from the 32-bit hole, KVM ioeventfds on
//! its notify addresses, its INTx line (a `devices::IrqLine`), and a GSI with an
//! irqfd per MSI-X vector, routed through the VM's one [`GsiRoutes`].

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::builder::{BuildError, irq_line};
use super::gsi::GsiRoutes;
use crate::bus::{Bus, Space};
use crate::pci::BarAllocator;
use crate::pci::bus::PciBus;
use crate::pci::msix_irq::{MsixIrq, Vector};
use crate::virtio::VirtioDevice;
use crate::virtio::pci::{BAR_SIZE, Bars, MSIX_BAR_SIZE, MsixBar, VirtioPci};

/// What every PCI device is plugged into.
pub struct PciPlug<'a> {
    /// The VM (ioeventfds, irqfds).
    pub vm: &'a VmFd,
    /// The VM's routing table.
    pub routes: &'a Arc<GsiRoutes>,
    /// Guest memory, for the transport.
    pub memory: &'a GuestMemoryMmap,
    /// The MMIO bus the BARs go on.
    pub bus: &'a mut Bus,
    /// PCI bus 0.
    pub pci: &'a Arc<Mutex<PciBus>>,
    /// Where BARs come from.
    pub bars: &'a mut BarAllocator,
}

impl PciPlug<'_> {
    /// Puts `device` in `slot`; errors name `what`.
    pub fn plug(&mut self, device: Box<dyn VirtioDevice>, slot: u8, what: &str) -> Result<(), BuildError> {
        let fail = |why: String| BuildError::Disk(format!("{what}: {why}"));
        let virtio = self.bars.allocate(u64::from(BAR_SIZE)).ok_or_else(|| fail("no room for its BAR".into()))?;
        let msix_bar =
            self.bars.allocate(u64::from(MSIX_BAR_SIZE)).ok_or_else(|| fail("no room for its BAR".into()))?;
        // INTx: INTA of each slot on GSI 10 or 11, alternating as a PCI
        // swizzle would.
        let irq = 10 + (slot % 2);
        let line = Arc::new(irq_line(self.vm, u32::from(irq))?);
        let mut vectors = Vec::new();
        for _ in 0..VirtioPci::vectors_for(device.as_ref()) {
            let gsi = self.routes.allocate().ok_or_else(|| fail("no interrupt routes left".into()))?;
            let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::Eventfd)?);
            self.vm.register_irqfd(&fd, gsi).map_err(|source| BuildError::Kvm { what: "KVM_IRQFD", source })?;
            vectors.push(Vector { gsi, fd });
        }
        let msix = MsixIrq::new(vectors, self.routes.clone());
        let bars = Bars { virtio: virtio as u32, msix: msix_bar as u32 };
        let device = VirtioPci::new(device, self.memory.clone(), bars, line, irq, msix);
        for (addr, event) in device.notify_addresses() {
            self.vm
                .register_ioevent(&event, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|source| BuildError::Kvm { what: "KVM_IOEVENTFD", source })?;
        }
        let device = Arc::new(Mutex::new(device));
        self.bus.insert(Space::Mmio, virtio, u64::from(BAR_SIZE), device.clone())?;
        self.bus.insert(
            Space::Mmio,
            msix_bar,
            u64::from(MSIX_BAR_SIZE),
            Arc::new(Mutex::new(MsixBar(device.clone()))),
        )?;
        self.pci.lock().unwrap_or_else(|p| p.into_inner()).insert(slot, device).map_err(|e| fail(e.to_string()))?;
        Ok(())
    }
}
