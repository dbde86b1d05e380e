//! Storage volume XML: the request of `vol-create` (parsed bounded) and the
//! description `vol-dumpxml` shows (written as libvirt 9.0 writes a file
//! volume of a directory pool).

use super::pool::Perms;
use super::probe::Format;
use super::{MAX_PATH_BYTES, check_name, parse_xml, scale};
use crate::domain::xml::Element;
use crate::privsep::storage::StorageError;

/// What a client asks a new volume to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolRequest {
    /// Its name (the file's name in the pool's directory).
    pub name: String,
    /// Bytes; `None` takes the backing file's (or the copied volume's) size.
    pub capacity: Option<u64>,
    /// Bytes to allocate now (raw: fallocate; 0 or absent: sparse).
    pub allocation: Option<u64>,
    /// The format; `None` is raw unless copied from a volume.
    pub format: Option<Format>,
    /// Mode of the new file.
    pub perms: Perms,
    /// The backing file (path) and its format, for an overlay.
    pub backing: Option<(String, Option<Format>)>,
    /// qcow2 compat level ("0.10" or "1.1").
    pub compat: Option<String>,
    /// qcow2 lazy refcounts.
    pub lazy_refcounts: bool,
}

fn size(e: Option<&Element>) -> Result<Option<u64>, StorageError> {
    e.map(|e| scale(&e.text, e.get("unit"))).transpose()
}

fn format(e: Option<&Element>) -> Result<Option<Format>, StorageError> {
    match e.and_then(|f| f.find("format")).and_then(|f| f.get("type")) {
        None => Ok(None),
        Some(t) => Format::from_name(t)
            .map(Some)
            .ok_or_else(|| StorageError::NoSupport(format!("storage format '{t}' is not supported by this daemon"))),
    }
}

impl VolRequest {
    /// Parses volume XML.
    pub fn parse(text: &str) -> Result<VolRequest, StorageError> {
        let root = parse_xml(text, "volume")?;
        if root.name != "volume" {
            return Err(StorageError::Xml(format!("unexpected root element <{}>, expecting <volume>", root.name)));
        }
        if let Some(t) = root.get("type").filter(|t| *t != "file") {
            return Err(StorageError::NoSupport(format!("volume type '{t}' is not supported in a directory pool")));
        }
        let name = root.find("name").map(|n| n.text.clone()).unwrap_or_default();
        check_name(&name, "volume")?;
        let target = root.find("target");
        let backing = match root.find("backingStore") {
            Some(b) => {
                let path = b.find("path").map(|p| p.text.clone()).filter(|p| !p.is_empty());
                let path = path.ok_or_else(|| StorageError::Xml("missing backing store path".into()))?;
                if path.len() > MAX_PATH_BYTES || path.contains('\0') {
                    return Err(StorageError::Xml("backing store path is too long".into()));
                }
                Some((path, format(Some(b))?))
            }
            None => None,
        };
        let capacity = size(root.find("capacity"))?;
        let compat = target.and_then(|t| t.find("compat")).map(|c| c.text.clone());
        if let Some(c) = compat.as_deref().filter(|c| !["0.10", "1.1"].contains(c)) {
            return Err(StorageError::InvalidArg(format!("unsupported qcow2 compat '{c}'")));
        }
        let lazy = target.and_then(|t| t.find("features")).and_then(|f| f.find("lazy_refcounts")).is_some();
        Ok(VolRequest {
            name,
            capacity,
            allocation: size(root.find("allocation"))?,
            format: format(target)?,
            perms: Perms::parse(target.and_then(|t| t.find("permissions")))?,
            backing,
            compat,
            lazy_refcounts: lazy,
        })
    }
}

/// A file's permissions and times, as `stat` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileFacts {
    /// Mode, owner, group.
    pub perms: Perms,
    /// (atime, mtime, ctime) as "seconds.nanoseconds".
    pub times: Option<[String; 3]>,
}

impl FileFacts {
    fn append(&self, mut e: Element) -> Element {
        if let Some(p) = self.perms.element() {
            e = e.child(p);
        }
        if let Some([a, m, c]) = &self.times {
            e = e.child(
                Element::new("timestamps")
                    .child(Element::new("atime").with_text(a.clone()))
                    .child(Element::new("mtime").with_text(m.clone()))
                    .child(Element::new("ctime").with_text(c.clone())),
            );
        }
        e
    }
}

/// Everything `vol-dumpxml` shows of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolDesc {
    /// Name.
    pub name: String,
    /// Path (also the key).
    pub path: String,
    /// Guest-visible bytes.
    pub capacity: u64,
    /// Bytes allocated on disk.
    pub allocation: u64,
    /// The file's length.
    pub physical: u64,
    /// Format.
    pub format: Format,
    /// The file's permissions and times.
    pub facts: FileFacts,
    /// qcow2: compat level.
    pub compat: Option<&'static str>,
    /// qcow2: cluster size.
    pub cluster_size: Option<u64>,
    /// qcow2: lazy refcounts.
    pub lazy_refcounts: bool,
    /// The backing file (as resolved), its format and facts.
    pub backing: Option<(String, Option<String>, FileFacts)>,
}

