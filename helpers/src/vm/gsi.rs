//! The VM's one GSI routing table. `KVM_SET_GSI_ROUTING` replaces the
//! whole table, so one owner keeps it for every device: the default
//! routes KVM starts with (GSIs 0-15 to the PICs and the I/O APIC, 16-23
//! to the I/O APIC), which must survive every update or the legacy lines
//! (serial, PIT, INTx) go dead, plus an MSI route per allocated vector
//! GSI from 24 up, set while the guest's table says where it goes.
//!
//! The owner holds the VM weakly: the [`super::machine::Machine`] alone
//! decides when the VM fd closes, and updates come only from vCPU threads
//! (guest writes to MSI-X tables), all joined before that.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::VmFd;

use crate::pci::msix::MsiMessage;
use crate::pci::msix_irq::MsiRoutes;

/// The first GSI past the I/O APIC's pins.
const FIRST_MSI_GSI: u32 = 24;
/// The most MSI GSIs handed out (KVM allows 4096 routes on x86).
pub const MAX_MSI_GSIS: u32 = 1024;

#[derive(Default)]
struct Table {
    msi: BTreeMap<u32, Option<MsiMessage>>,
    failures: u64,
}

/// The VM-wide routing table.
pub struct GsiRoutes {
    vm: Weak<VmFd>,
    table: Mutex<Table>,
}

impl GsiRoutes {
    /// The table of `vm`, with KVM's default routes.
    pub fn new(vm: Weak<VmFd>) -> GsiRoutes {
        GsiRoutes { vm, table: Mutex::new(Table::default()) }
    }

    /// A GSI of its own for one MSI vector, routed nowhere yet; `None`
    /// when [`MAX_MSI_GSIS`] are out.
    pub fn allocate(&self) -> Option<u32> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let gsi = FIRST_MSI_GSI + t.msi.len() as u32;
        if gsi >= FIRST_MSI_GSI + MAX_MSI_GSIS {
            return None;
        }
        t.msi.insert(gsi, None);
        Some(gsi)
    }

    /// Hands the whole table to KVM.
    fn commit(&self, t: &mut Table) {
        let entries = entries(&t.msi);
        let Some(vm) = self.vm.upgrade() else { return };
        let result = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| format!("{e:?}"))
            .and_then(|r| vm.set_gsi_routing(&r).map_err(|e| e.to_string()));
        if let Err(e) = result {
            t.failures += 1;
            if t.failures.is_power_of_two() {
                eprintln!("libvirt-helper: KVM_SET_GSI_ROUTING failed ({} times): {e}", t.failures);
            }
        }
    }
}

impl MsiRoutes for GsiRoutes {
    fn route(&self, gsi: u32, message: Option<MsiMessage>) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match t.msi.get_mut(&gsi) {
            Some(slot) if *slot != message => *slot = message,
            _ => return,
        }
        self.commit(&mut t);
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default routes, then the MSI routes that go somewhere.
fn entries(msi: &BTreeMap<u32, Option<MsiMessage>>) -> Vec<kvm_irq_routing_entry> {
    let mut out = Vec::with_capacity(40 + msi.len());
    for gsi in 0..24 {
        out.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 { KVM_IRQCHIP_PIC_MASTER } else { KVM_IRQCHIP_PIC_SLAVE };
            out.push(irqchip(gsi, pic, gsi % 8));
        }
    }
    for (&gsi, m) in msi {
        if let Some(m) = m {
            let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip(e: &kvm_irq_routing_entry) -> (u32, u32) {
        assert_eq!(e.type_, KVM_IRQ_ROUTING_IRQCHIP);
        // SAFETY: the entry's type says `irqchip` is the member set.
        let c = unsafe { e.u.irqchip };
        (c.irqchip, c.pin)
    }

    #[test]
    fn the_table_keeps_the_legacy_routes_and_lists_routed_vectors_only() {
        let mut msi = BTreeMap::new();
        msi.insert(24, Some(MsiMessage { address: 0xfee0_0000, data: 0x41 }));
        msi.insert(25, None);
        let e = entries(&msi);
        assert_eq!(e.len(), 24 + 16 + 1);
        let pics = e.iter().filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP && e.gsi < 16).count();
        assert_eq!(pics, 32, "each ISA GSI on the I/O APIC and a PIC");
        let cascade = e.iter().find(|e| e.gsi == 10 && chip(e) == (KVM_IRQCHIP_PIC_SLAVE, 2));
        assert!(cascade.is_some(), "GSI 10 is the slave PIC's pin 2");
        let last = e.last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry's type says `msi` is the member set.
        let msi = unsafe { last.u.msi };
        assert_eq!((msi.address_lo, msi.data), (0xfee0_0000, 0x41));
    }

    #[test]
    fn gsis_are_handed_out_once_and_bounded() {
        let r = GsiRoutes::new(Weak::new());
        assert_eq!(r.allocate(), Some(24));
        assert_eq!(r.allocate(), Some(25));
        for _ in 2..MAX_MSI_GSIS {
            assert!(r.allocate().is_some());
        }
        assert_eq!(r.allocate(), None);
        // A route for a GSI never handed out is ignored.
        r.route(5000, Some(MsiMessage::default()));
        assert!(!r.table.lock().unwrap().msi.contains_key(&5000));
    }
}
