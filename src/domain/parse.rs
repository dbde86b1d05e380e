//! Domain XML to [`DomainDef`]: what we model, keep, refuse or drop.

use super::platform;
use super::tuning;
use super::xml::{self, Element};
use super::{CharDev, CharSource, DomainDef, DomainError, Interface, LifecycleAction, OsDef};
use super::{parse_uuid, to_kib};

/// Most vCPUs a domain may have.
pub const MAX_VCPUS: u32 = 255;

/// The longest domain name, in bytes, that can be stored: the longest file
/// name the daemon writes for a domain is its definition's temporary copy,
/// `.NAME.xml.new` (the running state's `NAME.live.xml` and `NAME.live.new`
/// are as long), and a file name has at most 255 bytes (`NAME_MAX`). A
/// longer name would pass here and then fail on disk, so it is refused at
/// define. (libvirt's own temporary `NAME.xml.new` allows one byte more.)
pub const MAX_NAME_BYTES: usize = 255 - ".".len() - ".xml.new".len();

/// Virt types libvirt knows; only `kvm` runs here.
pub(super) const KNOWN_TYPES: &[&str] = &[
    "qemu",
    "kqemu",
    "kvm",
    "xen",
    "lxc",
    "uml",
    "openvz",
    "test",
    "vmware",
    "hyperv",
    "vbox",
    "phyp",
    "parallels",
    "bhyve",
    "vz",
    "ch",
];

/// Top-level elements that would change the guest and that we cannot honour.
const UNSUPPORTED_TOP: &[&str] = &[
    "maxMemory",
    "vcpus",
    "iothreads",
    "iothreadids",
    "numatune",
    "sysinfo",
    "bootloader",
    "bootloader_args",
    "idmap",
    "keywrap",
    "launchSecurity",
    "perf",
    "genid",
    "throttlegroups",
];

/// Top-level elements kept as written: host-side settings the guest cannot
/// see (`metadata`, `seclabel`, `resource`), and descriptions of the platform
/// that `platform` checks first (it refuses what would change the guest).
const HARMLESS_TOP: &[&str] = &[
    "metadata",
    "features",
    "cpu",
    "clock",
    "pm",
    "seclabel",
    "resource",
    "cputune",
    "memtune",
    "blkiotune",
    "memoryBacking",
];

/// Devices that would change the guest and that we cannot provide.
const UNSUPPORTED_DEVICES: &[&str] = &[
    "graphics",
    "sound",
    "hostdev",
    "redirdev",
    "redirfilter",
    "smartcard",
    "tpm",
    "filesystem",
    "channel",
    "rng",
    "watchdog",
    "panic",
    "shmem",
    "iommu",
    "vsock",
    "lease",
    "hub",
    "parallel",
    "memory",
    "crypto",
    "pstore",
];

/// Parses and checks a domain XML. `validate` is `VIR_DOMAIN_DEFINE_VALIDATE`:
/// unknown elements are then errors instead of being dropped. Returns the
/// definition and the names of dropped elements (for the log).
pub fn parse(text: &str, validate: bool) -> Result<(DomainDef, Vec<String>), DomainError> {
    parse_with(text, validate, None)
}

/// [`parse`] for a definition that replaces `previous`: devices the XML
/// leaves without an address keep the one they had there (`pci.rs`).
pub fn parse_with(
    text: &str,
    validate: bool,
    previous: Option<&DomainDef>,
) -> Result<(DomainDef, Vec<String>), DomainError> {
    let root = xml::parse(text)?;
    let mut p = Parser { validate, dropped: Vec::new() };
    let mut def = p.domain(&root)?;
    super::disk::check_all(&def.disks, !def.os.boot.is_empty())?;
    super::pci::assign(&mut def, previous)?;
    Ok((def, p.dropped))
}

struct Parser {
    validate: bool,
    dropped: Vec<String>,
}

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError::Invalid(msg.into())
}

fn unsupported(msg: impl Into<String>) -> DomainError {
    DomainError::Unsupported(msg.into())
}

