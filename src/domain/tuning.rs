//! `<cputune>`, `<memtune>` and `<blkiotune>`: what a guest may take from
//! the host, as the cgroup controllers and the scheduler enforce it.
//!
//! Pure code: each element is parsed into a typed value (bounded: at most
//! [`MAX_CPUS`] host CPUs in a set, one pin per vCPU, [`MAX_BLKIO_DEVICES`]
//! throttled devices) with libvirt's ranges and words, and written back
//! canonical (values in KiB, libvirt's child order), so a definition and its
//! own XML compare equal. The broker applies them (`broker/cgroup/`).

use super::DomainError;
use super::to_kib;
use super::xml::Element;

/// Highest host CPU number a CPU set may name, plus one.
pub const MAX_CPUS: u32 = 4096;
/// Most `<device>` entries of `<blkiotune>`.
pub const MAX_BLKIO_DEVICES: usize = 64;
/// libvirt's `VIR_DOMAIN_MEMORY_PARAM_UNLIMITED`, in KiB.
pub const UNLIMITED_KIB: u64 = 9_007_199_254_740_991;

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError::Invalid(msg.into())
}

/// A set of host CPUs (`0-3,^2,6`), sorted, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuSet(pub Vec<u32>);

impl CpuSet {
    /// Parses libvirt's CPU list syntax, bounded by [`MAX_CPUS`].
    pub fn parse(text: &str) -> Result<CpuSet, DomainError> {
        let bad = || invalid(format!("Failed to parse bitmap '{text}'"));
        let mut on = vec![false; MAX_CPUS as usize];
        let mut any = false;
        for part in text.split(',').map(str::trim) {
            let (neg, part) = match part.strip_prefix('^') {
                Some(p) => (true, p),
                None => (false, part),
            };
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) if !neg => {
                    (a.trim().parse::<u32>().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?)
                }
                _ => {
                    let n = part.parse::<u32>().map_err(|_| bad())?;
                    (n, n)
                }
            };
            if lo > hi || hi >= MAX_CPUS {
                return Err(bad());
            }
            for c in lo..=hi {
                on[c as usize] = !neg;
            }
            any |= !neg;
        }
        let cpus: Vec<u32> = (0..MAX_CPUS).filter(|c| on[*c as usize]).collect();
        if !any || cpus.is_empty() {
            return Err(bad());
        }
        Ok(CpuSet(cpus))
    }

    /// From a bitmap of host CPUs (`virDomainPinVcpu`'s cpumap).
    pub fn from_map(map: &[u8]) -> CpuSet {
        let bits = map.len().min(MAX_CPUS as usize / 8) * 8;
        CpuSet((0..bits as u32).filter(|c| map[*c as usize / 8] & (1 << (c % 8)) != 0).collect())
    }

    /// The set as a bitmap of `len` bytes.
    pub fn to_map(&self, len: usize) -> Vec<u8> {
        let mut map = vec![0u8; len];
        for c in &self.0 {
            if let Some(b) = map.get_mut(*c as usize / 8) {
                *b |= 1 << (c % 8);
            }
        }
        map
    }

    /// libvirt's canonical text: ranges joined by commas (`0-2,5`).
    pub fn format(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
            i += 1;
        }
        out.join(",")
    }
}

/// A real-time scheduler for vCPU threads (`<vcpusched>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuSched {
    /// The vCPUs it applies to.
    pub vcpus: CpuSet,
    /// `fifo`, `rr`, `batch`, `idle` or `other`.
    pub scheduler: String,
    /// Priority for `fifo` and `rr` (1-99).
    pub priority: Option<u32>,
}

