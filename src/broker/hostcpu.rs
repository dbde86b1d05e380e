//! The host CPU as libvirt's CPU XML describes it, and `virConnectCompareCPU`,
//! `virConnectBaselineCPU` and their hypervisor variants against it.
//!
//! The host CPU is its vendor and feature flags as the kernel decodes them
//! from CPUID (`/proc/cpuinfo`), the same source as the `<cpu>` of
//! `virConnectGetCapabilities`, so the host CPU XML that capabilities print
//! compares identical. Guests get this CPU as KVM offers it (host
//! passthrough), so the hypervisor variants compare against the same one.
//! The daemon has no table of named CPU models (`cpu-models` says so): a
//! `<model>` is a model it does not know, and gets libvirt's error for one.
//!
//! Feature names are compared in one spelling: the kernel writes `sse4_1`
//! and `pclmulqdq` where libvirt writes `sse4.1` and `pclmuldq`, so both are
//! accepted.

use std::collections::BTreeSet;

use crate::privsep::{CallError, CpuTarget};

/// Bounds on a client's CPU description, checked before it is trusted.
const MAX_XML_BYTES: usize = 1024 * 1024;
const MAX_NODES: u32 = 8192;
const MAX_FEATURES: usize = 1024;
/// `VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE`, `_VALIDATE_XML`.
const COMPARE_FAIL_INCOMPATIBLE: u32 = 1;
const COMPARE_VALIDATE_XML: u32 = 2;
/// `VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES`, `_MIGRATABLE`.
const BASELINE_EXPAND_FEATURES: u32 = 1;
const BASELINE_MIGRATABLE: u32 = 2;
/// `virCPUCompareResult`.
const INCOMPATIBLE: i64 = 0;
const IDENTICAL: i64 = 1;
const SUPERSET: i64 = 2;

/// Kernel spellings of features libvirt spells otherwise (beyond `_`, `-`
/// and `.`, which [`key`] ignores).
const ALIASES: [(&str, &str); 2] = [("pclmulqdq", "pclmuldq"), ("tscdeadlinetimer", "tscdeadline")];

/// The spelling-independent key of a feature name.
fn key(name: &str) -> String {
    let k: String = name.chars().filter(|c| !matches!(c, '_' | '-' | '.')).flat_map(char::to_lowercase).collect();
    ALIASES.iter().find(|(from, _)| *from == k).map_or(k, |(_, to)| (*to).to_owned())
}

/// A vendor as libvirt names it (`Intel`, `AMD`), from either spelling.
fn vendor_name(v: &str) -> &str {
    match v {
        "GenuineIntel" => "Intel",
        "AuthenticAMD" => "AMD",
        other => other,
    }
}

/// The host's CPU: vendor and features, in the kernel's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCpu {
    /// `Intel`, `AMD`, or the CPUID vendor string.
    pub vendor: Option<String>,
    /// Feature names, as `/proc/cpuinfo` lists them.
    pub features: Vec<String>,
}

impl HostCpu {
    /// The first CPU of `/proc/cpuinfo`.
    pub fn read() -> HostCpu {
        Self::from_cpuinfo(&super::host::read("/proc/cpuinfo").unwrap_or_default())
    }

    fn from_cpuinfo(text: &str) -> HostCpu {
        let field = |name: &str| {
            text.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim()))
        };
        HostCpu {
            vendor: field("vendor_id").map(|v| vendor_name(v).to_owned()),
            features: field("flags").unwrap_or_default().split_whitespace().take(512).map(str::to_owned).collect(),
        }
    }

    fn keys(&self) -> BTreeSet<String> {
        self.features.iter().map(|f| key(f)).collect()
    }
}

/// `virCPUFeaturePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Force,
    Require,
    Optional,
    Disable,
    Forbid,
}

/// A client's `<cpu>`, as far as comparing and baselining look at it.
#[derive(Debug, Default)]
struct CpuDef {
    arch: Option<String>,
    vendor: Option<String>,
    /// `host-model`, `host-passthrough` or `maximum`: "the host's CPU".
    hostlike: bool,
    features: Vec<(String, Policy)>,
}

