//! Facts about the host, read where the kernel publishes them: `/proc`,
//! `/sys` and `/dev/kvm`. Only the broker can read them; the frontend asks.

use std::fmt::Write as _;
use std::path::Path;

use crate::privsep::CallError;
use crate::rpc::remote::NodeInfoRet;

/// Reads a small file, trimmed; `None` if absent or unreadable.
pub(super) fn read(path: impl AsRef<Path>) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path).ok()?.take(1 << 20).read_to_string(&mut s).ok()?;
    Some(s.trim().to_owned())
}

/// `key : value` lines of `/proc/cpuinfo` for the first CPU listed.
fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_owned()))
}

/// A `/proc/meminfo`-style value in KiB.
pub(super) fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l
            .split_once(':')
            .filter(|(k, _)| k.trim_start_matches("Node ").ends_with(key) && k.split_whitespace().last() == Some(key))?
            .1;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `virNodeInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// CPU architecture ("x86_64").
    pub model: String,
    /// KiB.
    pub memory_kib: u64,
    /// Online CPUs.
    pub cpus: i32,
    /// MHz.
    pub mhz: i32,
    /// NUMA nodes.
    pub nodes: i32,
    /// Sockets per node.
    pub sockets: i32,
    /// Cores per socket.
    pub cores: i32,
    /// Threads per core.
    pub threads: i32,
}

impl NodeInfo {
    /// The reply shape: the model as 32 NUL-padded chars.
    pub fn to_wire(&self) -> NodeInfoRet {
        let mut model = [0i8; 32];
        for (dst, b) in model.iter_mut().zip(self.model.bytes().take(31)) {
            *dst = b as i8;
        }
        NodeInfoRet {
            model,
            memory: self.memory_kib,
            cpus: self.cpus,
            mhz: self.mhz,
            nodes: self.nodes,
            sockets: self.sockets,
            cores: self.cores,
            threads: self.threads,
        }
    }
}

/// The host's name.
pub fn hostname() -> Result<String, CallError> {
    nix::unistd::gethostname()
        .map_err(|e| CallError::Internal(format!("cannot get hostname: {e}")))
        .map(|h| h.to_string_lossy().into_owned())
}

/// NUMA nodes listed in sysfs (at least one).
pub(super) fn numa_nodes() -> Vec<u32> {
    let mut nodes: Vec<u32> = std::fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        .collect();
    nodes.sort_unstable();
    if nodes.is_empty() {
        nodes.push(0);
    }
    nodes
}

/// One NUMA cell's memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CellMemory {
    /// Its node number.
    pub id: u32,
    /// MemTotal.
    pub total_kib: u64,
    /// MemFree.
    pub free_kib: u64,
}

/// The host's memory as one view: every figure the daemon reports (node
/// info, free memory, capabilities' cells, free per cell) comes from here,
/// so the totals are the sums of the cells. Cells come from sysfs, as
/// libvirt's NUMA view does; `/proc/meminfo` stands in for a host without
/// per-node figures (it can disagree with them, e.g. under a memory-limited
/// sandbox or hypervisor, which is why it is not mixed in).
pub(super) fn host_memory() -> Result<Vec<CellMemory>, CallError> {
    let nodes = numa_nodes();
    let per_node: Option<Vec<CellMemory>> = nodes
        .iter()
        .map(|&id| {
            let m = read(format!("/sys/devices/system/node/node{id}/meminfo"))?;
            Some(CellMemory { id, total_kib: meminfo_kib(&m, "MemTotal")?, free_kib: meminfo_kib(&m, "MemFree")? })
        })
        .collect();
    if let Some(cells) = per_node {
        return Ok(cells);
    }
    let m = read("/proc/meminfo").ok_or_else(|| CallError::Internal("cannot read /proc/meminfo".into()))?;
    let (total_kib, free_kib) = (meminfo_kib(&m, "MemTotal").unwrap_or(0), meminfo_kib(&m, "MemFree").unwrap_or(0));
    // Without per-node figures, one cell holds everything.
    Ok(vec![CellMemory { id: nodes.first().copied().unwrap_or(0), total_kib, free_kib }])
}

/// `virNodeGetInfo`.
pub fn node_info() -> Result<NodeInfo, CallError> {
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let memory_kib = host_memory()?.iter().map(|c| c.total_kib).sum();
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN).ok().flatten().unwrap_or(1) as i32;
    let mhz = cpuinfo_field(&cpuinfo, "cpu MHz").and_then(|m| m.parse::<f64>().ok()).unwrap_or(0.0) as i32;
    let nodes = numa_nodes().len() as i32;
    let cores = cpuinfo_field(&cpuinfo, "cpu cores").and_then(|c| c.parse().ok()).unwrap_or(cpus.max(1));
    let siblings: i32 = cpuinfo_field(&cpuinfo, "siblings").and_then(|c| c.parse().ok()).unwrap_or(cores);
    let mut packages: Vec<&str> = cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "physical id").map(|(_, v)| v.trim()))
        .collect();
    packages.sort_unstable();
    packages.dedup();
    let sockets = (packages.len().max(1) as i32 / nodes).max(1);
    Ok(NodeInfo {
        model: nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default(),
        memory_kib,
        cpus,
        mhz,
        nodes,
        sockets,
        cores,
        threads: (siblings / cores.max(1)).max(1),
    })
}

/// `virNodeGetFreeMemory`, in bytes.
pub fn free_memory() -> Result<u64, CallError> {
    Ok(host_memory()?.iter().map(|c| c.free_kib).sum::<u64>() * 1024)
}

/// `virNodeGetCellsFreeMemory`, in bytes per cell.
pub fn cells_free_memory(start: i32, max: i32) -> Result<Vec<u64>, CallError> {
    let cells = host_memory()?;
    let last = cells.len() as i32 - 1;
    if start < 0 || start > last {
        return Err(CallError::InvalidArg(format!("start cell {start} out of range (0-{last})")));
    }
    if max <= 0 {
        return Err(CallError::InvalidArg("maxcells must be positive".into()));
    }
    let end = start.saturating_add(max - 1).min(last);
    Ok(cells.iter().skip(start as usize).take((end - start + 1) as usize).map(|c| c.free_kib * 1024).collect())
}

/// The most vCPUs KVM allows in one guest, capped at what our domains accept.
pub fn max_vcpus(kind: Option<&str>) -> Result<i32, CallError> {
    if let Some(k) = kind.filter(|k| !k.eq_ignore_ascii_case("kvm") && !k.eq_ignore_ascii_case("qemu")) {
        // The type is the client's string: quote no more than a type name's worth.
        return Err(CallError::InvalidArg(format!("unknown type '{}'", crate::rpc::error::clip(k, 64))));
    }
    let cap = crate::domain::MAX_VCPUS as i32;
    Ok(kvm_max_vcpus().map_or(cap, |n| n.min(cap)))
}

fn kvm_max_vcpus() -> Option<i32> {
    use std::os::fd::AsRawFd;
    const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
    const KVM_CAP_MAX_VCPUS: libc::c_int = 66;
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").ok()?;
    // SAFETY: KVM_CHECK_EXTENSION takes an integer argument, reads nothing
    // from our memory and returns an integer; the fd is open for the call.
    let n = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS) };
    (n > 0).then_some(n)
}

/// What a `virConnectGetDomainCapabilities` call asks about.
pub struct DomainCapabilitiesQuery<'a> {
    /// Emulator binary.
    pub emulator: Option<&'a str>,
    /// Architecture.
    pub arch: Option<&'a str>,
    /// Machine type.
    pub machine: Option<&'a str>,
    /// Virtualization type.
    pub virttype: Option<&'a str>,
}

/// `virConnectGetCPUModelNames`: the named CPU models a guest may ask for.
/// There are none: every guest gets the host CPU as KVM offers it
/// (`<cpu mode='host-passthrough'>`, or no `<cpu>`), and a named model is
/// refused at define time. Listing libvirt's x86 models would offer what the
/// daemon refuses, and an empty list means "any model is accepted" to
/// libvirt's clients (virsh prints just that), so the honest answer is an
/// error saying so, which clients treat as "no model list". Another
/// architecture is one the daemon knows nothing of, as libvirt says of a name
/// it cannot map.
pub fn cpu_model_names(arch: &str, flags: u32) -> Result<Vec<String>, CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuConnectGetCPUModelNames".into() });
    }
    if arch != "x86_64" {
        return Err(CallError::InvalidArg(format!("cannot find architecture {arch}")));
    }
    Err(CallError::OperationUnsupported(NO_CPU_MODELS.into()))
}

/// Why `virConnectGetCPUModelNames` lists nothing.
pub const NO_CPU_MODELS: &str =
    "named CPU models are not supported: every guest gets the host CPU (cpu mode 'host-passthrough')";

/// `virConnectGetDomainCapabilities`: what a domain may ask for, from the
/// domain model's own rules and the host's vCPU limit.
///
/// The daemon runs no emulator binary, so an `emulatorbin` is refused
/// without being looked at (libvirt would probe, and once ran, it).
pub fn domain_capabilities(q: &DomainCapabilitiesQuery, flags: u32) -> Result<String, CallError> {
    use crate::domain::DomainError;
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "virConnectGetDomainCapabilities".into() });
    }
    if let Some(e) = q.emulator {
        return Err(CallError::InvalidArg(format!(
            "this daemon runs guests without an emulator binary, so emulatorbin '{e}' cannot be used"
        )));
    }
    let max = u32::try_from(max_vcpus(None)?).unwrap_or(1);
    crate::domain::domain_capabilities(q.arch, q.machine, q.virttype, max).map_err(|e| match e {
        DomainError::Unsupported(m) => CallError::ConfigUnsupported(m),
        other => CallError::InvalidArg(other.to_string()),
    })
}

/// The host UUID: configured, else the SMBIOS one, else derived from machine-id.
pub fn host_uuid(configured: Option<&str>) -> String {
    if let Some(u) = configured {
        return u.to_owned();
    }
    let smbios = read("/sys/class/dmi/id/product_uuid").and_then(|u| crate::domain::parse_uuid(&u));
    let machine = read("/etc/machine-id").and_then(|m| crate::domain::parse_uuid(&m));
    let bytes = smbios
        .filter(|u| u.0.iter().any(|b| *b != 0 && *b != 0xff))
        .or(machine)
        .unwrap_or(crate::domain::Uuid([0x5a; 16]));
    crate::domain::uuid_string(&bytes)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}

/// `virConnectGetCapabilities`: the host CPU and memory, and the one guest type we run.
pub fn capabilities(host_uuid: &str) -> Result<String, CallError> {
    let info = node_info()?;
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let mut x = String::from("<capabilities>\n\n  <host>\n");
    let _ = writeln!(x, "    <uuid>{host_uuid}</uuid>\n    <cpu>\n      <arch>{}</arch>", escape(&info.model));
    if let Some(v) = cpuinfo_field(&cpuinfo, "vendor_id") {
        let vendor = match v.as_str() {
            "AuthenticAMD" => "AMD",
            "GenuineIntel" => "Intel",
            other => other,
        };
        let _ = writeln!(x, "      <vendor>{}</vendor>", escape(vendor));
    }
    let _ = writeln!(
        x,
        "      <topology sockets='{}' dies='1' cores='{}' threads='{}'/>",
        info.sockets, info.cores, info.threads
    );
    for flag in cpuinfo_field(&cpuinfo, "flags").unwrap_or_default().split_whitespace().take(256) {
        let _ = writeln!(x, "      <feature name='{}'/>", escape(flag));
    }
    for size in super::hostpages::page_sizes() {
        let _ = writeln!(x, "      <pages unit='KiB' size='{size}'/>");
    }
    x.push_str("    </cpu>\n    <power_management/>\n    <iommu support='no'/>\n    <topology>\n");
    let cells = host_memory()?;
    let _ = writeln!(x, "      <cells num='{}'>", cells.len());
    for cell in &cells {
        let (n, mem) = (cell.id, cell.total_kib);
        let cpus: Vec<u32> = read(format!("/sys/devices/system/node/node{n}/cpulist"))
            .map(|l| parse_cpulist(&l))
            .unwrap_or_else(|| (0..info.cpus as u32).collect());
        let _ = writeln!(x, "        <cell id='{n}'>\n          <memory unit='KiB'>{mem}</memory>");
        for (size, count) in super::hostpages::cell_pages(n, mem) {
            let _ = writeln!(x, "          <pages unit='KiB' size='{size}'>{count}</pages>");
        }
        let _ = writeln!(x, "          <cpus num='{}'>", cpus.len());
        for c in cpus {
            let _ = writeln!(x, "            <cpu id='{c}'/>");
        }
        x.push_str("          </cpus>\n        </cell>\n");
    }
    x.push_str("      </cells>\n    </topology>\n");
    x.push_str("    <secmodel>\n      <model>none</model>\n      <doi>0</doi>\n    </secmodel>\n  </host>\n\n");
    let max = max_vcpus(None)?;
    x.push_str("  <guest>\n    <os_type>hvm</os_type>\n    <arch name='x86_64'>\n      <wordsize>64</wordsize>\n");
    // Names of the one platform every guest gets (see domain::platform).
    for machine in crate::domain::platform::MACHINES {
        let _ = writeln!(x, "      <machine maxCpus='{max}'>{machine}</machine>");
    }
    // ACPI and the APICs are part of that platform: neither can be turned off.
    x.push_str(
        "      <domain type='kvm'/>\n    </arch>\n    <features>\n      <acpi default='on' toggle='no'/>\n      \
         <apic default='on' toggle='no'/>\n      <cpuselection/>\n    </features>\n  </guest>\n\n</capabilities>\n",
    );
    Ok(x)
}

/// The CPUs of a sysfs list ("0-3,6"); a range counts at most 4096.
pub(super) fn parse_cpulist(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend((a..=b).take(4096));
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

/// `virConnectGetSysinfo`: the host's SMBIOS data from sysfs.
pub fn sysinfo(flags: u32) -> Result<String, CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "virConnectGetSysinfo".into() });
    }
    let dmi = |f: &str| read(format!("/sys/class/dmi/id/{f}")).filter(|v| !v.is_empty());
    let section = |name: &str, fields: &[(&str, &str)]| {
        let entries: String = fields
            .iter()
            .filter_map(|(entry, file)| {
                dmi(file).map(|v| format!("    <entry name='{entry}'>{}</entry>\n", escape(&v)))
            })
            .collect();
        if entries.is_empty() { String::new() } else { format!("  <{name}>\n{entries}  </{name}>\n") }
    };
    let bios = section("bios", &[("vendor", "bios_vendor"), ("version", "bios_version"), ("date", "bios_date")]);
    let system = section(
        "system",
        &[
            ("manufacturer", "sys_vendor"),
            ("product", "product_name"),
            ("version", "product_version"),
            ("serial", "product_serial"),
            ("uuid", "product_uuid"),
            ("family", "product_family"),
        ],
    );
    if bios.is_empty() && system.is_empty() {
        return Err(CallError::Internal("Host SMBIOS information is not available".into()));
    }
    Ok(format!("<sysinfo type='smbios'>\n{bios}{system}</sysinfo>\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_info_reflects_this_host() {
        let info = node_info().unwrap();
        assert_eq!(info.model, std::env::consts::ARCH);
        assert!(info.cpus >= 1 && info.memory_kib > 0);
        assert_eq!(
            info.cpus as usize,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(info.cpus as usize)
        );
    }

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(parse_cpulist("0-2,5"), vec![0, 1, 2, 5]);
    }

    #[test]
    fn meminfo_values_parse_with_and_without_node_prefix() {
        assert_eq!(meminfo_kib("MemTotal:  100 kB\nMemFree: 5 kB", "MemFree"), Some(5));
        assert_eq!(meminfo_kib("Node 0 MemFree:   7 kB", "MemFree"), Some(7));
    }

    #[test]
    fn unknown_vcpu_types_are_refused_without_echoing_all_of_them() {
        assert!(max_vcpus(Some("KVM")).is_ok_and(|n| n >= 1));
        let long = "x".repeat(65_520);
        let e = max_vcpus(Some(&long)).unwrap_err().to_string();
        assert!(e.starts_with("unknown type 'xxx") && e.len() < 100, "{} bytes", e.len());
    }

    #[test]
    fn capabilities_offer_kvm_hvm_guests() {
        let caps = capabilities("00000000-1111-2222-3333-444444444444").unwrap();
        assert!(roxmltree::Document::parse(&caps).is_ok(), "{caps}");
        assert!(caps.contains("<os_type>hvm</os_type>") && caps.contains("<domain type='kvm'/>"));
    }
}
