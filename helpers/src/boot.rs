//! Loading the kernel and writing what the boot protocols hand it: the
//! zero page for a bzImage's 64-bit entry, the start-info for PVH.

use std::fs::File;

use linux_loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

/// Where the kernel's protected-mode part goes (1 MiB, both protocols).
pub const KERNEL_START: u64 = 0x10_0000;
/// The zero page (bzImage) or the start-info page (PVH).
pub const BOOT_INFO: u64 = 0x7000;
/// The PVH memory map, right after the start-info.
const PVH_MEMMAP: u64 = 0x7100;
/// The PVH module list (the initrd).
const PVH_MODLIST: u64 = 0x7200;
/// The kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Longest command line accepted.
pub const CMDLINE_MAX: usize = 4096;
const E820_RAM: u32 = 1;
const HVM_START_MAGIC: u32 = 0x336e_c578;

/// How the guest is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// bzImage 64-bit entry: long mode, paging, `rsi` = zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode without paging, `rbx` = start-info.
    Pvh(u64),
}

/// Why the guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Neither a bzImage nor an ELF with a PVH note.
    #[error("kernel image is neither a bzImage nor a PVH ELF: {0}")]
    Image(String),
    /// Writing boot data into guest memory failed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The initrd does not fit in guest memory above the kernel.
    #[error("initrd of {0} bytes does not fit in guest memory")]
    InitrdTooLarge(u64),
    /// The command line is too long or contains NUL.
    #[error("kernel command line is too long or contains NUL")]
    Cmdline,
}

fn mem_err(e: impl std::fmt::Display) -> BootError {
    BootError::Memory(e.to_string())
}

/// Loads `kernel` (bzImage first, then PVH ELF) and writes the command line
/// and boot information for `mem_size` bytes of RAM.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    initrd: Option<File>,
    cmdline: &str,
    mem_size: u64,
    vcpus: u32,
) -> Result<Entry, BootError> {
    for (addr, table) in super::acpi::tables(vcpus) {
        mem.write_slice(&table, GuestAddress(addr)).map_err(mem_err)?;
    }
    if cmdline.len() >= CMDLINE_MAX || cmdline.contains('\0') {
        return Err(BootError::Cmdline);
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE)).map_err(mem_err)?;
    mem.write_obj(0u8, GuestAddress(CMDLINE + cmdline.len() as u64)).map_err(mem_err)?;
    // The usable RAM, around the PCI hole (layout.rs); an initrd goes below it.
    let ram = crate::layout::e820(mem_size);
    let low_top = crate::layout::low_top(mem_size);

    match BzImage::load(mem, None, kernel, Some(GuestAddress(KERNEL_START))) {
        Ok(loaded) => {
            let mut params = boot_params::default();
            if let Some(hdr) = loaded.setup_header {
                params.hdr = hdr;
            }
            params.hdr.type_of_loader = 0xff;
            params.acpi_rsdp_addr = super::acpi::RSDP_ADDR;
            params.hdr.cmd_line_ptr = CMDLINE as u32;
            params.hdr.cmdline_size = cmdline.len() as u32 + 1;
            if let Some(f) = initrd {
                let (addr, size) = load_initrd(mem, f, loaded.kernel_end, low_top, params.hdr.initrd_addr_max)?;
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            for (i, (addr, size)) in ram.iter().enumerate() {
                params.e820_table[i].addr = *addr;
                params.e820_table[i].size = *size;
                params.e820_table[i].r#type = E820_RAM;
            }
            params.e820_entries = ram.len() as u8;
            mem.write_obj(params, GuestAddress(BOOT_INFO)).map_err(mem_err)?;
            Ok(Entry::Linux64(loaded.kernel_load.raw_value() + 0x200))
        }
        Err(bz) => {
            let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(KERNEL_START)))
                .map_err(|elf| BootError::Image(format!("bzImage: {bz}; ELF: {elf}")))?;
            let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
                return Err(BootError::Image("the ELF has no PVH entry note".into()));
            };
            for (i, (addr, size)) in ram.iter().enumerate() {
                let e = hvm_memmap_table_entry { addr: *addr, size: *size, type_: E820_RAM, reserved: 0 };
                mem.write_obj(e, GuestAddress(PVH_MEMMAP + (i * e.as_slice().len()) as u64)).map_err(mem_err)?;
            }
            let mut modules = 0;
            if let Some(f) = initrd {
                let (addr, size) = load_initrd(mem, f, loaded.kernel_end, low_top, u32::MAX)?;
                let module = hvm_modlist_entry { paddr: addr, size, cmdline_paddr: 0, reserved: 0 };
                mem.write_obj(module, GuestAddress(PVH_MODLIST)).map_err(mem_err)?;
                modules = 1;
            }
            let info = hvm_start_info {
                nr_modules: modules,
                modlist_paddr: if modules > 0 { PVH_MODLIST } else { 0 },
                magic: HVM_START_MAGIC,
                version: 1,
                cmdline_paddr: CMDLINE,
                memmap_paddr: PVH_MEMMAP,
                memmap_entries: ram.len() as u32,
                rsdp_paddr: super::acpi::RSDP_ADDR,
                ..Default::default()
            };
            mem.write_obj(info, GuestAddress(BOOT_INFO)).map_err(mem_err)?;
            Ok(Entry::Pvh(entry.raw_value()))
        }
    }
}

/// Loads the initrd as high as it fits below `max` and the end of RAM,
/// page-aligned and above the kernel; returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mut f: File,
    kernel_end: u64,
    mem_size: u64,
    max: u32,
) -> Result<(u64, u64), BootError> {
    let size = f.metadata().map_err(mem_err)?.len();
    let top = mem_size.min(u64::from(max) + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(BootError::InitrdTooLarge(size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize).map_err(mem_err)?;
    Ok((addr, size))
}
