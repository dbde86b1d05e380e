//! `virDomainAttachDevice(Flags)`, `virDomainDetachDevice(Flags)` and
//! `virDomainDetachDeviceAlias` for disks and network interfaces, in the
//! persistent definition (`--config`).
//!
//! Live changes (`--live`, or the current state of a running guest) need
//! PCI hotplug in the helper, which it does not have: they are refused with
//! libvirt's "Operation not supported". The daemon keeps one definition per
//! domain (see `metadata.rs`), so the definition of a running guest, which
//! is also what it runs with, is not changed either: stop it first.

use super::domains::{AFFECT_CONFIG, AFFECT_LIVE, Domains};
use crate::domain::{self, DomainDef, xml};
use crate::privsep::CallError;

/// What a device change does, for errors and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add the device.
    Attach,
    /// Remove the device.
    Detach,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Change::Attach => "attach",
            Change::Detach => "detach",
        }
    }

    fn function(self) -> &'static str {
        match self {
            Change::Attach => "qemuDomainAttachDeviceFlags",
            Change::Detach => "qemuDomainDetachDeviceFlags",
        }
    }
}

/// The definition of `uuid` to change, after libvirt's flag checks and ours.
fn config_def(
    domains: &Domains,
    uuid: &crate::domain::Uuid,
    flags: u32,
    change: Change,
) -> Result<DomainDef, CallError> {
    if flags & !(AFFECT_LIVE | AFFECT_CONFIG) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: change.function().into() });
    }
    let e = domains.by_uuid(uuid)?;
    let (live, _) = e.impact(flags, false)?;
    if live {
        return Err(CallError::OperationUnsupported(format!(
            "live {} of devices is not supported: the guest helper has no PCI hotplug; use --config on a shut off \
             domain",
            change.word()
        )));
    }
    if e.id.is_some() {
        return Err(CallError::OperationUnsupported(
            "changing the persistent definition of a running domain is not supported: the daemon keeps one \
             definition per domain; stop the domain first"
                .into(),
        ));
    }
    Ok(e.def.clone())
}

/// The `<disk>` or `<interface>` element of a device XML, refusing any other device.
fn device_element(text: &str, change: Change) -> Result<xml::Element, CallError> {
    let root = xml::parse(text)?;
    if root.name != "disk" && root.name != "interface" {
        return Err(CallError::ConfigUnsupported(format!(
            "{}ing <{}> devices is not supported, only <disk> and <interface>",
            change.word(),
            root.name
        )));
    }
    Ok(root)
}

/// Adds interface `element` to `def`, with a free PCI slot.
fn attach_interface(def: &mut DomainDef, element: &xml::Element) -> Result<(), CallError> {
    let nic = domain::parse_interface(element)?;
    if def.interfaces.iter().any(|n| n.mac == nic.mac) {
        return Err(CallError::OperationInvalid(format!(
            "domain already has an interface with MAC address {}",
            nic.mac_string()
        )));
    }
    let previous = def.clone();
    def.interfaces.push(nic);
    domain::pci::assign(def, Some(&previous))?;
    Ok(())
}

/// Removes the interface `element` describes from `def`: the one with its
/// MAC, or without a MAC the only one of its type and source, as libvirt
/// matches them.
fn detach_interface(def: &mut DomainDef, element: &xml::Element) -> Result<(), CallError> {
    let mac = element.find("mac").and_then(|m| m.get("address")).map(str::to_ascii_lowercase);
    let kind = element.get("type");
    let source = element.find("source").and_then(|s| s.get("network").or_else(|| s.get("bridge")));
    let matching: Vec<usize> = (0..def.interfaces.len())
        .filter(|&i| {
            let n = &def.interfaces[i];
            match &mac {
                Some(m) => n.mac_string() == *m,
                None => kind.is_none_or(|k| k == n.kind) && source.is_none_or(|s| n.source.as_deref() == Some(s)),
            }
        })
        .collect();
    match (matching.as_slice(), &mac) {
        ([i], _) => {
            def.interfaces.remove(*i);
            Ok(())
        }
        ([], Some(m)) => Err(CallError::DeviceMissing(format!("no device matching MAC address {m} found"))),
        ([], None) => Err(CallError::DeviceMissing("no matching network device was found".into())),
        (_, _) => {
            Err(CallError::OperationFailed("multiple devices matching MAC address, specify the MAC address".into()))
        }
    }
}

/// Attaches or detaches the disk or interface `text` describes in domain `uuid`'s
/// definition. Returns the domain's name.
pub fn change(
    domains: &mut Domains,
    uuid: &crate::domain::Uuid,
    text: &str,
    flags: u32,
    change: Change,
) -> Result<String, CallError> {
    let mut def = config_def(domains, uuid, flags, change)?;
    let element = device_element(text, change)?;
    if element.name == "interface" {
        match change {
            Change::Attach => attach_interface(&mut def, &element)?,
            Change::Detach => detach_interface(&mut def, &element)?,
        }
        return domains.replace_def(uuid, def);
    }
    match change {
        Change::Attach => {
            let disk = domain::disk::parse(&element, &mut |_| Ok(()))?;
            if def.disks.iter().any(|d| d.target == disk.target) {
                return Err(CallError::OperationInvalid(format!("target {} already exists", disk.target)));
            }
            let previous = def.clone();
            def.disks.push(disk);
            domain::disk::check_all(&def.disks, !def.os.boot.is_empty())?;
            domain::pci::assign(&mut def, Some(&previous))?;
        }
        Change::Detach => {
            let target = element
                .find("target")
                .and_then(|t| t.get("dev"))
                .ok_or_else(|| CallError::XmlInvalid("missing target information for device".into()))?;
            let i = def
                .disks
                .iter()
                .position(|d| d.target == target)
                .ok_or_else(|| CallError::DeviceMissing(format!("no target device {target}")))?;
            def.disks.remove(i);
        }
    }
    domains.replace_def(uuid, def)
}

/// `virDomainDetachDeviceAlias` for a disk (`virtio-diskN`).
pub fn detach_alias(
    domains: &mut Domains,
    uuid: &crate::domain::Uuid,
    alias: &str,
    flags: u32,
) -> Result<String, CallError> {
    let mut def = config_def(domains, uuid, flags, Change::Detach)?;
    let i = def
        .disks
        .iter()
        .position(|d| d.alias() == alias)
        .ok_or_else(|| CallError::DeviceMissing(format!("no device found with alias {alias}")))?;
    def.disks.remove(i);
    domains.replace_def(uuid, def)
}