/// Parses a client's CPU XML, bounded, with libvirt's errors.
fn parse(xml: &str) -> Result<CpuDef, CallError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(CallError::InvalidArg(format!(
            "CPU XML of {} bytes is larger than {MAX_XML_BYTES} bytes",
            xml.len()
        )));
    }
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| CallError::XmlSyntax { line: e.pos().row, detail: e.to_string() })?;
    let root = doc.root_element();
    if root.tag_name().name() != "cpu" {
        return Err(CallError::XmlInvalid("XML does not contain expected 'cpu' element".into()));
    }
    let mut def = CpuDef {
        hostlike: matches!(root.attribute("mode"), Some("host-model" | "host-passthrough" | "maximum")),
        ..CpuDef::default()
    };
    if let Some(mode) =
        root.attribute("mode").filter(|m| !matches!(*m, "custom" | "host-model" | "host-passthrough" | "maximum"))
    {
        return Err(CallError::XmlInvalid(format!("Invalid mode attribute '{mode}'")));
    }
    for child in root.children().filter(roxmltree::Node::is_element) {
        let text = || child.text().map(str::trim).unwrap_or_default().to_owned();
        match child.tag_name().name() {
            "arch" => def.arch = Some(text()),
            "vendor" => def.vendor = Some(text()),
            "model" if !text().is_empty() => {
                return Err(CallError::Internal(format!("Unknown CPU model {}", text())));
            }
            "feature" => {
                if def.features.len() >= MAX_FEATURES {
                    return Err(CallError::InvalidArg(format!("more than {MAX_FEATURES} CPU features")));
                }
                let name = child
                    .attribute("name")
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| CallError::XmlInvalid("Invalid CPU feature name".into()))?;
                let policy = match child.attribute("policy") {
                    // A host CPU's features (as in capabilities) have no policy.
                    None => Policy::Require,
                    Some("force") => Policy::Force,
                    Some("require") => Policy::Require,
                    Some("optional") => Policy::Optional,
                    Some("disable") => Policy::Disable,
                    Some("forbid") => Policy::Forbid,
                    Some(other) => {
                        return Err(CallError::XmlInvalid(format!("Invalid CPU feature policy '{other}'")));
                    }
                };
                def.features.push((name.to_owned(), policy));
            }
            _ => {}
        }
    }
    Ok(def)
}

/// Refuses what the hypervisor variants name that this daemon does not run.
fn check_target(on: &CpuTarget) -> Result<(), CallError> {
    let CpuTarget::Hypervisor { emulator, arch, machine: _, virttype } = on else { return Ok(()) };
    if let Some(e) = emulator {
        return Err(CallError::InvalidArg(format!(
            "this daemon runs guests without an emulator binary, so emulator '{e}' cannot be used"
        )));
    }
    if let Some(a) = arch.as_deref().filter(|a| *a != "x86_64") {
        return Err(CallError::ConfigUnsupported(format!("architecture '{a}' is not supported by this daemon")));
    }
    if let Some(v) = virttype.as_deref().filter(|v| *v != "kvm") {
        return Err(CallError::ConfigUnsupported(format!("virttype '{v}' is not supported by this daemon")));
    }
    Ok(())
}

/// Why `cpu` cannot run on `host`, if it cannot.
fn incompatibility(host: &HostCpu, cpu: &CpuDef) -> Option<String> {
    if let Some(arch) = cpu.arch.as_deref().filter(|a| *a != std::env::consts::ARCH) {
        return Some(format!("CPU arch {arch} does not match host arch"));
    }
    if let (Some(want), Some(have)) = (cpu.vendor.as_deref(), host.vendor.as_deref())
        && vendor_name(want) != have
    {
        return Some(format!("host CPU vendor does not match required CPU vendor {want}"));
    }
    let have = host.keys();
    let listed = |policy: Policy, present: bool| -> Vec<&str> {
        cpu.features
            .iter()
            .filter(|(n, p)| *p == policy && have.contains(&key(n)) == present)
            .map(|(n, _)| n.as_str())
            .collect()
    };
    let missing = listed(Policy::Require, false);
    if !missing.is_empty() {
        return Some(format!("Host CPU does not provide required features: {}", missing.join(", ")));
    }
    let forbidden = listed(Policy::Forbid, true);
    if !forbidden.is_empty() {
        return Some(format!("Host CPU provides forbidden features: {}", forbidden.join(", ")));
    }
    None
}

