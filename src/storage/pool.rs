//! Storage pool XML (`<pool type='dir'>`): parsed bounded, written as
//! libvirt 9.0 writes a directory pool.

use std::path::{Component, Path, PathBuf};

use super::{MAX_PATH_BYTES, check_name, parse_xml};
use crate::domain::xml::Element;
use crate::privsep::storage::StorageError;

/// libvirt's pool types (`virStoragePoolType`), in their order: the index is the number.
pub const POOL_TYPES: [&str; 14] = [
    "dir",
    "fs",
    "netfs",
    "logical",
    "disk",
    "iscsi",
    "iscsi-direct",
    "scsi",
    "mpath",
    "rbd",
    "sheepdog",
    "gluster",
    "zfs",
    "vstorage",
];

/// Permissions of a pool's directory or a volume's file, as XML gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    /// Mode bits.
    pub mode: Option<u32>,
    /// Owner uid.
    pub owner: Option<u32>,
    /// Group gid.
    pub group: Option<u32>,
}

impl Perms {
    /// Reads `<permissions>` (mode octal, owner and group numeric; -1 is unset).
    pub fn parse(e: Option<&Element>) -> Result<Perms, StorageError> {
        let Some(e) = e else { return Ok(Perms::default()) };
        let mode = match e.find("mode").map(|m| m.text.as_str()) {
            Some(t) => Some(
                u32::from_str_radix(t, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| StorageError::Xml(format!("malformed octal mode '{t}'")))?,
            ),
            None => None,
        };
        let id = |name: &str| -> Result<Option<u32>, StorageError> {
            match e.find(name).map(|m| m.text.as_str()) {
                None | Some("-1") => Ok(None),
                Some(t) => t.parse().map(Some).map_err(|_| StorageError::Xml(format!("malformed {name} element"))),
            }
        };
        Ok(Perms { mode, owner: id("owner")?, group: id("group")? })
    }

    /// `<permissions>` with the values given (libvirt writes what it knows).
    pub fn element(&self) -> Option<Element> {
        if self.mode.is_none() && self.owner.is_none() && self.group.is_none() {
            return None;
        }
        let mut e = Element::new("permissions");
        if let Some(m) = self.mode {
            e = e.child(Element::new("mode").with_text(format!("{m:04o}")));
        }
        if let Some(o) = self.owner {
            e = e.child(Element::new("owner").with_text(o.to_string()));
        }
        if let Some(g) = self.group {
            e = e.child(Element::new("group").with_text(g.to_string()));
        }
        Some(e)
    }
}

/// A directory pool's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: [u8; 16],
    /// The directory, absolute and normalised.
    pub target: PathBuf,
    /// What the directory should have (pool-build applies them).
    pub perms: Perms,
}

/// A running pool's sizes, for `dumpxml` and `pool-info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolSizes {
    /// Bytes in the file system.
    pub capacity: u64,
    /// Bytes used.
    pub allocation: u64,
    /// Bytes free for unprivileged use.
    pub available: u64,
}

/// An absolute path with `.` and repeated or trailing slashes removed; `..` refused.
pub fn normalise(path: &str) -> Result<PathBuf, StorageError> {
    if path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(StorageError::Xml("target path is too long or not a path".into()));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(StorageError::Xml(format!("target path '{path}' is not absolute")));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(StorageError::Xml(format!("target path '{path}' may not contain '..'")));
            }
        }
    }
    Ok(out)
}

