//! virtio devices: the [`VirtioDevice`] trait every device implements, the
//! virtio-pci modern transport they all plug into ([`pci`]), and the
//! devices themselves ([`blk`], [`balloon`], [`net`]).
//!
//! A device owns its queue eventfds and the thread that serves them; the
//! transport owns the guest-facing registers, negotiates features, checks
//! the queues the driver set up, hands them to the device when the driver
//! says DRIVER_OK and takes them back on reset.

pub mod balloon;
pub mod blk;
pub mod net;
pub mod pci;
pub mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: a modern (1.x) driver. Required.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_EVENT_IDX (virtio 1.2, 2.7.7 and 2.7.10): the driver says at
/// which used index it wants its next interrupt and the device at which
/// available index its next kick, so a batch costs one of each. A device
/// offers it only if its thread re-checks the ring after re-enabling
/// kicks (`Queue::enable_notification`) and asks
/// `Queue::needs_notification` before each interrupt; the transport turns
/// it on in the queues it hands over when the driver accepted it.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// How many chains the driver has made available and the device not taken;
/// `None` for more than the queue holds: a corrupt ring, from which
/// virtio-queue pops nothing while `enable_notification` still says there
/// is work (a device thread that trusted both would spin). The device then
/// needs a reset.
pub fn pending(mem: &GuestMemoryMmap, queue: &Queue) -> Option<u16> {
    net::datapath::pending(mem, queue).ok()
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    #[cfg(test)]
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation done.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from.
    pub const NEEDS_RESET: u8 = 0x40;
}

/// How a device tells the driver something happened.
pub trait VirtioInterrupt: Send + Sync {
    /// Used buffers were added to a queue.
    fn queue(&self, index: u16);
    /// The device broke (a queue the guest corrupted): NEEDS_RESET, and a
    /// configuration-change interrupt.
    fn broken(&self);
    /// The device's configuration changed (a configuration-change interrupt).
    fn config(&self) {}
}

/// Why a device could not start with the queues it was given.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ActivateError(pub String);

/// One virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Its virtio device type (2: block).
    fn device_type(&self) -> u16;
    /// The features it offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Each queue's largest size.
    fn queue_max_sizes(&self) -> &[u16];
    /// The eventfd the driver's notification of each queue lands on.
    fn queue_events(&self) -> Vec<Arc<EventFd>>;
    /// Reads its configuration space (out of range: zeros).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver's write to its configuration space (ignored unless the
    /// device has a field the driver writes).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving `queues` (the driver's features in `features`).
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Stops using the queues, once what is in flight has finished.
    fn reset(&mut self);
}