/// `<cputune>`: CPU weight and bandwidth for the whole guest, its vCPU
/// threads and its emulator threads, and where they run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuTune {
    /// `<shares>`: relative weight.
    pub shares: Option<u64>,
    /// `<period>`: each vCPU's bandwidth period, µs.
    pub period: Option<u64>,
    /// `<quota>`: each vCPU's quota per period, µs (-1: none).
    pub quota: Option<i64>,
    /// `<global_period>`.
    pub global_period: Option<u64>,
    /// `<global_quota>`.
    pub global_quota: Option<i64>,
    /// `<emulator_period>`.
    pub emulator_period: Option<u64>,
    /// `<emulator_quota>`.
    pub emulator_quota: Option<i64>,
    /// `<vcpupin>`: (vCPU, host CPUs), one per vCPU, sorted by vCPU.
    pub vcpupin: Vec<(u32, CpuSet)>,
    /// `<emulatorpin>`.
    pub emulatorpin: Option<CpuSet>,
    /// `<vcpusched>`.
    pub vcpusched: Vec<VcpuSched>,
}

/// `<memtune>`: memory controller limits, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemTune {
    /// `<hard_limit>`.
    pub hard_limit: Option<u64>,
    /// `<soft_limit>`.
    pub soft_limit: Option<u64>,
    /// `<swap_hard_limit>`: memory plus swap.
    pub swap_hard_limit: Option<u64>,
}

/// A block device's weight and throttles (`<blkiotune><device>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlkioDevice {
    /// The device node (absolute path).
    pub path: String,
    /// `<weight>`.
    pub weight: Option<u64>,
    /// `<read_bytes_sec>`.
    pub read_bytes_sec: Option<u64>,
    /// `<write_bytes_sec>`.
    pub write_bytes_sec: Option<u64>,
    /// `<read_iops_sec>`.
    pub read_iops_sec: Option<u64>,
    /// `<write_iops_sec>`.
    pub write_iops_sec: Option<u64>,
}

/// `<blkiotune>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlkioTune {
    /// `<weight>` (100-1000).
    pub weight: Option<u64>,
    /// Per-device settings.
    pub devices: Vec<BlkioDevice>,
}

/// The three tuning elements of one domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuning {
    /// `<cputune>`.
    pub cpu: CpuTune,
    /// `<memtune>`.
    pub memory: MemTune,
    /// `<blkiotune>`.
    pub blkio: BlkioTune,
}

fn num<T: std::str::FromStr>(e: &Element) -> Result<T, DomainError> {
    e.text.trim().parse().map_err(|_| invalid(format!("invalid value '{}' for <{}>", e.text, e.name)))
}

fn in_range(e: &Element, v: u64, lo: u64, hi: u64) -> Result<u64, DomainError> {
    if v < lo || v > hi {
        return Err(invalid(format!("Value of cputune '{}' must be in range [{lo}, {hi}]", e.name)));
    }
    Ok(v)
}

/// libvirt's ranges for a CFS period and quota.
pub fn check_period(v: u64) -> bool {
    v == 0 || (1000..=1_000_000).contains(&v)
}

/// A CFS quota: -1 (none), 0 (unset) or 1000 µs up to the kernel's maximum.
pub fn check_quota(v: i64) -> bool {
    v == -1 || v == 0 || (1000..=17_592_186_044_415).contains(&v)
}