impl Parser {
    fn unknown(&mut self, e: &Element, parent: &str) -> Result<(), DomainError> {
        if self.validate {
            return Err(DomainError::Schema { element: e.name.clone(), parent: parent.to_owned() });
        }
        self.dropped.push(format!("<{}> in <{parent}>", e.name));
        Ok(())
    }

    fn domain(&mut self, root: &Element) -> Result<DomainDef, DomainError> {
        if root.name != "domain" {
            return Err(invalid(format!("unexpected root element <{}>, expecting <domain>", root.name)));
        }
        match root.get("type") {
            Some("kvm") => {}
            Some(t) if KNOWN_TYPES.contains(&t) => {
                return Err(unsupported(format!("virt type '{t}' is not supported by this daemon, only 'kvm'")));
            }
            Some(t) => return Err(unsupported(format!("invalid domain type {t}"))),
            None => return Err(invalid("missing domain type attribute")),
        }
        let name = root.find("name").map(|e| e.text.clone()).ok_or_else(|| invalid("missing name information"))?;
        check_name(&name)?;
        let uuid = match root.find("uuid") {
            Some(u) => parse_uuid(&u.text).ok_or_else(|| invalid("malformed uuid element"))?,
            None => super::Uuid::random(),
        };
        let title = root.find("title").map(|t| t.text.clone());
        if title.as_deref().is_some_and(|t| t.contains('\n')) {
            return Err(invalid("Domain title can't contain newlines"));
        }
        let memory_kib = memory(root.find("memory").ok_or_else(|| invalid("missing memory element"))?)?;
        let current_memory_kib = match root.find("currentMemory") {
            Some(m) => memory(m)?.min(memory_kib),
            None => memory_kib,
        };
        let vcpus = vcpus(root.find("vcpu"))?;
        let os = os(root.find("os").ok_or_else(|| invalid("missing <os> element"))?)?;

        let mut def = DomainDef {
            name,
            uuid,
            title,
            description: root.find("description").map(|d| d.text.clone()),
            memory_kib,
            current_memory_kib,
            vcpus,
            os,
            on_poweroff: lifecycle(root, "on_poweroff", LifecycleAction::Destroy)?,
            on_reboot: lifecycle(root, "on_reboot", LifecycleAction::Restart)?,
            on_crash: lifecycle(root, "on_crash", LifecycleAction::Destroy)?,
            disks: Vec::new(),
            interfaces: Vec::new(),
            serials: Vec::new(),
            consoles: Vec::new(),
            kept: Vec::new(),
            kept_devices: Vec::new(),
        };
        const MODELLED: &[&str] = &[
            "name",
            "uuid",
            "title",
            "description",
            "memory",
            "currentMemory",
            "vcpu",
            "os",
            "on_poweroff",
            "on_reboot",
            "on_crash",
            "devices",
        ];
        for child in &root.children {
            let n = child.name.as_str();
            if MODELLED.contains(&n) {
                continue;
            } else if UNSUPPORTED_TOP.contains(&n) {
                return Err(unsupported(format!("<{n}> is not supported by this daemon")));
            } else if HARMLESS_TOP.contains(&n) {
                match n {
                    "features" => platform::features(child)?,
                    "cpu" => {
                        platform::cpu(child)?;
                    }
                    // The guest's RTC, kept in canonical form (clock.rs).
                    "clock" => {
                        def.kept.push(super::clock::emit(&super::clock::parse(child)?));
                        continue;
                    }
                    "pm" => platform::pm(child)?,
                    // Host-side limits, kept in canonical form (tuning.rs).
                    "cputune" => {
                        def.kept.extend(tuning::emit_cputune(&tuning::cputune(child, def.vcpus)?));
                        continue;
                    }
                    "memtune" => {
                        def.kept.extend(tuning::emit_memtune(&tuning::memtune(child)?));
                        continue;
                    }
                    "blkiotune" => {
                        def.kept.extend(tuning::emit_blkiotune(&tuning::blkiotune(child)?));
                        continue;
                    }
                    "memoryBacking" => {
                        super::backing::parse(child)?;
                    }
                    _ => {}
                }
                def.kept.push(child.clone());
            } else {
                self.unknown(child, "domain")?;
            }
        }
        if let Some(devices) = root.find("devices") {
            self.devices(devices, &mut def)?;
        }
        // Canonical order, so that a definition and its own XML compare equal.
        def.kept.sort_by_key(|e| super::rank(super::KEPT_ORDER, &e.name));
        def.kept_devices.sort_by_key(|e| super::rank(super::KEPT_DEVICE_ORDER, &e.name));
        Ok(def)
    }

