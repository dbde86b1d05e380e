//! What must go in a fixed order when the VM ends.

use std::mem::ManuallyDrop;

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::vcpu::{EXIT_BOUND, VcpuError, Vcpus};

/// The KVM VM, its guest memory and its vCPU threads.
///
/// KVM maps guest memory from this process's mapping of it
/// (`KVM_SET_USER_MEMORY_REGION` takes a host address), so that mapping
/// must outlive everything that can still run guest code in it. Ending a
/// `Machine` therefore (1) tells every vCPU to exit and joins its thread,
/// (2) closes the VM fd, (3) unmaps guest memory, in that order, written
/// out in [`Drop::drop`] rather than left to field order. If a vCPU thread
/// does not leave within its bound, guest memory is never unmapped: it
/// goes with the process, which is about to exit.
pub struct Machine {
    vcpus: Option<Vcpus>,
    /// A vCPU thread did not leave: keep guest memory mapped.
    keep_memory: bool,
    vm: ManuallyDrop<VmFd>,
    memory: ManuallyDrop<GuestMemoryMmap>,
}

impl Machine {
    /// A VM whose memory is `memory` (registered with it already, or about to be).
    pub fn new(vm: VmFd, memory: GuestMemoryMmap) -> Machine {
        Machine { vcpus: None, keep_memory: false, vm: ManuallyDrop::new(vm), memory: ManuallyDrop::new(memory) }
    }

    /// The VM fd.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Hands the running vCPU threads to the machine, which stops them
    /// before anything else of it goes.
    pub fn set_vcpus(&mut self, vcpus: Vcpus) {
        self.vcpus = Some(vcpus);
    }

    /// The vCPUs, once they run.
    pub fn vcpus(&self) -> Option<&Vcpus> {
        self.vcpus.as_ref()
    }

    fn stop_vcpus(&mut self) -> Result<(), VcpuError> {
        let Some(vcpus) = self.vcpus.take() else { return Ok(()) };
        let stopped = vcpus.exit(EXIT_BOUND);
        self.keep_memory |= stopped.is_err();
        stopped
    }

    /// Ends the VM now (see the type's doc); the error names vCPU threads
    /// that did not leave.
    pub fn end(mut self) -> Result<(), VcpuError> {
        self.stop_vcpus()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Err(e) = self.stop_vcpus() {
            eprintln!("libvirt-helper: {e}");
        }
        // SAFETY: this is the machine's drop: `vm` is never used again.
        unsafe { ManuallyDrop::drop(&mut self.vm) };
        if !self.keep_memory {
            // SAFETY: never used again, and every vCPU thread has been
            // joined (their fds closed) and the VM fd closed above, so
            // nothing can reach this mapping through KVM any more.
            unsafe { ManuallyDrop::drop(&mut self.memory) };
        }
    }
}