impl PoolDef {
    /// Parses pool XML; a type other than `dir` is refused naming it, as a
    /// libvirt without that backend refuses it.
    pub fn parse(text: &str) -> Result<PoolDef, StorageError> {
        let root = parse_xml(text, "pool")?;
        if root.name != "pool" {
            return Err(StorageError::Xml(format!("unexpected root element <{}>, expecting <pool>", root.name)));
        }
        let kind = root.get("type").ok_or_else(|| StorageError::Xml("storage pool missing type attribute".into()))?;
        match POOL_TYPES.iter().position(|t| *t == kind) {
            Some(0) => {}
            Some(n) => return Err(StorageError::Internal(format!("missing backend for pool type {n} ({kind})"))),
            None => return Err(StorageError::Xml(format!("unknown storage pool type {kind}"))),
        }
        let name = root.find("name").map(|n| n.text.clone()).unwrap_or_default();
        check_name(&name, "pool")?;
        let uuid = match root.find("uuid").map(|u| u.text.as_str()) {
            Some(t) => *uuid::Uuid::parse_str(t)
                .map_err(|_| StorageError::Xml(format!("malformed uuid element '{t}'")))?
                .as_bytes(),
            None => *uuid::Uuid::new_v4().as_bytes(),
        };
        let target = root.find("target");
        let path = target
            .and_then(|t| t.find("path"))
            .map(|p| p.text.as_str())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| StorageError::Xml("missing storage pool target path".into()))?;
        let perms = Perms::parse(target.and_then(|t| t.find("permissions")))?;
        Ok(PoolDef { name, uuid, target: normalise(path)?, perms })
    }

    /// The pool's XML; `sizes` for a running pool (libvirt writes zeros otherwise).
    pub fn to_xml(&self, sizes: Option<PoolSizes>) -> String {
        let s = sizes.unwrap_or_default();
        let bytes = |n: &str, v: u64| Element::new(n).attr("unit", "bytes").with_text(v.to_string());
        let mut target =
            Element::new("target").child(Element::new("path").with_text(self.target.display().to_string()));
        if let Some(p) = self.perms.element() {
            target = target.child(p);
        }
        // An empty <source> is written open and closed on two lines by libvirt.
        let mut source = Element::new("source");
        source.raw = Some("<source>\n  </source>".into());
        Element::new("pool")
            .attr("type", "dir")
            .child(Element::new("name").with_text(self.name.clone()))
            .child(Element::new("uuid").with_text(uuid::Uuid::from_bytes(self.uuid).to_string()))
            .child(bytes("capacity", s.capacity))
            .child(bytes("allocation", s.allocation))
            .child(bytes("available", s.available))
            .child(source)
            .child(target)
            .to_xml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_pool_round_trips_with_libvirts_elements() {
        let xml = "<pool type='dir'><name>default</name><uuid>6f8fd0e2-4c1c-4c59-9f0c-1a2b3c4d5e6f</uuid>\
                   <target><path>/var/lib/libvirt//images/</path><permissions><mode>0711</mode>\
                   <owner>0</owner><group>0</group></permissions></target></pool>";
        let def = PoolDef::parse(xml).unwrap();
        assert_eq!(def.target, PathBuf::from("/var/lib/libvirt/images"));
        assert_eq!(def.perms, Perms { mode: Some(0o711), owner: Some(0), group: Some(0) });
        let out = def.to_xml(Some(PoolSizes { capacity: 10, allocation: 4, available: 6 }));
        assert!(out.starts_with("<pool type='dir'>\n  <name>default</name>\n"), "{out}");
        assert!(out.contains("<uuid>6f8fd0e2-4c1c-4c59-9f0c-1a2b3c4d5e6f</uuid>"));
        assert!(out.contains("<capacity unit='bytes'>10</capacity>"));
        assert!(out.contains("<available unit='bytes'>6</available>"));
        assert!(out.contains("<path>/var/lib/libvirt/images</path>"));
        assert!(out.contains("<mode>0711</mode>"));
        assert_eq!(PoolDef::parse(&out).unwrap(), def);
    }

    #[test]
    fn other_pool_types_are_refused_naming_the_type() {
        let e = PoolDef::parse("<pool type='logical'><name>vg</name><target><path>/dev/vg</path></target></pool>");
        assert_eq!(e, Err(StorageError::Internal("missing backend for pool type 3 (logical)".into())));
        let e = PoolDef::parse("<pool type='iscsi'><name>i</name></pool>").unwrap_err();
        assert!(e.to_string().contains("(iscsi)"), "{e}");
        assert!(matches!(PoolDef::parse("<pool type='x'><name>i</name></pool>"), Err(StorageError::Xml(_))));
    }

    #[test]
    fn a_pool_needs_a_name_and_an_absolute_target() {
        assert!(PoolDef::parse("<pool type='dir'><target><path>/x</path></target></pool>").is_err());
        assert!(PoolDef::parse("<pool type='dir'><name>a</name></pool>").is_err());
        assert!(PoolDef::parse("<pool type='dir'><name>a</name><target><path>x</path></target></pool>").is_err());
        assert!(PoolDef::parse("<pool type='dir'><name>a</name><target><path>/a/../b</path></target></pool>").is_err());
        assert!(PoolDef::parse("<pool type='dir'><name>a/b</name><target><path>/a</path></target></pool>").is_err());
        assert!(matches!(PoolDef::parse("<pool type='dir'"), Err(StorageError::XmlSyntax(_))));
    }
}
