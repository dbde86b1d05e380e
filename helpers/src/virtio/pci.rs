//! The virtio-pci modern transport (virtio 1.2, 4.1): a PCI function whose
//! one 32-bit memory BAR holds the common configuration, the ISR status,
//! the device configuration and the queue notification addresses, each
//! found by the guest through a vendor capability.
//!
//! Queue notifications are KVM ioeventfds on the notify addresses (see
//! [`VirtioPci::notify_addresses`]): a guest's kick is an eventfd signal to
//! the device's thread and never leaves the kernel. Should a notify write
//! still arrive here, it signals the same eventfd.
//!
//! Interrupts are MSI-X (a vector per queue and one for configuration
//! changes, the table and PBA in BAR 1 as QEMU places them; see
//! [`crate::pci::msix_irq`]) once the guest enables it, and otherwise
//! INTx, raised as an edge on the function's legacy line through an
//! irqfd with the ISR register saying why. The VIRTIO_PCI_CAP_PCI_CFG
//! capability gives config-space access to the BARs (virtio 1.2, 4.1.4.9).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{F_EVENT_IDX, F_VERSION_1, VirtioDevice, VirtioInterrupt, status};
use crate::devices::{BusDevice, DeviceState, Irq, Request, StateError};
use crate::pci::PciDevice;
use crate::pci::config::{Bar, COMMAND_MEMORY, ConfigEvent, ConfigSpace, Identity};
use crate::pci::msix;
use crate::pci::msix_irq::MsixIrq;

/// The BAR's size and the regions in it.
pub const BAR_SIZE: u32 = 0x4000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
/// Queue `n` is notified at NOTIFY + n * this.
const NOTIFY_MULTIPLIER: u32 = 4;
/// What an unused MSI-X vector register reads.
pub const NO_VECTOR: u16 = 0xffff;
/// BAR 1: the MSI-X table, then the PBA, as QEMU lays them out.
pub const MSIX_BAR_SIZE: u32 = 0x1000;
const MSIX_TABLE: u64 = 0;
const MSIX_PBA: u64 = 0x800;
/// `virtio_pci_cfg_cap`: its bar byte, offset and length dwords, data dword.
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;
const PCI_CFG_DATA: usize = 16;
/// The PCI vendor capability id virtio uses.
const CAP_VENDOR: u8 = 0x09;

/// ISR status bits (virtio 1.2, 4.1.4.5): a queue was used, the configuration changed.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// The transport's interrupt side, shared with the device's thread.
struct Interrupt {
    isr: AtomicU8,
    broken: AtomicBool,
    line: Arc<dyn Irq>,
    msix: MsixIrq,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl Interrupt {
    /// A configuration-change interrupt: the config vector under MSI-X,
    /// else INTx; either way ISR bit 1 says so.
    fn raise_config(&self) {
        let old = self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        if !self.msix.signal(self.config_vector.load(Ordering::SeqCst)) {
            self.raise_line(old, ISR_CONFIG);
        }
    }

    /// Pulses INTx for `bit` newly set in the ISR (`old` before it was).
    /// A bit already set has had its edge and the driver has not yet read
    /// the ISR (which clears it): that read will see this cause too, so a
    /// second pulse would only cost the guest another interrupt. This is
    /// what QEMU's level line does (high while the ISR is not 0).
    fn raise_line(&self, old: u8, bit: u8) {
        if old & bit == 0 {
            self.line.raise();
        }
    }

    /// Stores `vector` if the table has it, else NO_VECTOR (which the
    /// driver reads back as the mapping failing).
    fn set_vector(&self, at: &AtomicU16, vector: u16) {
        let v = if vector < self.msix.vectors() { vector } else { NO_VECTOR };
        at.store(v, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for Interrupt {
    fn queue(&self, index: u16) {
        let vector = self.queue_vectors.get(usize::from(index)).map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst));
        if !self.msix.signal(vector) {
            let old = self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
            self.raise_line(old, ISR_QUEUE);
        }
    }
    fn broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
        self.raise_config();
    }
    fn config(&self) {
        self.raise_config();
    }
}

/// One virtio device on PCI.
pub struct VirtioPci {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    events: Vec<Arc<EventFd>>,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    queues: Vec<Queue>,
    config_generation: u8,
    /// Where the MSI-X and PCI_CFG capabilities are in config space.
    msix_cap: usize,
    pci_cfg_cap: usize,
}

/// Where a function's two BARs were placed.
#[derive(Debug, Clone, Copy)]
pub struct Bars {
    /// BAR 0 ([`BAR_SIZE`]): the virtio structures.
    pub virtio: u32,
    /// BAR 1 ([`MSIX_BAR_SIZE`]): the MSI-X table and PBA.
    pub msix: u32,
}

impl VirtioPci {
    /// MSI-X vectors a device needs: one per queue and one for configuration.
    pub fn vectors_for(device: &dyn VirtioDevice) -> u16 {
        (device.queue_max_sizes().len() + 1).min(usize::from(msix::MAX_VECTORS)) as u16
    }

