//! [`DomainDef`] to its canonical XML element tree.

use super::xml::Element;
use super::{CharDev, CharSource, DomainDef, KEPT_DEVICE_ORDER, KEPT_ORDER, LiveDisk, LiveNic, uuid_string};

/// Builds the `<domain>` element in libvirt's element order.
pub fn domain(d: &DomainDef, live: Option<(&[LiveDisk], &[LiveNic])>) -> Element {
    let kept = |name: &'static str| d.kept.iter().filter(move |e| e.name == name).cloned();
    let mut root = Element::new("domain")
        .attr("type", "kvm")
        .child(Element::new("name").with_text(&d.name))
        .child(Element::new("uuid").with_text(uuid_string(&d.uuid)));
    if let Some(t) = &d.title {
        root = root.child(Element::new("title").with_text(t));
    }
    if let Some(desc) = &d.description {
        root = root.child(Element::new("description").with_text(desc));
    }
    let [metadata, blkiotune, memtune, backing, cputune, resource, features, cpu, clock, pm, seclabel] = KEPT_ORDER
    else {
        unreachable!()
    };
    root.children.extend(kept(metadata));
    root = root
        .child(Element::new("memory").attr("unit", "KiB").with_text(d.memory_kib.to_string()))
        .child(Element::new("currentMemory").attr("unit", "KiB").with_text(d.current_memory_kib.to_string()));
    root.children.extend(kept(blkiotune));
    root.children.extend(kept(memtune));
    root.children.extend(kept(backing));
    root = root.child(Element::new("vcpu").attr("placement", "static").with_text(d.vcpus.to_string()));
    root.children.extend(kept(cputune));
    root.children.extend(kept(resource));
    root = root.child(os(d));
    for name in [features, cpu, clock] {
        root.children.extend(kept(name));
    }
    root = root
        .child(Element::new("on_poweroff").with_text(d.on_poweroff.as_str()))
        .child(Element::new("on_reboot").with_text(d.on_reboot.as_str()))
        .child(Element::new("on_crash").with_text(d.on_crash.as_str()));
    root.children.extend(kept(pm));
    root = root.child(devices(d, live));
    root.children.extend(kept(seclabel));
    root
}

fn os(d: &DomainDef) -> Element {
    let mut ty = Element::new("type").attr("arch", &d.os.arch);
    if let Some(m) = &d.os.machine {
        ty = ty.attr("machine", m);
    }
    let mut os = Element::new("os").child(ty.with_text("hvm")).child(Element::new("kernel").with_text(&d.os.kernel));
    if let Some(i) = &d.os.initrd {
        os = os.child(Element::new("initrd").with_text(i));
    }
    if let Some(c) = &d.os.cmdline {
        os = os.child(Element::new("cmdline").with_text(c));
    }
    for b in &d.os.boot {
        os = os.child(Element::new("boot").attr("dev", b));
    }
    os
}

fn devices(d: &DomainDef, live: Option<(&[LiveDisk], &[LiveNic])>) -> Element {
    let kept = |name: &'static str| d.kept_devices.iter().filter(move |e| e.name == name).cloned();
    let mut devs = Element::new("devices");
    let [emulator, controller, rest @ ..] = KEPT_DEVICE_ORDER else { unreachable!() };
    devs.children.extend(kept(emulator));
    let mut index = 1;
    let none = LiveDisk::default();
    for (i, disk) in d.disks.iter().enumerate() {
        let live = live.map(|(l, _)| (l.get(i).unwrap_or(&none), &mut index));
        devs = devs.child(super::disk::emit(disk, live));
    }
    devs.children.extend(kept(controller));
    for (i, nic) in d.interfaces.iter().enumerate() {
        let running = live.map(|(_, nics)| nics.get(i).cloned().unwrap_or_default());
        devs = devs.child(interface(nic, i, running.as_ref()));
    }
    for s in &d.serials {
        devs = devs.child(chardev("serial", s, Element::new("target").attr("port", s.port.to_string())));
    }
    for c in &d.consoles {
        let target = Element::new("target").attr("type", "serial").attr("port", c.port.to_string());
        devs = devs.child(chardev("console", c, target));
    }
    for name in rest {
        devs.children.extend(kept(name));
    }
    devs
}

fn chardev(name: &str, c: &CharDev, target: Element) -> Element {
    let (ty, source) = match &c.source {
        CharSource::Pty => ("pty", None),
        CharSource::Null => ("null", None),
        CharSource::File(p) => ("file", Some(Element::new("source").attr("path", p))),
    };
    let mut e = Element::new(name).attr("type", ty);
    if let Some(s) = source {
        e = e.child(s);
    }
    e.child(target)
}

/// One `<interface>`, in libvirt's child order; a running guest's shows its
/// tap, its network's bridge and its alias.
fn interface(nic: &super::Interface, index: usize, live: Option<&LiveNic>) -> Element {
    let mut e =
        Element::new("interface").attr("type", &nic.kind).child(Element::new("mac").attr("address", nic.mac_string()));
    match (nic.kind.as_str(), &nic.source) {
        ("network", Some(s)) => {
            let mut source = Element::new("source").attr("network", s);
            if let Some(br) = live.and_then(|l| l.bridge.as_deref()) {
                source = source.attr("bridge", br);
            }
            e = e.child(source);
        }
        ("bridge", Some(s)) => e = e.child(Element::new("source").attr("bridge", s)),
        _ => {}
    }
    match (live.map(|l| l.tap.as_str()).filter(|t| !t.is_empty()), &nic.target) {
        (Some(tap), _) => e = e.child(Element::new("target").attr("dev", tap)),
        (None, Some(t)) => e = e.child(Element::new("target").attr("dev", t)),
        (None, None) => {}
    }
    e = e.child(Element::new("model").attr("type", "virtio"));
    if live.and_then(|l| l.link_down).unwrap_or(nic.link_down) {
        e = e.child(Element::new("link").attr("state", "down"));
    }
    if let Some(m) = nic.mtu {
        e = e.child(Element::new("mtu").attr("size", m.to_string()));
    }
    if live.is_some() {
        e = e.child(Element::new("alias").attr("name", super::nic_alias(index)));
    }
    if let Some(slot) = nic.pci_slot {
        e = e.child(super::pci::address(slot));
    }
    e
}
