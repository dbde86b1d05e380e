//! The guest's ACPI tables: RSDP, XSDT, FADT (with the power-off and reset
//! registers the helper traps), MADT (one local APIC per vCPU, the I/O APIC),
//! MCFG (the PCI ECAM window) and a DSDT whose only object is `_S5`. Built
//! as bytes, checksummed, and written below 1 MiB where both boot paths
//! (and a BIOS-less Linux scan) find the RSDP.

/// Where the tables go: the legacy BIOS area, outside the e820 RAM ranges.
pub const RSDP_ADDR: u64 = 0xe_0000;
const XSDT_ADDR: u64 = RSDP_ADDR + 0x40;
const FADT_ADDR: u64 = RSDP_ADDR + 0x100;
const MADT_ADDR: u64 = RSDP_ADDR + 0x300;
const MCFG_ADDR: u64 = RSDP_ADDR + 0xf00;
const DSDT_ADDR: u64 = RSDP_ADDR + 0x1000;

/// PM1a event block (status and enable), and the control block that follows it.
pub const PM1A_EVT: u16 = 0x600;
/// PM1a control block: a write with SLP_EN powers off (`_S5` is type 0).
pub const PM1A_CNT: u16 = 0x604;
const SCI_IRQ: u8 = 9;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;

fn header(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(sig);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, set below
    t.extend_from_slice(b"LVRTRS"); // OEM id
    t.extend_from_slice(b"LVRTHELP"); // OEM table id
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"LVRT"); // creator
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The byte that makes `bytes` sum to zero (with its own slot still zero).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A generic address structure in system I/O space.
fn gas_io(port: u16, bits: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bits;
    g[3] = if bits <= 8 {
        1
    } else if bits <= 16 {
        2
    } else {
        3
    }; // access size
    g[4..].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn dsdt() -> Vec<u8> {
    // Name (_S5, Package () { Zero, Zero })
    header(b"DSDT", 2, &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x00, 0x00])
}

fn fadt() -> Vec<u8> {
    let mut b = vec![0u8; 276 - 36];
    let at = |o: usize| o - 36;
    b[at(40)..at(44)].copy_from_slice(&(DSDT_ADDR as u32).to_le_bytes());
    b[at(46)..at(48)].copy_from_slice(&u16::from(SCI_IRQ).to_le_bytes());
    b[at(56)..at(60)].copy_from_slice(&u32::from(PM1A_EVT).to_le_bytes());
    b[at(64)..at(68)].copy_from_slice(&u32::from(PM1A_CNT).to_le_bytes());
    b[at(88)] = 4; // PM1_EVT_LEN
    b[at(89)] = 2; // PM1_CNT_LEN
    b[at(108)] = crate::devices::rtc::CENTURY; // the CMOS clock's century register
    b[at(109)..at(111)].copy_from_slice(&0x0003u16.to_le_bytes()); // legacy devices, 8042
    let flags: u32 = 1 | (1 << 10); // WBINVD, RESET_REG_SUP
    b[at(112)..at(116)].copy_from_slice(&flags.to_le_bytes());
    b[at(116)..at(128)].copy_from_slice(&gas_io(0x64, 8)); // reset: i8042
    b[at(128)] = 0xfe;
    b[at(140)..at(148)].copy_from_slice(&DSDT_ADDR.to_le_bytes());
    b[at(148)..at(160)].copy_from_slice(&gas_io(PM1A_EVT, 32));
    b[at(172)..at(184)].copy_from_slice(&gas_io(PM1A_CNT, 16));
    header(b"FACP", 6, &b)
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are 8259s too
    for i in 0..vcpus.min(255) as u8 {
        b.extend_from_slice(&[0, 8, i, i]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, vcpus.min(254) as u8, 0]);
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // ISA IRQ 0 (the PIT) arrives on GSI 2; the SCI is level, active high.
    b.extend_from_slice(&[2, 10, 0, 0]);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&[2, 10, 0, SCI_IRQ]);
    b.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    b.extend_from_slice(&0x000du16.to_le_bytes());
    header(b"APIC", 5, &b)
}

/// MCFG: the ECAM window of PCI segment 0, bus 0 only.
fn mcfg() -> Vec<u8> {
    let mut b = vec![0u8; 8]; // reserved
    b.extend_from_slice(&crate::pci::ECAM_BASE.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // segment
    b.extend_from_slice(&[0, 0]); // buses 0..=0
    b.extend_from_slice(&0u32.to_le_bytes());
    header(b"MCFG", 1, &b)
}

fn xsdt() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&FADT_ADDR.to_le_bytes());
    b.extend_from_slice(&MADT_ADDR.to_le_bytes());
    b.extend_from_slice(&MCFG_ADDR.to_le_bytes());
    header(b"XSDT", 1, &b)
}

fn rsdp() -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(b"LVRTRS");
    r.push(2); // revision: XSDT present
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&XSDT_ADDR.to_le_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Every table with the guest-physical address it belongs at.
pub fn tables(vcpus: u32) -> Vec<(u64, Vec<u8>)> {
    vec![
        (RSDP_ADDR, rsdp()),
        (XSDT_ADDR, xsdt()),
        (FADT_ADDR, fadt()),
        (MADT_ADDR, madt(vcpus)),
        (MCFG_ADDR, mcfg()),
        (DSDT_ADDR, dsdt()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn every_table_checksums_to_zero_and_states_its_length() {
        for (addr, t) in tables(4) {
            if addr == RSDP_ADDR {
                assert_eq!(sum(&t[..20]), 0);
                assert_eq!(sum(&t), 0);
                continue;
            }
            assert_eq!(sum(&t), 0, "{}", String::from_utf8_lossy(&t[..4]));
            assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize, t.len());
        }
    }

    #[test]
    fn the_tables_fit_their_slots() {
        let t = tables(255);
        for pair in t.windows(2) {
            assert!(pair[0].0 + pair[0].1.len() as u64 <= pair[1].0, "table at {:#x} overlaps", pair[0].0);
        }
    }

    #[test]
    fn the_madt_lists_one_local_apic_per_vcpu() {
        let m = madt(3);
        let (mut i, mut found) = (44, 0);
        while i < m.len() {
            if m[i] == 0 {
                found += 1;
            }
            i += m[i + 1] as usize;
        }
        assert_eq!(found, 3);
    }

    #[test]
    fn the_fadt_points_at_the_trapped_registers() {
        let f = fadt();
        assert_eq!(u32::from_le_bytes(f[64..68].try_into().unwrap()), u32::from(PM1A_CNT));
        assert_eq!(f[128], 0xfe);
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), DSDT_ADDR);
        assert!(dsdt().windows(4).any(|w| w == b"_S5_"));
    }

    #[test]
    fn the_mcfg_gives_the_ecam_window_and_the_xsdt_lists_it() {
        let m = mcfg();
        assert_eq!(u64::from_le_bytes(m[44..52].try_into().unwrap()), crate::pci::ECAM_BASE);
        assert_eq!(&m[54..56], &[0, 0], "bus 0 only");
        assert!(xsdt()[36..].chunks(8).any(|c| u64::from_le_bytes(c.try_into().unwrap()) == MCFG_ADDR));
    }
}
