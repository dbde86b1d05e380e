//! Puts the PCI bus and the guest's virtio disks into a VM being built:
//! the config mechanisms on the port and MMIO buses, each disk's image
//! opened from its layer fds, its virtio-pci function in its slot with a
//! BAR from the 32-bit hole, KVM ioeventfds on its notify addresses and
//! an irqfd for its INTx line, and its I/O thread ready to start.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use libvirtd::privsep::helper::{BalloonConfig, DiskConfig, DiskDevice, FdRole, GuestConfig, ManifestError, RoleFds};
use vm_memory::GuestMemoryMmap;

use super::builder::{BuildError, irq_line};
use crate::block;
use crate::bus::{Bus, Space};
use crate::pci::bus::{CONFIG_PORT, CONFIG_PORT_LEN, ECAM_LEN, PciBus, PciEcam, PciPorts};
use crate::pci::{BarAllocator, ECAM_BASE};
use crate::virtio::blk::{Blk, Disk, Stats, Worker};
use crate::virtio::pci::{BAR_SIZE, VirtioPci};

/// Most disks a guest may have (one PCI slot each, on bus 0).
pub const MAX_DISKS: usize = 28;
/// Most layers in one disk's chain.
pub const MAX_LAYERS: u8 = 16;

/// A disk the control loop reports on.
pub struct DiskInfo {
    /// Its alias.
    pub alias: String,
    /// Its counters.
    pub stats: Arc<Stats>,
}

/// What the PCI bus and the disks gave the VM.
pub struct Disks {
    /// Per disk, in `GuestConfig::disks` order.
    pub info: Vec<DiskInfo>,
    /// Their I/O threads, not started yet.
    pub workers: Vec<Worker>,
    /// The balloon, if the guest has one, and its thread, not started yet.
    pub balloon: Option<(crate::virtio::balloon::Control, crate::virtio::balloon::Worker)>,
    /// The PCI bus, for the devices placed after the disks.
    pub pci: Arc<Mutex<PciBus>>,
    /// What is left of the 32-bit hole for their BARs.
    pub bars: BarAllocator,
}

/// Takes every disk's layer fds from `fds`, in `config.disks` order.
pub fn take_layers(config: &GuestConfig, fds: &mut RoleFds) -> Result<Vec<Vec<OwnedFd>>, ManifestError> {
    let mut all = Vec::with_capacity(config.disks.len());
    for (disk, d) in config.disks.iter().enumerate() {
        let mut layers = Vec::with_capacity(usize::from(d.layers));
        for layer in 0..d.layers {
            layers.push(fds.require(FdRole::DiskLayer { disk: disk as u8, layer })?);
        }
        all.push(layers);
    }
    Ok(all)
}

/// Puts the PCI bus on `bus` and every disk on it.
pub fn attach(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    bus: &mut Bus,
    disks: &[DiskConfig],
    layers: Vec<Vec<OwnedFd>>,
    balloon: Option<&BalloonConfig>,
) -> Result<Disks, BuildError> {
    let pci = Arc::new(Mutex::new(PciBus::new()));
    bus.insert(Space::Pio, CONFIG_PORT.into(), CONFIG_PORT_LEN, Arc::new(Mutex::new(PciPorts(pci.clone()))))?;
    bus.insert(Space::Mmio, ECAM_BASE, ECAM_LEN, Arc::new(Mutex::new(PciEcam(pci.clone()))))?;
    if disks.len() > MAX_DISKS {
        return Err(BuildError::Disk(format!("{} disks; at most {MAX_DISKS} are possible", disks.len())));
    }
    let mut bars = BarAllocator::default();
    let mut out =
        Disks { info: Vec::new(), workers: Vec::new(), balloon: None, pci: pci.clone(), bars: Default::default() };
    for (config, layers) in disks.iter().zip(layers) {
        let DiskDevice::VirtioBlk = config.device;
        if config.layers == 0 || config.layers > MAX_LAYERS {
            return Err(BuildError::Disk(format!("disk {}: {} layers", config.target, config.layers)));
        }
        let backend = block::open(&config.target, config.format, layers, !config.read_only, config.cache)
            .map_err(|e| BuildError::Disk(e.to_string()))?;
        let stats = Arc::new(Stats::default());
        let disk = Disk::new(config, backend, stats.clone());
        let (blk, worker) = Blk::new(config, disk).map_err(BuildError::Eventfd)?;
        let bar = bars
            .allocate(u64::from(BAR_SIZE))
            .ok_or_else(|| BuildError::Disk(format!("disk {}: no room for its BAR", config.target)))?;
        // INTx: INTA of each slot on GSI 10 or 11, alternating as a PCI
        // swizzle would.
        let irq = 10 + (config.pci_slot % 2);
        let line = Arc::new(irq_line(vm, u32::from(irq))?);
        let device = VirtioPci::new(Box::new(blk), memory.clone(), bar as u32, line, irq);
        for (addr, event) in device.notify_addresses() {
            vm.register_ioevent(&event, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|source| BuildError::Kvm { what: "KVM_IOEVENTFD", source })?;
        }
        let device = Arc::new(Mutex::new(device));
        bus.insert(Space::Mmio, bar, u64::from(BAR_SIZE), device.clone())?;
        pci.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(config.pci_slot, device)
            .map_err(|e| BuildError::Disk(format!("disk {}: {e}", config.target)))?;
        out.info.push(DiskInfo { alias: config.alias.clone(), stats });
        out.workers.push(worker);
    }
    if let Some(config) = balloon {
        out.balloon = Some(super::balloon::attach(vm, memory, bus, &pci, &mut bars, config)?);
    }
    out.bars = bars;
    Ok(out)
}
