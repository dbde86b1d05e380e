//! Each test tree's own cgroup partition: the daemon puts its guests'
//! cgroups under `libvirtd-test-XXXX` below the test process's own cgroup
//! in every hierarchy (`cgroup_partition`, relative), never elsewhere, and
//! the tree removes that subtree when it goes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the hierarchies are mounted.
pub const MOUNT: &str = "/sys/fs/cgroup";
/// The v1 controllers the daemon uses.
pub const V1: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "blkio", "pids"];

/// The partition name of the tree at `dir`.
pub fn partition(dir: &Path) -> String {
    let base = dir.file_name().and_then(|n| n.to_str()).unwrap_or("tree");
    let clean: String = base.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    format!("libvirtd-test-{}", clean.trim_start_matches("libvirtd-test"))
}

/// This process's cgroup in v1 controller `name` (`None` for v2's line).
fn own(name: Option<&str>) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let hit = match name {
                None => ctrls.is_empty(),
                Some(n) => ctrls.split(',').any(|c| c == n),
            };
            hit.then(|| path.to_owned())
        })
        .unwrap_or_else(|| "/".into())
}

/// Whether the host has cgroup v1 (this project's build machines) rather than v2.
pub fn is_v1() -> bool {
    !Path::new(MOUNT).join("cgroup.controllers").exists()
}

/// The partition's directory in v1 controller `ctrl` (or the v2 tree).
pub fn dir(tree_dir: &Path, ctrl: &str) -> PathBuf {
    let p = partition(tree_dir);
    if is_v1() {
        Path::new(MOUNT).join(ctrl).join(own(Some(ctrl)).trim_start_matches('/')).join(p)
    } else {
        Path::new(MOUNT).join(own(None).trim_start_matches('/')).join(p)
    }
}

/// Removes `dir` and every group below it, deepest first, retrying while
/// exiting tasks still hold them (at most 5 s).
fn remove_tree(dir: &Path) {
    let end = Instant::now() + Duration::from_secs(5);
    while dir.exists() && Instant::now() < end {
        remove_once(dir);
        if dir.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn remove_once(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_once(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes the tree's partition from every hierarchy.
pub fn cleanup(tree_dir: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if is_v1() {
        for c in V1 {
            remove_tree(&dir(tree_dir, c));
        }
    } else {
        remove_tree(&dir(tree_dir, "unified"));
    }
}
