//! `virDomainGetMetadata` and `virDomainSetMetadata`: a domain's `<title>`,
//! `<description>` and the namespaced children of `<metadata>`, kept in the
//! domain XML where libvirt keeps them, so that `dumpxml` shows them and a
//! redefine keeps them.
//!
//! A `<metadata>` child is stored as libvirt stores it: the client's element
//! with every unqualified element put into the client's namespace under the
//! client's prefix (`<app:foo xmlns:app="URI">`), and read back as libvirt
//! reads it: that namespace taken off again (`<foo>`). Every value is bounded
//! before it is parsed, and the resulting domain must still parse within the
//! domain XML's own bounds, so a definition that took metadata always loads
//! again.
//!
//! The daemon keeps one definition per domain: a running domain's live
//! definition is its persistent one, so `--live` and `--config` change the same
//! definition (each is still checked against the domain's state as libvirt
//! checks it).

use super::domains::{AFFECT_CONFIG, AFFECT_LIVE, Entry};
use crate::domain::DomainDef;
use crate::domain::nsxml::{self, Mode};
use crate::privsep::CallError;

/// `VIR_DOMAIN_METADATA_DESCRIPTION`.
pub const DESCRIPTION: i32 = 0;
/// `VIR_DOMAIN_METADATA_TITLE`.
pub const TITLE: i32 = 1;
/// `VIR_DOMAIN_METADATA_ELEMENT`.
pub const ELEMENT: i32 = 2;

/// Largest title, description or metadata element accepted, in bytes: room
/// for any real application's record, far below the 1 MiB a whole domain
/// XML may take.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// Most namespaced elements one `<metadata>` holds.
pub const MAX_ELEMENTS: usize = 64;
/// Longest namespace URI or prefix accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Most XML nodes in one metadata element.
const MAX_NODES: u32 = 10_000;

/// Checks `flags` and the domain's state for a metadata call
/// ([`Entry::impact`]).
pub fn check_impact(e: &Entry, flags: u32, set: bool) -> Result<(), CallError> {
    let function = if set { "qemuDomainSetMetadata" } else { "qemuDomainGetMetadata" };
    if flags & !(AFFECT_LIVE | AFFECT_CONFIG) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: function.into() });
    }
    e.impact(flags, !set).map(|_| ())
}

/// The title, description, or the `<metadata>` child in namespace `uri`
/// (without that namespace, as libvirt gives it back).
pub fn get(def: &DomainDef, kind: i32, uri: Option<&str>) -> Result<String, CallError> {
    let found = match kind {
        DESCRIPTION => def.description.clone().filter(|d| !d.is_empty()),
        TITLE => def.title.clone().filter(|t| !t.is_empty()),
        ELEMENT => {
            let uri =
                uri.ok_or_else(|| CallError::InvalidArg("uri in virDomainGetMetadata must not be NULL".into()))?;
            match raw_metadata(def) {
                Some(raw) => {
                    let doc = parse_bounded(raw).map_err(|_| unreadable())?;
                    doc.root_element()
                        .children()
                        .find(|c| c.is_element() && c.tag_name().namespace() == Some(uri))
                        .map(|node| nsxml::element(node, Mode::Strip(uri)))
                }
                None => None,
            }
        }
        other => return Err(unknown_type(other)),
    };
    found.ok_or_else(|| CallError::NoMetadata("Requested metadata element is not present".into()))
}

/// Sets (or with `None` or an empty text, removes) the title or the
/// description; or sets the `<metadata>` child in namespace `uri` to
/// `value`, its unqualified elements put in that namespace under prefix
/// `key` (or with `None`, removes it). Returns the new definition, which
/// parses as a stored one does.
pub fn set(
    def: &DomainDef,
    kind: i32,
    value: Option<&str>,
    key: Option<&str>,
    uri: Option<&str>,
) -> Result<DomainDef, CallError> {
    if value.is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
        return Err(CallError::InvalidArg(format!("metadata is larger than {MAX_VALUE_BYTES} bytes")));
    }
    if key.is_some_and(|k| k.len() > MAX_NAME_BYTES) || uri.is_some_and(|u| u.len() > MAX_NAME_BYTES) {
        return Err(CallError::InvalidArg(format!("metadata key or uri is longer than {MAX_NAME_BYTES} bytes")));
    }
    let mut new = def.clone();
    let value = value.filter(|v| !v.is_empty());
    match kind {
        DESCRIPTION => new.description = value.map(str::to_owned),
        TITLE => {
            if value.is_some_and(|v| v.contains('\n')) {
                return Err(CallError::InvalidArg("metadata title can't contain newlines".into()));
            }
            new.title = value.map(str::to_owned);
        }
        ELEMENT => {
            let uri =
                uri.ok_or_else(|| CallError::InvalidArg("uri in virDomainSetMetadata must not be NULL".into()))?;
            set_element(&mut new, value, key, uri)?;
        }
        other => return Err(unknown_type(other)),
    }
    // What is stored must load again: the canonical text, parsed within the
    // domain XML's bounds.
    let (reparsed, _) = crate::domain::parse(&new.to_xml(), false)?;
    Ok(reparsed)
}

