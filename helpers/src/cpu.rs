//! vCPU state at the first instruction, for each entry protocol.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{BOOT_INFO, Entry};

const GDT: u64 = 0x500;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
const STACK: u64 = 0x8ff0;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// A flat segment (`long`: 64-bit code; else 32-bit), as a GDT entry and as KVM's view.
fn segment(selector: u16, code: bool, long: bool) -> (u64, kvm_segment) {
    let seg = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    // Descriptor: limit 0xfffff, base 0, access (P | S | type), flags (G, D/B, L).
    let access = 0x80 | 0x10 | u64::from(seg.type_);
    let flags = (u64::from(seg.g) << 3) | (u64::from(seg.db) << 2) | (u64::from(seg.l) << 1);
    let entry = 0xffff | (access << 40) | (0xf << 48) | (flags << 52);
    (entry, seg)
}

/// Sets registers, segments, paging and FPU for `entry`.
pub fn setup(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: Entry) -> Result<(), String> {
    let long = matches!(entry, Entry::Linux64(_));
    // Boot protocol selectors: __BOOT_CS 0x10, __BOOT_DS 0x18.
    let (code_entry, code) = segment(0x10, true, long);
    let (data_entry, data) = segment(0x18, false, false);
    let gdt: [u64; 4] = [0, 0, code_entry, data_entry];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + 8 * i as u64)).map_err(|e| e.to_string())?;
    }
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.gdt.base = GDT;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    let mut regs = kvm_regs { rflags: 2, rsp: STACK, rbp: STACK, ..Default::default() };
    match entry {
        Entry::Linux64(rip) => {
            identity_map(mem)?;
            sregs.cr3 = PML4;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = BOOT_INFO;
        }
        Entry::Pvh(rip) => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = BOOT_INFO;
        }
    }
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| e.to_string())
}

/// Identity-maps the first 1 GiB with 2 MiB pages.
fn identity_map(mem: &GuestMemoryMmap) -> Result<(), String> {
    let w = |v: u64, at: u64| mem.write_obj(v, GuestAddress(at)).map_err(|e| e.to_string());
    w(PDPT | 3, PML4)?;
    w(PD | 3, PDPT)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, PD + i * 8)?;
    }
    Ok(())
}

/// Lets the legacy PIC reach the CPU (LINT0 as ExtINT) and NMIs through LINT1.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), String> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    let mut lapic = vcpu.get_lapic().map_err(|e| e.to_string())?;
    let read = |l: &kvm_bindings::kvm_lapic_state, off: usize| {
        let b: [u8; 4] = std::array::from_fn(|i| l.regs[off + i] as u8);
        u32::from_le_bytes(b)
    };
    let write = |l: &mut kvm_bindings::kvm_lapic_state, off: usize, v: u32| {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            l.regs[off + i] = *b as _;
        }
    };
    let lint0 = read(&lapic, LVT_LINT0);
    write(&mut lapic, LVT_LINT0, (lint0 & !0x700) | (0x7 << 8));
    let lint1 = read(&lapic, LVT_LINT1);
    write(&mut lapic, LVT_LINT1, (lint1 & !0x700) | (0x4 << 8));
    vcpu.set_lapic(&lapic).map_err(|e| e.to_string())
}

/// Tells vCPU `index` of `count` who it is: APIC id and package size in
/// leaf 1 (with HTT when there are several), x2APIC id in leaf 0xB.
pub fn topology(cpuid: &mut kvm_bindings::CpuId, index: u32, count: u32) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | ((count & 0xff) << 16) | ((index & 0xff) << 24);
                if count > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            0xb => e.edx = index,
            _ => {}
        }
    }
}

/// Hides the invariant TSC (leaf 0x8000_0007, EDX bit 8) unless `shown`:
/// what `<cpu mode='host-passthrough' migratable='on'>` asks for, as QEMU's
/// migratable host CPU does (it is the one host feature QEMU holds to tie a
/// guest to its host).
pub fn invariant_tsc(cpuid: &mut kvm_bindings::CpuId, shown: bool) {
    const INVTSC: u32 = 1 << 8;
    if shown {
        return;
    }
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 0x8000_0007) {
        e.edx &= !INVTSC;
    }
}

/// The MSRs a Linux guest expects from firmware: fast strings on, and all of
/// memory write-back by default (without it, hardware KVM runs the guest
/// uncached). Set on every vCPU.
pub fn set_msrs(vcpu: &VcpuFd) -> Result<(), String> {
    use kvm_bindings::{Msrs, kvm_msr_entry};
    const IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    let entries = [
        kvm_msr_entry { index: IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING, ..Default::default() },
        kvm_msr_entry { index: IA32_MTRR_DEF_TYPE, data: MTRR_ENABLE | MTRR_TYPE_WB, ..Default::default() },
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|e| format!("{e:?}"))?;
    let set = vcpu.set_msrs(&msrs).map_err(|e| e.to_string())?;
    if set != entries.len() {
        return Err(format!("KVM set {set} of {} MSRs", entries.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{CpuId, kvm_cpuid_entry2};

    fn leaves() -> CpuId {
        let entry = |function, edx| kvm_cpuid_entry2 { function, edx, ..Default::default() };
        CpuId::from_entries(&[entry(1, u32::MAX), entry(0x8000_0007, 0x1ff)]).unwrap()
    }

    #[test]
    fn a_migratable_cpu_hides_only_the_invariant_tsc() {
        let mut cpuid = leaves();
        super::invariant_tsc(&mut cpuid, false);
        let edx: Vec<u32> = cpuid.as_slice().iter().map(|e| e.edx).collect();
        assert_eq!(edx, [u32::MAX, 0xff]);
        let mut cpuid = leaves();
        super::invariant_tsc(&mut cpuid, true);
        assert_eq!(cpuid.as_slice()[1].edx, 0x1ff);
    }
}