    /// `device` at `bars`, raising `line` (legacy IRQ `irq`) or the
    /// vectors of `msix` (see [`VirtioPci::vectors_for`]).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        bars: Bars,
        line: Arc<dyn Irq>,
        irq: u8,
        msix: MsixIrq,
    ) -> VirtioPci {
        let kind = device.device_type();
        let id = Identity {
            vendor: 0x1af4,
            device: 0x1040 + kind,
            class: class_of(kind),
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        };
        let mut config = ConfigSpace::new(id, 1, irq);
        config.set_bar(0, Bar { addr: bars.virtio, size: BAR_SIZE });
        config.set_bar(1, Bar { addr: bars.msix, size: MSIX_BAR_SIZE });
        for (kind, offset, len) in [(1u8, COMMON, COMMON_LEN), (3, ISR, 4), (4, DEVICE_CFG, DEVICE_CFG_LEN)] {
            config.add_capability(CAP_VENDOR, &cap_body(16, kind, offset, len, &[]));
        }
        let notify_len = u64::from(NOTIFY_MULTIPLIER) * device.queue_max_sizes().len() as u64;
        config.add_capability(CAP_VENDOR, &cap_body(20, 2, NOTIFY, notify_len, &NOTIFY_MULTIPLIER.to_le_bytes()));
        // Both fit: 4 vendor capabilities of 16-20 bytes, 12 and 20 more,
        // in the 192 bytes past the header (0 below would mean "absent").
        let msix_cap =
            config.add_capability(msix::CAP_ID, &msix.capability(1, MSIX_TABLE as u32, MSIX_PBA as u32)).unwrap_or(0);
        if msix_cap != 0 {
            config.set_writable(msix_cap, u32::from(msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK) << 16);
        }
        let pci_cfg_cap = config.add_capability(CAP_VENDOR, &cap_body(20, 5, 0, 0, &[0; 4])).unwrap_or(0);
        if pci_cfg_cap != 0 {
            config.set_writable(pci_cfg_cap + PCI_CFG_BAR, 0xff);
            config.set_writable(pci_cfg_cap + PCI_CFG_OFFSET, 0xffff_ffff);
            config.set_writable(pci_cfg_cap + PCI_CFG_LENGTH, 0xffff_ffff);
        }
        let queues: Vec<Queue> = device.queue_max_sizes().iter().filter_map(|&max| Queue::new(max).ok()).collect();
        let events = device.queue_events();
        let interrupt = Arc::new(Interrupt {
            isr: AtomicU8::new(0),
            broken: AtomicBool::new(false),
            line,
            msix,
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: queues.iter().map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        });
        VirtioPci {
            config,
            device,
            memory,
            interrupt,
            events,
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues,
            config_generation: 0,
            msix_cap,
            pci_cfg_cap,
        }
    }

    /// Where each queue's notification lands, with the eventfd it signals,
    /// for KVM ioeventfds.
    pub fn notify_addresses(&self) -> Vec<(u64, Arc<EventFd>)> {
        let base = self.config.bar(0).map_or(0, |b| u64::from(b.addr)) + NOTIFY;
        self.events
            .iter()
            .enumerate()
            .map(|(i, e)| (base + i as u64 * u64::from(NOTIFY_MULTIPLIER), e.clone()))
            .collect()
    }

    fn device_features(&self) -> u64 {
        self.device.features() | F_VERSION_1
    }

