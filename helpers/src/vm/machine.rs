//! What must go in a fixed order when the VM ends.

use std::mem::ManuallyDrop;
use std::sync::{Arc, Weak};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::vcpu::{EXIT_BOUND, VcpuError, Vcpus};

/// The KVM VM, its guest memory and its vCPU threads.
///
/// KVM maps guest memory from this process's mapping of it
/// (`KVM_SET_USER_MEMORY_REGION` takes a host address), and keeps that
/// address in its memory slot for as long as the VM exists. The VM exists
/// while any fd holds it: the VM fd and every vCPU fd (each vCPU thread
/// owns its own and closes it when it ends). Unmapping guest memory while
/// the VM exists would not make KVM touch freed memory (its MMU notifier
/// drops the guest's view of the pages), but the address range could be
/// handed to a later mapping of this process (heap, a thread stack), which
/// a still-running guest would then read and write. So ending a `Machine`
/// (1) tells every vCPU to exit and joins its thread, which closes its vCPU
/// fd, (2) closes the VM fd, the last reference, so the VM and its memory
/// slots are gone, (3) only then unmaps guest memory, written out in
/// [`Drop::drop`] rather than left to field order. If a vCPU thread does
/// not leave within its bound, its fd keeps the VM alive, so guest memory
/// is never unmapped: it goes with the process, which is about to exit.
/// Nothing else holds a reference into guest memory: the `GuestMemoryMmap`
/// is this struct's alone (vCPU threads and devices get none).
pub struct Machine {
    vcpus: Option<Vcpus>,
    /// A vCPU thread did not leave: keep guest memory mapped.
    keep_memory: bool,
    /// The only strong reference: others (the routing table) hold it weakly.
    vm: ManuallyDrop<Arc<VmFd>>,
    memory: ManuallyDrop<GuestMemoryMmap>,
}

impl Machine {
    /// A VM whose memory is `memory` (registered with it already, or about to be).
    pub fn new(vm: VmFd, memory: GuestMemoryMmap) -> Machine {
        Machine {
            vcpus: None,
            keep_memory: false,
            vm: ManuallyDrop::new(Arc::new(vm)),
            memory: ManuallyDrop::new(memory),
        }
    }

    /// The VM fd.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// The VM fd, for what must reach it later without keeping the VM
    /// alive past the machine (the GSI routing table).
    pub fn vm_weak(&self) -> Weak<VmFd> {
        Arc::downgrade(&self.vm)
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
            // SAFETY: `memory` is never used again. Every vCPU thread this
            // machine was given has been joined, closing its vCPU fd, and
            // the VM fd was closed above, so the VM and its memory slots are
            // gone; the one exception is a build that failed before its
            // vCPUs ran, whose unstarted vCPU fds close next and run no
            // guest code meanwhile. Either way no guest can reach this range
            // once it is unmapped and perhaps reused. (With a vCPU thread
            // left running, `keep_memory` is set and the mapping stays.)
            unsafe { ManuallyDrop::drop(&mut self.memory) };
        }
    }
}
