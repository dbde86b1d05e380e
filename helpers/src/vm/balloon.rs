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
    // The backing's page size: a hugetlb memfd reports its huge page size
    // as its block size; anonymous memory and a plain memfd have 4 KiB pages.
    let host_page = plug
        .memory
        .iter()
        .find_map(|r| r.file_offset().map(|f| f.file().metadata()))
        .transpose()
        .map_err(BuildError::Eventfd)?
        .map_or(4096, |m| std::os::unix::fs::MetadataExt::blksize(&m));
    let (balloon, worker, control) = Balloon::new(ram, config.stats_period, host_page).map_err(BuildError::Eventfd)?;
    plug.plug(Box::new(balloon), config.pci_slot, "memballoon")?;
    Ok((control, worker))
}