    fn status(&self) -> u8 {
        let broken = if self.interrupt.broken.load(Ordering::SeqCst) { status::NEEDS_RESET } else { 0 };
        self.status | broken
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.interrupt.isr.store(0, Ordering::SeqCst);
        self.interrupt.broken.store(false, Ordering::SeqCst);
        self.interrupt.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for v in &self.interrupt.queue_vectors {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
    }

    fn set_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = new & !status::NEEDS_RESET;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let offered = self.device_features();
            let acceptable = self.driver_features & !offered == 0 && self.driver_features & F_VERSION_1 != 0;
            if !acceptable || old & status::DRIVER == 0 {
                // The driver reads FEATURES_OK back clear: refused.
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 {
                new &= !status::DRIVER_OK;
                self.interrupt.broken.store(true, Ordering::SeqCst);
            } else if let Err(e) = self.activate() {
                eprintln!("libvirt-helper: virtio device type {}: {e}", self.device.device_type());
                self.interrupt.broken.store(true, Ordering::SeqCst);
            }
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<(), super::ActivateError> {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.memory) {
                return Err(super::ActivateError(format!("queue {i} lies outside guest memory or is misaligned")));
            }
        }
        let event_idx = self.driver_features & F_EVENT_IDX != 0;
        let queues = self
            .queues
            .iter()
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .map(|mut q| {
                q.set_event_idx(event_idx);
                q
            })
            .collect();
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device.activate(self.memory.clone(), self.driver_features, queues, interrupt)
    }

