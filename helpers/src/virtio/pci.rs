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
//! Interrupts are INTx only, raised as an edge on the function's legacy
//! line through an irqfd, with the ISR register saying why; MSI-X is not
//! offered (no MSI-X capability), so every vector register reads
//! NO_VECTOR. The VIRTIO_PCI_CAP_PCI_CFG window is not offered either.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{F_VERSION_1, VirtioDevice, VirtioInterrupt, status};
use crate::devices::{BusDevice, DeviceState, Irq, Request, StateError};
use crate::pci::PciDevice;
use crate::pci::config::{Bar, COMMAND_MEMORY, ConfigEvent, ConfigSpace, Identity};

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
const NO_VECTOR: u16 = 0xffff;
/// The PCI vendor capability id virtio uses.
const CAP_VENDOR: u8 = 0x09;

/// The transport's interrupt side, shared with the device's thread.
struct Interrupt {
    isr: AtomicU8,
    broken: AtomicBool,
    line: Arc<dyn Irq>,
}

impl VirtioInterrupt for Interrupt {
    fn queue(&self, _index: u16) {
        self.isr.fetch_or(1, Ordering::SeqCst);
        self.line.raise();
    }
    fn broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
        self.isr.fetch_or(2, Ordering::SeqCst);
        self.line.raise();
    }
    fn config(&self) {
        self.isr.fetch_or(2, Ordering::SeqCst);
        self.line.raise();
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
}

impl VirtioPci {
    /// `device` at `bar` (of [`BAR_SIZE`]), raising `line` (legacy IRQ `irq`).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        bar: u32,
        line: Arc<dyn Irq>,
        irq: u8,
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
        config.set_bar(0, Bar { addr: bar, size: BAR_SIZE });
        for (kind, offset, len) in [(1u8, COMMON, COMMON_LEN), (3, ISR, 4), (4, DEVICE_CFG, DEVICE_CFG_LEN)] {
            config.add_capability(CAP_VENDOR, &cap_body(16, kind, offset, len, &[]));
        }
        let notify_len = u64::from(NOTIFY_MULTIPLIER) * device.queue_max_sizes().len() as u64;
        config.add_capability(CAP_VENDOR, &cap_body(20, 2, NOTIFY, notify_len, &NOTIFY_MULTIPLIER.to_le_bytes()));
        let queues = device.queue_max_sizes().iter().filter_map(|&max| Queue::new(max).ok()).collect();
        let events = device.queue_events();
        let interrupt = Arc::new(Interrupt { isr: AtomicU8::new(0), broken: AtomicBool::new(false), line });
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
        let queues = self.queues.iter().filter_map(|q| Queue::try_from(q.state()).ok()).collect();
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
            0x10 | 0x1a => u64::from(NO_VECTOR),
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
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v16,
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
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        if let Some(ConfigEvent::BarMoveRefused { bar, addr }) = self.config.write(offset, data) {
            eprintln!("libvirt-helper: the guest tried to move virtio BAR {bar} to {addr:#x}; BARs stay where placed");
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

    fn transport() -> (VirtioPci, Activations, Arc<Mutex<u32>>, Arc<EventFd>) {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let event = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let probe = Probe { event: Some(event.clone()), ..Default::default() };
        let (a, r) = (probe.activated.clone(), probe.resets.clone());
        let mut t = VirtioPci::new(Box::new(probe), memory, 0xc000_0000, Arc::new(CountingIrq::default()), 10);
        t.config_write(4, &COMMAND_MEMORY.to_le_bytes());
        (t, a, r, event)
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
        let mut at = {
            let mut d = [0u8; 1];
            t.config_read(0x34, &mut d);
            usize::from(d[0])
        };
        let mut types = Vec::new();
        while at != 0 {
            let mut cap = [0u8; 4];
            t.config_read(at, &mut cap);
            assert_eq!(cap[0], CAP_VENDOR);
            types.push(cap[3]);
            at = usize::from(cap[1]);
        }
        assert_eq!(types, [1, 3, 4, 2]);
        assert_eq!(t.notify_addresses()[0].0, 0xc000_3000);
        BusDevice::write(&mut t, NOTIFY, &0u16.to_le_bytes());
        assert_eq!(event.read().unwrap(), 1);
        assert_eq!(r8(&mut t, DEVICE_CFG + 5), 5);
        t.config_write(4, &0u16.to_le_bytes());
        assert_eq!(r32(&mut t, 0x12), 0xffff_ffff, "memory decoding off");
    }
}
