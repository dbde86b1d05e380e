//! A landlock domain with no filesystem access.

use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetStatus, Scope};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::SandboxError;

/// Handles every filesystem right the kernel knows and grants none; also
/// scopes signals and abstract Unix sockets to the domain where supported.
/// A kernel that cannot enforce the filesystem part is an error.
pub fn deny_filesystem() -> Result<(), SandboxError> {
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let abi = ABI::V6;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(SandboxError::Landlock("the kernel does not enforce landlock".into()));
    }
    Ok(())
}

/// Proves the domain holds: opening `/` must now fail with EACCES.
pub fn probe_denied() -> Result<(), SandboxError> {
    match open("/", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()) {
        Err(Errno::EACCES) => Ok(()),
        Ok(_) => Err(SandboxError::NotHolding("landlock: opening / succeeded".into())),
        Err(e) => Err(SandboxError::NotHolding(format!("landlock: opening / failed with {e}, not EACCES"))),
    }
}
