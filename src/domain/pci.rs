//! PCI addresses of a domain's devices: the helper has one PCI bus (bus 0 of
//! domain 0), and each virtio device sits in a slot of its own, function 0.
//!
//! As libvirt's QEMU driver does for the `pc` board, slot 0 is the host
//! bridge and slots 1 and 2 are kept back (the board's ISA bridge and the
//! primary video card's place), so devices are given the first free slot from
//! 0x03 on, in the order libvirt assigns them. We do the same for `q35`
//! rather than libvirt's PCIe root ports, because the helper has no root
//! ports: every device is on bus 0. An address given in the XML is kept (and
//! checked); one the XML leaves out is assigned at define and kept across
//! redefines that still leave it out.

use super::xml::Element;
use super::{DomainDef, DomainError};

/// The first slot handed out.
pub const FIRST_SLOT: u8 = 0x03;
/// The last slot on the bus.
pub const LAST_SLOT: u8 = 0x1f;

fn hex(v: Option<&str>) -> Option<u32> {
    let v = v?;
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// The slot an `<address>` names, refusing any place the helper has none.
pub fn parse_address(e: &Element) -> Result<u8, DomainError> {
    match e.get("type") {
        Some("pci") => {}
        Some(t) => return Err(DomainError::Unsupported(format!("address type '{t}' is not supported, only 'pci'"))),
        None => return Err(DomainError::Invalid("No type specified for device address".into())),
    }
    let field = |name: &str| match e.get(name) {
        None => Ok(0),
        v => hex(v).ok_or_else(|| DomainError::Invalid(format!("Cannot parse <address> '{name}' attribute"))),
    };
    let (domain, bus, slot, function) = (field("domain")?, field("bus")?, field("slot")?, field("function")?);
    if e.get("multifunction") == Some("on") {
        return Err(DomainError::Unsupported("multifunction PCI devices are not supported".into()));
    }
    if domain != 0 || bus != 0 || function != 0 || !(u32::from(FIRST_SLOT)..=u32::from(LAST_SLOT)).contains(&slot) {
        return Err(DomainError::Unsupported(format!(
            "PCI address {domain:04x}:{bus:02x}:{slot:02x}.{function:x} is not available: devices sit on bus 0, \
             function 0, slots 0x{FIRST_SLOT:02x} to 0x{LAST_SLOT:02x}"
        )));
    }
    Ok(slot as u8)
}

/// `<address type='pci' .../>` for `slot`, as libvirt writes it.
pub fn address(slot: u8) -> Element {
    Element::new("address")
        .attr("type", "pci")
        .attr("domain", "0x0000")
        .attr("bus", "0x00")
        .attr("slot", format!("0x{slot:02x}"))
        .attr("function", "0x0")
}

/// Slots given in kept devices' own `<address>` (controllers), which the
/// helper does not provide but which a user may have placed.
fn kept_slots(def: &DomainDef) -> Vec<u8> {
    def.kept_devices
        .iter()
        .filter_map(|e| e.find("address"))
        .filter(|a| a.get("type") == Some("pci") && hex(a.get("bus")) == Some(0))
        .filter_map(|a| hex(a.get("slot")).and_then(|s| u8::try_from(s).ok()))
        .collect()
}

/// Gives every interface and disk without an address a free slot: the one
/// it had in `previous` (the definition this one replaces; an interface is
/// known by its MAC, a disk by its target) if still free, else the first
/// free one, interfaces before disks as libvirt assigns them. Refuses two
/// devices on one slot, as libvirt does.
pub fn assign(def: &mut DomainDef, previous: Option<&DomainDef>) -> Result<(), DomainError> {
    let mut used = kept_slots(def);
    used.extend(super::balloon::of(def).and_then(|b| b.pci_slot));
    let given = def.interfaces.iter().map(|n| n.pci_slot).chain(def.disks.iter().map(|d| d.pci_slot));
    for s in given.flatten().collect::<Vec<_>>() {
        if used.contains(&s) {
            return Err(DomainError::Invalid(format!("Attempted double use of PCI Address 0000:00:{s:02x}.0")));
        }
        used.push(s);
    }
    // Slots carried over first, so that a new device listed before an old
    // one does not take the old one's place.
    if let Some(p) = previous {
        for n in def.interfaces.iter_mut().filter(|n| n.pci_slot.is_none()) {
            let before = p.interfaces.iter().find(|o| o.mac == n.mac).and_then(|o| o.pci_slot);
            if let Some(s) = before.filter(|s| !used.contains(s)) {
                n.pci_slot = Some(s);
                used.push(s);
            }
        }
        for d in def.disks.iter_mut().filter(|d| d.pci_slot.is_none()) {
            let before = p.disks.iter().find(|o| o.target == d.target).and_then(|o| o.pci_slot);
            if let Some(s) = before.filter(|s| !used.contains(s)) {
                d.pci_slot = Some(s);
                used.push(s);
            }
        }
    }
    let free = |what: String, used: &mut Vec<u8>| {
        let slot = (FIRST_SLOT..=LAST_SLOT)
            .find(|s| !used.contains(s))
            .ok_or_else(|| DomainError::Unsupported(format!("no free PCI slot left on bus 0 for {what}")))?;
        used.push(slot);
        Ok::<u8, DomainError>(slot)
    };
    for n in def.interfaces.iter_mut().filter(|n| n.pci_slot.is_none()) {
        n.pci_slot = Some(free(format!("interface '{}'", n.mac_string()), &mut used)?);
    }
    for d in def.disks.iter_mut().filter(|d| d.pci_slot.is_none()) {
        d.pci_slot = Some(free(format!("disk '{}'", d.target), &mut used)?);
    }
    super::balloon::assign(def, &mut used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::xml;

    fn addr(text: &str) -> Result<u8, DomainError> {
        parse_address(&xml::parse(text).unwrap())
    }

    #[test]
    fn addresses_on_bus_zero_parse_and_others_are_refused() {
        assert_eq!(addr("<address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x0'/>"), Ok(0x1f));
        assert_eq!(addr("<address type='pci' slot='5'/>"), Ok(5));
        for bad in [
            "<address type='pci' bus='0x01' slot='0x03'/>",
            "<address type='pci' slot='0x02'/>",
            "<address type='pci' slot='0x20'/>",
            "<address type='pci' slot='0x03' function='0x1'/>",
            "<address type='pci' slot='0x03' multifunction='on'/>",
            "<address type='virtio-mmio'/>",
        ] {
            assert!(matches!(addr(bad), Err(DomainError::Unsupported(_))), "{bad}");
        }
        assert!(matches!(addr("<address type='pci' slot='zz'/>"), Err(DomainError::Invalid(_))));
        assert_eq!(xml::parse(&address(4).to_xml()).map(|e| parse_address(&e)), Ok(Ok(4)));
    }

    fn domain(disks: &str) -> String {
        format!(
            "<domain type='kvm'><name>p</name><memory>65536</memory><os><type>hvm</type><kernel>/k</kernel></os>\
             <devices>{disks}</devices></domain>"
        )
    }

    fn slots(def: &DomainDef) -> Vec<(String, Option<u8>)> {
        def.disks.iter().map(|d| (d.target.clone(), d.pci_slot)).collect()
    }

    #[test]
    fn slots_are_assigned_from_three_kept_across_redefines_and_never_shared() {
        let vda = "<disk><source file='/a'/><target dev='vda'/></disk>";
        let vdb = "<disk><source file='/b'/><target dev='vdb'/></disk>";
        let vdc = "<disk><source file='/c'/><target dev='vdc'/></disk>";
        let (first, _) = crate::domain::parse(&domain(&format!("{vda}{vdb}")), false).unwrap();
        assert_eq!(slots(&first), [("vda".into(), Some(3)), ("vdb".into(), Some(4))]);
        assert!(first.to_xml().contains("<address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>"));
        // vda removed, vdc added before vdb: vdb keeps slot 4 and vdc takes the first free one.
        let (again, _) = crate::domain::parse_with(&domain(&format!("{vdc}{vdb}")), false, Some(&first)).unwrap();
        assert_eq!(slots(&again), [("vdc".into(), Some(3)), ("vdb".into(), Some(4))]);
        let fixed = "<disk><source file='/c'/><target dev='vdc'/><address type='pci' slot='0x03'/></disk>";
        let (given, _) = crate::domain::parse(&domain(&format!("{vda}{fixed}")), false).unwrap();
        assert_eq!(slots(&given), [("vda".into(), Some(4)), ("vdc".into(), Some(3))]);
        let twice = fixed.replace("vdc", "vdd").replace("/c", "/d");
        let e = crate::domain::parse(&domain(&format!("{fixed}{twice}")), false).unwrap_err();
        assert_eq!(e, DomainError::Invalid("Attempted double use of PCI Address 0000:00:03.0".into()));
    }

    #[test]
    fn interfaces_get_slots_before_disks_and_keep_them_across_redefines() {
        let vda = "<disk><source file='/a'/><target dev='vda'/></disk>";
        let nic = "<interface type='network'><mac address='52:54:00:00:00:01'/><source network='n'/></interface>";
        let (first, _) = crate::domain::parse(&domain(&format!("{vda}{nic}")), false).unwrap();
        assert_eq!((first.interfaces[0].pci_slot, first.disks[0].pci_slot), (Some(3), Some(4)));
        let xml = first.to_xml();
        assert!(
            xml.contains("<model type='virtio'/>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x03'"),
            "{xml}"
        );
        // A second interface added later takes a free slot; the others keep theirs.
        let nic2 = nic.replace(":01'", ":02'");
        let (again, _) = crate::domain::parse_with(&domain(&format!("{nic2}{vda}{nic}")), false, Some(&first)).unwrap();
        let nics: Vec<_> = again.interfaces.iter().map(|n| n.pci_slot).collect();
        assert_eq!((nics, again.disks[0].pci_slot), (vec![Some(5), Some(3)], Some(4)));
    }
}
