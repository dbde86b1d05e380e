//! Assembles a VM from its parts: guest memory, the in-kernel interrupt
//! controllers and PIT, the kernel loaded, the devices on the bus with
//! their interrupt lines, and the vCPUs set up to run. Everything here
//! needs privilege or a path the confined process will not have; none of
//! it runs guest code.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use libvirtd::privsep::helper::GuestConfig;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::disks::{self, DiskInfo};
use super::machine::Machine;
use super::nets;
use super::pci_plug::PciPlug;
use crate::boot::{self, BootError};
use crate::bus::{Bus, BusError, Space};
use crate::cpu;
use crate::devices::console::{ConsoleIo, ConsoleOut};
use crate::devices::i8042::{self, I8042};
use crate::devices::serial::{self, Serial};
use crate::devices::{IrqFd, IrqLine, acpi_pm, pvpanic, rtc};
use crate::vcpu::kvm::KvmVcpu;
use crate::virtio::blk::Worker;

use crate::layout::MAX_MEMORY_MIB;
const TSS_ADDRESS: usize = 0xfffb_d000;
const COM1_IRQ: u32 = 4;
const KBD_IRQ: u32 = 1;
const RTC_IRQ: u32 = 8;
/// vCPUs per guest (the domain XML's limit).
const MAX_VCPUS: u32 = 255;

/// Why the VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Memory outside what the helper can give.
    #[error("guest memory {0} MiB is outside 2-{MAX_MEMORY_MIB} MiB")]
    Memory(u64),
    /// A vCPU count outside what the helper can give.
    #[error("{0} vCPUs requested; 1-{MAX_VCPUS} are possible")]
    Vcpus(u32),
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The call.
        what: &'static str,
        /// Its error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// `<locked/>` guest memory could not be locked (the broker's
    /// `RLIMIT_MEMLOCK` too low, or the host refused).
    #[error("cannot lock {mib} MiB of guest memory in host RAM: {source}")]
    Lock {
        /// Guest RAM in MiB.
        mib: u64,
        /// mlock2's error.
        source: std::io::Error,
    },
    /// An interrupt eventfd could not be made.
    #[error("eventfd: {0}")]
    Eventfd(std::io::Error),
    /// A PCI interrupt line could not have its own VM fd (fd limit).
    #[error("an interrupt line's VM fd: {0}")]
    IrqLine(std::io::Error),
    /// The kernel did not load.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A vCPU could not be set up.
    #[error("vCPU {index}: {reason}")]
    Cpu {
        /// Which.
        index: u32,
        /// Why.
        reason: String,
    },
    /// Two devices claimed one address.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A disk could not be set up.
    #[error("{0}")]
    Disk(String),
    /// A network interface could not be set up.
    #[error("{0}")]
    Nic(String),
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

/// The fds the VM is built from.
pub struct BootFiles {
    /// `/dev/kvm`.
    pub kvm: OwnedFd,
    /// The kernel image.
    pub kernel: OwnedFd,
    /// The initrd, if any.
    pub initrd: Option<OwnedFd>,
    /// Each disk's image chain, top layer first, in `GuestConfig::disks` order.
    pub disks: Vec<Vec<OwnedFd>>,
    /// Guest RAM the broker made (memfd, huge pages), if the domain asks.
    pub memory: Option<OwnedFd>,
    /// Each interface's tap, in `GuestConfig::nics` order.
    pub taps: Vec<OwnedFd>,
}

/// The devices the control loop acts on by name, beside the bus.
pub struct Devices {
    /// Every device, by address, for the vCPUs.
    pub bus: Arc<Bus>,
    /// The keyboard controller (ctrl-alt-del).
    pub i8042: Arc<Mutex<I8042>>,
    /// COM1, for its console's event side.
    pub serial: Arc<Mutex<Serial<ConsoleOut>>>,
    /// The disks, for `DiskStats`.
    pub disks: Vec<DiskInfo>,
    /// Written when a disk has a backend error to report (`IoError`).
    pub io_errors: Option<Arc<EventFd>>,
    /// The balloon, for `SetBalloon` and `BalloonStats`.
    pub balloon: Option<crate::virtio::balloon::Control>,
    /// The network interfaces, for `NetStats` and `SetLink`.
    pub nics: Vec<crate::virtio::net::Control>,
    /// The CMOS clock's changes, for `RtcChange`.
    pub rtc: Arc<super::rtc_reports::RtcChanges>,
    /// The CMOS clock, for its update and alarm interrupts.
    pub clock: Arc<Mutex<rtc::Rtc>>,
}

