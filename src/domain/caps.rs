//! `virConnectGetDomainCapabilities`: what a domain may ask for here, in
//! libvirt's domain capabilities format.
//!
//! Tools read it to choose their defaults (virt-install picks its CPU mode,
//! firmware, graphics and TPM from it), so it says what the helper provides
//! and no more: the host CPU (`host-passthrough`, migratable or not), direct
//! kernel boot only (no firmware), virtio-blk disks (a modern-only virtio
//! 1.x device, so no `virtio-transitional` model), and no device class the
//! helper cannot give a guest yet. It follows the same rules as `parse` and `platform`.

use super::DomainError;
use super::parse::KNOWN_TYPES;
use super::platform;

/// The domain capabilities for `arch`, `machine` and `virttype` (each
/// defaulted when absent, as libvirt does), with `max_vcpus` the most vCPUs
/// a guest may have on this host.
pub fn domain_capabilities(
    arch: Option<&str>,
    machine: Option<&str>,
    virttype: Option<&str>,
    max_vcpus: u32,
) -> Result<String, DomainError> {
    match virttype {
        None | Some("kvm") => {}
        Some(t) if KNOWN_TYPES.contains(&t) => {
            return Err(DomainError::Unsupported(format!(
                "virt type '{t}' is not supported by this daemon, only 'kvm'"
            )));
        }
        Some(t) => return Err(DomainError::Invalid(format!("unknown virttype: {t}"))),
    }
    match arch {
        None | Some("x86_64") => {}
        Some(a) => {
            return Err(DomainError::Unsupported(format!("architecture '{a}' is not supported, only 'x86_64'")));
        }
    }
    let machine = machine.unwrap_or(platform::MACHINES[0]);
    platform::machine(machine)?;
    // The machine name passed the check above: letters, digits, '.', '-', '_'.
    Ok(format!(
        "<domainCapabilities>
  <domain>kvm</domain>
  <machine>{machine}</machine>
  <arch>x86_64</arch>
  <vcpu max='{max_vcpus}'/>
  <iothreads supported='no'/>
  <os supported='yes'>
    <enum name='firmware'/>
    <loader supported='no'/>
  </os>
  <cpu>
    <mode name='host-passthrough' supported='yes'>
      <enum name='hostPassthroughMigratable'>
        <value>on</value>
        <value>off</value>
      </enum>
    </mode>
    <mode name='maximum' supported='no'/>
    <mode name='host-model' supported='no'/>
    <mode name='custom' supported='no'/>
  </cpu>
  <memoryBacking supported='no'/>
  <devices>
    <disk supported='yes'>
      <enum name='diskDevice'>
        <value>disk</value>
      </enum>
      <enum name='bus'>
        <value>virtio</value>
      </enum>
      <enum name='model'>
        <value>virtio</value>
        <value>virtio-non-transitional</value>
      </enum>
    </disk>
    <graphics supported='no'/>
    <video supported='yes'>
      <enum name='modelType'>
        <value>none</value>
      </enum>
    </video>
    <hostdev supported='no'/>
    <rng supported='no'/>
    <filesystem supported='no'/>
    <tpm supported='no'/>
    <redirdev supported='no'/>
    <channel supported='no'/>
    <crypto supported='no'/>
  </devices>
  <features>
    <gic supported='no'/>
    <vmcoreinfo supported='no'/>
    <genid supported='no'/>
    <backingStoreInput supported='no'/>
    <backup supported='no'/>
    <sev supported='no'/>
    <sgx supported='no'/>
  </features>
</domainCapabilities>
"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_describe_the_pc_platform_with_the_host_cpu_and_no_firmware() {
        let caps = domain_capabilities(None, None, None, 255).unwrap();
        let doc = roxmltree::Document::parse(&caps).unwrap();
        let text = |tag: &str| doc.descendants().find(|n| n.has_tag_name(tag)).and_then(|n| n.text());
        assert_eq!((text("domain"), text("machine"), text("arch")), (Some("kvm"), Some("pc"), Some("x86_64")));
        let passthrough = doc.descendants().find(|n| n.attribute("name") == Some("host-passthrough")).unwrap();
        assert_eq!(passthrough.attribute("supported"), Some("yes"));
        let migratable: Vec<_> = passthrough.descendants().filter_map(|n| n.text()).collect();
        assert!(migratable.contains(&"on") && migratable.contains(&"off"), "{caps}");
        for other in ["host-model", "custom", "maximum"] {
            let m = doc.descendants().find(|n| n.attribute("name") == Some(other)).unwrap();
            assert_eq!(m.attribute("supported"), Some("no"), "{other}");
        }
        let firmware = doc.descendants().find(|n| n.attribute("name") == Some("firmware")).unwrap();
        assert_eq!(firmware.children().filter(|n| n.is_element()).count(), 0, "no firmware to choose");
        for absent in ["graphics", "rng", "tpm", "hostdev", "loader"] {
            let n = doc.descendants().find(|n| n.has_tag_name(absent)).unwrap();
            assert_eq!(n.attribute("supported"), Some("no"), "{absent}");
        }
        assert!(caps.contains("<vcpu max='255'/>"));
    }

    #[test]
    fn disks_are_virtio_blk_devices_only() {
        let caps = domain_capabilities(None, None, None, 8).unwrap();
        let doc = roxmltree::Document::parse(&caps).unwrap();
        let disk = doc.descendants().find(|n| n.has_tag_name("disk")).unwrap();
        assert_eq!(disk.attribute("supported"), Some("yes"));
        let values = |name: &str| -> Vec<&str> {
            let e = disk.children().find(|n| n.attribute("name") == Some(name)).unwrap();
            e.children().filter(|n| n.has_tag_name("value")).filter_map(|n| n.text()).collect()
        };
        assert_eq!(values("diskDevice"), ["disk"]);
        assert_eq!(values("bus"), ["virtio"]);
        assert_eq!(values("model"), ["virtio", "virtio-non-transitional"]);
        // Still no network device: the helper has no virtio-net.
        assert!(!doc.descendants().any(|n| n.has_tag_name("interface")), "{caps}");
    }

    #[test]
    fn the_machine_asked_for_is_echoed_and_others_refused() {
        let caps = domain_capabilities(Some("x86_64"), Some("pc-q35-8.0"), Some("kvm"), 8).unwrap();
        assert!(caps.contains("<machine>pc-q35-8.0</machine>"), "{caps}");
        assert!(matches!(
            domain_capabilities(None, Some("microvm"), None, 8),
            Err(DomainError::Unsupported(m)) if m.contains("'microvm'")
        ));
        assert!(matches!(
            domain_capabilities(Some("aarch64"), None, None, 8),
            Err(DomainError::Unsupported(m)) if m.contains("'aarch64'")
        ));
        assert!(matches!(
            domain_capabilities(None, None, Some("qemu"), 8),
            Err(DomainError::Unsupported(m)) if m.contains("'qemu'")
        ));
        assert_eq!(
            domain_capabilities(None, None, Some("warp"), 8),
            Err(DomainError::Invalid("unknown virttype: warp".into()))
        );
    }
}
