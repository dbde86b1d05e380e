//! Host statistics for monitoring: CPU time per host CPU (`/proc/stat`),
//! memory (the NUMA cells of [`super::host`], plus buffers and cache from
//! `/proc/meminfo`) and the CPU map (`/sys/devices/system/cpu`), with
//! libvirt's field names, units and argument rules.

use super::host::{self, read};
use super::procfs::tick_ns;
use crate::privsep::CallError;

/// Fields of `virNodeGetCPUStats` on Linux (`LINUX_NB_CPU_STATS`).
const CPU_FIELDS: i32 = 4;
/// Fields of `virNodeGetMemoryStats` for all cells, and for one.
const MEMORY_FIELDS_ALL: i32 = 4;
const MEMORY_FIELDS_CELL: i32 = 2;

/// Named figures and how many the call reports.
pub type NamedFigures = (Vec<(String, u64)>, i32);

fn no_flags(flags: u32, function: &str) -> Result<(), CallError> {
    match flags {
        0 => Ok(()),
        _ => Err(CallError::UnsupportedFlags { flags, function: function.into() }),
    }
}

/// `virNodeGetCPUStats`: kernel, user, idle and iowait time in ns, of every
/// CPU (`cpu` -1) or of one, from `/proc/stat` as libvirt reads it.
pub fn node_cpu_stats(cpu: i32, nparams: i32, flags: u32) -> Result<NamedFigures, CallError> {
    node_cpu_stats_from(&read("/proc/stat").unwrap_or_default(), tick_ns(), cpu, nparams, flags)
}

fn node_cpu_stats_from(
    proc_stat: &str,
    tick_ns: u64,
    cpu: i32,
    nparams: i32,
    flags: u32,
) -> Result<NamedFigures, CallError> {
    if nparams > crate::rpc::stats::NODE_CPU_STATS_MAX {
        return Err(CallError::Internal("nparams too large".into()));
    }
    if nparams < 0 {
        return Err(CallError::InvalidArg("nparams in virNodeGetCPUStats must be non-negative".into()));
    }
    if cpu < -1 {
        return Err(CallError::InvalidArg("cpuNum in virNodeGetCPUStats only accepts -1 as a negative value".into()));
    }
    no_flags(flags, "virHostCPUGetStats")?;
    if nparams == 0 {
        return Ok((Vec::new(), CPU_FIELDS));
    }
    if nparams != CPU_FIELDS {
        return Err(CallError::InvalidArg(format!("nparams in virHostCPUGetStatsLinux must be equal to {CPU_FIELDS}")));
    }
    let header = if cpu == -1 { "cpu".to_owned() } else { format!("cpu{cpu}") };
    let line = proc_stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(header.as_str()))
        .ok_or_else(|| CallError::InvalidArg("Invalid cpuNum in virHostCPUGetStatsLinux".into()))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(10).map(|n| n.parse().unwrap_or(0)).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let (user, nice, system, idle, iowait, irq, softirq) = (at(0), at(1), at(2), at(3), at(4), at(5), at(6));
    let ns = |ticks: u64| ticks.saturating_mul(tick_ns);
    Ok((
        vec![
            ("kernel".into(), ns(system + irq + softirq)),
            ("user".into(), ns(user + nice)),
            ("idle".into(), ns(idle)),
            ("iowait".into(), ns(iowait)),
        ],
        CPU_FIELDS,
    ))
}

/// `virNodeGetMemoryStats`, in KiB: total, free, buffers and cached for the
/// whole host (`cell` -1), total and free for one NUMA cell.
pub fn node_memory_stats(cell: i32, nparams: i32, flags: u32) -> Result<NamedFigures, CallError> {
    if nparams > crate::rpc::stats::NODE_MEMORY_STATS_MAX {
        return Err(CallError::Internal("nparams too large".into()));
    }
    if nparams < 0 {
        return Err(CallError::InvalidArg("nparams in virNodeGetMemoryStats must be non-negative".into()));
    }
    if cell < -1 {
        return Err(CallError::InvalidArg(
            "cellNum in virNodeGetMemoryStats only accepts -1 as a negative value".into(),
        ));
    }
    no_flags(flags, "virHostMemGetStats")?;
    let cells = host::host_memory()?;
    let max_node = cells.iter().map(|c| c.id).max().unwrap_or(0);
    if cell > max_node as i32 {
        return Err(CallError::InvalidArg(format!(
            "cellNum in virHostMemGetStats must be less than or equal to {max_node}"
        )));
    }
    let want = if cell == -1 { MEMORY_FIELDS_ALL } else { MEMORY_FIELDS_CELL };
    if nparams == 0 {
        return Ok((Vec::new(), want));
    }
    if nparams != want {
        return Err(CallError::InvalidArg(format!("nparams in virHostMemGetStatsLinux must be {want}")));
    }
    let figures = if cell == -1 {
        // Totals are the sums of the cells, as every other host memory figure.
        let meminfo = read("/proc/meminfo").unwrap_or_default();
        vec![
            ("total".into(), cells.iter().map(|c| c.total_kib).sum()),
            ("free".into(), cells.iter().map(|c| c.free_kib).sum()),
            ("buffers".into(), host::meminfo_kib(&meminfo, "Buffers").unwrap_or(0)),
            ("cached".into(), host::meminfo_kib(&meminfo, "Cached").unwrap_or(0)),
        ]
    } else {
        let c = cells.iter().find(|c| c.id as i32 == cell).ok_or_else(|| {
            CallError::InvalidArg(format!("cellNum in virHostMemGetStats must be less than or equal to {max_node}"))
        })?;
        vec![("total".into(), c.total_kib), ("free".into(), c.free_kib)]
    };
    Ok((figures, want))
}

