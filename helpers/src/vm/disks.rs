//! Puts the PCI bus and the guest's virtio disks into a VM being built:
//! the config mechanisms on the port and MMIO buses, each disk's image
//! opened from its layer fds, its virtio-pci function plugged in
//! ([`super::pci_plug`]), and its I/O thread ready to start.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use libvirtd::privsep::helper::{BalloonConfig, DiskConfig, DiskDevice, FdRole, GuestConfig, ManifestError, RoleFds};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::builder::BuildError;
use super::gsi::GsiRoutes;
use super::pci_plug::PciPlug;
use crate::block;
use crate::bus::{Bus, Space};
use crate::pci::bus::{CONFIG_PORT, CONFIG_PORT_LEN, ECAM_LEN, PciBus, PciEcam, PciPorts};
use crate::pci::{BarAllocator, ECAM_BASE};
use crate::virtio::blk::{Blk, Disk, Stats, Worker};

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
    /// Written by a disk's I/O thread when it has a backend error to report
    /// (`Stats::take_report`); the control loop waits on it.
    pub io_errors: Option<Arc<EventFd>>,
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
    routes: &Arc<GsiRoutes>,
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
    let io_errors = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::Eventfd)?);
    let mut out = Disks {
        info: Vec::new(),
        workers: Vec::new(),
        io_errors: Some(io_errors.clone()),
        balloon: None,
        pci: pci.clone(),
        bars: BarAllocator::default(),
    };
    for (config, layers) in disks.iter().zip(layers) {
        let DiskDevice::VirtioBlk = config.device;
        if config.layers == 0 || config.layers > MAX_LAYERS {
            return Err(BuildError::Disk(format!("disk {}: {} layers", config.target, config.layers)));
        }
        let backend = block::open(&config.target, config.format, layers, !config.read_only, config.cache)
            .map_err(|e| BuildError::Disk(e.to_string()))?;
        let stats = Arc::new(Stats::reporting_to(io_errors.clone()));
        let disk = Disk::new(config, backend, stats.clone());
        let (blk, worker) = Blk::new(config, disk).map_err(BuildError::Eventfd)?;
        let mut plug = PciPlug { vm, routes, memory, bus: &mut *bus, pci: &pci, bars: &mut bars };
        plug.plug(Box::new(blk), config.pci_slot, &format!("disk {}", config.target))?;
        out.info.push(DiskInfo { alias: config.alias.clone(), stats });
        out.workers.push(worker);
    }
    if let Some(config) = balloon {
        let mut plug = PciPlug { vm, routes, memory, bus, pci: &pci, bars: &mut bars };
        out.balloon = Some(super::balloon::attach(&mut plug, config)?);
    }
    out.bars = bars;
    Ok(out)
}
