//! The VM: memory, in-kernel interrupt controllers, the vCPU thread, and the
//! control loop that joins console input, broker commands and guest exits.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::Kvm;
use libvirtd::privsep::Channel;
use libvirtd::privsep::helper::{
    DeviceAnswer, FdRole, GuestConfig, GuestStats, HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent, StopReason,
};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use libvirtd::sandbox::{self, Profile, Thread, seccomp};

use super::boot;
use super::bus::{Bus, IrqTrigger};
use super::cpu;
use super::vcpu;

/// Guest RAM must end below the 32-bit PCI hole.
const MAX_MEMORY_MIB: u64 = 3 * 1024;
const TSS_ADDRESS: usize = 0xfffb_d000;
const COM1_IRQ: u32 = 4;
const KBD_IRQ: u32 = 1;
/// How soon to offer the UART queued console input again, in ms.
const INPUT_RETRY_MS: u16 = 2;
/// vCPUs per guest (the domain XML's limit).
const MAX_VCPUS: u32 = 255;
/// Why hotplug is refused, for now.
const NO_HOTPLUG: &str = "this helper has no PCI bus yet, so it cannot plug or unplug devices";

/// Every fd the broker handed over with `Start`.
pub struct Files {
    /// `/dev/kvm`.
    pub kvm: OwnedFd,
    /// The kernel image.
    pub kernel: OwnedFd,
    /// The initrd, if any.
    pub initrd: Option<OwnedFd>,
    /// The console, read for guest input.
    pub console_in: OwnedFd,
    /// The console, written with guest output.
    pub console_out: OwnedFd,
    /// Where a restarted broker reconnects.
    pub listener: OwnedFd,
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Runs the guest until it stops; returns why.
pub fn run(config: &GuestConfig, files: Files, link: &mut Option<Channel>) -> Result<(StopReason, String), String> {
    let Files { kvm, kernel, initrd, console_in, console_out, listener } = files;
    if config.memory_mib < 2 || config.memory_mib > MAX_MEMORY_MIB {
        return Err(format!("guest memory {} MiB is outside 2-{MAX_MEMORY_MIB} MiB", config.memory_mib));
    }
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(format!("{} vCPUs requested; 1-{MAX_VCPUS} are possible", config.vcpus));
    }
    let mem_size = config.memory_mib << 20;
    // SAFETY: the broker passed an open /dev/kvm fd that we now own.
    let kvm = unsafe { Kvm::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(kvm)) };
    let vm = kvm.create_vm().map_err(err("KVM_CREATE_VM"))?;
    vm.set_tss_address(TSS_ADDRESS).map_err(err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(err("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() })
        .map_err(err("KVM_CREATE_PIT2"))?;

    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).map_err(err("guest memory"))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the
        // VM (both are dropped when this function returns, the VM first).
        unsafe { vm.set_user_memory_region(r) }.map_err(err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    let mut kernel = File::from(kernel);
    let entry = boot::load(&mem, &mut kernel, initrd.map(File::from), &config.cmdline, mem_size, config.vcpus)
        .map_err(|e| e.to_string())?;

    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(err("eventfd"))?;
    vm.register_irqfd(&irq, COM1_IRQ).map_err(err("KVM_IRQFD"))?;
    let out = File::from(console_out);
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(err("eventfd"))?;
    vm.register_irqfd(&kbd_irq, KBD_IRQ).map_err(err("KVM_IRQFD"))?;
    let bus = Arc::new(Bus {
        serial: Arc::new(Mutex::new(Serial::new(IrqTrigger(irq), out))),
        kbd_data: Arc::default(),
        kbd_irq,
    });

    let base_cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::new();
    for index in 0..config.vcpus {
        let vcpu = vm.create_vcpu(u64::from(index)).map_err(err("KVM_CREATE_VCPU"))?;
        let mut cpuid = base_cpuid.clone();
        cpu::topology(&mut cpuid, index, config.vcpus);
        cpu::invariant_tsc(&mut cpuid, config.invariant_tsc);
        vcpu.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        cpu::set_lint(&vcpu)?;
        cpu::set_msrs(&vcpu)?;
        // The APs wait in KVM for the guest's INIT/SIPI; only the BSP gets a state.
        if index == 0 {
            cpu::setup(&vcpu, &mem, entry)?;
        }
        vcpus.push(vcpu);
    }

    // Everything that needs privilege or a path is done: confine the process
    // before the guest runs a single instruction.
    isolate_namespaces();
    vcpu::install_kick_handler()?;
    // Made now, since confinement forbids it later: a socket pair whose one
    // end never becomes readable, to watch once the console hangs up.
    let idle_console = std::os::unix::net::UnixStream::pair().map_err(err("socketpair"))?;
    let idle_console: (OwnedFd, OwnedFd) = (idle_console.0.into(), idle_console.1.into());
    let profile = Profile::helper(config.ids);
    sandbox::confine(&profile).map_err(err("sandbox"))?;

    let stopped = EventFd::new(libc::EFD_NONBLOCK).map_err(err("eventfd"))?;
    let control = Arc::new(vcpu::Control::default());
    let stop_reason: Arc<Mutex<Option<(StopReason, String)>>> = Arc::default();
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let (bus, stopped, reason) = (bus.clone(), stopped.try_clone().map_err(err("eventfd"))?, stop_reason.clone());
        let control = control.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                // The vCPU's own, narrower filter goes on before it runs the guest.
                let outcome = match seccomp::apply_numbered(Thread::HelperVcpu, index as u32) {
                    Ok(()) => vcpu::run(vcpu, &bus, &control),
                    Err(e) => (StopReason::Failed, format!("vCPU sandbox: {e}")),
                };
                if let Ok(mut r) = reason.lock() {
                    r.get_or_insert(outcome);
                }
                let _ = stopped.write(1);
            })
            .map_err(err("vCPU thread"))?;
    }

    seccomp::apply(Thread::HelperVmm).map_err(err("sandbox"))?;
    sandbox::verify(&Profile { seccomp: Some(Thread::HelperVmm), ..profile }).map_err(err("sandbox"))?;
    let started = link.as_ref().map(|c| c.send_wait(&HelperEvent::Started, &[]));
    if let Some(Err(e)) = started {
        eprintln!("libvirt-helper: broker gone at start ({e}); the guest runs on");
        *link = None;
    }
    let mut console = File::from(console_in);
    let mut pending: Vec<u8> = Vec::new();
    let (quiet, _silent_peer) = idle_console;
    let mut idle_console = Some((quiet, ()));
    loop {
        // Without a broker, the quiet socket stands in for its channel.
        let link_fd = match (link.as_ref(), idle_console.as_ref()) {
            (Some(c), _) => c.fd(),
            (None, Some((q, ()))) => q.as_fd(),
            (None, None) => listener.as_fd(),
        };
        let mut fds = [
            PollFd::new(link_fd, if link.is_some() { PollFlags::POLLIN } else { PollFlags::empty() }),
            // Input the UART has no room for waits here; read more only when it drains.
            PollFd::new(console.as_fd(), if pending.is_empty() { PollFlags::POLLIN } else { PollFlags::empty() }),
            // SAFETY: `stopped` is open for as long as this loop runs.
            PollFd::new(unsafe { std::os::fd::BorrowedFd::borrow_raw(stopped.as_raw_fd()) }, PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = if pending.is_empty() { PollTimeout::NONE } else { PollTimeout::from(INPUT_RETRY_MS) };
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
            Ok(_) => {}
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (command, input, guest, reconnect) = (ready(0) && link.is_some(), ready(1), ready(2), ready(3));
        if reconnect && let Some(c) = accept(&listener) {
            // A (re)started broker: it replaces whatever link we had.
            *link = Some(c);
            continue;
        }
        if guest {
            let reason = stop_reason.lock().ok().and_then(|mut r| r.take());
            if link.is_none() {
                // Keep the stop reason for the broker that comes back.
                *link = wait_for_broker(&listener);
            }
            return Ok(reason.unwrap_or((StopReason::Failed, "vCPU ended".into())));
        }
        if command && let Some(channel) = link.as_ref() {
            match channel.recv::<HelperCommand>(HelperCommand::fd_count) {
                Ok((HelperCommand::Stop, _)) => return Ok((StopReason::Destroyed, "stopped by the broker".into())),
                Ok((HelperCommand::Reset, _)) => return Ok((StopReason::Reset, "reset by the broker".into())),
                Ok((HelperCommand::Pause, _)) => {
                    control.pause(config.vcpus);
                    channel.send_wait(&HelperEvent::Paused, &[]).map_err(err("control channel"))?;
                }
                Ok((HelperCommand::Resume, _)) => {
                    control.resume();
                    channel.send_wait(&HelperEvent::Resumed, &[]).map_err(err("control channel"))?;
                }
                Ok((HelperCommand::CtrlAltDel, _)) => bus.ctrl_alt_del(),
                Ok((HelperCommand::Stats, _)) => {
                    let stats = GuestStats {
                        paused: control.paused(),
                        vcpu_time_ns: control.threads().into_iter().map(thread_cpu_ns).collect(),
                        memory_mib: config.memory_mib,
                        rss_kib: peak_rss_kib(),
                    };
                    channel.send_wait(&HelperEvent::Stats(stats), &[]).map_err(err("control channel"))?;
                }
                Ok((HelperCommand::Start { .. }, _)) => return Err("second Start".into()),
                Ok((command @ HelperCommand::Console { .. }, fds)) => match command.sort_fds(fds) {
                    Ok(mut fds) => {
                        if let (Some(input), Some(output)) =
                            (fds.take(FdRole::ConsoleInput), fds.take(FdRole::ConsoleOutput))
                        {
                            console = File::from(input);
                            if let Ok(mut s) = bus.serial.lock() {
                                *s.writer_mut() = File::from(output);
                            }
                        }
                    }
                    Err(e) => eprintln!("libvirt-helper: refused a new console: {e}"),
                },
                Ok((command @ HelperCommand::AttachDevice { .. }, fds)) => {
                    let id = match &command {
                        HelperCommand::AttachDevice { device, .. } => device.id().to_owned(),
                        _ => String::new(),
                    };
                    let answer = match command.sort_fds(fds) {
                        Err(e) => DeviceAnswer::Refused(e.to_string()),
                        Ok(_) => DeviceAnswer::Unsupported(NO_HOTPLUG.into()),
                    };
                    channel.send_wait(&HelperEvent::Device { id, answer }, &[]).map_err(err("control channel"))?;
                }
                Ok((HelperCommand::DetachDevice { id }, _)) => {
                    let answer = DeviceAnswer::Unsupported(NO_HOTPLUG.into());
                    channel.send_wait(&HelperEvent::Device { id, answer }, &[]).map_err(err("control channel"))?;
                }
                Err(libvirtd::privsep::ChannelError::WouldBlock) => {}
                Err(libvirtd::privsep::ChannelError::Closed) => {
                    // The daemon went away: guests outlive it. Wait for it on the listener.
                    *link = None;
                }
                Err(e) => {
                    // A broker this helper cannot read (another protocol
                    // version): drop it; the guest runs on.
                    eprintln!("libvirt-helper: broker link dropped ({e}); the guest runs on");
                    *link = None;
                }
            }
        }
        if input {
            let mut buf = [0u8; 256];
            match console.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // Nobody on the console: the guest keeps running, and we
                    // watch a socket that never speaks instead.
                    if let Some((quiet, _)) = idle_console.take() {
                        console = File::from(quiet);
                    }
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        // The 16550's receive FIFO holds 64 bytes: feed it as the guest drains it.
        if !pending.is_empty()
            && let Ok(mut s) = bus.serial.lock()
            && let Ok(n) = s.enqueue_raw_bytes(&pending)
        {
            pending.drain(..n);
        }
    }
}

/// New mount, IPC, network and UTS namespaces where the host allows (root):
/// the guest's process then sees no host mounts, IPC objects or network.
fn isolate_namespaces() {
    use nix::sched::{CloneFlags, unshare};
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let flags =
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = unshare(flags) {
        eprintln!("libvirt-helper: cannot create namespaces: {e}");
    }
}

/// CPU time of one thread, from its CPU clock.
fn thread_cpu_ns(thread: libc::pthread_t) -> u64 {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `thread` is a live thread of this process; both out-pointers
    // are valid for the calls.
    let ok =
        unsafe { libc::pthread_getcpuclockid(thread, &mut clock) == 0 && libc::clock_gettime(clock, &mut ts) == 0 };
    if ok { ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64 } else { 0 }
}

/// The helper's peak resident set (guest memory it touched included), from
/// getrusage: the helper opens no file, /proc included.
fn peak_rss_kib() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|u| u.max_rss() as u64).unwrap_or(0)
}

/// Sends the greeting every connection starts with.
pub fn greet(channel: &Channel) -> Result<(), libvirtd::privsep::ChannelError> {
    channel.send_wait(&HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION }, &[])
}

/// Accepts one broker connection on the control listener, and greets it.
fn accept(listener: &OwnedFd) -> Option<Channel> {
    use nix::sys::socket::{SockFlag, accept4};
    let fd = accept4(listener.as_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK).ok()?;
    let channel = Channel::from_nonblocking_fd(fd);
    greet(&channel).ok()?;
    Some(channel)
}

/// Blocks until a broker connects, to hear how the guest ended.
fn wait_for_broker(listener: &OwnedFd) -> Option<Channel> {
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                if let Some(c) = accept(listener) {
                    return Some(c);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}