    /// The queue the driver selected, while it may still be set up.
    fn queue_mut(&mut self) -> Option<&mut Queue> {
        if self.status & status::FEATURES_OK == 0 || self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let q = self.queues.get(usize::from(self.queue_select));
        let value: u64 = match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.interrupt.config_vector.load(Ordering::SeqCst)),
            0x1a => self
                .interrupt
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| u64::from(v.load(Ordering::SeqCst))),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status()),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size())),
            0x1c => q.map_or(0, |q| u64::from(q.ready())),
            0x1e => u64::from(self.queue_select),
            0x20 => q.map_or(0, |q| q.desc_table() & 0xffff_ffff),
            0x24 => q.map_or(0, |q| q.desc_table() >> 32),
            0x28 => q.map_or(0, |q| q.avail_ring() & 0xffff_ffff),
            0x2c => q.map_or(0, |q| q.avail_ring() >> 32),
            0x30 => q.map_or(0, |q| q.used_ring() & 0xffff_ffff),
            0x34 => q.map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let (v32, v16) = (v as u32, v as u16);
        match offset {
            0x00 => self.device_feature_select = v32,
            0x08 => self.driver_feature_select = v32,
            // Features are chosen after DRIVER and before FEATURES_OK.
            0x0c if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v32),
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v32) << 32),
                    _ => {}
                }
            }
            0x10 => self.interrupt.set_vector(&self.interrupt.config_vector, v16),
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v16,
            0x1a => {
                if let Some(at) = self.interrupt.queue_vectors.get(usize::from(self.queue_select)) {
                    self.interrupt.set_vector(at, v16);
                }
            }
            0x18 => {
                if let Some(q) = self.queue_mut() {
                    // Not a power of two, zero or above the maximum: ignored, the size stays.
                    let _ = q.try_set_size(v16);
                }
            }
            0x1c => {
                if let Some(q) = self.queue_mut() {
                    q.set_ready(v16 == 1);
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 => {
                if let Some(q) = self.queue_mut() {
                    let (lo, hi) = if offset.is_multiple_of(8) { (Some(v32), None) } else { (None, Some(v32)) };
                    match offset & !7 {
                        0x20 => q.set_desc_table_address(lo, hi),
                        0x28 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }

    /// A guest read of the BAR at `offset`.
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON + COMMON_LEN && o + data.len() as u64 <= COMMON_LEN => self.common_read(o, data),
            ISR => data[0] = self.interrupt.isr.swap(0, Ordering::SeqCst),
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG, data)
            }
            _ => {}
        }
    }

    /// A guest write to the BAR at `offset`.
    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON + COMMON_LEN && o + data.len() as u64 <= COMMON_LEN => self.common_write(o, data),
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG, data)
            }
            o if o >= NOTIFY => {
                // Reached only where no ioeventfd caught the write.
                let index = (o - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                if let Some(e) = self.events.get(index as usize) {
                    let _ = e.write(1);
                }
            }
            _ => {}
        }
    }

    fn decodes(&self) -> bool {
        self.config.command() & COMMAND_MEMORY != 0
    }

    /// A guest read of BAR 1 (the MSI-X table and PBA) at `offset`.
    pub fn msix_read(&mut self, offset: u64, data: &mut [u8]) {
        if self.decodes() {
            self.msix_bar_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    /// A guest write to BAR 1 at `offset`.
    pub fn msix_write(&mut self, offset: u64, data: &[u8]) {
        if self.decodes() {
            self.msix_bar_write(offset, data);
        }
    }

    fn msix_bar_read(&mut self, offset: u64, data: &mut [u8]) {
        let (table_len, pba_len) = self.interrupt.msix.lens();
        match offset {
            o if o < MSIX_TABLE + table_len => self.interrupt.msix.table_read(o - MSIX_TABLE, data),
            o if (MSIX_PBA..MSIX_PBA + pba_len).contains(&o) => self.interrupt.msix.pba_read(o - MSIX_PBA, data),
            _ => data.fill(0),
        }
    }

    /// BAR 1 without the decode check (the PBA is read-only).
    fn msix_bar_write(&mut self, offset: u64, data: &[u8]) {
        let (table_len, _) = self.interrupt.msix.lens();
        if offset < MSIX_TABLE + table_len {
            self.interrupt.msix.table_write(offset - MSIX_TABLE, data);
        }
    }

    /// The BAR access the PCI_CFG capability's window names, if it is one
    /// we do (BAR 0 or 1, 1, 2 or 4 bytes, aligned, inside the BAR).
    fn window(&self) -> Option<(u8, u64, usize)> {
        let mut b = [0u8; 4];
        self.config.read(self.pci_cfg_cap + PCI_CFG_BAR, &mut b);
        let bar = b[0];
        self.config.read(self.pci_cfg_cap + PCI_CFG_OFFSET, &mut b);
        let offset = u64::from(u32::from_le_bytes(b));
        self.config.read(self.pci_cfg_cap + PCI_CFG_LENGTH, &mut b);
        let len = u32::from_le_bytes(b);
        let size = match bar {
            0 => BAR_SIZE,
            1 => MSIX_BAR_SIZE,
            _ => return None,
        };
        let ok = matches!(len, 1 | 2 | 4)
            && offset.is_multiple_of(u64::from(len))
            && offset + u64::from(len) <= u64::from(size);
        ok.then_some((bar, offset, len as usize))
    }

    /// Whether a config access at `offset` lies in the PCI_CFG window's
    /// data dword.
    fn in_window(&self, offset: usize) -> bool {
        self.pci_cfg_cap != 0
            && (self.pci_cfg_cap + PCI_CFG_DATA..self.pci_cfg_cap + PCI_CFG_DATA + 4).contains(&offset)
    }

    fn window_read(&mut self, data: &mut [u8]) {
        data.fill(0);
        let Some((bar, offset, len)) = self.window() else { return };
        let mut bytes = [0u8; 4];
        match bar {
            0 => self.bar_read(offset, &mut bytes[..len]),
            _ => self.msix_bar_read(offset, &mut bytes[..len]),
        }
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn window_write(&mut self, data: &[u8]) {
        let Some((bar, offset, len)) = self.window() else { return };
        if data.len() < len {
            return;
        }
        match bar {
            0 => self.bar_write(offset, &data[..len]),
            _ => self.msix_bar_write(offset, &data[..len]),
        }
    }
}

/// BAR 1 of a virtio function on the MMIO bus: its MSI-X table and PBA.
pub struct MsixBar(pub Arc<std::sync::Mutex<VirtioPci>>);

impl BusDevice for MsixBar {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).msix_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).msix_write(offset, data);
        None
    }

    fn state(&self) -> DeviceState {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).state()
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).restore(state)
    }
}

