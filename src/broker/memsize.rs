//! `virsh setmaxmem` and `setmem` on the definition
//! (`virDomainSetMemoryFlags`, `virDomainSetMaxMemory`): `<memory>` and
//! `<currentMemory>` of a shut-off domain or `--config`. A running guest's
//! memory cannot change: its maximum is fixed at start, as in libvirt, and
//! without a balloon there is no way to hand memory back live.

use super::domains::{AFFECT_CONFIG, AFFECT_LIVE, Entry};
use crate::domain::DomainDef;
use crate::privsep::CallError;

/// `VIR_DOMAIN_MEM_MAXIMUM`.
pub const MEM_MAXIMUM: u32 = 4;

/// The definition `virDomainSetMemoryFlags(kib, flags)` makes of `e`'s.
pub fn set(e: &Entry, kib: u64, flags: u32) -> Result<DomainDef, CallError> {
    if flags & !(AFFECT_LIVE | AFFECT_CONFIG | MEM_MAXIMUM) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainSetMemoryFlags".into() });
    }
    let (live, _) = e.impact(flags & !MEM_MAXIMUM, false)?;
    let maximum = flags & MEM_MAXIMUM != 0;
    if kib == 0 {
        return Err(CallError::InvalidArg("memory size must be greater than zero".into()));
    }
    if live && maximum {
        return Err(CallError::OperationInvalid("cannot resize the maximum memory on an active domain".into()));
    }
    if live {
        return Err(CallError::OperationInvalid(
            "Unable to change memory of active domain without the balloon device and guest OS balloon driver".into(),
        ));
    }
    let mut def = e.def.clone();
    if maximum {
        // The helper's bound (helpers/src/layout.rs): 1 TiB.
        if kib > 1 << 30 {
            return Err(CallError::ConfigUnsupported(format!(
                "{kib} KiB is more memory than a guest can have (1 TiB)"
            )));
        }
        def.memory_kib = kib;
        def.current_memory_kib = def.current_memory_kib.min(kib);
    } else {
        if kib > def.memory_kib {
            return Err(CallError::InvalidArg("cannot set memory higher than max memory".into()));
        }
        def.current_memory_kib = kib;
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(running: bool) -> Entry {
        let xml = "<domain type='kvm'><name>m</name><memory unit='MiB'>256</memory>\
                   <os><type>hvm</type><kernel>/k</kernel></os></domain>";
        Entry {
            def: crate::domain::parse(xml, false).unwrap().0,
            persistent: true,
            autostart: false,
            id: running.then_some(1),
            pid: None,
            state: super::super::lifecycle::DomainState::from_libvirt(
                if running { 1 } else { 5 },
                if running { 1 } else { 0 },
            )
            .unwrap_or(super::super::lifecycle::DomainState::DEFINED),
        }
    }

    #[test]
    fn the_maximum_changes_in_the_definition_only() {
        let def = set(&entry(false), 131_072, MEM_MAXIMUM | AFFECT_CONFIG).unwrap();
        assert_eq!((def.memory_kib, def.current_memory_kib), (131_072, 131_072));
        let def = set(&entry(false), 65_536, AFFECT_CONFIG).unwrap();
        assert_eq!((def.memory_kib, def.current_memory_kib), (262_144, 65_536));
        assert!(matches!(set(&entry(false), 1 << 20, 0), Err(CallError::InvalidArg(_))));
        let on = entry(true);
        assert!(matches!(set(&on, 131_072, MEM_MAXIMUM | AFFECT_LIVE), Err(CallError::OperationInvalid(_))));
        assert!(matches!(set(&on, 131_072, AFFECT_LIVE), Err(CallError::OperationInvalid(_))));
        assert_eq!(set(&on, 131_072, MEM_MAXIMUM | AFFECT_CONFIG).unwrap().memory_kib, 131_072);
    }
}