/// A VM ready to run.
pub struct Built {
    /// Memory and the VM fd.
    pub machine: Machine,
    /// The vCPUs, set up, not running.
    pub vcpus: Vec<KvmVcpu>,
    /// The devices.
    pub devices: Devices,
    /// The console's event side, for the event loop.
    pub console: ConsoleIo,
    /// Set once the VM stops (for the console writer).
    pub stopping: Arc<AtomicBool>,
    /// The disks' I/O threads, to start once the process is confined.
    pub workers: Vec<Worker>,
    /// The balloon's thread, to start once the process is confined.
    pub balloon: Option<crate::virtio::balloon::Worker>,
    /// The network interfaces' threads, to start once the process is confined.
    pub nets: Vec<crate::virtio::net::Worker>,
}

/// Builds the guest `config` describes from `files`.
pub fn build(config: &GuestConfig, files: BootFiles) -> Result<Built, BuildError> {
    if config.memory_mib < 2 || config.memory_mib > MAX_MEMORY_MIB {
        return Err(BuildError::Memory(config.memory_mib));
    }
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(BuildError::Vcpus(config.vcpus));
    }
    // SAFETY: the broker passed an open /dev/kvm fd, which we now own.
    let kvm_fd = unsafe { Kvm::from_raw_fd(files.kvm.into_raw_fd()) };
    let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(TSS_ADDRESS).map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() })
        .map_err(kvm("KVM_CREATE_PIT2"))?;
    let mem_size = config.memory_mib << 20;
    // RAM around the PCI hole (layout.rs); anonymous, MAP_NORESERVE (what
    // the guest never touches costs the host nothing), or the broker's
    // memfd mapped shared, each range at its own offset.
    let file = files.memory.map(|fd| Arc::new(File::from(fd)));
    let ranges: Vec<(GuestAddress, usize, Option<vm_memory::FileOffset>)> = crate::layout::ram(mem_size)
        .into_iter()
        .map(|(s, l)| {
            let offset =
                file.as_ref().map(|f| vm_memory::FileOffset::from_arc(f.clone(), crate::layout::file_offset(s)));
            (GuestAddress(s), l as usize, offset)
        })
        .collect();
    let memory =
        GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| BuildError::GuestMemory(e.to_string()))?;
    // From here on the machine owns VM and memory, and drops them in order.
    let machine = Machine::new(vm, memory);
    if config.mem_locked {
        lock_memory(&machine).map_err(|source| BuildError::Lock { mib: config.memory_mib, source })?;
    }
    register_memory(&machine)?;
    let mut kernel = File::from(files.kernel);
    let entry = boot::load(
        machine.memory(),
        &mut kernel,
        files.initrd.map(File::from),
        &config.cmdline,
        mem_size,
        config.vcpus,
    )?;
    let stopping = Arc::new(AtomicBool::new(false));
    let (devices, workers, balloon, nets) = devices(&machine, config, files.disks, files.taps)?;
    let console = ConsoleIo::new(devices.serial.clone(), stopping.clone());
    let vcpus = vcpus(&kvm_fd, &machine, config, entry, &devices.bus)?;
    Ok(Built { machine, vcpus, devices, console, stopping, workers, balloon, nets })
}

