//! One KVM vCPU on its thread: `KVM_RUN`, and each exit handed to the bus.

use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};
use libvirtd::privsep::helper::StopReason;

use super::{VcpuRegisters, VcpuRun, kick};
use crate::bus::Bus;
use crate::devices::Request;

/// A KVM vCPU and the bus its exits go to.
pub struct KvmVcpu {
    fd: VcpuFd,
    bus: Arc<Bus>,
}

impl KvmVcpu {
    /// `fd`, set up to run, with `bus` for its port and MMIO exits.
    pub fn new(fd: VcpuFd, bus: Arc<Bus>) -> KvmVcpu {
        KvmVcpu { fd, bus }
    }

    /// `what`, with where the vCPU was, for the log of a VM that failed.
    fn located(&mut self, what: String) -> String {
        match self.registers() {
            Ok(r) => format!("{what} at rip {:#x}", r.rip),
            Err(_) => what,
        }
    }
}

/// What the guest asked for, as the broker hears it.
fn stop_reason(request: Request) -> StopReason {
    match request {
        Request::PowerOff => StopReason::PowerOff,
        Request::Reset => StopReason::Reset,
        Request::Panic => StopReason::Crash,
    }
}

/// One exit, with nothing borrowed from the run structure.
enum Exit {
    Handled,
    Stop(StopReason, String),
    Kicked,
    Fault(StopReason, String),
}

impl VcpuRun for KvmVcpu {
    fn enter(&mut self) {
        kick::arm(&mut self.fd.get_kvm_run().immediate_exit);
    }

    fn run(&mut self) -> Option<(StopReason, String)> {
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.bus.pio_read(port, data);
                Exit::Handled
            }
            Ok(VcpuExit::IoOut(port, data)) => match self.bus.pio_write(port, data) {
                Some(r) => Exit::Stop(stop_reason(r), format!("guest wrote port {port:#x}")),
                None => Exit::Handled,
            },
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.bus.mmio_read(addr, data);
                Exit::Handled
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => match self.bus.mmio_write(addr, data) {
                Some(r) => Exit::Stop(stop_reason(r), format!("guest wrote {addr:#x}")),
                None => Exit::Handled,
            },
            Ok(VcpuExit::Shutdown) => Exit::Fault(StopReason::Reset, "triple fault".into()),
            Ok(other) => Exit::Fault(StopReason::Failed, format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Kicked,
            Err(e) => Exit::Fault(StopReason::Failed, format!("KVM_RUN: {e}")),
        };
        match exit {
            Exit::Handled => None,
            Exit::Kicked => {
                self.fd.get_kvm_run().immediate_exit = 0;
                None
            }
            Exit::Stop(reason, detail) => Some((reason, detail)),
            Exit::Fault(reason, detail) => Some((reason, self.located(detail))),
        }
    }

    fn registers(&mut self) -> Result<VcpuRegisters, String> {
        let r = self.fd.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        let s = self.fd.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        let gprs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ];
        Ok(VcpuRegisters { gprs, rip: r.rip, rflags: r.rflags, cr: [s.cr0, s.cr3, s.cr4], efer: s.efer })
    }

    fn leave(&mut self) {
        kick::disarm();
    }
}