fn set_element(def: &mut DomainDef, value: Option<&str>, key: Option<&str>, uri: &str) -> Result<(), CallError> {
    // The children there are, each re-written whole with its declarations.
    let mut children: Vec<(String, String)> = Vec::new();
    if let Some(raw) = raw_metadata(def) {
        let doc = parse_bounded(raw).map_err(|_| unreadable())?;
        for node in doc.root_element().children().filter(|c| c.is_element()) {
            children
                .push((node.tag_name().namespace().unwrap_or_default().to_owned(), nsxml::element(node, Mode::Keep)));
        }
    }
    // libvirt replaces the first element in the namespace, if any.
    if let Some(i) = children.iter().position(|(u, _)| u == uri) {
        children.remove(i);
    }
    if let Some(value) = value {
        let key = key.ok_or_else(|| CallError::InvalidArg("key in virDomainSetMetadata must not be NULL".into()))?;
        if !is_ncname(key) {
            return Err(CallError::InvalidArg("failed to validate prefix for a new XML namespace".into()));
        }
        let doc = parse_bounded(value).map_err(|e| CallError::MetadataSyntax {
            line: e.pos().row,
            detail: e.to_string().rsplit_once(" at ").map(|(m, _)| m.to_owned()).unwrap_or_else(|| e.to_string()),
        })?;
        children.push((uri.to_owned(), nsxml::element(doc.root_element(), Mode::Inject { key, uri })));
    }
    if children.len() > MAX_ELEMENTS {
        return Err(CallError::InvalidArg(format!("a domain holds at most {MAX_ELEMENTS} metadata elements")));
    }
    def.kept.retain(|e| e.name != "metadata");
    if !children.is_empty() {
        let mut e = crate::domain::xml::Element::new("metadata");
        e.raw = Some(nsxml::metadata(children.iter().map(|(_, text)| text.as_str())));
        def.kept.push(e);
    }
    Ok(())
}

fn raw_metadata(def: &DomainDef) -> Option<&str> {
    def.kept.iter().find(|e| e.name == "metadata").and_then(|e| e.raw.as_deref())
}

fn parse_bounded(text: &str) -> Result<roxmltree::Document<'_>, roxmltree::Error> {
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES, ..Default::default() };
    roxmltree::Document::parse_with_options(text, opts)
}

fn unreadable() -> CallError {
    CallError::Internal("the domain's <metadata> does not parse on its own".into())
}

fn unknown_type(kind: i32) -> CallError {
    CallError::InvalidArg(format!("unknown metadata type '{kind}'"))
}

