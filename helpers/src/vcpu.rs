//! vCPU threads: the run loop, and pausing them from the control loop.
//!
//! A vCPU blocked in `KVM_RUN` is kicked with a real-time signal whose
//! handler sets the run structure's `immediate_exit`, so a kick that lands
//! just before the ioctl is not lost (the ioctl returns at once).

use std::cell::Cell;
use std::sync::{Condvar, Mutex};

use kvm_ioctls::{VcpuExit, VcpuFd};
use libvirtd::privsep::helper::StopReason;

use super::bus::Bus;

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` points into this thread's mmapped kvm_run, which lives
        // as long as the thread's VcpuFd; writing one byte is signal-safe.
        unsafe { p.write_volatile(1) };
    }
}

/// The kick signal.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the kick handler (before seccomp forbids `rt_sigaction`).
pub fn install_kick_handler() -> Result<(), String> {
    // SAFETY: an all-zero sigaction is valid; the handler only touches a
    // thread-local pointer and a byte, both async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Shared between the control loop and the vCPU threads.
#[derive(Default)]
pub struct Control {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    pause: bool,
    parked: u32,
    threads: Vec<libc::pthread_t>,
}

impl Control {
    /// Stops every vCPU and waits until all are parked.
    pub fn pause(&self, vcpus: u32) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.pause = true;
        for t in &s.threads {
            // SAFETY: `t` is a live vCPU thread of this process (they never
            // exit while the guest runs); the signal's handler is installed.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
        while s.parked < vcpus {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.pause = false;
        self.changed.notify_all();
    }

    /// Whether the vCPUs are paused.
    pub fn paused(&self) -> bool {
        self.state.lock().map(|s| s.pause).unwrap_or(false)
    }

    /// The vCPU threads, for per-thread CPU clocks.
    pub fn threads(&self) -> Vec<libc::pthread_t> {
        self.state.lock().map(|s| s.threads.clone()).unwrap_or_default()
    }

    fn park_if_paused(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.pause {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.pause {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.parked -= 1;
    }
}

/// Runs one vCPU until the guest asks to stop or KVM fails.
pub fn run(mut vcpu: VcpuFd, bus: &Bus, control: &Control) -> (StopReason, String) {
    IMMEDIATE_EXIT.with(|p| p.set(&mut vcpu.get_kvm_run().immediate_exit));
    if let Ok(mut s) = control.state.lock() {
        // SAFETY: pthread_self has no preconditions.
        s.threads.push(unsafe { libc::pthread_self() });
    }
    loop {
        control.park_if_paused();
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => bus.read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Some(reason) = bus.write(port, data) {
                    return (reason, format!("guest wrote port {port:#x}"));
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => super::mmio::read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => super::mmio::write(addr, data),
            Ok(VcpuExit::Shutdown) => return (StopReason::Reset, "triple fault".into()),
            Ok(other) => return (StopReason::Failed, format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.get_kvm_run().immediate_exit = 0;
            }
            Err(e) => return (StopReason::Failed, format!("KVM_RUN: {e}")),
        }
    }
}
