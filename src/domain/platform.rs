//! The guest's platform, and the domain XML that describes it: the machine
//! name, `<features>`, `<cpu>`, `<pm>` and the controllers (`<clock>` is
//! `clock.rs`'s).
//!
//! Every guest runs on the helper's one platform, whatever the XML names:
//! 64-bit x86 with the host's CPU as KVM offers it, local APICs, an I/O APIC
//! and the legacy PICs, the in-kernel PIT, kvmclock, the CMOS clock (RTC,
//! whose offset and timers `clock.rs` checks), COM1, the i8042 reset line
//! and ACPI tables with power-off (`_S5`) and no sleep states. It has no
//! PCI bus (its ACPI tables describe no host bridge), no HPET, no VMware
//! port and no firmware configuration device.
//!
//! An element that describes the platform is kept when it describes this
//! platform (the guest gets what it says), or when it only tunes a part the
//! platform lacks and nothing on the platform could use (the guest sees the
//! same machine with or without it). Anything else is refused naming it.
//! The machine name is the exception, said plainly in README: it names a
//! QEMU board, and a guest can tell this platform from that board.

use super::DomainError;
use super::xml::Element;

/// The machine names capabilities list. Stock tools write one of them (or a
/// versioned alias, see [`machine`]) into every x86 domain; here they are
/// names only, both meaning the one platform above.
pub const MACHINES: &[&str] = &["pc", "q35"];

/// USB controller models libvirt knows for x86 guests.
const USB_MODELS: &[&str] = &[
    "piix3-uhci",
    "piix4-uhci",
    "ehci",
    "ich9-ehci1",
    "ich9-uhci1",
    "ich9-uhci2",
    "ich9-uhci3",
    "vt82c686b-uhci",
    "pci-ohci",
    "nec-xhci",
    "qusb1",
    "qusb2",
    "qemu-xhci",
    "none",
];

/// PCI controller models libvirt knows: root buses, and the bridges, ports
/// and expanders that build PCI topology under them.
const PCI_MODELS: &[&str] = &[
    "pci-root",
    "pcie-root",
    "pci-bridge",
    "dmi-to-pci-bridge",
    "pcie-root-port",
    "pcie-switch-upstream-port",
    "pcie-switch-downstream-port",
    "pci-expander-bus",
    "pcie-expander-bus",
    "pcie-to-pci-bridge",
];

fn unsupported(msg: impl Into<String>) -> DomainError {
    DomainError::Unsupported(msg.into())
}

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError::Invalid(msg.into())
}

