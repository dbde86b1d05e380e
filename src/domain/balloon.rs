//! `<memballoon>`: `model='none'` (no balloon) or `model='virtio'`, a
//! virtio-balloon on a PCI slot of bus 0, with an optional `<stats
//! period=...>`. The element is kept as written (with the `<address>` the
//! slot assignment adds), so it formats back as libvirt shows it.

use super::xml::Element;
use super::{DomainDef, DomainError};

/// The longest stats period accepted, in seconds (a day).
const MAX_PERIOD: u32 = 86_400;

/// A virtio balloon as the helper builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balloon {
    /// Its PCI slot, once assigned.
    pub pci_slot: Option<u8>,
    /// `<stats period=...>` in seconds, 0 without.
    pub stats_period: u32,
}

/// Checks a `<memballoon>` element: whether it is one this daemon runs.
pub fn check(e: &Element) -> Result<(), DomainError> {
    match e.get("model") {
        Some("none") => Ok(()),
        Some("virtio") => parse(e).map(|_| ()),
        Some(m) => {
            Err(DomainError::Unsupported(format!("memballoon model '{m}' is not supported, only 'virtio' and 'none'")))
        }
        None => Err(DomainError::Invalid("missing memballoon model".into())),
    }
}

fn parse(e: &Element) -> Result<Balloon, DomainError> {
    for c in &e.children {
        match c.name.as_str() {
            "stats" | "address" | "alias" => {}
            n => return Err(DomainError::Unsupported(format!("<memballoon> element <{n}> is not supported"))),
        }
    }
    let stats_period = match e.find("stats").map(|s| s.get("period")) {
        None => 0,
        Some(p) => p
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|p| *p <= MAX_PERIOD)
            .ok_or_else(|| DomainError::Invalid(format!("invalid statistics period '{}'", p.unwrap_or(""))))?,
    };
    let pci_slot = e.find("address").map(super::pci::parse_address).transpose()?;
    Ok(Balloon { pci_slot, stats_period })
}

/// The definition's virtio balloon, if it has one.
pub fn of(def: &DomainDef) -> Option<Balloon> {
    def.kept_devices.iter().find(|e| is_virtio(e)).and_then(|e| parse(e).ok())
}

fn is_virtio(e: &Element) -> bool {
    e.name == "memballoon" && e.get("model") == Some("virtio")
}

/// Sets the virtio balloon's statistics period to `seconds` (no `<stats>`
/// for 0, as libvirt writes it); false when the definition has no virtio
/// balloon.
pub fn set_period(def: &mut DomainDef, seconds: u32) -> Result<bool, DomainError> {
    if seconds > MAX_PERIOD {
        return Err(DomainError::Invalid(format!("statistics period {seconds} s is longer than {MAX_PERIOD} s")));
    }
    let Some(e) = def.kept_devices.iter_mut().find(|e| is_virtio(e)) else { return Ok(false) };
    e.raw = None;
    e.children.retain(|c| c.name != "stats");
    if seconds > 0 {
        // libvirt writes <stats> before <alias> and <address>.
        e.children.insert(0, Element::new("stats").attr("period", seconds.to_string()));
    }
    Ok(true)
}

/// Gives a virtio balloon without an address the first slot not in `used`.
pub fn assign(def: &mut DomainDef, used: &mut Vec<u8>) -> Result<(), DomainError> {
    let Some(e) = def.kept_devices.iter_mut().find(|e| is_virtio(e)) else { return Ok(()) };
    if e.find("address").is_some() {
        return Ok(());
    }
    let slot = (super::pci::FIRST_SLOT..=super::pci::LAST_SLOT)
        .find(|s| !used.contains(s))
        .ok_or_else(|| DomainError::Unsupported("no free PCI slot left on bus 0 for the memballoon".into()))?;
    used.push(slot);
    e.raw = None;
    e.children.push(super::pci::address(slot));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::xml;

    fn el(text: &str) -> Element {
        xml::parse(text).unwrap()
    }

    #[test]
    fn models_and_periods_are_checked() {
        assert!(check(&el("<memballoon model='none'/>")).is_ok());
        assert!(check(&el("<memballoon model='virtio'><stats period='10'/></memballoon>")).is_ok());
        assert!(matches!(check(&el("<memballoon model='xen'/>")), Err(DomainError::Unsupported(_))));
        assert!(matches!(
            check(&el("<memballoon model='virtio'><stats period='-1'/></memballoon>")),
            Err(DomainError::Invalid(_))
        ));
        assert!(matches!(
            check(&el("<memballoon model='virtio'><driver iommu='on'/></memballoon>")),
            Err(DomainError::Unsupported(_))
        ));
        let b =
            parse(&el("<memballoon model='virtio'><stats period='5'/><address type='pci' slot='0x07'/></memballoon>"));
        assert_eq!(b, Ok(Balloon { pci_slot: Some(7), stats_period: 5 }));
    }
}
