//! Capability sets: emptied in confined processes, trimmed in the broker.

use caps::{CapSet, Capability, CapsHashSet};

use super::SandboxError;

fn err(e: caps::errors::CapsError) -> SandboxError {
    SandboxError::Caps(e.to_string())
}

/// Empties the bounding set, so nothing executed later can regain a capability.
pub fn drop_bounding_set() -> Result<(), SandboxError> {
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap).map_err(err)? {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    Ok(())
}

/// Empties the ambient, inheritable, effective and permitted sets.
pub fn clear_all() -> Result<(), SandboxError> {
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(err)?;
    }
    Ok(())
}

/// Keeps only `keep` in every set, bounding included (the broker in system mode).
pub fn restrict_to(keep: &[Capability]) -> Result<(), SandboxError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).map_err(err)? {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(err)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err)?;
    Ok(())
}