/// Parses `<cputune>` for a guest of `vcpus` vCPUs.
pub fn cputune(e: &Element, vcpus: u32) -> Result<CpuTune, DomainError> {
    let mut t = CpuTune::default();
    for c in &e.children {
        let period = |c: &Element| -> Result<Option<u64>, DomainError> {
            let v: u64 = num(c)?;
            if !check_period(v) {
                return Err(invalid(format!("Value of cputune '{}' must be in range [1000, 1000000]", c.name)));
            }
            Ok(Some(v))
        };
        let quota = |c: &Element| -> Result<Option<i64>, DomainError> {
            let v: i64 = num(c)?;
            if !check_quota(v) {
                return Err(invalid(format!(
                    "Value of cputune '{}' must be in range [1000, 17592186044415] or less than 0",
                    c.name
                )));
            }
            Ok(Some(v))
        };
        match c.name.as_str() {
            "shares" => t.shares = Some(in_range(c, num(c)?, 2, 262_144)?),
            "period" => t.period = period(c)?,
            "quota" => t.quota = quota(c)?,
            "global_period" => t.global_period = period(c)?,
            "global_quota" => t.global_quota = quota(c)?,
            "emulator_period" => t.emulator_period = period(c)?,
            "emulator_quota" => t.emulator_quota = quota(c)?,
            "vcpupin" => {
                let v: u32 =
                    c.get("vcpu").and_then(|v| v.parse().ok()).ok_or_else(|| invalid("missing vcpu id in vcpupin"))?;
                if v >= vcpus {
                    return Err(invalid(format!("vcpupin: vCPU {v} does not exist (the guest has {vcpus})")));
                }
                if t.vcpupin.iter().any(|(n, _)| *n == v) {
                    return Err(invalid("duplicate vcpupin for same vcpu"));
                }
                let set = CpuSet::parse(c.get("cpuset").ok_or_else(|| invalid("missing cpuset for vcpupin"))?)?;
                t.vcpupin.push((v, set));
            }
            "emulatorpin" => {
                if t.emulatorpin.is_some() {
                    return Err(invalid("only one emulatorpin is supported"));
                }
                let set = c.get("cpuset").ok_or_else(|| invalid("missing cpuset for emulatorpin"))?;
                t.emulatorpin = Some(CpuSet::parse(set)?);
            }
            "vcpusched" => t.vcpusched.push(vcpusched(c, vcpus)?),
            n => {
                return Err(DomainError::Unsupported(format!("<cputune><{n}> is not supported by this daemon")));
            }
        }
    }
    t.vcpupin.sort_by_key(|(v, _)| *v);
    Ok(t)
}

fn vcpusched(c: &Element, vcpus: u32) -> Result<VcpuSched, DomainError> {
    let set = match c.get("vcpus") {
        Some(s) => CpuSet::parse(s)?,
        None => CpuSet((0..vcpus).collect()),
    };
    if set.0.iter().any(|v| *v >= vcpus) {
        return Err(invalid("vcpusched names a vCPU the guest does not have"));
    }
    let scheduler = c.get("scheduler").ok_or_else(|| invalid("Missing scheduler type"))?.to_owned();
    let priority = match scheduler.as_str() {
        "fifo" | "rr" => {
            let p: u32 =
                c.get("priority").and_then(|p| p.parse().ok()).ok_or_else(|| invalid("Missing scheduler priority"))?;
            if !(1..=99).contains(&p) {
                return Err(invalid(format!("Scheduler priority {p} out of range [1, 99]")));
            }
            Some(p)
        }
        "batch" | "idle" | "other" => None,
        s => return Err(invalid(format!("Invalid value for attribute 'scheduler' in element 'vcpusched': '{s}'"))),
    };
    Ok(VcpuSched { vcpus: set, scheduler, priority })
}

fn kib(c: &Element) -> Result<u64, DomainError> {
    let v: u64 = num(c)?;
    let k = to_kib(v, c.get("unit")).ok_or_else(|| invalid(format!("invalid unit for <{}>", c.name)))?;
    Ok(k.min(UNLIMITED_KIB))
}

/// Parses `<memtune>`.
pub fn memtune(e: &Element) -> Result<MemTune, DomainError> {
    let mut t = MemTune::default();
    for c in &e.children {
        match c.name.as_str() {
            "hard_limit" => t.hard_limit = Some(kib(c)?),
            "soft_limit" => t.soft_limit = Some(kib(c)?),
            "swap_hard_limit" => t.swap_hard_limit = Some(kib(c)?),
            n => {
                return Err(DomainError::Unsupported(format!("<memtune><{n}> is not supported by this daemon")));
            }
        }
    }
    check_memtune(&t)?;
    Ok(t)
}

/// libvirt's rule: the swap limit is not below the hard limit.
pub fn check_memtune(t: &MemTune) -> Result<(), DomainError> {
    if let (Some(h), Some(s)) = (t.hard_limit, t.swap_hard_limit)
        && s < h
    {
        return Err(invalid("memory hard_limit tunable value must be lower than or equal to swap_hard_limit"));
    }
    Ok(())
}