/// Checks `machine` of `<os><type>`: `pc`, `q35`, or their versioned
/// aliases (`pc-i440fx-7.2`, `pc-q35-jammy`, ...), which the stock tools and
/// libvirt's own `dumpxml` write. Others (`isapc`, `microvm`, ...) are refused.
pub fn machine(name: &str) -> Result<(), DomainError> {
    let versioned = |prefix: &str| {
        name.strip_prefix(prefix).is_some_and(|v| {
            !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
    };
    if MACHINES.contains(&name) || versioned("pc-i440fx-") || versioned("pc-q35-") {
        Ok(())
    } else {
        Err(unsupported(format!(
            "machine type '{name}' is not supported: this daemon runs one platform, named 'pc' or 'q35'"
        )))
    }
}

/// Checks `<features>`: each child must describe the platform as it is.
pub fn features(e: &Element) -> Result<(), DomainError> {
    for f in &e.children {
        let state = f.get("state");
        let ok = match f.name.as_str() {
            // ACPI tables, APICs and the host CPU's PAE are always there. (An
            // APIC `eoi` setting would change the PV EOI feature KVM offers.)
            "acpi" | "pae" => true,
            "apic" => f.attrs.is_empty(),
            // Nested paging is the host's business; the guest cannot turn it
            // off from here, nor see it.
            "hap" => state != Some("off"),
            // The host's PMU, as KVM offers it, is in the guest's CPUID.
            "pmu" => state != Some("off"),
            // No VMware I/O port, no fw_cfg for a vmcoreinfo entry.
            "vmport" | "vmcoreinfo" => state == Some("off"),
            // The KVM signature and paravirtual features stay visible.
            "kvm" => f.children.iter().all(|c| c.name == "hidden" && c.get("state") == Some("off")),
            _ => false,
        };
        if !ok {
            return Err(unsupported(format!("<features><{}> as given is not supported by this daemon", f.name)));
        }
    }
    Ok(())
}

/// What `<cpu>` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// `migratable` (on unless 'off', as QEMU's `-cpu host`): the invariant
    /// TSC, the one host feature QEMU treats as tying a guest to its host, is
    /// hidden.
    pub migratable: bool,
}

/// Checks `<cpu>`: only `mode='host-passthrough'`, which is what the helper
/// gives (the host CPUID as `KVM_GET_SUPPORTED_CPUID` reports it). Named
/// models, host-model, features and topology would change that CPUID.
pub fn cpu(e: &Element) -> Result<Cpu, DomainError> {
    match e.get("mode") {
        Some("host-passthrough") => {}
        Some(m) => {
            return Err(unsupported(format!(
                "<cpu mode='{m}'> is not supported: the guest gets the host CPU (mode='host-passthrough')"
            )));
        }
        None => {
            return Err(unsupported(
                "<cpu> without mode='host-passthrough' is not supported: the guest gets the host CPU",
            ));
        }
    }
    if let Some(c) = e.get("check").filter(|c| !matches!(*c, "none" | "partial" | "full")) {
        return Err(invalid(format!("invalid cpu check '{c}'")));
    }
    let migratable = match e.get("migratable") {
        None | Some("on") => true,
        Some("off") => false,
        Some(m) => return Err(invalid(format!("invalid cpu migratable '{m}'"))),
    };
    if let Some(c) = e.children.first() {
        return Err(unsupported(format!("<cpu><{}> is not supported: the guest gets the host CPU as it is", c.name)));
    }
    Ok(Cpu { migratable })
}

/// Checks `<pm>`: the platform offers no sleep states (its DSDT has no `_S3`
/// or `_S4`), which is what `enabled='no'` asks for.
pub fn pm(e: &Element) -> Result<(), DomainError> {
    for s in &e.children {
        if !matches!(s.name.as_str(), "suspend-to-mem" | "suspend-to-disk") || s.get("enabled") != Some("no") {
            return Err(unsupported(format!(
                "<pm><{}> as given is not supported: the guest has no sleep states",
                s.name
            )));
        }
    }
    Ok(())
}

/// Checks a `<controller>`.
///
/// USB controllers and PCI topology (bridges, root ports, expanders) are
/// kept though the helper does not provide them: each is a PCI device or
/// bus, and the platform has no PCI bus for it to appear on. Nothing could
/// be attached to them either: no USB device can be defined here (`parse`
/// refuses every kind), and no PCI device runs (disks and interfaces, the
/// only ones defined, are refused at start). So the guest sees the same
/// machine with or without them. The root buses (`pci-root`, `pcie-root`)
/// are what libvirt writes for the boards the machine names. Once the
/// helper has a PCI bus, this rule must change with it.
pub fn controller(e: &Element) -> Result<(), DomainError> {
    match (e.get("type"), e.get("model")) {
        (Some("usb"), None) => Ok(()),
        (Some("usb"), Some(m)) if USB_MODELS.contains(&m) => Ok(()),
        (Some("usb"), Some(m)) => Err(invalid(format!("unknown USB controller model '{m}'"))),
        (Some("pci"), Some(m)) if PCI_MODELS.contains(&m) => Ok(()),
        (t, m) => Err(unsupported(format!(
            "<controller type='{}' model='{}'> is not supported",
            t.unwrap_or(""),
            m.unwrap_or("")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::xml;

    fn el(text: &str) -> Element {
        xml::parse(text).unwrap()
    }

    #[test]
    fn machine_names_are_the_two_boards_and_their_versions() {
        for ok in ["pc", "q35", "pc-i440fx-7.2", "pc-q35-8.0", "pc-q35-jammy"] {
            assert_eq!(machine(ok), Ok(()), "{ok}");
        }
        for bad in ["isapc", "microvm", "pc-", "pc-i440fx-", "virt", "pc-q35-a/b", "s390-ccw-virtio"] {
            assert!(matches!(machine(bad), Err(DomainError::Unsupported(m)) if m.contains(bad)), "{bad}");
        }
    }

    #[test]
    fn features_are_kept_only_as_the_platform_has_them() {
        for ok in [
            "<features><acpi/><apic/><pae/></features>",
            "<features><vmport state='off'/><vmcoreinfo state='off'/></features>",
            "<features><kvm><hidden state='off'/></kvm><pmu state='on'/></features>",
        ] {
            assert_eq!(features(&el(ok)), Ok(()), "{ok}");
        }
        for (bad, name) in [
            ("<features><vmport state='on'/></features>", "<vmport>"),
            ("<features><vmport/></features>", "<vmport>"),
            ("<features><vmcoreinfo/></features>", "<vmcoreinfo>"),
            ("<features><kvm><hidden state='on'/></kvm></features>", "<kvm>"),
            ("<features><pmu state='off'/></features>", "<pmu>"),
            ("<features><apic eoi='off'/></features>", "<apic>"),
            ("<features><smm state='on'/></features>", "<smm>"),
            ("<features><hyperv mode='custom'/></features>", "<hyperv>"),
        ] {
            assert!(matches!(features(&el(bad)), Err(DomainError::Unsupported(m)) if m.contains(name)), "{bad}");
        }
    }

    #[test]
    fn only_the_host_cpu_is_offered_migratable_unless_said_otherwise() {
        assert_eq!(cpu(&el("<cpu mode='host-passthrough'/>")), Ok(Cpu { migratable: true }));
        assert_eq!(
            cpu(&el("<cpu mode='host-passthrough' check='none' migratable='on'/>")),
            Ok(Cpu { migratable: true })
        );
        assert_eq!(cpu(&el("<cpu mode='host-passthrough' migratable='off'/>")), Ok(Cpu { migratable: false }));
        for bad in [
            "<cpu mode='host-model'/>",
            "<cpu mode='custom' match='exact'><model>Skylake-Client</model></cpu>",
            "<cpu><topology sockets='1' cores='2' threads='1'/></cpu>",
            "<cpu mode='host-passthrough'><feature policy='disable' name='vmx'/></cpu>",
            "<cpu mode='host-passthrough'><topology sockets='1' cores='1' threads='1'/></cpu>",
            "<cpu mode='maximum'/>",
        ] {
            assert!(matches!(cpu(&el(bad)), Err(DomainError::Unsupported(_))), "{bad}");
        }
        assert!(matches!(cpu(&el("<cpu mode='host-passthrough' migratable='yes'/>")), Err(DomainError::Invalid(_))));
    }

    #[test]
    fn sleep_states_can_only_be_turned_off() {
        let off = "<pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>";
        assert_eq!(pm(&el(off)), Ok(()));
        for bad in ["<pm><suspend-to-mem enabled='yes'/></pm>", "<pm><suspend-to-disk/></pm>"] {
            assert!(matches!(pm(&el(bad)), Err(DomainError::Unsupported(_))), "{bad}");
        }
    }

    #[test]
    fn usb_controllers_and_pci_topology_are_kept_other_controllers_refused() {
        for ok in [
            "<controller type='usb' model='ich9-ehci1'/>",
            "<controller type='usb' model='ich9-uhci2'><master startport='2'/></controller>",
            "<controller type='usb' index='0' model='qemu-xhci' ports='15'/>",
            "<controller type='usb'/>",
            "<controller type='usb' model='none'/>",
            "<controller type='pci' model='pci-root'/>",
            "<controller type='pci' model='pcie-root'/>",
            "<controller type='pci' index='1' model='pcie-root-port'><model name='pcie-root-port'/>\
             <target chassis='1' port='0x10'/></controller>",
        ] {
            assert_eq!(controller(&el(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "<controller type='pci' model='gpex-pcihost'/>",
            "<controller type='sata'/>",
            "<controller type='virtio-serial'/>",
            "<controller type='scsi' model='virtio-scsi'/>",
        ] {
            assert!(matches!(controller(&el(bad)), Err(DomainError::Unsupported(_))), "{bad}");
        }
        assert!(matches!(controller(&el("<controller type='usb' model='warp-drive'/>")), Err(DomainError::Invalid(_))));
    }
}