impl VolDesc {
    /// The volume's XML.
    pub fn to_xml(&self) -> String {
        let bytes = |n: &str, v: u64| Element::new(n).attr("unit", "bytes").with_text(v.to_string());
        let mut target = Element::new("target")
            .child(Element::new("path").with_text(self.path.clone()))
            .child(Element::new("format").attr("type", self.format.name()));
        target = self.facts.append(target);
        if let Some(c) = self.compat {
            target = target.child(Element::new("compat").with_text(c));
        }
        if let Some(c) = self.cluster_size {
            target = target.child(Element::new("clusterSize").attr("unit", "B").with_text(c.to_string()));
        }
        if self.format == Format::Qcow2 {
            let mut features = Element::new("features");
            if self.lazy_refcounts {
                features = features.child(Element::new("lazy_refcounts"));
            }
            target = target.child(features);
        }
        let mut vol = Element::new("volume")
            .attr("type", "file")
            .child(Element::new("name").with_text(self.name.clone()))
            .child(Element::new("key").with_text(self.path.clone()))
            .child(bytes("capacity", self.capacity))
            .child(bytes("allocation", self.allocation))
            .child(bytes("physical", self.physical))
            .child(target);
        if let Some((path, fmt, facts)) = &self.backing {
            let mut b = Element::new("backingStore").child(Element::new("path").with_text(path.clone()));
            if let Some(f) = fmt {
                b = b.child(Element::new("format").attr("type", f.clone()));
            }
            vol = vol.child(facts.append(b));
        }
        vol.to_xml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virsh_vol_create_as_xml_parses() {
        // What `virsh vol-create-as p d.qcow2 1G --format qcow2 --backing-vol ... --backing-vol-format raw` sends.
        let xml = "<volume>\n  <name>d.qcow2</name>\n  <capacity>1073741824</capacity>\n  <target>\n    \
                   <format type='qcow2'/>\n  </target>\n  <backingStore>\n    <path>/p/base.img</path>\n    \
                   <format type='raw'/>\n  </backingStore>\n</volume>\n";
        let r = VolRequest::parse(xml).unwrap();
        assert_eq!(r.name, "d.qcow2");
        assert_eq!(r.capacity, Some(1 << 30));
        assert_eq!(r.format, Some(Format::Qcow2));
        assert_eq!(r.backing, Some(("/p/base.img".into(), Some(Format::Raw))));
        let units = VolRequest::parse("<volume><name>a</name><capacity unit='M'>5</capacity></volume>").unwrap();
        assert_eq!(units.capacity, Some(5 << 20));
    }

    #[test]
    fn bad_volume_requests_are_refused() {
        for xml in [
            "<volume><name>../x</name><capacity>1</capacity></volume>",
            "<volume><name>.</name><capacity>1</capacity></volume>",
            "<volume><capacity>1</capacity></volume>",
            "<volume><name>a</name><capacity>x</capacity></volume>",
            "<volume><name>a</name><target><format type='vmdk'/></target></volume>",
            "<volume type='block'><name>a</name></volume>",
            "<pool><name>a</name></pool>",
        ] {
            assert!(VolRequest::parse(xml).is_err(), "{xml}");
        }
    }

    #[test]
    fn a_qcow2_overlay_is_described_as_libvirt_writes_it() {
        let d = VolDesc {
            name: "o.qcow2".into(),
            path: "/p/o.qcow2".into(),
            capacity: 1 << 30,
            allocation: 200_704,
            physical: 196_624,
            format: Format::Qcow2,
            facts: FileFacts { perms: Perms { mode: Some(0o600), owner: Some(0), group: Some(0) }, times: None },
            compat: Some("1.1"),
            cluster_size: Some(65536),
            lazy_refcounts: false,
            backing: Some(("/p/base.img".into(), Some("raw".into()), FileFacts::default())),
        };
        let xml = d.to_xml();
        assert!(xml.starts_with("<volume type='file'>\n  <name>o.qcow2</name>\n  <key>/p/o.qcow2</key>\n"), "{xml}");
        assert!(xml.contains("<physical unit='bytes'>196624</physical>"));
        assert!(xml.contains("    <format type='qcow2'/>\n    <permissions>\n      <mode>0600</mode>"));
        assert!(xml.contains("<clusterSize unit='B'>65536</clusterSize>"));
        assert!(
            xml.contains("<backingStore>\n    <path>/p/base.img</path>\n    <format type='raw'/>\n  </backingStore>")
        );
    }
}