/// `virConnectCompareCPU` / `virConnectCompareHypervisorCPU`: 0
/// incompatible, 1 identical, 2 the host is a superset.
pub fn compare(on: &CpuTarget, xml: &str, flags: u32) -> Result<i64, CallError> {
    let function = match on {
        CpuTarget::Host => "virConnectCompareCPU",
        CpuTarget::Hypervisor { .. } => "virConnectCompareHypervisorCPU",
    };
    if flags & !(COMPARE_FAIL_INCOMPATIBLE | COMPARE_VALIDATE_XML) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: function.into() });
    }
    check_target(on)?;
    let cpu = parse(xml)?;
    compare_with(&HostCpu::read(), &cpu, flags)
}

fn compare_with(host: &HostCpu, cpu: &CpuDef, flags: u32) -> Result<i64, CallError> {
    if cpu.hostlike {
        return Ok(IDENTICAL);
    }
    if let Some(why) = incompatibility(host, cpu) {
        return match flags & COMPARE_FAIL_INCOMPATIBLE {
            0 => Ok(INCOMPATIBLE),
            _ => Err(CallError::CpuIncompatible(why)),
        };
    }
    let asked: BTreeSet<String> = cpu
        .features
        .iter()
        .filter(|(_, p)| matches!(p, Policy::Require | Policy::Force))
        .map(|(n, _)| key(n))
        .collect();
    Ok(if asked == host.keys() { IDENTICAL } else { SUPERSET })
}

/// `virConnectBaselineCPU` / `virConnectBaselineHypervisorCPU`: the CPU
/// every one of `xmls` (host CPU descriptions) can run, as libvirt's guest
/// CPU XML: their common vendor and the features all of them have.
pub fn baseline(on: &CpuTarget, xmls: &[String], flags: u32) -> Result<String, CallError> {
    let function = match on {
        CpuTarget::Host => "virConnectBaselineCPU",
        CpuTarget::Hypervisor { .. } => "virConnectBaselineHypervisorCPU",
    };
    if flags & !(BASELINE_EXPAND_FEATURES | BASELINE_MIGRATABLE) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: function.into() });
    }
    check_target(on)?;
    if xmls.is_empty() {
        return Err(CallError::InvalidArg("nonzero ncpus doesn't match with NULL xmlCPUs".into()));
    }
    if xmls.len() > crate::rpc::cpu::BASELINE_MAX {
        return Err(CallError::InvalidArg(format!("more than {} CPUs", crate::rpc::cpu::BASELINE_MAX)));
    }
    let cpus = xmls.iter().map(|x| parse(x)).collect::<Result<Vec<_>, _>>()?;
    // The hypervisor variant is limited further by what guests get here.
    let host = matches!(on, CpuTarget::Hypervisor { .. }).then(HostCpu::read);
    baseline_of(&cpus, host.as_ref())
}