/// The body of a `virtio_pci_cap` after its id and next pointer.
fn cap_body(cap_len: u8, cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![cap_len, cfg_type, 0 /* BAR 0 */, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// The PCI class a virtio device type shows.
fn class_of(kind: u16) -> u32 {
    match kind {
        1 => 0x02_00_00, // network
        2 => 0x01_00_00, // mass storage (SCSI, as QEMU shows virtio-blk)
        _ => 0xff_00_00,
    }
}

impl PciDevice for VirtioPci {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if self.in_window(offset) {
            return self.window_read(data);
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        if self.in_window(offset) {
            return self.window_write(data);
        }
        if let Some(ConfigEvent::BarMoveRefused { bar, addr }) = self.config.write(offset, data) {
            eprintln!("libvirt-helper: the guest tried to move virtio BAR {bar} to {addr:#x}; BARs stay where placed");
        }
        if self.msix_cap != 0 && offset / 4 == self.msix_cap / 4 {
            let mut control = [0u8; 2];
            self.config.read(self.msix_cap + 2, &mut control);
            self.interrupt.msix.set_control(u16::from_le_bytes(control));
        }
    }
}

impl BusDevice for VirtioPci {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if self.decodes() {
            self.bar_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        if self.decodes() {
            self.bar_write(offset, data);
        }
        None
    }

    fn state(&self) -> DeviceState {
        DeviceState::VirtioPci(VirtioPciState {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
        })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::VirtioPci(_) => Err(StateError::Invalid {
                kind: "virtio-pci",
                reason: "restoring a running virtio device is not implemented".into(),
            }),
            other => Err(StateError::Kind { want: "virtio-pci", got: other.kind() }),
        }
    }
}

/// What a virtio-pci function shows of its state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioPciState {
    /// virtio device type.
    pub device_type: u16,
    /// Device status.
    pub status: u8,
    /// Negotiated features.
    pub driver_features: u64,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::testing::CountingIrq;
    use crate::pci::msix_irq::Vector;
    use crate::pci::msix_irq::testing::RecordedRoutes;

    /// A device that records what the transport did to it.
    #[derive(Default)]
    struct Probe {
        activated: Activations,
        resets: Arc<Mutex<u32>>,
        event: Option<Arc<EventFd>>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u16 {
            2
        }
        fn features(&self) -> u64 {
            1 << 9
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn queue_events(&self) -> Vec<Arc<EventFd>> {
            self.event.iter().cloned().collect()
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(
            &mut self,
            _m: GuestMemoryMmap,
            features: u64,
            queues: Vec<Queue>,
            _i: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), super::super::ActivateError> {
            self.activated.lock().unwrap().push((features, queues.iter().filter(|q| q.ready()).count()));
            Ok(())
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    /// What `Probe` saw activated: (features, ready queues).
    type Activations = Arc<Mutex<Vec<(u64, usize)>>>;

    /// What a test sees of the interrupts: the INTx line, the MSI-X
    /// vectors' irqfds and the routes.
    struct Lines {
        intx: Arc<CountingIrq>,
        vectors: Vec<Arc<EventFd>>,
        routes: Arc<RecordedRoutes>,
    }

    fn transport_with_lines() -> (VirtioPci, Activations, Arc<Mutex<u32>>, Arc<EventFd>, Lines) {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let event = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let probe = Probe { event: Some(event.clone()), ..Default::default() };
        let (a, r) = (probe.activated.clone(), probe.resets.clone());
        let intx = Arc::new(CountingIrq::default());
        let routes = Arc::new(RecordedRoutes::default());
        let n = VirtioPci::vectors_for(&probe);
        let fds: Vec<_> = (0..n).map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())).collect();
        let vectors = fds.iter().enumerate().map(|(i, fd)| Vector { gsi: 24 + i as u32, fd: fd.clone() }).collect();
        let msix = MsixIrq::new(vectors, routes.clone());
        let bars = Bars { virtio: 0xc000_0000, msix: 0xc000_4000 };
        let mut t = VirtioPci::new(Box::new(probe), memory, bars, intx.clone(), 10, msix);
        t.config_write(4, &COMMAND_MEMORY.to_le_bytes());
        (t, a, r, event, Lines { intx, vectors: fds, routes })
    }

    fn transport() -> (VirtioPci, Activations, Arc<Mutex<u32>>, Arc<EventFd>) {
        let (t, a, r, e, _) = transport_with_lines();
        (t, a, r, e)
    }

    /// The config-space offsets of every capability, with its id and (for
    /// vendor ones) its cfg_type.
    fn caps(t: &mut VirtioPci) -> Vec<(usize, u8, u8)> {
        let mut d = [0u8; 1];
        t.config_read(0x34, &mut d);
        let mut at = usize::from(d[0]);
        let mut out = Vec::new();
        while at != 0 {
            let mut cap = [0u8; 4];
            t.config_read(at, &mut cap);
            out.push((at, cap[0], cap[3]));
            at = usize::from(cap[1]);
        }
        out
    }

    fn w32(t: &mut VirtioPci, off: u64, v: u32) {
        BusDevice::write(t, off, &v.to_le_bytes());
    }
    fn r32(t: &mut VirtioPci, off: u64) -> u32 {
        let mut d = [0u8; 4];
        BusDevice::read(t, off, &mut d);
        u32::from_le_bytes(d)
    }
    fn w8(t: &mut VirtioPci, off: u64, v: u8) {
        BusDevice::write(t, off, &[v]);
    }
    fn r8(t: &mut VirtioPci, off: u64) -> u8 {
        let mut d = [0u8; 1];
        BusDevice::read(t, off, &mut d);
        d[0]
    }

    /// Sets up queue 0 at 0x1000 and says DRIVER_OK with `features`.
    fn bring_up(t: &mut VirtioPci, features: u64) -> u8 {
        w8(t, 0x14, status::ACKNOWLEDGE | status::DRIVER);
        w32(t, 0x08, 0);
        w32(t, 0x0c, features as u32);
        w32(t, 0x08, 1);
        w32(t, 0x0c, (features >> 32) as u32);
        w8(t, 0x14, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        if r8(t, 0x14) & status::FEATURES_OK == 0 {
            return r8(t, 0x14);
        }
        BusDevice::write(t, 0x16, &0u16.to_le_bytes());
        BusDevice::write(t, 0x18, &8u16.to_le_bytes());
        w32(t, 0x20, 0x1000);
        w32(t, 0x28, 0x2000);
        w32(t, 0x30, 0x3000);
        BusDevice::write(t, 0x1c, &1u16.to_le_bytes());
        w8(t, 0x14, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        r8(t, 0x14)
    }

    #[test]
    fn features_are_offered_in_two_halves_and_version_1_is_required() {
        let (mut t, activated, _, _) = transport();
        w32(&mut t, 0, 0);
        assert_eq!(r32(&mut t, 4), 1 << 9);
        w32(&mut t, 0, 1);
        assert_eq!(r32(&mut t, 4), 1, "VERSION_1");
        let s = bring_up(&mut t, 1 << 9);
        assert_eq!(s & status::FEATURES_OK, 0, "a legacy driver is refused");
        w8(&mut t, 0x14, 0);
        let s = bring_up(&mut t, F_VERSION_1 | (1 << 20));
        assert_eq!(s & status::FEATURES_OK, 0, "a feature not offered is refused");
        w8(&mut t, 0x14, 0);
        let s = bring_up(&mut t, F_VERSION_1 | (1 << 9));
        assert_eq!(s, 0x0f, "{s:#x}");
        assert_eq!(*activated.lock().unwrap(), [(F_VERSION_1 | (1 << 9), 1)]);
    }

    #[test]
    fn queues_are_fixed_once_running_and_reset_clears_everything() {
        let (mut t, _, resets, _) = transport();
        assert_eq!(r32(&mut t, 0x12) & 0xffff, 1, "one queue");
        BusDevice::write(&mut t, 0x18, &8u16.to_le_bytes());
        assert_eq!(r32(&mut t, 0x18) & 0xffff, 16, "no queue setup before FEATURES_OK");
        bring_up(&mut t, F_VERSION_1);
        assert_eq!(r32(&mut t, 0x18) & 0xffff, 8);
        assert_eq!(r32(&mut t, 0x20), 0x1000);
        BusDevice::write(&mut t, 0x18, &4u16.to_le_bytes());
        assert_eq!(r32(&mut t, 0x18) & 0xffff, 8, "no change after DRIVER_OK");
        assert_eq!(r32(&mut t, 0x10) & 0xffff, u32::from(NO_VECTOR));
        w8(&mut t, 0x14, 0);
        assert_eq!(*resets.lock().unwrap(), 1);
        assert_eq!(r8(&mut t, 0x14), 0);
        assert_eq!(r32(&mut t, 0x18) & 0xffff, 16, "the size is back to the maximum");
        assert_eq!(r32(&mut t, 0x20), 0);
        w8(&mut t, 0x14, status::ACKNOWLEDGE | status::DRIVER);
        BusDevice::write(&mut t, 0x18, &7u16.to_le_bytes());
        assert_eq!(r32(&mut t, 0x18) & 0xffff, 16);
    }

    #[test]
    fn a_queue_outside_memory_breaks_the_device_and_isr_reads_clear() {
        let (mut t, activated, _, _) = transport();
        w8(&mut t, 0x14, status::ACKNOWLEDGE | status::DRIVER);
        w32(&mut t, 0x08, 1);
        w32(&mut t, 0x0c, 1);
        w8(&mut t, 0x14, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        BusDevice::write(&mut t, 0x18, &8u16.to_le_bytes());
        w32(&mut t, 0x20, 0xffff_f000);
        w32(&mut t, 0x28, 0x2000);
        w32(&mut t, 0x30, 0x3000);
        BusDevice::write(&mut t, 0x1c, &1u16.to_le_bytes());
        w8(&mut t, 0x14, 0x0f);
        assert_ne!(r8(&mut t, 0x14) & status::NEEDS_RESET, 0);
        assert!(activated.lock().unwrap().is_empty());
        t.interrupt.queue(0);
        assert_eq!(r8(&mut t, ISR), 1);
        assert_eq!(r8(&mut t, ISR), 0, "read clears");
    }

    #[test]
    fn capabilities_describe_the_bar_and_notify_signals_the_queue_event() {
        let (mut t, _, _, event) = transport();
        let types: Vec<_> = caps(&mut t).iter().map(|&(_, id, ty)| if id == CAP_VENDOR { ty } else { id }).collect();
        assert_eq!(types, [1, 3, 4, 2, msix::CAP_ID, 5]);
        assert_eq!(t.notify_addresses()[0].0, 0xc000_3000);
        BusDevice::write(&mut t, NOTIFY, &0u16.to_le_bytes());
        assert_eq!(event.read().unwrap(), 1);
        assert_eq!(r8(&mut t, DEVICE_CFG + 5), 5);
        t.config_write(4, &0u16.to_le_bytes());
        assert_eq!(r32(&mut t, 0x12), 0xffff_ffff, "memory decoding off");
    }

    /// Programs MSI-X vector `v` of `t` (through BAR 1) to LAPIC vector `data`, unmasked.
    fn program(t: &mut VirtioPci, v: u64, data: u32) {
        t.msix_write(v * 16, &0xfee0_0000u32.to_le_bytes());
        t.msix_write(v * 16 + 8, &data.to_le_bytes());
        t.msix_write(v * 16 + 12, &0u32.to_le_bytes());
    }

    fn msix_control(t: &mut VirtioPci, control: u16) {
        let at = caps(t).iter().find(|c| c.1 == msix::CAP_ID).unwrap().0;
        t.config_write(at + 2, &control.to_le_bytes());
    }

    #[test]
    fn msix_vectors_carry_queue_and_config_interrupts_and_intx_is_the_fallback() {
        let (mut t, _, _, _, lines) = transport_with_lines();
        assert_eq!(lines.vectors.len(), 2, "one queue and the configuration");
        t.interrupt.queue(0);
        assert_eq!(lines.intx.count(), 1, "MSI-X off: INTx");
        assert_eq!(r8(&mut t, ISR), 1);
        msix_control(&mut t, msix::CONTROL_ENABLE);
        program(&mut t, 0, 0x41);
        program(&mut t, 1, 0x42);
        let routed = lines.routes.0.lock().unwrap().clone();
        assert_eq!(routed[&24].map(|m| m.data), Some(0x41));
        assert_eq!(routed[&25].map(|m| m.address), Some(0xfee0_0000));
        // The driver maps the queue to vector 1 and the configuration to 0.
        BusDevice::write(&mut t, 0x10, &0u16.to_le_bytes());
        BusDevice::write(&mut t, 0x16, &0u16.to_le_bytes());
        BusDevice::write(&mut t, 0x1a, &1u16.to_le_bytes());
        assert_eq!(r32(&mut t, 0x1a) & 0xffff, 1);
        t.interrupt.queue(0);
        assert_eq!(lines.vectors[1].read().unwrap(), 1, "the queue's vector");
        assert!(lines.vectors[0].read().is_err());
        assert_eq!(lines.intx.count(), 1, "no INTx under MSI-X");
        assert_eq!(r8(&mut t, ISR), 0, "no ISR queue bit under MSI-X");
        t.interrupt.config();
        assert_eq!(lines.vectors[0].read().unwrap(), 1, "the configuration's vector");
        assert_eq!(r8(&mut t, ISR), 2, "ISR still says configuration");
        // A vector past the table reads back NO_VECTOR, and nothing is raised.
        BusDevice::write(&mut t, 0x1a, &7u16.to_le_bytes());
        assert_eq!(r32(&mut t, 0x1a) & 0xffff, u32::from(NO_VECTOR));
        t.interrupt.queue(0);
        assert!(lines.vectors.iter().all(|v| v.read().is_err()));
        assert_eq!(lines.intx.count(), 1);
        // Masked: the PBA bit, and the interrupt on unmask.
        BusDevice::write(&mut t, 0x1a, &1u16.to_le_bytes());
        t.msix_write(16 + 12, &1u32.to_le_bytes());
        t.interrupt.queue(0);
        assert!(lines.vectors[1].read().is_err());
        let mut pba = [0u8; 4];
        t.msix_read(MSIX_PBA, &mut pba);
        assert_eq!(pba[0], 2);
        t.msix_write(16 + 12, &0u32.to_le_bytes());
        assert_eq!(lines.vectors[1].read().unwrap(), 1);
        // A reset unmaps the vectors; MSI-X off goes back to INTx.
        w8(&mut t, 0x14, 0);
        assert_eq!(r32(&mut t, 0x10) & 0xffff, u32::from(NO_VECTOR));
        msix_control(&mut t, 0);
        t.interrupt.queue(0);
        assert_eq!(lines.intx.count(), 2);
        assert_eq!(lines.routes.0.lock().unwrap()[&24], None, "disabled: unrouted");
    }

    #[test]
    fn intx_is_pulsed_once_per_isr_cause_until_the_driver_reads_it() {
        let (mut t, _, _, _, lines) = transport_with_lines();
        t.interrupt.queue(0);
        t.interrupt.queue(0);
        assert_eq!(lines.intx.count(), 1, "the second use waits for the same ISR read");
        t.interrupt.config();
        assert_eq!(lines.intx.count(), 2, "a new cause: a new edge");
        t.interrupt.config();
        assert_eq!(lines.intx.count(), 2);
        assert_eq!(r8(&mut t, ISR), 3, "the read sees both causes");
        t.interrupt.queue(0);
        assert_eq!(lines.intx.count(), 3, "after the read an interrupt is raised again: none lost");
        assert_eq!(r8(&mut t, ISR), 1);
    }

    #[test]
    fn the_pci_cfg_window_reaches_the_bars_and_is_bounded() {
        let (mut t, _, _, _, _) = transport_with_lines();
        let at = caps(&mut t).iter().find(|c| c.1 == CAP_VENDOR && c.2 == 5).unwrap().0;
        let window = |t: &mut VirtioPci, bar: u8, offset: u32, len: u32| {
            t.config_write(at + PCI_CFG_BAR, &[bar]);
            t.config_write(at + PCI_CFG_OFFSET, &offset.to_le_bytes());
            t.config_write(at + PCI_CFG_LENGTH, &len.to_le_bytes());
        };
        let data = |t: &mut VirtioPci| {
            let mut d = [0u8; 4];
            t.config_read(at + PCI_CFG_DATA, &mut d);
            u32::from_le_bytes(d)
        };
        window(&mut t, 0, 0x12, 2);
        assert_eq!(data(&mut t), 1, "num_queues through the window");
        window(&mut t, 0, 0x14, 1);
        t.config_write(at + PCI_CFG_DATA, &[status::ACKNOWLEDGE, 0, 0, 0]);
        assert_eq!(r8(&mut t, 0x14), status::ACKNOWLEDGE, "a status write through the window");
        window(&mut t, 1, 8, 4);
        t.config_write(at + PCI_CFG_DATA, &0x55u32.to_le_bytes());
        let mut d = [0u8; 4];
        t.msix_read(8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x55, "the MSI-X table through the window");
        for (bar, offset, len) in [(0, BAR_SIZE - 2, 4), (1, MSIX_BAR_SIZE, 4), (2, 0, 4), (0, 0x12, 3), (0, 0x13, 2)] {
            window(&mut t, bar, offset, len);
            assert_eq!(data(&mut t), 0, "bar {bar} offset {offset:#x} len {len} is refused");
            t.config_write(at + PCI_CFG_DATA, &0xffu32.to_le_bytes());
        }
        assert_eq!(r8(&mut t, 0x14), status::ACKNOWLEDGE, "refused writes changed nothing");
        t.config_write(4, &0u16.to_le_bytes());
        window(&mut t, 0, 0x12, 2);
        assert_eq!(data(&mut t), 1, "the window works with memory decoding off");
    }
}