/// An XML name without a colon (a namespace prefix).
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(extra: &str) -> DomainDef {
        let xml = format!(
            "<domain type='kvm'><name>m</name><memory unit='MiB'>64</memory>{extra}\
             <os><type>hvm</type><kernel>/k</kernel></os></domain>"
        );
        crate::domain::parse(&xml, false).unwrap().0
    }

    #[test]
    fn an_element_is_stored_in_its_namespace_and_read_back_without_it() {
        let d = set(&def(""), ELEMENT, Some("<foo a='1'><bar>x &amp; y</bar></foo>"), Some("app"), Some("http://a/"))
            .unwrap();
        let xml = d.to_xml();
        assert!(
            xml.contains("<app:foo xmlns:app=\"http://a/\" a=\"1\"><app:bar>x &amp; y</app:bar></app:foo>"),
            "{xml}"
        );
        assert_eq!(get(&d, ELEMENT, Some("http://a/")).unwrap(), "<foo a=\"1\"><bar>x &amp; y</bar></foo>");
        // A second namespace sits beside it; setting the first again replaces it.
        let d = set(&d, ELEMENT, Some("<b/>"), Some("bee"), Some("http://b/")).unwrap();
        let d = set(&d, ELEMENT, Some("<foo>2</foo>"), Some("app"), Some("http://a/")).unwrap();
        assert_eq!(get(&d, ELEMENT, Some("http://a/")).unwrap(), "<foo>2</foo>");
        assert_eq!(get(&d, ELEMENT, Some("http://b/")).unwrap(), "<b/>");
        // Removed, it is not present; the other stays.
        let d = set(&d, ELEMENT, None, None, Some("http://a/")).unwrap();
        assert!(matches!(get(&d, ELEMENT, Some("http://a/")), Err(CallError::NoMetadata(_))));
        assert_eq!(get(&d, ELEMENT, Some("http://b/")).unwrap(), "<b/>");
        let d = set(&d, ELEMENT, None, None, Some("http://b/")).unwrap();
        assert!(!d.to_xml().contains("metadata"), "{}", d.to_xml());
    }

    #[test]
    fn metadata_a_definition_brought_is_read_by_namespace() {
        let d = def("<metadata><x:info xmlns:x='http://x/'><x:k>v</x:k></x:info></metadata>");
        assert_eq!(get(&d, ELEMENT, Some("http://x/")).unwrap(), "<info><k>v</k></info>");
        assert!(matches!(get(&d, ELEMENT, Some("http://other/")), Err(CallError::NoMetadata(_))));
    }

    #[test]
    fn a_namespace_declared_on_the_domain_comes_along_with_its_element() {
        let xml = "<domain type='kvm' xmlns:x='http://x/'><name>m</name><memory unit='MiB'>64</memory>\
                   <metadata><x:info><x:k>v</x:k></x:info></metadata><os><type>hvm</type><kernel>/k</kernel></os></domain>";
        let d = crate::domain::parse(xml, false).unwrap().0;
        // What is stored parses again by itself, to the same definition.
        let again = crate::domain::parse(&d.to_xml(), false).unwrap().0;
        assert_eq!(again, d);
        assert!(d.to_xml().contains("<x:info xmlns:x=\"http://x/\"><x:k>v</x:k></x:info>"), "{}", d.to_xml());
        assert_eq!(get(&again, ELEMENT, Some("http://x/")).unwrap(), "<info><k>v</k></info>");
    }

    #[test]
    fn title_and_description_are_set_and_removed() {
        let d = set(&def(""), TITLE, Some("Web server"), None, None).unwrap();
        let d = set(&d, DESCRIPTION, Some("Serves <pages> & more"), None, None).unwrap();
        assert_eq!(get(&d, TITLE, None).unwrap(), "Web server");
        assert_eq!(get(&d, DESCRIPTION, None).unwrap(), "Serves <pages> & more");
        assert!(d.to_xml().contains("<title>Web server</title>"));
        let d = set(&d, TITLE, Some(""), None, None).unwrap();
        assert!(matches!(get(&d, TITLE, None), Err(CallError::NoMetadata(_))));
        assert!(set(&d, TITLE, Some("a\nb"), None, None).is_err());
        assert!(matches!(get(&d, 7, None), Err(CallError::InvalidArg(m)) if m == "unknown metadata type '7'"));
    }

    #[test]
    fn hostile_metadata_is_refused_before_it_is_parsed_or_stored() {
        let big = format!("<a>{}</a>", "x".repeat(MAX_VALUE_BYTES));
        assert!(matches!(set(&def(""), ELEMENT, Some(&big), Some("k"), Some("u")), Err(CallError::InvalidArg(_))));
        assert!(matches!(
            set(&def(""), ELEMENT, Some("<a><b></a>"), Some("k"), Some("u")),
            Err(CallError::MetadataSyntax { line: 1, .. })
        ));
        assert!(set(&def(""), ELEMENT, Some("<a/>"), Some("bad:key"), Some("u")).is_err());
        let mut d = def("");
        for i in 0..MAX_ELEMENTS {
            d = set(&d, ELEMENT, Some("<a/>"), Some("k"), Some(&format!("http://n/{i}"))).unwrap();
        }
        assert!(set(&d, ELEMENT, Some("<a/>"), Some("k"), Some("http://n/last")).is_err());
        // Four values of 256 KiB pass one by one, but not in one domain of 1 MiB.
        let quarter = format!("<a>{}</a>", "y".repeat(MAX_VALUE_BYTES - 10));
        let mut d = def("");
        let mut refused = false;
        for i in 0..5 {
            match set(&d, ELEMENT, Some(&quarter), Some("k"), Some(&format!("http://q/{i}"))) {
                Ok(n) => d = n,
                Err(_) => refused = true,
            }
        }
        assert!(refused && d.to_xml().len() <= crate::domain::xml::MAX_XML_BYTES);
    }
}