/// Parses `<blkiotune>`.
pub fn blkiotune(e: &Element) -> Result<BlkioTune, DomainError> {
    let mut t = BlkioTune::default();
    let weight = |c: &Element| -> Result<u64, DomainError> {
        let w: u64 = num(c)?;
        if !(100..=1000).contains(&w) {
            return Err(invalid(format!("blkio weight {w} must be in range [100, 1000]")));
        }
        Ok(w)
    };
    for c in &e.children {
        match c.name.as_str() {
            "weight" => t.weight = Some(weight(c)?),
            "device" => {
                if t.devices.len() >= MAX_BLKIO_DEVICES {
                    return Err(invalid(format!("<blkiotune> has more than {MAX_BLKIO_DEVICES} devices")));
                }
                let mut d = BlkioDevice::default();
                for f in &c.children {
                    match f.name.as_str() {
                        "path" => d.path = f.text.trim().to_owned(),
                        "weight" => d.weight = Some(weight(f)?),
                        "read_bytes_sec" => d.read_bytes_sec = Some(num(f)?),
                        "write_bytes_sec" => d.write_bytes_sec = Some(num(f)?),
                        "read_iops_sec" => d.read_iops_sec = Some(num(f)?),
                        "write_iops_sec" => d.write_iops_sec = Some(num(f)?),
                        n => return Err(invalid(format!("unknown element <{n}> in <blkiotune><device>"))),
                    }
                }
                if !d.path.starts_with('/') || d.path.len() > 4096 {
                    return Err(invalid("missing or relative device path in blkiotune"));
                }
                if t.devices.iter().any(|o| o.path == d.path) {
                    return Err(invalid(format!("duplicate blkio device path '{}'", d.path)));
                }
                t.devices.push(d);
            }
            n => {
                return Err(DomainError::Unsupported(format!("<blkiotune><{n}> is not supported by this daemon")));
            }
        }
    }
    Ok(t)
}

fn opt(e: Element, name: &str, v: Option<impl ToString>) -> Element {
    match v {
        Some(v) => e.child(Element::new(name).with_text(v.to_string())),
        None => e,
    }
}

/// `<cputune>` in libvirt's order, or `None` when it says nothing.
pub fn emit_cputune(t: &CpuTune) -> Option<Element> {
    if *t == CpuTune::default() {
        return None;
    }
    let mut e = opt(Element::new("cputune"), "shares", t.shares);
    e = opt(e, "period", t.period);
    e = opt(e, "quota", t.quota);
    e = opt(e, "global_period", t.global_period);
    e = opt(e, "global_quota", t.global_quota);
    e = opt(e, "emulator_period", t.emulator_period);
    e = opt(e, "emulator_quota", t.emulator_quota);
    for (v, set) in &t.vcpupin {
        e = e.child(Element::new("vcpupin").attr("vcpu", v.to_string()).attr("cpuset", set.format()));
    }
    if let Some(set) = &t.emulatorpin {
        e = e.child(Element::new("emulatorpin").attr("cpuset", set.format()));
    }
    for s in &t.vcpusched {
        let mut c = Element::new("vcpusched").attr("vcpus", s.vcpus.format()).attr("scheduler", &s.scheduler);
        if let Some(p) = s.priority {
            c = c.attr("priority", p.to_string());
        }
        e = e.child(c);
    }
    Some(e)
}

/// `<memtune>` with values in KiB, or `None` when it says nothing.
pub fn emit_memtune(t: &MemTune) -> Option<Element> {
    if *t == MemTune::default() {
        return None;
    }
    let mut e = Element::new("memtune");
    for (name, v) in
        [("hard_limit", t.hard_limit), ("soft_limit", t.soft_limit), ("swap_hard_limit", t.swap_hard_limit)]
    {
        if let Some(v) = v {
            e = e.child(Element::new(name).attr("unit", "KiB").with_text(v.to_string()));
        }
    }
    Some(e)
}

