//! `<memoryBacking>`: what the guest's RAM is made of. Anonymous memory by
//! default; a memfd (`<source type='memfd'/>`, or `<access mode='shared'/>`)
//! or huge pages (`<hugepages/>`, 2 MiB or 1 GiB) the broker creates and
//! hands the helper as an fd. `<nosharepages/>` is what the helper always
//! does (it never offers guest memory to KSM). `<locked/>` locks guest RAM
//! in host memory (the broker raises the helper's `RLIMIT_MEMLOCK`, the
//! helper locks before the guest runs). The rest would change what the host
//! promises and are refused, naming them.

use super::DomainError;
use super::xml::Element;

/// The guest RAM's backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backing {
    /// Huge page size in KiB (2048 or 1048576), if huge pages are asked for.
    pub hugepage_kib: Option<u64>,
    /// A memfd rather than anonymous memory.
    pub memfd: bool,
    /// Shared with other mappings of the same memory (`access mode='shared'`).
    pub shared: bool,
    /// Locked in host RAM, never swapped (`<locked/>`).
    pub locked: bool,
}

impl Backing {
    /// Whether the broker must create the memory and pass it as an fd.
    pub fn needs_fd(&self) -> bool {
        self.hugepage_kib.is_some() || self.memfd || self.shared
    }
}

fn unsupported(msg: impl Into<String>) -> DomainError {
    DomainError::Unsupported(msg.into())
}

/// The host's default huge page size, KiB.
pub const DEFAULT_HUGEPAGE_KIB: u64 = 2048;

/// Parses `<memoryBacking>`.
pub fn parse(e: &Element) -> Result<Backing, DomainError> {
    let mut b = Backing::default();
    for c in &e.children {
        match c.name.as_str() {
            "hugepages" => {
                let mut size = DEFAULT_HUGEPAGE_KIB;
                for p in &c.children {
                    if p.name != "page" || p.get("nodeset").is_some() {
                        return Err(unsupported(
                            "<hugepages> with a nodeset is not supported: the guest has one NUMA node",
                        ));
                    }
                    let v: u64 = p
                        .get("size")
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| DomainError::Invalid("unable to parse size attribute of <page>".into()))?;
                    size = super::to_kib(v, p.get("unit"))
                        .ok_or_else(|| DomainError::Invalid("invalid unit of <page>".into()))?;
                }
                if size != 2048 && size != 1_048_576 {
                    return Err(unsupported(format!("huge page size {size} KiB is not supported: 2048 or 1048576")));
                }
                b.hugepage_kib = Some(size);
            }
            "source" => match c.get("type") {
                Some("memfd") => b.memfd = true,
                Some("anonymous") | None => {}
                Some(t) => return Err(unsupported(format!("<memoryBacking><source type='{t}'> is not supported"))),
            },
            "access" => match c.get("mode") {
                Some("shared") => b.shared = true,
                Some("private") | None => {}
                Some(m) => return Err(DomainError::Invalid(format!("unknown memoryBacking access mode '{m}'"))),
            },
            "nosharepages" => {}
            "locked" => b.locked = true,
            n => return Err(unsupported(format!("<memoryBacking><{n}> is not supported by this daemon"))),
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::xml;

    #[test]
    fn huge_pages_memfd_and_shared_access_are_read_and_the_rest_refused() {
        let b = parse(&xml::parse("<memoryBacking><hugepages/><nosharepages/></memoryBacking>").unwrap()).unwrap();
        assert_eq!(b, Backing { hugepage_kib: Some(2048), memfd: false, shared: false, locked: false });
        let locked = parse(&xml::parse("<memoryBacking><locked/></memoryBacking>").unwrap()).unwrap();
        assert!(locked.locked && !locked.needs_fd());
        let one_g = "<memoryBacking><hugepages><page size='1' unit='G'/></hugepages></memoryBacking>";
        assert_eq!(parse(&xml::parse(one_g).unwrap()).unwrap().hugepage_kib, Some(1_048_576));
        let memfd = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>";
        let b = parse(&xml::parse(memfd).unwrap()).unwrap();
        assert!(b.memfd && b.shared && b.needs_fd());
        assert!(!Backing::default().needs_fd());
        for bad in [
            "<memoryBacking><discard/></memoryBacking>",
            "<memoryBacking><hugepages><page size='64' unit='KiB'/></hugepages></memoryBacking>",
            "<memoryBacking><source type='file'/></memoryBacking>",
        ] {
            assert!(matches!(parse(&xml::parse(bad).unwrap()), Err(DomainError::Unsupported(_))), "{bad}");
        }
    }
}