/// CPUs present: one more than the highest in `/sys/devices/system/cpu/present`.
pub fn present_cpus() -> i32 {
    let listed = read("/sys/devices/system/cpu/present").map(|l| host::parse_cpulist(&l)).unwrap_or_default();
    let fallback = || nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_CONF).ok().flatten().unwrap_or(1);
    listed.iter().max().map_or_else(|| fallback() as i32, |m| *m as i32 + 1).max(1)
}

/// Online CPUs, as a bitmap of `present` bits.
pub fn online_cpus(present: i32) -> Vec<bool> {
    let mut bits = vec![false; present.max(0) as usize];
    let listed = read("/sys/devices/system/cpu/online").map(|l| host::parse_cpulist(&l));
    match listed {
        Some(cpus) => {
            for c in cpus {
                if let Some(b) = bits.get_mut(c as usize) {
                    *b = true;
                }
            }
        }
        None => bits.iter_mut().for_each(|b| *b = true),
    }
    bits
}

/// Packs CPU bits into libvirt's map: CPU n is bit n % 8 of byte n / 8,
/// `maplen` bytes (longer maps are cut, shorter ones padded with zeros).
pub fn pack(bits: &[bool], maplen: usize) -> Vec<u8> {
    let mut map = vec![0u8; maplen];
    for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        if let Some(byte) = map.get_mut(i / 8) {
            *byte |= 1 << (i % 8);
        }
    }
    map
}

/// `virNodeGetCPUMap`: CPUs present, and the online ones' map and count if asked.
pub fn cpu_map(want_map: bool, want_online: bool, flags: u32) -> Result<(Option<Vec<u8>>, u32, i32), CallError> {
    no_flags(flags, "virHostCPUGetMap")?;
    let present = present_cpus();
    if !want_map && !want_online {
        return Ok((None, 0, present));
    }
    let online = online_cpus(present);
    let count = online.iter().filter(|b| **b).count() as u32;
    let map = want_map.then(|| pack(&online, (present as usize).div_ceil(8)));
    Ok((map, if want_online { count } else { 0 }, present))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str =
        "cpu  100 5 40 1000 7 2 3 0 0 0\ncpu0 60 5 20 500 3 1 1 0 0 0\ncpu1 40 0 20 500 4 1 2 0 0 0\nintr 1\n";

    #[test]
    fn cpu_times_are_libvirts_sums_in_nanoseconds() {
        let (all, n) = node_cpu_stats_from(PROC_STAT, 10_000_000, -1, 4, 0).unwrap();
        assert_eq!(n, 4);
        let get = |f: &[(String, u64)], k: &str| f.iter().find(|(n, _)| n == k).unwrap().1;
        // kernel = system + irq + softirq; user = user + nice.
        assert_eq!(get(&all, "kernel"), 450_000_000);
        assert_eq!(get(&all, "user"), 1_050_000_000);
        assert_eq!(get(&all, "idle"), 10_000_000_000);
        assert_eq!(get(&all, "iowait"), 70_000_000);
        let (one, _) = node_cpu_stats_from(PROC_STAT, 10_000_000, 1, 4, 0).unwrap();
        assert_eq!(get(&one, "user"), 400_000_000);
        // "cpu1" must not match "cpu10", nor a missing CPU anything.
        assert!(node_cpu_stats_from(PROC_STAT, 1, 7, 4, 0).is_err());
        assert_eq!(node_cpu_stats_from(PROC_STAT, 1, -1, 0, 0).unwrap(), (Vec::new(), 4));
        assert!(node_cpu_stats_from(PROC_STAT, 1, -1, 3, 0).is_err());
        assert!(node_cpu_stats_from(PROC_STAT, 1, -2, 4, 0).is_err());
        assert!(matches!(node_cpu_stats_from(PROC_STAT, 1, -1, 17, 0), Err(CallError::Internal(_))));
        assert!(matches!(node_cpu_stats_from(PROC_STAT, 1, -1, 4, 1), Err(CallError::UnsupportedFlags { .. })));
    }

    #[test]
    fn cpu_maps_pack_bits_as_libvirt_does() {
        assert_eq!(pack(&[true, false, true, false, false, false, false, false, false, true], 2), [0b101, 0b10]);
        assert_eq!(pack(&[true; 3], 0), Vec::<u8>::new());
        let (map, online, present) = cpu_map(true, true, 0).unwrap();
        assert!(present >= 1 && online >= 1 && online as i32 <= present);
        assert_eq!(map.unwrap().len(), (present as usize).div_ceil(8));
        assert_eq!(cpu_map(false, false, 0).unwrap(), (None, 0, present));
    }

    #[test]
    fn memory_totals_are_the_cells_sums() {
        let (all, n) = node_memory_stats(-1, 4, 0).unwrap();
        assert_eq!(n, 4);
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["total", "free", "buffers", "cached"]);
        let cells = host::host_memory().unwrap();
        assert_eq!(all[0].1, cells.iter().map(|c| c.total_kib).sum::<u64>());
        let (cell, n) = node_memory_stats(cells[0].id as i32, 2, 0).unwrap();
        assert_eq!((n, cell[0].1), (2, cells[0].total_kib));
        assert_eq!(node_memory_stats(0, 0, 0).unwrap().1, 2);
        assert!(node_memory_stats(4096, 2, 0).is_err());
    }
}
