//! A small owned XML element tree: parsed (bounded) from text, written back in
//! libvirt's style (two-space indent, single-quoted attributes).

use std::fmt::Write as _;

use super::DomainError;

/// Largest domain XML accepted, in bytes.
pub const MAX_XML_BYTES: usize = 1024 * 1024;
/// Most XML nodes (elements, text, comments) in one document.
const MAX_NODES: u32 = 20_000;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 32;

/// One element: name, attributes in order, child elements, and text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name.
    pub name: String,
    /// Attributes in document order.
    pub attrs: Vec<(String, String)>,
    /// Child elements.
    pub children: Vec<Element>,
    /// Text content, trimmed; empty if none.
    pub text: String,
    /// Verbatim XML to emit instead (content we keep but do not model, such as
    /// namespaced `<metadata>`).
    pub raw: Option<String>,
}

impl Element {
    /// A new element with no content.
    pub fn new(name: &str) -> Self {
        Element { name: name.to_owned(), ..Default::default() }
    }

    /// Adds an attribute (builder style).
    pub fn attr(mut self, k: &str, v: impl Into<String>) -> Self {
        self.attrs.push((k.to_owned(), v.into()));
        self
    }

    /// Sets the text (builder style).
    pub fn with_text(mut self, t: impl Into<String>) -> Self {
        self.text = t.into();
        self
    }

    /// Adds a child (builder style).
    pub fn child(mut self, c: Element) -> Self {
        self.children.push(c);
        self
    }

    /// The value of attribute `k`.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// The first child named `name`.
    pub fn find(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Writes the element at `indent` levels.
    pub fn write(&self, out: &mut String, indent: usize) {
        let pad = "  ".repeat(indent);
        if let Some(raw) = &self.raw {
            let _ = writeln!(out, "{pad}{raw}");
            return;
        }
        let _ = write!(out, "{pad}<{}", self.name);
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}='{}'", escape(v, true));
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>\n");
        } else if self.children.is_empty() {
            let _ = writeln!(out, ">{}</{}>", escape(&self.text, false), self.name);
        } else {
            out.push_str(">\n");
            for c in &self.children {
                c.write(out, indent + 1);
            }
            let _ = writeln!(out, "{pad}</{}>", self.name);
        }
    }

    /// The whole element as a document string.
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s
    }
}

fn escape(s: &str, attr: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if attr => out.push_str("&apos;"),
            '"' if attr => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Parses `text` into an element tree, bounded in size, node count and depth.
/// Namespaced elements (other than inside a kept raw element) are skipped, as
/// libvirt ignores foreign namespaces it does not know.
pub fn parse(text: &str) -> Result<Element, DomainError> {
    if text.len() > MAX_XML_BYTES {
        return Err(DomainError::TooLarge(text.len()));
    }
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| {
        let line = match e {
            roxmltree::Error::UnclosedRootNode => text.lines().count() as u32 + 1,
            ref other => other.pos().row,
        };
        let msg = e.to_string();
        let detail = msg.rsplit_once(" at ").map(|(m, _)| m.to_owned()).unwrap_or(msg);
        DomainError::Syntax { line, detail }
    })?;
    let root = doc.root_element();
    if root.descendants().any(|n| n.ancestors().count() > MAX_DEPTH + 1) {
        return Err(DomainError::TooDeep(MAX_DEPTH));
    }
    Ok(convert(root))
}

fn convert(node: roxmltree::Node) -> Element {
    let mut e = Element::new(node.tag_name().name());
    e.attrs = node
        .attributes()
        .filter(|a| a.namespace().is_none())
        .map(|a| (a.name().to_owned(), a.value().to_owned()))
        .collect();
    if e.name == "metadata" {
        // Each child whole, with the namespaces it uses declared on itself
        // (a client may declare them on <domain>), so the stored text parses.
        let children: Vec<String> = node
            .children()
            .filter(|c| c.is_element())
            .map(|c| super::nsxml::element(c, super::nsxml::Mode::Keep))
            .collect();
        e.raw = Some(super::nsxml::metadata(children.iter().map(String::as_str)));
        return e;
    }
    for child in node.children() {
        if child.is_element() {
            if child.tag_name().namespace().is_none() {
                e.children.push(convert(child));
            }
        } else if child.is_text() {
            e.text.push_str(child.text().unwrap_or(""));
        }
    }
    // Mixed content means nothing in the domain schema: an element with
    // children keeps only its children, so the canonical form is stable.
    e.text = if e.children.is_empty() { e.text.trim().to_owned() } else { String::new() };
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_round_trip_in_libvirt_style() {
        let e = parse("<a x=\"1\"><b>t &amp; u</b><c y='&apos;'/></a>").unwrap();
        assert_eq!(e.to_xml(), "<a x='1'>\n  <b>t &amp; u</b>\n  <c y='&apos;'/>\n</a>\n");
    }

    #[test]
    fn mixed_content_keeps_only_the_children() {
        // Found by the domain_xml fuzz target: text beside children did not round-trip.
        let e = parse("<video>junk<model type='none'/>more</video>").unwrap();
        assert_eq!(e.text, "");
        assert_eq!(parse(&e.to_xml()).unwrap(), e);
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        match parse("<domain>\n<name>x</name>\n") {
            Err(DomainError::Syntax { line, detail }) => {
                assert_eq!(line, 3);
                assert!(detail.contains("never closed"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        match parse("<a>\n<b></c>\n</a>") {
            Err(DomainError::Syntax { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_documents_are_bounded() {
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(matches!(parse(&deep), Err(DomainError::TooDeep(_))));
        let wide = format!("<a>{}</a>", "<b/>".repeat(30_000));
        assert!(matches!(parse(&wide), Err(DomainError::Syntax { .. })));
        let big = format!("<a>{}</a>", "x".repeat(MAX_XML_BYTES));
        assert!(matches!(parse(&big), Err(DomainError::TooLarge(_))));
        let dtd = "<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>";
        assert!(parse(dtd).is_err());
    }
}
