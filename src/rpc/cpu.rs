//! Wire forms of the CPU comparison and baseline calls
//! (`remote_connect_compare_cpu_args` and kin).

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// `REMOTE_CPU_BASELINE_MAX`: most CPU descriptions one baseline call takes.
pub const BASELINE_MAX: usize = 256;

/// `remote_nonnull_string xmlCPUs<REMOTE_CPU_BASELINE_MAX>`: decoding stops
/// at the bound, before a longer list is collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CpuXmls(pub Vec<String>);

impl<'de> Deserialize<'de> for CpuXmls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bounded;
        impl<'de> Visitor<'de> for Bounded {
            type Value = CpuXmls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "at most {BASELINE_MAX} CPU descriptions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuXmls, A::Error> {
                if seq.size_hint().is_some_and(|n| n > BASELINE_MAX) {
                    return Err(de::Error::custom("too many CPU descriptions"));
                }
                let mut out = Vec::new();
                while let Some(xml) = seq.next_element::<String>()? {
                    if out.len() == BASELINE_MAX {
                        return Err(de::Error::custom("too many CPU descriptions"));
                    }
                    out.push(xml);
                }
                Ok(CpuXmls(out))
            }
        }
        d.deserialize_seq(Bounded)
    }
}

/// `remote_connect_compare_cpu_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareCpuArgs {
    /// The CPU's XML.
    pub xml: String,
    /// `virConnectCompareCPUFlags`.
    pub flags: u32,
}

/// `remote_connect_baseline_cpu_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineCpuArgs {
    /// The CPUs' XML.
    pub xml_cpus: CpuXmls,
    /// `virConnectBaselineCPUFlags`.
    pub flags: u32,
}

/// `remote_connect_compare_hypervisor_cpu_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareHypervisorCpuArgs {
    /// Emulator binary.
    pub emulator: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Machine type.
    pub machine: Option<String>,
    /// Virtualization type.
    pub virttype: Option<String>,
    /// The CPU's XML.
    pub xml_cpu: String,
    /// `virConnectCompareCPUFlags`.
    pub flags: u32,
}

/// `remote_connect_baseline_hypervisor_cpu_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineHypervisorCpuArgs {
    /// Emulator binary.
    pub emulator: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Machine type.
    pub machine: Option<String>,
    /// Virtualization type.
    pub virttype: Option<String>,
    /// The CPUs' XML.
    pub xml_cpus: CpuXmls,
    /// `virConnectBaselineCPUFlags`.
    pub flags: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::xdr;

    #[test]
    fn a_baseline_of_more_cpus_than_libvirt_allows_does_not_decode() {
        let args = |n: usize| BaselineCpuArgs { xml_cpus: CpuXmls(vec![String::new(); n]), flags: 0 };
        let ok = xdr::to_bytes(&args(BASELINE_MAX)).unwrap();
        assert_eq!(xdr::from_bytes::<BaselineCpuArgs>(&ok).unwrap().xml_cpus.0.len(), BASELINE_MAX);
        let over = xdr::to_bytes(&args(BASELINE_MAX + 1)).unwrap();
        assert!(xdr::from_bytes::<BaselineCpuArgs>(&over).is_err());
    }
}