fn baseline_of(cpus: &[CpuDef], host: Option<&HostCpu>) -> Result<String, CallError> {
    let mut vendor: Option<&str> = None;
    for cpu in cpus {
        if let Some(arch) = cpu.arch.as_deref().filter(|a| *a != "x86_64") {
            return Err(CallError::OperationFailed(format!("CPUs are incompatible: CPU arch {arch} does not match")));
        }
        if let Some(v) = cpu.vendor.as_deref().map(vendor_name) {
            match vendor {
                Some(seen) if seen != v => return Err(CallError::OperationFailed("CPU vendors do not match".into())),
                _ => vendor = Some(v),
            }
        }
    }
    let has = |cpu: &CpuDef, k: &str| {
        cpu.features.iter().any(|(n, p)| matches!(p, Policy::Require | Policy::Force) && key(n) == k)
    };
    let host_keys = host.map(HostCpu::keys);
    let mut common: Vec<&str> = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, policy) in &cpus[0].features {
        let k = key(name);
        if matches!(policy, Policy::Require | Policy::Force)
            && seen.insert(k.clone())
            && cpus[1..].iter().all(|c| has(c, &k))
            && host_keys.as_ref().is_none_or(|h| h.contains(&k))
        {
            common.push(name);
        }
    }
    common.sort_unstable();
    let mut x = String::from("<cpu mode='custom' match='exact'>\n");
    if let Some(v) = vendor {
        x.push_str(&format!("  <vendor>{}</vendor>\n", escape(v)));
    }
    for f in common {
        x.push_str(&format!("  <feature policy='require' name='{}'/>\n", escape(f)));
    }
    x.push_str("</cpu>\n");
    Ok(x)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostCpu {
        HostCpu::from_cpuinfo("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse4_1 pclmulqdq avx\n")
    }

    fn cmp(xml: &str, flags: u32) -> Result<i64, CallError> {
        compare_with(&host(), &parse(xml)?, flags)
    }

    #[test]
    fn the_host_cpu_compares_identical_in_either_spelling_and_a_subset_as_superset() {
        let own = "<cpu><arch>x86_64</arch><vendor>Intel</vendor><feature name='fpu'/><feature name='sse4_1'/>\
                   <feature name='pclmulqdq'/><feature name='avx'/></cpu>";
        assert_eq!(cmp(own, 0), Ok(IDENTICAL));
        let libvirts = "<cpu mode='custom'><feature policy='require' name='sse4.1'/><feature name='pclmuldq'/>\
                        <feature name='fpu'/><feature name='avx'/></cpu>";
        assert_eq!(cmp(libvirts, 0), Ok(IDENTICAL));
        assert_eq!(cmp("<cpu><feature name='avx'/><feature policy='disable' name='avx2'/></cpu>", 0), Ok(SUPERSET));
        assert_eq!(cmp("<cpu mode='host-passthrough'/>", 0), Ok(IDENTICAL));
    }

    #[test]
    fn missing_forbidden_and_foreign_cpus_are_incompatible_or_an_error_when_asked() {
        assert_eq!(cmp("<cpu><feature name='avx512f'/></cpu>", 0), Ok(INCOMPATIBLE));
        assert_eq!(
            cmp("<cpu><feature name='avx512f'/></cpu>", COMPARE_FAIL_INCOMPATIBLE),
            Err(CallError::CpuIncompatible("Host CPU does not provide required features: avx512f".into()))
        );
        assert_eq!(cmp("<cpu><feature policy='forbid' name='avx'/></cpu>", 0), Ok(INCOMPATIBLE));
        assert_eq!(cmp("<cpu><vendor>AMD</vendor></cpu>", 0), Ok(INCOMPATIBLE));
        assert_eq!(cmp("<cpu><arch>aarch64</arch></cpu>", 0), Ok(INCOMPATIBLE));
    }

    #[test]
    fn a_model_is_unknown_and_bad_xml_is_refused() {
        assert_eq!(
            cmp("<cpu><model>Haswell</model></cpu>", 0),
            Err(CallError::Internal("Unknown CPU model Haswell".into()))
        );
        assert!(matches!(cmp("<cpu>", 0), Err(CallError::XmlSyntax { .. })));
        assert!(matches!(cmp("<domain/>", 0), Err(CallError::XmlInvalid(_))));
        let many = format!("<cpu>{}</cpu>", "<feature name='x'/>".repeat(MAX_FEATURES + 1));
        assert!(matches!(cmp(&many, 0), Err(CallError::InvalidArg(_))));
        assert!(matches!(compare(&CpuTarget::Host, "<cpu/>", 4), Err(CallError::UnsupportedFlags { .. })));
    }

    #[test]
    fn a_baseline_keeps_the_common_features_and_vendor() {
        let a = parse("<cpu><vendor>Intel</vendor><feature name='fpu'/><feature name='avx'/></cpu>").unwrap();
        let b = parse("<cpu><vendor>Intel</vendor><feature name='avx'/><feature name='sse4.1'/></cpu>").unwrap();
        assert_eq!(
            baseline_of(&[a, b], None).unwrap(),
            "<cpu mode='custom' match='exact'>\n  <vendor>Intel</vendor>\n  <feature policy='require' name='avx'/>\n</cpu>\n"
        );
        let c = parse("<cpu><vendor>AMD</vendor></cpu>").unwrap();
        let d = parse("<cpu><vendor>Intel</vendor></cpu>").unwrap();
        assert!(matches!(baseline_of(&[c, d], None), Err(CallError::OperationFailed(_))));
        assert!(matches!(baseline(&CpuTarget::Host, &[], 0), Err(CallError::InvalidArg(_))));
    }
}