/// `<blkiotune>`, or `None` when it says nothing.
pub fn emit_blkiotune(t: &BlkioTune) -> Option<Element> {
    if *t == BlkioTune::default() {
        return None;
    }
    let mut e = opt(Element::new("blkiotune"), "weight", t.weight);
    for d in &t.devices {
        let mut c = Element::new("device").child(Element::new("path").with_text(&d.path));
        c = opt(c, "weight", d.weight);
        c = opt(c, "read_iops_sec", d.read_iops_sec);
        c = opt(c, "write_iops_sec", d.write_iops_sec);
        c = opt(c, "read_bytes_sec", d.read_bytes_sec);
        c = opt(c, "write_bytes_sec", d.write_bytes_sec);
        e = e.child(c);
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::xml;

    fn el(text: &str) -> Element {
        xml::parse(text).unwrap()
    }

    #[test]
    fn cpu_sets_parse_ranges_and_exclusions_and_format_back() {
        assert_eq!(CpuSet::parse("0-3,^2,6").unwrap().0, vec![0, 1, 3, 6]);
        assert_eq!(CpuSet::parse("0-3,^2,6").unwrap().format(), "0-1,3,6");
        assert_eq!(CpuSet::parse("1").unwrap().to_map(1), vec![2]);
        assert_eq!(CpuSet::from_map(&[0b101]).0, vec![0, 2]);
        for bad in ["", "a", "3-1", "^1", "4096", "0-99999"] {
            assert!(CpuSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cputune_takes_libvirts_ranges_and_writes_back_canonical() {
        let e = el("<cputune><vcpupin vcpu='1' cpuset='1'/><shares>2048</shares><vcpupin vcpu='0' cpuset='0-1'/>\
                    <period>100000</period><quota>-1</quota><emulatorpin cpuset='1'/>\
                    <vcpusched vcpus='0' scheduler='fifo' priority='10'/></cputune>");
        let t = cputune(&e, 2).unwrap();
        assert_eq!((t.shares, t.period, t.quota), (Some(2048), Some(100_000), Some(-1)));
        assert_eq!(t.vcpupin[0], (0, CpuSet(vec![0, 1])));
        let back = emit_cputune(&t).unwrap();
        assert_eq!(back.children[0].name, "shares");
        assert_eq!(cputune(&back, 2).unwrap(), t);
        for bad in [
            "<cputune><shares>1</shares></cputune>",
            "<cputune><period>10</period></cputune>",
            "<cputune><quota>5</quota></cputune>",
            "<cputune><vcpupin vcpu='2' cpuset='0'/></cputune>",
            "<cputune><vcpupin vcpu='0' cpuset='0'/><vcpupin vcpu='0' cpuset='1'/></cputune>",
            "<cputune><vcpusched vcpus='0' scheduler='fifo' priority='0'/></cputune>",
        ] {
            assert!(matches!(cputune(&el(bad), 2), Err(DomainError::Invalid(_))), "{bad}");
        }
        assert!(matches!(cputune(&el("<cputune><iothreadpin/></cputune>"), 2), Err(DomainError::Unsupported(_))));
    }

    #[test]
    fn memtune_is_kept_in_kib_and_swap_may_not_be_below_the_hard_limit() {
        let t = memtune(&el("<memtune><hard_limit unit='MiB'>64</hard_limit><soft_limit>1024</soft_limit></memtune>"))
            .unwrap();
        assert_eq!((t.hard_limit, t.soft_limit, t.swap_hard_limit), (Some(65_536), Some(1024), None));
        assert_eq!(memtune(&emit_memtune(&t).unwrap()).unwrap(), t);
        let bad = "<memtune><hard_limit>2048</hard_limit><swap_hard_limit>1024</swap_hard_limit></memtune>";
        assert!(matches!(memtune(&el(bad)), Err(DomainError::Invalid(_))));
    }

    #[test]
    fn blkiotune_weights_are_bounded_and_devices_named_once() {
        let t = blkiotune(&el("<blkiotune><weight>500</weight><device><path>/dev/sda</path>\
                               <read_bytes_sec>1000</read_bytes_sec></device></blkiotune>"))
        .unwrap();
        assert_eq!((t.weight, t.devices[0].read_bytes_sec), (Some(500), Some(1000)));
        assert_eq!(blkiotune(&emit_blkiotune(&t).unwrap()).unwrap(), t);
        assert!(blkiotune(&el("<blkiotune><weight>5</weight></blkiotune>")).is_err());
        let twice = "<blkiotune><device><path>/dev/a</path></device><device><path>/dev/a</path></device></blkiotune>";
        assert!(blkiotune(&el(twice)).is_err());
    }
}
