//! Puts the guest's virtio-balloon on the PCI bus (see
//! [`super::pci_plug`]), its thread ready to start.

use libvirtd::privsep::helper::BalloonConfig;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::builder::BuildError;
use super::pci_plug::PciPlug;
use crate::virtio::balloon::{Balloon, Control, Worker};

/// Plugs the balloon `config` describes into `plug`.
pub fn attach(plug: &mut PciPlug<'_>, config: &BalloonConfig) -> Result<(Control, Worker), BuildError> {
    let ram = plug.memory.iter().map(|r| r.len()).sum();
    let (balloon, worker, control) = Balloon::new(ram, config.stats_period > 0).map_err(BuildError::Eventfd)?;
    plug.plug(Box::new(balloon), config.pci_slot, "memballoon")?;
    Ok((control, worker))
}
