//! What the benchmarks do with guests on either daemon: virsh with a bound,
//! and the test guest's domain XML for either (`type='kvm'` or `'qemu'`).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

/// Runs virsh against `socket`, killing it after `within`; stdout if it exits 0.
pub fn virsh(socket: &Path, args: &[&str], within: Duration) -> Result<String, String> {
    let what = args.join(" ");
    match super::common::client_tool_within("virsh", &super::common::uri(socket), args, within) {
        None => Err(format!("virsh {what} did not finish within {} s", within.as_secs())),
        Some((0, out, _)) => Ok(out),
        Some((_, _, err)) => Err(format!("virsh {what}: {}", err.trim().replace('\n', " / "))),
    }
}

/// The test domain of `type='{kind}'`, booting `kernel`, its serial console in `log`.
pub fn guest_xml(kind: &str, name: &str, i: usize, kernel: &Path, log: &Path) -> String {
    super::common::domain_xml(name, &format!("00000000-0000-4000-8000-{i:012}"))
        .replace("<domain type='kvm'>", &format!("<domain type='{kind}'>"))
        .replace("/var/tmp/guestkit/vmlinuz", &kernel.to_string_lossy())
        .replace(
            "<serial type='pty'><target port='0'/></serial>",
            &format!("<serial type='file'><source path='{}'/><target port='0'/></serial>", log.display()),
        )
}
