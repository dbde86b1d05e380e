//! Switching to an unprivileged uid and gid.

use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use super::SandboxError;

/// Drops supplementary groups, then sets real, effective and saved gid and uid.
/// The gid goes first: after the uid change we could no longer change it.
pub fn switch(uid: u32, gid: u32) -> Result<(), SandboxError> {
    let err = |source| SandboxError::Ids { uid, gid, source };
    let g = Gid::from_raw(gid);
    let u = Uid::from_raw(uid);
    if nix::unistd::geteuid().is_root() {
        setgroups(&[]).map_err(err)?;
    }
    setresgid(g, g, g).map_err(err)?;
    setresuid(u, u, u).map_err(err)?;
    Ok(())
}
