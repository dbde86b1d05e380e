//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal whose handler
//! sets the thread's `kvm_run.immediate_exit`, so that a kick landing just
//! before the ioctl is not lost (the ioctl then returns at once).

use std::cell::Cell;

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick handler; null
    /// on threads that run no vCPU, and once the vCPU's run structure goes.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` points into this thread's mmapped kvm_run, armed by
        // `arm` and cleared by `disarm` before that mapping goes; writing
        // one byte is async-signal-safe.
        unsafe { p.write_volatile(1) };
    }
}

/// The kick signal.
fn signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the kick handler (before seccomp forbids `rt_sigaction`).
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is valid; the handler only touches a
    // thread-local pointer and a byte, both async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Points this thread's kicks at `immediate_exit`, which must stay mapped
/// until [`disarm`] is called on this thread.
pub fn arm(immediate_exit: *mut u8) {
    IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
}

/// Kicks on this thread touch nothing from now on.
pub fn disarm() {
    IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
}

/// Sends the kick to `thread`, a thread of this process that has not been
/// joined; [`install_handler`] must have run.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller names a live, unjoined thread of this process, and
    // the signal's handler is installed, so it cannot end the process.
    unsafe { libc::pthread_kill(thread, signal()) };
}