/// Locks guest RAM in host memory for `<memoryBacking><locked/>`, before
/// the process is confined (no seccomp filter allows mlock) and before any
/// guest code runs. `mlock2(MLOCK_ONFAULT)` on the RAM ranges only, not
/// QEMU's `mlockall(MCL_CURRENT|MCL_FUTURE)`: the pages are locked as the
/// guest first touches them, so start time stays flat with guest size (no
/// pre-fault of every page), and only guest RAM counts against the
/// `RLIMIT_MEMLOCK` the broker set, not the helper's own heap and stacks.
/// Locked pages are never swapped out; the kernel counts the whole range
/// in `VmLck` at once.
fn lock_memory(machine: &Machine) -> std::io::Result<()> {
    for region in machine.memory().iter() {
        // SAFETY: the range is one live mapping owned by `machine`; mlock2
        // changes only how its pages are kept, not their contents.
        let rc = unsafe { libc::mlock2(region.as_ptr().cast(), region.len() as usize, libc::MLOCK_ONFAULT) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Tells KVM where guest memory lives.
fn register_memory(machine: &Machine) -> Result<(), BuildError> {
    for (slot, region) in machine.memory().iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mmap owned by `machine`, and slots do
        // not overlap (one region per slot, from one range list). `Machine`'s
        // drop unmaps it only once the VM is gone (every vCPU thread joined,
        // closing its vCPU fd, then the VM fd closed), so the slot never
        // outlives the mapping and a guest never reaches the range after it
        // is reused.
        unsafe { machine.vm().set_user_memory_region(r) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// A virtio function's INTx line `irq`, pulsed on the raising thread.
pub(super) fn irq_line(vm: &VmFd, irq: u32) -> Result<IrqLine, BuildError> {
    IrqLine::new(vm, irq).map_err(BuildError::IrqLine)
}

/// An ISA device's line `irq`, wired through a KVM irqfd.
fn isa_irq(vm: &VmFd, irq: u32) -> Result<IrqFd, BuildError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::Eventfd)?;
    vm.register_irqfd(&fd, irq).map_err(kvm("KVM_IRQFD"))?;
    Ok(IrqFd(Arc::new(fd)))
}

/// What [`devices`] gives: the devices and the threads to start.
type Assembled = (Devices, Vec<Worker>, Option<crate::virtio::balloon::Worker>, Vec<crate::virtio::net::Worker>);

/// The legacy devices, each with one registration on the port bus, and
/// the PCI bus with the disks and network interfaces.
fn devices(
    machine: &Machine,
    config: &GuestConfig,
    disk_files: Vec<Vec<OwnedFd>>,
    taps: Vec<OwnedFd>,
) -> Result<Assembled, BuildError> {
    let (vm, memory) = (machine.vm(), machine.memory());
    let routes = Arc::new(super::gsi::GsiRoutes::new(machine.vm_weak()));
    let serial = Arc::new(Mutex::new(Serial::new(Arc::new(isa_irq(vm, COM1_IRQ)?), ConsoleOut::default())));
    let i8042 = Arc::new(Mutex::new(I8042::new(Arc::new(isa_irq(vm, KBD_IRQ)?))));
    let mut bus = Bus::default();
    bus.insert(Space::Pio, serial::BASE.into(), serial::LEN, serial.clone())?;
    bus.insert(Space::Pio, i8042::BASE.into(), i8042::LEN, i8042.clone())?;
    bus.insert(Space::Pio, acpi_pm::BASE.into(), acpi_pm::LEN, Arc::new(Mutex::new(acpi_pm::AcpiPm)))?;
    bus.insert(Space::Pio, pvpanic::BASE.into(), pvpanic::LEN, Arc::new(Mutex::new(pvpanic::Pvpanic)))?;
    let rtc = Arc::new(super::rtc_reports::RtcChanges::new().map_err(BuildError::Eventfd)?);
    let mem = config.memory_mib << 20;
    let (low, high) = (crate::layout::low_top(mem), mem - crate::layout::low_top(mem));
    let irq = Arc::new(isa_irq(vm, RTC_IRQ)?);
    let clock = rtc::Rtc::new(Box::new(rtc::SystemClock), config.rtc_offset_secs, rtc.clone(), irq, (low, high));
    let clock = Arc::new(Mutex::new(clock));
    bus.insert(Space::Pio, rtc::BASE.into(), rtc::LEN, clock.clone())?;
    let mut disks = disks::attach(vm, &routes, memory, &mut bus, &config.disks, disk_files, config.balloon.as_ref())?;
    let pci = disks.pci.clone();
    let mut plug = PciPlug { vm, routes: &routes, memory, bus: &mut bus, pci: &pci, bars: &mut disks.bars };
    let (nics, nets) = nets::attach(&mut plug, &config.nics, taps)?;
    let (balloon, balloon_worker) = disks.balloon.map_or((None, None), |(c, w)| (Some(c), Some(w)));
    let devices = Devices {
        bus: Arc::new(bus),
        i8042,
        serial,
        disks: disks.info,
        io_errors: disks.io_errors,
        balloon,
        nics,
        rtc,
        clock,
    };
    Ok((devices, disks.workers, balloon_worker, nets))
}

/// Creates and sets up the vCPUs: CPUID with this one's topology (and the
/// invariant TSC only if the config shows it), LAPIC LINT wiring, MSRs; the
/// boot vCPU gets the entry state, the others wait in KVM for the guest's
/// INIT/SIPI.
fn vcpus(
    kvm_fd: &Kvm,
    machine: &Machine,
    config: &GuestConfig,
    entry: boot::Entry,
    bus: &Arc<Bus>,
) -> Result<Vec<KvmVcpu>, BuildError> {
    let (count, invariant_tsc) = (config.vcpus, config.invariant_tsc);
    let base_cpuid = kvm_fd.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let vcpu = machine.vm().create_vcpu(u64::from(index)).map_err(kvm("KVM_CREATE_VCPU"))?;
        let mut cpuid = base_cpuid.clone();
        cpu::topology(&mut cpuid, index, count);
        cpu::invariant_tsc(&mut cpuid, invariant_tsc);
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        let cpu_err = |reason| BuildError::Cpu { index, reason };
        cpu::set_lint(&vcpu).map_err(cpu_err)?;
        cpu::set_msrs(&vcpu).map_err(cpu_err)?;
        if index == 0 {
            cpu::setup(&vcpu, machine.memory(), entry).map_err(cpu_err)?;
        }
        vcpus.push(KvmVcpu::new(vcpu, bus.clone()));
    }
    Ok(vcpus)
}
