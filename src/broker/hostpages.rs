//! Page sizes and free pages per NUMA cell (`virNodeGetFreePages`, and the
//! `<pages>` of the capabilities that `virsh freepages` reads first), from
//! sysfs as libvirt reads them: the base page from the node's free memory,
//! huge pages from `/sys/devices/system/node/nodeN/hugepages`.

use super::host::host_memory;
use crate::privsep::CallError;
use crate::rpc::remote::NODE_MAX_CELLS;

/// Most huge page sizes read from sysfs (x86-64 has two).
const MAX_SIZES: usize = 16;

/// The base page size, in KiB.
pub fn base_kib() -> u32 {
    let bytes = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096);
    (bytes / 1024).max(1) as u32
}

/// The huge page sizes (KiB) a `hugepages` directory lists, sorted.
fn huge_sizes(dir: &str) -> Vec<u32> {
    let mut sizes: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok())
        .take(MAX_SIZES)
        .collect();
    sizes.sort_unstable();
    sizes
}

/// Every page size the host offers, in KiB: the base page, then huge pages.
pub fn page_sizes() -> Vec<u32> {
    std::iter::once(base_kib()).chain(huge_sizes("/sys/kernel/mm/hugepages")).collect()
}

fn huge_figure(cell: u32, size: u32, file: &str) -> Result<u64, CallError> {
    let path = format!("/sys/devices/system/node/node{cell}/hugepages/hugepages-{size}kB/{file}");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| CallError::OperationFailed(format!("page size {size} is not available on node {cell}")))
}

/// Pages of each size cell `cell` holds (for the capabilities): base pages
/// are the cell's memory less what its huge pages take.
pub fn cell_pages(cell: u32, total_kib: u64) -> Vec<(u32, u64)> {
    let base = base_kib();
    let huge: Vec<(u32, u64)> = huge_sizes(&format!("/sys/devices/system/node/node{cell}/hugepages"))
        .into_iter()
        .map(|size| (size, huge_figure(cell, size, "nr_hugepages").unwrap_or(0)))
        .collect();
    let huge_kib: u64 = huge.iter().map(|&(size, n)| u64::from(size) * n).sum();
    std::iter::once((base, total_kib.saturating_sub(huge_kib) / u64::from(base))).chain(huge).collect()
}

/// `virNodeGetFreePages`: for each cell from `start` (at most `count` cells,
/// up to the last), the free pages of each size in `pages` (KiB).
pub fn free_pages(pages: &[u32], start: i32, count: u32, flags: u32) -> Result<Vec<u64>, CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuNodeGetFreePages".into() });
    }
    if pages.len() as u64 * u64::from(count) > NODE_MAX_CELLS as u64 {
        return Err(CallError::InvalidArg("the result won't fit into REMOTE_NODE_MAX_CELLS".into()));
    }
    let cells = host_memory()?;
    let last = cells.iter().map(|c| c.id).max().unwrap_or(0) as i64;
    if start < 0 || i64::from(start) > last {
        return Err(CallError::Internal(format!("start cell {start} out of range (0-{last})")));
    }
    let end = last.min(i64::from(start) + i64::from(count) - 1);
    let base = base_kib();
    let mut counts = Vec::new();
    for cell in i64::from(start)..=end {
        let cell = cell as u32;
        for &size in pages {
            counts.push(if size == base {
                let c = cells.iter().find(|c| c.id == cell).ok_or_else(|| {
                    CallError::OperationFailed(format!("page size {size} is not available on node {cell}"))
                })?;
                c.free_kib / u64::from(base)
            } else {
                huge_figure(cell, size, "free_hugepages")?
            });
        }
    }
    if counts.is_empty() {
        return Err(CallError::OperationFailed("no suitable info found".into()));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_pages_are_the_cells_free_memory_and_unknown_sizes_are_refused() {
        let cells = host_memory().unwrap();
        let base = base_kib();
        let got = free_pages(&[base], cells[0].id as i32, 1, 0).unwrap();
        let expect = cells[0].free_kib / u64::from(base);
        // Free memory moves while the test runs: within 1%.
        assert!(got[0].abs_diff(expect) <= expect / 100 + 1, "{got:?} vs {expect}");
        let e = free_pages(&[3], cells[0].id as i32, 1, 0).unwrap_err();
        assert_eq!(e, CallError::OperationFailed(format!("page size 3 is not available on node {}", cells[0].id)));
        assert!(matches!(free_pages(&[base], 4096, 1, 0), Err(CallError::Internal(_))));
        assert!(matches!(free_pages(&[base; 2], 0, 513, 0), Err(CallError::InvalidArg(_))));
        assert!(matches!(free_pages(&[base], 0, 1, 1), Err(CallError::UnsupportedFlags { .. })));
        assert_eq!(page_sizes()[0], base);
    }
}