    fn devices(&mut self, devices: &Element, def: &mut DomainDef) -> Result<(), DomainError> {
        for d in &devices.children {
            match d.name.as_str() {
                "disk" => {
                    let mut unknown = |c: &Element| self.unknown(c, "disk");
                    def.disks.push(super::disk::parse(d, &mut unknown)?);
                }
                "interface" => def.interfaces.push(interface(d)?),
                "serial" => def.serials.push(chardev(d, "serial")?),
                "console" => def.consoles.push(chardev(d, "console")?),
                "emulator" => def.kept_devices.push(d.clone()),
                "controller" => {
                    platform::controller(d)?;
                    def.kept_devices.push(d.clone());
                }
                "memballoon" => {
                    super::balloon::check(d)?;
                    def.kept_devices.push(d.clone());
                }
                "video" | "input" | "audio" => def.kept_devices.push(harmless_device(d)?),
                n if UNSUPPORTED_DEVICES.contains(&n) => {
                    return Err(unsupported(format!("<{n}> devices are not supported by this daemon")));
                }
                _ => self.unknown(d, "devices")?,
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), DomainError> {
    if name.is_empty() {
        return Err(invalid("missing name information"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "domain name is {} bytes long, the most that can be stored is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(invalid(format!("name '{name}' is not a valid domain name")));
    }
    Ok(())
}

fn absolute(path: &str, what: &str) -> Result<(), DomainError> {
    if !path.starts_with('/') || path.len() > 4096 || path.contains('\0') {
        return Err(invalid(format!("{what} path '{path}' must be absolute")));
    }
    Ok(())
}

fn memory(e: &Element) -> Result<u64, DomainError> {
    let value: u64 = e.text.parse().map_err(|_| invalid(format!("invalid value '{}' for <{}>", e.text, e.name)))?;
    let kib = to_kib(value, e.get("unit")).ok_or_else(|| invalid(format!("invalid unit for <{}>", e.name)))?;
    if kib == 0 {
        return Err(invalid(format!("<{}> must be greater than zero", e.name)));
    }
    Ok(kib)
}

fn vcpus(e: Option<&Element>) -> Result<u32, DomainError> {
    let Some(e) = e else { return Ok(1) };
    let n: u32 = e.text.parse().map_err(|_| invalid(format!("invalid vcpu count '{}'", e.text)))?;
    if n == 0 || n > MAX_VCPUS {
        return Err(unsupported(format!("vcpu count {n} is out of range 1-{MAX_VCPUS}")));
    }
    if let Some(p) = e.get("placement").filter(|p| *p != "static") {
        return Err(unsupported(format!("vcpu placement '{p}' is not supported")));
    }
    if e.get("cpuset").is_some() {
        return Err(unsupported("vcpu cpuset is not supported"));
    }
    if e.get("current").is_some_and(|c| c != e.text) {
        return Err(unsupported("vcpu hotplug ('current' below the maximum) is not supported"));
    }
    Ok(n)
}

fn os(e: &Element) -> Result<OsDef, DomainError> {
    let ty = e.find("type").ok_or_else(|| invalid("an os <type> must be specified"))?;
    if ty.text != "hvm" {
        return Err(unsupported(format!("os type '{}' is not supported, only 'hvm'", ty.text)));
    }
    if let Some(m) = ty.get("machine") {
        platform::machine(m)?;
    }
    let arch = ty.get("arch").unwrap_or("x86_64");
    if arch != "x86_64" {
        return Err(unsupported(format!("architecture '{arch}' is not supported, only 'x86_64'")));
    }
    for n in ["loader", "nvram", "bios", "smbios", "acpi", "init", "firmware"] {
        if e.find(n).is_some() {
            return Err(unsupported(format!("<os><{n}> is not supported: use direct kernel boot")));
        }
    }
    if e.get("firmware").is_some() {
        return Err(unsupported("<os firmware=...> is not supported: use direct kernel boot"));
    }
    let kernel = e.find("kernel").map(|k| k.text.clone()).ok_or_else(|| {
        unsupported("booting without <kernel> (firmware boot) is not supported: use direct kernel boot")
    })?;
    absolute(&kernel, "kernel")?;
    let initrd = e.find("initrd").map(|i| i.text.clone()).filter(|i| !i.is_empty());
    if let Some(i) = &initrd {
        absolute(i, "initrd")?;
    }
    Ok(OsDef {
        arch: arch.to_owned(),
        machine: ty.get("machine").map(str::to_owned),
        kernel,
        initrd,
        cmdline: e.find("cmdline").map(|c| c.text.clone()),
        boot: e.children.iter().filter(|c| c.name == "boot").filter_map(|b| b.get("dev")).map(str::to_owned).collect(),
    })
}

fn lifecycle(root: &Element, name: &str, default: LifecycleAction) -> Result<LifecycleAction, DomainError> {
    match root.find(name).map(|e| e.text.as_str()) {
        None => Ok(default),
        Some("destroy") => Ok(LifecycleAction::Destroy),
        Some("restart") => Ok(LifecycleAction::Restart),
        Some("preserve") => Ok(LifecycleAction::Preserve),
        Some(a @ ("rename-restart" | "coredump-destroy" | "coredump-restart")) => {
            Err(unsupported(format!("<{name}> action '{a}' is not supported")))
        }
        Some(a) => Err(invalid(format!("unknown {name} action: {a}"))),
    }
}

/// One `<interface>` element (a domain's, or one given to attach-device).
pub fn interface(e: &Element) -> Result<Interface, DomainError> {
    let kind = e.get("type").unwrap_or("");
    let source = match kind {
        "network" => e.find("source").and_then(|s| s.get("network")).map(str::to_owned),
        "bridge" => e.find("source").and_then(|s| s.get("bridge")).map(str::to_owned),
        "ethernet" => None,
        t => {
            return Err(unsupported(format!("interface type '{t}' is not supported")));
        }
    };
    if matches!(kind, "network" | "bridge") && source.is_none() {
        return Err(invalid(format!("interface of type '{kind}' has no source")));
    }
    if let Some(model) = e.find("model").and_then(|m| m.get("type")).filter(|m| *m != "virtio") {
        return Err(unsupported(format!("interface model '{model}' is not supported, only 'virtio'")));
    }
    let mac = match e.find("mac").and_then(|m| m.get("address")) {
        Some(a) => parse_mac(a).ok_or_else(|| invalid(format!("unable to parse mac address '{a}'")))?,
        None => {
            let r = *uuid::Uuid::new_v4().as_bytes();
            [0x52, 0x54, 0x00, r[0], r[1], r[2]]
        }
    };
    let target = e.find("target").and_then(|t| t.get("dev")).map(str::to_owned);
    if let Some(t) = &target
        && (t.is_empty() || t.len() > 15 || t.contains(['/', ':', '%']) || t.chars().any(char::is_whitespace))
    {
        return Err(invalid(format!("invalid interface target dev '{t}'")));
    }
    let link_down = match e.find("link").and_then(|l| l.get("state")) {
        None | Some("up") => false,
        Some("down") => true,
        Some(s) => return Err(invalid(format!("unknown interface link state '{s}'"))),
    };
    let mtu = match e.find("mtu").and_then(|m| m.get("size")) {
        None => None,
        Some(m) => Some(
            m.parse::<u32>()
                .ok()
                .filter(|v| (68..=65535).contains(v))
                .ok_or_else(|| invalid(format!("malformed mtu size '{m}'")))?,
        ),
    };
    let pci_slot = e.find("address").map(super::pci::parse_address).transpose()?;
    Ok(Interface { kind: kind.to_owned(), source, mac, target, link_down, mtu, pci_slot })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> =
        s.split(':').map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2)).collect::<Option<_>>()?;
    let mac: [u8; 6] = parts.try_into().ok()?;
    // Multicast addresses cannot be a NIC's own.
    (mac[0] & 1 == 0).then_some(mac)
}

fn chardev(e: &Element, what: &str) -> Result<CharDev, DomainError> {
    let source = match e.get("type").unwrap_or("pty") {
        "pty" => CharSource::Pty,
        "null" => CharSource::Null,
        "file" => {
            let path = e
                .find("source")
                .and_then(|s| s.get("path"))
                .ok_or_else(|| invalid(format!("{what} of type 'file' has no source path")))?;
            absolute(path, what)?;
            CharSource::File(path.to_owned())
        }
        t => return Err(unsupported(format!("{what} type '{t}' is not supported"))),
    };
    let target = e.find("target");
    if let Some(t) = target.and_then(|t| t.get("type")) {
        let ok = if what == "console" { t == "serial" } else { t == "isa-serial" };
        if !ok {
            return Err(unsupported(format!("{what} target type '{t}' is not supported")));
        }
    }
    let port = match target.and_then(|t| t.get("port")) {
        Some(p) => p.parse().ok().filter(|p| *p < 4).ok_or_else(|| invalid(format!("invalid {what} port '{p}'")))?,
        None => 0,
    };
    Ok(CharDev { source, port })
}

fn harmless_device(e: &Element) -> Result<Element, DomainError> {
    let ok = match e.name.as_str() {
        "video" => e.find("model").and_then(|m| m.get("type")) == Some("none"),
        "input" => e.get("bus") == Some("ps2") && matches!(e.get("type"), Some("mouse" | "keyboard")),
        "audio" => e.get("type") == Some("none"),
        _ => false,
    };
    if ok {
        Ok(e.clone())
    } else {
        Err(unsupported(format!("this <{}> device is not supported by this daemon", e.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The domain libvirt's own tests defined (spec/observed), plus harmless extras.
    const GOOD: &str = r#"<domain type='kvm'>
  <name>base-x</name>
  <memory unit='MiB'>128</memory>
  <currentMemory unit='MiB'>128</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/var/tmp/guestkit/vmlinuz</kernel>
    <initrd>/var/tmp/guestkit/initrd.img</initrd>
    <cmdline>console=ttyS0 reboot=k panic=1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='host-passthrough'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <pm><suspend-to-mem enabled='no'/></pm>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/images/x.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'><source network='default'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <video><model type='none'/></video>
  </devices>
</domain>"#;

    fn reject(xml: &str) -> DomainError {
        parse(xml, false).unwrap_err()
    }

    fn with_devices(devices: &str) -> String {
        GOOD.replace("<devices>", &format!("<devices>{devices}"))
    }

    #[test]
    fn the_observed_domain_parses_and_round_trips() {
        let (def, dropped) = parse(GOOD, false).unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(def.name, "base-x");
        assert_eq!((def.memory_kib, def.current_memory_kib, def.vcpus), (131_072, 131_072, 1));
        assert_eq!(def.os.kernel, "/var/tmp/guestkit/vmlinuz");
        assert_eq!(def.disks[0].path, "/var/lib/images/x.img");
        assert_eq!(def.interfaces[0].mac[..3], [0x52, 0x54, 0x00]);
        assert!(def.has_feature("acpi"));
        let xml = def.to_xml();
        for kept in [
            "<cpu mode='host-passthrough'/>",
            "<clock offset='utc'/>",
            "<suspend-to-mem enabled='no'/>",
            "<controller type='usb' model='none'/>",
            "<memballoon model='none'/>",
            "<memory unit='KiB'>131072</memory>",
        ] {
            assert!(xml.contains(kept), "{kept} missing from\n{xml}");
        }
        let (again, _) = parse(&xml, true).unwrap();
        assert_eq!(again, def, "canonical XML must parse back to the same definition");
        assert_eq!(again.to_xml(), xml);
    }

    #[test]
    fn an_interfaces_link_state_mtu_and_target_are_kept() {
        let nic = "<interface type='bridge'><mac address='52:54:00:01:02:03'/><source bridge='br0'/>\
                   <target dev='tap-a'/><model type='virtio'/><link state='down'/><mtu size='1400'/></interface>";
        let (def, _) = parse(&with_devices(nic), false).unwrap();
        let i = def.interfaces.iter().find(|i| i.kind == "bridge").unwrap();
        assert!(i.link_down);
        assert_eq!((i.mtu, i.target.as_deref()), (Some(1400), Some("tap-a")));
        let xml = def.to_xml();
        assert!(xml.contains("<link state='down'/>") && xml.contains("<mtu size='1400'/>"), "{xml}");
        assert_eq!(parse(&xml, false).unwrap().0.interfaces, def.interfaces);
        let bad = with_devices("<interface type='ethernet'><target dev='a/b'/></interface>");
        assert!(matches!(reject(&bad), DomainError::Invalid(m) if m.contains("target dev")));
    }

    #[test]
    fn a_missing_uuid_is_generated_and_a_given_one_kept() {
        let (a, _) = parse(GOOD, false).unwrap();
        let (b, _) = parse(GOOD, false).unwrap();
        assert_ne!(a.uuid, b.uuid);
        let with =
            GOOD.replace("<name>base-x</name>", "<name>base-x</name><uuid>bcddda92-2bd4-42ea-b525-077265d27c4c</uuid>");
        let (c, _) = parse(&with, false).unwrap();
        assert_eq!(super::super::uuid_string(&c.uuid), "bcddda92-2bd4-42ea-b525-077265d27c4c");
    }

    #[test]
    fn devices_we_cannot_run_are_refused_naming_them() {
        for (xml, needle) in [
            (with_devices("<graphics type='vnc'/>"), "<graphics>"),
            (
                with_devices("<disk type='network'><source protocol='nbd'/><target dev='vdb'/></disk>"),
                "disk type 'network'",
            ),
            (
                with_devices(
                    "<disk type='file'><driver name='qemu' type='vmdk'/><source file='/x'/><target dev='vdb'/></disk>",
                ),
                "disk format 'vmdk'",
            ),
            (with_devices("<memballoon model='xen'/>"), "memballoon model 'xen'"),
            (
                with_devices("<interface type='network'><source network='d'/><model type='e1000'/></interface>"),
                "'e1000'",
            ),
            (with_devices("<interface type='user'/>"), "interface type 'user'"),
            (with_devices("<interface type='direct'><source dev='eth0'/></interface>"), "interface type 'direct'"),
            (GOOD.replace("<vcpu placement='static'>1</vcpu>", "<vcpu>1</vcpu><numatune/>"), "<numatune>"),
        ] {
            match reject(&xml) {
                DomainError::Unsupported(m) => assert!(m.contains(needle), "{needle}: {m}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_elements_are_dropped_or_refused_under_validate() {
        let xml = with_devices("<foo/>");
        let (def, dropped) = parse(&xml, false).unwrap();
        assert_eq!(dropped, ["<foo> in <devices>"]);
        assert!(!def.to_xml().contains("foo"));
        assert_eq!(
            parse(&xml, true).unwrap_err(),
            DomainError::Schema { element: "foo".into(), parent: "devices".into() }
        );
    }

    #[test]
    fn domain_types_follow_libvirt() {
        assert_eq!(
            reject(&GOOD.replace("type='kvm'", "type='bogus'")),
            DomainError::Unsupported("invalid domain type bogus".into())
        );
        assert!(
            matches!(reject(&GOOD.replace("type='kvm'", "type='xen'")), DomainError::Unsupported(m) if m.contains("'xen'"))
        );
    }

    #[test]
    fn names_that_could_escape_the_config_directory_are_refused() {
        for bad in ["../evil", "a/b", "..", "tab\there"] {
            assert!(matches!(reject(&GOOD.replace("base-x", bad)), DomainError::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn malformed_xml_reports_its_line() {
        let err = reject("<domain type='kvm'>\n<name>x</name>\n<memory>1\n");
        assert!(matches!(err, DomainError::Syntax { line, .. } if line >= 3), "{err:?}");
    }

    #[test]
    fn current_memory_is_clamped_to_memory() {
        let (def, _) =
            parse(&GOOD.replace("<currentMemory unit='MiB'>128", "<currentMemory unit='MiB'>512"), false).unwrap();
        assert_eq!(def.current_memory_kib, def.memory_kib);
    }

    /// What Debian's virt-install 4.1 sends for `--import --boot kernel=...
    /// --disk none --network none --graphics none --osinfo detect=off,require=off`.
    const VIRT_INSTALL: &str = r#"<domain type="kvm">
  <name>t</name>
  <uuid>e6c8726c-59f0-460a-8d34-3903d623fcd3</uuid>
  <memory>131072</memory>
  <currentMemory>131072</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>/tmp/guest/pvh.elf</kernel>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode="host-passthrough"/>
  <clock offset="utc">
    <timer name="rtc" tickpolicy="catchup"/>
    <timer name="pit" tickpolicy="delay"/>
    <timer name="hpet" present="no"/>
  </clock>
  <devices>
    <controller type="usb" model="ich9-ehci1"/>
    <controller type="usb" model="ich9-uhci1">
      <master startport="0"/>
    </controller>
    <controller type="usb" model="ich9-uhci2">
      <master startport="2"/>
    </controller>
    <controller type="usb" model="ich9-uhci3">
      <master startport="4"/>
    </controller>
    <console type="pty"/>
  </devices>
</domain>"#;

    #[test]
    fn virt_installs_default_domain_defines_and_writes_back_what_it_kept() {
        let (def, dropped) = parse(VIRT_INSTALL, true).unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        assert!(!def.invariant_tsc(), "a migratable host CPU hides the invariant TSC");
        let xml = def.to_xml();
        for kept in [
            "<type arch='x86_64' machine='pc'>hvm</type>",
            "<cpu mode='host-passthrough'/>",
            "<timer name='hpet' present='no'/>",
            "<controller type='usb' model='ich9-ehci1'/>",
            "<master startport='4'/>",
        ] {
            assert!(xml.contains(kept), "{kept} missing from\n{xml}");
        }
        assert_eq!(parse(&xml, true).unwrap().0, def);
        // The same with the q35 name, its root bus and an empty root port.
        let q35 = VIRT_INSTALL.replace("machine=\"pc\"", "machine=\"q35\"").replace(
            "<devices>",
            "<devices><controller type='pci' model='pcie-root'/><controller type='pci' model='pcie-root-port'/>",
        );
        assert!(parse(&q35, true).is_ok());
    }

    #[test]
    fn the_host_cpu_keeps_its_invariant_tsc_without_cpu_or_when_not_migratable() {
        assert!(parse(&GOOD.replace("<cpu mode='host-passthrough'/>", ""), false).unwrap().0.invariant_tsc());
        let off = GOOD.replace("<cpu mode='host-passthrough'/>", "<cpu mode='host-passthrough' migratable='off'/>");
        assert!(parse(&off, false).unwrap().0.invariant_tsc());
    }

    /// USB controllers are kept only because nothing can sit on them: every
    /// way of defining a USB device must stay refused.
    #[test]
    fn no_usb_device_can_be_defined() {
        for device in [
            "<input type='tablet' bus='usb'/>",
            "<input type='keyboard' bus='usb'/>",
            "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/><product id='0x2'/></source></hostdev>",
            "<redirdev bus='usb' type='spicevmc'/>",
            "<hub type='usb'/>",
            "<disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='usb'/></disk>",
            "<smartcard mode='host'/>",
            "<sound model='usb'/>",
            "<serial type='pty'><target type='usb-serial' port='0'/></serial>",
            "<controller type='ccid'/>",
        ] {
            assert!(matches!(reject(&with_devices(device)), DomainError::Unsupported(_)), "{device}");
        }
    }
}
